//! Apache Kafka's own broker for tests (`scripts/kafka.sh run`: the jars fetched once with Maven,
//! a single-node KRaft broker+controller on a free loopback port, its log in a folder of the
//! test's), killed on drop; and plain rdkafka helpers to create topics, produce events and read a
//! topic to its end.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Fetches Apache Kafka's jars once per test process (`scripts/kafka.sh fetch`), so that a broker
/// start is only the JVM's.
fn fetch_kafka() {
    static FETCHED: OnceLock<()> = OnceLock::new();
    FETCHED.get_or_init(|| {
        let out = Command::new(crate::repo_root().join("scripts/kafka.sh")).arg("fetch").output().expect("scripts/kafka.sh runs");
        assert!(out.status.success(), "scripts/kafka.sh fetch failed: {}", String::from_utf8_lossy(&out.stderr));
    });
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind a free port").local_addr().expect("local addr").port()
}

/// The built `pluginflow` binary, beside this test binary's `deps/` folder.
pub fn pluginflow_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe.ancestors().nth(2).expect("target/<profile>/deps/<test>").join("pluginflow");
    assert!(bin.is_file(), "{} not built (cargo test builds it with the workspace)", bin.display());
    bin
}

/// An Apache Kafka broker (single-node KRaft) on a free loopback port, its log kept in a
/// temporary folder for the broker's lifetime; killed on drop.
pub struct Broker {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Broker {
    /// Starts a broker and waits until it answers metadata requests.
    pub fn start() -> Self {
        fetch_kafka();
        // (scripts/kafka.sh picks the controller's port and keeps it in the folder for restarts.)
        let mut broker = Self { child: None, port: free_port(), dir: tempfile::tempdir().expect("broker folder") };
        broker.resume();
        broker
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates `topic` with `partitions` partitions through the admin API.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        create_topic(&self.bootstrap(), topic, partitions);
    }

    /// Kills the broker process (SIGKILL: a crash; its log stays on disk). Clients see connections
    /// reset and connects refused.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the broker process again on the same port and log folder (after [`Broker::kill`]),
    /// and waits until it answers.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "the broker is running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("broker.log")).expect("broker log");
        let mut child = Command::new(crate::repo_root().join("scripts/kafka.sh"))
            .arg("run")
            .arg(self.dir.path())
            .arg(self.port.to_string())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("scripts/kafka.sh run starts");
        self.wait_until_it_answers(&mut child);
        self.child = Some(child);
    }

    /// Waits until the broker lists itself in a metadata response (the port opens a little
    /// before the controller has registered it).
    fn wait_until_it_answers(&self, child: &mut Child) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let client: BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", self.bootstrap()).set("log_level", "0").create().expect("metadata client");
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("Apache Kafka exited early ({status}); its log:\n{}", log_tail(&self.dir.path().join("broker.log"), 40));
            }
            if client.fetch_metadata(None, Duration::from_millis(500)).is_ok_and(|m| !m.brokers().is_empty()) {
                return;
            }
            assert!(Instant::now() < deadline, "Apache Kafka did not answer on {} within 90 s", self.port);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a future to completion on this thread (rdkafka's admin futures need no runtime).
pub fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park_timeout(Duration::from_millis(50)),
        }
    }
}

/// Creates `topic` with `partitions` partitions on the broker at `bootstrap`.
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("admin client");
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = block_on(admin.create_topics([&new], &opts)).expect("create_topics");
    for r in results {
        if let Err((name, code)) = r {
            assert_eq!(code, RDKafkaErrorCode::TopicAlreadyExists, "cannot create topic {name}: {code}");
        }
    }
}

/// Produces `values` to `topic`, spread round-robin over `partitions`, and waits for every ack.
pub fn produce(bootstrap: &str, topic: &str, partitions: i32, values: &[Vec<u8>]) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for (i, v) in values.iter().enumerate() {
        let mut record = BaseRecord::<(), [u8]>::to(topic).payload(v.as_slice()).partition(i as i32 % partitions);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => panic!("cannot produce: {e}"),
            }
        }
    }
    producer.flush(Duration::from_secs(60)).expect("every test event acknowledged");
}

