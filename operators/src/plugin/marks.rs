//! `$plugins_succeeded`, `$plugins_failed` and `$plugins_deferred` written onto an event's JSON
//! text, without running any JavaScript.
//!
//! PostHog set `properties = {...properties, $plugins_succeeded, $plugins_failed,
//! $plugins_deferred}`: existing keys keep their place and take the new lists, missing ones
//! are added at the end, and an event without properties gets an object with the three. The
//! text is spliced, not rebuilt: everything else stays byte for byte as it was.

/// The three lists, in the order PostHog added them.
const KEYS: [&str; 3] = ["$plugins_succeeded", "$plugins_failed", "$plugins_deferred"];

/// Writes the three lists into the event `text` (a JSON object whose `properties`, when
/// present, is an object or null).
pub fn mark_event(text: &str, succeeded: &[String], failed: &[String], deferred: &[String]) -> Result<String, String> {
    mark_event_at(text, None, succeeded, failed, deferred)
}

/// [`mark_event`], told where the `properties` value is in `text` when it is known (the
/// read-back of a plugin's result records it: `tojson::Read::properties`), so the top-level
/// members are not read again to find it. `None`: found by reading the text.
pub(crate) fn mark_event_at(
    text: &str,
    properties: Option<std::ops::Range<usize>>,
    succeeded: &[String],
    failed: &[String],
    deferred: &[String],
) -> Result<String, String> {
    let lists = [render(succeeded), render(failed), render(deferred)];
    let (start, end) = match properties {
        Some(at) => (at.start, at.end),
        None => {
            let top = spans(text, &["properties"]).map_err(|e| format!("cannot mark the event: {e}"))?;
            match top.found.last() {
                Some(&(_, start, end)) => (start, end),
                None => return add_properties(text, &lists, top.keys > 0),
            }
        }
    };
    let raw = &text[start..end];
    let mut out = String::with_capacity(text.len() + 128);
    out.push_str(&text[..start]);
    if raw == "null" {
        out.push_str(&whole_object(&lists));
    } else if raw.starts_with('{') {
        mark_properties(raw, &lists, &mut out)?;
    } else {
        return Err(format!("cannot mark the event: its properties are not an object ({raw:.40})"));
    }
    out.push_str(&text[end..]);
    Ok(out)
}

/// The event `text` (an object with no `properties`; `more`: it has members) with a
/// `properties` object holding the lists added as its last member.
fn add_properties(text: &str, lists: &[String; 3], more: bool) -> Result<String, String> {
    let close = text.rfind('}').ok_or("cannot mark the event: it is not an object")?;
    let mut out = String::with_capacity(text.len() + 128);
    out.push_str(&text[..close]);
    if more {
        out.push(',');
    }
    out.push_str("\"properties\":");
    out.push_str(&whole_object(lists));
    out.push_str(&text[close..]);
    Ok(out)
}

/// Writes `properties` (an object's text) with the lists set onto `out`.
fn mark_properties(raw: &str, lists: &[String; 3], out: &mut String) -> Result<(), String> {
    let close = raw.rfind('}').expect("an object's text ends with '}'");
    if !raw.contains("plugins") && !raw.contains("\\u") {
        // No `$plugins_*` key can be there (not even spelled with escapes): append the lists
        // without scanning the members.
        out.push_str(&raw[..close]);
        let empty = raw[1..close].trim().is_empty();
        append_members(out, lists, &[false; 3], !empty);
        out.push('}');
        return Ok(());
    }
    let inner = spans(raw, &KEYS).map_err(|e| format!("cannot mark the event's properties: {e}"))?;
    let mut at = 0;
    let mut present = [false; 3];
    for &(which, start, end) in &inner.found {
        out.push_str(&raw[at..start]);
        out.push_str(&lists[which]);
        present[which] = true;
        at = end;
    }
    out.push_str(&raw[at..close]);
    append_members(out, lists, &present, inner.keys > 0);
    out.push('}');
    Ok(())
}

