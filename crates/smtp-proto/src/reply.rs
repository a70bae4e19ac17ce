//! SMTP replies (RFC 5321 §4.2) with RFC 3463 enhanced status codes: formatting for the
//! server, a tolerant incremental parser for the client.

use std::fmt;
use std::str::FromStr;

/// `class.subject.detail`, e.g. `5.1.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl EnhancedCode {
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        EnhancedCode {
            class,
            subject,
            detail,
        }
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

impl FromStr for EnhancedCode {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let mut it = s.split('.');
        let (Some(c), Some(sub), Some(d), None) = (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(());
        };
        let digits = |x: &str, max: usize| {
            !x.is_empty() && x.len() <= max && x.bytes().all(|b| b.is_ascii_digit())
        };
        if !(digits(c, 1) && digits(sub, 3) && digits(d, 3)) {
            return Err(());
        }
        let class: u8 = c.parse().map_err(|_| ())?;
        if !matches!(class, 2 | 4 | 5) {
            return Err(());
        }
        Ok(EnhancedCode {
            class,
            subject: sub.parse().map_err(|_| ())?,
            detail: d.parse().map_err(|_| ())?,
        })
    }
}

/// One reply: a code, an optional enhanced code, one or more text lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    enhanced: Option<EnhancedCode>,
    lines: Vec<String>,
}

impl Reply {
    /// A single-line reply. Text containing CR or LF is split into lines, never sent raw.
    pub fn new(code: u16, enhanced: Option<EnhancedCode>, text: &str) -> Self {
        let lines = text
            .split(['\r', '\n'])
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect::<Vec<_>>();
        Reply {
            code,
            enhanced,
            lines: if lines.is_empty() {
                vec![String::new()]
            } else {
                lines
            },
        }
    }

    /// A multi-line reply without enhanced codes (EHLO).
    pub fn multi(code: u16, lines: Vec<String>) -> Self {
        Reply {
            code,
            enhanced: None,
            lines: if lines.is_empty() {
                vec![String::new()]
            } else {
                lines
            },
        }
    }

    pub fn code(&self) -> u16 {
        self.code
    }

    pub fn enhanced(&self) -> Option<EnhancedCode> {
        self.enhanced
    }

    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// The text of all lines joined by spaces (for logs and DSN diagnostics).
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// Writes the wire form: `250-first`, ..., `250 last`, each with CRLF.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let n = self.lines.len();
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i + 1 == n { ' ' } else { '-' };
            out.extend_from_slice(format!("{:03}{sep}", self.code).as_bytes());
            if let Some(e) = self.enhanced {
                out.extend_from_slice(format!("{e} ").as_bytes());
            }
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v);
        v
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = self.enhanced {
            write!(f, " {e}")?;
        }
        write!(f, " {}", self.text())
    }
}

/// Why the client could not make sense of a server's reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// A line did not start with a three-digit code.
    #[error("malformed reply line: {0:?}")]
    Malformed(String),
    /// A continuation line carried a different code than the first.
    #[error("reply code changed inside a multi-line reply ({0} then {1})")]
    CodeChanged(u16, u16),
    /// A line or a reply was larger than any sane server sends.
    #[error("reply too long")]
    TooLong,
}

const MAX_LINE: usize = 4096;
const MAX_LINES: usize = 256;

/// Incremental reply parser: push bytes as they arrive, pull complete replies.
/// Tolerates LF-only line ends, missing enhanced codes and a bare `250` with no text.
#[derive(Debug, Default)]
pub struct ReplyParser {
    buf: Vec<u8>,
    partial: Option<(u16, Vec<String>)>,
}

impl ReplyParser {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// True when bytes are buffered that do not yet form a complete reply.
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty() || self.partial.is_some()
    }

    /// The next complete reply, if the buffer holds one.
    pub fn next_reply(&mut self) -> Option<Result<Reply, ReplyError>> {
        loop {
            let Some(nl) = self.buf.iter().position(|&b| b == b'\n') else {
                if self.buf.len() > MAX_LINE {
                    self.buf.clear();
                    self.partial = None;
                    return Some(Err(ReplyError::TooLong));
                }
                return None;
            };
            let mut line: Vec<u8> = self.buf.drain(..=nl).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.len() > MAX_LINE {
                self.partial = None;
                return Some(Err(ReplyError::TooLong));
            }
            let text = String::from_utf8_lossy(&line).into_owned();
            let b = text.as_bytes();
            if b.len() < 3
                || !b[..3].iter().all(u8::is_ascii_digit)
                || !(b'2'..=b'5').contains(&b[0])
            {
                self.partial = None;
                return Some(Err(ReplyError::Malformed(text)));
            }
            let code: u16 = text[..3].parse().unwrap_or(0);
            let (last, rest) = match b.get(3) {
                None => (true, ""),
                Some(b' ') => (true, &text[4..]),
                Some(b'-') => (false, &text[4..]),
                Some(_) => {
                    self.partial = None;
                    return Some(Err(ReplyError::Malformed(text)));
                }
            };
            let (first_code, mut lines) = self.partial.take().unwrap_or((code, Vec::new()));
            if first_code != code {
                return Some(Err(ReplyError::CodeChanged(first_code, code)));
            }
            lines.push(rest.to_owned());
            if lines.len() > MAX_LINES {
                return Some(Err(ReplyError::TooLong));
            }
            if !last {
                self.partial = Some((code, lines));
                continue;
            }
            return Some(Ok(build(code, lines)));
        }
    }
}

