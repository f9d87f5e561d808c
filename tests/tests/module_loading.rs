//! ES module syntax loads as under Node: each plugin of `tests/conformance/modules` (Prettier's
//! no-semicolon style and the semicolon style; `export const/let/function/class/default`,
//! renamed and re-exports, `export *`, `export * as`, `import * as`, default plus named
//! imports, a module importing itself) is imported by Node as an ES module and loaded by
//! pluginflow, and `processEvent`'s results on the same events, which list the module's own
//! export names, must be equal. Node is the oracle.

use std::path::Path;
use std::process::Command;

use pluginflow_tests::broker::pluginflow_bin;
use pluginflow_tests::{json_lines_of, repo_root};

const EVENTS: &[&str] = &[
    r#"{"event":"first","team_id":1,"uuid":"00000000-0000-4000-8000-000000000001","properties":{"n":6}}"#,
    r#"{"event":"second","team_id":1,"uuid":"00000000-0000-4000-8000-000000000002","properties":{"n":-1.5}}"#,
];

/// Node's results: the plugin copied with a `package.json` saying `"type": "module"`, imported
/// by a small script that calls `processEvent` on each event as `pluginflow try` does.
fn node(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::write(dir.join("package.json"), r#"{"type":"module"}"#).unwrap();
    let script = "const m = await import(process.argv[1] + '/index.js');\n\
                  for (const line of require('fs').readFileSync(0, 'utf8').split('\\n').filter(Boolean))\n\
                    console.log(JSON.stringify(await m.processEvent(JSON.parse(line), { config: {}, global: {} })))";
    let script = script.replace("require('fs')", "(await import('node:fs'))");
    run(Command::new("node").args(["--input-type=module", "-e", &script, dir.to_str().unwrap()]))
}

fn pluginflow(dir: &Path) -> Vec<serde_json::Value> {
    run(Command::new(pluginflow_bin()).arg("try").arg(dir))
}

fn run(cmd: &mut Command) -> Vec<serde_json::Value> {
    json_lines_of(cmd, &format!("{}\n", EVENTS.join("\n")))
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn es_modules_load_and_run_as_under_node() {
    let fixtures = repo_root().join("tests/conformance/modules");
    let mut names: Vec<_> = std::fs::read_dir(&fixtures).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert!(names.len() >= 3, "fixtures: {names:?}");
    for name in names {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(&name);
        copy(&fixtures.join(&name), &dir);
        let ours = pluginflow(&dir);
        let theirs = node(&dir);
        assert_eq!(ours.len(), EVENTS.len(), "{name:?}");
        assert_eq!(ours, theirs, "{name:?}: pluginflow and Node differ");
    }
}
