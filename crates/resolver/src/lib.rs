//! The address resolver: turns a destination domain into the ordered list of places to
//! deliver to, following the route table (mailertable), local domains (LMTP), SRV if
//! enabled, then MX with implicit MX fallback. Looked up afresh for every attempt (SMTPRC),
//! with hickory's cache bounded by record TTLs.
//!
//! Failures are classified the way a mail administrator expects: a domain that does not
//! exist (NXDOMAIN) or refuses mail (null MX, RFC 7505) fails permanently; a DNS timeout or
//! SERVFAIL is temporary; MX records that point back at this host are a loop (RFC 5321
//! §5.1).
//!
//! Many attempts for the same domain start together (a queue run, a burst of mail to one
//! provider), so concurrent `resolve` calls for the same domain share one lookup.

mod destination;
mod failure;
pub mod local;
mod own;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::{IpAddr, SocketAddr};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use config::{LmtpTarget, RouteTable, RouteTarget};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig as HConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use rand::Rng;
use rand::seq::SliceRandom;
use tokio::sync::oneshot;

pub use destination::Destination;
pub use failure::Failure;
pub use local::{LocalError, LocalPolicy, RcptCheck};
pub use own::{HostAddresses, is_self};

/// At most this many addresses are tried per attempt (Postfix's smtp_mx_address_limit is 5).
pub const MAX_ADDRESSES: usize = 10;

#[derive(Debug, Clone)]
pub struct ResolverConfig {
    /// `None`: the system's resolv.conf.
    pub nameservers: Option<Vec<SocketAddr>>,
    pub timeout: Duration,
    pub attempts: usize,
    pub routes: RouteTable,
    pub local_domains: Vec<String>,
    pub lmtp: Option<LmtpTarget>,
    /// Port for MX and A destinations.
    pub port: u16,
    pub implicit_mx: bool,
    pub ipv6: bool,
    pub srv: bool,
    /// IPs that are this host: an MX pointing at one of them is a loop.
    pub self_addresses: Vec<IpAddr>,
    /// Our own SMTP listeners: a destination equal to one of them is a loop.
    pub listen: Vec<SocketAddr>,
    /// The addresses of this host's interfaces, kept current by the daemon: a wildcard
    /// listener answers on exactly these (and on loopback).
    pub host_addresses: HostAddresses,
}

