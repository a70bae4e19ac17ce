//! Local submission as deployed: the daemon starts as root and drops to `user = "postrider"`,
//! and an unprivileged local user attacks the pickup directory (FIFOs, links, hard links,
//! forged envelopes, oversized files, floods) and uses `sendmail` with the daemon up and down.
//! Throughout, the daemon must answer SMTP within a second, stop promptly on SIGTERM, send
//! nothing it was not given by its owner, and hold each user to the local-submission policy.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::users::{self, DAEMON_USER, LOCAL_USER, OTHER_USER};
use common::{Daemon, Proc, Sink, wait_for};

/// A daemon in the deployed shape, its spool in a directory local users can traverse (as
/// /var/spool is) and a copy of its configuration they can read (as /etc/postrider's is).
struct World {
    d: Daemon,
    sink: Sink,
    /// Holds the spool, the readable configuration and the attack props.
    top: tempfile::TempDir,
}

impl World {
    fn start(smtp: &str, extra: &str) -> World {
        users::ensure(DAEMON_USER);
        users::ensure(LOCAL_USER);
        users::ensure(OTHER_USER);
        let sink = Sink::start(&[]);
        let top = tempfile::tempdir().expect("tempdir");
        users::make_traversable(top.path());
        let spool = top.path().join("spool");
        let d = Daemon::start(&format!(
            "spool = \"{}\"\nuser = \"{DAEMON_USER}\"\n{extra}\n[routes]\n\"dst.test\" = \"[127.0.0.1]:{p}\"\n\"victim.test\" = \"[127.0.0.1]:{p}\"\n[smtp]\n{smtp}\n",
            spool.display(),
            p = sink.port
        ));
        let w = World { d, sink, top };
        std::fs::copy(&w.d.config, w.config()).expect("copy the configuration");
        std::fs::set_permissions(w.config(), std::fs::Permissions::from_mode(0o644)).unwrap();
        wait_for("pickup/ and the socket", Duration::from_secs(10), || {
            w.pickup().is_dir() && w.spool().join("submit.sock").exists()
        });
        w
    }

    fn spool(&self) -> PathBuf {
        self.top.path().join("spool")
    }

    fn pickup(&self) -> PathBuf {
        self.spool().join("pickup")
    }

    fn config(&self) -> PathBuf {
        self.top.path().join("postrider.toml")
    }

    /// A shell script run as `user` in the pickup directory.
    fn sh_as(&self, user: &str, script: &str) -> Output {
        users::command_as(user, "/bin/sh")
            .arg("-c")
            .arg(script)
            .current_dir(self.pickup())
            .output()
            .expect("run sh")
    }

    /// The same, left running (killed when the returned Proc drops).
    fn sh_as_background(&self, user: &str, script: &str) -> Proc {
        Proc(
            users::command_as(user, "/bin/sh")
                .arg("-c")
                .arg(script)
                .current_dir(self.pickup())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn sh"),
        )
    }

    /// `sendmail ARGS` run by `user` as a script of theirs would, the message on stdin.
    fn sendmail_as(&self, user: &str, args: &[&str], stdin: &[u8]) -> Output {
        use std::io::Write;
        // A careful user's umask: sendmail's files must still be readable by the daemon.
        let mut child = users::command_as(user, "/bin/sh")
            .args(["-c", "umask 077; exec \"$0\" sendmail \"$@\""])
            .arg(env!("CARGO_BIN_EXE_postrider"))
            .args(args)
            .env("POSTRIDER_CONFIG", self.config())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run sendmail");
        // sendmail refuses bad arguments before it reads the message: a broken pipe then.
        let _ = child.stdin.take().unwrap().write_all(stdin);
        child.wait_with_output().expect("sendmail exit")
    }

    /// Messages at the sink whose text contains `needle`.
    fn delivered(&self, needle: &str) -> Vec<serde_json::Value> {
        self.sink
            .records()
            .into_iter()
            .filter(|r| {
                self.sink
                    .message_text(r["file"].as_str().unwrap_or_default())
                    .contains(needle)
            })
            .collect()
    }

    fn pickup_names(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.pickup())
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// The daemon greets a new SMTP client within one second.
fn answers_within_1s(port: u16) -> bool {
    let start = Instant::now();
    let Ok(mut s) = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 256];
    let got = s.read(&mut buf).unwrap_or(0);
    buf[..got].starts_with(b"220") && start.elapsed() < Duration::from_secs(1)
}

