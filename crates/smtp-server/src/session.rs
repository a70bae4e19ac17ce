//! One SMTP session: reads commands, enforces the RFC 5321 §4.1.4 order, asks the relay
//! policy, streams content into the spool, runs the milters, and writes replies. Parsing
//! lives in `smtp-proto`, relay decisions in `policy`; what happens to a finished message
//! (hop count, milter edits, list copies, commit) is the `cleanup` crate's. This module only
//! sequences them over a connection.

use std::net::SocketAddr;
use std::sync::Arc;

use cleanup::{Content, Incoming, Origin, SmtpTrace, spool_error_reply};
use smtp_proto::{
    BodyType as WireBody, Command, CommandFramer, ContentScan, DataDecoder, Domain, ForwardPath,
    Frame, MailParams, RcptParams, Reply, ReversePath, Violation,
};
use spool::{BodyType, ContentWriter, DsnRet, Envelope, Notify, Recipient, TxnId};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info, warn};

use super::Ctx;
use super::conn::{Conn, ReadError};
use super::policy::{Decision, RcptDomain, RelayPolicy};
use message::HeaderScan;

/// How a session's command loop ended.
pub enum Next {
    Close,
    /// The client asked for STARTTLS and got `220`: hand the socket to TLS, start over.
    StartTls,
}

struct Txn {
    id: TxnId,
    sender: ReversePath,
    params: MailParams,
    rcpts: Vec<Recipient>,
    /// For recipients from a list with an `owner-` alias: (recipient address, owner), the
    /// envelope sender of their copy, so bounces for the list go to its owner.
    owners: Vec<(String, String)>,
    /// BDAT in progress: the content so far.
    chunked: Option<Chunked>,
    /// The recipients' addresses, ASCII-lowercased, to drop duplicates.
    seen: std::collections::HashSet<String>,
    /// A milter said DISCARD at MAIL or RCPT: the message is accepted and dropped (as
    /// Postfix does), not delivered.
    discarded: bool,
}

struct Chunked {
    content: ContentWriter,
    scan: HeaderScan,
    policy: ContentScan,
    size: u64,
    /// Why the transaction can no longer succeed; later chunks are read and dropped.
    failed: Option<ChunkFailure>,
}

/// Why a BDAT transaction failed; each has the reply DATA gives for the same thing.
enum ChunkFailure {
    TooBig,
    /// Writing the content failed (disk full, I/O error): temporary.
    Spool(spool::SpoolError),
    /// The content broke the content policy (bare CR/LF, NUL, a long line).
    Content(Violation),
}

impl ChunkFailure {
    fn reply(&self) -> Reply {
        match self {
            ChunkFailure::TooBig => too_big(),
            ChunkFailure::Spool(e) => spool_error_reply(e),
            ChunkFailure::Content(v) => v.reply(),
        }
    }
}

fn too_big() -> Reply {
    reply(552, "5.3.4", "Message size exceeds fixed limit")
}

/// Logs a content policy refusal; one line with the transaction's queue id.
fn log_violation(id: TxnId, peer: SocketAddr, v: Violation) {
    warn!(queue_id = %id, client = %peer, "message refused: {}", v.describe());
}

pub struct Session {
    ctx: Arc<Ctx>,
    /// The configuration as it was when the session began (SIGHUP swaps the current one).
    cfg: Arc<config::Config>,
    peer: SocketAddr,
    local: SocketAddr,
    /// Connected at HELO when `[[milter]]`s are configured.
    milters: Option<milter::Milters>,
    /// A milter refused the connection: every later command gets this.
    milter_refusal: Option<Reply>,
    id: TxnId,
    helo: Option<String>,
    esmtp: bool,
    pub tls: Option<(String, String)>,
    txn: Option<Txn>,
    errors: u32,
    trusted: bool,
    framer: CommandFramer,
}

fn reply(code: u16, status: &str, text: &str) -> Reply {
    Reply::new(code, status.parse().ok(), text)
}

impl Session {
    pub fn new(ctx: Arc<Ctx>, peer: SocketAddr, local: SocketAddr) -> Self {
        let cfg = ctx.config();
        let trusted = cfg
            .smtp
            .relay_networks
            .iter()
            .any(|n| n.contains(peer.ip()));
        let id = ctx.spool.ids().next();
        Session {
            ctx,
            cfg,
            peer,
            local,
            milters: None,
            milter_refusal: None,
            id,
            helo: None,
            esmtp: false,
            tls: None,
            txn: None,
            errors: 0,
            trusted,
            framer: CommandFramer::new(512),
        }
    }

