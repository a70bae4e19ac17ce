//! The spool's directories, their owner and their modes: who may reach what on disk.
//!
//! Queued mail is everyone's mail, so only the daemon's user (and root) may read it: `log/`
//! and `content/` are 0700 and every file in them 0600. The spool directory itself is 0711
//! so local users can still reach `pickup/` (like the parents of a real maildrop) without
//! listing or opening anything else.
//!
//! Two steps, because root may hold nothing but `CAP_CHOWN` (the systemd unit): `prepare`
//! runs as root before the switch and only creates the spool directory and gives things to
//! the daemon's user; `settle` runs as that user when the spool is opened and sets the
//! modes (an owner may always chmod). Both run in a directory local users can reach, so
//! nothing follows a symbolic link and nothing recurses: directories are opened with
//! `O_NOFOLLOW | O_DIRECTORY` and changed through their descriptors, entries with
//! `AT_SYMLINK_NOFOLLOW` or through a descriptor opened with `O_NOFOLLOW`. The contents of
//! `pickup/` belong to the local users who wrote them and are never touched. Modes of files
//! are looked at only when their directory still has the wrong mode (a spool written by an
//! older version); owners by root at each start, one `fstatat` per file.

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, open, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchownat, unlinkat};
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

const DIR_FLAGS: OFlag = OFlag::O_DIRECTORY
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

fn is_regular(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
}

fn owned_by(st: &FileStat, o: Owner) -> bool {
    st.st_uid == o.uid && st.st_gid == o.gid
}

/// Opens `top/name` as a directory, not following a link; `None` if it does not exist.
fn subdir(
    top: &OwnedFd,
    name: &str,
    flags: OFlag,
    shown: &str,
) -> Result<Option<OwnedFd>, SpoolError> {
    match openat(top, name, flags | DIR_FLAGS, Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e @ (Errno::ELOOP | Errno::ENOTDIR)) => Err(err(
            format!("{shown} is not a directory (symbolic links are not followed)"),
            e,
        )),
        Err(e) => Err(err(format!("opening {shown}"), e)),
    }
}

/// Gives the directory or file behind `fd` (an `O_PATH` descriptor will do) to `o`.
fn chown_fd(fd: &OwnedFd, o: Owner, shown: &str) -> Result<(), SpoolError> {
    fchownat(
        fd,
        "",
        Some(Uid::from_raw(o.uid)),
        Some(Gid::from_raw(o.gid)),
        AtFlags::AT_EMPTY_PATH,
    )
    .map_err(|e| err(format!("giving {shown} to uid {}", o.uid), e))
}

/// Gives `name` in `dir` to `o` if it is a regular file that is not `o`'s yet.
fn chown_entry(
    dir: &OwnedFd,
    name: &std::ffi::OsStr,
    o: Owner,
    shown: &str,
) -> Result<(), SpoolError> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if is_regular(&st) && !owned_by(&st, o) => fchownat(
            dir,
            name,
            Some(Uid::from_raw(o.uid)),
            Some(Gid::from_raw(o.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| err(format!("giving {shown} to uid {}", o.uid), e)),
        Ok(st) if !is_regular(&st) => {
            warn!("{shown} is not a regular file; left alone");
            Ok(())
        }
        Ok(_) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(err(format!("examining {shown}"), e)),
    }
}

/// Root's part, before switching to `owner`: creates the spool directory if it is missing
/// and gives it to `owner`, with `log/`, `content/` and the regular files directly in them
/// (left by a run as root), `daemon.lock`, and `pickup/` itself, not what local users put
/// in it. Modes are left to `settle`.
pub fn prepare(dir: &Path, owner: Owner) -> Result<(), SpoolError> {
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
    let show = |name: &str| dir.join(name).display().to_string();
    // O_PATH: looking needs no read permission on directories that are already the user's.
    // The configured path itself may be a link the administrator made; nothing below it is
    // followed.
    let top = open(
        dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err(format!("opening {}", dir.display()), e))?;
    let st = fstat(&top).map_err(|e| err(format!("examining {}", dir.display()), e))?;
    if !owned_by(&st, owner) {
        chown_fd(&top, owner, &dir.display().to_string())?;
    }
    for sub in ["log", "content"] {
        let Some(path_fd) = subdir(&top, sub, OFlag::O_PATH, &show(sub))? else {
            continue;
        };
        let st = fstat(&path_fd).map_err(|e| err(format!("examining {}", show(sub)), e))?;
        // Root with CAP_DAC_READ_SEARCH lists even a directory that is the user's already
        // (a run as root without `user` may have left files in it); root with CAP_CHOWN
        // alone cannot, and needs to only when the directory is not the user's yet.
        let fd = match openat(&top, sub, OFlag::O_RDONLY | DIR_FLAGS, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::EACCES) if owned_by(&st, owner) => continue,
            Err(e) => return Err(err(format!("opening {}", show(sub)), e)),
        };
        let path = dir.join(sub);
        let rd = fs::read_dir(&path)
            .map_err(|e| SpoolError::io(format!("reading {}", path.display()), e))?;
        for e in rd {
            let e = e.map_err(|e| SpoolError::io(format!("reading {}", path.display()), e))?;
            let shown = path.join(e.file_name()).display().to_string();
            chown_entry(&fd, &e.file_name(), owner, &shown)?;
        }
        if !owned_by(&st, owner) {
            chown_fd(&fd, owner, &show(sub))?;
        }
    }
    // pickup/ itself must be the daemon's to manage; what local users put in it is theirs.
    if let Some(fd) = subdir(&top, "pickup", OFlag::O_PATH, &show("pickup"))? {
        let st = fstat(&fd).map_err(|e| err(format!("examining {}", show("pickup")), e))?;
        if !owned_by(&st, owner) {
            chown_fd(&fd, owner, &show("pickup"))?;
        }
    }
    // Left by a daemon that ran as root: the user must be able to open it.
    chown_entry(&top, "daemon.lock".as_ref(), owner, &show("daemon.lock"))
}

