//! Protocol and data safety at the SMTP server, with exact replies over raw sockets: one
//! content policy for DATA and BDAT (smuggling forms, NUL, long lines), BDAT's temporary
//! answer to a full disk, BDAT only after EHLO, ENVID, obsolete `Received :` hops, the
//! recipient cap (65,535 per message, aliases included), milter DISCARD at MAIL and RCPT,
//! byte-exact milter header edits, and BINARYMIME never leaving over DATA.

mod common;

use std::time::Duration;

use common::proto::{Tmpfs, fill, read_lines};
use common::*;

const NO_DELIVERY: &str = "[delivery]\nenabled = false\n";

fn session(port: u16) -> Raw {
    let mut c = Raw::connect(port);
    c.replies(1);
    assert!(c.cmd("EHLO client.src.test").starts_with("250"));
    c
}

fn envelope(c: &mut Raw, mail: &str) {
    assert!(c.cmd(mail).starts_with("250"), "{mail}");
    assert!(c.cmd("RCPT TO:<b@dst.test>").starts_with("250"));
}

/// One message by BDAT in a single LAST chunk; the reply to it.
fn bdat(c: &mut Raw, mail: &str, content: &[u8]) -> String {
    envelope(c, mail);
    let mut wire = format!("BDAT {} LAST\r\n", content.len()).into_bytes();
    wire.extend_from_slice(content);
    c.send(&wire);
    let r = c.replies(1);
    c.cmd("RSET");
    r
}

/// The same content by DATA, dot-stuffed after every LF as a client would; the reply.
fn data(c: &mut Raw, content: &[u8]) -> String {
    envelope(c, "MAIL FROM:<a@src.test>");
    assert!(c.cmd("DATA").starts_with("354"));
    let mut wire = Vec::new();
    let mut at_start = true;
    for &b in content {
        if at_start && b == b'.' {
            wire.push(b'.');
        }
        wire.push(b);
        at_start = b == b'\n';
    }
    wire.extend_from_slice(b"\r\n.\r\n");
    c.send(&wire);
    let r = c.replies(1);
    c.cmd("RSET");
    r
}

fn first_line(r: &str) -> &str {
    r.lines().next().unwrap_or("")
}

#[test]
fn bdat_content_gets_the_answers_data_gives() {
    let d = Daemon::start(NO_DELIVERY);
    let mut c = session(d.port);
    let forged = "MAIL FROM:<ceo@example.org>\r\nRCPT TO:<victim@dst.test>\r\nDATA\r\nforged\r\n";
    let mut cases: Vec<Vec<u8>> = [
        "hello\r.\r\n",
        "hello\n.\n",
        "hello\n.\r\n",
        "hello\r\n.\r",
        "hello\r.\r",
    ]
    .iter()
    .map(|v| format!("Subject: s\r\n\r\n{v}{forged}").into_bytes())
    .collect();
    cases.push(b"Subject: s\r\n\r\nnul \x00 here\r\n".to_vec());
    let mut long = b"Subject: s\r\n\r\n".to_vec();
    long.extend(std::iter::repeat_n(b'x', 900_000));
    long.extend_from_slice(b"\r\n");
    cases.push(long);
    for content in &cases {
        let by_bdat = bdat(&mut c, "MAIL FROM:<a@src.test>", content);
        let by_data = data(&mut c, content);
        let what = String::from_utf8_lossy(&content[..content.len().min(40)]).into_owned();
        assert_eq!(first_line(&by_bdat), first_line(&by_data), "{what:?}");
        assert!(
            by_bdat.starts_with("550 5.6.11") || by_bdat.starts_with("552 5.6.0"),
            "{what:?}: {by_bdat}"
        );
    }
    // The forged transaction was never seen as commands, and nothing was queued.
    assert!(c.cmd("NOOP").starts_with("250"));
    assert_eq!(d.queued(), 0, "{}", d.log());
    // A CRLF split across chunks is a line end, not a bare CR; BINARYMIME takes any octets.
    envelope(&mut c, "MAIL FROM:<a@src.test>");
    c.send(b"BDAT 17\r\nSubject: s\r\n\r\nab\r");
    assert!(c.replies(1).starts_with("250"));
    c.send(b"BDAT 3 LAST\r\n\ncd");
    assert!(c.replies(1).starts_with("250 2.0.0 Ok: queued"));
    let r = bdat(
        &mut c,
        "MAIL FROM:<a@src.test> BODY=BINARYMIME",
        b"Subject: s\r\n\r\nhello\r.\r\n\x00bin",
    );
    assert!(r.starts_with("250 2.0.0 Ok: queued"), "{r}");
    assert_eq!(d.queued(), 2);
}

