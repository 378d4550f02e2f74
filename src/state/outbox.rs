//! The outbox: COMPLETED and EXPIRED records waiting for hand-off.
//!
//! It is not a second copy of the records: it is an index over the table,
//! ordered by the revision at which each record stopped being LIVE (its
//! completion revision). Because that order is replicated state, every node
//! holds the same outbox, and a new leader's hand-off worker starts exactly
//! where the old one stopped: at the front of the same queue.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Identifies one completed record for its whole post-flight life:
/// `key@completion_revision`. A key can be reused after eviction, but never
/// with the same completion revision, so sinks can deduplicate on it.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct HandoffId {
    pub key: String,
    pub revision: u64,
}

impl std::fmt::Display for HandoffId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.key, self.revision)
    }
}

#[derive(Default)]
pub(crate) struct Outbox {
    /// (completion revision, key) → the record's footprint in bytes.
    entries: BTreeMap<(u64, Arc<str>), usize>,
    bytes: usize,
}

impl Outbox {
    pub fn insert(&mut self, revision: u64, key: Arc<str>, bytes: usize) {
        if let Some(old) = self.entries.insert((revision, key), bytes) {
            self.bytes -= old;
        }
        self.bytes += bytes;
    }

    pub fn remove(&mut self, revision: u64, key: Arc<str>) {
        if let Some(b) = self.entries.remove(&(revision, key)) {
            self.bytes -= b;
        }
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn first(&self) -> Option<(u64, Arc<str>)> {
        self.entries.keys().next().cloned()
    }

    /// The oldest entries, at most `limit` and no more once their footprints
    /// reach `max_bytes` (but always at least one).
    pub fn front(&self, limit: usize, max_bytes: usize) -> Vec<(u64, Arc<str>)> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for ((rev, key), b) in &self.entries {
            if out.len() == limit || (bytes >= max_bytes && !out.is_empty()) {
                break;
            }
            bytes += b;
            out.push((*rev, key.clone()));
        }
        out
    }
}
