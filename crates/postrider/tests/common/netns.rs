//! A test world shaped like production, in network namespaces the test makes and removes:
//! postrider in one namespace ("srv") on port 25 of real-looking interface addresses, and
//! everything it talks to (MX hosts over IPv4 and IPv6, dnsmasq serving their zone, SMTP
//! clients inside and outside the relay network) in another ("net"), joined by one veth pair.
//! Addresses come from the documentation ranges and exist only inside these namespaces, so no
//! packet leaves them and parallel tests (each with its own namespaces) cannot collide.
//!
//! ```text
//!  srv: eth0 192.0.2.25/24, 2001:db8::25/64         (postrider; routes to 198.51.100/24 and
//!       lo                                            2001:db8:1::/64 on-link via eth0)
//!  net: eth0 192.0.2.1, .7 (smarthosts), .10 (relay client),
//!            198.51.100.10 (mx4), .20 (mx.internal), .53 (DNS), .77 (mx77), .99 (outside),
//!            2001:db8::2/64, 2001:db8:1::25/64 (mx6, AAAA only)
//! ```
//!
//! The zone (dnsmasq, also in `/etc/netns/SRV/resolv.conf`, so a configuration without
//! `[dns]` uses it as the system resolver would):
//! `v4.example` → mx4 (A only); `v6.example` → mx6 (AAAA only); `loop.example` → us;
//! `backup.example` → mx4 (10) and us (20); `client.example` → mx4; `mx.internal` → .20;
//! `bank.example`, `x.partner.example` → mx4; `moved.example` → mx77; `self.example` is our
//! A and AAAA.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{PYTHON, Proc, users, wait_for};

pub const SRV_V4: &str = "192.0.2.25";
pub const SRV_V6: &str = "2001:db8::25";
pub const RELAY_CLIENT: &str = "192.0.2.10";
pub const OUTSIDE_CLIENT: &str = "198.51.100.99";
pub const MX4: &str = "198.51.100.10";
pub const MX6: &str = "2001:db8:1::25";
pub const MX_INTERNAL: &str = "198.51.100.20";
pub const SMARTHOST: &str = "192.0.2.1";
pub const SUBDOMAIN_HOST: &str = "192.0.2.7";
pub const DNS: &str = "198.51.100.53";
/// mx77.example, the MX of moved.example: in `net` at first, for a test to move into `srv`.
pub const MX77: &str = "198.51.100.77";

const NET_V4: &[&str] = &[
    "192.0.2.1/24",
    "192.0.2.7/24",
    "192.0.2.10/24",
    "198.51.100.10/24",
    "198.51.100.20/24",
    "198.51.100.53/24",
    "198.51.100.99/24",
    "198.51.100.77/24",
];
const NET_V6: &[&str] = &["2001:db8::2/64", "2001:db8:1::25/64"];

const ZONE: &[&str] = &[
    "--local=/example/",
    "--local=/internal/",
    "--host-record=mx4.example,198.51.100.10",
    "--host-record=mx6.example,2001:db8:1::25",
    "--host-record=self.example,192.0.2.25,2001:db8::25",
    "--host-record=mx.internal,198.51.100.20",
    "--mx-host=v4.example,mx4.example,10",
    "--mx-host=v6.example,mx6.example,10",
    "--mx-host=loop.example,self.example,10",
    "--mx-host=backup.example,mx4.example,10",
    "--mx-host=backup.example,self.example,20",
    "--mx-host=client.example,mx4.example,10",
    "--mx-host=bank.example,mx4.example,10",
    "--mx-host=x.partner.example,mx4.example,10",
    "--host-record=mx77.example,198.51.100.77",
    "--mx-host=moved.example,mx77.example,10",
];

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// One named network namespace with lo up; deleted (with its /etc/netns files) when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Netns {
        // A namespace left by a killed earlier run of the same pid would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME args...`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        run(Command::new("ip").args(["-n", &self.name]).args(args));
    }

    /// A command run inside the namespace.
    pub fn exec(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c.stdin(Stdio::null());
        c
    }

    /// Whether something listens on TCP (or UDP) `port` inside the namespace.
    pub fn listening(&self, port: u16, udp: bool) -> bool {
        let out = self
            .exec("ss")
            .args([if udp { "-Hlun" } else { "-Hltn" }])
            .arg(format!("sport = :{port}"))
            .output();
        out.is_ok_and(|o| !o.stdout.is_empty())
    }

    fn etc(&self) -> PathBuf {
        Path::new("/etc/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = std::fs::remove_dir_all(self.etc());
    }
}

