//! All plugin configurations of one worker: instances per (configuration, team), created on
//! first use, and each team's `processEvent` chain.
//!
//! PostHog kept one VM per plugin configuration per worker thread; so do we. A configuration
//! for several teams (or all teams) acts as one configuration per team: its cache, storage and
//! `global` are per team, as they were for PostHog's per-team configurations.

use std::collections::BTreeMap;

/// The worker's tables are consulted for every event (instances, chains, counts).
use super::FastMap as HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Map, Value};

use state::{Clock, SystemClock};

use super::chain::{ChainOutcome, run_chain};
use super::error::{Hook, PluginError};
use super::host::HostServices;
use super::instance::{InstanceConfig, PluginDefinition, PluginInstance};
use super::log::LogLevel;
use super::placement::{Placement, team_owner};
pub use super::retry::Outcome;
use super::retry::{Exhausted, Next, QueuedCall, RetryPolicy, queued_team};
use super::runtime::{Limits, PluginRuntime};
use super::schedule::{Schedule, period_ms};

/// One plugin configuration, as the pipeline hands it over.
#[derive(Clone, Debug)]
pub struct PluginSpec {
    /// Configuration id (unique).
    pub id: String,
    /// The compiled plugin.
    pub def: Arc<PluginDefinition>,
    /// Teams it runs for; `None` for all.
    pub teams: Option<Vec<i64>>,
    /// Config values.
    pub config: Map<String, Value>,
    /// Attachment files by key.
    pub attachments: BTreeMap<String, PathBuf>,
    /// Position in a team's chain: lower runs first; ties run in the order the configurations
    /// were handed over.
    pub order: i64,
}

/// A configuration arriving, changing or leaving while the worker runs
/// ([`WorkerPlugins::apply_config`]).
#[derive(Clone, Debug)]
pub enum ConfigChange {
    /// A new configuration, or a new version of one with the same id.
    Upsert(PluginSpec),
    /// The configuration with this id is gone.
    Remove(String),
}

impl PluginSpec {
    fn applies_to(&self, team: i64) -> bool {
        self.teams.as_ref().is_none_or(|t| t.contains(&team))
    }
}

/// Identifies an instance in a worker: (configuration index in chain order, team).
pub type InstanceKey = (usize, i64);

/// Something the worker's plugins did that the pipeline counts or reports.
#[derive(Clone, Debug, PartialEq)]
pub enum PluginNotice {
    /// An instance could not be created; its events skip it.
    LoadFailed {
        /// Configuration id.
        config_id: String,
        /// Team.
        team: i64,
        /// Why.
        message: String,
    },
    /// A hook call failed.
    CallFailed(PluginError),
    /// An app-metric count: calls of a hook that ended one way.
    Metric(AppMetric),
    /// Events that did not run a plugin's `processEvent` although it is in their team's chain
    /// (`config_id` `None`: the whole chain, e.g. `$snapshot` events, which PostHog never ran).
    Skipped {
        /// Configuration id.
        config_id: Option<String>,
        /// `snapshot`, `disabled` or `not_loaded`.
        reason: &'static str,
        /// How many events.
        count: u64,
    },
    /// `posthog.capture` calls or jobs a configuration's limits refused.
    Refused {
        /// Configuration id.
        config_id: String,
        /// `capture` or `job`.
        what: &'static str,
        /// How many.
        count: u64,
    },
    /// Instances created (loaded, or failed to load) and evicted since the last notices.
    Instances {
        /// Created.
        created: u64,
        /// Evicted (torn down to keep the worker's instance memory within its budget).
        evicted: u64,
    },
}

/// One app-metric observation: `count` calls (or exported events) of `hook` in a
/// configuration for a team ended with `outcome`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppMetric {
    /// Configuration id.
    pub config_id: String,
    /// Team.
    pub team: i64,
    /// Hook (category).
    pub hook: Hook,
    /// Outcome.
    pub outcome: Outcome,
    /// How many.
    pub count: u64,
}

