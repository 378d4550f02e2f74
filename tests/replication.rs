//! Replication on real 3-node clusters: reads on every node, leader failure,
//! follower catch-up, joining a new node.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use inflight::client::{Client, Consistency};
use testkit::{wait_for, Cluster, ClusterOptions};
use tokio::sync::Mutex;

/// Writes `count` records `prefix{i}` with `workers` concurrent tasks; returns key → value.
async fn write_many(
    client: &Client,
    prefix: &str,
    count: usize,
    workers: usize,
) -> BTreeMap<String, String> {
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let client = client.clone();
        let acked = acked.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            for i in (w..count).step_by(workers) {
                let key = format!("{prefix}{i:06}");
                let value = format!("{{\"n\":{i},\"by\":{w}}}");
                client.insert(&key, value.clone()).await.expect("insert");
                acked.lock().await.insert(key, value);
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer task");
    }
    Arc::try_unwrap(acked).expect("writers done").into_inner()
}

/// Checks node `id` holds exactly `expected` under `prefix`, read from its own state.
async fn assert_node_has(c: &Cluster, id: u64, prefix: &str, expected: &BTreeMap<String, String>) {
    let records = c
        .scan_all(&c.node_client(id), prefix, Consistency::Stale)
        .await;
    let got: BTreeMap<String, String> = records
        .into_iter()
        .map(|r| (r.key, String::from_utf8(r.value.to_vec()).expect("utf8")))
        .collect();
    assert_eq!(
        got.len(),
        expected.len(),
        "node {id}: record count under {prefix}"
    );
    assert!(
        got == *expected,
        "node {id}: records under {prefix} differ from the acknowledged writes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_write_is_readable_on_every_node_once_applied() {
    let c = Cluster::start(ClusterOptions::default()).await;
    let client = c.client();
    let mut last_revision = 0;
    let mut expected = BTreeMap::new();
    for i in 0..50 {
        let key = format!("call/{i}");
        let value = format!("{{\"status\":\"ringing\",\"i\":{i}}}");
        let m = client.insert(&key, value.clone()).await.expect("insert");
        assert!(
            m.revision > last_revision,
            "revisions grow with every write"
        );
        last_revision = m.revision;
        expected.insert(key, value);
    }
    for id in 1..=3 {
        c.wait_applied(id, last_revision, Duration::from_secs(10))
            .await;
        let node = c.node_client(id);
        for (k, v) in &expected {
            let g = node
                .get(k, Consistency::Stale)
                .await
                .expect("stale get on node");
            let r = g.record.expect("record");
            assert_eq!(
                String::from_utf8(r.value.to_vec()).unwrap(),
                *v,
                "node {id} key {k}"
            );
            assert_eq!(r.version, 1);
            assert!(
                g.revision >= last_revision,
                "node {id} reports its applied revision"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_abruptly_new_leader_elected_and_no_acknowledged_write_lost() {
    let mut c = Cluster::start(ClusterOptions::default()).await;
    let client = c.client();
    let before = write_many(&client, "before/", 300, 8).await;
    let old = c.wait_leader(Duration::from_secs(10)).await;
    c.kill(old);

    let new = c.wait_leader(Duration::from_secs(10)).await;
    assert_ne!(new, old, "a different node leads after the kill");
    // Writes resume through the same client (it finds the new leader itself).
    let after = write_many(&client, "after/", 200, 8).await;

    for (prefix, expected) in [("before/", &before), ("after/", &after)] {
        let got = c.scan_all(&client, prefix, Consistency::Linearizable).await;
        let got: BTreeMap<String, String> = got
            .into_iter()
            .map(|r| (r.key, String::from_utf8(r.value.to_vec()).unwrap()))
            .collect();
        assert!(
            got == *expected,
            "every acknowledged write under {prefix} survives the leader's death"
        );
    }

    // The old leader comes back as a follower and converges.
    c.restart(old);
    let leader_applied = c.status(new).await.expect("leader status").applied_index;
    c.wait_applied(old, leader_applied, Duration::from_secs(20))
        .await;
    assert_node_has(&c, old, "before/", &before).await;
    assert_node_has(&c, old, "after/", &after).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopped_follower_catches_up_after_10000_writes() {
    let mut c = Cluster::start(ClusterOptions {
        snapshot_every: Some(3_000),
        ..Default::default()
    })
    .await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let follower = (1..=3).find(|i| *i != leader).expect("a follower");
    c.stop(follower);

    let client = c.client();
    let written = write_many(&client, "sms/", 10_000, 32).await;
    let leader_status = c.status(leader).await.expect("leader status");
    assert!(
        leader_status.snapshot_index > 0,
        "with --snapshot-every 3000 the leader has snapshotted, so the follower may need the snapshot"
    );

    c.restart(follower);
    c.wait_applied(
        follower,
        leader_status.applied_index,
        Duration::from_secs(60),
    )
    .await;
    assert_node_has(&c, follower, "sms/", &written).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn joining_node_receives_snapshot_and_is_promoted_to_voter() {
    let mut c = Cluster::start(ClusterOptions {
        snapshot_every: Some(500),
        ..Default::default()
    })
    .await;
    let client = c.client();
    let written = write_many(&client, "call/", 2_000, 16).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let leader_status = c.status(leader).await.unwrap();
    assert!(
        leader_status.snapshot_index > 0,
        "the leader has a snapshot to send"
    );

    c.join_new(4).expect("start node 4");
    let members = wait_for(
        Duration::from_secs(20),
        "node 4 listed as a learner",
        || async {
            let l = client.member_list().await.ok()?;
            l.members
                .iter()
                .find(|m| m.id == 4 && !m.voter)
                .map(|_| l.clone())
        },
    )
    .await;
    assert_eq!(members.members.len(), 4);
    let m4 = members.members.iter().find(|m| m.id == 4).unwrap();
    assert_eq!(
        (m4.address.as_str(), m4.peer_address.as_str()),
        (c.nodes[&4].grpc.as_str(), c.nodes[&4].peer.as_str()),
        "the joining node announced both of its ports"
    );
    c.wait_applied(4, leader_status.applied_index, Duration::from_secs(30))
        .await;
    let s4 = c.status(4).await.expect("node 4 status");
    assert!(
        c.log_text(4).contains("installed snapshot from leader"),
        "node 4 was brought up to date by a snapshot (the leader purged the log it would need)"
    );
    assert!(s4.snapshot_index > 0);
    assert_eq!(s4.role, "learner");

    client.promote(4).await.expect("promote");
    let l = client.member_list().await.expect("members");
    assert!(
        l.members.iter().any(|m| m.id == 4 && m.voter),
        "node 4 votes now"
    );
    wait_for(
        Duration::from_secs(10),
        "node 4 to see itself as a follower",
        || async { (c.status(4).await?.role == "follower").then_some(()) },
    )
    .await;
    // A write after promotion reaches node 4 too.
    let m = client.insert("call/after-join", "x").await.expect("insert");
    c.wait_applied(4, m.revision, Duration::from_secs(10)).await;
    let mut expected = written;
    expected.insert("call/after-join".into(), "x".into());
    assert_node_has(&c, 4, "call/", &expected).await;
}

/// The client port serves no Raft RPC and the peer port no client RPC: a
/// client that reaches the client port cannot vote, append or install a
/// snapshot, and the peer port answers nothing but Raft.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_port_serves_no_raft_rpc_and_peer_port_no_client_rpc() {
    use inflight::pb;
    let c = Cluster::start(ClusterOptions::default()).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let n = &c.nodes[&leader];
    let before = c.status(leader).await.expect("status");

    let channel = |addr: &str| {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy()
    };
    // A Vote carrying garbage would be INVALID_ARGUMENT from the Raft service;
    // on the client port there is no Raft service to reach.
    let vote = pb::raft_client::RaftClient::new(channel(&n.grpc))
        .vote(pb::RaftMessage {
            payload: vec![1, 2, 3],
            ..Default::default()
        })
        .await
        .expect_err("the client port refuses Raft RPCs");
    assert_eq!(vote.code(), tonic::Code::Unimplemented, "{vote:?}");
    let snapshot = pb::raft_client::RaftClient::new(channel(&n.grpc))
        .install_snapshot(futures::stream::iter(Vec::<pb::SnapshotChunk>::new()))
        .await
        .expect_err("the client port refuses snapshots");
    assert_eq!(snapshot.code(), tonic::Code::Unimplemented, "{snapshot:?}");

    let get = pb::in_flight_client::InFlightClient::new(channel(&n.peer))
        .get(pb::GetRequest {
            key: "k".into(),
            ..Default::default()
        })
        .await
        .expect_err("the peer port refuses client RPCs");
    assert_eq!(get.code(), tonic::Code::Unimplemented, "{get:?}");
    let members = pb::cluster_client::ClusterClient::new(channel(&n.peer))
        .member_list(pb::MemberListRequest {})
        .await
        .expect_err("the peer port refuses operator RPCs");
    assert_eq!(members.code(), tonic::Code::Unimplemented, "{members:?}");

    let after = c.status(leader).await.expect("status");
    assert_eq!((after.term, after.role.as_str()), (before.term, "leader"));
    // Each member is listed with both addresses.
    let list = c.client().member_list().await.expect("members");
    for m in &list.members {
        let node = &c.nodes[&m.id];
        assert_eq!((&m.address, &m.peer_address), (&node.grpc, &node.peer));
    }
}
