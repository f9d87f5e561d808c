//! The `onEvent` / `exportEvents` sink in a real timely dataflow: retries at the documented
//! delays, give-ups after exactly the documented attempts, the frontier held while a retry is
//! owed, export buffers flushed by size, by time and at the end.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::plugin;
use operators::dataflow::deferred::RunDeferred;
use operators::plugin::deferred::{DeferredWork, Exhausted, RetryPolicies, RetryPolicy};
use operators::plugin::worker::{Outcome, PluginNotice, PluginSpec, WorkerPlugins};
use operators::plugin::{HostServices, Limits, LogSource, MemoryLogSink, PluginDefinition};
use serde_json::json;
use state::{MemoryStore, StateStore};
use timely::dataflow::operators::{Input, Inspect, Probe};

const RECORDER: &str = "const { RetryError } = require('@posthog/plugin-scaffold')\n\
    exports.onEvent = (e, { global }) => {\n\
      global.n = global.n || {}\n\
      const n = global.n[e.uuid] = (global.n[e.uuid] || 0) + 1\n\
      console.log(JSON.stringify({ uuid: e.uuid, attempt: n, at: Date.now() }))\n\
      if (e.uuid.startsWith('flaky') && n <= 2) throw new RetryError('not yet')\n\
      if (e.uuid === 'doomed') throw new RetryError('never')\n\
      if (e.uuid === 'broken') throw new Error('plain failure')\n\
    }";

struct Harness {
    logs: Arc<MemoryLogSink>,
    store: Arc<MemoryStore>,
    plugins: Rc<RefCell<WorkerPlugins>>,
    work: Rc<RefCell<DeferredWork>>,
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
    };
    let plugins = Rc::new(RefCell::new(WorkerPlugins::new(Limits::default(), Arc::new(vec![spec]), services).unwrap()));
    let work = Rc::new(RefCell::new(DeferredWork::new(plugins.clone(), policies, store.clone())));
    Harness { logs, store, plugins, work, _fixture: fixture }
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

/// (uuid, attempt, at ms) of every onEvent call, from the plugin's console.
fn attempts(logs: &MemoryLogSink) -> Vec<(String, u64, u64)> {
    logs.entries()
        .into_iter()
        .filter(|e| e.source == LogSource::Console)
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(&e.message).ok())
        .filter(|v| v.get("attempt").is_some())
        .map(|v| (v["uuid"].as_str().unwrap().to_string(), v["attempt"].as_u64().unwrap(), v["at"].as_u64().unwrap()))
        .collect()
}

/// Runs the sink over `batches` (one epoch each), then closes the input and runs to the end.
/// `during` is called after every step while the input is open, with the probe's frontier.
fn run(h: &Harness, batches: Vec<Vec<String>>, during: impl FnMut(u64, Option<u64>)) -> Vec<Exhausted> {
    run_holding(h, batches, Duration::ZERO, during)
}

