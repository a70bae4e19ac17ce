//! One SMTP session over a connection: the driver of the sans-IO [`Machine`]. It moves
//! bytes between the socket and the machine, and performs what the machine asks for with
//! the real owners: the milter connections, the local users and aliases, the spool's free
//! space, the content writer cleanup opens, and cleanup's commit. Every protocol decision
//! is the machine's; this loop holds the clocks (timeouts, shutdown) and the resources.

use std::net::SocketAddr;
use std::sync::Arc;

use cleanup::{Content, Incoming};
use spool::{ContentWriter, SpoolError, TxnId};
use tokio::io::{AsyncRead, AsyncWrite};

use super::Ctx;
use super::conn::{Conn, ReadError};
use crate::machine::{
    Action, Answer, Commit, Machine, MilterCall, ReadEnd, ReadKind, Settings, Verdict, replies,
};

/// How a session's command loop ended.
pub enum Next {
    Close,
    /// The client asked for STARTTLS and got `220`: hand the socket to TLS, start over.
    StartTls,
}

pub struct Session {
    ctx: Arc<Ctx>,
    /// The configuration as it was when the session began (SIGHUP swaps the current one).
    cfg: Arc<config::Config>,
    peer: SocketAddr,
    local: SocketAddr,
    id: TxnId,
    machine: Machine,
    /// Connected at HELO when `[[milter]]`s are configured.
    milters: Option<milter::Milters>,
    /// The transaction's content, opened by cleanup with its trace line in front.
    content: Option<ContentWriter>,
    /// What the milters asked for at end of message, applied by cleanup at commit.
    changes: Option<milter::Changes>,
}

fn verdict(v: milter::Verdict) -> Verdict {
    match v {
        milter::Verdict::Continue => Verdict::Continue,
        milter::Verdict::Reject(r) => Verdict::Reject(r),
        milter::Verdict::Tempfail(r) => Verdict::Tempfail(r),
        milter::Verdict::Discard => Verdict::Discard,
    }
}

impl Session {
    pub fn new(ctx: Arc<Ctx>, peer: SocketAddr, local: SocketAddr) -> Self {
        let cfg = ctx.config();
        let id = ctx.spool.ids().next();
        let spool = ctx.spool.clone();
        let machine = Machine::new(
            Settings::new(&cfg, peer, ctx.tls.is_some()),
            id,
            Box::new(move || spool.ids().next()),
        );
        Session {
            ctx,
            cfg,
            peer,
            local,
            id,
            machine,
            milters: None,
            content: None,
            changes: None,
        }
    }

    pub fn id(&self) -> TxnId {
        self.id
    }

    /// The TLS handshake succeeded: version and cipher suite, for the trace line.
    pub fn tls_started(&mut self, version: String, cipher: String) {
        self.machine.tls_started(version, cipher);
    }

    /// The client is gone: tell the milters.
    pub async fn end(&mut self) {
        if let Some(m) = self.milters.as_mut() {
            m.quit().await;
        }
    }

