//! The writer thread: the single owner of the log and of the queue state it describes.
//! Batches every waiting request into one write and one fdatasync (group commit), then
//! rotates, reclaims and compacts segments.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::TxnId;
use crate::envelope::{Envelope, Update};
use crate::state::{Loc, State};
use crate::{
    Index, MessageRef, SpoolConfig, SpoolError, Stats, content_path, fsync_dir, io_no_space,
    record, seg_path,
};

pub enum Body {
    Inline(Vec<u8>),
    External(u64),
}

pub enum Request {
    Commit {
        env: Box<Envelope>,
        body: Body,
        reply: oneshot::Sender<Result<MessageRef, SpoolError>>,
    },
    Update {
        updates: Vec<Update>,
        /// May be held up to `MAY_WAIT` for a batch that has to be written anyway.
        may_wait: bool,
        reply: oneshot::Sender<Result<(), SpoolError>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    /// Write these live messages again with these (current) envelopes: see `compact`.
    Relocate {
        envs: Vec<Envelope>,
        reply: oneshot::Sender<Result<(), SpoolError>>,
    },
}

/// Most requests taken into one group commit; bounds the latency of the first one.
const MAX_BATCH: usize = 512;
/// Most messages copied forward per batch, so compaction never stalls new mail for long.
const RELOCATE_PER_BATCH: usize = 64;
/// Upper bound of the commit delay (see `Writer::run`).
const MAX_COMMIT_DELAY: Duration = Duration::from_millis(1);
/// How long a batch of only `may_wait` updates is held for other requests to join it. Under
/// load, commits of new mail arrive well within it, so delivery results cost no fsync of
/// their own; the price is that a crash may re-send the messages whose results were held.
pub const MAY_WAIT: Duration = Duration::from_millis(2);

/// Wakes the writer thread parked in a hold when the channel gets a request, so a commit
/// arriving during the hold ends it at once and an idle hold costs no polling wakeups.
struct Unpark(std::thread::Thread);

impl std::task::Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

impl Request {
    fn may_wait(&self) -> bool {
        matches!(self, Request::Update { may_wait: true, .. })
    }
}

pub struct Writer {
    cfg: SpoolConfig,
    state: State,
    segs: Vec<u64>,
    active: File,
    active_seg: u64,
    active_len: u64,
    index: Arc<Index>,
    stats: Arc<Stats>,
    /// Size of the previous batch and how long its fsync took, for the commit delay.
    last_batch: usize,
    last_sync: Duration,
    reloc_tx: mpsc::UnboundedSender<Vec<TxnId>>,
    last_request: Option<Instant>,
}

impl Writer {
    pub fn start(
        cfg: SpoolConfig,
        state: State,
        mut segs: Vec<u64>,
        index: Arc<Index>,
        stats: Arc<Stats>,
        reloc_tx: mpsc::UnboundedSender<Vec<TxnId>>,
    ) -> Result<Writer, SpoolError> {
        // Each start gets a fresh segment: the old last one may end in a repaired tail and
        // stays read-only until reclaimed.
        let active_seg = segs.last().map_or(1, |s| s + 1);
        let path = seg_path(&cfg.dir, active_seg);
        let active = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(crate::FILE_MODE)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| SpoolError::io(format!("creating {}", path.display()), e))?;
        fsync_dir(&cfg.dir.join("log"))
            .map_err(|e| SpoolError::io("syncing the log directory", e))?;
        segs.push(active_seg);
        let mut w = Writer {
            cfg,
            state,
            segs,
            active,
            active_seg,
            active_len: 0,
            index,
            stats,
            last_batch: 0,
            last_sync: Duration::ZERO,
            reloc_tx,
            last_request: None,
        };
        w.maintain();
        Ok(w)
    }