/// The owner's part, when the spool is opened: creates `log/` and `content/` if missing and
/// sets the modes of the spool directory, of those two and (where a directory's mode was
/// still wrong) of the regular files in them. The lock file of older versions (`lock`,
/// world-readable) is removed: anyone could open it, so anyone could hold it, and a
/// descriptor opened on it survives any chmod; `daemon.lock` replaces it.
pub fn settle(dir: &Path) -> Result<(), SpoolError> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(SPOOL_DIR_MODE)
            .create(dir)
            .map_err(|e| SpoolError::io(format!("creating {}", dir.display()), e))?;
    }
    let show = |name: &str| dir.join(name).display().to_string();
    let top = open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err(format!("opening {}", dir.display()), e))?;
    set_mode(&top, SPOOL_DIR_MODE, &dir.display().to_string())?;
    for sub in ["log", "content"] {
        match mkdirat(&top, sub, Mode::from_bits_truncate(PRIVATE_DIR_MODE)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(err(format!("creating {}", show(sub)), e)),
        }
        let Some(fd) = subdir(&top, sub, OFlag::O_RDONLY, &show(sub))? else {
            return Err(err(format!("opening {}", show(sub)), Errno::ENOENT));
        };
        let st = fstat(&fd).map_err(|e| err(format!("examining {}", show(sub)), e))?;
        if st.st_mode & 0o7777 != PRIVATE_DIR_MODE {
            let path = dir.join(sub);
            let rd = fs::read_dir(&path)
                .map_err(|e| SpoolError::io(format!("reading {}", path.display()), e))?;
            for e in rd {
                let e = e.map_err(|e| SpoolError::io(format!("reading {}", path.display()), e))?;
                let shown = path.join(e.file_name()).display().to_string();
                private_file(&fd, &e.file_name(), &shown)?;
            }
            set_mode(&fd, PRIVATE_DIR_MODE, &show(sub))?;
        }
    }
    match unlinkat(&top, "lock", UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => warn!("removing the old lock file {}: {e}", show("lock")),
    }
    Ok(())
}

fn set_mode(fd: &OwnedFd, mode: u32, shown: &str) -> Result<(), SpoolError> {
    let st = fstat(fd).map_err(|e| err(format!("examining {shown}"), e))?;
    if st.st_mode & 0o7777 != mode {
        fchmod(fd, Mode::from_bits_truncate(mode))
            .map_err(|e| err(format!("setting the mode of {shown} to {mode:o}"), e))?;
    }
    Ok(())
}

/// Sets `name` in `dir` to mode 0600 if it is a regular file; links and anything else are
/// left alone. The mode can only be changed through a descriptor without following a link.
fn private_file(dir: &OwnedFd, name: &std::ffi::OsStr, shown: &str) -> Result<(), SpoolError> {
    let st = match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(err(format!("examining {shown}"), e)),
    };
    if !is_regular(&st) {
        warn!("{shown} is not a regular file; left alone");
        return Ok(());
    }
    if st.st_mode & 0o7777 == FILE_MODE {
        return Ok(());
    }
    let f = match openat(
        dir,
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
        settle(&dir).unwrap();
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
        let e = settle(&dir).unwrap_err().to_string();
        assert!(e.contains("log is not a directory"), "{e}");
        if nix::unistd::geteuid().is_root() {
            let nobody = Owner {
                uid: 65534,
                gid: 65534,
            };
            let e = prepare(&dir, nobody).unwrap_err().to_string();
            assert!(e.contains("log is not a directory"), "{e}");
            assert_eq!(fs::metadata(&elsewhere).unwrap().uid(), 0);
        }
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

        prepare(&dir, nobody).unwrap();
        settle(&dir).unwrap();

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

    #[test]
    fn files_root_left_in_the_users_directories_are_given_to_the_user() {
        if !nix::unistd::geteuid().is_root() {
            return; // giving files away needs root
        }
        let nobody = Owner {
            uid: 65534,
            gid: 65534,
        };
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("spool");
        fs::create_dir_all(dir.join("log")).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
        std::os::unix::fs::chown(dir.join("log"), Some(65534), Some(65534)).unwrap();
        fs::set_permissions(dir.join("log"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(dir.join("log/0000000000000002.seg"), "").unwrap();
        prepare(&dir, nobody).unwrap();
        let m = fs::metadata(dir.join("log/0000000000000002.seg")).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534));
    }
}
