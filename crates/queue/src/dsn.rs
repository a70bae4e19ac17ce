//! Delivery status notifications (RFC 3464 inside RFC 6522 multipart/report): the text of a
//! bounce, delay notice or success notice, built from plain facts with no I/O so that every
//! field can be checked by a test (and by a real MIME parser in the integration tests).

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use message::rfc5322_date;
use smtp_proto::EnhancedCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
    Delivered,
    /// Relayed to a next hop that does not speak DSN (RFC 3464 §2.3.3).
    Relayed,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct DsnRecipient {
    pub final_recipient: String,
    /// ORCPT as given at RCPT time, "rfc822;user@example.org".
    pub original_recipient: Option<String>,
    pub action: Action,
    /// Enhanced status, e.g. 5.1.1.
    pub status: EnhancedCode,
    pub remote_mta: Option<String>,
    /// The remote reply or our own reason, e.g. "550 5.1.1 no such user".
    pub diagnostic: Option<String>,
    pub last_attempt: u64,
}

#[derive(Debug, Clone)]
pub struct Dsn<'a> {
    pub reporting_mta: &'a str,
    pub postmaster: &'a str,
    /// The envelope sender of the original message: the DSN goes there.
    pub to: &'a str,
    pub envid: Option<&'a str>,
    pub arrival: u64,
    pub recipients: Vec<DsnRecipient>,
    /// What to return: the original's header section, or all of it (RET).
    pub returned: &'a [u8],
    pub returned_full: bool,
    pub now: u64,
    pub boundary: &'a str,
    pub message_id: &'a str,
}

/// Picks the enhanced status code out of a reply or reason text, else a default by class.
/// Only for a recipient's last error as the spool keeps it (a string, in spools of every
/// age); a fresh outcome carries its status (`RcptOutcome::status`).
pub fn status_of(text: &str, class: u8) -> EnhancedCode {
    text.split_whitespace()
        .take(3)
        .find_map(|w| {
            w.trim_end_matches([',', ';', ':'])
                .parse::<EnhancedCode>()
                .ok()
        })
        .unwrap_or(EnhancedCode::new(class, 0, 0))
}

