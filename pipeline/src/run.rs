//! `pluginflow run`: the main job, over a recorded event log or a Kafka topic.
//!
//! ```text
//!  recorded log (byte range per worker) or Kafka consumer (partitions per worker)
//!      │  epoch = one poll; the worker loop holds the input capability
//!      ▼
//!  parse + validate ──────────────────────────► dead letters (raw line + reason)
//!      │ ValidEvent (what jobs and schedules capture comes back here, hop count beside)
//!      ▼ to the team's owner worker (operators::plugin::placement)
//!  processEvent chain of the event's team, then of what it captured (same epoch)
//!      │ ChainResult: kept, dropped or failed
//!      ▼ back to the worker that read the line
//!      ├──► events output (JSON lines or Kafka) ──► probe ◄── dead letters output
//!      ▼ to the owner again
//!  onEvent / exportEvents (dataflow::deferred: retries hold their epoch, for a while)
//!      │ given-up work, one dead letter per event, back to the reader; what the calls
//!      │ captured, through its chain (and its own onEvent/exportEvents) there, in the same
//!      ▼ epoch, back to the reader to be written
//! ```
//!
//! The source reads `batch_size` lines per epoch and never runs more than `max_epochs_ahead`
//! epochs ahead of the probe; a Kafka source commits an epoch's offsets once the probe has
//! passed it (kafka/source.rs).

use operators::sync::lock;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use differential_dataflow::input::InputSession;
use operators::dataflow::chain::{CAPTURE_SOURCE, Captures, ChainResult, RunChain, within_hops};
use operators::dataflow::deferred::{DeferredOutput, RunDeferred};
use operators::dataflow::placement::ToOwners;
use operators::dataflow::write_events::WriteEvents;
use operators::dataflow::write_letters::WriteDeadLetters;
use operators::event::{DeadLetter, EventLimits, InputLine, ValidEvent, parse_owned_line};
use operators::output::{FirstError, SharedSink, write_letters};
use operators::plugin::deferred::{DeferredWork, Exhausted, FinalEvent, RetryPolicies, RetryPolicy, ReturnedLetter};
use operators::plugin::placement::Placement;
use operators::plugin::worker::{PluginNotice, PluginSpec, WorkerPlace, WorkerPlugins};
use operators::plugin::{GeoIp, Hook, HostServices, Limits, LogSink, PluginRuntime};
use state::{MemoryStore, RocksStore, StateStore};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::core::{OkErr, Probe};
use timely::dataflow::operators::vec::{Broadcast, Map};
use timely::dataflow::{InputHandle, ProbeHandle};

use crate::config::InputKind;
use crate::config::PipelineConfig;
use crate::io::{EventSource, FileSink, Release, Settled, SharedFiles, SharedOutput, WorkerIo};
use crate::log_input::LogSource;
use crate::resume::Checkpointer;
use crate::stats::Stats;

/// What every worker of the process shares.
#[derive(Clone)]
pub struct Shared {
    /// The configuration.
    pub config: Arc<PipelineConfig>,
    /// Compiled plugin configurations in file order (chains pick and sort them per team).
    pub specs: Arc<Vec<PluginSpec>>,
    /// Services for the plugin host.
    pub services: HostServices,
    /// Output files shared by the workers.
    pub files: SharedFiles,
    /// App-metric changes (JSON lines).
    pub app_metrics: crate::io::SharedWriter,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Set on SIGINT/SIGTERM: stop reading, finish what is in flight.
    pub stop: Arc<AtomicBool>,
    /// Set when plugin calls must end at once (the shutdown grace is over).
    pub cancel: Arc<AtomicBool>,
    /// The clock scheduled tasks and jobs follow (tests set their own).
    pub clock: Arc<dyn state::Clock>,
    /// What the HTTP endpoint shows.
    pub http: Arc<crate::http::HttpState>,
    /// Keeps a recorded-log run's checkpoint (crate::resume), when it can be resumed.
    pub checkpoints: Option<Arc<crate::resume::Checkpointer>>,
    /// The checkpoint this run resumes from (`--resume`).
    pub resume: Option<Arc<crate::resume::Checkpoint>>,
    /// Configurations loaded from `[plugin_configs] dir`, handed from the watcher to the other
    /// workers of the process.
    pub registry: Arc<crate::live::Registry>,
    /// Workers per process (`-w`); set by [`run`] from its timely configuration.
    pub local_workers: usize,
    /// Retries an earlier run left in the durable queue, for each worker to pick its teams' from.
    pub recovery: operators::plugin::deferred::RecoveryPool,
    /// Whether each worker of this process still runs its loop (set by [`run`]).
    pub running: Arc<Vec<AtomicBool>>,
    /// Captured events an earlier run journaled and did not settle, taken out before the
    /// workers start; the first worker to start sends them in again.
    pub recovered_captures: operators::plugin::deferred::RecoveryPool,
}

/// Loads and compiles every enabled plugin; a plugin that cannot load stops the start.
pub fn load_specs(config: &PipelineConfig) -> anyhow::Result<Vec<PluginSpec>> {
    config
        .chain_order()
        .into_iter()
        .map(|i| {
            let entry = &config.plugins[i];
            crate::live::spec_of(entry).map_err(|e| anyhow::anyhow!("plugins[{i}] ({}): {e}", entry.id))
        })
        .collect()
}

