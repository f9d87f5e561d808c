//! The `onEvent` / `exportEvents` sink in a real timely dataflow: retries at the documented
//! delays, give-ups after exactly the documented attempts, the frontier held while a retry is
//! owed, export buffers flushed by size, by time and at the end.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::plugin;
use operators::dataflow::chain::Captures;
use operators::dataflow::deferred::{DeferredOutput, RunDeferred};
use operators::plugin::deferred::{DeferredWork, Exhausted, FinalEvent, RetryPolicies, RetryPolicy};
use operators::plugin::worker::{Outcome, PluginNotice, PluginSpec, WorkerPlace, WorkerPlugins};
use operators::plugin::{HostServices, Limits, LogSource, MemoryLogSink, PluginDefinition};
use serde_json::json;
use state::{Clock, ManualClock, MemoryStore, StateStore};
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Input, Inspect, Probe};

const RECORDER: &str = "const { RetryError } = require('@posthog/plugin-scaffold')\n\
    exports.onEvent = (e, { global }) => {\n\
      global.n = global.n || {}\n\
      const n = global.n[e.uuid] = (global.n[e.uuid] || 0) + 1\n\
      console.log(JSON.stringify({ uuid: e.uuid, attempt: n }))\n\
      if (e.uuid.startsWith('flaky') && n <= 2) throw new RetryError('not yet')\n\
      if (e.uuid === 'doomed') throw new RetryError('never')\n\
      if (e.uuid === 'broken') throw new Error('plain failure')\n\
    }";

/// Where the worker's clock starts (ms since the Unix epoch).
const START_MS: u64 = 1_700_000_000_000;

struct Harness {
    logs: Arc<MemoryLogSink>,
    store: Arc<MemoryStore>,
    plugins: Rc<RefCell<WorkerPlugins>>,
    work: Rc<RefCell<DeferredWork>>,
    clock: Arc<ManualClock>,
    _fixture: common::Fixture,
}

fn harness(name: &str, files: &[(&str, &str)], config: serde_json::Value, policies: RetryPolicies) -> Harness {
    let fixture = plugin(name, files);
    let logs = Arc::new(MemoryLogSink::default());
    let store = Arc::new(MemoryStore::new());
    let services = HostServices::new(store.clone(), None, logs.clone(), Duration::from_secs(5));
    let spec = PluginSpec {
        id: "7".into(),
        def: PluginDefinition::load(&fixture.path()).unwrap(),
        teams: Some(vec![1]),
        config: config.as_object().cloned().unwrap_or_default(),
        attachments: Default::default(),
        order: 0,
    };
    let clock = Arc::new(ManualClock::new(START_MS));
    let place = WorkerPlace { clock: clock.clone(), ..WorkerPlace::default() };
    let plugins = WorkerPlugins::new(Limits::default(), Arc::new(vec![spec]), services).unwrap().with_place(place);
    let plugins = Rc::new(RefCell::new(plugins));
    let work = Rc::new(RefCell::new(DeferredWork::new(plugins.clone(), policies, store.clone())));
    Harness { logs, store, plugins, work, clock, _fixture: fixture }
}

fn fast(on_event_ms: u64, export_ms: u64) -> RetryPolicies {
    RetryPolicies {
        on_event: RetryPolicy { base: Duration::from_millis(on_event_ms), ..RetryPolicy::on_event() },
        export_events: RetryPolicy { base: Duration::from_millis(export_ms), ..RetryPolicy::export_events() },
        ..RetryPolicies::default()
    }
}

fn event(uuid: &str) -> String {
    json!({"uuid": uuid, "event": "e", "team_id": 1, "distinct_id": "d", "properties": {"p": uuid}}).to_string()
}

/// What a run saw: the give-ups, when (on the worker's clock) each batch was sent, and every
/// console line of the plugin with the clock time of the step that wrote it.
struct Ran {
    gave_up: Vec<Exhausted>,
    sent_at: Vec<u64>,
    console: Vec<(u64, String)>,
}

impl Ran {
    /// (uuid, attempt, at ms) of every onEvent call.
    fn attempts(&self) -> Vec<(String, u64, u64)> {
        self.console
            .iter()
            .filter_map(|(at, line)| serde_json::from_str::<serde_json::Value>(line).ok().map(|v| (*at, v)))
            .filter(|(_, v)| v.get("attempt").is_some())
            .map(|(at, v)| (v["uuid"].as_str().unwrap().to_string(), v["attempt"].as_u64().unwrap(), at))
            .collect()
    }