/// The two namespaces, wired and addressed, with dnsmasq serving the zone.
pub struct World {
    // Dropped first: dnsmasq must not outlive the namespace it serves in.
    _dns: Proc,
    pub srv: Netns,
    pub net: Netns,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

impl World {
    pub fn new() -> World {
        let tag = format!(
            "pr{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let srv = Netns::new(format!("{tag}-srv"));
        let net = Netns::new(format!("{tag}-net"));
        // Made inside srv with its peer placed straight into net: interface names need be
        // unique only per namespace, so parallel tests can all call theirs eth0.
        srv.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &net.name,
        ]);
        srv.ip(&["addr", "add", "192.0.2.25/24", "dev", "eth0"]);
        srv.ip(&["addr", "add", "2001:db8::25/64", "dev", "eth0", "nodad"]);
        srv.ip(&["link", "set", "eth0", "up"]);
        srv.ip(&["route", "add", "198.51.100.0/24", "dev", "eth0"]);
        srv.ip(&["route", "add", "2001:db8:1::/64", "dev", "eth0"]);
        for a in NET_V4 {
            net.ip(&["addr", "add", a, "dev", "eth0"]);
        }
        for a in NET_V6 {
            net.ip(&["addr", "add", a, "dev", "eth0", "nodad"]);
        }
        net.ip(&["link", "set", "eth0", "up"]);
        std::fs::create_dir_all(srv.etc()).expect("mkdir /etc/netns/NAME");
        std::fs::write(srv.etc().join("resolv.conf"), format!("nameserver {DNS}\n"))
            .expect("write resolv.conf");
        let dns = net
            .exec("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--pid-file=",
                "-C",
                "/dev/null",
                "--port=53",
            ])
            .arg(format!("--listen-address={DNS}"))
            .args(ZONE)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (package dnsmasq-base)");
        let dns = Proc(dns);
        wait_for("dnsmasq in the namespace", Duration::from_secs(10), || {
            net.listening(53, true)
        });
        World {
            _dns: dns,
            srv,
            net,
        }
    }

    /// A sink (tests/peers/sink.py) in `net` on `host` and `port`.
    pub fn sink(&self, host: &str, port: u16, args: &[&str]) -> NsSink {
        let dir = tempfile::tempdir().expect("tempdir");
        let port_s = port.to_string();
        let listen: Vec<&str> = ["--host", host, "--port", &port_s]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        let (child, _) = super::spawn_sink(
            self.net.exec(PYTHON),
            &listen,
            dir.path(),
            &format!("{host}:{port}"),
        );
        NsSink {
            _proc: Proc(child),
            dir,
        }
    }

    /// swaks run in `net` from `source` to postrider at `server` (an IP), port 25.
    pub fn swaks(&self, source: &str, server: &str, args: &[&str]) -> Output {
        self.net
            .exec("swaks")
            .args([
                "--local-interface",
                source,
                "--server",
                server,
                "--port",
                "25",
            ])
            .args(["--timeout", "20"])
            .args(args)
            .output()
            .expect("swaks")
    }

    /// Opens `n` SMTP connections at once from `source` to postrider and holds them; returns
    /// each greeting's code, then closes the first and the code a new connection gets (after
    /// retrying until it is greeted or 10 s pass), as "220 220 ... | 220".
    pub fn hold_connections(&self, source: &str, n: usize) -> String {
        let script = r#"
import socket, sys, time
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def greet():
    s = socket.create_connection((dst, 25), timeout=10, source_address=(src, 0))
    return s, s.recv(512)[:3].decode()
held = [greet() for _ in range(n)]
codes = [c for _, c in held]
held[0][0].close()
deadline = time.time() + 10
while True:
    s, c = greet()
    if c == "220" or time.time() > deadline:
        break
    s.close()
    time.sleep(0.02)
print(" ".join(codes), "|", c)
"#;
        let out = self
            .net
            .exec(PYTHON)
            .args(["-c", script, source, SRV_V4, &n.to_string()])
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// A sink inside `net`; the accepted messages are read from its directory.
pub struct NsSink {
    _proc: Proc,
    pub dir: tempfile::TempDir,
}

impl NsSink {
    pub fn records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("log.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Every recipient of every accepted message.
    pub fn rcpts(&self) -> Vec<String> {
        let mut v: Vec<String> = self.records().iter().flat_map(super::Sink::rcpts).collect();
        v.sort();
        v
    }

    /// The text of every accepted message.
    pub fn texts(&self) -> Vec<String> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|x| x == "eml"));
        files.sort();
        files
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    }
}

/// postrider running in `srv` as deployed: started as root, `user = "postrider"`, its spool in
/// a temp dir other users can traverse to, as /var/spool is.
pub struct NsDaemon {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl NsDaemon {
    /// The spool directory `config` should name.
    pub fn spool_of(dir: &Path) -> PathBuf {
        dir.join("spool")
    }

    /// A temp dir for a daemon, traversable by the daemon user.
    pub fn dir() -> tempfile::TempDir {
        users::ensure(users::DAEMON_USER);
        let dir = tempfile::tempdir().expect("tempdir");
        users::make_traversable(dir.path());
        dir
    }

    /// Writes `config` into `dir` and starts the daemon in `world.srv`; waits until it has
    /// logged every address of `listen` and they accept connections.
    pub fn start(world: &World, dir: tempfile::TempDir, config: &str, listen: &[&str]) -> NsDaemon {
        let path = dir.path().join("postrider.toml");
        std::fs::write(&path, config).expect("write config");
        let log = std::fs::File::create(dir.path().join("postrider.log")).expect("log");
        let child = world
            .srv
            .exec(env!("CARGO_BIN_EXE_postrider"))
            .args(["serve", "-c"])
            .arg(&path)
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn postrider");
        let mut d = NsDaemon {
            child: Some(child),
            dir,
            config: path,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(Ok(Some(st))) = d.child.as_mut().map(Child::try_wait) {
                panic!("postrider exited at start ({st}):\n{}", d.log());
            }
            let log = d.log();
            if listen
                .iter()
                .all(|a| log.contains(&format!("listening on {a}")))
                && world.srv.listening(25, false)
            {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "postrider did not start listening:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postrider.log")).unwrap_or_default()
    }

    /// `postrider queue --json list` on this daemon's configuration.
    pub fn queue_json(&self) -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_postrider"))
            .args(["queue", "--json", "list", "-c"])
            .arg(&self.config)
            .output()
            .expect("postrider queue");
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }
}

impl Drop for NsDaemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
