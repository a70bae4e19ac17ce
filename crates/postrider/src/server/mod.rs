//! The SMTP server: listeners, sessions, and what they check before the spool commits.
pub mod headers;
