//! `pluginflow run`: the main job, over a recorded event log or a Kafka topic.
//!
//! ```text
//!  recorded log (byte range per worker) or Kafka consumer (partitions per worker)
//!      │  epoch = one poll; the worker loop holds the input capability
//!      ▼
//!  parse + validate ──────────────────────────► dead letters (raw line + reason)
//!      │ ValidEvent (events captured by plugins come back here, hop count beside them)
//!      ▼ to the team's owner worker (operators::plugin::placement)
//!  processEvent chain of the event's team
//!      │ ChainResult: kept, dropped or failed
//!      ▼ back to the worker that read the line
//!      ├──► events output (JSON lines or Kafka) ──► probe ◄── dead letters output
//!      ▼ to the owner again
//!  onEvent / exportEvents (dataflow::deferred: retries hold their epoch, for a while)
//!      │ given-up work, one dead letter per event, back to the reader
//! ```
//!
//! The source reads `batch_size` lines per epoch and never runs more than `max_epochs_ahead`
//! epochs ahead of the probe; a Kafka source commits an epoch's offsets once the probe has
//! passed it (kafka/source.rs).

use operators::sync::lock;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use differential_dataflow::input::InputSession;
use operators::dataflow::chain::{ChainResult, RunChain};
use operators::dataflow::deferred::RunDeferred;
use operators::dataflow::placement::ToOwners;
use operators::event::{DeadLetter, EventLimits, InputLine, ValidEvent, parse_owned_line};
use operators::plugin::deferred::{DeferredWork, FinalEvent, RetryPolicies, RetryPolicy};
use operators::plugin::placement::Placement;
use operators::plugin::worker::{PluginNotice, PluginSpec, WorkerPlace, WorkerPlugins};
use operators::plugin::{GeoIp, Hook, HostServices, Limits, LogSink, PluginRuntime};
use state::{MemoryStore, RocksStore, StateStore};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::core::{Inspect, OkErr, Probe};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::{Broadcast, Map};
use timely::dataflow::{InputHandle, ProbeHandle};

