//! Post-flight hand-off on real clusters with real sinks: a PostgreSQL server
//! started by the test, the file sink, and a webhook receiver in the test.
//!
//! Every test also runs the eviction checker (`testkit::handoff`): it watches
//! a node's event stream and, for every HANDED_OFF event, proves the sink held
//! the record before the leader proposed its Evict, comparing the sink's
//! arrival time (the PostgreSQL table's `received_at`, the file sink's
//! `written_at_ms`, the webhook receiver's clock) with the event's `at_ms`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inflight::client::Client;
use inflight::handoff::SinkSpec;
use inflight::pb;
use parking_lot::Mutex;
use testkit::cluster::refusing_sink;
use testkit::handoff::{create_postgres_table, EvictionWatch, SinkView, TABLE};
use testkit::http::{metric, serve};
use testkit::postgres::Postgres;
use testkit::sink::FileSink;
use testkit::{now_ms, wait_for, wait_until, Cluster, ClusterOptions};
use tonic::Code;

/// handoff_id of a record completed by `resp`.
fn handoff_id(resp: &pb::MutationResponse) -> String {
    format!("{}@{}", resp.record.as_ref().unwrap().key, resp.revision)
}

/// Every handoff_id in PostgreSQL, with how many rows it has.
async fn postgres_rows(pg: &Postgres) -> Vec<(String, String, serde_json::Value)> {
    let client = pg.client().await;
    client
        .query(
            &format!("SELECT handoff_id, key, doc::text FROM {TABLE} ORDER BY handoff_id"),
            &[],
        )
        .await
        .expect("read the sink table")
        .iter()
        .map(|r| {
            let doc: String = r.get(2);
            (r.get(0), r.get(1), serde_json::from_str(&doc).unwrap())
        })
        .collect()
}

