//! The milter client: one connection per configured milter per SMTP session, called at each
//! stage in the configured order, with the macros real milters read. The wire format is
//! `milter-proto`'s; this module adds I/O, timeouts, the negotiated no-call/no-reply flags,
//! the `on_failure` policy, and collects the modifications a milter asks for, which the
//! session applies before the message is committed.

use std::io::Read;
use std::net::SocketAddr;
use std::time::Duration;

use config::{Milter, MilterAddress, MilterFailure};
use milter_proto::consts::*;
use milter_proto::{Actions, Command, Framer, Response, Steps};
use smtp_proto::Reply;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, warn};

pub use message::HeaderChange;
use message::{parse_headers, read_header_section};

/// A milter connection: TCP or a unix socket.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// What the milters decided about one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    Reject(Reply),
    Tempfail(Reply),
    /// Accept and throw away.
    Discard,
}

/// Changes asked for at end of message, applied in order before commit.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub headers: Vec<HeaderChange>,
    pub add_rcpts: Vec<String>,
    pub del_rcpts: Vec<String>,
    pub from: Option<String>,
    pub body: Option<Vec<u8>>,
    pub quarantine: Option<String>,
}

impl Changes {
    pub fn rewrites_content(&self) -> bool {
        !self.headers.is_empty() || self.body.is_some()
    }
}

/// What the stages know about the connection, for macros.
#[derive(Debug, Clone)]
pub struct Context {
    pub hostname: String,
    pub client: SocketAddr,
    pub local: SocketAddr,
    pub client_name: String,
}

struct Conn {
    io: Box<dyn Io>,
    framer: Framer,
    protocol: Steps,
    timeout: Duration,
    on_failure: MilterFailure,
    name: String,
    /// Said "accept" for the current message: no more calls until the next one.
    accepted: bool,
    /// Said "skip" during the body.
    skip_body: bool,
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Protocol(#[from] milter_proto::Error),
    #[error("closed the connection")]
    Closed,
}

impl Conn {
    async fn send(&mut self, cmd: &Command) -> Result<(), Failure> {
        self.send_all(&[cmd]).await
    }

    /// Several packets in one write (macros and the command they belong to).
    async fn send_all(&mut self, cmds: &[&Command]) -> Result<(), Failure> {
        let mut out = Vec::new();
        for cmd in cmds {
            cmd.encode(&mut out);
        }
        tokio::time::timeout(self.timeout, self.io.write_all(&out))
            .await
            .map_err(|_| Failure::Timeout)??;
        Ok(())
    }

    async fn read(&mut self) -> Result<Response, Failure> {
        let mut buf = [0u8; 8192];
        loop {
            if let Some(r) = self.framer.next_response()? {
                return Ok(r);
            }
            let n = tokio::time::timeout(self.timeout, self.io.read(&mut buf))
                .await
                .map_err(|_| Failure::Timeout)??;
            if n == 0 {
                return Err(Failure::Closed);
            }
            self.framer.push(&buf[..n]);
        }
    }

