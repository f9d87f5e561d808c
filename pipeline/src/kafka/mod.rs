//! Kafka in, Kafka out: the consumer-group source, the output topics, and how offsets and
//! transactions follow the dataflow's frontier. Nothing here knows about plugins.
//!
//! Each worker owns one consumer (in the pipeline's group, so partitions spread over every
//! worker of every process) and one producer, shared by the worker's sinks and its source:
//!
//! ```text
//!   KafkaSource ──poll(epoch)──► dataflow ──► KafkaSink (events) ─┐
//!        ▲                                 └► KafkaSink (dead)  ──┤ send(epoch, …)
//!        │ complete(frontier)                                     ▼
//!        └──────── flush + commit offsets / one transaction ── WorkerProducer
//! ```
//!
//! - [`config`]: `[kafka]` and the librdkafka client settings built from it.
//! - [`source`]: the consumer, the per-epoch offset ledger, rebalances, commits.
//! - [`producer`]: the worker's producer, delivery checks, transactions.
//! - [`sink`]: output topics and the process-wide plugin-log sink.
//! - [`health`]: consumer lag, commit age and broker reachability for `/metrics` and `/healthz`.

pub mod config;
pub mod health;
pub mod producer;
pub mod sink;
pub mod source;

use std::cell::RefCell;
use std::rc::Rc;

pub use config::{Delivery, KafkaConfig};
pub use producer::WorkerProducer;
pub use sink::{KafkaLogSink, KafkaSink};
pub use source::KafkaSource;

use crate::io::{SharedSink, WorkerIo};

/// Opens worker `index`'s consumer, producer and output sinks.
pub fn open_worker_io(config: &KafkaConfig, index: usize, health: std::sync::Arc<health::KafkaHealth>) -> anyhow::Result<WorkerIo> {
    let producer = Rc::new(RefCell::new(WorkerProducer::open(config, index)?));
    let sink = |topic: &Option<String>, key: Option<&str>| -> SharedSink {
        let topic = topic.as_deref().expect("output topics are checked at load");
        Rc::new(RefCell::new(Box::new(KafkaSink::new(producer.clone(), topic, key))))
    };
    let events = sink(&config.output_topic, Some(&config.key_field));
    let dead_letters = sink(&config.dead_letter_topic, None);
    let source = KafkaSource::open(config, producer.clone(), index, health)?;
    Ok(WorkerIo { source: Box::new(source), events, dead_letters })
}
