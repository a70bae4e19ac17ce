//! The local submission socket, `SPOOL/submit.sock`: how `sendmail` hands mail to the running
//! daemon. The kernel tells us who is on the other end (SO_PEERCRED), so the submitting uid
//! is a fact, not a claim, and the local-submission policy (`local.rs`) applies to it exactly
//! as it does to a pickup file.
//!
//! The client sends a pickup file's bytes (sender line, recipient lines, empty line,
//! message) and shuts down its writing side; the daemon answers with one SMTP-style reply
//! line (`250 2.0.0 Ok: queued as ID` once the message is durable) and closes.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::local::Cleanup;
use crate::local::{Policies, Policy, Refusal};

/// Submissions read at once: each is held in memory up to the size limit.
const CONCURRENT: usize = 8;
/// Connections one uid may hold open (reading or waiting for a slot), so one user cannot
/// take every slot from the others; more get 451 and `sendmail` uses the pickup directory.
const PER_UID: usize = 2;
/// Connections in all, so idle connections cannot pile up tasks without bound.
const MAX_OPEN: usize = 256;
/// A client that sends nothing for this long is dropped.
const IDLE: Duration = Duration::from_secs(60);

/// In the spool's top directory, which only the daemon can write to, so no local user can
/// put a socket of their own there and catch other users' mail.
pub fn socket_path(spool: &Path) -> PathBuf {
    spool.join("submit.sock")
}

/// Serves the socket until shutdown; submissions being read or committed then get to finish.
pub async fn serve(
    path: PathBuf,
    cleanup: Arc<Cleanup>,
    policies: Arc<Policies>,
    shutdown: CancellationToken,
) {
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            warn!(
                "local submission socket {}: {e}; sendmail will use the pickup directory",
                path.display()
            );
            return;
        }
    };
    // Anyone may connect: who they are comes from the kernel, what they may do from the policy.
    if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)) {
        warn!("local submission socket {}: {e}", path.display());
    }
    info!("local submission on {}", path.display());
    let slots = Arc::new(Semaphore::new(CONCURRENT));
    let open = Arc::new(Mutex::new(HashMap::<u32, usize>::new()));
    let tasks = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!("local submission socket: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let uid = match stream.peer_cred() {
            Ok(c) => c.uid(),
            Err(e) => {
                warn!("local submission: cannot tell who connected: {e}");
                continue;
            }
        };
        let Some(guard) = OpenGuard::take(&open, uid) else {
            tasks.spawn(async move {
                let r = refusal(451, "4.7.0", "too many open local submissions; try later");
                info!(uid, "local submission refused: {r}");
                let mut stream = stream;
                let _ = stream.write_all(format!("{r}\r\n").as_bytes()).await;
            });
            continue;
        };
        let (cleanup, policy, slots) = (cleanup.clone(), policies.current(), slots.clone());
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let _guard = guard;
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            handle(stream, uid, &cleanup, &policy, &shutdown).await;
        });
    }
    drop(listener);
    let _ = std::fs::remove_file(&path);
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(20), tasks.wait())
        .await
        .is_err()
    {
        warn!("local submissions still open at shutdown; their senders will retry");
    }
}

/// One open connection counted against its uid (and the total) until dropped.
struct OpenGuard {
    open: Arc<Mutex<HashMap<u32, usize>>>,
    uid: u32,
}

impl OpenGuard {
    fn take(open: &Arc<Mutex<HashMap<u32, usize>>>, uid: u32) -> Option<OpenGuard> {
        let mut m = open.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = m.values().sum();
        let mine = m.entry(uid).or_default();
        if *mine >= PER_UID || total >= MAX_OPEN {
            return None;
        }
        *mine += 1;
        Some(OpenGuard {
            open: open.clone(),
            uid,
        })
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let mut m = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.uid);
            }
        }
    }
}

async fn handle(
    mut stream: UnixStream,
    uid: u32,
    cleanup: &Cleanup,
    policy: &Arc<Policy>,
    shutdown: &CancellationToken,
) {
    let reply = match receive(&mut stream, uid, cleanup, policy, shutdown).await {
        Ok(id) => format!("250 2.0.0 Ok: queued as {id}\r\n"),
        Err(r) => {
            info!(uid, "local submission refused: {r}");
            format!("{r}\r\n")
        }
    };
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}

async fn receive(
    stream: &mut UnixStream,
    uid: u32,
    cleanup: &Cleanup,
    policy: &Arc<Policy>,
    shutdown: &CancellationToken,
) -> Result<spool::TxnId, Refusal> {
    let limit = policy.read_limit();
    let mut data = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            r = tokio::time::timeout(IDLE, stream.read(&mut buf)) => match r {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(refusal(451, "4.3.0", format!("reading: {e}"))),
                Err(_) => return Err(refusal(421, "4.4.2", "timeout: nothing sent for 60 s")),
            },
            _ = shutdown.cancelled() => {
                return Err(refusal(421, "4.3.2", "the daemon is shutting down"));
            }
        };
        if n == 0 {
            break;
        }
        if data.len() as u64 + n as u64 > limit {
            return Err(refusal(
                552,
                "5.3.4",
                format!("message is over the size limit of {limit} bytes"),
            ));
        }
        data.extend_from_slice(&buf[..n]);
    }
    let (sender, rcpts, msg) = crate::pickup::parse(&data).map_err(|e| refusal(501, "5.5.4", e))?;
    let user = tokio::task::spawn_blocking(move || crate::local::user_name(uid))
        .await
        .ok()
        .flatten();
    let accepted = policy.check(
        uid,
        user.as_deref(),
        &sender,
        &rcpts,
        msg.len() as u64,
        Instant::now(),
    )?;
    policy
        .enqueue(cleanup, uid, "sendmail", accepted, msg)
        .await
}

fn refusal(code: u16, status: &'static str, text: impl Into<String>) -> Refusal {
    Refusal {
        code,
        status,
        text: text.into(),
    }
}
