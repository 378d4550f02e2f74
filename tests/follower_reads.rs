//! LINEARIZABLE reads served by every member (follower ReadIndex), on real
//! clusters: a follower or learner answers with every write acknowledged
//! before the read began, names itself as the server, batches its requests
//! to the leader, and, cut off from the leader, answers UNAVAILABLE within
//! the read's deadline instead of serving its local state.

use std::time::{Duration, Instant};

use inflight::client::{Client, ClientOptions, Consistency, ReadFrom};
use inflight::pb;
use inflight::pb::in_flight_client::InFlightClient;
use testkit::http::metric;
use testkit::{wait_for, Addresses, Cluster, ClusterOptions};
use tonic::{Code, Request};

/// A client that sends every LINEARIZABLE read to node `id` only.
fn reader(c: &Cluster, id: u64) -> Client {
    Client::with_options(
        [c.nodes[&id].grpc.clone()],
        ClientOptions {
            request_timeout: Duration::from_secs(5),
            retry_for: Duration::ZERO,
            follow_leader: false,
            hedge_after: None,
            sync_endpoints: None,
            linearizable_reads: ReadFrom::Home,
            tls: c.client_tls(),
            ..ClientOptions::default()
        },
    )
    .expect("client")
}

/// Every write acknowledged by the leader is seen by the very next
/// LINEARIZABLE read on any follower and on a learner, which serve those
/// reads themselves. A follower that read as soon as it had the read
/// index, without waiting to apply it, would miss writes it had not applied
/// yet: followers learn the commit point only with the leader's next
/// message, after the writer's acknowledgement.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn followers_and_learners_serve_linearizable_reads_that_see_every_acknowledged_write() {
    let mut c = Cluster::start(ClusterOptions::default()).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let writer = c.client();
    c.join_new(4).expect("start node 4");
    wait_for(
        Duration::from_secs(20),
        "node 4 listed as a learner",
        || async {
            let l = writer.member_list().await.ok()?;
            l.members.iter().find(|m| m.id == 4 && !m.voter).map(|_| ())
        },
    )
    .await;
    let s4 = c.status(4).await.expect("node 4 answers");
    assert_eq!(s4.role, "learner");

    let others: Vec<u64> = c.members().into_iter().filter(|id| *id != leader).collect();
    assert_eq!(others.len(), 3, "two followers and the learner");
    let readers: Vec<(u64, Client)> = others.iter().map(|id| (*id, reader(&c, *id))).collect();
    for i in 0..300u64 {
        let key = format!("call/{}", i % 10);
        let value = format!("v{i}");
        let written = if i < 10 {
            writer.insert(&key, value.clone()).await
        } else {
            writer.update(&key, value.clone(), None).await
        }
        .expect("write through the leader")
        .record
        .expect("the written record")
        .version;
        let (id, r) = &readers[i as usize % readers.len()];
        let got = r
            .get(&key, Consistency::Linearizable)
            .await
            .unwrap_or_else(|e| panic!("read {i} on node {id}: {e:?}"));
        assert_eq!(got.served_by, *id, "node {id} served the read itself");
        let rec = got.record.expect("the record");
        assert_eq!(
            (rec.version, String::from_utf8_lossy(&rec.value).as_ref()),
            (written, value.as_str()),
            "read {i} on node {id} missed the write acknowledged before it"
        );
    }
}

