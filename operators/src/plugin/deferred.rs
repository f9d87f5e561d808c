//! Work that follows the `processEvent` chain: `onEvent` for every plugin of the event's team,
//! and batched `exportEvents` (a buffer per instance flushed by size, by time, and at the end),
//! with PostHog's retry policies. Failed attempts become [`Task`]s the caller schedules for
//! later; this module knows nothing of timely and never sleeps. Every time here is in
//! milliseconds on the worker's clock ([`WorkerPlugins::now_ms`]), so a test can drive retries
//! and export timers with a manual clock.
//!
//! Retried tasks are written to the durable queue [`RETRY_QUEUE`] so that they resume after a
//! restart; they are acknowledged once they succeed or give up.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use state::{QueueItemId, StateStore};

use super::error::{Hook, PluginError};
pub use super::retry::{Exhausted, RetryPolicy, ReturnedLetter, millis};
use super::retry::{Next, QueuedCall};
use super::worker::{InstanceKey, WorkerPlugins};
use crate::event::members::{self, Members};

/// Durable queue holding pending retries.
pub const RETRY_QUEUE: &str = "retries";

/// Retry policies of the deferred hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicies {
    /// For `onEvent`.
    pub on_event: RetryPolicy,
    /// For `exportEvents`.
    pub export_events: RetryPolicy,
    /// How long a retry holds its epoch open (and so the input's commit); past that, it waits
    /// in the durable queue only and the epoch may complete (`runtime.retry_hold_ms`).
    pub hold: Duration,
}

/// The default of [`RetryPolicies::hold`]: 10 s.
pub const DEFAULT_RETRY_HOLD: Duration = Duration::from_secs(10);

impl Default for RetryPolicies {
    fn default() -> Self {
        Self { on_event: RetryPolicy::on_event(), export_events: RetryPolicy::export_events(), hold: DEFAULT_RETRY_HOLD }
    }
}

/// What a task calls.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskKind {
    /// `onEvent` with one event (`ProcessedPluginEvent` JSON).
    OnEvent(String),
    /// `exportEvents` with a batch (each a `ProcessedPluginEvent` JSON).
    Export(Vec<String>),
}

/// A hook call owed to an instance.
#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    /// Configuration id (stable across restarts, unlike indexes).
    pub config_id: String,
    /// Team.
    pub team: i64,
    /// What to call.
    pub kind: TaskKind,
    /// Attempts made so far.
    pub attempts: u32,
    /// Earliest epoch of the events in the task (the caller holds this time open).
    pub epoch: u64,
    /// Latest epoch of its events (`epoch` for one event). What the call captures is written
    /// in `epoch` but exported (and given to `onEvent`) in this one: a batch's capture exported
    /// in the earliest epoch would make the next batch's earliest epoch that one again, and so
    /// on, holding every commit back until the input ends.
    pub latest: u64,
    /// The task's entry in the durable queue, once it was retried.
    pub queue_id: Option<QueueItemId>,
    /// Where each of its events was in the input, in order.
    pub positions: Vec<u64>,
    /// The worker that read each of its events, in order (empty for a retry recovered from the
    /// durable queue: its dead letters are written where it runs).
    pub readers: Vec<u32>,
    /// Capture hops of its events (the fewest of a batch's): what the call captures is one
    /// deeper. (The fewest, so that a batch with fresh events in it is no deeper than they are:
    /// a batch of captured events only is what a loop through `exportEvents` makes.)
    pub hops: u32,
}

/// An event that left the `processEvent` chain: what `onEvent` and `exportEvents` are owed.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FinalEvent {
    /// Its team.
    pub team: i64,
    /// Its capture hops (what `onEvent` captures is one hop deeper).
    pub hops: u32,
    /// Where its line was in the input (0 for a captured event).
    pub position: u64,
    /// The worker that read its line (or captured it): what is written for it, dead letters
    /// of its `onEvent`/`exportEvents` included, goes back there, so it is written with that
    /// worker's input offsets (see `operators::plugin::placement`).
    pub reader: u32,
    /// The event as JSON, as the chain left it.
    pub json: String,
}

impl Task {
    fn hook(&self) -> Hook {
        match self.kind {
            TaskKind::OnEvent(_) => Hook::OnEvent,
            TaskKind::Export(_) => Hook::ExportEvents,
        }
    }

