//! `postrider serve`: wires the components together, runs until SIGTERM/SIGINT, then shuts
//! down in order (stop accepting, let sessions and deliveries finish up to a deadline, flush
//! the spool).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use config::Config;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use delivery::Deliverer;
use delivery::client::ClientSettings;
use queue::manager::{Manager, QueueHandle, Settings};
use smtp_server::{self as server, Ctx, limits::ConnLimits};

/// How long in-flight sessions and deliveries get after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

pub fn init_logging(cfg: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("POSTRIDER_LOG")
        .unwrap_or_else(|_| EnvFilter::new(cfg.log.level.clone()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        // Colour escapes are for a person at a terminal; in a file or the journal they are
        // noise that breaks grep.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if cfg.log.format == config::LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Runs the daemon; `path` is where the configuration came from, re-read on SIGHUP.
pub fn run(cfg: Config, path: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    init_logging(&cfg);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(serve(Arc::new(cfg), path))
}

async fn serve(cfg: Arc<Config>, path: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    // Before anything can announce that the daemon is up: a SIGTERM sent right after the
    // listeners are bound must drain, not kill with the default action.
    let signals = Signals::new().context("installing signal handlers")?;
    let mut listeners = Vec::new();
    for addr in &cfg.smtp.listen {
        let l = bind_listener(*addr)
            .with_context(|| format!("smtp.listen: cannot listen on {addr}"))?;
        info!("listening on {addr}");
        listeners.push(l);
    }

    let local = Arc::new(resolver::LocalPolicy::from_config(&cfg).context("local recipients")?);
    let tls = match (&cfg.smtp.tls_cert, &cfg.smtp.tls_key) {
        (Some(c), Some(k)) => Some(server::tls_acceptor(c, k)?),
        _ => None,
    };
    // Bind now, as root, so a bad address is an error at start, not a silent absence.
    let metrics_listener = match cfg.control.metrics {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("control.metrics: cannot listen on {addr}"))?,
        ),
        None => None,
    };
    // Ports are bound and root-only files read: from here on root is not needed. The spool
    // is opened only after the switch, so every file the daemon creates is its user's.
    let switched = drop_privileges(&cfg)?;
    let (spool, recovery) = spool::open(spool_config(&cfg)).with_context(|| {
        format!(
            "opening the spool {}{}",
            cfg.spool.display(),
            match &switched {
                Some(u) =>
                    format!(" as user '{u}' (it and its parents must be reachable by that user)"),
                None => String::new(),
            }
        )
    })?;
    info!("spool {}: {}", cfg.spool.display(), recovery.report);
    let counters = crate::metrics::Counters::default();
    let host_addresses = resolver::HostAddresses::new(crate::interfaces::read());
    let (mut manager, queue) = queue_manager(&cfg, &spool, &counters, &host_addresses)?;
    manager.recover(recovery.messages, recovery.schedules);
    info!("recovery took {} ms", started.elapsed().as_millis());

    let shutdown = CancellationToken::new();
    let sessions = TaskTracker::new();
    let cleanup = Arc::new(cleanup::Cleanup::new(
        spool.clone(),
        queue.clone(),
        counters.cleanup.clone(),
    ));
    let ctx = Arc::new(Ctx {
        cfg: cfg.clone(),
        current: std::sync::RwLock::new(cfg.clone()),
        spool: spool.clone(),
        queue: queue.clone(),
        local: std::sync::RwLock::new(local),
        tls,
        shutdown: shutdown.clone(),
        limits: ConnLimits::new(
            cfg.smtp.max_connections,
            cfg.smtp.max_connections_per_client,
            cfg.smtp.connection_limit_exceptions(),
        ),
        cleanup: cleanup.clone(),
    });
    let metrics = match (cfg.control.metrics, metrics_listener) {
        (Some(addr), Some(listener)) => {
            let sources = crate::metrics::Sources {
                queue: queue.clone(),
                spool: spool.clone(),
                limits: ctx.limits.clone(),
                counters: counters.clone(),
            };
            info!("metrics on http://{addr}/metrics");
            Some(tokio::spawn(crate::metrics::serve(
                listener,
                sources,
                shutdown.clone(),
            )))
        }
        _ => None,
    };
    let qm_shutdown = CancellationToken::new();
    let qm = tokio::spawn(manager.run(qm_shutdown.clone()));
    let control = tokio::spawn(crate::control::serve(
        cfg.control_socket(),
        queue.clone(),
        shutdown.clone(),
    ));
    let local = Arc::new(
        crate::local::Policies::new(ctx.clone(), nix::unistd::geteuid().as_raw())
            .map_err(anyhow::Error::msg)?,
    );
    let pickup = tokio::spawn(crate::pickup::run(
        cleanup.clone(),
        local.clone(),
        shutdown.clone(),
    ));
    let submit = tokio::spawn(crate::submit::serve(
        crate::submit::socket_path(&cfg.spool),
        cleanup,
        local,
        shutdown.clone(),
    ));
    if cfg.smtp.listen.iter().any(|a| a.ip().is_unspecified()) {
        tokio::spawn(crate::interfaces::watch(host_addresses, shutdown.clone()));
    }
    let mut accepts = Vec::new();
    for l in listeners {
        accepts.push(tokio::spawn(server::accept_loop(
            l,
            ctx.clone(),
            sessions.clone(),
        )));
    }

    signals.wait(|| reload(path.as_deref(), &cfg, &ctx)).await;
    info!("shutting down: no new connections, sessions get 421");
    // Sessions and deliveries share one grace period. The queue manager starts no attempt
    // from now on; mail that sessions still commit stays in the spool for the next start.
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    shutdown.cancel();
    qm_shutdown.cancel();
    for a in accepts {
        let _ = a.await;
    }
    sessions.close();
    if tokio::time::timeout_at(deadline, sessions.wait())
        .await
        .is_err()
    {
        warn!("sessions still open after {SHUTDOWN_GRACE:?}; closing them");
    }
    // The spool stays open until the running attempts have reported and their results
    // are durable; past the grace period, what they have not recorded is tried again.
    if tokio::time::timeout_at(deadline, qm).await.is_err() {
        warn!("deliveries still running after {SHUTDOWN_GRACE:?}; they will be retried");
    }
    let _ = control.await;
    let _ = pickup.await;
    let _ = submit.await;
    if let Some(m) = metrics {
        let _ = m.await;
    }
    spool.shutdown().await;
    info!("stopped");
    Ok(())
}

/// A listening socket the way Postfix makes one: SO_REUSEADDR so a restart does not wait
/// for old connections in TIME_WAIT, and IPV6_V6ONLY on IPv6 so `[::]:25` and `0.0.0.0:25`
/// can both be listened on (without it the IPv6 wildcard also claims IPv4, and the second
/// bind fails with "Address already in use").
fn bind_listener(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    tokio::net::TcpListener::from_std(socket.into())
}

/// Started as root with `user`: gives the spool to that user (`spool::prepare`: nothing is
/// followed or walked, local users can reach `pickup/`) and switches to it, returning its
/// name. Then, in every case, sets the umask to 077. The modes are set when the spool is
/// opened, by its owner.
fn drop_privileges(cfg: &Config) -> anyhow::Result<Option<String>> {
    use nix::unistd::{User, geteuid, setgid, setgroups, setuid};
    let user = match &cfg.user {
        Some(name) if geteuid().is_root() => Some(
            User::from_name(name)
                .with_context(|| format!("user: looking up '{name}'"))?
                .with_context(|| format!("user: there is no user '{name}'"))?,
        ),
        Some(name) => {
            warn!("user = \"{name}\" ignored: not started as root");
            None
        }
        None => None,
    };
    let owner = user.as_ref().map(|u| spool::Owner {
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
    });
    if let Some(owner) = owner {
        spool::prepare(&cfg.spool, owner)
            .with_context(|| format!("preparing the spool {}", cfg.spool.display()))?;
    }
    let switched = match user {
        Some(user) => {
            setgroups(&[user.gid]).context("user: setgroups")?;
            setgid(user.gid).context("user: setgid")?;
            setuid(user.uid).context("user: setuid")?;
            info!("running as user {} (uid {})", user.name, user.uid);
            Some(user.name)
        }
        None => None,
    };
    // Whatever the daemon creates from here on (control socket, files) is its own alone.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    Ok(switched)
}

/// The signals the daemon acts on, installed once at start.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for SIGTERM or SIGINT, calling `on_hup` for every SIGHUP meanwhile.
    async fn wait(mut self, on_hup: impl Fn()) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => on_hup(),
            }
        }
    }
}

