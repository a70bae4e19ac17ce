//! Message content: DATA lines and BDAT chunks streamed to the spool through the content
//! policy and the hop-count scan, a bad BDAT chunk refused as it arrives, and the end of
//! data (hop check, a discard decided earlier, the milters' end of message, the commit).

use cleanup::discarded_reply;
use smtp_proto::{BodyType as WireBody, Violation};
use spool::{BodyType, DsnRet, Envelope, SpoolError, TxnId};
use tracing::{info, warn};

use super::commands::Wait;
use super::replies;
use super::state::{Chunk, ContentError, DataState, State, Txn};
use super::{Action, Commit, Machine, MilterCall, Pending, ReadKind, Verdict};

/// What one read of DATA decodes into, at most (the connection reads 64 KiB at a time).
const DECODE_CHUNK: usize = 64 * 1024;

/// What the content is being opened for.
pub(super) enum Opening {
    Data,
    Bdat { size: u64, last: bool },
}

/// Logs a content policy refusal; one line with the transaction's queue id.
fn log_violation(id: TxnId, peer: std::net::SocketAddr, v: Violation) {
    warn!(queue_id = %id, client = %peer, "message refused: {}", v.describe());
}

impl Machine {
    pub(super) fn data(&mut self) -> Option<Action> {
        match &self.state {
            State::Rcpt(t) if t.params.body == Some(WireBody::BinaryMime) => {
                self.push(&replies::BINARYMIME_NEEDS_BDAT.reply());
                None
            }
            State::Rcpt(_) => self.open_content(Opening::Data),
            State::Bdat(..) => {
                self.push(&replies::DATA_DURING_BDAT.reply());
                None
            }
            State::Mail(_) => {
                self.refuse(replies::NO_RECIPIENTS.reply());
                None
            }
            _ => {
                self.refuse(replies::NEED_MAIL.reply());
                None
            }
        }
    }

    pub(super) fn bdat(&mut self, size: u64, last: bool) -> Option<Action> {
        // CHUNKING is an ESMTP extension (RFC 3030): only offered after EHLO.
        let refused = if !self.esmtp {
            Some(replies::BDAT_NEEDS_EHLO)
        } else {
            match &self.state {
                State::Rcpt(_) | State::Bdat(..) => None,
                State::Mail(_) => Some(replies::NO_RECIPIENTS),
                _ => Some(replies::NEED_MAIL),
            }
        };
        if let Some(r) = refused {
            // The chunk must be read even when the command fails, or its bytes would be
            // taken as commands.
            let resume = Box::new(std::mem::replace(&mut self.state, State::Ready));
            self.state = State::SkipChunk {
                left: size,
                reply: r.reply(),
                resume,
            };
            return None;
        }
        match &mut self.state {
            State::Bdat(_, ch) => {
                start_chunk(ch, size, last);
                None
            }
            _ => self.open_content(Opening::Bdat { size, last }),
        }
    }

    fn open_content(&mut self, o: Opening) -> Option<Action> {
        let txn = self.txn()?;
        let id = txn.id;
        let single_recipient = (txn.rcpts.len() == 1).then(|| txn.rcpts[0].address.clone());
        self.wait = Some(Wait::Opened(o));
        Some(Action::OpenContent {
            id,
            origin: self.origin(),
            single_recipient,
        })
    }

    pub(super) fn opened(&mut self, o: Opening, r: Result<(), SpoolError>) {
        self.content_open = true;
        let Some(txn) = self.take_txn() else {
            return;
        };
        match o {
            Opening::Data => {
                self.state = State::Data(txn, DataState::new(self.set.max_message_size, r.err()));
                self.push(&replies::START_DATA.reply());
            }
            Opening::Bdat { size, last } => {
                let binary = txn.params.body == Some(WireBody::BinaryMime);
                let mut ch = Chunk::new(binary, r.err());
                start_chunk(&mut ch, size, last);
                self.state = State::Bdat(txn, ch);
            }
        }
    }

