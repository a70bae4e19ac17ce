//! Local users against the daemon, deployed the way the operator guide says: started as root
//! with `user = "postrider"`. An unprivileged local user plants links in `pickup/` (the one
//! spool directory local users can write), fights over the lock, and tries to read or link
//! queued mail; the daemon must start and serve, change nothing outside its spool, and keep
//! everyone's mail to itself.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::users::{self, DAEMON_USER, LOCAL_USER, OTHER_USER};
use common::{Daemon, Raw, wait_for};

/// Runs `script` with `sh -c` as `user`.
fn sh_as(user: &str, script: &str) -> Output {
    users::command_as(user, "/bin/sh")
        .args(["-c", script])
        .output()
        .expect("run a shell as a local user")
}

/// A place for a spool the daemon's user and local users can reach, with root's things next
/// to it that nothing may touch: `etc/` stands in for /etc (a link to the real one would
/// hand the machine's /etc to the daemon user on a vulnerable build) and `secret` is a
/// root-only file.
struct World {
    base: tempfile::TempDir,
    spool: PathBuf,
}

impl World {
    /// A spool as `sendmail` run by root leaves it before the daemon's first start: the
    /// directory and a 1733 `pickup/`.
    fn new() -> World {
        users::ensure(DAEMON_USER);
        users::ensure(LOCAL_USER);
        users::ensure(OTHER_USER);
        let base = tempfile::tempdir().expect("tempdir");
        users::make_traversable(base.path());
        let spool = base.path().join("spool");
        std::fs::create_dir_all(spool.join("pickup")).unwrap();
        std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(
            spool.join("pickup"),
            std::fs::Permissions::from_mode(0o1733),
        )
        .unwrap();
        let etc = base.path().join("etc");
        std::fs::create_dir_all(etc.join("ssl")).unwrap();
        std::fs::write(etc.join("passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::fs::write(etc.join("ssl/key.pem"), "not a key\n").unwrap();
        std::fs::set_permissions(
            etc.join("ssl/key.pem"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::fs::write(base.path().join("secret"), "root's eyes only\n").unwrap();
        std::fs::set_permissions(
            base.path().join("secret"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        World { base, spool }
    }

    fn etc(&self) -> PathBuf {
        self.base.path().join("etc")
    }

    fn secret(&self) -> PathBuf {
        self.base.path().join("secret")
    }

    /// Owner, group and mode of everything outside the spool the daemon might reach: the
    /// stand-in /etc (all of it), the secret, the world's base, and /etc with its entries.
    fn snapshot(&self) -> Vec<(PathBuf, u32, u32, u32)> {
        fn stat(p: &Path, out: &mut Vec<(PathBuf, u32, u32, u32)>) {
            if let Ok(m) = std::fs::symlink_metadata(p) {
                out.push((p.to_path_buf(), m.uid(), m.gid(), m.mode()));
            }
        }
        fn walk(p: &Path, out: &mut Vec<(PathBuf, u32, u32, u32)>) {
            stat(p, out);
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        walk(&e.path(), out);
                    } else {
                        stat(&e.path(), out);
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.etc(), &mut out);
        stat(&self.secret(), &mut out);
        stat(self.base.path(), &mut out);
        stat(Path::new("/etc"), &mut out);
        for e in std::fs::read_dir("/etc").unwrap().flatten() {
            stat(&e.path(), &mut out);
        }
        out.sort();
        out
    }

    /// Starts the daemon as root on this spool, dropping to the daemon user.
    fn daemon(&self) -> Daemon {
        let d = Daemon::start(&format!(
            "spool = \"{}\"\nuser = \"{DAEMON_USER}\"\n[delivery]\nenabled = false\n",
            self.spool.display()
        ));
        // Local users run `postrider queue` and `sendmail` with this configuration.
        users::make_traversable(d.dir.path());
        std::fs::set_permissions(&d.config, std::fs::Permissions::from_mode(0o644)).unwrap();
        d
    }
}

/// The daemon greets within `limit` and queues a message.
fn serves_smtp(d: &Daemon, limit: Duration) {
    let mut s = Raw::greeted_within(d.port, limit);
    assert!(cmd(&mut s, "EHLO client.test").starts_with("250"));
    assert!(cmd(&mut s, "MAIL FROM:<a@src.test>").starts_with("250"));
    assert!(cmd(&mut s, "RCPT TO:<b@dst.test>").starts_with("250"));
    assert!(cmd(&mut s, "DATA").starts_with("354"));
    let r = cmd(&mut s, "Subject: still here\r\n\r\nhello\r\n.");
    assert!(r.starts_with("250"), "{r}");
}

/// One command, its final reply line. Reads retry on EINTR: a socket read with a timeout
/// fails that way after the test process was stopped and resumed, which is not the
/// daemon's doing.
fn cmd(s: &mut Raw, line: &str) -> String {
    use std::io::{Read, Write};
    s.stream
        .write_all(format!("{line}\r\n").as_bytes())
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        let last = text
            .strip_suffix("\r\n")
            .and_then(|t| t.rsplit("\r\n").next());
        if let Some(last) =
            last.filter(|l| l.len() >= 3 && l.as_bytes().get(3).is_none_or(|&c| c == b' '))
        {
            return last.to_string();
        }
        match s.stream.read(&mut buf) {
            Ok(0) => return text,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("reading the reply to {line:?}: {e}; got {text:?}"),
        }
    }
}

fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: local-user tests create users and start the daemon as root");
    false
}

/// The local user plants `links` (name, target) in `pickup/` before the daemon starts; the
/// daemon must then serve within a deadline, run as its user, own its spool, and leave
/// everything outside the spool as it was.
fn plant_and_start(w: &World, links: &[(&str, String)]) {
    let pickup = w.spool.join("pickup");
    let mut plant = format!("cd {}", pickup.display());
    for (name, target) in links {
        plant.push_str(&format!(" && ln -s {target} {name}"));
    }
    let out = sh_as(LOCAL_USER, &plant);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = w.snapshot();

    let d = w.daemon();
    serves_smtp(&d, Duration::from_secs(5));

    // Compared by path: other tests may add users (and /etc/passwd- with them) meanwhile.
    let before: std::collections::HashMap<_, _> = before
        .into_iter()
        .map(|(p, u, g, m)| (p, (u, g, m)))
        .collect();
    let changed: Vec<_> = w
        .snapshot()
        .into_iter()
        .filter(|(p, u, g, m)| before.get(p).is_some_and(|was| *was != (*u, *g, *m)))
        .collect();
    assert!(
        changed.is_empty(),
        "changed hands outside the spool: {changed:?}"
    );
    let daemon = users::ensure(DAEMON_USER);
    for p in [w.spool.clone(), w.spool.join("pickup")] {
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(
            (m.uid(), m.gid()),
            (daemon.uid, daemon.gid),
            "{}",
            p.display()
        );
    }
    let pid = d.child.as_ref().unwrap().id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uids.split_whitespace()
            .skip(1)
            .all(|u| u == daemon.uid.to_string()),
        "{uids}"
    );
}

#[test]
fn links_in_pickup_to_a_directory_and_a_root_only_file_hand_nothing_over() {
    if !require_root() {
        return;
    }
    let w = World::new();
    plant_and_start(
        &w,
        &[
            ("x", w.etc().display().to_string()),
            ("secret", w.secret().display().to_string()),
        ],
    );
}

#[test]
fn a_dangling_link_in_pickup_does_not_stop_the_daemon() {
    if !require_root() {
        return;
    }
    plant_and_start(
        &World::new(),
        &[("dangling", "/nonexistent/postrider-test".into())],
    );
}

#[test]
fn links_to_the_parent_in_pickup_do_not_stall_start_up() {
    if !require_root() {
        return;
    }
    plant_and_start(&World::new(), &[("up1", "..".into()), ("up2", "..".into())]);
}

/// `flock -n PATH` as `user`, holding the lock until the returned child's stdin closes;
/// `None` if the lock could not be taken.
fn hold_lock(user: &str, path: &Path) -> Option<std::process::Child> {
    let mut c = users::command_as(user, "/usr/bin/flock")
        .arg("-n")
        .arg(path)
        .args(["-c", "echo held; read x"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run flock");
    let mut line = String::new();
    use std::io::BufRead;
    let _ = std::io::BufReader::new(c.stdout.take().unwrap()).read_line(&mut line);
    if line.trim() == "held" {
        Some(c)
    } else {
        let _ = c.wait();
        None
    }
}

#[test]
fn a_local_user_cannot_take_or_hold_the_spool_lock() {
    if !require_root() {
        return;
    }
    let w = World::new();
    // A spool as older versions left it: world-readable, with a lock anyone can open.
    for d in ["log", "content"] {
        std::fs::create_dir_all(w.spool.join(d)).unwrap();
        std::fs::set_permissions(w.spool.join(d), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(w.spool.join("lock"), "").unwrap();
    std::fs::set_permissions(w.spool.join("lock"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let holder = hold_lock(LOCAL_USER, &w.spool.join("lock"));
    assert!(
        holder.is_some(),
        "the old lock should be lockable by anyone"
    );

    let mut d = w.daemon();
    serves_smtp(&d, Duration::from_secs(5));
    drop(holder); // closes its stdin: flock exits

    // A stopped (here: crashed) daemon leaves nothing a local user can lock or create to
    // keep it down.
    d.kill9();
    for p in [w.spool.join("lock"), w.spool.join("daemon.lock")] {
        assert!(
            hold_lock(LOCAL_USER, &p).is_none(),
            "{} could be locked by a local user",
            p.display()
        );
    }
    let out = sh_as(
        LOCAL_USER,
        &format!("touch {}/lock {0}/daemon.lock", w.spool.display()),
    );
    assert!(!out.status.success());
    d.restart();
    serves_smtp(&d, Duration::from_secs(5));
}

#[test]
fn queued_mail_is_readable_by_the_daemon_user_and_root_only() {
    if !require_root() {
        return;
    }
    let w = World::new();
    let mut d = w.daemon();
    // The first local user submits mail with sendmail (over SMTP, the daemon is up), one
    // small message (in the log) and one big (its own content file).
    for body in [
        "Subject: private\n\nfor bob only\n".to_string(),
        format!(
            "Subject: big\n\n{}",
            format!("{}\n", "x".repeat(70)).repeat(4500)
        ),
    ] {
        let mut c = users::command_as(LOCAL_USER, env!("CARGO_BIN_EXE_postrider"))
            .args(["sendmail", "bob@dst.test"])
            .env("POSTRIDER_CONFIG", &d.config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        c.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wait_for("both messages queued", Duration::from_secs(10), || {
        d.queued() == 2
    });

    // What is on disk, as root sees it: the daemon's, private.
    let daemon = users::ensure(DAEMON_USER);
    let spool_meta = std::fs::metadata(&w.spool).unwrap();
    assert_eq!(spool_meta.mode() & 0o7777, 0o711);
    let mut files = Vec::new();
    for sub in ["log", "content"] {
        let m = std::fs::metadata(w.spool.join(sub)).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (daemon.uid, 0o700), "{sub}");
        for e in std::fs::read_dir(w.spool.join(sub)).unwrap().flatten() {
            let m = e.metadata().unwrap();
            assert_eq!(
                (m.uid(), m.mode() & 0o7777),
                (daemon.uid, 0o600),
                "{}",
                e.path().display()
            );
            files.push(e.path());
        }
    }
    let lock = std::fs::metadata(w.spool.join("daemon.lock")).unwrap();
    assert_eq!((lock.uid(), lock.mode() & 0o7777), (daemon.uid, 0o600));
    let sock = std::fs::symlink_metadata(w.spool.join("control.sock")).unwrap();
    assert_eq!((sock.uid(), sock.mode() & 0o777), (daemon.uid, 0o600));
    assert!(
        files.iter().any(|f| f.starts_with(w.spool.join("content"))),
        "{files:?}"
    );
    assert!(
        files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "seg")),
        "{files:?}"
    );

    // Neither the sender nor anyone else reads, lists or links any of it (the lock, in the
    // traversable top directory, is only unreadable: whether a file one cannot read may be
    // hard-linked is the kernel's fs.protected_hardlinks).
    for user in [LOCAL_USER, OTHER_USER] {
        let out = sh_as(user, &format!("cat {}/daemon.lock", w.spool.display()));
        assert!(!out.status.success(), "{user} opened the lock");
        for f in &files {
            let out = sh_as(user, &format!("cat {}", f.display()));
            assert!(
                !out.status.success() && out.stdout.is_empty(),
                "{user} read {}",
                f.display()
            );
            let out = sh_as(
                user,
                &format!("ln {} /tmp/pr-link-$$ && rm /tmp/pr-link-$$", f.display()),
            );
            assert!(!out.status.success(), "{user} hard-linked {}", f.display());
        }
        for dir in ["", "log", "content"] {
            let out = sh_as(user, &format!("ls {}/{dir}", w.spool.display()));
            assert!(
                !out.status.success(),
                "{user} listed {}/{dir}",
                w.spool.display()
            );
        }
        // Not through the daemon either...
        let out = sh_as(
            user,
            &format!(
                "{} queue list -c {}",
                env!("CARGO_BIN_EXE_postrider"),
                d.config.display()
            ),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("bob@"),
            "{user}: {err}"
        );
        assert!(
            err.contains("permission denied") && err.contains("root"),
            "{err}"
        );
    }
    // ...nor from the spool while the daemon is down: a clear refusal, not an empty queue.
    assert!(d.terminate(Duration::from_secs(30)).success());
    let out = sh_as(
        OTHER_USER,
        &format!(
            "{} queue list -c {}",
            env!("CARGO_BIN_EXE_postrider"),
            d.config.display()
        ),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{err}");
    assert!(
        err.contains(&w.spool.display().to_string())
            && err.contains(&format!("user '{DAEMON_USER}'"))
            && err.contains("root"),
        "{err}"
    );
    // Root still reads the queue offline.
    let out = Command::new(env!("CARGO_BIN_EXE_postrider"))
        .args(["queue", "--json", "list", "-c"])
        .arg(&d.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("bob@dst.test"));
}

#[test]
fn local_users_still_reach_pickup_while_the_daemon_is_down() {
    if !require_root() {
        return;
    }
    let w = World::new();
    let mut d = w.daemon();
    Raw::greeted_within(d.port, Duration::from_secs(10));
    // Down hard (a SIGTERM this early may come before the signal handlers are in place).
    d.kill9();
    // The private spool must not lock local users out of `sendmail`'s fallback.
    let mut c = users::command_as(LOCAL_USER, env!("CARGO_BIN_EXE_postrider"))
        .args(["sendmail", "bob@dst.test"])
        .env("POSTRIDER_CONFIG", &d.config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    c.stdin
        .take()
        .unwrap()
        .write_all(b"Subject: while down\n\nhello\n")
        .unwrap();
    // Its exit status is the pickup side's business (today it can report a temporary
    // failure after the file was written); what matters here is that the mail gets in.
    let _ = c.wait_with_output().unwrap();
    d.restart();
    wait_for(
        "the pickup file in the queue",
        Duration::from_secs(10),
        || d.queued() == 1,
    );
}

/// `postrider serve` started as root with only the capabilities `contrib/postrider.service`
/// leaves it (its `CapabilityBoundingSet=`, read from the unit), serving SMTP on `port`.
fn serve_like_the_systemd_unit(w: &World, port: u16) -> common::Proc {
    let unit = std::fs::read_to_string(common::repo_root().join("contrib/postrider.service"))
        .expect("read contrib/postrider.service");
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let config = w.base.path().join("postrider.toml");
    std::fs::write(
        &config,
        format!(
            "hostname = \"mx.postrider.test\"\nspool = \"{}\"\nuser = \"{DAEMON_USER}\"\n\
             [delivery]\nenabled = false\n[smtp]\nlisten = [\"127.0.0.1:{port}\"]\n",
            w.spool.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(w.base.path().join("postrider.log")).unwrap();
    let child = Command::new("setpriv")
        .arg(format!("--bounding-set=-all,{}", caps.join(",")))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_postrider"))
        .args(["serve", "-c"])
        .arg(&config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("run setpriv");
    common::Proc(child)
}

fn greets_or_log(w: &World, p: &mut common::Proc, port: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log =
            || std::fs::read_to_string(w.base.path().join("postrider.log")).unwrap_or_default();
        if let Ok(Some(status)) = p.0.try_wait() {
            panic!("postrider exited ({status}):\n{}", log());
        }
        if common::port_open(port) && Raw::greeted(port).is_some() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no greeting within 10 s:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_systemd_units_capabilities_are_enough_to_take_over_and_restart_a_spool() {
    if !require_root() {
        return;
    }
    let w = World::new();
    let daemon = users::ensure(DAEMON_USER);
    // As older versions left it after handing it over: the user's, world-readable, and a
    // lock left by a run as root.
    for d in ["log", "content"] {
        std::fs::create_dir_all(w.spool.join(d)).unwrap();
    }
    std::fs::write(w.spool.join("log/0000000000000001.seg"), "").unwrap();
    std::fs::write(w.spool.join("daemon.lock"), "").unwrap();
    std::fs::set_permissions(
        w.spool.join("daemon.lock"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    for p in ["", "log", "content", "pickup", "log/0000000000000001.seg"] {
        std::os::unix::fs::chown(w.spool.join(p), Some(daemon.uid), Some(daemon.gid)).unwrap();
    }
    for round in 0..2 {
        let port = common::free_port();
        let mut p = serve_like_the_systemd_unit(&w, port);
        greets_or_log(&w, &mut p, port);
        let seg = std::fs::metadata(w.spool.join("log/0000000000000001.seg"));
        if let Ok(m) = seg {
            assert_eq!(m.mode() & 0o7777, 0o600, "round {round}");
        }
        let lock = std::fs::metadata(w.spool.join("daemon.lock")).unwrap();
        assert_eq!((lock.uid(), lock.mode() & 0o7777), (daemon.uid, 0o600));
        assert_eq!(std::fs::metadata(&w.spool).unwrap().mode() & 0o7777, 0o711);
        assert_eq!(
            std::fs::metadata(w.spool.join("log")).unwrap().mode() & 0o7777,
            0o700
        );
        // Stopped hard: the restart must also take over what a crash left.
        let _ = p.0.kill();
        let _ = p.0.wait();
    }
}

#[test]
fn a_spool_the_daemon_user_cannot_reach_is_named_at_start() {
    if !require_root() {
        return;
    }
    users::ensure(DAEMON_USER);
    let base = tempfile::tempdir().unwrap();
    let hidden = base.path().join("root-only");
    std::fs::create_dir(&hidden).unwrap();
    std::fs::set_permissions(&hidden, std::fs::Permissions::from_mode(0o700)).unwrap();
    let spool = hidden.join("spool");
    let config = base.path().join("postrider.toml");
    std::fs::write(
        &config,
        format!(
            "spool = \"{}\"\nuser = \"{DAEMON_USER}\"\n[smtp]\nlisten = [\"127.0.0.1:{}\"]\n",
            spool.display(),
            common::free_port()
        ),
    )
    .unwrap();
    let mut p = common::Proc(
        Command::new(env!("CARGO_BIN_EXE_postrider"))
            .args(["serve", "-c"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut status = None;
    wait_for("postrider to give up", Duration::from_secs(10), || {
        status = p.0.try_wait().unwrap();
        status.is_some()
    });
    assert!(!status.unwrap().success());
    let mut err = String::new();
    use std::io::Read;
    p.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(
        err.contains(&spool.display().to_string())
            && err.contains(&format!("as user '{DAEMON_USER}'"))
            && err.contains("reachable"),
        "{err}"
    );
}
