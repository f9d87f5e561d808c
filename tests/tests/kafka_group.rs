//! Pipeline processes in one consumer group split the input's partitions and together write
//! every event: once in exactly-once mode (read_committed), at least once otherwise, with repeats
//! only around rebalances (counted and printed). Under load, the group goes through three
//! rebalances: a second process joins the first mid-run, a third joins the two, and the third
//! leaves again (SIGTERM) while the others go on. A pacing plugin (half a millisecond per event)
//! keeps the processes busy long enough for that. Exactly-once output is counted by librdkafka's
//! `read_committed` consumer and by the test's own verifier (`txnlog`), which must agree.
//!
//! A worker whose partitions run dry (`stop_after_idle_ms`) must not hold the group up: a
//! member joining after it has stopped reading is assigned partitions and the run ends, without
//! loss (and without repeats in exactly-once mode). An exhausted worker that stopped polling
//! blocked that member's rebalance until `max.poll.interval.ms` (5 minutes) while its own
//! process waited for the other worker to finish: seen as a `kafka_roundtrip` run that never
//! ended when one worker joined the group late.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pluginflow_tests::broker::{
    Broker, Isolation, Running, Topics, consume_all, events_in, kafka_config, log_tail, pacing_plugin, produce_lines, spawn_pipeline,
    uuids, wait_exit, wait_for_output, written,
};
use pluginflow_tests::{gen_events, txnlog};

const EVENTS: usize = 30_000;
const PARTITIONS: i32 = 6;

/// Waits until the process logging to `log` has been assigned partitions.
fn wait_for_assignment(log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.lines().any(|l| l.contains("event=Assigned([") && !l.contains("Assigned([])")) {
            return;
        }
        assert!(Instant::now() < deadline, "no partitions assigned to the joining process:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What the pipeline processes of one test's consumer group share.
struct Group<'a> {
    dir: &'a Path,
    bootstrap: String,
    topics: &'a Topics,
    group: String,
    delivery: &'a str,
    plugins: String,
    stop_after_idle_ms: u64,
}

impl Group<'_> {
    /// Starts process `p` of the group, with `workers` workers; returns it and its log.
    fn start(&self, p: usize, workers: usize) -> (Running, std::path::PathBuf) {
        let sub = self.dir.join(format!("p{p}"));
        std::fs::create_dir_all(&sub).unwrap();
        // Independent processes need their own transactional ids.
        let extra = format!(
            "stop_after_idle_ms = {}\ndelivery = {:?}\ntransactional_id_prefix = \"{}-p{p}\"",
            self.stop_after_idle_ms, self.delivery, self.group
        );
        let config = kafka_config(&sub, &self.bootstrap, &self.group, self.topics, &extra, &self.plugins);
        let log = sub.join("pluginflow.log");
        (spawn_pipeline(&config, workers, &log), log)
    }
}

