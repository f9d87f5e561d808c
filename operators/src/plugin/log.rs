//! Plugin log entries: `console.*` calls and the host's own messages about a plugin.
//!
//! An entry carries plugin, configuration, team, level, source, message and time, as PostHog's
//! `plugin_log_entries` did. Sinks decide where entries go (stderr as JSON lines, a file, a
//! Kafka topic); secret config values are masked before an entry is made.

use crate::sync::lock;
use std::io::Write;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

/// Identity of the plugin instance a context belongs to.
#[derive(Clone, Debug)]
pub struct InstanceIdentity {
    /// Plugin display name.
    pub plugin: String,
    /// Plugin configuration id.
    pub config_id: String,
    /// Team the configuration belongs to; `None` for all teams.
    pub team_id: Option<i64>,
}

/// Log level, as PostHog's log entry `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogLevel {
    /// `console.debug`.
    Debug,
    /// `console.log`.
    Log,
    /// `console.info` and host notices.
    Info,
    /// `console.warn`.
    Warn,
    /// `console.error` and plugin errors.
    Error,
}

impl LogLevel {
    /// The level of a console method name (upper-cased, as the prelude sends it).
    pub fn from_console(name: &str) -> Self {
        match name {
            "DEBUG" => Self::Debug,
            "INFO" => Self::Info,
            "WARN" => Self::Warn,
            "ERROR" => Self::Error,
            _ => Self::Log,
        }
    }

    /// PostHog's name for the level.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Debug => "DEBUG",
            Self::Log => "LOG",
            Self::Info => "INFO",
            Self::Warn => "WARN",
            Self::Error => "ERROR",
        }
    }
}

/// Who wrote a log entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogSource {
    /// The host, about the plugin's lifecycle.
    System,
    /// A plugin error recorded by the host.
    Plugin,
    /// The plugin's own `console` call.
    Console,
}

impl LogSource {
    /// PostHog's name for the source.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "SYSTEM",
            Self::Plugin => "PLUGIN",
            Self::Console => "CONSOLE",
        }
    }
}

/// One log entry.
#[derive(Clone, Debug, PartialEq)]
pub struct LogEntry {
    /// Plugin display name.
    pub plugin: String,
    /// Plugin configuration id.
    pub config_id: String,
    /// Team of the configuration, if scoped to one.
    pub team_id: Option<i64>,
    /// Level.
    pub level: LogLevel,
    /// Source.
    pub source: LogSource,
    /// The message, with secrets masked.
    pub message: String,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

impl LogEntry {
    /// An entry stamped now.
    pub fn new(identity: &InstanceIdentity, level: LogLevel, source: LogSource, message: String) -> Self {
        Self {
            plugin: identity.plugin.clone(),
            config_id: identity.config_id.clone(),
            team_id: identity.team_id,
            level,
            source,
            message,
            timestamp_ms: now_ms(),
        }
    }

    /// The entry as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "timestamp": format_iso(self.timestamp_ms),
            "plugin": self.plugin,
            "plugin_config_id": self.config_id,
            "team_id": self.team_id,
            "source": self.source.as_str(),
            "type": self.level.as_str(),
            "message": self.message,
        })
    }
}

/// Where log entries go. Called on the worker thread; keep it cheap.
pub trait LogSink: Send + Sync {
    /// Records one entry.
    fn log(&self, entry: LogEntry);

    /// The first error that kept an entry from being written, if any: the run stops on it
    /// rather than lose log entries silently.
    fn failure(&self) -> Option<String> {
        None
    }
}

/// Keeps entries in memory (tests, summaries).
#[derive(Default)]
pub struct MemoryLogSink {
    entries: Mutex<Vec<LogEntry>>,
}

impl MemoryLogSink {
    /// A copy of the entries so far.
    pub fn entries(&self) -> Vec<LogEntry> {
        lock(&self.entries).clone()
    }
}

impl LogSink for MemoryLogSink {
    fn log(&self, entry: LogEntry) {
        lock(&self.entries).push(entry);
    }
}

/// Writes each entry as one JSON line.
pub struct JsonLinesLogSink<W: Write + Send> {
    out: Mutex<W>,
    failed: Mutex<Option<String>>,
}

impl<W: Write + Send> JsonLinesLogSink<W> {
    /// A sink writing to `out`.
    pub fn new(out: W) -> Self {
        Self { out: Mutex::new(out), failed: Mutex::new(None) }
    }
}

impl<W: Write + Send> LogSink for JsonLinesLogSink<W> {
    fn log(&self, entry: LogEntry) {
        let mut out = lock(&self.out);
        let written = writeln!(out, "{}", entry.to_json()).and_then(|()| out.flush());
        if let Err(e) = written {
            // Kept for the run to stop on (the worker loop checks `failure`).
            lock(&self.failed).get_or_insert_with(|| e.to_string());
        }
    }

    fn failure(&self) -> Option<String> {
        lock(&self.failed).clone()
    }
}

/// Masks secret configuration values in text.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

/// What a masked secret reads as.
pub const REDACTED: &str = "**************** POSTHOG SECRET FIELD ****************";

impl Redactor {
    /// Masks each of `secrets` (empty strings are ignored).
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut secrets: Vec<String> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
        // A secret logged through JSON.stringify appears escaped (`"` as `\"`, controls as
        // `\n` or `\u0001`): mask that spelling too.
        let escaped: Vec<String> = secrets
            .iter()
            .map(|s| serde_json::Value::String(s.clone()).to_string())
            .map(|quoted| quoted[1..quoted.len() - 1].to_string())
            .filter(|e| !secrets.contains(e))
            .collect();
        secrets.extend(escaped);
        // Longest first, so a secret containing another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self { secrets }
    }

    /// `text` with every secret replaced.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), REDACTED);
            }
        }
        out
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Now as an ISO 8601 UTC timestamp with milliseconds.
pub fn iso_now() -> String {
    format_iso(now_ms())
}

/// Formats milliseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_iso(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, ms % 1000)
}

/// Howard Hinnant's days-to-civil algorithm: (year, month, day) of days since 1970-01-01.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_format_matches_known_instants() {
        assert_eq!(format_iso(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_iso(1_717_401_600_123), "2024-06-03T08:00:00.123Z");
        assert_eq!(format_iso(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn redactor_masks_every_secret() {
        let r = Redactor::new(vec!["abc".to_string(), "abcdef".to_string(), String::new()]);
        assert_eq!(r.redact("key abcdef and abc"), format!("key {REDACTED} and {REDACTED}"));
        assert_eq!(r.redact("nothing"), "nothing");
    }
}
