//! One `inflight serve` process: storage, Raft, the gRPC and HTTP listeners,
//! the node's duties, cluster bootstrap or join, and an orderly shutdown.
//!
//! Shutdown on SIGINT/SIGTERM, in this order:
//! 1. the duties stop at the end of their current round: the hand-off worker
//!    finishes the batch it is writing (and proposes its `Evict`), the
//!    shadow sink drains its queue;
//! 2. a leader hands leadership to the most recently acknowledged voter, so
//!    clients find a new leader at once instead of after an election timeout;
//! 3. the client gRPC and HTTP listeners stop accepting and let calls in
//!    flight finish (bounded; watch streams end);
//! 4. the peer listener stops, then the Raft core, and the remaining tasks
//!    are joined.
//!
//! The peer listener stops last of the listeners: the hand-over in step 2
//! and the replication of writes still finishing in step 3 need it.
//!
//! When the Raft core dies on its own (a fatal storage error such as a full
//! disk or EIO; openraft never restarts it), the node is useless: it logs the
//! cause, runs the same steps with short deadlines (no hand-over: it leads
//! nothing any more), and `serve` returns an error, so the process exits
//! non-zero within seconds and its supervisor restarts it. `/livez` answers
//! 503 from the moment the core is dead.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::api::{ClusterService, GrpcMetricsLayer, InFlightService, Limits, Retention};
use crate::client::{Client, ClientOptions};
use crate::duties::compaction::Compaction;
use crate::duties::expiry::{Expiry, ExpirySettings};
use crate::duties::handoff::{Handoff, HandoffSettings};
use crate::handoff::{HandoffState, Sink, SinkSpec};
use crate::http::HttpTls;
use crate::pb;
use crate::raft::{self, RaftSettings};
pub use crate::shutdown::stop_signal;
use crate::shutdown::{Shutdown, Tasks};
use crate::state::WindowLimits;
use crate::tls::{NodeTls, TlsIncoming, TlsOptions};
use crate::wire::MemberAddr;

/// How long each shutdown step may take before the node moves on.
const DUTIES_STOP: Duration = Duration::from_secs(20);
const LISTENERS_STOP: Duration = Duration::from_secs(5);
const REST_STOP: Duration = Duration::from_secs(2);
/// Each step's deadline when the Raft core has died: the process must be
/// gone within seconds, and nothing that needs consensus can finish anyway.
const DEAD_CORE_STEP: Duration = Duration::from_millis(1_000);

/// Why `serve` stops other than on a stop signal.
enum Failure {
    Listener(&'static str),
    RaftCore(String),
}

/// Everything `inflight serve` needs to run a node.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub raft: RaftSettings,
    /// The client port: `InFlight` and `Cluster`.
    pub listen: SocketAddr,
    /// The peer port: `Raft` only.
    pub peer_listen: SocketAddr,
    pub http: Option<SocketAddr>,
    /// The Redis protocol port (`crate::resp`).
    pub resp_listen: Option<SocketAddr>,
    /// id → addresses of every initial voter (empty when joining).
    pub initial_cluster: BTreeMap<u64, MemberAddr>,
    /// Endpoints of an existing cluster to join as a learner.
    pub join: Vec<String>,
    pub limits: Limits,
    /// At most this many connections open on the gRPC port (`--max-connections`).
    pub max_connections: usize,
    pub retention: Retention,
    pub expiry: ExpirySettings,
    pub watch_window: WindowLimits,
    pub handoff: HandoffOptions,
    /// Which TLS files each port uses (`crate::tls`).
    pub tls: TlsOptions,
    /// Roles (`--auth-file`, `--admin-identities`), shared by the services.
    pub auth: Arc<crate::auth::Authorizer>,
}

/// Where finished records go.
#[derive(Clone, Debug)]
pub struct HandoffOptions {
    pub sink: SinkSpec,
    pub shadow: Option<SinkSpec>,
    /// `--sink-ca-file`: the CAs https webhooks and PostgreSQL `verify-*` trust.
    pub sink_ca_file: Option<std::path::PathBuf>,
    /// Past this many bytes held (records, request ids, watch window, Raft log, snapshots), writes that grow memory are refused.
    pub memory_budget_bytes: u64,
    pub settings: HandoffSettings,
}

