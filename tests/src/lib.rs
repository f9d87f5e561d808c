//! Helpers for pluginflow's end-to-end tests: repository paths, generated event logs, and
//! pipeline configurations written into temporary folders.

pub mod broker;
pub mod txnlog;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// `shared/` beside the repository (the generator and the peer plugins live there).
pub fn shared_dir() -> PathBuf {
    let dir = repo_root().join("../shared");
    assert!(dir.join("tools/gen-events.py").is_file(), "expected ../shared/tools/gen-events.py beside the repository");
    dir
}

/// Writes `count` events from `gen-events.py` with `seed` (and `extra` arguments) to `out`.
pub fn gen_events(out: &Path, count: usize, seed: u64, extra: &[&str]) {
    let status = Command::new("python3")
        .arg(shared_dir().join("tools/gen-events.py"))
        .args(["--count", &count.to_string(), "--seed", &seed.to_string(), "--out"])
        .arg(out)
        .args(extra)
        .status()
        .expect("python3 runs");
    assert!(status.success(), "gen-events.py failed");
}

/// A plugin folder of the repository's examples.
pub fn example_plugin(name: &str) -> PathBuf {
    repo_root().join("examples/plugins").join(name)
}

/// A plugin folder of the Node peer (`shared/peer/plugins`).
pub fn peer_plugin(name: &str) -> PathBuf {
    shared_dir().join("peer/plugins").join(name)
}

/// Reads a JSON-lines file into values.
pub fn read_json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line in {}: {e}: {l}", path.display())))
        .collect()
}

/// TOML text for a `[[plugins]]` entry.
pub fn plugin_entry(id: &str, path: &Path, order: i64, extra: &str) -> String {
    format!("[[plugins]]\nid = \"{id}\"\npath = {:?}\norder = {order}\n{extra}\n", path.display().to_string())
}

/// A configuration reading `input`, writing into `out_dir`, with in-memory state.
pub fn config_text(input: &Path, out_dir: &Path, plugins: &str) -> String {
    format!(
        "[input]\npath = {:?}\n[output]\nevents = {:?}\ndead_letters = {:?}\nlogs = {:?}\n[state]\nmemory = true\n[runtime]\nbatch_size = 128\n{plugins}",
        input.display().to_string(),
        out_dir.join("events.jsonl").display().to_string(),
        out_dir.join("dead.jsonl").display().to_string(),
        out_dir.join("logs.jsonl").display().to_string(),
    )
}
