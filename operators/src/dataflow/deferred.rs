//! `run_deferred`: the `onEvent` / `exportEvents` sink, with retries that hold the frontier.
//!
//! A retry is not a sleeping thread. The record keeps a capability for its epoch and the
//! operator asks to be woken when it is due (`activate_after`); other records keep flowing
//! meanwhile. Events sitting in an export buffer are held the same way, by one capability at
//! the earliest buffered epoch. So the output frontier passes an epoch only when every
//! `onEvent` and `exportEvents` call for its events has succeeded or given up — and only then
//! may a Kafka source commit that epoch's offsets.
//!
//! Up to a point: a retry holds its capability for [`RetryPolicies::hold`] at most (10 s by
//! default). One broken webhook must not hold every partition's commit for the whole retry
//! window (155 s for `onEvent`). Past the hold, the retry lives on in the durable queue (where
//! it already is: a crash resumes it) and in memory, without a capability: its epoch may
//! complete. Should it give up later, its dead letter goes out at a `floor` capability the
//! operator keeps at its input frontier, so the dead letter is still written, in a later epoch.
//! At the end of the input the floor stays while any retry is owed, so a run still ends only
//! when every retry has succeeded or given up (or on a stop, which leaves them queued).
//!
//! [`RetryPolicies::hold`]: crate::plugin::deferred::RetryPolicies::hold
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
//! use operators::plugin::deferred::FinalEvent;
//! use timely::dataflow::operators::{Input, Inspect, Probe};
//!
//! timely::execute(timely::Config::thread(), |worker| {
//!     let store = Arc::new(state::MemoryStore::new());
//!     let services = HostServices::new(store.clone(), None, Arc::new(MemoryLogSink::default()), Duration::from_secs(1));
//!     let plugins = WorkerPlugins::new(Limits::default(), Arc::new(vec![]), services).unwrap();
//!     let work = Rc::new(RefCell::new(DeferredWork::new(Rc::new(RefCell::new(plugins)), RetryPolicies::default(), store)));
//!     let letters = Rc::new(RefCell::new(Vec::new()));
//!     let sink = letters.clone();
//!     let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
//!         let (input, events) = scope.new_input::<Vec<FinalEvent>>();
//!         let probe = events.run_deferred(work).inspect(move |e| sink.borrow_mut().push(e.clone())).probe().0;
//!         (input, probe)
//!     });
//!     input.send(FinalEvent { team: 1, hops: 0, position: 0, reader: 0, json: r#"{"uuid":"u","event":"e","team_id":1}"#.to_string() });
//!     input.advance_to(1);
//!     while probe.less_than(&1) {
//!         worker.step();
//!     }
//!     // No plugin, nothing owed: epoch 0 completed with no dead letter.
//!     assert!(letters.borrow().is_empty());
//! })
//! .unwrap();
//! ```

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::operator::Operator;

use crate::plugin::deferred::{DeferredWork, Exhausted, FinalEvent, Step, Task, millis};

/// Runs `onEvent` and `exportEvents` for final events, retrying on delayed capabilities.
pub trait RunDeferred<'scope> {
    /// Takes the events that left the chain and returns the calls that failed for good.
    fn run_deferred(self, work: Rc<RefCell<DeferredWork>>) -> Stream<'scope, u64, Vec<Exhausted>>;
}

/// A retry waiting for its time, holding its epoch open until `held_until` (then `cap` is
/// `None`; `held_until` is `None` when the hold never ends). Times are milliseconds on the
/// worker's clock ([`DeferredWork::now_ms`]).
struct Pending {
    due: u64,
    cap: Option<Capability<u64>>,
    held_until: Option<u64>,
    task: Task,
}

/// When a hold that starts at `now` ends (`None`: never, for a hold too long to represent,
/// such as `Duration::MAX`).
fn hold_ends(now: u64, hold: Duration) -> Option<u64> {
    now.checked_add(millis(hold))
}

