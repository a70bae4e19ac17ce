//! The client machine (`protocol.rs`) against scripted servers, in memory: each case is the
//! server's bytes, one chunk per read, the exact bytes the client writes, and what came of
//! each recipient. `[TLS]` in the client's bytes marks where the handshake happened.

use std::collections::VecDeque;

use config::TlsPolicy;
use delivery::protocol::{ClientMachine, Envelope, EnvelopeRcpt, Framer, Greeting, Output};
use queue::RcptOutcome;
use spool::{BodyType, DsnRet, Notify};

fn greeting(lmtp: bool, tls: TlsPolicy) -> Greeting {
    Greeting {
        hostname: "me.test".into(),
        lmtp,
        helo: true,
        tls,
    }
}

fn smtp() -> Greeting {
    greeting(false, TlsPolicy::None)
}

fn env(rcpts: &[&str]) -> Envelope {
    Envelope {
        sender: "a@x.test".into(),
        body: BodyType::SevenBit,
        smtputf8: false,
        envid: None,
        ret: None,
        size: 10,
        recipients: rcpts
            .iter()
            .enumerate()
            .map(|(i, r)| EnvelopeRcpt {
                index: i as u16,
                address: (*r).into(),
                notify: Notify::default(),
                orcpt: None,
            })
            .collect(),
    }
}

fn outcome(i: u16, o: &RcptOutcome) -> String {
    match o {
        RcptOutcome::Delivered { reply, handoff, .. } => {
            format!("{i} delivered {reply} ({handoff:?})")
        }
        RcptOutcome::Deferred { relay, .. } => {
            format!(
                "{i} deferred {}{}",
                o.diagnostic(),
                if relay.is_none() { " (local)" } else { "" }
            )
        }
        RcptOutcome::Failed { relay, .. } => {
            format!(
                "{i} failed {}{}",
                o.diagnostic(),
                if relay.is_none() { " (local)" } else { "" }
            )
        }
    }
}

/// A scripted server and everything the client wrote to it.
struct Wire {
    m: ClientMachine,
    server: VecDeque<Vec<u8>>,
    out: Vec<u8>,
    events: Vec<String>,
}

impl Wire {
    /// Moves bytes until the machine has something to say; `None` once the script is out
    /// (the connection was lost) or the machine failed.
    fn step(&mut self) -> Option<Output> {
        // Bounded: a machine that loops without progress fails the test.
        for _ in 0..10_000 {
            match self.m.poll() {
                None => {
                    self.events.push("idle".into());
                    return None;
                }
                Some(Output::Write { bytes, .. }) => self.out.extend_from_slice(&bytes),
                Some(Output::Read(_)) => match self.server.pop_front() {
                    Some(b) => self.m.receive(&b),
                    None => {
                        self.events.push("lost".into());
                        return None;
                    }
                },
                Some(Output::Received(_)) => {}
                Some(Output::Failed(e)) => {
                    self.events.push(format!("failed: {e}"));
                    return None;
                }
                Some(o) => return Some(o),
            }
        }
        panic!("the machine made no progress");
    }

    fn done(&mut self, results: Vec<(u16, RcptOutcome)>) {
        let mut r: Vec<String> = results.iter().map(|(i, o)| outcome(*i, o)).collect();
        r.sort();
        self.events.extend(r);
    }
}

/// Runs a whole session: greeting, each message (RSET between), QUIT.
fn session(g: Greeting, server: &[&[u8]], msgs: &[(Envelope, &[u8])]) -> (String, Vec<String>) {
    let mut w = Wire {
        m: ClientMachine::new("mx.test[192.0.2.1]".into(), g),
        server: server.iter().map(|b| b.to_vec()).collect(),
        out: Vec::new(),
        events: Vec::new(),
    };
    run(&mut w, msgs);
    (String::from_utf8_lossy(&w.out).into_owned(), w.events)
}

