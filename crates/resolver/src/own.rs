//! Which addresses are ours: an MX pointing at one of them is a loop (RFC 5321 §5.1),
//! unless a less preferred MX is left. Pure functions of what they are given: the daemon
//! feeds this host's interface addresses in.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, PoisonError};

/// This host's interface addresses as last read, shared between whoever re-reads them (the
/// daemon, when interfaces change) and the loop check. The resolver makes no OS calls for
/// them, so the loop decision stays a pure function of what it is given.
#[derive(Debug, Clone, Default)]
pub struct HostAddresses(Arc<std::sync::RwLock<Arc<Vec<IpAddr>>>>);

impl HostAddresses {
    pub fn new(mut addrs: Vec<IpAddr>) -> Self {
        // Kept sorted and unique, so `set` can tell a real change from a reordering.
        addrs.sort();
        addrs.dedup();
        HostAddresses(Arc::new(std::sync::RwLock::new(Arc::new(addrs))))
    }

    /// Replaces the list; `true` when it changed.
    pub fn set(&self, mut addrs: Vec<IpAddr>) -> bool {
        addrs.sort();
        addrs.dedup();
        let mut cur = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if **cur == addrs {
            return false;
        }
        *cur = Arc::new(addrs);
        true
    }

    pub fn get(&self) -> Arc<Vec<IpAddr>> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Whether an SMTP connection to `addr` would reach this host's own listeners (a mail loop).
///
/// `self_addresses` are ours on any port. A listener on a specific address is reached only
/// there. A wildcard listener (`0.0.0.0`, `[::]`, bound IPV6_V6ONLY) is reached on its port
/// at every address of this host's interfaces in its family, and on the whole loopback range
/// (127.0.0.0/8 or ::1) — not at any address whatever, which would make every remote MX on
/// port 25 look like us.
pub fn is_self(
    addr: SocketAddr,
    self_addresses: &[IpAddr],
    listen: &[SocketAddr],
    host_addresses: &[IpAddr],
) -> bool {
    let ip = canonical(addr.ip());
    if self_addresses.iter().any(|a| canonical(*a) == ip) {
        return true;
    }
    listen.iter().filter(|l| l.port() == addr.port()).any(|l| {
        let lip = canonical(l.ip());
        if !lip.is_unspecified() {
            return lip == ip;
        }
        lip.is_ipv4() == ip.is_ipv4()
            && (ip.is_loopback() || host_addresses.iter().any(|h| canonical(*h) == ip))
    })
}

/// IPv4-mapped IPv6 addresses are the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}
