//! Model-based test: random sequences of cache and storage commands and clock moves, applied to
//! `MemoryStore`, `RocksStore` and a plain `BTreeMap` model of Redis semantics written here. All
//! three must return the same thing for every command, and hold the same visible state after it.
//!
//! The same sequences run against `RedisStore` on a real Redis server (Debian's `redis-server`,
//! started here), which is also an oracle for the model: Redis's own answers. Redis keeps time by
//! its own clock, so there the clock moves are left out and every time to live is an hour or
//! more (nothing expires within a case); `redis_expires_keys_by_its_clock` checks expiry itself.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use state::{CacheScope, ManualClock, MemoryStore, RedisStore, RocksStore, StateError, StateStore};

#[path = "../../tests/src/redis_server.rs"]
#[allow(dead_code)] // restarts are tested in redis.rs
mod redis_server;
use redis_server::RedisServer;

const START_MS: u64 = 1_700_000_000_000;
const KEYS: [&str; 3] = ["a", "b", "a/b"];
const CONFIGS: [&str; 2] = ["cfg", "cfg/a"];
const VALUES: [&str; 12] = ["0", "41", "-3", "x", "", "+1", " 1", "9223372036854775807", "\"7\"", "01", "-0", "-9223372036854775808"];

fn scopes() -> [CacheScope; 4] {
    [
        CacheScope { plugin: "p".into(), team: None },
        CacheScope { plugin: "p".into(), team: Some(1) },
        CacheScope { plugin: "p/1".into(), team: None },
        CacheScope { plugin: "q".into(), team: Some(1) },
    ]
}

#[derive(Clone, Debug)]
enum Op {
    Set(usize, usize, usize, Option<u64>),
    Get(usize, usize),
    Incr(usize, usize),
    Expire(usize, usize, u64),
    Lpush(usize, usize, Vec<usize>),
    Lrange(usize, usize, i64, i64),
    Llen(usize, usize),
    Lpop(usize, usize, u64),
    Lrem(usize, usize, i64, usize),
    StorageSet(usize, usize, usize),
    StorageGet(usize, usize),
    StorageDel(usize, usize),
    Advance(u64),
    /// `sweep_expired` on both stores; must not change what is visible.
    Sweep,
    /// `compact_cache` on the RocksDB store (runs the expiry compaction filter).
    Compact,
}

/// What a command returned, errors reduced to their kind.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Out {
    Unit,
    Str(Option<String>),
    Int(i64),
    Bool(bool),
    Len(u64),
    List(Vec<String>),
    NotAnInteger,
    WrongType,
}

/// A (scope, key) slot, biased towards one hot slot so commands pile up on the same value.
fn slot() -> impl Strategy<Value = (usize, usize)> {
    prop_oneof![3 => Just((0, 0)), 2 => (0..4usize, 0..KEYS.len())]
}

/// A value index, biased towards the integers at the front of [`VALUES`] so `incr` succeeds.
fn value() -> impl Strategy<Value = usize> {
    prop_oneof![2 => 0..3usize, 1 => 0..VALUES.len()]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let ttl = prop_oneof![Just(None), Just(Some(0)), (1u64..4).prop_map(Some)];
    prop_oneof![
        2 => (slot(), value(), ttl).prop_map(|((s, k), v, t)| Op::Set(s, k, v, t)),
        2 => slot().prop_map(|(s, k)| Op::Get(s, k)),
        3 => slot().prop_map(|(s, k)| Op::Incr(s, k)),
        2 => (slot(), 0u64..4).prop_map(|((s, k), t)| Op::Expire(s, k, t)),
        4 => (slot(), prop::collection::vec(value(), 0..5)).prop_map(|((s, k), vs)| Op::Lpush(s, k, vs)),
        2 => (slot(), -6i64..6, -6i64..6).prop_map(|((s, k), a, b)| Op::Lrange(s, k, a, b)),
        1 => slot().prop_map(|(s, k)| Op::Llen(s, k)),
        2 => (slot(), 0u64..4).prop_map(|((s, k), c)| Op::Lpop(s, k, c)),
        2 => (slot(), -2i64..3, value()).prop_map(|((s, k), c, v)| Op::Lrem(s, k, c, v)),
        1 => (0..2usize, 0..KEYS.len(), value()).prop_map(|(c, k, v)| Op::StorageSet(c, k, v)),
        1 => (0..2usize, 0..KEYS.len()).prop_map(|(c, k)| Op::StorageGet(c, k)),
        1 => (0..2usize, 0..KEYS.len()).prop_map(|(c, k)| Op::StorageDel(c, k)),
        3 => prop_oneof![Just(0u64), Just(999), Just(1_000), 0u64..4_000].prop_map(Op::Advance),
        1 => Just(Op::Sweep),
        1 => Just(Op::Compact),
    ]
}

