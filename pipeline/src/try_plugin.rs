//! `pluginflow try`: a plugin author's local loop. One plugin instance, `setupPlugin`, then
//! one hook: `processEvent` for each input line in order (one output line per input line), or
//! `onEvent` per line, `exportEvents` over all lines, a scheduled task or a job (one result line
//! per call, with PostHog's retries, their waits shortened by `--retry-base-ms`), then
//! `teardownPlugin`. Unlike `run`, a configuration that misses a `required` value or has one
//! outside its `choices` is a warning, not a refusal (the plugin runs with what it was given,
//! as under jest), unless `--strict`.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use operators::event;
use operators::event::members::Members;
use operators::plugin::deferred::{RetryPolicy, processed_event};
use operators::plugin::{
    GeoIp, Hook, HostServices, InstanceConfig, Limits, LogLevel, LogSink, PluginDefinition, PluginError, PluginInstance, PluginRuntime,
    StepOutcome,
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
    /// Refuse a configuration `run` would refuse (missing `required` value, value outside
    /// `choices`) instead of warning.
    pub strict: bool,
}

/// The hook `try` runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TryHook {
    /// `processEvent` per input line (the default).
    #[default]
    ProcessEvent,
    /// `onEvent` per input line, with the event as PostHog hands it (`ProcessedPluginEvent`).
    OnEvent,
    /// `exportEvents` once, with every input line's event.
    ExportEvents,
    /// `runEveryMinute`, `runEveryHour` or `runEveryDay`, once (no input is read).
    Scheduled(Hook),
    /// A job of the plugin's `jobs` export, once, with `--payload` (no input is read).
    Job(String),
}

impl std::str::FromStr for TryHook {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "processEvent" => Self::ProcessEvent,
            "onEvent" => Self::OnEvent,
            "exportEvents" => Self::ExportEvents,
            "runEveryMinute" => Self::Scheduled(Hook::RunEveryMinute),
            "runEveryHour" => Self::Scheduled(Hook::RunEveryHour),
            "runEveryDay" => Self::Scheduled(Hook::RunEveryDay),
            other => match other.strip_prefix("job:") {
                Some(name) if !name.is_empty() => Self::Job(name.to_string()),
                _ => {
                    return Err(format!(
                        "unknown hook '{other}': one of processEvent, onEvent, exportEvents, runEveryMinute, runEveryHour, runEveryDay, job:NAME"
                    ));
                }
            },
        })
    }
}

impl TryHook {
    fn hook(&self) -> Hook {
        match self {
            Self::ProcessEvent => Hook::ProcessEvent,
            Self::OnEvent => Hook::OnEvent,
            Self::ExportEvents => Hook::ExportEvents,
            Self::Scheduled(h) => *h,
            Self::Job(_) => Hook::Job,
        }
    }

