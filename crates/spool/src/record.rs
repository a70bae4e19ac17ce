//! The on-disk record format of the spool's segment log, sans-IO so that it can be tested
//! and fuzzed alone.
//!
//! ```text
//! record  = magic "PR" | kind u8 | reserved u8 | len u32le | crc32c u32le | payload[len]
//! crc     = crc32c(kind | reserved | len | payload)
//! kind 1  = message:  env_len u32le | envelope JSON | 0 | content bytes      (inline)
//!                                                  | 1 | content_len u64le  (content/ID)
//! kind 2  = updates:  JSON array of Update
//! ```
//!
//! A record is valid only if it is complete and its checksum matches, so a write torn by a
//! crash is detected and cut off at recovery instead of being half-believed.

use crate::envelope::{Envelope, Update};

pub const HEADER_LEN: usize = 12;
const MAGIC: [u8; 2] = *b"PR";
const KIND_MESSAGE: u8 = 1;
const KIND_UPDATES: u8 = 2;
/// Records are small (content over the inline limit lives in its own file), so a length
/// beyond this is corruption, not a big message.
pub const MAX_RECORD: usize = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content<'a> {
    /// The content is inside the record, starting `offset` bytes after the record's start.
    Inline { offset: usize, bytes: &'a [u8] },
    /// The content is in `content/ID`, `len` bytes long.
    External { len: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    Message {
        env: Box<Envelope>,
        content: Content<'a>,
    },
    Updates(Vec<Update>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("bad magic")]
    BadMagic,
    #[error("record length {0} is out of range")]
    BadLength(usize),
    #[error("checksum mismatch")]
    BadChecksum,
    #[error("unknown record kind {0}")]
    BadKind(u8),
    #[error("malformed payload: {0}")]
    BadPayload(String),
}

fn frame(kind: u8, payload_parts: &[&[u8]], out: &mut Vec<u8>) {
    let len: usize = payload_parts.iter().map(|p| p.len()).sum();
    let len32 = u32::try_from(len).expect("record payloads are bounded by the inline limit");
    let mut crc = crc32c::crc32c(&[kind, 0]);
    crc = crc32c::crc32c_append(crc, &len32.to_le_bytes());
    for p in payload_parts {
        crc = crc32c::crc32c_append(crc, p);
    }
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[kind, 0]);
    out.extend_from_slice(&len32.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    for p in payload_parts {
        out.extend_from_slice(p);
    }
}

/// Appends a message record; returns the offset of the inline content within `out`.
pub fn encode_message(
    env: &Envelope,
    inline: Option<&[u8]>,
    external_len: u64,
    out: &mut Vec<u8>,
) -> usize {
    let json = serde_json::to_vec(env).expect("envelopes always serialize");
    let env_len = (json.len() as u32).to_le_bytes();
    let start = out.len();
    match inline {
        Some(bytes) => frame(KIND_MESSAGE, &[&env_len, &json, &[0], bytes], out),
        None => frame(
            KIND_MESSAGE,
            &[&env_len, &json, &[1], &external_len.to_le_bytes()],
            out,
        ),
    }
    start + HEADER_LEN + 4 + json.len() + 1
}

pub fn encode_updates(updates: &[Update], out: &mut Vec<u8>) {
    let json = serde_json::to_vec(updates).expect("updates always serialize");
    frame(KIND_UPDATES, &[&json], out);
}

/// Decodes the record at the start of `buf`. `Ok(None)`: `buf` ends inside the record (a
/// torn tail). On success, also returns the record's total length.
pub fn decode(buf: &[u8]) -> Result<Option<(Record<'_>, usize)>, DecodeError> {
    if buf.len() < HEADER_LEN {
        if !MAGIC.starts_with(&buf[..buf.len().min(2)]) {
            return Err(DecodeError::BadMagic);
        }
        return Ok(None);
    }
    if buf[..2] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let kind = buf[2];
    let len = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes")) as usize;
    if len > MAX_RECORD {
        return Err(DecodeError::BadLength(len));
    }
    let want = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes"));
    let total = HEADER_LEN + len;
    if buf.len() < total {
        return Ok(None);
    }
    let payload = &buf[HEADER_LEN..total];
    let crc = crc32c::crc32c_append(crc32c::crc32c(&buf[2..8]), payload);
    if crc != want {
        return Err(DecodeError::BadChecksum);
    }
    let bad = |m: &str| DecodeError::BadPayload(m.to_string());
    let rec = match kind {
        KIND_MESSAGE => {
            if payload.len() < 5 {
                return Err(bad("short message record"));
            }
            let env_len = u32::from_le_bytes(payload[..4].try_into().expect("4 bytes")) as usize;
            let rest = &payload[4..];
            if rest.len() < env_len + 1 {
                return Err(bad("envelope length past the record"));
            }
            let env: Envelope = serde_json::from_slice(&rest[..env_len])
                .map_err(|e| DecodeError::BadPayload(e.to_string()))?;
            let tail = &rest[env_len + 1..];
            let content = match rest[env_len] {
                0 => Content::Inline {
                    offset: HEADER_LEN + 4 + env_len + 1,
                    bytes: tail,
                },
                1 if tail.len() == 8 => Content::External {
                    len: u64::from_le_bytes(tail.try_into().expect("8 bytes")),
                },
                _ => return Err(bad("bad content marker")),
            };
            Record::Message {
                env: Box::new(env),
                content,
            }
        }
        KIND_UPDATES => Record::Updates(
            serde_json::from_slice(payload).map_err(|e| DecodeError::BadPayload(e.to_string()))?,
        ),
        k => return Err(DecodeError::BadKind(k)),
    };
    Ok(Some((rec, total)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TxnId;
    use crate::envelope::*;
    use proptest::prelude::*;

    pub(crate) fn env(id: u64, rcpts: usize) -> Envelope {
        Envelope {
            id: TxnId(id),
            arrival: 1_700_000_000,
            sender: "a@b.test".into(),
            envid: Some("x+2By".into()),
            ret: Some(DsnRet::Headers),
            body: BodyType::EightBitMime,
            smtputf8: false,
            client: "c [127.0.0.1]".into(),
            held: false,
            kind: Default::default(),
            recipients: (0..rcpts)
                .map(|i| Recipient {
                    address: format!("r{i}@d.test"),
                    ..Default::default()
                })
                .collect(),
        }
    }

    #[test]
    fn round_trip_and_torn_tails() {
        let mut buf = Vec::new();
        let off = encode_message(&env(1, 2), Some(b"Subject: x\r\n\r\nbody\r\n"), 0, &mut buf);
        let first = buf.len();
        encode_updates(&[Update::Done { id: TxnId(1) }], &mut buf);
        let (rec, n) = decode(&buf).unwrap().unwrap();
        assert_eq!(n, first);
        match rec {
            Record::Message {
                env: e,
                content: Content::Inline { offset, bytes },
            } => {
                assert_eq!(*e, env(1, 2));
                assert_eq!(offset, off);
                assert_eq!(&buf[offset..offset + bytes.len()], bytes);
            }
            other => panic!("{other:?}"),
        }
        let (rec, m) = decode(&buf[n..]).unwrap().unwrap();
        assert_eq!(rec, Record::Updates(vec![Update::Done { id: TxnId(1) }]));
        assert_eq!(n + m, buf.len());
        // Every strict prefix of a record is a torn tail, never a record.
        for cut in 0..first {
            assert_eq!(decode(&buf[..cut]), Ok(None), "cut at {cut}");
        }
        // Any flipped byte is detected.
        for i in 2..first {
            let mut b = buf.clone();
            b[i] ^= 0x40;
            assert!(
                !matches!(decode(&b), Ok(Some((_, x))) if x == first),
                "flip at {i}"
            );
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&data);
        }

        #[test]
        fn external_round_trip(id in any::<u64>(), len in any::<u64>(), n in 0usize..5) {
            let mut buf = Vec::new();
            encode_message(&env(id, n), None, len, &mut buf);
            let (rec, used) = decode(&buf).unwrap().unwrap();
            prop_assert_eq!(used, buf.len());
            prop_assert_eq!(rec, Record::Message { env: Box::new(env(id, n)), content: Content::External { len } });
        }
    }
}
