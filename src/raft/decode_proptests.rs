//! Every decoder of bytes from the network or the disk, fed random bytes and
//! mutated valid encodings: the WAL record decoder (and the recovery scan
//! around it), the snapshot decoder (formats 2, 3 and 4) and every peer
//! message the peer service decodes. Each must answer with an error or a
//! value, never panic, and never make one allocation larger than the bound
//! its kind and size allow (`codec::Bound`, plus serde's 1 MiB sequence
//! preallocation), measured by the allocation probe. The fixed cases put a
//! varint claiming 60 GiB at every position of a 100-byte input.
//!
//! A mutated encoding reaches the decoder only if its checksum holds, so
//! the WAL and snapshot targets recompute the checksum after mutating: what
//! a bug or a forger (a CRC is no MAC) could write, not only what a bit flip
//! leaves.

use std::collections::{BTreeMap, BTreeSet};

use openraft::entry::RaftEntry;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, VoteRequest, VoteResponse,
};
use openraft::testing::log_id;
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use tonic::Request;

use super::peer_service;
use super::state_machine::{decode_snapshot, encode_snapshot, MAGIC};
use super::wal::{self, Recovered};
use super::{Entry, LogId, SnapshotMeta, StoredMembership, TypeConfig, Vote};
use crate::alloc_probe::{
    hundred_byte_huge_claims, largest_allocation, mutate, mutation, proptest_config, SERDE_PREALLOC,
};
use crate::codec::{self, Bound, CodecError};
use crate::pb::RaftMessage;
use crate::state::{Command, Op, Table};

fn lid(term: u64, index: u64) -> LogId {
    log_id::<TypeConfig>(term, 1, index)
}

fn vote() -> Vote {
    openraft::impls::Vote::new(3, 1)
}

fn entries() -> Vec<Entry> {
    let insert = Op::Insert {
        key: "call/1".into(),
        value: bytes::Bytes::from_static(b"{\"state\":\"ringing\"}"),
        ttl_ms: Some(30_000),
    };
    let update = Op::Update {
        key: "call/1".into(),
        value: bytes::Bytes::from_static(b"up"),
        if_version: Some(1),
        ttl: crate::state::TtlChange::Clear,
    };
    let membership = openraft::Membership::new_with_defaults(vec![BTreeSet::from([1, 2, 3])], [4]);
    vec![
        Entry::new_blank(lid(1, 1)),
        Entry::new_normal(lid(1, 2), Command::op(1_700_000_000_000, insert)),
        Entry::new_normal(lid(2, 3), Command::op(1_700_000_000_001, update)),
        Entry::new_membership(lid(2, 4), membership),
    ]
}

fn snapshot_meta() -> SnapshotMeta {
    let membership = openraft::Membership::new_with_defaults(vec![BTreeSet::from([1, 2])], []);
    SnapshotMeta {
        last_log_id: Some(lid(2, 9)),
        last_membership: StoredMembership::new(Some(lid(1, 1)), membership),
    }
}

/// A peer message is decoded from the payload of a `RaftMessage`, as the
/// peer service does.
fn decode_peer<T: DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    peer_service::decode::<T>(Request::new(RaftMessage {
        payload: payload.to_vec(),
        ..Default::default()
    }))
    .map_err(|s| s.message().to_string())
}

/// What a decode may allocate at most in one piece, for `len` input bytes.
fn allowed(kind: Bound, len: usize) -> usize {
    kind.bound_for(len).max(SERDE_PREALLOC)
}

/// Runs `decode` under the allocation probe and checks the bound.
fn bounded<T>(kind: Bound, len: usize, decode: impl FnOnce() -> T) -> T {
    let (out, largest) = largest_allocation(decode);
    let limit = allowed(kind, len);
    assert!(
        largest <= limit,
        "decoding {len} bytes as a {} allocated {largest} bytes at once, over {limit}",
        kind.name()
    );
    out
}

// --- peer messages -------------------------------------------------------

