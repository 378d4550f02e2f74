//! Commands carried in Raft log entries, and what applying them produced.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::record::{Record, RecordState};

/// One client mutation as it travels through the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The proposing leader's wall clock (ms since the Unix epoch). Replicas use
    /// this, never their own clock, so apply stays deterministic.
    pub at_ms: u64,
    pub op: Op,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Insert {
        key: String,
        value: Bytes,
    },
    Update {
        key: String,
        value: Bytes,
        if_version: Option<u64>,
    },
    Delete {
        key: String,
        if_version: Option<u64>,
    },
    Complete {
        key: String,
        value: Option<Bytes>,
        if_version: Option<u64>,
    },
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Insert { key, .. }
            | Op::Update { key, .. }
            | Op::Delete { key, .. }
            | Op::Complete { key, .. } => key,
        }
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match &self.op {
            Op::Insert { .. } => "insert",
            Op::Update { .. } => "update",
            Op::Delete { .. } => "delete",
            Op::Complete { .. } => "complete",
        };
        write!(f, "{name}({})", self.op.key())
    }
}

/// A successful change: the record after it (for a delete, as it was removed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub key: String,
    pub record: Record,
    pub revision: u64,
}

/// Why a command changed nothing. Every replica computes the same rejection for
/// the same command, so these are results, not replica failures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("key {key:?} not found")]
    NotFound { key: String },
    #[error("key {key:?} already exists (state {}, version {version})", state.as_str())]
    AlreadyExists {
        key: String,
        state: RecordState,
        version: u64,
    },
    #[error("if_version: expected version {expected} but record {key:?} is at version {actual}")]
    VersionMismatch {
        key: String,
        expected: u64,
        actual: u64,
    },
    #[error("record {key:?} is {} and immutable; it leaves memory once handed off", state.as_str())]
    NotLive { key: String, state: RecordState },
}

/// The response carried back to the proposer through openraft.
pub type Outcome = Result<Applied, Rejection>;
