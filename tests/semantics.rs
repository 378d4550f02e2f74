//! In-flight semantics on real clusters: TTL, request ids, read consistency
//! under partitions, atomic batches, and watch streams.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use testkit::cluster::refusing_sink;
use testkit::{wait_for, Addresses, Cluster, ClusterOptions};

use inflight::client::{Client, ClientOptions, Consistency};
use inflight::pb;
use tonic::Code;

fn state_of(r: &pb::GetResponse) -> pb::RecordState {
    pb::RecordState::try_from(r.record.as_ref().unwrap().state).unwrap()
}

/// Polls every running node (STALE reads) until `key` is no longer LIVE there;
/// returns how long that took from `since`.
async fn wait_not_live_everywhere(
    c: &Cluster,
    ids: &[u64],
    key: &str,
    since: Instant,
    expect_gone: bool,
) -> Duration {
    for &id in ids {
        let node = c.node_client(id);
        wait_for(
            Duration::from_secs(10),
            &format!("{key} to expire on node {id}"),
            || async {
                match node.get(key, Consistency::Stale).await {
                    Ok(g) if !expect_gone && state_of(&g) == pb::RecordState::Expired => Some(()),
                    Err(e) if expect_gone && e.code() == Code::NotFound => Some(()),
                    _ => None,
                }
            },
        )
        .await;
    }
    since.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ttl_record_expires_on_every_node_within_2s_also_across_a_leader_change() {
    // The sink refuses, so EXPIRED records stay visible instead of being handed off.
    let mut c = Cluster::start(ClusterOptions {
        sink: Some(refusing_sink()),
        ..Default::default()
    })
    .await;
    let client = c.client();
    let ttl = |key: &str| pb::InsertRequest {
        key: key.into(),
        value: b"ringing".to_vec(),
        ttl_ms: Some(1_000),
        ..Default::default()
    };

    // Quiet cluster.
    let m = client.send_insert(ttl("call/a")).await.unwrap();
    let t0 = Instant::now();
    let rec = m.record.unwrap();
    assert_eq!(rec.expires_at_ms, Some(rec.created_at_ms + 1_000));
    let took = wait_not_live_everywhere(&c, &[1, 2, 3], "call/a", t0, false).await;
    assert!(
        took <= Duration::from_secs(2),
        "expired everywhere after {took:?}"
    );
    // EXPIRED is immutable and keeps its value for hand-off.
    let g = client
        .get("call/a", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(g.record.as_ref().unwrap().value, &b"ringing"[..]);
    assert_eq!(g.record.as_ref().unwrap().version, 2);
    let e = client.update("call/a", "late", None).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    // The leader dies right after the insert: the next leader expires it.
    client.send_insert(ttl("call/b")).await.unwrap();
    let t0 = Instant::now();
    let old = c.wait_leader(Duration::from_secs(5)).await;
    c.kill(old);
    let alive: Vec<u64> = (1..=3).filter(|i| *i != old).collect();
    let took = wait_not_live_everywhere(&c, &alive, "call/b", t0, false).await;
    assert!(
        took <= Duration::from_secs(2),
        "expired on the survivors after {took:?}"
    );
    c.restart(old);
    wait_not_live_everywhere(&c, &[old], "call/b", t0, false).await;

    // A refreshed TTL postpones expiry; a cleared one cancels it.
    client.send_insert(ttl("call/c")).await.unwrap();
    client
        .send_update(pb::UpdateRequest {
            key: "call/c".into(),
            value: b"answered".to_vec(),
            clear_ttl: true,
            ..Default::default()
        })
        .await
        .unwrap();
    // Not a wait for a condition: the point is that 1.5 s pass, beyond the
    // 1 s TTL the update cleared, and the record is still LIVE.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let g = client
        .get("call/c", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(state_of(&g), pb::RecordState::Live);
    assert_eq!(g.record.unwrap().expires_at_ms, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_records_are_dropped_in_drop_mode() {
    let c = Cluster::start(ClusterOptions {
        extra_args: vec!["--expired".into(), "drop".into()],
        ..Default::default()
    })
    .await;
    let client = c.client();
    client
        .send_insert(pb::InsertRequest {
            key: "sms/1".into(),
            value: b"queued".to_vec(),
            ttl_ms: Some(500),
            ..Default::default()
        })
        .await
        .unwrap();
    let took = wait_not_live_everywhere(&c, &[1, 2, 3], "sms/1", Instant::now(), true).await;
    assert!(took <= Duration::from_secs(2), "{took:?}");
    // The key is free again.
    client
        .insert("sms/1", "again")
        .await
        .expect("re-insert after drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_retried_across_a_leader_kill_applies_exactly_once() {
    let mut c = Cluster::start(ClusterOptions::default()).await;
    let client = c.client();
    client.insert("msg/1", "queued").await.unwrap();
    let mut version = 1;
    for round in 0..6u64 {
        let leader = c.wait_leader(Duration::from_secs(10)).await;
        let req = pb::UpdateRequest {
            key: "msg/1".into(),
            value: format!("status-{round}").into_bytes(),
            request_id: format!("round-{round}-{}", inflight::client::new_request_id()),
            ..Default::default()
        };
        let task = {
            let client = client.clone();
            let req = req.clone();
            tokio::spawn(async move { client.send_update(req).await })
        };
        // Kill at different moments: before, while and after the write lands
        // (the sleep is the point: it sets the moment).
        tokio::time::sleep(Duration::from_millis(round * 3)).await;
        c.kill(leader);
        let first = task
            .await
            .unwrap()
            .expect("the client retries with the same id until it lands");
        version += 1;
        assert_eq!(
            first.record.as_ref().unwrap().version,
            version,
            "round {round}: applied exactly once"
        );

        // Retrying by hand (same id, same body) returns the original answer,
        // rebuilt from the remembered receipt: the same revision, key,
        // version, mod revision and state (not the value or the times).
        let again = client.send_update(req.clone()).await.unwrap();
        let (a, f) = (
            again.record.as_ref().unwrap(),
            first.record.as_ref().unwrap(),
        );
        assert_eq!(
            (again.revision, &a.key, a.version, a.mod_revision, a.state),
            (first.revision, &f.key, f.version, f.mod_revision, f.state),
            "round {round}: the retry gets the original answer"
        );
        assert_eq!(a.create_revision, 0, "round {round}: a replayed answer");
        // The same id with a different body is refused.
        let mut other = req.clone();
        other.value = b"something else".to_vec();
        let e = client.send_update(other).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("request_id"), "{}", e.message());

        c.restart(leader);
        let g = client
            .get("msg/1", Consistency::Linearizable)
            .await
            .unwrap();
        assert_eq!(g.record.unwrap().version, version);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn linearizable_read_never_returns_a_value_older_than_an_acknowledged_write() {
    let mut c = Cluster::start(ClusterOptions::default()).await;
    let client = c.client();
    client.insert("ctr", "0").await.unwrap();
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, acked, stop) = (client.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                client
                    .update("ctr", n.to_string(), None)
                    .await
                    .expect("write");
                acked.store(n, Ordering::SeqCst);
            }
        })
    };
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (client, acked, stop) = (client.clone(), acked.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) {
                let floor = acked.load(Ordering::SeqCst);
                let g = client
                    .get("ctr", Consistency::Linearizable)
                    .await
                    .expect("read");
                let seen: u64 = String::from_utf8(g.record.unwrap().value.to_vec())
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(seen >= floor, "read {seen} after {floor} was acknowledged");
                reads += 1;
            }
            reads
        }));
    }
    // Not waits for a condition: the load runs for set spans before, during
    // and after the leader's absence, and the readers check every read.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    c.kill(leader);
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.restart(leader);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    for r in readers {
        assert!(r.await.unwrap() > 10, "readers made progress");
    }
}