    pub fn id(&self) -> TxnId {
        self.id
    }

    /// The client is gone: tell the milters.
    pub async fn end(&mut self) {
        if let Some(m) = self.milters.as_mut() {
            m.quit().await;
        }
    }

    pub fn greeting(&self) -> Reply {
        let c = &self.cfg;
        Reply::new(220, None, &format!("{} {}", c.hostname, c.smtp.banner))
    }

    fn push<S>(&self, conn: &mut Conn<S>, r: &Reply) {
        r.write_to(&mut conn.out);
    }

    /// Runs commands until QUIT, an error that ends the session, or STARTTLS.
    pub async fn drive<S: AsyncRead + AsyncWrite + Unpin>(&mut self, conn: &mut Conn<S>) -> Next {
        let timeout = self.cfg.smtp.command_timeout;
        loop {
            match self.framer.next(&mut conn.inbuf) {
                Frame::Line(line) => {
                    if let Some(next) = self.command(conn, &line).await {
                        let _ = conn.flush().await;
                        return next;
                    }
                }
                Frame::TooLong => {
                    self.push(conn, &reply(500, "5.5.6", "Line too long"));
                    if self.error(conn) {
                        let _ = conn.flush().await;
                        return Next::Close;
                    }
                }
                Frame::Incomplete => {
                    if self.ctx.shutdown.is_cancelled() {
                        self.push(conn, &self.shutting_down());
                        let _ = conn.flush().await;
                        return Next::Close;
                    }
                    let shutdown = self.ctx.shutdown.clone();
                    let r = tokio::select! {
                        r = conn.fill(timeout) => r,
                        _ = shutdown.cancelled() => continue,
                    };
                    match r {
                        Ok(_) => {}
                        Err(ReadError::Timeout) => {
                            let r = reply(
                                421,
                                "4.4.2",
                                &format!("{} Error: timeout exceeded", self.cfg.hostname),
                            );
                            self.push(conn, &r);
                            let _ = conn.flush().await;
                            debug!(session = %self.id, "command timeout");
                            return Next::Close;
                        }
                        Err(ReadError::Io(e)) => {
                            debug!(session = %self.id, "connection error: {e}");
                            return Next::Close;
                        }
                        Err(ReadError::Closed) => return Next::Close,
                    }
                }
            }
        }
    }

    fn shutting_down(&self) -> Reply {
        reply(
            421,
            "4.3.2",
            &format!("{} Service shutting down", self.cfg.hostname),
        )
    }

    /// Counts a protocol error; true when the session has had too many and must end.
    fn error<S>(&mut self, conn: &mut Conn<S>) -> bool {
        self.errors += 1;
        if self.errors >= self.cfg.smtp.max_errors {
            self.push(
                conn,
                &reply(
                    421,
                    "4.7.0",
                    &format!("{} Error: too many errors", self.cfg.hostname),
                ),
            );
            return true;
        }
        false
    }

