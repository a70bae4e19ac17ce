//! Hostile input for the session machine: however the client's bytes are cut into reads,
//! the replies are the same; random bytes never panic it and get only well-formed replies;
//! an endless command line is not buffered.

#[path = "support/harness.rs"]
mod harness;

use harness::{World, drive, machine, run_chunks, settings};
use proptest::prelude::*;

/// A session that touches every input mode: commands, pipelining, DATA with dot-stuffing,
/// BDAT chunks, a refused chunk, RSET, errors.
const SESSION: &str = "EHLO c.test\r\nMAIL FROM:<a@b.test> SIZE=20\r\nRCPT TO:<u@example.org>\r\n\
    RCPT TO:<u@victim.test>\r\nDATA\r\nSubject: s\r\n\r\n..x\r\n.\r\n\
    MAIL FROM:<>\r\nRCPT TO:<list@example.org>\r\nBDAT 5\r\nab\r\nFBDAT 3 LAST\r\ngh\n\
    MAIL FROM:<b@b.test>\r\nRCPT TO:<v@example.org>\r\nBDAT 4\r\na\nbcRSET\r\nFOO\r\n\
    BDAT 2 LAST\r\nxyHELO x\r\nNOOP\r\nQUIT\r\n";

fn whole() -> (String, Vec<String>) {
    let mut w = World::default();
    let r = run_chunks(settings(), &mut w, &[SESSION.as_bytes()]);
    (r.text(), w.actions)
}

/// Every line the server writes is `NNN-text` or `NNN text` with CRLF.
fn well_formed(out: &[u8]) -> bool {
    let text = String::from_utf8_lossy(out);
    text.ends_with("\r\n")
        && text.split_terminator("\r\n").all(|l| {
            let b = l.as_bytes();
            b.len() >= 4
                && b[..3].iter().all(u8::is_ascii_digit)
                && (b[3] == b' ' || b[3] == b'-')
                && !l.contains(['\r', '\n'])
        })
}

#[test]
fn the_session_reads_as_expected() {
    let (text, actions) = whole();
    assert!(
        text.ends_with("221 2.0.0 mx.example closing connection\r\n"),
        "{text}"
    );
    assert!(
        text.contains("550 5.6.11 Message contains bare <LF>"),
        "{text}"
    );
    assert_eq!(
        actions.iter().filter(|a| a.starts_with("commit")).count(),
        1
    );
}

#[test]
fn split_at_every_byte_boundary() {
    let (text, actions) = whole();
    let input = SESSION.as_bytes();
    for cut in 0..=input.len() {
        let mut w = World::default();
        let r = run_chunks(settings(), &mut w, &[&input[..cut], &input[cut..]]);
        assert_eq!(r.text(), text, "split at {cut}");
        assert_eq!(w.actions, actions, "split at {cut}");
    }
}

#[test]
fn an_endless_command_line_is_not_buffered() {
    let mut w = World::default();
    let mut m = machine(settings());
    let line = vec![b'A'; 4096];
    let mut chunks: Vec<&[u8]> = vec![&line; 100];
    chunks.push(b"\r\nNOOP\r\n");
    let r = drive(&mut m, &mut w, &chunks, None);
    assert!(w.max_unread < 512, "{}", w.max_unread);
    assert_eq!(
        r.text(),
        "220 mx.example ESMTP postrider\r\n500 5.5.6 Line too long\r\n250 2.0.0 Ok\r\n"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn any_cuts_give_the_same_replies(mut cuts in proptest::collection::vec(0..SESSION.len(), 0..12)) {
        let (text, actions) = whole();
        cuts.sort();
        let input = SESSION.as_bytes();
        let mut chunks = Vec::new();
        let mut at = 0;
        for c in cuts {
            chunks.push(&input[at..c]);
            at = c;
        }
        chunks.push(&input[at..]);
        let mut w = World::default();
        let r = run_chunks(settings(), &mut w, &chunks);
        prop_assert_eq!(r.text(), text);
        prop_assert_eq!(w.actions, actions);
    }

    #[test]
    fn random_bytes_never_panic(
        prefix in 0usize..4,
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
    ) {
        let start = [
            "",
            "EHLO c.test\r\n",
            "EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@example.org>\r\n",
            "EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@example.org>\r\nDATA\r\n",
        ][prefix];
        let mut all: Vec<&[u8]> = vec![start.as_bytes()];
        all.extend(chunks.iter().map(Vec::as_slice));
        let mut w = World::default();
        let r = run_chunks(settings(), &mut w, &all);
        prop_assert!(well_formed(&r.out), "{:?}", r.text());
    }

    #[test]
    fn random_commands_never_panic(
        words in proptest::collection::vec(
            prop::sample::select(vec![
                "EHLO c.test\r\n", "HELO c\r\n", "MAIL FROM:<a@b.test>\r\n", "MAIL FROM:<>\r\n",
                "RCPT TO:<u@example.org>\r\n", "RCPT TO:<list@example.org>\r\n",
                "RCPT TO:<x@victim.test>\r\n", "DATA\r\n", "BDAT 3\r\n", "BDAT 0 LAST\r\n",
                "BDAT 2 LAST\r\n", "RSET\r\n", "NOOP\r\n", "STARTTLS\r\n", ".\r\n", "..\r\n",
                "abc", "\r\n", "\n", "\r", "\0", "QUIT\r\n", "BDAT 99999999999999999999\r\n",
            ]),
            0..40,
        ),
        starttls in any::<bool>(),
        milters in any::<bool>(),
    ) {
        let input: String = words.concat();
        let mut set = settings();
        set.starttls = starttls;
        set.milters = milters;
        let mut w = World::default();
        let r = run_chunks(set, &mut w, &[input.as_bytes()]);
        prop_assert!(well_formed(&r.out), "{:?}", r.text());
    }
}
