//! The native side of a plugin context: the functions behind `__host` in `js/prelude.js`.
//!
//! Each plugin instance gets its own [`HostBindings`]: its cache scope, storage namespace,
//! log attribution, and an outbox for the events it captures and the jobs it enqueues. Calls
//! are synchronous on the worker thread; the prelude wraps them in promises where the plugin
//! API is asynchronous.

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rquickjs::function::Opt;
use rquickjs::{Ctx, Exception, Function, Object, TypedArray, Value};
use state::{CacheScope, StateStore};

use super::geoip::GeoIp;
use super::log::{InstanceIdentity, LogEntry, LogLevel, LogSink, LogSource, Redactor};
use super::runtime::{Deadline, Heap, Limits};

/// What a plugin instance asked the host to do on its behalf, drained by the caller.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Events from `posthog.capture`, as complete JSON events.
    pub captured: Vec<String>,
    /// Jobs from `meta.jobs.NAME(payload).runX()`.
    pub jobs: Vec<EnqueuedJob>,
}

/// A job a plugin enqueued.
#[derive(Clone, Debug, PartialEq)]
pub struct EnqueuedJob {
    /// The job's name (a key of the plugin's exported `jobs`).
    pub name: String,
    /// The payload, JSON-serialised.
    pub payload: String,
    /// When to run it.
    pub when: JobTime,
}

/// When an enqueued job is due.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum JobTime {
    /// This many milliseconds from now (`runNow`, `runIn`): the worker's clock says when now is.
    In(u64),
    /// At this time, in milliseconds since the Unix epoch (`runAt`).
    At(i64),
}

/// Services one plugin instance may use, shared by all instances of a worker (or process).
#[derive(Clone)]
pub struct HostServices {
    /// Cache and storage.
    pub store: Arc<dyn StateStore>,
    /// MaxMind database for `geoip.locate`, if configured.
    pub geoip: Option<Arc<GeoIp>>,
    /// Where `console.*` and system log entries go.
    pub logs: Arc<dyn LogSink>,
    /// HTTP client for `fetch`.
    pub http: ureq::Agent,
    /// Jobs pending per configuration × team in this process (shared by its workers).
    pub pending_jobs: Arc<PendingJobs>,
}

/// Jobs each configuration × team enqueued in this process and this run that have not yet run
/// to the end (done or given up), shared by the process's workers: a job may run on another
/// worker than the one that enqueued it (a spread team, a team whose owner changed). A plugin
/// whose jobs enqueue jobs grows the queue geometrically; past [`MAX_PENDING_JOBS`], `runNow`,
/// `runIn` and `runAt` reject, and the refusal is counted with the other limits' refusals.
#[derive(Debug, Default)]
pub struct PendingJobs(std::sync::Mutex<std::collections::HashMap<(String, i64), usize>>);

/// Jobs one configuration × team may have pending in a process.
pub const MAX_PENDING_JOBS: usize = 10_000;

impl PendingJobs {
    /// Counts one more pending job of `config_id` × `team`; false (nothing counted) at the cap.
    pub fn reserve(&self, config_id: &str, team: i64) -> bool {
        let mut pending = crate::sync::lock(&self.0);
        let n = pending.entry((config_id.to_string(), team)).or_default();
        if *n >= MAX_PENDING_JOBS {
            return false;
        }
        *n += 1;
        true
    }

    /// One job of `config_id` × `team` is done, given up, or was never queued.
    pub fn finished(&self, config_id: &str, team: i64) {
        let mut pending = crate::sync::lock(&self.0);
        let key = (config_id.to_string(), team);
        if let Some(n) = pending.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                pending.remove(&key);
            }
        }
    }

    /// Jobs of `config_id` × `team` pending now.
    pub fn pending(&self, config_id: &str, team: i64) -> usize {
        crate::sync::lock(&self.0).get(&(config_id.to_string(), team)).copied().unwrap_or(0)
    }
}

impl HostServices {
    /// Services with an HTTP client whose requests give up after `fetch_timeout`.
    pub fn new(store: Arc<dyn StateStore>, geoip: Option<Arc<GeoIp>>, logs: Arc<dyn LogSink>, fetch_timeout: Duration) -> Self {
        let http = ureq::Agent::config_builder().timeout_global(Some(fetch_timeout)).http_status_as_error(false).build().into();
        Self { store, geoip, logs, http, pending_jobs: Arc::default() }
    }
}

