//! SMTP/LMTP commands (RFC 5321 §4.1, RFC 2033, RFC 3030, RFC 3207, RFC 4954): parsing one
//! command line for the server, formatting one for the client.

use std::fmt;

use crate::address::{self, AddressError, ForwardPath, ReversePath};
use crate::params::{MailParams, ParamError, RcptParams};
use crate::reply::{EnhancedCode, Reply};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Lhlo(String),
    Mail {
        from: ReversePath,
        params: MailParams,
    },
    Rcpt {
        to: ForwardPath,
        params: RcptParams,
    },
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop(Option<String>),
    Quit,
    Vrfy(String),
    Expn(String),
    Help(Option<String>),
    StartTls,
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
}

/// Why a command line was refused; [`CommandError::reply`] is what the server answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// No such verb (`500 5.5.2`).
    #[error("command unrecognized")]
    Unrecognized,
    /// The verb is known but its arguments are not (`501 5.5.4`).
    #[error("syntax error in arguments of {0}")]
    Syntax(&'static str),
    /// MAIL FROM with a malformed address (`501 5.1.7`).
    #[error("bad sender address syntax: {0}")]
    BadSender(AddressError),
    /// RCPT TO with a malformed address (`501 5.1.3`).
    #[error("bad recipient address syntax: {0}")]
    BadRecipient(AddressError),
    /// RCPT TO with an address that parses but cannot be a forward-path (`553 5.1.3`).
    #[error("recipient address not acceptable: {0}")]
    UnacceptableRecipient(AddressError),
    /// An ESMTP parameter we do not support (`555 5.5.4`).
    #[error("{0}")]
    UnknownParam(String),
    /// An ESMTP parameter with a bad value (`501 5.5.4`).
    #[error("{0}")]
    BadParam(String),
    /// The line is not valid text (a bare CR, NUL or invalid UTF-8).
    #[error("invalid characters in command")]
    BadCharacters,
}

impl CommandError {
    pub fn reply(&self) -> Reply {
        let (code, e, text): (u16, EnhancedCode, String) = match self {
            CommandError::Unrecognized => (
                500,
                EnhancedCode::new(5, 5, 2),
                "Error: command not recognized".into(),
            ),
            CommandError::Syntax(verb) => (
                501,
                EnhancedCode::new(5, 5, 4),
                format!("Syntax error in {verb} arguments"),
            ),
            CommandError::BadSender(e) => (
                501,
                EnhancedCode::new(5, 1, 7),
                format!("Bad sender address syntax ({e})"),
            ),
            CommandError::BadRecipient(e) => (
                501,
                EnhancedCode::new(5, 1, 3),
                format!("Bad recipient address syntax ({e})"),
            ),
            CommandError::UnacceptableRecipient(e) => (
                553,
                EnhancedCode::new(5, 1, 3),
                format!("Recipient address rejected ({e})"),
            ),
            CommandError::UnknownParam(p) => (
                555,
                EnhancedCode::new(5, 5, 4),
                format!("Unsupported parameter: {p}"),
            ),
            CommandError::BadParam(p) => (
                501,
                EnhancedCode::new(5, 5, 4),
                format!("Bad parameter: {p}"),
            ),
            CommandError::BadCharacters => (
                500,
                EnhancedCode::new(5, 5, 2),
                "Error: invalid characters in command".into(),
            ),
        };
        Reply::new(code, Some(e), &text)
    }
}

fn param_err(e: ParamError) -> CommandError {
    match e {
        ParamError::Unknown(p) => CommandError::UnknownParam(p),
        other => CommandError::BadParam(other.to_string()),
    }
}

/// Strips `KEYWORD:` case-insensitively, tolerating one space after the colon (Postfix does).
fn strip_keyword<'a>(arg: &'a str, kw: &str) -> Option<&'a str> {
    let head = arg.get(..kw.len())?;
    if !head.eq_ignore_ascii_case(kw) {
        return None;
    }
    let rest = &arg[kw.len()..];
    Some(rest.strip_prefix(' ').unwrap_or(rest))
}

fn domain_arg(arg: &str, verb: &'static str) -> Result<String, CommandError> {
    let a = arg.trim();
    if a.is_empty() || a.contains(' ') || a.len() > 255 {
        return Err(CommandError::Syntax(verb));
    }
    Ok(a.to_owned())
}

