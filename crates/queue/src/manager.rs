//! The queue manager task: the single owner of the in-memory queue (every live message and
//! the per-domain scheduler). Sessions hand it committed messages, delivery attempts hand it
//! their per-recipient results (already durable in the spool; those the spool could not
//! record are not acted on), and the control socket asks it questions; all through one typed
//! channel, answered over oneshots.
//!
//! Longer than most files here on purpose: the loop and the transitions it makes (arrival,
//! attempt start and end, DSN, settle) change the same state and are read together; the
//! administrator's side is in `manager/admin.rs`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use spool::{Envelope, MessageRef, RcptState, Spool, TxnId, Update};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::schedule::{AttemptOutcome, DomainId, Scheduler, rcpt_domain};
use crate::api::{Request, Response};
use crate::job::{Attempt, AttemptReport, Deliver, JobMessage, JobRecipient};

/// DSNs being composed and committed at once.
const MAX_DSNS_IN_FLIGHT: usize = 64;

/// A DSN that could not be committed (a full disk, say) is tried again after this.
const DSN_RETRY: Duration = Duration::from_secs(60);

mod admin;

/// One undelivered (message, recipient) pair, as it sits in a domain's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair {
    pub id: TxnId,
    pub rcpt: u16,
}

struct Msg {
    env: Envelope,
    mref: MessageRef,
    size: u64,
    /// Recipients not yet final (delivered or failed).
    open: usize,
    /// A DSN for some recipients is being written; the message stays until it is durable.
    dsn_in_flight: bool,
    /// Delivery attempts carrying this message now: its spool state may be ahead of `env`.
    attempts: u16,
}

pub enum QueueMsg {
    /// A message the spool has made durable.
    Arrived {
        env: Envelope,
        mref: MessageRef,
        size: u64,
    },
    /// A delivery attempt ended; its `results` are already durable, its `unrecorded`
    /// ones are not and are tried again.
    AttemptDone(AttemptReport),
    /// A DSN task ended: the report's queue id and whom it went to (the report itself came
    /// in through cleanup as `Arrived`, before this), or why it could not be made.
    DsnDone {
        id: TxnId,
        rcpts: Vec<u16>,
        result: Result<(TxnId, String), String>,
    },
    Control(Request, oneshot::Sender<Response>),
    /// An administrator's change was written (or not); apply it and answer.
    Written {
        id: TxnId,
        update: Update,
        result: Result<(), String>,
        reply: oneshot::Sender<Response>,
    },
}

/// A cheap handle for talking to the queue manager.
#[derive(Clone)]
pub struct QueueHandle {
    tx: mpsc::Sender<QueueMsg>,
}

impl QueueHandle {
    pub async fn arrived(&self, env: Envelope, mref: MessageRef, size: u64) {
        // The queue manager only stops at shutdown; the message is safe in the spool and
        // recovery picks it up at the next start.
        let _ = self.tx.send(QueueMsg::Arrived { env, mref, size }).await;
    }

    pub async fn control(&self, req: Request) -> Response {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(QueueMsg::Control(req, tx)).await.is_err() {
            return Response::error("queue manager is shutting down");
        }
        rx.await
            .unwrap_or_else(|_| Response::error("queue manager is shutting down"))
    }
}

pub struct Settings {
    pub backoff: Vec<Duration>,
    /// Each retry wait is scaled by a random factor in [1 - this, 1 + this] (0 to 0.5).
    pub retry_jitter: f64,
    /// Seeds the jitter's randomness (tests); `None`: seeded from the operating system.
    pub jitter_seed: Option<u64>,
    pub concurrency: usize,
    pub messages_per_connection: usize,
    pub max_queue_time: Duration,
    pub delivery_enabled: bool,
    /// Our name, for DSNs.
    pub hostname: String,
    pub counters: Arc<crate::Counters>,
    pub dsn: super::bounce::Policy,
}

