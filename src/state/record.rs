//! A record: the live state of one operation (a call, a message).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Where a record is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordState {
    /// The operation is running; the record can be updated.
    Live,
    /// The operation finished; the record is immutable and waits for hand-off.
    Completed,
    /// The record's deadline passed while it was LIVE; immutable, waits for hand-off.
    Expired,
}

impl RecordState {
    pub fn as_str(&self) -> &'static str {
        match self {
            RecordState::Live => "LIVE",
            RecordState::Completed => "COMPLETED",
            RecordState::Expired => "EXPIRED",
        }
    }
}

/// One record. The key is held by the table, not repeated here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub value: Bytes,
    /// 1 on insert, +1 on every change.
    pub version: u64,
    /// Log index of the insert.
    pub create_revision: u64,
    /// Log index of the last change.
    pub mod_revision: u64,
    /// Leader timestamps (ms since the Unix epoch) of the insert and the last change.
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// Deadline (leader clock, ms since the Unix epoch) after which a LIVE
    /// record is expired by the leader.
    pub expires_at_ms: Option<u64>,
    pub state: RecordState,
}

impl Record {
    /// Approximate heap bytes this record and its key hold, for memory accounting.
    pub fn footprint(&self, key: &str) -> usize {
        key.len() + self.value.len() + std::mem::size_of::<Record>()
    }

    /// The deadline the TTL index tracks: only LIVE records expire.
    pub fn live_deadline(&self) -> Option<u64> {
        match self.state {
            RecordState::Live => self.expires_at_ms,
            _ => None,
        }
    }
}
