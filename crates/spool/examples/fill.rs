//! Fills a spool with deferred mail for the scheduler memory benchmark (bench/memory.sh):
//! `fill DIR MESSAGES RCPTS_PER_MESSAGE DOMAINS` writes MESSAGES messages of 1 KB, each with
//! RCPTS_PER_MESSAGE recipients spread round-robin over DOMAINS domains (`dN.test`), every
//! recipient deferred once, and a retry schedule for every domain an hour ahead, so a daemon
//! started on the spool recovers it all and has nothing due.

use std::time::{SystemTime, UNIX_EPOCH};

use spool::{DomainSchedule, Envelope, RcptState, Recipient, SpoolConfig, Update};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: fill DIR MESSAGES RCPTS_PER_MESSAGE DOMAINS");
        std::process::exit(64);
    }
    let dir = &args[1];
    let n: usize = args[2].parse().expect("MESSAGES");
    let per: usize = args[3].parse().expect("RCPTS_PER_MESSAGE");
    let domains: usize = args[4].parse().expect("DOMAINS");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (spool, _) = spool::open(SpoolConfig::new(dir)).expect("open spool");
    let body = vec![b'x'; 1000];
    rt.block_on(async {
        let mut next_domain = 0usize;
        let mut tasks = Vec::new();
        for chunk in 0..n.div_ceil(1000) {
            let s = spool.clone();
            let start = chunk * 1000;
            let count = 1000.min(n - start);
            let first_domain = next_domain;
            next_domain += count * per;
            let body = body.clone();
            tasks.push(tokio::spawn(async move {
                let mut d = first_domain;
                for _ in 0..count {
                    let id = s.ids().next();
                    let recipients = (0..per)
                        .map(|_| {
                            d += 1;
                            Recipient {
                                address: format!("user@d{}.test", d % domains),
                                state: RcptState::Deferred,
                                tries: 1,
                                last_error: Some("451 4.3.0 try later".into()),
                                ..Default::default()
                            }
                        })
                        .collect();
                    let env = Envelope {
                        id,
                        arrival: now,
                        sender: "bench@src.test".into(),
                        envid: None,
                        ret: None,
                        body: Default::default(),
                        smtputf8: false,
                        client: "fill".into(),
                        held: false,
                        kind: Default::default(),
                        recipients,
                    };
                    let mut w = s.content_writer(id);
                    w.write(&body).await.unwrap();
                    s.commit(&env, w).await.unwrap();
                }
            }));
            if tasks.len() >= 64 {
                for t in tasks.drain(..) {
                    t.await.unwrap();
                }
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        let schedules: Vec<Update> = (0..domains)
            .map(|i| {
                Update::Schedule(DomainSchedule {
                    domain: format!("d{i}.test"),
                    level: 3,
                    next_attempt: now + 3600,
                })
            })
            .collect();
        for chunk in schedules.chunks(10_000) {
            spool.update(chunk.to_vec()).await.unwrap();
        }
        spool.shutdown().await;
    });
    eprintln!("filled {dir}: {n} messages x {per} recipients over {domains} domains");
}
