//! The hand-off sinks over TLS, against real servers: a PostgreSQL that
//! takes TCP connections only over TLS, and an https webhook receiver, each
//! with a certificate from a CA the test makes (`testkit::ca`).
//!
//! The sinks are driven directly for what each `sslmode` accepts and
//! refuses, and through a real node for what happens to the records when
//! the certificate is refused: they stay in the outbox, the sink's error
//! says why, and they are delivered once the right CA is configured.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use inflight::handoff::{Document, Sink, SinkSpec};
use inflight::state::HandoffId;
use parking_lot::Mutex;
use testkit::ca::TestCa;
use testkit::handoff::TABLE;
use testkit::http::serve_https;
use testkit::postgres::Postgres;
use testkit::{wait_for, Cluster, ClusterOptions};

fn doc(key: &str) -> Document {
    Document {
        id: HandoffId {
            key: key.into(),
            revision: 1,
        },
        state: "COMPLETED",
        json: format!(r#"{{"handoff_id":"{key}@1"}}"#),
    }
}

async fn pg_ids(pg: &Postgres) -> BTreeSet<String> {
    pg.client()
        .await
        .query(&format!("SELECT handoff_id FROM {TABLE}"), &[])
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default()
}

/// Opens the sink and writes one record named `key`.
async fn write_one(spec: &str, ca_file: Option<&Path>, key: &str) -> Result<(), String> {
    let spec: SinkSpec = spec.parse()?;
    let mut sink = Sink::open(&spec, 1, ca_file).map_err(|e| e.to_string())?;
    sink.write(&[doc(key)]).await.map_err(|e| {
        assert!(!e.permanent, "a TLS failure is retried: {e}");
        e.to_string()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sink_honours_each_sslmode_against_a_tls_only_server() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("inflight test CA");
    let other = TestCa::new("some other CA");
    let (ca_file, other_file) = (dir.path().join("ca.pem"), dir.path().join("other.pem"));
    ca.write(&ca_file);
    other.write(&other_file);
    // The certificate names pg.test only: reached as 127.0.0.1 the name is wrong.
    let pg = Postgres::start_tls(&ca.issue(&["pg.test"])).await;
    let by_ip = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
    let by_name = format!(
        "postgres://postgres@pg.test:{}/postgres?hostaddr=127.0.0.1",
        pg.port
    );
    let (ca_path, other_path) = (ca_file.display(), other_file.display());

    let accepted = [
        ("require", format!("{by_ip}?sslmode=require"), None),
        (
            "prefer (the default) takes the TLS offered",
            by_ip.clone(),
            None,
        ),
        (
            "verify-full, the URL's root",
            format!("{by_name}&sslmode=verify-full&sslrootcert={ca_path}"),
            None,
        ),
        (
            "verify-full, --sink-ca-file",
            format!("{by_name}&sslmode=verify-full"),
            Some(ca_file.as_path()),
        ),
        (
            "verify-full, the URL's root wins over --sink-ca-file",
            format!("{by_name}&sslmode=verify-full&sslrootcert={ca_path}"),
            Some(other_file.as_path()),
        ),
        (
            "verify-ca does not check the name",
            format!("{by_ip}?sslmode=verify-ca&sslrootcert={ca_path}"),
            None,
        ),
        (
            "keyword form",
            format!(
                "postgres:host=pg.test hostaddr=127.0.0.1 port={} user=postgres dbname=postgres \
                 sslmode=verify-full sslrootcert='{ca_path}'",
                pg.port
            ),
            None,
        ),
    ];
    let mut written = BTreeSet::new();
    for (i, (case, url, ca_flag)) in accepted.iter().enumerate() {
        let spec = if url.starts_with("postgres:") {
            url.clone()
        } else {
            format!("postgres:{url}")
        };
        let key = format!("ok-{i}");
        write_one(&spec, *ca_flag, &key)
            .await
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        written.insert(format!("{key}@1"));
    }

    let refused = [
        (
            "disable: the server takes no plain TCP",
            format!("{by_ip}?sslmode=disable"),
            None,
            vec!["cannot connect (sslmode=disable)", "no encryption"],
        ),
        (
            "verify-full, wrong host name",
            format!("{by_ip}?sslmode=verify-full&sslrootcert={ca_path}"),
            None,
            vec![
                "sslmode=verify-full: certificate for host 127.0.0.1 not valid",
                "not valid for name",
                "pg.test",
            ],
        ),
        (
            "verify-full, wrong CA",
            format!("{by_name}&sslmode=verify-full&sslrootcert={other_path}"),
            None,
            vec![
                "sslmode=verify-full: certificate for host pg.test not valid",
                "UnknownIssuer",
            ],
        ),
        (
            "verify-full, wrong CA from --sink-ca-file",
            format!("{by_name}&sslmode=verify-full"),
            Some(other_file.as_path()),
            vec!["certificate for host pg.test not valid", "UnknownIssuer"],
        ),
        (
            "verify-ca, wrong CA",
            format!("{by_ip}?sslmode=verify-ca&sslrootcert={other_path}"),
            None,
            vec!["sslmode=verify-ca: certificate for host 127.0.0.1 not valid"],
        ),
        (
            "require with a root named checks the chain, as libpq",
            format!("{by_ip}?sslmode=require&sslrootcert={other_path}"),
            None,
            vec!["sslmode=require: certificate for host 127.0.0.1 not valid"],
        ),
    ];
    for (i, (case, url, ca_flag, says)) in refused.iter().enumerate() {
        let e = write_one(
            &format!("postgres:{url}"),
            *ca_flag,
            &format!("refused-{i}"),
        )
        .await
        .expect_err(case);
        for part in says {
            assert!(e.contains(part), "{case}: {part:?} not in {e:?}");
        }
    }
    assert_eq!(
        pg_ids(&pg).await,
        written,
        "only the accepted writes landed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_webhook_checks_the_chain_and_the_host_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("inflight test CA");
    let other = TestCa::new("some other CA");
    let (ca_file, other_file) = (dir.path().join("ca.pem"), dir.path().join("other.pem"));
    ca.write(&ca_file);
    other.write(&other_file);
    let (url, got) = receiver(&ca.issue(&["127.0.0.1", "localhost"])).await;
    let (misnamed, _) = receiver(&ca.issue(&["hooks.example"])).await;

    write_one(&format!("webhook:{url}"), Some(&ca_file), "a")
        .await
        .expect("the receiver's CA is trusted");
    let e = write_one(&format!("webhook:{url}"), Some(&other_file), "b")
        .await
        .unwrap_err();
    assert!(
        e.contains("server certificate not valid") && e.contains("UnknownIssuer"),
        "{e}"
    );
    let e = write_one(&format!("webhook:{misnamed}"), Some(&ca_file), "c")
        .await
        .unwrap_err();
    assert!(
        e.contains("server certificate not valid") && e.contains("hooks.example"),
        "{e}"
    );
    assert_eq!(*got.lock(), vec!["a@1".to_string()]);

    // A CA file that is not one stops the sink from opening at all.
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "hello").unwrap();
    let spec: SinkSpec = format!("webhook:{url}").parse().unwrap();
    let e = Sink::open(&spec, 1, Some(&garbage))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("garbage.pem") && e.contains("no certificate"),
        "{e}"
    );
}

/// An https receiver presenting `cert`; every handoff_id it takes, in order.
async fn receiver(cert: &testkit::ca::ServerCert) -> (String, Arc<Mutex<Vec<String>>>) {
    use axum::routing::post;
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let g = got.clone();
    let app = axum::Router::new().route(
        "/postflight",
        post(move |body: String| {
            let g = g.clone();
            async move {
                let docs: Vec<serde_json::Value> = match serde_json::from_str(&body) {
                    Ok(d) => d,
                    Err(_) => return axum::http::StatusCode::BAD_REQUEST,
                };
                g.lock().extend(
                    docs.iter()
                        .filter_map(|d| d["handoff_id"].as_str().map(str::to_string)),
                );
                axum::http::StatusCode::OK
            }
        }),
    );
    (format!("{}/postflight", serve_https(app, cert).await), got)
}

/// Completes `n` records through `c`; returns their handoff ids.
async fn complete_records(c: &Cluster, n: usize) -> BTreeSet<String> {
    let client = c.client();
    let mut ids = BTreeSet::new();
    for i in 0..n {
        let key = format!("op/{i}");
        client.insert(&key, "{}").await.unwrap();
        let r = client.complete(&key, None, None).await.unwrap();
        ids.insert(format!("{key}@{}", r.revision));
    }
    ids
}

/// Waits until node 1's primary sink has failed twice (so it was retried)
/// with an error holding `says`; returns that error.
async fn wait_refused(c: &Cluster, says: &str) -> String {
    wait_for(
        Duration::from_secs(30),
        "the sink to refuse the certificate twice",
        || async {
            let s = c.status(1).await?;
            let sink = s.handoff?.sinks.into_iter().find(|s| s.role == "primary")?;
            (sink.batches_failed >= 2 && sink.last_error.contains(says)).then_some(sink.last_error)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_verify_full_with_the_wrong_ca_keeps_the_records_until_the_right_one_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("inflight test CA");
    let ca_file = dir.path().join("sink-ca.pem");
    TestCa::new("some other CA").write(&ca_file);
    let pg = Postgres::start_tls(&ca.issue(&["pg.test"])).await;
    let url = format!(
        "postgres://postgres@pg.test:{}/postgres?hostaddr=127.0.0.1&sslmode=verify-full",
        pg.port
    );
    let mut c = Cluster::start(ClusterOptions {
        nodes: 1,
        sink: Some(SinkSpec::Postgres(url)),
        extra_args: vec!["--sink-ca-file".into(), ca_file.display().to_string()],
        ..Default::default()
    })
    .await;
    c.wait_leader(Duration::from_secs(5)).await;
    let ids = complete_records(&c, 20).await;

    let e = wait_refused(&c, "certificate for host pg.test not valid").await;
    assert!(
        e.contains("sslmode=verify-full") && e.contains("UnknownIssuer"),
        "{e}"
    );
    let s = c.status(1).await.unwrap();
    assert_eq!(s.outbox_depth, 20, "every record is kept in the outbox");
    assert!(pg_ids(&pg).await.is_empty(), "nothing reached the table");

    // The right CA, and a restart to read it: everything is delivered.
    c.stop(1);
    ca.write(&ca_file);
    c.restart(1);
    c.wait_all_evicted(Duration::from_secs(30)).await;
    assert_eq!(pg_ids(&pg).await, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn https_webhook_without_the_receivers_ca_keeps_the_records_until_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("inflight test CA");
    let ca_file = dir.path().join("sink-ca.pem");
    TestCa::new("some other CA").write(&ca_file);
    let (url, got) = receiver(&ca.issue(&["127.0.0.1"])).await;
    let mut c = Cluster::start(ClusterOptions {
        nodes: 1,
        sink: Some(SinkSpec::Webhook(url)),
        extra_args: vec!["--sink-ca-file".into(), ca_file.display().to_string()],
        ..Default::default()
    })
    .await;
    c.wait_leader(Duration::from_secs(5)).await;
    let ids = complete_records(&c, 20).await;

    let e = wait_refused(&c, "server certificate not valid").await;
    assert!(e.contains("UnknownIssuer"), "{e}");
    assert_eq!(c.status(1).await.unwrap().outbox_depth, 20);
    assert!(got.lock().is_empty(), "the receiver got nothing");

    c.stop(1);
    ca.write(&ca_file);
    c.restart(1);
    c.wait_all_evicted(Duration::from_secs(30)).await;
    // Evicted only once acknowledged: everything is there.
    assert_eq!(got.lock().iter().cloned().collect::<BTreeSet<_>>(), ids);
}