    fn events(&self) -> u64 {
        kind_len(&self.kind) as u64
    }

    fn payload(&self) -> String {
        match &self.kind {
            TaskKind::OnEvent(e) => e.clone(),
            TaskKind::Export(b) => format!("[{}]", b.join(",")),
        }
    }
}

/// What became of a task.
#[derive(Debug)]
pub enum Step {
    /// Done (succeeded, or failed without a retry: recorded, nothing owed).
    Done,
    /// Call again at this time (ms on the worker's clock).
    Retry(u64, Task),
    /// Failed after the last retry, or with an error that is not retried: the caller sends it
    /// to the dead-letter output.
    GaveUp(Exhausted),
}

/// Export settings of one instance, from its config (PostHog's names and clamps).
#[derive(Clone, Debug, PartialEq)]
pub struct ExportSettings {
    /// Flush when the buffered JSON reaches this many characters.
    pub max_bytes: usize,
    /// Flush this long after the first buffered event.
    pub max_age: Duration,
    /// Event names never exported.
    pub ignore: Vec<String>,
}

impl ExportSettings {
    /// Reads `exportEventsBufferBytes` (1 MiB, 1..=100 MiB), `exportEventsBufferSeconds`
    /// (10 s, 1..=600) and `exportEventsToIgnore` (comma separated).
    pub fn from_config(get: impl Fn(&str) -> Option<String>) -> Self {
        let int =
            |key: &str, default: i64, min: i64, max: i64| get(key).and_then(|v| parse_int_prefix(&v)).unwrap_or(default).clamp(min, max);
        Self {
            max_bytes: int("exportEventsBufferBytes", 1_048_576, 1, 104_857_600) as usize,
            max_age: Duration::from_secs(int("exportEventsBufferSeconds", 10, 1, 600) as u64),
            ignore: get("exportEventsToIgnore")
                .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
                .unwrap_or_default(),
        }
    }
}

/// JavaScript's `parseInt` on a decimal string: leading digits, `None` when there are none.
fn parse_int_prefix(text: &str) -> Option<i64> {
    let t = text.trim_start();
    let (sign, digits) = match t.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, t.strip_prefix('+').unwrap_or(t)),
    };
    let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    digits[..end].parse::<i64>().ok().map(|n| sign * n)
}

#[derive(Debug)]
struct ExportBuffer {
    settings: ExportSettings,
    events: Vec<String>,
    /// Input positions of `events`, in order.
    positions: Vec<u64>,
    /// The workers that read `events`, in order.
    readers: Vec<u32>,
    /// The fewest capture hops among `events` (`u32::MAX` when there are none).
    hops: u32,
    chars: usize,
    /// When the first buffered event came (ms on the worker's clock).
    started: Option<u64>,
    min_epoch: Option<u64>,
    max_epoch: Option<u64>,
}

impl ExportBuffer {
    fn take(&mut self) -> Option<Batch> {
        if self.events.is_empty() {
            return None;
        }
        let epoch = self.min_epoch.take().unwrap_or_default();
        self.chars = 0;
        self.started = None;
        Some(Batch {
            events: std::mem::take(&mut self.events),
            positions: std::mem::take(&mut self.positions),
            readers: std::mem::take(&mut self.readers),
            hops: std::mem::replace(&mut self.hops, u32::MAX),
            latest: self.max_epoch.take().unwrap_or(epoch),
            epoch,
        })
    }
}

/// A flushed export buffer: its events, their input positions and readers, the fewest hops
/// among them, and its earliest and latest epochs.
struct Batch {
    events: Vec<String>,
    positions: Vec<u64>,
    readers: Vec<u32>,
    hops: u32,
    epoch: u64,
    latest: u64,
}

/// What one call captured (`posthog.capture`), for whoever drives the work to run and write
/// with the events the call was for ([`DeferredWork::take_made`]).
#[derive(Debug)]
pub struct Made {
    /// The earliest epoch of the call's events: the captured events are written in it.
    pub epoch: u64,
    /// The latest epoch of the call's events: the captured events are exported and given to
    /// `onEvent` in it ([`Task::latest`]).
    pub latest: u64,
    /// The worker that read the call's first event (`None` for a retry recovered from the
    /// durable queue).
    pub reader: Option<u32>,
    /// Whether the call was an `exportEvents` batch.
    pub batch: bool,
    /// The captured events, as JSON, with their hop counts.
    pub events: Vec<(String, u32)>,
}

