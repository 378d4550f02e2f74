//! Operations as clients recorded them.

use serde::{Deserialize, Serialize};

/// What a client asked for, on one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Call {
    Insert {
        value: String,
    },
    Update {
        value: String,
        if_version: Option<u64>,
    },
    /// A read, at one of the two levels checked for linearizability.
    Get {
        #[serde(default)]
        level: ReadLevel,
    },
    Delete {
        if_version: Option<u64>,
    },
    Complete {
        value: Option<String>,
    },
}

impl Call {
    /// A LINEARIZABLE get.
    pub const GET: Call = Call::Get {
        level: ReadLevel::Linearizable,
    };

    pub fn is_read(&self) -> bool {
        matches!(self, Call::Get { .. })
    }
}

/// The read levels whose answers must be linearizable (STALE reads are
/// checked for their own promises, in `staleness`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadLevel {
    #[default]
    Linearizable,
    /// The leader's lease (no quorum round while it holds).
    Lease,
}

/// Why a mutation or read was refused, as far as the model cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    NotFound,
    AlreadyExists,
    VersionMismatch,
    /// The record is COMPLETED (or EXPIRED) and immutable.
    NotLive,
}

/// What the client learned.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// A mutation took effect; `version` is the record's version after it.
    Written { version: u64 },
    /// A read found the record.
    Read {
        value: String,
        version: u64,
        completed: bool,
    },
    /// Definitely not applied, for this reason.
    Refused { refusal: Refusal },
    /// Timed out or the connection broke: it may or may not have taken effect.
    Unknown,
}

/// One operation in a history. Times are in any monotonic unit (ns).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub client: u32,
    pub key: String,
    pub call: Call,
    pub outcome: Outcome,
    pub called_at: u64,
    /// `None` when the outcome is unknown: it may take effect any time after the call.
    pub returned_at: Option<u64>,
}
