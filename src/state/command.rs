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
    #[serde(with = "tag_wire")]
    pub request: Option<RequestTag>,
    pub action: Action,
}

/// Identity of a client request, and how the cluster keeps ids.
///
/// The retention bounds travel with every tagged command (set by the
/// proposing leader) so that every replica forgets ids, and refuses new ones
/// when the table is full, at exactly the same point in the log; a per-node
/// setting could make replicas disagree on whether a retry is a duplicate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestTag {
    pub id: String,
    /// Hash of the request body (the encoded action), so that a reused id
    /// with a different body is told apart from a retry.
    pub fingerprint: u64,
    /// Ids older than this are forgotten.
    pub window_ms: u64,
    /// Ids younger than this are never forgotten: a new tagged request that
    /// would need one of them to go is refused instead. At least the longest
    /// retry the client library makes.
    pub min_window_ms: u64,
    /// The table of ids holds at most this many bytes (see `requests::cost`).
    pub max_bytes: u64,
    /// Set only on tags decoded from log entries written before byte bounds
    /// existed: such an entry is replayed under the rule it was first applied
    /// with (keep at most this many ids, forget the oldest, never refuse), so
    /// that a node replaying it reaches the state an older node reached, and
    /// it is encoded back in its old form when replicated.
    pub legacy_max_ids: Option<u32>,
}

/// The encoding of `Command::request`.
///
/// bincode writes `Option<T>` as a 0 or 1 byte and then `T`, and an enum as
/// its variant index (0, 1, 2 take one byte each) and then the variant. So
/// `None` and `V1` read exactly the bytes that `Option<RequestTagV1>` wrote
/// before byte bounds existed, and log entries written then still decode;
/// only new entries use `V2`.
mod tag_wire {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::RequestTag;

    #[derive(Serialize, Deserialize)]
    struct RequestTagV1 {
        id: String,
        fingerprint: u64,
        window_ms: u64,
        max_ids: u32,
    }

    #[derive(Serialize, Deserialize)]
    struct RequestTagV2 {
        id: String,
        fingerprint: u64,
        window_ms: u64,
        min_window_ms: u64,
        max_bytes: u64,
    }

    #[derive(Serialize, Deserialize)]
    enum Wire {
        None,
        V1(RequestTagV1),
        V2(RequestTagV2),
    }

    pub fn serialize<S: Serializer>(tag: &Option<RequestTag>, s: S) -> Result<S::Ok, S::Error> {
        match tag {
            None => Wire::None,
            Some(t) => match t.legacy_max_ids {
                Some(max_ids) => Wire::V1(RequestTagV1 {
                    id: t.id.clone(),
                    fingerprint: t.fingerprint,
                    window_ms: t.window_ms,
                    max_ids,
                }),
                None => Wire::V2(RequestTagV2 {
                    id: t.id.clone(),
                    fingerprint: t.fingerprint,
                    window_ms: t.window_ms,
                    min_window_ms: t.min_window_ms,
                    max_bytes: t.max_bytes,
                }),
            },
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RequestTag>, D::Error> {
        Ok(match Wire::deserialize(d)? {
            Wire::None => None,
            // Replayed under the old count rule (see `legacy_max_ids`): no
            // byte bound and no guaranteed minimum.
            Wire::V1(t) => Some(RequestTag {
                id: t.id,
                fingerprint: t.fingerprint,
                window_ms: t.window_ms,
                min_window_ms: 0,
                max_bytes: u64::MAX,
                legacy_max_ids: Some(t.max_ids),
            }),
            Wire::V2(t) => Some(RequestTag {
                id: t.id,
                fingerprint: t.fingerprint,
                window_ms: t.window_ms,
                min_window_ms: t.min_window_ms,
                max_bytes: t.max_bytes,
                legacy_max_ids: None,
            }),
        })
    }
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
    /// Proposed by the hand-off worker for records the sink refused for good
    /// (each alone, with the sink's error): they leave the hand-off queue
    /// for the dead letters, so the records behind them are delivered. Only a
    /// record still waiting (or already set aside) with exactly this
    /// completion revision is touched.
    DeadLetter { refused: Vec<(HandoffId, String)> },
    /// An operator's `handoff retry`: dead letters go back into the queue at
    /// their place. `None` means every dead letter.
    Requeue { ids: Option<Vec<HandoffId>> },
    /// An operator's `handoff drop`: dead letters are removed from memory
    /// without ever reaching the sink. Only dead letters are touched.
    Discard { ids: Vec<HandoffId> },
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

    /// Approximate heap bytes this command holds (keys, values, ids and the
    /// slots holding them), for memory accounting of log entries.
    pub fn heap_bytes(&self) -> usize {
        let tag = self.request.as_ref().map_or(0, |t| t.id.len());
        let action: usize = match &self.action {
            Action::Ops(ops) => ops
                .iter()
                .map(|op| {
                    let value = match op {
                        Op::Insert { value, .. } | Op::Update { value, .. } => value.len(),
                        Op::Complete { value, .. } => value.as_ref().map_or(0, Bytes::len),
                        Op::Delete { .. } => 0,
                    };
                    std::mem::size_of::<Op>() + op.key().len() + value
                })
                .sum(),
            Action::Expire { keys, .. } => keys
                .iter()
                .map(|k| std::mem::size_of::<String>() + k.len())
                .sum(),
            Action::Evict { ids }
            | Action::Discard { ids }
            | Action::Requeue { ids: Some(ids) } => ids_bytes(ids),
            Action::Requeue { ids: None } => 0,
            Action::DeadLetter { refused } => refused
                .iter()
                .map(|(id, error)| {
                    std::mem::size_of::<(HandoffId, String)>() + id.key.len() + error.len()
                })
                .sum(),
        };
        tag + action
    }
}

fn ids_bytes(ids: &[HandoffId]) -> usize {
    ids.iter()
        .map(|id| std::mem::size_of::<HandoffId>() + id.key.len())
        .sum()
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.action {
            Action::Ops(ops) if ops.len() == 1 => write!(f, "{}({})", ops[0].name(), ops[0].key()),
            Action::Ops(ops) => write!(f, "batch({} ops)", ops.len()),
            Action::Expire { keys, .. } => write!(f, "expire({} keys)", keys.len()),
            Action::Evict { ids } => write!(f, "evict({} records)", ids.len()),
            Action::DeadLetter { refused } => write!(f, "dead-letter({} records)", refused.len()),
            Action::Requeue { ids: None } => write!(f, "requeue(all)"),
            Action::Requeue { ids: Some(ids) } => write!(f, "requeue({} records)", ids.len()),
            Action::Discard { ids } => write!(f, "discard({} records)", ids.len()),
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
    /// Remembering one more request id would take the id table past its byte
    /// bound, and every id it holds is still inside the guaranteed window:
    /// forgetting one could let a retry apply twice, so the new request is
    /// refused instead (nothing applied, the id not remembered).
    #[error(
        "request_id: the cluster cannot remember another request id: {held_bytes} of \
         {max_bytes} bytes (--request-id-max-bytes) are held by ids younger than the \
         guaranteed {min_window_ms} ms (--request-id-min-window); retry later, or raise \
         --request-id-max-bytes"
    )]
    RequestIdsExhausted {
        held_bytes: u64,
        max_bytes: u64,
        min_window_ms: u64,
    },
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
