//! inflight: a Raft-replicated, in-memory store for the live state of
//! operations that are still running.
//!
//! Data flows one way through the modules (an arrow means "calls into"):
//!
//! ```text
//!   cli ──► client ─ ─ ─(gRPC: pb, wire)─ ─ ─►  api ──────┐
//!    │                                           │        │
//!    └──► node (wires a server process)          ▼        ▼
//!          │                         duties ──► raft ──► state
//!          ├─► http ──► api (status)    │                   ▲
//!          │                            └──► handoff ───────┘
//!          └─► shutdown (owns every task)     (sinks, documents)
//! ```
//!
//! - [`state`]: the deterministic state machine (`Table`, commands, apply).
//! - [`raft`]: consensus; [`raft::Node`] is the one way in (`propose`,
//!   `read_barrier`, `is_leader`, `status`), openraft stays inside.
//! - [`auth`]: who may read, write, watch which keys and administer the
//!   cluster (roles from `--auth-file`, identities from client certificates).
//! - [`api`]: the gRPC services (unary calls and the batching session),
//!   request validation, the one error → status mapping.
//! - [`duties`]: what a node does besides answering: expiry and hand-off (on
//!   the leader), compaction (everywhere); the other proposers beside `api`.
//! - [`handoff`]: the sinks, the post-flight document, hand-off stats.
//! - [`client`]: the Rust client library (frames, leader discovery,
//!   retries); it shares only [`pb`] and [`wire`] with the server.
//! - [`cli`]: the `inflight` command line.
//! - [`node`]: one server process; [`shutdown`]: its tasks and their order of
//!   stopping; [`http`]: the operator port.
//! - [`codec`]: the single place bytes are encoded and decoded.
//! - [`connections`]: how many connections a listener serves at once.
//! - [`metrics`]: the Prometheus registry (`/metrics`).
//! - [`tls`]: TLS on the client, peer and HTTP ports (rustls), reloaded on SIGHUP.
//! - [`memory`]: what a node holds, part by part, as the memory budget counts it.

#[cfg(test)]
mod alloc_probe;
pub mod api;
pub mod auth;
pub mod cli;
pub mod client;
pub mod codec;
pub mod connections;
pub mod duties;
pub mod handoff;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod node;
pub mod raft;
pub mod resp;
pub mod shutdown;
pub mod state;
pub mod tls;
pub mod wire;

/// Generated protobuf and gRPC types (`proto/inflight.proto`).
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("inflight.v1");
}
