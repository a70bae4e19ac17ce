//! The client machine itself: its states, each carrying what it knows, and the replies
//! that move it from one to the next.
//!
//! A little over 600 lines: every state's handling of a reply is here, so the whole
//! conversation can be followed in one place.

use std::collections::VecDeque;

use config::TlsPolicy;
use smtp_proto::{
    Capabilities, Command, EnhancedCode, ForwardPath, MailParams, Mailbox, Notify as WireNotify,
    RcptParams, Reply, ReplyParser, Ret, ReversePath,
};
use spool::{BodyType, DsnRet, Handoff};

use super::{Envelope, Framing, Greeting, Log, Output, SessionError, Timer};
use crate::RcptOutcome;

/// One message's transaction, carried from state to state.
#[derive(Debug)]
struct Txn {
    chunking: bool,
    /// RCPT commands not yet sent (one round trip each, without PIPELINING).
    unsent: VecDeque<Command>,
    /// Recipients that got a RCPT command, in order.
    rcpts: Vec<u16>,
    /// MAIL's reply, then one per RCPT, then DATA's (when pipelined).
    replies: Vec<Reply>,
    /// Replies the pipelined write asks for.
    expected: usize,
    accepted: Vec<u16>,
    results: Vec<(u16, RcptOutcome)>,
}

/// Where the session is. Each variant carries what that state knows; a reply consumes the
/// state and yields the next one.
#[derive(Debug)]
enum State {
    Greeting,
    Lhlo,
    Ehlo,
    Helo,
    StartTls,
    /// The driver is doing the TLS handshake.
    Handshake,
    Ready,
    /// Waiting for the replies to one pipelined MAIL/RCPT/DATA write.
    Pipelined(Txn),
    Mail(Txn),
    Rcpt(Txn),
    Data(Txn),
    /// A pipelined DATA got 354 with nothing to send: the empty message's reply.
    AbortData(Vec<(u16, RcptOutcome)>),
    /// The driver streams content.
    Content(Txn),
    Chunk(Txn),
    DataDone(Txn),
    Rset,
    Quit,
    /// Closed or failed: nothing more is done.
    Done,
}

impl State {
    fn awaits(&self, next: usize) -> Option<Timer> {
        Some(match self {
            State::Greeting | State::Lhlo | State::Ehlo | State::Helo | State::StartTls => {
                Timer::Greeting
            }
            State::Pipelined(_) if next == 0 => Timer::Mail,
            State::Pipelined(_) | State::Rcpt(_) => Timer::Rcpt,
            State::Mail(_) | State::Rset => Timer::Mail,
            State::Data(_) => Timer::Data,
            State::Chunk(_) => Timer::DataBlock,
            State::AbortData(_) | State::DataDone(_) => Timer::DataDone,
            State::Quit => Timer::Quit,
            State::Handshake | State::Ready | State::Content(_) | State::Done => return None,
        })
    }
}

/// The client side of one SMTP or LMTP connection.
#[derive(Debug)]
pub struct ClientMachine {
    relay: String,
    greeting: Greeting,
    caps: Capabilities,
    tls: bool,
    parser: ReplyParser,
    state: State,
    out: VecDeque<Output>,
}

impl ClientMachine {
    /// A machine for a connection just opened to `relay` (which names it in errors and
    /// outcomes); it first waits for the greeting.
    pub fn new(relay: String, greeting: Greeting) -> Self {
        ClientMachine {
            relay,
            greeting,
            caps: Capabilities::default(),
            tls: false,
            parser: ReplyParser::new(),
            state: State::Greeting,
            out: VecDeque::new(),
        }
    }

    pub fn caps(&self) -> &Capabilities {
        &self.caps
    }

    pub fn relay(&self) -> &str {
        &self.relay
    }

    pub fn is_lmtp(&self) -> bool {
        self.greeting.lmtp
    }

    /// Bytes read from the server.
    pub fn receive(&mut self, bytes: &[u8]) {
        self.parser.push(bytes);
    }

