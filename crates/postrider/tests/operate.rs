//! What an administrator does every day, against a running daemon with deferred mail to
//! several domains: the queue commands, sendmail(1) from a script, `queue run --once`.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn send(d: &Daemon, from: &str, to: &str) -> String {
    let out = swaks(
        d.port,
        &["--from", from, "--to", to, "--header", "Subject: operate"],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let id = text
        .split("queued as ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("not queued: {text}"));
    id.to_string()
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn all_tried(d: &Daemon, n: usize) -> bool {
    let q = d.queue_json();
    q.as_array().is_some_and(|l| {
        l.len() == n
            && l.iter()
                .all(|m| m["recipients"][0]["tries"].as_u64().unwrap_or(0) >= 1)
    })
}

#[test]
fn queue_commands_against_a_running_daemon() {
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let d = Daemon::start(&format!(
        "[routes]\n\"a.test\" = \"[127.0.0.1]:{pa}\"\n\"b.test\" = \"[127.0.0.1]:{pb}\"\n\
         \"c.test\" = \"[127.0.0.1]:{pc}\"\n[delivery]\nbackoff = [\"1h\"]\n"
    ));
    let a1 = send(&d, "s1@src.test", "x@a.test");
    let a2 = send(&d, "s2@src.test", "y@a.test");
    let b1 = send(&d, "s3@src.test", "z@b.test");
    let c1 = send(&d, "s4@src.test", "w@c.test");
    wait_for("every message tried once", Duration::from_secs(30), || {
        all_tried(&d, 4)
    });

    // list, human and JSON.
    let text = ok(d.cli(&["queue", "list"]));
    for id in [&a1, &a2, &b1, &c1] {
        assert!(text.contains(id.as_str()), "{text}");
    }
    assert!(text.contains("x@a.test [deferred, "), "{text}");
    assert!(
        text.contains("Connection refused"),
        "the last error is shown: {text}"
    );
    assert!(text.contains("-- 4 message(s), 4 recipient(s)"), "{text}");
    // show: envelope, recipient state and the headers.
    let text = ok(d.cli(&["queue", "show", &b1]));
    assert!(text.contains("sender: <s3@src.test>"), "{text}");
    assert!(
        text.contains("recipient: <z@b.test> state=deferred tries=1"),
        "{text}"
    );
    assert!(text.contains("Subject: operate"), "{text}");
    let shown: Value = serde_json::from_str(&ok(d.cli(&["queue", "--json", "show", &b1]))).unwrap();
    assert_eq!(shown["recipients"][0]["state"], "deferred");
    assert!(shown["recipients"][0]["last_error"].as_str().is_some());
    // shape: domains by recipients.
    let shape: Value = serde_json::from_str(&ok(d.cli(&["queue", "--json", "shape"]))).unwrap();
    let rows: Vec<(String, u64)> = shape
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["domain"].as_str().unwrap().to_string(),
                r["total"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("a.test".into(), 2),
            ("b.test".into(), 1),
            ("c.test".into(), 1)
        ]
    );

    // hold: a held message is not delivered by a flush; release lets it go.
    ok(d.cli(&["queue", "hold", &a2]));
    let held: Value = serde_json::from_str(&ok(d.cli(&["queue", "--json", "show", &a2]))).unwrap();
    assert_eq!(held["held"], true);
    let sink_a = Sink::start_on(pa, &[]);
    ok(d.cli(&["queue", "flush", "a.test"]));
    wait_for(
        "the unheld message at a.test",
        Duration::from_secs(20),
        || sink_a.messages().len() == 1,
    );
    // The sink has the message a moment before its result is recorded: wait for the queue.
    wait_for(
        "the delivered message to leave the queue",
        Duration::from_secs(20),
        || d.queued() == 3,
    );
    assert_eq!(sink_a.messages().len(), 1, "the held message stays");
    assert_eq!(d.queued(), 3, "the held message stays");
    ok(d.cli(&["queue", "release", &a2]));
    wait_for("the released message", Duration::from_secs(20), || {
        sink_a.messages().len() == 2
    });
    // delete: gone without a bounce.
    ok(d.cli(&["queue", "delete", &c1]));
    assert_eq!(d.queued(), 1);
    // flush with no domain: everything.
    let sink_b = Sink::start_on(pb, &[]);
    ok(d.cli(&["queue", "flush"]));
    wait_for("b.test's message", Duration::from_secs(20), || {
        sink_b.messages().len() == 1
    });
    d.wait_empty(10);
    // Unknown ids are errors with a message, not silence.
    let out = d.cli(&["queue", "show", "S000000000000000100"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no message"));
}

#[test]
fn sendmail_t_from_a_script() {
    let sink = Sink::start(&[]);
    let d = Daemon::start(&format!(
        "[routes]\n\"dst.test\" = \"[127.0.0.1]:{}\"\n",
        sink.port
    ));
    let out = d.sendmail(&["-t", "-i", "-f", "cron@src.test"], b"To: ops@dst.test\nCc: two@dst.test\nBcc: hidden@dst.test\nSubject: nightly\n\nall good\n.\nstill body\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the message at the sink", Duration::from_secs(20), || {
        sink.messages().len() == 1
    });
    let rec = &sink.records()[0];
    assert_eq!(
        Sink::rcpts(rec),
        ["hidden@dst.test", "ops@dst.test", "two@dst.test"]
    );
    assert_eq!(rec["mail_from"], "cron@src.test");
    let text = sink.message_text(rec["file"].as_str().unwrap());
    for h in ["Date: ", "Message-ID: <", "From: ", "Subject: nightly"] {
        assert!(text.contains(h), "{h} missing:\n{text}");
    }
    assert!(!text.contains("hidden@dst.test"), "Bcc is removed:\n{text}");
    assert!(
        text.contains("\r\n.\r\n") || text.contains("\n.\n"),
        "-i keeps a lone dot:\n{text}"
    );
}

#[test]
fn queue_run_once_delivers_with_the_daemon_stopped() {
    let port = free_port();
    let mut d = Daemon::start(&format!(
        "[routes]\n\"dst.test\" = \"[127.0.0.1]:{port}\"\n[delivery]\nbackoff = [\"1h\"]\n"
    ));
    send(&d, "a@src.test", "r@dst.test");
    send(&d, "b@src.test", "r@dst.test");
    wait_for("both tried", Duration::from_secs(30), || all_tried(&d, 2));
    let status = d.terminate(Duration::from_secs(30));
    assert!(status.success());
    let sink = Sink::start_on(port, &[]);
    ok(d.cli(&["queue", "run", "--once"]));
    assert_eq!(
        sink.messages().len(),
        2,
        "delivered before run --once returned"
    );
    assert_eq!(d.queued(), 0, "and recorded in the spool");
}

/// `GET /metrics`, parsed into name{labels} -> value.
fn scrape(port: u16) -> std::collections::HashMap<String, f64> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics port");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap();
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

#[test]
fn metrics_match_the_queue() {
    let sink = Sink::start(&[]);
    let (pa, pb) = (free_port(), free_port());
    let mport = free_port();
    let d = Daemon::start(&format!(
        "[routes]\n\"a.test\" = \"[127.0.0.1]:{pa}\"\n\"b.test\" = \"[127.0.0.1]:{pb}\"\n\
         \"ok.test\" = \"[127.0.0.1]:{}\"\n[delivery]\nbackoff = [\"1h\"]\n\
         [control]\nmetrics = \"127.0.0.1:{mport}\"\n",
        sink.port
    ));
    send(&d, "s@src.test", "x@a.test");
    send(&d, "s@src.test", "y@a.test");
    let held = send(&d, "s@src.test", "z@b.test");
    send(&d, "s@src.test", "fine@ok.test");
    wait_for("the delivery to ok.test", Duration::from_secs(20), || {
        sink.messages().len() == 1
    });
    wait_for("the deferrals", Duration::from_secs(20), || {
        all_tried(&d, 3)
    });
    ok(d.cli(&["queue", "hold", &held]));
    let m = scrape(mport);
    let q = d.queue_json();
    let queued = q.as_array().unwrap().len() as f64;
    assert_eq!(m["postrider_queue_messages"], queued);
    assert_eq!(m["postrider_queue_messages"], 3.0);
    assert_eq!(m["postrider_queue_deferred_recipients"], 3.0);
    assert_eq!(m["postrider_queue_held_messages"], 1.0);
    assert_eq!(m["postrider_messages_received_total"], 4.0);
    assert_eq!(m["postrider_deliveries_total{outcome=\"delivered\"}"], 1.0);
    assert!(m["postrider_deliveries_total{outcome=\"deferred\"}"] >= 3.0);
    assert_eq!(m["postrider_deliveries_total{outcome=\"failed\"}"], 0.0);
    assert!(m["postrider_domain_backoff_level{level=\"1\"}"] >= 1.0);
    assert!(m["postrider_spool_commits_total"] >= 4.0);
    assert!(m["postrider_spool_fsyncs_total"] >= 1.0);
    assert_eq!(
        m["postrider_spool_batch_size_count"],
        m["postrider_spool_batch_size_bucket{le=\"+Inf\"}"]
    );
    assert_eq!(m["postrider_connections_out"], 0.0);
    assert!(m["postrider_dns_lookups_total"] >= 4.0);
}

#[test]
fn sighup_reloads_local_users_and_keeps_running() {
    let d = Daemon::start(
        "[local]\ndomains = [\"local.test\"]\nusers = [\"alice\"]\n[delivery]\nenabled = false\n\
         [smtp]\nmax_recipients = 1\n",
    );
    let rcpts = |who: &[&str]| -> Vec<String> {
        let mut c = Raw::connect(d.port);
        c.replies(1);
        c.cmd("EHLO client.test");
        c.cmd("MAIL FROM:<s@src.test>");
        who.iter()
            .map(|w| c.cmd(&format!("RCPT TO:<{w}@local.test>")))
            .collect()
    };
    assert!(rcpts(&["bob"])[0].starts_with("550 5.1.1"));
    assert!(rcpts(&["alice", "postmaster"])[1].starts_with("452 4.5.3"));
    let text = std::fs::read_to_string(&d.config).unwrap();
    let text = text
        .replace("users = [\"alice\"]", "users = [\"alice\", \"bob\"]")
        .replace("max_recipients = 1", "max_recipients = 2")
        .replace("enabled = false", "enabled = false\nconcurrency = 7");
    std::fs::write(&d.config, text).unwrap();
    let pid = d.child.as_ref().unwrap().id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_for("bob to exist", Duration::from_secs(10), || {
        rcpts(&["bob"])[0].starts_with("250")
    });
    // New sessions get the new limits; what was fixed at start is named in the log.
    assert!(rcpts(&["alice", "bob"])[1].starts_with("250"));
    assert!(
        d.log()
            .contains("changes to delivery take effect after a restart"),
        "{}",
        d.log()
    );
    // A broken file changes nothing and is reported.
    std::fs::write(&d.config, "[smtp\nbroken").unwrap();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_for("the error in the log", Duration::from_secs(10), || {
        d.log().contains("keeping the running configuration")
    });
    assert!(rcpts(&["bob"])[0].starts_with("250"));
    assert!(rcpts(&["carol"])[0].starts_with("550"));
}

#[test]
fn drops_privileges_to_the_configured_user() {
    if !nix::unistd::geteuid().is_root() {
        // The switch needs root; as anyone else the setting is ignored with a warning,
        // which this checks instead.
        let d = Daemon::start("user = \"nobody\"\n[delivery]\nenabled = false\n");
        assert!(d.log().contains("ignored: not started as root"));
        return;
    }
    let d = Daemon::start("user = \"nobody\"\n[delivery]\nenabled = false\n");
    let pid = d.child.as_ref().unwrap().id();
    // The switch comes after the ports are bound (and logged): the greeting comes after it.
    Raw::greeted_within(d.port, Duration::from_secs(10));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .to_string();
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .unwrap()
        .uid
        .as_raw();
    assert!(
        uid_line
            .split_whitespace()
            .skip(1)
            .all(|u| u == nobody.to_string()),
        "{uid_line}"
    );
    // Still able to write the spool (new content, new commits).
    let out = swaks(d.port, &["--from", "a@src.test", "--to", "b@dst.test"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("queued as S"));
    assert_eq!(d.queued(), 1);
}

#[test]
fn sendmail_with_the_daemon_down_uses_the_pickup_directory() {
    let sink = Sink::start(&[]);
    let mut d = Daemon::start(&format!(
        "[routes]\n\"dst.test\" = \"[127.0.0.1]:{}\"\n",
        sink.port
    ));
    assert!(d.terminate(Duration::from_secs(30)).success());
    let out = d.sendmail(
        &["-f", "cron@src.test", "ops@dst.test"],
        b"Subject: while down\n\n.leading dot line\nbody\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("pickup"));
    d.restart();
    wait_for(
        "the picked-up message at the sink",
        Duration::from_secs(20),
        || sink.messages().len() == 1,
    );
    let rec = &sink.records()[0];
    assert_eq!(rec["mail_from"], "cron@src.test");
    let text = sink.message_text(rec["file"].as_str().unwrap());
    assert!(text.contains("Subject: while down"), "{text}");
    assert!(text.contains("postrider pickup"), "{text}");
    assert!(text.contains("\n.leading dot line"), "dots survive: {text}");
    wait_for(
        "the pickup directory to empty",
        Duration::from_secs(10),
        || std::fs::read_dir(d.spool().join("pickup")).map_or(0, |r| r.count()) == 0,
    );
}
