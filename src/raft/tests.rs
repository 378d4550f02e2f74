//! Storage tests: openraft's own log-store compliance suite against both
//! durabilities, and WAL recovery (reopen, damaged tails, segment cleanup).

use std::sync::Arc;

use openraft::entry::RaftEntry;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::testing::{blank_ent, log_id};
use openraft::{RaftLogReader, StorageError};

use super::log_store::LogStore;
use super::state_machine::StateMachine;
use super::wal::Wal;
use super::{Entry, TypeConfig};
use crate::state::{Command, Op, Table};

struct DiskBuilder;
struct MemoryBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for DiskBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = LogStore::open(&dir.path().join("raft")).expect("open log");
        let sm = StateMachine::open(Arc::new(Table::new()), &dir.path().join("snapshots"))
            .expect("open sm");
        Ok((dir, log, sm))
    }
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, ()> for MemoryBuilder {
    async fn build(&self) -> Result<((), LogStore, StateMachine), StorageError<TypeConfig>> {
        Ok((
            (),
            LogStore::in_memory(),
            StateMachine::in_memory(Arc::new(Table::new())),
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_log_store_passes_openraft_storage_suite() {
    Suite::test_all(DiskBuilder).await.expect("suite");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_log_store_passes_openraft_storage_suite() {
    Suite::test_all(MemoryBuilder).await.expect("suite");
}

fn normal(index: u64, key: &str) -> Entry {
    Entry::new_normal(
        log_id::<TypeConfig>(1, 1, index),
        Command::op(
            index,
            Op::Insert {
                key: key.into(),
                value: bytes::Bytes::from(format!("value-{index}")),
                ttl_ms: None,
            },
        ),
    )
}

/// Appends one entry (key `key-<i>-xxx…`, about 110 bytes) at index `i` and
/// waits for the writer's answer.
fn append_padded(wal: &Wal, i: u64) -> std::io::Result<()> {
    append_entry(
        wal,
        i,
        &normal(i, &format!("key-{i:04}-{}", "x".repeat(100))),
    )
}

/// The WAL's segment files, in replay order.
fn segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut segs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    segs
}

/// Appends `e` at index `i` and waits for the writer's answer.
fn append_entry(wal: &Wal, i: u64, e: &Entry) -> std::io::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    wal.append(
        super::wal::entry_frames([e]).unwrap(),
        i,
        Box::new(move |r| tx.send(r).unwrap()),
    )
    .unwrap();
    rx.recv().unwrap()
}

async fn append(log: &mut LogStore, entries: Vec<Entry>) {
    log.blocking_append(entries).await.expect("append flushed");
}

async fn indexes(log: &mut LogStore) -> Vec<u64> {
    log.try_get_log_entries(0..u64::MAX)
        .await
        .unwrap()
        .iter()
        .map(|e| e.log_id.index)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopened_log_has_appends_truncates_purges_vote_and_committed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = LogStore::open(dir.path()).unwrap();
        assert!(log.is_pristine());
        append(
            &mut log,
            (1..=20).map(|i| normal(i, &format!("k{i}"))).collect(),
        )
        .await;
        log.truncate_after(Some(log_id::<TypeConfig>(1, 1, 15)))
            .await
            .unwrap();
        append(&mut log, vec![blank_ent::<TypeConfig>(2, 1, 16)]).await;
        log.purge(log_id::<TypeConfig>(1, 1, 5)).await.unwrap();
        log.save_committed(Some(log_id::<TypeConfig>(2, 1, 16)))
            .await
            .unwrap();
        let vote = openraft::impls::Vote::new(2, 1);
        log.save_vote(&vote).await.unwrap();
    }
    let mut log = LogStore::open(dir.path()).unwrap();
    assert!(!log.is_pristine());
    assert_eq!(indexes(&mut log).await, (6..=16).collect::<Vec<_>>());
    let e16 = log.try_get_log_entries(16..17).await.unwrap();
    assert_eq!(
        e16[0].log_id,
        log_id::<TypeConfig>(2, 1, 16),
        "the re-appended entry replaced the truncated one"
    );
    let state = log.get_log_state().await.unwrap();
    assert_eq!(
        state.last_purged_log_id,
        Some(log_id::<TypeConfig>(1, 1, 5))
    );
    assert_eq!(
        log.read_committed().await.unwrap(),
        Some(log_id::<TypeConfig>(2, 1, 16))
    );
    assert_eq!(
        log.read_vote().await.unwrap(),
        Some(openraft::impls::Vote::new(2, 1))
    );
}

/// The newest (last) segment file.
fn only_segment(dir: &std::path::Path) -> std::path::PathBuf {
    segments(dir).pop().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_last_record_is_cut_and_everything_before_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = LogStore::open(dir.path()).unwrap();
        append(&mut log, (1..=10).map(|i| normal(i, "k")).collect()).await;
    }
    let seg = only_segment(&dir.path().join("wal"));
    let full = std::fs::metadata(&seg).unwrap().len();
    // Every cut inside the last record loses exactly that record.
    for cut in [1u64, 3, 9, 20] {
        let copy = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(copy.path().join("wal")).unwrap();
        let target = copy.path().join("wal").join(seg.file_name().unwrap());
        std::fs::copy(&seg, &target).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&target)
            .unwrap()
            .set_len(full - cut)
            .unwrap();
        let mut log = LogStore::open(copy.path()).unwrap();
        assert_eq!(
            indexes(&mut log).await,
            (1..=9).collect::<Vec<_>>(),
            "cut {cut} bytes"
        );
        // The file was repaired: appending after it and reopening works.
        append(&mut log, vec![normal(10, "again")]).await;
        drop(log);
        let mut log = LogStore::open(copy.path()).unwrap();
        assert_eq!(indexes(&mut log).await, (1..=10).collect::<Vec<_>>());
    }
}

