//! Route destinations: the right-hand side of a `[routes]` entry (the seed's mailertable).
//!
//! Parsed once at configuration load so that the resolver never sees a malformed target.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use crate::error::RouteTargetError;

/// Where mail for a routed domain goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    /// `[192.0.2.1]`, `[192.0.2.1]:2526`, `[IPv6:2001:db8::1]:25`: connect to this address, no DNS.
    /// `port` is `None` when the entry named none; the resolver then uses `delivery.port`.
    Literal { addr: IpAddr, port: Option<u16> },
    /// `relay.example.net` or `relay.example.net:2525`: A/AAAA of this host, never its MX.
    Host { host: String, port: Option<u16> },
    /// `mx:example.net`: deliver as if the mail were for `example.net` (its MX records).
    Mx { domain: String },
    /// `lmtp:[127.0.0.1]:24`, `lmtp:host:24` or `lmtp:unix:/path`: LMTP instead of SMTP.
    Lmtp(LmtpTarget),
}

/// The destination of an LMTP route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LmtpTarget {
    /// A TCP address given literally.
    Inet(SocketAddr),
    /// A host name and port, resolved through A/AAAA.
    Host { host: String, port: u16 },
    /// A unix-domain socket.
    Unix(std::path::PathBuf),
}

fn parse_port(s: &str) -> Result<u16, RouteTargetError> {
    match s.parse::<u16>() {
        Ok(0) | Err(_) => Err(RouteTargetError::NotAPort(s.into())),
        Ok(p) => Ok(p),
    }
}

/// Parses `[ip]` / `[IPv6:ip]` with an optional `:port`.
fn parse_literal(s: &str) -> Result<(IpAddr, Option<u16>), RouteTargetError> {
    let end = s
        .find(']')
        .ok_or_else(|| RouteTargetError::UnclosedLiteral(s.into()))?;
    let inner = &s[1..end];
    let inner = inner
        .strip_prefix("IPv6:")
        .or_else(|| inner.strip_prefix("ipv6:"))
        .unwrap_or(inner);
    let addr: IpAddr = inner
        .parse()
        .map_err(|_| RouteTargetError::NotAnIpAddress(inner.into()))?;
    let rest = &s[end + 1..];
    let port = match rest {
        "" => None,
        _ => Some(parse_port(
            rest.strip_prefix(':')
                .ok_or_else(|| RouteTargetError::ExpectedPort(s.into()))?,
        )?),
    };
    Ok((addr, port))
}

/// Checks a host name: letters, digits, hyphens and dots, labels of 1-63 octets.
pub fn valid_hostname(h: &str) -> bool {
    let h = h.strip_suffix('.').unwrap_or(h);
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn parse_host_port(s: &str) -> Result<(String, Option<u16>), RouteTargetError> {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(parse_port(p)?)),
        None => (s, None),
    };
    if !valid_hostname(host) {
        return Err(RouteTargetError::NotAHostName(host.into()));
    }
    Ok((host.to_ascii_lowercase(), port))
}

impl FromStr for RouteTarget {
    type Err = RouteTargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(RouteTargetError::Empty);
        }
        if let Some(rest) = s.strip_prefix("lmtp:") {
            if let Some(path) = rest.strip_prefix("unix:") {
                if !path.starts_with('/') {
                    return Err(RouteTargetError::RelativeUnixPath(path.into()));
                }
                return Ok(RouteTarget::Lmtp(LmtpTarget::Unix(path.into())));
            }
            if rest.starts_with('[') {
                let (addr, port) = parse_literal(rest)?;
                let port = port.ok_or_else(|| RouteTargetError::LmtpNeedsPort(s.into()))?;
                return Ok(RouteTarget::Lmtp(LmtpTarget::Inet(SocketAddr::new(
                    addr, port,
                ))));
            }
            let (host, port) = parse_host_port(rest)?;
            let port = port.ok_or_else(|| RouteTargetError::LmtpNeedsPort(s.into()))?;
            return Ok(RouteTarget::Lmtp(LmtpTarget::Host { host, port }));
        }
        if let Some(domain) = s.strip_prefix("mx:") {
            if !valid_hostname(domain) {
                return Err(RouteTargetError::NotADomain(domain.into()));
            }
            return Ok(RouteTarget::Mx {
                domain: domain.to_ascii_lowercase(),
            });
        }
        if s.starts_with('[') {
            let (addr, port) = parse_literal(s)?;
            return Ok(RouteTarget::Literal { addr, port });
        }
        let (host, port) = parse_host_port(s)?;
        Ok(RouteTarget::Host { host, port })
    }
}

