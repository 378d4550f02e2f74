//! `file:DIR`: NDJSON segment files.
//!
//! Each batch is appended to the current segment as one JSON document per
//! line, with a `written_at_ms` field added (this node's clock just before
//! the write), and fsynced before the sink acknowledges it. A segment is closed once
//! it passes `max_segment_bytes`, and the next one starts. Segments are named
//!
//! ```text
//! <completion revision of its first record, 20 digits>-n<node id>[-<k>].ndjson
//! ```
//!
//! so listing the directory in name order gives the records in hand-off
//! order, across leader changes, and two nodes sharing a directory never
//! write to the same file. A reader should skip a last line that does not
//! end in a newline: a crash can leave a torn line at the end of a segment
//! (its records were never acknowledged and are written again).
//!
//! Duplicates: the sink remembers the ids it wrote recently and, when its
//! node becomes leader, the ids in the newest segments of the directory, and
//! skips them. Where every node has its own directory, a record can still
//! appear in two nodes' directories after a leader change; readers
//! deduplicate on `handoff_id`.

use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::SinkError;
use crate::handoff::document::Document;

/// Segments rotate after this many bytes.
pub const MAX_SEGMENT_BYTES: u64 = 64 << 20;
/// How many recently written ids are remembered to skip duplicates.
const RECENT_IDS: usize = 200_000;
/// How much of the newest segments is read when this node becomes leader.
const RESCAN_BYTES: u64 = 32 << 20;

pub struct FileSink {
    inner: Arc<Mutex<Files>>,
}

struct Files {
    dir: PathBuf,
    node_id: u64,
    max_segment_bytes: u64,
    current: Option<Segment>,
    recent: HashSet<String>,
    recent_order: VecDeque<String>,
}

struct Segment {
    file: File,
    path: PathBuf,
    len: u64,
}

impl FileSink {
    pub fn open(dir: &Path, node_id: u64) -> Result<FileSink, SinkError> {
        Self::with_segment_bytes(dir, node_id, MAX_SEGMENT_BYTES)
    }

    pub fn with_segment_bytes(
        dir: &Path,
        node_id: u64,
        max_segment_bytes: u64,
    ) -> Result<FileSink, SinkError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            SinkError::transient(format!(
                "file sink: cannot create directory {}: {e}",
                dir.display()
            ))
        })?;
        Ok(FileSink {
            inner: Arc::new(Mutex::new(Files {
                dir: dir.to_path_buf(),
                node_id,
                max_segment_bytes,
                current: None,
                recent: HashSet::new(),
                recent_order: VecDeque::new(),
            })),
        })
    }

    pub async fn write(&mut self, docs: &[Document]) -> Result<(), SinkError> {
        let inner = self.inner.clone();
        let docs = docs.to_vec();
        tokio::task::spawn_blocking(move || inner.lock().write(&docs))
            .await
            .map_err(|e| SinkError::transient(format!("file sink: writer task failed: {e}")))?
    }

    pub async fn refresh_recent(&mut self) {
        let inner = self.inner.clone();
        let _ = tokio::task::spawn_blocking(move || inner.lock().rescan()).await;
    }
}

impl Files {
    fn write(&mut self, docs: &[Document]) -> Result<(), SinkError> {
        let fresh: Vec<&Document> = docs
            .iter()
            .filter(|d| !self.recent.contains(&d.id.to_string()))
            .collect();
        let Some(first) = fresh.first() else {
            return Ok(());
        };
        if self
            .current
            .as_ref()
            .is_none_or(|s| s.len >= self.max_segment_bytes)
        {
            self.current = None;
            self.current = Some(self.create_segment(first.id.revision)?);
        }
        // Each line also says when it was written (this node's clock, just
        // before the write), so a reader can check it against the time of
        // the `Evict` that followed.
        let stamp = format!(",\"written_at_ms\":{}}}", crate::raft::wall_clock_ms());
        let mut buf =
            Vec::with_capacity(fresh.iter().map(|d| d.json.len() + stamp.len() + 1).sum());
        for d in &fresh {
            match d.json.strip_suffix('}') {
                Some(fields) => {
                    buf.extend_from_slice(fields.as_bytes());
                    buf.extend_from_slice(stamp.as_bytes());
                }
                None => buf.extend_from_slice(d.json.as_bytes()),
            }
            buf.push(b'\n');
        }
        let Some(seg) = self.current.as_mut() else {
            return Err(SinkError::transient("file sink: no open segment"));
        };
        let written = seg.file.write_all(&buf).and_then(|_| seg.file.sync_data());
        if let Err(e) = written {
            // Cut off whatever part of the batch reached the file, so a
            // retry does not leave a torn line in the middle of the segment,
            // and start a new segment next time.
            let path = seg.path.clone();
            let _ = seg.file.set_len(seg.len).and_then(|_| seg.file.sync_data());
            self.current = None;
            return Err(SinkError::transient(format!(
                "file sink: cannot write {}: {e}",
                path.display()
            )));
        }
        seg.len += buf.len() as u64;
        for d in fresh {
            self.remember(d.id.to_string());
        }
        Ok(())
    }

    fn create_segment(&self, first_revision: u64) -> Result<Segment, SinkError> {
        for k in 0..1000u32 {
            let name = match k {
                0 => format!("{first_revision:020}-n{}.ndjson", self.node_id),
                k => format!("{first_revision:020}-n{}-{k}.ndjson", self.node_id),
            };
            let path = self.dir.join(name);
            match OpenOptions::new().append(true).create_new(true).open(&path) {
                Ok(file) => {
                    // Make the new name itself durable before anything in it is acknowledged.
                    File::open(&self.dir)
                        .and_then(|d| d.sync_all())
                        .map_err(|e| {
                            SinkError::transient(format!(
                                "file sink: cannot sync directory {}: {e}",
                                self.dir.display()
                            ))
                        })?;
                    return Ok(Segment { file, path, len: 0 });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(SinkError::transient(format!(
                        "file sink: cannot create {}: {e}",
                        path.display()
                    )))
                }
            }
        }
        Err(SinkError::transient(format!(
            "file sink: too many segments starting at revision {first_revision} in {}",
            self.dir.display()
        )))
    }

