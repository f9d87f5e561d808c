//! At-least-once, a committed input offset promises that the outputs of every record before it
//! are in the output topic: the pipeline commits without waiting for the records still in
//! flight, so it must know which epochs are fully acknowledged. Here the producer lingers a
//! second before sending (`linger.ms`), far longer than the commit interval, so a pipeline that
//! committed an epoch once the graph was done with it (not once its outputs were acknowledged)
//! would commit offsets whose outputs are not written yet. While the pipeline runs, the test
//! reads the group's committed offsets, then the output and dead-letter topics, and checks that
//! every input record below a committed offset has its output there: its event, or (for the
//! lines that are not events) its dead letter.
//!
//! Some events make a plugin capture another (`posthog.capture` in `processEvent` or `onEvent`;
//! its `exportEvents` captures one per batch, listing some of the batch's events). A committed
//! offset promises the capture too: a crash right after the commit would otherwise lose it for
//! good (the event that made it is not read again). Captured events take a few milliseconds
//! each, so a pipeline that sent them back into the graph in a later epoch than the event that
//! made them (as it once did) would commit that event's offset well before its capture is
//! written.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use pluginflow_tests::broker::{
    Broker, Isolation, Topics, batch_captures, captures, capturing_plugin, committed_offsets, consume_all, kafka_config, log_tail,
    produce_lines, record_of, spawn_pipeline, uuids,
};
use pluginflow_tests::gen_events;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const EVENTS: usize = 8_000;
const PARTITIONS: i32 = 4;

#[test]
fn committed_offsets_never_run_ahead_of_acknowledged_outputs() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    gen_events(&input, EVENTS, 31, &["--bad-rate", "0.03", "--bad-kinds", "truncated,non_object,missing_event"]);
    let broker = Broker::start();
    let topics = Topics::named("order");
    topics.create(&broker.bootstrap(), PARTITIONS);
    assert_eq!(produce_lines(&broker.bootstrap(), &topics.input, PARTITIONS, &input), EVENTS);
    // The uuid of every input record (none for most lines that are not events), by (partition,
    // offset).
    let inputs: BTreeMap<(i32, i64), Option<String>> = consume_all(&broker.bootstrap(), &topics.input, Isolation::ReadUncommitted)
        .into_iter()
        .map(|r| ((r.partition, r.offset), uuids([r.value.as_str()]).pop()))
        .collect();
    assert_eq!(inputs.len(), EVENTS);

    // Paced (half a millisecond per event) so that the run lasts a few seconds of commits.
    let kafka = "stop_after_idle_ms = 3000\n[kafka.producer]\n\"linger.ms\" = \"1000\"\n";
    let config = kafka_config(dir.path(), &broker.bootstrap(), "order", &topics, kafka, &capturing_plugin(dir.path(), 0.5, 4.0, false));

    let log = dir.path().join("pluginflow.log");
    let mut child = spawn_pipeline(&config, 2, &log);
    let mut output = Output::open(&broker.bootstrap(), &topics.output);
    let mut dead = Output::open(&broker.bootstrap(), &topics.dead);

    // Samples while the run goes on: committed offsets first, then the outputs up to the end
    // of each partition as it is right after (they only grow), read by one consumer that goes
    // on where it stopped, so that a sample takes milliseconds, not the second of linger it
    // must catch.
    let (mut samples, mut checked, mut captures_checked, mut batch_checked) = (0, 0usize, 0usize, 0usize);
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the run did not end; log tail:\n{}", log_tail(&log, 30));
        let committed = committed_offsets(&broker.bootstrap(), "order", &topics.input, PARTITIONS);
        if committed.is_empty() {
            continue;
        }
        output.read_to_end();
        dead.read_to_end();
        let below: Vec<(i64, Option<&String>)> =
            inputs.iter().filter(|((p, o), _)| committed.get(p).is_some_and(|c| o < c)).map(|((_, o), uuid)| (*o, uuid.as_ref())).collect();
        let missing = unaccounted(&below, &output.uuids, &dead.positions);
        assert_eq!(
            missing,
            0,
            "committed offsets {committed:?} cover {} input records, {missing} of them without their output ({} events, {} dead letters written)",
            below.len(),
            output.uuids.len(),
            dead.positions.values().sum::<usize>()
        );
        // (A line with a uuid that is no event is a dead letter and captures nothing.)
        let capturing: Vec<&String> = below.iter().filter_map(|(_, u)| *u).filter(|u| captures(u) && output.uuids.contains(*u)).collect();
        let uncaptured = capturing.iter().filter(|u| !output.captured.contains(u)).count();
        assert_eq!(uncaptured, 0, "committed offsets {committed:?} cover {uncaptured} events whose captures are not written");
        // What exportEvents captured for a batch goes with its earliest event's commit.
        let exported: Vec<&String> =
            below.iter().filter_map(|(_, u)| *u).filter(|u| batch_captures(u) && output.uuids.contains(*u)).collect();
        let unlisted = exported.iter().filter(|u| !output.batch_listed.contains(**u)).count();
        assert_eq!(unlisted, 0, "committed offsets {committed:?} cover {unlisted} exported events whose batch capture is not written");
        if !below.is_empty() && below.len() < EVENTS {
            samples += 1;
            checked += below.len();
            captures_checked += capturing.len();
            batch_checked += exported.len();
        }
    };
    assert!(status.success(), "pluginflow failed; log tail:\n{}", log_tail(&log, 40));
    // The check must have seen the run in the middle, several times, or it proved nothing.
    println!(
        "{samples} samples taken mid-run, {checked} committed records checked in all, {captures_checked} of them capturing \
         events, {batch_checked} exported in a capturing batch"
    );
    assert!(
        samples >= 3 && captures_checked > 0 && batch_checked > 0,
        "only {samples} samples with commits mid-run, {captures_checked} capturing events and {batch_checked} batch-captured in them"
    );

    let end = committed_offsets(&broker.bootstrap(), "order", &topics.input, PARTITIONS);
    let ends: BTreeMap<i32, i64> = inputs.keys().fold(BTreeMap::new(), |mut m, &(p, o)| {
        m.insert(p, m.get(&p).copied().unwrap_or(0).max(o + 1));
        m
    });
    assert_eq!(end, ends, "at the end every partition is committed at its end");
    output.read_to_end();
    dead.read_to_end();
    let all: Vec<(i64, Option<&String>)> = inputs.iter().map(|((_, o), uuid)| (*o, uuid.as_ref())).collect();
    assert_eq!(unaccounted(&all, &output.uuids, &dead.positions), 0, "every input has its output");
    let letters: usize = dead.positions.values().sum();
    let capturers: HashSet<&String> = inputs.values().flatten().filter(|u| captures(u) && output.uuids.contains(*u)).collect();
    assert!(capturers.len() > EVENTS / 20, "{} of the events capture", capturers.len());
    let captured: HashSet<&String> = output.captured.iter().collect();
    assert_eq!(captured, capturers, "each capturing event's capture is written, and no other");
    let exported: HashSet<&String> = inputs.values().flatten().filter(|u| batch_captures(u) && output.uuids.contains(*u)).collect();
    let listed: HashSet<&String> = output.batch_listed.iter().collect();
    assert_eq!(listed, exported, "each exported event is listed by its batch's capture, and no other");
    // At-least-once may repeat what a rebalance at the start hands from one worker to the
    // other: dead letters and captures (a new uuid each time) can then be there twice.
    let written = output.uuids.len() - output.captured.len() - output.batch_events;
    let repeats = (written + letters).saturating_sub(EVENTS) + (output.captured.len() - capturers.len());
    assert!(letters > 0 && written + letters >= EVENTS, "{written} input events + {letters} dead letters");
    println!("{written} input events, {letters} dead letters, {} captured events; {repeats} repeated", output.captured.len());
    println!("commit order test took {:.1} s", started.elapsed().as_secs_f64());
}

