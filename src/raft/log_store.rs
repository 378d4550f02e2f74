//! The Raft log and vote, as openraft's `RaftLogStorage`.
//!
//! Entries live in memory (a `BTreeMap` by index) until a snapshot lets
//! openraft purge them. Their approximate bytes are counted ([`LogStore::bytes`])
//! for the memory budget, which also bounds them: the compaction duty
//! snapshots and purges once they pass a share of it. In `disk` durability every change also goes to the
//! write-ahead log (`super::wal`); `append` reports an entry as flushed only
//! after the WAL fsynced it. The vote is tiny and rare, and forgetting it
//! could let a node vote twice in a term, so it gets its own file, replaced
//! atomically (write, fsync, rename, fsync the directory) before `save_vote`
//! returns.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use parking_lot::Mutex;

use super::durable_file;
use super::wal::{self, Wal};
use super::{Entry, LogId, TypeConfig, Vote};
use crate::codec::{self, Bound};

#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    mem: Mutex<LogMem>,
    wal: Option<Wal>,
    vote_path: Option<PathBuf>,
}

#[derive(Default)]
struct LogMem {
    entries: BTreeMap<u64, Entry>,
    /// Sum of `entry_bytes` over `entries`.
    bytes: u64,
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
}

impl LogStore {
    /// A log that never touches disk (`memory` durability).
    pub fn in_memory() -> Self {
        LogStore {
            inner: Arc::new(Inner {
                mem: Mutex::new(LogMem::default()),
                wal: None,
                vote_path: None,
            }),
        }
    }

    /// Opens (or creates) the durable log in `dir`, recovering what is there.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        // A vote replacement cut short (a crash, a full disk) leaves `vote.tmp`.
        wal::remove_leftover_tmp(dir)?;
        let vote_path = dir.join("vote");
        let vote = read_vote_file(&vote_path)?;
        let (wal, rec) = Wal::open(&dir.join("wal"), wal::DEFAULT_SEGMENT_BYTES)?;
        Ok(LogStore {
            inner: Arc::new(Inner {
                mem: Mutex::new(LogMem {
                    bytes: sum_bytes(&rec.entries),
                    entries: rec.entries,
                    vote,
                    committed: rec.committed,
                    purged: rec.purged,
                }),
                wal: Some(wal),
                vote_path: Some(vote_path),
            }),
        })
    }

    /// True when this store has never voted nor held an entry: the only state
    /// in which a node may initialize a cluster or join one.
    pub fn is_pristine(&self) -> bool {
        let m = self.inner.mem.lock();
        m.vote.is_none() && m.entries.is_empty() && m.purged.is_none()
    }

    /// The index of the last entry held or purged (0: none).
    pub fn last_index(&self) -> u64 {
        let m = self.inner.mem.lock();
        let held = m.entries.keys().next_back().copied();
        held.or(m.purged.map(|p| p.index)).unwrap_or(0)
    }

    /// Approximate bytes the entries held in memory take.
    pub fn bytes(&self) -> u64 {
        self.inner.mem.lock().bytes
    }
}

/// Approximate heap bytes one entry held in memory takes.
fn entry_bytes(e: &Entry) -> u64 {
    let payload = match &e.payload {
        openraft::EntryPayload::Normal(cmd) => cmd.heap_bytes(),
        // A membership: a few node ids and addresses.
        openraft::EntryPayload::Membership(_) => 256,
        openraft::EntryPayload::Blank => 0,
    };
    (std::mem::size_of::<Entry>() + payload) as u64
}

fn sum_bytes(entries: &BTreeMap<u64, Entry>) -> u64 {
    entries.values().map(entry_bytes).sum()
}

fn read_vote_file(path: &Path) -> io::Result<Option<Vote>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "vote file {} is unreadable ({why}); refusing to start, since a forgotten vote could \
                 let this node vote twice in one term. Remove this node's data directory and add it \
                 back under a new id",
                path.display()
            ),
        )
    };
    if bytes.len() < 4 {
        return Err(bad("shorter than its checksum"));
    }
    let (crc, body) = bytes.split_at(4);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err(bad("checksum mismatch"));
    }
    codec::decode_bounded(Bound::WalRecord, body)
        .map(Some)
        .map_err(|e| bad(&e.to_string()))
}

fn write_vote_file(path: &Path, vote: &Vote) -> io::Result<()> {
    let body = codec::encode(vote)?;
    durable_file::replace(path, &[&crc32fast::hash(&body).to_le_bytes(), &body])
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let m = self.inner.mem.lock();
        Ok(m.entries.range(range).map(|(_, e)| e.clone()).collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.inner.mem.lock().vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let m = self.inner.mem.lock();
        let last = m
            .entries
            .last_key_value()
            .map(|(_, e)| e.log_id)
            .or(m.purged);
        Ok(LogState {
            last_purged_log_id: m.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        if let Some(path) = self.inner.vote_path.clone() {
            let v = *vote;
            tokio::task::spawn_blocking(move || write_vote_file(&path, &v))
                .await
                .map_err(io::Error::other)??;
        }
        self.inner.mem.lock().vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.inner.mem.lock().committed = committed;
        if let Some(w) = &self.inner.wal {
            w.committed(committed)?;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.inner.mem.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id.index) else {
            callback.io_completed(Ok(()));
            return Ok(());
        };
        let frames = match &self.inner.wal {
            Some(_) => Some(wal::entry_frames(&entries)?),
            None => None,
        };
        {
            let mut m = self.inner.mem.lock();
            for e in entries {
                m.bytes += entry_bytes(&e);
                if let Some(old) = m.entries.insert(e.log_id.index, e) {
                    m.bytes -= entry_bytes(&old);
                }
            }
        }
        match (&self.inner.wal, frames) {
            (Some(w), Some(frames)) => {
                w.append(frames, last, Box::new(move |r| callback.io_completed(r)))?;
            }
            _ => callback.io_completed(Ok(())),
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let after = last_log_id.map(|l| l.index);
        {
            let mut m = self.inner.mem.lock();
            let cut = match after {
                Some(i) => m.entries.split_off(&(i + 1)),
                None => std::mem::take(&mut m.entries),
            };
            m.bytes -= sum_bytes(&cut);
        }
        if let Some(w) = &self.inner.wal {
            w.truncate_after(after)?;
        }
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        {
            let mut m = self.inner.mem.lock();
            let kept = m.entries.split_off(&(log_id.index + 1));
            let purged = std::mem::replace(&mut m.entries, kept);
            m.bytes -= sum_bytes(&purged);
            m.purged = Some(log_id);
        }
        if let Some(w) = &self.inner.wal {
            w.purge(log_id)?;
        }
        Ok(())
    }
}