/// Splits an enhanced code off the text when every line carries the same one.
fn build(code: u16, lines: Vec<String>) -> Reply {
    let class = (code / 100) as u8;
    let first = lines
        .first()
        .and_then(|l| l.split(' ').next())
        .and_then(|w| w.parse::<EnhancedCode>().ok())
        .filter(|e| e.class == class);
    if let Some(e) = first {
        let prefix = e.to_string();
        if lines
            .iter()
            .all(|l| l.split(' ').next() == Some(prefix.as_str()))
        {
            let lines = lines
                .into_iter()
                .map(|l| l[prefix.len()..].trim_start_matches(' ').to_owned())
                .collect();
            return Reply {
                code,
                enhanced: Some(e),
                lines,
            };
        }
    }
    Reply {
        code,
        enhanced: None,
        lines,
    }
}

/// A fixed reply, written once where it is named: a reply whose code, status and text never vary. An empty `status` sends none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Canned {
    pub code: u16,
    pub status: &'static str,
    pub text: &'static str,
}

impl Canned {
    pub fn reply(&self) -> Reply {
        Reply::new(self.code, self.status.parse().ok(), self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(input: &[u8]) -> Vec<Result<Reply, ReplyError>> {
        let mut p = ReplyParser::new();
        p.push(input);
        std::iter::from_fn(|| p.next_reply()).collect()
    }

    #[test]
    fn formats_single_and_multi_line() {
        let r = Reply::new(550, Some(EnhancedCode::new(5, 1, 1)), "no such user");
        assert_eq!(r.to_bytes(), b"550 5.1.1 no such user\r\n");
        let r = Reply::multi(
            250,
            vec!["mx".into(), "PIPELINING".into(), "SIZE 10".into()],
        );
        assert_eq!(r.to_bytes(), b"250-mx\r\n250-PIPELINING\r\n250 SIZE 10\r\n");
        let r = Reply::new(250, None, "a\r\nb");
        assert_eq!(
            r.to_bytes(),
            b"250-a\r\n250 b\r\n",
            "CR/LF in text never goes raw"
        );
    }

    #[test]
    fn parses_what_real_servers_send() {
        let got = parse_all(b"220 mx ESMTP\r\n250-mx\n250-PIPELINING\r\n250 8BITMIME\r\n250\r\n421 4.7.0 bye\r\n550 5.1.1\r\n");
        let got: Vec<Reply> = got.into_iter().map(Result::unwrap).collect();
        assert_eq!(got[0].code(), 220);
        assert_eq!(got[1].lines(), ["mx", "PIPELINING", "8BITMIME"]);
        assert_eq!(got[2].code(), 250);
        assert_eq!(got[3].enhanced(), Some(EnhancedCode::new(4, 7, 0)));
        assert_eq!(got[3].text(), "bye");
        assert_eq!(got[4].enhanced(), Some(EnhancedCode::new(5, 1, 1)));
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert!(matches!(
            parse_all(b"hello\r\n")[0],
            Err(ReplyError::Malformed(_))
        ));
        assert!(matches!(
            parse_all(b"250-a\r\n550 b\r\n")[0],
            Err(ReplyError::CodeChanged(250, 550))
        ));
        assert!(matches!(
            parse_all(b"2500 x\r\n")[0],
            Err(ReplyError::Malformed(_))
        ));
        let long = vec![b'2'; MAX_LINE + 10];
        assert!(matches!(parse_all(&long)[0], Err(ReplyError::TooLong)));
        assert!(
            matches!(parse_all(b"250 4.1.1 mismatched class\r\n")[0], Ok(ref r) if r.enhanced().is_none())
        );
    }

    #[test]
    fn partial_input_waits() {
        let mut p = ReplyParser::new();
        p.push(b"250-a\r\n250 ");
        assert!(p.next_reply().is_none());
        p.push(b"b\r\n");
        assert_eq!(p.next_reply().unwrap().unwrap().lines(), ["a", "b"]);
    }

    fn arb_reply() -> impl Strategy<Value = Reply> {
        (
            prop_oneof![Just(2u16), Just(4), Just(5)],
            0u16..100,
            proptest::option::of((0u16..8, 0u16..30)),
            proptest::collection::vec("[ -~]{0,40}", 1..5),
        )
            .prop_map(|(class, rest, enh, lines)| {
                let code = class * 100 + rest;
                let enhanced = enh.map(|(s, d)| EnhancedCode::new(class as u8, s, d));
                // Text that itself starts with something code-like would be ambiguous.
                let lines = lines
                    .into_iter()
                    .map(|l| format!("x{}", l.trim_end()))
                    .collect();
                Reply {
                    code,
                    enhanced,
                    lines,
                }
            })
    }

    proptest! {
        #[test]
        fn reply_round_trip(r in arb_reply()) {
            let got = parse_all(&r.to_bytes());
            prop_assert_eq!(got.len(), 1);
            prop_assert_eq!(got[0].as_ref().unwrap(), &r);
        }

        #[test]
        fn enhanced_code_round_trip(c in prop_oneof![Just(2u8), Just(4), Just(5)], s in 0u16..1000, d in 0u16..1000) {
            let e = EnhancedCode::new(c, s, d);
            prop_assert_eq!(e.to_string().parse::<EnhancedCode>(), Ok(e));
        }

        #[test]
        fn parser_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_all(&data);
        }
    }
}
