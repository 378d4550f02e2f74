//! Recent request ids and what each produced (idempotent retries).
//!
//! Replicated: every replica records, forgets and refuses ids at the same log
//! positions (the bounds come in the command, the time is the command's), and
//! the table is part of snapshots, so a retry reaching a new leader is
//! recognised there too.
//!
//! The guarantee: an id is kept for at least `min_window_ms` of leader time
//! after the write it names was applied. The table is bounded in bytes; when
//! one more id would take it past `max_bytes`, ids older than `min_window_ms`
//! go first (oldest first), and if that is not enough the new tagged request
//! is refused (`Rejection::RequestIdsExhausted`) rather than an id forgotten
//! early. Ids older than `window_ms` are forgotten in any case.
//!
//! Compact: an id is kept with the request's fingerprint, the revision and
//! time it was applied at, and per op only the version, mod revision and
//! state it produced (or the failure). A retry is answered from that, not
//! from a copy of the records.
//!
//! Persistent collections (`imbl`): a snapshot takes the table as it is
//! with an O(1) clone (`RequestTable::view`) between two applies, and the
//! ids are copied out as the snapshot is encoded, on another thread. With
//! the standard collections that copy happened between two applies, so every
//! snapshot stopped the node's writes for as long as copying every id
//! remembered over the window took (hundreds of milliseconds at a few
//! hundred thousand ids, in the chaos runs).

use std::sync::Arc;

use imbl::{HashMap, Vector};

use serde::{Deserialize, Serialize};

use super::command::{Failure, Op, Rejection};
use super::record::RecordState;

/// What one op of a remembered request produced: enough to answer a retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub version: u64,
    pub mod_revision: u64,
    pub state: RecordState,
}

/// One remembered request id, as snapshots carry it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    pub id: String,
    pub fingerprint: u64,
    pub at_ms: u64,
    /// The log index the request was applied at.
    pub revision: u64,
    /// One receipt per op, or why nothing was applied.
    pub answer: Result<Vec<Receipt>, Failure>,
}

/// A remembered request, without its id (the map's key).
#[derive(Clone, Debug)]
pub struct Seen {
    pub fingerprint: u64,
    pub at_ms: u64,
    pub revision: u64,
    pub answer: Result<Vec<Receipt>, Failure>,
}

// What an id costs, in bytes. Fixed numbers rather than `size_of`, so that
// replicas built for different targets account the same and refuse at the
// same log position. They approximate a 64-bit build: the map slot and its
// share of spare capacity, the order queue's slot, the shared id allocation
// and its counts, the answer's vector.
const ENTRY_BYTES: u64 = 160;
const RECEIPT_BYTES: u64 = 24;
const FAILURE_BYTES: u64 = 64;

fn rejection_heap(r: &Rejection) -> u64 {
    match r {
        Rejection::NotFound { key }
        | Rejection::AlreadyExists { key, .. }
        | Rejection::VersionMismatch { key, .. }
        | Rejection::NotLive { key, .. } => key.len() as u64,
        Rejection::RequestIdReused { id } => id.len() as u64,
        Rejection::RequestIdsExhausted { .. } => 0,
    }
}

/// Bytes an id with this answer holds in the table.
pub fn cost(id: &str, answer: &Result<Vec<Receipt>, Failure>) -> u64 {
    ENTRY_BYTES
        + id.len() as u64
        + match answer {
            Ok(receipts) => receipts.len() as u64 * RECEIPT_BYTES,
            Err(f) => FAILURE_BYTES + rejection_heap(&f.rejection),
        }
}

/// The most an id for `ops` can cost, whatever applying them produces: room
/// is made before applying, so a request that cannot be remembered is refused
/// before it changes anything.
pub fn cost_bound(id: &str, ops: &[Op]) -> u64 {
    let receipts = ops.len() as u64 * RECEIPT_BYTES;
    let longest_key = ops.iter().map(|op| op.key().len()).max().unwrap_or(0) as u64;
    ENTRY_BYTES + id.len() as u64 + receipts.max(FAILURE_BYTES + longest_key)
}

#[derive(Default)]
pub struct RequestTable {
    by_id: HashMap<Arc<str>, Seen>,
    /// Ids in the order they were recorded, with their time.
    order: Vector<(u64, Arc<str>)>,
    /// Sum of `cost` over the held ids.
    bytes: u64,
}

