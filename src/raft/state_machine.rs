//! openraft's `RaftStateMachine` over `crate::state::Table`, and snapshots.
//!
//! Applying: every committed entry goes through `Table::apply` in log order,
//! on openraft's state-machine task; its outcome is sent back to the proposer.
//! Blank and membership entries only advance the revision.
//!
//! Snapshots: openraft asks for a builder between two applies, so copying the
//! table at that moment gives a view consistent at exactly `last_applied`
//! (records share their value buffers, so the copy is pointers, not values).
//! Encoding and writing the file then happen on a blocking thread while
//! applies go on. A snapshot is one self-checking blob:
//! `MAGIC | crc32 | encoded (SnapshotMeta, SnapshotBody)`; the same bytes are
//! stored as `DIR/snap-<index>.snap` (written, fsynced, renamed; older ones
//! removed) and streamed to peers. A snapshot never replaces a newer one: a
//! build of older state that finishes after an install is dropped.
//!
//! Memory: in `disk` durability a snapshot is encoded straight into its
//! file through a small buffer, so building one holds only the copy of the
//! table's keys and record slots (values are shared). In `memory`
//! durability, and while a received snapshot is installed, the encoded blob
//! is a second copy of the table. What a build or an install holds is
//! reserved (`snapshot_bytes`, part of the memory budget's account) from the
//! moment the builder is made until it is dropped, and for the time an
//! install decodes and restores.

use std::io::{self, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use parking_lot::Mutex;

use super::clock::LeaderClock;
use super::{LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig};
use crate::codec::{self, Bound};
use crate::memory::{Reservation, Reservations};
use crate::state::{SnapshotBody, SnapshotBodyV2, SnapshotBodyV3, Table, SNAPSHOT_FORMAT};

pub(super) const MAGIC: &[u8; 8] = b"IFSNAP1\n";

/// The buffer a snapshot is encoded through on its way to the file.
const WRITE_BUFFER_BYTES: usize = 256 << 10;

#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Inner>,
}

struct Inner {
    table: Arc<Table>,
    applied: Mutex<(Option<LogId>, StoredMembership)>,
    /// Where snapshots are kept in `disk` durability; `None` keeps them in memory.
    dir: Option<PathBuf>,
    current: Mutex<Option<CurrentSnapshot>>,
    /// Serializes `keep`: a snapshot built from older state must never
    /// replace a newer one installed meanwhile (builds run concurrently).
    keeping: Mutex<()>,
    /// Snapshots being built or installed, by their expected size.
    snapshots: Reservations,
    /// The node's leader clock, told the newest stamp of every applied batch.
    clock: std::sync::OnceLock<Arc<LeaderClock>>,
}

#[derive(Clone)]
struct CurrentSnapshot {
    meta: SnapshotMeta,
    /// `memory` durability: the blob itself. `disk`: it is in `snapshot_file`.
    bytes: Option<Arc<Vec<u8>>>,
}

fn snapshot_index(meta: &SnapshotMeta) -> u64 {
    meta.last_log_id.map(|l| l.index).unwrap_or(0)
}

/// `DIR/snap-<index>.snap`: the name says which snapshot a file holds, so a
/// reader never pairs one snapshot's meta with another's bytes.
fn snapshot_file(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("snap-{index:020}.snap"))
}

fn snapshot_files(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for ent in std::fs::read_dir(dir)? {
        let path = ent?.path();
        let index = path.file_name().and_then(|n| n.to_str()).and_then(|n| {
            n.strip_prefix("snap-")?
                .strip_suffix(".snap")?
                .parse::<u64>()
                .ok()
        });
        if let Some(i) = index {
            out.push((i, path));
        }
    }
    out.sort();
    Ok(out)
}

impl StateMachine {
    /// A state machine whose snapshots live in memory.
    pub fn in_memory(table: Arc<Table>) -> Self {
        Self::new(table, None)
    }