pub async fn serve(mut o: ServeOptions) -> anyhow::Result<()> {
    // Every TLS file is read before anything listens: a wrong one is a
    // startup error naming it.
    let tls = NodeTls::load(&o.tls).map_err(|e| anyhow::anyhow!("{e}"))?;
    o.raft.peer_tls = tls.to_peers.clone();
    let listener = TcpListener::bind(o.listen)
        .await
        .with_context(|| format!("--listen: cannot listen on {}", o.listen))?;
    let peer_listener = TcpListener::bind(o.peer_listen)
        .await
        .with_context(|| format!("--peer-listen: cannot listen on {}", o.peer_listen))?;
    let http_listener = bind_optional("--http", o.http).await?;
    let resp_listener = bind_optional("--resp-listen", o.resp_listen).await?;
    // Open the sinks first: a sink that cannot even be opened (a directory
    // that cannot be created) is a configuration error, reported at startup.
    let ca = o.handoff.sink_ca_file.as_deref();
    let primary_sink = Sink::open(&o.handoff.sink, o.raft.id, ca)
        .map_err(|e| anyhow::anyhow!("--sink {}: {e}", o.handoff.sink))?;
    let shadow_sink = match &o.handoff.shadow {
        Some(spec) => Some(
            Sink::open(spec, o.raft.id, ca)
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
    let node = raft::Node::start(&o.raft).await?;
    node.table().events().set_limits(o.watch_window);
    tracing::info!(
        id = node.id(),
        grpc = %o.listen,
        peer = %o.peer_listen,
        http = ?o.http,
        resp = ?o.resp_listen,
        durability = node.durability().as_str(),
        data_dir = %o.raft.data_dir.display(),
        sink = %o.handoff.sink,
        shadow_sink = ?o.handoff.shadow.as_ref().map(|s| s.to_string()),
        "node started"
    );

    // Four sets of tasks, stopped in this order (see the module docs).
    let mut duties = Tasks::new("duties");
    let mut listeners = Tasks::new("listeners");
    let mut peer_listener_task = Tasks::new("peer listener");
    let mut rest = Tasks::new("node");

    // Requests: an update of the largest value, with room; a batch of up to
    // 4 × that fits 16 MiB. Answers stay within wire::RESPONSE_BYTES (values
    // are left out past it), except watches that ask for larger messages, up
    // to wire::MAX_WATCH_MESSAGE_BYTES: the encoding limit is that, a
    // backstop that turns a larger message into an error status.
    let max_msg = o.limits.max_value_bytes * 2 + (1 << 20);
    let records_service = InFlightService::new(
        node.clone(),
        listeners.signal(),
        o.limits,
        o.retention,
        handoff.clone(),
        o.auth.clone(),
    );
    if let Some(l) = resp_listener {
        // The client port's TLS and roles: a RESP client is who its
        // certificate says, as on gRPC.
        listeners.spawn(
            "resp",
            crate::resp::serve(
                l,
                // A Redis client does not follow redirects: its writes to
                // a follower go on to the leader (api::forward).
                records_service.clone().forwarding_writes(),
                tls.client_port.clone(),
                o.max_connections,
                listeners.signal(),
            ),
        );
    }
    let forward = records_service.forward_handler(tls.client_port.is_some());
    let records = pb::in_flight_server::InFlightServer::new(records_service)
        .max_decoding_message_size(max_msg.max(16 << 20))
        .max_encoding_message_size(crate::wire::MAX_WATCH_MESSAGE_BYTES);
    let cluster = pb::cluster_server::ClusterServer::new(
        ClusterService::new(node.clone(), handoff.clone(), o.auth.clone())
            .with_peer_port(tls.peer_port.clone()),
    );
    let mut grpc_stop = listeners.signal();
    let grpc = grpc_server()
        .layer(GrpcMetricsLayer)
        .add_service(records)
        .add_service(cluster);
    let grpc_stop = async move { grpc_stop.requested().await };
    let incoming = crate::connections::limited(listener, o.max_connections);
    match &tls.client_port {
        Some(t) => listeners.spawn(
            "grpc",
            log_end(
                "gRPC",
                grpc.serve_with_incoming_shutdown(TlsIncoming::new(incoming, t.clone()), grpc_stop),
            ),
        ),
        None => listeners.spawn(
            "grpc",
            log_end(
                "gRPC",
                grpc.serve_with_incoming_shutdown(incoming, grpc_stop),
            ),
        ),
    }
    // The peer port serves nothing but the Raft service: a client that
    // reaches it cannot call InFlight or Cluster, and the client port cannot
    // be used to send Raft messages.
    let peers =
        pb::raft_server::RaftServer::new(node.peer_service(peer_listener_task.signal(), forward))
            .max_decoding_message_size(crate::raft::PEER_MESSAGE_BYTES)
            .max_encoding_message_size(crate::raft::PEER_MESSAGE_BYTES);
    let mut peer_stop = peer_listener_task.signal();
    let peer_grpc = grpc_server().add_service(peers);
    let peer_stop = async move { peer_stop.requested().await };
    let incoming = crate::connections::limited(peer_listener, o.max_connections);
    // With peer TLS, a connection without a node certificate of the
    // cluster CA is dropped at the handshake, before a Raft message is read.
    match &tls.peer_port {
        Some(t) => peer_listener_task.spawn(
            "peer grpc",
            log_end(
                "peer gRPC",
                peer_grpc
                    .serve_with_incoming_shutdown(TlsIncoming::new(incoming, t.clone()), peer_stop),
            ),
        ),
        None => peer_listener_task.spawn(
            "peer grpc",
            log_end(
                "peer gRPC",
                peer_grpc.serve_with_incoming_shutdown(incoming, peer_stop),
            ),
        ),
    }
    if let Some(l) = http_listener {
        listeners.spawn(
            "http",
            crate::http::serve_with_tls(
                l,
                node.clone(),
                handoff.clone(),
                HttpTls {
                    server: tls.http_port.clone(),
                    to_nodes: tls.to_clients.clone(),
                },
                listeners.signal(),
            ),
        );
    }
    // Always, so that SIGHUP (`systemctl reload`) never kills a node, TLS
    // or not: its default action is to end the process.
    rest.spawn("tls reload", tls.clone().reload_on_sighup(rest.signal()));

    // In `rest`, not `listeners`: without an auth file it ends at once, and
    // a listener that ends stops the node.
    rest.spawn(
        "auth-reload",
        o.auth.clone().reload_on_sighup(rest.signal()),
    );
    {
        let node = node.clone();
        rest.spawn("leader-changes", async move {
            node.track_leader_changes().await
        });
    }
    {
        let node = node.clone();
        let mut stop = rest.signal();
        rest.spawn("recovery", async move {
            tokio::select! {
                _ = node.await_recovery() => {}
                _ = stop.requested() => {}
            }
        });
    }
    duties.spawn(
        "expiry",
        crate::duties::run(node.clone(), Expiry::new(o.expiry), duties.signal()),
    );
    duties.spawn(
        "compaction",
        crate::duties::run(
            node.clone(),
            Compaction::new(
                o.raft.snapshot_every,
                o.handoff.memory_budget_bytes / crate::memory::RAFT_LOG_SHARE,
            ),
            duties.signal(),
        ),
    );
    duties.spawn(
        "hand-off",
        crate::duties::run(
            node.clone(),
            Handoff::new(
                o.handoff.settings.clone(),
                handoff.clone(),
                primary_sink,
                shadow_sink,
            ),
            duties.signal(),
        ),
    );

    if !o.initial_cluster.is_empty() {
        if let Some(peer) = initialized_peer(&node, &o.initial_cluster, &tls).await {
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
        if node.is_pristine() {
            rest.spawn(
                "join",
                join(node.clone(), o.join.clone(), tls.clone(), rest.signal()),
            );
        } else {
            tracing::info!(
                "--join ignored: this node already has Raft state and rejoins on its own"
            );
        }
    }

    let failed = tokio::select! {
        _ = stop_signal() => {
            tracing::info!("stop signal received; shutting down");
            None
        }
        task = listeners.any_ended() => {
            tracing::error!(task, "a listener stopped on its own; shutting down");
            Some(Failure::Listener(task))
        }
        task = peer_listener_task.any_ended() => {
            tracing::error!(task, "a listener stopped on its own; shutting down");
            Some(Failure::Listener(task))
        }
        why = node.fatal() => {
            tracing::error!(
                cause = %why,
                "the Raft core is dead; exiting so that a supervisor restarts this node"
            );
            Some(Failure::RaftCore(why))
        }
    };
    if let Some(Failure::RaftCore(why)) = failed {
        duties.stop(DEAD_CORE_STEP).await;
        listeners.stop(DEAD_CORE_STEP).await;
        peer_listener_task.stop(DEAD_CORE_STEP).await;
        node.shutdown().await;
        rest.stop(DEAD_CORE_STEP).await;
        tracing::info!("stopped");
        anyhow::bail!("the Raft core is dead: {why}");
    }
    duties.stop(DUTIES_STOP).await;
    node.hand_over_leadership(node.timing().handover_within())
        .await;
    listeners.stop(LISTENERS_STOP).await;
    peer_listener_task.stop(LISTENERS_STOP).await;
    node.shutdown().await;
    rest.stop(REST_STOP).await;
    tracing::info!("stopped");
    match failed {
        Some(Failure::Listener(task)) => {
            anyhow::bail!("the {task} listener stopped on its own (see the log)")
        }
        _ => Ok(()),
    }
}

/// The settings both gRPC ports share.
fn grpc_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .max_concurrent_streams(Some(crate::connections::MAX_STREAMS_PER_CONNECTION))
}

/// The listener of an optional port, or `None` when its flag is not given.
async fn bind_optional(
    flag: &str,
    addr: Option<SocketAddr>,
) -> anyhow::Result<Option<TcpListener>> {
    match addr {
        Some(addr) => {
            Ok(Some(TcpListener::bind(addr).await.with_context(|| {
                format!("{flag}: cannot listen on {addr}")
            })?))
        }
        None => Ok(None),
    }
}

/// Runs a gRPC server to its end, logging why if it failed.
async fn log_end(
    what: &'static str,
    server: impl std::future::Future<Output = Result<(), tonic::transport::Error>>,
) {
    if let Err(e) = server.await {
        tracing::error!(error = %e, "{what} server stopped");
    }
}

/// For a pristine node about to initialize the cluster: is any other initial
/// member already part of an initialized cluster? (Then this node lost its
/// data, and initializing would create a second cluster beside the first.)
async fn initialized_peer(
    node: &raft::Node,
    members: &BTreeMap<u64, MemberAddr>,
    tls: &NodeTls,
) -> Option<u64> {
    if members.keys().next() != Some(&node.id()) || !node.is_pristine() {
        return None;
    }
    let peers: Vec<String> = members
        .iter()
        .filter(|(id, _)| **id != node.id())
        .map(|(_, a)| a.client.clone())
        .collect();
    let client = Client::with_options(peers.clone(), to_nodes(tls)).ok()?;
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
/// Options of this node's calls to other nodes' client ports: its peer
/// certificate as its identity when TLS is on.
fn to_nodes(tls: &NodeTls) -> ClientOptions {
    ClientOptions {
        tls: tls.to_clients.as_ref().map(|t| t.current().1),
        ..ClientOptions::default()
    }
}

async fn join(node: raft::Node, endpoints: Vec<String>, tls: NodeTls, mut stop: Shutdown) {
    let client = match Client::with_options(endpoints.clone(), to_nodes(&tls)) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "--join: bad endpoints");
            return;
        }
    };
    loop {
        match client.add_learner(node.id(), node.advertise()).await {
            Ok(_) => {
                tracing::info!(id = node.id(), via = ?endpoints, "joined the cluster as a learner");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e.message(), code = ?e.code(), "join failed; retrying")
            }
        }
        if stop.sleep(Duration::from_secs(1)).await {
            return;
        }
    }
}
