//! Deployment-shaped tests: postrider as root dropping to `user = "postrider"`, listening on
//! `0.0.0.0:25` and `[::]:25` in a network namespace of its own, delivering to MX hosts over
//! IPv4 and IPv6 found through a real DNS server, with clients inside and outside the relay
//! network (the world is described in common/netns.rs). The operator guide's configuration
//! blocks are read from docs/operator-guide.md and run as written.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::netns::*;
use common::{repo_root, wait_for};

/// The operator guide's blocks fenced with the info string `lang`, in document order.
fn guide_fenced(lang: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join("docs/operator-guide.md"))
        .expect("read docs/operator-guide.md");
    let open = format!("```{lang}");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match &mut current {
            None if line.trim_start() == open => current = Some(String::new()),
            Some(b) if line.trim_start() == "```" => {
                blocks.push(std::mem::take(b));
                current = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    assert!(current.is_none(), "an unterminated {open} block");
    blocks
}

/// The ```toml blocks of the operator guide, in document order.
fn guide_blocks() -> Vec<String> {
    guide_fenced("toml")
}

/// The one ```conf block (a peer's configuration the guide shows) that contains `needle`.
fn guide_conf(needle: &str) -> String {
    let found: Vec<String> = guide_fenced("conf")
        .into_iter()
        .filter(|b| b.contains(needle))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "conf blocks containing {needle:?}: {found:?}"
    );
    found.into_iter().next().unwrap()
}

/// The one block that contains `needle`.
fn guide_block(needle: &str) -> String {
    let found: Vec<String> = guide_blocks()
        .into_iter()
        .filter(|b| b.contains(needle))
        .collect();
    assert_eq!(found.len(), 1, "blocks containing {needle:?}: {found:?}");
    found.into_iter().next().unwrap()
}

/// The only changes made to a documented block: the paths it names that must exist are moved
/// into the test's directory (the spool, /etc/postrider's files, Dovecot's sockets, OpenDKIM's
/// keys). Nothing else is touched, so what runs is what the guide says.
fn map_paths(block: &str, dir: &Path) -> String {
    let d = dir.display();
    block
        .replace("/var/spool/postrider", &format!("{d}/spool"))
        .replace("/etc/postrider/", &format!("{d}/etc/"))
        .replace("/run/dovecot/", &format!("{d}/dovecot/"))
        .replace("/etc/opendkim/keys", &format!("{d}/opendkim"))
}

