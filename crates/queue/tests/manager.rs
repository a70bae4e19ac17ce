//! The queue manager driven with a scripted delivery agent and a real spool, on paused
//! time: retry schedules, the immediate probe on new mail, recipient results applied as
//! written, administrator changes, and shutdown waiting for running attempts. Paused time
//! makes "after one minute" exact and instant; one test runs on real time as well.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use queue::api::{Request, Response};
use queue::{
    Attempt, AttemptReport, Deliver, Manager, QueueHandle, RcptOutcome, RcptResult, Settings,
};
use smtp_proto::{EnhancedCode, Reply};
use spool::{Envelope, Recipient, Spool, SpoolConfig};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What an attempt saw: the domain, the recipients it carried, and when it ran.
#[derive(Debug, Clone)]
struct Seen {
    domain: String,
    ids: Vec<spool::TxnId>,
    rcpts: Vec<String>,
    at: Instant,
}

/// A delivery agent that answers from a script, one outcome per attempt (the last one
/// repeats), and records what it was given.
struct Script {
    outcomes: Mutex<VecDeque<&'static str>>,
    seen: mpsc::UnboundedSender<Seen>,
    /// Holds each attempt this long before answering (for the shutdown test).
    hold: Duration,
    /// Domains that always get the same answer, whatever the script says.
    fixed: Vec<(&'static str, &'static str)>,
    /// Each domain's first attempt reports only once this many first attempts have their
    /// results written, so that they all fail at the same instant: on a paused clock, time
    /// would otherwise jump to the first retry while the others wait for the spool.
    first_round: Option<(
        tokio::sync::Barrier,
        Mutex<std::collections::HashSet<String>>,
    )>,
}

/// A temporary resolver failure of each kind, named as the script names it.
fn dns_failure(what: &str) -> Option<resolver::Failure> {
    use resolver::Failure::*;
    let d = || "dst.test".to_string();
    let e = || "timed out".to_string();
    Some(match what {
        "dns-route-host" => RouteHostNoAddress(d()),
        "dns-host" => HostLookup {
            host: d(),
            error: e(),
        },
        "dns-mx" => MxLookup {
            domain: d(),
            error: e(),
        },
        "dns-srv" => SrvLookup {
            name: format!("_smtp._tcp.{}", d()),
            error: e(),
        },
        "dns-mx-host" => MxHostLookup {
            domain: d(),
            error: e(),
        },
        "dns-no-address" => NoAddress(d()),
        "dns-abandoned" => Abandoned(d()),
        "dns-no-lmtp" => NoLmtp(d()),
        _ => return None,
    })
}

/// Every temporary resolver failure the script knows.
const DNS_FAILURES: &[&str] = &[
    "dns-route-host",
    "dns-host",
    "dns-mx",
    "dns-srv",
    "dns-mx-host",
    "dns-no-address",
    "dns-abandoned",
    "dns-no-lmtp",
];

impl Deliver for Script {
    async fn run(&self, attempt: Attempt) -> AttemptReport {
        let fixed = self
            .fixed
            .iter()
            .find(|(d, _)| *d == attempt.domain_name)
            .map(|(_, o)| *o);
        let what = fixed
            .or_else(|| {
                let mut o = self.outcomes.lock().unwrap();
                if o.len() > 1 {
                    o.pop_front()
                } else {
                    o.front().copied()
                }
            })
            .unwrap_or("250");
        let _ = self.seen.send(Seen {
            domain: attempt.domain_name.clone(),
            ids: attempt.messages.iter().map(|m| m.id).collect(),
            rcpts: attempt
                .messages
                .iter()
                .flat_map(|m| m.recipients.iter().map(|r| r.address.clone()))
                .collect(),
            at: Instant::now(),
        });
        tokio::time::sleep(self.hold).await;
        let outcome = match dns_failure(what) {
            // As the deliverer turns a resolver failure into an outcome.
            Some(f) if f.is_permanent() => RcptOutcome::failed(f.status(), f.to_string()),
            Some(f) => RcptOutcome::deferred(f.status(), f.to_string()),
            None => {
                let reply = match what {
                    "250" => Reply::new(250, Some(EnhancedCode::new(2, 0, 0)), "ok"),
                    "450" => Reply::new(450, Some(EnhancedCode::new(4, 2, 0)), "try later"),
                    _ => Reply::new(550, Some(EnhancedCode::new(5, 1, 1)), "no such user"),
                };
                RcptOutcome::from_reply("sink".into(), reply, spool::Handoff::Unknown)
            }
        };
        let mut rec = attempt.recorder;
        for m in &attempt.messages {
            rec.record(
                m.recipients
                    .iter()
                    .map(|r| RcptResult {
                        id: m.id,
                        index: r.index,
                        outcome: outcome.clone(),
                    })
                    .collect(),
            );
        }
        let (results, unrecorded) = rec.finish().await;
        // The lock is released inside the closure, before waiting.
        let first = self
            .first_round
            .as_ref()
            .filter(|(_, seen)| seen.lock().unwrap().insert(attempt.domain_name.clone()));
        if let Some((barrier, _)) = first {
            barrier.wait().await;
        }
        AttemptReport {
            domain: attempt.domain,
            domain_name: attempt.domain_name,
            results,
            unrecorded: unrecorded.into_iter().map(|(r, _)| r).collect(),
        }
    }
}

