//! What the graph's sinks write to: one [`RecordSink`] per output (processed events, dead
//! letters), a JSON-lines file or a Kafka topic behind it (the pipeline crate has both), and the
//! record a dead letter becomes.
//!
//! A sink's failure (a full disk, a record the broker refuses) must stop the run, but a timely
//! operator cannot return an error: it keeps the first one in a [`FirstError`], which the worker
//! loop checks every round, before it tells the source that an epoch is complete.

use std::cell::RefCell;
use std::rc::Rc;

use crate::event::DeadLetter;

/// One output record.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OutRecord {
    /// The JSON text.
    pub value: String,
    /// Headers (a Kafka sink sends them; a file sink ignores them).
    pub headers: Vec<(&'static str, String)>,
}

/// A worker's view of one output.
pub trait RecordSink {
    /// Writes records of `epoch`.
    fn write(&mut self, epoch: u64, records: &[OutRecord]) -> anyhow::Result<()>;
    /// Writes values without headers (processed events) of `epoch`, borrowed: the default
    /// builds records; sinks that can, write them as they are.
    fn write_values(&mut self, epoch: u64, values: &mut dyn Iterator<Item = &str>) -> anyhow::Result<()> {
        let records: Vec<OutRecord> = values.map(|v| OutRecord { value: v.to_string(), headers: Vec::new() }).collect();
        self.write(epoch, &records)
    }
    /// [`Self::write_values`] for values that stand for more than their epoch's input (what an
    /// `exportEvents` batch captured: its events may be of later epochs too), so a sink that
    /// drops a rewound epoch's outputs keeps these. The default writes them as any.
    fn write_values_kept(&mut self, epoch: u64, values: &mut dyn Iterator<Item = &str>) -> anyhow::Result<()> {
        self.write_values(epoch, values)
    }
    /// Makes everything written so far durable (or at least handed over).
    fn flush(&mut self) -> anyhow::Result<()>;
}

/// A worker's sinks, shared between the dataflow's operators and the worker loop.
pub type SharedSink = Rc<RefCell<Box<dyn RecordSink>>>;

/// The first error a sink operator met, kept for the worker loop (operators cannot return one).
#[derive(Clone, Default)]
pub struct FirstError(Rc<RefCell<Option<anyhow::Error>>>);

impl FirstError {
    /// Keeps `result`'s error unless one is kept already (the first is the cause; later ones
    /// are usually its consequences).
    pub fn keep(&self, result: anyhow::Result<()>) {
        if let Err(e) = result {
            self.0.borrow_mut().get_or_insert(e);
        }
    }

    /// The kept error, taken: the run fails with it.
    pub fn check(&self) -> anyhow::Result<()> {
        match self.0.borrow_mut().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// A dead letter as an output record: the letter as JSON, and what a consumer filters on
/// (reason, source, position; plugin, configuration, hook, attempts and error for work a
/// plugin could not do) as headers.
pub fn dead_letter_record(d: &DeadLetter) -> OutRecord {
    let mut headers = vec![("reason", d.reason.clone()), ("source", d.source.clone()), ("position", d.position.to_string())];
    if let Some(f) = &d.failure {
        headers.extend([
            ("plugin", f.plugin.clone()),
            ("plugin_config_id", f.config_id.clone()),
            ("hook", f.hook.clone()),
            ("attempts", f.attempts.to_string()),
            ("error", f.error.clone()),
        ]);
    }
    OutRecord { value: d.to_json().to_string(), headers }
}

/// Writes `letters` to `sink` as dead-letter records of `epoch`: what the dead-letter operator
/// and the worker loop (letters made outside the dataflow) both do.
pub fn write_letters(sink: &SharedSink, epoch: u64, letters: &[DeadLetter]) -> anyhow::Result<()> {
    let records: Vec<OutRecord> = letters.iter().map(dead_letter_record).collect();
    sink.borrow_mut().write(epoch, &records)
}

/// Records in memory, by epoch: for tests and doc examples.
#[derive(Clone, Default)]
pub struct MemorySink {
    /// Every record written, with its epoch, in order.
    pub written: Rc<RefCell<Vec<(u64, OutRecord)>>>,
    /// Makes the next write fail with this message (and every one after).
    pub fail_with: Option<String>,
}

impl RecordSink for MemorySink {
    fn write(&mut self, epoch: u64, records: &[OutRecord]) -> anyhow::Result<()> {
        if let Some(why) = &self.fail_with {
            anyhow::bail!("{why}");
        }
        self.written.borrow_mut().extend(records.iter().map(|r| (epoch, r.clone())));
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}