/// Runs the group (see the module doc); returns (missing, repeats, events read by each process).
fn group_run(delivery: &str) -> (usize, usize, [u64; 3]) {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    gen_events(&input, EVENTS, 29, &[]);
    let broker = Broker::start();
    let topics = Topics::named(&format!("group-{delivery}"));
    topics.create(&broker.bootstrap(), PARTITIONS);
    produce_lines(&broker.bootstrap(), &topics.input, PARTITIONS, &input);
    let bs = broker.bootstrap();
    let group = format!("group-{delivery}");
    let plugins = pacing_plugin(dir.path());

    let g = Group { dir: dir.path(), bootstrap: bs.clone(), topics: &topics, group, delivery, plugins, stop_after_idle_ms: 5000 };
    let first = g.start(0, 1);
    // The second joins while the first is mid-run: a rebalance under load.
    wait_for_output(&bs, &topics.output, EVENTS as i64 / 10);
    let second = g.start(1, 1);
    wait_for_assignment(&second.1);
    // The third joins the two, works a while, and leaves.
    let mut third = g.start(2, 1);
    wait_for_assignment(&third.1);
    let joined_at = written(&bs, &topics.output);
    wait_for_output(&bs, &topics.output, joined_at + EVENTS as i64 / 10);
    let left_at = written(&bs, &topics.output);
    assert!(left_at < EVENTS as i64, "the third process left after the input was done: nothing was tested");
    let term = std::process::Command::new("kill").args(["-TERM", &third.0.id().to_string()]).status().unwrap();
    assert!(term.success());
    let status = wait_exit(&mut third.0, Duration::from_secs(60), &third.1);
    assert!(status.success(), "the leaving process failed: {}", std::fs::read_to_string(&third.1).unwrap());

    let mut runs = vec![first, second];
    for (child, log) in &mut runs {
        let status = wait_exit(child, Duration::from_secs(180), log);
        assert!(status.success(), "a process failed: {}", std::fs::read_to_string(&*log).unwrap());
    }
    let read = [events_in(&runs[0].1), events_in(&runs[1].1), events_in(&third.1)];

    let want = uuids(std::fs::read_to_string(&input).unwrap().lines());
    let (missing, repeated) = missing_and_repeats(&outputs(&bs, &topics.output, delivery), &want);
    println!(
        "group ({delivery}): {EVENTS} in, read by process {read:?}, third joined at {joined_at} and left at {left_at} outputs; \
         {missing} missing, {repeated} repeats; {:.1} s",
        started.elapsed().as_secs_f64()
    );
    (missing, repeated, read)
}

/// What `topic` holds: exactly-once, the committed records as librdkafka's `read_committed`
/// consumer and the test's own verifier read them (they must agree); else every record.
fn outputs(bootstrap: &str, topic: &str, delivery: &str) -> Vec<String> {
    if delivery != "exactly-once" {
        return consume_all(bootstrap, topic, Isolation::ReadUncommitted).into_iter().map(|r| r.value).collect();
    }
    let mut verifier: Vec<String> = txnlog::read_committed(bootstrap, topic).visible.iter().map(|r| r.value_text()).collect();
    let mut librdkafka: Vec<String> = consume_all(bootstrap, topic, Isolation::ReadCommitted).into_iter().map(|r| r.value).collect();
    verifier.sort();
    librdkafka.sort();
    assert!(verifier == librdkafka, "librdkafka's read_committed ({}) and the verifier ({}) disagree", librdkafka.len(), verifier.len());
    verifier
}

/// (events of `want` missing from `outputs`, repeated outputs), by uuid.
fn missing_and_repeats(outputs: &[String], want: &[String]) -> (usize, usize) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for u in uuids(outputs.iter().map(String::as_str)) {
        *seen.entry(u).or_default() += 1;
    }
    let missing = want.iter().filter(|u| !seen.contains_key(*u)).count();
    (missing, seen.values().map(|n| n - 1).sum())
}

#[test]
fn a_group_rebalancing_under_load_loses_nothing_at_least_once() {
    let (missing, _, read) = group_run("at-least-once");
    assert_eq!(missing, 0);
    assert!(read.iter().all(|&n| n > 0), "every process read a share: {read:?}");
}

#[test]
fn a_group_rebalancing_under_load_is_exactly_once() {
    let (missing, repeated, read) = group_run("exactly-once");
    assert_eq!((missing, repeated), (0, 0));
    assert!(read.iter().all(|&n| n > 0), "every process read a share: {read:?}");
}

/// The latest assignment of each worker, from the `rebalance worker=W event=Assigned([..])`
/// lines of a pipeline's log.
fn assignments(log: &Path) -> HashMap<usize, Vec<i32>> {
    let mut latest = HashMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        let (Some((_, w)), Some((_, a))) = (line.split_once("worker="), line.split_once("event=Assigned([")) else { continue };
        let worker = w.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap();
        let list = a.split(']').next().unwrap();
        latest.insert(worker, list.split(", ").filter(|p| !p.is_empty()).map(|p| p.parse().unwrap()).collect());
    }
    latest
}

