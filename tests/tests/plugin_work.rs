//! Work after the chain, end to end through `pluginflow run` in-process: a pending retry
//! survives a restart; `posthog.capture` loops stop at the hop limit; failures end in the
//! dead-letter output.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use operators::plugin::MemoryLogSink;
use pluginflow::config::PipelineConfig;
use pluginflow::run::{prepare, run};
use pluginflow::stats::Summary;
use pluginflow_tests::{plugin_entry, read_json_lines};

fn write_plugin(dir: &Path, name: &str, index: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("plugin.json"), format!("{{\"name\":\"{name}\"}}")).unwrap();
    std::fs::write(p.join("index.js"), index).unwrap();
    p
}

fn config(dir: &Path, input: &str, state: &str, runtime: &str, plugins: &str) -> PipelineConfig {
    std::fs::write(dir.join("in.jsonl"), input).unwrap();
    let text = format!(
        "[input]\npath = \"in.jsonl\"\n[output]\nevents = \"out/events.jsonl\"\ndead_letters = \"out/dead.jsonl\"\nlogs = \"out/logs.jsonl\"\napp_metrics = \"out/metrics.jsonl\"\n[state]\n{state}\n[runtime]\n{runtime}\n{plugins}"
    );
    std::fs::write(dir.join("pf.toml"), text).unwrap();
    PipelineConfig::load(&dir.join("pf.toml")).unwrap()
}

/// Runs the pipeline; `stop_when` is polled on the logs and sets the stop flag when true.
fn run_until(config: &PipelineConfig, stop_when: impl Fn(&MemoryLogSink) -> bool + Send + 'static) -> (Summary, Arc<MemoryLogSink>) {
    let (summary, logs, _) = run_with_http(config, stop_when);
    (summary, logs)
}

/// [`run_until`] on a worker clock that stands still at `clock_ms`: retries and jobs fall due by
/// that clock only (no test waits for, or races, a real delay).
fn run_until_at(
    config: &PipelineConfig,
    clock_ms: u64,
    stop_when: impl Fn(&MemoryLogSink) -> bool + Send + 'static,
) -> (Summary, Arc<MemoryLogSink>) {
    let (summary, logs, _) = run_on(config, Some(clock_ms), stop_when);
    (summary, logs)
}

fn run_with_http(
    config: &PipelineConfig,
    stop_when: impl Fn(&MemoryLogSink) -> bool + Send + 'static,
) -> (Summary, Arc<MemoryLogSink>, Arc<pluginflow::http::HttpState>) {
    run_on(config, None, stop_when)
}

