//! Real milters on loopback: a pymilter policy milter (reject, tempfail, add header, replace
//! body, add recipient, quarantine), OpenDKIM signing (the signature verifies with the
//! public key), and the `on_failure` policy for a milter that is down.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn config(sink: u16, milters: &str) -> String {
    format!(
        "[routes]\n\"dst.test\" = \"[127.0.0.1]:{sink}\"\n[delivery]\nbackoff = [\"1h\"]\n{milters}"
    )
}

/// One SMTP transaction; returns the replies to MAIL, each RCPT and the final dot.
fn transaction(port: u16, from: &str, rcpts: &[&str], subject: &str) -> Vec<String> {
    let mut c = Raw::connect(port);
    c.replies(1);
    c.cmd("EHLO client.src.test");
    let mut out = vec![c.cmd(&format!("MAIL FROM:<{from}>"))];
    if !out[0].starts_with("250") {
        return out;
    }
    let mut any = false;
    for r in rcpts {
        let rep = c.cmd(&format!("RCPT TO:<{r}>"));
        any |= rep.starts_with("250");
        out.push(rep);
    }
    if any {
        assert!(c.cmd("DATA").starts_with("354"));
        c.send(
            format!(
                "From: <{from}>\r\nTo: <{}>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@src.test>\r\n\r\noriginal body\r\n",
                rcpts[0]
            )
            .as_bytes(),
        );
        out.push(c.cmd("."));
    }
    c.cmd("QUIT");
    out
}

#[test]
fn a_policy_milter_decides_and_modifies() {
    let (_milter, mport) = policy_milter();
    let sink = Sink::start(&[]);
    let d = Daemon::start(&config(
        sink.port,
        &format!("[[milter]]\naddress = \"inet:127.0.0.1:{mport}\"\non_failure = \"tempfail\"\n"),
    ));
    // Sender tempfailed at MAIL.
    let r = transaction(d.port, "tempfail@src.test", &["a@dst.test"], "t1");
    assert!(r[0].starts_with("451 4.7.1"), "{r:?}");
    // One recipient rejected at RCPT, the other accepted; the message gets the header.
    let r = transaction(
        d.port,
        "s@src.test",
        &["blocked@dst.test", "ok@dst.test"],
        "plain",
    );
    assert!(
        r[1].starts_with("550 5.7.1") && r[1].contains("blocked by policy"),
        "{r:?}"
    );
    assert!(r[2].starts_with("250") && r[3].starts_with("250"), "{r:?}");
    // Body replaced and a recipient added.
    let r = transaction(d.port, "s@src.test", &["b@dst.test"], "replace addrcpt");
    assert!(r.last().unwrap().starts_with("250"), "{r:?}");
    // Rejected at end of message: nothing queued.
    let r = transaction(d.port, "s@src.test", &["c@dst.test"], "reject me");
    assert!(r.last().unwrap().starts_with("554 5.7.1"), "{r:?}");
    // Quarantined: held in the queue until released.
    let r = transaction(d.port, "s@src.test", &["q@dst.test"], "quarantine");
    assert!(r.last().unwrap().starts_with("250"), "{r:?}");

    wait_for("two messages at the sink", Duration::from_secs(30), || {
        sink.messages().len() == 2
    });
    let recs = sink.records();
    let plain = recs
        .iter()
        .find(|r| r["rcpt_tos"][0] == "ok@dst.test")
        .expect("plain message");
    let text = sink.message_text(plain["file"].as_str().unwrap());
    assert!(text.contains("X-Policy: checked"), "{text}");
    assert!(text.contains("original body"), "{text}");
    let changed = recs
        .iter()
        .find(|r| r["rcpt_tos"].as_array().unwrap().len() == 2)
        .expect("the message with the added recipient");
    assert_eq!(Sink::rcpts(changed), ["b@dst.test", "extra@dst.test"]);
    let text = sink.message_text(changed["file"].as_str().unwrap());
    assert!(text.contains("replaced by the policy milter"), "{text}");
    assert!(!text.contains("original body"), "{text}");
    assert!(text.contains("X-Policy: checked"), "{text}");
    // The quarantined message waits, held.
    let q = d.queue_json();
    let held: Vec<&serde_json::Value> = q
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["held"] == true)
        .collect();
    assert_eq!(held.len(), 1, "{q}");
    let id = held[0]["id"].as_str().unwrap().to_string();
    let out = d.cli(&["queue", "release", &id]);
    assert!(out.status.success());
    wait_for("the released message", Duration::from_secs(30), || {
        sink.messages().len() == 3
    });
}

