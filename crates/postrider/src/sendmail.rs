//! `postrider sendmail` and the binary invoked as `sendmail`: the submission interface that
//! scripts and cron use (sendmail(1) options), handing the message to the running daemon
//! over the local submission socket (`submit.rs`), or into the pickup directory when the
//! daemon is not running. Either way the daemon learns the submitting uid from the kernel,
//! not from us, and applies the local-submission policy; this side only refuses arguments
//! that could not be a single envelope field.

use std::io::{BufRead, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use config::Config;

use crate::sysexits;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub extract_recipients: bool,
    pub ignore_dots: bool,
    pub sender: Option<String>,
    pub full_name: Option<String>,
    pub mode: Mode,
    pub recipients: Vec<String>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub enum Mode {
    #[default]
    Deliver,
    ListQueue,
    Flush,
    SmtpOnStdin,
}

/// Parses sendmail(1) arguments; unknown `-o` options and the no-op ones are accepted.
pub fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut i = 0;
    let value = |i: &mut usize, inline: &str, flag: &str| -> Result<String, String> {
        if !inline.is_empty() {
            return Ok(inline.to_owned());
        }
        *i += 1;
        args.get(*i)
            .cloned()
            .ok_or_else(|| format!("option {flag} needs a value"))
    };
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            o.recipients.extend(args[i + 1..].iter().cloned());
            break;
        }
        if !a.starts_with('-') || a == "-" {
            o.recipients.push(a.clone());
            i += 1;
            continue;
        }
        let (flag, rest) = a.split_at(2.min(a.len()));
        match flag {
            "-t" => o.extract_recipients = true,
            "-i" => o.ignore_dots = true,
            "-f" | "-r" => o.sender = Some(value(&mut i, rest, flag)?),
            "-F" => o.full_name = Some(value(&mut i, rest, flag)?),
            "-o" => {
                if rest == "i" {
                    o.ignore_dots = true;
                } else if rest.is_empty() {
                    i += 1; // "-o X": an option we do not use
                }
            }
            "-b" => match rest {
                "m" => o.mode = Mode::Deliver,
                "p" => o.mode = Mode::ListQueue,
                "s" => o.mode = Mode::SmtpOnStdin,
                other => return Err(format!("unsupported mode -b{other}")),
            },
            "-q" => o.mode = Mode::Flush,
            "-v" | "-n" | "-U" | "-m" => {}
            "-N" | "-R" | "-V" | "-X" | "-O" | "-B" | "-C" | "-L" | "-h" => {
                if rest.is_empty() {
                    i += 1;
                }
            }
            _ => return Err(format!("unknown option {a}")),
        }
        i += 1;
    }
    Ok(o)
}

/// Reads the message from standard input: LF or CRLF lines, a lone "." ends it unless -i.
pub fn read_message(input: &mut dyn BufRead, ignore_dots: bool) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let body = line.strip_suffix(b"\n").unwrap_or(&line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        if !ignore_dots && body == b"." {
            break;
        }
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n");
    }
    Ok(out)
}