/// Loads one instance of every configuration in a runtime of its own before the run starts:
/// a configuration the plugin refuses (a missing `required` value, a value outside `choices`)
/// or code that throws at its top level stops the start, as documented, instead of being
/// skipped by every event later. `setupPlugin` is not called here (its failures are retried at
/// run time, as in PostHog).
fn check_loads(config: &PipelineConfig, specs: &[PluginSpec], services: &HostServices) -> anyhow::Result<()> {
    let sandbox = PluginRuntime::new(limits(config)).map_err(anyhow::Error::msg)?;
    let services = trial_services(services);
    for spec in specs {
        crate::live::check_load(&sandbox, spec, &services).map_err(|e| anyhow::anyhow!("plugin configuration '{}' {e}", spec.id))?;
    }
    Ok(())
}

/// Services for trial instances: their own log entries ("Plugin loaded.") are not the run's.
fn trial_services(services: &HostServices) -> HostServices {
    HostServices { logs: Arc::new(operators::plugin::MemoryLogSink::default()), ..services.clone() }
}

/// With `[state] redis`, plugin `cache` and `storage` go to Redis and the local store (memory or
/// the state folder) keeps queues and checkpoints.
pub fn open_store(config: &PipelineConfig) -> anyhow::Result<Arc<dyn StateStore>> {
    let local: Box<dyn StateStore> = if config.state.memory {
        Box::new(MemoryStore::new())
    } else {
        let path = &config.state.path;
        std::fs::create_dir_all(path).with_context(|| format!("cannot create state folder {}", path.display()))?;
        Box::new(RocksStore::open(path).with_context(|| format!("cannot open state in {}", path.display()))?)
    };
    let Some(url) = &config.state.redis else {
        return Ok(Arc::from(local));
    };
    let timeout = std::time::Duration::from_millis(config.state.redis_timeout_ms);
    let store = state::RedisStore::open(url, &config.state.redis_prefix, timeout, local)
        .with_context(|| format!("cannot use the Redis server of [state] redis ({})", redis_address(url)))?;
    Ok(Arc::new(store))
}

/// The host and port of a Redis URL (or a socket's path), for messages: never what comes before
/// the last `@`, which may be a password, even one that does not parse as a URL.
fn redis_address(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let after_credentials = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    if scheme.ends_with("unix") {
        return after_credentials.split(['?', '#']).next().unwrap_or("").to_owned();
    }
    let host = after_credentials.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() {
        return "no host".into();
    }
    if host.rsplit_once(':').is_some_and(|(_, port)| port.chars().all(|c| c.is_ascii_digit()) && !port.is_empty()) || host.ends_with(']') {
        host.to_owned()
    } else {
        format!("{host}:6379")
    }
}

/// Builds what the workers share: state, geoip, outputs and compiled plugins.
pub fn prepare(config: PipelineConfig, logs: Arc<dyn LogSink>, stop: Arc<AtomicBool>) -> anyhow::Result<Shared> {
    let store = open_store(&config)?;
    prepare_with_store(config, logs, stop, store, None)
}

/// [`prepare`] with the state store already open. `pluginflow run` opens the store first: its
/// lock is what keeps a second pipeline off the same state, and it must be held before any
/// output (the plugin log included) is opened and truncated. With `resume` (`--resume`, its
/// outputs already cut back by [`crate::resume::restore_outputs`]) the outputs are appended to
/// and each worker reads on from the checkpoint's position.
pub fn prepare_with_store(
    config: PipelineConfig,
    logs: Arc<dyn LogSink>,
    stop: Arc<AtomicBool>,
    store: Arc<dyn StateStore>,
    resume: Option<crate::resume::Checkpoint>,
) -> anyhow::Result<Shared> {
    let specs = load_specs(&config)?;
    let geoip = match &config.geoip {
        Some(g) => Some(Arc::new(GeoIp::open(&g.path).map_err(anyhow::Error::msg)?)),
        None => None,
    };
    let services = HostServices::new(store, geoip, logs, Duration::from_millis(config.runtime.fetch_timeout_ms));
    check_loads(&config, &specs, &services)?;
    let stats = Arc::new(Stats::default());
    let limits = config.http.as_ref().map(crate::config::HttpConfig::limits).unwrap_or_default();
    let http = Arc::new(crate::http::HttpState { stats: stats.clone(), limits, ..Default::default() });
    let queue_store = services.store.clone();
    *lock(&http.queue_len) = Some(Box::new(move |queue: &str| queue_store.queue_len(queue).unwrap_or(0)));
    let append = resume.is_some();
    let resumable = crate::resume::enabled(&config);
    if !append {
        // The outputs are about to be truncated: an earlier run's checkpoint no longer describes
        // them (a `--resume` after this run dies early must start over, not trust it), whether
        // or not this run keeps checkpoints of its own (a followed log does not).
        crate::resume::forget(&*services.store)?;
    }
    let files = SharedFiles::open(&config.output.events, &config.output.dead_letters, append, resumable)?;
    let checkpoints = match resumable {
        true => Some(Arc::new(crate::resume::Checkpointer::new(&config, services.store.clone(), files.clone())?)),
        false => None,
    };
    let recovery = operators::plugin::deferred::recovery_pool(&*services.store).context("cannot read the pending retries")?;
    let recovered_captures = services
        .store
        .queue_take_due(operators::plugin::worker::CAPTURE_QUEUE, u64::MAX, usize::MAX)
        .context("cannot read the journal of captured events")?;
    if !recovered_captures.is_empty() {
        tracing::info!(events = recovered_captures.len(), "an earlier run left captured events unwritten: they go in again");
    }
    Ok(Shared {
        http,
        files,
        checkpoints,
        resume: resume.map(Arc::new),
        app_metrics: crate::io::open_output_with(&config.output.app_metrics, append)?,
        specs: Arc::new(specs),
        services,
        stats,
        stop,
        cancel: Arc::new(AtomicBool::new(false)),
        clock: Arc::new(state::SystemClock),
        config: Arc::new(config),
        registry: Arc::default(),
        local_workers: 1,
        recovery,
        running: Arc::default(),
        recovered_captures: Arc::new(std::sync::Mutex::new(recovered_captures)),
    })
}

