//! This host's interface addresses, for the loop check: a wildcard listener (`0.0.0.0:25`,
//! `[::]:25`) answers on exactly these, so an MX that resolves to one of them is us. They are
//! read at start and re-read on a short timer, off the delivery path, so an address added or
//! removed later (DHCP, a failover address) is seen within seconds.

use std::net::IpAddr;
use std::time::Duration;

use resolver::HostAddresses;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often the interfaces are re-read. Reading them is one netlink dump: cheap, but not
/// something to do per delivery.
const REFRESH: Duration = Duration::from_secs(5);

/// The addresses of every interface now (empty, with a warning, if they cannot be read).
pub fn read() -> Vec<IpAddr> {
    match nix::ifaddrs::getifaddrs() {
        Ok(list) => list
            .filter_map(|i| i.address)
            .filter_map(|a| {
                a.as_sockaddr_in()
                    .map(|s| IpAddr::V4(s.ip()))
                    .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
            })
            .collect(),
        Err(e) => {
            warn!("cannot read the interface addresses: {e}; only loopback counts as this host");
            Vec::new()
        }
    }
}

/// Keeps `host` current until `shutdown`.
pub async fn watch(host: HostAddresses, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let Ok(now) = tokio::task::spawn_blocking(read).await else {
            continue;
        };
        if host.set(now) {
            info!("interface addresses changed: {:?}", host.get());
        }
    }
}