impl fmt::Display for RouteTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let port = |p: &Option<u16>| p.map(|p| format!(":{p}")).unwrap_or_default();
        match self {
            RouteTarget::Literal {
                addr: IpAddr::V4(a),
                port: p,
            } => write!(f, "[{a}]{}", port(p)),
            RouteTarget::Literal {
                addr: IpAddr::V6(a),
                port: p,
            } => {
                write!(f, "[IPv6:{a}]{}", port(p))
            }
            RouteTarget::Host { host, port: p } => write!(f, "{host}{}", port(p)),
            RouteTarget::Mx { domain } => write!(f, "mx:{domain}"),
            RouteTarget::Lmtp(LmtpTarget::Inet(sa)) => match sa {
                SocketAddr::V4(v4) => write!(f, "lmtp:[{}]:{}", v4.ip(), v4.port()),
                SocketAddr::V6(v6) => write!(f, "lmtp:[IPv6:{}]:{}", v6.ip(), v6.port()),
            },
            RouteTarget::Lmtp(LmtpTarget::Host { host, port }) => write!(f, "lmtp:{host}:{port}"),
            RouteTarget::Lmtp(LmtpTarget::Unix(p)) => write!(f, "lmtp:unix:{}", p.display()),
        }
    }
}

/// The `[local] lmtp` form: `127.0.0.1:24`, `[::1]:24`, `host:24`, `unix:/path`, that is a
/// route's `lmtp:` target without its prefix.
impl FromStr for LmtpTarget {
    type Err = crate::error::AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        use crate::error::AddressError;
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(LmtpTarget::Inet(a));
        }
        match format!("lmtp:{s}").parse::<RouteTarget>() {
            Ok(RouteTarget::Lmtp(t)) => Ok(t),
            Ok(_) => Err(AddressError::NotLmtp(s.into())),
            Err(e) => Err(AddressError::Lmtp(e)),
        }
    }
}

/// The key of a `[routes]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RoutePattern {
    /// `example.com`: that domain only.
    Exact(String),
    /// `.example.com`: every subdomain of it, not the domain itself.
    Subdomains(String),
    /// `*`: everything no other entry matches (a smarthost).
    Default,
}

impl FromStr for RoutePattern {
    type Err = RouteTargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "*" {
            return Ok(RoutePattern::Default);
        }
        let (sub, name) = match s.strip_prefix('.') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        if !valid_hostname(name) {
            return Err(RouteTargetError::NotAPattern(s.into()));
        }
        let name = normalize_domain(name);
        Ok(if sub {
            RoutePattern::Subdomains(name)
        } else {
            RoutePattern::Exact(name)
        })
    }
}

/// The one form of a domain every comparison uses (relay policy, local domains, routes):
/// final dots dropped, ASCII letters lowercased. Never Unicode case rules: they fold
/// lookalikes such as the Kelvin sign U+212A onto `k`, which DNS does not.
pub fn normalize_domain(d: &str) -> String {
    d.trim_end_matches('.').to_ascii_lowercase()
}

/// A table keyed by domain patterns, looked up longest match first: the route table
/// (mailertable) and the per-destination TLS policy table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable<T = RouteTarget> {
    entries: Vec<(RoutePattern, T)>,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        RouteTable {
            entries: Vec::new(),
        }
    }
}

