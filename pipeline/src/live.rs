//! Plugin configurations that come and go while the pipeline runs (`[plugin_configs] dir`).
//!
//! The first worker of the cluster looks at the folder every half second ([`Watcher`]). A file
//! added or changed is read, checked and loaded as `pluginflow run` checks `[[plugins]]` at start
//! (the plugin compiled, one trial instance); one that fails leaves the version before it
//! running and says why (log, `/plugins`, summary). What passes becomes a [`ConfigUpdate`] at
//! that worker's current epoch: a change of a differential collection of configurations (id →
//! version), broadcast to every worker and applied by the chain stage before any event of that
//! epoch or a later one, and after every event of the epochs before (`run::chain_stage`). So an
//! event's chain is all of one version: never half a change.
//!
//! The loaded configuration itself goes from the watcher to the other workers of its process
//! through a [`Registry`] (what the dataflow carries is the id, the version and the file's text);
//! a worker of another process of a cluster loads the text itself.

use operators::sync::lock;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use operators::plugin::worker::{ConfigChange, PluginSpec};
use operators::plugin::{HostServices, PluginDefinition, PluginRuntime};

use crate::config::PluginEntry;

/// How often the folder is looked at.
pub const POLL: Duration = Duration::from_millis(500);

/// The longest a changed file's trial instance may take (its plugin's top-level code).
pub const TRIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest configuration file read; a larger one (or a special file that never ends) is a
/// problem, not a configuration.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// One change of the configuration collection: `entry` is the new version's file (text and the
/// folder its relative paths are under), `None` when the configuration is gone.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConfigUpdate {
    /// Configuration id.
    pub id: String,
    /// Its version: 1 for the first, one more at each change (a removal counts).
    pub version: u64,
    /// The file's text and its folder; `None`: removed.
    pub entry: Option<(String, PathBuf)>,
}

/// Loaded configurations by (id, version), shared by the workers of a process: the watcher puts
/// each one it sends, so the others apply exactly what it checked.
#[derive(Default)]
pub struct Registry {
    specs: Mutex<HashMap<(String, u64), PluginSpec>>,
}

impl Registry {
    /// The change `update` stands for: from the registry, or (another process's update) loaded
    /// from its text here.
    pub fn change(&self, update: &ConfigUpdate) -> Result<ConfigChange, String> {
        let Some((text, dir)) = &update.entry else {
            return Ok(ConfigChange::Remove(update.id.clone()));
        };
        if let Some(spec) = lock(&self.specs).get(&(update.id.clone(), update.version)) {
            return Ok(ConfigChange::Upsert(spec.clone()));
        }
        let entry = parse_entry(text, dir)?;
        spec_of(&entry).map(ConfigChange::Upsert)
    }

    /// Keeps `spec` for the other workers, and forgets the versions of `update.id` before the
    /// previous one (a worker that still needs one loads it from the update's text).
    fn put(&self, update: &ConfigUpdate, spec: PluginSpec) {
        let mut specs = operators::sync::lock(&self.specs);
        specs.retain(|(id, version), _| *id != update.id || version + 1 >= update.version);
        specs.insert((update.id.clone(), update.version), spec);
    }
}

/// A configuration file as read: its fields, relative paths resolved against `dir`.
fn parse_entry(text: &str, dir: &Path) -> Result<PluginEntry, String> {
    let mut entry: PluginEntry = toml::from_str(text).map_err(|e| format!("not a configuration: {}", e.message()))?;
    if entry.path.is_relative() {
        entry.path = dir.join(&entry.path);
    }
    for path in entry.attachments.values_mut() {
        if path.is_relative() {
            *path = dir.join(&*path);
        }
    }
    if entry.id.trim().is_empty() {
        return Err("id must not be empty".into());
    }
    if entry.teams.as_ref().is_some_and(Vec::is_empty) {
        return Err("teams is empty: omit it to run for every team".into());
    }
    Ok(entry)
}

/// The entry compiled: its plugin folder read and compiled.
pub(crate) fn spec_of(entry: &PluginEntry) -> Result<PluginSpec, String> {
    let def = PluginDefinition::load(&entry.path).map_err(|e| e.to_string())?;
    Ok(PluginSpec {
        id: entry.id.clone(),
        def,
        teams: entry.teams.clone(),
        config: entry.config_json(),
        attachments: entry.attachments.clone(),
        order: entry.order,
    })
}