pub struct Manager<D> {
    messages: HashMap<TxnId, Msg>,
    sched: Scheduler<Pair>,
    spool: Spool,
    deliverer: Arc<D>,
    /// DSNs go through cleanup like every other message; it tells this manager through a
    /// handle of its own channel.
    cleanup: Arc<cleanup::Cleanup<QueueHandle>>,
    settings: Settings,
    rx: mpsc::Receiver<QueueMsg>,
    tx: mpsc::Sender<QueueMsg>,
    /// Every task the manager starts (attempts, DSNs, spool writes), waited for before it
    /// returns: nothing it started outlives it.
    tasks: tokio_util::task::TaskTracker,
    /// Messages due a DSN while [`MAX_DSNS_IN_FLIGHT`] are being made, in order.
    dsn_waiting: std::collections::VecDeque<TxnId>,
    /// Messages whose DSN could not be made, and when to try again.
    dsn_retries: BinaryHeap<Reverse<(Instant, TxnId)>>,
    /// The spool's requests to rewrite messages that pin old segments.
    relocations: Option<mpsc::UnboundedReceiver<Vec<TxnId>>>,
    /// Messages in each running attempt.
    in_attempt: HashMap<DomainId, Vec<TxnId>>,
    /// DSN tasks running (each is waited for at shutdown: its message is being committed).
    dsns: usize,
    /// Shutting down: no new attempts; the manager ends once the running ones reported.
    draining: bool,
}

/// A message's open recipients, and those to schedule as (domain, pair). Entry paths cap a
/// message at config::MAX_RECIPIENTS; a recipient past the u16 index stays open (kept,
/// visible in the queue) rather than wrapping onto another's index.
fn schedulable(env: &Envelope) -> (usize, Vec<(String, Pair)>) {
    let mut open = 0;
    let mut pairs = Vec::new();
    for (i, r) in env.recipients.iter().enumerate() {
        if matches!(r.state, RcptState::Delivered | RcptState::Failed) {
            continue;
        }
        open += 1;
        if env.held {
            continue;
        }
        if let Ok(rcpt) = u16::try_from(i) {
            pairs.push((rcpt_domain(&r.address), Pair { id: env.id, rcpt }));
        }
    }
    (open, pairs)
}

impl<D: Deliver> Manager<D> {
    pub fn new(spool: Spool, deliverer: Arc<D>, settings: Settings) -> (Self, QueueHandle) {
        let (tx, rx) = mpsc::channel(4096);
        let rng = match settings.jitter_seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let sched = Scheduler::new(settings.backoff.clone(), settings.concurrency)
            .with_jitter(settings.retry_jitter, rng);
        let m = Manager {
            messages: HashMap::new(),
            sched,
            spool: spool.clone(),
            deliverer,
            cleanup: Arc::new(cleanup::Cleanup::new(
                spool,
                QueueHandle { tx: tx.clone() },
                Arc::default(),
            )),
            settings,
            rx,
            tx: tx.clone(),
            tasks: tokio_util::task::TaskTracker::new(),
            dsn_retries: BinaryHeap::new(),
            dsn_waiting: Default::default(),
            relocations: None,
            in_attempt: HashMap::new(),
            dsns: 0,
            draining: false,
        };
        let mut m = m;
        m.relocations = m.spool.relocation_requests();
        (m, QueueHandle { tx })
    }

    /// Loads what recovery found: schedules first, then every open recipient, newest first.
    pub fn recover(
        &mut self,
        mut messages: Vec<(Envelope, MessageRef)>,
        schedules: Vec<spool::DomainSchedule>,
    ) {
        let now = Instant::now();
        let unow = spool::unix_now();
        for s in schedules {
            let next =
                (s.next_attempt > unow).then(|| now + Duration::from_secs(s.next_attempt - unow));
            self.sched.restore(&s.domain, s.level, next);
        }
        messages.sort_by_key(|m| std::cmp::Reverse(m.0.id));
        let ids: Vec<TxnId> = messages.iter().map(|(e, _)| e.id).collect();
        for (env, mref) in messages {
            let size = mref.len();
            self.insert(env, mref, size, false, now);
        }
        // Messages whose recipients are all final but whose DSN or removal was cut short by
        // the last stop finish now.
        let done: Vec<Update> = ids.into_iter().filter_map(|id| self.settle(id)).collect();
        self.record_in_background(done);
    }

    fn insert(&mut self, env: Envelope, mref: MessageRef, size: u64, new: bool, now: Instant) {
        let id = env.id;
        let (open, pairs) = schedulable(&env);
        if env.recipients.len() > usize::from(u16::MAX) + 1 {
            tracing::error!(queue_id = %id, recipients = env.recipients.len(), "recipients beyond index 65535 not scheduled; they stay queued");
        }
        for (domain, pair) in pairs {
            if new {
                self.sched.add_new(&domain, pair, now);
            } else {
                self.sched.add_recovered(&domain, pair, now);
            }
        }
        self.messages.insert(
            id,
            Msg {
                env,
                mref,
                size,
                open,
                dsn_in_flight: false,
                attempts: 0,
            },
        );
    }

