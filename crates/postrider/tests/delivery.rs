//! Delivery against real servers on loopback: the aiosmtpd sink (per-recipient 4xx/5xx,
//! dropped connections), a pipelining recorder, Postfix's smtp-sink with and without
//! PIPELINING. Waits on conditions, never on luck.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn route_to(port: u16, extra: &str) -> String {
    format!(
        "[routes]\n\"dst.test\" = \"[127.0.0.1]:{port}\"\n[delivery]\nbackoff = [\"1h\"]\n{extra}"
    )
}

fn send(d: &Daemon, to: &str) {
    let out = swaks(
        d.port,
        &[
            "-f",
            "sender@src.test",
            "-t",
            to,
            "--header",
            "Subject: delivery test",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("queued as S"), "{text}");
}

#[test]
fn delivers_to_a_sink_with_received_header() {
    let sink = Sink::start(&[]);
    let d = Daemon::start(&route_to(sink.port, ""));
    send(&d, "rcpt@dst.test");
    wait_for("message at the sink", Duration::from_secs(20), || {
        sink.messages().len() == 1
    });
    let rec: serde_json::Value = serde_json::from_str(&sink.messages()[0]).unwrap();
    assert_eq!(rec["rcpt_tos"][0], "rcpt@dst.test");
    assert_eq!(rec["mail_from"], "sender@src.test");
    let text = sink.message_text(rec["file"].as_str().unwrap());
    assert!(text.starts_with("Received: from "), "{text}");
    assert!(text.contains("by mx.postrider.test (postrider)"));
    assert!(text.contains("Subject: delivery test"));
    wait_for("queue empty", Duration::from_secs(10), || {
        d.queue_json().as_array().is_some_and(|l| l.is_empty())
    });
}

#[test]
fn per_recipient_results() {
    let sink = Sink::start(&[
        "--rcpt-reply",
        "bad=550 5.1.1 no such user",
        "--rcpt-reply",
        "later=451 4.2.0 try later",
    ]);
    let d = Daemon::start(&route_to(sink.port, ""));
    send(&d, "good@dst.test,bad@dst.test,later@dst.test");
    wait_for(
        "delivery to the good recipient",
        Duration::from_secs(20),
        || sink.messages().len() == 1,
    );
    let rec: serde_json::Value = serde_json::from_str(&sink.messages()[0]).unwrap();
    assert_eq!(rec["rcpt_tos"], serde_json::json!(["good@dst.test"]));
    wait_for(
        "deferred recipient recorded",
        Duration::from_secs(10),
        || {
            let q = d.queue_json();
            let Some(m) = q.as_array().and_then(|l| l.first()).cloned() else {
                return false;
            };
            let r = m["recipients"].as_array().unwrap().clone();
            let state = |a: &str| {
                r.iter()
                    .find(|x| x["address"] == a)
                    .map(|x| x["state"].as_str().unwrap().to_owned())
            };
            state("later@dst.test").as_deref() == Some("deferred")
                && r.iter().any(|x| {
                    x["address"] == "later@dst.test"
                        && x["last_error"].as_str().unwrap_or("").contains("451")
                })
        },
    );
}

fn start_pipecheck(port: u16, dir: &std::path::Path) -> Proc {
    let mut child = Command::new(PYTHON)
        .arg(repo_root().join("tests/peers/pipecheck.py"))
        .args(["--port", &port.to_string(), "--out"])
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("pipecheck.py");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    Proc(child)
}

#[test]
fn one_pipelined_connection_carries_a_batch_of_100() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&route_to(port, ""));
    // The destination is down: every message is deferred for an hour.
    for i in 0..100 {
        let out = swaks(
            d.port,
            &[
                "-f",
                "s@src.test",
                "-t",
                &format!("r{i}@dst.test"),
                "--silent",
                "2",
            ],
        );
        assert!(out.status.success());
    }
    wait_for("100 deferred", Duration::from_secs(30), || {
        d.queue_json().as_array().is_some_and(|l| {
            l.len() == 100 && l.iter().all(|m| m["recipients"][0]["state"] == "deferred")
        })
    });
    let pc = start_pipecheck(port, dir.path());
    let out = d.cli(&["queue", "flush", "dst.test"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let count = || std::fs::read_to_string(dir.path().join("messages")).unwrap_or_default();
    wait_for("100 messages delivered", Duration::from_secs(30), || {
        count().trim() == "100"
    });
    let reads = std::fs::read_to_string(dir.path().join("reads.jsonl")).unwrap();
    let reads: Vec<serde_json::Value> = reads
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        reads.iter().all(|r| r["conn"] == 1),
        "all 100 messages over one connection"
    );
    let pipelined = reads.iter().any(|r| {
        let t = r["data"].as_str().unwrap();
        t.contains("MAIL FROM:") && t.contains("RCPT TO:") && t.contains("DATA\r\n")
    });
    assert!(pipelined, "MAIL, RCPT and DATA must arrive in one write");
    drop(pc);
}

