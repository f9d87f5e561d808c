//! The recorded-log input: each worker reads its share of a JSON-lines file (lines starting in
//! its byte range), or with `[input] follow` one worker reads the file as it grows, as `tail -f`
//! does.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;

use crate::io::{EventSource, Polled, Release};
use crate::resume::Checkpointer;

/// A worker's share of a recorded JSON-lines log.
pub struct LogSource {
    reader: SliceReader,
    name: String,
    size: u64,
    /// Where reads are reported for checkpoints, and this worker's index.
    checkpoints: Option<(Arc<Checkpointer>, usize)>,
    /// This share follows the log (`[input] follow`).
    following: bool,
    /// Why a followed log cannot be read on (truncated, replaced): reported once what was read
    /// is written, and whether `release` was asked once already.
    failure: Option<(String, bool)>,
}

/// How long a followed log that has nothing new is left before the next look.
const FOLLOW_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

impl LogSource {
    /// The share of worker `index` of `peers`, from `resume_at` when given (a resumed run) or
    /// from its start, reporting its reads to `checkpoints`.
    pub fn open(
        path: &Path,
        index: usize,
        peers: usize,
        resume_at: Option<u64>,
        checkpoints: Option<Arc<Checkpointer>>,
    ) -> anyhow::Result<Self> {
        let mut reader = SliceReader::open(path, index, peers).with_context(|| format!("cannot read {}", path.display()))?;
        if let Some(at) = resume_at {
            reader.resume_at(at).with_context(|| format!("cannot resume reading {}", path.display()))?;
        }
        if let Some(cp) = &checkpoints {
            cp.started(index, peers, reader.position());
        }
        let size = std::fs::metadata(path)?.len();
        Ok(Self {
            reader,
            name: path.display().to_string(),
            size,
            checkpoints: checkpoints.map(|cp| (cp, index)),
            following: false,
            failure: None,
        })
    }

    /// Follows the log past this share's end (a followed log has one worker); a line longer
    /// than `max_line` bytes is passed on in pieces of that size.
    pub fn follow(mut self, path: &Path, max_line: usize) -> anyhow::Result<Self> {
        self.reader.follow(path, max_line).with_context(|| format!("cannot follow {}", path.display()))?;
        self.following = true;
        Ok(self)
    }
}

impl Drop for LogSource {
    fn drop(&mut self) {
        let unfinished = self.reader.unfinished();
        if unfinished > 0 {
            tracing::warn!(input = %self.name, bytes = unfinished, "stopped with the log's last line unfinished (no newline yet): it was not read");
        }
    }
}

impl EventSource for LogSource {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn poll(&mut self, epoch: u64, max: usize) -> anyhow::Result<Polled> {
        if self.failure.is_some() {
            return Ok(Polled { exhausted: true, ..Polled::default() });
        }
        let batch = match self.reader.next_batch(max) {
            Ok(batch) => batch,
            // What was read goes on through the graph; the run fails once it is done (release).
            Err(e) if self.following => {
                tracing::error!(input = %self.name, error = %e, "the followed log cannot be read on");
                self.failure = Some((e.to_string(), false));
                return Ok(Polled { exhausted: true, ..Polled::default() });
            }
            Err(e) => return Err(e.into()),
        };
        if batch.caught_up && batch.records.is_empty() && batch.bytes == 0 {
            // Nothing new: look again in a moment, as `tail -f` does.
            std::thread::sleep(FOLLOW_WAIT);
        }
        if let Some((cp, index)) = &self.checkpoints {
            cp.read(*index, epoch, self.reader.position());
        }
        Ok(Polled { records: batch.records, bytes: batch.bytes, exhausted: batch.done, blank: batch.blank })
    }

    fn complete(&mut self, _frontier: u64) -> anyhow::Result<()> {
        // Checkpoints are renewed by the worker loop, which knows the captures in flight.
        Ok(())
    }

    fn release(&mut self, _epoch: u64, _frontier: u64) -> anyhow::Result<Release> {
        match &mut self.failure {
            // Asked first in the round that found the failure; before asking again the worker
            // waits until every line read has gone through the chain and been written.
            Some((_, asked @ false)) => {
                *asked = true;
                Ok(Release::Waiting)
            }
            Some((e, true)) => Err(anyhow::anyhow!("{e}")),
            None => Ok(Release::Done),
        }
    }