/// SIGHUP: re-reads the configuration. New SMTP sessions use it (relay networks and domains,
/// size and recipient limits, timeouts, banner, milters, hop limit), as do RCPT checks
/// against local users and aliases and local submissions (`local::Policies`); what was
/// fixed at start (listeners, connection limits, TLS certificate, spool, user, delivery,
/// routes, DNS, control, logging) is reported as needing a restart. A file with errors
/// changes nothing.
fn reload(path: Option<&std::path::Path>, running: &Config, ctx: &Ctx) {
    let Some(path) = path else {
        info!("SIGHUP: running on embedded defaults, nothing to reload");
        return;
    };
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            warn!(
                "SIGHUP: {} has errors, keeping the running configuration:\n{errors}",
                path.display()
            );
            return;
        }
    };
    let local = match resolver::LocalPolicy::from_config(&new) {
        Ok(l) => l,
        Err(e) => {
            warn!("SIGHUP: local users or aliases: {e}; keeping the running configuration");
            return;
        }
    };
    *ctx.local.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(local);
    let fixed = fixed_at_start(&new, running);
    *ctx.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
    info!("SIGHUP: reloaded {} for new sessions", path.display());
    if !fixed.is_empty() {
        warn!(
            "SIGHUP: changes to {} take effect after a restart",
            fixed.join(", ")
        );
    }
}

