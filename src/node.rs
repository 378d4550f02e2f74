//! One `inflight serve` process: storage, Raft, the gRPC and HTTP listeners,
//! cluster bootstrap or join, and a clean shutdown on SIGINT/SIGTERM.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use openraft::async_runtime::WatchReceiver;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::api::{ClusterService, GrpcMetricsLayer, Limits, RecordService, Retention};
use crate::client::Client;
use crate::handoff::{HandoffSettings, HandoffState, Sink, SinkSpec};
use crate::pb;
use crate::raft::bootstrap::{RaftNode, RaftSettings};
use crate::raft::expirer::{self, ExpirySettings};
use crate::raft::peer_service::PeerService;
use crate::state::WindowLimits;

/// Everything `inflight serve` needs to run a node.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub raft: RaftSettings,
    pub listen: SocketAddr,
    pub http: Option<SocketAddr>,
    /// id → address of every initial voter (empty when joining).
    pub initial_cluster: BTreeMap<u64, String>,
    /// Endpoints of an existing cluster to join as a learner.
    pub join: Vec<String>,
    pub limits: Limits,
    pub retention: Retention,
    pub expiry: ExpirySettings,
    pub watch_window: WindowLimits,
    pub handoff: HandoffOptions,
}

/// Where finished records go.
#[derive(Clone, Debug)]
pub struct HandoffOptions {
    pub sink: SinkSpec,
    pub shadow: Option<SinkSpec>,
    /// Past this many bytes of records, Insert is refused.
    pub memory_budget_bytes: u64,
    pub settings: HandoffSettings,
}

/// Resolves when the process is asked to stop.
pub async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

pub async fn serve(o: ServeOptions) -> anyhow::Result<()> {
    let listener = TcpListener::bind(o.listen)
        .await
        .with_context(|| format!("--listen: cannot listen on {}", o.listen))?;
    let http_listener = match o.http {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("--http: cannot listen on {addr}"))?,
        ),
        None => None,
    };
    // Open the sinks first: a sink that cannot even be opened (a directory
    // that cannot be created) is a configuration error, reported at startup.
    let primary_sink = Sink::open(&o.handoff.sink, o.raft.id)
        .map_err(|e| anyhow::anyhow!("--sink {}: {e}", o.handoff.sink))?;
    let shadow_sink = match &o.handoff.shadow {
        Some(spec) => Some(
            Sink::open(spec, o.raft.id)
                .map_err(|e| anyhow::anyhow!("--shadow-sink {spec}: {e}"))?,
        ),
        None => None,
    };
    let handoff = Arc::new(HandoffState::new(
        &o.handoff.sink,
        o.handoff.shadow.as_ref(),
        o.handoff.memory_budget_bytes,
    ));

    crate::metrics::METRICS
        .memory_budget_bytes
        .set(o.handoff.memory_budget_bytes.min(i64::MAX as u64) as i64);
    let node = RaftNode::start(&o.raft).await?;
    node.store.events().set_limits(o.watch_window);
    tracing::info!(
        id = node.id,
        grpc = %o.listen,
        http = ?o.http,
        durability = node.durability.as_str(),
        data_dir = %o.raft.data_dir.display(),
        sink = %o.handoff.sink,
        shadow_sink = ?o.handoff.shadow.as_ref().map(|s| s.to_string()),
        "node started"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let max_msg = o.limits.max_value_bytes * 2 + (1 << 20);
    let records = pb::in_flight_server::InFlightServer::new(RecordService::new(
        node.clone(),
        o.limits,
        o.retention,
        handoff.clone(),
    ))
    .max_decoding_message_size(max_msg.max(16 << 20));
    let cluster =
        pb::cluster_server::ClusterServer::new(ClusterService::new(node.clone(), handoff.clone()));
    let peers = pb::raft_server::RaftServer::new(PeerService::new(
        node.raft.clone(),
        node.leader_contact.clone(),
    ))
    .max_decoding_message_size(256 << 20)
    .max_encoding_message_size(256 << 20);
    let mut grpc_stop = stop_rx.clone();
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(5)))
            .http2_keepalive_timeout(Some(Duration::from_secs(5)))
            .layer(GrpcMetricsLayer)
            .add_service(records)
            .add_service(cluster)
            .add_service(peers)
            .serve_with_incoming_shutdown(without_nagle(listener), async move {
                let _ = grpc_stop.wait_for(|s| *s).await;
            }),
    );
    let http = http_listener.map(|l| {
        tokio::spawn(crate::http::serve(
            l,
            node.clone(),
            handoff.clone(),
            stop_rx.clone(),
        ))
    });
    tokio::spawn(log_leader_changes(node.clone()));
    tokio::spawn(expirer::run(node.clone(), o.expiry, stop_rx.clone()));
    tokio::spawn(crate::raft::compaction::run(
        node.clone(),
        o.raft.snapshot_every,
        stop_rx.clone(),
    ));
    tokio::spawn(crate::handoff::run(
        node.clone(),
        o.handoff.settings.clone(),
        handoff.clone(),
        primary_sink,
        shadow_sink,
        stop_rx.clone(),
    ));

    {
        let node = node.clone();
        tokio::spawn(async move { node.await_recovery().await });
    }

    if !o.initial_cluster.is_empty() {
        if let Some(peer) = initialized_peer(&node, &o.initial_cluster).await {
            tracing::warn!(
                peer,
                "this node's store is empty but a peer already belongs to an initialized cluster; not \
                 initializing another one. If this node lost its data, it has also forgotten its votes: \
                 remove it from the membership and add it back under a new id with --join"
            );
        } else {
            node.initialize_if_first(&o.initial_cluster).await?;
        }
    }
    if !o.join.is_empty() {
        if node.log.is_pristine() {
            tokio::spawn(join(node.clone(), o.join.clone(), stop_rx.clone()));
        } else {
            tracing::info!(
                "--join ignored: this node already has Raft state and rejoins on its own"
            );
        }
    }

    let mut grpc = grpc;
    tokio::select! {
        _ = stop_signal() => tracing::info!("stop signal received; shutting down"),
        r = &mut grpc => {
            r.context("gRPC server task")?.context("gRPC server")?;
        }
    }
    let _ = stop_tx.send(true);
    if let Err(e) = node.raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), grpc).await;
    if let Some(h) = http {
        let _ = tokio::time::timeout(Duration::from_secs(2), h).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Accepted connections with Nagle's algorithm off. `Server::tcp_nodelay`
/// only applies to listeners tonic binds itself, not to an incoming stream
/// like this one; without it a response written in several small segments
/// waits for the client's delayed ACK (about 40 ms per request).
fn without_nagle(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt;
    TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        conn.set_nodelay(true)?;
        Ok(conn)
    })
}