#[test]
fn bdat_after_helo_and_empty_envid_are_refused() {
    let d = Daemon::start(NO_DELIVERY);
    let mut c = Raw::connect(d.port);
    c.replies(1);
    assert!(c.cmd("HELO client.src.test").starts_with("250"));
    envelope(&mut c, "MAIL FROM:<a@src.test>");
    c.send(b"BDAT 12 LAST\r\nSubject: x\r\n");
    let r = c.replies(1);
    assert!(r.starts_with("503 5.5.1"), "{r}");
    // The chunk was read as data, not as commands.
    assert!(c.cmd("NOOP").starts_with("250"));
    let mut c = session(d.port);
    let r = c.cmd("MAIL FROM:<a@src.test> ENVID=");
    assert!(r.starts_with("501 5.5.4"), "{r}");
    assert_eq!(d.queued(), 0);
}

#[test]
fn received_with_space_before_the_colon_is_a_hop() {
    let d = Daemon::start(&format!("[smtp]\nmax_hops = 2\n{NO_DELIVERY}"));
    let mut c = session(d.port);
    let r = data(
        &mut c,
        b"RECEIVED : from a\r\nreceived\t: from b\r\nSubject: loop\r\n\r\nbody",
    );
    assert!(r.starts_with("554 5.4.6"), "{r}");
}

#[test]
fn bdat_on_a_full_disk_is_a_temporary_failure() {
    let fs = Tmpfs::mount("16m");
    let spool = fs.dir.path().join("spool");
    let d = Daemon::start(&format!(
        "spool = \"{}\"\n{NO_DELIVERY}[smtp]\nmin_free_space = \"0\"\nmax_message_size = \"64MB\"\n",
        spool.display()
    ));
    fill(&fs.dir.path().join("filler"), 300_000);
    let mut c = session(d.port);
    envelope(&mut c, "MAIL FROM:<a@src.test>");
    // Past the in-memory limit, so the content streams into a file that cannot grow.
    let mut content = b"Subject: big\r\n\r\n".to_vec();
    for _ in 0..40_000 {
        content.extend_from_slice(b"0123456789012345678901234567890123456789012345678\r\n");
    }
    let mut wire = format!("BDAT {} LAST\r\n", content.len()).into_bytes();
    wire.extend_from_slice(&content);
    c.send(&wire);
    let r = c.replies(1);
    assert!(r.starts_with("452 4.3.1"), "{r}");
    assert_eq!(d.queued(), 0);
}

#[test]
fn sixty_five_thousand_recipients_at_most() {
    let d = Daemon::start(&format!("[smtp]\nmax_recipients = 65535\n{NO_DELIVERY}"));
    let mut c = session(d.port);
    assert!(c.cmd("MAIL FROM:<a@src.test>").starts_with("250"));
    let mut batch = String::new();
    for i in 0..65_540 {
        batch.push_str(&format!("RCPT TO:<r{i}@dst.test>\r\n"));
    }
    c.send(batch.as_bytes());
    let replies = read_lines(&mut c, 65_540);
    assert!(replies[..65_535].iter().all(|r| r.starts_with("250 2.1.5")));
    for r in &replies[65_535..] {
        assert!(r.starts_with("452 4.5.3"), "{r}");
    }
    assert!(c.cmd("DATA").starts_with("354"));
    let r = c.cmd("Subject: many\r\n\r\nx\r\n.");
    assert!(r.starts_with("250 2.0.0 Ok: queued"), "{r}");
    let q = d.queue_json();
    let n = q[0]["recipients"].as_array().map(Vec::len);
    assert_eq!(n, Some(65_535), "{}", &q.to_string()[..200]);
}

#[test]
fn an_alias_counts_as_what_it_expands_to() {
    let dir = tempfile::tempdir().unwrap();
    let aliases = dir.path().join("aliases");
    std::fs::write(&aliases, "team: a, b, c\n").unwrap();
    let d = Daemon::start(&format!(
        "[local]\ndomains = [\"lists.test\"]\nlmtp = \"127.0.0.1:9\"\naliases = \"{}\"\nusers = [\"a\", \"b\", \"c\", \"d\"]\n{NO_DELIVERY}[smtp]\nmax_recipients = 2\n",
        aliases.display()
    ));
    let mut c = session(d.port);
    assert!(c.cmd("MAIL FROM:<s@src.test>").starts_with("250"));
    let r = c.cmd("RCPT TO:<team@lists.test>");
    assert!(r.starts_with("452 4.5.3"), "{r}");
    assert!(c.cmd("RCPT TO:<d@lists.test>").starts_with("250"));
}

