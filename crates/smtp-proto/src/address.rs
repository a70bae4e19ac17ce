//! Mailboxes and paths (RFC 5321 §4.1.2, RFC 6531 for UTF-8): parsing from the wire and
//! formatting back, with the length limits of §4.5.3.1.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Why an address did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// The path is not enclosed in `<` `>`.
    #[error("path must be enclosed in <>")]
    MissingBrackets,
    /// The local part is empty or not a dot-atom or quoted string.
    #[error("bad local part")]
    BadLocalPart,
    /// The domain is not a valid name or address literal.
    #[error("bad domain")]
    BadDomain,
    /// There is no `@domain` where one is required.
    #[error("address has no domain")]
    NoDomain,
    /// Local part over 64 octets, domain over 255, or path over 256.
    #[error("address too long")]
    TooLong,
    /// A source route that does not parse.
    #[error("bad source route")]
    BadRoute,
}

/// The part after `@`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Domain {
    /// A domain name as sent (case kept; compare case-insensitively).
    Name(String),
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
    /// `[tag:content]` general address literal.
    General {
        tag: String,
        content: String,
    },
}

impl Domain {
    pub fn is_literal(&self) -> bool {
        !matches!(self, Domain::Name(_))
    }

    /// The lowercase name without a trailing dot, or the literal as written.
    pub fn normalized(&self) -> String {
        match self {
            Domain::Name(n) => n.strip_suffix('.').unwrap_or(n).to_lowercase(),
            other => other.to_string(),
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Name(n) => f.write_str(n),
            Domain::Ipv4(a) => write!(f, "[{a}]"),
            Domain::Ipv6(a) => write!(f, "[IPv6:{a}]"),
            Domain::General { tag, content } => write!(f, "[{tag}:{content}]"),
        }
    }
}

/// `local-part@domain`. The local part is stored decoded (quotes and backslashes removed).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    local: String,
    domain: Domain,
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn is_dot_atom(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|a| !a.is_empty() && a.chars().all(is_atext))
}

impl Mailbox {
    pub fn new(local: impl Into<String>, domain: Domain) -> Self {
        Mailbox {
            local: local.into(),
            domain,
        }
    }

    pub fn local_part(&self) -> &str {
        &self.local
    }

    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// True when the address cannot be sent without SMTPUTF8 (RFC 6531).
    pub fn needs_smtputf8(&self) -> bool {
        !self.local.is_ascii() || matches!(&self.domain, Domain::Name(n) if !n.is_ascii())
    }

    /// Parses `local@domain` (no brackets).
    pub fn parse(s: &str) -> Result<Mailbox, AddressError> {
        let (local, rest) = parse_local(s)?;
        let domain = rest.strip_prefix('@').ok_or(AddressError::NoDomain)?;
        let domain = parse_domain(domain)?;
        let m = Mailbox { local, domain };
        if m.to_string().len() > 254 {
            return Err(AddressError::TooLong);
        }
        Ok(m)
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_dot_atom(&self.local) {
            f.write_str(&self.local)?;
        } else {
            f.write_str("\"")?;
            for c in self.local.chars() {
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            f.write_str("\"")?;
        }
        write!(f, "@{}", self.domain)
    }
}

/// Parses a local part at the start of `s`; returns it decoded and the rest of `s`.
fn parse_local(s: &str) -> Result<(String, &str), AddressError> {
    if let Some(rest) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    if out.len() > 64 {
                        return Err(AddressError::TooLong);
                    }
                    return Ok((out, &rest[i + 1..]));
                }
                '\\' => match chars.next() {
                    Some((_, q)) if q == ' ' || q.is_ascii_graphic() => out.push(q),
                    _ => return Err(AddressError::BadLocalPart),
                },
                c if c == ' ' || (c.is_ascii_graphic() && c != '\\') || !c.is_ascii() => {
                    out.push(c)
                }
                _ => return Err(AddressError::BadLocalPart),
            }
        }
        return Err(AddressError::BadLocalPart);
    }
    let end = s.find('@').unwrap_or(s.len());
    let local = &s[..end];
    if !is_dot_atom(local) {
        return Err(AddressError::BadLocalPart);
    }
    if local.len() > 64 {
        return Err(AddressError::TooLong);
    }
    Ok((local.to_owned(), &s[end..]))
}