/// The plugin sandbox's limits from `[runtime]` (ranges checked when the file was read).
pub fn limits(config: &PipelineConfig) -> Limits {
    let r = &config.runtime;
    Limits {
        call_timeout: Duration::from_millis(r.call_timeout_ms),
        memory_limit_bytes: (r.memory_limit_mb as usize) << 20,
        max_event_bytes: r.max_event_bytes as usize,
        max_event_depth: r.max_event_depth as usize,
        max_timeouts: r.max_timeouts,
        max_captures_per_call: r.max_captures_per_call,
        max_captures_per_epoch: r.max_captures_per_epoch,
        max_jobs_per_call: r.max_jobs_per_call,
        max_log_bytes_per_call: r.max_log_bytes_per_call as usize,
        max_host_bytes_per_call: r.max_host_bytes_per_call as usize,
        ..Limits::default()
    }
}

/// The limits input lines are checked against.
pub fn event_limits(config: &PipelineConfig) -> EventLimits {
    EventLimits { max_bytes: config.runtime.max_event_bytes as usize, max_depth: config.runtime.max_event_depth as usize }
}

/// Runs the job with timely configuration `timely_config` and returns the counters.
pub fn run(mut shared: Shared, timely_config: timely::Config) -> anyhow::Result<Arc<Stats>> {
    use timely::CommunicationConfig as Comm;
    shared.local_workers = match &timely_config.communication {
        Comm::Thread => 1,
        Comm::Process(n) | Comm::ProcessBinary(n) => *n,
        Comm::Cluster { threads, .. } => *threads,
    }
    .max(1);
    shared.running = Arc::new((0..shared.local_workers).map(|_| AtomicBool::new(true)).collect());
    let stats = shared.stats.clone();
    let (checkpoints, stop) = (shared.checkpoints.clone(), shared.stop.clone());
    let guards = timely::execute(timely_config, move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        run_worker(worker, &shared, index, peers).map_err(|e| format!("worker {index}: {e:#}"))
    })
    .map_err(anyhow::Error::msg)?;
    for result in guards.join() {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("{e}"),
            Err(e) => bail!("worker panicked: {e}"),
        }
    }
    if let Some(cp) = checkpoints {
        if stop.load(Ordering::Relaxed) {
            // What a stop finished after the last checkpoint (and the captures it could no longer
            // send in) is cut and done again by `--resume`: the last checkpoint stands.
            tracing::info!("stopped before the end of the log: `--resume` continues from the last checkpoint");
        } else {
            // Every worker is done: all it read is complete.
            cp.finish()?;
        }
    }
    Ok(stats)
}

