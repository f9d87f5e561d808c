//! The Kafka input of one worker: a `BaseConsumer` in the pipeline's consumer group, a batch of
//! messages per epoch, and an offset ledger that turns "epochs before F are complete" into
//! offset commits (at-least-once) or transactions (exactly-once).
//!
//! ```text
//!  poll(epoch)  ──► ledger[epoch] = {partition: highest offset + 1}
//!  complete(F)  ──► at-least-once: ready ∪= ledger[e] for e < min(F, A), A = first epoch with
//!                                  an output not yet acknowledged (producer.rs)
//!                   exactly-once:  ready ∪= ledger[e] for e < F
//!                   every commit_interval_ms (and at the end):
//!                     at-least-once: commit ready offsets (the last commit flushes first)
//!                     exactly-once:  one transaction: outputs of epochs < F + ready offsets
//! ```
//!
//! IMPORTANT: offsets of an epoch are committed only after the worker loop reports the epoch
//! complete, i.e. the output probe has passed it, and (at-least-once) after the producer has
//! every output of it and of the epochs before it acknowledged. A crash before that replays the
//! epoch.
//!
//! Rebalances (eager protocol) revoke every partition at once. The revoke callback runs inside
//! `consumer.poll`, on this thread, so it only records the event; `poll` then applies it before
//! taking the next message:
//! - at-least-once: ledger entries of revoked partitions are dropped, never committed by us
//!   (the new owner reads from the last committed offset). Their in-flight records still reach
//!   the output, so records around a rebalance may be written twice.
//! - exactly-once: every uncommitted epoch is rewound: its ledger entries and its waiting outputs
//!   are dropped, and the records already polled into the current batch are thrown away. The
//!   next assignment resumes from the committed offsets, so nothing is written twice.
//!
//! A worker whose input is exhausted (`stop_after_idle_ms`) waits for the epochs it read to
//! complete, commits them and leaves the group ([`EventSource::release`]). It must not just stop
//! polling: a member that joins (another worker of this process that was late for the first
//! assignment, or another process) is assigned partitions only once every member has served the
//! rebalance, and the exhausted worker's process waits for that member to finish — a deadlock
//! until `max.poll.interval.ms`. While waiting it does not serve rebalances (giving partitions up
//! with records still in the graph means their next owner reads them again), unless the wait
//! is long ([`SERVE_AFTER`]: a plugin's retries); a record or a rebalance seen then takes the
//! exhaustion back and the worker reads again.
//!
//! Exactly-once, a transaction that fails but is aborted (offsets refused while the group
//! rebalances, a produce that failed…) rewinds the same way, in-process: every epoch read so far
//! is dropped and each assigned partition is read again from its committed offset. Only a fatal
//! producer error (fenced: another instance owns the transactional id), a failed abort, or
//! transactions that keep failing stop the worker.

use operators::sync::lock;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};

use super::config::{Delivery, KafkaConfig};
use super::health::{KafkaHealth, read_statistics};
use super::producer::{Transaction, WorkerProducer};
use crate::io::{EventSource, Polled, Release, Settled};

/// A partition assignment change, as seen by the rebalance callback.
#[derive(Debug)]
enum Rebalanced {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

/// Records rebalances for the source to apply between messages, and passes librdkafka's
/// statistics to the health report.
pub struct RebalanceContext {
    events: Mutex<Vec<Rebalanced>>,
    /// Whether `events` may hold something: read for every polled record, so that the lock is
    /// taken only after a rebalance (the callback runs on the polling thread, within a poll).
    pending: AtomicBool,
    worker: usize,
    topic: String,
    health: Arc<KafkaHealth>,
}

impl ClientContext for RebalanceContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let (up, lag) = read_statistics(&statistics, &self.topic);
        self.health.statistics(self.worker, up, lag, Instant::now());
    }
}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let event = match rebalance {
            Rebalance::Revoke(tpl) => Rebalanced::Revoked(partitions(tpl)),
            Rebalance::Assign(tpl) => Rebalanced::Assigned(partitions(tpl)),
            Rebalance::Error(e) => {
                tracing::warn!(worker = self.worker, error = %e, "rebalance error");
                return;
            }
        };
        tracing::info!(worker = self.worker, ?event, "rebalance");
        lock(&self.events).push(event);
        self.pending.store(true, Ordering::Release);
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

/// Highest offset + 1 per partition, per epoch, of the records handed to the dataflow.
#[derive(Debug, Default)]
pub struct OffsetLedger {
    by_epoch: BTreeMap<u64, BTreeMap<i32, i64>>,
    ready: BTreeMap<i32, i64>,
}

