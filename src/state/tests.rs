//! Behaviour of `Table::apply`, one rule per test.

use bytes::Bytes;

use super::*;

fn b(s: &str) -> Bytes {
    Bytes::from(s.to_string())
}

fn one(at_ms: u64, op: Op) -> Command {
    Command::op(at_ms, op)
}

fn insert(key: &str, v: &str) -> Op {
    Op::Insert {
        key: key.into(),
        value: b(v),
        ttl_ms: None,
    }
}

fn insert_ttl(key: &str, ttl_ms: u64) -> Op {
    Op::Insert {
        key: key.into(),
        value: b("v"),
        ttl_ms: Some(ttl_ms),
    }
}

fn update(key: &str, v: &str, if_version: Option<u64>) -> Op {
    Op::Update {
        key: key.into(),
        value: b(v),
        if_version,
        ttl: TtlChange::Keep,
    }
}

fn single(o: Outcome) -> Applied {
    let mut v = o.expect("applied");
    assert_eq!(v.len(), 1);
    v.remove(0)
}

fn rejection(o: Outcome) -> Rejection {
    o.expect_err("rejected").rejection
}

#[test]
fn insert_then_update_bumps_version_and_mod_revision() {
    let s = Table::new();
    let a = single(s.apply(3, &one(1_000, insert("call/1", "ringing"))));
    assert_eq!(
        (
            a.record.version,
            a.record.create_revision,
            a.record.mod_revision
        ),
        (1, 3, 3)
    );
    let u = single(s.apply(5, &one(2_000, update("call/1", "answered", Some(1)))));
    assert_eq!(
        (
            u.record.version,
            u.record.create_revision,
            u.record.mod_revision
        ),
        (2, 3, 5)
    );
    assert_eq!(
        (u.record.created_at_ms, u.record.updated_at_ms),
        (1_000, 2_000)
    );
    assert_eq!(s.revision(), 5);
}

#[test]
fn insert_of_existing_key_is_rejected_in_any_state() {
    let s = Table::new();
    s.apply(1, &one(1, insert("k", "a"))).unwrap();
    let complete = Op::Complete {
        key: "k".into(),
        value: None,
        if_version: None,
    };
    s.apply(2, &one(1, complete)).unwrap();
    let e = rejection(s.apply(3, &one(1, insert("k", "b"))));
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
    let s = Table::new();
    s.apply(1, &one(1, insert("k", "a"))).unwrap();
    let complete = Op::Complete {
        key: "k".into(),
        value: Some(b("final")),
        if_version: Some(1),
    };
    s.apply(2, &one(1, complete)).unwrap();
    assert!(matches!(
        rejection(s.apply(3, &one(1, update("k", "x", None)))),
        Rejection::NotLive { .. }
    ));
    let del = Op::Delete {
        key: "k".into(),
        if_version: None,
    };
    assert!(matches!(
        rejection(s.apply(4, &one(1, del))),
        Rejection::NotLive { .. }
    ));
    assert_eq!(s.get("k").unwrap().value, b("final"));
}

#[test]
fn version_guard_mismatch_changes_nothing() {
    let s = Table::new();
    s.apply(1, &one(1, insert("k", "a"))).unwrap();
    let e = rejection(s.apply(2, &one(1, update("k", "b", Some(7)))));
    assert_eq!(
        e,
        Rejection::VersionMismatch {
            key: "k".into(),
            expected: 7,
            actual: 1
        }
    );
    assert_eq!(s.get("k").unwrap().value, b("a"));
}

#[test]
fn scan_pages_in_key_order_within_prefix_and_byte_budget() {
    let s = Table::new();
    for (i, k) in ["sms/3", "call/2", "call/1", "call/10", "callx"]
        .iter()
        .enumerate()
    {
        s.apply(i as u64 + 1, &one(1, insert(k, "v"))).unwrap();
    }
    let p = s.scan("call/", None, 2, usize::MAX);
    let keys: Vec<_> = p.records.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["call/1", "call/10"]);
    assert!(p.more);
    let p2 = s.scan("call/", Some("call/10"), 2, usize::MAX);
    let keys: Vec<_> = p2.records.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["call/2"]);
    assert!(!p2.more);
    let p3 = s.scan("call/", None, 10, 1);
    assert_eq!(
        p3.records.len(),
        1,
        "a byte budget ends the page, never before one record"
    );
    assert!(p3.more);
}