fn run_worker(worker: &mut timely::worker::Worker, shared: &Shared, index: usize, peers: usize) -> anyhow::Result<()> {
    // With a configuration folder any team may get plugins at any epoch: every team goes to its
    // owner (a routing that changed with the configurations could split a team between workers
    // while the change spreads).
    let live = shared.config.plugin_configs.clone();
    let configured = shared.specs.iter().map(|s| s.teams.as_deref()).chain(live.iter().map(|_| None));
    let placement = Arc::new(Placement::new(configured, peers, shared.config.runtime.spread_teams.iter().copied()));
    // This process's workers: global indexes are numbered process by process.
    let local =
        (index / shared.local_workers * shared.local_workers)..(index / shared.local_workers * shared.local_workers + shared.local_workers);
    let sandbox = PluginRuntime::with_cancel(limits(&shared.config), shared.cancel.clone()).map_err(anyhow::Error::msg)?;
    let plugins = Rc::new(RefCell::new(
        WorkerPlugins::with_runtime(sandbox, shared.specs.clone(), shared.services.clone()).map_err(anyhow::Error::msg)?.with_place(
            WorkerPlace {
                index,
                peers,
                clock: shared.clock.clone(),
                setup_policy: RetryPolicy {
                    base: Duration::from_millis(shared.config.runtime.setup_retry_base_ms),
                    ..RetryPolicy::setup()
                },
                job_policy: RetryPolicy { base: Duration::from_millis(shared.config.runtime.on_event_retry_base_ms), ..RetryPolicy::job() },
                instance_budget: usize::try_from(shared.config.runtime.instance_memory_budget_mb << 20).unwrap_or(usize::MAX),
                placement: Some(placement.clone()),
                local: local.clone(),
                running: Some(shared.running.clone()),
            },
        ),
    ));
    plugins.borrow_mut().preload();
    let io = open_worker_io(
        &shared.config,
        &shared.files,
        index,
        peers,
        &shared.http.kafka,
        shared.resume.as_deref(),
        shared.checkpoints.clone(),
    )?;
    let mut source = io.source;
    if let Some(size) = source.size_hint() {
        shared.stats.set_input_bytes(size);
    }
    // Input lines (operators::event::InputLine): capture hops travel beside the line, never inside it.
    let mut input = InputHandle::<u64, CapacityContainerBuilder<Vec<InputLine>>>::new();
    // `probe` sees everything, deferred work and retries included: it decides which epochs are
    // complete. `intake` sees only the outputs of the chain: it bounds how far reading runs
    // ahead, so a pending retry holds commits back without stopping the flow.
    let probe = ProbeHandle::new();
    let intake = ProbeHandle::new();
    let source_name = source.name();
    let deferred = Rc::new(RefCell::new(
        DeferredWork::new(plugins.clone(), retry_policies(&shared.config), shared.services.store.clone())
            .with_recovery(shared.recovery.clone()),
    ));
    let failed = FirstError::default();
    // App metrics are a differential collection with their own probe, so their input can stay
    // open until every other piece of work (which still produces metrics) has finished.
    let mut metrics = InputSession::<u64, MetricKey, isize>::new();
    let metrics_probe = ProbeHandle::new();
    // Configuration changes (crate::live): sent by the first worker's watcher, at its epoch.
    let mut config_input = InputHandle::<u64, CapacityContainerBuilder<Vec<crate::live::ConfigUpdate>>>::new();
    let mut watcher = live.as_ref().filter(|_| index == 0).map(|c| {
        let fixed = shared.specs.iter().map(|s| s.id.clone()).collect();
        crate::live::Watcher::new(c.dir.clone(), fixed, shared.registry.clone(), shared.http.config_problems.clone())
    });
    // The trial of a changed file runs in worker 0's loop: at most 5 s (a top-level loop must not
    // hold the pipeline for a whole call timeout), ended at once by a second signal.
    let trial = match watcher {
        Some(_) => {
            let mut trial_limits = limits(&shared.config);
            trial_limits.call_timeout = trial_limits.call_timeout.min(crate::live::TRIAL_TIMEOUT);
            Some(PluginRuntime::with_cancel(trial_limits, shared.cancel.clone()).map_err(anyhow::Error::msg)?)
        }
        None => None,
    };
    let trial_services = trial_services(&shared.services);
    worker.dataflow::<u64, _, _>(|scope| {
        let out = shared.app_metrics.clone();
        metrics
            .to_collection(scope)
            .consolidate()
            .inspect(move |(key, _time, delta)| write_metric(&out, key, *delta))
            .inner
            .probe_with(&metrics_probe);
        let checks = event_limits(&shared.config);
        let reader = index as u32;
        let stats = shared.stats.clone();
        let (events, dead) = input.to_stream(scope).ok_err(move |line: InputLine| {
            let hops = line.hops;
            // A captured event (from a job, a schedule) that is no valid event: counted as captured
            // here; those that are go through the chain and are counted with its results.
            let source = if hops > 0 { CAPTURE_SOURCE } else { &source_name };
            parse_owned_line(line.bytes, source, line.position, &checks)
                .map(|mut ev| {
                    ev.hops = hops;
                    ev.reader = reader;
                    ev
                })
                .inspect_err(|_| {
                    if hops > 0 {
                        stats.add_captured(1);
                    }
                })
        });
        // To the worker that runs the team's plugins (placement.rs), and what the chain made of
        // each event back to the worker that read it, to be written there.
        let events = events.to_owners(&placement, |ev: &ValidEvent| (ev.team_id, ev.reader));
        let captures = Captures { limits: checks, max_hops: shared.config.runtime.max_capture_hops };
        let outcomes = match live {
            None => events.run_chain(plugins.clone(), captures),
            Some(_) => {
                let updates = config_input.to_stream(scope).broadcast();
                let (registry, http) = (shared.registry.clone(), shared.http.clone());
                let apply = move |plugins: &mut WorkerPlugins, update: crate::live::ConfigUpdate, epoch: u64| {
                    apply_update(plugins, &registry, &http, &update, epoch);
                };
                events.run_chain_with(updates, plugins.clone(), captures, apply)
            }
        };
        let outcomes = outcomes.to_readers(&placement, ChainResult::reader);
        let (processed, unprocessable) = split_outcomes(outcomes, &shared.stats);
        // Processed events are written here, then passed on to onEvent and exportEvents only
        // when the team has a plugin with one of them: the test DeferredWork::event would make
        // first. A team whose plugins run on another worker is passed on to that worker, which
        // decides (asking here would load its plugins here).
        let (owing, place) = (plugins.clone(), placement.clone());
        let pass_on =
            move |ev: &FinalEvent| place.moves(ev.team) || owing.borrow_mut().team_has_any(ev.team, &[Hook::OnEvent, Hook::ExportEvents]);
        let owed = processed.write_events(&io.events, &failed, counter(&shared.stats, Stats::add_out), pass_on).probe_with(&intake);
        let dead_count = || counter(&shared.stats, Stats::add_dead);
        dead.write_dead_letters(&io.dead_letters, &failed, dead_count()).probe_with(&intake).probe_with(&probe);
        unprocessable.write_dead_letters(&io.dead_letters, &failed, dead_count()).probe_with(&intake).probe_with(&probe);
        let owed = owed.to_owners(&placement, |ev: &FinalEvent| (ev.team, ev.reader));
        let (captured, given_up): (timely::dataflow::Stream<'_, u64, Vec<(ChainResult, bool)>>, _) =
            owed.run_deferred(deferred.clone(), captures).ok_err(|o| match o {
                DeferredOutput::Captured(r) => Ok((r, false)),
                DeferredOutput::CapturedByBatch(r) => Ok((r, true)),
                DeferredOutput::GaveUp(e) => Err(e),
            });
        let (by_batch, captured): (
            timely::dataflow::Stream<'_, u64, Vec<ChainResult>>,
            timely::dataflow::Stream<'_, u64, Vec<ChainResult>>,
        ) = captured.ok_err(|(r, batch): (ChainResult, bool)| if batch { Ok(r) } else { Err(r) });
        let given_up = given_up.flat_map(move |e| e.returned_letters(reader));
        let given_up = given_up.to_readers(&placement, |l: &ReturnedLetter| l.reader).map(|l: ReturnedLetter| l.letter);
        given_up.write_dead_letters(&io.dead_letters, &failed, counter(&shared.stats, Stats::add_given_up)).probe_with(&probe);
        // What onEvent and exportEvents captured, through its chain and its own onEvent and
        // exportEvents on the owner: written by the reader, in the epoch of the event it came
        // from (nothing more is owed for it). What an exportEvents batch captured also stands
        // for the batch's later epochs: a rewind of its earliest must not drop it
        // (RecordSink::write_values_kept).
        for (captured, kept) in [(captured, false), (by_batch, true)] {
            let (processed, unprocessable) = split_outcomes(captured.to_readers(&placement, ChainResult::reader), &shared.stats);
            let written = counter(&shared.stats, Stats::add_out);
            match kept {
                false => processed.write_events(&io.events, &failed, written, |_: &FinalEvent| false),
                true => processed.write_kept_events(&io.events, &failed, written),
            }
            .probe_with(&probe);
            unprocessable.write_dead_letters(&io.dead_letters, &failed, dead_count()).probe_with(&probe);
        }
    });
    let batch_size = shared.config.runtime.batch_size;
    let ahead = shared.config.runtime.max_epochs_ahead;
    let max_hops = shared.config.runtime.max_capture_hops;
    let mut epoch = 0u64;
    // The input is exhausted once the source says so, and released once the source holds
    // nothing other workers wait for (see `EventSource::release`): until then the loop goes on
    // serving it, or the source takes the exhaustion back.
    let mut source_done = false;
    let mut released = false;
    // The probe's frontier as seen before the last take of the plugins' captures: every capture
    // made since came from an event of this epoch or a later one (crate::resume).
    let mut seen = 0u64;
    let settling = match shared.checkpoints.as_deref() {
        Some(cp) => Settling::Checkpoints(cp),
        None if shared.config.input.kind == InputKind::Kafka => Settling::Source,
        None => Settling::Flushes,
    };
    // What an earlier run journaled and did not settle goes in with this worker's first
    // captures (whichever worker starts first takes it all: the graph routes each to its team).
    plugins.borrow_mut().recover_captures(std::mem::take(&mut *lock(&shared.recovered_captures)));
    // A followed log with nothing new: what its lines made is flushed to the output files then,
    // so they can be read while the run goes on (other runs flush at the end, or at checkpoints).
    let follow = shared.config.input.follow;
    let mut caught_up = false;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            tracing::info!(worker = index, "stop requested: no more input is read");
            break;
        }
        plugins.borrow_mut().begin_epoch(epoch);
        if source_done {
            // The input is read: let the chain catch up, and keep the input open only while
            // plugins keep capturing events that must go back in.
            while intake.less_than(&epoch) {
                worker.step_or_park(Some(Duration::from_millis(1)));
            }
            if released && plugins.borrow().captured_pending() == 0 {
                break;
            }
        } else {
            let polled = source.poll(epoch, batch_size)?;
            caught_up = follow && polled.records.is_empty() && !polled.exhausted;
            source_done = polled.exhausted;
            if source_done {
                tracing::info!(worker = index, epoch, "input exhausted");
            }
            shared.stats.add_in(polled.records.len() as u64, polled.bytes);
            shared.stats.add_blank(polled.blank);
            for (position, line) in polled.records {
                input.send(InputLine { position, bytes: line, hops: 0 });
            }
        }
        // Background plugin work, then what plugins captured outside the dataflow's calls (jobs,
        // schedules, setup and teardown): back into the graph.
        let gave_up = plugins.borrow_mut().maintain();
        write_now(
            &io.dead_letters,
            epoch,
            gave_up.into_iter().flat_map(Exhausted::dead_letters).collect(),
            &shared.stats,
            Stats::add_given_up,
        )?;
        let seen_before = std::mem::replace(&mut seen, frontier(&probe));
        let captured = plugins.borrow_mut().take_loop_captured();
        if let Some(cp) = shared.checkpoints.as_ref().filter(|_| !captured.is_empty()) {
            cp.injected(epoch, seen_before);
        }
        let looping = inject_captured(&mut input, captured, max_hops, &shared.stats);
        write_now(&io.dead_letters, epoch, looping, &shared.stats, Stats::add_dead)?;
        epoch += 1;
        if let (Some(w), Some(sandbox)) = (&mut watcher, &trial) {
            for update in w.poll(|spec| crate::live::check_load(sandbox, spec, &trial_services)) {
                tracing::info!(config = %update.id, version = update.version, epoch = epoch - 1, removed = update.entry.is_none(), "plugin configuration changed");
                config_input.send(update);
            }
        }
        input.advance_to(epoch);
        config_input.advance_to(epoch);
        worker.step();
        while intake.less_than(&epoch.saturating_sub(ahead)) {
            worker.step();
        }
        record_notices(&shared.stats, &mut plugins.borrow_mut(), &mut metrics, &*shared.clock);
        if epoch % 64 == 1 {
            publish(&shared.http, &plugins.borrow(), index);
        }
        metrics.advance_to(epoch);
        metrics.flush();
        failed.check()?;
        check_logs(&shared.services)?;
        complete(&mut *source, &probe)?;
        if std::mem::take(&mut caught_up) {
            flush_data(&io.events, &io.dead_letters)?;
        }
        if let Some(cp) = &shared.checkpoints {
            cp.complete(index, frontier(&probe), seen)?;
        }
        settle(&settling, &mut plugins.borrow_mut(), &mut *source, (&io.events, &io.dead_letters), frontier(&probe))?;
        if source_done && !released {
            // Failing: keep what was written (the release's error is the one reported).
            let release = source.release(epoch, frontier(&probe)).inspect_err(|_| drop(flush_data(&io.events, &io.dead_letters)))?;
            match release {
                Release::Done => released = true,
                // Epochs still in the graph (a retry, say): no need to spin meanwhile.
                Release::Waiting => {
                    worker.step_or_park(Some(Duration::from_millis(10)));
                }
                Release::Resume => {
                    tracing::info!(worker = index, epoch, "input resumed: there is more to read");
                    source_done = false;
                }
            }
        }
    }
    drop(input);
    drop(config_input);
    // This worker runs no more jobs: the others stop handing its teams' back to it.
    if let Some(flag) = shared.running.get(index - local.start) {
        flag.store(false, Ordering::SeqCst);
    }
    if let Some(cp) = shared.checkpoints.as_ref().filter(|_| !shared.stop.load(Ordering::Relaxed)) {
        // The input is read and nothing captured waits: no capture of this worker goes in again.
        // (A stopped worker keeps its floor: what it still held is cut and done again.)
        cp.left(index);
    }
    if shared.stop.load(Ordering::Relaxed) {
        deferred.borrow_mut().stop();
    }
    while !probe.done() {
        worker.step_or_park(Some(Duration::from_millis(50)));
        record_notices(&shared.stats, &mut plugins.borrow_mut(), &mut metrics, &*shared.clock);
        metrics.flush();
        if shared.stop.load(Ordering::Relaxed) && !deferred.borrow().stopping() {
            deferred.borrow_mut().stop();
        }
    }
    failed.check()?;
    plugins.borrow_mut().teardown_all();
    check_logs(&shared.services)?;
    // What plugins captured after the input closed (in onEvent retries, at teardown) cannot
    // enter the graph any more: keep it as dead letters rather than lose it.
    let late: Vec<(String, u32)> = plugins.borrow_mut().take_captured();
    shared.stats.add_captured(late.len() as u64);
    let late: Vec<DeadLetter> = late
        .into_iter()
        .map(|(json, _)| DeadLetter {
            source: CAPTURE_SOURCE.into(),
            position: 0,
            reason: "captured after the input closed".into(),
            raw: json,
            raw_base64: None,
            failure: None,
        })
        .collect();
    write_now(&io.dead_letters, epoch, late, &shared.stats, Stats::add_dead)?;
    record_notices(&shared.stats, &mut plugins.borrow_mut(), &mut metrics, &*shared.clock);
    publish(&shared.http, &plugins.borrow(), index);
    metrics.close();
    while !metrics_probe.done() {
        worker.step();
    }
    flush_data(&io.events, &io.dead_letters)?;
    flush_shared(&shared.app_metrics)?;
    source.complete(u64::MAX)?;
    // Everything is written and committed. A checkpointed run's jobs and journaled captures
    // settle with its final checkpoint (never after a stop: `--resume` cuts and does again what
    // the run did past its last one, those too); Kafka's, as its source says (a rewind while
    // releasing may have dropped some); a recorded log's without checkpoints, flushed now.
    let mut plugins = plugins.borrow_mut();
    match settling {
        Settling::Checkpoints(cp) => cp.settle_at_finish(plugins.take_unsettled()),
        _ => settle(&settling, &mut plugins, &mut *source, (&io.events, &io.dead_letters), u64::MAX)?,
    }
    Ok(())
}