    /// Runs the machine until QUIT, an error that ends the session, or STARTTLS. The
    /// greeting is the machine's first reply.
    pub async fn drive<S: AsyncRead + AsyncWrite + Unpin>(&mut self, conn: &mut Conn<S>) -> Next {
        loop {
            if self.ctx.shutdown.is_cancelled() {
                self.machine.shutdown();
            }
            match self.machine.poll() {
                Action::Read(kind, timeout) => {
                    let shutdown = self.ctx.shutdown.clone();
                    let (input, output) = self.machine.buffers();
                    let r = match kind {
                        ReadKind::Command => tokio::select! {
                            r = conn.fill(input, output, timeout) => r,
                            _ = shutdown.cancelled() => Err(ReadError::Shutdown),
                        },
                        // A message is read to its end, shutdown or not.
                        ReadKind::Content => conn.fill(input, output, timeout).await,
                    };
                    let r = r.map_err(|e| match e {
                        ReadError::Timeout => ReadEnd::Timeout,
                        ReadError::Closed => ReadEnd::Closed,
                        ReadError::Shutdown => ReadEnd::Shutdown,
                        ReadError::Io(e) => ReadEnd::Io(e),
                    });
                    self.machine.answer(Answer::Read(r));
                }
                Action::Milter(call) => self.milter(call).await,
                Action::CheckSpace => {
                    let free = self.ctx.spool.free_bytes().ok();
                    self.machine.answer(Answer::FreeSpace(free));
                }
                Action::CheckLocal(local_part) => {
                    let targets = self.ctx.check_local(&local_part).await;
                    let owner = self.ctx.list_owner(&local_part);
                    self.machine.answer(Answer::Local { targets, owner });
                }
                Action::OpenContent {
                    id,
                    origin,
                    single_recipient,
                } => {
                    let (w, r) = self
                        .ctx
                        .cleanup
                        .open(
                            &cleanup::Settings::new(&self.cfg),
                            &origin,
                            id,
                            single_recipient.as_deref(),
                        )
                        .await;
                    self.content = Some(w);
                    self.machine.answer(Answer::Spool(r));
                }
                Action::WriteContent => {
                    let r = match self.content.as_mut() {
                        Some(w) => w.write(self.machine.content()).await,
                        None => Err(SpoolError::Closed),
                    };
                    self.machine.answer(Answer::Spool(r));
                }
                Action::DropContent => {
                    self.content = None;
                    self.changes = None;
                }
                Action::Commit(c) => self.commit(*c).await,
                Action::StartTls => {
                    let _ = conn.send(self.machine.output()).await;
                    return Next::StartTls;
                }
                Action::Close => {
                    let _ = conn.send(self.machine.output()).await;
                    return Next::Close;
                }
            }
        }
    }

    async fn milter(&mut self, call: MilterCall) {
        if let MilterCall::Connect = call {
            let mctx = milter::Context {
                hostname: self.cfg.hostname.clone(),
                client: self.peer,
                local: self.local,
                client_name: format!("[{}]", self.peer.ip()),
            };
            let (m, v) = milter::Milters::connect(&self.cfg.milters, mctx).await;
            self.milters = Some(m);
            return self.machine.answer(Answer::Verdict(verdict(v)));
        }
        let Some(m) = self.milters.as_mut() else {
            // Stages are asked for only once connected; with none, nothing can refuse.
            match call {
                MilterCall::Abort => {}
                MilterCall::Message { .. } => self
                    .machine
                    .answer(Answer::MessageVerdict(Ok(Verdict::Continue))),
                _ => self.machine.answer(Answer::Verdict(Verdict::Continue)),
            }
            return;
        };
        let v = match call {
            MilterCall::Connect => unreachable!("handled above"),
            MilterCall::Helo { name, tls } => m.helo(&name, tls.as_ref()).await,
            MilterCall::Mail {
                from,
                args,
                queue_id,
            } => m.mail(&from, args, &queue_id).await,
            MilterCall::Rcpt(to) => m.rcpt(&to).await,
            MilterCall::Abort => return m.abort().await,
            MilterCall::Message { queue_id } => {
                let reader = match self.content.as_mut() {
                    Some(w) => w.read_back(),
                    None => Err(SpoolError::Closed),
                };
                let r = match reader {
                    Ok(reader) => {
                        let (v, c) = m.message(reader, &queue_id).await;
                        self.changes = Some(c);
                        Ok(verdict(v))
                    }
                    Err(e) => Err(e),
                };
                return self.machine.answer(Answer::MessageVerdict(r));
            }
        };
        self.machine.answer(Answer::Verdict(verdict(v)));
    }

    async fn commit(&mut self, c: Commit) {
        let Commit {
            mut env,
            owners,
            origin,
            hops,
        } = c;
        let Some(writer) = self.content.take() else {
            let e = cleanup::CleanupError::Spool(SpoolError::Closed);
            return self.machine.answer(Answer::Committed(Err(e)));
        };
        env.arrival = spool::unix_now();
        let msg = Incoming {
            env,
            content: Content::Spooled { writer, hops },
            origin,
            changes: self.changes.take(),
            owners,
        };
        let r = self
            .ctx
            .cleanup
            .commit(&cleanup::Settings::new(&self.cfg), msg)
            .await;
        self.machine.answer(Answer::Committed(r));
    }
}

/// For sessions that are refused before they start.
pub fn refusal(text: &str) -> Vec<u8> {
    replies::refusal(text).to_bytes()
}
