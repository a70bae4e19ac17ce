//! Spool record decoder. Random bytes rarely pass the checksum, so the target also builds
//! valid records from its input and then damages them (a flipped byte, a torn tail): the
//! decoder must never panic, never claim more bytes than it has, and give back exactly what
//! was written when nothing was damaged.
#![no_main]
use libfuzzer_sys::fuzz_target;
use spool::record::{Content, Record, decode, encode_message, encode_updates};
use spool::{Envelope, Recipient, TxnId, Update};

fn walk(data: &[u8]) {
    let mut pos = 0;
    while pos < data.len() {
        match decode(&data[pos..]) {
            Ok(Some((_, n))) => {
                assert!(n > 0 && pos + n <= data.len());
                pos += n;
            }
            _ => break,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    walk(data);
    if data.len() < 4 {
        return;
    }
    let (ctl, rest) = data.split_at(4);
    let text = String::from_utf8_lossy(rest).into_owned();
    let env = Envelope {
        id: TxnId(u64::from(ctl[0]) << 40 | rest.len() as u64),
        arrival: u64::from(ctl[1]),
        sender: text.chars().take(64).collect(),
        envid: (ctl[2] & 1 == 1).then(|| text.chars().rev().take(20).collect()),
        ret: None,
        body: Default::default(),
        smtputf8: ctl[2] & 2 == 2,
        client: "fuzz".into(),
        held: ctl[2] & 4 == 4,
        kind: Default::default(),
        recipients: (0..ctl[3] % 4)
            .map(|i| Recipient {
                address: format!("r{i}@{}", text.len()),
                last_error: Some(text.clone()),
                ..Default::default()
            })
            .collect(),
    };
    let mut buf = Vec::new();
    encode_message(&env, Some(rest), 0, &mut buf);
    encode_updates(&[Update::Done { id: env.id }], &mut buf);
    match decode(&buf) {
        Ok(Some((
            Record::Message {
                env: e,
                content: Content::Inline { bytes, .. },
            },
            _,
        ))) => {
            assert_eq!(*e, env);
            assert_eq!(bytes, rest);
        }
        other => panic!("a fresh record must decode: {other:?}"),
    }
    walk(&buf);
    let at = usize::from(ctl[0]) * 7 % buf.len();
    let mut damaged = buf.clone();
    damaged[at] ^= ctl[1] | 1;
    walk(&damaged);
    walk(&buf[..usize::from(ctl[1]) * 3 % buf.len()]);
});
