//! Every error a client can see, and the single place they become gRPC statuses.

use openraft::errors::{ClientWriteError, ForwardToLeader, LinearizableReadError, RaftError};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::raft::TypeConfig;
use crate::state::{Failure, Rejection};

/// Metadata key carrying the leader's address on `UNAVAILABLE` answers.
pub const LEADER_ADDR_KEY: &str = "x-inflight-leader";
/// Metadata key carrying the leader's node id alongside its address.
pub const LEADER_ID_KEY: &str = "x-inflight-leader-id";
/// Metadata key carrying the index of the op that failed a batch.
pub const FAILED_OP_KEY: &str = "x-inflight-failed-op";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed; the message names the field and the limit.
    #[error("{0}")]
    InvalidArgument(String),
    /// The state machine refused the command (deterministic on every replica).
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// One op of a batch was refused, so none was applied.
    #[error("ops[{index}]: {rejection}")]
    BatchRejected { index: usize, rejection: Rejection },
    /// This node cannot serve the request; the leader (if known) can.
    #[error("not the leader{}", leader_hint(.leader))]
    NotLeader { leader: Option<(u64, String)> },
    /// The proposal may or may not have been committed (leader changed under it).
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// No quorum, node stopping, or a similar condition that a retry may fix.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// A quota is used up (the memory budget); the message says which and why.
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    NotFound(String),
    #[error("internal error: {0}")]
    Internal(String),
}

fn leader_hint(leader: &Option<(u64, String)>) -> String {
    match leader {
        Some((id, addr)) => format!("; the leader is node {id} at {addr}"),
        None => "; no leader is known yet (election in progress?)".into(),
    }
}

impl ApiError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        ApiError::InvalidArgument(msg.into())
    }

    /// The error for a failed command; batches name the failing op.
    pub fn from_failure(f: Failure, batch: bool) -> Self {
        // A reused request id is about the whole request, not one of its ops.
        let whole = matches!(f.rejection, Rejection::RequestIdReused { .. });
        if batch && !whole {
            ApiError::BatchRejected {
                index: f.index,
                rejection: f.rejection,
            }
        } else {
            ApiError::Rejected(f.rejection)
        }
    }

    fn forward(f: &ForwardToLeader<TypeConfig>) -> Self {
        ApiError::NotLeader {
            leader: match (&f.leader_id, &f.leader_node) {
                (Some(id), Some(node)) => Some((*id, node.addr.clone())),
                _ => None,
            },
        }
    }
}

impl From<RaftError<TypeConfig, ClientWriteError<TypeConfig>>> for ApiError {
    fn from(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> Self {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ApiError::forward(&f),
            RaftError::APIError(ClientWriteError::LogEntryDiscarded(f)) => ApiError::OutcomeUnknown(format!(
                "the leader changed while the write was in flight; it may or may not have been applied{}",
                leader_hint(&match (&f.leader_id, &f.leader_node) {
                    (Some(id), Some(n)) => Some((*id, n.addr.clone())),
                    _ => None,
                })
            )),
            // Another change is still being committed: retryable, not a refusal.
            RaftError::APIError(ClientWriteError::ChangeMembershipError(
                c @ openraft::errors::ChangeMembershipError::InProgress(_),
            )) => ApiError::Unavailable(format!("membership change must wait: {c}")),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
                ApiError::FailedPrecondition(format!("membership change refused: {c}"))
            }
            RaftError::APIError(other) => ApiError::FailedPrecondition(other.to_string()),
            RaftError::Fatal(f) => ApiError::Unavailable(format!("raft node stopped: {f}")),
        }
    }
}

impl From<RaftError<TypeConfig, LinearizableReadError<TypeConfig>>> for ApiError {
    fn from(e: RaftError<TypeConfig, LinearizableReadError<TypeConfig>>) -> Self {
        match e {
            RaftError::APIError(LinearizableReadError::ForwardToLeader(f)) => ApiError::forward(&f),
            RaftError::APIError(LinearizableReadError::QuorumNotEnough(q)) => {
                ApiError::Unavailable(format!("cannot confirm leadership with a quorum: {q}"))
            }
            RaftError::Fatal(f) => ApiError::Unavailable(format!("raft node stopped: {f}")),
        }
    }
}

fn rejection_status(r: &Rejection, msg: String) -> Status {
    match r {
        Rejection::NotFound { .. } => Status::not_found(msg),
        Rejection::AlreadyExists { .. } => Status::already_exists(msg),
        Rejection::VersionMismatch { .. } | Rejection::NotLive { .. } => {
            Status::failed_precondition(msg)
        }
        Rejection::RequestIdReused { .. } => Status::invalid_argument(msg),
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let msg = e.to_string();
        match e {
            ApiError::InvalidArgument(_) => Status::invalid_argument(msg),
            ApiError::Rejected(r) => rejection_status(&r, msg),
            ApiError::BatchRejected { index, rejection } => {
                let mut s = rejection_status(&rejection, msg);
                if let Ok(v) = MetadataValue::try_from(index.to_string().as_str()) {
                    s.metadata_mut().insert(FAILED_OP_KEY, v);
                }
                s
            }
            ApiError::NotLeader { leader } => {
                let mut s = Status::new(Code::Unavailable, msg);
                if let Some((id, addr)) = leader {
                    if let Ok(v) = MetadataValue::try_from(addr.as_str()) {
                        s.metadata_mut().insert(LEADER_ADDR_KEY, v);
                    }
                    if let Ok(v) = MetadataValue::try_from(id.to_string().as_str()) {
                        s.metadata_mut().insert(LEADER_ID_KEY, v);
                    }
                }
                s
            }
            ApiError::OutcomeUnknown(_) => Status::unknown(msg),
            ApiError::Unavailable(_) => Status::unavailable(msg),
            ApiError::FailedPrecondition(_) => Status::failed_precondition(msg),
            ApiError::ResourceExhausted(_) => Status::resource_exhausted(msg),

            ApiError::NotFound(_) => Status::not_found(msg),
            ApiError::Internal(_) => Status::internal(msg),
        }
    }
}
