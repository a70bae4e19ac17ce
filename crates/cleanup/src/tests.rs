//! Cleanup against a real spool on a temporary directory, as transcripts: an envelope,
//! content and milter changes go in; the reply, and what was committed and announced to the
//! queue (envelope and content bytes), come out. The hostile cases are the point: content
//! that breaks the policy, milters that add or remove too much, non-UTF-8 headers.

use std::io::Read;
use std::sync::Mutex;

use message::HeaderChange;
use milter::Changes;
use spool::{BodyType, MessageRef, Recipient, SpoolConfig, SpoolError};

use super::*;

/// What the queue was told: each arrival with the content the spool holds for it.
#[derive(Default)]
struct Recorder {
    got: Mutex<Vec<(Envelope, MessageRef, u64)>>,
}

impl Arrivals for Recorder {
    async fn arrived(&self, env: Envelope, mref: MessageRef, size: u64) {
        self.got.lock().unwrap().push((env, mref, size));
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn cfg() -> Settings {
    Settings {
        hostname: "mx.example.org".into(),
        max_hops: 3,
    }
}

fn smtp() -> Origin {
    Origin::Smtp(SmtpTrace {
        helo: Some("client.test".into()),
        client_ip: "192.0.2.7".parse().unwrap(),
        esmtp: true,
        tls: None,
    })
}

fn local() -> Origin {
    Origin::Local {
        uid: 1000,
        via: "pickup".into(),
    }
}

fn envelope(id: TxnId, sender: &str, rcpts: &[&str]) -> Envelope {
    Envelope {
        id,
        arrival: 1_700_000_000,
        sender: sender.into(),
        envid: None,
        ret: None,
        body: BodyType::EightBitMime,
        smtputf8: false,
        client: "client.test [192.0.2.7]".into(),
        held: false,
        kind: Default::default(),
        recipients: rcpts
            .iter()
            .map(|a| Recipient {
                address: (*a).into(),
                ..Default::default()
            })
            .collect(),
    }
}

/// One committed message as the queue saw it.
#[derive(Debug, PartialEq, Eq)]
struct Queued {
    sender: String,
    rcpts: Vec<String>,
    held: bool,
    content: Vec<u8>,
}

fn queued(sender: &str, rcpts: &[&str], content: &[u8]) -> Queued {
    Queued {
        sender: sender.into(),
        rcpts: rcpts.iter().map(|r| r.to_string()).collect(),
        held: false,
        content: content.to_vec(),
    }
}

struct Case {
    name: &'static str,
    origin: Origin,
    /// Spooled as SMTP streams it (with the hop count the session's scan saw), or whole.
    spooled: Option<usize>,
    sender: &'static str,
    rcpts: &'static [&'static str],
    content: &'static [u8],
    changes: Option<Changes>,
    owners: &'static [(&'static str, &'static str)],
    /// `{id}` is the message's queue id, `{1}` the first list copy's.
    reply: &'static str,
    queued: Vec<Queued>,
}

impl Default for Case {
    fn default() -> Self {
        Case {
            name: "",
            origin: smtp(),
            spooled: Some(0),
            sender: "s@src.test",
            rcpts: &["r@dst.test"],
            content: b"Subject: hi\r\n\r\nbody\r\n",
            changes: None,
            owners: &[],
            reply: "250 2.0.0 Ok: queued as {id}",
            queued: vec![],
        }
    }
}

/// Our own trace field, which carries the date: cut off before comparing.
fn without_trace(content: &[u8]) -> &[u8] {
    assert!(
        content.starts_with(
            b"Received: by mx.example.org (postrider pickup, from userid 1000)\r\n\tid "
        )
    );
    let mut at = 0;
    loop {
        let end = at + content[at..].windows(2).position(|w| w == b"\r\n").unwrap() + 2;
        at = end;
        if content.get(at) != Some(&b'\t') {
            return &content[at..];
        }
    }
}

fn run(case: Case) {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = spool::open(SpoolConfig::new(dir.path())).unwrap();
    let c = Cleanup::new(spool.clone(), Recorder::default(), Arc::default());
    let cfg = cfg();
    let rt = rt();
    let (reply, id) = rt.block_on(async {
        let id = spool.ids().next();
        let content = match case.spooled {
            Some(hops) => {
                let mut w = spool.content_writer(id);
                w.write(case.content).await.unwrap();
                Content::Spooled { writer: w, hops }
            }
            None => Content::Whole(case.content),
        };
        let msg = Incoming {
            env: envelope(id, case.sender, case.rcpts),
            content,
            origin: case.origin.clone(),
            changes: case.changes.clone(),
            owners: case
                .owners
                .iter()
                .map(|(a, o)| (a.to_string(), o.to_string()))
                .collect(),
        };
        let r = match c.commit(&cfg, msg).await {
            Ok(a) => a.reply(),
            Err(e) => e.reply(),
        };
        (r.to_string(), id)
    });
    let got: Vec<(Envelope, MessageRef, u64)> = std::mem::take(&mut c.arrivals.got.lock().unwrap());
    let mut expected_reply = case.reply.replace("{id}", &id.to_string());
    // The original is announced last, after the copies it names.
    if let Some((copy, _, _)) = got.iter().find(|(e, _, _)| e.id != id) {
        expected_reply = expected_reply.replace("{1}", &copy.id.to_string());
    }
    assert_eq!(reply, expected_reply, "{}: reply", case.name);
    let seen: Vec<Queued> = got
        .iter()
        .map(|(env, mref, size)| {
            let mut bytes = Vec::new();
            spool
                .open_content(mref)
                .unwrap()
                .read_to_end(&mut bytes)
                .unwrap();
            assert_eq!(bytes.len() as u64, *size, "{}: size", case.name);
            let content = match case.spooled {
                Some(_) => bytes,
                None => without_trace(&bytes).to_vec(),
            };
            Queued {
                sender: env.sender.clone(),
                rcpts: env.recipients.iter().map(|r| r.address.clone()).collect(),
                held: env.held,
                content,
            }
        })
        .collect();
    assert_eq!(seen, case.queued, "{}: queued", case.name);
    assert_eq!(
        c.counters()
            .received
            .load(std::sync::atomic::Ordering::Relaxed),
        got.len() as u64,
        "{}: counted",
        case.name
    );
}

const MSG: &[u8] = b"Subject: hi\r\n\r\nbody\r\n";

#[test]
fn plain_messages_from_each_entry() {
    run(Case {
        name: "smtp",
        queued: vec![queued("s@src.test", &["r@dst.test"], MSG)],
        ..Default::default()
    });
    run(Case {
        name: "local, whole",
        origin: local(),
        spooled: None,
        queued: vec![queued("s@src.test", &["r@dst.test"], MSG)],
        ..Default::default()
    });
}

#[test]
fn local_content_breaking_the_policy_is_refused_and_nothing_queued() {
    for (name, content, reply) in [
        (
            "bare LF",
            &b"Subject: hi\n\nbody\n"[..],
            "550 5.6.11 Message contains bare <LF> (SMTP smuggling protection)",
        ),
        (
            "bare CR",
            b"Subject: hi\r\n\r\nbo\rdy\r\n",
            "550 5.6.11 Message contains bare <CR> (SMTP smuggling protection)",
        ),
        (
            "NUL",
            b"Subject: hi\r\n\r\nbo\0dy\r\n",
            "550 5.6.11 Message contains NUL octet (SMTP smuggling protection)",
        ),
        (
            "smuggled end of data",
            b"Subject: hi\r\n\r\nx\n.\r\nMAIL FROM:<a@b>\r\n",
            "550 5.6.11 Message contains bare <LF> (SMTP smuggling protection)",
        ),
    ] {
        run(Case {
            name,
            origin: local(),
            spooled: None,
            content,
            reply,
            ..Default::default()
        });
    }
    let long = Box::leak(
        format!("Subject: hi\r\n\r\n{}\r\n", "x".repeat(1001))
            .into_bytes()
            .into_boxed_slice(),
    );
    run(Case {
        name: "long line",
        origin: local(),
        spooled: None,
        content: long,
        reply: "552 5.6.0 Message has a line longer than 1000 octets",
        ..Default::default()
    });
}

#[test]
fn hop_count_at_the_limit_is_a_loop() {
    const TWO: &[u8] = b"Received: from a\r\nReceived: from b\r\n\r\nx\r\n";
    const THREE: &[u8] = b"Received: from a\r\nReceived: from b\r\nReceived: from c\r\n\r\nx\r\n";
    let looped = "554 5.4.6 Too many hops: mail loop detected";
    run(Case {
        name: "smtp, below",
        spooled: Some(2),
        content: TWO,
        queued: vec![queued("s@src.test", &["r@dst.test"], TWO)],
        ..Default::default()
    });
    run(Case {
        name: "smtp, at",
        spooled: Some(3),
        content: THREE,
        reply: looped,
        ..Default::default()
    });
    run(Case {
        name: "local, below",
        origin: local(),
        spooled: None,
        content: TWO,
        queued: vec![queued("s@src.test", &["r@dst.test"], TWO)],
        ..Default::default()
    });
    run(Case {
        name: "local, at",
        origin: local(),
        spooled: None,
        content: THREE,
        reply: looped,
        ..Default::default()
    });
}

#[test]
fn milter_recipient_changes_are_capped_and_an_empty_list_discards() {
    let many: Vec<String> = (0..config::MAX_RECIPIENTS)
        .map(|i| format!("<m{i}@dst.test>"))
        .collect();
    run(Case {
        name: "past 65535",
        changes: Some(Changes {
            add_rcpts: many.clone(),
            ..Default::default()
        }),
        reply: "550 5.5.3 Too many recipients: a message has at most 65535",
        ..Default::default()
    });
    // Exactly the limit is fine: one removed, 65535 added.
    let r = run_count(Changes {
        add_rcpts: many,
        del_rcpts: vec!["<R@DST.TEST>".into()],
        ..Default::default()
    });
    assert_eq!(r, config::MAX_RECIPIENTS);
    run(Case {
        name: "all removed",
        rcpts: &["a@dst.test", "b@dst.test"],
        changes: Some(Changes {
            del_rcpts: vec!["<a@dst.test>".into(), "B@dst.test".into()],
            ..Default::default()
        }),
        reply: "250 2.0.0 Ok: discarded as {id}",
        ..Default::default()
    });
    run(Case {
        name: "sender, recipient swap, quarantine",
        changes: Some(Changes {
            add_rcpts: vec!["<new@dst.test>".into()],
            del_rcpts: vec!["<r@dst.test>".into()],
            from: Some("<other@src.test>".into()),
            quarantine: Some("suspicious".into()),
            ..Default::default()
        }),
        queued: vec![Queued {
            held: true,
            ..queued("other@src.test", &["new@dst.test"], MSG)
        }],
        ..Default::default()
    });
}

/// The number of recipients queued after `changes` on a one-recipient message.
fn run_count(changes: Changes) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = spool::open(SpoolConfig::new(dir.path())).unwrap();
    let c = Cleanup::new(spool.clone(), Recorder::default(), Arc::default());
    rt().block_on(async {
        let id = spool.ids().next();
        let mut w = spool.content_writer(id);
        w.write(MSG).await.unwrap();
        let msg = Incoming {
            env: envelope(id, "s@src.test", &["r@dst.test"]),
            content: Content::Spooled { writer: w, hops: 0 },
            origin: smtp(),
            changes: Some(changes),
            owners: vec![],
        };
        c.commit(&cfg(), msg).await.unwrap();
    });
    let got = c.arrivals.got.lock().unwrap();
    got[0].0.recipients.len()
}

