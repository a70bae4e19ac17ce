//! Why a domain has no destination, by cause, with the enhanced status each maps to and
//! whether it is permanent (NXDOMAIN, null MX, a loop) or temporary (DNS trouble).

use smtp_proto::EnhancedCode;

/// Why no destination could be found, by cause. Displayed as `X.Y.Z text` (the status
/// first), the form recorded as a recipient's last error and used in DSNs, so the text of
/// each cause must not change: stored spools and logs are read back by it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// NXDOMAIN for the domain itself.
    #[error("{status} domain {0} does not exist", status = self.status())]
    NoSuchDomain(String),
    /// `implicit_mx` is off and the domain has no MX.
    #[error("{status} {0} has no MX record", status = self.status())]
    NoMx(String),
    /// No MX, and the domain itself (the implicit MX) has no address either.
    #[error("{status} {0} has no MX and no address", status = self.status())]
    NoMxNoAddress(String),
    /// An address literal that is not an IP address.
    #[error("{status} bad address literal [{0}]", status = self.status())]
    BadLiteral(String),
    /// RFC 7505: the one MX is `.`.
    #[error("{status} {0} does not accept mail (null MX)", status = self.status())]
    NullMx(String),
    /// RFC 2782: the one SRV target is `.`.
    #[error("{status} {0} does not offer SMTP (SRV target '.')", status = self.status())]
    NullSrv(String),
    /// Every destination is one of our own addresses.
    #[error("{status} mail for {0} loops back to myself", status = self.status())]
    Loop(String),
    /// We are the best MX, so no other MX may be used (RFC 5321 §5.1).
    #[error("{status} mail for {0} loops back to myself (I am its best MX)", status = self.status())]
    BestMxIsMe(String),
    /// A local domain, but nowhere to hand its mail to.
    #[error("{status} {0} is a local domain but no [local] lmtp is configured", status = self.status())]
    NoLmtp(String),
    /// A route names a host without an address.
    #[error("{status} route host {0} has no address", status = self.status())]
    RouteHostNoAddress(String),
    /// Looking up a route's host failed (timeout, SERVFAIL).
    #[error("{status} looking up {host}: {error}", status = self.status())]
    HostLookup { host: String, error: String },
    /// The MX lookup failed (timeout, SERVFAIL).
    #[error("{status} MX lookup of {domain} failed: {error}", status = self.status())]
    MxLookup { domain: String, error: String },
    /// The SRV lookup failed; `name` is the full `_smtp._tcp.` name.
    #[error("{status} SRV lookup of {name} failed: {error}", status = self.status())]
    SrvLookup { name: String, error: String },
    /// No MX host had an address, and looking one up failed.
    #[error("{status} no address for the MX hosts of {domain}: {error}", status = self.status())]
    MxHostLookup { domain: String, error: String },
    /// No MX host has an address, without a lookup failing.
    #[error("{status} no MX host of {0} has an address", status = self.status())]
    NoAddress(String),
    /// The task doing the lookup went away before answering.
    #[error("{status} the lookup of {0} was abandoned", status = self.status())]
    Abandoned(String),
}

impl Failure {
    /// The RFC 3463 status a recipient gets for this failure.
    pub fn status(&self) -> EnhancedCode {
        match self {
            Failure::NoSuchDomain(_)
            | Failure::NoMx(_)
            | Failure::NoMxNoAddress(_)
            | Failure::BadLiteral(_) => EnhancedCode::new(5, 1, 2),
            Failure::NullMx(_) | Failure::NullSrv(_) => EnhancedCode::new(5, 1, 10),
            Failure::Loop(_) | Failure::BestMxIsMe(_) => EnhancedCode::new(5, 4, 6),
            Failure::NoLmtp(_) => EnhancedCode::new(4, 3, 5),
            Failure::RouteHostNoAddress(_)
            | Failure::HostLookup { .. }
            | Failure::MxLookup { .. }
            | Failure::SrvLookup { .. }
            | Failure::MxHostLookup { .. }
            | Failure::Abandoned(_) => EnhancedCode::new(4, 4, 3),
            Failure::NoAddress(_) => EnhancedCode::new(4, 4, 4),
        }
    }

    /// Permanent failures bounce the recipients; the others defer them.
    pub fn is_permanent(&self) -> bool {
        self.status().class == 5
    }
}
