//! One worker's producer, shared (`Rc`) by the worker's Kafka sinks and its source, because the
//! source decides when outputs count as done: it commits an epoch's offsets once every record
//! sent for it and for the epochs before it is acknowledged (at-least-once), or puts outputs and
//! offsets in one transaction (exactly-once).
//!
//! At-least-once, each record carries its epoch as its delivery opaque; the producer's thread
//! counts acknowledgements per epoch ([`DeliveryContext`]), so the source learns which epochs are
//! fully delivered without waiting for the records still in flight (a flush stops the worker
//! for broker round trips while the next epochs could be read and sent).
//!
//! Retries are librdkafka's: a produce request that fails with a retriable error is retried
//! inside librdkafka (idempotently, so without duplicates or reordering) until
//! `message.timeout.ms`. A delivery report that still carries an error is therefore permanent;
//! it is kept and surfaced as an error from the next `send`/`flush`, never ignored.
//!
//! In exactly-once mode records are not produced as they are written: they wait in memory, by
//! epoch, until their epoch is complete, and are produced inside the transaction that also
//! commits that epoch's offsets. Records of an epoch that is complete are final: a transaction
//! never holds part of an epoch. Memory is bounded by the epochs the source may run ahead.

use operators::sync::lock;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message as _, TopicPartitionList};

use super::config::{Delivery, KafkaConfig};

/// How long to wait for the broker in transactional calls before retrying them.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a transactional call that failed with a retriable error is tried again.
const TXN_RETRIES: usize = 20;

/// One record waiting for its epoch's transaction.
#[derive(Debug)]
struct Pending {
    topic: String,
    key: Option<String>,
    value: String,
    headers: Vec<(&'static str, String)>,
    /// Kept when its epoch is rewound ([`WorkerProducer::send_kept`]).
    kept: bool,
}

/// Counts deliveries, per epoch those still unacknowledged (at-least-once), and keeps the first
/// permanent failure.
#[derive(Default)]
pub struct DeliveryContext {
    failed: Mutex<Option<String>>,
    delivered: AtomicU64,
    /// At-least-once: records sent and not yet acknowledged, by epoch (no entry: none). A
    /// record whose delivery failed is never taken off: its epoch is never acknowledged.
    unacked: Mutex<BTreeMap<u64, u64>>,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    /// The record's epoch (at-least-once; 0 and not counted in exactly-once mode).
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, epoch: usize) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                self.acknowledged(epoch as u64);
            }
            // Records purged by our own abort of a transaction: their epochs are read again.
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight), _)) => {}
            Err((e, msg)) => {
                tracing::error!(topic = msg.topic(), partition = msg.partition(), error = %e, "delivery failed after librdkafka's retries");
                lock(&self.failed).get_or_insert_with(|| format!("delivery to {} failed: {e}", msg.topic()));
            }
        }
    }
}

impl DeliveryContext {
    /// Notes a record of `epoch` about to be sent (before it is: its acknowledgement may come
    /// at once).
    fn sending(&self, epoch: u64) {
        *lock(&self.unacked).entry(epoch).or_default() += 1;
    }

    /// One record of `epoch` is acknowledged.
    fn acknowledged(&self, epoch: u64) {
        let mut unacked = lock(&self.unacked);
        if let Some(n) = unacked.get_mut(&epoch) {
            *n -= 1;
            if *n == 0 {
                unacked.remove(&epoch);
            }
        }
    }

    /// Every record sent for an epoch below this one is acknowledged.
    fn acknowledged_below(&self) -> u64 {
        lock(&self.unacked).keys().next().copied().unwrap_or(u64::MAX)
    }

    fn check(&self) -> anyhow::Result<()> {
        match lock(&self.failed).clone() {
            Some(e) => Err(anyhow!(e)),
            None => Ok(()),
        }
    }