    fn policy(&self) -> RetryPolicy {
        match self {
            Self::ExportEvents => RetryPolicy::export_events(),
            Self::Job(_) => RetryPolicy::job(),
            // PostHog did not retry scheduled tasks; neither does `run`.
            Self::Scheduled(_) | Self::ProcessEvent => RetryPolicy { max_retries: 0, base: Duration::ZERO },
            Self::OnEvent => RetryPolicy::on_event(),
        }
    }
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

/// Loads the plugin and runs `setupPlugin`. Questionable configuration values are handed to
/// `warn` (or refused with `--strict`); a hook the plugin does not export is refused.
pub fn load(
    opts: &TryOptions,
    hook: &TryHook,
    logs: Arc<dyn LogSink>,
    warn: &mut dyn FnMut(String),
) -> Result<(PluginRuntime, PluginInstance), TryError> {
    let def = PluginDefinition::load(&opts.dir).map_err(|e| TryError(e.to_string()))?;
    let config = match &opts.config_json {
        None => serde_json::Map::new(),
        Some(text) => match serde_json::from_str(text) {
            Ok(serde_json::Value::Object(m)) => m,
            Ok(_) => return Err(TryError("--config must be a JSON object".into())),
            Err(e) => return Err(TryError(format!("--config is not valid JSON: {e}"))),
        },
    };
    let attachment_keys: Vec<String> = opts.attachments.iter().map(|(k, _)| k.clone()).collect();
    let mut refused = Vec::new();
    for p in def.manifest.config_problems(&config, &attachment_keys) {
        let line = format!("{}: {}", p.key, p.message);
        if p.refused && opts.strict {
            refused.push(line);
        } else if p.refused {
            warn(format!("{line} (pluginflow run would refuse this configuration; --strict refuses it here too)"));
        } else {
            warn(line);
        }
    }
    if !refused.is_empty() {
        return Err(TryError(format!("the configuration is refused (--strict): {}", refused.join("; "))));
    }
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
        lenient: !opts.strict,
    };
    let mut instance = PluginInstance::new(&runtime, &def, &cfg, &services).map_err(|e| TryError(e.to_string()))?;
    let exported = [Hook::ProcessEvent, Hook::OnEvent, Hook::ExportEvents, Hook::RunEveryMinute, Hook::RunEveryHour, Hook::RunEveryDay]
        .into_iter()
        .filter(|h| instance.exports(*h))
        .map(|h| h.as_str().to_string())
        .chain(instance.jobs().iter().map(|j| format!("job:{j}")))
        .collect::<Vec<_>>();
    let present = match hook {
        TryHook::Job(name) => instance.jobs().iter().any(|j| j == name),
        other => instance.exports(other.hook()),
    };
    if !present {
        let shown = match hook {
            TryHook::Job(name) => format!("job:{name}"),
            other => other.hook().as_str().to_string(),
        };
        let has = if exported.is_empty() { "nothing --hook can run".to_string() } else { exported.join(", ") };
        return Err(TryError(format!("the plugin has no {shown} (it exports: {has})")));
    }
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
        // Read as written (`Members`): a lone surrogate escape is JSON that `JSON.parse` reads.
        let team = match Members::parse(&line) {
            // The team as the pipeline reads it: `2.0` is team 2 (`event::integer`).
            Ok(m) => {
                m.get("team_id").and_then(|v| serde_json::from_str::<serde_json::Number>(v.get()).ok()).as_ref().and_then(event::integer)
            }
            Err(_) if serde_json::from_str::<serde::de::IgnoredAny>(&line).is_ok() => None,
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

/// How a hook other than `processEvent` is run.
#[derive(Clone, Debug, Default)]
pub struct HookRun {
    /// The hook.
    pub hook: TryHook,
    /// A job's payload (JSON text); `{}` when not given.
    pub payload: Option<String>,
    /// The wait before the first retry, doubling after each (PostHog's when `None`: 5 s for
    /// `onEvent` and jobs, 6 s for `exportEvents`).
    pub retry_base: Option<Duration>,
}

/// Runs `run.hook` (not `processEvent`): per input line for `onEvent`, once over all lines for
/// `exportEvents`, once for a scheduled task or a job. Each call is retried as PostHog retried
/// it, and writes one JSON line to `out`: `{"hook", "uuid"?, "events"?, "attempts", "ok",
/// "error"?}`. Returns how many calls failed for good.
pub fn run_hook(
    instance: &mut PluginInstance,
    run: &HookRun,
    input: Option<&mut dyn BufRead>,
    mut out: impl Write,
) -> std::io::Result<u64> {
    let name = match &run.hook {
        TryHook::Job(job) => format!("job:{job}"),
        other => other.hook().as_str().to_string(),
    };
    let mut failed = 0;
    let mut bad_lines = 0;
    let mut report = |out: &mut dyn Write, extra: serde_json::Map<String, serde_json::Value>, result: (u32, Result<(), PluginError>)| {
        let (attempts, outcome) = result;
        let mut line = serde_json::Map::new();
        line.insert("hook".into(), name.clone().into());
        line.extend(extra);
        line.insert("attempts".into(), attempts.into());
        line.insert("ok".into(), outcome.is_ok().into());
        if let Err(e) = outcome {
            failed += 1;
            line.insert("error".into(), format!("{}: {}", e.name, e.message).into());
        }
        writeln!(out, "{}", serde_json::Value::Object(line))
    };
    let policy = run.hook.policy();
    match &run.hook {
        TryHook::ProcessEvent => unreachable!("processEvent runs through run_lines"),
        TryHook::OnEvent => {
            let input = input.expect("onEvent reads its input");
            for (n, line) in input.lines().enumerate() {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                let Some((_, processed)) = processed_event(&line) else {
                    instance.log_system(LogLevel::Error, &format!("input line {} is not a JSON object", n + 1));
                    bad_lines += 1;
                    continue;
                };
                let uuid = Members::parse(&processed)
                    .ok()
                    .and_then(|m| m.get("uuid"))
                    .and_then(|v| serde_json::from_str::<serde_json::Value>(v.get()).ok())
                    .unwrap_or_default();
                let result = with_retries(instance, policy, run.retry_base, |i| i.on_event_json(&processed));
                report(&mut out, [("uuid".to_string(), uuid)].into_iter().collect(), result)?;
            }
        }
        TryHook::ExportEvents => {
            let input = input.expect("exportEvents reads its input");
            let mut batch = Vec::new();
            for (n, line) in input.lines().enumerate() {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                match processed_event(&line) {
                    Some((_, processed)) => batch.push(processed),
                    None => {
                        instance.log_system(LogLevel::Error, &format!("input line {} is not a JSON object", n + 1));
                        bad_lines += 1;
                    }
                }
            }
            let events = format!("[{}]", batch.join(","));
            let result = with_retries(instance, policy, run.retry_base, |i| i.export_events_json(&events));
            report(&mut out, [("events".to_string(), batch.len().into())].into_iter().collect(), result)?;
        }
        TryHook::Scheduled(hook) => {
            let result = with_retries(instance, policy, run.retry_base, |i| i.run_scheduled(*hook));
            report(&mut out, serde_json::Map::new(), result)?;
        }
        TryHook::Job(job) => {
            let payload = run.payload.clone().unwrap_or_else(|| "{}".into());
            let result = with_retries(instance, policy, run.retry_base, |i| i.run_job(job, &payload));
            report(&mut out, serde_json::Map::new(), result)?;
        }
    }
    out.flush()?;
    Ok(failed + bad_lines)
}

/// Calls `call` until it succeeds, fails with an error that is not retried, or has been
/// retried `policy.max_retries` times; waits `base`, `2 × base`, … between attempts.
fn with_retries(
    instance: &mut PluginInstance,
    policy: RetryPolicy,
    base: Option<Duration>,
    mut call: impl FnMut(&mut PluginInstance) -> Result<(), PluginError>,
) -> (u32, Result<(), PluginError>) {
    let policy = RetryPolicy { base: base.unwrap_or(policy.base), ..policy };
    let mut attempts = 0;
    loop {
        attempts += 1;
        match call(instance) {
            Err(e) if e.kind.is_retriable() && attempts <= policy.max_retries => {
                let wait = policy.delay(attempts);
                instance.log_error(&e, None);
                instance.log_system(
                    LogLevel::Info,
                    &format!("retry {attempts} of {} in {} ms (--retry-base-ms shortens the wait)", policy.max_retries, wait.as_millis()),
                );
                // A local loop for one author: waiting here is the point (PostHog waited too).
                std::thread::sleep(wait);
            }
            Err(e) => {
                instance.log_error(&e, None);
                return (attempts, Err(e));
            }
            Ok(()) => return (attempts, Ok(())),
        }
    }
}
