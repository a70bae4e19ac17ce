//! The queue as the log describes it: which messages are live, where their content is, and
//! each domain's schedule. Built by replaying the log at start-up and then kept current by
//! the writer thread, which alone owns it.

use std::collections::{BTreeMap, HashMap};

use crate::TxnId;
use crate::envelope::{DomainSchedule, Envelope, Update};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loc {
    /// Inside segment `seg` at byte `offset`.
    Inline { seg: u64, offset: u64, len: u64 },
    /// In `content/ID`.
    External { len: u64 },
}

impl Loc {
    pub fn len(&self) -> u64 {
        match *self {
            Loc::Inline { len, .. } | Loc::External { len } => len,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Live {
    pub env: Envelope,
    /// The segment holding the message record, which must outlive the message.
    pub seg: u64,
    pub loc: Loc,
}

#[derive(Debug, Default)]
pub struct State {
    pub live: HashMap<TxnId, Live>,
    pub schedules: HashMap<String, (DomainSchedule, u64)>,
    /// Live messages per segment; a segment at zero can be deleted.
    pub seg_live: BTreeMap<u64, usize>,
    pub max_id: u64,
}

/// A message that left the queue; its external content file may now be removed.
pub struct Removed {
    pub id: TxnId,
    pub loc: Loc,
}

impl State {
    pub fn add_message(&mut self, env: Envelope, seg: u64, loc: Loc) {
        self.max_id = self.max_id.max(env.id.0);
        let id = env.id;
        *self.seg_live.entry(seg).or_default() += 1;
        if let Some(old) = self.live.insert(id, Live { env, seg, loc }) {
            self.dec(old.seg);
        }
    }

    fn dec(&mut self, seg: u64) {
        if let Some(n) = self.seg_live.get_mut(&seg) {
            *n = n.saturating_sub(1);
        }
    }

    fn remove(&mut self, id: TxnId) -> Option<Removed> {
        let old = self.live.remove(&id)?;
        self.dec(old.seg);
        Some(Removed { id, loc: old.loc })
    }

    /// Applies one update written in segment `seg`: to the message through
    /// [`Envelope::apply`] (the transition the queue manager uses too), and to the log's own
    /// bookkeeping (removals, schedules).
    pub fn apply(&mut self, u: &Update, seg: u64) -> Option<Removed> {
        match u {
            Update::Done { id } | Update::Delete { id } => self.remove(*id),
            Update::Schedule(s) => {
                self.schedules.insert(s.domain.clone(), (s.clone(), seg));
                None
            }
            Update::Rewrite(env) => {
                if let Some(l) = self.live.get_mut(&env.id) {
                    l.env.apply(u);
                }
                None
            }
            _ => {
                if let Some(l) = u.id().and_then(|id| self.live.get_mut(&id)) {
                    l.env.apply(u);
                }
                None
            }
        }
    }
}
