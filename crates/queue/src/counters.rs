//! What the queue manager counts: DSNs queued and the cost of its ticks. The manager
//! counts; the metrics endpoint only reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Counters {
    pub dsn_sent: AtomicU64,
    /// Queue manager ticks (one event handled plus the attempts it started) and their cost.
    pub ticks: AtomicU64,
    pub tick_micros_total: AtomicU64,
    pub tick_micros_max: AtomicU64,
}

impl Counters {
    pub fn tick(&self, took: Duration) {
        let us = took.as_micros() as u64;
        self.ticks.fetch_add(1, Ordering::Relaxed);
        self.tick_micros_total.fetch_add(us, Ordering::Relaxed);
        self.tick_micros_max.fetch_max(us, Ordering::Relaxed);
    }
}