    /// The next thing to do; `None` when the machine waits for the caller (after `Ready`,
    /// `StartTls`, `Content`, `ChunkAccepted`, `MessageDone`, `RsetDone`, `Closed` or
    /// `Failed`).
    pub fn poll(&mut self) -> Option<Output> {
        loop {
            if let Some(o) = self.out.pop_front() {
                // Bytes left over when it is our turn answer a command never sent: taking
                // them for the next command's reply would shift every reply after it (and
                // after STARTTLS's 220 they would be plaintext injected into TLS).
                let early = match o {
                    Output::Write { .. }
                    | Output::StartTls
                    | Output::Content(_)
                    | Output::ChunkAccepted => self.parser.has_partial(),
                    _ => false,
                };
                if early {
                    return Some(self.fail("a reply to a command not yet sent".into()));
                }
                return Some(o);
            }
            let next = match &self.state {
                State::Pipelined(t) => t.replies.len(),
                _ => 0,
            };
            let timer = self.state.awaits(next)?;
            match self.parser.next_reply() {
                None => return Some(Output::Read(timer)),
                Some(Err(e)) => return Some(self.fail(e.to_string())),
                Some(Ok(r)) => {
                    self.out.push_back(Output::Received(r.clone()));
                    let state = std::mem::replace(&mut self.state, State::Done);
                    self.state = self.on_reply(state, r);
                }
            }
        }
    }

    fn fail(&mut self, why: String) -> Output {
        self.state = State::Done;
        self.out.clear();
        Output::Failed(SessionError::Protocol(self.relay.clone(), why))
    }

    fn failed(&mut self, e: SessionError) -> State {
        self.out.push_back(Output::Failed(e));
        State::Done
    }

    fn write(&mut self, cmd: &Command, timer: Timer) {
        self.out.push_back(Output::Write {
            bytes: cmd.to_line().into_bytes(),
            timer,
            log: Log::Session,
        });
    }

    fn refused(&mut self, r: Reply) -> State {
        let e = SessionError::Refused(self.relay.clone(), r);
        self.failed(e)
    }

    fn on_reply(&mut self, state: State, r: Reply) -> State {
        match state {
            State::Greeting | State::Lhlo | State::Helo if !r.is_positive() => self.refused(r),
            State::Greeting => self.hello(),
            State::Lhlo => {
                self.caps = Capabilities::from_ehlo(&r);
                self.after_hello()
            }
            State::Ehlo if r.is_positive() => {
                self.caps = Capabilities::from_ehlo(&r);
                self.after_hello()
            }
            State::Ehlo => {
                self.write(
                    &Command::Helo(self.greeting.hostname.clone()),
                    Timer::Greeting,
                );
                State::Helo
            }
            State::Helo => {
                self.caps = Capabilities::default();
                self.after_hello()
            }
            State::StartTls if r.is_positive() => {
                self.out.push_back(Output::StartTls);
                State::Handshake
            }
            // Opportunistic TLS that the server declines (454 and the like, RFC 3207 §4)
            // goes on in plaintext on the same connection, as Postfix's `may` does: the
            // mail is not stranded for want of encryption nobody required. A 421 closes
            // the connection whatever the policy.
            State::StartTls if self.greeting.tls == TlsPolicy::Opportunistic && r.code() != 421 => {
                self.out.push_back(Output::Ready);
                State::Ready
            }
            State::StartTls => {
                let e = SessionError::Tls(self.relay.clone(), format!("STARTTLS refused: {r}"));
                self.failed(e)
            }
            State::Pipelined(mut t) => {
                t.replies.push(r);
                if t.replies.len() < t.expected {
                    State::Pipelined(t)
                } else {
                    self.evaluate(t, true)
                }
            }
            State::Mail(mut t) | State::Rcpt(mut t) => {
                let mail_ok = !t.replies.is_empty() || r.is_positive();
                t.replies.push(r);
                match t.unsent.pop_front().filter(|_| mail_ok) {
                    Some(c) => {
                        self.write(&c, Timer::Rcpt);
                        State::Rcpt(t)
                    }
                    None => self.evaluate(t, false),
                }
            }
            State::Data(t) => self.data_reply(t, Some(r)),
            State::AbortData(results) => {
                self.out.push_back(Output::MessageDone(results));
                State::Ready
            }
            State::Chunk(mut t) => {
                if r.is_positive() {
                    self.out.push_back(Output::ChunkAccepted);
                    State::Content(t)
                } else {
                    let accepted = std::mem::take(&mut t.accepted);
                    self.done(t, &accepted, &r)
                }
            }
            State::DataDone(mut t) => {
                if self.greeting.lmtp {
                    // RFC 2033: one reply per accepted recipient, in order.
                    let i = t.accepted.remove(0);
                    let o = self.outcome(&r);
                    t.results.push((i, o));
                    if t.accepted.is_empty() {
                        self.out.push_back(Output::MessageDone(t.results));
                        State::Ready
                    } else {
                        State::DataDone(t)
                    }
                } else {
                    let accepted = std::mem::take(&mut t.accepted);
                    self.done(t, &accepted, &r)
                }
            }
            State::Rset if r.is_positive() => {
                self.out.push_back(Output::RsetDone);
                State::Ready
            }
            State::Rset => self.refused(r),
            State::Quit => {
                self.out.push_back(Output::Closed);
                State::Done
            }
            s @ (State::Handshake | State::Ready | State::Content(_) | State::Done) => {
                // `poll` reads no reply in these states.
                s
            }
        }
    }

