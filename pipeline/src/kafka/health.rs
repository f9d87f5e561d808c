//! What the Kafka workers tell the HTTP endpoint: consumer lag per partition, when offsets were
//! last committed, whether a broker is reachable. librdkafka's statistics (every
//! [`STATS_INTERVAL_MS`]) give the lag and the brokers' states; the source records commits and
//! the oldest offset it read but has not committed yet.

use operators::sync::lock;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::Statistics;

/// librdkafka's `statistics.interval.ms` for the consumers (reserved: the configuration cannot
/// change it).
pub const STATS_INTERVAL_MS: u64 = 1000;

/// One worker's consumer, as last reported.
#[derive(Clone, Debug, Default)]
pub struct WorkerHealth {
    /// Messages left to read on each assigned partition, from the last statistics.
    pub lag: BTreeMap<i32, i64>,
    /// Since when no broker has been up (`None`: one is, or no statistics yet).
    pub unreachable_since: Option<Instant>,
    /// When the last statistics arrived. They come every second while the worker polls its
    /// consumer; none for longer means the worker is blocked (a commit or flush waiting for a
    /// broker that is away, a plugin call running to its deadline).
    pub last_report: Option<Instant>,
    /// The last successful commit (offsets or transaction).
    pub last_commit: Option<Instant>,
    /// Since when some offset read has waited for a commit (`None`: everything read is
    /// committed).
    pub uncommitted_since: Option<Instant>,
}

/// Every Kafka worker of this process.
#[derive(Debug, Default)]
pub struct KafkaHealth {
    workers: Mutex<BTreeMap<usize, WorkerHealth>>,
    /// The partitions each worker of this process holds now (a worker that is idle asks which
    /// partitions someone else must finish: see `KafkaSource`'s idle check).
    held: Mutex<BTreeMap<usize, BTreeSet<i32>>>,
}

/// Why `/healthz` fails (defaults: `[http]`'s).
#[derive(Clone, Copy, Debug)]
pub struct HealthLimits {
    /// No broker reachable for longer than this.
    pub broker_unreachable: Duration,
    /// Offsets read and not committed for longer than this.
    pub commit_stall: Duration,
}

impl Default for HealthLimits {
    fn default() -> Self {
        Self { broker_unreachable: Duration::from_secs(30), commit_stall: Duration::from_secs(120) }
    }
}

impl KafkaHealth {
    fn update(&self, worker: usize, f: impl FnOnce(&mut WorkerHealth)) {
        f(lock(&self.workers).entry(worker).or_default());
    }

    /// Takes what librdkafka's statistics of `worker`'s consumer say (see [`read_statistics`]).
    pub fn statistics(&self, worker: usize, up: bool, lag: BTreeMap<i32, i64>, now: Instant) {
        self.update(worker, |w| {
            w.last_report = Some(now);
            w.lag = lag;
            w.unreachable_since = if up { None } else { w.unreachable_since.or(Some(now)) };
        });
    }

    /// `worker` read an offset it has not committed yet.
    pub fn read(&self, worker: usize, now: Instant) {
        self.update(worker, |w| w.uncommitted_since = w.uncommitted_since.or(Some(now)));
    }

    /// `worker` committed; `all` when nothing it read waits for a commit any more. Otherwise
    /// what waits was read after the offsets just committed: its clock starts now (under a
    /// steady flow something always waits, and that is not a stall).
    pub fn committed(&self, worker: usize, all: bool, now: Instant) {
        self.update(worker, |w| {
            w.last_commit = Some(now);
            w.uncommitted_since = if all { None } else { Some(now) };
        });
    }

    /// `worker` has nothing uncommitted (its partitions were revoked or rewound).
    pub fn nothing_uncommitted(&self, worker: usize) {
        self.update(worker, |w| w.uncommitted_since = None);
    }

    /// `worker` is gone (its source was dropped): its report goes too.
    pub fn forget(&self, worker: usize) {
        lock(&self.workers).remove(&worker);
        lock(&self.held).remove(&worker);
    }

    /// `worker` was given `partitions` (`holds`) or gave them up.
    pub fn hold(&self, worker: usize, partitions: &[i32], holds: bool) {
        let mut held = lock(&self.held);
        let mine = held.entry(worker).or_default();
        for p in partitions {
            if holds {
                mine.insert(*p);
            } else {
                mine.remove(p);
            }
        }
    }

    /// The partitions some worker of this process holds.
    pub fn held_here(&self) -> BTreeSet<i32> {
        lock(&self.held).values().flatten().copied().collect()
    }

    /// Every worker's report.
    pub fn snapshot(&self) -> BTreeMap<usize, WorkerHealth> {
        lock(&self.workers).clone()
    }

