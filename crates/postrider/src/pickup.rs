//! The pickup directory: where `sendmail` leaves mail when the daemon is not running, and
//! the daemon task that takes it into the queue. Like Postfix's maildrop, the directory is
//! world-writable and sticky (mode 1733) so local users can drop files but not list, read or
//! remove other users' mail.
//!
//! A pickup file is: the envelope sender on the first line (empty for `<>`), one recipient
//! per line, an empty line, then the message with CRLF line ends. Files are written as
//! `tmp.*`, fsync'd and renamed, so the daemon never sees half a file.
//!
//! Everything in the directory is written by local users, so it is handled as hostile: an
//! entry is opened without following links and without blocking, and taken only if the
//! opened descriptor is a regular file with one link; its owner is the submitting user (in a
//! sticky directory nobody but root can make a file owned by someone else), and the
//! local-submission policy (`local.rs`) decides what that user may send. Reads are bounded
//! and run on the blocking pool, never on a runtime worker.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::libc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::local::Cleanup;
use crate::local::{Policies, Policy};

pub fn dir(spool: &Path) -> PathBuf {
    spool.join("pickup")
}

/// Creates the directory with its sticky, world-writable mode.
pub fn create_dir(spool: &Path) -> std::io::Result<PathBuf> {
    let d = dir(spool);
    std::fs::create_dir_all(&d)?;
    // Only when needed: the daemon may not own a directory prepared for it by root.
    if std::fs::metadata(&d)?.permissions().mode() & 0o7777 != 0o1733 {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1733))?;
    }
    Ok(d)
}

/// A name nobody can predict: the directory cannot be listed by other users, so they cannot
/// open a file whose name they do not know, nor plant a link where `write` will create one.
fn unique_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut rand = [0u8; 16];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut rand))
        .is_err()
    {
        // RandomState is seeded from the OS's randomness too.
        for chunk in rand.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    let hex: String = rand.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}.{}.{hex}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|t| t.as_nanos())
            .unwrap_or(0),
        std::process::id()
    )
}

/// Writes one message durably into the pickup directory (the `sendmail` side). On error
/// nothing is left behind, so the caller may retry without duplicating the mail.
pub fn write(spool: &Path, sender: &str, rcpts: &[String], msg: &[u8]) -> std::io::Result<PathBuf> {
    let d = dir(spool);
    if !d.exists() {
        create_dir(spool)?;
    }
    let unique = unique_name();
    let tmp = d.join(format!("tmp.{unique}"));
    let fin = d.join(unique);
    // create_new + O_NOFOLLOW: never write through a name someone else planted.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    let written = (|| {
        // Readable by the daemon whatever the caller's umask; the name keeps it private.
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        let mut head = format!("{sender}\n");
        for r in rcpts {
            head.push_str(r);
            head.push('\n');
        }
        head.push('\n');
        f.write_all(head.as_bytes())?;
        f.write_all(msg)?;
        f.sync_all()
    })();
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, &fin)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Err(e) = sync_dir(&d, &f) {
        // Not known to be durable: take it back so a retry does not deliver it twice.
        let _ = std::fs::remove_file(&fin);
        return Err(e);
    }
    Ok(fin)
}

/// Makes the rename durable. Only the directory's owner (and root) can open the 1733
/// directory to fsync it; for everyone else syncfs on the file's file system commits the
/// directory entry as well.
fn sync_dir(d: &Path, f: &std::fs::File) -> std::io::Result<()> {
    match std::fs::File::open(d) {
        Ok(dir) => dir.sync_all(),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            nix::unistd::syncfs(f).map_err(std::io::Error::from)
        }
        Err(e) => Err(e),
    }
}

/// An envelope address from a pickup file or `sendmail`'s arguments: no spaces, controls or
/// angle brackets, which would let one line become several envelope fields.
pub fn check_address(a: &str) -> Result<(), String> {
    if a.chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
    {
        return Err(format!("bad address {a:?}"));
    }
    Ok(())
}

