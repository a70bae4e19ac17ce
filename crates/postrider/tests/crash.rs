//! Durability under crashes and a full disk: the spool's promise that a `250` after DATA
//! means the message survives anything short of losing the disk.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::proto::{SlowFs, Tmpfs, fill, send_tracked, send_tracked_rcpt, send_tracked_to};
use common::*;

const NO_DELIVERY: &str = "[delivery]\nenabled = false\n";

fn spool_senders(d: &Daemon) -> HashMap<String, usize> {
    let out = d.cli(&["queue", "--json", "list"]);
    assert!(
        out.status.success(),
        "offline queue list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut m = HashMap::new();
    for msg in v.as_array().unwrap() {
        *m.entry(msg["sender"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    m
}

#[test]
fn kill_9_under_load_loses_nothing_acknowledged() {
    let mut d = Daemon::start(NO_DELIVERY);
    let port = d.port;
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for t in 0..4 {
        let acked = acked.clone();
        let stop = stop.clone();
        workers.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let sender = format!("crash-{t}-{n}@src.test");
                n += 1;
                if send_tracked(port, &sender, 1000 + (n as usize % 7) * 3000) {
                    acked.lock().unwrap().insert(sender);
                } else {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }));
    }
    let kills = 20;
    let mut rng_state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..kills {
        // smtp-source adds background load at concurrency 20 for this round.
        let mut load = Command::new("smtp-source")
            .args([
                "-m",
                "100000",
                "-s",
                "20",
                "-l",
                "2048",
                "-f",
                "load@src.test",
                "-t",
                "r@dst.test",
            ])
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("smtp-source");
        // A random moment: wait until a random number of further messages were acked.
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        let target = acked.lock().unwrap().len() + 5 + (rng_state % 40) as usize;
        wait_for("load to make progress", Duration::from_secs(60), || {
            acked.lock().unwrap().len() >= target
        });
        d.kill9();
        let _ = load.kill();
        let _ = load.wait();
        d.restart();
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    d.kill9();
    let spooled = spool_senders(&d);
    let acked = acked.lock().unwrap();
    let missing: Vec<&String> = acked.iter().filter(|s| !spooled.contains_key(*s)).collect();
    let duplicates: usize = spooled
        .iter()
        .filter(|(s, _)| s.starts_with("crash-"))
        .map(|(_, n)| n - 1)
        .sum();
    let unacked_kept = spooled
        .keys()
        .filter(|s| s.starts_with("crash-") && !acked.contains(*s))
        .count();
    eprintln!(
        "crash test: {kills} kill -9, {} acknowledged, {} missing, {duplicates} duplicates, {unacked_kept} committed but unacknowledged, {} smtp-source messages kept",
        acked.len(),
        missing.len(),
        spooled.get("load@src.test").copied().unwrap_or(0)
    );
    assert!(
        acked.len() > kills * 5,
        "the load made too little progress to mean anything"
    );
    assert!(
        missing.is_empty(),
        "acknowledged messages lost: {missing:?}"
    );
}

#[test]
fn sigterm_under_load_exits_in_time_and_loses_nothing() {
    // Deliveries go to a slow sink, so SIGTERM also finds attempts in flight.
    let sink = Sink::start(&["--delay", "0.05"]);
    let mut d = Daemon::start(&format!(
        "[routes]\n\"*\" = \"[127.0.0.1]:{}\"\n[delivery]\nbackoff = [\"1h\"]\n",
        sink.port
    ));
    let port = d.port;
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let (acked, stop) = (acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let sender = format!("term-{t}-{n}@src.test");
                    n += 1;
                    if send_tracked(port, &sender, 2000) {
                        acked.lock().unwrap().insert(sender);
                    }
                }
            })
        })
        .collect();
    wait_for("load to make progress", Duration::from_secs(30), || {
        acked.lock().unwrap().len() >= 100
    });
    let started = std::time::Instant::now();
    // The grace period is 20s; give the exit 5s more.
    let status = d.terminate(Duration::from_secs(25));
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert!(status.success(), "exit status {status}");
    // Every acknowledged message is either in the spool or already at the sink.
    d.restart();
    let spooled = spool_senders(&d);
    let delivered: HashSet<String> = sink
        .records()
        .iter()
        .filter_map(|r| r["mail_from"].as_str().map(str::to_owned))
        .collect();
    let acked = acked.lock().unwrap();
    let missing: Vec<&String> = acked
        .iter()
        .filter(|s| !spooled.contains_key(*s) && !delivered.contains(*s))
        .collect();
    eprintln!(
        "sigterm test: exit after {took:?}, {} acknowledged, {} delivered, {} still queued, {} missing",
        acked.len(),
        delivered.len(),
        spooled.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "acknowledged messages lost: {missing:?}"
    );
}

