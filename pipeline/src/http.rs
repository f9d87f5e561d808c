//! A small HTTP endpoint on a loopback port: `/healthz`, `/metrics` (Prometheus text) and
//! `/plugins` (JSON). One thread, blocking I/O, one request per connection: it serves
//! operators and scrapers, not traffic.

use operators::sync::lock;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::kafka::health::{HealthLimits, KafkaHealth, WorkerHealth};
use crate::stats::Stats;
pub use operators::plugin::timing::{Histogram, LATENCY_BUCKETS_US};

/// What `/plugins` says about one configuration for one team on one worker.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginStatus {
    /// Plugin display name.
    pub plugin: String,
    /// Whether its instance loaded.
    pub loaded: bool,
    /// Why it is disabled, if it is.
    pub disabled: Option<String>,
}

/// How many items a durable queue of the state store holds, by its name.
pub type QueueLen = Box<dyn Fn(&str) -> u64 + Send>;

/// What the endpoint shows; workers publish into it.
#[derive(Default)]
pub struct HttpState {
    /// Run counters and app metrics.
    pub stats: Arc<Stats>,
    /// Status per (configuration, team, worker).
    pub plugins: Mutex<BTreeMap<(String, i64, usize), PluginStatus>>,
    /// Latency per (configuration, hook, worker).
    pub latency: Mutex<BTreeMap<(String, String, usize), Histogram>>,
    /// Items in a durable queue of the state store, by queue name (retries, jobs, journaled
    /// captures).
    pub queue_len: Mutex<Option<QueueLen>>,
    /// What the Kafka workers report (lag, commits, brokers).
    pub kafka: Arc<KafkaHealth>,
    /// When `/healthz` fails.
    pub limits: HealthLimits,
    /// Files of `[plugin_configs] dir` that did not load, and why (crate::live).
    pub config_problems: Arc<Mutex<BTreeMap<std::path::PathBuf, String>>>,
    /// Each configuration changed while running: its version and when it took effect (ms since
    /// the Unix epoch).
    pub config_versions: Mutex<BTreeMap<String, (u64, u64)>>,
}

/// Why the process is unhealthy at `now`, one line each (empty: healthy): a Kafka broker
/// unreachable or commits stalled past the limits, or a plugin configuration that failed to
/// load for some team.
pub fn health_problems(state: &HttpState, now: Instant) -> Vec<String> {
    let mut problems = state.kafka.problems(&state.limits, now);
    for (file, why) in lock(&state.config_problems).iter() {
        problems.push(format!("plugin configuration {} not loaded: {why}", file.display()));
    }
    let mut failed: Vec<String> = state
        .plugins
        .lock()
        .expect("http state lock")
        .iter()
        .filter(|(_, s)| !s.loaded)
        .map(|((config, team, _), s)| format!("plugin configuration {config} ({}) failed to load for team {team}", s.plugin))
        .collect();
    failed.dedup();
    problems.extend(failed);
    problems
}