/// Where a worker learns that the outputs of its epochs are written for good, which its job
/// attempts and journaled captures wait for.
enum Settling<'a> {
    /// A checkpointed recorded-log run: in its last checkpoint.
    Checkpoints(&'a Checkpointer),
    /// Kafka: as the source says ([`EventSource::take_settled`]).
    Source,
    /// A recorded log without checkpoints (followed, standard output, state in memory): once
    /// flushed.
    Flushes,
}

/// Acknowledges the job attempts and journaled captures whose outputs are written for good
/// (every epoch before `frontier` is complete) and hands back those a rewind dropped.
fn settle(
    how: &Settling<'_>,
    plugins: &mut WorkerPlugins,
    source: &mut dyn EventSource,
    (events, dead_letters): (&SharedSink, &SharedSink),
    frontier: u64,
) -> anyhow::Result<()> {
    match how {
        Settling::Checkpoints(cp) if plugins.unsettled() > 0 => plugins.settled_below(cp.settled_below()),
        Settling::Flushes if plugins.unsettled() > 0 => {
            flush_data(events, dead_letters)?;
            plugins.settled_below(frontier);
        }
        Settling::Checkpoints(_) | Settling::Flushes => {}
        Settling::Source => {
            for settled in source.take_settled(frontier) {
                match settled {
                    Settled::Below(epoch) => plugins.settled_below(epoch),
                    Settled::DroppedBelow(epoch) => plugins.dropped_below(epoch),
                }
            }
        }
    }
    Ok(())
}

