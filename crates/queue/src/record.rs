//! Recording delivery results: the only place a recipient's outcome becomes an [`Update`].
//! An attempt carries a [`Recorder`] the queue manager made for it; delivery hands it each
//! message's results as the final reply arrives, the recorder writes them to the spool
//! without waiting (the writer's group commit joins them with other commits), and the
//! manager later applies the very updates that were written, through
//! [`spool::Envelope::apply`], so memory and disk cannot disagree.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use spool::{RcptState, Spool, TxnId, Update};

use crate::outcome::{RcptOutcome, RcptResult};

/// A result that is durable, with the update that made it so.
pub struct Recorded {
    pub result: RcptResult,
    pub update: Update,
}

/// One spool write of some results: running on its own task, or finished with its outcome.
enum Write {
    Running(tokio::task::JoinHandle<Result<(), spool::SpoolError>>),
    Done(Result<(), String>),
}

impl Write {
    async fn outcome(self) -> Result<(), String> {
        match self {
            Write::Done(r) => r,
            Write::Running(h) => Self::joined(h.await),
        }
    }

    fn joined(
        r: Result<Result<(), spool::SpoolError>, tokio::task::JoinError>,
    ) -> Result<(), String> {
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("spool write task: {e}")),
        }
    }
}

/// A connection goes on while fewer than this many of its messages' results are unwritten,
/// or while the oldest of them is younger than [`MAX_LAG`]; otherwise it waits for the
/// oldest. A healthy journal commits within a few milliseconds and never holds delivery up;
/// a journal commit stuck behind writeback can take seconds while the next hop goes on
/// accepting, and then a crash repeats only what a connection delivers in `MAX_LAG`.
const MAX_UNRECORDED: usize = 4;
const MAX_LAG: Duration = Duration::from_millis(20);

/// Writes an attempt's results to the spool as they come in, without waiting for each
/// write: the writer's group commit joins them with whatever else is being committed.
pub struct Recorder {
    spool: Spool,
    tries: HashMap<(TxnId, u16), u32>,
    /// Each write: its results, the updates written for them, when it started, and how it is.
    writes: Vec<(Vec<RcptResult>, Vec<Update>, Instant, Write)>,
    /// Writes before this index are joined (`Write::Done`): `keep_up` looks only past it.
    joined: usize,
}

impl Recorder {
    pub fn new(spool: &Spool, tries: HashMap<(TxnId, u16), u32>) -> Self {
        Recorder {
            spool: spool.clone(),
            tries,
            writes: Vec::new(),
            joined: 0,
        }
    }

    /// Starts writing `results` (one message's, or a batch that shares an outcome).
    pub fn record(&mut self, results: Vec<RcptResult>) {
        if results.is_empty() {
            return;
        }
        let updates: Vec<Update> = results.iter().map(|r| self.update(r)).collect();
        let spool = self.spool.clone();
        // A task of its own, so the write goes ahead while the connection is busy.
        let written = updates.clone();
        let write = tokio::spawn(async move { spool.update_soon(written).await });
        self.writes
            .push((results, updates, Instant::now(), Write::Running(write)));
    }

    /// Waits, oldest first, while [`MAX_UNRECORDED`] or more writes are unfinished and the
    /// oldest has been running for [`MAX_LAG`]: called before the next message goes out.
    pub async fn keep_up(&mut self) {
        loop {
            let unfinished = self.writes.len() - self.joined;
            let Some((_, _, started, write)) = self.writes.get_mut(self.joined) else {
                return;
            };
            if let Write::Running(h) = write {
                if !h.is_finished() && (unfinished < MAX_UNRECORDED || started.elapsed() < MAX_LAG)
                {
                    return;
                }
                // Finished, or the one to wait for: join it, at once or when it is done.
                *write = Write::Done(Write::joined(h.await));
            }
            self.joined += 1;
        }
    }

    fn update(&self, r: &RcptResult) -> Update {
        let (relay, handoff) = r.outcome.relay_and_handoff();
        let (state, last_error) = match &r.outcome {
            RcptOutcome::Delivered { .. } => (RcptState::Delivered, None),
            RcptOutcome::Deferred { .. } => (RcptState::Deferred, Some(r.outcome.diagnostic())),
            RcptOutcome::Failed { .. } => (RcptState::Failed, Some(r.outcome.diagnostic())),
        };
        Update::Rcpt {
            id: r.id,
            index: r.index,
            state,
            tries: self.tries.get(&(r.id, r.index)).copied().unwrap_or(0) + 1,
            last_error,
            next_attempt: 0,
            relay,
            handoff,
        }
    }

    /// Waits for every write: the results now durable (with the update that made them so,
    /// which the queue manager applies in memory), and those that could not be recorded
    /// with the reason.
    pub async fn finish(self) -> (Vec<Recorded>, Vec<(RcptResult, String)>) {
        let mut durable = Vec::new();
        let mut unrecorded = Vec::new();
        for (results, updates, _, write) in self.writes {
            match write.outcome().await {
                Ok(()) => durable.extend(
                    results
                        .into_iter()
                        .zip(updates)
                        .map(|(result, update)| Recorded { result, update }),
                ),
                Err(err) => unrecorded.extend(results.into_iter().map(|r| (r, err.clone()))),
            }
        }
        (durable, unrecorded)
    }
}