    pub(super) fn data_step(&mut self) -> Option<Action> {
        let State::Data(_, d) = &mut self.state else {
            return None;
        };
        if d.ended {
            return self.data_end();
        }
        if !d.fresh {
            return self.read(ReadKind::Content);
        }
        d.fresh = false;
        // One read's worth up front: grown from nothing, the buffer was reallocated and
        // copied several times per message (most sessions carry one message).
        self.decoded.reserve(DECODE_CHUNK);
        let end = d.decoder.decode(&mut self.input, &mut self.decoded);
        d.ended = end.is_some();
        if !self.decoded.is_empty() {
            d.scan.feed(&self.decoded);
            d.policy.feed(&self.decoded);
            if d.failed.is_none() && !d.decoder.exceeded() {
                self.pending = Some(Pending::Decoded);
                self.wait = Some(Wait::Written);
                return Some(Action::WriteContent);
            }
            self.decoded.clear();
        }
        None
    }

    pub(super) fn written(&mut self, r: Result<(), SpoolError>) {
        match (self.pending.take(), &mut self.state) {
            (Some(Pending::Decoded), State::Data(_, d)) => {
                self.decoded.clear();
                if let Err(e) = r {
                    d.failed = Some(e);
                }
            }
            (Some(Pending::Input(n)), State::Bdat(_, ch)) => {
                if let Err(e) = r {
                    ch.failed = Some(ContentError::Spool(e));
                }
                self.input.drain(..n);
                ch.left -= n as u64;
            }
            _ => {}
        }
    }

    fn data_end(&mut self) -> Option<Action> {
        let State::Data(txn, mut d) = std::mem::replace(&mut self.state, State::Ready) else {
            return None;
        };
        // The content policy judges what would be stored, as for BDAT, so both answer alike
        // for the same content (the decoder's own flags are the wire's: a stuffing dot
        // would count to a line's length there).
        let verdict = d.policy.finish();
        let r = if d.decoder.exceeded() {
            replies::TOO_BIG.reply()
        } else if let Err(v) = verdict {
            log_violation(txn.id, self.set.peer, v);
            v.reply()
        } else if let Some(e) = d.failed {
            cleanup::spool_error_reply(&e)
        } else {
            return self.finish(txn, d.scan.received);
        };
        self.end_txn();
        self.push(&r);
        None
    }

    pub(super) fn chunk_step(&mut self) -> Option<Action> {
        let max = self.set.max_message_size;
        let State::Bdat(_, ch) = &mut self.state else {
            return None;
        };
        if ch.left == 0 {
            return self.chunk_done();
        }
        if self.input.is_empty() {
            return self.read(ReadKind::Content);
        }
        let n = (ch.left.min(self.input.len() as u64)) as usize;
        ch.size += n as u64;
        if ch.failed.is_none() && ch.size > max {
            ch.failed = Some(ContentError::TooBig);
        }
        if ch.failed.is_none() {
            let bytes = &self.input[..n];
            ch.policy.feed(bytes);
            if let Some(v) = ch.policy.violation() {
                ch.failed = Some(ContentError::Policy(v));
            } else {
                ch.scan.feed(bytes);
                self.pending = Some(Pending::Input(n));
                self.wait = Some(Wait::Written);
                return Some(Action::WriteContent);
            }
        }
        self.input.drain(..n);
        ch.left -= n as u64;
        None
    }

    fn chunk_done(&mut self) -> Option<Action> {
        let State::Bdat(txn, ch) = &mut self.state else {
            return None;
        };
        ch.reading = false;
        if ch.failed.is_none()
            && ch.last
            && let Err(v) = ch.policy.finish()
        {
            ch.failed = Some(ContentError::Policy(v));
        }
        if let Some(f) = ch.failed.take() {
            let id = txn.id;
            match &f {
                ContentError::Policy(v) => log_violation(id, self.set.peer, *v),
                ContentError::Spool(e) => warn!(queue_id = %id, "writing BDAT content failed: {e}"),
                ContentError::TooBig => {}
            }
            self.end_txn();
            self.push(&f.reply());
            return None;
        }
        if !ch.last {
            let r = replies::chunk_received(ch.announced);
            self.push(&r);
            return None;
        }
        let State::Bdat(txn, ch) = std::mem::replace(&mut self.state, State::Ready) else {
            return None;
        };
        self.finish(txn, ch.scan.received)
    }

