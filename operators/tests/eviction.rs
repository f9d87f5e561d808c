//! A worker's instance budget: idle teams' instances are torn down, least recently used first,
//! when their QuickJS heaps outgrow `WorkerPlace::instance_budget`, and come back fresh.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::plugin;
use operators::plugin::worker::{PluginNotice, PluginSpec, WorkerPlace, WorkerPlugins};
use operators::plugin::{HostServices, Limits, MemoryLogSink, PluginDefinition};
use state::MemoryStore;

/// Counts events in `global` (reset by `setupPlugin`), holds ~256 KB of ballast per instance, and
/// says at teardown how many events it saw.
fn counting() -> common::Fixture {
    plugin(
        "counting",
        &[(
            "index.js",
            "exports.setupPlugin = ({ global }) => { global.n = 0; global.ballast = new Array(32768).fill(0).map((_, i) => i) }\n\
             exports.processEvent = (e, { global }) => { e.properties.n = ++global.n; return e }\n\
             exports.teardownPlugin = ({ global }) => { console.log('teardown after ' + global.n) }",
        )],
    )
}

fn spec(fixture: &common::Fixture, id: &str, teams: Option<Vec<i64>>) -> PluginSpec {
    PluginSpec {
        id: id.into(),
        def: PluginDefinition::load(&fixture.path()).unwrap(),
        teams,
        config: Default::default(),
        attachments: Default::default(),
        order: 0,
    }
}

fn worker(specs: Vec<PluginSpec>, logs: Arc<MemoryLogSink>, budget: usize) -> WorkerPlugins {
    let services = HostServices::new(Arc::new(MemoryStore::new()), None, logs, Duration::from_secs(5));
    let place = WorkerPlace { instance_budget: budget, ..WorkerPlace::default() };
    WorkerPlugins::new(Limits::default(), Arc::new(specs), services).unwrap().with_place(place)
}

