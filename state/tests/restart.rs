//! `RocksStore` across a close and reopen of the same folder: cache (with and without TTL),
//! storage and queues come back; taken-but-unacked queue items are handed out again; ids stay
//! unique; a foreign format version is refused with a clear error.

use std::path::Path;
use std::sync::Arc;

use state::{CacheScope, ManualClock, QueueItemId, RocksStore, StateError, StateStore};

fn scope() -> CacheScope {
    CacheScope { plugin: "plugin".into(), team: Some(7) }
}

fn open(path: &Path, clock: &Arc<ManualClock>) -> RocksStore {
    RocksStore::open_with_clock(path, clock.clone()).unwrap()
}

#[test]
fn cache_and_storage_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    {
        let s = open(dir.path(), &clock);
        s.cache_set(&scope(), "plain", "v", None).unwrap();
        s.cache_set(&scope(), "ttl", "t", Some(10)).unwrap();
        s.cache_incr(&scope(), "n").unwrap();
        s.cache_incr(&scope(), "n").unwrap();
        s.cache_lpush(&scope(), "list", &["a".into(), "b".into()]).unwrap();
        s.storage_set("config-1", "k", "{\"x\":1}").unwrap();
        s.storage_set("config-1", "gone", "x").unwrap();
        s.storage_del("config-1", "gone").unwrap();
    }
    let s = open(dir.path(), &clock);
    assert_eq!(s.cache_get(&scope(), "plain").unwrap().as_deref(), Some("v"));
    assert_eq!(s.cache_get(&scope(), "ttl").unwrap().as_deref(), Some("t"));
    assert_eq!(s.cache_get(&scope(), "n").unwrap().as_deref(), Some("2"));
    assert_eq!(s.cache_lrange(&scope(), "list", 0, -1).unwrap(), ["b", "a"]);
    assert_eq!(s.storage_get("config-1", "k").unwrap().as_deref(), Some("{\"x\":1}"));
    assert_eq!(s.storage_get("config-1", "gone").unwrap(), None);
    // The TTL was persisted with the value, not reset by the reopen.
    clock.advance_secs(10);
    assert_eq!(s.cache_get(&scope(), "ttl").unwrap(), None);
    assert_eq!(s.cache_get(&scope(), "plain").unwrap().as_deref(), Some("v"));
}

#[test]
fn expired_entry_stays_expired_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    {
        let s = open(dir.path(), &clock);
        s.cache_set(&scope(), "ttl", "t", Some(1)).unwrap();
    }
    clock.advance_secs(1);
    let s = open(dir.path(), &clock);
    assert_eq!(s.cache_get(&scope(), "ttl").unwrap(), None);
    assert_eq!(s.sweep_expired().unwrap(), 1);
}

#[test]
fn queue_items_resume_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(0));
    let (acked, taken, waiting, future);
    {
        let s = open(dir.path(), &clock);
        acked = s.queue_put("retries", 100, b"acked").unwrap();
        taken = s.queue_put("retries", 200, b"taken").unwrap();
        waiting = s.queue_put("retries", 300, b"waiting").unwrap();
        future = s.queue_put("retries", 10_000, b"future").unwrap();
        let got = s.queue_take_due("retries", 250, 10).unwrap();
        assert_eq!(got.iter().map(|i| i.id).collect::<Vec<_>>(), [acked, taken]);
        s.queue_ack("retries", acked).unwrap();
        assert_eq!(s.queue_take_due("retries", 250, 10).unwrap(), []);
    }
    let s = open(dir.path(), &clock);
    assert_eq!(s.queue_len("retries").unwrap(), 3);
    let got = s.queue_take_due("retries", 5_000, 10).unwrap();
    assert_eq!(got.iter().map(|i| i.id).collect::<Vec<_>>(), [taken, waiting]);
    assert_eq!(got[0].payload, b"taken");
    assert_eq!(got[0].due_ms, 200);
    let fresh = s.queue_put("retries", 0, b"fresh").unwrap();
    for old in [acked, taken, waiting, future] {
        assert!(fresh > old, "{fresh:?} reuses or precedes {old:?}");
    }
}

