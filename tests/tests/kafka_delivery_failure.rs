//! At-least-once, an output the broker refuses for good (its record batches are larger than the
//! output topic's `max.message.bytes`): librdkafka reports the delivery failed, and the run must
//! stop with an error that says so, in bounded time (not wait for the refused epoch to be
//! acknowledged for ever), and must not commit the offsets of inputs whose outputs are not in the
//! topic.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use pluginflow_tests::broker::{
    Broker, Isolation, Topics, block_on, committed_offsets, consume_all, create_topic, kafka_config, log_tail, produce_lines,
    spawn_pipeline, uuids, wait_exit,
};
use pluginflow_tests::gen_events;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

const EVENTS: usize = 2_000;
const PARTITIONS: i32 = 4;

#[test]
fn a_refused_output_stops_the_run_without_committing_past_it() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    gen_events(&input, EVENTS, 37, &[]);
    let broker = Broker::start();
    let topics = Topics::named("refuse");
    create_topic(&broker.bootstrap(), &topics.input, PARTITIONS);
    create_topic(&broker.bootstrap(), &topics.dead, 1);
    // Events are ~1.3 KB: no record batch of them fits in 1,000 bytes.
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", broker.bootstrap()).create().expect("admin client");
    let small = NewTopic::new(&topics.output, 3, TopicReplication::Fixed(1)).set("max.message.bytes", "1000");
    for r in block_on(admin.create_topics([&small], &AdminOptions::new())).expect("create_topics") {
        r.expect("the output topic is created");
    }
    assert_eq!(produce_lines(&broker.bootstrap(), &topics.input, PARTITIONS, &input), EVENTS);
    let inputs = consume_all(&broker.bootstrap(), &topics.input, Isolation::ReadUncommitted);

    let config = kafka_config(dir.path(), &broker.bootstrap(), "refuse", &topics, "stop_after_idle_ms = 2000", "");
    let log = dir.path().join("pluginflow.log");
    let mut child = spawn_pipeline(&config, 2, &log);
    let status = wait_exit(&mut child, Duration::from_secs(120), &log);
    assert!(!status.success(), "the run must fail when its outputs are refused; log tail:\n{}", log_tail(&log, 30));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("delivery to refuse-out failed") && text.contains("too large"),
        "the error names the refused delivery; log tail:\n{}",
        log_tail(&log, 30)
    );

    // Whatever was committed covers only inputs whose outputs are in the topic.
    let committed = committed_offsets(&broker.bootstrap(), "refuse", &topics.input, PARTITIONS);
    let written: HashSet<String> =
        uuids(consume_all(&broker.bootstrap(), &topics.output, Isolation::ReadUncommitted).iter().map(|r| r.value.as_str()))
            .into_iter()
            .collect();
    let covered: Vec<String> = inputs
        .iter()
        .filter(|r| committed.get(&r.partition).is_some_and(|&c| r.offset < c))
        .flat_map(|r| uuids([r.value.as_str()]))
        .collect();
    let missing = covered.iter().filter(|u| !written.contains(*u)).count();
    println!(
        "refused outputs: {status}; committed {committed:?} ({} inputs), {} outputs written, {missing} committed without output; {:.1} s",
        covered.len(),
        written.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(missing, 0, "offsets committed past inputs whose outputs were refused");
}