/// Everything a context's native functions close over.
#[derive(Clone)]
pub(crate) struct HostBindings {
    pub services: HostServices,
    pub identity: Rc<InstanceIdentity>,
    pub scope: Rc<CacheScope>,
    /// Storage namespace: the configuration, per team (PostHog configurations were per team).
    pub storage_ns: Rc<str>,
    pub redactor: Rc<Redactor>,
    pub outbox: Rc<RefCell<Outbox>>,
    /// What one call (and one epoch) may still do.
    pub budget: Rc<CallBudget>,
    /// The worker's call deadline (`fetch` waits no longer than the call may run).
    pub deadline: Rc<Deadline>,
    /// The instance's heap (code the host compiles later, such as `Intl`, is compiled unrefused).
    pub heap: Rc<Heap>,
    /// Maps positions in the plugin's compiled modules back to its files (stack traces in
    /// errors and `console` output).
    pub source_maps: Arc<super::source::SourceMaps>,
}

impl HostBindings {
    pub fn log(&self, level: LogLevel, source: LogSource, message: &str) {
        self.services.logs.log(LogEntry::new(&self.identity, level, source, self.redactor.redact(message)));
    }

    /// A `console.*` message, within the call's log budget: past it the message is cut with a
    /// marker, and later ones are counted and reported once when the call ends.
    fn console(&self, level: LogLevel, message: &str) {
        // Masked before it is cut: a cut through a secret must not leave its first half.
        let message = &self.redactor.redact(message);
        let b = &self.budget;
        let left = b.limits.max_log_bytes_per_call.saturating_sub(b.log_bytes.get());
        if left == 0 {
            b.log_dropped.set(b.log_dropped.get() + 1);
            return;
        }
        // What is written names the author's lines (a logged stack).
        if message.len() <= left {
            b.log_bytes.set(b.log_bytes.get() + message.len());
            self.log(level, LogSource::Console, &self.source_maps.rewrite(message));
            return;
        }
        let mut cut = left;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        b.log_bytes.set(b.limits.max_log_bytes_per_call);
        let marker = format!(
            "{} … [cut: {} more bytes; one call may log {} bytes (runtime.max_log_bytes_per_call)]",
            &message[..cut],
            message.len() - cut,
            b.limits.max_log_bytes_per_call
        );
        self.log(level, LogSource::Console, &self.source_maps.rewrite(&marker));
    }

    /// Reports what the call's limits held back.
    pub fn end_call(&self) {
        let dropped = self.budget.log_dropped.replace(0);
        if dropped > 0 {
            self.log(
                LogLevel::Warn,
                LogSource::System,
                &format!(
                    "{dropped} console messages of this call were dropped: one call may log {} bytes (runtime.max_log_bytes_per_call)",
                    self.budget.limits.max_log_bytes_per_call
                ),
            );
        }
    }
}

/// Per-call and per-epoch allowances of one instance (see [`Limits`]).
#[derive(Debug)]
pub(crate) struct CallBudget {
    limits: Limits,
    /// The worker's current epoch, shared by its instances.
    epoch: Rc<Cell<u64>>,
    captures: Cell<u32>,
    epoch_captures: Cell<(u64, u32)>,
    jobs: Cell<u32>,
    /// Bytes this call handed the host to keep (captures, jobs, cache and storage writes).
    host_bytes: Cell<usize>,
    log_bytes: Cell<usize>,
    log_dropped: Cell<u32>,
    refusal_logged: Cell<bool>,
    refused_captures: Cell<u64>,
    refused_jobs: Cell<u64>,
}

impl CallBudget {
    pub fn new(limits: Limits, epoch: Rc<Cell<u64>>) -> Self {
        CallBudget {
            limits,
            epoch,
            captures: Cell::new(0),
            epoch_captures: Cell::new((0, 0)),
            jobs: Cell::new(0),
            host_bytes: Cell::new(0),
            log_bytes: Cell::new(0),
            log_dropped: Cell::new(0),
            refusal_logged: Cell::new(false),
            refused_captures: Cell::new(0),
            refused_jobs: Cell::new(0),
        }
    }

    pub fn begin_call(&self) {
        self.captures.set(0);
        self.jobs.set(0);
        self.host_bytes.set(0);
        self.log_bytes.set(0);
        self.log_dropped.set(0);
        self.refusal_logged.set(false);
    }

    /// True once per call: the first refusal is logged, later ones only counted.
    fn first_refusal(&self) -> bool {
        !self.refusal_logged.replace(true)
    }

    /// (captures, jobs) refused since the last call of this.
    pub fn take_refused(&self) -> (u64, u64) {
        (self.refused_captures.replace(0), self.refused_jobs.replace(0))
    }

