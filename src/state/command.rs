//! Commands carried in Raft log entries, and what applying them produced.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::outbox::HandoffId;
use super::record::{Record, RecordState};

/// One log entry's worth of client intent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The proposing leader's wall clock (ms since the Unix epoch). Replicas use
    /// this, never their own clock, so apply stays deterministic.
    pub at_ms: u64,
    /// Names the logical request for deduplication of retries.
    pub request: Option<RequestTag>,
    pub action: Action,
}

/// Identity of a client request, and how long the cluster remembers ids.
///
/// The retention bounds travel with every tagged command (set by the
/// proposing leader) so that every replica forgets ids at exactly the same
/// point in the log; a per-node setting could make replicas disagree on
/// whether a retry is a duplicate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestTag {
    pub id: String,
    /// Hash of the request body (the encoded action), so that a reused id
    /// with a different body is told apart from a retry.
    pub fingerprint: u64,
    pub window_ms: u64,
    pub max_ids: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Client mutations, applied atomically: all or none.
    Ops(Vec<Op>),
    /// Proposed by the leader for LIVE records whose deadline passed; `mode`
    /// says whether they are kept EXPIRED for hand-off or removed.
    Expire {
        keys: Vec<String>,
        mode: ExpiredMode,
    },
    /// Proposed by the leader's hand-off worker once a sink acknowledged these
    /// records. Only a record still waiting with exactly this completion
    /// revision is removed; anything else (already evicted, a new record under
    /// the same key) is left alone.
    Evict { ids: Vec<HandoffId> },
}

/// What happens to a LIVE record whose deadline passed.
///
/// Encoded as the `bool` it replaced (`Handoff` = 0 = false, `Drop` = 1 =
/// true), so log entries written before the enum existed decode unchanged;
/// keep the variant order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum ExpiredMode {
    /// Keep it as EXPIRED (immutable) for hand-off to post-flight storage.
    Handoff,
    /// Remove it.
    Drop,
}

/// What a TTL-capable update does to the record's deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TtlChange {
    Keep,
    /// Deadline = command time + this many ms.
    Set(u64),
    Clear,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Insert {
        key: String,
        value: Bytes,
        ttl_ms: Option<u64>,
    },
    Update {
        key: String,
        value: Bytes,
        if_version: Option<u64>,
        ttl: TtlChange,
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

    pub fn name(&self) -> &'static str {
        match self {
            Op::Insert { .. } => "insert",
            Op::Update { .. } => "update",
            Op::Delete { .. } => "delete",
            Op::Complete { .. } => "complete",
        }
    }
}

impl Command {
    /// A single client op.
    pub fn op(at_ms: u64, op: Op) -> Command {
        Command {
            at_ms,
            request: None,
            action: Action::Ops(vec![op]),
        }
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.action {
            Action::Ops(ops) if ops.len() == 1 => write!(f, "{}({})", ops[0].name(), ops[0].key()),
            Action::Ops(ops) => write!(f, "batch({} ops)", ops.len()),
            Action::Expire { keys, .. } => write!(f, "expire({} keys)", keys.len()),
            Action::Evict { ids } => write!(f, "evict({} records)", ids.len()),
        }
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
    #[error("request_id: {id:?} was already used for a different request; use a new id for a new request")]
    RequestIdReused { id: String },
}

/// Which op of a command failed, and why. Nothing of the command was applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The failed op's position in the command's ops (0 for a whole-command
    /// refusal such as a reused request id).
    pub op: usize,
    pub rejection: Rejection,
}

/// The response carried back to the proposer through openraft: one `Applied`
/// per op (or per expired key), or the first failure.
pub type Outcome = Result<Vec<Applied>, Failure>;
