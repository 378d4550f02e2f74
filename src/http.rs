//! The operator HTTP port: `/livez`, `/readyz`, `/status`, `/metrics`,
//! `/cluster` (every member's status, asked from this node) and `/` (the
//! live status page).
//!
//! `/livez` answers 200 while the Raft core runs, and 503 with the reason
//! once it has died (a fatal storage error): the process is then on its way
//! out (see `crate::node`), and a probe must not call it alive meanwhile. `/readyz` is 200 only
//! when this node knows a leader, heard from it within `READY_CONTACT_MS`,
//! is a voter, has applied its log to within `READY_LAG` entries and has
//! recovered after a restart; `?verbose` lists each check. `/status` is the same
//! JSON as `inflight status --json` for this node. `/metrics` is the
//! Prometheus (OpenMetrics) text exposition, see `crate::metrics`.
//!
//! `/cluster` (which the status page polls) is the one handler that costs
//! other nodes work: it asks every member for its member list and status.
//! So that a flood of requests, or many open status pages, cannot turn a
//! node into an amplifier against its peers, the answers are shared: one
//! fan-out at a time per node, and requests that arrive while one runs wait
//! for it and take its result; that result is served for
//! [`CLUSTER_REPORT_FRESH`] after it came in (`report_age_ms` says how old
//! the one served is). A flood of `/cluster` requests thus makes at most one
//! fan-out per second, whatever its size.
//!
//! With `--cert-file` the port speaks HTTPS only, with the client port's
//! certificate and client verifier (`crate::tls`).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use axum::Router;
use serde_json::json;
use tokio::net::TcpListener;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::node_status;
use crate::handoff::HandoffState;
use crate::raft;
use crate::shutdown::Shutdown;
use crate::tls::{ServerTls, TlsListener};
use crate::wire::ReloadableClientTls;

/// How far applied may trail the local log for the node to count as caught up.
pub const READY_LAG: u64 = 1_000;
/// A node that has not heard from the leader (or, being the leader, from a
/// quorum) for this long is cut off, whatever it still believes.
pub const READY_CONTACT_MS: u64 = 3_000;

/// How long one `/cluster` fan-out's answers are served to later requests.
pub const CLUSTER_REPORT_FRESH: Duration = Duration::from_secs(1);

/// What the HTTP handlers read.
#[derive(Clone)]
struct Ops {
    node: raft::Node,
    handoff: Arc<HandoffState>,
    to_nodes: Option<ReloadableClientTls>,
    cluster: Arc<SharedReport>,
}

/// The last `/cluster` fan-out's result, shared by the requests that come
/// while it runs and while it is fresh.
#[derive(Default)]
struct SharedReport {
    /// Held across a fan-out, so requests queue behind it (tokio's mutex
    /// is fair) and find its result when they get their turn. A request
    /// dropped mid-fan-out releases it, and the next one asks again.
    last: tokio::sync::Mutex<Option<(Instant, serde_json::Value)>>,
}

impl SharedReport {
    /// The last result if it is fresh, else `ask()`'s, with its age in ms.
    /// `now` reads the clock (a parameter so that tests can move it).
    async fn get<F, Fut>(&self, now: impl Fn() -> Instant, ask: F) -> (serde_json::Value, u64)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = serde_json::Value>,
    {
        let mut last = self.last.lock().await;
        if let Some((at, report)) = &*last {
            let age = now().saturating_duration_since(*at);
            if age < CLUSTER_REPORT_FRESH {
                return (report.clone(), age.as_millis() as u64);
            }
        }
        let report = ask().await;
        *last = Some((now(), report.clone()));
        (report, 0)
    }
}

/// The HTTP port's TLS: what it serves (none: plain HTTP), and how
/// `/cluster` reaches the other nodes' client ports.
#[derive(Clone, Debug, Default)]
pub struct HttpTls {
    pub server: Option<ServerTls>,
    pub to_nodes: Option<ReloadableClientTls>,
}

/// Plain HTTP.
pub async fn serve(
    listener: TcpListener,
    node: raft::Node,
    handoff: Arc<HandoffState>,
    stop: Shutdown,
) {
    serve_with_tls(listener, node, handoff, HttpTls::default(), stop).await
}

pub async fn serve_with_tls(
    listener: TcpListener,
    node: raft::Node,
    handoff: Arc<HandoffState>,
    tls: HttpTls,
    stop: Shutdown,
) {
    let app = Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/cluster", get(cluster))
        .route("/", get(page))
        .with_state(Ops {
            node,
            handoff,
            to_nodes: tls.to_nodes,
            cluster: Arc::default(),
        });
    let r = match tls.server {
        None => serve_on(listener, app, stop).await,
        Some(server) => match TlsListener::new(listener, server) {
            Ok(l) => serve_on(l, app, stop).await,
            Err(e) => Err(e),
        },
    };
    if let Err(e) = r {
        tracing::error!(error = %e, "http server stopped");
    }
}

