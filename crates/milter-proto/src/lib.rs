//! The sendmail milter protocol (version 6, as libmilter, OpenDKIM, rspamd and Postfix speak
//! it), without I/O: MTA-to-milter commands are encoded into packets, milter-to-MTA packets are
//! framed out of a byte stream and decoded into typed responses.
//!
//! A packet is a 32-bit big-endian length (counting the command byte), the command byte, and
//! the data. Strings inside are NUL-terminated.

pub mod consts;
mod flags;

use consts::*;
pub use flags::{Actions, Steps};

/// Packets longer than this are refused: milters send headers and body chunks of at most
/// 64 KiB (1 MiB with the largest negotiated MDS), so anything bigger is a broken peer.
pub const MAX_PACKET: usize = 2 * 1024 * 1024;

/// What postrider asks of a milter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Option negotiation: protocol version, the actions we allow, the protocol steps we
    /// can skip.
    OptNeg {
        version: u32,
        actions: Actions,
        protocol: Steps,
    },
    /// Macros for the stage named by `stage` (the command character that follows).
    Macros {
        stage: u8,
        pairs: Vec<(String, String)>,
    },
    Connect {
        hostname: String,
        addr: Option<std::net::SocketAddr>,
    },
    Helo(String),
    Mail(Vec<String>),
    Rcpt(Vec<String>),
    Data,
    Header {
        name: String,
        value: String,
    },
    EndOfHeaders,
    Body(Vec<u8>),
    EndOfBody,
    Abort,
    Quit,
    Unknown(String),
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    // An embedded NUL would end the string early on the milter's side.
    out.extend(s.bytes().filter(|&b| b != 0));
    out.push(0);
}

fn packet(cmd: u8, data: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(data.len() + 1).expect("packets are small");
    out.extend_from_slice(&len.to_be_bytes());
    out.push(cmd);
    out.extend_from_slice(data);
}

impl Command {
    pub fn code(&self) -> u8 {
        match self {
            Command::OptNeg { .. } => SMFIC_OPTNEG,
            Command::Macros { .. } => SMFIC_MACRO,
            Command::Connect { .. } => SMFIC_CONNECT,
            Command::Helo(_) => SMFIC_HELO,
            Command::Mail(_) => SMFIC_MAIL,
            Command::Rcpt(_) => SMFIC_RCPT,
            Command::Data => SMFIC_DATA,
            Command::Header { .. } => SMFIC_HEADER,
            Command::EndOfHeaders => SMFIC_EOH,
            Command::Body(_) => SMFIC_BODY,
            Command::EndOfBody => SMFIC_BODYEOB,
            Command::Abort => SMFIC_ABORT,
            Command::Quit => SMFIC_QUIT,
            Command::Unknown(_) => SMFIC_UNKNOWN,
        }
    }

    /// Appends the packet for this command to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut d = Vec::new();
        match self {
            Command::OptNeg {
                version,
                actions,
                protocol,
            } => {
                d.extend_from_slice(&version.to_be_bytes());
                d.extend_from_slice(&actions.bits().to_be_bytes());
                d.extend_from_slice(&protocol.bits().to_be_bytes());
            }
            Command::Macros { stage, pairs } => {
                d.push(*stage);
                for (k, v) in pairs {
                    cstr(&mut d, k);
                    cstr(&mut d, v);
                }
            }
            Command::Connect { hostname, addr } => {
                cstr(&mut d, hostname);
                match addr {
                    Some(a) => {
                        d.push(if a.is_ipv4() { b'4' } else { b'6' });
                        d.extend_from_slice(&a.port().to_be_bytes());
                        cstr(&mut d, &a.ip().to_string());
                    }
                    None => d.push(b'U'),
                }
            }
            Command::Helo(s) | Command::Unknown(s) => cstr(&mut d, s),
            Command::Mail(args) | Command::Rcpt(args) => {
                for a in args {
                    cstr(&mut d, a);
                }
            }
            Command::Header { name, value } => {
                cstr(&mut d, name);
                cstr(&mut d, value);
            }
            Command::Body(chunk) => d.extend_from_slice(chunk),
            Command::Data
            | Command::EndOfHeaders
            | Command::EndOfBody
            | Command::Abort
            | Command::Quit => {}
        }
        packet(self.code(), &d, out);
    }
}