#[test]
fn batch_with_one_failing_guard_changes_nothing() {
    let s = Table::new();
    s.apply(1, &one(1, insert("a", "1"))).unwrap();
    let batch = Command {
        at_ms: 2,
        request: None,
        action: Action::Ops(vec![
            update("a", "2", Some(1)),
            insert("b", "new"),
            update("a", "3", Some(1)), // stale guard: a is at version 2 within the batch
        ]),
    };
    let f = s.apply(2, &batch).unwrap_err();
    assert_eq!(f.op, 2);
    assert!(matches!(
        f.rejection,
        Rejection::VersionMismatch {
            expected: 1,
            actual: 2,
            ..
        }
    ));
    assert_eq!(s.get("a").unwrap().value, b("1"));
    assert!(s.get("b").is_none());
    assert_eq!(s.len(), 1);
}

#[test]
fn batch_ops_see_earlier_ops_of_the_same_batch() {
    let s = Table::new();
    let batch = Command {
        at_ms: 5,
        request: None,
        action: Action::Ops(vec![
            insert("a", "1"),
            update("a", "2", Some(1)),
            Op::Complete {
                key: "a".into(),
                value: None,
                if_version: Some(2),
            },
            insert("b", "x"),
            Op::Delete {
                key: "b".into(),
                if_version: Some(1),
            },
        ]),
    };
    let applied = s.apply(9, &batch).unwrap();
    assert_eq!(applied.len(), 5);
    let a = s.get("a").unwrap();
    assert_eq!(
        (a.version, a.state, a.value.clone()),
        (3, RecordState::Completed, b("2"))
    );
    assert!(s.get("b").is_none());
    assert!(applied.iter().all(|x| x.revision == 9));
}

#[test]
fn ttl_index_finds_due_records_and_expire_uses_the_entry_time() {
    let s = Table::new();
    s.apply(1, &one(1_000, insert_ttl("a", 500))).unwrap(); // due at 1500
    s.apply(2, &one(1_000, insert_ttl("b", 2_000))).unwrap(); // due at 3000
    s.apply(3, &one(1_000, insert("c", "no ttl"))).unwrap();
    assert_eq!(s.due(1_499, 10), Vec::<String>::new());
    assert_eq!(s.due(1_500, 10), vec!["a".to_string()]);
    assert_eq!(s.due(5_000, 10), vec!["a".to_string(), "b".to_string()]);
    assert_eq!(s.due(5_000, 1), vec!["a".to_string()]);
    // An Expire whose entry time is before a deadline skips that key.
    let expire = Command {
        at_ms: 2_000,
        request: None,
        action: Action::Expire {
            keys: vec!["a".into(), "b".into(), "c".into(), "missing".into()],
            mode: ExpiredMode::Handoff,
        },
    };
    let expired = s.apply(4, &expire).unwrap();
    assert_eq!(
        expired.iter().map(|a| a.key.as_str()).collect::<Vec<_>>(),
        ["a"]
    );
    let a = s.get("a").unwrap();
    assert_eq!(
        (a.state, a.version, a.mod_revision),
        (RecordState::Expired, 2, 4)
    );
    assert_eq!(
        s.due(5_000, 10),
        vec!["b".to_string()],
        "an EXPIRED record leaves the TTL index"
    );
    assert!(matches!(
        rejection(s.apply(5, &one(2_100, update("a", "x", None)))),
        Rejection::NotLive { .. }
    ));
}

#[test]
fn update_refreshes_or_clears_the_deadline() {
    let s = Table::new();
    s.apply(1, &one(1_000, insert_ttl("a", 500))).unwrap();
    let refresh = Op::Update {
        key: "a".into(),
        value: b("v2"),
        if_version: None,
        ttl: TtlChange::Set(10_000),
    };
    s.apply(2, &one(1_200, refresh)).unwrap();
    assert_eq!(s.get("a").unwrap().expires_at_ms, Some(11_200));
    assert_eq!(s.due(2_000, 10), Vec::<String>::new());
    let clear = Op::Update {
        key: "a".into(),
        value: b("v3"),
        if_version: None,
        ttl: TtlChange::Clear,
    };
    s.apply(3, &one(1_300, clear)).unwrap();
    assert_eq!(s.get("a").unwrap().expires_at_ms, None);
    assert_eq!(s.due(u64::MAX, 10), Vec::<String>::new());
    // Completing a record stops its clock too.
    s.apply(4, &one(1_400, insert_ttl("b", 100))).unwrap();
    let complete = Op::Complete {
        key: "b".into(),
        value: None,
        if_version: None,
    };
    s.apply(5, &one(1_450, complete)).unwrap();
    assert_eq!(s.due(u64::MAX, 10), Vec::<String>::new());
}

