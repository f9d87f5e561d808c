//! `run_deferred`: the `onEvent` / `exportEvents` sink, with retries that hold the frontier.
//!
//! A retry is not a sleeping thread. The record keeps a capability for its epoch and the
//! operator asks to be woken when it is due (`activate_after`); other records keep flowing
//! meanwhile. Events sitting in an export buffer are held the same way, by one capability at
//! the earliest buffered epoch. So the output frontier passes an epoch only when every
//! `onEvent` and `exportEvents` call for its events has succeeded or given up — and only then
//! may a Kafka source commit that epoch's offsets.
//!
//! ```
//! use std::cell::RefCell;
//! use std::rc::Rc;
//! use std::sync::Arc;
//! use std::time::Duration;
//! use operators::dataflow::deferred::RunDeferred;
//! use operators::plugin::deferred::{DeferredWork, RetryPolicies};
//! use operators::plugin::worker::WorkerPlugins;
//! use operators::plugin::{HostServices, Limits, MemoryLogSink};
//! use timely::dataflow::operators::{Input, Probe};
//!
//! timely::execute(timely::Config::thread(), |worker| {
//!     let store = Arc::new(state::MemoryStore::new());
//!     let services = HostServices::new(store.clone(), None, Arc::new(MemoryLogSink::default()), Duration::from_secs(1));
//!     let plugins = WorkerPlugins::new(Limits::default(), Arc::new(vec![]), services).unwrap();
//!     let work = Rc::new(RefCell::new(DeferredWork::new(Rc::new(RefCell::new(plugins)), RetryPolicies::default(), store)));
//!     let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
//!         let (input, events) = scope.new_input::<Vec<(i64, u32, String)>>();
//!         let probe = events.run_deferred(work).probe().0;
//!         (input, probe)
//!     });
//!     input.send((1, 0, r#"{"uuid":"u","event":"e","team_id":1}"#.to_string()));
//!     input.advance_to(1);
//!     while probe.less_than(&1) {
//!         worker.step();
//!     }
//! })
//! .unwrap();
//! ```

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::operator::Operator;

use crate::plugin::deferred::{DeferredWork, Exhausted, Step, Task};

/// Runs `onEvent` and `exportEvents` for final events, retrying on delayed capabilities.
pub trait RunDeferred<'scope> {
    /// Takes `(team, hops, final event JSON)` and returns the calls that failed for good.
    fn run_deferred(self, work: Rc<RefCell<DeferredWork>>) -> Stream<'scope, u64, Vec<Exhausted>>;
}

/// A retry waiting for its time, holding its epoch open.
struct Pending {
    due: Instant,
    cap: Capability<u64>,
    task: Task,
}

impl<'scope> RunDeferred<'scope> for Stream<'scope, u64, Vec<(i64, u32, String)>> {
    fn run_deferred(self, work: Rc<RefCell<DeferredWork>>) -> Stream<'scope, u64, Vec<Exhausted>> {
        let scope = self.scope();
        self.unary_frontier(Pipeline, "RunDeferred", move |initial, info| {
            let activator = scope.activator_for(info.address.clone());
            let waker = activator.clone();
            work.borrow_mut().set_waker(Box::new(move || waker.activate()));
            // Retries left by an earlier run resume now, under the initial capability.
            let (recovered, unreadable) = work.borrow_mut().recover(*initial.time());
            let mut pending: Vec<Pending> = recovered.into_iter().map(|(due, task)| Pending { due, cap: initial.clone(), task }).collect();
            // Unreadable ones leave as dead letters at the first activation.
            let mut unreadable: Vec<(Capability<u64>, Exhausted)> = unreadable.into_iter().map(|e| (initial.clone(), e)).collect();
            if !pending.is_empty() || !unreadable.is_empty() {
                activator.activate();
            }
            drop(initial);
            let mut buffer_cap: Option<Capability<u64>> = None;
            move |(input, frontier), output| {
                let mut gave_up: Vec<(Capability<u64>, Exhausted)> = std::mem::take(&mut unreadable);
                input.for_each(|cap, data| {
                    let epoch = *cap.least().expect("a batch has a time");
                    if buffer_cap.as_ref().is_none_or(|b| *b.time() > epoch) {
                        buffer_cap = Some(cap.delayed(&epoch, 0));
                    }
                    for (team, hops, json) in data.drain(..) {
                        let steps = work.borrow_mut().event(epoch, team, hops, &json);
                        for step in steps.into_iter().filter(|s| !matches!(s, Step::Done)) {
                            let held = buffer_cap.as_ref().expect("set above").delayed(&step_epoch(&step, epoch));
                            place(step, held, &mut pending, &mut gave_up);
                        }
                    }
                });
                if work.borrow().stopping() {
                    // Pending retries stay in the durable queue; their capabilities go.
                    pending.clear();
                }
                let now = Instant::now();
                // Due retries: run them now; a further failure keeps the same capability.
                let (due, waiting): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut pending).into_iter().partition(|p| p.due <= now);
                pending = waiting;
                for p in due {
                    let step = work.borrow_mut().run(p.task);
                    place(step, p.cap, &mut pending, &mut gave_up);
                }
                // Export buffers due by time, or all of them once no input can come.
                let stopping = work.borrow().stopping();
                let steps = work.borrow_mut().flush(now, frontier.is_empty() || stopping);
                for step in steps.into_iter().filter(|s| !matches!(s, Step::Done)) {
                    let epoch = step_epoch(&step, 0);
                    let held = buffer_cap.as_ref().expect("buffered events hold a capability").delayed(&epoch);
                    place(step, held, &mut pending, &mut gave_up);
                }
                if stopping {
                    pending.clear();
                }
                match work.borrow().buffered_min_epoch() {
                    None => buffer_cap = None,
                    Some(min) => {
                        if let Some(b) = buffer_cap.as_mut() {
                            b.downgrade(&min.max(*b.time()));
                        }
                    }
                }
                for (cap, exhausted) in gave_up {
                    output.session(&cap).give(exhausted);
                }
                let next = pending.iter().map(|p| p.due).chain(work.borrow().next_flush()).min();
                if let Some(next) = next {
                    activator.activate_after(next.saturating_duration_since(Instant::now()));
                }
            }
        })
    }
}

/// The epoch a step's work belongs to (`fallback` for `Done`).
fn step_epoch(step: &Step, fallback: u64) -> u64 {
    match step {
        Step::Done => fallback,
        Step::Retry(_, task) => task.epoch,
        Step::GaveUp(e) => e.epoch,
    }
}

fn place(step: Step, cap: Capability<u64>, pending: &mut Vec<Pending>, gave_up: &mut Vec<(Capability<u64>, Exhausted)>) {
    match step {
        Step::Done => {}
        Step::Retry(due, task) => pending.push(Pending { due, cap, task }),
        Step::GaveUp(e) => gave_up.push((cap, e)),
    }
}
