//! Kafka outputs: processed events (keyed by a top-level field, `distinct_id` by default), dead
//! letters (reason, source and position in headers), and plugin logs.
//!
//! Event and dead-letter sinks are thin: they pick a key and hand records to the worker's
//! [`WorkerProducer`], which owns delivery checking and transactions. The log sink is
//! process-wide and sits outside any transaction: logs are diagnostics, written at most once
//! per call, and may repeat when epochs are replayed after a crash.

use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;

use anyhow::Context as _;
use operators::plugin::{LogEntry, LogSink};
use rdkafka::producer::{DefaultProducerContext, Producer as _, ThreadedProducer};

use super::config::KafkaConfig;
use super::producer::{WorkerProducer, produce};
use crate::io::{OutRecord, RecordSink};

/// One worker's view of one output topic.
pub struct KafkaSink {
    producer: Rc<RefCell<WorkerProducer>>,
    topic: String,
    key_field: Option<String>,
}

impl KafkaSink {
    /// A sink to `topic` through `producer`; records are keyed by `key_field` when given.
    pub fn new(producer: Rc<RefCell<WorkerProducer>>, topic: &str, key_field: Option<&str>) -> Self {
        Self { producer, topic: topic.to_string(), key_field: key_field.filter(|f| !f.is_empty()).map(str::to_string) }
    }
}

impl KafkaSink {
    /// Sends values without headers, keyed; `kept` ones survive a rewind of their epoch
    /// ([`WorkerProducer::send_kept`]).
    fn send_values(&self, epoch: u64, values: &mut dyn Iterator<Item = &str>, kept: bool) -> anyhow::Result<()> {
        let mut producer = self.producer.borrow_mut();
        producer.check()?;
        for v in values {
            let key = self.key_of(v);
            if kept {
                producer.send_kept(epoch, &self.topic, key.as_deref(), v)?;
            } else {
                producer.send(epoch, &self.topic, key.as_deref(), v, &[])?;
            }
        }
        Ok(())
    }

    /// The record key of `value`: its `key_field`, when the sink has one.
    fn key_of<'v>(&self, value: &'v str) -> Option<Cow<'v, str>> {
        self.key_field.as_deref().and_then(|f| top_level_string(value, f))
    }
}

impl RecordSink for KafkaSink {
    fn write(&mut self, epoch: u64, records: &[OutRecord]) -> anyhow::Result<()> {
        let mut producer = self.producer.borrow_mut();
        producer.check()?;
        for r in records {
            producer.send(epoch, &self.topic, self.key_of(&r.value).as_deref(), &r.value, &r.headers)?;
        }
        Ok(())
    }

    fn write_values(&mut self, epoch: u64, values: &mut dyn Iterator<Item = &str>) -> anyhow::Result<()> {
        self.send_values(epoch, values, false)
    }

    fn write_values_kept(&mut self, epoch: u64, values: &mut dyn Iterator<Item = &str>) -> anyhow::Result<()> {
        self.send_values(epoch, values, true)
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.producer.borrow_mut().flush()
    }
}

/// The value of top-level field `field` of a JSON object, as text (strings unquoted, numbers and
/// booleans as written); `None` when absent, null, nested, or not an object. Reads the object
/// only up to that field (the first one of that name), without building anything: a string
/// without escapes is borrowed from `json`.
pub fn top_level_string<'a>(json: &'a str, field: &str) -> Option<Cow<'a, str>> {
    let raw = operators::plugin::marks::top_level_value(json, field)?;
    match raw.as_bytes().first()? {
        b'"' if !raw.contains('\\') => raw.get(1..raw.len() - 1).map(Cow::Borrowed),
        b'"' => serde_json::from_str::<String>(raw).ok().map(Cow::Owned),
        b'-' | b'0'..=b'9' | b't' | b'f' => Some(Cow::Borrowed(raw)),
        _ => None,
    }
}

/// Plugin log entries to a topic, keyed by plugin configuration id. Process-wide: every worker's
/// plugin host logs through it.
pub struct KafkaLogSink {
    producer: ThreadedProducer<DefaultProducerContext>,
    topic: String,
}

impl KafkaLogSink {
    /// Connects a plain (non-transactional) producer for `topic`.
    pub fn open(config: &KafkaConfig, topic: &str) -> anyhow::Result<Self> {
        let producer = config.log_producer_config().create().context("cannot create the Kafka log producer")?;
        Ok(Self { producer, topic: topic.to_string() })
    }

    /// Waits (up to `timeout`) for the log entries sent so far.
    pub fn flush(&self, timeout: std::time::Duration) -> anyhow::Result<()> {
        self.producer.flush(timeout).context("cannot flush plugin logs to Kafka")
    }
}

impl LogSink for KafkaLogSink {
    fn log(&self, entry: LogEntry) {
        let value = entry.to_json().to_string();
        if let Err(e) = produce(&self.producer, &self.topic, Some(&entry.config_id), &value, &[], ()) {
            // Logging must not stop the pipeline: the entry goes to our own log instead.
            tracing::warn!(topic = %self.topic, error = %format!("{e:#}"), entry = %value, "plugin log entry not sent to Kafka");
        }
    }
}

impl Drop for KafkaLogSink {
    fn drop(&mut self) {
        if let Err(e) = self.flush(std::time::Duration::from_secs(10)) {
            tracing::warn!(topic = %self.topic, error = %format!("{e:#}"), "plugin log entries may be lost");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_read_from_the_top_level_only() {
        let json = r#"{"event":"x","properties":{"distinct_id":"inner"},"distinct_id":"u1","n":2}"#;
        assert_eq!(top_level_string(json, "distinct_id").as_deref(), Some("u1"));
        assert_eq!(top_level_string(json, "n").as_deref(), Some("2"));
        assert_eq!(top_level_string(json, "properties"), None);
        assert_eq!(top_level_string(json, "missing"), None);
        assert_eq!(top_level_string("[1,2]", "distinct_id"), None);
        assert_eq!(top_level_string(r#"{"distinct_id":null}"#, "distinct_id"), None);
        // Escapes are decoded; the first of two members with the name wins; booleans and
        // numbers as written.
        assert_eq!(
            top_level_string(r#"{"a":{"distinct_id":"in"},"distinct_id":"tab\tq\"\u00e9"}"#, "distinct_id").as_deref(),
            Some("tab\tq\"é")
        );
        assert_eq!(top_level_string(r#"{"distinct_id":"x","distinct_id":"y"}"#, "distinct_id").as_deref(), Some("x"));
        assert_eq!(top_level_string(r#"{ "k" : true , "n": -1.5e3}"#, "k").as_deref(), Some("true"));
        assert_eq!(top_level_string(r#"{ "k" : true , "n": -1.5e3}"#, "n").as_deref(), Some("-1.5e3"));
        assert_eq!(top_level_string(r#"{"k":["x"]}"#, "k"), None);
    }
}
