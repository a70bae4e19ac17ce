//! Real Unix users for the tests that run postrider the way it is deployed: the daemon's own
//! system user (`user = "postrider"`) and unprivileged local users who attack what local users
//! can reach. The tests run as root; users are created once and kept (creating one is
//! idempotent, and parallel test binaries may race to create the same one).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// The system user the daemon drops to in deployment-shaped tests.
pub const DAEMON_USER: &str = "postrider";
/// An ordinary local user with a login shell and no privileges.
pub const LOCAL_USER: &str = "prlocal";
/// A second local user, to show one user cannot reach another's mail.
pub const OTHER_USER: &str = "prother";

/// A user's uid and gid.
#[derive(Debug, Clone, Copy)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

fn lookup(name: &str) -> Option<Ids> {
    let out = Command::new("id").arg("-u").arg(name).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    let out = Command::new("id").arg("-g").arg(name).output().ok()?;
    let gid = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    Some(Ids { uid, gid })
}

/// Creates `name` if it does not exist: a system user without a home and a login for the
/// daemon, an ordinary user otherwise.
pub fn ensure(name: &str) -> Ids {
    if let Some(ids) = lookup(name) {
        return ids;
    }
    let mut cmd = Command::new("useradd");
    if name == DAEMON_USER {
        cmd.args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
        ]);
    } else {
        cmd.args(["--no-create-home", "--shell", "/bin/sh"]);
    }
    let out = cmd.arg(name).output().expect("run useradd");
    // Exit 9: another test binary created it meanwhile.
    assert!(
        out.status.success() || out.status.code() == Some(9),
        "useradd {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lookup(name).unwrap_or_else(|| panic!("user {name} missing after useradd"))
}

/// A command run as `name` (uid, gid and supplementary groups of that user), with a clean
/// environment apart from PATH, the way a local user's shell would run it.
pub fn command_as(name: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    ensure(name);
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", name, "--regid", name, "--init-groups", "--"])
        .arg(program)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", "/tmp")
        .env("USER", name);
    cmd
}

/// Makes every directory from `dir` up to `/` traversable by other users, as a real spool's
/// parents (`/var/spool`) are; test temp dirs are created 0700.
pub fn make_traversable(dir: &Path) {
    let mut p = Some(dir);
    while let Some(d) = p {
        if let Ok(meta) = std::fs::metadata(d) {
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o011 != 0o011 {
                let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o011));
            }
        }
        p = d.parent();
    }
}