/// How many of `inputs` (offset, uuid) have neither their event among `events` nor a dead
/// letter at their offset. Dead letters name the input offset, not the partition, so they are
/// matched by offset as a multiset: an offset read from two partitions needs two letters.
fn unaccounted(inputs: &[(i64, Option<&String>)], events: &HashSet<String>, letters: &HashMap<i64, usize>) -> usize {
    let mut needed: HashMap<i64, usize> = HashMap::new();
    for (offset, uuid) in inputs {
        if !uuid.is_some_and(|u| events.contains(u)) {
            *needed.entry(*offset).or_default() += 1;
        }
    }
    needed.iter().map(|(offset, n)| n.saturating_sub(letters.get(offset).copied().unwrap_or(0))).sum()
}

/// An output topic read as it grows: one consumer over every partition.
struct Output {
    consumer: BaseConsumer,
    topic: String,
    partitions: Vec<i32>,
    /// Next offset to read, by partition.
    next: BTreeMap<i32, i64>,
    /// The uuids of the events read.
    uuids: HashSet<String>,
    /// Of captured events read: the uuid of the event that captured each (`of`).
    captured: Vec<String>,
    /// The uuids listed by the batch captures read (`batch_of`), and how many those were.
    batch_listed: HashSet<String>,
    batch_events: usize,
    /// Dead letters read, by the input offset in their `position` header.
    positions: HashMap<i64, usize>,
}

impl Output {
    fn open(bootstrap: &str, topic: &str) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "pluginflow-test-order-reader")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .expect("consumer");
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
        let partitions: Vec<i32> = metadata.topics()[0].partitions().iter().map(|p| p.id()).collect();
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning).expect("offset");
        }
        consumer.assign(&tpl).expect("assign");
        let next = partitions.iter().map(|&p| (p, 0)).collect();
        Self {
            consumer,
            topic: topic.to_string(),
            partitions,
            next,
            uuids: HashSet::new(),
            captured: Vec::new(),
            batch_listed: HashSet::new(),
            batch_events: 0,
            positions: HashMap::new(),
        }
    }

    /// Reads every partition up to its high watermark as it is now (records below it are
    /// acknowledged).
    fn read_to_end(&mut self) {
        let ends: BTreeMap<i32, i64> = self
            .partitions
            .iter()
            .map(|&p| (p, self.consumer.fetch_watermarks(&self.topic, p, Duration::from_secs(10)).expect("watermarks").1))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        while ends.iter().any(|(p, end)| self.next[p] < *end) {
            assert!(Instant::now() < deadline, "reading {} did not reach {ends:?}", self.topic);
            match self.consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Err(e)) => panic!("consume error: {e}"),
                Some(Ok(m)) => {
                    let r = record_of(&m);
                    self.next.insert(r.partition, r.offset + 1);
                    match r.headers.get("position") {
                        Some(p) => *self.positions.entry(p.parse().expect("a numeric position")).or_default() += 1,
                        None => {
                            self.uuids.extend(uuids([r.value.as_str()]));
                            let event: serde_json::Value = serde_json::from_str(&r.value).expect("an event");
                            if let Some(of) = event["properties"]["of"].as_str() {
                                self.captured.push(of.to_string());
                            }
                            if let Some(list) = event["properties"]["batch_of"].as_str() {
                                self.batch_listed.extend(list.split(',').map(str::to_string));
                                self.batch_events += 1;
                            }
                        }
                    }
                }
            }
        }
    }
}
