//! Hosts whose STARTTLS handshake failed recently. Under opportunistic TLS a failed handshake
//! is followed at once by a plaintext connection; remembering the host for a while
//! (`delivery.tls_broken_for`) spares every later connection to it the doomed handshake and
//! the reconnect. Policies that demand TLS never read this: for them a broken handshake
//! keeps the mail queued.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most this many hosts are remembered: the memory is fed by remote servers, so it must
/// not grow with them. When full, expired entries go first, then the oldest.
pub const MAX_HOSTS: usize = 10_000;

/// Which host: the MX (or route) host name and the address connected to. The name alone
/// would let one broken address of an MX condemn its healthy siblings; the address alone
/// would mix up virtual hosts behind one address.
pub type Host = (String, SocketAddr);

/// The memory, owned by the `Deliverer` and shared by its attempts.
#[derive(Debug)]
pub struct BrokenTls {
    /// How long a failure is remembered; zero turns the memory off (every connection tries
    /// STARTTLS, and falls back again if it fails).
    remember_for: Duration,
    max: usize,
    /// When each host's memory runs out.
    until: Mutex<HashMap<Host, Instant>>,
}

impl BrokenTls {
    pub fn new(remember_for: Duration) -> Self {
        Self::with_capacity(remember_for, MAX_HOSTS)
    }

    pub fn with_capacity(remember_for: Duration, max: usize) -> Self {
        BrokenTls {
            remember_for,
            max: max.max(1),
            until: Mutex::new(HashMap::new()),
        }
    }

    /// The handshake with `host` failed at `now`.
    pub fn remember(&self, host: Host, now: Instant) {
        if self.remember_for.is_zero() {
            return;
        }
        let mut map = self.lock();
        if map.len() >= self.max && !map.contains_key(&host) {
            map.retain(|_, until| *until > now);
            if map.len() >= self.max {
                // Still full of live entries: the one that would expire first goes. A scan
                // of at most MAX_HOSTS entries, only when that many hosts failed within
                // `remember_for`, costs less than keeping an ordered index beside the map.
                if let Some(oldest) = map.iter().min_by_key(|(_, t)| **t).map(|(h, _)| h.clone()) {
                    map.remove(&oldest);
                }
            }
        }
        map.insert(host, now + self.remember_for);
    }

    /// Whether `host`'s TLS is remembered as broken at `now`; an expired entry is dropped.
    pub fn is_broken(&self, host: &Host, now: Instant) -> bool {
        let mut map = self.lock();
        match map.get(host) {
            Some(until) if *until > now => true,
            Some(_) => {
                map.remove(host);
                false
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Host, Instant>> {
        // Nothing panics while holding the lock, and the map is valid after any insert or
        // remove, so a poisoned lock's data is still good.
        self.until.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, port: u16) -> Host {
        (name.into(), SocketAddr::from(([192, 0, 2, 1], port)))
    }

    #[test]
    fn a_failure_is_remembered_until_it_expires() {
        let m = BrokenTls::new(Duration::from_secs(3600));
        let t0 = Instant::now();
        assert!(!m.is_broken(&host("mx.test", 25), t0));
        m.remember(host("mx.test", 25), t0);
        assert!(m.is_broken(&host("mx.test", 25), t0 + Duration::from_secs(3599)));
        // Another name on the same address, or another address of the same name, is not it.
        assert!(!m.is_broken(&host("other.test", 25), t0));
        assert!(!m.is_broken(&host("mx.test", 26), t0));
        assert!(!m.is_broken(&host("mx.test", 25), t0 + Duration::from_secs(3600)));
        assert!(m.is_empty(), "the expired entry is dropped when read");
    }

    #[test]
    fn zero_remembers_nothing() {
        let m = BrokenTls::new(Duration::ZERO);
        let t0 = Instant::now();
        m.remember(host("mx.test", 25), t0);
        assert!(!m.is_broken(&host("mx.test", 25), t0));
        assert!(m.is_empty());
    }

    #[test]
    fn the_memory_is_bounded() {
        let m = BrokenTls::with_capacity(Duration::from_secs(60), 3);
        let t0 = Instant::now();
        for (i, port) in [1u16, 2, 3].into_iter().enumerate() {
            m.remember(host("mx.test", port), t0 + Duration::from_secs(i as u64));
        }
        assert_eq!(m.len(), 3);
        // Full of live entries: the one remembered first goes.
        m.remember(host("mx.test", 4), t0 + Duration::from_secs(10));
        assert_eq!(m.len(), 3);
        let at = t0 + Duration::from_secs(10);
        assert!(!m.is_broken(&host("mx.test", 1), at));
        assert!(m.is_broken(&host("mx.test", 2), at) && m.is_broken(&host("mx.test", 4), at));
        // Full again (ports 3, 4, 1 until 62, 70, 71 s): the expired one goes, the live stay.
        m.remember(host("mx.test", 1), t0 + Duration::from_secs(11));
        let later = t0 + Duration::from_secs(64);
        m.remember(host("mx.test", 5), later);
        assert_eq!(m.len(), 3);
        assert!(!m.is_broken(&host("mx.test", 3), later));
        for port in [1, 4, 5] {
            assert!(m.is_broken(&host("mx.test", port), later), "port {port}");
        }
        // Remembering a host already there again does not evict another.
        m.remember(host("mx.test", 5), later);
        assert_eq!(m.len(), 3);
        assert!(m.is_broken(&host("mx.test", 1), later));
    }
}
