//! Start-up: replaying the log's segments in order, believing only complete records whose
//! checksum matches, cutting a torn tail, and handing the live messages and schedules to
//! their owners (`Recovery`). `inspect` reads the same way without repairing, for the
//! offline `queue` command.

use std::fmt;
use std::fs;
use std::io;
use std::path::Path;

use crate::state::{Loc, State};
use crate::{DomainSchedule, Envelope, MessageRef, SpoolError, record, seg_path};

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

pub(crate) fn list_segments(dir: &Path) -> Result<Vec<u64>, SpoolError> {
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
pub(crate) fn replay(
    dir: &Path,
    repair: bool,
) -> Result<(State, RecoveryReport, Vec<u64>), SpoolError> {
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
pub(crate) fn recovery_of(st: &mut State, report: RecoveryReport) -> Recovery {
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
