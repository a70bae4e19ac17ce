//! TLS that does not strand mail: against tests/peers/badtls.py, a server that offers
//! STARTTLS, agrees to it and then breaks the handshake. Under `may` the message goes out in
//! plaintext on a second connection and the host is remembered as TLS-broken, so the next
//! message skips STARTTLS; under `encrypt` nothing is ever sent in the clear.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// The broken-TLS server and the events it wrote.
struct BadTls {
    _proc: Proc,
    port: u16,
    dir: tempfile::TempDir,
}

impl BadTls {
    fn start() -> BadTls {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(PYTHON)
            .arg(repo_root().join("tests/peers/badtls.py"))
            .arg("--out")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).expect("peer log"))
            .spawn()
            .expect("spawn badtls.py");
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line);
        let proc = Proc(child);
        let port = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("badtls.py said {line:?}"));
        BadTls {
            _proc: proc,
            port,
            dir,
        }
    }

    fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("event line"))
            .collect()
    }

    /// The connections (numbers) that carried a message, in order.
    fn message_conns(&self) -> Vec<u64> {
        self.events()
            .iter()
            .filter(|e| e["message"] == true)
            .map(|e| e["conn"].as_u64().unwrap())
            .collect()
    }

    /// The commands of connection `conn`, verbs only.
    fn verbs(&self, conn: u64) -> Vec<String> {
        self.events()
            .iter()
            .filter(|e| e["conn"] == conn && e["cmd"].is_string())
            .map(|e| {
                let cmd = e["cmd"].as_str().unwrap();
                cmd.split(' ').next().unwrap().to_uppercase()
            })
            .collect()
    }

    fn count(&self, verb: &str) -> usize {
        self.events()
            .iter()
            .filter(|e| {
                e["cmd"]
                    .as_str()
                    .is_some_and(|c| c.to_uppercase().starts_with(verb))
            })
            .count()
    }
}

fn config(port: u16, delivery: &str, after: &str) -> String {
    format!(
        "[routes]\n\"dst.test\" = \"[127.0.0.1]:{port}\"\n[delivery]\nbackoff = [\"1h\"]\n\
         {delivery}\n{after}"
    )
}

fn send(d: &Daemon, to: &str) -> String {
    let out = swaks(d.port, &["-f", "sender@src.test", "-t", to]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let id = text
        .split("queued as ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("{text}"));
    id.to_owned()
}

#[test]
fn may_falls_back_to_plaintext_and_then_skips_starttls() {
    let peer = BadTls::start();
    let d = Daemon::start(&config(
        peer.port,
        "tls = \"may\"\ntls_broken_for = \"1h\"",
        "",
    ));
    let first = send(&d, "one@dst.test");
    wait_for("the first message", Duration::from_secs(30), || {
        peer.message_conns().len() == 1
    });
    // Connection 1 asked for STARTTLS and broke; connection 2 carried the message in
    // plaintext, without asking for TLS again.
    assert_eq!(peer.message_conns(), vec![2], "{:?}", peer.events());
    assert!(peer.verbs(1).contains(&"STARTTLS".to_owned()));
    assert!(!peer.verbs(1).contains(&"MAIL".to_owned()));
    let second_conn = peer.verbs(2);
    assert!(
        !second_conn.contains(&"STARTTLS".to_owned()),
        "{second_conn:?}"
    );
    wait_for("queue empty", Duration::from_secs(10), || d.queued() == 0);
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("TLS handshake failed"))
        .unwrap_or_else(|| panic!("no fallback line in the log:\n{log}"));
    assert!(
        line.contains(&first) && line.contains("127.0.0.1") && line.contains("plaintext"),
        "{line}"
    );

    // Within tls_broken_for: no STARTTLS attempt at all, one connection, delivered.
    send(&d, "two@dst.test");
    wait_for("the second message", Duration::from_secs(30), || {
        peer.message_conns().len() == 2
    });
    assert_eq!(peer.message_conns(), vec![2, 3], "{:?}", peer.events());
    assert_eq!(peer.count("STARTTLS"), 1, "{:?}", peer.events());
    assert_eq!(
        d.log().matches("TLS handshake failed").count(),
        1,
        "the second message did not try TLS"
    );
}

#[test]
fn a_tls_policy_of_may_for_the_domain_falls_back_too() {
    let peer = BadTls::start();
    let d = Daemon::start(&config(
        peer.port,
        "tls = \"none\"",
        "[tls_policy]\n\"dst.test\" = \"may\"\n",
    ));
    send(&d, "one@dst.test");
    wait_for("the message", Duration::from_secs(30), || {
        peer.message_conns().len() == 1
    });
    assert_eq!(peer.message_conns(), vec![2]);
    assert_eq!(peer.count("STARTTLS"), 1);
}

#[test]
fn encrypt_never_falls_back() {
    let peer = BadTls::start();
    let d = Daemon::start(&config(
        peer.port,
        "tls = \"may\"",
        "[tls_policy]\n\"dst.test\" = \"encrypt\"\n",
    ));
    send(&d, "one@dst.test");
    let last_error = || -> String {
        d.queue_json()
            .as_array()
            .and_then(|l| l.first().cloned())
            .and_then(|m| m["recipients"][0]["last_error"].as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    wait_for("the deferral", Duration::from_secs(30), || {
        !last_error().is_empty()
    });
    assert!(last_error().contains("TLS"), "{}", last_error());
    assert_eq!(d.queued(), 1);
    assert!(peer.message_conns().is_empty());
    assert_eq!(peer.count("MAIL"), 0, "{:?}", peer.events());
    assert!(!d.log().contains("TLS handshake failed"));
    // A second message is not sent in the clear either: the memory is not read under encrypt
    // (and nothing was remembered), so it asks for STARTTLS again and stays queued.
    send(&d, "two@dst.test");
    wait_for("the second attempt", Duration::from_secs(30), || {
        peer.count("STARTTLS") == 2
    });
    wait_for("both deferred", Duration::from_secs(10), || {
        d.queue_json().as_array().is_some_and(|l| {
            l.len() == 2
                && l.iter().all(|m| {
                    m["recipients"][0]["last_error"]
                        .as_str()
                        .is_some_and(|e| !e.is_empty())
                })
        })
    });
    assert_eq!(peer.count("MAIL"), 0, "{:?}", peer.events());
}