/// Splits the header section into (name, unfolded value) pairs and returns the body offset.
fn headers(msg: &[u8]) -> (Vec<(String, String)>, usize) {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut pos = 0;
    while pos < msg.len() {
        let end = msg[pos..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|e| pos + e)
            .unwrap_or(msg.len());
        let line = String::from_utf8_lossy(&msg[pos..end]).into_owned();
        let next = (end + 2).min(msg.len());
        if line.is_empty() {
            return (out, next);
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((n, v)) = line.split_once(':') {
            out.push((n.trim().to_owned(), v.trim().to_owned()));
        } else {
            // Not a header: the message has no header section.
            return (out, pos);
        }
        pos = next;
    }
    (out, msg.len())
}

/// Addresses in an RFC 5322 address list: `a@b, "N" <c@d>, group: e@f;`.
pub fn addresses(list: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut angle, mut comment) = (false, false, 0u32);
    let flush = |cur: &mut String, out: &mut Vec<String>| {
        let item = cur.trim();
        let addr = match (item.find('<'), item.rfind('>')) {
            (Some(a), Some(b)) if a < b => item[a + 1..b].trim(),
            _ => item.rsplit(':').next().unwrap_or(item).trim(),
        };
        let addr = addr.trim_end_matches(';').trim();
        // An unbalanced bracket leaves no usable address: skip it rather than send garbage
        // to the daemon as RCPT.
        if addr.contains('@') && !addr.contains(['<', '>', ',']) {
            out.push(addr.to_owned());
        }
        cur.clear();
    };
    for c in list.chars() {
        match c {
            '"' if comment == 0 => quoted = !quoted,
            '(' if !quoted => comment += 1,
            ')' if !quoted && comment > 0 => {
                comment -= 1;
                continue;
            }
            '<' if !quoted && comment == 0 => angle = true,
            '>' if !quoted && comment == 0 => angle = false,
            ',' | ';' if !quoted && !angle && comment == 0 => {
                flush(&mut cur, &mut out);
                continue;
            }
            _ => {}
        }
        if comment == 0 {
            cur.push(c);
        }
    }
    flush(&mut cur, &mut out);
    out
}

/// Adds Date, Message-ID and From when missing, drops Bcc; returns the new message and the
/// recipients found in To/Cc/Bcc (for -t).
pub fn prepare(
    msg: &[u8],
    from: &str,
    full_name: Option<&str>,
    hostname: &str,
    now: SystemTime,
    unique: &str,
) -> (Vec<u8>, Vec<String>) {
    let (hdrs, body_at) = headers(msg);
    let has = |n: &str| hdrs.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    let mut rcpts = Vec::new();
    for (k, v) in &hdrs {
        if ["to", "cc", "bcc"]
            .iter()
            .any(|n| k.eq_ignore_ascii_case(n))
        {
            rcpts.extend(addresses(v));
        }
    }
    let mut out = Vec::with_capacity(msg.len() + 256);
    if !has("from") {
        match full_name {
            Some(n) => out.extend_from_slice(
                format!("From: \"{}\" <{from}>\r\n", n.replace('"', "")).as_bytes(),
            ),
            None => out.extend_from_slice(format!("From: {from}\r\n").as_bytes()),
        }
    }
    if !has("date") {
        out.extend_from_slice(format!("Date: {}\r\n", message::rfc5322_date(now)).as_bytes());
    }
    if !has("message-id") {
        out.extend_from_slice(format!("Message-ID: <{unique}@{hostname}>\r\n").as_bytes());
    }
    // Copy the header section without Bcc (and its continuation lines).
    let mut pos = 0;
    let mut skipping = false;
    while pos < body_at {
        let end = msg[pos..body_at]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|e| pos + e + 2)
            .unwrap_or(body_at);
        let line = &msg[pos..end];
        if !line.starts_with(b" ") && !line.starts_with(b"\t") {
            skipping = line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"bcc:");
        }
        if !skipping {
            out.extend_from_slice(line);
        }
        pos = end;
    }
    if body_at == 0 || !out.ends_with(b"\r\n\r\n") && !msg[..body_at].ends_with(b"\r\n\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(&msg[body_at..]);
    (out, rcpts)
}

