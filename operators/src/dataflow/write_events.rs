//! `write_events`: the processed-events sink. Each batch of events that left the chain is written
//! to the worker's events output at its epoch, then passed on — moved, not copied — to the
//! `onEvent`/`exportEvents` stage, only the events `pass_on` asks for (the team has such a
//! plugin, or its plugins run on another worker that will decide). A sink that fails keeps its
//! error in a [`FirstError`] for the worker loop, which stops the run before any later epoch is
//! reported complete.
//!
//! ```
//! use std::cell::RefCell;
//! use std::rc::Rc;
//! use operators::dataflow::write_events::WriteEvents;
//! use operators::output::{FirstError, MemorySink, RecordSink, SharedSink};
//! use operators::plugin::deferred::FinalEvent;
//! use timely::dataflow::operators::{Input, Inspect, Probe};
//!
//! let (written, counted, passed) = timely::execute_directly(|worker| {
//!     let memory = MemorySink::default();
//!     let sink: SharedSink = Rc::new(RefCell::new(Box::new(memory.clone()) as Box<dyn RecordSink>));
//!     let errors = FirstError::default();
//!     let counted = Rc::new(RefCell::new(0u64));
//!     let count = counted.clone();
//!     let passed = Rc::new(RefCell::new(Vec::new()));
//!     let on = passed.clone();
//!     let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
//!         let (input, events) = scope.new_input::<Vec<FinalEvent>>();
//!         // Team 2 has an onEvent plugin; team 1 has none.
//!         let passed = events.write_events(&sink, &errors, move |n| *count.borrow_mut() += n, |ev| ev.team == 2);
//!         let probe = passed.inspect_core(move |batch| {
//!             if let Ok((stamp, evs)) = batch {
//!                 on.borrow_mut().extend(evs.iter().map(|ev| (*stamp.least().unwrap(), ev.position)));
//!             }
//!         }).probe().0;
//!         (input, probe)
//!     });
//!     let event = |team, position| FinalEvent { team, hops: 0, position, reader: 0, json: format!("{{\"n\":{position}}}") };
//!     input.send(event(1, 10));
//!     input.send(event(2, 11));
//!     input.advance_to(1);
//!     input.send(event(2, 12));
//!     input.close();
//!     while !probe.done() {
//!         worker.step();
//!     }
//!     errors.check().unwrap();
//!     let written: Vec<(u64, String)> = memory.written.borrow().iter().map(|(t, r)| (*t, r.value.clone())).collect();
//!     let counted = *counted.borrow();
//!     let passed = passed.borrow().clone();
//!     (written, counted, passed)
//! });
//! // Every event written at its epoch, counted once.
//! assert_eq!(written, [(0, r#"{"n":10}"#.into()), (0, r#"{"n":11}"#.into()), (1, r#"{"n":12}"#.into())]);
//! assert_eq!(counted, 3);
//! // Only team 2's go on, each at its epoch.
//! assert_eq!(passed, [(0, 11), (1, 12)]);
//! ```

use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;

use crate::output::{FirstError, SharedSink};
use crate::plugin::deferred::FinalEvent;

/// The processed-events sink.
pub trait WriteEvents<'scope> {
    /// Writes each event's JSON to `sink` at its epoch (a failure is kept in `errors`), counts
    /// them with `written`, and passes on the events `pass_on` keeps.
    fn write_events(
        self,
        sink: &SharedSink,
        errors: &FirstError,
        written: impl Fn(u64) + 'static,
        pass_on: impl FnMut(&FinalEvent) -> bool + 'static,
    ) -> Stream<'scope, u64, Vec<FinalEvent>>;
    /// [`Self::write_events`] with [`RecordSink::write_values_kept`], passing nothing on.
    ///
    /// [`RecordSink::write_values_kept`]: crate::output::RecordSink::write_values_kept
    fn write_kept_events(
        self,
        sink: &SharedSink,
        errors: &FirstError,
        written: impl Fn(u64) + 'static,
    ) -> Stream<'scope, u64, Vec<FinalEvent>>;
}

impl<'scope> WriteEvents<'scope> for Stream<'scope, u64, Vec<FinalEvent>> {
    fn write_events(
        self,
        sink: &SharedSink,
        errors: &FirstError,
        written: impl Fn(u64) + 'static,
        pass_on: impl FnMut(&FinalEvent) -> bool + 'static,
    ) -> Stream<'scope, u64, Vec<FinalEvent>> {
        write(self, sink, errors, written, pass_on, false)
    }

    fn write_kept_events(
        self,
        sink: &SharedSink,
        errors: &FirstError,
        written: impl Fn(u64) + 'static,
    ) -> Stream<'scope, u64, Vec<FinalEvent>> {
        write(self, sink, errors, written, |_| false, true)
    }
}

fn write<'scope>(
    events: Stream<'scope, u64, Vec<FinalEvent>>,
    sink: &SharedSink,
    errors: &FirstError,
    written: impl Fn(u64) + 'static,
    mut pass_on: impl FnMut(&FinalEvent) -> bool + 'static,
    kept: bool,
) -> Stream<'scope, u64, Vec<FinalEvent>> {
    let (sink, errors) = (sink.clone(), errors.clone());
    events.unary(Pipeline, if kept { "WriteKeptEvents" } else { "WriteEvents" }, move |_, _| {
        move |input, output| {
            input.for_each(|cap, data: &mut Vec<FinalEvent>| {
                let Some(out) = cap.retain_least(0) else { return };
                let epoch = *out.time();
                {
                    let mut values = data.iter().map(|e| e.json.as_str());
                    let mut sink = sink.borrow_mut();
                    errors.keep(if kept { sink.write_values_kept(epoch, &mut values) } else { sink.write_values(epoch, &mut values) });
                }
                written(data.len() as u64);
                let mut session = output.session(&out);
                for ev in data.drain(..) {
                    if pass_on(&ev) {
                        session.give(ev);
                    }
                }
            });
        }
    })
}
