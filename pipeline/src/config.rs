//! The pipeline configuration file (TOML): what to read, where to write, which plugins run for
//! which teams. Every field is documented in `docs/config.md`; [`PipelineConfig::load`] checks
//! the file once at start and names the field at fault.
//!
//! Relative paths are resolved against the folder holding the configuration file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A configuration problem, naming the file and the field.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}: {problem}")]
pub struct ConfigError {
    /// The configuration file.
    pub file: String,
    /// The field, as a dotted path (`plugins[1].path`).
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Where events come from.
    pub input: InputConfig,
    /// Where results go.
    #[serde(default)]
    pub output: OutputConfig,
    /// Durable state (plugin cache and storage).
    #[serde(default)]
    pub state: StateConfig,
    /// MaxMind database for `geoip.locate`.
    #[serde(default)]
    pub geoip: Option<GeoipConfig>,
    /// Limits and batching.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// The HTTP endpoint (`/healthz`, `/metrics`, `/plugins`); off when omitted.
    #[serde(default)]
    pub http: Option<HttpConfig>,
    /// Plugin configurations, each for some teams or all.
    #[serde(default)]
    pub plugins: Vec<PluginEntry>,
    /// Kafka brokers, topics and delivery mode; required when `input.kind = "kafka"`.
    #[serde(default)]
    pub kafka: Option<crate::kafka::KafkaConfig>,
    /// A folder of plugin configurations, one TOML file each, watched while running.
    #[serde(default)]
    pub plugin_configs: Option<PluginConfigsConfig>,
}

/// `[plugin_configs]`: plugin configurations that come and go while the pipeline runs.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfigsConfig {
    /// The folder: each `*.toml` file in it is one configuration, with the fields of a
    /// `[[plugins]]` entry (relative paths are relative to the folder).
    pub dir: PathBuf,
}

/// `[input]`: a recorded JSON-lines event log, or Kafka (`kind = "kafka"`, topics in `[kafka]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// Where events come from: `file` (the default) or `kafka`.
    #[serde(default)]
    pub kind: InputKind,
    /// Path of the log (`kind = "file"` only). Each line is an event, either plain or in
    /// PostHog's ingestion envelope. Empty when the input is Kafka.
    #[serde(default)]
    pub path: PathBuf,
    /// Keep reading lines appended to the log, as `tail -f` does, until stopped (`kind =
    /// "file"` only), with one worker; a line is read once its newline is written.
    #[serde(default)]
    pub follow: bool,
}

/// What `[input]` reads.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    /// A recorded JSON-lines log (`input.path`).
    #[default]
    File,
    /// The `[kafka]` input topic, through a consumer group.
    Kafka,
}

/// `[output]`: JSON-lines files (`-` for standard output).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Processed events.
    #[serde(default = "default_events_path")]
    pub events: PathBuf,
    /// Dead letters: lines that are not events, with the reason.
    #[serde(default = "default_dead_letter_path")]
    pub dead_letters: PathBuf,
    /// Plugin log entries.
    #[serde(default = "default_logs_path")]
    pub logs: PathBuf,
    /// App metrics: changes of the count per configuration × team × hook × outcome × minute.
    #[serde(default = "default_app_metrics_path")]
    pub app_metrics: PathBuf,
}

fn default_app_metrics_path() -> PathBuf {
    PathBuf::from("out/app-metrics.jsonl")
}

fn default_events_path() -> PathBuf {
    PathBuf::from("out/events.jsonl")
}
fn default_dead_letter_path() -> PathBuf {
    PathBuf::from("out/dead-letters.jsonl")
}
fn default_logs_path() -> PathBuf {
    PathBuf::from("out/plugin-logs.jsonl")
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            events: default_events_path(),
            dead_letters: default_dead_letter_path(),
            logs: default_logs_path(),
            app_metrics: default_app_metrics_path(),
        }
    }
}

/// `[state]`: where the plugin cache and storage live.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// RocksDB folder, created when missing. `memory = true` keeps state in memory instead.
    #[serde(default = "default_state_path")]
    pub path: PathBuf,
    /// Keep state in memory only (lost at exit).
    #[serde(default)]
    pub memory: bool,
    /// Keep plugin `cache` and `storage` in this Redis server (`redis://[user:password@]host:port[/db]`),
    /// shared by every process; queues and checkpoints stay in `path` (or memory).
    #[serde(default)]
    pub redis: Option<String>,
    /// Prefix of every key this pipeline writes in Redis.
    #[serde(default = "default_redis_prefix")]
    pub redis_prefix: String,
    /// How long a Redis connection or command may take before it fails (ms).
    #[serde(default = "default_redis_timeout_ms")]
    pub redis_timeout_ms: u64,
}

fn default_state_path() -> PathBuf {
    PathBuf::from(".state")
}
fn default_redis_prefix() -> String {
    "pluginflow".into()
}
fn default_redis_timeout_ms() -> u64 {
    2_000
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            path: default_state_path(),
            memory: false,
            redis: None,
            redis_prefix: default_redis_prefix(),
            redis_timeout_ms: default_redis_timeout_ms(),
        }
    }
}

/// `[geoip]`: the MaxMind City database.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoipConfig {
    /// Path of the `.mmdb` file.
    pub path: PathBuf,
}