    /// Takes one capture from the call's and the epoch's allowance, or says why not.
    fn take_capture(&self) -> Result<(), String> {
        let epoch = self.epoch.get();
        let (seen, count) = self.epoch_captures.get();
        let in_epoch = if seen == epoch { count } else { 0 };
        let refusal = if self.captures.get() >= self.limits.max_captures_per_call {
            Some(format!("this call already captured {} events (runtime.max_captures_per_call)", self.limits.max_captures_per_call))
        } else if in_epoch >= self.limits.max_captures_per_epoch {
            Some(format!(
                "this plugin already captured {} events in this batch (runtime.max_captures_per_epoch)",
                self.limits.max_captures_per_epoch
            ))
        } else {
            None
        };
        if let Some(why) = refusal {
            self.refused_captures.set(self.refused_captures.get() + 1);
            return Err(format!("posthog.capture refused: {why}"));
        }
        self.captures.set(self.captures.get() + 1);
        self.epoch_captures.set((epoch, in_epoch + 1));
        Ok(())
    }

    /// Takes `bytes` from the call's allowance of data handed to the host; `what` names the
    /// refused operation.
    fn take_bytes(&self, what: &str, bytes: usize) -> Result<(), String> {
        let total = self.host_bytes.get().saturating_add(bytes);
        if total > self.limits.max_host_bytes_per_call {
            return Err(format!(
                "{what} refused: one call may hand the host {} bytes to keep (captures, jobs, cache and storage writes; runtime.max_host_bytes_per_call)",
                self.limits.max_host_bytes_per_call
            ));
        }
        self.host_bytes.set(total);
        Ok(())
    }

    /// Counts a job refused for `why` (returned).
    fn refuse_job(&self, why: String) -> String {
        self.refused_jobs.set(self.refused_jobs.get() + 1);
        why
    }

    fn take_job(&self) -> Result<(), String> {
        if self.jobs.get() >= self.limits.max_jobs_per_call {
            return Err(self.refuse_job(format!(
                "job refused: this call already enqueued {} jobs (runtime.max_jobs_per_call)",
                self.limits.max_jobs_per_call
            )));
        }
        self.jobs.set(self.jobs.get() + 1);
        Ok(())
    }
}

fn throw(ctx: &Ctx<'_>, message: impl AsRef<str>) -> rquickjs::Error {
    Exception::throw_message(ctx, message.as_ref())
}

/// A `cache` or `storage` command, refused once the plugin call's time is up: a slow store (a
/// stalled Redis) must not stretch a call past its deadline one command at a time, and the
/// interrupt that ends a call only runs between enough bytecodes, which a loop of awaited
/// commands may never reach. So a call overruns its deadline by one command at most.
fn state_call<T>(ctx: &Ctx<'_>, deadline: &Deadline, command: impl FnOnce() -> state::Result<T>) -> rquickjs::Result<T> {
    if deadline.passed() {
        return Err(throw(ctx, "the plugin call's time is up: no more cache or storage commands in it"));
    }
    command().map_err(|e| throw(ctx, e.to_string()))
}

/// Copies the bytes of a typed array or array buffer.
#[allow(unsafe_code)]
pub(crate) fn bytes_of(ctx: &Ctx<'_>, value: &Value<'_>) -> rquickjs::Result<Vec<u8>> {
    if let Ok(array) = TypedArray::<u8>::from_value(value.clone()) {
        // SAFETY: the slice is copied at once, before any JavaScript can run and detach or
        // resize the underlying buffer.
        return Ok(unsafe { array.as_slice() }.to_vec());
    }
    Err(throw(ctx, "expected a Uint8Array"))
}

fn new_bytes<'js>(ctx: &Ctx<'js>, bytes: Vec<u8>) -> rquickjs::Result<Value<'js>> {
    Ok(TypedArray::<u8>::new(ctx.clone(), bytes)?.into_value())
}

/// Builds the host object of one plugin context: the native functions behind the prelude. It
/// is handed to the prelude's function and never placed where plugin code can reach it.
pub(crate) fn install<'js>(ctx: &Ctx<'js>, host: &HostBindings) -> rquickjs::Result<Object<'js>> {
    let obj = Object::new(ctx.clone())?;
    install_logging(ctx, &obj, host)?;
    install_cache(ctx, &obj, host)?;
    install_storage(ctx, &obj, host)?;
    install_outbox(ctx, &obj, host)?;
    install_bytes(ctx, &obj, host.budget.limits.memory_limit_bytes)?;
    install_crypto(ctx, &obj)?;
    install_url(ctx, &obj)?;
    install_intl(ctx, &obj, host)?;
    install_fetch(ctx, &obj, host)?;
    let geoip = host.services.geoip.clone();
    obj.set(
        "geoipLocate",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, ip: String| -> rquickjs::Result<String> {
            let Some(db) = &geoip else {
                return Err(throw(&ctx, "geoip database is not ready (no geoip database configured)"));
            };
            db.locate_json(&ip).map_err(|e| throw(&ctx, e))
        })?,
    )?;
    Ok(obj)
}

