//! Queue ids in the sendmail X format `S%016X%02X`: a 64-bit counter and an 8-bit process
//! index. The counter is microseconds since the epoch, strictly increasing within a process
//! and, because the generator starts past the newest id recovery saw, across restarts too.
//! Sorting ids sorts by arrival, which the LIFO scheduler and `queue list` rely on. A
//! recipient is named `ID-%04X` after its index in the envelope.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxnId(pub u64);

/// postrider runs one SMTP server process per spool, so its index is always 0; the field is
/// kept so ids stay in the seed's format and a multi-process server could use it.
pub const PROCESS_INDEX: u8 = 0;

impl fmt::Display for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "S{:016X}{PROCESS_INDEX:02X}", self.0)
    }
}

impl TxnId {
    /// The id of recipient `index` of this transaction: `ID-%04X`.
    pub fn rcpt_id(self, index: u16) -> String {
        format!("{self}-{index:04X}")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a queue id (expected S followed by 18 hex digits)")]
pub struct BadId(String);

impl FromStr for TxnId {
    type Err = BadId;

    fn from_str(s: &str) -> Result<Self, BadId> {
        let hex = s
            .strip_prefix('S')
            .filter(|h| h.len() == 18 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| BadId(s.to_string()))?;
        u64::from_str_radix(&hex[..16], 16)
            .map(TxnId)
            .map_err(|_| BadId(s.to_string()))
    }
}

impl serde::Serialize for TxnId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for TxnId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u64::deserialize(d).map(TxnId)
    }
}

/// Hands out unique, increasing ids without a lock.
#[derive(Debug, Default)]
pub struct IdGenerator {
    last: AtomicU64,
}

impl IdGenerator {
    /// A generator whose ids are all greater than `after`.
    pub fn starting_after(after: u64) -> Self {
        IdGenerator {
            last: AtomicU64::new(after),
        }
    }

    pub fn next(&self) -> TxnId {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let prev = self
            .last
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                Some(now.max(last + 1))
            })
            .expect("closure always returns Some");
        TxnId(now.max(prev + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_increase() {
        let g = IdGenerator::default();
        let a = g.next();
        let b = g.next();
        assert!(b > a);
        assert_eq!(a.to_string().parse::<TxnId>(), Ok(a));
        assert!("S12".parse::<TxnId>().is_err());
        assert!("X000000000000000100".parse::<TxnId>().is_err());
        assert_eq!(TxnId(0x1A).to_string(), "S000000000000001A00");
        assert_eq!(TxnId(0x1A).rcpt_id(3), "S000000000000001A00-0003");
        let g = IdGenerator::starting_after(u64::MAX / 2);
        assert!(g.next().0 > u64::MAX / 2);
    }
}