/// `[http]`: the loopback HTTP endpoint.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Loopback address and port, e.g. `127.0.0.1:9464` (port 0 picks a free one).
    pub listen: std::net::SocketAddr,
    /// `/healthz` fails once no Kafka broker has been reachable for this long (ms).
    #[serde(default = "default_broker_unreachable_ms")]
    pub broker_unreachable_ms: u64,
    /// `/healthz` fails once an input offset has waited this long for its commit (ms).
    #[serde(default = "default_commit_stall_ms")]
    pub commit_stall_ms: u64,
}

fn default_broker_unreachable_ms() -> u64 {
    30_000
}
fn default_commit_stall_ms() -> u64 {
    120_000
}

impl HttpConfig {
    /// The thresholds of `/healthz`.
    pub fn limits(&self) -> crate::kafka::health::HealthLimits {
        crate::kafka::health::HealthLimits {
            broker_unreachable: std::time::Duration::from_millis(self.broker_unreachable_ms),
            commit_stall: std::time::Duration::from_millis(self.commit_stall_ms),
        }
    }
}

/// `[runtime]`: limits and batching.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Longest one plugin call may take, in milliseconds (PostHog: 30 s).
    #[serde(default = "default_call_timeout_ms")]
    pub call_timeout_ms: u64,
    /// QuickJS heap limit of one plugin instance (configuration × team), in MiB. Every
    /// instance has a runtime and heap of its own.
    #[serde(default = "default_memory_limit_mb")]
    pub memory_limit_mb: u64,
    /// Largest event, in bytes of JSON: larger input lines are dead-lettered, and a plugin
    /// returning a larger event fails that call.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: u64,
    /// Deepest nesting of objects and arrays in an event (the event itself is level 1), for
    /// input lines and plugin results alike. At most 120.
    #[serde(default = "default_max_event_depth")]
    pub max_event_depth: u64,
    /// Calls that time out or run out of memory after which a plugin instance is disabled
    /// (each one holds the worker; a timeout for `call_timeout_ms`).
    #[serde(default = "default_max_timeouts")]
    pub max_timeouts: u32,
    /// `posthog.capture` calls one hook call may make; past it `capture` throws.
    #[serde(default = "default_max_captures_per_call")]
    pub max_captures_per_call: u32,
    /// `posthog.capture` calls one plugin instance may make per batch of `batch_size` lines.
    #[serde(default = "default_max_captures_per_epoch")]
    pub max_captures_per_epoch: u32,
    /// Jobs one hook call may enqueue; past it `runNow`/`runIn`/`runAt` reject.
    #[serde(default = "default_max_jobs_per_call")]
    pub max_jobs_per_call: u32,
    /// Bytes of `console` output one hook call may write; the rest is cut with a marker.
    #[serde(default = "default_max_log_bytes_per_call")]
    pub max_log_bytes_per_call: u64,
    /// Bytes one hook call may hand the host to keep: captured events, job payloads, cache and
    /// storage writes.
    #[serde(default = "default_max_host_bytes_per_call")]
    pub max_host_bytes_per_call: u64,
    /// After SIGINT/SIGTERM, how long plugin calls may go on before every call is ended at
    /// once, in milliseconds (a second signal ends them at once).
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// Lines per epoch (batch) read from the log.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How many epochs the source may run ahead of the output.
    #[serde(default = "default_max_epochs_ahead")]
    pub max_epochs_ahead: u64,
    /// Timeout of `fetch` requests, in milliseconds.
    #[serde(default = "default_fetch_timeout_ms")]
    pub fetch_timeout_ms: u64,
    /// Wait before the first `onEvent` retry (then doubling: 5 retries), in milliseconds.
    #[serde(default = "default_on_event_retry_base_ms")]
    pub on_event_retry_base_ms: u64,
    /// Wait before the first `exportEvents` retry (then doubling: 3 retries), in milliseconds.
    #[serde(default = "default_export_retry_base_ms")]
    pub export_retry_base_ms: u64,
    /// Wait before the first `setupPlugin` retry (then doubling: 5 retries), in milliseconds.
    #[serde(default = "default_setup_retry_base_ms")]
    pub setup_retry_base_ms: u64,
    /// How long an `onEvent`/`exportEvents` retry holds its epoch open, in milliseconds: the
    /// input's offsets (Kafka commit) wait that long at most; past it the retry waits in the
    /// durable queue only, and the epoch completes. 0: retries never hold an epoch.
    #[serde(default = "default_retry_hold_ms")]
    pub retry_hold_ms: u64,
    /// How many `posthog.capture` generations in a row an event may be (an event captured
    /// while handling a captured event is one more); deeper ones go to the dead-letter output.
    #[serde(default = "default_max_capture_hops")]
    pub max_capture_hops: u32,
    /// Teams whose plugins run on every worker that reads their events, one instance per worker,
    /// instead of on the team's one owner worker of the cluster: the escape for a team too busy
    /// for one worker, right only for plugins that keep no state per instance (`global`).
    #[serde(default)]
    pub spread_teams: Vec<i64>,
    /// QuickJS heap all instances of one worker may hold, in MiB, before the instances of the
    /// least recently used teams are torn down (0: no budget).
    #[serde(default = "default_instance_memory_budget_mb")]
    pub instance_memory_budget_mb: u64,
}

