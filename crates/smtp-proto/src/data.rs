//! DATA framing: the server's streaming decoder (end-of-data, dot-unstuffing, SMTP smuggling
//! defence) and the client's streaming dot-stuffer.
//!
//! Only CRLF "." CRLF ends the data (RFC 5321 §4.1.1.4). A bare LF, a bare CR or a NUL never
//! starts or ends a line here; they are recorded as a [`Violation`] so the server can refuse
//! the message after reading to the real end (CVE-2023-51764 and its relatives: a sender
//! cannot smuggle a second message past us, nor through us to a laxer next hop).

/// A protocol violation found inside the message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// LF not preceded by CR.
    BareLf,
    /// CR not followed by LF.
    BareCr,
    /// A NUL octet (not allowed in SMTP text).
    Nul,
    /// A line over 1000 octets including its CRLF (RFC 5321 §4.5.3.1.6).
    LineTooLong,
}

/// How the data ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DataEnd {
    pub bare_lf: bool,
    pub bare_cr: bool,
    pub nul: bool,
    pub line_too_long: bool,
}

impl DataEnd {
    /// The first violation by severity, if any.
    pub fn violation(&self) -> Option<Violation> {
        Violation::first(self.bare_lf, self.bare_cr, self.nul, self.line_too_long)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// After CRLF (or at the very start).
    LineStart,
    /// A "." at line start: a stuffing dot, or the start of the end marker.
    Dot,
    /// "." CR at line start: the end marker if LF follows.
    DotCr,
    /// Inside a line.
    Mid,
    /// Inside a line, after a CR.
    Cr,
    Done,
}

const MAX_LINE: usize = 1000;

/// Streaming DATA decoder with O(1) state between calls.
#[derive(Debug, Clone)]
pub struct DataDecoder {
    state: State,
    end: DataEnd,
    line_len: usize,
    size: u64,
    max_size: u64,
}

impl DataDecoder {
    /// `max_size`: content beyond it sets [`DataDecoder::exceeded`] (the data is still read).
    pub fn new(max_size: u64) -> Self {
        DataDecoder {
            state: State::LineStart,
            end: DataEnd::default(),
            line_len: 0,
            size: 0,
            max_size,
        }
    }

    /// Octets of content emitted so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn exceeded(&self) -> bool {
        self.size > self.max_size
    }

    fn emit(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        self.size += bytes.len() as u64;
        out.extend_from_slice(bytes);
    }

    fn count(&mut self, n: usize) {
        self.line_len += n;
        if self.line_len > MAX_LINE - 2 {
            self.end.line_too_long = true;
        }
    }

    /// Consumes from `buf` (removing what it used), appends content to `out`; returns the
    /// end when the terminating line was seen. Bytes after it stay in `buf` (pipelining).
    pub fn decode(&mut self, buf: &mut Vec<u8>, out: &mut Vec<u8>) -> Option<DataEnd> {
        let mut i = 0;
        let mut run_start = 0;
        let mut result = None;
        // Plain bytes in the middle of a line are copied in runs, not one at a time.
        macro_rules! flush_run {
            ($end:expr) => {
                if $end > run_start {
                    let n = $end - run_start;
                    self.size += n as u64;
                    out.extend_from_slice(&buf[run_start..$end]);
                }
            };
        }
        while i < buf.len() {
            let b = buf[i];
            match self.state {
                State::Mid => match b {
                    b'\r' => {
                        flush_run!(i);
                        self.state = State::Cr;
                        run_start = i + 1;
                    }
                    b'\n' => {
                        self.end.bare_lf = true;
                        self.count(1);
                    }
                    0 => {
                        self.end.nul = true;
                        self.count(1);
                    }
                    _ => {
                        // Plain octets up to the next CR, LF or NUL are counted in one step
                        // (they stay in the run copied to `out`): the bulk of every message.
                        let n =
                            memchr::memchr3(b'\r', b'\n', 0, &buf[i..]).unwrap_or(buf.len() - i);
                        self.count(n);
                        i += n;
                        continue;
                    }
                },
                State::Cr => {
                    if b == b'\n' {
                        self.emit(out, b"\r\n");
                        self.state = State::LineStart;
                        self.line_len = 0;
                        run_start = i + 1;
                    } else {
                        self.end.bare_cr = true;
                        self.emit(out, b"\r");
                        self.count(1);
                        self.state = State::Mid;
                        run_start = i;
                        continue; // look at this byte again, mid-line
                    }
                }
                State::LineStart => {
                    if b == b'.' {
                        self.state = State::Dot;
                        run_start = i + 1;
                    } else {
                        self.state = State::Mid;
                        run_start = i;
                        continue;
                    }
                }
                State::Dot => {
                    if b == b'\r' {
                        self.state = State::DotCr;
                        run_start = i + 1;
                    } else {
                        // A stuffing dot: dropped; the line goes on.
                        self.count(1);
                        self.state = State::Mid;
                        run_start = i;
                        continue;
                    }
                }
                State::DotCr => {
                    if b == b'\n' {
                        self.state = State::Done;
                        i += 1;
                        result = Some(self.end);
                        run_start = i;
                        break;
                    }
                    // ".\r" then something else: the dot was stuffing, the CR is bare.
                    self.end.bare_cr = true;
                    self.count(1);
                    self.emit(out, b"\r");
                    self.state = State::Mid;
                    run_start = i;
                    continue;
                }
                State::Done => break,
            }
            i += 1;
        }
        if self.state == State::Mid {
            flush_run!(i);
        }
        buf.drain(..i);
        result
    }
}

