//! The commands outside content and RCPT (`rcpt.rs`): HELO/EHLO, MAIL, RSET, STARTTLS and
//! the small ones, each checked against the state it arrives in, and the answers that resume
//! a command the driver had to act for (milters, the spool's free space, content, commit).

use smtp_proto::{Command, Frame, MailParams, Reply, ReversePath};
use tracing::{debug, info, warn};

use super::content::Opening;
use super::replies;
use super::state::{State, Txn};
use super::{Action, Answer, Commit, Machine, MilterCall, ReadEnd, ReadKind, Verdict};

/// What the machine waits for, with what it needs to go on.
pub(super) enum Wait {
    Read(ReadKind),
    MilterConnect {
        name: String,
        ok: Reply,
    },
    MilterHelo {
        ok: Reply,
    },
    FreeSpace {
        from: ReversePath,
        params: MailParams,
        args: Vec<String>,
    },
    MilterMail {
        ok: Reply,
    },
    Local(super::rcpt::Rcpt),
    MilterRcpt(super::rcpt::Rcpt),
    Opened(Opening),
    Written,
    MessageVerdict(Box<Commit>),
    Committed,
}

impl Machine {
    pub(super) fn command_step(&mut self) -> Option<Action> {
        match self.framer.next(&mut self.input) {
            Frame::Line(line) => self.command(&line),
            Frame::TooLong => {
                self.push(&replies::LINE_TOO_LONG.reply());
                self.error();
                None
            }
            Frame::Incomplete => {
                if self.shutdown {
                    self.push(&replies::shutting_down(&self.set.hostname));
                    self.close();
                    return None;
                }
                self.read(ReadKind::Command)
            }
        }
    }

    fn command(&mut self, line: &[u8]) -> Option<Action> {
        if self.shutdown {
            self.push(&replies::shutting_down(&self.set.hostname));
            self.close();
            return None;
        }
        let cmd = match Command::parse(line) {
            Ok(c) => c,
            Err(e) => {
                self.push(&e.reply());
                self.error();
                return None;
            }
        };
        match cmd {
            Command::Ehlo(name) => return self.hello(name, true),
            Command::Helo(name) => return self.hello(name, false),
            Command::Lhlo(_) => self.refuse(replies::NOT_LMTP.reply()),
            Command::Mail { from, params } => return self.mail(from, params),
            Command::Rcpt { to, params } => return self.rcpt(to, params),
            Command::Data => return self.data(),
            Command::Bdat { size, last } => return self.bdat(size, last),
            Command::Rset => {
                if self.end_txn() && self.milters_connected {
                    self.queue_milter(MilterCall::Abort);
                }
                self.push(&replies::OK.reply());
            }
            Command::Noop(_) => self.push(&replies::OK.reply()),
            Command::Quit => {
                self.push(&replies::closing(&self.set.hostname));
                self.close();
            }
            Command::Vrfy(_) => self.push(&replies::VRFY.reply()),
            Command::Expn(_) => self.refuse(replies::NO_EXPN.reply()),
            Command::Help(_) => self.push(&replies::HELP.reply()),
            Command::StartTls => return self.starttls(),
            Command::Auth { .. } => self.refuse(replies::NO_AUTH.reply()),
        }
        None
    }

    /// Continues what the answered action was for.
    pub(super) fn resume(&mut self, w: Wait, a: Answer) {
        match (w, a) {
            (Wait::Read(kind), Answer::Read(r)) => self.read_done(kind, r),
            (Wait::MilterConnect { name, ok }, Answer::Verdict(v)) => {
                self.milters_connected = true;
                match self.refusal(v) {
                    Some(r) => {
                        self.milter_refusal = Some(r.clone());
                        self.refuse(r);
                    }
                    None => self.milter_helo(name, ok),
                }
            }
            (Wait::MilterHelo { ok }, Answer::Verdict(v)) => match self.refusal(v) {
                Some(r) => {
                    self.milter_refusal = Some(r.clone());
                    self.refuse(r);
                }
                None => self.push(&ok),
            },
            (Wait::FreeSpace { from, params, args }, Answer::FreeSpace(free)) => {
                self.mail_space(from, params, args, free)
            }
            (Wait::MilterMail { ok }, Answer::Verdict(v)) => self.mail_milter(ok, v),
            (Wait::Local(rcpt), Answer::Local { targets, owner }) => {
                self.rcpt_local(rcpt, targets, owner)
            }
            (Wait::MilterRcpt(rcpt), Answer::Verdict(v)) => self.rcpt_milter_done(rcpt, v),
            (Wait::Opened(o), Answer::Spool(r)) => self.opened(o, r),
            (Wait::Written, Answer::Spool(r)) => self.written(r),
            (Wait::MessageVerdict(c), Answer::MessageVerdict(r)) => self.message_verdict(c, r),
            (Wait::Committed, Answer::Committed(r)) => {
                let r = match r {
                    Ok(a) => a.reply(),
                    Err(e) => e.reply(),
                };
                self.push(&r);
            }
            (_, a) => {
                debug_assert!(false, "an answer to another action: {a:?}");
                self.close();
            }
        }
    }

