//! [`RocksStore`]: the durable store, one RocksDB per process shared by all worker threads.
//!
//! Column families: `cache` (values carry their expiry, see [`crate::value`]), `storage`,
//! `queue` (keys sort by queue, due time, id) and `meta` (`format_version`, `next_queue_id`).
//! Keys are laid out by [`crate::keys`].
//!
//! Durability: the write-ahead log is on and writes are not fsynced. A storage, queue or
//! pipeline write is in the WAL in the OS page cache when the call returns, so a crash of the
//! process loses none of them once acknowledged. Cache writes (volatile by contract, as
//! PostHog's Redis) are written to the WAL in the background within [`CACHE_WAL_INTERVAL`]
//! (or with the next storage, queue or pipeline write, whichever comes first): a crash of the
//! process can lose the cache writes of that last moment, a clean close loses none. That spares
//! a `write` system call per cache write (4% of a 3-plugin chain with a cache write per event,
//! BENCHMARKS.md). A crash of the machine (power loss, kernel panic) can lose the writes of the
//! last moments, and RocksDB then recovers to a consistent point in time before them.
//!
//! A write is in RocksDB's memory (readable by other threads) a moment before its record is
//! handed over. When handing it over fails (a full disk), the write is readable but not on
//! disk: the store stops ([`StateError::Stopped`]) and no operation runs after that, rather
//! than act on a write that was reported failed.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use rocksdb::compaction_filter::Decision;
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType, IteratorMode, Options, PrefixRange, ReadOptions, WriteBatch};

use crate::cache::{self, CacheSlots};
use crate::clock::{Clock, SystemClock};
use crate::keys;
use crate::value::{Entry, is_expired, stored_expiry};
use crate::{CacheScope, QueueItem, QueueItemId, Result, StateError, StateStore};

const CACHE: &str = "cache";
const STORAGE: &str = "storage";
const QUEUE: &str = "queue";
const META: &str = "meta";
const FORMAT_VERSION_KEY: &[u8] = b"format_version";
const NEXT_QUEUE_ID_KEY: &[u8] = b"next_queue_id";
const STRIPES: usize = 64;

/// A [`StateStore`] on RocksDB. Open one per process and share it (`Arc<dyn StateStore>`).
///
/// Read-modify-write cache commands lock one of 64 striped mutexes picked by key hash, so they
/// are atomic per key across threads. Expired cache entries read as missing, are dropped by a
/// compaction filter on the `cache` column family, and can be swept with
/// [`RocksStore::sweep_expired`].
pub struct RocksStore {
    /// Writes the WAL of cache writes in the background; stopped (and a last write made) on
    /// drop, before the database closes.
    wal_writer: WalWriter,
    db: Arc<DB>,
    path: PathBuf,
    clock: Arc<dyn Clock>,
    stripes: Vec<Mutex<()>>,
    /// Next queue item id; held while putting, so ids reach disk in order.
    next_id: Mutex<u64>,
    /// Items this instance handed out and that are not acknowledged yet: id → key.
    taken: Mutex<HashMap<u64, Vec<u8>>>,
}

/// How long a cache write may wait in memory before its WAL record is written (see the module
/// docs).
pub const CACHE_WAL_INTERVAL: Duration = Duration::from_millis(50);

/// Why the store stopped: set once, when a WAL record could not be written. A write whose
/// record is not on disk is in RocksDB's memory already (readable until the process ends, gone
/// after a restart), so from then on every operation fails rather than act on it.
type Stopped = Arc<OnceLock<String>>;

