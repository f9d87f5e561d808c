//! Read-modify-write cache commands through one shared `RocksStore` from several threads: no
//! update is lost, and queue items are handed out once.

use std::collections::HashSet;
use std::sync::Arc;
use std::thread;

use state::{CacheScope, RocksStore, StateStore};

const PER_THREAD: usize = 10_000;

fn scope() -> CacheScope {
    CacheScope { plugin: "p".into(), team: Some(1) }
}

/// Runs `f(thread_index)` on `threads` threads and collects what each returns.
fn run<T: Send + 'static>(threads: usize, f: impl Fn(usize) -> T + Send + Sync + 'static) -> Vec<T> {
    let f = Arc::new(f);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let f = Arc::clone(&f);
            thread::spawn(move || f(t))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn incr_from(threads: usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RocksStore::open(dir.path()).unwrap());
    let s = Arc::clone(&store);
    let seen = run(threads, move |_| (0..PER_THREAD).map(|_| s.cache_incr(&scope(), "counter").unwrap()).collect::<Vec<_>>());
    let total = (threads * PER_THREAD) as i64;
    assert_eq!(store.cache_get(&scope(), "counter").unwrap(), Some(total.to_string()));
    let distinct: HashSet<i64> = seen.into_iter().flatten().collect();
    assert_eq!(distinct, (1..=total).collect());
}

fn lpush_from(threads: usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RocksStore::open(dir.path()).unwrap());
    let s = Arc::clone(&store);
    let seen = run(threads, move |t| {
        let value = vec![t.to_string()];
        (0..PER_THREAD).map(|_| s.cache_lpush(&scope(), "list", &value).unwrap()).collect::<Vec<_>>()
    });
    let total = (threads * PER_THREAD) as u64;
    assert_eq!(store.cache_llen(&scope(), "list").unwrap(), total);
    let distinct: HashSet<u64> = seen.into_iter().flatten().collect();
    assert_eq!(distinct, (1..=total).collect());
    let all = store.cache_lrange(&scope(), "list", 0, -1).unwrap();
    for t in 0..threads {
        assert_eq!(all.iter().filter(|v| **v == t.to_string()).count(), PER_THREAD);
    }
}

#[test]
fn incr_two_threads() {
    incr_from(2);
}

#[test]
fn incr_four_threads() {
    incr_from(4);
}

#[test]
fn lpush_two_threads() {
    lpush_from(2);
}

#[test]
fn lpush_four_threads() {
    lpush_from(4);
}

#[test]
fn queue_items_are_taken_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RocksStore::open(dir.path()).unwrap());
    let s = Arc::clone(&store);
    let put: Vec<_> = run(4, move |t| (0..250).map(|i| s.queue_put("q", (t * 1000 + i) as u64, b"x").unwrap()).collect::<Vec<_>>());
    let s = Arc::clone(&store);
    let taken = run(4, move |_| {
        let mut mine = Vec::new();
        loop {
            let got = s.queue_take_due("q", u64::MAX, 7).unwrap();
            if got.is_empty() {
                break mine;
            }
            mine.extend(got.into_iter().map(|i| i.id));
        }
    });
    let put: HashSet<_> = put.into_iter().flatten().collect();
    let taken: Vec<_> = taken.into_iter().flatten().collect();
    assert_eq!(put.len(), 1_000, "ids collided");
    assert_eq!(taken.len(), 1_000, "an item was handed out twice or never");
    assert_eq!(taken.into_iter().collect::<HashSet<_>>(), put);
}

/// A released item can be taken again (by anyone), once; releasing under another queue's name,
/// or an item not taken, changes nothing.
#[test]
fn a_released_item_is_taken_again() {
    let dir = tempfile::tempdir().unwrap();
    let rocks = RocksStore::open(dir.path()).unwrap();
    let memory = state::MemoryStore::new();
    for store in [&rocks as &dyn StateStore, &memory] {
        let a = store.queue_put("q", 1, b"a").unwrap();
        let b = store.queue_put("q", 2, b"b").unwrap();
        assert_eq!(store.queue_take_due("q", 10, 10).unwrap().len(), 2);
        assert!(store.queue_take_due("q", 10, 10).unwrap().is_empty(), "taken items are not handed out twice");
        store.queue_release("other", a).unwrap();
        assert!(store.queue_take_due("q", 10, 10).unwrap().is_empty(), "another queue's name releases nothing");
        store.queue_release("q", a).unwrap();
        let again = store.queue_take_due("q", 10, 10).unwrap();
        assert_eq!(again.iter().map(|i| (i.id, i.payload.clone())).collect::<Vec<_>>(), [(a, b"a".to_vec())]);
        assert!(store.queue_take_due("q", 10, 10).unwrap().is_empty());
        store.queue_ack("q", a).unwrap();
        store.queue_ack("q", b).unwrap();
        store.queue_release("q", b).unwrap(); // acknowledged: nothing to release
        assert_eq!(store.queue_len("q").unwrap(), 0);
    }
}