    /// The clock times of one event's attempts.
    fn times_of(&self, uuid: &str) -> Vec<u64> {
        self.attempts().into_iter().filter(|a| a.0 == uuid).map(|a| a.2).collect()
    }
}

/// Differences between consecutive times.
fn gaps(times: &[u64]) -> Vec<u64> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

/// Runs the sink over `batches` (one epoch each), then closes the input and runs to the end.
/// `during` is called after every step while the input is open, with the probe's frontier.
fn run(h: &Harness, batches: Vec<Vec<String>>, during: impl FnMut(u64, Option<u64>)) -> Ran {
    run_holding(h, batches, 0, during)
}

/// [`run`], keeping the input open for `hold_ms` after the last batch.
///
/// Time is the worker's manual clock and passes only here: one millisecond per step, after
/// the step (so work sent at time T is handled at T), with the sink woken at every step as a
/// real clock's timer would wake it when something falls due. No sleeps, no wall-clock windows:
/// every time a test asserts is exact.
fn run_holding(h: &Harness, batches: Vec<Vec<String>>, hold_ms: u64, mut during: impl FnMut(u64, Option<u64>)) -> Ran {
    let work = h.work.clone();
    let gave_up = Rc::new(RefCell::new(Vec::new()));
    let sink = gave_up.clone();
    let mut sent_at = Vec::new();
    let mut console: Vec<(u64, String)> = Vec::new();
    {
        // `execute_directly` wants a `Send` closure; this test's state is `Rc`, so build the
        // single-threaded worker by hand, as `execute_directly` does.
        let alloc = timely::communication::Allocator::Thread(timely::communication::allocator::thread::Thread::default());
        let mut worker = timely::worker::Worker::new(timely::WorkerConfig::default(), alloc, Some(Instant::now()));
        let worker = &mut worker;
        let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, stream) = scope.new_input::<Vec<FinalEvent>>();
            let given_up = stream.run_deferred(work.clone(), Captures::default()).flat_map(DeferredOutput::gave_up);
            let probe = given_up.inspect(move |e: &Exhausted| sink.borrow_mut().push(e.clone())).probe().0;
            (input, probe)
        });
        let mut tick = |worker: &mut timely::worker::Worker| {
            h.work.borrow().wake();
            worker.step();
            let now = h.clock.now_ms();
            let entries = h.logs.entries();
            let fresh = entries.into_iter().filter(|e| e.source == LogSource::Console).skip(console.len());
            console.extend(fresh.map(|e| (now, e.message)));
            h.clock.advance_ms(1);
        };
        for (epoch, batch) in batches.into_iter().enumerate() {
            sent_at.push(h.clock.now_ms());
            for (i, json) in batch.into_iter().enumerate() {
                // Positions as a log's byte offsets would be: distinct per event.
                input.send(FinalEvent { team: 1, hops: 0, position: 1000 * (epoch as u64 + 1) + i as u64, reader: 0, json });
            }
            input.advance_to(epoch as u64 + 1);
            for _ in 0..20 {
                tick(worker);
                let frontier = probe.with_frontier(|f| f.first().copied());
                during(epoch as u64 + 1, frontier);
            }
        }
        for _ in 0..hold_ms {
            tick(worker);
        }
        drop(input);
        let closed = h.clock.now_ms();
        while !probe.done() {
            // Ten minutes of the manual clock: past every retry window these tests configure.
            assert!(h.clock.now_ms() - closed < 600_000, "the sink never finished");
            tick(worker);
        }
    }
    Ran { gave_up: Rc::try_unwrap(gave_up).unwrap().into_inner(), sent_at, console }
}

fn metrics(h: &Harness) -> Vec<(String, Outcome, u64)> {
    h.plugins
        .borrow_mut()
        .take_notices()
        .into_iter()
        .filter_map(|n| match n {
            PluginNotice::Metric(m) => Some((m.hook.as_str().to_string(), m.outcome, m.count)),
            _ => None,
        })
        .collect()
}