/// Checks SMTP every 100 ms for `how_long`.
fn keeps_answering(port: u16, how_long: Duration) {
    let end = Instant::now() + how_long;
    while Instant::now() < end {
        assert!(
            answers_within_1s(port),
            "the daemon did not greet within 1 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn write_owned(path: &Path, content: &[u8], uid: u32, gid: u32, mode: u32) {
    std::fs::write(path, content).unwrap();
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn hostile_pickup_entries_neither_stall_the_daemon_nor_leak_files() {
    let mut w = World::start("", "");
    let daemon = users::ensure(DAEMON_USER);
    let other = users::ensure(OTHER_USER);
    // Files the local user cannot read, in pickup format so that reading one would mail it:
    // root's, the daemon user's (as a TLS key would be), and another user's pickup-format
    // file that the local user may link but not own.
    let props = w.top.path();
    let secret_root = props.join("root-only");
    let secret_daemon = props.join("daemon-only");
    let others = props.join("others");
    write_owned(
        &secret_root,
        b"\nx@dst.test\n\nSubject: s\r\n\r\nROOT-SECRET-7731\r\n",
        0,
        0,
        0o600,
    );
    write_owned(
        &secret_daemon,
        b"\nx@dst.test\n\nSubject: s\r\n\r\nDAEMON-SECRET-7732\r\n",
        daemon.uid,
        daemon.gid,
        0o600,
    );
    write_owned(
        &others,
        b"boss@dst.test\nx@dst.test\n\nSubject: s\r\n\r\nHARDLINKED-7733\r\n",
        other.uid,
        other.gid,
        0o666,
    );

    // A FIFO whose writer never closes, and one feeding 150 MB (a parseable envelope then
    // zeros), planted while the daemon runs.
    // Each FIFO gets its writer (opened read-write, so the open does not wait for a reader)
    // under a tmp. name pickup ignores, and only then its real name.
    let _stuck = w.sh_as_background(
        LOCAL_USER,
        "mkfifo tmp.stuck && exec 3<>tmp.stuck && mv tmp.stuck stuck && exec sleep 600",
    );
    let _flood = w.sh_as_background(
        LOCAL_USER,
        "mkfifo tmp.flood && exec 3<>tmp.flood && mv tmp.flood flood && \
         { printf '\\nx@dst.test\\n\\nSubject: flood\\r\\n\\r\\nFLOOD-7734'; \
           exec head -c 150000000 /dev/zero; } >&3",
    );
    let script = format!(
        "ln -s /dev/zero zero && ln -s {} root && ln -s {} daemon && mkdir adir && \
         ln {} hardlink",
        secret_root.display(),
        secret_daemon.display(),
        others.display()
    );
    let out = w.sh_as(LOCAL_USER, &script);
    if !out.status.success() {
        // fs.protected_hardlinks refused the user: make the link as a host without that
        // protection would have let them.
        assert!(text(&out).contains("hardlink"), "{}", text(&out));
        std::fs::hard_link(&others, w.pickup().join("hardlink")).unwrap();
    }
    let entries = [
        ("stuck", "a FIFO"),
        ("flood", "a FIFO"),
        ("zero", "a symbolic link"),
        ("root", "a symbolic link"),
        ("daemon", "a symbolic link"),
        ("hardlink", "2 hard links"),
        ("adir", "a directory"),
    ];
    let refusals = |name: &str| -> Vec<String> {
        w.d.log()
            .lines()
            .filter(|l| l.contains(&format!("pickup/{name}:")) && l.contains("refused"))
            .map(str::to_owned)
            .collect()
    };
    keeps_answering(w.d.port, Duration::from_secs(3));
    // Every entry is dealt with: logged, and gone (or set aside as .bad).
    wait_for(
        "the hostile entries to be put away",
        Duration::from_secs(15),
        || {
            let names = w.pickup_names();
            entries
                .iter()
                .all(|(n, _)| !refusals(n).is_empty() && !names.contains(&n.to_string()))
        },
    );
    keeps_answering(w.d.port, Duration::from_secs(2));
    for (name, what) in entries {
        let lines = refusals(name);
        assert_eq!(
            lines.len(),
            1,
            "{name} logged once as {what}:\n{}",
            w.d.log()
        );
        assert!(lines[0].contains(what), "{name}: {}", lines[0]);
    }
    // The link targets are untouched and the other user's file still theirs alone.
    let m = std::fs::metadata(&others).unwrap();
    assert_eq!((m.uid(), m.nlink()), (other.uid, 1));
    assert!(
        std::fs::metadata("/dev/zero")
            .unwrap()
            .file_type()
            .is_char_device()
    );

    // The daemon still takes honest mail from the same user, by the socket and by pickup.
    let out = w.sendmail_as(
        LOCAL_USER,
        &["x@dst.test"],
        b"Subject: honest\n\nHONEST-7735\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    wait_for("the honest message", Duration::from_secs(15), || {
        w.delivered("HONEST-7735").len() == 1
    });
    for secret in ["ROOT-SECRET", "DAEMON-SECRET", "HARDLINKED", "FLOOD-7734"] {
        assert!(w.delivered(secret).is_empty(), "{secret} was mailed");
    }
    assert_eq!(w.sink.records().len(), 1, "only the honest message left");
    let started = Instant::now();
    assert!(w.d.terminate(Duration::from_secs(10)).success());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "SIGTERM took {:?}",
        started.elapsed()
    );
}

#[test]
fn pickup_files_get_the_local_submission_policy() {
    // 127.0.0.1 is not in relay_networks: local users may reach relay_domains only.
    let w = World::start(
        "relay_networks = [\"192.0.2.0/24\"]\nrelay_domains = [\"dst.test\"]\nmax_recipients = 3\nmax_message_size = 2000",
        "",
    );
    let big = "y".repeat(3000);
    let files = [
        ("a-forged", "ceo@bank.test\nx@dst.test\n\nSubject: forged\r\n\r\nFORGED-8801\r\n".to_string()),
        ("b-many", "\na@dst.test\nb@dst.test\nc@dst.test\nd@dst.test\n\nSubject: many\r\n\r\nMANY-8802\r\n".into()),
        ("c-big", format!("\nx@dst.test\n\nSubject: big\r\n\r\nBIG-8803 {big}\r\n")),
        ("d-relay", "\nx@victim.test\n\nSubject: relay\r\n\r\nRELAY-8804\r\n".into()),
        ("e-fine", "\na@dst.test\nb@dst.test\nc@dst.test\n\nSubject: fine\r\n\r\nFINE-8805\r\n".into()),
        // The smuggling forms SMTP refuses are refused here too: a next hop that takes a
        // bare CR or LF as a line end would see a second transaction.
        ("f-smuggle", "\nx@dst.test\n\nSubject: s\r\n\r\nSMUGGLE-8810\r.\r\nMAIL FROM:<ceo@bank.test>\r\n".into()),
        ("g-nul", "\nx@dst.test\n\nSubject: n\r\n\r\nNUL-8811 \u{0}\r\n".into()),
    ];
    for (name, content) in &files {
        let path = w.pickup().join(format!("tmp.{name}"));
        let script = format!("cat > tmp.{name} && mv tmp.{name} {name}");
        let mut child = users::command_as(LOCAL_USER, "/bin/sh")
            .arg("-c")
            .arg(&script)
            .current_dir(w.pickup())
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(content.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "{}", path.display());
    }
    wait_for("the two acceptable files", Duration::from_secs(15), || {
        w.delivered("FORGED-8801").len() == 1 && w.delivered("FINE-8805").len() == 1
    });
    let forged = &w.delivered("FORGED-8801")[0];
    assert_eq!(
        forged["mail_from"],
        format!("{LOCAL_USER}@mx.postrider.test"),
        "the forged sender is replaced by the user's address"
    );
    wait_for(
        "the refused files set aside",
        Duration::from_secs(10),
        || {
            w.pickup_names()
                == [
                    "b-many.bad",
                    "c-big.bad",
                    "d-relay.bad",
                    "f-smuggle.bad",
                    "g-nul.bad",
                ]
        },
    );
    let log = w.d.log();
    for (name, why) in [
        ("b-many", "smtp.max_recipients"),
        ("c-big", "smtp.max_message_size"),
        ("d-relay", "Relay access denied"),
        ("f-smuggle", "bare <CR>"),
        ("g-nul", "NUL octet"),
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("pickup/{name}")) && l.contains(why)),
            "{name}: {why}\n{log}"
        );
    }
    // The same policy over the socket, answered to sendmail at once.
    let out = w.sendmail_as(
        LOCAL_USER,
        &["-f", "ceo@bank.test", "x@victim.test"],
        b"Subject: s\n\nRELAY-8806\n",
    );
    assert_eq!(out.status.code(), Some(65), "{}", text(&out));
    assert!(text(&out).contains("Relay access denied"), "{}", text(&out));
    let out = w.sendmail_as(
        LOCAL_USER,
        &[
            "-f",
            "ceo@bank.test",
            "a@dst.test",
            "b@dst.test",
            "c@dst.test",
            "d@dst.test",
        ],
        b"Subject: s\n\nMANY-8807\n",
    );
    assert_eq!(out.status.code(), Some(65), "{}", text(&out));
    let out = w.sendmail_as(
        LOCAL_USER,
        &["-f", "ceo@bank.test", "x@dst.test"],
        b"Subject: s\n\nSOCKET-8808\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    // sendmail turns LF line ends into CRLF; a bare CR left in the text is still refused.
    let out = w.sendmail_as(
        LOCAL_USER,
        &["x@dst.test"],
        b"Subject: s\n\nSMUGGLE-8812\r.\r\nMAIL FROM:<ceo@bank.test>\n",
    );
    assert_eq!(out.status.code(), Some(65), "{}", text(&out));
    assert!(text(&out).contains("bare <CR>"), "{}", text(&out));
    wait_for("the socket submission", Duration::from_secs(15), || {
        w.delivered("SOCKET-8808").len() == 1
    });
    assert_eq!(
        w.delivered("SOCKET-8808")[0]["mail_from"],
        format!("{LOCAL_USER}@mx.postrider.test")
    );
    // Root is trusted: its -f stands.
    let out = w.d.sendmail(
        &["-f", "cron@src.test", "x@dst.test"],
        b"Subject: s\n\nROOT-8809\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    wait_for("root's message", Duration::from_secs(15), || {
        w.delivered("ROOT-8809").len() == 1
    });
    assert_eq!(w.delivered("ROOT-8809")[0]["mail_from"], "cron@src.test");
    for refused in ["MANY-88", "BIG-8803", "RELAY-88", "SMUGGLE-88", "NUL-8811"] {
        assert!(w.delivered(refused).is_empty(), "{refused} went out");
    }
    assert_eq!(w.sink.records().len(), 4);
}