/// The background writer of cache writes' WAL records: every [`CACHE_WAL_INTERVAL`], when a
/// cache write is waiting, it hands RocksDB's WAL buffer to the OS.
struct WalWriter {
    pending: Arc<AtomicBool>,
    stopped: Stopped,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WalWriter {
    fn start(db: &Arc<DB>) -> Result<WalWriter> {
        let pending = Arc::new(AtomicBool::new(false));
        let stopped: Stopped = Arc::default();
        let (stop, told) = mpsc::channel::<()>();
        let (db, waiting, failed) = (Arc::clone(db), Arc::clone(&pending), Arc::clone(&stopped));
        let thread = std::thread::Builder::new()
            .name("state-wal".into())
            .spawn(move || {
                loop {
                    let last = !matches!(told.recv_timeout(CACHE_WAL_INTERVAL), Err(RecvTimeoutError::Timeout));
                    if waiting.swap(false, Ordering::AcqRel)
                        && let Err(e) = db.flush_wal(false)
                    {
                        // RocksDB will not write this log again: said once, and the store stops.
                        tracing::error!(error = %e, "the state store could not write its write-ahead log; it stops");
                        let _ = failed.set(e.to_string());
                        break;
                    }
                    if last {
                        break;
                    }
                }
            })
            .map_err(|source| StateError::Io { path: PathBuf::from("state-wal thread"), source })?;
        Ok(WalWriter { pending, stopped, stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for WalWriter {
    fn drop(&mut self) {
        // Dropping the sender wakes the thread, which writes what is waiting and ends.
        self.stop = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RocksStore {
    /// The on-disk format this build reads and writes (stored in `meta` under `format_version`).
    pub const FORMAT_VERSION: u32 = 1;

    /// Opens (creating if needed) the store in folder `path`, with TTLs on the system clock.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with_clock(path, Arc::new(SystemClock))
    }

    /// Opens (creating if needed) the store in folder `path`, with TTLs on `clock`. Fails with
    /// [`StateError::FormatVersion`] when the folder holds another on-disk format.
    pub fn open_with_clock(path: impl AsRef<Path>, clock: Arc<dyn Clock>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        std::fs::create_dir_all(&path).map_err(|source| StateError::Io { path: path.clone(), source })?;
        let db = DB::open_cf_descriptors(&db_options(), &path, cf_descriptors(&clock)).map_err(|e| {
            if e.kind() == rocksdb::ErrorKind::Corruption {
                StateError::Corrupt(format!(
                    "{} cannot be opened as it was: {e}. It is not opened at an older state instead; restore a copy or move the folder aside",
                    path.display()
                ))
            } else {
                StateError::Rocks(e)
            }
        })?;
        check_format_version(&db, &path)?;
        let next_id = read_next_id(&db)?;
        tracing::debug!(path = %path.display(), next_id, "opened state store");
        let db = Arc::new(db);
        Ok(Self {
            wal_writer: WalWriter::start(&db)?,
            db,
            path,
            clock,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            next_id: Mutex::new(next_id),
            taken: Mutex::default(),
        })
    }

    /// The folder the store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hands the WAL records written so far (this write's, and any cache writes before it) to
    /// the OS: what a storage, queue or pipeline write has done before it returns.
    fn written(&self) -> Result<()> {
        self.db.flush_wal(false).map_err(|e| {
            let _ = self.wal_writer.stopped.set(e.to_string());
            StateError::Rocks(e)
        })
    }

    /// Whether a cache write's WAL record still waits for the background writer (a crash of the
    /// process now could lose it).
    pub fn cache_wal_pending(&self) -> bool {
        self.wal_writer.pending.load(Ordering::Acquire)
    }

    /// A cache write's WAL record waits for the background writer.
    fn cache_written(&self) {
        self.wal_writer.pending.store(true, Ordering::Release);
    }

    /// Deletes expired cache entries and returns how many there were.
    pub fn sweep_expired(&self) -> Result<u64> {
        let now = self.clock.now_ms();
        let mut candidates = Vec::new();
        for item in self.db.iterator_cf(self.cf(CACHE)?, IteratorMode::Start) {
            let (key, value) = item?;
            if stored_expiry(&value).is_some_and(|at| is_expired(at, now)) {
                candidates.push(key);
            }
        }
        let mut swept = 0;
        for key in candidates {
            swept += u64::from(self.delete_if_expired(&key, now)?);
        }
        Ok(swept)
    }

    /// Flushes and compacts the `cache` column family, which runs the expiry compaction filter
    /// over every entry. RocksDB also does this on its own schedule; this forces it.
    pub fn compact_cache(&self) -> Result<()> {
        let cf = self.cf(CACHE)?;
        self.db.flush_cf(cf)?;
        self.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        Ok(())
    }

    /// Deletes `key` if it is still expired once its stripe is locked.
    fn delete_if_expired(&self, key: &[u8], now: u64) -> Result<bool> {
        let _guard = self.stripe(key);
        let cf = self.cf(CACHE)?;
        let expired = self.db.get_pinned_cf(cf, key)?.is_some_and(|v| stored_expiry(&v).is_some_and(|at| is_expired(at, now)));
        if expired {
            self.db.delete_cf(cf, key)?;
            self.cache_written();
        }
        Ok(expired)
    }

    /// A column family, for any operation: none runs once the store has stopped.
    fn cf(&self, name: &str) -> Result<&ColumnFamily> {
        if let Some(why) = self.wal_writer.stopped.get() {
            return Err(StateError::Stopped(why.clone()));
        }
        cf(&self.db, name)
    }

    fn stripe(&self, key: &[u8]) -> MutexGuard<'_, ()> {
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
        lock(&self.stripes[(hash % STRIPES as u64) as usize])
    }

    /// Iterates the items of `queue` in (due, id) order.
    fn queue_scan(&self, queue: &str) -> Result<rocksdb::DBIterator<'_>> {
        let mut opts = ReadOptions::default();
        opts.set_iterate_range(PrefixRange(keys::queue_prefix(queue)));
        Ok(self.db.iterator_cf_opt(self.cf(QUEUE)?, opts, IteratorMode::Start))
    }

    /// The key of item `id` in `queue`, if it is there.
    fn queue_key_of(&self, queue: &str, id: u64, taken: &HashMap<u64, Vec<u8>>) -> Result<Option<Vec<u8>>> {
        let prefix = keys::queue_prefix(queue);
        if let Some(k) = taken.get(&id).filter(|k| k.starts_with(&prefix)) {
            return Ok(Some(k.clone()));
        }
        for item in self.queue_scan(queue)? {
            let (key, _) = item?;
            if keys::queue_due_id(&key)?.1 == id {
                return Ok(Some(key.into_vec()));
            }
        }
        Ok(None)
    }
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore").field("path", &self.path).finish_non_exhaustive()
    }
}

fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a ColumnFamily> {
    db.cf_handle(name).ok_or_else(|| StateError::Corrupt(format!("column family `{name}` is missing")))
}

fn db_options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // A torn last record (a crash in the middle of a write) is dropped; corruption anywhere
    // else in the write-ahead log fails the open. RocksDB's default (point in time) would stop
    // replaying at the corruption and open an older state without a word.
    opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::TolerateCorruptedTailRecords);
    opts.set_compression_type(DBCompressionType::Lz4);
    // The WAL buffer is handed to the OS by `RocksStore::written` and the background writer,
    // not by every write (see the module docs).
    opts.set_manual_wal_flush(true);
    opts
}

fn cf_descriptors(clock: &Arc<dyn Clock>) -> Vec<ColumnFamilyDescriptor> {
    let mut cache_opts = db_options();
    let clock = Arc::clone(clock);
    cache_opts.set_compaction_filter("pluginflow-cache-expiry", move |_level: u32, _key: &[u8], value: &[u8]| match stored_expiry(value) {
        Some(at) if is_expired(at, clock.now_ms()) => Decision::Remove,
        _ => Decision::Keep,
    });
    let mut out = vec![ColumnFamilyDescriptor::new(CACHE, cache_opts)];
    out.extend([STORAGE, QUEUE, META].map(|name| ColumnFamilyDescriptor::new(name, db_options())));
    out
}

/// Checks `format_version` in `meta`; writes it into a new, empty database.
fn check_format_version(db: &DB, path: &Path) -> Result<()> {
    let meta = cf(db, META)?;
    let Some(raw) = db.get_cf(meta, FORMAT_VERSION_KEY)? else {
        if !is_empty(db)? {
            return Err(StateError::Corrupt(format!("{} holds data but no format version", path.display())));
        }
        db.put_cf(meta, FORMAT_VERSION_KEY, RocksStore::FORMAT_VERSION.to_string())?;
        db.flush_wal(false)?;
        return Ok(());
    };
    let found: u32 = std::str::from_utf8(&raw)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| StateError::Corrupt(format!("unreadable format version {raw:?}")))?;
    if found != RocksStore::FORMAT_VERSION {
        return Err(StateError::FormatVersion { found, expected: RocksStore::FORMAT_VERSION, path: path.to_path_buf() });
    }
    Ok(())
}

