//! Milter response framing and decoding: never panics on what a broken or hostile milter
//! sends, and splitting the stream anywhere gives the same responses.
#![no_main]
use libfuzzer_sys::fuzz_target;
use milter_proto::Framer;

fn run(parts: &[&[u8]]) -> Vec<String> {
    let mut f = Framer::new();
    let mut out = Vec::new();
    for p in parts {
        f.push(p);
        loop {
            match f.next_response() {
                Ok(Some(r)) => out.push(format!("{r:?}")),
                Ok(None) => break,
                Err(e) => {
                    out.push(format!("error {e}"));
                    return out;
                }
            }
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
