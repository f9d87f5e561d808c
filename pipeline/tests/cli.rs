//! The `pluginflow` binary: exit codes, `try`, shutdown on SIGTERM.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pluginflow"))
}

fn plugin(dir: &Path, name: &str, plugin_json: &str, index: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("plugin.json"), plugin_json).unwrap();
    std::fs::write(p.join("index.js"), index).unwrap();
    p
}

#[test]
fn run_rejects_a_bad_config_with_exit_code_2_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pf.toml");
    std::fs::write(&cfg, "[input]\npath = \"nope.jsonl\"\n").unwrap();
    let out = bin().args(["run"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("input.path") && err.contains("nope.jsonl"), "{err}");
}

#[test]
fn run_rejects_a_plugin_that_cannot_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("e.jsonl"), "").unwrap();
    plugin(dir.path(), "bad", r#"{"name":"bad"}"#, "import pg from 'pg'\nexport function processEvent(e) { return e }");
    let cfg = dir.path().join("pf.toml");
    std::fs::write(&cfg, "[input]\npath = \"e.jsonl\"\n[state]\nmemory = true\n[[plugins]]\nid = \"x\"\npath = \"bad\"\n").unwrap();
    let out = bin().args(["run"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Cannot import 'pg'") && err.contains("bad"), "{err}");
}

#[test]
fn cluster_flags_out_of_range_are_refused_with_exit_code_2() {
    for args in [&["-w", "0"][..], &["-n", "0"], &["-w", "100000"], &["-n", "2", "-p", "2"]] {
        let out = bin().arg("run").args(args).arg("no-such.toml").output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--workers") || err.contains("--processes") || err.contains("--process"), "{args:?}: {err}");
    }
}

#[test]
fn run_stops_the_start_when_a_configuration_cannot_load() {
    // Each would once start, log "failed to load; its events skip it" and exit 0 with every
    // event skipping the plugin.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("e.jsonl"), "{\"uuid\":\"u\",\"event\":\"e\",\"team_id\":1,\"properties\":{}}\n").unwrap();
    plugin(dir.path(), "needs", r#"{"name":"needs","config":[{"key":"apiKey","required":true}]}"#, "exports.processEvent = (e) => e");
    plugin(dir.path(), "throws", r#"{"name":"throws"}"#, "throw new Error('broken at load')\nexports.processEvent = (e) => e");
    for (path, want) in [("needs", "apiKey"), ("throws", "broken at load")] {
        std::fs::write(
            dir.path().join("pf.toml"),
            format!("[input]\npath = \"e.jsonl\"\n[state]\nmemory = true\n[output]\nevents = \"out/e.jsonl\"\n[[plugins]]\nid = \"x\"\npath = \"{path}\"\n"),
        )
        .unwrap();
        let out = bin().args(["run", "--no-progress", "pf.toml"]).current_dir(dir.path()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{path}: {err}");
        assert!(err.contains("plugin configuration 'x' cannot load") && err.contains(want), "{path}: {err}");
        assert!(!dir.path().join("out/e.jsonl").exists(), "{path}: nothing ran");
    }
}

#[test]
fn help_lists_every_subcommand_and_flag() {
    let out = bin().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("run") && text.contains("try"), "{text}");
    let out = bin().args(["run", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in ["--workers", "--processes", "--process", "--hostfile", "--no-progress", "--log-format"] {
        assert!(text.contains(flag), "run --help lacks {flag}: {text}");
    }
}

/// `--log-format json` gives one JSON object per line of pluginflow's own log; the text format
/// carries no colour codes when stderr is not a terminal; `${VAR}` in the configuration comes
/// from the environment, and an unset one stops the start naming it.
#[test]
fn logs_are_json_on_request_plain_otherwise_and_the_config_reads_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("e.jsonl"), "{\"uuid\":\"u\",\"event\":\"e\",\"team_id\":1,\"properties\":{}}\n").unwrap();
    let cfg = dir.path().join("pf.toml");
    // [http] so that the run logs at info ("http endpoint listening").
    std::fs::write(
        &cfg,
        "[input]\npath = \"${PF_TEST_INPUT}\"\n[output]\nevents = \"${PF_TEST_OUT:-out}/events.jsonl\"\n[state]\nmemory = true\n[http]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();

    let json = bin()
        .args(["--log-format", "json", "run", "--no-progress"])
        .arg(&cfg)
        .env("PF_TEST_INPUT", "e.jsonl")
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(json.status.success(), "{}", String::from_utf8_lossy(&json.stderr));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out/events.jsonl")).unwrap().lines().count(),
        1,
        "the input came from ${{PF_TEST_INPUT}}"
    );
    let stderr = String::from_utf8_lossy(&json.stderr);
    let logged: Vec<serde_json::Value> = stderr.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(!logged.is_empty(), "no JSON log line: {stderr}");
    assert!(logged.iter().all(|v| v["level"].is_string() && v["timestamp"].is_string()), "{stderr}");
    assert!(logged.iter().any(|v| v["fields"]["message"] == "http endpoint listening"), "{stderr}");

    let text = bin()
        .args(["run", "--no-progress"])
        .arg(&cfg)
        .env("PF_TEST_INPUT", "e.jsonl")
        .env("PF_TEST_OUT", "out2")
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(text.status.success(), "{}", String::from_utf8_lossy(&text.stderr));
    assert!(dir.path().join("out2/events.jsonl").is_file(), "${{PF_TEST_OUT:-out}} took the variable");
    let stderr = String::from_utf8_lossy(&text.stderr);
    assert!(stderr.contains("INFO"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "colour codes on a stderr that is not a terminal: {stderr:?}");

    let unset = bin().args(["run", "--no-progress"]).arg(&cfg).env_remove("PF_TEST_INPUT").output().unwrap();
    assert_eq!(unset.status.code(), Some(2));
    let err = String::from_utf8_lossy(&unset.stderr);
    assert!(err.contains("PF_TEST_INPUT is not set") && err.contains("line 2"), "{err}");
}

#[test]
fn try_prints_one_line_per_input_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = plugin(
        dir.path(),
        "greeter",
        r#"{"name":"greeter","config":[{"key":"greeting","default":"hello"}]}"#,
        "exports.setupPlugin = ({ global, config }) => { global.g = config.greeting }\n\
         exports.processEvent = (e, { global }) => { if (e.event === 'skip') return null; console.log('saw', e.uuid); e.properties.greeting = global.g; return e }\n\
         exports.teardownPlugin = () => { console.log('bye') }",
    );
    let out = try_with(
        &p,
        &["--config", r#"{"greeting":"hi"}"#],
        "{\"uuid\":\"1\",\"event\":\"e\",\"team_id\":1,\"properties\":{\"z\":1,\"a\":2}}\n{\"uuid\":\"2\",\"event\":\"skip\",\"team_id\":1}\n",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout, "{\"uuid\":\"1\",\"event\":\"e\",\"team_id\":1,\"properties\":{\"z\":1,\"a\":2,\"greeting\":\"hi\"}}\nnull\n");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let logs: Vec<serde_json::Value> = stderr.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(logs.iter().any(|l| l["message"] == "saw 1" && l["type"] == "LOG" && l["plugin"] == "greeter"), "{stderr}");
    assert!(logs.iter().any(|l| l["message"] == "bye"), "teardownPlugin ran: {stderr}");
}

/// `try` reads the team as the pipeline does: `team_id: 2.0` (a float writer's id) is team 2, so
/// a plugin that changes it gets the team written back, as in `pluginflow run`.
#[test]
fn try_reads_a_team_id_written_as_a_float_as_the_pipeline_does() {
    let dir = tempfile::tempdir().unwrap();
    let p = plugin(dir.path(), "mover", r#"{"name":"mover","config":[]}"#, "exports.processEvent = (e) => { e.team_id = 99; return e }");
    let input = "{\"uuid\":\"1\",\"event\":\"e\",\"team_id\":2.0}\n{\"uuid\":\"2\",\"event\":\"e\",\"team_id\":2e0}\n\
                 {\"uuid\":\"3\",\"event\":\"e\",\"team_id\":1.5}\n";
    let out = try_with(&p, &[], input);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let teams: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["team_id"].clone())
        .collect();
    // 1.5 is no team (the pipeline dead-letters it): nothing to write back.
    assert_eq!(teams, [serde_json::json!(2), serde_json::json!(2), serde_json::json!(99)]);
}

#[test]
fn try_exits_2_when_setup_fails() {
    let dir = tempfile::tempdir().unwrap();
    let p = plugin(
        dir.path(),
        "nosetup",
        r#"{"name":"nosetup"}"#,
        "exports.setupPlugin = () => { throw new Error('no API key') }\nexports.processEvent = e => e",
    );
    let out = bin().arg("try").arg(&p).stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("setupPlugin failed") && err.contains("no API key"), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("pluginflow try:")).count(), 1, "{err}");
}

#[test]
fn sigterm_stops_reading_finishes_and_tears_down() {
    let dir = tempfile::tempdir().unwrap();
    // A long log: the pipeline must not get through it before the signal arrives.
    let line = "{\"uuid\":\"u\",\"event\":\"e\",\"team_id\":1,\"properties\":{}}\n";
    std::fs::write(dir.path().join("e.jsonl"), line.repeat(400_000)).unwrap();
    plugin(
        dir.path(),
        "slow",
        r#"{"name":"slow"}"#,
        "exports.processEvent = (e) => { let x = 0; for (let i = 0; i < 20000; i++) x += i; e.properties.x = x; return e }\n\
         exports.teardownPlugin = () => { console.log('teardown ran') }",
    );
    let cfg = dir.path().join("pf.toml");
    std::fs::write(
        &cfg,
        "[input]\npath = \"e.jsonl\"\n[output]\nevents = \"out/e.jsonl\"\ndead_letters = \"out/d.jsonl\"\nlogs = \"out/l.jsonl\"\n[state]\npath = \"state\"\n[[plugins]]\nid = \"s\"\npath = \"slow\"\nteams = [1]\n",
    )
    .unwrap();
    let child = bin().args(["run", "-w", "2", "--no-progress"]).arg(&cfg).stderr(Stdio::piped()).spawn().unwrap();
    let events = dir.path().join("out/e.jsonl");
    let started = Instant::now();
    while std::fs::metadata(&events).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(started.elapsed() < Duration::from_secs(60), "no output appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let written = std::fs::read_to_string(&events).unwrap().lines().count();
    assert!(written > 0 && written < 400_000, "stopped early with {written} events written");
    assert!(stderr.contains(&format!("events out:          {written}")), "the summary counts what was written: {stderr}");
    let logs = std::fs::read_to_string(dir.path().join("out/l.jsonl")).unwrap();
    // Team 1's instance lives on one worker of the two (events are exchanged by team): one
    // teardown.
    assert_eq!(logs.matches("teardown ran").count(), 1, "teardownPlugin ran for the team's one instance: {logs}");
}

#[test]
fn sigterm_ends_a_plugin_that_never_returns_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let line = "{\"uuid\":\"u\",\"event\":\"e\",\"team_id\":1,\"properties\":{}}\n";
    std::fs::write(dir.path().join("e.jsonl"), line.repeat(10)).unwrap();
    plugin(dir.path(), "spin", r#"{"name":"spin"}"#, "exports.processEvent = (e) => { console.log('spinning'); for (;;) {} }");
    let cfg = dir.path().join("pf.toml");
    // The call deadline is an hour: only the shutdown can end the call.
    std::fs::write(
        &cfg,
        "[input]\npath = \"e.jsonl\"\n[output]\nevents = \"out/e.jsonl\"\ndead_letters = \"out/d.jsonl\"\nlogs = \"out/l.jsonl\"\n[state]\nmemory = true\n[runtime]\ncall_timeout_ms = 3600000\nshutdown_grace_ms = 200\n[[plugins]]\nid = \"s\"\npath = \"spin\"\n",
    )
    .unwrap();
    let mut child = bin().args(["run", "--no-progress"]).arg(&cfg).stderr(Stdio::piped()).spawn().unwrap();
    let logs = dir.path().join("out/l.jsonl");
    let started = Instant::now();
    while !std::fs::read_to_string(&logs).unwrap_or_default().contains("spinning") {
        assert!(started.elapsed() < Duration::from_secs(60), "the plugin never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    // Without the cancel the call would run for an hour; a minute is a generous bound.
    let waited = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if waited.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("pluginflow did not end after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let events = std::fs::read_to_string(dir.path().join("out/e.jsonl")).unwrap();
    assert!(events.lines().count() >= 1, "the event in flight was written: {stderr}");
    for e in events.lines() {
        let v: serde_json::Value = serde_json::from_str(e).unwrap();
        assert_eq!(v["properties"]["$plugins_failed"], serde_json::json!(["spin (s)"]), "{e}");
    }
    let logs = std::fs::read_to_string(&logs).unwrap();
    assert!(logs.contains("cancelled: pluginflow is shutting down"), "{logs}");
}

#[test]
fn an_operators_mistakes_destroy_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let line = "{\"uuid\":\"u\",\"event\":\"e\",\"team_id\":1,\"properties\":{}}\n";
    std::fs::write(dir.path().join("e.jsonl"), line.repeat(10)).unwrap();
    plugin(
        dir.path(),
        "spin",
        r#"{"name":"spin"}"#,
        "exports.processEvent = (e) => { console.log('first pipeline working'); for (;;) {} }",
    );
    let base = "[input]\npath = \"e.jsonl\"\n[state]\npath = \"state\"\n[runtime]\ncall_timeout_ms = 3600000\nshutdown_grace_ms = 100\n[[plugins]]\nid = \"s\"\npath = \"spin\"\n";
    // The output is the input: refused before anything is opened.
    std::fs::write(dir.path().join("same.toml"), format!("{base}[output]\nevents = \"e.jsonl\"\n")).unwrap();
    let out = bin().args(["run", "same.toml"]).current_dir(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is the input"));
    assert_eq!(std::fs::read_to_string(dir.path().join("e.jsonl")).unwrap(), line.repeat(10), "the recorded log is intact");

    // A second pipeline on a running pipeline's state: refused before it truncates the logs.
    std::fs::write(dir.path().join("pf.toml"), format!("{base}[output]\nevents = \"out/e.jsonl\"\nlogs = \"out/l.jsonl\"\n")).unwrap();
    let mut first = bin().args(["run", "--no-progress", "pf.toml"]).current_dir(dir.path()).stderr(Stdio::piped()).spawn().unwrap();
    let logs = dir.path().join("out/l.jsonl");
    let started = Instant::now();
    while !std::fs::read_to_string(&logs).unwrap_or_default().contains("first pipeline working") {
        assert!(started.elapsed() < Duration::from_secs(60), "the first pipeline never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = bin().args(["run", "--no-progress", "pf.toml"]).current_dir(dir.path()).output().unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot open state"), "{err}");
    assert!(std::fs::read_to_string(&logs).unwrap().contains("first pipeline working"), "the second pipeline truncated the first's log");
    assert!(Command::new("kill").args(["-TERM", &first.id().to_string()]).status().unwrap().success());
    assert_eq!(first.wait().unwrap().code(), Some(0));

    // An output on a full disk: the run fails (exit 1), and says so. Returns its stderr.
    let on_full_disk = |name: &str, state: &str, outputs: &str| {
        std::fs::write(
            dir.path().join(name),
            format!("{base}[output]\n{outputs}")
                .replace("state\"", &format!("{state}\""))
                .replace("call_timeout_ms = 3600000", "call_timeout_ms = 100"),
        )
        .unwrap();
        let out = bin().args(["run", "--no-progress", name]).current_dir(dir.path()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{err}");
        err
    };
    // Plugin logs: the run fails loudly instead of losing entries.
    let err = on_full_disk("full.toml", "state2", "events = \"out/e2.jsonl\"\nlogs = \"/dev/full\"\n");
    assert!(err.contains("cannot write plugin logs"), "{err}");
    // Events: the error says which output.
    let err = on_full_disk("full2.toml", "state3", "events = \"/dev/full\"\n");
    assert!(err.contains("output /dev/full: No space left on device"), "{err}");
}

#[test]
fn two_processes_form_a_cluster_and_split_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let lines: String =
        (0..4000).map(|i| format!("{{\"uuid\":\"u{i}\",\"event\":\"e\",\"team_id\":{},\"properties\":{{}}}}\n", i % 3 + 1)).collect();
    std::fs::write(dir.path().join("e.jsonl"), lines).unwrap();
    plugin(dir.path(), "tag", r#"{"name":"tag"}"#, "exports.processEvent = (e) => { e.properties.tagged = true; return e }");
    let cfg = dir.path().join("pf.toml");
    std::fs::write(&cfg, "[input]\npath = \"e.jsonl\"\n[output]\nevents = \"out/e.jsonl\"\n[state]\nmemory = true\n[[plugins]]\nid = \"t\"\npath = \"tag\"\n").unwrap();
    let ports: Vec<u16> = (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).collect();
    let hosts = dir.path().join("hosts.txt");
    std::fs::write(&hosts, ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect::<String>()).unwrap();
    let children: Vec<_> = (0..2)
        .map(|p| {
            bin()
                .args(["run", "-w", "2", "-n", "2", "-p", &p.to_string(), "-h"])
                .arg(&hosts)
                .arg("--no-progress")
                .arg(&cfg)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut seen = Vec::new();
    for (p, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "process {p}: {}", String::from_utf8_lossy(&out.stderr));
        let text = std::fs::read_to_string(dir.path().join(format!("out/e.p{p}.jsonl"))).unwrap();
        assert!(text.lines().count() > 0, "process {p} did some of the work");
        seen.extend(text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["uuid"].as_str().unwrap().to_string()));
    }
    seen.sort();
    let mut want: Vec<String> = (0..4000).map(|i| format!("u{i}")).collect();
    want.sort();
    assert_eq!(seen, want, "every event exactly once across the cluster");
}

/// A one-thread HTTP server for `requests` requests, answering each with the next status of
/// `statuses` (200 after them) and recording its body; `Connection: close` on every answer.
fn http_server(requests: usize, statuses: Vec<u16>) -> (String, std::thread::JoinHandle<Vec<String>>) {
    use std::io::{BufRead, BufReader, Read};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let mut bodies = Vec::new();
        // Gives up after 60 s, so a request that never comes fails the test's count, not CI.
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while bodies.len() < requests && Instant::now() < deadline {
            let mut stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                Err(e) => panic!("accept: {e}"),
            };
            stream.set_nonblocking(false).unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            bodies.push(String::from_utf8(body).unwrap());
            let status = statuses.get(bodies.len() - 1).copied().unwrap_or(200);
            write!(stream, "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").unwrap();
        }
        bodies
    });
    (url, handle)
}

fn try_with(p: &Path, args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = bin().arg("try").arg(p).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

const DESTINATION: &str = "exports.onEvent = async (event, { config }) => {\n\
       const r = await fetch(config.url, { method: 'POST', body: JSON.stringify(event) })\n\
       if (!r.ok) throw new RetryError('status ' + r.status)\n\
     }\n\
     exports.exportEvents = async (events, { config }) => {\n\
       const r = await fetch(config.url, { method: 'POST', body: JSON.stringify(events) })\n\
       if (!r.ok) throw new RetryError('status ' + r.status)\n\
     }";

const TWO_EVENTS: &str = "{\"uuid\":\"u1\",\"event\":\"a\",\"team_id\":1,\"distinct_id\":\"d\",\"properties\":{\"$set\":{\"x\":1}}}\n\
                          {\"uuid\":\"u2\",\"event\":\"b\",\"team_id\":1,\"properties\":{}}\n";

/// `try --hook onEvent` makes the destination's requests, retrying a `RetryError` as PostHog
/// did (waits shortened by the flag), and prints a line per call.
#[test]
fn try_runs_on_event_with_retries_against_a_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let p = plugin(dir.path(), "dest", r#"{"name":"dest","config":[{"key":"url","required":true}]}"#, DESTINATION);
    let (url, server) = http_server(3, vec![503]);
    let out = try_with(&p, &["--hook", "onEvent", "--retry-base-ms", "1", "--config", &format!(r#"{{"url":"{url}"}}"#)], TWO_EVENTS);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        lines,
        vec![
            serde_json::json!({"hook": "onEvent", "uuid": "u1", "attempts": 2, "ok": true}),
            serde_json::json!({"hook": "onEvent", "uuid": "u2", "attempts": 1, "ok": true}),
        ]
    );
    let bodies = server.join().unwrap();
    assert_eq!(bodies.len(), 3, "one failed attempt, its retry, the second event");
    let first: serde_json::Value = serde_json::from_str(&bodies[1]).unwrap();
    // PostHog's ProcessedPluginEvent: $set lifted beside the properties.
    assert_eq!((first["uuid"].as_str(), first["$set"]["x"].as_i64(), first["distinct_id"].as_str()), (Some("u1"), Some(1), Some("d")));
}

/// `try --hook exportEvents` hands every input event to one call; a call that keeps failing is
/// retried 3 times, reported, and the exit code is 1.
#[test]
fn try_runs_export_events_in_one_batch_and_reports_a_final_failure() {
    let dir = tempfile::tempdir().unwrap();
    let p = plugin(dir.path(), "dest", r#"{"name":"dest","config":[{"key":"url"}]}"#, DESTINATION);
    let (url, server) = http_server(1, vec![]);
    let out = try_with(&p, &["--hook", "exportEvents", "--retry-base-ms", "1", "--config", &format!(r#"{{"url":"{url}"}}"#)], TWO_EVENTS);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "{\"hook\":\"exportEvents\",\"events\":2,\"attempts\":1,\"ok\":true}\n");
    let bodies = server.join().unwrap();
    let batch: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(batch.as_array().map(|b| b.iter().map(|e| e["uuid"].clone()).collect::<Vec<_>>()), Some(vec!["u1".into(), "u2".into()]));

    let (url, server) = http_server(4, vec![500, 500, 500, 500]);
    let out = try_with(&p, &["--hook", "exportEvents", "--retry-base-ms", "1", "--config", &format!(r#"{{"url":"{url}"}}"#)], TWO_EVENTS);
    assert_eq!(out.status.code(), Some(1));
    let line: serde_json::Value = serde_json::from_str(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
    assert_eq!((line["attempts"].as_u64(), line["ok"].as_bool()), (Some(4), Some(false)), "{line}");
    assert!(line["error"].as_str().unwrap().contains("RetryError: status 500"), "{line}");
    server.join().unwrap();
}

/// Scheduled tasks and jobs run once, without input; a job gets `--payload`.
#[test]
fn try_runs_a_scheduled_task_and_a_job_with_its_payload() {
    let dir = tempfile::tempdir().unwrap();
    let p = plugin(
        dir.path(),
        "tasks",
        r#"{"name":"tasks"}"#,
        "exports.runEveryMinute = () => { console.log('tick') }\n\
         exports.jobs = { ping: (payload) => { console.log('ping', payload.n + 1) } }",
    );
    let out = try_with(&p, &["--hook", "runEveryMinute"], "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "{\"hook\":\"runEveryMinute\",\"attempts\":1,\"ok\":true}\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"message\":\"tick\""));
    let out = try_with(&p, &["--hook", "job:ping", "--payload", r#"{"n":41}"#], "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "{\"hook\":\"job:ping\",\"attempts\":1,\"ok\":true}\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"message\":\"ping 42\""));
    // A hook the plugin does not have is refused, naming what it has.
    let out = try_with(&p, &["--hook", "onEvent"], "");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the plugin has no onEvent (it exports: runEveryMinute, job:ping)"), "{err}");
    let out = try_with(&p, &["--hook", "job:pong"], "");
    assert!(String::from_utf8_lossy(&out.stderr).contains("the plugin has no job:pong"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = try_with(&p, &["--hook", "onEvnt"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown hook 'onEvnt'"));
}

/// `try` warns where `run` refuses (missing required value, value outside choices) and names
/// unknown config and attachment keys; `--strict` refuses like `run`.
#[test]
fn try_warns_about_the_configuration_and_strict_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let p = plugin(
        dir.path(),
        "cfg",
        r#"{"name":"cfg","config":[{"key":"apiKey","required":true},{"key":"mode","type":"choice","choices":["a","b"],"default":"a"},{"key":"list","type":"attachment"}]}"#,
        "exports.processEvent = (e, { config }) => { e.properties.mode = config.mode; e.properties.key = config.apiKey ?? null; return e }",
    );
    let list = dir.path().join("list.txt");
    std::fs::write(&list, "x").unwrap();
    let event = "{\"uuid\":\"1\",\"event\":\"e\",\"team_id\":1,\"properties\":{}}\n";
    let args = ["--config", r#"{"apikey":"k","mode":"c"}"#, "--attachment", &format!("lst={}", list.display())];
    let out = try_with(&p, &args, event);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    for warning in [
        "warning: apiKey: required value is missing",
        "warning: mode: value 'c' is not one of the choices",
        "warning: apikey: unknown config key (plugin.json has no such field; did you mean 'apiKey'?)",
        "warning: lst: unknown attachment (plugin.json has no such field; did you mean 'list'?)",
    ] {
        assert!(err.contains(warning), "missing {warning:?} in {err}");
    }
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (printed["properties"]["mode"].as_str(), printed["properties"]["key"].is_null()),
        (Some("c"), true),
        "it ran with what it got"
    );

    let out = try_with(&p, &[&args[..], &["--strict"]].concat(), event);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused (--strict)") && err.contains("apiKey: required value is missing"), "{err}");
    assert!(out.stdout.is_empty());
}

/// The number of lines of `path` (0 while it does not exist).
fn lines_in(path: &Path) -> usize {
    std::fs::read_to_string(path).map(|t| t.lines().count()).unwrap_or(0)
}

/// Waits (checking every 20 ms, for at most 60 s) until `path` has `n` lines.
fn wait_for_lines(path: &Path, n: usize) {
    let started = Instant::now();
    while lines_in(path) < n {
        assert!(started.elapsed() < Duration::from_secs(60), "{} has {} lines, not {n}", path.display(), lines_in(path));
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn follow_setup(dir: &Path) -> PathBuf {
    plugin(dir, "mark", r#"{"name":"mark"}"#, "exports.processEvent = (e) => { e.properties.seen = true; return e }");
    let cfg = dir.join("pf.toml");
    std::fs::write(
        &cfg,
        "[input]\npath = \"e.jsonl\"\nfollow = true\n[output]\nevents = \"out/e.jsonl\"\ndead_letters = \"out/d.jsonl\"\nlogs = \"out/l.jsonl\"\n[state]\npath = \"state\"\n[[plugins]]\nid = \"m\"\npath = \"mark\"\n",
    )
    .unwrap();
    cfg
}

fn event(i: usize) -> String {
    format!("{{\"uuid\":\"u{i}\",\"event\":\"e\",\"team_id\":1,\"properties\":{{\"i\":{i}}}}}\n")
}

fn append(path: &Path, text: &str) {
    std::fs::OpenOptions::new().append(true).open(path).unwrap().write_all(text.as_bytes()).unwrap();
}

#[test]
fn a_followed_log_is_read_as_it_grows_a_line_once_its_newline_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("e.jsonl");
    std::fs::write(&log, (0..3).map(event).collect::<String>()).unwrap();
    let cfg = follow_setup(dir.path());
    // An earlier plain run over the same state leaves its (finished) checkpoint.
    let plain = dir.path().join("plain.toml");
    std::fs::write(&plain, std::fs::read_to_string(&cfg).unwrap().replace("follow = true\n", "")).unwrap();
    assert_eq!(bin().args(["run", "--no-progress"]).arg(&plain).output().unwrap().status.code(), Some(0));
    // One worker reads a followed log: with more, each would measure the growing file at its
    // own moment for its share.
    for extra in [&["-w", "2"][..], &["-n", "2", "-p", "0"]] {
        let out = bin().args(["run", "--no-progress"]).args(extra).arg(&cfg).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{extra:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("follow reads the log with one worker"), "{extra:?}");
    }
    let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
    let child = bin().args(["run", "--no-progress"]).arg(&cfg).stderr(stderr).spawn().unwrap();
    let (events, dead) = (dir.path().join("out/e.jsonl"), dir.path().join("out/d.jsonl"));
    wait_for_lines(&events, 3);
    // Two more lines, then half of a sixth: written, but not yet a line.
    let sixth = event(5);
    append(&log, &format!("{}{}{}", event(3), event(4), &sixth[..20]));
    wait_for_lines(&events, 5);
    append(&log, &format!("{}{}", &sixth[20..], event(6)));
    wait_for_lines(&events, 7);
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // Each line once, processed, and the half line never read as a (broken) line of its own.
    let mut uuids: Vec<String> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["properties"]["seen"], true, "{l}");
            v["uuid"].as_str().unwrap().to_string()
        })
        .collect();
    uuids.sort();
    assert_eq!(uuids, (0..7).map(|i| format!("u{i}")).collect::<Vec<_>>());
    assert_eq!(lines_in(&dead), 0, "{}", std::fs::read_to_string(&dead).unwrap_or_default());
    assert!(stderr.contains("events in:           7"), "{stderr}");
    // A followed log has no fixed length: --resume refuses it.
    let out = bin().args(["run", "--resume", "--no-progress"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("followed log"), "{}", String::from_utf8_lossy(&out.stderr));
    // The followed run rewrote the outputs: the plain run's checkpoint was forgotten, so a
    // resume of the plain configuration starts over instead of trusting it.
    let out = bin().args(["run", "--resume", "--no-progress"]).arg(&plain).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("no checkpoint in this state folder"), "{stderr}");
}

#[test]
fn a_followed_log_that_is_truncated_or_replaced_ends_the_run_with_the_reason_after_what_was_read() {
    for (how, expected) in [("truncate", "shrank to 0 bytes"), ("replace", "was replaced"), ("remove", "cannot be followed")] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("e.jsonl");
        std::fs::write(&log, (0..3).map(event).collect::<String>()).unwrap();
        let cfg = follow_setup(dir.path());
        let child = bin().args(["run", "--no-progress"]).arg(&cfg).stderr(Stdio::piped()).spawn().unwrap();
        let events = dir.path().join("out/e.jsonl");
        wait_for_lines(&events, 3);
        // Two last lines, and at once the change: those two are read from the file still open
        // (with the end of the file that shows the change) and must still be written. A
        // truncation destroys what it cuts, read or not: nothing is appended before it.
        if how != "truncate" {
            append(&log, &format!("{}{}", event(3), event(4)));
        }
        match how {
            "truncate" => drop(std::fs::File::create(&log).unwrap()),
            "replace" => {
                std::fs::rename(&log, dir.path().join("e.jsonl.1")).unwrap();
                std::fs::write(&log, event(9)).unwrap();
            }
            _ => std::fs::remove_file(&log).unwrap(),
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{how}: {stderr}");
        assert!(stderr.contains(expected) && stderr.contains("e.jsonl"), "{how}: {stderr}");
        let want = if how == "truncate" { 3 } else { 5 };
        assert_eq!(lines_in(&events), want, "{how}: what was read is written");
    }
}

#[test]
fn a_followed_line_that_never_ends_is_dead_lettered_in_pieces_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("e.jsonl");
    std::fs::write(&log, event(0)).unwrap();
    let cfg = follow_setup(dir.path());
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap() + "[runtime]\nmax_event_bytes = 1024\n").unwrap();
    let child = bin().args(["run", "--no-progress"]).arg(&cfg).stderr(Stdio::piped()).spawn().unwrap();
    let (events, dead) = (dir.path().join("out/e.jsonl"), dir.path().join("out/d.jsonl"));
    wait_for_lines(&events, 1);
    // 5,000 bytes and no newline: held whole, they would grow without bound.
    let long: String = (0..5000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    append(&log, &long);
    wait_for_lines(&dead, 4);
    append(&log, &format!("\n{}", event(1)));
    wait_for_lines(&events, 2);
    wait_for_lines(&dead, 5);
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    // Pieces of at most 1,026 bytes (the limit and a line break), in order, together the line.
    let pieces: Vec<serde_json::Value> =
        std::fs::read_to_string(&dead).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let raw: String = pieces.iter().map(|d| d["raw"].as_str().unwrap()).collect();
    assert_eq!(raw, long);
    assert!(pieces.iter().all(|d| d["raw"].as_str().unwrap().len() <= 1026), "{pieces:?}");
    assert!(pieces[0]["reason"].as_str().unwrap().contains("more than runtime.max_event_bytes"), "{pieces:?}");
    assert_eq!(lines_in(&events), 2);
}

/// The first output line (at or after line `from`) whose chain stamps satisfy `pred`; appends a
/// probe event every 100 ms until one does (at most 60 s). A configuration change shows in the
/// output only with events after it: the probes are those events.
fn probe_until(log: &Path, events: &Path, next: &mut usize, pred: impl Fn(&[String]) -> bool) {
    let started = Instant::now();
    loop {
        let found = std::fs::read_to_string(events).unwrap_or_default().lines().any(|l| pred(&chain_of(l)));
        if found {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no event shows the change:\n{}",
            std::fs::read_to_string(events).unwrap_or_default()
        );
        append(log, &event(*next));
        *next += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `stamps` an output event collected: one `name@version` per plugin of its chain, in order.
fn chain_of(line: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v["properties"]["stamps"].as_array().map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

#[test]
fn configurations_added_changed_and_removed_while_running_apply_whole_at_an_epoch_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("e.jsonl");
    std::fs::write(&log, "").unwrap();
    plugin(
        dir.path(),
        "stamp",
        r#"{"name":"stamp","config":[{"key":"name","type":"string"},{"key":"v","type":"string"}]}"#,
        "exports.processEvent = (e, { config }) => { e.properties.stamps = (e.properties.stamps || []).concat([config.name + '@' + config.v]); return e }\n\
         exports.teardownPlugin = ({ config }) => { console.log('teardown ' + config.name + '@' + config.v) }",
    );
    let configs = dir.path().join("configs");
    std::fs::create_dir(&configs).unwrap();
    let conf = |id: &str, order: i64, v: &str, path: &str| {
        format!("id = \"{id}\"\npath = \"{path}\"\norder = {order}\nconfig = {{ name = \"{id}\", v = \"{v}\" }}\n")
    };
    std::fs::write(configs.join("a.toml"), conf("a", 1, "1", "../stamp")).unwrap();
    let cfg = dir.path().join("pf.toml");
    std::fs::write(
        &cfg,
        "[input]\npath = \"e.jsonl\"\nfollow = true\n[output]\nevents = \"out/e.jsonl\"\ndead_letters = \"out/d.jsonl\"\nlogs = \"out/l.jsonl\"\n\
         [state]\npath = \"state\"\n[plugin_configs]\ndir = \"configs\"\n\
         [[plugins]]\nid = \"base\"\npath = \"stamp\"\norder = 0\nconfig = { name = \"base\", v = \"0\" }\n",
    )
    .unwrap();
    let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
    let child = bin().args(["run", "--no-progress"]).arg(&cfg).stderr(stderr).spawn().unwrap();
    let events = dir.path().join("out/e.jsonl");
    let mut next = 0;
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    // Each phase: the change, probes until an event shows it, then three events that must all
    // see exactly the new chain.
    let mut phases: Vec<(usize, Vec<String>)> = Vec::new();
    let mut three = |next: &mut usize, want: Vec<String>| {
        let first = *next;
        append(&log, &(first..first + 3).map(event).collect::<String>());
        *next += 3;
        phases.push((first, want));
    };
    probe_until(&log, &events, &mut next, |c| c == s(&["base@0", "a@1"]));
    three(&mut next, s(&["base@0", "a@1"]));
    // A new version of a.
    std::fs::write(configs.join("a.toml"), conf("a", 1, "2", "../stamp")).unwrap();
    probe_until(&log, &events, &mut next, |c| c.contains(&"a@2".to_string()));
    three(&mut next, s(&["base@0", "a@2"]));
    // b added, and c, which cannot load (its plugin folder does not exist): b runs, c does not.
    std::fs::write(configs.join("b.toml"), conf("b", 2, "1", "../stamp")).unwrap();
    std::fs::write(configs.join("c.toml"), conf("c", 3, "1", "../missing")).unwrap();
    probe_until(&log, &events, &mut next, |c| c.contains(&"b@1".to_string()));
    three(&mut next, s(&["base@0", "a@2", "b@1"]));
    // a broken by an edit (a TOML error): a@2 keeps running; then a's file removed.
    std::fs::write(configs.join("a.toml"), "id = \"a\"\npath = \n").unwrap();
    let stderr_path = dir.path().join("stderr.log");
    let started = Instant::now();
    while !std::fs::read_to_string(&stderr_path).unwrap().contains("a.toml") {
        assert!(started.elapsed() < Duration::from_secs(60), "the broken edit of a.toml was never reported");
        std::thread::sleep(Duration::from_millis(20));
    }
    three(&mut next, s(&["base@0", "a@2", "b@1"]));
    wait_for_lines(&events, next);
    std::fs::remove_file(configs.join("a.toml")).unwrap();
    probe_until(&log, &events, &mut next, |c| c == s(&["base@0", "b@1"]));
    three(&mut next, s(&["base@0", "b@1"]));
    wait_for_lines(&events, next);
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stderr}");

    // Every event once, in order (one worker), each with a whole chain of one configuration
    // state, the states in the order they were made.
    let lines: Vec<String> = std::fs::read_to_string(&events).unwrap().lines().map(str::to_string).collect();
    assert_eq!(lines.len(), next, "every event written once");
    let states = [s(&["base@0", "a@1"]), s(&["base@0", "a@2"]), s(&["base@0", "a@2", "b@1"]), s(&["base@0", "b@1"])];
    let mut state = 0;
    for (i, line) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["uuid"], format!("u{i}"), "output in input order");
        let chain = chain_of(line);
        let at =
            states.iter().position(|c| *c == chain).unwrap_or_else(|| panic!("event {i} saw a chain of no configuration state: {chain:?}"));
        assert!(at >= state, "event {i} saw {chain:?} after an event saw {:?}", states[state]);
        state = at;
    }
    for (first, want) in &phases {
        for (i, line) in lines.iter().enumerate().skip(*first).take(3) {
            assert_eq!(&chain_of(line), want, "event {i}, written after its phase's change showed");
        }
    }
    // The old versions were torn down when replaced or removed; c never loaded and said why.
    let logs = std::fs::read_to_string(dir.path().join("out/l.jsonl")).unwrap();
    assert!(logs.contains("teardown a@1") && logs.contains("teardown a@2"), "{logs}");
    assert!(stderr.contains("c.toml") && stderr.contains("not loaded"), "{stderr}");
}
