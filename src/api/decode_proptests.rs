//! Every request of the InFlight and Cluster services, as random and
//! mutated bytes: decoded by prost, then checked by the same validation the
//! handler runs before it touches the node (`validate.rs` through the op
//! builders in `records.rs`, the handoff id parsers in `cluster.rs`, the
//! watch options in `watch.rs`). Garbage must come out as a decode error or
//! a validation error, never a panic, and no allocation may be driven by a
//! claimed length rather than the bytes present. (prost checks a length
//! against the bytes left before it copies; the probe holds it to that.)

use proptest::prelude::*;
use prost::Message;

use super::cluster::{check_count, parse_handoff_id, parse_handoff_ids};
use super::records::{batch_ops, complete_op, delete_op, insert_op, update_op};
use super::session::MAX_FRAME_OPS;
use super::{ApiError, Limits};
use crate::alloc_probe::{
    hundred_byte_huge_claims, largest_allocation, mutate, mutation, proptest_config,
};
use crate::pb;

/// What one decode and validation may allocate at once for `len` bytes:
/// proportional to the input (a repeated field's vector doubling as it
/// grows), never to a claimed length.
fn allowed(len: usize) -> usize {
    32 * len + 4096
}

/// Decodes `bytes` as `M` and validates it with `check`; the outcome as text.
fn decode_then<M: Message + Default>(
    bytes: &[u8],
    check: impl FnOnce(M) -> Result<(), ApiError>,
) -> Result<(), String> {
    let m = M::decode(bytes).map_err(|e| format!("decode: {e}"))?;
    check(m).map_err(|e| format!("invalid: {e}"))
}

/// The limits a node starts with (`--max-value-bytes` at its default).
fn l() -> Limits {
    Limits::default()
}

fn request_id(limits: &Limits, id: &str) -> Result<(), ApiError> {
    if id.is_empty() {
        Ok(())
    } else {
        limits.request_id(id)
    }
}

fn frame_op(limits: &Limits, op: pb::FrameOp) -> Result<(), ApiError> {
    use pb::frame_op::Op;
    match op.op {
        Some(Op::Insert(r)) => {
            request_id(limits, &r.request_id)?;
            insert_op(limits, r, "").map(drop)
        }
        Some(Op::Update(r)) => {
            request_id(limits, &r.request_id)?;
            update_op(limits, r, "").map(drop)
        }
        Some(Op::Delete(r)) => {
            request_id(limits, &r.request_id)?;
            delete_op(limits, r, "").map(drop)
        }
        Some(Op::Complete(r)) => {
            request_id(limits, &r.request_id)?;
            complete_op(limits, r, "").map(drop)
        }
        Some(Op::Get(r)) => limits.key("key", &r.key),
        None => Err(ApiError::invalid("op: empty frame op")),
    }
}

thread_local! {
    /// A watch needs a runtime and a table; both are made before the
    /// allocation probe starts (they are not part of decoding).
    static WATCH: (tokio::runtime::Runtime, std::sync::Arc<crate::state::Table>) = (
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime"),
        std::sync::Arc::new(crate::state::Table::new()),
    );
}

fn watch(limits: &Limits, r: pb::WatchRequest) -> Result<(), ApiError> {
    limits.prefix("prefix", &r.prefix)?;
    WATCH.with(|(rt, table)| {
        let table = table.clone();
        rt.block_on(async move {
            super::watch::watch_stream(table, r)
                .map(drop)
                .map_err(|s| ApiError::invalid(s.message().to_string()))
        })
    })
}