async fn serve_on<L>(listener: L, app: Router, mut stop: Shutdown) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            stop.requested().await;
        })
        .await
}

async fn livez(State(ops): State<Ops>) -> impl IntoResponse {
    match ops.node.dead_reason() {
        None => (StatusCode::OK, "ok\n".to_string()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("dead: {why}; the process exits so that its supervisor restarts it\n"),
        ),
    }
}

async fn status(State(ops): State<Ops>) -> impl IntoResponse {
    let mut v = crate::client::status_json(&node_status(&ops.node, &ops.handoff));
    v["memory"] = memory_json(&ops.node.memory_use());
    Json(v)
}

/// What this node holds, by part, as the memory budget counts it.
fn memory_json(m: &crate::memory::MemoryUse) -> serde_json::Value {
    let mut v = json!({ "total_bytes": m.total() });
    for (part, bytes) in m.parts() {
        v[format!("{part}_bytes")] = json!(bytes);
    }
    v
}

/// Prometheus scrape: gauges are refreshed from the node, then everything is rendered.
async fn metrics(State(ops): State<Ops>) -> impl IntoResponse {
    let m = &crate::metrics::METRICS;
    let s = node_status(&ops.node, &ops.handoff);
    m.has_leader.set(i64::from(s.leader_id != 0));
    m.proposals_committed
        .set(ops.node.status().committed_index as i64);
    m.proposals_applied.set(s.applied_index as i64);
    m.records.set(s.records as i64);
    m.memory_bytes.set(s.memory_bytes as i64);
    for (part, bytes) in ops.node.memory_use().parts() {
        m.memory_part_bytes
            .get_or_create(&crate::metrics::MemoryLabels {
                part: part.to_string(),
            })
            .set(bytes.min(i64::MAX as u64) as i64);
    }
    m.outbox_depth.set(s.outbox_depth as i64);
    if let Some(h) = &s.handoff {
        m.dead_letters.set(h.dead_letters as i64);
        m.dead_letter_bytes.set(h.dead_letter_bytes as i64);
    }
    m.outbox_oldest_age_seconds
        .set(s.outbox_oldest_age_ms.unwrap_or(0) as f64 / 1000.0);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
}

/// The live status page: one self-contained HTML file, no build step.
async fn page() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("status_page.html"),
    )
}

/// Every member's status (as `inflight status --json`), asked from this
/// node at most once per [`CLUSTER_REPORT_FRESH`], plus the leader changes
/// this node saw.
async fn cluster(
    State(Ops {
        node,
        cluster,
        to_nodes,
        ..
    }): State<Ops>,
) -> impl IntoResponse {
    let (mut v, age_ms) = cluster
        .get(Instant::now, || ask_members(&node, to_nodes.as_ref()))
        .await;
    v["report_age_ms"] = json!(age_ms);
    let changes: Vec<_> = node
        .leader_changes()
        .iter()
        .map(|c| json!({"at_ms": c.at_ms, "term": c.term, "leader": c.leader}))
        .collect();
    v["leader_changes"] = json!(changes);
    v["served_by"] = json!(node.id());
    Json(v)
}

/// One fan-out: every member's member list and status.
/// `to_nodes`: this node's TLS to the other nodes' client ports.
async fn ask_members(
    node: &raft::Node,
    to_nodes: Option<&ReloadableClientTls>,
) -> serde_json::Value {
    let endpoints: Vec<String> = node
        .status()
        .members
        .into_iter()
        .map(|m| m.address)
        .collect();
    let opts = crate::client::ClientOptions {
        tls: to_nodes.map(|t| t.current().1),
        ..Default::default()
    };
    match crate::client::Client::with_options(endpoints, opts) {
        Ok(c) => c
            .cluster_report(std::time::Duration::from_millis(900))
            .await
            .to_json(),
        Err(e) => json!({"error": e.message()}),
    }
}

#[derive(serde::Deserialize)]
struct ReadyQuery {
    verbose: Option<String>,
}

