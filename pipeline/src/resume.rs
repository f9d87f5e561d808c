//! Resuming a recorded-log run where it stopped: `pluginflow run --resume`.
//!
//! While a run reads a recorded log into file outputs with its state on disk, it keeps a
//! [`Checkpoint`] in the state store, renewed as the probe passes further (at most every
//! [`CHECKPOINT_EVERY`], and once at the end): for each worker, the byte offset from which its
//! share of the log is still owed; for each data output, its length and the byte ranges in it
//! that epochs not yet complete wrote (workers share one file, so a late epoch's lines can sit
//! between complete ones). A resumed run cuts those ranges and everything past the length out
//! of the outputs, and each worker reads its share again from its offset. The outputs then end
//! as an uninterrupted run's would: no line twice, none missing.
//!
//! What it does not undo: plugin state. `cache` and `storage` writes of the events read again
//! happened once already (at least once, as Kafka's at-least-once mode replays them too), and
//! the plugin log and app metrics are appended to, not cut (they record what happened).
//!
//! Events that plugins capture (`posthog.capture`) outside `processEvent` (whose captures go
//! through the chain in the capturing event's epoch) go back into the input in a later epoch
//! than the event that captured them, and that event's epoch may complete first. So each worker tells
//! the checkpointer a *floor* with every report: the probe's frontier as it last looked, before
//! taking the plugins' captures. A capture it has not sent yet, or sent into an epoch not yet
//! complete, was made by an event of an epoch at or after that floor (the event's operator held
//! its epoch open while it ran). Checkpoints never pass a floor still owed, so the events that
//! captured are read again on resume instead of their captures being lost.

use operators::plugin::worker::Unsettled;
use operators::sync::lock;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use state::StateStore;

use crate::config::{InputKind, PipelineConfig};
use crate::io::SharedFiles;

/// The state store key of a recorded-log run's checkpoint.
const KEY: &str = "recorded-log-checkpoint";

/// How often a checkpoint is renewed at most while the run goes on.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// Where a data output stood at a checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputMark {
    /// The output file, as configured.
    pub path: PathBuf,
    /// Its length in bytes.
    pub len: u64,
    /// Byte ranges `[start, end)` below `len` written by epochs that were not complete.
    pub cut: Vec<(u64, u64)>,
    /// During a resume: the output is owed its first `len` bytes followed by this file's.
    #[serde(default)]
    pub tail: Option<PathBuf>,
}

/// Where a recorded-log run stood, kept in the state store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The input log's canonical path.
    pub input: PathBuf,
    /// Its length when the run started (the workers' shares depend on it).
    pub input_len: u64,
    /// Workers in the whole computation (`-w` × `-n`).
    pub peers: usize,
    /// Per worker (by its index in the computation): the byte offset its share is owed from.
    pub positions: BTreeMap<usize, u64>,
    /// The processed-events output.
    pub events: OutputMark,
    /// The dead-letter output.
    pub dead_letters: OutputMark,
    /// The run read its whole input and finished.
    pub complete: bool,
}

/// What `--resume` found in the state store.
#[derive(Debug)]
pub enum Plan {
    /// No checkpoint: the run starts at the beginning.
    Fresh,
    /// The recorded run finished: nothing to do.
    Finished,
    /// Continue from this checkpoint.
    From(Box<Checkpoint>),
}

/// Whether this run keeps checkpoints: a recorded log into files (not standard output), with
/// its state on disk (a checkpoint in memory would not outlive the process).
pub fn enabled(config: &PipelineConfig) -> bool {
    matches!(config.input.kind, InputKind::File)
        && !config.input.follow
        && !config.state.memory
        && config.output.events.as_os_str() != "-"
        && config.output.dead_letters.as_os_str() != "-"
}

/// The checkpoint of an earlier run over this state, if any (unreadable is an error).
pub fn recorded(store: &dyn StateStore) -> anyhow::Result<Option<Checkpoint>> {
    match store.pipeline_get(KEY).context("cannot read the checkpoint from the state store")? {
        None => Ok(None),
        Some(bytes) if bytes.is_empty() => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).context("the checkpoint in the state store cannot be read"),
    }
}

