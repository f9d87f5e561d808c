//! Kafka side of the benchmarks: load a recorded log into a topic, the raw rdkafka
//! consume→produce loop that is the floor for `pluginflow run` between topics, and a counter
//! that times any such run by the create timestamps of its output messages.
//!
//! ```text
//! kafka_bench create --bootstrap B --topic T --partitions P [--append-time]
//!     with --append-time the topic's messages carry the time the broker appended them
//!     (`message.timestamp.type = LogAppendTime`) instead of the producer's create time.
//! kafka_bench load   --bootstrap B --topic T --events FILE [--key-field F]
//!     produces every line, then flushes: with no key (partitions spread by librdkafka), or
//!     keyed by the line's top-level string field F (parsed here, before anything is timed).
//! kafka_bench loop   --bootstrap B --input T --output T2 --group G --count N [--keyed] [--idempotent] [--prefetch]
//!     the floor: one BaseConsumer in group G, each message's payload produced unchanged to
//!     T2 (offsets auto-committed), until N messages were consumed and delivered; with
//!     --keyed each message keeps its input key (the floor for a run that keys its output by
//!     the same field, without reading the event to find it); with --idempotent its producer is
//!     idempotent, as pluginflow's is (sequence numbers, at most 5 requests in flight); with
//!     --prefetch its consumer prefetches as pluginflow's does (`fetch.queue.backoff.ms` = 20,
//!     pipeline/src/kafka/config.rs; librdkafka's default is a second).
//! kafka_bench count  --bootstrap B --topic T [--quiet-ms 3000] [--json OUT]
//!     reads all of T (until nothing came for --quiet-ms): messages, and the span of their
//!     timestamps: seconds from the first message out to the last, and messages/s. Create
//!     timestamps are set by the producer when the system under test handed each message to
//!     librdkafka (what sits in its queue counts as sent); append timestamps (a topic made with
//!     --append-time) when the broker wrote it, so the span covers delivery too.
//! ```
//!
//! Timing by the producers' own timestamps treats every system alike and leaves out process
//! start-up and the consumer group's first assignment, which would swamp runs of a few seconds.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList, error::KafkaError};

#[derive(Default)]
struct Args {
    bootstrap: String,
    topic: String,
    input: String,
    output: String,
    group: String,
    events: Option<PathBuf>,
    partitions: i32,
    count: u64,
    quiet_ms: u64,
    json: Option<PathBuf>,
    key_field: Option<String>,
    keyed: bool,
    idempotent: bool,
    prefetch: bool,
    append_time: bool,
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "kafka_bench: {msg}\nusage: kafka_bench create|load|loop|count --bootstrap HOST:PORT [--topic T] [--partitions P] [--append-time] [--events FILE] [--key-field F] [--input T --output T2 --group G --count N] [--keyed] [--idempotent] [--prefetch] [--quiet-ms MS] [--json OUT]"
    );
    std::process::exit(2)
}

fn parse_args() -> (String, Args) {
    let mut it = std::env::args().skip(1);
    let mode = it.next().unwrap_or_else(|| usage("missing mode"));
    let mut a = Args { partitions: 1, quiet_ms: 3000, ..Args::default() };
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage(&format!("missing value for {flag}")));
        match flag.as_str() {
            "--bootstrap" => a.bootstrap = value(),
            "--topic" => a.topic = value(),
            "--input" => a.input = value(),
            "--output" => a.output = value(),
            "--group" => a.group = value(),
            "--events" => a.events = Some(value().into()),
            "--partitions" => a.partitions = value().parse().unwrap_or_else(|_| usage("bad --partitions")),
            "--count" => a.count = value().parse().unwrap_or_else(|_| usage("bad --count")),
            "--quiet-ms" => a.quiet_ms = value().parse().unwrap_or_else(|_| usage("bad --quiet-ms")),
            "--json" => a.json = Some(value().into()),
            "--key-field" => a.key_field = Some(value()),
            "--keyed" => a.keyed = true,
            "--idempotent" => a.idempotent = true,
            "--prefetch" => a.prefetch = true,
            "--append-time" => a.append_time = true,
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    if a.bootstrap.is_empty() {
        usage("--bootstrap is required");
    }
    (mode, a)
}

fn main() {
    let (mode, a) = parse_args();
    match mode.as_str() {
        "create" => create(&a),
        "load" => load(&a),
        "loop" => raw_loop(&a),
        "count" => count(&a),
        _ => usage(&format!("unknown mode {mode}")),
    }
}

