//! The spool's directories, their owner and their modes: who may reach what on disk.
//!
//! Queued mail is everyone's mail, so only the daemon's user (and root) may read it: `log/`
//! and `content/` are 0700 and every file in them 0600. The spool directory itself is 0711
//! so local users can still reach `pickup/` (like the parents of a real maildrop) without
//! listing or opening anything else.
//!
//! Everything here runs as root before privileges are dropped, inside a directory that local
//! users can reach, so nothing follows a symbolic link and nothing recurses: directories are
//! opened with `O_NOFOLLOW | O_DIRECTORY` and changed through their descriptors, entries with
//! `fchownat(AT_SYMLINK_NOFOLLOW)` or through a descriptor opened with `O_NOFOLLOW`. The
//! contents of `pickup/` belong to the local users who wrote them and are never touched.

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, open, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, unlinkat};
use tracing::warn;

use crate::SpoolError;

/// The spool directory: traversable by everyone (to reach `pickup/`), readable by nobody else.
pub const SPOOL_DIR_MODE: u32 = 0o711;
/// `log/` and `content/`: the daemon's user only.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Segments, content files and the lock.
pub const FILE_MODE: u32 = 0o600;

/// The user and group the spool belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

fn err(context: String, e: Errno) -> SpoolError {
    SpoolError::io(context, std::io::Error::from(e))
}

/// Makes the spool's layout right: creates the spool directory, `log/` and `content/` with
/// their modes, and sets the modes of existing ones. With `owner` (root preparing the spool
/// for the user it is about to become), the directories and `pickup/` itself are given to
/// that owner, and so are `daemon.lock` and the regular files directly in `log/` and
/// `content/` (left by a spool written as root), with their modes set to 0600. The lock file
/// of older versions (`lock`, world-readable) is removed: anyone could open it, so anyone
/// could hold it, and a descriptor opened on it survives any chmod.
pub fn prepare(dir: &Path, owner: Option<Owner>) -> Result<(), SpoolError> {
    if !dir.exists() {
        // The parents are the administrator's (`/var/spool`); they get the usual modes.
        if let Some(parent) = dir.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| SpoolError::io(format!("creating {}", parent.display()), e))?;
        }
        match fs::DirBuilder::new().mode(SPOOL_DIR_MODE).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(SpoolError::io(format!("creating {}", dir.display()), e)),
        }
    }
    // The configured path itself may be a link the administrator made; nothing below it is
    // followed.
    let top = open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err(format!("opening {}", dir.display()), e))?;
    let show = |name: &str| dir.join(name).display().to_string();
    set_owner_and_mode(&top, owner, SPOOL_DIR_MODE, &dir.display().to_string())?;
    for sub in ["log", "content"] {
        let fd = private_dir(&top, sub, &show(sub))?;
        set_owner_and_mode(&fd, owner, PRIVATE_DIR_MODE, &show(sub))?;
        if let Some(o) = owner {
            adopt_files(&fd, &dir.join(sub), o)?;
        }
    }
    if let Some(o) = owner {
        // pickup/ itself must be the daemon's to manage; what local users put in it is theirs.
        match openat(
            &top,
            "pickup",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => chown_fd(&fd, o, &show("pickup"))?,
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(err(format!("opening {} (not followed)", show("pickup")), e)),
        }
        // Left by a daemon that ran as root: the user must be able to open it.
        adopt(
            &top,
            std::ffi::OsStr::new("daemon.lock"),
            &show("daemon.lock"),
            o,
        )?;
    }
    match unlinkat(&top, "lock", UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => warn!("removing the old lock file {}: {e}", show("lock")),
    }
    Ok(())
}

/// Creates (if missing) and opens `top/name` as a directory without following a link.
fn private_dir(top: &OwnedFd, name: &str, shown: &str) -> Result<OwnedFd, SpoolError> {
    match mkdirat(top, name, Mode::from_bits_truncate(PRIVATE_DIR_MODE)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(err(format!("creating {shown}"), e)),
    }
    openat(
        top,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ELOOP | Errno::ENOTDIR => err(
            format!("{shown} is not a directory (symbolic links are not followed)"),
            e,
        ),
        e => err(format!("opening {shown}"), e),
    })
}

