//! Counters of a run, shared by the workers of a process: the progress line and the summary.

use operators::sync::lock;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Run counters. Cheap to update from any worker.
#[derive(Debug, Default)]
pub struct Stats {
    events_in: AtomicU64,
    blank_lines: AtomicU64,
    bytes_in: AtomicU64,
    input_bytes: AtomicU64,
    events_out: AtomicU64,
    dropped: AtomicU64,
    dead_lettered: AtomicU64,
    work_given_up: AtomicU64,
    captured: AtomicU64,
    instances_created: AtomicU64,
    instances_evicted: AtomicU64,
    failures: Mutex<BTreeMap<(String, String), u64>>,
    metrics: Mutex<BTreeMap<(String, i64, String, String), u64>>,
    skips: Mutex<BTreeMap<(String, String), u64>>,
    refused: Mutex<BTreeMap<(String, String), u64>>,
}

/// A snapshot of [`Stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Lines read (blank lines not included).
    pub events_in: u64,
    /// Lines holding only whitespace: skipped, neither events nor dead letters.
    pub blank_lines: u64,
    /// Bytes read.
    pub bytes_in: u64,
    /// Size of the input.
    pub input_bytes: u64,
    /// Events written.
    pub events_out: u64,
    /// Events dropped by a plugin.
    pub dropped: u64,
    /// Lines sent to the dead-letter output instead of the events output: not events, a failed
    /// chain, captures too deep or too late. With `events_out` and `dropped` they account for
    /// every line read and event captured.
    pub dead_lettered: u64,
    /// Dead letters of plugin work that gave up after its event was written (`onEvent`, one per
    /// event of an `exportEvents` batch) and of jobs: also in the dead-letter output, but not
    /// part of that account (the event itself is in `events_out`).
    pub work_given_up: u64,
    /// Events plugins captured (`posthog.capture`), counted where their outcome is written: out,
    /// dropped or dead-lettered (capture loops, invalid events, captures after the input
    /// closed).
    pub captured: u64,
    /// Plugin instances (configuration × team) created, and evicted to keep within
    /// `runtime.instance_memory_budget_mb`.
    pub instances_created: u64,
    /// See `instances_created`.
    pub instances_evicted: u64,
    /// Failures per (plugin configuration, hook).
    pub failures: BTreeMap<(String, String), u64>,
    /// App metrics: counts per (configuration, team, hook, outcome).
    pub metrics: BTreeMap<(String, i64, String, String), u64>,
    /// Events that did not run a plugin of their chain, per (configuration or `*` for the whole
    /// chain, reason: `snapshot`, `disabled`, `not_loaded`).
    pub skips: BTreeMap<(String, String), u64>,
    /// `posthog.capture` calls and jobs refused by the limits, per (configuration, what).
    pub refused: BTreeMap<(String, String), u64>,
}