    pub fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let drain = |rx: &mut mpsc::Receiver<Request>, batch: &mut Vec<Request>| {
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
        };
        let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            drain(&mut rx, &mut batch);
            // Only results that may wait: hold them until a request that may not arrives
            // (then everything goes in its batch) or the hold ends.
            if batch.iter().all(Request::may_wait) {
                let until = Instant::now() + MAY_WAIT;
                let mut cx = std::task::Context::from_waker(&waker);
                while batch.len() < MAX_BATCH && batch.iter().all(Request::may_wait) {
                    match rx.poll_recv(&mut cx) {
                        std::task::Poll::Ready(Some(r)) => {
                            batch.push(r);
                            drain(&mut rx, &mut batch);
                        }
                        // Closed: write what is held; the next receive ends the thread.
                        std::task::Poll::Ready(None) => break,
                        std::task::Poll::Pending => {
                            let now = Instant::now();
                            if now >= until {
                                break;
                            }
                            // A spurious or early unpark only goes round the loop again.
                            std::thread::park_timeout(until - now);
                        }
                    }
                }
            }
            // Commit delay: when the last batch showed concurrent writers, give the others
            // a fraction of an fsync's time to join this one. A lone client (last batch of
            // one) never waits, so its latency is one fsync.
            if self.last_batch > 1 && batch.len() < MAX_BATCH {
                std::thread::sleep((self.last_sync / 2).min(MAX_COMMIT_DELAY));
                drain(&mut rx, &mut batch);
            }
            self.last_batch = batch.len();
            if self.process(batch) {
                return;
            }
        }
    }

    /// Appends `buf` durably, or leaves the segment as it was. On failure the segment is
    /// cut back so a later batch never follows a half-written record.
    fn append(&mut self, buf: &[u8]) -> Result<(), SpoolError> {
        let started = Instant::now();
        let res = self
            .active
            .write_all(buf)
            .and_then(|()| self.active.sync_data());
        self.last_sync = started.elapsed();
        match res {
            Ok(()) => {
                self.active_len += buf.len() as u64;
                self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                let no_space = io_no_space(&e);
                if let Err(t) = self
                    .active
                    .set_len(self.active_len)
                    .and_then(|()| self.active.sync_data())
                {
                    warn!("could not cut the log back after a failed write: {t}");
                }
                Err(SpoolError::Write {
                    no_space,
                    message: e.to_string(),
                })
            }
        }
    }

    /// Returns true when asked to shut down.
    fn process(&mut self, batch: Vec<Request>) -> bool {
        self.stats.record_batch(batch.len());
        // Relocations are rare and each reads an old record: written one by one after the
        // batch.
        let (relocs, batch): (Vec<Request>, Vec<Request>) = batch
            .into_iter()
            .partition(|r| matches!(r, Request::Relocate { .. }));
        let mut buf = Vec::with_capacity(64 * 1024);
        // (request index, record offset in buf, inline content offset)
        let mut placed: Vec<Option<u64>> = Vec::with_capacity(batch.len());
        let mut external = false;
        let mut shutdown = false;
        for req in &batch {
            match req {
                Request::Commit { env, body, .. } => {
                    let off = match body {
                        Body::Inline(bytes) => {
                            record::encode_message(env, Some(bytes), 0, &mut buf)
                        }
                        Body::External(len) => {
                            external = true;
                            record::encode_message(env, None, *len, &mut buf)
                        }
                    };
                    placed.push(Some(off as u64));
                }
                Request::Update { updates, .. } => {
                    record::encode_updates(updates, &mut buf);
                    placed.push(None);
                }
                Request::Shutdown { .. } => {
                    shutdown = true;
                    placed.push(None);
                }
                Request::Relocate { .. } => unreachable!("relocations were set apart"),
            }
        }
        // New content files must be reachable after a crash before a record names them.
        let mut res = if external {
            fsync_dir(&self.cfg.dir.join("content")).map_err(|e| SpoolError::Write {
                no_space: io_no_space(&e),
                message: format!("syncing the content directory: {e}"),
            })
        } else {
            Ok(())
        };
        let base = self.active_len;
        if res.is_ok() && !buf.is_empty() {
            res = self.append(&buf);
        }
        let mut removed = Vec::new();
        for (req, off) in batch.into_iter().zip(placed) {
            match req {
                Request::Commit { env, body, reply } => {
                    let r = match &res {
                        Ok(()) => {
                            let loc = match body {
                                Body::Inline(bytes) => Loc::Inline {
                                    seg: self.active_seg,
                                    offset: base + off.expect("commit was placed"),
                                    len: bytes.len() as u64,
                                },
                                Body::External(len) => Loc::External { len },
                            };
                            let m = MessageRef {
                                id: env.id,
                                len: loc.len(),
                            };
                            self.index.lock().expect("index lock").insert(env.id, loc);
                            self.state.add_message(
                                Envelope::placeholder(env.id),
                                self.active_seg,
                                loc,
                            );
                            self.stats.commits.fetch_add(1, Ordering::Relaxed);
                            Ok(m)
                        }
                        Err(e) => Err(clone_err(e)),
                    };
                    let _ = reply.send(r);
                }
                Request::Update { updates, reply, .. } => {
                    let r = match &res {
                        Ok(()) => {
                            for u in &updates {
                                if let Some(gone) = self.state.apply(u, self.active_seg) {
                                    removed.push(gone);
                                }
                            }
                            self.stats.updates.fetch_add(1, Ordering::Relaxed);
                            Ok(())
                        }
                        Err(e) => Err(clone_err(e)),
                    };
                    let _ = reply.send(r);
                }
                Request::Shutdown { reply } => {
                    let _ = reply.send(());
                }
                Request::Relocate { .. } => unreachable!("relocations were set apart"),
            }
        }
        if !removed.is_empty() {
            let mut index = self.index.lock().expect("index lock");
            for r in &removed {
                index.remove(&r.id);
            }
        }
        for r in removed {
            if let Loc::External { .. } = r.loc {
                let _ = fs::remove_file(content_path(&self.cfg.dir, r.id));
            }
        }
        for r in relocs {
            if let Request::Relocate { envs, reply } = r {
                let _ = reply.send(self.relocate(envs));
            }
        }
        if !shutdown {
            self.maintain();
        }
        shutdown
    }

    /// Rotation, reclaim and compaction. Failures here cost disk space, never mail, so
    /// they are logged and retried after the next batch.
    fn maintain(&mut self) {
        if self.active_len >= self.cfg.segment_size
            && let Err(e) = self.rotate()
        {
            warn!("could not start a new log segment: {e}");
        }
        self.compact();
        if let Err(e) = self.reclaim() {
            warn!("log reclaim: {e}");
        }
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let next = self.active_seg + 1;
        let path = seg_path(&self.cfg.dir, next);
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(crate::FILE_MODE)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)?;
        fsync_dir(&self.cfg.dir.join("log"))?;
        self.active = f;
        self.active_seg = next;
        self.active_len = 0;
        self.segs.push(next);
        debug!(segment = next, "new log segment");
        Ok(())
    }

    /// Deletes old segments that no live message needs, oldest first.
    fn reclaim(&mut self) -> Result<(), SpoolError> {
        while self.segs.len() > 1 {
            let oldest = self.segs[0];
            if self.state.seg_live.get(&oldest).copied().unwrap_or(0) > 0 {
                break;
            }
            // The newest schedule of a domain may live only in this segment: copy it.
            let keep: Vec<Update> = self
                .state
                .schedules
                .values()
                .filter(|(_, seg)| *seg == oldest)
                .map(|(s, _)| Update::Schedule(s.clone()))
                .collect();
            if !keep.is_empty() {
                let mut buf = Vec::new();
                record::encode_updates(&keep, &mut buf);
                self.append(&buf)?;
                for u in &keep {
                    self.state.apply(u, self.active_seg);
                }
            }
            let path = seg_path(&self.cfg.dir, oldest);
            fs::remove_file(&path)
                .map_err(|e| SpoolError::io(format!("removing {}", path.display()), e))?;
            self.segs.remove(0);
            self.state.seg_live.remove(&oldest);
            debug!(segment = oldest, "log segment reclaimed");
        }
        Ok(())
    }

    /// Asks the envelopes' owner to rewrite the live messages of the oldest segment when too
    /// many segments pile up behind it (a few deferred messages must not pin gigabytes of
    /// delivered mail). At most once a second, a bounded number at a time.
    fn compact(&mut self) {
        if self.segs.len() <= self.cfg.max_segments
            || self
                .last_request
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        let oldest = self.segs[0];
        let ids: Vec<TxnId> = self
            .state
            .live
            .iter()
            .filter(|(_, l)| l.seg == oldest)
            .take(RELOCATE_PER_BATCH)
            .map(|(id, _)| *id)
            .collect();
        if !ids.is_empty() {
            let _ = self.reloc_tx.send(ids);
            self.last_request = Some(Instant::now());
        }
    }

    /// Writes live messages again in the active segment, each with the envelope its owner
    /// sent (its current state) and its content copied from the old record: one write, one
    /// fsync.
    fn relocate(&mut self, envs: Vec<Envelope>) -> Result<(), SpoolError> {
        let mut buf = Vec::new();
        let mut placed = Vec::new();
        for env in envs {
            let Some(live) = self.state.live.get(&env.id) else {
                // Delivered or deleted meanwhile: nothing to keep.
                continue;
            };
            if live.seg == self.active_seg {
                continue;
            }
            let (old_seg, loc) = (live.seg, live.loc);
            let inline = match loc {
                Loc::Inline { offset, len, .. } => {
                    let path: PathBuf = seg_path(&self.cfg.dir, old_seg);
                    let mut content = vec![0; len as usize];
                    File::open(&path)
                        .and_then(|mut f| {
                            f.seek(SeekFrom::Start(offset))?;
                            f.read_exact(&mut content)
                        })
                        .map_err(|e| SpoolError::io(format!("reading {}", path.display()), e))?;
                    Some(record::encode_message(&env, Some(&content), 0, &mut buf) as u64)
                }
                Loc::External { len } => {
                    record::encode_message(&env, None, len, &mut buf);
                    None
                }
            };
            placed.push((env.id, inline, loc));
        }
        if placed.is_empty() {
            return Ok(());
        }
        let base = self.active_len;
        self.append(&buf)?;
        let mut index = self.index.lock().expect("index lock");
        for (id, inline, loc) in placed {
            let new_loc = match inline {
                Some(off) => Loc::Inline {
                    seg: self.active_seg,
                    offset: base + off,
                    len: loc.len(),
                },
                None => loc,
            };
            index.insert(id, new_loc);
            self.state
                .add_message(Envelope::placeholder(id), self.active_seg, new_loc);
        }
        Ok(())
    }
}