fn default_instance_memory_budget_mb() -> u64 {
    2048
}

fn default_max_capture_hops() -> u32 {
    3
}
fn default_max_event_bytes() -> u64 {
    1024 * 1024
}
fn default_max_event_depth() -> u64 {
    64
}
fn default_max_timeouts() -> u32 {
    5
}
fn default_max_captures_per_call() -> u32 {
    100
}
fn default_max_captures_per_epoch() -> u32 {
    10_000
}
fn default_max_jobs_per_call() -> u32 {
    100
}
fn default_max_log_bytes_per_call() -> u64 {
    64 * 1024
}
fn default_max_host_bytes_per_call() -> u64 {
    16 * 1024 * 1024
}
fn default_shutdown_grace_ms() -> u64 {
    10_000
}

fn default_on_event_retry_base_ms() -> u64 {
    5_000
}
fn default_export_retry_base_ms() -> u64 {
    6_000
}
fn default_retry_hold_ms() -> u64 {
    10_000
}
fn default_setup_retry_base_ms() -> u64 {
    5_000
}

fn default_call_timeout_ms() -> u64 {
    30_000
}
fn default_memory_limit_mb() -> u64 {
    64
}
fn default_batch_size() -> usize {
    1024
}
fn default_max_epochs_ahead() -> u64 {
    4
}
fn default_fetch_timeout_ms() -> u64 {
    10_000
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            call_timeout_ms: default_call_timeout_ms(),
            memory_limit_mb: default_memory_limit_mb(),
            batch_size: default_batch_size(),
            max_epochs_ahead: default_max_epochs_ahead(),
            fetch_timeout_ms: default_fetch_timeout_ms(),
            on_event_retry_base_ms: default_on_event_retry_base_ms(),
            export_retry_base_ms: default_export_retry_base_ms(),
            setup_retry_base_ms: default_setup_retry_base_ms(),
            retry_hold_ms: default_retry_hold_ms(),
            max_capture_hops: default_max_capture_hops(),
            spread_teams: Vec::new(),
            instance_memory_budget_mb: default_instance_memory_budget_mb(),
            max_event_bytes: default_max_event_bytes(),
            max_event_depth: default_max_event_depth(),
            max_timeouts: default_max_timeouts(),
            max_captures_per_call: default_max_captures_per_call(),
            max_captures_per_epoch: default_max_captures_per_epoch(),
            max_jobs_per_call: default_max_jobs_per_call(),
            max_log_bytes_per_call: default_max_log_bytes_per_call(),
            max_host_bytes_per_call: default_max_host_bytes_per_call(),
            shutdown_grace_ms: default_shutdown_grace_ms(),
        }
    }
}

/// `[[plugins]]`: one plugin configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginEntry {
    /// Configuration id, unique in the file; shown as `Name (id)` in `$plugins_*`.
    pub id: String,
    /// Plugin folder (with `plugin.json` and `index.js`/`index.ts`).
    pub path: PathBuf,
    /// Teams this configuration runs for; omitted means every team.
    #[serde(default)]
    pub teams: Option<Vec<i64>>,
    /// Position in the team's chain: lower runs first; ties keep file order.
    #[serde(default)]
    pub order: i64,
    /// Whether the configuration runs at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Config values, keyed as in `plugin.json` (strings, as PostHog stored them).
    #[serde(default)]
    pub config: toml::Table,
    /// Attachment files by config key.
    #[serde(default)]
    pub attachments: BTreeMap<String, PathBuf>,
}

/// Whether `a` and `b` name the same file: the same device and inode when both exist (links and
/// `..` included), else the same absolute path once the existing part is resolved.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
        return x.dev() == y.dev() && x.ino() == y.ino();
    }
    fn resolved(p: &Path) -> PathBuf {
        // The longest existing ancestor, canonicalized, with the rest appended; `.` and `..`
        // in the part that does not exist yet are resolved by the text.
        let mut rest = Vec::new();
        let mut at = PathBuf::new();
        for part in p.components() {
            match part {
                std::path::Component::ParentDir if std::fs::metadata(&at).is_err() => {
                    at.pop();
                }
                std::path::Component::CurDir => {}
                other => at.push(other),
            }
        }
        loop {
            if let Ok(c) = std::fs::canonicalize(&at) {
                return rest.iter().rev().fold(c, |acc: PathBuf, part: &std::ffi::OsString| acc.join(part));
            }
            match (at.file_name().map(|n| n.to_os_string()), at.parent()) {
                (Some(name), Some(parent)) => {
                    rest.push(name);
                    at = parent.to_path_buf();
                }
                _ => return p.to_path_buf(),
            }
        }
    }
    resolved(a) == resolved(b)
}

fn default_true() -> bool {
    true
}

impl PluginEntry {
    /// Config values as JSON.
    pub fn config_json(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::to_value(&self.config).ok().and_then(|v| v.as_object().cloned()).unwrap_or_default()
    }
}

