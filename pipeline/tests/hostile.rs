//! The hostile-plugin suite: each attack is a plugin of its own, placed in team 1's chain between
//! well-behaved plugins (one holding a secret), run through `pluginflow run` over events of two
//! teams. Every run is compared with a run of the same chains without the attacker (the
//! oracle): team 2's output must be byte for byte the same, team 1's neighbours must have done
//! exactly what they did there, no secret may appear anywhere, and every event must be
//! accounted for (in + captured = out + dropped + dead letters). docs/security.md lists the
//! attacks and the guarantees.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

/// The vault plugin's secret config value.
const SECRET: &str = "s3cr3t-7f1c9a2e-token";

/// Events per team.
const PER_TEAM: usize = 12;

fn write(dir: &Path, name: &str, plugin_json: &Value, index: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("plugin.json"), plugin_json.to_string()).unwrap();
    std::fs::write(p.join("index.js"), index).unwrap();
    p
}

/// The well-behaved neighbours: `before` (first), `vault` (holds a secret, puts it on the event
/// for a moment, logs it, takes it off again) and `counter` (last, counts in its cache and its
/// `global`).
fn neighbours(dir: &Path) {
    write(
        dir,
        "before",
        &json!({"name": "before"}),
        "exports.processEvent = async (e, { cache }) => { e.properties.before = await cache.incr('seen'); return e }",
    );
    write(
        dir,
        "vault",
        &json!({"name": "vault", "config": [{"key": "token", "type": "string", "secret": true, "required": true}]}),
        "const { createHash } = require('crypto')\n\
         exports.processEvent = (e, { config }) => {\n\
           e.properties.tmp = config.token\n\
           e.properties.vault = createHash('sha256').update(config.token).digest('hex').slice(0, 12)\n\
           delete e.properties.tmp\n\
           console.log('vault used ' + config.token + ' for ' + e.uuid)\n\
           return e\n\
         }",
    );
    write(
        dir,
        "counter",
        &json!({"name": "counter"}),
        "exports.processEvent = async (e, { cache, global }) => {\n\
           global.calls = (global.calls || 0) + 1\n\
           e.properties.count = await cache.incr('count')\n\
           e.properties.calls = global.calls\n\
           return e\n\
         }",
    );
}

/// Events of teams 1 and 2, interleaved.
fn input(dir: &Path) -> PathBuf {
    let mut lines = String::new();
    for i in 0..PER_TEAM {
        for team in [1, 2] {
            let ev = json!({"uuid": format!("t{team}-{i}"), "event": "$pageview", "distinct_id": format!("d{i}"), "team_id": team,
                            "properties": {"email": format!("user{i}@example.test"), "i": i}});
            lines.push_str(&ev.to_string());
            lines.push('\n');
        }
    }
    let path = dir.join("in.jsonl");
    std::fs::write(&path, lines).unwrap();
    path
}

struct Run {
    status: Option<i32>,
    stderr: String,
    events: Vec<Value>,
    dead: Vec<Value>,
    logs: Vec<Value>,
    /// Every output file's text, for the secret check.
    all_text: String,
    summary: BTreeMap<String, u64>,
}

impl Run {
    fn team(&self, team: i64) -> BTreeMap<String, Value> {
        self.events.iter().filter(|e| e["team_id"] == team).map(|e| (e["uuid"].as_str().unwrap().to_string(), e.clone())).collect()
    }

    fn count(&self, key: &str) -> u64 {
        *self.summary.get(key).unwrap_or_else(|| panic!("summary has no '{key}': {}", self.stderr))
    }

    fn plugin_errors(&self, plugin: &str) -> Vec<String> {
        self.logs
            .iter()
            .filter(|l| l["plugin"] == plugin && l["type"] == "ERROR" && l["source"] == "PLUGIN")
            .map(|l| l["message"].as_str().unwrap().to_string())
            .collect()
    }
}

fn read_lines(path: &Path) -> (Vec<Value>, String) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let values =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: not JSON ({e}): {l}", path.display()))).collect();
    (values, text)
}

/// Runs `pluginflow run` with the neighbours and, when given, `hostile` (source) in team 1's
/// chain between `before` and `vault`.
fn run(hostile: Option<&str>, runtime: &str) -> Run {
    run_with(hostile, runtime, &json!({"name": "hostile"}))
}