#[test]
fn dropped_expiry_removes_the_record() {
    let s = Table::new();
    s.apply(1, &one(1_000, insert_ttl("a", 1))).unwrap();
    let expire = Command {
        at_ms: 2_000,
        request: None,
        action: Action::Expire {
            keys: vec!["a".into()],
            mode: ExpiredMode::Drop,
        },
    };
    assert_eq!(s.apply(2, &expire).unwrap().len(), 1);
    assert!(s.get("a").is_none());
    assert_eq!(s.memory_bytes(), 0);
}

fn tagged(id: &str, fingerprint: u64, at_ms: u64, op: Op) -> Command {
    tagged_within(id, fingerprint, at_ms, op, 60_000, 10_000, 1 << 20)
}

fn tagged_within(
    id: &str,
    fingerprint: u64,
    at_ms: u64,
    op: Op,
    window_ms: u64,
    min_window_ms: u64,
    max_bytes: u64,
) -> Command {
    Command {
        at_ms,
        request: Some(RequestTag {
            legacy_max_ids: None,
            id: id.into(),
            fingerprint,
            window_ms,
            min_window_ms,
            max_bytes,
        }),
        action: Action::Ops(vec![op]),
    }
}

/// What a replayed answer keeps of the first one: key, revision, version,
/// mod revision and state (not the value or the times).
fn receipt_of(a: &[Applied]) -> Vec<(String, u64, u64, u64, RecordState)> {
    a.iter()
        .map(|a| {
            (
                a.key.clone(),
                a.revision,
                a.record.version,
                a.record.mod_revision,
                a.record.state,
            )
        })
        .collect()
}

#[test]
fn repeated_request_id_returns_the_original_outcome_without_applying() {
    let s = Table::new();
    s.apply(1, &one(1, insert("k", "a"))).unwrap();
    let first = s
        .apply(2, &tagged("r1", 7, 10, update("k", "b", None)))
        .unwrap();
    let again = s
        .apply(3, &tagged("r1", 7, 20, update("k", "b", None)))
        .unwrap();
    assert_eq!(
        receipt_of(&again),
        receipt_of(&first),
        "the retry gets the first attempt's revision, version and state"
    );
    assert_eq!(again[0].record.create_revision, 0, "marked as a replay");
    assert!(again[0].record.value.is_empty(), "the value is not kept");
    assert_eq!(s.get("k").unwrap().version, 2, "applied once");
    assert_eq!(s.revision(), 3);
    // A failed first attempt is remembered too.
    let f1 = s
        .apply(4, &tagged("r2", 9, 30, insert("k", "dup")))
        .unwrap_err();
    let f2 = s
        .apply(5, &tagged("r2", 9, 31, insert("k", "dup")))
        .unwrap_err();
    assert_eq!(f1, f2);
    // A delete's receipt is the removed record's.
    let d1 = s
        .apply(
            6,
            &tagged(
                "r3",
                11,
                40,
                Op::Delete {
                    key: "k".into(),
                    if_version: None,
                },
            ),
        )
        .unwrap();
    let d2 = s
        .apply(
            7,
            &tagged(
                "r3",
                11,
                41,
                Op::Delete {
                    key: "k".into(),
                    if_version: None,
                },
            ),
        )
        .unwrap();
    assert_eq!(receipt_of(&d1), receipt_of(&d2));
    assert_eq!(d2[0].record.mod_revision, 2);
}

#[test]
fn reused_request_id_with_a_different_body_is_refused() {
    let s = Table::new();
    s.apply(1, &tagged("r1", 7, 10, insert("k", "a"))).unwrap();
    let e = rejection(s.apply(2, &tagged("r1", 8, 11, insert("k2", "b"))));
    assert_eq!(e, Rejection::RequestIdReused { id: "r1".into() });
    assert!(s.get("k2").is_none());
}

#[test]
fn request_ids_are_forgotten_after_the_window() {
    let s = Table::new();
    s.apply(1, &tagged("old", 1, 0, insert("a", "1"))).unwrap();
    // 60 s later "old" is still inside the window: a retry.
    s.apply(2, &tagged("old", 1, 60_000, insert("a", "1")))
        .unwrap();
    assert_eq!(s.get("a").unwrap().version, 1);
    // Past it, the same id applies as new.
    s.apply(3, &tagged("old", 1, 60_001, insert("b", "1")))
        .unwrap();
    assert!(s.get("b").is_some());
    assert_eq!(s.remembered_requests(), 1);
}