    fn remember(&mut self, id: String) {
        if self.recent.insert(id.clone()) {
            self.recent_order.push_back(id);
            while self.recent_order.len() > RECENT_IDS {
                if let Some(old) = self.recent_order.pop_front() {
                    self.recent.remove(&old);
                }
            }
        }
    }

    /// Learns the ids in the newest segments (up to `RESCAN_BYTES`), which
    /// another node may have written as leader.
    fn rescan(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut segments: Vec<(String, u64)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let len = e.metadata().ok()?.len();
                name.ends_with(".ndjson").then_some((name, len))
            })
            .collect();
        segments.sort();
        let mut budget = RESCAN_BYTES;
        let mut found = Vec::new();
        for (name, len) in segments.iter().rev() {
            if budget == 0 {
                break;
            }
            budget = budget.saturating_sub(*len);
            let Ok(f) = File::open(self.dir.join(name)) else {
                continue;
            };
            for line in BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                #[derive(serde::Deserialize)]
                struct Id {
                    handoff_id: String,
                }
                // A torn last line does not parse and is skipped: its records
                // were never acknowledged.
                if let Ok(id) = serde_json::from_str::<Id>(&line) {
                    found.push(id.handoff_id);
                }
            }
        }
        for id in found {
            self.remember(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{HandoffId, Record, RecordState};

    fn doc(key: &str, revision: u64) -> Document {
        let rec = Record {
            value: bytes::Bytes::from_static(br#"{"a":1}"#),
            version: 2,
            create_revision: 1,
            mod_revision: revision,
            created_at_ms: 1,
            updated_at_ms: 2,
            expires_at_ms: None,
            state: RecordState::Completed,
        };
        Document::new(
            HandoffId {
                key: key.into(),
                revision,
            },
            &rec,
        )
    }

    fn lines(dir: &Path) -> Vec<(String, String)> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
            .into_iter()
            .flat_map(|n| {
                std::fs::read_to_string(dir.join(&n))
                    .unwrap()
                    .lines()
                    .map(|l| {
                        let v: serde_json::Value = serde_json::from_str(l).unwrap();
                        (n.clone(), v["handoff_id"].as_str().unwrap().to_string())
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[tokio::test]
    async fn segments_rotate_by_size_and_sort_in_handoff_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = FileSink::with_segment_bytes(dir.path(), 2, 300).unwrap();
        for rev in [5u64, 9, 120, 121, 1000] {
            sink.write(&[doc(&format!("k{rev}"), rev)]).await.unwrap();
        }
        let got = lines(dir.path());
        let ids: Vec<&str> = got.iter().map(|(_, id)| id.as_str()).collect();
        assert_eq!(ids, ["k5@5", "k9@9", "k120@120", "k121@121", "k1000@1000"]);
        for f in std::fs::read_dir(dir.path()).unwrap() {
            let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
            for l in text.lines() {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                assert!(
                    v["written_at_ms"].as_u64().unwrap() > 1_600_000_000_000,
                    "{l}"
                );
                assert_eq!(v["value"]["a"], 1, "{l}");
            }
        }
        let files: HashSet<&str> = got.iter().map(|(f, _)| f.as_str()).collect();
        assert!(files.len() >= 2, "rotated: {files:?}");
        assert!(
            files.contains("00000000000000000005-n2.ndjson"),
            "{files:?}"
        );
    }

    #[tokio::test]
    async fn ids_already_written_are_skipped_also_by_a_node_that_takes_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = FileSink::open(dir.path(), 1).unwrap();
        a.write(&[doc("x", 3), doc("y", 4)]).await.unwrap();
        a.write(&[doc("x", 3), doc("y", 4), doc("z", 5)])
            .await
            .unwrap();
        // Node 2 shares the directory and becomes leader; it resends.
        let mut b = FileSink::open(dir.path(), 2).unwrap();
        b.refresh_recent().await;
        b.write(&[doc("y", 4), doc("z", 5), doc("w", 6)])
            .await
            .unwrap();
        let ids: Vec<String> = lines(dir.path()).into_iter().map(|(_, id)| id).collect();
        assert_eq!(ids, ["x@3", "y@4", "z@5", "w@6"]);
    }

    #[tokio::test]
    async fn a_torn_last_line_is_ignored_by_the_rescan() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = FileSink::open(dir.path(), 1).unwrap();
        a.write(&[doc("x", 3)]).await.unwrap();
        let seg = dir.path().join("00000000000000000003-n1.ndjson");
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(br#"{"handoff_id":"y@4","ke"#).unwrap();
        let mut b = FileSink::open(dir.path(), 2).unwrap();
        b.refresh_recent().await;
        b.write(&[doc("y", 4)]).await.unwrap();
        let new_seg =
            std::fs::read_to_string(dir.path().join("00000000000000000004-n2.ndjson")).unwrap();
        assert!(
            new_seg.contains("\"y@4\""),
            "y was written again: {new_seg}"
        );
    }

    #[tokio::test]
    async fn an_unwritable_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-dir");
        std::fs::write(&blocker, b"x").unwrap();
        let e = FileSink::open(&blocker.join("sub"), 1).err().unwrap();
        assert!(e.message.contains("not-a-dir"), "{e}");
    }
}
