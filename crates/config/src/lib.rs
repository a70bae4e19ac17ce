//! postrider's configuration: TOML, typed and validated at load time.
//!
//! The file is walked by hand over `toml`'s spanned document so that every error can name
//! the file, line, column and key, and so that all errors are reported in one pass rather
//! than one per run. Every key has an embedded default: an empty file (or no file) is a
//! working configuration.
//!
//! Each key is declared once, in the table of `keys.rs`: the settings structs, their
//! defaults, the parser's knowledge of which keys exist, [`KEYS`] and
//! [`reference_markdown`] all come from it, and the tests hold `postrider.example.toml` to
//! it.

mod error;
mod keys;
mod kinds;
mod parse;
pub mod route;
pub mod values;
mod walker;

use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use error::{
    AddressError, CidrError, ConfigError, ConfigErrors, DurationError, RouteTargetError, SizeError,
    ValueError,
};
pub use keys::{
    Config, Control, Delivery, Dns, KEYS, KeyDef, Local, Log, Milter, Smtp, reference_markdown,
};
pub use kinds::ValueKind;
pub use route::{LmtpTarget, RoutePattern, RouteTable, RouteTarget, normalize_domain};
pub use values::{Cidr, MilterAddress, format_duration, parse_duration, parse_size};

/// Recipients one message may have: the spool numbers them with a u16 (queue ids `ID.XXXX`,
/// four hex digits), so more could not be told apart.
pub const MAX_RECIPIENTS: usize = 65_535;

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

/// Postfix's words are accepted beside postrider's, so that its settings carry over.
impl FromStr for TlsPolicy {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<TlsPolicy, ValueError> {
        match s {
            "none" => Ok(TlsPolicy::None),
            "opportunistic" | "may" => Ok(TlsPolicy::Opportunistic),
            "required" | "encrypt" => Ok(TlsPolicy::Required),
            "verify" | "secure" => Ok(TlsPolicy::Verify),
            _ => Err(ValueError::TlsPolicy(s.into())),
        }
    }
}

/// What to do with a message when its milter cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MilterFailure {
    Tempfail,
    Accept,
    Reject,
}

impl FromStr for MilterFailure {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<MilterFailure, ValueError> {
        match s {
            "tempfail" => Ok(MilterFailure::Tempfail),
            "accept" => Ok(MilterFailure::Accept),
            "reject" => Ok(MilterFailure::Reject),
            _ => Err(ValueError::MilterFailure(s.into())),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

impl FromStr for LogFormat {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<LogFormat, ValueError> {
        match s {
            "human" | "text" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            _ => Err(ValueError::LogFormat(s.into())),
        }
    }
}

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
        let mut cfg = Config::default();
        parse::parse_into(text, file, &mut cfg)?;
        Ok(cfg)
    }

    /// The control socket's path (relative paths are under the spool).
    pub fn control_socket(&self) -> PathBuf {
        self.spool.join(&self.control.socket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
