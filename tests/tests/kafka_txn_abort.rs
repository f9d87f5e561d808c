//! Exactly-once recovery from an aborted transaction, against librdkafka's mock cluster (it lives
//! in this test process and listens on loopback TCP, so the `pluginflow` process connects to it
//! like to any broker). The first transactional offset commits are refused with the errors a
//! consumer group rebalance gives (ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, REBALANCE_IN_PROGRESS):
//! abortable, not fatal. The pipeline must abort each, rewind, and go on to a clean exit with
//! every input event in the output.
//!
//! The mock stores no offsets committed in transactions, writes no transaction markers and does
//! not filter aborted records: a rewind reads from the beginning, and the output is counted
//! read-uncommitted, for missing events only (duplicates are expected here).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use pluginflow_tests::broker::{Isolation, Topics, consume_all, kafka_config, produce_lines, spawn_pipeline, uuids, wait_exit};
use pluginflow_tests::gen_events;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

const EVENTS: usize = 3000;
const PARTITIONS: i32 = 4;

#[test]
fn exactly_once_rewinds_an_aborted_transaction_in_process() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    gen_events(&input, EVENTS, 23, &[]);
    let want: Vec<String> = uuids(std::fs::read_to_string(&input).unwrap().lines());
    assert_eq!(want.len(), EVENTS);

    let mock = MockCluster::new(1).expect("mock cluster");
    let bootstrap = mock.bootstrap_servers();
    let topics = Topics::named("abort");
    mock.create_topic(&topics.input, PARTITIONS, 1).unwrap();
    mock.create_topic(&topics.output, 3, 1).unwrap();
    mock.create_topic(&topics.dead, 3, 1).unwrap();
    assert_eq!(produce_lines(&bootstrap, &topics.input, PARTITIONS, &input), EVENTS);

    // The next three TxnOffsetCommit requests, whichever worker sends them, fail.
    use RDKafkaRespErr::*;
    let refused = [RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION, RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID, RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS];
    mock.request_errors(RDKafkaApiKey::TxnOffsetCommit, &refused);

    let config = kafka_config(dir.path(), &bootstrap, "abort", &topics, "stop_after_idle_ms = 3000\ndelivery = \"exactly-once\"", "");
    let log = dir.path().join("pluginflow.log");
    let mut child = spawn_pipeline(&config, 2, &log);
    let status = wait_exit(&mut child, Duration::from_secs(120), &log);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "pluginflow failed ({status}): {text}");
    let rewound: Vec<&str> = text.lines().filter(|l| l.contains("transaction aborted: rewound")).collect();
    for line in &rewound {
        println!("{line}");
    }
    let rewinds = rewound.len();
    assert_eq!(rewinds, refused.len(), "one rewind per refused offset commit: {text}");
    assert!(!text.contains("delivery failed"), "the records an abort purges are not delivery failures: {text}");

    let out = consume_all(&bootstrap, &topics.output, Isolation::ReadUncommitted);
    let seen: HashSet<String> = uuids(out.iter().map(|r| r.value.as_str())).into_iter().collect();
    let missing = want.iter().filter(|u| !seen.contains(*u)).count();
    println!(
        "aborted transactions: {EVENTS} in, {} written (read-uncommitted), {} distinct, {missing} missing, {rewinds} rewinds; {:.1} s",
        out.len(),
        seen.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(missing, 0, "events lost after a rewind");
}
