//! Per-key linearizability checking, in the style of Porcupine (Wing & Gong's
//! search with Lowe's memoization).
//!
//! Operations on different keys never constrain each other (P-compositionality),
//! so each key's history is checked on its own. The search walks the history in
//! time order and tries to linearize each pending call; an operation's return
//! is a point by which it must have been linearized, so reaching a return
//! forces backtracking. Visited configurations (which operations are
//! linearized, and the set of model states they can leave) are remembered,
//! which makes the search practical on histories of thousands of operations.
//!
//! The model is nondeterministic (an unknown outcome may or may not have taken
//! effect; a COMPLETED record may be evicted at any time), so the search carries
//! the *set* of states the model may be in, not one state.
//!
//! Unknown outcomes never return: they may be linearized at any point after
//! their call, or not take effect at all.
//!
//! A configuration's set of linearized operations is remembered by a 128-bit
//! Zobrist hash (the XOR of a random word per operation), not by a bitset:
//! a bitset per remembered configuration costs n/8 bytes, and a long soak
//! has hundreds of thousands of operations per key, so remembering one
//! configuration per operation took tens of gigabytes. A hash collision can
//! only make the search skip a configuration it has not seen, that is report
//! a violation that is not there (at odds of about m²/2¹²⁸ for m remembered
//! configurations); it can never let a violation pass, because a
//! `Linearizable` verdict is a complete order the model has stepped through.
//!
//! The search is bounded in time and in the memory of its remembered
//! configurations; running out of either gives `Unknown`, which fails a run
//! like a violation (but does not count as catching a planted bug).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::history::{Operation, Outcome};
use crate::model::{step, State};

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Linearizable,
    /// No order explains the outcomes.
    Violation,
    /// The search ran out of time or of memory (`MAX_REMEMBERED_BYTES`): counts
    /// as a failure, never as a pass.
    Unknown,
}

#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    /// The other event of the same operation.
    partner: usize,
    prev: usize,
    next: usize,
}

const HEAD: usize = usize::MAX;

/// Bytes of remembered configurations before the search gives up, as
/// estimated by `remembered_bytes`.
pub const MAX_REMEMBERED_BYTES: usize = 4 << 30;

/// The memory one remembered configuration holds, roughly: the table slot
/// with its hash and vector, and each state with its value.
fn remembered_bytes(states: &[State]) -> usize {
    let value = |s: &State| match s {
        State::Absent => 0,
        State::Live { value, .. } | State::Done { value, .. } => value.capacity(),
    };
    64 + states
        .iter()
        .map(|s| std::mem::size_of::<State>() + value(s))
        .sum::<usize>()
}

/// A random 128-bit word per operation, the same for every run (splitmix64).
fn zobrist(n: usize) -> Vec<u128> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    (0..n)
        .map(|_| (u128::from(next()) << 64) | u128::from(next()))
        .collect()
}

