//! A buffered SMTP connection: the caller-owned input buffer the codec frames from, and an
//! output buffer that collects pipelined replies until the server is about to wait for input
//! (RFC 2920: one write per batch of pipelined commands).

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Never buffer more unread input than this: a command line is at most 512 octets and data
/// is consumed as it arrives, so anything larger is a client that does not wait for replies.
const READ_CHUNK: usize = 64 * 1024;

pub struct Conn<S> {
    pub io: S,
    pub inbuf: Vec<u8>,
    pub out: Vec<u8>,
}

#[derive(Debug)]
pub enum ReadError {
    Timeout,
    Closed,
    Io(io::Error),
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub fn new(io: S) -> Self {
        Conn {
            io,
            inbuf: Vec::with_capacity(4096),
            out: Vec::with_capacity(1024),
        }
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.io.write_all(&self.out).await?;
            self.out.clear();
        }
        self.io.flush().await
    }

    /// Flushes pending replies, then waits for more input.
    pub async fn fill(&mut self, limit: Duration) -> Result<usize, ReadError> {
        self.flush().await.map_err(ReadError::Io)?;
        // Reads into spare capacity: zeroing a fresh chunk before every read cost more CPU
        // than the decoding of a small message.
        self.inbuf.reserve(READ_CHUNK);
        let r = tokio::time::timeout(limit, self.io.read_buf(&mut self.inbuf)).await;
        match r {
            Err(_) => Err(ReadError::Timeout),
            Ok(Err(e)) => Err(ReadError::Io(e)),
            Ok(Ok(0)) => Err(ReadError::Closed),
            Ok(Ok(n)) => Ok(n),
        }
    }

    pub fn consume(&mut self, n: usize) {
        self.inbuf.drain(..n);
    }
}