impl Default for ResolverConfig {
    /// The configuration file's defaults: system DNS, port 25, implicit MX, IPv6, no SRV.
    fn default() -> Self {
        ResolverConfig {
            nameservers: None,
            timeout: Duration::from_secs(5),
            attempts: 2,
            routes: RouteTable::default(),
            local_domains: Vec::new(),
            lmtp: None,
            port: 25,
            implicit_mx: true,
            ipv6: true,
            srv: false,
            self_addresses: Vec::new(),
            listen: Vec::new(),
            host_addresses: HostAddresses::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("DNS resolver setup: {0}")]
pub struct SetupError(String);

type Outcome = Result<Vec<Destination>, Failure>;

/// Per domain, the callers waiting for the lookup that is under way.
type Waiters = HashMap<String, Vec<oneshot::Sender<Outcome>>>;

pub struct Resolver {
    inner: Arc<Inner>,
}

/// Shared with the spawned lookup tasks, which outlive any one caller.
struct Inner {
    cfg: ResolverConfig,
    dns: TokioResolver,
    in_flight: Mutex<Waiters>,
    lookups: AtomicU64,
}

/// Owned by the task doing a lookup. Dropped without `finish` (the task panicked or the
/// runtime is shutting down), it still removes the entry: the waiters' senders go with it,
/// so they wake with an error instead of waiting forever, and the next call starts afresh.
struct Flight {
    inner: Arc<Inner>,
    key: Option<String>,
}

impl Flight {
    fn finish(mut self, outcome: Outcome) {
        let Some(key) = self.key.take() else { return };
        let waiters = self.inner.take_waiters(&key);
        for w in waiters {
            // A waiter that gave up (its attempt was cancelled) is no longer listening.
            let _ = w.send(outcome.clone());
        }
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            drop(self.inner.take_waiters(&key));
        }
    }
}

/// What looking up one name's addresses found.
enum Addrs {
    Found(Vec<IpAddr>),
    /// The name has no addresses (NXDOMAIN or no A/AAAA).
    None,
    Temp(String),
}

fn is_nx(e: &NetError) -> bool {
    e.is_nx_domain()
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

impl Resolver {
    pub fn new(cfg: ResolverConfig) -> Result<Resolver, SetupError> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = match &cfg.nameservers {
            Some(list) => {
                let servers = list
                    .iter()
                    .map(|a| {
                        let mut udp = ConnectionConfig::udp();
                        udp.port = a.port();
                        let mut tcp = ConnectionConfig::tcp();
                        tcp.port = a.port();
                        NameServerConfig::new(a.ip(), true, vec![udp, tcp])
                    })
                    .collect();
                TokioResolver::builder_with_config(HConfig::from_name_servers(servers), provider)
            }
            None => TokioResolver::builder(provider).map_err(|e| SetupError(e.to_string()))?,
        };
        let opts = builder.options_mut();
        opts.timeout = cfg.timeout;
        opts.attempts = cfg.attempts;
        // Names we look up are always absolute: never append the search list.
        opts.ndots = 0;
        let dns = builder.build().map_err(|e| SetupError(e.to_string()))?;
        Ok(Resolver {
            inner: Arc::new(Inner {
                cfg,
                dns,
                in_flight: Mutex::new(HashMap::new()),
                lookups: AtomicU64::new(0),
            }),
        })
    }

    /// How many lookups were actually made: concurrent calls for one domain count once.
    pub fn lookups_performed(&self) -> u64 {
        self.inner.lookups.load(Ordering::Relaxed)
    }

    /// The destinations for mail to `domain`, best first.
    ///
    /// A call made while another for the same domain is under way waits for that one's
    /// result. The lookup runs in its own task, so a caller that is cancelled does not
    /// cancel it for the others.
    pub async fn resolve(&self, domain: &str) -> Result<Vec<Destination>, Failure> {
        let key = config::normalize_domain(domain);
        let (tx, rx) = oneshot::channel();
        let first = match self.inner.lock_in_flight().entry(key.clone()) {
            Entry::Occupied(mut e) => {
                e.get_mut().push(tx);
                false
            }
            Entry::Vacant(e) => {
                e.insert(vec![tx]);
                true
            }
        };
        if first {
            let flight = Flight {
                inner: self.inner.clone(),
                key: Some(key.clone()),
            };
            let domain = key.clone();
            tokio::spawn(async move {
                flight.inner.lookups.fetch_add(1, Ordering::Relaxed);
                let outcome = flight.inner.resolve_now(&domain).await;
                flight.finish(outcome);
            });
        }
        rx.await.unwrap_or(Err(Failure::Abandoned(key)))
    }
}

impl Inner {
    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, Waiters> {
        // The map stays consistent whatever panicked while holding the lock.
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn take_waiters(&self, key: &str) -> Vec<oneshot::Sender<Outcome>> {
        self.lock_in_flight().remove(key).unwrap_or_default()
    }

    fn is_self(&self, addr: SocketAddr) -> bool {
        is_self(
            addr,
            &self.cfg.self_addresses,
            &self.cfg.listen,
            &self.cfg.host_addresses.get(),
        )
    }

    /// `resolve` without coalescing; `domain` is already lower case without a final dot.
    async fn resolve_now(&self, domain: &str) -> Result<Vec<Destination>, Failure> {
        if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
            let ip: IpAddr = lit
                .strip_prefix("ipv6:")
                .unwrap_or(lit)
                .parse()
                .map_err(|_| Failure::BadLiteral(lit.to_string()))?;
            return self.finish(
                domain,
                vec![Destination::Smtp {
                    host: ip.to_string(),
                    addr: SocketAddr::new(ip, self.cfg.port),
                }],
            );
        }
        // A specific route wins over a local domain, a local domain over the `*` default
        // (or `"*"` would take the local domains away from LMTP).
        let local = self.cfg.local_domains.iter().any(|d| d == domain);
        let route = match self.cfg.routes.lookup_specific(domain) {
            Some(r) => Some(r.clone()),
            None if local => None,
            None => self.cfg.routes.default_entry().cloned(),
        };
        let dests = match route {
            Some(RouteTarget::Literal { addr, port }) => vec![Destination::Smtp {
                host: addr.to_string(),
                addr: SocketAddr::new(addr, port.unwrap_or(self.cfg.port)),
            }],
            Some(RouteTarget::Host { host, port }) => {
                self.host_destinations(&host, port.unwrap_or(self.cfg.port), false)
                    .await?
            }
            Some(RouteTarget::Mx { domain: d }) => self.mx_destinations(&d).await?,
            Some(RouteTarget::Lmtp(t)) => self.lmtp_destinations(&t).await?,
            None if local => match self.cfg.lmtp.clone() {
                Some(t) => self.lmtp_destinations(&t).await?,
                None => {
                    return Err(Failure::NoLmtp(domain.to_string()));
                }
            },
            None => self.mx_destinations(domain).await?,
        };
        self.finish(domain, dests)
    }

