//! postrider's configuration: TOML, typed and validated at load time.
//!
//! The file is walked by hand over `toml`'s spanned document so that every error can name
//! the file, line, column and key, and so that all errors are reported in one pass rather
//! than one per run. Every key has an embedded default: an empty file (or no file) is a
//! working configuration.

pub mod route;
pub mod values;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

pub use route::{LmtpTarget, RoutePattern, RouteTable, RouteTarget, normalize_domain};
pub use values::{Cidr, MilterAddress, format_duration, parse_duration, parse_size};

/// The whole configuration, with defaults filled in.
#[derive(Debug, Clone)]
pub struct Config {
    /// The name this MTA gives itself in banners, EHLO and Received headers.
    pub hostname: String,
    pub spool: PathBuf,
    /// The spool log starts a new segment past this size.
    pub spool_segment_size: u64,
    /// More segments than this behind the oldest live message trigger compaction.
    pub spool_max_segments: usize,
    /// Unix user to switch to after binding (not yet used: run as the invoking user).
    pub user: Option<String>,
    pub smtp: Smtp,
    pub local: Local,
    pub routes: RouteTable,
    /// Per-destination TLS policy (`[tls_policy]`), overriding `delivery.tls`.
    pub tls_policy: RouteTable<TlsPolicy>,
    pub dns: Dns,
    pub delivery: Delivery,
    pub milters: Vec<Milter>,
    pub control: Control,
    pub log: Log,
}

/// Recipients one message may have: the spool numbers them with a u16 (queue ids `ID.XXXX`,
/// four hex digits), so more could not be told apart.
pub const MAX_RECIPIENTS: usize = 65_535;