#[test]
fn a_flood_is_held_to_the_per_user_rate() {
    let w = World::start("", "[local]\nmax_submissions_per_minute = 3");
    let out = w.sh_as(
        LOCAL_USER,
        "for i in 1 2 3 4 5 6; do printf '\\nx@dst.test\\n\\nSubject: n\\r\\n\\r\\nFLOOD-%s\\r\\n' $i > tmp.$i && mv tmp.$i f$i; done",
    );
    assert!(out.status.success(), "{}", text(&out));
    wait_for("three of the flood", Duration::from_secs(15), || {
        w.delivered("FLOOD-").len() == 3
    });
    // Over the rate the socket says so and sendmail leaves the message to wait in pickup/.
    let out = w.sendmail_as(LOCAL_USER, &["x@dst.test"], b"Subject: s\n\nFLOOD-7\n");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("max_submissions_per_minute"),
        "{}",
        text(&out)
    );
    // Root is not limited.
    let out = w.d.sendmail(&["x@dst.test"], b"Subject: s\n\nROOT-9901\n");
    assert!(out.status.success(), "{}", text(&out));
    wait_for("root's message", Duration::from_secs(15), || {
        w.delivered("ROOT-9901").len() == 1
    });
    // Two more scans: the rest still waits, logged once each.
    let scans = Instant::now();
    wait_for("two pickup scans", Duration::from_secs(5), || {
        scans.elapsed() > Duration::from_millis(2500)
    });
    assert_eq!(w.delivered("FLOOD-").len(), 3, "the rate holds");
    assert_eq!(w.pickup_names().len(), 4, "{:?}", w.pickup_names());
    let log = w.d.log();
    let waiting = log
        .lines()
        .filter(|l| l.contains("pickup") && l.contains("waiting:"))
        .count();
    assert_eq!(waiting, 4, "{log}");
    // SIGHUP raises the limit to 6: three more go out, and the minute's count carries over,
    // so the fourth still waits.
    let cfg = std::fs::read_to_string(&w.d.config).unwrap();
    let cfg = cfg.replace(
        "max_submissions_per_minute = 3",
        "max_submissions_per_minute = 6",
    );
    std::fs::write(&w.d.config, cfg).unwrap();
    let pid = w.d.child.as_ref().unwrap().id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_for("three more of the flood", Duration::from_secs(15), || {
        w.delivered("FLOOD-").len() == 6
    });
    let scans = Instant::now();
    wait_for("two more pickup scans", Duration::from_secs(5), || {
        scans.elapsed() > Duration::from_millis(2500)
    });
    assert_eq!(w.delivered("FLOOD-").len(), 6);
    assert_eq!(w.pickup_names().len(), 1, "{:?}", w.pickup_names());
}

