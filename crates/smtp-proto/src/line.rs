//! Command-line framing for the server (RFC 5321 §2.3.8, §4.5.3.1.4): takes one line at a
//! time out of the caller's input buffer, leaving pipelined commands and DATA bytes in place.

/// One step of framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete command line, without its line end.
    Line(Vec<u8>),
    /// A line longer than the limit ended; it was discarded (`500 5.5.6`).
    TooLong,
    /// No complete line yet: read more.
    Incomplete,
}

/// Frames command lines with a length limit. CRLF ends a line; a bare LF does too (what
/// Postfix accepts from clients); a bare CR stays in the line and the parser refuses it.
#[derive(Debug, Clone)]
pub struct CommandFramer {
    limit: usize,
    /// Inside an over-long line whose end has not arrived yet.
    discarding: bool,
}

impl CommandFramer {
    /// `limit` counts the line end too: 512 for RFC 5321 commands.
    pub fn new(limit: usize) -> Self {
        CommandFramer {
            limit,
            discarding: false,
        }
    }

    /// Takes the next line out of `buf`, removing what it consumed.
    pub fn next(&mut self, buf: &mut Vec<u8>) -> Frame {
        match buf.iter().position(|&b| b == b'\n') {
            Some(nl) => {
                let mut line: Vec<u8> = buf.drain(..=nl).collect();
                if std::mem::take(&mut self.discarding) || line.len() > self.limit {
                    return Frame::TooLong;
                }
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                Frame::Line(line)
            }
            None => {
                if buf.len() >= self.limit {
                    // Keep no more than the limit: a client cannot make us buffer its line.
                    buf.clear();
                    self.discarding = true;
                }
                Frame::Incomplete
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames_pipelined_lines() {
        let mut f = CommandFramer::new(512);
        let mut buf = b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\nDATA\r\npartial".to_vec();
        assert_eq!(f.next(&mut buf), Frame::Line(b"MAIL FROM:<a@b>".to_vec()));
        assert_eq!(f.next(&mut buf), Frame::Line(b"RCPT TO:<c@d>".to_vec()));
        assert_eq!(f.next(&mut buf), Frame::Line(b"DATA".to_vec()));
        assert_eq!(f.next(&mut buf), Frame::Incomplete);
        assert_eq!(buf, b"partial");
    }

    #[test]
    fn over_long_lines_are_reported_once_and_skipped() {
        let mut f = CommandFramer::new(512);
        let mut buf = vec![b'A'; 600];
        assert_eq!(f.next(&mut buf), Frame::Incomplete);
        assert!(buf.is_empty(), "nothing kept of an over-long line");
        buf.extend_from_slice(&[b'A'; 100]);
        assert_eq!(f.next(&mut buf), Frame::Incomplete);
        buf.extend_from_slice(b"AAA\r\nNOOP\r\n");
        assert_eq!(f.next(&mut buf), Frame::TooLong);
        assert_eq!(f.next(&mut buf), Frame::Line(b"NOOP".to_vec()));
        // Exactly at the limit (510 + CRLF = 512) is fine; one more is not.
        let mut buf = [vec![b'B'; 510], b"\r\n".to_vec()].concat();
        assert!(matches!(f.next(&mut buf), Frame::Line(l) if l.len() == 510));
        let mut buf = [vec![b'B'; 511], b"\r\n".to_vec()].concat();
        assert_eq!(f.next(&mut buf), Frame::TooLong);
    }

    proptest! {
        #[test]
        fn split_invariance(lines in proptest::collection::vec("[ -~]{0,60}", 1..8), cut in 0usize..400) {
            let wire: Vec<u8> = lines.iter().flat_map(|l| format!("{l}\r\n").into_bytes()).collect();
            let cut = cut.min(wire.len());
            let mut f = CommandFramer::new(512);
            let mut buf = wire[..cut].to_vec();
            let mut got = Vec::new();
            loop {
                match f.next(&mut buf) {
                    Frame::Line(l) => got.push(String::from_utf8(l).unwrap()),
                    Frame::TooLong => prop_assert!(false),
                    Frame::Incomplete => break,
                }
            }
            buf.extend_from_slice(&wire[cut..]);
            while let Frame::Line(l) = f.next(&mut buf) {
                got.push(String::from_utf8(l).unwrap());
            }
            prop_assert_eq!(got, lines);
        }
    }
}
