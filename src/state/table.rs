//! The record table, its indexes, and the apply function.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};

use super::command::{
    Action, Applied, Command, ExpiredMode, Failure, Op, Outcome, Rejection, RequestTag, TtlChange,
};
use super::events::{Event, EventKind, EventLog};
use super::outbox::{DeadLetter, HandoffId, Outbox};
use super::record::{Record, RecordState};
use super::requests::{self, Receipt, Remembered, RequestTable, Seen};
use super::snapshot::{SnapshotBody, SNAPSHOT_FORMAT};

/// The replicated table. Readers (RPC threads) and the one apply task share it.
#[derive(Default)]
pub struct Table {
    records: DashMap<Arc<str>, Record>,
    /// Keys in order, for `scan`. Shares the key allocation with `records`.
    order: RwLock<BTreeSet<Arc<str>>>,
    /// LIVE records with a deadline, by deadline: O(log n) per change, and the
    /// leader finds due records without scanning the table.
    deadlines: Mutex<BTreeSet<(u64, Arc<str>)>>,
    requests: Mutex<RequestTable>,
    events: EventLog,
    /// The log index of the last applied entry: the cluster revision as this node sees it.
    revision: AtomicU64,
    /// The latest leader stamp (`at_ms`) applied: a new leader's clock starts
    /// no earlier.
    last_stamp_ms: AtomicU64,
    /// Approximate bytes held by records (keys, values, metadata).
    bytes: AtomicUsize,
    /// Odd while `restore` replaces the table; bumped before and after, so a
    /// reader can tell that its read overlapped a restore (seqlock style).
    restores: AtomicU64,
    /// COMPLETED and EXPIRED records by completion revision: the hand-off
    /// backlog, oldest first.
    outbox: Mutex<Outbox>,
}

/// One page of a scan.
#[derive(Debug)]
pub struct ScanPage {
    pub records: Vec<(String, Record)>,
    pub more: bool,
}

impl Table {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn events(&self) -> &EventLog {
        &self.events
    }

    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    /// Records that the entry at `revision` was applied without touching records
    /// (a blank or membership entry).
    pub fn advance_revision(&self, revision: u64) {
        self.revision.store(revision, Ordering::Release);
    }

