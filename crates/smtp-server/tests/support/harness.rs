//! A driver for the session machine in memory: client bytes in the chunks a socket would
//! deliver them, scripted answers for every action, and a record of what came out (reply
//! bytes, each write the driver would make, the actions asked for, the content written).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use cleanup::{Accepted, CleanupError};
use smtp_proto::Reply;
use smtp_server::machine::{
    Action, Answer, Commit, Machine, MilterCall, ReadEnd, Settings, Verdict,
};
use spool::{SpoolError, TxnId};

pub const HOST: &str = "mx.example";
pub const GREETING: &str = "220 mx.example ESMTP postrider\r\n";

/// The session id; MAIL's queue ids count up from [`FIRST_ID`].
pub const SESSION: TxnId = TxnId(1);
pub const FIRST_ID: u64 = 0x100;

pub fn id(n: u64) -> String {
    TxnId(FIRST_ID + n).to_string()
}

pub fn settings() -> Settings {
    Settings {
        hostname: HOST.into(),
        banner: "ESMTP postrider".into(),
        max_errors: 10,
        max_message_size: 10_000,
        max_recipients: 3,
        min_free_space: 1000,
        max_hops: 50,
        command_timeout: Duration::from_secs(300),
        data_timeout: Duration::from_secs(600),
        local_domains: vec!["example.org".into()],
        relay_domains: vec!["partner.test".into()],
        trusted: false,
        milters: false,
        starttls: false,
        peer: "192.0.2.7:40000".parse::<SocketAddr>().unwrap(),
    }
}

pub fn machine(set: Settings) -> Machine {
    let mut n = FIRST_ID;
    Machine::new(
        set,
        SESSION,
        Box::new(move || {
            n += 1;
            TxnId(n)
        }),
    )
}

/// The EHLO reply for [`settings`], with or without STARTTLS.
pub fn ehlo(size: u64, starttls: bool) -> String {
    let mut s = format!(
        "250-mx.example\r\n250-PIPELINING\r\n250-SIZE {size}\r\n250-8BITMIME\r\n\
         250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250-DSN\r\n250-CHUNKING\r\n"
    );
    s.push_str(if starttls {
        "250-BINARYMIME\r\n250 STARTTLS\r\n"
    } else {
        "250 BINARYMIME\r\n"
    });
    s
}

/// How a spool operation fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fail {
    NoSpace,
    Io,
}

pub fn spool_error(f: Fail) -> SpoolError {
    SpoolError::Write {
        no_space: f == Fail::NoSpace,
        message: "scripted".into(),
    }
}

type LocalFn = Box<dyn FnMut(&str) -> (Result<Vec<String>, Reply>, Option<String>)>;
type MilterFn = Box<dyn FnMut(&MilterCall) -> Verdict>;

/// The scripted answers, and what the machine asked for.
pub struct World {
    pub free: Option<u64>,
    pub local: LocalFn,
    pub milter: MilterFn,
    pub open_fails: Option<Fail>,
    /// The write after this many successful ones fails.
    pub write_fails_after: Option<(usize, Fail)>,
    pub commit_fails: Option<Fail>,
    pub writes: usize,
    /// The daemon shuts down as this read (counted from 0) comes in.
    pub shutdown_at_read: Option<usize>,
    /// The most unread input the machine held when it asked for more.
    pub max_unread: usize,
    /// One line per action, in order.
    pub actions: Vec<String>,
    /// The content written since it was last opened.
    pub content: Vec<u8>,
    pub committed: Vec<(Commit, Vec<u8>)>,
}

impl Default for World {
    fn default() -> Self {
        World {
            free: Some(1 << 30),
            local: Box::new(|lp| match lp {
                "nobody" => (Err(smtp_server::machine::replies::user_unknown(lp)), None),
                "broken" => (
                    Err(smtp_server::machine::replies::LOOKUP_FAILED.reply()),
                    None,
                ),
                "list" => (
                    Ok(vec!["ann".into(), "bob@partner.test".into()]),
                    Some("owner-list".into()),
                ),
                _ => (Ok(vec![lp.to_string()]), None),
            }),
            milter: Box::new(|_| Verdict::Continue),
            open_fails: None,
            write_fails_after: None,
            commit_fails: None,
            writes: 0,
            shutdown_at_read: None,
            max_unread: 0,
            actions: Vec::new(),
            content: Vec::new(),
            committed: Vec::new(),
        }
    }
}

