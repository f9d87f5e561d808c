//! `pluginflow run` end to end, in-process: the graph against a plain loop over the plugin host,
//! dead letters, chain semantics.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use operators::event::parse_line;
use operators::plugin::worker::WorkerPlugins;
use operators::plugin::{HostServices, Limits, MemoryLogSink};
use pluginflow::config::PipelineConfig;
use pluginflow::run::{load_specs, prepare, run};
use pluginflow_tests::{bench_plugin, config_text, example_plugin, gen_events, plugin_entry, read_json_lines};
use serde_json::Value;
use state::MemoryStore;

/// Runs the pipeline on `config` with `workers` threads; returns the output lines.
fn run_graph(config: &PipelineConfig, workers: usize) -> (Vec<String>, Arc<MemoryLogSink>) {
    let logs = Arc::new(MemoryLogSink::default());
    let shared = prepare(config.clone(), logs.clone(), Arc::new(AtomicBool::new(false))).unwrap();
    run(shared, timely::Config::process(workers)).unwrap();
    let text = std::fs::read_to_string(&config.output.events).unwrap();
    (text.lines().map(str::to_string).collect(), logs)
}

/// The reference: one plugin host, events in file order, no dataflow.
fn run_plain_loop(config: &PipelineConfig) -> Vec<String> {
    let specs = Arc::new(load_specs(config).unwrap());
    let services = HostServices::new(Arc::new(MemoryStore::new()), None, Arc::new(MemoryLogSink::default()), Duration::from_secs(5));
    let mut plugins = WorkerPlugins::new(Limits::default(), specs, services).unwrap();
    let mut out = Vec::new();
    for (i, line) in std::fs::read(&config.input.path).unwrap().split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        if let Ok(ev) = parse_line(line, "ref", i as u64, &operators::event::EventLimits::default())
            && let Some(json) = plugins.process(ev.team_id, ev.name(), ev.uuid(), &ev.json, 0).unwrap().event
        {
            out.push(json);
        }
    }
    out
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn config_in(dir: &Path, input: &Path, plugins: &str) -> PipelineConfig {
    let path = dir.join("pf.toml");
    std::fs::write(&path, config_text(input, &dir.join("out"), plugins)).unwrap();
    PipelineConfig::load(&path).unwrap()
}

#[test]
fn graph_matches_a_plain_loop_with_one_and_two_workers() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    gen_events(&input, 3000, 11, &["--bad-rate", "0.01"]);
    let plugins = [
        plugin_entry("screen", &bench_plugin("screen"), 1, ""),
        plugin_entry("flatten", &bench_plugin("flatten"), 2, "teams = [1, 2]"),
        plugin_entry("mask", &example_plugin("property-filter"), 4, "config = { mode = \"mask\", properties = \"$browser,$os\" }"),
    ]
    .concat();
    let config = config_in(dir.path(), &input, &plugins);
    let reference = sorted(run_plain_loop(&config));
    assert!(reference.len() > 2000, "most events survive the filter: {}", reference.len());
    for workers in [1, 2] {
        let (graph, _) = run_graph(&config, workers);
        let graph = sorted(graph);
        assert_eq!(graph.len(), reference.len(), "{workers} workers");
        assert!(graph == reference, "{workers} workers: outputs differ from the plain loop");
    }
}

