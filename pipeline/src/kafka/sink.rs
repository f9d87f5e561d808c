//! Kafka outputs: processed events (keyed by a top-level field, `distinct_id` by default), dead
//! letters (reason, source and position in headers), and plugin logs.
//!
//! Event and dead-letter sinks are thin: they pick a key and hand records to the worker's
//! [`WorkerProducer`], which owns delivery checking and transactions. The log sink is
//! process-wide and sits outside any transaction: logs are diagnostics, written at most once
//! per call, and may repeat when epochs are replayed after a crash.

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;

use anyhow::Context as _;
use operators::plugin::{LogEntry, LogSink};
use rdkafka::producer::{DefaultProducerContext, Producer as _, ThreadedProducer};
use serde::Deserializer as _;
use serde::de::{IgnoredAny, MapAccess, Visitor};

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

impl RecordSink for KafkaSink {
    fn write(&mut self, epoch: u64, records: &[OutRecord]) -> anyhow::Result<()> {
        let mut producer = self.producer.borrow_mut();
        for r in records {
            let key = self.key_field.as_deref().and_then(|f| top_level_string(&r.value, f));
            producer.send(epoch, &self.topic, key.as_deref(), &r.value, &r.headers)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.producer.borrow_mut().flush()
    }
}

/// The value of top-level field `field` of a JSON object, as text (strings unquoted, numbers and
/// booleans as written); `None` when absent, null, nested, or not an object. Reads the object
/// without building it.
pub fn top_level_string(json: &str, field: &str) -> Option<String> {
    let mut de = serde_json::Deserializer::from_str(json);
    de.deserialize_map(FieldVisitor(field)).ok().flatten()
}

struct FieldVisitor<'f>(&'f str);

impl<'de> Visitor<'de> for FieldVisitor<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == self.0 && found.is_none() {
                found = scalar_text(map.next_value::<serde_json::Value>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

fn scalar_text(v: serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
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
        if let Err(e) = produce(&self.producer, &self.topic, Some(&entry.config_id), &value, &[]) {
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
    }
}
