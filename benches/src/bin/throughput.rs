//! Throughput harness: replays a recorded JSON-lines log through the same per-event code the
//! pipeline runs, one event at a time on one thread, and times every event, so that its
//! figures line up with the Node peer's (`../shared/peer/bench.js`), which does the same.
//!
//! ```text
//! throughput floor  --events FILE [--warmup N] [--json OUT]
//!     serde_json parse into a Value (keys in order) + to_string, per line: the Rust floor.
//! throughput check  --events FILE [--warmup N] [--json OUT]
//!     the pipeline's own line check (operators::event::parse_line) + one copy of the text:
//!     what the graph with no plugins does per event.
//! throughput chain  --events FILE --plugins DIR[,DIR...] [--geoip MMDB] [--rocks DIR]
//!                   [--warmup N] [--json OUT]
//!     parse_line, then the team's chain through WorkerPlugins (one instance per plugin and
//!     team, as in the pipeline and the peer), then the result text.
//! throughput instances --plugin DIR [--count N] [--geoip MMDB] [--json OUT]
//!     memory of idle plugin instances (after setupPlugin): RSS and QuickJS heap per instance.
//! ```
//!
//! Timed per event: from the raw line bytes to the output text (decode, parse, chain,
//! serialise). As in the peer, the first `--warmup` events (default 5000) go through once
//! untimed, then every event is timed. The whole log is read into memory first, so peak RSS
//! includes it (as the peer's does).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use operators::event::{EventLimits, parse_line};
use operators::plugin::worker::{PluginSpec, WorkerPlugins};
use operators::plugin::{InstanceConfig, Limits, PluginDefinition, PluginInstance, PluginRuntime};
use pluginflow_benches::{percentile, proc_status_kib, services};
use serde_json::{Value, json};
use state::{MemoryStore, RocksStore, StateStore};

struct Args {
    mode: String,
    events: Option<PathBuf>,
    plugins: Vec<PathBuf>,
    geoip: Option<PathBuf>,
    rocks: Option<PathBuf>,
    warmup: usize,
    count: usize,
    json: Option<PathBuf>,
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let mode = it.next().unwrap_or_else(|| usage("missing mode"));
    let mut a = Args { mode, events: None, plugins: Vec::new(), geoip: None, rocks: None, warmup: 5000, count: 20, json: None };
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage(&format!("missing value for {flag}")));
        match flag.as_str() {
            "--events" => a.events = Some(value().into()),
            "--plugins" | "--plugin" => a.plugins = value().split(',').filter(|s| !s.is_empty()).map(PathBuf::from).collect(),
            "--geoip" => a.geoip = Some(value().into()),
            "--rocks" => a.rocks = Some(value().into()),
            "--warmup" => a.warmup = value().parse().unwrap_or_else(|_| usage("bad --warmup")),
            "--count" => a.count = value().parse().unwrap_or_else(|_| usage("bad --count")),
            "--json" => a.json = Some(value().into()),
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    a
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "throughput: {msg}\nusage: throughput floor|check|chain|instances --events FILE [--plugins DIR,..] [--geoip MMDB] [--rocks DIR] [--warmup N] [--count N] [--json OUT]"
    );
    std::process::exit(2)
}

/// The log, read whole, and the byte range of each line.
struct Log {
    buf: Vec<u8>,
    lines: Vec<(usize, usize)>,
}

fn load(path: &Path) -> Log {
    let buf = std::fs::read(path).unwrap_or_else(|e| usage(&format!("cannot read {}: {e}", path.display())));
    let mut lines = Vec::new();
    let mut start = 0;
    for (i, b) in buf.iter().enumerate() {
        if *b == b'\n' {
            if i > start {
                lines.push((start, i));
            }
            start = i + 1;
        }
    }
    if start < buf.len() {
        lines.push((start, buf.len()));
    }
    Log { buf, lines }
}

/// Counters of one timed loop.
#[derive(Default)]
struct Tally {
    bytes_in: u64,
    bytes_out: u64,
    dropped: u64,
    bad: u64,
    /// CPU time of the timed loop (this thread), seconds.
    cpu_s: f64,
}

/// CPU time this thread has used, in seconds (`/proc/thread-self/stat`, clock ticks of 10 ms),
/// or 0 where unavailable.
fn thread_cpu_s() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else { return 0.0 };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // The first field after the name is field 3 (state); utime and stime are fields 14 and 15.
    let tick = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok());
    match (tick(11), tick(12)) {
        (Some(u), Some(s)) => (u + s) as f64 / 100.0,
        _ => 0.0,
    }
}