    /// Ends the transaction with `r` as the outcome of `to`.
    fn done(&mut self, mut t: Txn, to: &[u16], r: &Reply) -> State {
        t.results.extend(to.iter().map(|&i| (i, self.outcome(r))));
        self.out.push_back(Output::MessageDone(t.results));
        State::Ready
    }

    fn hello(&mut self) -> State {
        let name = self.greeting.hostname.clone();
        if self.greeting.lmtp {
            self.write(&Command::Lhlo(name), Timer::Greeting);
            State::Lhlo
        } else if !self.greeting.helo {
            // SMTPRC /HELO-: servers that do not insist get no greeting round trip.
            self.caps = Capabilities::default();
            self.after_hello()
        } else {
            self.write(&Command::Ehlo(name), Timer::Greeting);
            State::Ehlo
        }
    }

    fn after_hello(&mut self) -> State {
        let lmtp = self.greeting.lmtp;
        let policy = self.greeting.tls;
        if self.tls {
            // Already upgraded.
        } else if policy != TlsPolicy::None && !lmtp && self.caps.starttls {
            self.write(&Command::StartTls, Timer::Greeting);
            return State::StartTls;
        } else if matches!(policy, TlsPolicy::Required | TlsPolicy::Verify) && !lmtp {
            let e = SessionError::Tls(
                self.relay.clone(),
                "STARTTLS required by policy but not offered".into(),
            );
            return self.failed(e);
        }
        self.out.push_back(Output::Ready);
        State::Ready
    }

    /// The TLS handshake succeeded: anything read before it is forgotten and we introduce
    /// ourselves again.
    pub fn tls_established(&mut self) {
        if matches!(self.state, State::Handshake) {
            self.parser = ReplyParser::new();
            self.tls = true;
            self.caps = Capabilities::default();
            self.state = self.hello();
        }
    }

