//! Bounces and delay notices end to end: real failures (5xx replies, DNS answers from
//! dnsmasq, loops, expiry) produce RFC 3464 DSNs, delivered to a sink for the sender's
//! domain and read back with Python's email package.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// Submits one message with exact ESMTP parameters; panics unless it was queued.
fn submit(d: &Daemon, mail: &str, rcpts: &[&str], body: &str) {
    let mut c = Raw::connect(d.port);
    c.replies(1);
    c.cmd("EHLO client.src.test");
    let r = c.cmd(&format!("MAIL FROM:{mail}"));
    assert!(r.starts_with("250"), "{r}");
    for rc in rcpts {
        let r = c.cmd(&format!("RCPT TO:{rc}"));
        assert!(r.starts_with("250"), "{rc}: {r}");
    }
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(
        format!("Subject: dsn test\r\nMessage-ID: <orig@src.test>\r\n\r\n{body}\r\n").as_bytes(),
    );
    let r = c.cmd(".");
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT");
}

/// DSNs (null sender) that reached `sink`, parsed.
fn dsns(sink: &Sink) -> Vec<Value> {
    sink.records()
        .iter()
        .filter(|r| r["mail_from"] == "<>" || r["mail_from"] == "")
        .map(|r| parse_dsn(&sink.dir.path().join(r["file"].as_str().unwrap())))
        .collect()
}

fn routes(dst: u16, src: u16) -> String {
    format!(
        "[routes]\n\"dst.test\" = \"[127.0.0.1]:{dst}\"\n\"src.test\" = \"[127.0.0.1]:{src}\"\n"
    )
}

/// A receiving sink for dst.test answering with `dst_args`, a sink for the senders'
/// domain src.test where DSNs arrive, and the daemon routing to both.
fn senders_and_receivers(dst_args: &[&str]) -> (Sink, Sink, Daemon) {
    let dst = Sink::start(dst_args);
    let src = Sink::start(&[]);
    let d = Daemon::start(&format!(
        "{}[delivery]\nbackoff = [\"1h\"]\n",
        routes(dst.port, src.port)
    ));
    (dst, src, d)
}

fn recipient<'a>(dsn: &'a Value, addr: &str) -> &'a Value {
    dsn["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["final-recipient"].as_str().unwrap().ends_with(addr))
        .unwrap_or_else(|| panic!("no recipient {addr} in {dsn}"))
}

#[test]
fn rcpt_rejections_make_one_dsn_with_every_field() {
    let (dst, src, d) = senders_and_receivers(&["--rcpt-reply", "bad=550 5.1.1 no such user"]);
    submit(
        &d,
        "<sender@src.test> RET=HDRS ENVID=QQ314159",
        &[
            "<bad@dst.test> NOTIFY=FAILURE ORCPT=rfc822;orig+2Bbad@dst.test",
            "<good@dst.test>",
            "<bad2@dst.test>",
        ],
        "the body that must not come back",
    );
    wait_for("the DSN", Duration::from_secs(30), || {
        !dsns(&src).is_empty()
    });
    d.wait_empty(20);
    assert_eq!(dst.messages().len(), 1, "good@ was delivered");
    let all = dsns(&src);
    assert_eq!(
        all.len(),
        1,
        "one DSN for the failures of one attempt: {all:?}"
    );
    let dsn = &all[0];
    assert_eq!(dsn["content_type"], "multipart/report");
    assert_eq!(dsn["report_type"], "delivery-status");
    assert_eq!(dsn["defects"], serde_json::json!([]));
    assert!(dsn["to"].as_str().unwrap().contains("sender@src.test"));
    assert_eq!(dsn["auto_submitted"], "auto-replied");
    let pm = &dsn["per_message"];
    assert_eq!(pm["reporting-mta"], "dns; mx.postrider.test");
    assert_eq!(pm["original-envelope-id"], "QQ314159");
    assert!(
        pm["arrival-date"]
            .as_str()
            .is_some_and(|s| s.contains(" +0000"))
    );
    assert_eq!(dsn["recipients"].as_array().unwrap().len(), 2);
    let bad = recipient(dsn, "bad@dst.test");
    assert_eq!(bad["action"], "failed");
    assert_eq!(bad["status"], "5.1.1");
    assert_eq!(bad["original-recipient"], "rfc822;orig+2Bbad@dst.test");
    assert_eq!(bad["remote-mta"], "dns; 127.0.0.1");
    assert!(
        bad["diagnostic-code"]
            .as_str()
            .unwrap()
            .contains("550 5.1.1 no such user")
    );
    assert!(bad["last-attempt-date"].is_string());
    assert_eq!(recipient(dsn, "bad2@dst.test")["status"], "5.1.1");
    // RET=HDRS: the headers come back, the body does not.
    assert_eq!(dsn["returned_type"], "text/rfc822-headers");
    let returned = dsn["returned"].as_str().unwrap();
    assert!(
        returned.contains("Message-ID: <orig@src.test>"),
        "{returned}"
    );
    assert!(!returned.contains("must not come back"));
}

