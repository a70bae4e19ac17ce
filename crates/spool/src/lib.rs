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

mod envelope;
mod id;
mod layout;
pub mod record;
mod state;
mod writer;

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

pub use envelope::{
    BodyType, DomainSchedule, DsnRet, Envelope, Handoff, MessageKind, Notify, RcptState, Recipient,
    Update,
};
pub use id::{BadId, IdGenerator, TxnId};
pub use layout::{FILE_MODE, Owner, PRIVATE_DIR_MODE, SPOOL_DIR_MODE, prepare};
use state::{Loc, State};

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

/// What start-up found in the spool.
#[derive(Debug, Default)]
pub struct Recovery {
    pub messages: Vec<(Envelope, MessageRef)>,
    pub schedules: Vec<DomainSchedule>,
    pub report: RecoveryReport,
}

#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    pub segments: usize,
    pub records: usize,
    pub messages: usize,
    pub open_recipients: usize,
    /// Bytes cut off the end of the log: a write torn by a crash, never acknowledged.
    pub truncated: u64,
    /// Records that failed their checksum before the end of a segment.
    pub corrupt: Vec<String>,
    pub orphans_removed: usize,
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} messages with {} open recipients from {} records in {} segments",
            self.messages, self.open_recipients, self.records, self.segments
        )?;
        if self.truncated > 0 {
            write!(f, "; cut a torn tail of {} bytes", self.truncated)?;
        }
        if self.orphans_removed > 0 {
            write!(
                f,
                "; removed {} unreferenced content files",
                self.orphans_removed
            )?;
        }
        for c in &self.corrupt {
            write!(f, "; CORRUPT: {c}")?;
        }
        Ok(())
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

fn list_segments(dir: &Path) -> Result<Vec<u64>, SpoolError> {
    let log = dir.join("log");
    let mut segs = Vec::new();
    let rd = match fs::read_dir(&log) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(segs),
        Err(e) => return Err(SpoolError::io(format!("reading {}", log.display()), e)),
    };
    for e in rd {
        let e = e.map_err(|e| SpoolError::io(format!("reading {}", log.display()), e))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name.strip_suffix(".seg").and_then(|n| n.parse().ok()) {
            segs.push(n);
        }
    }
    segs.sort_unstable();
    Ok(segs)
}

/// Replays the log. With `repair`, a torn or corrupt tail of the last segment is cut off.
fn replay(dir: &Path, repair: bool) -> Result<(State, RecoveryReport, Vec<u64>), SpoolError> {
    let segs = list_segments(dir)?;
    let mut st = State::default();
    let mut rep = RecoveryReport {
        segments: segs.len(),
        ..Default::default()
    };
    for (i, &seg) in segs.iter().enumerate() {
        let path = seg_path(dir, seg);
        let data = match fs::read(&path) {
            Ok(d) => d,
            // `inspect` may race a reclaim by the running daemon.
            Err(e) if e.kind() == io::ErrorKind::NotFound && !repair => continue,
            Err(e) => return Err(SpoolError::io(format!("reading {}", path.display()), e)),
        };
        let last = i + 1 == segs.len();
        let mut pos = 0;
        while pos < data.len() {
            match record::decode(&data[pos..]) {
                Ok(Some((rec, n))) => {
                    rep.records += 1;
                    match rec {
                        record::Record::Message { env, content } => {
                            let loc = match content {
                                record::Content::Inline { offset, bytes } => Loc::Inline {
                                    seg,
                                    offset: (pos + offset) as u64,
                                    len: bytes.len() as u64,
                                },
                                record::Content::External { len } => Loc::External { len },
                            };
                            st.add_message(*env, seg, loc);
                        }
                        record::Record::Updates(us) => {
                            for u in &us {
                                st.apply(u, seg);
                            }
                        }
                    }
                    pos += n;
                }
                Ok(None) => break,
                Err(e) => {
                    if !last {
                        rep.corrupt.push(format!(
                            "{} at offset {pos}: {e}; the rest of that segment is skipped",
                            path.display()
                        ));
                    }
                    break;
                }
            }
        }
        if pos < data.len() {
            if last {
                rep.truncated = (data.len() - pos) as u64;
                if repair {
                    let f = fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(|e| SpoolError::io(format!("opening {}", path.display()), e))?;
                    f.set_len(pos as u64)
                        .and_then(|()| f.sync_all())
                        .map_err(|e| SpoolError::io(format!("truncating {}", path.display()), e))?;
                }
            } else if rep.corrupt.is_empty() {
                rep.corrupt.push(format!(
                    "{}: torn record at offset {pos} before the end of the log",
                    path.display()
                ));
            }
        }
    }
    rep.messages = st.live.len();
    rep.open_recipients = st.live.values().map(|l| l.env.open_recipients()).sum();
    Ok((st, rep, segs))
}