/// A running endpoint; dropping it stops the thread.
pub struct HttpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    /// Serves `state` on `addr` (which must be a loopback address; port 0 picks a free port).
    pub fn start(addr: SocketAddr, state: Arc<HttpState>) -> anyhow::Result<Self> {
        if !addr.ip().is_loopback() {
            anyhow::bail!("http.listen must be a loopback address, got {addr}");
        }
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("pluginflow-http".into()).spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Err(e) = serve(stream, &state) {
                            tracing::debug!(error = %e, "http request failed");
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
                    Err(e) => tracing::warn!(error = %e, "http accept failed"),
                }
            }
        })?;
        tracing::info!(%addr, "http endpoint listening");
        Ok(Self { addr, stop, thread: Some(thread) })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream, state: &HttpState) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (status, content_type, body) = match path.as_str() {
        "/healthz" => match health_problems(state, Instant::now()) {
            problems if problems.is_empty() => ("200 OK", "text/plain", "ok\n".to_string()),
            problems => ("503 Service Unavailable", "text/plain", problems.join("\n") + "\n"),
        },
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", prometheus(state)),
        "/plugins" => ("200 OK", "application/json", plugins_json(state)),
        _ => ("404 Not Found", "text/plain", "not found: try /healthz, /metrics or /plugins\n".to_string()),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

fn label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The `/metrics` text.
pub fn prometheus(state: &HttpState) -> String {
    let s = state.stats.summary();
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, value: u64| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"));
    };
    counter("pluginflow_events_in_total", "Input lines read (blank lines not included).", s.events_in);
    counter("pluginflow_blank_lines_total", "Input lines holding only whitespace, skipped.", s.blank_lines);
    counter("pluginflow_events_out_total", "Events written to the output.", s.events_out);
    counter("pluginflow_events_dropped_total", "Events dropped by a processEvent plugin.", s.dropped);
    counter("pluginflow_dead_letters_total", "Records sent to the dead-letter output.", s.dead_lettered + s.work_given_up);
    counter(
        "pluginflow_plugin_work_given_up_total",
        "Dead letters of onEvent, exportEvents and job work that gave up (included in pluginflow_dead_letters_total).",
        s.work_given_up,
    );
    counter(
        "pluginflow_events_captured_total",
        "Events plugins captured (posthog.capture), counted where their outcome is written: out, dropped or dead-lettered.",
        s.captured,
    );
    counter("pluginflow_instances_created_total", "Plugin instances (configuration x team) created.", s.instances_created);
    counter(
        "pluginflow_instances_evicted_total",
        "Plugin instances torn down to keep a worker within runtime.instance_memory_budget_mb.",
        s.instances_evicted,
    );
    out.push_str(
        "# HELP pluginflow_plugin_calls_total Plugin hook calls by outcome (app metrics).\n# TYPE pluginflow_plugin_calls_total counter\n",
    );
    for ((config, team, hook, outcome), n) in &s.metrics {
        out.push_str(&format!(
            "pluginflow_plugin_calls_total{{config=\"{}\",team=\"{team}\",hook=\"{hook}\",outcome=\"{outcome}\"}} {n}\n",
            label(config)
        ));
    }
    out.push_str("# HELP pluginflow_chain_skips_total Events that did not run a plugin of their chain: reason snapshot ($snapshot events, whole chain, as PostHog), disabled or not_loaded (that configuration).\n# TYPE pluginflow_chain_skips_total counter\n");
    for ((config, reason), n) in &s.skips {
        out.push_str(&format!("pluginflow_chain_skips_total{{config=\"{}\",reason=\"{reason}\"}} {n}\n", label(config)));
    }
    out.push_str("# HELP pluginflow_refused_total posthog.capture calls and jobs refused by the per-call and per-batch limits.\n# TYPE pluginflow_refused_total counter\n");
    for ((config, what), n) in &s.refused {
        out.push_str(&format!("pluginflow_refused_total{{config=\"{}\",what=\"{what}\"}} {n}\n", label(config)));
    }
    {
        use operators::plugin::{deferred::RETRY_QUEUE, worker::CAPTURE_QUEUE, worker::JOB_QUEUE};
        let queue_len = lock(&state.queue_len);
        for (metric, queue, help) in [
            ("pluginflow_pending_retries", RETRY_QUEUE, "Retries waiting in the durable queue."),
            (
                "pluginflow_queued_jobs",
                JOB_QUEUE,
                "Jobs in the durable queue: waiting to be due, due, or run and waiting for their outputs to be written for good.",
            ),
            (
                "pluginflow_journaled_captures",
                CAPTURE_QUEUE,
                "Events captured outside the dataflow's calls (scheduled tasks, setup, teardown), journaled until their outputs are written for good.",
            ),
        ] {
            let n = queue_len.as_ref().map_or(0, |f| f(queue));
            out.push_str(&format!("# HELP {metric} {help}\n# TYPE {metric} gauge\n{metric} {n}\n"));
        }
    }
    kafka_metrics(&mut out, &state.kafka, Instant::now());
    let mut merged: BTreeMap<(String, String), Histogram> = BTreeMap::new();
    for ((config, hook, _), h) in lock(&state.latency).iter() {
        merged.entry((config.clone(), hook.clone())).or_default().merge(h);
    }
    out.push_str("# HELP pluginflow_plugin_call_seconds Plugin hook call latency.\n# TYPE pluginflow_plugin_call_seconds histogram\n");
    for ((config, hook), h) in &merged {
        let labels = format!("config=\"{}\",hook=\"{hook}\"", label(config));
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS_US.iter().enumerate() {
            cumulative += h.buckets[i];
            out.push_str(&format!("pluginflow_plugin_call_seconds_bucket{{{labels},le=\"{}\"}} {cumulative}\n", *bound as f64 / 1e6));
        }
        out.push_str(&format!("pluginflow_plugin_call_seconds_bucket{{{labels},le=\"+Inf\"}} {}\n", h.count));
        out.push_str(&format!("pluginflow_plugin_call_seconds_sum{{{labels}}} {}\n", h.sum_seconds));
        out.push_str(&format!("pluginflow_plugin_call_seconds_count{{{labels}}} {}\n", h.count));
    }
    out
}