impl Stats {
    /// Records lines read.
    pub fn add_in(&self, lines: u64, bytes: u64) {
        self.events_in.fetch_add(lines, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes, Ordering::Relaxed);
    }
    /// Records blank lines skipped.
    pub fn add_blank(&self, n: u64) {
        self.blank_lines.fetch_add(n, Ordering::Relaxed);
    }
    /// Records the size of the input.
    pub fn set_input_bytes(&self, bytes: u64) {
        self.input_bytes.store(bytes, Ordering::Relaxed);
    }
    /// Records events written.
    pub fn add_out(&self, n: u64) {
        self.events_out.fetch_add(n, Ordering::Relaxed);
    }
    /// Records events dropped by plugins.
    pub fn add_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }
    /// Records dead letters.
    pub fn add_dead(&self, n: u64) {
        self.dead_lettered.fetch_add(n, Ordering::Relaxed);
    }

    /// Records dead letters of plugin work that gave up (see [`Summary::work_given_up`]).
    pub fn add_given_up(&self, n: u64) {
        self.work_given_up.fetch_add(n, Ordering::Relaxed);
    }
    /// Records plugin instances created and evicted.
    pub fn add_instances(&self, created: u64, evicted: u64) {
        self.instances_created.fetch_add(created, Ordering::Relaxed);
        self.instances_evicted.fetch_add(evicted, Ordering::Relaxed);
    }
    /// Records events captured by plugins.
    pub fn add_captured(&self, n: u64) {
        self.captured.fetch_add(n, Ordering::Relaxed);
    }
    /// Records one failure of `hook` in plugin configuration `plugin`.
    pub fn add_failure(&self, plugin: &str, hook: &str) {
        *lock(&self.failures).entry((plugin.to_string(), hook.to_string())).or_default() += 1;
    }
    /// Records an app metric.
    pub fn add_metric(&self, m: operators::plugin::worker::AppMetric) {
        let key = (m.config_id, m.team, m.hook.as_str().to_string(), m.outcome.as_str().to_string());
        *lock(&self.metrics).entry(key).or_default() += m.count;
    }
    /// Records events that skipped a plugin of their chain (`config` `*`: the whole chain).
    pub fn add_skip(&self, config: &str, reason: &str, n: u64) {
        *lock(&self.skips).entry((config.to_string(), reason.to_string())).or_default() += n;
    }
    /// Records captures or jobs the limits refused.
    pub fn add_refused(&self, config: &str, what: &str, n: u64) {
        *lock(&self.refused).entry((config.to_string(), what.to_string())).or_default() += n;
    }
    /// A snapshot.
    pub fn summary(&self) -> Summary {
        Summary {
            events_in: self.events_in.load(Ordering::Relaxed),
            blank_lines: self.blank_lines.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            input_bytes: self.input_bytes.load(Ordering::Relaxed),
            events_out: self.events_out.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            work_given_up: self.work_given_up.load(Ordering::Relaxed),
            captured: self.captured.load(Ordering::Relaxed),
            instances_created: self.instances_created.load(Ordering::Relaxed),
            instances_evicted: self.instances_evicted.load(Ordering::Relaxed),
            failures: lock(&self.failures).clone(),
            metrics: lock(&self.metrics).clone(),
            skips: lock(&self.skips).clone(),
            refused: lock(&self.refused).clone(),
        }
    }
}

impl Summary {
    /// One progress line: events, rate, share of the input.
    pub fn progress_line(&self, elapsed_secs: f64) -> String {
        let rate = self.events_in as f64 / elapsed_secs.max(1e-9);
        let share = if self.input_bytes > 0 { 100.0 * self.bytes_in as f64 / self.input_bytes as f64 } else { 0.0 };
        format!("pluginflow: {} events read, {:.0} events/s, {:.1}% of the input", self.events_in, rate, share)
    }

    /// The end-of-run summary, several lines.
    pub fn render(&self, elapsed_secs: f64) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "pluginflow summary ({elapsed_secs:.2} s):");
        let _ = writeln!(s, "  events in:           {}", self.events_in);
        let _ = writeln!(s, "  blank lines skipped: {}", self.blank_lines);
        let _ = writeln!(s, "  events out:          {}", self.events_out);
        let _ = writeln!(s, "  dropped by plugins:  {}", self.dropped);
        let _ = writeln!(s, "  dead-lettered:       {}", self.dead_lettered);
        let _ = writeln!(s, "  work given up:       {} (dead letters of onEvent, exportEvents and jobs)", self.work_given_up);
        let _ = writeln!(s, "  captured by plugins: {}", self.captured);
        let _ = writeln!(s, "  plugin instances:    {} created, {} evicted", self.instances_created, self.instances_evicted);
        if self.failures.is_empty() {
            let _ = writeln!(s, "  plugin failures:     none");
        } else {
            let _ = writeln!(s, "  plugin failures:");
            for ((plugin, hook), n) in &self.failures {
                let _ = writeln!(s, "    {plugin} {hook}: {n}");
            }
        }
        for ((config, reason), n) in &self.skips {
            let _ = writeln!(s, "  skipped a plugin:    {n} events ({config}: {reason})");
        }
        for ((config, what), n) in &self.refused {
            let _ = writeln!(s, "  refused by limits:   {n} {what} calls ({config})");
        }
        if !self.metrics.is_empty() {
            let _ = writeln!(s, "  app metrics (configuration, team, hook: outcome = count):");
            for ((config, team, hook, outcome), n) in &self.metrics {
                let _ = writeln!(s, "    {config} team {team} {hook}: {outcome} = {n}");
            }
        }
        s
    }
}
