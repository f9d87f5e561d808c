//! Where events come from and where results go, behind two small traits, so the dataflow does
//! not care whether it reads a recorded log or Kafka.
//!
//! A worker owns one [`EventSource`] and one [`RecordSink`] per output. The worker loop asks the
//! source for a batch per epoch, and tells it when every epoch before a frontier is complete:
//! outputs written, `onEvent`/`exportEvents` work and retries done. A Kafka source commits its
//! offsets (or a transaction) there; a recorded log has nothing to do.

use std::cell::RefCell;
use std::io::Write;
use std::path::Path;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;

use crate::config::{InputKind, PipelineConfig};
use crate::run::SliceReader;

/// What one poll returned.
#[derive(Debug, Default)]
pub struct Polled {
    /// Records as (position, bytes): a byte offset in a log, an offset in a partition.
    pub records: Vec<(u64, Vec<u8>)>,
    /// Bytes read (for the progress line).
    pub bytes: u64,
    /// No record will ever come again (the end of a recorded log).
    pub exhausted: bool,
    /// Lines that held only whitespace: skipped, counted here (not events, not dead letters).
    pub blank: u64,
}

/// Where a source stands after its input was reported exhausted ([`EventSource::release`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// It holds nothing anyone waits for: the worker may finish.
    Done,
    /// Not yet (epochs it read are still being processed, or a commit is to be retried): ask
    /// again next round.
    Waiting,
    /// The input is not exhausted after all (a record arrived, or a rebalance gave this worker
    /// partitions to read): poll again.
    Resume,
}

/// A worker's input.
pub trait EventSource {
    /// Names the source in dead letters (`source` field).
    fn name(&self) -> String;
    /// Up to `max` records, which will carry timestamp `epoch`. A live source returns no records
    /// (and not `exhausted`) when nothing is waiting.
    fn poll(&mut self, epoch: u64, max: usize) -> anyhow::Result<Polled>;
    /// Every record of every epoch before `frontier` is fully processed.
    fn complete(&mut self, frontier: u64) -> anyhow::Result<()>;
    /// Called once per round of the worker loop after `poll` reported the input exhausted,
    /// until it returns [`Release::Done`] or [`Release::Resume`]; `epoch` is the loop's next
    /// epoch and every epoch before `frontier` is complete. A source that holds something other
    /// workers or processes wait for lets go of it here, once what it read is committed: a
    /// Kafka worker leaves its consumer group, so that a member joining later is not held up by
    /// a worker that no longer polls.
    fn release(&mut self, _epoch: u64, _frontier: u64) -> anyhow::Result<Release> {
        Ok(Release::Done)
    }
    /// Total input size in bytes, when known (for the progress line).
    fn size_hint(&self) -> Option<u64> {
        None
    }
}

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
    /// Makes everything written so far durable (or at least handed over).
    fn flush(&mut self) -> anyhow::Result<()>;
}

/// A worker's sinks, shared between the dataflow's operators and the worker loop.
pub type SharedSink = Rc<RefCell<Box<dyn RecordSink>>>;

/// A JSON-lines output shared by the workers of this process.
pub type SharedWriter = Arc<Mutex<Box<dyn Write + Send>>>;

/// Opens `path` for writing (`-` is standard output), creating its folder.
pub fn open_output(path: &Path) -> anyhow::Result<SharedWriter> {
    if path.as_os_str() == "-" {
        return Ok(Arc::new(Mutex::new(Box::new(std::io::stdout()))));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create folder {}", dir.display()))?;
    }
    let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(Arc::new(Mutex::new(Box::new(std::io::BufWriter::with_capacity(1 << 20, file)))))
}

/// A JSON-lines file written by all workers of the process.
pub struct FileSink(pub SharedWriter);

impl RecordSink for FileSink {
    fn write(&mut self, epoch: u64, records: &[OutRecord]) -> anyhow::Result<()> {
        self.write_values(epoch, &mut records.iter().map(|r| r.value.as_str()))
    }

    fn write_values(&mut self, _epoch: u64, values: &mut dyn Iterator<Item = &str>) -> anyhow::Result<()> {
        let mut w = self.0.lock().expect("output lock");
        for v in values {
            writeln!(w, "{v}").context("cannot write output")?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.0.lock().expect("output lock").flush().context("cannot flush output")
    }
}

/// A worker's share of a recorded JSON-lines log.
pub struct LogSource {
    reader: SliceReader,
    name: String,
    size: u64,
}

impl LogSource {
    /// The share of worker `index` of `peers`.
    pub fn open(path: &Path, index: usize, peers: usize) -> anyhow::Result<Self> {
        let reader = SliceReader::open(path, index, peers).with_context(|| format!("cannot read {}", path.display()))?;
        let size = std::fs::metadata(path)?.len();
        Ok(Self { reader, name: path.display().to_string(), size })
    }
}

impl EventSource for LogSource {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn poll(&mut self, _epoch: u64, max: usize) -> anyhow::Result<Polled> {
        let batch = self.reader.next_batch(max)?;
        Ok(Polled { records: batch.records, bytes: batch.bytes, exhausted: batch.done, blank: batch.blank })
    }

    fn complete(&mut self, _frontier: u64) -> anyhow::Result<()> {
        Ok(())
    }

    fn size_hint(&self) -> Option<u64> {
        Some(self.size)
    }
}

/// Files every worker of the process shares, opened once.
#[derive(Clone)]
pub struct SharedFiles {
    /// Processed events.
    pub events: SharedWriter,
    /// Dead letters.
    pub dead_letters: SharedWriter,
}

impl SharedFiles {
    /// Opens the configured output files.
    pub fn open(config: &PipelineConfig) -> anyhow::Result<Self> {
        Ok(Self { events: open_output(&config.output.events)?, dead_letters: open_output(&config.output.dead_letters)? })
    }
}

/// One worker's input and outputs.
pub struct WorkerIo {
    /// The input.
    pub source: Box<dyn EventSource>,
    /// Processed events.
    pub events: SharedSink,
    /// Dead letters.
    pub dead_letters: SharedSink,
}

/// Opens worker `index`'s input and outputs as the configuration says; a Kafka worker reports
/// its consumer's state to `health`.
pub fn open_worker_io(
    config: &PipelineConfig,
    files: &SharedFiles,
    index: usize,
    peers: usize,
    health: &std::sync::Arc<crate::kafka::health::KafkaHealth>,
) -> anyhow::Result<WorkerIo> {
    if let (InputKind::Kafka, Some(kafka)) = (config.input.kind, &config.kafka) {
        return crate::kafka::open_worker_io(kafka, index, health.clone());
    }
    let sink = |w: &SharedWriter| -> SharedSink { Rc::new(RefCell::new(Box::new(FileSink(w.clone())))) };
    Ok(WorkerIo {
        source: Box::new(LogSource::open(&config.input.path, index, peers)?),
        events: sink(&files.events),
        dead_letters: sink(&files.dead_letters),
    })
}