    fn finish(
        &self,
        domain: &str,
        mut dests: Vec<Destination>,
    ) -> Result<Vec<Destination>, Failure> {
        let before = dests.len();
        dests.retain(|d| match d {
            Destination::Smtp { addr, .. } => !self.is_self(*addr),
            _ => true,
        });
        if dests.is_empty() && before > 0 {
            return Err(Failure::Loop(domain.to_string()));
        }
        dests.truncate(MAX_ADDRESSES);
        Ok(dests)
    }

    async fn lmtp_destinations(&self, t: &LmtpTarget) -> Result<Vec<Destination>, Failure> {
        Ok(match t {
            LmtpTarget::Inet(a) => vec![Destination::Lmtp {
                host: a.ip().to_string(),
                addr: *a,
            }],
            LmtpTarget::Unix(p) => vec![Destination::LmtpUnix { path: p.clone() }],
            LmtpTarget::Host { host, port } => self.host_destinations(host, *port, true).await?,
        })
    }

    /// A host given by name in a route: its addresses, or a failure if it has none.
    async fn host_destinations(
        &self,
        host: &str,
        port: u16,
        lmtp: bool,
    ) -> Result<Vec<Destination>, Failure> {
        match self.addresses(host).await {
            Addrs::Found(ips) => Ok(ips
                .into_iter()
                .map(|ip| {
                    let addr = SocketAddr::new(ip, port);
                    let host = host.to_string();
                    if lmtp {
                        Destination::Lmtp { host, addr }
                    } else {
                        Destination::Smtp { host, addr }
                    }
                })
                .collect()),
            // A route names a host the administrator chose: its absence is a
            // configuration problem to fix, not a reason to bounce.
            Addrs::None => Err(Failure::RouteHostNoAddress(host.to_string())),
            Addrs::Temp(error) => Err(Failure::HostLookup {
                host: host.to_string(),
                error,
            }),
        }
    }

