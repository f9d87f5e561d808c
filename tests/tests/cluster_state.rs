//! Plugin state in a timely cluster (`-n 2`): `cache` in Redis (`[state] redis`, a real
//! `redis-server` started here) shared by both processes, and, with each process's own RocksDB,
//! events exchanged by team so each configuration × team instance lives on one worker.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use pluginflow_tests::broker::pluginflow_bin;
use pluginflow_tests::read_json_lines;
use pluginflow_tests::redis_server::RedisServer;

/// A plugin that numbers the events of each team with `cache.incr`, keeps the last number it
/// handed out in `storage`, and counts in `global` too: `global_n` is the instance's own count, so
/// it equals `n` only when one instance saw all of the team's events (and `setupPlugin` ran once
/// for it: `instance` is a random id drawn there).
fn counting_plugin(dir: &Path) {
    let p = dir.join("count");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("plugin.json"), r#"{"name":"count","main":"index.js"}"#).unwrap();
    std::fs::write(
        p.join("index.js"),
        "exports.setupPlugin = ({ global }) => { global.n = 0; global.id = Math.random().toString(36).slice(2) }\n\
         exports.processEvent = async (event, { cache, storage, global }) => {\n\
         \x20   event.properties.n = await cache.incr('n')\n\
         \x20   event.properties.global_n = ++global.n\n\
         \x20   event.properties.instance = global.id\n\
         \x20   await storage.set('last', event.properties.n)\n\
         \x20   return event\n\
         }\n",
    )
    .unwrap();
}

/// What a run's outputs say of one team: the `cache.incr` numbers, the `global` counts and the
/// instances that handed them out.
#[derive(Default)]
struct Team {
    uuids: Vec<String>,
    n: Vec<i64>,
    global_n: Vec<i64>,
    instances: std::collections::BTreeSet<String>,
}