    fn read_done(&mut self, kind: ReadKind, r: Result<usize, ReadEnd>) {
        match (r, kind) {
            (Ok(_), _) => {
                if let State::Data(_, d) = &mut self.state {
                    d.fresh = true;
                }
            }
            (Err(ReadEnd::Timeout), ReadKind::Command) => {
                self.push(&replies::command_timeout(&self.set.hostname));
                debug!(session = %self.session, "command timeout");
                self.close();
            }
            (Err(ReadEnd::Timeout), ReadKind::Content) => {
                self.push(&replies::DATA_TIMEOUT.reply());
                self.close();
            }
            (Err(ReadEnd::Io(e)), ReadKind::Command) => {
                debug!(session = %self.session, "connection error: {e}");
                self.close();
            }
            (Err(ReadEnd::Shutdown), _) => {
                self.push(&replies::shutting_down(&self.set.hostname));
                self.close();
            }
            (Err(_), _) => self.close(),
        }
    }

    /// HELO/EHLO, then the milters' connect and helo stages.
    fn hello(&mut self, name: String, esmtp: bool) -> Option<Action> {
        if let Some(r) = self.milter_refusal.clone() {
            self.refuse(r);
            return None;
        }
        self.end_txn();
        let ok = if esmtp {
            let starttls = self.set.starttls && self.tls.is_none();
            replies::ehlo(&self.set.hostname, self.set.max_message_size, starttls)
        } else {
            replies::helo(&self.set.hostname)
        };
        self.helo = Some(name.clone());
        self.esmtp = esmtp;
        if !self.set.milters {
            self.push(&ok);
            return None;
        }
        if !self.milters_connected {
            self.wait = Some(Wait::MilterConnect { name, ok });
            return Some(Action::Milter(MilterCall::Connect));
        }
        self.milter_helo(name, ok);
        None
    }

    fn milter_helo(&mut self, name: String, ok: Reply) {
        self.wait = Some(Wait::MilterHelo { ok });
        let tls = self.tls.clone();
        self.queue_milter(MilterCall::Helo { name, tls });
    }

    fn mail(&mut self, from: ReversePath, params: MailParams) -> Option<Action> {
        if let Some(r) = self.milter_refusal.clone() {
            self.refuse(r);
            return None;
        }
        let args: Vec<String> = params
            .to_string()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let refused = if self.helo.is_none() {
            Some(replies::NEED_HELO)
        } else if self.txn().is_some() {
            Some(replies::NESTED_MAIL)
        } else if params.size.is_some_and(|s| s > self.set.max_message_size) {
            Some(replies::TOO_BIG)
        } else if matches!(&from, ReversePath::Mailbox(m) if m.needs_smtputf8() && !params.smtputf8)
        {
            Some(replies::SENDER_NEEDS_SMTPUTF8)
        } else if !self.esmtp && params != MailParams::default() {
            Some(replies::PARAMS_NEED_EHLO)
        } else {
            None
        };
        if let Some(r) = refused {
            self.refuse(r.reply());
            return None;
        }
        self.wait = Some(Wait::FreeSpace { from, params, args });
        Some(Action::CheckSpace)
    }

    fn mail_space(
        &mut self,
        from: ReversePath,
        params: MailParams,
        args: Vec<String>,
        free: Option<u64>,
    ) {
        if let Some(free) = free
            && free < self.set.min_free_space
        {
            warn!(session = %self.session, free, "spool disk short of space: refusing mail");
            self.refuse(replies::NO_SPACE.reply());
            return;
        }
        let txn = Txn::new((self.ids)(), from, params);
        if !self.milters_connected {
            self.state = State::Mail(txn);
            self.push(&replies::SENDER_OK.reply());
            return;
        }
        let call = MilterCall::Mail {
            from: txn.sender_text(),
            args,
            queue_id: txn.id.to_string(),
        };
        self.state = State::Mail(txn);
        self.wait = Some(Wait::MilterMail {
            ok: replies::SENDER_OK.reply(),
        });
        self.queue_milter(call);
    }

    fn mail_milter(&mut self, ok: Reply, v: Verdict) {
        if v == Verdict::Discard
            && let Some(t) = self.txn_mut()
        {
            info!(queue_id = %t.id, "a milter discards the message at MAIL");
            t.discarded = true;
        }
        match self.refusal(v) {
            Some(r) => {
                self.end_txn();
                self.queue_milter(MilterCall::Abort);
                self.refuse(r);
            }
            None => self.push(&ok),
        }
    }

    fn starttls(&mut self) -> Option<Action> {
        if self.tls.is_some() {
            self.push(&replies::TLS_ACTIVE.reply());
            return None;
        }
        if !self.set.starttls {
            self.push(&replies::NO_STARTTLS.reply());
            return None;
        }
        // Anything pipelined after STARTTLS was sent in the clear and must not be executed
        // inside the TLS session (CVE-2011-0411).
        self.input.clear();
        self.push(&replies::TLS_READY.reply());
        self.helo = None;
        self.esmtp = false;
        self.end_txn();
        Some(Action::StartTls)
    }

    pub(super) fn txn(&self) -> Option<&Txn> {
        match &self.state {
            State::Mail(t) | State::Rcpt(t) | State::Data(t, _) | State::Bdat(t, _) => Some(t),
            _ => None,
        }
    }

    pub(super) fn txn_mut(&mut self) -> Option<&mut Txn> {
        match &mut self.state {
            State::Mail(t) | State::Rcpt(t) | State::Data(t, _) | State::Bdat(t, _) => Some(t),
            _ => None,
        }
    }
}