fn create(a: &Args) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &a.bootstrap).create().expect("admin client");
    let mut topic = NewTopic::new(&a.topic, a.partitions, TopicReplication::Fixed(1));
    if a.append_time {
        topic = topic.set("message.timestamp.type", "LogAppendTime");
    }
    let results = block_on(admin.create_topics([&topic], &AdminOptions::new())).expect("create_topics");
    for r in results {
        if let Err((name, code)) = r
            && code != RDKafkaErrorCode::TopicAlreadyExists
        {
            panic!("cannot create topic {name}: {code}");
        }
    }
}

fn producer(bootstrap: &str, idempotent: bool) -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("enable.idempotence", idempotent.to_string())
        .set("queue.buffering.max.messages", "200000")
        .create()
        .expect("producer")
}

/// Sends one payload with an optional key, waiting while librdkafka's queue is full.
fn send(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, key: Option<&[u8]>, payload: &[u8]) {
    let mut record = BaseRecord::<[u8], [u8]>::to(topic).payload(payload);
    if let Some(key) = key {
        record = record.key(key);
    }
    loop {
        match p.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err((e, _)) => panic!("produce to {topic}: {e}"),
        }
    }
}

fn load(a: &Args) {
    let path = a.events.as_ref().unwrap_or_else(|| usage("load needs --events"));
    let text = std::fs::read(path).expect("read --events");
    let p = producer(&a.bootstrap, false);
    let mut n = 0u64;
    for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let key = a.key_field.as_ref().and_then(|field| {
            let event: serde_json::Value = serde_json::from_slice(line).ok()?;
            event.get(field)?.as_str().map(|k| k.as_bytes().to_vec())
        });
        send(&p, &a.topic, key.as_deref(), line);
        n += 1;
    }
    p.flush(Duration::from_secs(300)).expect("flush");
    eprintln!("kafka_bench: loaded {n} messages into {}", a.topic);
}

fn raw_loop(a: &Args) {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &a.bootstrap).set("group.id", &a.group).set("auto.offset.reset", "earliest");
    if a.prefetch {
        config.set("fetch.queue.backoff.ms", "20");
    }
    let consumer: BaseConsumer = config.create().expect("consumer");
    consumer.subscribe(&[&a.input]).expect("subscribe");
    let p = producer(&a.bootstrap, a.idempotent);
    let mut n = 0u64;
    while n < a.count {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let key = if a.keyed { m.key() } else { None };
                send(&p, &a.output, key, m.payload().unwrap_or_default());
                n += 1;
            }
            Some(Err(e)) => eprintln!("kafka_bench: consumer error: {e}"),
            None => {}
        }
    }
    p.flush(Duration::from_secs(300)).expect("flush");
    eprintln!("kafka_bench: copied {n} messages from {} to {}", a.input, a.output);
}

fn count(a: &Args) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &a.bootstrap)
        .set("group.id", "kafka-bench-count")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let md = c.fetch_metadata(Some(&a.topic), Duration::from_secs(5)).expect("metadata");
    let partitions = md.topics().first().map_or(0, |t| t.partitions().len()) as i32;
    assert!(partitions > 0, "topic {} has no partitions", a.topic);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&a.topic, p, Offset::Beginning).expect("offset");
    }
    c.assign(&tpl).expect("assign");
    let (mut n, mut first, mut last) = (0u64, i64::MAX, i64::MIN);
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_millis(a.quiet_ms) {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let ts = m.timestamp().to_millis().expect("messages carry a timestamp");
                first = first.min(ts);
                last = last.max(ts);
                n += 1;
                quiet_since = Instant::now();
            }
            Some(Err(e)) => eprintln!("kafka_bench: consumer error: {e}"),
            None => {}
        }
    }
    assert!(n > 0, "no messages on {}", a.topic);
    let seconds = ((last - first) as f64 / 1000.0).max(0.001);
    let report = format!("{{\"messages\": {n}, \"seconds\": {seconds:.3}, \"messages_per_s\": {:.1}}}", n as f64 / seconds);
    println!("{report}");
    if let Some(out) = &a.json {
        std::fs::write(out, report + "\n").expect("write --json");
    }
}

/// Runs a future to completion on this thread (the admin client's futures need no runtime).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
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
        if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}