/// Forgets the checkpoint: a run that starts over is about to truncate the outputs it described.
pub fn forget(store: &dyn StateStore) -> anyhow::Result<()> {
    store.pipeline_put(KEY, b"").context("cannot clear the checkpoint in the state store")
}

/// Drops the retries still queued in the state: with checkpoints a retry holds its epoch until
/// done, so each queued one belongs to an epoch the resume reads again, and would otherwise run
/// twice (once from the queue, once for its event read again). Returns how many.
pub fn drop_queued_retries(store: &dyn StateStore) -> anyhow::Result<usize> {
    let queue = operators::plugin::deferred::RETRY_QUEUE;
    let items = store.queue_take_due(queue, u64::MAX, usize::MAX).context("cannot read the queued retries")?;
    for item in &items {
        store.queue_ack(queue, item.id).context("cannot drop a queued retry")?;
    }
    Ok(items.len())
}

/// Decides what `--resume` does, refusing (with the reason) when it cannot continue exactly.
pub fn plan(config: &PipelineConfig, store: &dyn StateStore, peers: usize) -> anyhow::Result<Plan> {
    if !matches!(config.input.kind, InputKind::File) {
        bail!("--resume is for a recorded log: a Kafka input resumes from its committed offsets by itself");
    }
    if config.input.follow {
        bail!("--resume cannot continue a followed log ([input] follow = true): its length is not fixed, so no checkpoint is kept");
    }
    if config.state.memory {
        bail!("--resume needs the state on disk ([state] memory = true keeps no checkpoint)");
    }
    if !enabled(config) {
        bail!("--resume needs file outputs: standard output (\"-\") cannot be cut back");
    }
    let Some(cp) = recorded(store)? else { return Ok(Plan::Fresh) };
    if cp.complete {
        return Ok(Plan::Finished);
    }
    let (input, input_len) = identify(&config.input.path)?;
    if cp.input != input {
        bail!("the checkpoint is of another input ({}), not {}", cp.input.display(), input.display());
    }
    if cp.input_len != input_len {
        bail!(
            "{} is {input_len} bytes now and was {} when the run started: the log changed, its workers' shares with it",
            input.display(),
            cp.input_len
        );
    }
    if cp.peers != peers {
        bail!(
            "the run had {} worker(s) in all and this one would have {peers}: each worker's share of the log depends on it; resume with the same -w and -n",
            cp.peers
        );
    }
    for (mark, path) in [(&cp.events, &config.output.events), (&cp.dead_letters, &config.output.dead_letters)] {
        if &mark.path != path {
            bail!("the run wrote {}, this configuration names {}", mark.path.display(), path.display());
        }
    }
    Ok(Plan::From(Box::new(cp)))
}

/// Cuts both data outputs back to what the checkpoint says is complete, in steps that survive
/// a crash (kill -9 during the resume itself): what stays after the first cut range is first
/// copied aside (`OUTPUT.resume-tail`, synced) and the checkpoint updated to say so; only then
/// is the output truncated and the copy appended. A resume that finds a copy pending finishes
/// that instead of cutting again (cutting twice would cut the wrong bytes). `cp` is updated to
/// what the outputs hold afterwards.
pub fn restore_outputs(store: &dyn StateStore, cp: &mut Checkpoint) -> anyhow::Result<()> {
    for which in [Output::Events, Output::DeadLetters] {
        if which.of(cp).cut.is_empty() && which.of(cp).tail.is_none() {
            truncate_to(which.of(cp))?;
            continue;
        }
        if which.of(cp).tail.is_none() {
            *which.of_mut(cp) = stage_tail(which.of(cp))?;
            save(store, cp)?;
        }
        *which.of_mut(cp) = append_tail(which.of(cp))?;
        save(store, cp)?;
        let _ = std::fs::remove_file(tail_path(&which.of(cp).path));
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Output {
    Events,
    DeadLetters,
}

impl Output {
    fn of(self, cp: &Checkpoint) -> &OutputMark {
        match self {
            Output::Events => &cp.events,
            Output::DeadLetters => &cp.dead_letters,
        }
    }

    fn of_mut(self, cp: &mut Checkpoint) -> &mut OutputMark {
        match self {
            Output::Events => &mut cp.events,
            Output::DeadLetters => &mut cp.dead_letters,
        }
    }
}

fn save(store: &dyn StateStore, cp: &Checkpoint) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec(cp).expect("a checkpoint serialises");
    store.pipeline_put(KEY, &bytes).context("cannot write the checkpoint to the state store")
}

/// Where [`stage_tail`] keeps what stays after the first cut range.
fn tail_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".resume-tail");
    output.with_file_name(name)
}

