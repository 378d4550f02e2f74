//! The gRPC surface: request validation, the record and cluster services, and
//! the one mapping from internal errors to gRPC status codes.
//!
//! Flow of a mutation: validate the request (limits, key rules) → stamp the
//! leader's clock into a `state::Command` → `raft::Node::propose` → the outcome
//! of `state::Table::apply` comes back → `MutationResponse` or a status.
//! Reads pass `raft::Node::read_barrier` (ReadIndex, lease, or a staleness
//! check) and then read the local table directly.
//!
//! A node that is not the leader answers a mutation (and a LINEARIZABLE or
//! LEASE read) with `UNAVAILABLE` and the leader's address in the
//! `x-inflight-leader` metadata key, so clients can follow it.

mod budget;
mod cluster;
mod errors;
mod forward;
mod grpc_metrics;
mod records;
mod response;
mod session;
mod validate;
mod watch;

pub use cluster::{node_status, ClusterService};
pub use errors::ApiError;
pub use forward::FORWARD_TIMEOUT;
pub use grpc_metrics::GrpcMetricsLayer;
pub use records::{InFlightService, Retention};
pub use validate::{
    Limits, BATCH_VALUE_FACTOR, MAX_BATCH_OPS, MAX_KEY_BYTES, MAX_REQUEST_ID_BYTES, MAX_SCAN_LIMIT,
};
pub use watch::WatchStream;

use crate::pb;
use crate::state::{Record, RecordState};

/// Converts a stored record to its wire form.
pub fn record_to_pb(key: String, r: Record) -> pb::Record {
    pb::Record {
        key,
        value: r.value,
        version: r.version,
        create_revision: r.create_revision,
        mod_revision: r.mod_revision,
        state: match r.state {
            RecordState::Live => pb::RecordState::Live,
            RecordState::Completed => pb::RecordState::Completed,
            RecordState::Expired => pb::RecordState::Expired,
        } as i32,
        created_at_ms: r.created_at_ms,
        updated_at_ms: r.updated_at_ms,
        expires_at_ms: r.expires_at_ms,
        value_omitted: false,
    }
}

#[cfg(test)]
mod decode_proptests;
