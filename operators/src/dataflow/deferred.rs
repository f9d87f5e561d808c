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
//! At the end of the input the floor stays while any retry is owed or any export buffer holds
//! events, so a run still ends only when every retry has succeeded or given up (or on a stop,
//! which leaves them queued).
//!
//! What the calls capture (`posthog.capture` in `onEvent` or `exportEvents`) goes through its
//! chain here, at once, and out at the epoch of the events the call was for (an export batch:
//! its earliest), addressed to the worker that read them (export buffers are kept per reader,
//! so a batch's events all have one) ([`DeferredOutput::Captured`]): that epoch, and so the
//! input offsets it stands for, completes only once the captures are written — as the chain
//! stage does with what `processEvent` captures. A captured event's own `onEvent` and
//! `exportEvents` run here too (before it is written, unlike an input event's), on the plugins
//! as they are now: the chain stage may have applied configuration changes of later epochs
//! already. A retry past its hold captures at the floor, in a later epoch, with no tie to its
//! event's commit.
//!
//! [`RetryPolicies::hold`]: crate::plugin::deferred::RetryPolicies::hold
//!
//! ```
//! use std::cell::RefCell;
//! use std::rc::Rc;
//! use std::sync::Arc;
//! use std::time::Duration;
//! use operators::dataflow::chain::Captures;
//! use operators::dataflow::deferred::{DeferredOutput, RunDeferred};
//! use operators::plugin::deferred::{DeferredWork, RetryPolicies};
//! use operators::plugin::worker::WorkerPlugins;
//! use operators::plugin::{HostServices, Limits, MemoryLogSink};
//! use operators::plugin::deferred::FinalEvent;
//! use timely::dataflow::operators::vec::Map;
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
//!         let given_up = events.run_deferred(work, Captures::default()).flat_map(DeferredOutput::gave_up);
//!         let probe = given_up.inspect(move |e| sink.borrow_mut().push(e.clone())).probe().0;
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

use crate::dataflow::chain::{Captures, ChainResult, run_captured};
use crate::plugin::deferred::{DeferredWork, Exhausted, FinalEvent, Step, Task, millis};
use crate::plugin::worker::WorkerPlugins;

/// What the deferred stage puts out, at the epoch of the events it came from.
#[derive(Clone, Debug)]
pub enum DeferredOutput {
    /// A call that failed for good: its events' dead letters.
    GaveUp(Exhausted),
    /// An event `onEvent` or `exportEvents` captured, through its own chain (and its own
    /// `onEvent` and `exportEvents`), for the reader of the event whose call captured it.
    Captured(ChainResult),
    /// The same for what an `exportEvents` batch captured, which stands for the batch's later
    /// epochs as well as its earliest: a rewind of that epoch must not drop it
    /// (`RecordSink::write_values_kept`).
    CapturedByBatch(ChainResult),
}

impl DeferredOutput {
    /// The call that failed for good, if this is one.
    pub fn gave_up(self) -> Option<Exhausted> {
        match self {
            Self::GaveUp(e) => Some(e),
            Self::Captured(_) | Self::CapturedByBatch(_) => None,
        }
    }
}

/// Runs `onEvent` and `exportEvents` for final events, retrying on delayed capabilities.
pub trait RunDeferred<'scope> {
    /// Takes the events that left the chain and returns the calls that failed for good and
    /// what the calls captured, run through its chain as [`Captures`] says.
    fn run_deferred(self, work: Rc<RefCell<DeferredWork>>, captures: Captures) -> Stream<'scope, u64, Vec<DeferredOutput>>;
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

/// The operator's state between activations.
struct Stage {
    work: Rc<RefCell<DeferredWork>>,
    plugins: Rc<RefCell<WorkerPlugins>>,
    captures: Captures,
    hold: Duration,
    /// This worker: the reader of what a retry recovered from the durable queue captures.
    me: u32,
    pending: Vec<Pending>,
    /// What goes out at the end of this activation, at its capability (`None`: the floor's).
    out: Vec<(Option<Capability<u64>>, DeferredOutput)>,
    /// Held at the earliest epoch of the buffered export events.
    buffer_cap: Option<Capability<u64>>,
    /// Kept at the input frontier: where the dead letters of retries past their hold go.
    floor: Option<Capability<u64>>,
}

