//! `[kafka]`: brokers, topics, delivery mode and librdkafka pass-through settings, and the client
//! configurations built from them. Checked once at load; each problem names its field.
//!
//! Settings we rely on for correctness (`enable.auto.commit`, `enable.auto.offset.store`,
//! `transactional.id`, `isolation.level` of the consumer…) are set here and cannot be overridden
//! from `[kafka.librdkafka]`: the check refuses them rather than silently breaking the guarantee.

use std::collections::BTreeMap;

use rdkafka::ClientConfig;
use serde::Deserialize;

/// `[kafka]`: where a Kafka pipeline reads and writes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: comma-separated `host:port` list.
    pub brokers: String,
    /// Consumer group of every worker of every process of this pipeline.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// Topic the events are read from (required when `input.kind = "kafka"`).
    #[serde(default)]
    pub input_topic: Option<String>,
    /// Topic processed events are written to (required when `input.kind = "kafka"`).
    #[serde(default)]
    pub output_topic: Option<String>,
    /// Topic dead letters are written to, the reason in the `reason` header (required when
    /// `input.kind = "kafka"`).
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Topic plugin log entries are written to, instead of `output.logs`.
    #[serde(default)]
    pub logs_topic: Option<String>,
    /// Top-level field of the processed event used as the message key (`distinct_id` by
    /// default); an empty string sends no key.
    #[serde(default = "default_key_field")]
    pub key_field: String,
    /// `at-least-once` (default) or `exactly-once` (outputs and offsets in one transaction).
    #[serde(default)]
    pub delivery: Delivery,
    /// Offsets (or transactions) are committed at most this often, in milliseconds; at the end of
    /// a run everything complete is committed regardless.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// How long one poll waits for the first message when the topic is idle, in milliseconds.
    #[serde(default = "default_poll_timeout_ms")]
    pub poll_timeout_ms: u64,
    /// Stop (as at the end of a recorded log) once a worker has had its partitions and seen no
    /// record for this many milliseconds. Omitted: run until stopped (SIGINT/SIGTERM).
    #[serde(default)]
    pub stop_after_idle_ms: Option<u64>,
    /// Prefix of the transactional ids (`PREFIX-WORKER`) in exactly-once mode; defaults to
    /// `group_id`. Independent processes sharing a group need different prefixes.
    #[serde(default)]
    pub transactional_id_prefix: Option<String>,
    /// librdkafka settings for every client (consumer and producers), e.g. `"security.protocol"`.
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
    /// librdkafka settings for the consumers only (after `librdkafka`), e.g.
    /// `"session.timeout.ms"`.
    #[serde(default)]
    pub consumer: BTreeMap<String, String>,
    /// librdkafka settings for the producers only (after `librdkafka`), e.g. `"linger.ms"`.
    #[serde(default)]
    pub producer: BTreeMap<String, String>,
}

/// Delivery guarantee of a Kafka pipeline.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// Offsets committed after the outputs of their epochs are acknowledged; a crash replays
    /// the uncommitted epochs.
    #[default]
    AtLeastOnce,
    /// Outputs and offsets of complete epochs in one transaction; `read_committed` readers see
    /// each event once.
    ExactlyOnce,
}

fn default_group_id() -> String {
    "pluginflow".into()
}
fn default_key_field() -> String {
    "distinct_id".into()
}
fn default_commit_interval_ms() -> u64 {
    200
}
fn default_poll_timeout_ms() -> u64 {
    50
}

/// librdkafka settings the pipeline owns: overriding them would break the delivery guarantee
/// (or, for `statistics.interval.ms`, the health checks of `/healthz`).
const RESERVED: &[&str] = &[
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "transactional.id",
    "isolation.level",
    "enable.partition.eof",
    "statistics.interval.ms",
    // At-least-once commits count each epoch's acknowledgements from the delivery reports
    // (producer.rs): with reports of failures only, no epoch would ever count as delivered.
    "delivery.report.only.error",
];

impl KafkaConfig {
    /// Cross-field checks; `Err((field, problem))` with the field relative to `[kafka]`.
    pub fn check(&self, kafka_input: bool) -> Result<(), (String, String)> {
        let fail = |field: &str, problem: &str| Err((field.to_string(), problem.to_string()));
        if self.brokers.trim().is_empty() {
            return fail("brokers", "must name at least one host:port");
        }
        if self.group_id.trim().is_empty() {
            return fail("group_id", "must not be empty");
        }
        if kafka_input {
            for (field, topic) in
                [("input_topic", &self.input_topic), ("output_topic", &self.output_topic), ("dead_letter_topic", &self.dead_letter_topic)]
            {
                match topic {
                    None => return fail(field, "is required when input.kind = \"kafka\""),
                    Some(t) if t.trim().is_empty() => return fail(field, "must not be empty"),
                    Some(_) => {}
                }
            }
        }
        if self.logs_topic.as_ref().is_some_and(|t| t.trim().is_empty()) {
            return fail("logs_topic", "must not be empty (omit it to write logs to output.logs)");
        }
        if self.commit_interval_ms > 600_000 {
            return fail("commit_interval_ms", "must be at most 600000 (10 minutes)");
        }
        if self.stop_after_idle_ms == Some(0) {
            return fail("stop_after_idle_ms", "must be at least 1 (omit it to run until stopped)");
        }
        if self.transactional_id_prefix.as_ref().is_some_and(|p| p.trim().is_empty()) {
            return fail("transactional_id_prefix", "must not be empty");
        }
        self.check_librdkafka()
    }

