//! The spool: where every accepted message and every change to the queue is made durable.
//!
//! Layout under the spool directory:
//!
//! ```text
//! daemon.lock       flock'd by the one process that owns the spool (0600)
//! log/N.seg         append-only segments of checksummed records (see `record`)
//! content/ID        content of messages over the inline limit, fsync'd before its record
//! ```
//!
//! `log/` and `content/` are 0700 and their files 0600 (see `layout`): queued mail is
//! readable by the spool's owner only.
//!
//! One writer thread owns the log. Callers send it requests over a bounded channel; it takes
//! every request waiting, writes them with one `write` and makes them durable with one
//! `fdatasync` (group commit), then answers each. Nobody hears "done" before the fsync
//! returned, which is what lets the SMTP server say 250.
//!
//! Space is reclaimed a whole segment at a time, oldest first: a segment whose messages have
//! all left the queue is deleted; a long-lived message pinning an old segment is copied
//! forward (with its current envelope) so the segment can go.

mod content;
mod envelope;
mod id;
mod layout;
pub mod record;
mod recovery;
mod state;
mod writer;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

pub use content::ContentWriter;
pub use envelope::{
    BodyType, DomainSchedule, DsnRet, Envelope, Handoff, MessageKind, Notify, RcptState, Recipient,
    Update,
};
pub use id::{BadId, IdGenerator, TxnId};
pub use layout::{FILE_MODE, Owner, PRIVATE_DIR_MODE, SPOOL_DIR_MODE, prepare};
pub use recovery::{Recovery, RecoveryReport, inspect};
use recovery::{recovery_of, replay};
use state::Loc;

/// The spool's clock: arrivals, retry times and schedules are stored as unix seconds, and
/// everyone who writes or compares them reads the time here (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Content up to this size goes inside the log record; bigger content gets its own file, so
/// the group-commit write stays small and big messages are streamed to disk as they arrive.
pub const INLINE_MAX: usize = 256 * 1024;

#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// A segment is closed and a new one begun past this size.
    pub segment_size: u64,
    /// Copy live messages forward out of the oldest segment once there are more segments
    /// than this.
    pub max_segments: usize,
}

impl SpoolConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SpoolConfig {
            dir: dir.into(),
            segment_size: 64 << 20,
            max_segments: 8,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    // The cause is part of the message and not also a `source`: error chains printed with
    // `{:#}` would name it twice.
    #[error("{context}: {cause}")]
    Io { context: String, cause: io::Error },
    #[error("writing the log failed: {message}")]
    Write { no_space: bool, message: String },
    #[error("the spool {0} is in use by another process")]
    Locked(PathBuf),
    #[error("the spool is shut down")]
    Closed,
    #[error("message {0} is not in the spool")]
    NotFound(TxnId),
}

fn io_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == nix::libc::ENOSPC || code == nix::libc::EDQUOT)
        || e.kind() == io::ErrorKind::StorageFull
}

impl SpoolError {
    fn io(context: impl Into<String>, source: io::Error) -> Self {
        SpoolError::Io {
            context: context.into(),
            cause: source,
        }
    }

    /// The file system is full: the client should be told 452 4.3.1, not 451.
    pub fn is_no_space(&self) -> bool {
        match self {
            SpoolError::Io { cause, .. } => io_no_space(cause),
            SpoolError::Write { no_space, .. } => *no_space,
            _ => false,
        }
    }

    /// The spool is there but this user may not read or write it.
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, SpoolError::Io { cause, .. } if cause.kind() == io::ErrorKind::PermissionDenied)
    }
}

/// A handle on a committed message's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRef {
    id: TxnId,
    len: u64,
}

impl MessageRef {
    pub fn id(&self) -> TxnId {
        self.id
    }

    /// Content length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Counters for benchmarks and metrics: how well group commit is batching.
#[derive(Debug, Default)]
pub struct Stats {
    pub commits: std::sync::atomic::AtomicU64,
    pub updates: std::sync::atomic::AtomicU64,
    /// fdatasync calls on the log; commits / fsyncs is the group-commit factor.
    pub fsyncs: std::sync::atomic::AtomicU64,
    /// Requests per group commit: counts per power-of-two bucket (1, 2, 4 ... 512).
    batch_buckets: [std::sync::atomic::AtomicU64; 10],
    batch_sum: std::sync::atomic::AtomicU64,
    batch_count: std::sync::atomic::AtomicU64,
}

impl Stats {
    pub(crate) fn record_batch(&self, n: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        let i = (usize::BITS - n.max(1).saturating_sub(1).leading_zeros()) as usize;
        self.batch_buckets[i.min(9)].fetch_add(1, Relaxed);
        self.batch_sum.fetch_add(n as u64, Relaxed);
        self.batch_count.fetch_add(1, Relaxed);
    }