impl PipelineConfig {
    /// Reads, parses and checks a configuration file; relative paths become relative to it.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            field: "(file)".into(),
            problem: format!("cannot read: {e}"),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&file, &text, base)
    }

    /// Parses configuration text; `file` names it in errors, `base` anchors relative paths.
    /// `${NAME}` and `${NAME:-default}` are replaced by environment variables first (see
    /// [`expand_env`]).
    pub fn parse(file: &str, text: &str, base: &Path) -> Result<Self, ConfigError> {
        let text = &expand_env(text, |name| std::env::var(name).ok()).map_err(|(line, problem)| ConfigError {
            file: file.to_string(),
            field: format!("(line {line})"),
            problem,
        })?;
        let mut config: Self = toml::from_str(text).map_err(|e| ConfigError {
            file: file.to_string(),
            field: field_of_toml_error(text, &e),
            problem: e.message().to_string(),
        })?;
        config.resolve_paths(base);
        config.check(file)?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && p.as_os_str() != "-" {
                *p = base.join(&*p);
            }
        };
        if !self.input.path.as_os_str().is_empty() {
            fix(&mut self.input.path);
        }
        fix(&mut self.output.events);
        fix(&mut self.output.dead_letters);
        fix(&mut self.output.logs);
        fix(&mut self.output.app_metrics);
        fix(&mut self.state.path);
        if let Some(c) = &mut self.plugin_configs {
            fix(&mut c.dir);
        }
        if let Some(g) = &mut self.geoip {
            fix(&mut g.path);
        }
        for p in &mut self.plugins {
            fix(&mut p.path);
            p.attachments.values_mut().for_each(fix);
        }
    }

    fn check(&self, file: &str) -> Result<(), ConfigError> {
        let fail = |field: String, problem: String| Err(ConfigError { file: file.to_string(), field, problem });
        self.check_input(file)?;
        self.check_outputs(file)?;
        if let Some(g) = &self.geoip
            && !g.path.is_file()
        {
            return fail("geoip.path".into(), format!("{} is not a readable file", g.path.display()));
        }
        if let Some(c) = &self.plugin_configs
            && !c.dir.is_dir()
        {
            return fail("plugin_configs.dir".into(), format!("{} is not a folder", c.dir.display()));
        }
        if let Some(h) = &self.http
            && !h.listen.ip().is_loopback()
        {
            return fail("http.listen".into(), format!("{} is not a loopback address (use 127.0.0.1 or [::1])", h.listen));
        }
        let r = &self.runtime;
        let mut ranges: Vec<(&str, u64, u64, u64)> = vec![
            ("runtime.call_timeout_ms", r.call_timeout_ms, 1, 3_600_000),
            ("runtime.memory_limit_mb", r.memory_limit_mb, 8, 65_536),
            ("runtime.batch_size", r.batch_size as u64, 1, 1_000_000),
            ("runtime.max_epochs_ahead", r.max_epochs_ahead, 1, 1_000),
            ("runtime.fetch_timeout_ms", r.fetch_timeout_ms, 1, 3_600_000),
            ("runtime.max_event_bytes", r.max_event_bytes, 1024, 256 << 20),
            ("runtime.max_event_depth", r.max_event_depth, 2, operators::event::MAX_DEPTH_LIMIT as u64),
            ("runtime.max_timeouts", u64::from(r.max_timeouts), 1, 1_000_000),
            ("runtime.max_captures_per_call", u64::from(r.max_captures_per_call), 0, 1_000_000),
            ("runtime.max_captures_per_epoch", u64::from(r.max_captures_per_epoch), 0, 100_000_000),
            ("runtime.max_capture_hops", u64::from(r.max_capture_hops), 0, 100),
            ("runtime.max_jobs_per_call", u64::from(r.max_jobs_per_call), 0, 1_000_000),
            ("runtime.max_log_bytes_per_call", r.max_log_bytes_per_call, 0, 1 << 30),
            ("runtime.max_host_bytes_per_call", r.max_host_bytes_per_call, 0, 1 << 34),
            ("runtime.shutdown_grace_ms", r.shutdown_grace_ms, 0, 3_600_000),
            ("runtime.retry_hold_ms", r.retry_hold_ms, 0, 86_400_000),
            ("state.redis_timeout_ms", self.state.redis_timeout_ms, 10, 600_000),
            ("runtime.instance_memory_budget_mb", r.instance_memory_budget_mb, 0, 1 << 20),
        ];
        if let Some(url) = &self.state.redis {
            // The scheme only: the rest (and whether the server answers) is Redis's to say at
            // start; the URL itself is never repeated, it may hold a password.
            if !(url.starts_with("redis://") || url.starts_with("unix://") || url.starts_with("redis+unix://")) {
                return fail("state.redis".into(), "must be a redis:// (or unix://) URL".into());
            }
            // No `:`: a prefix such as `a:cache:1:p` could otherwise reach into another one's keys.
            if self.state.redis_prefix.is_empty() || self.state.redis_prefix.contains(|c: char| c.is_whitespace() || c == ':') {
                return fail("state.redis_prefix".into(), "must be a non-empty word without spaces or ':'".into());
            }
        }
        if let Some(h) = &self.http {
            ranges.push(("http.broker_unreachable_ms", h.broker_unreachable_ms, 100, 86_400_000));
            ranges.push(("http.commit_stall_ms", h.commit_stall_ms, 100, 86_400_000));
        }
        for (name, value, low, high) in ranges {
            if !(low..=high).contains(&value) {
                return fail(name.to_string(), format!("is {value}; it must be between {low} and {high}"));
            }
        }
        let mut ids = std::collections::HashSet::new();
        for (i, p) in self.plugins.iter().enumerate() {
            if p.id.trim().is_empty() {
                return fail(format!("plugins[{i}].id"), "must not be empty".into());
            }
            if !ids.insert(&p.id) {
                return fail(format!("plugins[{i}].id"), format!("duplicate id '{}'", p.id));
            }
            if !p.path.is_dir() {
                return fail(format!("plugins[{i}].path"), format!("{} is not a folder", p.path.display()));
            }
            if p.teams.as_ref().is_some_and(|t| t.is_empty()) {
                return fail(format!("plugins[{i}].teams"), "is empty: omit it to run for every team".into());
            }
            for (key, path) in &p.attachments {
                if !path.is_file() {
                    return fail(format!("plugins[{i}].attachments.{key}"), format!("{} is not a readable file", path.display()));
                }
            }
        }
        Ok(())
    }

    /// Refuses an output that is the input or another output: opening it would truncate the
    /// recorded log, or two writers would interleave and lose each other's records.
    fn check_outputs(&self, file: &str) -> Result<(), ConfigError> {
        let mut named: Vec<(&str, &Path)> = vec![
            ("output.events", &self.output.events),
            ("output.dead_letters", &self.output.dead_letters),
            ("output.logs", &self.output.logs),
            ("output.app_metrics", &self.output.app_metrics),
        ];
        named.retain(|(_, p)| p.as_os_str() != "-");
        for (i, (field, path)) in named.iter().enumerate() {
            if self.input.kind == InputKind::File && same_file(path, &self.input.path) {
                return Err(ConfigError {
                    file: file.into(),
                    field: field.to_string(),
                    problem: format!("{} is the input: writing it would destroy the recorded log", path.display()),
                });
            }
            for (other, other_path) in &named[..i] {
                if same_file(path, other_path) {
                    return Err(ConfigError {
                        file: file.into(),
                        field: field.to_string(),
                        problem: format!("{} is also {other}: each output needs a file of its own", path.display()),
                    });
                }
            }
        }
        Ok(())
    }

    fn check_input(&self, file: &str) -> Result<(), ConfigError> {
        let fail = |field: &str, problem: String| Err(ConfigError { file: file.to_string(), field: field.into(), problem });
        match self.input.kind {
            InputKind::File if self.input.path.as_os_str().is_empty() => {
                fail("input.path", "is required when input.kind = \"file\"".into())
            }
            InputKind::File if !self.input.path.is_file() => {
                fail("input.path", format!("{} is not a readable file", self.input.path.display()))
            }
            InputKind::Kafka if !self.input.path.as_os_str().is_empty() => {
                fail("input.path", "must be omitted when input.kind = \"kafka\" (the topic is kafka.input_topic)".into())
            }
            InputKind::Kafka if self.kafka.is_none() => fail("kafka", "is required when input.kind = \"kafka\"".into()),
            InputKind::Kafka if self.input.follow => {
                fail("input.follow", "is for a recorded log (kind = \"file\"): a Kafka input keeps reading by itself".into())
            }
            _ => match &self.kafka {
                Some(k) => k.check(self.input.kind == InputKind::Kafka).map_err(|(field, problem)| ConfigError {
                    file: file.to_string(),
                    field: format!("kafka.{field}"),
                    problem,
                }),
                None => Ok(()),
            },
        }
    }

    /// Gives every file output (and the state folder) a `.p{process}` suffix, so the processes
    /// of a cluster sharing a folder do not write over each other.
    pub fn per_process_outputs(&mut self, process: usize) {
        let suffix = |p: &mut PathBuf| {
            if p.as_os_str() == "-" {
                return;
            }
            let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let name = match p.extension() {
                Some(ext) => format!("{stem}.p{process}.{}", ext.to_string_lossy()),
                None => format!("{stem}.p{process}"),
            };
            p.set_file_name(name);
        };
        suffix(&mut self.output.events);
        suffix(&mut self.output.dead_letters);
        suffix(&mut self.output.logs);
        suffix(&mut self.output.app_metrics);
        suffix(&mut self.state.path);
    }

    /// Indexes of the enabled plugin entries in chain order: `order`, then file order. (Which
    /// teams each applies to is the worker's business: `teams`.)
    pub fn chain_order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.plugins.len()).filter(|&i| self.plugins[i].enabled).collect();
        order.sort_by_key(|&i| (self.plugins[i].order, i));
        order
    }
}

