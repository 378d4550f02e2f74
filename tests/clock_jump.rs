//! A forward jump of the leader's wall clock must not expire every TTL at
//! once. Needs the test-only clock offset:
//! `cargo test --features test-clock-offset --test clock_jump` (`scripts/test`
//! runs it; `required-features` in Cargo.toml keeps it out of plain runs).

use std::time::{Duration, Instant};

use testkit::cluster::refusing_sink;
use testkit::ttl::{expiry_runs_and_spares, insert, state_of};
use testkit::{Cluster, ClusterOptions};

use inflight::client::Consistency;
use inflight::pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_clock_jump_forward_does_not_expire_every_ttl_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let offset = dir.path().join("clock-offset-ms");
    std::fs::write(&offset, "0").unwrap();
    // The nodes are child processes of this one and inherit its environment.
    std::env::set_var("INFLIGHT_TEST_CLOCK_OFFSET_FILE", &offset);
    // The sink refuses, so EXPIRED records stay visible.
    let c = Cluster::start(ClusterOptions {
        nodes: 1,
        sink: Some(refusing_sink()),
        ..Default::default()
    })
    .await;
    let client = c.client();
    let long = client
        .send_insert(insert("call/long", Some(60_000)))
        .await
        .unwrap();
    let created = long.record.unwrap().created_at_ms;

    // The leader's wall clock jumps an hour ahead.
    let t0 = Instant::now();
    std::fs::write(&offset, "3600000").unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The minute-long TTL has not expired (expiry runs every 100 ms).
    let g = client
        .get("call/long", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(state_of(&g), pb::RecordState::Live);
    // Leader time moved on by about the real time, not by an hour.
    let probe = client
        .send_insert(insert("call/probe", None))
        .await
        .unwrap();
    let advanced = probe.record.unwrap().created_at_ms - created;
    let real = t0.elapsed().as_millis() as u64;
    assert!(
        advanced < real * 2 + 1_000,
        "leader time advanced {advanced} ms in {real} ms of real time"
    );

    // TTLs still run, on leader time: a short one expires promptly.
    expiry_runs_and_spares(&client, "call/long").await;
}