/// The issue's scenario on the state machine: a small id table, an update
/// with id X, then many more tagged writes inside the guaranteed window, then
/// the retry of X. The bound holds, the fillers past it are refused (before
/// anything is applied), and X is answered, not applied again.
#[test]
fn a_full_id_table_refuses_new_ids_rather_than_forget_one_inside_the_min_window() {
    const MAX: u64 = 4_096;
    let tag = |id: &str, at: u64, op: Op| tagged_within(id, 1, at, op, 600_000, 20_000, MAX);
    let s = Table::new();
    s.apply(1, &one(0, insert("x", "0"))).unwrap();
    let first = s
        .apply(2, &tag("X", 1_000, update("x", "1", None)))
        .unwrap();
    assert_eq!(first[0].record.version, 2);
    let (mut accepted, mut refused) = (0, 0);
    for i in 0..2_000u64 {
        let revision = 3 + i;
        match s.apply(
            revision,
            &tag(&format!("w{i}"), 1_000 + i, insert(&format!("k{i}"), "v")),
        ) {
            Ok(_) => accepted += 1,
            Err(Failure {
                op: 0,
                rejection: Rejection::RequestIdsExhausted { max_bytes, .. },
            }) => {
                assert_eq!(max_bytes, MAX);
                assert!(s.get(&format!("k{i}")).is_none(), "refused before applying");
                refused += 1;
            }
            Err(f) => panic!("unexpected {f:?}"),
        }
        assert!(s.request_id_bytes() <= MAX, "the bound holds");
    }
    assert!(
        accepted > 0 && refused > 0,
        "{accepted} accepted, {refused} refused"
    );
    assert_eq!(s.len() as u64, 1 + accepted);
    let retry = s
        .apply(3_000, &tag("X", 3_500, update("x", "1", None)))
        .unwrap();
    assert_eq!(receipt_of(&retry), receipt_of(&first));
    assert_eq!(s.get("x").unwrap().version, 2, "X applied exactly once");
    // A refused id was never remembered: once the oldest ids are past the
    // guaranteed window they make room, and the same request applies.
    let later = 1_000 + 20_000 + 10;
    let w = format!("w{}", 1_999);
    s.apply(3_001, &tag(&w, later, insert("k1999", "v")))
        .unwrap();
    assert!(s.get("k1999").is_some());
    assert!(s.request_id_bytes() <= MAX);
    // ... and X, the oldest, was the first to go.
    assert!(!s.remembers_request("X"));
}

#[test]
fn an_id_table_bound_too_small_for_one_request_refuses_it() {
    let s = Table::new();
    let e = rejection(s.apply(
        1,
        &tagged_within("r", 1, 0, insert("k", "v"), 60_000, 0, 10),
    ));
    assert!(matches!(e, Rejection::RequestIdsExhausted { .. }), "{e:?}");
    assert!(s.get("k").is_none());
    assert_eq!(s.revision(), 1);
}

#[test]
fn request_tags_written_before_byte_bounds_still_decode() {
    #[derive(serde::Serialize)]
    struct LegacyTag {
        id: String,
        fingerprint: u64,
        window_ms: u64,
        max_ids: u32,
    }
    #[derive(serde::Serialize)]
    struct LegacyCommand {
        at_ms: u64,
        request: Option<LegacyTag>,
        action: Action,
    }
    let action = Action::Ops(vec![insert("k", "v")]);
    let cmd_with = |t: RequestTag| Command {
        at_ms: 5,
        request: Some(t),
        action: Action::Ops(vec![insert("k", "v")]),
    };
    for request in [
        None,
        Some(LegacyTag {
            id: "r".into(),
            fingerprint: 9,
            window_ms: 600_000,
            max_ids: 100_000,
        }),
    ] {
        let had_tag = request.is_some();
        let old = crate::codec::encode(&LegacyCommand {
            at_ms: 5,
            request,
            action: action.clone(),
        })
        .unwrap();
        let cmd: Command = crate::codec::decode(&old).unwrap();
        assert_eq!(cmd.action, action);
        match cmd.request {
            None => assert!(!had_tag),
            Some(t) => {
                assert!(had_tag);
                assert_eq!(
                    t,
                    RequestTag {
                        id: "r".into(),
                        fingerprint: 9,
                        window_ms: 600_000,
                        min_window_ms: 0,
                        max_bytes: u64::MAX,
                        legacy_max_ids: Some(100_000),
                    }
                );
                // Replicated onwards, it keeps its old form (and rule).
                let again: Command =
                    crate::codec::decode(&crate::codec::encode(&cmd_with(t.clone())).unwrap())
                        .unwrap();
                assert_eq!(again.request, Some(t));
                assert_eq!(
                    crate::codec::encode(&cmd_with(again.request.unwrap())).unwrap(),
                    old
                );
            }
        }
    }
    // New commands round-trip.
    let cmd = tagged("n", 3, 4, insert("k", "v"));
    let back: Command = crate::codec::decode(&crate::codec::encode(&cmd).unwrap()).unwrap();
    assert_eq!(back, cmd);
}

