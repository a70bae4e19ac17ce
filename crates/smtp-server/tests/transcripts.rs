//! The server session as transcripts: commands and their order, transactions, STARTTLS,
//! what reaches cleanup, pipelining, timeouts. Rows are in-memory runs of the sans-IO
//! machine (`support/table.rs`).

#[path = "support/harness.rs"]
mod harness;
#[path = "support/table.rs"]
mod table;

use harness::{GREETING, World, drive, ehlo, id, machine, run_chunks, settings};
use smtp_server::machine::ReadEnd;
use table::*;

#[test]
fn commands_and_their_order() {
    check(vec![
        case("greeting, QUIT", "QUIT\r\nNOOP\r\n", BYE).closes(),
        case("EHLO", "EHLO c.test\r\n", ehlo(10_000, false)),
        case("HELO", "HELO c.test\r\n", "250 mx.example\r\n"),
        case(
            "small commands",
            "NOOP\r\nVRFY u\r\nHELP\r\nRSET\r\n",
            format!(
                "{OK}252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n\
                 214 2.0.0 See RFC 5321\r\n{OK}"
            ),
        ),
        case(
            "out of order",
            "MAIL FROM:<a@b.test>\r\nRCPT TO:<u@example.org>\r\nDATA\r\nHELO c.test\r\n\
             RCPT TO:<u@example.org>\r\nMAIL FROM:<a@b.test>\r\nDATA\r\nMAIL FROM:<x@b.test>\r\n",
            format!(
                "{NEED_HELO}{NEED_MAIL}{NEED_MAIL}250 mx.example\r\n{NEED_MAIL}{MAIL_OK}\
                 {NO_RCPTS}503 5.5.1 Error: nested MAIL command\r\n"
            ),
        ),
        case(
            "unknown and refused commands",
            "FOO bar\r\nLHLO x\r\nEXPN list\r\nAUTH PLAIN\r\n",
            "500 5.5.2 Error: command not recognized\r\n500 5.5.1 This is SMTP, not LMTP\r\n\
             502 5.5.1 EXPN is not available\r\n502 5.5.1 AUTH is not available\r\n",
        ),
        case(
            "syntax errors",
            "HELO\r\nEHLO c.test\r\nMAIL FROM:<a@b.test> FOO=1\r\nMAIL FROM:a\r\n",
            format!(
                "501 5.5.4 Syntax error in HELO arguments\r\n{}\
                 555 5.5.4 Unsupported parameter: FOO\r\n\
                 501 5.1.7 Bad sender address syntax (path must be enclosed in <>)\r\n",
                ehlo(10_000, false)
            ),
        ),
        case(
            "too many errors",
            "FOO\r\nNOOP\r\nBAR\r\nDATA\r\nNOOP\r\n",
            "500 5.5.2 Error: command not recognized\r\n250 2.0.0 Ok\r\n\
             500 5.5.2 Error: command not recognized\r\n503 5.5.1 Error: need MAIL command\r\n\
             421 4.7.0 mx.example Error: too many errors\r\n",
        )
        .set(|s| s.max_errors = 3)
        .closes(),
        case(
            "a size refusal is not an error",
            "EHLO c.test\r\nMAIL FROM:<a@b.test> SIZE=10001\r\nMAIL FROM:<a@b.test> SIZE=10001\r\n",
            format!("{}{TOO_BIG}{TOO_BIG}", ehlo(10_000, false)),
        )
        .set(|s| s.max_errors = 1),
        case(
            "ESMTP parameters need EHLO",
            "HELO c.test\r\nMAIL FROM:<a@b.test> BODY=8BITMIME\r\n",
            "250 mx.example\r\n555 5.5.4 ESMTP parameters need EHLO\r\n",
        ),
        case(
            "over-long command line",
            [b"NOOP ".to_vec(), vec![b'a'; 600], b"\r\nNOOP\r\n".to_vec()].concat(),
            format!("500 5.5.6 Line too long\r\n{OK}"),
        ),
        case(
            "RSET mid-transaction",
            format!("{TXN}RSET\r\nDATA\r\n"),
            format!("{}{OK}{NEED_MAIL}", txn_ok()),
        ),
    ]);
}

