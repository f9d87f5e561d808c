//! `run_chain` / `run_chain_with`: the `processEvent` chain stage. Each valid event goes through
//! its team's chain ([`WorkerPlugins::process`]) and becomes a [`ChainResult`]: kept, dropped by
//! a plugin, or failed (a dead letter), addressed to the worker that read its line.
//!
//! Events the chain's plugins capture (`posthog.capture`) go through the chain right after the
//! event that made them, in its epoch, and their results go to the same reader ([`Captures`]):
//! so that event's epoch, its input offset with it, is complete only once its captures are
//! written too, in every delivery mode and across processes, with nothing to track beside the
//! dataflow's own progress. (What `onEvent` and `exportEvents` capture goes the same way in the
//! deferred stage, [`crate::dataflow::deferred`]; what jobs and schedules capture, back through
//! the worker loop: see the pipeline's `run.rs`.)
//!
//! `run_chain_with` also takes a stream of configuration changes (the pipeline's folder of
//! configurations): events wait until every change up to their epoch is known, and a change at
//! epoch `t` is applied after every event of the epochs before `t` and before any event of `t`
//! or later — so each event's chain is all of one version, never half a change. (Events that
//! `onEvent` or `exportEvents` captured run their chain in the deferred stage, on the plugins
//! as they are then, which may be a later version.)
//!
//! ```
//! use std::cell::RefCell;
//! use std::rc::Rc;
//! use std::sync::{Arc, Mutex};
//! use std::time::Duration;
//! use operators::dataflow::chain::{Captures, ChainResult, RunChain};
//! use operators::event::{EventLimits, parse_line};
//! use operators::plugin::worker::{ConfigChange, PluginSpec, WorkerPlugins};
//! use operators::plugin::{HostServices, Limits, MemoryLogSink, PluginDefinition};
//! use timely::dataflow::operators::{Input, Inspect, Probe};
//!
//! // A plugin that stamps its events, handed over as a change at epoch 1.
//! let folder = tempfile::tempdir().unwrap();
//! std::fs::write(folder.path().join("plugin.json"), r#"{"name":"stamp"}"#).unwrap();
//! std::fs::write(folder.path().join("index.js"), "exports.processEvent = (e) => { e.properties.stamped = true; return e }").unwrap();
//! let def = PluginDefinition::load(folder.path()).unwrap();
//! let seen = Arc::new(Mutex::new(Vec::new()));
//! let sink = seen.clone();
//! timely::execute(timely::Config::thread(), move |worker| {
//!     let services = HostServices::new(Arc::new(state::MemoryStore::new()), None, Arc::new(MemoryLogSink::default()), Duration::from_secs(1));
//!     let plugins = Rc::new(RefCell::new(WorkerPlugins::new(Limits::default(), Arc::new(vec![]), services).unwrap()));
//!     let sink = sink.clone();
//!     let (mut input, mut changes, probe) = worker.dataflow::<u64, _, _>(|scope| {
//!         let (input, events) = scope.new_input();
//!         let (changes, updates) = scope.new_input::<Vec<PluginSpec>>();
//!         let apply = |plugins: &mut WorkerPlugins, spec: PluginSpec, _epoch: u64| plugins.apply_config(ConfigChange::Upsert(spec), 1);
//!         let probe = events
//!             .run_chain_with(updates, plugins, Captures::default(), apply)
//!             .inspect(move |r: &ChainResult| match r {
//!                 ChainResult::Kept(ev) => sink.lock().unwrap().push((ev.position, ev.json.contains("stamped"))),
//!                 other => panic!("{other:?}"),
//!             })
//!             .probe()
//!             .0;
//!         (input, changes, probe)
//!     });
//!     let line = br#"{"uuid":"u","event":"e","team_id":1,"properties":{}}"#;
//!     let event = |position| parse_line(line, "doc", position, &EventLimits::default()).unwrap();
//!     input.send(event(1)); // epoch 0: no plugin yet
//!     input.advance_to(1);
//!     changes.advance_to(1);
//!     let spec = PluginSpec { id: "s".into(), def: def.clone(), teams: None, config: Default::default(), attachments: Default::default(), order: 0 };
//!     changes.send(spec); // epoch 1
//!     changes.advance_to(2);
//!     input.send(event(2)); // epoch 1: the change applies to it
//!     input.advance_to(2);
//!     while probe.less_than(&2) {
//!         worker.step();
//!     }
//! })
//! .unwrap();
//! assert_eq!(*seen.lock().unwrap(), [(1, false), (2, true)]);
//! ```

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::operator::Operator;

use crate::event::{DeadLetter, EventLimits, ValidEvent, parse_owned_line};
use crate::plugin::deferred::FinalEvent;
use crate::plugin::worker::WorkerPlugins;

