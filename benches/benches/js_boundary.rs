//! Per-event cost of an event crossing into a plugin's runtime and back out on a ~1 KB event,
//! next to a serde_json parse + serialise floor:
//!
//! - `cross_only`: the event's JSON is built in the instance's runtime (serde_json driving
//!   QuickJS's C API) and read back as data by the host (a walk over own data properties), with
//!   no plugin code (`PluginInstance::cross`). Each plugin of a chain pays this once.
//! - `process_event`: the same plus a `processEvent` that sets one property.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use operators::plugin::{Limits, PluginRuntime};
use pluginflow_benches::{EVENT_1KB, criterion_config, instance, services, temp_plugin};
use serde_json::Value;
use state::MemoryStore;

fn boundary(c: &mut Criterion) {
    let dir = temp_plugin("touch", "function processEvent(event) { event.properties.touched = true; return event }\n");
    let runtime = PluginRuntime::new(Limits::default()).expect("runtime");
    let services = services(Arc::new(MemoryStore::new()), None);
    let mut inst = instance(&runtime, dir.path(), &services);

    let mut g = c.benchmark_group("js_boundary");
    g.throughput(Throughput::Bytes(EVENT_1KB.len() as u64));
    g.bench_function("serde_floor", |b| {
        b.iter(|| {
            let v: Value = serde_json::from_str(black_box(EVENT_1KB)).expect("valid");
            serde_json::to_string(&v).expect("serialisable")
        })
    });
    g.bench_function("cross_only", |b| b.iter(|| inst.cross(black_box(EVENT_1KB), 2).expect("crossed")));
    g.bench_function("process_event", |b| b.iter(|| inst.process_event_json(black_box(EVENT_1KB)).expect("processed")));
    g.finish();
}

fn config() -> Criterion {
    let s = criterion_config();
    Criterion::default().measurement_time(s.measurement).warm_up_time(s.warm_up).sample_size(30)
}

criterion_group! { name = benches; config = config(); targets = boundary }
criterion_main!(benches);
