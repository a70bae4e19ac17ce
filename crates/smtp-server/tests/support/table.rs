//! Transcript tables: a row is client bytes in (and how the scripted world answers),
//! exact reply bytes out. `check` also runs every row split at every byte boundary and one
//! byte per read: framing must not depend on how the client's bytes arrive.

#![allow(dead_code)]

use smtp_proto::Reply;
use smtp_server::machine::Settings;

use super::harness::{self, GREETING, World, ehlo, id, run_chunks, settings};
pub const OK: &str = "250 2.0.0 Ok\r\n";
pub const MAIL_OK: &str = "250 2.1.0 Ok\r\n";
pub const RCPT_OK: &str = "250 2.1.5 Ok\r\n";
pub const GO_AHEAD: &str = "354 End data with <CR><LF>.<CR><LF>\r\n";
pub const BYE: &str = "221 2.0.0 mx.example closing connection\r\n";
pub const NEED_HELO: &str = "503 5.5.1 Error: send HELO/EHLO first\r\n";
pub const NEED_MAIL: &str = "503 5.5.1 Error: need MAIL command\r\n";
pub const NO_RCPTS: &str = "554 5.5.1 Error: no valid recipients\r\n";
pub const TOO_BIG: &str = "552 5.3.4 Message size exceeds fixed limit\r\n";
pub const NO_SPACE: &str = "452 4.3.1 Insufficient system storage\r\n";
pub const LOCAL_ERROR: &str = "451 4.3.0 Local error in processing; try again later\r\n";
pub const BARE_LF: &str = "550 5.6.11 Message contains bare <LF> (SMTP smuggling protection)\r\n";

/// EHLO, MAIL and one local recipient.
pub const TXN: &str = "EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@example.org>\r\n";

pub fn txn_ok() -> String {
    format!("{}{MAIL_OK}{RCPT_OK}", ehlo(10_000, false))
}

pub fn queued(n: u64) -> String {
    format!("250 2.0.0 Ok: queued as {}\r\n", id(n))
}

pub fn reply(code: u16, status: &str, text: &str) -> Reply {
    Reply::new(code, status.parse().ok(), text)
}

pub struct Case {
    name: &'static str,
    set: fn(&mut Settings),
    world: fn(&mut World),
    chunks: Vec<Vec<u8>>,
    expect: String,
    closed: bool,
    split: bool,
}

pub fn case(name: &'static str, input: impl AsRef<[u8]>, expect: impl AsRef<str>) -> Case {
    Case {
        name,
        set: |_| {},
        world: |_| {},
        chunks: vec![input.as_ref().to_vec()],
        expect: format!("{GREETING}{}", expect.as_ref()),
        closed: false,
        split: true,
    }
}

impl Case {
    pub fn set(mut self, f: fn(&mut Settings)) -> Self {
        self.set = f;
        self
    }
    pub fn world(mut self, f: fn(&mut World)) -> Self {
        self.world = f;
        self
    }
    pub fn closes(mut self) -> Self {
        self.closed = true;
        self
    }
    /// More reads after the first; the row no longer runs split (STARTTLS drops what was
    /// pipelined behind it in the same read, so there the split matters by design).
    pub fn then(mut self, input: impl AsRef<[u8]>) -> Self {
        self.chunks.push(input.as_ref().to_vec());
        self.split = false;
        self
    }
}

pub fn run_case(c: &Case, chunks: &[&[u8]]) -> (harness::Run, World) {
    let mut set = settings();
    (c.set)(&mut set);
    let mut w = World::default();
    (c.world)(&mut w);
    let r = run_chunks(set, &mut w, chunks);
    (r, w)
}

pub fn check(cases: Vec<Case>) {
    for c in &cases {
        let chunks: Vec<&[u8]> = c.chunks.iter().map(Vec::as_slice).collect();
        let (r, w) = run_case(c, &chunks);
        assert_eq!(r.text(), c.expect, "{}", c.name);
        assert_eq!(r.closed, c.closed, "{}: closed", c.name);
        if !c.split {
            continue;
        }
        let input = &c.chunks[0];
        for cut in 1..input.len() {
            let (s, sw) = run_case(c, &[&input[..cut], &input[cut..]]);
            assert_eq!(s.text(), c.expect, "{} split at {cut}", c.name);
            assert_eq!(sw.actions, w.actions, "{} split at {cut}", c.name);
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        let (s, sw) = run_case(c, &bytes);
        assert_eq!(s.text(), c.expect, "{} byte by byte", c.name);
        assert_eq!(sw.actions, w.actions, "{} byte by byte", c.name);
    }
}

impl Case {
    pub fn expect_more(mut self, more: &str) -> Self {
        self.expect.push_str(more);
        self
    }
}