    /// The problems `/healthz` reports at `now`, one sentence each.
    pub fn problems(&self, limits: &HealthLimits, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        for (worker, w) in self.snapshot() {
            let silent = w.last_report.map(|t| now.saturating_duration_since(t)).filter(|s| *s > limits.broker_unreachable);
            if let Some(silent) = silent {
                out.push(format!(
                    "worker {worker}: no statistics from its Kafka client for {} s (a broker unreachable, or the worker blocked)",
                    silent.as_secs()
                ));
            } else if let Some(since) = w.unreachable_since {
                let away = now.saturating_duration_since(since);
                if away > limits.broker_unreachable {
                    out.push(format!("worker {worker}: no Kafka broker reachable for {} s", away.as_secs()));
                }
            }
            if let Some(since) = w.uncommitted_since {
                let waiting = now.saturating_duration_since(since);
                if waiting > limits.commit_stall {
                    out.push(format!("worker {worker}: offsets read {} s ago are not committed yet", waiting.as_secs()));
                }
            }
        }
        out
    }
}

/// From librdkafka's statistics of a consumer of `topic`: whether any broker is up, and for each
/// partition assigned to it, the messages left to read: from the read position (or, before the
/// first message, the committed offset) to the last stable offset (the consumer reads
/// committed records only), where both are known.
pub fn read_statistics(stats: &Statistics, topic: &str) -> (bool, BTreeMap<i32, i64>) {
    // Bootstrap entries have node id -1; the brokers learnt from metadata have their own.
    let up = stats.brokers.values().any(|b| b.nodeid >= 0 && b.state == "UP");
    let lag = stats
        .topics
        .get(topic)
        .map(|t| {
            t.partitions
                .iter()
                .filter(|(p, info)| **p >= 0 && info.desired)
                .filter_map(|(p, info)| {
                    let end = if info.ls_offset >= 0 { info.ls_offset } else { info.hi_offset };
                    let at = if info.app_offset >= 0 { info.app_offset } else { info.committed_offset };
                    (end >= 0 && at >= 0).then(|| (*p, (end - at).max(0)))
                })
                .collect()
        })
        .unwrap_or_default();
    (up, lag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_away_longer_than_the_limit_is_a_problem() {
        let health = KafkaHealth::default();
        let t0 = Instant::now();
        let limits = HealthLimits { broker_unreachable: Duration::from_secs(30), commit_stall: Duration::from_secs(60) };
        health.statistics(0, true, BTreeMap::from([(0, 42)]), t0);
        let w = &health.snapshot()[&0];
        assert_eq!(w.lag, BTreeMap::from([(0, 42)]));
        assert!(w.unreachable_since.is_none());

        health.statistics(0, false, BTreeMap::new(), t0 + Duration::from_secs(1));
        health.statistics(0, false, BTreeMap::new(), t0 + Duration::from_secs(2));
        assert_eq!(health.snapshot()[&0].unreachable_since, Some(t0 + Duration::from_secs(1)), "the outage began at the first report");
        assert!(health.problems(&limits, t0 + Duration::from_secs(31)).is_empty(), "30 s away is the limit");
        let problems = health.problems(&limits, t0 + Duration::from_secs(32));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("no Kafka broker reachable for 31 s"), "{problems:?}");
        health.statistics(0, true, BTreeMap::new(), t0 + Duration::from_secs(33));
        assert!(health.problems(&limits, t0 + Duration::from_secs(63)).is_empty());
        // A worker whose client stops reporting (blocked on a broker that is gone) is a
        // problem too.
        let problems = health.problems(&limits, t0 + Duration::from_secs(64));
        assert!(problems.len() == 1 && problems[0].contains("worker 0: no statistics from its Kafka client for 31 s"), "{problems:?}");
    }

    #[test]
    fn offsets_waiting_too_long_for_a_commit_are_a_stall() {
        let health = KafkaHealth::default();
        let t0 = Instant::now();
        let limits = HealthLimits { broker_unreachable: Duration::from_secs(30), commit_stall: Duration::from_secs(60) };
        health.read(1, t0);
        health.read(1, t0 + Duration::from_secs(50));
        assert!(health.problems(&limits, t0 + Duration::from_secs(60)).is_empty(), "60 s is the limit");
        let problems = health.problems(&limits, t0 + Duration::from_secs(61));
        assert!(problems.len() == 1 && problems[0].contains("worker 1: offsets read 61 s ago"), "{problems:?}");
        // A commit that leaves later offsets waiting restarts the clock: a steady flow is healthy.
        health.committed(1, false, t0 + Duration::from_secs(62));
        assert!(health.problems(&limits, t0 + Duration::from_secs(100)).is_empty());
        assert_eq!(health.problems(&limits, t0 + Duration::from_secs(123)).len(), 1, "no commit since 62 s");
        health.committed(1, true, t0 + Duration::from_secs(124));
        assert!(health.problems(&limits, t0 + Duration::from_secs(500)).is_empty(), "nothing waits: an idle input is healthy");
        assert_eq!(health.snapshot()[&1].last_commit, Some(t0 + Duration::from_secs(124)));
    }
}
