//! The SMTP/LMTP client machine: a session (greeting, EHLO, two messages with RSET between,
//! QUIT) against any server bytes, cut anywhere. It must never panic, never stall (each
//! step either writes, reads, or ends), and every recipient of a message that ends gets
//! exactly one outcome. The first input byte picks LMTP, HELO, the TLS policy and the
//! read size.
#![no_main]
use config::TlsPolicy;
use delivery::protocol::{ClientMachine, Envelope, EnvelopeRcpt, Greeting, Output};
use libfuzzer_sys::fuzz_target;
use spool::{BodyType, Notify};

fn envelope(body: BodyType) -> Envelope {
    Envelope {
        sender: "s@src.test".into(),
        body,
        smtputf8: false,
        envid: None,
        ret: None,
        size: 100,
        recipients: (0..3)
            .map(|i| EnvelopeRcpt {
                index: i,
                address: format!("r{i}@dst.test"),
                notify: Notify::default(),
                orcpt: None,
            })
            .collect(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&knob, mut server)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(knob >> 3) + 1;
    let mut m = ClientMachine::new(
        "mx.test[192.0.2.1]:25".into(),
        Greeting {
            hostname: "client.test".into(),
            lmtp: knob & 1 != 0,
            helo: knob & 2 == 0,
            tls: if knob & 4 != 0 { TlsPolicy::Opportunistic } else { TlsPolicy::None },
        },
    );
    let mut sent = 0;
    let mut quit = false;
    for _ in 0..100_000 {
        let Some(o) = m.poll() else {
            // Waiting for us: the next message, or the end.
            if sent < 2 {
                sent += 1;
                m.send(&envelope(if sent == 1 { BodyType::SevenBit } else { BodyType::BinaryMime }));
            } else if !quit {
                quit = true;
                m.quit();
            } else {
                return;
            }
            continue;
        };
        match o {
            Output::Write { bytes, .. } => assert!(bytes.ends_with(b"\r\n") || bytes.is_empty()),
            Output::Read(_) => {
                if server.is_empty() {
                    return;
                }
                let n = chunk.min(server.len());
                m.receive(&server[..n]);
                server = &server[n..];
            }
            Output::StartTls => m.tls_established(),
            Output::Content(_) => m.content_sent(),
            Output::ChunkAccepted => m.content_sent(),
            Output::MessageDone(results) => {
                let mut idx: Vec<u16> = results.iter().map(|(i, _)| *i).collect();
                idx.sort_unstable();
                idx.dedup();
                assert_eq!(idx.len(), results.len(), "one outcome per recipient");
                m.rset();
            }
            Output::Failed(_) | Output::Closed => return,
            Output::Received(_) | Output::Ready | Output::RsetDone => {}
        }
    }
    panic!("the client machine never stopped");
});