    /// What a message whose recipients changed needs next: a DSN (made durable before the
    /// message may go), or, once every recipient is final and reported, removal. Returns
    /// the removal to record.
    fn settle(&mut self, id: TxnId) -> Option<Update> {
        let m = self.messages.get_mut(&id)?;
        if m.dsn_in_flight {
            return None;
        }
        let rcpts = super::bounce::pending(&m.env, &self.settings.dsn);
        if !rcpts.is_empty() && self.dsns >= MAX_DSNS_IN_FLIGHT {
            // Each DSN reads its original and commits a message; thousands failing at once
            // (a dead domain's backlog expiring) must not become thousands of tasks.
            if !self.dsn_waiting.contains(&id) {
                self.dsn_waiting.push_back(id);
            }
            return None;
        }
        if !rcpts.is_empty() {
            m.dsn_in_flight = true;
            self.dsns += 1;
            let (cleanup, tx) = (self.cleanup.clone(), self.tx.clone());
            let (env, mref) = (m.env.clone(), m.mref.clone());
            let host = self.settings.hostname.clone();
            let policy = self.settings.dsn.clone();
            self.tasks.spawn(async move {
                let result = super::bounce::send(&cleanup, &host, &policy, &env, &mref, &rcpts)
                    .await
                    .map_err(|e| e.to_string());
                let _ = tx.send(QueueMsg::DsnDone { id, rcpts, result }).await;
            });
            return None;
        }
        if m.open == 0 {
            self.messages.remove(&id);
            return Some(Update::Done { id });
        }
        None
    }

    /// The spool wants these messages written again (compaction). Only the queue manager
    /// knows their current state; a message out on an attempt or a DSN is skipped (its
    /// newest results are not in `env` yet) and asked for again later. Awaited here, so no
    /// attempt can start (and record newer results) before the rewrite is on disk.
    async fn relocate(&mut self, ids: Vec<TxnId>) {
        let envs: Vec<Envelope> = ids
            .iter()
            .filter_map(|id| self.messages.get(id))
            .filter(|m| m.attempts == 0 && !m.dsn_in_flight)
            .map(|m| m.env.clone())
            .collect();
        if envs.is_empty() {
            return;
        }
        if let Err(e) = self.spool.relocate(envs).await {
            tracing::warn!("compaction: {e}");
        }
    }

    fn record_in_background(&self, updates: Vec<Update>) {
        if updates.is_empty() {
            return;
        }
        // Losing these in a crash only repeats work (a removal, a schedule position);
        // recipient results and DSNs are durable before they get here.
        let spool = self.spool.clone();
        self.tasks.spawn(async move {
            if let Err(e) = spool.update(updates).await {
                tracing::warn!("could not record queue state: {e}");
            }
        });
    }

    fn dsn_done(&mut self, id: TxnId, rcpts: Vec<u16>, result: Result<(TxnId, String), String>) {
        self.dsns = self.dsns.saturating_sub(1);
        let Some(m) = self.messages.get_mut(&id) else {
            return;
        };
        m.dsn_in_flight = false;
        match result {
            Ok((dsn, to)) => {
                // What `bounce::send` wrote after the DSN was durable.
                m.env.apply(&Update::DsnSent { id, rcpts });
                tracing::info!(queue_id = %id, %dsn, %to, "sender notified");
                self.settings
                    .counters
                    .dsn_sent
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Some(u) = self.settle(id) {
                    self.record_in_background(vec![u]);
                }
            }
            Err(e) => {
                tracing::warn!(queue_id = %id, "could not queue a DSN: {e}; retrying in a minute");
                self.dsn_retries
                    .push(Reverse((Instant::now() + DSN_RETRY, id)));
            }
        }
    }