impl OffsetLedger {
    /// Notes that the record at `offset` of `partition` belongs to `epoch`.
    pub fn record(&mut self, epoch: u64, partition: i32, offset: i64) {
        let next = self.by_epoch.entry(epoch).or_default().entry(partition).or_insert(offset + 1);
        *next = (*next).max(offset + 1);
    }

    /// Moves every epoch before `frontier` into the ready set.
    pub fn complete(&mut self, frontier: u64) {
        let later = self.by_epoch.split_off(&frontier);
        for (partition, next) in std::mem::replace(&mut self.by_epoch, later).into_values().flatten() {
            let ready = self.ready.entry(partition).or_insert(next);
            *ready = (*ready).max(next);
        }
    }

    /// Forgets `revoked` partitions everywhere: their offsets are someone else's to commit now.
    pub fn forget(&mut self, revoked: &[i32]) {
        for offsets in self.by_epoch.values_mut().chain(std::iter::once(&mut self.ready)) {
            offsets.retain(|p, _| !revoked.contains(p));
        }
    }

    /// Forgets everything not yet committed.
    pub fn clear(&mut self) {
        self.by_epoch.clear();
        self.ready.clear();
    }

    /// The ready offsets as a commit list for `topic`.
    pub fn ready_list(&self, topic: &str) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (&p, &next) in &self.ready {
            tpl.add_partition_offset(topic, p, Offset::Offset(next)).expect("a valid offset");
        }
        tpl
    }

    /// Ready offsets, by partition.
    pub fn ready(&self) -> &BTreeMap<i32, i64> {
        &self.ready
    }

    /// Commit done: nothing is ready any more.
    pub fn committed(&mut self) {
        self.ready.clear();
    }

    /// Every epoch recorded is complete (what is ready may still wait for its commit).
    pub fn all_complete(&self) -> bool {
        self.by_epoch.values().all(BTreeMap::is_empty)
    }

    /// Nothing read waits for a commit.
    pub fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.by_epoch.values().all(BTreeMap::is_empty)
    }
}

/// One worker's Kafka input.
pub struct KafkaSource {
    consumer: BaseConsumer<RebalanceContext>,
    producer: Rc<RefCell<WorkerProducer>>,
    topic: String,
    delivery: Delivery,
    ledger: OffsetLedger,
    poll_timeout: Duration,
    commit_interval: Duration,
    stop_after_idle: Option<Duration>,
    last_commit: Instant,
    /// Since when polls found nothing while partitions were assigned (for `stop_after_idle`).
    idle_since: Option<Instant>,
    /// Since when this worker, idle at the end of its own partitions, has waited for partitions
    /// another member holds (reset by a rebalance); see [`Self::rest_of_topic_read`].
    waiting_for_others_since: Option<Instant>,
    /// The longest that wait lasts: the group's session timeout (a member that died is out of
    /// the group by then, and its partitions given to a live one) and the idle time again.
    others_wait: Duration,
    assigned: bool,
    last_error_log: Option<Instant>,
    /// Every epoch below this one has been polled (exactly-once: what a rewind drops).
    polled_below: u64,
    /// Where a partition without a committed offset starts (`auto.offset.reset`).
    no_commit: Offset,
    /// Transactions aborted since the last one that committed.
    aborts_in_a_row: usize,
    worker: usize,
    health: Arc<KafkaHealth>,
    /// Whether `health` knows that something read waits for a commit.
    reported_uncommitted: bool,
    /// A record polled while releasing: the next `poll` hands it on first.
    stashed: Option<(i32, i64, Vec<u8>)>,
    /// When releasing last tried a commit (a failed one is retried once per commit interval).
    release_tried: Option<Instant>,
    /// Since when the input has been exhausted and the worker releasing.
    exhausted_since: Option<Instant>,
    /// The consumer has left the group (released, or dropped).
    left: bool,
    /// Exactly-once: commits and rewinds since the last [`EventSource::take_settled`].
    settled: Vec<Settled>,
}

/// Transactions aborted in a row before the worker gives up: a failure that comes back on
/// every attempt (a record the broker refuses…) must stop the worker, not loop forever.
const MAX_ABORTS_IN_A_ROW: usize = 10;
/// How long an idle check waits for each answer of the broker.
const TIMEOUT: Duration = Duration::from_secs(5);
/// How long a rewind waits for the committed offsets.
const REWIND_TIMEOUT: Duration = Duration::from_secs(10);

