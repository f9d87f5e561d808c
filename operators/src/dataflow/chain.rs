//! `run_chain` / `run_chain_with`: the `processEvent` chain stage. Each valid event goes through
//! its team's chain ([`WorkerPlugins::process`]) and becomes a [`ChainResult`]: kept, dropped by
//! a plugin, or failed (a dead letter), addressed to the worker that read its line.
//!
//! `run_chain_with` also takes a stream of configuration changes (the pipeline's folder of
//! configurations): events wait until every change up to their epoch is known, and a change at
//! epoch `t` is applied after every event of the epochs before `t` and before any event of `t`
//! or later — so each event's chain is all of one version, never half a change.
//!
//! ```
//! use std::cell::RefCell;
//! use std::rc::Rc;
//! use std::sync::{Arc, Mutex};
//! use std::time::Duration;
//! use operators::dataflow::chain::{ChainResult, RunChain};
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
//!             .run_chain_with(updates, plugins, apply)
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
use std::collections::BTreeMap;
use std::rc::Rc;

use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Map;

use crate::event::{DeadLetter, ValidEvent};
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
    },
    /// The chain could not be completed: a dead letter.
    Failed {
        /// The worker that read it.
        reader: u32,
        /// The event and why.
        letter: DeadLetter,
    },
}

impl ChainResult {
    /// The worker that read the event's line.
    pub fn reader(&self) -> u32 {
        match self {
            Self::Kept(ev) => ev.reader,
            Self::Dropped { reader } | Self::Failed { reader, .. } => *reader,
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

/// Runs one event's chain: the final event (or none, when dropped), or a dead letter when the
/// chain could not be completed. An event is never written out without its chain.
pub fn run_event(chain: &Rc<RefCell<WorkerPlugins>>, ev: ValidEvent) -> ChainResult {
    let mut plugins = chain.borrow_mut();
    let (team, hops, position, reader) = (ev.team_id, ev.hops, ev.position, ev.reader);
    // A team without plugins gets its event as it came, moved rather than copied (a `$snapshot`
    // goes through `process`, which counts it as skipped).
    if ev.name() != "$snapshot" && !plugins.has_chain(team) {
        return ChainResult::Kept(FinalEvent { team, hops, position, reader, json: ev.json });
    }
    match plugins.process(team, ev.name(), ev.uuid(), &ev.json, hops) {
        Ok(outcome) => match outcome.event {
            Some(json) => ChainResult::Kept(FinalEvent { team, hops, position, reader, json }),
            None => ChainResult::Dropped { reader },
        },
        Err(reason) => {
            tracing::error!(uuid = %ev.uuid(), error = %reason, "event could not complete its chain: dead-lettered");
            ChainResult::Failed {
                reader,
                letter: DeadLetter { source: "chain".into(), position, reason, raw: ev.json, raw_base64: None, failure: None },
            }
        }
    }
}

/// The `processEvent` chain stage.
pub trait RunChain<'scope> {
    /// Each event through its team's chain, as it comes.
    fn run_chain(self, plugins: Rc<RefCell<WorkerPlugins>>) -> Stream<'scope, u64, Vec<ChainResult>>;
    /// Each event through its team's chain as the configuration `changes` up to its epoch made
    /// it: `apply(plugins, change, epoch)` runs for each change at epoch `t` after the events of
    /// the epochs before `t` and before those of `t`.
    fn run_chain_with<U: Clone + 'static>(
        self,
        changes: Stream<'scope, u64, Vec<U>>,
        plugins: Rc<RefCell<WorkerPlugins>>,
        apply: impl FnMut(&mut WorkerPlugins, U, u64) + 'static,
    ) -> Stream<'scope, u64, Vec<ChainResult>>;
}

impl<'scope> RunChain<'scope> for Stream<'scope, u64, Vec<ValidEvent>> {
    fn run_chain(self, plugins: Rc<RefCell<WorkerPlugins>>) -> Stream<'scope, u64, Vec<ChainResult>> {
        self.map(move |ev| run_event(&plugins, ev))
    }

    fn run_chain_with<U: Clone + 'static>(
        self,
        changes: Stream<'scope, u64, Vec<U>>,
        plugins: Rc<RefCell<WorkerPlugins>>,
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
                                session.give(run_event(&plugins, ev));
                            }
                        }
                        _ => break,
                    }
                }
            }
        })
    }
}