use crate::config::PipelineConfig;
use crate::io::{EventSource, OutRecord, Release, SharedFiles, open_worker_io};
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
    *lock(&http.pending_retries) = Some(Box::new(move || queue_store.queue_len(operators::plugin::deferred::RETRY_QUEUE).unwrap_or(0)));
    let append = resume.is_some();
    let resumable = crate::resume::enabled(&config);
    if !append {
        // The outputs are about to be truncated: an earlier run's checkpoint no longer describes
        // them (a `--resume` after this run dies early must start over, not trust it), whether
        // or not this run keeps checkpoints of its own (a followed log does not).
        crate::resume::forget(&*services.store)?;
    }
    let files = SharedFiles::open(&config, append, resumable)?;
    let checkpoints = match resumable {
        true => Some(Arc::new(crate::resume::Checkpointer::new(&config, services.store.clone(), files.clone())?)),
        false => None,
    };
    let recovery = operators::plugin::deferred::recovery_pool(&*services.store).context("cannot read the pending retries")?;
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
    let failed: Rc<RefCell<Option<anyhow::Error>>> = Rc::new(RefCell::new(None));
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
        let (events, dead) = input.to_stream(scope).ok_err(move |line: InputLine| {
            let hops = line.hops;
            parse_owned_line(line.bytes, &source_name, line.position, &checks).map(|mut ev| {
                ev.hops = hops;
                ev.reader = reader;
                ev
            })
        });
        // To the worker that runs the team's plugins (placement.rs), and what the chain made of
        // each event back to the worker that read it, to be written there.
        let events = events.to_owners(&placement, |ev: &ValidEvent| (ev.team_id, ev.reader));
        let outcomes = match live {
            None => events.run_chain(plugins.clone()),
            Some(_) => {
                let updates = config_input.to_stream(scope).broadcast();
                let (registry, http) = (shared.registry.clone(), shared.http.clone());
                let apply = move |plugins: &mut WorkerPlugins, update: crate::live::ConfigUpdate, epoch: u64| {
                    apply_update(plugins, &registry, &http, &update, epoch);
                };
                events.run_chain_with(updates, plugins.clone(), apply)
            }
        };
        let outcomes = outcomes.to_readers(&placement, ChainResult::reader);
        let stats = shared.stats.clone();
        let (processed, unprocessable): (timely::dataflow::Stream<'_, u64, Vec<FinalEvent>>, _) =
            outcomes.flat_map(move |r: ChainResult| r.into_result(|| stats.add_dropped(1))).ok_err(|r: Result<FinalEvent, DeadLetter>| r);
        // Processed events are written here, then passed on (moved, not copied) to onEvent and
        // exportEvents only when the team has a plugin with one of them: the test
        // DeferredWork::event would make first. A team whose plugins run on another worker is
        // passed on to that worker, which decides (asking here would load its plugins here).
        let (sink, stats, fail, owing, place) =
            (io.events.clone(), shared.stats.clone(), failed.clone(), plugins.clone(), placement.clone());
        let owed = processed
            .unary(Pipeline, "WriteEvents", move |_, _| {
                move |input, output| {
                    input.for_each(|cap, data: &mut Vec<FinalEvent>| {
                        let Some(out) = cap.retain_least(0) else { return };
                        let epoch = *out.time();
                        keep_first_error(&fail, sink.borrow_mut().write_values(epoch, &mut data.iter().map(|e| e.json.as_str())));
                        stats.add_out(data.len() as u64);
                        let mut plugins = owing.borrow_mut();
                        let mut session = output.session(&out);
                        for ev in data.drain(..) {
                            if place.moves(ev.team) || plugins.team_has_any(ev.team, &[Hook::OnEvent, Hook::ExportEvents]) {
                                session.give(ev);
                            }
                        }
                    });
                }
            })
            .probe_with(&intake);
        write_dead_letters(dead, &io.dead_letters, &shared.stats, &failed).probe_with(&intake).probe_with(&probe);
        write_dead_letters(unprocessable, &io.dead_letters, &shared.stats, &failed).probe_with(&intake).probe_with(&probe);
        let owed = owed.to_owners(&placement, |ev: &FinalEvent| (ev.team, ev.reader));
        let given_up = owed.run_deferred(deferred.clone()).flat_map(move |e| exhausted_letters(e, reader));
        let given_up = given_up.to_readers(&placement, |l: &ReturnedLetter| l.reader).map(|l: ReturnedLetter| l.letter);
        write_dead_letters(given_up, &io.dead_letters, &shared.stats, &failed).probe_with(&probe);
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
        // Background plugin work, then events plugins captured: back into the graph.
        let gave_up = plugins.borrow_mut().maintain();
        write_now(&io.dead_letters, epoch, gave_up.into_iter().flat_map(letters_of).collect(), &shared.stats)?;
        let seen_before = std::mem::replace(&mut seen, frontier(&probe));
        let captured = plugins.borrow_mut().take_captured();
        if let Some(cp) = shared.checkpoints.as_ref().filter(|_| !captured.is_empty()) {
            cp.injected(epoch, seen_before);
        }
        let looping = inject_captured(&mut input, captured, max_hops, &shared.stats);
        write_now(&io.dead_letters, epoch, looping, &shared.stats)?;
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
        check_failed(&failed)?;
        check_logs(&shared.services)?;
        complete(&mut *source, &probe)?;
        if std::mem::take(&mut caught_up) {
            flush_data(&io.events, &io.dead_letters)?;
        }
        if let Some(cp) = &shared.checkpoints {
            cp.complete(index, frontier(&probe), seen)?;
        }
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
    check_failed(&failed)?;
    plugins.borrow_mut().teardown_all();
    check_logs(&shared.services)?;
    // What plugins captured after the input closed (in onEvent retries, at teardown) cannot
    // enter the graph any more: keep it as dead letters rather than lose it.
    let late: Vec<(String, u32)> = plugins.borrow_mut().take_captured();
    shared.stats.add_captured(late.len() as u64);
    let late: Vec<DeadLetter> = late
        .into_iter()
        .map(|(json, _)| DeadLetter {
            source: "posthog.capture".into(),
            position: 0,
            reason: "captured after the input closed".into(),
            raw: json,
            raw_base64: None,
            failure: None,
        })
        .collect();
    write_now(&io.dead_letters, epoch, late, &shared.stats)?;
    record_notices(&shared.stats, &mut plugins.borrow_mut(), &mut metrics, &*shared.clock);
    publish(&shared.http, &plugins.borrow(), index);
    metrics.close();
    while !metrics_probe.done() {
        worker.step();
    }
    flush_data(&io.events, &io.dead_letters)?;
    flush_shared(&shared.app_metrics)?;
    source.complete(u64::MAX)?;
    Ok(())
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
        // Every captured event counts as captured, whether it goes in or to the dead letters:
        // in + captured = out + dropped + dead letters.
        stats.add_captured(1);
        if hops > max_hops {
            tracing::warn!(hops, max_hops, "posthog.capture loop stopped: the event goes to the dead-letter output");
            looping.push(DeadLetter {
                source: "posthog.capture".into(),
                position: 0,
                reason: format!("posthog.capture loop: this event is {hops} captures deep (runtime.max_capture_hops = {max_hops})"),
                raw: json,
                raw_base64: None,
                failure: None,
            });
            continue;
        }
        input.send(InputLine { position: 0, bytes: json.into_bytes(), hops });
    }
    looping
}