impl KafkaSource {
    /// Joins the consumer group and subscribes to the input topic.
    pub fn open(
        config: &KafkaConfig,
        producer: Rc<RefCell<WorkerProducer>>,
        worker: usize,
        health: Arc<KafkaHealth>,
    ) -> anyhow::Result<Self> {
        let context = RebalanceContext {
            events: Mutex::default(),
            pending: AtomicBool::new(false),
            worker,
            topic: config.input_topic().to_string(),
            health: health.clone(),
        };
        let consumer_config = config.consumer_config(worker);
        let no_commit = match consumer_config.get("auto.offset.reset") {
            Some("latest" | "largest" | "end") => Offset::End,
            _ => Offset::Beginning,
        };
        let consumer: BaseConsumer<RebalanceContext> =
            consumer_config.create_with_context(context).context("cannot create the Kafka consumer")?;
        consumer.subscribe(&[config.input_topic()]).with_context(|| format!("cannot subscribe to {}", config.input_topic()))?;
        tracing::info!(worker, topic = config.input_topic(), group = %config.group_id, delivery = ?config.delivery, "kafka source subscribed");
        Ok(Self {
            consumer,
            producer,
            topic: config.input_topic().to_string(),
            delivery: config.delivery,
            ledger: OffsetLedger::default(),
            poll_timeout: Duration::from_millis(config.poll_timeout_ms),
            commit_interval: Duration::from_millis(config.commit_interval_ms),
            stop_after_idle: config.stop_after_idle_ms.map(Duration::from_millis),
            last_commit: Instant::now(),
            idle_since: None,
            waiting_for_others_since: None,
            others_wait: session_timeout(&consumer_config) + config.stop_after_idle_ms.map_or(Duration::ZERO, Duration::from_millis),
            assigned: false,
            last_error_log: None,
            polled_below: 0,
            no_commit,
            aborts_in_a_row: 0,
            worker,
            health,
            reported_uncommitted: false,
            stashed: None,
            release_tried: None,
            exhausted_since: None,
            left: false,
            settled: Vec::new(),
        })
    }

    /// Tells the health report that a commit succeeded.
    fn report_commit(&mut self) {
        let all = self.ledger.is_empty();
        self.health.committed(self.worker, all, Instant::now());
        self.reported_uncommitted = !all;
    }

    /// Tells the health report when nothing waits for a commit any more (after a revoke or a
    /// rewind).
    fn report_if_nothing_uncommitted(&mut self) {
        if self.reported_uncommitted && self.ledger.is_empty() {
            self.health.nothing_uncommitted(self.worker);
            self.reported_uncommitted = false;
        }
    }

    /// Applies the rebalances recorded since the last call; `batch` holds the records already
    /// polled for `epoch`. False when there were none.
    fn apply_rebalances(&mut self, epoch: u64, batch: &mut Polled) -> bool {
        let context = self.consumer.context();
        if !context.pending.swap(false, Ordering::Acquire) {
            return false;
        }
        let events = std::mem::take(&mut *lock(&context.events));
        let any = !events.is_empty();
        for event in events {
            match event {
                Rebalanced::Assigned(assigned) => {
                    tracing::debug!(worker = self.worker, topic = %self.topic, ?assigned, "partitions assigned");
                    self.health.hold(self.worker, &assigned, true);
                    self.assigned = true;
                    self.idle_since = None;
                    self.waiting_for_others_since = None;
                }
                Rebalanced::Revoked(revoked) => {
                    self.health.hold(self.worker, &revoked, false);
                    self.assigned = false;
                    self.idle_since = None;
                    self.revoke(epoch, &revoked, batch);
                }
            }
        }
        any
    }

    fn revoke(&mut self, epoch: u64, revoked: &[i32], batch: &mut Polled) {
        match self.delivery {
            Delivery::AtLeastOnce => self.ledger.forget(revoked),
            Delivery::ExactlyOnce => {
                // Rewind every uncommitted epoch: the next assignment starts at the committed
                // offsets, so all of it will be read again.
                self.ledger.clear();
                self.producer.borrow_mut().discard_below(epoch);
                self.settled.push(Settled::DroppedBelow(epoch));
                if !batch.records.is_empty() {
                    tracing::info!(
                        worker = self.worker,
                        epoch,
                        dropped = batch.records.len(),
                        "rebalance: dropped the records of the current batch"
                    );
                }
                batch.records.clear();
            }
        }
        self.report_if_nothing_uncommitted();
    }