    async fn addresses(&self, host: &str) -> Addrs {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Addrs::Found(vec![ip]);
        }
        let name = fqdn(host);
        let mut ips = Vec::new();
        let mut temp = None;
        match self.dns.ipv4_lookup(name.as_str()).await {
            Ok(l) => ips.extend(l.answers().iter().filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                _ => None,
            })),
            Err(e) if e.is_no_records_found() => {}
            Err(e) => temp = Some(e.to_string()),
        }
        if self.cfg.ipv6 {
            match self.dns.ipv6_lookup(name.as_str()).await {
                Ok(l) => ips.extend(l.answers().iter().filter_map(|r| match &r.data {
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                })),
                Err(e) if e.is_no_records_found() => {}
                Err(e) => temp = temp.or(Some(e.to_string())),
            }
        }
        match (ips.is_empty(), temp) {
            (false, _) => Addrs::Found(ips),
            (true, Some(e)) => Addrs::Temp(e),
            (true, None) => Addrs::None,
        }
    }

    /// SRV (if enabled), then MX, then the implicit MX.
    async fn mx_destinations(&self, domain: &str) -> Result<Vec<Destination>, Failure> {
        if self.cfg.srv
            && let Some(d) = self.srv_destinations(domain).await?
        {
            return Ok(d);
        }
        let hosts: Vec<(u16, String)> = match self.dns.mx_lookup(fqdn(domain).as_str()).await {
            Ok(l) => {
                let mut mx: Vec<(u16, String)> = l
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(m) => Some((
                            m.preference,
                            m.exchange
                                .to_ascii()
                                .trim_end_matches('.')
                                .to_ascii_lowercase(),
                        )),
                        _ => None,
                    })
                    .collect();
                if mx.len() == 1 && mx[0].1.is_empty() {
                    return Err(Failure::NullMx(domain.to_string()));
                }
                mx.retain(|(_, h)| !h.is_empty());
                // Equal preferences are shuffled (RFC 5321 §5.1) to spread the load.
                mx.shuffle(&mut rand::rng());
                mx.sort_by_key(|(p, _)| *p);
                mx
            }
            Err(e) if is_nx(&e) => {
                return Err(Failure::NoSuchDomain(domain.to_string()));
            }
            Err(e) if e.is_no_records_found() => {
                if !self.cfg.implicit_mx {
                    return Err(Failure::NoMx(domain.to_string()));
                }
                vec![(0, domain.to_string())]
            }
            Err(e) => {
                return Err(Failure::MxLookup {
                    domain: domain.to_string(),
                    error: e.to_string(),
                });
            }
        };
        let mut out: Vec<(u16, Destination)> = Vec::new();
        let mut temp = None;
        let mut self_pref: Option<u16> = None;
        for (pref, host) in &hosts {
            match self.addresses(host).await {
                Addrs::Found(ips) => {
                    for ip in ips {
                        let addr = SocketAddr::new(ip, self.cfg.port);
                        if self.is_self(addr) {
                            self_pref = Some(self_pref.map_or(*pref, |p| p.min(*pref)));
                        }
                        out.push((
                            *pref,
                            Destination::Smtp {
                                host: host.clone(),
                                addr,
                            },
                        ));
                    }
                }
                Addrs::None => {}
                Addrs::Temp(e) => temp = temp.or(Some(format!("{host}: {e}"))),
            }
        }
        // RFC 5321 §5.1: when we are one of the MX hosts, only better ones may be used.
        if let Some(p) = self_pref {
            out.retain(|(q, _)| *q < p);
            if out.is_empty() {
                return Err(Failure::BestMxIsMe(domain.to_string()));
            }
        }
        if out.is_empty() {
            return Err(match temp {
                Some(error) => Failure::MxHostLookup {
                    domain: domain.to_string(),
                    error,
                },
                None if hosts.len() == 1 && hosts[0].1 == domain => {
                    Failure::NoMxNoAddress(domain.to_string())
                }
                None => Failure::NoAddress(domain.to_string()),
            });
        }
        Ok(out.into_iter().map(|(_, d)| d).collect())
    }

    /// `_smtp._tcp.domain` SRV records, if any. `Ok(None)`: no SRV, fall back to MX.
    async fn srv_destinations(&self, domain: &str) -> Result<Option<Vec<Destination>>, Failure> {
        let name = format!("_smtp._tcp.{domain}.");
        let recs: Vec<(u16, u16, u16, String)> = match self.dns.srv_lookup(name.as_str()).await {
            Ok(l) => l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::SRV(s) => Some((
                        s.priority,
                        s.weight,
                        s.port,
                        s.target
                            .to_ascii()
                            .trim_end_matches('.')
                            .to_ascii_lowercase(),
                    )),
                    _ => None,
                })
                .collect(),
            Err(e) if e.is_no_records_found() => return Ok(None),
            Err(e) => {
                return Err(Failure::SrvLookup {
                    name,
                    error: e.to_string(),
                });
            }
        };
        if recs.len() == 1 && recs[0].3.is_empty() {
            return Err(Failure::NullSrv(domain.to_string()));
        }
        let recs = srv_order(
            recs.into_iter()
                .map(|(prio, weight, port, host)| (prio, weight, (port, host)))
                .collect(),
            &mut rand::rng(),
        );
        let mut out = Vec::new();
        for (port, host) in recs {
            if let Addrs::Found(ips) = self.addresses(&host).await {
                out.extend(ips.into_iter().map(|ip| Destination::Smtp {
                    host: host.clone(),
                    addr: SocketAddr::new(ip, port),
                }));
            }
        }
        Ok((!out.is_empty()).then_some(out))
    }
}

/// Orders SRV records `(priority, weight, record)` the way RFC 2782 says to try them:
/// lowest priority first; within one priority, each next record is drawn with a
/// probability proportional to its weight. Records of weight 0 are placed first in the list
/// the draw runs over, so one of them is drawn only when the random number is 0: a small
/// chance while records with weight remain, and an even one among themselves after that.
fn srv_order<T>(mut recs: Vec<(u16, u16, T)>, rng: &mut impl Rng) -> Vec<T> {
    // The RFC leaves the order within the list open; a shuffle makes records of equal
    // weight (all-zero weights included) equally likely to come first.
    recs.shuffle(rng);
    recs.sort_by_key(|&(prio, weight, _)| (prio, weight != 0));
    let mut out = Vec::with_capacity(recs.len());
    let mut recs = recs.into_iter().peekable();
    while let Some(first) = recs.next() {
        let prio = first.0;
        let mut group = vec![(first.1, first.2)];
        while let Some(r) = recs.next_if(|r| r.0 == prio) {
            group.push((r.1, r.2));
        }
        while !group.is_empty() {
            let total: u32 = group.iter().map(|&(w, _)| u32::from(w)).sum();
            let pick = rng.random_range(0..=total);
            let mut running = 0;
            // The last running sum is `total`, so some record always qualifies.
            let i = group
                .iter()
                .position(|&(w, _)| {
                    running += u32::from(w);
                    running >= pick
                })
                .unwrap_or(0);
            out.push(group.remove(i).1);
        }
    }
    out
}

#[cfg(test)]
mod tests;