/// The three lists as an object of their own.
fn whole_object(lists: &[String; 3]) -> String {
    let mut out = String::from("{");
    append_members(&mut out, lists, &[false; 3], false);
    out.push('}');
    out
}

/// Appends the lists not yet `present` as members (`more`: members precede, so a comma first).
fn append_members(out: &mut String, lists: &[String; 3], present: &[bool; 3], more: bool) {
    let mut comma = more;
    for (i, key) in KEYS.iter().enumerate() {
        if present[i] {
            continue;
        }
        if comma {
            out.push(',');
        }
        comma = true;
        out.push('"');
        out.push_str(key);
        out.push_str("\":");
        out.push_str(&lists[i]);
    }
}

fn render(labels: &[String]) -> String {
    let mut out = Vec::with_capacity(16 * labels.len() + 2);
    out.push(b'[');
    for (i, label) in labels.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        super::tojson::quote_into(&mut out, label.as_bytes());
    }
    out.push(b']');
    String::from_utf8(out).expect("quoted UTF-8 stays UTF-8")
}

/// The text of the value of the first member named `key` of the JSON object `text`, without
/// reading further than that member (an event's `distinct_id` usually comes first, its large
/// `properties` later). `None` when there is no such member or `text` is not an object.
pub fn top_level_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return None;
    }
    loop {
        let (name, after) = read_key(b, i).ok()?;
        i = skip_ws(b, after);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_ws(b, i + 1);
        let end = skip_value(b, start).ok()?;
        if name == key.as_bytes() {
            return text.get(start..end);
        }
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            _ => return None,
        }
    }
}

/// Where the values of some keys of an object's text are.
struct Spans {
    /// (index into the wanted keys, start, end) of each occurrence, in text order.
    found: Vec<(usize, usize, usize)>,
    /// How many members the object has.
    keys: usize,
}

/// Finds the members of the object `text` whose keys are `wanted`. A small scanner rather than
/// serde_json: keys are decoded the way JavaScript reads them (a lone surrogate escape is a
/// key like any other, which serde_json refuses), values are skipped without decoding.
fn spans(text: &str, wanted: &[&str]) -> Result<Spans, String> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return Err("not an object".into());
    }
    i = skip_ws(b, i + 1);
    let mut out = Spans { found: Vec::new(), keys: 0 };
    if b.get(i) == Some(&b'}') {
        return Ok(out);
    }
    loop {
        let (key, after) = read_key(b, i)?;
        i = skip_ws(b, after);
        if b.get(i) != Some(&b':') {
            return Err(format!("expected ':' at byte {i}"));
        }
        let start = skip_ws(b, i + 1);
        let end = skip_value(b, start)?;
        out.keys += 1;
        if let Some(which) = wanted.iter().position(|w| w.as_bytes() == key.as_slice()) {
            out.found.push((which, start, end));
        }
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return Ok(out),
            _ => return Err(format!("expected ',' or '}}' at byte {i}")),
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The end of the string starting at `b[i]` (a quote), just past its closing quote. Strings
/// are most of an event's bytes: searched eight at a time (`event::scan::special`).
fn skip_string(b: &[u8], i: usize) -> Result<usize, String> {
    let mut j = i + 1;
    loop {
        match crate::event::scan::special(b, j) {
            Some(k) if b[k] == b'\\' => j = k + 2,
            Some(k) if b[k] == b'"' => return Ok(k + 1),
            // A raw control character: not in JSON text, but skipped here as before.
            Some(k) => j = k + 1,
            None => return Err("unterminated string".into()),
        }
    }
}

/// The end of the JSON value starting at `b[i]`.
fn skip_value(b: &[u8], i: usize) -> Result<usize, String> {
    match b.get(i) {
        Some(b'"') => skip_string(b, i),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            Err("unterminated object or array".into())
        }
        Some(_) => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                j += 1;
            }
            Ok(j)
        }
        None => Err("a value is missing".into()),
    }
}

