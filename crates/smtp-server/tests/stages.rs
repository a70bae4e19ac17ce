//! The server session as transcripts: BDAT chunks, the milters' stages and spool
//! failures, with scripted answers from the milters and the spool.

#[path = "support/harness.rs"]
mod harness;
#[path = "support/table.rs"]
mod table;

use harness::{Fail, World, ehlo, id, run_chunks, settings};
use smtp_server::machine::{MilterCall, Settings, Verdict};
use table::*;

#[test]
fn bdat() {
    check(vec![
        case(
            "chunks and LAST",
            format!("{TXN}BDAT 12\r\nSubject: x\r\nBDAT 6 LAST\r\n\r\nhi\r\nBDAT 0 LAST\r\n"),
            format!(
                "{}250 2.0.0 12 octets received\r\n{}{NEED_MAIL}",
                txn_ok(),
                queued(1)
            ),
        ),
        case(
            "an empty LAST chunk",
            format!("{TXN}BDAT 4\r\nab\r\nBDAT 0 LAST\r\n"),
            format!("{}250 2.0.0 4 octets received\r\n{}", txn_ok(), queued(1)),
        ),
        case(
            "BDAT without EHLO: the chunk is skipped, the transaction stays",
            "HELO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@example.org>\r\nBDAT 3 LAST\r\nabcNOOP\r\nDATA\r\nx\r\n.\r\n",
            format!(
                "250 mx.example\r\n{MAIL_OK}{RCPT_OK}503 5.5.1 Error: BDAT needs EHLO\r\n{OK}{GO_AHEAD}{}",
                queued(1)
            ),
        ),
        case(
            "a bad chunk is refused as it arrives; BDAT after it needs MAIL",
            format!("{TXN}BDAT 3\r\na\nbBDAT 2 LAST\r\nxyNOOP\r\n"),
            format!("{}{BARE_LF}{NEED_MAIL}{OK}", txn_ok()),
        ),
        case(
            "BDAT without recipients or MAIL",
            "EHLO c.test\r\nBDAT 2\r\nxyMAIL FROM:<a@b.test>\r\nBDAT 1 LAST\r\nzNOOP\r\n",
            format!("{}{NEED_MAIL}{MAIL_OK}{NO_RCPTS}{OK}", ehlo(10_000, false)),
        ),
        case(
            "DATA and RCPT during BDAT",
            format!("{TXN}BDAT 2\r\nabDATA\r\nRCPT TO:<v@example.org>\r\nBDAT 2 LAST\r\n\r\n"),
            format!(
                "{}250 2.0.0 2 octets received\r\n503 5.5.1 Error: DATA during BDAT\r\n\
                 503 5.5.1 Error: RCPT during BDAT\r\n{}",
                txn_ok(),
                queued(1)
            ),
        ),
        case(
            "RSET between chunks",
            format!("{TXN}BDAT 2\r\nabRSET\r\nBDAT 2 LAST\r\nabNOOP\r\n"),
            format!(
                "{}250 2.0.0 2 octets received\r\n{OK}{NEED_MAIL}{OK}",
                txn_ok()
            ),
        ),
        case(
            "too big",
            format!(
                "{TXN}BDAT 80\r\n{}BDAT 40 LAST\r\n{}NOOP\r\n",
                "x".repeat(80),
                "y".repeat(40)
            ),
            format!(
                "{}{MAIL_OK}{RCPT_OK}250 2.0.0 80 octets received\r\n{TOO_BIG}{OK}",
                ehlo(100, false)
            ),
        )
        .set(|s| s.max_message_size = 100),
        case(
            "BINARYMIME content may hold bare LFs",
            "EHLO c.test\r\nMAIL FROM:<a@b.test> BODY=BINARYMIME\r\nRCPT TO:<u@example.org>\r\nBDAT 4 LAST\r\na\nb\0",
            format!("{}{}", txn_ok(), queued(1)),
        ),
    ]);
}

fn milters(s: &mut Settings) {
    s.milters = true;
}

