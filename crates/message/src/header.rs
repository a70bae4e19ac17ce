//! The header section of a message as it was received: reading it (bounded), splitting it
//! into fields byte for byte, and editing it the way milters ask, without touching the
//! octets of any field no edit names. One reader for every part of the program that looks
//! at headers (cleanup, milters, DSNs).

use std::io::Read;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderChange {
    Add {
        name: String,
        value: String,
    },
    Insert {
        index: u32,
        name: String,
        value: String,
    },
    /// The `index`th header called `name` (from 1); an empty value deletes it.
    Change {
        index: u32,
        name: String,
        value: String,
    },
}

/// Headers past this are treated as body: a message without a blank line must not be read
/// into memory whole.
const MAX_HEADER_SECTION: usize = 1 << 20;

/// Reads through the blank line that ends the header section (from a buffered reader).
pub fn read_header_section(r: &mut dyn Read) -> Vec<u8> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head != b"\r\n" && head.len() < MAX_HEADER_SECTION {
        match r.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    head
}

/// One field of a header section as it was received: its name (the bytes before the colon,
/// white space before the colon dropped; `None` for a line without a colon) and every octet
/// of it, continuation lines and CRLFs included.
struct Field {
    name: Option<Vec<u8>>,
    raw: Vec<u8>,
}

/// Splits a header section into its fields, byte for byte, and what follows them (the blank
/// line, or a partial line when the section was cut at [`MAX_HEADER_SECTION`]).
fn split_fields(head: &[u8]) -> (Vec<Field>, &[u8]) {
    let mut fields: Vec<Field> = Vec::new();
    let mut pos = 0;
    while pos < head.len() {
        let Some(nl) = head[pos..].iter().position(|&b| b == b'\n') else {
            break;
        };
        let line = &head[pos..pos + nl + 1];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        match fields.last_mut() {
            Some(last) if line[0] == b' ' || line[0] == b'\t' => last.raw.extend_from_slice(line),
            _ => {
                let name = line.iter().position(|&b| b == b':').map(|c| {
                    let mut n = &line[..c];
                    while let [rest @ .., b' ' | b'\t'] = n {
                        n = rest;
                    }
                    n.to_vec()
                });
                fields.push(Field {
                    name,
                    raw: line.to_vec(),
                });
            }
        }
        pos += nl + 1;
    }
    (fields, &head[pos..])
}

/// The header fields as (name, value) text for the milters' header stage; folded lines stay
/// in the value with their CRLF. Lines without a colon are not fields and are not sent.
pub fn parse_headers(head: &[u8]) -> Vec<(String, String)> {
    split_fields(head)
        .0
        .into_iter()
        .filter_map(|f| {
            let name = f.name?;
            let colon = f.raw.iter().position(|&b| b == b':')?;
            let value = f.raw[colon + 1..]
                .strip_suffix(b"\r\n")
                .unwrap_or(&f.raw[colon + 1..]);
            Some((
                String::from_utf8_lossy(&name).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            ))
        })
        .collect()
}

fn new_field(name: &[u8], value: &str) -> Field {
    let mut raw = name.to_vec();
    raw.extend_from_slice(b": ");
    // Milters send LF line breaks inside values; mail needs CRLF.
    raw.extend_from_slice(value.replace("\r\n", "\n").replace('\n', "\r\n").as_bytes());
    raw.extend_from_slice(b"\r\n");
    Field {
        name: Some(name.to_vec()),
        raw,
    }
}

/// Rebuilds the header section with the milters' changes (sendmail's semantics: add
/// appends, insert puts before the `index`th header (0 = first), change/delete the
/// `index`th header of that name). Byte-exact: every field no change names keeps its
/// octets (non-UTF-8, odd lines without a colon, folding); only edited fields differ.
pub fn apply_headers(head: &[u8], changes: &[HeaderChange]) -> Vec<u8> {
    let (mut fields, tail) = split_fields(head);
    for ch in changes {
        match ch {
            HeaderChange::Add { name, value } => fields.push(new_field(name.as_bytes(), value)),
            HeaderChange::Insert { index, name, value } => {
                let at = (*index as usize).min(fields.len());
                fields.insert(at, new_field(name.as_bytes(), value));
            }
            HeaderChange::Change { index, name, value } => {
                let pos = fields
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| {
                        f.name
                            .as_deref()
                            .is_some_and(|n| n.eq_ignore_ascii_case(name.as_bytes()))
                    })
                    .nth((*index as usize).saturating_sub(1))
                    .map(|(i, _)| i);
                match (pos, value.is_empty()) {
                    (Some(i), true) => {
                        fields.remove(i);
                    }
                    (Some(i), false) => {
                        let original = fields[i].name.clone().unwrap_or_default();
                        fields[i] = new_field(&original, value);
                    }
                    (None, false) => fields.push(new_field(name.as_bytes(), value)),
                    (None, true) => {}
                }
            }
        }
    }
    let mut out = Vec::with_capacity(head.len() + 256);
    for f in fields {
        out.extend_from_slice(&f.raw);
    }
    if tail.is_empty() {
        // The content had no body: the section still needs its end.
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(tail);
    }
    out
}

