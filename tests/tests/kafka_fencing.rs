//! Fencing: a second pipeline process started with the same transactional ids (same group, same
//! `transactional_id_prefix`) fences the first. The first must stop with a clear error (exit
//! code 1, "fenced" in its log) rather than go on writing as a zombie, and nothing is lost or
//! written twice: the second process takes over every partition from the committed offsets.
//! Counted by librdkafka's `read_committed` consumer and the test verifier, which must agree.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pluginflow_tests::broker::{
    Broker, Isolation, Topics, consume_all, kafka_config, pacing_plugin, produce_lines, spawn_pipeline, uuids, wait_exit, wait_for_output,
};
use pluginflow_tests::{gen_events, txnlog};

const EVENTS: usize = 20_000;
const PARTITIONS: i32 = 4;

#[test]
fn a_second_process_with_the_same_transactional_id_fences_the_first() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    gen_events(&input, EVENTS, 31, &[]);
    let broker = Broker::start();
    let bs = broker.bootstrap();
    let topics = Topics::named("fence");
    topics.create(&bs, PARTITIONS);
    produce_lines(&bs, &topics.input, PARTITIONS, &input);
    let plugins = pacing_plugin(dir.path());

    let mut runs = Vec::new();
    for p in 0..2 {
        let sub = dir.path().join(format!("p{p}"));
        std::fs::create_dir_all(&sub).unwrap();
        let extra = "stop_after_idle_ms = 5000\ndelivery = \"exactly-once\"\ntransactional_id_prefix = \"fence\"";
        let config = kafka_config(&sub, &bs, "fence", &topics, extra, &plugins);
        if p == 1 {
            // The first is mid-run when its double starts.
            wait_for_output(&bs, &topics.output, EVENTS as i64 / 10);
        }
        let log = sub.join("pluginflow.log");
        runs.push((spawn_pipeline(&config, 1, &log), log));
    }

    let (first, first_log) = &mut runs[0];
    let status = wait_exit(first, Duration::from_secs(120), first_log);
    let text = std::fs::read_to_string(&*first_log).unwrap();
    println!("the fenced process: {status}; its last line:\n{}", pluginflow_tests::broker::log_tail(first_log, 1));
    assert_eq!(status.code(), Some(1), "the fenced process must fail: {text}");
    assert!(
        text.contains("fenced: another producer registered the transactional id \"fence-0\""),
        "the fenced process's error does not say in words that it was fenced, and by what: {text}"
    );

    let (second, second_log) = &mut runs[1];
    let status = wait_exit(second, Duration::from_secs(180), second_log);
    assert!(status.success(), "the second process failed: {}", std::fs::read_to_string(&*second_log).unwrap());

    let mut verifier: Vec<String> = txnlog::read_committed(&bs, &topics.output).visible.iter().map(|r| r.value_text()).collect();
    let mut librdkafka: Vec<String> = consume_all(&bs, &topics.output, Isolation::ReadCommitted).into_iter().map(|r| r.value).collect();
    verifier.sort();
    librdkafka.sort();
    assert!(verifier == librdkafka, "librdkafka's read_committed ({}) and the verifier ({}) disagree", librdkafka.len(), verifier.len());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for u in uuids(verifier.iter().map(String::as_str)) {
        *seen.entry(u).or_default() += 1;
    }
    let want: Vec<String> = uuids(std::fs::read_to_string(&input).unwrap().lines());
    let missing = want.iter().filter(|u| !seen.contains_key(*u)).count();
    let repeats: usize = seen.values().map(|n| n - 1).sum();
    println!(
        "fencing: {EVENTS} in, {} visible, {missing} missing, {repeats} repeats; {:.1} s",
        verifier.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!((missing, repeats), (0, 0));
}