    pub(super) fn skip_step(&mut self) -> Option<Action> {
        let State::SkipChunk { left, .. } = &mut self.state else {
            return None;
        };
        if *left == 0 {
            let State::SkipChunk { reply, resume, .. } =
                std::mem::replace(&mut self.state, State::Ready)
            else {
                return None;
            };
            self.state = *resume;
            self.push(&reply);
            return None;
        }
        if self.input.is_empty() {
            return self.read(ReadKind::Content);
        }
        let n = (*left).min(self.input.len() as u64);
        *left -= n;
        self.input.drain(..n as usize);
        None
    }

    /// The end of data: the loop check and a discard decided earlier, the milters' end of
    /// message, then cleanup; the reply to the end of data follows the answers.
    fn finish(&mut self, txn: Txn, hops: usize) -> Option<Action> {
        self.state = State::Ready;
        // Before the milters, so a looping message costs them nothing.
        if let Err(e) = cleanup::check_hops(txn.id, hops, self.set.max_hops) {
            self.end_txn();
            self.push(&e.reply());
            return None;
        }
        if txn.discarded {
            info!(queue_id = %txn.id, "message discarded by a milter");
            if self.milters_connected {
                self.queue_milter(MilterCall::Abort);
            }
            self.end_txn();
            self.push(&discarded_reply(txn.id));
            return None;
        }
        let env = Envelope {
            id: txn.id,
            arrival: 0,
            sender: txn.sender_text(),
            envid: txn.params.envid.clone(),
            ret: txn.params.ret.map(|r| match r {
                smtp_proto::Ret::Full => DsnRet::Full,
                smtp_proto::Ret::Hdrs => DsnRet::Headers,
            }),
            body: match txn.params.body {
                Some(WireBody::EightBitMime) => BodyType::EightBitMime,
                Some(WireBody::BinaryMime) => BodyType::BinaryMime,
                _ => BodyType::SevenBit,
            },
            smtputf8: txn.params.smtputf8,
            client: format!(
                "{} [{}]",
                self.helo.as_deref().unwrap_or("unknown"),
                crate::limits::canonical(self.set.peer.ip())
            ),
            held: false,
            kind: Default::default(),
            recipients: txn.rcpts,
        };
        let commit = Box::new(Commit {
            env,
            owners: txn.owners,
            origin: self.origin(),
            hops,
        });
        if self.milters_connected {
            let queue_id = commit.env.id.to_string();
            self.wait = Some(Wait::MessageVerdict(commit));
            return Some(Action::Milter(MilterCall::Message { queue_id }));
        }
        Some(self.commit(commit))
    }

    fn commit(&mut self, c: Box<Commit>) -> Action {
        // The content goes with the commit: nothing is left for the driver to drop.
        self.content_open = false;
        self.wait = Some(Wait::Committed);
        Action::Commit(c)
    }

    pub(super) fn message_verdict(&mut self, c: Box<Commit>, r: Result<Verdict, SpoolError>) {
        let id = c.env.id;
        let r = match r {
            Err(e) => cleanup::spool_error_reply(&e),
            Ok(Verdict::Reject(r) | Verdict::Tempfail(r)) => {
                info!(queue_id = %id, reply = %r.to_string().trim_end(), "message refused by a milter");
                r
            }
            Ok(Verdict::Discard) => {
                info!(queue_id = %id, "message discarded by a milter");
                discarded_reply(id)
            }
            Ok(Verdict::Continue) => {
                let a = self.commit(c);
                self.queued.push_back(a);
                return;
            }
        };
        self.end_txn();
        self.push(&r);
    }

    /// Takes the transaction out of its state, leaving `Ready`.
    fn take_txn(&mut self) -> Option<Txn> {
        match std::mem::replace(&mut self.state, State::Ready) {
            State::Mail(t) | State::Rcpt(t) | State::Data(t, _) | State::Bdat(t, _) => Some(t),
            other => {
                self.state = other;
                None
            }
        }
    }
}

fn start_chunk(ch: &mut Chunk, size: u64, last: bool) {
    ch.left = size;
    ch.announced = size;
    ch.last = last;
    ch.reading = true;
}