/// Waits (up to a minute) for a line containing `text` in `log`.
fn wait_for_line(log: &Path, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(log).unwrap_or_default().contains(text) {
        assert!(Instant::now() < deadline, "no {text:?} within a minute; log tail:\n{}", pluginflow_tests::broker::log_tail(log, 30));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Produces `lines` one at a time (every 20 ms) to partitions 0 and 1 of `topic`, partition 0
/// only until `dry` is set, until `stop` is set; returns what it sent.
fn trickle(bootstrap: String, topic: String, lines: Vec<Vec<u8>>, dry: Arc<AtomicBool>, stop: Arc<AtomicBool>) -> Vec<Vec<u8>> {
    use rdkafka::ClientConfig;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let producer: ThreadedProducer<DefaultProducerContext> =
        ClientConfig::new().set("bootstrap.servers", &bootstrap).set("enable.idempotence", "true").create().expect("producer");
    let mut lines = lines.into_iter();
    let mut sent = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        for partition in 0..2 {
            if partition == 0 && dry.load(Ordering::Relaxed) {
                continue;
            }
            let line = lines.next().expect("the trickle ran out of events: the run took far longer than it should");
            producer.send(BaseRecord::<(), [u8]>::to(&topic).payload(line.as_slice()).partition(partition)).expect("queued");
            sent.push(line);
        }
        producer.flush(Duration::from_secs(10)).expect("acknowledged");
        std::thread::sleep(Duration::from_millis(20));
    }
    sent
}

/// See the module doc: (missing, repeats).
fn late_join_run(delivery: &str) -> (usize, usize) {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    gen_events(&input, 6000, 31, &[]);
    let lines: Vec<Vec<u8>> = std::fs::read(&input).unwrap().split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect();
    let broker = Broker::start();
    let bs = broker.bootstrap();
    let topics = Topics::named(&format!("dry-{delivery}"));
    topics.create(&bs, 2);
    let group = format!("dry-{delivery}");
    let (dry, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let producer = {
        let (bs, topic, dry, stop) = (bs.clone(), topics.input.clone(), dry.clone(), stop.clone());
        std::thread::spawn(move || trickle(bs, topic, lines, dry, stop))
    };

    let g = Group {
        dir: dir.path(),
        bootstrap: bs.clone(),
        topics: &topics,
        group,
        delivery,
        plugins: String::new(),
        stop_after_idle_ms: 1500,
    };
    let start = |p: usize, workers: usize| g.start(p, workers);
    // Two workers, one partition each (the first assignment may give one worker both: wait for
    // the rebalance that splits them).
    let (mut first, first_log) = start(0, 2);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !assignments(&first_log).values().all(|a| a.len() == 1) || assignments(&first_log).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the two workers never held a partition each:\n{}",
            std::fs::read_to_string(&first_log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Partition 0 runs dry: its worker's input is exhausted, the other's is not.
    dry.store(true, Ordering::Relaxed);
    wait_for_line(&first_log, "input exhausted");
    // A member joins after that worker stopped reading: it must be given partitions.
    let (mut second, second_log) = start(1, 1);
    wait_for_assignment(&second_log);
    stop.store(true, Ordering::Relaxed);
    let sent = producer.join().unwrap();
    for (child, log) in [(&mut first, &first_log), (&mut second, &second_log)] {
        let status = wait_exit(&mut child.0, Duration::from_secs(60), log);
        assert!(status.success(), "a process failed: {}", std::fs::read_to_string(log).unwrap());
    }
    assert!(
        std::fs::read_to_string(&first_log).unwrap().contains("leaving the consumer group"),
        "the exhausted worker committed and left the group"
    );

    let outputs = outputs(&bs, &topics.output, delivery);
    let want = uuids(sent.iter().map(|l| std::str::from_utf8(l).unwrap()));
    let (missing, repeated) = missing_and_repeats(&outputs, &want);
    println!(
        "late join ({delivery}): {} sent, {} written, {missing} missing, {repeated} repeats; {:.1} s",
        want.len(),
        outputs.len(),
        started.elapsed().as_secs_f64()
    );
    (missing, repeated)
}

#[test]
fn a_member_joining_after_a_worker_ran_dry_is_not_held_up_at_least_once() {
    assert_eq!(late_join_run("at-least-once").0, 0);
}

#[test]
fn a_member_joining_after_a_worker_ran_dry_is_not_held_up_exactly_once() {
    assert_eq!(late_join_run("exactly-once"), (0, 0));
}

/// A member of the group that holds partitions and has not finished them (a slow process, or one
/// that died and whose session has not expired) keeps an idle run going: `stop_after_idle_ms`
/// ends a run only once the whole topic is read, not just the partitions its workers were given.
/// Here the other member is a bare consumer in the test that reads without committing; the
/// run must wait for it, say so, and read its partitions once it leaves. (Seen without this:
/// `kafka_crash`'s last run ended with the partitions of a killed run's members unread.)
#[test]
fn an_idle_run_waits_for_partitions_another_member_holds() {
    let (missing, _, log) = held_run(true);
    assert_eq!(missing, 0, "events of the other member's partitions were never read");
    assert!(!log.contains("ending without them"));
}

/// The wait is bounded: a member that holds partitions for ever (alive, never finishing) lets
/// the run end after the session timeout and the idle time again, with a warning, and what the
/// run's own partitions held all written.
#[test]
fn an_idle_run_waits_no_longer_than_a_session_for_another_member() {
    let (missing, own, log) = held_run(false);
    assert!(log.contains("ending without them"), "no warning:\n{log}");
    assert_eq!(missing, EVENTS_HELD - own, "the run's own partitions were not all written, or it read the other member's");
}

const EVENTS_HELD: usize = 4000;

/// One pipeline process (one worker, `stop_after_idle_ms = 1000`, session timeout 6 s) beside a
/// consumer of the test in the same group holding half the partitions; the consumer leaves once
/// the run says it waits (`leave`), or only once the run has ended. Returns (events missing
/// from the output, events of the partitions the run was given, the run's log).
fn held_run(leave: bool) -> (usize, usize, String) {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    gen_events(&input, EVENTS_HELD, 37, &[]);
    let broker = Broker::start();
    let bs = broker.bootstrap();
    let topics = Topics::named("held");
    topics.create(&bs, 4);
    produce_lines(&bs, &topics.input, 4, &input);
    let group = "held".to_string();

    // The other member: joins first (all four partitions), then polls — serving rebalances,
    // reading, committing nothing — until told to leave.
    let (held, go) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let other = {
        let (bs, topic, group, held, go) = (bs.clone(), topics.input.clone(), group.clone(), held.clone(), go.clone());
        std::thread::spawn(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bs)
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "earliest")
                .set("session.timeout.ms", "6000")
                .create()
                .expect("consumer");
            consumer.subscribe(&[&topic]).unwrap();
            while !go.load(Ordering::Relaxed) {
                let _ = consumer.poll(Duration::from_millis(50));
                held.store(consumer.assignment().map(|a| a.count() > 0).unwrap_or(false), Ordering::Relaxed);
            }
            consumer.unsubscribe();
            for _ in 0..40 {
                let _ = consumer.poll(Duration::from_millis(50));
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !held.load(Ordering::Relaxed) {
        assert!(Instant::now() < deadline, "the test's consumer was never given partitions");
        std::thread::sleep(Duration::from_millis(20));
    }

    let g = Group {
        dir: dir.path(),
        bootstrap: bs.clone(),
        topics: &topics,
        group,
        delivery: "at-least-once",
        plugins: String::new(),
        stop_after_idle_ms: 1000,
    };
    let (mut run, log) = g.start(0, 1);
    // Its own partitions are read and it is idle: it must wait, not end.
    let waiting = "not read to its end: waiting for the group to finish it";
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains(waiting) {
        if let Some(status) = run.0.try_wait().unwrap() {
            panic!("the run ended ({status}) while another member held partitions it had not finished:\n{}", log_tail(&log, 30));
        }
        assert!(Instant::now() < deadline, "the run never said it waits for the other member:\n{}", log_tail(&log, 30));
        std::thread::sleep(Duration::from_millis(20));
    }
    if leave {
        go.store(true, Ordering::Relaxed);
    }
    let status = wait_exit(&mut run.0, Duration::from_secs(60), &log);
    go.store(true, Ordering::Relaxed);
    other.join().unwrap();
    assert!(status.success(), "the run failed:\n{}", log_tail(&log, 30));
    let text = std::fs::read_to_string(&log).unwrap();
    // The partitions the run was given first: line i of the input went to partition i % 4.
    let own: Vec<i32> = assignments(&log).values().next().cloned().unwrap_or_default();
    let own_events = (0..EVENTS_HELD).filter(|i| own.contains(&((*i % 4) as i32))).count();
    let want = uuids(std::fs::read_to_string(&input).unwrap().lines());
    let (missing, repeated) = missing_and_repeats(&outputs(&bs, &topics.output, "at-least-once"), &want);
    println!(
        "held partitions (other member leaves: {leave}): {EVENTS_HELD} events, {own_events} in the run's own partitions, {missing} missing, {repeated} repeats"
    );
    (missing, own_events, text)
}

/// Input written in transactions ends each partition with a commit marker, which no record
/// carries the offset of. Two processes in one group read it; each must commit its partitions at
/// their very end (past the marker), so that the other, idle and waiting for the group to finish
/// the whole topic, sees them finished — not wait out its bound and warn that they were left
/// unread (seen: both processes waited the whole session timeout, then warned falsely).
#[test]
fn transactional_input_is_committed_to_its_end_and_a_group_ends_without_waiting() {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    gen_events(&input, 2000, 41, &[]);
    let broker = Broker::start();
    let bs = broker.bootstrap();
    let topics = Topics::named("txin");
    topics.create(&bs, 4);
    // Four transactions of 500 events, each over all four partitions.
    let producer: ThreadedProducer<DefaultProducerContext> =
        ClientConfig::new().set("bootstrap.servers", &bs).set("transactional.id", "txin-loader").create().expect("producer");
    producer.init_transactions(Duration::from_secs(30)).unwrap();
    let text = std::fs::read_to_string(&input).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for chunk in lines.chunks(500) {
        producer.begin_transaction().unwrap();
        for (i, line) in chunk.iter().enumerate() {
            producer.send(BaseRecord::<(), str>::to(&topics.input).payload(*line).partition(i as i32 % 4)).map_err(|(e, _)| e).unwrap();
        }
        producer.commit_transaction(Duration::from_secs(30)).unwrap();
    }

    let g = Group {
        dir: dir.path(),
        bootstrap: bs.clone(),
        topics: &topics,
        group: "txin".into(),
        delivery: "at-least-once",
        plugins: String::new(),
        stop_after_idle_ms: 1000,
    };
    let (mut a, log_a) = g.start(0, 1);
    let (mut b, log_b) = g.start(1, 1);
    for (run, log) in [(&mut a, &log_a), (&mut b, &log_b)] {
        let status = wait_exit(&mut run.0, Duration::from_secs(90), log);
        assert!(status.success(), "a process failed:\n{}", log_tail(log, 30));
        let text = std::fs::read_to_string(log).unwrap();
        assert!(!text.contains("ending without them"), "a process waited out its bound for partitions the other had read:\n{text}");
    }
    // Every partition committed at its end: the end offset, past the last transaction's marker.
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &bs).set("group.id", "txin").create().unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition(&topics.input, p);
    }
    for e in consumer.committed_offsets(tpl, Duration::from_secs(10)).unwrap().elements() {
        let (_, high) = consumer.fetch_watermarks(&topics.input, e.partition(), Duration::from_secs(10)).unwrap();
        assert_eq!(e.offset(), rdkafka::Offset::Offset(high), "partition {} not committed at its end ({high})", e.partition());
    }
    let want = uuids(lines.iter().copied());
    let (missing, repeated) = missing_and_repeats(&outputs(&bs, &topics.output, "at-least-once"), &want);
    println!("transactional input: {} events, {missing} missing, {repeated} repeats", want.len());
    assert_eq!(missing, 0);
}
