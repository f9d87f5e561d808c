//! `RedisStore` against a real Redis server (Debian's `redis-server`, started here): times to
//! live on Redis's clock, what a caller sees when the server is gone or comes back, and what stays
//! local. The command semantics are checked against the model in `model.rs`.

use std::time::{Duration, Instant};

use state::{CacheScope, MemoryStore, QueueItemId, RedisStore, StateError, StateStore};

#[path = "../../tests/src/redis_server.rs"]
mod redis_server;
use redis_server::RedisServer;

fn scope() -> CacheScope {
    CacheScope { plugin: "p".into(), team: Some(7) }
}

fn open(server: &RedisServer, prefix: &str) -> RedisStore {
    RedisStore::open(&server.url(), prefix, Duration::from_secs(5), Box::new(MemoryStore::new())).unwrap()
}

#[test]
fn redis_expires_keys_by_its_clock() {
    let server = RedisServer::start();
    let store = open(&server, "ttl");
    let sc = scope();
    store.cache_set(&sc, "plain", "v", Some(1)).unwrap();
    store.cache_set(&sc, "reset", "v", Some(1)).unwrap();
    store.cache_set(&sc, "reset", "w", None).unwrap(); // SET without a TTL clears the TTL
    store.cache_set(&sc, "counted", "5", Some(1)).unwrap();
    assert_eq!(store.cache_incr(&sc, "counted").unwrap(), 6); // INCR keeps the TTL
    store.cache_set(&sc, "later", "v", Some(0)).unwrap(); // 0 is no TTL, as in PostHog
    assert!(store.cache_expire(&sc, "later", 1).unwrap());
    assert_eq!(store.cache_lpush(&sc, "list", &["a".into()]).unwrap(), 1);
    assert!(store.cache_expire(&sc, "list", 1).unwrap());
    let expiring = ["plain", "counted", "later"];
    for key in expiring {
        assert!(store.cache_get(&sc, key).unwrap().is_some(), "{key} is there before its second is up");
    }
    assert_eq!(store.cache_llen(&sc, "list").unwrap(), 1);

    // Redis's clock decides: wait (up to 10 s) until every key given one second has gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while expiring.iter().any(|k| store.cache_get(&sc, k).unwrap().is_some()) || store.cache_llen(&sc, "list").unwrap() > 0 {
        assert!(Instant::now() < deadline, "keys with a one-second TTL still there after 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(store.cache_get(&sc, "reset").unwrap().as_deref(), Some("w"), "a SET without TTL keeps its key");
}

#[test]
fn scopes_and_prefixes_keep_apart_and_every_process_sees_one_value() {
    let server = RedisServer::start();
    // Two stores on one prefix are two processes of one cluster: one counter.
    let a = open(&server, "pf");
    let b = open(&server, "pf");
    let other = open(&server, "pf2");
    let sc = scope();
    let threads: Vec<_> = [a, b]
        .into_iter()
        .map(|store| {
            let sc = sc.clone();
            std::thread::spawn(move || (0..500).map(|_| store.cache_incr(&sc, "n").unwrap()).collect::<Vec<_>>())
        })
        .collect();
    let mut seen: Vec<i64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    seen.sort_unstable();
    assert_eq!(seen, (1..=1000).collect::<Vec<_>>(), "every increment counted once, by both stores");
    assert_eq!(other.cache_get(&sc, "n").unwrap(), None, "another prefix is another store");
    let store = open(&server, "pf");
    assert_eq!(store.cache_get(&sc, "n").unwrap().as_deref(), Some("1000"));
    // Same key, another team / all teams / another plugin: other values.
    assert_eq!(store.cache_get(&CacheScope { plugin: "p".into(), team: None }, "n").unwrap(), None);
    assert_eq!(store.cache_get(&CacheScope { plugin: "p".into(), team: Some(8) }, "n").unwrap(), None);
    assert_eq!(store.cache_get(&CacheScope { plugin: "p:7".into(), team: None }, "n").unwrap(), None);
    // Storage and cache do not share keys.
    store.storage_set("p", "n", "stored").unwrap();
    assert_eq!(store.cache_get(&sc, "n").unwrap().as_deref(), Some("1000"));
    assert_eq!(open(&server, "pf").storage_get("p", "n").unwrap().as_deref(), Some("stored"));
    store.storage_del("p", "n").unwrap();
    store.storage_del("p", "n").unwrap(); // deleting a missing key is not an error
    assert_eq!(store.storage_get("p", "n").unwrap(), None);
}

#[test]
fn queues_and_pipeline_records_stay_in_the_local_store() {
    let server = RedisServer::start();
    let a = open(&server, "pf");
    let b = open(&server, "pf");
    let id = a.queue_put("retries", 10, b"x").unwrap();
    a.pipeline_put("checkpoint", b"1").unwrap();
    assert_eq!(a.queue_len("retries").unwrap(), 1);
    assert_eq!(b.queue_len("retries").unwrap(), 0, "another process does not see this one's queue");
    assert_eq!(b.pipeline_get("checkpoint").unwrap(), None);
    let taken = a.queue_take_due("retries", 10, 5).unwrap();
    assert_eq!(taken.iter().map(|i| i.id).collect::<Vec<QueueItemId>>(), [id]);
    a.queue_ack("retries", id).unwrap();
    assert_eq!(a.queue_len("retries").unwrap(), 0);
}

#[test]
fn a_server_that_goes_away_fails_each_call_within_the_timeout_and_a_restart_is_picked_up() {
    let server = RedisServer::start();
    let port = server.port();
    let store = RedisStore::open(&server.url(), "gone", Duration::from_secs(2), Box::new(MemoryStore::new())).unwrap();
    let sc = scope();
    assert_eq!(store.cache_incr(&sc, "n").unwrap(), 1);
    drop(server);
    for _ in 0..3 {
        let started = Instant::now();
        let err = store.cache_incr(&sc, "n").unwrap_err();
        assert!(matches!(err, StateError::Redis(_)), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "a call waited {:?}", started.elapsed());
    }
    // A new server on the same port (nothing saved: the count starts over): the store connects
    // again by itself.
    let restarted = RedisServer::start_on(port);
    assert_eq!(store.cache_incr(&sc, "n").unwrap(), 1);
    // Restarted while the store held an idle connection: that connection is dead. The call that
    // finds out fails (it cannot know whether the command ran), and drops every idle connection,
    // so the next call works.
    drop(restarted);
    let _again = RedisServer::start_on(port);
    let first = store.cache_incr(&sc, "n");
    assert!(matches!(first, Ok(1) | Err(StateError::Redis(_))), "{first:?}");
    let next = store.cache_incr(&sc, "n").unwrap();
    assert_eq!(next, if first.is_ok() { 2 } else { 1 });
}

#[test]
fn opening_fails_clearly_and_never_shows_the_password() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("redis://:hunter2@127.0.0.1:{closed}");
    let err = RedisStore::open(&url, "x", Duration::from_secs(2), Box::new(MemoryStore::new())).unwrap_err();
    assert!(matches!(err, StateError::Redis(_)), "{err:?}");
    let mut chain = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        chain.push_str(&format!(": {s}"));
        source = s.source();
    }
    assert!(!chain.contains("hunter2"), "{chain}");
    assert!(RedisStore::open("http://127.0.0.1:1", "x", Duration::from_secs(1), Box::new(MemoryStore::new())).is_err());

    let server = RedisServer::start();
    let store =
        RedisStore::open(&server.url().replace("redis://", "redis://:hunter2@"), "x", Duration::from_secs(2), Box::new(MemoryStore::new()));
    // The server has no password: Redis refuses AUTH, and the store says so without echoing it.
    let err = store.unwrap_err();
    assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
}