/// Best effort at naming the field a TOML error is about, from the error's position.
fn field_of_toml_error(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else { return "(file)".into() };
    let before = &text[..span.start.min(text.len())];
    let line_no = before.matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
    let key = line.split('=').next().unwrap_or("").trim();
    let table =
        before.lines().rev().map(str::trim).find(|l| l.starts_with('[')).map(|l| l.trim_matches(|c| c == '[' || c == ']').to_string());
    match (table, key.is_empty() || key.starts_with('[')) {
        (Some(t), false) => format!("{t}.{key} (line {line_no})"),
        (Some(t), true) => format!("{t} (line {line_no})"),
        (None, false) => format!("{key} (line {line_no})"),
        (None, true) => format!("line {line_no}"),
    }
}

/// Replaces `${NAME}` with the value of `lookup(NAME)` and `${NAME:-default}` with it or, when
/// unset or empty, `default`; `$${` stands for a literal `${`. Lines whose first non-blank
/// character is `#` (comments) are left alone. The substitution is textual, before TOML is
/// parsed: a value lands where the reference stood (inside quotes for a string). An unset
/// variable without a default, a name that is not `[A-Za-z_][A-Za-z0-9_]*` or an unclosed `${`
/// is an error `(line, problem)`: a typo must not become an empty broker list.
pub fn expand_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, (usize, String)> {
    let mut out = String::with_capacity(text.len());
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') || !line.contains('$') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let tail = &rest[at..];
            if let Some(after) = tail.strip_prefix("$${") {
                out.push_str("${");
                rest = after;
            } else if let Some(after) = tail.strip_prefix("${") {
                let end = after.find('}').ok_or_else(|| (n + 1, "`${` without a closing `}`".to_string()))?;
                let inner = &after[..end];
                let (name, default) = match inner.split_once(":-") {
                    Some((name, default)) => (name, Some(default)),
                    None => (inner, None),
                };
                let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err((n + 1, format!("`${{{inner}}}`: not an environment variable name")));
                }
                match (lookup(name).filter(|v| !v.is_empty() || default.is_none()), default) {
                    (Some(value), _) => out.push_str(&value),
                    (None, Some(default)) => out.push_str(default),
                    (None, None) => {
                        return Err((n + 1, format!("environment variable {name} is not set (write ${{{name}:-default}} for a default)")));
                    }
                }
                rest = &after[end + 1..];
            } else {
                out.push('$');
                rest = &tail[1..];
            }
        }
        out.push_str(rest);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("events.jsonl"), "{}\n").unwrap();
        std::fs::create_dir(dir.path().join("p")).unwrap();
        dir
    }

    fn parse(dir: &Path, text: &str) -> Result<PipelineConfig, ConfigError> {
        PipelineConfig::parse("pf.toml", text, dir)
    }

    #[test]
    fn environment_references_are_expanded_and_an_unset_one_is_an_error() {
        let env = |name: &str| match name {
            "KAFKA_BROKERS" => Some("k1:9092,k2:9092".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let text = "# ${NOT_EXPANDED} in a comment\nbrokers = \"${KAFKA_BROKERS}\"\ngroup = \"${GROUP:-pf}-${EMPTY:-x}\"\nlit = \"$${HOME} costs $5\"\n";
        assert_eq!(
            expand_env(text, env).unwrap(),
            "# ${NOT_EXPANDED} in a comment\nbrokers = \"k1:9092,k2:9092\"\ngroup = \"pf-x\"\nlit = \"${HOME} costs $5\"\n"
        );
        // A set-but-empty variable without a default is its (empty) value, as in a shell.
        assert_eq!(expand_env("a = \"${EMPTY}\"", env).unwrap(), "a = \"\"");
        let unset = expand_env("x = 1\nbrokers = \"${KAFKA_BROKRES}\"\n", env).unwrap_err();
        assert_eq!(unset.0, 2);
        assert!(unset.1.contains("KAFKA_BROKRES is not set"), "{}", unset.1);
        assert!(expand_env("a = \"${A-B}\"", env).unwrap_err().1.contains("not an environment variable name"));
        assert!(expand_env("a = \"${OPEN\"", env).unwrap_err().1.contains("without a closing"));

        // Through the whole parse: the error names the file and line.
        let dir = setup();
        let err = parse(dir.path(), "[input]\npath = \"${PLUGINFLOW_TEST_SURELY_UNSET_VAR}\"\n").unwrap_err().to_string();
        assert!(err.contains("pf.toml") && err.contains("line 2") && err.contains("PLUGINFLOW_TEST_SURELY_UNSET_VAR"), "{err}");
    }

    #[test]
    fn minimal_config_takes_defaults_and_resolves_paths() {
        let dir = setup();
        let c = parse(dir.path(), "[input]\npath = \"events.jsonl\"\n").unwrap();
        assert_eq!(c.input.path, dir.path().join("events.jsonl"));
        assert_eq!(c.output.events, dir.path().join("out/events.jsonl"));
        assert_eq!(c.runtime.call_timeout_ms, 30_000);
        assert!(c.plugins.is_empty());
    }

    #[test]
    fn plugins_sort_by_order_then_file_order() {
        let dir = setup();
        let c = parse(
            dir.path(),
            "[input]\npath = \"events.jsonl\"\n[[plugins]]\nid = \"a\"\npath = \"p\"\norder = 2\n[[plugins]]\nid = \"b\"\npath = \"p\"\norder = 1\nteams = [7]\n[[plugins]]\nid = \"c\"\npath = \"p\"\norder = 2\n[[plugins]]\nid = \"d\"\npath = \"p\"\nenabled = false\n",
        )
        .unwrap();
        let ids: Vec<&str> = c.chain_order().into_iter().map(|i| c.plugins[i].id.as_str()).collect();
        assert_eq!(ids, ["b", "a", "c"], "order first, then file order; disabled d left out");
        std::fs::write(dir.path().join("p/plugin.json"), r#"{"name": "p"}"#).unwrap();
        std::fs::write(dir.path().join("p/index.js"), "exports.processEvent = (e) => e").unwrap();
        let specs = crate::run::load_specs(&c).unwrap();
        assert_eq!(specs.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ids, "the run loads the chain in that order");
        assert_eq!(specs[0].teams, Some(vec![7]));
    }

    #[test]
    fn errors_name_the_field() {
        let dir = setup();
        let e = parse(dir.path(), "[input]\npath = \"missing.jsonl\"\n").unwrap_err();
        assert_eq!(e.field, "input.path");
        let e = parse(dir.path(), "[input]\npath = \"events.jsonl\"\n[runtime]\nbatch_size = 0\n").unwrap_err();
        assert_eq!(e.field, "runtime.batch_size");
        let e = parse(dir.path(), "[input]\npath = \"events.jsonl\"\n[runtime]\nbatch_sise = 3\n").unwrap_err();
        assert!(e.field.starts_with("runtime.batch_sise"), "{e}");
        assert!(e.problem.contains("unknown field"), "{e}");
        let e = parse(dir.path(), "[input]\npath = \"events.jsonl\"\n[[plugins]]\nid = \"a\"\npath = \"nope\"\n").unwrap_err();
        assert_eq!(e.field, "plugins[0].path");
        let e = parse(
            dir.path(),
            "[input]\npath = \"events.jsonl\"\n[[plugins]]\nid = \"a\"\npath = \"p\"\n[[plugins]]\nid = \"a\"\npath = \"p\"\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "plugins[1].id");
        let e = parse(dir.path(), "[input]\npath = \"events.jsonl\"\n[[plugins]]\nid = \"a\"\npath = \"p\"\nteams = []\n").unwrap_err();
        assert_eq!(e.field, "plugins[0].teams");
        let e = parse(dir.path(), "[output]\nevents = \"x\"\n").unwrap_err();
        assert!(e.problem.contains("input"), "{e}");
    }

    const KAFKA: &str = "[input]\nkind = \"kafka\"\n[kafka]\nbrokers = \"127.0.0.1:9092\"\ninput_topic = \"in\"\noutput_topic = \"out\"\ndead_letter_topic = \"dead\"\n";

    #[test]
    fn an_output_that_is_the_input_or_another_output_is_refused() {
        let dir = setup();
        std::fs::create_dir_all(dir.path().join("out")).unwrap();
        for (outputs, field, problem) in [
            ("events = \"events.jsonl\"", "output.events", "is the input"),
            ("events = \"out/../events.jsonl\"", "output.events", "is the input"),
            ("logs = \"./events.jsonl\"", "output.logs", "is the input"),
            ("events = \"out/a.jsonl\"\ndead_letters = \"out/a.jsonl\"", "output.dead_letters", "is also output.events"),
            ("events = \"out/new/b.jsonl\"\napp_metrics = \"out/new/../new/b.jsonl\"", "output.app_metrics", "is also output.events"),
        ] {
            let e = parse(dir.path(), &format!("[input]\npath = \"events.jsonl\"\n[output]\n{outputs}\n")).unwrap_err();
            assert_eq!(e.field, field, "{outputs}");
            assert!(e.problem.contains(problem), "{outputs}: {}", e.problem);
        }
        // A hard link to the input is the input too.
        std::fs::hard_link(dir.path().join("events.jsonl"), dir.path().join("out/link.jsonl")).unwrap();
        let e = parse(dir.path(), "[input]\npath = \"events.jsonl\"\n[output]\ndead_letters = \"out/link.jsonl\"\n").unwrap_err();
        assert_eq!(e.field, "output.dead_letters");
        assert!(
            parse(dir.path(), "[input]\npath = \"events.jsonl\"\n[output]\nevents = \"-\"\ndead_letters = \"-\"\n").is_ok(),
            "standard output may take several"
        );
    }

    #[test]
    fn runtime_numbers_out_of_range_are_refused_naming_the_field() {
        let dir = setup();
        for (setting, field) in [
            ("memory_limit_mb = 17592186044416", "runtime.memory_limit_mb"),
            ("memory_limit_mb = 4", "runtime.memory_limit_mb"),
            ("call_timeout_ms = 0", "runtime.call_timeout_ms"),
            ("max_event_depth = 500", "runtime.max_event_depth"),
            ("max_event_bytes = 10", "runtime.max_event_bytes"),
            ("max_timeouts = 0", "runtime.max_timeouts"),
            ("fetch_timeout_ms = 0", "runtime.fetch_timeout_ms"),
            ("retry_hold_ms = 86400001", "runtime.retry_hold_ms"),
            ("max_capture_hops = 101", "runtime.max_capture_hops"),
        ] {
            let e = parse(dir.path(), &format!("[input]\npath = \"events.jsonl\"\n[runtime]\n{setting}\n")).unwrap_err();
            assert_eq!(e.field, field, "{setting}");
            assert!(e.problem.contains("must be between"), "{setting}: {}", e.problem);
        }
        for (setting, field) in
            [("commit_stall_ms = 5", "http.commit_stall_ms"), ("broker_unreachable_ms = 0", "http.broker_unreachable_ms")]
        {
            let text = format!("[input]\npath = \"events.jsonl\"\n[http]\nlisten = \"127.0.0.1:0\"\n{setting}\n");
            let e = parse(dir.path(), &text).unwrap_err();
            assert_eq!(e.field, field, "{setting}");
            assert!(e.problem.contains("must be between 100 and"), "{setting}: {}", e.problem);
        }
        let c = parse(dir.path(), "[input]\npath = \"events.jsonl\"\n[runtime]\nmax_event_depth = 120\nmemory_limit_mb = 8\n").unwrap();
        assert_eq!((c.runtime.max_event_depth, c.runtime.memory_limit_mb), (120, 8));
    }

    #[test]
    fn kafka_input_takes_defaults() {
        let dir = setup();
        let c = parse(dir.path(), KAFKA).unwrap();
        assert_eq!(c.input.kind, InputKind::Kafka);
        assert!(c.input.path.as_os_str().is_empty());
        let k = c.kafka.unwrap();
        assert_eq!(k.group_id, "pluginflow");
        assert_eq!(k.key_field, "distinct_id");
        assert_eq!(k.delivery, crate::kafka::Delivery::AtLeastOnce);
        assert_eq!(k.commit_interval_ms, 200);
        assert_eq!(k.stop_after_idle_ms, None);
        assert_eq!(k.transactional_id(3), "pluginflow-3");
        let consumer = k.consumer_config(0);
        assert_eq!(consumer.get("enable.auto.commit"), Some("false"));
        assert_eq!(consumer.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(k.producer_config(0).get("transactional.id"), None);
    }

    #[test]
    fn kafka_settings_parse_and_pass_through() {
        let dir = setup();
        let text = format!(
            "{KAFKA}group_id = \"g\"\ndelivery = \"exactly-once\"\nkey_field = \"\"\nstop_after_idle_ms = 500\ntransactional_id_prefix = \"p1\"\nlogs_topic = \"logs\"\n\
             [kafka.librdkafka]\n\"security.protocol\" = \"plaintext\"\n[kafka.consumer]\n\"session.timeout.ms\" = \"6000\"\n[kafka.producer]\n\"linger.ms\" = \"1\"\n"
        );
        let k = parse(dir.path(), &text).unwrap().kafka.unwrap();
        assert_eq!(k.delivery, crate::kafka::Delivery::ExactlyOnce);
        assert_eq!(k.logs_topic.as_deref(), Some("logs"));
        let (consumer, producer) = (k.consumer_config(0), k.producer_config(2));
        assert_eq!(consumer.get("group.id"), Some("g"));
        assert_eq!(consumer.get("security.protocol"), Some("plaintext"));
        assert_eq!(consumer.get("session.timeout.ms"), Some("6000"));
        assert_eq!(producer.get("session.timeout.ms"), None);
        assert_eq!(producer.get("linger.ms"), Some("1"));
        assert_eq!(producer.get("transactional.id"), Some("p1-2"));
    }

    #[test]
    fn kafka_errors_name_the_field() {
        let dir = setup();
        let field = |text: &str| parse(dir.path(), text).unwrap_err().field;
        assert_eq!(field("[input]\nkind = \"kafka\"\n"), "kafka");
        assert_eq!(field("[input]\nkind = \"kafka\"\npath = \"events.jsonl\"\n[kafka]\nbrokers = \"b\"\n"), "input.path");
        assert_eq!(field("[input]\nkind = \"kafka\"\n[kafka]\nbrokers = \"b\"\n"), "kafka.input_topic");
        assert_eq!(
            field("[input]\nkind = \"kafka\"\n[kafka]\nbrokers = \"b\"\ninput_topic = \"i\"\noutput_topic = \"o\"\n"),
            "kafka.dead_letter_topic"
        );
        assert_eq!(field(&KAFKA.replace("127.0.0.1:9092", " ")), "kafka.brokers");
        assert_eq!(field(&KAFKA.replace("kind = \"kafka\"\n", "kind = \"kafka\"\nfollow = true\n")), "input.follow");
        assert_eq!(field(&format!("{KAFKA}stop_after_idle_ms = 0\n")), "kafka.stop_after_idle_ms");
        assert_eq!(
            field(&format!("{KAFKA}[kafka.librdkafka]\n\"enable.auto.commit\" = \"true\"\n")),
            "kafka.librdkafka.\"enable.auto.commit\""
        );
        assert_eq!(
            field(&format!("{KAFKA}[kafka.producer]\n\"delivery.report.only.error\" = \"true\"\n")),
            "kafka.producer.\"delivery.report.only.error\""
        );
        assert_eq!(
            field(&format!(
                "{KAFKA}delivery = \"exactly-once\"\n[kafka.consumer]\n\"partition.assignment.strategy\" = \"cooperative-sticky\"\n"
            )),
            "kafka.consumer.\"partition.assignment.strategy\""
        );
        let e = parse(dir.path(), &format!("{KAFKA}delivery = \"twice\"\n")).unwrap_err();
        assert!(e.field.starts_with("kafka.delivery"), "{e}");
        let e = parse(dir.path(), &format!("{KAFKA}brokerz = \"x\"\n")).unwrap_err();
        assert!(e.problem.contains("unknown field"), "{e}");
        // A file input may still name Kafka (for the logs topic) without any topics.
        let c = parse(dir.path(), "[input]\npath = \"events.jsonl\"\n[kafka]\nbrokers = \"b\"\nlogs_topic = \"l\"\n").unwrap();
        assert_eq!(c.input.kind, InputKind::File);
    }
}
