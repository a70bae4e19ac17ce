//! The SMTP server: listeners, connection admission, and sessions. A session checks what it
//! can itself (order, syntax, relay, size, content policy) and hands a finished message to
//! cleanup; it answers `250` only once cleanup says the message is durable.

pub mod conn;
pub mod limits;
pub mod machine;
pub mod policy;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use config::Config;
use resolver::{LocalPolicy, RcptCheck};
use smtp_proto::Reply;
use spool::Spool;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use conn::Conn;
use limits::{ConnLimits, Refusal};
use queue::QueueHandle;
use session::{Next, Session};

/// What every session shares: read-only configuration and handles to the owners of state.
pub struct Ctx {
    /// The configuration the daemon started with (listeners, limits, TLS, delivery).
    pub cfg: Arc<Config>,
    /// What new sessions use: replaced on SIGHUP.
    pub current: std::sync::RwLock<Arc<Config>>,
    pub spool: Spool,
    pub queue: QueueHandle,
    /// Replaced on SIGHUP (users and aliases are safe to reload mid-flight).
    pub local: std::sync::RwLock<Arc<LocalPolicy>>,
    pub tls: Option<TlsAcceptor>,
    pub shutdown: CancellationToken,
    pub limits: ConnLimits,
    /// Where every finished message goes: hop count, milter edits, list copies, commit.
    pub cleanup: Arc<cleanup::Cleanup<QueueHandle>>,
}

impl Ctx {
    /// The configuration new sessions should use.
    pub fn config(&self) -> Arc<Config> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Does this local part exist in a local domain? `Ok`: where its mail goes (aliases
    /// expanded); `Err` is the reply to send.
    /// The owner of a local list (an `owner-NAME` alias), as a local part or address.
    pub fn list_owner(&self, local_part: &str) -> Option<String> {
        self.local
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .owner_of(local_part)
    }

    pub async fn check_local(&self, local_part: &str) -> Result<Vec<String>, Reply> {
        let local = self.local.read().unwrap_or_else(|p| p.into_inner()).clone();
        match local.check(local_part) {
            RcptCheck::Local { targets } => Ok(targets),
            RcptCheck::UnknownUser => Err(machine::replies::user_unknown(local_part)),
            RcptCheck::TempFail(reason) => {
                warn!("local recipient check failed: {reason}");
                Err(machine::replies::LOOKUP_FAILED.reply())
            }
        }
    }
}

/// Accepts connections on one listener until shutdown.
pub async fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>, tracker: TaskTracker) {
    loop {
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = ctx.shutdown.cancelled() => return,
        };
        let ctx2 = ctx.clone();
        match ctx.limits.admit(peer.ip()) {
            Ok(permit) => {
                tracker.spawn(async move {
                    run_session(sock, peer, ctx2).await;
                    drop(permit);
                });
            }
            Err(why) => {
                let text = match why {
                    Refusal::TooManyOverall => machine::replies::TOO_MANY_CONNECTIONS,
                    Refusal::TooManyFromClient => machine::replies::TOO_MANY_FROM_CLIENT,
                };
                info!(client = %peer, "connection refused: {text}");
                tracker.spawn(async move {
                    let mut sock = sock;
                    let _ = sock.write_all(&session::refusal(text)).await;
                    let _ = sock.shutdown().await;
                });
            }
        }
    }
}

async fn run_session(sock: TcpStream, peer: SocketAddr, ctx: Arc<Ctx>) {
    let _ = sock.set_nodelay(true);
    let local = sock
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    let mut s = Session::new(ctx.clone(), peer, local);
    debug!(session = %s.id(), client = %peer, "connect");
    let delay = ctx.config().smtp.greeting_delay;
    if !delay.is_zero() {
        // A client that talks before our greeting is not waiting for replies: a spambot or a
        // pipelining abuser (RFC 5321 §4.3.1 forbids it).
        let mut probe = [0u8; 1];
        tokio::select! {
            r = sock.peek(&mut probe) => {
                if matches!(r, Ok(n) if n > 0) {
                    info!(session = %s.id(), client = %peer, "rejected: talked before the greeting");
                    let mut sock = sock;
                    let out = machine::replies::TALKED_EARLY.reply().to_bytes();
                    let _ = sock.write_all(&out).await;
                    return;
                }
                if r.is_err() || matches!(r, Ok(0)) {
                    return;
                }
            }
            _ = tokio::time::sleep(delay) => {}
        }
    }
    let mut conn = Conn::new(sock);
    match s.drive(&mut conn).await {
        Next::Close => {}
        Next::StartTls => {
            let Some(acceptor) = ctx.tls.clone() else {
                return;
            };
            let tls =
                match tokio::time::timeout(ctx.cfg.smtp.command_timeout, acceptor.accept(conn.io))
                    .await
                {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        info!(session = %s.id(), client = %peer, "TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => return,
                };
            let (_, state) = tls.get_ref();
            let version = state
                .protocol_version()
                .and_then(|v| v.as_str())
                .unwrap_or("TLS")
                .to_owned();
            let cipher = state
                .negotiated_cipher_suite()
                .and_then(|c| c.suite().as_str())
                .unwrap_or("unknown")
                .to_owned();
            s.tls_started(version, cipher);
            let mut conn = Conn::new(tls);
            let _ = s.drive(&mut conn).await;
        }
    }
    s.end().await;
    debug!(session = %s.id(), client = %peer, "disconnect");
}

/// Loads the certificate chain and key for STARTTLS.
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<TlsAcceptor> {
    use anyhow::Context;
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).with_context(|| format!("smtp.tls_cert {}", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("smtp.tls_cert {}: not a PEM certificate", cert.display()))?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).with_context(|| format!("smtp.tls_key {}", key.display()))?,
    ))
    .with_context(|| format!("smtp.tls_key {}", key.display()))?
    .with_context(|| format!("smtp.tls_key {}: no private key found", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("smtp.tls_cert/tls_key do not form a usable pair")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
