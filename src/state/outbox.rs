//! The outbox: COMPLETED and EXPIRED records waiting for hand-off, and the
//! dead letters: those the sink refused for good.
//!
//! It is not a second copy of the records: it is an index over the table,
//! ordered by the revision at which each record stopped being LIVE (its
//! completion revision). Because that order is replicated state, every node
//! holds the same outbox, and a new leader's hand-off worker starts exactly
//! where the old one stopped: at the front of the same queue.
//!
//! A record the sink refuses permanently (PostgreSQL rejects its document, a
//! webhook answers 400/413/422) would block the front of the queue forever.
//! The worker isolates it and proposes `DeadLetter`: the record stays in the
//! table (readable, counted in memory) but moves out of the queue into the
//! dead-letter index with the sink's error, so the records behind it flow
//! again. Only an operator takes it out: `handoff retry` puts it back in the
//! queue, `handoff drop` removes it without hand-off. Both are replicated
//! commands, so every node agrees on what waits and what failed.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Identifies one completed record for its whole post-flight life:
/// `key@completion_revision`. A key can be reused after eviction, but never
/// with the same completion revision, so sinks can deduplicate on it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HandoffId {
    pub key: String,
    pub revision: u64,
}

impl std::fmt::Display for HandoffId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.key, self.revision)
    }
}

/// A record the sink refused for good, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub id: HandoffId,
    /// The sink's answer for this record alone.
    pub error: String,
    /// The log index of the `DeadLetter` entry that set it aside (a `retry`
    /// that fails again gives a higher one).
    pub revision: u64,
    /// The leader's time of that entry (ms since the Unix epoch).
    pub at_ms: u64,
}

/// Why a dead letter was set aside, as held in the index.
#[derive(Clone, Debug)]
struct Refused {
    /// The record's footprint (as in the queue).
    bytes: usize,
    error: String,
    revision: u64,
    at_ms: u64,
}

#[derive(Default)]
pub(crate) struct Outbox {
    /// (completion revision, key) → the record's footprint in bytes.
    entries: BTreeMap<(u64, Arc<str>), usize>,
    bytes: usize,
    /// Records set aside after a permanent refusal, same order.
    dead: BTreeMap<(u64, Arc<str>), Refused>,
    /// The dead letters' record footprints.
    dead_bytes: usize,
    /// The errors kept with them (replicated state too, so counted).
    error_bytes: usize,
}

/// What one dead letter's error costs besides the record: the string and
/// its slot in the index.
fn error_cost(error: &str) -> usize {
    error.len() + std::mem::size_of::<Refused>()
}

impl Outbox {
    pub fn insert(&mut self, revision: u64, key: Arc<str>, bytes: usize) {
        if let Some(old) = self.entries.insert((revision, key), bytes) {
            self.bytes -= old;
        }
        self.bytes += bytes;
    }

    /// Forgets the entry, waiting or dead-lettered.
    pub fn remove(&mut self, revision: u64, key: Arc<str>) {
        let slot = (revision, key);
        if let Some(b) = self.entries.remove(&slot) {
            self.bytes -= b;
        }
        if let Some(r) = self.dead.remove(&slot) {
            self.dead_bytes -= r.bytes;
            self.error_bytes -= error_cost(&r.error);
        }
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
        self.dead.clear();
        self.dead_bytes = 0;
        self.error_bytes = 0;
    }

    /// Records waiting for hand-off (dead letters excluded).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn dead_len(&self) -> usize {
        self.dead.len()
    }

    /// The dead letters' records and errors.
    pub fn dead_bytes(&self) -> usize {
        self.dead_bytes + self.error_bytes
    }

    /// What the dead letters hold beyond their records' footprints: the
    /// errors (memory the records' byte count does not include).
    pub fn dead_error_bytes(&self) -> usize {
        self.error_bytes
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

    /// Moves a waiting entry to the dead letters (or, for one already there,
    /// records the new refusal). False if the entry is neither.
    pub fn set_aside(&mut self, revision: u64, key: Arc<str>, error: &str, at: (u64, u64)) -> bool {
        let slot = (revision, key);
        let bytes = match (self.entries.remove(&slot), self.dead.remove(&slot)) {
            (Some(b), _) => {
                self.bytes -= b;
                b
            }
            (None, Some(r)) => {
                self.dead_bytes -= r.bytes;
                self.error_bytes -= error_cost(&r.error);
                r.bytes
            }
            (None, None) => return false,
        };
        self.dead_bytes += bytes;
        self.error_bytes += error_cost(error);
        self.dead.insert(
            slot,
            Refused {
                bytes,
                error: error.to_string(),
                revision: at.0,
                at_ms: at.1,
            },
        );
        true
    }

    /// Puts a dead letter back in the queue, at its place (its completion
    /// revision). False if it is not a dead letter.
    pub fn requeue(&mut self, revision: u64, key: Arc<str>) -> bool {
        let slot = (revision, key);
        let Some(r) = self.dead.remove(&slot) else {
            return false;
        };
        self.dead_bytes -= r.bytes;
        self.error_bytes -= error_cost(&r.error);
        self.bytes += r.bytes;
        self.entries.insert(slot, r.bytes);
        true
    }

    pub fn is_dead(&self, revision: u64, key: &Arc<str>) -> bool {
        self.dead.contains_key(&(revision, key.clone()))
    }

    pub fn dead_letter(&self, revision: u64, key: &Arc<str>) -> Option<DeadLetter> {
        let r = self.dead.get(&(revision, key.clone()))?;
        Some(DeadLetter {
            id: HandoffId {
                key: key.to_string(),
                revision,
            },
            error: r.error.clone(),
            revision: r.revision,
            at_ms: r.at_ms,
        })
    }

    /// Every dead letter's id, oldest completion first.
    pub fn dead_ids(&self) -> Vec<(u64, Arc<str>)> {
        self.dead.keys().cloned().collect()
    }

    /// Dead letters after `after` (exclusive), oldest completion first, at most `limit`.
    pub fn dead_letters(&self, after: Option<&HandoffId>, limit: usize) -> Vec<DeadLetter> {
        let start = match after {
            Some(id) => std::ops::Bound::Excluded((id.revision, Arc::from(id.key.as_str()))),
            None => std::ops::Bound::Unbounded,
        };
        self.dead
            .range((start, std::ops::Bound::Unbounded))
            .take(limit)
            .map(|((rev, key), r)| DeadLetter {
                id: HandoffId {
                    key: key.to_string(),
                    revision: *rev,
                },
                error: r.error.clone(),
                revision: r.revision,
                at_ms: r.at_ms,
            })
            .collect()
    }
}
