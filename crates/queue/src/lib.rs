//! The queue manager: the one owner of the in-memory queue. It takes new mail from every
//! entry path, schedules delivery per domain (SMTPRCD: newest first, one attempt per domain,
//! retry levels, an immediate probe on new mail), hands attempts to a [`Deliver`]
//! implementation, acts on the durable results, and sends DSNs. Control requests and the
//! views it answers with are its API (`api`); what it counts is its own (`Counters`).

pub mod api;
mod arrivals;
pub mod bounce;
pub mod counters;
pub mod dsn;
pub mod job;
pub mod manager;
pub mod outcome;
pub mod record;
pub mod schedule;

pub use counters::Counters;
pub use job::{Attempt, AttemptReport, Deliver, JobMessage, JobRecipient, RcptOutcome, RcptResult};
pub use manager::{Manager, QueueHandle, Settings};
pub use outcome::Reason;
pub use record::{Recorded, Recorder};
pub use schedule::DomainId;