    /// Forgets a failure: it belonged to a transaction that was aborted.
    fn clear(&self) {
        *lock(&self.failed) = None;
    }
}

/// How a transaction ended, when the producer can go on.
#[derive(Debug)]
pub enum Transaction {
    /// Committed, with this many records.
    Committed(usize),
    /// Failed but aborted: its records are gone and its offsets were not committed, so the
    /// epochs it held must be read again.
    Aborted(anyhow::Error),
}

/// A worker's producer and, in exactly-once mode, the records waiting for their transaction.
pub struct WorkerProducer {
    producer: ThreadedProducer<DeliveryContext>,
    delivery: Delivery,
    waiting: BTreeMap<u64, Vec<Pending>>,
    /// Records of epochs below this are dropped (exactly-once, after a rebalance rewound them).
    discard_below: u64,
    worker: usize,
    transactional_id: String,
}

impl WorkerProducer {
    /// Creates worker `worker`'s producer; in exactly-once mode, registers its transactional id,
    /// which aborts whatever transaction a previous incarnation left open.
    pub fn open(config: &KafkaConfig, worker: usize) -> anyhow::Result<Self> {
        let producer: ThreadedProducer<DeliveryContext> =
            config.producer_config(worker).create_with_context(DeliveryContext::default()).context("cannot create the Kafka producer")?;
        if config.delivery == Delivery::ExactlyOnce {
            retry_txn("init_transactions", || producer.init_transactions(TXN_TIMEOUT))?;
            tracing::info!(worker, transactional_id = %config.transactional_id(worker), "transactional producer ready");
        }
        Ok(Self {
            producer,
            delivery: config.delivery,
            waiting: BTreeMap::new(),
            discard_below: 0,
            worker,
            transactional_id: config.transactional_id(worker),
        })
    }

    /// Fails when a record sent earlier could not be delivered (at-least-once): sinks ask once
    /// per batch of records, before sending it.
    pub fn check(&self) -> anyhow::Result<()> {
        match self.delivery {
            Delivery::AtLeastOnce => self.producer.context().check(),
            Delivery::ExactlyOnce => Ok(()),
        }
    }

