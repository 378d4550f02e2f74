//! Recent request ids and the outcome each produced (idempotent retries).
//!
//! Replicated: every replica records and forgets ids at the same log
//! positions (retention bounds come in the command), and the table is part of
//! snapshots, so a retry reaching a new leader is recognised there too.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::command::Outcome;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    pub id: String,
    pub fingerprint: u64,
    pub at_ms: u64,
    pub outcome: Outcome,
}

#[derive(Default)]
pub struct RequestTable {
    by_id: HashMap<String, Remembered>,
    /// Ids in the order they were recorded (timestamps never decrease along the log).
    order: VecDeque<(u64, String)>,
}

impl RequestTable {
    pub fn get(&self, id: &str) -> Option<&Remembered> {
        self.by_id.get(id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Forgets ids older than `window_ms` before `now_ms`, and the oldest ones
    /// beyond `max` (keeping room for one more).
    pub fn evict(&mut self, now_ms: u64, window_ms: u64, max: u32) {
        let cutoff = now_ms.saturating_sub(window_ms);
        while let Some((at, _)) = self.order.front() {
            if *at >= cutoff && self.order.len() < max.max(1) as usize {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.by_id.remove(&id);
            }
        }
    }

    pub fn remember(&mut self, r: Remembered) {
        self.order.push_back((r.at_ms, r.id.clone()));
        self.by_id.insert(r.id.clone(), r);
    }

    /// Everything, oldest first: snapshot content.
    pub fn export(&self) -> Vec<Remembered> {
        self.order
            .iter()
            .filter_map(|(_, id)| self.by_id.get(id).cloned())
            .collect()
    }

    pub fn restore(&mut self, entries: Vec<Remembered>) {
        self.by_id.clear();
        self.order.clear();
        for r in entries {
            self.remember(r);
        }
    }
}
