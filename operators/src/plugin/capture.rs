//! `posthog.capture`: the event a plugin captures, built as PostHog's server built it.

use crate::event::members::Members;

use super::log::InstanceIdentity;

/// `$lib` of captured events.
pub const CAPTURE_LIB: &str = "posthog-plugin-server";

/// Builds a captured event: `distinct_id` and `timestamp` come from the properties when given
/// (and leave them), else the plugin name and now; the event gets a fresh uuid and the
/// configuration's team.
/// `properties` is the JSON text of the plugin's object; its values are kept as written (a lone
/// surrogate escape included, as `JSON.stringify` writes one). Returns the event's JSON text.
pub(crate) fn captured_event(identity: &InstanceIdentity, event: &str, properties: &str) -> Result<String, String> {
    let mut given = Members::parse(properties).map_err(|e| format!("properties must be an object: {e}"))?;
    let quoted = |s: &str| serde_json::to_string(s).expect("a string serialises");
    let distinct_id = match given.get("distinct_id") {
        Some(s) if s.get().starts_with('"') => s.get().to_string(),
        Some(v) if v.get() != "null" => quoted(v.get()),
        _ => quoted(&identity.plugin),
    };
    let timestamp = match given.get("timestamp") {
        Some(s) if s.get().starts_with('"') => s.get().to_string(),
        _ => quoted(&super::log::iso_now()),
    };
    given.remove("distinct_id");
    given.remove("timestamp");
    // The plugin's properties may replace `$lib` and `$lib_version`, in their places.
    let ours =
        format!(r#"{{"$lib":{},"$lib_version":{},"distinct_id":{distinct_id}}}"#, quoted(CAPTURE_LIB), quoted(env!("CARGO_PKG_VERSION")));
    let mut props = Members::parse(&ours).expect("our own object");
    props.extend(given);
    let team = identity.team_id.map_or_else(|| "null".to_string(), |t| t.to_string());
    Ok(format!(
        r#"{{"distinct_id":{distinct_id},"event":{},"timestamp":{timestamp},"properties":{},"team_id":{team},"uuid":{},"ip":null,"site_url":null,"now":{timestamp}}}"#,
        quoted(event),
        props.text(),
        quoted(&super::natives::random_uuid()),
    ))
}