#[test]
fn full_disk_gets_452_and_keeps_what_was_acknowledged() {
    let fs = Tmpfs::mount("16m");
    let spool = fs.dir.path().join("spool");
    let mut d = Daemon::start(&format!(
        "spool = \"{}\"\n{NO_DELIVERY}[smtp]\nmin_free_space = \"2MB\"\n",
        spool.display()
    ));
    let mut acked = Vec::new();
    for i in 0..5 {
        let s = format!("before-{i}@src.test");
        assert!(
            send_tracked(d.port, &s, 2000),
            "{s} refused with space free:\n{}",
            d.log()
        );
        acked.push(s);
    }
    // Below the floor: new transactions get 452 4.3.1, nothing half-written is acknowledged.
    let filler = fs.dir.path().join("filler");
    fill(&filler, 1_000_000);
    let mut c = Raw::connect(d.port);
    c.replies(1);
    c.cmd("EHLO client.test");
    let r = c.cmd("MAIL FROM:<x@src.test>");
    assert!(r.starts_with("452 4.3.1"), "{r}");
    // Truly out of space while writing: the commit fails and the client gets a 4xx.
    std::fs::remove_file(&filler).unwrap();
    let mut d2_cfg = std::fs::read_to_string(&d.config).unwrap();
    d2_cfg = d2_cfg.replace("min_free_space = \"2MB\"", "min_free_space = \"0\"");
    std::fs::write(&d.config, d2_cfg).unwrap();
    d.restart();
    fill(&filler, 200_000);
    let mut refused = 0;
    for i in 0..40 {
        let s = format!("during-{i}@src.test");
        if send_tracked(d.port, &s, 20_000) {
            acked.push(s);
        } else {
            refused += 1;
        }
    }
    assert!(refused > 0, "the disk never filled up");
    // Space returns: everything acknowledged is intact, and mail flows again.
    std::fs::remove_file(&filler).unwrap();
    assert!(send_tracked(d.port, "after@src.test", 2000));
    acked.push("after@src.test".into());
    d.kill9();
    let spooled = spool_senders(&d);
    for s in &acked {
        assert!(spooled.contains_key(s), "{s} was acknowledged but is gone");
    }
    eprintln!(
        "disk-full test: {} acknowledged, {refused} refused with 4xx",
        acked.len()
    );
}

#[test]
fn compaction_frees_segments_behind_a_deferred_message_and_keeps_its_state() {
    let sink = Sink::start(&[]);
    let down = free_port();
    let mut d = Daemon::start(&format!(
        "spool_segment_size = \"16KB\"\nspool_max_segments = 3\n\
         [routes]\n\"slow.test\" = \"[127.0.0.1]:{down}\"\n\"dst.test\" = \"[127.0.0.1]:{}\"\n\
         [delivery]\nbackoff = [\"1h\"]\n",
        sink.port
    ));
    assert!(send_tracked_to(d.port, "pinned@src.test", "r@slow.test"));
    wait_for("the deferral", Duration::from_secs(20), || {
        d.queue_json().as_array().is_some_and(|l| {
            l.iter()
                .any(|m| m["recipients"][0]["tries"].as_u64() == Some(1))
        })
    });
    // Delivered mail fills segment after segment behind the deferred message.
    for i in 0..150 {
        assert!(send_tracked_to(
            d.port,
            &format!("m{i}@src.test"),
            "r@dst.test"
        ));
    }
    wait_for("150 deliveries", Duration::from_secs(60), || {
        sink.messages().len() == 150
    });
    // Without compaction the pinned first segment would keep all of them (13 here).
    let segments = || std::fs::read_dir(d.spool().join("log")).map_or(0, |r| r.count());
    eprintln!(
        "compaction test: {} segments right after the load",
        segments()
    );
    wait_for(
        "old segments to be reclaimed",
        Duration::from_secs(30),
        || segments() <= 5,
    );
    // The last results are durable once the manager has them (the listing is its view);
    // a crash before that would rightly repeat a delivery.
    wait_for(
        "the delivered mail to leave the queue",
        Duration::from_secs(30),
        || d.queued() == 1,
    );
    // After a crash the deferred message is there, with the state it had.
    d.kill9();
    d.restart();
    let q = d.queue_json();
    let list = q.as_array().unwrap();
    assert_eq!(list.len(), 1, "{q}");
    assert_eq!(list[0]["sender"], "pinned@src.test");
    assert_eq!(list[0]["recipients"][0]["tries"], 1, "{q}");
    assert!(
        list[0]["recipients"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("refused")),
        "{q}"
    );
}

