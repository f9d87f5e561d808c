//! `$plugins_succeeded`, `$plugins_failed` and `$plugins_deferred` written onto an event's JSON
//! text, without running any JavaScript.
//!
//! PostHog set `properties = {...properties, $plugins_succeeded, $plugins_failed,
//! $plugins_deferred}`: existing keys keep their place and take the new lists, missing ones
//! are added at the end, and an event without properties gets an object with the three. The
//! text is spliced, not rebuilt: everything else stays byte for byte as it was.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The three lists, in the order PostHog added them.
const KEYS: [&str; 3] = ["$plugins_succeeded", "$plugins_failed", "$plugins_deferred"];

/// Writes the three lists into the event `text` (a JSON object whose `properties`, when
/// present, is an object or null).
pub fn mark_event(text: &str, succeeded: &[String], failed: &[String], deferred: &[String]) -> Result<String, String> {
    let lists = [render(succeeded), render(failed), render(deferred)];
    let top = spans(text, &["properties"]).map_err(|e| format!("cannot mark the event: {e}"))?;
    let (start, end) = match top.found.last() {
        Some(&(_, start, end)) => (start, end),
        None => {
            // No properties: add them as the last key.
            let close = text.rfind('}').ok_or("cannot mark the event: it is not an object")?;
            let mut out = String::with_capacity(text.len() + 128);
            out.push_str(&text[..close]);
            if top.keys > 0 {
                out.push(',');
            }
            out.push_str("\"properties\":");
            out.push_str(&whole_object(&lists));
            out.push_str(&text[close..]);
            return Ok(out);
        }
    };
    let raw = &text[start..end];
    let marked = if raw == "null" {
        whole_object(&lists)
    } else if raw.starts_with('{') {
        mark_properties(raw, &lists)?
    } else {
        return Err(format!("cannot mark the event: its properties are not an object ({raw:.40})"));
    };
    Ok(format!("{}{}{}", &text[..start], marked, &text[end..]))
}

/// `properties` (an object's text) with the lists set.
fn mark_properties(raw: &str, lists: &[String; 3]) -> Result<String, String> {
    let close = raw.rfind('}').expect("an object's text ends with '}'");
    if !raw.contains("plugins") && !raw.contains("\\u") {
        // No `$plugins_*` key can be there (not even spelled with escapes): append the lists
        // without scanning the members.
        let mut out = String::with_capacity(raw.len() + 128);
        out.push_str(&raw[..close]);
        let empty = raw[1..close].trim().is_empty();
        append_members(&mut out, lists, &[false; 3], !empty);
        out.push('}');
        return Ok(out);
    }
    let inner = spans(raw, &KEYS).map_err(|e| format!("cannot mark the event's properties: {e}"))?;
    let mut out = String::with_capacity(raw.len() + 128);
    let mut at = 0;
    let mut present = [false; 3];
    for &(which, start, end) in &inner.found {
        out.push_str(&raw[at..start]);
        out.push_str(&lists[which]);
        present[which] = true;
        at = end;
    }
    out.push_str(&raw[at..close]);
    append_members(&mut out, lists, &present, inner.keys > 0);
    out.push('}');
    Ok(out)
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

/// Where the values of some keys of an object's text are.
struct Spans {
    /// (index into the wanted keys, start, end) of each occurrence, in text order.
    found: Vec<(usize, usize, usize)>,
    /// How many members the object has.
    keys: usize,
}

fn spans(text: &str, wanted: &[&str]) -> Result<Spans, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let spans = de.deserialize_map(SpanVisitor { base: text.as_ptr() as usize, wanted })?;
    de.end()?;
    Ok(spans)
}

struct SpanVisitor<'w> {
    base: usize,
    wanted: &'w [&'w str],
}

impl<'de> Visitor<'de> for SpanVisitor<'_> {
    type Value = Spans;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Spans, A::Error> {
        let mut out = Spans { found: Vec::new(), keys: 0 };
        while let Some(key) = map.next_key::<Key<'de>>()? {
            out.keys += 1;
            let value: &'de RawValue = map.next_value()?;
            if let Some(which) = self.wanted.iter().position(|w| *w == key.0) {
                let start = value.get().as_ptr() as usize - self.base;
                out.found.push((which, start, start + value.get().len()));
            }
        }
        Ok(out)
    }
}

/// A key, borrowed from the text when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_string())))
            }
        }
        d.deserialize_str(V)
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
        for text in [r#"{"uuid":"u"}"#, r#"{"uuid":"u","properties":null}"#, r#"{"uuid":"u","properties":{}}"#, r#"{"uuid":"u","properties": { } }"#] {
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
