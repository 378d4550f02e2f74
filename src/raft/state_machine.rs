//! openraft's `RaftStateMachine` over `crate::state::Store`, and snapshots.
//!
//! Applying: every committed entry goes through `Store::apply` in log order,
//! on openraft's state-machine task; its outcome is sent back to the proposer.
//! Blank and membership entries only advance the revision.
//!
//! Snapshots: openraft asks for a builder between two applies, so copying the
//! table at that moment gives a view consistent at exactly `last_applied`
//! (records share their value buffers, so the copy is pointers, not values).
//! Encoding and writing the file then happen on a blocking thread while
//! applies go on. A snapshot is one self-checking blob:
//! `MAGIC | crc32 | encoded (SnapshotMeta, SnapshotBody)`; the same bytes are
//! stored in `DIR/current.snap` (replaced atomically) and streamed to peers.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use parking_lot::Mutex;

use super::{LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig};
use crate::codec;
use crate::state::{SnapshotBody, Store, SNAPSHOT_FORMAT};

const MAGIC: &[u8; 8] = b"IFSNAP1\n";

#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<Store>,
    applied: Mutex<(Option<LogId>, StoredMembership)>,
    /// Where snapshots are kept in `disk` durability; `None` keeps them in memory.
    dir: Option<PathBuf>,
    current: Mutex<Option<CurrentSnapshot>>,
}

struct CurrentSnapshot {
    meta: SnapshotMeta,
    /// The blob itself in `memory` durability; in `disk` it is read from the file.
    bytes: Option<Arc<Vec<u8>>>,
}

impl StateMachineStore {
    /// A state machine whose snapshots live in memory.
    pub fn in_memory(store: Arc<Store>) -> Self {
        Self::new(store, None)
    }

    /// A state machine whose snapshots live in `dir`; restores the last one.
    pub fn open(store: Arc<Store>, dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let sm = Self::new(store, Some(dir.to_path_buf()));
        let path = dir.join("current.snap");
        match std::fs::read(&path) {
            Ok(bytes) => {
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
                tracing::info!(index = ?meta.last_log_id.map(|l| l.index), records = body.records.len(), "restored snapshot");
                sm.restore(meta, body, None);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(sm)
    }

    fn new(store: Arc<Store>, dir: Option<PathBuf>) -> Self {
        StateMachineStore {
            inner: Arc::new(Inner {
                store,
                applied: Mutex::new((None, StoredMembership::default())),
                dir,
                current: Mutex::new(None),
            }),
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    /// The log index of the snapshot this node holds, if any.
    pub fn snapshot_index(&self) -> Option<u64> {
        self.inner
            .current
            .lock()
            .as_ref()
            .and_then(|c| c.meta.last_log_id.map(|l| l.index))
    }

    fn restore(&self, meta: SnapshotMeta, body: SnapshotBody, bytes: Option<Arc<Vec<u8>>>) {
        let revision = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        self.inner.store.restore(body, revision);
        *self.inner.applied.lock() = (meta.last_log_id, meta.last_membership.clone());
        *self.inner.current.lock() = Some(CurrentSnapshot { meta, bytes });
    }

    /// Keeps `bytes` as the current snapshot: atomically replaced on disk, or in memory.
    fn keep(&self, meta: &SnapshotMeta, bytes: &Arc<Vec<u8>>) -> io::Result<()> {
        let kept = match &self.inner.dir {
            Some(dir) => {
                let tmp = dir.join("current.snap.tmp");
                let path = dir.join("current.snap");
                {
                    let mut f = std::fs::File::create(&tmp)?;
                    f.write_all(bytes)?;
                    f.sync_all()?;
                }
                std::fs::rename(&tmp, &path)?;
                super::wal::sync_dir(dir)?;
                None
            }
            None => Some(bytes.clone()),
        };
        let mut cur = self.inner.current.lock();
        let newer = cur
            .as_ref()
            .map(|c| c.meta.last_log_id < meta.last_log_id)
            .unwrap_or(true);
        if newer {
            *cur = Some(CurrentSnapshot {
                meta: meta.clone(),
                bytes: kept,
            });
        }
        Ok(())
    }
}

fn encode_snapshot(meta: &SnapshotMeta, body: &SnapshotBody) -> io::Result<Vec<u8>> {
    let payload = codec::encode(&(meta, body))?;
    let mut out = Vec::with_capacity(payload.len() + 12);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
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
    let (meta, body): (SnapshotMeta, SnapshotBody) =
        codec::decode(payload).map_err(|e| e.to_string())?;
    if body.format != SNAPSHOT_FORMAT {
        return Err(format!(
            "unknown snapshot format {} (this build reads {SNAPSHOT_FORMAT})",
            body.format
        ));
    }
    Ok((meta, body))
}

pub struct SnapshotBuilder {
    sm: StateMachineStore,
    meta: SnapshotMeta,
    body: Option<SnapshotBody>,
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
        let bytes = tokio::task::spawn_blocking(move || -> io::Result<Vec<u8>> {
            let bytes = Arc::new(encode_snapshot(&meta, &body)?);
            sm.keep(&meta, &bytes)?;
            Ok(Arc::try_unwrap(bytes).unwrap_or_else(|a| (*a).clone()))
        })
        .await
        .map_err(io::Error::other)??;
        tracing::info!(
            index = ?self.meta.last_log_id.map(|l| l.index),
            records = count,
            bytes = bytes.len(),
            "built snapshot"
        );
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: bytes,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok(self.inner.applied.lock().clone())
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let store = &self.inner.store;
        while let Some((entry, responder)) = entries.try_next().await? {
            let log_id = entry.log_id();
            let index = log_id.index;
            let outcome = match entry.payload {
                EntryPayload::Normal(cmd) => Some(store.apply(index, &cmd)),
                EntryPayload::Membership(m) => {
                    self.inner.applied.lock().1 = StoredMembership::new(Some(log_id), m);
                    store.advance_revision(index);
                    None
                }
                EntryPayload::Blank => {
                    store.advance_revision(index);
                    None
                }
            };
            self.inner.applied.lock().0 = Some(log_id);
            if let Some(r) = responder {
                // Membership and blank entries have no outcome of their own (`None`).
                r.send(outcome);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let (last_applied, membership) = self.inner.applied.lock().clone();
        SnapshotBuilder {
            sm: self.clone(),
            meta: SnapshotMeta {
                last_log_id: last_applied,
                last_membership: membership,
            },
            body: Some(self.inner.store.export()),
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
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            let (_, body) = decode_snapshot(&bytes).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("received snapshot is unreadable: {e}"))
            })?;
            sm.keep(&meta, &bytes)?;
            let records = body.records.len();
            let keep_bytes = sm.inner.dir.is_none().then_some(bytes);
            sm.restore(meta.clone(), body, keep_bytes);
            tracing::info!(index = ?meta.last_log_id.map(|l| l.index), records, "installed snapshot from leader");
            Ok(())
        })
        .await
        .map_err(io::Error::other)?
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let (meta, bytes) = {
            let cur = self.inner.current.lock();
            match cur.as_ref() {
                None => return Ok(None),
                Some(c) => (c.meta.clone(), c.bytes.clone()),
            }
        };
        let data = match (bytes, &self.inner.dir) {
            (Some(b), _) => (*b).clone(),
            (None, Some(dir)) => {
                let path = dir.join("current.snap");
                tokio::fs::read(&path).await?
            }
            (None, None) => return Ok(None),
        };
        Ok(Some(Snapshot {
            meta,
            snapshot: data,
        }))
    }
}