/// Every peer message type: its valid encodings, and a decoder that says
/// only whether it decoded.
type PeerTarget = (&'static str, Vec<Vec<u8>>, fn(&[u8]) -> Result<(), String>);

fn peer_targets() -> Vec<PeerTarget> {
    fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
        codec::encode(v).expect("encodes")
    }
    fn ok<T>(r: Result<T, String>) -> Result<(), String> {
        r.map(|_| ())
    }
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: vote(),
        prev_log_id: Some(lid(1, 1)),
        leader_commit: Some(lid(1, 1)),
        entries: entries(),
    };
    let stream_results: Vec<StreamAppendResult<TypeConfig>> = vec![Ok(Some(lid(2, 4))), Ok(None)];
    vec![
        (
            "AppendEntries (also each StreamAppend item)",
            vec![enc(&append)],
            |b| ok(decode_peer::<AppendEntriesRequest<TypeConfig>>(b)),
        ),
        (
            "Vote / PreVote",
            vec![enc(&VoteRequest::<TypeConfig>::new(
                vote(),
                Some(lid(2, 4)),
            ))],
            |b| ok(decode_peer::<VoteRequest<TypeConfig>>(b)),
        ),
        (
            "TransferLeader",
            vec![enc(&TransferLeaderRequest::<TypeConfig>::new(
                vote(),
                2,
                Some(lid(2, 4)),
            ))],
            |b| ok(decode_peer::<TransferLeaderRequest<TypeConfig>>(b)),
        ),
        (
            "InstallSnapshot meta",
            vec![enc(&(vote(), snapshot_meta()))],
            |b| ok(codec::decode::<(Vote, SnapshotMeta)>(b).map_err(|e| e.to_string())),
        ),
        (
            "answers (vote, append, stream, snapshot)",
            vec![
                enc(&VoteResponse::<TypeConfig>::new(
                    vote(),
                    Some(lid(2, 4)),
                    true,
                )),
                enc(&AppendEntriesResponse::<TypeConfig>::PartialSuccess(Some(
                    lid(2, 3),
                ))),
                enc(&stream_results[0]),
                enc(&SnapshotResponse::<TypeConfig>::new(vote())),
            ],
            |b| {
                // Decoded by the sender of the request (`network`); valid if
                // it reads as any of them.
                let answers = [
                    ok(decode_peer::<VoteResponse<TypeConfig>>(b)),
                    ok(decode_peer::<AppendEntriesResponse<TypeConfig>>(b)),
                    ok(decode_peer::<StreamAppendResult<TypeConfig>>(b)),
                    ok(decode_peer::<SnapshotResponse<TypeConfig>>(b)),
                ];
                answers
                    .iter()
                    .find(|r| r.is_ok())
                    .cloned()
                    .unwrap_or_else(|| answers[0].clone())
            },
        ),
    ]
}

