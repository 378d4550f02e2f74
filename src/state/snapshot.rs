//! What a snapshot holds, independent of where it is stored or how it travels.

use serde::{Deserialize, Serialize};

use super::record::Record;
use super::requests::Remembered;

/// Bumped whenever `SnapshotBody` changes shape; a node refuses a snapshot of a
/// format it does not know instead of misreading it.
pub const SNAPSHOT_FORMAT: u32 = 2;

/// The state machine's content at one log index, keys in order.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotBody {
    pub format: u32,
    pub revision: u64,
    pub records: Vec<(String, Record)>,
    /// Recent request ids with their outcomes, oldest first.
    pub requests: Vec<Remembered>,
}