impl Stage {
    /// Steps of calls made for events of `epoch` or later (an event, a flushed buffer): each
    /// retry holds its epoch from `now`, under the export buffers' capability.
    fn place_new(&mut self, steps: Vec<Step>, epoch: u64, now: u64) {
        for step in steps.into_iter().filter(|s| !matches!(s, Step::Done)) {
            let held = self.buffer_cap.as_ref().expect("buffered events hold a capability").delayed(&step_epoch(&step, epoch));
            place(step, Some(held), hold_ends(now, self.hold), &mut self.pending, &mut self.out);
        }
    }

    /// Makes the export buffers' capability reach back to `epoch` (`at` is at or before it),
    /// before an event of that epoch may be buffered.
    fn hold_buffers(&mut self, at: &Capability<u64>, epoch: u64) {
        if self.buffer_cap.as_ref().is_none_or(|b| *b.time() > epoch) {
            self.buffer_cap = Some(at.delayed(&epoch));
        }
    }

    /// One event that left the chain (`at`: a capability at its epoch): its `onEvent` and
    /// export buffers, then what those calls captured.
    fn event(&mut self, at: &Capability<u64>, event: &FinalEvent, now: u64) {
        let epoch = *at.time();
        self.hold_buffers(at, epoch);
        let steps = self.work.borrow_mut().event(epoch, event);
        self.place_new(steps, epoch, now);
        self.settle(None, now);
    }

    /// A retry due now: called again; a further failure keeps its capability.
    fn retry(&mut self, p: Pending, now: u64) {
        let held = p.cap.clone();
        let step = self.work.borrow_mut().run(p.task);
        place(step, p.cap, p.held_until, &mut self.pending, &mut self.out);
        self.settle(held, now);
    }

    /// Export buffers due by time (all of them with `force`), exported now.
    fn flush(&mut self, now: u64, force: bool) {
        let steps = self.work.borrow_mut().flush(now, force);
        self.place_new(steps, 0, now);
        self.settle(None, now);
    }

    /// A capability at `epoch` (`held`, a retry's, or the export buffers'), or the floor's when
    /// neither reaches back to it: a retry past its hold, whose epoch may be complete.
    fn cap_for(&self, epoch: u64, held: Option<&Capability<u64>>) -> Option<Capability<u64>> {
        [held, self.buffer_cap.as_ref()]
            .into_iter()
            .flatten()
            .find(|c| *c.time() <= epoch)
            .map(|c| c.delayed(&epoch))
            .or_else(|| self.floor.clone())
    }

    /// What the calls made so far captured: each event through its chain, then its own
    /// `onEvent` and export buffers (and what those capture, up to the hop limit), all at the
    /// epoch of the call's events and for the reader of its first event. So that epoch — and
    /// the input offsets it stands for — completes only once they are written.
    fn settle(&mut self, held: Option<Capability<u64>>, now: u64) {
        let mut made = self.work.borrow_mut().take_made();
        let (plugins, captures) = (self.plugins.clone(), self.captures);
        while let Some(m) = made.pop() {
            let Some(at) = self.cap_for(m.epoch, held.as_ref()) else {
                // No capability is left (no input can come, nothing is owed or buffered), so no
                // call can have run; should one have, the run dead-letters what it captured, as
                // it does what teardown captures ("captured after the input closed").
                plugins.borrow_mut().leave_captured(m.events);
                continue;
            };
            // Written at the call's earliest epoch (`at`); exported and given to `onEvent` at its
            // latest (Task::latest), which a later batch holding them may hold without chaining
            // every later batch back to this one's earliest epoch.
            let latest = m.latest.max(*at.time());
            let reader = m.reader.unwrap_or(self.me);
            let mut results = Vec::new();
            run_captured(&plugins, m.events, reader, &captures, &mut |r| results.push(r), &mut |ev| {
                self.hold_buffers(&at, latest);
                let steps = self.work.borrow_mut().event(latest, ev);
                self.place_new(steps, latest, now);
                // The captured event's own calls: those for this epoch and reader go on here (out
                // at `at`), a flushed buffer's (an earlier epoch) with the rest.
                let mut same = Vec::new();
                for call in self.work.borrow_mut().take_made() {
                    if call.epoch == latest && call.reader == Some(reader) { same.extend(call.events) } else { made.push(call) }
                }
                same
            });
            let wrap = if m.batch { DeferredOutput::CapturedByBatch } else { DeferredOutput::Captured };
            self.out.extend(results.into_iter().map(|r| (Some(at.clone()), wrap(r))));
        }
    }
}