/// The deferred work of one worker.
pub struct DeferredWork {
    plugins: Rc<RefCell<WorkerPlugins>>,
    policies: RetryPolicies,
    store: Arc<dyn StateStore>,
    /// Export buffers per instance and reader: a batch holds the events one worker read (as
    /// each PostHog process had buffers of its own), so what its call captures goes with that
    /// worker's input offsets.
    buffers: HashMap<(InstanceKey, u32), ExportBuffer>,
    stopping: bool,
    waker: Option<Box<dyn Fn()>>,
    recovery: Option<RecoveryPool>,
    made: Vec<Made>,
}

/// Retries an earlier run left in a process's durable queue, taken out once before the workers
/// start, so that each worker picks those of the teams it owns (with the queue itself, the first
/// worker to look would take them all and run them on instances of its own).
pub type RecoveryPool = Arc<std::sync::Mutex<Vec<state::QueueItem>>>;

/// Takes every retry an earlier run left in `store`'s queue, for the workers to pick from.
pub fn recovery_pool(store: &dyn StateStore) -> state::Result<RecoveryPool> {
    Ok(Arc::new(std::sync::Mutex::new(store.queue_take_due(RETRY_QUEUE, u64::MAX, usize::MAX)?)))
}

impl DeferredWork {
    /// Deferred work over a worker's plugins.
    pub fn new(plugins: Rc<RefCell<WorkerPlugins>>, policies: RetryPolicies, store: Arc<dyn StateStore>) -> Self {
        Self { plugins, policies, store, buffers: HashMap::new(), stopping: false, waker: None, recovery: None, made: Vec::new() }
    }

    /// Recovers from `pool` (the process's retries, taken out before the workers started)
    /// instead of the queue: this worker picks the retries of the teams it owns.
    pub fn with_recovery(mut self, pool: RecoveryPool) -> Self {
        self.recovery = Some(pool);
        self
    }

    /// Sets what wakes whoever drives this work (its operator), so that a stop is seen at once.
    pub fn set_waker(&mut self, waker: Box<dyn Fn()>) {
        self.waker = Some(waker);
    }

    /// Asks for a quick stop: pending retries are left in the durable queue (they resume after
    /// a restart) instead of being waited for.
    pub fn stop(&mut self) {
        self.stopping = true;
        if let Some(wake) = &self.waker {
            wake();
        }
    }

    /// Asks whoever drives this work to look at it again now: for a test that moved a manual
    /// clock (a real clock's operator wakes itself when the next retry or flush is due).
    pub fn wake(&self) {
        if let Some(wake) = &self.waker {
            wake();
        }
    }

    /// The worker's plugins this work calls.
    pub fn plugins(&self) -> Rc<RefCell<WorkerPlugins>> {
        self.plugins.clone()
    }

    /// What the calls made since the last take captured, call by call.
    pub fn take_made(&mut self) -> Vec<Made> {
        std::mem::take(&mut self.made)
    }

