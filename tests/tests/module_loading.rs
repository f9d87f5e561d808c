//! ES module syntax loads as under Node: each plugin of `tests/conformance/modules` (Prettier's
//! no-semicolon style and the semicolon style; `export const/let/function/class/default`,
//! renamed and re-exports, `export *`, `export * as`, `import * as`, default plus named
//! imports, a module importing itself; TypeScript with enums, namespaces, parameter properties
//! and type-only imports) is imported by Node as an ES module and loaded by pluginflow, and
//! `processEvent`'s results on the same events, which list the module's own export names, must
//! be equal. Node is the oracle; TypeScript is stripped for it by TypeScript's own compiler
//! (`scripts/fetch-test-data.sh` installs it).
//!
//! Error positions too: a plugin that throws is run by both, Node with the TypeScript
//! compiler's source maps (`--enable-source-maps`), and the stack frame each reports for the
//! throw must name the same file and line of the author's source. Columns follow each engine's
//! convention for a call's frame (V8 names the `new`, QuickJS the first argument): ours must lie
//! within the throw statement as the author wrote it.

use std::path::Path;
use std::process::Command;

use pluginflow_tests::broker::pluginflow_bin;
use pluginflow_tests::{json_lines_of, repo_root};

const EVENTS: &[&str] = &[
    r#"{"event":"first","team_id":1,"uuid":"00000000-0000-4000-8000-000000000001","properties":{"n":6}}"#,
    r#"{"event":"second","team_id":1,"uuid":"00000000-0000-4000-8000-000000000002","properties":{"n":-1.5}}"#,
];

/// TypeScript's own compiler, installed by `scripts/fetch-test-data.sh`.
fn typescript() -> std::path::PathBuf {
    let path = repo_root().join(".cache/npm/node_modules/typescript");
    assert!(path.join("package.json").is_file(), "TypeScript is missing at {}: run scripts/fetch-test-data.sh", path.display());
    path
}

/// Writes `X.js` beside each `X.ts` of `dir`, types stripped by TypeScript's compiler (ES
/// modules kept, ES2022), each with an inline source map.
fn transpile(dir: &Path) {
    let script = "const ts = require(process.argv[1]); const fs = require('fs'); const path = require('path');\n\
                  for (const f of fs.readdirSync(process.argv[2]).filter((f) => f.endsWith('.ts'))) {\n\
                    const file = path.join(process.argv[2], f);\n\
                    const out = ts.transpileModule(fs.readFileSync(file, 'utf8'), { fileName: file, compilerOptions:\n\
                      { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, inlineSourceMap: true, inlineSources: true } });\n\
                    fs.writeFileSync(file.slice(0, -3) + '.js', out.outputText);\n\
                  }";
    let status = Command::new("node").args(["-e", script]).arg(typescript()).arg(dir).status().expect("node runs");
    assert!(status.success(), "TypeScript could not transpile {}", dir.display());
}

/// Node's results: the plugin copied with a `package.json` saying `"type": "module"`, imported
/// by a small script that calls `processEvent` on each event as `pluginflow try` does.
fn node(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::write(dir.join("package.json"), r#"{"type":"module"}"#).unwrap();
    transpile(dir);
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
    assert!(names.len() >= 4, "fixtures: {names:?}");
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

/// A plugin whose `processEvent` throws, in JavaScript and in TypeScript (types, an interface
/// and an enum before the throw, so the printed code's lines differ from the author's).
const THROWING: &[(&str, &str)] = &[
    (
        "index.js",
        "import { createHash } from 'crypto'\n\nconst seen = new Set()\n\nexport function processEvent(event) {\n    seen.add(createHash('sha1').update(event.event).digest('hex'))\n    if (seen.size > 1) {\n        const reason = `${seen.size} events`;   throw new Error('boom: ' + reason)\n    }\n    return event\n}\n",
    ),
    (
        "index.ts",
        "import type { PluginEvent } from '@posthog/plugin-scaffold'\n\ninterface Seen {\n    size: number\n}\nenum Limit {\n    Max = 1,\n}\nconst seen: Set<string> = new Set()\n\nexport function processEvent(event: PluginEvent): PluginEvent {\n    seen.add(event.event as string)\n    const s: Seen = seen\n    if (s.size > Limit.Max) {\n        const reason: string = `${s.size} events`;   throw new Error('boom: ' + reason)\n    }\n    return event\n}\n",
    ),
];

/// `FILE:LINE:COLUMN` of the first stack frame in `text` that names `file`.
fn frame_in(text: &str, file: &str) -> Option<String> {
    let at = text.find(&format!("{file}:"))?;
    let rest = &text[at..];
    let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '_' | '-'))).unwrap_or(rest.len());
    Some(rest[..end].trim_end_matches(':').to_string())
}

#[test]
fn error_positions_name_the_authors_file_line_and_column() {
    for (file, source) in THROWING {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("throwing");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("plugin.json"), r#"{"name":"throwing","config":[]}"#).unwrap();
        std::fs::write(dir.join(file), source).unwrap();

        let ours = Command::new(pluginflow_bin())
            .arg("try")
            .arg(&dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(format!("{}\n", EVENTS.join("\n")).as_bytes())?;
                child.wait_with_output()
            })
            .expect("pluginflow try runs");
        let ours = String::from_utf8_lossy(&ours.stderr).to_string();

        std::fs::write(dir.join("package.json"), r#"{"type":"module"}"#).unwrap();
        transpile(&dir);
        let script = "const m = await import(process.argv[1] + '/index.js');\n\
                      try { for (const e of JSON.parse(process.argv[2])) m.processEvent(e) } catch (e) { console.log(e.stack) }";
        let events = format!("[{}]", EVENTS.join(","));
        let node = Command::new("node")
            .args(["--enable-source-maps", "--input-type=module", "-e", script, dir.to_str().unwrap(), &events])
            .output()
            .expect("node runs");
        let theirs = String::from_utf8_lossy(&node.stdout).to_string();

        let want = frame_in(&theirs, file).unwrap_or_else(|| panic!("no {file} frame in Node's stack:\n{theirs}"));
        let got = frame_in(&ours, file).unwrap_or_else(|| panic!("no {file} frame in pluginflow's log:\n{ours}"));
        assert!(ours.contains("boom: 2 events"), "{ours}");
        let (got_at, got_column) = got.rsplit_once(':').unwrap();
        let (want_at, _) = want.rsplit_once(':').unwrap();
        assert_eq!(got_at, want_at, "{file}: pluginflow's stack frame against Node's\npluginflow:\n{ours}\nNode:\n{theirs}");
        // The throw statement's columns on its line, from the source text (1-based, inclusive).
        let line = source.lines().find(|l| l.contains("throw new Error")).unwrap();
        let statement = line.find("throw").unwrap() + 1..=line.trim_end().len();
        let column: usize = got_column.parse().unwrap();
        assert!(statement.contains(&column), "{file}: column {column} is not in the throw statement {statement:?} of {line:?}");
    }
}
