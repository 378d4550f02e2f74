//! Disk durability: whole-cluster restarts and damaged WAL tails.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::time::Duration;

use inflight::client::Consistency;
use testkit::cluster::last_segment;
use testkit::{wait_for, Cluster, ClusterOptions};

async fn read_all(c: &Cluster, id: u64, prefix: &str) -> BTreeMap<String, (String, u64)> {
    c.scan_all(&c.node_client(id), prefix, Consistency::Stale)
        .await
        .into_iter()
        .map(|r| {
            (
                r.key,
                (String::from_utf8(r.value.to_vec()).unwrap(), r.version),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_nodes_killed_and_restarted_keep_every_acknowledged_record() {
    let mut c = Cluster::start(ClusterOptions {
        snapshot_every: Some(400),
        ..Default::default()
    })
    .await;
    let client = c.client();
    let mut expected = BTreeMap::new();
    for i in 0..600 {
        let key = format!("call/{i:04}");
        client.insert(&key, format!("v{i}")).await.expect("insert");
        let mut version = 1;
        if i % 3 == 0 {
            client
                .update(&key, format!("v{i}-2"), Some(1))
                .await
                .expect("update");
            version = 2;
            expected.insert(key, (format!("v{i}-2"), version));
        } else {
            expected.insert(key, (format!("v{i}"), version));
        }
    }
    let before = c
        .status(c.wait_leader(Duration::from_secs(5)).await)
        .await
        .unwrap();

    // SIGKILL, not SIGTERM: nothing gets a chance to flush on the way out.
    for id in 1..=3 {
        c.kill(id);
    }
    for id in 1..=3 {
        c.restart(id);
    }
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let client = c.client();
    // A linearizable read after the restart sees every acknowledged write.
    let got: BTreeMap<String, (String, u64)> = c
        .scan_all(&client, "call/", Consistency::Linearizable)
        .await
        .into_iter()
        .map(|r| {
            (
                r.key,
                (String::from_utf8(r.value.to_vec()).unwrap(), r.version),
            )
        })
        .collect();
    assert!(
        got == expected,
        "records after a full restart differ from the acknowledged writes"
    );
    let after = c.status(leader).await.unwrap();
    assert!(
        after.applied_index >= before.applied_index,
        "no committed entry was lost"
    );
    for id in 1..=3 {
        c.wait_applied(id, before.applied_index, Duration::from_secs(20))
            .await;
        assert!(
            read_all(&c, id, "call/").await == expected,
            "node {id} after restart"
        );
    }
    // And the cluster still takes writes.
    client
        .insert("call/after-restart", "x")
        .await
        .expect("insert after restart");
}

enum Damage {
    /// The last record cut in half, as a crash mid-write leaves it.
    Torn,
    /// A byte flipped inside the last record, as bad media would.
    Corrupt,
}

async fn damaged_tail_is_detected_and_node_catches_up(damage: Damage) {
    let mut c = Cluster::start(ClusterOptions::default()).await;
    let client = c.client();
    for i in 0..200 {
        client
            .insert(&format!("k/{i:03}"), format!("v{i}"))
            .await
            .expect("insert");
    }
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let victim = (1..=3).find(|i| *i != leader).unwrap();
    let applied = c.status(leader).await.unwrap().applied_index;
    c.wait_applied(victim, applied, Duration::from_secs(10))
        .await;
    c.kill(victim);

    let seg = last_segment(&c.wal_dir(victim));
    let len = std::fs::metadata(&seg).unwrap().len();
    let mut f = OpenOptions::new().write(true).open(&seg).unwrap();
    match damage {
        Damage::Torn => f.set_len(len - 5).unwrap(),
        Damage::Corrupt => {
            f.seek(SeekFrom::Start(len - 3)).unwrap();
            f.write_all(&[0xde, 0xad, 0xbe]).unwrap();
        }
    }
    f.sync_all().unwrap();
    drop(f);

    // More writes while the node is down, so it has something to catch up on.
    for i in 200..300 {
        client
            .insert(&format!("k/{i:03}"), format!("v{i}"))
            .await
            .expect("insert");
    }
    c.restart(victim);
    let line = wait_for(
        Duration::from_secs(10),
        "the WAL recovery log line",
        || async {
            c.log_text(victim)
                .lines()
                .find(|l| l.contains("wal recovery"))
                .map(str::to_string)
        },
    )
    .await;
    let expect_kind = match damage {
        Damage::Torn => "torn write",
        Damage::Corrupt => "corrupt record (checksum mismatch)",
    };
    assert!(
        line.contains(expect_kind),
        "recovery line names the damage: {line}"
    );
    assert!(
        line.contains("kept the"),
        "recovery line says what was kept: {line}"
    );
    assert_eq!(
        c.log_text(victim).matches("wal recovery").count(),
        1,
        "one line, not one per record"
    );
    let leader_applied = c.status(leader).await.unwrap().applied_index;
    c.wait_applied(victim, leader_applied, Duration::from_secs(20))
        .await;
    let got = read_all(&c, victim, "k/").await;
    assert_eq!(
        got.len(),
        300,
        "the damaged node serves every record after catching up"
    );
    for i in 0..300 {
        assert_eq!(got[&format!("k/{i:03}")].0, format!("v{i}"));
    }
    // And a second restart is clean: the repaired log has no damage left.
    c.stop(victim);
    c.restart(victim);
    c.wait_applied(victim, leader_applied, Duration::from_secs(20))
        .await;
    assert_eq!(c.log_text(victim).matches("wal recovery").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn torn_wal_tail_is_cut_logged_once_and_node_catches_up() {
    damaged_tail_is_detected_and_node_catches_up(Damage::Torn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_wal_tail_is_cut_logged_once_and_node_catches_up() {
    damaged_tail_is_detected_and_node_catches_up(Damage::Corrupt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wiped_lowest_id_node_does_not_initialize_a_second_cluster() {
    let mut c = Cluster::start(ClusterOptions::default()).await;
    let client = c.client();
    for i in 0..50 {
        client
            .insert(&format!("k/{i:02}"), "v")
            .await
            .expect("insert");
    }
    c.kill(1);
    std::fs::remove_dir_all(&c.nodes[&1].data_dir).unwrap();
    c.restart(1);
    wait_for(
        Duration::from_secs(10),
        "node 1 to refuse to initialize",
        || async {
            c.log_text(1)
                .contains("not initializing another one")
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        c.log_text(1).matches("initialized a new cluster").count(),
        1,
        "only the very first start initialized"
    );
    // Node 1 is still a member, so the leader brings it back up to date.
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let applied = c.status(leader).await.unwrap().applied_index;
    c.wait_applied(1, applied, Duration::from_secs(20)).await;
    assert_eq!(read_all(&c, 1, "k/").await.len(), 50);
    for id in 1..=3 {
        let s = c.status(id).await.unwrap();
        assert_eq!(
            s.leader_id, leader,
            "node {id} follows the one cluster's leader"
        );
    }
}