fn install_logging<'js>(ctx: &Ctx<'js>, obj: &Object<'js>, host: &HostBindings) -> rquickjs::Result<()> {
    let h = host.clone();
    obj.set(
        "log",
        Function::new(ctx.clone(), move |level: String, message: String| {
            h.console(LogLevel::from_console(&level), &message);
        })?,
    )
}

fn install_cache<'js>(ctx: &Ctx<'js>, obj: &Object<'js>, host: &HostBindings) -> rquickjs::Result<()> {
    let (s, sc, d) = (host.services.store.clone(), host.scope.clone(), host.deadline.clone());
    obj.set("cacheGet", Function::new(ctx.clone(), move |ctx: Ctx<'js>, key: String| state_call(&ctx, &d, || s.cache_get(&sc, &key)))?)?;
    let (s, sc, b, d) = (host.services.store.clone(), host.scope.clone(), host.budget.clone(), host.deadline.clone());
    obj.set(
        "cacheSet",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, key: String, value: String, ttl: f64| {
            b.take_bytes("cache.set", key.len() + value.len()).map_err(|why| throw(&ctx, why))?;
            // A truthy TTL always expires: a fraction of a second rounds up to one (Redis takes
            // whole seconds); a negative one is an error, as Redis's `EX` answers.
            if ttl < 0.0 {
                return Err(throw(&ctx, format!("cache.set: invalid expire time {ttl} (ttlSeconds must be positive)")));
            }
            let ttl = (ttl > 0.0).then(|| ttl.ceil().min(u64::MAX as f64) as u64);
            state_call(&ctx, &d, || s.cache_set(&sc, &key, &value, ttl))
        })?,
    )?;
    let (s, sc, d) = (host.services.store.clone(), host.scope.clone(), host.deadline.clone());
    obj.set(
        "cacheIncr",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, key: String| state_call(&ctx, &d, || s.cache_incr(&sc, &key)).map(|v| v as f64))?,
    )?;
    let (s, sc, d) = (host.services.store.clone(), host.scope.clone(), host.deadline.clone());
    obj.set(
        "cacheExpire",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, key: String, ttl: f64| {
            state_call(&ctx, &d, || s.cache_expire(&sc, &key, ttl.max(0.0) as u64))
        })?,
    )?;
    let (s, sc, b, d) = (host.services.store.clone(), host.scope.clone(), host.budget.clone(), host.deadline.clone());
    obj.set(
        "cacheLpush",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, key: String, values: Vec<Value<'js>>| {
            b.take_bytes("cache.lpush", key.len()).map_err(|why| throw(&ctx, why))?;
            if values.len() > 1000 {
                return Err(throw(&ctx, "Too many elements in array for cache.lpush. Maximum: 1000"));
            }
            // Converted one by one against the allowance: a thousand copies of a huge string stop
            // at the first that does not fit.
            let mut texts = Vec::with_capacity(values.len());
            for v in values {
                let text = v.as_string().ok_or_else(|| throw(&ctx, "cache.lpush expects strings"))?.to_string()?;
                b.take_bytes("cache.lpush", text.len()).map_err(|why| throw(&ctx, why))?;
                texts.push(text);
            }
            state_call(&ctx, &d, || s.cache_lpush(&sc, &key, &texts)).map(|v| v as f64)
        })?,
    )?;
    let (s, sc, d) = (host.services.store.clone(), host.scope.clone(), host.deadline.clone());
    obj.set(
        "cacheLrange",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, key: String, start: f64, stop: f64| {
            state_call(&ctx, &d, || s.cache_lrange(&sc, &key, start as i64, stop as i64))
        })?,
    )?;
    let (s, sc, d) = (host.services.store.clone(), host.scope.clone(), host.deadline.clone());
    obj.set(
        "cacheLlen",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, key: String| state_call(&ctx, &d, || s.cache_llen(&sc, &key)).map(|v| v as f64))?,
    )?;
    let (s, sc, d) = (host.services.store.clone(), host.scope.clone(), host.deadline.clone());
    obj.set(
        "cacheLpop",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, key: String, count: f64| {
            state_call(&ctx, &d, || s.cache_lpop(&sc, &key, count.max(0.0) as u64))
        })?,
    )?;
    let (s, sc, d) = (host.services.store.clone(), host.scope.clone(), host.deadline.clone());
    obj.set(
        "cacheLrem",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, key: String, count: f64, value: String| {
            state_call(&ctx, &d, || s.cache_lrem(&sc, &key, count as i64, &value)).map(|v| v as f64)
        })?,
    )
}

