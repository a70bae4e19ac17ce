//! Delivery attempts: one domain, one connection, a batch of messages newest first.
//!
//! The queue manager hands a [`Attempt`] to [`Deliverer::run`]; the deliverer resolves the
//! domain afresh (MX is never stored in the queue), talks SMTP or LMTP, makes every
//! recipient's result durable in the spool, and only then reports back. Each message's
//! results are written as soon as its final reply is in, while the connection goes on with
//! the next message, so a crash repeats at most the deliveries of the last commit window,
//! and never more than a few per connection: a connection waits when its results lag.

use queue::{Attempt, AttemptReport, JobMessage, RcptOutcome, RcptResult, Recorder};
use spool::TxnId;

pub mod broken_tls;
pub mod client;
pub mod counters;
pub mod protocol;
pub mod tls;

pub use counters::Counters;

use std::collections::VecDeque;
use std::net::IpAddr;

use client::{Client, ClientSettings, SessionError};
use resolver::{Destination, Resolver};
use smtp_proto::EnhancedCode;
use spool::Spool;
use tracing::{info, warn};

/// Runs delivery attempts; shared by every attempt task (its parts are all handles).
pub struct Deliverer {
    pub resolver: Resolver,
    pub spool: Spool,
    pub settings: ClientSettings,
    pub source_address: Option<IpAddr>,
    pub max_queue_time: std::time::Duration,
    pub counters: std::sync::Arc<crate::Counters>,
    /// `[tls_policy]`: per destination domain, overriding `settings.delivery.tls`.
    pub tls_policy: config::RouteTable<config::TlsPolicy>,
    /// Hosts whose STARTTLS handshake failed lately (`delivery.tls_broken_for`): under
    /// opportunistic TLS they get plaintext without a handshake attempt.
    pub broken_tls: broken_tls::BrokenTls,
}

/// Counts an open outbound connection for as long as it lives.
struct OutConn<'a>(&'a crate::Counters);

impl<'a> OutConn<'a> {
    fn new(c: &'a crate::Counters) -> Self {
        crate::counters::inc(&c.connections_out);
        OutConn(c)
    }
}

