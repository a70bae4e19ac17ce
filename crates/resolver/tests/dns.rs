//! The resolver against a real DNS server: dnsmasq, authoritative for `test` on a loopback
//! port.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use config::{RouteTable, RouteTarget};
use resolver::{Destination, Resolver, ResolverConfig};
use smtp_proto::EnhancedCode;

struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A query for `host.test A`, to learn when dnsmasq is answering.
fn probe(addr: SocketAddr) -> bool {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in ["host", "test"] {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    s.send_to(&q, addr).unwrap();
    let mut buf = [0u8; 512];
    s.recv_from(&mut buf).is_ok()
}

fn dnsmasq(records: &[&str]) -> Dnsmasq {
    // The port is free when chosen but may be taken (on TCP, which dnsmasq also binds, or
    // by another test's client socket) before dnsmasq binds it: then try another.
    let mut errors = Vec::new();
    for _ in 0..5 {
        match try_dnsmasq(records) {
            Ok(d) => return d,
            Err(e) => errors.push(e),
        }
    }
    panic!("dnsmasq did not start: {errors:?}");
}

fn try_dnsmasq(records: &[&str]) -> Result<Dnsmasq, String> {
    let port = free_udp_port();
    let mut cmd = Command::new("dnsmasq");
    cmd.args([
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--listen-address=127.0.0.1",
        "--local=/test/",
        "--pid-file=",
        "-C",
        "/dev/null",
        "--host-record=host.test,127.0.0.1",
        "--host-record=a.test,127.0.0.2",
        "--host-record=b.test,127.0.0.3",
        "--host-record=me.test,127.0.0.9",
    ])
    .arg(format!("--port={port}"))
    .args(records)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .expect("dnsmasq (package dnsmasq-base) must be installed");
    let mut d = Dnsmasq {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !probe(d.addr) {
        if let Ok(Some(status)) = d.child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = d.child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return Err(format!("port {port}: {status}: {}", err.trim()));
        }
        if Instant::now() >= deadline {
            return Err(format!("port {port}: no answer"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(d)
}

fn cfg(dns: &Dnsmasq) -> ResolverConfig {
    ResolverConfig {
        nameservers: Some(vec![dns.addr]),
        timeout: Duration::from_secs(2),
        attempts: 1,
        port: 2525,
        ipv6: false,
        listen: vec!["127.0.0.9:2525".parse().unwrap()],
        ..Default::default()
    }
}

fn addrs(d: &[Destination]) -> Vec<String> {
    d.iter().map(ToString::to_string).collect()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn mx_preference_null_mx_nxdomain_implicit_mx() {
    let dns = dnsmasq(&[
        "--mx-host=mx.test,host.test,10",
        "--mx-host=multi.test,b.test,20",
        "--mx-host=multi.test,a.test,10",
        "--mx-host=nullmx.test,.,0",
        "--mx-host=dangling.test,missing.test,10",
    ]);
    let r = Resolver::new(cfg(&dns)).unwrap();
    rt().block_on(async {
        assert_eq!(
            addrs(&r.resolve("mx.test").await.unwrap()),
            ["host.test[127.0.0.1]:2525"]
        );
        assert_eq!(
            addrs(&r.resolve("MULTI.test.").await.unwrap()),
            ["a.test[127.0.0.2]:2525", "b.test[127.0.0.3]:2525"]
        );
        let f = r.resolve("nullmx.test").await.unwrap_err();
        assert!(
            f.is_permanent() && f.status() == EnhancedCode::new(5, 1, 10),
            "{f}"
        );
        let f = r.resolve("nope.test").await.unwrap_err();
        assert!(
            f.is_permanent() && f.status() == EnhancedCode::new(5, 1, 2),
            "{f}"
        );
        // No MX but an address: the implicit MX of RFC 5321 §5.1.
        assert_eq!(
            addrs(&r.resolve("host.test").await.unwrap()),
            ["host.test[127.0.0.1]:2525"]
        );
        // MX host without an address.
        let f = r.resolve("dangling.test").await.unwrap_err();
        assert!(!f.is_permanent(), "{f}");
    });
    // A name server that does not answer is a temporary failure, never a bounce.
    let mut c = cfg(&dns);
    c.nameservers = Some(vec![SocketAddr::from(([127, 0, 0, 1], free_udp_port()))]);
    c.timeout = Duration::from_millis(300);
    let r = Resolver::new(c).unwrap();
    let f = rt().block_on(r.resolve("mx.test")).unwrap_err();
    assert!(
        !f.is_permanent() && f.status() == EnhancedCode::new(4, 4, 3),
        "{f}"
    );
    let mut c = cfg(&dns);
    c.implicit_mx = false;
    let r = Resolver::new(c).unwrap();
    let f = rt().block_on(r.resolve("host.test")).unwrap_err();
    assert!(f.is_permanent(), "{f}");
}

#[test]
fn mx_pointing_at_myself() {
    let dns = dnsmasq(&[
        "--mx-host=loop.test,me.test,10",
        "--mx-host=backup.test,me.test,20",
        "--mx-host=backup.test,a.test,10",
        "--mx-host=primary.test,me.test,10",
        "--mx-host=primary.test,a.test,20",
    ]);
    let r = Resolver::new(cfg(&dns)).unwrap();
    rt().block_on(async {
        let f = r.resolve("loop.test").await.unwrap_err();
        assert!(
            f.is_permanent() && f.status() == EnhancedCode::new(5, 4, 6),
            "{f}"
        );
        // We are the backup: only the better MX is used.
        assert_eq!(
            addrs(&r.resolve("backup.test").await.unwrap()),
            ["a.test[127.0.0.2]:2525"]
        );
        // We are the best MX: worse ones must not be used (RFC 5321 §5.1).
        let f = r.resolve("primary.test").await.unwrap_err();
        assert_eq!(f.status(), EnhancedCode::new(5, 4, 6), "{f}");
    });
}

#[test]
fn srv_routes_and_local_lmtp() {
    let dns = dnsmasq(&[
        "--srv-host=_smtp._tcp.srv.test,host.test,2600,0,0",
        "--mx-host=srv.test,a.test,10",
    ]);
    let mut c = cfg(&dns);
    c.srv = true;
    c.routes = RouteTable::new(vec![
        (
            "routed.test".parse().unwrap(),
            "[127.0.0.5]:2000".parse().unwrap(),
        ),
        (".sub.test".parse().unwrap(), "b.test:2001".parse().unwrap()),
        (
            "mailbox.test".parse().unwrap(),
            "lmtp:unix:/run/lmtp".parse().unwrap(),
        ),
        (
            "self.test".parse().unwrap(),
            RouteTarget::Literal {
                addr: "127.0.0.9".parse().unwrap(),
                port: Some(2525),
            },
        ),
    ]);
    c.local_domains = vec!["local.test".into()];
    c.lmtp = Some(config::LmtpTarget::Inet("127.0.0.1:24".parse().unwrap()));
    let r = Resolver::new(c).unwrap();
    rt().block_on(async {
        assert_eq!(
            addrs(&r.resolve("srv.test").await.unwrap()),
            ["host.test[127.0.0.1]:2600"]
        );
        assert_eq!(
            addrs(&r.resolve("routed.test").await.unwrap()),
            ["127.0.0.5[127.0.0.5]:2000"]
        );
        assert_eq!(
            addrs(&r.resolve("x.sub.test").await.unwrap()),
            ["b.test[127.0.0.3]:2001"]
        );
        let d = r.resolve("mailbox.test").await.unwrap();
        assert!(d[0].is_lmtp() && d[0].unix_path().is_some());
        let d = r.resolve("local.test").await.unwrap();
        assert!(d[0].is_lmtp());
        assert_eq!(d[0].socket_addr(), Some("127.0.0.1:24".parse().unwrap()));
        // A route to our own listener would loop forever.
        let f = r.resolve("self.test").await.unwrap_err();
        assert_eq!(f.status(), EnhancedCode::new(5, 4, 6));
        // Address literals skip DNS.
        assert_eq!(
            addrs(&r.resolve("[127.0.0.7]").await.unwrap()),
            ["127.0.0.7[127.0.0.7]:2525"]
        );
    });
}

/// How often each host comes first in `n` resolves of `domain`.
fn first_hosts(r: &Resolver, domain: &str, n: usize) -> std::collections::HashMap<String, usize> {
    let mut counts = std::collections::HashMap::new();
    rt().block_on(async {
        for _ in 0..n {
            let d = r.resolve(domain).await.unwrap();
            *counts.entry(d[0].host().to_string()).or_insert(0) += 1;
        }
    });
    counts
}

#[test]
fn equal_preference_mx_are_shuffled() {
    let dns = dnsmasq(&["--mx-host=eq.test,a.test,10", "--mx-host=eq.test,b.test,10"]);
    let r = Resolver::new(cfg(&dns)).unwrap();
    let n = 200;
    let counts = first_hosts(&r, "eq.test", n);
    for h in ["a.test", "b.test"] {
        let c = counts.get(h).copied().unwrap_or(0);
        assert!(c * 5 >= n, "{h} first {c} times of {n}: {counts:?}");
    }
}

#[test]
fn cname_is_followed() {
    let dns = dnsmasq(&[
        "--host-record=target.test,127.0.0.6",
        "--cname=alias.test,target.test",
        "--mx-host=cname.test,alias.test,10",
    ]);
    let r = Resolver::new(cfg(&dns)).unwrap();
    rt().block_on(async {
        // The MX host keeps the name the MX record gives (it is what TLS checks).
        assert_eq!(
            addrs(&r.resolve("cname.test").await.unwrap()),
            ["alias.test[127.0.0.6]:2525"]
        );
        // A domain that is itself an alias, without MX: the implicit MX follows it too.
        assert_eq!(
            addrs(&r.resolve("alias.test").await.unwrap()),
            ["alias.test[127.0.0.6]:2525"]
        );
    });
}

#[test]
fn ipv6_addresses_only_when_enabled() {
    let dns = dnsmasq(&[
        "--host-record=v6.test,127.0.0.4,::1",
        "--mx-host=six.test,v6.test,10",
    ]);
    let r = Resolver::new(cfg(&dns)).unwrap();
    assert_eq!(
        addrs(&rt().block_on(r.resolve("six.test")).unwrap()),
        ["v6.test[127.0.0.4]:2525"]
    );
    let mut c = cfg(&dns);
    c.ipv6 = true;
    let r = Resolver::new(c).unwrap();
    let mut got = addrs(&rt().block_on(r.resolve("six.test")).unwrap());
    got.sort();
    assert_eq!(got, ["v6.test[127.0.0.4]:2525", "v6.test[::1]:2525"]);
}

#[test]
fn srv_weights_end_to_end() {
    let dns = dnsmasq(&[
        "--srv-host=_smtp._tcp.w.test,a.test,2600,10,90",
        "--srv-host=_smtp._tcp.w.test,b.test,2601,10,10",
        "--srv-host=_smtp._tcp.w.test,host.test,2602,20,0",
    ]);
    let mut c = cfg(&dns);
    c.srv = true;
    let r = Resolver::new(c).unwrap();
    let n = 300;
    let mut heavy = 0;
    rt().block_on(async {
        for _ in 0..n {
            let d = addrs(&r.resolve("w.test").await.unwrap());
            assert_eq!(d.len(), 3, "{d:?}");
            // The other priority never mixes in.
            assert_eq!(d[2], "host.test[127.0.0.1]:2602");
            if d[0] == "a.test[127.0.0.2]:2600" {
                heavy += 1;
            } else {
                assert_eq!(d[0], "b.test[127.0.0.3]:2601");
            }
        }
    });
    // About 90% by RFC 2782's draw; a plain sort by weight would give 100%.
    assert!(
        (n * 3 / 4..=n * 98 / 100).contains(&heavy),
        "weight 90 first {heavy} times of {n}"
    );
}

/// Lines of the dnsmasq log at `path` containing `needle`, once the line for a later
/// query of `sentinel` shows everything before it has been written.
fn logged(path: &std::path::Path, needle: &str, sentinel: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.contains(sentinel) {
            return log.lines().filter(|l| l.contains(needle)).count();
        }
        assert!(Instant::now() < deadline, "{sentinel} never logged");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn concurrent_resolves_are_coalesced() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("queries.log");
    let dns = dnsmasq(&[
        "--mx-host=same.test,a.test,10",
        "--log-queries",
        &format!("--log-facility={}", log.display()),
    ]);
    let r = std::sync::Arc::new(Resolver::new(cfg(&dns)).unwrap());
    let results = rt().block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let r = r.clone();
            set.spawn(async move { r.resolve("same.test").await });
        }
        let results = set.join_all().await;
        // Queried only after the others are done, so logged after them.
        let _ = r.resolve("sentinel.test").await;
        results
    });
    for d in &results {
        assert_eq!(addrs(d.as_ref().unwrap()), ["a.test[127.0.0.2]:2525"]);
    }
    assert_eq!(r.lookups_performed(), 2);
    assert_eq!(
        logged(&log, "query[MX] same.test from", "query[MX] sentinel.test"),
        1
    );
    assert_eq!(
        logged(&log, "query[A] a.test from", "query[MX] sentinel.test"),
        1
    );
}
