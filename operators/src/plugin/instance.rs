//! A loaded plugin configuration on one worker: its QuickJS context and its hooks.
//!
//! [`PluginDefinition`] is the plugin folder, read and compiled once per process.
//! [`PluginInstance`] is that plugin with one configuration inside one worker's runtime: its
//! own globals, its own `meta` (and so its own `global`), and typed hook calls that enforce
//! the runtime's deadline and classify every failure.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use rquickjs::{Ctx, Function, Object, Persistent, Promise, Value, promise::PromiseState};
use serde_json::{Map, Value as Json};
use state::CacheScope;

use super::error::{ErrorKind, Hook, LoadError, PluginError};
use super::host::{self, HostBindings, HostServices, InstanceIdentity, Outbox};
use super::log::{LogLevel, LogSource, Redactor};
use super::manifest::{self, PluginManifest};
use super::runtime::{Deadline, Heap, Limits, PluginRuntime};
use super::source::{self, CompiledPlugin};

const PRELUDE: &str = include_str!("js/prelude.js");

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
}

impl PluginDefinition {
    /// Reads `plugin.json`, finds the entry and compiles it with its relative imports.
    pub fn load(dir: &Path) -> Result<Arc<Self>, LoadError> {
        let folder = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let manifest =
            PluginManifest::load(dir).map_err(|source| LoadError::Manifest { plugin: folder.clone(), source })?;
        let plugin = manifest.name.clone();
        let entry = manifest::entry_file(dir, &manifest)
            .map_err(|source| LoadError::Manifest { plugin: plugin.clone(), source })?;
        let compiled = source::compile_plugin(dir, &entry).map_err(|source| LoadError::Source { plugin, source })?;
        Ok(Arc::new(Self { dir: dir.to_path_buf(), manifest, compiled }))
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
}

/// An event living in the worker's QuickJS heap, passed between a team's plugins without
/// serialisation.
pub struct JsEvent(Persistent<Value<'static>>);

/// What one `processEvent` call did to an event.
pub enum StepOutcome {
    /// The plugin returned an event.
    Kept(JsEvent),
    /// The plugin returned a falsy value: the event is dropped.
    Dropped,
    /// The call failed; the chain goes on with `event` (the input, or for a `team_id` change
    /// the returned object with its team restored).
    Failed(PluginError, JsEvent),
}

/// A plugin configuration instantiated in a worker's runtime.
pub struct PluginInstance {
    // Field order matters: `pf` must be dropped before the context that may own the runtime.
    pf: Option<Persistent<Object<'static>>>,
    context: Option<rquickjs::Context>,
    deadline: Rc<Deadline>,
    /// The runtime's heap account: a refusal during a call means it ran out of memory.
    heap: Rc<Heap>,
    gc_pending: Rc<std::cell::Cell<bool>>,
    limits: Limits,
    bindings: HostBindings,
    hooks: BTreeSet<Hook>,
    jobs: Vec<String>,
    label: String,
    disabled: Option<String>,
    config: Map<String, Json>,
    latency: std::collections::HashMap<Hook, super::timing::Histogram>,
}

impl std::fmt::Debug for PluginInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginInstance").field("label", &self.label).field("hooks", &self.hooks).finish()
    }
}