#[test]
fn ids_stay_unique_when_every_item_was_acked_before_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(0));
    let mut seen: Vec<QueueItemId> = Vec::new();
    for _ in 0..3 {
        let s = open(dir.path(), &clock);
        for _ in 0..3 {
            let id = s.queue_put("jobs", 0, b"x").unwrap();
            assert!(!seen.contains(&id), "id {id:?} handed out twice");
            seen.push(id);
            s.queue_ack("jobs", id).unwrap();
        }
        assert_eq!(s.queue_len("jobs").unwrap(), 0);
    }
}

/// Opens the folder with plain RocksDB and replaces `format_version` in `meta`.
fn write_raw_format_version(path: &Path, version: &[u8]) {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(false);
    let db = rocksdb::DB::open_cf(&opts, path, ["cache", "storage", "queue", "meta"]).unwrap();
    db.put_cf(db.cf_handle("meta").unwrap(), b"format_version", version).unwrap();
}

#[test]
fn format_version_mismatch_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    drop(RocksStore::open(dir.path()).unwrap());
    write_raw_format_version(dir.path(), b"2");
    let err = RocksStore::open(dir.path()).unwrap_err();
    match &err {
        StateError::FormatVersion { found, expected, path } => {
            assert_eq!((*found, *expected), (2, RocksStore::FORMAT_VERSION));
            assert_eq!(path, dir.path());
        }
        other => panic!("expected FormatVersion, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    assert!(msg.contains("version 2") && msg.contains("version 1"), "{msg}");
}

#[test]
fn unreadable_format_version_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    drop(RocksStore::open(dir.path()).unwrap());
    write_raw_format_version(dir.path(), b"one");
    assert!(matches!(RocksStore::open(dir.path()), Err(StateError::Corrupt(_))));
}

#[test]
fn matching_format_version_opens_and_new_folders_are_created() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b/state");
    drop(RocksStore::open(&nested).unwrap());
    let s = RocksStore::open(&nested).unwrap();
    assert_eq!(s.path(), nested);
}

/// The write-ahead log files of a RocksDB folder.
fn wal_files(path: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(path).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "log")).collect()
}

fn counted(path: &Path, clock: &Arc<ManualClock>, n: usize) {
    let s = open(path, clock);
    for _ in 0..n {
        s.cache_incr(&scope(), "counter").unwrap();
    }
}

#[test]
fn a_corrupted_write_ahead_log_is_refused_not_silently_rolled_back() {
    // Corruption in the middle of the log: RocksDB's default recovery stops replaying there and
    // opens a state thousands of increments in the past, without a word. The store refuses.
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    counted(dir.path(), &clock, 5000);
    let wal = wal_files(dir.path());
    let largest = wal.iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).expect("a WAL with the increments");
    let mut bytes = std::fs::read(largest).unwrap();
    assert!(bytes.len() > 10_000, "the increments are in the log: {} bytes", bytes.len());
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(largest, &bytes).unwrap();
    let err = match RocksStore::open_with_clock(dir.path(), clock.clone()) {
        Ok(s) => panic!("opened a corrupted state; counter = {:?}", s.cache_get(&scope(), "counter").unwrap()),
        Err(e) => e.to_string(),
    };
    assert!(err.to_lowercase().contains("corrupt"), "{err}");
}

#[test]
fn a_torn_last_record_from_a_crash_is_tolerated() {
    // kill -9 in the middle of a write leaves the last record incomplete: that is a crash, not
    // corruption, and the state opens with everything before it.
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    counted(dir.path(), &clock, 5000);
    let wal = wal_files(dir.path());
    let largest = wal.iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    let len = std::fs::metadata(largest).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(largest).unwrap().set_len(len - 7).unwrap();
    let s = open(dir.path(), &clock);
    let n: i64 = s.cache_get(&scope(), "counter").unwrap().unwrap().parse().unwrap();
    assert!((4990..=5000).contains(&n), "everything but the torn record: {n}");
}
