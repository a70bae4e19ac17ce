//! The pickup directory: where `sendmail` leaves mail when the daemon is not running, and
//! the daemon task that takes it into the queue. Like Postfix's maildrop, the directory is
//! world-writable and sticky (mode 1733) so local users can drop files but not read or
//! remove other users' mail.
//!
//! A pickup file is: the envelope sender on the first line (empty for `<>`), one recipient
//! per line, an empty line, then the message with CRLF line ends. Files are written as
//! `tmp.*`, fsync'd and renamed, so the daemon never sees half a file.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use spool::{Envelope, Recipient};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::queue::manager::QueueHandle;

pub fn dir(spool: &Path) -> PathBuf {
    spool.join("pickup")
}

/// Creates the directory with its sticky, world-writable mode.
pub fn create_dir(spool: &Path) -> std::io::Result<PathBuf> {
    let d = dir(spool);
    std::fs::create_dir_all(&d)?;
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1733))?;
    Ok(d)
}

/// Writes one message durably into the pickup directory (the `sendmail` side).
pub fn write(spool: &Path, sender: &str, rcpts: &[String], msg: &[u8]) -> std::io::Result<PathBuf> {
    let d = dir(spool);
    if !d.exists() {
        create_dir(spool)?;
    }
    let unique = format!(
        "{}.{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|t| t.as_nanos())
            .unwrap_or(0),
        std::process::id()
    );
    let tmp = d.join(format!("tmp.{unique}"));
    let fin = d.join(unique);
    let mut f = std::fs::File::create(&tmp)?;
    let mut head = format!("{sender}\n");
    for r in rcpts {
        head.push_str(r);
        head.push('\n');
    }
    head.push('\n');
    f.write_all(head.as_bytes())?;
    f.write_all(msg)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &fin)?;
    std::fs::File::open(&d)?.sync_all()?;
    Ok(fin)
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
        if a.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
        {
            return Err(format!("bad address '{a}'"));
        }
    }
    Ok((sender, rcpts, &data[end + 2..]))
}

/// Takes one file into the queue; removed only once the queue has it.
async fn take(
    path: &Path,
    spool: &spool::Spool,
    queue: &QueueHandle,
    hostname: &str,
    max_size: u64,
) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.len() > max_size + 64 * 1024 {
        return Err(format!("{} bytes is over the size limit", meta.len()));
    }
    let data = std::fs::read(path).map_err(|e| e.to_string())?;
    let (sender, rcpts, msg) = parse(&data)?;
    let id = spool.ids().next();
    let mut w = spool.content_writer(id);
    let received = format!(
        "Received: by {hostname} (postrider pickup, from userid {})\r\n\tid {id}; {}\r\n",
        meta.uid(),
        crate::server::headers::rfc5322_date(SystemTime::now())
    );
    w.write(received.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    w.write(msg).await.map_err(|e| e.to_string())?;
    let size = w.len();
    let env = Envelope {
        id,
        arrival: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        sender: sender.clone(),
        envid: None,
        ret: None,
        body: if msg.iter().any(|b| *b >= 0x80) {
            spool::BodyType::EightBitMime
        } else {
            spool::BodyType::SevenBit
        },
        smtputf8: false,
        client: format!("pickup (uid {})", meta.uid()),
        held: false,
        kind: Default::default(),
        recipients: rcpts
            .iter()
            .map(|r| Recipient {
                address: r.clone(),
                ..Default::default()
            })
            .collect(),
    };
    let mref = spool.commit(&env, w).await.map_err(|e| e.to_string())?;
    info!(queue_id = %id, from = %sender, size, nrcpt = rcpts.len(), uid = meta.uid(), "received from the pickup directory");
    queue.arrived(env, mref, size).await;
    // A crash before this unlink delivers the message twice, never zero times.
    let _ = std::fs::remove_file(path);
    Ok(())
}

/// Polls the pickup directory every second until shutdown.
pub async fn run(
    spool: spool::Spool,
    queue: QueueHandle,
    hostname: String,
    max_size: u64,
    shutdown: CancellationToken,
) {
    let d = match create_dir(spool.dir()) {
        Ok(d) => d,
        Err(e) => {
            warn!("pickup directory: {e}; mail written there by sendmail will wait");
            return;
        }
    };
    loop {
        let mut names: Vec<PathBuf> = match std::fs::read_dir(&d) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| !n.starts_with("tmp.") && !n.ends_with(".bad"))
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        for p in names {
            if let Err(e) = take(&p, &spool, &queue, &hostname, max_size).await {
                warn!("pickup file {}: {e}; renamed to .bad", p.display());
                let _ = std::fs::rename(&p, PathBuf::from(format!("{}.bad", p.display())));
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