fn install_storage<'js>(ctx: &Ctx<'js>, obj: &Object<'js>, host: &HostBindings) -> rquickjs::Result<()> {
    let (s, ns, d) = (host.services.store.clone(), host.storage_ns.clone(), host.deadline.clone());
    obj.set(
        "storageGet",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, key: String| state_call(&ctx, &d, || s.storage_get(&ns, &key)))?,
    )?;
    let (s, ns, b, d) = (host.services.store.clone(), host.storage_ns.clone(), host.budget.clone(), host.deadline.clone());
    obj.set(
        "storageSet",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, key: String, value: String| {
            b.take_bytes("storage.set", key.len() + value.len()).map_err(|why| throw(&ctx, why))?;
            state_call(&ctx, &d, || s.storage_set(&ns, &key, &value))
        })?,
    )?;
    let (s, ns, d) = (host.services.store.clone(), host.storage_ns.clone(), host.deadline.clone());
    obj.set("storageDel", Function::new(ctx.clone(), move |ctx: Ctx<'js>, key: String| state_call(&ctx, &d, || s.storage_del(&ns, &key)))?)
}

fn install_outbox<'js>(ctx: &Ctx<'js>, obj: &Object<'js>, host: &HostBindings) -> rquickjs::Result<()> {
    let h = host.clone();
    // Both return `null` when done, or the reason they refused (the prelude throws it).
    obj.set(
        "capture",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, event: String, properties: String| {
            let max = h.budget.limits.max_event_bytes;
            if properties.len() + event.len() > max {
                return Ok(Some(format!("posthog.capture refused: the event is larger than runtime.max_event_bytes ({max} bytes)")));
            }
            let captured = super::capture::captured_event(&h.identity, &event, &properties)
                .map_err(|e| throw(&ctx, format!("posthog.capture: {e}")))?;
            if let Err(why) = h.budget.take_capture().and_then(|()| h.budget.take_bytes("posthog.capture", properties.len() + event.len()))
            {
                if h.budget.first_refusal() {
                    h.log(LogLevel::Warn, LogSource::System, &why);
                }
                return Ok::<_, rquickjs::Error>(Some(why));
            }
            h.outbox.borrow_mut().captured.push(captured);
            Ok(None)
        })?,
    )?;
    let h = host.clone();
    obj.set(
        "enqueueJob",
        // `at` is a delay in milliseconds when `relative`, else a time since the Unix epoch.
        Function::new(ctx.clone(), move |name: String, payload: String, at: f64, relative: bool| {
            let max = h.budget.limits.max_event_bytes;
            if payload.len() + name.len() > max {
                return Some(format!("job refused: its payload is larger than runtime.max_event_bytes ({max} bytes)"));
            }
            let pending = |h: &HostBindings| match h.identity.team_id {
                Some(team) if !h.services.pending_jobs.reserve(&h.identity.config_id, team) => Err(h.budget.refuse_job(format!(
                    "job refused: {MAX_PENDING_JOBS} jobs of this plugin for this team are pending already (enqueued and not yet run)"
                ))),
                _ => Ok(()),
            };
            if let Err(why) =
                h.budget.take_job().and_then(|()| h.budget.take_bytes("job", payload.len() + name.len())).and_then(|()| pending(&h))
            {
                if h.budget.first_refusal() {
                    h.log(LogLevel::Warn, LogSource::System, &why);
                }
                return Some(why);
            }
            // `as` saturates: NaN and negative delays are now, absurd ones far off.
            let when = if relative { JobTime::In(at as u64) } else { JobTime::At(at as i64) };
            h.outbox.borrow_mut().jobs.push(EnqueuedJob { name, payload, when });
            None
        })?,
    )
}