/// What a milter answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    OptNeg {
        version: u32,
        actions: Actions,
        protocol: Steps,
        /// Macros the milter wants per stage (SMFIM_* index, space-separated names).
        macros: Vec<(u32, String)>,
    },
    Continue,
    Accept,
    Reject,
    Tempfail,
    Discard,
    Skip,
    /// A full SMTP reply, e.g. `550 5.7.1 Spam`.
    ReplyCode(String),
    Progress,
    Quarantine(String),
    AddHeader {
        name: String,
        value: String,
    },
    InsertHeader {
        index: u32,
        name: String,
        value: String,
    },
    /// `index` counts headers of that name from 1; an empty value deletes.
    ChangeHeader {
        index: u32,
        name: String,
        value: String,
    },
    AddRcpt(String),
    AddRcptPar {
        rcpt: String,
        args: String,
    },
    DelRcpt(String),
    ChangeFrom {
        from: String,
        args: String,
    },
    ReplaceBody(Vec<u8>),
    ConnFail,
    Shutdown,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("milter packet of {0} bytes is too long")]
    TooLong(usize),
    #[error("empty milter packet")]
    Empty,
    #[error("unknown milter response '{0}'")]
    UnknownCode(char),
    #[error("malformed milter response '{code}': {why}")]
    Malformed { code: char, why: &'static str },
}

fn strings(data: &[u8]) -> Vec<String> {
    let data = data.strip_suffix(&[0]).unwrap_or(data);
    data.split(|&b| b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn be32(data: &[u8], code: u8) -> Result<(u32, &[u8]), Error> {
    if data.len() < 4 {
        return Err(Error::Malformed {
            code: code as char,
            why: "shorter than a 32-bit field",
        });
    }
    let (n, rest) = data.split_at(4);
    Ok((u32::from_be_bytes(n.try_into().expect("4 bytes")), rest))
}

fn two(data: &[u8], code: u8) -> Result<(String, String), Error> {
    let mut s = strings(data).into_iter();
    match (s.next(), s.next()) {
        (Some(a), b) if !a.is_empty() || b.is_some() => Ok((a, b.unwrap_or_default())),
        _ => Err(Error::Malformed {
            code: code as char,
            why: "expected two strings",
        }),
    }
}

impl Response {
    /// Decodes one packet (its command byte and data).
    pub fn decode(code: u8, data: &[u8]) -> Result<Response, Error> {
        let one = || strings(data).into_iter().next().unwrap_or_default();
        Ok(match code {
            SMFIR_CONTINUE => Response::Continue,
            SMFIR_ACCEPT => Response::Accept,
            SMFIR_REJECT => Response::Reject,
            SMFIR_TEMPFAIL => Response::Tempfail,
            SMFIR_DISCARD => Response::Discard,
            SMFIR_SKIP => Response::Skip,
            SMFIR_PROGRESS => Response::Progress,
            SMFIR_CONN_FAIL => Response::ConnFail,
            SMFIR_SHUTDOWN => Response::Shutdown,
            SMFIR_REPLYCODE => {
                let text = one();
                let ok = text.len() >= 3
                    && text.as_bytes()[..3].iter().all(u8::is_ascii_digit)
                    && matches!(text.as_bytes()[0], b'4' | b'5');
                if !ok {
                    return Err(Error::Malformed {
                        code: 'y',
                        why: "reply code must be 4xx or 5xx",
                    });
                }
                Response::ReplyCode(text)
            }
            SMFIR_QUARANTINE => Response::Quarantine(one()),
            SMFIR_ADDHEADER => {
                let (name, value) = two(data, code)?;
                Response::AddHeader { name, value }
            }
            SMFIR_INSHEADER | SMFIR_CHGHEADER => {
                let (index, rest) = be32(data, code)?;
                let (name, value) = two(rest, code)?;
                if code == SMFIR_INSHEADER {
                    Response::InsertHeader { index, name, value }
                } else {
                    Response::ChangeHeader { index, name, value }
                }
            }
            SMFIR_ADDRCPT => Response::AddRcpt(one()),
            SMFIR_DELRCPT => Response::DelRcpt(one()),
            SMFIR_ADDRCPT_PAR => {
                let mut s = strings(data).into_iter();
                let rcpt = s.next().unwrap_or_default();
                Response::AddRcptPar {
                    rcpt,
                    args: s.next().unwrap_or_default(),
                }
            }
            SMFIR_CHGFROM => {
                let mut s = strings(data).into_iter();
                let from = s.next().unwrap_or_default();
                Response::ChangeFrom {
                    from,
                    args: s.next().unwrap_or_default(),
                }
            }
            SMFIR_REPLBODY => Response::ReplaceBody(data.to_vec()),
            SMFIC_OPTNEG => {
                let (version, rest) = be32(data, code)?;
                let (actions, rest) = be32(rest, code)?;
                let (protocol, mut rest) = be32(rest, code)?;
                let mut macros = Vec::new();
                while !rest.is_empty() {
                    let (stage, r) = be32(rest, code)?;
                    let end = r.iter().position(|&b| b == 0).unwrap_or(r.len());
                    macros.push((stage, String::from_utf8_lossy(&r[..end]).into_owned()));
                    rest = r.get(end + 1..).unwrap_or_default();
                }
                Response::OptNeg {
                    version,
                    actions: Actions::from_bits_retain(actions),
                    protocol: Steps::from_bits_retain(protocol),
                    macros,
                }
            }
            c => return Err(Error::UnknownCode(c as char)),
        })
    }

    /// Whether this response ends the milter's say on the current command (progress and
    /// modifications do not; they are followed by more).
    pub fn is_final(&self) -> bool {
        !matches!(
            self,
            Response::Progress
                | Response::AddHeader { .. }
                | Response::InsertHeader { .. }
                | Response::ChangeHeader { .. }
                | Response::AddRcpt(_)
                | Response::AddRcptPar { .. }
                | Response::DelRcpt(_)
                | Response::ChangeFrom { .. }
                | Response::ReplaceBody(_)
                | Response::Quarantine(_)
        )
    }
}

/// Cuts packets out of a byte stream.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
}

impl Framer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete packet as (command byte, data), if one is buffered.
    pub fn next_packet(&mut self) -> Result<Option<(u8, Vec<u8>)>, Error> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
        if len == 0 {
            return Err(Error::Empty);
        }
        if len > MAX_PACKET {
            return Err(Error::TooLong(len));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let code = self.buf[4];
        let data = self.buf[5..4 + len].to_vec();
        self.buf.drain(..4 + len);
        Ok(Some((code, data)))
    }

    /// The next complete packet, decoded.
    pub fn next_response(&mut self) -> Result<Option<Response>, Error> {
        match self.next_packet()? {
            Some((code, data)) => Response::decode(code, &data).map(Some),
            None => Ok(None),
        }
    }
}

