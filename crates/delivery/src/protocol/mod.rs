//! The SMTP/LMTP client protocol without I/O: a state machine that is fed the server's bytes
//! and answers with the bytes to write next and what happened (greeted, ready, STARTTLS
//! wanted, content wanted, each recipient's outcome). It decides everything the protocol
//! decides: EHLO/LHLO and the HELO fallback, whether STARTTLS is asked for or required,
//! what goes into one pipelined write, DATA or BDAT, which recipients were accepted, and how
//! every reply maps to an outcome. The async driver (`client.rs`) only moves bytes, keeps
//! the clocks and does the TLS handshake. Being pure, it is tested with in-memory
//! transcripts (`tests/transcripts.rs`) and fed arbitrary bytes by a property test.

use config::TlsPolicy;
use smtp_proto::{EnhancedCode, Reply};
use spool::{BodyType, DsnRet, Notify};

use crate::RcptOutcome;

/// Why a connection could not be used; the next destination may do better.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("{0}: timed out")]
    Timeout(String),
    #[error("{0}: connection lost: {1}")]
    Lost(String, std::io::Error),
    #[error("{0} said: {1}")]
    Refused(String, Reply),
    #[error("{0}: TLS: {1}")]
    Tls(String, String),
    /// The server agreed to STARTTLS and the handshake then failed (not a timeout): under
    /// opportunistic TLS the deliverer tries the same host again in plaintext.
    #[error("{0}: TLS: {1}")]
    TlsHandshake(String, String),
    #[error("{0}: protocol error: {1}")]
    Protocol(String, String),
}

impl SessionError {
    /// The reply text a deferred recipient carries in the queue and in DSNs.
    pub fn as_reply_text(&self) -> String {
        match self {
            SessionError::Refused(_, r) => format!("{self} ({})", r.code()),
            other => format!("{} {other}", self.status()),
        }
    }

    /// The status of the recipients this leaves undelivered. A refused session is 4.0.0,
    /// not the refusal's own code: that may be permanent (a 554 greeting) while the
    /// recipients are only deferred, and the delay DSN, which reads the stored text, finds
    /// no code at its start either.
    pub fn status(&self) -> EnhancedCode {
        match self {
            SessionError::Refused(..) => EnhancedCode::new(4, 0, 0),
            _ => EnhancedCode::new(4, 4, 1),
        }
    }

    /// The outcome of every recipient left undelivered by this.
    pub fn outcome(&self) -> RcptOutcome {
        RcptOutcome::deferred(self.status(), self.as_reply_text())
    }
}

/// Which configured limit applies while waiting; the driver owns the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    Greeting,
    Mail,
    Rcpt,
    Data,
    DataBlock,
    DataDone,
    Quit,
}

/// How a write appears in the transcript log, so the log reads as it always did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Log {
    /// A session command, logged without a queue id.
    Session,
    /// A message's pipelined commands, logged with its queue id.
    Message,
    /// Not logged (the end of an aborted DATA).
    Quiet,
}

/// How the content goes out once the server is ready for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Dot-stuffed after DATA's 354, ended by `.`.
    Data,
    /// RFC 3030 BDAT chunks, each answered, ended by `BDAT 0 LAST`.
    Bdat,
}

/// What the driver does next; see [`ClientMachine::poll`].
#[derive(Debug)]
pub enum Output {
    /// Write these bytes within the timer's limit.
    Write {
        bytes: Vec<u8>,
        timer: Timer,
        log: Log,
    },
    /// A reply is awaited: read within the timer's limit and [`ClientMachine::receive`] it.
    Read(Timer),
    /// A complete reply arrived (for the transcript log).
    Received(Reply),
    /// Greeted and introduced: a message may be sent.
    Ready,
    /// The server agreed to STARTTLS: do the handshake, then
    /// [`ClientMachine::tls_established`].
    StartTls,
    /// Stream the content in this framing: for BDAT, [`ClientMachine::chunk_sent`] after
    /// each chunk; at the end [`ClientMachine::content_sent`].
    Content(Framing),
    /// The last BDAT chunk was accepted: send the next.
    ChunkAccepted,
    /// The message's transaction is over: one outcome per recipient (index, outcome).
    MessageDone(Vec<(u16, RcptOutcome)>),
    /// RSET was accepted: ready for the next message.
    RsetDone,
    /// QUIT was answered.
    Closed,
    /// The connection is unusable.
    Failed(SessionError),
}

/// What the machine needs of a message: the envelope, not the content.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub sender: String,
    pub body: BodyType,
    pub smtputf8: bool,
    pub envid: Option<String>,
    pub ret: Option<DsnRet>,
    pub size: u64,
    pub recipients: Vec<EnvelopeRcpt>,
}

#[derive(Debug, Clone)]
pub struct EnvelopeRcpt {
    pub index: u16,
    pub address: String,
    pub notify: Notify,
    pub orcpt: Option<String>,
}

impl From<&crate::JobMessage> for Envelope {
    fn from(m: &crate::JobMessage) -> Self {
        Envelope {
            sender: m.sender.clone(),
            body: m.body,
            smtputf8: m.smtputf8,
            envid: m.envid.clone(),
            ret: m.ret,
            size: m.size,
            recipients: m
                .recipients
                .iter()
                .map(|r| EnvelopeRcpt {
                    index: r.index,
                    address: r.address.clone(),
                    notify: r.notify,
                    orcpt: r.orcpt.clone(),
                })
                .collect(),
        }
    }
}

/// How we introduce ourselves and what we ask of TLS.
#[derive(Debug, Clone)]
pub struct Greeting {
    pub hostname: String,
    pub lmtp: bool,
    /// `delivery.helo`: false skips EHLO/HELO (SMTPRC /HELO-).
    pub helo: bool,
    pub tls: TlsPolicy,
}

mod framer;
mod machine;

pub use framer::Framer;
pub use machine::ClientMachine;
