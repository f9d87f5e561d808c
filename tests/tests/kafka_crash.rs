//! Crash test: `kill -9` the pipeline several times during a run of 100k events, restart it each
//! time, then read the output topic. At-least-once: every input uuid is there. Exactly-once:
//! every uuid exactly once among the records a `read_committed` reader may see, counted twice by
//! independent readers that must agree record for record: librdkafka's own `read_committed`
//! consumer (Apache Kafka filters aborted transactions), and the test verifier [`txnlog`], which
//! decides from the transaction markers in the raw log. Counts are printed.
//!
//! A plugin captures a `follow-up` event for one event in four (`posthog.capture`, half of them
//! in `processEvent`, half in `onEvent`); captured
//! events carry a new uuid on each run, so they are counted by the event that captured them
//! (`of`): at-least-once, each at least once; exactly-once, each exactly once. Its
//! `exportEvents` captures one event per batch listing some of the batch's events: each must be
//! listed at least once in both modes. Its `onEvent` also enqueues, for one event in eight, a job
//! that captures a `job-follow-up`: each at least once in both modes (a job is enqueued again when
//! its event is read again, so repeats are allowed, and counted). The state (the job queue) is in
//! RocksDB, kept across the kills; one more run after the last lets the jobs that run left
//! queued run.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use pluginflow_tests::broker::{
    Broker, Isolation, Topics, batch_captures, captures, capturing_plugin, consume_all, job_captures, kafka_config, log_tail,
    produce_lines, spawn_pipeline, uuids, wait_exit, written,
};
use pluginflow_tests::{gen_events, txnlog};

const EVENTS: usize = 100_000;
const PARTITIONS: i32 = 4;
const KILLS: usize = 3;
/// Partitions of the output topic (`Topics::create` makes 3).
const OUTPUT_PARTITIONS: i32 = 3;

/// Where a kill landed: outputs written when it was due (markers included) and, in exactly-once
/// mode, whether a transaction with records in the log was open at that moment.
struct Kill {
    outputs: i64,
    in_txn: bool,
}

