//! The SMTP server session without I/O: RFC 5321 §4.1.4 sequencing, limits, relay policy,
//! error counting and the content policy, as a machine the driver (`session.rs`) feeds.
//!
//! The driver reads client bytes into [`Machine::input`], asks [`Machine::poll`] what to do,
//! performs that [`Action`] (a read, a milter stage, a spool write, a commit…) and hands
//! the result back with [`Machine::answer`]. Replies collect in [`Machine::output`] and are
//! written only before the machine waits for input, so pipelined commands get their
//! replies in one write (RFC 2920). Everything here is a pure function of the bytes and
//! the answers: transcripts of client bytes and scripted answers test it in memory.

mod commands;
mod content;
mod rcpt;
pub mod replies;
pub mod state;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use cleanup::{Accepted, CleanupError, Origin, SmtpTrace};
use smtp_proto::{CommandFramer, Reply};
use spool::{Envelope, SpoolError, TxnId};
use tracing::info;

pub use state::{ContentError, State};

/// What a session takes from the configuration and its connection, fixed at its start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub hostname: String,
    pub banner: String,
    pub max_errors: u32,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub min_free_space: u64,
    pub max_hops: usize,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub local_domains: Vec<String>,
    pub relay_domains: Vec<String>,
    /// The client is in the relay networks.
    pub trusted: bool,
    /// `[[milter]]`s are configured: they are connected at the first HELO/EHLO.
    pub milters: bool,
    /// STARTTLS can be offered (a certificate is configured).
    pub starttls: bool,
    pub peer: SocketAddr,
}

impl Settings {
    pub fn new(cfg: &config::Config, peer: SocketAddr, starttls: bool) -> Self {
        let s = &cfg.smtp;
        Settings {
            hostname: cfg.hostname.clone(),
            banner: s.banner.clone(),
            max_errors: s.max_errors,
            max_message_size: s.max_message_size,
            max_recipients: s.max_recipients,
            min_free_space: s.min_free_space,
            max_hops: s.max_hops,
            command_timeout: s.command_timeout,
            data_timeout: s.data_timeout,
            local_domains: cfg.local.domains.clone(),
            relay_domains: s.relay_domains.clone(),
            trusted: s.relay_networks.iter().any(|n| n.contains(peer.ip())),
            milters: !cfg.milters.is_empty(),
            starttls,
            peer,
        }
    }
}

/// Which timeout a read runs under, and whether a shutdown may interrupt it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadKind {
    /// Waiting for a command: `command_timeout`; a shutdown ends the wait.
    Command,
    /// Inside DATA or a BDAT chunk: `data_timeout`; the message is read to its end.
    Content,
}

/// What the milters decided about one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    Reject(Reply),
    Tempfail(Reply),
    /// Accept and throw away.
    Discard,
}

/// One milter stage the driver runs on the session's milter connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MilterCall {
    /// Connect to every milter and run the connect stage: answered with a verdict.
    Connect,
    Helo {
        name: String,
        tls: Option<(String, String)>,
    },
    Mail {
        from: String,
        args: Vec<String>,
        queue_id: String,
    },
    Rcpt(String),
    /// End of message: headers and body read back from the content, then end of message.
    /// The driver keeps the changes asked for until [`Action::Commit`].
    Message {
        queue_id: String,
    },
    /// The transaction is over: no answer.
    Abort,
}

/// A finished message for cleanup: the content is the one [`Action::OpenContent`] opened.
#[derive(Debug)]
pub struct Commit {
    /// `arrival` is the driver's to stamp: the machine has no clock.
    pub env: Envelope,
    pub owners: Vec<(String, String)>,
    pub origin: Origin,
    /// `Received:` fields the client sent.
    pub hops: usize,
}

