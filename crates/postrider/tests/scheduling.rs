//! The scheduler as a mail administrator sees it, with real sinks and real timing (short
//! schedules, waits on conditions): newest first, immediate retry with old mail riding
//! along, the per-domain backoff as configured, one connection per domain, fairness, and a
//! schedule that survives a restart.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Sends one message with `from` as its sender; panics unless it was queued.
fn send(d: &Daemon, from: &str, to: &str) {
    let out = swaks(
        d.port,
        &[
            "--from",
            from,
            "--to",
            to,
            "--header",
            &format!("Subject: from {from}"),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("queued as S"), "{text}");
}

/// These tests measure the backoff schedule itself, to a tenth of a second: without jitter
/// (its spread is tested on paused time in `crates/queue/tests/manager.rs`).
fn route(domain: &str, port: u16, backoff: &str) -> String {
    format!(
        "[routes]\n\"{domain}\" = \"[127.0.0.1]:{port}\"\n[delivery]\nbackoff = {backoff}\nretry_jitter = 0\n"
    )
}

/// Total attempts recorded for every recipient in the queue.
fn tries(d: &Daemon) -> u64 {
    d.queue_json()
        .as_array()
        .map(|l| {
            l.iter()
                .flat_map(|m| m["recipients"].as_array().cloned().unwrap_or_default())
                .map(|r| r["tries"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn newest_first_and_old_mail_rides_along_with_new() {
    let port = free_port();
    let d = Daemon::start(&route("dst.test", port, "[\"1h\"]"));
    // The destination is down: each message gets its immediate attempt and is deferred.
    for i in 1..=5 {
        send(&d, &format!("m{i}@src.test"), "r@dst.test");
        wait_for(
            "the attempt for the new message",
            Duration::from_secs(20),
            || tries(&d) >= i,
        );
    }
    // It comes back; with a 1h schedule only new mail can trigger an attempt now.
    let sink = Sink::start_on(port, &[]);
    send(&d, "m6@src.test", "r@dst.test");
    wait_for("all six at the sink", Duration::from_secs(30), || {
        sink.messages().len() == 6
    });
    let recs = sink.records();
    let order: Vec<&str> = recs
        .iter()
        .map(|r| r["mail_from"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        [
            "m6@src.test",
            "m5@src.test",
            "m4@src.test",
            "m3@src.test",
            "m2@src.test",
            "m1@src.test"
        ],
        "newest first, the old mail after the new"
    );
    assert!(
        recs.iter().all(|r| r["conn"] == recs[0]["conn"]),
        "one connection carried them all: {recs:?}"
    );
    d.wait_empty(10);
}

/// Seconds between consecutive connections.
fn gaps(times: &[f64]) -> Vec<f64> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

#[test]
fn backoff_is_per_domain_and_a_failed_probe_keeps_the_schedule() {
    let port = free_port();
    let busy = ["--greeting", "421 4.3.2 busy, try later"];
    let d = Daemon::start(&route(
        "dst.test",
        port,
        "[\"1s\", \"2s\", \"6s\", \"20s\"]",
    ));
    let sink = Sink::start_on(port, &busy);
    send(&d, "a@src.test", "r@dst.test");
    // Immediate attempt, then the schedule: +1s, +2s.
    wait_for("three attempts", Duration::from_secs(20), || {
        sink.connection_times().len() >= 3
    });
    let t = sink.connection_times();
    let g = gaps(&t);
    assert!((0.9..2.0).contains(&g[0]), "first retry after 1s: {g:?}");
    assert!((1.9..3.2).contains(&g[1]), "second retry after 2s: {g:?}");
    // New mail while the next retry (6s) is pending: one immediate probe, which fails...
    send(&d, "b@src.test", "r@dst.test");
    wait_for("the probe", Duration::from_secs(10), || {
        sink.connection_times().len() >= 4
    });
    wait_for("the scheduled retry", Duration::from_secs(30), || {
        sink.connection_times().len() >= 5
    });
    let t = sink.connection_times();
    // ...and the schedule continues where it was: 6s after the last scheduled attempt (a
    // reset would retry 1s after the probe, an advance 20s after it).
    let since_scheduled = t[4] - t[2];
    assert!(
        (5.8..7.8).contains(&since_scheduled),
        "retry {since_scheduled:.2}s after the previous scheduled one: {:?}",
        gaps(&t)
    );
    assert_eq!(d.queued(), 2);
    drop(sink);

    // The server recovers: new mail is delivered at once, with the old riding along, and
    // the schedule is reset.
    let ok = Sink::start_on(port, &[]);
    send(&d, "c@src.test", "r@dst.test");
    wait_for("three messages delivered", Duration::from_secs(20), || {
        ok.messages().len() == 3
    });
    d.wait_empty(10);
    drop(ok);
    // Failing again starts from the first step (1s), not from 20s.
    let sink = Sink::start_on(port, &busy);
    send(&d, "d@src.test", "r@dst.test");
    wait_for("two attempts", Duration::from_secs(10), || {
        sink.connection_times().len() >= 2
    });
    let g = gaps(&sink.connection_times());
    assert!(
        (0.9..2.0).contains(&g[0]),
        "schedule was reset by the success: {g:?}"
    );
}

#[test]
fn one_connection_per_domain_with_fifty_domains_in_parallel() {
    let sink = Sink::start(&["--delay", "0.2"]);
    let d = Daemon::start(&format!(
        "[routes]\n\".test\" = \"[127.0.0.1]:{}\"\n[delivery]\nbackoff = [\"1h\"]\n",
        sink.port
    ));
    let to: Vec<String> = (0..50).map(|i| format!("u@d{i}.test")).collect();
    let to = to.join(",");
    for m in 0..3 {
        send(&d, &format!("m{m}@src.test"), &to);
    }
    wait_for("150 deliveries", Duration::from_secs(60), || {
        sink.records()
            .iter()
            .map(|r| r["rcpt_tos"].as_array().map_or(0, Vec::len))
            .sum::<usize>()
            == 150
    });
    let stats = sink.stats();
    let per_domain = stats["domain_max"].as_object().expect("domain_max");
    assert_eq!(per_domain.len(), 50);
    for (domain, max) in per_domain {
        assert_eq!(
            max.as_u64(),
            Some(1),
            "{domain} had {max} connections at once"
        );
    }
    let max_open = stats["max_open"].as_u64().unwrap();
    assert!(
        max_open >= 10,
        "domains must be delivered in parallel: max {max_open} open"
    );
    d.wait_empty(10);
}

#[test]
fn a_large_domain_does_not_starve_a_small_one() {
    let sink = Sink::start(&["--delay", "0.01"]);
    let d = Daemon::start(&format!(
        "[routes]\n\".test\" = \"[127.0.0.1]:{}\"\n[delivery]\nbackoff = [\"1h\"]\n",
        sink.port
    ));
    let out = smtp_source(d.port, 1000, 20, 500, "bulk@src.test", "r@big.test");
    assert!(out.status.success());
    wait_for(
        "the big domain to be under way",
        Duration::from_secs(30),
        || sink.messages().len() >= 20,
    );
    let sent = Instant::now();
    send(&d, "one@src.test", "r@small.test");
    wait_for(
        "the small domain's message",
        Duration::from_secs(30),
        || {
            sink.records()
                .iter()
                .any(|r| r["rcpt_tos"][0] == "r@small.test")
        },
    );
    let waited = sent.elapsed();
    let big_done = sink
        .records()
        .iter()
        .filter(|r| r["rcpt_tos"][0] == "r@big.test")
        .count();
    assert!(
        big_done < 1000,
        "the big domain had already finished: not a fairness test"
    );
    assert!(
        waited < Duration::from_secs(5),
        "small domain waited {waited:?} behind {big_done} big-domain deliveries"
    );
    d.wait_empty(120);
}

#[test]
fn a_restart_keeps_the_schedule_and_the_mail() {
    let port = free_port();
    let mut d = Daemon::start(&route("dst.test", port, "[\"1h\"]"));
    send(&d, "a@src.test", "r@dst.test");
    wait_for("the first attempt", Duration::from_secs(20), || {
        tries(&d) >= 1
    });
    d.kill9();
    let sink = Sink::start_on(port, &[]);
    d.restart();
    // Recovery must not ignore the domain's 1h schedule. The daemon listens only after
    // recovery loaded the queue, so one pass of its scheduler has run by the time this
    // `queue list` is answered.
    assert_eq!(d.queued(), 1, "the deferred message survived kill -9");
    assert_eq!(tries(&d), 1);
    assert_eq!(sink.connection_times().len(), 0, "retried before its time");
    // An administrator's flush overrides the schedule.
    let out = d.cli(&["queue", "flush", "dst.test"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("delivery after flush", Duration::from_secs(20), || {
        sink.messages().len() == 1
    });
    d.wait_empty(10);
}