/// Writes dead letters from the worker loop (outside the dataflow).
fn write_now(sink: &crate::io::SharedSink, epoch: u64, letters: Vec<DeadLetter>, stats: &Stats) -> anyhow::Result<()> {
    if letters.is_empty() {
        return Ok(());
    }
    let records: Vec<OutRecord> = letters.iter().map(dead_letter_record).collect();
    sink.borrow_mut().write(epoch, &records)?;
    stats.add_dead(letters.len() as u64);
    Ok(())
}

/// The dead letters of work a plugin could not do: one per event (an export batch is split),
/// with the plugin, configuration, hook, attempts and error as fields (and Kafka headers).
/// The dead letters of work that failed for good, one per event of an `exportEvents` batch, each
/// addressed to the worker that read its event (`here` when that is not known: a job, a retry
/// recovered from an earlier run).
fn exhausted_letters(e: operators::plugin::deferred::Exhausted, here: u32) -> Vec<ReturnedLetter> {
    let readers = e.readers.clone();
    let reader = |i: usize| readers.get(i).copied().unwrap_or(here);
    letters_of(e).into_iter().enumerate().map(|(i, letter)| ReturnedLetter { reader: reader(i), letter }).collect()
}

fn letters_of(e: operators::plugin::deferred::Exhausted) -> Vec<DeadLetter> {
    let failure = operators::event::PluginFailure {
        plugin: e.error.plugin.clone(),
        config_id: e.error.config_id.clone(),
        hook: e.error.hook.as_str().to_string(),
        attempts: e.attempts,
        error: format!("{}: {}", e.error.name, e.error.message),
    };
    let reason = e.reason();
    let letter = |raw: String, position: u64| DeadLetter {
        source: format!("plugin:{}", failure.config_id),
        position,
        reason: reason.clone(),
        raw,
        raw_base64: None,
        failure: Some(failure.clone()),
    };
    let position = |i: usize| e.positions.get(i).copied().unwrap_or(0);
    match (e.error.hook, serde_json::from_str::<serde_json::Value>(&e.payload)) {
        (operators::plugin::Hook::ExportEvents, Ok(serde_json::Value::Array(events))) => {
            events.iter().enumerate().map(|(i, ev)| letter(ev.to_string(), position(i))).collect()
        }
        _ => vec![letter(e.payload, position(0))],
    }
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

fn keep_first_error(slot: &Rc<RefCell<Option<anyhow::Error>>>, result: anyhow::Result<()>) {
    if let Err(e) = result {
        slot.borrow_mut().get_or_insert(e);
    }
}

fn check_failed(slot: &Rc<RefCell<Option<anyhow::Error>>>) -> anyhow::Result<()> {
    match slot.borrow_mut().take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn dead_letter_record(d: &DeadLetter) -> OutRecord {
    let mut headers = vec![("reason", d.reason.clone()), ("source", d.source.clone()), ("position", d.position.to_string())];
    if let Some(f) = &d.failure {
        headers.extend([
            ("plugin", f.plugin.clone()),
            ("plugin_config_id", f.config_id.clone()),
            ("hook", f.hook.clone()),
            ("attempts", f.attempts.to_string()),
            ("error", f.error.clone()),
        ]);
    }
    OutRecord { value: d.to_json().to_string(), headers }
}

fn write_dead_letters<'s>(
    letters: timely::dataflow::Stream<'s, u64, Vec<DeadLetter>>,
    sink: &crate::io::SharedSink,
    stats: &Arc<Stats>,
    failed: &Rc<RefCell<Option<anyhow::Error>>>,
) -> timely::dataflow::Stream<'s, u64, Vec<DeadLetter>> {
    let (sink, stats, fail) = (sink.clone(), stats.clone(), failed.clone());
    letters.inspect_core(move |batch: Result<(_, &Vec<DeadLetter>), _>| {
        if let Ok((stamp, letters)) = batch {
            let records: Vec<OutRecord> = letters.iter().map(dead_letter_record).collect();
            keep_first_error(&fail, sink.borrow_mut().write(stamp.least().copied().unwrap_or_default(), &records));
            stats.add_dead(letters.len() as u64);
        }
    })
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

/// A dead letter of `onEvent`/`exportEvents` work, on its way back to the worker that read its
/// event.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct ReturnedLetter {
    reader: u32,
    letter: DeadLetter,
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
fn flush_data(events: &crate::io::SharedSink, dead_letters: &crate::io::SharedSink) -> anyhow::Result<()> {
    events.borrow_mut().flush()?;
    dead_letters.borrow_mut().flush()
}

fn flush_shared(out: &crate::io::SharedWriter) -> anyhow::Result<()> {
    lock(out).flush().context("cannot flush output")
}

/// Reads one worker's share of a log: lines starting in `[start, end)` of the file's bytes.
/// Positions reported for dead letters are byte offsets of the line. A followed log (`[input]
/// follow`, one worker) has no end: at the end of the file it waits for more, and reads a line
/// only once its newline is there.
pub struct SliceReader {
    reader: BufReader<File>,
    /// Where the share's first line starts.
    start: u64,
    pos: u64,
    end: u64,
    /// Following: the file as opened (to tell it was truncated or replaced) and the bytes of a
    /// line whose newline has not been written yet.
    follow: Option<Followed>,
}

struct Followed {
    path: std::path::PathBuf,
    file: (u64, u64),
    unfinished: Vec<u8>,
    /// The longest the file was seen: shorter later means truncated (even if regrown since).
    longest: u64,
    /// The most a line may hold before it is passed on in pieces (`runtime.max_event_bytes`
    /// and a line break): each piece is dead-lettered, memory stays bounded.
    max_line: usize,
    /// A failure found after lines of the same batch were read: reported on the next call.
    failed: Option<std::io::Error>,
}

impl SliceReader {
    /// The share of worker `index` of `peers`.
    pub fn open(path: &Path, index: usize, peers: usize) -> std::io::Result<Self> {
        let len = std::fs::metadata(path)?.len();
        let start = len * index as u64 / peers as u64;
        let end = len * (index as u64 + 1) / peers as u64;
        let mut reader = BufReader::with_capacity(1 << 20, File::open(path)?);
        let mut pos = start;
        if start > 0 {
            // The line holding byte start-1 belongs to the previous worker.
            reader.seek(SeekFrom::Start(start - 1))?;
            let mut skipped = Vec::new();
            pos = start - 1 + reader.read_until(b'\n', &mut skipped)? as u64;
        }
        Ok(Self { reader, start: pos, pos, end, follow: None })
    }

    /// Reads on past the share's end as the log grows (a followed log, read by one worker);
    /// lines longer than `max_line` are passed on in pieces of that size.
    pub fn follow(&mut self, path: &Path, max_line: usize) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt as _;
        let opened = self.reader.get_ref().metadata()?;
        self.end = u64::MAX;
        self.follow = Some(Followed {
            path: path.to_path_buf(),
            file: (opened.dev(), opened.ino()),
            unfinished: Vec::new(),
            longest: opened.len(),
            max_line,
            failed: None,
        });
        Ok(())
    }

    /// Continues from `position` (a line start recorded by a checkpoint), which must lie in
    /// this share.
    pub fn resume_at(&mut self, position: u64) -> std::io::Result<()> {
        if position < self.start {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("position {position} is before this worker's share, which starts at {}", self.start),
            ));
        }
        self.reader.seek(SeekFrom::Start(position))?;
        self.pos = position;
        Ok(())
    }

    /// The byte offset of the next line to read.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Bytes of a followed log's last line read so far, its newline not written yet.
    pub fn unfinished(&self) -> usize {
        self.follow.as_ref().map_or(0, |f| f.unfinished.len())
    }

    /// Up to `max` lines (blank lines skipped and counted), the bytes they took, and whether
    /// this share of the log is read to its end. A followed share is never read to its end: at
    /// the end of the file the batch is `caught_up`; a file that shrank or was replaced is an
    /// error (what was read stays read; nothing after it is).
    pub fn next_batch(&mut self, max: usize) -> std::io::Result<SliceBatch> {
        if let Some(e) = self.follow.as_mut().and_then(|f| f.failed.take()) {
            return Err(e);
        }
        let mut batch = SliceBatch { records: Vec::with_capacity(max.min(4096)), ..SliceBatch::default() };
        let max_line = self.follow.as_ref().map_or(usize::MAX, |f| f.max_line);
        while batch.records.len() < max {
            if self.pos >= self.end {
                batch.done = true;
                break;
            }
            let mut line = self.follow.as_mut().map(|f| std::mem::take(&mut f.unfinished)).unwrap_or_default();
            let n = read_line(&mut self.reader, &mut line, max_line)?;
            if let Some(f) = self.follow.as_mut().filter(|_| !line.ends_with(b"\n") && line.len() < max_line) {
                f.unfinished = line;
                if n == 0
                    && let Err(e) = f.check(self.pos)
                {
                    // What this batch read goes on; the failure is the next call's answer.
                    if batch.records.is_empty() && batch.bytes == 0 {
                        return Err(e);
                    }
                    f.failed = Some(e);
                }
                batch.caught_up = true;
                break;
            }
            if n == 0 {
                batch.done = true;
                break;
            }
            let at = self.pos;
            self.pos += line.len() as u64;
            batch.bytes += line.len() as u64;
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                batch.blank += 1;
                continue;
            }
            batch.records.push((at, line));
        }
        Ok(batch)
    }
}