    /// The current time on the worker's clock, in milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.plugins.borrow().now_ms()
    }

    /// Whether [`DeferredWork::stop`] was called.
    pub fn stopping(&self) -> bool {
        self.stopping
    }

    /// How long a retry may hold its epoch open ([`RetryPolicies::hold`]).
    pub fn retry_hold(&self) -> Duration {
        self.policies.hold
    }

    /// Handles one event that left the chain at `epoch`: `onEvent` for each plugin of the team
    /// that has it, and the event added to export buffers. Returns retries, give-ups and
    /// size-triggered export steps.
    pub fn event(&mut self, epoch: u64, event: &FinalEvent) -> Vec<Step> {
        let FinalEvent { team, hops, position, reader, .. } = *event;
        let keys = self.plugins.borrow_mut().team_instances_with(team, &[Hook::OnEvent, Hook::ExportEvents]);
        if keys.is_empty() {
            return Vec::new();
        }
        let Some((name, processed)) = processed_event(&event.json) else {
            return Vec::new();
        };
        let mut steps = Vec::new();
        for key in keys {
            let (has_on_event, has_export, config_id) = {
                let mut plugins = self.plugins.borrow_mut();
                let Some(inst) = plugins.instance_mut(key) else { continue };
                (inst.has(Hook::OnEvent), inst.has(Hook::ExportEvents), inst.config_id().to_string())
            };
            if has_export {
                steps.extend(self.buffer(key, &config_id, epoch, (position, reader, hops), &name, &processed));
            }
            if has_on_event {
                let kind = TaskKind::OnEvent(processed.clone());
                let (positions, readers) = (vec![position], vec![reader]);
                let task = Task { config_id, team, kind, attempts: 0, epoch, latest: epoch, queue_id: None, positions, readers, hops };
                steps.push(self.run(task));
            }
            self.plugins.borrow_mut().collect_outbox_of(key, hops);
        }
        steps
    }

    fn buffer(&mut self, key: InstanceKey, config_id: &str, epoch: u64, from: (u64, u32, u32), name: &str, processed: &str) -> Vec<Step> {
        let slot = (key, from.1);
        if !self.buffers.contains_key(&slot) {
            let settings = {
                let mut plugins = self.plugins.borrow_mut();
                let inst = plugins.instance_mut(key).expect("checked by the caller");
                ExportSettings::from_config(|k| inst.config_text(k))
            };
            let buffer = ExportBuffer {
                settings,
                events: Vec::new(),
                positions: Vec::new(),
                readers: Vec::new(),
                hops: u32::MAX,
                chars: 0,
                started: None,
                min_epoch: None,
                max_epoch: None,
            };
            self.buffers.insert(slot, buffer);
        }
        let now = self.plugins.borrow().now_ms();
        let buffer = self.buffers.get_mut(&slot).expect("inserted above");
        if buffer.settings.ignore.iter().any(|n| n == name) {
            return Vec::new();
        }
        // PostHog counted `JSON.stringify(event).length`: UTF-16 code units.
        let size = processed.encode_utf16().count();
        let mut batches = Vec::new();
        if !buffer.events.is_empty() && buffer.chars + size > buffer.settings.max_bytes {
            batches.extend(buffer.take());
        }
        buffer.events.push(processed.to_string());
        buffer.positions.push(from.0);
        buffer.readers.push(from.1);
        buffer.hops = buffer.hops.min(from.2);
        buffer.chars += size;
        buffer.min_epoch = Some(buffer.min_epoch.map_or(epoch, |m| m.min(epoch)));
        buffer.max_epoch = Some(buffer.max_epoch.map_or(epoch, |m| m.max(epoch)));
        buffer.started.get_or_insert(now);
        if buffer.chars > buffer.settings.max_bytes {
            batches.extend(buffer.take());
        }
        batches.into_iter().map(|batch| self.export(key, config_id, batch)).collect()
    }

    fn export(&mut self, key: InstanceKey, config_id: &str, batch: Batch) -> Step {
        let Batch { events, positions, readers, hops, epoch, latest } = batch;
        let kind = TaskKind::Export(events);
        let task = Task {
            config_id: config_id.to_string(),
            team: key.1,
            kind,
            attempts: 0,
            epoch,
            latest,
            queue_id: None,
            positions,
            readers,
            hops,
        };
        self.run(task)
    }

    /// Export buffers due by `now_ms` (or all of them with `force`, at shutdown), exported now.
    pub fn flush(&mut self, now_ms: u64, force: bool) -> Vec<Step> {
        let mut due: Vec<((InstanceKey, u32), Batch)> = Vec::new();
        for (slot, buffer) in &mut self.buffers {
            let expired = buffer.started.is_some_and(|t| now_ms >= t.saturating_add(millis(buffer.settings.max_age)));
            if (force || expired)
                && let Some(batch) = buffer.take()
            {
                due.push((*slot, batch));
            }
        }
        due.sort_by_key(|(k, _)| *k);
        due.into_iter()
            .map(|((key, _), batch)| {
                let config_id = self.plugins.borrow().config_id(key.0).to_string();
                self.export(key, &config_id, batch)
            })
            .collect()
    }

    /// When the next export buffer falls due (ms on the worker's clock).
    pub fn next_flush(&self) -> Option<u64> {
        self.buffers.values().filter_map(|b| b.started.map(|t| t.saturating_add(millis(b.settings.max_age)))).min()
    }

    /// The earliest epoch of any buffered, unexported event.
    pub fn buffered_min_epoch(&self) -> Option<u64> {
        self.buffers.values().filter_map(|b| b.min_epoch).min()
    }

    /// Calls the task's hook once and says what comes next.
    pub fn run(&mut self, mut task: Task) -> Step {
        let hook = task.hook();
        let policy = match hook {
            Hook::OnEvent => self.policies.on_event,
            _ => self.policies.export_events,
        };
        task.attempts = task.attempts.saturating_add(1);
        let result = self.call(&task);
        let key = self.plugins.borrow().key_of(&task.config_id, task.team);
        // What the call enqueued goes to the job queue now, before the work is acknowledged
        // (left in the instance until its next call, a crash lost it: a retry or a timed export
        // flush has no event after it); what it captured, to [`Self::take_made`].
        if let Some(k) = key {
            let mark = self.plugins.borrow().captured_mark();
            self.plugins.borrow_mut().collect_outbox_of(k, task.hops);
            let events = self.plugins.borrow_mut().take_captured_after(mark);
            if !events.is_empty() {
                let batch = matches!(task.kind, TaskKind::Export(_));
                self.made.push(Made { epoch: task.epoch, latest: task.latest, reader: task.readers.first().copied(), batch, events });
            }
        }
        let record = |plugins: &mut WorkerPlugins, outcome| {
            if let Some(k) = key {
                plugins.metric(k, hook, outcome, task.events());
            }
        };
        let now = self.now_ms();
        match policy.next(task.attempts, result.as_ref().map(|_| ()), now) {
            Next::Done(outcome) => {
                record(&mut self.plugins.borrow_mut(), outcome);
                self.ack(&task);
                Step::Done
            }
            Next::Retry { due_ms, wait } => {
                let error = result.expect_err("only a failure is retried");
                self.log_retry(&task, &error, wait, policy);
                self.persist(&mut task, due_ms);
                Step::Retry(due_ms, task)
            }
            Next::GiveUp => {
                let error = result.expect_err("only a failure gives up");
                record(&mut self.plugins.borrow_mut(), super::retry::Outcome::Failed);
                self.log_failure(&task, &error);
                self.ack(&task);
                // Failed for good, or a plain error (never retried): either way the work was
                // not done, so it goes to the dead-letter output rather than vanishing.
                let payload = task.payload();
                Step::GaveUp(Exhausted {
                    attempts: task.attempts,
                    payload,
                    epoch: task.epoch,
                    error,
                    positions: task.positions,
                    readers: task.readers,
                })
            }
        }
    }

    fn call(&mut self, task: &Task) -> Result<(), PluginError> {
        let mut plugins = self.plugins.borrow_mut();
        // Work owed to a configuration that is gone or no longer loads was not done: a failure
        // (and a dead letter), never a success.
        let unavailable = |why: &str| PluginError {
            kind: super::error::ErrorKind::Failed,
            plugin: task.config_id.clone(),
            config_id: task.config_id.clone(),
            hook: task.hook(),
            name: "Unavailable".into(),
            message: why.into(),
            stack: String::new(),
        };
        let Some(key) = plugins.key_of(&task.config_id, task.team) else {
            return Err(unavailable("the plugin configuration is no longer configured"));
        };
        let Some(inst) = plugins.instance_mut(key) else {
            return Err(unavailable("the plugin configuration no longer loads for this team"));
        };
        let result = match &task.kind {
            TaskKind::OnEvent(e) => inst.on_event_json(e),
            TaskKind::Export(batch) => inst.export_events_json(&format!("[{}]", batch.join(","))),
        };
        if let Err(e) = &result {
            inst.log_error(e, None);
            let e = e.clone();
            plugins.failed(e);
        }
        result
    }

    fn log_retry(&self, task: &Task, error: &PluginError, delay: Duration, policy: RetryPolicy) {
        tracing::debug!(config = %task.config_id, team = task.team, hook = %task.hook(), attempt = task.attempts,
            max = policy.max_retries + 1, delay_ms = delay.as_millis() as u64, error = %error, "retrying");
    }

    fn log_failure(&self, task: &Task, error: &PluginError) {
        tracing::warn!(config = %task.config_id, team = task.team, hook = %task.hook(), attempts = task.attempts, error = %error, "giving up");
    }

    /// Writes the task to the durable queue (replacing its previous entry), due at `due` (ms).
    fn persist(&mut self, task: &mut Task, due: u64) {
        let call = QueuedCall {
            config_id: task.config_id.clone(),
            team: task.team,
            hook: task.hook().as_str().to_string(),
            attempts: task.attempts,
            hops: task.hops,
            events: match &task.kind {
                TaskKind::OnEvent(e) => vec![e.clone()],
                TaskKind::Export(b) => b.clone(),
            },
            positions: Some(task.positions.clone()),
            name: None,
            payload: None,
        };
        // The new entry first, then the old one acknowledged: a crash in between runs the retry
        // twice after a restart rather than never.
        match self.store.queue_put(RETRY_QUEUE, due, &call.to_bytes()) {
            Ok(id) => {
                self.ack(task);
                task.queue_id = Some(id);
            }
            // The entry of the attempt before (if any) stays: a restart still finds the work.
            Err(e) => tracing::error!(error = %e, config = %task.config_id, "cannot persist a pending retry; it is kept in memory only"),
        }
    }

    fn ack(&mut self, task: &Task) {
        if let Some(id) = task.queue_id
            && let Err(e) = self.store.queue_ack(RETRY_QUEUE, id)
        {
            tracing::error!(error = %e, "cannot acknowledge a finished retry; it may run again after a restart");
        }
    }

    /// Takes every retry left in the durable queue by an earlier run, with its due time (ms on
    /// the worker's clock, as it was written).
    pub fn recover(&mut self, epoch: u64) -> (Vec<(u64, Task)>, Vec<Exhausted>) {
        let items = match &self.recovery {
            Some(pool) => {
                let plugins = self.plugins.borrow();
                let mut pool = crate::sync::lock(pool);
                let (mine, others): (Vec<_>, Vec<_>) = std::mem::take(&mut *pool)
                    .into_iter()
                    .partition(|item| plugins.picks_recovered(super::retry::queued_team(&item.payload)));
                *pool = others;
                mine
            }
            None => match self.store.queue_take_due(RETRY_QUEUE, u64::MAX, usize::MAX) {
                Ok(items) => items,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read pending retries");
                    return (Vec::new(), Vec::new());
                }
            },
        };
        let mut unreadable = Vec::new();
        let tasks = items
            .into_iter()
            .filter_map(|item| match self.recovered(&item, epoch) {
                Ok(task) => Some((item.due_ms, task)),
                // Unreadable: dead-lettered with its bytes and acknowledged, not left to count as
                // pending for ever; named as far as the entry reads.
                Err((config_id, message)) => {
                    tracing::error!(id = ?item.id, "a pending retry cannot be read: dead-lettered");
                    unreadable.push(Exhausted {
                        error: PluginError {
                            kind: super::error::ErrorKind::Failed,
                            plugin: config_id.clone(),
                            config_id,
                            hook: Hook::OnEvent,
                            name: "UnreadableRetry".into(),
                            message,
                            stack: String::new(),
                        },
                        attempts: 0,
                        payload: String::from_utf8_lossy(&item.payload).into_owned(),
                        epoch,
                        positions: Vec::new(),
                        readers: Vec::new(),
                    });
                    if let Err(e) = self.store.queue_ack(RETRY_QUEUE, item.id) {
                        tracing::error!(error = %e, "cannot acknowledge an unreadable retry");
                    }
                    None
                }
            })
            .collect();
        (tasks, unreadable)
    }

    /// The task a queued retry stands for; else (configuration id, what is wrong with it): an
    /// entry that does not read, or one that is no whole onEvent/exportEvents call (a job's
    /// entry, an onEvent entry with several events: dead-lettered whole, not half run).
    fn recovered(&self, item: &state::QueueItem, epoch: u64) -> Result<Task, (String, String)> {
        let Some(call) = QueuedCall::read(&item.payload) else {
            return Err(("?".into(), "a pending retry in the state store cannot be read".into()));
        };
        let kind = match call.hook.as_str() {
            "onEvent" if call.events.len() == 1 => TaskKind::OnEvent(call.events[0].clone()),
            "exportEvents" => TaskKind::Export(call.events),
            _ => {
                let why = format!(
                    "a pending retry in the state store is not a whole onEvent or exportEvents call (hook {:?}, {} events)",
                    call.hook,
                    call.events.len()
                );
                return Err((call.config_id, why));
            }
        };
        // Retries queued before positions were recorded have none: 0, as for a captured event.
        let positions = call.positions.unwrap_or_else(|| vec![0; kind_len(&kind)]);
        Ok(Task {
            config_id: call.config_id,
            team: call.team,
            kind,
            attempts: call.attempts,
            epoch,
            latest: epoch,
            queue_id: Some(item.id),
            positions,
            // A worker index of the run that queued it would mean nothing in this one.
            readers: Vec::new(),
            hops: call.hops,
        })
    }
}

