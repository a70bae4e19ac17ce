//! The queue manager is where cleanup sends what it queued: cleanup names only the
//! `Arrivals` trait, so it can serve the queue's own messages later without a cycle.

use std::future::Future;

use spool::{Envelope, MessageRef};

use crate::QueueHandle;

impl cleanup::Arrivals for QueueHandle {
    fn arrived(
        &self,
        env: Envelope,
        mref: MessageRef,
        size: u64,
    ) -> impl Future<Output = ()> + Send {
        QueueHandle::arrived(self, env, mref, size)
    }
}
