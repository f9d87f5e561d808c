//! From a raw input line to an event the plugins can take, or to a dead letter saying why not.
//!
//! Two shapes are accepted: a plain `PluginEvent` object, and PostHog's
//! `events_plugin_ingestion` envelope whose `data` field is a JSON string (spec §1.1). A plain
//! event that passes the checks is forwarded as the very text it came in (no re-serialisation);
//! an envelope is merged and serialised once, keys in order.
//!
//! Most lines are plain events, checked in one pass over their bytes (`scan`); every other line
//! (malformed, an envelope, a head field with an escape...) is checked with serde_json, which
//! also words the reasons of dead letters.

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use self::members::Members;

pub mod members;
pub(crate) mod scan;

/// A line as the graph's input carries it: where it was, its bytes, and how many
/// `posthog.capture` calls in a row led to it (0 for a line of the input; the graph sets it for
/// captured events, out of band: no line can claim it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputLine {
    /// Where in the source (as [`DeadLetter::position`]; 0 for a captured event).
    pub position: u64,
    /// The line, without its newline.
    pub bytes: Vec<u8>,
    /// Capture hops.
    pub hops: u32,
}

/// A line that is a valid event. (Serializable: it crosses workers and processes on its way to
/// the worker that runs its team's plugins.)
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ValidEvent {
    /// The event as JSON text.
    pub json: String,
    /// Its `team_id`.
    pub team_id: i64,
    /// Its name (`event`) and `uuid`: see [`ValidEvent::name`], [`ValidEvent::uuid`].
    names: Names,
    /// How many `posthog.capture` calls in a row led to it (0 for input events; the graph sets
    /// it for captured events, out of band: no input line can claim it).
    pub hops: u32,
    /// Where in the source its line was (as [`DeadLetter::position`]; 0 for captured events):
    /// dead letters of work done for it later name it.
    pub position: u64,
    /// The worker that read its line (0 until the graph sets it): what is written for the event
    /// goes back there (`crate::plugin::placement`).
    pub reader: u32,
}

/// Where a valid event's name and `uuid` are: in its text when written there as they read (no
/// escapes: the common case, no copy), else decoded.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
enum Names {
    InText { name: std::ops::Range<usize>, uuid: std::ops::Range<usize> },
    Decoded { name: String, uuid: String },
}

impl ValidEvent {
    /// Its name (`event`).
    pub fn name(&self) -> &str {
        match &self.names {
            Names::InText { name, .. } => &self.json[name.clone()],
            Names::Decoded { name, .. } => name,
        }
    }

    /// Its `uuid`.
    pub fn uuid(&self) -> &str {
        match &self.names {
            Names::InText { uuid, .. } => &self.json[uuid.clone()],
            Names::Decoded { uuid, .. } => uuid,
        }
    }
}

impl PartialEq for ValidEvent {
    fn eq(&self, other: &Self) -> bool {
        (&self.json, self.team_id, self.name(), self.uuid(), self.hops, self.position, self.reader)
            == (&other.json, other.team_id, other.name(), other.uuid(), other.hops, other.position, other.reader)
    }
}

/// A line that is not a valid event, kept whole with the reason.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeadLetter {
    /// Where the line came from (file path or topic).
    pub source: String,
    /// Where in the source: the byte offset of the line in a recorded log, the offset in its
    /// partition for Kafka (the partition is not named). Work a plugin could not do for an event
    /// (`onEvent`, `exportEvents`, a failed chain) names its event's position; 0 where there is
    /// no input line (jobs, captured events).
    pub position: u64,
    /// Why the line was rejected.
    pub reason: String,
    /// The raw line (lossy UTF-8).
    pub raw: String,
    /// The raw bytes in base64 when they were not valid UTF-8, so nothing is lost.
    pub raw_base64: Option<String>,
    /// For work a plugin could not do (retries exhausted, a plain error): which and why.
    pub failure: Option<PluginFailure>,
}

/// The plugin call a dead letter stands for.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PluginFailure {
    /// Plugin name.
    pub plugin: String,
    /// Configuration id.
    pub config_id: String,
    /// The hook (`onEvent`, `exportEvents`, `job`).
    pub hook: String,
    /// Calls made.
    pub attempts: u32,
    /// The last error, `Name: message`.
    pub error: String,
}

impl DeadLetter {
    /// The dead letter as one JSON object.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("source".into(), Value::String(self.source.clone()));
        m.insert("position".into(), Value::from(self.position));
        m.insert("reason".into(), Value::String(self.reason.clone()));
        m.insert("raw".into(), Value::String(self.raw.clone()));
        if let Some(b) = &self.raw_base64 {
            m.insert("raw_base64".into(), Value::String(b.clone()));
        }
        if let Some(f) = &self.failure {
            m.insert("plugin".into(), Value::String(f.plugin.clone()));
            m.insert("plugin_config_id".into(), Value::String(f.config_id.clone()));
            m.insert("hook".into(), Value::String(f.hook.clone()));
            m.insert("attempts".into(), Value::from(f.attempts));
            m.insert("error".into(), Value::String(f.error.clone()));
        }
        Value::Object(m)
    }
}

