//! Load generator for `bench/resolver_bench.sh`: resolves many domains against one name
//! server and prints what it measured as one line of `key=value` pairs.
//!
//! ```text
//! resolve_bench --server 127.0.0.1:PORT --mode distinct --count 10000 [--concurrency 100]
//! resolve_bench --server 127.0.0.1:PORT --mode same --count 10000
//! ```
//!
//! `distinct`: `d0.bench.test` .. `d{count-1}.bench.test`, at most `concurrency` at a time.
//! `same`: `same.bench.test`, `count` calls all started at once. Every answer must be
//! `mx.bench.test`'s address. Before timing, `ready.test` is resolved until the server
//! answers, so the caller need not wait for it to start.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use resolver::{Resolver, ResolverConfig};

struct Args {
    server: SocketAddr,
    distinct: bool,
    count: usize,
    concurrency: usize,
}

fn args() -> Result<Args, String> {
    let mut server = None;
    let mut distinct = None;
    let mut count = 10_000;
    let mut concurrency = 100;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--server" => server = Some(value()?.parse().map_err(|e| format!("--server: {e}"))?),
            "--mode" => {
                distinct = Some(match value()?.as_str() {
                    "distinct" => true,
                    "same" => false,
                    m => return Err(format!("--mode {m}: distinct or same")),
                })
            }
            "--count" => count = value()?.parse().map_err(|e| format!("--count: {e}"))?,
            "--concurrency" => {
                concurrency = value()?
                    .parse()
                    .map_err(|e| format!("--concurrency: {e}"))?
            }
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    Ok(Args {
        server: server.ok_or("--server is required")?,
        distinct: distinct.ok_or("--mode is required")?,
        count,
        concurrency: concurrency.max(1),
    })
}

fn resolver(server: SocketAddr) -> Resolver {
    Resolver::new(ResolverConfig {
        nameservers: Some(vec![server]),
        ipv6: false,
        ..Default::default()
    })
    .expect("resolver setup")
}

/// Whether `domain` resolved to the one expected destination.
async fn check(r: &Resolver, domain: &str) -> bool {
    match r.resolve(domain).await {
        Ok(d) => d.len() == 1 && d[0].to_string() == "mx.bench.test[127.0.0.2]:25",
        Err(_) => false,
    }
}

/// User plus system CPU seconds this process has used (Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    // The kernel's clock tick for these fields is 100 Hz on every Linux this runs on.
    f.iter().sum::<f64>() / 100.0
}

#[tokio::main]
async fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("resolve_bench: {e}");
            std::process::exit(2);
        }
    };
    let ready = resolver(a.server);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready.resolve("ready.test").await.is_err() {
        assert!(Instant::now() < deadline, "no answer from {}", a.server);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A fresh resolver, so that nothing the probe looked up is cached.
    let r = Arc::new(resolver(a.server));
    let ok = Arc::new(AtomicUsize::new(0));
    let cpu_start = cpu_seconds();
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    if a.distinct {
        let next = Arc::new(AtomicUsize::new(0));
        for _ in 0..a.concurrency.min(a.count) {
            let (r, ok, next) = (r.clone(), ok.clone(), next.clone());
            set.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= a.count {
                        break;
                    }
                    if check(&r, &format!("d{i}.bench.test")).await {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    } else {
        for _ in 0..a.count {
            let (r, ok) = (r.clone(), ok.clone());
            set.spawn(async move {
                if check(&r, "same.bench.test").await {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    }
    set.join_all().await;
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_start;
    let ok = ok.load(Ordering::Relaxed);
    println!(
        "mode={} count={} concurrency={} ok={ok} failed={} wall_s={wall:.3} per_s={:.0} lookups={} cpu_s={cpu:.2}",
        if a.distinct { "distinct" } else { "same" },
        a.count,
        if a.distinct { a.concurrency } else { a.count },
        a.count - ok,
        a.count as f64 / wall,
        r.lookups_performed(),
    );
}