/// Mostly list commands on few slots, so lists grow long enough for `LREM`/`LRANGE` details.
fn list_op_strategy() -> impl Strategy<Value = Op> {
    let slot = || (0..2usize, 0..2usize);
    prop_oneof![
        4 => (slot(), prop::collection::vec(value(), 1..5)).prop_map(|((s, k), vs)| Op::Lpush(s, k, vs)),
        2 => (slot(), -6i64..6, -6i64..6).prop_map(|((s, k), a, b)| Op::Lrange(s, k, a, b)),
        1 => slot().prop_map(|(s, k)| Op::Llen(s, k)),
        1 => (slot(), 0u64..3).prop_map(|((s, k), c)| Op::Lpop(s, k, c)),
        3 => (slot(), -2i64..3, value()).prop_map(|((s, k), c, v)| Op::Lrem(s, k, c, v)),
        1 => (slot(), 0u64..3).prop_map(|((s, k), t)| Op::Expire(s, k, t)),
        1 => (slot(), value()).prop_map(|((s, k), v)| Op::Set(s, k, v, None)),
        1 => slot().prop_map(|(s, k)| Op::Incr(s, k)),
        1 => (0u64..2_500).prop_map(Op::Advance),
    ]
}

/// Half the cases mix every command, half lean on lists.
fn ops_strategy() -> impl Strategy<Value = Vec<Op>> {
    prop_oneof![prop::collection::vec(op_strategy(), 1..40), prop::collection::vec(list_op_strategy(), 1..40),]
}

fn out<T>(r: Result<T, StateError>, f: impl FnOnce(T) -> Out) -> Out {
    match r {
        Ok(v) => f(v),
        Err(StateError::NotAnInteger) => Out::NotAnInteger,
        Err(StateError::WrongType) => Out::WrongType,
        Err(e) => panic!("unexpected store error: {e}"),
    }
}

fn strings(idx: &[usize]) -> Vec<String> {
    idx.iter().map(|&i| VALUES[i].to_owned()).collect()
}

/// Applies `op` to a real store (clock moves are done by the caller).
fn apply(store: &dyn StateStore, op: &Op) -> Out {
    let sc = scopes();
    match *op {
        Op::Set(s, k, v, t) => out(store.cache_set(&sc[s], KEYS[k], VALUES[v], t), |()| Out::Unit),
        Op::Get(s, k) => out(store.cache_get(&sc[s], KEYS[k]), Out::Str),
        Op::Incr(s, k) => out(store.cache_incr(&sc[s], KEYS[k]), Out::Int),
        Op::Expire(s, k, t) => out(store.cache_expire(&sc[s], KEYS[k], t), Out::Bool),
        Op::Lpush(s, k, ref vs) => out(store.cache_lpush(&sc[s], KEYS[k], &strings(vs)), Out::Len),
        Op::Lrange(s, k, a, b) => out(store.cache_lrange(&sc[s], KEYS[k], a, b), Out::List),
        Op::Llen(s, k) => out(store.cache_llen(&sc[s], KEYS[k]), Out::Len),
        Op::Lpop(s, k, c) => out(store.cache_lpop(&sc[s], KEYS[k], c), Out::List),
        Op::Lrem(s, k, c, v) => out(store.cache_lrem(&sc[s], KEYS[k], c, VALUES[v]), Out::Len),
        Op::StorageSet(c, k, v) => out(store.storage_set(CONFIGS[c], KEYS[k], VALUES[v]), |()| Out::Unit),
        Op::StorageGet(c, k) => out(store.storage_get(CONFIGS[c], KEYS[k]), Out::Str),
        Op::StorageDel(c, k) => out(store.storage_del(CONFIGS[c], KEYS[k]), |()| Out::Unit),
        Op::Advance(_) | Op::Sweep | Op::Compact => Out::Unit,
    }
}

