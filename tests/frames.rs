//! The batching session: frames of independent operations on one stream per
//! node, and the `Client` that coalesces many callers' calls into them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use inflight::client::{Client, Consistency};
use inflight::pb;
use inflight::pb::frame_op::Op;
use inflight::pb::op_result::Result as Outcome;
use testkit::http::metric;
use testkit::{wait_until, Cluster, ClusterOptions};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// A raw session to `addr`: frames go in through the sender, results come
/// out of the stream. For tests that need ops to share one frame for sure.
async fn raw_session(
    addr: &str,
) -> (
    tokio::sync::mpsc::Sender<pb::Frame>,
    tonic::Streaming<pb::FrameResult>,
) {
    let channel = inflight::wire::endpoint(addr)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let results = pb::in_flight_client::InFlightClient::new(channel)
        .session(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, results)
}

fn op(op: Op) -> pb::FrameOp {
    pb::FrameOp { op: Some(op) }
}

fn error_code(r: &pb::OpResult) -> Option<Code> {
    match &r.result {
        Some(Outcome::Error(e)) => Some(Code::from_i32(e.code)),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ops_in_one_frame_succeed_and_fail_independently() {
    let c = Cluster::start(ClusterOptions::default()).await;
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let client = c.client();
    client.insert("call/existing", "v1").await.unwrap();

    let (tx, mut results) = raw_session(&c.nodes[&leader].grpc).await;
    tx.send(pb::Frame {
        id: 7,
        ops: vec![
            op(Op::Insert(pb::InsertRequest {
                key: "call/new".into(),
                value: b"fresh".to_vec(),
                request_id: "frame-test-insert".into(),
                ..Default::default()
            })),
            // A version guard that does not hold, next to the good insert.
            op(Op::Update(pb::UpdateRequest {
                key: "call/existing".into(),
                value: b"v2".to_vec(),
                if_version: Some(5),
                ..Default::default()
            })),
            op(Op::Insert(pb::InsertRequest {
                key: "call/existing".into(),
                value: b"again".to_vec(),
                ..Default::default()
            })),
            op(Op::Get(pb::GetRequest {
                key: "call/existing".into(),
                ..Default::default()
            })),
            op(Op::Get(pb::GetRequest {
                key: "call/missing".into(),
                ..Default::default()
            })),
            pb::FrameOp { op: None },
            op(Op::Insert(pb::InsertRequest {
                key: String::new(),
                value: b"no key".to_vec(),
                ..Default::default()
            })),
        ],
    })
    .await
    .unwrap();
    let answer = results.message().await.unwrap().unwrap();
    assert_eq!(answer.id, 7);
    assert_eq!(answer.results.len(), 7, "{answer:?}");
    let r = &answer.results;
    match &r[0].result {
        Some(Outcome::Mutation(m)) => {
            let rec = m.record.as_ref().unwrap();
            assert_eq!((rec.key.as_str(), rec.version), ("call/new", 1));
        }
        other => panic!("the good insert failed: {other:?}"),
    }
    assert_eq!(
        error_code(&r[1]),
        Some(Code::FailedPrecondition),
        "{:?}",
        r[1]
    );
    assert_eq!(error_code(&r[2]), Some(Code::AlreadyExists), "{:?}", r[2]);
    match &r[3].result {
        Some(Outcome::Get(g)) => assert_eq!(g.record.as_ref().unwrap().value, &b"v1"[..]),
        other => panic!("the get failed: {other:?}"),
    }
    assert_eq!(error_code(&r[4]), Some(Code::NotFound), "{:?}", r[4]);
    assert_eq!(error_code(&r[5]), Some(Code::InvalidArgument), "{:?}", r[5]);
    assert_eq!(error_code(&r[6]), Some(Code::InvalidArgument), "{:?}", r[6]);
    if let Some(Outcome::Error(e)) = &r[6].result {
        assert!(e.message.contains("key"), "{e:?}");
    }

    // What the frame did is what the cluster holds: the insert, not the update.
    let got = client
        .get("call/new", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(got.record.unwrap().value, &b"fresh"[..]);
    let existing = client
        .get("call/existing", Consistency::Linearizable)
        .await
        .unwrap()
        .record
        .unwrap();
    assert_eq!((existing.version, existing.value.as_ref()), (1, &b"v1"[..]));

    // The same request id again in a later frame is answered, not re-applied.
    tx.send(pb::Frame {
        id: 8,
        ops: vec![op(Op::Insert(pb::InsertRequest {
            key: "call/new".into(),
            value: b"fresh".to_vec(),
            request_id: "frame-test-insert".into(),
            ..Default::default()
        }))],
    })
    .await
    .unwrap();
    let again = results.message().await.unwrap().unwrap();
    assert!(
        matches!(&again.results[0].result, Some(Outcome::Mutation(m)) if m.record.as_ref().unwrap().version == 1),
        "{again:?}"
    );

    // A follower answers writes with the leader's address, per op.
    let follower = *c.nodes.keys().find(|id| **id != leader).unwrap();
    let (ftx, mut fresults) = raw_session(&c.nodes[&follower].grpc).await;
    ftx.send(pb::Frame {
        id: 1,
        ops: vec![op(Op::Insert(pb::InsertRequest {
            key: "call/via-follower".into(),
            value: b"x".to_vec(),
            ..Default::default()
        }))],
    })
    .await
    .unwrap();
    let redirected = fresults.message().await.unwrap().unwrap();
    match &redirected.results[0].result {
        Some(Outcome::Error(e)) => {
            assert_eq!(Code::from_i32(e.code), Code::Unavailable, "{e:?}");
            assert_eq!(e.leader_address, c.nodes[&leader].grpc, "{e:?}");
            assert_eq!(e.leader_id, leader, "{e:?}");
        }
        other => panic!("a follower accepted a write: {other:?}"),
    }

    // A frame over the limit ends the stream with a clear error.
    let too_many = (0..5000)
        .map(|i| {
            op(Op::Get(pb::GetRequest {
                key: format!("k{i}"),
                ..Default::default()
            }))
        })
        .collect();
    tx.send(pb::Frame {
        id: 9,
        ops: too_many,
    })
    .await
    .unwrap();
    let refused = results.message().await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("5000 ops"), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn frames_cut_by_a_leader_kill_are_retried_and_every_update_applies_exactly_once() {
    const KEYS: usize = 32;
    const UPDATES: u64 = 40;
    let mut c = Cluster::start(ClusterOptions::default()).await;
    let old_leader = c.wait_leader(Duration::from_secs(20)).await;
    // One client shared by every caller: their calls meet in frames.
    let client = c.client();
    for k in 0..KEYS {
        client.insert(&format!("sms/{k}"), "queued").await.unwrap();
    }
    let acked = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..KEYS)
        .map(|k| {
            let (client, acked) = (client.clone(), acked.clone());
            tokio::spawn(async move {
                for n in 1..=UPDATES {
                    // Each update must succeed: the client retries across the
                    // leader change with the same request id.
                    let m = client
                        .update(&format!("sms/{k}"), format!("status-{n}"), None)
                        .await
                        .unwrap_or_else(|e| panic!("update {n} of sms/{k} failed: {e}"));
                    assert_eq!(m.record.unwrap().version, n + 1, "sms/{k} update {n}");
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    wait_until(Duration::from_secs(30), "a third of the updates", || {
        let acked = acked.clone();
        async move { acked.load(Ordering::Relaxed) >= KEYS as u64 * UPDATES / 3 }
    })
    .await;
    c.kill(old_leader);
    let at_kill = acked.load(Ordering::Relaxed);
    assert!(
        at_kill < KEYS as u64 * UPDATES,
        "the updates were over before the leader was killed"
    );
    for caller in callers {
        caller.await.unwrap();
    }
    // Exactly once: one version step per update, none lost, none doubled.
    for k in 0..KEYS {
        let rec = client
            .get(&format!("sms/{k}"), Consistency::Linearizable)
            .await
            .unwrap()
            .record
            .unwrap();
        assert_eq!(rec.version, UPDATES + 1, "sms/{k}");
        assert_eq!(rec.value, format!("status-{UPDATES}").as_bytes(), "sms/{k}");
    }
    // The frames really carried many operations each.
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    assert_ne!(leader, old_leader);
    let http = c.nodes[&leader].http.clone();
    let (ops, frames) = (
        metric(&http, "inflight_frame_ops_sum").await,
        metric(&http, "inflight_frame_ops_count").await,
    );
    assert!(frames > 0.0, "no frame reached the new leader");
    assert!(
        ops >= 2.0 * frames,
        "{ops} ops in {frames} frames: callers sharing a client should share frames"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_started_after_another_returned_is_applied_after_it() {
    let c = Cluster::start(ClusterOptions::default()).await;
    c.wait_leader(Duration::from_secs(20)).await;
    let client = c.client();
    let callers: Vec<_> = (0..16)
        .map(|k| {
            let client = client.clone();
            tokio::spawn(async move {
                let key = format!("call/{k}");
                let mut last = client.insert(&key, "ringing").await.unwrap();
                for n in 0..20 {
                    let next = client
                        .update(&key, format!("leg-{n}"), None)
                        .await
                        .unwrap();
                    assert!(
                        next.revision > last.revision,
                        "{key}: update {n} applied at revision {} before the call that returned at {}",
                        next.revision,
                        last.revision
                    );
                    last = next;
                }
                // Another caller's read after this one returned sees the last write.
                let seen = client
                    .get(&key, Consistency::Linearizable)
                    .await
                    .unwrap()
                    .record
                    .unwrap();
                assert_eq!(seen.value, &b"leg-19"[..], "{key}");
                assert_eq!(seen.version, 21, "{key}");
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unary_and_framed_clients_see_the_same_errors() {
    let c = Cluster::start(ClusterOptions::default()).await;
    c.wait_leader(Duration::from_secs(20)).await;
    let framed = c.client();
    let unary = Client::with_options(
        c.endpoints(),
        inflight::client::ClientOptions {
            frames: false,
            ..Default::default()
        },
    )
    .unwrap();
    framed.insert("call/a", "1").await.unwrap();
    for client in [&framed, &unary] {
        let e = client.insert("call/a", "2").await.unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists, "{e}");
        let e = client.update("call/a", "2", Some(9)).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
        let e = client
            .get("call/none", Consistency::Linearizable)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e}");
        let e = client.insert("", "2").await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert_eq!(
            framed
                .get("call/a", Consistency::Stale)
                .await
                .unwrap()
                .record
                .unwrap()
                .version,
            1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_large_values_are_split_across_frames_within_the_message_limits() {
    let c = Cluster::start(ClusterOptions::default()).await;
    c.wait_leader(Duration::from_secs(20)).await;
    let client = c.client();
    // 24 values of 900 KiB from callers sharing one client: 21 MiB in all,
    // more than one request (16 MiB) or one answer may carry.
    let writers: Vec<_> = (0..24)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let value = vec![b'a' + (i % 26) as u8; 900 << 10];
                client
                    .insert(&format!("call/big-{i}"), value)
                    .await
                    .unwrap_or_else(|e| panic!("insert {i}: {e}"));
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let readers: Vec<_> = (0..24)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let r = client
                    .get(&format!("call/big-{i}"), Consistency::Linearizable)
                    .await
                    .unwrap_or_else(|e| panic!("get {i}: {e}"))
                    .record
                    .unwrap();
                assert_eq!(r.value.len(), 900 << 10);
                assert!(r.value.iter().all(|b| *b == b'a' + (i % 26) as u8));
            })
        })
        .collect();
    for r in readers {
        r.await.unwrap();
    }
}