/// What a chain made of events, at their readers: the events to write and the dead letters,
/// with the dropped ones and the captured ones (more than 0 hops) counted here, where their
/// outcomes are (a cluster's processes each account for what they read and write).
fn split_outcomes<'scope>(
    outcomes: timely::dataflow::Stream<'scope, u64, Vec<ChainResult>>,
    stats: &Arc<Stats>,
) -> (timely::dataflow::Stream<'scope, u64, Vec<FinalEvent>>, timely::dataflow::Stream<'scope, u64, Vec<DeadLetter>>) {
    let stats = stats.clone();
    outcomes
        .flat_map(move |r: ChainResult| {
            if r.hops() > 0 {
                stats.add_captured(1);
            }
            r.into_result(|| stats.add_dropped(1))
        })
        .ok_err(|r: Result<FinalEvent, DeadLetter>| r)
}

/// Sends captured events into the input; those past the hop limit become dead letters.
fn inject_captured(
    input: &mut InputHandle<u64, CapacityContainerBuilder<Vec<InputLine>>>,
    captured: Vec<(String, u32)>,
    max_hops: u32,
    stats: &Stats,
) -> Vec<DeadLetter> {
    let mut looping = Vec::new();
    for (json, hops) in captured {
        // Every captured event counts once as captured, where it ends: in + captured = out +
        // dropped + dead letters. Those sent in are counted by the graph (parse or chain).
        match within_hops(json, hops, max_hops) {
            Ok(json) => input.send(InputLine { position: 0, bytes: json.into_bytes(), hops }),
            Err(letter) => {
                stats.add_captured(1);
                looping.push(letter);
            }
        }
    }
    looping
}

