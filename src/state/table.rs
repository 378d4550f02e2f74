//! The record table and the apply function.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::RwLock;

use super::command::{Applied, Command, Op, Outcome, Rejection};
use super::record::{Record, RecordState};

/// The replicated table. Readers (RPC threads) and the one apply task share it.
#[derive(Default)]
pub struct Store {
    records: DashMap<Arc<str>, Record>,
    /// Keys in order, for `scan`. Shares the key allocation with `records`.
    order: RwLock<BTreeSet<Arc<str>>>,
    /// The log index of the last applied entry: the cluster revision as this node sees it.
    revision: AtomicU64,
    /// Approximate bytes held by records (keys, values, metadata).
    bytes: AtomicUsize,
}

/// One page of a scan.
#[derive(Debug)]
pub struct ScanPage {
    pub records: Vec<(String, Record)>,
    pub more: bool,
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    /// Records that the entry at `index` was applied without touching records
    /// (a blank or membership entry).
    pub fn advance_revision(&self, index: u64) {
        self.revision.store(index, Ordering::Release);
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn memory_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn get(&self, key: &str) -> Option<Record> {
        self.records.get(key).map(|r| r.value().clone())
    }

    /// Records whose key starts with `prefix` and sorts after `after` (exclusive),
    /// in key order, at most `limit`, and no more once their values reach
    /// `max_bytes` (but always at least one).
    pub fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> ScanPage {
        let order = self.order.read();
        let start: Bound<&str> = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        let mut records = Vec::with_capacity(limit.min(1024));
        let mut more = false;
        let mut bytes = 0;
        for key in order.range::<str, _>((start, Bound::Unbounded)) {
            if !key.starts_with(prefix) {
                break;
            }
            if records.len() == limit || (bytes >= max_bytes && !records.is_empty()) {
                more = true;
                break;
            }
            if let Some(r) = self.records.get(key.as_ref()) {
                bytes += r.value.len();
                records.push((key.to_string(), r.value().clone()));
            }
        }
        ScanPage { records, more }
    }

    /// Applies one committed command at log `index`. Deterministic: the outcome
    /// depends only on the table and the command.
    pub fn apply(&self, index: u64, cmd: &Command) -> Outcome {
        let outcome = match &cmd.op {
            Op::Insert { key, value } => {
                if let Some(existing) = self.records.get(key.as_str()) {
                    Err(Rejection::AlreadyExists {
                        key: key.clone(),
                        state: existing.state,
                        version: existing.version,
                    })
                } else {
                    let record = Record {
                        value: value.clone(),
                        version: 1,
                        create_revision: index,
                        mod_revision: index,
                        created_at_ms: cmd.at_ms,
                        updated_at_ms: cmd.at_ms,
                        state: RecordState::Live,
                    };
                    let key_arc: Arc<str> = Arc::from(key.as_str());
                    self.bytes
                        .fetch_add(record.footprint(key), Ordering::Relaxed);
                    self.order.write().insert(key_arc.clone());
                    self.records.insert(key_arc, record.clone());
                    Ok(Applied {
                        key: key.clone(),
                        record,
                        revision: index,
                    })
                }
            }
            Op::Update {
                key,
                value,
                if_version,
            } => self.modify(key, *if_version, index, cmd.at_ms, |r| {
                r.value = value.clone();
            }),
            Op::Complete {
                key,
                value,
                if_version,
            } => self.modify(key, *if_version, index, cmd.at_ms, |r| {
                if let Some(v) = value {
                    r.value = v.clone();
                }
                r.state = RecordState::Completed;
            }),
            Op::Delete { key, if_version } => self.delete(key, *if_version, index),
        };
        self.advance_revision(index);
        outcome
    }

    /// Changes a LIVE record in place after checking its guard.
    fn modify(
        &self,
        key: &str,
        if_version: Option<u64>,
        index: u64,
        at_ms: u64,
        change: impl FnOnce(&mut Record),
    ) -> Outcome {
        let Some(mut entry) = self.records.get_mut(key) else {
            return Err(Rejection::NotFound { key: key.into() });
        };
        let record = entry.value_mut();
        check_version(key, record, if_version)?;
        if record.state != RecordState::Live {
            return Err(Rejection::NotLive {
                key: key.into(),
                state: record.state,
            });
        }
        let before = record.footprint(key);
        change(record);
        record.version += 1;
        record.mod_revision = index;
        record.updated_at_ms = at_ms;
        let after = record.footprint(key);
        self.bytes.fetch_add(after, Ordering::Relaxed);
        self.bytes.fetch_sub(before, Ordering::Relaxed);
        Ok(Applied {
            key: key.into(),
            record: record.clone(),
            revision: index,
        })
    }

    fn delete(&self, key: &str, if_version: Option<u64>, index: u64) -> Outcome {
        {
            let Some(existing) = self.records.get(key) else {
                return Err(Rejection::NotFound { key: key.into() });
            };
            check_version(key, existing.value(), if_version)?;
            if existing.state != RecordState::Live {
                return Err(Rejection::NotLive {
                    key: key.into(),
                    state: existing.state,
                });
            }
        }
        let (_, record) = self
            .records
            .remove(key)
            .ok_or_else(|| Rejection::NotFound { key: key.into() })?;
        self.order.write().remove(key);
        self.bytes
            .fetch_sub(record.footprint(key), Ordering::Relaxed);
        Ok(Applied {
            key: key.into(),
            record,
            revision: index,
        })
    }

    /// Every record in key order: the content of a snapshot. Must be called while
    /// no apply is running (openraft asks for a snapshot builder between applies).
    pub fn export(&self) -> Vec<(String, Record)> {
        let order = self.order.read();
        order
            .iter()
            .filter_map(|k| {
                self.records
                    .get(k.as_ref())
                    .map(|r| (k.to_string(), r.value().clone()))
            })
            .collect()
    }

    /// Replaces the whole table with a snapshot's content.
    pub fn restore(&self, records: Vec<(String, Record)>, revision: u64) {
        let mut order = self.order.write();
        self.records.clear();
        order.clear();
        let mut bytes = 0;
        for (key, record) in records {
            bytes += record.footprint(&key);
            let key: Arc<str> = Arc::from(key);
            order.insert(key.clone());
            self.records.insert(key, record);
        }
        self.bytes.store(bytes, Ordering::Relaxed);
        self.advance_revision(revision);
    }
}

fn check_version(key: &str, record: &Record, if_version: Option<u64>) -> Result<(), Rejection> {
    match if_version {
        Some(expected) if expected != record.version => Err(Rejection::VersionMismatch {
            key: key.into(),
            expected,
            actual: record.version,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn cmd(op: Op) -> Command {
        Command { at_ms: 1_000, op }
    }

    fn insert(key: &str, v: &str) -> Command {
        cmd(Op::Insert {
            key: key.into(),
            value: Bytes::from(v.to_string()),
        })
    }

    #[test]
    fn insert_then_update_bumps_version_and_mod_revision() {
        let s = Store::new();
        let a = s.apply(3, &insert("call/1", "ringing")).unwrap();
        assert_eq!(
            (
                a.record.version,
                a.record.create_revision,
                a.record.mod_revision
            ),
            (1, 3, 3)
        );
        let u = s
            .apply(
                5,
                &Command {
                    at_ms: 2_000,
                    op: Op::Update {
                        key: "call/1".into(),
                        value: Bytes::from_static(b"answered"),
                        if_version: Some(1),
                    },
                },
            )
            .unwrap();
        assert_eq!(
            (
                u.record.version,
                u.record.create_revision,
                u.record.mod_revision
            ),
            (2, 3, 5)
        );
        assert_eq!(u.record.updated_at_ms, 2_000);
        assert_eq!(u.record.created_at_ms, 1_000);
        assert_eq!(s.revision(), 5);
    }

    #[test]
    fn insert_of_existing_key_is_rejected_in_any_state() {
        let s = Store::new();
        s.apply(1, &insert("k", "a")).unwrap();
        s.apply(
            2,
            &cmd(Op::Complete {
                key: "k".into(),
                value: None,
                if_version: None,
            }),
        )
        .unwrap();
        let e = s.apply(3, &insert("k", "b")).unwrap_err();
        assert!(matches!(
            e,
            Rejection::AlreadyExists {
                state: RecordState::Completed,
                version: 2,
                ..
            }
        ));
    }

    #[test]
    fn completed_record_is_immutable() {
        let s = Store::new();
        s.apply(1, &insert("k", "a")).unwrap();
        s.apply(
            2,
            &cmd(Op::Complete {
                key: "k".into(),
                value: Some(Bytes::from_static(b"final")),
                if_version: Some(1),
            }),
        )
        .unwrap();
        let up = s.apply(
            3,
            &cmd(Op::Update {
                key: "k".into(),
                value: Bytes::new(),
                if_version: None,
            }),
        );
        assert!(matches!(up, Err(Rejection::NotLive { .. })));
        let del = s.apply(
            4,
            &cmd(Op::Delete {
                key: "k".into(),
                if_version: None,
            }),
        );
        assert!(matches!(del, Err(Rejection::NotLive { .. })));
        assert_eq!(s.get("k").unwrap().value, Bytes::from_static(b"final"));
    }

    #[test]
    fn version_guard_mismatch_changes_nothing() {
        let s = Store::new();
        s.apply(1, &insert("k", "a")).unwrap();
        let e = s.apply(
            2,
            &cmd(Op::Update {
                key: "k".into(),
                value: Bytes::from_static(b"b"),
                if_version: Some(7),
            }),
        );
        assert_eq!(
            e.unwrap_err(),
            Rejection::VersionMismatch {
                key: "k".into(),
                expected: 7,
                actual: 1
            }
        );
        assert_eq!(s.get("k").unwrap().value, Bytes::from_static(b"a"));
        let d = s.apply(
            3,
            &cmd(Op::Delete {
                key: "k".into(),
                if_version: Some(2),
            }),
        );
        assert!(d.is_err());
        assert!(s.get("k").is_some());
    }

    #[test]
    fn scan_pages_in_key_order_within_prefix() {
        let s = Store::new();
        for (i, k) in ["sms/3", "call/2", "call/1", "call/10", "callx"]
            .iter()
            .enumerate()
        {
            s.apply(i as u64 + 1, &insert(k, "v")).unwrap();
        }
        let p = s.scan("call/", None, 2, usize::MAX);
        let keys: Vec<_> = p.records.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["call/1", "call/10"]);
        assert!(p.more);
        let p2 = s.scan("call/", Some("call/10"), 2, usize::MAX);
        let keys: Vec<_> = p2.records.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["call/2"]);
        assert!(!p2.more);
        // A byte budget ends the page early, but never before one record.
        let p3 = s.scan("call/", None, 10, 1);
        assert_eq!(p3.records.len(), 1);
        assert!(p3.more);
    }

    #[test]
    fn export_restore_round_trip_and_memory_accounting() {
        let s = Store::new();
        s.apply(1, &insert("a", "1")).unwrap();
        s.apply(2, &insert("b", "22")).unwrap();
        s.apply(
            3,
            &cmd(Op::Delete {
                key: "a".into(),
                if_version: None,
            }),
        )
        .unwrap();
        let t = Store::new();
        t.restore(s.export(), s.revision());
        assert_eq!(t.export(), s.export());
        assert_eq!(t.memory_bytes(), s.memory_bytes());
        assert_eq!(t.revision(), 3);
    }
}