#[test]
fn sendmail_as_a_local_user_with_the_daemon_up_and_down() {
    let mut w = World::start("", "");
    // Up: over the socket, delivered once, from the user whatever the environment says.
    let out = users::command_as(LOCAL_USER, env!("CARGO_BIN_EXE_postrider"))
        .args(["sendmail", "x@dst.test"])
        .env("POSTRIDER_CONFIG", w.config())
        .env("USER", "root")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(b"Subject: up\n\nUP-6601\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    wait_for("the message sent while up", Duration::from_secs(15), || {
        w.delivered("UP-6601").len() == 1
    });
    let rec = &w.delivered("UP-6601")[0];
    assert_eq!(rec["mail_from"], format!("{LOCAL_USER}@mx.postrider.test"));
    let body = w.sink.message_text(rec["file"].as_str().unwrap());
    assert!(
        body.contains(&format!("From: {LOCAL_USER}@mx.postrider.test")),
        "{body}"
    );
    assert!(w.pickup_names().is_empty(), "nothing went through pickup/");

    let injections: [(&[&str], &str); 4] = [
        (
            &["-f", "a@src.test\r\nRCPT TO:<x@victim.test>", "x@dst.test"],
            "-f",
        ),
        (&["-f", "a@src.test\nx@victim.test", "x@dst.test"], "-f"),
        (&["x@dst.test\nevil@victim.test"], "recipient"),
        (&["-F", "Me\r\nBcc: evil@victim.test", "x@dst.test"], "-F"),
    ];
    let try_injections = |w: &World| {
        for (args, names) in injections {
            let out = w.sendmail_as(LOCAL_USER, args, b"Subject: inj\n\nINJECTED\n");
            assert_eq!(out.status.code(), Some(64), "{args:?}: {}", text(&out));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains(names) && err.contains("nothing was sent"),
                "{err}"
            );
        }
        assert!(w.pickup_names().is_empty(), "{:?}", w.pickup_names());
    };
    try_injections(&w);

    // Down: into pickup/, exit 0 once the file is durable, delivered once after the start.
    assert!(w.d.terminate(Duration::from_secs(10)).success());
    try_injections(&w);
    let out = w.sendmail_as(
        LOCAL_USER,
        &["-f", "ceo@bank.test", "x@dst.test"],
        b"Subject: down\n\nDOWN-6602\n",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let names = w.pickup_names();
    assert_eq!(names.len(), 1, "{names:?}");
    let meta = std::fs::symlink_metadata(w.pickup().join(&names[0])).unwrap();
    assert_eq!(meta.uid(), users::ensure(LOCAL_USER).uid);
    w.d.restart();
    wait_for(
        "the message sent while down",
        Duration::from_secs(15),
        || w.delivered("DOWN-6602").len() == 1,
    );
    assert_eq!(
        w.delivered("DOWN-6602")[0]["mail_from"],
        format!("{LOCAL_USER}@mx.postrider.test")
    );
    wait_for("pickup/ to empty", Duration::from_secs(10), || {
        w.pickup_names().is_empty()
    });
    assert!(w.delivered("INJECTED").is_empty());
    assert_eq!(w.sink.records().len(), 2, "each message delivered once");
}