#[test]
fn every_bad_line_is_dead_lettered_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    gen_events(&input, 2000, 5, &["--bad-rate", "0.05", "--huge-kb", "64"]);
    let extra = concat!(
        "{\"uuid\":\"a\",\"team_id\":1}\n",
        "{\"uuid\":\"b\",\"event\":\"e\"}\n",
        "{\"team_id\":1,\"event\":\"e\"}\n",
        "{\"uuid\":\"c\",\"team_id\":1,\"data\":\"{broken\"}\n",
        "{\"uuid\":\"d\",\"team_id\":1,\"ip\":\"\",\"data\":\"{\\\"event\\\":\\\"from-envelope\\\",\\\"properties\\\":{}}\"}\n",
        "[]\n",
    );
    let mut text = std::fs::read(&input).unwrap();
    text.extend_from_slice(extra.as_bytes());
    std::fs::write(&input, &text).unwrap();
    let total = text.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count();
    let config = config_in(dir.path(), &input, "");
    let (events, _) = run_graph(&config, 2);
    let dead = read_json_lines(&config.output.dead_letters);
    assert_eq!(events.len() + dead.len(), total, "nothing is lost");
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for d in &dead {
        let reason = d["reason"].as_str().unwrap();
        let key = reason.split(':').next().unwrap().to_string();
        *reasons.entry(key).or_default() += 1;
        assert!(d["raw"].is_string() && d["position"].is_u64(), "{d}");
    }
    for want in [
        "invalid JSON",
        "expected a JSON object (an event), got an array",
        "missing required field 'event'",
        "missing required field 'team_id'",
        "missing required field 'uuid'",
        "envelope field 'data' is not valid JSON",
    ] {
        assert!(reasons.contains_key(want), "no dead letter for {want:?}: {reasons:?}");
    }
    assert!(reasons.keys().any(|r| r.starts_with("invalid UTF-8")), "{reasons:?}");
    let utf8 = dead.iter().find(|d| d["reason"].as_str().unwrap().starts_with("invalid UTF-8")).unwrap();
    assert!(utf8["raw_base64"].is_string(), "the exact bytes are kept: {utf8}");
    let merged: Vec<Value> = events.iter().map(|l| serde_json::from_str::<Value>(l).unwrap()).filter(|v| v["uuid"] == "d").collect();
    assert_eq!(merged[0]["event"], "from-envelope");
    assert!(merged[0]["ip"].is_null());
}

#[test]
fn chain_semantics_through_the_graph() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("plugin.json"), format!("{{\"name\":\"{name}\"}}")).unwrap();
        std::fs::write(p.join("index.js"), body).unwrap();
        p
    };
    let tagger = plugin(
        "tagger",
        "exports.processEvent = (e, { config }) => { (e.properties.tags = e.properties.tags || []).push(config.tag); return e }",
    );
    let failer = plugin("failer", "exports.processEvent = (e) => { e.properties.touched = true; throw new Error('I always fail!') }");
    let dropper = plugin("dropper", "exports.processEvent = (e) => e.event === 'drop me' ? null : e");
    let input = dir.path().join("events.jsonl");
    std::fs::write(
        &input,
        "{\"uuid\":\"1\",\"event\":\"keep\",\"team_id\":1,\"properties\":{}}\n{\"uuid\":\"2\",\"event\":\"drop me\",\"team_id\":1,\"properties\":{}}\n{\"uuid\":\"3\",\"event\":\"keep\",\"team_id\":2,\"properties\":{}}\n",
    )
    .unwrap();
    let plugins = [
        plugin_entry("t2", &tagger, 2, "config = { tag = \"second\" }"),
        plugin_entry("t1", &tagger, 1, "config = { tag = \"first\" }"),
        plugin_entry("f", &failer, 3, "teams = [1]"),
        plugin_entry("d", &dropper, 4, ""),
    ]
    .concat();
    let config = config_in(dir.path(), &input, &plugins);
    let (events, logs) = run_graph(&config, 1);
    let by_uuid: BTreeMap<String, Value> =
        events.iter().map(|l| serde_json::from_str::<Value>(l).unwrap()).map(|v| (v["uuid"].as_str().unwrap().to_string(), v)).collect();
    assert_eq!(by_uuid.len(), 2, "event 2 was dropped");
    let one = &by_uuid["1"]["properties"];
    assert_eq!(one["tags"], serde_json::json!(["first", "second"]));
    assert_eq!(one["touched"], true);
    assert_eq!(one["$plugins_succeeded"], serde_json::json!(["tagger (t1)", "tagger (t2)", "dropper (d)"]));
    assert_eq!(one["$plugins_failed"], serde_json::json!(["failer (f)"]));
    let three = &by_uuid["3"]["properties"];
    assert_eq!(three["$plugins_failed"], serde_json::json!([]));
    let entries = logs.entries();
    let failure = entries.iter().find(|e| e.message.contains("I always fail!")).expect("the failure is logged");
    assert_eq!((failure.plugin.as_str(), failure.config_id.as_str()), ("failer", "f"));
    assert!(failure.message.contains("processEvent") && failure.message.contains("event 1"), "{}", failure.message);
}
