//! The content policy: what a message's content may hold, whichever way it arrived (DATA,
//! BDAT, pickup, `sendmail`). One scanner decides, so no entry path is laxer than another.
//!
//! Content that is not `BODY=BINARYMIME` is SMTP text (RFC 5321 §2.3.8, §4.5.3.1.6): lines
//! end only with CRLF, hold no NUL, and are at most 1000 octets with their CRLF. A bare CR or
//! LF is refused rather than repaired: a next hop that takes it as a line end would read a
//! different message, or a second, forged transaction (SMTP smuggling). BINARYMIME content is
//! opaque octets and only ever leaves by BDAT.

use crate::data::Violation;
use crate::reply::Reply;

/// Longest line in octets, CRLF excluded (1000 with it).
const MAX_LINE: usize = 998;

/// Streaming scanner of stored content (after DATA's dot-unstuffing, or BDAT chunks as
/// sent). Chunk boundaries never change its verdict; it holds O(1) state.
#[derive(Debug, Clone)]
pub struct ContentScan {
    binary: bool,
    /// The previous byte was a CR not yet known to start a CRLF.
    cr: bool,
    /// Octets of the current line so far, CR of a CRLF excluded.
    line_len: usize,
    bare_lf: bool,
    bare_cr: bool,
    nul: bool,
    long_line: bool,
}

impl ContentScan {
    /// `binarymime`: the transaction said `BODY=BINARYMIME`, so any octets are allowed.
    pub fn new(binarymime: bool) -> Self {
        ContentScan {
            binary: binarymime,
            cr: false,
            line_len: 0,
            bare_lf: false,
            bare_cr: false,
            nul: false,
            long_line: false,
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if self.binary {
            return;
        }
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if self.cr {
                self.cr = false;
                if b == b'\n' {
                    self.line_len = 0;
                    i += 1;
                    continue;
                }
                self.bare_cr = true;
                self.line_len += 1;
            }
            match b {
                b'\r' => {
                    self.cr = true;
                    i += 1;
                    continue;
                }
                b'\n' => {
                    self.bare_lf = true;
                    self.line_len = 0;
                    i += 1;
                    continue;
                }
                0 => {
                    self.nul = true;
                    self.line_len += 1;
                    i += 1;
                }
                _ => {
                    // Ordinary octets up to the next CR, LF or NUL count in one step.
                    let end = memchr::memchr3(b'\r', b'\n', 0, &bytes[i..])
                        .map_or(bytes.len(), |p| i + p);
                    self.line_len += end - i;
                    i = end;
                }
            }
            if self.line_len > MAX_LINE {
                self.long_line = true;
            }
        }
    }

    /// The first violation seen so far (a CR at the very end is not yet known to be bare).
    pub fn violation(&self) -> Option<Violation> {
        Violation::first(self.bare_lf, self.bare_cr, self.nul, self.long_line)
    }

    /// The verdict on the whole content: a trailing CR is bare, since nothing follows.
    pub fn finish(&mut self) -> Result<(), Violation> {
        if self.cr {
            self.cr = false;
            self.bare_cr = true;
        }
        self.violation().map_or(Ok(()), Err)
    }
}

/// The content policy on a whole message at once (for pickup and `sendmail`, which hold it
/// in a file): `Err` names what makes it unacceptable.
pub fn check_content(content: &[u8], binarymime: bool) -> Result<(), Violation> {
    let mut s = ContentScan::new(binarymime);
    s.feed(content);
    s.finish()
}

impl Violation {
    /// The one to report when several were seen: the smuggling forms first, in the order
    /// DATA and BDAT both answer them.
    pub(crate) fn first(bare_lf: bool, bare_cr: bool, nul: bool, long_line: bool) -> Option<Self> {
        if bare_lf {
            Some(Violation::BareLf)
        } else if bare_cr {
            Some(Violation::BareCr)
        } else if nul {
            Some(Violation::Nul)
        } else if long_line {
            Some(Violation::LineTooLong)
        } else {
            None
        }
    }

    /// What was found, for replies and logs.
    pub fn describe(self) -> &'static str {
        match self {
            Violation::BareLf => "bare <LF>",
            Violation::BareCr => "bare <CR>",
            Violation::Nul => "NUL octet",
            Violation::LineTooLong => "line longer than 1000 octets",
        }
    }

    /// The reply to the end of data (DATA and BDAT answer alike); nothing is queued.
    pub fn reply(self) -> Reply {
        match self {
            Violation::LineTooLong => Reply::new(
                552,
                "5.6.0".parse().ok(),
                "Message has a line longer than 1000 octets",
            ),
            v => Reply::new(
                550,
                "5.6.11".parse().ok(),
                &format!(
                    "Message contains {} (SMTP smuggling protection)",
                    v.describe()
                ),
            ),
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "message contains a {}", self.describe())
    }
}

impl std::error::Error for Violation {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{DataDecoder, DotStuffer};
    use proptest::prelude::*;

    /// The smuggling forms: each puts a line end a lax next hop would honour before a
    /// forged transaction.
    const SMUGGLING: [&[u8]; 8] = [
        b"hello\r.\r\nMAIL FROM:<ceo@example.org>\r\n",
        b"hello\n.\nMAIL FROM:<ceo@example.org>\r\n",
        b"hello\n.\r\nMAIL FROM:<ceo@example.org>\r\n",
        b"hello\r\n.\rMAIL FROM:<ceo@example.org>\r\n",
        b"hello\r\n.\nMAIL FROM:<ceo@example.org>\r\n",
        b"hello\r.\rMAIL FROM:<ceo@example.org>\r\n",
        b"hello\r\n\x00.\r\nMAIL FROM:<ceo@example.org>\r\n",
        b"hello\r",
    ];