fn is_empty(db: &DB) -> Result<bool> {
    for name in [CACHE, STORAGE, QUEUE, META] {
        if db.iterator_cf(cf(db, name)?, IteratorMode::Start).next().is_some() {
            return Ok(false);
        }
    }
    Ok(true)
}

fn read_next_id(db: &DB) -> Result<u64> {
    match db.get_cf(cf(db, META)?, NEXT_QUEUE_ID_KEY)? {
        Some(raw) => keys::be_u64(&raw),
        None => Ok(1),
    }
}

impl CacheSlots for RocksStore {
    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    fn load(&self, key: &[u8]) -> Result<Option<Entry>> {
        let raw = self.db.get_pinned_cf(self.cf(CACHE)?, key)?;
        raw.map(|v| Entry::decode(&v)).transpose()
    }

    fn update<R>(&self, key: &[u8], f: impl FnOnce(&mut Option<Entry>) -> Result<(R, bool)>) -> Result<R> {
        let _guard = self.stripe(key);
        let mut slot = self.load(key)?;
        let (result, changed) = f(&mut slot)?;
        if changed {
            let cf = self.cf(CACHE)?;
            match slot {
                Some(e) => self.db.put_cf(cf, key, e.encode())?,
                None => self.db.delete_cf(cf, key)?,
            }
            self.cache_written();
        }
        Ok(result)
    }