/// What a run produced.
#[derive(Debug, Default)]
pub struct Run {
    /// Every reply byte, in order.
    pub out: Vec<u8>,
    /// The writes a driver would make: one per wait for input, and one at the end.
    pub batches: Vec<Vec<u8>>,
    pub closed: bool,
}

impl Run {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.out).into_owned()
    }
}

fn flush(m: &mut Machine, run: &mut Run) {
    let out = std::mem::take(m.output());
    if !out.is_empty() {
        run.out.extend_from_slice(&out);
        run.batches.push(out);
    }
}

/// Feeds `chunks` one read at a time; stops when the machine closes or wants input that
/// is not there. `end` answers that last read (a timeout, the client gone), if given.
pub fn drive(m: &mut Machine, w: &mut World, chunks: &[&[u8]], end: Option<ReadEnd>) -> Run {
    let mut run = Run::default();
    let mut chunks = chunks.iter().enumerate();
    let mut end = end;
    loop {
        match m.poll() {
            Action::Read(..) => {
                flush(m, &mut run);
                w.max_unread = w.max_unread.max(m.input().len());
                match chunks.next() {
                    Some((i, c)) => {
                        if w.shutdown_at_read == Some(i) {
                            m.shutdown();
                        }
                        m.input().extend_from_slice(c);
                        m.answer(Answer::Read(Ok(c.len())));
                    }
                    None => match end.take() {
                        Some(e) => m.answer(Answer::Read(Err(e))),
                        None => return run,
                    },
                }
            }
            Action::Milter(call) => {
                w.actions.push(format!("milter {call:?}"));
                let v = (w.milter)(&call);
                match call {
                    MilterCall::Abort => {}
                    MilterCall::Message { .. } => m.answer(Answer::MessageVerdict(Ok(v))),
                    _ => m.answer(Answer::Verdict(v)),
                }
            }
            Action::CheckSpace => {
                w.actions.push("space".into());
                m.answer(Answer::FreeSpace(w.free));
            }
            Action::CheckLocal(lp) => {
                w.actions.push(format!("local {lp}"));
                let (targets, owner) = (w.local)(&lp);
                m.answer(Answer::Local { targets, owner });
            }
            Action::OpenContent { id, .. } => {
                w.actions.push(format!("open {id}"));
                w.content.clear();
                m.answer(Answer::Spool(
                    w.open_fails.map_or(Ok(()), |f| Err(spool_error(f))),
                ));
            }
            Action::WriteContent => {
                let fail = w
                    .write_fails_after
                    .filter(|(n, _)| w.writes >= *n)
                    .map(|(_, f)| f);
                w.writes += 1;
                let r = match fail {
                    Some(f) => Err(spool_error(f)),
                    None => {
                        w.content.extend_from_slice(m.content());
                        Ok(())
                    }
                };
                m.answer(Answer::Spool(r));
            }
            Action::DropContent => {
                w.actions.push("drop".into());
                w.content.clear();
            }
            Action::Commit(c) => {
                w.actions.push(format!("commit {}", c.env.id));
                let id = c.env.id;
                w.committed.push((*c, std::mem::take(&mut w.content)));
                let r = match w.commit_fails {
                    Some(f) => Err(CleanupError::Spool(spool_error(f))),
                    None => Ok(Accepted::Queued(vec![id])),
                };
                m.answer(Answer::Committed(r));
            }
            Action::StartTls => {
                w.actions.push("starttls".into());
                flush(m, &mut run);
                m.tls_started("TLSv1.3".into(), "TLS13_AES_128_GCM_SHA256".into());
            }
            Action::Close => {
                flush(m, &mut run);
                run.closed = true;
                return run;
            }
        }
    }
}

/// One run of `input` in the given chunks with `set` and `w`.
pub fn run_chunks(set: Settings, w: &mut World, chunks: &[&[u8]]) -> Run {
    let mut m = machine(set);
    drive(&mut m, w, chunks, None)
}
