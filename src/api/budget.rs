//! The memory budget: back-pressure before the node runs out of memory.
//!
//! Records live in memory until they are handed off, so a sink that stops
//! acknowledging makes memory grow with every Complete, and updates can grow
//! values. The budget (`--memory-budget`) is compared with everything the
//! node holds, as [`crate::memory::MemoryUse`] counts it: records (live and
//! in the outbox), remembered request ids, the watch window, the Raft log
//! not yet purged, a snapshot being built or installed, and the writes
//! admitted but not yet applied.
//!
//! A write that grows what records hold is admitted only if that growth
//! fits: an Insert (its key, value and metadata), an Update or a Complete
//! whose new value is larger than the record's current one (the difference),
//! and a Batch by the sum over its ops. The growth is reserved at admission
//! ([`crate::memory::Reservation`]) and held until the proposal has been
//! answered or has failed, so writes admitted together cannot overshoot the
//! budget together. A refusal is `RESOURCE_EXHAUSTED`, naming the parts that
//! hold the memory and, when it is the outbox, which sink is behind and why.
//!
//! Writes that do not grow memory always pass: Delete, Complete without a
//! value, and updates that keep or shrink a value, so operations already
//! running can finish and the outbox can drain once the sink is back.
//! Nothing is dropped. A retry of a request that was applied (a remembered
//! `request_id`) passes too: it gets its original answer and changes nothing.
//!
//! The check runs on the node that receives the request, before proposing,
//! against that node's own account (only a leader's proposals commit). The
//! watch window, the log and snapshots are local to each node and bounded by
//! their own shares of the budget (see `crate::memory`), so followers,
//! which apply the same log, hold about as much as the leader.

use std::collections::HashMap;

use super::ApiError;
use crate::handoff::HandoffState;
use crate::memory::{MemoryUse, Reservation, Reservations};
use crate::state::{Op, Record, RecordState, Table};
use crate::wire::human_bytes;

/// Admits `ops` under the budget: `Ok(Some(reservation))` when they grow
/// memory and the growth fits (hold it until the proposal is answered),
/// `Ok(None)` when they do not grow it (or are a retry of an applied
/// request), and `RESOURCE_EXHAUSTED` when the growth does not fit.
pub fn admit(
    table: &Table,
    memory: MemoryUse,
    reservations: &Reservations,
    handoff: &HandoffState,
    ops: &[Op],
    request_id: &str,
) -> Result<Option<Reservation>, ApiError> {
    let need = growth(table, ops);
    if need == 0 {
        return Ok(None);
    }
    if !request_id.is_empty() && table.remembers_request(request_id) {
        return Ok(None);
    }
    let budget = handoff.memory_budget_bytes;
    // What the node holds besides reservations: those are checked, and
    // taken, in one atomic step.
    let used = memory.total().saturating_sub(memory.reserved);
    if let Some(r) = reservations.try_reserve(used, need, budget) {
        return Ok(Some(r));
    }
    crate::metrics::METRICS.inserts_refused_budget.inc();
    let memory = MemoryUse {
        reserved: reservations.bytes(),
        ..memory
    };
    Err(ApiError::ResourceExhausted(refusal(
        table, handoff, &memory, need, budget, ops,
    )))
}

/// Bytes the records would grow by if `ops` applied, from the records as
/// they stand (each op sees the ops before it in the same request); 0 if
/// they would not grow. An op that apply would refuse (an existing key
/// inserted, a missing or finished record changed, a version mismatch)
/// changes nothing here either, so it is answered with its own error.
fn growth(table: &Table, ops: &[Op]) -> u64 {
    let mut records: HashMap<&str, Option<Staged>> = HashMap::new();
    let mut delta: i128 = 0;
    for op in ops {
        let key = op.key();
        let current = *records.entry(key).or_insert_with(|| {
            table.get(key).map(|r| Staged {
                len: r.value.len(),
                version: r.version,
                live: r.state == RecordState::Live,
            })
        });
        let changeable = |if_version: &Option<u64>| {
            current.filter(|c| c.live && if_version.is_none_or(|v| v == c.version))
        };
        let new = match op {
            Op::Insert { value, .. } => match current {
                None => Some(Staged {
                    len: value.len(),
                    version: 1,
                    live: true,
                }),
                Some(_) => current,
            },
            Op::Update {
                value, if_version, ..
            } => match changeable(if_version) {
                Some(c) => Some(Staged {
                    len: value.len(),
                    version: c.version + 1,
                    live: true,
                }),
                None => current,
            },
            Op::Complete {
                value, if_version, ..
            } => match changeable(if_version) {
                Some(c) => Some(Staged {
                    len: value.as_ref().map_or(c.len, |v| v.len()),
                    version: c.version + 1,
                    live: false,
                }),
                None => current,
            },
            Op::Delete { if_version, .. } => match changeable(if_version) {
                Some(_) => None,
                None => current,
            },
        };
        delta += footprint(key, new.map(|n| n.len)) - footprint(key, current.map(|c| c.len));
        records.insert(key, new);
    }
    delta.max(0) as u64
}