/// Writes dead letters from the worker loop (outside the dataflow).
fn write_now(sink: &SharedSink, epoch: u64, letters: Vec<DeadLetter>, stats: &Stats, count: fn(&Stats, u64)) -> anyhow::Result<()> {
    if letters.is_empty() {
        return Ok(());
    }
    write_letters(sink, epoch, &letters)?;
    count(stats, letters.len() as u64);
    Ok(())
}

/// Adds what a sink wrote to `stats`.
fn counter(stats: &Arc<Stats>, add: fn(&Stats, u64)) -> impl Fn(u64) + 'static {
    let stats = stats.clone();
    move |n| add(&stats, n)
}

/// Tells the source which epochs are complete: those the probe has passed.
fn complete(source: &mut dyn EventSource, probe: &ProbeHandle<u64>) -> anyhow::Result<()> {
    source.complete(frontier(probe))
}

/// Every epoch before this one is complete (`u64::MAX` once the probe is done).
fn frontier(probe: &ProbeHandle<u64>) -> u64 {
    probe.with_frontier(|f| f.first().copied()).unwrap_or(u64::MAX)
}

/// Stops the run when plugin log entries could not be written (a full disk, say).
fn check_logs(services: &HostServices) -> anyhow::Result<()> {
    match services.logs.failure() {
        Some(e) => bail!("cannot write plugin logs: {e}"),
        None => Ok(()),
    }
}

fn retry_policies(config: &PipelineConfig) -> RetryPolicies {
    let r = &config.runtime;
    RetryPolicies {
        on_event: RetryPolicy { base: Duration::from_millis(r.on_event_retry_base_ms), ..RetryPolicy::on_event() },
        export_events: RetryPolicy { base: Duration::from_millis(r.export_retry_base_ms), ..RetryPolicy::export_events() },
        hold: retry_hold(config),
    }
}

/// How long a retry holds its epoch: `runtime.retry_hold_ms`, except with exactly-once Kafka
/// delivery, where it holds until done. (A released retry's dead letter would go out in a later
/// epoch's transaction; if that transaction were aborted and rewound, nothing would write the
/// dead letter again, since its own event's offsets were committed already.)
///
/// Nor with a recorded log's checkpoints (crate::resume): a retry released from its epoch could
/// give up (or capture) after the checkpoint passed that epoch, and a resume would cut its dead
/// letter (or capture) without reading its event again. Holding, every retry still queued at a
/// checkpoint belongs to an epoch the resume reads again.
fn retry_hold(config: &PipelineConfig) -> Duration {
    let exactly_once = matches!(config.input.kind, crate::config::InputKind::Kafka)
        && config.kafka.as_ref().is_some_and(|k| k.delivery == crate::kafka::Delivery::ExactlyOnce);
    if exactly_once || crate::resume::enabled(config) { Duration::MAX } else { Duration::from_millis(config.runtime.retry_hold_ms) }
}

/// Applies one configuration change to this worker's plugins; one that cannot load here (another
/// process read a plugin folder that changed since) leaves the version before it running.
fn apply_update(
    plugins: &mut WorkerPlugins,
    registry: &crate::live::Registry,
    http: &crate::http::HttpState,
    update: &crate::live::ConfigUpdate,
    epoch: u64,
) {
    match registry.change(update) {
        Ok(change) => {
            plugins.apply_config(change, update.version);
            if let Some(v) = plugins.config_version(&update.id) {
                lock(&http.config_versions).insert(update.id.clone(), v);
            }
            tracing::debug!(config = %update.id, version = update.version, epoch, "configuration applied");
        }
        Err(why) => {
            tracing::error!(config = %update.id, version = update.version, error = %why, "configuration cannot load on this worker; the version before it keeps running here")
        }
    }
}

/// Counts plugin notices, and feeds app metrics into the metrics collection.
fn record_notices(stats: &Stats, plugins: &mut WorkerPlugins, metrics: &mut InputSession<u64, MetricKey, isize>, clock: &dyn state::Clock) {
    for notice in plugins.take_notices() {
        match notice {
            PluginNotice::CallFailed(e) => stats.add_failure(&format!("{} ({})", e.plugin, e.config_id), e.hook.as_str()),
            PluginNotice::LoadFailed { config_id, .. } => stats.add_failure(&config_id, "load"),
            PluginNotice::Skipped { config_id, reason, count } => stats.add_skip(config_id.as_deref().unwrap_or("*"), reason, count),
            PluginNotice::Refused { config_id, what, count } => stats.add_refused(&config_id, what, count),
            PluginNotice::Instances { created, evicted } => stats.add_instances(created, evicted),
            PluginNotice::Metric(m) => {
                let minute = clock.now_ms() / 60_000 * 60_000;
                let key = (m.config_id.clone(), m.team, m.hook.as_str().to_string(), m.outcome.as_str().to_string(), minute);
                metrics.update(key, m.count as isize);
                stats.add_metric(m);
            }
        }
    }
}

