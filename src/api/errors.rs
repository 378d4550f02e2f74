//! Every error a client can see, and the single place they become gRPC statuses.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::raft::{self, leader_hint};
use crate::state::{Failure, Rejection};
use crate::wire::{FAILED_OP_KEY, LEADER_ADDR_KEY, LEADER_ID_KEY};

/// Its serde form crosses the peer port: a leader's answer to a forwarded
/// write (`api::forward`). Add variants at the end only.
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum ApiError {
    /// The request is malformed; the message names the field and the limit.
    #[error("{0}")]
    InvalidArgument(String),
    /// The state machine refused the command (deterministic on every replica).
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// One op of a batch was refused, so none was applied.
    #[error("ops[{op}]: {rejection}")]
    BatchRejected { op: usize, rejection: Rejection },
    /// This node cannot serve the request; the leader (if known) can.
    #[error("not the leader{}", leader_hint(.leader))]
    NotLeader { leader: Option<(u64, String)> },
    /// The proposal may or may not have been committed (leader changed under it).
    #[error("{0}")]
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
    /// The caller's roles do not allow the call (`crate::auth`); in a batch,
    /// `op` is the first op outside the grant.
    #[error("{}{denied}", op.map(|i| format!("ops[{i}]: ")).unwrap_or_default())]
    PermissionDenied {
        op: Option<usize>,
        denied: crate::auth::Denied,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        ApiError::InvalidArgument(msg.into())
    }

    /// The error for a failed command; batches name the failing op.
    pub fn from_failure(f: Failure, batch: bool) -> Self {
        // A reused request id, or a full id table, is about the whole
        // request, not one of its ops.
        let whole = matches!(
            f.rejection,
            Rejection::RequestIdReused { .. } | Rejection::RequestIdsExhausted { .. }
        );
        if batch && !whole {
            ApiError::BatchRejected {
                op: f.op,
                rejection: f.rejection,
            }
        } else {
            ApiError::Rejected(f.rejection)
        }
    }
}

impl From<crate::auth::Denied> for ApiError {
    fn from(denied: crate::auth::Denied) -> Self {
        ApiError::PermissionDenied { op: None, denied }
    }
}

impl From<raft::Error> for ApiError {
    fn from(e: raft::Error) -> Self {
        match e {
            raft::Error::NotLeader { leader } => ApiError::NotLeader { leader },
            e @ raft::Error::OutcomeUnknown { .. } => ApiError::OutcomeUnknown(e.to_string()),
            raft::Error::Unavailable(m) => ApiError::Unavailable(m),
            e @ raft::Error::Stopped(_) => ApiError::Unavailable(e.to_string()),
            e @ raft::Error::Refused(_) => ApiError::FailedPrecondition(e.to_string()),
            raft::Error::Internal(m) => ApiError::Internal(m),
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
        Rejection::RequestIdsExhausted { .. } => Status::resource_exhausted(msg),
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let msg = e.to_string();
        match e {
            ApiError::InvalidArgument(_) => Status::invalid_argument(msg),
            ApiError::Rejected(r) => rejection_status(&r, msg),
            ApiError::BatchRejected { op, rejection } => {
                let mut s = rejection_status(&rejection, msg);
                if let Ok(v) = MetadataValue::try_from(op.to_string().as_str()) {
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
            ApiError::PermissionDenied { op, .. } => {
                let mut s = Status::permission_denied(msg);
                if let Some(op) = op {
                    if let Ok(v) = MetadataValue::try_from(op.to_string().as_str()) {
                        s.metadata_mut().insert(FAILED_OP_KEY, v);
                    }
                }
                s
            }
            ApiError::Internal(_) => Status::internal(msg),
        }
    }
}