    /// Starts one transaction; the caller sends RSET (`rset`) before the next one.
    pub fn send(&mut self, msg: &Envelope) {
        if !matches!(self.state, State::Ready) {
            self.out.push_back(Output::Failed(SessionError::Protocol(
                self.relay.clone(),
                "a message was offered while the session was busy".into(),
            )));
            self.state = State::Done;
            return;
        }
        let fail_all = |(status, text): (EnhancedCode, String)| -> Vec<(u16, RcptOutcome)> {
            msg.recipients
                .iter()
                .map(|r| (r.index, RcptOutcome::failed(status, text.clone())))
                .collect()
        };
        let refusal = if let Some(limit) = self.caps.size.filter(|&n| n > 0)
            && msg.size > limit
        {
            Some(refused_here(
                552,
                EnhancedCode::new(5, 3, 4),
                format!(
                    "message size {} exceeds the limit of {limit} announced by {}",
                    msg.size, self.relay
                ),
            ))
        } else if msg.smtputf8 && !self.caps.smtputf8 {
            Some(refused_here(
                553,
                EnhancedCode::new(5, 6, 7),
                format!(
                    "{} does not support SMTPUTF8, which this message needs",
                    self.relay
                ),
            ))
        } else if msg.body == BodyType::BinaryMime && !(self.caps.binarymime && self.caps.chunking)
        {
            Some(refused_here(
                554,
                EnhancedCode::new(5, 6, 3),
                format!("{} does not support BINARYMIME", self.relay),
            ))
        } else {
            None
        };
        let from = if msg.sender.is_empty() {
            Ok(ReversePath::Null)
        } else {
            Mailbox::parse(&msg.sender).map(ReversePath::Mailbox)
        };
        let from = match (refusal, from) {
            (Some(why), _) => Err(why),
            (None, Err(_)) => Err(refused_here(
                553,
                EnhancedCode::new(5, 1, 7),
                format!("bad sender address {}", msg.sender),
            )),
            (None, Ok(f)) => Ok(f),
        };
        let from = match from {
            Ok(f) => f,
            Err(why) => {
                self.out.push_back(Output::MessageDone(fail_all(why)));
                return;
            }
        };
        let dsn = self.caps.dsn;
        let params = MailParams {
            size: self.caps.size.map(|_| msg.size),
            body: match msg.body {
                BodyType::EightBitMime if self.caps.eightbitmime => {
                    Some(smtp_proto::BodyType::EightBitMime)
                }
                BodyType::BinaryMime => Some(smtp_proto::BodyType::BinaryMime),
                _ => None,
            },
            smtputf8: msg.smtputf8,
            ret: msg.ret.filter(|_| dsn).map(|r| match r {
                DsnRet::Full => Ret::Full,
                DsnRet::Headers => Ret::Hdrs,
            }),
            envid: msg.envid.clone().filter(|_| dsn),
            auth: None,
        };
        let mail = Command::Mail { from, params };
        let mut t = Txn {
            chunking: msg.body == BodyType::BinaryMime,
            unsent: VecDeque::new(),
            rcpts: Vec::new(),
            replies: Vec::new(),
            expected: 0,
            accepted: Vec::new(),
            results: Vec::new(),
        };
        for r in &msg.recipients {
            let Ok(m) = Mailbox::parse(&r.address) else {
                let (status, text) = refused_here(
                    553,
                    EnhancedCode::new(5, 1, 3),
                    "bad recipient address".into(),
                );
                t.results.push((r.index, RcptOutcome::failed(status, text)));
                continue;
            };
            let params = if dsn {
                RcptParams {
                    notify: Some(WireNotify {
                        never: r.notify.never,
                        success: r.notify.success,
                        failure: r.notify.failure,
                        delay: r.notify.delay,
                    })
                    .filter(|n| n.never || n.success || n.failure || n.delay),
                    orcpt: r
                        .orcpt
                        .as_deref()
                        .and_then(|o| o.split_once(';').map(|(k, a)| (k.to_owned(), a.to_owned()))),
                }
            } else {
                RcptParams::default()
            };
            t.rcpts.push(r.index);
            t.unsent.push_back(Command::Rcpt {
                to: ForwardPath::Mailbox(m),
                params,
            });
        }
        if self.caps.pipelining {
            // MAIL, RCPT..., DATA in one write; BDAT waits for the RCPT replies.
            let mut batch = mail.to_line();
            for c in t.unsent.drain(..) {
                batch.push_str(&c.to_line());
            }
            if !t.chunking {
                batch.push_str(&Command::Data.to_line());
            }
            t.expected = 1 + t.rcpts.len() + usize::from(!t.chunking);
            self.out.push_back(Output::Write {
                bytes: batch.into_bytes(),
                timer: Timer::Mail,
                log: Log::Message,
            });
            self.state = State::Pipelined(t);
        } else {
            self.write(&mail, Timer::Mail);
            self.state = State::Mail(t);
        }
    }