/// Splits a pickup file into sender, recipients and message.
pub fn parse(data: &[u8]) -> Result<(String, Vec<String>, &[u8]), String> {
    let end = data
        .windows(2)
        .position(|w| w == b"\n\n")
        .ok_or("no blank line after the envelope")?;
    let head = std::str::from_utf8(&data[..end]).map_err(|_| "envelope is not UTF-8")?;
    let mut lines = head.split('\n');
    let sender = lines.next().unwrap_or_default().trim().to_string();
    let rcpts: Vec<String> = lines
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if rcpts.is_empty() {
        return Err("no recipients".into());
    }
    for a in std::iter::once(&sender).chain(&rcpts) {
        check_address(a)?;
    }
    Ok((sender, rcpts, &data[end + 2..]))
}

/// What one directory entry turned out to be.
#[derive(Debug)]
enum Entry {
    /// A regular file with one link, owned by `uid`, read whole.
    File {
        uid: u32,
        user: Option<String>,
        data: Vec<u8>,
    },
    /// Not something to take: what it was, and whether to set it aside (a regular file
    /// with bad content, kept for the operator) or remove the name (links, FIFOs, devices).
    Refused { what: String, set_aside: bool },
    /// Gone meanwhile or not readable now: try again at the next scan.
    Retry(String),
}