#[test]
fn idle_socket_connections_do_not_lock_out_other_users() {
    let w = World::start("", "");
    // The local user holds connections to the socket open and sends nothing.
    let hold = format!(
        "import socket, sys, time\n\
         conns = [socket.socket(socket.AF_UNIX) for _ in range(12)]\n\
         for c in conns: c.connect('{}')\n\
         print('held', flush=True)\n\
         time.sleep(600)\n",
        w.spool().join("submit.sock").display()
    );
    let mut holder = users::command_as(LOCAL_USER, common::PYTHON)
        .arg("-c")
        .arg(&hold)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _holder = Proc(holder);
    assert_eq!(line.trim(), "held");
    // Another user's mail goes straight in over the socket.
    let start = Instant::now();
    let out = w.sendmail_as(OTHER_USER, &["x@dst.test"], b"Subject: s\n\nOTHER-5501\n");
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("pickup"), "{}", text(&out));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    // The holder's own sendmail is told to wait and leaves the mail in pickup/, taken at the
    // next scan: no loss, no hang.
    let out = w.sendmail_as(LOCAL_USER, &["x@dst.test"], b"Subject: s\n\nHOLDER-5502\n");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("too many open local submissions"),
        "{}",
        text(&out)
    );
    wait_for("both messages", Duration::from_secs(15), || {
        w.delivered("OTHER-5501").len() == 1 && w.delivered("HOLDER-5502").len() == 1
    });
    assert!(answers_within_1s(w.d.port));
}
