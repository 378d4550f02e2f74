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
}

impl RecordState {
    pub fn as_str(&self) -> &'static str {
        match self {
            RecordState::Live => "LIVE",
            RecordState::Completed => "COMPLETED",
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
    pub state: RecordState,
}

impl Record {
    /// Approximate heap bytes this record and its key hold, for memory accounting.
    pub fn footprint(&self, key: &str) -> usize {
        key.len() + self.value.len() + std::mem::size_of::<Record>()
    }
}