/// Opens an output to cut it, checking it still holds what the checkpoint recorded.
fn open_recorded(mark: &OutputMark, at_least: u64) -> anyhow::Result<Option<std::fs::File>> {
    let path = &mark.path;
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && at_least == 0 => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot open {} to resume", path.display())),
    };
    let len = file.metadata()?.len();
    if len < at_least {
        bail!(
            "{} is {len} bytes, shorter than the {at_least} the checkpoint recorded: it was changed since; cannot resume",
            path.display()
        );
    }
    Ok(Some(file))
}

/// An output without cut ranges: everything from `mark.len` on goes (idempotent).
fn truncate_to(mark: &OutputMark) -> anyhow::Result<()> {
    if let Some(file) = open_recorded(mark, mark.len)? {
        file.set_len(mark.len)?;
        file.sync_all().with_context(|| format!("cannot sync {}", mark.path.display()))?;
    }
    Ok(())
}

/// Copies what stays of `[first cut, len)` (the bytes between the cut ranges) into the tail
/// file, synced, and returns the mark that says so: the output is owed its first `len` bytes
/// (up to the first cut) followed by the tail file. The output itself is not touched.
fn stage_tail(mark: &OutputMark) -> anyhow::Result<OutputMark> {
    let Some(mut file) = open_recorded(mark, mark.len)? else { bail!("{} is missing; cannot resume", mark.path.display()) };
    let first = mark.cut.first().map_or(mark.len, |c| c.0);
    let tail = tail_path(&mark.path);
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tail).with_context(|| format!("cannot create {}", tail.display()))?);
    for (i, &(start, end)) in mark.cut.iter().enumerate() {
        let next = mark.cut.get(i + 1).map_or(mark.len, |c| c.0);
        if start > end || end > next || next > mark.len {
            bail!("the checkpoint's cut ranges of {} are out of order", mark.path.display());
        }
        file.seek(SeekFrom::Start(end))?;
        std::io::copy(&mut (&mut file).take(next - end), &mut out)?;
    }
    let out = out.into_inner().map_err(|e| e.into_error())?;
    out.sync_all().with_context(|| format!("cannot sync {}", tail.display()))?;
    Ok(OutputMark { path: mark.path.clone(), len: first, cut: Vec::new(), tail: Some(tail) })
}

/// Truncates the output to `mark.len` and appends the tail file (idempotent: a crash before the
/// checkpoint says it is done just does it again). Returns the mark of the result.
fn append_tail(mark: &OutputMark) -> anyhow::Result<OutputMark> {
    let tail = mark.tail.as_ref().expect("a staged mark");
    let Some(mut file) = open_recorded(mark, mark.len)? else { bail!("{} is missing; cannot resume", mark.path.display()) };
    let mut staged = std::fs::File::open(tail).with_context(|| format!("cannot read {} to resume", tail.display()))?;
    file.set_len(mark.len)?;
    file.seek(SeekFrom::Start(mark.len))?;
    let copied = std::io::copy(&mut staged, &mut file)?;
    file.sync_all().with_context(|| format!("cannot sync {}", mark.path.display()))?;
    Ok(OutputMark { path: mark.path.clone(), len: mark.len + copied, cut: Vec::new(), tail: None })
}

/// The input's canonical path and length.
fn identify(path: &Path) -> anyhow::Result<(PathBuf, u64)> {
    let canonical = path.canonicalize().with_context(|| format!("cannot read {}", path.display()))?;
    let len = std::fs::metadata(&canonical)?.len();
    Ok((canonical, len))
}

/// Keeps the checkpoint of this process's run up to date.
pub struct Checkpointer {
    store: Arc<dyn StateStore>,
    files: SharedFiles,
    template: Checkpoint,
    inner: Mutex<Progress>,
}