    /// Cumulative (upper bound, count) pairs, the sum and the count: a Prometheus histogram.
    pub fn batch_histogram(&self) -> (Vec<(u64, u64)>, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut acc = 0;
        let buckets = self
            .batch_buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                acc += b.load(Relaxed);
                (1u64 << i, acc)
            })
            .collect();
        (
            buckets,
            self.batch_sum.load(Relaxed),
            self.batch_count.load(Relaxed),
        )
    }
}

/// Where readers find content; written by the writer thread, read by deliveries.
type Index = Mutex<HashMap<TxnId, Loc>>;

struct Inner {
    dir: PathBuf,
    tx: mpsc::Sender<writer::Request>,
    index: Arc<Index>,
    stats: Arc<Stats>,
    ids: IdGenerator,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    relocations: Mutex<Option<mpsc::UnboundedReceiver<Vec<TxnId>>>>,
    _lock: File,
}

/// A cheap, cloneable handle on the spool.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

pub(crate) fn seg_path(dir: &Path, seg: u64) -> PathBuf {
    dir.join("log").join(format!("{seg:016}.seg"))
}

pub(crate) fn content_path(dir: &Path, id: TxnId) -> PathBuf {
    dir.join("content").join(id.to_string())
}

pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Opens (creating if needed) and recovers the spool, and starts its writer thread.
pub fn open(cfg: SpoolConfig) -> Result<(Spool, Recovery), SpoolError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = cfg.dir.clone();
    layout::settle(&dir)?;
    // 0600 from its creation: a lock anyone could open is a lock anyone could hold, keeping
    // the daemon from starting. A new name: a descriptor opened on the old, world-readable
    // `lock` would survive any chmod.
    let lock_path = dir.join("daemon.lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(FILE_MODE)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&lock_path)
        .map_err(|e| SpoolError::io(format!("opening {}", lock_path.display()), e))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => return Err(SpoolError::Locked(dir)),
        Err(fs::TryLockError::Error(e)) => {
            return Err(SpoolError::io(
                format!("locking {}", lock_path.display()),
                e,
            ));
        }
    }
    let (st, mut rep, segs) = replay(&dir, true)?;

    // Content files no live message refers to: left by a crash between the content fsync
    // and the record, or by a delete whose unlink did not happen.
    let content_dir = dir.join("content");
    if let Ok(rd) = fs::read_dir(&content_dir) {
        for e in rd.flatten() {
            let name = e.file_name();
            let keep = name
                .to_str()
                .and_then(|n| n.parse::<TxnId>().ok())
                .and_then(|id| st.live.get(&id))
                .is_some_and(|l| matches!(l.loc, Loc::External { .. }));
            if !keep && fs::remove_file(e.path()).is_ok() {
                rep.orphans_removed += 1;
            }
        }
    }

    let mut st = st;
    let recovery = recovery_of(&mut st, rep);
    let index: HashMap<TxnId, Loc> = st.live.iter().map(|(id, l)| (*id, l.loc)).collect();
    let index = Arc::new(Mutex::new(index));
    let ids = IdGenerator::starting_after(st.max_id);
    let (tx, rx) = mpsc::channel(4096);
    let stats = Arc::new(Stats::default());
    let (reloc_tx, reloc_rx) = mpsc::unbounded_channel();
    let w = writer::Writer::start(cfg, st, segs, index.clone(), stats.clone(), reloc_tx)?;
    let thread = std::thread::Builder::new()
        .name("spool-writer".into())
        .spawn(move || w.run(rx))
        .map_err(|e| SpoolError::io("starting the spool writer thread", e))?;
    let spool = Spool {
        inner: Arc::new(Inner {
            dir,
            tx,
            index,
            stats,
            ids,
            thread: Mutex::new(Some(thread)),
            relocations: Mutex::new(Some(reloc_rx)),
            _lock: lock,
        }),
    };
    Ok((spool, recovery))
}

impl Spool {
    pub fn ids(&self) -> &IdGenerator {
        &self.inner.ids
    }

    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Starts receiving the content of message `id`.
    pub fn content_writer(&self, id: TxnId) -> ContentWriter {
        ContentWriter {
            id,
            dir: self.inner.dir.clone(),
            buf: Vec::new(),
            file: None,
            len: 0,
            committed_file: None,
        }
    }

