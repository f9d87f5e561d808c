//! A loaded plugin configuration on one worker: its own QuickJS runtime and its hooks.
//!
//! [`PluginDefinition`] is the plugin folder, read and compiled once per process.
//! [`PluginInstance`] is that plugin with one configuration, in a QuickJS runtime of its own:
//! its own heap (with its own limit), globals, job queue and `meta` (and so its own `global`).
//! Typed hook calls enforce the deadline and classify every failure. Events go in as JSON
//! text and come out as JSON text read by the host (`tojson`): no object of one instance is
//! ever handed to another, and the host runs no plugin code to read a result.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, OnceLock};

use rquickjs::{Ctx, Function, Object, Persistent, Promise, Value, promise::PromiseState, qjs};
use serde_json::{Map, Value as Json};
use state::CacheScope;

use super::error::{ErrorKind, Hook, LoadError, PluginError};
use super::host::{self, HostBindings, HostServices, Outbox};
use super::log::InstanceIdentity;
use super::log::{LogLevel, LogSource, Redactor};
use super::manifest::{self, PluginManifest};
use super::runtime::{Deadline, Heap, Limits, PluginRuntime};
use super::source::{self, CompiledPlugin};
use super::tojson::{self, Rules};

const PRELUDE: &str = include_str!("js/prelude.js");

/// The prelude as QuickJS bytecode, written by the first instance of the process that compiles
/// it and read by every later one: parsing its source was three quarters of the time it took to
/// create an instance (~2.6 ms of ~3.5 ms). The bytes are QuickJS's own output in this process,
/// never read from outside.
static PRELUDE_BYTECODE: OnceLock<Vec<u8>> = OnceLock::new();

/// What loading gives: the prelude's `pf` object and the names of the hooks the plugin exports.
type Loaded = (Persistent<Object<'static>>, Vec<String>);

/// Most pending jobs drained after a call timed out (each is cut short by the interrupt).
const MAX_STALE_JOBS: usize = 100_000;

/// Share of the memory limit above which, after an out-of-memory failure and a collection, the
/// instance that failed is disabled so that the others can go on.
const MEMORY_HIGH_WATER: f64 = 0.5;

/// A plugin folder, read and compiled. Shared by all workers of a process.
#[derive(Debug)]
pub struct PluginDefinition {
    /// The plugin folder.
    pub dir: PathBuf,
    /// Its `plugin.json`.
    pub manifest: PluginManifest,
    /// Its compiled modules.
    pub compiled: CompiledPlugin,
    /// Its `cache` namespace: the name it declares and a digest of its folder's canonical
    /// path, so configurations of the same plugin folder share a cache (PostHog shared it per
    /// plugin) and no plugin can claim another's by declaring its name.
    pub cache_namespace: String,
}

impl PluginDefinition {
    /// Reads `plugin.json`, finds the entry and compiles it with its relative imports.
    pub fn load(dir: &Path) -> Result<Arc<Self>, LoadError> {
        let folder = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let manifest = PluginManifest::load(dir).map_err(|source| LoadError::Manifest { plugin: folder.clone(), source })?;
        let plugin = manifest.name.clone();
        let entry = manifest::entry_file(dir, &manifest).map_err(|source| LoadError::Manifest { plugin: plugin.clone(), source })?;
        let compiled = source::compile_plugin(dir, &entry).map_err(|source| LoadError::Source { plugin, source })?;
        let canonical = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let digest = super::natives::digest("sha256", canonical.to_string_lossy().as_bytes(), None).expect("sha256 is supported");
        let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        let cache_namespace = format!("{}:{hex}", manifest.name);
        Ok(Arc::new(Self { dir: dir.to_path_buf(), manifest, compiled, cache_namespace }))
    }

    /// The `cache` scope of this plugin for `team`.
    pub fn cache_scope(&self, team: Option<i64>) -> CacheScope {
        CacheScope { plugin: self.cache_namespace.clone(), team }
    }
}

/// One configuration of a plugin: what PostHog kept in `posthog_pluginconfig`.
#[derive(Clone, Debug, Default)]
pub struct InstanceConfig {
    /// Configuration id (unique per pipeline); shown as `Name (id)` in `$plugins_*`.
    pub config_id: String,
    /// Team the configuration applies to; `None` for every team.
    pub team_id: Option<i64>,
    /// Config values, keyed as in `plugin.json`.
    pub config: Map<String, Json>,
    /// Attachment files, by config key.
    pub attachments: BTreeMap<String, PathBuf>,
    /// Run with the values as given (defaults filled in) even when a `required` one is missing
    /// or one is outside its `choices`: `pluginflow try` without `--strict`. `run` never sets it.
    pub lenient: bool,
}

/// What one `processEvent` call did to an event.
#[derive(Debug)]
pub enum StepOutcome {
    /// The plugin returned an event (its JSON text, read by the host).
    Kept(String),
    /// The plugin returned a falsy value: the event is dropped.
    Dropped,
    /// The call failed. The chain goes on with the given text when there is one (the input
    /// with the plugin's mutations, or for a `team_id` change the returned event with its
    /// team restored, as PostHog did), else with the event as it stood before the call.
    Failed(PluginError, Option<String>),
}

/// One step of a chain (`chain::run_chain`): a [`StepOutcome`], or the event handed to the
/// next plugin as values built in its runtime.
pub(crate) enum Step {
    /// The event read back as text, with where its `properties` value is in it.
    Kept(String, Option<std::ops::Range<usize>>),
    /// The plugin returned an event, copied into the next plugin's runtime (see
    /// [`PluginInstance::step`]); this plugin keeps what it returned until
    /// [`PluginInstance::forget_returned`].
    Passed,
    Dropped,
    Failed(PluginError, Option<String>),
}

/// What a `processEvent` call gave, inside the call.
enum Returned {
    /// Read back (`None`: a falsy value, the event is dropped).
    Read(Option<tojson::Read>),
    /// Copied into the next plugin's runtime; what was returned, to keep once the call is over.
    Passed(Persistent<Value<'static>>),
}

/// Where a chain step's event comes from.
pub(crate) enum StepInput<'a> {
    /// JSON text, built in this runtime for the call.
    Text(&'a str),
    /// Already built here by the previous plugin's step (`Step::Passed`).
    Entered,
}

/// A plugin configuration instantiated in a runtime of its own.
pub struct PluginInstance {
    // Field order matters: values saved from the context go before the context (which owns
    // the runtime) is dropped.
    pf: Option<Persistent<Object<'static>>>,
    /// Object shapes of events built here, by their keys (made on the first event).
    shapes: RefCell<Option<super::fastpath::Shapes>>,
    /// In a chain: the event the previous plugin handed over, built here by it (`copy`), until
    /// this plugin's step takes it.
    entered: RefCell<Option<Persistent<Value<'static>>>>,
    /// In a chain: what this plugin returned and handed over, kept while the next plugin runs
    /// (read back only when that one fails and leaves nothing readable).
    returned: RefCell<Option<Persistent<Value<'static>>>>,
    /// Events this plugin handed to the next one as values (the rest went as text).
    passed: std::cell::Cell<u64>,
    context: Option<rquickjs::Context>,
    deadline: Rc<Deadline>,
    /// This instance's heap account: a refusal during a call means it ran out of memory.
    heap: Rc<Heap>,
    limits: Limits,
    bindings: HostBindings,
    hooks: BTreeSet<Hook>,
    jobs: Vec<String>,
    label: String,
    disabled: Option<String>,
    config: Map<String, Json>,
    latency: super::FastMap<Hook, super::timing::Histogram>,
    /// Calls that timed out or ran out of memory so far (disabled at `limits.max_timeouts`).
    timeouts: u32,
}

impl std::fmt::Debug for PluginInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginInstance").field("label", &self.label).field("hooks", &self.hooks).finish()
    }
}