#[test]
fn every_valid_peer_message_decodes() {
    for (name, samples, decode) in peer_targets() {
        for s in &samples {
            decode(s).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

#[test]
fn a_100_byte_peer_message_claiming_60_gib_is_refused_naming_the_limit() {
    for (name, samples, decode) in peer_targets() {
        let mut refused_for_size = false;
        for bytes in hundred_byte_huge_claims(&samples[0]) {
            let r = bounded(Bound::PeerMessage, bytes.len(), || decode(&bytes));
            if let Err(e) = r {
                refused_for_size |= e.contains("100-byte peer message claims more than");
            }
        }
        // Types with a string somewhere (an entry's key, a snapshot id) see the claim.
        if name.starts_with("AppendEntries") || name.starts_with("InstallSnapshot") {
            assert!(
                refused_for_size,
                "{name}: no position read as a claimed length"
            );
        }
    }
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn random_bytes_never_crash_a_peer_message_decoder(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        for (_, _, decode) in peer_targets() {
            let _ = bounded(Bound::PeerMessage, bytes.len(), || decode(&bytes));
        }
    }

    #[test]
    fn mutated_peer_messages_never_crash_their_decoder(
        pick in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let targets = peer_targets();
        let (_, samples, decode) = &targets[pick.index(targets.len())];
        let bytes = mutate(samples[pick.index(samples.len())].clone(), &mutations);
        let _ = bounded(Bound::PeerMessage, bytes.len(), || decode(&bytes));
    }
}

// --- WAL records ---------------------------------------------------------

/// The payload (tag, body) of every kind of WAL record.
fn wal_payloads() -> Vec<Vec<u8>> {
    fn payload<T: serde::Serialize>(tag: u8, body: &T) -> Vec<u8> {
        let mut buf = Vec::new();
        wal::frame(&mut buf, tag, body).expect("frames");
        buf.split_off(wal::FRAME_HEADER)
    }
    let mut out: Vec<Vec<u8>> = entries()
        .iter()
        .map(|e| payload(wal::TAG_ENTRY, e))
        .collect();
    out.push(payload(wal::TAG_BASE, &(Some(lid(1, 1)), Some(lid(2, 3)))));
    out.push(payload(wal::TAG_TRUNCATE, &Some(3u64)));
    out.push(payload(wal::TAG_PURGE, &lid(1, 2)));
    out.push(payload(wal::TAG_COMMITTED, &Some(lid(2, 4))));
    out
}

/// A frame around `payload`, with its checksum computed.
fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Replays `segment` the way start-up does, including the search for an
/// intact record after a bad one and the description of the damage.
fn recover(segment: &[u8]) {
    let mut state = Recovered {
        entries: BTreeMap::new(),
        purged: None,
        committed: None,
    };
    let (mut max_index, mut last) = (0, None);
    let (_, stop) = wal::replay_segment(segment, &mut state, &mut max_index, &mut last);
    if let Some(stop) = stop {
        let after = wal::intact_after(segment, stop.offset);
        let _ = wal::damaged_index(segment, stop.offset, last, after.and_then(|a| a.1));
        let _ = stop.error;
    }
}

fn decode_wal_record(payload: &[u8]) -> Result<Option<u64>, CodecError> {
    bounded(Bound::WalRecord, payload.len(), || {
        wal::decode_record(payload)
    })
}

#[test]
fn every_valid_wal_record_decodes_and_replays() {
    let mut segment = Vec::new();
    for p in wal_payloads() {
        decode_wal_record(&p).expect("decodes");
        segment.extend(framed(&p));
    }
    recover(&segment);
}

#[test]
fn a_100_byte_wal_record_claiming_60_gib_is_refused_naming_the_limit() {
    let mut refused_for_size = false;
    for p in wal_payloads() {
        for mut bytes in hundred_byte_huge_claims(&p[1..]) {
            bytes.insert(0, p[0]);
            if let Err(e) = decode_wal_record(&bytes) {
                refused_for_size |= matches!(e, CodecError::OverLimit { .. })
                    && e.to_string().contains("WAL record claims more than");
            }
            recover(&framed(&bytes));
        }
    }
    assert!(refused_for_size, "no position read as a claimed length");
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn random_bytes_never_crash_the_wal_decoder_or_recovery(
        tag in 0u8..6,
        body in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        let mut payload = vec![tag];
        payload.extend_from_slice(&body);
        let _ = decode_wal_record(&payload);
        recover(&framed(&payload));
        recover(&body);
    }

    #[test]
    fn mutated_wal_records_never_crash_the_decoder_or_recovery(
        pick in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..4),
        fix_checksum in any::<bool>(),
    ) {
        let payloads = wal_payloads();
        let valid = &payloads[pick.index(payloads.len())];
        let mut frames: Vec<Vec<u8>> = payloads.iter().map(|p| framed(p)).collect();
        let segment = if fix_checksum {
            let bad = mutate(valid.clone(), &mutations);
            if !bad.is_empty() {
                let _ = decode_wal_record(&bad);
                // A bad record between good ones, as damage leaves it.
                frames.insert(pick.index(frames.len() + 1), framed(&bad));
            }
            frames.concat()
        } else {
            mutate(frames.concat(), &mutations)
        };
        recover(&segment);
    }
}

// --- snapshots -----------------------------------------------------------

/// `MAGIC | crc32 | payload`.
fn blob(payload: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payloads (after magic and checksum) of a snapshot in each format.
fn snapshot_payloads() -> Vec<Vec<u8>> {
    let table = Table::new();
    for (i, e) in entries().iter().enumerate() {
        if let openraft::EntryPayload::Normal(cmd) = &e.payload {
            table.apply(i as u64 + 1, cmd).expect("applies");
        }
    }
    let body = table.export();
    let meta = snapshot_meta();
    let v4 = encode_snapshot(&meta, &body).expect("encodes")[12..].to_vec();
    let v3 = crate::state::SnapshotBodyV3 {
        format: 3,
        revision: body.revision,
        records: body.records.clone(),
        requests: body.requests.to_vec(),
    };
    let v2 = crate::state::SnapshotBodyV2 {
        format: 2,
        revision: body.revision,
        records: body.records.clone(),
        requests: Vec::new(),
    };
    vec![
        v4,
        codec::encode(&(&meta, &v3)).expect("encodes"),
        codec::encode(&(&meta, &v2)).expect("encodes"),
    ]
}

fn decode_snapshot_blob(bytes: &[u8]) -> Result<(), String> {
    bounded(Bound::Snapshot, bytes.len(), || {
        decode_snapshot(bytes).map(|_| ())
    })
}

#[test]
fn every_snapshot_format_decodes() {
    let payloads = snapshot_payloads();
    assert_eq!(payloads.len(), 3);
    for p in payloads {
        decode_snapshot_blob(&blob(&p)).expect("decodes");
    }
}

#[test]
fn a_100_byte_snapshot_claiming_60_gib_is_refused_naming_the_limit() {
    let mut refused_for_size = false;
    for p in snapshot_payloads() {
        for bytes in hundred_byte_huge_claims(&p) {
            let bytes = blob(&bytes[..88]);
            assert_eq!(bytes.len(), 100);
            if let Err(e) = decode_snapshot_blob(&bytes) {
                refused_for_size |= e.contains("88-byte snapshot claims more than");
            }
        }
    }
    assert!(refused_for_size, "no position read as a claimed length");
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn random_bytes_never_crash_the_snapshot_decoder(
        payload in prop::collection::vec(any::<u8>(), 0..4096),
        format in 0u32..6,
    ) {
        let _ = decode_snapshot_blob(&payload);
        // Past the magic and checksum, with a plausible format in front.
        let mut framed = codec::encode(&(snapshot_meta(), format)).expect("encodes");
        framed.extend_from_slice(&payload);
        let _ = decode_snapshot_blob(&blob(&payload));
        let _ = decode_snapshot_blob(&blob(&framed));
    }

    #[test]
    fn mutated_snapshots_never_crash_the_decoder(
        pick in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let payloads = snapshot_payloads();
        let bad = mutate(payloads[pick.index(payloads.len())].clone(), &mutations);
        let _ = decode_snapshot_blob(&blob(&bad));
    }
}

#[test]
fn a_record_naming_the_last_possible_index_does_not_wrap_around() {
    // Found by the mutated-record property: `index + 1` overflowed (a panic
    // in debug builds; in release a truncate after u64::MAX dropped every
    // entry and a purge up to it kept them all).
    let mut segment: Vec<u8> = entries()
        .iter()
        .flat_map(|e| {
            let mut b = Vec::new();
            wal::frame(&mut b, wal::TAG_ENTRY, e).expect("frames");
            b
        })
        .collect();
    let replay = |segment: &[u8]| {
        let mut st = Recovered {
            entries: BTreeMap::new(),
            purged: None,
            committed: None,
        };
        let (_, stop) = wal::replay_segment(segment, &mut st, &mut 0, &mut None);
        assert!(stop.is_none());
        st
    };
    wal::frame(&mut segment, wal::TAG_TRUNCATE, &Some(u64::MAX)).expect("frames");
    assert_eq!(
        replay(&segment).entries.len(),
        4,
        "nothing after the last index"
    );
    wal::frame(&mut segment, wal::TAG_PURGE, &lid(9, u64::MAX)).expect("frames");
    assert!(
        replay(&segment).entries.is_empty(),
        "everything up to the last index"
    );
}

#[test]
fn the_largest_entry_a_node_can_write_decodes_within_the_wal_record_bound() {
    // A batch at the limits: 1,000 updates of 512-byte keys whose values
    // total 4 × the largest value limit, under a 128-byte request id.
    let limits = crate::api::Limits {
        max_value_bytes: crate::raft::MAX_VALUE_BYTES_BOUND,
    };
    let ops_n = crate::api::MAX_BATCH_OPS;
    let per_op = crate::api::BATCH_VALUE_FACTOR * limits.max_value_bytes / ops_n;
    let ops: Vec<Op> = (0..ops_n)
        .map(|i| Op::Update {
            key: format!("{i:0>512}"),
            value: bytes::Bytes::from(vec![b'v'; per_op]),
            if_version: Some(u64::MAX),
            ttl: crate::state::TtlChange::Set(u64::MAX),
        })
        .collect();
    limits
        .batch_len(ops.len())
        .expect("a full batch is allowed");
    limits.batch_bytes(&ops).expect("its values are allowed");
    let cmd = Command {
        at_ms: u64::MAX,
        request: Some(crate::state::RequestTag {
            id: "r".repeat(crate::api::MAX_REQUEST_ID_BYTES),
            fingerprint: u64::MAX,
            window_ms: u64::MAX,
            min_window_ms: u64::MAX,
            max_bytes: u64::MAX,
            legacy_max_ids: None,
        }),
        action: crate::state::Action::Ops(ops),
    };
    let entry = Entry::new_normal(lid(u64::MAX, u64::MAX), cmd);
    let bytes = codec::encode(&entry).expect("encodes");
    let back: Entry = codec::decode_bounded(Bound::WalRecord, &bytes)
        .expect("the largest entry decodes as a WAL record");
    assert_eq!(back.log_id, entry.log_id);
    // A full AppendEntries of such entries fits a peer message's claims:
    // checked at compile time beside `codec::WAL_RECORD_BYTES`.
}