    /// Sends `cmd` (after the stage's `macros`, in the same write) and, unless the milter
    /// said it will not reply, reads up to the final response, collecting modifications on
    /// the way.
    async fn call(
        &mut self,
        macros: Option<&Command>,
        cmd: &Command,
        no_reply: Steps,
        changes: &mut Changes,
    ) -> Result<Response, Failure> {
        match macros {
            Some(m) => self.send_all(&[m, cmd]).await?,
            None => self.send(cmd).await?,
        }
        if self.protocol.intersects(no_reply) {
            return Ok(Response::Continue);
        }
        loop {
            let r = self.read().await?;
            match r {
                Response::Progress => {}
                Response::AddHeader { name, value } => {
                    changes.headers.push(HeaderChange::Add { name, value })
                }
                Response::InsertHeader { index, name, value } => changes
                    .headers
                    .push(HeaderChange::Insert { index, name, value }),
                Response::ChangeHeader { index, name, value } => changes
                    .headers
                    .push(HeaderChange::Change { index, name, value }),
                Response::AddRcpt(a) | Response::AddRcptPar { rcpt: a, .. } => {
                    changes.add_rcpts.push(a)
                }
                Response::DelRcpt(a) => changes.del_rcpts.push(a),
                Response::ChangeFrom { from, .. } => changes.from = Some(from),
                Response::ReplaceBody(b) => changes.body.get_or_insert_with(Vec::new).extend(b),
                Response::Quarantine(why) => changes.quarantine = Some(why),
                other => return Ok(other),
            }
        }
    }
}

/// The milters of one SMTP session.
pub struct Milters {
    conns: Vec<Option<Conn>>,
    ctx: Context,
}

/// An address as milters give it (`<a@b>` or `a@b`), without the brackets.
pub fn strip(a: &str) -> String {
    let a = a.trim();
    let a = a.strip_prefix('<').unwrap_or(a);
    a.strip_suffix('>').unwrap_or(a).to_string()
}

fn reply_of(text: &str) -> Reply {
    let code: u16 = text.get(..3).and_then(|c| c.parse().ok()).unwrap_or(550);
    let rest = text.get(4..).unwrap_or("").trim();
    let (enh, msg) = match rest.split_once(' ') {
        Some((e, m)) if e.parse::<smtp_proto::EnhancedCode>().is_ok() => (e.parse().ok(), m),
        _ => (None, rest),
    };
    Reply::new(code, enh, msg)
}

impl Milters {
    /// Connects to every milter and negotiates; a milter that cannot be reached gets its
    /// `on_failure` treatment at the first stage.
    pub async fn connect(cfgs: &[Milter], ctx: Context) -> (Milters, Verdict) {
        let mut conns = Vec::new();
        let mut verdict = Verdict::Continue;
        for m in cfgs {
            match Self::open(m).await {
                Ok(c) => conns.push(Some(c)),
                Err(e) => {
                    warn!(milter = %name_of(m), "cannot use the milter: {e}");
                    conns.push(None);
                    if let Some(v) = failure_verdict(m.on_failure) {
                        verdict = v;
                    }
                }
            }
        }
        let mut ms = Milters { conns, ctx };
        if verdict == Verdict::Continue {
            let cmd = Command::Connect {
                hostname: ms.ctx.client_name.clone(),
                addr: Some(ms.ctx.client),
            };
            verdict = ms
                .stage(SMFIC_CONNECT, &cmd, Steps::NOCONNECT, Steps::NR_CONN, &[])
                .await;
        }
        (ms, verdict)
    }

    async fn open(m: &Milter) -> Result<Conn, Failure> {
        let io: Box<dyn Io> = match &m.address {
            MilterAddress::Inet(a) => {
                let s = tokio::time::timeout(m.timeout, tokio::net::TcpStream::connect(a))
                    .await
                    .map_err(|_| Failure::Timeout)??;
                // Many small request/reply packets: Nagle plus delayed ACKs would add
                // tens of milliseconds to each.
                s.set_nodelay(true)?;
                Box::new(s)
            }
            MilterAddress::Unix(p) => Box::new(
                tokio::time::timeout(m.timeout, tokio::net::UnixStream::connect(p))
                    .await
                    .map_err(|_| Failure::Timeout)??,
            ),
        };
        let mut c = Conn {
            io,
            framer: Framer::new(),
            protocol: Steps::empty(),
            timeout: m.timeout,
            on_failure: m.on_failure,
            name: name_of(m),
            accepted: false,
            skip_body: false,
        };
        // Everything we can apply; every step may be skipped or left unanswered.
        let actions = Actions::ADDHDRS
            | Actions::CHGBODY
            | Actions::ADDRCPT
            | Actions::DELRCPT
            | Actions::CHGHDRS
            | Actions::QUARANTINE
            | Actions::CHGFROM
            | Actions::ADDRCPT_PAR;
        let protocol = Steps::NOCONNECT
            | Steps::NOHELO
            | Steps::NOMAIL
            | Steps::NORCPT
            | Steps::NOBODY
            | Steps::NOHDRS
            | Steps::NOEOH
            | Steps::NR_HDR
            | Steps::NOUNKNOWN
            | Steps::NODATA
            | Steps::SKIP
            | Steps::NR_CONN
            | Steps::NR_HELO
            | Steps::NR_MAIL
            | Steps::NR_RCPT
            | Steps::NR_DATA
            | Steps::NR_UNKN
            | Steps::NR_EOH
            | Steps::NR_BODY;
        c.send(&Command::OptNeg {
            version: SMFI_PROT_VERSION,
            actions,
            protocol,
        })
        .await?;
        match c.read().await? {
            Response::OptNeg { protocol: p, .. } => c.protocol = p & protocol,
            other => {
                return Err(Failure::Protocol(milter_proto::Error::Malformed {
                    code: '?',
                    why: if matches!(other, Response::Continue) {
                        "no option negotiation"
                    } else {
                        "unexpected answer to option negotiation"
                    },
                }));
            }
        }
        debug!(milter = %c.name, protocol = ?c.protocol, "milter negotiated");
        Ok(c)
    }