/// Writes entries 1..=n in one segment; returns the segment and the byte
/// offset where the frame of entry `at` starts.
async fn one_segment_of(dir: &std::path::Path, n: u64, at: u64) -> (std::path::PathBuf, u64) {
    let entries: Vec<Entry> = (1..=n).map(|i| normal(i, &format!("k{i}"))).collect();
    {
        let mut log = LogStore::open(dir).unwrap();
        append(&mut log, entries.clone()).await;
    }
    let seg = only_segment(&dir.join("wal"));
    let len = std::fs::metadata(&seg).unwrap().len();
    let from_at = super::wal::entry_frames(&entries[at as usize - 1..])
        .unwrap()
        .len() as u64;
    (seg, len - from_at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_record_followed_by_valid_ones_refuses_to_start_naming_file_offset_and_index() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, at) = one_segment_of(dir.path(), 1_000, 100).await;
    let before = std::fs::read(&seg).unwrap();
    let mut bytes = before.clone();
    // One flipped byte inside entry 100 (past its 8-byte header): the CRC catches it.
    bytes[at as usize + 20] ^= 0x55;
    std::fs::write(&seg, &bytes).unwrap();
    let err = match LogStore::open(dir.path()) {
        Ok(_) => panic!("opened a log with damage in the middle of its last segment"),
        Err(e) => e.to_string(),
    };
    for part in [
        "refusing to start",
        "damaged log",
        "checksum mismatch",
        &seg.display().to_string(),
        &format!("byte offset {at}"),
        "log index 100",
        "re-sync this node from the others",
        "post-flight sink",
    ] {
        assert!(err.contains(part), "error names {part:?}: {err}");
    }
    // Nothing was cut: every acknowledged entry is still on disk.
    assert_eq!(std::fs::read(&seg).unwrap(), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_length_field_followed_by_valid_records_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, at) = one_segment_of(dir.path(), 50, 10).await;
    let mut bytes = std::fs::read(&seg).unwrap();
    // A length that runs past the end of the file looks torn, but valid records follow.
    bytes[at as usize + 2] = 0x10;
    std::fs::write(&seg, &bytes).unwrap();
    let err = match LogStore::open(dir.path()) {
        Ok(_) => panic!("cut a log whose bad frame has valid frames after it"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("refusing to start") && err.contains("log index 10"),
        "{err}"
    );
    assert_eq!(std::fs::read(&seg).unwrap(), bytes, "nothing was cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_final_record_with_nothing_after_it_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, at) = one_segment_of(dir.path(), 20, 20).await;
    let mut bytes = std::fs::read(&seg).unwrap();
    // A final write whose last sectors never made it: full length, wrong bytes.
    let n = bytes.len();
    bytes[n - 4..].copy_from_slice(&[0, 0, 0, 0]);
    std::fs::write(&seg, &bytes).unwrap();
    let mut log = LogStore::open(dir.path()).unwrap();
    assert_eq!(indexes(&mut log).await, (1..=19).collect::<Vec<_>>());
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        at,
        "cut at entry 20"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_rotate_and_fully_purged_ones_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let wal_dir = dir.path().join("wal");
    {
        let (wal, rec) = Wal::open(&wal_dir, 4096).unwrap();
        assert!(rec.entries.is_empty());
        for i in 1..=200u64 {
            append_padded(&wal, i).unwrap();
        }
        let before = std::fs::read_dir(&wal_dir).unwrap().count();
        assert!(before > 3, "4 KiB segments rotated: {before}");
        wal.purge(log_id::<TypeConfig>(1, 1, 150)).unwrap();
        // One more write drives the maintenance that follows it.
        append_entry(&wal, 201, &normal(201, "last")).unwrap();
        drop(wal);
        let after = std::fs::read_dir(&wal_dir).unwrap().count();
        assert!(
            after < before,
            "purged segments removed: {before} -> {after}"
        );
    }
    let (_wal, rec) = Wal::open(&wal_dir, 4096).unwrap();
    assert_eq!(rec.purged, Some(log_id::<TypeConfig>(1, 1, 150)));
    let kept: Vec<u64> = rec.entries.keys().copied().collect();
    assert_eq!(kept, (151..=201).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_before_the_last_segment_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let wal_dir = dir.path().join("wal");
    {
        let (wal, _) = Wal::open(&wal_dir, 4096).unwrap();
        for i in 1..=100u64 {
            append_padded(&wal, i).unwrap();
        }
    }
    let segs = segments(&wal_dir);
    assert!(segs.len() > 2);
    let mut bytes = std::fs::read(&segs[0]).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0xff;
    std::fs::write(&segs[0], &bytes).unwrap();
    let err = match Wal::open(&wal_dir, 4096) {
        Ok(_) => panic!("opened a log with a hole in the middle"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("refusing to start") && err.contains("later segment"),
        "{err}"
    );
    // Nothing was deleted on the way.
    assert_eq!(std::fs::read_dir(&wal_dir).unwrap().count(), segs.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_segment_rotation_is_retried_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let wal_dir = dir.path().join("wal");
    let write = append_padded;
    {
        let (wal, _) = Wal::open(&wal_dir, 4096).unwrap();
        // Block the name the next segment is built under: a directory cannot
        // be removed or replaced by a file, so every rotation fails.
        let blocker = wal_dir.join(format!("wal-{:020}.log.tmp", 2));
        std::fs::create_dir(&blocker).unwrap();
        for i in 1..=60 {
            write(&wal, i).expect("writes go on while rotation fails");
        }
        let segs = |d: &std::path::Path| {
            std::fs::read_dir(d)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "log")
                })
                .count()
        };
        assert_eq!(segs(&wal_dir), 1, "no segment was started");
        // The obstacle goes (space is freed): the next write rotates.
        std::fs::remove_dir(&blocker).unwrap();
        for i in 61..=70 {
            write(&wal, i).expect("write after the obstacle is gone");
        }
        assert!(segs(&wal_dir) > 1, "rotation resumed");
    }
    let (_wal, rec) = Wal::open(&wal_dir, 4096).unwrap();
    assert_eq!(
        rec.entries.keys().copied().collect::<Vec<_>>(),
        (1..=70).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftover_tmp_files_are_removed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let raft = dir.path().join("raft");
    let snaps = dir.path().join("snapshots");
    drop(LogStore::open(&raft).unwrap());
    drop(StateMachine::open(Arc::new(Table::new()), &snaps).unwrap());
    let planted = [
        snaps.join(format!("snap-{:020}.tmp", 42)),
        raft.join("vote.tmp"),
        raft.join("wal").join(format!("wal-{:020}.log.tmp", 2)),
    ];
    for p in &planted {
        std::fs::write(p, b"half a file").unwrap();
    }
    drop(LogStore::open(&raft).unwrap());
    drop(StateMachine::open(Arc::new(Table::new()), &snaps).unwrap());
    for p in &planted {
        assert!(!p.exists(), "{} is left", p.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_record_whose_checksum_holds_but_does_not_decode_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let wal_dir = dir.path().join("wal");
    {
        let (wal, _) = Wal::open(&wal_dir, 1 << 20).unwrap();
        for i in 1..=20u64 {
            append_padded(&wal, i).unwrap();
        }
    }
    // A whole, checksummed record that this version cannot decode (as one
    // written by a newer version would be): nothing tore it, so cutting it
    // could drop an acknowledged entry.
    let segs = segments(&wal_dir);
    let last = segs.last().unwrap();
    let mut payload = vec![1u8]; // the entry tag
    payload.extend_from_slice(&[0xff; 40]);
    let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    let mut bytes = std::fs::read(last).unwrap();
    let before = bytes.len();
    bytes.extend_from_slice(&frame);
    std::fs::write(last, &bytes).unwrap();
    let err = match Wal::open(&wal_dir, 1 << 20) {
        Ok(_) => panic!("opened a log whose final record does not decode"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("does not decode"), "{err}");
    assert!(err.contains(&format!("offset {before}")), "{err}");
    // Nothing was cut.
    assert_eq!(std::fs::read(last).unwrap().len(), before + frame.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_bytes_follow_appends_truncates_purges_and_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let big = |i: u64| {
        Entry::new_normal(
            log_id::<TypeConfig>(1, 1, i),
            Command::op(
                i,
                Op::Insert {
                    key: format!("k{i}"),
                    value: bytes::Bytes::from(vec![b'v'; 10_000]),
                    ttl_ms: None,
                },
            ),
        )
    };
    let mut log = LogStore::open(dir.path()).unwrap();
    assert_eq!(log.bytes(), 0);
    append(&mut log, (1..=10).map(big).collect()).await;
    let ten = log.bytes();
    assert!((100_000..110_000).contains(&ten), "{ten}");
    // Appending over an index replaces that entry's bytes.
    log.truncate_after(Some(log_id::<TypeConfig>(1, 1, 8)))
        .await
        .unwrap();
    let eight = log.bytes();
    assert!((80_000..88_000).contains(&eight), "{eight}");
    append(&mut log, vec![blank_ent::<TypeConfig>(2, 1, 9)]).await;
    assert!(log.bytes() < eight + 1_000);
    log.purge(log_id::<TypeConfig>(1, 1, 4)).await.unwrap();
    let kept = log.bytes();
    assert!((40_000..45_000).contains(&kept), "{kept}");
    drop(log);
    let log = LogStore::open(dir.path()).unwrap();
    assert_eq!(log.bytes(), kept, "recovered entries are counted");
    log.clone().truncate_after(None).await.unwrap();
    assert_eq!(log.bytes(), 0);
}