fn attachment_info<'js>(
    ctx: &Ctx<'js>,
    plugin: &str,
    attachments: &BTreeMap<String, PathBuf>,
) -> Result<Vec<Object<'js>>, LoadError> {
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
    /// Creates the instance: checks the configuration against `plugin.json`, makes a context,
    /// runs the prelude and the plugin's top-level code, and finds its hooks. Does not call
    /// `setupPlugin`; see [`PluginInstance::setup`].
    pub fn new(
        runtime: &PluginRuntime,
        def: &PluginDefinition,
        cfg: &InstanceConfig,
        services: &HostServices,
    ) -> Result<Self, LoadError> {
        let plugin = def.manifest.name.clone();
        let source_name = format!("configuration {} of plugin '{plugin}'", cfg.config_id);
        let attachment_keys: Vec<String> = cfg.attachments.keys().cloned().collect();
        let config = def
            .manifest
            .resolve_config(&source_name, &cfg.config, &attachment_keys)
            .map_err(|source| LoadError::Manifest { plugin: plugin.clone(), source })?;
        let secrets = def.manifest.secret_keys().into_iter().filter_map(|k| match config.get(&k) {
            Some(Json::String(s)) => Some(s.clone()),
            Some(other) if !other.is_null() => Some(other.to_string()),
            _ => None,
        });
        let identity = Rc::new(InstanceIdentity { plugin: plugin.clone(), config_id: cfg.config_id.clone(), team_id: cfg.team_id });
        let bindings = HostBindings {
            services: services.clone(),
            scope: Rc::new(CacheScope { plugin: def.manifest.name.clone(), team: cfg.team_id }),
            storage_ns: Rc::from(match cfg.team_id {
                Some(team) => format!("{}/{team}", cfg.config_id),
                None => format!("{}/all", cfg.config_id),
            }),
            identity,
            redactor: Rc::new(Redactor::new(secrets)),
            outbox: Rc::new(RefCell::new(Outbox::default())),
        };
        let script_err = |message: String| LoadError::Script { plugin: plugin.clone(), message };
        if runtime.gc_pending.replace(false) {
            runtime.rt.run_gc();
        }
        let context = rquickjs::Context::full(&runtime.rt).map_err(|e| script_err(e.to_string()))?;
        let mut instance = Self {
            pf: None,
            context: None,
            deadline: runtime.deadline.clone(),
            heap: runtime.heap.clone(),
            gc_pending: runtime.gc_pending.clone(),
            limits: runtime.limits,
            bindings,
            hooks: BTreeSet::new(),
            jobs: Vec::new(),
            label: format!("{plugin} ({})", cfg.config_id),
            disabled: None,
            config: Map::new(),
            latency: std::collections::HashMap::new(),
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

    fn boot<'js>(
        &self,
        ctx: &Ctx<'js>,
        def: &PluginDefinition,
        cfg: &InstanceConfig,
        config_json: &str,
    ) -> Result<(Persistent<Object<'static>>, Vec<String>), LoadError> {
        let plugin = def.manifest.name.clone();
        let script_err = |ctx: &Ctx<'js>, e: rquickjs::Error| LoadError::Script {
            plugin: plugin.clone(),
            message: self.bindings.redactor.redact(&describe_caught(ctx, e)),
        };
        host::install(ctx, &self.bindings).map_err(|e| script_err(ctx, e))?;
        let mut options = rquickjs::context::EvalOptions::default();
        options.global = true;
        options.strict = false;
        options.filename = Some("pluginflow:prelude".into());
        ctx.eval_with_options::<(), _>(PRELUDE, options).map_err(|e| script_err(ctx, e))?;
        let pf: Object<'js> = ctx.globals().get("__pf").map_err(|e| script_err(ctx, e))?;
        let define: Function<'js> = pf.get("define").map_err(|e| script_err(ctx, e))?;
        for module in &def.compiled.modules {
            let mut options = rquickjs::context::EvalOptions::default();
            options.global = true;
            options.strict = false;
            options.filename = Some(module.name.clone());
            self.deadline.arm(self.limits.call_timeout);
            let factory = ctx.eval_with_options::<Function<'js>, _>(module.factory.as_str(), options);
            self.deadline.disarm();
            let factory = factory.map_err(|e| script_err(ctx, e))?;
            let requires = Object::new(ctx.clone()).map_err(|e| script_err(ctx, e))?;
            for (spec, target) in &module.requires {
                requires.set(spec.as_str(), target.as_str()).map_err(|e| script_err(ctx, e))?;
            }
            define.call::<_, ()>((module.name.as_str(), factory, requires)).map_err(|e| script_err(ctx, e))?;
        }
        let info = Object::new(ctx.clone()).map_err(|e| script_err(ctx, e))?;
        info.set("config", ctx.json_parse(config_json).map_err(|e| script_err(ctx, e))?).map_err(|e| script_err(ctx, e))?;
        info.set("attachments", attachment_info(ctx, &plugin, &cfg.attachments)?).map_err(|e| script_err(ctx, e))?;
        let start: Function<'js> = pf.get("start").map_err(|e| script_err(ctx, e))?;
        let entry = def.compiled.modules[0].name.as_str();
        self.deadline.arm(self.limits.call_timeout);
        let names = start.call::<_, Vec<String>>((entry, info));
        let timed_out = self.deadline.passed();
        self.deadline.disarm();
        let names = names.map_err(|e| {
            if timed_out {
                LoadError::Script { plugin: plugin.clone(), message: timeout_message(self.limits) }
            } else {
                script_err(ctx, e)
            }
        })?;
        Ok((Persistent::save(ctx, pf), names))
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

    /// A resolved config value as text (strings as they are, other JSON as JSON).
    pub fn config_text(&self, key: &str) -> Option<String> {
        match self.config.get(key)? {
            Json::String(s) => Some(s.clone()),
            Json::Null => None,
            other => Some(other.to_string()),
        }
    }

    /// Latency of this instance's calls, per hook.
    pub fn latency(&self) -> &std::collections::HashMap<Hook, super::timing::Histogram> {
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

    /// Writes a SYSTEM log entry for this instance.
    pub fn log_system(&self, level: LogLevel, message: &str) {
        self.bindings.log(level, LogSource::System, message);
    }

    /// Records a failed call as a PLUGIN/ERROR log entry, naming the event when there is one.
    pub fn log_error(&self, error: &PluginError, event_uuid: Option<&str>) {
        let about = event_uuid.map(|u| format!(" (event {u})")).unwrap_or_default();
        self.bindings.log(LogLevel::Error, LogSource::Plugin, &format!("{} failed{about}: {}: {}", error.hook, error.name, error.message));
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
        self.call(hook, |_, pf| {
            let call: Function<'_> = pf.get("call")?;
            call.call((hook.as_str(),))
        })
        .map(|_| ())
    }

    /// Runs job `name` with its JSON payload.
    pub fn run_job(&mut self, name: &str, payload_json: &str) -> Result<(), PluginError> {
        self.call(Hook::Job, |_, pf| {
            let call: Function<'_> = pf.get("callJob")?;
            call.call((name, payload_json))
        })
        .map(|_| ())
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
        self.call(hook, |ctx, pf| {
            let arg = ctx.json_parse(json)?;
            let call: Function<'_> = pf.get("call")?;
            call.call((hook.as_str(), arg))
        })
        .map(|_| ())
    }

    /// Runs `processEvent` on one JSON event and returns the JSON it returned (`None` when
    /// dropped). No `$plugins_*` bookkeeping: this is one plugin, not a chain. A truthy
    /// non-object result or a changed `team_id` is an error.
    pub fn process_event_json(&mut self, event_json: &str) -> Result<Option<String>, PluginError> {
        if let Some(reason) = &self.disabled {
            return Err(self.error(Hook::ProcessEvent, ErrorKind::Disabled, "Disabled", reason, ""));
        }
        let event = self.parse_event(event_json).map_err(|m| self.error(Hook::ProcessEvent, ErrorKind::Failed, "SyntaxError", &m, ""))?;
        let team = self.team_of(&event);
        match self.process(event, &team) {
            StepOutcome::Kept(e) => Ok(Some(self.stringify(&e))),
            StepOutcome::Dropped => Ok(None),
            StepOutcome::Failed(err, _) => Err(err),
        }
    }

    /// Parses JSON into an event in this instance's context.
    pub fn parse_event(&self, json: &str) -> Result<JsEvent, String> {
        self.with_ctx(|ctx| {
            match super::fromjson::parse(&ctx, json) {
                Some(v) => Ok(JsEvent(Persistent::save(&ctx, v))),
                None => ctx.json_parse(json).map(|v| JsEvent(Persistent::save(&ctx, v))).map_err(|e| describe_caught(&ctx, e)),
            }
        })
        .unwrap_or_else(|| Err("plugin context is gone".into()))
    }

    /// Serialises an event to JSON (keys in insertion order).
    pub fn stringify(&self, event: &JsEvent) -> String {
        self.with_ctx(|ctx| {
            let v = event.0.clone().restore(&ctx).expect("events stay in the worker's runtime");
            super::tojson::stringify(&ctx, &v).unwrap_or_else(|| {
                ctx.json_stringify(v).ok().flatten().and_then(|s| s.to_string().ok()).unwrap_or_else(|| "null".into())
            })
        })
        .unwrap_or_else(|| "null".into())
    }

    /// The event's `team_id`, as a JavaScript value kept for comparisons.
    pub fn team_of(&self, event: &JsEvent) -> JsEvent {
        self.with_ctx(|ctx| {
            let v = event.0.clone().restore(&ctx).expect("events stay in the worker's runtime");
            let team = v.as_object().and_then(|o| o.get::<_, Value<'_>>("team_id").ok()).unwrap_or_else(|| Value::new_undefined(ctx.clone()));
            JsEvent(Persistent::save(&ctx, team))
        })
        .expect("team_of is called on live instances")
    }

    /// Writes `$plugins_succeeded`, `$plugins_failed` and `$plugins_deferred` onto the event.
    pub fn mark(&self, event: &JsEvent, succeeded: &[String], failed: &[String], deferred: &[String]) {
        self.with_ctx(|ctx| {
            let v = event.0.clone().restore(&ctx).expect("events stay in the worker's runtime");
            let pf = self.pf_object(&ctx);
            let mark: Function<'_> = pf.get("mark").expect("prelude defines mark");
            // Marking only assigns properties; it cannot fail on an object.
            let _ = mark.call::<_, ()>((v, succeeded.to_vec(), failed.to_vec(), deferred.to_vec()));
        });
    }

    /// Runs `processEvent` on an event (which may come from another instance's context).
    pub fn process(&mut self, event: JsEvent, team: &JsEvent) -> StepOutcome {
        let input = JsEvent(event.0.clone());
        let result = self.call(Hook::ProcessEvent, |ctx, pf| {
            let ev = event.0.restore(ctx)?;
            let call: Function<'_> = pf.get("call")?;
            call.call(("processEvent", ev))
        });
        let returned = match result {
            Ok(v) => v,
            Err(err) => return StepOutcome::Failed(err, input),
        };
        let (status, returned) = self
            .with_ctx(|ctx| {
                let v = returned.0.restore(&ctx).expect("events stay in the worker's runtime");
                let team = team.0.clone().restore(&ctx).expect("events stay in the worker's runtime");
                let check: Function<'_> = self.pf_object(&ctx).get("check").expect("prelude defines check");
                let status: i32 = check.call((v.clone(), team)).unwrap_or(2);
                (status, JsEvent(Persistent::save(&ctx, v)))
            })
            .unwrap_or((1, JsEvent(input.0.clone())));
        match status {
            0 => StepOutcome::Kept(returned),
            1 => StepOutcome::Dropped,
            3 => StepOutcome::Failed(
                self.error(Hook::ProcessEvent, ErrorKind::Failed, "IllegalOperationError", "Plugin tried to change event.team_id", ""),
                returned,
            ),
            _ => {
                let what = self.describe_type(&returned);
                StepOutcome::Failed(
                    self.error(Hook::ProcessEvent, ErrorKind::Failed, "TypeError", &format!("processEvent returned {what}, expected an object or a falsy value"), ""),
                    input,
                )
            }
        }
    }

    fn describe_type(&self, value: &JsEvent) -> String {
        self.with_ctx(|ctx| {
            let v = value.0.clone().restore(&ctx).expect("events stay in the worker's runtime");
            let what = if v.is_array() {
                "an array"
            } else if v.is_number() {
                "a number"
            } else if v.is_string() {
                "a string"
            } else if v.is_bool() {
                "a boolean"
            } else if v.is_function() {
                "a function"
            } else {
                "a value of another type"
            };
            what.to_string()
        })
        .unwrap_or_default()
    }

    fn with_ctx<R>(&self, f: impl FnOnce(Ctx<'_>) -> R) -> Option<R> {
        self.context.as_ref().map(|c| c.with(f))
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
            name: name.to_string(),
            message: self.bindings.redactor.redact(message),
            stack: self.bindings.redactor.redact(stack),
        }
    }

    /// Calls into the plugin under the deadline, settles a returned promise, and classifies
    /// any failure. `invoke` gets the context and the prelude's `__pf` object.
    fn call<F>(&mut self, hook: Hook, invoke: F) -> Result<JsEvent, PluginError>
    where
        F: for<'js> FnOnce(&Ctx<'js>, &Object<'js>) -> rquickjs::Result<Value<'js>>,
    {
        if let Some(reason) = &self.disabled {
            return Err(self.error(hook, ErrorKind::Disabled, "Disabled", reason, ""));
        }
        let Some(context) = self.context.clone() else {
            return Err(self.error(hook, ErrorKind::Disabled, "Disabled", "plugin context was released", ""));
        };
        if self.gc_pending.replace(false) {
            context.runtime().run_gc();
        }
        let started = std::time::Instant::now();
        self.deadline.arm(self.limits.call_timeout);
        let refusals = self.heap.refusals();
        let outcome = context.with(|ctx| {
            let pf = self.pf_object(&ctx);
            let settled = match invoke(&ctx, &pf) {
                Ok(v) => self.settle(&ctx, &pf, hook, v),
                Err(e) => Err(self.caught(&ctx, &pf, hook, e)),
            };
            if self.deadline.passed() {
                drain_stale_jobs(&ctx);
            }
            settled.map(|v| JsEvent(Persistent::save(&ctx, v)))
        });
        self.deadline.disarm();
        self.latency.entry(hook).or_default().observe(started.elapsed());
        let ran_out = self.heap.refusals() > refusals;
        let outcome = match outcome {
            Err(e) if e.kind != ErrorKind::Timeout && (ran_out || e.name == "OutOfMemory") => {
                // Whatever was thrown (QuickJS's error, `null` when it could not build one, or
                // a plugin's own after catching): memory was refused during this call.
                let e = self.out_of_memory(e.hook);
                self.after_out_of_memory(&context);
                Err(e)
            }
            other => other,
        };
        if self.context.is_none() {
            // The caller still holds values of the released context; collect at the next call.
            self.gc_pending.set(true);
        }
        outcome
    }

    fn settle<'js>(&self, ctx: &Ctx<'js>, pf: &Object<'js>, hook: Hook, value: Value<'js>) -> Result<Value<'js>, PluginError> {
        let promise: Promise<'js> = match value.as_promise() {
            Some(p) => p.clone(),
            None => {
                let thenable: bool = pf.get::<_, Function<'_>>("isThenable").and_then(|f| f.call((value.clone(),))).unwrap_or(false);
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
                        return Err(self.error(hook, ErrorKind::Timeout, "TimeoutError", &timeout_message(self.limits), ""));
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

    /// Classifies a JavaScript exception (or engine error) from a call.
    fn caught<'js>(&self, ctx: &Ctx<'js>, pf: &Object<'js>, hook: Hook, error: rquickjs::Error) -> PluginError {
        if self.deadline.passed() {
            let _ = ctx.catch();
            return self.error(hook, ErrorKind::Timeout, "TimeoutError", &timeout_message(self.limits), "");
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
        let describe: Option<Vec<String>> = pf.get::<_, Function<'_>>("describe").and_then(|f| f.call((thrown,))).ok();
        let Some([kind, name, message, stack]) = describe.and_then(|d| <[String; 4]>::try_from(d).ok()) else {
            // Describing the error failed, most likely for lack of memory.
            let _ = ctx.catch();
            return self.out_of_memory(hook);
        };
        if message == "out of memory" {
            return self.out_of_memory(hook);
        }
        let kind = match kind.as_str() {
            "retry" => ErrorKind::Retry,
            "timeout" => ErrorKind::Timeout,
            _ => ErrorKind::Failed,
        };
        self.error(hook, kind, &name, &message, &stack)
    }

    fn out_of_memory(&self, hook: Hook) -> PluginError {
        let message = format!("out of memory: the worker's plugin heap limit is {} MiB", self.limits.memory_limit_bytes / (1024 * 1024));
        self.error(hook, ErrorKind::Failed, "OutOfMemory", &message, "")
    }

    /// After an out-of-memory failure: collect garbage, and if the heap is still nearly full,
    /// release this instance's context so the worker's other plugins can go on.
    fn after_out_of_memory(&mut self, context: &rquickjs::Context) {
        let rt = context.runtime();
        rt.run_gc();
        let used = rt.memory_usage().malloc_size.max(0) as f64;
        if used > MEMORY_HIGH_WATER * self.limits.memory_limit_bytes as f64 {
            self.disable(format!(
                "it holds too much memory ({:.0} MiB of the {} MiB limit) after running out",
                used / 1048576.0,
                self.limits.memory_limit_bytes / (1024 * 1024)
            ));
            self.pf = None;
            self.context = None;
        }
    }
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

/// Building events value by value instead of through JSON text: the other way across the
/// boundary, kept for the benchmark that compares the two.
pub mod convert {
    use rquickjs::{Array, Ctx, Object, Value};
    use serde_json::{Map, Number, Value as Json};

    /// Builds a JavaScript value from JSON, value by value (object key order kept).
    pub fn json_to_js<'js>(ctx: &Ctx<'js>, v: &Json) -> rquickjs::Result<Value<'js>> {
        Ok(match v {
            Json::Null => Value::new_null(ctx.clone()),
            Json::Bool(b) => Value::new_bool(ctx.clone(), *b),
            Json::Number(n) => match n.as_i64().and_then(|i| i32::try_from(i).ok()) {
                Some(i) => Value::new_int(ctx.clone(), i),
                None => Value::new_float(ctx.clone(), n.as_f64().unwrap_or(f64::NAN)),
            },
            Json::String(s) => rquickjs::String::from_str(ctx.clone(), s)?.into_value(),
            Json::Array(items) => {
                let arr = Array::new(ctx.clone())?;
                for (i, item) in items.iter().enumerate() {
                    arr.set(i, json_to_js(ctx, item)?)?;
                }
                arr.into_value()
            }
            Json::Object(map) => {
                let obj = Object::new(ctx.clone())?;
                for (k, item) in map {
                    obj.set(k.as_str(), json_to_js(ctx, item)?)?;
                }
                obj.into_value()
            }
        })
    }

    /// Reads a JavaScript value back into JSON, value by value (`undefined` and functions
    /// become null).
    pub fn js_to_json(v: &Value<'_>) -> rquickjs::Result<Json> {
        Ok(if let Some(b) = v.as_bool() {
            Json::Bool(b)
        } else if let Some(i) = v.as_int() {
            Json::Number(i.into())
        } else if let Some(f) = v.as_float() {
            // JSON.stringify writes integral doubles without a fraction; so do we.
            if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
                Json::Number((f as i64).into())
            } else {
                Number::from_f64(f).map_or(Json::Null, Json::Number)
            }
        } else if let Some(s) = v.as_string() {
            Json::String(s.to_string()?)
        } else if let Some(arr) = v.as_array() {
            let mut out = Vec::with_capacity(arr.len());
            for item in arr.iter::<Value<'_>>() {
                out.push(js_to_json(&item?)?);
            }
            Json::Array(out)
        } else if let Some(obj) = v.as_object().filter(|_| !v.is_function()) {
            let mut out = Map::new();
            for prop in obj.props::<String, Value<'_>>() {
                let (k, item) = prop?;
                out.insert(k, js_to_json(&item)?);
            }
            Json::Object(out)
        } else {
            Json::Null
        })
    }
}

impl PluginInstance {
    /// Builds an event in this instance's context from a JSON value, value by value.
    pub fn event_from_value(&self, v: &Json) -> Result<JsEvent, String> {
        self.with_ctx(|ctx| {
            convert::json_to_js(&ctx, v).map(|v| JsEvent(Persistent::save(&ctx, v))).map_err(|e| e.to_string())
        })
        .unwrap_or_else(|| Err("plugin context is gone".into()))
    }

    /// Reads an event back into a JSON value, value by value.
    pub fn event_to_value(&self, event: &JsEvent) -> Result<Json, String> {
        self.with_ctx(|ctx| {
            let v = event.0.clone().restore(&ctx).map_err(|e| e.to_string())?;
            convert::js_to_json(&v).map_err(|e| e.to_string())
        })
        .unwrap_or_else(|| Err("plugin context is gone".into()))
    }
}
