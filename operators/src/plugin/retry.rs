//! One retry state machine for every plugin call PostHog retried — `onEvent`, `exportEvents`,
//! `setupPlugin` and jobs — and one durable shape for the calls that wait in a queue.
//!
//! ```text
//!  attempt n ──ok──────────────────────────────► Done(Succeeded | SucceededOnRetry)
//!      │ RetryError / timeout, n ≤ max_retries
//!      ├──────────────────────────────────────► Retry { due = now + base × 2^(n-1) } ─► attempt n+1
//!      │ any other error, or n > max_retries
//!      └──────────────────────────────────────► GiveUp (a dead letter; setupPlugin: disabled)
//! ```
//!
//! Where a retry waits differs with the hook: `onEvent`/`exportEvents` retries hold their epoch
//! in the dataflow (`crate::dataflow::deferred`) and sit in the durable queue
//! [`crate::plugin::deferred::RETRY_QUEUE`]; jobs sit in the job queue
//! ([`crate::plugin::worker::JOB_QUEUE`]); a `setupPlugin` retry is kept with its instance. The
//! decision is this module's, for all four.

use std::time::Duration;

use serde_json::Value;

use super::error::{Hook, PluginError};
use crate::event::{DeadLetter, PluginFailure};

/// How often and how long to retry a hook: `max_retries` retries after the first attempt,
/// waiting `base`, `2 × base`, `4 × base`, ...
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Wait before the first retry.
    pub base: Duration,
}

/// What follows an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// It succeeded.
    Done(Outcome),
    /// Try again at `due_ms` (on the worker's clock), after `wait`.
    Retry {
        /// When.
        due_ms: u64,
        /// How long from now.
        wait: Duration,
    },
    /// Failed for good: a plain error, or a retriable one after the last retry.
    GiveUp,
}

impl RetryPolicy {
    /// Wait before retry number `retry` (1-based).
    pub fn delay(&self, retry: u32) -> Duration {
        self.base * 2u32.saturating_pow(retry.saturating_sub(1))
    }

    /// What follows attempt number `attempt` (1-based) that ended with `result`, at `now_ms`.
    pub fn next(&self, attempt: u32, result: Result<(), &PluginError>, now_ms: u64) -> Next {
        match result {
            Ok(()) if attempt <= 1 => Next::Done(Outcome::Succeeded),
            Ok(()) => Next::Done(Outcome::SucceededOnRetry),
            Err(e) if e.kind.is_retriable() && attempt <= self.max_retries => {
                let wait = self.delay(attempt);
                Next::Retry { due_ms: now_ms.saturating_add(millis(wait)), wait }
            }
            Err(_) => Next::GiveUp,
        }
    }

    /// PostHog's documented `onEvent` policy: 5 retries after 5, 10, 20, 40 and 80 s.
    pub fn on_event() -> Self {
        Self { max_retries: 5, base: Duration::from_secs(5) }
    }

    /// PostHog's `exportEvents` policy: 3 retries after 6, 12 and 24 s.
    pub fn export_events() -> Self {
        Self { max_retries: 3, base: Duration::from_secs(6) }
    }

    /// PostHog's documented `setupPlugin` policy: 5 retries after 5, 10, 20, 40 and 80 s.
    pub fn setup() -> Self {
        Self { max_retries: 5, base: Duration::from_secs(5) }
    }

    /// Jobs retry like `onEvent`.
    pub fn job() -> Self {
        Self::on_event()
    }
}

/// A duration in whole milliseconds (saturating: `Duration::MAX` is "never").
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How a hook call ended, for app metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// On the first attempt.
    Succeeded,
    /// After one or more retries.
    SucceededOnRetry,
    /// For good (after the last retry, or at once for a non-retriable error).
    Failed,
}

impl Outcome {
    /// The metric's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::SucceededOnRetry => "succeeded_on_retry",
            Outcome::Failed => "failed",
        }
    }
}

/// A call waiting in a durable queue: a retry of `onEvent`/`exportEvents`, or a job (its first
/// attempt or a retry). One JSON shape for both queues; entries written before the shape was
/// shared read as well (a job had no `hook`, a retry no `hops`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QueuedCall {
    /// Configuration id.
    pub config_id: String,
    /// Team.
    pub team: i64,
    /// `onEvent`, `exportEvents` or `job`.
    #[serde(default = "job_hook")]
    pub hook: String,
    /// Attempts made so far.
    #[serde(default)]
    pub attempts: u32,
    /// Capture hops of the call that queued it (what it captures is one hop deeper).
    #[serde(default)]
    pub hops: u32,
    /// `onEvent`: its event; `exportEvents`: the batch (each a `ProcessedPluginEvent` JSON).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    /// Where each of `events` was in the input (none in retries queued before they were kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positions: Option<Vec<u64>>,
    /// A job's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A job's payload, as JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
}

fn job_hook() -> String {
    "job".into()
}

impl QueuedCall {
    /// Reads a queue entry; `None` when it is not one (it is dead-lettered where taken).
    pub fn read(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

    /// The entry's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a queued call serialises")
    }
}

/// The team of a queued call (`None` when its entry cannot be read: it is handled where taken,
/// and dead-lettered there).
pub fn queued_team(bytes: &[u8]) -> Option<i64> {
    serde_json::from_slice::<Value>(bytes).ok()?.get("team")?.as_i64()
}

/// A call that failed for good.
#[derive(Clone, Debug, PartialEq)]
pub struct Exhausted {
    /// The last error.
    pub error: PluginError,
    /// Attempts made.
    pub attempts: u32,
    /// The event (or batch, as a JSON array) that could not be handled.
    pub payload: String,
    /// Earliest epoch of the task.
    pub epoch: u64,
    /// Where each event of the payload was in the input, in order (empty when it came from no
    /// input line: a job).
    pub positions: Vec<u64>,
    /// The worker that read each event of the payload, in order (empty when it came from no
    /// input line, or from a recovered retry: written where it ran).
    pub readers: Vec<u32>,
}

