//! The content policy: never panics; chunking never changes its verdict; BINARYMIME takes
//! anything; content it accepts is CRLF lines without NUL, and its DATA wire form (the
//! client's dot-stuffer) decodes back to it, ending only at the stuffer's terminator.
#![no_main]
use libfuzzer_sys::fuzz_target;
use smtp_proto::{ContentScan, DataDecoder, DotStuffer, check_content};

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let body = &data[1..];
    let cut = usize::from(data[0]) % (body.len() + 1);
    let whole = check_content(body, false);
    let mut s = ContentScan::new(false);
    s.feed(&body[..cut]);
    s.feed(&body[cut..]);
    assert_eq!(s.finish(), whole);
    assert_eq!(check_content(body, true), Ok(()));

    // Whatever the content, its wire form has no bare CR or LF and ends only at the end.
    let mut st = DotStuffer::new();
    let mut wire = Vec::new();
    st.encode(&body[..cut], &mut wire);
    st.encode(&body[cut..], &mut wire);
    st.finish(&mut wire);
    for (i, &b) in wire.iter().enumerate() {
        if b == b'\r' {
            assert_eq!(wire.get(i + 1), Some(&b'\n'), "bare CR on the wire");
        }
        if b == b'\n' {
            assert!(i > 0 && wire[i - 1] == b'\r', "bare LF on the wire");
        }
    }
    let mut d = DataDecoder::new(u64::MAX);
    let mut buf = wire.clone();
    let mut out = Vec::new();
    assert!(d.decode(&mut buf, &mut out).is_some(), "the terminator ends the data");
    assert!(buf.is_empty(), "data ended before the terminator");
    if whole.is_ok() {
        let mut want = body.to_vec();
        if !want.is_empty() && !want.ends_with(b"\r\n") {
            want.extend_from_slice(b"\r\n");
        }
        assert_eq!(out, want, "accepted content goes out unchanged");
    }
});
