//! Prometheus metrics: one registry per process (a process is one node).
//!
//! Names are stable and documented in README.md ("Metrics"). Counters and
//! histograms are updated where things happen (the WAL writer, the peer
//! network, the gRPC handlers, the expiry duty); gauges that mirror state (the
//! Raft indexes, records, memory) are read from the node when scraped, so
//! they cannot drift.

use std::sync::atomic::AtomicU64;
use std::sync::LazyLock;
use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandoffLabels {
    /// `primary` or `shadow`.
    pub role: String,
    /// `ok` or `error`.
    pub result: String,
}

/// One part of what the node holds (`crate::memory::MemoryUse::parts`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MemoryLabels {
    pub part: String,
}

/// A listening port: `client`, `peer` or `http`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortLabels {
    pub port: String,
}

/// `ok` or `error`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

/// `read`, `write`, `watch` or `admin` (`crate::auth::Operation`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
}

pub struct Metrics {
    registry: Registry,
    pub has_leader: Gauge,
    pub leader_changes: Counter,
    pub proposals_committed: Gauge,
    pub proposals_applied: Gauge,
    pub proposals_failed: Counter,
    pub proposals_pending: Gauge,
    pub proposal_batch_size: Histogram,
    pub read_batch_size: Histogram,
    pub follower_read_batch_size: Histogram,
    pub writes_forwarded: Counter,
    pub forward_batch_size: Histogram,
    pub frame_ops: Histogram,
    pub wal_fsync_seconds: Histogram,
    pub grpc_seconds: Family<GrpcLabels, Histogram>,
    pub peer_rtt_seconds: Family<PeerLabels, Histogram>,
    pub records: Gauge,
    pub memory_bytes: Gauge,
    pub memory_part_bytes: Family<MemoryLabels, Gauge>,
    pub outbox_depth: Gauge,
    pub outbox_oldest_age_seconds: Gauge<f64, AtomicU64>,
    pub expired: Counter,
    pub handoff_batches: Family<HandoffLabels, Counter>,
    pub handoff_records: Family<HandoffLabels, Counter>,
    pub handoff_write_seconds: Family<HandoffLabels, Histogram>,
    pub handoff_evicted: Counter,
    pub handoff_dead_lettered: Counter,
    pub dead_letters: Gauge,
    pub dead_letter_bytes: Gauge,
    pub memory_budget_bytes: Gauge,
    pub inserts_refused_budget: Counter,
    pub tls_handshake_failures: Family<PortLabels, Counter>,
    pub permission_denied: Family<OperationLabels, Counter>,
    pub auth_reloads: Family<ResultLabels, Counter>,
    pub connections_open: Gauge,
    pub connections_refused: Counter,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~13 s
    Histogram::new(exponential_buckets(0.00005, 2.0, 18))
}

