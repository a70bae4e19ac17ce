//! The SMTP/LMTP client side of one connection (SMTPRC / sendmail X SMTPC): greeting,
//! EHLO (HELO fallback, or neither), opportunistic STARTTLS, then one transaction per message
//! with full PIPELINING when offered, and per-recipient results.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use config::TlsPolicy;
use smtp_proto::{
    Capabilities, Command, DotStuffer, ForwardPath, MailParams, Mailbox, Notify as WireNotify,
    RcptParams, Reply, ReplyParser, Ret, ReversePath,
};
use spool::{BodyType, DsnRet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::info;

use super::{JobMessage, RcptOutcome};

/// Any byte stream we can speak SMTP over (TCP, TLS over TCP, a unix socket).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Clone)]
pub struct ClientSettings {
    pub hostname: String,
    /// `[delivery]`: HELO, timeouts, transcript and the TLS policy (which `[tls_policy]`
    /// may override per destination).
    pub delivery: config::Delivery,
    pub tls_config: Arc<rustls::ClientConfig>,
    /// For `TlsPolicy::Verify`; loaded at start when any policy asks for it.
    pub verify_config: Option<Arc<rustls::ClientConfig>>,
}

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
    #[error("{0}: protocol error: {1}")]
    Protocol(String, String),
}

impl SessionError {
    /// The reply text a deferred recipient carries in the queue and in DSNs.
    pub fn as_reply_text(&self) -> String {
        match self {
            SessionError::Refused(_, r) => format!("{self} ({})", r.code()),
            other => format!("4.4.1 {other}"),
        }
    }
}

pub struct Client {
    io: Box<dyn Io>,
    parser: ReplyParser,
    pub caps: Capabilities,
    pub lmtp: bool,
    pub relay: String,
    settings: ClientSettings,
    tls: bool,
}

impl Client {
    /// Greets, says EHLO/LHLO, and upgrades to TLS when offered and allowed.
    pub async fn start(
        io: Box<dyn Io>,
        relay: String,
        lmtp: bool,
        settings: ClientSettings,
        server_name: &str,
    ) -> Result<Client, SessionError> {
        let mut c = Client {
            io,
            parser: ReplyParser::new(),
            caps: Capabilities::default(),
            lmtp,
            relay,
            settings,
            tls: false,
        };
        let greeting = c.read_reply(c.settings.delivery.greeting_timeout).await?;
        if !greeting.is_positive() {
            return Err(SessionError::Refused(c.relay.clone(), greeting));
        }
        c.hello().await?;
        let want_tls = c.settings.delivery.tls != TlsPolicy::None && !lmtp;
        if want_tls && c.caps.starttls {
            c.starttls(server_name).await?;
            c.hello().await?;
        } else if matches!(
            c.settings.delivery.tls,
            TlsPolicy::Required | TlsPolicy::Verify
        ) && !lmtp
        {
            return Err(SessionError::Tls(
                c.relay.clone(),
                "STARTTLS required by policy but not offered".into(),
            ));
        }
        Ok(c)
    }

    async fn hello(&mut self) -> Result<(), SessionError> {
        let name = self.settings.hostname.clone();
        if self.lmtp {
            let r = self
                .command(
                    &Command::Lhlo(name),
                    self.settings.delivery.greeting_timeout,
                )
                .await?;
            if !r.is_positive() {
                return Err(SessionError::Refused(self.relay.clone(), r));
            }
            self.caps = Capabilities::from_ehlo(&r);
            return Ok(());
        }
        if !self.settings.delivery.helo {
            // SMTPRC /HELO-: servers that do not insist get no greeting round trip.
            self.caps = Capabilities::default();
            return Ok(());
        }
        let r = self
            .command(
                &Command::Ehlo(name.clone()),
                self.settings.delivery.greeting_timeout,
            )
            .await?;
        if r.is_positive() {
            self.caps = Capabilities::from_ehlo(&r);
            return Ok(());
        }
        let r = self
            .command(
                &Command::Helo(name),
                self.settings.delivery.greeting_timeout,
            )
            .await?;
        if !r.is_positive() {
            return Err(SessionError::Refused(self.relay.clone(), r));
        }
        self.caps = Capabilities::default();
        Ok(())
    }