/// Waits for the daemon to exit by itself (after a SIGTERM sent elsewhere).
fn wait_exit(d: &mut Daemon, limit: Duration) -> std::process::ExitStatus {
    let mut status = None;
    wait_for("postrider to exit", limit, || {
        status = d.child.as_mut().and_then(|c| c.try_wait().expect("wait"));
        status.is_some()
    });
    d.child = None;
    status.unwrap()
}

#[test]
fn results_the_spool_cannot_record_are_not_final_and_are_tried_again() {
    let fs = Tmpfs::mount("16m");
    let spool = fs.dir.path().join("spool");
    // Nothing listens there yet: the first attempt defers, while the disk has room.
    let port = free_port();
    let mut d = Daemon::start(&format!(
        "spool = \"{}\"\n[routes]\n\"*\" = \"[127.0.0.1]:{port}\"\n\
         [delivery]\nbackoff = [\"1h\"]\n[smtp]\nmin_free_space = \"0\"\n",
        spool.display()
    ));
    // 100 recipients (one attempt's worth): their results make one update far larger than
    // the slack left in the last page of the segment, so recording it fails once the disk
    // is full.
    let rcpts: Vec<String> = (0..100).map(|i| format!("r{i}@dst.test")).collect();
    let mut c = Raw::connect(d.port);
    c.replies(1);
    c.cmd("EHLO client.test");
    assert!(c.cmd("MAIL FROM:<many@src.test>").starts_with("250"));
    for r in &rcpts {
        let reply = c.cmd(&format!("RCPT TO:<{r}>"));
        assert!(reply.starts_with("250"), "{r}: {reply}");
    }
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: many\r\n\r\nhello\r\n");
    assert!(c.cmd(".").starts_with("250"));
    let tries = |d: &Daemon| -> Vec<u64> {
        d.queue_json()
            .as_array()
            .and_then(|l| l.first().cloned())
            .map(|m| {
                m["recipients"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["tries"].as_u64().unwrap())
                    .collect()
            })
            .unwrap_or_default()
    };
    wait_for(
        "the first attempt to defer",
        Duration::from_secs(20),
        || tries(&d) == vec![1; 100],
    );

    // The disk fills up; the next hop comes up and takes the message.
    let filler = fs.dir.path().join("filler");
    fill(&filler, 0);
    let sink = Sink::start_on(port, &[]);
    assert!(d.cli(&["queue", "flush"]).status.success());
    wait_for("the delivery", Duration::from_secs(20), || {
        sink.messages().len() == 1
    });
    wait_for("the attempt to end", Duration::from_secs(20), || {
        d.log().contains("result not recorded") || d.queued() == 0
    });
    // Not recorded, so not final: still queued, with the state the spool has.
    let q = d.queue_json();
    assert_eq!(
        q.as_array().map_or(0, Vec::len),
        1,
        "the message left the queue without a durable record of its delivery"
    );
    let m = &q.as_array().unwrap()[0];
    assert_eq!(m["sender"], "many@src.test", "{q}");
    for r in m["recipients"].as_array().unwrap() {
        assert_eq!(r["state"], "deferred", "{r}");
        assert_eq!(r["tries"], 1, "{r}");
    }

    // Space returns: the message goes again (a duplicate, never a loss) and this time
    // its results are durable: a crash does not bring it back.
    std::fs::remove_file(&filler).unwrap();
    assert!(d.cli(&["queue", "flush"]).status.success());
    wait_for("the second delivery", Duration::from_secs(20), || {
        sink.messages().len() == 2
    });
    d.wait_empty(20);
    d.kill9();
    d.restart();
    assert_eq!(d.queued(), 0, "{}", d.queue_json());
    assert_eq!(Sink::rcpts(&sink.records()[1]).len(), 100);
}

