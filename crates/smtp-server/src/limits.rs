//! Connection admission: a bound on connections overall and per client address, so a flood
//! from one client cannot starve the others. Trusted clients (by default the relay networks,
//! as Postfix exempts $mynetworks) are held only to the overall bound: an internal relay or
//! an application server legitimately opens many sessions at once. The counters have one owner (this struct, behind
//! a std mutex held only for a map update, never across an await).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use config::Cidr;

#[derive(Debug)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

#[derive(Debug, Clone)]
pub struct ConnLimits {
    max_total: usize,
    max_per_ip: usize,
    exceptions: Arc<[Cidr]>,
    counts: Arc<Mutex<Counts>>,
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooManyOverall,
    TooManyFromClient,
}

/// Held for the life of a session; gives the slot back when dropped.
#[derive(Debug)]
pub struct Permit {
    ip: IpAddr,
    counts: Arc<Mutex<Counts>>,
}

impl ConnLimits {
    /// `exceptions`: clients not held to `max_per_ip`.
    pub fn new(max_total: usize, max_per_ip: usize, exceptions: &[Cidr]) -> Self {
        ConnLimits {
            max_total,
            max_per_ip,
            exceptions: exceptions.into(),
            counts: Arc::new(Mutex::new(Counts {
                total: 0,
                per_ip: HashMap::new(),
            })),
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).total
    }

    pub fn admit(&self, ip: IpAddr) -> Result<Permit, Refusal> {
        let ip = canonical(ip);
        let exempt = self.exceptions.iter().any(|c| c.contains(ip));
        // A poisoned lock only means another thread panicked mid-update of two integers;
        // the counts are still usable.
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if c.total >= self.max_total {
            return Err(Refusal::TooManyOverall);
        }
        let n = c.per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip && !exempt {
            return Err(Refusal::TooManyFromClient);
        }
        *n += 1;
        c.total += 1;
        Ok(Permit {
            ip,
            counts: self.counts.clone(),
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total -= 1;
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

/// IPv4-mapped IPv6 clients count as their IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_overall_and_per_client() {
        let l = ConnLimits::new(3, 2, &[]);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let p1 = l.admit(a).unwrap();
        let _p2 = l.admit(a).unwrap();
        assert_eq!(l.admit(a).unwrap_err(), Refusal::TooManyFromClient);
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(l.admit(mapped).unwrap_err(), Refusal::TooManyFromClient);
        let _p3 = l.admit(b).unwrap();
        assert_eq!(l.admit(b).unwrap_err(), Refusal::TooManyOverall);
        drop(p1);
        assert_eq!(l.open(), 2);
        assert!(l.admit(a).is_ok());
    }

    #[test]
    fn exceptions_skip_the_per_client_limit_only() {
        let trusted: Cidr = "192.0.2.0/24".parse().unwrap();
        let l = ConnLimits::new(5, 1, &[trusted]);
        let relay: IpAddr = "192.0.2.10".parse().unwrap();
        let outside: IpAddr = "198.51.100.99".parse().unwrap();
        let mut held: Vec<Permit> = (0..3).map(|_| l.admit(relay).unwrap()).collect();
        // An IPv4-mapped address of a trusted client is trusted too.
        held.push(l.admit("::ffff:192.0.2.10".parse().unwrap()).unwrap());
        held.push(l.admit(outside).unwrap());
        assert_eq!(l.admit(outside).unwrap_err(), Refusal::TooManyOverall);
        assert_eq!(l.admit(relay).unwrap_err(), Refusal::TooManyOverall);
        held.truncate(3);
        let _o1 = l.admit(outside).unwrap();
        assert_eq!(l.admit(outside).unwrap_err(), Refusal::TooManyFromClient);
        // Trusted sessions ending give their slots back like any other.
        drop(held);
        assert_eq!(l.open(), 1);
    }
}
