//! Harness for the protocol tests: a small tmpfs to fill (a spool that runs out of space)
//! and a reader that counts many pipelined replies without re-reading what it has.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use super::Raw;

/// A tmpfs of `size` (e.g. "16m"), unmounted on drop. Needs root, as CI has.
pub struct Tmpfs {
    pub dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount");
        assert!(
            st.success(),
            "mounting a tmpfs needs root (CI runs as root)"
        );
        Tmpfs { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Writes `path` until its file system has about `leave_free` bytes left.
pub fn fill(path: &Path, leave_free: u64) {
    let st = nix::sys::statvfs::statvfs(path.parent().expect("parent")).expect("statvfs");
    let free = st.blocks_available() * st.fragment_size();
    let mut left = free.saturating_sub(leave_free);
    let mut f = std::fs::File::create(path).expect("filler");
    let chunk = vec![0u8; 1 << 16];
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        if f.write_all(&chunk[..n]).is_err() {
            break;
        }
        left -= n as u64;
    }
    let _ = f.sync_all();
}

/// Reads `n` single-line replies (pipelined RCPTs) and returns them, in order.
pub fn read_lines(c: &mut Raw, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    let mut partial = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    while out.len() < n {
        let k = c.stream.read(&mut chunk).expect("reading replies");
        assert!(k > 0, "connection closed after {} replies", out.len());
        partial.extend_from_slice(&chunk[..k]);
        let mut start = 0;
        while let Some(p) = partial[start..].windows(2).position(|w| w == b"\r\n") {
            out.push(String::from_utf8_lossy(&partial[start..start + p]).into_owned());
            start += p + 2;
        }
        partial.drain(..start);
    }
    out
}
