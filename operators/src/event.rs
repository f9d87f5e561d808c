//! From a raw input line to an event the plugins can take, or to a dead letter saying why not.
//!
//! Two shapes are accepted: a plain `PluginEvent` object, and PostHog's
//! `events_plugin_ingestion` envelope whose `data` field is a JSON string (spec §1.1). A plain
//! event that passes the checks is forwarded as the very text it came in (no re-serialisation);
//! an envelope is merged and serialised once, keys in order.

use serde::Deserialize;
use serde_json::{Map, Value};

/// A line that is a valid event.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidEvent {
    /// The event as JSON text.
    pub json: String,
    /// Its `team_id`.
    pub team_id: i64,
    /// Its `uuid`.
    pub uuid: String,
    /// Its name (`event`).
    pub name: String,
    /// How many `posthog.capture` calls in a row led to it (0 for input events).
    pub hops: u32,
}

/// A line that is not a valid event, kept whole with the reason.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    /// Where the line came from (file path or topic).
    pub source: String,
    /// Line number (1-based) or offset in the source.
    pub position: u64,
    /// Why the line was rejected.
    pub reason: String,
    /// The raw line (lossy UTF-8).
    pub raw: String,
    /// The raw bytes in base64 when they were not valid UTF-8, so nothing is lost.
    pub raw_base64: Option<String>,
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
        Value::Object(m)
    }
}

/// The few fields checked; everything else is skipped without allocating.
#[derive(Deserialize)]
struct Head {
    event: Option<Value>,
    team_id: Option<Value>,
    uuid: Option<Value>,
    data: Option<Value>,
    #[serde(rename = "$pluginflow_hops")]
    hops: Option<u32>,
}

/// Checks one line. `source` and `position` only label a dead letter.
pub fn parse_line(bytes: &[u8], source: &str, position: u64) -> Result<ValidEvent, DeadLetter> {
    let dead = |reason: String, raw: String, raw_base64: Option<String>| DeadLetter {
        source: source.to_string(),
        position,
        reason,
        raw,
        raw_base64,
    };
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t.trim_end_matches(['\r', '\n']),
        Err(e) => {
            use base64::Engine as _;
            return Err(dead(
                format!("invalid UTF-8 at byte {}", e.valid_up_to()),
                String::from_utf8_lossy(bytes).into_owned(),
                Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
            ));
        }
    };
    check(text).map_err(|reason| dead(reason, text.to_string(), None))
}

fn check(text: &str) -> Result<ValidEvent, String> {
    let first = text.trim_start().chars().next();
    if first != Some('{') {
        let what = match serde_json::from_str::<Value>(text) {
            Ok(v) => json_kind(&v).to_string(),
            Err(e) => return Err(format!("invalid JSON: {e}")),
        };
        return Err(format!("expected a JSON object (an event), got {what}"));
    }
    let head: Head = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    if let Some(Value::String(data)) = &head.data {
        return from_envelope(text, data);
    }
    let (name, team_id, uuid) = required(&head.event, &head.team_id, &head.uuid)?;
    if let Some(hops) = head.hops {
        // A captured event coming back: its hop count is ours, not part of the event.
        let Value::Object(mut m) = serde_json::from_str::<Value>(text).map_err(|e| format!("invalid JSON: {e}"))? else {
            unreachable!("checked to start with an object");
        };
        m.remove("$pluginflow_hops");
        return Ok(ValidEvent { json: Value::Object(m).to_string(), team_id, uuid, name, hops });
    }
    Ok(ValidEvent { json: text.to_string(), team_id, uuid, name, hops: 0 })
}

