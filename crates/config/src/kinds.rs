//! The kinds of value a key can hold: how each is read from TOML (with the messages
//! `check-config` prints), how the reference describes it, and, for tests, how a value is
//! written back as TOML.
//!
//! A key's row in `keys.rs` names its kind; everything the parser does with that key goes
//! through the kind, so two keys of one kind cannot drift apart in what they accept.
//!
//! Its length is one short block per kind of value, each independent of the others; the
//! property tests are in `kinds/tests.rs`.

use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use toml::de::DeValue;

use crate::error::ValueError;
use crate::route::{self, LmtpTarget};
use crate::values::{Cidr, MilterAddress, parse_duration, parse_size, parse_socket_addr};
use crate::walker::{V, Walker};
use crate::{LogFormat, MilterFailure, TlsPolicy};

/// What a key holds, as the reference documentation describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ValueKind {
    String,
    Bool,
    Integer {
        min: u64,
        max: u64,
    },
    Size,
    Duration,
    DurationList,
    SocketAddr,
    SocketAddrList,
    NameserverList,
    CidrList,
    DomainList,
    StringList,
    IpAddr,
    IpAddrList,
    Path,
    HostName,
    LmtpAddress,
    MilterAddress,
    /// A number from 0 to `max_percent` / 100 (a share, such as a jitter of 0.1).
    Fraction {
        max_percent: u64,
    },
    /// One of these words (synonyms such as Postfix's are accepted but not listed).
    OneOf(&'static [&'static str]),
}

impl std::fmt::Display for ValueKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValueKind::String => f.write_str("string"),
            ValueKind::Bool => f.write_str("true or false"),
            ValueKind::Integer { min, max } => write!(f, "integer, {min} to {max}"),
            ValueKind::Size => f.write_str("size: \"50MB\", \"10MiB\", \"512KB\" or bytes"),
            ValueKind::Duration => {
                f.write_str("duration: \"250ms\", \"90s\", \"5m\", \"1h30m\", \"5d\", \"2w\"")
            }
            ValueKind::DurationList => f.write_str("array of durations"),
            ValueKind::SocketAddr => f.write_str("socket address: \"127.0.0.1:25\", \"[::1]:25\""),
            ValueKind::SocketAddrList => f.write_str("array of socket addresses"),
            ValueKind::NameserverList => {
                f.write_str("array of IP addresses (port 53) or socket addresses")
            }
            ValueKind::CidrList => f.write_str("array of networks: \"10.0.0.0/8\", \"::1/128\""),
            ValueKind::DomainList => f.write_str("array of domain names"),
            ValueKind::StringList => f.write_str("array of strings"),
            ValueKind::IpAddr => f.write_str("IP address"),
            ValueKind::IpAddrList => f.write_str("array of IP addresses"),
            ValueKind::Path => f.write_str("path"),
            ValueKind::HostName => f.write_str("host name"),
            ValueKind::LmtpAddress => {
                f.write_str("LMTP address: \"127.0.0.1:24\", \"host:24\", \"unix:/path\"")
            }
            ValueKind::MilterAddress => {
                f.write_str("milter address: \"inet:127.0.0.1:8891\", \"unix:/path\"")
            }
            ValueKind::Fraction { max_percent } => {
                write!(f, "number, 0 to {}", *max_percent as f64 / 100.0)
            }
            ValueKind::OneOf(words) => write!(f, "one of {}", words.join(", ")),
        }
    }
}

pub(crate) trait Kind {
    type Value;
    const KIND: ValueKind;

    /// Reads `v`, reporting any problem under `key`.
    fn read(w: &mut Walker<'_>, v: &V<'_>, key: &str) -> Option<Self::Value>;

    /// The value of a key whose row gives no default: only kinds such rows use answer.
    fn absent() -> Option<Self::Value> {
        None
    }

    /// The TOML text that reads back as `v`; `None` for a value no text gives (the key is
    /// then left out).
    #[cfg(test)]
    fn render(v: &Self::Value) -> Option<String>;
}

/// TOML's quoting, which is also Rust's `{:?}` for the strings configuration values use.
#[cfg(test)]
fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
fn array(items: impl IntoIterator<Item = String>) -> String {
    format!("[{}]", items.into_iter().collect::<Vec<_>>().join(", "))
}

/// A key that is unset unless the file sets it.
pub(crate) struct Opt<K>(PhantomData<K>);