impl Command {
    /// Parses one command line without its CRLF.
    pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
        if line.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(CommandError::BadCharacters);
        }
        let line = std::str::from_utf8(line).map_err(|_| CommandError::BadCharacters)?;
        let line = line.trim_end_matches([' ', '\t']);
        let (verb, arg) = match line.split_once(' ') {
            Some((v, a)) => (v, a),
            None => (line, ""),
        };
        let v = verb.to_ascii_uppercase();
        let none = |c: Command, name: &'static str| {
            if arg.trim().is_empty() {
                Ok(c)
            } else {
                Err(CommandError::Syntax(name))
            }
        };
        match v.as_str() {
            "EHLO" => Ok(Command::Ehlo(domain_arg(arg, "EHLO")?)),
            "HELO" => Ok(Command::Helo(domain_arg(arg, "HELO")?)),
            "LHLO" => Ok(Command::Lhlo(domain_arg(arg, "LHLO")?)),
            "MAIL" => {
                let rest = strip_keyword(arg, "FROM:").ok_or(CommandError::Syntax("MAIL"))?;
                let (inner, params) = address::bracketed(rest).map_err(CommandError::BadSender)?;
                let from = ReversePath::parse_inner(inner).map_err(CommandError::BadSender)?;
                if !params.is_empty() && !params.starts_with(' ') {
                    return Err(CommandError::Syntax("MAIL"));
                }
                let params = MailParams::parse(params).map_err(param_err)?;
                Ok(Command::Mail { from, params })
            }
            "RCPT" => {
                let rest = strip_keyword(arg, "TO:").ok_or(CommandError::Syntax("RCPT"))?;
                let (inner, params) =
                    address::bracketed(rest).map_err(CommandError::BadRecipient)?;
                let to = ForwardPath::parse_inner(inner).map_err(|e| match e {
                    AddressError::NoDomain => CommandError::UnacceptableRecipient(e),
                    e => CommandError::BadRecipient(e),
                })?;
                if !params.is_empty() && !params.starts_with(' ') {
                    return Err(CommandError::Syntax("RCPT"));
                }
                let params = RcptParams::parse(params).map_err(param_err)?;
                Ok(Command::Rcpt { to, params })
            }
            "DATA" => none(Command::Data, "DATA"),
            "BDAT" => {
                let mut it = arg.split(' ').filter(|s| !s.is_empty());
                let size = it
                    .next()
                    .filter(|s| s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse().ok())
                    .ok_or(CommandError::Syntax("BDAT"))?;
                let last = match it.next() {
                    None => false,
                    Some(w) if w.eq_ignore_ascii_case("LAST") => true,
                    Some(_) => return Err(CommandError::Syntax("BDAT")),
                };
                if it.next().is_some() {
                    return Err(CommandError::Syntax("BDAT"));
                }
                Ok(Command::Bdat { size, last })
            }
            "RSET" => none(Command::Rset, "RSET"),
            "NOOP" => Ok(Command::Noop((!arg.is_empty()).then(|| arg.to_owned()))),
            "QUIT" => none(Command::Quit, "QUIT"),
            "VRFY" if !arg.trim().is_empty() => Ok(Command::Vrfy(arg.trim().to_owned())),
            "EXPN" if !arg.trim().is_empty() => Ok(Command::Expn(arg.trim().to_owned())),
            "VRFY" => Err(CommandError::Syntax("VRFY")),
            "EXPN" => Err(CommandError::Syntax("EXPN")),
            "HELP" => Ok(Command::Help((!arg.is_empty()).then(|| arg.to_owned()))),
            "STARTTLS" => none(Command::StartTls, "STARTTLS"),
            "AUTH" => {
                let mut it = arg.split(' ').filter(|s| !s.is_empty());
                let mechanism = it
                    .next()
                    .ok_or(CommandError::Syntax("AUTH"))?
                    .to_ascii_uppercase();
                let initial = it.next().map(str::to_owned);
                if it.next().is_some() {
                    return Err(CommandError::Syntax("AUTH"));
                }
                Ok(Command::Auth { mechanism, initial })
            }
            _ => Err(CommandError::Unrecognized),
        }
    }

    /// The wire line, with CRLF.
    pub fn to_line(&self) -> String {
        format!("{self}\r\n")
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Ehlo(d) => write!(f, "EHLO {d}"),
            Command::Helo(d) => write!(f, "HELO {d}"),
            Command::Lhlo(d) => write!(f, "LHLO {d}"),
            Command::Mail { from, params } => write!(f, "MAIL FROM:{from}{params}"),
            Command::Rcpt { to, params } => write!(f, "RCPT TO:{to}{params}"),
            Command::Data => f.write_str("DATA"),
            Command::Bdat { size, last: true } => write!(f, "BDAT {size} LAST"),
            Command::Bdat { size, last: false } => write!(f, "BDAT {size}"),
            Command::Rset => f.write_str("RSET"),
            Command::Noop(None) => f.write_str("NOOP"),
            Command::Noop(Some(a)) => write!(f, "NOOP {a}"),
            Command::Quit => f.write_str("QUIT"),
            Command::Vrfy(a) => write!(f, "VRFY {a}"),
            Command::Expn(a) => write!(f, "EXPN {a}"),
            Command::Help(None) => f.write_str("HELP"),
            Command::Help(Some(a)) => write!(f, "HELP {a}"),
            Command::StartTls => f.write_str("STARTTLS"),
            Command::Auth {
                mechanism,
                initial: None,
            } => write!(f, "AUTH {mechanism}"),
            Command::Auth {
                mechanism,
                initial: Some(i),
            } => write!(f, "AUTH {mechanism} {i}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::{Domain, Mailbox};
    use proptest::prelude::*;

    fn code(line: &str) -> String {
        match Command::parse(line.as_bytes()) {
            Ok(c) => format!("ok {c}"),
            Err(e) => {
                let r = e.reply();
                format!(
                    "{} {}",
                    r.code(),
                    r.enhanced().map(|e| e.to_string()).unwrap_or_default()
                )
            }
        }
    }

    #[test]
    fn table_of_lines_and_replies() {
        let cases = [
            ("EHLO client.example", "ok EHLO client.example"),
            ("ehlo [127.0.0.1]", "ok EHLO [127.0.0.1]"),
            ("EHLO", "501 5.5.4"),
            ("HELO a b", "501 5.5.4"),
            ("MAIL FROM:<a@b.example>", "ok MAIL FROM:<a@b.example>"),
            (
                "mail from: <a@b.example> size=10",
                "ok MAIL FROM:<a@b.example> SIZE=10",
            ),
            ("MAIL FROM:<>", "ok MAIL FROM:<>"),
            ("MAIL FROM:a@b.example", "501 5.1.7"),
            ("MAIL FROM:<a@@b>", "501 5.1.7"),
            ("MAIL TO:<a@b.example>", "501 5.5.4"),
            ("MAIL FROM:<a@b.example> FOO=1", "555 5.5.4"),
            ("MAIL FROM:<a@b.example> SIZE=x", "501 5.5.4"),
            ("MAIL FROM:<a@b.example>SIZE=1", "501 5.5.4"),
            ("RCPT TO:<postmaster>", "ok RCPT TO:<postmaster>"),
            (
                "RCPT TO:<@r.example:u@d.example>",
                "ok RCPT TO:<u@d.example>",
            ),
            ("RCPT TO:<user>", "553 5.1.3"),
            ("RCPT TO:<us er@d.example>", "501 5.1.3"),
            ("RCPT TO:u@d.example", "501 5.1.3"),
            (
                "RCPT TO:<u@d.example> NOTIFY=NEVER",
                "ok RCPT TO:<u@d.example> NOTIFY=NEVER",
            ),
            ("DATA", "ok DATA"),
            ("DATA x", "501 5.5.4"),
            ("BDAT 100", "ok BDAT 100"),
            ("BDAT 0 last", "ok BDAT 0 LAST"),
            ("BDAT x", "501 5.5.4"),
            ("BDAT 1 FIRST", "501 5.5.4"),
            ("RSET", "ok RSET"),
            ("NOOP hi", "ok NOOP hi"),
            ("QUIT", "ok QUIT"),
            ("VRFY u", "ok VRFY u"),
            ("STARTTLS", "ok STARTTLS"),
            ("AUTH PLAIN AGFAYg==", "ok AUTH PLAIN AGFAYg=="),
            ("XYZZY", "500 5.5.2"),
            ("", "500 5.5.2"),
            ("MAIL FROM:<a\rb@c>", "500 5.5.2"),
        ];
        for (line, want) in cases {
            assert_eq!(code(line), want, "{line:?}");
        }
    }

    #[test]
    fn utf8_needs_reporting() {
        let Ok(Command::Rcpt {
            to: ForwardPath::Mailbox(m),
            ..
        }) = Command::parse("RCPT TO:<δοκιμή@παράδειγμα.δοκιμή>".as_bytes())
        else {
            panic!("utf-8 address did not parse");
        };
        assert!(m.needs_smtputf8());
        assert!(Command::parse(b"MAIL FROM:<\xff@x.org>").is_err());
    }

    fn arb_cmd() -> impl Strategy<Value = Command> {
        let mbox = ("[a-z0-9.]{0,8}[a-z]", "[a-z]{1,8}\\.[a-z]{2,4}")
            .prop_map(|(l, d)| Mailbox::new(l, Domain::Name(d)));
        prop_oneof![
            "[a-z]{1,10}\\.[a-z]{2,3}".prop_map(Command::Ehlo),
            "[a-z]{1,10}".prop_map(Command::Helo),
            mbox.clone().prop_map(|m| Command::Mail {
                from: ReversePath::Mailbox(m),
                params: MailParams::default()
            }),
            (mbox, 0u64..1_000_000).prop_map(|(m, s)| Command::Mail {
                from: ReversePath::Mailbox(m),
                params: MailParams {
                    size: Some(s),
                    ..Default::default()
                },
            }),
            Just(Command::Rcpt {
                to: ForwardPath::Postmaster,
                params: RcptParams::default()
            }),
            (0u64..u64::MAX, any::<bool>()).prop_map(|(size, last)| Command::Bdat { size, last }),
            Just(Command::Data),
            Just(Command::Rset),
            Just(Command::Quit),
            Just(Command::StartTls),
        ]
    }

    proptest! {
        #[test]
        fn command_round_trip(c in arb_cmd()) {
            let line = c.to_line();
            prop_assert!(line.ends_with("\r\n"));
            prop_assert_eq!(Command::parse(line.trim_end().as_bytes()), Ok(c));
        }

        #[test]
        fn parse_never_panics(line in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Err(e) = Command::parse(&line) {
                let r = e.reply();
                prop_assert!(r.code() >= 500);
            }
        }
    }
}
