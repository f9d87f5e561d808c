//! `RocksStore` after the process dies without closing it (`abort`: no destructor runs, as with
//! kill -9): a storage, queue or pipeline write is there once the call returned; a cache write
//! once the background writer has handed its WAL record to the OS (`cache_wal_pending`).
//!
//! Each test runs itself again as a child process (`PF_CRASH_CHILD` names the folder) that
//! writes and aborts; the parent then opens the folder.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use state::{CacheScope, RocksStore, StateStore};

fn scope() -> CacheScope {
    CacheScope { plugin: "plugin".into(), team: Some(7) }
}

/// Runs test `name` of this binary as a child with `PF_CRASH_CHILD` set to `dir`; the child
/// must die by abort.
fn crash_child(name: &str, dir: &Path) {
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .env("PF_CRASH_CHILD", dir)
        .status()
        .unwrap();
    assert!(!status.success(), "the child was meant to abort: {status}");
}

fn child_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("PF_CRASH_CHILD").map(Into::into)
}

#[test]
fn acknowledged_storage_queue_and_pipeline_writes_survive_a_crash() {
    if let Some(dir) = child_dir() {
        let s = RocksStore::open(&dir).unwrap();
        s.storage_set("config-1", "k", "v").unwrap();
        s.queue_put("retries", 5, b"payload").unwrap();
        s.pipeline_put("checkpoint", b"epoch 9").unwrap();
        // Cache writes before a storage write go out with it.
        std::process::abort();
    }
    let dir = tempfile::tempdir().unwrap();
    crash_child("acknowledged_storage_queue_and_pipeline_writes_survive_a_crash", dir.path());
    let s = RocksStore::open(dir.path()).unwrap();
    assert_eq!(s.storage_get("config-1", "k").unwrap().as_deref(), Some("v"));
    assert_eq!(s.queue_len("retries").unwrap(), 1);
    assert_eq!(s.pipeline_get("checkpoint").unwrap().as_deref(), Some(&b"epoch 9"[..]));
}

#[test]
fn cache_writes_survive_a_crash_once_written_in_the_background_or_with_a_storage_write() {
    if let Some(dir) = child_dir() {
        let s = RocksStore::open(&dir).unwrap();
        s.cache_set(&scope(), "early", "1", None).unwrap();
        s.cache_incr(&scope(), "n").unwrap();
        // The background writer hands the record over within CACHE_WAL_INTERVAL.
        let deadline = Instant::now() + Duration::from_secs(30);
        while s.cache_wal_pending() {
            assert!(Instant::now() < deadline, "the cache's WAL record was not written within 30 s");
            std::thread::yield_now();
        }
        // A storage write takes the cache writes before it along.
        s.cache_set(&scope(), "late", "2", None).unwrap();
        s.storage_set("config-1", "k", "v").unwrap();
        std::process::abort();
    }
    let dir = tempfile::tempdir().unwrap();
    crash_child("cache_writes_survive_a_crash_once_written_in_the_background_or_with_a_storage_write", dir.path());
    let s = RocksStore::open(dir.path()).unwrap();
    assert_eq!(s.cache_get(&scope(), "early").unwrap().as_deref(), Some("1"));
    assert_eq!(s.cache_get(&scope(), "n").unwrap().as_deref(), Some("1"));
    assert_eq!(s.cache_get(&scope(), "late").unwrap().as_deref(), Some("2"));
    assert_eq!(s.storage_get("config-1", "k").unwrap().as_deref(), Some("v"));
}

#[test]
fn a_write_whose_log_record_cannot_be_written_stops_the_store() {
    // The child may write files of 2 MB at most (`prlimit --fsize`, SIGXFSZ ignored, so a
    // write past it fails with EFBIG as on a full disk). Storage writes of 64 KB go on until
    // one fails; from then on nothing is read or written: a write whose WAL record is not on
    // disk is in RocksDB's memory, and reading it back would act on a write reported failed.
    if let Some(dir) = child_dir() {
        let s = RocksStore::open(&dir).unwrap();
        let value = "v".repeat(64 << 10);
        let mut failed = None;
        for n in 0..1000 {
            if let Err(e) = s.storage_set("config-1", &format!("k{n}"), &value) {
                failed = Some((n, e));
                break;
            }
        }
        let (n, e) = failed.expect("a write past the file size limit failed");
        eprintln!("write {n} failed: {e}");
        let after = [
            s.storage_get("config-1", &format!("k{n}")).map(drop),
            s.storage_get("config-1", "k0").map(drop),
            s.cache_set(&scope(), "c", "1", None),
            s.cache_get(&scope(), "c").map(drop),
            s.queue_put("retries", 5, b"p").map(drop),
        ];
        for r in after {
            let e = r.expect_err("the store goes on after a failed log write");
            assert!(e.to_string().contains("stopped after its write-ahead log could not be written"), "{e}");
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let status = Command::new("sh")
        .args(["-c", "trap '' XFSZ; exec prlimit --fsize=2000000 \"$@\"", "sh"])
        .arg(exe)
        .args(["--exact", "a_write_whose_log_record_cannot_be_written_stops_the_store", "--nocapture", "--test-threads", "1"])
        .env("PF_CRASH_CHILD", dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "the child's checks failed: {status}");
}