impl Drop for OutConn<'_> {
    fn drop(&mut self) {
        self.0
            .connections_out
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn all(msg: &JobMessage, outcome: &RcptOutcome) -> impl Iterator<Item = RcptResult> {
    msg.recipients.iter().map(move |r| RcptResult {
        id: msg.id,
        index: r.index,
        outcome: outcome.clone(),
    })
}

impl queue::Deliver for Deliverer {
    fn run(&self, attempt: Attempt) -> impl std::future::Future<Output = AttemptReport> + Send {
        Deliverer::run(self, attempt)
    }
}

impl Deliverer {
    /// One attempt: resolve afresh, one connection, every message in order; the recipient
    /// results are durable in the spool before this returns.
    pub async fn run(&self, attempt: Attempt) -> AttemptReport {
        // For the log lines: who each result is about, and how long the message has waited.
        let who: std::collections::HashMap<(TxnId, u16), (String, u64)> = attempt
            .messages
            .iter()
            .flat_map(|m| {
                m.recipients
                    .iter()
                    .map(move |r| ((m.id, r.index), (r.address.clone(), m.arrival)))
            })
            .collect();
        let mut rec = attempt.recorder;
        let (expired, live): (Vec<JobMessage>, Vec<JobMessage>) =
            attempt.messages.into_iter().partition(|m| m.expired);
        let mut results = Vec::new();
        for m in &expired {
            let days = self.max_queue_time.as_secs() / 86_400;
            let status = EnhancedCode::new(4, 4, 7);
            let outcome = RcptOutcome::failed(
                status,
                format!("{status} message expired: undeliverable for {days} days"),
            );
            results.extend(all(m, &outcome));
        }
        rec.record(results);
        if !live.is_empty() {
            let started = std::time::Instant::now();
            let resolved = self.resolver.resolve(&attempt.domain_name).await;
            crate::counters::inc(&self.counters.dns_lookups);
            self.counters.dns_micros.fetch_add(
                started.elapsed().as_micros() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            match resolved {
                Err(f) => {
                    let outcome = if f.is_permanent() {
                        RcptOutcome::failed(f.status(), f.to_string())
                    } else {
                        RcptOutcome::deferred(f.status(), f.to_string())
                    };
                    rec.record(live.iter().flat_map(|m| all(m, &outcome)).collect());
                }
                Ok(dests) => {
                    let mut settings = self.settings.clone();
                    if let Some(p) = self.tls_policy.lookup(&attempt.domain_name) {
                        settings.delivery.tls = *p;
                    }
                    self.deliver(&dests, live, &settings, &mut rec).await
                }
            }
        }
        let (results, unrecorded) = rec.finish().await;
        let now = spool::unix_now();
        for r in results.iter().map(|x| &x.result) {
            let (to, arrival) = who
                .get(&(r.id, r.index))
                .map(|(a, t)| (a.as_str(), *t))
                .unwrap_or(("?", now));
            log_result(&attempt.domain_name, r, to, now.saturating_sub(arrival));
            let c = &self.counters;
            crate::counters::inc(match r.outcome {
                RcptOutcome::Delivered { .. } => &c.delivered,
                RcptOutcome::Deferred { .. } => &c.deferred,
                RcptOutcome::Failed { .. } => &c.failed,
            });
        }
        for (r, e) in &unrecorded {
            let to = who.get(&(r.id, r.index)).map_or("?", |(a, _)| a.as_str());
            let rcpt_id = r.id.rcpt_id(r.index);
            let (relay, _) = r.outcome.relay_and_handoff();
            warn!(
                queue_id = %r.id, %rcpt_id, to, domain = %attempt.domain_name,
                relay = relay.as_deref().unwrap_or("none"), status = "deferred",
                "result not recorded, the recipient stays queued and is tried again: {e}"
            );
            crate::counters::inc(&self.counters.deferred);
        }
        AttemptReport {
            domain: attempt.domain,
            domain_name: attempt.domain_name,
            results,
            unrecorded: unrecorded.into_iter().map(|(r, _)| r).collect(),
        }
    }

    /// Connects to `dest` and greets it. Under opportunistic TLS a failed handshake does not
    /// strand the mail: the same address is tried again at once in plaintext, and the host
    /// is remembered so that the next connections skip STARTTLS. Policies that demand TLS
    /// fail here as before, and never read the memory.
    async fn open(
        &self,
        dest: &Destination,
        settings: &ClientSettings,
        pending: &VecDeque<JobMessage>,
    ) -> Result<Client, SessionError> {
        let host = match dest.socket_addr() {
            Some(addr) if settings.delivery.tls == config::TlsPolicy::Opportunistic => {
                Some((dest.host().to_owned(), addr))
            }
            _ => None,
        };
        let plain = || {
            let mut s = settings.clone();
            s.delivery.tls = config::TlsPolicy::None;
            s
        };
        let now = std::time::Instant::now();
        if let Some(h) = &host
            && self.broken_tls.is_broken(h, now)
        {
            return self.connect(dest, &plain()).await;
        }
        let first = self.connect(dest, settings).await;
        let (Some(h), Err(SessionError::TlsHandshake(relay, e))) = (host, &first) else {
            return first;
        };
        self.broken_tls.remember(h, now);
        let ids: Vec<String> = pending.iter().map(|m| m.id.to_string()).collect();
        warn!(
            queue_id = %ids.join(","), relay,
            for_secs = settings.delivery.tls_broken_for.as_secs(),
            "TLS handshake failed ({e}); delivering in plaintext, and to this host without \
             STARTTLS for a while"
        );
        self.connect(dest, &plain()).await
    }

    async fn connect(
        &self,
        dest: &Destination,
        settings: &ClientSettings,
    ) -> Result<Client, SessionError> {
        let relay = dest.to_string();
        let io: Box<dyn client::Io> = match dest.unix_path() {
            Some(path) => Box::new(
                tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|e| SessionError::Connect(relay.clone(), e))?,
            ),
            None => Box::new(
                client::connect_tcp(
                    dest.socket_addr().expect("tcp destination has an address"),
                    self.source_address,
                    settings.delivery.connect_timeout,
                )
                .await?,
            ),
        };
        Client::start(io, relay, dest.is_lmtp(), settings.clone(), dest.host()).await
    }

    async fn deliver(
        &self,
        dests: &[Destination],
        live: Vec<JobMessage>,
        settings: &ClientSettings,
        rec: &mut Recorder,
    ) {
        let mut pending: VecDeque<JobMessage> = live.into();
        let mut last_error: Option<SessionError> = None;
        'dests: for dest in dests {
            let mut client = match self.open(dest, settings, &pending).await {
                Ok(c) => c,
                Err(e) => {
                    info!(domain = dest.host(), "{e}; trying the next destination");
                    last_error = Some(e);
                    continue;
                }
            };
            let _counted = OutConn::new(&self.counters);
            let mut first = true;
            while let Some(msg) = pending.front() {
                rec.keep_up().await;
                if !first && let Err(e) = client.rset().await {
                    last_error = Some(e);
                    break 'dests;
                }
                first = false;
                let content = match self.spool.open_content(&msg.mref) {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(queue_id = %msg.id, "cannot read content from the spool: {e}");
                        let status = EnhancedCode::new(4, 3, 0);
                        let outcome = RcptOutcome::deferred(
                            status,
                            format!("{status} spool read error: {e}"),
                        );
                        rec.record(all(msg, &outcome).collect());
                        pending.pop_front();
                        continue;
                    }
                };
                match client.send(msg, content).await {
                    Ok(res) => {
                        // Written while the connection goes on with the next message.
                        rec.record(
                            res.into_iter()
                                .map(|(index, outcome)| RcptResult {
                                    id: msg.id,
                                    index,
                                    outcome,
                                })
                                .collect(),
                        );
                        pending.pop_front();
                    }
                    Err(e) => {
                        // The connection broke mid-batch: the rest waits for the next attempt.
                        last_error = Some(e);
                        break 'dests;
                    }
                }
            }
            client.quit().await;
            break;
        }
        let outcome = match &last_error {
            Some(e) => e.outcome(),
            None if dests.is_empty() => {
                let status = EnhancedCode::new(4, 4, 4);
                RcptOutcome::deferred(status, format!("{status} no destination to try"))
            }
            None => {
                let status = EnhancedCode::new(4, 4, 1);
                RcptOutcome::deferred(status, format!("{status} delivery not completed"))
            }
        };
        rec.record(pending.iter().flat_map(|m| all(m, &outcome)).collect());
    }
}

/// One line per recipient result: what an administrator greps for by queue id.
fn log_result(domain: &str, r: &RcptResult, to: &str, delay: u64) {
    let rcpt_id = r.id.rcpt_id(r.index);
    let dsn = r.outcome.status();
    let reply = r.outcome.diagnostic();
    let reply = reply.as_str();
    match &r.outcome {
        RcptOutcome::Delivered { relay, .. } => info!(
            queue_id = %r.id, %rcpt_id, to, domain, relay, delay, %dsn,
            status = "sent", reply, "delivered"
        ),
        RcptOutcome::Deferred { relay, .. } => info!(
            queue_id = %r.id, %rcpt_id, to, domain, relay = relay.as_deref().unwrap_or("none"), delay,
            %dsn, status = "deferred", reply, "deferred"
        ),
        RcptOutcome::Failed { relay, .. } => info!(
            queue_id = %r.id, %rcpt_id, to, domain, relay = relay.as_deref().unwrap_or("none"), delay,
            %dsn, status = "bounced", reply, "failed"
        ),
    }
}
