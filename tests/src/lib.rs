//! Helpers for pluginflow's end-to-end tests: repository paths, generated event logs, and
//! pipeline configurations written into temporary folders.

pub mod broker;
pub mod eventlog;
pub mod redis_server;
pub mod txnlog;

use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo_root() -> PathBuf {
    // Cargo's value at run time first: a test binary that another checkout built into the same
    // target folder (same code, another path) must still read this checkout's files.
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    dir.parent().expect("tests/ has a parent").to_path_buf()
}

/// Writes `count` events generated with `seed` to `out`; `extra` takes `--bad-rate R`,
/// `--bad-kinds a,b` and `--huge-kb N` (see [`eventlog::GenOptions`]).
pub fn gen_events(out: &Path, count: usize, seed: u64, extra: &[&str]) {
    let mut opts = eventlog::GenOptions { count, seed, ..eventlog::GenOptions::default() };
    let mut args = extra.iter();
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match *flag {
            "--bad-rate" => opts.bad_rate = value.parse().expect("a rate"),
            "--huge-kb" => opts.huge_kb = value.parse().expect("KiB"),
            "--bad-kinds" => {
                opts.bad_kinds =
                    value.split(',').map(|k| eventlog::BadKind::parse(k).unwrap_or_else(|| panic!("unknown bad kind {k}"))).collect()
            }
            "--teams" => opts.teams = value.parse().expect("a count"),
            other => panic!("gen_events: unknown option {other}"),
        }
    }
    std::fs::write(out, eventlog::generate(&opts)).unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
}

/// A plugin folder of the repository's examples.
pub fn example_plugin(name: &str) -> PathBuf {
    repo_root().join("examples/plugins").join(name)
}

/// A benchmark plugin of the repository (`benches/plugins`: greet, screen, flatten).
pub fn bench_plugin(name: &str) -> PathBuf {
    repo_root().join("benches/plugins").join(name)
}

/// Runs `cmd` with `stdin` as its input, requires it to succeed, and reads its standard output
/// as JSON lines (the failure names the command and shows its standard error).
pub fn json_lines_of(cmd: &mut std::process::Command, stdin: &str) -> Vec<serde_json::Value> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?} (scripts/setup.sh installs Node): {e}"));
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?} failed: {}\n{stderr}", out.status);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{cmd:?}: not a JSON line ({e}): {l}\n{stderr}")))
        .collect()
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