    fn size_hint(&self) -> Option<u64> {
        // A followed log has no size to measure progress against.
        (!self.following).then_some(self.size)
    }
}

/// Reads one worker's share of a log: lines starting in `[start, end)` of the file's bytes.
/// Positions reported for dead letters are byte offsets of the line. A followed log (`[input]
/// follow`, one worker) has no end: at the end of the file it waits for more, and reads a line
/// only once its newline is there.
pub struct SliceReader {
    reader: BufReader<File>,
    /// Where the share's first line starts.
    start: u64,
    pos: u64,
    end: u64,
    /// Following: the file as opened (to tell it was truncated or replaced) and the bytes of a
    /// line whose newline has not been written yet.
    follow: Option<Followed>,
}

struct Followed {
    path: std::path::PathBuf,
    file: (u64, u64),
    unfinished: Vec<u8>,
    /// The longest the file was seen: shorter later means truncated (even if regrown since).
    longest: u64,
    /// The most a line may hold before it is passed on in pieces (`runtime.max_event_bytes`
    /// and a line break): each piece is dead-lettered, memory stays bounded.
    max_line: usize,
    /// A failure found after lines of the same batch were read: reported on the next call.
    failed: Option<std::io::Error>,
}

impl SliceReader {
    /// The share of worker `index` of `peers`.
    pub fn open(path: &Path, index: usize, peers: usize) -> std::io::Result<Self> {
        let len = std::fs::metadata(path)?.len();
        let start = len * index as u64 / peers as u64;
        let end = len * (index as u64 + 1) / peers as u64;
        let mut reader = BufReader::with_capacity(1 << 20, File::open(path)?);
        let mut pos = start;
        if start > 0 {
            // The line holding byte start-1 belongs to the previous worker.
            reader.seek(SeekFrom::Start(start - 1))?;
            let mut skipped = Vec::new();
            pos = start - 1 + reader.read_until(b'\n', &mut skipped)? as u64;
        }
        Ok(Self { reader, start: pos, pos, end, follow: None })
    }

    /// Reads on past the share's end as the log grows (a followed log, read by one worker);
    /// lines longer than `max_line` are passed on in pieces of that size.
    pub fn follow(&mut self, path: &Path, max_line: usize) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt as _;
        let opened = self.reader.get_ref().metadata()?;
        self.end = u64::MAX;
        self.follow = Some(Followed {
            path: path.to_path_buf(),
            file: (opened.dev(), opened.ino()),
            unfinished: Vec::new(),
            longest: opened.len(),
            max_line,
            failed: None,
        });
        Ok(())
    }

    /// Continues from `position` (a line start recorded by a checkpoint), which must lie in
    /// this share.
    pub fn resume_at(&mut self, position: u64) -> std::io::Result<()> {
        if position < self.start {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("position {position} is before this worker's share, which starts at {}", self.start),
            ));
        }
        self.reader.seek(SeekFrom::Start(position))?;
        self.pos = position;
        Ok(())
    }

    /// The byte offset of the next line to read.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Bytes of a followed log's last line read so far, its newline not written yet.
    pub fn unfinished(&self) -> usize {
        self.follow.as_ref().map_or(0, |f| f.unfinished.len())
    }

    /// Up to `max` lines (blank lines skipped and counted), the bytes they took, and whether
    /// this share of the log is read to its end. A followed share is never read to its end: at
    /// the end of the file the batch is `caught_up`; a file that shrank or was replaced is an
    /// error (what was read stays read; nothing after it is).
    pub fn next_batch(&mut self, max: usize) -> std::io::Result<SliceBatch> {
        if let Some(e) = self.follow.as_mut().and_then(|f| f.failed.take()) {
            return Err(e);
        }
        let mut batch = SliceBatch { records: Vec::with_capacity(max.min(4096)), ..SliceBatch::default() };
        let max_line = self.follow.as_ref().map_or(usize::MAX, |f| f.max_line);
        while batch.records.len() < max {
            if self.pos >= self.end {
                batch.done = true;
                break;
            }
            let mut line = self.follow.as_mut().map(|f| std::mem::take(&mut f.unfinished)).unwrap_or_default();
            let n = read_line(&mut self.reader, &mut line, max_line)?;
            if let Some(f) = self.follow.as_mut().filter(|_| !line.ends_with(b"\n") && line.len() < max_line) {
                f.unfinished = line;
                if n == 0
                    && let Err(e) = f.check(self.pos)
                {
                    // What this batch read goes on; the failure is the next call's answer.
                    if batch.records.is_empty() && batch.bytes == 0 {
                        return Err(e);
                    }
                    f.failed = Some(e);
                }
                batch.caught_up = true;
                break;
            }
            if n == 0 {
                batch.done = true;
                break;
            }
            let at = self.pos;
            self.pos += line.len() as u64;
            batch.bytes += line.len() as u64;
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                batch.blank += 1;
                continue;
            }
            batch.records.push((at, line));
        }
        Ok(batch)
    }
}