    /// The latest `at_ms` of an applied command (or, after a restore, of a
    /// record's last change); 0 if none.
    pub fn last_stamp_ms(&self) -> u64 {
        self.last_stamp_ms.load(Ordering::Acquire)
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Bytes held by records (keys, values, metadata), and by the errors
    /// kept with dead letters.
    pub fn memory_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed) + self.outbox.lock().dead_error_bytes()
    }

    /// COMPLETED and EXPIRED records waiting for hand-off: the outbox depth.
    pub fn outbox_depth(&self) -> usize {
        self.outbox.lock().len()
    }

    /// Bytes held by records waiting for hand-off (part of `memory_bytes`).
    pub fn outbox_bytes(&self) -> usize {
        self.outbox.lock().bytes()
    }

    /// When the oldest record waiting for hand-off stopped being LIVE (leader
    /// clock, ms since the Unix epoch).
    pub fn outbox_oldest_since_ms(&self) -> Option<u64> {
        let (_, key) = self.outbox.lock().first()?;
        self.records.get(key.as_ref()).map(|r| r.updated_at_ms)
    }

    /// The front of the outbox, in completion order: at most `limit` records,
    /// and no more once their footprints reach `max_bytes` (at least one).
    pub fn outbox_front(&self, limit: usize, max_bytes: usize) -> Vec<(HandoffId, Record)> {
        let front = self.outbox.lock().front(limit, max_bytes);
        front
            .into_iter()
            .filter_map(|(revision, key)| {
                let rec = self.records.get(key.as_ref())?;
                (rec.mod_revision == revision && rec.state != RecordState::Live).then(|| {
                    let id = HandoffId {
                        key: key.to_string(),
                        revision,
                    };
                    (id, rec.value().clone())
                })
            })
            .collect()
    }

    /// The restore generation: odd while a restore is under way. A read that
    /// sees the same even value before and after did not overlap a restore.
    pub fn restore_generation(&self) -> u64 {
        self.restores.load(Ordering::Acquire)
    }

    pub fn remembered_requests(&self) -> usize {
        self.requests.lock().len()
    }

    /// Whether a request with this id was applied and is still remembered.
    pub fn remembers_request(&self, id: &str) -> bool {
        self.requests.lock().get(id).is_some()
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

    /// Keys of LIVE records whose deadline is at or before `now_ms`, earliest
    /// first, at most `limit`. The leader proposes `Expire` for these.
    pub fn due(&self, now_ms: u64, limit: usize) -> Vec<String> {
        self.deadlines
            .lock()
            .iter()
            .take_while(|(d, _)| *d <= now_ms)
            .take(limit)
            .map(|(_, k)| k.to_string())
            .collect()
    }

    /// Applies one committed command at log index `revision`. Deterministic: the outcome
    /// depends only on the table, the remembered request ids and the command.
    pub fn apply(&self, revision: u64, cmd: &Command) -> Outcome {
        let outcome = match &cmd.request {
            None => self.apply_action(revision, cmd),
            Some(tag) => self.apply_tagged(revision, cmd, tag),
        };
        self.last_stamp_ms.fetch_max(cmd.at_ms, Ordering::AcqRel);
        self.advance_revision(revision);
        outcome
    }

    /// A command with a request id: a retry is answered from what was
    /// remembered; a new request is applied only if its id can be remembered
    /// for the guaranteed window.
    ///
    /// The refusal is decided here, at apply, from replicated state and the
    /// bounds in the tag, not by the leader before proposing: a leader's
    /// admission check sees the table as of its last applied entry, not the
    /// entries in flight (nor those a deposed leader left in the log), so it
    /// could not keep the bound without forgetting early; here every replica
    /// refuses the same entries.
    fn apply_tagged(&self, revision: u64, cmd: &Command, tag: &RequestTag) -> Outcome {
        let mut requests = self.requests.lock();
        requests.forget_expired(cmd.at_ms, tag.window_ms.max(tag.min_window_ms));
        if let Some(max_ids) = tag.legacy_max_ids {
            // An entry written before byte bounds: the count rule it was
            // first applied with (keep room for one more, forget the oldest).
            requests.keep_at_most(max_ids.max(1) as usize - 1);
        }
        if let Some(seen) = requests.get(&tag.id) {
            if seen.fingerprint != tag.fingerprint {
                return Err(Failure {
                    op: 0,
                    rejection: Rejection::RequestIdReused { id: tag.id.clone() },
                });
            }
            // A retry: answer from the receipts, change nothing.
            return replay(seen, &cmd.action);
        }
        let ops: &[Op] = match &cmd.action {
            Action::Ops(ops) => ops,
            _ => &[],
        };
        let need = requests::cost_bound(&tag.id, ops);
        if let Err(rejection) =
            requests.make_room(cmd.at_ms, tag.min_window_ms, tag.max_bytes, need)
        {
            return Err(Failure { op: 0, rejection });
        }
        let outcome = self.apply_action(revision, cmd);
        let answer = match &outcome {
            Ok(applied) => Ok(applied
                .iter()
                .map(|a| Receipt {
                    version: a.record.version,
                    mod_revision: a.record.mod_revision,
                    state: a.record.state,
                })
                .collect()),
            Err(f) => Err(f.clone()),
        };
        requests.remember(Remembered {
            id: tag.id.clone(),
            fingerprint: tag.fingerprint,
            at_ms: cmd.at_ms,
            revision,
            answer,
        });
        outcome
    }

    /// Bytes the remembered request ids hold (as the bound counts them).
    pub fn request_id_bytes(&self) -> u64 {
        self.requests.lock().bytes()
    }

    fn apply_action(&self, revision: u64, cmd: &Command) -> Outcome {
        match &cmd.action {
            Action::Ops(ops) => self.apply_ops(revision, cmd.at_ms, ops),
            Action::Expire { keys, mode } => Ok(self.expire(revision, cmd.at_ms, keys, *mode)),
            Action::Evict { ids } => Ok(self.evict(revision, cmd.at_ms, ids)),
            Action::DeadLetter { refused } => Ok(self.set_aside(revision, cmd.at_ms, refused)),
            Action::Requeue { ids } => Ok(self.requeue(revision, ids.as_deref())),
            Action::Discard { ids } => Ok(self.discard(revision, cmd.at_ms, ids)),
        }
    }

    /// The record `id` names, if it is still the one that completed at
    /// `id.revision` (not LIVE, not evicted, not a newer record under the key).
    fn completed(&self, id: &HandoffId) -> Option<(Arc<str>, Record)> {
        let entry = self.records.get(id.key.as_str())?;
        let rec = entry.value();
        (rec.state != RecordState::Live && rec.mod_revision == id.revision)
            .then(|| (entry.key().clone(), rec.clone()))
    }

    /// Sets records the sink refused for good aside as dead letters.
    fn set_aside(
        &self,
        revision: u64,
        at_ms: u64,
        refused: &[(HandoffId, String)],
    ) -> Vec<Applied> {
        let mut applied = Vec::new();
        let mut outbox = self.outbox.lock();
        for (id, error) in refused {
            let Some((key, rec)) = self.completed(id) else {
                continue;
            };
            if outbox.set_aside(id.revision, key, error, (revision, at_ms)) {
                applied.push(Applied {
                    key: id.key.clone(),
                    record: rec,
                    revision,
                });
            }
        }
        applied
    }

    /// Puts dead letters (all of them for `None`) back in the hand-off queue.
    fn requeue(&self, revision: u64, ids: Option<&[HandoffId]>) -> Vec<Applied> {
        let mut outbox = self.outbox.lock();
        let slots: Vec<(u64, Arc<str>)> = match ids {
            None => outbox.dead_ids(),
            Some(ids) => ids
                .iter()
                .map(|id| (id.revision, Arc::from(id.key.as_str())))
                .collect(),
        };
        let mut applied = Vec::new();
        for (rev, key) in slots {
            if !outbox.requeue(rev, key.clone()) {
                continue;
            }
            if let Some(rec) = self.get(&key) {
                applied.push(Applied {
                    key: key.to_string(),
                    record: rec,
                    revision,
                });
            }
        }
        applied
    }

    /// Removes dead letters without hand-off (an operator's decision).
    fn discard(&self, revision: u64, at_ms: u64, ids: &[HandoffId]) -> Vec<Applied> {
        self.remove_finished(revision, at_ms, ids, EventKind::Discarded, |id, key| {
            self.outbox.lock().is_dead(id.revision, key)
        })
    }

    /// Records the sink refused for good (`DeadLetter`), not yet retried or dropped.
    pub fn dead_letter_count(&self) -> usize {
        self.outbox.lock().dead_len()
    }

    /// Bytes held by dead letters (part of `memory_bytes`).
    pub fn dead_letter_bytes(&self) -> usize {
        self.outbox.lock().dead_bytes()
    }

    /// Dead letters after `after` (exclusive), oldest completion first.
    pub fn dead_letters(&self, after: Option<&HandoffId>, limit: usize) -> Vec<DeadLetter> {
        self.outbox.lock().dead_letters(after, limit)
    }

    /// The dead letter held under `key`, if the record there is one.
    pub fn dead_letter(&self, key: &str) -> Option<DeadLetter> {
        let (key, revision) = {
            let entry = self.records.get(key)?;
            (entry.key().clone(), entry.value().mod_revision)
        };
        self.outbox.lock().dead_letter(revision, &key)
    }

    /// Removes records a sink acknowledged. Only a record that still waits
    /// with the given completion revision goes; a stale id changes nothing.
    fn evict(&self, revision: u64, at_ms: u64, ids: &[HandoffId]) -> Vec<Applied> {
        self.remove_finished(revision, at_ms, ids, EventKind::HandedOff, |_, _| true)
    }

    /// Removes the finished records `ids` names (see `completed`) that `may_go`
    /// lets go, each with a `kind` event.
    fn remove_finished(
        &self,
        revision: u64,
        at_ms: u64,
        ids: &[HandoffId],
        kind: EventKind,
        may_go: impl Fn(&HandoffId, &Arc<str>) -> bool,
    ) -> Vec<Applied> {
        let mut applied = Vec::with_capacity(ids.len());
        let mut events = Vec::with_capacity(ids.len());
        for id in ids {
            let Some((key, rec)) = self.completed(id) else {
                continue;
            };
            if !may_go(id, &key) {
                continue;
            }
            self.set_key(&id.key, None);
            events.push(Event {
                kind,
                revision,
                key: id.key.clone(),
                record: rec.clone(),
                at_ms,
                ends_revision: false,
            });
            applied.push(Applied {
                key: id.key.clone(),
                record: rec,
                revision,
            });
        }
        self.events.push(events);
        applied
    }

    /// All ops or none: each is checked against the table as changed by the
    /// ops before it (staged), and the table is touched only if all pass.
    fn apply_ops(&self, revision: u64, at_ms: u64, ops: &[Op]) -> Outcome {
        let mut staged: Vec<(String, Option<Record>)> = Vec::new();
        let mut slot: HashMap<&str, usize> = HashMap::new();
        let mut applied = Vec::with_capacity(ops.len());
        let mut kinds = Vec::with_capacity(ops.len());
        for (i, op) in ops.iter().enumerate() {
            let key = op.key();
            let current = match slot.get(key) {
                Some(&s) => staged[s].1.clone(),
                None => self.get(key),
            };
            let (new, kind, record) = plan(op, current.as_ref(), revision, at_ms)
                .map_err(|rejection| Failure { op: i, rejection })?;
            match slot.get(key) {
                Some(&s) => staged[s].1 = new,
                None => {
                    slot.insert(key, staged.len());
                    staged.push((key.to_string(), new));
                }
            }
            applied.push(Applied {
                key: key.to_string(),
                record,
                revision,
            });
            kinds.push(kind);
        }
        for (key, new) in staged {
            self.set_key(&key, new);
        }
        let events = applied
            .iter()
            .zip(kinds)
            .map(|(a, kind)| Event {
                kind,
                revision,
                key: a.key.clone(),
                record: a.record.clone(),
                at_ms,
                ends_revision: false,
            })
            .collect();
        self.events.push(events);
        Ok(applied)
    }

    /// Expires the given keys that are LIVE with a deadline at or before the
    /// entry's time. Others (refreshed, completed, gone) are skipped.
    fn expire(
        &self,
        revision: u64,
        at_ms: u64,
        keys: &[String],
        mode: ExpiredMode,
    ) -> Vec<Applied> {
        let mut applied = Vec::new();
        let mut events = Vec::new();
        for key in keys {
            let Some(mut rec) = self.get(key) else {
                continue;
            };
            if rec.live_deadline().is_none_or(|d| d > at_ms) {
                continue;
            }
            rec.state = RecordState::Expired;
            rec.version += 1;
            rec.mod_revision = revision;
            rec.updated_at_ms = at_ms;
            let kept = match mode {
                ExpiredMode::Handoff => Some(rec.clone()),
                ExpiredMode::Drop => None,
            };
            self.set_key(key, kept);
            events.push(Event {
                kind: EventKind::Expired,
                revision,
                key: key.clone(),
                record: rec.clone(),
                at_ms,
                ends_revision: false,
            });
            applied.push(Applied {
                key: key.clone(),
                record: rec,
                revision,
            });
        }
        self.events.push(events);
        applied
    }

    /// Sets one key to its new state (`None` removes it) and keeps the indexes and
    /// the byte count in step.
    fn set_key(&self, key: &str, new: Option<Record>) {
        let new_deadline = new.as_ref().and_then(Record::live_deadline);
        let new_bytes = new.as_ref().map(|r| r.footprint(key)).unwrap_or(0);
        let waits = |r: &Option<Record>| {
            r.as_ref()
                .filter(|r| r.state != RecordState::Live)
                .map(|r| (r.mod_revision, r.footprint(key)))
        };
        let new_waits = waits(&new);
        let (key_arc, old) = match new {
            Some(rec) => match self.records.get_mut(key) {
                Some(mut e) => (e.key().clone(), Some(std::mem::replace(e.value_mut(), rec))),
                None => {
                    let k: Arc<str> = Arc::from(key);
                    self.order.write().insert(k.clone());
                    self.records.insert(k.clone(), rec);
                    (k, None)
                }
            },
            None => match self.records.remove(key) {
                Some((k, r)) => {
                    self.order.write().remove(key);
                    (k, Some(r))
                }
                None => return,
            },
        };
        let old_deadline = old.as_ref().and_then(Record::live_deadline);
        if old_deadline != new_deadline {
            let mut d = self.deadlines.lock();
            if let Some(t) = old_deadline {
                d.remove(&(t, key_arc.clone()));
            }
            if let Some(t) = new_deadline {
                d.insert((t, key_arc.clone()));
            }
        }
        let old_waits = waits(&old);
        if old_waits != new_waits {
            let mut outbox = self.outbox.lock();
            if let Some((rev, _)) = old_waits {
                outbox.remove(rev, key_arc.clone());
            }
            if let Some((rev, bytes)) = new_waits {
                outbox.insert(rev, key_arc.clone(), bytes);
            }
        }
        let old_bytes = old.as_ref().map(|r| r.footprint(key)).unwrap_or(0);
        self.bytes.fetch_add(new_bytes, Ordering::Relaxed);
        self.bytes.fetch_sub(old_bytes, Ordering::Relaxed);
    }

    /// The snapshot content. Must be called while no apply is running
    /// (openraft asks for a snapshot builder between applies).
    pub fn export(&self) -> SnapshotBody {
        let order = self.order.read();
        let records = order
            .iter()
            .filter_map(|k| {
                self.records
                    .get(k.as_ref())
                    .map(|r| (k.to_string(), r.value().clone()))
            })
            .collect();
        SnapshotBody {
            format: SNAPSHOT_FORMAT,
            revision: self.revision(),
            records,
            requests: super::snapshot::Requests::View(self.requests.lock().view()),
            dead_letters: self.outbox.lock().dead_letters(None, usize::MAX),
        }
    }

    /// Replaces the whole state with a snapshot's content.
    pub fn restore(&self, body: SnapshotBody, revision: u64) {
        let requests = body.requests.into_vec();
        self.restores.fetch_add(1, Ordering::AcqRel);
        let mut order = self.order.write();
        let mut deadlines = self.deadlines.lock();
        self.records.clear();
        order.clear();
        deadlines.clear();
        let mut bytes = 0;
        let mut outbox = self.outbox.lock();
        outbox.clear();
        let mut newest_stamp = requests.iter().map(|r| r.at_ms).max().unwrap_or(0);
        for (key, record) in body.records {
            newest_stamp = newest_stamp.max(record.updated_at_ms);
            bytes += record.footprint(&key);
            let key: Arc<str> = Arc::from(key);
            order.insert(key.clone());
            if let Some(d) = record.live_deadline() {
                deadlines.insert((d, key.clone()));
            }
            if record.state != RecordState::Live {
                outbox.insert(record.mod_revision, key.clone(), record.footprint(&key));
            }
            self.records.insert(key, record);
        }
        for d in body.dead_letters {
            let key: Arc<str> = Arc::from(d.id.key.as_str());
            outbox.set_aside(d.id.revision, key, &d.error, (d.revision, d.at_ms));
        }
        self.requests.lock().restore(requests);
        self.bytes.store(bytes, Ordering::Relaxed);
        self.last_stamp_ms.fetch_max(newest_stamp, Ordering::AcqRel);
        drop(outbox);

        self.events.reset(revision);
        self.advance_revision(revision);
        self.restores.fetch_add(1, Ordering::AcqRel);
    }
}