/// Inserts, updates and completes `keys` with `workers` concurrent clients;
/// returns the handoff ids of the completed records.
async fn lifecycle(client: &Client, keys: Vec<String>, workers: usize) -> Vec<String> {
    let keys = Arc::new(Mutex::new(keys));
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (client, keys) = (client.clone(), keys.clone());
            tokio::spawn(async move {
                let mut done = Vec::new();
                loop {
                    let Some(key) = keys.lock().pop() else {
                        return done;
                    };
                    let v = |status: &str| format!(r#"{{"key":"{key}","status":"{status}"}}"#);
                    client.insert(&key, v("queued")).await.unwrap();
                    client.update(&key, v("sent"), Some(1)).await.unwrap();
                    let r = client
                        .complete(&key, Some(v("delivered").into_bytes()), Some(2))
                        .await
                        .unwrap();
                    done.push(handoff_id(&r));
                }
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.extend(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_completed_records_reach_the_file_sink_and_postgres_exactly_once_then_leave_every_node(
) {
    // The file sink is the primary (one directory shared by every node, as
    // `inflight dev` does) and PostgreSQL the shadow; the other tests use
    // PostgreSQL as the primary.
    let pg = Postgres::start().await;
    let sink_dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(ClusterOptions {
        sink: Some(SinkSpec::File(sink_dir.path().into())),
        shadow_sink: Some(SinkSpec::Postgres(pg.url())),
        ..Default::default()
    })
    .await;
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let checker = EvictionWatch::start(c.node_client(follower));

    let keys: Vec<String> = (0..10_000).map(|i| format!("msg/{i:05}")).collect();
    let expected: BTreeSet<String> = lifecycle(&c.client(), keys, 32).await.into_iter().collect();
    assert_eq!(expected.len(), 10_000);
    c.wait_all_evicted(Duration::from_secs(60)).await;

    // The file sink: every record exactly once.
    let sink = FileSink::read(sink_dir.path());
    assert!(sink.bad_lines.is_empty(), "{:?}", sink.bad_lines);
    let files = sink.counts();
    assert_eq!(files.keys().cloned().collect::<BTreeSet<_>>(), expected);
    let dups: Vec<_> = files.iter().filter(|(_, n)| **n != 1).collect();
    assert!(dups.is_empty(), "duplicated in the file sink: {dups:?}");

    // PostgreSQL: every record once, its JSON value stored as JSON. (As the
    // shadow it is written beside the primary, so it may trail a little.)
    let rows = wait_for(
        Duration::from_secs(30),
        "the shadow to hold every record",
        || async {
            let rows = postgres_rows(&pg).await;
            (rows.len() >= 10_000).then_some(rows)
        },
    )
    .await;
    let in_pg: BTreeSet<String> = rows.iter().map(|r| r.0.clone()).collect();
    assert_eq!(rows.len(), 10_000, "one row per completed record");
    assert_eq!(in_pg, expected);
    for (id, key, doc) in &rows {
        assert_eq!(doc["handoff_id"], id.as_str());
        assert_eq!(doc["state"], "COMPLETED");
        assert_eq!(doc["value_encoding"], "json");
        assert_eq!(doc["value"]["status"], "delivered", "{id}");
        assert_eq!(doc["value"]["key"], key.as_str());
        assert_eq!(doc["version"], 3);
    }
    let client = pg.client().await;
    let objects: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM {TABLE} WHERE jsonb_typeof(doc->'value') = 'object'"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        objects, 10_000,
        "values are JSON objects in the database, not strings"
    );

    let seen = checker
        .finish(10_000, &SinkView::File(sink_dir.path().into()))
        .await;
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), expected);

    // The leader reports what it delivered. Under load leadership can move
    // during the run (each leader counts what it delivered itself), so the
    // counts are summed over the nodes: every record at least once.
    let delivered = |role: &'static str| {
        let c = &c;
        async move {
            let mut sum = 0;
            for id in c.running() {
                let h = c.status(id).await?.handoff?;
                sum += h.sinks.iter().find(|s| s.role == role)?.records_delivered;
            }
            Some(sum)
        }
    };
    wait_until(
        Duration::from_secs(10),
        "the sinks' counts to settle",
        || async {
            delivered("primary").await.unwrap_or(0) >= 10_000
                && delivered("shadow").await.unwrap_or(0) >= 10_000
        },
    )
    .await;
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let h = c.status(leader).await.unwrap().handoff.unwrap();
    assert!(h.active);
    assert_eq!(h.sinks[0].role, "primary");
    assert!(h.sinks[0].sink.starts_with("file:"));
    assert_eq!(h.sinks[1].role, "shadow");
    assert!(h.sinks[1].sink.starts_with("postgres:"));
    assert!(h.sinks[0].last_success_age_ms.is_some());
    assert!(h.sinks[0].failing_for_ms.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_in_the_middle_of_hand_off_leaves_every_completed_record_in_postgres_once() {
    let pg = Postgres::start().await;
    create_postgres_table(&pg.client().await).await;
    let mut c = Cluster::start(ClusterOptions {
        sink: Some(SinkSpec::Postgres(pg.url())),
        handoff_batch: Some(20),
        ..Default::default()
    })
    .await;
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let watcher = (1..=3).find(|i| *i != leader).unwrap();
    let checker = EvictionWatch::start(c.node_client(watcher));

    // Writers complete records without pause while the leader is killed.
    let stop = Arc::new(AtomicBool::new(false));
    let done: Arc<Mutex<Vec<String>>> = Arc::default();
    let unsure: Arc<Mutex<Vec<String>>> = Arc::default();
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (client, stop, done, unsure) =
                (c.client(), stop.clone(), done.clone(), unsure.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("call/{w}-{i}");
                    i += 1;
                    if client
                        .insert(&key, r#"{"status":"ringing"}"#)
                        .await
                        .is_err()
                    {
                        unsure.lock().push(key);
                        continue;
                    }
                    let end = Some(br#"{"status":"completed"}"#.to_vec());
                    match client.complete(&key, end, None).await {
                        Ok(r) => done.lock().push(handoff_id(&r)),
                        Err(_) => unsure.lock().push(key),
                    }
                }
            })
        })
        .collect();
    // Kill the leader while records are waiting for hand-off.
    wait_for(
        Duration::from_secs(30),
        "a non-empty outbox and deliveries",
        || async {
            let s = c.status(leader).await?;
            let delivered = s.handoff?.sinks.first()?.records_delivered;
            (delivered >= 200 && s.outbox_depth > 0).then_some(())
        },
    )
    .await;
    c.kill(leader);
    let new_leader = c.wait_leader(Duration::from_secs(10)).await;
    assert_ne!(new_leader, leader);
    wait_for(
        Duration::from_secs(30),
        "the new leader to deliver",
        || async {
            let h = c.status(new_leader).await?.handoff?;
            (h.sinks.first()?.records_delivered > 0).then_some(())
        },
    )
    .await;
    c.restart(leader);
    // The writers go on while the old leader comes back and follows.
    wait_until(
        Duration::from_secs(30),
        "the old leader to rejoin as a follower",
        || async {
            c.status(leader)
                .await
                .is_some_and(|s| s.recovered && s.leader_id != 0)
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    // Settle the records whose outcome the writers could not learn: complete
    // what is still LIVE, so every record ends in the sink.
    let client = c.client();
    let pending = unsure.lock().clone();
    for key in pending {
        match client.complete(&key, None, None).await {
            Ok(r) => done.lock().push(handoff_id(&r)),
            Err(e) => assert!(
                matches!(e.code(), Code::NotFound | Code::FailedPrecondition),
                "{key}: {e}"
            ),
        }
    }
    c.wait_all_evicted(Duration::from_secs(60)).await;

    let rows = postgres_rows(&pg).await;
    let mut per_key: HashMap<String, usize> = HashMap::new();
    for (_, key, _) in &rows {
        *per_key.entry(key.clone()).or_default() += 1;
    }
    let twice: Vec<_> = per_key.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "keys in the sink more than once: {twice:?}"
    );
    let in_pg: BTreeSet<String> = rows.iter().map(|r| r.0.clone()).collect();
    let done: BTreeSet<String> = done.lock().iter().cloned().collect();
    let lost: Vec<_> = done.difference(&in_pg).collect();
    assert!(lost.is_empty(), "completed but never handed off: {lost:?}");
    // Records the writers were unsure about were completed by a retry that
    // lost its answer: they are in the sink too, nothing else is.
    let unsure: BTreeSet<String> = unsure.lock().iter().cloned().collect();
    for (id, key, _) in &rows {
        assert!(
            done.contains(id) || unsure.contains(key),
            "{id} is in the sink but was never completed"
        );
    }
    assert!(
        done.len() >= 200,
        "the run completed {} records",
        done.len()
    );
    checker
        .finish(rows.len(), &SinkView::Postgres(pg.url()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sink_down_for_30s_keeps_everything_refuses_inserts_past_the_budget_then_drains() {
    let mut pg = Postgres::start().await;
    create_postgres_table(&pg.client().await).await;
    let c = Cluster::start(ClusterOptions {
        sink: Some(SinkSpec::Postgres(pg.url())),
        memory_budget: Some("2MiB".into()),
        ..Default::default()
    })
    .await;
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let watcher = (1..=3).find(|i| *i != leader).unwrap();
    let checker = EvictionWatch::start(c.node_client(watcher));
    let client = c.client();
    let value = |i: usize, pad: usize| format!(r#"{{"call":{i},"pad":"{}"}}"#, "x".repeat(pad));

    // Operations that are running when the sink goes down.
    for i in 0..20 {
        client
            .insert(&format!("live/{i}"), value(i, 4_000))
            .await
            .unwrap();
    }
    pg.pause();
    let down_at = Instant::now();

    // While it is down: completes are accepted and kept, until the budget
    // refuses new inserts, with a message that names the backlog.
    let mut completed = Vec::new();
    let refusal = loop {
        let key = format!("done/{}", completed.len());
        match client.insert(&key, value(completed.len(), 32_000)).await {
            Ok(_) => {
                let r = client.complete(&key, None, None).await.unwrap();
                completed.push(handoff_id(&r));
            }
            Err(e) => break e,
        }
        assert!(
            completed.len() < 1_000,
            "the 2 MiB budget never refused an insert"
        );
    };
    assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal}");
    let msg = refusal.message();
    for part in [
        "memory budget",
        "of it is the outbox",
        "postgres:",
        "updates, completes and deletes still work",
    ] {
        assert!(msg.contains(part), "{part:?} not in {msg:?}");
    }
    // The budget also counts the watch window and the Raft log (each kept
    // to an eighth of it), so records of 32 KB fill about 1.4 MiB of it.
    assert!(
        completed.len() > 25,
        "{} completed before the budget",
        completed.len()
    );

    // Updates, completes and deletes still work; nothing leaves memory.
    let mut live = 0;
    while live < 20 || down_at.elapsed() < Duration::from_secs(30) {
        if live < 20 {
            let key = format!("live/{live}");
            client.update(&key, value(live, 4_000), None).await.unwrap();
            if live % 5 == 4 {
                client.delete(&key, None).await.unwrap();
            } else {
                let r = client.complete(&key, None, None).await.unwrap();
                completed.push(handoff_id(&r));
            }
            live += 1;
        }
        // Bigger than what the deletes (4 x 4 KB), a log purge (an eighth
        // of the budget) and a snapshot finishing can free, so it stays
        // refused.
        let e = client
            .insert("refused", "y".repeat(1 << 20))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted);
        let s = c.status(leader).await.unwrap();
        assert_eq!(
            s.outbox_depth,
            completed.len() as u64,
            "nothing evicted while the sink is down"
        );
        // Not a wait for a condition: the point is that the sink stays
        // down for 30 s, probed every half second.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let s = c.status(leader).await.unwrap();
    let sink = &s.handoff.as_ref().unwrap().sinks[0];
    assert!(sink.failing_for_ms.unwrap() >= 25_000, "{sink:?}");
    assert!(sink.batches_failed >= 5, "retried with backoff: {sink:?}");
    assert!(!sink.last_error.is_empty());
    assert!(c.log_text(leader).contains("hand-off error"));

    // The sink comes back: the backlog drains, and inserts work again.
    pg.resume().await;
    c.wait_all_evicted(Duration::from_secs(60)).await;
    client.insert("after", "x").await.unwrap();
    let rows = postgres_rows(&pg).await;
    let in_pg: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let expected: BTreeSet<String> = completed.iter().cloned().collect();
    assert_eq!(in_pg.len(), expected.len());
    assert_eq!(in_pg.into_iter().collect::<BTreeSet<_>>(), expected);
    checker
        .finish(expected.len(), &SinkView::Postgres(pg.url()))
        .await;
}

/// handoff_id → when the receiver first got it (Unix ms), and every
/// handoff_id in arrival order.
#[derive(Default)]
struct Received {
    first_at: Arc<Mutex<BTreeMap<String, u64>>>,
    all: Mutex<Vec<String>>,
}

/// A webhook receiver: fails the first `failures` POSTs with 503, then
/// records every handoff_id it is sent, with the arrival time, and answers 200.
async fn webhook_receiver(failures: usize) -> (String, Arc<Received>, Arc<Mutex<usize>>) {
    use axum::routing::post;
    let received: Arc<Received> = Arc::default();
    let refused: Arc<Mutex<usize>> = Arc::default();
    let (r, f) = (received.clone(), refused.clone());
    let app = axum::Router::new().route(
        "/postflight",
        post(move |body: String| {
            let (r, f) = (r.clone(), f.clone());
            async move {
                let arrived = now_ms();
                {
                    let mut n = f.lock();
                    if *n < failures {
                        *n += 1;
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                }
                let docs: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
                let ids = docs
                    .iter()
                    .map(|d| d["handoff_id"].as_str().unwrap().to_string());
                let mut first_at = r.first_at.lock();
                for id in ids {
                    first_at.entry(id.clone()).or_insert(arrived);
                    r.all.lock().push(id);
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    (
        format!("{}/postflight", serve(app).await),
        received,
        refused,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_sink_retries_until_acknowledged_and_a_failing_shadow_sink_does_not_stop_eviction()
{
    let (url, received, refused) = webhook_receiver(3).await;
    let c = Cluster::start(ClusterOptions {
        sink: Some(SinkSpec::Webhook(url)),
        // The shadow is a webhook on a closed port: every write fails.
        shadow_sink: Some(refusing_sink()),
        ..Default::default()
    })
    .await;
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let checker = EvictionWatch::start(c.node_client(leader));

    let keys: Vec<String> = (0..300).map(|i| format!("msg/{i:03}")).collect();
    let expected: BTreeSet<String> = lifecycle(&c.client(), keys, 8).await.into_iter().collect();
    c.wait_all_evicted(Duration::from_secs(30)).await;

    assert_eq!(*refused.lock(), 3, "the receiver refused three POSTs");
    let got = received.all.lock().clone();
    assert_eq!(got.len(), 300, "each record delivered once");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), expected);
    checker
        .finish(300, &SinkView::Webhook(received.first_at.clone()))
        .await;

    // The shadow's failures are visible: status, metrics, log.
    let s = c.status(leader).await.unwrap();
    let h = s.handoff.unwrap();
    let shadow = h.sinks.iter().find(|s| s.role == "shadow").unwrap();
    assert_eq!(shadow.records_delivered, 0);
    assert!(shadow.batches_failed > 0);
    assert!(
        shadow.last_error.contains("webhook sink: POST"),
        "{shadow:?}"
    );
    let primary = h.sinks.iter().find(|s| s.role == "primary").unwrap();
    assert_eq!(primary.records_delivered, 300);
    assert_eq!(primary.batches_failed, 3);
    assert!(primary.failing_for_ms.is_none(), "recovered: {primary:?}");
    let http = &c.nodes[&leader].http;
    assert_eq!(
        metric(
            http,
            r#"inflight_handoff_records_total{role="primary",result="ok"}"#
        )
        .await,
        300.0
    );
    assert_eq!(
        metric(
            http,
            r#"inflight_handoff_batches_total{role="primary",result="error"}"#
        )
        .await,
        3.0
    );
    assert!(
        metric(
            http,
            r#"inflight_handoff_batches_total{role="shadow",result="error"}"#
        )
        .await
            > 0.0
    );
    assert_eq!(
        metric(http, "inflight_handoff_evicted_records_total").await,
        300.0
    );
    let log = c.log_text(leader);
    assert!(
        log.lines()
            .any(|l| l.contains("hand-off error") && l.contains("shadow")),
        "no hand-off error line for the shadow sink in the leader's log"
    );
}