    fn check_librdkafka(&self) -> Result<(), (String, String)> {
        for (table, map) in [("librdkafka", &self.librdkafka), ("consumer", &self.consumer), ("producer", &self.producer)] {
            for (key, value) in map {
                if RESERVED.contains(&key.as_str()) || key == "bootstrap.servers" {
                    let problem = format!("\"{key}\" is set by pluginflow (use the [kafka] fields) and cannot be overridden");
                    return Err((format!("{table}.\"{key}\""), problem));
                }
                let cooperative = key == "partition.assignment.strategy" && value.contains("cooperative");
                if cooperative && self.delivery == Delivery::ExactlyOnce {
                    let problem = "cooperative rebalancing is not supported in exactly-once mode (a rebalance rewinds every partition)";
                    return Err((format!("{table}.\"{key}\""), problem.into()));
                }
            }
        }
        Ok(())
    }

    /// The input topic (checked to be set when the input is Kafka).
    pub fn input_topic(&self) -> &str {
        self.input_topic.as_deref().unwrap_or_default()
    }

    /// Settings shared by every client: the pass-through table.
    fn base(&self) -> BTreeMap<&String, &String> {
        self.librdkafka.iter().collect()
    }

    /// The consumer of one worker. `client.id` names the worker in broker logs.
    pub fn consumer_config(&self, worker: usize) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c.set("auto.offset.reset", "earliest");
        // What librdkafka prefetches per consumer bounds the bytes waiting below the epochs the
        // source may run ahead. Its own defaults (64 MiB, 100,000 messages) are kept: a 16 MiB
        // cap (about 5,000 events of 3 KB) starved the worker between fetches on a local
        // broker, 21k vs 63k events/s passed through (issue 7 note).
        c.set("queued.max.messages.kbytes", "65536");
        c.set("queued.min.messages", "100000");
        // Once a partition's prefetch queue is over those bounds, librdkafka waits this long
        // before it looks again (its default: a second). A worker drains the queue in a fraction
        // of that, then polled nothing for the rest: the passthrough spent a third of its run
        // so (98k-129k messages/s; 20 ms: 150k-170k).
        // (kafka_bench loop --prefetch gives the benchmark floors the same value.)
        c.set("fetch.queue.backoff.ms", "20");
        c.set("client.id", format!("pluginflow-{worker}"));
        c.extend_from(&self.base());
        c.extend_from(&self.consumer.iter().collect());
        // Consumer lag and broker states for /metrics and /healthz (kafka/health.rs), whose
        // "no statistics for too long" check relies on this period: not the user's to change.
        c.set("statistics.interval.ms", super::health::STATS_INTERVAL_MS.to_string());
        c.set("group.id", &self.group_id);
        c.set("enable.auto.commit", "false");
        c.set("enable.auto.offset.store", "false");
        c.set("enable.partition.eof", "false");
        // Input may itself be written transactionally: never read aborted or open transactions.
        c.set("isolation.level", "read_committed");
        c
    }

    /// The producer of one worker: idempotent, transactional in exactly-once mode.
    pub fn producer_config(&self, worker: usize) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c.set("enable.idempotence", "true");
        c.set("linger.ms", "5");
        c.set("client.id", format!("pluginflow-{worker}"));
        c.extend_from(&self.base());
        c.extend_from(&self.producer.iter().collect());
        if self.delivery == Delivery::ExactlyOnce {
            c.set("transactional.id", self.transactional_id(worker));
        }
        c
    }

    /// A plain producer for plugin logs (process-wide, outside any transaction).
    pub fn log_producer_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c.set("linger.ms", "50");
        c.set("client.id", "pluginflow-logs");
        c.extend_from(&self.base());
        c.extend_from(&self.producer.iter().collect());
        c
    }

    /// `PREFIX-WORKER`: stable across restarts so a restarted worker fences its predecessor and
    /// aborts its open transaction at once.
    pub fn transactional_id(&self, worker: usize) -> String {
        format!("{}-{worker}", self.transactional_id_prefix.as_deref().unwrap_or(&self.group_id))
    }
}

/// Copies settings of `other` over `self` (later wins), as layering defaults then user settings.
trait ExtendFrom {
    fn extend_from(&mut self, other: &BTreeMap<&String, &String>);
}

impl ExtendFrom for ClientConfig {
    fn extend_from(&mut self, other: &BTreeMap<&String, &String>) {
        for (k, v) in other {
            self.set(k.as_str(), v.as_str());
        }
    }
}