fn parse_domain(s: &str) -> Result<Domain, AddressError> {
    if s.len() > 255 {
        return Err(AddressError::TooLong);
    }
    if let Some(inner) = s.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or(AddressError::BadDomain)?;
        if let Some(v6) = inner
            .strip_prefix("IPv6:")
            .or_else(|| inner.strip_prefix("ipv6:"))
        {
            return v6
                .parse()
                .map(Domain::Ipv6)
                .map_err(|_| AddressError::BadDomain);
        }
        if let Ok(v4) = inner.parse::<Ipv4Addr>() {
            return Ok(Domain::Ipv4(v4));
        }
        let (tag, content) = inner.split_once(':').ok_or(AddressError::BadDomain)?;
        let tag_ok = !tag.is_empty()
            && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !tag.ends_with('-');
        let content_ok = !content.is_empty()
            && content
                .bytes()
                .all(|b| (33..=126).contains(&b) && !matches!(b, b'[' | b']' | b'\\'));
        if !tag_ok || !content_ok {
            return Err(AddressError::BadDomain);
        }
        return Ok(Domain::General {
            tag: tag.into(),
            content: content.into(),
        });
    }
    let name = s.strip_suffix('.').unwrap_or(s);
    let ok = !name.is_empty()
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
        });
    if !ok {
        return Err(AddressError::BadDomain);
    }
    Ok(Domain::Name(s.to_owned()))
}

/// Strips an optional source route `@a,@b:` (RFC 5321 §4.1.2: accepted, ignored).
fn strip_route(s: &str) -> Result<&str, AddressError> {
    if !s.starts_with('@') {
        return Ok(s);
    }
    let (route, rest) = s.split_once(':').ok_or(AddressError::BadRoute)?;
    for hop in route.split(',') {
        let d = hop.strip_prefix('@').ok_or(AddressError::BadRoute)?;
        parse_domain(d).map_err(|_| AddressError::BadRoute)?;
    }
    Ok(rest)
}

/// Splits `<...>` off the front of `s`; returns the inside and what follows.
pub(crate) fn bracketed(s: &str) -> Result<(&str, &str), AddressError> {
    let inner = s.strip_prefix('<').ok_or(AddressError::MissingBrackets)?;
    // A '>' may appear inside a quoted local part: scan with quote awareness.
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Ok((&inner[..i], &inner[i + 1..])),
            _ => {}
        }
    }
    Err(AddressError::MissingBrackets)
}

/// MAIL FROM's argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReversePath {
    /// `<>`: bounces and other notifications.
    Null,
    Mailbox(Mailbox),
}

impl ReversePath {
    /// Parses the inside of `<...>`.
    pub fn parse_inner(s: &str) -> Result<ReversePath, AddressError> {
        if s.is_empty() {
            return Ok(ReversePath::Null);
        }
        if s.len() > 256 {
            return Err(AddressError::TooLong);
        }
        Mailbox::parse(strip_route(s)?).map(ReversePath::Mailbox)
    }
}

impl fmt::Display for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => f.write_str("<>"),
            ReversePath::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

/// RCPT TO's argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardPath {
    /// `<postmaster>` without a domain (RFC 5321 §4.1.1.3), any case.
    Postmaster,
    Mailbox(Mailbox),
}

impl ForwardPath {
    pub fn parse_inner(s: &str) -> Result<ForwardPath, AddressError> {
        if s.eq_ignore_ascii_case("postmaster") {
            return Ok(ForwardPath::Postmaster);
        }
        if s.is_empty() {
            return Err(AddressError::BadLocalPart);
        }
        if s.len() > 256 {
            return Err(AddressError::TooLong);
        }
        Mailbox::parse(strip_route(s)?).map(ForwardPath::Mailbox)
    }
}