/// The key starting at `b[i]`, decoded to (generalized) UTF-8, and the index past it.
fn read_key(b: &[u8], i: usize) -> Result<(Vec<u8>, usize), String> {
    if b.get(i) != Some(&b'"') {
        return Err(format!("expected a key at byte {i}"));
    }
    let end = skip_string(b, i)?;
    let raw = &b[i + 1..end - 1];
    if !raw.contains(&b'\\') {
        return Ok((raw.to_vec(), end));
    }
    let mut key = Vec::with_capacity(raw.len());
    let mut j = 0;
    while j < raw.len() {
        if raw[j] != b'\\' {
            key.push(raw[j]);
            j += 1;
            continue;
        }
        let simple = match raw.get(j + 1) {
            Some(b'"') => Some(b'"'),
            Some(b'\\') => Some(b'\\'),
            Some(b'/') => Some(b'/'),
            Some(b'b') => Some(8),
            Some(b'f') => Some(12),
            Some(b'n') => Some(b'\n'),
            Some(b'r') => Some(b'\r'),
            Some(b't') => Some(b'\t'),
            Some(b'u') => None,
            _ => return Err("bad escape in a key".into()),
        };
        if let Some(c) = simple {
            key.push(c);
            j += 2;
            continue;
        }
        let unit = |at: usize| raw.get(at..at + 4).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u32::from_str_radix(h, 16).ok());
        let high = unit(j + 2).ok_or("bad \\u escape in a key")?;
        j += 6;
        let mut code = high;
        if (0xd800..0xdc00).contains(&high)
            && raw.get(j) == Some(&b'\\')
            && raw.get(j + 1) == Some(&b'u')
            && let Some(low) = unit(j + 2).filter(|l| (0xdc00..0xe000).contains(l))
        {
            code = 0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00);
            j += 6;
        }
        push_code_point(&mut key, code);
    }
    Ok((key, end))
}

