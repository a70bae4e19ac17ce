//! The SMTP server against real clients on loopback: swaks (plain, STARTTLS, pipelining),
//! smtp-source, raw sockets for exact replies, BDAT, smuggling, relay tricks and limits.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// Queue only: these tests look at what was accepted, not at delivery.
const NO_DELIVERY: &str = "[delivery]\nenabled = false\n";

fn queued(d: &Daemon) -> usize {
    d.queue_json().as_array().map(Vec::len).unwrap_or(0)
}

fn swaks_ok(out: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "swaks failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn swaks_plain_and_pipelined() {
    let d = Daemon::start(NO_DELIVERY);
    let t = swaks_ok(&swaks(d.port, &["-f", "a@src.test", "-t", "b@dst.test"]));
    assert!(t.contains("250 2.0.0 Ok: queued as S"), "{t}");
    let t = swaks_ok(&swaks(
        d.port,
        &[
            "--pipeline",
            "-f",
            "a@src.test",
            "-t",
            "c@dst.test,d@dst.test",
        ],
    ));
    assert!(t.contains("PIPELINING"), "{t}");
    assert!(t.contains("queued as S"), "{t}");
    wait_for("two messages queued", Duration::from_secs(10), || {
        queued(&d) == 2
    });
    let q = d.queue_json();
    let rcpts: Vec<String> = q
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| {
            m["recipients"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["address"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(rcpts.len(), 3, "{q}");
}

#[test]
fn swaks_starttls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(st.status.success());
    let d = Daemon::start(&format!(
        "{NO_DELIVERY}[smtp]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    ));
    let t = swaks_ok(&swaks(
        d.port,
        &["-tls", "-f", "a@src.test", "-t", "b@dst.test"],
    ));
    assert!(t.contains("220 2.0.0 Ready to start TLS"), "{t}");
    assert!(t.contains("queued as S"), "{t}");
    wait_for("message queued", Duration::from_secs(10), || {
        queued(&d) == 1
    });
}

#[test]
fn smtp_source_load_is_all_queued() {
    let d = Daemon::start(NO_DELIVERY);
    let out = Command::new("smtp-source")
        .args([
            "-m",
            "200",
            "-s",
            "10",
            "-l",
            "1024",
            "-f",
            "load@src.test",
            "-t",
            "sink@dst.test",
        ])
        .arg(format!("127.0.0.1:{}", d.port))
        .output()
        .expect("smtp-source (apt-get install postfix)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("200 queued", Duration::from_secs(20), || queued(&d) == 200);
}

#[test]
fn bdat_chunks_are_assembled() {
    let d = Daemon::start(NO_DELIVERY);
    let mut c = Raw::connect(d.port);
    c.replies(1);
    assert!(c.cmd("EHLO client.test").contains("CHUNKING"));
    c.send(
        b"MAIL FROM:<a@src.test>\r\nRCPT TO:<b@dst.test>\r\nBDAT 20\r\nSubject: chunk\r\n\r\nab",
    );
    let r = c.replies(3);
    assert!(r.contains("20 octets received"), "{r}");
    c.send(b"BDAT 4 LAST\r\ncd\r\n");
    let r = c.replies(1);
    assert!(r.starts_with("250 2.0.0 Ok: queued as S"), "{r}");
    let id = r.split_whitespace().last().unwrap().to_owned();
    let show = d.cli(&["queue", "show", &id]);
    assert!(
        show.status.success(),
        "{}",
        String::from_utf8_lossy(&show.stderr)
    );
}

#[test]
fn smuggling_variants_are_refused_and_nothing_is_queued() {
    let d = Daemon::start(NO_DELIVERY);
    let variants: [&[u8]; 7] = [
        b"\n.\n",
        b"\n.\r\n",
        b"\r.\r",
        b"\r\n.\r",
        b"\r\n.\n",
        b"\r.\r\n",
        b"\r\n\x00.\r\n",
    ];
    for v in variants {
        let mut c = Raw::connect(d.port);
        c.replies(1);
        c.cmd("EHLO client.test");
        c.send(b"MAIL FROM:<a@src.test>\r\nRCPT TO:<b@dst.test>\r\nDATA\r\n");
        let r = c.replies(3);
        assert!(r.contains("354"), "{r}");
        let mut body = b"Subject: x\r\n\r\nhello".to_vec();
        body.extend_from_slice(v);
        body.extend_from_slice(
            b"MAIL FROM:<evil@src.test>\r\nRCPT TO:<victim@dst.test>\r\nDATA\r\nsmuggled\r\n.\r\n",
        );
        c.send(&body);
        let r = c.replies(1);
        assert!(r.starts_with("550 5.6.11"), "variant {v:?}: {r}");
        // The session is still in sync: a clean message goes through.
        let r = c.cmd("RSET");
        assert!(r.starts_with("250"), "variant {v:?}: {r}");
    }
    assert_eq!(
        queued(&d),
        0,
        "no smuggled or refused message may be queued"
    );
}

#[test]
fn relay_tricks_are_denied_for_untrusted_clients() {
    let d = Daemon::start(&format!(
        "{NO_DELIVERY}[local]\ndomains = [\"example.org\"]\n[smtp]\nrelay_networks = []\nrelay_domains = [\"partner.test\"]\n"
    ));
    let mut c = Raw::connect(d.port);
    c.replies(1);
    c.cmd("EHLO client.test");
    assert!(c.cmd("MAIL FROM:<a@src.test>").starts_with("250"));
    for (rcpt, want) in [
        ("<user@example.org>", "250"),
        ("<user@EXAMPLE.ORG.>", "250"),
        ("<user@partner.test>", "250"),
        ("<postmaster>", "250"),
        ("<victim@elsewhere.test>", "554 5.7.1"),
        ("<victim%elsewhere.test@example.org>", "554 5.7.1"),
        ("<elsewhere.test!victim@example.org>", "554 5.7.1"),
        ("<\"victim@elsewhere.test\"@example.org>", "554 5.7.1"),
        ("<@example.org:victim@elsewhere.test>", "554 5.7.1"),
        ("<victim@[127.0.0.1]>", "554 5.7.1"),
        ("<victim@example.org.elsewhere.test>", "554 5.7.1"),
        ("<victim@xn--exmple-cua.org>", "554 5.7.1"),
    ] {
        let r = c.cmd(&format!("RCPT TO:{rcpt}"));
        assert!(r.starts_with(want), "RCPT TO:{rcpt} -> {r} (wanted {want})");
    }
}

#[test]
fn limits_and_hostile_clients() {
    let d = Daemon::start(&format!(
        "{NO_DELIVERY}[smtp]\nmax_message_size = \"10KB\"\nmax_recipients = 3\nmax_errors = 3\nmax_connections_per_client = 4\nconnection_limit_exceptions = []\ncommand_timeout = \"2s\"\n"
    ));
    // SIZE announced and enforced, declared and actual.
    let mut c = Raw::connect(d.port);
    c.replies(1);
    assert!(c.cmd("EHLO client.test").contains("SIZE 10000"));
    assert!(
        c.cmd("MAIL FROM:<a@src.test> SIZE=20000")
            .starts_with("552 5.3.4")
    );
    assert!(c.cmd("MAIL FROM:<a@src.test>").starts_with("250"));
    for i in 0..3 {
        assert!(
            c.cmd(&format!("RCPT TO:<r{i}@dst.test>"))
                .starts_with("250")
        );
    }
    assert!(c.cmd("RCPT TO:<r4@dst.test>").starts_with("452 4.5.3"));
    assert!(c.cmd("DATA").starts_with("354"));
    let mut big = vec![b'x'; 70];
    big.extend_from_slice(b"\r\n");
    let body: Vec<u8> = big.repeat(200);
    c.send(&body);
    assert!(c.cmd(".").starts_with("552 5.3.4"));
    // Commands out of order and too many errors.
    assert!(c.cmd("DATA").starts_with("503 5.5.1"));
    assert!(c.cmd("BOGUS").starts_with("500 5.5.2"));
    let r = c.cmd("BOGUS");
    assert!(r.contains("421 4.7.0"), "third error ends the session: {r}");
    // Over-long command line.
    let mut c = Raw::connect(d.port);
    c.replies(1);
    let r = c.cmd(&format!("NOOP {}", "a".repeat(600)));
    assert!(r.starts_with("500 5.5.6"), "{r}");
    assert!(
        c.cmd("NOOP").starts_with("250"),
        "session recovers after a long line"
    );
    drop(c);
    // Per-client connection limit. Earlier sessions end when the server reads their close,
    // so each slot is claimed with a wait for its 220.
    let held: Vec<Raw> = (0..4)
        .map(|_| Raw::greeted_within(d.port, Duration::from_secs(10)))
        .collect();
    let mut extra = Raw::connect(d.port);
    assert!(extra.replies(1).starts_with("421 4.7.0"));
    drop(held);
    // Idle clients are dropped after the command timeout.
    let mut idle = Raw::greeted_within(d.port, Duration::from_secs(10));
    let r = idle.replies(1);
    assert!(
        r.contains("421 4.4.2"),
        "idle client gets 421 after the timeout: {r}"
    );
}

#[test]
fn early_talkers_are_rejected() {
    let d = Daemon::start(&format!(
        "{NO_DELIVERY}[smtp]\ngreeting_delay = \"500ms\"\n"
    ));
    let mut c = Raw::connect(d.port);
    c.send(b"EHLO spammer.test\r\n");
    let r = c.replies(1);
    assert!(r.starts_with("554 5.5.0"), "{r}");
    let mut ok = Raw::connect(d.port);
    assert!(ok.replies(1).starts_with("220"));
}

#[test]
fn slow_clients_do_not_starve_others() {
    let d = Daemon::start(&format!(
        "{NO_DELIVERY}[smtp]\nmax_connections_per_client = 20\nconnection_limit_exceptions = []\n"
    ));
    // Twenty slow-loris clients from one loopback address dribble bytes.
    let slow: Vec<std::net::TcpStream> = (0..40)
        .filter_map(|_| {
            let sock = socket_from("127.0.0.2", d.port)?;
            Some(sock)
        })
        .collect();
    assert!(!slow.is_empty());
    for mut s in &slow {
        use std::io::Write;
        let _ = s.write_all(b"EHL");
    }
    // A normal client from another address is served at once.
    let start = std::time::Instant::now();
    let t = swaks_ok(&swaks(d.port, &["-f", "a@src.test", "-t", "b@dst.test"]));
    assert!(t.contains("queued as S"));
    assert!(start.elapsed() < Duration::from_secs(10));
}

fn socket_from(src: &str, port: u16) -> Option<std::net::TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    sock.bind(
        &format!("{src}:0")
            .parse::<std::net::SocketAddr>()
            .ok()?
            .into(),
    )
    .ok()?;
    sock.connect(
        &format!("127.0.0.1:{port}")
            .parse::<std::net::SocketAddr>()
            .ok()?
            .into(),
    )
    .ok()?;
    Some(sock.into())
}

#[test]
fn received_header_and_hop_limit() {
    let d = Daemon::start(&format!("{NO_DELIVERY}[smtp]\nmax_hops = 5\n"));
    let mut c = Raw::connect(d.port);
    c.replies(1);
    c.cmd("EHLO client.test");
    c.send(b"MAIL FROM:<a@src.test>\r\nRCPT TO:<b@dst.test>\r\nDATA\r\n");
    c.replies(3);
    let mut msg = String::new();
    for i in 0..5 {
        msg.push_str(&format!(
            "Received: from hop{i}.test by hop{}.test; Mon, 23 Nov 2026 01:00:00 +0000\r\n",
            i + 1
        ));
    }
    msg.push_str("Subject: loop\r\n\r\nbody\r\n.\r\n");
    c.send(msg.as_bytes());
    let r = c.replies(1);
    assert!(r.starts_with("554 5.4.6"), "{r}");
    assert_eq!(queued(&d), 0);
}

#[test]
fn shutdown_answers_421_and_exits() {
    let mut d = Daemon::start(NO_DELIVERY);
    let mut c = Raw::connect(d.port);
    c.replies(1);
    c.cmd("EHLO client.test");
    let pid = d.child.as_ref().unwrap().id();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let r = c.replies(1);
    assert!(r.contains("421 4.3.2"), "{r}");
    let status = d.terminate(Duration::from_secs(30));
    assert!(status.success(), "exit status {status}");
}
