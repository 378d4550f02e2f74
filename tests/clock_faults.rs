//! A node whose clock is jumped minutes ahead (libfaketime, Debian's
//! `faketime` package, which `scripts/test` installs) and is then made
//! leader carries on from its predecessor's time: its stamps do not leap,
//! and TTLs do not all expire at once.

use std::time::Duration;

use testkit::cluster::refusing_sink;
use testkit::ttl::{expiry_runs_and_spares, insert};
use testkit::{now_ms, wait_for, Cluster, ClusterOptions};

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
    expiry_runs_and_spares(&client, "call/long").await;
}