/// One event of `team` through the chain; the `n` the plugin gave it.
fn send(w: &mut WorkerPlugins, team: i64) -> i64 {
    let json = format!(r#"{{"uuid":"u","event":"e","team_id":{team},"properties":{{}}}}"#);
    let out = w.process(team, "e", "u", &json, 0).unwrap().event.expect("kept");
    serde_json::from_str::<serde_json::Value>(&out).unwrap()["properties"]["n"].as_i64().unwrap()
}

/// Teams torn down so far, in order.
fn torn_down(logs: &MemoryLogSink) -> Vec<i64> {
    logs.entries().into_iter().filter(|e| e.message.starts_with("teardown after")).map(|e| e.team_id.unwrap()).collect()
}

/// The QuickJS heap of one instance of the `counting` plugin, measured.
fn one_instance_heap(fx: &common::Fixture) -> usize {
    let mut w = worker(vec![spec(fx, "c", None)], Arc::new(MemoryLogSink::default()), 0);
    send(&mut w, 1);
    w.memory_used()
}

/// A worker with one configuration, for every team, whose `teardownPlugin` never returns, and
/// calls limited to 200 ms; with the instance `budget` (0: none).
fn hanging_teardown(fx: &common::Fixture, budget: usize) -> WorkerPlugins {
    let services = HostServices::new(Arc::new(MemoryStore::new()), None, Arc::new(MemoryLogSink::default()), Duration::from_secs(5));
    let limits = Limits { call_timeout: Duration::from_millis(200), ..Limits::default() };
    let place = WorkerPlace { instance_budget: budget, ..WorkerPlace::default() };
    WorkerPlugins::new(limits, Arc::new(vec![spec(fx, "h", None)]), services).unwrap().with_place(place)
}

const HANGING: &str = "exports.processEvent = (e) => e\nexports.teardownPlugin = () => { for (;;) {} }";

fn counts(w: &mut WorkerPlugins) -> (u64, u64) {
    w.take_notices().into_iter().fold((0, 0), |(c, e), n| match n {
        PluginNotice::Instances { created, evicted } => (c + created, e + evicted),
        _ => (c, e),
    })
}

#[test]
fn least_recently_used_teams_are_evicted_over_the_budget_and_come_back_fresh() {
    let fx = counting();
    // One instance's heap, measured: the budget is five and a half of them.
    let per_instance = one_instance_heap(&fx);
    assert!(per_instance > 200_000, "the ballast counts: {per_instance} bytes");
    let budget = per_instance * 11 / 2;
    let logs = Arc::new(MemoryLogSink::default());
    let mut w = worker(vec![spec(&fx, "c", None)], logs.clone(), budget);

    // Five teams fit; team 1 is used again, so team 2 is now the least recently used.
    for team in 1..=5 {
        assert_eq!(send(&mut w, team), 1);
        w.maintain();
    }
    assert_eq!(send(&mut w, 1), 2, "team 1's instance is the same one");
    w.maintain();
    assert!(torn_down(&logs).is_empty(), "under the budget nothing goes");
    assert_eq!(counts(&mut w), (5, 0));

    // A sixth team: over the budget, the oldest go until the heap is under 90% of it.
    assert_eq!(send(&mut w, 6), 1);
    w.maintain();
    assert!(w.memory_used() <= budget, "{} > {budget}", w.memory_used());
    let gone = torn_down(&logs);
    let lru_order = [2, 3, 4, 5, 1, 6];
    assert!(!gone.is_empty() && gone[..] == lru_order[..gone.len()], "evicted {gone:?}, least recently used first");
    assert!(!gone.contains(&6) && !gone.contains(&1), "{gone:?}");
    let (created, evicted) = counts(&mut w);
    assert_eq!((created, evicted), (1, gone.len() as u64));
    assert_eq!(w.instance_count(), 6 - gone.len());

    // An evicted team comes back with a new instance: setupPlugin again, `global` from scratch.
    assert_eq!(send(&mut w, 2), 1);
    assert_eq!(counts(&mut w).0, 1);
    // Its teardown said what it had seen.
    assert!(logs.entries().iter().any(|e| e.team_id == Some(2) && e.message == "teardown after 1"));

    // Many teams, one event each: the heap stays within the budget at every epoch boundary.
    for team in 100..160 {
        send(&mut w, team);
        w.maintain();
        assert!(w.memory_used() <= budget, "team {team}: {} > {budget}", w.memory_used());
    }
    let (created, evicted) = counts(&mut w);
    assert_eq!(created, 60);
    assert!(evicted >= 54, "{evicted}");
    w.teardown_all();
    // Every instance ever created was torn down exactly once, by eviction or at the end.
    assert_eq!(torn_down(&logs).len(), 6 + 1 + 60);
}

#[test]
fn teams_with_scheduled_tasks_are_never_evicted() {
    let fx = counting();
    let ticking = plugin("ticking", &[("index.js", "exports.runEveryMinute = () => {}\nexports.processEvent = (e) => e")]);
    let logs = Arc::new(MemoryLogSink::default());
    // A budget of one byte: every team that can go, goes.
    let mut w = worker(vec![spec(&fx, "c", None), spec(&ticking, "t", Some(vec![7]))], logs.clone(), 1);
    for team in [7, 8, 9, 7, 10] {
        send(&mut w, team);
        w.maintain();
    }
    let gone = torn_down(&logs);
    assert_eq!(gone, [8, 9, 10], "team 7 runs a scheduled task: kept");
    assert_eq!(send(&mut w, 7), 3, "team 7's instance was never replaced");
}

/// What `teardownPlugin` captures when its instance is evicted is one hop deeper than the
/// deepest event the instance handled, so evictions cannot feed a capture loop forever; at the
/// end of a run it is handed over too (not left in the instance).
#[test]
fn teardown_captures_at_an_eviction_count_hops_and_none_are_left_behind_at_the_end() {
    let fx = plugin(
        "loopy",
        &[(
            "index.js",
            "exports.setupPlugin = ({ global }) => { global.ballast = new Array(32768).fill(0).map((_, i) => i) }\n\
             exports.processEvent = (e) => e\n\
             exports.teardownPlugin = () => { posthog.capture('from_teardown', {}) }",
        )],
    );
    let mut w = worker(vec![spec(&fx, "l", None)], Arc::new(MemoryLogSink::default()), 1);
    let hops_of_captures = |w: &mut WorkerPlugins| w.take_captured().into_iter().map(|(_, hops)| hops).collect::<Vec<_>>();
    let input = |w: &mut WorkerPlugins, team: i64| {
        let json = format!(r#"{{"uuid":"u","event":"e","team_id":{team},"properties":{{}}}}"#);
        w.process(team, "e", "u", &json, 0).unwrap();
    };
    // An input event (0 hops): the eviction's capture is at 1.
    input(&mut w, 1);
    w.maintain();
    assert_eq!(hops_of_captures(&mut w), [1]);
    // The team's next instance handles that capture (1 hop): its eviction's capture is at 2.
    let json = r#"{"uuid":"c","event":"from_teardown","team_id":1,"properties":{}}"#;
    w.process(1, "from_teardown", "c", json, 1).unwrap();
    w.maintain();
    assert_eq!(hops_of_captures(&mut w), [2]);
    // At the end of a run.
    input(&mut w, 2);
    w.teardown_all();
    assert_eq!(hops_of_captures(&mut w), [1], "teardown_all hands over what teardown captured");
}

/// Instances made outside an event (a job, a retry, a preload) can be evicted too, and the team
/// an event is using is not the one that pays for them.
#[test]
fn instances_made_outside_events_are_evicted_too() {
    let fx = counting();
    let logs = Arc::new(MemoryLogSink::default());
    let per_instance = one_instance_heap(&fx);
    let mut w = worker(vec![spec(&fx, "c", None)], logs.clone(), per_instance * 5 / 2);
    // Three instances made as a job or a retry would (no event), then events of team 100.
    for team in [7, 8, 9] {
        assert!(w.instance_mut((0, team)).is_some());
    }
    for _ in 0..5 {
        send(&mut w, 100);
        w.maintain();
    }
    let gone = torn_down(&logs);
    assert!(gone.contains(&7) && !gone.contains(&100), "the idle instances go, not the busy team's: {gone:?}");
    assert_eq!(send(&mut w, 100), 6, "team 100 kept its one instance");
}

/// A plugin disabled for a team stays disabled when its instance is evicted and made again.
#[test]
fn an_eviction_does_not_undo_a_disabling() {
    let fx = plugin(
        "failing",
        &[(
            "index.js",
            "exports.setupPlugin = () => { console.log('setup ran'); throw new Error('no') }\n\
             exports.processEvent = (e) => { e.properties.n = 1; return e }",
        )],
    );
    let logs = Arc::new(MemoryLogSink::default());
    let mut w = worker(vec![spec(&fx, "f", None)], logs.clone(), 1);
    let json = r#"{"uuid":"u","event":"e","team_id":1,"properties":{}}"#;
    for _ in 0..3 {
        let out = w.process(1, "e", "u", json, 0).unwrap().event.unwrap();
        assert!(!out.contains("\"n\""), "a disabled plugin does not run: {out}");
        w.maintain();
    }
    let setups = logs.entries().iter().filter(|e| e.message == "setup ran").count();
    assert_eq!(setups, 1, "setupPlugin ran once; the re-created instances were disabled at once");
    assert!(counts(&mut w).1 >= 2, "it was evicted in between");
}

/// A configuration change tears down every team's instance; a teardown that hangs costs one call
/// deadline, not one per team.
#[test]
fn a_hanging_teardown_stalls_a_change_once_not_once_per_team() {
    use operators::plugin::worker::ConfigChange;
    let fx = plugin("hang", &[("index.js", HANGING)]);
    let mut w = hanging_teardown(&fx, 0);
    for team in 1..=8 {
        let json = format!(r#"{{"uuid":"u","event":"e","team_id":{team},"properties":{{}}}}"#);
        w.process(team, "e", "u", &json, 0).unwrap();
    }
    let started = std::time::Instant::now();
    w.apply_config(ConfigChange::Upsert(spec(&fx, "h", None)), 2);
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1200), "8 hanging teardowns took {took:?}");
    assert_eq!(w.instance_count(), 0, "every old instance is gone");
}

/// The same at evictions: once a configuration's teardown ran out of time, its instances are
/// evicted without it.
#[test]
fn a_hanging_teardown_stalls_evictions_once() {
    let fx = plugin("hang", &[("index.js", HANGING)]);
    let mut w = hanging_teardown(&fx, 1);
    let started = std::time::Instant::now();
    for team in 1..=8 {
        let json = format!(r#"{{"uuid":"u","event":"e","team_id":{team},"properties":{{}}}}"#);
        w.process(team, "e", "u", &json, 0).unwrap();
        w.maintain();
    }
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1200), "8 evictions with a hanging teardown took {took:?}");
    assert_eq!(counts(&mut w).1, 8, "all evicted");
}
