//! Pipeline processes in one consumer group split the input's partitions and together write
//! every event: once in exactly-once mode (read_committed), at least once otherwise, with repeats
//! only around rebalances (counted and printed). Under load, the group goes through three
//! rebalances: a second process joins the first mid-run, a third joins the two, and the third
//! leaves again (SIGTERM) while the others go on. A pacing plugin (half a millisecond per event)
//! keeps the processes busy long enough for that. Exactly-once output is counted by librdkafka's
//! `read_committed` consumer and by the test's own verifier (`txnlog`), which must agree.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use pluginflow_tests::broker::{
    Broker, Isolation, Topics, consume_all, events_in, kafka_config, pacing_plugin, produce_lines, spawn_pipeline, uuids, wait_exit,
    wait_for_output, written,
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

/// One pipeline process of the group.
fn start_process(
    dir: &Path,
    p: usize,
    broker: &Broker,
    topics: &Topics,
    group: &str,
    delivery: &str,
    plugins: &str,
) -> (std::process::Child, std::path::PathBuf) {
    let sub = dir.join(format!("p{p}"));
    std::fs::create_dir_all(&sub).unwrap();
    // Independent processes need their own transactional ids.
    let extra = format!("stop_after_idle_ms = 5000\ndelivery = {delivery:?}\ntransactional_id_prefix = \"{group}-p{p}\"");
    let config = kafka_config(&sub, &broker.bootstrap(), group, topics, &extra, plugins);
    let log = sub.join("pluginflow.log");
    (spawn_pipeline(&config, 1, &log), log)
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

    let first = start_process(dir.path(), 0, &broker, &topics, &group, delivery, &plugins);
    // The second joins while the first is mid-run: a rebalance under load.
    wait_for_output(&bs, &topics.output, EVENTS as i64 / 10);
    let second = start_process(dir.path(), 1, &broker, &topics, &group, delivery, &plugins);
    wait_for_assignment(&second.1);
    // The third joins the two, works a while, and leaves.
    let mut third = start_process(dir.path(), 2, &broker, &topics, &group, delivery, &plugins);
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

    let count = |values: &[String]| {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for u in uuids(values.iter().map(String::as_str)) {
            *seen.entry(u).or_default() += 1;
        }
        let want: Vec<String> = uuids(std::fs::read_to_string(&input).unwrap().lines());
        let missing = want.iter().filter(|u| !seen.contains_key(*u)).count();
        let repeated: usize = seen.values().map(|n| n - 1).sum();
        (missing, repeated)
    };
    let (missing, repeated) = if delivery == "exactly-once" {
        let mut verifier: Vec<String> = txnlog::read_committed(&bs, &topics.output).visible.iter().map(|r| r.value_text()).collect();
        let mut librdkafka: Vec<String> = consume_all(&bs, &topics.output, Isolation::ReadCommitted).into_iter().map(|r| r.value).collect();
        verifier.sort();
        librdkafka.sort();
        assert!(
            verifier == librdkafka,
            "librdkafka's read_committed ({}) and the verifier ({}) disagree",
            librdkafka.len(),
            verifier.len()
        );
        count(&verifier)
    } else {
        count(&consume_all(&bs, &topics.output, Isolation::ReadUncommitted).into_iter().map(|r| r.value).collect::<Vec<_>>())
    };
    println!(
        "group ({delivery}): {EVENTS} in, read by process {read:?}, third joined at {joined_at} and left at {left_at} outputs; \
         {missing} missing, {repeated} repeats; {:.1} s",
        started.elapsed().as_secs_f64()
    );
    (missing, repeated, read)
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
