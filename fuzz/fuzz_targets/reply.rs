//! Reply parser: never panics, and splitting the input anywhere gives the same replies as
//! feeding it at once (the client reads from the network in arbitrary pieces).
#![no_main]
use libfuzzer_sys::fuzz_target;
use smtp_proto::ReplyParser;

fn run(chunks: &[&[u8]]) -> Vec<String> {
    let mut p = ReplyParser::new();
    let mut out = Vec::new();
    for c in chunks {
        p.push(c);
        while let Some(r) = p.next_reply() {
            out.push(match r {
                Ok(r) => {
                    // A parsed reply serializes to bytes that parse back to it.
                    let mut q = ReplyParser::new();
                    q.push(&r.to_bytes());
                    let back = q.next_reply().expect("complete").expect("valid");
                    assert_eq!(back, r);
                    format!("{r:?}")
                }
                Err(e) => format!("error {e:?}"),
            });
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let cut = usize::from(data[0]) % data.len();
    let body = &data[1..];
    let cut = cut.min(body.len());
    assert_eq!(run(&[body]), run(&[&body[..cut], &body[cut..]]));
});