async fn readyz(State(ops): State<Ops>, Query(q): Query<ReadyQuery>) -> impl IntoResponse {
    let s = node_status(&ops.node, &ops.handoff);
    let lag = s.last_log_index.saturating_sub(s.applied_index);
    let checks = [
        (
            "leader",
            s.leader_id != 0,
            format!("leader {}", s.leader_id),
        ),
        ("voter", s.role != "learner", format!("role {}", s.role)),
        (
            "caught_up",
            lag <= READY_LAG,
            format!("applied lags the log by {lag} entries"),
        ),
        (
            "recovered",
            s.recovered,
            "applied what the cluster committed before this node started".into(),
        ),
        (
            "connected",
            s.leader_contact_ms.is_some_and(|ms| ms <= READY_CONTACT_MS),
            match s.leader_contact_ms {
                Some(ms) => {
                    format!("last heard from the leader (or, as leader, from a quorum) {ms} ms ago")
                }
                None => "has not heard from a leader".into(),
            },
        ),
    ];
    let ok = checks.iter().all(|(_, pass, _)| *pass);
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if q.verbose.is_some() {
        let body: Vec<_> = checks
            .iter()
            .map(|(name, pass, detail)| json!({"check": name, "ok": pass, "detail": detail}))
            .collect();
        return (code, Json(json!({"ready": ok, "checks": body}))).into_response();
    }
    (code, if ok { "ok\n" } else { "not ready\n" }).into_response()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::handoff::SinkSpec;
    use crate::raft::{Durability, RaftSettings};

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.unwrap();
        let code = raw
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        (code, body.to_string())
    }

    #[tokio::test]
    async fn concurrent_cluster_requests_share_one_fan_out_and_its_result_for_a_second() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let shared = Arc::new(SharedReport::default());
        let t0 = Instant::now();
        let at = move |ms: u64| move || t0 + Duration::from_millis(ms);
        let asked = Arc::new(AtomicU64::new(0));
        // The first fan-out is held open until every request is waiting.
        let (release, held) = tokio::sync::oneshot::channel::<()>();
        let held = Arc::new(tokio::sync::Mutex::new(Some(held)));
        let ask = |asked: Arc<AtomicU64>, held: Arc<tokio::sync::Mutex<Option<_>>>| async move {
            let n = asked.fetch_add(1, Ordering::SeqCst) + 1;
            if let Some(h) = held.lock().await.take() {
                let _: Result<(), _> = h.await;
            }
            json!({ "fan_out": n })
        };
        let entered = Arc::new(AtomicU64::new(0));
        let requests: Vec<_> = (0..50)
            .map(|_| {
                let (shared, asked, held) = (shared.clone(), asked.clone(), held.clone());
                let entered = entered.clone();
                tokio::spawn(async move {
                    // Counted in the same poll that queues it on the lock.
                    entered.fetch_add(1, Ordering::SeqCst);
                    shared.get(at(0), || ask(asked, held)).await
                })
            })
            .collect();
        while entered.load(Ordering::SeqCst) < 50 {
            tokio::task::yield_now().await;
        }
        assert!(
            requests.iter().all(|r| !r.is_finished()),
            "all wait for the held fan-out"
        );
        release.send(()).unwrap();
        for r in requests {
            let (v, _) = r.await.unwrap();
            assert_eq!(
                v["fan_out"], 1,
                "every request got the one fan-out's result"
            );
        }
        assert_eq!(asked.load(Ordering::SeqCst), 1);

        // Fresh for a second: served with its age, no new fan-out.
        let (v, age) = shared
            .get(at(900), || ask(asked.clone(), held.clone()))
            .await;
        assert_eq!((v["fan_out"].as_u64(), age), (Some(1), 900));
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        // Then stale: the next request asks again.
        let (v, age) = shared
            .get(at(1000), || ask(asked.clone(), held.clone()))
            .await;
        assert_eq!((v["fan_out"].as_u64(), age), (Some(2), 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn livez_answers_503_with_the_reason_once_the_raft_core_is_dead() {
        let dir = tempfile::tempdir().unwrap();
        let node = raft::Node::start(&RaftSettings {
            id: 1,
            data_dir: dir.path().to_path_buf(),
            advertise: crate::wire::MemberAddr::new("127.0.0.1:1", "127.0.0.1:2"),
            durability: Durability::Memory,
            snapshot_every: 1_000,
            timing: raft::Timing::new((150, 300), None).unwrap(),
            peer_source_ip: None,
            peer_tls: None,
        })
        .await
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handoff = Arc::new(HandoffState::new(&SinkSpec::Noop, None, 1 << 30));
        tokio::spawn(serve(listener, node.clone(), handoff, Shutdown::never()));

        assert_eq!(get(addr, "/livez").await, (200, "ok\n".to_string()));
        assert_eq!(node.dead_reason(), None);
        node.shutdown().await;
        let why = tokio::time::timeout(Duration::from_secs(5), node.fatal())
            .await
            .expect("Node::fatal resolves once the core is dead");
        assert_eq!(node.dead_reason().as_deref(), Some(why.as_str()));
        let (code, body) = get(addr, "/livez").await;
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("dead") && body.contains(&why), "{body}");
    }
}