/// Everything a caller can see of a store: each cache key as a string or a list, and storage.
fn snapshot(store: &dyn StateStore) -> Vec<Out> {
    let mut seen = Vec::new();
    for scope in &scopes() {
        for key in KEYS {
            seen.push(match store.cache_get(scope, key) {
                Err(StateError::WrongType) => out(store.cache_lrange(scope, key, 0, -1), Out::List),
                r => out(r, Out::Str),
            });
        }
    }
    for config in CONFIGS {
        for key in KEYS {
            seen.push(out(store.storage_get(config, key), Out::Str));
        }
    }
    seen
}

#[derive(Clone, Debug)]
enum MValue {
    Str(String),
    List(VecDeque<String>),
}

/// The reference: Redis semantics spelled out on a `BTreeMap`.
#[derive(Debug, Default)]
struct Model {
    now: u64,
    cache: BTreeMap<(usize, usize), (Option<u64>, MValue)>,
    storage: BTreeMap<(usize, usize), String>,
}

impl Model {
    /// The live entry under (s, k), dropping it if it has expired.
    fn live(&mut self, at: (usize, usize)) -> Option<&mut (Option<u64>, MValue)> {
        if self.cache.get(&at).is_some_and(|(exp, _)| exp.is_some_and(|e| self.now >= e)) {
            self.cache.remove(&at);
        }
        self.cache.get_mut(&at)
    }

    fn list(&mut self, at: (usize, usize)) -> Result<Option<&mut VecDeque<String>>, Out> {
        match self.live(at) {
            None => Ok(None),
            Some((_, MValue::List(l))) => Ok(Some(l)),
            Some(_) => Err(Out::WrongType),
        }
    }

    fn apply(&mut self, op: &Op) -> Out {
        match *op {
            Op::Set(s, k, v, t) => {
                let exp = t.filter(|&t| t > 0).map(|t| self.now + t * 1000);
                self.cache.insert((s, k), (exp, MValue::Str(VALUES[v].into())));
                Out::Unit
            }
            Op::Get(s, k) => match self.live((s, k)) {
                None => Out::Str(None),
                Some((_, MValue::Str(v))) => Out::Str(Some(v.clone())),
                Some(_) => Out::WrongType,
            },
            Op::Incr(s, k) => self.incr((s, k)),
            Op::Expire(s, k, t) => {
                let now = self.now;
                match self.live((s, k)) {
                    None => Out::Bool(false),
                    Some(_) if t == 0 => {
                        self.cache.remove(&(s, k));
                        Out::Bool(true)
                    }
                    Some(entry) => {
                        entry.0 = Some(now + t * 1000);
                        Out::Bool(true)
                    }
                }
            }
            Op::Lpush(s, k, ref vs) => self.lpush((s, k), vs),
            Op::Lrange(s, k, a, b) => match self.list((s, k)) {
                Err(e) => e,
                Ok(None) => Out::List(vec![]),
                Ok(Some(l)) => Out::List(lrange(l, a, b)),
            },
            Op::Llen(s, k) => match self.list((s, k)) {
                Err(e) => e,
                Ok(l) => Out::Len(l.map_or(0, |l| l.len() as u64)),
            },
            Op::Lpop(s, k, c) => self.lpop((s, k), c),
            Op::Lrem(s, k, c, v) => self.lrem((s, k), c, VALUES[v]),
            Op::StorageSet(c, k, v) => {
                self.storage.insert((c, k), VALUES[v].into());
                Out::Unit
            }
            Op::StorageGet(c, k) => Out::Str(self.storage.get(&(c, k)).cloned()),
            Op::StorageDel(c, k) => {
                self.storage.remove(&(c, k));
                Out::Unit
            }
            Op::Advance(ms) => {
                self.now += ms;
                Out::Unit
            }
            Op::Sweep | Op::Compact => Out::Unit,
        }
    }

