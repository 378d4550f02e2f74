//! An orderly stop: SIGTERM on a leader under load hands leadership over,
//! joins every task and exits 0, and clients see no failed write.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inflight::client::Consistency;
use parking_lot::Mutex;
use testkit::{wait_until, Cluster, ClusterOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_on_the_leader_hands_leadership_over_joins_its_tasks_and_fails_no_write() {
    let mut c = Cluster::start(ClusterOptions::default()).await;
    let old_leader = c.wait_leader(Duration::from_secs(20)).await;
    let client = c.client();

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (client, stop, acked, failed, count) = (
                client.clone(),
                stop.clone(),
                acked.clone(),
                failed.clone(),
                count.clone(),
            );
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = format!("call/{w}-{n}");
                    match client.insert(&key, "ringing").await {
                        Ok(_) => acked.lock().push(key),
                        Err(e) => failed.lock().push(format!("{key}: {e}")),
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let at_least = |n: u64| {
        let count = count.clone();
        move || {
            let count = count.clone();
            async move { count.load(Ordering::Relaxed) >= n }
        }
    };
    wait_until(Duration::from_secs(20), "200 writes", at_least(200)).await;

    let started = Instant::now();
    let exit = tokio::task::block_in_place(|| c.terminate(old_leader, Duration::from_secs(30)));
    let took = started.elapsed();
    let exit = exit.expect("the leader did not exit within 30 s of SIGTERM");
    assert!(exit.success(), "exit status {exit:?}");
    // Each shutdown step has its own deadline; a healthy node needs none of them.
    assert!(took < Duration::from_secs(10), "stopping took {took:?}");
    let log = c.log_text(old_leader);
    assert!(
        log.contains("shutdown: handed leadership over"),
        "no hand-over in the log:\n{log}"
    );
    assert!(
        !log.contains("did not stop in time"),
        "a task had to be aborted:\n{log}"
    );
    assert!(log.contains("stopped"), "{log}");

    // The cluster goes on without an election timeout's worth of outage and
    // without a failed write.
    let new_leader = c.wait_leader(Duration::from_secs(5)).await;
    assert_ne!(new_leader, old_leader);
    let after = count.load(Ordering::Relaxed) + 200;
    wait_until(Duration::from_secs(20), "200 more writes", at_least(after)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let failed = failed.lock().clone();
    assert!(failed.is_empty(), "writes failed: {failed:?}");
    let acked = acked.lock().clone();
    for key in &acked {
        client
            .get(key, Consistency::Linearizable)
            .await
            .unwrap_or_else(|e| panic!("acknowledged {key} is gone: {e}"));
    }
}