#[test]
fn snapshot_round_trip_keeps_records_deadlines_and_request_ids() {
    let s = Table::new();
    s.apply(1, &one(1_000, insert_ttl("a", 500))).unwrap();
    s.apply(2, &tagged("r", 5, 1_000, insert("b", "22")))
        .unwrap();
    s.apply(
        3,
        &one(
            1_000,
            Op::Delete {
                key: "b".into(),
                if_version: None,
            },
        ),
    )
    .unwrap();
    let t = Table::new();
    t.restore(s.export(), s.revision());
    assert_eq!(t.export().records, s.export().records);
    assert_eq!(t.memory_bytes(), s.memory_bytes());
    assert_eq!(t.revision(), 3);
    assert_eq!(t.due(2_000, 10), vec!["a".to_string()]);
    let replay = t
        .apply(4, &tagged("r", 5, 1_100, insert("b", "22")))
        .unwrap();
    assert_eq!(
        replay[0].revision, 2,
        "the restored table remembers the request"
    );
    assert!(t.get("b").is_none());
    assert_eq!(
        t.events().oldest_revision(),
        4,
        "the event window starts at the snapshot"
    );
}

#[test]
fn event_window_resumes_in_order_and_compacts_whole_revisions() {
    let s = Table::new();
    s.events().set_limits(WindowLimits {
        max_events: 4,
        max_age_ms: u64::MAX,
        max_bytes: u64::MAX,
    });
    for i in 1..=3u64 {
        s.apply(i, &one(i, insert(&format!("k{i}"), "v"))).unwrap();
    }
    let batch = Command {
        at_ms: 4,
        request: None,
        action: Action::Ops(vec![update("k1", "x", None), update("k2", "x", None)]),
    };
    s.apply(4, &batch).unwrap();
    // 5 events > 4: revision 1 was compacted, the batch (two events at 4) stays whole.
    assert_eq!(s.events().oldest_revision(), 2);
    let (backlog, _rx) = s.events().subscribe(3).unwrap();
    let revs: Vec<u64> = backlog.iter().map(|e| e.revision).collect();
    assert_eq!(revs, [3, 4, 4]);
    assert!(s.events().subscribe(1).is_err());
    let (_, mut rx) = s.events().subscribe(0).unwrap();
    s.apply(
        5,
        &one(
            5,
            Op::Delete {
                key: "k3".into(),
                if_version: None,
            },
        ),
    )
    .unwrap();
    let live = rx.try_recv().unwrap();
    assert_eq!((live.revision, live.kind), (5, EventKind::Deleted));
}

#[test]
fn restoring_a_snapshot_ends_live_subscriptions() {
    let s = Table::new();
    s.apply(1, &one(1, insert("a", "1"))).unwrap();
    let (_, mut rx) = s.events().subscribe(0).unwrap();
    let snapshot = s.export();
    s.restore(snapshot, 40);
    // The old feed is closed: a watcher learns it cannot continue seamlessly.
    assert!(matches!(
        rx.try_recv(),
        Err(tokio::sync::broadcast::error::TryRecvError::Closed)
    ));
    assert_eq!(s.events().oldest_revision(), 41);
    assert_eq!(s.restore_generation() % 2, 0, "restore finished");
}

