//! ESMTP parameters of MAIL and RCPT: SIZE, BODY, SMTPUTF8, RET, ENVID, AUTH (RFC 1870,
//! 6152, 3030, 6531, 3461, 4954), NOTIFY and ORCPT, and RFC 3461 xtext.

use std::fmt;

/// BODY= (RFC 6152, RFC 3030).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    SevenBit,
    EightBitMime,
    BinaryMime,
}

/// RET= (RFC 3461): what a failure DSN returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    Full,
    Hdrs,
}

/// NOTIFY= (RFC 3461).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Notify {
    pub never: bool,
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailParams {
    pub size: Option<u64>,
    pub body: Option<BodyType>,
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    /// Decoded from xtext.
    pub envid: Option<String>,
    /// AUTH= mailbox, decoded from xtext (`<>` kept as is).
    pub auth: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RcptParams {
    pub notify: Option<Notify>,
    /// (address type, decoded address), e.g. ("rfc822", "user@example.org").
    pub orcpt: Option<(String, String)>,
}

/// Why a parameter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParamError {
    /// Not a parameter we know (`555 5.5.4`).
    #[error("unsupported parameter {0}")]
    Unknown(String),
    /// Known, but its value is wrong or it appeared twice (`501 5.5.4`).
    #[error("bad value for {0}")]
    BadValue(String),
}

/// Decodes RFC 3461 xtext (`+XX` hex escapes); None when malformed.
pub fn xtext_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex = s.get(i + 1..i + 3)?;
                if !hex
                    .bytes()
                    .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
                {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            c @ 33..=126 if c != b'=' => {
                out.push(c);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// Encodes as RFC 3461 xtext: `+`, `=`, and anything outside `!`..`~` become `+XX`.
pub fn xtext_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

fn split_kv(p: &str) -> (String, Option<&str>) {
    match p.split_once('=') {
        Some((k, v)) => (k.to_ascii_uppercase(), Some(v)),
        None => (p.to_ascii_uppercase(), None),
    }
}

fn set<T>(slot: &mut Option<T>, key: &str, v: T) -> Result<(), ParamError> {
    if slot.is_some() {
        return Err(ParamError::BadValue(key.into()));
    }
    *slot = Some(v);
    Ok(())
}

impl MailParams {
    pub fn parse(params: &str) -> Result<MailParams, ParamError> {
        let mut p = MailParams::default();
        for item in params.split(' ').filter(|s| !s.is_empty()) {
            let (key, val) = split_kv(item);
            let bad = || ParamError::BadValue(key.clone());
            match (key.as_str(), val) {
                ("SIZE", Some(v)) => {
                    if v.is_empty() || v.len() > 20 || !v.bytes().all(|c| c.is_ascii_digit()) {
                        return Err(bad());
                    }
                    set(&mut p.size, &key, v.parse().map_err(|_| bad())?)?;
                }
                ("BODY", Some(v)) => {
                    let b = match v.to_ascii_uppercase().as_str() {
                        "7BIT" => BodyType::SevenBit,
                        "8BITMIME" => BodyType::EightBitMime,
                        "BINARYMIME" => BodyType::BinaryMime,
                        _ => return Err(bad()),
                    };
                    set(&mut p.body, &key, b)?;
                }
                ("SMTPUTF8", None) => {
                    if p.smtputf8 {
                        return Err(bad());
                    }
                    p.smtputf8 = true;
                }
                ("RET", Some(v)) => {
                    let r = match v.to_ascii_uppercase().as_str() {
                        "FULL" => Ret::Full,
                        "HDRS" => Ret::Hdrs,
                        _ => return Err(bad()),
                    };
                    set(&mut p.ret, &key, r)?;
                }
                ("ENVID", Some(v)) => {
                    // RFC 3461 §4.4: an ENVID has at least one character.
                    let d = xtext_decode(v)
                        .filter(|d| !d.is_empty() && d.len() <= 100)
                        .ok_or_else(bad)?;
                    set(&mut p.envid, &key, d)?;
                }
                ("AUTH", Some(v)) => {
                    let d = xtext_decode(v).ok_or_else(bad)?;
                    set(&mut p.auth, &key, d)?;
                }
                ("SIZE" | "BODY" | "RET" | "ENVID" | "AUTH", None) | ("SMTPUTF8", Some(_)) => {
                    return Err(bad());
                }
                _ => return Err(ParamError::Unknown(key)),
            }
        }
        Ok(p)
    }
}

impl fmt::Display for MailParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = self.size {
            write!(f, " SIZE={s}")?;
        }
        if let Some(b) = self.body {
            let v = match b {
                BodyType::SevenBit => "7BIT",
                BodyType::EightBitMime => "8BITMIME",
                BodyType::BinaryMime => "BINARYMIME",
            };
            write!(f, " BODY={v}")?;
        }
        if self.smtputf8 {
            f.write_str(" SMTPUTF8")?;
        }
        if let Some(r) = self.ret {
            f.write_str(match r {
                Ret::Full => " RET=FULL",
                Ret::Hdrs => " RET=HDRS",
            })?;
        }
        if let Some(e) = &self.envid {
            write!(f, " ENVID={}", xtext_encode(e))?;
        }
        if let Some(a) = &self.auth {
            write!(f, " AUTH={}", xtext_encode(a))?;
        }
        Ok(())
    }
}

