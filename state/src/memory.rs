//! [`MemoryStore`]: the in-memory twin of [`RocksStore`](crate::RocksStore), for tests and
//! `pluginflow try`. Same semantics, same key layout, nothing survives the process.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::cache::{self, CacheSlots};
use crate::clock::{Clock, SystemClock};
use crate::keys;
use crate::value::Entry;
use crate::{CacheScope, QueueItem, QueueItemId, Result, StateStore};

/// A [`StateStore`] kept in process memory. Each of cache, storage and queues sits behind its own
/// mutex, so every operation is atomic.
pub struct MemoryStore {
    clock: Arc<dyn Clock>,
    cache: Mutex<HashMap<Vec<u8>, Entry>>,
    storage: Mutex<HashMap<Vec<u8>, String>>,
    queues: Mutex<Queues>,
    pipeline: Mutex<HashMap<String, Vec<u8>>>,
}

/// Queue items by [`keys::queue_key`], plus what this instance has handed out.
#[derive(Default)]
struct Queues {
    items: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Taken and not yet acknowledged: id → item key.
    taken: HashMap<u64, Vec<u8>>,
    next_id: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemoryStore {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// An empty store whose TTLs follow `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            cache: Mutex::default(),
            storage: Mutex::default(),
            queues: Mutex::new(Queues { next_id: 1, ..Queues::default() }),
            pipeline: Mutex::default(),
        }
    }

    /// Deletes expired cache entries and returns how many there were.
    pub fn sweep_expired(&self) -> Result<u64> {
        let now = self.clock.now_ms();
        let mut cache = lock(&self.cache);
        let before = cache.len();
        cache.retain(|_, e| !e.is_expired(now));
        Ok((before - cache.len()) as u64)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl CacheSlots for MemoryStore {
    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    fn load(&self, key: &[u8]) -> Result<Option<Entry>> {
        Ok(lock(&self.cache).get(key).cloned())
    }

    fn update<R>(&self, key: &[u8], f: impl FnOnce(&mut Option<Entry>) -> Result<(R, bool)>) -> Result<R> {
        let mut cache = lock(&self.cache);
        let mut slot = cache.get(key).cloned();
        let (result, changed) = f(&mut slot)?;
        if changed {
            match slot {
                Some(e) => cache.insert(key.to_vec(), e),
                None => cache.remove(key),
            };
        }
        Ok(result)
    }

    fn replace(&self, key: &[u8], entry: Entry) -> Result<()> {
        lock(&self.cache).insert(key.to_vec(), entry);
        Ok(())
    }
}

impl Queues {
    /// Items of the queue with `prefix`, in key (due, id) order.
    fn scan<'a>(&'a self, prefix: &'a [u8]) -> impl Iterator<Item = (&'a Vec<u8>, &'a Vec<u8>)> {
        self.items.range(prefix.to_vec()..).take_while(move |(k, _)| k.starts_with(prefix))
    }

    fn key_of(&self, prefix: &[u8], id: u64) -> Option<Vec<u8>> {
        if let Some(k) = self.taken.get(&id).filter(|k| k.starts_with(prefix)) {
            return Some(k.clone());
        }
        self.scan(prefix).map(|(k, _)| k).find(|k| keys::queue_due_id(k).is_ok_and(|(_, i)| i == id)).cloned()
    }
}

