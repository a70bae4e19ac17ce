//! The Prometheus text endpoint on `control.metrics`. Counters live with the component that
//! counts (cleanup, deliveries, the spool writer); queue gauges are asked of the queue
//! manager, their owner, at scrape time. The HTTP side is the minimum Prometheus needs:
//! `GET /metrics` over HTTP/1.x, one response per connection.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use queue::QueueHandle;
use queue::api::{QueueStats, Request, Response};
use smtp_server::limits::ConnLimits;

/// Every component's counters, each owned (written) by its component.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub cleanup: Arc<cleanup::Counters>,
    pub queue: Arc<queue::Counters>,
    pub delivery: Arc<delivery::Counters>,
}

pub struct Sources {
    pub queue: QueueHandle,
    pub spool: spool::Spool,
    pub limits: ConnLimits,
    pub counters: Counters,
}

/// Appends one metric with its HELP and TYPE lines.
fn metric(out: &mut String, kind: &str, name: &str, help: &str, v: u64) {
    let _ = write!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
    );
}

/// Renders every metric in the Prometheus text format.
pub async fn render(s: &Sources) -> String {
    let q = match s.queue.control(Request::Stats).await {
        Response::Stats(q) => q,
        _ => QueueStats::default(),
    };
    let mut out = String::with_capacity(4096);
    metric(
        &mut out,
        "gauge",
        "postrider_queue_messages",
        "Messages in the queue.",
        q.messages,
    );
    metric(
        &mut out,
        "gauge",
        "postrider_queue_recipients",
        "Recipients not yet delivered or failed.",
        q.recipients_open,
    );
    metric(
        &mut out,
        "gauge",
        "postrider_queue_deferred_recipients",
        "Recipients whose last attempt failed temporarily.",
        q.deferred_recipients,
    );
    metric(
        &mut out,
        "gauge",
        "postrider_queue_held_messages",
        "Messages on hold.",
        q.held_messages,
    );
    metric(
        &mut out,
        "gauge",
        "postrider_queue_domains",
        "Destination domains with pending mail.",
        q.domains,
    );
    metric(
        &mut out,
        "gauge",
        "postrider_delivery_attempts_in_flight",
        "Domains being delivered to now.",
        q.attempts_in_flight,
    );
    metric(
        &mut out,
        "gauge",
        "postrider_connections_in",
        "Open SMTP client connections.",
        s.limits.open() as u64,
    );
    metric(
        &mut out,
        "gauge",
        "postrider_connections_out",
        "Open outbound SMTP/LMTP connections.",
        s.counters.delivery.connections_out.load(Ordering::Relaxed),
    );
    let _ = write!(
        out,
        "# HELP postrider_domain_backoff_level Domains at each retry level.\n# TYPE postrider_domain_backoff_level gauge\n"
    );
    for (level, n) in q.backoff_levels.iter().enumerate() {
        let _ = writeln!(
            out,
            "postrider_domain_backoff_level{{level=\"{level}\"}} {n}"
        );
    }
    let c = &s.counters;
    metric(
        &mut out,
        "counter",
        "postrider_messages_received_total",
        "Messages accepted (250 after DATA).",
        c.cleanup.received.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "counter",
        "postrider_dsn_sent_total",
        "DSNs queued.",
        c.queue.dsn_sent.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "counter",
        "postrider_dns_lookups_total",
        "Destination lookups.",
        c.delivery.dns_lookups.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "counter",
        "postrider_dns_lookup_seconds_total",
        "Time spent in destination lookups.",
        c.delivery.dns_micros.load(Ordering::Relaxed) / 1_000_000,
    );
    let _ = write!(
        out,
        "# HELP postrider_scheduler_tick_seconds_max Longest queue manager tick.\n\
         # TYPE postrider_scheduler_tick_seconds_max gauge\n\
         postrider_scheduler_tick_seconds_max {:.6}\n\
         # HELP postrider_scheduler_tick_seconds Queue manager ticks.\n\
         # TYPE postrider_scheduler_tick_seconds summary\n\
         postrider_scheduler_tick_seconds_sum {:.6}\n\
         postrider_scheduler_tick_seconds_count {}\n",
        c.queue.tick_micros_max.load(Ordering::Relaxed) as f64 / 1e6,
        c.queue.tick_micros_total.load(Ordering::Relaxed) as f64 / 1e6,
        c.queue.ticks.load(Ordering::Relaxed),
    );
    let st = s.spool.stats();
    metric(
        &mut out,
        "counter",
        "postrider_spool_commits_total",
        "Messages made durable.",
        st.commits.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "counter",
        "postrider_spool_fsyncs_total",
        "fdatasync calls on the spool log.",
        st.fsyncs.load(Ordering::Relaxed),
    );
    let _ = write!(
        out,
        "# HELP postrider_deliveries_total Recipient delivery results.\n# TYPE postrider_deliveries_total counter\n"
    );
    for (outcome, v) in [
        ("delivered", &c.delivery.delivered),
        ("deferred", &c.delivery.deferred),
        ("failed", &c.delivery.failed),
    ] {
        let _ = writeln!(
            out,
            "postrider_deliveries_total{{outcome=\"{outcome}\"}} {}",
            v.load(Ordering::Relaxed)
        );
    }
    let _ = write!(
        out,
        "# HELP postrider_spool_batch_size Requests per group commit.\n# TYPE postrider_spool_batch_size histogram\n"
    );
    let (buckets, sum, count) = st.batch_histogram();
    for (le, n) in buckets {
        let _ = writeln!(out, "postrider_spool_batch_size_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "postrider_spool_batch_size_bucket{{le=\"+Inf\"}} {count}"
    );
    let _ = writeln!(out, "postrider_spool_batch_size_sum {sum}");
    let _ = writeln!(out, "postrider_spool_batch_size_count {count}");
    out
}

/// Scrapes served at once.
const MAX_SCRAPES: usize = 32;

/// Serves `GET /metrics` on `listener` until shutdown.
pub async fn serve(
    listener: TcpListener,
    sources: Sources,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let sources = Arc::new(sources);
    // Whoever can reach the endpoint must not be able to pile up tasks: past this many
    // scrapes at once a new connection is closed. Each is tracked and waited for (briefly)
    // at shutdown.
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        let (mut sock, _) = tokio::select! {
            r = listener.accept() => r?,
            _ = shutdown.cancelled() => {
                tasks.close();
                let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
                return Ok(());
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        let sources = sources.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let mut req = Vec::with_capacity(512);
            let mut buf = [0u8; 1024];
            // A scraper sends a few hundred bytes; anything slow or large is dropped.
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                true
            })
            .await;
            if !matches!(read, Ok(true)) {
                return;
            }
            let line = req.split(|&b| b == b'\r').next().unwrap_or_default();
            let (status, body) = if line.starts_with(b"GET /metrics ") || line == b"GET /metrics" {
                ("200 OK", render(&sources).await)
            } else {
                (
                    "404 Not Found",
                    "only /metrics is served here\n".to_string(),
                )
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}