#[test]
fn sigterm_starts_no_attempt_and_records_the_running_one() {
    // The next hop takes 3 s to answer the end of DATA: SIGTERM comes during the attempt.
    let sink = Sink::start(&["--delay", "3"]);
    let mut d = Daemon::start(&format!(
        "[routes]\n\"*\" = \"[127.0.0.1]:{}\"\n[delivery]\nbackoff = [\"1h\"]\n",
        sink.port
    ));
    assert!(send_tracked_to(d.port, "running@src.test", "r@one.test"));
    wait_for("the attempt to connect", Duration::from_secs(20), || {
        sink.stats()["connections"].as_u64() == Some(1)
    });
    // A client in the middle of DATA when the signal comes: its mail is committed after
    // SIGTERM and must wait in the spool for the next start.
    let mut late = Raw::connect(d.port);
    late.replies(1);
    late.cmd("EHLO client.test");
    assert!(late.cmd("MAIL FROM:<late@src.test>").starts_with("250"));
    assert!(late.cmd("RCPT TO:<r@two.test>").starts_with("250"));
    assert!(late.cmd("DATA").starts_with("354"));
    late.send(b"Subject: late\r\n\r\nhello\r\n");
    let pid = d.child.as_ref().unwrap().id();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    wait_for("the shutdown to begin", Duration::from_secs(10), || {
        d.log().contains("shutting down")
    });
    let r = late.cmd(".");
    assert!(r.starts_with("250"), "{r}");
    drop(late);
    let status = wait_exit(&mut d, Duration::from_secs(25));
    assert!(status.success(), "exit status {status}\n{}", d.log());

    // The running attempt finished and its result was recorded before the spool closed;
    // no attempt was started after the signal.
    let delivered: Vec<String> = sink
        .records()
        .iter()
        .filter_map(|r| r["mail_from"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(delivered, ["running@src.test"], "{}", d.log());
    assert_eq!(sink.stats()["connections"], 1, "{}", d.log());
    let spooled = spool_senders(&d);
    assert_eq!(
        spooled,
        HashMap::from([("late@src.test".to_owned(), 1)]),
        "{}",
        d.log()
    );
}

/// A disk whose fsync takes 150 ms: a burst of deliveries goes out while their results
/// wait for the journal. A connection holds back once four results are unwritten and the
/// oldest is 20 ms old, so a kill -9 in the burst repeats a handful of messages per
/// connection (five domains here), not everything the next hop accepted during the slow
/// commits.
#[test]
fn a_slow_disk_does_not_widen_what_a_crash_repeats() {
    let fs = SlowFs::mount(Duration::from_millis(150));
    let spool = fs.mount.path().join("spool");
    let sink_port = free_port();
    let mut d = Daemon::start(&format!(
        "spool = \"{}\"\n[routes]\n\"*\" = \"[127.0.0.1]:{sink_port}\"\n[delivery]\nbackoff = [\"1s\"]\n",
        spool.display()
    ));
    // A backlog while the next hop is down, 60 messages for each of five domains.
    let port = d.port;

    let workers: Vec<_> = (0..10)
        .map(|t| {
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for n in 0..30 {
                    let sender = format!("slow-{t}-{n}@src.test");
                    let rcpt = format!("r@d{}.test", (n + t) % 5);
                    if send_tracked_rcpt(port, &sender, &rcpt, 1500) {
                        acked.push(sender);
                    }
                }
                acked
            })
        })
        .collect();
    let acked: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert_eq!(acked.len(), 300, "{}", d.log());
    // The next hop comes up; kill -9 in the middle of the burst.
    let sink = Sink::start_on(sink_port, &[]);
    wait_for("the burst to begin", Duration::from_secs(60), || {
        sink.messages().len() >= 60
    });
    d.kill9();
    let at_kill = sink.messages().len();
    d.restart();
    wait_for("the queue to empty", Duration::from_secs(120), || {
        d.queue_json().as_array().is_some_and(Vec::is_empty)
    });
    let mut delivered: HashMap<String, usize> = HashMap::new();
    for r in sink.records() {
        if let Some(s) = r["mail_from"].as_str() {
            *delivered.entry(s.to_owned()).or_insert(0) += 1;
        }
    }
    let lost: Vec<&String> = acked
        .iter()
        .filter(|s| !delivered.contains_key(*s))
        .collect();
    let duplicates: usize = delivered.values().map(|n| n - 1).sum();
    let connections = sink.stats()["max_open"].as_u64().unwrap_or(0) as usize;
    eprintln!(
        "slow-disk crash test: {} acknowledged, {at_kill} delivered at the kill, {} lost, \
         {duplicates} repeated, at most {connections} connections at once",
        acked.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged messages lost: {lost:?}");
    // One connection per destination; each may have four results unwritten and one
    // message in flight.
    assert!(
        connections <= 5,
        "{connections} connections for five domains"
    );
    assert!(
        duplicates <= 5 * connections.max(1),
        "{duplicates} repeats after one kill over {connections} connections: results lagged \
         unbounded behind the next hop"
    );
}
