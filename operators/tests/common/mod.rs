//! Helpers for plugin-host tests: small plugin folders written on the fly, and a host with
//! in-memory state and captured logs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use operators::plugin::{HostServices, InstanceConfig, Limits, LoadError, MemoryLogSink, PluginDefinition, PluginInstance, PluginRuntime};
use serde_json::{Value, json};
use state::{MemoryStore, StateStore};

/// A plugin folder in a temporary directory.
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("plugin")
    }
}

/// Writes `files` (name, contents) into a fresh plugin folder. Without a `plugin.json` entry,
/// one naming the plugin `name` is added.
pub fn plugin(name: &str, files: &[(&str, &str)]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("plugin");
    std::fs::create_dir_all(&root).unwrap();
    if !files.iter().any(|(n, _)| *n == "plugin.json") {
        std::fs::write(root.join("plugin.json"), json!({ "name": name }).to_string()).unwrap();
    }
    for (file, text) in files {
        let path = root.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    Fixture { dir }
}

/// A host: one runtime, in-memory state, captured logs.
pub struct Host {
    pub runtime: PluginRuntime,
    pub store: Arc<MemoryStore>,
    pub logs: Arc<MemoryLogSink>,
    pub services: HostServices,
}

impl Host {
    pub fn new() -> Self {
        Self::with_limits(Limits { call_timeout: Duration::from_millis(300), ..Limits::default() })
    }

    pub fn with_limits(limits: Limits) -> Self {
        let store = Arc::new(MemoryStore::new());
        let logs = Arc::new(MemoryLogSink::default());
        let services = HostServices::new(store.clone() as Arc<dyn StateStore>, None, logs.clone(), Duration::from_secs(5));
        Self { runtime: PluginRuntime::new(limits).unwrap(), store, logs, services }
    }

    pub fn load(&self, fixture: &Fixture, config: Value) -> Result<PluginInstance, LoadError> {
        self.load_as(fixture, config, "1", Some(2))
    }

    pub fn load_as(&self, fixture: &Fixture, config: Value, id: &str, team: Option<i64>) -> Result<PluginInstance, LoadError> {
        let def = PluginDefinition::load(&fixture.path())?;
        let cfg = InstanceConfig {
            config_id: id.to_string(),
            team_id: team,
            config: config.as_object().cloned().unwrap_or_default(),
            attachments: Default::default(),
            lenient: false,
        };
        PluginInstance::new(&self.runtime, &def, &cfg, &self.services)
    }

    /// Loads and runs setupPlugin, panicking on failure.
    pub fn ready(&self, fixture: &Fixture) -> PluginInstance {
        let mut p = self.load(fixture, json!({})).unwrap();
        p.setup().unwrap();
        p
    }

    pub fn messages(&self) -> Vec<String> {
        self.logs.entries().into_iter().map(|e| e.message).collect()
    }
}

/// A small event of team 2.
pub fn event() -> Value {
    json!({"uuid": "u-1", "event": "$pageview", "distinct_id": "d1", "team_id": 2, "properties": {"$current_url": "https://example.com/a"}})
}

/// Runs processEvent on `event()` and parses the result.
pub fn process(p: &mut PluginInstance) -> Option<Value> {
    p.process_event_json(&event().to_string()).unwrap().map(|s| serde_json::from_str::<Value>(&s).unwrap())
}

/// Path of the real MaxMind City database the test script downloads.
pub fn geoip_db() -> PathBuf {
    let path = std::env::var_os("PLUGINFLOW_GEOIP_DB")
        .map(PathBuf::from)
        // Cargo's package folder at run time first (a binary built by another checkout sharing
        // the target folder), else where it was compiled.
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_MANIFEST_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf())
                .join("../.cache/GeoLite2-City.mmdb")
        });
    assert!(
        path.is_file(),
        "the GeoLite2 City database is missing at {}: run scripts/fetch-test-data.sh (the test command does)",
        path.display()
    );
    path
}

/// The event of a chain's result as JSON: the final event, or the one in its dead letter.
pub fn json_of(r: &operators::dataflow::chain::ChainResult) -> Value {
    use operators::dataflow::chain::ChainResult;
    match r {
        ChainResult::Kept(ev) => serde_json::from_str(&ev.json).unwrap(),
        ChainResult::Failed { letter, .. } => serde_json::from_str(&letter.raw).unwrap(),
        ChainResult::Dropped { .. } => panic!("nothing is dropped here"),
    }
}