    fn replace(&self, key: &[u8], entry: Entry) -> Result<()> {
        let _guard = self.stripe(key);
        self.db.put_cf(self.cf(CACHE)?, key, entry.encode())?;
        self.cache_written();
        Ok(())
    }
}

impl StateStore for RocksStore {
    fn cache_get(&self, scope: &CacheScope, key: &str) -> Result<Option<String>> {
        cache::get(self, &keys::cache_key(scope, key))
    }

    fn cache_set(&self, scope: &CacheScope, key: &str, value: &str, ttl: Option<u64>) -> Result<()> {
        cache::set(self, &keys::cache_key(scope, key), value, ttl)
    }

    fn cache_incr(&self, scope: &CacheScope, key: &str) -> Result<i64> {
        cache::incr(self, &keys::cache_key(scope, key))
    }

    fn cache_expire(&self, scope: &CacheScope, key: &str, ttl_seconds: u64) -> Result<bool> {
        cache::expire(self, &keys::cache_key(scope, key), ttl_seconds)
    }

    fn cache_lpush(&self, scope: &CacheScope, key: &str, values: &[String]) -> Result<u64> {
        cache::lpush(self, &keys::cache_key(scope, key), values)
    }

    fn cache_lrange(&self, scope: &CacheScope, key: &str, start: i64, stop: i64) -> Result<Vec<String>> {
        cache::lrange(self, &keys::cache_key(scope, key), start, stop)
    }

    fn cache_llen(&self, scope: &CacheScope, key: &str) -> Result<u64> {
        cache::llen(self, &keys::cache_key(scope, key))
    }

    fn cache_lpop(&self, scope: &CacheScope, key: &str, count: u64) -> Result<Vec<String>> {
        cache::lpop(self, &keys::cache_key(scope, key), count)
    }

    fn cache_lrem(&self, scope: &CacheScope, key: &str, count: i64, value: &str) -> Result<u64> {
        cache::lrem(self, &keys::cache_key(scope, key), count, value)
    }

    fn storage_get(&self, config: &str, key: &str) -> Result<Option<String>> {
        let raw = self.db.get_cf(self.cf(STORAGE)?, keys::storage_key(config, key))?;
        raw.map(|v| String::from_utf8(v).map_err(|_| StateError::Corrupt("storage value is not UTF-8".into()))).transpose()
    }

    fn storage_set(&self, config: &str, key: &str, value: &str) -> Result<()> {
        self.db.put_cf(self.cf(STORAGE)?, keys::storage_key(config, key), value)?;
        self.written()
    }

    fn storage_del(&self, config: &str, key: &str) -> Result<()> {
        self.db.delete_cf(self.cf(STORAGE)?, keys::storage_key(config, key))?;
        self.written()
    }