/// The header section of a message (through the blank line), for RET=HDRS.
pub fn header_section(content: &[u8]) -> &[u8] {
    match content.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => &content[..i + 2],
        None => content,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_changes_follow_sendmail() {
        let head = b"Received: from x\r\n\tby y\r\nSubject: hi\r\nX-A: 1\r\nX-A: 2\r\n\r\n";
        let out = apply_headers(
            head,
            &[
                HeaderChange::Add {
                    name: "X-New".into(),
                    value: "v".into(),
                },
                HeaderChange::Change {
                    index: 2,
                    name: "x-a".into(),
                    value: "".into(),
                },
                HeaderChange::Change {
                    index: 1,
                    name: "Subject".into(),
                    value: "changed".into(),
                },
                HeaderChange::Insert {
                    index: 0,
                    name: "X-First".into(),
                    value: "0".into(),
                },
            ],
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "X-First: 0\r\nReceived: from x\r\n\tby y\r\nSubject: changed\r\nX-A: 1\r\nX-New: v\r\n\r\n"
        );
    }

    #[test]
    fn header_edits_are_byte_exact() {
        let head: &[u8] = b"Received: from x\r\n\tby y\r\nSubject: caf\xe9 \xff\r\nnot a header line\r\nX-A : 1\r\nX-Bin: \x80\x81\r\n\r\n";
        let out = apply_headers(
            head,
            &[HeaderChange::Change {
                index: 1,
                name: "x-a".into(),
                value: "2".into(),
            }],
        );
        assert_eq!(
            out,
            &b"Received: from x\r\n\tby y\r\nSubject: caf\xe9 \xff\r\nnot a header line\r\nX-A: 2\r\nX-Bin: \x80\x81\r\n\r\n"[..]
        );
        assert_eq!(apply_headers(head, &[]), head, "no change, no difference");
        let cut: &[u8] = b"A: 1\r\nB: partial";
        assert_eq!(
            apply_headers(cut, &[]),
            cut,
            "a cut section stays cut, no blank line added"
        );
    }

    proptest::proptest! {
        #[test]
        fn header_edits_keep_a_header_section(
            head in "([A-Za-z-]{1,10}: [ -~]{0,20}\r\n( [ -~]{1,10}\r\n)?){0,6}\r\n",
            name in "[A-Za-z-]{1,10}",
            value in "[ -~]{0,20}",
            index in 0u32..8,
        ) {
            let changes = [
                HeaderChange::Add { name: name.clone(), value: value.clone() },
                HeaderChange::Insert { index, name: name.clone(), value: value.clone() },
                HeaderChange::Change { index, name: name.clone(), value: String::new() },
            ];
            let out = apply_headers(head.as_bytes(), &changes);
            proptest::prop_assert!(out.ends_with(b"\r\n\r\n") || out == b"\r\n");
            proptest::prop_assert_eq!(&apply_headers(head.as_bytes(), &[]), head.as_bytes());
            // Every line of the result is a header or a continuation: nothing leaks into the body.
            let text = String::from_utf8(out).unwrap();
            for line in text.trim_end_matches("\r\n").split("\r\n").filter(|l| !l.is_empty()) {
                proptest::prop_assert!(line.starts_with([' ', '\t']) || line.contains(':'), "{line:?}");
            }
        }

        #[test]
        fn header_section_reading_is_bounded(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000)) {
            let head = read_header_section(&mut &data[..]);
            proptest::prop_assert!(head.len() <= data.len());
            proptest::prop_assert!(data.starts_with(&head));
        }
    }
}
