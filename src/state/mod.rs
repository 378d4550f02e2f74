//! The state machine: what a record is and how a committed command changes it.
//!
//! Everything here is deterministic. `Store::apply` is a pure function of the
//! current table and one command: it reads no clock (the leader stamps the time
//! into the command before proposing it), does no I/O and draws no random
//! numbers, so every replica that applies the same log reaches the same table.
//! Errors produced by `apply` (a missing key, a version mismatch) are part of
//! that determinism: they are outcomes every replica computes identically, not
//! failures of the replica.
//!
//! The table is a `DashMap` for point reads that run on the RPC threads while
//! the single apply task writes, plus an ordered key index for `Scan`.
//!
//! What does not live here: Raft bookkeeping (last applied log id, membership),
//! snapshot files, and the network. The `raft` module glues those to this one.

mod command;
mod record;
mod snapshot;
mod table;

pub use command::{Applied, Command, Op, Outcome, Rejection};
pub use record::{Record, RecordState};
pub use snapshot::{SnapshotBody, SNAPSHOT_FORMAT};
pub use table::{ScanPage, Store};
