//! The state machine: what a record is and how a committed command changes it.
//!
//! Everything here is deterministic. `Table::apply` is a pure function of the
//! current state and one command: it reads no clock (the leader stamps the
//! time into the command before proposing it), does no I/O and draws no
//! random numbers, so every replica that applies the same log reaches the
//! same state. Errors produced by `apply` (a missing key, a version mismatch)
//! are part of that determinism: they are outcomes every replica computes
//! identically, not failures of the replica.
//!
//! The state is:
//! - the table: a `DashMap` for point reads that run on the RPC threads while
//!   the single apply task writes, plus an ordered key index for `Scan`;
//! - the TTL index: LIVE records by deadline, so the leader finds due records
//!   in O(log n) and expiry never scans the table;
//! - recent request ids with a receipt of what each produced, so a retried
//!   mutation is answered, not applied twice (bounded in bytes; see `requests`);
//! - the outbox: COMPLETED and EXPIRED records in completion order, waiting
//!   for the leader's hand-off worker (see `outbox`); a committed `Evict`
//!   removes them once a sink has acknowledged them; records the sink
//!   refused for good wait apart as dead letters for an operator;
//! - the event window for `Watch` (local to each node, see `events`).
//!
//! A command is a list of ops applied atomically (a single-op RPC is a list
//! of one), a leader-proposed expiry of due records, a leader-proposed
//! eviction of records a sink has acknowledged, the setting aside of records
//! a sink refused (dead letters), or an operator's retry or drop of those.

//!
//! What does not live here: Raft bookkeeping (last applied log id,
//! membership), snapshot files, and the network. The `raft` module glues
//! those to this one.

mod command;
mod events;
mod outbox;
#[cfg(test)]
mod proptests;
mod record;
mod requests;
mod snapshot;
mod table;
#[cfg(test)]
mod tests;

pub use command::{
    Action, Applied, Command, ExpiredMode, Failure, Op, Outcome, Rejection, RequestTag, TtlChange,
};
pub use events::{Compacted, Event, EventKind, EventLog, WindowLimits, LIVE_BUFFER};
pub use outbox::{DeadLetter, HandoffId};
pub use record::{Record, RecordState};
pub use requests::{Receipt, Remembered};
pub use snapshot::{Requests, SnapshotBody, SnapshotBodyV2, SnapshotBodyV3, SNAPSHOT_FORMAT};
/// The previous snapshot format, still read.
pub mod snapshot_v2 {
    pub use super::snapshot::{RememberedV2, SnapshotBodyV2};
}
pub use table::{ScanPage, Table};