fn chown_fd(fd: &impl AsFd, o: Owner, shown: &str) -> Result<(), SpoolError> {
    let st = fstat(fd).map_err(|e| err(format!("examining {shown}"), e))?;
    if st.st_uid != o.uid || st.st_gid != o.gid {
        fchown(fd, Some(Uid::from_raw(o.uid)), Some(Gid::from_raw(o.gid)))
            .map_err(|e| err(format!("giving {shown} to uid {}", o.uid), e))?;
    }
    Ok(())
}

fn set_owner_and_mode(
    fd: &OwnedFd,
    owner: Option<Owner>,
    mode: u32,
    shown: &str,
) -> Result<(), SpoolError> {
    if let Some(o) = owner {
        chown_fd(fd, o, shown)?;
    }
    let st = fstat(fd).map_err(|e| err(format!("examining {shown}"), e))?;
    if st.st_mode & 0o7777 != mode {
        fchmod(fd, Mode::from_bits_truncate(mode))
            .map_err(|e| err(format!("setting the mode of {shown} to {mode:o}"), e))?;
    }
    Ok(())
}

fn is_regular(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
}

/// Gives the regular files directly in `fd` (one level, no links) to `o`, mode 0600.
fn adopt_files(fd: &OwnedFd, path: &Path, o: Owner) -> Result<(), SpoolError> {
    let rd =
        fs::read_dir(path).map_err(|e| SpoolError::io(format!("reading {}", path.display()), e))?;
    for e in rd {
        let e = e.map_err(|e| SpoolError::io(format!("reading {}", path.display()), e))?;
        adopt(
            fd,
            &e.file_name(),
            &path.join(e.file_name()).display().to_string(),
            o,
        )?;
    }
    Ok(())
}