fn run(w: &mut Wire, msgs: &[(Envelope, &[u8])]) {
    loop {
        match w.step() {
            Some(Output::Ready) => break,
            Some(Output::StartTls) => {
                w.out.extend_from_slice(b"[TLS]\r\n");
                w.m.tls_established();
            }
            Some(o) => panic!("unexpected {o:?}"),
            None => return,
        }
    }
    w.events.push("ready".into());
    for (k, (msg, content)) in msgs.iter().enumerate() {
        if k > 0 {
            w.m.rset();
            match w.step() {
                Some(Output::RsetDone) => {}
                Some(o) => panic!("unexpected {o:?}"),
                None => return,
            }
        }
        w.m.send(msg);
        let mut framer = match w.step() {
            Some(Output::MessageDone(r)) => {
                w.done(r);
                continue;
            }
            Some(Output::Content(f)) => Framer::new(f),
            Some(o) => panic!("unexpected {o:?}"),
            None => return,
        };
        let mut bdat_done = false;
        for c in content.chunks(8) {
            framer.encode(c, &mut w.out);
            if framer.is_bdat() {
                w.m.chunk_sent();
                match w.step() {
                    Some(Output::ChunkAccepted) => {}
                    Some(Output::MessageDone(r)) => {
                        w.done(r);
                        bdat_done = true;
                        break;
                    }
                    Some(o) => panic!("unexpected {o:?}"),
                    None => return,
                }
            }
        }
        if bdat_done {
            continue;
        }
        framer.finish(&mut w.out);
        w.m.content_sent();
        match w.step() {
            Some(Output::MessageDone(r)) => w.done(r),
            Some(o) => panic!("unexpected {o:?}"),
            None => return,
        }
    }
    w.m.quit();
    match w.step() {
        Some(Output::Closed) => w.events.push("closed".into()),
        Some(o) => panic!("unexpected {o:?}"),
        None => {}
    }
}

struct Case<'a> {
    name: &'static str,
    greeting: Greeting,
    msgs: Vec<(Envelope, &'static [u8])>,
    server: &'a [&'static [u8]],
    client: &'static str,
    events: &'static [&'static str],
}

fn check(cases: Vec<Case<'_>>) {
    for c in cases {
        let (client, events) = session(c.greeting, c.server, &c.msgs);
        assert_eq!(client, c.client, "{}: client bytes", c.name);
        assert_eq!(events, c.events, "{}: events", c.name);
    }
}

const EHLO_PIPE: &[u8] = b"250-mx.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n";