/// The files the guide's blocks name under /etc/postrider, made in `dir/etc`.
fn make_etc(dir: &Path) {
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=mx.example.org", "-keyout"])
        .arg(etc.join("key.pem"))
        .arg("-out")
        .arg(etc.join("cert.pem"))
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(etc.join("users"), "alice\nbob\n").unwrap();
    std::fs::write(etc.join("aliases"), "team: alice, bob\n").unwrap();
    // The daemon reads its certificate after dropping to its user only if it reloads;
    // readable by it either way, as an installed key would be (root:postrider 0640).
    common::users::make_traversable(&etc);
    for f in ["key.pem", "cert.pem", "users", "aliases"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(etc.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}

fn no_ansi(log: &str) {
    assert!(
        !log.contains('\u{1b}'),
        "the log file carries terminal escapes:\n{log}"
    );
}

fn sent(out: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains("queued as S"),
        "swaks failed:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn every_guide_block_passes_check_config() {
    let blocks = guide_blocks();
    assert!(blocks.len() >= 6, "found only {} toml blocks", blocks.len());
    let dir = tempfile::tempdir().unwrap();
    make_etc(dir.path());
    for (i, b) in blocks.iter().enumerate() {
        let file = dir.path().join(format!("block{i}.toml"));
        std::fs::write(&file, map_paths(b, dir.path())).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_postrider"))
            .args(["check-config", "-c"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "operator guide block {i} fails check-config:\n{b}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn guide_relay_delivers_over_ipv4_and_ipv6_and_detects_loops() {
    let world = World::new();
    let mx4 = world.sink(MX4, 25, &[]);
    let mx6 = world.sink(MX6, 25, &[]);
    let dir = NsDaemon::dir();
    make_etc(dir.path());
    let config = [
        guide_block("listen = [\"0.0.0.0:25\""),
        guide_block("[control]\nmetrics"),
    ]
    .map(|b| map_paths(&b, dir.path()))
    .join("\n");
    let d = NsDaemon::start(&world, dir, &config, &["0.0.0.0:25", "[::]:25"]);
    assert!(d.log().contains("running as user postrider"), "{}", d.log());

    let from = ["-f", "alice@client.example"];
    sent(&world.swaks(
        RELAY_CLIENT,
        SRV_V4,
        &[&from[..], &["-t", "a@v4.example"]].concat(),
    ));
    // Submitted over the IPv6 listener, delivered to an MX that has only an AAAA record.
    sent(&world.swaks(
        "2001:db8::2",
        SRV_V6,
        &[&from[..], &["-t", "b@v6.example"]].concat(),
    ));
    // We are the backup MX: the mail goes to the primary.
    sent(&world.swaks(
        RELAY_CLIENT,
        SRV_V4,
        &[&from[..], &["-t", "c@backup.example"]].concat(),
    ));
    // We are the best MX: a loop, bounced to the sender.
    sent(&world.swaks(
        RELAY_CLIENT,
        SRV_V4,
        &[&from[..], &["-t", "d@loop.example"]].concat(),
    ));

    wait_for("deliveries and the bounce", Duration::from_secs(30), || {
        mx4.rcpts().len() >= 3 && !mx6.rcpts().is_empty()
    });
    assert_eq!(
        mx4.rcpts(),
        ["a@v4.example", "alice@client.example", "c@backup.example"],
        "{}",
        d.log()
    );
    assert_eq!(mx6.rcpts(), ["b@v6.example"]);
    let bounce = mx4
        .texts()
        .into_iter()
        .find(|t| t.contains("d@loop.example"))
        .expect("a DSN for d@loop.example");
    assert!(
        bounce.contains("5.4.6") && bounce.contains("loops back to myself"),
        "{bounce}"
    );
    wait_for("an empty queue", Duration::from_secs(10), || {
        d.queue_json().as_array().is_some_and(Vec::is_empty)
    });
    // The guide's metrics block: Prometheus text on 127.0.0.1:9525 inside our namespace.
    let scrape = world
        .srv
        .exec(common::PYTHON)
        .args([
            "-c",
            "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9525/metrics', timeout=10).read().decode())",
        ])
        .output()
        .expect("python3");
    let metrics = String::from_utf8_lossy(&scrape.stdout);
    assert!(metrics.contains("postrider_queue_"), "{metrics}");
    no_ansi(&d.log());
}

#[test]
fn guide_routes_and_tls_policy_run_as_written() {
    let world = World::new();
    let smarthost = world.sink(SMARTHOST, 25, &[]);
    let sub = world.sink(SUBDOMAIN_HOST, 25, &[]);
    let internal = world.sink(MX_INTERNAL, 2525, &[]);
    let dir = NsDaemon::dir();
    make_etc(dir.path());
    let config = [
        guide_block("listen = [\"0.0.0.0:25\""),
        guide_block("[routes]"),
        guide_block("[tls_policy]"),
    ]
    .map(|b| map_paths(&b, dir.path()))
    .join("\n");
    let d = NsDaemon::start(&world, dir, &config, &["0.0.0.0:25", "[::]:25"]);
    for to in [
        "x@far.example",
        "y@example.com",
        "z@sub.example.com",
        "w@bank.example",
        "v@x.partner.example",
    ] {
        sent(&world.swaks(
            RELAY_CLIENT,
            SRV_V4,
            &["-f", "alice@client.example", "-t", to],
        ));
    }
    wait_for("the routed deliveries", Duration::from_secs(30), || {
        smarthost.rcpts().len() + sub.rcpts().len() + internal.rcpts().len() >= 3
    });
    assert_eq!(smarthost.rcpts(), ["x@far.example"], "{}", d.log());
    assert_eq!(internal.rcpts(), ["y@example.com"]);
    assert_eq!(sub.rcpts(), ["z@sub.example.com"]);
    // The smarthost offers no STARTTLS: mail whose policy demands it stays queued, saying why.
    wait_for("TLS policy deferrals", Duration::from_secs(30), || {
        let q = d.queue_json();
        let errors: Vec<String> = q
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|m| m["recipients"].as_array().cloned().unwrap_or_default())
            .filter_map(|r| r["last_error"].as_str().map(str::to_owned))
            .collect();
        errors.len() == 2 && errors.iter().all(|e| e.contains("TLS"))
    });
    no_ansi(&d.log());
}

#[test]
fn relay_clients_are_exempt_from_the_per_client_limit() {
    let world = World::new();
    let mx4 = world.sink(MX4, 25, &[]);
    let dir = NsDaemon::dir();
    let config = format!(
        "hostname = \"mx.example.org\"\nspool = \"{}\"\nuser = \"postrider\"\n\
         [smtp]\nlisten = [\"0.0.0.0:25\", \"[::]:25\"]\nrelay_networks = [\"192.0.2.0/24\"]\n\
         [dns]\nnameservers = [\"{DNS}:53\"]\n",
        NsDaemon::spool_of(dir.path()).display()
    );
    let d = NsDaemon::start(&world, dir, &config, &["0.0.0.0:25", "[::]:25"]);
    // smtp-source's 50 parallel sessions from the relay network, all accepted and delivered.
    let out = world
        .net
        .exec("smtp-source")
        .args(["-s", "50", "-m", "100", "-l", "1000"])
        .args(["-f", "app@client.example", "-t", "bulk@v4.example"])
        .arg(format!("{SRV_V4}:25"))
        .output()
        .expect("smtp-source");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && !text.contains("421"), "{text}");
    wait_for("100 deliveries", Duration::from_secs(60), || {
        mx4.records().len() >= 100
    });
    // Held open at once: 60 from a relay client are all greeted.
    let relay = world.hold_connections(RELAY_CLIENT, 60);
    assert_eq!(relay, format!("{} | 220", vec!["220"; 60].join(" ")));
    // An outside client still gets the default limit of 50, and a slot back as one ends.
    let outside = world.hold_connections(OUTSIDE_CLIENT, 51);
    assert_eq!(
        outside,
        format!("{} 421 | 220", vec!["220"; 50].join(" ")),
        "{}",
        d.log()
    );
    no_ansi(&d.log());
}

#[test]
fn guide_local_domain_delivers_over_lmtp_as_written() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    let world = World::new();
    let dir = NsDaemon::dir();
    make_etc(dir.path());
    // Dovecot on the daemon's host, its listener as the guide configures it; its base_dir is
    // where the guide's /run/dovecot is mapped to.
    let dovecot = common::dovecot::Dovecot::start(
        &format!("protocols = lmtp\n{}", guide_conf("service lmtp")),
        Some(&dir.path().join("dovecot")),
        Some(&world.srv),
    );
    let socket = dovecot.socket();
    assert_eq!(
        map_paths("/run/dovecot/lmtp", dir.path()),
        socket.display().to_string()
    );
    // Only the daemon's user may connect: what works below works because the guide says so.
    let meta = std::fs::metadata(&socket).unwrap();
    let daemon = common::users::ensure(common::users::DAEMON_USER);
    assert_eq!(
        (meta.uid(), meta.permissions().mode() & 0o777),
        (daemon.uid, 0o600)
    );
    let other = common::users::command_as(common::users::LOCAL_USER, common::PYTHON)
        .args([
            "-c",
            "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n s.connect(sys.argv[1]); print('connected')\nexcept PermissionError: print('refused')",
        ])
        .arg(&socket)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&other.stdout).trim(), "refused");

    let config = [
        guide_block("listen = [\"0.0.0.0:25\""),
        guide_block("[local]\ndomains"),
    ]
    .map(|b| map_paths(&b, dir.path()))
    .join("\n");
    let d = NsDaemon::start(&world, dir, &config, &["0.0.0.0:25", "[::]:25"]);
    assert!(d.log().contains("running as user postrider"), "{}", d.log());
    // Local domains take mail from anyone, also from outside the relay network.
    let from = ["-f", "someone@client.example"];
    sent(&world.swaks(
        OUTSIDE_CLIENT,
        SRV_V4,
        &[&from[..], &["-t", "alice@example.org"]].concat(),
    ));
    sent(&world.swaks(
        OUTSIDE_CLIENT,
        SRV_V4,
        &[&from[..], &["-t", "team@example.org"]].concat(),
    ));
    let unknown = world.swaks(
        OUTSIDE_CLIENT,
        SRV_V4,
        &[&from[..], &["-t", "nobody@example.org"]].concat(),
    );
    let text = String::from_utf8_lossy(&unknown.stdout);
    assert!(text.contains("550 5.1.1"), "{text}");
    wait_for(
        &format!(
            "the mail in alice's and bob's Maildirs (logs: {} and {})",
            d.dir.path().join("postrider.log").display(),
            dovecot.log_path().display()
        ),
        Duration::from_secs(30),
        || {
            dovecot.maildir_messages("alice").len() >= 2
                && !dovecot.maildir_messages("bob").is_empty()
        },
    );
    let read = |user: &str| -> Vec<String> {
        let mut v: Vec<String> = dovecot
            .maildir_messages(user)
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        v.sort();
        v
    };
    let alice = read("alice");
    let bob = read("bob");
    assert_eq!((alice.len(), bob.len()), (2, 1), "{}", d.log());
    for msg in alice.iter().chain(&bob) {
        // Dovecot's trace: the envelope came through LMTP intact, via postrider.
        assert!(
            msg.contains("Return-Path: <someone@client.example>")
                && msg.contains("by mx.example.org (postrider)"),
            "{msg}"
        );
    }
    // The alias went out as one LMTP transaction to both (Dovecot then names no single
    // Delivered-To); the direct message to alice alone.
    let to = |msgs: &[String], header: &str| msgs.iter().filter(|m| m.contains(header)).count();
    assert_eq!(to(&alice, "To: team@example.org"), 1, "{alice:?}");
    assert_eq!(
        to(&alice, "Delivered-To: alice@example.org"),
        1,
        "{alice:?}"
    );
    assert_eq!(to(&bob, "To: team@example.org"), 1, "{bob:?}");
    assert!(dovecot.maildir_messages("nobody").is_empty());
    wait_for("an empty queue", Duration::from_secs(10), || {
        d.queue_json().as_array().is_some_and(Vec::is_empty)
    });
    no_ansi(&d.log());
}