impl<K: Kind> Kind for Opt<K> {
    type Value = Option<K::Value>;
    const KIND: ValueKind = K::KIND;

    fn read(w: &mut Walker<'_>, v: &V<'_>, key: &str) -> Option<Self::Value> {
        K::read(w, v, key).map(Some)
    }

    fn absent() -> Option<Self::Value> {
        Some(None)
    }

    #[cfg(test)]
    fn render(v: &Self::Value) -> Option<String> {
        v.as_ref().and_then(K::render)
    }
}

pub(crate) struct Str;

impl Kind for Str {
    type Value = String;
    const KIND: ValueKind = ValueKind::String;

    fn read(w: &mut Walker<'_>, v: &V<'_>, key: &str) -> Option<String> {
        w.string(v, key).map(str::to_string)
    }

    #[cfg(test)]
    fn render(v: &String) -> Option<String> {
        Some(quote(v))
    }
}

pub(crate) struct Bool;

impl Kind for Bool {
    type Value = bool;
    const KIND: ValueKind = ValueKind::Bool;

    fn read(w: &mut Walker<'_>, v: &V<'_>, key: &str) -> Option<bool> {
        w.boolean(v, key)
    }

    #[cfg(test)]
    fn render(v: &bool) -> Option<String> {
        Some(v.to_string())
    }
}

/// An integer from `MIN` to `MAX`, held as `T` (every such `T` holds `MAX`).
pub(crate) struct Int<T, const MIN: u64, const MAX: u64>(PhantomData<T>);

/// A count with no useful upper bound; the bound keeps arithmetic on it far from overflow.
pub(crate) type Count<const MIN: u64> = Int<usize, MIN, 1_000_000_000>;

impl<T, const MIN: u64, const MAX: u64> Kind for Int<T, MIN, MAX>
where
    T: TryFrom<u64> + TryInto<u64> + Copy,
{
    type Value = T;
    const KIND: ValueKind = ValueKind::Integer { min: MIN, max: MAX };

    fn read(w: &mut Walker<'_>, v: &V<'_>, key: &str) -> Option<T> {
        let n = w.integer(v, key, MIN, MAX)?;
        let t = T::try_from(n).ok();
        if t.is_none() {
            // Only on a target whose usize is narrower than a row's bound.
            w.error(v, key, &format!("must be an integer from {MIN} to {MAX}"));
        }
        t
    }

    #[cfg(test)]
    fn render(v: &T) -> Option<String> {
        (*v).try_into().ok().map(|n: u64| n.to_string())
    }
}

pub(crate) struct Size;

impl Kind for Size {
    type Value = u64;
    const KIND: ValueKind = ValueKind::Size;

    /// Sizes may be written as a string with a unit or as a bare integer of bytes.
    fn read(w: &mut Walker<'_>, v: &V<'_>, key: &str) -> Option<u64> {
        match v.get_ref() {
            DeValue::Integer(_) => w.integer(v, key, 0, u64::MAX),
            DeValue::String(_) => w.parsed(v, key, parse_size),
            other => {
                let msg = format!(
                    "expected a size such as \"50MB\" or a number of bytes, found {}",
                    other.type_str()
                );
                w.error(v, key, &msg);
                None
            }
        }
    }

    #[cfg(test)]
    fn render(v: &u64) -> Option<String> {
        let unit = [
            ("GiB", 1 << 30),
            ("GB", 1_000_000_000),
            ("MiB", 1 << 20),
            ("MB", 1_000_000),
            ("KiB", 1 << 10),
            ("KB", 1000),
        ]
        .into_iter()
        .find(|(_, n)| *v != 0 && v.is_multiple_of(*n));
        Some(match unit {
            Some((u, n)) => quote(&format!("{}{u}", v / n)),
            None => quote(&v.to_string()),
        })
    }
}

pub(crate) struct Dur;

impl Kind for Dur {
    type Value = Duration;
    const KIND: ValueKind = ValueKind::Duration;

    fn read(w: &mut Walker<'_>, v: &V<'_>, key: &str) -> Option<Duration> {
        w.parsed(v, key, parse_duration)
    }

    #[cfg(test)]
    fn render(v: &Duration) -> Option<String> {
        Some(quote(&crate::values::format_duration(*v)))
    }
}

/// A duration where `"0s"` means "never" (unset).
pub(crate) struct DurOrOff;

impl Kind for DurOrOff {
    type Value = Option<Duration>;
    const KIND: ValueKind = ValueKind::Duration;