/// Runs `pluginflow run` as processes `0..processes` of one cluster (two workers each) and
/// returns what each team's events say, from every process's output.
fn run_cluster(dir: &Path, config: &Path, processes: usize) -> BTreeMap<i64, Team> {
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
    let mut teams: BTreeMap<i64, Team> = BTreeMap::new();
    for (p, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "process {p}: {stderr}");
        // Each process accounts for what it read: what the chain made of an event is written
        // (or counted) by the worker that read it, wherever the plugins ran.
        let count = |what: &str| -> u64 {
            let line = stderr.lines().find(|l| l.trim_start().starts_with(what)).unwrap_or_else(|| panic!("no '{what}' in {stderr}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        let (read, out_, dropped, dead) =
            (count("events in:"), count("events out:"), count("dropped by plugins:"), count("dead-lettered:"));
        assert_eq!(read, out_ + dropped + dead, "process {p}: in = out + dropped + dead-lettered\n{stderr}");
        let file = if processes > 1 { format!("out/e.p{p}.jsonl") } else { "out/e.jsonl".to_owned() };
        let events = read_json_lines(&dir.join(file));
        assert!(!events.is_empty(), "process {p} did some of the work");
        assert_eq!(events.len() as u64, out_, "process {p} wrote what it counted");
        for e in events {
            let team = teams.entry(e["team_id"].as_i64().unwrap()).or_default();
            team.uuids.push(e["uuid"].as_str().unwrap().to_owned());
            let props = &e["properties"];
            if let Some(n) = props["n"].as_i64() {
                team.n.push(n);
                team.global_n.push(props["global_n"].as_i64().unwrap());
                team.instances.insert(props["instance"].as_str().unwrap().to_owned());
            }
        }
    }
    for team in teams.values_mut() {
        team.n.sort_unstable();
        team.global_n.sort_unstable();
    }
    teams
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
    let teams = run_cluster(dir.path(), &config, 2);
    assert_exactly(&teams[&1].n, 1..=2000, "team 1, every event counted once across the cluster");
    assert_exactly(&teams[&2].n, 1..=1000, "team 2, its own counter");

    // Another cluster shape later (one process): the same counters carry on.
    let teams = run_cluster(dir.path(), &config, 1);
    assert_exactly(&teams[&1].n, 2001..=4000, "team 1, second run");
    assert_exactly(&teams[&2].n, 1001..=2000, "team 2, second run");

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

/// Events of ~100 teams over two processes of two workers, each process with its own RocksDB:
/// every team's events go to one worker of the cluster, so its counter (in that process's
/// RocksDB) counts every event once, one instance (one `setupPlugin`, one `global`) serves the
/// team, and nothing is lost or doubled. `spread_teams` keeps one team where it is read.
#[test]
fn two_processes_exchange_events_by_team_so_rocksdb_counts_are_exact_and_each_team_has_one_instance() {
    let dir = tempfile::tempdir().unwrap();
    let team_of = |i: usize| (i * 7919 % 97) as i64 + 1; // 97 teams, interleaved through the log
    let lines: String =
        (0..4000).map(|i| format!("{{\"uuid\":\"u{i}\",\"event\":\"e\",\"team_id\":{},\"properties\":{{}}}}\n", team_of(i))).collect();
    std::fs::write(dir.path().join("e.jsonl"), lines).unwrap();
    let mut want: BTreeMap<i64, i64> = BTreeMap::new();
    (0..4000).for_each(|i| *want.entry(team_of(i)).or_default() += 1);
    counting_plugin(dir.path());
    let config = dir.path().join("pf.toml");
    let write_config = |spread: &str| {
        std::fs::write(
            &config,
            format!(
                "[input]\npath = \"e.jsonl\"\n[output]\nevents = \"out/e.jsonl\"\n[state]\npath = \"state\"\n\
                 [runtime]\nspread_teams = [{spread}]\n[[plugins]]\nid = \"c\"\npath = \"count\"\n"
            ),
        )
        .unwrap()
    };
    write_config("");
    let teams = run_cluster(dir.path(), &config, 2);
    assert_eq!(teams.keys().copied().collect::<Vec<_>>(), want.keys().copied().collect::<Vec<_>>());
    for (team, seen) in &teams {
        let count = want[team];
        assert_exactly(&seen.n, 1..=count, &format!("team {team}, cache.incr in one process's RocksDB"));
        assert_exactly(&seen.global_n, 1..=count, &format!("team {team}, global of its one instance"));
        assert_eq!(seen.instances.len(), 1, "team {team}: one instance in the cluster, {:?}", seen.instances);
    }

    // A spread team is run where it is read: more than one instance, each counting its share
    // (this is why spreading is only for plugins without per-instance state).
    let hot = *want.iter().max_by_key(|(_, c)| **c).unwrap().0;
    std::fs::remove_dir_all(dir.path().join("out")).unwrap();
    for p in 0..2 {
        std::fs::remove_dir_all(dir.path().join(format!("state.p{p}"))).unwrap();
    }
    write_config(&hot.to_string());
    let teams = run_cluster(dir.path(), &config, 2);
    let spread = &teams[&hot];
    assert!(spread.instances.len() > 1, "team {hot} spread over the workers that read it: {:?}", spread.instances);
    assert_eq!(spread.n.len() as i64, want[&hot], "every event of the spread team written once");
    for (team, seen) in teams.iter().filter(|(t, _)| **t != hot) {
        assert_exactly(&seen.global_n, 1..=want[team], &format!("team {team}, not spread"));
    }
}

/// A plugin that drops every event whose uuid ends in 7, run on the team's owner: the drop is
/// counted by the process that read the event, and every other event is written there once.
#[test]
fn what_the_owner_made_of_an_event_is_written_and_counted_where_it_was_read() {
    let dir = tempfile::tempdir().unwrap();
    let lines: String =
        (0..3000).map(|i| format!("{{\"uuid\":\"u{i}\",\"event\":\"e\",\"team_id\":{},\"properties\":{{}}}}\n", i % 5 + 1)).collect();
    std::fs::write(dir.path().join("e.jsonl"), lines).unwrap();
    let p = dir.path().join("drop");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("plugin.json"), r#"{"name":"drop","main":"index.js"}"#).unwrap();
    std::fs::write(p.join("index.js"), "exports.processEvent = (event) => event.uuid.endsWith('7') ? null : event\n").unwrap();
    let config = dir.path().join("pf.toml");
    std::fs::write(
        &config,
        "[input]\npath = \"e.jsonl\"\n[output]\nevents = \"out/e.jsonl\"\n[state]\nmemory = true\n[[plugins]]\nid = \"d\"\npath = \"drop\"\n",
    )
    .unwrap();
    let teams = run_cluster(dir.path(), &config, 2);
    let mut seen: Vec<String> = teams.into_values().flat_map(|t| t.uuids).collect();
    seen.sort();
    let mut want: Vec<String> = (0..3000).map(|i| format!("u{i}")).filter(|u| !u.ends_with('7')).collect();
    want.sort();
    assert_eq!(seen.len(), want.len());
    assert!(seen == want, "every kept event written once");
}

/// 300 teams through two workers whose instance budget holds a few instances: idle teams are
/// evicted (teardownPlugin runs), come back when their events do, and nothing is lost: every
/// event is written once, and every instance created is torn down exactly once.
#[test]
fn many_teams_under_a_small_instance_budget_are_evicted_and_recreated_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let team_of = |i: usize| ((i * i) % 300) as i64 + 1;
    let lines: String =
        (0..3000).map(|i| format!("{{\"uuid\":\"u{i}\",\"event\":\"e\",\"team_id\":{},\"properties\":{{}}}}\n", team_of(i))).collect();
    std::fs::write(dir.path().join("e.jsonl"), lines).unwrap();
    let p = dir.path().join("ballast");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("plugin.json"), r#"{"name":"ballast","main":"index.js"}"#).unwrap();
    std::fs::write(
        p.join("index.js"),
        "exports.setupPlugin = ({ global }) => { global.ballast = new Array(32768).fill(0).map((_, i) => i) }\n\
         exports.processEvent = (event) => { event.properties.seen = true; return event }\n\
         exports.teardownPlugin = () => { console.log('teardown') }\n",
    )
    .unwrap();
    let config = dir.path().join("pf.toml");
    std::fs::write(
        &config,
        "[input]\npath = \"e.jsonl\"\n[output]\nevents = \"out/e.jsonl\"\nlogs = \"out/logs.jsonl\"\n[state]\nmemory = true\n\
         [runtime]\nbatch_size = 50\ninstance_memory_budget_mb = 1\n[[plugins]]\nid = \"b\"\npath = \"ballast\"\n",
    )
    .unwrap();
    let out = Command::new(pluginflow_bin()).args(["run", "-w", "2", "--no-progress"]).arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let line = stderr.lines().find(|l| l.contains("plugin instances:")).unwrap_or_else(|| panic!("{stderr}"));
    let numbers: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    let (created, evicted) = (numbers[0], numbers[1]);
    assert!(evicted > 100 && created > 300, "{line}");
    let events = read_json_lines(&dir.path().join("out/e.jsonl"));
    let mut uuids: Vec<&str> = events.iter().map(|e| e["uuid"].as_str().unwrap()).collect();
    uuids.sort_unstable();
    uuids.dedup();
    assert_eq!(uuids.len(), 3000, "every event written once");
    assert!(events.iter().all(|e| e["properties"]["seen"] == true), "every event went through its plugin");
    let teardowns = std::fs::read_to_string(dir.path().join("out/logs.jsonl")).unwrap().matches("\"teardown\"").count() as u64;
    assert_eq!(teardowns, created, "every instance torn down once: {line}");
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