/// A record as the ops of one request leave it, as far as growth goes.
#[derive(Clone, Copy)]
struct Staged {
    len: usize,
    version: u64,
    live: bool,
}

/// What a record with a value of `len` bytes under `key` holds, as
/// [`Record::footprint`] counts it (0 for no record).
fn footprint(key: &str, len: Option<usize>) -> i128 {
    len.map_or(0, |n| {
        (key.len() + n + std::mem::size_of::<Record>()) as i128
    })
}

/// How many of the largest parts a refusal names.
const PARTS_NAMED: usize = 3;

fn refusal(
    table: &Table,
    handoff: &HandoffState,
    memory: &MemoryUse,
    need: u64,
    budget: u64,
    ops: &[Op],
) -> String {
    let what = match ops {
        [Op::Insert { .. }] => "an insert",
        [Op::Update { .. }] => "an update growing a value",
        [Op::Complete { .. }] => "a complete growing a value",
        _ => "a batch growing the records",
    };
    let largest: Vec<String> = memory
        .largest()
        .into_iter()
        .filter(|(_, b)| *b > 0)
        .take(PARTS_NAMED)
        .map(|(name, b)| format!("{} {}", name.replace('_', " "), human_bytes(b)))
        .collect();
    let depth = table.outbox_depth();
    let mut msg = format!(
        "memory budget exhausted: this node holds {} of the {} budget (--memory-budget) and {what} \
         needs {} more; the largest parts: {}; ",
        human_bytes(memory.total()),
        human_bytes(budget),
        human_bytes(need),
        largest.join(", ")
    );
    if memory.outbox * 2 >= memory.records {
        msg.push_str(&format!(
            "records hold {}, {} of it is the outbox: {depth} completed or expired records waiting \
             for hand-off to sink {}",
            human_bytes(memory.records),
            human_bytes(memory.outbox),
            handoff.primary.spec
        ));
        let s = handoff.primary.snapshot();
        match (s.failing_for, s.last_error) {
            (Some(d), Some(e)) => msg.push_str(&format!(
                ", which has been failing for {}s: {e}",
                d.as_secs()
            )),
            _ => msg.push_str(", which is behind"),
        }
        msg.push_str(
            ". Growth resumes as the outbox drains; updates, completes and deletes still work \
             unless they grow a value",
        );
    } else if memory.dead_letters * 2 >= memory.records {
        msg.push_str(&format!(
            "records hold {}, {} of it is {} record(s) the sink refused for good (dead \
             letters): see `inflight handoff failed`, then retry or drop them; updates, \
             completes and deletes still work unless they grow a value",
            human_bytes(memory.records),
            human_bytes(memory.dead_letters),
            table.dead_letter_count()
        ));
    } else {
        msg.push_str(&format!(
            "{} live records and {depth} waiting for hand-off. Complete or delete records, \
             or raise --memory-budget; updates, completes and deletes still work unless they \
             grow a value",
            table.len().saturating_sub(depth)
        ));
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handoff::SinkSpec;
    use crate::state::{Command, TtlChange};

    fn insert(key: &str, n: usize) -> Op {
        Op::Insert {
            key: key.into(),
            value: vec![b'x'; n].into(),
            ttl_ms: None,
        }
    }

    fn update(key: &str, n: usize) -> Op {
        Op::Update {
            key: key.into(),
            value: vec![b'y'; n].into(),
            if_version: None,
            ttl: TtlChange::Keep,
        }
    }

    fn complete(key: &str, n: Option<usize>) -> Op {
        Op::Complete {
            key: key.into(),
            value: n.map(|n| vec![b'z'; n].into()),
            if_version: None,
        }
    }

    /// The account of a table alone (no log, window or snapshot).
    fn records_only(t: &Table) -> MemoryUse {
        MemoryUse {
            records: t.memory_bytes() as u64,
            outbox: t.outbox_bytes() as u64,
            ..Default::default()
        }
    }

    fn check(
        t: &Table,
        r: &Reservations,
        h: &HandoffState,
        ops: &[Op],
    ) -> Result<Option<Reservation>, ApiError> {
        admit(t, records_only(t), r, h, ops, "")
    }

    #[test]
    fn inserts_past_the_budget_are_refused_naming_the_outbox_other_ops_pass() {
        let table = Table::new();
        let r = Reservations::default();
        let handoff = HandoffState::new(&SinkSpec::Noop, None, 4_000);
        for (i, k) in ["a", "b", "c"].iter().enumerate() {
            table
                .apply(2 * i as u64 + 1, &Command::op(1, insert(k, 1000)))
                .unwrap();
            table
                .apply(2 * i as u64 + 2, &Command::op(2, complete(k, None)))
                .unwrap();
        }
        assert!(check(&table, &r, &handoff, &[insert("d", 10)])
            .unwrap()
            .is_some());
        let e = check(&table, &r, &handoff, &[insert("d", 1000)]).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ApiError::ResourceExhausted(_)));
        assert!(msg.contains("the outbox: 3 completed"), "{msg}");
        assert!(msg.contains("sink noop"), "{msg}");
        assert!(msg.contains("the largest parts: outbox"), "{msg}");
        let delete = Op::Delete {
            key: "a".into(),
            if_version: None,
        };
        assert!(check(&table, &r, &handoff, &[delete]).unwrap().is_none());
        assert_eq!(r.bytes(), 0, "nothing left reserved");
    }

    #[test]
    fn live_records_over_the_budget_say_so() {
        let table = Table::new();
        let r = Reservations::default();
        let handoff = HandoffState::new(&SinkSpec::Noop, None, 1_000);
        table.apply(1, &Command::op(1, insert("a", 2000))).unwrap();
        let msg = check(&table, &r, &handoff, &[insert("b", 1)])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("1 live records and 0 waiting"), "{msg}");
        assert!(msg.contains("an insert needs"), "{msg}");
        assert_eq!(human_bytes(1536), "1.5KiB");
        assert_eq!(human_bytes(12), "12B");
    }

    #[test]
    fn growing_updates_and_completes_are_refused_shrinking_and_valueless_ones_pass() {
        let table = Table::new();
        let r = Reservations::default();
        table.apply(1, &Command::op(1, insert("a", 100))).unwrap();
        let used = table.memory_bytes() as u64;
        let handoff = HandoffState::new(&SinkSpec::Noop, None, used + 50);
        // Growth within the budget is reserved; past it, refused.
        let held = check(&table, &r, &handoff, &[update("a", 150)]).unwrap();
        assert_eq!(held.as_ref().map(Reservation::bytes), Some(50));
        assert_eq!(r.bytes(), 50);
        let e = check(&table, &r, &handoff, &[update("a", 101)]).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ApiError::ResourceExhausted(_)), "{msg}");
        assert!(msg.contains("an update growing a value needs 1B"), "{msg}");
        assert!(msg.contains("reserved 50B"), "{msg}");
        drop(held);
        assert_eq!(r.bytes(), 0, "the reservation ends with its guard");
        let e = check(&table, &r, &handoff, &[complete("a", Some(151))]).unwrap_err();
        assert!(e.to_string().contains("a complete growing a value"), "{e}");
        // Same size, smaller, no value, delete: always through, nothing reserved.
        for op in [
            update("a", 100),
            update("a", 1),
            complete("a", None),
            complete("a", Some(3)),
        ] {
            assert!(check(&table, &r, &handoff, &[op]).unwrap().is_none());
        }
        // A batch counts the net growth: grow one record, delete another.
        table.apply(2, &Command::op(2, insert("b", 100))).unwrap();
        let handoff = HandoffState::new(&SinkSpec::Noop, None, 1);
        let shifted = [
            update("a", 190),
            Op::Delete {
                key: "b".into(),
                if_version: None,
            },
        ];
        assert!(check(&table, &r, &handoff, &shifted).unwrap().is_none());
        // An insert and a growing update of the same key in one batch.
        let both = [insert("c", 10), update("c", 20)];
        let e = check(&table, &r, &handoff, &both).unwrap_err();
        assert!(e.to_string().contains("a batch growing"), "{e}");
        // Ops apply would refuse grow nothing: they get their own error.
        let stale = Op::Update {
            key: "a".into(),
            value: vec![b'y'; 5_000].into(),
            if_version: Some(99),
            ttl: TtlChange::Keep,
        };
        assert!(check(&table, &r, &handoff, &[stale]).unwrap().is_none());
        assert!(check(&table, &r, &handoff, &[update("missing", 5_000)])
            .unwrap()
            .is_none());
        let finished = [complete("a", None), update("a", 5_000)];
        assert!(check(&table, &r, &handoff, &finished).unwrap().is_none());
        // A remembered request is a retry: it passes.
        table
            .apply(
                3,
                &Command {
                    at_ms: 3,
                    request: Some(crate::state::RequestTag {
                        id: "r1".into(),
                        fingerprint: 1,
                        window_ms: 60_000,
                        min_window_ms: 1_000,
                        max_bytes: 1 << 20,
                        legacy_max_ids: None,
                    }),
                    action: crate::state::Action::Ops(vec![update("a", 100)]),
                },
            )
            .unwrap();
        let retry = admit(
            &table,
            records_only(&table),
            &r,
            &handoff,
            &[update("a", 5_000)],
            "r1",
        );
        assert!(retry.unwrap().is_none());
    }

    #[test]
    fn concurrent_admissions_never_take_more_than_the_budget() {
        let table = Table::new();
        let r = Reservations::default();
        let handoff = HandoffState::new(&SinkSpec::Noop, None, 10_000);
        let one = footprint("k", Some(1_000)) as u64;
        let held: Vec<_> = (0..100)
            .filter_map(|_| check(&table, &r, &handoff, &[insert("k", 1_000)]).ok())
            .collect();
        assert_eq!(held.len() as u64, 10_000 / one);
        assert!(r.bytes() <= 10_000);
        drop(held);
        assert_eq!(r.bytes(), 0);
    }
}
