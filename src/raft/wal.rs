//! The write-ahead log under the Raft log store (`disk` durability).
//!
//! Why our own and not a library: the log is append-only, read back only at
//! start-up (entries stay in memory until purged), and must report exactly
//! which tail it discarded after a crash. A few hundred lines of framing give
//! us that, group commit, and a recovery rule we can test byte by byte; the
//! embedded stores in the design table would hide the torn tail behind their
//! own recovery and cost a B-tree commit per batch.
//!
//! Layout: `DIR/wal-<seq>.log` segments, replayed in `seq` order. Each record
//! is framed as `len: u32 LE | crc32: u32 LE | payload`, the CRC covering the
//! payload, whose first byte is a tag:
//!
//! | tag | body | meaning |
//! | --- | --- | --- |
//! | 0 | (purged, committed) | segment header: state carried over from older segments |
//! | 1 | entry | a log entry; replaces any entry at or after its index |
//! | 2 | Option<index> | truncate: drop entries after index (all if none) |
//! | 3 | log id | purge: drop entries up to and including it |
//! | 4 | Option<log id> | committed (a hint; not fsynced on its own) |
//!
//! Recovery reads records until the first frame that is short, fails its CRC
//! or does not decode. What happens then depends on what follows it:
//!
//! - Nothing readable after it, in the last segment: a torn final write, the
//!   one thing a crash mid-write leaves (a short record, or a full-length one
//!   whose last sectors never reached the disk). Its entries were never
//!   fsynced, so never acknowledged. The file is cut there, one warning line
//!   says what was discarded, and the node catches up from the leader.
//! - An intact record after it (searched byte by byte, since the bad frame's
//!   length cannot be trusted), or later segments: damage, not a tear. The
//!   records after it were written, maybe fsynced and acknowledged, after the
//!   bad one; cutting would make the node forget entries it acknowledged, and
//!   such a node can help elect a leader that lacks committed entries. So the
//!   node refuses to start, naming the file, the byte offset and the log index
//!   of the damaged record and the way out: re-sync this node from the others
//!   (delete only its Raft log and snapshots; keep its vote, `node.id` and the
//!   post-flight sink). A gap in the indexes is refused the same way.
//!
//! A crash during a large group-commit write could in principle persist a
//! later page of that write and not an earlier one; that too reads as damage
//! and makes the node refuse rather than guess: refusing is the safe error.
//!
//! Ordering on disk: a purge record is fsynced before any segment it makes
//! obsolete is removed, and a full segment is fsynced before the next one is
//! started, so recovery never finds newer durable data behind lost older data.
//!
//! Group commit: one writer thread takes every request queued since its last
//! write, writes them with one `write` and makes them durable with one
//! `fdatasync`, then completes all their callbacks.
//!
//! A segment is removed once every entry in it is purged (covered by a
//! snapshot); a new segment starts when the current one passes the size limit
//! and begins with a header record so that purge and commit survive removal.
//! A new segment is built as `wal-<seq>.log.tmp` and renamed into place, so a
//! rotation that fails (a full disk) leaves nothing behind and is simply tried
//! again after the next write; `*.tmp` files found at start-up are removed.
//!
//! A failed write or fsync is final: the writer refuses everything after it
//! (nothing may land behind a possible hole), every pending append reports
//! the error, openraft stops its core on it, and the process exits so that a
//! supervisor restarts it (see `crate::node`).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use super::{Entry, LogId};
use crate::codec::{self, Bound};

pub(super) const TAG_BASE: u8 = 0;
pub(super) const TAG_ENTRY: u8 = 1;
pub(super) const TAG_TRUNCATE: u8 = 2;
pub(super) const TAG_PURGE: u8 = 3;
pub(super) const TAG_COMMITTED: u8 = 4;

pub(super) const FRAME_HEADER: usize = 8;
/// A frame claiming more than this is corrupt, not large.
const MAX_FRAME: usize = 256 << 20;
pub(crate) const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