#[test]
fn retry_error_twice_then_success_at_the_expected_delays() {
    let h = harness("rec", &[("index.js", RECORDER)], json!({}), fast(200, 200));
    let ran = run(&h, vec![vec![event("flaky-1")]], |_, _| {});
    assert!(ran.gave_up.is_empty());
    let calls = ran.attempts();
    assert_eq!(calls.iter().map(|c| c.1).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(calls[0].2, ran.sent_at[0], "the first attempt as the event arrives");
    assert_eq!(gaps(&ran.times_of("flaky-1")), vec![200, 400], "retries after base, then twice base");
    assert_eq!(metrics(&h), vec![("onEvent".to_string(), Outcome::SucceededOnRetry, 1)]);
    assert_eq!(h.store.queue_len("retries").unwrap(), 0, "a finished retry leaves nothing behind");
}

#[test]
fn never_succeeding_ends_in_a_dead_letter_after_exactly_six_attempts() {
    let h = harness("rec", &[("index.js", RECORDER)], json!({}), fast(10, 10));
    let ran = run(&h, vec![vec![event("doomed")]], |_, _| {});
    assert_eq!(gaps(&ran.times_of("doomed")), vec![10, 20, 40, 80, 160], "1 attempt + 5 retries, each wait doubling");
    assert_eq!(ran.gave_up.len(), 1);
    let e = &ran.gave_up[0];
    assert_eq!(e.attempts, 6);
    assert_eq!(e.reason(), "onEvent of plugin 'rec' (7) failed after 6 attempts: RetryError: never");
    assert_eq!(e.positions, vec![1000], "the event's input position, through every retry");
    assert!(e.payload.contains("\"uuid\":\"doomed\""), "{}", e.payload);
    assert_eq!(metrics(&h), vec![("onEvent".to_string(), Outcome::Failed, 1)]);
}

/// The durable queue entry of a pending retry is due when the retry is, on the worker's clock
/// (a restart resumes it then, not earlier or later).
#[test]
fn a_pending_retry_is_queued_durably_at_its_due_time() {
    let h = harness("rec", &[("index.js", RECORDER)], json!({}), fast(5_000, 10));
    let queued = Rc::new(RefCell::new(Vec::new()));
    let seen = queued.clone();
    let store = h.store.clone();
    let ran = run(&h, vec![vec![event("flaky-q")]], move |_, _| {
        if seen.borrow().is_empty() {
            // Taking an item only marks it taken for this store instance; the retry still
            // acknowledges it by id when it is done.
            let items = store.queue_take_due("retries", u64::MAX, 10).unwrap();
            seen.borrow_mut().extend(items.into_iter().map(|i| i.due_ms));
        }
    });
    let times = ran.times_of("flaky-q");
    assert_eq!(gaps(&times), vec![5_000, 10_000]);
    assert_eq!(*queued.borrow(), vec![times[0] + 5_000], "queued once, due at the first retry's time");
    assert_eq!(h.store.queue_len("retries").unwrap(), 0, "acknowledged once it succeeded");
}

#[test]
fn a_plain_error_is_not_retried_and_is_not_lost() {
    let h = harness("rec", &[("index.js", RECORDER)], json!({}), fast(10, 10));
    let ran = run(&h, vec![vec![event("broken"), event("fine")]], |_, _| {});
    assert_eq!(ran.times_of("broken").len(), 1);
    assert_eq!(ran.gave_up.len(), 1);
    assert_eq!(ran.gave_up[0].reason(), "onEvent of plugin 'rec' (7) failed after 1 attempt: Error: plain failure");
    assert_eq!(ran.gave_up[0].positions, vec![1000]);
    let mut m = metrics(&h);
    m.sort_by_key(|x| x.1);
    assert_eq!(m, vec![("onEvent".to_string(), Outcome::Succeeded, 1), ("onEvent".to_string(), Outcome::Failed, 1)]);
}

#[test]
fn the_frontier_does_not_pass_an_epoch_while_its_retry_is_pending() {
    let h = harness("rec", &[("index.js", RECORDER)], json!({}), fast(300, 10));
    let held = Rc::new(RefCell::new(Vec::new()));
    let seen = held.clone();
    // Epoch 0 holds a flaky event; epochs 1 and 2 hold events that succeed at once.
    let batches = vec![vec![event("flaky-a")], vec![event("ok-b")], vec![event("ok-c")]];
    let ran = run(&h, batches, move |input_time, frontier| seen.borrow_mut().push((input_time, frontier)));
    let ok_c = ran.times_of("ok-c");
    let flaky = ran.times_of("flaky-a");
    assert!(ok_c[0] < *flaky.last().unwrap(), "later events flowed while the retry waited");
    assert_eq!(held.borrow().len(), 60);
    for (input_time, frontier) in held.borrow().iter() {
        assert_eq!(*frontier, Some(0), "input at {input_time}: the frontier passed epoch 0 with its retry pending");
    }
}

/// `retry_hold_ms`: a retry holds its epoch for the hold at most. Past it (here at once), the
/// epoch completes while the retry still waits, and the retry is not lost: it runs to its last
/// attempt and its dead letter still comes out (at a later time).
#[test]
fn a_retry_past_its_hold_lets_its_epoch_complete_and_still_gives_up_later() {
    let policies = RetryPolicies { hold: Duration::ZERO, ..fast(20, 10) };
    let h = harness("rec", &[("index.js", RECORDER)], json!({}), policies);
    let frontiers = Rc::new(RefCell::new(Vec::new()));
    let seen = frontiers.clone();
    let ran = run(&h, vec![vec![event("doomed")], vec![event("ok-b")]], move |_, frontier| seen.borrow_mut().push(frontier));
    let passed = frontiers.borrow().iter().any(|f| f.is_some_and(|t| t >= 1));
    assert!(passed, "epoch 0 never completed while its retry waited: {:?}", frontiers.borrow());
    assert_eq!(gaps(&ran.times_of("doomed")), vec![20, 40, 80, 160, 320], "every attempt still made, on time");
    assert_eq!(ran.gave_up.len(), 1, "the dead letter still comes out");
    assert_eq!(ran.gave_up[0].attempts, 6);
    assert_eq!(h.store.queue_len("retries").unwrap(), 0);
}

/// A hold ends when it says: with a 100 ms hold and retries 60 and 180 ms after the first
/// attempt, the frontier stays at epoch 0 for the hold's 100 ms and passes it right after (one
/// step of slack for the progress to reach the probe).
#[test]
fn a_retry_holds_its_epoch_for_exactly_the_hold() {
    let policies = RetryPolicies { hold: Duration::from_millis(100), ..fast(60, 10) };
    let h = harness("rec", &[("index.js", RECORDER)], json!({}), policies);
    let frontiers = Rc::new(RefCell::new(Vec::new()));
    let seen = frontiers.clone();
    let clock = h.clock.clone();
    // Epoch 0: the doomed event; then five more epochs of 20 ms each keep the input open.
    let batches = vec![vec![event("doomed")], vec![], vec![], vec![], vec![], vec![], vec![]];
    let ran = run(&h, batches, move |_, frontier| seen.borrow_mut().push((clock.now_ms(), frontier)));
    let first = ran.sent_at[0];
    // `during` runs after the step at time T, with the clock already at T + 1.
    for (now, frontier) in frontiers.borrow().iter() {
        let step = now - 1 - first;
        if step < 100 {
            assert_eq!(*frontier, Some(0), "{step} ms after the first attempt, within the hold");
        } else if step > 101 {
            assert!(frontier.is_some_and(|t| t > 0), "{step} ms after the first attempt, past the hold: {frontier:?}");
        }
    }
    assert_eq!(ran.gave_up.len(), 1);
}

/// At the end of the input a retry that still holds its epoch, and is released only after the
/// input closed, is still run to its end: the run does not finish around it (it did, silently:
/// the floor was dropped while the retry still held, and its release left nothing open).
#[test]
fn a_retry_released_after_the_input_closed_still_runs_to_its_end() {
    let policies = RetryPolicies { hold: Duration::from_millis(30), ..fast(60, 10) };
    let h = harness("rec", &[("index.js", RECORDER)], json!({}), policies);
    let ran = run(&h, vec![vec![event("doomed")]], |_, _| {});
    assert_eq!(ran.attempts().len(), 6, "every attempt made before the run ended");
    assert_eq!(ran.gave_up.len(), 1, "and its dead letter written");
}

/// `(flush time, uuids)` of each exported batch, from the plugin's `batch a,b` lines.
fn batches_of(ran: &Ran) -> Vec<(u64, String)> {
    ran.console.iter().filter_map(|(at, l)| l.strip_prefix("batch ").map(|names| (*at, names.to_string()))).collect()
}

#[test]
fn export_buffers_flush_by_size_by_time_and_at_the_end() {
    let src = "exports.exportEvents = (events) => { console.log('batch ' + events.map(e => e.uuid).join(',')) }";
    // Each ProcessedPluginEvent here is 133 characters: 300 holds two of them.
    let h = harness(
        "exp",
        &[("index.js", src)],
        json!({"exportEventsBufferBytes": "300", "exportEventsBufferSeconds": "1", "exportEventsToIgnore": "ignored"}),
        fast(10, 10),
    );
    let ignored = json!({"uuid": "x", "event": "ignored", "team_id": 1, "properties": {}}).to_string();
    assert_eq!(operators::plugin::deferred::processed_event(&event("a")).unwrap().1.len(), 133);
    let batches = vec![vec![event("a"), event("b"), event("c"), ignored], vec![event("d")]];
    let ran = run(&h, batches, |_, _| {});
    let flushed = batches_of(&ran);
    let names: Vec<&str> = flushed.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, vec!["a,b", "c,d"], "{flushed:?}");
    assert_eq!(flushed[0].0, ran.sent_at[0], "a full buffer is exported as the event that fills it arrives");
    // The second batch went out when the input closed (20 ms after `d` was sent), not on the
    // 1 s timer.
    let closed = ran.sent_at[1] + 20;
    assert!((closed..closed + 10).contains(&flushed[1].0), "flushed at {} ms, the input closed at {closed}", flushed[1].0);
    // With room to spare, the timer: exactly 1 s after the first buffered event, while the
    // input is still open.
    let h =
        harness("exp", &[("index.js", src)], json!({"exportEventsBufferBytes": "100000", "exportEventsBufferSeconds": "1"}), fast(10, 10));
    let ran = run_holding(&h, vec![vec![event("t")]], 1600, |_, _| {});
    assert_eq!(batches_of(&ran), vec![(ran.sent_at[0] + 1000, "t".to_string())]);
}

