//! A node whose clock is jumped minutes ahead (libfaketime, Debian's
//! `faketime` package, which `scripts/test` installs) and is then made
//! leader carries on from its predecessor's time: its stamps do not leap,
//! and TTLs do not all expire at once.

use std::time::Duration;

use testkit::cluster::refusing_sink;
use testkit::{now_ms, wait_for, Cluster, ClusterOptions};

use inflight::client::Consistency;
use inflight::pb;

fn insert(key: &str, ttl_ms: Option<u64>) -> pb::InsertRequest {
    pb::InsertRequest {
        key: key.into(),
        value: b"ringing".to_vec(),
        ttl_ms,
        ..Default::default()
    }
}

fn state_of(r: &pb::GetResponse) -> pb::RecordState {
    pb::RecordState::try_from(r.record.as_ref().unwrap().state).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_restarted_with_its_clock_ten_minutes_ahead_keeps_the_cluster_time() {
    // The sink refuses, so EXPIRED records stay visible.
    let mut c = Cluster::start(ClusterOptions {
        nodes: 3,
        sink: Some(refusing_sink()),
        ..Default::default()
    })
    .await;
    let client = c.client();
    let admin = c.admin();
    client
        .send_insert(insert("call/long", Some(120_000)))
        .await
        .unwrap();

    // A follower comes back with its clocks ten minutes ahead ...
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let v = c.members().into_iter().find(|id| *id != leader).unwrap();
    c.stop(v);
    c.set_fake_clock(v, Some("+600"));
    c.restart(v);
    // ... sees the cluster's writes live, and is made leader.
    wait_for(Duration::from_secs(30), "node to lead", || async {
        client.send_insert(insert("call/tick", None)).await.ok();
        client.delete("call/tick", None).await.ok();
        let _ = admin.transfer_leader(v).await;
        (c.leader().await == Some(v)).then_some(())
    })
    .await;

    // Its stamps carry on from the cluster's time, not its wall clock.
    let probe = client
        .send_insert(insert("call/probe", None))
        .await
        .unwrap();
    let stamped = probe.record.unwrap().created_at_ms;
    let now = now_ms();
    assert!(
        stamped < now + 5_000,
        "the new leader stamped {} ms ahead of the real time",
        stamped - now
    );

    // Its expiry runs (a short TTL expires) and leaves the long one alone.
    client
        .send_insert(insert("call/short", Some(300)))
        .await
        .unwrap();
    wait_for(Duration::from_secs(10), "call/short to expire", || async {
        let g = client
            .get("call/short", Consistency::Linearizable)
            .await
            .ok()?;
        (state_of(&g) == pb::RecordState::Expired).then_some(())
    })
    .await;
    let g = client
        .get("call/long", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(state_of(&g), pb::RecordState::Live);
}
