//! A worker's background plugin work: `setupPlugin` retries, scheduled tasks with one owner,
//! jobs from the durable queue.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::plugin;
use operators::plugin::deferred::RetryPolicy;
use operators::plugin::worker::{JOB_QUEUE, MAX_PENDING_JOBS, Outcome, PluginNotice, PluginSpec, WorkerPlace, WorkerPlugins};
use operators::plugin::{Hook, HostServices, Limits, MemoryLogSink, PluginDefinition};
use state::{ManualClock, MemoryStore, StateStore};

fn spec(fixture: &common::Fixture, id: &str, teams: Vec<i64>) -> PluginSpec {
    PluginSpec {
        id: id.into(),
        def: PluginDefinition::load(&fixture.path()).unwrap(),
        teams: Some(teams),
        config: Default::default(),
        attachments: Default::default(),
        order: 0,
    }
}

fn worker(specs: Vec<PluginSpec>, store: Arc<MemoryStore>, logs: Arc<MemoryLogSink>, place: WorkerPlace) -> WorkerPlugins {
    let services = HostServices::new(store, None, logs, Duration::from_secs(5));
    WorkerPlugins::new(Limits::default(), Arc::new(specs), services).unwrap().with_place(place)
}

fn fast(ms: u64) -> RetryPolicy {
    RetryPolicy { base: Duration::from_millis(ms), ..RetryPolicy::setup() }
}

/// Moves `clock` forward a millisecond at a time for `ms`, doing the worker's background work
/// at each step: time passes for the worker only, and exactly as far as told.
fn advance(w: &mut WorkerPlugins, clock: &ManualClock, ms: u64) {
    for _ in 0..ms {
        clock.advance_ms(1);
        w.maintain();
    }
}