fn date(secs: u64) -> String {
    rfc5322_date(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Keeps a header value on one line and within printable ASCII.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

impl Dsn<'_> {
    pub fn compose(&self) -> Vec<u8> {
        let all_failed = self.recipients.iter().all(|r| r.action == Action::Failed);
        let any_delayed = self.recipients.iter().any(|r| r.action == Action::Delayed);
        let subject = if all_failed {
            "Undelivered Mail Returned to Sender"
        } else if any_delayed {
            "Delayed Mail (still being retried)"
        } else if self
            .recipients
            .iter()
            .all(|r| matches!(r.action, Action::Delivered | Action::Relayed))
        {
            "Successful Mail Delivery Report"
        } else {
            "Mail Delivery Status Report"
        };
        let b = self.boundary;
        let mut m = String::new();
        let _ = write!(
            m,
            "From: Mail Delivery System <{pm}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nDate: {date}\r\n\
             Message-ID: <{mid}>\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{b}\"\r\n\r\n\
             This is a MIME-encapsulated message.\r\n\r\n",
            pm = self.postmaster,
            to = clean(self.to),
            date = date(self.now),
            mid = self.message_id,
        );
        // Part 1: for people.
        let _ = write!(
            m,
            "--{b}\r\nContent-Description: Notification\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\
             This is the mail system at host {}.\r\n\r\n",
            self.reporting_mta
        );
        if all_failed {
            m.push_str("I'm sorry to have to inform you that your message could not\r\nbe delivered to one or more recipients. It's attached below.\r\n\r\n");
        } else if any_delayed {
            m.push_str("Your message could not be delivered yet to one or more recipients.\r\nDelivery will be retried; you do not need to resend it.\r\n\r\n");
        } else {
            m.push_str("This is a report on the delivery of your message.\r\n\r\n");
        }
        for r in &self.recipients {
            let _ = write!(m, "<{}>: {}", clean(&r.final_recipient), r.action.as_str());
            if let Some(d) = &r.diagnostic {
                let _ = write!(m, ": {}", clean(d));
            }
            m.push_str("\r\n");
        }
        m.push_str("\r\n");
        // Part 2: for machines (RFC 3464 §2.2, §2.3).
        let _ = write!(
            m,
            "--{b}\r\nContent-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n\
             Reporting-MTA: dns; {}\r\n",
            self.reporting_mta
        );
        if let Some(e) = self.envid {
            let _ = write!(
                m,
                "Original-Envelope-Id: {}\r\n",
                smtp_proto::xtext_encode(e)
            );
        }
        let _ = write!(m, "Arrival-Date: {}\r\n", date(self.arrival));
        for r in &self.recipients {
            m.push_str("\r\n");
            if let Some(o) = &r.original_recipient {
                let (kind, addr) = o.split_once(';').unwrap_or(("rfc822", o));
                let _ = write!(
                    m,
                    "Original-Recipient: {kind};{}\r\n",
                    smtp_proto::xtext_encode(addr)
                );
            }
            let _ = write!(
                m,
                "Final-Recipient: rfc822; {}\r\nAction: {}\r\nStatus: {}\r\n",
                clean(&r.final_recipient),
                r.action.as_str(),
                r.status
            );
            if let Some(mta) = &r.remote_mta {
                let _ = write!(m, "Remote-MTA: dns; {}\r\n", clean(mta));
            }
            if let Some(d) = &r.diagnostic {
                let _ = write!(m, "Diagnostic-Code: smtp; {}\r\n", clean(d));
            }
            let _ = write!(m, "Last-Attempt-Date: {}\r\n", date(r.last_attempt));
        }
        m.push_str("\r\n");
        // Part 3: the original, or its headers (RET=HDRS and large messages).
        let ctype = if self.returned_full {
            "message/rfc822"
        } else {
            "text/rfc822-headers"
        };
        let _ = write!(
            m,
            "--{b}\r\nContent-Description: Undelivered Message\r\nContent-Type: {ctype}\r\n\r\n"
        );
        let mut out = m.into_bytes();
        out.extend_from_slice(self.returned);
        if !self.returned.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use message::header_section;

    fn sample(full: bool) -> Vec<u8> {
        Dsn {
            reporting_mta: "mx.example.org",
            postmaster: "postmaster@example.org",
            to: "sender@src.test",
            envid: Some("QQ+1"),
            arrival: 1_795_395_723,
            recipients: vec![
                DsnRecipient {
                    final_recipient: "bad@dst.test".into(),
                    original_recipient: Some("rfc822;Bad@Dst.Test".into()),
                    action: Action::Failed,
                    status: status_of("550 5.1.1 no such user", 5),
                    remote_mta: Some("sink.dst.test".into()),
                    diagnostic: Some("550 5.1.1 no such user".into()),
                    last_attempt: 1_795_395_800,
                },
                DsnRecipient {
                    final_recipient: "gone@dst.test".into(),
                    original_recipient: None,
                    action: Action::Failed,
                    status: status_of("host not found", 5),
                    remote_mta: None,
                    diagnostic: None,
                    last_attempt: 1_795_395_800,
                },
            ],
            returned: b"Subject: hi\r\nFrom: sender@src.test\r\n\r\nbody\r\n",
            returned_full: full,
            now: 1_795_395_900,
            boundary: "b1.S0001",
            message_id: "S0001.dsn@mx.example.org",
        }
        .compose()
    }

    #[test]
    fn structure_and_fields() {
        let t = String::from_utf8(sample(true)).unwrap();
        assert!(t.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(t.contains("Reporting-MTA: dns; mx.example.org\r\n"));
        assert!(t.contains("Original-Envelope-Id: QQ+2B1\r\n"));
        assert!(t.contains("Arrival-Date: Mon, 23 Nov 2026 01:02:03 +0000\r\n"));
        assert!(t.contains("Original-Recipient: rfc822;Bad@Dst.Test\r\nFinal-Recipient: rfc822; bad@dst.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"));
        assert!(t.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n"));
        assert!(t.contains(
            "Final-Recipient: rfc822; gone@dst.test\r\nAction: failed\r\nStatus: 5.0.0\r\n"
        ));
        assert!(t.contains("Content-Type: message/rfc822\r\n\r\nSubject: hi"));
        assert!(t.ends_with("--b1.S0001--\r\n"));
        assert!(!t.replace("\r\n", "").contains('\n'), "only CRLF line ends");
        let h = String::from_utf8(sample(false)).unwrap();
        assert!(h.contains("Content-Type: text/rfc822-headers"));
    }

    #[test]
    fn status_extraction() {
        let s = |text, class| status_of(text, class).to_string();
        assert_eq!(s("550 5.1.1 user unknown", 5), "5.1.1");
        assert_eq!(s("5.4.6 mail for x loops back to myself", 5), "5.4.6");
        assert_eq!(s("451 try later", 4), "4.0.0");
        assert_eq!(s("550 5.1.1: user unknown", 5), "5.1.1");
        assert_eq!(header_section(b"A: b\r\n\r\nbody"), b"A: b\r\n");
    }

    proptest::proptest! {
        #[test]
        fn status_is_always_a_status_code(text in "[ -~]{0,60}", class in proptest::sample::select(vec![2u8, 4, 5])) {
            let s = status_of(&text, class).to_string();
            let parts: Vec<&str> = s.split('.').collect();
            proptest::prop_assert_eq!(parts.len(), 3);
            proptest::prop_assert!(matches!(parts[0], "2" | "4" | "5"));
            proptest::prop_assert!(parts[1..].iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())));
        }
    }
}