#[derive(Debug, Clone)]
pub struct Smtp {
    pub listen: Vec<SocketAddr>,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub max_errors: u32,
    pub relay_networks: Vec<Cidr>,
    /// Clients not held to `max_connections_per_client`; `None`: the relay networks (like
    /// Postfix's smtpd_client_event_limit_exceptions = $mynetworks).
    pub connection_limit_exceptions: Option<Vec<Cidr>>,
    pub relay_domains: Vec<String>,
    pub banner: String,
    pub greeting_delay: Duration,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub max_hops: usize,
    /// Below this many free bytes in the spool's file system, MAIL gets 452 4.3.1.
    pub min_free_space: u64,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Local {
    pub domains: Vec<String>,
    pub lmtp: Option<LmtpTarget>,
    pub aliases: Option<PathBuf>,
    /// Known local users; empty with no `users_file` means "accept any local part".
    pub users: Vec<String>,
    pub users_file: Option<PathBuf>,
    /// Local users whose `sendmail -f` sets the envelope sender (the daemon's own user is
    /// always trusted); everyone else's mail is from `user@hostname`.
    pub trusted_users: Vec<String>,
    /// Local submissions (sendmail, pickup) each untrusted uid may make per minute; 0 is
    /// unlimited.
    pub max_submissions_per_minute: usize,
}

impl Default for Local {
    fn default() -> Self {
        Local {
            domains: Vec::new(),
            lmtp: None,
            aliases: None,
            users: Vec::new(),
            users_file: None,
            trusted_users: vec!["root".into()],
            max_submissions_per_minute: 60,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Dns {
    /// `None`: the system's resolv.conf.
    pub nameservers: Option<Vec<SocketAddr>>,
    pub timeout: Duration,
    pub attempts: usize,
}

/// STARTTLS for outbound mail, like Postfix's smtp_tls_security_level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy {
    /// Never.
    None,
    /// When offered, without checking the certificate ("may").
    Opportunistic,
    /// Always, without checking the certificate ("encrypt").
    Required,
    /// Always, with a certificate that chains to `delivery.tls_ca_file` and names the MX
    /// host ("verify").
    Verify,
}

impl TlsPolicy {
    fn parse(s: &str) -> Result<TlsPolicy, String> {
        match s {
            "none" => Ok(TlsPolicy::None),
            "opportunistic" | "may" => Ok(TlsPolicy::Opportunistic),
            "required" | "encrypt" => Ok(TlsPolicy::Required),
            "verify" | "secure" => Ok(TlsPolicy::Verify),
            _ => Err(format!(
                "'{s}' is not a TLS policy (none, may, encrypt, verify)"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Delivery {
    pub enabled: bool,
    pub concurrency: usize,
    pub port: u16,
    pub backoff: Vec<Duration>,
    pub max_queue_time: Duration,
    pub delay_warning: Option<Duration>,
    pub self_addresses: Vec<IpAddr>,
    pub implicit_mx: bool,
    pub ipv6: bool,
    pub srv: bool,
    pub helo: bool,
    pub transcript: bool,
    pub source_address: Option<IpAddr>,
    pub messages_per_connection: usize,
    pub connect_timeout: Duration,
    pub greeting_timeout: Duration,
    pub mail_timeout: Duration,
    pub rcpt_timeout: Duration,
    pub data_timeout: Duration,
    pub data_block_timeout: Duration,
    pub data_done_timeout: Duration,
    pub tls: TlsPolicy,
    /// CA certificates (PEM) for `verify`; default: the system bundle.
    pub tls_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MilterFailure {
    Tempfail,
    Accept,
    Reject,
}

#[derive(Debug, Clone)]
pub struct Milter {
    pub address: MilterAddress,
    pub on_failure: MilterFailure,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Control {
    /// Relative paths are relative to the spool directory.
    pub socket: PathBuf,
    pub metrics: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone)]
pub struct Log {
    pub format: LogFormat,
    pub level: String,
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty() && route::valid_hostname(s))
        .unwrap_or_else(|| "localhost".into())
}

impl Default for Config {
    fn default() -> Self {
        let secs = Duration::from_secs;
        Config {
            hostname: system_hostname(),
            spool: PathBuf::from("./postrider-spool"),
            spool_segment_size: 64 << 20,
            spool_max_segments: 8,
            user: None,
            smtp: Smtp {
                listen: vec![SocketAddr::from(([127, 0, 0, 1], 2525))],
                max_message_size: 50_000_000,
                max_recipients: 1000,
                max_connections: 1000,
                max_connections_per_client: 50,
                max_errors: 10,
                relay_networks: vec![
                    "127.0.0.0/8".parse().expect("literal"),
                    "::1/128".parse().expect("literal"),
                ],
                connection_limit_exceptions: None,
                relay_domains: Vec::new(),
                banner: "ESMTP postrider".into(),
                greeting_delay: Duration::ZERO,
                command_timeout: secs(300),
                data_timeout: secs(600),
                max_hops: 50,
                min_free_space: 100_000_000,
                tls_cert: None,
                tls_key: None,
            },
            local: Local::default(),
            routes: RouteTable::default(),
            tls_policy: RouteTable::default(),
            dns: Dns {
                nameservers: None,
                timeout: secs(5),
                attempts: 2,
            },
            delivery: Delivery {
                enabled: true,
                concurrency: 100,
                port: 25,
                backoff: ["1m", "5m", "30m", "1h", "2h", "4h", "8h", "16h", "24h"]
                    .iter()
                    .map(|s| parse_duration(s).expect("literal"))
                    .collect(),
                max_queue_time: secs(5 * 86400),
                delay_warning: None,
                self_addresses: Vec::new(),
                implicit_mx: true,
                ipv6: true,
                srv: false,
                helo: true,
                transcript: false,
                source_address: None,
                messages_per_connection: 100,
                // RFC 5321 §4.5.3.2 minimums.
                connect_timeout: secs(30),
                greeting_timeout: secs(300),
                mail_timeout: secs(300),
                rcpt_timeout: secs(300),
                data_timeout: secs(120),
                data_block_timeout: secs(180),
                data_done_timeout: secs(600),
                tls: TlsPolicy::Opportunistic,
                tls_ca_file: None,
            },
            milters: Vec::new(),
            control: Control {
                socket: PathBuf::from("control.sock"),
                metrics: None,
            },
            log: Log {
                format: LogFormat::Human,
                level: "info".into(),
            },
        }
    }
}

/// One problem in a configuration file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Dotted key path, e.g. `smtp.listen`; empty for syntax errors.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        } else {
            write!(
                f,
                "{}:{}:{}: key '{}': {}",
                self.file, self.line, self.column, self.key, self.message
            )
        }
    }
}

/// Every problem found in one file, one per line when displayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.0 {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Smtp {
    /// The networks exempt from the per-client connection limit.
    pub fn connection_limit_exceptions(&self) -> &[Cidr] {
        self.connection_limit_exceptions
            .as_deref()
            .unwrap_or(&self.relay_networks)
    }
}

impl Config {
    /// Where to read the configuration from: `-c FILE`, else `$POSTRIDER_CONFIG`, else
    /// `/etc/postrider/postrider.toml` if it exists, else nothing (embedded defaults).
    pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
        if let Some(p) = explicit {
            return Some(p.to_path_buf());
        }
        if let Some(p) = std::env::var_os("POSTRIDER_CONFIG").filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(p));
        }
        let etc = Path::new("/etc/postrider/postrider.toml");
        etc.exists().then(|| etc.to_path_buf())
    }

    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: file.clone(),
                line: 0,
                column: 0,
                key: String::new(),
                message: format!("cannot read: {e}"),
            }])
        })?;
        Config::parse(&text, &file)
    }

    /// Parses `text` (named `file` in errors), collecting every error.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigErrors> {
        let mut w = Walker {
            text,
            file,
            errors: Vec::new(),
        };
        let doc = match DeTable::parse(text) {
            Ok(d) => d,
            Err(e) => {
                let at = e.span().map(|s| s.start).unwrap_or(0);
                w.error_at(at, "", &format!("TOML syntax: {}", e.message().trim()));
                return Err(ConfigErrors(w.errors));
            }
        };
        let mut cfg = Config::default();
        w.config(doc.get_ref(), &mut cfg);
        w.cross_checks(&cfg, doc.get_ref());
        if w.errors.is_empty() {
            Ok(cfg)
        } else {
            w.errors.sort_by_key(|e| (e.line, e.column));
            Err(ConfigErrors(w.errors))
        }
    }

    /// The control socket's path (relative paths are under the spool).
    pub fn control_socket(&self) -> PathBuf {
        self.spool.join(&self.control.socket)
    }
}

