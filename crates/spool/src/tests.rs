//! Spool tests against a real directory: durability across reopen, torn tails, group
//! commit, reclaim and compaction.

use std::io::{Read, Write};
use std::sync::atomic::Ordering;

use super::*;
use crate::recovery::list_segments;

fn env(id: TxnId, rcpts: usize) -> Envelope {
    Envelope {
        id,
        arrival: 1_700_000_000,
        sender: "s@src.test".into(),
        envid: None,
        ret: None,
        body: BodyType::SevenBit,
        smtputf8: false,
        client: "c [127.0.0.1]".into(),
        held: false,
        kind: Default::default(),
        recipients: (0..rcpts)
            .map(|i| Recipient {
                address: format!("r{i}@dst.test"),
                ..Default::default()
            })
            .collect(),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn put(spool: &Spool, rcpts: usize, body: &[u8]) -> (Envelope, MessageRef) {
    let id = spool.ids().next();
    let mut w = spool.content_writer(id);
    for chunk in body.chunks(7000) {
        w.write(chunk).await.unwrap();
    }
    let e = env(id, rcpts);
    let m = spool.commit(&e, w).await.unwrap();
    (e, m)
}

fn read_all(spool: &Spool, m: &MessageRef) -> Vec<u8> {
    let mut v = Vec::new();
    spool.open_content(m).unwrap().read_to_end(&mut v).unwrap();
    v
}

#[test]
fn messages_and_updates_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..INLINE_MAX * 3).map(|i| (i % 251) as u8).collect();
    let (small_id, big_id, done_id) = {
        let (spool, rec) = open(SpoolConfig::new(dir.path())).unwrap();
        assert!(rec.messages.is_empty());
        let ids = rt().block_on(async {
            let (e1, m1) = put(&spool, 2, b"Subject: small\r\n\r\nhi\r\n").await;
            let (e2, m2) = put(&spool, 1, &big).await;
            let (e3, _) = put(&spool, 1, b"x\r\n").await;
            assert_eq!(read_all(&spool, &m1), b"Subject: small\r\n\r\nhi\r\n");
            assert_eq!(read_all(&spool, &m2), big);
            assert!(content_path(dir.path(), e2.id).exists());
            spool
                .update(vec![
                    Update::Rcpt {
                        id: e1.id,
                        index: 1,
                        state: RcptState::Delivered,
                        tries: 1,
                        last_error: None,
                        next_attempt: 0,
                        relay: Some("mx.dst.test[127.0.0.1]:25".into()),
                        handoff: Handoff::Relayed,
                    },
                    Update::Hold { id: e2.id },
                    Update::Done { id: e3.id },
                    Update::Schedule(DomainSchedule {
                        domain: "dst.test".into(),
                        level: 3,
                        next_attempt: 1_900_000_000,
                    }),
                ])
                .await
                .unwrap();
            (e1.id, e2.id, e3.id)
        });
        // No shutdown: the handle is dropped as a crash would leave it.
        ids
    };
    let (spool, rec) = open(SpoolConfig::new(dir.path())).unwrap();
    let ids: Vec<TxnId> = rec.messages.iter().map(|(e, _)| e.id).collect();
    assert_eq!(ids, vec![small_id, big_id], "{}", rec.report);
    assert!(!ids.contains(&done_id));
    let (e1, m1) = &rec.messages[0];
    assert_eq!(e1.recipients[1].state, RcptState::Delivered);
    assert_eq!(e1.recipients[1].handoff, Handoff::Relayed);
    assert!(e1.recipients[1].relay.is_some());
    assert_eq!(e1.recipients[0].state, RcptState::Pending);
    assert!(rec.messages[1].0.held);
    assert_eq!(read_all(&spool, m1), b"Subject: small\r\n\r\nhi\r\n");
    assert_eq!(read_all(&spool, &rec.messages[1].1), big);
    assert_eq!(rec.schedules.len(), 1);
    assert_eq!(rec.schedules[0].level, 3);
    // New ids sort after recovered ones.
    assert!(spool.ids().next() > big_id);
    // Delete removes the external content file once durable.
    rt().block_on(async {
        spool
            .update(vec![Update::Delete { id: big_id }])
            .await
            .unwrap();
        spool.shutdown().await;
    });
    assert!(!content_path(dir.path(), big_id).exists());
}

#[test]
fn second_open_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_spool, _) = open(SpoolConfig::new(dir.path())).unwrap();
    match open(SpoolConfig::new(dir.path())) {
        Err(SpoolError::Locked(_)) => {}
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("a second open must be refused"),
    }
}

