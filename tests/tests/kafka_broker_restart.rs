//! The broker crashes in the middle of a run and comes back: the Apache Kafka process is killed
//! (SIGKILL) and started again on the same port and log folder. The pipeline recovers by itself
//! (no restart of pluginflow), says in its log and on `/healthz` that the broker was away, and
//! loses nothing; `/metrics` shows the consumer lag per partition.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use pluginflow_tests::broker::{
    Broker, Isolation, Topics, consume_all, http_addr, http_get, kafka_config, pacing_plugin, produce_lines, spawn_pipeline, uuids,
    wait_exit, written,
};
use pluginflow_tests::gen_events;

const EVENTS: usize = 30_000;
const OUTAGE: Duration = Duration::from_secs(6);

#[test]
fn pipeline_rides_out_a_broker_outage() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    gen_events(&input, EVENTS, 23, &[]);
    let mut broker = Broker::start();
    let topics = Topics::named("outage");
    topics.create(&broker.bootstrap(), 4);
    produce_lines(&broker.bootstrap(), &topics.input, 4, &input);

    // Idle stop longer than the outage: the run must end because the input is done, not
    // because the broker was away.
    // Paced (half a millisecond per event) so that the run lasts long enough to look at it.
    let http = format!("{}\n[http]\nlisten = \"127.0.0.1:0\"\nbroker_unreachable_ms = 1000\n", pacing_plugin(dir.path()));
    let config = kafka_config(dir.path(), &broker.bootstrap(), "outage", &topics, "stop_after_idle_ms = 10000", &http);
    let log = dir.path().join("pluginflow.log");
    let mut child = spawn_pipeline(&config, 2, &log);
    let addr = http_addr(&log);
    // A quarter of the input written, and the lag of every input partition on /metrics.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (at_outage, lag_lines) = loop {
        let now = written(&broker.bootstrap(), &topics.output);
        let (code, metrics) = http_get(&addr, "/metrics");
        assert_eq!(code, 200);
        let lag_lines = metrics.lines().filter(|l| l.starts_with("pluginflow_kafka_consumer_lag{")).count();
        if now >= EVENTS as i64 / 4 && lag_lines == 4 {
            break (now, lag_lines);
        }
        assert!(now < EVENTS as i64, "the run ended before /metrics showed the lag of 4 partitions:\n{metrics}");
        assert!(Instant::now() < deadline, "no progress before the outage ({now}, {lag_lines} lag lines)");
        std::thread::sleep(Duration::from_millis(50));
    };
    let outage = Instant::now();
    broker.kill();
    // /healthz turns unhealthy once the brokers have been away for broker_unreachable_ms.
    let unhealthy = loop {
        let (code, body) = http_get(&addr, "/healthz");
        if code == 503 {
            break body;
        }
        assert!(outage.elapsed() < OUTAGE, "/healthz still says {code} {body:?} after {OUTAGE:?} without a broker");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Which comes first depends on where the worker is: polling (its client reports the broker
    // down) or blocked in a commit waiting for the broker (its client goes silent).
    assert!(unhealthy.contains("no Kafka broker reachable") || unhealthy.contains("no statistics from its Kafka client"), "{unhealthy}");
    // The rest of the outage itself (not a synchronisation): the broker stays away this long.
    std::thread::sleep(OUTAGE.saturating_sub(outage.elapsed()));
    assert!(child.try_wait().unwrap().is_none(), "pluginflow gave up during the outage: {}", std::fs::read_to_string(&log).unwrap());
    broker.resume();
    let away = outage.elapsed();
    let healthy_again = loop {
        match http_get(&addr, "/healthz") {
            (200, _) => break outage.elapsed(),
            (_, body) => {
                assert!(outage.elapsed() < Duration::from_secs(60), "/healthz still unhealthy a minute after the broker came back: {body}")
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let status = wait_exit(&mut child, Duration::from_secs(120), &log);
    assert!(status.success(), "pluginflow failed after the outage: {}", std::fs::read_to_string(&log).unwrap());

    let out = consume_all(&broker.bootstrap(), &topics.output, Isolation::ReadUncommitted);
    let seen: HashSet<String> = uuids(out.iter().map(|r| r.value.as_str())).into_iter().collect();
    let want: Vec<String> = uuids(std::fs::read_to_string(&input).unwrap().lines());
    let missing = want.iter().filter(|u| !seen.contains(*u)).count();
    let text = std::fs::read_to_string(&log).unwrap();
    let warned = text.lines().filter(|l| l.contains("kafka consumer error")).count();
    println!(
        "broker restart: {EVENTS} in, {} out ({} distinct, {missing} missing); killed at {at_outage} outputs, back after {:.1} s, \
         healthy again after {:.1} s; /healthz said {:?}; {lag_lines} partitions with a lag before; {warned} consumer-error warnings \
         in the pipeline's log; {:.1} s",
        out.len(),
        seen.len(),
        away.as_secs_f64(),
        healthy_again.as_secs_f64(),
        unhealthy.trim(),
        started.elapsed().as_secs_f64()
    );
    assert!(at_outage < EVENTS as i64, "the outage came before the end of the run");
    assert!(warned > 0, "the pipeline's log does not show the broker was away:\n{text}");
    assert_eq!(missing, 0, "events lost across the outage; log:\n{text}");
}