fn daemon_addr(cfg: &Config) -> SocketAddr {
    let mut a = cfg
        .smtp
        .listen
        .first()
        .copied()
        .unwrap_or_else(|| "127.0.0.1:2525".parse().expect("literal"));
    if a.ip().is_unspecified() {
        a.set_ip(if a.is_ipv4() {
            [127, 0, 0, 1].into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    a
}

pub fn run(cfg: &Config, args: &[String]) -> ExitCode {
    let o = match parse_args(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("sendmail: {e}");
            return ExitCode::from(sysexits::USAGE);
        }
    };
    match o.mode {
        Mode::ListQueue => {
            return crate::queue_cmd::run(cfg, crate::cli::QueueAction::List, false);
        }
        Mode::Flush => {
            return crate::queue_cmd::run(
                cfg,
                crate::cli::QueueAction::Flush { domain: None },
                false,
            );
        }
        Mode::SmtpOnStdin => return smtp_on_stdio(cfg),
        Mode::Deliver => {}
    }
    if let Err(e) = check_arguments(&o) {
        eprintln!("sendmail: {e}; nothing was sent");
        return ExitCode::from(sysexits::USAGE);
    }
    // Who we are comes from our uid, not from $USER, which the caller sets at will (the
    // daemon decides from the uid anyway; this only makes the default From: right).
    let uid = nix::unistd::getuid();
    let user = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string());
    let sender = match o.sender.as_deref() {
        Some("<>") => String::new(),
        Some(s) => s.trim_start_matches('<').trim_end_matches('>').to_owned(),
        None => format!("{user}@{}", cfg.hostname),
    };
    let stdin = std::io::stdin();
    let msg = match read_message(&mut stdin.lock(), o.ignore_dots) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("sendmail: reading the message: {e}");
            return ExitCode::from(sysexits::NOINPUT);
        }
    };
    let unique = format!(
        "{}.{}",
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
        std::process::id()
    );
    let from_header = if sender.is_empty() {
        format!("{user}@{}", cfg.hostname)
    } else {
        sender.clone()
    };
    let (msg, header_rcpts) = prepare(
        &msg,
        &from_header,
        o.full_name.as_deref(),
        &cfg.hostname,
        SystemTime::now(),
        &unique,
    );
    let mut rcpts = o.recipients.clone();
    if o.extract_recipients {
        rcpts.extend(header_rcpts);
    }
    let rcpts: Vec<String> = rcpts
        .into_iter()
        .map(|r| {
            if r.contains('@') {
                r
            } else {
                format!("{r}@{}", cfg.hostname)
            }
        })
        .collect();
    if rcpts.is_empty() {
        eprintln!("sendmail: no recipients given");
        return ExitCode::from(sysexits::DATAERR);
    }
    if let Some(bad) = rcpts
        .iter()
        .find(|r| crate::pickup::check_address(r).is_err())
    {
        // Only header recipients (-t) get here: the arguments were checked above.
        eprintln!(
            "sendmail: recipient {bad:?} from the message's headers is not an address; nothing was sent"
        );
        return ExitCode::from(sysexits::DATAERR);
    }
    let socket = crate::submit::socket_path(&cfg.spool);
    let why_pickup = match submit_local(&socket, &sender, &rcpts, &msg) {
        Local::Reply(code, _) if (200..300).contains(&code) => return ExitCode::SUCCESS,
        Local::Reply(code, text) if code >= 500 => {
            eprintln!("sendmail: the daemon refused the message: {text}");
            return ExitCode::from(sysexits::DATAERR);
        }
        // Over the rate or short of disk: the pickup directory holds it until the daemon
        // can take it, which it does under the same policy.
        Local::Reply(_, text) => format!("the daemon said {text}"),
        Local::Down(e) => format!("the daemon is not running ({}: {e})", socket.display()),
        Local::Broken(e) => {
            eprintln!(
                "sendmail: lost the daemon at {} mid-submission: {e}",
                socket.display()
            );
            return ExitCode::from(sysexits::TEMPFAIL);
        }
    };
    match crate::pickup::write(&cfg.spool, &sender, &rcpts, &msg) {
        Ok(p) => {
            eprintln!("sendmail: {why_pickup}; mail left in {}", p.display());
            ExitCode::SUCCESS
        }
        Err(pe) => {
            eprintln!(
                "sendmail: {why_pickup}, and writing to the pickup directory failed: {pe}; nothing was written"
            );
            ExitCode::from(sysexits::TEMPFAIL)
        }
    }
}