/// What the chain made of one event, on its way back to the worker that read it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum ChainResult {
    /// The event as the chain left it.
    Kept(FinalEvent),
    /// A plugin dropped it (counted where it was read, with the input it was counted in).
    Dropped {
        /// The worker that read it.
        reader: u32,
        /// Its capture hops (more than 0: a captured event).
        hops: u32,
    },
    /// The chain could not be completed, or a captured event was not let in: a dead letter.
    Failed {
        /// The worker that read it.
        reader: u32,
        /// Its capture hops (more than 0: a captured event).
        hops: u32,
        /// The event and why.
        letter: DeadLetter,
    },
}

impl ChainResult {
    /// The worker that read the event's line.
    pub fn reader(&self) -> u32 {
        match self {
            Self::Kept(ev) => ev.reader,
            Self::Dropped { reader, .. } | Self::Failed { reader, .. } => *reader,
        }
    }

    /// Capture hops of the event: more than 0 for an event a plugin captured.
    pub fn hops(&self) -> u32 {
        match self {
            Self::Kept(ev) => ev.hops,
            Self::Dropped { hops, .. } | Self::Failed { hops, .. } => *hops,
        }
    }

    /// The event to write, or its dead letter; `None` when it was dropped (`on_drop` runs).
    pub fn into_result(self, on_drop: impl FnOnce()) -> Option<Result<FinalEvent, DeadLetter>> {
        match self {
            Self::Kept(ev) => Some(Ok(ev)),
            Self::Dropped { .. } => {
                on_drop();
                None
            }
            Self::Failed { letter, .. } => Some(Err(letter)),
        }
    }
}

/// How events captured in the chain are let back in.
#[derive(Clone, Copy, Debug)]
pub struct Captures {
    /// The checks a captured event passes, as a line read from the input does.
    pub limits: EventLimits,
    /// Capture generations an event may be (`runtime.max_capture_hops`); a deeper one is a
    /// dead letter, which ends a capture loop.
    pub max_hops: u32,
}

impl Default for Captures {
    fn default() -> Self {
        Captures { limits: EventLimits::default(), max_hops: 3 }
    }
}

/// The `source` of dead letters of captured events.
pub const CAPTURE_SOURCE: &str = "posthog.capture";

/// Runs one event's chain, then the chains of the events its plugins captured meanwhile (and
/// of theirs, up to `captures.max_hops`), giving each result to `give`: the final event (or
/// none, when dropped), or a dead letter when the chain could not be completed. An event is
/// never written out without its chain. Captured events go to the event's reader.
pub fn run_event(chain: &Rc<RefCell<WorkerPlugins>>, ev: ValidEvent, captures: &Captures, give: &mut impl FnMut(ChainResult)) {
    let reader = ev.reader;
    let (result, made) = chain_result(&mut chain.borrow_mut(), ev);
    give(result);
    if !made.is_empty() {
        run_captured(chain, made, reader, captures, give, &mut |_| Vec::new());
    }
}

/// Runs the chains of captured events (`made`, JSON with hop counts) for the worker `reader`,
/// then of what they capture in turn, up to `captures.max_hops`, giving each result to `give`.
/// `then` runs for each kept one before its result is given (the deferred stage's `onEvent`
/// and `exportEvents`) and returns what that captured, which goes the same way.
pub fn run_captured(
    chain: &Rc<RefCell<WorkerPlugins>>,
    made: Vec<(String, u32)>,
    reader: u32,
    captures: &Captures,
    give: &mut impl FnMut(ChainResult),
    then: &mut impl FnMut(&FinalEvent) -> Vec<(String, u32)>,
) {
    let mut made = VecDeque::from(made);
    while let Some((json, hops)) = made.pop_front() {
        let result = match admit(json, hops, reader, captures) {
            Ok(captured) => {
                let (result, more) = chain_result(&mut chain.borrow_mut(), captured);
                made.extend(more);
                if let ChainResult::Kept(ev) = &result {
                    made.extend(then(ev));
                }
                result
            }
            Err(letter) => ChainResult::Failed { reader, hops, letter },
        };
        give(result);
    }
}

/// A captured event as the chain takes it, or its dead letter: too many captures deep, or not
/// a valid event (a plugin's `distinct_id` of 2 MB, say).
fn admit(json: String, hops: u32, reader: u32, captures: &Captures) -> Result<ValidEvent, DeadLetter> {
    let json = within_hops(json, hops, captures.max_hops)?;
    let mut ev = parse_owned_line(json.into_bytes(), CAPTURE_SOURCE, 0, &captures.limits)?;
    ev.hops = hops;
    ev.reader = reader;
    Ok(ev)
}

/// A captured event `hops` captures deep, or its dead letter when that is more than `max_hops`.
pub fn within_hops(json: String, hops: u32, max_hops: u32) -> Result<String, DeadLetter> {
    if hops <= max_hops {
        return Ok(json);
    }
    tracing::warn!(hops, max_hops, "posthog.capture loop stopped: the event goes to the dead-letter output");
    Err(DeadLetter {
        source: CAPTURE_SOURCE.into(),
        position: 0,
        reason: format!("posthog.capture loop: this event is {hops} captures deep (runtime.max_capture_hops = {max_hops})"),
        raw: json,
        raw_base64: None,
        failure: None,
    })
}

