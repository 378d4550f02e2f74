//! Determinism, checked on random logs: replicas that apply the same commands
//! reach the same state, and a replica restored from a snapshot part-way
//! through reaches it too. This is the property Raft relies on (apply is a
//! function of the state and the entry), so it is tested over logs no one
//! wrote by hand: inserts, updates, completes and deletes with version guards
//! and TTLs, atomic batches, reused request ids, expiries and evictions.

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::codec;

const KEYS: [&str; 6] = ["call/1", "call/2", "call/3", "sms/1", "sms/2", "sms/3"];

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(&KEYS[..]).prop_map(str::to_string)
}

fn value() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

fn version() -> impl Strategy<Value = Option<u64>> {
    prop::option::of(1u64..4)
}

fn ttl() -> impl Strategy<Value = Option<u64>> {
    prop::option::of(1u64..5_000)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (key(), value(), ttl()).prop_map(|(key, value, ttl_ms)| Op::Insert { key, value, ttl_ms }),
        (
            key(),
            value(),
            version(),
            prop_oneof![
                Just(TtlChange::Keep),
                Just(TtlChange::Clear),
                (1u64..5_000).prop_map(TtlChange::Set)
            ]
        )
            .prop_map(|(key, value, if_version, ttl)| Op::Update {
                key,
                value,
                if_version,
                ttl
            }),
        (key(), version()).prop_map(|(key, if_version)| Op::Delete { key, if_version }),
        (key(), prop::option::of(value()), version()).prop_map(|(key, value, if_version)| {
            Op::Complete {
                key,
                value,
                if_version,
            }
        }),
    ]
}

/// One step of a log: an action, how far the leader's clock moved since the
/// previous entry, and for client ops an optional request id out of a small
/// set (so that retries and reused ids both occur).
fn step() -> impl Strategy<Value = (Action, u64, Option<u8>)> {
    let action = prop_oneof![
        6 => prop::collection::vec(op(), 1..4).prop_map(Action::Ops),
        1 => (
            prop::collection::vec(key(), 1..4),
            prop_oneof![Just(ExpiredMode::Handoff), Just(ExpiredMode::Drop)]
        )
            .prop_map(|(keys, mode)| Action::Expire { keys, mode }),
        // Evict ids name a key and a revision; revisions near the log's length
        // sometimes match a completion, sometimes not.
        1 => prop::collection::vec((key(), 1u64..60), 1..4).prop_map(|ids| Action::Evict {
            ids: ids
                .into_iter()
                .map(|(key, revision)| HandoffId { key, revision })
                .collect()
        }),
    ];
    (action, 0u64..2_000, prop::option::of(0u8..4))
}

/// Builds the log: leader timestamps only move forward; tagged commands carry
/// the fingerprint of their action, as the API computes it.
fn commands(steps: Vec<(Action, u64, Option<u8>)>) -> Vec<Command> {
    let mut at_ms = 1_000_000;
    steps
        .into_iter()
        .map(|(action, dt, tag)| {
            at_ms += dt;
            let request = match (&action, tag) {
                (Action::Ops(ops), Some(t)) => Some(RequestTag {
                    legacy_max_ids: None,
                    id: format!("req-{t}"),
                    fingerprint: codec::fingerprint(ops).expect("ops encode"),
                    window_ms: 3_000,
                    min_window_ms: 1_000,
                    max_bytes: 700,
                }),
                _ => None,
            };
            Command {
                at_ms,
                request,
                action,
            }
        })
        .collect()
}

/// Everything a replica's state is: its snapshot export (records and
/// remembered requests) plus the derived indexes the export does not show.
fn fingerprint_of(t: &Table) -> (Vec<u8>, usize, usize, usize, Option<u64>, Vec<String>) {
    let due: Vec<String> = t.due(u64::MAX, usize::MAX);
    (
        codec::encode(&t.export()).expect("export encodes"),
        t.len(),
        t.outbox_depth(),
        t.memory_bytes(),
        t.outbox_oldest_since_ms(),
        due,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn replicas_and_a_replica_restored_midway_reach_the_same_state(
        steps in prop::collection::vec(step(), 1..60),
        cut in 0usize..60,
    ) {
        let log = commands(steps);
        let cut = cut.min(log.len());
        let (a, b, early) = (Table::new(), Table::new(), Table::new());
        let mut outcomes_a = Vec::new();
        for (i, cmd) in log.iter().enumerate() {
            let revision = i as u64 + 1;
            outcomes_a.push(a.apply(revision, cmd));
            prop_assert_eq!(&b.apply(revision, cmd), outcomes_a.last().unwrap());
            if i < cut {
                let _ = early.apply(revision, cmd);
            }
        }
        // The third replica applied the first `cut` entries, was snapshotted,
        // and the snapshot (through its encoding, as it travels) was restored
        // into a fresh table that applies the rest.
        let bytes = codec::encode(&early.export()).expect("export encodes");
        let restored = Table::new();
        restored.restore(codec::decode(&bytes).expect("snapshot decodes"), cut as u64);
        for (i, cmd) in log.iter().enumerate().skip(cut) {
            let revision = i as u64 + 1;
            prop_assert_eq!(&restored.apply(revision, cmd), &outcomes_a[i]);
        }
        prop_assert_eq!(fingerprint_of(&a), fingerprint_of(&b));
        prop_assert_eq!(fingerprint_of(&a), fingerprint_of(&restored));
        prop_assert_eq!(a.revision(), restored.revision());
    }
}
