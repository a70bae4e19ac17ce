//! The value types a configuration file spells as strings: durations, sizes, CIDR networks,
//! and the LMTP/milter socket addresses.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub use crate::error::{AddressError, CidrError, DurationError, SizeError};

/// Parses "90s", "5m", "1h30m", "250ms", "5d", "2w". A bare number is refused: the unit
/// must be said.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DurationError::NoUnit(s.into()));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(DurationError::NotADuration(s.into()));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| DurationError::TooLarge(s.into()))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86_400)),
            "w" => Duration::from_secs(n.saturating_mul(604_800)),
            "" => {
                return Err(DurationError::MissingUnit(s.into()));
            }
            other => {
                return Err(DurationError::UnknownUnit {
                    input: s.into(),
                    unit: other.into(),
                });
            }
        };
        total = total.saturating_add(d);
    }
    Ok(total)
}

/// Formats a duration the way `parse_duration` reads it (largest units first).
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis() as u64;
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, len) in [
        ("w", 604_800_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ] {
        if ms >= len {
            out.push_str(&format!("{}{unit}", ms / len));
            ms %= len;
        }
    }
    out
}

/// Parses "50MB", "10MiB", "512KB", "1GB", "1000" (bytes), "0".
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(SizeError::NotASize(s.into()));
    }
    let n: u64 = t[..digits]
        .parse()
        .map_err(|_| SizeError::NumberTooLarge(s.into()))?;
    let mult: u64 = match t[digits..].trim() {
        "" | "B" => 1,
        "KB" | "kB" | "K" | "k" => 1000,
        "KiB" => 1 << 10,
        "MB" | "M" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" | "G" => 1_000_000_000,
        "GiB" => 1 << 30,
        other => {
            return Err(SizeError::UnknownUnit {
                input: s.into(),
                unit: other.into(),
            });
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| SizeError::TooLarge(s.into()))
}

/// An IP network in CIDR notation. A bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(CidrError::PrefixTooLong { prefix, max });
        }
        Ok(Cidr {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    /// IPv4-mapped IPv6 clients (::ffff:a.b.c.d) match IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix)
            };
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| CidrError::NotANetwork(s.into()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p.parse().map_err(|_| CidrError::NotAPrefix {
                input: s.into(),
                prefix: p.into(),
            })?,
        };
        Cidr::new(addr, prefix).map_err(|_| CidrError::PrefixTooLongIn {
            input: s.into(),
            prefix,
            max,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Where a milter listens: `inet:host:port` / `inet:[::1]:port` or `unix:/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MilterAddress {
    Inet(SocketAddr),
    Unix(PathBuf),
}

impl std::str::FromStr for MilterAddress {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, AddressError> {
        if let Some(p) = s.strip_prefix("unix:") {
            if !p.starts_with('/') {
                return Err(AddressError::RelativeUnixPath(s.into()));
            }
            return Ok(MilterAddress::Unix(p.into()));
        }
        let a = s
            .strip_prefix("inet:")
            .ok_or_else(|| AddressError::NoScheme(s.into()))?;
        parse_socket_addr(a).map(MilterAddress::Inet)
    }
}

/// `127.0.0.1:25`, `[::1]:25`, `localhost:25` (resolved to loopback only).
pub fn parse_socket_addr(s: &str) -> Result<SocketAddr, AddressError> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Some(port) = s.strip_prefix("localhost:") {
        let port: u16 = port.parse().map_err(|_| AddressError::BadPort(s.into()))?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    Err(AddressError::NotASocketAddress(s.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("5d"), Ok(Duration::from_secs(432_000)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(1_209_600)));
        for bad in ["", "90", "5x", "m", "1h30", "-1s", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(
            parse_duration("90")
                .unwrap_err()
                .to_string()
                .contains("no unit")
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("50MB"), Ok(50_000_000));
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("512KB"), Ok(512_000));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("0"), Ok(0));
        for bad in ["", "MB", "5 XB", "-1", "99999999999999999999GB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn networks() {
        let n: Cidr = "127.0.0.0/8".parse().unwrap();
        assert!(n.contains("127.1.2.3".parse().unwrap()));
        assert!(n.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!n.contains("128.0.0.1".parse().unwrap()));
        assert!(!n.contains("::1".parse().unwrap()));
        let h: Cidr = "::1".parse().unwrap();
        assert_eq!(h.to_string(), "::1/128");
        assert!(h.contains("::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "x/8", "10.0.0/8", "::1/129", "10.0.0.0/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!(
            "10.1.2.3/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
    }

    #[test]
    fn milter_addresses() {
        assert_eq!(
            "inet:127.0.0.1:8891".parse(),
            Ok(MilterAddress::Inet("127.0.0.1:8891".parse().unwrap()))
        );
        assert_eq!(
            "unix:/run/m.sock".parse(),
            Ok(MilterAddress::Unix("/run/m.sock".into()))
        );
        assert!("tcp:1.2.3.4:5".parse::<MilterAddress>().is_err());
        assert!("unix:rel".parse::<MilterAddress>().is_err());
    }

    proptest! {
        #[test]
        fn duration_round_trip(ms in 0u64..10_000_000_000) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn size_round_trip(n in 0u64..u64::MAX / 2000) {
            prop_assert_eq!(parse_size(&n.to_string()), Ok(n));
            prop_assert_eq!(parse_size(&format!("{n}KB")), Ok(n * 1000));
        }

        #[test]
        fn cidr_round_trip(a in any::<[u8; 4]>(), p in 0u8..=32) {
            let c = Cidr::new(IpAddr::from(a), p).unwrap();
            prop_assert_eq!(c.to_string().parse::<Cidr>(), Ok(c));
            prop_assert!(c.contains(IpAddr::from(a)));
        }

        #[test]
        fn parsers_never_panic(s in "\\PC{0,30}") {
            let _ = parse_duration(&s);
            let _ = parse_size(&s);
            let _ = s.parse::<Cidr>();
            let _ = s.parse::<MilterAddress>();
        }
    }
}
