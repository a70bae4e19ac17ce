//! One place to deliver to: an SMTP host, an LMTP host, or an LMTP unix socket.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// One place to try, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Smtp { host: String, addr: SocketAddr },
    Lmtp { host: String, addr: SocketAddr },
    LmtpUnix { path: PathBuf },
}

impl Destination {
    /// The host name (for TLS SNI, logs and the "relay=" of a DSN).
    pub fn host(&self) -> &str {
        match self {
            Destination::Smtp { host, .. } | Destination::Lmtp { host, .. } => host,
            Destination::LmtpUnix { .. } => "localhost",
        }
    }

    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            Destination::Smtp { addr, .. } | Destination::Lmtp { addr, .. } => Some(*addr),
            Destination::LmtpUnix { .. } => None,
        }
    }

    pub fn unix_path(&self) -> Option<&Path> {
        match self {
            Destination::LmtpUnix { path } => Some(path),
            _ => None,
        }
    }

    pub fn is_lmtp(&self) -> bool {
        !matches!(self, Destination::Smtp { .. })
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Smtp { host, addr } | Destination::Lmtp { host, addr } => {
                write!(f, "{host}[{}]:{}", addr.ip(), addr.port())
            }
            Destination::LmtpUnix { path } => write!(f, "unix:{}", path.display()),
        }
    }
}