/// A per-worker gauge of `/metrics`: name, help, and its value for a worker (none: no line).
type Gauge<'a> = (&'a str, &'a str, &'a dyn Fn(&WorkerHealth) -> Option<f64>);

/// Consumer lag per partition, seconds since the last commit and since the brokers became
/// unreachable, per Kafka worker (nothing without Kafka workers).
fn kafka_metrics(out: &mut String, kafka: &KafkaHealth, now: Instant) {
    let workers = kafka.snapshot();
    if workers.is_empty() {
        return;
    }
    out.push_str("# HELP pluginflow_kafka_consumer_lag Messages left to read on each assigned input partition: read position to last stable offset (librdkafka statistics, every second).\n# TYPE pluginflow_kafka_consumer_lag gauge\n");
    for (worker, w) in &workers {
        for (partition, lag) in &w.lag {
            out.push_str(&format!("pluginflow_kafka_consumer_lag{{worker=\"{worker}\",partition=\"{partition}\"}} {lag}\n"));
        }
    }
    let since = |t: Instant| now.saturating_duration_since(t).as_secs_f64();
    // Per-worker gauges in seconds; a worker without a value has no line.
    let gauges: [Gauge<'_>; 4] = [
        ("pluginflow_kafka_commit_age_seconds", "Seconds since the worker's last successful commit (offsets or transaction).", &|w| {
            w.last_commit.map(since)
        }),
        ("pluginflow_kafka_uncommitted_seconds", "Seconds the oldest offset read has waited for a commit (0: nothing waits).", &|w| {
            Some(w.uncommitted_since.map_or(0.0, since))
        }),
        (
            "pluginflow_kafka_statistics_age_seconds",
            "Seconds since the worker's Kafka client last reported statistics (every second while the worker polls; more: blocked).",
            &|w| w.last_report.map(since),
        ),
        (
            "pluginflow_kafka_brokers_unreachable_seconds",
            "Seconds since no broker has been up for the worker's consumer (0: one is).",
            &|w| Some(w.unreachable_since.map_or(0.0, since)),
        ),
    ];
    for (name, help, value) in gauges {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for (worker, w) in &workers {
            if let Some(v) = value(w) {
                out.push_str(&format!("{name}{{worker=\"{worker}\"}} {v:.3}\n"));
            }
        }
    }
}