type Target = (&'static str, Vec<Vec<u8>>, fn(&[u8]) -> Result<(), String>);

/// Every request type with a valid encoding and its decode-and-validate.
fn targets() -> Vec<Target> {
    let insert = pb::InsertRequest {
        key: "call/1".into(),
        value: b"{\"state\":\"ringing\"}".to_vec(),
        ttl_ms: Some(30_000),
        request_id: "req-1".into(),
    };
    let update = pb::UpdateRequest {
        key: "call/1".into(),
        value: b"up".to_vec(),
        if_version: Some(1),
        ttl_ms: Some(5_000),
        ..Default::default()
    };
    let delete = pb::DeleteRequest {
        key: "call/1".into(),
        if_version: Some(2),
        ..Default::default()
    };
    let complete = pb::CompleteRequest {
        key: "call/1".into(),
        value: Some(b"done".to_vec()),
        ..Default::default()
    };
    let get = pb::GetRequest {
        key: "call/1".into(),
        ..Default::default()
    };
    let batch = pb::BatchRequest {
        request_id: "b-1".into(),
        ops: vec![
            pb::BatchOp {
                op: Some(pb::batch_op::Op::Insert(pb::InsertRequest {
                    request_id: String::new(),
                    ..insert.clone()
                })),
            },
            pb::BatchOp {
                op: Some(pb::batch_op::Op::Delete(delete.clone())),
            },
        ],
    };
    let frame = pb::Frame {
        id: 7,
        ops: vec![
            pb::FrameOp {
                op: Some(pb::frame_op::Op::Insert(insert.clone())),
            },
            pb::FrameOp {
                op: Some(pb::frame_op::Op::Get(get.clone())),
            },
        ],
    };
    vec![
        ("Insert", vec![insert.encode_to_vec()], |b| {
            decode_then(b, |r: pb::InsertRequest| {
                request_id(&l(), &r.request_id)?;
                insert_op(&l(), r, "").map(drop)
            })
        }),
        ("Update", vec![update.encode_to_vec()], |b| {
            decode_then(b, |r: pb::UpdateRequest| {
                request_id(&l(), &r.request_id)?;
                update_op(&l(), r, "").map(drop)
            })
        }),
        ("Delete", vec![delete.encode_to_vec()], |b| {
            decode_then(b, |r: pb::DeleteRequest| {
                request_id(&l(), &r.request_id)?;
                delete_op(&l(), r, "").map(drop)
            })
        }),
        ("Complete", vec![complete.encode_to_vec()], |b| {
            decode_then(b, |r: pb::CompleteRequest| {
                request_id(&l(), &r.request_id)?;
                complete_op(&l(), r, "").map(drop)
            })
        }),
        ("Get", vec![get.encode_to_vec()], |b| {
            decode_then(b, |r: pb::GetRequest| l().key("key", &r.key))
        }),
        (
            "Scan",
            vec![pb::ScanRequest {
                prefix: "call/".into(),
                after_key: "call/1".into(),
                limit: 10,
                ..Default::default()
            }
            .encode_to_vec()],
            |b| {
                decode_then(b, |r: pb::ScanRequest| {
                    l().prefix("prefix", &r.prefix)?;
                    l().prefix("after_key", &r.after_key)?;
                    l().scan_limit(r.limit).map(drop)
                })
            },
        ),
        ("Batch", vec![batch.encode_to_vec()], |b| {
            decode_then(b, |r: pb::BatchRequest| {
                request_id(&l(), &r.request_id)?;
                batch_ops(&l(), r.ops).map(drop)
            })
        }),
        (
            "Watch",
            vec![pb::WatchRequest {
                prefix: "call/".into(),
                progress_interval_ms: 1_000,
                ..Default::default()
            }
            .encode_to_vec()],
            |b| decode_then(b, |r: pb::WatchRequest| watch(&l(), r)),
        ),
        ("Session frame", vec![frame.encode_to_vec()], |b| {
            decode_then(b, |f: pb::Frame| {
                if f.ops.len() > MAX_FRAME_OPS {
                    return Err(ApiError::invalid("too many ops"));
                }
                f.ops.into_iter().try_for_each(|op| frame_op(&l(), op))
            })
        }),
        (
            "Cluster Status, MemberList, Promote, RemoveMember, TransferLeader",
            vec![
                pb::PromoteRequest { id: 3 }.encode_to_vec(),
                pb::RemoveMemberRequest { id: 3, force: true }.encode_to_vec(),
                pb::TransferLeaderRequest { to: 2 }.encode_to_vec(),
            ],
            |b| {
                // Their only checks are against the membership.
                let _ = pb::StatusRequest::decode(b);
                let _ = pb::MemberListRequest::decode(b);
                let _ = pb::PromoteRequest::decode(b);
                let _ = pb::TransferLeaderRequest::decode(b);
                decode_then(b, |_: pb::RemoveMemberRequest| Ok(()))
            },
        ),
        (
            "Cluster AddLearner",
            vec![pb::AddLearnerRequest {
                id: 4,
                address: "10.0.0.4:7001".into(),
                peer_address: "10.0.0.4:7101".into(),
            }
            .encode_to_vec()],
            |b| {
                decode_then(b, |r: pb::AddLearnerRequest| {
                    crate::wire::MemberAddr::parse(&format!("{}/{}", r.address, r.peer_address))
                        .map(|_| ())
                        .map_err(ApiError::invalid)
                })
            },
        ),
        (
            "Cluster HandoffFailed",
            vec![pb::HandoffFailedRequest {
                limit: 10,
                after: "call/1@7".into(),
                keys: vec!["call/2".into()],
            }
            .encode_to_vec()],
            |b| {
                decode_then(b, |r: pb::HandoffFailedRequest| {
                    check_count(r.keys.len(), "keys")?;
                    if !r.after.is_empty() {
                        parse_handoff_id(&r.after, "after")?;
                    }
                    Ok(())
                })
            },
        ),
        (
            "Cluster HandoffRetry",
            vec![pb::HandoffRetryRequest {
                keys: vec!["call/1".into()],
                all: false,
                handoff_ids: vec!["call/1@7".into(), "a@b@9".into()],
            }
            .encode_to_vec()],
            |b| {
                decode_then(b, |r: pb::HandoffRetryRequest| {
                    check_count(r.keys.len(), "keys")?;
                    parse_handoff_ids(&r.handoff_ids).map(drop)
                })
            },
        ),
        (
            "Cluster HandoffDrop",
            vec![pb::HandoffDropRequest {
                keys: vec![],
                handoff_ids: vec!["call/1@7".into()],
            }
            .encode_to_vec()],
            |b| {
                decode_then(b, |r: pb::HandoffDropRequest| {
                    check_count(r.keys.len(), "keys")?;
                    parse_handoff_ids(&r.handoff_ids).map(drop)
                })
            },
        ),
    ]
}

fn checked(decode: fn(&[u8]) -> Result<(), String>, bytes: &[u8]) -> Result<(), String> {
    WATCH.with(|_| ());
    let (out, largest) = largest_allocation(|| decode(bytes));
    assert!(
        largest <= allowed(bytes.len()),
        "{} bytes made an allocation of {largest}",
        bytes.len()
    );
    out
}

#[test]
fn every_valid_request_decodes_and_validates() {
    for (name, samples, decode) in targets() {
        for s in &samples {
            checked(decode, s).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

#[test]
fn a_100_byte_request_claiming_60_gib_is_an_error() {
    for (name, samples, decode) in targets() {
        for s in &samples {
            for bytes in hundred_byte_huge_claims(s) {
                // Zero padding decodes as field 0, which prost refuses, so
                // every one of these is an error.
                let r = checked(decode, &bytes);
                assert!(r.is_err(), "{name}: {bytes:?} was accepted");
            }
        }
    }
}

#[test]
fn garbage_is_a_decode_error_naming_the_problem() {
    let e = checked(targets()[0].2, &[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]).unwrap_err();
    assert!(e.starts_with("decode:"), "{e}");
    // A well-formed request breaking a limit is refused by validation.
    let long_key = pb::GetRequest {
        key: "k".repeat(10_000),
        ..Default::default()
    }
    .encode_to_vec();
    let e = checked(targets()[4].2, &long_key).unwrap_err();
    assert!(e.starts_with("invalid:") && e.contains("key"), "{e}");
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn random_bytes_never_crash_a_request_decoder(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        for (_, _, decode) in targets() {
            let _ = checked(decode, &bytes);
        }
    }

    #[test]
    fn mutated_requests_never_crash_their_decoder(
        pick in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let targets = targets();
        let (_, samples, decode) = &targets[pick.index(targets.len())];
        let bytes = mutate(samples[pick.index(samples.len())].clone(), &mutations);
        let _ = checked(*decode, &bytes);
    }
}