    async fn command<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        line: &[u8],
    ) -> Option<Next> {
        if self.ctx.shutdown.is_cancelled() {
            self.push(conn, &self.shutting_down());
            return Some(Next::Close);
        }
        let cmd = match Command::parse(line) {
            Ok(c) => c,
            Err(e) => {
                self.push(conn, &e.reply());
                return self.error(conn).then_some(Next::Close);
            }
        };
        let result = match cmd {
            Command::Ehlo(name) => self.hello_checked(name, true).await,
            Command::Helo(name) => self.hello_checked(name, false).await,
            Command::Lhlo(_) => Err(reply(500, "5.5.1", "This is SMTP, not LMTP")),
            Command::Mail { from, params } => self.mail_checked(from, params).await,
            Command::Rcpt { to, params } => self.rcpt(to, params).await,
            Command::Data => return self.data(conn).await,
            Command::Bdat { size, last } => return self.bdat(conn, size, last).await,
            Command::Rset => {
                if self.txn.take().is_some()
                    && let Some(m) = self.milters.as_mut()
                {
                    m.abort().await;
                }
                Ok(reply(250, "2.0.0", "Ok"))
            }
            Command::Noop(_) => Ok(reply(250, "2.0.0", "Ok")),
            Command::Quit => {
                self.push(
                    conn,
                    &reply(
                        221,
                        "2.0.0",
                        &format!("{} closing connection", self.cfg.hostname),
                    ),
                );
                return Some(Next::Close);
            }
            Command::Vrfy(_) => Ok(reply(
                252,
                "2.5.0",
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Command::Expn(_) => Err(reply(502, "5.5.1", "EXPN is not available")),
            Command::Help(_) => Ok(reply(214, "2.0.0", "See RFC 5321")),
            Command::StartTls => return self.starttls(conn),
            Command::Auth { .. } => Err(reply(502, "5.5.1", "AUTH is not available")),
        };
        match result {
            Ok(r) => self.push(conn, &r),
            Err(r) => {
                self.push(conn, &r);
                // A size refusal is a policy mismatch, not a misbehaving client.
                if r.code() >= 500 && r.code() != 552 && self.error(conn) {
                    return Some(Next::Close);
                }
            }
        }
        None
    }

    /// HELO/EHLO, then the milters' connect and helo stages.
    async fn hello_checked(&mut self, name: String, esmtp: bool) -> Result<Reply, Reply> {
        if let Some(r) = &self.milter_refusal {
            return Err(r.clone());
        }
        let ok = self.hello(name.clone(), esmtp);
        if self.cfg.milters.is_empty() {
            return Ok(ok);
        }
        if self.milters.is_none() {
            let ctx = milter::Context {
                hostname: self.cfg.hostname.clone(),
                client: self.peer,
                local: self.local,
                client_name: format!("[{}]", self.peer.ip()),
            };
            let (m, v) = milter::Milters::connect(&self.cfg.milters, ctx).await;
            self.milters = Some(m);
            if let Some(r) = self.refusal(v) {
                self.milter_refusal = Some(r.clone());
                return Err(r);
            }
        }
        let tls = self.tls.clone();
        let v = self
            .milters
            .as_mut()
            .expect("connected")
            .helo(&name, tls.as_ref())
            .await;
        match self.refusal(v) {
            Some(r) => {
                self.milter_refusal = Some(r.clone());
                Err(r)
            }
            None => Ok(ok),
        }
    }

    /// A milter verdict as the reply to send, if it refuses.
    fn refusal(&self, v: milter::Verdict) -> Option<Reply> {
        use milter::Verdict;
        match v {
            Verdict::Reject(r) | Verdict::Tempfail(r) => {
                info!(session = %self.id, client = %self.peer, reply = %r.to_string().trim_end(), "refused by a milter");
                Some(r)
            }
            Verdict::Continue | Verdict::Discard => None,
        }
    }

    async fn mail_checked(
        &mut self,
        from: ReversePath,
        params: MailParams,
    ) -> Result<Reply, Reply> {
        if let Some(r) = &self.milter_refusal {
            return Err(r.clone());
        }
        let args: Vec<String> = params
            .to_string()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let ok = self.mail(from, params)?;
        let Some(m) = self.milters.as_mut() else {
            return Ok(ok);
        };
        let txn = self.txn.as_ref().expect("MAIL accepted");
        let from = match &txn.sender {
            ReversePath::Null => String::new(),
            ReversePath::Mailbox(m) => m.to_string(),
        };
        let id = txn.id.to_string();
        let v = m.mail(&from, args, &id).await;
        if v == milter::Verdict::Discard {
            info!(queue_id = %id, "a milter discards the message at MAIL");
            self.txn.as_mut().expect("MAIL accepted").discarded = true;
        }
        match self.refusal(v) {
            Some(r) => {
                self.txn = None;
                if let Some(m) = self.milters.as_mut() {
                    m.abort().await;
                }
                Err(r)
            }
            None => Ok(ok),
        }
    }

    fn hello(&mut self, name: String, esmtp: bool) -> Reply {
        self.txn = None;
        self.helo = Some(name);
        self.esmtp = esmtp;
        let c = &self.cfg;
        if !esmtp {
            return Reply::new(250, None, &c.hostname);
        }
        let mut lines = vec![
            c.hostname.clone(),
            "PIPELINING".into(),
            format!("SIZE {}", c.smtp.max_message_size),
            "8BITMIME".into(),
            "ENHANCEDSTATUSCODES".into(),
            "SMTPUTF8".into(),
            "DSN".into(),
            "CHUNKING".into(),
            "BINARYMIME".into(),
        ];
        if self.ctx.tls.is_some() && self.tls.is_none() {
            lines.push("STARTTLS".into());
        }
        Reply::multi(250, lines)
    }

    fn mail(&mut self, from: ReversePath, params: MailParams) -> Result<Reply, Reply> {
        if self.helo.is_none() {
            return Err(reply(503, "5.5.1", "Error: send HELO/EHLO first"));
        }
        if self.txn.is_some() {
            return Err(reply(503, "5.5.1", "Error: nested MAIL command"));
        }
        let max = self.cfg.smtp.max_message_size;
        if params.size.is_some_and(|s| s > max) {
            return Err(reply(552, "5.3.4", "Message size exceeds fixed limit"));
        }
        if let ReversePath::Mailbox(m) = &from
            && m.needs_smtputf8()
            && !params.smtputf8
        {
            return Err(reply(553, "5.6.7", "Sender address needs SMTPUTF8"));
        }
        if !self.esmtp && params != MailParams::default() {
            return Err(reply(555, "5.5.4", "ESMTP parameters need EHLO"));
        }
        match self.ctx.spool.free_bytes() {
            Ok(free) if free < self.cfg.smtp.min_free_space => {
                warn!(session = %self.id, free, "spool disk short of space: refusing mail");
                return Err(reply(452, "4.3.1", "Insufficient system storage"));
            }
            _ => {}
        }
        let id = self.ctx.spool.ids().next();
        self.txn = Some(Txn {
            id,
            sender: from,
            params,
            rcpts: Vec::new(),
            owners: Vec::new(),
            chunked: None,
            seen: Default::default(),
            discarded: false,
        });
        Ok(reply(250, "2.1.0", "Ok"))
    }

    async fn rcpt(&mut self, to: ForwardPath, params: RcptParams) -> Result<Reply, Reply> {
        let max_rcpts = self.cfg.smtp.max_recipients;
        let Some(txn) = self.txn.as_mut() else {
            return Err(reply(503, "5.5.1", "Error: need MAIL command"));
        };
        if txn.chunked.is_some() {
            return Err(reply(503, "5.5.1", "Error: RCPT during BDAT"));
        }
        if txn.rcpts.len() >= max_rcpts {
            return Err(reply(452, "4.5.3", "Error: too many recipients"));
        }
        let mut expanded: Vec<String> = Vec::new();
        let mut list_owner: Option<String> = None;
        let address = match &to {
            ForwardPath::Postmaster => "postmaster".to_string(),
            ForwardPath::Mailbox(m) => {
                if m.needs_smtputf8() && !txn.params.smtputf8 {
                    return Err(reply(553, "5.6.7", "Recipient address needs SMTPUTF8"));
                }
                let domain = match m.domain() {
                    Domain::Name(n) => RcptDomain::Name(n),
                    _ => RcptDomain::Literal,
                };
                let policy = RelayPolicy {
                    local_domains: &self.cfg.local.domains,
                    relay_domains: &self.cfg.smtp.relay_domains,
                };
                match policy.decide(m.local_part(), domain, self.trusted) {
                    Decision::Denied => {
                        info!(session = %self.id, client = %self.peer, rcpt = %m, "relay access denied");
                        return Err(reply(554, "5.7.1", &format!("<{m}>: Relay access denied")));
                    }
                    Decision::Local => {
                        let targets = self.ctx.check_local(m.local_part()).await?;
                        // aliases(5): the alias is replaced by what it expands to; the
                        // address the client gave is kept as ORCPT for DSNs.
                        if targets.len() != 1 || targets[0] != m.local_part() {
                            let domain = m.domain().to_string();
                            list_owner = self.ctx.list_owner(m.local_part()).map(|o| {
                                if o.contains('@') {
                                    o
                                } else {
                                    format!("{o}@{domain}")
                                }
                            });
                            expanded = targets
                                .into_iter()
                                .map(|t| {
                                    if t.contains('@') {
                                        t
                                    } else {
                                        format!("{t}@{domain}")
                                    }
                                })
                                .collect();
                        }
                    }
                    Decision::Relay => {}
                }
                m.to_string()
            }
        };
        let address = match &to {
            ForwardPath::Postmaster => match self.cfg.local.domains.first() {
                Some(d) => format!("postmaster@{d}"),
                None => format!("postmaster@{}", self.cfg.hostname),
            },
            _ => address,
        };
        let discarded = self.txn.as_ref().is_some_and(|t| t.discarded);
        if let Some(m) = self.milters.as_mut().filter(|_| !discarded) {
            let v = m.rcpt(&address).await;
            if v == milter::Verdict::Discard
                && let Some(t) = self.txn.as_mut()
            {
                info!(queue_id = %t.id, rcpt = %address, "a milter discards the message at RCPT");
                t.discarded = true;
            }
            if let Some(r) = self.refusal(v) {
                return Err(r);
            }
        }
        let orcpt = params.orcpt.map(|(kind, addr)| format!("{kind};{addr}"));
        let notify = params.notify.map(to_spool_notify).unwrap_or_default();
        let txn = self.txn.as_mut().expect("checked above");
        let addresses: Vec<(String, Option<String>)> = if expanded.is_empty() {
            vec![(address, orcpt)]
        } else {
            let orcpt = orcpt.or_else(|| Some(format!("rfc822;{address}")));
            expanded.into_iter().map(|a| (a, orcpt.clone())).collect()
        };
        // An alias or list counts as what it expands to: the cap is on the message.
        let mut fresh: Vec<String> = addresses
            .iter()
            .map(|(a, _)| a.to_ascii_lowercase())
            .filter(|a| !txn.seen.contains(a))
            .collect();
        fresh.sort();
        fresh.dedup();
        if txn.rcpts.len() + fresh.len() > max_rcpts {
            return Err(reply(452, "4.5.3", "Error: too many recipients"));
        }
        for (address, orcpt) in addresses {
            // A set, not a scan of the list: 65535 recipients must not cost 65535² steps.
            if !txn.seen.insert(address.to_ascii_lowercase()) {
                continue;
            }
            if let Some(o) = &list_owner {
                txn.owners.push((address.clone(), o.clone()));
            }
            txn.rcpts.push(Recipient {
                address,
                orcpt,
                notify,
                ..Default::default()
            });
        }
        Ok(reply(250, "2.1.5", "Ok"))
    }

    fn starttls<S>(&mut self, conn: &mut Conn<S>) -> Option<Next> {
        if self.tls.is_some() {
            self.push(conn, &reply(554, "5.5.1", "Error: TLS already active"));
            return None;
        }
        if self.ctx.tls.is_none() {
            self.push(
                conn,
                &reply(502, "5.5.1", "Error: STARTTLS is not available"),
            );
            return None;
        }
        // Anything pipelined after STARTTLS was sent in the clear and must not be executed
        // inside the TLS session (CVE-2011-0411).
        conn.inbuf.clear();
        self.push(conn, &reply(220, "2.0.0", "Ready to start TLS"));
        self.helo = None;
        self.esmtp = false;
        self.txn = None;
        Some(Next::StartTls)
    }

    fn check_data_allowed(&self) -> Result<(), Reply> {
        match &self.txn {
            None => Err(reply(503, "5.5.1", "Error: need MAIL command")),
            Some(t) if t.rcpts.is_empty() => Err(reply(554, "5.5.1", "Error: no valid recipients")),
            Some(_) => Ok(()),
        }
    }

    /// Reads more message content (DATA or a BDAT chunk); a client that stalls past the
    /// data timeout gets 421 and the session ends.
    async fn fill_content<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        timeout: std::time::Duration,
    ) -> Result<(), Next> {
        match conn.fill(timeout).await {
            Ok(_) => Ok(()),
            Err(ReadError::Timeout) => {
                self.push(conn, &reply(421, "4.4.2", "Error: timeout exceeded"));
                Err(Next::Close)
            }
            Err(_) => Err(Next::Close),
        }
    }

    /// How the client reached us, for the trace line cleanup writes.
    fn origin(&self) -> Origin {
        Origin::Smtp(SmtpTrace {
            helo: self.helo.clone(),
            client_ip: self.peer.ip(),
            esmtp: self.esmtp,
            tls: self.tls.clone(),
        })
    }

    /// The transaction's content, opened by cleanup with its trace line in front.
    async fn open_content(&mut self) -> (ContentWriter, Option<spool::SpoolError>) {
        let txn = self.txn.as_ref().expect("transaction");
        let single = (txn.rcpts.len() == 1).then(|| txn.rcpts[0].address.as_str());
        let (w, r) = self
            .ctx
            .cleanup
            .open(
                &cleanup::Settings::new(&self.cfg),
                &self.origin(),
                txn.id,
                single,
            )
            .await;
        (w, r.err())
    }

    async fn data<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
    ) -> Option<Next> {
        if let Err(r) = self.check_data_allowed() {
            self.push(conn, &r);
            return self.error(conn).then_some(Next::Close);
        }
        let txn = self.txn.as_ref().expect("checked");
        if txn.chunked.is_some() {
            self.push(conn, &reply(503, "5.5.1", "Error: DATA during BDAT"));
            return None;
        }
        if txn.params.body == Some(WireBody::BinaryMime) {
            self.push(
                conn,
                &reply(503, "5.5.1", "Error: BODY=BINARYMIME needs BDAT"),
            );
            return None;
        }
        let txn_id = txn.id;
        let (mut content, mut failed) = self.open_content().await;
        self.push(conn, &reply(354, "", "End data with <CR><LF>.<CR><LF>"));
        let max = self.cfg.smtp.max_message_size;
        let mut decoder = DataDecoder::new(max);
        let mut scan = HeaderScan::new();
        // DATA is never BINARYMIME (refused above); the same policy as BDAT decides.
        let mut policy = ContentScan::new(false);
        let mut out = Vec::with_capacity(64 * 1024);
        let data_timeout = self.cfg.smtp.data_timeout;
        loop {
            let end = decoder.decode(&mut conn.inbuf, &mut out);
            if !out.is_empty() {
                scan.feed(&out);
                policy.feed(&out);
                if failed.is_none() && !decoder.exceeded() {
                    failed = content.write(&out).await.err();
                }
                out.clear();
            }
            if end.is_some() {
                break;
            }
            if let Err(next) = self.fill_content(conn, data_timeout).await {
                return Some(next);
            }
        }
        // The content policy judges what would be stored, as for BDAT, so both answer alike
        // for the same content (the decoder's own flags are the wire's: a stuffing dot
        // would count to a line's length there).
        let verdict = policy.finish();
        let r = if decoder.exceeded() {
            too_big()
        } else if let Err(v) = verdict {
            log_violation(txn_id, self.peer, v);
            v.reply()
        } else if let Some(e) = failed {
            spool_error_reply(&e)
        } else {
            self.finish(content, scan).await
        };
        self.txn = None;
        self.push(conn, &r);
        None
    }

    async fn bdat<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        size: u64,
        last: bool,
    ) -> Option<Next> {
        // The chunk must be read even when the command fails, or its bytes would be taken
        // as commands.
        let ok = if self.esmtp {
            self.check_data_allowed()
        } else {
            // CHUNKING is an ESMTP extension (RFC 3030): only offered after EHLO.
            Err(reply(503, "5.5.1", "Error: BDAT needs EHLO"))
        };
        if ok.is_ok() && self.txn.as_ref().is_some_and(|t| t.chunked.is_none()) {
            let txn = self.txn.as_ref().expect("checked");
            let binary = txn.params.body == Some(WireBody::BinaryMime);
            let (content, err) = self.open_content().await;
            let txn = self.txn.as_mut().expect("checked");
            txn.chunked = Some(Chunked {
                content,
                scan: HeaderScan::new(),
                policy: ContentScan::new(binary),
                size: 0,
                failed: err.map(ChunkFailure::Spool),
            });
        }
        let max = self.cfg.smtp.max_message_size;
        let mut left = size;
        let data_timeout = self.cfg.smtp.data_timeout;
        while left > 0 {
            if conn.inbuf.is_empty()
                && let Err(next) = self.fill_content(conn, data_timeout).await
            {
                return Some(next);
            }
            let n = (left as usize).min(conn.inbuf.len());
            if ok.is_ok()
                && let Some(ch) = self.txn.as_mut().and_then(|t| t.chunked.as_mut())
            {
                ch.size += n as u64;
                if ch.failed.is_none() && ch.size > max {
                    ch.failed = Some(ChunkFailure::TooBig);
                }
                if ch.failed.is_none() {
                    let bytes = &conn.inbuf[..n];
                    ch.policy.feed(bytes);
                    if let Some(v) = ch.policy.violation() {
                        ch.failed = Some(ChunkFailure::Content(v));
                    } else {
                        ch.scan.feed(bytes);
                        if let Err(e) = ch.content.write(bytes).await {
                            ch.failed = Some(ChunkFailure::Spool(e));
                        }
                    }
                }
            }
            conn.consume(n);
            left -= n as u64;
        }
        if let Err(r) = ok {
            self.push(conn, &r);
            return None;
        }
        if let Some(ch) = self.txn.as_mut().and_then(|t| t.chunked.as_mut())
            && ch.failed.is_none()
            && last
            && let Err(v) = ch.policy.finish()
        {
            ch.failed = Some(ChunkFailure::Content(v));
        }
        let failed = self
            .txn
            .as_mut()
            .and_then(|t| t.chunked.as_mut())
            .and_then(|c| c.failed.take());
        if let Some(f) = failed {
            let id = self.txn.as_ref().map_or(self.id, |t| t.id);
            match &f {
                ChunkFailure::Content(v) => log_violation(id, self.peer, *v),
                ChunkFailure::Spool(e) => warn!(queue_id = %id, "writing BDAT content failed: {e}"),
                ChunkFailure::TooBig => {}
            }
            self.txn = None;
            self.push(conn, &f.reply());
            return None;
        }
        if !last {
            self.push(
                conn,
                &reply(250, "2.0.0", &format!("{size} octets received")),
            );
            return None;
        }
        let ch = self
            .txn
            .as_mut()
            .and_then(|t| t.chunked.take())
            .expect("chunked transaction");
        let r = self.finish(ch.content, ch.scan).await;
        self.txn = None;
        self.push(conn, &r);
        None
    }

    /// The end of data: the loop check and a discard decided earlier, the milters' end of
    /// message, then cleanup; the reply to the end of data.
    async fn finish(&mut self, content: ContentWriter, scan: HeaderScan) -> Reply {
        let txn = self.txn.as_ref().expect("transaction");
        // Before the milters, so a looping message costs them nothing.
        if let Err(e) = cleanup::check_hops(txn.id, scan.received, self.cfg.smtp.max_hops) {
            return e.reply();
        }
        if txn.discarded {
            let id = txn.id;
            info!(queue_id = %id, "message discarded by a milter");
            if let Some(m) = self.milters.as_mut() {
                m.abort().await;
            }
            return cleanup::discarded_reply(id);
        }
        let env = Envelope {
            id: txn.id,
            arrival: spool::unix_now(),
            sender: match &txn.sender {
                ReversePath::Null => String::new(),
                ReversePath::Mailbox(m) => m.to_string(),
            },
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
                super::limits::canonical(self.peer.ip())
            ),
            held: false,
            kind: Default::default(),
            recipients: txn.rcpts.clone(),
        };
        let owners = txn.owners.clone();
        let mut content = content;
        let mut changes = None;
        if let Some(m) = self.milters.as_mut() {
            let reader = match content.read_back() {
                Ok(r) => r,
                Err(e) => return spool_error_reply(&e),
            };
            let (v, c) = m.message(reader, &env.id.to_string()).await;
            use milter::Verdict;
            match v {
                Verdict::Reject(r) | Verdict::Tempfail(r) => {
                    info!(queue_id = %env.id, reply = %r.to_string().trim_end(), "message refused by a milter");
                    return r;
                }
                Verdict::Discard => {
                    info!(queue_id = %env.id, "message discarded by a milter");
                    return cleanup::discarded_reply(env.id);
                }
                Verdict::Continue => {}
            }
            changes = Some(c);
        }
        let msg = Incoming {
            env,
            content: Content::Spooled {
                writer: content,
                hops: scan.received,
            },
            origin: self.origin(),
            changes,
            owners,
        };
        match self
            .ctx
            .cleanup
            .commit(&cleanup::Settings::new(&self.cfg), msg)
            .await
        {
            Ok(a) => a.reply(),
            Err(e) => e.reply(),
        }
    }
}

fn to_spool_notify(n: smtp_proto::Notify) -> Notify {
    Notify {
        never: n.never,
        success: n.success,
        failure: n.failure,
        delay: n.delay,
    }
}

/// For sessions that are refused before they start.
pub fn refusal(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    reply(421, "4.7.0", text).write_to(&mut out);
    out
}