#[test]
fn smtp_transactions() {
    let mut dsn = env(&["b@y.test", "c@y.test"]);
    dsn.envid = Some("E1".into());
    dsn.ret = Some(DsnRet::Headers);
    dsn.body = BodyType::EightBitMime;
    dsn.recipients[0].notify = Notify {
        success: true,
        failure: true,
        ..Notify::default()
    };
    dsn.recipients[0].orcpt = Some("rfc822;B@y.test".into());
    check(vec![
        Case {
            name: "pipelining, two messages, RSET between",
            greeting: smtp(),
            msgs: vec![
                (
                    env(&["b@y.test", "c@y.test"]),
                    b"Subject: 1\r\n\r\n.dot\r\n",
                ),
                (env(&["d@y.test"]), b"x"),
            ],
            server: &[
                b"220 mx.test ESMTP\r\n",
                EHLO_PIPE,
                b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go\r\n",
                b"250 2.0.0 queued as A\r\n",
                b"250 2.0.0 reset\r\n",
                b"250 ok\r\n250 ok\r\n354 go\r\n",
                b"250 queued as B\r\n",
                b"221 bye\r\n",
            ],
            client: "EHLO me.test\r\n\
                MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n\
                Subject: 1\r\n\r\n..dot\r\n.\r\n\
                RSET\r\n\
                MAIL FROM:<a@x.test>\r\nRCPT TO:<d@y.test>\r\nDATA\r\n\
                x\r\n.\r\n\
                QUIT\r\n",
            events: &[
                "ready",
                "0 delivered 250 2.0.0 queued as A (Relayed)",
                "1 delivered 250 2.0.0 queued as A (Relayed)",
                "0 delivered 250 queued as B (Relayed)",
                "closed",
            ],
        },
        Case {
            name: "replies split anywhere, DSN, SIZE and 8BITMIME parameters",
            greeting: smtp(),
            msgs: vec![(dsn, b"ok\r\n")],
            server: &[
                b"220 mx",
                b".test\r",
                b"\n",
                b"250-mx.test\r\n250-PIPELINING\r\n250-DSN\r\n250-SIZE 1000\r\n",
                b"250 8BITMIME\r\n",
                b"250 ok\r\n2",
                b"50 ok\r\n550 5.1.1 no such user\r\n354 go\r\n",
                b"250 2.0.0 queued\r\n",
                b"221 bye\r\n",
            ],
            client: "EHLO me.test\r\n\
                MAIL FROM:<a@x.test> SIZE=10 BODY=8BITMIME RET=HDRS ENVID=E1\r\n\
                RCPT TO:<b@y.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;B@y.test\r\n\
                RCPT TO:<c@y.test>\r\nDATA\r\nok\r\n.\r\nQUIT\r\n",
            events: &[
                "ready",
                "0 delivered 250 2.0.0 queued (DsnCapable)",
                "1 failed 550 5.1.1 no such user",
                "closed",
            ],
        },
        Case {
            name: "no EHLO: HELO fallback, one round trip per command",
            greeting: smtp(),
            msgs: vec![(env(&["b@y.test", "c@y.test", "d@y.test"]), b"hi\r\n")],
            server: &[
                b"220 old.test\r\n",
                b"502 what?\r\n",
                b"250 old.test\r\n",
                b"250 ok\r\n",
                b"250 ok\r\n",
                b"450 4.2.0 try later\r\n",
                b"550 unknown\r\n",
                b"354 go\r\n",
                b"250 done\r\n",
                b"221 bye\r\n",
            ],
            client: "EHLO me.test\r\nHELO me.test\r\n\
                MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\n\
                RCPT TO:<d@y.test>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n",
            events: &[
                "ready",
                "0 delivered 250 done (Relayed)",
                "1 deferred 450 4.2.0 try later",
                "2 failed 550 unknown",
                "closed",
            ],
        },
        Case {
            name: "HELO refused too",
            greeting: smtp(),
            msgs: vec![],
            server: &[b"220 old.test\r\n", b"502 no\r\n", b"554 go away\r\n"],
            client: "EHLO me.test\r\nHELO me.test\r\n",
            events: &["failed: mx.test[192.0.2.1] said: 554 go away"],
        },
        Case {
            name: "greeting refused",
            greeting: smtp(),
            msgs: vec![],
            server: &[b"554 5.3.2 busy\r\n"],
            client: "",
            events: &["failed: mx.test[192.0.2.1] said: 554 5.3.2 busy"],
        },
        Case {
            name: "helo = false: straight to MAIL",
            greeting: Greeting {
                helo: false,
                ..smtp()
            },
            msgs: vec![(env(&["b@y.test"]), b"hi\r\n")],
            server: &[
                b"220 mx\r\n",
                b"250 ok\r\n",
                b"250 ok\r\n",
                b"354 go\r\n",
                b"250 done\r\n",
                b"221 bye\r\n",
            ],
            client: "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n",
            events: &["ready", "0 delivered 250 done (Relayed)", "closed"],
        },
    ]);
}

