//! inflight: a Raft-replicated, in-memory store for the live state of
//! operations that are still running.
//!
//! Data flows one way through the modules:
//!
//! ```text
//! client / cli ──► api ──► raft ──► state
//!                   ▲
//!                 http (reads status)
//! ```
//!
//! - [`api`]: the gRPC services, request validation, error → status mapping.
//! - [`raft`]: openraft glue: log storage, peer network, snapshots, bootstrap.
//! - [`state`]: the deterministic state machine (records, apply).
//! - [`client`]: the Rust client library (leader discovery, retries).
//! - [`cli`]: the `inflight` command line.
//! - [`node`]: one server process: wires the above together.
//! - [`codec`]: the single place bytes are encoded and decoded.
//! - [`metrics`]: the Prometheus registry (`/metrics`).

pub mod api;
pub mod cli;
pub mod client;
pub mod codec;
pub mod duties;
pub mod handoff;
pub mod http;
pub mod metrics;
pub mod node;
pub mod raft;
pub mod shutdown;
pub mod state;
pub mod wire;

/// Generated protobuf and gRPC types (`proto/inflight.proto`).
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("inflight.v1");
}