/// Runs the pipeline, kills it (SIGKILL) each time the output has grown by a share of the input,
/// restarts it, then lets the last run finish. In exactly-once mode each kill also waits (a
/// while) for a transaction in flight, so that the abort path is what gets tested: a kill
/// between transactions would prove little.
fn run_with_kills(dir: &Path, broker: &Broker, topics: &Topics, delivery: &str) -> Vec<Kill> {
    let config = kafka_config(
        dir,
        &broker.bootstrap(),
        &format!("crash-{delivery}"),
        topics,
        &format!("stop_after_idle_ms = 4000\ndelivery = {delivery:?}"),
        &capturing_plugin(dir, 0.0, 0.0, true),
    );
    // The job queue must outlive the kills: RocksDB, not memory.
    let text = std::fs::read_to_string(&config).unwrap();
    let state = format!("path = {:?}", dir.join("state").display().to_string());
    std::fs::write(&config, text.replacen("memory = true", &state, 1)).unwrap();
    let log = dir.join(format!("pluginflow-{delivery}.log"));
    let mut kills = Vec::new();
    'kills: for kill in 0..KILLS {
        let target = (EVENTS as i64 * (kill as i64 + 1)) / (KILLS as i64 + 2);
        let mut child = spawn_pipeline(&config, 2, &log);
        let deadline = Instant::now() + Duration::from_secs(90);
        // A run that ends by itself with success has read the whole input before its kill came
        // (runs are fast, and waiting for a transaction in flight takes time): the kills end
        // there. A run that ends with an error is a failure.
        let ended = |child: &mut std::process::Child| match child.try_wait().unwrap() {
            None => false,
            Some(status) if status.success() => {
                println!("run {} read the whole input before its kill", kill + 1);
                true
            }
            Some(status) => panic!("pluginflow failed ({status}) before kill {}; log tail:\n{}", kill + 1, log_tail(&log, 40)),
        };
        let outputs = loop {
            let now = written(&broker.bootstrap(), &topics.output);
            if now >= target {
                break now;
            }
            if ended(&mut child) {
                break 'kills;
            }
            assert!(Instant::now() < deadline, "no progress to {target} outputs (at {now})");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut in_txn = false;
        if delivery == "exactly-once" {
            let give_up = Instant::now() + Duration::from_secs(20);
            while !in_txn && Instant::now() < give_up {
                if ended(&mut child) {
                    break 'kills;
                }
                in_txn = txnlog::transaction_in_flight(&broker.bootstrap(), &topics.output, OUTPUT_PARTITIONS);
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills.push(Kill { outputs, in_txn });
    }
    let mut child = spawn_pipeline(&config, 2, &log);
    let status = wait_exit(&mut child, Duration::from_secs(180), &log);
    assert!(status.success(), "the last run failed: {}", std::fs::read_to_string(&log).unwrap());
    // Jobs enqueued in a run's last batches stay queued when it ends (as after a shutdown): the
    // next run, with no input left, runs them.
    let mut child = spawn_pipeline(&config, 2, &log);
    let status = wait_exit(&mut child, Duration::from_secs(180), &log);
    assert!(status.success(), "the run after the last failed: {}", std::fs::read_to_string(&log).unwrap());
    kills
}

/// How the output topic is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reader {
    /// librdkafka, `read_uncommitted`: everything written.
    Uncommitted,
    /// librdkafka, `read_committed`: the broker filters aborted transactions.
    Committed,
    /// The test verifier: `read_committed` applied from the log's markers.
    Verifier,
}

/// The output as one reader counted it.
struct Counts {
    missing: usize,
    repeats: usize,
    distinct: usize,
    /// Records of aborted transactions (verifier only).
    aborted: usize,
    /// Records of transactions that never ended (verifier only).
    open: usize,
    /// The visible values, sorted (to compare readers).
    values: Vec<String>,
    /// Kills that landed.
    kills: usize,
    /// Capturing events without their capture, and captures seen more than once.
    captures_missing: usize,
    capture_repeats: usize,
    /// Events whose job's capture is missing (repeats are allowed, and printed).
    jobs_missing: usize,
    /// `setupPlugin`'s captures seen.
    started: usize,
    /// Exported events no batch capture lists (repeats are allowed: a batch spanning epochs
    /// commits its capture with the earliest, and a replay of the later ones exports them again).
    batch_missing: usize,
}

/// Runs the crash test and counts the output as each of `readers` sees it.
fn crash_test(delivery: &str, readers: &[Reader]) -> Vec<Counts> {
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
    // Every job attempt and journaled capture settled in the end: none is left for a next run
    // (a settle that never acknowledged would pass the counts below, repeats being allowed).
    {
        use state::StateStore as _;
        let store = state::RocksStore::open(dir.path().join("state")).expect("the run's state");
        for queue in [operators::plugin::worker::JOB_QUEUE, operators::plugin::worker::CAPTURE_QUEUE] {
            assert_eq!(store.queue_len(queue).unwrap(), 0, "items left in the {queue} queue after the last run");
        }
    }

    let mut all = Vec::new();
    for &reader in readers {
        let (mut values, aborted, open, detail) = match reader {
            Reader::Uncommitted | Reader::Committed => {
                let isolation = if reader == Reader::Committed { Isolation::ReadCommitted } else { Isolation::ReadUncommitted };
                let out = consume_all(&broker.bootstrap(), &topics.output, isolation);
                (out.into_iter().map(|r| r.value).collect::<Vec<_>>(), 0, 0, String::new())
            }
            Reader::Verifier => {
                let log = txnlog::read_committed(&broker.bootstrap(), &topics.output);
                let detail = format!(" ({} aborted, {} open, {} markers)", log.aborted, log.open, log.markers);
                (log.visible.iter().map(|r| r.value_text()).collect(), log.aborted, log.open, detail)
            }
        };
        // Input events by uuid, captured ones by the event that captured them, the events
        // exportEvents' batch captures list, and the events whose job captured.
        let [mut seen, mut captured, mut listed, mut by_job]: [HashMap<String, usize>; 4] = Default::default();
        // What the plugin's setupPlugin captured (per instance and run; journaled).
        let mut setups = 0usize;
        for value in &values {
            let event: serde_json::Value = serde_json::from_str(value).expect("an event");
            let p = &event["properties"];
            if p["started"] == true {
                setups += 1;
                continue;
            }
            match (p["of"].as_str(), p["batch_of"].as_str(), p["job_of"].as_str()) {
                (Some(of), _, _) => *captured.entry(of.to_string()).or_default() += 1,
                (None, Some(list), _) => list.split(',').for_each(|u| *listed.entry(u.to_string()).or_default() += 1),
                (None, None, Some(of)) => *by_job.entry(of.to_string()).or_default() += 1,
                (None, None, None) => *seen.entry(event["uuid"].as_str().expect("a uuid").to_string()).or_default() += 1,
            }
        }
        let jobs_due = want.iter().filter(|u| job_captures(u)).count();
        let jobs_missing = want.iter().filter(|u| job_captures(u) && !by_job.contains_key(*u)).count();
        let job_repeats: usize = by_job.values().map(|n| n - 1).sum();
        let batch_due = want.iter().filter(|u| batch_captures(u)).count();
        let batch_missing = want.iter().filter(|u| batch_captures(u) && !listed.contains_key(*u)).count();
        let batch_repeats: usize = listed.values().map(|n| n - 1).sum();
        let capturers = want.iter().filter(|u| captures(u)).count();
        let captures_missing = want.iter().filter(|u| captures(u) && !captured.contains_key(*u)).count();
        let capture_repeats: usize = captured.values().map(|n| n - 1).sum();
        let missing = want.iter().filter(|u| !seen.contains_key(*u)).count();
        if missing > 0 {
            // Input line i is record i / PARTITIONS of partition i % PARTITIONS: say which offsets
            // are missing, to compare with the commits in the log.
            println!("missing ({reader:?}), by partition: {}", missing_ranges(&want, &seen));
            println!("the runs' rebalances and commits:\n{}", log_digest(&dir.path().join(format!("pluginflow-{delivery}.log"))));
        }
        let repeats: usize = seen.values().map(|n| n - 1).sum();
        println!(
            "crash test ({delivery}, {reader:?}): {EVENTS} in, {} visible{detail}, {} distinct, {missing} missing, {repeats} repeats; \
             {capturers} captures due, {} made, {captures_missing} missing, {capture_repeats} repeats; \
             {batch_due} to be listed by batch captures, {batch_missing} missing, {batch_repeats} repeats; \
             {jobs_due} job captures due, {jobs_missing} missing, {job_repeats} repeats; {setups} setup captures; \
             {} kills, at outputs {}; {:.1} s",
            values.len(),
            seen.len(),
            captured.len(),
            kills.len(),
            kills
                .iter()
                .map(|k| format!("{}{}", k.outputs, if k.in_txn { " in a transaction" } else { "" }))
                .collect::<Vec<_>>()
                .join(", "),
            started.elapsed().as_secs_f64()
        );
        values.sort();
        all.push(Counts {
            missing,
            repeats,
            distinct: seen.len(),
            aborted,
            open,
            values,
            kills: kills.len(),
            captures_missing,
            capture_repeats,
            jobs_missing,
            started: setups,
            batch_missing,
        });
    }
    keep_if_asked(dir);
    all
}

/// The input offsets whose uuid is not in `seen`, as ranges per partition.
fn missing_ranges(want: &[String], seen: &HashMap<String, usize>) -> String {
    let mut ranges: Vec<Vec<(usize, usize)>> = vec![Vec::new(); PARTITIONS as usize];
    for (i, u) in want.iter().enumerate() {
        if seen.contains_key(u) {
            continue;
        }
        let (partition, offset) = (i % PARTITIONS as usize, i / PARTITIONS as usize);
        match ranges[partition].last_mut() {
            Some((_, end)) if *end == offset => *end = offset + 1,
            _ => ranges[partition].push((offset, offset + 1)),
        }
    }
    let mut out = String::new();
    for (p, r) in ranges.iter().enumerate() {
        let shown: Vec<String> = r.iter().take(8).map(|(a, b)| format!("{a}..{b}")).collect();
        out += &format!("[{p}] {}{}; ", shown.join(" "), if r.len() > 8 { " …" } else { "" });
    }
    out
}

/// The pipeline log's rebalances, exhaustions and summaries, with the last offset commit of each
/// worker before each of them (commits come every 100 ms: all of them would bury the rest).
fn log_digest(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut out = Vec::new();
    let mut last_commit: std::collections::BTreeMap<String, String> = Default::default();
    for line in text.lines() {
        if line.contains("offsets committed") {
            let worker = line.split("worker=").nth(1).and_then(|w| w.split(' ').next()).unwrap_or("?").to_string();
            last_commit.insert(worker, line.to_string());
            continue;
        }
        let marks = ["subscribed", "rebalance", "exhausted", "left the consumer group", "summary", "events in", "events out", "error"];
        if marks.iter().any(|m| line.contains(m)) {
            out.extend(std::mem::take(&mut last_commit).into_values());
            out.push(line.to_string());
        }
    }
    out.extend(last_commit.into_values());
    out.join("\n")
}

/// Keeps the test's folder (config, logs) when `PF_TEST_KEEP` is set, and says where.
fn keep_if_asked(dir: tempfile::TempDir) {
    if std::env::var_os("PF_TEST_KEEP").is_some() {
        println!("kept {}", dir.keep().display());
    }
}

/// Each run that was killed or ran to the end of the input created the plugin's three instances
/// (one per team), each capturing once in `setupPlugin`; what a killed run had not written was
/// journaled and goes in at the next start, so none is missing (a repeat is allowed).
fn assert_setup_captures(c: &Counts) {
    let runs = c.kills + 1;
    assert!(c.started >= 3 * runs, "{} setup captures for {runs} runs of three instances", c.started);
}

#[test]
fn at_least_once_survives_kill_9() {
    let c = crash_test("at-least-once", &[Reader::Uncommitted]).remove(0);
    assert!(c.kills > 0, "no kill landed before the input was read: the test proved nothing");
    assert_eq!(c.missing, 0, "at-least-once lost events");
    assert_eq!(c.distinct, EVENTS);
    assert_eq!(c.captures_missing, 0, "at-least-once lost captured events");
    assert_eq!(c.batch_missing, 0, "at-least-once lost exportEvents' captures");
    assert_eq!(c.jobs_missing, 0, "at-least-once lost what jobs captured");
    assert_setup_captures(&c);
}

/// The kills land inside transactions; the restarted workers fence their predecessors (same
/// transactional ids), which aborts what those left open. Counted by librdkafka's
/// `read_committed` consumer and by the test verifier; both must see the same records.
#[test]
fn exactly_once_survives_kill_9_without_duplicates() {
    let mut counts = crash_test("exactly-once", &[Reader::Committed, Reader::Verifier]);
    let c = counts.pop().unwrap();
    let librdkafka = counts.pop().unwrap();
    assert!(c.kills > 0, "no kill landed before the input was read: the test proved nothing");
    assert!(librdkafka.values == c.values, "librdkafka's read_committed and the verifier disagree");
    assert_eq!((librdkafka.missing, librdkafka.repeats), (0, 0), "librdkafka's read_committed saw losses or duplicates");
    assert_eq!(c.missing, 0, "exactly-once lost events");
    assert_eq!(c.repeats, 0, "read_committed (by the log's markers) saw duplicates");
    assert_eq!(c.distinct, EVENTS);
    assert_eq!((librdkafka.captures_missing, librdkafka.capture_repeats), (0, 0), "captured events lost or repeated");
    assert_eq!((c.captures_missing, c.capture_repeats), (0, 0), "captured events lost or repeated (by the log's markers)");
    // A batch's capture may repeat (a batch spanning epochs commits it with the earliest), but
    // none is lost, not even when a rebalance rewinds that earliest epoch.
    assert_eq!((librdkafka.batch_missing, c.batch_missing), (0, 0), "exportEvents' captures lost");
    // A job may run again (its event read again enqueues it again), but what it captured is
    // never lost.
    assert_eq!((librdkafka.jobs_missing, c.jobs_missing), (0, 0), "what jobs captured was lost");
    assert_eq!(librdkafka.started, c.started);
    assert_setup_captures(&c);
    assert!(c.aborted > 0, "no kill left an aborted transaction behind: the abort path was not exercised");
    assert_eq!(c.open, 0, "a transaction never ended: a restarted worker did not fence its predecessor");
}
