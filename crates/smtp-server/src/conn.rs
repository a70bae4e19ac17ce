//! A connection's socket for the session driver: writes the replies the machine collected,
//! then waits for input. Replies are written only before a read (or at the end), so a batch
//! of pipelined commands gets its replies in one write (RFC 2920).

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Never buffer more unread input than this: a command line is at most 512 octets and data
/// is consumed as it arrives, so anything larger is a client that does not wait for replies.
const READ_CHUNK: usize = 64 * 1024;

pub struct Conn<S> {
    pub io: S,
}

#[derive(Debug)]
pub enum ReadError {
    Timeout,
    Closed,
    /// The daemon is shutting down (the driver's own wait, not the socket's).
    Shutdown,
    Io(io::Error),
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub fn new(io: S) -> Self {
        Conn { io }
    }

    /// Writes and clears `out`.
    pub async fn send(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        if !out.is_empty() {
            self.io.write_all(out).await?;
            out.clear();
        }
        self.io.flush().await
    }

    /// Writes pending replies, then waits for more input into `inbuf`.
    pub async fn fill(
        &mut self,
        inbuf: &mut Vec<u8>,
        out: &mut Vec<u8>,
        limit: Duration,
    ) -> Result<usize, ReadError> {
        self.send(out).await.map_err(ReadError::Io)?;
        // Reads into spare capacity: zeroing a fresh chunk before every read cost more CPU
        // than the decoding of a small message.
        inbuf.reserve(READ_CHUNK);
        let r = tokio::time::timeout(limit, self.io.read_buf(inbuf)).await;
        match r {
            Err(_) => Err(ReadError::Timeout),
            Ok(Err(e)) => Err(ReadError::Io(e)),
            Ok(Ok(0)) => Err(ReadError::Closed),
            Ok(Ok(n)) => Ok(n),
        }
    }
}