#[test]
fn milter_stages() {
    let data = format!("{TXN}DATA\r\nhi\r\n.\r\n");
    check(vec![
        case(
            "reject at MAIL",
            TXN,
            format!(
                "{}550 5.7.1 Sender refused\r\n{NEED_MAIL}",
                ehlo(10_000, false)
            ),
        )
        .set(milters)
        .world(|w| {
            w.milter = Box::new(|c| match c {
                MilterCall::Mail { .. } => Verdict::Reject(reply(550, "5.7.1", "Sender refused")),
                _ => Verdict::Continue,
            })
        }),
        case(
            "tempfail at MAIL",
            "EHLO c.test\r\nMAIL FROM:<a@b.test>\r\n",
            format!("{}451 4.7.1 Try again later\r\n", ehlo(10_000, false)),
        )
        .set(milters)
        .world(|w| {
            w.milter = Box::new(|c| match c {
                MilterCall::Mail { .. } => {
                    Verdict::Tempfail(reply(451, "4.7.1", "Try again later"))
                }
                _ => Verdict::Continue,
            })
        }),
        case(
            "reject and tempfail at RCPT",
            format!("{TXN}RCPT TO:<v@example.org>\r\nRCPT TO:<w@example.org>\r\n"),
            format!(
                "{}{MAIL_OK}550 5.7.1 Recipient refused\r\n451 4.7.1 Later\r\n{RCPT_OK}",
                ehlo(10_000, false)
            ),
        )
        .set(milters)
        .world(|w| {
            w.milter = Box::new(|c| match c {
                MilterCall::Rcpt(a) if a == "u@example.org" => {
                    Verdict::Reject(reply(550, "5.7.1", "Recipient refused"))
                }
                MilterCall::Rcpt(a) if a == "v@example.org" => {
                    Verdict::Tempfail(reply(451, "4.7.1", "Later"))
                }
                _ => Verdict::Continue,
            })
        }),
        case(
            "discard at MAIL",
            data.clone(),
            format!(
                "{}{GO_AHEAD}250 2.0.0 Ok: discarded as {}\r\n",
                txn_ok(),
                id(1)
            ),
        )
        .set(milters)
        .world(|w| {
            w.milter = Box::new(|c| match c {
                MilterCall::Mail { .. } => Verdict::Discard,
                _ => Verdict::Continue,
            })
        }),
        case(
            "discard at RCPT",
            data.clone(),
            format!(
                "{}{GO_AHEAD}250 2.0.0 Ok: discarded as {}\r\n",
                txn_ok(),
                id(1)
            ),
        )
        .set(milters)
        .world(|w| {
            w.milter = Box::new(|c| match c {
                MilterCall::Rcpt(_) => Verdict::Discard,
                _ => Verdict::Continue,
            })
        }),
        case(
            "refused at connect: every HELO and MAIL gets it",
            "EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nHELO c.test\r\n",
            "554 5.7.1 Not welcome\r\n".repeat(3),
        )
        .set(milters)
        .world(|w| {
            w.milter = Box::new(|c| match c {
                MilterCall::Connect => Verdict::Reject(reply(554, "5.7.1", "Not welcome")),
                _ => Verdict::Continue,
            })
        }),
        case(
            "reject at end of message",
            data,
            format!("{}{GO_AHEAD}550 5.7.1 Content refused\r\n", txn_ok()),
        )
        .set(milters)
        .world(|w| {
            w.milter = Box::new(|c| match c {
                MilterCall::Message { .. } => {
                    Verdict::Reject(reply(550, "5.7.1", "Content refused"))
                }
                _ => Verdict::Continue,
            })
        }),
    ]);
}

#[test]
fn spool_failures() {
    let data = format!("{TXN}DATA\r\nhi\r\n.\r\n");
    check(vec![
        case(
            "disk full at open",
            data.clone(),
            format!("{}{GO_AHEAD}{NO_SPACE}", txn_ok()),
        )
        .world(|w| w.open_fails = Some(Fail::NoSpace)),
        case(
            "a write fails",
            data.clone(),
            format!("{}{GO_AHEAD}{LOCAL_ERROR}", txn_ok()),
        )
        .world(|w| w.write_fails_after = Some((0, Fail::Io))),
        case(
            "a BDAT write fails: refused at that chunk",
            format!("{TXN}BDAT 4\r\nab\r\nBDAT 2 LAST\r\nxy"),
            format!("{}{LOCAL_ERROR}{NEED_MAIL}", txn_ok()),
        )
        .world(|w| w.write_fails_after = Some((0, Fail::Io))),
        case(
            "commit fails",
            data,
            format!("{}{GO_AHEAD}{NO_SPACE}", txn_ok()),
        )
        .world(|w| w.commit_fails = Some(Fail::NoSpace)),
        case(
            "short of space at MAIL",
            "EHLO c.test\r\nMAIL FROM:<a@b.test>\r\n",
            format!("{}{NO_SPACE}", ehlo(10_000, false)),
        )
        .world(|w| w.free = Some(10)),
    ]);
}

#[test]
fn milter_aborts_and_skipped_stages() {
    let mut set = settings();
    set.milters = true;
    let mut w = World {
        milter: Box::new(|c| match c {
            MilterCall::Mail { from, .. } if from == "a@b.test" => Verdict::Discard,
            MilterCall::Mail { .. } => Verdict::Reject(reply(550, "5.7.1", "No")),
            _ => Verdict::Continue,
        }),
        ..World::default()
    };
    let input = format!("{TXN}DATA\r\nhi\r\n.\r\nMAIL FROM:<x@b.test>\r\n");
    run_chunks(set, &mut w, &[input.as_bytes()]);
    let stages: Vec<&str> = w
        .actions
        .iter()
        .map(|a| match a.strip_prefix("milter ") {
            Some(m) => m.split([' ', '(']).next().unwrap_or(m),
            None => a.split(' ').next().unwrap_or(a),
        })
        .collect();
    // Discarded at MAIL: no RCPT or end-of-message stage, an abort at the end of data;
    // refused at the next MAIL: an abort.
    assert_eq!(
        stages,
        [
            "Connect", "Helo", "space", "Mail", "local", "open", "Abort", "drop", "space", "Mail",
            "Abort"
        ],
        "{:?}",
        w.actions
    );
}
