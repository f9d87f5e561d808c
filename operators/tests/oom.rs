//! Out of memory, every way we could think of, in heaps small enough to fill in milliseconds.
//! Each test ends with fresh instances working, and the whole file also runs under valgrind's
//! memcheck in `scripts/test.sh` (a refused allocation is where an engine's error paths are
//! least tested; memcheck sees a bad read or write, or a corrupted malloc list, the moment it
//! happens).

mod common;

use std::time::Duration;

use common::{Host, event, plugin, process};
use operators::plugin::{ErrorKind, Limits};
use serde_json::json;

/// Small heaps: each allocation loop reaches the limit in a few milliseconds.
fn small(limit_kib: usize) -> Host {
    Host::with_limits(Limits { call_timeout: Duration::from_secs(20), memory_limit_bytes: limit_kib << 10, ..Limits::default() })
}

/// Ways to fill a heap, each a plugin body run on every call (some keep what they make).
const HOGS: &[(&str, &str)] = &[
    ("arrays", "const a = []; for (;;) a.push(new Array(1000).fill(Math.random()))"),
    ("strings", "let s = 'x'; for (;;) s = s + s + Math.random()"),
    ("ropes", "const parts = []; let s = ''; for (let i = 0; ; i++) { s += String(i); if (i % 1000 === 0) parts.push(s) }"),
    ("shapes", "const o = {}; for (let i = 0; ; i++) o['k' + i] = i"),
    ("maps", "const m = new Map(); for (let i = 0; ; i++) m.set('k' + i, { i })"),
    ("sets", "const s = new Set(); for (let i = 0; ; i++) s.add(i + 0.5)"),
    ("typed", "const t = []; for (;;) t.push(new Uint8Array(65536))"),
    ("huge_array", "const a = new Array(1e9).fill(0)"),
    ("repeat", "const s = 'abc'.repeat(1 << 28)"),
    (
        "json",
        "const t = JSON.stringify(new Array(20000).fill({ a: [1, 2, 3], b: 'xyz' })); const all = []; for (;;) all.push(JSON.parse(t))",
    ),
    ("regexp", "const s = 'a'.repeat(100000); const all = []; for (;;) all.push(s.match(/a/g))"),
    ("closures", "const fs = []; for (let i = 0; ; i++) fs.push(() => i + fs.length)"),
    ("bound_functions", "const fs = []; for (let i = 0; ; i++) fs.push(function (a) { return a + i }.bind(null, i))"),
    ("promises", "let p = Promise.resolve(); const all = []; for (let i = 0; ; i++) { p = p.then(() => i); all.push(p) }"),
    ("bigint", "let b = 1n; for (;;) b = b * 123456789012345678901234567890n"),
    ("join", "const a = new Array(1 << 20).fill('abcdefgh'); const all = []; for (;;) all.push(a.join(','))"),
    ("kept", "global.k = global.k || []; for (;;) global.k.push({ x: Math.random(), y: 'y'.repeat(100) })"),
    ("catch_and_go_on", "try { const a = []; for (;;) a.push(new Array(1000).fill(1)) } catch (e) { return event }"),
    ("error_objects", "const a = []; for (;;) a.push(new Error('x'.repeat(1000)))"),
    ("recursion_with_allocation", "function f(n) { const big = new Array(100).fill(n); return f(n + 1) + big.length } f(0)"),
];

#[test]
fn every_way_of_running_out_fails_the_call_and_nothing_else() {
    let host = small(4096);
    for (name, body) in HOGS {
        let fx =
            plugin(name, &[("index.js", &format!("exports.processEvent = async (event, {{ global }}) => {{ {body}; return event }}"))]);
        let mut p = host.ready(&fx);
        for round in 0..2 {
            match p.process_event_json(&event().to_string()) {
                Err(e) if e.kind == ErrorKind::Disabled => break,
                Err(e) => {
                    assert!(e.name == "OutOfMemory" || e.name == "RangeError" || e.name == "InternalError", "{name} round {round}: {e:?}")
                }
                Ok(_) => panic!("{name} round {round}: a call that ran out of memory succeeded"),
            }
        }
        drop(p);
        // A new instance of a well-behaved plugin is unaffected.
        let ok = plugin("ok", &[("index.js", "exports.processEvent = (e) => { e.properties.ok = true; return e }")]);
        assert_eq!(process(&mut host.ready(&ok)).unwrap()["properties"]["ok"], true, "after {name}");
    }
}

#[test]
fn loading_in_a_heap_too_small_for_a_context_fails_cleanly_at_every_point() {
    // From a heap too small for anything up to one that fits, in steps: JS_NewContext, the
    // prelude and the plugin's top level each fail at many different allocations.
    let fx = plugin(
        "tiny",
        &[(
            "index.js",
            "const table = new Array(2000).fill('entry'); exports.processEvent = (e) => { e.properties.n = table.length; return e }",
        )],
    );
    let mut loaded = 0;
    for kib in (64..=1536).step_by(24) {
        let host = small(kib);
        match host.load(&fx, json!({})) {
            Ok(mut p) => {
                loaded += 1;
                // It may still run out in a call; it must not crash.
                let _ = p.setup();
                let _ = p.process_event_json(&event().to_string());
            }
            Err(e) => {
                let text = e.to_string();
                assert!(text.contains("tiny"), "{kib} KiB: {text}");
            }
        }
    }
    assert!(loaded > 0, "no heap size was enough to load");
}

#[test]
fn many_instances_each_in_its_own_heap() {
    // What once ran out in a shared heap: hundreds of instances of a chain's plugins, one per
    // team. Each has its own runtime now; all load and run.
    let host = small(8192);
    let fx = plugin(
        "hello",
        &[(
            "index.js",
            "exports.processEvent = (e, { global }) => { global.n = (global.n || 0) + 1; e.properties.hello = global.n; return e }",
        )],
    );
    let mut instances: Vec<_> = (0..300).map(|team| host.load_as(&fx, json!({}), &format!("c{team}"), Some(team)).unwrap()).collect();
    for (team, p) in instances.iter_mut().enumerate() {
        let mut ev = event();
        ev["team_id"] = json!(team);
        let out = p.process_event_json(&ev.to_string()).unwrap().unwrap();
        assert!(out.contains("\"hello\":1"), "{out}");
    }
    let used = host.runtime.memory_used();
    assert!(used > 0);
    drop(instances);
    assert_eq!(host.runtime.memory_used(), 0, "every instance's heap is given back");
}