    /// A state machine whose snapshots live in `dir`; restores the newest one.
    pub fn open(table: Arc<Table>, dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        // A snapshot write cut short (a crash, a full disk) leaves `*.tmp`.
        super::wal::remove_leftover_tmp(dir)?;
        let sm = Self::new(table, Some(dir.to_path_buf()));
        if let Some((_, path)) = snapshot_files(dir)?.pop() {
            let bytes = std::fs::read(&path)?;
            let (meta, body) = decode_snapshot(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "snapshot {} is unreadable: {e}. Remove this node's data directory and \
                         add it back under a new id",
                        path.display()
                    ),
                )
            })?;
            tracing::info!(
                index = snapshot_index(&meta),
                records = body.records.len(),
                "restored snapshot"
            );
            *sm.inner.current.lock() = Some(CurrentSnapshot {
                meta: meta.clone(),
                bytes: None,
            });
            sm.restore(meta, body);
        }
        Ok(sm)
    }

    fn new(table: Arc<Table>, dir: Option<PathBuf>) -> Self {
        StateMachine {
            inner: Arc::new(Inner {
                table,
                applied: Mutex::new((None, StoredMembership::default())),
                dir,
                current: Mutex::new(None),
                keeping: Mutex::new(()),
                snapshots: Reservations::default(),
                clock: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Tells `clock` the newest stamp of every applied batch (with its
    /// entry's index), so that this node carries on from the leaders' time
    /// should it lead.
    pub fn feed_clock(&self, clock: Arc<LeaderClock>) {
        let _ = self.inner.clock.set(clock);
    }

    pub fn table(&self) -> &Arc<Table> {
        &self.inner.table
    }

    /// Bytes reserved for snapshots being built or installed right now.
    pub fn snapshot_bytes(&self) -> u64 {
        self.inner.snapshots.bytes()
    }

    /// Where snapshots being received count their bytes (the peer service).
    pub fn snapshot_reservations(&self) -> Reservations {
        self.inner.snapshots.clone()
    }

    /// The log index of the snapshot this node holds, if any.
    pub fn snapshot_index(&self) -> Option<u64> {
        self.inner
            .current
            .lock()
            .as_ref()
            .map(|c| snapshot_index(&c.meta))
    }

    /// Replaces the state with a snapshot's.
    fn restore(&self, meta: SnapshotMeta, body: SnapshotBody) {
        self.inner.table.restore(body, snapshot_index(&meta));
        *self.inner.applied.lock() = (meta.last_log_id, meta.last_membership);
    }

    /// Keeps `blob` as the current snapshot (a file in `disk` durability),
    /// unless the one already kept is at least as new. Blocking I/O.
    fn keep(&self, meta: &SnapshotMeta, blob: Blob<'_>) -> io::Result<bool> {
        let _one_at_a_time = self.inner.keeping.lock();
        let newer = self
            .inner
            .current
            .lock()
            .as_ref()
            .is_none_or(|c| c.meta.last_log_id < meta.last_log_id);
        if !newer {
            return Ok(false);
        }
        let index = snapshot_index(meta);
        let kept = match (&self.inner.dir, blob) {
            (Some(dir), Blob::Encoded(bytes)) => {
                super::durable_file::replace(&snapshot_file(dir, index), &[bytes])?;
                None
            }
            (Some(dir), Blob::Body(body)) => {
                super::durable_file::replace_with(&snapshot_file(dir, index), |f| {
                    write_snapshot(f, meta, body)
                })?;
                None
            }
            (None, Blob::Encoded(bytes)) => Some(bytes.clone()),
            (None, Blob::Body(body)) => Some(Arc::new(encode_snapshot(meta, body)?)),
        };
        *self.inner.current.lock() = Some(CurrentSnapshot {
            meta: meta.clone(),
            bytes: kept,
        });
        if let Some(dir) = &self.inner.dir {
            for (i, old) in snapshot_files(dir)? {
                if i < index {
                    std::fs::remove_file(old)?;
                }
            }
        }
        Ok(true)
    }
}

/// `MAGIC | crc32 | payload`, built in one buffer of the blob's exact size
/// (the blob is as large as the table: no second copy).
/// What [`StateMachine::keep`] keeps: a blob as received, or a body built
/// here (encoded straight into the file in `disk` durability).
enum Blob<'a> {
    Encoded(&'a Arc<Vec<u8>>),
    Body(&'a SnapshotBody),
}

/// Wraps a writer, computing the CRC of what goes through.
struct Crc32Writer<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for Crc32Writer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the blob [`encode_snapshot`] would make into `f`, encoding
/// through a small buffer: the snapshot is never whole in memory. The CRC
/// is known only at the end, so its place is written last.
fn write_snapshot(
    f: &mut std::fs::File,
    meta: &SnapshotMeta,
    body: &SnapshotBody,
) -> io::Result<()> {
    f.write_all(MAGIC)?;
    f.write_all(&[0; 4])?;
    let crc = {
        let mut w = Crc32Writer {
            inner: io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, &mut *f),
            crc: crc32fast::Hasher::new(),
        };
        codec::encode_to_writer(&(meta, body), &mut w)?;
        w.flush()?;
        w.crc.clone().finalize()
    };
    f.seek(io::SeekFrom::Start(MAGIC.len() as u64))?;
    f.write_all(&crc.to_le_bytes())
}

pub(super) fn encode_snapshot(meta: &SnapshotMeta, body: &SnapshotBody) -> io::Result<Vec<u8>> {
    let mut header = [0u8; 12];
    header[..8].copy_from_slice(MAGIC);
    let mut out = codec::encode_after(&header, &(meta, body))?;
    let crc = crc32fast::hash(&out[12..]);
    out[8..12].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Checks and decodes a snapshot blob, from disk or from a peer.
pub fn decode_snapshot(bytes: &[u8]) -> Result<(SnapshotMeta, SnapshotBody), String> {
    if bytes.len() < 12 || &bytes[..8] != MAGIC {
        return Err("not an inflight snapshot (bad magic)".into());
    }
    let crc = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    let payload = &bytes[12..];
    if crc32fast::hash(payload) != crc {
        return Err("checksum mismatch".into());
    }
    // The body's first field is its format: read it, then the body as that
    // format wrote it.
    let (_, format): (SnapshotMeta, u32) =
        codec::decode_snapshot_prefix(payload).map_err(|e| e.to_string())?;
    let (meta, body) = match format {
        SNAPSHOT_FORMAT => {
            codec::decode_bounded::<(SnapshotMeta, SnapshotBody)>(Bound::Snapshot, payload)
                .map_err(|e| e.to_string())?
        }
        3 => {
            let (meta, old): (SnapshotMeta, SnapshotBodyV3) =
                codec::decode_bounded(Bound::Snapshot, payload).map_err(|e| e.to_string())?;
            (meta, SnapshotBody::from(old))
        }
        2 => {
            let (meta, old): (SnapshotMeta, SnapshotBodyV2) =
                codec::decode_bounded(Bound::Snapshot, payload).map_err(|e| e.to_string())?;
            (meta, SnapshotBody::from(old))
        }
        other => {
            return Err(format!(
                "unknown snapshot format {other} (this build reads 2, 3 and {SNAPSHOT_FORMAT})"
            ))
        }
    };
    Ok((meta, body))
}

pub struct SnapshotBuilder {
    sm: StateMachine,
    meta: SnapshotMeta,
    body: Option<SnapshotBody>,
    /// The blob's expected size, counted until the builder is dropped.
    _reserved: Reservation,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let body = self
            .body
            .take()
            .ok_or_else(|| io::Error::other("snapshot builder used twice"))?;
        let meta = self.meta.clone();
        let sm = self.sm.clone();
        let count = body.records.len();
        // openraft takes only the meta of a built snapshot (peers are sent
        // `get_current_snapshot`), so the blob is not returned: in `disk`
        // durability it is only ever in the file.
        tokio::task::spawn_blocking(move || sm.keep(&meta, Blob::Body(&body)))
            .await
            .map_err(io::Error::other)??;
        tracing::info!(
            index = ?self.meta.last_log_id.map(|l| l.index),
            records = count,
            "built snapshot"
        );
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Vec::new(),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok(self.inner.applied.lock().clone())
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let table = &self.inner.table;
        // The newest stamp applied in this batch, and its entry's index.
        let mut newest: Option<(u64, u64)> = None;
        while let Some((entry, responder)) = entries.try_next().await? {
            let log_id = entry.log_id();
            let index = log_id.index;
            let outcome = match entry.payload {
                EntryPayload::Normal(cmd) => {
                    if newest.is_none_or(|(_, at)| cmd.at_ms >= at) {
                        newest = Some((index, cmd.at_ms));
                    }
                    Some(table.apply(index, &cmd))
                }
                EntryPayload::Membership(m) => {
                    self.inner.applied.lock().1 = StoredMembership::new(Some(log_id), m);
                    table.advance_revision(index);
                    None
                }
                EntryPayload::Blank => {
                    table.advance_revision(index);
                    None
                }
            };
            self.inner.applied.lock().0 = Some(log_id);
            if let Some(r) = responder {
                // Membership and blank entries have no outcome of their own (`None`).
                r.send(outcome);
            }
        }
        if let (Some(clock), Some((index, at_ms))) = (self.inner.clock.get(), newest) {
            clock.observe(index, at_ms);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let (last_applied, membership) = self.inner.applied.lock().clone();
        let table = &self.inner.table;
        let body = table.export();
        // The copy of the table: keys and record slots (values are shared
        // buffers); in `memory` durability also the blob, as large as the
        // table, while `disk` encodes straight into the file.
        let copy: usize = body
            .records
            .iter()
            .map(|(k, _)| k.len() + std::mem::size_of::<(String, crate::state::Record)>())
            .sum();
        let mut expected = copy as u64 + table.request_id_bytes() + WRITE_BUFFER_BYTES as u64;
        if self.inner.dir.is_none() {
            expected += table.memory_bytes() as u64 + table.request_id_bytes();
        }
        SnapshotBuilder {
            _reserved: self.inner.snapshots.reserve(expected),
            sm: self.clone(),
            meta: SnapshotMeta {
                last_log_id: last_applied,
                last_membership: membership,
            },
            body: Some(body),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let bytes = Arc::new(snapshot);
        let sm = self.clone();
        let meta = meta.clone();
        // The body decoded from the blob (the blob itself is counted by
        // whoever received it).
        let reserved = self.inner.snapshots.reserve(bytes.len() as u64);
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            let _reserved = reserved;
            let (_, body) = decode_snapshot(&bytes).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("received snapshot is unreadable: {e}"))
            })?;
            sm.keep(&meta, Blob::Encoded(&bytes))?;
            let records = body.records.len();
            sm.restore(meta.clone(), body);
            tracing::info!(index = ?meta.last_log_id.map(|l| l.index), records, "installed snapshot from leader");
            Ok(())
        })
        .await
        .map_err(io::Error::other)?
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        // A newer snapshot may replace (and delete) the file between taking
        // the meta and reading it; then take the newer one.
        for _ in 0..3 {
            let Some(cur) = self.inner.current.lock().clone() else {
                return Ok(None);
            };
            let data = match (cur.bytes, &self.inner.dir) {
                (Some(b), _) => (*b).clone(),
                (None, Some(dir)) => {
                    match tokio::fs::read(snapshot_file(dir, snapshot_index(&cur.meta))).await {
                        Ok(d) => d,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                    }
                }
                (None, None) => return Ok(None),
            };
            return Ok(Some(Snapshot {
                meta: cur.meta,
                snapshot: data,
            }));
        }
        Err(io::Error::other(
            "the current snapshot kept being replaced while being read",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::snapshot_v2::{RememberedV2, SnapshotBodyV2};
    use crate::state::{Applied, Receipt, Record, RecordState};

    fn blob(payload: Vec<u8>) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
        out
    }

    #[test]
    fn a_format_3_snapshot_is_read_with_no_dead_letters() {
        let old = crate::state::SnapshotBodyV3 {
            format: 3,
            revision: 4,
            records: Vec::new(),
            requests: Vec::new(),
        };
        let meta = SnapshotMeta::default();
        let bytes = blob(codec::encode(&(&meta, &old)).unwrap());
        let (_, body) = decode_snapshot(&bytes).unwrap();
        assert_eq!((body.format, body.revision), (SNAPSHOT_FORMAT, 4));
        assert!(body.dead_letters.is_empty());
    }

    #[test]
    fn a_snapshot_streamed_into_its_file_is_the_blob_encode_snapshot_makes() {
        let table = Table::new();
        for i in 0..50u64 {
            let op = crate::state::Op::Insert {
                key: format!("k{i}"),
                value: bytes::Bytes::from(vec![b'v'; 40_000]),
                ttl_ms: None,
            };
            table
                .apply(i + 1, &crate::state::Command::op(i, op))
                .unwrap();
        }
        let body = table.export();
        let meta = SnapshotMeta::default();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        crate::raft::durable_file::replace_with(&path, |f| write_snapshot(f, &meta, &body))
            .unwrap();
        let written = std::fs::read(&path).unwrap();
        assert!(written.len() > 2_000_000, "larger than the write buffer");
        assert_eq!(written, encode_snapshot(&meta, &body).unwrap());
        let (_, back) = decode_snapshot(&written).unwrap();
        assert_eq!(back.records, body.records);
    }

    #[test]
    fn a_format_2_snapshot_is_read_with_its_request_ids_as_receipts() {
        let record = Record {
            value: bytes::Bytes::from_static(b"v"),
            version: 3,
            create_revision: 1,
            mod_revision: 7,
            created_at_ms: 10,
            updated_at_ms: 20,
            expires_at_ms: None,
            state: RecordState::Live,
        };
        let old = SnapshotBodyV2 {
            format: 2,
            revision: 9,
            records: vec![("k".into(), record.clone())],
            requests: vec![RememberedV2 {
                id: "r".into(),
                fingerprint: 5,
                at_ms: 20,
                outcome: Ok(vec![Applied {
                    key: "k".into(),
                    record: record.clone(),
                    revision: 7,
                }]),
            }],
        };
        let meta = SnapshotMeta::default();
        let bytes = blob(codec::encode(&(&meta, &old)).unwrap());
        let (_, body) = decode_snapshot(&bytes).unwrap();
        assert_eq!(body.format, SNAPSHOT_FORMAT);
        assert_eq!(body.revision, 9);
        assert_eq!(body.records, vec![("k".to_string(), record)]);
        assert_eq!(body.requests.len(), 1);
        let requests = body.requests.to_vec();
        let r = &requests[0];
        assert_eq!(
            (r.id.as_str(), r.fingerprint, r.at_ms, r.revision),
            ("r", 5, 20, 7)
        );
        assert_eq!(
            r.answer,
            Ok(vec![Receipt {
                version: 3,
                mod_revision: 7,
                state: RecordState::Live
            }])
        );

        // The current format round-trips; an unknown one is refused.
        let again = encode_snapshot(&meta, &body).unwrap();
        assert_eq!(
            decode_snapshot(&again).unwrap().1.requests.to_vec(),
            requests
        );
        assert!(body.dead_letters.is_empty());
        let mut future = body;
        future.format = SNAPSHOT_FORMAT + 1;
        let e = decode_snapshot(&encode_snapshot(&meta, &future).unwrap()).unwrap_err();
        assert!(e.contains("unknown snapshot format"), "{e}");
    }
}