/// What the driver must do next. The ones marked "answer" wait for [`Machine::answer`].
#[derive(Debug)]
pub enum Action {
    /// Write [`Machine::output`], then read into [`Machine::input`]; answer `Read`.
    Read(ReadKind, Duration),
    /// Answer `Verdict` (`MessageVerdict` for `Message`; nothing for `Abort`).
    Milter(MilterCall),
    /// Free octets in the spool's file system: answer `FreeSpace`.
    CheckSpace,
    /// A local part in a local domain: answer `Local` (aliases expanded, list owner).
    CheckLocal(String),
    /// Open the transaction's content with cleanup's trace line: answer `Spool`.
    OpenContent {
        id: TxnId,
        origin: Origin,
        single_recipient: Option<String>,
    },
    /// Append [`Machine::content`] to the open content: answer `Spool`.
    WriteContent,
    /// The open content will not be committed: drop it. No answer.
    DropContent,
    /// Hand the message to cleanup: answer `Committed`.
    Commit(Box<Commit>),
    /// Write [`Machine::output`], run the TLS handshake, then [`Machine::tls_started`].
    StartTls,
    /// Write [`Machine::output`] and end the session.
    Close,
}

/// How a read ended without data.
#[derive(Debug)]
pub enum ReadEnd {
    Timeout,
    Closed,
    Io(std::io::Error),
    /// The daemon is shutting down (only while waiting for a command).
    Shutdown,
}

/// The result of the action the machine waits for.
#[derive(Debug)]
pub enum Answer {
    Read(Result<usize, ReadEnd>),
    Verdict(Verdict),
    MessageVerdict(Result<Verdict, SpoolError>),
    /// `None`: the free space could not be read (MAIL goes ahead).
    FreeSpace(Option<u64>),
    Local {
        targets: Result<Vec<String>, Reply>,
        /// The owner of the list (an `owner-NAME` alias), if it is one.
        owner: Option<String>,
    },
    Spool(Result<(), SpoolError>),
    Committed(Result<Accepted, CleanupError>),
}

/// Where the bytes of [`Action::WriteContent`] are.
#[derive(Debug, Clone, Copy)]
enum Pending {
    Decoded,
    Input(usize),
}

/// The session machine. See the module documentation for the driver's part.
pub struct Machine {
    set: Settings,
    /// Names the session in logs before any transaction has a queue id.
    session: TxnId,
    ids: Box<dyn FnMut() -> TxnId + Send>,
    state: State,
    helo: Option<String>,
    esmtp: bool,
    tls: Option<(String, String)>,
    errors: u32,
    milters_connected: bool,
    /// A milter refused the connection: every later HELO and MAIL gets this.
    milter_refusal: Option<Reply>,
    shutdown: bool,
    /// An open content writer exists on the driver's side.
    content_open: bool,
    framer: CommandFramer,
    input: Vec<u8>,
    output: Vec<u8>,
    decoded: Vec<u8>,
    pending: Option<Pending>,
    wait: Option<commands::Wait>,
    queued: VecDeque<Action>,
}

