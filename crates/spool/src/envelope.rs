//! What the spool stores about a message besides its content, and the changes to it that
//! the queue manager records.

use serde::{Deserialize, Serialize};

use crate::TxnId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DsnRet {
    Full,
    Headers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum BodyType {
    #[default]
    SevenBit,
    EightBitMime,
    BinaryMime,
}

/// RFC 3461 NOTIFY; all false means "not given" (failure and delay reported by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Notify {
    pub never: bool,
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum RcptState {
    #[default]
    Pending,
    Delivered,
    Failed,
    Deferred,
}

impl RcptState {
    /// Delivered or failed: nothing more will be done for this recipient.
    pub fn is_final(self) -> bool {
        matches!(self, RcptState::Delivered | RcptState::Failed)
    }
}

impl std::fmt::Display for RcptState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RcptState::Pending => "pending",
            RcptState::Delivered => "delivered",
            RcptState::Failed => "failed",
            RcptState::Deferred => "deferred",
        })
    }
}

/// How a delivered recipient left our hands, which decides the success DSN (RFC 3461 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Handoff {
    #[default]
    Unknown,
    /// Relayed to an MTA that speaks DSN: it reports success itself.
    DsnCapable,
    /// Relayed to an MTA without DSN: we report "relayed".
    Relayed,
    /// Final delivery (LMTP): we report "delivered".
    Final,
}

/// What a message is, for the DSN rules: a DSN's failure goes to the postmaster (a double
/// bounce); a double bounce's failure is only logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum MessageKind {
    #[default]
    Mail,
    Dsn,
    DoubleBounce,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Recipient {
    pub address: String,
    /// RFC 3461 ORCPT as `type;address` (xtext already decoded).
    pub orcpt: Option<String>,
    pub notify: Notify,
    pub state: RcptState,
    pub tries: u32,
    pub last_error: Option<String>,
    /// Unix seconds; 0 = as soon as the domain's schedule allows.
    pub next_attempt: u64,
    /// A DSN reporting this recipient's final state is safely in the queue.
    #[serde(default)]
    pub dsn_sent: bool,
    /// A delay notice for this recipient is safely in the queue (sent at most once).
    #[serde(default)]
    pub delay_dsn_sent: bool,
    /// The server that gave the last reply (Remote-MTA of a DSN).
    #[serde(default)]
    pub relay: Option<String>,
    #[serde(default)]
    pub handoff: Handoff,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: TxnId,
    /// Unix seconds.
    pub arrival: u64,
    /// Empty for the null reverse-path `<>`.
    pub sender: String,
    pub envid: Option<String>,
    pub ret: Option<DsnRet>,
    pub body: BodyType,
    pub smtputf8: bool,
    /// `helo [ip]` of the submitting client, for logs and bounces.
    pub client: String,
    pub held: bool,
    pub recipients: Vec<Recipient>,
    #[serde(default)]
    pub kind: MessageKind,
}

impl Recipient {
    /// Records that a DSN about this recipient's current state is durable.
    pub fn mark_reported(&mut self) {
        if self.state.is_final() {
            self.dsn_sent = true;
        } else {
            self.delay_dsn_sent = true;
        }
    }
}

impl Envelope {
    /// What the spool writer keeps of a live message: only its id. The queue manager owns
    /// the envelope; keeping a second copy would double the memory of a large queue.
    pub(crate) fn placeholder(id: TxnId) -> Envelope {
        Envelope {
            id,
            arrival: 0,
            sender: String::new(),
            envid: None,
            ret: None,
            body: BodyType::SevenBit,
            smtputf8: false,
            client: String::new(),
            held: false,
            recipients: Vec::new(),
            kind: MessageKind::Mail,
        }
    }

    /// The one transition of a message's state. Recovery, the spool writer and the queue
    /// manager all change an envelope only through here, with the same [`Update`] that is
    /// (or was) written to the log, so what the manager holds in memory is what a restart
    /// would read back. Updates about the queue rather than the message (`Done`, `Delete`,
    /// `Schedule`) leave the envelope as it is.
    pub fn apply(&mut self, u: &Update) {
        match u {
            Update::Rcpt {
                index,
                state,
                tries,
                last_error,
                next_attempt,
                relay,
                handoff,
                ..
            } => {
                let Some(r) = self.recipients.get_mut(usize::from(*index)) else {
                    return;
                };
                // A final state is never undone by a late or duplicated report.
                if !r.state.is_final() || *state == r.state {
                    r.state = *state;
                    r.tries = (*tries).max(r.tries);
                    r.last_error.clone_from(last_error);
                    r.next_attempt = *next_attempt;
                    r.relay.clone_from(relay);
                    r.handoff = *handoff;
                } else if *state == RcptState::Deferred {
                    r.tries = (*tries).max(r.tries);
                }
            }
            Update::DsnSent { rcpts, .. } => {
                for &i in rcpts {
                    if let Some(r) = self.recipients.get_mut(usize::from(i)) {
                        r.mark_reported();
                    }
                }
            }
            Update::Hold { .. } => self.held = true,
            Update::Release { .. } => self.held = false,
            Update::Rewrite(env) => *self = env.clone(),
            Update::Done { .. } | Update::Delete { .. } | Update::Schedule(_) => {}
        }
    }

    /// Recipients not yet delivered or failed.
    pub fn open_recipients(&self) -> usize {
        self.recipients
            .iter()
            .filter(|r| !r.state.is_final())
            .count()
    }
}

/// A domain's place in the retry schedule, kept so a restart does not hammer a domain
/// that was backing off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainSchedule {
    pub domain: String,
    pub level: u32,
    /// Unix seconds; 0 = no pending retry time.
    pub next_attempt: u64,
}

/// One durable change to the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Update {
    Rcpt {
        id: TxnId,
        index: u16,
        state: RcptState,
        tries: u32,
        last_error: Option<String>,
        next_attempt: u64,
        #[serde(default)]
        relay: Option<String>,
        #[serde(default)]
        handoff: Handoff,
    },
    /// Every recipient is final: the message leaves the queue.
    Done {
        id: TxnId,
    },
    Hold {
        id: TxnId,
    },
    Release {
        id: TxnId,
    },
    /// Removed by the administrator.
    Delete {
        id: TxnId,
    },
    /// DSNs for these recipients were committed as a message of their own: a final report
    /// for final recipients, a delay notice for the others.
    DsnSent {
        id: TxnId,
        rcpts: Vec<u16>,
    },
    Schedule(DomainSchedule),
    /// Replace the envelope wholesale (recipients added by alias expansion, say).
    Rewrite(Envelope),
}

impl Update {
    /// The message an update is about, if any.
    pub fn id(&self) -> Option<TxnId> {
        match self {
            Update::Rcpt { id, .. }
            | Update::Done { id }
            | Update::Hold { id }
            | Update::Release { id }
            | Update::Delete { id }
            | Update::DsnSent { id, .. } => Some(*id),
            Update::Rewrite(e) => Some(e.id),
            Update::Schedule(_) => None,
        }
    }
}
