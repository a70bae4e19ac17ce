//! The queue manager: the one owner of the in-memory queue, scheduling delivery per domain.
pub mod schedule;