    #[test]
    fn smuggling_forms_are_refused_unless_binary() {
        for c in SMUGGLING {
            let v = check_content(c, false).expect_err(&String::from_utf8_lossy(c));
            assert_eq!(v.reply().code(), 550, "{c:?}");
            assert!(v.reply().to_string().contains(" 5.6.11 "), "{c:?}");
            assert_eq!(
                check_content(c, true),
                Ok(()),
                "BINARYMIME takes any octets"
            );
        }
        assert_eq!(check_content(b"a\r\n\r\n.b\r\nlast", false), Ok(()));
        assert_eq!(check_content(b"", false), Ok(()));
    }

    #[test]
    fn line_limit_is_1000_with_crlf() {
        let mut ok = vec![b'a'; 998];
        ok.extend_from_slice(b"\r\nnext\r\n");
        assert_eq!(check_content(&ok, false), Ok(()));
        let mut long = vec![b'a'; 999];
        long.extend_from_slice(b"\r\n");
        let v = check_content(&long, false).unwrap_err();
        assert_eq!(v, Violation::LineTooLong);
        assert_eq!(v.reply().code(), 552);
        assert_eq!(check_content(&vec![b'x'; 900_000], false), Err(v));
    }

    /// The answer DATA gives for the same content, through its own decoder.
    fn via_data(content: &[u8]) -> Result<(), Violation> {
        let mut wire = Vec::new();
        let mut st = DotStuffer::new();
        // Stuff by hand so bare CR/LF reach the decoder unchanged.
        let mut at_start = true;
        for &b in content {
            if at_start && b == b'.' {
                wire.push(b'.');
            }
            wire.push(b);
            at_start = b == b'\n';
        }
        if !content.ends_with(b"\r\n") && !content.is_empty() {
            wire.extend_from_slice(b"\r\n");
        }
        st.finish(&mut wire);
        let mut d = DataDecoder::new(u64::MAX);
        let mut out = Vec::new();
        let end = d.decode(&mut wire, &mut out);
        let mut s = ContentScan::new(false);
        s.feed(&out);
        end.map(|_| ())
            .ok_or(Violation::BareCr)
            .and_then(|_| s.finish())
    }

    /// The policy read octet by octet, as its definition says.
    fn byte_by_byte(c: &[u8]) -> Result<(), Violation> {
        let (mut lf, mut cr, mut nul, mut long, mut len) = (false, false, false, false, 0);
        for i in 0..c.len() {
            match c[i] {
                b'\r' if c.get(i + 1) == Some(&b'\n') => continue,
                b'\n' => {
                    lf |= i == 0 || c[i - 1] != b'\r';
                    len = 0;
                    continue;
                }
                b'\r' => cr = true,
                0 => nul = true,
                _ => {}
            }
            len += 1;
            long |= len > MAX_LINE;
        }
        [
            (lf, Violation::BareLf),
            (cr, Violation::BareCr),
            (nul, Violation::Nul),
            (long, Violation::LineTooLong),
        ]
        .into_iter()
        .find_map(|(f, v)| f.then_some(v))
        .map_or(Ok(()), Err)
    }

    proptest! {
        #[test]
        fn long_runs_get_the_byte_by_byte_verdict(
            segs in proptest::collection::vec((0usize..1100, prop_oneof![6 => Just(&b"\r\n"[..]), 1 => Just(&b"\r"[..]), 1 => Just(&b"\n"[..]), 1 => Just(&b"\0"[..])]), 0..8),
            cut in 0usize..9000,
        ) {
            // Long plain runs make the vectorised search take whole blocks.
            let mut content = Vec::new();
            for (n, b) in segs {
                content.extend(std::iter::repeat_n(b'a', n));
                content.extend_from_slice(b);
            }
            let mut s = ContentScan::new(false);
            let cut = cut.min(content.len());
            s.feed(&content[..cut]);
            s.feed(&content[cut..]);
            prop_assert_eq!(s.finish(), byte_by_byte(&content));
        }

        #[test]
        fn chunking_never_changes_the_verdict(
            content in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), Just(0u8), Just(b'a')], 0..300),
            cuts in proptest::collection::vec(0usize..300, 0..6),
        ) {
            let whole = check_content(&content, false);
            let mut s = ContentScan::new(false);
            let mut cuts = cuts;
            cuts.sort();
            let mut prev = 0;
            for c in cuts.into_iter().chain([content.len()]) {
                let c = c.min(content.len()).max(prev);
                s.feed(&content[prev..c]);
                prev = c;
            }
            prop_assert_eq!(s.finish(), whole);
        }

        #[test]
        fn clean_is_exactly_crlf_lines_without_nul(content in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(0u8), Just(b'a')], 0..60)) {
            let n = content.len();
            let clean = !content.contains(&0)
                && (0..n).all(|i| match content[i] {
                    b'\r' => i + 1 < n && content[i + 1] == b'\n',
                    b'\n' => i > 0 && content[i - 1] == b'\r',
                    _ => true,
                });
            prop_assert_eq!(check_content(&content, false).is_ok(), clean);
        }

        #[test]
        fn data_and_bdat_agree_on_bare_octets(content in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), Just(0u8), Just(b'a')], 1..80)) {
            // Content as BDAT would store it, and as DATA would after unstuffing: the
            // policy refuses both or neither.
            prop_assert_eq!(check_content(&content, false).is_ok(), via_data(&content).is_ok());
        }
    }
}
