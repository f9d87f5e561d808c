//! Instruction counts of the per-event work, one operation at a time: numbers that do not move
//! with the machine's load. `instructions NAME` sets up (instances loaded and warmed up, not
//! counted) and then runs the operation once inside a function named `measured_*`;
//! `scripts/instructions.sh` runs each under `valgrind --tool=callgrind
//! --toggle-collect='*measured_*'`, so only that call is counted, and compares the counts with
//! `benches/instructions-baseline.json` (fails on a rise of more than 5%).
//!
//! - `crossing`: an event (~1 KB) built in a plugin's runtime and read back as JSON by the host,
//!   no plugin code: what the first and the last plugin of a chain pay.
//! - `hand_over`: the same event built in one runtime, copied into a second one as values (as
//!   a chain hands an event from one plugin to the next) and read back there: the
//!   realm-to-realm copy is `hand_over` − `crossing`.
//! - `plugin_call`: one `processEvent` of a plugin that returns its input, on a tiny event.
//! - `regexp_compile_i`: one `processEvent` that builds eight case-insensitive regular
//!   expressions from strings (`new RegExp(word, 'i')`) and tests the event's name with each: what
//!   a plugin that makes its patterns per event pays for compiling them.
//! - `chain3`: one ~1 KB event through the three benchmark plugins of `benches/plugins`
//!   (greet, screen, flatten), `$plugins_*` marks included.
//! - `cache_get` / `cache_set`: one call on RocksDB state.
//! - `geoip`: one lookup in the real GeoLite2 City database (`scripts/fetch-test-data.sh`);
//!   `geoip_recent`: an address looked up a moment ago (the cache of recent lookups).
//! - `graph_no_plugins_1000`: 1,000 events through a timely dataflow that checks each line and
//!   runs a chain with no plugins (the graph's own work); the script divides by 1,000.
//! - `parse_line_1000`: the same 1,000 lines through the line check alone (`parse_line`), the
//!   floor the graph is compared with; the script divides by 1,000.
//! - `load_7_plugins`: reading and compiling the seven plugins of `benches/plugins` and
//!   `examples/plugins` (JavaScript and TypeScript: parse, strip types, module syntax, print with
//!   a source map), what a process does once per plugin folder at start.
//! - `instance_create`: one more instance of the `greet` plugin (its own QuickJS runtime and
//!   context, the prelude, the plugin's module, `setupPlugin`), after a first one made the
//!   process's prelude bytecode: what a team's first event (or an evicted team's return) costs.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

use operators::plugin::worker::WorkerPlugins;
use operators::plugin::{GeoIp, Limits, PluginDefinition, PluginInstance, PluginRuntime, run_chain};
use pluginflow_benches::{EVENT_1KB, EVENT_TINY, geolite_path, instance, services, temp_plugin, workspace_root};
use state::{CacheScope, MemoryStore, RocksStore, StateStore};

/// A plugin instance and what it needs to stay alive.
struct Loaded {
    _dirs: Vec<tempfile::TempDir>,
    _runtime: PluginRuntime,
    instances: Vec<PluginInstance>,
}

fn warm(instances: &mut [PluginInstance]) {
    for _ in 0..20 {
        let mut refs: Vec<&mut PluginInstance> = instances.iter_mut().collect();
        run_chain(&mut refs, EVENT_1KB, 2).expect("warm-up");
    }
}

fn one(name: &str, source: &str) -> Loaded {
    let dir = temp_plugin(name, source);
    let runtime = PluginRuntime::new(Limits::default()).expect("runtime");
    let services = services(Arc::new(MemoryStore::new()), None);
    let mut instances = vec![instance(&runtime, dir.path(), &services)];
    warm(&mut instances);
    Loaded { _dirs: vec![dir], _runtime: runtime, instances }
}

fn crossing_setup() -> Loaded {
    one("keep", "function processEvent(event) { return event }\n")
}

fn hand_over_setup() -> Loaded {
    let runtime = PluginRuntime::new(Limits::default()).expect("runtime");
    let services = services(Arc::new(MemoryStore::new()), None);
    let dirs = vec![
        temp_plugin("keep", "function processEvent(event) { return event }\n"),
        temp_plugin("keep2", "function processEvent(event) { return event }\n"),
    ];
    let mut instances: Vec<PluginInstance> = dirs.iter().map(|d| instance(&runtime, d.path(), &services)).collect();
    warm(&mut instances);
    Loaded { _dirs: dirs, _runtime: runtime, instances }
}

fn noop_setup() -> Loaded {
    one("noop", "function processEvent(event) { return event }\n")
}