fn smtp_sink(port: u16, dir: &std::path::Path, pipelining: bool) -> Proc {
    let mut cmd = Command::new("smtp-sink");
    cmd.args(["-u", "nobody", "-d"])
        .arg(format!("{}/%M.", dir.display()));
    if !pipelining {
        cmd.arg("-p");
    }
    cmd.arg(format!("127.0.0.1:{port}")).arg("100");
    let child = Proc(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("smtp-sink"),
    );
    wait_for("smtp-sink listening", Duration::from_secs(10), || {
        port_open(port)
    });
    child
}

fn dumped(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
}

#[test]
fn smtp_sink_with_and_without_pipelining() {
    for pipelining in [true, false] {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let sink = smtp_sink(port, dir.path(), pipelining);
        let d = Daemon::start(&route_to(port, ""));
        for i in 0..5 {
            send(&d, &format!("r{i}@dst.test"));
        }
        wait_for("5 messages at smtp-sink", Duration::from_secs(30), || {
            dumped(dir.path()) >= 5
        });
        drop(sink);
    }
}

/// Total tries recorded for every recipient in the queue, and the last errors.
fn queue_errors(d: &Daemon) -> Vec<String> {
    d.queue_json()
        .as_array()
        .map(|l| {
            l.iter()
                .flat_map(|m| m["recipients"].as_array().cloned().unwrap_or_default())
                .map(|r| r["last_error"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_refusing_or_unreachable_mx_sends_us_to_the_next() {
    // MX 5: nothing listens; MX 10: greets 554; MX 20: accepts. A 550 to every recipient
    // is an answer about the recipients, not a reason to try another host.
    let a = Sink::start_at(
        "127.0.0.2",
        0,
        &["--greeting", "554 5.3.2 not accepting mail"],
    );
    let port = a.port;
    let b = Sink::start_at("127.0.0.3", port, &[]);
    let r = Sink::start_at(
        "127.0.0.5",
        port,
        &["--rcpt-reply", "@=550 5.1.1 no such user"],
    );
    let dns = Dnsmasq::start(&[
        "--host-record=down.test,127.0.0.4",
        "--host-record=a.test,127.0.0.2",
        "--host-record=b.test,127.0.0.3",
        "--host-record=r.test,127.0.0.5",
        "--mx-host=two.test,down.test,5",
        "--mx-host=two.test,a.test,10",
        "--mx-host=two.test,b.test,20",
        "--mx-host=rej.test,r.test,10",
        "--mx-host=rej.test,b.test,20",
    ]);
    let d = Daemon::start(&format!(
        "[dns]\nnameservers = [\"127.0.0.1:{}\"]\n[delivery]\nport = {port}\nipv6 = false\n\
         backoff = [\"1h\"]\n",
        dns.port
    ));
    send(&d, "r@two.test");
    wait_for(
        "delivery through the third MX",
        Duration::from_secs(30),
        || b.messages().len() == 1,
    );
    assert_eq!(a.stats()["connections"], 1, "the 554 host was tried once");
    send(&d, "x@rej.test");
    wait_for("the rejection to be final", Duration::from_secs(30), || {
        d.log().contains("550 5.1.1 no such user")
    });
    d.wait_empty(20);
    assert_eq!(b.messages().len(), 1, "no retry of a 550 at the next MX");
    drop(r);
}

#[test]
fn a_dropped_connection_defers_the_rest_of_the_batch() {
    let port = free_port();
    let d = Daemon::start(&route_to(port, ""));
    for i in 0..5 {
        send(&d, &format!("r{i}@dst.test"));
    }
    wait_for("five deferred", Duration::from_secs(30), || {
        queue_errors(&d).iter().filter(|e| !e.is_empty()).count() == 5
    });
    // The server closes the connection at the third RCPT of a session.
    let flaky = Sink::start_on(port, &["--drop-after-rcpt", "3"]);
    let out = d.cli(&["queue", "flush"]);
    assert!(out.status.success());
    wait_for(
        "two delivered, the rest deferred again",
        Duration::from_secs(30),
        || flaky.messages().len() == 2 && d.queued() == 3,
    );
    let errors = queue_errors(&d);
    assert!(
        errors.iter().all(|e| e.starts_with("4.")),
        "a broken connection is a temporary failure: {errors:?}"
    );
    drop(flaky);
    let ok = Sink::start_on(port, &[]);
    let out = d.cli(&["queue", "flush"]);
    assert!(out.status.success());
    wait_for("the rest delivered", Duration::from_secs(30), || {
        ok.messages().len() == 3
    });
    d.wait_empty(20);
}

#[test]
fn a_slow_server_times_out_and_the_mail_is_kept() {
    let slow = Sink::start(&["--delay", "5"]);
    let d = Daemon::start(&route_to(slow.port, "data_done_timeout = \"1s\"\n"));
    send(&d, "r@dst.test");
    wait_for("the attempt to time out", Duration::from_secs(30), || {
        queue_errors(&d)
            .iter()
            .any(|e| e.contains("timeout") || e.contains("timed out"))
    });
    assert_eq!(
        d.queued(),
        1,
        "the message stays queued for the next attempt"
    );
}

/// A CA and a server certificate for `name`, made with openssl in `dir`.
fn make_certs(dir: &std::path::Path, name: &str) -> (String, String, String) {
    let p = |f: &str| dir.join(f).display().to_string();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.pem"),
        "-days",
        "2",
        "-subj",
        "/CN=postrider test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &p("srv.key"),
        "-out",
        &p("srv.csr"),
        "-subj",
        &format!("/CN={name}"),
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        format!("subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\n"),
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        &p("srv.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-out",
        &p("srv.pem"),
        "-days",
        "2",
        "-extfile",
        &p("ext.cnf"),
    ]);
    (p("ca.pem"), p("srv.pem"), p("srv.key"))
}

#[test]
fn tls_policies_per_destination() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certs(certs.path(), "mx.tls.test");
    let tls = Sink::start_at("127.0.0.1", 0, &["--tls-cert", &cert, "--tls-key", &key]);
    let port = tls.port;
    let plain = Sink::start_at("127.0.0.2", port, &[]);
    let dns = Dnsmasq::start(&[
        "--host-record=mx.tls.test,127.0.0.1",
        "--host-record=mx.bad.test,127.0.0.1",
        "--host-record=mx.plain.test,127.0.0.2",
        "--mx-host=tls.test,mx.tls.test,10",
        "--mx-host=bad.test,mx.bad.test,10",
        "--mx-host=plain.test,mx.plain.test,10",
        "--mx-host=open.test,mx.plain.test,10",
    ]);
    let d = Daemon::start(&format!(
        "[tls_policy]\n\"tls.test\" = \"verify\"\n\"bad.test\" = \"verify\"\n\"plain.test\" = \"encrypt\"\n\
         [dns]\nnameservers = [\"127.0.0.1:{}\"]\n[delivery]\nport = {port}\nipv6 = false\n\
         backoff = [\"1h\"]\ntls_ca_file = \"{ca}\"\n",
        dns.port
    ));
    // verify, and the certificate names the MX host: delivered over TLS.
    send(&d, "a@tls.test");
    wait_for("verified delivery", Duration::from_secs(30), || {
        tls.messages().len() == 1
    });
    assert_eq!(tls.records()[0]["tls"], true);
    // verify, but the certificate is for another name: kept, not sent in the clear.
    send(&d, "b@bad.test");
    // encrypt, to a server without STARTTLS: kept.
    send(&d, "c@plain.test");
    // no policy: opportunistic, so plain text to a server without STARTTLS is fine.
    send(&d, "d@open.test");
    wait_for(
        "the open domain's delivery",
        Duration::from_secs(30),
        || plain.messages().len() == 1,
    );
    wait_for("two deferrals", Duration::from_secs(30), || {
        queue_errors(&d).iter().filter(|e| !e.is_empty()).count() == 2
    });
    let errors = queue_errors(&d);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("NotValidForName") || e.contains("certificate")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("STARTTLS required")),
        "{errors:?}"
    );
    assert_eq!(
        tls.messages().len(),
        1,
        "nothing for bad.test reached the TLS host"
    );
    assert_eq!(
        plain.messages().len(),
        1,
        "nothing for plain.test went in the clear"
    );
}

#[test]
fn what_the_server_cannot_take_is_bounced_without_sending_it() {
    // SIZE 5000 announced, no SMTPUTF8.
    let narrow = Sink::start(&["--size-limit", "5000", "--no-smtputf8"]);
    let src = Sink::start(&[]);
    let d = Daemon::start(&format!(
        "[routes]\n\"dst.test\" = \"[127.0.0.1]:{}\"\n\"src.test\" = \"[127.0.0.1]:{}\"\n\
         [delivery]\nbackoff = [\"1h\"]\n",
        narrow.port, src.port
    ));
    // Too big for the announced SIZE.
    let body = "x".repeat(70) + "\r\n";
    let out = swaks(
        d.port,
        &[
            "-f",
            "sender@src.test",
            "-t",
            "big@dst.test",
            "--body",
            &body.repeat(100),
        ],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("queued as S"));
    // Needs SMTPUTF8 (an internationalized sender), which the server does not offer.
    let mut c = Raw::connect(d.port);
    c.replies(1);
    c.cmd("EHLO client.test");
    assert!(
        c.cmd("MAIL FROM:<sender@src.test> SMTPUTF8")
            .starts_with("250")
    );
    assert!(c.cmd("RCPT TO:<üser@dst.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: utf8\r\n\r\nhi\r\n");
    assert!(c.cmd(".").starts_with("250"));
    wait_for("two bounces", Duration::from_secs(30), || {
        src.records()
            .iter()
            .filter(|r| r["mail_from"] == "<>")
            .count()
            == 2
    });
    let texts: Vec<String> = src
        .records()
        .iter()
        .map(|r| src.message_text(r["file"].as_str().unwrap()))
        .collect();
    assert!(
        texts.iter().any(|t| t.contains("Status: 5.3.4")),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.contains("Status: 5.6.7")),
        "{texts:?}"
    );
    assert_eq!(
        narrow.messages().len(),
        0,
        "nothing was sent to the narrow server"
    );
    d.wait_empty(20);
}

#[test]
fn aliases_expand_and_list_copies_go_out_under_the_owner() {
    let lmtp = Sink::start(&["--lmtp"]);
    let dir = tempfile::tempdir().unwrap();
    let aliases = dir.path().join("aliases");
    std::fs::write(
        &aliases,
        "# lists\nteam: alice, bob\nowner-team: boss\npostmaster: alice\n",
    )
    .unwrap();
    let d = Daemon::start(&format!(
        "[local]\ndomains = [\"lists.test\"]\nlmtp = \"127.0.0.1:{}\"\naliases = \"{}\"\n\
         [delivery]\nbackoff = [\"1h\"]\n",
        lmtp.port,
        aliases.display()
    ));
    let mut c = Raw::connect(d.port);
    c.replies(1);
    c.cmd("EHLO client.test");
    assert!(c.cmd("MAIL FROM:<poster@src.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<team@lists.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<carol@lists.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: to the team\r\n\r\nhello\r\n");
    let r = c.cmd(".");
    assert!(r.starts_with("250"), "{r}");
    assert_eq!(
        r.matches(" S").count(),
        2,
        "two queue ids, the list copy's too: {r}"
    );
    wait_for("both copies over LMTP", Duration::from_secs(20), || {
        lmtp.messages().len() == 2
    });
    let recs = lmtp.records();
    let list = recs
        .iter()
        .find(|r| r["mail_from"] == "boss@lists.test")
        .expect("list copy");
    assert_eq!(Sink::rcpts(list), ["alice@lists.test", "bob@lists.test"]);
    let plain = recs
        .iter()
        .find(|r| r["mail_from"] == "poster@src.test")
        .expect("plain copy");
    assert_eq!(plain["rcpt_tos"], serde_json::json!(["carol@lists.test"]));
    d.wait_empty(20);
}