/// A cluster of `nodes` on distinct addresses holding `call/1` ("ringing"),
/// its client, its leader, and a follower that has applied the insert.
async fn follower_holding_call_1(nodes: u64) -> (Cluster, Client, u64, u64) {
    let c = Cluster::start(ClusterOptions {
        nodes,
        addresses: Addresses::DistinctIps,
        ..Default::default()
    })
    .await;
    let client = c.client();
    let first = client.insert("call/1", "ringing").await.unwrap();
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let f = (1..=nodes).find(|i| *i != leader).unwrap();
    c.wait_applied(f, first.revision, Duration::from_secs(5))
        .await;
    (c, client, leader, f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_hearing_only_from_a_deposed_leader_refuses_bounded_stale_reads() {
    let (c, _client, leader, f) = follower_holding_call_1(5).await;

    // The leader and one follower on the minority side: the follower keeps
    // accepting the old leader's heartbeats while the majority elects
    // another leader and writes on.
    let _fw = c.partition(&[leader, f]);
    let majority: Vec<String> = (1..=5)
        .filter(|i| *i != leader && *i != f)
        .map(|i| c.nodes[&i].grpc.clone())
        .collect();
    let majority = Client::new(majority).unwrap();
    wait_for(Duration::from_secs(10), "the majority to write", || async {
        majority.update("call/1", "answered", None).await.ok()
    })
    .await;
    // The bound asked for below is 500 ms; the write is older than that.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let e = c
        .node_client(f)
        .send_get(pb::GetRequest {
            key: "call/1".into(),
            consistency: Consistency::Stale as i32,
            max_staleness_ms: Some(500),
        })
        .await
        .expect_err("its state misses a write acknowledged 600 ms ago");
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("max_staleness_ms"), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_read_on_a_cut_off_follower_may_be_old_and_reports_its_revision() {
    let (c, client, _leader, f) = follower_holding_call_1(3).await;

    let fw = c.isolate(f);
    let second = client.update("call/1", "answered", None).await.unwrap();

    let node = c.node_client(f);
    let g = node
        .get("call/1", Consistency::Stale)
        .await
        .expect("a cut-off follower still serves STALE");
    assert_eq!(
        g.record.as_ref().unwrap().value,
        &b"ringing"[..],
        "old value"
    );
    assert!(
        g.revision < second.revision,
        "reports revision {} < {}",
        g.revision,
        second.revision
    );
    // Once it has not heard from the leader for a while, a bound on staleness
    // refuses it. (The sleep is the point: 1.2 s without the leader, past the
    // 500 ms bound asked for below.)
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let e = node
        .send_get(pb::GetRequest {
            key: "call/1".into(),
            consistency: Consistency::Stale as i32,
            max_staleness_ms: Some(500),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("max_staleness_ms"), "{}", e.message());
    // A client with every endpoint routes around it.
    let bounded = client
        .send_get(pb::GetRequest {
            key: "call/1".into(),
            consistency: Consistency::Stale as i32,
            max_staleness_ms: Some(500),
        })
        .await
        .expect("another node answers");
    assert_eq!(bounded.record.unwrap().value, &b"answered"[..]);

    fw.heal().expect("heal the cut");
    c.wait_applied(f, second.revision, Duration::from_secs(10))
        .await;
    let g = node.get("call/1", Consistency::Stale).await.unwrap();
    assert_eq!(g.record.unwrap().value, &b"answered"[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn linearizable_read_on_an_isolated_old_leader_fails_rather_than_return_stale_data() {
    let c = Cluster::start(ClusterOptions {
        addresses: Addresses::DistinctIps,
        ..Default::default()
    })
    .await;
    let client = c.client();
    client.insert("call/1", "ringing").await.unwrap();
    let old = c.wait_leader(Duration::from_secs(5)).await;
    let fw = c.isolate(old);

    // The majority elects a new leader and takes a write.
    let rest: Vec<u64> = (1..=3).filter(|i| *i != old).collect();
    let majority = Client::new(rest.iter().map(|i| c.nodes[i].grpc.clone())).unwrap();
    let new = wait_for(
        Duration::from_secs(10),
        "a new leader in the majority",
        || async {
            let s = c.status(rest[0]).await?;
            (s.leader_id != 0 && s.leader_id != old).then_some(s.leader_id)
        },
    )
    .await;
    let w = majority
        .update("call/1", "answered", None)
        .await
        .expect("majority write");
    assert!(w.revision > 0);
    assert_ne!(new, old);

    let stranded = Client::with_options(
        [c.nodes[&old].grpc.clone()],
        ClientOptions {
            request_timeout: Duration::from_secs(3),
            retry_for: Duration::ZERO,
            ..Default::default()
        },
    )
    .unwrap();
    for consistency in [Consistency::Linearizable, Consistency::Lease] {
        match stranded.get("call/1", consistency).await {
            Ok(g) => panic!(
                "{consistency:?} read on the isolated old leader returned {:?}",
                String::from_utf8_lossy(&g.record.unwrap().value)
            ),
            Err(e) => assert!(
                matches!(e.code(), Code::Unavailable | Code::DeadlineExceeded),
                "{consistency:?}: {e:?}"
            ),
        }
    }
    fw.heal().expect("heal the cut");
    let g = client
        .get("call/1", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(g.record.unwrap().value, &b"answered"[..]);
}

fn op_insert(key: &str, value: &str) -> pb::BatchOp {
    pb::BatchOp {
        op: Some(pb::batch_op::Op::Insert(pb::InsertRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })),
    }
}

fn op_update(key: &str, value: &str, if_version: Option<u64>) -> pb::BatchOp {
    pb::BatchOp {
        op: Some(pb::batch_op::Op::Update(pb::UpdateRequest {
            key: key.into(),
            value: value.into(),
            if_version,
            ..Default::default()
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_with_one_failing_guard_changes_nothing() {
    let c = Cluster::start(ClusterOptions::default()).await;
    let client = c.client();
    client.insert("call/1", "ringing").await.unwrap();
    let batch = |ops| pb::BatchRequest {
        ops,
        request_id: String::new(),
    };

    let e = client
        .batch(batch(vec![
            op_update("call/1", "answered", Some(1)),
            op_insert("call/2", "ringing"),
            op_insert("call/1", "dup"), // exists: fails the batch
        ]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    assert!(e.message().starts_with("ops[2]: "), "{}", e.message());
    assert_eq!(
        e.metadata()
            .get("x-inflight-failed-op")
            .unwrap()
            .to_str()
            .unwrap(),
        "2"
    );
    let g = client
        .get("call/1", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(
        (g.record.as_ref().unwrap().version, g.record.unwrap().value),
        (1, bytes::Bytes::from_static(b"ringing"))
    );
    assert_eq!(
        client
            .get("call/2", Consistency::Linearizable)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    let ok = client
        .batch(batch(vec![
            op_update("call/1", "answered", Some(1)),
            op_insert("call/2", "ringing"),
            op_update("call/2", "answered", Some(1)),
        ]))
        .await
        .unwrap();
    assert_eq!(ok.results.len(), 3);
    assert!(
        ok.results.iter().all(|r| r.revision == ok.revision),
        "one log entry"
    );
    for id in 1..=3 {
        c.wait_applied(id, ok.revision, Duration::from_secs(5))
            .await;
        let page = c
            .node_client(id)
            .scan("call/", 10, "", Consistency::Stale)
            .await
            .unwrap();
        let got: Vec<(String, u64)> = page
            .records
            .iter()
            .map(|r| (r.key.clone(), r.version))
            .collect();
        assert_eq!(
            got,
            [("call/1".to_string(), 2), ("call/2".to_string(), 2)],
            "node {id}"
        );
    }

    // Malformed batches are refused up front, naming the op.
    let e = client.batch(batch(vec![])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let mut with_id = op_insert("call/3", "x");
    if let Some(pb::batch_op::Op::Insert(r)) = &mut with_id.op {
        r.request_id = "mine".into();
    }
    let e = client
        .batch(batch(vec![op_insert("call/4", "x"), with_id]))
        .await
        .unwrap_err();
    assert!(e.message().contains("ops[1].request_id"), "{}", e.message());
    let e = client
        .batch(batch(vec![
            op_insert("call/5", "x"),
            op_insert(&"k".repeat(600), "x"),
        ]))
        .await
        .unwrap_err();
    assert!(
        e.message().contains("ops[1].key") && e.message().contains("512"),
        "{}",
        e.message()
    );
}

/// Reads watch messages until `want` events arrived; returns (revision, key) pairs.
async fn collect_events(stream: &mut inflight::client::Watch, want: usize) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    while out.len() < want {
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("watch stalled")
            .expect("watch stream error")
            .expect("watch stream ended");
        for e in msg.events {
            out.push((e.revision, e.record.unwrap().key));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_resumed_after_disconnect_delivers_every_later_event_exactly_once_in_order() {
    let c = Cluster::start(ClusterOptions::default()).await;
    let client = c.client();
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let on_follower = Client::new([c.nodes[&follower].grpc.clone()]).unwrap();
    let mut stream = on_follower
        .watch(pb::WatchRequest {
            prefix: "call/".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut expected: Vec<(u64, String)> = Vec::new();
    for i in 0..40 {
        let key = format!("call/{i:02}");
        expected.push((
            client.insert(&key, "ringing").await.unwrap().revision,
            key.clone(),
        ));
        client
            .insert(&format!("sms/{i}"), "not watched")
            .await
            .unwrap();
        if i % 4 == 0 {
            expected.push((
                client
                    .update(&key, "answered", None)
                    .await
                    .unwrap()
                    .revision,
                key,
            ));
        }
    }
    // A batch bigger than one watch message still arrives whole, at one revision.
    let ops: Vec<pb::BatchOp> = (0..300)
        .map(|i| op_insert(&format!("call/batch/{i:03}"), "x"))
        .collect();
    let b = client
        .batch(pb::BatchRequest {
            ops,
            request_id: String::new(),
        })
        .await
        .unwrap();
    for i in 0..300 {
        expected.push((b.revision, format!("call/batch/{i:03}")));
    }
    let mut seen = collect_events(&mut stream, 20).await;
    drop(stream);
    let resume_from = seen.last().unwrap().0 + 1;
    // More changes while nobody watches.
    for i in 40..60 {
        let key = format!("call/{i:02}");
        expected.push((client.insert(&key, "ringing").await.unwrap().revision, key));
    }
    // Resume on another node.
    let on_leader = Client::new([c.nodes[&leader].grpc.clone()]).unwrap();
    let mut resumed = on_leader
        .watch(pb::WatchRequest {
            prefix: "call/".into(),
            from_revision: resume_from,
            ..Default::default()
        })
        .await
        .unwrap();
    seen.extend(collect_events(&mut resumed, expected.len() - seen.len()).await);
    assert_eq!(
        seen, expected,
        "every event once, in revision order, nothing outside the prefix"
    );
    // Nothing more arrives but a progress notification.
    let mut quiet = on_leader
        .watch(pb::WatchRequest {
            prefix: "call/".into(),
            from_revision: expected.last().unwrap().0 + 1,
            progress_interval_ms: 200,
            ..Default::default()
        })
        .await
        .unwrap();
    let msg = quiet.message().await.unwrap().unwrap();
    assert!(msg.progress && msg.events.is_empty());
    assert!(msg.revision >= expected.last().unwrap().0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_from_a_revision_older_than_the_window_is_out_of_range() {
    let c = Cluster::start(ClusterOptions {
        extra_args: vec!["--watch-window-events".into(), "10".into()],
        ..Default::default()
    })
    .await;
    let client = c.client();
    let mut last = 0;
    for i in 0..30 {
        last = client
            .insert(&format!("k/{i}"), "v")
            .await
            .unwrap()
            .revision;
    }
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let node = Client::new([c.nodes[&leader].grpc.clone()]).unwrap();
    let e = node
        .watch(pb::WatchRequest {
            prefix: "k/".into(),
            from_revision: 2,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange);
    assert!(
        e.message().contains("compacted") && e.message().contains("from_revision 2"),
        "{}",
        e.message()
    );
    // Inside the window it works.
    let mut ok = node
        .watch(pb::WatchRequest {
            prefix: "k/".into(),
            from_revision: last - 3,
            ..Default::default()
        })
        .await
        .unwrap();
    let got = collect_events(&mut ok, 4).await;
    assert_eq!(
        got.iter().map(|e| e.0).collect::<Vec<_>>(),
        (last - 3..=last).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_that_stops_reading_is_cancelled_without_stalling_writes() {
    let c = Cluster::start(ClusterOptions::default()).await;
    let client = c.client();
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let node = Client::new([c.nodes[&leader].grpc.clone()]).unwrap();
    let mut slow = node
        .watch(pb::WatchRequest {
            prefix: "".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // 40,000 events of 1 KiB in 40 batches while the watcher reads nothing:
    // more than its HTTP/2 window, its queue and the live feed hold together.
    let started = Instant::now();
    let value = "x".repeat(1024);
    for b in 0..40 {
        let ops = (0..1_000)
            .map(|i| op_insert(&format!("b{b:02}/{i:04}"), &value))
            .collect();
        client
            .batch(pb::BatchRequest {
                ops,
                request_id: String::new(),
            })
            .await
            .expect("writes are not held up by a slow watcher");
    }
    let write_time = started.elapsed();
    // The watcher gets what was queued for it, then a status saying why it was cut off.
    let mut events = 0;
    let mut last_revision = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        assert!(
            Instant::now() < deadline,
            "no cancellation after {events} events"
        );
        match tokio::time::timeout(Duration::from_secs(40), slow.message())
            .await
            .expect("stream stalled")
        {
            Ok(Some(m)) => {
                events += m.events.len();
                last_revision = m.events.last().map_or(last_revision, |e| e.revision);
            }
            Ok(None) => panic!("stream ended without a status after {events} events"),
            Err(s) => break s,
        }
        assert!(events < 40_000, "the slow watcher was never cut off");
    };
    // Everything queued before the cut was delivered, so the revision to
    // resume from is exactly the one after the last received.
    assert!(
        status
            .message()
            .ends_with(&format!("resume with from_revision {}", last_revision + 1)),
        "{} (last received revision {last_revision})",
        status.message()
    );
    assert_eq!(events % 1_000, 0, "whole 1000-op revisions only");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("resume with from_revision"),
        "{}",
        status.message()
    );
    assert!(
        events < 40_000,
        "cancelled before the end ({events} events delivered)"
    );
    assert!(
        write_time < Duration::from_secs(60),
        "writes took {write_time:?}"
    );
    // A fresh watch still works.
    let mut fresh = node
        .watch(pb::WatchRequest {
            prefix: "after/".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let m = client.insert("after/1", "x").await.unwrap();
    let got = collect_events(&mut fresh, 1).await;
    assert_eq!(got, vec![(m.revision, "after/1".to_string())]);
}