impl<'scope> RunDeferred<'scope> for Stream<'scope, u64, Vec<FinalEvent>> {
    fn run_deferred(self, work: Rc<RefCell<DeferredWork>>) -> Stream<'scope, u64, Vec<Exhausted>> {
        let scope = self.scope();
        self.unary_frontier(Pipeline, "RunDeferred", move |initial, info| {
            let activator = scope.activator_for(info.address.clone());
            let waker = activator.clone();
            work.borrow_mut().set_waker(Box::new(move || waker.activate()));
            let hold = work.borrow().retry_hold();
            // Retries left by an earlier run resume now, under the initial capability.
            let (recovered, unreadable) = work.borrow_mut().recover(*initial.time());
            let held_until = hold_ends(work.borrow().now_ms(), hold);
            let mut pending: Vec<Pending> =
                recovered.into_iter().map(|(due, task)| Pending { due, cap: Some(initial.clone()), held_until, task }).collect();
            // Unreadable ones leave as dead letters at the first activation.
            let mut unreadable: Vec<(Option<Capability<u64>>, Exhausted)> =
                unreadable.into_iter().map(|e| (Some(initial.clone()), e)).collect();
            if !pending.is_empty() || !unreadable.is_empty() {
                activator.activate();
            }
            // Kept at the input frontier: where the dead letters of retries past their hold go.
            let mut floor: Option<Capability<u64>> = Some(initial);
            let mut buffer_cap: Option<Capability<u64>> = None;
            move |(input, frontier), output| {
                let mut gave_up: Vec<(Option<Capability<u64>>, Exhausted)> = std::mem::take(&mut unreadable);
                let arrived = work.borrow().now_ms();
                input.for_each(|cap, data| {
                    let epoch = *cap.least().expect("a batch has a time");
                    if buffer_cap.as_ref().is_none_or(|b| *b.time() > epoch) {
                        buffer_cap = Some(cap.delayed(&epoch, 0));
                    }
                    for event in data.drain(..) {
                        let steps = work.borrow_mut().event(epoch, &event);
                        for step in steps.into_iter().filter(|s| !matches!(s, Step::Done)) {
                            let held = buffer_cap.as_ref().expect("set above").delayed(&step_epoch(&step, epoch));
                            place(step, Some(held), hold_ends(arrived, hold), &mut pending, &mut gave_up);
                        }
                    }
                });
                if work.borrow().stopping() {
                    // Pending retries stay in the durable queue; their capabilities go.
                    pending.clear();
                }
                let now = work.borrow().now_ms();
                // Due retries: run them now; a further failure keeps the same capability.
                let (due, waiting): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut pending).into_iter().partition(|p| p.due <= now);
                pending = waiting;
                for p in due {
                    let step = work.borrow_mut().run(p.task);
                    place(step, p.cap, p.held_until, &mut pending, &mut gave_up);
                }
                // Export buffers due by time, or all of them once no input can come.
                let stopping = work.borrow().stopping();
                let steps = work.borrow_mut().flush(now, frontier.is_empty() || stopping);
                for step in steps.into_iter().filter(|s| !matches!(s, Step::Done)) {
                    let epoch = step_epoch(&step, 0);
                    let held = buffer_cap.as_ref().expect("buffered events hold a capability").delayed(&epoch);
                    place(step, Some(held), hold_ends(now, hold), &mut pending, &mut gave_up);
                }
                if stopping {
                    pending.clear();
                }
                // Retries past their hold let their epochs go (they stay in the durable queue).
                let now = work.borrow().now_ms();
                for p in pending.iter_mut().filter(|p| p.cap.is_some() && p.held_until.is_some_and(|t| t <= now)) {
                    tracing::debug!(config = %p.task.config_id, epoch = p.task.epoch, "a retry outlived its hold: its epoch may complete");
                    p.cap = None;
                }
                // The floor follows the input frontier.
                if let (Some(t), Some(f)) = (frontier.frontier().iter().min(), floor.as_mut())
                    && f.time() < t
                {
                    f.downgrade(t);
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
                    let cap = cap.as_ref().or(floor.as_ref()).expect("the floor outlives every released retry");
                    output.session(cap).give(exhausted);
                }
                // Once no input can come, the floor stays while any retry is owed: a retry that
                // holds its epoch now may be released later and still need it.
                if frontier.is_empty() && pending.is_empty() {
                    floor = None;
                }
                let holds = pending.iter().filter(|p| p.cap.is_some()).filter_map(|p| p.held_until);
                let next = pending.iter().map(|p| p.due).chain(holds).chain(work.borrow().next_flush()).min();
                if let Some(next) = next {
                    activator.activate_after(Duration::from_millis(next.saturating_sub(work.borrow().now_ms())));
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

fn place(
    step: Step,
    cap: Option<Capability<u64>>,
    held_until: Option<u64>,
    pending: &mut Vec<Pending>,
    gave_up: &mut Vec<(Option<Capability<u64>>, Exhausted)>,
) {
    match step {
        Step::Done => {}
        Step::Retry(due, task) => pending.push(Pending { due, cap, held_until, task }),
        Step::GaveUp(e) => gave_up.push((cap, e)),
    }
}
