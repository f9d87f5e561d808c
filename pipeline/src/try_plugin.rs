//! `pluginflow try`: a plugin author's local loop. One plugin instance, `setupPlugin`, then
//! `processEvent` for each input line in order, one output line per input line, then
//! `teardownPlugin`.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use operators::plugin::{
    GeoIp, HostServices, InstanceConfig, Limits, LogLevel, LogSink, PluginDefinition, PluginInstance, PluginRuntime, StepOutcome,
};
use state::MemoryStore;

/// What `try` was asked to do.
#[derive(Clone, Debug, Default)]
pub struct TryOptions {
    /// The plugin folder.
    pub dir: PathBuf,
    /// Config values as a JSON object.
    pub config_json: Option<String>,
    /// Attachments as (key, file).
    pub attachments: Vec<(String, PathBuf)>,
    /// MaxMind database for `geoip.locate`.
    pub geoip: Option<PathBuf>,
    /// Per-call deadline.
    pub call_timeout: Option<Duration>,
}

/// Why `try` could not run the plugin at all (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TryError(pub String);

/// Counts of a `try` run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TryReport {
    /// Lines read.
    pub lines: u64,
    /// Events dropped by the plugin.
    pub dropped: u64,
    /// Calls that failed (the event was printed as it stood).
    pub failed: u64,
}

/// Loads the plugin and runs `setupPlugin`.
pub fn load(opts: &TryOptions, logs: Arc<dyn LogSink>) -> Result<(PluginRuntime, PluginInstance), TryError> {
    let def = PluginDefinition::load(&opts.dir).map_err(|e| TryError(e.to_string()))?;
    let config = match &opts.config_json {
        None => serde_json::Map::new(),
        Some(text) => match serde_json::from_str(text) {
            Ok(serde_json::Value::Object(m)) => m,
            Ok(_) => return Err(TryError("--config must be a JSON object".into())),
            Err(e) => return Err(TryError(format!("--config is not valid JSON: {e}"))),
        },
    };
    let geoip = match &opts.geoip {
        Some(p) => Some(Arc::new(GeoIp::open(p).map_err(TryError)?)),
        None => None,
    };
    let services = HostServices::new(Arc::new(MemoryStore::new()), geoip, logs, Duration::from_secs(10));
    let limits = Limits { call_timeout: opts.call_timeout.unwrap_or(Limits::default().call_timeout), ..Limits::default() };
    let runtime = PluginRuntime::new(limits).map_err(TryError)?;
    let cfg = InstanceConfig {
        config_id: "try".into(),
        team_id: None,
        config,
        attachments: opts.attachments.iter().cloned().collect::<BTreeMap<_, _>>(),
    };
    let mut instance = PluginInstance::new(&runtime, &def, &cfg, &services).map_err(|e| TryError(e.to_string()))?;
    instance.setup().map_err(|e| TryError(format!("setupPlugin failed: {}: {}", e.name, e.message)))?;
    Ok((runtime, instance))
}

/// Runs `processEvent` over every line of `input`, writing one line per input line to `out`.
pub fn run_lines(instance: &mut PluginInstance, input: impl BufRead, mut out: impl Write) -> std::io::Result<TryReport> {
    let mut report = TryReport::default();
    for line in input.lines() {
        let line = line?;
        report.lines += 1;
        if line.trim().is_empty() {
            writeln!(out, "null")?;
            continue;
        }
        let team = match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(v) => v.get("team_id").and_then(serde_json::Value::as_i64),
            Err(e) => {
                report.failed += 1;
                instance.log_system(LogLevel::Error, &format!("input line {} is not valid JSON: {e}", report.lines));
                writeln!(out, "null")?;
                continue;
            }
        };
        let result = match instance.process_team(&line, team) {
            StepOutcome::Kept(e) => e,
            StepOutcome::Dropped => {
                report.dropped += 1;
                "null".to_string()
            }
            StepOutcome::Failed(err, kept) => {
                report.failed += 1;
                instance.log_error(&err, None);
                kept.unwrap_or(line)
            }
        };
        writeln!(out, "{result}")?;
    }
    out.flush()?;
    Ok(report)
}