    async fn starttls(&mut self, server_name: &str) -> Result<(), SessionError> {
        let r = self
            .command(&Command::StartTls, self.settings.delivery.greeting_timeout)
            .await?;
        if !r.is_positive() {
            return Err(SessionError::Tls(
                self.relay.clone(),
                format!("STARTTLS refused: {r}"),
            ));
        }
        let verify = self.settings.delivery.tls == TlsPolicy::Verify;
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned());
        // Unverified TLS needs some name for SNI; a verified one must be the MX host's.
        let name = if verify {
            name
        } else {
            name.or_else(|_| rustls::pki_types::ServerName::try_from("localhost".to_owned()))
        }
        .map_err(|e| SessionError::Tls(self.relay.clone(), e.to_string()))?;
        let config = if verify {
            self.settings.verify_config.clone().ok_or_else(|| {
                SessionError::Tls(self.relay.clone(), "no CA certificates loaded".into())
            })?
        } else {
            self.settings.tls_config.clone()
        };
        let connector = tokio_rustls::TlsConnector::from(config);
        // The plain stream is replaced by the TLS one; a placeholder fills the gap.
        let plain = std::mem::replace(&mut self.io, Box::new(tokio::io::duplex(1).0));
        let tls = tokio::time::timeout(
            self.settings.delivery.greeting_timeout,
            connector.connect(name, plain),
        )
        .await
        .map_err(|_| SessionError::Timeout(self.relay.clone()))?
        .map_err(|e| SessionError::Tls(self.relay.clone(), e.to_string()))?;
        self.io = Box::new(tls);
        self.parser = ReplyParser::new();
        self.tls = true;
        Ok(())
    }

    fn log(&self, dir: &str, text: &str, id: Option<&str>) {
        if self.settings.delivery.transcript {
            for line in text.trim_end().split("\r\n") {
                info!(queue_id = id.unwrap_or("-"), relay = %self.relay, "{dir} {line}");
            }
        }
    }

    async fn write(&mut self, bytes: &[u8], limit: Duration) -> Result<(), SessionError> {
        match tokio::time::timeout(limit, self.io.write_all(bytes)).await {
            Err(_) => Err(SessionError::Timeout(self.relay.clone())),
            Ok(Err(e)) => Err(SessionError::Lost(self.relay.clone(), e)),
            Ok(Ok(())) => Ok(()),
        }
    }

    async fn read_reply(&mut self, limit: Duration) -> Result<Reply, SessionError> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(r) = self.parser.next_reply() {
                let r = r.map_err(|e| SessionError::Protocol(self.relay.clone(), e.to_string()))?;
                if self.settings.delivery.transcript {
                    self.log("<-", &String::from_utf8_lossy(&r.to_bytes()), None);
                }
                return Ok(r);
            }
            let n = match tokio::time::timeout(limit, self.io.read(&mut buf)).await {
                Err(_) => return Err(SessionError::Timeout(self.relay.clone())),
                Ok(Err(e)) => return Err(SessionError::Lost(self.relay.clone(), e)),
                Ok(Ok(0)) => {
                    return Err(SessionError::Lost(
                        self.relay.clone(),
                        std::io::ErrorKind::UnexpectedEof.into(),
                    ));
                }
                Ok(Ok(n)) => n,
            };
            self.parser.push(&buf[..n]);
        }
    }

    async fn command(&mut self, cmd: &Command, limit: Duration) -> Result<Reply, SessionError> {
        let line = cmd.to_line();
        self.log("->", &line, None);
        self.write(line.as_bytes(), limit).await?;
        self.read_reply(limit).await
    }

    /// One transaction; the caller sends RSET before the next one. `Ok` carries a result per recipient (index, outcome); `Err` means the
    /// connection is unusable and every recipient of this message is still open.
    pub async fn send(
        &mut self,
        msg: &JobMessage,
        mut content: impl Read,
    ) -> Result<Vec<(u16, RcptOutcome)>, SessionError> {
        let id = msg.id.to_string();
        let fail_all = |reply: String| -> Vec<(u16, RcptOutcome)> {
            msg.recipients
                .iter()
                .map(|r| {
                    (
                        r.index,
                        RcptOutcome::Failed {
                            relay: None,
                            reply: reply.clone(),
                        },
                    )
                })
                .collect()
        };
        if let Some(limit) = self.caps.size.filter(|&n| n > 0)
            && msg.size > limit
        {
            return Ok(fail_all(format!(
                "552 5.3.4 message size {} exceeds the limit of {limit} announced by {}",
                msg.size, self.relay
            )));
        }
        if msg.smtputf8 && !self.caps.smtputf8 {
            return Ok(fail_all(format!(
                "553 5.6.7 {} does not support SMTPUTF8, which this message needs",
                self.relay
            )));
        }
        if msg.body == BodyType::BinaryMime && !(self.caps.binarymime && self.caps.chunking) {
            return Ok(fail_all(format!(
                "554 5.6.3 {} does not support BINARYMIME",
                self.relay
            )));
        }
        let from = if msg.sender.is_empty() {
            ReversePath::Null
        } else {
            match Mailbox::parse(&msg.sender) {
                Ok(m) => ReversePath::Mailbox(m),
                Err(_) => {
                    return Ok(fail_all(format!(
                        "553 5.1.7 bad sender address {}",
                        msg.sender
                    )));
                }
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
        let mut cmds = vec![Command::Mail { from, params }];
        let mut bad_rcpts = Vec::new();
        for r in &msg.recipients {
            match Mailbox::parse(&r.address) {
                Ok(m) => {
                    let params = if dsn {
                        RcptParams {
                            notify: Some(WireNotify {
                                never: r.notify.never,
                                success: r.notify.success,
                                failure: r.notify.failure,
                                delay: r.notify.delay,
                            })
                            .filter(|n| n.never || n.success || n.failure || n.delay),
                            orcpt: r.orcpt.as_deref().and_then(|o| {
                                o.split_once(';').map(|(k, a)| (k.to_owned(), a.to_owned()))
                            }),
                        }
                    } else {
                        RcptParams::default()
                    };
                    cmds.push(Command::Rcpt {
                        to: ForwardPath::Mailbox(m),
                        params,
                    });
                }
                Err(_) => bad_rcpts.push(r.index),
            }
        }
        let chunking = msg.body == BodyType::BinaryMime;
        let rcpt_cmds: Vec<u16> = msg
            .recipients
            .iter()
            .map(|r| r.index)
            .filter(|i| !bad_rcpts.contains(i))
            .collect();

        // MAIL, RCPT..., DATA: one write when pipelining, one round trip each otherwise.
        let mut replies = Vec::with_capacity(cmds.len() + 1);
        if self.caps.pipelining {
            let mut batch = String::new();
            for c in &cmds {
                batch.push_str(&c.to_line());
            }
            if !chunking {
                batch.push_str(&Command::Data.to_line());
            }
            self.log("->", &batch, Some(&id));
            self.write(batch.as_bytes(), self.settings.delivery.mail_timeout)
                .await?;
            for i in 0..cmds.len() + usize::from(!chunking) {
                let limit = if i == 0 {
                    self.settings.delivery.mail_timeout
                } else {
                    self.settings.delivery.rcpt_timeout
                };
                replies.push(self.read_reply(limit).await?);
            }
        } else {
            let r = self
                .command(&cmds[0], self.settings.delivery.mail_timeout)
                .await?;
            let mail_ok = r.is_positive();
            replies.push(r);
            if mail_ok {
                for c in &cmds[1..] {
                    replies.push(self.command(c, self.settings.delivery.rcpt_timeout).await?);
                }
            }
        }
        let mail_reply = replies[0].clone();
        let mut results: Vec<(u16, RcptOutcome)> = bad_rcpts
            .iter()
            .map(|&i| {
                (
                    i,
                    RcptOutcome::Failed {
                        relay: None,
                        reply: "553 5.1.3 bad recipient address".into(),
                    },
                )
            })
            .collect();
        if !mail_reply.is_positive() {
            self.abort_data(replies.last()).await?;
            results.extend(rcpt_cmds.iter().map(|&i| (i, self.outcome(&mail_reply))));
            return Ok(results);
        }
        let mut accepted = Vec::new();
        for (k, &i) in rcpt_cmds.iter().enumerate() {
            let r = &replies[k + 1];
            if r.is_positive() {
                accepted.push(i);
            } else {
                results.push((i, self.outcome(r)));
            }
        }
        let data_reply = if chunking {
            None
        } else if self.caps.pipelining {
            replies.last().cloned()
        } else if accepted.is_empty() {
            None
        } else {
            Some(
                self.command(&Command::Data, self.settings.delivery.data_timeout)
                    .await?,
            )
        };
        if accepted.is_empty() {
            if self.caps.pipelining {
                self.abort_data(data_reply.as_ref()).await?;
            }
            return Ok(results);
        }
        if let Some(d) = &data_reply
            && d.code() != 354
        {
            results.extend(accepted.iter().map(|&i| (i, self.outcome(d))));
            return Ok(results);
        }
        // Stream the content: never the whole message in memory.
        let mut stuffer = DotStuffer::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut wire = Vec::with_capacity(66 * 1024);
        loop {
            // The spool reads from the page cache or one local file; a blocking read of one
            // 64 KiB chunk is shorter than a context switch to a blocking thread.
            let n = content.read(&mut chunk).map_err(|e| {
                SessionError::Protocol(self.relay.clone(), format!("spool read: {e}"))
            })?;
            if n == 0 {
                break;
            }
            wire.clear();
            if chunking {
                wire.extend_from_slice(format!("BDAT {n}\r\n").as_bytes());
                wire.extend_from_slice(&chunk[..n]);
            } else {
                stuffer.encode(&chunk[..n], &mut wire);
            }
            let w = std::mem::take(&mut wire);
            self.write(&w, self.settings.delivery.data_block_timeout)
                .await?;
            wire = w;
            if chunking {
                let r = self
                    .read_reply(self.settings.delivery.data_block_timeout)
                    .await?;
                if !r.is_positive() {
                    results.extend(accepted.iter().map(|&i| (i, self.outcome(&r))));
                    return Ok(results);
                }
            }
        }
        wire.clear();
        if chunking {
            wire.extend_from_slice(b"BDAT 0 LAST\r\n");
        } else {
            stuffer.finish(&mut wire);
        }
        self.log("->", "<message content>", Some(&id));
        self.write(&wire, self.settings.delivery.data_block_timeout)
            .await?;
        if self.lmtp {
            // RFC 2033: one reply per accepted recipient, in order.
            for &i in &accepted {
                let r = self
                    .read_reply(self.settings.delivery.data_done_timeout)
                    .await?;
                results.push((i, self.outcome(&r)));
            }
        } else {
            let r = self
                .read_reply(self.settings.delivery.data_done_timeout)
                .await?;
            results.extend(accepted.iter().map(|&i| (i, self.outcome(&r))));
        }
        Ok(results)
    }

    /// A pipelined DATA that got 354 although nothing was accepted must still be ended with
    /// an empty message (RFC 2920 §3.1), or the server would take our RSET as text.
    async fn abort_data(&mut self, data_reply: Option<&Reply>) -> Result<(), SessionError> {
        if self.caps.pipelining && data_reply.is_some_and(|r| r.code() == 354) {
            self.write(b".\r\n", self.settings.delivery.data_block_timeout)
                .await?;
            self.read_reply(self.settings.delivery.data_done_timeout)
                .await?;
        }
        Ok(())
    }

    fn outcome(&self, r: &Reply) -> RcptOutcome {
        let reply = r.to_string();
        if r.is_positive() {
            RcptOutcome::Delivered {
                relay: self.relay.clone(),
                reply,
                // RFC 3461 §5.2: an LMTP server delivers; a DSN-capable relay reports
                // success itself; any other relay leaves us to say "relayed".
                handoff: if self.lmtp {
                    spool::Handoff::Final
                } else if self.caps.dsn {
                    spool::Handoff::DsnCapable
                } else {
                    spool::Handoff::Relayed
                },
            }
        } else if r.is_transient() {
            RcptOutcome::Deferred {
                relay: Some(self.relay.clone()),
                reply,
            }
        } else {
            RcptOutcome::Failed {
                relay: Some(self.relay.clone()),
                reply,
            }
        }
    }

    pub async fn rset(&mut self) -> Result<(), SessionError> {
        let r = self
            .command(&Command::Rset, self.settings.delivery.mail_timeout)
            .await?;
        if r.is_positive() {
            Ok(())
        } else {
            Err(SessionError::Refused(self.relay.clone(), r))
        }
    }

    pub async fn quit(mut self) {
        let _ = self.command(&Command::Quit, Duration::from_secs(10)).await;
        let _ = self.io.shutdown().await;
    }
}

/// TCP connect with the connect timeout and an optional source address.
pub async fn connect_tcp(
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    limit: Duration,
) -> Result<tokio::net::TcpStream, SessionError> {
    let sock = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(|e| SessionError::Connect(addr.to_string(), e))?;
    if let Some(ip) = source {
        sock.bind(SocketAddr::new(ip, 0))
            .map_err(|e| SessionError::Connect(addr.to_string(), e))?;
    }
    let stream = tokio::time::timeout(limit, sock.connect(addr))
        .await
        .map_err(|_| SessionError::Timeout(addr.to_string()))?
        .map_err(|e| SessionError::Connect(addr.to_string(), e))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
