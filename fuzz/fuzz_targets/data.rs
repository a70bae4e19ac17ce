//! DATA decoder: never panics; chunking never changes the result (streaming is exact); and
//! any CRLF-line content dot-stuffed by the client side decodes back to itself.
#![no_main]
use libfuzzer_sys::fuzz_target;
use smtp_proto::{DataDecoder, DotStuffer};

fn decode(chunks: &[&[u8]]) -> (Vec<u8>, Option<String>, Vec<u8>) {
    let mut d = DataDecoder::new(1 << 20);
    let mut out = Vec::new();
    let mut buf = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        buf.extend_from_slice(c);
        if let Some(end) = d.decode(&mut buf, &mut out) {
            // What follows the end belongs to the next command, however it arrived.
            for later in &chunks[i + 1..] {
                buf.extend_from_slice(later);
            }
            return (out, Some(format!("{end:?}")), buf);
        }
    }
    (out, None, buf)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let body = &data[2..];
    let a = usize::from(data[0]) % (body.len() + 1);
    let b = (a + usize::from(data[1])).min(body.len());
    assert_eq!(
        decode(&[body]),
        decode(&[&body[..a], &body[a..b], &body[b..]])
    );

    // Clean content: the input's lines, without CR or NUL, each ended by CRLF.
    let mut content = Vec::new();
    for line in body.split(|&x| x == b'\n') {
        content.extend(line.iter().copied().filter(|&x| x != b'\r' && x != 0));
        content.extend_from_slice(b"\r\n");
    }
    let mut s = DotStuffer::new();
    let mut wire = Vec::new();
    s.encode(&content, &mut wire);
    s.finish(&mut wire);
    let (again, end, rest) = decode(&[&wire]);
    assert!(end.is_some(), "the stuffer's terminator must end the data");
    assert!(rest.is_empty());
    assert_eq!(again, content);
});
