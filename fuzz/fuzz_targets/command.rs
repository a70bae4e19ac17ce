//! Command parser: never panics; whatever parses re-serializes to a line that parses back
//! to the same command; errors always map to a 5xx reply.
#![no_main]
use libfuzzer_sys::fuzz_target;
use smtp_proto::Command;

fuzz_target!(|line: &[u8]| {
    match Command::parse(line) {
        Ok(c) => {
            let again = c.to_line();
            assert!(again.ends_with("\r\n"));
            let reparsed = Command::parse(again[..again.len() - 2].as_bytes());
            assert_eq!(reparsed.as_ref(), Ok(&c), "{again:?}");
        }
        Err(e) => assert!(e.reply().code() >= 500),
    }
});