/// One transaction by DATA with `content` sent as it is (already CRLF and dot-safe).
fn send_raw(port: u16, from: &str, rcpts: &[&str], content: &[u8]) -> String {
    let mut c = session(port);
    assert!(c.cmd(&format!("MAIL FROM:<{from}>")).starts_with("250"));
    for r in rcpts {
        assert!(c.cmd(&format!("RCPT TO:<{r}>")).starts_with("250"));
    }
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(content);
    let r = c.cmd(".");
    c.cmd("QUIT");
    r
}

#[test]
fn milter_discard_at_mail_or_rcpt_drops_the_message_and_edits_are_byte_exact() {
    let (_milter, mport) = policy_milter();
    let sink = Sink::start(&[]);
    let d = Daemon::start(&format!(
        "[routes]\n\"dst.test\" = \"[127.0.0.1]:{}\"\n[delivery]\nbackoff = [\"1h\"]\n\
         [[milter]]\naddress = \"inet:127.0.0.1:{mport}\"\non_failure = \"tempfail\"\n",
        sink.port
    ));
    let plain = b"Subject: plain\r\n\r\nbody\r\n";
    let r = send_raw(d.port, "discard@src.test", &["a@dst.test"], plain);
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let r = send_raw(
        d.port,
        "s@src.test",
        &["discard@dst.test", "b@dst.test"],
        plain,
    );
    assert!(r.starts_with("250 2.0.0"), "{r}");
    // Only the header the milter names changes: non-UTF-8 octets, a line without a colon
    // and folding survive as they came.
    let head: &[u8] = b"Subject: chghdr\r\nX-Raw: caf\xe9 \xff\r\nnot a header line\r\nX-Edit: original\r\nX-Fold: a\r\n\tb\r\n\r\n";
    let mut msg = head.to_vec();
    msg.extend_from_slice(b"body\r\n");
    let r = send_raw(d.port, "s@src.test", &["c@dst.test"], &msg);
    assert!(r.starts_with("250 2.0.0 Ok: queued"), "{r}");
    wait_for("the edited message", Duration::from_secs(30), || {
        !sink.messages().is_empty()
    });
    d.wait_empty(30);
    let recs = sink.records();
    assert_eq!(recs.len(), 1, "discarded mail was delivered: {recs:?}");
    assert_eq!(Sink::rcpts(&recs[0]), ["c@dst.test"]);
    let stored = std::fs::read(sink.dir.path().join(recs[0]["file"].as_str().unwrap())).unwrap();
    let want: &[u8] = b"Subject: chghdr\r\nX-Raw: caf\xe9 \xff\r\nnot a header line\r\nX-Edit: edited\r\nX-Fold: a\r\n\tb\r\n";
    assert!(
        stored.windows(want.len()).any(|w| w == want),
        "{}",
        String::from_utf8_lossy(&stored)
    );
    let log = d.log();
    assert!(log.contains("discards the message at MAIL"), "{log}");
    assert!(log.contains("discards the message at RCPT"), "{log}");
}

#[test]
fn binarymime_never_leaves_over_data() {
    // The aiosmtpd sink offers neither CHUNKING nor BINARYMIME.
    let sink = Sink::start(&[]);
    let d = Daemon::start(&format!(
        "[routes]\n\"dst.test\" = \"[127.0.0.1]:{}\"\n[delivery]\nbackoff = [\"1h\"]\n",
        sink.port
    ));
    let mut c = session(d.port);
    let r = bdat(
        &mut c,
        "MAIL FROM:<> BODY=BINARYMIME",
        b"Subject: bin\r\n\r\nhello\r.\r\nMAIL FROM:<ceo@example.org>\r\n",
    );
    assert!(r.starts_with("250 2.0.0 Ok: queued"), "{r}");
    wait_for("the permanent failure", Duration::from_secs(30), || {
        d.log().contains("5.6.3")
    });
    assert!(sink.messages().is_empty(), "{:?}", sink.messages());
}
