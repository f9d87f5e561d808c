//! `posthog.capture`: the event a plugin captures, built as PostHog's server built it.

use serde_json::{Map, Value, json};

use super::log::InstanceIdentity;

/// `$lib` of captured events.
pub const CAPTURE_LIB: &str = "posthog-plugin-server";

/// Builds a captured event: `distinct_id` and `timestamp` come from the properties when given
/// (and leave them), else the plugin name and now; the event gets a fresh uuid and the
/// configuration's team.
pub(crate) fn captured_event(identity: &InstanceIdentity, event: &str, mut properties: Map<String, Value>) -> Value {
    let distinct_id = match properties.remove("distinct_id") {
        Some(Value::String(s)) => s,
        Some(Value::Null) | None => identity.plugin.clone(),
        Some(other) => other.to_string(),
    };
    let timestamp = match properties.remove("timestamp") {
        Some(Value::String(s)) => s,
        _ => super::log::iso_now(),
    };
    let mut props = Map::new();
    props.insert("$lib".into(), json!(CAPTURE_LIB));
    props.insert("$lib_version".into(), json!(env!("CARGO_PKG_VERSION")));
    props.insert("distinct_id".into(), json!(distinct_id));
    props.extend(properties);
    json!({
        "distinct_id": distinct_id,
        "event": event,
        "timestamp": timestamp,
        "properties": props,
        "team_id": identity.team_id,
        "uuid": super::natives::random_uuid(),
        "ip": null,
        "site_url": null,
        "now": timestamp,
    })
}
