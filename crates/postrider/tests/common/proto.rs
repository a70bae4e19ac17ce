//! Harness for the protocol and crash tests: a small tmpfs to fill (a spool that runs out
//! of space), a disk whose fsync is slow, and a reader that counts many pipelined replies
//! without re-reading what it has.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

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

/// A folder whose fsync takes `delay` (tests/peers/slowfs.py over FUSE): a disk whose
/// journal commits lag, as one stuck behind writeback does. Unmounted on drop.
pub struct SlowFs {
    pub mount: tempfile::TempDir,
    _below: tempfile::TempDir,
    child: std::process::Child,
}

impl SlowFs {
    pub fn mount(delay: std::time::Duration) -> SlowFs {
        use std::io::BufRead;
        let below = tempfile::tempdir().expect("tempdir");
        let mount = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new("/usr/bin/python3")
            .arg(super::repo_root().join("tests/peers/slowfs.py"))
            .arg(below.path())
            .arg(mount.path())
            .arg(delay.as_secs_f64().to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn slowfs.py (needs python3-fusepy, libfuse2)");
        let mut line = String::new();
        let _ = std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line);
        assert!(
            line.starts_with("ready"),
            "slowfs did not mount (needs /dev/fuse and root)"
        );
        SlowFs {
            mount,
            _below: below,
            child,
        }
    }
}

impl Drop for SlowFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mount.path()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// One small message from `sender` to `rcpt`; true if it was acknowledged.
pub fn send_tracked_to(port: u16, sender: &str, rcpt: &str) -> bool {
    let mut c = Raw::connect(port);
    c.replies(1);
    c.cmd("EHLO crash.test");
    c.cmd(&format!("MAIL FROM:<{sender}>"));
    c.cmd(&format!("RCPT TO:<{rcpt}>"));
    if !c.cmd("DATA").starts_with("354") {
        return false;
    }
    let line = "y".repeat(76);
    let body: String = (0..6).map(|_| format!("{line}\r\n")).collect();
    c.send(format!("Subject: {sender}\r\n\r\n{body}").as_bytes());
    c.cmd(".").starts_with("250")
}

/// Sends one message with a unique sender; true only if the server said 250 after DATA.
pub fn send_tracked(port: u16, sender: &str, body_len: usize) -> bool {
    send_tracked_rcpt(port, sender, "r@dst.test", body_len)
}

/// `send_tracked` to a given recipient.
pub fn send_tracked_rcpt(port: u16, sender: &str, rcpt: &str, body_len: usize) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    // Lines of 76 octets: longer than 1000 would be refused (RFC 5321 §4.5.3.1.6).
    let body = "x"
        .repeat(body_len)
        .as_bytes()
        .chunks(76)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("\r\n");
    let msg = format!("EHLO crash.test\r\nMAIL FROM:<{sender}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n");
    if s.write_all(msg.as_bytes()).is_err() {
        return false;
    }
    // Greeting, EHLO, MAIL, RCPT, DATA(354) must all be read before the content.
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    while !got.contains("354 ") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    let content = format!("Subject: {sender}\r\n\r\n{body}\r\n.\r\n");
    if s.write_all(content.as_bytes()).is_err() {
        return false;
    }
    let mut tail = String::new();
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => {
                tail.push_str(&String::from_utf8_lossy(&buf[..n]));
                if let Some(line) = tail.lines().find(|l| l.len() >= 4 && &l[3..4] == " ") {
                    let ok = line.starts_with("250 ");
                    let _ = s.write_all(b"QUIT\r\n");
                    return ok;
                }
            }
        }
    }
}