    fn read(w: &mut Walker<'_>, v: &V<'_>, key: &str) -> Option<Option<Duration>> {
        Dur::read(w, v, key).map(|d| Some(d).filter(|d| !d.is_zero()))
    }

    fn absent() -> Option<Option<Duration>> {
        Some(None)
    }

    #[cfg(test)]
    fn render(v: &Option<Duration>) -> Option<String> {
        Dur::render(&v.unwrap_or_default())
    }
}

/// A schedule of durations; an empty one would leave nothing to wait for.
pub(crate) struct Backoff;

impl Kind for Backoff {
    type Value = Vec<Duration>;
    const KIND: ValueKind = ValueKind::DurationList;

    fn read(w: &mut Walker<'_>, v: &V<'_>, key: &str) -> Option<Vec<Duration>> {
        let b = w.list(v, key, |w, i| Dur::read(w, i, key));
        if b.as_ref().is_some_and(Vec::is_empty) {
            w.error(v, key, "the retry schedule needs at least one step");
            return None;
        }
        b
    }

    #[cfg(test)]
    fn render(v: &Vec<Duration>) -> Option<String> {
        Some(array(v.iter().filter_map(Dur::render)))
    }
}

/// A share from 0 to `MAX_PERCENT` / 100, written as a TOML number (`0.1`, or `0`). The
/// bound is in percent because a const generic cannot be a float.
pub(crate) struct Fraction<const MAX_PERCENT: u64>;

impl<const MAX_PERCENT: u64> Kind for Fraction<MAX_PERCENT> {
    type Value = f64;
    const KIND: ValueKind = ValueKind::Fraction {
        max_percent: MAX_PERCENT,
    };

    fn read(w: &mut Walker<'_>, v: &V<'_>, key: &str) -> Option<f64> {
        let max = MAX_PERCENT as f64 / 100.0;
        let x = match v.get_ref() {
            DeValue::Float(f) => f.as_str().replace('_', "").parse::<f64>().ok(),
            DeValue::Integer(i) => i.as_str().replace('_', "").parse::<f64>().ok(),
            other => {
                let msg = format!(
                    "expected a number from 0 to {max}, found {}",
                    other.type_str()
                );
                w.error(v, key, &msg);
                return None;
            }
        };
        // NaN and infinities fail the range check too.
        let x = x.filter(|x| (0.0..=max).contains(x));
        if x.is_none() {
            w.error(v, key, &format!("must be a number from 0 to {max}"));
        }
        x
    }

    #[cfg(test)]
    fn render(v: &f64) -> Option<String> {
        // `{:?}` keeps the decimal point TOML needs to read a float back.
        Some(format!("{v:?}"))
    }
}

pub(crate) struct Addr;

impl Kind for Addr {
    type Value = SocketAddr;
    const KIND: ValueKind = ValueKind::SocketAddr;

    fn read(w: &mut Walker<'_>, v: &V<'_>, key: &str) -> Option<SocketAddr> {
        w.parsed(v, key, parse_socket_addr)
    }

    #[cfg(test)]
    fn render(v: &SocketAddr) -> Option<String> {
        Some(quote(&v.to_string()))
    }
}

/// Listening addresses: at least one, or the server would have nothing to accept on.
pub(crate) struct Listen;

impl Kind for Listen {
    type Value = Vec<SocketAddr>;
    const KIND: ValueKind = ValueKind::SocketAddrList;

    fn read(w: &mut Walker<'_>, v: &V<'_>, key: &str) -> Option<Vec<SocketAddr>> {
        let l = w.list(v, key, |w, i| Addr::read(w, i, key));
        if l.as_ref().is_some_and(Vec::is_empty) {
            w.error(v, key, "at least one address is needed");
            return None;
        }
        l
    }

    #[cfg(test)]
    fn render(v: &Vec<SocketAddr>) -> Option<String> {
        Some(array(v.iter().filter_map(Addr::render)))
    }
}

/// Name servers: a bare IP means port 53.
pub(crate) struct Nameservers;

impl Kind for Nameservers {
    type Value = Vec<SocketAddr>;
    const KIND: ValueKind = ValueKind::NameserverList;

    fn read(w: &mut Walker<'_>, v: &V<'_>, key: &str) -> Option<Vec<SocketAddr>> {
        w.list(v, key, |w, i| {
            w.parsed(i, key, |s| {
                s.parse::<IpAddr>()
                    .map(|ip| SocketAddr::new(ip, 53))
                    .or_else(|_| parse_socket_addr(s))
            })
        })
    }