/// Checks one key's operations within `budget`.
pub fn check_key(ops: &[Operation], budget: Duration) -> Verdict {
    // A read whose answer never came changed nothing and observed nothing:
    // leaving it out is exact, and keeps it from multiplying the search.
    let ops: Vec<Operation> = ops
        .iter()
        .filter(|o| !(o.call.is_read() && o.outcome == Outcome::Unknown))
        .cloned()
        .collect();
    let ops = &ops[..];
    if ops.is_empty() {
        return Verdict::Linearizable;
    }
    // Events in time order; at equal times calls come first (the more
    // permissive reading: the operations overlap).
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        order.push((op.called_at, true, i));
        order.push((op.returned_at.unwrap_or(u64::MAX), false, i));
    }
    order.sort_by_key(|(t, is_call, i)| (*t, !*is_call, *i));
    let mut events: Vec<Event> = order
        .iter()
        .map(|&(_, is_call, op)| Event {
            op,
            is_call,
            partner: 0,
            prev: HEAD,
            next: HEAD,
        })
        .collect();
    let mut position = vec![[0usize; 2]; ops.len()];
    for (e, ev) in events.iter().enumerate() {
        position[ev.op][usize::from(!ev.is_call)] = e;
    }
    let n = events.len();
    for e in 0..n {
        let [call, ret] = position[events[e].op];
        events[e].partner = if events[e].is_call { ret } else { call };
        events[e].prev = if e == 0 { HEAD } else { e - 1 };
        events[e].next = if e + 1 == n { HEAD } else { e + 1 };
    }
    let mut head = 0usize;

    let word = zobrist(ops.len());
    // The hash of the set of linearized operations.
    let mut linearized: u128 = 0;
    let mut states: Vec<State> = vec![State::Absent];
    let mut seen: HashSet<(u128, Vec<State>)> = HashSet::new();
    let mut remembered = 0usize;
    // (call event lifted, states before it)
    let mut stack: Vec<(usize, Vec<State>)> = Vec::new();
    let started = Instant::now();
    let mut steps: u64 = 0;
    let mut entry = head;

    // Unlinks an operation's two events; returns the new head.
    fn lift(events: &mut [Event], head: &mut usize, e: usize) {
        for x in [e, events[e].partner] {
            let (p, nx) = (events[x].prev, events[x].next);
            if p == HEAD {
                *head = nx;
            } else {
                events[p].next = nx;
            }
            if nx != HEAD {
                events[nx].prev = p;
            }
        }
    }
    // Relinks them, in reverse order of `lift`.
    fn unlift(events: &mut [Event], head: &mut usize, e: usize) {
        for x in [events[e].partner, e] {
            let (p, nx) = (events[x].prev, events[x].next);
            if p == HEAD {
                *head = x;
            } else {
                events[p].next = x;
            }
            if nx != HEAD {
                events[nx].prev = x;
            }
        }
    }

    while head != HEAD {
        steps += 1;
        if steps.is_multiple_of(4096)
            && (started.elapsed() > budget || remembered > MAX_REMEMBERED_BYTES)
        {
            return Verdict::Unknown;
        }
        if entry != HEAD && events[entry].is_call {
            let op = &ops[events[entry].op];
            let mut next: Vec<State> = Vec::new();
            for s in &states {
                for t in step(s, &op.call, &op.outcome) {
                    if !next.contains(&t) {
                        next.push(t);
                    }
                }
            }
            let marked = linearized ^ word[events[entry].op];
            next.sort();
            if !next.is_empty() && seen.insert((marked, next.clone())) {
                remembered += remembered_bytes(&next);
                stack.push((entry, std::mem::replace(&mut states, next)));
                linearized = marked;
                lift(&mut events, &mut head, entry);
                entry = head;
            } else {
                entry = events[entry].next;
            }
        } else {
            // A return whose call is not linearized yet: undo the last choice.
            let Some((call, before)) = stack.pop() else {
                return Verdict::Violation;
            };
            states = before;
            linearized ^= word[events[call].op];
            unlift(&mut events, &mut head, call);
            entry = events[call].next;
        }
    }
    Verdict::Linearizable
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Call, Outcome, Refusal};

    fn op(client: u32, call: Call, outcome: Outcome, at: u64, until: Option<u64>) -> Operation {
        Operation {
            client,
            key: "k".into(),
            call,
            outcome,
            called_at: at,
            returned_at: until,
        }
    }
    fn insert(v: &str) -> Call {
        Call::Insert { value: v.into() }
    }
    fn update(v: &str) -> Call {
        Call::Update {
            value: v.into(),
            if_version: None,
        }
    }
    fn written(version: u64) -> Outcome {
        Outcome::Written { version }
    }
    fn read(v: &str, version: u64) -> Outcome {
        Outcome::Read {
            value: v.into(),
            version,
            completed: false,
        }
    }
    const T: Duration = Duration::from_secs(5);

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            op(1, insert("a"), written(1), 0, Some(10)),
            op(1, update("b"), written(2), 20, Some(30)),
            op(2, Call::GET, read("b", 2), 40, Some(50)),
        ];
        assert_eq!(check_key(&h, T), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_a_violation() {
        let h = vec![
            op(1, insert("a"), written(1), 0, Some(10)),
            op(1, update("b"), written(2), 20, Some(30)),
            // Called after the update returned, yet sees the old value.
            op(2, Call::GET, read("a", 1), 40, Some(50)),
        ];
        assert_eq!(check_key(&h, T), Verdict::Violation);
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_see_either_value() {
        for seen in [read("a", 1), read("b", 2)] {
            let h = vec![
                op(1, insert("a"), written(1), 0, Some(10)),
                op(1, update("b"), written(2), 20, Some(60)),
                op(2, Call::GET, seen, 30, Some(40)),
            ];
            assert_eq!(check_key(&h, T), Verdict::Linearizable);
        }
    }

    #[test]
    fn reads_must_not_go_back_in_time() {
        // Two reads during a long update: new then old is impossible.
        let h = vec![
            op(1, insert("a"), written(1), 0, Some(10)),
            op(1, update("b"), written(2), 20, Some(100)),
            op(2, Call::GET, read("b", 2), 30, Some(40)),
            op(2, Call::GET, read("a", 1), 50, Some(60)),
        ];
        assert_eq!(check_key(&h, T), Verdict::Violation);
    }

    #[test]
    fn an_unknown_write_may_take_effect_late_or_never() {
        let took_effect = vec![
            op(1, insert("a"), written(1), 0, Some(10)),
            op(1, update("b"), Outcome::Unknown, 20, None),
            op(2, Call::GET, read("a", 1), 30, Some(40)),
            op(2, Call::GET, read("b", 2), 500, Some(510)),
        ];
        assert_eq!(check_key(&took_effect, T), Verdict::Linearizable);
        let never = vec![
            op(1, insert("a"), written(1), 0, Some(10)),
            op(1, update("b"), Outcome::Unknown, 20, None),
            op(2, Call::GET, read("a", 1), 500, Some(510)),
        ];
        assert_eq!(check_key(&never, T), Verdict::Linearizable);
    }

    #[test]
    fn a_write_applied_twice_shows_as_a_violation() {
        // One update, but the version moved by two: e.g. a retry applied again.
        let h = vec![
            op(1, insert("a"), written(1), 0, Some(10)),
            op(1, update("b"), written(2), 20, Some(30)),
            op(2, Call::GET, read("b", 3), 40, Some(50)),
        ];
        assert_eq!(check_key(&h, T), Verdict::Violation);
    }

    #[test]
    fn lost_acknowledged_insert_is_a_violation() {
        let h = vec![
            op(1, insert("a"), written(1), 0, Some(10)),
            op(
                2,
                Call::GET,
                Outcome::Refused {
                    refusal: Refusal::NotFound,
                },
                20,
                Some(30),
            ),
        ];
        assert_eq!(check_key(&h, T), Verdict::Violation);
    }

    #[test]
    fn a_completed_record_may_be_evicted_at_any_time() {
        let h = vec![
            op(1, insert("a"), written(1), 0, Some(10)),
            op(
                1,
                Call::Complete {
                    value: Some("z".into()),
                },
                written(2),
                20,
                Some(30),
            ),
            op(
                2,
                Call::GET,
                Outcome::Read {
                    value: "z".into(),
                    version: 2,
                    completed: true,
                },
                40,
                Some(50),
            ),
            op(
                2,
                Call::GET,
                Outcome::Refused {
                    refusal: Refusal::NotFound,
                },
                60,
                Some(70),
            ),
            // After eviction the key can start again.
            op(1, insert("c"), written(1), 80, Some(90)),
        ];
        assert_eq!(check_key(&h, T), Verdict::Linearizable);
        // But an update of a completed record never succeeds.
        let bad = vec![
            op(1, insert("a"), written(1), 0, Some(10)),
            op(1, Call::Complete { value: None }, written(2), 20, Some(30)),
            op(2, update("x"), written(3), 40, Some(50)),
        ];
        assert_eq!(check_key(&bad, T), Verdict::Violation);
    }

    #[test]
    fn reads_without_an_answer_are_ignored() {
        let mut h = vec![op(1, insert("a"), written(1), 0, Some(10))];
        for i in 0..5_000 {
            h.push(op(2, Call::GET, Outcome::Unknown, 20 + i, None));
        }
        h.push(op(1, update("b"), written(2), 20, Some(30)));
        h.push(op(3, Call::GET, read("a", 1), 40, Some(50)));
        assert_eq!(check_key(&h, T), Verdict::Violation);
        h.pop();
        h.push(op(3, Call::GET, read("b", 2), 40, Some(50)));
        assert_eq!(check_key(&h, T), Verdict::Linearizable);
    }

    /// A soak-sized history of one key: a writer's updates, each with a
    /// read overlapping it and one after it, and every 500th update
    /// unanswered (it may apply late or never). `stale_at_end` adds a read
    /// of an overwritten value after everything returned.
    fn soak(updates: u64, stale_at_end: bool) -> Vec<Operation> {
        let mut h = vec![op(0, insert("v0"), written(1), 0, Some(5))];
        let mut version = 1;
        let mut t = 10;
        for i in 1..=updates {
            let v = format!("v{i}");
            if i % 500 == 0 {
                h.push(op(1, update(&v), Outcome::Unknown, t, None));
                // Settle it: a read that sees it applied.
                version += 1;
                h.push(op(2, Call::GET, read(&v, version), t + 20, Some(t + 25)));
            } else {
                version += 1;
                h.push(op(1, update(&v), written(version), t, Some(t + 10)));
                h.push(op(2, Call::GET, read(&v, version), t + 5, Some(t + 15)));
            }
            t += 30;
        }
        if stale_at_end {
            h.push(op(3, Call::GET, read("v1", 2), t, Some(t + 5)));
        }
        h
    }

    #[test]
    fn a_soak_sized_history_is_checked_in_bounded_memory() {
        // 300,001 operations on one key: a bitset per remembered
        // configuration would need 300,001 × 37.5 KB, 11 GB.
        assert_eq!(
            check_key(&soak(100_000, false), Duration::from_secs(120)),
            Verdict::Linearizable
        );
        assert_eq!(
            check_key(&soak(100_000, true), Duration::from_secs(120)),
            Verdict::Violation
        );
    }

    #[test]
    fn many_concurrent_unknowns_finish_within_the_budget() {
        let mut h = vec![op(0, insert("v0"), written(1), 0, Some(5))];
        for c in 1..=12u32 {
            h.push(op(c, update(&format!("v{c}")), Outcome::Unknown, 10, None));
        }
        h.push(op(99, Call::GET, read("v7", 2), 20, Some(30)));
        assert_eq!(check_key(&h, T), Verdict::Linearizable);
    }
}
