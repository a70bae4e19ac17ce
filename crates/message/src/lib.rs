//! The message itself, as RFC 5322 text: the header section (read bounded, split byte for
//! byte, edited as milters ask), dates, and the trace fields we add and count. No I/O but
//! reading from a buffer; every entry path and the DSN composer use this one reader.

pub mod header;
pub mod trace;

pub use header::{HeaderChange, apply_headers, header_section, parse_headers, read_header_section};
pub use trace::{HeaderScan, Trace, received, rfc5322_date};