    #[cfg(test)]
    fn render(v: &Vec<SocketAddr>) -> Option<String> {
        Some(array(v.iter().filter_map(Addr::render)))
    }
}

pub(crate) struct Cidrs;

impl Kind for Cidrs {
    type Value = Vec<Cidr>;
    const KIND: ValueKind = ValueKind::CidrList;

    fn read(w: &mut Walker<'_>, v: &V<'_>, key: &str) -> Option<Vec<Cidr>> {
        w.list(v, key, |w, i| w.parsed(i, key, str::parse::<Cidr>))
    }

    #[cfg(test)]
    fn render(v: &Vec<Cidr>) -> Option<String> {
        Some(array(v.iter().map(|c| quote(&c.to_string()))))
    }
}

/// Domain names, in the one form every comparison uses.
pub(crate) struct Domains;

impl Kind for Domains {
    type Value = Vec<String>;
    const KIND: ValueKind = ValueKind::DomainList;

    fn read(w: &mut Walker<'_>, v: &V<'_>, key: &str) -> Option<Vec<String>> {
        w.list(v, key, |w, i| {
            w.parsed(i, key, |s| {
                let d = route::normalize_domain(s);
                if route::valid_hostname(&d) {
                    Ok(d)
                } else {
                    Err(ValueError::DomainName(s.into()))
                }
            })
        })
    }

    #[cfg(test)]
    fn render(v: &Vec<String>) -> Option<String> {
        Some(array(v.iter().map(|s| quote(s))))
    }
}

pub(crate) struct Strings;

impl Kind for Strings {
    type Value = Vec<String>;
    const KIND: ValueKind = ValueKind::StringList;

    fn read(w: &mut Walker<'_>, v: &V<'_>, key: &str) -> Option<Vec<String>> {
        w.list(v, key, |w, i| Str::read(w, i, key))
    }

    #[cfg(test)]
    fn render(v: &Vec<String>) -> Option<String> {
        Some(array(v.iter().map(|s| quote(s))))
    }
}

pub(crate) struct Ip;

impl Kind for Ip {
    type Value = IpAddr;
    const KIND: ValueKind = ValueKind::IpAddr;

    fn read(w: &mut Walker<'_>, v: &V<'_>, key: &str) -> Option<IpAddr> {
        w.parsed(v, key, |s| {
            s.parse::<IpAddr>()
                .map_err(|_| ValueError::IpAddress(s.into()))
        })
    }

    #[cfg(test)]
    fn render(v: &IpAddr) -> Option<String> {
        Some(quote(&v.to_string()))
    }
}

pub(crate) struct Ips;

impl Kind for Ips {
    type Value = Vec<IpAddr>;
    const KIND: ValueKind = ValueKind::IpAddrList;

    fn read(w: &mut Walker<'_>, v: &V<'_>, key: &str) -> Option<Vec<IpAddr>> {
        w.list(v, key, |w, i| Ip::read(w, i, key))
    }

    #[cfg(test)]
    fn render(v: &Vec<IpAddr>) -> Option<String> {
        Some(array(v.iter().filter_map(Ip::render)))
    }
}

pub(crate) struct Path;

impl Kind for Path {
    type Value = PathBuf;
    const KIND: ValueKind = ValueKind::Path;

    fn read(w: &mut Walker<'_>, v: &V<'_>, key: &str) -> Option<PathBuf> {
        w.parsed(v, key, |s| {
            if s.is_empty() {
                Err(ValueError::EmptyPath)
            } else {
                Ok(PathBuf::from(s))
            }
        })
    }

    #[cfg(test)]
    fn render(v: &PathBuf) -> Option<String> {
        v.to_str().map(quote)
    }
}

/// This host's own name; unset, the system's.
pub(crate) struct HostName;

impl Kind for HostName {
    type Value = String;
    const KIND: ValueKind = ValueKind::HostName;

    fn read(w: &mut Walker<'_>, v: &V<'_>, key: &str) -> Option<String> {
        w.parsed(v, key, |s| {
            let h = s.trim_end_matches('.').to_ascii_lowercase();
            if route::valid_hostname(&h) {
                Ok(h)
            } else {
                Err(ValueError::HostName(s.into()))
            }
        })
    }