impl Followed {
    /// At the end of the file: it must still be the file opened, never shorter than it was seen
    /// (a truncation regrown since is one too), at least as long as what was read of it.
    fn check(&mut self, pos: u64) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt as _;
        let now = std::fs::metadata(&self.path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{} cannot be followed: {e}", self.path.display())))?;
        let read = pos + self.unfinished.len() as u64;
        if (now.dev(), now.ino()) != self.file {
            return Err(std::io::Error::other(format!(
                "{} was replaced while followed (rotated?): {read} bytes of the file opened were read; lines written to it after that, and the new file, are not",
                self.path.display()
            )));
        }
        let longest = self.longest.max(read);
        if now.len() < longest {
            return Err(std::io::Error::other(format!(
                "{} shrank to {} bytes while followed (it had {longest}; truncated?): {read} bytes had been read; nothing written after the truncation is",
                self.path.display(),
                now.len()
            )));
        }
        self.longest = now.len();
        Ok(())
    }
}

/// Appends one line, newline included when there is one, to `line`, but no more than until
/// `line` holds `max_line` bytes; returns the bytes read. A line that lies in the reader's buffer
/// is copied in one allocation of its size.
fn read_line(reader: &mut BufReader<File>, line: &mut Vec<u8>, max_line: usize) -> std::io::Result<usize> {
    let mut read = 0;
    loop {
        let room = max_line.saturating_sub(line.len());
        let buf = reader.fill_buf()?;
        if buf.is_empty() || room == 0 {
            return Ok(read);
        }
        let (take, ends) = match memchr::memchr(b'\n', buf) {
            Some(i) if i < room => (i + 1, true),
            _ => (buf.len().min(room), false),
        };
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        read += take;
        if ends {
            return Ok(read);
        }
    }
}