fn run_on(
    config: &PipelineConfig,
    clock_ms: Option<u64>,
    stop_when: impl Fn(&MemoryLogSink) -> bool + Send + 'static,
) -> (Summary, Arc<MemoryLogSink>, Arc<pluginflow::http::HttpState>) {
    let logs = Arc::new(MemoryLogSink::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (l, s) = (logs.clone(), stop.clone());
    let watcher = std::thread::spawn(move || {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) && !s.load(Ordering::SeqCst) {
            if stop_when(&l) {
                s.store(true, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let mut shared = prepare(config.clone(), logs.clone(), stop.clone()).unwrap();
    if let Some(ms) = clock_ms {
        shared.clock = Arc::new(state::ManualClock::new(ms));
    }
    let http = shared.http.clone();
    let stats = run(shared, timely::Config::thread()).unwrap();
    stop.store(true, Ordering::SeqCst);
    watcher.join().unwrap();
    (stats.summary(), logs, http)
}

fn messages(logs: &MemoryLogSink) -> Vec<String> {
    logs.entries().into_iter().map(|e| e.message).collect()
}

const DELIVER: &str = "const { RetryError } = require('@posthog/plugin-scaffold')\n\
    exports.onEvent = async (e, { storage }) => {\n\
      const n = (await storage.get('attempts:' + e.uuid, 0)) + 1\n\
      await storage.set('attempts:' + e.uuid, n)\n\
      console.log('deliver ' + e.uuid + ' attempt ' + n)\n\
      if (n === 1) throw new RetryError('remote is down')\n\
    }";

#[test]
fn a_pending_retry_resumes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_plugin(dir.path(), "deliver", DELIVER);
    let plugins = plugin_entry("d", &p, 1, "teams = [1]");
    let event = "{\"uuid\":\"u1\",\"event\":\"e\",\"team_id\":1,\"properties\":{}}\n";
    let runtime = "on_event_retry_base_ms = 1500";
    // First run, its clock standing at 0: the first attempt fails, the retry is due at 1,500 ms,
    // which never comes; we stop once the first attempt is logged.
    let first = config(dir.path(), event, "path = \"state\"", runtime, &plugins);
    let (summary, logs) = run_until_at(&first, 0, |l| l.entries().iter().any(|e| e.message == "deliver u1 attempt 1"));
    assert_eq!(summary.events_out, 1);
    assert!(!messages(&logs).iter().any(|m| m.contains("attempt 2")), "the retry did not run in the first process");
    // Second run, same state folder, no new input, its clock at 1,500 ms: the retry comes back
    // from RocksDB, due now, and runs (the run ends only once it did).
    let second = config(dir.path(), "", "path = \"state\"", runtime, &plugins);
    let (summary, logs) = run_until_at(&second, 1_500, |_| false);
    assert!(messages(&logs).contains(&"deliver u1 attempt 2".to_string()), "{:?}", messages(&logs));
    assert_eq!(summary.metrics.get(&("d".to_string(), 1, "onEvent".to_string(), "succeeded_on_retry".to_string())), Some(&1));
    // A third run finds nothing left to do.
    let (_, logs) = run_until(&second, |_| false);
    assert!(!messages(&logs).iter().any(|m| m.starts_with("deliver")));
}

#[test]
fn retries_that_cannot_be_done_after_a_restart_are_dead_letters() {
    // A retry owed to a configuration that is gone was counted a success; an unreadable one
    // was skipped, never acknowledged, and counted as pending for ever.
    let dir = tempfile::tempdir().unwrap();
    let p = write_plugin(dir.path(), "deliver", DELIVER);
    // A blank first line puts the event at byte 1: its dead letter must still say so after the
    // restart (the durable retry keeps the position).
    let event = "\n{\"uuid\":\"u1\",\"event\":\"e\",\"team_id\":1,\"properties\":{}}\n";
    // The retry is due 2 s after the first attempt, on a clock that stands still: the first run
    // stops with it pending.
    let runtime = "on_event_retry_base_ms = 2000";
    let first = config(dir.path(), event, "path = \"state\"", runtime, &plugin_entry("d", &p, 1, "teams = [1]"));
    let (summary, _) = run_until_at(&first, 0, |l| l.entries().iter().any(|e| e.message == "deliver u1 attempt 1"));
    assert_eq!(summary.events_out, 1);
    {
        // Garbage beside the real pending retry.
        let store = state::RocksStore::open(dir.path().join("state")).unwrap();
        state::StateStore::queue_put(&store, operators::plugin::deferred::RETRY_QUEUE, 0, b"{not json").unwrap();
    }
    // Second run: the configuration is gone (another plugin in its place).
    let other = write_plugin(dir.path(), "other", "exports.processEvent = (e) => e");
    let second = config(dir.path(), "", "path = \"state\"", runtime, &plugin_entry("o", &other, 1, ""));
    let (summary, _, http) = run_with_http(&second, |_| false);
    let dead = read_json_lines(&second.output.dead_letters);
    let reasons: Vec<&str> = dead.iter().map(|d| d["reason"].as_str().unwrap()).collect();
    assert_eq!(dead.len(), 2, "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("Unavailable: the plugin configuration is no longer configured")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("UnreadableRetry")), "{reasons:?}");
    let unavailable = dead.iter().find(|d| d["reason"].as_str().unwrap().contains("Unavailable")).unwrap();
    assert_eq!(unavailable["position"], 1, "the event's byte offset in the first run's input");
    // Work that gave up, not lines of the input: counted apart from the input's account.
    assert_eq!((summary.dead_lettered, summary.work_given_up), (0, 2));
    assert!(pluginflow::http::prometheus(&http).contains("pluginflow_pending_retries 0\n"), "nothing is left pending");
    assert!(pluginflow::http::prometheus(&http).contains("pluginflow_dead_letters_total 2\n"), "every record of the dead-letter output");
}

#[test]
fn capture_loops_stop_at_the_hop_limit() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_plugin(
        dir.path(),
        "echo",
        "exports.processEvent = async (e) => { await posthog.capture('echo of ' + e.event, { distinct_id: 'x', depth: (e.properties.depth || 0) + 1 }); return e }",
    );
    let plugins = plugin_entry("echo", &p, 1, "");
    let cfg = config(
        dir.path(),
        "{\"uuid\":\"u1\",\"event\":\"start\",\"team_id\":5,\"properties\":{}}\n",
        "memory = true",
        "max_capture_hops = 3",
        &plugins,
    );
    let (summary, _) = run_until(&cfg, |_| false);
    let events = read_json_lines(&cfg.output.events);
    let names: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["start", "echo of start", "echo of echo of start", "echo of echo of echo of start"]);
    assert!(events.iter().all(|e| e.get("$pluginflow_hops").is_none()), "the hop count is ours, not the event's");
    assert!(events.iter().skip(1).all(|e| e["team_id"] == 5 && e["properties"]["$lib"] == "posthog-plugin-server"));
    let dead = read_json_lines(&cfg.output.dead_letters);
    assert_eq!(dead.len(), 1);
    assert!(dead[0]["reason"].as_str().unwrap().starts_with("posthog.capture loop: this event is 4 captures deep"), "{}", dead[0]);
    // Four captures: three went back in, the fourth was too deep and is a dead letter.
    assert_eq!(summary.captured, 4);
    assert_eq!(summary.events_in + summary.captured, summary.events_out + summary.dropped + summary.dead_lettered);
}

#[test]
fn what_on_event_and_export_events_capture_is_written_and_counted() {
    // onEvent captures an echo of the input event (1 hop); `start` itself is not exported
    // (exportEventsToIgnore), so the batch holds the echo alone and its capture, `exported`,
    // is 2 hops deep: past max_capture_hops = 1, a dead letter. (A batch counts the fewest
    // hops among its events: one with an input event in it captures at 1 hop; see
    // operators/tests/deferred_captures.rs.)
    let dir = tempfile::tempdir().unwrap();
    let p = write_plugin(
        dir.path(),
        "deferred-echo",
        "exports.onEvent = async (e) => { if (e.event === 'start') await posthog.capture('echo of start', { distinct_id: 'x' }) }\n\
         exports.exportEvents = async (events) => { if (events.some((e) => e.event.startsWith('echo'))) await posthog.capture('exported', { distinct_id: 'x' }) }",
    );
    let cfg = config(
        dir.path(),
        "{\"uuid\":\"u1\",\"event\":\"start\",\"team_id\":5,\"properties\":{}}\n",
        "memory = true",
        "max_capture_hops = 1",
        &plugin_entry("deferred-echo", &p, 1, "config = { exportEventsToIgnore = \"start\" }"),
    );
    let (summary, _) = run_until(&cfg, |_| false);
    let events = read_json_lines(&cfg.output.events);
    let names: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(names, ["start", "echo of start"]);
    let dead = read_json_lines(&cfg.output.dead_letters);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0]["reason"].as_str().unwrap().starts_with("posthog.capture loop: this event is 2 captures deep"), "{}", dead[0]);
    assert!(dead[0]["raw"].as_str().unwrap().contains("\"exported\""), "{}", dead[0]);
    assert_eq!(summary.captured, 2);
    assert_eq!(summary.events_in + summary.captured, summary.events_out + summary.dropped + summary.dead_lettered);
}

#[test]
fn an_input_line_cannot_claim_a_capture_hop_count() {
    // `$pluginflow_hops` once marked captured events inside their JSON: an input line carrying
    // it made every capture from it a "loop" (dead letters), or wrapped at u32::MAX. Now the
    // hop count travels beside captured events and the key is an ordinary key.
    let dir = tempfile::tempdir().unwrap();
    let p = write_plugin(
        dir.path(),
        "echo",
        "exports.processEvent = async (e) => { if (e.event === 'start') await posthog.capture('echo', { distinct_id: 'x' }); return e }",
    );
    let plugins = plugin_entry("echo", &p, 1, "");
    let input = "{\"uuid\":\"u1\",\"event\":\"start\",\"team_id\":5,\"$pluginflow_hops\":99,\"properties\":{}}\n\
                 {\"uuid\":\"u2\",\"event\":\"start\",\"team_id\":5,\"$pluginflow_hops\":4294967295,\"properties\":{}}\n";
    let cfg = config(dir.path(), input, "memory = true", "max_capture_hops = 1", &plugins);
    let (summary, _) = run_until(&cfg, |_| false);
    let names: Vec<String> = read_json_lines(&cfg.output.events).iter().map(|e| e["event"].as_str().unwrap().to_string()).collect();
    assert_eq!(names.iter().filter(|n| *n == "echo").count(), 2, "both captures went in: {names:?}");
    assert_eq!(summary.dead_lettered, 0);
    assert_eq!(summary.captured, 2);
}

#[test]
fn a_failed_export_batch_is_one_dead_letter_per_event() {
    // A plain error is not retried: the batch of three fails at once. It once became one
    // record holding the array.
    let dir = tempfile::tempdir().unwrap();
    let p = write_plugin(
        dir.path(),
        "exporter",
        "exports.exportEvents = (events) => { throw new Error('the warehouse said no to ' + events.length) }",
    );
    let plugins = plugin_entry("w", &p, 1, "");
    let input: String = (1..=3).map(|i| format!("{{\"uuid\":\"u{i}\",\"event\":\"e\",\"team_id\":1,\"properties\":{{}}}}\n")).collect();
    let cfg = config(dir.path(), &input, "memory = true", "", &plugins);
    let (summary, _) = run_until(&cfg, |_| false);
    assert_eq!(summary.events_out, 3);
    // The events were written; their export gave up: three dead letters of plugin work, and
    // the input's account still adds up.
    assert_eq!((summary.work_given_up, summary.dead_lettered), (3, 0));
    assert_eq!(summary.events_in + summary.captured, summary.events_out + summary.dropped + summary.dead_lettered);
    let dead = read_json_lines(&cfg.output.dead_letters);
    let uuids: Vec<String> = dead
        .iter()
        .map(|d| serde_json::from_str::<serde_json::Value>(d["raw"].as_str().unwrap()).unwrap()["uuid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(uuids, ["u1", "u2", "u3"], "{dead:?}");
    // Each names its own event's line: the byte offsets of the input's lines.
    let starts: Vec<u64> = std::iter::once(0).chain(input.match_indices('\n').map(|(i, _)| i as u64 + 1)).take(3).collect();
    let positions: Vec<u64> = dead.iter().map(|d| d["position"].as_u64().unwrap()).collect();
    assert_eq!(positions, starts);
    for d in &dead {
        assert_eq!(
            (d["plugin"].as_str(), d["hook"].as_str(), d["attempts"].as_u64()),
            (Some("exporter"), Some("exportEvents"), Some(1)),
            "{d}"
        );
        assert_eq!(d["error"], "Error: the warehouse said no to 3");
    }
}

#[test]
fn on_event_give_ups_reach_the_dead_letter_output() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_plugin(
        dir.path(),
        "doomed",
        "const { RetryError } = require('@posthog/plugin-scaffold')\nexports.onEvent = () => { throw new RetryError('never') }",
    );
    let plugins = plugin_entry("x", &p, 1, "");
    let cfg = config(
        dir.path(),
        "{\"uuid\":\"u1\",\"event\":\"e\",\"team_id\":1,\"properties\":{}}\n",
        "memory = true",
        "on_event_retry_base_ms = 5",
        &plugins,
    );
    let (summary, _, http) = run_with_http(&cfg, |_| false);
    assert_eq!(summary.events_out, 1, "the event itself was written");
    let metrics = pluginflow::http::prometheus(&http);
    assert!(metrics.contains("pluginflow_plugin_call_seconds_count{config=\"x\",hook=\"onEvent\"} 6\n"), "{metrics}");
    let plugins: serde_json::Value = serde_json::from_str(&pluginflow::http::plugins_json(&http)).unwrap();
    assert_eq!(plugins[0]["plugin_config_id"], "x");
    assert_eq!(plugins[0]["loaded"], true);
    assert_eq!(plugins[0]["app_metrics"]["onEvent"]["failed"], 1);
    let dead = read_json_lines(&cfg.output.dead_letters);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["reason"], "onEvent of plugin 'doomed' (x) failed after 6 attempts: RetryError: never");
    assert_eq!(dead[0]["source"], "plugin:x");
    assert_eq!(
        (dead[0]["plugin"].as_str(), dead[0]["plugin_config_id"].as_str(), dead[0]["hook"].as_str()),
        (Some("doomed"), Some("x"), Some("onEvent"))
    );
    assert_eq!((dead[0]["attempts"].as_u64(), dead[0]["error"].as_str()), (Some(6), Some("RetryError: never")));
    assert!(dead[0]["raw"].as_str().unwrap().contains("\"uuid\":\"u1\""));
    assert_eq!(summary.metrics.get(&("x".to_string(), 1, "onEvent".to_string(), "failed".to_string())), Some(&1));
    // The same count, from the differential app-metrics collection's output.
    let metrics = read_json_lines(&cfg.output.app_metrics);
    let failed: i64 = metrics
        .iter()
        .filter(|m| m["plugin_config_id"] == "x" && m["hook"] == "onEvent" && m["outcome"] == "failed")
        .map(|m| m["delta"].as_i64().unwrap())
        .sum();
    assert_eq!(failed, 1, "{metrics:?}");
    assert!(metrics.iter().all(|m| m["minute"].as_str().unwrap().ends_with(":00.000Z")));
}

/// Three events holding lone surrogate escapes (text cut inside an emoji: `JSON.parse` reads
/// them, and a plugin's output can hold them): in a property's value, in a property's key, and
/// inside an ingestion envelope's `data`.
const LONE_SURROGATES: &str = concat!(
    r#"{"uuid":"u1","event":"e","team_id":1,"properties":{"s":"a\ud83d"}}"#,
    "\n",
    r#"{"uuid":"u2","event":"e","team_id":1,"properties":{"s":"ok","\udc00k":1}}"#,
    "\n",
    r#"{"ip":"","data":"{\"uuid\":\"u3\",\"event\":\"e\",\"team_id\":1,\"properties\":{\"s\":\"\\ud83d!\"}}"}"#,
    "\n",
);

#[test]
fn events_with_lone_surrogates_reach_on_event_and_export() {
    // A `Value` cannot hold them: such an event once lost its onEvent and its export without a
    // word, and such an envelope was dead-lettered.
    let dir = tempfile::tempdir().unwrap();
    let p = write_plugin(
        dir.path(),
        "hooks",
        "const units = (s) => Array.from({ length: s.length }, (_, i) => s.charCodeAt(i)).join(' ')\n\
         exports.onEvent = (e) => { console.log('on ' + e.uuid + ': ' + units(e.properties.s) + ' / ' + Object.keys(e.properties).filter((k) => !k.startsWith('$')).map(units).join(' | ')) }\n\
         exports.exportEvents = (events) => { console.log('export ' + events.map((e) => e.uuid + '=' + units(e.properties.s)).join(' ')) }",
    );
    let plugins = plugin_entry("h", &p, 1, "");
    let cfg = config(dir.path(), LONE_SURROGATES, "memory = true", "", &plugins);
    let (summary, logs) = run_until(&cfg, |_| false);
    assert_eq!((summary.events_in, summary.events_out, summary.dead_lettered, summary.work_given_up), (3, 3, 0, 0));
    let mut seen: Vec<String> = messages(&logs).into_iter().filter(|m| m.starts_with("on ") || m.starts_with("export ")).collect();
    seen.sort();
    // The code units, from the escapes as written (0xd83d = 55357, 0xdc00 = 56320).
    assert_eq!(
        seen,
        ["export u1=97 55357 u2=111 107 u3=55357 33", "on u1: 97 55357 / 115", "on u2: 111 107 / 115 | 56320 107", "on u3: 55357 33 / 115",],
        "{seen:?}"
    );
    // The events go out with the escapes as they came (what Node's JSON.stringify writes too).
    let out = std::fs::read_to_string(&cfg.output.events).unwrap();
    for escaped in [r#""s":"a\ud83d""#, r#""\udc00k":1"#, r#""s":"\ud83d!""#] {
        assert!(out.contains(escaped), "{escaped} in {out}");
    }
}

#[test]
fn a_failed_export_of_events_with_lone_surrogates_is_one_dead_letter_per_event() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_plugin(dir.path(), "exporter", "exports.exportEvents = (events) => { throw new Error('no to ' + events.length) }");
    let plugins = plugin_entry("w", &p, 1, "");
    let cfg = config(dir.path(), LONE_SURROGATES, "memory = true", "", &plugins);
    let (summary, _) = run_until(&cfg, |_| false);
    assert_eq!((summary.events_out, summary.work_given_up, summary.dead_lettered), (3, 3, 0));
    let dead = read_json_lines(&cfg.output.dead_letters);
    let raws: Vec<&str> = dead.iter().map(|d| d["raw"].as_str().unwrap()).collect();
    assert_eq!(raws.len(), 3, "{raws:?}");
    for (raw, (uuid, escaped)) in raws.iter().zip([("u1", r#""a\ud83d""#), ("u2", r#""\udc00k""#), ("u3", r#""\ud83d!""#)]) {
        assert!(raw.contains(&format!("\"uuid\":\"{uuid}\"")) && raw.contains(escaped), "{raw}");
    }
}

/// Captured events an earlier run journaled and never saw written (a crash) go in when the
/// pipeline next starts: through the chain like any capture, counted as captured, and removed
/// from the journal once written. An entry that cannot be read is a dead letter, not dropped.
#[test]
fn captures_an_earlier_run_left_unwritten_go_in_at_the_next_start() {
    use operators::plugin::worker::CAPTURE_QUEUE;
    use state::StateStore as _;
    let dir = tempfile::tempdir().unwrap();
    let p = write_plugin(dir.path(), "mark", "exports.processEvent = (e) => { e.properties.marked = true; return e }");
    {
        let store = state::RocksStore::open(dir.path().join("state")).unwrap();
        store
            .queue_put(
                CAPTURE_QUEUE,
                0,
                b"1\n{\"uuid\":\"c1\",\"event\":\"left over\",\"team_id\":1,\"distinct_id\":\"d\",\"properties\":{}}",
            )
            .unwrap();
        store.queue_put(CAPTURE_QUEUE, 0, b"{not an entry").unwrap();
        // An entry claiming 0 hops still counts as a capture, not as input.
        store
            .queue_put(CAPTURE_QUEUE, 0, b"0\n{\"uuid\":\"c2\",\"event\":\"zero\",\"team_id\":1,\"distinct_id\":\"d\",\"properties\":{}}")
            .unwrap();
    }
    let event = "{\"uuid\":\"u1\",\"event\":\"e\",\"team_id\":1,\"properties\":{}}\n";
    let cfg = config(dir.path(), event, "path = \"state\"", "", &plugin_entry("m", &p, 1, "teams = [1]"));
    let (summary, _) = run_until(&cfg, |_| false);
    let out = read_json_lines(&cfg.output.events);
    let mut names: Vec<(&str, bool)> = out.iter().map(|e| (e["event"].as_str().unwrap(), e["properties"]["marked"] == true)).collect();
    names.sort();
    assert_eq!(names, [("e", true), ("left over", true), ("zero", true)], "{out:?}");
    let dead = read_json_lines(&cfg.output.dead_letters);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["raw"], "{not an entry");
    // Every event accounted for: in + captured = out + dropped + dead letters.
    assert_eq!((summary.events_in, summary.captured), (1, 3));
    assert_eq!(summary.events_in + summary.captured, summary.events_out + summary.dropped + summary.dead_lettered);
    let store = state::RocksStore::open(dir.path().join("state")).unwrap();
    assert_eq!(store.queue_len(CAPTURE_QUEUE).unwrap(), 0, "written: removed from the journal");
}
