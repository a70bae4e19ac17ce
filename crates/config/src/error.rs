//! What can go wrong reading a configuration: located errors for whole files, and the typed
//! reasons a single value is refused.
//!
//! The Display texts are part of the interface: `postrider check-config` prints them and
//! administrators (and tests elsewhere in the workspace) read them, so they must not drift
//! when the code around them changes.

/// One problem in a configuration file, located.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {}{message}", KeyPrefix(key))]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Dotted key path, e.g. `smtp.listen`; empty for syntax errors.
    pub key: String,
    pub message: String,
}

/// `key 'smtp.listen': `, or nothing for errors that belong to no key.
struct KeyPrefix<'a>(&'a str);

impl std::fmt::Display for KeyPrefix<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, "key '{}': ", self.0)
        }
    }
}

/// Every problem found in one file, one per line when displayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", Lines(.0))]
pub struct ConfigErrors(pub Vec<ConfigError>);

struct Lines<'a>(&'a [ConfigError]);

impl std::fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for e in self.0 {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Why a duration such as `"1h30m"` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("'{0}' has no unit (write e.g. '{0}s', '{0}m', '{0}h' or '{0}d')")]
    NoUnit(String),
    #[error("'{0}' is not a duration (expected e.g. 90s, 5m, 1h30m, 5d)")]
    NotADuration(String),
    #[error("'{0}': number too large")]
    TooLarge(String),
    #[error("'{0}': every number needs a unit (ms, s, m, h, d, w)")]
    MissingUnit(String),
    #[error("'{input}': unknown unit '{unit}' (use ms, s, m, h, d or w)")]
    UnknownUnit { input: String, unit: String },
}

/// Why a size such as `"50MB"` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("'{0}' is not a size (expected e.g. 50MB, 10MiB, 512KB)")]
    NotASize(String),
    #[error("'{0}': number too large")]
    NumberTooLarge(String),
    #[error("'{input}': unknown unit '{unit}' (use B, KB, KiB, MB, MiB, GB, GiB)")]
    UnknownUnit { input: String, unit: String },
    #[error("'{0}' is too large")]
    TooLarge(String),
}

/// Why a network such as `"10.0.0.0/8"` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// From [`Cidr::new`](crate::Cidr::new), which has no text to quote.
    #[error("prefix /{prefix} is longer than {max}")]
    PrefixTooLong { prefix: u8, max: u8 },
    #[error("'{input}': prefix /{prefix} is longer than {max}")]
    PrefixTooLongIn { input: String, prefix: u8, max: u8 },
    #[error("'{0}' is not a network (expected e.g. 127.0.0.0/8 or ::1/128)")]
    NotANetwork(String),
    #[error("'{input}': '/{prefix}' is not a prefix length")]
    NotAPrefix { input: String, prefix: String },
}

/// Why a socket address (listener, metrics, nameserver, milter, LMTP) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("'{0}' has a bad port")]
    BadPort(String),
    #[error("'{0}' is not a socket address (expected ip:port, e.g. 127.0.0.1:25 or [::1]:25)")]
    NotASocketAddress(String),
    #[error("'{0}': unix socket path must be absolute")]
    RelativeUnixPath(String),
    #[error("'{0}' must start with inet: or unix:")]
    NoScheme(String),
    #[error("'{0}' is not an LMTP address")]
    NotLmtp(String),
    #[error("{0} (expected ip:port, host:port or unix:/path)")]
    Lmtp(RouteTargetError),
}

/// Why a value of one of the smaller kinds (names, choices, paths) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("'{0}' is not a TLS policy (none, may, encrypt, verify)")]
    TlsPolicy(String),
    #[error("'{0}' is not one of tempfail, accept, reject")]
    MilterFailure(String),
    #[error("'{0}' is not a log format (human, json)")]
    LogFormat(String),
    #[error("'{0}' is not a log level (error, warn, info, debug, trace)")]
    LogLevel(String),
    #[error("'{0}' is not a valid host name")]
    HostName(String),
    #[error("'{0}' is not a valid domain name")]
    DomainName(String),
    #[error("'{0}' is not an IP address")]
    IpAddress(String),
    #[error("empty path")]
    EmptyPath,
    #[error("{0} (expected [ip]:port, host:port, host, mx:domain or lmtp:...)")]
    RouteTarget(RouteTargetError),
}