    /// One poll of the consumer (serving its callbacks): a record as (partition, offset,
    /// payload), an error, or nothing within `timeout`.
    fn poll_one(&self, timeout: Duration) -> Option<rdkafka::error::KafkaResult<(i32, i64, Vec<u8>)>> {
        self.consumer.poll(timeout).map(|r| r.map(|m| (m.partition(), m.offset(), m.payload().map(<[u8]>::to_vec).unwrap_or_default())))
    }

    /// Hands a polled record on in `batch` and notes its offset for `epoch`.
    fn take(&mut self, epoch: u64, batch: &mut Polled, partition: i32, offset: i64, payload: Vec<u8>) {
        batch.bytes += payload.len() as u64;
        batch.records.push((offset as u64, payload));
        self.ledger.record(epoch, partition, offset);
        if !self.reported_uncommitted {
            self.health.read(self.worker, Instant::now());
            self.reported_uncommitted = true;
        }
    }

    fn log_consumer_error(&mut self, e: &rdkafka::error::KafkaError) {
        // Errors repeat on every poll while a broker is away: say so every few seconds.
        if self.last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
            tracing::warn!(worker = self.worker, topic = %self.topic, error = %e, "kafka consumer error (librdkafka keeps retrying)");
            self.last_error_log = Some(Instant::now());
        }
    }

    /// `stop_after_idle`: true once polls have found nothing for the idle time while this worker
    /// held its partitions, and every assigned partition is read to its end. A broker that is
    /// away is not idleness: consumer errors and rebalances restart the clock.
    fn idle_long_enough(&mut self, epoch: u64) -> bool {
        let Some(idle) = self.stop_after_idle else { return false };
        if !self.assigned {
            return false;
        }
        let since = *self.idle_since.get_or_insert_with(Instant::now);
        tracing::trace!(worker = self.worker, idle_ms = since.elapsed().as_millis() as u64, "idle");
        if since.elapsed() < idle {
            return false;
        }
        if self.at_end_of_assignment(epoch) && self.rest_of_topic_read() {
            return true;
        }
        self.idle_since = None;
        false
    }

    /// Whether every partition of the input topic that no worker of this process holds is read
    /// to its end by the group (committed at its end). One that another member holds and has not
    /// finished is not this process's to skip: that member may be a process still reading, or
    /// one that died and whose session has not expired yet (then the group gives the partition
    /// to a live member once it does). Seen without this check in the kill -9 test: the members
    /// of a killed run were given partitions in the same rebalance as the restarted run's
    /// workers, which read their own, went idle and ended before those sessions expired,
    /// leaving two partitions unread.
    ///
    /// A member that holds a partition and is alive but never finishes it (or one that commits
    /// the offset after its last record where a transaction marker follows — pluginflow itself
    /// commits the end, see [`Self::at_end_of_assignment`]) would keep the run going for ever: the wait
    /// lasts at most the session timeout and the idle time again (from the first look, until a
    /// rebalance or a record), then the run ends with a warning naming the partitions (they
    /// stay uncommitted for whoever reads them next).
    fn rest_of_topic_read(&mut self) -> bool {
        let unread = match self.unread_elsewhere() {
            Ok(unread) if unread.is_empty() => {
                self.waiting_for_others_since = None;
                return true;
            }
            Ok(unread) => format!("{unread:?}"),
            Err(why) => format!("unknown ({why})"),
        };
        let since = *self.waiting_for_others_since.get_or_insert_with(Instant::now);
        if since.elapsed() < self.others_wait {
            return false;
        }
        tracing::warn!(worker = self.worker, topic = %self.topic, partitions = %unread, waited_ms = since.elapsed().as_millis() as u64,
            "idle: partitions another member holds are still not read to their end; ending without them (they stay uncommitted for whoever reads them next)");
        true
    }

    /// The partitions of the input topic that no worker of this process holds and whose
    /// committed offset is short of their end; an error when that cannot be told.
    fn unread_elsewhere(&self) -> Result<Vec<i32>, String> {
        let here = self.health.held_here();
        let metadata = self.consumer.fetch_metadata(Some(&self.topic), TIMEOUT).map_err(|e| format!("no metadata: {e}"))?;
        let topic = metadata.topics().iter().find(|t| t.name() == self.topic).ok_or("no such topic")?;
        let others: Vec<i32> = topic.partitions().iter().map(|p| p.id()).filter(|p| !here.contains(p)).collect();
        if others.is_empty() {
            return Ok(Vec::new());
        }
        let ends = self.list_offsets(&others, Offset::End)?;
        let group = self.group_positions(&others, &ends)?;
        let mut unread = Vec::new();
        for (p, at) in group {
            let end = *ends.get(&p).ok_or_else(|| format!("no end offset for partition {p}"))?;
            if at < end {
                tracing::info!(
                    worker = self.worker,
                    partition = p,
                    committed = at,
                    end,
                    "idle, but a partition no worker here holds is not read to its end: waiting for the group to finish it"
                );
                unread.push(p);
            }
        }
        Ok(unread)
    }

    /// Whether every assigned partition is read to its end (its last stable offset: the end,
    /// for input not written in transactions). When it is, each end is noted as read in
    /// `epoch` (which has no records): once that epoch is complete, so is everything polled
    /// before it, and the partition is committed at its very end, past any transaction markers
    /// after its last record (which no record carries the offset of). Another member waiting
    /// for the group to finish the topic then sees it finished: were the end committed only
    /// when this worker leaves, two idle processes would each wait for the other. One request
    /// for the ends, whatever the number of partitions.
    fn at_end_of_assignment(&mut self, epoch: u64) -> bool {
        let positions = match self.consumer.position() {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(worker = self.worker, error = %e, "idle: no positions");
                return false;
            }
        };
        let parts: Vec<i32> = positions.elements().iter().map(|e| e.partition()).collect();
        let ends = match self.list_offsets(&parts, Offset::End) {
            Ok(ends) => ends,
            Err(why) => {
                tracing::debug!(worker = self.worker, error = %why, "idle: no end offsets");
                return false;
            }
        };
        // A partition that returned nothing since its assignment has no position yet: it starts
        // where the group stands on it.
        let unplaced: Vec<i32> =
            positions.elements().iter().filter(|e| !matches!(e.offset(), Offset::Offset(_))).map(|e| e.partition()).collect();
        let group = if unplaced.is_empty() {
            BTreeMap::new()
        } else {
            match self.group_positions(&unplaced, &ends) {
                Ok(group) => group,
                Err(why) => {
                    tracing::debug!(worker = self.worker, error = %why, "idle: no committed offsets");
                    return false;
                }
            }
        };
        let mut reached = Vec::new();
        for e in positions.elements() {
            let p = e.partition();
            let Some(&end) = ends.get(&p) else { return false };
            let position = match e.offset() {
                Offset::Offset(pos) => pos,
                _ => group[&p],
            };
            tracing::debug!(worker = self.worker, partition = p, position, end, "idle: at the end?");
            if position < end {
                return false;
            }
            reached.push((p, end));
        }
        for (p, end) in reached {
            if end > 0 {
                self.ledger.record(epoch, p, end - 1);
            }
        }
        true
    }

    /// Where the group stands on each of `partitions`, whose `ends` are known: its committed
    /// offset, or without one where a reader starts (`auto.offset.reset`: the beginning, or the
    /// end with `latest`). One request for the commits, and one for the beginnings when some
    /// partition has no commit.
    fn group_positions(&self, partitions: &[i32], ends: &BTreeMap<i32, i64>) -> Result<BTreeMap<i32, i64>, String> {
        let mut group = self.committed_offsets(partitions)?;
        let uncommitted: Vec<i32> = partitions.iter().copied().filter(|p| !group.contains_key(p)).collect();
        if uncommitted.is_empty() {
            return Ok(group);
        }
        let starts = if matches!(self.no_commit, Offset::End) { ends.clone() } else { self.list_offsets(&uncommitted, Offset::Beginning)? };
        for p in uncommitted {
            group.insert(p, starts.get(&p).copied().unwrap_or(0));
        }
        Ok(group)
    }

    /// The group's committed offsets of `partitions` (those without one left out), in one
    /// request.
    fn committed_offsets(&self, partitions: &[i32]) -> Result<BTreeMap<i32, i64>, String> {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition(&self.topic, *p);
        }
        let committed = self.consumer.committed_offsets(tpl, TIMEOUT).map_err(|e| format!("no committed offsets: {e}"))?;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect())
    }

    /// The first (`Offset::Beginning`) or end (`Offset::End`: the last stable offset, as this
    /// `read_committed` consumer sees it) offset of each of `partitions`, in one request per
    /// broker — not one round trip per partition, which waited behind the consumer's own fetch
    /// (about half a second each: half a minute for 64 partitions).
    fn list_offsets(&self, partitions: &[i32], which: Offset) -> Result<BTreeMap<i32, i64>, String> {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition_offset(&self.topic, *p, which).map_err(|e| e.to_string())?;
        }
        let listed = self.consumer.offsets_for_times(tpl, TIMEOUT).map_err(|e| format!("cannot list offsets: {e}"))?;
        listed
            .elements()
            .iter()
            .map(|e| match (e.error(), e.offset()) {
                (Ok(()), Offset::Offset(o)) => Ok((e.partition(), o)),
                (Err(err), _) => Err(format!("partition {}: {err}", e.partition())),
                (Ok(()), other) => Err(format!("partition {}: no offset ({other:?})", e.partition())),
            })
            .collect()
    }

    /// Moves the epochs before `frontier` whose outputs are all acknowledged (at-least-once;
    /// exactly-once: all of them) into the ledger's ready set.
    ///
    /// Fails once a delivery failed for good: its epoch never counts as acknowledged, so
    /// nothing after it would be committed and an exhausted input would wait for it for ever.
    fn advance(&mut self, frontier: u64) -> anyhow::Result<()> {
        let producer = self.producer.borrow();
        producer.check()?;
        self.ledger.complete(frontier.min(producer.acknowledged_below()));
        Ok(())
    }

    /// Commits what is complete (everything below `frontier` for the last commit).
    fn commit(&mut self, frontier: u64) -> anyhow::Result<()> {
        match self.delivery {
            Delivery::AtLeastOnce => self.commit_offsets(frontier, frontier == u64::MAX),
            Delivery::ExactlyOnce => self.commit_transaction(frontier, frontier == u64::MAX).map(|_| ()),
        }
    }

    /// Outputs first: an offset may only be committed once the records of its epoch and of
    /// every epoch before it are acknowledged ([`Self::advance`]). A periodic commit takes what
    /// is acknowledged by then and does not wait for the rest: waiting (a flush) stopped the
    /// worker for broker round trips while it could have read and sent the next epochs —
    /// measured as the passthrough's largest wait. The `last` one (the end of the run, or of a
    /// released input) flushes first, so that everything below `frontier` is committed.
    fn commit_offsets(&mut self, frontier: u64, last: bool) -> anyhow::Result<()> {
        if last {
            // Every record sent so far is acknowledged once the flush returns without a
            // failure (it checks for them): everything below the frontier is, whatever the
            // counts say.
            self.producer.borrow_mut().flush()?;
            self.ledger.complete(frontier);
        } else {
            self.advance(frontier)?;
        }
        if self.ledger.ready().is_empty() {
            return Ok(());
        }
        let tpl = self.ledger.ready_list(&self.topic);
        match self.consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => {
                tracing::debug!(worker = self.worker, topic = %self.topic, offsets = ?self.ledger.ready(), "offsets committed");
                self.ledger.committed();
                self.report_commit();
            }
            // Not fatal: the offsets stay ready and go with the next commit; a crash meanwhile
            // replays them (at-least-once).
            Err(e) => tracing::warn!(worker = self.worker, topic = %self.topic, error = %e, "offset commit failed; will retry"),
        }
        Ok(())
    }

    /// Commits the outputs of epochs before `frontier` with the ready offsets; false when the
    /// transaction was aborted and every epoch read so far rewound (to be read again). Unless it
    /// was the `last` one: then nothing would read its epochs again, and the run fails (a
    /// restart reads them).
    fn commit_transaction(&mut self, frontier: u64, last: bool) -> anyhow::Result<bool> {
        let tpl = self.ledger.ready_list(&self.topic);
        let group = self.consumer.group_metadata().context("the consumer has no group metadata")?;
        let outcome = self.producer.borrow_mut().commit_transaction(frontier, &tpl, &group)?;
        match outcome {
            Transaction::Committed(written) => {
                self.settled.push(Settled::Below(frontier));
                // An empty round (nothing complete) is no commit: the health report must keep
                // seeing offsets wait when the frontier does not move.
                let committed = written > 0 || tpl.count() > 0;
                if committed {
                    tracing::debug!(worker = self.worker, topic = %self.topic, written, offsets = ?self.ledger.ready(), "transaction committed");
                }
                self.ledger.committed();
                if committed {
                    self.report_commit();
                }
                self.aborts_in_a_row = 0;
                Ok(true)
            }
            // No poll follows that could read the epochs again.
            Transaction::Aborted(e) if last => Err(e.context("the last transaction of this worker's input was aborted")),
            Transaction::Aborted(e) if self.aborts_in_a_row + 1 >= MAX_ABORTS_IN_A_ROW => {
                Err(e.context(format!("{MAX_ABORTS_IN_A_ROW} transactions in a row were aborted")))
            }
            Transaction::Aborted(e) => {
                self.aborts_in_a_row += 1;
                self.rewind(&e, frontier).map(|()| false)
            }
        }
    }

    /// Exactly-once, after an aborted transaction: its outputs are gone and its offsets were not
    /// committed, so every epoch read so far is read again, as after a revoke. Their ledger
    /// entries and waiting outputs are dropped (outputs still in the dataflow are dropped when
    /// written), and each assigned partition goes back to its committed offset.
    fn rewind(&mut self, error: &anyhow::Error, frontier: u64) -> anyhow::Result<()> {
        self.ledger.clear();
        self.report_if_nothing_uncommitted();
        self.producer.borrow_mut().discard_below(self.polled_below);
        // The aborted transaction held the outputs of every epoch below `frontier`, those the
        // loop went on with after the input ran dry (no poll) included: what jobs and journaled
        // captures put there is gone too.
        self.settled.push(Settled::DroppedBelow(self.polled_below.max(frontier)));
        self.idle_since = None;
        let committed = self.consumer.committed(REWIND_TIMEOUT).context("rewind: cannot read the committed offsets")?;
        let mut seek = TopicPartitionList::new();
        let mut seeks = BTreeMap::new();
        for e in committed.elements() {
            let offset = match e.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => self.no_commit,
            };
            seek.add_partition_offset(e.topic(), e.partition(), offset).context("rewind: a seek offset")?;
            seeks.insert(e.partition(), offset);
        }
        for e in self.consumer.seek_partitions(seek, REWIND_TIMEOUT).context("rewind: cannot seek")?.elements() {
            e.error().with_context(|| format!("rewind: cannot seek {} [{}]", e.topic(), e.partition()))?;
        }
        tracing::warn!(worker = self.worker, error = %format!("{error:#}"), epochs_below = self.polled_below, ?seeks,
            "transaction aborted: rewound every epoch read so far to the committed offsets");
        Ok(())
    }
}