/// Encodes a response the way a milter would: for tests and for fuzzing the decoder.
pub fn encode_response(r: &Response, out: &mut Vec<u8>) {
    let mut d = Vec::new();
    let code = match r {
        Response::Continue => SMFIR_CONTINUE,
        Response::Accept => SMFIR_ACCEPT,
        Response::Reject => SMFIR_REJECT,
        Response::Tempfail => SMFIR_TEMPFAIL,
        Response::Discard => SMFIR_DISCARD,
        Response::Skip => SMFIR_SKIP,
        Response::Progress => SMFIR_PROGRESS,
        Response::ConnFail => SMFIR_CONN_FAIL,
        Response::Shutdown => SMFIR_SHUTDOWN,
        Response::ReplyCode(t) => {
            cstr(&mut d, t);
            SMFIR_REPLYCODE
        }
        Response::Quarantine(t) => {
            cstr(&mut d, t);
            SMFIR_QUARANTINE
        }
        Response::AddHeader { name, value } => {
            cstr(&mut d, name);
            cstr(&mut d, value);
            SMFIR_ADDHEADER
        }
        Response::InsertHeader { index, name, value }
        | Response::ChangeHeader { index, name, value } => {
            d.extend_from_slice(&index.to_be_bytes());
            cstr(&mut d, name);
            cstr(&mut d, value);
            if matches!(r, Response::InsertHeader { .. }) {
                SMFIR_INSHEADER
            } else {
                SMFIR_CHGHEADER
            }
        }
        Response::AddRcpt(a) => {
            cstr(&mut d, a);
            SMFIR_ADDRCPT
        }
        Response::DelRcpt(a) => {
            cstr(&mut d, a);
            SMFIR_DELRCPT
        }
        Response::AddRcptPar { rcpt, args } => {
            cstr(&mut d, rcpt);
            cstr(&mut d, args);
            SMFIR_ADDRCPT_PAR
        }
        Response::ChangeFrom { from, args } => {
            cstr(&mut d, from);
            cstr(&mut d, args);
            SMFIR_CHGFROM
        }
        Response::ReplaceBody(b) => {
            d.extend_from_slice(b);
            SMFIR_REPLBODY
        }
        Response::OptNeg {
            version,
            actions,
            protocol,
            macros,
        } => {
            d.extend_from_slice(&version.to_be_bytes());
            d.extend_from_slice(&actions.bits().to_be_bytes());
            d.extend_from_slice(&protocol.bits().to_be_bytes());
            for (stage, names) in macros {
                d.extend_from_slice(&stage.to_be_bytes());
                cstr(&mut d, names);
            }
            SMFIC_OPTNEG
        }
    };
    packet(code, &d, out);
}

#[cfg(test)]
mod tests;
