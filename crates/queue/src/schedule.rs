//! The per-domain scheduler of SMTPRCD, as a pure data structure (no I/O, time passed in).
//!
//! Every undelivered (message, recipient) pair sits in its destination domain's list; new pairs
//! go to the head (LIFO: newest first). Each domain has ONE retry schedule. New mail triggers a
//! single immediate attempt whatever the schedule says; older mail rides along on the same
//! connection. At most one attempt per domain is in flight; a global limit bounds them all.
//!
//! Schedule rules (the seed leaves the fine print open; these are ours):
//! - an attempt that delivers everything it tried resets the domain to level 0 (healthy);
//! - a *scheduled* attempt (one that started at or after the domain's next-attempt time) that
//!   fails to deliver everything advances the level and sets next = now + backoff[level],
//!   that wait scaled by a random factor in [1 - jitter, 1 + jitter] so that domains which
//!   failed together (a resolver or network outage) do not all come due at the same instant
//!   again and again (a standing wave of retries);
//! - an *immediate* attempt triggered by new mail before that time that fails leaves the
//!   schedule exactly where it was ("retries continue on the current schedule").
//!
//! Cost per event is O(log domains): a heap keyed by next-attempt time and a FIFO of ready
//! domains, never a scan of the queue. Ready domains are served round-robin so a domain with
//! 100,000 messages gets one batch at a time and cannot starve the others.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

/// The key a recipient is scheduled under: its domain, lowercased, without a final dot.
pub fn rcpt_domain(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((_, d)) => d.trim_end_matches('.').to_ascii_lowercase(),
        None => String::new(),
    }
}
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// The runtime's clock, so the manager can be tested with paused time; without a paused
// runtime it is the monotonic clock.
use tokio::time::Instant;

/// Index of a domain in the scheduler's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainId(u32);

#[derive(Debug)]
struct Domain<T> {
    name: Box<str>,
    pending: VecDeque<T>,
    /// 0 = healthy; n = n consecutive failed scheduled attempts.
    level: u32,
    /// When the schedule allows the next attempt; `None` = whenever there is mail.
    next_attempt: Option<Instant>,
    /// New mail arrived: one attempt now, whatever the schedule.
    immediate: bool,
    busy: bool,
    /// The attempt in flight started before the schedule allowed it (new mail, flush).
    probe: bool,
    in_ready: bool,
    /// Pairs pushed to the head while an attempt was in flight: returned pairs go after them.
    arrived_during_attempt: usize,
}

/// What happened to a domain's attempt, from the scheduler's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Every pair tried was delivered or failed permanently: nothing to retry.
    Complete,
    /// At least one pair must be retried.
    Incomplete,
}

/// A domain's schedule, as persisted and reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleState {
    pub level: u32,
    pub next_attempt: Option<Instant>,
}

#[derive(Debug)]
pub struct Scheduler<T> {
    backoff: Vec<Duration>,
    /// Share of each retry wait drawn at random either way; 0 = exact waits.
    jitter: f64,
    /// The randomness is passed in so tests can seed it and assert exact bounds.
    rng: StdRng,
    concurrency: usize,
    in_flight: usize,
    domains: Vec<Option<Domain<T>>>,
    free: Vec<u32>,
    by_name: HashMap<Box<str>, DomainId>,
    timers: BinaryHeap<Reverse<(Instant, DomainId)>>,
    ready: VecDeque<DomainId>,
    pairs: usize,
}

impl<T> Scheduler<T> {
    /// `backoff` must not be empty (the configuration guarantees it). Retry waits are exact
    /// until [`Scheduler::with_jitter`] says otherwise.
    pub fn new(backoff: Vec<Duration>, concurrency: usize) -> Self {
        assert!(!backoff.is_empty(), "backoff schedule is empty");
        Scheduler {
            backoff,
            jitter: 0.0,
            // Never drawn from while the jitter is 0.
            rng: StdRng::seed_from_u64(0),
            concurrency: concurrency.max(1),
            in_flight: 0,
            domains: Vec::new(),
            free: Vec::new(),
            by_name: HashMap::new(),
            timers: BinaryHeap::new(),
            ready: VecDeque::new(),
            pairs: 0,
        }
    }