#[test]
fn header_edits_are_byte_exact_on_non_utf8_headers() {
    const RAW: &[u8] =
        b"Subject: caf\xe9\r\nX-Old: 1\r\nX-Bin: \xff\xfe\r\n folded \x80\r\n\r\nbody \xff\r\n";
    run(Case {
        name: "delete one, add one",
        content: RAW,
        changes: Some(Changes {
            headers: vec![
                HeaderChange::Change {
                    index: 1,
                    name: "X-Old".into(),
                    value: String::new(),
                },
                HeaderChange::Add {
                    name: "X-Spam".into(),
                    value: "yes".into(),
                },
            ],
            ..Default::default()
        }),
        queued: vec![queued(
            "s@src.test",
            &["r@dst.test"],
            b"Subject: caf\xe9\r\nX-Bin: \xff\xfe\r\n folded \x80\r\nX-Spam: yes\r\n\r\nbody \xff\r\n",
        )],
        ..Default::default()
    });
    run(Case {
        name: "new body with bare LF gets CRLF",
        content: RAW,
        changes: Some(Changes {
            body: Some(b"one\ntwo\r\nthree\n".to_vec()),
            ..Default::default()
        }),
        queued: vec![queued(
            "s@src.test",
            &["r@dst.test"],
            b"Subject: caf\xe9\r\nX-Old: 1\r\nX-Bin: \xff\xfe\r\n folded \x80\r\n\r\none\r\ntwo\r\nthree\r\n",
        )],
        ..Default::default()
    });
}