impl fmt::Display for ForwardPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardPath::Postmaster => f.write_str("<postmaster>"),
            ForwardPath::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_valid_mailboxes() {
        let cases = [
            ("user@example.org", "user", "example.org"),
            (
                "first.last+tag@sub.example.org",
                "first.last+tag",
                "sub.example.org",
            ),
            ("\"john doe\"@example.org", "john doe", "example.org"),
            ("\"a\\\"b\"@example.org", "a\"b", "example.org"),
            ("\"a@b\"@example.org", "a@b", "example.org"),
            ("user@[192.0.2.1]", "user", "[192.0.2.1]"),
            ("user@[IPv6:2001:db8::1]", "user", "[IPv6:2001:db8::1]"),
            ("用户@例子.测试", "用户", "例子.测试"),
            ("user@example.org.", "user", "example.org."),
        ];
        for (input, local, domain) in cases {
            let m = Mailbox::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(m.local_part(), local);
            assert_eq!(m.domain().to_string(), domain);
        }
        assert!(Mailbox::parse("用户@example.org").unwrap().needs_smtputf8());
        assert!(!Mailbox::parse("a@example.org").unwrap().needs_smtputf8());
    }

    #[test]
    fn rejects_invalid_mailboxes() {
        for bad in [
            "",
            "user",
            "@example.org",
            "user@",
            "us er@example.org",
            ".user@example.org",
            "user.@example.org",
            "a..b@example.org",
            "user@-bad.org",
            "user@bad-.org",
            "user@exa mple.org",
            "user@[300.1.1.1]",
            "user@[IPv6:zz]",
            "\"unterminated@x.org",
            "user@example..org",
            "a\\b@example.org",
            "user@[]",
            "\"a\rb\"@x.org",
        ] {
            assert!(Mailbox::parse(bad).is_err(), "{bad:?} parsed");
        }
        let long_local = format!("{}@example.org", "a".repeat(65));
        assert_eq!(Mailbox::parse(&long_local), Err(AddressError::TooLong));
    }

    #[test]
    fn paths() {
        assert_eq!(ReversePath::parse_inner(""), Ok(ReversePath::Null));
        assert_eq!(
            ForwardPath::parse_inner("PostMaster"),
            Ok(ForwardPath::Postmaster)
        );
        assert!(ForwardPath::parse_inner("").is_err());
        let routed = ForwardPath::parse_inner("@a.example,@b.example:user@c.example").unwrap();
        assert_eq!(routed.to_string(), "<user@c.example>");
        assert!(ForwardPath::parse_inner("@a.example:").is_err());
        assert!(ForwardPath::parse_inner("@bad_:u@c.example").is_err());
        assert_eq!(
            bracketed("<\"a>b\"@x.org> SIZE=1"),
            Ok(("\"a>b\"@x.org", " SIZE=1"))
        );
        assert_eq!(bracketed("user@x.org"), Err(AddressError::MissingBrackets));
    }

    fn arb_mailbox() -> impl Strategy<Value = Mailbox> {
        let local = prop_oneof![
            "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,10}(\\.[a-zA-Z0-9_-]{1,8}){0,2}",
            "[ -~]{1,20}",
            "[a-z]{1,5}[é用]{1,2}",
        ];
        let domain = prop_oneof![
            "[a-z0-9]{1,10}(\\.[a-z0-9]{1,10}){0,3}".prop_map(Domain::Name),
            any::<[u8; 4]>().prop_map(|o| Domain::Ipv4(o.into())),
            any::<[u16; 8]>().prop_map(|s| Domain::Ipv6(s.into())),
        ];
        (local, domain).prop_map(|(l, d)| Mailbox::new(l, d))
    }

    proptest! {
        #[test]
        fn mailbox_round_trip(m in arb_mailbox()) {
            let text = m.to_string();
            prop_assert_eq!(Mailbox::parse(&text), Ok(m));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = Mailbox::parse(&s);
            let _ = ForwardPath::parse_inner(&s);
            let _ = bracketed(&s);
        }
    }
}
