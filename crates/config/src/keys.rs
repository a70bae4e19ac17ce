//! Every configuration key, once: its section, name, field type, kind, default (as the TOML
//! text an administrator would write) and one-line doc.
//!
//! The `keys!` table below declares the settings structs themselves, so a key is one row:
//! the struct field, the parser's list of known keys and its match arm, `Default`, the rows
//! of [`KEYS`] that the example file is checked against and [`reference_markdown`] renders
//! all come from it. Defaults are TOML text read by the key's own parser, so a default is
//! always something the parser accepts and the example file can show it verbatim.
//!
//! Its length is the table itself: one row per key, nothing else to split.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use toml::de::DeTable;

use crate::kinds::*;
use crate::parse::{join, parse_value};
use crate::route::{LmtpTarget, RouteTable};
use crate::values::{Cidr, MilterAddress};
use crate::walker::Walker;
use crate::{LogFormat, MilterFailure, TlsPolicy};

/// One row of the key table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyDef {
    /// `""` for the top level, else the table's name (`"milter"` for `[[milter]]`).
    pub section: &'static str,
    pub name: &'static str,
    pub kind: ValueKind,
    /// The default as TOML text; `None`: unset unless the file sets it.
    pub default: Option<&'static str>,
    /// One line, as the example file and the reference show it.
    pub doc: &'static str,
}

impl KeyDef {
    /// `smtp.listen`, or `hostname` at the top level.
    pub fn path(&self) -> String {
        join(self.section, self.name)
    }
}

/// `Some(text)` for a row that gives a default, `None` for one that does not.
macro_rules! default_text {
    () => {
        None
    };
    ($text:literal) => {
        Some($text)
    };
}

