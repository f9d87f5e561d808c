//! Kafka round trip through Apache Kafka: events in, processed events out keyed by
//! `distinct_id`, dead letters with their reason header, plugin logs on their topic. The Kafka
//! output must equal what the same configuration writes from a recorded log.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use operators::plugin::MemoryLogSink;
use pluginflow::config::PipelineConfig;
use pluginflow_tests::broker::{Broker, Isolation, Topics, consume_all, kafka_config, produce_lines, spawn_pipeline, wait_exit};
use pluginflow_tests::{bench_plugin, config_text, example_plugin, gen_events, plugin_entry};

const EVENTS: usize = 3000;

fn plugins(dir: &Path) -> String {
    // A plugin that logs once per setup, so the logs topic gets entries.
    let logger = dir.join("logger");
    std::fs::create_dir_all(&logger).unwrap();
    std::fs::write(logger.join("plugin.json"), r#"{"name": "logger", "config": []}"#).unwrap();
    std::fs::write(logger.join("index.js"), "function setupPlugin() { console.log('logger ready') }\nmodule.exports = { setupPlugin }\n")
        .unwrap();
    [
        plugin_entry("screen", &bench_plugin("screen"), 1, ""),
        plugin_entry("mask", &example_plugin("property-filter"), 2, "config = { mode = \"mask\", properties = \"$browser,$os\" }"),
        plugin_entry("logger", &logger, 3, ""),
    ]
    .concat()
}

/// The same plugins over the recorded log, in-process: (sorted outputs, dead letters by reason).
fn reference(dir: &Path, input: &Path, plugins: &str) -> (Vec<String>, BTreeMap<String, usize>) {
    let path = dir.join("ref.toml");
    std::fs::write(&path, config_text(input, &dir.join("ref-out"), plugins)).unwrap();
    let config = PipelineConfig::load(&path).unwrap();
    let shared = pluginflow::run::prepare(config.clone(), Arc::new(MemoryLogSink::default()), Arc::new(AtomicBool::new(false))).unwrap();
    pluginflow::run::run(shared, timely::Config::thread()).unwrap();
    let mut out: Vec<String> = std::fs::read_to_string(&config.output.events).unwrap().lines().map(str::to_string).collect();
    out.sort();
    let mut dead = BTreeMap::new();
    for line in std::fs::read_to_string(&config.output.dead_letters).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        *dead.entry(v["reason"].as_str().expect("a reason").to_string()).or_default() += 1;
    }
    (out, dead)
}

#[test]
fn kafka_round_trip_matches_the_recorded_log_run() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    // No huge_property lines: 1.1 MB exceeds the broker's default message size.
    gen_events(&input, EVENTS, 5, &["--bad-rate", "0.02", "--bad-kinds", "truncated,non_object,missing_event,invalid_utf8"]);
    let plugins = plugins(dir.path());
    let (want, want_reasons) = reference(dir.path(), &input, &plugins);
    let want_dead: usize = want_reasons.values().sum();
    assert!(want_dead > 0 && want.len() < EVENTS - want_dead, "some dead letters and some drops: {want_dead}, {}", want.len());

    let broker = Broker::start();
    let topics = Topics { logs: Some("rt-logs".into()), ..Topics::named("rt") };
    topics.create(&broker.bootstrap(), 4);
    assert_eq!(produce_lines(&broker.bootstrap(), &topics.input, 4, &input), EVENTS);

    let config = kafka_config(dir.path(), &broker.bootstrap(), "rt", &topics, "stop_after_idle_ms = 2000", &plugins);
    let log = dir.path().join("pluginflow.log");
    let mut child = spawn_pipeline(&config, 2, &log);
    let status = wait_exit(&mut child, Duration::from_secs(120), &log);
    assert!(status.success(), "pluginflow failed: {}", std::fs::read_to_string(&log).unwrap());

    let out = consume_all(&broker.bootstrap(), &topics.output, Isolation::ReadUncommitted);
    for r in &out {
        let v: serde_json::Value = serde_json::from_str(&r.value).unwrap();
        assert_eq!(r.key.as_deref(), v["distinct_id"].as_str(), "events are keyed by distinct_id");
    }
    let mut got: Vec<String> = out.into_iter().map(|r| r.value).collect();
    got.sort();
    println!("round trip: {EVENTS} in, {} out (reference {}), {want_dead} dead letters", got.len(), want.len());
    assert_eq!(got.len(), want.len(), "output count");
    assert!(got == want, "Kafka output differs from the recorded-log run");

    let dead = consume_all(&broker.bootstrap(), &topics.dead, Isolation::ReadUncommitted);
    assert_eq!(dead.len(), want_dead, "dead letters");
    let reasons: BTreeMap<String, usize> = dead.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.headers.get("reason").cloned().expect("a reason header")).or_default() += 1;
        m
    });
    assert!(dead.iter().all(|r| r.headers.get("source").is_some_and(|s| s == "kafka:rt-in") && r.headers.contains_key("position")));
    println!("dead-letter reasons: {reasons:?}");
    assert_eq!(reasons, want_reasons, "the Kafka run's dead letters have the recorded-log run's reasons");

    let logs = consume_all(&broker.bootstrap(), "rt-logs", Isolation::ReadUncommitted);
    assert!(logs.iter().any(|r| r.value.contains("logger ready")), "plugin logs on their topic: {logs:?}");
    println!("kafka round trip took {:.1} s", started.elapsed().as_secs_f64());
}
