//! Where events come from and where results go, behind two small traits, so the dataflow does
//! not care whether it reads a recorded log or Kafka.
//!
//! A worker owns one [`EventSource`] and one [`RecordSink`] per output. The worker loop asks the
//! source for a batch per epoch, and tells it when every epoch before a frontier is complete:
//! outputs written, `onEvent`/`exportEvents` work and retries done. A Kafka source commits its
//! offsets (or a transaction) there; a recorded log has nothing to do.

use operators::sync::lock;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;

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

/// What became of the outputs of earlier epochs ([`EventSource::take_settled`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// Every output of the epochs below this one survives a crash from now on.
    Below(u64),
    /// The outputs of the epochs below this one that had not settled were dropped (exactly-once
    /// Kafka, after a rewind): their input is read again, but what jobs captured into them is
    /// not made again unless the jobs run again.
    DroppedBelow(u64),
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
    /// What became of the outputs since the last call, in the order it happened; every epoch
    /// before `frontier` is complete. A recorded log says nothing: its outputs settle in a
    /// checkpoint, or (a run without) when the worker loop flushes them.
    fn take_settled(&mut self, _frontier: u64) -> Vec<Settled> {
        Vec::new()
    }
    /// Total input size in bytes, when known (for the progress line).
    fn size_hint(&self) -> Option<u64> {
        None
    }
}

pub use operators::output::{OutRecord, RecordSink, SharedSink};

/// A JSON-lines output shared by the workers of this process.
pub type SharedWriter = Arc<Mutex<Box<dyn Write + Send>>>;

/// Opens `path` for writing (`-` is standard output), creating its folder; an existing file is
/// truncated, or kept and appended to with `append`.
pub fn open_output_with(path: &Path, append: bool) -> anyhow::Result<SharedWriter> {
    if path.as_os_str() == "-" {
        return Ok(Arc::new(Mutex::new(Box::new(std::io::stdout()))));
    }
    let file = create_file(path, append)?;
    Ok(Arc::new(Mutex::new(Box::new(std::io::BufWriter::with_capacity(1 << 20, file)))))
}

/// Opens `path` for writing, truncating it (`-` is standard output).
pub fn open_output(path: &Path) -> anyhow::Result<SharedWriter> {
    open_output_with(path, false)
}

fn create_file(path: &Path, append: bool) -> anyhow::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create folder {}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.create(true);
    if append {
        options.append(true);
    } else {
        options.write(true).truncate(true);
    }
    options.open(path).with_context(|| format!("cannot {} {}", if append { "open" } else { "create" }, path.display()))
}

/// One of the data outputs (processed events, dead letters), shared by the workers of this
/// process. It counts the bytes in the file and, when the run keeps checkpoints
/// (crate::resume), remembers which epoch wrote each byte range until that epoch is complete:
/// what a resumed run must cut out again.
pub struct OutputFile {
    /// Its path, for errors (`-` for standard output).
    name: String,
    writer: Box<dyn Write + Send>,
    /// Bytes in the file: what it held when opened plus what was written since (flushed or not).
    len: u64,
    /// `(epoch, start, end)` of the writes since the last checkpoint, in write order; `None` when
    /// not tracked.
    spans: Option<Vec<(u64, u64, u64)>>,
    /// A write failed: `len` and `spans` may no longer match the file, so no checkpoint may be
    /// taken from them (the run stops with the error anyway).
    failed: bool,
}

/// An [`OutputFile`] shared by the workers of this process.
pub type SharedOutput = Arc<Mutex<OutputFile>>;