/// Publishes this worker's plugin statuses and call latency for the HTTP endpoint.
fn publish(http: &crate::http::HttpState, plugins: &WorkerPlugins, worker: usize) {
    {
        let mut statuses = lock(&http.plugins);
        // What this worker holds now, not what it ever held (evicted instances, removed
        // configurations).
        statuses.retain(|(_, _, w), _| *w != worker);
        for (config, team, plugin, loaded, disabled) in plugins.statuses() {
            statuses.insert((config, team, worker), crate::http::PluginStatus { plugin, loaded, disabled });
        }
    }
    // This worker's histograms, summed over each configuration's teams, replace its last ones.
    let mut mine: BTreeMap<(String, String, usize), crate::http::Histogram> = BTreeMap::new();
    for inst in plugins.instances() {
        for (hook, h) in inst.latency() {
            mine.entry((inst.config_id().to_string(), hook.as_str().to_string(), worker)).or_default().merge(h);
        }
    }
    lock(&http.latency).extend(mine);
}

/// (configuration, team, hook, outcome, minute start in ms).
type MetricKey = (String, i64, String, String, u64);

fn write_metric(out: &crate::io::SharedWriter, key: &MetricKey, delta: isize) {
    let (config, team, hook, outcome, minute) = key;
    let line = serde_json::json!({
        "plugin_config_id": config, "team_id": team, "hook": hook, "outcome": outcome,
        "minute": operators::plugin::log::format_iso(*minute), "delta": delta,
    });
    let mut w = lock(out);
    if let Err(e) = writeln!(w, "{line}") {
        tracing::error!(error = %e, "cannot write app metrics");
    }
}

/// Flushes a worker's event and dead-letter outputs.
fn flush_data(events: &SharedSink, dead_letters: &SharedSink) -> anyhow::Result<()> {
    events.borrow_mut().flush()?;
    dead_letters.borrow_mut().flush()
}

fn flush_shared(out: &crate::io::SharedWriter) -> anyhow::Result<()> {
    lock(out).flush().context("cannot flush output")
}

/// Opens worker `index`'s input and outputs as the configuration says; a Kafka worker reports
/// its consumer's state to `health`; a recorded log is read from `resume`'s position for this
/// worker when given, and its reads reported to `checkpoints`.
pub fn open_worker_io(
    config: &PipelineConfig,
    files: &SharedFiles,
    index: usize,
    peers: usize,
    health: &std::sync::Arc<crate::kafka::health::KafkaHealth>,
    resume: Option<&crate::resume::Checkpoint>,
    checkpoints: Option<Arc<Checkpointer>>,
) -> anyhow::Result<WorkerIo> {
    if let (InputKind::Kafka, Some(kafka)) = (config.input.kind, &config.kafka) {
        return crate::kafka::open_worker_io(kafka, index, health.clone());
    }
    let sink = |w: &SharedOutput| -> SharedSink { Rc::new(RefCell::new(Box::new(FileSink(w.clone())))) };
    // A worker missing from the checkpoint had not started when it was written: it had read
    // nothing, and what it wrote since lies past the recorded lengths. It starts at its share's
    // beginning.
    let resume_at = resume.and_then(|cp| cp.positions.get(&index).copied());
    let log = LogSource::open(&config.input.path, index, peers, resume_at, checkpoints)?;
    // A followed log has one worker (checked at start). Room for the longest event and a CRLF:
    // a longer line is dead-lettered in pieces.
    let max_line = usize::try_from(config.runtime.max_event_bytes).unwrap_or(usize::MAX).saturating_add(2);
    Ok(WorkerIo {
        source: Box::new(if config.input.follow { log.follow(&config.input.path, max_line)? } else { log }),
        events: sink(&files.events),
        dead_letters: sink(&files.dead_letters),
    })
}

#[cfg(test)]
mod redis_address_tests {
    use super::redis_address;

    #[test]
    fn never_shows_credentials() {
        assert_eq!(redis_address("redis://127.0.0.1:6380/0"), "127.0.0.1:6380");
        assert_eq!(redis_address("redis://cache.internal"), "cache.internal:6379");
        assert_eq!(redis_address("redis://:hunter2@10.0.0.1:7000"), "10.0.0.1:7000");
        // Unencoded ?, / and # in a password: still nothing of it.
        for url in ["redis://admin:31337?x@127.0.0.1:16399/0", "redis://admin:a/b#c@h:1", "redis://u:p@ss@h:2"] {
            let shown = redis_address(url);
            assert!(
                !shown.contains("admin") && !shown.contains("31337") && !shown.contains("ss@") && !shown.contains('u'),
                "{url}: {shown}"
            );
        }
        assert_eq!(redis_address("redis://admin:31337?x@127.0.0.1:16399/0"), "127.0.0.1:16399");
        assert_eq!(redis_address("unix:///run/redis.sock?pass=secret"), "/run/redis.sock");
        assert_eq!(redis_address("redis+unix://:pw@/run/redis.sock"), "/run/redis.sock");
    }
}