/// Why a route target or pattern did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteTargetError {
    #[error("empty route target")]
    Empty,
    #[error("'{0}' is not a port number (1-65535)")]
    NotAPort(String),
    #[error("'{0}': missing ']' after address literal")]
    UnclosedLiteral(String),
    #[error("'{0}' is not an IP address")]
    NotAnIpAddress(String),
    #[error("'{0}': expected ':port' after ']'")]
    ExpectedPort(String),
    #[error("'{0}' is not a valid host name")]
    NotAHostName(String),
    #[error("'{0}': unix socket path must be absolute")]
    RelativeUnixPath(String),
    #[error("'{0}': LMTP needs a port")]
    LmtpNeedsPort(String),
    #[error("'{0}' is not a valid domain")]
    NotADomain(String),
    #[error("'{0}' is not a domain, '.domain' or '*'")]
    NotAPattern(String),
}

#[cfg(test)]
mod tests {
    use crate::Config;

    /// What `postrider check-config` prints, byte for byte: administrators and the tests of
    /// the command line read these texts.
    #[test]
    fn messages_stay_as_check_config_prints_them() {
        let cases = [
            (
                "hostname = true\n",
                "g.toml:1:12: key 'hostname': expected a string, found boolean",
            ),
            (
                "hostname = \"\"\n",
                "g.toml:1:12: key 'hostname': '' is not a valid host name",
            ),
            ("spool = \"\"\n", "g.toml:1:9: key 'spool': empty path"),
            (
                "spool_segment_size = true\n",
                "g.toml:1:22: key 'spool_segment_size': expected a size such as \"50MB\" or a number of bytes, found boolean",
            ),
            (
                "spool_segment_size = -1\n",
                "g.toml:1:22: key 'spool_segment_size': must be an integer from 0 to 18446744073709551615",
            ),
            (
                "spool_segment_size = \"\"\n",
                "g.toml:1:22: key 'spool_segment_size': '' is not a size (expected e.g. 50MB, 10MiB, 512KB)",
            ),
            (
                "spool_segment_size = \"0s\"\n",
                "g.toml:1:22: key 'spool_segment_size': '0s': unknown unit 's' (use B, KB, KiB, MB, MiB, GB, GiB)",
            ),
            (
                "spool_segment_size = \"99999999999999999999s\"\n",
                "g.toml:1:22: key 'spool_segment_size': '99999999999999999999s': number too large",
            ),
            (
                "spool_max_segments = true\n",
                "g.toml:1:22: key 'spool_max_segments': expected an integer, found boolean",
            ),
            (
                "smtp = true\n",
                "g.toml:1:8: key 'smtp': expected a table, found boolean",
            ),
            (
                "smtp = { a = 1 }\n",
                "g.toml:1:10: key 'smtp.a': unknown key (known here: listen, max_message_size, max_recipients, max_connections, max_connections_per_client, max_errors, relay_networks, connection_limit_exceptions, relay_domains, banner, greeting_delay, command_timeout, data_timeout, max_hops, min_free_space, tls_cert, tls_key)",
            ),
            (
                "local = { a = 1 }\n",
                "g.toml:1:11: key 'local.a': unknown key (known here: domains, lmtp, aliases, users, users_file, trusted_users, max_submissions_per_minute)",
            ),
            (
                "dns = { a = 1 }\n",
                "g.toml:1:9: key 'dns.a': unknown key (known here: nameservers, timeout, attempts)",
            ),
            (
                "delivery = { a = 1 }\n",
                "g.toml:1:14: key 'delivery.a': unknown key (did you mean 'srv'?)",
            ),
            (
                "milter = true\n",
                "g.toml:1:10: key 'milter': expected an array, found boolean",
            ),
            (
                "control = { a = 1 }\n",
                "g.toml:1:13: key 'control.a': unknown key (known here: socket, metrics)",
            ),
            (
                "log = { a = 1 }\n",
                "g.toml:1:9: key 'log.a': unknown key (known here: format, level)",
            ),
            (
                "zzzzzzzzzzzz = true\n",
                "g.toml:1:1: key 'zzzzzzzzzzzz': unknown key (known here: hostname, spool, spool_segment_size, spool_max_segments, user, smtp, local, routes, tls_policy, dns, delivery, milter, control, log)",
            ),
            (
                "[smtp]\nlisten = []\n",
                "g.toml:2:10: key 'smtp.listen': at least one address is needed",
            ),
            (
                "[smtp]\nlisten = [\"x\"]\n",
                "g.toml:2:11: key 'smtp.listen': 'x' is not a socket address (expected ip:port, e.g. 127.0.0.1:25 or [::1]:25)",
            ),
            (
                "[smtp]\nrelay_networks = [\"x\"]\n",
                "g.toml:2:19: key 'smtp.relay_networks': 'x' is not a network (expected e.g. 127.0.0.0/8 or ::1/128)",
            ),
            (
                "[smtp]\nrelay_domains = [\"127.0.0.1:25\"]\n",
                "g.toml:2:18: key 'smtp.relay_domains': '127.0.0.1:25' is not a valid domain name",
            ),
            (
                "[smtp]\ngreeting_delay = \"\"\n",
                "g.toml:2:18: key 'smtp.greeting_delay': empty duration",
            ),
            (
                "[smtp]\ngreeting_delay = \"x\"\n",
                "g.toml:2:18: key 'smtp.greeting_delay': 'x' is not a duration (expected e.g. 90s, 5m, 1h30m, 5d)",
            ),
            (
                "[smtp]\ngreeting_delay = \"5 minutes\"\n",
                "g.toml:2:18: key 'smtp.greeting_delay': '5 minutes': every number needs a unit (ms, s, m, h, d, w)",
            ),
            (
                "[smtp]\ngreeting_delay = \"90\"\n",
                "g.toml:2:18: key 'smtp.greeting_delay': '90' has no unit (write e.g. '90s', '90m', '90h' or '90d')",
            ),
            (
                "[smtp]\ngreeting_delay = \"5x\"\n",
                "g.toml:2:18: key 'smtp.greeting_delay': '5x': unknown unit 'x' (use ms, s, m, h, d or w)",
            ),
            (
                "[smtp]\ntls_cert = \"x\"\n",
                "g.toml:1:1: key 'smtp.tls_cert': tls_cert and tls_key must be given together",
            ),
            (
                "[local]\nlmtp = \"\"\n",
                "g.toml:2:8: key 'local.lmtp': '' is not a valid host name (expected ip:port, host:port or unix:/path)",
            ),
            (
                "[local]\nlmtp = \"x\"\n",
                "g.toml:2:8: key 'local.lmtp': 'lmtp:x': LMTP needs a port (expected ip:port, host:port or unix:/path)",
            ),
            (
                "[local]\nlmtp = \"localhost:x\"\n",
                "g.toml:2:8: key 'local.lmtp': 'x' is not a port number (1-65535) (expected ip:port, host:port or unix:/path)",
            ),
            (
                "[local]\nlmtp = \"unix:rel\"\n",
                "g.toml:2:8: key 'local.lmtp': 'rel': unix socket path must be absolute (expected ip:port, host:port or unix:/path)",
            ),
            (
                "[local]\nlmtp = \"[300.1.1.1]:25\"\n",
                "g.toml:2:8: key 'local.lmtp': '300.1.1.1' is not an IP address (expected ip:port, host:port or unix:/path)",
            ),
            (
                "[delivery]\nenabled = -1\n",
                "g.toml:2:11: key 'delivery.enabled': expected true or false, found integer",
            ),
            (
                "[delivery]\nbackoff = []\n",
                "g.toml:2:11: key 'delivery.backoff': the retry schedule needs at least one step",
            ),
            (
                "[delivery]\nretry_jitter = 0.6\n",
                "g.toml:2:16: key 'delivery.retry_jitter': must be a number from 0 to 0.5",
            ),
            (
                "[delivery]\nretry_jitter = \"10%\"\n",
                "g.toml:2:16: key 'delivery.retry_jitter': expected a number from 0 to 0.5, found string",
            ),
            (
                "[delivery]\nself_addresses = [\"x\"]\n",
                "g.toml:2:19: key 'delivery.self_addresses': 'x' is not an IP address",
            ),
            (
                "[delivery]\ntls = \"\"\n",
                "g.toml:2:7: key 'delivery.tls': '' is not a TLS policy (none, may, encrypt, verify)",
            ),
            (
                "[delivery]\nqqqqqqqqqqqqq = true\n",
                "g.toml:2:1: key 'delivery.qqqqqqqqqqqqq': unknown key (known here: enabled, concurrency, port, backoff, retry_jitter, max_queue_time, delay_warning, self_addresses, implicit_mx, ipv6, srv, helo, transcript, source_address, messages_per_connection, connect_timeout, greeting_timeout, mail_timeout, rcpt_timeout, data_timeout, data_block_timeout, data_done_timeout, tls, tls_broken_for, tls_ca_file)",
            ),
            (
                "[[milter]]\naddress = \"\"\n",
                "g.toml:2:11: key 'milter.address': '' must start with inet: or unix:",
            ),
            (
                "[[milter]]\naddress = \"unix:rel\"\n",
                "g.toml:2:11: key 'milter.address': 'unix:rel': unix socket path must be absolute",
            ),
            (
                "[[milter]]\non_failure = \"\"\n",
                "g.toml:2:14: key 'milter.on_failure': '' is not one of tempfail, accept, reject",
            ),
            (
                "[[milter]]\non_failure = \"tempfail\"\n",
                "g.toml:1:1: key 'milter.address': every [[milter]] needs an address",
            ),
            (
                "[control]\nmetrics = \"localhost:x\"\n",
                "g.toml:2:11: key 'control.metrics': 'localhost:x' has a bad port",
            ),
            (
                "[log]\nformat = \"\"\n",
                "g.toml:2:10: key 'log.format': '' is not a log format (human, json)",
            ),
            (
                "[log]\nlevel = \"\"\n",
                "g.toml:2:9: key 'log.level': '' is not a log level (error, warn, info, debug, trace)",
            ),
            (
                "[routes]\n\"x.test\" = \"\"\n",
                "g.toml:2:12: key 'routes.\"x.test\"': empty route target (expected [ip]:port, host:port, host, mx:domain or lmtp:...)",
            ),
            (
                "[routes]\n\"x.test\" = \"garbage!\"\n",
                "g.toml:2:12: key 'routes.\"x.test\"': 'garbage!' is not a valid host name (expected [ip]:port, host:port, host, mx:domain or lmtp:...)",
            ),
            (
                "[routes]\n\"x.test\" = \"localhost:x\"\n",
                "g.toml:2:12: key 'routes.\"x.test\"': 'x' is not a port number (1-65535) (expected [ip]:port, host:port, host, mx:domain or lmtp:...)",
            ),
            (
                "[routes]\n\"x.test\" = \"[300.1.1.1]:25\"\n",
                "g.toml:2:12: key 'routes.\"x.test\"': '300.1.1.1' is not an IP address (expected [ip]:port, host:port, host, mx:domain or lmtp:...)",
            ),
            (
                "[routes]\n\"x.test\" = \"lmtp:unix:rel\"\n",
                "g.toml:2:12: key 'routes.\"x.test\"': 'rel': unix socket path must be absolute (expected [ip]:port, host:port, host, mx:domain or lmtp:...)",
            ),
            (
                "[routes]\n\"x.test\" = \"lmtp:host\"\n",
                "g.toml:2:12: key 'routes.\"x.test\"': 'lmtp:host': LMTP needs a port (expected [ip]:port, host:port, host, mx:domain or lmtp:...)",
            ),
            (
                "[routes]\n\"bad host\" = \"x\"\n",
                "g.toml:2:1: key 'routes.\"bad host\"': 'bad host' is not a domain, '.domain' or '*'",
            ),
            (
                "[smtp]\nlisten = [\n",
                "g.toml:2:11: TOML syntax: unclosed array, expected `]`",
            ),
            (
                "x = \n",
                "g.toml:1:5: TOML syntax: string values must be quoted, expected literal string",
            ),
            ("[smtp]\n[smtp]\n", "g.toml:2:2: TOML syntax: duplicate key"),
            (
                "[smtp]\nrelay_networks = [\"10.0.0.0/33\"]\n",
                "g.toml:2:19: key 'smtp.relay_networks': '10.0.0.0/33': prefix /33 is longer than 32",
            ),
            (
                "[smtp]\nrelay_networks = [\"10.0.0.0/x\"]\n",
                "g.toml:2:19: key 'smtp.relay_networks': '10.0.0.0/x': '/x' is not a prefix length",
            ),
            (
                "spool_segment_size = \"99999999999GB\"\n",
                "g.toml:1:22: key 'spool_segment_size': '99999999999GB' is too large",
            ),
            (
                "[routes]\n\"x.test\" = \"mx:bad host\"\n",
                "g.toml:2:12: key 'routes.\"x.test\"': 'bad host' is not a valid domain (expected [ip]:port, host:port, host, mx:domain or lmtp:...)",
            ),
            (
                "[routes]\n\"x.test\" = \"[127.0.0.1\"\n",
                "g.toml:2:12: key 'routes.\"x.test\"': '[127.0.0.1': missing ']' after address literal (expected [ip]:port, host:port, host, mx:domain or lmtp:...)",
            ),
            (
                "[routes]\n\"x.test\" = \"[127.0.0.1]x\"\n",
                "g.toml:2:12: key 'routes.\"x.test\"': '[127.0.0.1]x': expected ':port' after ']' (expected [ip]:port, host:port, host, mx:domain or lmtp:...)",
            ),
            (
                "[tls_policy]\n\"x.test\" = \"bogus\"\n",
                "g.toml:2:12: key 'tls_policy.\"x.test\"': 'bogus' is not a TLS policy (none, may, encrypt, verify)",
            ),
        ];
        for (input, expected) in cases {
            let errors = Config::parse(input, "g.toml").expect_err(input);
            assert_eq!(errors.to_string(), format!("{expected}\n"), "{input:?}");
        }
    }
}