    /// What [`snapshot`] would see of the model.
    fn snapshot(&mut self) -> Vec<Out> {
        let mut seen = Vec::new();
        for s in 0..scopes().len() {
            for k in 0..KEYS.len() {
                seen.push(match self.apply(&Op::Get(s, k)) {
                    Out::WrongType => self.apply(&Op::Lrange(s, k, 0, -1)),
                    o => o,
                });
            }
        }
        for c in 0..CONFIGS.len() {
            for k in 0..KEYS.len() {
                seen.push(Out::Str(self.storage.get(&(c, k)).cloned()));
            }
        }
        seen
    }

    fn incr(&mut self, at: (usize, usize)) -> Out {
        let (exp, current) = match self.live(at) {
            None => (None, 0),
            Some((_, MValue::List(_))) => return Out::WrongType,
            Some((exp, MValue::Str(v))) => {
                // Redis: "0", or digits without a leading zero after an optional minus.
                let unsigned = v.strip_prefix('-').unwrap_or(v);
                if v != "0" && (unsigned.starts_with('0') || unsigned.starts_with('+')) {
                    return Out::NotAnInteger;
                }
                match v.parse::<i64>() {
                    Ok(n) => (*exp, n),
                    Err(_) => return Out::NotAnInteger,
                }
            }
        };
        let Some(next) = current.checked_add(1) else {
            return Out::NotAnInteger;
        };
        self.cache.insert(at, (exp, MValue::Str(next.to_string())));
        Out::Int(next)
    }

    fn lpush(&mut self, at: (usize, usize), vs: &[usize]) -> Out {
        match self.list(at) {
            Err(e) => e,
            Ok(Some(l)) => {
                vs.iter().for_each(|&v| l.push_front(VALUES[v].into()));
                Out::Len(l.len() as u64)
            }
            Ok(None) if vs.is_empty() => Out::Len(0),
            Ok(None) => {
                let l: VecDeque<String> = vs.iter().rev().map(|&v| VALUES[v].to_owned()).collect();
                let len = l.len() as u64;
                self.cache.insert(at, (None, MValue::List(l)));
                Out::Len(len)
            }
        }
    }

    fn lpop(&mut self, at: (usize, usize), count: u64) -> Out {
        let popped = match self.list(at) {
            Err(e) => return e,
            Ok(None) => return Out::List(vec![]),
            Ok(Some(l)) => (0..count).map_while(|_| l.pop_front()).collect(),
        };
        self.drop_if_empty(at);
        Out::List(popped)
    }

    fn lrem(&mut self, at: (usize, usize), count: i64, value: &str) -> Out {
        let removed = match self.list(at) {
            Err(e) => return e,
            Ok(None) => return Out::Len(0),
            Ok(Some(l)) => lrem(l, count, value),
        };
        self.drop_if_empty(at);
        Out::Len(removed)
    }

    fn drop_if_empty(&mut self, at: (usize, usize)) {
        if matches!(self.cache.get(&at), Some((_, MValue::List(l))) if l.is_empty()) {
            self.cache.remove(&at);
        }
    }
}

fn lrange(l: &VecDeque<String>, start: i64, stop: i64) -> Vec<String> {
    let len = l.len() as i64;
    let start = if start < 0 { (len + start).max(0) } else { start };
    let stop = if stop < 0 { len + stop } else { stop.min(len - 1) };
    (start..=stop).filter(|&i| i < len).map(|i| l[i as usize].clone()).collect()
}