#[test]
fn export_retries_then_gives_up_after_four_attempts() {
    let src = "const { RetryError } = require('@posthog/plugin-scaffold')\nexports.exportEvents = (events) => { console.log('try ' + events.length); throw new RetryError('down') }";
    let h = harness("exp", &[("index.js", src)], json!({}), fast(10, 10));
    let ran = run(&h, vec![vec![event("a"), event("b")]], |_, _| {});
    let tries: Vec<u64> = ran.console.iter().filter(|(_, l)| l == "try 2").map(|(at, _)| *at).collect();
    // Flushed when the input closed (20 ms after the batch), then retried after 10, 20, 40 ms.
    assert!(tries.first().is_some_and(|t| *t >= ran.sent_at[0] + 20), "{tries:?}");
    assert_eq!(gaps(&tries), vec![10, 20, 40], "1 attempt + 3 retries");
    assert_eq!(ran.gave_up.len(), 1);
    assert_eq!(ran.gave_up[0].attempts, 4);
    assert_eq!(ran.gave_up[0].positions, vec![1000, 1001], "each event of the batch keeps its position");
    assert_eq!(
        metrics(&h).into_iter().filter(|m| m.0 == "exportEvents").collect::<Vec<_>>(),
        vec![("exportEvents".to_string(), Outcome::Failed, 2)]
    );
}

