//! One plugin call: the fixed cost of a `processEvent` call (sync and async, tiny event), each
//! of the four peer plugins alone on a ~1 KB event, and the peer chains through `run_chain`
//! (each plugin gets the event built in its own runtime and the host reads its result back).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use operators::plugin::{Limits, PluginInstance, PluginRuntime, run_chain};
use pluginflow_benches::{EVENT_1KB, EVENT_TINY, criterion_config, instance, peer_plugin, services, temp_plugin};
use state::MemoryStore;

fn calls(c: &mut Criterion) {
    let runtime = PluginRuntime::new(Limits::default()).expect("runtime");
    let services = services(Arc::new(MemoryStore::new()), None);
    let sync_dir = temp_plugin("noop-sync", "function processEvent(event) { return event }\n");
    let async_dir = temp_plugin("noop-async", "async function processEvent(event) { return event }\n");
    let mut noop_sync = instance(&runtime, sync_dir.path(), &services);
    let mut noop_async = instance(&runtime, async_dir.path(), &services);

    let mut g = c.benchmark_group("plugin_call");
    g.bench_function("noop_sync/tiny", |b| b.iter(|| noop_sync.process_event_json(black_box(EVENT_TINY)).expect("ok")));
    g.bench_function("noop_async/tiny", |b| b.iter(|| noop_async.process_event_json(black_box(EVENT_TINY)).expect("ok")));
    g.throughput(Throughput::Bytes(EVENT_1KB.len() as u64));
    g.bench_function("noop_async/1kb", |b| b.iter(|| noop_async.process_event_json(black_box(EVENT_1KB)).expect("ok")));
    let mut peers: Vec<(&str, PluginInstance)> = ["hello", "filter", "flatten", "geoip-like"]
        .into_iter()
        .map(|name| (name, instance(&runtime, &peer_plugin(name), &services)))
        .collect();
    for (name, inst) in &mut peers {
        g.bench_function(format!("{name}/1kb"), |b| b.iter(|| inst.process_event_json(black_box(EVENT_1KB)).expect("ok")));
    }
    {
        let mut chain3: Vec<&mut PluginInstance> = peers.iter_mut().take(3).map(|(_, i)| i).collect();
        g.bench_function("chain_hello_filter_flatten/1kb", |b| {
            b.iter(|| run_chain(&mut chain3, black_box(EVENT_1KB), 2).expect("ok").event)
        });
    }
    let mut chain4: Vec<&mut PluginInstance> = peers.iter_mut().map(|(_, i)| i).collect();
    g.bench_function("chain_hello_filter_flatten_geoip-like/1kb", |b| {
        b.iter(|| run_chain(&mut chain4, black_box(EVENT_1KB), 2).expect("ok").event)
    });
    g.finish();
}

fn config() -> Criterion {
    let s = criterion_config();
    Criterion::default().measurement_time(s.measurement).warm_up_time(s.warm_up).sample_size(30)
}

criterion_group! { name = benches; config = config(); targets = calls }
criterion_main!(benches);