/// Appends `code` as UTF-8; a lone surrogate as its 3-byte generalized form.
fn push_code_point(out: &mut Vec<u8>, code: u32) {
    match code {
        0..=0x7f => out.push(code as u8),
        0x80..=0x7ff => out.extend_from_slice(&[0xc0 | (code >> 6) as u8, 0x80 | (code & 0x3f) as u8]),
        0x800..=0xffff => {
            out.extend_from_slice(&[0xe0 | (code >> 12) as u8, 0x80 | ((code >> 6) & 0x3f) as u8, 0x80 | (code & 0x3f) as u8])
        }
        _ => out.extend_from_slice(&[
            0xf0 | (code >> 18) as u8,
            0x80 | ((code >> 12) & 0x3f) as u8,
            0x80 | ((code >> 6) & 0x3f) as u8,
            0x80 | (code & 0x3f) as u8,
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn marked(text: &str) -> Value {
        let s = mark_event(text, &["a (1)".into()], &[], &["d (2)".into()]).unwrap();
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn keys(v: &Value) -> Vec<String> {
        v.as_object().unwrap().keys().cloned().collect()
    }

    #[test]
    fn lists_are_added_after_existing_properties() {
        let v = marked(r#"{"uuid":"u","properties":{"x":1,"y":[1,{"z":"}"}]},"team_id":2}"#);
        assert_eq!(keys(&v["properties"]), ["x", "y", "$plugins_succeeded", "$plugins_failed", "$plugins_deferred"]);
        assert_eq!(v["properties"]["$plugins_succeeded"], json!(["a (1)"]));
        assert_eq!(v["properties"]["$plugins_failed"], json!([]));
        assert_eq!(v["properties"]["y"], json!([1, {"z": "}"}]));
        assert_eq!(keys(&v), ["uuid", "properties", "team_id"]);
    }

    #[test]
    fn existing_lists_keep_their_place_and_take_the_new_values() {
        let v = marked(r#"{"properties":{"$plugins_failed":["stale"],"a":1,"$plugins\u005fdeferred":0}}"#);
        assert_eq!(keys(&v["properties"]), ["$plugins_failed", "a", "$plugins_deferred", "$plugins_succeeded"]);
        assert_eq!(v["properties"]["$plugins_failed"], json!([]));
        assert_eq!(v["properties"]["$plugins_deferred"], json!(["d (2)"]));
    }

    #[test]
    fn missing_null_and_empty_properties_become_objects() {
        for text in [
            r#"{"uuid":"u"}"#,
            r#"{"uuid":"u","properties":null}"#,
            r#"{"uuid":"u","properties":{}}"#,
            r#"{"uuid":"u","properties": { } }"#,
        ] {
            let v = marked(text);
            assert_eq!(keys(&v["properties"]), ["$plugins_succeeded", "$plugins_failed", "$plugins_deferred"], "{text}");
        }
        assert_eq!(keys(&marked("{}")), ["properties"]);
    }

    #[test]
    fn both_paths_agree() {
        // With no `$plugins` in sight the lists are appended without a scan; with an escape
        // the members are scanned. Both give what the scan gives.
        for text in [r#"{"properties":{"a":"x"}}"#, r#"{"properties":{"a":"\u0078"}}"#, r#"{"properties":{"plugins":1}}"#] {
            let v = marked(text);
            assert_eq!(keys(&v["properties"]).len(), 4, "{text}");
            assert_eq!(v["properties"]["$plugins_deferred"], json!(["d (2)"]), "{text}");
        }
    }

    #[test]
    fn keys_are_read_as_javascript_reads_them() {
        // A lone surrogate in a key (JSON.parse takes it, serde_json does not), an escaped
        // `properties`, a surrogate pair, strings with brackets and escaped quotes.
        let text = r#"{"a\udc00":{"x":"}"},"propert\u0069es":{"k":"\"]}","\ud83d\ude00":[1,{"y":[]}]},"z":null}"#;
        let out = mark_event(text, &["a (1)".into()], &[], &[]).unwrap();
        assert!(out.contains(r#""\ud83d\ude00":[1,{"y":[]}],"$plugins_succeeded":["a (1)"]"#), "{out}");
        assert!(out.starts_with(r#"{"a\udc00":{"x":"}"},"propert\u0069es":"#), "{out}");
        let (key, _) = read_key(br#""\u00e9\ud800x""#, 0).unwrap();
        assert_eq!(key, [0xc3, 0xa9, 0xed, 0xa0, 0x80, b'x']);
    }

    proptest::proptest! {
        #[test]
        fn marking_generated_events_adds_only_the_lists(value in crate::plugin::tojson::differential_json()) {
            let event = serde_json::json!({ "uuid": "u", "v": value.clone(), "properties": { "p": value } });
            let text = serde_json::to_string(&event).unwrap();
            let out: Value = serde_json::from_str(&mark_event(&text, &["a (1)".into()], &["b (2)".into()], &[]).unwrap()).unwrap();
            let mut want = event.clone();
            want["properties"]["$plugins_succeeded"] = json!(["a (1)"]);
            want["properties"]["$plugins_failed"] = json!(["b (2)"]);
            want["properties"]["$plugins_deferred"] = json!([]);
            proptest::prop_assert_eq!(out, want);
        }
    }

    #[test]
    fn the_rest_of_the_text_is_untouched() {
        let text = r#"{ "n": 1.0, "e": 1e21, "s": "\u00e9", "properties": {"k": "v"} }"#;
        let out = mark_event(text, &[], &[], &[]).unwrap();
        assert!(out.starts_with(r#"{ "n": 1.0, "e": 1e21, "s": "\u00e9", "properties": {"k": "v","#), "{out}");
    }

    #[test]
    fn properties_that_are_not_an_object_are_an_error() {
        assert!(mark_event(r#"{"properties":"x"}"#, &[], &[], &[]).is_err());
        assert!(mark_event("[1]", &[], &[], &[]).is_err());
    }
}
