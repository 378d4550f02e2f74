//! Poison records: a record the sink refuses for good does not stall the
//! hand-off. The worker splits the batch until the refused record stands
//! alone, delivers the rest, and sets the bad one aside as a dead letter
//! (replicated, counted in memory, shown in status and metrics) until an
//! operator retries or drops it. A redirect is never an acknowledgement.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use inflight::client::Client;
use inflight::handoff::SinkSpec;
use inflight::pb;
use parking_lot::Mutex;
use testkit::handoff::{create_postgres_table, EvictionWatch, SinkView, TABLE};
use testkit::http::{metric, serve};
use testkit::postgres::Postgres;
use testkit::{now_ms, wait_for, wait_until, Cluster, ClusterOptions};
use tonic::Code;

const RECORDS: usize = 1_000;

/// Inserts and completes `RECORDS` records under `prefix`, with 8 clients;
/// the one at `bad_index` gets `bad_value`, the others a small JSON value.
/// Returns every record's handoff id and the bad one's.
async fn complete_records(
    client: &Client,
    prefix: &str,
    bad_index: usize,
    bad_value: Vec<u8>,
) -> (BTreeSet<String>, String) {
    let next = Arc::new(Mutex::new(0..RECORDS));
    let bad_value = Arc::new(bad_value);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (client, next, bad_value) = (client.clone(), next.clone(), bad_value.clone());
            let prefix = prefix.to_string();
            tokio::spawn(async move {
                let mut done = Vec::new();
                loop {
                    let Some(i) = next.lock().next() else {
                        return done;
                    };
                    let key = format!("{prefix}/{i:04}");
                    client.insert(&key, r#"{"status":"queued"}"#).await.unwrap();
                    let value = if i == bad_index {
                        bad_value.as_ref().clone()
                    } else {
                        format!(r#"{{"status":"delivered","i":{i}}}"#).into_bytes()
                    };
                    let r = client.complete(&key, Some(value), Some(1)).await.unwrap();
                    done.push((i, format!("{key}@{}", r.revision)));
                }
            })
        })
        .collect();
    let mut all = BTreeSet::new();
    let mut bad = None;
    for t in tasks {
        for (i, id) in t.await.unwrap() {
            if i == bad_index {
                bad = Some(id.clone());
            }
            all.insert(id);
        }
    }
    let bad = bad.expect("the bad record was completed");
    (all, bad)
}

/// Waits until every running node holds exactly the one dead letter `bad`
/// and nothing else (no record waiting, no other record), and returns the
/// leader's listing of it.
async fn wait_only_dead_letter(c: &Cluster, bad: &str, timeout: Duration) -> pb::DeadLetter {
    wait_until(
        timeout,
        "every node to hold only the dead letter",
        || async {
            for id in c.running() {
                let Some(s) = c.status(id).await else {
                    return false;
                };
                let h = s.handoff.unwrap_or_default();
                if s.outbox_depth != 0 || s.records != 1 || h.dead_letters != 1 {
                    return false;
                }
                if h.dead_letter_sample.first().map(|d| d.handoff_id.as_str()) != Some(bad) {
                    return false;
                }
            }
            true
        },
    )
    .await;
    let list = c.admin().handoff_failed(0, "").await.unwrap();
    assert_eq!((list.total, list.more), (1, false), "{list:?}");
    assert_eq!(list.records.len(), 1);
    list.records[0].clone()
}