fn regexp_setup() -> Loaded {
    one(
        "regexp",
        "const words = ['bot', 'crawler', 'spider', 'headless', 'slurp', 'preview', 'monitor', 'fetch']\n\
         function processEvent(event) {\n\
           let n = 0\n\
           for (const w of words) if (new RegExp(w, 'i').test(event.event)) n++\n\
           event.properties.matched = n\n\
           return event\n\
         }\n",
    )
}

fn bench_plugin(name: &str) -> PathBuf {
    workspace_root().join("benches/plugins").join(name)
}

fn chain3_setup() -> Loaded {
    let runtime = PluginRuntime::new(Limits::default()).expect("runtime");
    let services = services(Arc::new(MemoryStore::new()), None);
    let mut instances: Vec<PluginInstance> =
        ["greet", "screen", "flatten"].iter().map(|p| instance(&runtime, &bench_plugin(p), &services)).collect();
    warm(&mut instances);
    Loaded { _dirs: Vec::new(), _runtime: runtime, instances }
}

/// A runtime, the `greet` definition and services, with one instance made and dropped.
struct Creating {
    runtime: PluginRuntime,
    def: Arc<PluginDefinition>,
    services: operators::plugin::HostServices,
}

fn creating_setup() -> Creating {
    let runtime = PluginRuntime::new(Limits::default()).expect("runtime");
    let services = services(Arc::new(MemoryStore::new()), None);
    drop(instance(&runtime, &bench_plugin("greet"), &services));
    let def = PluginDefinition::load(&bench_plugin("greet")).expect("plugin loads");
    Creating { runtime, def, services }
}

#[inline(never)]
fn measured_instance_create(c: &Creating) -> PluginInstance {
    let cfg = operators::plugin::InstanceConfig { config_id: "greet".into(), team_id: Some(3), ..Default::default() };
    let mut inst = PluginInstance::new(&c.runtime, &c.def, &cfg, &c.services).expect("instance");
    inst.setup().expect("setupPlugin");
    black_box(inst)
}

#[inline(never)]
fn measured_crossing(l: &mut Loaded) -> String {
    black_box(l.instances[0].cross(black_box(EVENT_1KB), 2).expect("crossed"))
}

#[inline(never)]
fn measured_hand_over(l: &mut Loaded) -> String {
    let (first, rest) = l.instances.split_at_mut(1);
    black_box(first[0].cross_via(&mut rest[0], black_box(EVENT_1KB), 2).expect("handed over"))
}

#[inline(never)]
fn measured_plugin_call(l: &mut Loaded) -> Option<String> {
    black_box(l.instances[0].process_event_json(black_box(EVENT_TINY)).expect("processed"))
}

#[inline(never)]
fn measured_regexp_compile_i(l: &mut Loaded) -> Option<String> {
    black_box(l.instances[0].process_event_json(black_box(EVENT_TINY)).expect("processed"))
}

#[inline(never)]
fn measured_chain3(l: &mut Loaded) -> Option<String> {
    let mut refs: Vec<&mut PluginInstance> = l.instances.iter_mut().collect();
    black_box(run_chain(&mut refs, black_box(EVENT_1KB), 2).expect("chain").event)
}

/// RocksDB state with one key set.
struct Cache {
    _dir: tempfile::TempDir,
    store: RocksStore,
    scope: CacheScope,
}

fn cache_setup() -> Cache {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RocksStore::open(dir.path()).expect("rocksdb opens");
    let scope = CacheScope { plugin: "bench:0123456789abcdef".into(), team: Some(2) };
    store.cache_set(&scope, "key", "\"a cached value of some length\"", None).expect("set");
    Cache { _dir: dir, store, scope }
}

#[inline(never)]
fn measured_cache_get(c: &Cache) -> Option<String> {
    black_box(c.store.cache_get(&c.scope, black_box("key")).expect("get"))
}

#[inline(never)]
fn measured_cache_set(c: &Cache) {
    c.store.cache_set(&c.scope, black_box("key"), black_box("\"another value\""), None).expect("set");
}

/// The database after one lookup of another address (so the measured one is not cached).
fn geoip_setup() -> GeoIp {
    let path = geolite_path().expect("the GeoLite2 City database: run scripts/fetch-test-data.sh");
    let db = GeoIp::open(&path).expect("geoip opens");
    db.locate_json("81.2.69.160").expect("warm-up lookup");
    db
}

#[inline(never)]
fn measured_geoip(db: &GeoIp) -> String {
    black_box(db.locate_json(black_box("81.2.69.142")).expect("lookup"))
}

/// The same address again: answered from the cache of recent lookups.
#[inline(never)]
fn measured_geoip_recent(db: &GeoIp) -> String {
    black_box(db.locate_json(black_box("81.2.69.160")).expect("lookup"))
}

