//! What delivery learned about one recipient: delivered, deferred or failed, with the
//! server that answered and its reply. Delivery produces these; the recorder turns them
//! into spool updates.

use spool::{Handoff, TxnId};

pub struct RcptResult {
    pub id: TxnId,
    pub index: u16,
    pub outcome: RcptOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    Delivered {
        relay: String,
        reply: String,
        handoff: Handoff,
    },
    Deferred {
        relay: Option<String>,
        reply: String,
    },
    Failed {
        relay: Option<String>,
        reply: String,
    },
}

impl RcptOutcome {
    /// The server that answered, and how a delivered recipient was handed on.
    pub fn relay_and_handoff(&self) -> (Option<String>, Handoff) {
        match self {
            RcptOutcome::Delivered { relay, handoff, .. } => (Some(relay.clone()), *handoff),
            RcptOutcome::Deferred { relay, .. } | RcptOutcome::Failed { relay, .. } => {
                (relay.clone(), Handoff::Unknown)
            }
        }
    }
}