impl RcptParams {
    pub fn parse(params: &str) -> Result<RcptParams, ParamError> {
        let mut p = RcptParams::default();
        for item in params.split(' ').filter(|s| !s.is_empty()) {
            let (key, val) = split_kv(item);
            let bad = || ParamError::BadValue(key.clone());
            match (key.as_str(), val) {
                ("NOTIFY", Some(v)) => {
                    let mut n = Notify::default();
                    for word in v.split(',') {
                        let flag = match word.to_ascii_uppercase().as_str() {
                            "NEVER" => &mut n.never,
                            "SUCCESS" => &mut n.success,
                            "FAILURE" => &mut n.failure,
                            "DELAY" => &mut n.delay,
                            _ => return Err(bad()),
                        };
                        if *flag {
                            return Err(bad());
                        }
                        *flag = true;
                    }
                    if n.never && (n.success || n.failure || n.delay) {
                        return Err(bad());
                    }
                    set(&mut p.notify, &key, n)?;
                }
                ("ORCPT", Some(v)) => {
                    let (kind, addr) = v.split_once(';').ok_or_else(bad)?;
                    if kind.is_empty()
                        || !kind.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                    {
                        return Err(bad());
                    }
                    let addr = xtext_decode(addr)
                        .filter(|a| !a.is_empty())
                        .ok_or_else(bad)?;
                    set(&mut p.orcpt, &key, (kind.to_ascii_lowercase(), addr))?;
                }
                ("NOTIFY" | "ORCPT", None) => return Err(bad()),
                _ => return Err(ParamError::Unknown(key)),
            }
        }
        Ok(p)
    }
}

impl fmt::Display for RcptParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(n) = self.notify {
            if n.never {
                f.write_str(" NOTIFY=NEVER")?;
            } else {
                let words: Vec<&str> = [
                    (n.success, "SUCCESS"),
                    (n.failure, "FAILURE"),
                    (n.delay, "DELAY"),
                ]
                .into_iter()
                .filter_map(|(on, w)| on.then_some(w))
                .collect();
                if !words.is_empty() {
                    write!(f, " NOTIFY={}", words.join(","))?;
                }
            }
        }
        if let Some((kind, addr)) = &self.orcpt {
            write!(f, " ORCPT={kind};{}", xtext_encode(addr))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mail_params() {
        let p = MailParams::parse("SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ+2B1 AUTH=<>")
            .unwrap();
        assert_eq!(p.size, Some(1000));
        assert_eq!(p.body, Some(BodyType::EightBitMime));
        assert!(p.smtputf8);
        assert_eq!(p.ret, Some(Ret::Hdrs));
        assert_eq!(p.envid.as_deref(), Some("QQ+1"));
        assert_eq!(p.auth.as_deref(), Some("<>"));
        for bad in [
            "SIZE=x",
            "SIZE=",
            "SIZE=1 SIZE=2",
            "BODY=9BIT",
            "RET=ALL",
            "ENVID=a+zz",
            "ENVID=",
            "SMTPUTF8=1",
            "SIZE",
        ] {
            assert!(
                matches!(MailParams::parse(bad), Err(ParamError::BadValue(_))),
                "{bad}"
            );
        }
        assert_eq!(
            MailParams::parse("FOO=1"),
            Err(ParamError::Unknown("FOO".into()))
        );
    }

    #[test]
    fn rcpt_params() {
        let p = RcptParams::parse("NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+2Bb@example.org").unwrap();
        assert_eq!(
            p.notify,
            Some(Notify {
                success: true,
                failure: true,
                ..Default::default()
            })
        );
        assert_eq!(p.orcpt, Some(("rfc822".into(), "a+b@example.org".into())));
        for bad in [
            "NOTIFY=NEVER,SUCCESS",
            "NOTIFY=SOMETIMES",
            "NOTIFY=DELAY,DELAY",
            "ORCPT=noaddr",
            "ORCPT=rfc822;",
            "NOTIFY",
        ] {
            assert!(RcptParams::parse(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn xtext_round_trip(s in "\\PC{0,40}") {
            prop_assert_eq!(xtext_decode(&xtext_encode(&s)), Some(s));
        }

        #[test]
        fn mail_params_round_trip(size in proptest::option::of(0u64..u64::MAX), body in proptest::option::of(0..3u8),
                                  utf8 in any::<bool>(), ret in proptest::option::of(any::<bool>()),
                                  envid in proptest::option::of("[ -~]{1,30}")) {
            let p = MailParams {
                size,
                body: body.map(|b| [BodyType::SevenBit, BodyType::EightBitMime, BodyType::BinaryMime][b as usize]),
                smtputf8: utf8,
                ret: ret.map(|f| if f { Ret::Full } else { Ret::Hdrs }),
                envid,
                auth: None,
            };
            prop_assert_eq!(MailParams::parse(p.to_string().trim()), Ok(p));
        }

        #[test]
        fn rcpt_params_round_trip(flags in 0u8..16, orcpt in proptest::option::of("[ -~]{1,30}")) {
            let notify = if flags == 0 { None } else if flags == 8 {
                Some(Notify { never: true, ..Default::default() })
            } else {
                Some(Notify { never: false, success: flags & 1 != 0, failure: flags & 2 != 0, delay: flags & 4 != 0 })
                    .filter(|n| n.success || n.failure || n.delay)
            };
            let p = RcptParams { notify, orcpt: orcpt.map(|a| ("rfc822".to_string(), a)) };
            prop_assert_eq!(RcptParams::parse(p.to_string().trim()), Ok(p));
        }
    }
}
