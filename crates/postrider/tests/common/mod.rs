//! Shared harness for the integration tests: runs the real postrider binary and real peers
//! (swaks, smtp-source, the aiosmtpd sink in tests/peers/) on loopback, and waits on
//! conditions with deadlines instead of sleeping.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod dovecot;
pub mod netns;
pub mod proto;
pub mod users;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const PYTHON: &str = "/usr/bin/python3";

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

/// Polls `cond` until it holds or `limit` passes; panics with `what` on timeout.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// A running `postrider serve` with its own config and spool in a temporary directory.
pub struct Daemon {
    pub child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Daemon {
    /// Starts the daemon with `extra` appended to a minimal config (listen port and spool set).
    /// `extra` may add keys to `[smtp]` by starting with them: the harness writes the top-level
    /// keys first and `[smtp]` last, so `extra` can open its own tables.
    pub fn start(extra: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("postrider.toml");
        let spool = if extra.starts_with("spool =") || extra.contains("\nspool =") {
            String::new()
        } else {
            format!("spool = \"{}\"\n", dir.path().join("spool").display())
        };
        let mut d = Daemon {
            child: None,
            port: 0,
            dir,
            config,
        };
        // A port free a moment ago may be taken by another test's client socket before the
        // daemon binds it: then try another.
        for _ in 0..5 {
            let port = free_port();
            let text = format!("hostname = \"mx.postrider.test\"\n{spool}{extra}\n");
            let text = if text.contains("[smtp]") {
                text.replacen(
                    "[smtp]",
                    &format!("[smtp]\nlisten = [\"127.0.0.1:{port}\"]"),
                    1,
                )
            } else {
                format!("{text}\n[smtp]\nlisten = [\"127.0.0.1:{port}\"]\n")
            };
            std::fs::write(&d.config, text).expect("write config");
            d.port = port;
            match d.try_spawn() {
                Ok(()) => return d,
                Err(log) if log.contains("cannot listen") => continue,
                Err(log) => panic!("postrider exited at start:\n{log}"),
            }
        }
        panic!("no free port for postrider after 5 tries:\n{}", d.log());
    }

    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postrider.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&mut self) {
        if let Err(log) = self.try_spawn() {
            panic!("postrider exited at start:\n{log}");
        }
    }