    /// Sends (at-least-once) or keeps for its epoch's transaction (exactly-once) one record.
    /// A failed delivery of an earlier record shows in [`Self::check`].
    pub fn send(
        &mut self,
        epoch: u64,
        topic: &str,
        key: Option<&str>,
        value: &str,
        headers: &[(&'static str, String)],
    ) -> anyhow::Result<()> {
        self.send_as(epoch, topic, key, value, headers, false)
    }

    /// [`Self::send`] for a record that stands for more than its epoch's input, so a rewind of
    /// its epoch must not drop it: what an `exportEvents` batch captured, whose events may be of
    /// later epochs too. Exactly-once, it goes out with the next transaction (a replay may write
    /// it again; it is never lost).
    pub fn send_kept(&mut self, epoch: u64, topic: &str, key: Option<&str>, value: &str) -> anyhow::Result<()> {
        self.send_as(epoch, topic, key, value, &[], true)
    }

    fn send_as(
        &mut self,
        epoch: u64,
        topic: &str,
        key: Option<&str>,
        value: &str,
        headers: &[(&'static str, String)],
        kept: bool,
    ) -> anyhow::Result<()> {
        match self.delivery {
            Delivery::AtLeastOnce => {
                self.producer.context().sending(epoch);
                produce(&self.producer, topic, key, value, headers, epoch as usize)
            }
            Delivery::ExactlyOnce if epoch < self.discard_below && !kept => Ok(()),
            Delivery::ExactlyOnce => {
                let (topic, key, value, headers) = (topic.to_string(), key.map(str::to_string), value.to_string(), headers.to_vec());
                self.waiting.entry(epoch).or_default().push(Pending { topic, key, value, headers, kept });
                Ok(())
            }
        }
    }

    /// At-least-once: every record sent for an epoch below this one is acknowledged (`u64::MAX`
    /// when none waits). Exactly-once: `u64::MAX` (records leave with their transaction).
    pub fn acknowledged_below(&self) -> u64 {
        self.producer.context().acknowledged_below()
    }

    /// Waits until every record sent so far is acknowledged (at-least-once); fails on a
    /// permanent delivery failure. In exactly-once mode, records leave with their transaction.
    pub fn flush(&mut self) -> anyhow::Result<()> {
        if self.delivery == Delivery::ExactlyOnce {
            return Ok(());
        }
        // No timeout of our own: librdkafka fails each message after `message.timeout.ms`, and
        // a flush that returns early would let offsets be committed before their outputs.
        loop {
            match self.producer.flush(Duration::from_secs(10)) {
                Ok(()) => break,
                Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)) => {
                    tracing::warn!(
                        worker = self.worker,
                        in_flight = self.producer.in_flight_count(),
                        "producer still waiting for acknowledgements"
                    );
                }
                Err(e) => return Err(e).context("cannot flush the Kafka producer"),
            }
        }
        self.producer.context().check()
    }

    /// Exactly-once: drops every waiting record of epochs below `epoch`, and any written later
    /// for them (their input will be read again from the committed offsets).
    pub fn discard_below(&mut self, epoch: u64) {
        self.discard_below = self.discard_below.max(epoch);
        let keep = self.waiting.split_off(&epoch);
        let mut dropped = 0;
        for records in self.waiting.values_mut() {
            let before = records.len();
            records.retain(|r| r.kept);
            dropped += before - records.len();
        }
        self.waiting.retain(|_, records| !records.is_empty());
        self.waiting.extend(keep);
        if dropped > 0 {
            tracing::info!(worker = self.worker, dropped, "dropped uncommitted outputs of rewound epochs");
        }
    }

    /// Exactly-once: one transaction with the waiting records of epochs below `frontier` and
    /// `offsets`. Does nothing when both are empty.
    ///
    /// A transaction that fails is aborted. If the abort succeeds and the producer has no fatal
    /// error, the result is [`Transaction::Aborted`] and the producer can run the next
    /// transaction (e.g. offsets refused as ILLEGAL_GENERATION while the group rebalances).
    /// A fatal error (fenced: another instance owns the transactional id) or a failed abort is
    /// an error: the producer cannot go on.
    pub fn commit_transaction(
        &mut self,
        frontier: u64,
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
    ) -> anyhow::Result<Transaction> {
        let later = self.waiting.split_off(&frontier);
        let ready = std::mem::replace(&mut self.waiting, later);
        let count: usize = ready.values().map(Vec::len).sum();
        if count == 0 && offsets.count() == 0 {
            return Ok(Transaction::Committed(0));
        }
        if let Err(e) = self.producer.begin_transaction() {
            return Err(self.explain_fatal(anyhow::Error::new(e).context("cannot begin a Kafka transaction")));
        }
        let Err(error) = self.fill_and_commit(ready, offsets, group) else { return Ok(Transaction::Committed(count)) };
        tracing::warn!(worker = self.worker, error = %format!("{error:#}"), "transaction failed; aborting it");
        if let Err(abort) = self.producer.abort_transaction(TXN_TIMEOUT) {
            tracing::error!(worker = self.worker, error = %abort, "cannot abort the transaction");
            return Err(self.explain_fatal(error));
        }
        if self.producer.client().fatal_error().is_some() {
            return Err(self.explain_fatal(error));
        }
        // Delivery failures were of the aborted records: the next transaction starts clean.
        self.producer.context().clear();
        Ok(Transaction::Aborted(error))
    }

    /// Adds the producer's fatal error, if it has one, to `error`; when it was fenced, says so
    /// in words an operator can act on.
    fn explain_fatal(&self, error: anyhow::Error) -> anyhow::Error {
        use rdkafka::types::RDKafkaErrorCode::{Fenced, InvalidProducerEpoch, ProducerFenced};
        match self.producer.client().fatal_error() {
            Some((code @ (Fenced | ProducerFenced | InvalidProducerEpoch), reason)) => error.context(format!(
                "fenced: another producer registered the transactional id {:?} ({code}: {reason}); this worker stops, its open \
                 transaction is aborted and the other goes on from the committed offsets. Independent processes in one group \
                 need different transactional_id_prefix values",
                self.transactional_id
            )),
            Some((code, reason)) => error.context(format!("the producer has a fatal error: {code}: {reason}")),
            None => error,
        }
    }

    fn fill_and_commit(
        &self,
        ready: BTreeMap<u64, Vec<Pending>>,
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
    ) -> anyhow::Result<()> {
        for p in ready.into_values().flatten() {
            produce(&self.producer, &p.topic, p.key.as_deref(), &p.value, &p.headers, 0)?;
        }
        if offsets.count() > 0 {
            retry_txn("send_offsets_to_transaction", || self.producer.send_offsets_to_transaction(offsets, group, TXN_TIMEOUT))?;
        }
        retry_txn("commit_transaction", || self.producer.commit_transaction(TXN_TIMEOUT))?;
        self.producer.context().check()
    }

    /// Messages acknowledged so far.
    pub fn delivered(&self) -> u64 {
        self.producer.context().delivered.load(Ordering::Relaxed)
    }
}

/// Produces one record, waiting while librdkafka's queue is full (backpressure, not failure);
/// `opaque` comes back with its delivery report.
pub fn produce<C: ProducerContext + 'static>(
    producer: &ThreadedProducer<C>,
    topic: &str,
    key: Option<&str>,
    value: &str,
    headers: &[(&'static str, String)],
    opaque: C::DeliveryOpaque,
) -> anyhow::Result<()> {
    let mut record = BaseRecord::<str, str, C::DeliveryOpaque>::with_opaque_to(topic, opaque).payload(value);
    if let Some(k) = key {
        record = record.key(k);
    }
    if !headers.is_empty() {
        let h = headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| h.insert(Header { key: k, value: Some(v.as_str()) }));
        record = record.headers(h);
    }
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                // The producer's own thread serves delivery reports; give it room.
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(e).with_context(|| format!("cannot produce to {topic}")),
        }
    }
}

