//! Hand-off: moving finished records to durable post-flight storage, then
//! out of memory.
//!
//! ```text
//! Complete / expiry ──► record COMPLETED or EXPIRED ──► outbox (replicated, by revision)
//!                                                           │ leader's worker
//!                                                           ▼
//!                                          sink.write(batch), idempotent by handoff_id
//!                                                           │ acknowledged (durable)
//!                                                           ▼
//!                                   Evict(handoff_ids) through Raft ──► gone on every node
//! ```
//!
//! The outbox is state (`crate::state`), so it is the same on every node and
//! survives leader changes and restarts. Only the leader runs the worker
//! (`crate::duties::handoff`); it
//! confirms its leadership with a quorum (ReadIndex) before each batch, so a
//! leader cut off by a partition stops writing to the sink; it
//! takes the oldest records, writes them to the primary sink, waits for the
//! acknowledgement (retrying with exponential backoff and jitter while the
//! sink is down) and only then proposes `Evict`. A record is therefore
//! removed only by a committed `Evict` that follows a successful sink write.
//! If leadership moves after the write but before the `Evict` commits, the
//! new leader writes the same records again: delivery is at-least-once, and
//! sinks deduplicate on `handoff_id`.
//!
//! A shadow sink ("learning mode") receives every batch the worker sends, on
//! its own task: its failures are counted and logged, never retried and never
//! waited for, so it cannot hold back eviction.
//!
//! While the sink is down the outbox grows; the memory budget (checked by the
//! API on Insert) turns that into back-pressure on new work while updates,
//! completes and deletes still drain what is in flight.

pub mod document;
pub mod sink;
mod stats;

pub use document::Document;
pub use sink::{Sink, SinkError, SinkSpec, SinkSpecParser};
pub use stats::{HandoffState, SinkRole, SinkSnapshot, SinkStats};