type V<'i> = Spanned<DeValue<'i>>;

struct Walker<'a> {
    text: &'a str,
    file: &'a str,
    errors: Vec<ConfigError>,
}

const TOP: &[&str] = &[
    "hostname",
    "spool",
    "spool_segment_size",
    "spool_max_segments",
    "user",
    "smtp",
    "local",
    "routes",
    "tls_policy",
    "dns",
    "delivery",
    "milter",
    "control",
    "log",
];
const SMTP: &[&str] = &[
    "listen",
    "max_message_size",
    "max_recipients",
    "max_connections",
    "max_connections_per_client",
    "max_errors",
    "relay_networks",
    "connection_limit_exceptions",
    "relay_domains",
    "banner",
    "greeting_delay",
    "command_timeout",
    "data_timeout",
    "max_hops",
    "min_free_space",
    "tls_cert",
    "tls_key",
];
const LOCAL: &[&str] = &[
    "domains",
    "lmtp",
    "aliases",
    "users",
    "users_file",
    "trusted_users",
    "max_submissions_per_minute",
];
const DNS: &[&str] = &["nameservers", "timeout", "attempts"];
const DELIVERY: &[&str] = &[
    "enabled",
    "concurrency",
    "port",
    "backoff",
    "max_queue_time",
    "delay_warning",
    "self_addresses",
    "implicit_mx",
    "ipv6",
    "srv",
    "helo",
    "transcript",
    "source_address",
    "messages_per_connection",
    "connect_timeout",
    "greeting_timeout",
    "mail_timeout",
    "rcpt_timeout",
    "data_timeout",
    "data_block_timeout",
    "data_done_timeout",
    "tls",
    "tls_ca_file",
];
const MILTER: &[&str] = &["address", "on_failure", "timeout"];
const CONTROL: &[&str] = &["socket", "metrics"];
const LOG: &[&str] = &["format", "level"];

/// Edit distance, for "did you mean" on unknown keys.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