/// Completion callback of a write request.
pub(crate) type Done = Box<dyn FnOnce(io::Result<()>) + Send>;

/// Appends one framed record (tag + encoded body) to `buf`.
pub(super) fn frame<T: serde::Serialize>(buf: &mut Vec<u8>, tag: u8, body: &T) -> io::Result<()> {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; FRAME_HEADER]);
    buf.push(tag);
    codec::encode_into(body, buf)?;
    let payload = &buf[start + FRAME_HEADER..];
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

pub(crate) fn entry_frames<'a>(
    entries: impl IntoIterator<Item = &'a Entry>,
) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    for e in entries {
        frame(&mut buf, TAG_ENTRY, e)?;
    }
    Ok(buf)
}

/// What start-up found on disk.
pub(crate) struct Recovered {
    pub entries: BTreeMap<u64, Entry>,
    pub purged: Option<LogId>,
    pub committed: Option<LogId>,
}

struct Segment {
    seq: u64,
    path: PathBuf,
    /// Highest entry index ever written to this segment.
    max_index: u64,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("wal-{seq:020}.log"))
}

fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for ent in fs::read_dir(dir)? {
        let ent = ent?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = name
            .strip_prefix("wal-")
            .and_then(|s| s.strip_suffix(".log"))
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push((seq, ent.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Removes `*.tmp` files in `dir`: a new segment or a replaced file whose
/// write failed or was cut short by a crash. Nothing reads them.
pub(crate) fn remove_leftover_tmp(dir: &Path) -> io::Result<()> {
    let mut removed = false;
    for ent in fs::read_dir(dir)? {
        let path = ent?.path();
        if path.extension().is_some_and(|x| x == "tmp") {
            fs::remove_file(&path)?;
            tracing::info!(file = %path.display(), "removed a leftover temporary file");
            removed = true;
        }
    }
    if removed {
        sync_dir(dir)?;
    }
    Ok(())
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What to do about damage, in plain words. `dir` is the WAL directory.
fn recovery_step(dir: &Path) -> String {
    format!(
        "To recover, re-sync this node from the others while they have a leader: stop it, delete \
         only its Raft log and state (the WAL directory {} and the snapshots directory of its data \
         directory), keep the vote file beside the WAL directory, node.id and the post-flight sink \
         (by default DATA_DIR/postflight) untouched, and start it again; it catches up from the leader",
        dir.display()
    )
}

/// Damage that recovery must not paper over: it would forget entries this
/// node may have acknowledged.
fn unrecoverable(what: String, dir: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "wal: {what}; refusing to start, since entries this node acknowledged may be lost. {}",
            recovery_step(dir)
        ),
    )
}

/// Why a frame could not be read.
pub(super) enum FrameError {
    Torn(&'static str),
    Corrupt(String),
    /// The checksum holds but the record does not decode: nothing tore it,
    /// so it is never cut (written by a newer version, or damaged before its
    /// checksum was computed).
    Undecodable(String),
}

impl FrameError {
    fn describe(&self) -> String {
        match self {
            FrameError::Torn(w) => format!("torn write ({w})"),
            FrameError::Corrupt(w) => format!("corrupt record ({w})"),
            FrameError::Undecodable(w) => format!(
                "a record whose checksum holds but which does not decode ({w}; written by a newer \
                 version of inflight?)"
            ),
        }
    }
}

/// The payload of the frame at `pos`, if its header and checksum hold.
fn frame_at(bytes: &[u8], pos: usize) -> Result<&[u8], FrameError> {
    let rest = &bytes[pos..];
    if rest.len() < FRAME_HEADER {
        return Err(FrameError::Torn("partial frame header"));
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    if len == 0 || len > MAX_FRAME {
        return Err(FrameError::Corrupt(format!(
            "impossible frame length {len}"
        )));
    }
    if rest.len() < FRAME_HEADER + len {
        return Err(FrameError::Torn("partial frame body"));
    }
    let payload = &rest[FRAME_HEADER..FRAME_HEADER + len];
    if crc32fast::hash(payload) != crc {
        return Err(FrameError::Corrupt("checksum mismatch".into()));
    }
    Ok(payload)
}

/// Decodes a record without applying it; returns the entry index of an entry record.
pub(super) fn decode_record(payload: &[u8]) -> Result<Option<u64>, codec::CodecError> {
    let (tag, body) = (payload[0], &payload[1..]);
    match tag {
        TAG_BASE => codec::decode_bounded::<(Option<LogId>, Option<LogId>)>(Bound::WalRecord, body)
            .map(|_| None),
        TAG_ENTRY => {
            codec::decode_bounded::<Entry>(Bound::WalRecord, body).map(|e| Some(e.log_id.index))
        }
        TAG_TRUNCATE => codec::decode_bounded::<Option<u64>>(Bound::WalRecord, body).map(|_| None),
        TAG_PURGE => codec::decode_bounded::<LogId>(Bound::WalRecord, body).map(|_| None),
        TAG_COMMITTED => {
            codec::decode_bounded::<Option<LogId>>(Bound::WalRecord, body).map(|_| None)
        }
        other => Err(codec::CodecError::Decode(format!(
            "unknown record tag {other}"
        ))),
    }
}

/// Where a segment stopped being readable.
pub(super) struct Stop {
    pub(super) offset: usize,
    pub(super) error: FrameError,
}

/// Replays the records of one segment into `state`; returns how many bytes are
/// valid and, if it stopped early, where and why. `last_entry` follows the
/// index of the last entry record read.
pub(super) fn replay_segment(
    bytes: &[u8],
    state: &mut Recovered,
    max_index: &mut u64,
    last_entry: &mut Option<u64>,
) -> (usize, Option<Stop>) {
    let mut pos = 0;
    while pos < bytes.len() {
        let applied = frame_at(bytes, pos).and_then(|payload| {
            apply_record(payload, state, max_index)
                .map(|idx| (payload.len(), idx))
                .map_err(|e| FrameError::Undecodable(e.to_string()))
        });
        match applied {
            Ok((len, idx)) => {
                if idx.is_some() {
                    *last_entry = idx;
                }
                pos += FRAME_HEADER + len;
            }
            Err(error) => return (pos, Some(Stop { offset: pos, error })),
        }
    }
    (pos, None)
}

/// The first intact record after a bad frame at `bad`: its offset and the
/// first entry index from there on, if any. `None` means nothing readable
/// follows, which is what a torn final write looks like; anything else is
/// damage in the middle of the log.
///
/// Every byte offset is tried, since the bad frame's own length cannot be
/// trusted; a frame counts only if its length fits, its tag is known, its
/// checksum holds and it decodes, so garbage passes by chance about once in
/// 2^32 tries. Data inside a torn frame that happens to be a valid frame
/// (a value holding a copy of a WAL file) makes start-up refuse, never cut.
pub(super) fn intact_after(bytes: &[u8], bad: usize) -> Option<(usize, Option<u64>)> {
    let mut q = bad + 1;
    while q + FRAME_HEADER < bytes.len() {
        let tag = bytes[q + FRAME_HEADER];
        if tag <= TAG_COMMITTED {
            if let Ok(payload) = frame_at(bytes, q) {
                if decode_record(payload).is_ok() {
                    // Found: the first entry from here on names the index after the damage.
                    let mut pos = q;
                    let mut first_entry = None;
                    while let Ok(p) = frame_at(bytes, pos) {
                        if let Ok(Some(idx)) = decode_record(p) {
                            first_entry = Some(idx);
                            break;
                        }
                        pos += FRAME_HEADER + p.len();
                        if pos >= bytes.len() {
                            break;
                        }
                    }
                    return Some((q, first_entry));
                }
            }
        }
        q += 1;
    }
    None
}

/// The log index a damaged frame held, as far as its neighbours (and its own
/// unverified bytes) tell.
pub(super) fn damaged_index(
    bytes: &[u8],
    at: usize,
    before: Option<u64>,
    after: Option<u64>,
) -> String {
    // The damaged record's own claim, checked against its neighbours.
    let own = bytes
        .get(at + FRAME_HEADER..)
        .and_then(|rest| {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().ok()?) as usize;
            rest.get(..len.min(rest.len()))
        })
        .filter(|p| p.first() == Some(&TAG_ENTRY))
        .and_then(|p| codec::decode_bounded::<Entry>(Bound::WalRecord, &p[1..]).ok())
        .map(|e| e.log_id.index)
        .filter(|i| before.is_none_or(|b| *i > b) && after.is_none_or(|a| *i < a));
    match (before, after, own) {
        (Some(b), Some(a), _) if a == b + 2 => format!("log index {}", b + 1),
        (_, _, Some(i)) => format!("log index {i} (as the damaged bytes read)"),
        (Some(b), Some(a), None) => format!("a record between log index {b} and {a}"),
        (Some(b), None, None) => format!("a record after log index {b}"),
        (None, Some(a), None) => format!("a record before log index {a}"),
        (None, None, None) => "a record before any intact entry".into(),
    }
}

/// Applies one record to the recovered state; returns the index of an entry record.
fn apply_record(
    payload: &[u8],
    st: &mut Recovered,
    max_index: &mut u64,
) -> Result<Option<u64>, codec::CodecError> {
    let (tag, body) = (payload[0], &payload[1..]);
    match tag {
        TAG_BASE => {
            let (purged, committed): (Option<LogId>, Option<LogId>) =
                codec::decode_bounded(Bound::WalRecord, body)?;
            if purged > st.purged {
                st.purged = purged;
            }
            if committed > st.committed {
                st.committed = committed;
            }
        }
        TAG_ENTRY => {
            let e: Entry = codec::decode_bounded(Bound::WalRecord, body)?;
            let idx = e.log_id.index;
            st.entries.split_off(&idx);
            st.entries.insert(idx, e);
            *max_index = (*max_index).max(idx);
            return Ok(Some(idx));
        }
        TAG_TRUNCATE => {
            let after: Option<u64> = codec::decode_bounded(Bound::WalRecord, body)?;
            // `checked_add`: a record naming the last possible index (only a
            // forged or damaged one can) drops nothing, and must not wrap
            // around to dropping everything.
            match after.map(|i| i.checked_add(1)) {
                Some(Some(next)) => drop(st.entries.split_off(&next)),
                Some(None) => {}
                None => st.entries.clear(),
            }
        }
        TAG_PURGE => {
            let upto: LogId = codec::decode_bounded(Bound::WalRecord, body)?;
            // As for truncate: purging up to the last possible index purges all.
            st.entries = match upto.index.checked_add(1) {
                Some(next) => st.entries.split_off(&next),
                None => BTreeMap::new(),
            };
            if Some(upto) > st.purged {
                st.purged = Some(upto);
            }
        }
        TAG_COMMITTED => {
            st.committed = codec::decode_bounded(Bound::WalRecord, body)?;
        }
        other => {
            return Err(codec::CodecError::Decode(format!(
                "unknown record tag {other}"
            )))
        }
    }
    Ok(None)
}

enum Request {
    /// Pre-framed records, written in order.
    Write {
        frames: Vec<u8>,
        max_index: u64,
        sync: bool,
        done: Option<Done>,
    },
    Purge(LogId),
    Committed(Option<LogId>),
}

/// Handle to the writer thread. Dropping it drains queued writes and joins the thread.
pub(crate) struct Wal {
    tx: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl Wal {
    /// Recovers the log in `dir` (created if missing) and starts the writer.
    pub fn open(dir: &Path, segment_bytes: u64) -> io::Result<(Wal, Recovered)> {
        fs::create_dir_all(dir)?;
        let mut st = Recovered {
            entries: BTreeMap::new(),
            purged: None,
            committed: None,
        };
        remove_leftover_tmp(dir)?;
        let found = list_segments(dir)?;
        let mut segments = Vec::new();
        let mut cut: Option<String> = None;
        let mut last_entry: Option<u64> = None;
        for (i, (seq, path)) in found.iter().enumerate() {
            let mut bytes = Vec::new();
            File::open(path)?.read_to_end(&mut bytes)?;
            let mut max_index = 0;
            let (valid, stop) = replay_segment(&bytes, &mut st, &mut max_index, &mut last_entry);
            if let Some(Stop { offset, error }) = stop {
                let later = found.len() - i - 1;
                let what = error.describe();
                let intact = intact_after(&bytes, offset);
                let undecodable = matches!(error, FrameError::Undecodable(_));
                if intact.is_some() || later > 0 || undecodable {
                    // Not a torn final write: intact records follow the bad
                    // one (here or in later segments), and they were written
                    // (maybe fsynced and acknowledged) after it. Cutting here
                    // could forget committed entries, so stop instead.
                    let (follows, after_index) = match intact {
                        Some((q, first)) => {
                            (format!("an intact record follows at offset {q}"), first)
                        }
                        None if later > 0 => (format!("{later} later segment(s) follow it"), None),
                        None => ("its checksum holds".to_string(), None),
                    };
                    let index = damaged_index(&bytes, offset, last_entry, after_index);
                    return Err(unrecoverable(
                        format!(
                            "damaged log: {what} in {} at byte offset {offset}, holding {index}; {follows}, \
                             so this is damage, not a torn final write",
                            path.display()
                        ),
                        dir,
                    ));
                }
                OpenOptions::new()
                    .write(true)
                    .open(path)?
                    .set_len(valid as u64)?;
                cut = Some(format!(
                    "{what} in {} at offset {valid}, the final record: kept the {valid} valid bytes before it, \
                     discarded the {} bytes of the unfinished write",
                    path.display(),
                    bytes.len() - valid,
                ));
            }
            segments.push(Segment {
                seq: *seq,
                path: path.clone(),
                max_index,
            });
        }
        if let Some(msg) = &cut {
            sync_dir(dir)?;
            let kept = st.entries.last_key_value().map(|(i, _)| *i);
            tracing::warn!(
                last_kept_index = ?kept,
                "wal recovery: {msg}; the node will catch up from the leader"
            );
        }
        // Entries must be contiguous after the purge point; keep the prefix that is.
        let first_expected = st.purged.as_ref().map(|p| p.index + 1).unwrap_or(0);
        st.entries = st.entries.split_off(&first_expected);
        if let (Some((&first, _)), true) = (st.entries.first_key_value(), st.purged.is_some()) {
            if first != first_expected {
                return Err(unrecoverable(
                    format!(
                        "the log resumes at index {first} but the purge point is {}",
                        first_expected - 1
                    ),
                    dir,
                ));
            }
        }
        for (prev, next) in st.entries.keys().zip(st.entries.keys().skip(1)) {
            if *next != prev + 1 {
                return Err(unrecoverable(
                    format!("the log skips from index {prev} to {next}"),
                    dir,
                ));
            }
        }
        // Committed may only point at entries we still have (or the purge point).
        let last = st
            .entries
            .last_key_value()
            .map(|(_, e)| e.log_id)
            .or(st.purged);
        if st.committed.map(|c| c.index) > last.map(|l| l.index) {
            st.committed = last;
        }

        let writer = Writer::start(
            dir.to_path_buf(),
            segments,
            segment_bytes,
            st.purged,
            st.committed,
        )?;
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok((
            Wal {
                tx: Some(tx),
                thread: Some(thread),
            },
            st,
        ))
    }

    fn send(&self, req: Request) -> io::Result<()> {
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(req).ok())
            .ok_or_else(|| io::Error::other("wal writer has stopped"))
    }

    /// Writes entry frames; `done` runs after they are durable.
    pub fn append(&self, frames: Vec<u8>, max_index: u64, done: Done) -> io::Result<()> {
        self.send(Request::Write {
            frames,
            max_index,
            sync: true,
            done: Some(done),
        })
    }

    pub fn truncate_after(&self, index: Option<u64>) -> io::Result<()> {
        let mut frames = Vec::new();
        frame(&mut frames, TAG_TRUNCATE, &index)?;
        self.send(Request::Write {
            frames,
            max_index: 0,
            sync: false,
            done: None,
        })
    }

    pub fn purge(&self, upto: LogId) -> io::Result<()> {
        self.send(Request::Purge(upto))
    }

    pub fn committed(&self, committed: Option<LogId>) -> io::Result<()> {
        self.send(Request::Committed(committed))
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Writer {
    dir: PathBuf,
    file: File,
    size: u64,
    segments: Vec<Segment>,
    segment_bytes: u64,
    purged: Option<LogId>,
    committed: Option<LogId>,
    /// Set after a failed write: nothing more is written, so no later record
    /// can land after a hole.
    failed: Option<String>,
}

impl Writer {
    fn start(
        dir: PathBuf,
        mut segments: Vec<Segment>,
        segment_bytes: u64,
        purged: Option<LogId>,
        committed: Option<LogId>,
    ) -> io::Result<Writer> {
        if segments.is_empty() {
            let path = segment_path(&dir, 1);
            let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
            let mut buf = Vec::new();
            frame(&mut buf, TAG_BASE, &(purged, committed))?;
            file.write_all(&buf)?;
            file.sync_data()?;
            sync_dir(&dir)?;
            segments.push(Segment {
                seq: 1,
                path,
                max_index: 0,
            });
        }
        let last = segments.last().map(|s| s.path.clone()).unwrap_or_default();
        let file = OpenOptions::new().append(true).open(&last)?;
        let size = file.metadata()?.len();
        Ok(Writer {
            dir,
            file,
            size,
            segments,
            segment_bytes,
            purged,
            committed,
            failed: None,
        })
    }

    fn run(mut self, rx: mpsc::Receiver<Request>) {
        let mut buf = Vec::with_capacity(1 << 20);
        let mut dones: Vec<Done> = Vec::new();
        while let Ok(first) = rx.recv() {
            buf.clear();
            let mut sync = false;
            let mut max_index = 0;
            let mut next = Some(first);
            // Group commit: everything queued now goes out with one write and one fsync.
            while let Some(req) = next {
                match req {
                    Request::Write {
                        frames,
                        max_index: m,
                        sync: s,
                        done,
                    } => {
                        buf.extend_from_slice(&frames);
                        max_index = max_index.max(m);
                        sync |= s;
                        dones.extend(done);
                    }
                    Request::Purge(upto) => {
                        if Some(upto) > self.purged {
                            self.purged = Some(upto);
                        }
                        // Segments are deleted on the strength of this record,
                        // so it must be durable first.
                        sync = true;
                        if let Err(e) = frame(&mut buf, TAG_PURGE, &upto) {
                            tracing::error!(error = %e, "wal: cannot encode purge record");
                        }
                    }
                    Request::Committed(c) => {
                        self.committed = c;
                        if let Err(e) = frame(&mut buf, TAG_COMMITTED, &c) {
                            tracing::error!(error = %e, "wal: cannot encode committed record");
                        }
                    }
                }
                if buf.len() >= 8 << 20 {
                    break;
                }
                next = rx.try_recv().ok();
            }
            let failed_before = self.failed.is_some();
            let result = self.write(&buf, sync, max_index);
            for done in dones.drain(..) {
                done(match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                });
            }
            if let Err(e) = result {
                if !failed_before {
                    tracing::error!(error = %e, "wal: write failed; the log store stops accepting writes");
                }
                continue;
            }
            self.maintain();
        }
        if self.failed.is_none() {
            let _ = self.file.sync_data();
        }
    }

    fn write(&mut self, buf: &[u8], sync: bool, max_index: u64) -> io::Result<()> {
        if let Some(why) = &self.failed {
            return Err(io::Error::other(format!("wal failed earlier: {why}")));
        }
        let r = (|| -> io::Result<()> {
            if !buf.is_empty() {
                self.file.write_all(buf)?;
                self.size += buf.len() as u64;
            }
            if sync {
                let started = std::time::Instant::now();
                self.file.sync_data()?;
                crate::metrics::METRICS
                    .wal_fsync_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
            Ok(())
        })();
        if let Err(e) = &r {
            self.failed = Some(e.to_string());
        }
        if let Some(seg) = self.segments.last_mut() {
            seg.max_index = seg.max_index.max(max_index);
        }
        r
    }

    /// Starts a new segment when the current one is full; removes segments
    /// whose entries are all purged. A failure here is logged and retried
    /// after the next write: records keep going to the current segment.
    fn maintain(&mut self) {
        if self.size >= self.segment_bytes {
            if let Err(e) = self.rotate() {
                tracing::error!(
                    error = %e,
                    "wal: cannot start a new segment; writing on in the current one and retrying after the next write"
                );
            }
        }
        if let Err(e) = self.remove_purged() {
            tracing::error!(error = %e, "wal: cannot remove purged segments; retrying after the next write");
        }
    }

    /// Starts the next segment. It is built as `*.tmp` (header record,
    /// fsync) and renamed into place, so a failure (a full disk) leaves no
    /// half-made segment for recovery to trip over and no name taken: the
    /// next attempt starts over.
    fn rotate(&mut self) -> io::Result<()> {
        // Whatever went into the old segment unsynced (commit hints,
        // truncations) must not be lost behind fsynced newer segments.
        if let Err(e) = self.file.sync_data() {
            // A failed fsync may have dropped those pages: no later write may
            // land behind that possible hole.
            self.failed = Some(format!("fsync before rotation: {e}"));
            return Err(e);
        }
        let seq = self.segments.last().map(|s| s.seq + 1).unwrap_or(1);
        let path = segment_path(&self.dir, seq);
        let tmp = path.with_extension("log.tmp");
        let made = (|| -> io::Result<(File, u64)> {
            match fs::remove_file(&tmp) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let mut file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&tmp)?;
            let mut buf = Vec::new();
            frame(&mut buf, TAG_BASE, &(self.purged, self.committed))?;
            file.write_all(&buf)?;
            file.sync_data()?;
            fs::rename(&tmp, &path)?;
            sync_dir(&self.dir)?;
            Ok((file, buf.len() as u64))
        })();
        let (file, size) = match made {
            Ok(m) => m,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                // Renamed but not known durable: remove it too, so that the
                // segment written on in the meantime stays the last one.
                if path.exists() {
                    let _ = fs::remove_file(&path);
                }
                return Err(e);
            }
        };
        self.file = file;
        self.size = size;
        self.segments.push(Segment {
            seq,
            path,
            max_index: 0,
        });
        Ok(())
    }

    fn remove_purged(&mut self) -> io::Result<()> {
        let purged = self.purged.as_ref().map(|p| p.index);
        let Some(purged) = purged else { return Ok(()) };
        let keep_from = self
            .segments
            .iter()
            .position(|s| s.max_index > purged)
            .unwrap_or(self.segments.len() - 1)
            .min(self.segments.len() - 1);
        if keep_from > 0 {
            // One at a time, so a failure leaves the rest listed for the next try.
            for _ in 0..keep_from {
                match fs::remove_file(&self.segments[0].path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => drop(self.segments.remove(0)),
                }
            }
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}