/// One event through its team's chain, and what its plugins captured.
fn chain_result(plugins: &mut WorkerPlugins, ev: ValidEvent) -> (ChainResult, Vec<(String, u32)>) {
    let (team, hops, position, reader) = (ev.team_id, ev.hops, ev.position, ev.reader);
    // A team without plugins gets its event as it came, moved rather than copied (a `$snapshot`
    // goes through `process`, which counts it as skipped).
    if ev.name() != "$snapshot" && !plugins.has_chain(team) {
        return (ChainResult::Kept(FinalEvent { team, hops, position, reader, json: ev.json }), Vec::new());
    }
    match plugins.process(team, ev.name(), ev.uuid(), &ev.json, hops) {
        Ok(outcome) => {
            let result = match outcome.event {
                Some(json) => ChainResult::Kept(FinalEvent { team, hops, position, reader, json }),
                None => ChainResult::Dropped { reader, hops },
            };
            (result, outcome.captured)
        }
        Err(reason) => {
            tracing::error!(uuid = %ev.uuid(), error = %reason, "event could not complete its chain: dead-lettered");
            let letter = DeadLetter { source: "chain".into(), position, reason, raw: ev.json, raw_base64: None, failure: None };
            (ChainResult::Failed { reader, hops, letter }, Vec::new())
        }
    }
}

/// The `processEvent` chain stage.
pub trait RunChain<'scope> {
    /// Each event through its team's chain, as it comes, and what it captured after it.
    fn run_chain(self, plugins: Rc<RefCell<WorkerPlugins>>, captures: Captures) -> Stream<'scope, u64, Vec<ChainResult>>;
    /// Each event through its team's chain as the configuration `changes` up to its epoch made
    /// it: `apply(plugins, change, epoch)` runs for each change at epoch `t` after the events of
    /// the epochs before `t` and before those of `t`.
    fn run_chain_with<U: Clone + 'static>(
        self,
        changes: Stream<'scope, u64, Vec<U>>,
        plugins: Rc<RefCell<WorkerPlugins>>,
        captures: Captures,
        apply: impl FnMut(&mut WorkerPlugins, U, u64) + 'static,
    ) -> Stream<'scope, u64, Vec<ChainResult>>;
}

impl<'scope> RunChain<'scope> for Stream<'scope, u64, Vec<ValidEvent>> {
    fn run_chain(self, plugins: Rc<RefCell<WorkerPlugins>>, captures: Captures) -> Stream<'scope, u64, Vec<ChainResult>> {
        self.unary(Pipeline, "Chain", move |_, _| {
            move |input, output| {
                input.for_each(|cap, data: &mut Vec<ValidEvent>| {
                    let mut session = output.session(&cap);
                    for ev in data.drain(..) {
                        run_event(&plugins, ev, &captures, &mut |r| session.give(r));
                    }
                });
            }
        })
    }

    fn run_chain_with<U: Clone + 'static>(
        self,
        changes: Stream<'scope, u64, Vec<U>>,
        plugins: Rc<RefCell<WorkerPlugins>>,
        captures: Captures,
        mut apply: impl FnMut(&mut WorkerPlugins, U, u64) + 'static,
    ) -> Stream<'scope, u64, Vec<ChainResult>> {
        self.binary_frontier(changes, Pipeline, Pipeline, "ChainWithChanges", move |_, _| {
            let mut waiting: BTreeMap<u64, (Capability<u64>, Vec<ValidEvent>)> = BTreeMap::new();
            let mut pending: BTreeMap<u64, Vec<U>> = BTreeMap::new();
            move |(events, events_frontier), (changes, changes_frontier), output| {
                events.for_each(|cap, data: &mut Vec<ValidEvent>| {
                    let Some(cap) = cap.retain_least(0) else { return };
                    waiting.entry(*cap.time()).or_insert_with(|| (cap, Vec::new())).1.append(data);
                });
                changes.for_each(|cap, data: &mut Vec<U>| {
                    if let Some(&time) = cap.least() {
                        pending.entry(time).or_default().append(data);
                    }
                });
                loop {
                    let next_change = pending.keys().next().copied();
                    let next_events = waiting.keys().next().copied();
                    match (next_change, next_events) {
                        // Changes at `t` go before the events of `t`, once no event before `t`
                        // can come and every change at `t` is known.
                        (Some(t), e) if e.is_none_or(|e| t <= e) => {
                            if events_frontier.less_than(&t) || changes_frontier.less_equal(&t) {
                                break;
                            }
                            for change in pending.remove(&t).unwrap_or_default() {
                                apply(&mut plugins.borrow_mut(), change, t);
                            }
                        }
                        (_, Some(t)) => {
                            if changes_frontier.less_equal(&t) {
                                break;
                            }
                            let (cap, batch) = waiting.remove(&t).expect("listed above");
                            let mut session = output.session(&cap);
                            for ev in batch {
                                run_event(&plugins, ev, &captures, &mut |r| session.give(r));
                            }
                        }
                        _ => break,
                    }
                }
            }
        })
    }
}