    fn macros(&self, stage: u8, extra: &[(&str, String)]) -> Command {
        let mut pairs: Vec<(String, String)> = match stage {
            SMFIC_CONNECT => vec![
                ("j".into(), self.ctx.hostname.clone()),
                ("{daemon_name}".into(), "postrider".into()),
                ("{if_addr}".into(), self.ctx.local.ip().to_string()),
                ("{client_addr}".into(), self.ctx.client.ip().to_string()),
                ("{client_name}".into(), self.ctx.client_name.clone()),
                (
                    "_".into(),
                    format!("{} [{}]", self.ctx.client_name, self.ctx.client.ip()),
                ),
            ],
            _ => Vec::new(),
        };
        pairs.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        Command::Macros { stage, pairs }
    }

    /// One stage at every milter, in order; the first verdict other than continue wins.
    async fn stage(
        &mut self,
        stage: u8,
        cmd: &Command,
        no_call: Steps,
        no_reply: Steps,
        macros: &[(&str, String)],
    ) -> Verdict {
        let macro_cmd = self.macros(stage, macros);
        let mut ignored = Changes::default();
        self.call_all(Some(&macro_cmd), cmd, no_call, no_reply, &mut ignored)
            .await
    }

    /// `cmd` (after `macros`, if any) at every milter still listening, in order, collecting
    /// modifications; the first verdict other than continue wins. A milter that fails is
    /// dropped and its `on_failure` decides.
    async fn call_all(
        &mut self,
        macros: Option<&Command>,
        cmd: &Command,
        no_call: Steps,
        no_reply: Steps,
        changes: &mut Changes,
    ) -> Verdict {
        let body = matches!(cmd, Command::Body(_));
        for slot in &mut self.conns {
            let Some(c) = slot else { continue };
            if c.accepted || c.protocol.intersects(no_call) || (body && c.skip_body) {
                continue;
            }
            match c.call(macros, cmd, no_reply, changes).await {
                Ok(Response::Skip) if body => c.skip_body = true,
                Ok(r) => match Self::judge(c, r) {
                    Verdict::Continue => {}
                    v => return v,
                },
                Err(e) => {
                    if let Some(v) = drop_failed(slot, &e) {
                        return v;
                    }
                }
            }
        }
        Verdict::Continue
    }

    fn judge(c: &mut Conn, r: Response) -> Verdict {
        match r {
            Response::Continue | Response::Skip => Verdict::Continue,
            Response::Accept => {
                c.accepted = true;
                Verdict::Continue
            }
            Response::Reject => {
                Verdict::Reject(Reply::new(550, "5.7.1".parse().ok(), "Command rejected"))
            }
            Response::Tempfail => Verdict::Tempfail(Reply::new(
                451,
                "4.7.1".parse().ok(),
                "Service unavailable - try again later",
            )),
            Response::ReplyCode(t) => {
                let r = reply_of(&t);
                if r.code() >= 500 {
                    Verdict::Reject(r)
                } else {
                    Verdict::Tempfail(r)
                }
            }
            Response::Discard => Verdict::Discard,
            Response::ConnFail | Response::Shutdown => {
                Verdict::Tempfail(Reply::new(421, "4.7.0".parse().ok(), "Service unavailable"))
            }
            _ => Verdict::Continue,
        }
    }

    /// HELO/EHLO; `tls` is (protocol version, cipher) once STARTTLS is done.
    pub async fn helo(&mut self, name: &str, tls: Option<&(String, String)>) -> Verdict {
        let cmd = Command::Helo(name.to_string());
        let macros: Vec<(&str, String)> = match tls {
            Some((version, cipher)) => vec![
                ("{tls_version}", version.clone()),
                ("{cipher}", cipher.clone()),
            ],
            None => Vec::new(),
        };
        self.stage(SMFIC_HELO, &cmd, Steps::NOHELO, Steps::NR_HELO, &macros)
            .await
    }

    pub async fn mail(&mut self, from: &str, args: Vec<String>, queue_id: &str) -> Verdict {
        for c in self.conns.iter_mut().flatten() {
            c.accepted = false;
            c.skip_body = false;
        }
        let mut a = vec![format!("<{from}>")];
        a.extend(args);
        let macros = [
            ("i", queue_id.to_string()),
            ("{mail_addr}", from.to_string()),
        ];
        self.stage(
            SMFIC_MAIL,
            &Command::Mail(a),
            Steps::NOMAIL,
            Steps::NR_MAIL,
            &macros,
        )
        .await
    }