#[test]
fn guide_milter_block_signs_with_opendkim_as_written() {
    let world = World::new();
    let mx4 = world.sink(MX4, 25, &[]);
    let dir = NsDaemon::dir();
    make_etc(dir.path());
    let keys = dir.path().join("opendkim");
    std::fs::create_dir(&keys).unwrap();
    // The guide's OpenDKIM configuration, its key made the way its comment says.
    let dkim_conf = map_paths(&guide_conf("InternalHosts"), dir.path());
    let genkey = dkim_conf
        .lines()
        .find_map(|l| l.split_once("keys from: ").map(|(_, cmd)| cmd.trim()))
        .expect("the opendkim-genkey command in the guide's comment");
    let genkey = map_paths(genkey, dir.path());
    let argv: Vec<&str> = genkey.split_whitespace().collect();
    let st = Command::new(argv[0])
        .args(&argv[1..])
        .status()
        .expect("opendkim-genkey (package opendkim-tools)");
    assert!(st.success(), "{genkey}");
    let conf = keys.join("opendkim.conf");
    // Test-only: the key sits under a temp dir, which opendkim would call unsafe.
    std::fs::write(&conf, format!("{dkim_conf}RequireSafeKeys false\n")).unwrap();
    let _dkim = common::Proc(
        world
            .srv
            .exec("opendkim")
            .args(["-f", "-x"])
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(keys.join("opendkim.log")).unwrap())
            .spawn()
            .expect("opendkim"),
    );
    wait_for(
        "opendkim on 127.0.0.1:8891",
        Duration::from_secs(20),
        || world.srv.listening(8891, false),
    );

    let config = [
        guide_block("listen = [\"0.0.0.0:25\""),
        guide_block("[[milter]]"),
    ]
    .map(|b| map_paths(&b, dir.path()))
    .join("\n");
    let d = NsDaemon::start(&world, dir, &config, &["0.0.0.0:25", "[::]:25"]);
    // From the relay network over IPv4 and IPv6: both are OpenDKIM's InternalHosts.
    for (source, server, to) in [
        (RELAY_CLIENT, SRV_V4, "a@v4.example"),
        ("2001:db8::2", SRV_V6, "b@v4.example"),
    ] {
        sent(&world.swaks(
            source,
            server,
            &[
                "-f",
                "alice@example.org",
                "-t",
                to,
                "--header",
                "Subject: signed",
            ],
        ));
    }
    wait_for("two messages at the MX", Duration::from_secs(30), || {
        mx4.texts().len() >= 2
    });
    let record = std::fs::read_to_string(keys.join("mail.txt")).unwrap();
    for text in mx4.texts() {
        assert!(
            text.contains("DKIM-Signature:") && text.contains("d=example.org"),
            "{text}\n{}",
            d.log()
        );
        assert_eq!(dkim_verify(&text, &record), "verified", "{text}");
    }
    no_ansi(&d.log());
}

