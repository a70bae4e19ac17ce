//! What the queue manager hands to delivery and what comes back: an attempt (one domain, a
//! batch of messages newest first) and its report (each recipient's outcome, durable or
//! not). Delivery implements [`Deliver`]; the manager knows nothing else about it.

use std::future::Future;

use spool::{BodyType, DsnRet, MessageRef, Notify, TxnId};

pub use crate::outcome::{RcptOutcome, RcptResult};
use crate::record::{Recorded, Recorder};
use crate::schedule::DomainId;

/// Runs one attempt to its end. Implemented by the SMTP/LMTP client; tests may implement
/// it to drive the manager without a network.
pub trait Deliver: Send + Sync + 'static {
    fn run(&self, attempt: Attempt) -> impl Future<Output = AttemptReport> + Send;
}

/// One attempt for one domain.
pub struct Attempt {
    pub domain: DomainId,
    pub domain_name: String,
    pub messages: Vec<JobMessage>,
    /// Where delivery hands each message's results as they come in.
    pub recorder: Recorder,
}

pub struct JobMessage {
    pub id: TxnId,
    pub mref: MessageRef,
    pub sender: String,
    pub body: BodyType,
    pub smtputf8: bool,
    pub envid: Option<String>,
    pub ret: Option<DsnRet>,
    pub size: u64,
    /// Unix seconds, for the delay in the logs.
    pub arrival: u64,
    /// Older than `delivery.max_queue_time`: fail without trying.
    pub expired: bool,
    pub recipients: Vec<JobRecipient>,
}

pub struct JobRecipient {
    pub index: u16,
    pub address: String,
    pub notify: Notify,
    pub orcpt: Option<String>,
    pub tries: u32,
}

pub struct AttemptReport {
    pub domain: DomainId,
    pub domain_name: String,
    /// Results durable in the spool, with the updates written: the manager applies them.
    pub results: Vec<Recorded>,
    /// Results the spool could not record. They are not final: the recipients keep their
    /// previous state and are tried again (a delivery may then be repeated, never lost).
    pub unrecorded: Vec<RcptResult>,
}
