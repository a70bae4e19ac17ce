//! A message's content on its way in: kept in memory while small, streamed to `content/ID`
//! past [`INLINE_MAX`], and handed to the writer thread at commit.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::PathBuf;

use crate::{FILE_MODE, INLINE_MAX, SpoolError, TxnId, content_path};

/// Receives a message's content while the client sends it. Small content stays in memory
/// until commit; past [`INLINE_MAX`] it is streamed to `content/ID`.
pub struct ContentWriter {
    pub(crate) id: TxnId,
    pub(crate) dir: PathBuf,
    pub(crate) buf: Vec<u8>,
    pub(crate) file: Option<(File, PathBuf)>,
    pub(crate) len: u64,
    pub(crate) committed_file: Option<PathBuf>,
}

impl ContentWriter {
    pub fn id(&self) -> TxnId {
        self.id
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends content. Writes to the page cache only (the fsync is at commit), so this
    /// does not block the runtime for long even though it uses plain file I/O.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), SpoolError> {
        self.len += data.len() as u64;
        if self.file.is_none() && self.buf.len() + data.len() <= INLINE_MAX {
            self.buf.extend_from_slice(data);
            return Ok(());
        }
        if self.file.is_none() {
            use std::os::unix::fs::OpenOptionsExt;
            let path = content_path(&self.dir, self.id);
            let f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(FILE_MODE)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|e| SpoolError::io(format!("creating {}", path.display()), e))?;
            self.file = Some((f, path));
            let pending = std::mem::take(&mut self.buf);
            self.write_file(&pending)?;
        }
        self.write_file(data)
    }

    /// Appends everything `r` yields (a copy or a rewrite of other content).
    pub async fn write_from(&mut self, r: &mut (dyn Read + Send)) -> Result<(), SpoolError> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = r
                .read(&mut buf)
                .map_err(|e| SpoolError::io("reading content back", e))?;
            if n == 0 {
                return Ok(());
            }
            self.write(&buf[..n]).await?;
        }
    }

    /// A reader over what was written so far (for content filters before commit).
    pub fn read_back(&mut self) -> Result<Box<dyn Read + Send>, SpoolError> {
        match &mut self.file {
            None => Ok(Box::new(io::Cursor::new(self.buf.clone()))),
            Some((f, path)) => {
                f.flush()
                    .map_err(|e| SpoolError::io(format!("writing {}", path.display()), e))?;
                let r = File::open(&*path)
                    .map_err(|e| SpoolError::io(format!("reading {}", path.display()), e))?;
                Ok(Box::new(io::BufReader::with_capacity(64 * 1024, r)))
            }
        }
    }

    /// Gives the content up as a reader, so that a rewritten version can be written under
    /// the same id (the old file is unlinked; the reader keeps it alive until dropped).
    pub fn into_reader(mut self) -> Result<Box<dyn Read + Send>, SpoolError> {
        let r = self.read_back()?;
        if let Some((_, path)) = self.file.take() {
            let _ = fs::remove_file(path);
        }
        Ok(r)
    }

    fn write_file(&mut self, data: &[u8]) -> Result<(), SpoolError> {
        let (f, path) = self.file.as_mut().expect("file is open");
        f.write_all(data)
            .map_err(|e| SpoolError::io(format!("writing {}", path.display()), e))
    }
}

impl Drop for ContentWriter {
    /// Content of a transaction that was never committed (client went away, size exceeded)
    /// must not stay on disk.
    fn drop(&mut self) {
        let path = self
            .file
            .take()
            .map(|(_, p)| p)
            .or(self.committed_file.take());
        if let Some(p) = path {
            let _ = fs::remove_file(p);
        }
    }
}