#[test]
fn event_window_counts_its_bytes_and_drops_the_oldest_revisions_past_its_byte_bound() {
    let s = Table::new();
    let kib = "v".repeat(1024);
    s.events().set_limits(WindowLimits {
        max_events: 1_000,
        max_age_ms: u64::MAX,
        max_bytes: 10 * 1024,
    });
    s.apply(1, &one(1, insert("a", &kib))).unwrap();
    let one_event = s.events().bytes();
    assert!(one_event > 1024, "{one_event}");
    for i in 2..=30u64 {
        s.apply(i, &one(i, update("a", &kib, None))).unwrap();
        assert!(s.events().bytes() <= 10 * 1024, "{}", s.events().bytes());
    }
    // The newest revisions stay; the oldest are compacted.
    assert!(s.events().oldest_revision() > 20);
    let (backlog, _rx) = s.events().subscribe(s.events().oldest_revision()).unwrap();
    let held: u64 = backlog.iter().map(|e| e.footprint()).sum();
    assert_eq!(held, s.events().bytes());
    s.restore(s.export(), 30);
    assert_eq!(s.events().bytes(), 0, "a restore empties the window");
}

#[test]
fn outbox_holds_completed_and_expired_records_in_completion_order() {
    let s = Table::new();
    s.apply(1, &one(1_000, insert("a", "1"))).unwrap();
    s.apply(2, &one(1_000, insert_ttl("b", 10))).unwrap();
    s.apply(3, &one(1_000, insert("c", "3"))).unwrap();
    assert_eq!((s.outbox_depth(), s.outbox_oldest_since_ms()), (0, None));
    let complete = |k: &str| Op::Complete {
        key: k.into(),
        value: None,
        if_version: None,
    };
    s.apply(4, &one(2_000, complete("c"))).unwrap();
    let expire = Command {
        at_ms: 3_000,
        request: None,
        action: Action::Expire {
            keys: vec!["b".into()],
            mode: ExpiredMode::Handoff,
        },
    };
    s.apply(5, &expire).unwrap();
    s.apply(6, &one(4_000, complete("a"))).unwrap();
    assert_eq!(s.outbox_depth(), 3);
    assert_eq!(s.outbox_oldest_since_ms(), Some(2_000));
    let front: Vec<String> = s
        .outbox_front(10, usize::MAX)
        .iter()
        .map(|(id, _)| id.to_string())
        .collect();
    assert_eq!(front, ["c@4", "b@5", "a@6"]);
    assert_eq!(s.outbox_front(2, usize::MAX).len(), 2);
    assert_eq!(
        s.outbox_front(10, 1).len(),
        1,
        "at least one, even past the byte limit"
    );
    let t = Table::new();
    t.restore(s.export(), s.revision());
    let restored: Vec<String> = t
        .outbox_front(10, usize::MAX)
        .iter()
        .map(|(id, _)| id.to_string())
        .collect();
    assert_eq!(restored, front);
    assert_eq!(t.outbox_bytes(), s.outbox_bytes());
}

#[test]
fn evict_removes_only_records_waiting_with_that_completion_revision() {
    let s = Table::new();
    s.apply(1, &one(1_000, insert("a", "1"))).unwrap();
    s.apply(2, &one(1_000, insert("live", "1"))).unwrap();
    let complete = Op::Complete {
        key: "a".into(),
        value: None,
        if_version: None,
    };
    s.apply(3, &one(1_000, complete)).unwrap();
    let (_, mut feed) = s.events().subscribe(0).unwrap();
    let evict = |ids: &[(&str, u64)]| Command {
        at_ms: 2_000,
        request: None,
        action: Action::Evict {
            ids: ids
                .iter()
                .map(|(k, r)| HandoffId {
                    key: k.to_string(),
                    revision: *r,
                })
                .collect(),
        },
    };
    // A stale revision, a LIVE record and a missing key change nothing.
    let none = s
        .apply(4, &evict(&[("a", 2), ("live", 2), ("gone", 3)]))
        .unwrap();
    assert!(none.is_empty());
    assert_eq!((s.len(), s.outbox_depth()), (2, 1));
    let done = s.apply(5, &evict(&[("a", 3)])).unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!((s.len(), s.outbox_depth(), s.outbox_bytes()), (1, 0, 0));
    assert!(s.get("a").is_none());
    let ev = feed.try_recv().unwrap();
    assert_eq!(
        (ev.kind, ev.revision, ev.key.as_str()),
        (EventKind::HandedOff, 5, "a")
    );
    assert_eq!(ev.record.state, RecordState::Completed);
    // Evicting again (a retried Evict after a leader change) is harmless,
    // and the key can start a new life.
    assert!(s.apply(6, &evict(&[("a", 3)])).unwrap().is_empty());
    s.apply(7, &one(3_000, insert("a", "again"))).unwrap();
    assert_eq!(s.get("a").unwrap().create_revision, 7);
}