    /// Starts the daemon and waits for it to listen; `Err(log)` if it exited instead.
    fn try_spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open daemon log");
        let child = Command::new(env!("CARGO_BIN_EXE_postrider"))
            .args(["serve", "-c"])
            .arg(&self.config)
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn postrider");
        self.child = Some(child);
        let port = self.port;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!("exit status {status}\n{}", self.log()));
            }
            // Our own daemon's word that it bound the port: another test's listener may
            // have taken a port we thought free, and answer a connect in its place.
            if self
                .log()
                .contains(&format!("listening on 127.0.0.1:{port}"))
                && port_open(port)
            {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "postrider did not listen within 20s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `postrider queue --json list`, parsed: an array of messages.
    pub fn queue_json(&self) -> serde_json::Value {
        let out = self.cli(&["queue", "--json", "list"]);
        assert!(
            out.status.success(),
            "queue list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("queue list --json is JSON")
    }

    /// Messages in the queue.
    pub fn queued(&self) -> usize {
        self.queue_json().as_array().map_or(0, Vec::len)
    }

    /// Waits (up to `secs`) until nothing is left in the queue.
    pub fn wait_empty(&self, secs: u64) {
        wait_for("the queue to empty", Duration::from_secs(secs), || {
            self.queued() == 0
        });
    }

    /// `postrider sendmail ARGS` as a script runs it (configuration from
    /// `POSTRIDER_CONFIG`), with `stdin` as the message.
    pub fn sendmail(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_postrider"))
            .arg("sendmail")
            .args(args)
            .env("POSTRIDER_CONFIG", &self.config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run postrider sendmail");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin)
            .expect("write the message");
        child.wait_with_output().expect("sendmail exit")
    }

    /// `postrider ARGS -c CONFIG`, returning its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_postrider"))
            .args(args)
            .arg("-c")
            .arg(&self.config)
            .output()
            .expect("run postrider cli")
    }

    /// SIGKILL: the crash the spool must survive.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a graceful exit (up to `limit`).
    pub fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("daemon running");
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = c.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("postrider did not exit within {limit:?} after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The aiosmtpd sink of tests/peers/sink.py, writing what it accepts under a temp dir.
pub struct Sink {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Sink {
    pub fn start(args: &[&str]) -> Sink {
        Sink::start_on(0, args)
    }

    /// A sink on a given port (a destination that was down comes up); 0 lets the kernel
    /// choose.
    pub fn start_on(port: u16, args: &[&str]) -> Sink {
        Sink::start_at("127.0.0.1", port, args)
    }

    /// A sink on another loopback address (127.0.0.2 ...), for destinations with several hosts.
    pub fn start_at(host: &str, port: u16, args: &[&str]) -> Sink {
        let dir = tempfile::tempdir().expect("tempdir");
        let port_s = port.to_string();
        let listen: Vec<&str> = ["--host", host, "--port", &port_s]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        let (mut child, line) = spawn_sink(
            Command::new(PYTHON),
            &listen,
            dir.path(),
            &format!("port {port}"),
        );
        let port: u16 = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("sink on port {port} said {line:?}")
            });
        Sink { child, port, dir }
    }

    /// The JSON lines of accepted messages.
    pub fn messages(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("log.jsonl"))
            .map(|s| s.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    pub fn max_open(&self) -> u64 {
        let text = std::fs::read_to_string(self.dir.path().join("stats.json")).unwrap_or_default();
        text.split("\"max_open\": ")
            .nth(1)
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// When each connection was opened (seconds since the epoch), in order.
    pub fn connection_times(&self) -> Vec<f64> {
        std::fs::read_to_string(self.dir.path().join("connections.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["time"].as_f64())
            .collect()
    }

    /// The accepted messages' log records, parsed.
    pub fn records(&self) -> Vec<serde_json::Value> {
        self.messages()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// A record's recipients, sorted.
    pub fn rcpts(rec: &serde_json::Value) -> Vec<String> {
        let mut v: Vec<String> = rec["rcpt_tos"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The sink's counters (open, max_open, connections, domain_max).
    pub fn stats(&self) -> serde_json::Value {
        std::fs::read_to_string(self.dir.path().join("stats.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    pub fn message_text(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(file)).unwrap_or_default()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs swaks against 127.0.0.1:port with extra arguments.
pub fn swaks(port: u16, args: &[&str]) -> Output {
    Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{port}"), "--timeout", "20"])
        .args(args)
        .output()
        .expect("run swaks (apt-get install swaks)")
}

/// A raw SMTP conversation for exact-byte tests: send bytes, read what comes back.
pub struct Raw {
    pub stream: TcpStream,
}

impl Raw {
    pub fn connect(port: u16) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Raw { stream }
    }

    /// Connects and reads the greeting; `None` unless it is a 220.
    pub fn greeted(port: u16) -> Option<Raw> {
        let mut r = Raw::connect(port);
        let mut buf = [0u8; 512];
        let n = r.stream.read(&mut buf).ok()?;
        buf[..n].starts_with(b"220").then_some(r)
    }

    /// `greeted`, retried until the server has let go of earlier sessions (it notices a
    /// client's close asynchronously) or `limit` passes.
    pub fn greeted_within(port: u16, limit: Duration) -> Raw {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(r) = Raw::greeted(port) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no 220 greeting within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Reads until the buffer holds `n` complete replies (final lines: "NNN " or "NNN\r\n").
    pub fn replies(&mut self, n: usize) -> String {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&buf).into_owned();
            let finals = text
                .split("\r\n")
                .filter(|l| l.len() >= 3 && l.as_bytes().get(3).is_none_or(|&c| c == b' '))
                .count();
            if finals >= n {
                return text;
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return text,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                Err(e) => panic!("reading replies: {e}; got so far: {text:?}"),
            }
        }
    }

    /// Sends a line and returns the one reply to it.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.replies(1)
    }
}

/// A peer process that is killed and reaped when the test ends, even by a panic.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The policy milter of tests/peers/policy_milter.py on a free port.
pub fn policy_milter() -> (Proc, u16) {
    let port = free_port();
    let child = Command::new(PYTHON)
        .arg(repo_root().join("tests/peers/policy_milter.py"))
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("policy_milter.py (needs python3-milter)");
    let p = Proc(child);
    wait_for("the policy milter", Duration::from_secs(20), || {
        port_open(port)
    });
    (p, port)
}

/// Starts tests/peers/sink.py with `python` (a python3 command, possibly run inside a
/// network namespace) and the sink's listening arguments, writing into `dir`; returns it once
/// it printed its ready line, and that line.
pub fn spawn_sink(mut python: Command, listen: &[&str], dir: &Path, what: &str) -> (Child, String) {
    python
        .arg(repo_root().join("tests/peers/sink.py"))
        .args(listen)
        .arg("--out")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("stderr.log")).expect("sink log"));
    let mut child = python
        .spawn()
        .expect("spawn sink.py (needs python3-aiosmtpd)");
    let mut line = String::new();
    let _ = BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line);
    assert!(
        line.starts_with("ready"),
        "sink on {what} did not start: {}",
        std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
    );
    (child, line)
}

/// A private Postfix instance on a loopback port (bench/postfix-instance.sh), relaying
/// everything to `relayhost`; stopped when dropped.
pub struct Postfix {
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Postfix {
    pub fn start(relayhost: &str) -> Postfix {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let out = Command::new(repo_root().join("bench/postfix-instance.sh"))
            .arg("start")
            .arg(dir.path())
            .arg(port.to_string())
            .arg(relayhost)
            .output()
            .expect("run bench/postfix-instance.sh (needs postfix)");
        assert!(
            out.status.success(),
            "postfix did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Postfix { port, dir }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("bench/postfix-instance.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

/// smtp-source: `n` messages of `size` bytes at concurrency `conc` from `from` to `to`.
pub fn smtp_source(port: u16, n: usize, conc: usize, size: usize, from: &str, to: &str) -> Output {
    Command::new("smtp-source")
        .args([
            "-m",
            &n.to_string(),
            "-s",
            &conc.to_string(),
            "-l",
            &size.to_string(),
        ])
        .args(["-f", from, "-t", to])
        .arg(format!("127.0.0.1:{port}"))
        .output()
        .expect("run smtp-source (needs postfix)")
}

/// dnsmasq as the authoritative server for `test` on a loopback port, with the given extra
/// records (`--mx-host=...`, `--host-record=...`); killed when dropped.
pub struct Dnsmasq {
    _proc: Proc,
    pub port: u16,
}

impl Dnsmasq {
    pub fn start(records: &[&str]) -> Dnsmasq {
        // dnsmasq binds UDP and TCP on its port; a port found free for UDP may be taken on
        // TCP by another test's connection, so a failed start is retried on a new port.
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = std::net::UdpSocket::bind("127.0.0.1:0")
                .and_then(|s| s.local_addr())
                .map(|a| a.port())
                .expect("a free UDP port");
            let err = tempfile::NamedTempFile::new().expect("temp file");
            let mut child = Command::new("dnsmasq")
                .args([
                    "--keep-in-foreground",
                    "--no-resolv",
                    "--no-hosts",
                    "--bind-interfaces",
                    "--listen-address=127.0.0.1",
                    "--local=/test/",
                    "--pid-file=",
                    "-C",
                    "/dev/null",
                ])
                .arg(format!("--port={port}"))
                .args(records)
                .stdout(Stdio::null())
                .stderr(err.reopen().expect("stderr file"))
                .spawn()
                .expect("dnsmasq (package dnsmasq-base)");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    last_err = std::fs::read_to_string(err.path()).unwrap_or_default();
                    break;
                }
                if dns_answers(port) {
                    return Dnsmasq {
                        _proc: Proc(child),
                        port,
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_err = "no answer within 10s".into();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("dnsmasq did not start: {last_err}");
    }
}

/// Whether something answers a DNS query for `test` on the port.
fn dns_answers(port: u16) -> bool {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let q = [
        0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 4, b't', b'e', b's', b't', 0, 0, 1, 0, 1,
    ];
    s.send_to(&q, ("127.0.0.1", port)).is_ok() && s.recv(&mut [0u8; 512]).is_ok()
}

/// A DSN as Python's email package parses it (tests/peers/dsncheck.py).
pub fn parse_dsn(path: &Path) -> serde_json::Value {
    let out = Command::new(PYTHON)
        .arg(repo_root().join("tests/peers/dsncheck.py"))
        .arg(path)
        .output()
        .expect("run dsncheck.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("dsncheck.py prints JSON")
}