fn attachment_info<'js>(ctx: &Ctx<'js>, plugin: &str, attachments: &BTreeMap<String, PathBuf>) -> Result<Vec<Object<'js>>, LoadError> {
    let mut out = Vec::new();
    for (key, path) in attachments {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Attachment {
            plugin: plugin.to_string(),
            key: key.clone(),
            path: path.display().to_string(),
            source,
        })?;
        let js = |e: rquickjs::Error| LoadError::Script { plugin: plugin.to_string(), message: e.to_string() };
        let obj = Object::new(ctx.clone()).map_err(js)?;
        obj.set("key", key.as_str()).map_err(js)?;
        obj.set("file_name", path.file_name().map(|n| n.to_string_lossy().into_owned())).map_err(js)?;
        obj.set("content_type", content_type(path)).map_err(js)?;
        obj.set("contents", rquickjs::TypedArray::<u8>::new(ctx.clone(), bytes).map_err(js)?).map_err(js)?;
        out.push(obj);
    }
    Ok(out)
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "json" => "application/json",
        "csv" => "text/csv",
        "txt" => "text/plain",
        "mmdb" => "application/octet-stream",
        "gz" => "application/gzip",
        _ => "application/octet-stream",
    }
}

impl PluginInstance {
    /// Creates the instance: checks the configuration against `plugin.json`, makes a runtime
    /// and context of its own, runs the prelude and the plugin's top-level code, and finds its
    /// hooks. Does not call `setupPlugin`; see [`PluginInstance::setup`].
    pub fn new(runtime: &PluginRuntime, def: &PluginDefinition, cfg: &InstanceConfig, services: &HostServices) -> Result<Self, LoadError> {
        let plugin = def.manifest.name.clone();
        let source_name = format!("configuration {} of plugin '{plugin}'", cfg.config_id);
        let attachment_keys: Vec<String> = cfg.attachments.keys().cloned().collect();
        let config = if cfg.lenient {
            def.manifest.fill_defaults(&cfg.config)
        } else {
            def.manifest
                .resolve_config(&source_name, &cfg.config, &attachment_keys)
                .map_err(|source| LoadError::Manifest { plugin: plugin.clone(), source })?
        };
        let secrets = def.manifest.secret_keys().into_iter().filter_map(|k| match config.get(&k) {
            Some(Json::String(s)) => Some(s.clone()),
            Some(other) if !other.is_null() => Some(other.to_string()),
            _ => None,
        });
        let identity = Rc::new(InstanceIdentity { plugin: plugin.clone(), config_id: cfg.config_id.clone(), team_id: cfg.team_id });
        let own = runtime.instance_runtime().map_err(|message| LoadError::Script { plugin: plugin.clone(), message })?;
        let bindings = HostBindings {
            source_maps: def.compiled.source_maps.clone(),
            heap: own.heap.clone(),
            services: services.clone(),
            scope: Rc::new(def.cache_scope(cfg.team_id)),
            storage_ns: Rc::from(match cfg.team_id {
                Some(team) => format!("{}/{team}", cfg.config_id),
                None => format!("{}/all", cfg.config_id),
            }),
            identity,
            redactor: Rc::new(Redactor::new(secrets)),
            outbox: Rc::new(RefCell::new(Outbox::default())),
            budget: Rc::new(host::CallBudget::new(runtime.limits, runtime.epoch.clone())),
            deadline: runtime.deadline.clone(),
        };
        let script_err = |message: String| LoadError::Script { plugin: plugin.clone(), message };
        let context = rquickjs::Context::full(&own.rt)
            .map_err(|e| script_err(format!("cannot create the plugin's context: {e} (runtime.memory_limit_mb is too small?)")))?;
        let mut instance = Self {
            pf: None,
            shapes: RefCell::new(None),
            entered: RefCell::new(None),
            returned: RefCell::new(None),
            passed: std::cell::Cell::new(0),
            context: None,
            deadline: runtime.deadline.clone(),
            heap: own.heap,
            limits: runtime.limits,
            bindings,
            hooks: BTreeSet::new(),
            jobs: Vec::new(),
            label: format!("{plugin} ({})", cfg.config_id),
            disabled: None,
            config: Map::new(),
            latency: super::FastMap::default(),
            timeouts: 0,
        };
        let config_json = Json::Object(config.clone()).to_string();
        instance.config = config;
        let (pf, names) = context.with(|ctx| instance.boot(&ctx, def, cfg, &config_json))?;
        instance.pf = Some(pf);
        for name in names {
            match name.strip_prefix("job:") {
                Some(job) => instance.jobs.push(job.to_string()),
                None => instance.hooks.extend(Hook::from_export(&name)),
            }
        }
        if !instance.jobs.is_empty() {
            instance.hooks.insert(Hook::Job);
        }
        instance.context = Some(context);
        instance.log_system(LogLevel::Info, "Plugin loaded.");
        Ok(instance)
    }