#[test]
fn refusals() {
    check(vec![
        Case {
            name: "all refused at RCPT, pipelined: DATA refused, nothing sent, RSET next",
            greeting: smtp(),
            msgs: vec![
                (env(&["b@y.test", "c@y.test"]), b"x"),
                (env(&["d@y.test"]), b"y"),
            ],
            server: &[
                b"220 mx\r\n",
                EHLO_PIPE,
                b"250 ok\r\n550 no\r\n450 later\r\n554 5.5.1 no valid recipients\r\n",
                b"250 reset\r\n",
                b"250 ok\r\n250 ok\r\n354 go\r\n",
                b"250 queued\r\n",
                b"221 bye\r\n",
            ],
            client: "EHLO me.test\r\n\
                MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n\
                RSET\r\n\
                MAIL FROM:<a@x.test>\r\nRCPT TO:<d@y.test>\r\nDATA\r\ny\r\n.\r\nQUIT\r\n",
            events: &[
                "ready",
                "0 failed 550 no",
                "1 deferred 450 later",
                "0 delivered 250 queued (Relayed)",
                "closed",
            ],
        },
        Case {
            name: "all refused, but the pipelined DATA got 354: an empty message ends it",
            greeting: smtp(),
            msgs: vec![(env(&["b@y.test"]), b"x")],
            server: &[
                b"220 mx\r\n",
                EHLO_PIPE,
                b"250 ok\r\n550 no\r\n354 go\r\n",
                b"554 no valid recipients\r\n",
                b"221 bye\r\n",
            ],
            client: "EHLO me.test\r\n\
                MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n.\r\nQUIT\r\n",
            events: &["ready", "0 failed 550 no", "closed"],
        },
        Case {
            name: "all refused without pipelining: no DATA",
            greeting: smtp(),
            msgs: vec![(env(&["b@y.test"]), b"x")],
            server: &[
                b"220 mx\r\n",
                b"250 mx\r\n",
                b"250 ok\r\n",
                b"551 not here\r\n",
                b"221 bye\r\n",
            ],
            client: "EHLO me.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nQUIT\r\n",
            events: &["ready", "0 failed 551 not here", "closed"],
        },
        Case {
            name: "MAIL 4xx defers everyone; the pipelined DATA's 354 is ended",
            greeting: smtp(),
            msgs: vec![(env(&["b@y.test", "c@y.test"]), b"x")],
            server: &[
                b"220 mx\r\n",
                EHLO_PIPE,
                b"451 4.3.0 local problem\r\n503 no MAIL\r\n503 no MAIL\r\n354 go\r\n",
                b"250 empty\r\n",
                b"221 bye\r\n",
            ],
            client: "EHLO me.test\r\n\
                MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n\
                .\r\nQUIT\r\n",
            events: &[
                "ready",
                "0 deferred 451 4.3.0 local problem",
                "1 deferred 451 4.3.0 local problem",
                "closed",
            ],
        },
        Case {
            name: "MAIL 5xx fails everyone; without pipelining no RCPT is sent",
            greeting: smtp(),
            msgs: vec![(env(&["b@y.test", "c@y.test"]), b"x")],
            server: &[
                b"220 mx\r\n",
                b"250 mx\r\n",
                b"553 5.7.1 sender refused\r\n",
                b"221 bye\r\n",
            ],
            client: "EHLO me.test\r\nMAIL FROM:<a@x.test>\r\nQUIT\r\n",
            events: &[
                "ready",
                "0 failed 553 5.7.1 sender refused",
                "1 failed 553 5.7.1 sender refused",
                "closed",
            ],
        },
        Case {
            name: "DATA refused with 4xx",
            greeting: smtp(),
            msgs: vec![(env(&["b@y.test"]), b"x")],
            server: &[
                b"220 mx\r\n",
                EHLO_PIPE,
                b"250 ok\r\n250 ok\r\n451 4.3.1 no space\r\n",
                b"221 bye\r\n",
            ],
            client: "EHLO me.test\r\n\
                MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nQUIT\r\n",
            events: &["ready", "0 deferred 451 4.3.1 no space", "closed"],
        },
        Case {
            name: "552 at the end of DATA",
            greeting: smtp(),
            msgs: vec![(env(&["b@y.test", "c@y.test"]), b"big\r\n")],
            server: &[
                b"220 mx\r\n",
                EHLO_PIPE,
                b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n",
                b"552 5.3.4 message too big\r\n",
                b"221 bye\r\n",
            ],
            client: "EHLO me.test\r\n\
                MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n\
                big\r\n.\r\nQUIT\r\n",
            events: &[
                "ready",
                "0 failed 552 5.3.4 message too big",
                "1 failed 552 5.3.4 message too big",
                "closed",
            ],
        },
        Case {
            name: "refused before a byte is sent: size, bad addresses",
            greeting: smtp(),
            msgs: vec![
                (
                    Envelope {
                        size: 2000,
                        ..env(&["b@y.test"])
                    },
                    b"x",
                ),
                (env(&["b@y.test", "not an address"]), b"x\r\n"),
                (
                    Envelope {
                        sender: "bad sender".into(),
                        ..env(&["b@y.test"])
                    },
                    b"x",
                ),
            ],
            server: &[
                b"220 mx\r\n",
                b"250-mx\r\n250-PIPELINING\r\n250 SIZE 1000\r\n",
                b"250 reset\r\n",
                b"250 ok\r\n250 ok\r\n354 go\r\n",
                b"250 queued\r\n",
                b"250 reset\r\n",
                b"221 bye\r\n",
            ],
            client: "EHLO me.test\r\nRSET\r\n\
                MAIL FROM:<a@x.test> SIZE=10\r\nRCPT TO:<b@y.test>\r\nDATA\r\nx\r\n.\r\n\
                RSET\r\nQUIT\r\n",
            events: &[
                "ready",
                "0 failed 552 5.3.4 message size 2000 exceeds the limit of 1000 announced by mx.test[192.0.2.1] (local)",
                "0 delivered 250 queued (Relayed)",
                "1 failed 553 5.1.3 bad recipient address (local)",
                "0 failed 553 5.1.7 bad sender address bad sender (local)",
                "closed",
            ],
        },
    ]);
}