    /// Makes the message durable. Returns only after envelope and content are on disk.
    pub async fn commit(
        &self,
        env: &Envelope,
        mut content: ContentWriter,
    ) -> Result<MessageRef, SpoolError> {
        let body = match content.file.take() {
            Some((file, path)) => {
                let synced = tokio::task::spawn_blocking(move || file.sync_all())
                    .await
                    .map_err(|e| SpoolError::io("content fsync task", io::Error::other(e)))?;
                if let Err(e) = synced {
                    let _ = fs::remove_file(&path);
                    return Err(SpoolError::io(format!("syncing {}", path.display()), e));
                }
                content.committed_file = Some(path);
                writer::Body::External(content.len)
            }
            None => writer::Body::Inline(std::mem::take(&mut content.buf)),
        };
        let (reply, rx) = oneshot::channel();
        let req = writer::Request::Commit {
            env: Box::new(env.clone()),
            body,
            reply,
        };
        self.inner
            .tx
            .send(req)
            .await
            .map_err(|_| SpoolError::Closed)?;
        let r = rx.await.map_err(|_| SpoolError::Closed)?;
        if r.is_ok() {
            content.committed_file = None;
        }
        r
    }

    /// Compaction requests: messages that pin an old segment and should be written again
    /// with their current envelope ([`Spool::relocate`]). The owner of the envelopes (the
    /// queue manager) takes this once; without it, old segments are kept.
    pub fn relocation_requests(&self) -> Option<mpsc::UnboundedReceiver<Vec<TxnId>>> {
        self.inner
            .relocations
            .lock()
            .expect("relocations lock")
            .take()
    }

    /// Writes live messages again at the head of the log with `envs` (their current state)
    /// and their content, so the segment holding their old records can be reclaimed.
    pub async fn relocate(&self, envs: Vec<Envelope>) -> Result<(), SpoolError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(writer::Request::Relocate { envs, reply })
            .await
            .map_err(|_| SpoolError::Closed)?;
        rx.await.map_err(|_| SpoolError::Closed)?
    }

    /// Records changes to the queue durably.
    pub async fn update(&self, updates: Vec<Update>) -> Result<(), SpoolError> {
        self.send_update(updates, false).await
    }

    /// Records changes durably, letting the writer hold them for a moment (at most
    /// `writer::MAY_WAIT`) so they share the fsync of a batch that happens anyway instead of
    /// causing one of their own. For results nobody is waiting on at once: a delivery's
    /// per-message results, whose only cost of waiting is a slightly wider window in which
    /// a crash re-sends a message.
    pub async fn update_soon(&self, updates: Vec<Update>) -> Result<(), SpoolError> {
        self.send_update(updates, true).await
    }

    async fn send_update(&self, updates: Vec<Update>, may_wait: bool) -> Result<(), SpoolError> {
        if updates.is_empty() {
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(writer::Request::Update {
                updates,
                may_wait,
                reply,
            })
            .await
            .map_err(|_| SpoolError::Closed)?;
        rx.await.map_err(|_| SpoolError::Closed)?
    }

    /// A reader over a committed message's content.
    pub fn open_content(&self, m: &MessageRef) -> Result<Box<dyn Read + Send>, SpoolError> {
        // A relocation may move the content and delete the old segment between the index
        // lookup and the open; the second lookup then sees the new place.
        let mut last_err = None;
        for _ in 0..3 {
            let loc = *self
                .inner
                .index
                .lock()
                .expect("index lock")
                .get(&m.id)
                .ok_or(SpoolError::NotFound(m.id))?;
            let (path, offset, len) = match loc {
                Loc::Inline { seg, offset, len } => (seg_path(&self.inner.dir, seg), offset, len),
                Loc::External { len } => (content_path(&self.inner.dir, m.id), 0, len),
            };
            match File::open(&path) {
                Ok(mut f) => {
                    f.seek(SeekFrom::Start(offset))
                        .map_err(|e| SpoolError::io(format!("reading {}", path.display()), e))?;
                    return Ok(Box::new(io::BufReader::with_capacity(
                        64 * 1024,
                        f.take(len),
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    last_err = Some(SpoolError::io(format!("opening {}", path.display()), e));
                }
                Err(e) => return Err(SpoolError::io(format!("opening {}", path.display()), e)),
            }
        }
        Err(last_err.unwrap_or(SpoolError::NotFound(m.id)))
    }

    /// Free bytes for unprivileged users on the spool's file system.
    pub fn free_bytes(&self) -> Result<u64, SpoolError> {
        let s = nix::sys::statvfs::statvfs(&self.inner.dir).map_err(|e| {
            SpoolError::io(
                format!("statvfs {}", self.inner.dir.display()),
                io::Error::from(e),
            )
        })?;
        Ok(s.blocks_available() * s.fragment_size())
    }

    /// Lets the writer finish what it was given, then stops it.
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self
            .inner
            .tx
            .send(writer::Request::Shutdown { reply })
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
        let handle = self.inner.thread.lock().expect("thread lock").take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

#[cfg(test)]
mod tests;
