//! What delivery learned about one recipient: delivered, deferred or failed, with its
//! RFC 3463 status, the server that answered and its reply, or our own reason when no
//! server's reply decided it. Delivery produces these; the recorder turns them into spool
//! updates.

use smtp_proto::{EnhancedCode, Reply};
use spool::{Handoff, TxnId};

pub struct RcptResult {
    pub id: TxnId,
    pub index: u16,
    pub outcome: RcptOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    Delivered {
        relay: String,
        status: EnhancedCode,
        reply: Reply,
        handoff: Handoff,
    },
    Deferred {
        relay: Option<String>,
        status: EnhancedCode,
        reason: Reason,
    },
    Failed {
        relay: Option<String>,
        status: EnhancedCode,
        reason: Reason,
    },
}

/// Why a recipient was not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The reply of the server that answered.
    Reply(Reply),
    /// Our own: the whole text as logged and kept as the recipient's last error, status
    /// included ("4.4.7 message expired: ...", "552 5.3.4 message size ...").
    Local(String),
}

impl Reason {
    fn text(&self) -> String {
        match self {
            Reason::Reply(r) => r.to_string(),
            Reason::Local(t) => t.clone(),
        }
    }
}

impl RcptOutcome {
    /// The outcome a server's final reply gives: delivered on 2xx and 3xx, deferred on
    /// 4xx, failed on 5xx; the status is the reply's own enhanced code.
    pub fn from_reply(relay: String, reply: Reply, handoff: Handoff) -> Self {
        if reply.is_positive() {
            RcptOutcome::Delivered {
                relay,
                status: reply_status(&reply, 2),
                reply,
                handoff,
            }
        } else if reply.is_transient() {
            RcptOutcome::Deferred {
                relay: Some(relay),
                status: reply_status(&reply, 4),
                reason: Reason::Reply(reply),
            }
        } else {
            RcptOutcome::Failed {
                relay: Some(relay),
                status: reply_status(&reply, 5),
                reason: Reason::Reply(reply),
            }
        }
    }

    /// Deferred for a reason of our own (no server's reply); `text` is the whole text.
    pub fn deferred(status: EnhancedCode, text: String) -> Self {
        RcptOutcome::Deferred {
            relay: None,
            status,
            reason: Reason::Local(text),
        }
    }

    /// Failed for a reason of our own (no server's reply); `text` is the whole text.
    pub fn failed(status: EnhancedCode, text: String) -> Self {
        RcptOutcome::Failed {
            relay: None,
            status,
            reason: Reason::Local(text),
        }
    }

    /// The RFC 3463 status, for the logs and the DSN.
    pub fn status(&self) -> EnhancedCode {
        match self {
            RcptOutcome::Delivered { status, .. }
            | RcptOutcome::Deferred { status, .. }
            | RcptOutcome::Failed { status, .. } => *status,
        }
    }

    /// The server's reply, if one decided this outcome.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            RcptOutcome::Delivered { reply, .. } => Some(reply),
            RcptOutcome::Deferred { reason, .. } | RcptOutcome::Failed { reason, .. } => {
                match reason {
                    Reason::Reply(r) => Some(r),
                    Reason::Local(_) => None,
                }
            }
        }
    }

    /// The text for the log line and the DSN's diagnostic, and what a recipient keeps as its
    /// last error: a reply as `550 5.1.1 text`, our own reasons as they were written.
    pub fn diagnostic(&self) -> String {
        match self {
            RcptOutcome::Delivered { reply, .. } => reply.to_string(),
            RcptOutcome::Deferred { reason, .. } | RcptOutcome::Failed { reason, .. } => {
                reason.text()
            }
        }
    }

    /// The server that answered, and how a delivered recipient was handed on.
    pub fn relay_and_handoff(&self) -> (Option<String>, Handoff) {
        match self {
            RcptOutcome::Delivered { relay, handoff, .. } => (Some(relay.clone()), *handoff),
            RcptOutcome::Deferred { relay, .. } | RcptOutcome::Failed { relay, .. } => {
                (relay.clone(), Handoff::Unknown)
            }
        }
    }
}

