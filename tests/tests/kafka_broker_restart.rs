//! The broker goes away in the middle of a run and comes back: the pipeline recovers by itself
//! (no restart of pluginflow) and loses nothing.
//!
//! tansu's only storage engine in this build without external services is `memory://`, so
//! restarting the broker process would wipe every topic and offset. Instead the pipeline talks to
//! the broker through tansu's Kafka proxy, which is killed (SIGKILL) and started again on the same
//! port: for the clients that is a broker crash and restart (connections reset, connects refused,
//! in-flight requests lost), while the data survives as on a broker with disks.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use pluginflow_tests::broker::{Broker, Isolation, Proxy, Topics, consume_all, kafka_config, produce_lines, spawn_pipeline, uuids, wait_exit};
use pluginflow_tests::gen_events;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

const EVENTS: usize = 30_000;
const OUTAGE: Duration = Duration::from_secs(6);

fn written(bootstrap: &str, topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    (0..3).map(|p| c.fetch_watermarks(topic, p, Duration::from_secs(5)).map(|(_, hi)| hi).unwrap_or(0)).sum()
}

#[test]
fn pipeline_rides_out_a_broker_outage() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    gen_events(&input, EVENTS, 23, &[]);
    let broker = Broker::start();
    let topics = Topics::named("outage");
    topics.create(&broker.bootstrap(), 4);
    produce_lines(&broker.bootstrap(), &topics.input, 4, &input);

    let mut proxy = Proxy::start(&broker.bootstrap());
    // Idle stop longer than the outage: the run must end because the input is done, not
    // because the broker was away.
    let config = kafka_config(dir.path(), &proxy.bootstrap(), "outage", &topics, "stop_after_idle_ms = 10000", "");
    let log = dir.path().join("pluginflow.log");
    let mut child = spawn_pipeline(&config, 2, &log);
    let deadline = Instant::now() + Duration::from_secs(60);
    let at_outage = loop {
        let now = written(&broker.bootstrap(), &topics.output);
        if now >= EVENTS as i64 / 4 {
            break now;
        }
        assert!(Instant::now() < deadline, "no progress before the outage ({now})");
        std::thread::sleep(Duration::from_millis(50));
    };
    proxy.stop();
    std::thread::sleep(OUTAGE);
    let during = written(&broker.bootstrap(), &topics.output);
    assert!(child.try_wait().unwrap().is_none(), "pluginflow gave up during the outage: {}", std::fs::read_to_string(&log).unwrap());
    proxy.resume();
    let status = wait_exit(&mut child, Duration::from_secs(120), &log);
    assert!(status.success(), "pluginflow failed after the outage: {}", std::fs::read_to_string(&log).unwrap());

    let out = consume_all(&broker.bootstrap(), &topics.output, Isolation::ReadUncommitted);
    let seen: HashSet<String> = uuids(out.iter().map(|r| r.value.as_str())).into_iter().collect();
    let want: Vec<String> = uuids(std::fs::read_to_string(&input).unwrap().lines());
    let missing = want.iter().filter(|u| !seen.contains(*u)).count();
    println!(
        "broker outage: {EVENTS} in, {} out ({} distinct, {missing} missing); outage began at {at_outage} outputs, {during} when it ended; {:.1} s",
        out.len(),
        seen.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(at_outage < EVENTS as i64, "the outage came before the end of the run");
    assert_eq!(missing, 0, "events lost across the outage; log:\n{}", std::fs::read_to_string(&log).unwrap());
}
