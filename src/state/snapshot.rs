//! What a snapshot holds, independent of where it is stored or how it travels.

use serde::{Deserialize, Serialize};

use super::command::Outcome;
use super::outbox::DeadLetter;
use super::record::Record;
use super::requests::{Receipt, Remembered, RequestView};

/// Bumped whenever `SnapshotBody` changes shape; a node refuses a snapshot of a
/// format it does not know instead of misreading it.
///
/// 3: request ids are kept as receipts (version, mod revision, state per op)
/// instead of whole outcomes. Format 2 is still read (`SnapshotBodyV2`).
/// 4: the hand-off's dead letters. Format 3 is still read (`SnapshotBodyV3`).
pub const SNAPSHOT_FORMAT: u32 = 4;

/// The state machine's content at one log index, keys in order.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotBody {
    pub format: u32,
    pub revision: u64,
    pub records: Vec<(String, Record)>,
    /// Recent request ids with what they produced, oldest first.
    pub requests: Requests,
    /// Records the sink refused for good, set aside from the hand-off queue.
    pub dead_letters: Vec<DeadLetter>,
}

/// A snapshot's request ids: a list when read from a file or a peer, a
/// frozen view of the live table when taken from one (copied out only as
/// the snapshot is encoded, off the apply path). Both encode the same way,
/// as the list.
#[derive(Debug)]
pub enum Requests {
    List(Vec<Remembered>),
    View(RequestView),
}

impl Requests {
    pub fn len(&self) -> usize {
        match self {
            Requests::List(l) => l.len(),
            Requests::View(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ids, oldest first, copied.
    pub fn to_vec(&self) -> Vec<Remembered> {
        match self {
            Requests::List(l) => l.clone(),
            Requests::View(v) => v.iter().collect(),
        }
    }

    /// The ids, oldest first.
    pub fn into_vec(self) -> Vec<Remembered> {
        match self {
            Requests::List(l) => l,
            Requests::View(v) => v.iter().collect(),
        }
    }
}

impl From<Vec<Remembered>> for Requests {
    fn from(l: Vec<Remembered>) -> Self {
        Requests::List(l)
    }
}

impl Serialize for Requests {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        match self {
            Requests::List(l) => l.serialize(s),
            Requests::View(v) => {
                let mut seq = s.serialize_seq(Some(v.len()))?;
                for r in v.iter() {
                    seq.serialize_element(&r)?;
                }
                seq.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Requests {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<Remembered>::deserialize(d).map(Requests::List)
    }
}

/// A format 3 snapshot: no dead letters (none existed).
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotBodyV3 {
    pub format: u32,
    pub revision: u64,
    pub records: Vec<(String, Record)>,
    pub requests: Vec<Remembered>,
}

impl From<SnapshotBodyV3> for SnapshotBody {
    fn from(old: SnapshotBodyV3) -> Self {
        SnapshotBody {
            format: SNAPSHOT_FORMAT,
            revision: old.revision,
            records: old.records,
            requests: old.requests.into(),
            dead_letters: Vec::new(),
        }
    }
}

/// A format 2 snapshot: request ids with the whole outcome.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotBodyV2 {
    pub format: u32,
    pub revision: u64,
    pub records: Vec<(String, Record)>,
    pub requests: Vec<RememberedV2>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RememberedV2 {
    pub id: String,
    pub fingerprint: u64,
    pub at_ms: u64,
    pub outcome: Outcome,
}

impl From<SnapshotBodyV2> for SnapshotBody {
    /// Keeps every id and the answer a retry gets (a whole outcome holds
    /// the receipts); the revision is the applied ops' one. A remembered
    /// failure applied nothing, so it has no revision to keep (0).
    fn from(old: SnapshotBodyV2) -> Self {
        let requests: Vec<Remembered> = old
            .requests
            .into_iter()
            .map(|r| Remembered {
                id: r.id,
                fingerprint: r.fingerprint,
                at_ms: r.at_ms,
                revision: match &r.outcome {
                    Ok(applied) => applied.first().map(|a| a.revision).unwrap_or(0),
                    Err(_) => 0,
                },
                answer: r.outcome.map(|applied| {
                    applied
                        .iter()
                        .map(|a| Receipt {
                            version: a.record.version,
                            mod_revision: a.record.mod_revision,
                            state: a.record.state,
                        })
                        .collect()
                }),
            })
            .collect();
        SnapshotBody {
            format: SNAPSHOT_FORMAT,
            revision: old.revision,
            records: old.records,
            requests: requests.into(),
            dead_letters: Vec::new(),
        }
    }
}
