//! Local delivery over LMTP into a real Dovecot: a private `dovecot -F` on loopback (and on a
//! unix socket) with a generated config, postrider's `[local]` pointed at it, and the message
//! checked where it lands, in the recipient's Maildir. Waits on conditions, never on luck.

mod common;

use std::time::Duration;

use common::dovecot::Dovecot;
use common::*;

/// LMTP on 127.0.0.1:`port` and on the unix socket `DIR/run/lmtp`, open to everyone.
fn listeners(port: u16) -> String {
    format!(
        r#"protocols = lmtp
listen = 127.0.0.1
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
  unix_listener lmtp {{
    mode = 0666
  }}
}}
"#
    )
}

/// A private Dovecot (common/dovecot.rs) listening on a free loopback port as well.
fn start_dovecot() -> (Dovecot, u16) {
    let port = free_port();
    let dc = Dovecot::start(&listeners(port), None, None);
    wait_for("dovecot to listen on TCP", Duration::from_secs(20), || {
        port_open(port)
    });
    (dc, port)
}

fn local_config(lmtp: &str) -> String {
    format!(
        "[local]\ndomains = [\"local.test\"]\nlmtp = \"{lmtp}\"\n[delivery]\nbackoff = [\"1h\"]\n"
    )
}

/// Sends one message to alice@local.test through postrider and checks that it lands in
/// alice's Maildir with postrider's trace header, and leaves the queue.
fn deliver_to_alice(dc: &Dovecot, d: &Daemon) {
    let out = swaks(
        d.port,
        &[
            "--from",
            "sender@src.test",
            "--to",
            "alice@local.test",
            "--header",
            "Subject: lmtp test",
            "--body",
            "delivered over LMTP",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("queued as S"), "{text}");
    let what = format!(
        "the message in alice's Maildir (logs: {} and {})",
        d.log_path().display(),
        dc.log_path().display()
    );
    wait_for(&what, Duration::from_secs(30), || {
        !dc.maildir_messages("alice").is_empty()
    });
    let files = dc.maildir_messages("alice");
    assert_eq!(files.len(), 1, "{files:?}");
    let msg = std::fs::read_to_string(&files[0]).expect("read delivered message");
    assert!(msg.contains("Subject: lmtp test"), "{msg}");
    assert!(msg.contains("delivered over LMTP"), "{msg}");
    assert!(msg.contains("Received: from "), "{msg}");
    assert!(msg.contains("by mx.postrider.test (postrider)"), "{msg}");
    // Dovecot's own trace: the envelope made it through LMTP intact.
    assert!(msg.contains("Return-Path: <sender@src.test>"), "{msg}");
    assert!(msg.contains("Delivered-To: alice@local.test"), "{msg}");
    d.wait_empty(20);
    assert!(
        dc.log().contains("saved mail to INBOX"),
        "dovecot log:\n{}",
        dc.log()
    );
}

#[test]
fn delivers_local_mail_into_dovecot_over_lmtp_tcp() {
    let (dc, port) = start_dovecot();
    let d = Daemon::start(&local_config(&format!("127.0.0.1:{port}")));
    deliver_to_alice(&dc, &d);
}

#[test]
fn delivers_local_mail_into_dovecot_over_lmtp_unix_socket() {
    let (dc, _) = start_dovecot();
    let d = Daemon::start(&local_config(&format!("unix:{}", dc.socket().display())));
    deliver_to_alice(&dc, &d);
}
