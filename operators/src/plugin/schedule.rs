//! Scheduled tasks (`runEveryMinute/Hour/Day`): when a task is due, and which worker owns it.
//!
//! A tick fires when the clock enters a new period (minute, hour, day, UTC). Ticks that pass
//! while a run is still going are skipped, and missed ticks are never back-filled: after a run
//! the next tick is the first period boundary after the run ended (PostHog's debounce, and
//! graphile's `backfillPeriod: 0`). Each plugin configuration × team has exactly one owner
//! worker in the whole cluster: the one its id hashes to.

use super::error::Hook;

/// Milliseconds in the period of a scheduled hook.
pub fn period_ms(hook: Hook) -> Option<u64> {
    match hook {
        Hook::RunEveryMinute => Some(60_000),
        Hook::RunEveryHour => Some(3_600_000),
        Hook::RunEveryDay => Some(86_400_000),
        _ => None,
    }
}

/// The tick state of one scheduled task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    period_ms: u64,
    /// The period of the last tick seen (run or skipped).
    last_period: u64,
}

impl Schedule {
    /// A schedule first looked at `now_ms`: the first tick is at the next period boundary.
    pub fn new(period_ms: u64, now_ms: u64) -> Self {
        Self { period_ms, last_period: now_ms / period_ms }
    }

    /// Whether a tick is due at `now_ms`.
    pub fn due(&self, now_ms: u64) -> bool {
        now_ms / self.period_ms > self.last_period
    }

    /// Records a run that ended at `finished_ms`: ticks up to then are consumed, not queued.
    pub fn ran(&mut self, finished_ms: u64) {
        self.last_period = finished_ms / self.period_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    #[test]
    fn first_tick_is_at_the_next_boundary() {
        let s = Schedule::new(MIN, 30_000);
        assert!(!s.due(59_999));
        assert!(s.due(60_000));
    }

    #[test]
    fn ticks_during_a_run_are_skipped_and_not_back_filled() {
        let mut s = Schedule::new(MIN, 0);
        assert!(s.due(MIN));
        // The run started at 1:00 and ended at 3:30: the 2:00 and 3:00 ticks are gone.
        s.ran(3 * MIN + 30_000);
        assert!(!s.due(3 * MIN + 59_999));
        assert!(s.due(4 * MIN));
        s.ran(4 * MIN + 10);
        // A long pause (no looks between 4:00 and 9:30) gives one run, not five.
        assert!(s.due(9 * MIN + 30_000));
        s.ran(9 * MIN + 30_001);
        assert!(!s.due(9 * MIN + 59_000));
    }
}