/// A dead letter of `onEvent`/`exportEvents` work, on its way back to the worker that read its
/// event (its dead letter is written there, with that worker's input offsets).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReturnedLetter {
    /// The worker that read the event.
    pub reader: u32,
    /// The letter.
    pub letter: DeadLetter,
}

impl Exhausted {
    /// The dead letters of work that failed for good: one per event (an export batch is split),
    /// the plugin, configuration, hook, attempts and last error in `failure`.
    pub fn dead_letters(self) -> Vec<DeadLetter> {
        let failure = PluginFailure {
            plugin: self.error.plugin.clone(),
            config_id: self.error.config_id.clone(),
            hook: self.error.hook.as_str().to_string(),
            attempts: self.attempts,
            error: format!("{}: {}", self.error.name, self.error.message),
        };
        let reason = self.reason();
        let letter = |raw: String, position: u64| DeadLetter {
            source: format!("plugin:{}", failure.config_id),
            position,
            reason: reason.clone(),
            raw,
            raw_base64: None,
            failure: Some(failure.clone()),
        };
        let position = |i: usize| self.positions.get(i).copied().unwrap_or(0);
        // The batch's events as written (a `Value` would refuse a lone surrogate escape and make
        // the whole batch one letter).
        match (self.error.hook, serde_json::from_str::<Vec<&serde_json::value::RawValue>>(&self.payload)) {
            (Hook::ExportEvents, Ok(events)) => {
                events.iter().enumerate().map(|(i, ev)| letter(ev.get().to_string(), position(i))).collect()
            }
            _ => vec![letter(self.payload.clone(), position(0))],
        }
    }

    /// [`Self::dead_letters`], each addressed to the worker that read its event (`here` when
    /// that is not known: a job, a retry recovered from an earlier run).
    pub fn returned_letters(self, here: u32) -> Vec<ReturnedLetter> {
        let readers = self.readers.clone();
        let reader = |i: usize| readers.get(i).copied().unwrap_or(here);
        self.dead_letters().into_iter().enumerate().map(|(i, letter)| ReturnedLetter { reader: reader(i), letter }).collect()
    }

    /// One-line reason for the dead-letter output.
    pub fn reason(&self) -> String {
        format!(
            "{} of plugin '{}' ({}) failed after {} attempt{}: {}: {}",
            self.error.hook,
            self.error.plugin,
            self.error.config_id,
            self.attempts,
            if self.attempts == 1 { "" } else { "s" },
            self.error.name,
            self.error.message
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::error::ErrorKind;

    fn error(kind: ErrorKind) -> PluginError {
        PluginError {
            kind,
            plugin: "p".into(),
            config_id: "c".into(),
            hook: Hook::OnEvent,
            name: "E".into(),
            message: "m".into(),
            stack: String::new(),
        }
    }

    #[test]
    fn an_attempt_succeeds_retries_with_doubling_waits_or_gives_up() {
        let policy = RetryPolicy { max_retries: 3, base: Duration::from_millis(100) };
        let retriable = error(ErrorKind::Retry);
        assert_eq!(policy.next(1, Ok(()), 0), Next::Done(Outcome::Succeeded));
        assert_eq!(policy.next(2, Ok(()), 0), Next::Done(Outcome::SucceededOnRetry));
        let waits: Vec<Next> = (1..=4).map(|n| policy.next(n, Err(&retriable), 1000)).collect();
        assert_eq!(
            waits,
            [
                Next::Retry { due_ms: 1100, wait: Duration::from_millis(100) },
                Next::Retry { due_ms: 1200, wait: Duration::from_millis(200) },
                Next::Retry { due_ms: 1400, wait: Duration::from_millis(400) },
                Next::GiveUp,
            ]
        );
        // A plain error is never retried.
        assert_eq!(policy.next(1, Err(&error(ErrorKind::Failed)), 0), Next::GiveUp);
        // A wait past the end of time saturates instead of wrapping to "due at once".
        let never = RetryPolicy { max_retries: 1, base: Duration::MAX };
        assert_eq!(never.next(1, Err(&retriable), 5), Next::Retry { due_ms: u64::MAX, wait: Duration::MAX });
    }

    #[test]
    fn entries_of_both_queues_written_before_the_shared_shape_read() {
        let job = br#"{"config_id":"c","team":7,"name":"hello","payload":"{\"a\":1}","attempts":2,"hops":1}"#;
        let call = QueuedCall::read(job).unwrap();
        assert_eq!((call.hook.as_str(), call.attempts, call.hops, call.name.as_deref()), ("job", 2, 1, Some("hello")));
        let retry = br#"{"config_id":"c","team":7,"hook":"exportEvents","attempts":1,"events":["{}","{}"],"positions":[4,9]}"#;
        let call = QueuedCall::read(retry).unwrap();
        assert_eq!((call.hook.as_str(), call.hops, call.events.len(), call.positions.clone()), ("exportEvents", 0, 2, Some(vec![4, 9])));
        let old = br#"{"config_id":"c","team":7,"hook":"onEvent","attempts":1,"events":["{}"]}"#;
        assert_eq!(QueuedCall::read(old).unwrap().positions, None);
        assert_eq!(QueuedCall::read(&call.to_bytes()), Some(call));
        assert_eq!(QueuedCall::read(b"{\"team\":1}"), None, "no configuration");
        assert_eq!(queued_team(b"{\"team\":1}"), Some(1));
    }
}