impl OutputFile {
    /// Opens `path` (`-` is standard output, never tracked): truncated, or appended to with
    /// `append`; with `track`, the epochs of byte ranges are kept until [`OutputFile::mark`].
    pub fn open(path: &Path, append: bool, track: bool) -> anyhow::Result<SharedOutput> {
        if path.as_os_str() == "-" {
            let writer = Box::new(std::io::stdout());
            return Ok(Arc::new(Mutex::new(OutputFile { name: "-".into(), writer, len: 0, spans: None, failed: false })));
        }
        let file = create_file(path, append)?;
        let len = file.metadata().with_context(|| format!("cannot read the size of {}", path.display()))?.len();
        let writer = Box::new(std::io::BufWriter::with_capacity(1 << 20, file));
        let name = path.display().to_string();
        Ok(Arc::new(Mutex::new(OutputFile { name, writer, len, spans: track.then(Vec::new), failed: false })))
    }

    /// Writes one line per value, as written by `epoch`.
    pub fn write_lines(&mut self, epoch: u64, values: &mut dyn Iterator<Item = &str>) -> anyhow::Result<()> {
        let start = self.len;
        for v in values {
            let written = self.writer.write_all(v.as_bytes()).and_then(|()| self.writer.write_all(b"\n"));
            if let Err(e) = written {
                self.failed = true;
                return Err(e).with_context(|| format!("cannot write output {}", self.name));
            }
            self.len += v.len() as u64 + 1;
        }
        if let Some(spans) = self.spans.as_mut().filter(|_| self.len > start) {
            match spans.last_mut() {
                Some(last) if last.0 == epoch && last.2 == start => last.2 = self.len,
                _ => spans.push((epoch, start, self.len)),
            }
        }
        Ok(())
    }

    /// Hands everything written to the operating system.
    pub fn flush(&mut self) -> anyhow::Result<()> {
        let flushed = self.writer.flush();
        self.failed |= flushed.is_err();
        flushed.with_context(|| format!("cannot flush output {}", self.name))
    }

    /// For a checkpoint at `frontier` (every epoch before it is complete): flushes, forgets the
    /// ranges of complete epochs, and returns the length and the ranges (merged where adjacent)
    /// still owed to incomplete epochs: a resumed run cuts those and everything past the length.
    pub fn mark(&mut self, frontier: u64) -> anyhow::Result<(u64, Vec<(u64, u64)>)> {
        if self.failed {
            anyhow::bail!("an earlier write to this output failed: no checkpoint is taken from it");
        }
        self.flush()?;
        let Some(spans) = self.spans.as_mut() else { return Ok((self.len, Vec::new())) };
        spans.retain(|s| s.0 >= frontier);
        let mut cut: Vec<(u64, u64)> = Vec::new();
        for &(_, start, end) in spans.iter() {
            match cut.last_mut() {
                Some(last) if last.1 == start => last.1 = end,
                _ => cut.push((start, end)),
            }
        }
        Ok((self.len, cut))
    }
}

/// A data output written by all workers of the process.
pub struct FileSink(pub SharedOutput);

impl RecordSink for FileSink {
    fn write(&mut self, epoch: u64, records: &[OutRecord]) -> anyhow::Result<()> {
        self.write_values(epoch, &mut records.iter().map(|r| r.value.as_str()))
    }

    fn write_values(&mut self, epoch: u64, values: &mut dyn Iterator<Item = &str>) -> anyhow::Result<()> {
        lock(&self.0).write_lines(epoch, values)
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        lock(&self.0).flush()
    }
}

/// Files every worker of the process shares, opened once.
#[derive(Clone)]
pub struct SharedFiles {
    /// Processed events.
    pub events: SharedOutput,
    /// Dead letters.
    pub dead_letters: SharedOutput,
}

impl SharedFiles {
    /// Opens the data outputs at `events` and `dead_letters`: truncated, or appended to with
    /// `append` (a resumed run, after crate::resume cut them back); with `track`, for
    /// checkpoints.
    pub fn open(events: &Path, dead_letters: &Path, append: bool, track: bool) -> anyhow::Result<Self> {
        Ok(Self { events: OutputFile::open(events, append, track)?, dead_letters: OutputFile::open(dead_letters, append, track)? })
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