/// dkimpy's verdict on `message` with the public key of `record` (opendkim-genkey's .txt
/// file) standing in for DNS.
fn dkim_verify(message: &str, record: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("msg"), message).unwrap();
    std::fs::write(dir.path().join("txt"), record).unwrap();
    let out = Command::new(common::PYTHON)
        .arg("-c")
        .arg(
            "import dkim,sys,re\n\
             txt=open(sys.argv[2]).read()\n\
             rec=''.join(re.findall(r'\"([^\"]*)\"', txt)).encode()\n\
             msg=open(sys.argv[1],'rb').read()\n\
             ok=dkim.verify(msg, dnsfunc=lambda name, timeout=5: rec)\n\
             print('verified' if ok else 'FAILED')\n",
        )
        .arg(dir.path().join("msg"))
        .arg(dir.path().join("txt"))
        .output()
        .expect("python3-dkim");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn an_address_added_to_our_interfaces_becomes_a_loop() {
    let world = World::new();
    let mx4 = world.sink(MX4, 25, &[]);
    let mx77 = world.sink(MX77, 25, &[]);
    let dir = NsDaemon::dir();
    let config = format!(
        "hostname = \"mx.example.org\"\nspool = \"{}\"\nuser = \"postrider\"\n\
         [smtp]\nlisten = [\"0.0.0.0:25\"]\nrelay_networks = [\"192.0.2.0/24\"]\n\
         [dns]\nnameservers = [\"{DNS}:53\"]\n",
        NsDaemon::spool_of(dir.path()).display()
    );
    let d = NsDaemon::start(&world, dir, &config, &["0.0.0.0:25"]);
    let send = |to: &str| {
        sent(&world.swaks(
            RELAY_CLIENT,
            SRV_V4,
            &["-f", "alice@client.example", "-t", to],
        ));
    };
    send("first@moved.example");
    wait_for("delivery to mx77", Duration::from_secs(30), || {
        !mx77.rcpts().is_empty()
    });
    // The MX's address moves onto our own interface (a failover address taken over).
    drop(mx77);
    world
        .net
        .ip(&["addr", "del", &format!("{MX77}/24"), "dev", "eth0"]);
    world
        .srv
        .ip(&["addr", "add", &format!("{MX77}/32"), "dev", "eth0"]);
    wait_for(
        "the daemon to see the new address",
        Duration::from_secs(15),
        || d.log().contains("interface addresses changed"),
    );
    send("second@moved.example");
    wait_for("the bounce", Duration::from_secs(30), || {
        mx4.rcpts().contains(&"alice@client.example".to_string())
    });
    let bounce = mx4.texts().concat();
    assert!(
        bounce.contains("second@moved.example") && bounce.contains("5.4.6"),
        "{bounce}"
    );
}

/// Finding 3 on loopback, without namespaces: loopback is in the default relay networks, so
/// one loopback client may hold more sessions than `max_connections_per_client`.
#[test]
fn loopback_relay_clients_hold_more_sessions_than_the_per_client_limit() {
    let d = common::Daemon::start(
        "[delivery]\nenabled = false\n[smtp]\nmax_connections_per_client = 5\n",
    );
    let _held: Vec<common::Raw> = (0..12)
        .map(|_| common::Raw::greeted_within(d.port, Duration::from_secs(10)))
        .collect();
}

/// Finding 4: a log written to a file (as under systemd) has no colour escapes.
#[test]
fn log_files_are_plain_text() {
    let d = common::Daemon::start("[delivery]\nenabled = false\n");
    let out = common::swaks(d.port, &["-f", "a@src.test", "-t", "b@dst.test"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("queued as S"));
    wait_for("the received line", Duration::from_secs(10), || {
        d.log().contains("received")
    });
    no_ansi(&d.log());
}
