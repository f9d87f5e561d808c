//! Two pipeline processes in one consumer group split the input's partitions and together write
//! every event: once in exactly-once mode (read_committed), at least once otherwise, with repeats
//! only around rebalances (counted and printed). The second process joins while the first is
//! mid-run, so every run goes through a rebalance under load. A pacing plugin (half a
//! millisecond per event) keeps the first process busy long enough for that: unpaced, it read
//! all 20,000 events before tansu had assigned the second one anything. Exactly-once output is
//! counted by the test's own read_committed reader (`txnlog`), as tansu does not filter aborted
//! transactions.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use pluginflow_tests::broker::{Broker, Isolation, Topics, consume_all, kafka_config, produce_lines, spawn_pipeline, uuids, wait_exit};
use pluginflow_tests::{gen_events, plugin_entry, txnlog};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

const EVENTS: usize = 20_000;
const PARTITIONS: i32 = 6;

/// Waits until `topic` holds at least `n` messages (committed or not).
fn wait_for_output(bootstrap: &str, topic: &str, n: i64) {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (0..3).map(|p| c.fetch_watermarks(topic, p, Duration::from_secs(5)).map(|(_, hi)| hi).unwrap_or(0)).sum::<i64>() < n {
        assert!(Instant::now() < deadline, "the first process wrote nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A plugin that spends about half a millisecond per event (busy: plugins have no timers).
fn pacing_plugin(dir: &Path) -> String {
    let pace = dir.join("pace");
    std::fs::create_dir_all(&pace).unwrap();
    std::fs::write(pace.join("plugin.json"), r#"{"name": "pace", "config": []}"#).unwrap();
    std::fs::write(
        pace.join("index.js"),
        "function processEvent(event) { const until = Date.now() + 0.5; while (Date.now() < until) {} return event }
module.exports = { processEvent }
",
    )
    .unwrap();
    plugin_entry("pace", &pace, 1, "")
}

/// `events in:` from a run's summary.
fn events_in(log: &Path) -> u64 {
    let text = std::fs::read_to_string(log).unwrap();
    let line = text.lines().rev().find(|l| l.trim_start().starts_with("events in:")).unwrap_or_else(|| panic!("no summary in {text}"));
    line.split(':').nth(1).unwrap().trim().parse().unwrap()
}

fn two_processes(delivery: &str, isolation: Isolation) -> (usize, usize, [u64; 2]) {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    gen_events(&input, EVENTS, 29, &[]);
    let broker = Broker::start();
    let topics = Topics::named(&format!("group-{delivery}"));
    topics.create(&broker.bootstrap(), PARTITIONS);
    produce_lines(&broker.bootstrap(), &topics.input, PARTITIONS, &input);

    let group = format!("group-{delivery}");
    let mut runs = Vec::new();
    for p in 0..2 {
        if p == 1 {
            // The second process joins while the first is mid-run: a rebalance under load.
            wait_for_output(&broker.bootstrap(), &topics.output, 2000);
        }
        let sub = dir.path().join(format!("p{p}"));
        std::fs::create_dir_all(&sub).unwrap();
        // Independent processes need their own transactional ids.
        let extra = format!("stop_after_idle_ms = 5000\ndelivery = {delivery:?}\ntransactional_id_prefix = \"{group}-p{p}\"");
        let config = kafka_config(&sub, &broker.bootstrap(), &group, &topics, &extra, &pacing_plugin(dir.path()));
        let log = sub.join("pluginflow.log");
        runs.push((spawn_pipeline(&config, 1, &log), log));
    }
    for (child, log) in &mut runs {
        let status = wait_exit(child, Duration::from_secs(120), log);
        assert!(status.success(), "a process failed: {}", std::fs::read_to_string(&*log).unwrap());
    }
    let read = [events_in(&runs[0].1), events_in(&runs[1].1)];

    let values: Vec<String> = match isolation {
        Isolation::ReadCommitted => txnlog::read_committed(&broker.bootstrap(), &topics.output).visible.iter().map(|r| r.value_text()).collect(),
        _ => consume_all(&broker.bootstrap(), &topics.output, isolation).into_iter().map(|r| r.value).collect(),
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    for u in uuids(values.iter().map(String::as_str)) {
        *seen.entry(u).or_default() += 1;
    }
    let want: Vec<String> = uuids(std::fs::read_to_string(&input).unwrap().lines());
    let missing = want.iter().filter(|u| !seen.contains_key(*u)).count();
    let repeated: usize = seen.values().map(|n| n - 1).sum();
    println!(
        "two processes ({delivery}): {EVENTS} in, read {read:?}, {} out, {missing} missing, {repeated} repeats; {:.1} s",
        values.len(),
        started.elapsed().as_secs_f64()
    );
    (missing, repeated, read)
}

#[test]
fn two_processes_split_the_partitions_at_least_once() {
    let (missing, _, read) = two_processes("at-least-once", Isolation::ReadUncommitted);
    assert_eq!(missing, 0);
    assert!(read.iter().all(|&n| n > 0), "both processes read a share: {read:?}");
}

#[test]
fn two_processes_split_the_partitions_exactly_once() {
    let (missing, repeated, read) = two_processes("exactly-once", Isolation::ReadCommitted);
    assert_eq!((missing, repeated), (0, 0));
    assert!(read.iter().all(|&n| n > 0), "both processes read a share: {read:?}");
}