/// The plugin instances of one worker.
pub struct WorkerPlugins {
    runtime: PluginRuntime,
    specs: Arc<Vec<PluginSpec>>,
    services: HostServices,
    /// Instance per (spec index, team); `None` when it failed to load.
    instances: HashMap<(usize, i64), Option<PluginInstance>>,
    /// Spec indexes of each team's chain, in order.
    chains: HashMap<i64, Vec<usize>>,
    notices: Vec<PluginNotice>,
    place: WorkerPlace,
    /// Instances whose `setupPlugin` threw `RetryError`: attempts so far and when the next is
    /// due (`place.clock`, ms).
    setup_retries: HashMap<InstanceKey, (u32, u64)>,
    schedules: HashMap<(InstanceKey, Hook), Schedule>,
    /// Events plugins captured outside the dataflow's calls (jobs, schedules, setup, teardown),
    /// ready for the worker loop to send back into the graph, with their hop counts. A chain's
    /// captures go with its outcome; `onEvent`'s and `exportEvents'` pass through here only to
    /// be taken by the deferred stage ([`Self::take_captured_after`]).
    captured: Vec<(String, u32)>,
    /// App-metric counts since the last `take_notices`.
    metric_counts: HashMap<(InstanceKey, Hook, Outcome), u64>,
    /// Skips since the last `take_notices`, by (configuration index, reason).
    skip_counts: HashMap<(Option<usize>, &'static str), u64>,
    /// When each team's chain was last asked for (a tick per ask): the eviction order.
    last_use: HashMap<i64, u64>,
    use_tick: u64,
    /// Instances created and evicted since the last `take_notices`.
    created: u64,
    evicted: u64,
    /// Each configuration's version and when it took effect (ms on the worker's clock), for
    /// configurations changed while running ([`WorkerPlugins::apply_config`]).
    versions: HashMap<String, (u64, u64)>,
    /// The most capture hops of the events each team's instances handled since they were
    /// created: what their `teardownPlugin` captures at an eviction is one deeper, so evicting
    /// cannot restart a capture loop at zero.
    team_hops: HashMap<i64, u32>,
    /// Why instances were disabled, kept when they are evicted: a re-created instance is
    /// disabled again at once (an eviction must not give a plugin that timed out its chances
    /// back).
    disabled: HashMap<InstanceKey, String>,
    /// Configurations (by index) whose `teardownPlugin` once ran out of time: their instances
    /// leave without it from then on (until a new version), so a teardown that hangs costs one
    /// call deadline, not one per team at every eviction or change.
    slow_teardown: std::collections::HashSet<usize>,
    /// The epoch the worker loop is in ([`Self::begin_epoch`]): what jobs capture now goes into
    /// the graph at it.
    epoch: u64,
    /// Job attempts that left outputs (captured events, or their own dead letter) and journaled
    /// captures ([`CAPTURE_QUEUE`]), oldest first: acknowledged in their queue only once the
    /// outputs of the epoch they went into are settled ([`Self::settled_below`]), sent in again
    /// if those outputs were dropped ([`Self::dropped_below`]). Acknowledged at once, a crash
    /// before the outputs were written lost them.
    unsettled: std::collections::VecDeque<Unsettled>,
    /// Captured events whose durability is already seen to, for the worker loop: a job
    /// attempt's (its queue item holds them) and journaled ones sent in again (with their
    /// journal entry).
    journaled: Vec<(String, u32, Option<state::QueueItemId>)>,
}

/// Durable journal of the events plugins capture outside the dataflow's calls (scheduled tasks,
/// `setupPlugin`, `teardownPlugin`, a chain that could not complete):
/// each is written here before it goes into the graph and removed once its output is settled,
/// so a crash in between sends it in again at the next start. (A job's captures are held by
/// the job itself.)
pub const CAPTURE_QUEUE: &str = "captured";

/// A job attempt, or a journaled capture, whose outputs are not settled yet.
pub struct Unsettled {
    /// The epoch its outputs went into.
    epoch: u64,
    id: state::QueueItemId,
    what: Pending,
}

enum Pending {
    /// A job attempt, with its retry (due time, queued bytes), written when the attempt
    /// settles: written at once, an attempt run again after a rewind would start a second
    /// chain of retries. `last_of`: the configuration × team it was the last attempt of (counted
    /// out of the pending jobs when it ended; counted in again if a rewind makes it run again).
    Job { retry: Option<(u64, Vec<u8>)>, last_of: Option<(String, i64)> },
    /// A journaled capture, kept to be sent in again if a rewind drops it.
    Capture { json: String, hops: u32 },
}

impl Unsettled {
    /// Its outputs are settled: a job's retry, if any, is queued, then the job attempt or the
    /// journal entry acknowledged (a crash in between runs the job twice rather than never).
    pub fn settle(self, store: &dyn state::StateStore) {
        let queue = match &self.what {
            Pending::Job { retry, .. } => {
                if let Some((due_ms, bytes)) = retry
                    && let Err(e) = store.queue_put(JOB_QUEUE, *due_ms, bytes)
                {
                    // Not acknowledged either: the attempt stays (taken) and runs again after a
                    // restart, rather than the job being lost.
                    tracing::error!(error = %e, "cannot queue a job's retry: the attempt stays queued and runs again after a restart");
                    return;
                }
                JOB_QUEUE
            }
            Pending::Capture { .. } => CAPTURE_QUEUE,
        };
        if let Err(e) = store.queue_ack(queue, self.id) {
            tracing::error!(error = %e, queue, "cannot acknowledge a settled item; it may come back after a restart");
        }
    }
}

/// A journal entry: the hop count, a newline, the event's JSON.
fn journal_entry(json: &str, hops: u32) -> Vec<u8> {
    format!("{hops}\n{json}").into_bytes()
}

/// Reads a journal entry back; bytes that are not one go in whole, as a capture of one hop
/// (the line check makes a dead letter of what is not an event, counted as captured). A
/// capture is at least one hop deep, whatever the entry says: at 0 it would pass for input.
fn read_journal_entry(bytes: &[u8]) -> (String, u32) {
    let text = String::from_utf8_lossy(bytes);
    match text.split_once('\n').and_then(|(hops, json)| Some((json, hops.parse::<u32>().ok()?))) {
        Some((json, hops)) => (json.to_string(), hops.max(1)),
        None => (text.into_owned(), 1),
    }
}

/// Job attempts whose outputs wait to settle, per worker: past this many, the worker takes no
/// more jobs until some settle (the job queue is read from its head, where the unsettled
/// attempts sit, every round).
pub const MAX_UNSETTLED_JOBS: usize = 10_000;

/// Where a worker sits and how its background work is paced.
#[derive(Clone)]
pub struct WorkerPlace {
    /// This worker's index in the cluster.
    pub index: usize,
    /// Workers in the cluster.
    pub peers: usize,
    /// The clock scheduled tasks and jobs follow.
    pub clock: Arc<dyn Clock>,
    /// `setupPlugin` retries.
    pub setup_policy: RetryPolicy,
    /// Job retries.
    pub job_policy: RetryPolicy,
    /// QuickJS heap this worker's instances may hold, in bytes, before the least recently used
    /// teams' instances are evicted (0: no budget).
    pub instance_budget: usize,
    /// Where each team's plugins run (`None`: here, as with one worker).
    pub placement: Option<Arc<Placement>>,
    /// The workers of this process (global indexes): the ones that share its durable queues.
    pub local: std::ops::Range<usize>,
    /// Whether each worker of this process (by its offset in `local`) still runs its loop (and
    /// so its jobs); a worker whose loop has ended takes no job handed back to it.
    pub running: Option<Arc<Vec<std::sync::atomic::AtomicBool>>>,
}

impl Default for WorkerPlace {
    fn default() -> Self {
        Self {
            index: 0,
            peers: 1,
            clock: Arc::new(SystemClock),
            setup_policy: RetryPolicy::setup(),
            job_policy: RetryPolicy::job(),
            instance_budget: 0,
            placement: None,
            local: 0..1,
            running: None,
        }
    }
}

/// Durable queue of enqueued plugin jobs.
pub const JOB_QUEUE: &str = "jobs";

impl WorkerPlugins {
    /// A worker's plugin set; `specs` must be in chain order (order, then file order).
    pub fn new(limits: Limits, specs: Arc<Vec<PluginSpec>>, services: HostServices) -> Result<Self, String> {
        Self::with_runtime(PluginRuntime::new(limits)?, specs, services)
    }

    /// A worker's plugin set in the sandbox `runtime` (e.g. one with a cancel flag).
    pub fn with_runtime(runtime: PluginRuntime, specs: Arc<Vec<PluginSpec>>, services: HostServices) -> Result<Self, String> {
        Ok(Self {
            runtime,
            specs,
            services,
            instances: HashMap::default(),
            chains: HashMap::default(),
            notices: Vec::new(),
            place: WorkerPlace::default(),
            setup_retries: HashMap::default(),
            schedules: HashMap::default(),
            captured: Vec::new(),
            metric_counts: HashMap::default(),
            skip_counts: HashMap::default(),
            last_use: HashMap::default(),
            use_tick: 0,
            created: 0,
            evicted: 0,
            versions: HashMap::default(),
            team_hops: HashMap::default(),
            disabled: HashMap::default(),
            slow_teardown: std::collections::HashSet::new(),
            epoch: 0,
            unsettled: std::collections::VecDeque::new(),
            journaled: Vec::new(),
        })
    }

