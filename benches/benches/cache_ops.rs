//! Plugin cache operations at three levels, in the same run (issue 4):
//!
//! - `raw_rocksdb`: `rocksdb::DB` get and put of one key, default options: the floor.
//! - `rocks_store` / `memory_store`: the `state` crate's `cache_get` / `cache_set` /
//!   `cache_incr` (namespacing, JSON envelope with TTL, per-key lock for read-modify-write).
//! - `host_rocks` / `host_memory`: a `processEvent` that awaits one `cache.get`, `cache.set` or
//!   `cache.incr`, next to the same call doing nothing (`noop`); the op's cost through the
//!   host is the difference.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use operators::plugin::{Limits, PluginRuntime};
use pluginflow_benches::{EVENT_TINY, criterion_config, instance, services, temp_plugin};
use state::{CacheScope, MemoryStore, RocksStore, StateStore};

const VALUE: &str = "{\"count\":41,\"greeting\":\"hello\"}";

fn raw(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let db = rocksdb::DB::open_default(tmp.path()).expect("rocksdb opens");
    db.put(b"@plugin/hello/2/k", VALUE).expect("put");
    let mut g = c.benchmark_group("cache_ops/raw_rocksdb");
    g.bench_function("get", |b| b.iter(|| db.get(black_box(b"@plugin/hello/2/k")).expect("get")));
    g.bench_function("put", |b| b.iter(|| db.put(black_box(b"@plugin/hello/2/k"), black_box(VALUE)).expect("put")));
    g.finish();
}

fn store_level(c: &mut Criterion, name: &str, store: &dyn StateStore) {
    let scope = CacheScope { plugin: "hello".into(), team: Some(2) };
    store.cache_set(&scope, "k", VALUE, None).expect("set");
    let mut g = c.benchmark_group(format!("cache_ops/{name}"));
    g.bench_function("get", |b| b.iter(|| store.cache_get(&scope, black_box("k")).expect("get")));
    g.bench_function("set", |b| b.iter(|| store.cache_set(&scope, black_box("k"), black_box(VALUE), None).expect("set")));
    g.bench_function("incr", |b| b.iter(|| store.cache_incr(&scope, black_box("n")).expect("incr")));
    g.finish();
}

fn stores(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let rocks = RocksStore::open(tmp.path()).expect("RocksStore opens");
    store_level(c, "rocks_store", &rocks);
    store_level(c, "memory_store", &MemoryStore::new());
}

fn host_level(c: &mut Criterion, name: &str, store: Arc<dyn StateStore>) {
    let runtime = PluginRuntime::new(Limits::default()).expect("runtime");
    let services = services(store, None);
    let plugins = [
        ("noop", "async function processEvent(event) { return event }\n"),
        ("get", "async function processEvent(event, { cache }) { await cache.get('k', 0); return event }\n"),
        ("set", "async function processEvent(event, { cache }) { await cache.set('k', { count: 41, greeting: 'hello' }); return event }\n"),
        ("incr", "async function processEvent(event, { cache }) { await cache.incr('n'); return event }\n"),
    ];
    let mut g = c.benchmark_group(format!("cache_ops/{name}"));
    for (op, code) in plugins {
        let dir = temp_plugin(&format!("cache-{op}"), code);
        let mut inst = instance(&runtime, dir.path(), &services);
        inst.process_event_json(EVENT_TINY).expect("ok");
        g.bench_function(op, |b| b.iter(|| inst.process_event_json(black_box(EVENT_TINY)).expect("ok")));
    }
    g.finish();
}

fn hosts(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("temp dir");
    host_level(c, "host_rocks", Arc::new(RocksStore::open(tmp.path()).expect("RocksStore opens")));
    host_level(c, "host_memory", Arc::new(MemoryStore::new()));
}

fn config() -> Criterion {
    let s = criterion_config();
    Criterion::default().measurement_time(s.measurement).warm_up_time(s.warm_up).sample_size(30)
}

criterion_group! { name = benches; config = config(); targets = raw, stores, hosts }
criterion_main!(benches);