#[test]
fn expire_mode_decodes_log_entries_written_when_it_was_a_bool() {
    // The shape of `Command` before `ExpiredMode` replaced `drop: bool`.
    #[derive(serde::Serialize)]
    #[allow(dead_code)]
    enum LegacyAction {
        Ops(Vec<Op>),
        Expire { keys: Vec<String>, drop: bool },
    }
    #[derive(serde::Serialize)]
    struct LegacyCommand {
        at_ms: u64,
        // Always `None` here: written as the single byte 0 whatever the tag type.
        request: Option<()>,
        action: LegacyAction,
    }
    for (drop, mode) in [(false, ExpiredMode::Handoff), (true, ExpiredMode::Drop)] {
        let old = crate::codec::encode(&LegacyCommand {
            at_ms: 7,
            request: None,
            action: LegacyAction::Expire {
                keys: vec!["call/1".into()],
                drop,
            },
        })
        .unwrap();
        let cmd: Command = crate::codec::decode(&old).unwrap();
        assert_eq!(
            cmd.action,
            Action::Expire {
                keys: vec!["call/1".into()],
                mode
            }
        );
    }
}

#[test]
fn the_last_applied_stamp_only_grows_and_survives_a_restore() {
    let s = Table::new();
    assert_eq!(s.last_stamp_ms(), 0);
    s.apply(1, &one(5_000, insert("a", "1"))).unwrap();
    assert_eq!(s.last_stamp_ms(), 5_000);
    // A rejected command still carries a leader stamp.
    s.apply(2, &one(4_000, insert("a", "2"))).unwrap_err();
    assert_eq!(s.last_stamp_ms(), 5_000);
    s.apply(3, &one(6_000, update("a", "3", None))).unwrap();
    assert_eq!(s.last_stamp_ms(), 6_000);
    let t = Table::new();
    t.restore(s.export(), s.revision());
    assert_eq!(t.last_stamp_ms(), 6_000);
}

#[test]
fn request_tags_from_before_byte_bounds_replay_under_their_count_rule() {
    // Entries written with `max_ids: 3` keep at most 3 ids, forgetting the
    // oldest and never refusing, as the nodes that first applied them did.
    let legacy = |id: &str, at_ms: u64, op: Op| Command {
        at_ms,
        request: Some(RequestTag {
            id: id.into(),
            fingerprint: 1,
            window_ms: 600_000,
            min_window_ms: 0,
            max_bytes: u64::MAX,
            legacy_max_ids: Some(3),
        }),
        action: Action::Ops(vec![op]),
    };
    let s = Table::new();
    for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
        s.apply(i as u64 + 1, &legacy(id, 1_000 + i as u64, insert(id, "v")))
            .unwrap();
    }
    assert_eq!(s.remembered_requests(), 3);
    assert!(!s.remembers_request("a"));
    assert!(s.remembers_request("b") && s.remembers_request("d"));
}

fn id(key: &str, revision: u64) -> HandoffId {
    HandoffId {
        key: key.into(),
        revision,
    }
}

fn leader_cmd(action: Action) -> Command {
    Command {
        at_ms: 5_000,
        request: None,
        action,
    }
}

/// Three completed records `a`, `b`, `c` at revisions 4, 5, 6.
fn three_completed() -> Table {
    let s = Table::new();
    for (i, k) in ["a", "b", "c"].iter().enumerate() {
        s.apply(1 + i as u64, &one(1_000, insert(k, "value")))
            .unwrap();
    }
    for (i, k) in ["a", "b", "c"].iter().enumerate() {
        let complete = Op::Complete {
            key: k.to_string(),
            value: None,
            if_version: None,
        };
        s.apply(4 + i as u64, &one(2_000, complete)).unwrap();
    }
    s
}

fn front_ids(s: &Table) -> Vec<String> {
    s.outbox_front(100, usize::MAX)
        .iter()
        .map(|(id, _)| id.to_string())
        .collect()
}