/// What the workers reported since the last checkpoint.
#[derive(Default)]
struct Progress {
    /// Per worker: where its share stood before the reads listed, and `(epoch, position after
    /// the read)` of each read since.
    reads: BTreeMap<usize, (u64, VecDeque<(u64, u64)>)>,
    /// `(epoch, floor)`: captured events went into `epoch`; the events that captured them were of
    /// epochs at or after `floor`. Kept until `epoch` is complete.
    injected: BTreeSet<(u64, u64)>,
    /// Per worker: the floor it reported last (captures it holds came from epochs at or after).
    floors: BTreeMap<usize, u64>,
    /// The frontier of the last checkpoint written, and when.
    written: Option<(u64, Instant)>,
    /// Job attempts and journaled captures whose outputs are settled only by the final
    /// checkpoint (their workers ended after the last one): acknowledged once
    /// [`Checkpointer::finish`] wrote it.
    unsettled: Vec<Unsettled>,
    /// Workers in the computation.
    peers: usize,
}

impl Checkpointer {
    /// A checkpointer for this process's run, over its data outputs `files`.
    pub fn new(config: &PipelineConfig, store: Arc<dyn StateStore>, files: SharedFiles) -> anyhow::Result<Self> {
        let (input, input_len) = identify(&config.input.path)?;
        let mark = |path: &Path| OutputMark { path: path.to_path_buf(), ..OutputMark::default() };
        let template = Checkpoint {
            input,
            input_len,
            peers: 0,
            positions: BTreeMap::new(),
            events: mark(&config.output.events),
            dead_letters: mark(&config.output.dead_letters),
            complete: false,
        };
        Ok(Self { store, files, template, inner: Mutex::new(Progress::default()) })
    }

    /// Worker `worker` of `peers` owes its share from `position` (its start, or where a resume
    /// begins). Until its first report its floor is 0: it may hold captures of any epoch.
    pub fn started(&self, worker: usize, peers: usize, position: u64) {
        let mut inner = lock(&self.inner);
        inner.peers = peers;
        inner.reads.insert(worker, (position, VecDeque::new()));
        inner.floors.insert(worker, 0);
    }

    /// Worker `worker` read up to `position` for `epoch`.
    pub fn read(&self, worker: usize, epoch: u64, position: u64) {
        let mut inner = lock(&self.inner);
        let (_, reads) = inner.reads.entry(worker).or_default();
        match reads.back_mut() {
            Some(last) if last.0 == epoch => last.1 = position,
            _ => reads.push_back((epoch, position)),
        }
    }

    /// Captured events went into the input at `epoch`; they came from events of epochs at or
    /// after `floor`.
    pub fn injected(&self, epoch: u64, floor: u64) {
        lock(&self.inner).injected.insert((epoch, floor));
    }

    /// Worker `worker` left its loop: it sends no more captures into the input.
    pub fn left(&self, worker: usize) {
        lock(&self.inner).floors.remove(&worker);
    }

    /// Worker `worker` saw every epoch before `frontier` complete; the captures it holds came
    /// from epochs at or after `floor`. Renews the checkpoint if it can move and the last one is
    /// older than [`CHECKPOINT_EVERY`].
    pub fn complete(&self, worker: usize, frontier: u64, floor: u64) -> anyhow::Result<()> {
        let mut inner = lock(&self.inner);
        inner.floors.insert(worker, floor);
        let progress = &mut *inner;
        let safe = safe_frontier(frontier, &progress.floors, &mut progress.injected);
        if let Some((at, when)) = inner.written
            && (safe <= at || when.elapsed() < CHECKPOINT_EVERY)
        {
            return Ok(());
        }
        self.write(&mut inner, safe, false)
    }

    /// Every output of the epochs below this one is in the last checkpoint written: a resumed
    /// run keeps it.
    pub fn settled_below(&self) -> u64 {
        lock(&self.inner).written.map_or(0, |(frontier, _)| frontier)
    }

    /// Keeps job attempts and journaled captures whose outputs only the final checkpoint will
    /// hold: a worker that ended hands over what it had not settled.
    pub fn settle_at_finish(&self, unsettled: Vec<Unsettled>) {
        lock(&self.inner).unsettled.extend(unsettled);
    }