#[test]
fn lmtp_replies_per_recipient() {
    check(vec![Case {
        name: "LMTP: one reply per accepted recipient after the content",
        greeting: greeting(true, TlsPolicy::Opportunistic),
        msgs: vec![(env(&["b@y.test", "c@y.test", "d@y.test"]), b"hi\r\n")],
        server: &[
            b"220 lmtp\r\n",
            b"250-lmtp\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 ENHANCEDSTATUSCODES\r\n",
            b"250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n250 ok\r\n354 go\r\n",
            b"250 2.0.0 b saved\r\n",
            b"452 4.2.2 d over quota\r\n",
            b"221 bye\r\n",
        ],
        // LMTP never asks for STARTTLS, whatever the policy says.
        client: "LHLO me.test\r\n\
            MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\n\
            RCPT TO:<d@y.test>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n",
        events: &[
            "ready",
            "0 delivered 250 2.0.0 b saved (Final)",
            "1 failed 550 5.1.1 unknown",
            "2 deferred 452 4.2.2 d over quota",
            "closed",
        ],
    }]);
}

#[test]
fn chunking_and_smtputf8() {
    let binary = Envelope {
        body: BodyType::BinaryMime,
        ..env(&["b@y.test", "c@y.test"])
    };
    let utf8 = Envelope {
        smtputf8: true,
        ..env(&["b@y.test"])
    };
    check(vec![
        Case {
            name: "BINARYMIME goes by BDAT, one reply per chunk",
            greeting: smtp(),
            msgs: vec![(binary.clone(), b"0123456789\0\r.\n")],
            server: &[
                b"220 mx\r\n",
                b"250-mx\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 BINARYMIME\r\n",
                b"250 ok\r\n250 ok\r\n450 later\r\n",
                b"250 chunk 1\r\n",
                b"250 chunk 2\r\n",
                b"250 2.0.0 queued\r\n",
                b"221 bye\r\n",
            ],
            client: "EHLO me.test\r\n\
                MAIL FROM:<a@x.test> BODY=BINARYMIME\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\n\
                BDAT 8\r\n01234567BDAT 6\r\n89\0\r.\nBDAT 0 LAST\r\nQUIT\r\n",
            events: &[
                "ready",
                "0 delivered 250 2.0.0 queued (Relayed)",
                "1 deferred 450 later",
                "closed",
            ],
        },
        Case {
            name: "a BDAT chunk refused ends the message",
            greeting: smtp(),
            msgs: vec![(binary.clone(), b"0123456789")],
            server: &[
                b"220 mx\r\n",
                b"250-mx\r\n250-CHUNKING\r\n250 BINARYMIME\r\n",
                b"250 ok\r\n",
                b"250 ok\r\n",
                b"250 ok\r\n",
                b"552 5.3.4 too much\r\n",
                b"221 bye\r\n",
            ],
            client: "EHLO me.test\r\n\
                MAIL FROM:<a@x.test> BODY=BINARYMIME\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\n\
                BDAT 8\r\n01234567QUIT\r\n",
            events: &[
                "ready",
                "0 failed 552 5.3.4 too much",
                "1 failed 552 5.3.4 too much",
                "closed",
            ],
        },
        Case {
            name: "BINARYMIME to a server without it, SMTPUTF8 to a server without it",
            greeting: smtp(),
            msgs: vec![(binary, b"x"), (utf8.clone(), b"x")],
            server: &[
                b"220 mx\r\n",
                b"250-mx\r\n250 CHUNKING\r\n",
                b"250 reset\r\n",
                b"221 bye\r\n",
            ],
            client: "EHLO me.test\r\nRSET\r\nQUIT\r\n",
            events: &[
                "ready",
                "0 failed 554 5.6.3 mx.test[192.0.2.1] does not support BINARYMIME (local)",
                "1 failed 554 5.6.3 mx.test[192.0.2.1] does not support BINARYMIME (local)",
                "0 failed 553 5.6.7 mx.test[192.0.2.1] does not support SMTPUTF8, which this message needs (local)",
                "closed",
            ],
        },
        Case {
            name: "SMTPUTF8 to a server with it",
            greeting: smtp(),
            msgs: vec![(utf8, b"x")],
            server: &[
                b"220 mx\r\n",
                b"250-mx\r\n250 SMTPUTF8\r\n",
                b"250 ok\r\n",
                b"250 ok\r\n",
                b"354 go\r\n",
                b"250 ok\r\n",
                b"221 bye\r\n",
            ],
            client: "EHLO me.test\r\n\
                MAIL FROM:<a@x.test> SMTPUTF8\r\nRCPT TO:<b@y.test>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n",
            events: &["ready", "0 delivered 250 ok (Relayed)", "closed"],
        },
    ]);
}