fn install_bytes<'js>(ctx: &Ctx<'js>, obj: &Object<'js>, max_output: usize) -> rquickjs::Result<()> {
    obj.set(
        "encode",
        Function::new(ctx.clone(), |ctx: Ctx<'js>, text: String, encoding: String| {
            let bytes = encode(&text, &encoding).map_err(|e| throw(&ctx, e))?;
            new_bytes(&ctx, bytes)
        })?,
    )?;
    obj.set(
        "decode",
        Function::new(ctx.clone(), |ctx: Ctx<'js>, bytes: Value<'js>, encoding: String| {
            let bytes = bytes_of(&ctx, &bytes)?;
            decode(&bytes, &encoding).map_err(|e| throw(&ctx, e))
        })?,
    )?;
    obj.set(
        "decodeFatal",
        // TextDecoder's `fatal`: the text, or undefined when the bytes are not UTF-8.
        Function::new(ctx.clone(), |ctx: Ctx<'js>, bytes: Value<'js>| {
            let bytes = bytes_of(&ctx, &bytes)?;
            Ok::<_, rquickjs::Error>(String::from_utf8(bytes).ok())
        })?,
    )?;
    obj.set(
        "zlib",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, op: String, data: Value<'js>| {
            let data = bytes_of(&ctx, &data)?;
            let out = zlib(&op, &data, max_output).map_err(|e| throw(&ctx, format!("zlib.{op}: {e}")))?;
            new_bytes(&ctx, out)
        })?,
    )
}

fn install_crypto<'js>(ctx: &Ctx<'js>, obj: &Object<'js>) -> rquickjs::Result<()> {
    obj.set(
        "hash",
        Function::new(ctx.clone(), |ctx: Ctx<'js>, alg: String, data: Value<'js>, key: Value<'js>| {
            let data = bytes_of(&ctx, &data)?;
            let key = if key.is_null() || key.is_undefined() { None } else { Some(bytes_of(&ctx, &key)?) };
            let out = super::natives::digest(&alg, &data, key.as_deref()).map_err(|e| throw(&ctx, e))?;
            new_bytes(&ctx, out)
        })?,
    )?;
    obj.set(
        "randomBytes",
        Function::new(ctx.clone(), |ctx: Ctx<'js>, size: f64| {
            if !(0.0..=1_048_576.0).contains(&size) {
                return Err(throw(&ctx, "randomBytes: size must be between 0 and 1048576"));
            }
            new_bytes(&ctx, super::natives::random_bytes(size as usize))
        })?,
    )?;
    obj.set("randomUUID", Function::new(ctx.clone(), super::natives::random_uuid)?)
}

fn install_url<'js>(ctx: &Ctx<'js>, obj: &Object<'js>) -> rquickjs::Result<()> {
    use super::natives::{form_parse, form_serialize, url_parse, url_parts, url_set};
    // `null` for an input the standard refuses: the prelude throws Node's `TypeError`.
    obj.set(
        "urlParse",
        Function::new(ctx.clone(), |input: String, base: Opt<String>| url_parse(&input, base.0.as_deref()).map(|u| url_parts(&u))),
    )?;
    obj.set(
        "urlSet",
        Function::new(ctx.clone(), |href: String, part: String, value: String| {
            let mut u = url::Url::parse(&href).ok()?;
            url_set(&mut u, &part, &value).ok()?;
            Some(url_parts(&u))
        }),
    )?;
    obj.set("formParse", Function::new(ctx.clone(), |query: String| form_parse(&query)))?;
    obj.set("formSerialize", Function::new(ctx.clone(), |flat: Vec<String>| form_serialize(&flat)))
}

/// `Intl`'s JavaScript half, compiled into a context only when its plugin first uses it.
const INTL_SOURCE: &str = include_str!("js/intl.js");