impl Machine {
    /// `ids` hands out queue ids, one per MAIL.
    pub fn new(set: Settings, session: TxnId, ids: Box<dyn FnMut() -> TxnId + Send>) -> Self {
        Machine {
            set,
            session,
            ids,
            state: State::Greeting,
            helo: None,
            esmtp: false,
            tls: None,
            errors: 0,
            milters_connected: false,
            milter_refusal: None,
            shutdown: false,
            content_open: false,
            framer: CommandFramer::new(512),
            input: Vec::with_capacity(4096),
            output: Vec::with_capacity(1024),
            decoded: Vec::new(),
            pending: None,
            wait: None,
            queued: VecDeque::new(),
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// The HELO/EHLO name, once given (and until STARTTLS).
    pub fn helo(&self) -> Option<&str> {
        self.helo.as_deref()
    }

    /// Client bytes not yet consumed; the driver reads into it.
    pub fn input(&mut self) -> &mut Vec<u8> {
        &mut self.input
    }

    /// Replies not yet written; the driver writes and clears it.
    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.output
    }

    /// Both buffers at once, for a driver that writes and then reads.
    pub fn buffers(&mut self) -> (&mut Vec<u8>, &mut Vec<u8>) {
        (&mut self.input, &mut self.output)
    }

    /// The bytes [`Action::WriteContent`] asks to be written.
    pub fn content(&self) -> &[u8] {
        match self.pending {
            Some(Pending::Decoded) => &self.decoded,
            Some(Pending::Input(n)) => &self.input[..n],
            None => &[],
        }
    }

    /// The daemon is shutting down: the next command, or the next wait for one, gets 421.
    pub fn shutdown(&mut self) {
        self.shutdown = true;
    }

    /// The TLS handshake after [`Action::StartTls`] succeeded: version and cipher suite.
    pub fn tls_started(&mut self, version: String, cipher: String) {
        self.tls = Some((version, cipher));
    }

    /// Runs until the driver has something to do.
    pub fn poll(&mut self) -> Action {
        loop {
            if let Some(a) = self.queued.pop_front() {
                return a;
            }
            if self.wait.is_some() {
                // A driver that does not answer: nothing sensible can follow.
                debug_assert!(false, "poll() called while an answer is due");
                self.state = State::Closed;
                return Action::Close;
            }
            if let Some(a) = self.step() {
                self.queued.push_back(a);
            }
        }
    }

    /// The result of the action the machine waits for.
    pub fn answer(&mut self, a: Answer) {
        let Some(w) = self.wait.take() else {
            debug_assert!(false, "an answer nobody asked for: {a:?}");
            return;
        };
        self.resume(w, a);
    }

    /// One step: `Some` when the driver must act.
    fn step(&mut self) -> Option<Action> {
        match &self.state {
            State::Greeting => {
                let r = replies::greeting(&self.set.hostname, &self.set.banner);
                self.push(&r);
                self.state = State::Ready;
                None
            }
            State::Closed => Some(Action::Close),
            State::Data(..) => self.data_step(),
            State::Bdat(_, c) if c.reading => self.chunk_step(),
            State::SkipChunk { .. } => self.skip_step(),
            _ => self.command_step(),
        }
    }

    fn push(&mut self, r: &Reply) {
        r.write_to(&mut self.output);
    }

    /// Waits for input under `kind`'s timeout.
    fn read(&mut self, kind: ReadKind) -> Option<Action> {
        self.wait = Some(commands::Wait::Read(kind));
        let t = match kind {
            ReadKind::Command => self.set.command_timeout,
            ReadKind::Content => self.set.data_timeout,
        };
        Some(Action::Read(kind, t))
    }

    /// Ends the session after the replies pushed so far.
    fn close(&mut self) {
        self.end_txn();
        self.state = State::Closed;
    }

    /// Counts a protocol error; true when the session has had too many and is closed.
    fn error(&mut self) -> bool {
        self.errors += 1;
        if self.errors >= self.set.max_errors {
            let r = replies::too_many_errors(&self.set.hostname);
            self.push(&r);
            self.close();
            return true;
        }
        false
    }

    /// Sends a refusal; those of 500 and up count as errors, except a size refusal (a
    /// policy mismatch, not a misbehaving client).
    fn refuse(&mut self, r: Reply) {
        self.push(&r);
        if r.code() >= 500 && r.code() != 552 {
            self.error();
        }
    }

    /// Leaves the transaction (if any) without a milter abort, dropping its content.
    fn end_txn(&mut self) -> bool {
        let had = matches!(
            self.state,
            State::Mail(_) | State::Rcpt(_) | State::Data(..) | State::Bdat(..)
        );
        if had {
            self.state = State::Ready;
        }
        if self.content_open {
            self.content_open = false;
            self.queued.push_back(Action::DropContent);
        }
        had
    }

    /// A milter verdict as the reply to send, if it refuses.
    fn refusal(&self, v: Verdict) -> Option<Reply> {
        match v {
            Verdict::Reject(r) | Verdict::Tempfail(r) => {
                info!(session = %self.session, client = %self.set.peer, reply = %r.to_string().trim_end(), "refused by a milter");
                Some(r)
            }
            Verdict::Continue | Verdict::Discard => None,
        }
    }

    /// How the client reached us, for the trace line cleanup writes.
    fn origin(&self) -> Origin {
        Origin::Smtp(SmtpTrace {
            helo: self.helo.clone(),
            client_ip: self.set.peer.ip(),
            esmtp: self.esmtp,
            tls: self.tls.clone(),
        })
    }

    fn queue_milter(&mut self, call: MilterCall) {
        self.queued.push_back(Action::Milter(call));
    }
}