#[test]
fn a_milter_that_is_down_gets_its_failure_action() {
    let sink = Sink::start(&[]);
    let down = free_port();
    for (action, want) in [("tempfail", "451"), ("reject", "550"), ("accept", "250")] {
        let d = Daemon::start(&config(
            sink.port,
            &format!(
                "[[milter]]\naddress = \"inet:127.0.0.1:{down}\"\non_failure = \"{action}\"\ntimeout = \"2s\"\n"
            ),
        ));
        let mut c = Raw::connect(d.port);
        c.replies(1);
        let r = c.cmd("EHLO client.src.test");
        if want == "250" {
            assert!(r.starts_with("250"), "{action}: {r}");
            assert!(c.cmd("MAIL FROM:<s@src.test>").starts_with("250"));
        } else {
            assert!(r.starts_with(want), "{action}: {r}");
            // The refusal sticks for the session.
            assert!(
                c.cmd("MAIL FROM:<s@src.test>").starts_with(want),
                "{action}"
            );
        }
    }
}

#[test]
fn opendkim_signs_and_the_signature_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path();
    let st = Command::new("opendkim-genkey")
        .args(["-b", "2048", "-d", "sign.test", "-s", "sel", "-D"])
        .arg(keys)
        .status()
        .expect("opendkim-genkey (package opendkim-tools)");
    assert!(st.success());
    let port = free_port();
    let conf = keys.join("opendkim.conf");
    std::fs::write(
        &conf,
        format!(
            "Mode s\nDomain sign.test\nSelector sel\nKeyFile {k}\nSocket inet:{port}@127.0.0.1\n\
             Canonicalization relaxed/simple\nInternalHosts 127.0.0.1\nBackground no\n\
             RequireSafeKeys false\nPidFile {p}\nSyslog no\n",
            k = keys.join("sel.private").display(),
            p = keys.join("pid").display()
        ),
    )
    .unwrap();
    let _dkim = Proc(
        Command::new("opendkim")
            .args(["-f", "-x"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("opendkim"),
    );
    wait_for("opendkim", Duration::from_secs(20), || port_open(port));
    let sink = Sink::start(&[]);
    let d = Daemon::start(&config(
        sink.port,
        &format!("[[milter]]\naddress = \"inet:127.0.0.1:{port}\"\n"),
    ));
    let r = transaction(d.port, "author@sign.test", &["r@dst.test"], "signed");
    assert!(r.last().unwrap().starts_with("250"), "{r:?}");
    wait_for("the signed message", Duration::from_secs(30), || {
        sink.messages().len() == 1
    });
    let file = sink
        .dir
        .path()
        .join(sink.records()[0]["file"].as_str().unwrap());
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("DKIM-Signature:") && text.contains("d=sign.test"),
        "{text}"
    );
    // Verify with dkimpy against the public key opendkim-genkey wrote (no DNS involved).
    let out = Command::new(PYTHON)
        .arg("-c")
        .arg(
            "import dkim,sys,re\n\
             txt=open(sys.argv[2]).read()\n\
             rec=''.join(re.findall(r'\"([^\"]*)\"', txt)).encode()\n\
             msg=open(sys.argv[1],'rb').read()\n\
             ok=dkim.verify(msg, dnsfunc=lambda name, timeout=5: rec)\n\
             print('verified' if ok else 'FAILED')\n",
        )
        .arg(&file)
        .arg(keys.join("sel.txt"))
        .output()
        .expect("python3-dkim");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("verified"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_milter_that_never_answers_times_out_into_its_failure_action() {
    // Accepts connections and reads, but never says a word.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    let sink = Sink::start(&[]);
    let d = Daemon::start(&config(
        sink.port,
        &format!(
            "[[milter]]\naddress = \"inet:127.0.0.1:{port}\"\non_failure = \"tempfail\"\ntimeout = \"1s\"\n"
        ),
    ));
    let mut c = Raw::connect(d.port);
    c.replies(1);
    let started = std::time::Instant::now();
    let r = c.cmd("EHLO client.src.test");
    assert!(r.starts_with("451 4.3.0"), "{r}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the milter timeout bounds the wait"
    );
}