/// The answer to a retry of a remembered request: the first attempt's
/// failure, or per op the key (from the retried request, which has the same
/// body) and the remembered version, mod revision and state, at the first
/// attempt's revision. The value and the other record fields are not kept:
/// the value is empty, `create_revision` is 0 (never a real revision, so it
/// marks a replayed answer) and the times are 0.
fn replay(seen: &Seen, action: &Action) -> Outcome {
    let receipts = seen.answer.as_ref().map_err(Clone::clone)?;
    let Action::Ops(ops) = action else {
        return Ok(Vec::new());
    };
    Ok(receipts
        .iter()
        .zip(ops)
        .map(|(r, op)| Applied {
            key: op.key().to_string(),
            record: Record {
                value: Default::default(),
                version: r.version,
                create_revision: 0,
                mod_revision: r.mod_revision,
                created_at_ms: 0,
                updated_at_ms: 0,
                expires_at_ms: None,
                state: r.state,
            },
            revision: seen.revision,
        })
        .collect())
}

/// What `op` does to a key whose current state is `current`: the new state
/// (`None` = removed), the event it makes, and the record to report.
fn plan(
    op: &Op,
    current: Option<&Record>,
    revision: u64,
    at_ms: u64,
) -> Result<(Option<Record>, EventKind, Record), Rejection> {
    let key = op.key();
    if let Op::Insert { value, ttl_ms, .. } = op {
        if let Some(existing) = current {
            return Err(Rejection::AlreadyExists {
                key: key.into(),
                state: existing.state,
                version: existing.version,
            });
        }
        let rec = Record {
            value: value.clone(),
            version: 1,
            create_revision: revision,
            mod_revision: revision,
            created_at_ms: at_ms,
            updated_at_ms: at_ms,
            expires_at_ms: ttl_ms.map(|t| at_ms.saturating_add(t)),
            state: RecordState::Live,
        };
        return Ok((Some(rec.clone()), EventKind::Inserted, rec));
    }
    let Some(cur) = current else {
        return Err(Rejection::NotFound { key: key.into() });
    };
    let if_version = match op {
        Op::Update { if_version, .. }
        | Op::Delete { if_version, .. }
        | Op::Complete { if_version, .. } => *if_version,
        Op::Insert { .. } => None,
    };
    if let Some(expected) = if_version {
        if expected != cur.version {
            return Err(Rejection::VersionMismatch {
                key: key.into(),
                expected,
                actual: cur.version,
            });
        }
    }
    if cur.state != RecordState::Live {
        return Err(Rejection::NotLive {
            key: key.into(),
            state: cur.state,
        });
    }
    let mut rec = cur.clone();
    rec.version += 1;
    rec.mod_revision = revision;
    rec.updated_at_ms = at_ms;
    match op {
        Op::Update { value, ttl, .. } => {
            rec.value = value.clone();
            match ttl {
                TtlChange::Keep => {}
                TtlChange::Set(t) => rec.expires_at_ms = Some(at_ms.saturating_add(*t)),
                TtlChange::Clear => rec.expires_at_ms = None,
            }
            Ok((Some(rec.clone()), EventKind::Updated, rec))
        }
        Op::Complete { value, .. } => {
            if let Some(v) = value {
                rec.value = v.clone();
            }
            rec.state = RecordState::Completed;
            Ok((Some(rec.clone()), EventKind::Completed, rec))
        }
        Op::Delete { .. } => Ok((None, EventKind::Deleted, cur.clone())),
        Op::Insert { .. } => unreachable!("handled above"),
    }
}
