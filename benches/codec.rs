//! Micro benchmarks of the codec: what it costs to encode and decode a log
//! entry's command (every write is encoded once by the leader's WAL and peer
//! network, and decoded by each follower), to fingerprint a request for
//! request-id deduplication, and to render a post-flight document for a sink.
//! Run: `cargo bench --bench codec`.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use inflight::codec;
use inflight::handoff::Document;
use inflight::state::{Command, HandoffId, Op, Record, RecordState, RequestTag};

fn value() -> Bytes {
    let mut v = br#"{"status":"delivered","pad":""#.to_vec();
    v.resize(254, b'x');
    v.extend_from_slice(b"\"}");
    Bytes::from(v)
}

fn insert_command() -> Command {
    Command {
        at_ms: 1_795_780_672_920,
        request: Some(RequestTag {
            legacy_max_ids: None,
            id: "0193e4a4-6f1c-7c4e-9d1a-2b3c4d5e6f70".into(),
            fingerprint: 0x1234_5678_9abc_def0,
            window_ms: 600_000,
            min_window_ms: 60_000,
            max_bytes: 256 << 20,
        }),
        action: inflight::state::Action::Ops(vec![Op::Insert {
            key: "call/0000000000000000000000000000000042".into(),
            value: value(),
            ttl_ms: Some(30_000),
        }]),
    }
}

fn bench_codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    let cmd = insert_command();
    let bytes = codec::encode(&cmd).expect("encode");

    g.bench_function("encode_insert_command", |b| {
        let mut buf = Vec::with_capacity(512);
        b.iter(|| {
            buf.clear();
            codec::encode_into(&cmd, &mut buf).expect("encode");
            buf.len()
        })
    });
    g.bench_function("decode_insert_command", |b| {
        b.iter(|| codec::decode::<Command>(&bytes).expect("decode"))
    });
    g.bench_function("fingerprint_ops", |b| {
        let inflight::state::Action::Ops(ops) = &cmd.action else {
            unreachable!("built above")
        };
        b.iter(|| codec::fingerprint(ops).expect("fingerprint"))
    });
    g.bench_function("postflight_document", |b| {
        let rec = Record {
            value: value(),
            version: 5,
            create_revision: 1_020,
            mod_revision: 1_187,
            created_at_ms: 1_795_780_672_920,
            updated_at_ms: 1_795_780_676_498,
            expires_at_ms: None,
            state: RecordState::Completed,
        };
        let id = HandoffId {
            key: "call/0000000000000000000000000000000042".into(),
            revision: 1_187,
        };
        b.iter(|| Document::new(id.clone(), &rec).json.len())
    });
    g.finish();
}

criterion_group!(benches, bench_codec);
criterion_main!(benches);