/// Produces the lines of a JSON-lines file (as bytes, malformed ones included).
pub fn produce_lines(bootstrap: &str, topic: &str, partitions: i32, path: &std::path::Path) -> usize {
    let bytes = std::fs::read(path).expect("read events");
    let lines: Vec<Vec<u8>> = bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect();
    produce(bootstrap, topic, partitions, &lines);
    lines.len()
}

/// One consumed message.
#[derive(Clone, Debug)]
pub struct Record {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key as text.
    pub key: Option<String>,
    /// Value as text.
    pub value: String,
    /// Headers as text.
    pub headers: BTreeMap<String, String>,
}

/// How to read a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// Everything written, open and aborted transactions included.
    ReadUncommitted,
    /// Only committed transactions (and non-transactional records).
    ReadCommitted,
}

/// Reads every partition of `topic` from the beginning to its current end.
pub fn consume_all(bootstrap: &str, topic: &str, isolation: Isolation) -> Vec<Record> {
    let level = if isolation == Isolation::ReadCommitted { "read_committed" } else { "read_uncommitted" };
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "pluginflow-test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", level)
        .create()
        .expect("consumer");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let partitions: Vec<i32> = metadata.topics()[0].partitions().iter().map(|p| p.id()).collect();
    assert!(!partitions.is_empty(), "topic {topic} has no partitions");
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).expect("offset");
    }
    consumer.assign(&tpl).expect("assign");
    let mut at_end: BTreeSet<i32> = BTreeSet::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while at_end.len() < partitions.len() {
        assert!(Instant::now() < deadline, "reading {topic} did not reach its end");
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => panic!("consume error: {e}"),
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                out.push(record_of(&m));
            }
        }
    }
    out
}

/// A consumed message as a [`Record`].
pub fn record_of(m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
    let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
    let headers =
        m.headers().map(|h| h.iter().map(|x| (x.key.to_string(), text(x.value).unwrap_or_default())).collect()).unwrap_or_default();
    Record { partition: m.partition(), offset: m.offset(), key: text(m.key()), value: text(m.payload()).unwrap_or_default(), headers }
}

/// Subscribes a consumer in `group` to `topic` and polls until it has a non-empty assignment;
/// returns it.
pub fn wait_for_assignment(bootstrap: &str, group: &str, topic: &str, timeout: Duration) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + timeout;
    while consumer.assignment().expect("assignment").count() == 0 {
        assert!(Instant::now() < deadline, "no assignment for group {group} within {timeout:?}");
        let _ = consumer.poll(Duration::from_millis(100));
    }
    consumer
}