/// Reads that arrive on a follower while its request for a read index is
/// out wait for the next one: many concurrent reads share few requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_asks_the_leader_once_for_many_concurrent_reads() {
    let c = Cluster::start(ClusterOptions::default()).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let follower = c.members().into_iter().find(|id| *id != leader).unwrap();
    c.client()
        .insert("call/1", "ringing")
        .await
        .expect("insert");
    let http = c.nodes[&follower].http.clone();
    let before = metric(&http, "inflight_follower_read_batch_size_count").await;
    const READS: usize = 400;
    let mut tasks = Vec::new();
    for _ in 0..READS {
        let ch = InFlightClient::connect(format!("http://{}", c.nodes[&follower].grpc));
        tasks.push(tokio::spawn(async move {
            let mut ch = ch.await.expect("connect");
            ch.get(pb::GetRequest {
                key: "call/1".into(),
                consistency: pb::Consistency::Linearizable as i32,
                max_staleness_ms: None,
            })
            .await
            .map(|r| r.into_inner().served_by)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().expect("read"), follower);
    }
    let rounds = metric(&http, "inflight_follower_read_batch_size_count").await - before;
    let served = metric(&http, "inflight_follower_read_batch_size_sum").await;
    assert!(served >= READS as f64, "{served} reads counted");
    assert!(
        rounds >= 1.0 && rounds < READS as f64,
        "{READS} concurrent reads took {rounds} requests to the leader"
    );
}

/// A follower cut off from the leader does not answer a LINEARIZABLE read
/// from its local state (which misses the writes made meanwhile): it
/// answers UNAVAILABLE, before the caller's deadline, or within
/// `Timing::read_within` for a caller that sent none. Once the cut heals,
/// it serves reads with the writes it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_cut_off_from_the_leader_answers_unavailable_within_the_deadline() {
    let c = Cluster::start(ClusterOptions {
        addresses: Addresses::DistinctIps,
        ..ClusterOptions::default()
    })
    .await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let follower = c.members().into_iter().find(|id| *id != leader).unwrap();
    let writer = c.client();
    writer.insert("call/1", "ringing").await.expect("insert");
    let r = reader(&c, follower);
    assert_eq!(
        r.get("call/1", Consistency::Linearizable)
            .await
            .expect("read before the cut")
            .served_by,
        follower
    );

    let fw = c.isolate(follower);
    writer
        .update("call/1", "answered", None)
        .await
        .expect("the other two still write");

    // No deadline sent: the node's own (750 ms with the default timing).
    let started = Instant::now();
    let e = r
        .get("call/1", Consistency::Linearizable)
        .await
        .expect_err("a cut-off follower must not serve a linearizable read");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("read index"), "{}", e.message());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered after {:?}",
        started.elapsed()
    );

    // The caller's deadline (grpc-timeout): answered before it passes.
    let mut raw = InFlightClient::connect(format!("http://{}", c.nodes[&follower].grpc))
        .await
        .expect("connect");
    let deadline = Duration::from_secs(2);
    let mut req = Request::new(pb::GetRequest {
        key: "call/1".into(),
        consistency: pb::Consistency::Linearizable as i32,
        max_staleness_ms: None,
    });
    req.set_timeout(deadline);
    let started = Instant::now();
    let e = raw.get(req).await.expect_err("still cut off");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        started.elapsed() >= deadline / 2 && started.elapsed() < deadline,
        "answered after {:?}: the node should use most of the caller's {deadline:?}, and answer within it",
        started.elapsed()
    );

    drop(fw);
    let got = wait_for(
        Duration::from_secs(10),
        "the healed follower to serve linearizable reads",
        || async { r.get("call/1", Consistency::Linearizable).await.ok() },
    )
    .await;
    assert_eq!(got.served_by, follower);
    assert_eq!(got.record.unwrap().value, &b"answered"[..]);
}

/// A follower restarted far behind the cluster (thousands of entries to
/// catch up on) answers a LINEARIZABLE read only once it has applied the
/// leader's read index: every read it serves holds the last write
/// acknowledged before the restart, from its very first answer on. (Right
/// after a restart the node gets a read index long before it has applied
/// the backlog, so a node that read at once would answer the old value.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_catching_up_after_a_restart_serves_no_read_older_than_an_acknowledged_write() {
    let mut c = Cluster::start(ClusterOptions::default()).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let follower = c.members().into_iter().find(|id| *id != leader).unwrap();
    let writer = c.client();
    writer.insert("call/hot", "before").await.expect("insert");
    c.wait_applied(follower, 2, Duration::from_secs(10)).await;
    c.stop(follower);

    const BACKLOG: usize = 4_000;
    const WORKERS: usize = 32;
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let writer = writer.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..BACKLOG).step_by(WORKERS) {
                writer
                    .insert(&format!("fill/{i:05}"), "x")
                    .await
                    .expect("insert while the follower is down");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    writer
        .update("call/hot", "after", None)
        .await
        .expect("the last write before the restart");

    c.restart(follower);
    let r = reader(&c, follower);
    let give_up = Instant::now() + Duration::from_secs(60);
    let (mut served, mut refused) = (0, 0);
    while served < 50 {
        assert!(
            Instant::now() < give_up,
            "node {follower} served {served} reads within 60 s of its restart ({refused} refused)"
        );
        match r.get("call/hot", Consistency::Linearizable).await {
            Ok(g) => {
                assert_eq!(g.served_by, follower);
                assert_eq!(
                    g.record.expect("the record").value,
                    &b"after"[..],
                    "read {served} on the restarted node {follower} missed the write acknowledged before it"
                );
                served += 1;
            }
            Err(e) => {
                assert!(
                    matches!(e.code(), Code::Unavailable | Code::DeadlineExceeded),
                    "{e:?}"
                );
                refused += 1;
                // Not up yet, or still catching up: ask again shortly.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}