    fn boot<'js>(&self, ctx: &Ctx<'js>, def: &PluginDefinition, cfg: &InstanceConfig, config_json: &str) -> Result<Loaded, LoadError> {
        update_stack_top(ctx);
        // One deadline bounds the whole load: top-level code, `start`, and describing a
        // thrown value (its getters are plugin code too).
        self.deadline.arm(self.limits.call_timeout);
        let booted = self.boot_armed(ctx, def, cfg, config_json);
        self.deadline.disarm();
        booted
    }

    fn boot_armed<'js>(
        &self,
        ctx: &Ctx<'js>,
        def: &PluginDefinition,
        cfg: &InstanceConfig,
        config_json: &str,
    ) -> Result<Loaded, LoadError> {
        let plugin = def.manifest.name.clone();
        let script_err = |ctx: &Ctx<'js>, e: rquickjs::Error| LoadError::Script {
            plugin: plugin.clone(),
            message: self.bindings.source_maps.rewrite(&cut(&self.bindings.redactor.redact(&describe_caught(ctx, e)), MAX_ERROR_TEXT)),
        };
        let host_object = host::install(ctx, &self.bindings).map_err(|e| script_err(ctx, e))?;
        // The prelude evaluates to a function of the host object that returns the host's
        // handle on the context (`pf`): neither is ever reachable from plugin code.
        let prelude: Function<'js> = self.run_prelude(ctx).map_err(|e| script_err(ctx, e))?;
        let pf: Object<'js> = prelude.call((host_object,)).map_err(|e| script_err(ctx, e))?;
        let define: Function<'js> = pf.get("define").map_err(|e| script_err(ctx, e))?;
        for module in &def.compiled.modules {
            let factory = self.compile_and_run::<Function<'js>>(ctx, &module.factory, &module.name);
            let factory = factory.map_err(|e| script_err(ctx, e))?;
            let requires = Object::new(ctx.clone()).map_err(|e| script_err(ctx, e))?;
            for (spec, target) in &module.requires {
                requires.set(spec.as_str(), target.as_str()).map_err(|e| script_err(ctx, e))?;
            }
            define.call::<_, ()>((module.name.as_str(), factory, requires, module.es_module)).map_err(|e| script_err(ctx, e))?;
        }
        let info = Object::new(ctx.clone()).map_err(|e| script_err(ctx, e))?;
        info.set("config", ctx.json_parse(config_json).map_err(|e| script_err(ctx, e))?).map_err(|e| script_err(ctx, e))?;
        info.set("attachments", attachment_info(ctx, &plugin, &cfg.attachments)?).map_err(|e| script_err(ctx, e))?;
        let start: Function<'js> = pf.get("start").map_err(|e| script_err(ctx, e))?;
        let entry = def.compiled.modules[0].name.as_str();
        let refusals = self.heap.refusals();
        let names = start.call::<_, Vec<String>>((entry, info));
        let timed_out = self.deadline.passed();
        let names = names.map_err(|e| {
            if timed_out {
                let _ = ctx.catch();
                LoadError::Script { plugin: plugin.clone(), message: timeout_message(self.limits) }
            } else if self.heap.refusals() > refusals {
                let _ = ctx.catch();
                LoadError::Script { plugin: plugin.clone(), message: self.out_of_memory(Hook::SetupPlugin).message }
            } else {
                script_err(ctx, e)
            }
        })?;
        Ok((Persistent::save(ctx, pf), names))
    }

    /// Runs the prelude: its bytecode when the process has it, else compiled from source (and
    /// its bytecode kept for the next instances).
    fn run_prelude<'js>(&self, ctx: &Ctx<'js>) -> rquickjs::Result<Function<'js>> {
        let name = "pluginflow:prelude";
        let raw = ctx.as_raw().as_ptr();
        if let Some(bytes) = PRELUDE_BYTECODE.get() {
            let flags = qjs::JS_READ_OBJ_BYTECODE as i32;
            // SAFETY: `bytes` is what JS_WriteObject wrote for the prelude in this process (same
            // QuickJS build); the result is a new reference or an exception. Read with no
            // allocation refused, as a parse is (the reader's out-of-memory paths are no safer).
            #[allow(unsafe_code)]
            let compiled = self.heap.unrefused(|| unsafe { qjs::JS_ReadObject(raw, bytes.as_ptr(), bytes.len() as _, flags) });
            return self.run_compiled(ctx, compiled, name);
        }
        let compiled = self.compile(ctx, PRELUDE, name)?;
        let mut size: qjs::size_t = 0;
        // SAFETY: `compiled` is a live compiled script; the buffer JS_WriteObject returns (or
        // NULL when it could not allocate) is `size` bytes we copy and then free with js_free.
        #[allow(unsafe_code)]
        let buffer = self.heap.unrefused(|| unsafe { qjs::JS_WriteObject(raw, &mut size, compiled, qjs::JS_WRITE_OBJ_BYTECODE as i32) });
        if !buffer.is_null() {
            #[allow(unsafe_code)]
            let bytes = unsafe { std::slice::from_raw_parts(buffer, size as usize) }.to_vec();
            #[allow(unsafe_code)]
            unsafe {
                qjs::js_free(raw, buffer.cast())
            };
            let _ = PRELUDE_BYTECODE.set(bytes);
        }
        self.run_compiled(ctx, compiled, name)
    }

    /// Compiles `source` as a global script with no allocation refused (the parser's
    /// out-of-memory paths are not safe, see [`Heap::unrefused`]), then runs it under the
    /// limits and the deadline. A script whose compiled form does not fit the heap fails.
    fn compile_and_run<'js, V: rquickjs::FromJs<'js>>(&self, ctx: &Ctx<'js>, source: &str, name: &str) -> rquickjs::Result<V> {
        let compiled = self.compile(ctx, source, name)?;
        self.run_compiled(ctx, compiled, name)
    }

    /// `source` compiled as a global script (a new reference), not yet run.
    fn compile(&self, ctx: &Ctx<'_>, source: &str, name: &str) -> rquickjs::Result<qjs::JSValue> {
        let text = std::ffi::CString::new(source)
            .map_err(|_| rquickjs::Exception::throw_syntax(ctx, &format!("{name}: the source contains a NUL character")))?;
        let file = std::ffi::CString::new(name.replace('\0', "?")).expect("NULs were replaced");
        let raw = ctx.as_raw().as_ptr();
        let flags = (qjs::JS_EVAL_TYPE_GLOBAL | qjs::JS_EVAL_FLAG_COMPILE_ONLY) as i32;
        // SAFETY: `text` is NUL-terminated as JS_Eval requires; the result is a new reference
        // (a compiled script, or an exception left pending on the context).
        #[allow(unsafe_code)]
        let compiled =
            self.heap.unrefused(|| unsafe { qjs::JS_Eval(raw, text.as_ptr(), text.as_bytes().len() as _, file.as_ptr(), flags) });
        #[allow(unsafe_code)]
        if unsafe { qjs::JS_IsException(compiled) } {
            return Err(rquickjs::Error::Exception);
        }
        Ok(compiled)
    }

    /// Runs a compiled script (taking over its reference) under the limits and the deadline.
    /// One whose compiled form does not fit the heap fails.
    fn run_compiled<'js, V: rquickjs::FromJs<'js>>(&self, ctx: &Ctx<'js>, compiled: qjs::JSValue, name: &str) -> rquickjs::Result<V> {
        let raw = ctx.as_raw().as_ptr();
        #[allow(unsafe_code)]
        if unsafe { qjs::JS_IsException(compiled) } {
            return Err(rquickjs::Error::Exception);
        }
        if self.heap.over() {
            // SAFETY: we own the compiled script's reference.
            #[allow(unsafe_code)]
            unsafe {
                qjs::JS_FreeValue(raw, compiled)
            };
            let limit = self.limits.memory_limit_bytes >> 20;
            return Err(rquickjs::Exception::throw_range(
                ctx,
                &format!("{name}: the compiled code does not fit the plugin's heap limit of {limit} MiB (runtime.memory_limit_mb)"),
            ));
        }
        // SAFETY: JS_EvalFunction takes over `compiled` and returns a new reference.
        #[allow(unsafe_code)]
        let value = unsafe { qjs::JS_EvalFunction(raw, compiled) };
        #[allow(unsafe_code)]
        if unsafe { qjs::JS_IsException(value) } {
            return Err(rquickjs::Error::Exception);
        }
        // SAFETY: a new reference, handed to rquickjs.
        #[allow(unsafe_code)]
        let value = unsafe { Value::from_raw(ctx.clone(), value) };
        V::from_js(ctx, value)
    }

    /// `Name (configId)`, as PostHog wrote it into `$plugins_succeeded` and friends.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Plugin display name.
    pub fn plugin_name(&self) -> &str {
        &self.bindings.identity.plugin
    }

    /// Configuration id.
    pub fn config_id(&self) -> &str {
        &self.bindings.identity.config_id
    }

    /// Team of the configuration; `None` for all teams.
    pub fn team_id(&self) -> Option<i64> {
        self.bindings.identity.team_id
    }

    /// Whether the plugin exports `hook` (and the instance is not disabled).
    pub fn has(&self, hook: Hook) -> bool {
        self.disabled.is_none() && self.hooks.contains(&hook)
    }

    /// Whether the plugin exports `hook`, disabled or not.
    pub fn exports(&self, hook: Hook) -> bool {
        self.hooks.contains(&hook)
    }

    /// A resolved config value as text (strings as they are, other JSON as JSON).
    pub fn config_text(&self, key: &str) -> Option<String> {
        match self.config.get(key)? {
            Json::String(s) => Some(s.clone()),
            Json::Null => None,
            other => Some(other.to_string()),
        }
    }

    /// Latency of this instance's calls, per hook.
    pub fn latency(&self) -> &super::FastMap<Hook, super::timing::Histogram> {
        &self.latency
    }

    /// Names of the plugin's jobs.
    pub fn jobs(&self) -> &[String] {
        &self.jobs
    }

    /// Why the instance is disabled, if it is.
    pub fn disabled(&self) -> Option<&str> {
        self.disabled.as_deref()
    }

    /// Bytes of QuickJS heap this instance holds.
    pub fn memory_used(&self) -> usize {
        self.heap.used()
    }

    /// Runs this instance's garbage collector.
    pub fn collect_garbage(&self) {
        if let Some(c) = &self.context {
            c.runtime().run_gc();
        }
    }

    /// Disables the instance: every later call fails with [`ErrorKind::Disabled`].
    pub fn disable(&mut self, reason: impl Into<String>) {
        let reason = reason.into();
        self.log_system(LogLevel::Error, &format!("Plugin disabled: {reason}"));
        self.disabled = Some(reason);
    }

    /// Events captured and jobs enqueued since the last call.
    pub fn take_outbox(&self) -> Outbox {
        std::mem::take(&mut *self.bindings.outbox.borrow_mut())
    }

    /// `posthog.capture` calls and jobs the limits refused since the last call of this
    /// (captures, jobs).
    pub fn take_refused(&self) -> (u64, u64) {
        self.bindings.budget.take_refused()
    }

    /// Writes a SYSTEM log entry for this instance.
    pub fn log_system(&self, level: LogLevel, message: &str) {
        self.bindings.log(level, LogSource::System, message);
    }

    /// Records a failed call as a PLUGIN/ERROR log entry, naming the event when there is one.
    pub fn log_error(&self, error: &PluginError, event_uuid: Option<&str>) {
        let about = event_uuid.map(|u| format!(" (event {u})")).unwrap_or_default();
        let mut text = format!("{} failed{about}: {}: {}", error.hook, error.name, error.message);
        // Where it was thrown, in the author's files: the stack's frames in the plugin's own
        // modules (the prelude's frames would only be noise).
        for frame in error.stack.lines().filter(|l| l.trim_start().starts_with("at ") && !l.contains("pluginflow:")) {
            text.push('\n');
            text.push_str(frame);
        }
        self.bindings.log(LogLevel::Error, LogSource::Plugin, &text);
    }

    /// Calls `setupPlugin` (a no-op when the plugin has none).
    pub fn setup(&mut self) -> Result<(), PluginError> {
        self.call_simple(Hook::SetupPlugin)
    }

    /// Calls `teardownPlugin` (a no-op when the plugin has none).
    pub fn teardown(&mut self) -> Result<(), PluginError> {
        let result = self.call_simple(Hook::TeardownPlugin);
        if result.is_ok() {
            self.log_system(LogLevel::Info, "Plugin unloaded.");
        }
        result
    }

    /// Calls `runEveryMinute`, `runEveryHour` or `runEveryDay`.
    pub fn run_scheduled(&mut self, hook: Hook) -> Result<(), PluginError> {
        debug_assert!(matches!(hook, Hook::RunEveryMinute | Hook::RunEveryHour | Hook::RunEveryDay));
        self.call_simple(hook)
    }

    fn call_simple(&mut self, hook: Hook) -> Result<(), PluginError> {
        if self.disabled.is_none() && !self.hooks.contains(&hook) {
            return Ok(());
        }
        self.call(hook, |this, ctx, pf| {
            let call: rquickjs::Result<Value<'_>> = pf.get::<_, Function<'_>>("call").and_then(|f| f.call((hook.as_str(),)));
            this.settled(ctx, pf, hook, call).map(|_| ())
        })
    }

    /// Runs job `name` with its JSON payload.
    pub fn run_job(&mut self, name: &str, payload_json: &str) -> Result<(), PluginError> {
        self.call(Hook::Job, |this, ctx, pf| {
            let call = pf.get::<_, Function<'_>>("callJob").and_then(|f| f.call((name, payload_json)));
            this.settled(ctx, pf, Hook::Job, call).map(|_| ())
        })
    }

    /// Calls `onEvent` with a JSON event (no-op without the hook).
    pub fn on_event_json(&mut self, event_json: &str) -> Result<(), PluginError> {
        self.call_with_json(Hook::OnEvent, event_json)
    }

    /// Calls `exportEvents` with a JSON array of events (no-op without the hook).
    pub fn export_events_json(&mut self, events_json: &str) -> Result<(), PluginError> {
        self.call_with_json(Hook::ExportEvents, events_json)
    }

    fn call_with_json(&mut self, hook: Hook, json: &str) -> Result<(), PluginError> {
        if self.disabled.is_none() && !self.hooks.contains(&hook) {
            return Ok(());
        }
        self.call(hook, |this, ctx, pf| {
            let arg = this.enter(ctx, hook, json)?;
            let call = pf.get::<_, Function<'_>>("call").and_then(|f| f.call((hook.as_str(), arg)));
            this.settled(ctx, pf, hook, call).map(|_| ())
        })
    }

    /// Runs `processEvent` on one JSON event and returns the JSON it returned (`None` when
    /// dropped). No `$plugins_*` bookkeeping: this is one plugin, not a chain. The event's
    /// `team_id` is the team the result is checked against.
    pub fn process_event_json(&mut self, event_json: &str) -> Result<Option<String>, PluginError> {
        let team = serde_json::from_str::<Json>(event_json)
            .ok()
            .and_then(|v| v.get("team_id").and_then(Json::as_i64))
            .ok_or_else(|| self.error(Hook::ProcessEvent, ErrorKind::Failed, "TypeError", "the event has no integer team_id", ""))?;
        match self.process(event_json, team) {
            StepOutcome::Kept(e) => Ok(Some(e)),
            StepOutcome::Dropped => Ok(None),
            StepOutcome::Failed(err, _) => Err(err),
        }
    }

    /// Runs `processEvent` on `input` (JSON text of an event of `team`). The event enters this
    /// instance's runtime as its own objects; what the plugin returns is read back as data,
    /// and its `team_id` must still be `team`.
    pub fn process(&mut self, input: &str, team: i64) -> StepOutcome {
        self.process_team(input, Some(team))
    }

    /// [`PluginInstance::process`] for an event that may have no team (`pluginflow try`): with
    /// `None`, `team_id` is not checked.
    pub fn process_team(&mut self, input: &str, team: Option<i64>) -> StepOutcome {
        match self.step(StepInput::Text(input), team, None) {
            Step::Kept(e, _) => StepOutcome::Kept(e),
            Step::Dropped => StepOutcome::Dropped,
            Step::Failed(e, kept) => StepOutcome::Failed(e, kept),
            Step::Passed => unreachable!("nothing is passed on without a next plugin"),
        }
    }

    /// Whether a previous plugin of a chain may build an event in this runtime for this
    /// plugin's next step.
    pub(crate) fn can_receive(&self) -> bool {
        self.disabled.is_none() && self.context.is_some() && self.hooks.contains(&Hook::ProcessEvent)
    }

    /// Runs `processEvent` on `input`. With `next` (the chain's next plugin with
    /// `processEvent`, which [`Self::can_receive`]), an event returned is copied into `next`'s
    /// runtime as values (`copy`) instead of being read back as text, when the copy takes it:
    /// [`Step::Passed`], and `next`'s step takes [`StepInput::Entered`]. When the copy declines,
    /// the result is read back as text as without `next`.
    pub(crate) fn step(&mut self, input: StepInput<'_>, team: Option<i64>, next: Option<&PluginInstance>) -> Step {
        let hook = Hook::ProcessEvent;
        let mut mutated: Option<String> = None;
        let rules = self.rules(team);
        // Whatever was handed in is taken now, also when the call does not happen.
        let entered = self.entered.borrow_mut().take();
        let result = self.call(hook, |this, ctx, pf| {
            let event = match input {
                StepInput::Text(text) => this.enter(ctx, hook, text)?,
                StepInput::Entered => entered.and_then(|e| e.restore(ctx).ok()).ok_or_else(|| {
                    this.error(hook, ErrorKind::Failed, "HostError", "the event handed over by the previous plugin is gone", "")
                })?,
            };
            let call = pf.get::<_, Function<'_>>("call").and_then(|f| f.call(("processEvent", event.clone())));
            let outcome = this.settled(ctx, pf, hook, call).and_then(|v| {
                if let Some(next) = next
                    && this.pass_on(ctx, &v, next, &rules)
                {
                    return Ok(Returned::Passed(Persistent::save(ctx, v)));
                }
                this.read_returned(ctx, &v, &rules).map(Returned::Read)
            });
            if outcome.is_err() {
                // PostHog went on with the object it had passed in, mutations included.
                mutated = this.read_back(ctx, &event, &rules).ok().map(|r| r.json);
            }
            outcome
        });
        if let Some(next) = next
            && !matches!(result, Ok(Returned::Passed(_)))
        {
            // A copy made before the call failed after all (out of memory) is not for `next`.
            next.entered.replace(None);
        }
        match result {
            Ok(Returned::Passed(returned)) => {
                *self.returned.borrow_mut() = Some(returned);
                Step::Passed
            }
            Ok(Returned::Read(None)) => Step::Dropped,
            Ok(Returned::Read(Some(read))) if read.team_changed => Step::Failed(
                self.error(hook, ErrorKind::Failed, "IllegalOperationError", "Plugin tried to change event.team_id", ""),
                Some(read.json),
            ),
            Ok(Returned::Read(Some(read))) => Step::Kept(read.json, read.properties),
            Err(e) => Step::Failed(e, mutated),
        }
    }

    /// Copies `value` (what this plugin returned) into `next`'s runtime for its next step;
    /// false when the copy declines (nothing is left in `next`).
    fn pass_on<'js>(&self, ctx: &Ctx<'js>, value: &Value<'js>, next: &PluginInstance, rules: &Rules) -> bool {
        let Some(context) = next.context.as_ref().filter(|_| next.disabled.is_none()) else {
            return false;
        };
        context.with(|to| {
            update_stack_top(&to);
            let mut shapes = next.shapes.borrow_mut();
            let shapes = shapes.get_or_insert_with(|| super::fastpath::Shapes::new(to.as_raw().as_ptr()));
            match super::copy::copy_event(ctx, value, &to, Some(shapes), rules) {
                Some(made) => {
                    *next.entered.borrow_mut() = Some(Persistent::save(&to, made));
                    self.passed.set(self.passed.get() + 1);
                    true
                }
                None => false,
            }
        })
    }

    /// What this plugin returned at its last [`Step::Passed`], read back as text: the event as
    /// it stood before the next plugin, when that one failed and left nothing readable.
    pub(crate) fn returned_text(&mut self, team: i64) -> Option<String> {
        let returned = self.returned.borrow_mut().take()?;
        let rules = self.rules(Some(team));
        let context = self.context.clone()?;
        context.with(|ctx| {
            let value = returned.restore(&ctx).ok()?;
            self.read_back(&ctx, &value, &rules).ok().map(|r| r.json)
        })
    }

    /// How many events this plugin's `processEvent` handed to the next plugin of a chain as
    /// values (`copy`); the others went on as JSON text.
    pub fn passed_on(&self) -> u64 {
        self.passed.get()
    }

    /// The failure recorded for this plugin when what it handed over could not be read back
    /// after the next plugin failed (see `chain::run_chain`; not expected to happen).
    pub(crate) fn unreadable_returned(&self) -> PluginError {
        let message = "what processEvent returned could not be read back after the next plugin failed; the event goes on as it was before";
        self.error(Hook::ProcessEvent, ErrorKind::Failed, "HostError", message, "")
    }

    /// Lets go of what this plugin returned at its last [`Step::Passed`].
    pub(crate) fn forget_returned(&mut self) {
        self.returned.replace(None);
    }

    /// Builds `input` (an event of `team`) in this instance's runtime and reads it back, with
    /// no plugin code: the cost of an event crossing into and out of a plugin (benchmarks).
    pub fn cross(&mut self, input: &str, team: i64) -> Result<String, PluginError> {
        let rules = self.rules(Some(team));
        self.call(Hook::ProcessEvent, |this, ctx, _pf| {
            let event = this.enter(ctx, Hook::ProcessEvent, input)?;
            this.read_back(ctx, &event, &rules)
                .map(|r| r.json)
                .map_err(|r| this.error(Hook::ProcessEvent, ErrorKind::Failed, "TypeError", &r.to_string(), ""))
        })
    }

    /// Builds `input` (an event of `team`) in this instance's runtime, copies it into `next`'s
    /// as a chain hands an event over (`copy`), and reads it back there, with no plugin code:
    /// the cost of [`Self::cross`] plus one hand-over (benchmarks). Fails when the copy declines.
    pub fn cross_via(&mut self, next: &mut PluginInstance, input: &str, team: i64) -> Result<String, PluginError> {
        let rules = self.rules(Some(team));
        let passed = self.call(Hook::ProcessEvent, |this, ctx, _pf| {
            let event = this.enter(ctx, Hook::ProcessEvent, input)?;
            Ok(this.pass_on(ctx, &event, next, &rules))
        })?;
        if !passed {
            return Err(self.error(Hook::ProcessEvent, ErrorKind::Failed, "TypeError", "the copy declined the event", ""));
        }
        next.call(Hook::ProcessEvent, |this, ctx, _pf| {
            let entered = this.entered.borrow_mut().take().and_then(|e| e.restore(ctx).ok());
            let event =
                entered.ok_or_else(|| this.error(Hook::ProcessEvent, ErrorKind::Failed, "HostError", "nothing was handed over", ""))?;
            this.read_back(ctx, &event, &rules)
                .map(|r| r.json)
                .map_err(|r| this.error(Hook::ProcessEvent, ErrorKind::Failed, "TypeError", &r.to_string(), ""))
        })
    }

    fn rules(&self, team: Option<i64>) -> Rules {
        Rules { max_bytes: self.limits.max_event_bytes, max_depth: self.limits.max_event_depth, team }
    }

    /// Reads event `value` back as JSON text ([`tojson::read_event`]). Strings are encoded in the
    /// host's memory; what little the read allocates in this runtime (a fraction's digits, an
    /// integer key's string, a key list; each freed at once) is the host's work, not the
    /// plugin's: it is never refused, so a plugin near its heap limit is not failed for it,
    /// whether its result is read here or handed to the next plugin as values (`copy`, which
    /// allocates nothing here). Should anything stay, `call` finds the heap over its limit.
    fn read_back<'js>(&self, ctx: &Ctx<'js>, value: &Value<'js>, rules: &Rules) -> Result<tojson::Read, tojson::Refusal> {
        self.heap.unrefused(|| tojson::read_event(ctx, value, rules))
    }

    /// What `processEvent` returned, read as data: `None` for a falsy value (drop).
    fn read_returned<'js>(&self, ctx: &Ctx<'js>, value: &Value<'js>, rules: &Rules) -> Result<Option<tojson::Read>, PluginError> {
        let hook = Hook::ProcessEvent;
        // SAFETY: ToBoolean runs no JavaScript (objects are always truthy).
        #[allow(unsafe_code)]
        let truthy = unsafe { qjs::JS_ToBool(ctx.as_raw().as_ptr(), value.as_raw()) } > 0;
        if !truthy {
            return Ok(None);
        }
        let read = self.read_back(ctx, value, rules);
        read.map(Some).map_err(|refusal| {
            let message = if refusal.path == "event" {
                format!("processEvent returned {}, expected an object or a falsy value", refusal.what)
            } else {
                format!("processEvent returned an event that is not plain data: {refusal}")
            };
            self.error(hook, ErrorKind::Failed, "TypeError", &message, "")
        })
    }

    /// Builds `json` (an event or a batch the host wrote) in this instance's context.
    fn enter<'js>(&self, ctx: &Ctx<'js>, hook: Hook, json: &str) -> Result<Value<'js>, PluginError> {
        let mut shapes = self.shapes.borrow_mut();
        let shapes = shapes.get_or_insert_with(|| super::fastpath::Shapes::new(ctx.as_raw().as_ptr()));
        if let Some(v) = super::fromjson::parse(ctx, json, Some(shapes)) {
            return Ok(v);
        }
        ctx.json_parse(json).map_err(|e| {
            let message = format!("the event could not enter the plugin: {}", describe_caught(ctx, e));
            self.error(hook, ErrorKind::Failed, "HostError", &message, "")
        })
    }

    fn pf_object<'js>(&self, ctx: &Ctx<'js>) -> Object<'js> {
        self.pf.clone().expect("booted instance").restore(ctx).expect("pf lives in this runtime")
    }

    fn error(&self, hook: Hook, kind: ErrorKind, name: &str, message: &str, stack: &str) -> PluginError {
        PluginError {
            kind,
            plugin: self.bindings.identity.plugin.clone(),
            config_id: self.bindings.identity.config_id.clone(),
            hook,
            name: cut(&self.bindings.redactor.redact(name), 256),
            message: cut(&self.bindings.redactor.redact(message), MAX_ERROR_TEXT),
            // Masked, cut, then mapped: a thrown object's `stack` is the plugin's to make huge,
            // and a cut through a secret must not leave its first half.
            stack: cut(&self.bindings.source_maps.rewrite(&cut(&self.bindings.redactor.redact(stack), MAX_ERROR_TEXT)), MAX_ERROR_TEXT),
        }
    }

    /// Calls into the plugin under the deadline and classifies any failure. `invoke` runs in
    /// the context with the prelude's `pf` object and returns plain Rust data: nothing of the
    /// context outlives the call.
    fn call<R, F>(&mut self, hook: Hook, invoke: F) -> Result<R, PluginError>
    where
        F: for<'js> FnOnce(&Self, &Ctx<'js>, &Object<'js>) -> Result<R, PluginError>,
    {
        if let Some(reason) = &self.disabled {
            return Err(self.error(hook, ErrorKind::Disabled, "Disabled", reason, ""));
        }
        let Some(context) = self.context.clone() else {
            return Err(self.error(hook, ErrorKind::Disabled, "Disabled", "plugin context was released", ""));
        };
        if self.heap.over() {
            // Over the limit before the call (what QuickJS serves from blocks it already holds
            // is never asked of the allocator, so nothing would be refused): collect, and if
            // that is not enough the call fails as out of memory.
            self.collect_garbage();
            if self.heap.over() {
                let e = self.out_of_memory(hook);
                self.after_out_of_memory();
                return Err(e);
            }
        }
        let started = std::time::Instant::now();
        self.bindings.budget.begin_call();
        self.deadline.arm(self.limits.call_timeout);
        let refusals = self.heap.refusals();
        let outcome = context.with(|ctx| {
            update_stack_top(&ctx);
            let pf = self.pf_object(&ctx);
            let outcome = invoke(self, &ctx, &pf);
            if self.deadline.passed() || self.heap.refusals() > refusals {
                // A call that timed out or ran out of memory leaves nothing to the next one:
                // what it left queued runs now, each job cut short by the passed deadline.
                self.deadline.fire();
                drain_stale_jobs(&ctx);
            }
            outcome
        });
        let cancelled = self.deadline.cancelled();
        self.deadline.disarm();
        self.bindings.end_call();
        self.latency.entry(hook).or_default().observe(started.elapsed());
        // Refused during the call, or over the limit at its end (by whatever was not refused).
        let ran_out = self.heap.refusals() > refusals || self.heap.over();
        let outcome = match outcome {
            Err(e) if e.kind != ErrorKind::Timeout && (ran_out || e.name == "OutOfMemory") => {
                // Whatever was thrown (QuickJS's error, `null` when it could not build one, or
                // a plugin's own after catching): memory was refused during this call.
                let e = self.out_of_memory(e.hook);
                self.after_out_of_memory();
                Err(e)
            }
            Ok(value) if ran_out => {
                // The plugin caught the out-of-memory error and carried on: still a failure.
                // What it returned goes before the heap is measured.
                drop(value);
                let e = self.out_of_memory(hook);
                self.after_out_of_memory();
                Err(e)
            }
            other => other,
        };
        let exhausted = match &outcome {
            Err(e) if e.kind == ErrorKind::Timeout => !cancelled,
            Err(e) => e.name == "OutOfMemory",
            Ok(_) => false,
        };
        if exhausted && self.disabled.is_none() {
            self.timeouts += 1;
            if self.timeouts >= self.limits.max_timeouts {
                self.disable(format!(
                    "it timed out or ran out of memory {} times (runtime.max_timeouts = {}); each time holds the worker",
                    self.timeouts, self.limits.max_timeouts
                ));
                self.release();
            }
        }
        outcome
    }

    /// A hook call's result, its promise settled, or the failure classified.
    fn settled<'js>(
        &self,
        ctx: &Ctx<'js>,
        pf: &Object<'js>,
        hook: Hook,
        called: rquickjs::Result<Value<'js>>,
    ) -> Result<Value<'js>, PluginError> {
        match called {
            Ok(v) => self.settle(ctx, pf, hook, v),
            Err(e) => Err(self.caught(ctx, pf, hook, e)),
        }
    }

    /// Settles what a hook returned: a promise (or thenable) is run to its end, and then, as
    /// under Node, every microtask the call left queued runs before the call is over, all
    /// under the deadline.
    fn settle<'js>(&self, ctx: &Ctx<'js>, pf: &Object<'js>, hook: Hook, value: Value<'js>) -> Result<Value<'js>, PluginError> {
        let settled = self.settle_value(ctx, pf, hook, value);
        let drained = self.drain_jobs(ctx, hook);
        match (settled, drained) {
            (Err(e), _) | (Ok(_), Err(e)) => Err(e),
            (Ok(v), Ok(())) => Ok(v),
        }
    }

    /// Runs queued jobs until none is left; a queue that never empties ends with the deadline.
    fn drain_jobs(&self, ctx: &Ctx<'_>, hook: Hook) -> Result<(), PluginError> {
        while ctx.execute_pending_job() {
            if self.deadline.passed() {
                return Err(self.timeout(hook));
            }
        }
        Ok(())
    }

    fn settle_value<'js>(&self, ctx: &Ctx<'js>, pf: &Object<'js>, hook: Hook, value: Value<'js>) -> Result<Value<'js>, PluginError> {
        let promise: Promise<'js> = match value.as_promise() {
            Some(p) => p.clone(),
            None => {
                if !value.is_object() {
                    return Ok(value);
                }
                // A thenable is adopted as `await` would (its `then` is plugin code, run under
                // the deadline).
                let thenable: bool = pf
                    .get::<_, Function<'_>>("isThenable")
                    .and_then(|f| f.call((value.clone(),)))
                    .map_err(|e| self.caught(ctx, pf, hook, e))?;
                if !thenable {
                    return Ok(value);
                }
                let to_promise: Function<'js> = pf.get("toPromise").map_err(|e| self.caught(ctx, pf, hook, e))?;
                to_promise.call((value,)).map_err(|e| self.caught(ctx, pf, hook, e))?
            }
        };
        loop {
            match promise.state() {
                PromiseState::Resolved => {
                    return promise.result::<Value<'js>>().expect("settled").map_err(|e| self.caught(ctx, pf, hook, e));
                }
                PromiseState::Rejected => {
                    let e = promise.result::<Value<'js>>().expect("settled").expect_err("rejected");
                    return Err(self.caught(ctx, pf, hook, e));
                }
                PromiseState::Pending => {
                    if self.deadline.passed() {
                        return Err(self.timeout(hook));
                    }
                    if !ctx.execute_pending_job() {
                        let message = format!(
                            "{hook} returned a promise that can never settle: it waits on nothing pluginflow can complete (timers are not available)"
                        );
                        return Err(self.error(hook, ErrorKind::Timeout, "TimeoutError", &message, ""));
                    }
                }
            }
        }
    }

    fn timeout(&self, hook: Hook) -> PluginError {
        if self.deadline.cancelled() {
            return self.error(hook, ErrorKind::Timeout, "TimeoutError", "Script execution was cancelled: pluginflow is shutting down", "");
        }
        self.error(hook, ErrorKind::Timeout, "TimeoutError", &timeout_message(self.limits), "")
    }

    /// Classifies a JavaScript exception (or engine error) from a call.
    fn caught<'js>(&self, ctx: &Ctx<'js>, pf: &Object<'js>, hook: Hook, error: rquickjs::Error) -> PluginError {
        if self.deadline.passed() {
            let _ = ctx.catch();
            return self.timeout(hook);
        }
        if matches!(error, rquickjs::Error::Allocation) {
            return self.out_of_memory(hook);
        }
        if !matches!(error, rquickjs::Error::Exception) {
            return self.error(hook, ErrorKind::Failed, "HostError", &error.to_string(), "");
        }
        let thrown = ctx.catch();
        if thrown.is_null() {
            // QuickJS's own `null` (no memory even for its error) is told apart in `call`, by
            // the heap's refusals; here it is what the plugin threw.
            return self.error(hook, ErrorKind::Failed, "null", "null", "");
        }
        // Describing runs plugin code (getters, toString) in the plugin's own realm, still
        // under the deadline: at worst the plugin misdescribes its own error.
        let describe: Option<Vec<String>> = pf.get::<_, Function<'_>>("describe").and_then(|f| f.call((thrown,))).ok();
        let Some([kind, name, message, stack]) = describe.and_then(|d| <[String; 4]>::try_from(d).ok()) else {
            let _ = ctx.catch();
            if self.deadline.passed() {
                return self.timeout(hook);
            }
            return self.error(hook, ErrorKind::Failed, "Error", "the plugin threw a value that could not be described", "");
        };
        let kind = match kind.as_str() {
            "retry" => ErrorKind::Retry,
            "timeout" => ErrorKind::Timeout,
            _ => ErrorKind::Failed,
        };
        self.error(hook, kind, &name, &message, &stack)
    }

    fn out_of_memory(&self, hook: Hook) -> PluginError {
        let message = format!(
            "out of memory: the plugin's heap limit is {} MiB (runtime.memory_limit_mb)",
            self.limits.memory_limit_bytes / (1024 * 1024)
        );
        self.error(hook, ErrorKind::Failed, "OutOfMemory", &message, "")
    }

    /// After an out-of-memory failure: collect garbage, and if the heap is still more than
    /// half full, disable the instance and release its runtime (the plugin keeps what it
    /// allocated in `global` or module scope: it would fail again at once).
    fn after_out_of_memory(&mut self) {
        // What the host keeps for speed goes first: the heap measured is the plugin's own.
        self.shapes.replace(None);
        self.collect_garbage();
        let used = self.heap.used() as f64;
        if used > MEMORY_HIGH_WATER * self.limits.memory_limit_bytes as f64 {
            self.disable(format!(
                "it holds too much memory ({:.0} MiB of its {} MiB limit) after running out",
                used / 1048576.0,
                self.limits.memory_limit_bytes / (1024 * 1024)
            ));
            self.release();
        }
    }

    /// Frees the instance's runtime; later calls fail as disabled.
    fn release(&mut self) {
        self.shapes.replace(None);
        self.entered.replace(None);
        self.returned.replace(None);
        self.pf = None;
        self.context = None;
    }
}