struct World {
    _dir: tempfile::TempDir,
    spool: Spool,
    queue: QueueHandle,
    seen: mpsc::UnboundedReceiver<Seen>,
    shutdown: CancellationToken,
    manager: tokio::task::JoinHandle<()>,
}

fn world(outcomes: &[&'static str], hold: Duration) -> World {
    world_with(outcomes, hold, Vec::new())
}

fn world_with(
    outcomes: &[&'static str],
    hold: Duration,
    fixed: Vec<(&'static str, &'static str)>,
) -> World {
    world_opts(
        outcomes,
        Opts {
            hold,
            fixed,
            ..Opts::default()
        },
    )
}

/// How a world differs from the plain one.
#[derive(Default)]
struct Opts {
    hold: Duration,
    fixed: Vec<(&'static str, &'static str)>,
    /// `delivery.retry_jitter`; 0 keeps the retry times exact.
    jitter: f64,
    /// Attempts at once; 0: 10.
    concurrency: usize,
    /// Domains whose first attempts all report together (see `Script::first_round`).
    first_round: usize,
}

fn world_opts(outcomes: &[&'static str], o: Opts) -> World {
    let Opts {
        hold,
        fixed,
        jitter,
        concurrency,
        first_round,
    } = o;
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = spool::open(SpoolConfig::new(dir.path())).unwrap();
    let (tx, seen) = mpsc::unbounded_channel();
    let script = Arc::new(Script {
        outcomes: Mutex::new(outcomes.iter().copied().collect()),
        seen: tx,
        hold,
        fixed,
        first_round: (first_round > 0)
            .then(|| (tokio::sync::Barrier::new(first_round), Mutex::default())),
    });
    let (manager, queue) = Manager::new(
        spool.clone(),
        script,
        Settings {
            backoff: vec![Duration::from_secs(60), Duration::from_secs(300)],
            retry_jitter: jitter,
            // Fixed, so that a failure reproduces.
            jitter_seed: Some(5),
            concurrency: if concurrency == 0 { 10 } else { concurrency },
            messages_per_connection: 100,
            max_queue_time: Duration::from_secs(5 * 86_400),
            delivery_enabled: true,
            hostname: "mx.test".into(),
            counters: Default::default(),
            dsn: queue::bounce::Policy {
                delay_warning: None,
                postmaster: "postmaster@mx.test".into(),
            },
        },
    );
    let shutdown = CancellationToken::new();
    let manager = tokio::spawn(manager.run(shutdown.clone()));
    World {
        _dir: dir,
        spool,
        queue,
        seen,
        shutdown,
        manager,
    }
}

impl World {
    /// Commits a message as a session would and tells the manager.
    async fn submit(&self, rcpts: &[&str]) -> spool::TxnId {
        let id = self.spool.ids().next();
        let env = Envelope {
            id,
            arrival: spool::unix_now(),
            sender: "s@src.test".into(),
            envid: None,
            ret: None,
            body: spool::BodyType::SevenBit,
            smtputf8: false,
            client: "test".into(),
            held: false,
            kind: Default::default(),
            recipients: rcpts
                .iter()
                .map(|a| Recipient {
                    address: (*a).into(),
                    ..Default::default()
                })
                .collect(),
        };
        let mut w = self.spool.content_writer(id);
        w.write(b"Subject: t\r\n\r\nbody\r\n").await.unwrap();
        let size = w.len();
        let mref = self.spool.commit(&env, w).await.unwrap();
        self.queue.arrived(env, mref, size).await;
        id
    }

    /// The next attempt. The deadline is on the real clock: the spool writer is a thread
    /// of its own, and while the runtime waits for it a paused clock would jump straight
    /// to any virtual deadline.
    async fn next(&mut self) -> Seen {
        let (tx, deadline) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(60));
            let _ = tx.send(());
        });
        tokio::select! {
            seen = self.seen.recv() => seen.expect("script alive"),
            _ = deadline => panic!("no attempt within 60 s of real time"),
        }
    }

    async fn show(&self, id: spool::TxnId) -> queue::api::MessageInfo {
        match self
            .queue
            .control(Request::Show { id: id.to_string() })
            .await
        {
            Response::Message(m) => m,
            other => panic!("show {id}: {other:?}"),
        }
    }

    /// Waits (on the real clock, see `next`) until the manager shows `id`'s first recipient
    /// in `state`: the attempt before has ended and its results are applied.
    async fn settled(&self, id: spool::TxnId, state: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while self.show(id).await.recipients[0].state != state {
            assert!(std::time::Instant::now() < deadline, "{id} never {state}");
            tokio::task::yield_now().await;
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.manager.await.unwrap();
        self.spool.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_deferred_recipient_is_tried_again_after_its_backoff_and_not_before() {
    let mut w = world(&["450", "450", "250"], Duration::ZERO);
    let id = w.submit(&["a@dst.test"]).await;
    let first = w.next().await;
    assert_eq!(first.domain, "dst.test");
    let second = w.next().await;
    let waited = second.at - first.at;
    assert!(
        waited >= Duration::from_secs(60) && waited < Duration::from_secs(61),
        "first retry after backoff[0] = 60 s, waited {waited:?}"
    );
    let third = w.next().await;
    let waited = third.at - second.at;
    assert!(
        waited >= Duration::from_secs(300) && waited < Duration::from_secs(301),
        "second retry after backoff[1] = 300 s, waited {waited:?}"
    );
    // Delivered at the third try: the message leaves the queue.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match w.queue.control(Request::Show { id: id.to_string() }).await {
            Response::Error { .. } => break,
            _ if Instant::now() > deadline => panic!("message {id} still queued"),
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn new_mail_probes_a_backing_off_domain_at_once_and_a_failed_probe_keeps_the_schedule() {
    let mut w = world(&["450"], Duration::ZERO);
    let id = w.submit(&["a@dst.test"]).await;
    let first = w.next().await;
    w.settled(id, "deferred").await;
    // Half way through the backoff, new mail for the same domain: probed at once. A task
    // that keeps the runtime busy stops the paused clock from jumping to the retry timer
    // while the commit waits for the spool's thread: time moves only by `advance`.
    let busy = tokio::spawn(async {
        loop {
            tokio::task::yield_now().await;
        }
    });
    tokio::time::advance(Duration::from_secs(30)).await;
    w.submit(&["b@dst.test"]).await;
    let probe = w.next().await;
    busy.abort();
    assert!(
        probe.at - first.at < Duration::from_secs(31),
        "probe at once"
    );
    assert_eq!(
        probe.rcpts[0], "b@dst.test",
        "the probe carries the new mail first"
    );
    // The failed probe did not push the retry out: the next attempt is still at 60 s.
    let retry = w.next().await;
    let at = retry.at - first.at;
    assert!(
        at >= Duration::from_secs(60) && at < Duration::from_secs(61),
        "retry stays at the domain's schedule: {at:?}"
    );
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn results_are_applied_as_written_and_a_final_state_stays_final() {
    // Both recipients fail; the DSN that follows is deferred, so it stays to be looked at.
    let mut w = world(&["550", "550", "450"], Duration::ZERO);
    let id = w.submit(&["x@dst.test", "y@other.test"]).await;
    w.next().await;
    w.next().await;
    // Both recipients failed: a DSN goes to the sender, and the original leaves.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Response::Error { .. } = w.queue.control(Request::Show { id: id.to_string() }).await
        {
            break;
        }
        assert!(Instant::now() < deadline, "failed message still queued");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The DSN is a message of its own, attempted to the sender's domain. It came in
    // through cleanup like any other mail: our trace line names the message it reports on.
    let dsn = w.next().await;
    assert_eq!(dsn.domain, "src.test");
    let headers = w.show(dsn.ids[0]).await.headers.unwrap_or_default();
    assert!(
        headers.starts_with(&format!("Received: by mx.test (postrider, status of {id})")),
        "{headers}"
    );
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn held_mail_is_not_attempted_until_released() {
    let mut w = world(&["450"], Duration::ZERO);
    let id = w.submit(&["a@dst.test"]).await;
    let first = w.next().await;
    match w.queue.control(Request::Hold { id: id.to_string() }).await {
        Response::Done(t) => assert!(t.ends_with("held"), "{t}"),
        other => panic!("{other:?}"),
    }
    assert!(w.show(id).await.held);
    // While the hold was being written the paused clock may have run on to the retry: an
    // attempt that started before the hold took effect is allowed, and its deferral must
    // not put the held message back on the schedule.
    while w.seen.try_recv().is_ok() {}
    // Well past every backoff: nothing is attempted while held.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(w.seen.try_recv().is_err(), "held mail attempted");
    match w
        .queue
        .control(Request::Release { id: id.to_string() })
        .await
    {
        Response::Done(t) => assert!(t.ends_with("released"), "{t}"),
        other => panic!("{other:?}"),
    }
    let second = w.next().await;
    assert!(second.at - first.at >= Duration::from_secs(3600));
    match w.queue.control(Request::Delete { id: "S0".into() }).await {
        Response::Error { .. } => {}
        other => panic!("deleting nothing: {other:?}"),
    }
    w.stop().await;
}

/// The same scheduling on real time: the manager must not depend on a paused clock.
#[tokio::test]
async fn on_real_time_new_mail_is_attempted_at_once() {
    let mut w = world(&["250"], Duration::ZERO);
    let started = Instant::now();
    w.submit(&["a@dst.test"]).await;
    let seen = w.next().await;
    assert!(seen.at - started < Duration::from_secs(5));
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_starts_no_attempt_and_waits_for_the_running_one() {
    let mut w = world(&["250"], Duration::from_secs(30));
    let id = w.submit(&["a@dst.test"]).await;
    let running = w.next().await;
    w.shutdown.cancel();
    // New mail during the drain is kept, not attempted.
    let late = w.submit(&["b@late.test"]).await;
    w.manager.await.unwrap();
    assert!(
        Instant::now() - running.at >= Duration::from_secs(30),
        "the manager waited for the running attempt"
    );
    assert!(
        w.seen.try_recv().is_err(),
        "no attempt started while draining"
    );
    w.spool.shutdown().await;
    let World {
        _dir: dir,
        spool,
        queue,
        ..
    } = w;
    drop((spool, queue));
    // What the attempt delivered is durable; the late message is still queued.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let rec = loop {
        match spool::open(SpoolConfig::new(dir.path())) {
            Ok((_, rec)) => break rec,
            Err(spool::SpoolError::Locked(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) => panic!("reopen: {e}"),
        }
    };
    let ids: Vec<_> = rec.messages.iter().map(|(e, _)| e.id).collect();
    assert!(ids.contains(&late), "late mail kept");
    assert!(
        !ids.contains(&id),
        "the running attempt's delivery was recorded before the end"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hundred_failures_at_once_all_get_their_dsn_when_only_64_are_made_at_a_time() {
    let mut w = world_with(
        &["250"],
        Duration::ZERO,
        vec![("dst.test", "550"), ("src.test", "450")],
    );
    let mut originals = Vec::new();
    for i in 0..100 {
        originals.push(w.submit(&[&format!("r{i}@dst.test")]).await);
    }
    let mut dsns = std::collections::HashSet::new();
    while dsns.len() < 100 {
        let seen = w.next().await;
        if seen.domain == "src.test" {
            dsns.extend(seen.ids);
        }
    }
    // Every original left once its report was durable.
    for id in originals {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !matches!(
            w.queue.control(Request::Show { id: id.to_string() }).await,
            Response::Error { .. }
        ) {
            assert!(std::time::Instant::now() < deadline, "{id} still queued");
            tokio::task::yield_now().await;
        }
    }
    w.stop().await;
}

/// The bounds of a wait of `b` jittered by `j`.
fn window(b: u64, j: f64) -> (Duration, Duration) {
    let b = Duration::from_secs(b);
    (b.mul_f64(1.0 - j), b.mul_f64(1.0 + j))
}

#[tokio::test(start_paused = true)]
async fn temporary_dns_failures_of_every_kind_defer_and_follow_the_jittered_schedule() {
    for kind in DNS_FAILURES {
        let f = dns_failure(kind).unwrap();
        assert!(!f.is_permanent(), "{kind}: {f}");
    }
    let j = 0.1;
    // Every kind in turn, then the last one for good.
    let mut w = world_opts(
        DNS_FAILURES,
        Opts {
            jitter: j,
            ..Opts::default()
        },
    );
    let id = w.submit(&["a@dst.test"]).await;
    let mut prev = w.next().await;
    // The first retry waits backoff[0] = 60 s, every later one backoff[1] = 300 s, each
    // within the jitter: no DNS failure starts a fast loop of its own.
    let mut waits = Vec::new();
    for (n, kind) in DNS_FAILURES.iter().enumerate().skip(1) {
        w.settled(id, "deferred").await;
        let attempt = w.next().await;
        let waited = attempt.at - prev.at;
        let (lo, hi) = window(if n == 1 { 60 } else { 300 }, j);
        assert!(
            lo <= waited && waited <= hi,
            "attempt {n} ({kind}) after {waited:?}, not within [{lo:?}, {hi:?}]"
        );
        waits.push(waited);
        prev = attempt;
    }
    w.settled(id, "deferred").await;
    let m = w.show(id).await;
    assert_eq!(m.recipients[0].state, "deferred", "still queued: {m:?}");
    assert!(
        waits[1..].iter().any(|x| *x != waits[1]),
        "the jitter varies the waits: {waits:?}"
    );
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_thousand_domains_failing_together_do_not_retry_together() {
    const N: usize = 1000;
    let j = 0.1;
    let mut w = world_opts(
        &["dns-mx"],
        Opts {
            jitter: j,
            concurrency: N,
            first_round: N,
            ..Opts::default()
        },
    );
    let rcpts: Vec<String> = (0..N).map(|i| format!("a@d{i}.test")).collect();
    let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    w.submit(&rcpts).await;
    let mut first = std::collections::HashMap::new();
    let mut retry = std::collections::HashMap::new();
    while retry.len() < N {
        let s = w.next().await;
        if let Some(t0) = first.get(&s.domain) {
            assert!(
                retry.insert(s.domain.clone(), s.at - *t0).is_none(),
                "{} tried a third time before every domain was retried once",
                s.domain
            );
        } else {
            first.insert(s.domain, s.at);
        }
    }
    let t0 = *first.values().min().unwrap();
    assert!(
        first.values().all(|t| *t == t0),
        "every first attempt at the same instant"
    );
    let (lo, hi) = window(60, j);
    let min = *retry.values().min().unwrap();
    let max = *retry.values().max().unwrap();
    assert!(lo <= min && max <= hi, "retries over [{min:?}, {max:?}]");
    // Uniform over a 12 s window: 1,000 draws cover nearly all of it.
    assert!(
        max - min > (hi - lo).mul_f64(0.8),
        "retries spread over only {:?}",
        max - min
    );
    let distinct: std::collections::HashSet<_> = retry.values().collect();
    assert!(
        distinct.len() > N * 9 / 10,
        "{} distinct retry times for {N} domains",
        distinct.len()
    );
    w.stop().await;
}
