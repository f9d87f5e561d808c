//! A slow state store (a stalled Redis, say) cannot stretch a plugin call past its deadline: once
//! the call's time is up, `cache` and `storage` commands are refused without waiting.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::plugin;
use operators::plugin::worker::{PluginSpec, WorkerPlugins};
use operators::plugin::{HostServices, Limits, MemoryLogSink, PluginDefinition};
use state::{CacheScope, MemoryStore, QueueItem, QueueItemId, StateStore};

/// A store whose cache commands each take `delay`; everything else is a memory store.
struct Slow {
    inner: MemoryStore,
    delay: Duration,
}

impl StateStore for Slow {
    fn cache_get(&self, scope: &CacheScope, key: &str) -> state::Result<Option<String>> {
        std::thread::sleep(self.delay);
        self.inner.cache_get(scope, key)
    }
    fn cache_set(&self, scope: &CacheScope, key: &str, value: &str, ttl: Option<u64>) -> state::Result<()> {
        std::thread::sleep(self.delay);
        self.inner.cache_set(scope, key, value, ttl)
    }
    fn cache_incr(&self, scope: &CacheScope, key: &str) -> state::Result<i64> {
        self.inner.cache_incr(scope, key)
    }
    fn cache_expire(&self, scope: &CacheScope, key: &str, ttl: u64) -> state::Result<bool> {
        self.inner.cache_expire(scope, key, ttl)
    }
    fn cache_lpush(&self, scope: &CacheScope, key: &str, values: &[String]) -> state::Result<u64> {
        self.inner.cache_lpush(scope, key, values)
    }
    fn cache_lrange(&self, scope: &CacheScope, key: &str, start: i64, stop: i64) -> state::Result<Vec<String>> {
        self.inner.cache_lrange(scope, key, start, stop)
    }
    fn cache_llen(&self, scope: &CacheScope, key: &str) -> state::Result<u64> {
        self.inner.cache_llen(scope, key)
    }
    fn cache_lpop(&self, scope: &CacheScope, key: &str, count: u64) -> state::Result<Vec<String>> {
        self.inner.cache_lpop(scope, key, count)
    }
    fn cache_lrem(&self, scope: &CacheScope, key: &str, count: i64, value: &str) -> state::Result<u64> {
        self.inner.cache_lrem(scope, key, count, value)
    }
    fn storage_get(&self, config: &str, key: &str) -> state::Result<Option<String>> {
        self.inner.storage_get(config, key)
    }
    fn storage_set(&self, config: &str, key: &str, value: &str) -> state::Result<()> {
        self.inner.storage_set(config, key, value)
    }
    fn storage_del(&self, config: &str, key: &str) -> state::Result<()> {
        self.inner.storage_del(config, key)
    }
    fn queue_put(&self, queue: &str, due_ms: u64, payload: &[u8]) -> state::Result<QueueItemId> {
        self.inner.queue_put(queue, due_ms, payload)
    }
    fn queue_put_taken(&self, queue: &str, due_ms: u64, payload: &[u8]) -> state::Result<QueueItemId> {
        self.inner.queue_put_taken(queue, due_ms, payload)
    }
    fn queue_take_due(&self, queue: &str, now_ms: u64, limit: usize) -> state::Result<Vec<QueueItem>> {
        self.inner.queue_take_due(queue, now_ms, limit)
    }
    fn queue_ack(&self, queue: &str, id: QueueItemId) -> state::Result<()> {
        self.inner.queue_ack(queue, id)
    }
    fn queue_release(&self, queue: &str, id: QueueItemId) -> state::Result<()> {
        self.inner.queue_release(queue, id)
    }
    fn queue_len(&self, queue: &str) -> state::Result<u64> {
        self.inner.queue_len(queue)
    }
    fn pipeline_get(&self, key: &str) -> state::Result<Option<Vec<u8>>> {
        self.inner.pipeline_get(key)
    }
    fn pipeline_put(&self, key: &str, value: &[u8]) -> state::Result<()> {
        self.inner.pipeline_put(key, value)
    }
}

#[test]
fn a_call_looping_over_a_slow_cache_ends_near_its_deadline() {
    // 100 commands of 50 ms each, every error caught: 5 s if each command could still start
    // after the deadline; the call's limit is 200 ms.
    let fx = plugin(
        "patient",
        &[(
            "index.js",
            "exports.processEvent = async (e, { cache }) => {\n\
             \x20   for (let i = 0; i < 100; i++) { try { await cache.get('k') } catch (err) { e.properties.refused = String(err) } }\n\
             \x20   return e\n\
             }",
        )],
    );
    let spec = PluginSpec {
        id: "p".into(),
        def: PluginDefinition::load(&fx.path()).unwrap(),
        teams: None,
        config: Default::default(),
        attachments: Default::default(),
        order: 0,
    };
    let store = Arc::new(Slow { inner: MemoryStore::new(), delay: Duration::from_millis(50) });
    let services = HostServices::new(store, None, Arc::new(MemoryLogSink::default()), Duration::from_secs(5));
    let limits = Limits { call_timeout: Duration::from_millis(200), ..Limits::default() };
    let mut w = WorkerPlugins::new(limits, Arc::new(vec![spec]), services).unwrap();
    let json = r#"{"uuid":"u","event":"e","team_id":1,"properties":{}}"#;
    let started = Instant::now();
    let outcome = w.process(1, "e", "u", json, 0).unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "the call took {took:?}");
    // The call either timed out (its error recorded) or, having caught the refusals, returned
    // with them: never 100 slow commands.
    let refused_or_failed = outcome.event.as_deref().is_some_and(|e| e.contains("time is up")) || !outcome.failed.is_empty();
    assert!(refused_or_failed, "{outcome:?}");
}
