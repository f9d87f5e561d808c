//! Events a `processEvent` chain captures go through the chain in the epoch of the event that
//! captured them, addressed to that event's reader: so the epoch (and with it the input offset
//! a Kafka source commits) cannot complete before they are written. A capture loop ends at the
//! hop limit with a dead letter in the same epoch, and so does a captured event the checks of
//! input lines refuse.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{json_of, plugin};
use operators::dataflow::chain::{CAPTURE_SOURCE, Captures, ChainResult, RunChain};
use operators::event::{EventLimits, parse_line};
use operators::plugin::worker::{PluginSpec, WorkerPlugins};
use operators::plugin::{HostServices, Limits, MemoryLogSink, PluginDefinition};
use state::MemoryStore;
use timely::dataflow::operators::{Input, Inspect, Probe};

/// Captures an `echo` of every event, one level deeper each time; `stop` events capture none.
const ECHO: &str = "exports.processEvent = async (e) => {\n\
      if (e.event !== 'stop') await posthog.capture('echo', { distinct_id: 'x', depth: (e.properties.depth || 0) + 1, of: e.uuid })\n\
      e.properties.seen = true\n\
      return e\n\
    }";

fn worker_plugins(fixture: &std::path::Path) -> Rc<RefCell<WorkerPlugins>> {
    let services = HostServices::new(Arc::new(MemoryStore::new()), None, Arc::new(MemoryLogSink::default()), Duration::from_secs(5));
    let spec = PluginSpec {
        id: "1".into(),
        def: PluginDefinition::load(fixture).unwrap(),
        teams: Some(vec![1]),
        config: Default::default(),
        attachments: Default::default(),
        order: 0,
    };
    Rc::new(RefCell::new(WorkerPlugins::new(Limits::default(), Arc::new(vec![spec]), services).unwrap()))
}

/// Each result with its epoch, and what was left for the worker loop.
type Ran = (Vec<(u64, ChainResult)>, Vec<(String, u32)>);

/// Runs `events` (name, uuid) of team 1, one per epoch 0, 1, ..., as read by worker 7, through
/// the chain of one plugin (`index.js` = `code`); returns each result with its epoch, and what
/// was left for the worker loop.
fn chain_over(code: &str, events: &[(&str, &str)], captures: Captures) -> Ran {
    let fixture = plugin("p", &[("index.js", code)]);
    let folder = fixture.path();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let lines: Vec<String> = events
        .iter()
        .map(|(name, uuid)| format!(r#"{{"uuid":"{uuid}","event":"{name}","team_id":1,"distinct_id":"d","properties":{{}}}}"#))
        .collect();
    let left = timely::execute_directly(move |worker| {
        let plugins = worker_plugins(&folder);
        let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, events) = scope.new_input();
            let probe = events
                .run_chain(plugins.clone(), captures)
                .inspect_core(move |event| {
                    if let Ok((stamp, results)) = event {
                        let time = *stamp.expect_singleton();
                        sink.lock().unwrap().extend(results.iter().map(|r: &ChainResult| (time, r.clone())));
                    }
                })
                .probe()
                .0;
            (input, probe)
        });
        for (epoch, line) in lines.iter().enumerate() {
            let mut ev = parse_line(line.as_bytes(), "test", epoch as u64 + 1, &EventLimits::default()).unwrap();
            ev.reader = 7;
            input.send(ev);
            input.advance_to(epoch as u64 + 1);
        }
        drop(input);
        while !probe.done() {
            worker.step();
        }
        plugins.borrow_mut().take_captured()
    });
    (Arc::try_unwrap(seen).unwrap().into_inner().unwrap(), left)
}

/// The echo plugin over `events`; nothing may be left for the worker loop.
fn run(events: &[(&str, &str)], max_hops: u32) -> Vec<(u64, ChainResult)> {
    let (results, left) = chain_over(ECHO, events, Captures { limits: EventLimits::default(), max_hops });
    assert!(left.is_empty(), "nothing captured is left for the worker loop: {left:?}");
    results
}

#[test]
fn captures_run_in_the_capturing_events_epoch_for_its_reader() {
    let results = run(&[("start", "a"), ("stop", "b"), ("start", "c")], 2);
    // Per input "start": itself, echo depth 1, echo depth 2 (kept), echo depth 3 (past the
    // limit of 2 captures deep: a dead letter); "stop" captures nothing.
    assert_eq!(results.len(), 4 + 1 + 4, "{results:#?}");
    for (epoch, uuid) in [(0, "a"), (2, "c")] {
        let here: Vec<&ChainResult> = results.iter().filter(|(t, _)| *t == epoch).map(|(_, r)| r).collect();
        assert_eq!(here.len(), 4, "epoch {epoch}: {here:#?}");
        assert!(here.iter().all(|r| r.reader() == 7), "every result goes to the reader of the capturing event");
        let hops: Vec<u32> = here.iter().map(|r| r.hops()).collect();
        assert_eq!(hops, [0, 1, 2, 3]);
        assert_eq!(json_of(here[0])["uuid"], uuid);
        assert_eq!(json_of(here[1])["properties"]["of"], uuid, "the echo of {uuid}");
        for (depth, r) in here.iter().enumerate().skip(1) {
            assert_eq!(json_of(r)["properties"]["depth"], depth as u64);
        }
        for r in &here[..3] {
            assert!(matches!(r, ChainResult::Kept(ev) if ev.json.contains("\"seen\":true")), "through the chain: {r:?}");
        }
        match here[3] {
            ChainResult::Failed { letter, .. } => {
                assert_eq!(letter.source, CAPTURE_SOURCE);
                assert!(letter.reason.starts_with("posthog.capture loop: this event is 3 captures deep"), "{}", letter.reason);
            }
            other => panic!("the fourth generation is a dead letter: {other:?}"),
        }
    }
    assert_eq!(results.iter().filter(|(t, _)| *t == 1).count(), 1);
}

#[test]
fn a_captured_event_that_is_no_valid_event_is_a_dead_letter_of_its_epoch() {
    // A captured event longer than the line limit (4 KiB here) is refused as a line would be.
    let code = "exports.processEvent = async (e) => { if (e.event === 'start') await posthog.capture('x', { distinct_id: 'd', pad: 'y'.repeat(5000) }); return e }";
    let captures = Captures { limits: EventLimits { max_bytes: 4096, max_depth: 64 }, max_hops: 3 };
    let (results, _) = chain_over(code, &[("start", "u")], captures);
    assert_eq!(results.len(), 2, "{results:#?}");
    assert!(results.iter().all(|(t, _)| *t == 0));
    match &results[1].1 {
        ChainResult::Failed { letter, hops, .. } => {
            assert_eq!((letter.source.as_str(), *hops), (CAPTURE_SOURCE, 1));
            assert!(letter.raw.contains("\"pad\""), "the captured event itself is kept in the letter");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn what_setup_plugin_captures_is_left_for_the_worker_loop() {
    // setupPlugin runs when the first event creates the instance, inside the chain: its capture
    // is no capture of that event (no hop of it, not in its batch), so it waits for the loop.
    let code = "exports.setupPlugin = async () => { await posthog.capture('started', { distinct_id: 's' }) }\n\
                exports.processEvent = (e) => e";
    let (results, left) = chain_over(code, &[("e", "u")], Captures::default());
    assert_eq!(results.len(), 1, "only the event itself: {results:#?}");
    assert_eq!(results[0].1.hops(), 0);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].0.contains("\"started\""), "{left:?}");
    assert_eq!(left[0].1, 1, "one hop deeper than the team's deepest event so far (0)");
}