/// The settings that differ between two configurations but were fixed at start.
fn fixed_at_start(new: &Config, running: &Config) -> Vec<&'static str> {
    fn differ(a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug) -> bool {
        format!("{a:?}") != format!("{b:?}")
    }
    let (n, r) = (new, running);
    let checks: [(&'static str, bool); 13] = [
        ("smtp.listen", differ(&n.smtp.listen, &r.smtp.listen)),
        (
            "smtp.max_connections",
            differ(&n.smtp.max_connections, &r.smtp.max_connections),
        ),
        (
            "smtp.max_connections_per_client/connection_limit_exceptions",
            differ(
                &(
                    n.smtp.max_connections_per_client,
                    n.smtp.connection_limit_exceptions(),
                ),
                &(
                    r.smtp.max_connections_per_client,
                    r.smtp.connection_limit_exceptions(),
                ),
            ),
        ),
        (
            "smtp.tls_cert/tls_key",
            differ(
                &(&n.smtp.tls_cert, &n.smtp.tls_key),
                &(&r.smtp.tls_cert, &r.smtp.tls_key),
            ),
        ),
        (
            "spool",
            differ(
                &(&n.spool, n.spool_segment_size, n.spool_max_segments),
                &(&r.spool, r.spool_segment_size, r.spool_max_segments),
            ),
        ),
        ("user", differ(&n.user, &r.user)),
        ("delivery", differ(&n.delivery, &r.delivery)),
        ("routes", differ(&n.routes, &r.routes)),
        ("tls_policy", differ(&n.tls_policy, &r.tls_policy)),
        ("dns", differ(&n.dns, &r.dns)),
        ("control", differ(&n.control, &r.control)),
        ("log", differ(&n.log, &r.log)),
        (
            "local.domains/lmtp (for delivery)",
            differ(
                &(&n.local.domains, &n.local.lmtp),
                &(&r.local.domains, &r.local.lmtp),
            ),
        ),
    ];
    checks
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(name, _)| name)
        .collect()
}

