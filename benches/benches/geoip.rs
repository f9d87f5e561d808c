//! GeoIP lookups in the real GeoLite2-City database (`scripts/fetch-test-data.sh`; skipped
//! when it is missing): the raw `maxminddb` lookup, `GeoIp::locate` (the result shape plugins
//! see, as a JSON value), `locate_json`, and the `geoip-enricher` example plugin's
//! `processEvent` on a ~1 KB event (`meta.geoip.locate` through the host) next to a no-op call.

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use operators::plugin::{GeoIp, Limits, PluginRuntime};
use pluginflow_benches::{EVENT_1KB, criterion_config, geolite_path, instance, services, temp_plugin, workspace_root};
use state::MemoryStore;

/// Addresses from the generator's table (IPv4 and IPv6, cities and anycast resolvers).
const IPS: [&str; 12] = [
    "18.9.22.69",
    "131.111.150.25",
    "129.187.255.109",
    "133.11.0.1",
    "143.107.45.22",
    "41.89.64.10",
    "8.8.8.8",
    "1.1.1.1",
    "2001:4860:4860::8888",
    "2001:67c:2e8:22::c100:68b",
    "137.132.21.27",
    "130.216.159.127",
];

fn lookups(c: &mut Criterion) {
    let Some(path) = geolite_path() else {
        eprintln!("geoip bench skipped: no GeoLite2-City.mmdb (run scripts/fetch-test-data.sh)");
        return;
    };
    let reader = maxminddb::Reader::open_readfile(&path).expect("mmdb opens");
    let geoip = GeoIp::open(&path).expect("mmdb opens");
    let ips: Vec<IpAddr> = IPS.iter().map(|s| s.parse().expect("valid ip")).collect();
    let mut g = c.benchmark_group("geoip");
    let mut i = 0usize;
    g.bench_function("raw_maxminddb_city", |b| {
        b.iter(|| {
            i = (i + 1) % ips.len();
            let r = reader.lookup(black_box(ips[i])).expect("lookup");
            r.decode::<maxminddb::geoip2::City<'_>>().expect("decode").map(|c| c.location.latitude)
        })
    });
    g.bench_function("locate_value", |b| {
        b.iter(|| {
            i = (i + 1) % IPS.len();
            geoip.locate(black_box(IPS[i])).expect("found")
        })
    });
    g.bench_function("locate_json", |b| {
        b.iter(|| {
            i = (i + 1) % IPS.len();
            geoip.locate_json(black_box(IPS[i])).expect("found")
        })
    });

    let runtime = PluginRuntime::new(Limits::default()).expect("runtime");
    let services = services(Arc::new(MemoryStore::new()), Some(&path));
    let noop_dir = temp_plugin("noop-async", "async function processEvent(event) { return event }\n");
    let mut noop = instance(&runtime, noop_dir.path(), &services);
    let mut enricher = instance(&runtime, &workspace_root().join("examples/plugins/geoip-enricher"), &services);
    g.bench_function("host_noop_call/1kb", |b| b.iter(|| noop.process_event_json(black_box(EVENT_1KB)).expect("ok")));
    g.bench_function("host_geoip_enricher/1kb", |b| b.iter(|| enricher.process_event_json(black_box(EVENT_1KB)).expect("ok")));
    g.finish();
}

fn config() -> Criterion {
    let s = criterion_config();
    Criterion::default().measurement_time(s.measurement).warm_up_time(s.warm_up).sample_size(30)
}

criterion_group! { name = benches; config = config(); targets = lookups }
criterion_main!(benches);