fn clone_err(e: &SpoolError) -> SpoolError {
    match e {
        SpoolError::Write { no_space, message } => SpoolError::Write {
            no_space: *no_space,
            message: message.clone(),
        },
        other => SpoolError::Write {
            no_space: other.is_no_space(),
            message: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    use super::MAY_WAIT;
    use crate::{BodyType, Envelope, RcptState, Recipient, SpoolConfig, Update, open};

    fn deferred(id: crate::TxnId) -> Vec<Update> {
        vec![Update::Rcpt {
            id,
            index: 0,
            state: RcptState::Deferred,
            tries: 1,
            last_error: None,
            next_attempt: 0,
            relay: None,
            handoff: Default::default(),
        }]
    }

    /// The hold waits on the channel rather than polling it: alone, a result is still held
    /// for `MAY_WAIT`; with a request that may not wait beside it, both share one fsync.
    #[test]
    fn held_results_wait_alone_and_join_a_write_that_happens_anyway() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = open(SpoolConfig::new(dir.path())).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let id = spool.ids().next();
            let env = Envelope {
                id,
                arrival: 1_700_000_000,
                sender: "s@src.test".into(),
                envid: None,
                ret: None,
                body: BodyType::SevenBit,
                smtputf8: false,
                client: "c [127.0.0.1]".into(),
                held: false,
                kind: Default::default(),
                recipients: vec![Recipient {
                    address: "r@dst.test".into(),
                    ..Default::default()
                }],
            };
            let mut w = spool.content_writer(id);
            w.write(b"Subject: x\r\n\r\nbody\r\n").await.unwrap();
            spool.commit(&env, w).await.unwrap();
            let fsyncs = || spool.stats().fsyncs.load(Ordering::Relaxed);

            let before = fsyncs();
            let start = Instant::now();
            spool.update_soon(deferred(id)).await.unwrap();
            assert!(
                start.elapsed() >= MAY_WAIT,
                "a lone result was written after {:?}, before its hold ended",
                start.elapsed()
            );
            assert_eq!(fsyncs() - before, 1);

            let before = fsyncs();
            let (held, urgent) =
                tokio::join!(spool.update_soon(deferred(id)), spool.update(deferred(id)));
            held.unwrap();
            urgent.unwrap();
            assert_eq!(
                fsyncs() - before,
                1,
                "the held result got an fsync of its own"
            );
        });
    }
}