    /// The run read its whole input and every epoch is complete. Then what was handed over is
    /// acknowledged (not before: a crash in between runs those jobs and sends those captures
    /// in again).
    pub fn finish(&self) -> anyhow::Result<()> {
        let mut inner = lock(&self.inner);
        self.write(&mut inner, u64::MAX, true)?;
        for item in inner.unsettled.drain(..) {
            item.settle(&*self.store);
        }
        Ok(())
    }

    fn write(&self, inner: &mut Progress, frontier: u64, complete: bool) -> anyhow::Result<()> {
        let mut cp = self.template.clone();
        cp.peers = inner.peers;
        for (worker, (base, reads)) in inner.reads.iter_mut() {
            // The last read of a complete epoch becomes the new base; later reads are kept.
            while reads.front().is_some_and(|r| r.0 < frontier) {
                *base = reads.pop_front().expect("checked").1;
            }
            cp.positions.insert(*worker, *base);
        }
        for (file, mark) in [(&self.files.events, &mut cp.events), (&self.files.dead_letters, &mut cp.dead_letters)] {
            (mark.len, mark.cut) = lock(file).mark(frontier)?;
        }
        cp.complete = complete;
        save(&*self.store, &cp)?;
        inner.written = Some((frontier, Instant::now()));
        Ok(())
    }
}