    fn queue_put_taken(&self, queue: &str, due_ms: u64, payload: &[u8]) -> Result<QueueItemId> {
        let mut taken = lock(&self.taken);
        let id = self.queue_put(queue, due_ms, payload)?;
        taken.insert(id.0, keys::queue_key(queue, due_ms, id.0));
        Ok(id)
    }

    fn queue_put(&self, queue: &str, due_ms: u64, payload: &[u8]) -> Result<QueueItemId> {
        let mut next_id = lock(&self.next_id);
        let id = *next_id;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(QUEUE)?, keys::queue_key(queue, due_ms, id), payload);
        batch.put_cf(self.cf(META)?, NEXT_QUEUE_ID_KEY, (id + 1).to_be_bytes());
        self.db.write(batch)?;
        // The id is taken once the batch is in, whatever becomes of its log record.
        *next_id = id + 1;
        self.written()?;
        Ok(QueueItemId(id))
    }

    fn queue_take_due(&self, queue: &str, now_ms: u64, limit: usize) -> Result<Vec<QueueItem>> {
        let mut taken = lock(&self.taken);
        let mut out = Vec::new();
        for item in self.queue_scan(queue)? {
            let (key, payload) = item?;
            let (due_ms, id) = keys::queue_due_id(&key)?;
            if out.len() >= limit || due_ms > now_ms {
                break;
            }
            if !taken.contains_key(&id) {
                let item = QueueItem { id: QueueItemId(id), due_ms, payload: payload.into_vec() };
                out.push((key, item));
            }
        }
        // Marked only once the whole scan succeeded, so an error hands nothing out.
        Ok(out
            .into_iter()
            .map(|(key, item)| {
                taken.insert(item.id.0, key.into_vec());
                item
            })
            .collect())
    }

    fn queue_ack(&self, queue: &str, id: QueueItemId) -> Result<()> {
        let mut taken = lock(&self.taken);
        if let Some(key) = self.queue_key_of(queue, id.0, &taken)? {
            self.db.delete_cf(self.cf(QUEUE)?, key)?;
            self.written()?;
            taken.remove(&id.0);
        }
        Ok(())
    }

    fn queue_release(&self, queue: &str, id: QueueItemId) -> Result<()> {
        let mut taken = lock(&self.taken);
        if taken.get(&id.0).is_some_and(|key| key.starts_with(&keys::queue_prefix(queue))) {
            taken.remove(&id.0);
        }
        Ok(())
    }

    fn queue_len(&self, queue: &str) -> Result<u64> {
        let mut len = 0;
        for item in self.queue_scan(queue)? {
            item?;
            len += 1;
        }
        Ok(len)
    }

    fn pipeline_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(META)?, pipeline_key(key))?)
    }

    fn pipeline_put(&self, key: &str, value: &[u8]) -> Result<()> {
        self.db.put_cf(self.cf(META)?, pipeline_key(key), value)?;
        self.written()
    }
}