/// `retry` puts the record back in the queue; the sink refuses it again and
/// it is set aside again (a later `failed_revision`), never lost. Then
/// `drop` removes it from every node, and the leader logs the decision.
async fn retry_then_drop(c: &Cluster, first: &pb::DeadLetter) {
    let admin = c.admin();
    let r = admin
        .handoff_retry(vec![first.key.clone()], false)
        .await
        .unwrap();
    assert_eq!(r.handoff_ids, vec![first.handoff_id.clone()]);
    let again = wait_for(
        Duration::from_secs(30),
        "the retried record to be refused again",
        || async {
            let l = admin.handoff_failed(0, "").await.ok()?;
            let d = l.records.first()?.clone();
            (d.failed_revision > first.failed_revision).then_some(d)
        },
    )
    .await;
    assert_eq!(again.handoff_id, first.handoff_id);
    assert_eq!(again.error, first.error);
    wait_only_dead_letter(c, &first.handoff_id, Duration::from_secs(10)).await;

    // `--all` does the same.
    let r = admin.handoff_retry(vec![], true).await.unwrap();
    assert_eq!(r.handoff_ids, vec![first.handoff_id.clone()]);
    wait_until(
        Duration::from_secs(30),
        "the record to be refused after retry --all",
        || async {
            let l = admin.handoff_failed(0, "").await.unwrap();
            l.records
                .first()
                .is_some_and(|d| d.failed_revision > again.failed_revision)
        },
    )
    .await;

    // Mistakes get clear errors and change nothing.
    let e = admin
        .handoff_drop(vec!["no/such/key".into()])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("no/such/key"), "{e:?}");
    let e = admin.handoff_drop(vec![]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = admin
        .handoff_retry(vec![first.key.clone()], true)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    let r = admin.handoff_drop(vec![first.key.clone()]).await.unwrap();
    assert_eq!(r.handoff_ids, vec![first.handoff_id.clone()]);
    wait_until(
        Duration::from_secs(10),
        "the dropped record to leave every node",
        || async {
            for id in c.running() {
                match c.status(id).await {
                    Some(s)
                        if s.records == 0
                            && s.handoff.as_ref().is_some_and(|h| h.dead_letters == 0) => {}
                    _ => return false,
                }
            }
            true
        },
    )
    .await;
    let e = c
        .client()
        .get(&first.key, pb::Consistency::Linearizable)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    assert!(
        c.log_text(leader).lines().any(|l| l.contains("dropped")
            && l.contains("without hand-off")
            && l.contains(&first.handoff_id)),
        "the leader logs the drop with the record's id"
    );
}

