//! The address resolver: turns a destination domain into the ordered list of places to
//! deliver to, following the route table (mailertable), local domains (LMTP), SRV if
//! enabled, then MX with implicit MX fallback. Looked up afresh for every attempt (SMTPRC),
//! with hickory's cache bounded by record TTLs.
//!
//! Failures are classified the way a mail administrator expects: a domain that does not
//! exist (NXDOMAIN) or refuses mail (null MX, RFC 7505) fails permanently; a DNS timeout or
//! SERVFAIL is temporary; MX records that point back at this host are a loop (RFC 5321
//! §5.1).

pub mod local;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{LmtpTarget, RouteTable, RouteTarget};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig as HConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use rand::seq::SliceRandom;

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

/// Why no destination could be found. Displayed as `X.Y.Z text`, the form recorded as a
/// recipient's last error and used in DSNs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub permanent: bool,
    pub status: &'static str,
    pub message: String,
}

impl Failure {
    fn temp(status: &'static str, message: String) -> Self {
        Failure {
            permanent: false,
            status,
            message,
        }
    }

    fn perm(status: &'static str, message: String) -> Self {
        Failure {
            permanent: true,
            status,
            message,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl std::error::Error for Failure {}

#[derive(Debug, thiserror::Error)]
#[error("DNS resolver setup: {0}")]
pub struct SetupError(String);

pub struct Resolver {
    cfg: ResolverConfig,
    dns: TokioResolver,
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
        Ok(Resolver { cfg, dns })
    }

    fn is_self(&self, addr: SocketAddr, smtp: bool) -> bool {
        if self.cfg.self_addresses.contains(&addr.ip()) {
            return true;
        }
        smtp && self
            .cfg
            .listen
            .iter()
            .any(|l| l.port() == addr.port() && (l.ip() == addr.ip() || l.ip().is_unspecified()))
    }

    /// The destinations for mail to `domain`, best first.
    pub async fn resolve(&self, domain: &str) -> Result<Vec<Destination>, Failure> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
            let ip: IpAddr = lit
                .strip_prefix("ipv6:")
                .unwrap_or(lit)
                .parse()
                .map_err(|_| Failure::perm("5.1.2", format!("bad address literal [{lit}]")))?;
            return self.finish(
                &domain,
                vec![Destination::Smtp {
                    host: ip.to_string(),
                    addr: SocketAddr::new(ip, self.cfg.port),
                }],
            );
        }
        let route = self.cfg.routes.lookup(&domain).cloned();
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
            None if self.cfg.local_domains.contains(&domain) => match self.cfg.lmtp.clone() {
                Some(t) => self.lmtp_destinations(&t).await?,
                None => {
                    return Err(Failure::temp(
                        "4.3.5",
                        format!("{domain} is a local domain but no [local] lmtp is configured"),
                    ));
                }
            },
            None => self.mx_destinations(&domain).await?,
        };
        self.finish(&domain, dests)
    }

    fn finish(
        &self,
        domain: &str,
        mut dests: Vec<Destination>,
    ) -> Result<Vec<Destination>, Failure> {
        let before = dests.len();
        dests.retain(|d| match d {
            Destination::Smtp { addr, .. } => !self.is_self(*addr, true),
            _ => true,
        });
        if dests.is_empty() && before > 0 {
            return Err(Failure::perm(
                "5.4.6",
                format!("mail for {domain} loops back to myself"),
            ));
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
            Addrs::None => Err(Failure::temp(
                "4.4.3",
                format!("route host {host} has no address"),
            )),
            Addrs::Temp(e) => Err(Failure::temp("4.4.3", format!("looking up {host}: {e}"))),
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
                    return Err(Failure::perm(
                        "5.1.10",
                        format!("{domain} does not accept mail (null MX)"),
                    ));
                }
                mx.retain(|(_, h)| !h.is_empty());
                // Equal preferences are shuffled (RFC 5321 §5.1) to spread the load.
                mx.shuffle(&mut rand::rng());
                mx.sort_by_key(|(p, _)| *p);
                mx
            }
            Err(e) if is_nx(&e) => {
                return Err(Failure::perm(
                    "5.1.2",
                    format!("domain {domain} does not exist"),
                ));
            }
            Err(e) if e.is_no_records_found() => {
                if !self.cfg.implicit_mx {
                    return Err(Failure::perm("5.1.2", format!("{domain} has no MX record")));
                }
                vec![(0, domain.to_string())]
            }
            Err(e) => {
                return Err(Failure::temp(
                    "4.4.3",
                    format!("MX lookup of {domain} failed: {e}"),
                ));
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
                        if self.is_self(addr, true) {
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
                return Err(Failure::perm(
                    "5.4.6",
                    format!("mail for {domain} loops back to myself (I am its best MX)"),
                ));
            }
        }
        if out.is_empty() {
            return Err(match temp {
                Some(e) => Failure::temp(
                    "4.4.3",
                    format!("no address for the MX hosts of {domain}: {e}"),
                ),
                None if hosts.len() == 1 && hosts[0].1 == domain => {
                    Failure::perm("5.1.2", format!("{domain} has no MX and no address"))
                }
                None => Failure::temp("4.4.4", format!("no MX host of {domain} has an address")),
            });
        }
        Ok(out.into_iter().map(|(_, d)| d).collect())
    }

    /// `_smtp._tcp.domain` SRV records, if any. `Ok(None)`: no SRV, fall back to MX.
    async fn srv_destinations(&self, domain: &str) -> Result<Option<Vec<Destination>>, Failure> {
        let name = format!("_smtp._tcp.{domain}.");
        let mut recs: Vec<(u16, u16, u16, String)> = match self.dns.srv_lookup(name.as_str()).await
        {
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
                return Err(Failure::temp(
                    "4.4.3",
                    format!("SRV lookup of {name} failed: {e}"),
                ));
            }
        };
        if recs.len() == 1 && recs[0].3.is_empty() {
            return Err(Failure::perm(
                "5.1.10",
                format!("{domain} does not offer SMTP (SRV target '.')"),
            ));
        }
        recs.shuffle(&mut rand::rng());
        recs.sort_by_key(|r| (r.0, std::cmp::Reverse(r.1)));
        let mut out = Vec::new();
        for (_, _, port, host) in recs {
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