/// Refuses `-f`, `-F` and recipient arguments that are not one field each: a CR or LF (or
/// any control character) would add envelope lines to a pickup file or header lines to
/// the message.
fn check_arguments(o: &Options) -> Result<(), String> {
    if let Some(f) = &o.sender {
        let bare = f.trim_start_matches('<').trim_end_matches('>');
        crate::pickup::check_address(bare).map_err(|_| {
            format!("the sender (-f) {f:?} is not an address (spaces, controls or line breaks)")
        })?;
    }
    if let Some(n) = &o.full_name
        && n.chars().any(char::is_control)
    {
        return Err(format!(
            "the full name (-F) {n:?} contains a line break or control character"
        ));
    }
    for r in &o.recipients {
        crate::pickup::check_address(r).map_err(|_| {
            format!("the recipient {r:?} is not an address (spaces, controls or line breaks)")
        })?;
    }
    Ok(())
}

/// How a submission over the local socket went.
enum Local {
    /// Nobody listening: the daemon is not running.
    Down(std::io::Error),
    /// The daemon's reply: code and the whole line.
    Reply(u16, String),
    /// The connection failed after the message was sent, so the daemon may or may not
    /// have it.
    Broken(String),
}

fn submit_local(path: &std::path::Path, sender: &str, rcpts: &[String], msg: &[u8]) -> Local {
    let mut s = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) => return Local::Down(e),
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(300)));
    let mut head = format!("{sender}\n");
    for r in rcpts {
        head.push_str(r);
        head.push('\n');
    }
    head.push('\n');
    // A write error is not the end: the daemon may have refused early (too big) and
    // closed, and its reply says why.
    let sent = s
        .write_all(head.as_bytes())
        .and_then(|()| s.write_all(msg))
        .and_then(|()| s.shutdown(std::net::Shutdown::Write));
    let mut reply = String::new();
    let read = std::io::BufReader::new(&s).read_line(&mut reply);
    let line = reply.trim_end().to_owned();
    match (line.get(..3).and_then(|c| c.parse::<u16>().ok()), read) {
        (Some(code), Ok(_)) => Local::Reply(code, line),
        (_, Err(e)) => Local::Broken(e.to_string()),
        (None, Ok(_)) => Local::Broken(match sent {
            Err(e) => e.to_string(),
            Ok(()) => format!("no reply (got {line:?})"),
        }),
    }
}