/// The frontier a checkpoint may claim: at most `frontier` and every worker's floor, and for each
/// injection of captured events either past its epoch (the captures and the events that made
/// them are both kept) or at most its floor (both are done again). Never both sides of it: the
/// captures cut while the events that made them are not read again would be lost. Drops the
/// injections it leaves behind for good (the claimable frontier only grows).
fn safe_frontier(frontier: u64, floors: &BTreeMap<usize, u64>, injected: &mut BTreeSet<(u64, u64)>) -> u64 {
    let mut safe = floors.values().copied().fold(frontier, u64::min);
    loop {
        let lowered = injected.iter().filter(|(epoch, _)| *epoch >= safe).map(|(_, floor)| *floor).fold(safe, u64::min);
        if lowered == safe {
            break;
        }
        safe = lowered;
    }
    injected.retain(|(epoch, _)| *epoch >= safe);
    safe
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(content: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, content).unwrap();
        (dir, path)
    }

    /// Cuts as a resume does, without a crash.
    fn cut_back(mark: &OutputMark) -> anyhow::Result<()> {
        if mark.cut.is_empty() {
            return truncate_to(mark);
        }
        append_tail(&stage_tail(mark)?).map(|_| ())
    }

    #[test]
    fn cutting_back_removes_the_ranges_and_the_tail_and_keeps_the_rest_in_order() {
        let (_dir, path) = file_with("a0\nb5\na1\nb6\na2\nlate\n");
        // Checkpoint length 15 (through "a2\n"), lines of incomplete epochs at [3,6) and [9,12).
        cut_back(&OutputMark { path: path.clone(), len: 15, cut: vec![(3, 6), (9, 12)], tail: None }).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a0\na1\na2\n");
    }

    #[test]
    fn cutting_back_moves_more_than_a_buffer() {
        let keep: String = (0..300_000).map(|i| format!("{i}\n")).collect();
        let (_dir, path) = file_with(&format!("drop\n{keep}tail\n"));
        cut_back(&OutputMark { path: path.clone(), len: 5 + keep.len() as u64, cut: vec![(0, 5)], tail: None }).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), keep);
    }

    #[test]
    fn an_output_shorter_than_its_checkpoint_is_refused() {
        let (_dir, path) = file_with("a\n");
        let e = cut_back(&OutputMark { path: path.clone(), len: 10, cut: vec![], tail: None }).unwrap_err();
        assert!(e.to_string().contains("shorter than the 10 the checkpoint recorded"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\n", "left as it was");
    }

    /// A resume killed at any step of its own cutting, and resumed again, ends with the same
    /// outputs as one that was not killed (cutting the same ranges twice would not).
    #[test]
    fn a_resume_killed_while_cutting_finishes_the_cut_next_time() {
        let content = "a0\nb5\na1\nb6\na2\nlate\n";
        let want = "a0\na1\na2\n";
        let checkpoint = |path: &Path| Checkpoint {
            input: PathBuf::from("in"),
            input_len: 0,
            peers: 1,
            positions: BTreeMap::new(),
            events: OutputMark { path: path.to_path_buf(), len: 15, cut: vec![(3, 6), (9, 12)], tail: None },
            dead_letters: OutputMark { path: path.with_file_name("dead"), len: 0, cut: vec![], tail: None },
            complete: false,
        };
        // Killed after the tail was staged and recorded, before the output was touched.
        let (dir, path) = file_with(content);
        let store = state::MemoryStore::new();
        let mut cp = checkpoint(&path);
        cp.events = stage_tail(&cp.events).unwrap();
        save(&store, &cp).unwrap();
        let mut again = recorded(&store).unwrap().unwrap();
        restore_outputs(&store, &mut again).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), want);
        assert!(!tail_path(&path).exists(), "the staged tail is removed once used");
        drop(dir);
        // Killed after the tail was appended, before the checkpoint said so: done again.
        let (_dir, path) = file_with(content);
        let store = state::MemoryStore::new();
        let mut cp = checkpoint(&path);
        cp.events = stage_tail(&cp.events).unwrap();
        save(&store, &cp).unwrap();
        append_tail(&cp.events).unwrap();
        let mut again = recorded(&store).unwrap().unwrap();
        restore_outputs(&store, &mut again).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), want);
        assert_eq!(recorded(&store).unwrap().unwrap().events, OutputMark { path: path.clone(), len: 9, cut: vec![], tail: None });
        // And resumed once more from that checkpoint: nothing changes.
        let mut once_more = recorded(&store).unwrap().unwrap();
        restore_outputs(&store, &mut once_more).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), want);
    }

    #[test]
    fn a_checkpoint_never_splits_captures_from_the_events_that_made_them() {
        // Captures sent into epoch 7 by events of epoch 3 or later; epoch 7 is complete (the
        // frontier is 10) but worker 0 still owes epoch 5: claiming 5 would cut the captures
        // (epoch 7) and keep the events of epochs 3 and 4 that made them. (It did: the first
        // version forgot an injection once the frontier passed its epoch, and the kill test
        // lost 47 captured events.)
        let mut injected = BTreeSet::from([(7, 3)]);
        assert_eq!(safe_frontier(10, &BTreeMap::from([(0, 5), (1, 12)]), &mut injected), 3);
        assert_eq!(injected.len(), 1, "still owed");
        // Once epoch 7 can be claimed, the captures and their events are both kept.
        assert_eq!(safe_frontier(10, &BTreeMap::from([(0, 9), (1, 12)]), &mut injected), 9);
        assert!(injected.is_empty());
        // Chains: lowering below one injection's epoch brings in its floor too.
        let mut injected = BTreeSet::from([(12, 6), (6, 2)]);
        assert_eq!(safe_frontier(8, &BTreeMap::new(), &mut injected), 2);
    }

    /// A failed write (a full disk) leaves the counted length unreliable: no checkpoint is taken
    /// from that output again, even once writing works again.
    #[test]
    fn no_checkpoint_after_a_failed_write() {
        let out = crate::io::OutputFile::open(Path::new("/dev/full"), true, true).unwrap();
        let mut o = out.lock().unwrap();
        o.write_lines(0, &mut ["a"].into_iter()).unwrap();
        assert!(o.mark(1).is_err(), "the flush fails on a full device");
        let e = o.mark(1).unwrap_err();
        assert!(e.to_string().contains("an earlier write to this output failed"), "{e}");
    }

    #[test]
    fn marks_keep_only_the_ranges_of_incomplete_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let out = crate::io::OutputFile::open(&dir.path().join("o"), false, true).unwrap();
        let mut o = out.lock().unwrap();
        o.write_lines(0, &mut ["a"].into_iter()).unwrap();
        o.write_lines(2, &mut ["bb"].into_iter()).unwrap();
        o.write_lines(2, &mut ["c"].into_iter()).unwrap();
        o.write_lines(1, &mut ["d"].into_iter()).unwrap();
        o.write_lines(3, &mut ["e"].into_iter()).unwrap();
        // Frontier 2: epochs 0 and 1 are complete; 2 and 3 are cut (adjacent ranges merged).
        assert_eq!(o.mark(2).unwrap(), (11, vec![(2, 7), (9, 11)]));
        assert_eq!(o.mark(3).unwrap(), (11, vec![(9, 11)]));
        assert_eq!(o.mark(4).unwrap(), (11, vec![]));
    }
}