    fn absent() -> Option<String> {
        Some(
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_ascii_lowercase())
                .filter(|s| !s.is_empty() && route::valid_hostname(s))
                .unwrap_or_else(|| "localhost".into()),
        )
    }

    #[cfg(test)]
    fn render(v: &String) -> Option<String> {
        Some(quote(v))
    }
}

/// A word from a fixed list, read through `FromStr`.
pub(crate) struct Word<T>(PhantomData<T>);

/// The words a [`Word`] kind accepts, for the reference, and how a value is written.
pub(crate) trait Words: Sized {
    const WORDS: &'static [&'static str];
    #[cfg(test)]
    fn word(&self) -> &'static str;
}

impl<T> Kind for Word<T>
where
    T: Words + std::str::FromStr,
    T::Err: std::fmt::Display,
{
    type Value = T;
    const KIND: ValueKind = ValueKind::OneOf(T::WORDS);

    fn read(w: &mut Walker<'_>, v: &V<'_>, key: &str) -> Option<T> {
        w.parsed(v, key, str::parse::<T>)
    }

    #[cfg(test)]
    fn render(v: &T) -> Option<String> {
        Some(quote(v.word()))
    }
}

impl Words for TlsPolicy {
    const WORDS: &'static [&'static str] = &["none", "may", "encrypt", "verify"];
    #[cfg(test)]
    fn word(&self) -> &'static str {
        match self {
            TlsPolicy::None => "none",
            TlsPolicy::Opportunistic => "may",
            TlsPolicy::Required => "encrypt",
            TlsPolicy::Verify => "verify",
        }
    }
}

impl Words for MilterFailure {
    const WORDS: &'static [&'static str] = &["tempfail", "accept", "reject"];
    #[cfg(test)]
    fn word(&self) -> &'static str {
        match self {
            MilterFailure::Tempfail => "tempfail",
            MilterFailure::Accept => "accept",
            MilterFailure::Reject => "reject",
        }
    }
}

impl Words for LogFormat {
    const WORDS: &'static [&'static str] = &["human", "json"];
    #[cfg(test)]
    fn word(&self) -> &'static str {
        match self {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        }
    }
}

/// A tracing level; kept as its word because the log filter takes words.
pub(crate) struct LogLevel;

impl Kind for LogLevel {
    type Value = String;
    const KIND: ValueKind = ValueKind::OneOf(&["error", "warn", "info", "debug", "trace"]);

    fn read(w: &mut Walker<'_>, v: &V<'_>, key: &str) -> Option<String> {
        w.parsed(v, key, |s| match s {
            "error" | "warn" | "info" | "debug" | "trace" => Ok(s.to_string()),
            _ => Err(ValueError::LogLevel(s.into())),
        })
    }

    #[cfg(test)]
    fn render(v: &String) -> Option<String> {
        Some(quote(v))
    }
}

pub(crate) struct Lmtp;

impl Kind for Lmtp {
    type Value = LmtpTarget;
    const KIND: ValueKind = ValueKind::LmtpAddress;

    fn read(w: &mut Walker<'_>, v: &V<'_>, key: &str) -> Option<LmtpTarget> {
        w.parsed(v, key, str::parse::<LmtpTarget>)
    }

    #[cfg(test)]
    fn render(v: &LmtpTarget) -> Option<String> {
        let route = crate::RouteTarget::Lmtp(v.clone()).to_string();
        route.strip_prefix("lmtp:").map(quote)
    }
}

/// A milter's address, which has no default: a `[[milter]]` without one is refused.
pub(crate) struct MilterAddr;

impl Kind for MilterAddr {
    type Value = MilterAddress;
    const KIND: ValueKind = ValueKind::MilterAddress;

    fn read(w: &mut Walker<'_>, v: &V<'_>, key: &str) -> Option<MilterAddress> {
        w.parsed(v, key, str::parse::<MilterAddress>)
    }

    /// Stands in until the entry's address is read; the walker refuses an entry without one.
    fn absent() -> Option<MilterAddress> {
        Some(MilterAddress::Unix(PathBuf::new()))
    }

    #[cfg(test)]
    fn render(v: &MilterAddress) -> Option<String> {
        match v {
            MilterAddress::Inet(a) => Some(quote(&format!("inet:{a}"))),
            MilterAddress::Unix(p) => p.to_str().map(|p| quote(&format!("unix:{p}"))),
        }
    }
}

#[cfg(test)]
mod tests;