/// Declares the settings structs from their rows; see the module documentation.
macro_rules! keys {
    ($(
        $(#[$smeta:meta])*
        pub struct $S:ident in $section:literal {
            $(
                $(#[$fmeta:meta])*
                $field:ident: $ty:ty as $kind:ty $(= $default:literal)?, $doc:literal;
            )*
        }
        $(and {
            $($(#[$emeta:meta])* $efield:ident: $ety:ty = $einit:expr;)*
        })?
    )*) => {
        $(
            $(#[$smeta])*
            #[derive(Debug, Clone)]
            pub struct $S {
                $(
                    #[doc = $doc]
                    $(#[$fmeta])*
                    pub $field: $ty,
                )*
                $($($(#[$emeta])* pub $efield: $ety,)*)?
            }

            impl $S {
                /// This section's keys, in table order (the order "known here" lists them).
                pub(crate) const NAMES: &[&str] = &[$(stringify!($field)),*];

                /// Every key at its table default.
                pub(crate) fn defaults() -> Self {
                    $S {
                        $($field: default_of::<$kind>(
                            default_text!($($default)?),
                            $section,
                            stringify!($field),
                        ),)*
                        $($($efield: $einit,)*)?
                    }
                }

                /// Reads the keys of `t` this section knows into `self`, reporting any
                /// problem through `w`; false if any key was refused.
                pub(crate) fn apply(&mut self, w: &mut Walker<'_>, t: &DeTable<'_>) -> bool {
                    let mut ok = true;
                    for (k, v) in t.iter() {
                        let name: &str = k.get_ref();
                        match name {
                            $(stringify!($field) => {
                                let key = join($section, name);
                                match <$kind as Kind>::read(w, v, &key) {
                                    Some(x) => self.$field = x,
                                    None => ok = false,
                                }
                            })*
                            _ => {}
                        }
                    }
                    ok
                }
            }
        )*

        /// Every key, section by section in the order of the example file.
        pub static KEYS: &[KeyDef] = &[$($(
            KeyDef {
                section: $section,
                name: stringify!($field),
                kind: <$kind as Kind>::KIND,
                default: default_text!($($default)?),
                doc: $doc,
            },
        )*)*];
    };
}

/// The value a row's default text reads as, or the kind's value for "unset".
fn default_of<K: Kind>(text: Option<&str>, section: &str, name: &str) -> K::Value {
    let value = match text {
        Some(t) => parse_value::<K>(t, &join(section, name)).ok(),
        None => K::absent(),
    };
    // Every row is read by `Config::default()`, which every test run calls: a default the
    // parser refuses cannot survive to a release.
    value.unwrap_or_else(|| panic!("the default of {} is not valid", join(section, name)))
}

keys! {
    /// The whole configuration, with defaults filled in.
    pub struct Config in "" {
        /// Used in banners, EHLO and Received headers.
        hostname: String as HostName,
            "The name this MTA gives itself; default: the system's host name.";
        spool: PathBuf as Path = r#""./postrider-spool""#,
            "The spool directory: queue, journal and pickup.";
        spool_segment_size: u64 as Size = r#""64MiB""#,
            "The spool log starts a new segment past this size.";
        spool_max_segments: usize as Int<usize, 2, 10_000> = "8",
            "More segments than this behind the oldest live message trigger compaction.";
        /// Ignored, with a warning, when not started as root.
        user: Option<String> as Opt<Str>,
            "Started as root: give the spool to this user and switch to it.";
    }
    and {
        smtp: Smtp = Smtp::defaults();
        local: Local = Local::defaults();
        routes: RouteTable = RouteTable::default();
        /// Per-destination TLS policy (`[tls_policy]`), overriding `delivery.tls`.
        tls_policy: RouteTable<TlsPolicy> = RouteTable::default();
        dns: Dns = Dns::defaults();
        delivery: Delivery = Delivery::defaults();
        milters: Vec<Milter> = Vec::new();
        control: Control = Control::defaults();
        log: Log = Log::defaults();
    }

    /// The SMTP server (`[smtp]`).
    pub struct Smtp in "smtp" {
        listen: Vec<SocketAddr> as Listen = r#"["127.0.0.1:2525"]"#,
            "Addresses the SMTP server listens on.";
        max_message_size: u64 as Size = r#""50MB""#,
            "Largest message accepted (announced in EHLO SIZE).";
        /// Bounded by [`MAX_RECIPIENTS`](crate::MAX_RECIPIENTS).
        max_recipients: usize as Int<usize, 1, 65_535> = "1000",
            "Recipients per message; at most 65535 (the spool numbers them in 16 bits).";
        max_connections: usize as Count<1> = "1000",
            "Simultaneous SMTP connections.";
        max_connections_per_client: usize as Count<1> = "50",
            "Simultaneous connections from one client address.";
        max_errors: u32 as Int<u32, 1, 1000> = "10",
            "Errors a client may make before it is disconnected.";
        relay_networks: Vec<Cidr> as Cidrs = r#"["127.0.0.0/8", "::1/128"]"#,
            "Clients that may relay to any domain.";
        /// `None`: the relay networks (like Postfix's smtpd_client_event_limit_exceptions =
        /// $mynetworks).
        connection_limit_exceptions: Option<Vec<Cidr>> as Opt<Cidrs>,
            "Clients not held to max_connections_per_client; default: relay_networks.";
        relay_domains: Vec<String> as Domains = "[]",
            "Domains accepted from anyone and relayed onwards.";
        banner: String as Str = r#""ESMTP postrider""#,
            "Text of the 220 greeting after the host name.";
        greeting_delay: Duration as Dur = r#""0s""#,
            "Wait before the greeting; clients that talk first are refused.";
        command_timeout: Duration as Dur = r#""5m""#,
            "Idle time allowed between commands.";
        data_timeout: Duration as Dur = r#""10m""#,
            "Idle time allowed while a message is sent.";
        max_hops: usize as Count<1> = "50",
            "Received headers after which a message is refused as looping.";
        min_free_space: u64 as Size = r#""100MB""#,
            "Below this free space in the spool's file system, MAIL gets 452 4.3.1.";
        tls_cert: Option<PathBuf> as Opt<Path>,
            "Certificate chain (PEM) for STARTTLS; with tls_key, enables it.";
        tls_key: Option<PathBuf> as Opt<Path>,
            "Private key (PEM) for tls_cert.";
    }

    /// Local delivery and local submission (`[local]`).
    pub struct Local in "local" {
        domains: Vec<String> as Domains = "[]",
            "Domains delivered here (through lmtp) rather than relayed.";
        lmtp: Option<LmtpTarget> as Opt<Lmtp>,
            "Where local mail goes: ip:port, host:port or unix:/path.";
        aliases: Option<PathBuf> as Opt<Path>,
            "An aliases(5) file: name: target, target.";
        /// Empty with no `users_file` means "accept any local part".
        users: Vec<String> as Strings = "[]",
            "Known local users; empty, with no users_file: any local part is accepted.";
        users_file: Option<PathBuf> as Opt<Path>,
            "More known local users, one per line.";
        /// The daemon's own user is always trusted; everyone else's mail is from
        /// `user@hostname`.
        trusted_users: Vec<String> as Strings = r#"["root"]"#,
            "Local users whose sendmail -f sets the envelope sender.";
        /// Counted per untrusted uid.
        max_submissions_per_minute: usize as Count<0> = "60",
            "Local submissions per untrusted user per minute; 0: unlimited.";
    }

    /// DNS lookups for delivery (`[dns]`).
    pub struct Dns in "dns" {
        /// `None`: the system's resolv.conf.
        nameservers: Option<Vec<SocketAddr>> as Opt<Nameservers>,
            "Name servers to ask; default: those of /etc/resolv.conf.";
        timeout: Duration as Dur = r#""5s""#,
            "Time allowed for one DNS query.";
        attempts: usize as Count<1> = "2",
            "Tries of each DNS query.";
    }

    /// Outbound delivery (`[delivery]`).
    pub struct Delivery in "delivery" {
        enabled: bool as Bool = "true",
            "Deliver queued mail; false: only accept and queue it.";
        concurrency: usize as Count<1> = "100",
            "Simultaneous outbound deliveries.";
        port: u16 as Int<u16, 1, 65_535> = "25",
            "Port for MX and host destinations that name none.";
        backoff: Vec<Duration> as Backoff = r#"["1m", "5m", "30m", "1h", "2h", "4h", "8h", "16h", "24h"]"#,
            "Waits between delivery attempts, in order.";
        /// Spreads retries of domains that failed together (no standing waves).
        retry_jitter: f64 as Fraction<50> = "0.1",
            "Each retry wait varies at random by up to this share either way (0.1: ±10 %).";
        max_queue_time: Duration as Dur = r#""5d""#,
            "After this long in the queue, a message is bounced.";
        /// `"0s"` also turns them off.
        delay_warning: Option<Duration> as DurOrOff,
            "After this long undelivered, warn the sender once per recipient; default: never.";
        self_addresses: Vec<IpAddr> as Ips = "[]",
            "More addresses that are this host: an MX pointing at one is a loop.";
        implicit_mx: bool as Bool = "true",
            "A domain without MX records gets mail at its A/AAAA address.";
        ipv6: bool as Bool = "true",
            "Look up and connect to IPv6 addresses.";
        srv: bool as Bool = "false",
            "Look up SRV records before MX.";
        helo: bool as Bool = "true",
            "Greet servers with EHLO; false: skip the greeting where a server allows it.";
        transcript: bool as Bool = "false",
            "Log every line of outbound SMTP sessions.";
        source_address: Option<IpAddr> as Opt<Ip>,
            "Local address outbound connections come from.";
        messages_per_connection: usize as Count<1> = "100",
            "Messages sent over one outbound connection before it is closed.";
        /// The timeouts default to the minimums of RFC 5321 §4.5.3.2.
        connect_timeout: Duration as Dur = r#""30s""#,
            "Time allowed to connect.";
        greeting_timeout: Duration as Dur = r#""5m""#,
            "Time allowed for the server's greeting.";
        mail_timeout: Duration as Dur = r#""5m""#,
            "Time allowed for the reply to MAIL.";
        rcpt_timeout: Duration as Dur = r#""5m""#,
            "Time allowed for the reply to each RCPT.";
        data_timeout: Duration as Dur = r#""2m""#,
            "Time allowed for the reply to DATA.";
        data_block_timeout: Duration as Dur = r#""3m""#,
            "Time allowed to send each block of the message.";
        data_done_timeout: Duration as Dur = r#""10m""#,
            "Time allowed for the reply after the final dot.";
        tls: TlsPolicy as Word<TlsPolicy> = r#""opportunistic""#,
            "STARTTLS outbound: none, may (opportunistic), encrypt or verify.";
        /// Only `may` reads it; `"0s"` remembers nothing.
        tls_broken_for: Duration as Dur = r#""1h""#,
            "After a failed handshake under may, send to that host without STARTTLS this long.";
        /// Default: the system bundle.
        tls_ca_file: Option<PathBuf> as Opt<Path>,
            "CA certificates (PEM) for verify; default: the system's.";
    }

    /// One content filter (`[[milter]]`), asked in the order of the file.
    pub struct Milter in "milter" {
        address: MilterAddress as MilterAddr,
            "Where the milter listens: inet:host:port or unix:/path (required).";
        on_failure: MilterFailure as Word<MilterFailure> = r#""tempfail""#,
            "When the milter cannot be reached: tempfail, accept or reject the message.";
        timeout: Duration as Dur = r#""30s""#,
            "Time allowed for each reply from the milter.";
    }

    /// The control socket and metrics (`[control]`).
    pub struct Control in "control" {
        /// Relative paths are relative to the spool directory.
        socket: PathBuf as Path = r#""control.sock""#,
            "The control socket of postrider queue; relative to the spool.";
        metrics: Option<SocketAddr> as Opt<Addr>,
            "Address serving Prometheus metrics over HTTP.";
    }

    /// Logging (`[log]`).
    pub struct Log in "log" {
        format: LogFormat as Word<LogFormat> = r#""human""#,
            "human or json.";
        level: String as LogLevel = r#""info""#,
            "error, warn, info, debug or trace.";
    }
}

macro_rules! default_from_table {
    ($($S:ident),*) => {$(
        impl Default for $S {
            fn default() -> Self {
                $S::defaults()
            }
        }
    )*};
}

default_from_table!(Config, Smtp, Local, Dns, Delivery, Control, Log);

/// The configuration reference in Markdown: one table per section, every key with its kind,
/// default and doc line.
pub fn reference_markdown() -> String {
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from the key table in `crates/config/src/keys.rs`. Every key is optional \
         unless its description says otherwise.\n",
    );
    let mut section = None;
    for k in KEYS {
        if section != Some(k.section) {
            section = Some(k.section);
            let title = match k.section {
                "" => "Top level".to_string(),
                "milter" => "`[[milter]]`".to_string(),
                s => format!("`[{s}]`"),
            };
            out.push_str(&format!(
                "\n## {title}\n\n| Key | Value | Default | Description |\n|---|---|---|---|\n"
            ));
        }
        let default = k
            .default
            .map(|d| format!("`{d}`"))
            .unwrap_or_else(|| "unset".into());
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            k.name,
            k.kind.to_string().replace('|', "\\|"),
            default,
            k.doc
        ));
    }
    out.push_str(TABLES_OF_DOMAINS);
    out
}

/// The two sections keyed by domain pattern rather than by name, so not rows of the table.
const TABLES_OF_DOMAINS: &str = r#"
## `[routes]`

The mailertable: `"example.com"` (that domain), `".example.com"` (its subdomains) or `"*"`
(everything else, a smarthost), each mapped to `"[192.0.2.1]:25"`, `"host:port"`, `"host"`,
`"mx:domain"` or `"lmtp:..."`. The longest match wins.

## `[tls_policy]`

The same domain patterns mapped to a TLS policy (`none`, `may`, `encrypt`, `verify`),
overriding `delivery.tls` for those destinations.
"#;

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../postrider.example.toml");

    /// A `name = value` line of the example file, commented out or not.
    #[derive(Debug)]
    struct ExampleKey<'a> {
        line: usize,
        section: &'a str,
        /// The section header itself is commented out (`# [[milter]]`).
        section_commented: bool,
        name: &'a str,
        value: &'a str,
        commented: bool,
        /// The comment on the line above, if that line is a plain comment.
        doc: Option<&'a str>,
    }

    /// `[smtp]`, `# [[milter]]  # note` -> the section's name and whether it is commented.
    fn header(line: &str) -> Option<(&str, bool)> {
        let (rest, commented) = match line.strip_prefix("# ") {
            Some(r) => (r, true),
            None => (line, false),
        };
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        Some((inner[..end].trim_start_matches('['), commented))
    }

    fn key_line(line: &str) -> Option<(&str, &str, bool)> {
        let (rest, commented) = match line.strip_prefix("# ") {
            Some(r) => (r, true),
            None => (line, false),
        };
        let (name, value) = rest.split_once(" = ")?;
        let ident = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        ident.then_some((name, value, commented))
    }

    fn example_keys(text: &str) -> Vec<ExampleKey<'_>> {
        let mut out = Vec::new();
        let (mut section, mut section_commented) = ("", false);
        let mut previous: Option<&str> = None;
        for (i, line) in text.lines().enumerate() {
            if let Some((s, c)) = header(line) {
                (section, section_commented) = (s, c);
            } else if let Some((name, value, commented)) = key_line(line) {
                out.push(ExampleKey {
                    line: i + 1,
                    section,
                    section_commented,
                    name,
                    value,
                    commented,
                    doc: previous
                        .filter(|p| header(p).is_none() && key_line(p).is_none())
                        .and_then(|p| p.strip_prefix("# ")),
                });
            }
            previous = Some(line);
        }
        out
    }

    #[test]
    fn the_example_file_shows_every_key_with_its_default_and_doc() {
        let found = example_keys(EXAMPLE);
        let mut problems = Vec::new();
        for k in KEYS {
            let path = k.path();
            let Some(first) = found
                .iter()
                .find(|e| e.section == k.section && e.name == k.name)
            else {
                problems.push(format!("{path}: missing from the example file"));
                continue;
            };
            let at = format!("{path} (example line {})", first.line);
            if first.doc != Some(k.doc) {
                problems.push(format!(
                    "{at}: the line above should be '# {}', is {:?}",
                    k.doc, first.doc
                ));
            }
            match k.default {
                Some(d) => {
                    if first.value != d {
                        problems.push(format!("{at}: shows {}, the default is {d}", first.value));
                    }
                    if first.commented != first.section_commented {
                        problems.push(format!("{at}: a key with a default is shown set"));
                    }
                }
                None if !first.commented => {
                    problems.push(format!("{at}: unset by default, so shown commented out"));
                }
                None => {}
            }
        }
        for e in &found {
            if !KEYS
                .iter()
                .any(|k| k.section == e.section && k.name == e.name)
            {
                problems.push(format!(
                    "example line {}: '{}' is not a key of [{}]",
                    e.line, e.name, e.section
                ));
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn the_example_file_is_the_defaults() {
        let parsed = Config::parse(EXAMPLE, "postrider.example.toml").unwrap();
        assert_eq!(format!("{parsed:?}"), format!("{:?}", Config::default()));
    }

    /// The values the example shows commented out are valid too: an administrator
    /// uncommenting one gets a working file.
    #[test]
    fn the_example_files_examples_are_valid() {
        let found = example_keys(EXAMPLE);
        let mut seen = std::collections::HashSet::new();
        let mut text = String::new();
        for (i, line) in EXAMPLE.lines().enumerate() {
            let key = found.iter().find(|e| e.line == i + 1);
            let uncomment = match key {
                Some(e) => e.commented && seen.insert((e.section, e.name)),
                None => header(line).is_some_and(|(_, commented)| commented),
            };
            if let Some(k) = key {
                seen.insert((k.section, k.name));
            }
            let line = if uncomment {
                line.strip_prefix("# ").unwrap_or(line)
            } else {
                line
            };
            text.push_str(line);
            text.push('\n');
        }
        let c = Config::parse(&text, "uncommented.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(c.milters.len(), 1);
        assert!(c.user.is_some() && c.smtp.tls_cert.is_some() && c.control.metrics.is_some());
    }

    #[test]
    fn the_reference_names_every_key_with_its_default() {
        let md = reference_markdown();
        for k in KEYS {
            let row = md
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` |", k.name)) && l.contains(k.doc))
                .unwrap_or_else(|| panic!("{} missing from the reference", k.path()));
            if let Some(d) = k.default {
                assert!(row.contains(&format!("`{d}`")), "{row}");
            }
        }
        for section in [
            "`[smtp]`",
            "`[[milter]]`",
            "`[log]`",
            "Top level",
            "`[routes]`",
            "`[tls_policy]`",
        ] {
            assert!(md.contains(section), "{section}");
        }
    }

    #[test]
    fn every_section_knows_exactly_its_rows() {
        let sections: [(&str, &[&str]); 8] = [
            ("", Config::NAMES),
            ("smtp", Smtp::NAMES),
            ("local", Local::NAMES),
            ("dns", Dns::NAMES),
            ("delivery", Delivery::NAMES),
            ("milter", Milter::NAMES),
            ("control", Control::NAMES),
            ("log", Log::NAMES),
        ];
        for (section, names) in sections {
            let rows: Vec<&str> = KEYS
                .iter()
                .filter(|k| k.section == section)
                .map(|k| k.name)
                .collect();
            assert_eq!(rows, names, "[{section}]");
        }
        assert_eq!(
            KEYS.len(),
            sections.iter().map(|(_, n)| n.len()).sum::<usize>()
        );
    }

    #[test]
    fn docs_are_single_sentences_of_one_line() {
        for k in KEYS {
            assert!(
                !k.doc.contains('\n') && k.doc.ends_with('.') && k.doc.len() <= 88,
                "{}: {:?}",
                k.path(),
                k.doc
            );
        }
    }
}
