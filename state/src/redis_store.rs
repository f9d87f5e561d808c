//! [`RedisStore`]: plugin `cache` and `storage` in a Redis server, so that every process of a
//! cluster, and every later run whatever its shape, sees the same values (PostHog kept `cache` in
//! Redis for the same reason). Each cache method is the Redis command of the same name, sent as
//! it is; durable queues and the pipeline's own records stay in a local store, because they
//! belong to one process's epochs.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use redis::{Client, Connection, RedisError};

use crate::{CacheScope, QueueItem, QueueItemId, Result, StateError, StateStore};

/// The longest time to live sent to Redis, in seconds (about 3,000 years). Redis refuses an
/// `EX`/`EXPIRE` whose deadline overflows its millisecond clock, where the other stores saturate:
/// a larger TTL is sent as this one, so both mean "not in this system's lifetime".
const MAX_TTL_SECONDS: u64 = 100_000_000_000;

/// Plugin `cache` and `storage` in Redis, queues and pipeline records in a local store.
///
/// Connections are opened on demand, one per concurrent caller at most, and kept for reuse; a
/// connection that failed below the Redis protocol (refused, reset, timed out) is dropped with
/// every idle one, since a restarted server has closed them all. Nothing is retried: a command
/// whose connection broke may or may not have run (an `INCR` twice would count twice), so the
/// error goes to the caller, which for a plugin is a thrown exception.
///
/// Keys are `{prefix}:cache:{plugin length}:{plugin}:{team or "all"}:{key}` and
/// `{prefix}:storage:{configuration length}:{configuration}:{key}`: readable with `redis-cli`, and
/// no two scopes share a key (the plugin and configuration names are length-prefixed, a team is an
/// integer or `all`). Time to live is measured by the Redis server's clock.
pub struct RedisStore {
    client: Client,
    /// `host:port` of the server, for messages (the URL may hold a password).
    address: String,
    prefix: String,
    timeout: Duration,
    idle: Mutex<Vec<Connection>>,
    local: Box<dyn StateStore>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("address", &self.address).field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Redis's errors for the two cases the trait names; every other error stays a Redis error.
fn map_err(e: RedisError) -> StateError {
    match e.code() {
        Some("WRONGTYPE") => StateError::WrongType,
        Some("ERR") if e.detail().is_some_and(|d| d.contains("not an integer") || d.contains("overflow")) => StateError::NotAnInteger,
        _ => StateError::Redis(e),
    }
}

fn utf8(bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|_| StateError::Corrupt("value in Redis is not UTF-8".into()))
}

fn utf8_all(items: Vec<Vec<u8>>) -> Result<Vec<String>> {
    items.into_iter().map(utf8).collect()
}

impl RedisStore {
    /// Connects to the server at `url` (`redis://[user:password@]host:port[/db]`) and checks it
    /// answers `PING` within `timeout`, which also bounds every later command. Keys start with
    /// `prefix`; queues and pipeline records go to `local`.
    pub fn open(url: &str, prefix: &str, timeout: Duration, local: Box<dyn StateStore>) -> Result<Self> {
        let client = Client::open(url).map_err(StateError::Redis)?;
        let address = client.get_connection_info().addr().to_string();
        let store = Self { client, address, prefix: prefix.to_owned(), timeout, idle: Mutex::default(), local };
        let pong: String = store.run(|con| redis::cmd("PING").query(con))?;
        if pong != "PONG" {
            return Err(StateError::Corrupt(format!("Redis at {} answered PING with {pong:?}", store.address)));
        }
        Ok(store)
    }

    /// `host:port` of the server (never the password).
    pub fn address(&self) -> &str {
        &self.address
    }

    fn connect(&self) -> Result<Connection> {
        let con = self.client.get_connection_with_timeout(self.timeout).map_err(StateError::Redis)?;
        con.set_read_timeout(Some(self.timeout)).map_err(StateError::Redis)?;
        con.set_write_timeout(Some(self.timeout)).map_err(StateError::Redis)?;
        Ok(con)
    }

    /// Runs `f` on an idle connection (or a new one) and puts the connection back unless it
    /// broke.
    fn run<T>(&self, f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>) -> Result<T> {
        let taken = lock(&self.idle).pop();
        let mut con = match taken {
            Some(con) => con,
            None => self.connect()?,
        };
        match f(&mut con) {
            Ok(v) => {
                lock(&self.idle).push(con);
                Ok(v)
            }
            // The server answered with an error: the connection is fine.
            Err(e) if e.code().is_some() => {
                lock(&self.idle).push(con);
                Err(map_err(e))
            }
            Err(e) => {
                lock(&self.idle).clear();
                Err(map_err(e))
            }
        }
    }

    fn cache_key(&self, scope: &CacheScope, key: &str) -> String {
        let team = scope.team.map_or_else(|| "all".to_owned(), |t| t.to_string());
        format!("{}:cache:{}:{}:{team}:{key}", self.prefix, scope.plugin.len(), scope.plugin)
    }

    fn storage_key(&self, config: &str, key: &str) -> String {
        format!("{}:storage:{}:{config}:{key}", self.prefix, config.len())
    }
}