#[test]
fn data_rejection_returns_the_full_message_with_ret_full() {
    let (_dst, src, d) = senders_and_receivers(&["--data-reply", "554 5.7.1 content rejected"]);
    submit(
        &d,
        "<sender@src.test> RET=FULL",
        &["<a@dst.test>"],
        "body line one",
    );
    wait_for("the DSN", Duration::from_secs(30), || dsns(&src).len() == 1);
    let dsn = &dsns(&src)[0];
    let a = recipient(dsn, "a@dst.test");
    assert_eq!(a["status"], "5.7.1");
    assert!(
        a["diagnostic-code"]
            .as_str()
            .unwrap()
            .contains("content rejected")
    );
    assert_eq!(dsn["returned_type"], "message/rfc822");
    assert!(dsn["returned"].as_str().unwrap().contains("body line one"));
    d.wait_empty(20);
}

#[test]
fn dns_failures_and_loops_bounce_with_their_status() {
    let dns = Dnsmasq::start(&[
        "--mx-host=nullmx.test,.,0",
        "--host-record=me.test,127.0.0.9",
        "--mx-host=loop.test,me.test,10",
    ]);
    let src = Sink::start(&[]);
    let d = Daemon::start(&format!(
        "[routes]\n\"src.test\" = \"[127.0.0.1]:{}\"\n[dns]\nnameservers = [\"127.0.0.1:{}\"]\n\
         timeout = \"2s\"\n[delivery]\nbackoff = [\"1h\"]\nself_addresses = [\"127.0.0.9\"]\nipv6 = false\n",
        src.port, dns.port
    ));
    submit(
        &d,
        "<sender@src.test>",
        &["<a@nullmx.test>", "<b@nxdomain.test>", "<c@loop.test>"],
        "x",
    );
    let statuses = || -> Vec<(String, String)> {
        dsns(&src)
            .iter()
            .flat_map(|x| x["recipients"].as_array().cloned().unwrap_or_default())
            .map(|r| {
                (
                    r["final-recipient"].as_str().unwrap_or("").to_string(),
                    r["status"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    wait_for("three failure reports", Duration::from_secs(30), || {
        statuses().len() == 3
    });
    let mut got = statuses();
    got.sort();
    assert_eq!(
        got,
        [
            ("rfc822; a@nullmx.test".to_string(), "5.1.10".to_string()),
            ("rfc822; b@nxdomain.test".to_string(), "5.1.2".to_string()),
            ("rfc822; c@loop.test".to_string(), "5.4.6".to_string()),
        ]
    );
    d.wait_empty(20);
}

#[test]
fn expiry_and_a_single_delay_notice() {
    let down = free_port();
    let src = Sink::start(&[]);
    let d = Daemon::start(&format!(
        "{}[delivery]\nbackoff = [\"1s\"]\nmax_queue_time = \"6s\"\ndelay_warning = \"2s\"\n",
        routes(down, src.port)
    ));
    submit(&d, "<sender@src.test>", &["<a@dst.test>"], "x");
    wait_for(
        "a delay notice then the expiry report",
        Duration::from_secs(40),
        || dsns(&src).len() == 2,
    );
    let all = dsns(&src);
    let actions: Vec<&str> = all
        .iter()
        .map(|x| x["recipients"][0]["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["delayed", "failed"],
        "one notice per recipient, then the failure"
    );
    assert!(
        all[0]["recipients"][0]["status"]
            .as_str()
            .unwrap()
            .starts_with("4.")
    );
    assert_eq!(all[1]["recipients"][0]["status"], "4.4.7");
    assert!(
        all[1]["recipients"][0]["diagnostic-code"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
    d.wait_empty(20);
}

#[test]
fn notify_never_and_success_reports() {
    let (_dst, src, d) = senders_and_receivers(&["--rcpt-reply", "bad=550 5.1.1 no such user"]);
    submit(
        &d,
        "<sender@src.test>",
        &["<bad@dst.test> NOTIFY=NEVER"],
        "x",
    );
    submit(
        &d,
        "<sender@src.test>",
        &["<good@dst.test> NOTIFY=SUCCESS"],
        "y",
    );
    wait_for("the success report", Duration::from_secs(30), || {
        !dsns(&src).is_empty()
    });
    // The queue empties only once every DSN due is itself queued, so after that no DSN
    // for the NOTIFY=NEVER failure can still appear.
    d.wait_empty(20);
    let all = dsns(&src);
    assert_eq!(all.len(), 1, "no report for NOTIFY=NEVER: {all:?}");
    let r = recipient(&all[0], "good@dst.test");
    // aiosmtpd does not offer DSN, so the success can only be reported as relayed.
    assert_eq!(r["action"], "relayed");
    assert_eq!(r["status"], "2.0.0");
}

#[test]
fn a_bounce_that_fails_goes_to_the_postmaster() {
    let dst = Sink::start(&["--rcpt-reply", "bad=550 5.1.1 no such user"]);
    let src = Sink::start(&["--rcpt-reply", "sender=550 5.1.1 no such sender"]);
    let pm = Sink::start(&[]);
    let d = Daemon::start(&format!(
        "{}\"local.test\" = \"[127.0.0.1]:{}\"\n[local]\ndomains = [\"local.test\"]\n\
         [delivery]\nbackoff = [\"1h\"]\n",
        routes(dst.port, src.port),
        pm.port
    ));
    submit(&d, "<sender@src.test>", &["<bad@dst.test>"], "x");
    wait_for("the double bounce", Duration::from_secs(30), || {
        !dsns(&pm).is_empty()
    });
    let rec = &pm.records()[0];
    assert_eq!(rec["rcpt_tos"][0], "postmaster@local.test");
    let dsn = &dsns(&pm)[0];
    let r = recipient(dsn, "sender@src.test");
    assert_eq!(r["action"], "failed");
    assert!(
        r["diagnostic-code"]
            .as_str()
            .unwrap()
            .contains("no such sender")
    );
    d.wait_empty(20);
}

#[test]
fn a_failed_double_bounce_is_logged_and_dropped() {
    let dst = Sink::start(&["--rcpt-reply", "bad=550 5.1.1 no such user"]);
    let src = Sink::start(&["--rcpt-reply", "@=550 5.1.1 nobody here"]);
    let d = Daemon::start(&format!(
        "{}\"local.test\" = \"[127.0.0.1]:{}\"\n[local]\ndomains = [\"local.test\"]\n\
         [delivery]\nbackoff = [\"1h\"]\n",
        routes(dst.port, src.port),
        src.port
    ));
    submit(&d, "<sender@src.test>", &["<bad@dst.test>"], "x");
    d.wait_empty(30);
    assert!(
        d.log().contains("double bounce undeliverable; dropped"),
        "{}",
        d.log()
    );
}

#[test]
fn a_crash_after_the_dsn_is_queued_loses_nothing() {
    let dst = Sink::start(&["--rcpt-reply", "bad=550 5.1.1 no such user"]);
    let down = free_port();
    let mut d = Daemon::start(&format!(
        "{}[delivery]\nbackoff = [\"1h\"]\n",
        routes(dst.port, down)
    ));
    submit(&d, "<sender@src.test>", &["<bad@dst.test>"], "x");
    let dsn_queued = |d: &Daemon| {
        d.queue_json()
            .as_array()
            .is_some_and(|l| l.iter().any(|m| m["sender"] == ""))
    };
    wait_for("the DSN in the queue", Duration::from_secs(30), || {
        dsn_queued(&d)
    });
    d.kill9();
    let src = Sink::start_on(down, &[]);
    d.restart();
    assert!(dsn_queued(&d), "the DSN survived kill -9");
    let out = d.cli(&["queue", "flush"]);
    assert!(out.status.success());
    wait_for("the DSN delivered", Duration::from_secs(30), || {
        !dsns(&src).is_empty()
    });
    d.wait_empty(20);
    let n = dsns(&src).len();
    assert!(
        (1..=2).contains(&n),
        "at least one DSN, at worst a duplicate: {n}"
    );
}