/// -bs: an SMTP session on standard input/output, relayed to the daemon.
fn smtp_on_stdio(cfg: &Config) -> ExitCode {
    let addr = daemon_addr(cfg);
    let s = match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sendmail: cannot reach the postrider daemon at {addr}: {e}");
            return ExitCode::from(sysexits::TEMPFAIL);
        }
    };
    let mut from_daemon = match s.try_clone() {
        Ok(c) => c,
        Err(_) => return ExitCode::from(sysexits::SOFTWARE),
    };
    let t = std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_daemon, &mut std::io::stdout());
    });
    let mut to_daemon = s;
    let _ = std::io::copy(&mut std::io::stdin(), &mut to_daemon);
    let _ = to_daemon.shutdown(std::net::Shutdown::Write);
    let _ = t.join();
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn options() {
        let o = parse_args(&s(&["-t", "-oi", "-fme@x.test", "-F", "Me", "a@b.test"])).unwrap();
        assert!(o.extract_recipients && o.ignore_dots);
        assert_eq!(o.sender.as_deref(), Some("me@x.test"));
        assert_eq!(o.full_name.as_deref(), Some("Me"));
        assert_eq!(o.recipients, ["a@b.test"]);
        assert_eq!(parse_args(&s(&["-bp"])).unwrap().mode, Mode::ListQueue);
        assert_eq!(parse_args(&s(&["-q"])).unwrap().mode, Mode::Flush);
        assert_eq!(parse_args(&s(&["-bs"])).unwrap().mode, Mode::SmtpOnStdin);
        assert!(parse_args(&s(&["-f"])).is_err());
        assert!(parse_args(&s(&["-Z"])).is_err());
    }

    #[test]
    fn arguments_with_line_breaks_are_refused() {
        let ok = parse_args(&s(&["-f", "<a@b.test>", "-F", "A B", "x@y.test"])).unwrap();
        assert!(check_arguments(&ok).is_ok());
        for (args, names) in [
            (
                &["-f", "a@b.test\r\nRCPT TO:<v@w.test>", "x@y.test"][..],
                "-f",
            ),
            (&["-fa@b.test\n", "x@y.test"], "-f"),
            (&["-F", "Me\r\nBcc: v@w.test", "x@y.test"], "-F"),
            (&["x@y.test\nv@w.test"], "recipient"),
            (&["x@y.test\0"], "recipient"),
            (&["x y@z.test"], "recipient"),
        ] {
            let o = parse_args(&s(args)).unwrap();
            let e = check_arguments(&o).unwrap_err();
            assert!(e.contains(names), "{args:?}: {e}");
        }
    }

    #[test]
    fn dots_and_line_ends() {
        let mut input: &[u8] = b"Subject: x\n\nline\n.\nafter\n";
        assert_eq!(
            read_message(&mut input, false).unwrap(),
            b"Subject: x\r\n\r\nline\r\n"
        );
        let mut input: &[u8] = b"Subject: x\n\n.\nafter";
        assert_eq!(
            read_message(&mut input, true).unwrap(),
            b"Subject: x\r\n\r\n.\r\nafter\r\n"
        );
    }

    #[test]
    fn address_lists() {
        assert_eq!(
            addresses(
                "a@x.test, \"Doe, J\" <j@x.test>, team: b@x.test, c@x.test; (comment, x) d@x.test"
            ),
            ["a@x.test", "j@x.test", "b@x.test", "c@x.test", "d@x.test"]
        );
    }

    #[test]
    fn prepare_adds_missing_headers_and_drops_bcc() {
        let (m, r) = prepare(
            b"To: a@x.test\r\nBcc: secret@x.test,\r\n other@x.test\r\nSubject: s\r\n\r\nbody\r\n",
            "me@h.test",
            None,
            "h.test",
            SystemTime::UNIX_EPOCH,
            "u1",
        );
        let t = String::from_utf8(m).unwrap();
        assert!(t.starts_with("From: me@h.test\r\nDate: Thu, 01 Jan 1970 00:00:00 +0000\r\nMessage-ID: <u1@h.test>\r\nTo: a@x.test\r\nSubject: s\r\n\r\nbody\r\n"), "{t}");
        assert_eq!(r, ["a@x.test", "secret@x.test", "other@x.test"]);
        let (m, _) = prepare(
            b"just a body line\r\n",
            "me@h.test",
            Some("Me"),
            "h.test",
            SystemTime::UNIX_EPOCH,
            "u2",
        );
        let t = String::from_utf8(m).unwrap();
        assert!(t.contains("From: \"Me\" <me@h.test>\r\n"));
        assert!(t.ends_with("\r\n\r\njust a body line\r\n"), "{t}");
    }

    proptest::proptest! {
        #[test]
        fn address_lists_never_panic_and_yield_addresses(list in "[ -~]{0,120}") {
            for a in addresses(&list) {
                proptest::prop_assert!(a.contains('@'), "{a:?} from {list:?}");
                proptest::prop_assert!(!a.contains(['<', '>', ',']), "{a:?}");
            }
        }

        #[test]
        fn prepared_messages_have_crlf_lines(body in "[ -~\n]{0,200}") {
            // As `run` does: line ends are made CRLF while reading, then headers are added.
            let raw = read_message(&mut body.as_bytes(), false).unwrap();
            let (m, _) = prepare(&raw, "me@h.test", None, "h.test", std::time::UNIX_EPOCH, "u");
            let t = String::from_utf8(m).unwrap();
            proptest::prop_assert!(!t.replace("\r\n", "").contains('\n'), "bare LF in {t:?}");
            proptest::prop_assert!(t.contains("Message-ID: <"));
        }
    }
}
