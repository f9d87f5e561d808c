//! Durable state for pluginflow: what must outlive a single plugin call.
//!
//! This crate owns the plugin `cache` (Redis in PostHog), the plugin `storage` (Postgres in
//! PostHog) and durable queues (pending retries, jobs). It knows nothing of plugins, QuickJS,
//! timely or Kafka: keys and values are plain strings and bytes, and the caller decides what
//! they mean.
//!
//! Three implementations share the [`StateStore`] trait: [`MemoryStore`] (tests, `pluginflow
//! try`), [`RocksStore`] (one RocksDB per process, shared by all workers) and [`RedisStore`]
//! (`cache` and `storage` in a Redis server shared by every process, queues in a local store).
#![warn(missing_docs)]

mod cache;
mod clock;
mod error;
mod keys;
mod memory;
mod redis_store;
mod rocks;
mod value;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::StateError;
pub use memory::MemoryStore;
pub use redis_store::RedisStore;
pub use rocks::RocksStore;

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, StateError>;

/// Whose cache a key belongs to. PostHog namespaces cache keys per plugin and team
/// (`@plugin/<plugin_id>/<team_id>/<key>`), so two configurations of one plugin in one team share
/// a cache, and nothing else does.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheScope {
    /// The plugin's identifier (its name or folder).
    pub plugin: String,
    /// The team, or `None` for a configuration that applies to all teams (`@all` in PostHog).
    pub team: Option<i64>,
}

/// Identifies one item in a durable queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueItemId(pub u64);

/// An item taken from a durable queue; it stays in the queue until acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueItem {
    /// Handle for [`StateStore::queue_ack`].
    pub id: QueueItemId,
    /// When the item became due, in milliseconds since the Unix epoch.
    pub due_ms: u64,
    /// The bytes that were put.
    pub payload: Vec<u8>,
}

/// Storage for plugin cache, plugin storage and durable queues.
///
/// Cache methods follow the Redis commands PostHog used (`GET`, `SET EX`, `INCR`, `EXPIRE`,
/// `LPUSH`, `LRANGE`, `LLEN`, `LPOP`, `LREM`); values are the strings the caller hands in
/// (the plugin host JSON-serialises them). All methods are safe to call from many threads:
/// read-modify-write operations such as `incr` and `lpush` are atomic per key.
pub trait StateStore: Send + Sync {
    /// The value stored under `key`, or `None` when missing or expired.
    fn cache_get(&self, scope: &CacheScope, key: &str) -> Result<Option<String>>;
    /// Stores `value`; with `ttl_seconds`, the key expires after that many seconds.
    fn cache_set(&self, scope: &CacheScope, key: &str, value: &str, ttl_seconds: Option<u64>) -> Result<()>;
    /// Adds one to the integer stored under `key` (a missing key counts from 0) and returns the
    /// new value. Fails with [`StateError::NotAnInteger`] when the value is not an integer.
    fn cache_incr(&self, scope: &CacheScope, key: &str) -> Result<i64>;
    /// Sets a time to live on `key`; returns whether the key existed. A TTL of 0 deletes it.
    fn cache_expire(&self, scope: &CacheScope, key: &str, ttl_seconds: u64) -> Result<bool>;
    /// Pushes each value to the head of the list (Redis `LPUSH`: the last value ends up first)
    /// and returns the new length.
    fn cache_lpush(&self, scope: &CacheScope, key: &str, values: &[String]) -> Result<u64>;
    /// The elements from `start` to `stop`, both inclusive; negative indexes count from the end.
    fn cache_lrange(&self, scope: &CacheScope, key: &str, start: i64, stop: i64) -> Result<Vec<String>>;
    /// Length of the list, 0 when missing.
    fn cache_llen(&self, scope: &CacheScope, key: &str) -> Result<u64>;
    /// Removes and returns up to `count` elements from the head of the list.
    fn cache_lpop(&self, scope: &CacheScope, key: &str, count: u64) -> Result<Vec<String>>;
    /// Removes elements equal to `value` (Redis `LREM` count rules) and returns how many.
    fn cache_lrem(&self, scope: &CacheScope, key: &str, count: i64, value: &str) -> Result<u64>;

    /// The stored value of a plugin configuration's storage key.
    fn storage_get(&self, config: &str, key: &str) -> Result<Option<String>>;
    /// Stores (upserts) a plugin configuration's storage key.
    fn storage_set(&self, config: &str, key: &str, value: &str) -> Result<()>;
    /// Deletes a plugin configuration's storage key; deleting a missing key is not an error.
    fn storage_del(&self, config: &str, key: &str) -> Result<()>;

    /// Puts an item in `queue`, due at `due_ms` (milliseconds since the Unix epoch).
    fn queue_put(&self, queue: &str, due_ms: u64, payload: &[u8]) -> Result<QueueItemId>;
    /// [`Self::queue_put`] an item that this store instance holds as taken already: it is
    /// handed out only after a restart, and acknowledging it does not search the queue.
    fn queue_put_taken(&self, queue: &str, due_ms: u64, payload: &[u8]) -> Result<QueueItemId>;
    /// Up to `limit` items of `queue` due at or before `now_ms`, earliest first, that are not
    /// already taken and unacknowledged by this store instance. Taken items are handed out again
    /// only after a restart (that is how a pending item resumes).
    fn queue_take_due(&self, queue: &str, now_ms: u64, limit: usize) -> Result<Vec<QueueItem>>;
    /// Removes an item for good.
    fn queue_ack(&self, queue: &str, id: QueueItemId) -> Result<()>;
    /// Hands a taken item back: the next `queue_take_due` (of any caller of this store) may take
    /// it again. An item not taken, or not in `queue`, is left alone.
    fn queue_release(&self, queue: &str, id: QueueItemId) -> Result<()>;
    /// How many items `queue` holds (taken or not).
    fn queue_len(&self, queue: &str) -> Result<u64>;

    /// A record of the pipeline's own (no plugin's): where a recorded-log run stands, say.
    fn pipeline_get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Stores a record of the pipeline's own, replacing the previous value.
    fn pipeline_put(&self, key: &str, value: &[u8]) -> Result<()>;
}