impl Walker<'_> {
    fn error_at(&mut self, offset: usize, key: &str, message: &str) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = offset - before.rfind('\n').map(|p| p + 1).unwrap_or(0) + 1;
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line,
            column,
            key: key.to_string(),
            message: message.to_string(),
        });
    }

    fn error(&mut self, v: &V<'_>, key: &str, message: &str) {
        self.error_at(v.span().start, key, message);
    }

    /// Reports keys of `t` not in `known`, and returns the entries for the caller to walk.
    fn check_keys(&mut self, t: &DeTable<'_>, prefix: &str, known: &[&str]) {
        for (k, _) in t.iter() {
            let name: &str = k.get_ref();
            if known.contains(&name) {
                continue;
            }
            let best = known
                .iter()
                .map(|c| (distance(name, c), *c))
                .min()
                .filter(|(d, _)| *d <= 3);
            let msg = match best {
                Some((_, c)) => format!("unknown key (did you mean '{c}'?)"),
                None => format!("unknown key (known here: {})", known.join(", ")),
            };
            self.error_at(k.span().start, &join(prefix, name), &msg);
        }
    }

    fn table<'t, 'i>(&mut self, v: &'t V<'i>, key: &str) -> Option<&'t DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            other => {
                self.error(
                    v,
                    key,
                    &format!("expected a table, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn string<'t>(&mut self, v: &'t V<'_>, key: &str) -> Option<&'t str> {
        match v.get_ref() {
            DeValue::String(s) => Some(s),
            other => {
                self.error(
                    v,
                    key,
                    &format!("expected a string, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn boolean(&mut self, v: &V<'_>, key: &str) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                self.error(
                    v,
                    key,
                    &format!("expected true or false, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn integer(&mut self, v: &V<'_>, key: &str, min: u64, max: u64) -> Option<u64> {
        match v.get_ref() {
            DeValue::Integer(i) => {
                let parsed = u64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
                    .ok()
                    .filter(|n| (min..=max).contains(n));
                if parsed.is_none() {
                    self.error(v, key, &format!("must be an integer from {min} to {max}"));
                }
                parsed
            }
            other => {
                self.error(
                    v,
                    key,
                    &format!("expected an integer, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// A string converted by `f`; the error from `f` is reported at the value.
    fn parsed<T>(
        &mut self,
        v: &V<'_>,
        key: &str,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let s = self.string(v, key)?;
        match f(s) {
            Ok(x) => Some(x),
            Err(e) => {
                self.error(v, key, &e);
                None
            }
        }
    }

    fn duration(&mut self, v: &V<'_>, key: &str) -> Option<Duration> {
        self.parsed(v, key, parse_duration)
    }

    /// Sizes may be written as a string with a unit or as a bare integer of bytes.
    fn size(&mut self, v: &V<'_>, key: &str) -> Option<u64> {
        match v.get_ref() {
            DeValue::Integer(_) => self.integer(v, key, 0, u64::MAX),
            DeValue::String(_) => self.parsed(v, key, parse_size),
            other => {
                let msg = format!(
                    "expected a size such as \"50MB\" or a number of bytes, found {}",
                    other.type_str()
                );
                self.error(v, key, &msg);
                None
            }
        }
    }

    fn list<T>(
        &mut self,
        v: &V<'_>,
        key: &str,
        mut f: impl FnMut(&mut Self, &V<'_>) -> Option<T>,
    ) -> Option<Vec<T>> {
        let DeValue::Array(a) = v.get_ref() else {
            self.error(
                v,
                key,
                &format!("expected an array, found {}", v.get_ref().type_str()),
            );
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for item in a.iter() {
            match f(self, item) {
                Some(x) => out.push(x),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn strings(&mut self, v: &V<'_>, key: &str) -> Option<Vec<String>> {
        self.list(v, key, |w, i| w.string(i, key).map(str::to_string))
    }

    fn domains(&mut self, v: &V<'_>, key: &str) -> Option<Vec<String>> {
        self.list(v, key, |w, i| {
            w.parsed(i, key, |s| {
                let d = route::normalize_domain(s);
                if route::valid_hostname(&d) {
                    Ok(d)
                } else {
                    Err(format!("'{s}' is not a valid domain name"))
                }
            })
        })
    }

    fn socket_addrs(&mut self, v: &V<'_>, key: &str) -> Option<Vec<SocketAddr>> {
        self.list(v, key, |w, i| w.parsed(i, key, values::parse_socket_addr))
    }

    fn ip(&mut self, v: &V<'_>, key: &str) -> Option<IpAddr> {
        self.parsed(v, key, |s| {
            s.parse::<IpAddr>()
                .map_err(|_| format!("'{s}' is not an IP address"))
        })
    }

    fn path(&mut self, v: &V<'_>, key: &str) -> Option<PathBuf> {
        self.parsed(v, key, |s| {
            if s.is_empty() {
                Err("empty path".into())
            } else {
                Ok(PathBuf::from(s))
            }
        })
    }

    fn config(&mut self, doc: &DeTable<'_>, cfg: &mut Config) {
        self.check_keys(doc, "", TOP);
        for (k, v) in doc.iter() {
            let key: &str = k.get_ref();
            match key {
                "hostname" => {
                    if let Some(h) = self.parsed(v, key, |s| {
                        let h = s.trim_end_matches('.').to_ascii_lowercase();
                        if route::valid_hostname(&h) {
                            Ok(h)
                        } else {
                            Err(format!("'{s}' is not a valid host name"))
                        }
                    }) {
                        cfg.hostname = h;
                    }
                }
                "spool" => set(&mut cfg.spool, self.path(v, key)),
                "spool_segment_size" => set(&mut cfg.spool_segment_size, self.size(v, key)),
                "spool_max_segments" => set(
                    &mut cfg.spool_max_segments,
                    self.integer(v, key, 2, 10_000).map(|n| n as usize),
                ),
                "user" => cfg.user = self.string(v, key).map(str::to_string),
                "smtp" => {
                    if let Some(t) = self.table(v, key) {
                        self.smtp(t, &mut cfg.smtp);
                    }
                }
                "local" => {
                    if let Some(t) = self.table(v, key) {
                        self.local(t, &mut cfg.local);
                    }
                }
                "routes" => {
                    if let Some(t) = self.table(v, key) {
                        cfg.routes = self.routes(t);
                    }
                }
                "tls_policy" => {
                    if let Some(t) = self.table(v, key) {
                        cfg.tls_policy = self.tls_policies(t);
                    }
                }
                "dns" => {
                    if let Some(t) = self.table(v, key) {
                        self.dns(t, &mut cfg.dns);
                    }
                }
                "delivery" => {
                    if let Some(t) = self.table(v, key) {
                        self.delivery(t, &mut cfg.delivery);
                    }
                }
                "milter" => {
                    if let Some(list) = self.list(v, key, |w, i| {
                        let t = w.table(i, "milter")?;
                        w.milter(i, t)
                    }) {
                        cfg.milters = list;
                    }
                }
                "control" => {
                    if let Some(t) = self.table(v, key) {
                        self.control(t, &mut cfg.control);
                    }
                }
                "log" => {
                    if let Some(t) = self.table(v, key) {
                        self.log(t, &mut cfg.log);
                    }
                }
                _ => {}
            }
        }
    }

    fn smtp(&mut self, t: &DeTable<'_>, s: &mut Smtp) {
        self.check_keys(t, "smtp", SMTP);
        for (k, v) in t.iter() {
            let name: &str = k.get_ref();
            let key = &join("smtp", name);
            match name {
                "listen" => {
                    let l = self.socket_addrs(v, key);
                    if l.as_ref().is_some_and(Vec::is_empty) {
                        self.error(v, key, "at least one address is needed");
                    } else {
                        set(&mut s.listen, l);
                    }
                }
                "max_message_size" => set(&mut s.max_message_size, self.size(v, key)),
                "max_recipients" => set(
                    &mut s.max_recipients,
                    self.integer(v, key, 1, MAX_RECIPIENTS as u64)
                        .map(|n| n as usize),
                ),
                "max_connections" => set(&mut s.max_connections, self.usize(v, key, 1)),
                "max_connections_per_client" => {
                    set(&mut s.max_connections_per_client, self.usize(v, key, 1))
                }
                "max_errors" => {
                    set(
                        &mut s.max_errors,
                        self.integer(v, key, 1, 1000).map(|n| n as u32),
                    );
                }
                "relay_networks" => set(
                    &mut s.relay_networks,
                    self.list(v, key, |w, i| w.parsed(i, key, |x| x.parse::<Cidr>())),
                ),
                "connection_limit_exceptions" => {
                    if let Some(l) =
                        self.list(v, key, |w, i| w.parsed(i, key, |x| x.parse::<Cidr>()))
                    {
                        s.connection_limit_exceptions = Some(l);
                    }
                }
                "relay_domains" => set(&mut s.relay_domains, self.domains(v, key)),
                "banner" => set(&mut s.banner, self.string(v, key).map(str::to_string)),
                "greeting_delay" => set(&mut s.greeting_delay, self.duration(v, key)),
                "command_timeout" => set(&mut s.command_timeout, self.duration(v, key)),
                "data_timeout" => set(&mut s.data_timeout, self.duration(v, key)),
                "max_hops" => set(&mut s.max_hops, self.usize(v, key, 1)),
                "min_free_space" => set(&mut s.min_free_space, self.size(v, key)),
                "tls_cert" => s.tls_cert = self.path(v, key),
                "tls_key" => s.tls_key = self.path(v, key),
                _ => {}
            }
        }
    }

    fn usize(&mut self, v: &V<'_>, key: &str, min: u64) -> Option<usize> {
        self.integer(v, key, min, 1_000_000_000).map(|n| n as usize)
    }

    fn local(&mut self, t: &DeTable<'_>, l: &mut Local) {
        self.check_keys(t, "local", LOCAL);
        for (k, v) in t.iter() {
            let name: &str = k.get_ref();
            let key = &join("local", name);
            match name {
                "domains" => set(&mut l.domains, self.domains(v, key)),
                "lmtp" => l.lmtp = self.parsed(v, key, parse_lmtp),
                "aliases" => l.aliases = self.path(v, key),
                "users" => set(&mut l.users, self.strings(v, key)),
                "users_file" => l.users_file = self.path(v, key),
                "trusted_users" => set(&mut l.trusted_users, self.strings(v, key)),
                "max_submissions_per_minute" => {
                    set(&mut l.max_submissions_per_minute, self.usize(v, key, 0))
                }
                _ => {}
            }
        }
    }

    fn routes(&mut self, t: &DeTable<'_>) -> RouteTable {
        let mut entries = Vec::new();
        for (k, v) in t.iter() {
            let name: &str = k.get_ref();
            let key = format!("routes.\"{name}\"");
            let pattern = match name.parse::<RoutePattern>() {
                Ok(p) => Some(p),
                Err(e) => {
                    self.error_at(k.span().start, &key, &e.to_string());
                    None
                }
            };
            let target = self.parsed(v, &key, |s| {
                s.parse::<RouteTarget>().map_err(|e| {
                    format!("{e} (expected [ip]:port, host:port, host, mx:domain or lmtp:...)")
                })
            });
            if let (Some(p), Some(t)) = (pattern, target) {
                entries.push((p, t));
            }
        }
        RouteTable::new(entries)
    }

    fn tls_policies(&mut self, t: &DeTable<'_>) -> RouteTable<TlsPolicy> {
        let mut entries = Vec::new();
        for (k, v) in t.iter() {
            let name: &str = k.get_ref();
            let key = format!("tls_policy.\"{name}\"");
            let pattern = match name.parse::<RoutePattern>() {
                Ok(p) => Some(p),
                Err(e) => {
                    self.error_at(k.span().start, &key, &e.to_string());
                    None
                }
            };
            let policy = self.parsed(v, &key, TlsPolicy::parse);
            if let (Some(p), Some(t)) = (pattern, policy) {
                entries.push((p, t));
            }
        }
        RouteTable::new(entries)
    }

    fn dns(&mut self, t: &DeTable<'_>, d: &mut Dns) {
        self.check_keys(t, "dns", DNS);
        for (k, v) in t.iter() {
            let name: &str = k.get_ref();
            let key = &join("dns", name);
            match name {
                "nameservers" => {
                    // A bare IP means port 53.
                    d.nameservers = self.list(v, key, |w, i| {
                        w.parsed(i, key, |s| {
                            s.parse::<IpAddr>()
                                .map(|ip| SocketAddr::new(ip, 53))
                                .or_else(|_| values::parse_socket_addr(s))
                        })
                    });
                }
                "timeout" => set(&mut d.timeout, self.duration(v, key)),
                "attempts" => set(&mut d.attempts, self.usize(v, key, 1)),
                _ => {}
            }
        }
    }

    fn delivery(&mut self, t: &DeTable<'_>, d: &mut Delivery) {
        self.check_keys(t, "delivery", DELIVERY);
        for (k, v) in t.iter() {
            let name: &str = k.get_ref();
            let key = &join("delivery", name);
            match name {
                "enabled" => set(&mut d.enabled, self.boolean(v, key)),
                "concurrency" => set(&mut d.concurrency, self.usize(v, key, 1)),
                "port" => set(
                    &mut d.port,
                    self.integer(v, key, 1, 65535).map(|p| p as u16),
                ),
                "backoff" => {
                    let b = self.list(v, key, |w, i| w.duration(i, key));
                    if b.as_ref().is_some_and(Vec::is_empty) {
                        self.error(v, key, "the retry schedule needs at least one step");
                    } else {
                        set(&mut d.backoff, b);
                    }
                }
                "max_queue_time" => set(&mut d.max_queue_time, self.duration(v, key)),
                "delay_warning" => {
                    // "0s" turns delay warnings off.
                    d.delay_warning = self.duration(v, key).filter(|x| !x.is_zero());
                }
                "self_addresses" => set(
                    &mut d.self_addresses,
                    self.list(v, key, |w, i| w.ip(i, key)),
                ),
                "implicit_mx" => set(&mut d.implicit_mx, self.boolean(v, key)),
                "ipv6" => set(&mut d.ipv6, self.boolean(v, key)),
                "srv" => set(&mut d.srv, self.boolean(v, key)),
                "helo" => set(&mut d.helo, self.boolean(v, key)),
                "transcript" => set(&mut d.transcript, self.boolean(v, key)),
                "source_address" => d.source_address = self.ip(v, key),
                "messages_per_connection" => {
                    set(&mut d.messages_per_connection, self.usize(v, key, 1))
                }
                "connect_timeout" => set(&mut d.connect_timeout, self.duration(v, key)),
                "greeting_timeout" => set(&mut d.greeting_timeout, self.duration(v, key)),
                "mail_timeout" => set(&mut d.mail_timeout, self.duration(v, key)),
                "rcpt_timeout" => set(&mut d.rcpt_timeout, self.duration(v, key)),
                "data_timeout" => set(&mut d.data_timeout, self.duration(v, key)),
                "data_block_timeout" => set(&mut d.data_block_timeout, self.duration(v, key)),
                "data_done_timeout" => set(&mut d.data_done_timeout, self.duration(v, key)),
                "tls" => set(&mut d.tls, self.parsed(v, key, TlsPolicy::parse)),
                "tls_ca_file" => d.tls_ca_file = self.path(v, key),
                _ => {}
            }
        }
    }

    fn milter(&mut self, at: &V<'_>, t: &DeTable<'_>) -> Option<Milter> {
        self.check_keys(t, "milter", MILTER);
        let mut address = None;
        let mut m = Milter {
            address: MilterAddress::Unix(PathBuf::new()),
            on_failure: MilterFailure::Tempfail,
            timeout: Duration::from_secs(30),
        };
        let mut ok = true;
        for (k, v) in t.iter() {
            let name: &str = k.get_ref();
            let key = &join("milter", name);
            match name {
                "address" => {
                    address = self.parsed(v, key, |s| s.parse::<MilterAddress>());
                    ok &= address.is_some();
                }
                "on_failure" => {
                    let f = self.parsed(v, key, |s| match s {
                        "tempfail" => Ok(MilterFailure::Tempfail),
                        "accept" => Ok(MilterFailure::Accept),
                        "reject" => Ok(MilterFailure::Reject),
                        _ => Err(format!("'{s}' is not one of tempfail, accept, reject")),
                    });
                    ok &= f.is_some();
                    set(&mut m.on_failure, f);
                }
                "timeout" => {
                    let d = self.duration(v, key);
                    ok &= d.is_some();
                    set(&mut m.timeout, d);
                }
                _ => {}
            }
        }
        match address {
            Some(a) if ok => {
                m.address = a;
                Some(m)
            }
            Some(_) => None,
            None => {
                if ok {
                    self.error(at, "milter.address", "every [[milter]] needs an address");
                }
                None
            }
        }
    }

    fn control(&mut self, t: &DeTable<'_>, c: &mut Control) {
        self.check_keys(t, "control", CONTROL);
        for (k, v) in t.iter() {
            let name: &str = k.get_ref();
            let key = &join("control", name);
            match name {
                "socket" => set(&mut c.socket, self.path(v, key)),
                "metrics" => c.metrics = self.parsed(v, key, values::parse_socket_addr),
                _ => {}
            }
        }
    }

    fn log(&mut self, t: &DeTable<'_>, l: &mut Log) {
        self.check_keys(t, "log", LOG);
        for (k, v) in t.iter() {
            let name: &str = k.get_ref();
            let key = &join("log", name);
            match name {
                "format" => set(
                    &mut l.format,
                    self.parsed(v, key, |s| match s {
                        "human" | "text" => Ok(LogFormat::Human),
                        "json" => Ok(LogFormat::Json),
                        _ => Err(format!("'{s}' is not a log format (human, json)")),
                    }),
                ),
                "level" => set(
                    &mut l.level,
                    self.parsed(v, key, |s| match s {
                        "error" | "warn" | "info" | "debug" | "trace" => Ok(s.to_string()),
                        _ => Err(format!(
                            "'{s}' is not a log level (error, warn, info, debug, trace)"
                        )),
                    }),
                ),
                _ => {}
            }
        }
    }

    /// Checks that need more than one key.
    fn cross_checks(&mut self, cfg: &Config, doc: &DeTable<'_>) {
        let smtp = doc.get("smtp");
        if cfg.smtp.tls_cert.is_some() != cfg.smtp.tls_key.is_some() {
            let at = smtp.map(|v| v.span().start).unwrap_or(0);
            self.error_at(
                at,
                "smtp.tls_cert",
                "tls_cert and tls_key must be given together",
            );
        }
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

/// `127.0.0.1:24`, `[::1]:24`, `host:24`, `unix:/path`.
fn parse_lmtp(s: &str) -> Result<LmtpTarget, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(LmtpTarget::Inet(a));
    }
    match format!("lmtp:{s}").parse::<RouteTarget>() {
        Ok(RouteTarget::Lmtp(t)) => Ok(t),
        Ok(_) => Err(format!("'{s}' is not an LMTP address")),
        Err(e) => Err(format!("{e} (expected ip:port, host:port or unix:/path)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_recipients_fits_a_recipient_index() {
        let c = Config::parse("[smtp]\nmax_recipients = 65535\n", "m.toml").unwrap();
        assert_eq!(c.smtp.max_recipients, MAX_RECIPIENTS);
        let errs = Config::parse("[smtp]\n\nmax_recipients = 65536\n", "m.toml").unwrap_err();
        let e = errs.to_string();
        assert!(e.contains("m.toml:3:"), "{e}");
        assert!(
            e.contains("smtp.max_recipients") && e.contains("65535"),
            "{e}"
        );
    }

    #[test]
    fn empty_file_is_defaults() {
        let c = Config::parse("", "t.toml").unwrap();
        assert_eq!(c.smtp.listen, vec!["127.0.0.1:2525".parse().unwrap()]);
        assert_eq!(c.smtp.max_message_size, 50_000_000);
        assert_eq!(c.delivery.backoff.len(), 9);
        assert!(c.smtp.relay_networks[0].contains("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn design_example_parses() {
        let text = r#"
hostname = "mx.example.org"
spool = "/var/spool/postrider"

[smtp]
listen = ["127.0.0.1:2525"]
max_message_size = "50MB"
relay_networks = ["127.0.0.0/8"]
relay_domains = []

[local]
domains = ["example.org"]
lmtp = "127.0.0.1:24"
aliases = "/etc/postrider/aliases"

[routes]
"example.com" = "[127.0.0.1]:2526"
".example.com" = "relay.example.net:2525"
"*" = "[192.0.2.1]:25"

[dns]
nameservers = ["127.0.0.1:53"]

[delivery]
concurrency = 100
port = 25
backoff = ["1m","5m","30m","1h","2h","4h","8h","16h","24h"]
max_queue_time = "5d"
self_addresses = []
implicit_mx = true
ipv6 = true
srv = false
helo = true
transcript = false

[[milter]]
address = "inet:127.0.0.1:8891"
on_failure = "tempfail"

[control]
metrics = "127.0.0.1:9525"
"#;
        let c = Config::parse(text, "t.toml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.hostname, "mx.example.org");
        assert_eq!(
            c.local.lmtp,
            Some(LmtpTarget::Inet("127.0.0.1:24".parse().unwrap()))
        );
        assert_eq!(c.routes.entries().len(), 3);
        assert_eq!(
            c.routes.lookup("a.example.com"),
            Some(&RouteTarget::Host {
                host: "relay.example.net".into(),
                port: Some(2525)
            })
        );
        assert_eq!(c.milters.len(), 1);
        assert_eq!(c.delivery.max_queue_time, Duration::from_secs(432_000));
        assert_eq!(c.control.metrics, Some("127.0.0.1:9525".parse().unwrap()));
    }

    #[test]
    fn every_error_is_reported_with_line_and_key() {
        let text = "hostname = \"mx.test\"\n\
                    [smtp]\n\
                    max_message_size = true\n\
                    listne = [\"127.0.0.1:25\"]\n\
                    command_timeout = \"5 minutes\"\n\
                    relay_networks = [\"10.0.0.0/33\"]\n\
                    [delivery]\n\
                    port = 70000\n";
        let errs = Config::parse(text, "bad.toml").unwrap_err();
        let lines: Vec<String> = errs.0.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 5, "{errs}");
        assert!(lines[0].starts_with("bad.toml:3:"), "{}", lines[0]);
        assert!(lines[0].contains("smtp.max_message_size") && lines[0].contains("boolean"));
        assert!(lines[1].starts_with("bad.toml:4:") && lines[1].contains("did you mean 'listen'"));
        assert!(lines[2].starts_with("bad.toml:5:") && lines[2].contains("smtp.command_timeout"));
        assert!(lines[3].starts_with("bad.toml:6:") && lines[3].contains("/33"));
        assert!(lines[4].starts_with("bad.toml:8:") && lines[4].contains("delivery.port"));
    }

    #[test]
    fn connection_limit_exceptions_default_to_the_relay_networks() {
        let c = Config::parse("[smtp]\nrelay_networks = [\"192.0.2.0/24\"]\n", "t.toml").unwrap();
        let ex = c.smtp.connection_limit_exceptions();
        assert!(ex.len() == 1 && ex[0].contains("192.0.2.9".parse().unwrap()));
        let c = Config::parse(
            "[smtp]\nrelay_networks = [\"192.0.2.0/24\"]\nconnection_limit_exceptions = []\n",
            "t.toml",
        )
        .unwrap();
        assert!(c.smtp.connection_limit_exceptions().is_empty());
        let errs = Config::parse(
            "[smtp]\nconnection_limit_exceptions = [\"10.0.0.0/40\"]\n",
            "bad.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            errs.starts_with("bad.toml:2:") && errs.contains("smtp.connection_limit_exceptions"),
            "{errs}"
        );
    }

    #[test]
    fn syntax_error_is_located() {
        let errs = Config::parse("[smtp]\nlisten = [\n", "s.toml").unwrap_err();
        assert_eq!(errs.0.len(), 1);
        assert!(errs.0[0].line >= 2, "{errs}");
    }

    #[test]
    fn route_errors_name_the_route() {
        let errs =
            Config::parse("[routes]\n\"x.test\" = \"[300.1.1.1]:25\"\n", "r.toml").unwrap_err();
        assert!(errs.to_string().contains("r.toml:2:"), "{errs}");
        assert!(errs.to_string().contains("routes.\"x.test\""), "{errs}");
    }

    #[test]
    fn local_submission_keys() {
        let c = Config::parse("", "t.toml").unwrap();
        assert_eq!(c.local.trusted_users, ["root"]);
        assert_eq!(c.local.max_submissions_per_minute, 60);
        let c = Config::parse(
            "[local]\ntrusted_users = [\"root\", \"list\"]\nmax_submissions_per_minute = 0\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.local.trusted_users, ["root", "list"]);
        assert_eq!(c.local.max_submissions_per_minute, 0);
        let errs = Config::parse(
            "[local]\ntrusted_users = \"root\"\nmax_submissions_per_minute = -1\n",
            "l.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            errs.contains("l.toml:2:") && errs.contains("local.trusted_users"),
            "{errs}"
        );
        assert!(
            errs.contains("l.toml:3:") && errs.contains("local.max_submissions_per_minute"),
            "{errs}"
        );
    }

    #[test]
    fn example_file_is_valid() {
        let text = include_str!("../postrider.example.toml");
        Config::parse(text, "postrider.example.toml").unwrap_or_else(|e| panic!("{e}"));
    }
}