impl StateStore for MemoryStore {
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
        Ok(lock(&self.storage).get(&keys::storage_key(config, key)).cloned())
    }

    fn storage_set(&self, config: &str, key: &str, value: &str) -> Result<()> {
        lock(&self.storage).insert(keys::storage_key(config, key), value.to_owned());
        Ok(())
    }

    fn storage_del(&self, config: &str, key: &str) -> Result<()> {
        lock(&self.storage).remove(&keys::storage_key(config, key));
        Ok(())
    }

    fn queue_put(&self, queue: &str, due_ms: u64, payload: &[u8]) -> Result<QueueItemId> {
        let mut q = lock(&self.queues);
        let id = q.next_id;
        q.next_id += 1;
        q.items.insert(keys::queue_key(queue, due_ms, id), payload.to_vec());
        Ok(QueueItemId(id))
    }

    fn queue_put_taken(&self, queue: &str, due_ms: u64, payload: &[u8]) -> Result<QueueItemId> {
        let mut q = lock(&self.queues);
        let id = q.next_id;
        q.next_id += 1;
        let key = keys::queue_key(queue, due_ms, id);
        q.items.insert(key.clone(), payload.to_vec());
        q.taken.insert(id, key);
        Ok(QueueItemId(id))
    }

    fn queue_take_due(&self, queue: &str, now_ms: u64, limit: usize) -> Result<Vec<QueueItem>> {
        let mut q = lock(&self.queues);
        let prefix = keys::queue_prefix(queue);
        let mut out = Vec::new();
        for (k, payload) in q.scan(&prefix) {
            let (due_ms, id) = keys::queue_due_id(k)?;
            if out.len() >= limit || due_ms > now_ms {
                break;
            }
            if !q.taken.contains_key(&id) {
                out.push((k.clone(), QueueItem { id: QueueItemId(id), due_ms, payload: payload.clone() }));
            }
        }
        Ok(out
            .into_iter()
            .map(|(k, item)| {
                q.taken.insert(item.id.0, k);
                item
            })
            .collect())
    }

    fn queue_ack(&self, queue: &str, id: QueueItemId) -> Result<()> {
        let mut q = lock(&self.queues);
        if let Some(k) = q.key_of(&keys::queue_prefix(queue), id.0) {
            q.items.remove(&k);
            q.taken.remove(&id.0);
        }
        Ok(())
    }

    fn queue_release(&self, queue: &str, id: QueueItemId) -> Result<()> {
        let mut q = lock(&self.queues);
        if q.taken.get(&id.0).is_some_and(|key| key.starts_with(&keys::queue_prefix(queue))) {
            q.taken.remove(&id.0);
        }
        Ok(())
    }

    fn queue_len(&self, queue: &str) -> Result<u64> {
        let q = lock(&self.queues);
        Ok(q.scan(&keys::queue_prefix(queue)).count() as u64)
    }

    fn pipeline_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(lock(&self.pipeline).get(key).cloned())
    }

    fn pipeline_put(&self, key: &str, value: &[u8]) -> Result<()> {
        lock(&self.pipeline).insert(key.to_string(), value.to_vec());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ManualClock, StateError};

    fn scope() -> CacheScope {
        CacheScope { plugin: "p".into(), team: Some(2) }
    }

    fn store() -> (Arc<ManualClock>, MemoryStore) {
        let clock = Arc::new(ManualClock::new(10_000));
        (clock.clone(), MemoryStore::with_clock(clock))
    }

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn set_get_and_ttl() {
        let (clock, s) = store();
        s.cache_set(&scope(), "k", "v", Some(2)).unwrap();
        s.cache_set(&scope(), "forever", "v", Some(0)).unwrap();
        clock.advance_ms(1_999);
        assert_eq!(s.cache_get(&scope(), "k").unwrap().as_deref(), Some("v"));
        clock.advance_ms(1);
        assert_eq!(s.cache_get(&scope(), "k").unwrap(), None);
        assert_eq!(s.sweep_expired().unwrap(), 1);
        assert_eq!(s.sweep_expired().unwrap(), 0);
        assert_eq!(s.cache_get(&scope(), "forever").unwrap().as_deref(), Some("v"));
    }

    #[test]
    fn set_clears_old_ttl_and_type() {
        let (clock, s) = store();
        s.cache_lpush(&scope(), "k", &strings(&["a"])).unwrap();
        s.cache_expire(&scope(), "k", 1).unwrap();
        s.cache_set(&scope(), "k", "v", None).unwrap();
        clock.advance_secs(100);
        assert_eq!(s.cache_get(&scope(), "k").unwrap().as_deref(), Some("v"));
    }

    #[test]
    fn incr_counts_keeps_ttl_and_rejects_non_integers() {
        let (clock, s) = store();
        assert_eq!(s.cache_incr(&scope(), "n").unwrap(), 1);
        s.cache_set(&scope(), "n", "41", Some(5)).unwrap();
        assert_eq!(s.cache_incr(&scope(), "n").unwrap(), 42);
        clock.advance_secs(5);
        assert_eq!(s.cache_get(&scope(), "n").unwrap(), None);
        s.cache_set(&scope(), "n", "\"41\"", None).unwrap();
        assert!(matches!(s.cache_incr(&scope(), "n"), Err(StateError::NotAnInteger)));
        s.cache_set(&scope(), "n", &i64::MAX.to_string(), None).unwrap();
        assert!(matches!(s.cache_incr(&scope(), "n"), Err(StateError::NotAnInteger)));
        s.cache_lpush(&scope(), "l", &strings(&["1"])).unwrap();
        assert!(matches!(s.cache_incr(&scope(), "l"), Err(StateError::WrongType)));
    }

    #[test]
    fn expire_rules() {
        let (clock, s) = store();
        assert!(!s.cache_expire(&scope(), "k", 5).unwrap());
        s.cache_set(&scope(), "k", "v", None).unwrap();
        assert!(s.cache_expire(&scope(), "k", 5).unwrap());
        clock.advance_secs(5);
        assert!(!s.cache_expire(&scope(), "k", 5).unwrap());
        s.cache_set(&scope(), "k", "v", None).unwrap();
        assert!(s.cache_expire(&scope(), "k", 0).unwrap());
        assert_eq!(s.cache_get(&scope(), "k").unwrap(), None);
    }

    #[test]
    fn list_commands_and_wrong_type() {
        let (_, s) = store();
        assert_eq!(s.cache_lpush(&scope(), "l", &strings(&["a", "b"])).unwrap(), 2);
        assert_eq!(s.cache_lpush(&scope(), "l", &strings(&["c"])).unwrap(), 3);
        assert_eq!(s.cache_lrange(&scope(), "l", 0, -1).unwrap(), ["c", "b", "a"]);
        assert_eq!(s.cache_llen(&scope(), "l").unwrap(), 3);
        assert_eq!(s.cache_lpop(&scope(), "l", 2).unwrap(), ["c", "b"]);
        assert_eq!(s.cache_lrem(&scope(), "l", 0, "a").unwrap(), 1);
        assert_eq!(s.cache_llen(&scope(), "l").unwrap(), 0);
        assert_eq!(s.cache_get(&scope(), "l").unwrap(), None);
        s.cache_set(&scope(), "s", "x", None).unwrap();
        assert!(matches!(s.cache_lpush(&scope(), "s", &strings(&["a"])), Err(StateError::WrongType)));
        assert!(matches!(s.cache_llen(&scope(), "s"), Err(StateError::WrongType)));
        assert!(matches!(s.cache_lrange(&scope(), "s", 0, -1), Err(StateError::WrongType)));
        assert!(matches!(s.cache_lpop(&scope(), "s", 1), Err(StateError::WrongType)));
        assert!(matches!(s.cache_lrem(&scope(), "s", 0, "x"), Err(StateError::WrongType)));
        s.cache_lpush(&scope(), "l", &strings(&["a"])).unwrap();
        assert!(matches!(s.cache_get(&scope(), "l"), Err(StateError::WrongType)));
    }

    #[test]
    fn scopes_and_configs_are_separate() {
        let (_, s) = store();
        let all = CacheScope { plugin: "p".into(), team: None };
        s.cache_set(&scope(), "k", "team", None).unwrap();
        s.cache_set(&all, "k", "all", None).unwrap();
        assert_eq!(s.cache_get(&scope(), "k").unwrap().as_deref(), Some("team"));
        assert_eq!(s.cache_get(&all, "k").unwrap().as_deref(), Some("all"));
        s.storage_set("a", "b/c", "1").unwrap();
        assert_eq!(s.storage_get("a/b", "c").unwrap(), None);
        s.storage_del("a", "b/c").unwrap();
        s.storage_del("a", "b/c").unwrap();
        assert_eq!(s.storage_get("a", "b/c").unwrap(), None);
    }

    #[test]
    fn queue_take_ack_and_len() {
        let (_, s) = store();
        let late = s.queue_put("q", 300, b"late").unwrap();
        let early = s.queue_put("q", 100, b"early").unwrap();
        s.queue_put("other", 0, b"x").unwrap();
        assert_eq!(s.queue_take_due("q", 99, 10).unwrap(), []);
        let taken = s.queue_take_due("q", 1_000, 10).unwrap();
        assert_eq!(taken.iter().map(|i| i.id).collect::<Vec<_>>(), [early, late]);
        assert_eq!(taken[0].payload, b"early");
        assert_eq!(s.queue_take_due("q", 1_000, 10).unwrap(), []);
        assert_eq!(s.queue_len("q").unwrap(), 2);
        s.queue_ack("q", early).unwrap();
        s.queue_ack("other", late).unwrap(); // wrong queue: no effect
        assert_eq!(s.queue_len("q").unwrap(), 1);
        assert_eq!(s.queue_len("other").unwrap(), 1);
        let x = s.queue_take_due("other", 0, 0).unwrap();
        assert!(x.is_empty());
    }
}