fn kind_len(kind: &TaskKind) -> usize {
    match kind {
        TaskKind::OnEvent(_) => 1,
        TaskKind::Export(b) => b.len(),
    }
}

/// The `ProcessedPluginEvent` PostHog handed to `onEvent` and `exportEvents` (spec §1.2), and
/// the event's name: `{distinct_id, ip, team_id, event, properties, timestamp, $set, $set_once,
/// uuid}`.
pub fn processed_event(final_json: &str) -> Option<(String, String)> {
    // Read member by member, values kept as written: a lone surrogate escape (which `JSON.parse`
    // reads and plugins write) reaches the hooks as it is, instead of failing a `Value`.
    let ev = Members::parse(final_json).ok()?;
    let properties = ev.get("properties");
    let inside = properties.and_then(|p| Members::parse(p.get()).ok());
    let name = ev.get("event").and_then(|v| serde_json::from_str::<String>(v.get()).ok()).unwrap_or_default();
    let null = members::null();
    let of_properties = |key: &str| inside.as_ref().and_then(|p| p.get(key)).unwrap_or(null);
    let fields: [(&str, &RawValue); 9] = [
        ("distinct_id", ev.get("distinct_id").unwrap_or(null)),
        ("ip", ev.get("ip").unwrap_or(null)),
        ("team_id", ev.get("team_id").unwrap_or(null)),
        ("event", ev.get("event").unwrap_or(null)),
        ("$set", of_properties("$set")),
        ("$set_once", of_properties("$set_once")),
        ("properties", properties.unwrap_or(members::empty_object())),
        ("timestamp", ev.get("timestamp").or_else(|| ev.get("now")).unwrap_or(null)),
        ("uuid", ev.get("uuid").unwrap_or(null)),
    ];
    let mut out = String::with_capacity(final_json.len() + 128);
    for (key, value) in fields {
        out.push(if out.is_empty() { '{' } else { ',' });
        out.push('"');
        out.push_str(key);
        out.push_str("\":");
        out.push_str(value.get());
    }
    out.push('}');
    Some((name, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use serde_json::json;

    #[test]
    fn policies_double_their_wait() {
        let p = RetryPolicy::on_event();
        let waits: Vec<u64> = (1..=5).map(|r| p.delay(r).as_secs()).collect();
        assert_eq!(waits, vec![5, 10, 20, 40, 80]);
        let e = RetryPolicy::export_events();
        assert_eq!((1..=3).map(|r| e.delay(r).as_secs()).collect::<Vec<_>>(), vec![6, 12, 24]);
    }

    #[test]
    fn export_settings_parse_like_parse_int_and_clamp() {
        let cfg = |k: &str| match k {
            "exportEventsBufferBytes" => Some("2048kb".to_string()),
            "exportEventsBufferSeconds" => Some("9999".to_string()),
            "exportEventsToIgnore" => Some(" $pageview , ,custom ".to_string()),
            _ => None,
        };
        let s = ExportSettings::from_config(cfg);
        assert_eq!(s.max_bytes, 2048);
        assert_eq!(s.max_age, Duration::from_secs(600));
        assert_eq!(s.ignore, vec!["$pageview", "custom"]);
        let d = ExportSettings::from_config(|_| Some("nope".into()));
        assert_eq!((d.max_bytes, d.max_age), (1_048_576, Duration::from_secs(10)));
    }

    #[test]
    fn processed_event_has_posthogs_shape() {
        let (name, json) = processed_event(
            r#"{"uuid":"u","event":"e","team_id":2,"distinct_id":"d","ip":"1.2.3.4","site_url":"s","now":"n","timestamp":"t","properties":{"$set":{"a":1},"x":2}}"#,
        )
        .unwrap();
        assert_eq!(name, "e");
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            v,
            json!({"distinct_id":"d","ip":"1.2.3.4","team_id":2,"event":"e","$set":{"a":1},"$set_once":null,"properties":{"$set":{"a":1},"x":2},"timestamp":"t","uuid":"u"})
        );
    }
}