/// Runs the `inflight` CLI against the cluster; (exit ok, stdout, stderr).
fn cli(c: &Cluster, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_inflight"))
        .args(["--endpoints", &c.endpoints().join(",")])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_refuses_one_record_of_1000_the_other_999_are_delivered_and_it_waits_for_an_operator(
) {
    let pg = Postgres::start().await;
    create_postgres_table(&pg.client().await).await;
    let c = Cluster::start(ClusterOptions {
        sink: Some(SinkSpec::Postgres(pg.url())),
        ..Default::default()
    })
    .await;
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let checker = EvictionWatch::start(c.node_client(leader));

    // Valid JSON that `jsonb` refuses: a NUL escape inside a string.
    let bad_value = br#"{"status":"delivered","note":"nul \u0000 here"}"#.to_vec();
    let started = std::time::Instant::now();
    let (all, bad) = complete_records(&c.client(), "call", 500, bad_value.clone()).await;
    assert_eq!(all.len(), RECORDS);

    // 999 reach PostgreSQL and leave memory within 30 s; the bad one waits.
    let dead = wait_only_dead_letter(&c, &bad, Duration::from_secs(30)).await;
    eprintln!("999 delivered, 1 set aside in {:?}", started.elapsed());
    assert_eq!(dead.handoff_id, bad);
    assert!(
        dead.error.contains("unsupported Unicode escape sequence") && dead.error.contains("22P05"),
        "the dead letter carries PostgreSQL's own error: {dead:?}"
    );
    assert!(dead.bytes as usize >= bad_value.len());
    let rows: Vec<String> = pg
        .client()
        .await
        .query(&format!("SELECT handoff_id FROM {TABLE}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected: BTreeSet<String> = all.iter().filter(|id| **id != bad).cloned().collect();
    assert_eq!(rows.len(), RECORDS - 1, "each good record once");
    assert_eq!(rows.into_iter().collect::<BTreeSet<_>>(), expected);
    checker
        .finish(RECORDS - 1, &SinkView::Postgres(pg.url()))
        .await;

    // The record is still readable, immutable, and counted in memory.
    let got = c
        .client()
        .get(&dead.key, pb::Consistency::Linearizable)
        .await
        .unwrap();
    let rec = got.record.unwrap();
    assert_eq!(rec.value, bad_value);
    assert_eq!(rec.state, pb::RecordState::Completed as i32);
    let s = c.status(leader).await.unwrap();
    let h = s.handoff.unwrap();
    // The record's footprint, and the error kept with it.
    assert!(s.memory_bytes >= h.dead_letter_bytes && h.dead_letter_bytes > dead.bytes);
    assert_eq!(h.dead_letter_sample[0].error, dead.error);
    assert_eq!(
        metric(&c.nodes[&leader].http, "inflight_handoff_dead_letters").await,
        1.0
    );
    assert_eq!(
        metric(
            &c.nodes[&leader].http,
            "inflight_handoff_dead_lettered_records_total"
        )
        .await,
        1.0
    );
    assert!(
        metric(
            &c.nodes[&leader].http,
            r#"inflight_handoff_batches_total{role="primary",result="refused"}"#
        )
        .await
            >= 1.0,
        // At least once: alone, or in a batch with others that was then
        // split (which batch the record lands in depends on when the
        // hand-off worker wakes among eight concurrent writers).
        "the batch holding it was refused"
    );
    let primary = h.sinks.iter().find(|s| s.role == "primary").unwrap();
    assert!(
        primary.failing_for_ms.is_none(),
        "the sink itself works: {primary:?}"
    );

    // The hand-off keeps flowing for new records.
    let r = c.client().insert("after/1", "{}").await.unwrap();
    let r = c
        .client()
        .complete("after/1", None, Some(r.record.unwrap().version))
        .await
        .unwrap();
    let after = format!("after/1@{}", r.revision);
    wait_only_dead_letter(&c, &bad, Duration::from_secs(30)).await;
    let n: i64 = pg
        .client()
        .await
        .query_one(
            &format!("SELECT count(*) FROM {TABLE} WHERE handoff_id = $1"),
            &[&after],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);

    retry_then_drop(&c, &dead).await;
    let n: i64 = pg
        .client()
        .await
        .query_one(&format!("SELECT count(*) FROM {TABLE}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        n as usize, RECORDS,
        "the dropped record never reached the sink"
    );
}

/// A webhook receiver that answers 413 to bodies over `max_body` bytes and
/// records every handoff_id of the bodies it accepts, with arrival times.
async fn limited_receiver(
    max_body: usize,
) -> (
    String,
    Arc<Mutex<std::collections::BTreeMap<String, u64>>>,
    Arc<Mutex<usize>>,
) {
    use axum::routing::post;
    let received: Arc<Mutex<std::collections::BTreeMap<String, u64>>> = Arc::default();
    let too_large: Arc<Mutex<usize>> = Arc::default();
    let (r, t) = (received.clone(), too_large.clone());
    let app = axum::Router::new()
        .route(
            "/in",
            post(move |body: axum::body::Bytes| {
                let (r, t) = (r.clone(), t.clone());
                async move {
                    if body.len() > max_body {
                        *t.lock() += 1;
                        return (
                            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                            format!("body of {} bytes is over the limit", body.len()),
                        );
                    }
                    let arrived = now_ms();
                    let docs: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
                    let mut r = r.lock();
                    for d in docs {
                        r.entry(d["handoff_id"].as_str().unwrap().to_string())
                            .or_insert(arrived);
                    }
                    (axum::http::StatusCode::OK, String::new())
                }
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::disable());
    (format!("{}/in", serve(app).await), received, too_large)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_refusing_bodies_over_1mib_gets_every_record_but_the_one_larger_than_that() {
    let (url, received, too_large) = limited_receiver(1 << 20).await;
    let c = Cluster::start(ClusterOptions {
        sink: Some(SinkSpec::Webhook(url)),
        ..Default::default()
    })
    .await;
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let checker = EvictionWatch::start(c.node_client(leader));

    // Not UTF-8, so its document carries it in base64: about 1.3 MB alone.
    let big = vec![0xFFu8; 1_000_000];
    let (all, bad) = complete_records(&c.client(), "sms", 123, big.clone()).await;
    let dead = wait_only_dead_letter(&c, &bad, Duration::from_secs(30)).await;
    assert!(
        dead.error.contains("413") && dead.error.contains("over the limit"),
        "the dead letter carries the receiver's answer: {dead:?}"
    );
    assert!(*too_large.lock() >= 1);
    let got: BTreeSet<String> = received.lock().keys().cloned().collect();
    let expected: BTreeSet<String> = all.iter().filter(|id| **id != bad).cloned().collect();
    assert_eq!(got, expected, "every other record reached the receiver");
    checker
        .finish(RECORDS - 1, &SinkView::Webhook(received.clone()))
        .await;
    let rec = c
        .client()
        .get(&dead.key, pb::Consistency::Linearizable)
        .await
        .unwrap()
        .record
        .unwrap();
    assert_eq!(rec.value, big);

    // The operator's view through the CLI.
    let (ok, out, err) = cli(&c, &["handoff", "failed", "--json"]);
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert_eq!(lines[0]["handoff_id"], bad.as_str());
    assert!(lines[0]["error"].as_str().unwrap().contains("413"));
    let (ok, out, _) = cli(&c, &["handoff", "failed"]);
    assert!(ok);
    assert!(
        out.starts_with("1 record(s) refused by the sink") && out.contains(&bad),
        "{out}"
    );
    let (ok, out, _) = cli(&c, &["status"]);
    assert!(ok);
    assert!(
        out.contains("1 record(s) refused by the sink for good") && out.contains(&bad),
        "{out}"
    );
    let (ok, _, err) = cli(&c, &["handoff", "retry"]);
    assert!(
        !ok && err.contains("--all"),
        "retry needs keys or --all: {err}"
    );

    retry_then_drop(&c, &dead).await;
    assert!(!received.lock().contains_key(&bad));
}

/// A cluster whose sink is `app` (served at `/in`), with `n` records
/// completed; returns it and its leader.
async fn webhook_cluster(app: axum::Router, n: usize) -> (Cluster, u64) {
    let base = serve(app).await;
    let c = Cluster::start(ClusterOptions {
        sink: Some(SinkSpec::Webhook(format!("{base}/in"))),
        ..Default::default()
    })
    .await;
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let client = c.client();
    for i in 0..n {
        let key = format!("call/{i}");
        client.insert(&key, "{}").await.unwrap();
        client.complete(&key, None, Some(1)).await.unwrap();
    }
    (c, leader)
}

/// The leader's primary sink status once `ready` holds for it.
async fn primary_sink_once(
    c: &Cluster,
    leader: u64,
    what: &str,
    ready: fn(&pb::SinkStatus) -> bool,
) -> pb::SinkStatus {
    wait_for(Duration::from_secs(30), what, || async {
        let h = c.status(leader).await?.handoff?;
        let p = h.sinks.into_iter().find(|s| s.role == "primary")?;
        ready(&p).then_some(p)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_webhook_redirect_is_a_failure_nothing_is_evicted() {
    use axum::routing::{any, post};
    let followed: Arc<Mutex<usize>> = Arc::default();
    let f = followed.clone();
    let app = axum::Router::new()
        .route(
            "/in",
            post(|| async {
                (
                    axum::http::StatusCode::FOUND,
                    [(axum::http::header::LOCATION, "/ok")],
                )
            }),
        )
        .route(
            "/ok",
            any(move || {
                let f = f.clone();
                async move {
                    *f.lock() += 1;
                    axum::http::StatusCode::OK
                }
            }),
        );
    let (c, leader) = webhook_cluster(app, 10).await;
    // Several attempts, each answered with the redirect.
    let primary = primary_sink_once(&c, leader, "the sink to fail three times", |p| {
        p.batches_failed >= 3
    })
    .await;
    assert!(
        primary.failing_for_ms.is_some(),
        "the sink shows as failing: {primary:?}"
    );
    assert!(
        primary.last_error.contains("302") && primary.last_error.contains("not followed"),
        "{primary:?}"
    );
    assert_eq!(primary.records_delivered, 0);
    assert_eq!(*followed.lock(), 0, "the redirect was never followed");
    for id in c.running() {
        let s = c.status(id).await.unwrap();
        assert_eq!(
            (s.records, s.outbox_depth),
            (10, 10),
            "node {id} evicted nothing"
        );
        assert_eq!(
            s.handoff.unwrap().dead_letters,
            0,
            "a redirect is not a refusal"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_webhook_refusing_every_body_is_a_failing_sink_and_nothing_is_set_aside() {
    use axum::routing::post;
    let posts: Arc<Mutex<usize>> = Arc::default();
    let p = posts.clone();
    let app = axum::Router::new().route(
        "/in",
        post(move || {
            let p = p.clone();
            async move {
                *p.lock() += 1;
                (
                    axum::http::StatusCode::BAD_REQUEST,
                    "misconfigured receiver",
                )
            }
        }),
    );
    let (c, leader) = webhook_cluster(app, 40).await;
    // Several rounds (with backoff), every record refused, none taken.
    // A round counts each refused write and then the round's own failure,
    // so ten failed batches are at least five writes.
    let primary = primary_sink_once(&c, leader, "the sink to fail for several rounds", |p| {
        p.failing_for_ms.is_some() && p.batches_failed >= 10
    })
    .await;
    assert!(*posts.lock() >= 5, "{} writes", *posts.lock());
    assert!(
        primary.last_error.contains("refuses every record alone")
            && primary.last_error.contains("misconfigured receiver"),
        "{primary:?}"
    );
    assert_eq!(primary.records_delivered, 0);
    for id in c.running() {
        let s = c.status(id).await.unwrap();
        assert_eq!(
            (s.records, s.outbox_depth, s.handoff.unwrap().dead_letters),
            (40, 40, 0),
            "node {id}: nothing evicted, nothing set aside"
        );
    }
}
