//! `write_dead_letters`: the dead-letter sink. Lines that are not events, chains that failed,
//! `onEvent`/`exportEvents` work that gave up: each letter is written to the worker's dead-letter
//! output at its epoch as a [`dead_letter_record`] (the letter as JSON, its reason and plugin
//! failure as headers) and passed on unchanged, so a probe after it sees the epoch complete only
//! once its letters are written.
//!
//! ```
//! use std::cell::RefCell;
//! use std::rc::Rc;
//! use operators::dataflow::write_letters::WriteDeadLetters;
//! use operators::event::DeadLetter;
//! use operators::output::{FirstError, MemorySink, RecordSink, SharedSink};
//! use timely::dataflow::operators::{Input, Probe};
//!
//! // A sink that works, and one whose disk is full.
//! for fail_with in [None, Some("disk full".to_string())] {
//!     let failing = fail_with.clone();
//!     let (outcome, written) = timely::execute_directly(move |worker| {
//!         let memory = MemorySink { fail_with: failing, ..MemorySink::default() };
//!         let sink: SharedSink = Rc::new(RefCell::new(Box::new(memory.clone()) as Box<dyn RecordSink>));
//!         let errors = FirstError::default();
//!         let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
//!             let (input, letters) = scope.new_input::<Vec<DeadLetter>>();
//!             (input, letters.write_dead_letters(&sink, &errors, |_| {}).probe().0)
//!         });
//!         let letter = |position| DeadLetter {
//!             source: "in.jsonl".into(), position, reason: "not JSON".into(), raw: "{".into(), raw_base64: None, failure: None,
//!         };
//!         input.send(letter(7));
//!         input.advance_to(3);
//!         input.send(letter(9));
//!         input.close();
//!         while !probe.done() {
//!             worker.step();
//!         }
//!         let written = memory.written.borrow().clone();
//!         (errors.check().map_err(|e| e.to_string()), written)
//!     });
//!     match fail_with {
//!         None => {
//!             assert_eq!(outcome, Ok(()));
//!             let at: Vec<(u64, &str)> = written.iter().map(|(t, r)| (*t, r.headers[2].1.as_str())).collect();
//!             assert_eq!(at, [(0, "7"), (3, "9")], "each letter at its epoch, its position in a header");
//!             assert_eq!(written[0].1.headers[0], ("reason", "not JSON".to_string()));
//!         }
//!         // The first error is kept for the worker loop, which fails the run with it.
//!         Some(why) => assert_eq!((outcome, written.len()), (Err(why), 0)),
//!     }
//! }
//! ```

use timely::dataflow::Stream;
use timely::dataflow::operators::core::Inspect;

use crate::event::DeadLetter;
use crate::output::{FirstError, SharedSink, write_letters};

/// The dead-letter sink.
pub trait WriteDeadLetters<'scope> {
    /// Writes each letter to `sink` at its epoch (a failure is kept in `errors`), counts them
    /// with `written`, and passes them on.
    fn write_dead_letters(self, sink: &SharedSink, errors: &FirstError, written: impl Fn(u64) + 'static) -> Self;
}

impl<'scope> WriteDeadLetters<'scope> for Stream<'scope, u64, Vec<DeadLetter>> {
    fn write_dead_letters(self, sink: &SharedSink, errors: &FirstError, written: impl Fn(u64) + 'static) -> Self {
        let (sink, errors) = (sink.clone(), errors.clone());
        self.inspect_core(move |batch: Result<(_, &Vec<DeadLetter>), _>| {
            if let Ok((stamp, letters)) = batch {
                errors.keep(write_letters(&sink, stamp.least().copied().unwrap_or_default(), letters));
                written(letters.len() as u64);
            }
        })
    }
}