/// What a retried call enqueues is in the durable job queue as soon as that attempt returns — not
/// left in the instance until its next event, which a retry (or a timed export flush) may never
/// be followed by: a crash then lost the jobs while the retry itself was acknowledged.
#[test]
fn jobs_enqueued_by_a_retry_are_queued_when_it_returns() {
    let code = "const { RetryError } = require('@posthog/plugin-scaffold')\n\
        exports.jobs = { later: () => {} }\n\
        exports.onEvent = async (e, { jobs, cache }) => {\n\
          const n = await cache.incr('attempt')\n\
          await jobs.later({ n }).runIn(1, 'hours')\n\
          if (n < 2) throw new RetryError('again')\n\
        }";
    let h = harness("retryjobs", &[("index.js", code)], json!({}), fast(10, 10));
    let ev = FinalEvent { team: 1, hops: 0, position: 0, reader: 0, json: event("u1") };
    let steps = h.work.borrow_mut().event(0, &ev);
    assert_eq!(h.store.queue_len("jobs").unwrap(), 1, "the first attempt's job");
    let task = steps
        .into_iter()
        .find_map(|s| match s {
            operators::plugin::deferred::Step::Retry(_, task) => Some(task),
            _ => None,
        })
        .expect("the first attempt is retried");
    let step = h.work.borrow_mut().run(task);
    assert!(matches!(step, operators::plugin::deferred::Step::Done), "{step:?}");
    assert_eq!(h.store.queue_len("jobs").unwrap(), 2, "the retry's job is queued, with no event after it");
}