/// The resolver, delivery agent and queue manager, as `serve` and `queue run --once` use them.
fn queue_manager(
    cfg: &Config,
    spool: &spool::Spool,
    counters: &crate::metrics::Counters,
    host_addresses: &resolver::HostAddresses,
) -> anyhow::Result<(Manager<Deliverer>, QueueHandle)> {
    let resolver = resolver::Resolver::new(resolver::ResolverConfig {
        host_addresses: host_addresses.clone(),
        ..resolver_config(cfg)
    })
    .context("setting up the resolver")?;
    let deliverer = Arc::new(Deliverer {
        resolver,
        spool: spool.clone(),
        settings: client_settings(cfg)?,
        tls_policy: cfg.tls_policy.clone(),
        broken_tls: delivery::broken_tls::BrokenTls::new(cfg.delivery.tls_broken_for),
        source_address: cfg.delivery.source_address,
        max_queue_time: cfg.delivery.max_queue_time,
        counters: counters.delivery.clone(),
    });
    Ok(Manager::new(
        spool.clone(),
        deliverer,
        Settings {
            backoff: cfg.delivery.backoff.clone(),
            retry_jitter: cfg.delivery.retry_jitter,
            jitter_seed: None,
            concurrency: cfg.delivery.concurrency,
            messages_per_connection: cfg.delivery.messages_per_connection,
            max_queue_time: cfg.delivery.max_queue_time,
            delivery_enabled: cfg.delivery.enabled,
            hostname: cfg.hostname.clone(),
            counters: counters.queue.clone(),
            dsn: queue::bounce::Policy {
                delay_warning: cfg.delivery.delay_warning,
                postmaster: match cfg.local.domains.first() {
                    Some(d) => format!("postmaster@{d}"),
                    None => format!("postmaster@{}", cfg.hostname),
                },
            },
        },
    ))
}

/// `postrider queue run --once`: SMTPRCD without /FOREVER. Takes the spool (so the daemon
/// must not be running), attempts every domain with mail once, waits for the attempts and
/// the DSNs they cause, and exits.
pub fn run_queue_once(cfg: Config) -> anyhow::Result<()> {
    init_logging(&cfg);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        // As the daemon would: new segments must belong to its user, not to root.
        drop_privileges(&cfg)?;
        let (spool, recovery) = match spool::open(spool_config(&cfg)) {
            Ok(x) => x,
            Err(spool::SpoolError::Locked(_)) => anyhow::bail!(
                "the daemon is running on {}: use `postrider queue flush` instead",
                cfg.spool.display()
            ),
            Err(e) => return Err(e).context(format!("opening the spool {}", cfg.spool.display())),
        };
        info!("spool {}: {}", cfg.spool.display(), recovery.report);
        let counters = crate::metrics::Counters::default();
        let host_addresses = resolver::HostAddresses::new(crate::interfaces::read());
        let (mut manager, _queue) = queue_manager(&cfg, &spool, &counters, &host_addresses)?;
        manager.recover(recovery.messages, recovery.schedules);
        manager.run_once().await;
        spool.shutdown().await;
        Ok(())
    })
}

fn spool_config(cfg: &Config) -> spool::SpoolConfig {
    spool::SpoolConfig {
        segment_size: cfg.spool_segment_size,
        max_segments: cfg.spool_max_segments,
        ..spool::SpoolConfig::new(cfg.spool.clone())
    }
}

fn client_settings(cfg: &Config) -> anyhow::Result<ClientSettings> {
    let d = &cfg.delivery;
    let wants_verify = d.tls == config::TlsPolicy::Verify
        || cfg
            .tls_policy
            .entries()
            .iter()
            .any(|(_, p)| *p == config::TlsPolicy::Verify);
    // Loaded once at start so a missing bundle is a start-up error, not a deferral later.
    let verify_config = if wants_verify {
        Some(
            delivery::tls::verifying_config(d.tls_ca_file.as_deref())
                .map_err(|e| anyhow::anyhow!("delivery.tls_ca_file: {e}"))?,
        )
    } else {
        None
    };
    Ok(ClientSettings {
        hostname: cfg.hostname.clone(),
        delivery: d.clone(),
        tls_config: delivery::tls::client_config(),
        verify_config,
    })
}

pub fn resolver_config(cfg: &Config) -> resolver::ResolverConfig {
    resolver::ResolverConfig {
        nameservers: cfg.dns.nameservers.clone(),
        timeout: cfg.dns.timeout,
        attempts: cfg.dns.attempts,
        routes: cfg.routes.clone(),
        local_domains: cfg.local.domains.clone(),
        lmtp: cfg.local.lmtp.clone(),
        port: cfg.delivery.port,
        implicit_mx: cfg.delivery.implicit_mx,
        ipv6: cfg.delivery.ipv6,
        srv: cfg.delivery.srv,
        self_addresses: cfg.delivery.self_addresses.clone(),
        listen: cfg.smtp.listen.clone(),
        host_addresses: resolver::HostAddresses::default(),
    }
}