fn lines_setup() -> Arc<Vec<Vec<u8>>> {
    Arc::new((0..1000).map(|i| EVENT_1KB.replace("0191f3a2-7e44", &format!("{i:013}")).into_bytes()).collect())
}

#[inline(never)]
fn measured_graph_no_plugins_1000(lines: &Arc<Vec<Vec<u8>>>) -> usize {
    let lines = lines.clone();
    use timely::dataflow::InputHandle;
    use timely::dataflow::operators::core::{Input, Inspect};
    use timely::dataflow::operators::vec::Map;
    let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = written.clone();
    timely::execute_directly(move |worker| {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
        let plugins = std::rc::Rc::new(std::cell::RefCell::new(
            WorkerPlugins::new(Limits::default(), Arc::new(Vec::new()), services(store, None)).expect("worker"),
        ));
        let mut input = InputHandle::<u64, timely::container::CapacityContainerBuilder<Vec<Vec<u8>>>>::new();
        worker.dataflow::<u64, _, _>(|scope| {
            let limits = operators::event::EventLimits::default();
            let chain = plugins.clone();
            scope
                .input_from(&mut input)
                .flat_map(move |line: Vec<u8>| operators::event::parse_owned_line(line, "bench", 0, &limits).ok())
                .flat_map(move |ev| {
                    // As the pipeline's run_event: a team without plugins gets its event moved.
                    let mut plugins = chain.borrow_mut();
                    if !plugins.has_chain(ev.team_id) {
                        return Some(ev.json);
                    }
                    plugins.process(ev.team_id, ev.name(), ev.uuid(), &ev.json, ev.hops).ok().and_then(|o| o.event)
                })
                .inspect(move |out: &String| {
                    seen.fetch_add(out.len(), std::sync::atomic::Ordering::Relaxed);
                });
        });
        for line in lines.iter() {
            input.send(line.clone());
        }
    });
    black_box(written.load(std::sync::atomic::Ordering::Relaxed))
}

#[inline(never)]
fn measured_parse_line_1000(lines: &Arc<Vec<Vec<u8>>>) -> usize {
    let limits = operators::event::EventLimits::default();
    lines.iter().filter_map(|line| operators::event::parse_line(line, "bench", 0, &limits).ok()).map(|ev| ev.json.len()).sum()
}

fn plugin_folders() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = ["greet", "screen", "flatten"].iter().map(|p| bench_plugin(p)).collect();
    dirs.extend(
        ["flattener", "geoip-enricher", "hello-counter", "property-filter"]
            .iter()
            .map(|p| workspace_root().join("examples/plugins").join(p)),
    );
    dirs
}

#[inline(never)]
fn measured_load_7_plugins(dirs: &[PathBuf]) -> usize {
    dirs.iter().map(|d| PluginDefinition::load(d).expect("loads").compiled.modules.iter().map(|m| m.factory.len()).sum::<usize>()).sum()
}

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    // Each result goes through black_box so the work cannot be optimised away; results drop
    // after the measured call (their freeing is not counted either).
    match name.as_str() {
        "crossing" => drop(black_box(measured_crossing(&mut crossing_setup()))),
        "hand_over" => drop(black_box(measured_hand_over(&mut hand_over_setup()))),
        "plugin_call" => drop(black_box(measured_plugin_call(&mut noop_setup()))),
        "regexp_compile_i" => drop(black_box(measured_regexp_compile_i(&mut regexp_setup()))),
        "chain3" => drop(black_box(measured_chain3(&mut chain3_setup()))),
        "cache_get" => {
            let c = cache_setup();
            drop(black_box(measured_cache_get(&c)));
        }
        "cache_set" => measured_cache_set(&cache_setup()),
        "geoip" => {
            let db = geoip_setup();
            drop(black_box(measured_geoip(&db)));
        }
        "geoip_recent" => {
            let db = geoip_setup();
            drop(black_box(measured_geoip_recent(&db)));
        }
        "graph_no_plugins_1000" => drop(black_box(measured_graph_no_plugins_1000(&lines_setup()))),
        "parse_line_1000" => drop(black_box(measured_parse_line_1000(&lines_setup()))),
        "load_7_plugins" => drop(black_box(measured_load_7_plugins(&plugin_folders()))),
        "instance_create" => {
            let c = creating_setup();
            drop(black_box(measured_instance_create(&c)));
        }
        "list" => println!(
            "crossing hand_over plugin_call regexp_compile_i chain3 cache_get cache_set geoip geoip_recent graph_no_plugins_1000 parse_line_1000 load_7_plugins instance_create"
        ),
        other => {
            eprintln!("usage: instructions NAME (one of: instructions list); got '{other}'");
            std::process::exit(2);
        }
    }
}
