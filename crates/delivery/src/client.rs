//! The async driver of one SMTP/LMTP client connection (SMTPRC / sendmail X SMTPC): it
//! connects, keeps the clocks, moves bytes between the socket and the sans-IO machine
//! (`protocol.rs`, which decides every command, pipelining group and outcome), does the
//! TLS handshake the machine asks for, streams content, and logs the transcript.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use config::TlsPolicy;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::info;

use super::{JobMessage, RcptOutcome};
pub use crate::protocol::SessionError;
use crate::protocol::{ClientMachine, Envelope, Framer, Greeting, Log, Output, Timer};

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

pub struct Client {
    io: Box<dyn Io>,
    machine: ClientMachine,
    pub relay: String,
    settings: ClientSettings,
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
        let machine = ClientMachine::new(
            relay.clone(),
            Greeting {
                hostname: settings.hostname.clone(),
                lmtp,
                helo: settings.delivery.helo,
                tls: settings.delivery.tls,
            },
        );
        let mut c = Client {
            io,
            machine,
            relay,
            settings,
        };
        loop {
            match c.step(None).await? {
                Output::Ready => return Ok(c),
                Output::StartTls => {
                    c.starttls(server_name).await?;
                    c.machine.tls_established();
                }
                other => return Err(c.unexpected(&other)),
            }
        }
    }

    pub fn caps(&self) -> &smtp_proto::Capabilities {
        self.machine.caps()
    }

    pub fn is_lmtp(&self) -> bool {
        self.machine.is_lmtp()
    }

    fn unexpected(&self, o: &Output) -> SessionError {
        SessionError::Protocol(self.relay.clone(), format!("client out of step: {o:?}"))
    }

    fn limit(&self, t: Timer) -> Duration {
        let d = &self.settings.delivery;
        match t {
            Timer::Greeting => d.greeting_timeout,
            Timer::Mail => d.mail_timeout,
            Timer::Rcpt => d.rcpt_timeout,
            Timer::Data => d.data_timeout,
            Timer::DataBlock => d.data_block_timeout,
            Timer::DataDone => d.data_done_timeout,
            Timer::Quit => Duration::from_secs(10),
        }
    }

    /// Moves bytes until the machine has something to say.
    async fn step(&mut self, id: Option<&str>) -> Result<Output, SessionError> {
        let mut buf = [0u8; 4096];
        loop {
            let Some(o) = self.machine.poll() else {
                return Err(SessionError::Protocol(
                    self.relay.clone(),
                    "client out of step: nothing to do".into(),
                ));
            };
            match o {
                Output::Write { bytes, timer, log } => {
                    match log {
                        Log::Session => self.log("->", &String::from_utf8_lossy(&bytes), None),
                        Log::Message => self.log("->", &String::from_utf8_lossy(&bytes), id),
                        Log::Quiet => {}
                    }
                    self.write(&bytes, self.limit(timer)).await?;
                }
                Output::Read(timer) => {
                    let limit = self.limit(timer);
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
                    self.machine.receive(&buf[..n]);
                }
                Output::Received(r) => {
                    if self.settings.delivery.transcript {
                        self.log("<-", &String::from_utf8_lossy(&r.to_bytes()), None);
                    }
                }
                Output::Failed(e) => return Err(e),
                other => return Ok(other),
            }
        }
    }

    async fn starttls(&mut self, server_name: &str) -> Result<(), SessionError> {
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
        .map_err(|e| SessionError::TlsHandshake(self.relay.clone(), e.to_string()))?;
        self.io = Box::new(tls);
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

    /// One transaction; the caller sends RSET before the next one. `Ok` carries a result per
    /// recipient (index, outcome); `Err` means the connection is unusable and every
    /// recipient of this message is still open.
    pub async fn send(
        &mut self,
        msg: &JobMessage,
        mut content: impl Read,
    ) -> Result<Vec<(u16, RcptOutcome)>, SessionError> {
        let id = msg.id.to_string();
        let id = Some(id.as_str());
        self.machine.send(&Envelope::from(msg));
        let mut framer = match self.step(id).await? {
            Output::MessageDone(results) => return Ok(results),
            Output::Content(framing) => Framer::new(framing),
            other => return Err(self.unexpected(&other)),
        };
        // Stream the content: never the whole message in memory.
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
            framer.encode(&chunk[..n], &mut wire);
            let w = std::mem::take(&mut wire);
            self.write(&w, self.settings.delivery.data_block_timeout)
                .await?;
            wire = w;
            if framer.is_bdat() {
                self.machine.chunk_sent();
                match self.step(id).await? {
                    Output::ChunkAccepted => {}
                    Output::MessageDone(results) => return Ok(results),
                    other => return Err(self.unexpected(&other)),
                }
            }
        }
        wire.clear();
        framer.finish(&mut wire);
        self.log("->", "<message content>", id);
        self.write(&wire, self.settings.delivery.data_block_timeout)
            .await?;
        self.machine.content_sent();
        match self.step(id).await? {
            Output::MessageDone(results) => Ok(results),
            other => Err(self.unexpected(&other)),
        }
    }

    pub async fn rset(&mut self) -> Result<(), SessionError> {
        self.machine.rset();
        match self.step(None).await? {
            Output::RsetDone => Ok(()),
            other => Err(self.unexpected(&other)),
        }
    }

    pub async fn quit(mut self) {
        self.machine.quit();
        let _ = self.step(None).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;

    fn settings() -> ClientSettings {
        ClientSettings {
            hostname: "me.test".into(),
            delivery: config::Delivery::default(),
            tls_config: crate::tls::client_config(),
            verify_config: None,
        }
    }

    /// A scripted server on the other end of a pipe: for each line the client writes, the
    /// next reply; returns what the client wrote.
    async fn server(io: tokio::io::DuplexStream, greeting: &str, replies: Vec<&str>) -> String {
        let (r, mut w) = tokio::io::split(io);
        let mut r = tokio::io::BufReader::new(r);
        w.write_all(greeting.as_bytes()).await.unwrap();
        let mut seen = String::new();
        for reply in replies {
            let mut line = String::new();
            if r.read_line(&mut line).await.unwrap() == 0 {
                break;
            }
            seen.push_str(&line);
            w.write_all(reply.as_bytes()).await.unwrap();
        }
        seen
    }

    #[tokio::test]
    async fn the_driver_moves_the_machines_bytes() {
        let (a, b) = tokio::io::duplex(4096);
        let srv = tokio::spawn(server(
            b,
            "220 mx\r\n",
            vec![
                "250-mx\r\n250 PIPELINING\r\n",
                "250 reset\r\n",
                "221 bye\r\n",
            ],
        ));
        let mut c = Client::start(Box::new(a), "mx".into(), false, settings(), "mx")
            .await
            .unwrap();
        assert!(c.caps().pipelining && !c.is_lmtp());
        c.rset().await.unwrap();
        c.quit().await;
        assert_eq!(srv.await.unwrap(), "EHLO me.test\r\nRSET\r\nQUIT\r\n");
    }

    #[tokio::test]
    async fn a_closed_connection_is_lost_and_a_refusal_is_refused() {
        let (a, b) = tokio::io::duplex(4096);
        drop(b);
        let e = Client::start(Box::new(a), "mx".into(), false, settings(), "mx")
            .await
            .err()
            .unwrap();
        assert!(matches!(e, SessionError::Lost(..)), "{e}");
        let (a, b) = tokio::io::duplex(4096);
        let srv = tokio::spawn(server(b, "220 mx\r\n", vec!["550 5.7.1 go away\r\n"]));
        let e = Client::start(Box::new(a), "mx".into(), true, settings(), "mx")
            .await
            .err()
            .unwrap();
        assert_eq!(e.as_reply_text(), "mx said: 550 5.7.1 go away (550)");
        assert_eq!(srv.await.unwrap(), "LHLO me.test\r\n");
    }
}
