//! `raft::Error`: what can go wrong on the way through consensus, in our own
//! terms. openraft's error types are mapped here and go no further; the API
//! maps these to gRPC statuses in `crate::api::errors`.

use openraft::errors::{
    ChangeMembershipError, ClientWriteError, ForwardToLeader, LinearizableReadError, RaftError,
};

use super::{NodeId, TypeConfig};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// This node does not lead; the leader, if known, can serve the call.
    #[error("not the leader{}", leader_hint(.leader))]
    NotLeader { leader: Option<(NodeId, String)> },
    /// The leader changed while a proposal was in flight: it may or may not
    /// have been committed. A retry with the same request id is safe.
    #[error(
        "outcome unknown: the leader changed while the write was in flight; it may or may not have been \
         applied{}",
        leader_hint(.leader)
    )]
    OutcomeUnknown { leader: Option<(NodeId, String)> },
    /// No quorum, a lagging or recovering node, a membership change still in
    /// progress: a retry (here or elsewhere) may succeed.
    #[error("{0}")]
    Unavailable(String),
    /// A membership change that the current configuration does not allow.
    #[error("membership change refused: {0}")]
    Refused(String),
    /// The Raft core has stopped (shutdown, or a fatal storage error).
    #[error("raft node stopped: {0}")]
    Stopped(String),
    /// A broken promise inside this node (a bug), never a client's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

/// "; the leader is node 2 at 127.0.0.1:7002", or that none is known.
pub fn leader_hint(leader: &Option<(NodeId, String)>) -> String {
    match leader {
        Some((id, addr)) => format!("; the leader is node {id} at {addr}"),
        None => "; no leader is known yet (election in progress?)".into(),
    }
}

fn leader_of(f: &ForwardToLeader<TypeConfig>) -> Option<(NodeId, String)> {
    match (&f.leader_id, &f.leader_node) {
        (Some(id), Some(node)) => Some((*id, super::MemberAddr::stored(&node.addr).client)),
        _ => None,
    }
}

impl From<RaftError<TypeConfig, ClientWriteError<TypeConfig>>> for Error {
    fn from(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> Self {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Error::NotLeader {
                leader: leader_of(&f),
            },
            RaftError::APIError(ClientWriteError::LogEntryDiscarded(f)) => Error::OutcomeUnknown {
                leader: leader_of(&f),
            },
            // Another change is still being committed: retryable, not a refusal.
            RaftError::APIError(ClientWriteError::ChangeMembershipError(
                c @ ChangeMembershipError::InProgress(_),
            )) => Error::Unavailable(format!("membership change must wait: {c}")),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
                Error::Refused(c.to_string())
            }
            RaftError::APIError(other) => Error::Refused(other.to_string()),
            RaftError::Fatal(f) => Error::Stopped(f.to_string()),
        }
    }
}

impl From<RaftError<TypeConfig, LinearizableReadError<TypeConfig>>> for Error {
    fn from(e: RaftError<TypeConfig, LinearizableReadError<TypeConfig>>) -> Self {
        match e {
            RaftError::APIError(LinearizableReadError::ForwardToLeader(f)) => Error::NotLeader {
                leader: leader_of(&f),
            },
            RaftError::APIError(LinearizableReadError::QuorumNotEnough(q)) => {
                Error::Unavailable(format!("cannot confirm leadership with a quorum: {q}"))
            }
            RaftError::Fatal(f) => Error::Stopped(f.to_string()),
        }
    }
}