/// What [`SliceReader::next_batch`] read.
#[derive(Debug, Default)]
pub struct SliceBatch {
    /// Lines as (byte offset, bytes).
    pub records: Vec<(u64, Vec<u8>)>,
    /// Bytes read, blank lines included.
    pub bytes: u64,
    /// Lines holding only whitespace, skipped.
    pub blank: u64,
    /// The share is read to its end.
    pub done: bool,
    /// A followed share is at the end of the file for now.
    pub caught_up: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_blank_lines_longer_than_a_batch_does_not_end_the_log() {
        // A batch of nothing but blank lines once read as the end of the input: the events
        // after it were never read, and nothing said so.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        std::fs::write(&path, format!("{{\"n\":1}}\n{}{{\"n\":2}}\n  \n", "\n".repeat(25))).unwrap();
        let mut r = SliceReader::open(&path, 0, 1).unwrap();
        let (mut lines, mut blank) = (0, 0);
        loop {
            let batch = r.next_batch(10).unwrap();
            lines += batch.records.len();
            blank += batch.blank;
            if batch.done {
                break;
            }
        }
        assert_eq!((lines, blank), (2, 26));
    }

    #[test]
    fn slices_cover_every_line_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let lines: Vec<String> = (0..97).map(|i| format!("{{\"n\":{i}{}}}", " ".repeat(i % 7))).collect();
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        for peers in 1..6 {
            let mut seen = Vec::new();
            for index in 0..peers {
                let mut r = SliceReader::open(&path, index, peers).unwrap();
                loop {
                    let batch = r.next_batch(10).unwrap();
                    seen.extend(batch.records.into_iter().map(|(_, l)| String::from_utf8(l).unwrap().trim_end().to_string()));
                    if batch.done {
                        break;
                    }
                }
            }
            seen.sort();
            let mut want = lines.clone();
            want.sort();
            assert_eq!(seen, want, "peers = {peers}");
        }
    }
}
