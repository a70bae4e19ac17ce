//! Interoperation with Postfix, the MTA postrider most often sits next to: Postfix relaying
//! into postrider, and postrider delivering into Postfix.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn postfix_relays_into_postrider() {
    let d = Daemon::start("[delivery]\nenabled = false\n");
    let pf = Postfix::start(&format!("[127.0.0.1]:{}", d.port));
    let out = smtp_source(pf.port, 20, 5, 2000, "src@pf.test", "r@dst.test");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "20 messages relayed by Postfix",
        Duration::from_secs(90),
        || d.queued() == 20,
    );
    let q = d.queue_json();
    for m in q.as_array().unwrap() {
        assert_eq!(m["sender"], "src@pf.test");
        assert_eq!(m["recipients"][0]["address"], "r@dst.test");
    }
    assert!(pf.log().contains("status=sent"), "{}", pf.log());
}

#[test]
fn postrider_delivers_into_postfix() {
    let sink = Sink::start(&[]);
    let pf = Postfix::start(&format!("[127.0.0.1]:{}", sink.port));
    let d = Daemon::start(&format!(
        "[routes]\n\"*\" = \"[127.0.0.1]:{}\"\n[delivery]\nbackoff = [\"1h\"]\n",
        pf.port
    ));
    let out = smtp_source(d.port, 20, 5, 2000, "src@pr.test", "r@far.test");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "20 messages through Postfix at the sink",
        Duration::from_secs(90),
        || sink.messages().len() == 20,
    );
    d.wait_empty(30);
    let log = d.log();
    assert!(log.contains("delivered"), "{log}");
}
