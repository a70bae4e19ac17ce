//! What the SMTP server counts. Sessions count; the metrics endpoint only reads.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Counters {
    /// Messages acknowledged with 250 (one per transaction, list copies included).
    pub received: AtomicU64,
}

pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}