#[test]
fn starttls() {
    let caps_tls: &[u8] = b"250-mx\r\n250-PIPELINING\r\n250 STARTTLS\r\n";
    check(vec![
        Case {
            name: "offered and wanted: STARTTLS, then EHLO again",
            greeting: greeting(false, TlsPolicy::Opportunistic),
            msgs: vec![(env(&["b@y.test"]), b"x")],
            server: &[
                b"220 mx\r\n",
                caps_tls,
                b"220 2.0.0 go ahead\r\n",
                b"250-mx\r\n250 PIPELINING\r\n",
                b"250 ok\r\n250 ok\r\n354 go\r\n",
                b"250 queued\r\n",
                b"221 bye\r\n",
            ],
            client: "EHLO me.test\r\nSTARTTLS\r\n[TLS]\r\nEHLO me.test\r\n\
                MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n",
            events: &["ready", "0 delivered 250 queued (Relayed)", "closed"],
        },
        Case {
            name: "offered, policy none: plaintext",
            greeting: smtp(),
            msgs: vec![],
            server: &[b"220 mx\r\n", caps_tls, b"221 bye\r\n"],
            client: "EHLO me.test\r\nQUIT\r\n",
            events: &["ready", "closed"],
        },
        Case {
            name: "required but not offered",
            greeting: greeting(false, TlsPolicy::Required),
            msgs: vec![],
            server: &[b"220 mx\r\n", EHLO_PIPE],
            client: "EHLO me.test\r\n",
            events: &[
                "failed: mx.test[192.0.2.1]: TLS: STARTTLS required by policy but not offered",
            ],
        },
        Case {
            name: "verify, but HELO only",
            greeting: greeting(false, TlsPolicy::Verify),
            msgs: vec![],
            server: &[b"220 mx\r\n", b"500 no\r\n", b"250 mx\r\n"],
            client: "EHLO me.test\r\nHELO me.test\r\n",
            events: &[
                "failed: mx.test[192.0.2.1]: TLS: STARTTLS required by policy but not offered",
            ],
        },
        Case {
            name: "offered, then refused",
            greeting: greeting(false, TlsPolicy::Required),
            msgs: vec![],
            server: &[b"220 mx\r\n", caps_tls, b"454 4.7.0 TLS not available\r\n"],
            client: "EHLO me.test\r\nSTARTTLS\r\n",
            events: &[
                "failed: mx.test[192.0.2.1]: TLS: STARTTLS refused: 454 4.7.0 TLS not available",
            ],
        },
        Case {
            name: "offered, then refused, policy may: plaintext on the same connection",
            greeting: greeting(false, TlsPolicy::Opportunistic),
            msgs: vec![(env(&["b@y.test"]), b"x")],
            server: &[
                b"220 mx\r\n",
                caps_tls,
                b"454 4.7.0 TLS not available\r\n",
                b"250 ok\r\n250 ok\r\n354 go\r\n",
                b"250 queued\r\n",
                b"221 bye\r\n",
            ],
            client: "EHLO me.test\r\nSTARTTLS\r\n\
                MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n",
            events: &["ready", "0 delivered 250 queued (Relayed)", "closed"],
        },
        Case {
            name: "refused with 421, policy may: the connection is over",
            greeting: greeting(false, TlsPolicy::Opportunistic),
            msgs: vec![],
            server: &[b"220 mx\r\n", caps_tls, b"421 4.3.2 shutting down\r\n"],
            client: "EHLO me.test\r\nSTARTTLS\r\n",
            events: &["failed: mx.test[192.0.2.1]: TLS: STARTTLS refused: 421 4.3.2 shutting down"],
        },
        Case {
            name: "plaintext after the 220 to STARTTLS is an injection, not a reply",
            greeting: greeting(false, TlsPolicy::Opportunistic),
            msgs: vec![],
            server: &[b"220 mx\r\n", caps_tls, b"220 go ahead\r\n250 injected\r\n"],
            client: "EHLO me.test\r\nSTARTTLS\r\n",
            events: &[
                "failed: mx.test[192.0.2.1]: protocol error: a reply to a command not yet sent",
            ],
        },
    ]);
}