    pub async fn rcpt(&mut self, to: &str) -> Verdict {
        let macros = [("{rcpt_addr}", to.to_string())];
        let cmd = Command::Rcpt(vec![format!("<{to}>")]);
        self.stage(SMFIC_RCPT, &cmd, Steps::NORCPT, Steps::NR_RCPT, &macros)
            .await
    }

    /// DATA, the headers, the body in chunks, and the end of message, at every milter.
    /// `content` is the message as received (with our Received header first).
    pub async fn message(
        &mut self,
        mut content: Box<dyn Read + Send>,
        queue_id: &str,
    ) -> (Verdict, Changes) {
        let mut changes = Changes::default();
        let data = self
            .stage(
                SMFIC_DATA,
                &Command::Data,
                Steps::NODATA,
                Steps::NR_DATA,
                &[("i", queue_id.into())],
            )
            .await;
        if data != Verdict::Continue {
            return (data, changes);
        }
        // Headers are small: read them whole; the body goes out chunk by chunk.
        let head = read_header_section(&mut content);
        let headers = parse_headers(&head);
        for (name, value) in &headers {
            let cmd = Command::Header {
                name: name.clone(),
                value: value.trim_start().to_string(),
            };
            let v = self
                .call_all(None, &cmd, Steps::NOHDRS, Steps::NR_HDR, &mut changes)
                .await;
            if v != Verdict::Continue {
                return (v, changes);
            }
        }
        let v = self
            .call_all(
                None,
                &Command::EndOfHeaders,
                Steps::NOEOH,
                Steps::NR_EOH,
                &mut changes,
            )
            .await;
        if v != Verdict::Continue {
            return (v, changes);
        }
        let mut chunk = vec![0u8; CHUNK];
        loop {
            let n = match content.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let cmd = Command::Body(chunk[..n].to_vec());
            let v = self
                .call_all(None, &cmd, Steps::NOBODY, Steps::NR_BODY, &mut changes)
                .await;
            if v != Verdict::Continue {
                return (v, changes);
            }
        }
        let eom = self.macros(SMFIC_BODYEOB, &[("i", queue_id.to_string())]);
        let v = self
            .call_all(
                Some(&eom),
                &Command::EndOfBody,
                Steps::empty(),
                Steps::empty(),
                &mut changes,
            )
            .await;
        (v, changes)
    }

    /// The transaction was reset (RSET, or refused): milters forget the message.
    pub async fn abort(&mut self) {
        for slot in &mut self.conns {
            if let Some(c) = slot
                && c.send(&Command::Abort).await.is_err()
            {
                *slot = None;
            }
        }
    }

    pub async fn quit(&mut self) {
        for c in self.conns.iter_mut().flatten() {
            let _ = c.send(&Command::Quit).await;
        }
    }
}

/// Forgets a milter that failed; its `on_failure` decides whether the stage goes on.
fn drop_failed(slot: &mut Option<Conn>, e: &Failure) -> Option<Verdict> {
    let c = slot.take()?;
    warn!(milter = %c.name, "milter failed: {e}");
    failure_verdict(c.on_failure)
}

fn name_of(m: &Milter) -> String {
    match &m.address {
        MilterAddress::Inet(a) => format!("inet:{a}"),
        MilterAddress::Unix(p) => format!("unix:{}", p.display()),
    }
}

/// What a broken milter means under its `on_failure`; `None` carries on without it.
fn failure_verdict(f: MilterFailure) -> Option<Verdict> {
    match f {
        MilterFailure::Accept => None,
        MilterFailure::Tempfail => Some(Verdict::Tempfail(Reply::new(
            451,
            "4.3.0".parse().ok(),
            "Temporary failure in content checks, try again later",
        ))),
        MilterFailure::Reject => Some(Verdict::Reject(Reply::new(
            550,
            "5.7.1".parse().ok(),
            "Content checks unavailable",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_from_milters() {
        let r = reply_of("550 5.7.1 no thanks");
        assert_eq!(r.code(), 550);
        assert_eq!(r.to_string().trim_end(), "550 5.7.1 no thanks");
        assert_eq!(strip("<a@b>"), "a@b");
    }
}
