//! What cleanup counts: every message it queues, whatever its entry. Cleanup counts; the
//! metrics endpoint only reads.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Counters {
    /// Messages queued (one per transaction or submission, list copies included).
    pub received: AtomicU64,
}

pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}