/// Retries a transactional call while librdkafka says a retry can help.
fn retry_txn(what: &str, mut call: impl FnMut() -> Result<(), KafkaError>) -> anyhow::Result<()> {
    for attempt in 1..=TXN_RETRIES {
        match call() {
            Ok(()) => return Ok(()),
            Err(KafkaError::Transaction(e)) if e.is_retriable() && attempt < TXN_RETRIES => {
                tracing::warn!(call = what, attempt, error = %e, "transactional call failed; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e).with_context(|| format!("{what} failed")),
        }
    }
    unreachable!("the last attempt returns")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_counts_as_acknowledged_once_it_and_every_earlier_one_are() {
        let d = DeliveryContext::default();
        assert_eq!(d.acknowledged_below(), u64::MAX, "nothing sent, nothing waits");
        d.sending(3);
        d.sending(3);
        d.sending(5);
        assert_eq!(d.acknowledged_below(), 3);
        // Acknowledgements come in any order across partitions: a later epoch done first
        // does not count while an earlier one waits.
        d.acknowledged(5);
        assert_eq!(d.acknowledged_below(), 3);
        d.acknowledged(3);
        assert_eq!(d.acknowledged_below(), 3, "one record of epoch 3 still waits");
        d.acknowledged(3);
        assert_eq!(d.acknowledged_below(), u64::MAX);
        // A record of an epoch that is not counted (exactly-once) changes nothing.
        d.acknowledged(0);
        assert_eq!(d.acknowledged_below(), u64::MAX);
    }
}
