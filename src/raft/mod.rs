//! Consensus: openraft glued to our storage, network and state machine.
//!
//! openraft runs the Raft protocol (elections, replication, commit, snapshots);
//! this module supplies what it asks the application for:
//!
//! - `log_store`: the Raft log and the vote. In `disk` durability they go
//!   through `wal` (append-only segment files with a CRC per record, group
//!   commit, recovery that cuts only a torn final write) and a separately
//!   fsynced vote file, so a restarted node remembers every entry it
//!   acknowledged and every vote it cast. In `memory` durability nothing
//!   touches disk.
//! - `state_machine`: feeds committed entries to `crate::state::Table` and
//!   builds, stores and installs snapshots.
//! - `network` / `peer_service`: peer RPCs over tonic, both directions.
//! - `follower_read`: LINEARIZABLE reads on followers and learners, with
//!   the leader's read index asked for over the peer port.
//! - `node`: [`Node`], the one way in for the rest of the server: `propose`,
//!   `read_barrier`, `is_leader`, `status`, membership and shutdown. Nothing
//!   outside this folder calls openraft; its errors become [`Error`] here.
//! - `bootstrap`: the rules for a data directory's identity and for
//!   initializing a cluster exactly once.
//!
//! Raft guarantees that an entry acknowledged as committed is in the logs of a
//! majority and will be in the log of every future leader. That guarantee is
//! only as good as the storage under it: a node must never forget an entry or
//! a vote it reported as persisted. That is why `append` completes its
//! callback only after fsync, and why the vote has its own file.

mod batch;
mod bootstrap;
mod clock;
mod contact;
mod durable_file;
mod error;
mod follower_read;
mod forward;
mod heartbeat;
mod log_store;
mod network;
mod node;
mod peer_service;
mod snapshot_stream;
mod state_machine;
#[cfg(test)]
mod test_peer;
mod timing;
mod wal;

pub use crate::wire::MemberAddr;
pub use bootstrap::RaftSettings;
pub use error::{leader_hint, Error};
pub use forward::{ForwardError, QUEUE as FORWARD_QUEUE};
pub use network::UnaryError;
pub use node::{Consistency, LeaderChange, LeaderWait, Member, Node, Role, Status};
pub use peer_service::{ForwardHandler, PeerService};
pub use timing::Timing;

use crate::state::{Command, Outcome};

openraft::declare_raft_types!(
    /// The Raft type configuration of inflight.
    pub TypeConfig:
        D = Command,
        R = Option<Outcome>,
        Node = openraft::BasicNode,
);

/// A member's address as openraft stores it in the membership.
type PeerNode = openraft::BasicNode;

pub type NodeId = u64;

/// The leader as a node's Raft knows it, for the paths that reach it over
/// the peer port (forwarded writes, a follower's read index).
enum KnownLeader {
    ThisNode,
    Peer { id: NodeId, peer_address: String },
}

/// `None` while no leader is known, or its address is not in the membership.
fn known_leader(raft: &Raft, me: NodeId) -> Option<KnownLeader> {
    let rx = raft.metrics();
    let m = openraft::async_runtime::WatchReceiver::borrow_watched(&rx);
    let id = m.current_leader?;
    if id == me {
        return Some(KnownLeader::ThisNode);
    }
    let node = m.membership_config.membership().get_node(&id)?;
    Some(KnownLeader::Peer {
        id,
        peer_address: MemberAddr::stored(&node.addr).peer,
    })
}

/// How long a follower waits for the leader's answer to the writes it
/// forwarded (`forward`). A proposal normally commits within milliseconds;
/// past this the leader is cut off or overloaded and the client is better
/// told so.
pub const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
type SnapshotData = Vec<u8>;
type Raft = openraft::Raft<TypeConfig, state_machine::StateMachine>;

type LogId = openraft::alias::LogIdOf<TypeConfig>;
type Vote = <TypeConfig as openraft::RaftTypeConfig>::Vote;
type Entry = <TypeConfig as openraft::RaftTypeConfig>::Entry;
type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;

/// The largest gRPC message between peers, either direction (the Raft service).
pub const PEER_MESSAGE_BYTES: usize = 256 << 20;

/// Log entries in one AppendEntries message, at most (openraft's
/// `max_payload_entries`).
pub const APPEND_ENTRIES_MAX: usize = 32;

/// Room per log entry for everything but values: up to 1,000 keys of at most
/// 512 bytes, op framing, a request id. Generous on purpose.
pub const ENTRY_OVERHEAD_BYTES: usize = 1 << 20;

/// The largest `--max-value-bytes` whose log entries always fit a peer
/// message: a batch's values total up to
/// [`crate::api::BATCH_VALUE_FACTOR`] × the value limit in one entry, and one
/// AppendEntries carries up to [`APPEND_ENTRIES_MAX`] entries within
/// [`PEER_MESSAGE_BYTES`]. (256 MiB / 32 − 1 MiB) / 4 = 1.75 MiB. A larger
/// limit would let followers refuse a full AppendEntries, and the cluster
/// would stop replicating.
pub const MAX_VALUE_BYTES_BOUND: usize = (PEER_MESSAGE_BYTES / APPEND_ENTRIES_MAX
    - ENTRY_OVERHEAD_BYTES)
    / crate::api::BATCH_VALUE_FACTOR;

/// This node's wall clock in ms since the Unix epoch. Commands are stamped
/// with [`Node::stamp`], which follows this clock only gradually (see
/// `clock`); this is for what is shown, not stamped. Replicas never read
/// their own clock while applying.
pub fn wall_clock_ms() -> u64 {
    wall_clock_us() / 1000
}

/// The wall clock in µs since the Unix epoch. The leader clock reads this
/// one: reading whole ms would leave its stamps up to a millisecond behind
/// the wall clock that sinks and clients read.
pub fn wall_clock_us() -> u64 {
    let us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    #[cfg(feature = "test-clock-offset")]
    let us = us.saturating_add_signed(test_clock_offset_ms().saturating_mul(1000));
    us
}

/// Tests only (feature `test-clock-offset`): shifts every wall clock reading
/// by a signed number of ms, so that a test can make a node's clock jump.
/// `INFLIGHT_TEST_CLOCK_OFFSET_MS` holds the offset, or
/// `INFLIGHT_TEST_CLOCK_OFFSET_FILE` names a file holding it; both are read
/// again at every reading, so a test can change the file while a node runs.
#[cfg(feature = "test-clock-offset")]
fn test_clock_offset_ms() -> i64 {
    let text = match std::env::var_os("INFLIGHT_TEST_CLOCK_OFFSET_FILE") {
        Some(path) => std::fs::read_to_string(path).ok(),
        None => std::env::var("INFLIGHT_TEST_CLOCK_OFFSET_MS").ok(),
    };
    text.and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// Durability of the Raft log, vote and snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Vote and log entries are fsynced before they count; snapshots are files.
    Disk,
    /// Nothing on disk. A restarted node must rejoin under a new id.
    Memory,
}

impl Durability {
    pub fn as_str(&self) -> &'static str {
        match self {
            Durability::Disk => "disk",
            Durability::Memory => "memory",
        }
    }
}

#[cfg(test)]
mod decode_proptests;
#[cfg(test)]
mod tests;