fn install_intl<'js>(ctx: &Ctx<'js>, obj: &Object<'js>, host: &HostBindings) -> rquickjs::Result<()> {
    use super::intl;
    let heap = host.heap.clone();
    obj.set(
        "loadIntl",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>| -> rquickjs::Result<Function<'js>> {
            // Compiled with no allocation refused (QuickJS's parser does not survive a refusal),
            // then checked against the limit like the plugin's own code.
            let module = heap.unrefused(|| ctx.eval::<Function<'js>, _>(INTL_SOURCE))?;
            if heap.over() {
                return Err(Exception::throw_range(&ctx, "Intl does not fit the plugin's heap limit (runtime.memory_limit_mb)"));
            }
            Ok(module)
        }),
    )?;
    // Every failure is ECMA-402's `RangeError` with the host's message.
    fn range<'js, T>(ctx: &Ctx<'js>, r: Result<T, String>) -> rquickjs::Result<T> {
        r.map_err(|e| Exception::throw_range(ctx, &e))
    }
    obj.set("intlLocale", Function::new(ctx.clone(), |tag: String| intl::canonical_locale(&tag)))?;
    obj.set("intlZone", Function::new(ctx.clone(), |name: String| intl::canonical_zone(&name)))?;
    obj.set("intlDefaultZone", Function::new(ctx.clone(), intl::default_zone))?;
    obj.set("intlZoneName", Function::new(ctx.clone(), intl::zone_long_name))?;
    obj.set(
        "intlDate",
        Function::new(ctx.clone(), |ctx: Ctx<'js>, locale: String, options: String, ms: f64| {
            range(&ctx, intl::format_date(&locale, &options, ms))
        }),
    )?;
    obj.set(
        "intlNumber",
        Function::new(ctx.clone(), |ctx: Ctx<'js>, locale: String, options: String, x: f64| {
            range(&ctx, intl::format_number(&locale, &options, x))
        }),
    )?;
    obj.set(
        "intlCompare",
        Function::new(ctx.clone(), |ctx: Ctx<'js>, locale: String, options: String, a: String, b: String| {
            range(&ctx, intl::compare(&locale, &options, &a, &b))
        }),
    )?;
    obj.set(
        "intlPlural",
        Function::new(ctx.clone(), |ctx: Ctx<'js>, locale: String, ordinal: bool, x: f64| range(&ctx, intl::plural(&locale, ordinal, x))),
    )?;
    obj.set(
        "intlRelative",
        Function::new(ctx.clone(), |ctx: Ctx<'js>, locale: String, style: String, auto: bool, unit: String, x: f64| {
            range(&ctx, intl::relative_time(&locale, &style, auto, &unit, x))
        }),
    )?;
    obj.set(
        "intlCase",
        Function::new(ctx.clone(), |ctx: Ctx<'js>, locale: String, text: String, upper: bool| {
            range(&ctx, intl::change_case(&locale, &text, upper))
        }),
    )
}

fn install_fetch<'js>(ctx: &Ctx<'js>, obj: &Object<'js>, host: &HostBindings) -> rquickjs::Result<()> {
    let agent = host.services.http.clone();
    let deadline = host.deadline.clone();
    obj.set(
        "fetch",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>, url: String, method: String, headers: String, body: Value<'js>, timeout_ms: f64| {
                // node-fetch's `timeout` option, and never past the call's own deadline (the
                // agent's `runtime.fetch_timeout_ms` applies as well).
                // `try_from`: a plugin's 1e300 must not panic the host.
                let asked = (timeout_ms > 0.0).then(|| Duration::try_from_secs_f64(timeout_ms / 1000.0).ok()).flatten();
                let timeout = match (asked, deadline.remaining()) {
                    (Some(a), Some(r)) => Some(a.min(r)),
                    (a, r) => a.or(r),
                };
                if timeout == Some(Duration::ZERO) {
                    return Ok(rquickjs::String::from_str(ctx.clone(), "the call's deadline has passed")?.into_value());
                }
                let headers: Vec<(String, String)> = serde_json::from_str(&headers).unwrap_or_default();
                let body = if body.is_null() || body.is_undefined() {
                    None
                } else if let Some(s) = body.as_string() {
                    Some(s.to_string()?.into_bytes())
                } else {
                    Some(bytes_of(&ctx, &body)?)
                };
                match super::natives::http_request(&agent, &method, &url, &headers, body, timeout) {
                    Ok(reply) => {
                        let out = Object::new(ctx.clone())?;
                        out.set("status", reply.status)?;
                        out.set("statusText", reply.status_text)?;
                        out.set("url", reply.url)?;
                        out.set("headers", reply.headers)?;
                        out.set("body", new_bytes(&ctx, reply.body)?)?;
                        Ok::<_, rquickjs::Error>(out.into_value())
                    }
                    // A string tells the prelude to reject with a FetchError.
                    Err(reason) => Ok(rquickjs::String::from_str(ctx.clone(), &reason)?.into_value()),
                }
            },
        )?,
    )
}

/// Encodes text to bytes with a Node `Buffer` encoding name.
pub(crate) fn encode(text: &str, encoding: &str) -> Result<Vec<u8>, String> {
    match encoding.to_ascii_lowercase().as_str() {
        "utf8" | "utf-8" => Ok(text.as_bytes().to_vec()),
        "base64" | "base64url" => Ok(base64_decode_lenient(text)),
        "hex" => Ok(hex_decode_lenient(text)),
        "latin1" | "binary" | "ascii" => Ok(text.chars().map(|c| c as u32 as u8).collect()),
        other => Err(format!("Unknown encoding: {other}")),
    }
}