impl EventSource for KafkaSource {
    fn name(&self) -> String {
        format!("kafka:{}", self.topic)
    }

    fn poll(&mut self, epoch: u64, max: usize) -> anyhow::Result<Polled> {
        self.polled_below = self.polled_below.max(epoch + 1);
        let mut batch = Polled::default();
        let mut timeout = self.poll_timeout;
        if let Some((partition, offset, payload)) = self.stashed.take() {
            self.take(epoch, &mut batch, partition, offset, payload);
            timeout = Duration::ZERO;
        }
        while batch.records.len() < max {
            let polled = self.poll_one(timeout);
            // Callbacks served during that poll happened before the message it returned.
            self.apply_rebalances(epoch, &mut batch);
            match polled {
                None => break,
                Some(Err(e)) => {
                    self.log_consumer_error(&e);
                    self.idle_since = None;
                    break;
                }
                Some(Ok((partition, offset, payload))) => self.take(epoch, &mut batch, partition, offset, payload),
            }
            timeout = Duration::ZERO;
        }
        if batch.records.is_empty() {
            batch.exhausted = self.idle_long_enough(epoch);
        } else {
            self.idle_since = None;
            self.waiting_for_others_since = None;
        }
        Ok(batch)
    }

    fn complete(&mut self, frontier: u64) -> anyhow::Result<()> {
        self.advance(frontier)?;
        if frontier != u64::MAX && self.last_commit.elapsed() < self.commit_interval {
            return Ok(());
        }
        self.commit(frontier)?;
        self.last_commit = Instant::now();
        Ok(())
    }