/// Streaming dot-stuffer for the client: stored content in, DATA wire form out.
///
/// The wire form is canonical by construction: every line ends with CRLF (a bare CR or LF
/// left in stored content becomes one, as Postfix's record-based queue does), and a "." at
/// the start of every line is doubled. So the DATA a strict next hop reads and the DATA a
/// next hop that takes bare CR or LF as a line end reads are the same, and neither can see
/// an end of data before ours. BINARYMIME content never comes here; it leaves by BDAT.
#[derive(Debug, Clone)]
pub struct DotStuffer {
    /// The last octets written were CRLF (or nothing was written yet).
    at_line_start: bool,
    /// A CR was read and not yet written: CRLF if LF follows, a bare CR made CRLF if not.
    pending_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl DotStuffer {
    pub fn new() -> Self {
        DotStuffer {
            at_line_start: true,
            pending_cr: false,
        }
    }

    /// Appends the wire form of `input` to `out`.
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 64 + 2);
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            if self.pending_cr {
                self.pending_cr = false;
                out.extend_from_slice(b"\r\n");
                self.at_line_start = true;
                if b == b'\n' {
                    i += 1;
                    continue;
                }
            }
            match b {
                b'\r' => {
                    self.pending_cr = true;
                    i += 1;
                }
                b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    self.at_line_start = true;
                    i += 1;
                }
                _ => {
                    if self.at_line_start && b == b'.' {
                        out.push(b'.');
                    }
                    self.at_line_start = false;
                    // The rest of the line is copied as one run.
                    let end =
                        memchr::memchr2(b'\r', b'\n', &input[i..]).map_or(input.len(), |p| i + p);
                    out.extend_from_slice(&input[i..end]);
                    i = end;
                }
            }
        }
    }

    /// Ends the data: a CRLF if the content did not end with one, then ".\r\n".
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.pending_cr || !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        *self = DotStuffer::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(wire: &[u8]) -> (Vec<u8>, Option<DataEnd>, Vec<u8>) {
        let mut d = DataDecoder::new(u64::MAX);
        let mut buf = wire.to_vec();
        let mut out = Vec::new();
        let end = d.decode(&mut buf, &mut out);
        (out, end, buf)
    }

    #[test]
    fn ends_only_at_crlf_dot_crlf() {
        let (out, end, rest) = decode_all(b"Subject: x\r\n\r\nbody\r\n..dot\r\n.\r\nQUIT\r\n");
        assert_eq!(out, b"Subject: x\r\n\r\nbody\r\n.dot\r\n");
        assert_eq!(end, Some(DataEnd::default()));
        assert_eq!(rest, b"QUIT\r\n", "pipelined command left for the server");
        let (out, end, _) = decode_all(b".\r\n");
        assert!(out.is_empty());
        assert!(end.is_some());
    }

    #[test]
    fn smuggling_variants_never_end_data() {
        let smuggled = b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\nspoofed\r\n";
        let variants: [&[u8]; 8] = [
            b"\n.\n",
            b"\n.\r\n",
            b"\r.\r",
            b"\r\n.\r",
            b"\r\n.\n",
            b"\r.\r\n",
            b"\r\n\x00.\r\n",
            b"\n.\r",
        ];
        for v in variants {
            let mut wire = b"Subject: test\r\n\r\nhello".to_vec();
            wire.extend_from_slice(v);
            wire.extend_from_slice(smuggled);
            wire.extend_from_slice(b".\r\n");
            let mut d = DataDecoder::new(u64::MAX);
            let mut buf = wire.clone();
            let mut out = Vec::new();
            let end = d
                .decode(&mut buf, &mut out)
                .unwrap_or_else(|| panic!("{v:?}: no end"));
            assert!(
                buf.is_empty(),
                "{v:?}: data ended early, {:?} left over",
                String::from_utf8_lossy(&buf)
            );
            assert!(end.violation().is_some(), "{v:?}: not flagged");
            assert!(
                out.windows(9).any(|w| w == b"MAIL FROM"),
                "{v:?}: smuggled text must stay inside the message"
            );
        }
    }

    #[test]
    fn long_lines_and_size() {
        let mut wire = vec![b'a'; 998];
        wire.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(decode_all(&wire).1, Some(DataEnd::default()));
        let mut wire = vec![b'a'; 999];
        wire.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(
            decode_all(&wire).1.unwrap().violation(),
            Some(Violation::LineTooLong)
        );
        let mut d = DataDecoder::new(10);
        let mut buf = b"0123456789abc\r\n.\r\n".to_vec();
        let mut out = Vec::new();
        assert!(d.decode(&mut buf, &mut out).is_some());
        assert!(d.exceeded());
    }

    #[test]
    fn stuffer_output() {
        let mut s = DotStuffer::new();
        let mut out = Vec::new();
        s.encode(b".start\r\nmid.dle\r\n.\r\n..two\r\nno end", &mut out);
        s.finish(&mut out);
        assert_eq!(
            out,
            b"..start\r\nmid.dle\r\n..\r\n...two\r\nno end\r\n.\r\n"
        );
        let mut out = Vec::new();
        s.finish(&mut out);
        assert_eq!(out, b".\r\n", "empty content is just the end marker");
    }

    #[test]
    fn stuffer_makes_bare_line_ends_crlf() {
        let mut s = DotStuffer::new();
        let mut out = Vec::new();
        s.encode(b"hello\r.\r\nMAIL FROM:<ceo@example.org>\n.\nx\r", &mut out);
        s.finish(&mut out);
        assert_eq!(
            out,
            b"hello\r\n..\r\nMAIL FROM:<ceo@example.org>\r\n..\r\nx\r\n.\r\n"
        );
    }

    fn wire_of(content: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut s = DotStuffer::new();
        let mut out = Vec::new();
        let mut prev = 0;
        for &c in cuts {
            let c = c.min(content.len()).max(prev);
            s.encode(&content[prev..c], &mut out);
            prev = c;
        }
        s.encode(&content[prev..], &mut out);
        s.finish(&mut out);
        out
    }

    /// Content of long plain runs (so the vectorised search takes whole blocks) between
    /// CRLF, NUL and line-start dots.
    fn long_runs() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            (
                0usize..1200,
                prop_oneof![
                    Just(&b"\r\n"[..]),
                    Just(&b"\r\n."[..]),
                    Just(&b"\0"[..]),
                    Just(&b"."[..])
                ],
            ),
            0..12,
        )
        .prop_map(|segs| {
            let mut v = Vec::new();
            for (n, sep) in segs {
                v.extend(std::iter::repeat_n(b'a', n));
                v.extend_from_slice(sep);
            }
            v.extend_from_slice(b"\r\n");
            v
        })
    }

    proptest! {
        #[test]
        fn long_runs_decode_and_flag_like_a_byte_by_byte_reading(content in long_runs(), cut in 0usize..20000) {
            let wire = wire_of(&content, &[cut]);
            let mut d = DataDecoder::new(u64::MAX);
            let (mut buf, mut out) = (wire[..cut.min(wire.len())].to_vec(), Vec::new());
            let first = d.decode(&mut buf, &mut out);
            prop_assert!(first.is_none() || cut >= wire.len());
            buf.extend_from_slice(&wire[cut.min(wire.len())..]);
            let end = first.or_else(|| d.decode(&mut buf, &mut out)).expect("ends");
            prop_assert_eq!(&out, &content);
            prop_assert_eq!(d.size(), content.len() as u64);
            // The wire's own flags, counted octet by octet (a stuffing dot counts).
            let lines: Vec<&[u8]> = wire.split(|&b| b == b'\n').collect();
            let long = lines.iter().any(|l| l.len() > 1000 - 1);
            prop_assert_eq!(end.line_too_long, long);
            prop_assert_eq!(end.nul, content.contains(&0));
            prop_assert!(!end.bare_cr && !end.bare_lf);
        }

        #[test]
        fn decode_of_stuff_is_identity(lines in proptest::collection::vec("[.a-z ]{0,20}", 0..10), cuts in proptest::collection::vec(0usize..200, 0..4)) {
            let content: Vec<u8> = lines.iter().flat_map(|l| format!("{l}\r\n").into_bytes()).collect();
            let mut sorted = cuts.clone();
            sorted.sort();
            let wire = wire_of(&content, &sorted);
            let (out, end, rest) = decode_all(&wire);
            prop_assert_eq!(end, Some(DataEnd::default()));
            prop_assert!(rest.is_empty());
            prop_assert_eq!(out, content);
        }

        #[test]
        fn stuffed_wire_is_canonical_for_any_content(content in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), Just(b'a')], 0..200),
                                                     cuts in proptest::collection::vec(0usize..200, 0..4)) {
            let mut sorted = cuts.clone();
            sorted.sort();
            let wire = wire_of(&content, &sorted);
            prop_assert_eq!(&wire, &wire_of(&content, &[]), "chunking changes nothing");
            // No bare CR or LF on the wire, so no reading of line ends differs; every line
            // that starts with "." but is not the end marker was stuffed.
            let n = wire.len();
            for i in 0..n {
                if wire[i] == b'\r' { prop_assert!(i + 1 < n && wire[i + 1] == b'\n'); }
                if wire[i] == b'\n' { prop_assert!(i > 0 && wire[i - 1] == b'\r'); }
            }
            let lines: Vec<&[u8]> = wire.split(|&b| b == b'\n').collect();
            let body = &lines[..lines.len() - 2];
            prop_assert_eq!(lines[lines.len() - 2], &b".\r"[..]);
            for l in body {
                prop_assert!(!l.starts_with(b".") || l.starts_with(b".."), "{:?}", l);
            }
            let (out, end, rest) = decode_all(&wire);
            prop_assert_eq!(end, Some(DataEnd::default()));
            prop_assert!(rest.is_empty());
            // Decoded, it is the content with bare line ends made CRLF.
            let canon = wire_of(&out, &[]);
            prop_assert_eq!(canon, wire);
        }

        #[test]
        fn any_chunking_gives_the_same_result(wire in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), Just(0u8), Just(b'a')], 0..200),
                                              cuts in proptest::collection::vec(0usize..200, 0..6)) {
            let whole = decode_all(&wire);
            let mut d = DataDecoder::new(u64::MAX);
            let mut sorted = cuts.clone();
            sorted.sort();
            let mut out = Vec::new();
            let mut buf = Vec::new();
            let mut prev = 0;
            let mut end = None;
            for c in sorted.into_iter().chain([wire.len()]) {
                let c = c.min(wire.len()).max(prev);
                buf.extend_from_slice(&wire[prev..c]);
                prev = c;
                if end.is_none() {
                    end = d.decode(&mut buf, &mut out);
                }
            }
            prop_assert_eq!(out, whole.0);
            prop_assert_eq!(end, whole.1);
            prop_assert_eq!(buf, whole.2);
        }
    }
}