fn kind(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() || ft.is_block_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// Opens and reads one entry (blocking; run on the blocking pool). `limit` bounds the read
/// whatever size the file claims, so a file that grows while being read cannot run past it.
fn read_entry(path: &Path, policy: &Policy) -> Entry {
    let limit = policy.read_limit();
    let opened = std::fs::OpenOptions::new()
        .read(true)
        // A FIFO opens at once instead of waiting for a writer; a link is not followed.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path);
    let f = match opened {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Entry::Refused {
                what: "a symbolic link".into(),
                set_aside: false,
            };
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Entry::Retry(e.to_string()),
        Err(e) => {
            return match std::fs::symlink_metadata(path) {
                Ok(m) if !m.file_type().is_file() => Entry::Refused {
                    what: kind(m.file_type()).into(),
                    set_aside: false,
                },
                _ => Entry::Refused {
                    what: format!("a file the daemon cannot open ({e})"),
                    set_aside: true,
                },
            };
        }
    };
    // fstat on what was opened, not on the name, which may have been swapped meanwhile.
    let meta = match f.metadata() {
        Ok(m) => m,
        Err(e) => return Entry::Retry(e.to_string()),
    };
    if !meta.file_type().is_file() {
        return Entry::Refused {
            what: kind(meta.file_type()).into(),
            set_aside: false,
        };
    }
    if meta.nlink() != 1 {
        // A hard link carries its owner along: it would let a user submit another user's
        // (or root's) file as theirs.
        return Entry::Refused {
            what: format!(
                "a file with {} hard links (uid {})",
                meta.nlink(),
                meta.uid()
            ),
            set_aside: false,
        };
    }
    if policy.over_rate(meta.uid(), Instant::now()) {
        // Not worth reading a file the policy would send back to wait anyway.
        return Entry::Retry(format!(
            "uid {} is over local.max_submissions_per_minute",
            meta.uid()
        ));
    }
    if meta.len() > limit {
        return Entry::Refused {
            what: format!(
                "{} bytes, over the size limit of {limit} (uid {})",
                meta.len(),
                meta.uid()
            ),
            set_aside: true,
        };
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    if let Err(e) = (&f).take(limit + 1).read_to_end(&mut data) {
        return Entry::Retry(e.to_string());
    }
    if data.len() as u64 > limit {
        return Entry::Refused {
            what: format!(
                "a file growing past the size limit of {limit} (uid {})",
                meta.uid()
            ),
            set_aside: true,
        };
    }
    Entry::File {
        uid: meta.uid(),
        user: crate::local::user_name(meta.uid()),
        data,
    }
}

/// Moves a refused entry out of the way without following it: a regular file is renamed to
/// `.bad` for the operator, anything else loses its name here (the link, not its target).
fn put_away(path: &Path, set_aside: bool) {
    let bad = PathBuf::from(format!("{}.bad", path.display()));
    if set_aside || std::fs::remove_file(path).is_err() {
        let _ = std::fs::rename(path, bad);
    }
}

/// What became of one entry.
enum Outcome {
    Taken,
    /// Left in place to try again (over the rate, or a temporary failure).
    Waiting(String),
    Refused,
}

async fn take(path: &Path, cleanup: &Cleanup, policy: Arc<Policy>) -> Outcome {
    let name = path.display().to_string();
    let (p, pol) = (path.to_path_buf(), policy.clone());
    let entry = match tokio::task::spawn_blocking(move || read_entry(&p, &pol)).await {
        Ok(e) => e,
        Err(e) => return Outcome::Waiting(format!("reading it failed: {e}")),
    };
    let (uid, user, data) = match entry {
        Entry::File { uid, user, data } => (uid, user, data),
        Entry::Retry(e) => return Outcome::Waiting(e),
        Entry::Refused { what, set_aside } => {
            warn!(
                "pickup {name}: refused: {what}; {}",
                if set_aside {
                    "renamed to .bad"
                } else {
                    "removed"
                }
            );
            put_away(path, set_aside);
            return Outcome::Refused;
        }
    };
    let refuse = |why: &str| {
        warn!("pickup {name} (uid {uid}): refused: {why}; renamed to .bad");
        put_away(path, true);
        Outcome::Refused
    };
    let (sender, rcpts, msg) = match parse(&data) {
        Ok(x) => x,
        Err(e) => return refuse(&e),
    };
    let accepted = match policy.check(
        uid,
        user.as_deref(),
        &sender,
        &rcpts,
        msg.len() as u64,
        Instant::now(),
    ) {
        Ok(a) => a,
        Err(r) if r.is_temporary() => return Outcome::Waiting(r.to_string()),
        Err(r) => return refuse(&r.to_string()),
    };
    match policy.enqueue(cleanup, uid, "pickup", accepted, msg).await {
        Ok(id) => {
            debug!(queue_id = %id, "pickup {name}: taken");
            // A crash before this unlink delivers the message twice, never zero times.
            let _ = std::fs::remove_file(path);
            Outcome::Taken
        }
        Err(r) if r.is_temporary() => Outcome::Waiting(r.to_string()),
        Err(r) => refuse(&r.to_string()),
    }
}

/// Polls the pickup directory every second until shutdown.
pub async fn run(cleanup: Arc<Cleanup>, policies: Arc<Policies>, shutdown: CancellationToken) {
    let d = match create_dir(cleanup.spool().dir()) {
        Ok(d) => d,
        Err(e) => {
            warn!("pickup directory: {e}; mail written there by sendmail will wait");
            return;
        }
    };
    // Files waiting (over the rate, disk full) are logged once, not at every scan.
    let mut waiting = std::collections::HashSet::new();
    loop {
        let listed = {
            let d = d.clone();
            tokio::task::spawn_blocking(move || -> Vec<PathBuf> {
                match std::fs::read_dir(&d) {
                    Ok(rd) => rd
                        .flatten()
                        .map(|e| e.path())
                        .filter(|p| {
                            p.file_name()
                                .and_then(|n| n.to_str())
                                .is_none_or(|n| !n.starts_with("tmp.") && !n.ends_with(".bad"))
                        })
                        .collect(),
                    Err(_) => Vec::new(),
                }
            })
            .await
        };
        let mut names = listed.unwrap_or_default();
        names.sort();
        waiting.retain(|p| names.contains(p));
        for p in names {
            if shutdown.is_cancelled() {
                return;
            }
            match take(&p, &cleanup, policies.current()).await {
                Outcome::Waiting(why) => {
                    if waiting.insert(p.clone()) {
                        info!("pickup {}: waiting: {why}", p.display());
                    }
                }
                Outcome::Taken | Outcome::Refused => {
                    waiting.remove(&p);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_pickup_files() {
        let (s, r, m) =
            parse(b"a@b.test\nx@y.test\nz@y.test\n\nSubject: hi\r\n\r\nbody\r\n").unwrap();
        assert_eq!(s, "a@b.test");
        assert_eq!(r, ["x@y.test", "z@y.test"]);
        assert_eq!(m, b"Subject: hi\r\n\r\nbody\r\n");
        assert_eq!(parse(b"\nx@y.test\n\nm").unwrap().0, "");
        assert!(parse(b"a@b\n\nm").is_err(), "no recipients");
        assert!(parse(b"a@b\nx y@z\n\nm").is_err());
        assert!(parse(b"a@b\nx@z").is_err(), "no end of envelope");
    }

    fn policy(max_size: u64) -> Policy {
        let mut cfg = config::Config::default();
        cfg.smtp.max_message_size = max_size;
        cfg.smtp.max_recipients = 2;
        Policy::new(&cfg, nix::unistd::geteuid().as_raw()).unwrap()
    }

    fn refused(e: Entry) -> (String, bool) {
        match e {
            Entry::Refused { what, set_aside } => (what, set_aside),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn only_single_link_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = policy(100);
        let at = |n: &str| dir.path().join(n);
        std::fs::write(at("ok"), b"a@b.test\nx@y.test\n\nbody").unwrap();
        match read_entry(&at("ok"), &p) {
            Entry::File { uid, data, .. } => {
                assert_eq!(uid, nix::unistd::geteuid().as_raw());
                assert_eq!(data, b"a@b.test\nx@y.test\n\nbody");
            }
            other => panic!("{other:?}"),
        }
        // A FIFO with no writer would block a plain open forever.
        nix::unistd::mkfifo(&at("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert_eq!(
            refused(read_entry(&at("fifo"), &p)),
            ("a FIFO".into(), false)
        );
        std::os::unix::fs::symlink("/dev/zero", at("zero")).unwrap();
        std::os::unix::fs::symlink(at("ok"), at("link")).unwrap();
        for l in ["zero", "link"] {
            assert_eq!(refused(read_entry(&at(l), &p)).0, "a symbolic link", "{l}");
        }
        std::fs::hard_link(at("ok"), at("hard")).unwrap();
        assert!(
            refused(read_entry(&at("hard"), &p))
                .0
                .contains("2 hard links")
        );
        std::fs::remove_file(at("hard")).unwrap();
        std::fs::create_dir(at("dir")).unwrap();
        assert_eq!(refused(read_entry(&at("dir"), &p)).0, "a directory");
        let limit = p.read_limit();
        std::fs::write(at("big"), vec![b'x'; limit as usize + 1]).unwrap();
        let (what, set_aside) = refused(read_entry(&at("big"), &p));
        assert!(what.contains("over the size limit") && set_aside, "{what}");
        std::fs::write(at("max"), vec![b'x'; limit as usize]).unwrap();
        assert!(matches!(read_entry(&at("max"), &p), Entry::File { .. }));
        assert!(matches!(read_entry(&at("gone"), &p), Entry::Retry(_)));
    }

    #[test]
    fn put_away_removes_links_not_their_targets() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        put_away(&link, false);
        assert!(std::fs::symlink_metadata(&link).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        put_away(&sub, false);
        assert!(
            dir.path().join("sub.bad").is_dir(),
            "a directory is set aside"
        );
        put_away(&target, true);
        assert_eq!(
            std::fs::read(dir.path().join("target.bad")).unwrap(),
            b"keep"
        );
    }

    #[test]
    fn written_files_are_complete_and_unpredictably_named() {
        let spool = tempfile::tempdir().unwrap();
        let a = write(spool.path(), "a@b.test", &["x@y.test".into()], b"m\r\n").unwrap();
        let b = write(spool.path(), "", &["x@y.test".into()], b"m\r\n").unwrap();
        assert_ne!(a, b);
        let name = a.file_name().unwrap().to_str().unwrap();
        assert_eq!(name.rsplit('.').next().unwrap().len(), 32, "{name}");
        let data = std::fs::read(&a).unwrap();
        assert_eq!(
            parse(&data).unwrap(),
            ("a@b.test".into(), vec!["x@y.test".into()], &b"m\r\n"[..])
        );
        let mode = std::fs::metadata(dir(spool.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o1733);
        let names: Vec<_> = std::fs::read_dir(dir(spool.path()))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(names.len(), 2, "no tmp. files left");
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics_and_checks_addresses(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            if let Ok((sender, rcpts, _)) = parse(&data) {
                proptest::prop_assert!(!rcpts.is_empty());
                for a in std::iter::once(&sender).chain(&rcpts) {
                    proptest::prop_assert!(!a.contains(['<', '>', ' ', '\n']));
                }
            }
        }
    }
}
