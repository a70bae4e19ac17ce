//! What delivery counts: recipient outcomes, open connections and destination lookups.
//! Delivery counts; the metrics endpoint only reads.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Counters {
    pub delivered: AtomicU64,
    pub deferred: AtomicU64,
    pub failed: AtomicU64,
    /// Outbound SMTP/LMTP connections open now.
    pub connections_out: AtomicU64,
    pub dns_lookups: AtomicU64,
    /// Total microseconds spent in destination lookups.
    pub dns_micros: AtomicU64,
}

pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}
