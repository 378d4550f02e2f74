//! Responses are bounded: no answer passes what a default gRPC client
//! accepts (4 MiB), whatever the records hold. A batch or frame of completes
//! of large records answers with values left out (`value_omitted`) past the
//! bound; a watch revision larger than the watcher's message limit comes in
//! fragments that a watcher, and a resuming watcher, gets past.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use inflight::client::{Client, Consistency};
use inflight::handoff::SinkSpec;
use inflight::pb;
use inflight::pb::in_flight_client::InFlightClient;
use inflight::pb::op_result::Result as Outcome;
use inflight::wire::RESPONSE_BYTES;
use prost::Message;
use testkit::cluster::refusing_sink;
use testkit::{Cluster, ClusterOptions};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Under the default `--max-value-bytes` (1 MiB).
const VALUE: usize = 1_000_000;
/// What a default gRPC client accepts.
const DEFAULT_LIMIT: usize = 4 << 20;
/// Records of VALUE bytes whose values fit one bounded answer:
/// 4 × (1,000,000 + framing) ≤ 4 MiB - 64 KiB < 5 × 1,000,000.
const VALUES_PER_ANSWER: usize = 4;

/// A distinct value per record, so a mix-up shows.
fn value(i: usize) -> Vec<u8> {
    let mut v = vec![b'a' + (i % 26) as u8; VALUE];
    v[..3].copy_from_slice(format!("{i:03}").as_bytes());
    v
}

fn index_of(key: &str) -> usize {
    key.rsplit('/').next().unwrap().parse().unwrap()
}

/// A raw gRPC client to `addr` with tonic's default message limits
/// (4 MiB decoding), like any client that was not told otherwise.
async fn default_client(addr: &str) -> InFlightClient<Channel> {
    let channel = inflight::wire::endpoint(addr)
        .unwrap()
        .connect()
        .await
        .unwrap();
    InFlightClient::new(channel)
}

