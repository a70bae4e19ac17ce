//! Every reply the server session sends, named once. Integration tests and clients compare
//! these texts byte for byte, so they live here and nowhere else; the ones that name the
//! host, a size or an address are functions.

use smtp_proto::Reply;

pub use smtp_proto::Canned;

const fn canned(code: u16, status: &'static str, text: &'static str) -> Canned {
    Canned { code, status, text }
}

pub const OK: Canned = canned(250, "2.0.0", "Ok");
pub const SENDER_OK: Canned = canned(250, "2.1.0", "Ok");
pub const RECIPIENT_OK: Canned = canned(250, "2.1.5", "Ok");
pub const START_DATA: Canned = canned(354, "", "End data with <CR><LF>.<CR><LF>");
pub const TLS_READY: Canned = canned(220, "2.0.0", "Ready to start TLS");
pub const HELP: Canned = canned(214, "2.0.0", "See RFC 5321");
pub const VRFY: Canned = canned(
    252,
    "2.5.0",
    "Cannot VRFY user, but will accept message and attempt delivery",
);

pub const LINE_TOO_LONG: Canned = canned(500, "5.5.6", "Line too long");
pub const NOT_LMTP: Canned = canned(500, "5.5.1", "This is SMTP, not LMTP");
pub const NO_EXPN: Canned = canned(502, "5.5.1", "EXPN is not available");
pub const NO_AUTH: Canned = canned(502, "5.5.1", "AUTH is not available");
pub const NO_STARTTLS: Canned = canned(502, "5.5.1", "Error: STARTTLS is not available");
pub const TLS_ACTIVE: Canned = canned(554, "5.5.1", "Error: TLS already active");
pub const NEED_HELO: Canned = canned(503, "5.5.1", "Error: send HELO/EHLO first");
pub const NESTED_MAIL: Canned = canned(503, "5.5.1", "Error: nested MAIL command");
pub const NEED_MAIL: Canned = canned(503, "5.5.1", "Error: need MAIL command");
pub const RCPT_DURING_BDAT: Canned = canned(503, "5.5.1", "Error: RCPT during BDAT");
pub const DATA_DURING_BDAT: Canned = canned(503, "5.5.1", "Error: DATA during BDAT");
pub const BINARYMIME_NEEDS_BDAT: Canned = canned(503, "5.5.1", "Error: BODY=BINARYMIME needs BDAT");
pub const BDAT_NEEDS_EHLO: Canned = canned(503, "5.5.1", "Error: BDAT needs EHLO");
pub const NO_RECIPIENTS: Canned = canned(554, "5.5.1", "Error: no valid recipients");
pub const PARAMS_NEED_EHLO: Canned = canned(555, "5.5.4", "ESMTP parameters need EHLO");
pub const SENDER_NEEDS_SMTPUTF8: Canned = canned(553, "5.6.7", "Sender address needs SMTPUTF8");
pub const RECIPIENT_NEEDS_SMTPUTF8: Canned =
    canned(553, "5.6.7", "Recipient address needs SMTPUTF8");
pub const TOO_BIG: Canned = canned(552, "5.3.4", "Message size exceeds fixed limit");
pub const TOO_MANY_RECIPIENTS: Canned = canned(452, "4.5.3", "Error: too many recipients");
pub const NO_SPACE: Canned = canned(452, "4.3.1", "Insufficient system storage");
pub const LOOKUP_FAILED: Canned = canned(451, "4.3.0", "Temporary lookup failure");
/// A stalled DATA or BDAT chunk (the command timeout's reply names the host, this one not).
pub const DATA_TIMEOUT: Canned = canned(421, "4.4.2", "Error: timeout exceeded");
pub const TALKED_EARLY: Canned = canned(
    554,
    "5.5.0",
    "Error: SMTP protocol violation (talked before greeting)",
);
pub const TOO_MANY_CONNECTIONS: &str = "Error: too many connections";
pub const TOO_MANY_FROM_CLIENT: &str = "Error: too many connections from your address";

pub fn greeting(hostname: &str, banner: &str) -> Reply {
    Reply::new(220, None, &format!("{hostname} {banner}"))
}

pub fn helo(hostname: &str) -> Reply {
    Reply::new(250, None, hostname)
}

/// The EHLO reply: our name, then the extensions, STARTTLS only while it can still be used.
pub fn ehlo(hostname: &str, max_message_size: u64, starttls: bool) -> Reply {
    let mut lines = vec![
        hostname.to_string(),
        "PIPELINING".into(),
        format!("SIZE {max_message_size}"),
        "8BITMIME".into(),
        "ENHANCEDSTATUSCODES".into(),
        "SMTPUTF8".into(),
        "DSN".into(),
        "CHUNKING".into(),
        "BINARYMIME".into(),
    ];
    if starttls {
        lines.push("STARTTLS".into());
    }
    Reply::multi(250, lines)
}

fn with_status(code: u16, status: &str, text: &str) -> Reply {
    Reply::new(code, status.parse().ok(), text)
}

pub fn closing(hostname: &str) -> Reply {
    with_status(221, "2.0.0", &format!("{hostname} closing connection"))
}

pub fn command_timeout(hostname: &str) -> Reply {
    with_status(421, "4.4.2", &format!("{hostname} Error: timeout exceeded"))
}

pub fn shutting_down(hostname: &str) -> Reply {
    with_status(421, "4.3.2", &format!("{hostname} Service shutting down"))
}

pub fn too_many_errors(hostname: &str) -> Reply {
    with_status(421, "4.7.0", &format!("{hostname} Error: too many errors"))
}

pub fn relay_denied(mailbox: &str) -> Reply {
    with_status(554, "5.7.1", &format!("<{mailbox}>: Relay access denied"))
}

pub fn user_unknown(local_part: &str) -> Reply {
    with_status(
        550,
        "5.1.1",
        &format!("<{local_part}>: Recipient address rejected: User unknown"),
    )
}

pub fn chunk_received(size: u64) -> Reply {
    with_status(250, "2.0.0", &format!("{size} octets received"))
}

/// For sessions refused before they start (connection limits).
pub fn refusal(text: &str) -> Reply {
    with_status(421, "4.7.0", text)
}