/// Decodes bytes to text with a Node `Buffer` encoding name.
pub(crate) fn decode(bytes: &[u8], encoding: &str) -> Result<String, String> {
    match encoding.to_ascii_lowercase().as_str() {
        "utf8" | "utf-8" => Ok(String::from_utf8_lossy(bytes).into_owned()),
        "base64" => Ok(base64::engine::general_purpose::STANDARD.encode(bytes)),
        "base64url" => Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)),
        "hex" => Ok(bytes.iter().map(|b| format!("{b:02x}")).collect()),
        "latin1" | "binary" => Ok(bytes.iter().map(|&b| b as char).collect()),
        "ascii" => Ok(bytes.iter().map(|&b| (b & 0x7f) as char).collect()),
        other => Err(format!("Unknown encoding: {other}")),
    }
}

/// Node decodes base64 leniently: it accepts both alphabets, skips other characters and
/// padding, and ignores a dangling final character.
fn base64_decode_lenient(text: &str) -> Vec<u8> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true).with_decode_padding_mode(DecodePaddingMode::RequireNone),
    );
    let cleaned: String = text
        .chars()
        .filter_map(|c| match c {
            '-' => Some('+'),
            '_' => Some('/'),
            c if c.is_ascii_alphanumeric() || c == '+' || c == '/' => Some(c),
            _ => None,
        })
        .collect();
    let usable = &cleaned[..cleaned.len() - usize::from(cleaned.len() % 4 == 1)];
    LENIENT.decode(usable).unwrap_or_default()
}

/// Node's hex decoding stops at the first invalid pair.
fn hex_decode_lenient(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() / 2);
    for pair in bytes.chunks_exact(2) {
        match std::str::from_utf8(pair).ok().and_then(|p| u8::from_str_radix(p, 16).ok()) {
            Some(b) => out.push(b),
            None => break,
        }
    }
    out
}

/// Runs a zlib operation; output past `max_output` bytes is an error (a decompression bomb must
/// not allocate outside the plugin's heap limit).
fn zlib(op: &str, data: &[u8], max_output: usize) -> std::io::Result<Vec<u8>> {
    use flate2::Compression;
    let cap = max_output as u64 + 1;
    let mut out = Vec::new();
    match op {
        "gzip" => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), Compression::default());
            enc.write_all(data)?;
            out = enc.finish()?;
        }
        "gunzip" => {
            flate2::read::MultiGzDecoder::new(data).take(cap).read_to_end(&mut out)?;
        }
        "deflate" => {
            let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), Compression::default());
            enc.write_all(data)?;
            out = enc.finish()?;
        }
        "inflate" => {
            flate2::read::ZlibDecoder::new(data).take(cap).read_to_end(&mut out)?;
        }
        "deflateRaw" => {
            let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), Compression::default());
            enc.write_all(data)?;
            out = enc.finish()?;
        }
        "inflateRaw" => {
            flate2::read::DeflateDecoder::new(data).take(cap).read_to_end(&mut out)?;
        }
        other => return Err(std::io::Error::other(format!("unknown operation {other}"))),
    }
    if out.len() > max_output {
        return Err(std::io::Error::other(format!("the output is larger than the plugin's memory limit ({max_output} bytes)")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_round_trip_like_node() {
        assert_eq!(decode(&encode("héllo", "utf8").unwrap(), "base64").unwrap(), "aMOpbGxv");
        assert_eq!(encode("aMOpbGxv", "base64").unwrap(), "héllo".as_bytes());
        assert_eq!(encode("aGk", "base64").unwrap(), b"hi");
        assert_eq!(decode(b"\x01\xff", "hex").unwrap(), "01ff");
        assert_eq!(encode("01ffzz", "hex").unwrap(), vec![1, 255]);
        assert!(encode("x", "utf-32").is_err());
    }

    #[test]
    fn gzip_round_trips() {
        let packed = zlib("gzip", b"hello hello hello", 1 << 20).unwrap();
        assert_eq!(&packed[..2], &[0x1f, 0x8b]);
        assert_eq!(zlib("gunzip", &packed, 1 << 20).unwrap(), b"hello hello hello");
        assert!(zlib("gunzip", b"not gzip", 1 << 20).is_err());
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_limit() {
        let bomb = zlib("gzip", &vec![0u8; 8 << 20], usize::MAX).unwrap();
        assert!(bomb.len() < 64 << 10, "8 MiB of zeros pack small");
        let err = zlib("gunzip", &bomb, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("larger than the plugin's memory limit"), "{err}");
        assert_eq!(zlib("gunzip", &bomb, 8 << 20).unwrap().len(), 8 << 20);
    }
}