impl StateStore for RedisStore {
    fn cache_get(&self, scope: &CacheScope, key: &str) -> Result<Option<String>> {
        let k = self.cache_key(scope, key);
        self.run(|con| redis::cmd("GET").arg(&k).query::<Option<Vec<u8>>>(con))?.map(utf8).transpose()
    }

    fn cache_set(&self, scope: &CacheScope, key: &str, value: &str, ttl_seconds: Option<u64>) -> Result<()> {
        let k = self.cache_key(scope, key);
        let mut cmd = redis::cmd("SET");
        cmd.arg(&k).arg(value);
        // A TTL of 0 means none, as in PostHog's `cache.set` (Redis itself refuses `EX 0`).
        if let Some(ttl) = ttl_seconds.filter(|&t| t > 0) {
            cmd.arg("EX").arg(ttl.min(MAX_TTL_SECONDS));
        }
        self.run(|con| cmd.query::<()>(con))
    }

    fn cache_incr(&self, scope: &CacheScope, key: &str) -> Result<i64> {
        let k = self.cache_key(scope, key);
        self.run(|con| redis::cmd("INCR").arg(&k).query(con))
    }

    fn cache_expire(&self, scope: &CacheScope, key: &str, ttl_seconds: u64) -> Result<bool> {
        let k = self.cache_key(scope, key);
        let set: i64 = self.run(|con| redis::cmd("EXPIRE").arg(&k).arg(ttl_seconds.min(MAX_TTL_SECONDS)).query(con))?;
        Ok(set == 1)
    }

    fn cache_lpush(&self, scope: &CacheScope, key: &str, values: &[String]) -> Result<u64> {
        let k = self.cache_key(scope, key);
        if values.is_empty() {
            // `LPUSH` needs a value; pushing none changes nothing and answers the length (or
            // WRONGTYPE), which is `LLEN`.
            return self.run(|con| redis::cmd("LLEN").arg(&k).query(con));
        }
        self.run(|con| redis::cmd("LPUSH").arg(&k).arg(values).query(con))
    }

    fn cache_lrange(&self, scope: &CacheScope, key: &str, start: i64, stop: i64) -> Result<Vec<String>> {
        let k = self.cache_key(scope, key);
        utf8_all(self.run(|con| redis::cmd("LRANGE").arg(&k).arg(start).arg(stop).query(con))?)
    }

    fn cache_llen(&self, scope: &CacheScope, key: &str) -> Result<u64> {
        let k = self.cache_key(scope, key);
        self.run(|con| redis::cmd("LLEN").arg(&k).query(con))
    }

    fn cache_lpop(&self, scope: &CacheScope, key: &str, count: u64) -> Result<Vec<String>> {
        let k = self.cache_key(scope, key);
        let count = count.min(i64::MAX as u64);
        // A missing key answers nil, which is no elements.
        let popped: Option<Vec<Vec<u8>>> = self.run(|con| redis::cmd("LPOP").arg(&k).arg(count).query(con))?;
        utf8_all(popped.unwrap_or_default())
    }

    fn cache_lrem(&self, scope: &CacheScope, key: &str, count: i64, value: &str) -> Result<u64> {
        let k = self.cache_key(scope, key);
        self.run(|con| redis::cmd("LREM").arg(&k).arg(count).arg(value).query(con))
    }

    fn storage_get(&self, config: &str, key: &str) -> Result<Option<String>> {
        let k = self.storage_key(config, key);
        // A cache-style value under a storage key cannot happen (the key spaces differ); a list
        // there was written by someone else and is reported as such.
        self.run(|con| redis::cmd("GET").arg(&k).query::<Option<Vec<u8>>>(con))?.map(utf8).transpose()
    }

    fn storage_set(&self, config: &str, key: &str, value: &str) -> Result<()> {
        let k = self.storage_key(config, key);
        self.run(|con| redis::cmd("SET").arg(&k).arg(value).query(con))
    }

    fn storage_del(&self, config: &str, key: &str) -> Result<()> {
        let k = self.storage_key(config, key);
        self.run(|con| redis::cmd("DEL").arg(&k).query::<()>(con))
    }

    fn queue_put(&self, queue: &str, due_ms: u64, payload: &[u8]) -> Result<QueueItemId> {
        self.local.queue_put(queue, due_ms, payload)
    }

    fn queue_put_taken(&self, queue: &str, due_ms: u64, payload: &[u8]) -> Result<QueueItemId> {
        self.local.queue_put_taken(queue, due_ms, payload)
    }

    fn queue_take_due(&self, queue: &str, now_ms: u64, limit: usize) -> Result<Vec<QueueItem>> {
        self.local.queue_take_due(queue, now_ms, limit)
    }

    fn queue_ack(&self, queue: &str, id: QueueItemId) -> Result<()> {
        self.local.queue_ack(queue, id)
    }

    fn queue_release(&self, queue: &str, id: QueueItemId) -> Result<()> {
        self.local.queue_release(queue, id)
    }

    fn queue_len(&self, queue: &str) -> Result<u64> {
        self.local.queue_len(queue)
    }

    fn pipeline_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.local.pipeline_get(key)
    }

    fn pipeline_put(&self, key: &str, value: &[u8]) -> Result<()> {
        self.local.pipeline_put(key, value)
    }
}