fn run_with(hostile: Option<&str>, runtime: &str, hostile_json: &Value) -> Run {
    run_at(hostile, runtime, hostile_json, 2)
}

/// `order` places the attacker: 0 runs it first (its realm would build the event if realms were
/// shared), 2 between `before` and `vault`.
fn run_at(hostile: Option<&str>, runtime: &str, hostile_json: &Value, order: i64) -> Run {
    let dir = tempfile::tempdir().unwrap();
    neighbours(dir.path());
    input(dir.path());
    let mut plugins = String::from("[[plugins]]\nid = \"b\"\npath = \"before\"\norder = 1\n");
    if let Some(src) = hostile {
        write(dir.path(), "hostile", hostile_json, src);
        plugins.push_str(&format!("[[plugins]]\nid = \"h\"\npath = \"hostile\"\norder = {order}\nteams = [1]\n"));
    }
    plugins.push_str(&format!("[[plugins]]\nid = \"v\"\npath = \"vault\"\norder = 3\nconfig = {{ token = \"{SECRET}\" }}\n"));
    plugins.push_str("[[plugins]]\nid = \"c\"\npath = \"counter\"\norder = 4\n");
    let config = format!(
        "[input]\npath = \"in.jsonl\"\n[output]\nevents = \"out/events.jsonl\"\ndead_letters = \"out/dead.jsonl\"\nlogs = \"out/logs.jsonl\"\napp_metrics = \"out/metrics.jsonl\"\n[state]\nmemory = true\n[runtime]\nbatch_size = 8\ncall_timeout_ms = 1000\n{runtime}\n{plugins}"
    );
    std::fs::write(dir.path().join("pf.toml"), config).unwrap();
    let out: Output =
        Command::new(env!("CARGO_BIN_EXE_pluginflow")).args(["run", "--no-progress", "pf.toml"]).current_dir(dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let (events, t1) = read_lines(&dir.path().join("out/events.jsonl"));
    let (dead, t2) = read_lines(&dir.path().join("out/dead.jsonl"));
    let (logs, t3) = read_lines(&dir.path().join("out/logs.jsonl"));
    let mut summary = BTreeMap::new();
    for line in stderr.lines() {
        for (label, key) in [
            ("events in:", "in"),
            ("events out:", "out"),
            ("dropped by plugins:", "dropped"),
            ("dead-lettered:", "dead"),
            ("captured by plugins:", "captured"),
        ] {
            if let Some(rest) = line.trim().strip_prefix(label) {
                summary.insert(key.to_string(), rest.trim().parse().unwrap());
            }
        }
    }
    Run { status: out.status.code(), stderr: stderr.clone(), events, dead, logs, all_text: format!("{t1}{t2}{t3}{stderr}"), summary }
}

/// What every attack must leave intact; `team1_exact` when the attacker's run must leave team
/// 1's neighbour fields exactly as in the oracle (false when it legitimately adds events that
/// the neighbours also count, e.g. captures).
fn assert_contained(attack: &Run, oracle: &Run, team1_exact: bool) {
    assert_eq!(attack.status, Some(0), "the run must end normally: {}", attack.stderr);
    // Every event is accounted for.
    assert_eq!(
        attack.count("in") + attack.count("captured"),
        attack.count("out") + attack.count("dropped") + attack.count("dead"),
        "in + captured = out + dropped + dead letters: {}",
        attack.stderr
    );
    assert_eq!(attack.events.len() as u64, attack.count("out"));
    assert_eq!(attack.dead.len() as u64, attack.count("dead"));
    // The secret never leaves the vault: not in events, dead letters, logs or stderr.
    assert!(!attack.all_text.contains(SECRET), "the vault's secret leaked");
    assert!(
        attack.logs.iter().any(|l| l["plugin"] == "vault" && l["message"].as_str().unwrap().contains("POSTHOG SECRET FIELD")),
        "vault logged (masked)"
    );
    // Team 2 never sees the attacker: byte for byte what the oracle wrote.
    assert_eq!(attack.team(2), oracle.team(2), "team 2's events differ from the run without the attacker");
    // Team 1: every input event is there, and the neighbours did their work.
    let (got, want) = (attack.team(1), oracle.team(1));
    for (uuid, w) in &want {
        let g = got.get(uuid).unwrap_or_else(|| panic!("event {uuid} of team 1 is missing: {}", attack.stderr));
        assert_eq!(g["team_id"], 1, "{uuid}: team_id");
        assert_eq!(g["event"], w["event"], "{uuid}: event name");
        assert_eq!(g["properties"]["email"], w["properties"]["email"], "{uuid}");
        assert_eq!(g["properties"]["vault"], w["properties"]["vault"], "{uuid}: the vault's work");
        assert!(g["properties"].get("tmp").is_none(), "{uuid}: the vault's temporary field");
        let succeeded: Vec<&str> = g["properties"]["$plugins_succeeded"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        for label in ["before (b)", "vault (v)", "counter (c)"] {
            assert!(succeeded.contains(&label), "{uuid}: {label} did not succeed: {g}");
        }
        if team1_exact {
            for key in ["before", "count", "calls"] {
                assert_eq!(g["properties"][key], w["properties"][key], "{uuid}: {key}");
            }
        }
    }
    // No event became a bare `null` (or anything but an object).
    assert!(attack.events.iter().all(Value::is_object));
}

fn oracle() -> Run {
    let r = run(None, "");
    assert_eq!(r.status, Some(0), "{}", r.stderr);
    assert_eq!(r.events.len(), 2 * PER_TEAM);
    r
}

/// Team 1's events that list the attacker as failed, and the messages it failed with.
fn attacker_failures(r: &Run) -> (usize, Vec<String>) {
    let failed = r
        .team(1)
        .values()
        .filter(|e| e["properties"]["$plugins_failed"].as_array().is_some_and(|a| a.iter().any(|v| v == "hostile (h)")))
        .count();
    (failed, r.plugin_errors("hostile"))
}

#[test]
fn a_setter_on_object_prototype_steals_nothing_and_pollution_stays_home() {
    // First in the chain: with realms shared, its realm would have built every event object.
    let attack = run_at(
        Some(
            "const stolen = []\n\
             Object.defineProperty(Object.prototype, 'tmp', { set(v) { stolen.push(v); console.log('stolen ' + v) }, get() { return undefined }, configurable: true })\n\
             Object.prototype.polluted = 'yes'\n\
             Array.prototype.evil = 1\n\
             exports.processEvent = (e) => { e.properties.stolen = stolen.length; return e }",
        ),
        "",
        &json!({"name": "hostile"}),
        0,
    );
    assert_contained(&attack, &oracle(), true);
    for e in attack.team(1).values() {
        assert_eq!(e["properties"]["stolen"], 0, "the attacker saw another plugin's assignment: {e}");
    }
    assert!(!attack.all_text.contains("polluted") && !attack.all_text.contains("\"evil\""), "pollution crossed realms");
}

#[test]
fn the_realm_escape_finds_no_host_internals_and_no_neighbour() {
    let attack = run(
        Some(
            "exports.processEvent = (e, meta) => {\n\
               let g = globalThis\n\
               try { g = e.constructor.constructor('return this')() } catch (err) { e.properties.ctor = err.name }\n\
               const names = ['__pf', '__host', 'host', 'pf', 'processEvent']\n\
               const found = names.filter((k) => typeof g[k] !== 'undefined' || typeof globalThis[k] !== 'undefined')\n\
               let caller = 'none'\n\
               try { caller = String(exports.processEvent.caller) } catch (err) { caller = 'threw' }\n\
               e.properties.escape = found.join(',') || 'none'\n\
               e.properties.caller = caller\n\
               e.properties.meta = Object.keys(meta).sort().join(',')\n\
               return e\n\
             }",
        ),
        "",
    );
    assert_contained(&attack, &oracle(), true);
    for e in attack.team(1).values() {
        assert_eq!(e["properties"]["escape"], "none", "{e}");
        assert_eq!(e["properties"]["ctor"], "EvalError", "the Function constructor is closed: {e}");
        assert!(
            e["properties"]["caller"] == "threw" || e["properties"]["caller"] == "null" || e["properties"]["caller"] == "undefined",
            "{e}"
        );
        assert_eq!(e["properties"]["meta"], "attachments,cache,config,geoip,global,jobs,storage", "{e}");
    }
}

#[test]
fn getters_and_proxies_in_a_result_are_refused_without_running() {
    // Each getter would spin for ever if the host ran it; the refusals are TypeErrors, not
    // timeouts, which shows none of them ran.
    let attack = run(
        Some(
            "let n = 0\n\
             exports.processEvent = (e) => {\n\
               n++\n\
               if (n % 3 === 0) { Object.defineProperty(e, 'team_id', { get() { for (;;) {} }, enumerable: true }); return e }\n\
               if (n % 3 === 1) { let k = 0; return new Proxy(e, { get(t, key) { if (key === 'team_id') { k++; return k === 1 ? 1 : 2 } return t[key] }, ownKeys(t) { for (;;) {} } }) }\n\
               Object.defineProperty(e.properties, 'email', { get() { throw new Error('boom') }, enumerable: true })\n\
               return e\n\
             }",
        ),
        "",
    );
    assert_contained(&attack, &oracle(), true);
    let (failed, errors) = attacker_failures(&attack);
    assert_eq!(failed, PER_TEAM, "every call of the attacker failed");
    assert_eq!(errors.len(), PER_TEAM);
    for message in &errors {
        assert!(message.contains("TypeError"), "{message}");
        assert!(!message.contains("Timeout"), "a getter ran: {message}");
        assert!(
            message.contains("event.team_id is an accessor")
                || message.contains("a Proxy")
                || message.contains("event.properties.email is an accessor"),
            "{message}"
        );
    }
}

#[test]
fn to_json_cycles_bigints_and_functions_fail_the_call_not_the_event() {
    let attack = run(
        Some(
            "let n = 0\n\
             exports.processEvent = (e) => {\n\
               n++\n\
               const kind = n % 4\n\
               if (kind === 0) e.toJSON = () => ({ uuid: e.uuid, team_id: 1, event: 'pwned' })\n\
               if (kind === 1) e.properties.self = e\n\
               if (kind === 2) e.properties.n = 10n\n\
               if (kind === 3) e.properties.fn = function () {}\n\
               return e\n\
             }",
        ),
        "",
    );
    assert_contained(&attack, &oracle(), true);
    let (failed, errors) = attacker_failures(&attack);
    assert_eq!(failed, PER_TEAM);
    let all = errors.join("\n");
    for what in [
        "event.toJSON is a function",
        "event.properties.self is the object that contains it (a cycle)",
        "event.properties.n is a BigInt",
        "event.properties.fn is a function",
    ] {
        assert!(all.contains(what), "no error says '{what}':\n{all}");
    }
    assert!(attack.events.iter().all(|e| e["event"] == "$pageview"), "toJSON replaced an event");
}

#[test]
fn changing_the_team_is_reverted_and_blamed_on_the_attacker_only() {
    let attack = run(Some("exports.processEvent = (e) => { e.team_id = 2; e.properties.moved = true; return e }"), "");
    assert_contained(&attack, &oracle(), true);
    let (failed, errors) = attacker_failures(&attack);
    assert_eq!(failed, PER_TEAM);
    assert!(errors.iter().all(|m| m.contains("Plugin tried to change event.team_id")), "{errors:?}");
    // PostHog kept the returned object with its team restored.
    assert!(attack.team(1).values().all(|e| e["properties"]["moved"] == true));
    assert_eq!(attack.team(2).len(), PER_TEAM, "no event moved to team 2");
}

#[test]
fn a_heap_hoarder_fails_and_is_disabled_alone() {
    let attack = run(
        Some(
            "exports.processEvent = (e, { global }) => {\n\
               global.hoard = global.hoard || []\n\
               try { for (;;) global.hoard.push('x'.repeat(10000) + Math.random()) } catch (err) { /* swallowed */ }\n\
               e.properties.hoarded = global.hoard.length\n\
               return e\n\
             }",
        ),
        "memory_limit_mb = 16",
    );
    assert_contained(&attack, &oracle(), true);
    let (failed, errors) = attacker_failures(&attack);
    assert!(failed >= 1, "the swallowed out-of-memory error still fails the call");
    assert!(errors.iter().all(|m| m.contains("OutOfMemory")), "{errors:?}");
    assert!(attack.stderr.contains("disabled: hostile (h) team 1"), "{}", attack.stderr);
    assert!(attack.team(1).values().all(|e| e["properties"].get("hoarded").is_none()), "a result of an out-of-memory call was kept");
}

#[test]
fn endless_loops_and_microtask_loops_time_out_and_the_plugin_is_disabled() {
    for (src, must_time_out) in [
        ("exports.processEvent = (e) => { for (;;) {} }", true),
        // A microtask loop that keeps nothing alive: only the deadline can stop it.
        ("exports.processEvent = (e) => { const loop = () => { Promise.resolve().then(loop) }; loop(); return e }", true),
        // One that chains every promise on the next also grows the heap: whichever limit it
        // reaches first ends the call.
        ("exports.processEvent = (e) => { const loop = () => Promise.resolve().then(loop); loop(); return e }", false),
    ] {
        let attack = run(Some(src), "max_timeouts = 3");
        assert_contained(&attack, &oracle(), true);
        let (_, errors) = attacker_failures(&attack);
        assert_eq!(errors.len(), 3, "{src}: disabled after 3 timeouts: {errors:?}");
        if must_time_out {
            assert!(errors.iter().all(|m| m.contains("TimeoutError")), "{src}: {errors:?}");
        } else {
            assert!(errors.iter().all(|m| m.contains("TimeoutError") || m.contains("OutOfMemory")), "{src}: {errors:?}");
        }
        assert!(
            attack.stderr.contains("disabled: hostile (h) team 1") && attack.stderr.contains("ran out of memory 3 times"),
            "{}",
            attack.stderr
        );
    }
}

#[test]
fn a_capture_flood_is_cut_per_call_and_per_batch() {
    let attack = run(
        Some(
            "exports.processEvent = (e) => { let i = 0; try { for (; i < 1000; i++) posthog.capture('spam', { i }) } catch (err) { e.properties.refused_at = i } return e }",
        ),
        "max_captures_per_call = 5\nmax_captures_per_epoch = 8\nmax_capture_hops = 2",
    );
    // Captured events are team 1's and go through its chain: the neighbours count them too.
    assert_contained(&attack, &oracle(), false);
    let batches = (2 * PER_TEAM).div_ceil(8) as u64;
    assert!(attack.count("captured") > 0);
    // At most 8 per batch read: captured events run in the batch of the event that captured
    // them, under its allowance, however deep they go.
    assert!(attack.count("captured") <= 8 * batches, "captured {}: {}", attack.count("captured"), attack.stderr);
    assert!(attack.team(1).values().any(|e| e["properties"]["refused_at"] == 5), "the 6th capture of a call throws");
}

#[test]
fn log_and_job_floods_are_cut_per_call() {
    let attack = run_with(
        Some(
            "exports.jobs = { x: () => {} }\n\
             exports.processEvent = async (e, { jobs }) => {\n\
               for (let i = 0; i < 20; i++) console.log('y'.repeat(100000))\n\
               let queued = 0\n\
               try { for (; queued < 1000; queued++) await jobs.x({}).runNow() } catch (err) { e.properties.jobs_refused_at = queued }\n\
               return e\n\
             }",
        ),
        "max_log_bytes_per_call = 4096\nmax_jobs_per_call = 7",
        &json!({"name": "hostile"}),
    );
    assert_contained(&attack, &oracle(), true);
    let logged: usize = attack
        .logs
        .iter()
        .filter(|l| l["plugin"] == "hostile" && l["source"] == "CONSOLE")
        .map(|l| l["message"].as_str().unwrap().len())
        .sum();
    assert!(logged <= PER_TEAM * (4096 + 200), "console output past the per-call budget: {logged} bytes");
    assert!(
        attack
            .logs
            .iter()
            .any(|l| l["plugin"] == "hostile" && l["message"].as_str().unwrap().contains("console messages of this call were dropped"))
    );
    assert!(attack.team(1).values().all(|e| e["properties"]["jobs_refused_at"] == 7), "the 8th job of a call is refused");
}

#[test]
fn events_that_cannot_enter_a_plugin_are_dead_lettered_never_passed_through() {
    // A PII filter that must see every event, and input events built to slip past it.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "pii", &json!({"name": "pii"}), "exports.processEvent = (e) => { delete e.properties.email; return e }");
    let deep = format!(
        "{{\"uuid\":\"deep\",\"event\":\"e\",\"team_id\":1,\"properties\":{{\"email\":\"a@b.test\",\"x\":{}1{}}}}}",
        "[".repeat(30_000),
        "]".repeat(30_000)
    );
    let big = format!(
        "{{\"uuid\":\"big\",\"event\":\"e\",\"team_id\":1,\"properties\":{{\"email\":\"a@b.test\",\"pad\":\"{}\"}}}}",
        "z".repeat(2 << 20)
    );
    let bad_props = "{\"uuid\":\"props\",\"event\":\"e\",\"team_id\":1,\"properties\":\"email=a@b.test\"}".to_string();
    let fine = "{\"uuid\":\"fine\",\"event\":\"e\",\"team_id\":1,\"properties\":{\"email\":\"a@b.test\"}}".to_string();
    std::fs::write(dir.path().join("in.jsonl"), [deep, big, bad_props, fine].join("\n") + "\n").unwrap();
    std::fs::write(
        dir.path().join("pf.toml"),
        "[input]\npath = \"in.jsonl\"\n[output]\nevents = \"out/events.jsonl\"\ndead_letters = \"out/dead.jsonl\"\nlogs = \"out/logs.jsonl\"\napp_metrics = \"out/m.jsonl\"\n[state]\nmemory = true\n[[plugins]]\nid = \"p\"\npath = \"pii\"\n",
    )
    .unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_pluginflow")).args(["run", "--no-progress", "pf.toml"]).current_dir(dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let events = std::fs::read_to_string(dir.path().join("out/events.jsonl")).unwrap();
    assert!(!events.contains("a@b.test"), "an email got past the filter: {:.300}", events);
    assert_eq!(events.lines().count(), 1);
    let (dead, _) = read_lines(&dir.path().join("out/dead.jsonl"));
    let reasons: Vec<&str> = dead.iter().map(|d| d["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].contains("nested deeper than runtime.max_event_depth"), "{reasons:?}");
    assert!(reasons[1].contains("more than runtime.max_event_bytes"), "{reasons:?}");
    assert!(reasons[2].contains("field 'properties' must be an object"), "{reasons:?}");
}

#[test]
fn a_result_that_is_cheap_to_build_and_costly_to_read_is_refused_quickly() {
    // A small object with many undefined properties, referenced many times: almost no text,
    // millions of properties to visit. The read has a work budget: a TypeError, not a timeout.
    let attack = run(
        Some(
            "const o = {}; for (let i = 0; i < 20000; i++) o['k' + i] = undefined\n\
             const many = new Array(100000).fill(o)\n\
             exports.processEvent = (e) => { e.properties.amp = many; return e }",
        ),
        "",
    );
    assert_contained(&attack, &oracle(), true);
    let (failed, errors) = attacker_failures(&attack);
    assert_eq!(failed, PER_TEAM);
    assert!(errors.iter().all(|m| m.contains("TypeError") && m.contains("past the work limit")), "{errors:?}");
}

#[test]
fn declaring_a_neighbours_name_does_not_give_its_cache() {
    // The attacker calls itself `counter` and rewrites the counter's key: the counter's own
    // counts (checked against the oracle) are untouched.
    let attack = run_with(
        Some(
            "exports.processEvent = async (e, { cache }) => { e.properties.stolen = await cache.get('count'); await cache.set('count', 1000000); return e }",
        ),
        "",
        &json!({"name": "counter"}),
    );
    assert_contained(&attack, &oracle(), true);
    // It only ever sees its own cache: nothing, then what it wrote itself.
    assert!(
        attack.team(1).values().all(|e| e["properties"]["stolen"].is_null() || e["properties"]["stolen"] == 1_000_000),
        "the impostor read the counter's cache"
    );
}

#[test]
fn jobs_do_not_restart_a_capture_loop() {
    // Each event enqueues a job; the job captures an event; each captured event enqueues
    // another job. The hop count travels with the job, so the loop ends at max_capture_hops.
    let attack = run_with(
        Some(
            "exports.jobs = { again: async (payload) => { await posthog.capture('echo', { depth: payload.depth + 1 }) } }\n\
             exports.processEvent = async (e, { jobs }) => { await jobs.again({ depth: e.properties.depth || 0 }).runNow(); return e }",
        ),
        "max_capture_hops = 2",
        &json!({"name": "hostile"}),
    );
    assert_contained(&attack, &oracle(), false);
    assert!(attack.count("captured") > 0);
    let too_deep = attack.dead.iter().filter(|d| d["reason"].as_str().unwrap().contains("captures deep")).count();
    assert!(too_deep > 0, "the loop reached the hop limit: {}", attack.stderr);
    let depths: Vec<u64> = attack.events.iter().filter_map(|e| e["properties"]["depth"].as_u64()).collect();
    assert!(depths.iter().all(|d| *d <= 2), "an event deeper than the hop limit went out: {depths:?}");
}
