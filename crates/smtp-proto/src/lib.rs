//! The SMTP and LMTP protocol, without I/O: push bytes in, get typed values out; give typed
//! values, get bytes to write. Used by postrider's server and its delivery client, and fuzzed
//! on its own (see `fuzz/`).
#![forbid(unsafe_code)]

pub mod address;
pub mod command;
pub mod content;
pub mod data;
pub mod ehlo;
pub mod line;
pub mod params;
pub mod reply;

pub use address::{AddressError, Domain, ForwardPath, Mailbox, ReversePath};
pub use command::{Command, CommandError};
pub use content::{ContentScan, check_content};
pub use data::{DataDecoder, DataEnd, DotStuffer, Violation};
pub use ehlo::Capabilities;
pub use line::{CommandFramer, Frame};
pub use params::{
    BodyType, MailParams, Notify, ParamError, RcptParams, Ret, xtext_decode, xtext_encode,
};
pub use reply::{Canned, EnhancedCode, Reply, ReplyError, ReplyParser};
