//! Trace fields and dates: the `Received:` header we prepend (RFC 5321 §4.4), RFC 5322
//! dates, and a streaming scan of the header section that counts earlier `Received:`
//! headers while content streams past, so mail loops are refused (`554 5.4.6`).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// What the `Received:` header says about how the message reached us.
pub struct Trace<'a> {
    pub helo: &'a str,
    pub client_ip: IpAddr,
    pub hostname: &'a str,
    /// "SMTP", "ESMTP", "ESMTPS" ... (RFC 3848 with-protocol types).
    pub protocol: &'a str,
    /// TLS version and cipher suite when the session was encrypted.
    pub tls: Option<(&'a str, &'a str)>,
    pub queue_id: &'a str,
    /// Named only for a single recipient: listing many would leak Bcc recipients.
    pub single_recipient: Option<&'a str>,
    pub when: SystemTime,
}

/// Builds the header with CRLF line ends, folded so no line passes 78 characters when possible.
pub fn received(t: &Trace<'_>) -> String {
    let ip = match t.client_ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => format!("IPv6:{v6}"),
        },
    };
    // The HELO name is client-supplied: keep only printable ASCII so it cannot inject headers.
    let helo: String = t
        .helo
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    let mut s = format!(
        "Received: from {helo} ([{ip}])\r\n\tby {} (postrider)",
        t.hostname
    );
    let _ = write!(s, " with {}", t.protocol);
    if let Some((version, cipher)) = t.tls {
        let _ = write!(s, "\r\n\t(version={version} cipher={cipher})");
    }
    let _ = write!(s, "\r\n\tid {}", t.queue_id);
    if let Some(rcpt) = t.single_recipient {
        let _ = write!(s, "\r\n\tfor <{rcpt}>");
    }
    let _ = write!(s, ";\r\n\t{}\r\n", rfc5322_date(t.when));
    s
}

/// RFC 5322 date-time in UTC, e.g. `Mon, 23 Nov 2026 01:02:03 +0000`.
pub fn rfc5322_date(when: SystemTime) -> String {
    let secs = when
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        WD[days.rem_euclid(7) as usize],
        d,
        MON[(m - 1) as usize],
        y,
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm: days since 1970-01-01 to (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Streaming scan of the header section: counts `Received:` fields and notes the fields a
/// submission may lack. Holds at most one partial line prefix, never the message.
#[derive(Debug, Default)]
pub struct HeaderScan {
    /// The first bytes of the current line (enough to recognise a field name).
    prefix: Vec<u8>,
    at_line_start: bool,
    started: bool,
    done: bool,
    pub received: usize,
    pub has_date: bool,
    pub has_message_id: bool,
    pub has_from: bool,
}

const PREFIX_MAX: usize = 32;

impl HeaderScan {
    pub fn new() -> Self {
        HeaderScan {
            at_line_start: true,
            ..Default::default()
        }
    }

    /// True once the blank line ending the header section has been seen.
    #[cfg(test)]
    pub fn finished(&self) -> bool {
        self.done
    }

    pub fn feed(&mut self, data: &[u8]) {
        if self.done {
            return;
        }
        self.started = true;
        for &b in data {
            if b == b'\n' {
                self.end_line();
                if self.done {
                    return;
                }
                continue;
            }
            if self.at_line_start {
                self.prefix.clear();
                self.at_line_start = false;
            }
            if self.prefix.len() < PREFIX_MAX {
                self.prefix.push(b);
            }
        }
    }

    fn end_line(&mut self) {
        let line = if self.at_line_start {
            &[][..]
        } else {
            &self.prefix[..]
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.done = true;
            return;
        }
        // RFC 5322 §4.5.3 (obs-optional): white space may come between name and colon.
        let name_is = |name: &[u8]| {
            line.len() > name.len()
                && line[..name.len()].eq_ignore_ascii_case(name)
                && line[name.len()..]
                    .iter()
                    .find(|&&b| b != b' ' && b != b'\t')
                    == Some(&b':')
        };
        if name_is(b"received") {
            self.received += 1;
        } else if name_is(b"date") {
            self.has_date = true;
        } else if name_is(b"message-id") {
            self.has_message_id = true;
        } else if name_is(b"from") {
            self.has_from = true;
        }
        self.at_line_start = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates_match_known_values() {
        let at = |s: u64| rfc5322_date(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(at(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(at(1_795_395_723), "Mon, 23 Nov 2026 01:02:03 +0000");
    }

    #[test]
    fn received_header_is_well_formed() {
        let h = received(&Trace {
            helo: "client.example\r\nX-Injected: yes",
            client_ip: "::ffff:127.0.0.1".parse().unwrap(),
            hostname: "mx.example.org",
            protocol: "ESMTPS",
            tls: Some(("TLSv1.3", "TLS13_AES_256_GCM_SHA384")),
            queue_id: "S0000000000000001FF",
            single_recipient: Some("a@example.org"),
            when: UNIX_EPOCH,
        });
        assert!(h.starts_with("Received: from client.exampleX-Injected:yes ([127.0.0.1])\r\n"));
        assert!(h.contains("id S0000000000000001FF"));
        assert!(h.contains("for <a@example.org>;"));
        assert!(h.ends_with("+0000\r\n"));
        for line in h.split("\r\n").filter(|l| !l.is_empty()) {
            assert!(line.len() <= 78, "{line}");
            assert!(!line.contains('\n') && !line.contains('\r'));
        }
    }

    #[test]
    fn scan_counts_received_in_headers_only() {
        let msg = b"Received: a\r\nreceived: b\r\n folded\r\nFrom: x\r\nMessage-ID: <1@x>\r\n\r\nReceived: body\r\n";
        for split in 0..msg.len() {
            let mut s = HeaderScan::new();
            s.feed(&msg[..split]);
            s.feed(&msg[split..]);
            assert_eq!(s.received, 2, "split at {split}");
            assert!(s.has_from && s.has_message_id && !s.has_date);
            assert!(s.finished());
        }
    }

    #[test]
    fn scan_ignores_lookalike_fields() {
        let mut s = HeaderScan::new();
        s.feed(b"Received-SPF: pass\r\nX-Received: y\r\nReceived:z\r\nReceivedx : y\r\n\r\n");
        assert_eq!(s.received, 1);
    }

    #[test]
    fn scan_counts_obsolete_received_forms() {
        let mut s = HeaderScan::new();
        s.feed(b"RECEIVED : a\r\nreceived\t: b\r\nReceived   \t  :c\r\n\r\n");
        assert_eq!(s.received, 3);
    }
}