/// For a pristine node about to initialize the cluster: is any other initial
/// member already part of an initialized cluster? (Then this node lost its
/// data, and initializing would create a second cluster beside the first.)
async fn initialized_peer(node: &RaftNode, members: &BTreeMap<u64, String>) -> Option<u64> {
    if members.keys().next() != Some(&node.id) || !node.log.is_pristine() {
        return None;
    }
    let peers: Vec<String> = members
        .iter()
        .filter(|(id, _)| **id != node.id)
        .map(|(_, a)| a.clone())
        .collect();
    let client = Client::new(peers.clone()).ok()?;
    for addr in &peers {
        if let Ok(s) = client.node_status(addr, Duration::from_millis(500)).await {
            if s.term > 0 || s.last_log_index > 0 {
                return Some(s.id);
            }
        }
    }
    None
}

/// Asks an existing cluster to add this node as a learner, until it does.
async fn join(node: RaftNode, endpoints: Vec<String>, mut stop: watch::Receiver<bool>) {
    let client = match Client::new(endpoints.clone()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "--join: bad endpoints");
            return;
        }
    };
    loop {
        match client.add_learner(node.id, &node.advertise).await {
            Ok(_) => {
                tracing::info!(id = node.id, via = ?endpoints, "joined the cluster as a learner");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e.message(), code = ?e.code(), "join failed; retrying")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {},
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One log line per leader change seen by this node.
async fn log_leader_changes(node: RaftNode) {
    let mut rx = node.raft.metrics();
    let mut last: Option<u64> = None;
    loop {
        let (leader, term) = {
            let m = rx.borrow_and_update();
            (m.current_leader, m.current_term)
        };
        if leader != last {
            if leader.is_some() {
                crate::metrics::METRICS.leader_changes.inc();
            }
            {
                let mut seen = node.leader_changes.lock();
                seen.push_back(crate::raft::bootstrap::LeaderChange {
                    at_ms: crate::raft::leader_clock_ms(),
                    term,
                    leader,
                });
                while seen.len() > 20 {
                    seen.pop_front();
                }
            }
            match leader {
                Some(l) => tracing::info!(leader = l, term, "leader changed"),
                None => tracing::info!(term, "no leader"),
            }
            last = leader;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
