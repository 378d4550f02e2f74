//! Request ids under load: a retry stays exactly-once when far more tagged
//! writes than the id table holds land between the first attempt and the
//! retry. The table is kept small here so that it fills; past its bound new
//! tagged writes are refused (RESOURCE_EXHAUSTED) and no id younger than
//! `--request-id-min-window` is forgotten.

use std::time::Duration;

use testkit::{Cluster, ClusterOptions};

use inflight::client::{Client, ClientOptions, Consistency};
use inflight::pb;
use tonic::Code;

const OTHER_WRITES: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_after_2000_tagged_writes_on_a_small_id_table_applies_at_most_once() {
    // Kill the leader at different moments: before X lands (the retry is
    // new, and refused on the full table), while it lands, and after (the
    // retry must be answered from the remembered id, which 2,000 later writes
    // did not push out). Each on a fresh cluster: a full table stays full for
    // the minimum window.
    for kill_after_ms in [2, 15, 300] {
        retry_after_many_tagged_writes(kill_after_ms).await;
    }
}

async fn retry_after_many_tagged_writes(kill_after_ms: u64) {
    let mut c = Cluster::start(ClusterOptions {
        // About 280 ids of this test's size: far fewer than the writes below,
        // all of which land well inside the guaranteed minute.
        extra_args: vec![
            "--request-id-max-bytes".into(),
            "64KiB".into(),
            "--request-id-min-window".into(),
            "60s".into(),
        ],
        ..Default::default()
    })
    .await;
    let client = c.client();
    client.insert("msg/x", "queued").await.unwrap();
    let before = version_of(&client, "msg/x").await;

    // The first attempt of X goes to the leader, which is killed before it
    // answers. This client does not retry, so the caller never learns whether
    // X landed.
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let once = Client::with_options(
        c.endpoints(),
        ClientOptions {
            retry_for: Duration::ZERO,
            ..Default::default()
        },
    )
    .unwrap();
    let x = pb::UpdateRequest {
        key: "msg/x".into(),
        value: b"sent".to_vec(),
        request_id: format!("x-{}", inflight::client::new_request_id()),
        ..Default::default()
    };
    let first = {
        let x = x.clone();
        tokio::spawn(async move { once.send_update(x).await })
    };
    tokio::time::sleep(Duration::from_millis(kill_after_ms)).await;
    c.kill(leader);
    let first = first.await.unwrap();
    if let Ok(r) = &first {
        // Answered after all (the kill came too late): X is applied.
        assert_eq!(r.record.as_ref().unwrap().version, before + 1);
    }
    c.wait_leader(Duration::from_secs(10)).await;
    c.restart(leader);

    // Many other tagged writes (the client tags every mutation).
    let mut tasks = Vec::new();
    for t in 0..8 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut refused) = (0usize, 0usize);
            for i in (t..OTHER_WRITES).step_by(8) {
                match client.insert(&format!("other/{i}"), "v").await {
                    Ok(_) => ok += 1,
                    Err(e) if e.code() == Code::ResourceExhausted => {
                        assert!(e.message().contains("request id"), "{}", e.message());
                        refused += 1;
                    }
                    Err(e) => panic!("other/{i}: {e}"),
                }
            }
            (ok, refused)
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        let (o, r) = t.await.unwrap();
        ok += o;
        refused += r;
    }
    assert_eq!(ok + refused, OTHER_WRITES);
    assert!(
        refused > 0,
        "the table is small enough to fill: {ok} accepted, {refused} refused"
    );

    // The retry of X: answered from the remembered id if X landed, applied
    // now if it did not and there is room, or refused before it is applied.
    let retry = client.send_update(x.clone()).await;
    let after = version_of(&client, "msg/x").await;
    eprintln!(
        "kill after {kill_after_ms} ms: first attempt answered: {}; others: {ok} accepted, {refused} refused; retry: {}",
        first.is_ok(),
        match &retry {
            Ok(_) => "answered".to_string(),
            Err(e) => format!("{:?}", e.code()),
        }
    );
    match retry {
        Ok(r) => {
            assert_eq!(after, before + 1, "X applied exactly once");
            assert_eq!(r.record.as_ref().unwrap().version, before + 1);
        }
        Err(e) if e.code() == Code::ResourceExhausted => {
            assert!(first.is_err(), "an applied X is remembered, so answered");
            assert_eq!(after, before, "refused before it was applied");
        }
        Err(e) => panic!("retry of X: {e}"),
    }
    // Every node agrees.
    for id in c.running() {
        let node = c.node_client(id);
        testkit::wait_for(
            Duration::from_secs(10),
            &format!("msg/x at version {after} on node {id}"),
            || async {
                let g = node.get("msg/x", Consistency::Stale).await.ok()?;
                (g.record?.version == after).then_some(())
            },
        )
        .await;
    }
}

/// The record's version, read linearizably.
async fn version_of(client: &inflight::client::Client, key: &str) -> u64 {
    client
        .get(key, Consistency::Linearizable)
        .await
        .unwrap()
        .record
        .unwrap()
        .version
}
