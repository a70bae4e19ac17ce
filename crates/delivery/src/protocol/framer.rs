//! How content goes on the wire once the machine has chosen: dot-stuffed DATA with its
//! final dot, or `BDAT n` chunks.

use smtp_proto::DotStuffer;

use super::Framing;

/// Frames content for the wire: dot-stuffing for DATA, a `BDAT n` header per chunk. Pure
/// like the machine, so both drivers frame alike.
#[derive(Debug, Clone)]
pub enum Framer {
    Data(DotStuffer),
    Bdat,
}

impl Framer {
    pub fn new(framing: Framing) -> Self {
        match framing {
            Framing::Data => Framer::Data(DotStuffer::new()),
            Framing::Bdat => Framer::Bdat,
        }
    }

    /// Appends one chunk's wire form; with BDAT the chunk then needs its reply
    /// ([`ClientMachine::chunk_sent`]).
    pub fn encode(&mut self, chunk: &[u8], wire: &mut Vec<u8>) {
        match self {
            Framer::Data(s) => s.encode(chunk, wire),
            Framer::Bdat => {
                wire.extend_from_slice(format!("BDAT {}\r\n", chunk.len()).as_bytes());
                wire.extend_from_slice(chunk);
            }
        }
    }

    /// Appends the end of the content.
    pub fn finish(&mut self, wire: &mut Vec<u8>) {
        match self {
            Framer::Data(s) => s.finish(wire),
            Framer::Bdat => wire.extend_from_slice(b"BDAT 0 LAST\r\n"),
        }
    }

    pub fn is_bdat(&self) -> bool {
        matches!(self, Framer::Bdat)
    }
}