/// Merges an ingestion envelope: `data` is parsed and its keys win over the envelope's (the
/// 2022 server's order), `data` itself is removed, and empty `ip`/`site_url` become null.
fn from_envelope(text: &str, data: &str) -> Result<ValidEvent, String> {
    let Value::Object(mut envelope) = serde_json::from_str::<Value>(text).map_err(|e| format!("invalid JSON: {e}"))? else {
        unreachable!("checked to start with an object");
    };
    let inner = match serde_json::from_str::<Value>(data) {
        Ok(Value::Object(m)) => m,
        Ok(other) => return Err(format!("envelope field 'data' must hold a JSON object, got {}", json_kind(&other))),
        Err(e) => return Err(format!("envelope field 'data' is not valid JSON: {e}")),
    };
    envelope.remove("data");
    envelope.extend(inner);
    for key in ["ip", "site_url"] {
        if envelope.get(key).is_some_and(|v| v.as_str() == Some("")) {
            envelope.insert(key.into(), Value::Null);
        }
    }
    let (name, team_id, uuid) = required(&envelope.get("event").cloned(), &envelope.get("team_id").cloned(), &envelope.get("uuid").cloned())?;
    let json = Value::Object(envelope).to_string();
    Ok(ValidEvent { json, team_id, uuid, name, hops: 0 })
}

fn required(event: &Option<Value>, team: &Option<Value>, uuid: &Option<Value>) -> Result<(String, i64, String), String> {
    let name = match event {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) => return Err("field 'event' is empty: the event name is required (plugins and ingestion select on it)".into()),
        Some(other) => return Err(format!("field 'event' must be a string, got {}", json_kind(other))),
        None => return Err("missing required field 'event': the event name is required (plugins and ingestion select on it)".into()),
    };
    let team_id = match team {
        Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64().expect("checked"),
        Some(other) => return Err(format!("field 'team_id' must be an integer, got {}", json_kind(other))),
        None => return Err("missing required field 'team_id': it selects which plugin configurations run (pluginflow does not resolve API tokens)".into()),
    };
    let uuid = match uuid {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(other) => return Err(format!("field 'uuid' must be a non-empty string, got {}", json_kind(other))),
        None => return Err("missing required field 'uuid': it identifies the event in logs, dead letters and exports".into()),
    };
    Ok((name, team_id, uuid))
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
        parse_line(line, "t", 1).unwrap_err().reason
    }

    #[test]
    fn plain_event_passes_through_as_is() {
        let line = br#"{"uuid":"u1","event":"$pageview","team_id":2,"properties":{"b":1,"a":2}}"#;
        let ev = parse_line(line, "t", 1).unwrap();
        assert_eq!(ev.json.as_bytes(), line);
        assert_eq!((ev.team_id, ev.uuid.as_str(), ev.name.as_str()), (2, "u1", "$pageview"));
    }

    #[test]
    fn envelope_is_merged_with_data_winning() {
        let line = br#"{"uuid":"u1","team_id":2,"ip":"","site_url":"","distinct_id":"d","data":"{\"event\":\"e\",\"properties\":{\"x\":1},\"distinct_id\":\"inner\"}"}"#;
        let ev = parse_line(line, "t", 1).unwrap();
        let v: Value = serde_json::from_str(&ev.json).unwrap();
        assert_eq!(v["event"], "e");
        assert_eq!(v["distinct_id"], "inner");
        assert!(v["ip"].is_null() && v["site_url"].is_null());
        assert!(v.get("data").is_none());
    }

    #[test]
    fn each_bad_line_gets_its_reason() {
        assert!(reason(b"{\"event\": ").starts_with("invalid JSON"));
        assert_eq!(reason(b"[1,2]"), "expected a JSON object (an event), got an array");
        assert!(reason(br#"{"uuid":"u","team_id":1}"#).starts_with("missing required field 'event'"));
        assert!(reason(br#"{"uuid":"u","event":"e"}"#).starts_with("missing required field 'team_id'"));
        assert!(reason(br#"{"team_id":1,"event":"e"}"#).starts_with("missing required field 'uuid'"));
        assert!(reason(br#"{"uuid":"u","event":"e","team_id":"1"}"#).starts_with("field 'team_id' must be an integer"));
        assert!(reason(br#"{"uuid":"u","team_id":1,"data":"{nope"}"#).starts_with("envelope field 'data' is not valid JSON"));
        let bad = parse_line(b"{\"event\":\"\xff\"}", "t", 9).unwrap_err();
        assert_eq!(bad.reason, "invalid UTF-8 at byte 10");
        assert_eq!(bad.position, 9);
        assert!(bad.raw_base64.is_some());
    }
}