impl Followed {
    /// At the end of the file: it must still be the file opened, never shorter than it was seen
    /// (a truncation regrown since is one too), at least as long as what was read of it.
    fn check(&mut self, pos: u64) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt as _;
        let now = std::fs::metadata(&self.path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{} cannot be followed: {e}", self.path.display())))?;
        let read = pos + self.unfinished.len() as u64;
        if (now.dev(), now.ino()) != self.file {
            return Err(std::io::Error::other(format!(
                "{} was replaced while followed (rotated?): {read} bytes of the file opened were read; lines written to it after that, and the new file, are not",
                self.path.display()
            )));
        }
        let longest = self.longest.max(read);
        if now.len() < longest {
            return Err(std::io::Error::other(format!(
                "{} shrank to {} bytes while followed (it had {longest}; truncated?): {read} bytes had been read; nothing written after the truncation is",
                self.path.display(),
                now.len()
            )));
        }
        self.longest = now.len();
        Ok(())
    }
}

/// Appends one line, newline included when there is one, to `line`, but no more than until
/// `line` holds `max_line` bytes; returns the bytes read. A line that lies in the reader's buffer
/// is copied in one allocation of its size.
fn read_line(reader: &mut BufReader<File>, line: &mut Vec<u8>, max_line: usize) -> std::io::Result<usize> {
    let mut read = 0;
    loop {
        let room = max_line.saturating_sub(line.len());
        let buf = reader.fill_buf()?;
        if buf.is_empty() || room == 0 {
            return Ok(read);
        }
        let (take, ends) = match memchr::memchr(b'\n', buf) {
            Some(i) if i < room => (i + 1, true),
            _ => (buf.len().min(room), false),
        };
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        read += take;
        if ends {
            return Ok(read);
        }
    }
}

/// What [`SliceReader::next_batch`] read.
#[derive(Debug, Default)]
pub struct SliceBatch {
    /// Lines as (byte offset, bytes).
    pub records: Vec<(u64, Vec<u8>)>,
    /// Bytes read, blank lines included.
    pub bytes: u64,
    /// Lines holding only whitespace, skipped.
    pub blank: u64,
    /// The share is read to its end.
    pub done: bool,
    /// A followed share is at the end of the file for now.
    pub caught_up: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_blank_lines_longer_than_a_batch_does_not_end_the_log() {
        // A batch of nothing but blank lines once read as the end of the input: the events
        // after it were never read, and nothing said so.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        std::fs::write(&path, format!("{{\"n\":1}}\n{}{{\"n\":2}}\n  \n", "\n".repeat(25))).unwrap();
        let mut r = SliceReader::open(&path, 0, 1).unwrap();
        let (mut lines, mut blank) = (0, 0);
        loop {
            let batch = r.next_batch(10).unwrap();
            lines += batch.records.len();
            blank += batch.blank;
            if batch.done {
                break;
            }
        }
        assert_eq!((lines, blank), (2, 26));
    }

    #[test]
    fn slices_cover_every_line_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let lines: Vec<String> = (0..97).map(|i| format!("{{\"n\":{i}{}}}", " ".repeat(i % 7))).collect();
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        for peers in 1..6 {
            let mut seen = Vec::new();
            for index in 0..peers {
                let mut r = SliceReader::open(&path, index, peers).unwrap();
                loop {
                    let batch = r.next_batch(10).unwrap();
                    seen.extend(batch.records.into_iter().map(|(_, l)| String::from_utf8(l).unwrap().trim_end().to_string()));
                    if batch.done {
                        break;
                    }
                }
            }
            seen.sort();
            let mut want = lines.clone();
            want.sort();
            assert_eq!(seen, want, "peers = {peers}");
        }
    }
}