/// What the watcher knows of one file.
#[derive(Debug)]
struct Seen {
    text: String,
    /// The configuration id it runs as (its last version that loaded), if any.
    running: Option<String>,
    /// Its id was taken by another file: tried again when another file changes (it may free
    /// the id). Other failures wait for the file itself to change.
    failed: bool,
}

/// The folder's watcher, on the first worker of the cluster.
pub struct Watcher {
    dir: PathBuf,
    files: BTreeMap<PathBuf, Seen>,
    /// Ids of `[[plugins]]` in the configuration file: a file may not take them.
    fixed: HashSet<String>,
    versions: HashMap<String, u64>,
    next_look: Instant,
    registry: Arc<Registry>,
    problems: Arc<Mutex<BTreeMap<PathBuf, String>>>,
}

impl Watcher {
    /// A watcher of `dir`; `fixed` are the ids of the configuration file's `[[plugins]]`.
    pub fn new(dir: PathBuf, fixed: HashSet<String>, registry: Arc<Registry>, problems: Arc<Mutex<BTreeMap<PathBuf, String>>>) -> Self {
        Self { dir, files: BTreeMap::new(), fixed, versions: HashMap::new(), next_look: Instant::now(), registry, problems }
    }

    /// Looks at the folder when it is time: the updates to send, in file order. `check` makes a
    /// trial instance of a loaded configuration (a refused config value, a top-level throw).
    pub fn poll(&mut self, check: impl Fn(&PluginSpec) -> Result<(), String>) -> Vec<ConfigUpdate> {
        let now = Instant::now();
        if now < self.next_look {
            return Vec::new();
        }
        self.next_look = now + POLL;
        let present = match self.read_folder() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "cannot read the plugin configuration folder; configurations stay as they are");
                self.problem(&self.dir.clone(), Some(format!("cannot read the folder: {e}")));
                return Vec::new();
            }
        };
        self.problem(&self.dir.clone(), None);
        let mut updates = Vec::new();
        // Files gone: their configurations go.
        let gone: Vec<PathBuf> = self.files.keys().filter(|p| !present.contains_key(*p)).cloned().collect();
        for path in gone {
            let seen = self.files.remove(&path).expect("listed above");
            self.problem(&path, None);
            if let Some(id) = seen.running {
                updates.push(self.update(&id, None));
            }
        }
        // A failed file is tried again when another file changed (or went) in this look.
        let others_changed = !updates.is_empty() || present.iter().any(|(p, t)| self.files.get(p).is_none_or(|s| s.text != *t));
        for (path, text) in present {
            if self.files.get(&path).is_some_and(|s| s.text == text && !(s.failed && others_changed)) {
                continue;
            }
            let running = self.files.get(&path).and_then(|s| s.running.clone());
            match self.load(&path, &text, running.as_deref(), &check) {
                Ok((entry, spec)) => {
                    if let Some(old) = running.filter(|old| *old != entry.id) {
                        updates.push(self.update(&old, None));
                    }
                    let now_running = if entry.enabled {
                        let update = self.update(&entry.id, Some((text.clone(), self.dir.clone())));
                        self.registry.put(&update, spec);
                        updates.push(update);
                        Some(entry.id.clone())
                    } else {
                        // Disabled: as if removed.
                        if self.files.get(&path).and_then(|s| s.running.as_ref()) == Some(&entry.id) {
                            updates.push(self.update(&entry.id, None));
                        }
                        None
                    };
                    self.problem(&path, None);
                    self.files.insert(path, Seen { text, running: now_running, failed: false });
                }
                Err(why) => {
                    tracing::error!(file = %path.display(), error = %why, "plugin configuration not loaded; the version before it (if any) keeps running");
                    let taken = why.contains("is taken by");
                    self.problem(&path, Some(why));
                    self.files.insert(path, Seen { text, running, failed: taken });
                }
            }
        }
        updates
    }

    fn load(
        &self,
        path: &Path,
        text: &str,
        running: Option<&str>,
        check: &impl Fn(&PluginSpec) -> Result<(), String>,
    ) -> Result<(PluginEntry, PluginSpec), String> {
        let entry = parse_entry(text, &self.dir)?;
        if self.fixed.contains(&entry.id) {
            return Err(format!("id '{}' is a [[plugins]] entry of the configuration file", entry.id));
        }
        if let Some((other, _)) = self
            .files
            .iter()
            .find(|(p, s)| p.as_path() != path && s.running.as_deref() == Some(entry.id.as_str()) && running != Some(&entry.id))
        {
            return Err(format!("id '{}' is taken by {}", entry.id, other.display()));
        }
        if !entry.path.is_dir() {
            return Err(format!("path: {} is not a folder", entry.path.display()));
        }
        for (key, file) in &entry.attachments {
            if !file.is_file() {
                return Err(format!("attachments.{key}: {} is not a readable file", file.display()));
            }
        }
        let spec = spec_of(&entry)?;
        check(&spec)?;
        Ok((entry, spec))
    }

    fn update(&mut self, id: &str, entry: Option<(String, PathBuf)>) -> ConfigUpdate {
        let version = self.versions.entry(id.to_owned()).or_default();
        *version += 1;
        ConfigUpdate { id: id.to_owned(), version: *version, entry }
    }

    fn problem(&self, path: &Path, why: Option<String>) {
        let mut problems = lock(&self.problems);
        match why {
            Some(why) => problems.insert(path.to_path_buf(), why),
            None => problems.remove(path),
        };
    }

    /// The `*.toml` files of the folder and their text (files that vanish while read are left
    /// for the next look; hidden files, such as an editor's, are not configurations).
    fn read_folder(&self) -> std::io::Result<BTreeMap<PathBuf, String>> {
        let mut out = BTreeMap::new();
        for item in std::fs::read_dir(&self.dir)? {
            let path = item?.path();
            let hidden = path.file_name().and_then(|n| n.to_str()).is_none_or(|n| n.starts_with('.'));
            if hidden || path.extension().and_then(|e| e.to_str()) != Some("toml") || !path.is_file() {
                continue;
            }
            match read_bounded(&path) {
                Ok(text) => {
                    if operators::sync::lock(&self.problems).get(&path).is_some_and(|p| p.starts_with("cannot read")) {
                        self.problem(&path, None);
                    }
                    out.insert(path, text);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    // Unreadable: keep what it was (if anything) rather than remove it; said once
                    // (and listed by /healthz) rather than at every look.
                    let why = format!("cannot read: {e}");
                    let known = operators::sync::lock(&self.problems).get(&path) == Some(&why);
                    if !known {
                        tracing::error!(file = %path.display(), error = %e, "cannot read a plugin configuration file");
                    }
                    self.problem(&path, Some(why));
                    if let Some(seen) = self.files.get(&path) {
                        out.insert(path, seen.text.clone());
                    }
                }
            }
        }
        Ok(out)
    }
}

