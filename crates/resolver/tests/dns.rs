//! The resolver against a real DNS server: dnsmasq, authoritative for `test` on a loopback
//! port.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use config::{RouteTable, RouteTarget};
use resolver::{Destination, Resolver, ResolverConfig};

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
    .stderr(Stdio::null());
    let child = cmd
        .spawn()
        .expect("dnsmasq (package dnsmasq-base) must be installed");
    let d = Dnsmasq {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !probe(d.addr) {
        assert!(Instant::now() < deadline, "dnsmasq did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    d
}

fn cfg(dns: &Dnsmasq) -> ResolverConfig {
    ResolverConfig {
        nameservers: Some(vec![dns.addr]),
        timeout: Duration::from_secs(2),
        attempts: 1,
        routes: RouteTable::default(),
        local_domains: vec![],
        lmtp: None,
        port: 2525,
        implicit_mx: true,
        ipv6: false,
        srv: false,
        self_addresses: vec![],
        listen: vec!["127.0.0.9:2525".parse().unwrap()],
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
        assert!(f.permanent && f.status == "5.1.10", "{f}");
        let f = r.resolve("nope.test").await.unwrap_err();
        assert!(f.permanent && f.status == "5.1.2", "{f}");
        // No MX but an address: the implicit MX of RFC 5321 §5.1.
        assert_eq!(
            addrs(&r.resolve("host.test").await.unwrap()),
            ["host.test[127.0.0.1]:2525"]
        );
        // MX host without an address.
        let f = r.resolve("dangling.test").await.unwrap_err();
        assert!(!f.permanent, "{f}");
    });
    // A name server that does not answer is a temporary failure, never a bounce.
    let mut c = cfg(&dns);
    c.nameservers = Some(vec![SocketAddr::from(([127, 0, 0, 1], free_udp_port()))]);
    c.timeout = Duration::from_millis(300);
    let r = Resolver::new(c).unwrap();
    let f = rt().block_on(r.resolve("mx.test")).unwrap_err();
    assert!(!f.permanent && f.status == "4.4.3", "{f}");
    let mut c = cfg(&dns);
    c.implicit_mx = false;
    let r = Resolver::new(c).unwrap();
    let f = rt().block_on(r.resolve("host.test")).unwrap_err();
    assert!(f.permanent, "{f}");
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
        assert!(f.permanent && f.status == "5.4.6", "{f}");
        // We are the backup: only the better MX is used.
        assert_eq!(
            addrs(&r.resolve("backup.test").await.unwrap()),
            ["a.test[127.0.0.2]:2525"]
        );
        // We are the best MX: worse ones must not be used (RFC 5321 §5.1).
        let f = r.resolve("primary.test").await.unwrap_err();
        assert_eq!(f.status, "5.4.6", "{f}");
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
        assert_eq!(f.status, "5.4.6");
        // Address literals skip DNS.
        assert_eq!(
            addrs(&r.resolve("[127.0.0.7]").await.unwrap()),
            ["127.0.0.7[127.0.0.7]:2525"]
        );
    });
}
