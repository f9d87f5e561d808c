//! Crash test: `kill -9` the pipeline several times during a run of 100k events, restart it each
//! time, then read the output topic. At-least-once: every input uuid is there. Exactly-once
//! (read_committed): every uuid exactly once. Counts are printed.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use pluginflow_tests::broker::{Broker, Isolation, Topics, consume_all, kafka_config, produce_lines, spawn_pipeline, uuids, wait_exit};
use pluginflow_tests::gen_events;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

const EVENTS: usize = 100_000;
const PARTITIONS: i32 = 4;
const KILLS: usize = 3;

/// Messages on `topic` so far, read-uncommitted high watermarks summed.
fn written(bootstrap: &str, topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    (0..3).map(|p| c.fetch_watermarks(topic, p, Duration::from_secs(5)).map(|(_, hi)| hi).unwrap_or(0)).sum()
}

/// Runs the pipeline, kills it (SIGKILL) each time the output has grown by a share of the input,
/// restarts it, then lets the last run finish. Returns the output values and the kill points.
fn run_with_kills(dir: &Path, broker: &Broker, topics: &Topics, delivery: &str) -> Vec<i64> {
    let config = kafka_config(dir, &broker.bootstrap(), &format!("crash-{delivery}"), topics, &format!("stop_after_idle_ms = 4000\ndelivery = {delivery:?}"), "");
    let log = dir.join(format!("pluginflow-{delivery}.log"));
    let mut kill_points = Vec::new();
    for kill in 0..KILLS {
        let target = (EVENTS as i64 * (kill as i64 + 1)) / (KILLS as i64 + 2);
        let mut child = spawn_pipeline(&config, 2, &log);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let now = written(&broker.bootstrap(), &topics.output);
            if now >= target {
                kill_points.push(now);
                break;
            }
            assert!(child.try_wait().unwrap().is_none(), "pluginflow exited before it was killed");
            assert!(Instant::now() < deadline, "no progress to {target} outputs (at {now})");
            std::thread::sleep(Duration::from_millis(50));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let mut child = spawn_pipeline(&config, 2, &log);
    let status = wait_exit(&mut child, Duration::from_secs(180), &log);
    assert!(status.success(), "the last run failed: {}", std::fs::read_to_string(&log).unwrap());
    kill_points
}

fn crash_test(delivery: &str, isolation: Isolation) -> (usize, usize, usize) {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    gen_events(&input, EVENTS, 17, &[]);
    let want: Vec<String> = uuids(std::fs::read_to_string(&input).unwrap().lines());
    assert_eq!(want.len(), EVENTS);
    let broker = Broker::start();
    let topics = Topics::named(&format!("crash-{delivery}"));
    topics.create(&broker.bootstrap(), PARTITIONS);
    produce_lines(&broker.bootstrap(), &topics.input, PARTITIONS, &input);
    let kills = run_with_kills(dir.path(), &broker, &topics, delivery);

    let out = consume_all(&broker.bootstrap(), &topics.output, isolation);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for u in uuids(out.iter().map(|r| r.value.as_str())) {
        *seen.entry(u).or_default() += 1;
    }
    let raw = if isolation == Isolation::ReadCommitted {
        // What a read_uncommitted reader sees: aborted and unfinished transactions included.
        format!(", {} when read uncommitted", consume_all(&broker.bootstrap(), &topics.output, Isolation::ReadUncommitted).len())
    } else {
        String::new()
    };
    let missing = want.iter().filter(|u| !seen.contains_key(*u)).count();
    let repeated: usize = seen.values().map(|n| n - 1).sum();
    println!(
        "crash test ({delivery}, {isolation:?}): {EVENTS} in, {} out{raw}, {} distinct, {missing} missing, {repeated} repeats; killed at outputs {kills:?}; {:.1} s",
        out.len(),
        seen.len(),
        started.elapsed().as_secs_f64()
    );
    (missing, repeated, seen.len())
}

#[test]
fn at_least_once_survives_kill_9() {
    let (missing, _, distinct) = crash_test("at-least-once", Isolation::ReadUncommitted);
    assert_eq!(missing, 0, "at-least-once lost events");
    assert_eq!(distinct, EVENTS);
}

// Not verifiable on tansu 0.6, tracked on issue 6: in 1 of 3 full runs a kill landed inside an
// open transaction and read_committed readers saw 915 duplicates. A probe against the same
// broker showed why: tansu 0.6 returns the records of an explicitly *aborted* transaction (and
// of a fenced zombie's open one) to read_committed consumers. The guarantee is therefore not
// claimed until this test runs on librdkafka's MockCluster, which filters aborted records. Run
// it by hand with `cargo test --release -p pluginflow-tests --test kafka_crash -- --ignored`.
#[test]
#[ignore = "tansu 0.6 shows aborted transactions to read_committed readers (issue 6)"]
fn exactly_once_survives_kill_9_without_duplicates() {
    let (missing, repeated, distinct) = crash_test("exactly-once", Isolation::ReadCommitted);
    assert_eq!(missing, 0, "exactly-once lost events");
    assert_eq!(repeated, 0, "read_committed saw duplicates");
    assert_eq!(distinct, EVENTS);
}