/// [`run`], keeping the input open for `hold` after the last batch.
fn run_holding(h: &Harness, batches: Vec<Vec<String>>, hold: Duration, mut during: impl FnMut(u64, Option<u64>)) -> Vec<Exhausted> {
    let work = h.work.clone();
    let gave_up = Rc::new(RefCell::new(Vec::new()));
    let sink = gave_up.clone();
    {
        // `execute_directly` wants a `Send` closure; this test's state is `Rc`, so build the
        // single-threaded worker by hand, as `execute_directly` does.
        let alloc = timely::communication::Allocator::Thread(timely::communication::allocator::thread::Thread::default());
        let mut worker = timely::worker::Worker::new(timely::WorkerConfig::default(), alloc, Some(Instant::now()));
        let worker = &mut worker;
        let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, stream) = scope.new_input::<Vec<(i64, u32, String)>>();
            let probe = stream.run_deferred(work.clone()).inspect(move |e: &Exhausted| sink.borrow_mut().push(e.clone())).probe().0;
            (input, probe)
        });
        for (epoch, batch) in batches.into_iter().enumerate() {
            for ev in batch {
                input.send((1, 0, ev));
            }
            input.advance_to(epoch as u64 + 1);
            for _ in 0..20 {
                worker.step();
                let frontier = probe.with_frontier(|f| f.first().copied());
                during(epoch as u64 + 1, frontier);
            }
        }
        let open = Instant::now();
        while open.elapsed() < hold {
            worker.step_or_park(Some(Duration::from_millis(10)));
        }
        drop(input);
        let started = Instant::now();
        while !probe.done() {
            assert!(started.elapsed() < Duration::from_secs(20), "the sink never finished");
            worker.step_or_park(Some(Duration::from_millis(10)));
        }
    }
    Rc::try_unwrap(gave_up).unwrap().into_inner()
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
    let gave_up = run(&h, vec![vec![event("flaky-1")]], |_, _| {});
    assert!(gave_up.is_empty());
    let calls = attempts(&h.logs);
    assert_eq!(calls.iter().map(|c| c.1).collect::<Vec<_>>(), vec![1, 2, 3]);
    let gap1 = calls[1].2 - calls[0].2;
    let gap2 = calls[2].2 - calls[1].2;
    assert!((200..600).contains(&gap1), "first retry after {gap1} ms, wanted 200");
    assert!((400..900).contains(&gap2), "second retry after {gap2} ms, wanted 400");
    assert_eq!(metrics(&h), vec![("onEvent".to_string(), Outcome::SucceededOnRetry, 1)]);
    assert_eq!(h.store.queue_len("retries").unwrap(), 0, "a finished retry leaves nothing behind");
}

#[test]
fn never_succeeding_ends_in_a_dead_letter_after_exactly_six_attempts() {
    let h = harness("rec", &[("index.js", RECORDER)], json!({}), fast(10, 10));
    let gave_up = run(&h, vec![vec![event("doomed")]], |_, _| {});
    assert_eq!(attempts(&h.logs).len(), 6, "1 attempt + 5 retries");
    assert_eq!(gave_up.len(), 1);
    let e = &gave_up[0];
    assert_eq!(e.attempts, 6);
    assert_eq!(e.reason(), "onEvent of plugin 'rec' (7) failed after 6 attempts: RetryError: never");
    assert!(e.payload.contains("\"uuid\":\"doomed\""), "{}", e.payload);
    assert_eq!(metrics(&h), vec![("onEvent".to_string(), Outcome::Failed, 1)]);
}

