//! Helpers shared by the criterion benches and the throughput harness (`src/bin/throughput.rs`).
//!
//! Nothing here is timed by a test: speed lives in `cargo bench` and `scripts/bench.sh`, and the
//! figures go to `BENCHMARKS.md`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use operators::plugin::{HostServices, LogEntry, LogSink};
use state::StateStore;

/// A log sink that drops every entry (benchmarks must not grow a log in memory).
#[derive(Debug, Default)]
pub struct NullLogs;

impl LogSink for NullLogs {
    fn log(&self, _entry: LogEntry) {}
}

/// Host services over `store`, with an optional geoip database and no logging.
pub fn services(store: Arc<dyn StateStore>, geoip: Option<&Path>) -> HostServices {
    let geoip = geoip.map(|p| Arc::new(operators::plugin::GeoIp::open(p).expect("geoip database opens")));
    HostServices::new(store, geoip, Arc::new(NullLogs), Duration::from_secs(10))
}

/// The workspace root (benches run with the package folder as working directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("benches/ has a parent").to_path_buf()
}

/// The four peer plugins, unchanged, as shipped next to the Node harness.
pub fn peer_plugin(name: &str) -> PathBuf {
    let from_env = std::env::var_os("PEER_PLUGINS").map(PathBuf::from);
    from_env.unwrap_or_else(|| workspace_root().join("../shared/peer/plugins")).join(name)
}

/// The real GeoLite2-City database, when `scripts/fetch-test-data.sh` has fetched it.
pub fn geolite_path() -> Option<PathBuf> {
    let p = std::env::var_os("GEOIP_DB").map(PathBuf::from).unwrap_or_else(|| workspace_root().join(".cache/GeoLite2-City.mmdb"));
    p.exists().then_some(p)
}

/// A field of `/proc/self/status` in KiB (`VmRSS`, `VmHWM`), 0 where unavailable.
pub fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.trim_start_matches(field).trim_start_matches(':').split_whitespace().next().and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

/// Percentile (0..=1) of sorted samples, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// A ~1 KB `$pageview` event in the shape `gen-events.py` writes (for the micro-benches).
pub const EVENT_1KB: &str = r#"{"distinct_id":"0191f3a2-6d1c-7b8e-a4f0-3c2d9e8b1a47","ip":"131.111.150.25","site_url":"https://app.example.com","team_id":2,"now":"2024-06-03T08:14:07.512Z","event":"$pageview","sent_at":"2024-06-03T08:14:07.498Z","timestamp":"2024-06-03T08:14:07.311Z","uuid":"0191f3a2-7e44-7c21-9b3f-5a6d8c0e2f19","properties":{"$os":"Mac OS X","$os_version":"14.4.1","$browser":"Chrome","$browser_version":124,"$device_type":"Desktop","$current_url":"https://app.example.com/pricing?ref=nav","$host":"app.example.com","$pathname":"/pricing","$screen_height":1117,"$screen_width":1728,"$viewport_height":960,"$viewport_width":1728,"$lib":"web","$lib_version":"1.130.2","$insert_id":"k3v9q1x0m2b7d4s8","$time":1717402447.311,"$device_id":"0191f3a2-6d1c-7b8e-a4f0-3c2d9e8b1a47","$session_id":"0191f3a2-6d1d-7e90-8c55-1f2e3d4c5b6a","$window_id":"0191f3a2-6d1d-7e90-8c55-9a8b7c6d5e4f","$referrer":"https://www.google.com/","$referring_domain":"www.google.com","$raw_user_agent":"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36","utm":{"source":"newsletter","medium":"email","campaign":{"name":"june-launch","id":4411}},"title":"Pricing – Example","$set_once":{"$initial_referrer":"https://www.google.com/"}}}"#;

/// Writes a one-file plugin (`plugin.json` + `index.js`) into a temporary folder.
pub fn temp_plugin(name: &str, index_js: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = serde_json::json!({ "name": name, "main": "index.js", "config": [] });
    std::fs::write(dir.path().join("plugin.json"), manifest.to_string()).expect("write plugin.json");
    std::fs::write(dir.path().join("index.js"), index_js).expect("write index.js");
    dir
}

/// A loaded instance of the plugin in `dir` for team 2, after `setupPlugin`.
pub fn instance(runtime: &operators::plugin::PluginRuntime, dir: &Path, services: &HostServices) -> operators::plugin::PluginInstance {
    let def = operators::plugin::PluginDefinition::load(dir).expect("plugin loads");
    let cfg = operators::plugin::InstanceConfig { config_id: def.manifest.name.clone(), team_id: Some(2), ..Default::default() };
    let mut inst = operators::plugin::PluginInstance::new(runtime, &def, &cfg, services).expect("instance");
    inst.setup().expect("setupPlugin");
    inst
}

/// A small event (for call-overhead benches).
pub const EVENT_TINY: &str = r#"{"event":"tiny","team_id":2,"uuid":"u-1","distinct_id":"d","properties":{}}"#;

/// Criterion settings for every bench here: short, so `scripts/bench.sh` stays under a few
/// minutes; `BENCH_SECONDS` lengthens the measurement.
pub fn criterion_config() -> criterion_lite::Settings {
    let secs = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    criterion_lite::Settings { measurement: Duration::from_secs_f64(secs), warm_up: Duration::from_millis(500) }
}

/// Plain settings (criterion itself is a dev-dependency, so it cannot be named here).
pub mod criterion_lite {
    use std::time::Duration;
    /// Measurement and warm-up time.
    #[derive(Clone, Copy, Debug)]
    pub struct Settings {
        /// Measurement time per bench.
        pub measurement: Duration,
        /// Warm-up time per bench.
        pub warm_up: Duration,
    }
}