#[test]
fn hostile_replies() {
    let long = format!("250 {}\r\n", "x".repeat(5000)).leak().as_bytes();
    let endless = "250-x\r\n".repeat(300).leak().as_bytes();
    let one = || vec![(env(&["b@y.test"]), &b"x"[..])];
    check(vec![
        Case {
            name: "an overlong line",
            greeting: smtp(),
            msgs: one(),
            server: &[b"220 mx\r\n", long],
            client: "EHLO me.test\r\n",
            events: &["failed: mx.test[192.0.2.1]: protocol error: reply too long"],
        },
        Case {
            name: "an overlong line without its end",
            greeting: smtp(),
            msgs: one(),
            server: &[b"220 mx\r\n", &long[..4500]],
            client: "EHLO me.test\r\n",
            events: &["failed: mx.test[192.0.2.1]: protocol error: reply too long"],
        },
        Case {
            name: "a code out of range",
            greeting: smtp(),
            msgs: one(),
            server: &[b"999 what\r\n"],
            client: "",
            events: &[
                "failed: mx.test[192.0.2.1]: protocol error: malformed reply line: \"999 what\"",
            ],
        },
        Case {
            name: "no code at all",
            greeting: smtp(),
            msgs: one(),
            server: &[b"220 mx\r\n", b"hello there\r\n"],
            client: "EHLO me.test\r\n",
            events: &[
                "failed: mx.test[192.0.2.1]: protocol error: malformed reply line: \"hello there\"",
            ],
        },
        Case {
            name: "a code that changes inside a multi-line reply",
            greeting: smtp(),
            msgs: one(),
            server: &[b"220 mx\r\n", b"250-mx\r\n550 PIPELINING\r\n"],
            client: "EHLO me.test\r\n",
            events: &[
                "failed: mx.test[192.0.2.1]: protocol error: reply code changed inside a multi-line reply (250 then 550)",
            ],
        },
        Case {
            name: "a multi-line reply that never ends, then silence",
            greeting: smtp(),
            msgs: one(),
            server: &[b"220 mx\r\n", b"250-mx\r\n250-PIPELINING\r\n"],
            client: "EHLO me.test\r\n",
            events: &["lost"],
        },
        Case {
            name: "a multi-line reply that never ends, at length",
            greeting: smtp(),
            msgs: one(),
            server: &[b"220 mx\r\n", endless],
            client: "EHLO me.test\r\n",
            events: &["failed: mx.test[192.0.2.1]: protocol error: reply too long"],
        },
        Case {
            name: "a reply before its command: with the greeting",
            greeting: smtp(),
            msgs: one(),
            server: &[b"220 mx\r\n250 mx\r\n"],
            client: "",
            events: &[
                "failed: mx.test[192.0.2.1]: protocol error: a reply to a command not yet sent",
            ],
        },
        Case {
            name: "a reply to a command never sent: one too many after the pipelined DATA",
            greeting: smtp(),
            msgs: one(),
            server: &[
                b"220 mx\r\n",
                EHLO_PIPE,
                b"250 ok\r\n250 ok\r\n354 go\r\n250 2.0.0 queued (before the content!)\r\n",
            ],
            client: "EHLO me.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n",
            events: &[
                "ready",
                "failed: mx.test[192.0.2.1]: protocol error: a reply to a command not yet sent",
            ],
        },
        Case {
            name: "a reply to a command never sent: after the last LMTP reply, before RSET",
            greeting: greeting(true, TlsPolicy::None),
            msgs: vec![(env(&["b@y.test"]), b"x"), (env(&["c@y.test"]), b"x")],
            server: &[
                b"220 lmtp\r\n",
                b"250 lmtp\r\n",
                b"250 ok\r\n",
                b"250 ok\r\n",
                b"354 go\r\n",
                b"250 saved\r\n250 saved again\r\n",
            ],
            client: "LHLO me.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nx\r\n.\r\n",
            events: &[
                "ready",
                "0 delivered 250 saved (Final)",
                "failed: mx.test[192.0.2.1]: protocol error: a reply to a command not yet sent",
            ],
        },
        Case {
            name: "the connection closes mid-transaction",
            greeting: smtp(),
            msgs: one(),
            server: &[b"220 mx\r\n", EHLO_PIPE, b"250 ok\r\n"],
            client: "EHLO me.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n",
            events: &["ready", "lost"],
        },
    ]);
}

