//! The control socket: a unix socket (owner-only) in the spool directory over which
//! `postrider queue ...` asks the running daemon's queue manager to list, show, flush, hold,
//! release and delete. One JSON request line in, one JSON response line out.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use queue::QueueHandle;
use queue::api::{Request, Response};

/// Serves the control socket until shutdown. The socket is created owner-only (0600).
pub async fn serve(
    path: PathBuf,
    queue: QueueHandle,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let _ = std::fs::remove_file(&path);
    // Bound after the switch to the daemon's user, under its umask 077: owner-only from
    // the moment it exists; the chmod makes the mode exact whatever the umask was.
    let listener = UnixListener::bind(&path)?;
    set_owner_only(&path)?;
    // Only the daemon's user can connect, but a stuck script must not pile up tasks: past
    // this many open connections a new one is closed at once. Each is tracked and waited for
    // (briefly) at shutdown.
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tasks = TaskTracker::new();
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => r?,
            _ = shutdown.cancelled() => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!("control socket: {MAX_CONNECTIONS} connections open, one refused");
            continue;
        };
        let queue = queue.clone();
        tasks.spawn(async move {
            if let Err(e) = answer(stream, queue).await {
                tracing::debug!("control connection: {e}");
            }
            drop(permit);
        });
    }
    let _ = std::fs::remove_file(&path);
    tasks.close();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tasks.wait()).await;
    Ok(())
}

/// Control connections open at once.
const MAX_CONNECTIONS: usize = 16;

fn set_owner_only(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

async fn answer(stream: UnixStream, queue: QueueHandle) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => queue.control(req).await,
            Err(e) => Response::error(format!("bad request: {e}")),
        };
        let mut out = serde_json::to_vec(&resp).map_err(std::io::Error::other)?;
        out.push(b'\n');
        w.write_all(&out).await?;
    }
    Ok(())
}

/// Client side for the CLI: one request, one response. `Ok(None)` when no daemon listens.
pub fn request(path: &Path, req: &Request) -> std::io::Result<Option<Response>> {
    use std::io::{BufRead, Write};
    let stream = match std::os::unix::net::UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let mut w = stream.try_clone()?;
    let mut line = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)?;
    let mut resp = String::new();
    std::io::BufReader::new(stream).read_line(&mut resp)?;
    serde_json::from_str(&resp)
        .map(Some)
        .map_err(|e| std::io::Error::other(format!("bad response from daemon: {e}")))
}