/// Makes the current native stack position the runtime's stack top, so the stack limit counts
/// from where the call is made (each instance's runtime is created at another depth).
fn update_stack_top(ctx: &Ctx<'_>) {
    // SAFETY: the runtime of a live context, on the thread that uses it.
    #[allow(unsafe_code)]
    unsafe {
        qjs::JS_UpdateStackTop(qjs::JS_GetRuntime(ctx.as_raw().as_ptr()))
    };
}

/// Longest error message or stack kept from a plugin (they reach logs and dead letters).
const MAX_ERROR_TEXT: usize = 8 * 1024;

/// `text` cut to at most `max` bytes (on a character boundary) with a marker saying so.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} … [cut: {} more bytes]", &text[..end], text.len() - end)
}

fn timeout_message(limits: Limits) -> String {
    let secs = limits.call_timeout.as_secs_f64();
    let unit = if (secs - 1.0).abs() < f64::EPSILON { "second" } else { "seconds" };
    format!("Script execution timed out after {secs} {unit}")
}

/// Runs what is left in the job queue after a timeout; the fired deadline cuts each job short.
fn drain_stale_jobs(ctx: &Ctx<'_>) {
    for _ in 0..MAX_STALE_JOBS {
        if !ctx.execute_pending_job() {
            break;
        }
    }
}

/// Describes a load-time error: the JavaScript exception with its stack, or the engine error.
fn describe_caught(ctx: &Ctx<'_>, error: rquickjs::Error) -> String {
    if !matches!(error, rquickjs::Error::Exception) {
        return error.to_string();
    }
    let thrown = ctx.catch();
    if let Some(obj) = thrown.as_object() {
        let name: String = obj.get("name").unwrap_or_else(|_| "Error".into());
        let message: String = obj.get("message").unwrap_or_default();
        let stack: String = obj.get("stack").unwrap_or_default();
        return format!("{name}: {message}\n{stack}").trim_end().to_string();
    }
    thrown.as_string().and_then(|s| s.to_string().ok()).unwrap_or_else(|| format!("{thrown:?}"))
}