fn batch_histogram() -> Histogram {
    // 1 .. 4096
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

impl Metrics {
    fn new() -> Metrics {
        let mut r = Registry::with_prefix("inflight");
        let m = Metrics {
            has_leader: Gauge::default(),
            leader_changes: Counter::default(),
            proposals_committed: Gauge::default(),
            proposals_applied: Gauge::default(),
            proposals_failed: Counter::default(),
            proposals_pending: Gauge::default(),
            proposal_batch_size: batch_histogram(),
            read_batch_size: batch_histogram(),
            follower_read_batch_size: batch_histogram(),
            writes_forwarded: Counter::default(),
            forward_batch_size: batch_histogram(),
            frame_ops: batch_histogram(),
            wal_fsync_seconds: latency_histogram(),
            grpc_seconds: Family::new_with_constructor(latency_histogram),
            peer_rtt_seconds: Family::new_with_constructor(latency_histogram),
            records: Gauge::default(),
            memory_bytes: Gauge::default(),
            memory_part_bytes: Family::default(),
            outbox_depth: Gauge::default(),
            outbox_oldest_age_seconds: Gauge::default(),
            expired: Counter::default(),
            handoff_batches: Family::default(),
            handoff_records: Family::default(),
            handoff_write_seconds: Family::new_with_constructor(latency_histogram),
            handoff_evicted: Counter::default(),
            handoff_dead_lettered: Counter::default(),
            dead_letters: Gauge::default(),
            dead_letter_bytes: Gauge::default(),
            memory_budget_bytes: Gauge::default(),
            inserts_refused_budget: Counter::default(),
            tls_handshake_failures: Family::default(),
            permission_denied: Family::default(),
            auth_reloads: Family::default(),
            connections_open: Gauge::default(),
            connections_refused: Counter::default(),
            registry: Registry::default(),
        };
        r.register(
            "has_leader",
            "1 if this node knows a leader, else 0",
            m.has_leader.clone(),
        );
        r.register(
            "leader_changes_seen",
            "Leader changes this node has seen",
            m.leader_changes.clone(),
        );
        r.register(
            "proposals_committed",
            "Raft log index this node knows to be committed",
            m.proposals_committed.clone(),
        );
        r.register(
            "proposals_applied",
            "Raft log index applied to the state machine",
            m.proposals_applied.clone(),
        );
        r.register(
            "proposals_failed",
            "Client proposals that failed (not leader, no quorum, leader change)",
            m.proposals_failed.clone(),
        );
        r.register(
            "proposals_pending",
            "Client proposals in flight on this node",
            m.proposals_pending.clone(),
        );
        r.register(
            "proposal_batch_size",
            "Commands handed to the Raft core together (one batch of proposals)",
            m.proposal_batch_size.clone(),
        );
        r.register(
            "read_batch_size",
            "Linearizable or lease reads served by one ReadIndex round or lease check",
            m.read_batch_size.clone(),
        );
        r.register(
            "follower_read_batch_size",
            "Linearizable reads on this follower or learner served by one read-index request to the leader",
            m.follower_read_batch_size.clone(),
        );
        r.register(
            "writes_forwarded",
            "Writes this follower's RESP clients sent, passed on to the leader",
            m.writes_forwarded.clone(),
        );
        r.register(
            "forward_batch_size",
            "Writes this follower forwarded to the leader in one request",
            m.forward_batch_size.clone(),
        );
        r.register(
            "frame_ops",
            "Operations per frame received on the batching session stream",
            m.frame_ops.clone(),
        );
        r.register(
            "wal_fsync_duration_seconds",
            "Time of one WAL fsync (one group commit)",
            m.wal_fsync_seconds.clone(),
        );
        r.register(
            "grpc_request_duration_seconds",
            "Client gRPC requests served, by method and status code",
            m.grpc_seconds.clone(),
        );
        r.register(
            "peer_round_trip_seconds",
            "Round trip of replication messages to each peer",
            m.peer_rtt_seconds.clone(),
        );
        r.register("records", "Records in memory", m.records.clone());
        r.register(
            "memory_bytes",
            "Approximate bytes this node holds, as the memory budget counts them (the sum of memory_part_bytes)",
            m.memory_bytes.clone(),
        );
        r.register(
            "memory_part_bytes",
            "Approximate bytes this node holds, by part: live_records, outbox, request_ids, \
             watch_window, raft_log, snapshot (being built or installed), reserved (admitted writes)",
            m.memory_part_bytes.clone(),
        );
        r.register(
            "outbox_depth",
            "COMPLETED and EXPIRED records waiting for hand-off",
            m.outbox_depth.clone(),
        );
        r.register(
            "outbox_oldest_age_seconds",
            "How long the oldest record waiting for hand-off has waited (0 when none)",
            m.outbox_oldest_age_seconds.clone(),
        );
        r.register(
            "expired_records",
            "Records this node expired as leader",
            m.expired.clone(),
        );
        r.register(
            "handoff_batches",
            "Sink writes by this node's hand-off worker, by sink role and result (ok; error: \
             retried; refused: the sink refused the content, the batch is split)",
            m.handoff_batches.clone(),
        );
        r.register(
            "handoff_records",
            "Records in those sink writes, by sink role and result",
            m.handoff_records.clone(),
        );
        r.register(
            "handoff_write_duration_seconds",
            "Time of one acknowledged sink write, by sink role",
            m.handoff_write_seconds.clone(),
        );
        r.register(
            "handoff_evicted_records",
            "Records evicted by committed Evict entries this node proposed as leader",
            m.handoff_evicted.clone(),
        );
        r.register(
            "handoff_dead_lettered_records",
            "Records this node, as leader, set aside as dead letters after the sink refused them alone",
            m.handoff_dead_lettered.clone(),
        );
        r.register(
            "handoff_dead_letters",
            "Records the sink refused for good, waiting for `inflight handoff retry` or `drop`",
            m.dead_letters.clone(),
        );
        r.register(
            "handoff_dead_letter_bytes",
            "Bytes held by those records (part of memory_bytes)",
            m.dead_letter_bytes.clone(),
        );
        r.register(
            "memory_budget_bytes",
            "The memory budget (--memory-budget); writes that grow memory are refused past it",
            m.memory_budget_bytes.clone(),
        );
        r.register(
            "inserts_refused_memory_budget",
            "Inserts, and updates or completes growing a value, refused with RESOURCE_EXHAUSTED by the memory budget",
            m.inserts_refused_budget.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out, by port (client, peer, http): no certificate, an untrusted or expired one, a client certificate on the peer port, or not TLS at all",
            m.tls_handshake_failures.clone(),
        );
        r.register(
            "permission_denied",
            "Calls (and frame ops) refused with PERMISSION_DENIED by the roles, by operation: \
             read, write, watch, admin",
            m.permission_denied.clone(),
        );
        r.register(
            "auth_reloads",
            "Reloads of --auth-file on SIGHUP, by result: ok, or error (the roles read before stay)",
            m.auth_reloads.clone(),
        );
        r.register(
            "connections_open",
            "Connections open on the gRPC ports (client and peer)",
            m.connections_open.clone(),
        );
        r.register(
            "connections_refused",
            "Connections to a gRPC port (client or peer) closed at once because --max-connections were open on it",
            m.connections_refused.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Counts one call refused by the roles.
    pub fn permission_denied(&self, operation: &str) {
        self.permission_denied
            .get_or_create(&OperationLabels {
                operation: operation.to_string(),
            })
            .inc();
    }

    /// Counts one reload of the auth file.
    pub fn auth_reload(&self, ok: bool) {
        self.auth_reloads
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "error" }.into(),
            })
            .inc();
    }

    /// Records one served gRPC request.
    pub fn observe_grpc(&self, method: &str, started: Instant, code: tonic::Code) {
        self.grpc_seconds
            .get_or_create(&GrpcLabels {
                method: method.to_string(),
                code: format!("{code:?}"),
            })
            .observe(started.elapsed().as_secs_f64());
    }
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