/// Runs `one` over the warm-up, then times it over every line.
fn timed(log: &Log, warmup: usize, mut one: impl FnMut(&[u8], u64) -> Option<Option<usize>>) -> (f64, Vec<f64>, Tally) {
    for &(s, e) in log.lines.iter().take(warmup) {
        std::hint::black_box(one(&log.buf[s..e], s as u64));
    }
    let mut lat = Vec::with_capacity(log.lines.len());
    let mut t = Tally { cpu_s: -thread_cpu_s(), ..Tally::default() };
    let started = Instant::now();
    for &(s, e) in &log.lines {
        let t0 = Instant::now();
        let r = one(&log.buf[s..e], s as u64);
        lat.push(t0.elapsed().as_nanos() as f64 / 1000.0);
        t.bytes_in += (e - s + 1) as u64;
        match r {
            None => t.bad += 1,
            Some(None) => t.dropped += 1,
            Some(Some(n)) => t.bytes_out += n as u64,
        }
    }
    t.cpu_s += thread_cpu_s();
    (started.elapsed().as_secs_f64(), lat, t)
}

fn report(a: &Args, label: &str, extra: Value, rss_before_kib: u64, elapsed: f64, mut lat: Vec<f64>, t: Tally) {
    let n = lat.len();
    lat.sort_by(|x, y| x.partial_cmp(y).expect("no NaN"));
    let mean = lat.iter().sum::<f64>() / n.max(1) as f64;
    let r1 = |x: f64| (x * 10.0).round() / 10.0;
    let mut out = json!({
        "system": "pluginflow-harness",
        "mode": a.mode,
        "label": label,
        "events_file": a.events.as_ref().map(|p| p.display().to_string()),
        "events": n,
        "warmup": a.warmup.min(n),
        "elapsed_s": (elapsed * 1000.0).round() / 1000.0,
        "events_per_s": (n as f64 / elapsed).round(),
        "mb_in_per_s": r1(t.bytes_in as f64 / 1e6 / elapsed),
        "dropped": t.dropped,
        "bad_lines": t.bad,
        "bytes_out": t.bytes_out,
        "loop_cpu_s": (t.cpu_s * 100.0).round() / 100.0,
        "loop_cpu_pct": (100.0 * t.cpu_s / elapsed).round(),
        "loop_cpu_v": 2,
        "latency": {
            "p50_us": r1(percentile(&lat, 0.5)),
            "p90_us": r1(percentile(&lat, 0.9)),
            "p99_us": r1(percentile(&lat, 0.99)),
            "p999_us": r1(percentile(&lat, 0.999)),
            "max_us": r1(lat.last().copied().unwrap_or(0.0)),
            "mean_us": r1(mean),
        },
        "rss_before_loop_mb": r1(rss_before_kib as f64 / 1024.0),
        "peak_rss_mb": r1(proc_status_kib("VmHWM") as f64 / 1024.0),
    });
    if let (Value::Object(o), Value::Object(x)) = (&mut out, extra) {
        o.extend(x);
    }
    let lat = &out["latency"];
    eprintln!(
        "{label}: {} events/s, {} MB/s, p50 {} us, p99 {} us, peak RSS {} MB, dropped {}, bad {}",
        out["events_per_s"], out["mb_in_per_s"], lat["p50_us"], lat["p99_us"], out["peak_rss_mb"], t.dropped, t.bad
    );
    let text = serde_json::to_string_pretty(&out).expect("serialisable");
    match &a.json {
        Some(p) => std::fs::write(p, text + "\n").unwrap_or_else(|e| usage(&format!("cannot write {}: {e}", p.display()))),
        None => println!("{text}"),
    }
}

fn floor(a: &Args) {
    let log = load(a.events.as_deref().unwrap_or_else(|| usage("--events is required")));
    let rss = proc_status_kib("VmRSS");
    let (elapsed, lat, t) = timed(&log, a.warmup, |bytes, _| {
        let text = std::str::from_utf8(bytes).ok()?;
        let v: Value = serde_json::from_str(text).ok()?;
        if !v.is_object() {
            return None;
        }
        Some(Some(serde_json::to_string(&v).expect("serialisable").len()))
    });
    report(a, "serde floor (parse + serialise)", json!({}), rss, elapsed, lat, t);
}

fn check(a: &Args) {
    let log = load(a.events.as_deref().unwrap_or_else(|| usage("--events is required")));
    let rss = proc_status_kib("VmRSS");
    let (elapsed, lat, t) = timed(&log, a.warmup, |bytes, pos| {
        let ev = parse_line(bytes, "bench", pos, &EventLimits::default()).ok()?;
        Some(Some(std::hint::black_box(ev.json).len()))
    });
    report(a, "parse_line check (graph's per-event work)", json!({}), rss, elapsed, lat, t);
}