#[test]
fn transactions() {
    check(vec![
        case(
            "MAIL, RCPT, DATA",
            format!("{TXN}DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n"),
            format!("{}{GO_AHEAD}{}{BYE}", txn_ok(), queued(1)),
        )
        .closes(),
        case(
            "two messages",
            format!(
                "{TXN}DATA\r\nhi\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<v@example.org>\r\nDATA\r\n..\r\n.\r\n"
            ),
            format!(
                "{}{GO_AHEAD}{}{MAIL_OK}{RCPT_OK}{GO_AHEAD}{}",
                txn_ok(),
                queued(1),
                queued(2)
            ),
        ),
        case(
            "relay denied",
            "EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@victim.test>\r\nRCPT TO:<u@partner.test>\r\n",
            format!(
                "{}{MAIL_OK}554 5.7.1 <u@victim.test>: Relay access denied\r\n{RCPT_OK}",
                ehlo(10_000, false)
            ),
        ),
        case(
            "a trusted client relays",
            "EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@victim.test>\r\n",
            format!("{}{MAIL_OK}{RCPT_OK}", ehlo(10_000, false)),
        )
        .set(|s| s.trusted = true),
        case(
            "too many recipients",
            format!(
                "{TXN}RCPT TO:<U@example.org>\r\nRCPT TO:<v@example.org>\r\nRCPT TO:<w@example.org>\r\nRCPT TO:<x@example.org>\r\n"
            ),
            format!(
                "{}{RCPT_OK}{RCPT_OK}{RCPT_OK}452 4.5.3 Error: too many recipients\r\n",
                txn_ok()
            ),
        ),
        case(
            "a list counts as what it expands to",
            format!("{TXN}RCPT TO:<v@example.org>\r\nRCPT TO:<list@example.org>\r\n"),
            format!(
                "{}{RCPT_OK}452 4.5.3 Error: too many recipients\r\n",
                txn_ok()
            ),
        ),
        case(
            "unknown user, lookup failure",
            format!("{TXN}RCPT TO:<nobody@example.org>\r\nRCPT TO:<broken@example.org>\r\n"),
            format!(
                "{}550 5.1.1 <nobody>: Recipient address rejected: User unknown\r\n\
                 451 4.3.0 Temporary lookup failure\r\n",
                txn_ok()
            ),
        ),
        case(
            "DATA with dot-stuffing",
            format!("{TXN}DATA\r\n..leading dot\r\n...\r\n.\r\n"),
            format!("{}{GO_AHEAD}{}", txn_ok(), queued(1)),
        ),
        case(
            "bare LF",
            format!("{TXN}DATA\r\na\nb\r\n.\r\nNOOP\r\n"),
            format!("{}{GO_AHEAD}{BARE_LF}{OK}", txn_ok()),
        ),
        case(
            "NUL",
            format!("{TXN}DATA\r\na\0b\r\n.\r\n"),
            format!(
                "{}{GO_AHEAD}550 5.6.11 Message contains NUL octet (SMTP smuggling protection)\r\n",
                txn_ok()
            ),
        ),
        case(
            "line over 1000 octets",
            format!("{TXN}DATA\r\n{}\r\n.\r\n", "x".repeat(1000)),
            format!(
                "{}{GO_AHEAD}552 5.6.0 Message has a line longer than 1000 octets\r\n",
                txn_ok()
            ),
        ),
        case(
            "message too big",
            format!("{TXN}DATA\r\n{}\r\n.\r\nDATA\r\n", "x\r\n".repeat(60)),
            format!(
                "{}{MAIL_OK}{RCPT_OK}{GO_AHEAD}{TOO_BIG}{NEED_MAIL}",
                ehlo(100, false)
            ),
        )
        .set(|s| s.max_message_size = 100),
        case(
            "too many hops",
            format!("{TXN}DATA\r\nReceived: a\r\nReceived: b\r\n\r\nhi\r\n.\r\n"),
            format!(
                "{}{GO_AHEAD}554 5.4.6 Too many hops: mail loop detected\r\n",
                txn_ok()
            ),
        )
        .set(|s| s.max_hops = 2),
        case(
            "BODY=BINARYMIME needs BDAT",
            "EHLO c.test\r\nMAIL FROM:<a@b.test> BODY=BINARYMIME\r\nRCPT TO:<u@example.org>\r\nDATA\r\n",
            format!(
                "{}503 5.5.1 Error: BODY=BINARYMIME needs BDAT\r\n",
                txn_ok()
            ),
        ),
    ]);
}

#[test]
fn starttls() {
    check(vec![
        case(
            "220, then the session starts over; pipelined bytes are dropped",
            "EHLO c.test\r\nSTARTTLS\r\nMAIL FROM:<evil@x.test>\r\n",
            format!("{}220 2.0.0 Ready to start TLS\r\n", ehlo(10_000, true)),
        )
        .set(|s| s.starttls = true)
        .then("MAIL FROM:<a@b.test>\r\nEHLO c.test\r\nSTARTTLS\r\nQUIT\r\n")
        .expect_more(&format!(
            "{NEED_HELO}{}554 5.5.1 Error: TLS already active\r\n{BYE}",
            ehlo(10_000, false)
        ))
        .closes(),
        case(
            "a transaction does not survive STARTTLS",
            format!("{TXN}STARTTLS\r\n"),
            format!(
                "{}{MAIL_OK}{RCPT_OK}220 2.0.0 Ready to start TLS\r\n",
                ehlo(10_000, true)
            ),
        )
        .set(|s| s.starttls = true)
        .then("EHLO c.test\r\nRCPT TO:<u@example.org>\r\n")
        .expect_more(&format!("{}{NEED_MAIL}", ehlo(10_000, false))),
        case(
            "STARTTLS without a certificate",
            "STARTTLS\r\n",
            "502 5.5.1 Error: STARTTLS is not available\r\n",
        ),
    ]);
}

