//! Event counters: each component counts what it does here (sessions, deliveries, DSNs,
//! lookups, scheduler ticks); the metrics endpoint only reads them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Event counters, shared by the components that count.
#[derive(Debug, Default)]
pub struct Counters {
    pub received: AtomicU64,
    pub delivered: AtomicU64,
    pub deferred: AtomicU64,
    pub failed: AtomicU64,
    pub dsn_sent: AtomicU64,
    /// Outbound SMTP/LMTP connections open now.
    pub connections_out: AtomicU64,
    pub dns_lookups: AtomicU64,
    /// Total microseconds spent in destination lookups.
    pub dns_micros: AtomicU64,
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

    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}