    fn take_settled(&mut self, frontier: u64) -> Vec<Settled> {
        match self.delivery {
            // Outputs are settled once the broker acknowledged them, committed or not.
            Delivery::AtLeastOnce => vec![Settled::Below(frontier.min(self.producer.borrow().acknowledged_below()))],
            // Once their transaction committed.
            Delivery::ExactlyOnce => std::mem::take(&mut self.settled),
        }
    }

    fn release(&mut self, epoch: u64, frontier: u64) -> anyhow::Result<Release> {
        if self.left {
            return Ok(Release::Done);
        }
        self.advance(frontier)?;
        let since = *self.exhausted_since.get_or_insert_with(Instant::now);
        if !self.ledger.all_complete() {
            // Not polling holds up a rebalance (a member joining waits for this worker), but
            // serving one would give up partitions whose records are still in the graph: read
            // again by their next owner. Only a long wait (a plugin's retries) is worth that.
            if since.elapsed() < SERVE_AFTER {
                return Ok(Release::Waiting);
            }
            match self.poll_one(Duration::ZERO) {
                Some(Ok(record)) => self.stashed = Some(record),
                Some(Err(e)) => self.log_consumer_error(&e),
                None => {}
            }
            // Nothing was polled for `epoch`: a revoke has no current batch to drop.
            if self.apply_rebalances(epoch, &mut Polled::default()) || self.stashed.is_some() {
                self.exhausted_since = None;
                return Ok(Release::Resume);
            }
            return Ok(Release::Waiting);
        }
        if self.release_tried.is_some_and(|t| t.elapsed() < self.commit_interval) {
            return Ok(Release::Waiting);
        }
        self.release_tried = Some(Instant::now());
        match self.delivery {
            // A failed commit keeps its offsets ready: try again rather than leave them to the
            // next owner to read twice.
            Delivery::AtLeastOnce => {
                self.commit_offsets(frontier, true)?;
                if !self.ledger.is_empty() {
                    return Ok(Release::Waiting);
                }
            }
            // Aborted: rewound to the committed offsets, to be read again.
            Delivery::ExactlyOnce => {
                if !self.commit_transaction(frontier, false)? {
                    self.exhausted_since = None;
                    return Ok(Release::Resume);
                }
            }
        }
        self.last_commit = Instant::now();
        tracing::info!(worker = self.worker, topic = %self.topic, "input exhausted and committed: leaving the consumer group");
        self.leave();
        Ok(Release::Done)
    }
}

