//! The record model one key follows (DESIGN.md, "Data model"), as a
//! nondeterministic state machine: a COMPLETED record may be handed off and
//! evicted at any moment, so after a Complete the key may also be absent.

use crate::history::{Call, Outcome, Refusal};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum State {
    Absent,
    Live {
        value: String,
        version: u64,
    },
    /// COMPLETED: immutable, waiting for hand-off (and may vanish any time).
    Done {
        value: String,
        version: u64,
    },
}

/// Every state `call` can lead to from `state` if it returned `outcome`
/// (empty: the outcome is impossible from `state`). `Outcome::Unknown` allows
/// both "took effect" and "did not".
pub fn step(state: &State, call: &Call, outcome: &Outcome) -> Vec<State> {
    let mut next = Vec::new();
    // Eviction may happen before this operation.
    let mut starts = vec![state.clone()];
    if matches!(state, State::Done { .. }) {
        starts.push(State::Absent);
    }
    for s in starts {
        let (effect, result) = apply(&s, call);
        match outcome {
            Outcome::Unknown => {
                push(&mut next, s.clone());
                push(&mut next, effect);
            }
            o if *o == result => push(&mut next, effect),
            _ => {}
        }
    }
    next
}

fn push(v: &mut Vec<State>, s: State) {
    if !v.contains(&s) {
        v.push(s);
    }
}

/// The deterministic effect of `call` on `s`, and what the client sees.
fn apply(s: &State, call: &Call) -> (State, Outcome) {
    let refused = |r| (s.clone(), Outcome::Refused { refusal: r });
    let (value, version, live) = match s {
        State::Absent => {
            return match call {
                Call::Insert { value } => (
                    State::Live {
                        value: value.clone(),
                        version: 1,
                    },
                    Outcome::Written { version: 1 },
                ),
                _ => refused(Refusal::NotFound),
            }
        }
        State::Live { value, version } => (value, *version, true),
        State::Done { value, version } => (value, *version, false),
    };
    let if_version = match call {
        Call::Insert { .. } => return refused(Refusal::AlreadyExists),
        Call::Get { .. } => {
            return (
                s.clone(),
                Outcome::Read {
                    value: value.clone(),
                    version,
                    completed: !live,
                },
            )
        }
        Call::Update { if_version, .. } | Call::Delete { if_version } => *if_version,
        Call::Complete { .. } => None,
    };
    if if_version.is_some_and(|v| v != version) {
        return refused(Refusal::VersionMismatch);
    }
    if !live {
        return refused(Refusal::NotLive);
    }
    match call {
        Call::Update { value: new, .. } => (
            State::Live {
                value: new.clone(),
                version: version + 1,
            },
            Outcome::Written {
                version: version + 1,
            },
        ),
        Call::Delete { .. } => (State::Absent, Outcome::Written { version }),
        Call::Complete { value: new } => (
            State::Done {
                value: new.clone().unwrap_or_else(|| value.clone()),
                version: version + 1,
            },
            Outcome::Written {
                version: version + 1,
            },
        ),
        Call::Insert { .. } | Call::Get { .. } => unreachable!("returned above"),
    }
}