impl<'scope> RunDeferred<'scope> for Stream<'scope, u64, Vec<FinalEvent>> {
    fn run_deferred(self, work: Rc<RefCell<DeferredWork>>, captures: Captures) -> Stream<'scope, u64, Vec<DeferredOutput>> {
        let scope = self.scope();
        let me = scope.index() as u32;
        self.unary_frontier(Pipeline, "RunDeferred", move |initial, info| {
            let activator = scope.activator_for(info.address.clone());
            let waker = activator.clone();
            work.borrow_mut().set_waker(Box::new(move || waker.activate()));
            let hold = work.borrow().retry_hold();
            // Retries left by an earlier run resume now, under the initial capability.
            let (recovered, unreadable) = work.borrow_mut().recover(*initial.time());
            let held_until = hold_ends(work.borrow().now_ms(), hold);
            let pending: Vec<Pending> =
                recovered.into_iter().map(|(due, task)| Pending { due, cap: Some(initial.clone()), held_until, task }).collect();
            // Unreadable ones leave as dead letters at the first activation.
            let out: Vec<_> = unreadable.into_iter().map(|e| (Some(initial.clone()), DeferredOutput::GaveUp(e))).collect();
            if !pending.is_empty() || !out.is_empty() {
                activator.activate();
            }
            let plugins = work.borrow().plugins();
            let mut stage = Stage { work, plugins, captures, hold, me, pending, out, buffer_cap: None, floor: Some(initial) };
            move |(input, frontier), output| {
                let arrived = stage.work.borrow().now_ms();
                input.for_each(|cap, data| {
                    let at = cap.retain_least(0).expect("a batch has a time");
                    for event in data.drain(..) {
                        stage.event(&at, &event, arrived);
                    }
                });
                let stopping = stage.work.borrow().stopping();
                if stopping {
                    // Pending retries stay in the durable queue; their capabilities go.
                    stage.pending.clear();
                }
                let now = stage.work.borrow().now_ms();
                // Due retries: run them now; a further failure keeps the same capability.
                let (due, waiting): (Vec<Pending>, Vec<Pending>) =
                    std::mem::take(&mut stage.pending).into_iter().partition(|p| p.due <= now);
                stage.pending = waiting;
                for p in due {
                    stage.retry(p, now);
                }
                // Export buffers due by time, or all of them once no input can come (and again
                // at once for what the flushed calls captured, buffered meanwhile).
                let force = frontier.is_empty() || stopping;
                stage.flush(now, force);
                if force && stage.work.borrow().buffered_min_epoch().is_some() {
                    activator.activate();
                }
                if stopping {
                    stage.pending.clear();
                }
                // Retries past their hold let their epochs go (they stay in the durable queue).
                let now = stage.work.borrow().now_ms();
                for p in stage.pending.iter_mut().filter(|p| p.cap.is_some() && p.held_until.is_some_and(|t| t <= now)) {
                    tracing::debug!(config = %p.task.config_id, epoch = p.task.epoch, "a retry outlived its hold: its epoch may complete");
                    p.cap = None;
                }
                // The floor follows the input frontier.
                if let (Some(t), Some(f)) = (frontier.frontier().iter().min(), stage.floor.as_mut())
                    && f.time() < t
                {
                    f.downgrade(t);
                }
                match stage.work.borrow().buffered_min_epoch() {
                    None => stage.buffer_cap = None,
                    Some(min) => {
                        if let Some(b) = stage.buffer_cap.as_mut() {
                            b.downgrade(&min.max(*b.time()));
                        }
                    }
                }
                for (cap, item) in stage.out.drain(..) {
                    let cap = cap.as_ref().or(stage.floor.as_ref()).expect("the floor outlives every released retry");
                    output.session(cap).give(item);
                }
                // Once no input can come, the floor stays while any retry is owed: a retry that
                // holds its epoch now may be released later and still need it.
                // (Nor while export buffers hold events: captured during the forced flush, their
                // export, or its retry, is still to come.)
                if frontier.is_empty() && stage.pending.is_empty() && stage.work.borrow().buffered_min_epoch().is_none() {
                    stage.floor = None;
                }
                let holds = stage.pending.iter().filter(|p| p.cap.is_some()).filter_map(|p| p.held_until);
                let next = stage.pending.iter().map(|p| p.due).chain(holds).chain(stage.work.borrow().next_flush()).min();
                if let Some(next) = next {
                    activator.activate_after(Duration::from_millis(next.saturating_sub(stage.work.borrow().now_ms())));
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
    out: &mut Vec<(Option<Capability<u64>>, DeferredOutput)>,
) {
    match step {
        Step::Done => {}
        Step::Retry(due, task) => pending.push(Pending { due, cap, held_until, task }),
        Step::GaveUp(e) => out.push((cap, DeferredOutput::GaveUp(e))),
    }
}