/// Gives the entry `name` of `fd` to `o` with mode 0600 if it is a regular file (links and
/// anything else are left alone); a missing entry is fine.
fn adopt(fd: &OwnedFd, name: &std::ffi::OsStr, shown: &str, o: Owner) -> Result<(), SpoolError> {
    let st = match fstatat(fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(err(format!("examining {shown}"), e)),
    };
    if !is_regular(&st) {
        warn!("{shown} is not a regular file; left alone");
        return Ok(());
    }
    if st.st_uid == o.uid && st.st_gid == o.gid && st.st_mode & 0o7777 == FILE_MODE {
        return Ok(());
    }
    if st.st_mode & 0o7777 == FILE_MODE {
        return fchownat(
            fd,
            name,
            Some(Uid::from_raw(o.uid)),
            Some(Gid::from_raw(o.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| err(format!("giving {shown} to uid {}", o.uid), e));
    }
    // The mode can only be changed through a descriptor without following a link.
    let f = match openat(
        fd,
        name,
        OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(f) => f,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(err(format!("opening {shown}"), e)),
    };
    let now = fstat(&f).map_err(|e| err(format!("examining {shown}"), e))?;
    if !is_regular(&now) || now.st_ino != st.st_ino {
        warn!("{shown} changed while being examined; left alone");
        return Ok(());
    }
    chown_fd(&f, o, shown)?;
    fchmod(&f, Mode::from_bits_truncate(FILE_MODE))
        .map_err(|e| err(format!("setting the mode of {shown} to 600"), e))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_new_spool_is_private_but_for_the_way_to_pickup() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("spool");
        let (spool, _) = crate::open(crate::SpoolConfig::new(&dir)).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut w = spool.content_writer(spool.ids().next());
            w.write(&vec![b'x'; crate::INLINE_MAX + 1]).await.unwrap();
            let env = crate::Envelope::placeholder(w.id());
            spool.commit(&env, w).await.unwrap();
        });
        assert_eq!(mode(&dir), 0o711);
        assert_eq!(mode(&dir.join("log")), 0o700);
        assert_eq!(mode(&dir.join("content")), 0o700);
        assert_eq!(mode(&dir.join("daemon.lock")), 0o600);
        let files: Vec<_> = ["log", "content"]
            .iter()
            .flat_map(|d| fs::read_dir(dir.join(d)).unwrap())
            .map(|e| e.unwrap().path())
            .collect();
        assert!(
            files
                .iter()
                .any(|p| p.extension().is_some_and(|e| e == "seg"))
        );
        assert!(files.iter().any(|p| p.starts_with(dir.join("content"))));
        for f in files {
            assert_eq!(mode(&f), 0o600, "{}", f.display());
        }
    }

    #[test]
    fn modes_of_an_old_spool_are_tightened_and_its_world_readable_lock_removed() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("spool");
        for d in ["log", "content"] {
            fs::create_dir_all(dir.join(d)).unwrap();
            fs::set_permissions(dir.join(d), fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::write(dir.join("lock"), "").unwrap();
        prepare(&dir, None).unwrap();
        assert_eq!(mode(&dir), 0o711);
        assert_eq!(mode(&dir.join("log")), 0o700);
        assert_eq!(mode(&dir.join("content")), 0o700);
        assert!(!dir.join("lock").exists());
    }

    #[test]
    fn links_in_place_of_directories_are_refused_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let elsewhere = t.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o755)).unwrap();
        let dir = t.path().join("spool");
        fs::create_dir(&dir).unwrap();
        symlink(&elsewhere, dir.join("log")).unwrap();
        let e = prepare(&dir, None).unwrap_err().to_string();
        assert!(e.contains("log is not a directory"), "{e}");
        assert_eq!(mode(&elsewhere), 0o755);
    }

    #[test]
    fn root_hands_over_the_spool_without_following_links_or_entering_pickup() {
        if !nix::unistd::geteuid().is_root() {
            return; // giving files away needs root
        }
        let nobody = Owner {
            uid: 65534,
            gid: 65534,
        };
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        fs::write(&outside, "root's").unwrap();
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o644)).unwrap();
        let dir = t.path().join("spool");
        for d in ["log", "content", "pickup"] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        fs::write(dir.join("daemon.lock"), "").unwrap();
        fs::write(dir.join("log/0000000000000001.seg"), "").unwrap();
        fs::set_permissions(
            dir.join("log/0000000000000001.seg"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        fs::write(dir.join("content/S1"), "").unwrap();
        symlink(&outside, dir.join("content/link")).unwrap();
        symlink("/nonexistent", dir.join("log/dangling")).unwrap();
        symlink("..", dir.join("log/up")).unwrap();
        fs::write(dir.join("pickup/a-users-file"), "").unwrap();
        symlink(&outside, dir.join("pickup/x")).unwrap();

        prepare(&dir, Some(nobody)).unwrap();

        for p in [
            "",
            "log",
            "content",
            "pickup",
            "daemon.lock",
            "log/0000000000000001.seg",
            "content/S1",
        ] {
            let m = fs::symlink_metadata(dir.join(p)).unwrap();
            assert_eq!((m.uid(), m.gid()), (65534, 65534), "{p}");
        }
        assert_eq!(mode(&dir.join("log/0000000000000001.seg")), 0o600);
        assert_eq!(mode(&dir.join("content/S1")), 0o600);
        let o = fs::metadata(&outside).unwrap();
        assert_eq!((o.uid(), o.mode() & 0o7777), (0, 0o644));
        for p in [
            "content/link",
            "log/dangling",
            "log/up",
            "pickup/x",
            "pickup/a-users-file",
        ] {
            assert_eq!(fs::symlink_metadata(dir.join(p)).unwrap().uid(), 0, "{p}");
        }
        assert_eq!(fs::metadata(t.path()).unwrap().uid(), 0);
    }
}
