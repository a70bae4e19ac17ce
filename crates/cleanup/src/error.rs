//! Why cleanup did not queue a message, each with the reply the entry path sends, and the
//! replies that never vary as constants, so every path words them alike.

use smtp_proto::{Reply, Violation};
use spool::{SpoolError, TxnId};

pub use smtp_proto::Canned;

pub const TOO_MANY_HOPS: Canned = Canned {
    code: 554,
    status: "5.4.6",
    text: "Too many hops: mail loop detected",
};

pub const NO_SPACE: Canned = Canned {
    code: 452,
    status: "4.3.1",
    text: "Insufficient system storage",
};

pub const LOCAL_ERROR: Canned = Canned {
    code: 451,
    status: "4.3.0",
    text: "Local error in processing; try again later",
};

/// The reply to a spool failure: a full disk is worth saying, other errors are not the
/// client's business.
pub fn spool_error_reply(e: &SpoolError) -> Reply {
    if e.is_no_space() {
        NO_SPACE.reply()
    } else {
        LOCAL_ERROR.reply()
    }
}

/// `250 2.0.0 Ok: discarded as ID`: a discarded message is acknowledged, never delivered.
pub fn discarded_reply(id: TxnId) -> Reply {
    Reply::new(250, "2.0.0".parse().ok(), &format!("Ok: discarded as {id}"))
}

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    /// The content broke the content policy (bare CR/LF, NUL, a long line).
    #[error("message contains {}", .0.describe())]
    Content(Violation),
    /// As many `Received:` fields as `smtp.max_hops` or more: a mail loop.
    #[error("too many hops ({0} Received headers)")]
    TooManyHops(usize),
    /// A milter added recipients past what one message can hold.
    #[error("too many recipients ({0})")]
    TooManyRecipients(usize),
    #[error("{0}")]
    Spool(#[from] SpoolError),
}

impl CleanupError {
    /// The reply SMTP sends for it (local submission words some of them its own way).
    pub fn reply(&self) -> Reply {
        match self {
            CleanupError::Content(v) => v.reply(),
            CleanupError::TooManyHops(_) => TOO_MANY_HOPS.reply(),
            CleanupError::TooManyRecipients(_) => Reply::new(
                550,
                "5.5.3".parse().ok(),
                &format!(
                    "Too many recipients: a message has at most {}",
                    config::MAX_RECIPIENTS
                ),
            ),
            CleanupError::Spool(e) => spool_error_reply(e),
        }
    }
}
