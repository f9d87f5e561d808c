//! Call latency of plugin hooks, kept per instance as a fixed-bucket histogram.

use std::time::Duration;

/// Upper bounds (µs) of the call-latency histogram buckets.
pub const LATENCY_BUCKETS_US: [u64; 10] = [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 250_000];

/// Latency histogram of one (configuration, hook).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    /// Calls per bucket of [`LATENCY_BUCKETS_US`], plus one for slower calls.
    pub buckets: [u64; 11],
    /// Sum of the durations, in seconds.
    pub sum_seconds: f64,
    /// Calls.
    pub count: u64,
}

impl Histogram {
    /// Records one call.
    pub fn observe(&mut self, d: Duration) {
        let us = d.as_micros() as u64;
        let i = LATENCY_BUCKETS_US.iter().position(|b| us <= *b).unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[i] += 1;
        self.sum_seconds += d.as_secs_f64();
        self.count += 1;
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.sum_seconds += other.sum_seconds;
        self.count += other.count;
    }
}