/// The consumer's `session.timeout.ms` (librdkafka's default, 45 s, when not set).
fn session_timeout(config: &rdkafka::ClientConfig) -> Duration {
    Duration::from_millis(config.get("session.timeout.ms").and_then(|v| v.trim().parse().ok()).unwrap_or(45_000))
}

/// How long an exhausted worker waits for its epochs to complete before it serves its consumer
/// again (see [`EventSource::release`]).
const SERVE_AFTER: Duration = Duration::from_secs(10);

/// How long closing waits for the group to take the partitions back.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(10);

impl KafkaSource {
    /// Leaves the consumer group: unsubscribes and serves the revoke in ordinary polls. Records
    /// polled meanwhile are not processed and not committed (the next owner reads them), and
    /// the revoke is not applied: what it would drop is committed or belongs to later epochs.
    fn leave(&mut self) {
        if std::mem::replace(&mut self.left, true) {
            return;
        }
        self.consumer.unsubscribe();
        let deadline = Instant::now() + LEAVE_TIMEOUT;
        while Instant::now() < deadline {
            let _ = self.consumer.poll(Duration::from_millis(100));
            if self.consumer.assignment().map(|a| a.count() == 0).unwrap_or(true) {
                break;
            }
        }
        lock(&self.consumer.context().events).clear();
        tracing::debug!(worker = self.worker, topic = %self.topic, "left the consumer group");
        // A worker that has left reports nothing any more: its last report must not make
        // `/healthz` fail while the other workers go on.
        self.health.forget(self.worker);
    }
}

