//! Plugin state shared by the processes of a timely cluster (`-n 2`): `cache` in Redis
//! (`[state] redis`), against a real `redis-server` started here.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use pluginflow_tests::broker::pluginflow_bin;
use pluginflow_tests::read_json_lines;
use pluginflow_tests::redis_server::RedisServer;

/// A plugin that numbers the events of each team with `cache.incr`, and keeps the last number
/// it handed out in `storage`.
fn counting_plugin(dir: &Path) {
    let p = dir.join("count");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("plugin.json"), r#"{"name":"count","main":"index.js"}"#).unwrap();
    std::fs::write(
        p.join("index.js"),
        "exports.processEvent = async (event, { cache, storage }) => {\n\
         \x20   event.properties.n = await cache.incr('n')\n\
         \x20   await storage.set('last', event.properties.n)\n\
         \x20   return event\n\
         }\n",
    )
    .unwrap();
}

/// Runs `pluginflow run` as processes `0..processes` of one cluster (two workers each) and
/// returns each team's numbers, from every process's output.
fn run_cluster(dir: &Path, config: &Path, processes: usize) -> BTreeMap<i64, Vec<i64>> {
    let mut cluster = vec![];
    if processes > 1 {
        let hosts = dir.join("hosts.txt");
        let ports: Vec<u16> = (0..processes).map(|_| pluginflow_tests::broker::free_port()).collect();
        std::fs::write(&hosts, ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect::<String>()).unwrap();
        cluster.push(hosts);
    }
    let children: Vec<_> = (0..processes)
        .map(|p| {
            let mut cmd = Command::new(pluginflow_bin());
            cmd.args(["run", "-w", "2", "--no-progress"]);
            if let Some(hosts) = cluster.first() {
                cmd.args(["-n", &processes.to_string(), "-p", &p.to_string(), "-h"]).arg(hosts);
            }
            cmd.arg(config).stderr(Stdio::piped()).spawn().unwrap()
        })
        .collect();
    let mut numbers: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (p, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "process {p}: {}", String::from_utf8_lossy(&out.stderr));
        let file = if processes > 1 { format!("out/e.p{p}.jsonl") } else { "out/e.jsonl".to_owned() };
        let events = read_json_lines(&dir.join(file));
        assert!(!events.is_empty(), "process {p} did some of the work");
        for e in events {
            numbers.entry(e["team_id"].as_i64().unwrap()).or_default().push(e["properties"]["n"].as_i64().unwrap());
        }
    }
    numbers.values_mut().for_each(|v| v.sort_unstable());
    numbers
}

/// Checks that `seen` (sorted) is exactly `want`, saying what differs rather than printing both.
fn assert_exactly(seen: &[i64], want: std::ops::RangeInclusive<i64>, what: &str) {
    let duplicates = seen.windows(2).filter(|w| w[0] == w[1]).count();
    let missing = want.clone().filter(|n| seen.binary_search(n).is_err()).count();
    let outside = seen.iter().filter(|n| !want.contains(n)).count();
    assert!(
        duplicates == 0 && missing == 0 && outside == 0,
        "{what}: {} numbers for {want:?}: {duplicates} repeated, {missing} missing, {outside} outside",
        seen.len()
    );
}

#[test]
fn two_processes_count_one_teams_events_exactly_with_redis_state() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    // Team 1's events run through the whole log, so both processes' shares hold some.
    let teams = |i: usize| if i % 3 == 2 { 2 } else { 1 };
    let lines: String =
        (0..3000).map(|i| format!("{{\"uuid\":\"u{i}\",\"event\":\"e\",\"team_id\":{},\"properties\":{{}}}}\n", teams(i))).collect();
    std::fs::write(dir.path().join("e.jsonl"), lines).unwrap();
    counting_plugin(dir.path());
    let config = dir.path().join("pf.toml");
    std::fs::write(
        &config,
        format!(
            "[input]\npath = \"e.jsonl\"\n[output]\nevents = \"out/e.jsonl\"\n[state]\npath = \"state\"\nredis = \"{}\"\n\
             redis_prefix = \"cluster-test\"\n[[plugins]]\nid = \"c\"\npath = \"count\"\n",
            server.url()
        ),
    )
    .unwrap();

    // Four workers in two processes increment one counter per team: 1..=count, each once.
    let numbers = run_cluster(dir.path(), &config, 2);
    assert_exactly(&numbers[&1], 1..=2000, "team 1, every event counted once across the cluster");
    assert_exactly(&numbers[&2], 1..=1000, "team 2, its own counter");

    // Another cluster shape later (one process): the same counters carry on.
    let numbers = run_cluster(dir.path(), &config, 1);
    assert_exactly(&numbers[&1], 2001..=4000, "team 1, second run");
    assert_exactly(&numbers[&2], 1001..=2000, "team 2, second run");

    // `storage` is in Redis too: the last number any process stored is a number it handed out.
    let store =
        state::RedisStore::open(&server.url(), "cluster-test", std::time::Duration::from_secs(5), Box::new(state::MemoryStore::new()))
            .unwrap();
    // (A configuration's storage is per team: namespace `{configuration}/{team}`.)
    for (team, handed_out) in [(1, 4000), (2, 2000)] {
        let last = state::StateStore::storage_get(&store, &format!("c/{team}"), "last").unwrap().expect("stored");
        assert!((1..=handed_out).contains(&last.parse::<i64>().unwrap()), "team {team}: {last}");
    }
}

#[test]
fn an_unreachable_redis_stops_the_start_with_exit_2_and_no_password() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("e.jsonl"), "{\"uuid\":\"u\",\"event\":\"e\",\"team_id\":1,\"properties\":{}}\n").unwrap();
    let closed = pluginflow_tests::broker::free_port();
    let config = dir.path().join("pf.toml");
    std::fs::write(
        &config,
        format!(
            "[input]\npath = \"e.jsonl\"\n[state]\nmemory = true\nredis = \"redis://:hunter2@127.0.0.1:{closed}\"\nredis_timeout_ms = 500\n"
        ),
    )
    .unwrap();
    let out = Command::new(pluginflow_bin()).args(["run", "--no-progress"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("[state] redis (127.0.0.1:{closed})")), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    assert!(!dir.path().join("out").exists(), "nothing was opened or written");

    std::fs::write(&config, "[input]\npath = \"e.jsonl\"\n[state]\nredis = \"http://127.0.0.1:1\"\n").unwrap();
    let out = Command::new(pluginflow_bin()).args(["run", "--no-progress"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("state.redis") && err.contains("redis://"), "{err}");
}