    /// One attempt for every domain with mail, whatever its schedule; returns when no
    /// attempt and no DSN is in flight any more (DSNs made on the way are attempted too).
    pub async fn run_once(mut self) {
        let now = Instant::now();
        let ids: Vec<DomainId> = self.sched.domains().map(|(id, ..)| id).collect();
        for id in ids {
            self.sched.flush(id, now);
        }
        loop {
            self.start_attempts();
            if self.sched.in_flight() == 0 && self.dsns == 0 {
                break;
            }
            match self.rx.recv().await {
                Some(m) => self.handle(m).await,
                None => break,
            }
        }
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Runs until `shutdown`; from then on it starts no attempt, and returns once the
    /// running attempts and DSNs have reported and what they wrote is durable.
    pub async fn run(mut self, shutdown: CancellationToken) {
        // A tick: one scheduling event and the attempts it makes due, measured from the
        // event to the end of the `start_attempts` that follows it. Its cost must not grow
        // with the queue (bench/memory.py). Control queries (list, stats for a scrape) walk
        // the queue by nature and are not scheduling work, so they are not counted.
        let mut tick: Option<Instant> = None;
        loop {
            if shutdown.is_cancelled() && !self.draining {
                self.draining = true;
                tracing::info!(
                    attempts = self.sched.in_flight(),
                    dsns = self.dsns,
                    "shutting down: no new delivery attempts, waiting for the running ones"
                );
            }
            if self.draining && self.sched.in_flight() == 0 && self.dsns == 0 {
                break;
            }
            self.retry_due_dsns(Instant::now());
            self.start_attempts();
            if let Some(started) = tick.take() {
                self.settings.counters.tick(started.elapsed());
            }
            let wake = match (self.sched.next_wakeup(), self.dsn_retries.peek()) {
                (Some(a), Some(Reverse((b, _)))) => Some(a.min(*b)),
                (a, b) => a.or(b.map(|Reverse((t, _))| *t)),
            };
            let sleep = async {
                match wake {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some(m) => {
                        let started = Instant::now();
                        let query = matches!(m, QueueMsg::Control(..));
                        self.handle(m).await;
                        if !query {
                            tick = Some(started);
                        }
                    }
                    None => break,
                },
                Some(ids) = async {
                    match self.relocations.as_mut() {
                        Some(r) => r.recv().await,
                        None => std::future::pending().await,
                    }
                } => self.relocate(ids).await,
                _ = sleep, if !self.draining => {}
                _ = shutdown.cancelled(), if !self.draining => {}
            }
        }
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// DSNs whose retry time has come are tried again.
    fn retry_due_dsns(&mut self, now: Instant) {
        let mut done = Vec::new();
        while let Some(Reverse((at, id))) = self.dsn_retries.peek().copied() {
            if at > now {
                break;
            }
            self.dsn_retries.pop();
            done.extend(self.settle(id));
        }
        self.record_in_background(done);
    }

    fn start_attempts(&mut self) {
        if !self.settings.delivery_enabled || self.draining {
            return;
        }
        let now = Instant::now();
        let unow = spool::unix_now();
        while let Some((domain, batch)) = self
            .sched
            .start_next(now, self.settings.messages_per_connection)
        {
            let attempt = self.build_attempt(domain, batch, unow);
            let ids: Vec<TxnId> = attempt.messages.iter().map(|m| m.id).collect();
            for id in &ids {
                if let Some(m) = self.messages.get_mut(id) {
                    m.attempts += 1;
                }
            }
            self.in_attempt.insert(domain, ids);
            let deliverer = self.deliverer.clone();
            let tx = self.tx.clone();
            self.tasks.spawn(async move {
                let report = deliverer.run(attempt).await;
                let _ = tx.send(QueueMsg::AttemptDone(report)).await;
            });
        }
    }

    /// Groups the batch by message, newest first, keeping each message's recipients together.
    fn build_attempt(&self, domain: DomainId, batch: Vec<Pair>, unow: u64) -> Attempt {
        let mut order: Vec<TxnId> = Vec::new();
        let mut by_msg: HashMap<TxnId, Vec<u16>> = HashMap::new();
        for p in &batch {
            by_msg
                .entry(p.id)
                .or_insert_with(|| {
                    order.push(p.id);
                    Vec::new()
                })
                .push(p.rcpt);
        }
        let max_age = self.settings.max_queue_time.as_secs();
        let messages: Vec<JobMessage> = order
            .into_iter()
            .filter_map(|id| {
                let m = self.messages.get(&id)?;
                let rcpts = by_msg.remove(&id).unwrap_or_default();
                Some(JobMessage {
                    id,
                    mref: m.mref.clone(),
                    sender: m.env.sender.clone(),
                    body: m.env.body,
                    smtputf8: m.env.smtputf8,
                    envid: m.env.envid.clone(),
                    ret: m.env.ret,
                    size: m.size,
                    arrival: m.env.arrival,
                    expired: unow.saturating_sub(m.env.arrival) > max_age,
                    recipients: rcpts
                        .into_iter()
                        .map(|i| {
                            let r = &m.env.recipients[i as usize];
                            JobRecipient {
                                index: i,
                                address: r.address.clone(),
                                notify: r.notify,
                                orcpt: r.orcpt.clone(),
                                tries: r.tries,
                            }
                        })
                        .collect(),
                })
            })
            .collect();
        let tries = messages
            .iter()
            .flat_map(|m: &JobMessage| m.recipients.iter().map(move |r| ((m.id, r.index), r.tries)))
            .collect();
        Attempt {
            domain,
            domain_name: self.sched.name(domain).to_owned(),
            messages,
            recorder: crate::record::Recorder::new(&self.spool, tries),
        }
    }

    async fn handle(&mut self, msg: QueueMsg) {
        match msg {
            QueueMsg::Arrived { env, mref, size } => {
                self.insert(env, mref, size, true, Instant::now());
            }
            QueueMsg::AttemptDone(report) => self.attempt_done(report).await,
            QueueMsg::DsnDone { id, rcpts, result } => self.dsn_done(id, rcpts, result),
            QueueMsg::Control(req, reply) => self.write_then_apply(req, reply),
            QueueMsg::Written {
                id,
                update,
                result,
                reply,
            } => self.written(id, update, result, reply),
        }
    }

    async fn attempt_done(&mut self, report: AttemptReport) {
        for id in self.in_attempt.remove(&report.domain).unwrap_or_default() {
            if let Some(m) = self.messages.get_mut(&id) {
                m.attempts = m.attempts.saturating_sub(1);
            }
        }
        let now = Instant::now();
        let mut retry = Vec::new();
        let mut incomplete = false;
        let mut touched = Vec::new();
        for rec in &report.results {
            let r = &rec.result;
            let Some(m) = self.messages.get_mut(&r.id) else {
                continue;
            };
            let Some(was_final) = m
                .env
                .recipients
                .get(usize::from(r.index))
                .map(|rc| rc.state.is_final())
            else {
                continue;
            };
            // The update the spool wrote, applied as recovery would apply it.
            m.env.apply(&rec.update);
            let rc = &m.env.recipients[usize::from(r.index)];
            if !was_final && rc.state.is_final() {
                m.open = m.open.saturating_sub(1);
            }
            if rc.state == RcptState::Deferred {
                incomplete = true;
                // Held while the attempt ran: it stays queued but off the schedule until
                // released (release puts its open recipients back).
                if !m.env.held {
                    retry.push(Pair {
                        id: r.id,
                        rcpt: r.index,
                    });
                }
            }
            if rc.state == RcptState::Failed && m.env.kind == spool::MessageKind::DoubleBounce {
                tracing::warn!(queue_id = %r.id, to = %rc.address, "double bounce undeliverable; dropped");
            }
            // Deferred recipients too: one may be due a delay notice.
            if !touched.contains(&r.id) {
                touched.push(r.id);
            }
        }
        // Not recorded, so not final: the recipient keeps the state the spool has for it
        // (and its try count) and goes back to its domain.
        for r in &report.unrecorded {
            incomplete = true;
            if self.messages.get(&r.id).is_some_and(|m| {
                !m.env.held && m.env.recipients.get(usize::from(r.index)).is_some()
            }) {
                retry.push(Pair {
                    id: r.id,
                    rcpt: r.index,
                });
            }
        }
        let outcome = if !incomplete {
            AttemptOutcome::Complete
        } else {
            AttemptOutcome::Incomplete
        };
        self.sched.finish(report.domain, retry, outcome, now);
        let mut updates: Vec<Update> = touched
            .into_iter()
            .filter_map(|id| self.settle(id))
            .collect();
        if let Some(id) = self.sched.id(&report.domain_name) {
            let st = self.sched.state(id);
            let next = st
                .next_attempt
                .map(|t| spool::unix_now() + t.saturating_duration_since(now).as_secs())
                .unwrap_or(0);
            updates.push(Update::Schedule(spool::DomainSchedule {
                domain: report.domain_name.clone(),
                level: st.level,
                next_attempt: next,
            }));
        }
        self.record_in_background(updates);
    }
}

#[cfg(test)]
mod recipient_index_tests {
    use super::*;

    #[test]
    fn indices_past_65535_are_kept_open_never_wrapped() {
        let env = Envelope {
            id: TxnId(7),
            arrival: 0,
            sender: String::new(),
            envid: None,
            ret: None,
            body: spool::BodyType::SevenBit,
            smtputf8: false,
            client: String::new(),
            held: false,
            kind: Default::default(),
            recipients: (0..65_540)
                .map(|i| spool::Recipient {
                    address: format!("r{i}@d.test"),
                    ..Default::default()
                })
                .collect(),
        };
        let (open, pairs) = schedulable(&env);
        assert_eq!(open, 65_540, "nothing past the index is dropped");
        let mut idx: Vec<u16> = pairs.iter().map(|(_, p)| p.rcpt).collect();
        idx.dedup();
        assert_eq!(idx.len(), 65_536, "each index once: r0-r3 not twice");
        assert_eq!(idx.last(), Some(&u16::MAX));
    }
}