impl Drop for KafkaSource {
    /// Leaves the group before librdkafka's own close: dropping a `BaseConsumer` that still
    /// holds an assignment runs the revoke callback inside `rd_kafka_consumer_close`, where its
    /// `rd_kafka_assign(NULL)` was seen to block forever. Leaving first, in ordinary polls,
    /// leaves nothing for the close to do.
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_commits_only_complete_epochs_and_keeps_the_highest_offset() {
        let mut l = OffsetLedger::default();
        l.record(0, 0, 10);
        l.record(0, 0, 12);
        l.record(0, 1, 3);
        l.record(1, 0, 13);
        l.record(2, 1, 4);
        l.complete(1);
        assert_eq!(l.ready(), &BTreeMap::from([(0, 13), (1, 4)]));
        l.complete(2);
        assert_eq!(l.ready(), &BTreeMap::from([(0, 14), (1, 4)]));
        l.committed();
        assert!(l.ready().is_empty());
        l.complete(u64::MAX);
        assert_eq!(l.ready(), &BTreeMap::from([(1, 5)]));
    }

    #[test]
    fn revoked_partitions_are_never_committed() {
        let mut l = OffsetLedger::default();
        l.record(0, 0, 1);
        l.record(0, 1, 1);
        l.complete(1);
        l.record(1, 1, 2);
        l.record(1, 2, 7);
        l.forget(&[1]);
        l.complete(u64::MAX);
        assert_eq!(l.ready(), &BTreeMap::from([(0, 2), (2, 8)]));
    }
}