#[test]
fn torn_tail_is_cut_and_earlier_records_kept() {
    let dir = tempfile::tempdir().unwrap();
    let keep;
    {
        let (spool, _) = open(SpoolConfig::new(dir.path())).unwrap();
        keep = rt().block_on(put(&spool, 1, b"kept\r\n")).0.id;
    }
    // A record cut short by a crash mid-write: header and part of the payload.
    let segs = list_segments(dir.path()).unwrap();
    let last = seg_path(dir.path(), *segs.last().unwrap());
    let mut rec = Vec::new();
    record::encode_message(&env(TxnId(u64::MAX - 1), 1), Some(b"lost"), 0, &mut rec);
    let before = fs::metadata(&last).unwrap().len();
    let mut f = fs::OpenOptions::new().append(true).open(&last).unwrap();
    f.write_all(&rec[..rec.len() - 3]).unwrap();
    drop(f);
    let (_spool, rec2) = open(SpoolConfig::new(dir.path())).unwrap();
    assert_eq!(rec2.messages.len(), 1);
    assert_eq!(rec2.messages[0].0.id, keep);
    assert_eq!(rec2.report.truncated, (rec.len() - 3) as u64);
    assert_eq!(fs::metadata(&last).unwrap().len(), before);
    assert!(rec2.report.corrupt.is_empty());
}

#[test]
fn orphan_content_files_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_s, _) = open(SpoolConfig::new(dir.path())).unwrap();
    }
    let orphan = content_path(dir.path(), TxnId(42));
    fs::write(&orphan, b"never committed").unwrap();
    let (_s, rec) = open(SpoolConfig::new(dir.path())).unwrap();
    assert_eq!(rec.report.orphans_removed, 1);
    assert!(!orphan.exists());
}

#[test]
fn uncommitted_big_content_is_removed_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(SpoolConfig::new(dir.path())).unwrap();
    let id = spool.ids().next();
    rt().block_on(async {
        let mut w = spool.content_writer(id);
        w.write(&vec![b'a'; INLINE_MAX + 1]).await.unwrap();
        assert!(content_path(dir.path(), id).exists());
        drop(w);
    });
    assert!(!content_path(dir.path(), id).exists());
}

#[test]
fn concurrent_commits_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(SpoolConfig::new(dir.path())).unwrap();
    rt().block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let s = spool.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..10 {
                    put(&s, 1, &[b'x'; 2000]).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let commits = spool.stats().commits.load(Ordering::Relaxed);
    let fsyncs = spool.stats().fsyncs.load(Ordering::Relaxed);
    assert_eq!(commits, 500);
    // With 50 writers there is nearly always a queue behind the fsync in progress.
    assert!(
        fsyncs * 2 < commits,
        "{fsyncs} fsyncs for {commits} commits"
    );
}

#[test]
fn reclaim_and_compaction_bound_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SpoolConfig {
        segment_size: 16 * 1024,
        max_segments: 4,
        ..SpoolConfig::new(dir.path())
    };
    let (spool, _) = open(cfg.clone()).unwrap();
    let rt = rt();
    let pinned = rt.block_on(async {
        let (pinned, _) = put(&spool, 1, b"Subject: deferred for days\r\n\r\n").await;
        // The envelopes' owner (the queue manager in the daemon) answers relocation
        // requests with the current envelope.
        let mut requests = spool.relocation_requests().expect("first taker");
        let (s2, env) = (spool.clone(), pinned.clone());
        tokio::spawn(async move {
            while let Some(ids) = requests.recv().await {
                for id in ids {
                    assert_eq!(id, env.id, "only the pinned message is live");
                    s2.relocate(vec![env.clone()]).await.unwrap();
                }
            }
        });
        for _ in 0..300 {
            let (e, _) = put(&spool, 1, &[b'y'; 1000]).await;
            spool.update(vec![Update::Done { id: e.id }]).await.unwrap();
        }
        pinned
    });
    // Relocation is asked for at most once a second: wait for it to have happened.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while list_segments(dir.path()).unwrap().len() > 6 {
        assert!(
            std::time::Instant::now() < deadline,
            "old segments were never reclaimed"
        );
        rt.block_on(spool.update(vec![Update::Done { id: TxnId(1) }]))
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let m = MessageRef {
        id: pinned.id,
        len: 30,
    };
    assert_eq!(read_all(&spool, &m), b"Subject: deferred for days\r\n\r\n");
    // The responder task holds a handle too: stopping the runtime drops it.
    drop(spool);
    drop(rt);
    let (spool, rec) = open(cfg).unwrap();
    assert_eq!(rec.messages.len(), 1, "{}", rec.report);
    assert_eq!(rec.messages[0].0, pinned, "relocated with its envelope");
    assert_eq!(
        read_all(&spool, &rec.messages[0].1),
        b"Subject: deferred for days\r\n\r\n"
    );
}

#[test]
fn inspect_reads_without_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(SpoolConfig::new(dir.path())).unwrap();
    rt().block_on(put(&spool, 3, b"x\r\n"));
    let rec = inspect(dir.path()).unwrap();
    assert_eq!(rec.messages.len(), 1);
    assert_eq!(rec.messages[0].0.recipients.len(), 3);
}
