//! Micro benchmarks of the state machine's apply path: the cost per command
//! of Insert, Update (with a TTL refresh) and Expire batches, of an update
//! carrying a request id into a table that remembers 200,000 of them, and of
//! taking a snapshot's content with that many ids (which holds up applies),
//! independent of Raft and the network. Run: `cargo bench --bench apply`.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use inflight::state::{Action, Command, ExpiredMode, Op, RequestTag, Table, TtlChange};

const VALUE: &[u8; 256] = &[b'x'; 256];

fn key(i: u64) -> String {
    format!("call/{i:010}-0123456789abcdef0123")
}

fn insert(i: u64, ttl_ms: Option<u64>) -> Command {
    Command::op(
        1_000,
        Op::Insert {
            key: key(i),
            value: Bytes::from_static(VALUE),
            ttl_ms,
        },
    )
}

/// A store holding `n` records with 1 s TTLs, applied at indexes 1..=n.
fn populated(n: u64) -> Table {
    let s = Table::new();
    for i in 0..n {
        s.apply(i + 1, &insert(i, Some(1_000))).expect("insert");
    }
    s
}

/// Ids remembered by the request-id benchmarks: a few minutes of writes.
const REMEMBERED: u64 = 200_000;
/// Records those writes update, as in the chaos runs: few records, many ids.
const HOT_KEYS: u64 = 8;

/// An update of one of the `HOT_KEYS` records, carrying request id `i`.
fn tagged_update(i: u64) -> Command {
    Command {
        at_ms: 1_000,
        request: Some(RequestTag {
            id: format!("0190a1b2-c3d4-7e5f-8a9b-{i:012}"),
            fingerprint: i,
            window_ms: 600_000,
            min_window_ms: 60_000,
            max_bytes: 1 << 30,
            legacy_max_ids: None,
        }),
        action: Action::Ops(vec![Op::Update {
            key: key(i % HOT_KEYS),
            value: Bytes::from_static(VALUE),
            if_version: None,
            ttl: TtlChange::Keep,
        }]),
    }
}

/// A store holding `HOT_KEYS` records that has applied `n` tagged updates
/// (and remembers their ids).
fn with_request_ids(n: u64) -> Table {
    let s = populated(HOT_KEYS);
    for i in 0..n {
        s.apply(HOT_KEYS + i + 1, &tagged_update(i))
            .expect("update");
    }
    s
}

fn bench_apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("apply");
    g.throughput(Throughput::Elements(1));

    g.bench_function("insert", |b| {
        let s = Table::new();
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            s.apply(i, &insert(i, None)).expect("insert")
        })
    });

    g.bench_function("update_with_ttl_refresh", |b| {
        let n = 100_000;
        let s = populated(n);
        let mut i = n;
        b.iter(|| {
            i += 1;
            let cmd = Command::op(
                2_000,
                Op::Update {
                    key: key(i % n),
                    value: Bytes::from_static(VALUE),
                    if_version: None,
                    ttl: TtlChange::Set(30_000),
                },
            );
            s.apply(i, &cmd).expect("update")
        })
    });

    g.bench_function("tagged_update_among_200k_ids", |b| {
        let s = with_request_ids(REMEMBERED);
        let mut i = REMEMBERED;
        b.iter(|| {
            i += 1;
            s.apply(HOT_KEYS + i, &tagged_update(i)).expect("update")
        })
    });

    g.throughput(Throughput::Elements(1));
    let s = with_request_ids(REMEMBERED);
    // What stops applies: taking the content, between two applies.
    g.bench_function("snapshot_take_200k_ids", |b| b.iter(|| s.export()));
    // The copy of every id, now made as the snapshot is encoded, on another
    // thread (before, `export` made it, between two applies).
    g.bench_function("snapshot_copy_200k_ids", |b| {
        b.iter(|| s.export().requests.into_vec())
    });

    let batch = 500u64;
    g.throughput(Throughput::Elements(batch));
    g.bench_function("expire_batch_of_500", |b| {
        b.iter_batched(
            || {
                let s = populated(batch);
                let keys = s.due(10_000, batch as usize);
                (s, keys)
            },
            |(s, keys)| {
                let cmd = Command {
                    at_ms: 10_000,
                    request: None,
                    action: Action::Expire {
                        keys,
                        mode: ExpiredMode::Handoff,
                    },
                };
                let expired = s.apply(batch + 1, &cmd).expect("expire");
                assert_eq!(expired.len(), batch as usize);
                s
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench_apply);
criterion_main!(benches);
