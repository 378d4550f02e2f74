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
    Get,
    Delete {
        if_version: Option<u64>,
    },
    Complete {
        value: Option<String>,
    },
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
