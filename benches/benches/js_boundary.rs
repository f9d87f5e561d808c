//! Per-event cost of `processEvent` on a ~1 KB event, for two ways of moving the event across
//! the Rust/QuickJS boundary, next to a serde_json parse + serialise floor (issue 2):
//!
//! - `json_text`: the text goes in through QuickJS's `JSON.parse` and comes out through
//!   `JSON.stringify` (what the pipeline does: `parse_event` / `stringify`).
//! - `value_by_value`: serde_json parses the text, the JS object is built value by value
//!   (`event_from_value`), and read back value by value (`event_to_value`) before serde
//!   serialises it.
//!
//! `cross_only` moves the event in and out without calling the plugin; `process_event` adds a
//! `processEvent` that sets one property.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use operators::plugin::{Limits, PluginRuntime, StepOutcome};
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
    g.bench_function("json_text/cross_only", |b| {
        b.iter(|| {
            let e = inst.parse_event(black_box(EVENT_1KB)).expect("valid");
            inst.stringify(&e)
        })
    });
    g.bench_function("value_by_value/cross_only", |b| {
        b.iter(|| {
            let v: Value = serde_json::from_str(black_box(EVENT_1KB)).expect("valid");
            let e = inst.event_from_value(&v).expect("built");
            let back = inst.event_to_value(&e).expect("read");
            serde_json::to_string(&back).expect("serialisable")
        })
    });
    g.bench_function("json_text/process_event", |b| {
        b.iter(|| inst.process_event_json(black_box(EVENT_1KB)).expect("processed"))
    });
    g.bench_function("value_by_value/process_event", |b| {
        b.iter(|| {
            let v: Value = serde_json::from_str(black_box(EVENT_1KB)).expect("valid");
            let e = inst.event_from_value(&v).expect("built");
            let team = inst.team_of(&e);
            match inst.process(e, &team) {
                StepOutcome::Kept(out) => Some(serde_json::to_string(&inst.event_to_value(&out).expect("read")).expect("ok")),
                _ => None,
            }
        })
    });
    g.finish();
}

fn config() -> Criterion {
    let s = criterion_config();
    Criterion::default().measurement_time(s.measurement).warm_up_time(s.warm_up).sample_size(30)
}

criterion_group! { name = benches; config = config(); targets = boundary }
criterion_main!(benches);