fn lrem(l: &mut VecDeque<String>, count: i64, value: &str) -> u64 {
    let mut removed = 0u64;
    let limit = if count == 0 { u64::MAX } else { count.unsigned_abs() };
    let positions: Vec<usize> = if count < 0 { (0..l.len()).rev().collect() } else { (0..l.len()).collect() };
    let mut doomed = Vec::new();
    for i in positions {
        if removed < limit && l[i] == value {
            doomed.push(i);
            removed += 1;
        }
    }
    doomed.sort_unstable();
    for i in doomed.into_iter().rev() {
        l.remove(i);
    }
    removed
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn stores_agree_with_the_model(ops in ops_strategy()) {
        let clock = Arc::new(ManualClock::new(START_MS));
        let memory = MemoryStore::with_clock(clock.clone());
        let dir = tempfile::tempdir().unwrap();
        let rocks = RocksStore::open_with_clock(dir.path(), clock.clone()).unwrap();
        let mut model = Model { now: START_MS, ..Model::default() };
        for (step, op) in ops.iter().enumerate() {
            match op {
                Op::Advance(ms) => clock.advance_ms(*ms),
                Op::Sweep => {
                    memory.sweep_expired().unwrap();
                    rocks.sweep_expired().unwrap();
                }
                Op::Compact => rocks.compact_cache().unwrap(),
                _ => {}
            }
            let expected = model.apply(op);
            prop_assert_eq!(&apply(&memory, op), &expected, "memory, step {} {:?}", step, op);
            prop_assert_eq!(&apply(&rocks, op), &expected, "rocks, step {} {:?}", step, op);
            let seen = snapshot(&memory);
            prop_assert_eq!(&snapshot(&rocks), &seen, "snapshots differ after step {}", step);
            let model_seen = model.snapshot();
            prop_assert_eq!(&seen, &model_seen, "model snapshot differs after step {}", step);
        }
    }
}

/// A sequence as it runs against Redis: no clock moves or store-specific sweeps, and every time to
/// live an hour or more, so nothing expires while a case runs on Redis's own clock.
fn for_redis(ops: &[Op]) -> Vec<Op> {
    ops.iter()
        .filter_map(|op| match *op {
            Op::Advance(_) | Op::Sweep | Op::Compact => None,
            Op::Set(s, k, v, Some(t)) if t > 0 => Some(Op::Set(s, k, v, Some(t * 3_600))),
            Op::Expire(s, k, t) if t > 0 => Some(Op::Expire(s, k, t * 3_600)),
            ref op => Some(op.clone()),
        })
        .collect()
}

#[test]
fn redis_agrees_with_the_model() {
    let server = RedisServer::start();
    let case = AtomicUsize::new(0);
    let config = ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let result = runner.run(&ops_strategy(), |ops| {
        // Each case its own key prefix: an empty store on the same server.
        let prefix = format!("model{}", case.fetch_add(1, Ordering::Relaxed));
        let store = RedisStore::open(&server.url(), &prefix, Duration::from_secs(10), Box::new(MemoryStore::new())).unwrap();
        let mut model = Model { now: START_MS, ..Model::default() };
        for (step, op) in for_redis(&ops).iter().enumerate() {
            let expected = model.apply(op);
            prop_assert_eq!(&apply(&store, op), &expected, "redis, step {} {:?}", step, op);
            prop_assert_eq!(&snapshot(&store), &model.snapshot(), "redis snapshot after step {}", step);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The model itself gets the Redis `LRANGE`/`LREM` rules right (so the comparison means
/// something).
#[test]
fn model_list_rules() {
    let l: VecDeque<String> = ["a", "b", "c", "d", "e"].map(String::from).into();
    assert_eq!(lrange(&l, 0, -1), ["a", "b", "c", "d", "e"]);
    assert_eq!(lrange(&l, -2, -1), ["d", "e"]);
    assert_eq!(lrange(&l, -100, 1), ["a", "b"]);
    assert_eq!(lrange(&l, 3, 100), ["d", "e"]);
    assert!(lrange(&l, 3, 1).is_empty());
    assert!(lrange(&l, 0, -6).is_empty());
    assert!(lrange(&l, 5, 9).is_empty());
    let mut l: VecDeque<String> = ["x", "a", "x", "b", "x"].map(String::from).into();
    assert_eq!(lrem(&mut l, -2, "x"), 2);
    assert_eq!(l, ["x", "a", "b"]);
}