#[test]
fn list_recipients_get_a_copy_from_the_owner() {
    run(Case {
        name: "some from the list",
        rcpts: &["a@dst.test", "m1@dst.test", "m2@dst.test"],
        owners: &[
            ("m1@dst.test", "owner-list@dst.test"),
            ("M2@dst.test", "owner-list@dst.test"),
        ],
        reply: "250 2.0.0 Ok: queued as {id} {1}",
        queued: vec![
            queued("owner-list@dst.test", &["m1@dst.test", "m2@dst.test"], MSG),
            queued("s@src.test", &["a@dst.test"], MSG),
        ],
        ..Default::default()
    });
    run(Case {
        name: "all from the list: only the copy",
        rcpts: &["m1@dst.test"],
        owners: &[("m1@dst.test", "owner-list@dst.test")],
        reply: "250 2.0.0 Ok: queued as {1}",
        queued: vec![queued("owner-list@dst.test", &["m1@dst.test"], MSG)],
        ..Default::default()
    });
}

#[test]
fn spool_errors_are_temporary_and_name_a_full_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = spool::open(SpoolConfig::new(dir.path())).unwrap();
    let c = Cleanup::new(spool.clone(), Recorder::default(), Arc::default());
    let r = rt().block_on(async {
        spool.shutdown().await;
        let id = spool.ids().next();
        let msg = Incoming {
            env: envelope(id, "s@src.test", &["r@dst.test"]),
            content: Content::Whole(MSG),
            origin: local(),
            changes: None,
            owners: vec![],
        };
        c.commit(&cfg(), msg).await.unwrap_err()
    });
    assert!(
        matches!(r, CleanupError::Spool(SpoolError::Closed)),
        "{r:?}"
    );
    assert_eq!(
        r.reply().to_string(),
        "451 4.3.0 Local error in processing; try again later"
    );
    assert!(c.arrivals.got.lock().unwrap().is_empty());
    let full = CleanupError::Spool(SpoolError::Write {
        no_space: true,
        message: "No space left on device".into(),
    });
    assert_eq!(
        full.reply().to_string(),
        "452 4.3.1 Insufficient system storage"
    );
}

#[test]
fn the_trace_line_says_how_the_message_came() {
    let dir = tempfile::tempdir().unwrap();
    let id = spool::open(SpoolConfig::new(dir.path()))
        .unwrap()
        .0
        .ids()
        .next();
    let t = trace_header("mx.example.org", &smtp(), id, Some("r@dst.test"));
    assert!(
        t.starts_with(&format!(
            "Received: from client.test ([192.0.2.7])\r\n\tby mx.example.org (postrider) with ESMTP\r\n\tid {id}\r\n\tfor <r@dst.test>;\r\n\t"
        )),
        "{t}"
    );
    let t = trace_header("mx.example.org", &local(), id, None);
    assert!(
        t.starts_with(&format!(
            "Received: by mx.example.org (postrider pickup, from userid 1000)\r\n\tid {id}; "
        )),
        "{t}"
    );
    assert!(t.ends_with("\r\n"));
}