/// A reply's enhanced code, else `class.0.0`. A multi-line reply whose later lines do not
/// repeat the code keeps it in its first line's text (the parser strips a code only when
/// every line has it); it is taken from there, as the DSN, which reads the stored text,
/// would find it. A code of another class than the outcome's is not believed.
fn reply_status(reply: &Reply, class: u8) -> EnhancedCode {
    reply
        .enhanced()
        .or_else(|| {
            reply
                .lines()
                .first()
                .and_then(|l| l.split(' ').next())
                .and_then(|w| w.parse::<EnhancedCode>().ok())
        })
        .filter(|e| e.class == class)
        .unwrap_or(EnhancedCode::new(class, 0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dsn::status_of;
    use proptest::prelude::*;
    use smtp_proto::ReplyParser;

    fn parse(wire: &str) -> Reply {
        let mut p = ReplyParser::new();
        p.push(wire.as_bytes());
        p.next_reply().unwrap().unwrap()
    }

    fn outcome(wire: &str) -> RcptOutcome {
        RcptOutcome::from_reply(
            "mx.test[192.0.2.1]:25".into(),
            parse(wire),
            Handoff::Relayed,
        )
    }

    #[test]
    fn a_reply_keeps_its_enhanced_code_and_text() {
        let o = outcome("550 5.1.1 no such user\r\n");
        assert!(matches!(o, RcptOutcome::Failed { .. }));
        assert_eq!(o.status(), EnhancedCode::new(5, 1, 1));
        assert_eq!(o.diagnostic(), "550 5.1.1 no such user");
        assert_eq!(o.reply().map(Reply::code), Some(550));
        let o = outcome("250-2.1.5 ok\r\n250 2.1.5 queued\r\n");
        assert!(matches!(o, RcptOutcome::Delivered { .. }));
        assert_eq!(o.status(), EnhancedCode::new(2, 1, 5));
        assert_eq!(o.diagnostic(), "250 2.1.5 ok queued");
        assert_eq!(o.relay_and_handoff().1, Handoff::Relayed);
    }

    #[test]
    fn a_reply_without_a_code_gets_its_class() {
        for (wire, status) in [
            ("451 try later\r\n", "4.0.0"),
            ("554 no\r\n", "5.0.0"),
            ("250 ok\r\n", "2.0.0"),
            ("250\r\n", "2.0.0"),
            // Only the first line has a code: it is still the reply's.
            ("550-5.7.1 blocked\r\n550 see the web page\r\n", "5.7.1"),
        ] {
            assert_eq!(outcome(wire).status().to_string(), status, "{wire:?}");
        }
    }

    #[test]
    fn local_reasons_keep_their_text_and_status() {
        let o = RcptOutcome::failed(
            EnhancedCode::new(4, 4, 7),
            "4.4.7 message expired: undeliverable for 5 days".into(),
        );
        assert_eq!(o.status(), EnhancedCode::new(4, 4, 7));
        assert_eq!(
            o.diagnostic(),
            "4.4.7 message expired: undeliverable for 5 days"
        );
        assert_eq!(o.reply(), None);
        assert_eq!(o.relay_and_handoff(), (None, Handoff::Unknown));
        let o = RcptOutcome::deferred(
            EnhancedCode::new(4, 3, 0),
            "4.3.0 spool read error: gone".into(),
        );
        assert!(matches!(o, RcptOutcome::Deferred { relay: None, .. }));
    }

    proptest! {
        /// Whatever a server says, the outcome's status is the one its reply carries, or the
        /// class's `X.0.0`; and it is the status the DSN reads back from the stored text.
        #[test]
        fn every_reply_keeps_its_status(
            code in 200u16..600,
            enhanced in proptest::option::of((0u16..30, 0u16..30)),
            text in "[ -~]{0,40}",
        ) {
            let class = (code / 100) as u8;
            let e = enhanced.map(|(s, d)| EnhancedCode::new(class, s, d));
            let wire = match e {
                Some(e) => format!("{code} {e} {text}\r\n"),
                None => format!("{code} {text}\r\n"),
            };
            let reply = parse(&wire);
            let o = RcptOutcome::from_reply("r".into(), reply.clone(), Handoff::Unknown);
            let outcome_class = match class {
                2 | 3 => 2,
                c => c,
            };
            prop_assert_eq!(o.status().class, outcome_class);
            if let Some(got) = reply.enhanced().filter(|g| g.class == outcome_class) {
                prop_assert_eq!(o.status(), got);
            }
            if let Some(e) = e.filter(|e| e.class == outcome_class) {
                prop_assert_eq!(o.status(), e);
            }
            prop_assert_eq!(o.diagnostic(), reply.to_string());
            if reply.enhanced().is_some() {
                prop_assert_eq!(status_of(&o.diagnostic(), outcome_class), o.status());
            }
        }
    }
}