fn store(a: &Args) -> (Arc<dyn StateStore>, &'static str, Option<tempfile::TempDir>) {
    match &a.rocks {
        Some(dir) => {
            let tmp = tempfile::tempdir_in(dir).expect("temp dir for RocksDB");
            (Arc::new(RocksStore::open(tmp.path()).expect("RocksDB opens")), "rocksdb", Some(tmp))
        }
        None => (Arc::new(MemoryStore::new()), "memory", None),
    }
}

fn chain(a: &Args) {
    if a.plugins.is_empty() {
        usage("--plugins is required");
    }
    let log = load(a.events.as_deref().unwrap_or_else(|| usage("--events is required")));
    let (store, store_kind, _tmp) = store(a);
    let specs: Vec<PluginSpec> = a
        .plugins
        .iter()
        .map(|dir| {
            let def = PluginDefinition::load(dir).unwrap_or_else(|e| usage(&format!("{}: {e}", dir.display())));
            let id = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            PluginSpec { id, def, teams: None, config: Default::default(), attachments: Default::default(), order: 0 }
        })
        .collect();
    let names: Vec<String> = specs.iter().map(|s| s.id.clone()).collect();
    let mut plugins =
        WorkerPlugins::new(Limits::default(), Arc::new(specs), services(store, a.geoip.as_deref())).unwrap_or_else(|e| usage(&e));
    let mut failures = 0u64;
    let rss = proc_status_kib("VmRSS");
    let (elapsed, lat, t) = timed(&log, a.warmup, |bytes, pos| {
        let ev = parse_line(bytes, "bench", pos, &EventLimits::default()).ok()?;
        match plugins.process(ev.team_id, ev.name(), ev.uuid(), &ev.json, ev.hops) {
            Ok(out) => {
                failures += out.failed.len() as u64;
                Some(out.event.map(|e| e.len()))
            }
            Err(_) => None,
        }
    });
    let instances = plugins.instances().count();
    let label = format!("pluginflow harness [{}]", names.join(","));
    let extra = json!({ "plugins": names, "state": store_kind, "instances": instances, "plugin_failures": failures });
    report(a, &label, extra, rss, elapsed, lat, t);
}

fn instances(a: &Args) {
    let dir = a.plugins.first().unwrap_or_else(|| usage("--plugin is required"));
    let def = PluginDefinition::load(dir).unwrap_or_else(|e| usage(&format!("{}: {e}", dir.display())));
    let runtime = PluginRuntime::new(Limits::default()).unwrap_or_else(|e| usage(&e));
    let services = services(Arc::new(MemoryStore::new()), a.geoip.as_deref());
    let make = |team: i64| {
        let cfg = InstanceConfig { config_id: format!("c{team}"), team_id: Some(team), ..Default::default() };
        let mut inst = PluginInstance::new(&runtime, &def, &cfg, &services).unwrap_or_else(|e| usage(&e.to_string()));
        inst.setup().unwrap_or_else(|e| usage(&format!("setupPlugin: {}: {}", e.name, e.message)));
        inst
    };
    // One instance first, so the allocator is warm (each instance has a runtime of its own).
    let mut kept = vec![make(0)];
    kept.iter().for_each(|i| i.collect_garbage());
    let (rss0, heap0) = (proc_status_kib("VmRSS"), runtime.memory_used());
    for team in 1..=a.count as i64 {
        kept.push(make(team));
    }
    kept.iter().for_each(|i| i.collect_garbage());
    let (rss1, heap1) = (proc_status_kib("VmRSS"), runtime.memory_used());
    let n = a.count.max(1) as f64;
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let out = json!({
        "system": "pluginflow-harness",
        "mode": "instances",
        "plugin": name,
        "count": a.count,
        "rss_per_instance_kib": ((rss1.saturating_sub(rss0)) as f64 / n).round(),
        "js_heap_per_instance_kib": ((heap1.saturating_sub(heap0)) as f64 / 1024.0 / n).round(),
        "rss_total_mb": (rss1 as f64 / 1024.0 * 10.0).round() / 10.0,
    });
    eprintln!(
        "instances [{name}]: {} KiB RSS and {} KiB QuickJS heap per idle instance ({} instances)",
        out["rss_per_instance_kib"], out["js_heap_per_instance_kib"], a.count
    );
    let text = serde_json::to_string_pretty(&out).expect("serialisable");
    match &a.json {
        Some(p) => std::fs::write(p, text + "\n").unwrap_or_else(|e| usage(&format!("cannot write {}: {e}", p.display()))),
        None => println!("{text}"),
    }
    drop(kept);
}

fn main() {
    let a = parse_args();
    match a.mode.as_str() {
        "floor" => floor(&a),
        "check" => check(&a),
        "chain" => chain(&a),
        "instances" => instances(&a),
        other => usage(&format!("unknown mode {other}")),
    }
}