    /// All MAIL and RCPT replies (and a pipelined DATA's) are in.
    fn evaluate(&mut self, mut t: Txn, pipelined: bool) -> State {
        let mail = t.replies[0].clone();
        let data = if pipelined && !t.chunking {
            t.replies.pop()
        } else {
            None
        };
        if !mail.is_positive() {
            let rcpts = std::mem::take(&mut t.rcpts);
            t.results
                .extend(rcpts.iter().map(|&i| (i, self.outcome(&mail))));
            return self.abort_data(t.results, data.as_ref());
        }
        for (k, &i) in t.rcpts.iter().enumerate() {
            let r = &t.replies[k + 1];
            if r.is_positive() {
                t.accepted.push(i);
            } else {
                let o = self.outcome(r);
                t.results.push((i, o));
            }
        }
        if t.chunking {
            self.data_reply(t, None)
        } else if pipelined {
            self.data_reply(t, data)
        } else if t.accepted.is_empty() {
            self.data_reply(t, None)
        } else {
            self.write(&Command::Data, Timer::Data);
            State::Data(t)
        }
    }

    fn data_reply(&mut self, t: Txn, data: Option<Reply>) -> State {
        if t.accepted.is_empty() {
            return self.abort_data(t.results, data.as_ref());
        }
        if let Some(d) = data
            && d.code() != 354
        {
            let accepted = t.accepted.clone();
            return self.done(t, &accepted, &d);
        }
        self.out.push_back(Output::Content(if t.chunking {
            Framing::Bdat
        } else {
            Framing::Data
        }));
        State::Content(t)
    }

    /// A pipelined DATA that got 354 although nothing was accepted must still be ended with
    /// an empty message (RFC 2920 §3.1), or the server would take our RSET as text.
    fn abort_data(&mut self, results: Vec<(u16, RcptOutcome)>, data: Option<&Reply>) -> State {
        if self.caps.pipelining && data.is_some_and(|r| r.code() == 354) {
            self.out.push_back(Output::Write {
                bytes: b".\r\n".to_vec(),
                timer: Timer::DataBlock,
                log: Log::Quiet,
            });
            return State::AbortData(results);
        }
        self.out.push_back(Output::MessageDone(results));
        State::Ready
    }

    /// One BDAT chunk was written: its reply is awaited.
    pub fn chunk_sent(&mut self) {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Content(t) if t.chunking => self.state = State::Chunk(t),
            other => self.misuse(other, "a BDAT chunk outside BDAT"),
        }
    }

    /// The content's end (`.` or `BDAT 0 LAST`) was written: the final replies are awaited.
    pub fn content_sent(&mut self) {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Content(t) => self.state = State::DataDone(t),
            other => self.misuse(other, "content outside a transaction"),
        }
    }

    fn misuse(&mut self, state: State, what: &str) {
        self.state = state;
        let f = self.fail(what.into());
        self.out.push_back(f);
    }

    /// Ends the transaction so the next can begin.
    pub fn rset(&mut self) {
        if matches!(self.state, State::Ready) {
            self.write(&Command::Rset, Timer::Mail);
            self.state = State::Rset;
        } else {
            let s = std::mem::replace(&mut self.state, State::Done);
            self.misuse(s, "RSET while a reply is awaited");
        }
    }

    /// Says goodbye; `Closed` follows the server's reply.
    pub fn quit(&mut self) {
        // Whatever the server said before no longer matters: only QUIT's reply does.
        self.parser = ReplyParser::new();
        self.out.clear();
        self.write(&Command::Quit, Timer::Quit);
        self.state = State::Quit;
    }

    fn outcome(&self, r: &Reply) -> RcptOutcome {
        // RFC 3461 §5.2: an LMTP server delivers; a DSN-capable relay reports success
        // itself; any other relay leaves us to say "relayed".
        let handoff = if self.greeting.lmtp {
            Handoff::Final
        } else if self.caps.dsn {
            Handoff::DsnCapable
        } else {
            Handoff::Relayed
        };
        RcptOutcome::from_reply(self.relay.clone(), r.clone(), handoff)
    }
}

/// A refusal of our own, worded as the reply the next hop would have given, since the
/// recipient's last error and the DSN's diagnostic are read as SMTP replies.
fn refused_here(code: u16, status: EnhancedCode, text: String) -> (EnhancedCode, String) {
    (status, format!("{code} {status} {text}"))
}
