//! The SMTP server's session machine: any client bytes, cut anywhere, with every action
//! answered as a healthy driver would (milters continue, the spool has room, local parts
//! exist, commits succeed). It must never panic, never ask for an action out of turn, and
//! every byte it writes must be a well-formed reply. The first input byte picks the read
//! size, so the same stream is also tried one byte at a time.
#![no_main]
use std::net::SocketAddr;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use smtp_server::machine::{Action, Answer, Machine, MilterCall, ReadEnd, Settings, Verdict};
use spool::TxnId;

fn settings(trusted: bool, milters: bool) -> Settings {
    Settings {
        hostname: "mx.example".into(),
        banner: "ESMTP postrider".into(),
        max_errors: 10,
        max_message_size: 4_000,
        max_recipients: 5,
        min_free_space: 1000,
        max_hops: 30,
        command_timeout: Duration::from_secs(300),
        data_timeout: Duration::from_secs(600),
        local_domains: vec!["example.org".into()],
        relay_domains: vec!["partner.test".into()],
        trusted,
        milters,
        starttls: true,
        peer: "192.0.2.7:40000".parse::<SocketAddr>().unwrap(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&knob, bytes)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(knob % 64) + 1;
    let mut n = 0x100;
    let mut m = Machine::new(
        settings(knob & 0x40 != 0, knob & 0x80 != 0),
        TxnId(1),
        Box::new(move || {
            n += 1;
            TxnId(n)
        }),
    );
    let mut fed = 0;
    let mut replies = Vec::new();
    // Every action is answered; a machine that keeps asking without reading is stuck.
    for _ in 0..100_000 {
        match m.poll() {
            Action::Read(..) => {
                replies.extend(std::mem::take(m.output()));
                if fed >= bytes.len() {
                    m.answer(Answer::Read(Err(ReadEnd::Closed)));
                    continue;
                }
                let end = (fed + chunk).min(bytes.len());
                m.input().extend_from_slice(&bytes[fed..end]);
                m.answer(Answer::Read(Ok(end - fed)));
                fed = end;
            }
            // An abort is told, not asked: it takes no answer.
            Action::Milter(MilterCall::Abort) => {}
            Action::Milter(MilterCall::Message { .. }) => {
                m.answer(Answer::MessageVerdict(Ok(Verdict::Continue)))
            }
            Action::Milter(_) => m.answer(Answer::Verdict(Verdict::Continue)),
            Action::CheckSpace => m.answer(Answer::FreeSpace(Some(1 << 30))),
            Action::CheckLocal(part) => m.answer(Answer::Local {
                targets: Ok(vec![format!("{part}@example.org")]),
                owner: None,
            }),
            Action::OpenContent { .. } | Action::WriteContent => {
                let _ = m.content();
                m.answer(Answer::Spool(Ok(())))
            }
            Action::DropContent => {}
            Action::Commit(c) => m.answer(Answer::Committed(Ok(cleanup::Accepted::Queued(
                vec![c.env.id],
            )))),
            Action::StartTls => m.tls_started("TLSv1.3".into(), "TLS13_AES_128_GCM_SHA256".into()),
            Action::Close => break,
        }
    }
    replies.extend(std::mem::take(m.output()));
    // Every reply line is `DDD[ -]text\r\n`.
    for line in replies.split_inclusive(|&b| b == b'\n') {
        assert!(line.ends_with(b"\r\n"), "{line:?}");
        assert!(line.len() >= 5 && line[..3].iter().all(u8::is_ascii_digit), "{line:?}");
        assert!(line[3] == b' ' || line[3] == b'-', "{line:?}");
    }
});