#[test]
fn a_dead_letter_leaves_the_queue_but_not_memory_until_retried_or_dropped() {
    let s = three_completed();
    let bytes = s.memory_bytes();
    let refused = vec![(id("b", 5), "sink says no".to_string())];
    // A stale id (wrong revision), a LIVE or missing record is not set aside.
    s.apply(7, &one(2_000, insert("live", "v"))).unwrap();
    let stale = vec![
        (id("b", 4), "x".to_string()),
        (id("live", 7), "x".to_string()),
        (id("gone", 1), "x".to_string()),
    ];
    assert!(s
        .apply(8, &leader_cmd(Action::DeadLetter { refused: stale }))
        .unwrap()
        .is_empty());
    let set = s
        .apply(9, &leader_cmd(Action::DeadLetter { refused }))
        .unwrap();
    assert_eq!(set.len(), 1);
    assert_eq!(front_ids(&s), ["a@4", "c@6"], "b left the queue");
    assert_eq!((s.outbox_depth(), s.dead_letter_count()), (2, 1));
    let footprint = s.get("a").unwrap().footprint("a");
    assert_eq!(s.outbox_bytes(), 2 * footprint);
    // The record and the error kept with it, both counted in memory.
    assert!(s.dead_letter_bytes() > footprint + "sink says no".len());
    assert_eq!(
        s.memory_bytes(),
        bytes + s.get("live").unwrap().footprint("live") + s.dead_letter_bytes() - footprint
    );
    assert!(
        s.memory_bytes() > bytes,
        "still counted (plus the new LIVE record)"
    );
    let d = s.dead_letter("b").unwrap();
    assert_eq!(
        (d.id.clone(), d.error.as_str(), d.revision, d.at_ms),
        (id("b", 5), "sink says no", 9, 5_000)
    );
    assert!(s.dead_letter("a").is_none());
    assert_eq!(s.get("b").unwrap().state, RecordState::Completed);

    // Retry puts it back at its place in the queue.
    let back = s
        .apply(10, &leader_cmd(Action::Requeue { ids: None }))
        .unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(front_ids(&s), ["a@4", "b@5", "c@6"]);
    assert_eq!((s.dead_letter_count(), s.dead_letter_bytes()), (0, 0));
    // Refused again: aside again with the new entry's revision.
    let refused = vec![(id("b", 5), "still no".to_string())];
    s.apply(11, &leader_cmd(Action::DeadLetter { refused }))
        .unwrap();
    assert_eq!(s.dead_letter("b").unwrap().revision, 11);
    // Requeue of something that is not a dead letter changes nothing.
    let ids = Some(vec![id("a", 4), id("b", 4)]);
    assert!(s
        .apply(12, &leader_cmd(Action::Requeue { ids }))
        .unwrap()
        .is_empty());

    // Survives a snapshot, on every node that restores it.
    let t = Table::new();
    t.restore(s.export(), s.revision());
    assert_eq!(t.dead_letter("b"), s.dead_letter("b"));
    assert_eq!(front_ids(&t), ["a@4", "c@6"]);
    assert_eq!(
        (t.outbox_bytes(), t.dead_letter_bytes(), t.memory_bytes()),
        (s.outbox_bytes(), s.dead_letter_bytes(), s.memory_bytes())
    );

    // Drop: only a dead letter goes, with a DISCARDED event.
    let (_, mut feed) = s.events().subscribe(0).unwrap();
    let ids = vec![id("a", 4), id("b", 5)];
    let gone = s.apply(13, &leader_cmd(Action::Discard { ids })).unwrap();
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].key, "b");
    assert!(s.get("b").is_none());
    assert!(s.get("a").is_some(), "a waiting record is not dropped");
    assert_eq!((s.dead_letter_count(), s.dead_letter_bytes()), (0, 0));
    let ev = feed.try_recv().unwrap();
    assert_eq!((ev.kind, ev.key.as_str()), (EventKind::Discarded, "b"));
}

#[test]
fn dead_letters_list_in_completion_order_and_page() {
    let s = three_completed();
    let refused = vec![
        (id("c", 6), "e3".to_string()),
        (id("a", 4), "e1".to_string()),
    ];
    s.apply(7, &leader_cmd(Action::DeadLetter { refused }))
        .unwrap();
    let all: Vec<String> = s
        .dead_letters(None, 10)
        .iter()
        .map(|d| d.id.to_string())
        .collect();
    assert_eq!(all, ["a@4", "c@6"]);
    let next = s.dead_letters(Some(&id("a", 4)), 10);
    assert_eq!(next.len(), 1);
    assert_eq!(
        (next[0].id.clone(), next[0].error.as_str()),
        (id("c", 6), "e3")
    );
    assert_eq!(s.dead_letters(None, 1).len(), 1);
}
