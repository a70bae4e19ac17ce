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

pub mod local;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
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
use smtp_proto::EnhancedCode;
use tokio::sync::oneshot;

pub use local::{LocalError, LocalPolicy, RcptCheck};

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
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::net::UdpSocket;
    use std::time::Instant;

    fn order_counts(
        recs: &[(u16, u16, &'static str)],
        trials: usize,
    ) -> HashMap<Vec<&'static str>, usize> {
        let mut rng = StdRng::seed_from_u64(2782);
        let mut counts = HashMap::new();
        for _ in 0..trials {
            *counts
                .entry(srv_order(recs.to_vec(), &mut rng))
                .or_insert(0) += 1;
        }
        counts
    }

    fn first_share(counts: &HashMap<Vec<&'static str>, usize>, name: &str, trials: usize) -> f64 {
        let n: usize = counts
            .iter()
            .filter(|(o, _)| o[0] == name)
            .map(|(_, c)| c)
            .sum();
        n as f64 / trials as f64
    }

    #[test]
    fn srv_weights_decide_the_order_within_a_priority() {
        let trials = 2000;
        let counts = order_counts(&[(0, 10, "light"), (0, 90, "heavy")], trials);
        let heavy = first_share(&counts, "heavy", trials);
        assert!((0.80..=0.97).contains(&heavy), "heavy first {heavy}");
        // Not a sort: the light one does come first sometimes.
        assert!(first_share(&counts, "light", trials) > 0.03, "{counts:?}");
    }

    #[test]
    fn srv_priority_comes_before_weight() {
        let trials = 500;
        let counts = order_counts(
            &[
                (20, 1000, "backup"),
                (10, 1, "a"),
                (10, 1, "b"),
                (30, 0, "last"),
            ],
            trials,
        );
        for order in counts.keys() {
            assert_eq!(&order[2..], ["backup", "last"]);
        }
        let a = first_share(&counts, "a", trials);
        assert!((0.35..=0.65).contains(&a), "equal weights: a first {a}");
    }

    #[test]
    fn srv_weight_zero_has_a_small_chance() {
        let trials = 4000;
        // Drawn only when the random number in 0..=10 is 0: about 1 in 11.
        let counts = order_counts(&[(0, 10, "ten"), (0, 0, "zero")], trials);
        let zero = first_share(&counts, "zero", trials);
        assert!((0.05..=0.14).contains(&zero), "zero first {zero}");
        // Among weights that are all 0, each is equally likely.
        let counts = order_counts(&[(0, 0, "x"), (0, 0, "y"), (0, 0, "z")], 3000);
        for n in ["x", "y", "z"] {
            let s = first_share(&counts, n, 3000);
            assert!((0.28..=0.39).contains(&s), "{n} first {s}");
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn a_wildcard_listener_is_not_every_address_on_its_port() {
        let listen = [sa("0.0.0.0:25"), sa("[::]:25")];
        let host = ips(&["192.0.2.25", "2001:db8::25", "127.0.0.1", "::1"]);
        // Remote MX hosts on port 25 are not us.
        for remote in ["198.51.100.10:25", "[2001:db8:1::25]:25", "203.0.113.1:25"] {
            assert!(!is_self(sa(remote), &[], &listen, &host), "{remote}");
        }
        // Our interface addresses and all of loopback on the wildcard's port are.
        for ours in [
            "192.0.2.25:25",
            "[2001:db8::25]:25",
            "127.0.0.1:25",
            "127.3.4.5:25",
            "[::1]:25",
            "[::ffff:192.0.2.25]:25",
        ] {
            assert!(is_self(sa(ours), &[], &listen, &host), "{ours}");
        }
        // Another port on our own address is another service, not a loop.
        assert!(!is_self(sa("192.0.2.25:2525"), &[], &listen, &host));
    }

    #[test]
    fn a_wildcard_covers_only_its_own_family() {
        let host = ips(&["192.0.2.25", "2001:db8::25"]);
        let v4_only = [sa("0.0.0.0:25")];
        assert!(is_self(sa("192.0.2.25:25"), &[], &v4_only, &host));
        assert!(!is_self(sa("[2001:db8::25]:25"), &[], &v4_only, &host));
        assert!(!is_self(sa("[::1]:25"), &[], &v4_only, &host));
        let v6_only = [sa("[::]:25")];
        assert!(is_self(sa("[2001:db8::25]:25"), &[], &v6_only, &host));
        assert!(!is_self(sa("192.0.2.25:25"), &[], &v6_only, &host));
    }

    #[test]
    fn specific_listeners_and_self_addresses() {
        let listen = [sa("127.0.0.1:2525")];
        assert!(is_self(sa("127.0.0.1:2525"), &[], &listen, &[]));
        assert!(!is_self(sa("127.0.0.2:2525"), &[], &listen, &[]));
        assert!(!is_self(sa("127.0.0.1:2526"), &[], &listen, &[]));
        // delivery.self_addresses: ours on any port (a NAT front end forwarding to us).
        let nat = ips(&["203.0.113.7"]);
        assert!(is_self(sa("203.0.113.7:25"), &nat, &listen, &[]));
        assert!(is_self(sa("203.0.113.7:587"), &nat, &listen, &[]));
    }

    #[test]
    fn host_addresses_follow_interface_changes() {
        let h = HostAddresses::new(ips(&["192.0.2.25", "127.0.0.1", "192.0.2.25"]));
        assert!(
            !h.set(ips(&["127.0.0.1", "192.0.2.25"])),
            "the same set, reordered"
        );
        let listen = [sa("0.0.0.0:25")];
        assert!(!is_self(sa("192.0.2.26:25"), &[], &listen, &h.get()));
        assert!(h.set(ips(&["192.0.2.26", "192.0.2.25"])));
        assert!(!h.set(ips(&["192.0.2.25", "192.0.2.26", "192.0.2.25"])));
        assert!(is_self(sa("192.0.2.26:25"), &[], &listen, &h.get()));
    }

    /// A resolver whose name server never answers, so every lookup lasts `timeout`.
    fn silent_resolver(timeout: Duration) -> (Resolver, UdpSocket) {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let cfg = ResolverConfig {
            nameservers: Some(vec![silent.local_addr().unwrap()]),
            timeout,
            attempts: 1,
            ipv6: false,
            ..Default::default()
        };
        (Resolver::new(cfg).unwrap(), silent)
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn local_domains_win_over_the_default_route_only() {
        let route = |s: &str, t: &str| (s.parse().unwrap(), t.parse().unwrap());
        let (mut r, _silent) = silent_resolver(Duration::from_millis(10));
        let cfg = ResolverConfig {
            routes: RouteTable::new(vec![
                route("*", "[192.0.2.1]:25"),
                route("routed.test", "[192.0.2.2]:25"),
            ]),
            local_domains: vec!["local.test".into(), "routed.test".into()],
            lmtp: Some(LmtpTarget::Inet("127.0.0.1:24".parse().unwrap())),
            ..r.inner.cfg.clone()
        };
        r = Resolver::new(cfg).unwrap();
        let addr = |d: &str| {
            let dests = rt().block_on(r.resolve(d)).unwrap();
            (
                matches!(dests[0], Destination::Lmtp { .. }),
                dests[0].socket_addr(),
            )
        };
        assert_eq!(
            addr("Local.TEST."),
            (true, Some("127.0.0.1:24".parse().unwrap()))
        );
        assert_eq!(
            addr("routed.test"),
            (false, Some("192.0.2.2:25".parse().unwrap()))
        );
        assert_eq!(
            addr("elsewhere.test"),
            (false, Some("192.0.2.1:25".parse().unwrap()))
        );
    }

    /// Each cause with its status, permanence and the exact text the old `X.Y.Z message`
    /// form gave: spools and logs written before hold these texts.
    #[test]
    fn failure_status_permanence_and_text() {
        let s = String::from;
        let e = || s("timed out");
        let cases = [
            (
                Failure::NoSuchDomain(s("x.test")),
                "5.1.2",
                true,
                "domain x.test does not exist",
            ),
            (
                Failure::NoMx(s("x.test")),
                "5.1.2",
                true,
                "x.test has no MX record",
            ),
            (
                Failure::NoMxNoAddress(s("x.test")),
                "5.1.2",
                true,
                "x.test has no MX and no address",
            ),
            (
                Failure::BadLiteral(s("1.2.3")),
                "5.1.2",
                true,
                "bad address literal [1.2.3]",
            ),
            (
                Failure::NullMx(s("x.test")),
                "5.1.10",
                true,
                "x.test does not accept mail (null MX)",
            ),
            (
                Failure::NullSrv(s("x.test")),
                "5.1.10",
                true,
                "x.test does not offer SMTP (SRV target '.')",
            ),
            (
                Failure::Loop(s("x.test")),
                "5.4.6",
                true,
                "mail for x.test loops back to myself",
            ),
            (
                Failure::BestMxIsMe(s("x.test")),
                "5.4.6",
                true,
                "mail for x.test loops back to myself (I am its best MX)",
            ),
            (
                Failure::NoLmtp(s("x.test")),
                "4.3.5",
                false,
                "x.test is a local domain but no [local] lmtp is configured",
            ),
            (
                Failure::RouteHostNoAddress(s("h.test")),
                "4.4.3",
                false,
                "route host h.test has no address",
            ),
            (
                Failure::HostLookup {
                    host: s("h.test"),
                    error: e(),
                },
                "4.4.3",
                false,
                "looking up h.test: timed out",
            ),
            (
                Failure::MxLookup {
                    domain: s("x.test"),
                    error: e(),
                },
                "4.4.3",
                false,
                "MX lookup of x.test failed: timed out",
            ),
            (
                Failure::SrvLookup {
                    name: s("_smtp._tcp.x.test."),
                    error: e(),
                },
                "4.4.3",
                false,
                "SRV lookup of _smtp._tcp.x.test. failed: timed out",
            ),
            (
                Failure::MxHostLookup {
                    domain: s("x.test"),
                    error: s("mx.x.test: timed out"),
                },
                "4.4.3",
                false,
                "no address for the MX hosts of x.test: mx.x.test: timed out",
            ),
            (
                Failure::NoAddress(s("x.test")),
                "4.4.4",
                false,
                "no MX host of x.test has an address",
            ),
            (
                Failure::Abandoned(s("x.test")),
                "4.4.3",
                false,
                "the lookup of x.test was abandoned",
            ),
        ];
        for (f, status, permanent, text) in cases {
            assert_eq!(f.status().to_string(), status, "{f:?}");
            assert_eq!(f.is_permanent(), permanent, "{f:?}");
            assert_eq!(f.to_string(), format!("{status} {text}"));
        }
    }

    #[test]
    fn resolve_is_send() {
        fn send<T: Send>(_: T) {}
        let (r, _silent) = silent_resolver(Duration::from_millis(10));
        send(r.resolve("x.test"));
    }

    #[test]
    fn concurrent_calls_share_one_lookup() {
        let (r, _silent) = silent_resolver(Duration::from_millis(300));
        let r = Arc::new(r);
        let failures = rt().block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for i in 0..100 {
                let r = r.clone();
                // Case and a final dot do not make it another domain.
                let name = if i % 2 == 0 {
                    "same.test"
                } else {
                    "SAME.test."
                };
                set.spawn(async move { r.resolve(name).await });
            }
            set.join_all().await
        });
        assert_eq!(r.lookups_performed(), 1);
        assert_eq!(failures.len(), 100);
        for f in &failures {
            assert_eq!(f, &failures[0]);
            let f = f.as_ref().unwrap_err();
            assert!(
                !f.is_permanent() && f.status() == EnhancedCode::new(4, 4, 3),
                "{f}"
            );
        }
        assert!(r.inner.lock_in_flight().is_empty());
        // Once finished, the next call is a new lookup: results are not kept.
        let _ = rt().block_on(r.resolve("same.test"));
        assert_eq!(r.lookups_performed(), 2);
    }

    #[test]
    fn a_cancelled_first_caller_does_not_strand_the_others() {
        let (r, _silent) = silent_resolver(Duration::from_millis(300));
        let r = Arc::new(r);
        rt().block_on(async {
            let first = tokio::spawn({
                let r = r.clone();
                async move { r.resolve("cancel.test").await }
            });
            let deadline = Instant::now() + Duration::from_secs(5);
            while !r.inner.lock_in_flight().contains_key("cancel.test") {
                assert!(Instant::now() < deadline, "the first call never started");
                tokio::task::yield_now().await;
            }
            let second = tokio::spawn({
                let r = r.clone();
                async move { r.resolve("cancel.test").await }
            });
            tokio::task::yield_now().await;
            first.abort();
            assert!(first.await.unwrap_err().is_cancelled());
            let f = tokio::time::timeout(Duration::from_secs(10), second)
                .await
                .expect("the second caller was left waiting")
                .unwrap()
                .unwrap_err();
            // The lookup itself went on and its answer (a timeout) reached the second caller.
            assert!(!f.to_string().contains("abandoned"), "{f}");
            assert_eq!(r.lookups_performed(), 1);
        });
    }

    #[test]
    fn a_lookup_task_that_dies_releases_its_waiters() {
        let (r, _silent) = silent_resolver(Duration::from_millis(10));
        let (tx, rx) = oneshot::channel();
        r.inner
            .lock_in_flight()
            .insert("dead.test".into(), vec![tx]);
        drop(Flight {
            inner: r.inner.clone(),
            key: Some("dead.test".into()),
        });
        assert!(rx.blocking_recv().is_err());
        assert!(r.inner.lock_in_flight().is_empty());
    }
}