/// How big an event may be. Events past these limits are dead-lettered at the door: every event
/// that is let in can enter every plugin of its chain.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EventLimits {
    /// Longest line, in bytes.
    pub max_bytes: usize,
    /// Deepest nesting of objects and arrays (the event object itself is level 1).
    pub max_depth: usize,
}

impl Default for EventLimits {
    fn default() -> Self {
        EventLimits { max_bytes: 1024 * 1024, max_depth: 64 }
    }
}

/// Deepest nesting [`EventLimits::max_depth`] may allow: below serde_json's own recursion
/// limit (128), so every admitted event parses on the fast path.
pub const MAX_DEPTH_LIMIT: usize = 120;

/// The few fields checked; everything else is scanned (for depth) without allocating.
#[derive(Default)]
struct Head {
    event: Option<Value>,
    team_id: Option<Value>,
    uuid: Option<Value>,
    data: Option<Value>,
    /// What `properties` holds, when present.
    properties: Option<Kind>,
}

/// The kind of a JSON value.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Null,
    Scalar,
    Array,
    Object,
}

/// Reads the checked fields of an event object.
struct HeadSeed;

impl<'de> serde::de::DeserializeSeed<'de> for HeadSeed {
    type Value = Head;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Head, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for HeadSeed {
    type Value = Head;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Head, A::Error> {
        let mut head = Head::default();
        // Nesting was checked on the bytes (see `nesting_within`); values are skipped undecoded,
        // so strings JavaScript takes (lone surrogates) are not refused here.
        while let Some(key) = map.next_key::<Field>()? {
            match key {
                Field::Event => head.event = Some(map.next_value()?),
                Field::TeamId => head.team_id = Some(map.next_value()?),
                Field::Uuid => head.uuid = Some(map.next_value()?),
                Field::Data => {
                    // Only a string makes an envelope; any other `data` is an ordinary field,
                    // skipped undecoded like the rest.
                    let raw: &serde_json::value::RawValue = map.next_value()?;
                    head.data = match raw.get().starts_with('"') {
                        true => Some(serde_json::from_str(raw.get()).map_err(serde::de::Error::custom)?),
                        false => None,
                    };
                }
                Field::Properties => {
                    let raw: &serde_json::value::RawValue = map.next_value()?;
                    head.properties = Some(match raw.get().as_bytes().first() {
                        Some(b'{') => Kind::Object,
                        Some(b'n') => Kind::Null,
                        Some(b'[') => Kind::Array,
                        _ => Kind::Scalar,
                    });
                }
                Field::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(head)
    }
}

/// A top-level key of an event, told apart without allocating.
enum Field {
    Event,
    TeamId,
    Uuid,
    Data,
    Properties,
    Other,
}

impl<'de> serde::Deserialize<'de> for Field {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Field, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Field;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Field, E> {
                Ok(match key {
                    "event" => Field::Event,
                    "team_id" => Field::TeamId,
                    "uuid" => Field::Uuid,
                    "data" => Field::Data,
                    "properties" => Field::Properties,
                    _ => Field::Other,
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// Whether objects and arrays in `text` nest at most `max` deep, counted on the bytes (brackets
/// outside strings). Malformed text passes here and fails the parse.
fn nesting_within(text: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'"' => {
                // Skip the string: to its closing quote, stepping over escapes.
                i += 1;
                loop {
                    // Most of an event's bytes are inside strings: a SIMD search, not a byte loop.
                    match text.get(i..).and_then(|rest| memchr::memchr2(b'"', b'\\', rest)) {
                        Some(j) if text[i + j] == b'\\' => i += j + 2,
                        Some(j) => {
                            i += j;
                            break;
                        }
                        None => return true,
                    }
                }
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    true
}

/// Checks one line. `source` and `position` label its dead letter; the event keeps `position`.
pub fn parse_line(bytes: &[u8], source: &str, position: u64, limits: &EventLimits) -> Result<ValidEvent, DeadLetter> {
    parse_owned_line(bytes.to_vec(), source, position, limits)
}

/// [`parse_line`] for a line the caller owns: a plain event keeps the line's own buffer as its
/// text, so the event is not copied.
pub fn parse_owned_line(bytes: Vec<u8>, source: &str, position: u64, limits: &EventLimits) -> Result<ValidEvent, DeadLetter> {
    // A plain event, taken by the one-pass scan, which checks UTF-8 as it goes: the line's own
    // buffer becomes its text with no second pass.
    let end = bytes.len() - bytes.iter().rev().take_while(|&&c| c == b'\r' || c == b'\n').count();
    if end <= limits.max_bytes
        && let Some(h) = scan::plain_head(&bytes[..end], limits.max_depth)
    {
        let mut bytes = bytes;
        bytes.truncate(end);
        // SAFETY: `plain_head` returns a head only for UTF-8 text (scan.rs: every byte it reads
        // outside strings is ASCII, and strings are read as ASCII up to the first byte past it,
        // from where the rest is checked with `std::str::from_utf8`); `the_scan_takes_only_utf8`
        // holds it to that over lines with bytes of every kind.
        #[allow(unsafe_code)]
        let json = unsafe { String::from_utf8_unchecked(bytes) };
        return Ok(ValidEvent {
            json,
            team_id: h.team_id,
            names: Names::InText { name: h.name, uuid: h.uuid },
            hops: 0,
            position,
            reader: 0,
        });
    }
    let dead = |reason: String, raw: String, raw_base64: Option<String>| DeadLetter {
        source: source.to_string(),
        position,
        reason,
        raw,
        raw_base64,
        failure: None,
    };
    let mut text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            use base64::Engine as _;
            let reason = format!("invalid UTF-8 at byte {}", e.utf8_error().valid_up_to());
            let bytes = e.into_bytes();
            return Err(dead(
                reason,
                String::from_utf8_lossy(&bytes).into_owned(),
                Some(base64::engine::general_purpose::STANDARD.encode(&bytes)),
            ));
        }
    };
    text.truncate(text.trim_end_matches(['\r', '\n']).len());
    if text.len() > limits.max_bytes {
        return Err(dead(
            format!("the event is {} bytes, more than runtime.max_event_bytes ({})", text.len(), limits.max_bytes),
            text,
            None,
        ));
    }
    check_fully(&text, limits).map(|ev| ValidEvent { position, ..ev }).map_err(|reason| dead(reason, text, None))
}

/// Every line the one-pass scan does not take: checked with serde_json, which words the errors.
fn check_fully(text: &str, limits: &EventLimits) -> Result<ValidEvent, String> {
    let first = text.trim_start().chars().next();
    if first != Some('{') {
        let what = match serde_json::from_str::<Value>(text) {
            Ok(v) => json_kind(&v).to_string(),
            Err(e) => return Err(format!("invalid JSON: {e}")),
        };
        return Err(format!("expected a JSON object (an event), got {what}"));
    }
    if !nesting_within(text.as_bytes(), limits.max_depth) {
        return Err(format!("the event is nested deeper than runtime.max_event_depth ({} levels)", limits.max_depth));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let head = serde::de::DeserializeSeed::deserialize(HeadSeed, &mut de)
        .and_then(|h| de.end().map(|()| h))
        .map_err(|e| head_unreadable(text).unwrap_or_else(|| format!("invalid JSON: {e}")))?;
    if let Some(Value::String(data)) = &head.data {
        return from_envelope(text, data, limits);
    }
    if let Some(kind) = head.properties {
        properties_kind(kind)?;
    }
    let (name, team_id, uuid) = required(&head.event, &head.team_id, &head.uuid)?;
    Ok(ValidEvent { json: text.to_string(), team_id, names: Names::Decoded { name, uuid }, hops: 0, position: 0, reader: 0 })
}

/// Why a line that `JSON.parse` reads could not be checked: a head field holds a lone surrogate
/// escape (text cut inside an emoji), which the event's name, uuid and envelope, read as Unicode
/// text, cannot carry. `None` when the line is not JSON.
fn head_unreadable(text: &str) -> Option<String> {
    let members = Members::parse(text).ok()?;
    ["event", "uuid", "team_id", "data"].into_iter().find_map(|key| lone_surrogate_in(key, members.get(key)?))
}

/// The reason a head field, read as JSON already, cannot be a `Value`: a string that fails
/// holds a lone surrogate. `None` for anything else (a number past f64 fails too).
fn lone_surrogate_in(key: &str, raw: &RawValue) -> Option<String> {
    (raw.get().starts_with('"') && serde_json::from_str::<Value>(raw.get()).is_err())
        .then(|| format!("field '{key}' holds a lone surrogate escape (text cut inside an emoji): {key} must be Unicode text"))
}

/// Merges an ingestion envelope: `data` is parsed and its keys win over the envelope's (the
/// 2022 server's order), `data` itself is removed, and empty `ip`/`site_url` become null. Values
/// are kept as written (`members`), so a lone surrogate escape passes as `JSON.parse` passes it.
fn from_envelope(text: &str, data: &str, limits: &EventLimits) -> Result<ValidEvent, String> {
    let mut envelope = Members::parse(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let inner = Members::parse(data).map_err(|e| match serde_json::from_str::<&RawValue>(data) {
        Ok(other) => format!("envelope field 'data' must hold a JSON object, got {}", members::kind(other)),
        Err(_) => format!("envelope field 'data' is not valid JSON: {e}"),
    })?;
    envelope.remove("data");
    envelope.extend(inner);
    for key in ["ip", "site_url"] {
        if envelope.get(key).is_some_and(|v| v.get() == "\"\"") {
            envelope.replace(key, members::null());
        }
    }
    let head = |key: &str| -> Result<Option<Value>, String> {
        let reason =
            |e: serde_json::Error, v| lone_surrogate_in(key, v).unwrap_or_else(|| format!("envelope field 'data' is not valid JSON: {e}"));
        envelope.get(key).map(|v| serde_json::from_str(v.get()).map_err(|e| reason(e, v))).transpose()
    };
    let (name, team_id, uuid) = required(&head("event")?, &head("team_id")?, &head("uuid")?)?;
    match envelope.get("properties") {
        None => {}
        Some(p) if matches!(p.get().as_bytes()[0], b'{' | b'n') => {}
        Some(other) => return Err(format!("field 'properties' must be an object, got {}", members::kind(other))),
    }
    let json = envelope.text();
    if !nesting_within(json.as_bytes(), limits.max_depth) {
        return Err(format!("the event is nested deeper than runtime.max_event_depth ({} levels)", limits.max_depth));
    }
    if json.len() > limits.max_bytes {
        return Err(format!("the event is {} bytes once merged, more than runtime.max_event_bytes ({})", json.len(), limits.max_bytes));
    }
    Ok(ValidEvent { json, team_id, names: Names::Decoded { name, uuid }, hops: 0, position: 0, reader: 0 })
}

fn properties_kind(kind: Kind) -> Result<(), String> {
    match kind {
        Kind::Object | Kind::Null => Ok(()),
        Kind::Array => Err("field 'properties' must be an object, got an array".into()),
        Kind::Scalar => Err("field 'properties' must be an object, got a scalar".into()),
    }
}

fn required(event: &Option<Value>, team: &Option<Value>, uuid: &Option<Value>) -> Result<(String, i64, String), String> {
    let name = match event {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) => {
            return Err("field 'event' is empty: the event name is required (plugins and ingestion select on it)".into());
        }
        Some(other) => return Err(format!("field 'event' must be a string, got {}", json_kind(other))),
        None => return Err("missing required field 'event': the event name is required (plugins and ingestion select on it)".into()),
    };
    let team_id = match team {
        Some(Value::Number(n)) if integer(n).is_some() => integer(n).expect("checked"),
        Some(Value::Number(n)) => return Err(format!("field 'team_id' must be an integer, got {n}")),
        Some(other) => return Err(format!("field 'team_id' must be an integer, got {}", json_kind(other))),
        None => {
            return Err(
                "missing required field 'team_id': it selects which plugin configurations run (pluginflow does not resolve API tokens)"
                    .into(),
            );
        }
    };
    let uuid = match uuid {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(other) => return Err(format!("field 'uuid' must be a non-empty string, got {}", json_kind(other))),
        None => return Err("missing required field 'uuid': it identifies the event in logs, dead letters and exports".into()),
    };
    Ok((name, team_id, uuid))
}

/// The integer a JSON number stands for, as JavaScript reads it: `2`, and also `2.0` or `2e0`
/// (a float writer's team id; PostHog's server read them as 2), up to 2^53 where doubles stop
/// being exact.
pub fn integer(n: &serde_json::Number) -> Option<i64> {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() <= EXACT).map(|f| f as i64))
}

/// How a JSON value reads in an error message ("an array", "a number", ...).
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(line: &[u8]) -> String {
        parse_line(line, "t", 1, &EventLimits::default()).unwrap_err().reason
    }

    #[test]
    fn plain_event_passes_through_as_is() {
        let line = br#"{"uuid":"u1","event":"$pageview","team_id":2,"properties":{"b":1,"a":2}}"#;
        let ev = parse_line(line, "t", 1, &EventLimits::default()).unwrap();
        assert_eq!(ev.json.as_bytes(), line);
        assert_eq!((ev.team_id, ev.uuid(), ev.name()), (2, "u1", "$pageview"));
    }

    #[test]
    fn envelope_is_merged_with_data_winning() {
        let line = br#"{"uuid":"u1","team_id":2,"ip":"","site_url":"","distinct_id":"d","data":"{\"event\":\"e\",\"properties\":{\"x\":1},\"distinct_id\":\"inner\"}"}"#;
        let ev = parse_line(line, "t", 1, &EventLimits::default()).unwrap();
        let v: Value = serde_json::from_str(&ev.json).unwrap();
        assert_eq!(v["event"], "e");
        assert_eq!(v["distinct_id"], "inner");
        assert!(v["ip"].is_null() && v["site_url"].is_null());
        assert!(v.get("data").is_none());
    }

    #[test]
    fn nesting_is_counted_outside_strings() {
        assert!(nesting_within(br#"{"a":[{"b":"[[[[{{{{\"]]"}]}"#, 3));
        assert!(!nesting_within(br#"{"a":[{"b":[1]}]}"#, 3));
        assert!(nesting_within(br#"{"a":[{"b":[1]}]}"#, 4));
        let deep = format!("{{\"p\":{}1{}}}", "[".repeat(30_000), "]".repeat(30_000));
        assert!(!nesting_within(deep.as_bytes(), 64));
        let err = parse_line(deep.as_bytes(), "t", 1, &EventLimits::default()).unwrap_err();
        assert!(err.reason.contains("nested deeper than runtime.max_event_depth (64 levels)"), "{}", err.reason);
    }

    #[test]
    fn lone_surrogates_pass_the_door_as_javascript_takes_them() {
        for line in [
            &br#"{"uuid":"u","event":"e","team_id":1,"properties":{"s":"a\ud800b"}}"#[..],
            br#"{"uuid":"u","event":"e","team_id":1,"properties":{"a\udc00":1}}"#,
            br#"{"uuid":"u","team_id":1,"ip":"","data":"{\"event\":\"e\",\"properties\":{\"s\":\"\\ud83d\"}}"}"#,
        ] {
            assert!(parse_line(line, "t", 1, &EventLimits::default()).is_ok(), "{}", String::from_utf8_lossy(line));
        }
        // The envelope's values are kept as written, the escape included.
        let line = br#"{"uuid":"u","team_id":1,"ip":"","data":"{\"event\":\"e\",\"properties\":{\"s\":\"x\\ud83d\"}}"}"#;
        let merged = parse_line(line, "t", 1, &EventLimits::default()).unwrap().json;
        assert_eq!(merged, r#"{"uuid":"u","team_id":1,"ip":null,"event":"e","properties":{"s":"x\ud83d"}}"#);
        // Head fields are read as Unicode text: one with a lone surrogate is named.
        for (line, field) in [
            (&br#"{"uuid":"u","event":"e\ud83d","team_id":1}"#[..], "event"),
            (br#"{"uuid":"\udc00","event":"e","team_id":1}"#, "uuid"),
            (br#"{"uuid":"u","team_id":1,"data":"{\"event\":\"\\ud83d\"}"}"#, "event"),
            // The `data` text itself holds the lone surrogate (escaped once): it cannot be read.
            (br#"{"uuid":"u","team_id":1,"data":"{\"s\":\"\ud83d\"}"}"#, "data"),
        ] {
            let why = reason(line);
            assert!(why.starts_with(&format!("field '{field}' holds a lone surrogate escape")), "{why}");
        }
        // A `data` that is not a string is an ordinary field, lone surrogates and all.
        let line = br#"{"event":"e","team_id":1,"uuid":"u","data":{"s":"\ud800"},"properties":{}}"#;
        assert_eq!(parse_line(line, "t", 1, &EventLimits::default()).unwrap().json.as_bytes(), line);
        // A number past f64 is not a lone surrogate, in a plain event or in an envelope.
        assert!(reason(br#"{"event":"e","team_id":1e400,"uuid":"u"}"#).starts_with("invalid JSON: number out of range"));
        let why = reason(br#"{"uuid":"u","data":"{\"event\":\"e\",\"team_id\":1e400}"}"#);
        assert!(why.starts_with("envelope field 'data' is not valid JSON: number out of range"), "{why}");
    }

    /// A small deterministic generator (xorshift), so a failure names a seed that reproduces it.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    fn ws(r: &mut Rng) -> &'static str {
        if r.below(6) == 0 { r.pick(&[" ", "\n", "\t\r ", "  "]) } else { "" }
    }

    /// A string token: valid but for one in 64, which has an escape serde refuses or a raw
    /// control byte.
    fn string(r: &mut Rng) -> String {
        let good =
            ["a", "$pageview", "x y", "é", "–", "😀", r#"\""#, r"\\", r"\/", r"\n", r"\u00e9", r"\ud800", r"\uDC00", "{[:,]}", "\u{7f}"];
        let bad = [r"\u12", r"\x", "\u{1}", "\t", r"\"];
        let body: String = (0..r.below(4))
            .map(|_| match r.below(64) {
                0 => r.pick(&bad),
                1..=16 => r.pick(&good),
                _ => "ab",
            })
            .collect();
        format!("\"{body}\"")
    }

    /// A number token, malformed one time in 64.
    fn number(r: &mut Rng) -> String {
        let good =
            ["0", "7", "-3", "-0", "12.5", "1e3", "1E-2", "-0.0e+1", "123456789012345678", "1234567890123456789", "99999999999999999999"];
        let bad = ["01", "1.", "1e", "-", ".5", "+1"];
        if r.below(64) == 0 { r.pick(&bad) } else { r.pick(&good) }.to_string()
    }

    fn value(r: &mut Rng, depth: usize) -> String {
        match r.below(if depth == 0 { 4 } else { 6 }) {
            0 | 3 => string(r),
            1 => number(r),
            2 if r.below(64) == 0 => r.pick(&["tru", "nul", "True"]).to_string(),
            2 => r.pick(&["true", "false", "null"]).to_string(),
            4 => {
                let items: Vec<String> = (0..r.below(4)).map(|_| format!("{}{}{}", ws(r), value(r, depth - 1), ws(r))).collect();
                format!("[{}]", items.join(","))
            }
            _ => {
                let members: Vec<String> =
                    (0..r.below(4)).map(|_| format!("{}{}{}:{}{}", ws(r), string(r), ws(r), ws(r), value(r, depth - 1))).collect();
                format!("{{{}}}", members.join(","))
            }
        }
    }

    /// An event-like line: most head fields, mostly of the right kinds; other keys; properties
    /// nested a few levels; sometimes a repeated field, an envelope's `data`, an escaped key.
    fn event_line(r: &mut Rng) -> String {
        let mut members: Vec<String> = (0..r.below(3)).map(|_| format!("{}:{}", string(r), value(r, 3))).collect();
        for (i, key) in ["event", "uuid", "team_id", "properties", "data", "distinct_id", "event"].into_iter().enumerate() {
            let present = match (i, key) {
                (_, "data") => r.below(12) == 0,
                (6, _) => r.below(4) == 0, // a repeated `event`
                _ => r.below(16) != 0,
            };
            if !present {
                continue;
            }
            let v = match (key, r.below(8)) {
                ("team_id", 0) => value(r, 1),
                ("team_id", 1) => number(r),
                ("team_id", _) => r.below(1000).to_string(),
                ("properties", 0) => value(r, 2),
                ("properties", _) => format!("{{\"p\":{},\"q\":{}}}", value(r, 4), value(r, 2)),
                ("data", 0) => r#""{\"event\":\"e\"}""#.to_string(),
                (_, 0) => value(r, 1),
                _ => format!("\"{}{}\"", r.pick(&["$pageview", "u-1", "", "é"]), r.below(100)),
            };
            let k = if r.below(20) == 0 { format!(r#""{key}\u0000""#) } else { format!("\"{key}\"") };
            members.push(format!("{}{}{}:{}{}{}", ws(r), k, ws(r), ws(r), v, ws(r)));
        }
        format!("{}{{{}}}{}", ws(r), members.join(","), ws(r))
    }

    /// Up to three byte edits; `None` when they break UTF-8.
    fn mangle(r: &mut Rng, line: String) -> Option<String> {
        let mut b = line.into_bytes();
        for _ in 0..1 + r.below(3) {
            let at = r.below(b.len() + 1);
            let bytes = b"\"{}[],: \\0123456789-+.eEtrfnul\x01\t";
            let byte = bytes[r.below(bytes.len())];
            match r.below(4) {
                0 if at < b.len() => drop(b.remove(at)),
                1 => b.insert(at, byte),
                2 if at < b.len() => b[at] = byte,
                _ => b.truncate(at),
            }
        }
        String::from_utf8(b).ok()
    }

    /// The one-pass scan may only take lines the full (serde_json) check accepts, and must read
    /// the same head from them.
    fn agree(line: &str, max_depth: usize) -> Option<bool> {
        let full = check_fully(line, &EventLimits { max_depth, ..EventLimits::default() });
        let head = scan::plain_head(line.as_bytes(), max_depth)?;
        let ev = full.unwrap_or_else(|e| panic!("the scan took a line the full check refuses ({e}): {line}"));
        assert_eq!((&line[head.name], head.team_id, &line[head.uuid]), (ev.name(), ev.team_id, ev.uuid()), "{line}");
        assert_eq!(ev.json, line);
        Some(true)
    }

    #[test]
    fn the_scan_agrees_with_the_full_check() {
        let (mut cases, mut valid, mut taken) = (0, 0, 0);
        for seed in 1..=60_000u64 {
            let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let clean = event_line(&mut r);
            let Some(line) = (if r.below(3) == 0 { mangle(&mut r, clean) } else { Some(clean) }) else { continue };
            let max_depth = 2 + r.below(6);
            cases += 1;
            valid += usize::from(check_fully(&line, &EventLimits { max_depth, ..EventLimits::default() }).is_ok());
            taken += usize::from(agree(&line, max_depth).is_some());
        }
        // The scan must also do its work: most valid lines are plain events it takes.
        eprintln!("{cases} lines, {valid} valid, {taken} taken by the scan");
        assert!(valid * 5 > cases && taken * 10 > valid * 6, "{cases} lines, {valid} valid, {taken} taken by the scan");
    }

    /// Up to three edits with bytes past ASCII: lone continuation bytes, lead bytes without
    /// their continuations, bytes never in UTF-8, an encoded surrogate, a character cut short.
    fn mangle_utf8(r: &mut Rng, line: String) -> Vec<u8> {
        let mut b = line.into_bytes();
        let pieces: [&[u8]; 9] =
            [b"\x80", b"\xbf", b"\xc3", b"\xe2\x80", b"\xf0\x9f\x98", b"\xc0\xaf", b"\xff", b"\xed\xa0\x80", "é".as_bytes()];
        for _ in 0..1 + r.below(3) {
            let at = r.below(b.len() + 1);
            let piece = pieces[r.below(pieces.len())];
            match r.below(3) {
                0 if at < b.len() => drop(b.splice(at..at + 1, piece.iter().copied())),
                1 => drop(b.splice(at..at, piece.iter().copied())),
                _ => b.truncate(at),
            }
        }
        b
    }

    #[test]
    fn the_scan_takes_only_utf8() {
        // std's UTF-8 check is the oracle: a line the scan takes is UTF-8 (parse_owned_line
        // keeps it as a String without a second pass), and one that is not UTF-8 is a dead
        // letter saying so, whatever the scan thinks of its JSON.
        let (mut cases, mut not_utf8, mut valid_past_ascii, mut taken_past_ascii) = (0, 0, 0, 0);
        for seed in 1..=60_000u64 {
            let mut r = Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1);
            let clean = event_line(&mut r);
            let bytes = if r.below(2) == 0 { mangle_utf8(&mut r, clean) } else { clean.into_bytes() };
            let max_depth = 2 + r.below(6);
            cases += 1;
            let utf8 = std::str::from_utf8(&bytes);
            if let Ok(text) = utf8 {
                valid_past_ascii +=
                    usize::from(!text.is_ascii() && check_fully(text, &EventLimits { max_depth, ..EventLimits::default() }).is_ok());
            }
            if let Some(head) = scan::plain_head(&bytes, max_depth) {
                let text = utf8.unwrap_or_else(|e| panic!("the scan took a line that is not UTF-8 ({e}): {bytes:?}"));
                agree(text, max_depth).expect("taken");
                assert_eq!(&text[head.uuid.clone()], &text[head.uuid]);
                taken_past_ascii += usize::from(!text.is_ascii());
            }
            let limits = EventLimits { max_depth, ..EventLimits::default() };
            match (utf8, parse_line(&bytes, "t", 1, &limits)) {
                (Err(e), Ok(ev)) => panic!("a line that is not UTF-8 ({e}) was taken: {ev:?}"),
                (Err(e), Err(letter)) => {
                    not_utf8 += 1;
                    assert_eq!(letter.reason, format!("invalid UTF-8 at byte {}", e.valid_up_to()));
                }
                (Ok(_), Ok(_)) => {}
                (Ok(_), Err(letter)) => assert!(!letter.reason.starts_with("invalid UTF-8"), "{letter:?}"),
            }
        }
        // Both kinds must be common, and the scan must take most valid lines past ASCII.
        let counts = format!(
            "{cases} lines, {not_utf8} not UTF-8, {valid_past_ascii} valid past ASCII, {taken_past_ascii} of them taken by the scan"
        );
        eprintln!("{counts}");
        assert!(not_utf8 * 5 > cases && valid_past_ascii * 20 > cases && taken_past_ascii * 10 > valid_past_ascii * 6, "{counts}");
    }

    #[test]
    fn the_scan_takes_plain_events_and_leaves_the_rest_to_the_full_check() {
        let h = r#""uuid":"u","event":"e""#;
        let cases = [
            (format!(r#"{{{h},"team_id":0}}"#), true),
            (format!(r#"{{{h},"team_id":999999999999999999}}"#), true),
            (format!(" \t{{ {h} ,\n\"team_id\" : 7 }}\r "), true),
            (format!(r#"{{{h},"team_id":1,"properties":null}}"#), true),
            (format!(r#"{{{h},"team_id":1,"p":"\ud800","q":{{"\udc00":[]}}}}"#), true),
            (format!(r#"{{{h},"team_id":1,"team_id":"1"}}"#), false),
            (format!(r#"{{{h},"team_id":"1","team_id":1}}"#), false),
            (format!(r#"{{{h},"team_id":1,"properties":[],"properties":{{}}}}"#), true),
            (format!(r#"{{{h},"team_id":1,"properties":[]}}"#), false),
            (format!(r#"{{{h},"team_id":-0}}"#), false),
            (format!(r#"{{{h},"team_id":-5}}"#), false),
            (format!(r#"{{{h},"team_id":05}}"#), false),
            (format!(r#"{{{h},"team_id":5.0}}"#), false),
            (format!(r#"{{{h},"team_id":5e0}}"#), false),
            (format!(r#"{{{h},"team_id":9223372036854775807}}"#), false),
            (format!(r#"{{{h},"team_id":1,}}"#), false),
            (format!(r#"{{{h},"team_id":1}} x"#), false),
            (format!(r#"{{{h},"team_id":1,"p":[1,]}}"#), false),
            (format!(r#"{{{h},"team_id":1,"p":{{"a":1,}}}}"#), false),
            (format!("{{{h},\"team_id\":1,\"p\":\"\u{1}\"}}"), false),
            (format!(r#"{{{h},"team_id":1,"p":"\x"}}"#), false),
            (format!(r#"{{{h},"team_id":1,"p":"\u12"}}"#), false),
            (format!(r#"{{{h},"team_id":1,"data":"{{}}"}}"#), false),
            (format!(r#"{{{h},"team_id":1,"p":-}}"#), false),
            (format!(r#"{{{h},"team_id":1,"p":1.e3}}"#), false),
            (format!(r#"{{{h},"team_id":1,"p":01}}"#), false),
            (format!(r#"{{{h},"team_id":1,"\u0065vent":"x"}}"#), false),
            (format!(r#"{{"uuid":"u","event":"e\u0301",{t}}}"#, t = r#""team_id":1"#), false),
            (format!(r#"{{"uuid":"u","event":"",{t}}}"#, t = r#""team_id":1"#), false),
            (format!("\u{feff}{{{h},\"team_id\":1}}"), false),
            (format!("\u{a0}{{{h},\"team_id\":1}}"), false),
            // Control bytes between tokens are not whitespace; separators must separate.
            (format!("{{{h},\"team_id\":1\u{b}}}"), false),
            (format!("{{{h},\u{0}\"team_id\":1}}"), false),
            (format!("{{{h},\"team_id\":1,\"p\":[1\u{1f}]}}"), false),
            (format!("{{{h},\"team_id\":1,\"p\":{{\u{c}}}}}"), false),
            (format!(r#"{{{h},,"team_id":1}}"#), false),
            (format!(r#"{{{h},"team_id":1,"p":[,1]}}"#), false),
            (format!(r#"{{{h},"team_id":1,"p":[1,,2]}}"#), false),
            (format!(r#"{{{h},"team_id":1,"p":{{,"a":1}}}}"#), false),
        ];
        for (line, taken) in &cases {
            assert_eq!(agree(line, 64).is_some(), *taken, "{line}");
        }
    }

    #[test]
    fn bytes_past_ascii_anywhere_after_a_valid_character_are_still_checked() {
        // A line with a valid character before a bad sequence: the check of the rest must
        // reach the end of the line, not stop at the string or the character.
        let cases: [&[u8]; 6] = [
            b"{\"event\":\"\xc3\xa9\",\"uuid\":\"\xff\",\"team_id\":1}",
            b"{\"event\":\"\xc3\xa9\",\"uuid\":\"u\",\"team_id\":1,\"p\":\"\xed\xa0\x80\"}",
            b"{\"event\":\"\xc3\xa9\",\"\xc3\":1,\"uuid\":\"u\",\"team_id\":1}",
            b"{\"event\":\"e\",\"uuid\":\"u\",\"team_id\":1}\xff\r\n",
            b"{\"event\":\"\xc3\xa9\",\"uuid\":\"u\",\"team_id\":1,\"p\":\"\xf0\x9f\x98\"}",
            b"{\"event\":\"\xc3\xa9\",\"uuid\":\"u\",\"team_id\":1,\"p\":\"\xc0\xaf\"}",
        ];
        for line in cases {
            assert!(scan::plain_head(line, 64).is_none(), "{line:?}");
            let letter = parse_line(line, "t", 1, &EventLimits::default()).unwrap_err();
            let valid = std::str::from_utf8(line).unwrap_err().valid_up_to();
            assert_eq!(letter.reason, format!("invalid UTF-8 at byte {valid}"), "{line:?}");
        }
        // The same lines made valid are taken.
        let fine: &[u8] = b"{\"event\":\"\xc3\xa9\",\"uuid\":\"\xf0\x9f\x98\x80\",\"team_id\":1,\"p\":\"\xe2\x80\x93\"}";
        assert!(scan::plain_head(fine, 64).is_some());
    }

    #[test]
    fn a_team_id_written_as_a_float_is_its_integer_as_in_javascript() {
        // JSON.parse gives the same number for each: PostHog's server took them all.
        for (text, team) in [("2.0", 2), ("2e0", 2), ("-0.0", 0), ("20E-1", 2), ("9007199254740992.0", 9_007_199_254_740_992)] {
            let line = format!(r#"{{"uuid":"u","event":"e","team_id":{text},"properties":{{}}}}"#);
            let ev = parse_line(line.as_bytes(), "t", 1, &EventLimits::default()).unwrap_or_else(|d| panic!("{text}: {}", d.reason));
            assert_eq!(ev.team_id, team, "{text}");
            assert_eq!(ev.json, line, "the text goes on as it came");
        }
    }

    #[test]
    fn each_bad_line_gets_its_reason() {
        assert!(reason(b"{\"event\": ").starts_with("invalid JSON"));
        assert_eq!(reason(b"[1,2]"), "expected a JSON object (an event), got an array");
        assert!(reason(br#"{"uuid":"u","team_id":1}"#).starts_with("missing required field 'event'"));
        assert!(reason(br#"{"uuid":"u","event":"e"}"#).starts_with("missing required field 'team_id'"));
        assert!(reason(br#"{"team_id":1,"event":"e"}"#).starts_with("missing required field 'uuid'"));
        assert!(reason(br#"{"uuid":"u","event":"e","team_id":"1"}"#).starts_with("field 'team_id' must be an integer"));
        assert_eq!(reason(br#"{"uuid":"u","event":"e","team_id":1.5}"#), "field 'team_id' must be an integer, got 1.5");
        assert!(reason(br#"{"uuid":"u","event":"e","team_id":1e300}"#).starts_with("field 'team_id' must be an integer"));
        assert!(reason(br#"{"uuid":"u","team_id":1,"data":"{nope"}"#).starts_with("envelope field 'data' is not valid JSON"));
        let bad = parse_line(b"{\"event\":\"\xff\"}", "t", 9, &EventLimits::default()).unwrap_err();
        assert_eq!(bad.reason, "invalid UTF-8 at byte 10");
        assert_eq!(bad.position, 9);
        assert!(bad.raw_base64.is_some());
    }
}
