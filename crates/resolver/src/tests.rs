//! Unit tests: SRV ordering (RFC 2782 weights), the loop check against our own addresses,
//! coalesced lookups, and each failure's status and text.

use super::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use smtp_proto::EnhancedCode;
use std::net::UdpSocket;
use std::time::Instant;

fn order_counts(
    recs: &[(u16, u16, &'static str)],
    trials: usize,
) -> HashMap<Vec<&'static str>, usize> {
    let mut rng = StdRng::seed_from_u64(2782);
    let mut counts = HashMap::new();
    for _ in 0..trials {
        *counts
            .entry(srv_order(recs.to_vec(), &mut rng))
            .or_insert(0) += 1;
    }
    counts
}

fn first_share(counts: &HashMap<Vec<&'static str>, usize>, name: &str, trials: usize) -> f64 {
    let n: usize = counts
        .iter()
        .filter(|(o, _)| o[0] == name)
        .map(|(_, c)| c)
        .sum();
    n as f64 / trials as f64
}

#[test]
fn srv_weights_decide_the_order_within_a_priority() {
    let trials = 2000;
    let counts = order_counts(&[(0, 10, "light"), (0, 90, "heavy")], trials);
    let heavy = first_share(&counts, "heavy", trials);
    assert!((0.80..=0.97).contains(&heavy), "heavy first {heavy}");
    // Not a sort: the light one does come first sometimes.
    assert!(first_share(&counts, "light", trials) > 0.03, "{counts:?}");
}

#[test]
fn srv_priority_comes_before_weight() {
    let trials = 500;
    let counts = order_counts(
        &[
            (20, 1000, "backup"),
            (10, 1, "a"),
            (10, 1, "b"),
            (30, 0, "last"),
        ],
        trials,
    );
    for order in counts.keys() {
        assert_eq!(&order[2..], ["backup", "last"]);
    }
    let a = first_share(&counts, "a", trials);
    assert!((0.35..=0.65).contains(&a), "equal weights: a first {a}");
}

#[test]
fn srv_weight_zero_has_a_small_chance() {
    let trials = 4000;
    // Drawn only when the random number in 0..=10 is 0: about 1 in 11.
    let counts = order_counts(&[(0, 10, "ten"), (0, 0, "zero")], trials);
    let zero = first_share(&counts, "zero", trials);
    assert!((0.05..=0.14).contains(&zero), "zero first {zero}");
    // Among weights that are all 0, each is equally likely.
    let counts = order_counts(&[(0, 0, "x"), (0, 0, "y"), (0, 0, "z")], 3000);
    for n in ["x", "y", "z"] {
        let s = first_share(&counts, n, 3000);
        assert!((0.28..=0.39).contains(&s), "{n} first {s}");
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

#[test]
fn a_wildcard_listener_is_not_every_address_on_its_port() {
    let listen = [sa("0.0.0.0:25"), sa("[::]:25")];
    let host = ips(&["192.0.2.25", "2001:db8::25", "127.0.0.1", "::1"]);
    // Remote MX hosts on port 25 are not us.
    for remote in ["198.51.100.10:25", "[2001:db8:1::25]:25", "203.0.113.1:25"] {
        assert!(!is_self(sa(remote), &[], &listen, &host), "{remote}");
    }
    // Our interface addresses and all of loopback on the wildcard's port are.
    for ours in [
        "192.0.2.25:25",
        "[2001:db8::25]:25",
        "127.0.0.1:25",
        "127.3.4.5:25",
        "[::1]:25",
        "[::ffff:192.0.2.25]:25",
    ] {
        assert!(is_self(sa(ours), &[], &listen, &host), "{ours}");
    }
    // Another port on our own address is another service, not a loop.
    assert!(!is_self(sa("192.0.2.25:2525"), &[], &listen, &host));
}

#[test]
fn a_wildcard_covers_only_its_own_family() {
    let host = ips(&["192.0.2.25", "2001:db8::25"]);
    let v4_only = [sa("0.0.0.0:25")];
    assert!(is_self(sa("192.0.2.25:25"), &[], &v4_only, &host));
    assert!(!is_self(sa("[2001:db8::25]:25"), &[], &v4_only, &host));
    assert!(!is_self(sa("[::1]:25"), &[], &v4_only, &host));
    let v6_only = [sa("[::]:25")];
    assert!(is_self(sa("[2001:db8::25]:25"), &[], &v6_only, &host));
    assert!(!is_self(sa("192.0.2.25:25"), &[], &v6_only, &host));
}

#[test]
fn specific_listeners_and_self_addresses() {
    let listen = [sa("127.0.0.1:2525")];
    assert!(is_self(sa("127.0.0.1:2525"), &[], &listen, &[]));
    assert!(!is_self(sa("127.0.0.2:2525"), &[], &listen, &[]));
    assert!(!is_self(sa("127.0.0.1:2526"), &[], &listen, &[]));
    // delivery.self_addresses: ours on any port (a NAT front end forwarding to us).
    let nat = ips(&["203.0.113.7"]);
    assert!(is_self(sa("203.0.113.7:25"), &nat, &listen, &[]));
    assert!(is_self(sa("203.0.113.7:587"), &nat, &listen, &[]));
}

#[test]
fn host_addresses_follow_interface_changes() {
    let h = HostAddresses::new(ips(&["192.0.2.25", "127.0.0.1", "192.0.2.25"]));
    assert!(
        !h.set(ips(&["127.0.0.1", "192.0.2.25"])),
        "the same set, reordered"
    );
    let listen = [sa("0.0.0.0:25")];
    assert!(!is_self(sa("192.0.2.26:25"), &[], &listen, &h.get()));
    assert!(h.set(ips(&["192.0.2.26", "192.0.2.25"])));
    assert!(!h.set(ips(&["192.0.2.25", "192.0.2.26", "192.0.2.25"])));
    assert!(is_self(sa("192.0.2.26:25"), &[], &listen, &h.get()));
}

/// A resolver whose name server never answers, so every lookup lasts `timeout`.
fn silent_resolver(timeout: Duration) -> (Resolver, UdpSocket) {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let cfg = ResolverConfig {
        nameservers: Some(vec![silent.local_addr().unwrap()]),
        timeout,
        attempts: 1,
        ipv6: false,
        ..Default::default()
    };
    (Resolver::new(cfg).unwrap(), silent)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn local_domains_win_over_the_default_route_only() {
    let route = |s: &str, t: &str| (s.parse().unwrap(), t.parse().unwrap());
    let (mut r, _silent) = silent_resolver(Duration::from_millis(10));
    let cfg = ResolverConfig {
        routes: RouteTable::new(vec![
            route("*", "[192.0.2.1]:25"),
            route("routed.test", "[192.0.2.2]:25"),
        ]),
        local_domains: vec!["local.test".into(), "routed.test".into()],
        lmtp: Some(LmtpTarget::Inet("127.0.0.1:24".parse().unwrap())),
        ..r.inner.cfg.clone()
    };
    r = Resolver::new(cfg).unwrap();
    let addr = |d: &str| {
        let dests = rt().block_on(r.resolve(d)).unwrap();
        (
            matches!(dests[0], Destination::Lmtp { .. }),
            dests[0].socket_addr(),
        )
    };
    assert_eq!(
        addr("Local.TEST."),
        (true, Some("127.0.0.1:24".parse().unwrap()))
    );
    assert_eq!(
        addr("routed.test"),
        (false, Some("192.0.2.2:25".parse().unwrap()))
    );
    assert_eq!(
        addr("elsewhere.test"),
        (false, Some("192.0.2.1:25".parse().unwrap()))
    );
}

/// Each cause with its status, permanence and the exact text the old `X.Y.Z message`
/// form gave: spools and logs written before hold these texts.
#[test]
fn failure_status_permanence_and_text() {
    let s = String::from;
    let e = || s("timed out");
    let cases = [
        (
            Failure::NoSuchDomain(s("x.test")),
            "5.1.2",
            true,
            "domain x.test does not exist",
        ),
        (
            Failure::NoMx(s("x.test")),
            "5.1.2",
            true,
            "x.test has no MX record",
        ),
        (
            Failure::NoMxNoAddress(s("x.test")),
            "5.1.2",
            true,
            "x.test has no MX and no address",
        ),
        (
            Failure::BadLiteral(s("1.2.3")),
            "5.1.2",
            true,
            "bad address literal [1.2.3]",
        ),
        (
            Failure::NullMx(s("x.test")),
            "5.1.10",
            true,
            "x.test does not accept mail (null MX)",
        ),
        (
            Failure::NullSrv(s("x.test")),
            "5.1.10",
            true,
            "x.test does not offer SMTP (SRV target '.')",
        ),
        (
            Failure::Loop(s("x.test")),
            "5.4.6",
            true,
            "mail for x.test loops back to myself",
        ),
        (
            Failure::BestMxIsMe(s("x.test")),
            "5.4.6",
            true,
            "mail for x.test loops back to myself (I am its best MX)",
        ),
        (
            Failure::NoLmtp(s("x.test")),
            "4.3.5",
            false,
            "x.test is a local domain but no [local] lmtp is configured",
        ),
        (
            Failure::RouteHostNoAddress(s("h.test")),
            "4.4.3",
            false,
            "route host h.test has no address",
        ),
        (
            Failure::HostLookup {
                host: s("h.test"),
                error: e(),
            },
            "4.4.3",
            false,
            "looking up h.test: timed out",
        ),
        (
            Failure::MxLookup {
                domain: s("x.test"),
                error: e(),
            },
            "4.4.3",
            false,
            "MX lookup of x.test failed: timed out",
        ),
        (
            Failure::SrvLookup {
                name: s("_smtp._tcp.x.test."),
                error: e(),
            },
            "4.4.3",
            false,
            "SRV lookup of _smtp._tcp.x.test. failed: timed out",
        ),
        (
            Failure::MxHostLookup {
                domain: s("x.test"),
                error: s("mx.x.test: timed out"),
            },
            "4.4.3",
            false,
            "no address for the MX hosts of x.test: mx.x.test: timed out",
        ),
        (
            Failure::NoAddress(s("x.test")),
            "4.4.4",
            false,
            "no MX host of x.test has an address",
        ),
        (
            Failure::Abandoned(s("x.test")),
            "4.4.3",
            false,
            "the lookup of x.test was abandoned",
        ),
    ];
    for (f, status, permanent, text) in cases {
        assert_eq!(f.status().to_string(), status, "{f:?}");
        assert_eq!(f.is_permanent(), permanent, "{f:?}");
        assert_eq!(f.to_string(), format!("{status} {text}"));
    }
}

#[test]
fn resolve_is_send() {
    fn send<T: Send>(_: T) {}
    let (r, _silent) = silent_resolver(Duration::from_millis(10));
    send(r.resolve("x.test"));
}

#[test]
fn concurrent_calls_share_one_lookup() {
    let (r, _silent) = silent_resolver(Duration::from_millis(300));
    let r = Arc::new(r);
    let failures = rt().block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..100 {
            let r = r.clone();
            // Case and a final dot do not make it another domain.
            let name = if i % 2 == 0 {
                "same.test"
            } else {
                "SAME.test."
            };
            set.spawn(async move { r.resolve(name).await });
        }
        set.join_all().await
    });
    assert_eq!(r.lookups_performed(), 1);
    assert_eq!(failures.len(), 100);
    for f in &failures {
        assert_eq!(f, &failures[0]);
        let f = f.as_ref().unwrap_err();
        assert!(
            !f.is_permanent() && f.status() == EnhancedCode::new(4, 4, 3),
            "{f}"
        );
    }
    assert!(r.inner.lock_in_flight().is_empty());
    // Once finished, the next call is a new lookup: results are not kept.
    let _ = rt().block_on(r.resolve("same.test"));
    assert_eq!(r.lookups_performed(), 2);
}

#[test]
fn a_cancelled_first_caller_does_not_strand_the_others() {
    let (r, _silent) = silent_resolver(Duration::from_millis(300));
    let r = Arc::new(r);
    rt().block_on(async {
        let first = tokio::spawn({
            let r = r.clone();
            async move { r.resolve("cancel.test").await }
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while !r.inner.lock_in_flight().contains_key("cancel.test") {
            assert!(Instant::now() < deadline, "the first call never started");
            tokio::task::yield_now().await;
        }
        let second = tokio::spawn({
            let r = r.clone();
            async move { r.resolve("cancel.test").await }
        });
        tokio::task::yield_now().await;
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        let f = tokio::time::timeout(Duration::from_secs(10), second)
            .await
            .expect("the second caller was left waiting")
            .unwrap()
            .unwrap_err();
        // The lookup itself went on and its answer (a timeout) reached the second caller.
        assert!(!f.to_string().contains("abandoned"), "{f}");
        assert_eq!(r.lookups_performed(), 1);
    });
}

#[test]
fn a_lookup_task_that_dies_releases_its_waiters() {
    let (r, _silent) = silent_resolver(Duration::from_millis(10));
    let (tx, rx) = oneshot::channel();
    r.inner
        .lock_in_flight()
        .insert("dead.test".into(), vec![tx]);
    drop(Flight {
        inner: r.inner.clone(),
        key: Some("dead.test".into()),
    });
    assert!(rx.blocking_recv().is_err());
    assert!(r.inner.lock_in_flight().is_empty());
}