#[test]
fn misuse_is_an_error_not_a_panic() {
    let mut m = ClientMachine::new("r".into(), smtp());
    m.send(&env(&["b@y.test"]));
    assert!(matches!(m.poll(), Some(Output::Failed(_))));
    assert!(m.poll().is_none());
    let mut m = ClientMachine::new("r".into(), smtp());
    m.content_sent();
    assert!(matches!(m.poll(), Some(Output::Failed(_))));
    let mut m = ClientMachine::new("r".into(), smtp());
    m.chunk_sent();
    assert!(matches!(m.poll(), Some(Output::Failed(_))));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

    /// Arbitrary bytes, cut anywhere: the machine fails or finishes, never panics or spins.
    #[test]
    fn arbitrary_bytes_never_panic(
        chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..64), 0..24),
        lmtp: bool,
        pipelining_tls: bool,
    ) {
        let tls = if pipelining_tls { TlsPolicy::Opportunistic } else { TlsPolicy::None };
        let chunks: Vec<&[u8]> = chunks.iter().map(|c| c.as_slice()).collect();
        let _ = session(greeting(lmtp, tls), &chunks, &[(env(&["b@y.test", "c@y.test"]), b"x")]);
    }

    /// Plausible reply lines in any order reach the deeper states.
    #[test]
    fn arbitrary_replies_never_panic(
        lines in proptest::collection::vec(
            "(220|221|250|251|354|421|450|452|454|500|502|550|552|554)[ -](PIPELINING|STARTTLS|CHUNKING|BINARYMIME|SMTPUTF8|DSN|SIZE 5|8BITMIME|x)?\r\n",
            0..40,
        ),
        per_read in 1usize..4,
        lmtp: bool,
        body in 0u8..3,
    ) {
        let reads: Vec<Vec<u8>> = lines.chunks(per_read).map(|c| c.concat().into_bytes()).collect();
        let reads: Vec<&[u8]> = reads.iter().map(|c| c.as_slice()).collect();
        let mut e = env(&["b@y.test", "c@y.test"]);
        e.body = [BodyType::SevenBit, BodyType::EightBitMime, BodyType::BinaryMime][body as usize];
        let _ = session(
            greeting(lmtp, TlsPolicy::Opportunistic),
            &reads,
            &[(e.clone(), b"hello"), (e, b"again")],
        );
    }
}