/// A configuration file's text, refused past [`MAX_FILE_BYTES`] (a special file that never ends
/// included: at most that much is read).
fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?.take(MAX_FILE_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!("larger than {MAX_FILE_BYTES} bytes: not a configuration")));
    }
    Ok(text)
}

/// A trial instance of `spec` in a runtime of its own (what the start does for `[[plugins]]`).
pub fn check_load(sandbox: &PluginRuntime, spec: &PluginSpec, services: &HostServices) -> Result<(), String> {
    let cfg = operators::plugin::InstanceConfig {
        config_id: spec.id.clone(),
        team_id: spec.teams.as_ref().and_then(|t| t.first().copied()),
        config: spec.config.clone(),
        attachments: spec.attachments.clone(),
        lenient: false,
    };
    operators::plugin::PluginInstance::new(sandbox, &spec.def, &cfg, services).map(drop).map_err(|e| format!("cannot load: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("p");
        std::fs::create_dir(&plugin).unwrap();
        std::fs::write(plugin.join("plugin.json"), r#"{"name":"p"}"#).unwrap();
        std::fs::write(plugin.join("index.js"), "exports.processEvent = (e) => e\n").unwrap();
        let configs = dir.path().join("configs");
        std::fs::create_dir(&configs).unwrap();
        (dir, configs)
    }

    fn watcher(configs: &Path, fixed: &[&str]) -> (Watcher, Arc<Mutex<BTreeMap<PathBuf, String>>>) {
        let problems = Arc::new(Mutex::new(BTreeMap::new()));
        let fixed = fixed.iter().map(|s| s.to_string()).collect();
        (Watcher::new(configs.to_path_buf(), fixed, Arc::default(), problems.clone()), problems)
    }

    /// The next look at the folder, now.
    fn look(w: &mut Watcher) -> Vec<(String, u64, bool)> {
        w.next_look = Instant::now();
        w.poll(|_| Ok(())).into_iter().map(|u| (u.id, u.version, u.entry.is_some())).collect()
    }

    fn write(configs: &Path, file: &str, id: &str) {
        std::fs::write(configs.join(file), format!("id = \"{id}\"\npath = \"../p\"\n")).unwrap();
    }

    #[test]
    fn ids_taken_stay_with_their_holder_and_a_refused_file_is_tried_again_when_another_changes() {
        let (_d, configs) = folder();
        let (mut w, problems) = watcher(&configs, &["fixed"]);
        write(&configs, "a.toml", "x");
        write(&configs, "b.toml", "x");
        write(&configs, "c.toml", "fixed");
        assert_eq!(look(&mut w), [("x".into(), 1, true)], "a.toml holds x; b.toml and c.toml are refused");
        let seen = problems.lock().unwrap().clone();
        assert!(seen[&configs.join("b.toml")].contains("taken by"), "{seen:?}");
        assert!(seen[&configs.join("c.toml")].contains("[[plugins]]"), "{seen:?}");
        assert_eq!(look(&mut w), [], "nothing changed, nothing sent");
        // a.toml goes: x goes with it, and b.toml, tried again, takes x.
        std::fs::remove_file(configs.join("a.toml")).unwrap();
        assert_eq!(look(&mut w), [("x".into(), 2, false), ("x".into(), 3, true)]);
        assert!(!problems.lock().unwrap().contains_key(&configs.join("b.toml")));
        // b.toml renames its configuration: the old id goes, the new one comes.
        write(&configs, "b.toml", "y");
        assert_eq!(look(&mut w), [("x".into(), 4, false), ("y".into(), 1, true)]);
    }

    #[test]
    fn a_huge_file_is_a_problem_not_a_read_without_end_and_broken_files_are_not_tried_again_for_nothing() {
        let (_d, configs) = folder();
        let (mut w, problems) = watcher(&configs, &[]);
        std::fs::write(configs.join("huge.toml"), vec![b'#'; (MAX_FILE_BYTES + 10) as usize]).unwrap();
        std::fs::write(configs.join("bad.toml"), "id = ").unwrap();
        assert_eq!(look(&mut w), []);
        let seen = problems.lock().unwrap().clone();
        assert!(seen[&configs.join("huge.toml")].contains("larger than"), "{seen:?}");
        // Another file changes: the broken one (not an id clash) is not checked again.
        let checks = std::cell::Cell::new(0);
        write(&configs, "a.toml", "a");
        w.next_look = Instant::now();
        let sent = w.poll(|_| {
            checks.set(checks.get() + 1);
            Ok(())
        });
        assert_eq!(sent.len(), 1);
        assert_eq!(checks.get(), 1, "only a.toml was loaded");
        // The huge file shrinks to a configuration: its problem goes.
        write(&configs, "huge.toml", "h");
        assert_eq!(look(&mut w), [("h".into(), 1, true)]);
        assert!(!problems.lock().unwrap().contains_key(&configs.join("huge.toml")));
    }

    #[test]
    fn disabled_hidden_and_broken_files() {
        let (_d, configs) = folder();
        let (mut w, problems) = watcher(&configs, &[]);
        write(&configs, "a.toml", "a");
        write(&configs, ".a.toml.swp", "hidden");
        write(&configs, ".b.toml", "hidden");
        std::fs::write(configs.join("notes.txt"), "not a configuration").unwrap();
        assert_eq!(look(&mut w), [("a".into(), 1, true)]);
        // Broken: nothing changes, the problem is listed; fixed: the new version goes.
        std::fs::write(configs.join("a.toml"), "id = \"a\"\npath = ").unwrap();
        assert_eq!(look(&mut w), []);
        assert!(problems.lock().unwrap()[&configs.join("a.toml")].contains("not a configuration"));
        std::fs::write(configs.join("a.toml"), "id = \"a\"\npath = \"../p\"\norder = 5\n").unwrap();
        assert_eq!(look(&mut w), [("a".into(), 2, true)]);
        assert!(problems.lock().unwrap().is_empty());
        // Disabled: as removed; enabled again: back.
        std::fs::write(configs.join("a.toml"), "id = \"a\"\npath = \"../p\"\nenabled = false\n").unwrap();
        assert_eq!(look(&mut w), [("a".into(), 3, false)]);
        write(&configs, "a.toml", "a");
        assert_eq!(look(&mut w), [("a".into(), 4, true)]);
        // A trial instance that fails (a refused config value, say) is a problem too.
        write(&configs, "z.toml", "z");
        w.next_look = Instant::now();
        assert!(w.poll(|_| Err("cannot load: refused".into())).is_empty());
        assert!(problems.lock().unwrap()[&configs.join("z.toml")].contains("refused"));
    }
}