/// The `/plugins` JSON: each configuration and team, whether it loaded, whether (and why) it
/// is disabled on any worker, and its app metrics.
pub fn plugins_json(state: &HttpState) -> String {
    let summary = state.stats.summary();
    let mut configs: BTreeMap<(String, i64), serde_json::Value> = BTreeMap::new();
    for ((config, team, worker), status) in lock(&state.plugins).iter() {
        let entry = configs.entry((config.clone(), *team)).or_insert_with(|| {
            json!({"plugin_config_id": config, "team_id": team, "plugin": status.plugin, "loaded": true, "disabled": null, "workers": 0, "app_metrics": {}})
        });
        entry["workers"] = json!(entry["workers"].as_u64().unwrap_or(0) + 1);
        if !status.loaded {
            entry["loaded"] = json!(false);
        }
        if let Some(reason) = &status.disabled {
            entry["disabled"] = json!(format!("worker {worker}: {reason}"));
        }
    }
    let versions = lock(&state.config_versions).clone();
    for ((config, _), entry) in configs.iter_mut() {
        if let Some((version, since_ms)) = versions.get(config) {
            entry["version"] = json!(version);
            entry["since_ms"] = json!(since_ms);
        }
    }
    for ((config, team, hook, outcome), n) in &summary.metrics {
        if let Some(entry) = configs.get_mut(&(config.clone(), *team)) {
            entry["app_metrics"][hook][outcome] = json!(n);
        }
    }
    serde_json::Value::Array(configs.into_values().collect()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn get(addr: SocketAddr, path: &str) -> (String, String) {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_string(), body.to_string())
    }

    #[test]
    fn serves_health_metrics_and_plugins() {
        let state = Arc::new(HttpState::default());
        state.stats.add_in(5, 100);
        state.stats.add_out(4);
        state.stats.add_metric(operators::plugin::worker::AppMetric {
            config_id: "c1".into(),
            team: 2,
            hook: operators::plugin::Hook::OnEvent,
            outcome: operators::plugin::worker::Outcome::SucceededOnRetry,
            count: 3,
        });
        state
            .plugins
            .lock()
            .unwrap()
            .insert(("c1".into(), 2, 0), PluginStatus { plugin: "P".into(), loaded: true, disabled: Some("setup failed".into()) });
        let mut h = Histogram::default();
        h.observe(Duration::from_micros(70));
        h.observe(Duration::from_millis(3));
        state.latency.lock().unwrap().insert(("c1".into(), "onEvent".into(), 0), h);
        *state.queue_len.lock().unwrap() = Some(Box::new(|queue| match queue {
            operators::plugin::deferred::RETRY_QUEUE => 7,
            operators::plugin::worker::JOB_QUEUE => 5,
            _ => 3,
        }));
        let server = HttpServer::start("127.0.0.1:0".parse().unwrap(), state).unwrap();
        assert_eq!(get(server.addr(), "/healthz"), ("HTTP/1.1 200 OK".into(), "ok\n".into()));
        let (status, metrics) = get(server.addr(), "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(metrics.contains("pluginflow_events_in_total 5\n"), "{metrics}");
        assert!(metrics.contains("pluginflow_events_out_total 4\n"));
        assert!(
            metrics.contains("pluginflow_plugin_calls_total{config=\"c1\",team=\"2\",hook=\"onEvent\",outcome=\"succeeded_on_retry\"} 3\n")
        );
        assert!(metrics.contains("pluginflow_pending_retries 7\n"));
        assert!(metrics.contains("pluginflow_queued_jobs 5\n"));
        assert!(metrics.contains("pluginflow_journaled_captures 3\n"));
        assert!(metrics.contains("pluginflow_plugin_call_seconds_bucket{config=\"c1\",hook=\"onEvent\",le=\"0.0001\"} 1\n"), "{metrics}");
        assert!(metrics.contains("pluginflow_plugin_call_seconds_count{config=\"c1\",hook=\"onEvent\"} 2\n"));
        let (_, plugins) = get(server.addr(), "/plugins");
        let v: serde_json::Value = serde_json::from_str(&plugins).unwrap();
        assert_eq!(v[0]["plugin_config_id"], "c1");
        assert_eq!(v[0]["disabled"], "worker 0: setup failed");
        assert_eq!(v[0]["app_metrics"]["onEvent"]["succeeded_on_retry"], 3);
        assert_eq!(get(server.addr(), "/nope").0, "HTTP/1.1 404 Not Found");
    }

    #[test]
    fn healthz_fails_for_a_configuration_that_did_not_load_and_for_kafka_trouble() {
        let state = Arc::new(HttpState::default());
        for worker in 0..2 {
            state
                .plugins
                .lock()
                .unwrap()
                .insert(("c7".into(), 3, worker), PluginStatus { plugin: "Q".into(), loaded: false, disabled: None });
        }
        let t0 = Instant::now();
        state.kafka.statistics(0, true, BTreeMap::from([(2, 17), (5, 0)]), t0);
        state.kafka.committed(0, true, t0);
        state.kafka.statistics(1, false, BTreeMap::new(), t0 - Duration::from_secs(31));
        state.kafka.statistics(1, false, BTreeMap::new(), t0);
        let server = HttpServer::start("127.0.0.1:0".parse().unwrap(), state.clone()).unwrap();
        let (status, body) = get(server.addr(), "/healthz");
        assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
        assert_eq!(body.lines().count(), 2, "one line per problem, not per worker: {body}");
        assert!(body.contains("worker 1: no Kafka broker reachable for 31 s"), "{body}");
        assert!(body.contains("plugin configuration c7 (Q) failed to load for team 3"), "{body}");
        let (_, metrics) = get(server.addr(), "/metrics");
        assert!(metrics.contains("pluginflow_kafka_consumer_lag{worker=\"0\",partition=\"2\"} 17\n"), "{metrics}");
        assert!(metrics.contains("pluginflow_kafka_consumer_lag{worker=\"0\",partition=\"5\"} 0\n"), "{metrics}");
        assert!(metrics.contains("pluginflow_kafka_commit_age_seconds{worker=\"0\"} "), "{metrics}");
        assert!(!metrics.contains("pluginflow_kafka_commit_age_seconds{worker=\"1\"}"), "worker 1 never committed: {metrics}");
        assert!(metrics.contains("pluginflow_kafka_brokers_unreachable_seconds{worker=\"1\"} 31."), "{metrics}");

        state.plugins.lock().unwrap().clear();
        state.kafka.statistics(1, true, BTreeMap::new(), Instant::now());
        assert_eq!(get(server.addr(), "/healthz"), ("HTTP/1.1 200 OK".into(), "ok\n".into()));
    }

    #[test]
    fn refuses_non_loopback_addresses() {
        let err = HttpServer::start("0.0.0.0:0".parse().unwrap(), Arc::new(HttpState::default())).err().unwrap();
        assert!(err.to_string().contains("loopback"));
    }
}
