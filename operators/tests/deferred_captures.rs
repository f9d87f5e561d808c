//! Events `onEvent` and `exportEvents` capture go through their chain in the deferred stage, in
//! the epoch of the events the call was for, addressed to the reader of the (first) event: so
//! that epoch, and the input offset a Kafka source commits with it, cannot complete before
//! they are written. A captured event's own `onEvent` and `exportEvents` run there too; a
//! capture loop ends at the hop limit with a dead letter of the same epoch.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{json_of, plugin};
use operators::dataflow::chain::{CAPTURE_SOURCE, Captures, ChainResult};
use operators::dataflow::deferred::{DeferredOutput, RunDeferred};
use operators::event::EventLimits;
use operators::plugin::deferred::{DeferredWork, FinalEvent, RetryPolicies, RetryPolicy};
use operators::plugin::worker::{PluginSpec, WorkerPlugins};
use operators::plugin::{HostServices, Limits, MemoryLogSink, PluginDefinition};
use state::MemoryStore;
use timely::dataflow::operators::{Input, Inspect, Probe};

/// Each output with its epoch, and what was left for the worker loop.
type Ran = (Vec<(u64, DeferredOutput)>, Vec<(String, u32)>);

/// Runs `events` (name, uuid, the worker that read it, capture hops) of team 1, one per epoch 0, 1, ...,
/// through the deferred stage of one plugin (`index.js` = `code`); returns each output with its
/// epoch, and what was left for the worker loop.
fn deferred_over(code: &str, events: &[(&str, &str, u32, u32)], max_hops: u32, policies: RetryPolicies) -> Ran {
    let fixture = plugin("p", &[("index.js", code)]);
    let folder = fixture.path().to_path_buf();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let lines: Vec<(String, u32, u32)> = events
        .iter()
        .map(|(name, uuid, reader, hops)| {
            (format!(r#"{{"uuid":"{uuid}","event":"{name}","team_id":1,"distinct_id":"d","properties":{{}}}}"#), *reader, *hops)
        })
        .collect();
    let left = timely::execute_directly(move |worker| {
        let store = Arc::new(MemoryStore::new());
        let services = HostServices::new(store.clone(), None, Arc::new(MemoryLogSink::default()), Duration::from_secs(5));
        let spec = PluginSpec {
            id: "1".into(),
            def: PluginDefinition::load(&folder).unwrap(),
            teams: Some(vec![1]),
            config: Default::default(),
            attachments: Default::default(),
            order: 0,
        };
        let plugins = Rc::new(RefCell::new(WorkerPlugins::new(Limits::default(), Arc::new(vec![spec]), services).unwrap()));
        let work = Rc::new(RefCell::new(DeferredWork::new(plugins.clone(), policies, store)));
        let captures = Captures { limits: EventLimits::default(), max_hops };
        let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, events) = scope.new_input::<Vec<FinalEvent>>();
            let probe = events
                .run_deferred(work, captures)
                .inspect_core(move |event| {
                    if let Ok((stamp, outputs)) = event {
                        let time = *stamp.expect_singleton();
                        sink.lock().unwrap().extend(outputs.iter().map(|o| (time, o.clone())));
                    }
                })
                .probe()
                .0;
            (input, probe)
        });
        for (epoch, (json, reader, hops)) in lines.into_iter().enumerate() {
            input.send(FinalEvent { team: 1, hops, position: epoch as u64 + 1, reader, json });
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

fn captured(o: &DeferredOutput) -> &ChainResult {
    match o {
        DeferredOutput::Captured(r) | DeferredOutput::CapturedByBatch(r) => r,
        DeferredOutput::GaveUp(e) => panic!("no call fails here: {e:?}"),
    }
}

#[test]
fn what_on_event_captures_runs_its_chain_in_the_events_epoch_for_its_reader() {
    // Every event but a `stop` makes onEvent capture an `echo`, one level deeper each time.
    let code = "exports.processEvent = (e) => { e.properties.seen = true; return e }\n\
                exports.onEvent = async (e) => {\n\
                  if (e.event !== 'stop') await posthog.capture('echo', { distinct_id: 'x', depth: (e.properties.depth || 0) + 1, of: e.uuid })\n\
                }";
    let (outputs, left) =
        deferred_over(code, &[("start", "a", 7, 0), ("stop", "b", 7, 0), ("start", "c", 7, 0)], 2, RetryPolicies::default());
    assert!(left.is_empty(), "nothing captured is left for the worker loop: {left:?}");
    // Per "start": echo depth 1 and 2 (kept, through processEvent and onEvent), echo depth 3
    // (past the limit of 2 captures deep: a dead letter), all in the start's epoch.
    assert_eq!(outputs.len(), 3 + 3, "{outputs:#?}");
    assert!(outputs.iter().all(|(_, o)| matches!(o, DeferredOutput::Captured(_))), "onEvent's captures stand for one event each");
    for (epoch, uuid) in [(0, "a"), (2, "c")] {
        let here: Vec<&ChainResult> = outputs.iter().filter(|(t, _)| *t == epoch).map(|(_, o)| captured(o)).collect();
        assert_eq!(here.len(), 3, "epoch {epoch}: {here:#?}");
        assert!(here.iter().all(|r| r.reader() == 7), "every capture goes to the reader of the event it came from");
        assert_eq!(here.iter().map(|r| r.hops()).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(json_of(here[0])["properties"]["of"], uuid);
        for (depth, r) in here.iter().enumerate() {
            assert_eq!(json_of(r)["properties"]["depth"], depth as u64 + 1);
        }
        for r in &here[..2] {
            assert!(matches!(r, ChainResult::Kept(ev) if ev.json.contains("\"seen\":true")), "through processEvent: {r:?}");
        }
        match here[2] {
            ChainResult::Failed { letter, .. } => {
                assert_eq!(letter.source, CAPTURE_SOURCE);
                assert!(letter.reason.starts_with("posthog.capture loop: this event is 3 captures deep"), "{}", letter.reason);
            }
            other => panic!("the third generation is a dead letter: {other:?}"),
        }
    }
}

#[test]
fn what_export_events_captures_goes_out_at_the_batchs_earliest_epoch() {
    // One batch (the buffer is flushed when the input ends) holds the three inputs of epochs
    // 0, 1 and 2: its capture is written in epoch 0, which may not complete before it is. The
    // captured `batch` is exported in turn in the batch's latest epoch, 2 (were it exported in
    // 0, every later batch holding a capture would hold epoch 0 again), and that call captures
    // `exported`, written in epoch 2.
    let code = "exports.processEvent = (e) => { e.properties.seen = true; return e }\n\
                exports.exportEvents = async (events) => {\n\
                  const inputs = events.filter((e) => e.event === 'start').map((e) => e.uuid)\n\
                  if (inputs.length) await posthog.capture('batch', { distinct_id: 'x', of: inputs.join(',') })\n\
                  if (events.some((e) => e.event === 'batch')) await posthog.capture('exported', { distinct_id: 'x' })\n\
                }";
    let (outputs, left) =
        deferred_over(code, &[("start", "a", 7, 0), ("start", "b", 7, 0), ("start", "c", 7, 0)], 3, RetryPolicies::default());
    assert!(left.is_empty(), "nothing captured is left for the worker loop: {left:?}");
    assert_eq!(outputs.len(), 2, "{outputs:#?}");
    let (epochs, results): (Vec<u64>, Vec<&ChainResult>) = outputs.iter().map(|(t, o)| (*t, captured(o))).unzip();
    assert_eq!(epochs, [0, 2]);
    // A batch's captures stand for its later epochs too: a rewind of the earliest keeps them.
    assert!(outputs.iter().all(|(_, o)| matches!(o, DeferredOutput::CapturedByBatch(_))), "{outputs:#?}");
    assert!(results.iter().all(|r| r.reader() == 7 && matches!(r, ChainResult::Kept(ev) if ev.json.contains("\"seen\":true"))));
    assert_eq!(json_of(results[0])["event"], "batch");
    assert_eq!(json_of(results[0])["properties"]["of"], "a,b,c");
    assert_eq!(json_of(results[1])["event"], "exported", "the captured event went to exportEvents too");
    assert_eq!(results.iter().map(|r| r.hops()).collect::<Vec<_>>(), [1, 2]);
}

#[test]
fn an_export_batch_holds_one_readers_events_and_its_capture_goes_to_that_reader() {
    // Workers 7 and 8 read events of one team: each gets batches of its own, so what a batch
    // captures is written with the offsets of the worker that read its events.
    let code = "exports.exportEvents = async (events) => {\n\
                  const inputs = events.filter((e) => e.event === 'start').map((e) => e.uuid)\n\
                  if (inputs.length) await posthog.capture('batch', { distinct_id: 'x', of: inputs.join(',') })\n\
                }";
    let (outputs, left) =
        deferred_over(code, &[("start", "a", 7, 0), ("start", "b", 8, 0), ("start", "c", 7, 0)], 3, RetryPolicies::default());
    assert!(left.is_empty(), "{left:?}");
    let mut seen: Vec<(u64, u32, String)> = outputs
        .iter()
        .map(|(t, o)| (*t, captured(o).reader(), json_of(captured(o))["properties"]["of"].as_str().unwrap().to_string()))
        .collect();
    seen.sort();
    assert_eq!(seen, [(0, 7, "a,c".to_string()), (1, 8, "b".to_string())]);
}

#[test]
fn a_retry_of_what_the_last_flush_captured_still_runs_and_captures() {
    // The input ends; the forced flush exports it and captures `batch`, which is buffered and
    // exported in turn: that export fails once (RetryError) and the retry, past its hold (0 ms
    // here), no longer holds the epoch. The run must still wait for it, and what it captures
    // is written (at the floor, in a later epoch) rather than lost.
    let code = "const { RetryError } = require('@posthog/plugin-scaffold')\n\
                let failed = false\n\
                exports.exportEvents = async (events) => {\n\
                  if (events.some((e) => e.event === 'start')) await posthog.capture('batch', { distinct_id: 'x' })\n\
                  if (events.some((e) => e.event === 'batch')) {\n\
                    if (!failed) { failed = true; throw new RetryError('later') }\n\
                    await posthog.capture('done', { distinct_id: 'x' })\n\
                  }\n\
                }";
    let policies = RetryPolicies {
        export_events: RetryPolicy { base: Duration::from_millis(1), ..RetryPolicy::export_events() },
        hold: Duration::ZERO,
        ..RetryPolicies::default()
    };
    let (outputs, left) = deferred_over(code, &[("start", "a", 7, 0)], 3, policies);
    assert!(left.is_empty(), "{left:?}");
    let names: Vec<String> = outputs.iter().map(|(_, o)| json_of(captured(o))["event"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["batch", "done"], "{outputs:#?}");
    assert_eq!(outputs[0].0, 0, "the batch's capture holds its epoch");
}

#[test]
fn a_batch_counts_the_fewest_hops_among_its_events() {
    // A batch mixing an input event (0 hops) with a captured one (2 hops) captures at 1 hop:
    // with max_capture_hops = 1 its capture is kept (a batch of captured events only is what a
    // loop through exportEvents makes, and that one is stopped: the second test here).
    let code = "exports.exportEvents = async (events) => { if (events.some((e) => e.event === 'start')) await posthog.capture('batch', { distinct_id: 'x' }) }";
    let (outputs, left) = deferred_over(code, &[("start", "a", 7, 0), ("start", "b", 7, 2)], 1, RetryPolicies::default());
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(outputs.len(), 1, "{outputs:#?}");
    assert!(matches!(captured(&outputs[0].1), ChainResult::Kept(ev) if ev.hops == 1), "{outputs:#?}");
    let (outputs, _) = deferred_over(code, &[("start", "b", 7, 1)], 1, RetryPolicies::default());
    match captured(&outputs[0].1) {
        ChainResult::Failed { hops: 2, letter, .. } => assert_eq!(letter.source, CAPTURE_SOURCE),
        other => panic!("a batch of captured events only captures one hop deeper: {other:?}"),
    }
}