/// A DATA message, as the spool gets it and as cleanup gets the envelope.
#[test]
fn what_is_committed() {
    let mut w = World::default();
    let mut set = settings();
    set.max_recipients = 4;
    let input = format!(
        "{TXN}RCPT TO:<list@example.org> NOTIFY=FAILURE\r\nRCPT TO:<postmaster>\r\n\
         DATA\r\nSubject: x\r\n\r\n..dot\r\n.\r\n"
    );
    let r = run_chunks(set, &mut w, &[input.as_bytes()]);
    assert!(r.text().ends_with(&queued(1)), "{}", r.text());
    let (c, content) = &w.committed[0];
    assert_eq!(content, b"Subject: x\r\n\r\n.dot\r\n");
    assert_eq!(c.env.sender, "a@b.test");
    assert_eq!(c.env.client, "c.test [192.0.2.7]");
    assert_eq!(c.hops, 0);
    let rcpts: Vec<(&str, Option<&str>)> = c
        .env
        .recipients
        .iter()
        .map(|r| (r.address.as_str(), r.orcpt.as_deref()))
        .collect();
    assert_eq!(
        rcpts,
        [
            ("u@example.org", None),
            ("ann@example.org", Some("rfc822;list@example.org")),
            ("bob@partner.test", Some("rfc822;list@example.org")),
            ("postmaster@example.org", None),
        ]
    );
    assert!(c.env.recipients[1].notify.failure);
    assert_eq!(
        c.owners,
        [
            (
                "ann@example.org".to_string(),
                "owner-list@example.org".to_string()
            ),
            (
                "bob@partner.test".to_string(),
                "owner-list@example.org".to_string()
            ),
        ]
    );
    assert_eq!(
        w.actions,
        [
            "space",
            "local u",
            "local list",
            format!("open {}", id(1)).as_str(),
            format!("commit {}", id(1)).as_str()
        ]
    );
}

/// RFC 2920: the replies to a pipelined group go out in one write, when the server waits.
#[test]
fn pipelined_replies_are_one_write() {
    let mut w = World::default();
    let r = run_chunks(
        settings(),
        &mut w,
        &[
            b"EHLO c.test\r\n",
            b"MAIL FROM:<a@b.test>\r\nRCPT TO:<u@example.org>\r\nRCPT TO:<v@example.org>\r\nDATA\r\n",
            b"hi\r\n.\r\nQUIT\r\n",
        ],
    );
    let batches: Vec<String> = r
        .batches
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert_eq!(
        batches,
        [
            GREETING.to_string(),
            ehlo(10_000, false),
            format!("{MAIL_OK}{RCPT_OK}{RCPT_OK}{GO_AHEAD}"),
            format!("{}{BYE}", queued(1)),
        ]
    );
    assert!(r.closed);
}

#[test]
fn timeouts_shutdown_and_hangups() {
    let mut w = World::default();
    let mut m = machine(settings());
    let r = drive(&mut m, &mut w, &[b"NOOP\r\n"], Some(ReadEnd::Timeout));
    assert_eq!(
        r.text(),
        format!("{GREETING}{OK}421 4.4.2 mx.example Error: timeout exceeded\r\n")
    );
    assert!(r.closed);

    let mut m = machine(settings());
    let input = format!("{TXN}BDAT 10\r\nab");
    let r = drive(&mut m, &mut w, &[input.as_bytes()], Some(ReadEnd::Timeout));
    assert!(
        r.text()
            .ends_with("\r\n421 4.4.2 Error: timeout exceeded\r\n")
    );
    assert!(r.closed);
    assert_eq!(w.actions.last().map(String::as_str), Some("drop"));

    let mut m = machine(settings());
    let r = drive(&mut m, &mut w, &[b"NOOP\r\n"], Some(ReadEnd::Shutdown));
    assert_eq!(
        r.text(),
        format!("{GREETING}{OK}421 4.3.2 mx.example Service shutting down\r\n")
    );

    // Shut down while the client's commands were on their way: the next one gets 421.
    let mut m = machine(settings());
    w.shutdown_at_read = Some(1);
    let r = drive(&mut m, &mut w, &[b"NOOP\r\n", b"NOOP\r\nNOOP\r\n"], None);
    w.shutdown_at_read = None;
    assert_eq!(
        r.text(),
        format!("{GREETING}{OK}421 4.3.2 mx.example Service shutting down\r\n")
    );
    assert!(r.closed);

    let mut m = machine(settings());
    let r = drive(&mut m, &mut w, &[b"NOOP\r\n"], Some(ReadEnd::Closed));
    assert_eq!(r.text(), format!("{GREETING}{OK}"));
    assert!(r.closed);
}