impl<T> RouteTable<T> {
    pub fn new(entries: Vec<(RoutePattern, T)>) -> Self {
        RouteTable { entries }
    }

    pub fn entries(&self) -> &[(RoutePattern, T)] {
        &self.entries
    }

    /// The route for `domain`: an exact entry, else the longest `.suffix` entry, else `*`.
    pub fn lookup(&self, domain: &str) -> Option<&T> {
        self.lookup_specific(domain)
            .or_else(|| self.default_entry())
    }

    /// The `*` entry, if any.
    pub fn default_entry(&self) -> Option<&T> {
        self.entries
            .iter()
            .find(|(p, _)| *p == RoutePattern::Default)
            .map(|(_, t)| t)
    }

    /// An exact entry for `domain`, else the longest `.suffix` entry; never `*`.
    pub fn lookup_specific(&self, domain: &str) -> Option<&T> {
        let domain = normalize_domain(domain);
        let mut best: Option<(usize, &T)> = None;
        for (pat, target) in &self.entries {
            match pat {
                RoutePattern::Exact(d) if *d == domain => return Some(target),
                RoutePattern::Subdomains(d) => {
                    let matches = domain.len() > d.len()
                        && domain.ends_with(d.as_str())
                        && domain.as_bytes()[domain.len() - d.len() - 1] == b'.';
                    if matches && best.is_none_or(|(len, _)| d.len() > len) {
                        best = Some((d.len(), target));
                    }
                }
                RoutePattern::Default | RoutePattern::Exact(_) => {}
            }
        }
        best.map(|(_, t)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        let cases = [
            ("[127.0.0.1]:2526", "[127.0.0.1]:2526"),
            ("[127.0.0.1]", "[127.0.0.1]"),
            ("[IPv6:::1]:25", "[IPv6:::1]:25"),
            ("Relay.Example.NET:2525", "relay.example.net:2525"),
            ("relay.example.net", "relay.example.net"),
            ("mx:example.net", "mx:example.net"),
            ("lmtp:[127.0.0.1]:24", "lmtp:[127.0.0.1]:24"),
            ("lmtp:localhost:24", "lmtp:localhost:24"),
            ("lmtp:unix:/run/dovecot/lmtp", "lmtp:unix:/run/dovecot/lmtp"),
        ];
        for (input, shown) in cases {
            let t: RouteTarget = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(t.to_string(), shown);
            assert_eq!(shown.parse::<RouteTarget>().unwrap(), t);
        }
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "[127.0.0.1",
            "[300.0.0.1]",
            "[127.0.0.1]:0",
            "[127.0.0.1]x",
            "host:99999",
            "bad host",
            "lmtp:[127.0.0.1]",
            "lmtp:unix:relative",
            "-bad.example",
        ] {
            assert!(bad.parse::<RouteTarget>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn longest_match_wins() {
        let t = |s: &str| s.parse::<RouteTarget>().unwrap();
        let p = |s: &str| s.parse::<RoutePattern>().unwrap();
        let table = RouteTable::new(vec![
            (p("*"), t("[192.0.2.1]:25")),
            (p(".example.com"), t("relay.example.net")),
            (p(".b.example.com"), t("[192.0.2.2]")),
            (p("example.com"), t("[127.0.0.1]:2526")),
        ]);
        assert_eq!(table.lookup("Example.COM."), Some(&t("[127.0.0.1]:2526")));
        assert_eq!(table.lookup("a.example.com"), Some(&t("relay.example.net")));
        assert_eq!(table.lookup("x.b.example.com"), Some(&t("[192.0.2.2]")));
        assert_eq!(table.lookup("notexample.com"), Some(&t("[192.0.2.1]:25")));
        assert_eq!(
            RouteTable::<RouteTarget>::default().lookup("example.com"),
            None
        );
    }
}