    /// Starts epoch `epoch` (per-epoch allowances such as captures start again).
    pub fn begin_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.runtime.begin_epoch(epoch);
    }

    /// QuickJS heap held by this worker's instances, in bytes.
    pub fn memory_used(&self) -> usize {
        self.runtime.memory_used()
    }

    /// Sets where this worker sits (index, peers), its clock and retry policies.
    pub fn with_place(mut self, place: WorkerPlace) -> Self {
        self.place = place;
        self
    }

    /// The current time on this worker's clock (`WorkerPlace::clock`), in milliseconds since
    /// the Unix epoch: what scheduled tasks, jobs, retries and export buffers are timed by.
    pub fn now_ms(&self) -> u64 {
        self.place.clock.now_ms()
    }

    /// Creates (and sets up) the instances of every configuration that names its teams, so
    /// load problems show at start rather than at a team's first event.
    pub fn preload(&mut self) {
        // Only the teams this worker owns: the others' events never come here (or, for a spread
        // team, bring their instances with them).
        let (index, peers) = (self.place.index, self.place.peers);
        let pairs: Vec<(usize, i64)> = self
            .specs
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.teams.iter().flatten().map(move |t| (i, *t)))
            .filter(|&(_, team)| team_owner(team, peers) == index)
            .collect();
        for (i, team) in pairs {
            self.ensure(i, team);
        }
    }

    /// Applies a configuration change between events: the configuration's instances (if any)
    /// are torn down (`teardownPlugin` runs; what they capture or enqueue goes on) and the next
    /// event of each team creates its instance from the new version (`setupPlugin` runs).
    /// `cache` and `storage` stay: they belong to the configuration × team, not the instance.
    /// A removed configuration keeps its place (no team) so other instances' keys stay valid.
    pub fn apply_config(&mut self, change: ConfigChange, version: u64) {
        let id = match &change {
            ConfigChange::Upsert(spec) => spec.id.clone(),
            ConfigChange::Remove(id) => id.clone(),
        };
        let index = self.specs.iter().position(|s| s.id == id);
        if let Some(i) = index {
            self.retire_instances(i);
        }
        let specs = Arc::make_mut(&mut self.specs);
        match (change, index) {
            (ConfigChange::Upsert(spec), Some(i)) => specs[i] = spec,
            (ConfigChange::Upsert(spec), None) => specs.push(spec),
            (ConfigChange::Remove(_), Some(i)) => specs[i].teams = Some(Vec::new()),
            (ConfigChange::Remove(_), None) => {}
        }
        self.chains.clear();
        self.versions.insert(id, (version, self.place.clock.now_ms()));
        // Explicit teams this worker owns get their instances (and scheduled tasks) now.
        self.preload();
    }

    fn retire_instances(&mut self, index: usize) {
        let mut keys: Vec<InstanceKey> = self.instances.keys().filter(|k| k.0 == index).copied().collect();
        keys.sort();
        for key in keys {
            self.setup_retries.remove(&key);
            for hook in [Hook::RunEveryMinute, Hook::RunEveryHour, Hook::RunEveryDay] {
                self.schedules.remove(&(key, hook));
            }
            let Some(Some(inst)) = self.instances.remove(&key) else { continue };
            let hops = self.team_hops.get(&key.1).copied().unwrap_or(0);
            self.tear_down(key, inst, hops);
        }
        // A new version starts with its chances: it was not the one disabled, nor the slow one.
        self.disabled.retain(|key, _| key.0 != index);
        self.slow_teardown.remove(&index);
    }

    /// The version of configuration `id` and when it took effect (ms), if it changed while
    /// running.
    pub fn config_version(&self, id: &str) -> Option<(u64, u64)> {
        self.versions.get(id).copied()
    }

    /// Whether any plugin configuration applies to `team`: without one, [`Self::process`] would
    /// return the event as it came (so a caller holding the text can pass it on uncopied).
    pub fn has_chain(&mut self, team: i64) -> bool {
        match self.chains.get(&team) {
            Some(chain) => !chain.is_empty(),
            None => !self.chain(team).is_empty(),
        }
    }

    /// Runs the team's `processEvent` chain over one event. `$snapshot` events skip the chain,
    /// as in PostHog.
    pub fn process(&mut self, team: i64, event_name: &str, uuid: &str, json: &str, hops: u32) -> Result<ChainOutcome, String> {
        if event_name == "$snapshot" {
            *self.skip_counts.entry((None, "snapshot")).or_default() += 1;
            return Ok(ChainOutcome { event: Some(json.to_string()), ..ChainOutcome::default() });
        }
        let chain = self.chain(team);
        let deepest = self.team_hops.entry(team).or_default();
        *deepest = (*deepest).max(hops);
        let mut taken: Vec<(usize, PluginInstance)> = Vec::with_capacity(chain.len());
        for i in chain {
            match self.instances.remove(&(i, team)) {
                Some(Some(inst)) => {
                    if inst.disabled().is_some() && inst.exports(Hook::ProcessEvent) {
                        *self.skip_counts.entry((Some(i), "disabled")).or_default() += 1;
                    }
                    taken.push((i, inst));
                }
                Some(None) => {
                    *self.skip_counts.entry((Some(i), "not_loaded")).or_default() += 1;
                    self.instances.insert((i, team), None);
                }
                None => {}
            }
        }
        let mut refs: Vec<&mut PluginInstance> = taken.iter_mut().map(|(_, p)| p).collect();
        let outcome = run_chain(&mut refs, json, team);
        if let Ok(o) = &outcome {
            for (i, inst) in &taken {
                if o.succeeded.iter().any(|l| l == inst.label()) {
                    self.metric((*i, team), Hook::ProcessEvent, Outcome::Succeeded, 1);
                }
            }
            for err in &o.failed {
                if let Some((i, _)) = taken.iter().find(|(_, p)| p.config_id() == err.config_id) {
                    self.metric((*i, team), Hook::ProcessEvent, Outcome::Failed, 1);
                }
                if let Some((_, inst)) = taken.iter().find(|(_, p)| p.config_id() == err.config_id) {
                    inst.log_error(err, Some(uuid));
                }
                self.notices.push(PluginNotice::CallFailed(err.clone()));
            }
        }
        // What the chain captured goes with its outcome (the chain stage runs it next, in the
        // event's epoch); when the chain could not be completed, to the worker loop.
        let mut made = Vec::new();
        for (i, inst) in taken {
            self.collect_outbox_into(&inst, hops, &mut made);
            self.instances.insert((i, team), Some(inst));
        }
        match outcome {
            Ok(mut o) => {
                o.captured = made;
                Ok(o)
            }
            Err(e) => {
                self.captured.append(&mut made);
                Err(e)
            }
        }
    }

    /// Moves what an instance captured and enqueued into the worker's loopback and the job
    /// queue. Captured events count one hop more than the event being handled (`hops`).
    pub fn collect_outbox(&mut self, inst: &PluginInstance, hops: u32) {
        let mut captured = std::mem::take(&mut self.captured);
        self.collect_outbox_into(inst, hops, &mut captured);
        self.captured = captured;
    }

    /// [`Self::collect_outbox`], the captured events into `captured`.
    fn collect_outbox_into(&mut self, inst: &PluginInstance, hops: u32, captured: &mut Vec<(String, u32)>) {
        let outbox = inst.take_outbox();
        for event in outbox.captured {
            captured.push((event, hops.saturating_add(1)));
        }
        for job in outbox.jobs {
            // The job keeps the hop count of the call that enqueued it: what it captures is one
            // hop deeper, so jobs cannot restart a capture loop at zero.
            // (Every instance of a worker belongs to a team; only `pluginflow try` makes others.)
            let Some(team) = inst.team_id() else {
                tracing::error!(config = %inst.config_id(), job = %job.name, "a job of an instance without a team cannot be queued");
                continue;
            };
            let item = QueuedCall {
                config_id: inst.config_id().to_string(),
                team,
                hook: Hook::Job.as_str().to_string(),
                attempts: 0,
                hops,
                events: Vec::new(),
                positions: None,
                name: Some(job.name.clone()),
                payload: Some(job.payload.clone()),
            };
            let due = match job.when {
                super::host::JobTime::In(ms) => self.place.clock.now_ms().saturating_add(ms),
                super::host::JobTime::At(ms) => u64::try_from(ms).unwrap_or(0),
            };
            if let Err(e) = self.services.store.queue_put(JOB_QUEUE, due, &item.to_bytes()) {
                self.services.pending_jobs.finished(inst.config_id(), team);
                tracing::error!(error = %e, config = %inst.config_id(), job = %job.name, "cannot enqueue a job");
                inst.log_system(LogLevel::Error, &format!("Job '{}' could not be enqueued: {e}", job.name));
            }
        }
    }

    /// Collects the outbox of the instance at `key`.
    pub fn collect_outbox_of(&mut self, key: InstanceKey, hops: u32) {
        if let Some(Some(inst)) = self.instances.remove(&key) {
            self.collect_outbox(&inst, hops);
            self.instances.insert(key, Some(inst));
        }
    }

    /// How many captured events wait for [`WorkerPlugins::take_captured`].
    pub fn captured_pending(&self) -> usize {
        self.captured.len() + self.journaled.len()
    }

    /// Where the captures made from now on will start ([`Self::take_captured_after`]).
    pub fn captured_mark(&self) -> usize {
        self.captured.len()
    }

    /// Events captured since the last call, as JSON with their hop counts, for a caller that
    /// will not send them into the graph (the end of a run): journal entries among them stay
    /// in the journal, for the next run.
    pub fn take_captured(&mut self) -> Vec<(String, u32)> {
        let mut all = std::mem::take(&mut self.captured);
        all.extend(std::mem::take(&mut self.journaled).into_iter().filter(|(_, _, id)| id.is_none()).map(|(json, hops, _)| (json, hops)));
        all
    }

    /// Events captured since the last call, for the worker loop to send into the graph at this
    /// epoch: each is journaled first ([`CAPTURE_QUEUE`]) unless its durability is seen to
    /// already, and acknowledged once this epoch's outputs settle.
    pub fn take_loop_captured(&mut self) -> Vec<(String, u32)> {
        let fresh = std::mem::take(&mut self.captured);
        let mut out = Vec::with_capacity(fresh.len() + self.journaled.len());
        for (json, hops) in fresh {
            match self.services.store.queue_put_taken(CAPTURE_QUEUE, 0, &journal_entry(&json, hops)) {
                Ok(id) => self.settle_capture_later(id, &json, hops),
                Err(e) => tracing::error!(error = %e, "cannot journal a captured event: it goes in without"),
            }
            out.push((json, hops));
        }
        for (json, hops, id) in std::mem::take(&mut self.journaled) {
            if let Some(id) = id {
                self.settle_capture_later(id, &json, hops);
            }
            out.push((json, hops));
        }
        out
    }

    /// Journal entries an earlier run left unsettled (taken out of [`CAPTURE_QUEUE`] before the
    /// workers started): sent in again with this worker's next captures.
    pub fn recover_captures(&mut self, items: Vec<state::QueueItem>) {
        for item in items {
            let (json, hops) = read_journal_entry(&item.payload);
            self.journaled.push((json, hops, Some(item.id)));
        }
    }

    /// Hands captured events to the worker loop ([`Self::take_captured`]).
    pub fn leave_captured(&mut self, events: Vec<(String, u32)>) {
        self.captured.extend(events);
    }

    /// Events captured since [`Self::captured_mark`] returned `mark`: what the calls made
    /// since then captured, taken before the worker loop sees it.
    pub fn take_captured_after(&mut self, mark: usize) -> Vec<(String, u32)> {
        self.captured.split_off(mark.min(self.captured.len()))
    }

    /// Background work due now: `setupPlugin` retries, scheduled tasks this worker owns, and due
    /// jobs. Returns jobs that failed for good.
    pub fn maintain(&mut self) -> Vec<Exhausted> {
        self.retry_setups();
        self.run_schedules();
        let exhausted = self.run_jobs();
        self.evict_over_budget();
        exhausted
    }

    /// Over the instance budget, tears down the instances of the least recently used teams until
    /// the heap is back under 90% of it (so one more team does not evict one at every epoch).
    /// A team whose instances have scheduled tasks or a pending `setupPlugin` retry is kept:
    /// evicting it would stop them. An evicted team's next event creates its instances again
    /// (`setupPlugin` runs, `global` starts empty; `cache` and `storage` are in the state store);
    /// its export buffers and pending retries live outside the instance and carry on.
    fn evict_over_budget(&mut self) {
        let budget = self.place.instance_budget;
        if budget == 0 || self.runtime.memory_used() <= budget {
            return;
        }
        let target = budget / 10 * 9;
        let mut by_age: Vec<(u64, i64)> = self.last_use.iter().map(|(team, tick)| (*tick, *team)).collect();
        by_age.sort_unstable();
        for (_, team) in by_age {
            if self.runtime.memory_used() <= target {
                break;
            }
            if self.evictable(team) {
                self.evict_team(team);
            }
        }
    }

    /// The configuration indexes with an instance (loaded or not) for `team`.
    fn team_keys(&self, team: i64) -> Vec<InstanceKey> {
        (0..self.specs.len()).map(|i| (i, team)).filter(|k| self.instances.contains_key(k)).collect()
    }

    fn evictable(&self, team: i64) -> bool {
        self.team_keys(team).into_iter().all(|key| {
            !self.setup_retries.contains_key(&key)
                && [Hook::RunEveryMinute, Hook::RunEveryHour, Hook::RunEveryDay].iter().all(|h| !self.schedules.contains_key(&(key, *h)))
        })
    }

    fn evict_team(&mut self, team: i64) {
        self.last_use.remove(&team);
        self.chains.remove(&team);
        let hops = self.team_hops.remove(&team).unwrap_or(0);
        for key in self.team_keys(team) {
            let Some(Some(inst)) = self.instances.remove(&key) else { continue };
            self.tear_down(key, inst, hops);
            self.evicted += 1;
        }
    }

    /// Runs `teardownPlugin` of an instance leaving the worker and passes on what it captured or
    /// enqueued (one hop deeper than `hops`); a disabled instance's reason is kept for the next.
    /// Its teardown is skipped when the configuration's ran out of time once before.
    fn tear_down(&mut self, key: InstanceKey, mut inst: PluginInstance, hops: u32) {
        if let Some(reason) = inst.disabled() {
            self.disabled.insert(key, reason.to_owned());
        }
        if self.slow_teardown.contains(&key.0) {
            inst.log_system(LogLevel::Warn, "teardownPlugin skipped: this configuration's teardown ran out of time before");
            return;
        }
        if let Err(e) = inst.teardown() {
            if e.kind == super::error::ErrorKind::Timeout {
                self.slow_teardown.insert(key.0);
            }
            inst.log_system(LogLevel::Error, &format!("Plugin failed to unload: {}: {}", e.name, e.message));
            self.notices.push(PluginNotice::CallFailed(e));
        }
        self.collect_outbox(&inst, hops);
    }

    /// Records that `team`'s instances were used now (the eviction order).
    fn touch(&mut self, team: i64) {
        self.use_tick += 1;
        self.last_use.insert(team, self.use_tick);
    }

    /// Instances alive on this worker (loaded or not).
    pub fn instance_count(&self) -> usize {
        self.instances.len()
    }

    fn retry_setups(&mut self) {
        let now = self.place.clock.now_ms();
        let due: Vec<InstanceKey> = self.setup_retries.iter().filter(|(_, (_, at))| *at <= now).map(|(k, _)| *k).collect();
        for key in due {
            let (attempts, _) = self.setup_retries.remove(&key).expect("listed above");
            if let Some(Some(mut inst)) = self.instances.remove(&key) {
                self.setup(key, &mut inst, attempts);
                self.instances.insert(key, Some(inst));
            }
        }
    }

    fn run_schedules(&mut self) {
        let now = self.place.clock.now_ms();
        let mut keys: Vec<InstanceKey> = self.instances.keys().copied().collect();
        keys.sort();
        for key in keys {
            if team_owner(key.1, self.place.peers) != self.place.index {
                continue;
            }
            for hook in [Hook::RunEveryMinute, Hook::RunEveryHour, Hook::RunEveryDay] {
                self.run_schedule(key, hook, now);
            }
        }
    }

    fn run_schedule(&mut self, key: InstanceKey, hook: Hook, now: u64) {
        let has = self.instances.get(&key).and_then(Option::as_ref).is_some_and(|i| i.has(hook));
        if !has {
            return;
        }
        let period = period_ms(hook).expect("scheduled hooks have periods");
        let schedule = self.schedules.entry((key, hook)).or_insert_with(|| Schedule::new(period, now));
        if !schedule.due(now) {
            return;
        }
        let Some(Some(mut inst)) = self.instances.remove(&key) else { return };
        let result = inst.run_scheduled(hook);
        let finished = self.place.clock.now_ms();
        self.schedules.get_mut(&(key, hook)).expect("inserted above").ran(finished);
        let outcome = match &result {
            Ok(()) => Outcome::Succeeded,
            Err(e) => {
                inst.log_error(e, None);
                self.notices.push(PluginNotice::CallFailed(e.clone()));
                Outcome::Failed
            }
        };
        self.collect_outbox(&inst, 0);
        self.instances.insert(key, Some(inst));
        self.metric(key, hook, outcome, 1);
    }

    fn run_jobs(&mut self) -> Vec<Exhausted> {
        if self.unsettled.iter().filter(|item| matches!(item.what, Pending::Job { .. })).count() >= MAX_UNSETTLED_JOBS {
            tracing::debug!(worker = self.place.index, "job attempts wait for their outputs to settle: no more jobs this round");
            return Vec::new();
        }
        let now = self.place.clock.now_ms();
        // A bounded page per round: a plugin whose jobs enqueue more jobs grows the queue
        // without end, and taking all of it at once held the worker (and a shutdown) for as
        // long as running it all took. Another local worker's jobs in the page are handed back
        // and taken by their owner in its round, so none wait for ever behind them.
        let items = match self.services.store.queue_take_due(JOB_QUEUE, now, JOBS_PER_ROUND) {
            Ok(items) => items,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the job queue");
                return Vec::new();
            }
        };
        let mut exhausted = Vec::new();
        for item in items {
            // A job runs on its team's owner, where the instance is: another worker of this
            // process hands it back to the queue for the owner to take. So does a worker whose
            // calls are being ended (shutdown): the job stays queued for the next run.
            if self.runtime.cancelled() || self.owner_elsewhere_here(queued_team(&item.payload)) {
                if let Err(e) = self.services.store.queue_release(JOB_QUEUE, item.id) {
                    tracing::error!(error = %e, "cannot hand a job back to the queue; it runs here");
                } else {
                    continue;
                }
            }
            exhausted.extend(self.run_job(item));
        }
        exhausted
    }

    /// Whether this worker picks a recovered item (a retry an earlier run left) of `team`: the
    /// team's owner when it is a worker of this process, else (an unreadable item, an owner in
    /// another process) the first worker of the process.
    pub fn picks_recovered(&self, team: Option<i64>) -> bool {
        let first = self.place.local.start;
        let target = match (team, &self.place.placement) {
            (Some(team), Some(placement)) => {
                Some(placement.worker_for(team, first)).filter(|w| self.place.local.contains(w)).unwrap_or(first)
            }
            _ => first,
        };
        target == self.place.index
    }

    /// Whether `team`'s plugins run on another worker of this process. A team whose owner is in
    /// another process (the cluster changed shape since the job was queued) runs here: nothing
    /// there reads this process's queue.
    fn owner_elsewhere_here(&self, team: Option<i64>) -> bool {
        let (Some(team), Some(placement)) = (team, &self.place.placement) else { return false };
        let worker = placement.worker_for(team, self.place.index);
        let still_running = |w: usize| {
            self.place
                .running
                .as_ref()
                .is_none_or(|r| r.get(w - self.place.local.start).is_some_and(|a| a.load(std::sync::atomic::Ordering::SeqCst)))
        };
        worker != self.place.index && self.place.local.contains(&worker) && still_running(worker)
    }

    fn run_job(&mut self, item: state::QueueItem) -> Option<Exhausted> {
        let store = self.services.store.clone();
        // A job that cannot run is a dead letter (acknowledged once that is written, with its
        // bytes), never dropped.
        let undone = |config_id: &str, name: &str, why: &str, payload: String| {
            tracing::error!(config = %config_id, error = %why, "a job cannot run: dead-lettered");
            Some(Exhausted {
                error: PluginError {
                    kind: super::error::ErrorKind::Failed,
                    plugin: config_id.to_string(),
                    config_id: config_id.to_string(),
                    hook: Hook::Job,
                    name: name.to_string(),
                    message: why.to_string(),
                    stack: String::new(),
                },
                attempts: 0,
                payload,
                epoch: 0,
                positions: Vec::new(),
                readers: Vec::new(),
            })
        };
        let raw = String::from_utf8_lossy(&item.payload).into_owned();
        let Some(mut job) = QueuedCall::read(&item.payload) else {
            self.settle_later(item.id, None, None);
            return undone("?", "UnreadableJob", "a job in the state store cannot be read", raw);
        };
        let Some(name) = job.name.clone() else {
            self.settle_later(item.id, None, None);
            return undone(&job.config_id, "UnreadableJob", "a job in the state store has no name", raw);
        };
        let config_id = job.config_id.clone();
        let Some(key) = self.key_of(&config_id, job.team) else {
            self.settle_later(item.id, None, Some((config_id.clone(), job.team)));
            self.job_finished(&config_id, job.team);
            return undone(&config_id, "Unavailable", "the plugin configuration is no longer configured", raw);
        };
        let payload = job.payload.clone().unwrap_or_else(|| "null".into());
        job.attempts = job.attempts.saturating_add(1);
        if self.instance_mut(key).is_none() {
            self.settle_later(item.id, None, Some((config_id.clone(), job.team)));
            self.job_finished(&config_id, job.team);
            return undone(&config_id, "Unavailable", "the plugin configuration no longer loads for this team", raw);
        }
        let inst = self.instance_mut(key).expect("checked just above");
        let result = inst.run_job(&name, &payload);
        if let Err(e) = &result {
            inst.log_error(e, None);
        }
        let captured_before = self.captured.len();
        self.collect_outbox_of(key, job.hops);
        if result.is_err() && self.runtime.cancelled() {
            // Ended by the shutdown, not by the plugin: no attempt counted, the job stays
            // queued as it was for the next run (what it captured is journaled by the loop).
            if let Err(e) = store.queue_release(JOB_QUEUE, item.id) {
                tracing::error!(error = %e, "cannot hand a job cut short by the shutdown back to the queue");
            }
            return None;
        }
        // Held by the job attempt (settled with it), not journaled.
        let made = self.captured.split_off(captured_before);
        let captured = !made.is_empty();
        self.journaled.extend(made.into_iter().map(|(json, hops)| (json, hops, None)));
        let next = self.place.job_policy.next(job.attempts, result.as_ref().map(|_| ()), self.place.clock.now_ms());
        let retry = match next {
            Next::Retry { due_ms, .. } => Some((due_ms, job.to_bytes())),
            _ => None,
        };
        let last = retry.is_none();
        if captured || matches!(next, Next::GiveUp) {
            // What it captured (or its dead letter) goes out at this epoch: until that is
            // written for good, the job stays in the queue (taken), so a crash meanwhile runs it
            // again; its retry is written then too.
            self.settle_later(item.id, retry, last.then(|| (config_id.clone(), job.team)));
        } else {
            Unsettled { epoch: self.epoch, id: item.id, what: Pending::Job { retry, last_of: None } }.settle(&*store);
        }
        if last {
            self.job_finished(&config_id, job.team);
        }
        match next {
            Next::Done(outcome) => {
                self.metric(key, Hook::Job, outcome, 1);
                None
            }
            Next::Retry { .. } => {
                self.notices.push(PluginNotice::CallFailed(result.expect_err("only a failure is retried")));
                None
            }
            Next::GiveUp => {
                let e = result.expect_err("only a failure gives up");
                self.metric(key, Hook::Job, Outcome::Failed, 1);
                self.notices.push(PluginNotice::CallFailed(e.clone()));
                Some(Exhausted {
                    error: e,
                    attempts: job.attempts,
                    payload: String::from_utf8_lossy(&job.to_bytes()).into_owned(),
                    epoch: 0,
                    positions: Vec::new(),
                    readers: Vec::new(),
                })
            }
        }
    }

    /// The outputs of every epoch below `epoch` are settled (they survive a crash): the job
    /// attempts and journaled captures that went into those epochs are acknowledged.
    pub fn settled_below(&mut self, epoch: u64) {
        for item in self.unsettled_below(epoch) {
            item.settle(&*self.services.store);
        }
    }

    /// The outputs of epochs below `epoch` that were not settled yet were dropped (exactly-once
    /// Kafka, after a rewind: their input is read again, but nothing else makes what jobs and
    /// the worker loop's calls captured again): those jobs go back to the queue and run again,
    /// those captures go in again with the next ones.
    pub fn dropped_below(&mut self, epoch: u64) {
        let (mut jobs, mut captures) = (0, 0);
        for item in self.unsettled_below(epoch) {
            match item.what {
                Pending::Job { last_of, .. } => {
                    if let Some((config_id, team)) = last_of {
                        // It runs again and ends again: counted in again (unless at the limit).
                        let _ = self.services.pending_jobs.reserve(&config_id, team);
                    }
                    match self.services.store.queue_release(JOB_QUEUE, item.id) {
                        Ok(()) => jobs += 1,
                        Err(e) => tracing::error!(error = %e, "cannot hand a job back to the queue; it runs again after a restart"),
                    }
                }
                Pending::Capture { json, hops } => {
                    self.journaled.push((json, hops, Some(item.id)));
                    captures += 1;
                }
            }
        }
        if jobs + captures > 0 {
            tracing::info!(
                worker = self.place.index,
                jobs,
                captures,
                "a rewind dropped what jobs and scheduled or setup calls captured: the jobs run again, the captures go in again"
            );
        }
    }

    /// Takes the unsettled items whose outputs went into epochs below `epoch`.
    fn unsettled_below(&mut self, epoch: u64) -> Vec<Unsettled> {
        let n = self.unsettled.iter().take_while(|item| item.epoch < epoch).count();
        self.unsettled.drain(..n).collect()
    }

    /// How many job attempts and journaled captures wait for their outputs to settle.
    pub fn unsettled(&self) -> usize {
        self.unsettled.len()
    }

    /// Hands over the items whose outputs are not settled yet, for the caller to settle when
    /// they are ([`Unsettled::settle`]): a checkpointed run's last checkpoint is written after
    /// its workers end.
    pub fn take_unsettled(&mut self) -> Vec<Unsettled> {
        self.unsettled.drain(..).collect()
    }

    /// Keeps the taken job `id` until the outputs of this epoch settle.
    fn settle_later(&mut self, id: state::QueueItemId, retry: Option<(u64, Vec<u8>)>, last_of: Option<(String, i64)>) {
        self.unsettled.push_back(Unsettled { epoch: self.epoch, id, what: Pending::Job { retry, last_of } });
    }

    /// Keeps the journal entry `id` of the capture `json` until the outputs of this epoch
    /// settle (sent in again if a rewind drops them).
    fn settle_capture_later(&mut self, id: state::QueueItemId, json: &str, hops: u32) {
        self.unsettled.push_back(Unsettled { epoch: self.epoch, id, what: Pending::Capture { json: json.to_string(), hops } });
    }

    /// A job of `config_id` × `team` is done or given up: one fewer pending in the process.
    fn job_finished(&self, config_id: &str, team: i64) {
        self.services.pending_jobs.finished(config_id, team);
    }

    /// Records an app metric. Counts add up in place (this runs per event and plugin); they
    /// become notices when [`WorkerPlugins::take_notices`] is called.
    pub fn metric(&mut self, key: InstanceKey, hook: Hook, outcome: Outcome, count: u64) {
        *self.metric_counts.entry((key, hook, outcome)).or_default() += count;
    }

    /// Records a failed call.
    pub fn failed(&mut self, error: PluginError) {
        self.notices.push(PluginNotice::CallFailed(error));
    }

    /// Instances of `team` with any of `hooks`, in chain order (creating them if needed).
    pub fn team_instances_with(&mut self, team: i64, hooks: &[Hook]) -> Vec<InstanceKey> {
        self.chain(team).into_iter().map(|i| (i, team)).filter(|k| self.loaded_with_any(*k, hooks)).collect()
    }

    /// Whether some loaded instance of `team`'s chain has one of `hooks` (what
    /// [`Self::team_instances_with`] finds, without listing it).
    pub fn team_has_any(&mut self, team: i64, hooks: &[Hook]) -> bool {
        self.chain(team).into_iter().any(|i| self.loaded_with_any((i, team), hooks))
    }

    /// Whether the instance `key` is loaded and has one of `hooks`.
    fn loaded_with_any(&self, key: InstanceKey, hooks: &[Hook]) -> bool {
        self.instances.get(&key).and_then(Option::as_ref).is_some_and(|p| hooks.iter().any(|h| p.has(*h)))
    }

    /// The instance for `key`, creating it if needed; `None` when it failed to load.
    pub fn instance_mut(&mut self, key: InstanceKey) -> Option<&mut PluginInstance> {
        if key.0 >= self.specs.len() {
            return None;
        }
        self.ensure(key.0, key.1);
        self.touch(key.1);
        self.instances.get_mut(&key).and_then(Option::as_mut)
    }

    /// An evicted instance that had been disabled, made again and disabled at once: no
    /// `setupPlugin`, no scheduled tasks, events skip it as before.
    fn recreate_disabled(&mut self, i: usize, team: i64, reason: String) {
        let spec = &self.specs[i];
        let cfg = instance_config(spec, team);
        self.created += 1;
        let instance = PluginInstance::new(&self.runtime, &spec.def, &cfg, &self.services).ok().map(|mut inst| {
            inst.disable(reason);
            inst
        });
        self.instances.insert((i, team), instance);
    }

    /// Configuration id of the configuration at `index` (chain order).
    pub fn config_id(&self, index: usize) -> &str {
        &self.specs[index].id
    }

    /// The key of configuration `config_id` for `team`.
    pub fn key_of(&self, config_id: &str, team: i64) -> Option<InstanceKey> {
        self.specs.iter().position(|s| s.id == config_id).map(|i| (i, team))
    }

    /// What happened since the last call (load failures, failed calls).
    pub fn take_notices(&mut self) -> Vec<PluginNotice> {
        let mut counts: Vec<_> = self.metric_counts.drain().collect();
        counts.sort_by_key(|(k, _)| *k);
        for ((key, hook, outcome), count) in counts {
            let config_id = self.specs[key.0].id.clone();
            self.notices.push(PluginNotice::Metric(AppMetric { config_id, team: key.1, hook, outcome, count }));
        }
        let mut skips: Vec<_> = self.skip_counts.drain().collect();
        skips.sort();
        for ((index, reason), count) in skips {
            let config_id = index.map(|i| self.specs[i].id.clone());
            self.notices.push(PluginNotice::Skipped { config_id, reason, count });
        }
        let mut refused: std::collections::BTreeMap<(usize, &'static str), u64> = std::collections::BTreeMap::new();
        for ((i, _), inst) in &self.instances {
            if let Some(inst) = inst {
                let (captures, jobs) = inst.take_refused();
                *refused.entry((*i, "capture")).or_default() += captures;
                *refused.entry((*i, "job")).or_default() += jobs;
            }
        }
        for ((i, what), count) in refused {
            if count > 0 {
                self.notices.push(PluginNotice::Refused { config_id: self.specs[i].id.clone(), what, count });
            }
        }
        let (created, evicted) = (std::mem::take(&mut self.created), std::mem::take(&mut self.evicted));
        if created + evicted > 0 {
            self.notices.push(PluginNotice::Instances { created, evicted });
        }
        std::mem::take(&mut self.notices)
    }

    /// Calls `teardownPlugin` on every live instance.
    pub fn teardown_all(&mut self) {
        let mut keys: Vec<_> = self.instances.keys().copied().collect();
        keys.sort();
        for key in keys {
            if let Some(Some(inst)) = self.instances.get_mut(&key)
                && let Err(e) = inst.teardown()
            {
                inst.log_system(LogLevel::Error, &format!("Plugin failed to unload: {}: {}", e.name, e.message));
                self.notices.push(PluginNotice::CallFailed(e));
            }
            // What teardown captured is taken by the caller (`take_captured`), which dead-letters
            // it when the input is closed; it must not stay in the instance's outbox.
            let hops = self.team_hops.get(&key.1).copied().unwrap_or(0);
            self.collect_outbox_of(key, hops);
        }
    }

    /// Live instances (for the summary and metrics).
    pub fn instances(&self) -> impl Iterator<Item = &PluginInstance> {
        self.instances.values().flatten()
    }

    fn chain(&mut self, team: i64) -> Vec<usize> {
        self.touch(team);
        if let Some(c) = self.chains.get(&team) {
            return c.clone();
        }
        let mut chain: Vec<usize> = (0..self.specs.len()).filter(|&i| self.specs[i].applies_to(team)).collect();
        chain.sort_by_key(|&i| (self.specs[i].order, i));
        for &i in &chain {
            self.ensure(i, team);
        }
        self.chains.insert(team, chain.clone());
        chain
    }

    fn ensure(&mut self, i: usize, team: i64) {
        // A configuration removed while running (or one for other teams) gets no instance, what
        // ever asks (a job, a retry, an export flush): they become dead letters.
        if self.instances.contains_key(&(i, team)) || !self.specs[i].applies_to(team) {
            return;
        }
        // Whatever made the instance (an event, a job, a retry, a preload), its team can now be
        // evicted.
        self.touch(team);
        if let Some(reason) = self.disabled.get(&(i, team)).cloned() {
            self.recreate_disabled(i, team, reason);
            return;
        }
        let spec = &self.specs[i];
        let cfg = instance_config(spec, team);
        self.created += 1;
        let instance = match PluginInstance::new(&self.runtime, &spec.def, &cfg, &self.services) {
            Ok(mut inst) => {
                self.setup((i, team), &mut inst, 0);
                // A task's first tick is the first period boundary after the instance exists.
                let now = self.place.clock.now_ms();
                for hook in [Hook::RunEveryMinute, Hook::RunEveryHour, Hook::RunEveryDay] {
                    if inst.has(hook) {
                        let period = period_ms(hook).expect("scheduled hooks have periods");
                        self.schedules.insert(((i, team), hook), Schedule::new(period, now));
                    }
                }
                Some(inst)
            }
            Err(e) => {
                tracing::error!(plugin = %spec.def.manifest.name, config = %spec.id, team, error = %e, "plugin failed to load; its events skip it");
                // In the plugin log too, where its author and the team look.
                let identity = super::log::InstanceIdentity {
                    plugin: spec.def.manifest.name.clone(),
                    config_id: spec.id.clone(),
                    team_id: Some(team),
                };
                let message = format!("Plugin failed to load for this team; its events skip it (counted as not_loaded): {e}");
                self.services.logs.log(super::log::LogEntry::new(&identity, LogLevel::Error, super::log::LogSource::System, message));
                self.notices.push(PluginNotice::LoadFailed { config_id: spec.id.clone(), team, message: e.to_string() });
                None
            }
        };
        self.instances.insert((i, team), instance);
    }

    /// Runs `setupPlugin` (attempt `done + 1`). A `RetryError` or timeout schedules another
    /// attempt (5 retries, doubling waits) and leaves the plugin running meanwhile, as PostHog
    /// did; any other error, or the last retry failing, disables it.
    fn setup(&mut self, key: InstanceKey, inst: &mut PluginInstance, done: u32) {
        let attempt = done + 1;
        let policy = self.place.setup_policy;
        let result = inst.setup();
        match (policy.next(attempt, result.as_ref().map(|_| ()), self.place.clock.now_ms()), result) {
            (_, Ok(())) => inst.log_system(LogLevel::Info, "setupPlugin succeeded."),
            (next, Err(e)) => {
                inst.log_error(&e, None);
                if let Next::Retry { due_ms, wait } = next {
                    inst.log_system(
                        LogLevel::Error,
                        &format!(
                            "setupPlugin failed with {}: {} (attempt {attempt}/{}). Retrying in {} ms...",
                            e.name,
                            e.message,
                            policy.max_retries + 1,
                            wait.as_millis()
                        ),
                    );
                    self.setup_retries.insert(key, (attempt, due_ms));
                } else {
                    inst.disable(format!("setupPlugin failed with {}: {} (attempt {attempt}). Disabled the app!", e.name, e.message));
                }
                self.notices.push(PluginNotice::CallFailed(e));
            }
        }
        // What `setupPlugin` captured or enqueued goes on now, to the worker loop, not with the
        // first event the instance handles (one hop deeper than the team's deepest, as teardown).
        let hops = self.team_hops.get(&key.1).copied().unwrap_or(0);
        self.collect_outbox(inst, hops);
    }

    /// Each configuration × team: plugin name, whether it loaded, why it is disabled.
    pub fn statuses(&self) -> Vec<(String, i64, String, bool, Option<String>)> {
        let mut out: Vec<_> = self
            .instances
            .iter()
            .map(|((i, team), inst)| {
                let spec = &self.specs[*i];
                let name = spec.def.manifest.name.clone();
                (spec.id.clone(), *team, name, inst.is_some(), inst.as_ref().and_then(|p| p.disabled().map(str::to_string)))
            })
            .collect();
        out.sort();
        out
    }

    /// Whether any instance of team `team` has `hook`.
    pub fn team_has(&self, team: i64, hook: Hook) -> bool {
        self.instances.iter().any(|((_, t), inst)| *t == team && inst.as_ref().is_some_and(|i| i.has(hook)))
    }
}

/// Due jobs a worker takes from the queue per round (`maintain`).
const JOBS_PER_ROUND: usize = 256;

pub use super::host::MAX_PENDING_JOBS;

/// What an instance of `spec` for `team` is made with.
fn instance_config(spec: &PluginSpec, team: i64) -> InstanceConfig {
    InstanceConfig {
        config_id: spec.id.clone(),
        team_id: Some(team),
        config: spec.config.clone(),
        attachments: spec.attachments.clone(),
        lenient: false,
    }
}
