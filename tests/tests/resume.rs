//! `pluginflow run --resume`: a recorded-log run killed with SIGKILL and resumed writes what an
//! uninterrupted run writes (the oracle: the same run, not killed), and a resume that cannot
//! continue exactly is refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pluginflow_tests::broker::{Running, pluginflow_bin};
use pluginflow_tests::{gen_events, plugin_entry};

const EVENTS: usize = 12_000;

/// Slow enough (a busy loop per event) that a kill lands mid-run; drops some events, captures a
/// follow-up for others (with a fixed timestamp: only its uuid is new each time); `onEvent`
/// fails for good for some (six attempts, then a dead letter) and captures an echo of others:
/// both run in the epoch of the event that made them, so a checkpoint covers them with it.
const PLUGIN: &str = "const { RetryError } = require('@posthog/plugin-scaffold')\n\
    exports.onEvent = (e) => {\n\
      if (e.event === 'follow-up' || e.event === 'echo') return\n\
      if (e.uuid.charCodeAt(e.uuid.length - 2) % 13 === 0) throw new RetryError('down')\n\
      if (e.uuid.charCodeAt(e.uuid.length - 1) % 5 === 0) posthog.capture('echo', { of: e.uuid, timestamp: '2024-01-01T00:00:00Z', distinct_id: 'g' })\n\
    }\n\
    exports.processEvent = (e) => {\n\
      if (e.event === 'follow-up' || e.event === 'echo') return e\n\
      let x = 0\n\
      for (let i = 0; i < 15000; i++) x = (x + i * 7) % 1000003\n\
      e.properties.work = x\n\
      const last = e.uuid.charCodeAt(e.uuid.length - 1)\n\
      if (last % 11 === 0) return null\n\
      if (last % 7 === 0) posthog.capture('follow-up', { of: e.uuid, timestamp: '2024-01-01T00:00:00Z', distinct_id: 'f' })\n\
      return e\n\
    }";

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Setup {
    fn new(input: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let plugin = root.join("slow");
        std::fs::create_dir_all(&plugin).unwrap();
        std::fs::write(plugin.join("plugin.json"), r#"{"name":"slow"}"#).unwrap();
        std::fs::write(plugin.join("index.js"), PLUGIN).unwrap();
        std::fs::copy(input, root.join("in.jsonl")).unwrap();
        let config = format!(
            "[input]\npath = \"in.jsonl\"\n[output]\nevents = \"out/events.jsonl\"\ndead_letters = \"out/dead.jsonl\"\n\
             logs = \"out/logs.jsonl\"\napp_metrics = \"out/metrics.jsonl\"\n[state]\npath = \"state\"\n[runtime]\nbatch_size = 64\n\
             on_event_retry_base_ms = 5\n{}",
            plugin_entry("slow", &plugin, 0, "")
        );
        std::fs::write(root.join("pf.toml"), config).unwrap();
        Self { _dir: dir, root }
    }

    fn command(&self, extra: &[&str]) -> Command {
        let mut cmd = Command::new(pluginflow_bin());
        cmd.args(["run", "--no-progress", "pf.toml"]).args(extra).current_dir(&self.root).stdout(Stdio::null()).stderr(Stdio::piped());
        cmd
    }

    fn run(&self, extra: &[&str]) -> Output {
        self.command(extra).output().unwrap()
    }

    fn lines(&self, name: &str) -> usize {
        std::fs::read(self.root.join("out").join(name)).map(|b| b.iter().filter(|c| **c == b'\n').count()).unwrap_or(0)
    }

    /// Starts a run and kills it (SIGKILL) once the events output holds `at` lines; asserts the
    /// process was still running when killed.
    fn kill_at(&self, extra: &[&str], at: usize) {
        let mut child = self.spawn(extra);
        self.wait_for_lines(&mut child, at);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Starts a run and stops it (SIGTERM) once the events output holds `at` lines; it must
    /// finish what it holds and exit 0.
    fn stop_at(&self, extra: &[&str], at: usize) {
        let mut child = self.spawn(extra);
        self.wait_for_lines(&mut child, at);
        let term = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(term.success());
        let status = child.wait().unwrap();
        assert!(status.success(), "a stopped run exits 0: {status}");
    }

    /// Starts a run in the background, its stderr appended to `stderr.log` (a pipe nobody reads
    /// would fill up and block the run); killed when dropped, so a failed assertion leaves no
    /// run behind.
    fn spawn(&self, extra: &[&str]) -> Running {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.root.join("stderr.log")).unwrap();
        Running(self.command(extra).stderr(log).spawn().unwrap())
    }

    fn wait_for_lines(&self, child: &mut std::process::Child, at: usize) {
        let started = Instant::now();
        while self.lines("events.jsonl") < at {
            assert!(child.try_wait().unwrap().is_none(), "the run ended before {at} output lines: nothing to interrupt");
            assert!(started.elapsed() < Duration::from_secs(300), "no progress");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The events output, each line normalised (a captured event's uuid is new on every run),
    /// sorted: workers interleave their lines.
    fn events(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.root.join("out/events.jsonl")).unwrap();
        let mut lines: Vec<String> = text
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
                if v["event"] == "follow-up" || v["event"] == "echo" {
                    v.as_object_mut().unwrap().remove("uuid");
                }
                v.to_string()
            })
            .collect();
        lines.sort();
        lines
    }

    fn dead_letters(&self) -> Vec<String> {
        let mut lines: Vec<String> =
            std::fs::read_to_string(self.root.join("out/dead.jsonl")).unwrap().lines().map(str::to_string).collect();
        lines.sort();
        lines
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn input() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.jsonl");
    gen_events(&path, EVENTS, 11, &["--bad-rate", "0.02", "--teams", "3"]);
    (dir, path)
}

/// Asserts two sorted lists are equal, naming a few lines of each difference (not every line).
fn assert_same(what: &str, got: &[String], want: &[String]) {
    let (mut missing, mut extra) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < got.len() || j < want.len() {
        match (got.get(i), want.get(j)) {
            (Some(g), Some(w)) if g == w => (i, j) = (i + 1, j + 1),
            (Some(g), Some(w)) if g < w => (extra.push(g), i += 1).1,
            (Some(g), None) => (extra.push(g), i += 1).1,
            (_, Some(w)) => (missing.push(w), j += 1).1,
            (None, None) => unreachable!(),
        }
    }
    let brief = |lines: &[&String]| lines.iter().take(3).map(|l| l.chars().take(300).collect::<String>()).collect::<Vec<_>>();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: {} missing, {} extra of {} expected; missing e.g. {:?}; extra e.g. {:?}",
        missing.len(),
        extra.len(),
        want.len(),
        brief(&missing),
        brief(&extra)
    );
}

/// Duplicates in a sorted list.
fn repeats(sorted: &[String]) -> usize {
    sorted.windows(2).filter(|w| w[0] == w[1]).count()
}

#[test]
fn a_run_killed_twice_stopped_and_resumed_writes_what_an_uninterrupted_run_writes() {
    let (_in_dir, input) = input();
    let oracle = Setup::new(&input);
    let out = oracle.run(&["-w", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (want_events, want_dead) = (oracle.events(), oracle.dead_letters());
    assert!(want_events.len() > EVENTS / 2 && !want_dead.is_empty(), "{} events, {} dead letters", want_events.len(), want_dead.len());
    assert!(want_events.iter().any(|l| l.contains("follow-up")), "the plugin captured in processEvent");
    assert!(want_events.iter().any(|l| l.contains("\"echo\"")), "the plugin captured in onEvent");
    assert!(want_dead.iter().any(|l| l.contains("onEvent of plugin")), "onEvent gave up for some");

    let crashed = Setup::new(&input);
    crashed.kill_at(&["-w", "2"], want_events.len() / 4);
    let killed_at = crashed.lines("events.jsonl");
    crashed.kill_at(&["-w", "2", "--resume"], want_events.len() / 2);
    // A stop (SIGTERM) finishes what it holds and exits 0; the resume still continues exactly.
    crashed.stop_at(&["-w", "2", "--resume"], want_events.len() * 3 / 4);
    let out = crashed.run(&["-w", "2", "--resume"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    // The last resume began mid-log: some worker's position is past its share's start.
    let line = err.lines().find(|l| l.contains("--resume: continuing")).unwrap_or_else(|| panic!("no resume line: {err}"));
    assert!(line.contains("worker 0 at byte ") && line.contains("worker 1 at byte "), "{line}");
    let (got_events, got_dead) = (crashed.events(), crashed.dead_letters());
    println!(
        "resume: {} events and {} dead letters expected; killed at {killed_at}, again, stopped, resumed: {} and {} ({} and {} repeated)",
        want_events.len(),
        want_dead.len(),
        got_events.len(),
        got_dead.len(),
        repeats(&got_events),
        repeats(&got_dead)
    );
    assert_eq!(repeats(&got_events), 0, "no event twice");
    assert_same("events", &got_events, &want_events);
    assert_same("dead letters", &got_dead, &want_dead);

    // Once finished, a resume has nothing to do and touches nothing.
    let before = std::fs::read(crashed.root.join("out/events.jsonl")).unwrap();
    let out = crashed.run(&["-w", "2", "--resume"]);
    assert!(out.status.success() && stderr(&out).contains("nothing to resume"), "{}", stderr(&out));
    assert_eq!(std::fs::read(crashed.root.join("out/events.jsonl")).unwrap(), before);
}

#[test]
fn a_resume_that_cannot_continue_exactly_is_refused() {
    let (_in_dir, input) = input();
    let s = Setup::new(&input);
    s.kill_at(&[], 2_000);
    let events_before = std::fs::read(s.root.join("out/events.jsonl")).unwrap();

    // Another worker count: each worker's share of the log would differ.
    let out = s.run(&["-w", "3", "--resume"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("resume with the same -w and -n"), "{}", stderr(&out));

    // The log changed since the run started.
    let log = s.root.join("in.jsonl");
    let original = std::fs::read(&log).unwrap();
    std::fs::write(&log, [original.as_slice(), b"{\"event\":\"late\",\"team_id\":1}\n"].concat()).unwrap();
    let out = s.run(&["--resume"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("the log changed"), "{}", stderr(&out));
    std::fs::write(&log, &original).unwrap();

    // An output cut short since (it no longer holds what the checkpoint says was complete).
    let events = s.root.join("out/events.jsonl");
    std::fs::write(&events, b"").unwrap();
    let out = s.run(&["--resume"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("shorter than"), "{}", stderr(&out));
    std::fs::write(&events, &events_before).unwrap();

    // In-memory state keeps no checkpoint.
    let config = std::fs::read_to_string(s.root.join("pf.toml")).unwrap();
    std::fs::write(s.root.join("mem.toml"), config.replace("path = \"state\"", "memory = true")).unwrap();
    let out = Command::new(pluginflow_bin()).args(["run", "--no-progress", "--resume", "mem.toml"]).current_dir(&s.root).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("needs the state on disk"), "{}", stderr(&out));

    // Every refusal left the outputs alone; a plain run says the last one stopped early and
    // starts over.
    assert_eq!(std::fs::read(&events).unwrap(), events_before);
    let out = s.run(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("stopped before the end"), "{}", stderr(&out));

    // That run finished. A plain run after it truncates the outputs; killed early, its
    // `--resume` must not trust the finished run's checkpoint ("nothing to resume" over
    // truncated outputs) but continue or start over, and end with the same outputs.
    let finished = s.events();
    let full = std::fs::metadata(s.root.join("out/events.jsonl")).unwrap().len();
    let mut child = s.spawn(&[]);
    // Killed as soon as it has truncated the outputs: before (or about when) it records its
    // own first checkpoint.
    let started = Instant::now();
    while std::fs::metadata(s.root.join("out/events.jsonl")).map(|m| m.len()).unwrap_or(0) >= full {
        assert!(child.try_wait().unwrap().is_none(), "the run ended without truncating its outputs");
        assert!(started.elapsed() < Duration::from_secs(60), "the outputs were never truncated");
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let out = s.run(&["--resume"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("nothing to resume"), "{}", stderr(&out));
    assert_same("events after an early kill and --resume", &s.events(), &finished);
}