/// Moves the recovered envelopes out of `st` (leaving placeholders): the queue manager
/// owns them from here on.
fn recovery_of(st: &mut State, report: RecoveryReport) -> Recovery {
    let mut messages: Vec<(Envelope, MessageRef)> = st
        .live
        .iter_mut()
        .map(|(id, l)| {
            (
                std::mem::replace(&mut l.env, Envelope::placeholder(*id)),
                MessageRef {
                    id: *id,
                    len: l.loc.len(),
                },
            )
        })
        .collect();
    messages.sort_by_key(|(e, _)| e.id);
    let mut schedules: Vec<DomainSchedule> =
        st.schedules.values().map(|(s, _)| s.clone()).collect();
    schedules.sort_by(|a, b| a.domain.cmp(&b.domain));
    Recovery {
        messages,
        schedules,
        report,
    }
}

/// Reads the queue without taking the spool over (for `postrider queue` with no daemon).
pub fn inspect(dir: &Path) -> Result<Recovery, SpoolError> {
    let (mut st, rep, _) = replay(dir, false)?;
    Ok(recovery_of(&mut st, rep))
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

/// Receives a message's content while the client sends it. Small content stays in memory
/// until commit; past [`INLINE_MAX`] it is streamed to `content/ID`.
pub struct ContentWriter {
    id: TxnId,
    dir: PathBuf,
    buf: Vec<u8>,
    file: Option<(File, PathBuf)>,
    len: u64,
    committed_file: Option<PathBuf>,
}

impl ContentWriter {
    pub fn id(&self) -> TxnId {
        self.id
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends content. Writes to the page cache only (the fsync is at commit), so this
    /// does not block the runtime for long even though it uses plain file I/O.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), SpoolError> {
        self.len += data.len() as u64;
        if self.file.is_none() && self.buf.len() + data.len() <= INLINE_MAX {
            self.buf.extend_from_slice(data);
            return Ok(());
        }
        if self.file.is_none() {
            use std::os::unix::fs::OpenOptionsExt;
            let path = content_path(&self.dir, self.id);
            let f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(FILE_MODE)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|e| SpoolError::io(format!("creating {}", path.display()), e))?;
            self.file = Some((f, path));
            let pending = std::mem::take(&mut self.buf);
            self.write_file(&pending)?;
        }
        self.write_file(data)
    }

    /// Appends everything `r` yields (a copy or a rewrite of other content).
    pub async fn write_from(&mut self, r: &mut (dyn Read + Send)) -> Result<(), SpoolError> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = r
                .read(&mut buf)
                .map_err(|e| SpoolError::io("reading content back", e))?;
            if n == 0 {
                return Ok(());
            }
            self.write(&buf[..n]).await?;
        }
    }

    /// A reader over what was written so far (for content filters before commit).
    pub fn read_back(&mut self) -> Result<Box<dyn Read + Send>, SpoolError> {
        match &mut self.file {
            None => Ok(Box::new(io::Cursor::new(self.buf.clone()))),
            Some((f, path)) => {
                f.flush()
                    .map_err(|e| SpoolError::io(format!("writing {}", path.display()), e))?;
                let r = File::open(&*path)
                    .map_err(|e| SpoolError::io(format!("reading {}", path.display()), e))?;
                Ok(Box::new(io::BufReader::with_capacity(64 * 1024, r)))
            }
        }
    }

    /// Gives the content up as a reader, so that a rewritten version can be written under
    /// the same id (the old file is unlinked; the reader keeps it alive until dropped).
    pub fn into_reader(mut self) -> Result<Box<dyn Read + Send>, SpoolError> {
        let r = self.read_back()?;
        if let Some((_, path)) = self.file.take() {
            let _ = fs::remove_file(path);
        }
        Ok(r)
    }

    fn write_file(&mut self, data: &[u8]) -> Result<(), SpoolError> {
        let (f, path) = self.file.as_mut().expect("file is open");
        f.write_all(data)
            .map_err(|e| SpoolError::io(format!("writing {}", path.display()), e))
    }
}

impl Drop for ContentWriter {
    /// Content of a transaction that was never committed (client went away, size exceeded)
    /// must not stay on disk.
    fn drop(&mut self) {
        let path = self
            .file
            .take()
            .map(|(_, p)| p)
            .or(self.committed_file.take());
        if let Some(p) = path {
            let _ = fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests;
