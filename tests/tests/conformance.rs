//! Differential conformance against Node: every expression of `tests/conformance/corpus.txt` is
//! evaluated by a plugin under `pluginflow try` and by the same file under Node, in two time
//! zones, and the described results are compared case by case. Node is the oracle: the corpus
//! holds no expected values. Every expression whose result differs must be listed, with its
//! reason, under "Differences from Node" in `docs/compat.md`, and nothing else may be listed
//! there: a new difference and a fixed one both fail this test until the list says so.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use pluginflow_tests::broker::pluginflow_bin;
use pluginflow_tests::{json_lines_of, repo_root};
use serde_json::Value;

/// The zones the corpus runs in: UTC and one with daylight saving time.
const ZONES: [&str; 2] = ["UTC", "America/New_York"];

/// The share of (expression, zone) results that must match Node.
const REQUIRED: f64 = 0.98;

struct Case {
    section: String,
    expr: String,
}

fn corpus() -> Vec<Case> {
    let text = std::fs::read_to_string(repo_root().join("tests/conformance/corpus.txt")).expect("corpus");
    let mut section = String::new();
    let mut cases = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("## ") {
            section = name.to_string();
        } else if !line.is_empty() && !line.starts_with('#') {
            assert!(!line.contains('`'), "corpus expressions carry no backticks (docs/compat.md quotes them): {line}");
            cases.push(Case { section: section.clone(), expr: line.to_string() });
        }
    }
    cases
}

fn write_plugin(dir: &Path, cases: &[Case]) {
    let root = repo_root().join("tests/conformance");
    let harness = std::fs::read_to_string(root.join("harness.js")).expect("harness");
    let list: String = cases.iter().map(|c| format!("    () => ({}),\n", c.expr)).collect();
    std::fs::write(dir.join("index.js"), harness.replace("    /* CASES */\n", &list)).expect("index.js");
    std::fs::copy(root.join("plugin.json"), dir.join("plugin.json")).expect("plugin.json");
}

const EVENT: &str =
    r#"{"event":"conformance","team_id":1,"uuid":"00000000-0000-4000-8000-000000000001","distinct_id":"d","properties":{}}"#;

/// Runs `program args…` with only PATH, HOME and TZ set (no LANG: both default to en-US), the
/// event on stdin; returns the `results` array of the event printed on stdout.
fn results(program: &Path, args: &[&str], tz: &str, cases: usize) -> Vec<Value> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::var_os("HOME").unwrap_or_default())
        .env("TZ", tz);
    let printed = json_lines_of(&mut cmd, &format!("{EVENT}\n"));
    assert_eq!(printed.len(), 1, "{} printed one event: {printed:?}", program.display());
    let list = printed[0]["properties"]["results"].as_array().unwrap_or_else(|| panic!("no results from {}", program.display())).clone();
    assert_eq!(list.len(), cases, "{} returned a result per case", program.display());
    list
}

/// The expressions `docs/compat.md` lists under "Differences from Node", one per "- `expr`" line.
fn documented() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo_root().join("docs/compat.md")).expect("docs/compat.md");
    let section = text.split("\n## Differences from Node\n").nth(1).expect("docs/compat.md has a \"## Differences from Node\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter_map(|l| l.strip_prefix("- `"))
        .map(|l| l.split_once("` —").unwrap_or_else(|| panic!("a difference is \"- `expr` — reason\": {l}")).0.to_string())
        .collect()
}

fn which(name: &str) -> std::path::PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not on PATH: scripts/setup.sh installs it"))
}

#[test]
fn plugins_compute_what_node_computes() {
    let cases = corpus();
    assert!(cases.len() >= 300, "the corpus has at least 300 expressions, has {}", cases.len());
    let dir = tempfile::tempdir().expect("plugin dir");
    write_plugin(dir.path(), &cases);
    let plugin = dir.path().to_str().expect("utf-8 path");
    let node_run = repo_root().join("tests/conformance/node-run.js");
    let node = which("node");

    let mut differing = BTreeSet::new();
    let mut matching = 0;
    let mut report = String::new();
    for tz in ZONES {
        let ours = results(&pluginflow_bin(), &["try", plugin], tz, cases.len());
        let theirs = results(&node, &[node_run.to_str().expect("utf-8 path"), plugin], tz, cases.len());
        let mut here = 0;
        for ((case, a), b) in cases.iter().zip(&ours).zip(&theirs) {
            if a == b {
                here += 1;
            } else {
                differing.insert(case.expr.clone());
                report.push_str(&format!("  [{tz}] {} | {}\n      pluginflow: {a}\n      node:       {b}\n", case.section, case.expr));
            }
        }
        println!("conformance vs Node (TZ={tz}): {here}/{} match", cases.len());
        matching += here;
    }
    let total = cases.len() * ZONES.len();
    let share = matching as f64 / total as f64;
    println!("conformance vs Node: {matching}/{total} match ({:.1}%)", share * 100.0);
    print!("{report}");

    let listed = documented();
    let undocumented: Vec<_> = differing.difference(&listed).collect();
    let fixed: Vec<_> = listed.difference(&differing).collect();
    assert!(
        undocumented.is_empty() && fixed.is_empty(),
        "docs/compat.md \"Differences from Node\" is out of date.\nDiffering but not listed: {undocumented:#?}\nListed but matching Node: {fixed:#?}"
    );
    assert!(share >= REQUIRED, "{matching}/{total} results match Node, below {:.0}%", REQUIRED * 100.0);
}