#[test]
fn a_plain_error_is_not_retried_and_is_not_lost() {
    let h = harness("rec", &[("index.js", RECORDER)], json!({}), fast(10, 10));
    let gave_up = run(&h, vec![vec![event("broken"), event("fine")]], |_, _| {});
    let calls = attempts(&h.logs);
    assert_eq!(calls.iter().filter(|c| c.0 == "broken").count(), 1);
    assert_eq!(gave_up.len(), 1);
    assert_eq!(gave_up[0].reason(), "onEvent of plugin 'rec' (7) failed after 1 attempt: Error: plain failure");
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
    let started = Instant::now();
    run(&h, batches, move |input_time, frontier| seen.borrow_mut().push((input_time, frontier, started.elapsed())));
    let calls = attempts(&h.logs);
    let first_ok = calls.iter().find(|c| c.0 == "ok-c").expect("later events ran").2;
    let flaky_done = calls.iter().filter(|c| c.0 == "flaky-a").map(|c| c.2).max().unwrap();
    assert!(first_ok < flaky_done, "later events flowed while the retry waited");
    for (input_time, frontier, _) in held.borrow().iter() {
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
    let gave_up = run(&h, vec![vec![event("doomed")], vec![event("ok-b")]], move |_, frontier| seen.borrow_mut().push(frontier));
    let passed = frontiers.borrow().iter().any(|f| f.is_some_and(|t| t >= 1));
    assert!(passed, "epoch 0 never completed while its retry waited: {:?}", frontiers.borrow());
    let calls = attempts(&h.logs);
    assert_eq!(calls.iter().filter(|c| c.0 == "doomed").count(), 6, "every attempt still made");
    assert_eq!(gave_up.len(), 1, "the dead letter still comes out");
    assert_eq!(gave_up[0].attempts, 6);
    assert_eq!(h.store.queue_len("retries").unwrap(), 0);
}

/// At the end of the input a retry that still holds its epoch, and is released only after the
/// input closed, is still run to its end: the run does not finish around it (it did, silently:
/// the floor was dropped while the retry still held, and its release left nothing open).
#[test]
fn a_retry_released_after_the_input_closed_still_runs_to_its_end() {
    let policies = RetryPolicies { hold: Duration::from_millis(30), ..fast(60, 10) };
    let h = harness("rec", &[("index.js", RECORDER)], json!({}), policies);
    let gave_up = run(&h, vec![vec![event("doomed")]], |_, _| {});
    assert_eq!(attempts(&h.logs).len(), 6, "every attempt made before the run ended");
    assert_eq!(gave_up.len(), 1, "and its dead letter written");
}

#[test]
fn export_buffers_flush_by_size_by_time_and_at_the_end() {
    let src = "exports.exportEvents = (events) => { console.log('batch ' + events.map(e => e.uuid).join(',') + ' at ' + Date.now()) }";
    // Each ProcessedPluginEvent here is 133 characters: 300 holds two of them.
    let h = harness(
        "exp",
        &[("index.js", src)],
        json!({"exportEventsBufferBytes": "300", "exportEventsBufferSeconds": "1", "exportEventsToIgnore": "ignored"}),
        fast(10, 10),
    );
    let ignored = json!({"uuid": "x", "event": "ignored", "team_id": 1, "properties": {}}).to_string();
    let started = Instant::now();
    assert_eq!(operators::plugin::deferred::processed_event(&event("a")).unwrap().1.len(), 133);
    let batches = vec![vec![event("a"), event("b"), event("c"), ignored], vec![event("d")]];
    run(&h, batches, |_, _| {});
    let lines: Vec<String> = h.logs.entries().into_iter().filter(|e| e.message.starts_with("batch ")).map(|e| e.message).collect();
    let names: Vec<&str> = lines.iter().map(|l| l.split(' ').nth(1).unwrap()).collect();
    assert_eq!(names, vec!["a,b", "c,d"], "{lines:?}");
    // The second batch was flushed at the end (input closed), not after the 1 s timer.
    assert!(started.elapsed() < Duration::from_millis(900), "took {:?}", started.elapsed());
    let h =
        harness("exp", &[("index.js", src)], json!({"exportEventsBufferBytes": "100000", "exportEventsBufferSeconds": "1"}), fast(10, 10));
    let sent_ms = now_ms();
    run_holding(&h, vec![vec![event("t")]], Duration::from_millis(1600), |_, _| {});
    let line = h.logs.entries().into_iter().find(|e| e.message.starts_with("batch t")).expect("flushed");
    let at: u64 = line.message.rsplit(' ').next().unwrap().parse().unwrap();
    let waited = at - sent_ms;
    assert!((1000..1500).contains(&waited), "flushed {waited} ms after the event: wanted the 1 s timer, before the input closed");
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

#[test]
fn export_retries_then_gives_up_after_four_attempts() {
    let src = "const { RetryError } = require('@posthog/plugin-scaffold')\nexports.exportEvents = (events) => { console.log('try ' + events.length); throw new RetryError('down') }";
    let h = harness("exp", &[("index.js", src)], json!({}), fast(10, 10));
    let gave_up = run(&h, vec![vec![event("a"), event("b")]], |_, _| {});
    let tries = h.logs.entries().iter().filter(|e| e.message == "try 2").count();
    assert_eq!(tries, 4, "1 attempt + 3 retries");
    assert_eq!(gave_up.len(), 1);
    assert_eq!(gave_up[0].attempts, 4);
    assert_eq!(
        metrics(&h).into_iter().filter(|m| m.0 == "exportEvents").collect::<Vec<_>>(),
        vec![("exportEvents".to_string(), Outcome::Failed, 2)]
    );
}