/// The pipeline's own records live in the `meta` column family beside the store's bookkeeping
/// (`format_version`, `next_queue_id`), under a prefix of their own.
fn pipeline_key(key: &str) -> Vec<u8> {
    [b"pipeline/".as_slice(), key.as_bytes()].concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;

    fn scope() -> CacheScope {
        CacheScope { plugin: "p".into(), team: None }
    }

    fn open(dir: &tempfile::TempDir) -> (Arc<ManualClock>, RocksStore) {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let store = RocksStore::open_with_clock(dir.path(), clock.clone()).unwrap();
        (clock, store)
    }

    #[test]
    fn ttl_hides_expired_values_and_sweep_reclaims_them() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, s) = open(&dir);
        s.cache_set(&scope(), "short", "1", Some(1)).unwrap();
        s.cache_set(&scope(), "long", "2", Some(60)).unwrap();
        s.cache_set(&scope(), "none", "3", None).unwrap();
        s.cache_lpush(&scope(), "list", &["x".into()]).unwrap();
        s.cache_expire(&scope(), "list", 2).unwrap();
        assert_eq!(s.sweep_expired().unwrap(), 0);
        clock.advance_secs(2);
        assert_eq!(s.cache_get(&scope(), "short").unwrap(), None);
        assert_eq!(s.cache_llen(&scope(), "list").unwrap(), 0);
        assert_eq!(s.cache_get(&scope(), "long").unwrap().as_deref(), Some("2"));
        assert_eq!(s.sweep_expired().unwrap(), 2);
        assert_eq!(s.sweep_expired().unwrap(), 0);
        assert_eq!(s.cache_get(&scope(), "none").unwrap().as_deref(), Some("3"));
    }

    #[test]
    fn compaction_filter_drops_expired_entries() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, s) = open(&dir);
        s.cache_set(&scope(), "a", "1", Some(1)).unwrap();
        s.cache_set(&scope(), "b", "2", Some(100)).unwrap();
        s.cache_set(&scope(), "c", "3", None).unwrap();
        clock.advance_secs(5);
        s.compact_cache().unwrap();
        let cf = s.cf(CACHE).unwrap();
        let left: Vec<_> = s.db.iterator_cf(cf, IteratorMode::Start).map(|i| i.unwrap().0.into_vec()).collect();
        assert_eq!(left, [keys::cache_key(&scope(), "b"), keys::cache_key(&scope(), "c")]);
        assert_eq!(s.sweep_expired().unwrap(), 0);
        assert_eq!(s.cache_get(&scope(), "b").unwrap().as_deref(), Some("2"));
    }

    #[test]
    fn corrupt_cache_value_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let (_, s) = open(&dir);
        let key = keys::cache_key(&scope(), "k");
        s.db.put_cf(s.cf(CACHE).unwrap(), &key, [1, 2, 3]).unwrap();
        assert!(matches!(s.cache_get(&scope(), "k"), Err(StateError::Corrupt(_))));
        assert!(matches!(s.cache_incr(&scope(), "k"), Err(StateError::Corrupt(_))));
    }

    #[test]
    fn key_encoding_keeps_scopes_apart_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (_, s) = open(&dir);
        let a = CacheScope { plugin: "a".into(), team: None };
        let ab = CacheScope { plugin: "a/b".into(), team: None };
        s.cache_set(&a, "b/c", "first", None).unwrap();
        s.cache_set(&ab, "c", "second", None).unwrap();
        assert_eq!(s.cache_get(&a, "b/c").unwrap().as_deref(), Some("first"));
        assert_eq!(s.cache_get(&ab, "c").unwrap().as_deref(), Some("second"));
        s.storage_set("a", "b/c", "x").unwrap();
        s.storage_set("a/b", "c", "y").unwrap();
        assert_eq!(s.storage_get("a", "b/c").unwrap().as_deref(), Some("x"));
        assert_eq!(s.storage_get("a/b", "c").unwrap().as_deref(), Some("y"));
    }

    #[test]
    fn queue_ack_without_take_and_wrong_queue() {
        let dir = tempfile::tempdir().unwrap();
        let (_, s) = open(&dir);
        let a = s.queue_put("q", 10, b"a").unwrap();
        let b = s.queue_put("q", 5, b"b").unwrap();
        s.queue_ack("elsewhere", a).unwrap();
        assert_eq!(s.queue_len("q").unwrap(), 2);
        s.queue_ack("q", a).unwrap();
        let due = s.queue_take_due("q", 100, 10).unwrap();
        assert_eq!(due, [QueueItem { id: b, due_ms: 5, payload: b"b".to_vec() }]);
        assert_eq!(s.queue_take_due("q", 100, 10).unwrap(), []);
        s.queue_ack("q", b).unwrap();
        assert_eq!(s.queue_len("q").unwrap(), 0);
    }

    #[test]
    fn queue_take_due_respects_limit_and_due_time() {
        let dir = tempfile::tempdir().unwrap();
        let (_, s) = open(&dir);
        let ids: Vec<_> = (0..5).map(|i| s.queue_put("q", 100 * i, &[i as u8]).unwrap()).collect();
        let first = s.queue_take_due("q", 250, 2).unwrap();
        assert_eq!(first.iter().map(|i| i.id).collect::<Vec<_>>(), ids[..2]);
        let next = s.queue_take_due("q", 250, 2).unwrap();
        assert_eq!(next.iter().map(|i| i.id).collect::<Vec<_>>(), ids[2..3]);
        assert!(s.queue_take_due("q", 250, 0).unwrap().is_empty());
        assert_eq!(s.queue_len("q").unwrap(), 5);
    }
}