    /// Scales every retry wait this scheduler sets by a factor drawn from `rng` in
    /// [1 - `jitter`, 1 + `jitter`]. `jitter` is clamped to 0..=0.5 (what the configuration
    /// allows): a wait must stay positive, and a wider spread would blur the schedule.
    pub fn with_jitter(mut self, jitter: f64, rng: StdRng) -> Self {
        // NaN, which the configuration never gives, would poison every wait: treat as 0.
        self.jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 0.5)
        };
        self.rng = rng;
        self
    }

    /// The wait before the retry at backoff step `step`, jittered.
    fn retry_wait(&mut self, step: Duration) -> Duration {
        if self.jitter == 0.0 {
            return step;
        }
        let factor = self.rng.random_range(1.0 - self.jitter..=1.0 + self.jitter);
        // Only a wait near Duration::MAX can fail to scale; it then stays as configured.
        Duration::try_from_secs_f64(step.as_secs_f64() * factor).unwrap_or(step)
    }

    #[cfg(test)]
    pub fn domain_count(&self) -> usize {
        self.by_name.len()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub fn id(&self, name: &str) -> Option<DomainId> {
        self.by_name.get(name).copied()
    }

    pub fn name(&self, id: DomainId) -> &str {
        &self.dom(id).name
    }

    pub fn state(&self, id: DomainId) -> ScheduleState {
        let d = self.dom(id);
        ScheduleState {
            level: d.level,
            next_attempt: d.next_attempt,
        }
    }

    #[cfg(test)]
    pub fn pending(&self, id: DomainId) -> impl Iterator<Item = &T> {
        self.dom(id).pending.iter()
    }

    /// Every domain with its pending pairs and schedule (for listings and metrics).
    pub fn domains(&self) -> impl Iterator<Item = (DomainId, &str, usize, u32)> {
        self.domains.iter().enumerate().filter_map(|(i, d)| {
            d.as_ref()
                .map(|d| (DomainId(i as u32), &*d.name, d.pending.len(), d.level))
        })
    }

    fn dom(&self, id: DomainId) -> &Domain<T> {
        // Ids are only handed out for live slots and slots are freed only when the domain
        // is idle and empty, after which no caller holds the id.
        self.domains[id.0 as usize]
            .as_ref()
            .expect("live domain id")
    }

    fn dom_mut(&mut self, id: DomainId) -> &mut Domain<T> {
        self.domains[id.0 as usize]
            .as_mut()
            .expect("live domain id")
    }

    fn intern(&mut self, name: &str) -> DomainId {
        if let Some(&id) = self.by_name.get(name) {
            return id;
        }
        let d = Domain {
            name: name.into(),
            pending: VecDeque::new(),
            level: 0,
            next_attempt: None,
            immediate: false,
            busy: false,
            probe: false,
            in_ready: false,
            arrived_during_attempt: 0,
        };
        let id = match self.free.pop() {
            Some(slot) => {
                self.domains[slot as usize] = Some(d);
                DomainId(slot)
            }
            None => {
                self.domains.push(Some(d));
                DomainId(self.domains.len() as u32 - 1)
            }
        };
        self.by_name.insert(name.into(), id);
        id
    }

    /// Restores a persisted schedule (at recovery) before pairs are added back.
    pub fn restore(&mut self, name: &str, level: u32, next_attempt: Option<Instant>) {
        let id = self.intern(name);
        let d = self.dom_mut(id);
        d.level = level;
        d.next_attempt = next_attempt;
        if let Some(t) = next_attempt {
            self.timers.push(Reverse((t, id)));
        }
    }

    /// Recovered mail: appended at the tail in the order given (callers pass newest first),
    /// due when the domain's schedule says, without an immediate attempt.
    pub fn add_recovered(&mut self, name: &str, item: T, now: Instant) {
        let id = self.intern(name);
        self.dom_mut(id).pending.push_back(item);
        self.pairs += 1;
        self.make_due_if_ready(id, now);
    }

    /// New mail: to the head of the domain's list, and one immediate attempt.
    pub fn add_new(&mut self, name: &str, item: T, now: Instant) -> DomainId {
        let id = self.intern(name);
        let d = self.dom_mut(id);
        d.pending.push_front(item);
        if d.busy {
            d.arrived_during_attempt += 1;
        }
        d.immediate = true;
        self.pairs += 1;
        self.make_due_if_ready(id, now);
        id
    }

    /// Asks for an attempt now (`queue flush`), like new mail does.
    pub fn flush(&mut self, id: DomainId, now: Instant) {
        self.dom_mut(id).immediate = true;
        self.make_due_if_ready(id, now);
    }

    fn is_due(d: &Domain<T>, now: Instant) -> bool {
        !d.busy && !d.pending.is_empty() && (d.immediate || d.next_attempt.is_none_or(|t| t <= now))
    }

    fn make_due_if_ready(&mut self, id: DomainId, now: Instant) {
        let d = self.dom_mut(id);
        if !d.in_ready && Self::is_due(d, now) {
            d.in_ready = true;
            self.ready.push_back(id);
        }
    }

    /// When the next timer fires, for the caller's sleep.
    pub fn next_wakeup(&mut self) -> Option<Instant> {
        // Drop stale heap entries so the caller does not wake for nothing.
        while let Some(&Reverse((t, id))) = self.timers.peek() {
            let live = self.domains[id.0 as usize]
                .as_ref()
                .is_some_and(|d| d.next_attempt == Some(t) && !d.pending.is_empty());
            if live {
                return Some(t);
            }
            self.timers.pop();
        }
        None
    }

    /// Starts the next attempt if one is due and the global limit allows: the domain and up to
    /// `max_batch` pairs, newest first. The caller must later call [`Scheduler::finish`].
    pub fn start_next(&mut self, now: Instant, max_batch: usize) -> Option<(DomainId, Vec<T>)> {
        while let Some(&Reverse((t, id))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            if self.domains[id.0 as usize].is_some() {
                self.make_due_if_ready(id, now);
            }
        }
        if self.in_flight >= self.concurrency {
            return None;
        }
        while let Some(id) = self.ready.pop_front() {
            let d = self.dom_mut(id);
            d.in_ready = false;
            if !Self::is_due(d, now) {
                continue;
            }
            let n = d.pending.len().min(max_batch.max(1));
            let batch: Vec<T> = d.pending.drain(..n).collect();
            d.busy = true;
            d.arrived_during_attempt = 0;
            // This attempt satisfies any immediate request; mail arriving during it asks anew.
            d.immediate = false;
            // Whether this attempt is on schedule decides what a failure does (module doc).
            d.probe = d.next_attempt.is_some_and(|t| t > now);
            self.pairs -= n;
            self.in_flight += 1;
            return Some((id, batch));
        }
        None
    }

    /// Ends an attempt: `retry` are the pairs to keep (temporary failures), in the order they
    /// were handed out; `outcome` decides the schedule.
    pub fn finish(&mut self, id: DomainId, retry: Vec<T>, outcome: AttemptOutcome, now: Instant) {
        self.in_flight -= 1;
        // The next wait, drawn before the domain is borrowed, and only for a failed
        // scheduled attempt: the one case that sets a new retry time.
        let d = self.dom(id);
        let step = self.backoff[(d.level as usize).min(self.backoff.len() - 1)];
        let sets_retry = outcome == AttemptOutcome::Incomplete && !d.probe;
        let wait = if sets_retry {
            self.retry_wait(step)
        } else {
            step
        };
        let d = self.dom_mut(id);
        d.busy = false;
        let probe = d.probe;
        let at = d.arrived_during_attempt;
        let n = retry.len();
        for (i, item) in retry.into_iter().enumerate() {
            d.pending.insert(at + i, item);
        }
        d.arrived_during_attempt = 0;
        match outcome {
            AttemptOutcome::Complete => {
                d.level = 0;
                d.next_attempt = None;
            }
            AttemptOutcome::Incomplete if probe => {
                // The schedule stands. Its timer may have been dropped as stale while the
                // probe had every pair out, so arm it again (duplicates are harmless).
                if let Some(t) = d.next_attempt {
                    self.timers.push(Reverse((t, id)));
                }
            }
            AttemptOutcome::Incomplete => {
                d.level += 1;
                let t = now + wait;
                d.next_attempt = Some(t);
                self.timers.push(Reverse((t, id)));
            }
        }
        self.pairs += n;
        let d = self.dom(id);
        if d.pending.is_empty() && d.level == 0 {
            self.forget(id);
        } else {
            self.make_due_if_ready(id, now);
        }
    }

    /// Removes pairs matching `pred` from every domain (delete, hold); returns them.
    pub fn remove_where(&mut self, mut pred: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut out = Vec::new();
        for d in self.domains.iter_mut().flatten() {
            let mut i = 0;
            while i < d.pending.len() {
                if pred(&d.pending[i]) {
                    out.extend(d.pending.remove(i));
                } else {
                    i += 1;
                }
            }
        }
        self.pairs -= out.len();
        out
    }

    fn forget(&mut self, id: DomainId) {
        if let Some(d) = self.domains[id.0 as usize].take() {
            self.by_name.remove(&d.name);
            self.free.push(id.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn sched() -> Scheduler<u32> {
        Scheduler::new(vec![secs(1), secs(2), secs(4)], 10)
    }

    #[test]
    fn newest_first_and_one_attempt_per_domain() {
        let t0 = Instant::now();
        let mut s = sched();
        for m in 1..=3 {
            s.add_new("a.test", m, t0);
        }
        let (id, batch) = s.start_next(t0, 100).unwrap();
        assert_eq!(batch, [3, 2, 1]);
        s.add_new("a.test", 4, t0);
        assert!(s.start_next(t0, 100).is_none(), "second attempt while busy");
        s.finish(id, vec![], AttemptOutcome::Complete, t0);
        let (_, batch) = s.start_next(t0, 100).unwrap();
        assert_eq!(
            batch,
            [4],
            "mail that arrived during the attempt gets its own"
        );
    }

    #[test]
    fn backoff_advances_and_resets() {
        let t0 = Instant::now();
        let mut s = sched();
        s.add_new("a.test", 1, t0);
        let mut now = t0;
        let mut waits = vec![];
        for _ in 0..4 {
            let (id, batch) = s.start_next(now, 100).unwrap();
            s.finish(id, batch, AttemptOutcome::Incomplete, now);
            assert!(s.start_next(now, 100).is_none());
            let next = s.next_wakeup().unwrap();
            waits.push(next - now);
            now = next;
        }
        assert_eq!(waits, [secs(1), secs(2), secs(4), secs(4)]);
        let (id, batch) = s.start_next(now, 100).unwrap();
        assert_eq!(batch, [1]);
        s.finish(id, vec![], AttemptOutcome::Complete, now);
        assert_eq!(s.domain_count(), 0, "empty healthy domain is forgotten");
    }

    #[test]
    fn new_mail_probes_and_failed_probe_keeps_schedule() {
        let t0 = Instant::now();
        let mut s = sched();
        s.add_new("a.test", 1, t0);
        let (id, b) = s.start_next(t0, 100).unwrap();
        s.finish(id, b, AttemptOutcome::Incomplete, t0); // level 1, next t0+1
        let (id, b) = s.start_next(t0 + secs(1), 100).unwrap();
        s.finish(id, b, AttemptOutcome::Incomplete, t0 + secs(1)); // level 2, next t0+3
        let before = s.state(id);
        assert_eq!(before.level, 2);
        // New mail half-way: an immediate probe carrying the old mail after the new.
        let now = t0 + secs(2);
        s.add_new("a.test", 2, now);
        let (id, b) = s.start_next(now, 100).unwrap();
        assert_eq!(b, [2, 1]);
        // The manager asks for its next wake-up while the probe has every pair out.
        let _ = s.next_wakeup();
        s.finish(id, b, AttemptOutcome::Incomplete, now);
        assert_eq!(s.state(id), before, "a failed probe continues the schedule");
        assert!(s.start_next(now, 100).is_none());
        assert_eq!(
            s.next_wakeup(),
            Some(t0 + secs(3)),
            "the scheduled retry is still armed"
        );
        // A successful probe resets it.
        s.add_new("a.test", 3, now);
        let (id, b) = s.start_next(now, 100).unwrap();
        assert_eq!(b, [3, 2, 1]);
        s.finish(id, vec![], AttemptOutcome::Complete, now);
        assert_eq!(s.domain_count(), 0);
    }

    #[test]
    fn retried_pairs_keep_their_place_behind_newer_mail() {
        let t0 = Instant::now();
        let mut s = sched();
        for m in 1..=4 {
            s.add_new("a.test", m, t0);
        }
        let (id, b) = s.start_next(t0, 2).unwrap();
        assert_eq!(b, [4, 3]);
        s.add_new("a.test", 5, t0);
        s.finish(id, vec![4, 3], AttemptOutcome::Incomplete, t0);
        assert_eq!(s.pending(id).copied().collect::<Vec<_>>(), [5, 4, 3, 2, 1]);
    }

    #[test]
    fn global_limit_and_round_robin() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(vec![secs(1)], 2);
        for m in 0..1000 {
            s.add_new("big.test", m, t0);
        }
        s.add_new("small1.test", 0, t0);
        s.add_new("small2.test", 0, t0);
        let (big, _) = s.start_next(t0, 100).unwrap();
        let (small1, _) = s.start_next(t0, 100).unwrap();
        assert!(s.start_next(t0, 100).is_none(), "limit of 2 in flight");
        s.finish(big, vec![], AttemptOutcome::Complete, t0);
        let (next, _) = s.start_next(t0, 100).unwrap();
        assert_eq!(
            s.name(next),
            "small2.test",
            "big domain goes to the back of the line"
        );
        s.finish(small1, vec![], AttemptOutcome::Complete, t0);
        let (next, _) = s.start_next(t0, 100).unwrap();
        assert_eq!(s.name(next), "big.test");
    }

    #[test]
    fn recovered_mail_waits_for_its_schedule() {
        let t0 = Instant::now();
        let mut s = sched();
        s.restore("a.test", 3, Some(t0 + secs(10)));
        s.add_recovered("a.test", 1, t0);
        assert!(s.start_next(t0, 10).is_none());
        assert_eq!(s.next_wakeup(), Some(t0 + secs(10)));
        assert!(s.start_next(t0 + secs(10), 10).is_some());
    }

    /// The wait a scheduler with `jitter` sets after one failed scheduled attempt at each
    /// level of `backoff`, for a domain that keeps failing.
    fn jittered_waits(jitter: f64, seed: u64, backoff: &[Duration], n: usize) -> Vec<Duration> {
        let t0 = Instant::now();
        let mut s =
            Scheduler::new(backoff.to_vec(), 10).with_jitter(jitter, StdRng::seed_from_u64(seed));
        s.add_new("a.test", 1, t0);
        let mut now = t0;
        let mut waits = vec![];
        for _ in 0..n {
            let (id, batch) = s.start_next(now, 100).unwrap();
            s.finish(id, batch, AttemptOutcome::Incomplete, now);
            let next = s.next_wakeup().unwrap();
            waits.push(next - now);
            now = next;
        }
        waits
    }

    #[test]
    fn jittered_retry_waits_stay_within_the_window_and_fill_both_halves() {
        let j = 0.1;
        let b = secs(600);
        let (lo, hi) = (b.mul_f64(1.0 - j), b.mul_f64(1.0 + j));
        let (mut below, mut above) = (0, 0);
        for seed in 0..20 {
            for w in jittered_waits(j, seed, &[b], 50) {
                assert!(lo <= w && w <= hi, "wait {w:?} outside [{lo:?}, {hi:?}]");
                if w < b {
                    below += 1;
                } else if w > b {
                    above += 1;
                }
            }
        }
        // 1,000 draws, uniform over the window: each half gets about 500.
        assert!(below > 300 && above > 300, "below {below}, above {above}");
    }

    #[test]
    fn jitter_scales_each_level_of_the_schedule() {
        let j = 0.5;
        let backoff = [secs(60), secs(300), secs(3600)];
        let waits = jittered_waits(j, 7, &backoff, 5);
        for (i, w) in waits.iter().enumerate() {
            let b = backoff[i.min(backoff.len() - 1)];
            assert!(
                b.mul_f64(1.0 - j) <= *w && *w <= b.mul_f64(1.0 + j),
                "level {i}: wait {w:?} for backoff {b:?}"
            );
        }
    }

    #[test]
    fn jitter_is_reproducible_from_its_seed_and_zero_jitter_is_exact() {
        let backoff = [secs(1), secs(2), secs(4)];
        assert_eq!(
            jittered_waits(0.2, 42, &backoff, 6),
            jittered_waits(0.2, 42, &backoff, 6)
        );
        assert_eq!(
            jittered_waits(0.0, 42, &backoff, 4),
            [secs(1), secs(2), secs(4), secs(4)]
        );
    }

    #[test]
    fn a_failed_probe_draws_no_new_wait() {
        let t0 = Instant::now();
        let mut s = sched().with_jitter(0.5, StdRng::seed_from_u64(1));
        s.add_new("a.test", 1, t0);
        let (id, b) = s.start_next(t0, 100).unwrap();
        s.finish(id, b, AttemptOutcome::Incomplete, t0);
        let before = s.state(id);
        s.add_new("a.test", 2, t0);
        let (id, b) = s.start_next(t0, 100).unwrap();
        s.finish(id, b, AttemptOutcome::Incomplete, t0);
        assert_eq!(s.state(id), before, "the jittered retry time stands");
    }
}