/// Inserts `n` records `{prefix}{i:03}` of VALUE bytes; returns the last revision.
async fn insert_all(client: &Client, prefix: &str, n: usize) -> u64 {
    let revisions: Vec<u64> = futures::stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            let key = format!("{prefix}{i:03}");
            async move {
                client
                    .insert(&key, value(i))
                    .await
                    .unwrap_or_else(|e| panic!("insert {key}: {e}"))
                    .revision
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    revisions.into_iter().max().unwrap()
}

fn complete(key: String) -> pb::CompleteRequest {
    pb::CompleteRequest {
        key,
        ..Default::default()
    }
}

/// Checks one completed record of an answer: the right key, version,
/// revision and state; its full value, or none and flagged.
fn check_completed(r: &pb::Record, key: &str, revision: u64, with_value: bool) {
    assert_eq!(r.key, key);
    assert_eq!(
        (r.version, r.mod_revision, r.state),
        (2, revision, pb::RecordState::Completed as i32),
        "{key}"
    );
    if with_value {
        assert!(!r.value_omitted, "{key}");
        assert!(r.value == value(index_of(key)), "{key}: wrong value");
    } else {
        assert!(r.value_omitted, "{key} should come without its value");
        assert!(r.value.is_empty(), "{key}: an omitted value is empty");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_and_frames_of_completes_of_large_records_answer_within_a_default_client_limit() {
    const N: usize = 100;
    // The sink refuses, so the COMPLETED records stay readable.
    let c = Cluster::start(ClusterOptions {
        sink: Some(refusing_sink()),
        ..Default::default()
    })
    .await;
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let client = c.client();
    insert_all(&client, "batch/", N).await;
    insert_all(&client, "frame/", N).await;
    let mut raw = default_client(&c.nodes[&leader].grpc).await;

    // One Batch of N value-less completes: 100 MB of values if answered whole.
    let ops = (0..N)
        .map(|i| pb::BatchOp {
            op: Some(pb::batch_op::Op::Complete(complete(format!(
                "batch/{i:03}"
            )))),
        })
        .collect();
    let answer = raw
        .batch(pb::BatchRequest {
            ops,
            request_id: "responses-batch".into(),
        })
        .await
        .expect("a default-limit client takes the answer")
        .into_inner();
    assert!(
        answer.encoded_len() <= RESPONSE_BYTES,
        "{}",
        answer.encoded_len()
    );
    assert_eq!(answer.results.len(), N);
    for (i, m) in answer.results.iter().enumerate() {
        assert_eq!(m.revision, answer.revision);
        check_completed(
            m.record.as_ref().unwrap(),
            &format!("batch/{i:03}"),
            answer.revision,
            i < VALUES_PER_ANSWER,
        );
    }
    // A value left out of the answer is still there to read, whole.
    for i in [VALUES_PER_ANSWER, N - 1] {
        let key = format!("batch/{i:03}");
        let got = client.get(&key, Consistency::Linearizable).await.unwrap();
        check_completed(got.record.as_ref().unwrap(), &key, answer.revision, true);
        let unary = raw
            .get(pb::GetRequest {
                key: key.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        check_completed(unary.record.as_ref().unwrap(), &key, answer.revision, true);
    }
    // A scan of them pages within the bound too, every record once, whole.
    let mut after = String::new();
    let mut scanned = Vec::new();
    loop {
        let page = raw
            .scan(pb::ScanRequest {
                prefix: "batch/".into(),
                after_key: after.clone(),
                ..Default::default()
            })
            .await
            .expect("a default-limit client takes every page")
            .into_inner();
        assert!(page.encoded_len() <= RESPONSE_BYTES);
        assert!(!page.records.is_empty());
        for r in &page.records {
            check_completed(r, &r.key, answer.revision, true);
            scanned.push(r.key.clone());
        }
        after = page.records.last().unwrap().key.clone();
        if !page.more {
            break;
        }
    }
    let want: Vec<String> = (0..N).map(|i| format!("batch/{i:03}")).collect();
    assert_eq!(scanned, want);

    // The same in one Session frame: half the frame records completes, then
    // gets, on a default-limit stream.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut results = raw
        .session(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut ops: Vec<pb::FrameOp> = (0..N / 2)
        .map(|i| pb::FrameOp {
            op: Some(pb::frame_op::Op::Complete(complete(format!(
                "frame/{i:03}"
            )))),
        })
        .collect();
    ops.extend((0..2).map(|i| pb::FrameOp {
        op: Some(pb::frame_op::Op::Get(pb::GetRequest {
            key: format!("batch/{i:03}"),
            ..Default::default()
        })),
    }));
    tx.send(pb::Frame { id: 1, ops }).await.unwrap();
    let frame = results
        .message()
        .await
        .expect("a default-limit client takes the frame's answer")
        .unwrap();
    assert!(
        frame.encoded_len() <= RESPONSE_BYTES,
        "{}",
        frame.encoded_len()
    );
    assert_eq!((frame.id, frame.results.len()), (1, N / 2 + 2));
    for (i, r) in frame.results[..N / 2].iter().enumerate() {
        let Some(Outcome::Mutation(m)) = &r.result else {
            panic!("complete {i}: {r:?}")
        };
        check_completed(
            m.record.as_ref().unwrap(),
            &format!("frame/{i:03}"),
            m.revision,
            i < VALUES_PER_ANSWER,
        );
    }
    // The gets came after the bound was reached: flagged, like the rest.
    for (i, r) in frame.results[N / 2..].iter().enumerate() {
        let Some(Outcome::Get(g)) = &r.result else {
            panic!("get {i}: {r:?}")
        };
        check_completed(
            g.record.as_ref().unwrap(),
            &format!("batch/{i:03}"),
            answer.revision,
            false,
        );
    }

    // Through the client library's frames: concurrent completes share
    // frames; each answer is exact, with its value or flagged without it.
    let done: Vec<(usize, pb::MutationResponse)> = futures::stream::iter(N / 2..N)
        .map(|i| {
            let client = client.clone();
            async move {
                let key = format!("frame/{i:03}");
                let m = client
                    .complete(&key, None, None)
                    .await
                    .unwrap_or_else(|e| panic!("complete {key}: {e}"));
                (i, m)
            }
        })
        .buffer_unordered(N)
        .collect()
        .await;
    let mut omitted = 0;
    for (i, m) in &done {
        let r = m.record.as_ref().unwrap();
        if r.create_revision == 0 {
            // A retry (the first attempt timed out on a loaded machine) is
            // answered from the request id's receipt, which keeps no value.
            assert!(r.value.is_empty() && !r.value_omitted, "{r:?}");
            assert_eq!((r.version, r.mod_revision), (2, m.revision));
            continue;
        }
        omitted += usize::from(r.value_omitted);
        check_completed(r, &format!("frame/{i:03}"), m.revision, !r.value_omitted);
    }
    assert_eq!(done.len(), N / 2);
    assert!(
        omitted > 0,
        "{} concurrent completes shared no frame of more than {VALUES_PER_ANSWER}",
        N / 2
    );
    // Concurrent gets share frames too, and always return the whole value:
    // the client reads again, alone, a get whose frame had no room left.
    let got: Vec<()> = futures::stream::iter(0..N)
        .map(|i| {
            let client = client.clone();
            async move {
                let key = format!("frame/{i:03}");
                let g = client.get(&key, Consistency::Linearizable).await.unwrap();
                let r = g.record.as_ref().unwrap();
                check_completed(r, &key, r.mod_revision, true);
            }
        })
        .buffer_unordered(N)
        .collect()
        .await;
    assert_eq!(got.len(), N);
}

/// What a watcher has seen, message by message.
#[derive(Default)]
struct Seen {
    /// (revision, type, key, value omitted) per event, in arrival order.
    events: Vec<(u64, i32, String, bool)>,
    /// Messages that ended inside a revision.
    fragments: usize,
}

impl Seen {
    /// Takes one message, checking what every message must hold: within
    /// `limit`; revision order; a fragment's `revision` is the one before the
    /// revision it splits, a whole message's is at least its last event's.
    fn take(&mut self, m: &pb::WatchResponse, limit: usize, values: bool) {
        assert!(m.encoded_len() <= limit, "{} > {limit}", m.encoded_len());
        let last = m.events.last().map(|e| e.revision);
        if m.more_in_revision {
            self.fragments += 1;
            assert_eq!(Some(m.revision + 1), last, "a fragment's revision");
        } else if let Some(last) = last {
            assert!(m.revision >= last);
        }
        for e in &m.events {
            assert!(
                self.events.last().is_none_or(|p| p.0 <= e.revision),
                "revision order"
            );
            let r = e.record.as_ref().unwrap();
            if values && !r.value_omitted && r.key != "w/after" {
                assert!(r.value == value(index_of(&r.key)), "{}", r.key);
            }
            assert!(!r.value_omitted || r.value.is_empty(), "{}", r.key);
            self.events
                .push((e.revision, e.r#type, r.key.clone(), r.value_omitted));
        }
    }

    fn saw(&self, key: &str) -> bool {
        self.events.iter().any(|e| e.2 == key)
    }
}

/// Reads `stream` until an event for `key` arrives (each message within 30 s).
async fn read_until(
    stream: &mut tonic::Streaming<pb::WatchResponse>,
    seen: &mut Seen,
    limit: usize,
    key: &str,
) {
    while !seen.saw(key) {
        let m = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .unwrap_or_else(|_| panic!("watch stalled before {key}"))
            .expect("watch stream error")
            .expect("watch stream ended");
        seen.take(&m, limit, true);
    }
}

/// A watch on `addr` through a tonic client that accepts `decode_limit`.
async fn raw_watch(
    addr: &str,
    decode_limit: usize,
    req: pb::WatchRequest,
) -> tonic::Streaming<pb::WatchResponse> {
    default_client(addr)
        .await
        .max_decoding_message_size(decode_limit)
        .watch(req)
        .await
        .unwrap()
        .into_inner()
}

/// The events of one watcher, checked against the batch: every COMPLETED
/// event of the batch revision once, in op order, and every record's
/// HANDED_OFF once, then the marker.
fn check_watch(seen: &Seen, batch_rev: u64, n: usize, omitted: bool, what: &str) {
    let completed: Vec<&(u64, i32, String, bool)> =
        seen.events.iter().filter(|e| e.0 == batch_rev).collect();
    assert_eq!(completed.len(), n, "{what}: events of the batch revision");
    for (i, e) in completed.iter().enumerate() {
        assert_eq!(e.1, pb::EventType::Completed as i32, "{what}");
        assert_eq!(e.2, format!("w/{i:03}"), "{what}: op order");
        assert_eq!(e.3, omitted, "{what}: {} value omitted", e.2);
    }
    let mut handed_off: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &seen.events {
        if e.1 == pb::EventType::HandedOff as i32 {
            assert!(e.0 > batch_rev, "{what}");
            *handed_off.entry(e.2.as_str()).or_default() += 1;
        }
    }
    assert_eq!(handed_off.len(), n, "{what}: records handed off");
    assert!(
        handed_off.values().all(|c| *c == 1),
        "{what}: {handed_off:?}"
    );
    let last = seen.events.last().unwrap();
    assert_eq!(
        (last.1, last.2.as_str()),
        (pb::EventType::Inserted as i32, "w/after"),
        "{what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_with_a_4_mib_limit_gets_past_a_revision_larger_than_its_limit_also_when_resuming_inside_it(
) {
    const N: usize = 100;
    let c = Cluster::start(ClusterOptions {
        sink: Some(SinkSpec::Noop),
        ..Default::default()
    })
    .await;
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let follower = *c.nodes.keys().find(|id| **id != leader).unwrap();
    let (on_leader, on_follower) = (&c.nodes[&leader].grpc, &c.nodes[&follower].grpc);
    let client = c.client();
    let start = insert_all(&client, "w/", N).await + 1;
    let watch = |max_message_bytes: u32| pb::WatchRequest {
        prefix: "w/".into(),
        from_revision: start,
        progress_interval_ms: 0,
        max_message_bytes,
    };
    // Watching before the batch, each with a 4 MiB decode limit: one on a
    // follower with the server's default message size; one on the leader
    // that will leave inside the batch's revision; one asking for messages
    // smaller than one event, which then come without values.
    let mut whole = raw_watch(on_follower, DEFAULT_LIMIT, watch(0)).await;
    let mut leaving = raw_watch(on_leader, DEFAULT_LIMIT, watch(0)).await;
    let small = 512 << 10;
    let mut tiny = raw_watch(on_follower, DEFAULT_LIMIT, watch(small as u32)).await;

    // One revision of 100 COMPLETED events of 1 MB each; then the hand-off
    // evicts them (HANDED_OFF events of 4 MiB batches); then a marker.
    let ops = (0..N)
        .map(|i| pb::BatchOp {
            op: Some(pb::batch_op::Op::Complete(complete(format!("w/{i:03}")))),
        })
        .collect();
    let batch = client
        .batch(pb::BatchRequest {
            ops,
            request_id: String::new(),
        })
        .await
        .unwrap();
    let batch_rev = batch.revision;
    c.wait_all_evicted(Duration::from_secs(60)).await;
    client.insert("w/after", "x").await.unwrap();

    let mut seen = Seen::default();
    read_until(&mut whole, &mut seen, RESPONSE_BYTES, "w/after").await;
    check_watch(&seen, batch_rev, N, false, "default-size watcher");
    assert!(
        seen.fragments >= N * VALUE / DEFAULT_LIMIT,
        "the batch revision came in {} fragments",
        seen.fragments
    );

    let mut seen_tiny = Seen::default();
    read_until(&mut tiny, &mut seen_tiny, small, "w/after").await;
    check_watch(&seen_tiny, batch_rev, N, true, "512 KiB watcher");

    // Leave inside the batch revision, after its first fragment.
    let mut partial = Seen::default();
    let cut = loop {
        let m = leaving.message().await.unwrap().unwrap();
        partial.take(&m, RESPONSE_BYTES, true);
        if m.more_in_revision {
            break m;
        }
    };
    drop(leaving);
    assert_eq!(cut.events.last().unwrap().revision, batch_rev);
    assert!(partial.events.len() < N);
    // Resume from the last whole revision + 1: the batch revision again, from
    // its first event, and on past it.
    let mut resumed = raw_watch(
        on_leader,
        DEFAULT_LIMIT,
        pb::WatchRequest {
            from_revision: cut.revision + 1,
            ..watch(0)
        },
    )
    .await;
    let mut again = Seen::default();
    read_until(&mut resumed, &mut again, RESPONSE_BYTES, "w/after").await;
    check_watch(&again, batch_rev, N, false, "resumed watcher");

    // The client library's watch moves its resume point only at revision
    // ends: cut off inside the batch revision, it resumes at its start.
    let mut lib = client.watch(watch(0)).await.unwrap();
    let mut lib_seen = Seen::default();
    loop {
        let m = lib.message().await.unwrap().unwrap();
        lib_seen.take(&m, RESPONSE_BYTES, true);
        if m.more_in_revision {
            break;
        }
    }
    assert_eq!(lib.resume_from(), batch_rev);
    let mut lib = client
        .watch(pb::WatchRequest {
            from_revision: lib.resume_from(),
            ..watch(0)
        })
        .await
        .unwrap();
    let mut lib_seen = Seen::default();
    while !lib_seen.saw("w/after") {
        let m = tokio::time::timeout(Duration::from_secs(30), lib.message())
            .await
            .expect("watch stalled")
            .unwrap()
            .unwrap();
        lib_seen.take(&m, RESPONSE_BYTES, true);
    }
    check_watch(&lib_seen, batch_rev, N, false, "client library watcher");
    assert!(lib.resume_from() > batch_rev);
}