impl RequestTable {
    pub fn get(&self, id: &str) -> Option<&Seen> {
        self.by_id.get(id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn forget_oldest(&mut self) {
        if let Some((_, id)) = self.order.pop_front() {
            if let Some(seen) = self.by_id.remove(&id) {
                self.bytes -= cost(&id, &seen.answer);
            }
        }
    }

    /// Forgets ids recorded more than `window_ms` before `now_ms`. Stops at
    /// the first younger one: the queue is in log order, and leader clocks
    /// along the log are taken as (roughly) non-decreasing.
    pub fn forget_expired(&mut self, now_ms: u64, window_ms: u64) {
        while let Some((at, _)) = self.order.front() {
            if at.saturating_add(window_ms) >= now_ms {
                break;
            }
            self.forget_oldest();
        }
    }

    /// Forgets the oldest ids until at most `n` are held (the count rule of
    /// request tags written before byte bounds existed).
    pub fn keep_at_most(&mut self, n: usize) {
        while self.order.len() > n {
            self.forget_oldest();
        }
    }

    /// Makes room for an id costing `need` bytes within `max_bytes`,
    /// forgetting only ids at least `min_window_ms` old. If that is not
    /// enough, nothing more is forgotten and the new request is refused.
    pub fn make_room(
        &mut self,
        now_ms: u64,
        min_window_ms: u64,
        max_bytes: u64,
        need: u64,
    ) -> Result<(), Rejection> {
        while self.bytes + need > max_bytes {
            match self.order.front() {
                Some((at, _)) if at.saturating_add(min_window_ms) <= now_ms => self.forget_oldest(),
                _ => {
                    return Err(Rejection::RequestIdsExhausted {
                        held_bytes: self.bytes,
                        max_bytes,
                        min_window_ms,
                    })
                }
            }
        }
        Ok(())
    }

    pub fn remember(&mut self, r: Remembered) {
        let id: Arc<str> = Arc::from(r.id);
        let seen = Seen {
            fingerprint: r.fingerprint,
            at_ms: r.at_ms,
            revision: r.revision,
            answer: r.answer,
        };
        self.bytes += cost(&id, &seen.answer);
        if let Some(old) = self.by_id.insert(id.clone(), seen) {
            // Not reached from apply (a held id is answered, never recorded
            // again); keeps the count right for a snapshot that repeats one.
            self.bytes -= cost(&id, &old.answer);
            self.order.retain(|(_, o)| *o != id);
        }
        self.order.push_back((r.at_ms, id));
    }

    /// The table as it is now, in O(1): later changes do not show in it.
    pub fn view(&self) -> RequestView {
        RequestView {
            by_id: self.by_id.clone(),
            order: self.order.clone(),
        }
    }

    pub fn restore(&mut self, entries: Vec<Remembered>) {
        self.by_id.clear();
        self.order.clear();
        self.bytes = 0;
        for r in entries {
            self.remember(r);
        }
    }
}

/// A frozen copy of a `RequestTable` (see `RequestTable::view`).
#[derive(Clone, Debug)]
pub struct RequestView {
    by_id: HashMap<Arc<str>, Seen>,
    order: Vector<(u64, Arc<str>)>,
}

impl RequestView {
    /// How many ids `iter` yields.
    pub fn len(&self) -> usize {
        self.order
            .iter()
            .filter(|(_, id)| self.by_id.contains_key(id))
            .count()
    }

    /// Every id, oldest first, as a snapshot carries it.
    pub fn iter(&self) -> impl Iterator<Item = Remembered> + '_ {
        self.order.iter().filter_map(|(_, id)| {
            self.by_id.get(id).map(|s| Remembered {
                id: id.to_string(),
                fingerprint: s.fingerprint,
                at_ms: s.at_ms,
                revision: s.revision,
                answer: s.answer.clone(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Requests;

    fn remembered(id: &str, at_ms: u64) -> Remembered {
        Remembered {
            id: id.into(),
            fingerprint: at_ms * 7,
            at_ms,
            revision: at_ms,
            answer: Ok(vec![Receipt {
                version: 1,
                mod_revision: at_ms,
                state: crate::state::RecordState::Live,
            }]),
        }
    }

    #[test]
    fn a_view_keeps_the_table_as_it_was_and_encodes_as_the_list() {
        let mut t = RequestTable::default();
        t.remember(remembered("a", 1));
        t.remember(remembered("b", 2));
        let view = t.view();
        // Changes after the view was taken do not show in it.
        t.remember(remembered("c", 3));
        t.forget_expired(10, 8);
        assert_eq!(t.len(), 2, "a was forgotten, c added");
        let ids: Vec<String> = view.iter().map(|r| r.id).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(view.len(), 2);
        // A snapshot taken through the view has the bytes of one taken as a list.
        let list = vec![remembered("a", 1), remembered("b", 2)];
        assert_eq!(
            crate::codec::encode(&Requests::View(view)).unwrap(),
            crate::codec::encode(&Requests::List(list.clone())).unwrap()
        );
        let decoded: Requests = crate::codec::decode_bounded(
            crate::codec::Bound::Snapshot,
            &crate::codec::encode(&Requests::List(list.clone())).unwrap(),
        )
        .unwrap();
        assert_eq!(decoded.into_vec(), list);
    }
}