#[test]
fn setup_retry_error_is_retried_then_succeeds() {
    let fx = plugin(
        "slowstart",
        &[(
            "index.js",
            "const { RetryError } = require('@posthog/plugin-scaffold')\n\
             exports.setupPlugin = async ({ cache, global }) => { const n = await cache.incr('setup'); if (n < 3) throw new RetryError('warming up ' + n); global.ready = n }\n\
             exports.processEvent = (e, { global }) => { e.properties.ready = global.ready || null; return e }",
        )],
    );
    let logs = Arc::new(MemoryLogSink::default());
    let clock = Arc::new(ManualClock::new(0));
    let place = WorkerPlace { clock: clock.clone(), setup_policy: fast(30), ..WorkerPlace::default() };
    let mut w = worker(vec![spec(&fx, "s", vec![1])], Arc::new(MemoryStore::new()), logs.clone(), place);
    w.preload();
    let event = r#"{"uuid":"u","event":"e","team_id":1,"properties":{}}"#;
    // Methods run while setup is being retried, as in PostHog.
    let ready = |w: &mut WorkerPlugins| w.process(1, "e", "u", event, 0).unwrap().event.unwrap();
    assert!(ready(&mut w).contains(r#""ready":null"#));
    // The first retry is due 30 ms after the first attempt, the second 60 ms after that.
    advance(&mut w, &clock, 29);
    assert!(ready(&mut w).contains(r#""ready":null"#), "not retried before it is due");
    advance(&mut w, &clock, 1 + 59);
    assert!(ready(&mut w).contains(r#""ready":null"#), "the second retry is not due yet");
    advance(&mut w, &clock, 1);
    assert!(ready(&mut w).contains(r#""ready":3"#));
    let messages: Vec<String> = logs.entries().into_iter().map(|e| e.message).collect();
    assert!(messages.iter().any(|m| m.contains("(attempt 1/6). Retrying in 30 ms")), "{messages:?}");
    assert!(messages.iter().any(|m| m.contains("(attempt 2/6). Retrying in 60 ms")), "{messages:?}");
    assert!(messages.iter().any(|m| m == "setupPlugin succeeded."), "{messages:?}");
}

#[test]
fn setup_that_keeps_failing_disables_the_plugin_after_six_attempts() {
    let fx = plugin(
        "never",
        &[(
            "index.js",
            "const { RetryError } = require('@posthog/plugin-scaffold')\nexports.setupPlugin = async ({ cache }) => { await cache.incr('setup'); throw new RetryError('down') }\nexports.processEvent = (e) => { e.properties.touched = true; return e }",
        )],
    );
    let store = Arc::new(MemoryStore::new());
    let logs = Arc::new(MemoryLogSink::default());
    let clock = Arc::new(ManualClock::new(0));
    let place = WorkerPlace { clock: clock.clone(), setup_policy: fast(5), ..WorkerPlace::default() };
    let mut w = worker(vec![spec(&fx, "n", vec![1])], store.clone(), logs.clone(), place);
    w.preload();
    // Waits of 5, 10, 20, 40 and 80 ms: the sixth attempt is 155 ms after the first.
    advance(&mut w, &clock, 154);
    assert!(!logs.entries().iter().any(|e| e.message.contains("Disabled the app!")), "not before the last attempt");
    advance(&mut w, &clock, 1);
    let scope = PluginDefinition::load(&fx.path()).unwrap().cache_scope(Some(1));
    assert_eq!(store.cache_get(&scope, "setup").unwrap().as_deref(), Some("6"), "1 attempt + 5 retries");
    assert!(logs.entries().iter().any(|e| e.message.contains("Disabled the app!")));
    let out = w.process(1, "e", "u", r#"{"uuid":"u","event":"e","team_id":1,"properties":{}}"#, 0).unwrap();
    assert!(!out.event.unwrap().contains("touched"), "a disabled plugin is skipped");
}

#[test]
fn a_plain_setup_error_disables_at_once() {
    let fx = plugin("bad", &[("index.js", "exports.setupPlugin = () => { throw new Error('no key') }\nexports.processEvent = (e) => e")]);
    let logs = Arc::new(MemoryLogSink::default());
    let mut w = worker(vec![spec(&fx, "b", vec![1])], Arc::new(MemoryStore::new()), logs.clone(), WorkerPlace::default());
    w.preload();
    assert!(!w.team_has(1, Hook::ProcessEvent));
    assert!(logs.entries().iter().any(|e| e.message.contains("setupPlugin failed with Error: no key (attempt 1). Disabled the app!")));
}

const TICKER: &str = "exports.runEveryMinute = async ({ cache }) => { await cache.incr('minute') }\nexports.runEveryHour = async ({ cache }) => { await cache.incr('hour') }";

#[test]
fn each_scheduled_task_has_exactly_one_owner_among_workers() {
    let fx = plugin("ticker", &[("index.js", TICKER)]);
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(30_000));
    let specs = || vec![spec(&fx, "t", vec![1, 2, 3, 4, 5, 6])];
    let mut workers: Vec<WorkerPlugins> = (0..2)
        .map(|index| {
            let place = WorkerPlace { index, peers: 2, clock: clock.clone(), ..WorkerPlace::default() };
            let mut w = worker(specs(), store.clone(), Arc::new(MemoryLogSink::default()), place);
            w.preload();
            w
        })
        .collect();
    for _ in 0..5 {
        clock.advance_ms(60_000);
        for w in &mut workers {
            w.maintain();
        }
    }
    for team in 1..=6 {
        let scope = PluginDefinition::load(&fx.path()).unwrap().cache_scope(Some(team));
        assert_eq!(store.cache_get(&scope, "minute").unwrap().as_deref(), Some("5"), "team {team}: one run per minute, cluster-wide");
        assert_eq!(store.cache_get(&scope, "hour").unwrap(), None, "no hour has passed");
    }
    let owned: Vec<usize> = workers
        .iter_mut()
        .map(|w| {
            w.take_notices()
                .iter()
                .map(|n| match n {
                    PluginNotice::Metric(m) if m.hook == Hook::RunEveryMinute && m.outcome == Outcome::Succeeded => m.count as usize,
                    _ => 0,
                })
                .sum::<usize>()
        })
        .collect();
    assert!(owned.iter().all(|n| *n > 0), "both workers own some configurations: {owned:?}");
    assert_eq!(owned.iter().sum::<usize>(), 30);
}

#[test]
fn missed_ticks_are_not_back_filled() {
    let fx = plugin("ticker", &[("index.js", TICKER)]);
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(0));
    let place = WorkerPlace { clock: clock.clone(), ..WorkerPlace::default() };
    let mut w = worker(vec![spec(&fx, "t", vec![1])], store.clone(), Arc::new(MemoryLogSink::default()), place);
    w.preload();
    w.maintain();
    clock.advance_ms(7 * 60_000 + 5_000);
    w.maintain();
    w.maintain();
    let scope = PluginDefinition::load(&fx.path()).unwrap().cache_scope(Some(1));
    assert_eq!(store.cache_get(&scope, "minute").unwrap().as_deref(), Some("1"), "seven missed minutes run once");
}

#[test]
fn jobs_run_when_due_and_retry_like_on_event() {
    let fx = plugin(
        "jobs",
        &[(
            "index.js",
            "const { RetryError } = require('@posthog/plugin-scaffold')\n\
             exports.jobs = {\n\
               hello: async (payload, { cache }) => { await cache.lpush('ran', 'hello ' + payload.n) },\n\
               flaky: async (payload, { cache }) => { const n = await cache.incr('flaky'); if (n < 3) throw new RetryError('again'); await cache.lpush('ran', 'flaky ' + n) },\n\
               bare: async (meta) => { await meta.cache.lpush('ran', 'bare ' + typeof meta.cache) },\n\
             }\n\
             exports.processEvent = async (e, { jobs }) => {\n\
               await jobs.hello({ n: 1 }).runNow()\n\
               await jobs.hello({ n: 2 }).runIn(250, 'milliseconds')\n\
               await jobs.flaky({}).runNow()\n\
               await jobs.bare().runNow()\n\
               return e\n\
             }",
        )],
    );
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(1_000_000));
    let place = WorkerPlace { clock: clock.clone(), job_policy: fast(20), ..WorkerPlace::default() };
    let mut w = worker(vec![spec(&fx, "j", vec![1])], store.clone(), Arc::new(MemoryLogSink::default()), place);
    w.process(1, "e", "u", r#"{"uuid":"u","event":"e","team_id":1,"properties":{}}"#, 0).unwrap();
    assert_eq!(store.queue_len(JOB_QUEUE).unwrap(), 4, "jobs are in the durable queue");
    let scope = PluginDefinition::load(&fx.path()).unwrap().cache_scope(Some(1));
    let ran = |s: &MemoryStore| {
        let mut all = s.cache_lrange(&scope, "ran", 0, -1).unwrap();
        all.sort();
        all
    };
    w.maintain();
    assert_eq!(ran(&store), ["bare object", "hello 1"], "the jobs due now; flaky failed once");
    // flaky's retries are due 20 ms and then 40 ms later (it succeeds on its third run).
    advance(&mut w, &clock, 59);
    assert_eq!(ran(&store), ["bare object", "hello 1"]);
    advance(&mut w, &clock, 1);
    assert_eq!(ran(&store), ["bare object", "flaky 3", "hello 1"]);
    // hello 2 was asked for 250 ms after the event.
    advance(&mut w, &clock, 189);
    assert_eq!(store.queue_len(JOB_QUEUE).unwrap(), 1, "hello 2 waits");
    advance(&mut w, &clock, 1);
    assert_eq!(ran(&store), ["bare object", "flaky 3", "hello 1", "hello 2"]);
    assert_eq!(store.queue_len(JOB_QUEUE).unwrap(), 0);
}

#[test]
fn jobs_that_cannot_run_are_given_up_not_dropped() {
    // An unreadable job, one without its configuration, and one for a configuration that is not
    // configured any more: each comes back as a failure (for the dead-letter output), and the
    // queue is left empty.
    // And one whose attempt count is at the end of its range (a damaged entry): given up, not
    // wrapped round to a first attempt and retried for ever.
    let fx = plugin("jobs", &[("index.js", "exports.jobs = { x: () => {}, r: () => { throw new RetryError('later') } }")]);
    let store = Arc::new(MemoryStore::new());
    for payload in [
        &b"{not json"[..],
        br#"{"team":1,"name":"x"}"#,
        br#"{"config_id":"gone","team":1,"name":"x","payload":"null","attempts":0}"#,
        br#"{"config_id":"j","team":1,"name":"r","payload":"null","attempts":4294967295}"#,
        // Names of the jobs object's prototype are no jobs of the plugin.
        br#"{"config_id":"j","team":1,"name":"constructor","payload":"null","attempts":0}"#,
        br#"{"config_id":"j","team":1,"name":"hasOwnProperty","payload":"null","attempts":0}"#,
    ] {
        store.queue_put(JOB_QUEUE, 0, payload).unwrap();
    }
    let mut w = worker(vec![spec(&fx, "j", vec![1])], store.clone(), Arc::new(MemoryLogSink::default()), WorkerPlace::default());
    let gave_up = w.maintain();
    let names: Vec<&str> = gave_up.iter().map(|e| e.error.name.as_str()).collect();
    assert_eq!(names, ["UnreadableJob", "UnreadableJob", "Unavailable", "RetryError", "Error", "Error"], "{gave_up:?}");
    assert!(gave_up[4].error.message.contains("Task \"constructor\" not found"), "{:?}", gave_up[4].error);
    assert_eq!(gave_up[2].error.config_id, "gone");
    assert_eq!(gave_up[3].attempts, u32::MAX);
    // Each stays in the queue until its dead letter, written at this epoch, is settled.
    assert_eq!((w.unsettled(), store.queue_len(JOB_QUEUE).unwrap()), (6, 6));
    w.settled_below(1);
    assert_eq!(store.queue_len(JOB_QUEUE).unwrap(), 0, "nothing is left taken or pending");
}

/// Two workers of one process share the job queue: a job runs on its team's owner, where the
/// team's instance is, whichever worker looks at the queue first.
#[test]
fn a_job_runs_on_its_teams_owner_worker() {
    use operators::plugin::placement::{Placement, team_owner};
    let fx = plugin(
        "jobs",
        &[(
            "index.js",
            "exports.setupPlugin = ({ global }) => { global.id = String(Math.random()) }\n\
             exports.jobs = { note: async (payload, { cache, global }) => { await cache.lpush('ran', [global.id]) } }\n\
             exports.processEvent = async (e, { jobs, global }) => { await jobs.note({}).runNow(); e.properties.id = global.id; return e }",
        )],
    );
    let store = Arc::new(MemoryStore::new());
    let placement = Arc::new(Placement::new([None], 2, []));
    // A team owned by worker 1.
    let team = (1..100).find(|t| team_owner(*t, 2) == 1).unwrap();
    let mut workers: Vec<WorkerPlugins> = (0..2)
        .map(|index| {
            let place = WorkerPlace { index, peers: 2, placement: Some(placement.clone()), local: 0..2, ..WorkerPlace::default() };
            worker(vec![spec(&fx, "j", vec![team])], store.clone(), Arc::new(MemoryLogSink::default()), place)
        })
        .collect();
    // The owner handles the event (as the exchange would have it) and queues the job.
    let json = format!(r#"{{"uuid":"u","event":"e","team_id":{team},"properties":{{}}}}"#);
    let out = workers[1].process(team, "e", "u", &json, 0).unwrap().event.unwrap();
    let id = serde_json::from_str::<serde_json::Value>(&out).unwrap()["properties"]["id"].as_str().unwrap().to_owned();
    // Worker 0 looks first: it hands the job back; the owner runs it with its instance.
    workers[0].maintain();
    assert_eq!(store.queue_len(JOB_QUEUE).unwrap(), 1, "worker 0 did not run the job");
    workers[1].maintain();
    assert_eq!(store.queue_len(JOB_QUEUE).unwrap(), 0);
    let scope = PluginDefinition::load(&fx.path()).unwrap().cache_scope(Some(team));
    assert_eq!(store.cache_lrange(&scope, "ran", 0, -1).unwrap(), [id], "run by the instance that queued it");
    assert_eq!(workers[0].instance_count(), 0, "worker 0 made no instance of the team");
}

/// Retries an earlier run left are taken out once for the process; each worker picks those of the
/// teams it owns (and the first worker the unreadable ones), so a retry runs on its team's one
/// instance.
#[test]
fn recovered_retries_go_to_their_teams_owner() {
    use operators::plugin::deferred::{DeferredWork, RETRY_QUEUE, RetryPolicies, recovery_pool};
    use operators::plugin::placement::{Placement, team_owner};
    use std::cell::RefCell;
    use std::rc::Rc;
    let fx = plugin("on", &[("index.js", "exports.onEvent = () => {}")]);
    let store = Arc::new(MemoryStore::new());
    let owned_by = |w: usize| (1..200).find(|t| team_owner(*t, 2) == w).unwrap();
    let (team0, team1) = (owned_by(0), owned_by(1));
    for team in [team0, team1, team1] {
        let retry = format!(r#"{{"config_id":"o","team":{team},"hook":"onEvent","attempts":1,"events":["{{}}"],"positions":[7]}}"#);
        store.queue_put(RETRY_QUEUE, 0, retry.as_bytes()).unwrap();
    }
    store.queue_put(RETRY_QUEUE, 0, b"{not json").unwrap();
    // Readable, but no onEvent/exportEvents call: a job's entry, an onEvent entry with two events.
    let job = format!(r#"{{"config_id":"o","team":{team0},"hook":"job","name":"x","payload":"null"}}"#);
    let two = format!(r#"{{"config_id":"o","team":{team0},"hook":"onEvent","attempts":1,"events":["{{}}","{{}}"]}}"#);
    for entry in [job, two] {
        store.queue_put(RETRY_QUEUE, 0, entry.as_bytes()).unwrap();
    }
    let pool = recovery_pool(&*store).unwrap();
    let placement = Arc::new(Placement::new([None], 2, []));
    // Per worker: the teams of the retries it took, and (configuration, message) of the entries
    // it dead-lettered.
    type Picked = (Vec<i64>, Vec<(String, String)>);
    let picked: Vec<Picked> = (0..2)
        .rev() // the second worker looks first
        .map(|index| {
            let place = WorkerPlace { index, peers: 2, placement: Some(placement.clone()), local: 0..2, ..WorkerPlace::default() };
            let w = worker(vec![spec(&fx, "o", vec![team0, team1])], store.clone(), Arc::new(MemoryLogSink::default()), place);
            let mut work = DeferredWork::new(Rc::new(RefCell::new(w)), RetryPolicies::default(), store.clone()).with_recovery(pool.clone());
            let (tasks, unreadable) = work.recover(0);
            (tasks.iter().map(|(_, t)| t.team).collect(), unreadable.into_iter().map(|e| (e.error.config_id, e.error.message)).collect())
        })
        .collect();
    assert_eq!(picked[0], (vec![team1, team1], vec![]), "worker 1 picks its team's two");
    let (teams, unreadable) = &picked[1];
    assert_eq!(teams, &vec![team0], "worker 0 picks its team's");
    // …and the three that are no retry it can run, dead-lettered, named as far as they read.
    let mut unreadable = unreadable.clone();
    unreadable.sort();
    assert_eq!(
        unreadable,
        [
            ("?".to_string(), "a pending retry in the state store cannot be read".to_string()),
            (
                "o".to_string(),
                "a pending retry in the state store is not a whole onEvent or exportEvents call (hook \"job\", 0 events)".to_string()
            ),
            (
                "o".to_string(),
                "a pending retry in the state store is not a whole onEvent or exportEvents call (hook \"onEvent\", 2 events)".to_string()
            ),
        ]
    );
    assert!(pool.lock().unwrap().is_empty());
}

/// A configuration removed while running is not made again by what still names it (a job, a
/// retry): the job is dead-lettered, and no scheduled task of it runs.
#[test]
fn a_removed_configuration_is_not_made_again() {
    use operators::plugin::worker::ConfigChange;
    let fx = plugin(
        "gone",
        &[(
            "index.js",
            "exports.setupPlugin = () => { console.log('setup') }\n\
             exports.runEveryMinute = () => { console.log('minute') }\n\
             exports.jobs = { later: () => { console.log('job') } }\n\
             exports.processEvent = async (e, { jobs }) => { await jobs.later({}).runNow(); return e }",
        )],
    );
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(30_000));
    let logs = Arc::new(MemoryLogSink::default());
    let place = WorkerPlace { clock: clock.clone(), ..WorkerPlace::default() };
    let mut w = worker(vec![spec(&fx, "g", vec![1])], store.clone(), logs.clone(), place);
    w.process(1, "e", "u", r#"{"uuid":"u","event":"e","team_id":1,"properties":{}}"#, 0).unwrap();
    w.apply_config(ConfigChange::Remove("g".into()), 2);
    clock.advance_ms(120_000);
    let gave_up = w.maintain();
    assert_eq!(gave_up.iter().map(|e| e.error.name.as_str()).collect::<Vec<_>>(), ["Unavailable"], "the job is a dead letter");
    let said: Vec<String> =
        logs.entries().into_iter().map(|e| e.message).filter(|m| ["setup", "minute", "job"].contains(&m.as_str())).collect();
    assert_eq!(said, ["setup"], "set up once, before the removal; no job, no minute after it");
    assert_eq!(w.instance_count(), 0);
}

/// A job handed back to an owner that no longer runs its loop (its share of the input ended)
/// runs where it is instead of waiting for ever.
#[test]
fn a_job_whose_owner_has_stopped_runs_here() {
    use operators::plugin::placement::{Placement, team_owner};
    use std::sync::atomic::AtomicBool;
    let fx = plugin("jobs", &[("index.js", "exports.jobs = { note: async (p, { cache }) => { await cache.incr('ran') } }")]);
    let store = Arc::new(MemoryStore::new());
    let team = (1..100).find(|t| team_owner(*t, 2) == 1).unwrap();
    let running = Arc::new(vec![AtomicBool::new(true), AtomicBool::new(false)]);
    let place = WorkerPlace {
        index: 0,
        peers: 2,
        placement: Some(Arc::new(Placement::new([None], 2, []))),
        local: 0..2,
        running: Some(running),
        ..WorkerPlace::default()
    };
    let mut w = worker(vec![spec(&fx, "j", vec![team])], store.clone(), Arc::new(MemoryLogSink::default()), place);
    let job = format!(r#"{{"config_id":"j","team":{team},"name":"note","payload":"{{}}","attempts":0,"hops":0}}"#);
    store.queue_put(JOB_QUEUE, 0, job.as_bytes()).unwrap();
    w.maintain();
    assert_eq!(store.queue_len(JOB_QUEUE).unwrap(), 0, "run by worker 0: its owner, worker 1, has stopped");
    let scope = PluginDefinition::load(&fx.path()).unwrap().cache_scope(Some(team));
    assert_eq!(store.cache_get(&scope, "ran").unwrap().as_deref(), Some("1"));
}

/// A job that enqueues a hundred more of itself grows the queue geometrically. A round runs a
/// bounded page of due jobs (so the worker loop, and a shutdown, get their turn between pages),
/// and past `MAX_PENDING_JOBS` pending ones `runNow` rejects (counted as a refusal, said in the
/// plugin's log); jobs keep running a page per round.
#[test]
fn jobs_that_enqueue_jobs_stay_bounded() {
    let fx = plugin(
        "boom",
        &[(
            "index.js",
            "exports.jobs = { boom: async (p, { jobs, cache }) => { await cache.incr('ran'); \
               for (let i = 0; i < 100; i++) await jobs.boom({}).runNow() } }\n\
             exports.processEvent = async (e, { jobs }) => { await jobs.boom({}).runNow(); return e }",
        )],
    );
    let store = Arc::new(MemoryStore::new());
    let logs = Arc::new(MemoryLogSink::default());
    let mut w = worker(vec![spec(&fx, "b", vec![1])], store.clone(), logs.clone(), WorkerPlace::default());
    w.process(1, "e", "u", r#"{"uuid":"u","event":"e","team_id":1,"properties":{}}"#, 0).unwrap();
    let scope = PluginDefinition::load(&fx.path()).unwrap().cache_scope(Some(1));
    let ran = |s: &MemoryStore| s.cache_get(&scope, "ran").unwrap().map_or(0, |v| v.parse::<usize>().unwrap());
    let mut most = 0;
    let mut refused_calls = 0;
    for round in 1..=40 {
        let gave_up = w.maintain();
        // The worker loop writes the round's dead letters and settles them.
        w.settled_below(u64::MAX);
        // A job whose enqueue was refused fails (the promise rejected): a dead letter.
        refused_calls += gave_up.iter().filter(|e| e.error.message.contains("pending already")).count();
        let queued = store.queue_len(JOB_QUEUE).unwrap() as usize;
        most = most.max(queued);
        assert!(ran(&store) <= round * 256, "round {round} ran more than a page of jobs: {}", ran(&store));
        assert!(queued <= MAX_PENDING_JOBS, "round {round}: {queued} jobs queued");
    }
    assert!(most > MAX_PENDING_JOBS - 100, "the cap was never reached ({most}): the test shows nothing");
    // The plugin hears of it: runNow() rejects, so the job fails (and is dead-lettered), and the
    // refusals are counted with the other limits' refusals.
    assert!(refused_calls > 0, "no job call saw its enqueue refused");
    let refused: u64 = w
        .take_notices()
        .into_iter()
        .filter_map(|n| match n {
            PluginNotice::Refused { what: "job", count, .. } => Some(count),
            _ => None,
        })
        .sum();
    assert!(refused >= refused_calls as u64, "refusals counted: {refused} for {refused_calls} failed calls");
    assert!(logs.entries().iter().any(|e| e.message.contains("pending already")), "and said in the plugin's log");
    // The first two rounds find 1 and 100 jobs due; every later one a full page.
    assert_eq!(ran(&store), 1 + 100 + 38 * 256, "jobs kept running a page per round");
}

/// A job that captured events stays in the queue (taken) until the outputs of the epoch its
/// captures went into are settled: a crash before that runs it again on restart (a new store on
/// the same RocksDB folder takes it again), a rewind that dropped those outputs hands it back
/// at once. A job that captured nothing is acknowledged at once.
#[test]
fn a_job_that_captured_is_acknowledged_only_once_its_captures_are_settled() {
    let fx = plugin(
        "jobs",
        &[(
            "index.js",
            "exports.jobs = {\n\
               tell: async (p, { cache }) => { await cache.incr('told'); await posthog.capture('told', { n: p.n, distinct_id: 'd' }) },\n\
               quiet: async (p, { cache }) => { await cache.incr('quiet') },\n\
             }",
        )],
    );
    let dir = tempfile::tempdir().unwrap();
    let open = || Arc::new(state::RocksStore::open(dir.path()).unwrap());
    let job = |name: &str| format!(r#"{{"config_id":"j","team":1,"name":"{name}","payload":"{{\"n\":7}}","attempts":0}}"#);
    let run = |store: Arc<state::RocksStore>, epoch: u64| {
        let services = HostServices::new(store, None, Arc::new(MemoryLogSink::default()), Duration::from_secs(5));
        let mut w = WorkerPlugins::new(Limits::default(), Arc::new(vec![spec(&fx, "j", vec![1])]), services).unwrap();
        w.begin_epoch(epoch);
        assert!(w.maintain().is_empty(), "no job fails");
        w
    };
    let store = open();
    store.queue_put(JOB_QUEUE, 0, job("tell").as_bytes()).unwrap();
    store.queue_put(JOB_QUEUE, 0, job("quiet").as_bytes()).unwrap();
    let mut w = run(store.clone(), 5);
    let captured = w.take_loop_captured();
    assert_eq!(captured.len(), 1, "{captured:?}");
    assert_eq!(store.queue_len(operators::plugin::worker::CAPTURE_QUEUE).unwrap(), 0, "held by the job, not journaled");
    assert_eq!((w.unsettled(), store.queue_len(JOB_QUEUE).unwrap()), (1, 1), "quiet is acknowledged, tell waits");
    w.settled_below(5);
    assert_eq!(store.queue_len(JOB_QUEUE).unwrap(), 1, "epoch 5 is not settled yet");

    // A crash now: the next process takes the job again and runs it again.
    drop(w);
    drop(store);
    let store = open();
    let mut w = run(store.clone(), 0);
    assert_eq!(w.take_captured().len(), 1, "run again after the restart");

    // Its captures were dropped by a rewind: handed back, run again, captured again.
    w.dropped_below(1);
    assert_eq!(w.unsettled(), 0);
    w.begin_epoch(3);
    w.maintain();
    assert_eq!(w.take_captured().len(), 1, "run again after the rewind");
    w.settled_below(3);
    assert_eq!(store.queue_len(JOB_QUEUE).unwrap(), 1, "its captures went into epoch 3");
    w.settled_below(4);
    assert_eq!((w.unsettled(), store.queue_len(JOB_QUEUE).unwrap()), (0, 0), "settled: acknowledged");
    let scope = PluginDefinition::load(&fx.path()).unwrap().cache_scope(Some(1));
    assert_eq!(store.cache_get(&scope, "told").unwrap().as_deref(), Some("3"), "ran three times");
    assert_eq!(store.cache_get(&scope, "quiet").unwrap().as_deref(), Some("1"), "ran once");
}

/// A job attempt that captured and failed with a `RetryError`: its retry is written only when
/// its captures settle, so running it again after a rewind (or a crash) does not start a second
/// chain of retries.
#[test]
fn a_capturing_attempts_retry_is_written_when_it_settles() {
    let fx = plugin(
        "jobs",
        &[(
            "index.js",
            "exports.jobs = { flaky: async (p, { cache }) => { await cache.incr('ran'); await posthog.capture('tried', { distinct_id: 'd' }); throw new RetryError('later') } }",
        )],
    );
    let store = Arc::new(MemoryStore::new());
    store.queue_put(JOB_QUEUE, 0, br#"{"config_id":"j","team":1,"name":"flaky","payload":"{}","attempts":0}"#).unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let place = WorkerPlace { clock: clock.clone(), job_policy: fast(1_000), ..WorkerPlace::default() };
    let mut w = worker(vec![spec(&fx, "j", vec![1])], store.clone(), Arc::new(MemoryLogSink::default()), place);
    w.begin_epoch(2);
    let gave_up = w.maintain();
    let scope = PluginDefinition::load(&fx.path()).unwrap().cache_scope(Some(1));
    assert!(gave_up.is_empty(), "{gave_up:?} {:?}", store.cache_get(&scope, "ran"));
    assert_eq!(w.take_captured().len(), 1);
    assert_eq!(store.queue_len(JOB_QUEUE).unwrap(), 1, "no retry written yet");
    // Dropped by a rewind: the same attempt runs again, still one item in the queue.
    w.dropped_below(3);
    w.begin_epoch(4);
    w.maintain();
    assert_eq!(w.take_captured().len(), 1);
    assert_eq!(store.queue_len(JOB_QUEUE).unwrap(), 1, "still no retry: one chain");
    w.settled_below(5);
    let queued = store.queue_take_due(JOB_QUEUE, u64::MAX, 10).unwrap();
    assert_eq!(queued.len(), 1, "the retry replaced the attempt");
    let text = String::from_utf8(queued[0].payload.clone()).unwrap();
    assert!(text.contains(r#""attempts":1"#), "{text}");
    assert!(queued[0].due_ms >= 1_000_000 + 1_000, "due after its wait: {}", queued[0].due_ms);
    assert_eq!(store.cache_get(&scope, "ran").unwrap().as_deref(), Some("2"));
}

/// What a call outside the dataflow's (here `setupPlugin`) captures is journaled before it goes
/// into the graph and acknowledged once the outputs of its epoch settle: a crash before that
/// leaves it in the journal for the next run (a new store on the same RocksDB folder finds it),
/// and a rewind that dropped it sends it in again.
#[test]
fn what_setup_captures_is_journaled_until_its_output_settles() {
    use operators::plugin::worker::CAPTURE_QUEUE;
    let fx =
        plugin("hello", &[("index.js", "exports.setupPlugin = async () => { await posthog.capture('started', { distinct_id: 'd' }) }")]);
    let dir = tempfile::tempdir().unwrap();
    let open = || Arc::new(state::RocksStore::open(dir.path()).unwrap());
    let plugins = |store: Arc<state::RocksStore>| {
        let services = HostServices::new(store, None, Arc::new(MemoryLogSink::default()), Duration::from_secs(5));
        WorkerPlugins::new(Limits::default(), Arc::new(vec![spec(&fx, "h", vec![1])]), services).unwrap()
    };
    let store = open();
    let mut w = plugins(store.clone());
    w.preload();
    w.begin_epoch(3);
    let sent = w.take_loop_captured();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].0.contains("\"started\""), "{sent:?}");
    assert_eq!(store.queue_len(CAPTURE_QUEUE).unwrap(), 1, "journaled before it goes in");
    w.settled_below(3);
    assert_eq!(store.queue_len(CAPTURE_QUEUE).unwrap(), 1, "epoch 3 is not settled yet");

    // Dropped by a rewind: it goes in again with the next captures, the same event.
    w.dropped_below(4);
    assert_eq!(w.captured_pending(), 1);
    w.begin_epoch(5);
    assert_eq!(w.take_loop_captured(), sent);
    assert_eq!(store.queue_len(CAPTURE_QUEUE).unwrap(), 1, "journaled once");

    // A crash now: the next run finds it in the journal and sends it in again.
    drop(w);
    drop(store);
    let store = open();
    let left = store.queue_take_due(CAPTURE_QUEUE, u64::MAX, usize::MAX).unwrap();
    let mut w = plugins(store.clone());
    // A run that ends before sending it in (its loop over) leaves it in the journal.
    w.recover_captures(left.clone());
    assert!(w.take_captured().is_empty(), "not a late dead letter: it stays for the next run");
    w.recover_captures(left);
    w.begin_epoch(0);
    assert_eq!(w.take_loop_captured(), sent, "sent in again after the restart, hops and all");
    w.settled_below(1);
    assert_eq!(store.queue_len(CAPTURE_QUEUE).unwrap(), 0, "settled: acknowledged");
    assert_eq!(w.unsettled(), 0);

    // One made and settled in the same process is acknowledged too.
    w.preload();
    w.begin_epoch(1);
    assert_eq!(w.take_loop_captured().len(), 1);
    assert_eq!(store.queue_len(CAPTURE_QUEUE).unwrap(), 1);
    w.settled_below(2);
    assert_eq!(store.queue_len(CAPTURE_QUEUE).unwrap(), 0, "acknowledged once settled");
}
