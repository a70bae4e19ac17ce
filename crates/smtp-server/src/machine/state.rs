//! What the session knows at each point of RFC 5321 §4.1.4, as values: a transaction exists
//! only in the states that have one, content scanners only while content flows, so a
//! command can only touch what its state carries.

use std::collections::HashSet;

use message::HeaderScan;
use smtp_proto::{ContentScan, DataDecoder, MailParams, Reply, ReversePath, Violation};
use spool::{Recipient, SpoolError, TxnId};

use super::replies;

/// Where the session is. Each variant carries what is known there and nothing more.
#[derive(Debug)]
pub enum State {
    /// Connected; the greeting is not written yet.
    Greeting,
    /// Between transactions (HELO/EHLO or not: see [`super::Machine::helo`]).
    Ready,
    /// MAIL accepted, no recipient yet.
    Mail(Txn),
    /// At least one recipient accepted.
    Rcpt(Txn),
    /// DATA accepted: content lines until CRLF `.` CRLF.
    Data(Txn, DataState),
    /// A BDAT transaction: reading a chunk, or between chunks.
    Bdat(Txn, Chunk),
    /// A BDAT command was refused: its chunk is read and dropped (or its bytes would be
    /// taken as commands), then the refusal is sent and `resume` continues.
    SkipChunk {
        left: u64,
        reply: Reply,
        resume: Box<State>,
    },
    /// QUIT, too many errors, a read that failed: nothing more happens.
    Closed,
}

/// One mail transaction, from MAIL to the end of data.
#[derive(Debug)]
pub struct Txn {
    pub id: TxnId,
    pub sender: ReversePath,
    pub params: MailParams,
    pub rcpts: Vec<Recipient>,
    /// For recipients from a list with an `owner-` alias: (recipient address, owner), the
    /// envelope sender of their copy, so bounces for the list go to its owner.
    pub owners: Vec<(String, String)>,
    /// The recipients' addresses, ASCII-lowercased: a set, not a scan of the list, so
    /// 65535 recipients do not cost 65535² steps.
    pub seen: HashSet<String>,
    /// A milter said DISCARD at MAIL or RCPT: the message is accepted and dropped (as
    /// Postfix does), not delivered.
    pub discarded: bool,
}

impl Txn {
    pub fn new(id: TxnId, sender: ReversePath, params: MailParams) -> Self {
        Txn {
            id,
            sender,
            params,
            rcpts: Vec::new(),
            owners: Vec::new(),
            seen: HashSet::new(),
            discarded: false,
        }
    }

    pub fn sender_text(&self) -> String {
        match &self.sender {
            ReversePath::Null => String::new(),
            ReversePath::Mailbox(m) => m.to_string(),
        }
    }
}

/// DATA in progress.
#[derive(Debug)]
pub struct DataState {
    pub decoder: DataDecoder,
    pub scan: HeaderScan,
    /// DATA is never BINARYMIME (refused before 354); the same policy as BDAT decides.
    pub policy: ContentScan,
    /// Opening or writing the content failed; the rest is read and dropped.
    pub failed: Option<SpoolError>,
    /// Input arrived that the decoder has not seen yet.
    pub fresh: bool,
    /// CRLF `.` CRLF has been read.
    pub ended: bool,
}

impl DataState {
    pub fn new(max_size: u64, failed: Option<SpoolError>) -> Self {
        DataState {
            decoder: DataDecoder::new(max_size),
            scan: HeaderScan::new(),
            policy: ContentScan::new(false),
            failed,
            fresh: true,
            ended: false,
        }
    }
}

/// A BDAT transaction's content so far, and the chunk being read.
#[derive(Debug)]
pub struct Chunk {
    pub scan: HeaderScan,
    pub policy: ContentScan,
    /// Octets of all chunks so far.
    pub size: u64,
    /// Why the transaction can no longer succeed; later octets are read and dropped.
    pub failed: Option<ContentError>,
    /// The chunk being read: octets still to come, its announced size, BDAT LAST.
    pub left: u64,
    pub announced: u64,
    pub last: bool,
    pub reading: bool,
}

impl Chunk {
    pub fn new(binarymime: bool, failed: Option<SpoolError>) -> Self {
        Chunk {
            scan: HeaderScan::new(),
            policy: ContentScan::new(binarymime),
            size: 0,
            failed: failed.map(ContentError::Spool),
            left: 0,
            announced: 0,
            last: false,
            reading: false,
        }
    }
}

/// Why content was not accepted; each knows the reply DATA and BDAT give for it.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("message size exceeds the limit")]
    TooBig,
    /// Writing the content failed (disk full, I/O error): temporary.
    #[error("writing content failed: {0}")]
    Spool(#[from] SpoolError),
    /// The content broke the content policy (bare CR/LF, NUL, a long line).
    #[error("{0}")]
    Policy(Violation),
}

impl ContentError {
    pub fn reply(&self) -> Reply {
        match self {
            ContentError::TooBig => replies::TOO_BIG.reply(),
            ContentError::Spool(e) => cleanup::spool_error_reply(e),
            ContentError::Policy(v) => v.reply(),
        }
    }
}