/// The offsets `group` has committed on `topic`, by partition.
pub fn committed_offsets(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", group).create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// Topic names of one test pipeline.
#[derive(Clone, Debug)]
pub struct Topics {
    /// Input.
    pub input: String,
    /// Processed events.
    pub output: String,
    /// Dead letters.
    pub dead: String,
    /// Plugin logs (when set).
    pub logs: Option<String>,
}

impl Topics {
    /// `NAME-in`, `NAME-out`, `NAME-dead`; no logs topic.
    pub fn named(name: &str) -> Self {
        Self { input: format!("{name}-in"), output: format!("{name}-out"), dead: format!("{name}-dead"), logs: None }
    }

    /// Creates the topics on `bootstrap`: `partitions` for the input, 3 for the others.
    pub fn create(&self, bootstrap: &str, partitions: i32) {
        create_topic(bootstrap, &self.input, partitions);
        for t in [Some(&self.output), Some(&self.dead), self.logs.as_ref()].into_iter().flatten() {
            create_topic(bootstrap, t, 3);
        }
    }
}

/// A Kafka pipeline configuration in `dir` (in-memory state, files under `dir/out`); `kafka`
/// holds extra `[kafka]` lines (e.g. `delivery = "exactly-once"`). Returns the file's path.
pub fn kafka_config(dir: &std::path::Path, bootstrap: &str, group: &str, topics: &Topics, kafka: &str, plugins: &str) -> PathBuf {
    let logs = topics.logs.as_ref().map(|t| format!("logs_topic = {t:?}\n")).unwrap_or_default();
    let out = dir.join("out");
    let text = format!(
        "[input]\nkind = \"kafka\"\n[output]\nevents = {:?}\ndead_letters = {:?}\nlogs = {:?}\n[state]\nmemory = true\n\
         [runtime]\nbatch_size = 256\n{plugins}\n\
         [kafka]\nbrokers = {bootstrap:?}\ngroup_id = {group:?}\ninput_topic = {:?}\noutput_topic = {:?}\ndead_letter_topic = {:?}\n\
         commit_interval_ms = 100\n{logs}{kafka}\n\
         [kafka.consumer]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n",
        out.join("events.jsonl").display().to_string(),
        out.join("dead.jsonl").display().to_string(),
        out.join("logs.jsonl").display().to_string(),
        topics.input,
        topics.output,
        topics.dead,
    );
    let path = dir.join(format!("{group}.toml"));
    std::fs::write(&path, text).expect("write config");
    path
}

/// Starts `pluginflow run CONFIG -w WORKERS`, its stderr appended to `log`; the process is
/// killed when the handle is dropped (a test that fails must not leave it running).
pub fn spawn_pipeline(config: &std::path::Path, workers: usize, log: &std::path::Path) -> Running {
    let stderr = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("open log");
    let child = Command::new(pluginflow_bin())
        .args(["run", "--no-progress", "-w", &std::env::var("PF_TEST_WORKERS").unwrap_or_else(|_| workers.to_string())])
        .arg(config)
        .env(
            "RUST_LOG",
            std::env::var("PF_TEST_LOG").unwrap_or_else(|_| "info,pluginflow::kafka::source=debug,librdkafka=warn,rdkafka=warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("pluginflow starts");
    Running(child)
}

/// A pipeline process that is killed if the test ends first (a failed assertion must not leave
/// it running); used as the `Child` it holds.
pub struct Running(pub Child);

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for `child` to exit by itself, up to `timeout`; panics (after killing it) otherwise.
pub fn wait_exit(child: &mut Child, timeout: Duration, log: &std::path::Path) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("pluginflow did not finish within {timeout:?}; log tail:\n{}", log_tail(log, 30));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `lines` lines of the log file `log`.
pub fn log_tail(log: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(lines).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// The `uuid` of each JSON value (events without one are skipped).
pub fn uuids<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    values
        .into_iter()
        .filter_map(|v| serde_json::from_str::<serde_json::Value>(v).ok())
        .filter_map(|v| v.get("uuid").and_then(|u| u.as_str()).map(str::to_string))
        .collect()
}

/// Writes plugin `name` (`index.js` = `code`) into `dir/name`; returns its configuration entry
/// (first in the chain).
fn plugin_in(dir: &Path, name: &str, code: &str) -> String {
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("plugin.json"), format!(r#"{{"name": "{name}", "config": []}}"#)).unwrap();
    std::fs::write(folder.join("index.js"), code).unwrap();
    crate::plugin_entry(name, &folder, 1, "")
}

/// A plugin that spends about half a millisecond per event (busy: plugins have no timers).
pub fn pacing_plugin(dir: &Path) -> String {
    let code = "function processEvent(event) { const until = Date.now() + 0.5; while (Date.now() < until) {} return event }
module.exports = { processEvent }
";
    plugin_in(dir, "pace", code)
}

/// Whether [`capturing_plugin`] captures an event for the event with this uuid: one in eight
/// of the generator's in `processEvent`, another one in eight in `onEvent`.
pub fn captures(uuid: &str) -> bool {
    uuid.ends_with(['0', '8', '4', 'c'])
}

/// Whether [`capturing_plugin`]'s `exportEvents` names the event with this uuid in the
/// `batch_of` list of the `batch-follow-up` it captures for each batch: one in eight.
pub fn batch_captures(uuid: &str) -> bool {
    uuid.ends_with(['2', 'a'])
}

/// Whether [`capturing_plugin`] with jobs enqueues, in `onEvent`, a job that captures a
/// `job-follow-up` naming the event with this uuid (`job_of`): one in eight.
pub fn job_captures(uuid: &str) -> bool {
    uuid.ends_with(['6', 'e'])
}

/// A plugin that spends `pace_ms` per event and, for the events [`captures`] picks, captures a
/// `follow-up` naming the event in its property `of`: from `processEvent` for uuids ending in
/// 0 or 8, from `onEvent` for those ending in 4 or c. Its `exportEvents` captures, per batch, a
/// `batch-follow-up` listing in `batch_of` the batch's events that [`batch_captures`] picks.
/// `with_jobs`: its `onEvent` also enqueues, for the events [`job_captures`] picks, a job that
/// captures a `job-follow-up` naming the event in `job_of`, and its `setupPlugin` captures a
/// `setup-follow-up` (property `started`) per instance. A captured event takes `captured_ms`
/// and captures nothing.
pub fn capturing_plugin(dir: &Path, pace_ms: f64, captured_ms: f64, with_jobs: bool) -> String {
    let (enqueue, setup) = if with_jobs {
        (
            "  if (!event.event.endsWith('follow-up') && /[6e]$/.test(event.uuid)) await meta.jobs.followUp({ of: event.uuid, distinct_id: event.distinct_id }).runNow()\n",
            "async function setupPlugin() { await posthog.capture('setup-follow-up', { started: true, distinct_id: 'setup' }) }\n",
        )
    } else {
        ("", "async function setupPlugin() {}\n")
    };
    let code = format!(
        "async function processEvent(event) {{
  const followUp = event.event.endsWith('follow-up')
  const until = Date.now() + (followUp ? {captured_ms} : {pace_ms})
  while (Date.now() < until) {{}}
  if (!followUp && /[08]$/.test(event.uuid)) await posthog.capture('follow-up', {{ of: event.uuid, distinct_id: event.distinct_id }})
  return event
}}
async function onEvent(event, meta) {{
  if (!event.event.endsWith('follow-up') && /[4c]$/.test(event.uuid)) await posthog.capture('follow-up', {{ of: event.uuid, distinct_id: event.distinct_id }})
{enqueue}}}
const jobs = {{
  followUp: async (p) => {{ await posthog.capture('job-follow-up', {{ job_of: p.of, distinct_id: p.distinct_id }}) }},
}}
async function exportEvents(events) {{
  const picked = events.filter((e) => !e.event.endsWith('follow-up') && /[2a]$/.test(e.uuid)).map((e) => e.uuid)
  if (picked.length) await posthog.capture('batch-follow-up', {{ batch_of: picked.join(','), distinct_id: 'batch' }})
}}
{setup}module.exports = {{ setupPlugin, processEvent, onEvent, exportEvents, jobs }}
"
    );
    plugin_in(dir, "capture", &code)
}

/// `events in:` from a run's summary.
pub fn events_in(log: &Path) -> u64 {
    let text = std::fs::read_to_string(log).unwrap();
    let line = text.lines().rev().find(|l| l.trim_start().starts_with("events in:")).unwrap_or_else(|| panic!("no summary in {text}"));
    line.split(':').nth(1).unwrap().trim().parse().unwrap()
}

/// The address of the HTTP endpoint a pipeline announced in its log (`http.listen` port 0),
/// waiting for the line up to a minute.
pub fn http_addr(log: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(rest) = text.lines().find_map(|l| l.split_once("http endpoint on http://").map(|(_, r)| r.to_string())) {
            return rest.split('/').next().expect("host:port").to_string();
        }
        assert!(Instant::now() < deadline, "the pipeline announced no http endpoint:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET path` on `addr`: (status code, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the http endpoint");
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("send the request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("a status code");
    (code, body.to_string())
}

/// Messages written to `topic` so far, its partitions' high watermarks summed (committed or
/// not, transaction markers included): how far a pipeline has got, for timing a crash.
pub fn written(bootstrap: &str, topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("watermark client");
    let partitions = crate::txnlog::partition_count(bootstrap, topic);
    (0..partitions).map(|p| c.fetch_watermarks(topic, p, Duration::from_secs(5)).map(|(_, hi)| hi).unwrap_or(0)).sum()
}

/// Waits (up to a minute) until `topic` holds at least `n` messages, committed or not.
pub fn wait_for_output(bootstrap: &str, topic: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while written(bootstrap, topic) < n {
        assert!(Instant::now() < deadline, "{topic} did not reach {n} messages within a minute");
        std::thread::sleep(Duration::from_millis(20));
    }
}
