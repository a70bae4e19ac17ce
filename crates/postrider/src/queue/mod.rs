//! The queue manager: the one owner of the in-memory queue, scheduling delivery per domain;
//! and the `postrider queue` command that talks to it.
pub mod api;
pub mod bounce;
pub mod cli;
pub mod manager;
pub mod schedule;
