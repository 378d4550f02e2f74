//! When to snapshot: log compaction scaled to the size of the state.
//!
//! A snapshot copies the whole table, so its cost grows with the number of
//! records, while a log entry costs the same whatever the table holds. A
//! fixed "every N entries" policy therefore does quadratic work as the table
//! grows: with a million records, a snapshot every 10,000 entries rewrote
//! ~400 MB every few seconds, took a core away from the node and starved
//! heartbeats into needless elections.
//!
//! Instead a snapshot is due once the log since the last one holds at least
//! `--snapshot-every` entries *and* at least an eighth as many entries as
//! there are records. Snapshot work per entry is then bounded by a constant,
//! and the log kept in memory until the next snapshot stays a fraction of the
//! table.
//!
//! Entries are not all the same size, though: a thousand 1 MiB updates are a
//! gigabyte of log held in memory, a few entries by count. So the log is
//! bounded in bytes too: once the entries held in memory pass `max_log_bytes`
//! (a share of the memory budget, `crate::memory::RAFT_LOG_SHARE`), the duty
//! asks openraft to purge everything the last snapshot covers (ignoring
//! `max_in_snapshot_log_to_keep`, which counts entries), and if that is not
//! enough, builds a snapshot so that the next round can purge up to it.

use std::time::{Duration, Instant};

use super::{Duty, Pace};
use crate::raft::Node;
use crate::shutdown::Shutdown;

/// Entries since the last snapshot, per record in the table, before the next one.
const ENTRIES_PER_RECORD: u64 = 8;
const PERIOD: Duration = Duration::from_millis(200);
/// A triggered snapshot that has not shown up by then is triggered again.
const RETRIGGER_AFTER: Duration = Duration::from_secs(30);

/// Whether a snapshot is due: `since` entries applied after the last one.
pub fn snapshot_due(since: u64, records: u64, every: u64) -> bool {
    since >= every.max(records / ENTRIES_PER_RECORD)
}

/// Every node's compaction duty (snapshots are local: each node compacts
/// its own log).
pub struct Compaction {
    /// `--snapshot-every`: the fewest entries between two snapshots.
    every: u64,
    /// Past this many bytes of log in memory, snapshot and purge.
    max_log_bytes: u64,
    /// The last index a byte-driven purge was asked up to.
    purge_asked: u64,
    /// The applied index a triggered snapshot should reach, and when it was asked for.
    pending: Option<(u64, Instant)>,
}

impl Compaction {
    pub fn new(every: u64, max_log_bytes: u64) -> Compaction {
        Compaction {
            every,
            max_log_bytes,
            purge_asked: 0,
            pending: None,
        }
    }
}

impl Duty for Compaction {
    const NAME: &'static str = "compaction";
    const LEADER_ONLY: bool = false;

    fn period(&self) -> Duration {
        PERIOD
    }

    async fn round(&mut self, node: &Node, _shutdown: &mut Shutdown) -> Pace {
        let s = node.status();
        let log_bytes = node.memory_use().raft_log;
        let over = log_bytes > self.max_log_bytes;
        if over && s.snapshot_index > self.purge_asked {
            // What the snapshot covers need not stay in memory; a follower
            // that still needs it gets the snapshot instead.
            tracing::debug!(
                log_bytes,
                upto = s.snapshot_index,
                "raft log over its share of the memory budget: purging"
            );
            match node.purge_log(s.snapshot_index).await {
                Ok(()) => self.purge_asked = s.snapshot_index,
                Err(e) => tracing::debug!(error = %e, "log purge trigger failed (shutting down?)"),
            }
            return Pace::Idle;
        }
        if let Some((at, when)) = self.pending {
            if s.snapshot_index < at && when.elapsed() < RETRIGGER_AFTER {
                return Pace::Idle; // the one asked for is still being built
            }
            self.pending = None;
        }
        let since = s.applied_index.saturating_sub(s.snapshot_index);
        let due = snapshot_due(since, node.table().len() as u64, self.every);
        if due || (over && since > 0) {
            match node.trigger_snapshot().await {
                Ok(()) => self.pending = Some((s.applied_index, Instant::now())),
                Err(e) => tracing::debug!(error = %e, "snapshot trigger failed (shutting down?)"),
            }
        }
        Pace::Idle
    }
}

#[cfg(test)]
mod tests {
    use super::snapshot_due;

    #[test]
    fn small_tables_snapshot_every_n_entries_large_ones_in_proportion() {
        assert!(!snapshot_due(9_999, 100, 10_000));
        assert!(snapshot_due(10_000, 100, 10_000));
        // A million records: not after 10,000 entries, but after 125,000.
        assert!(!snapshot_due(10_000, 1_000_000, 10_000));
        assert!(!snapshot_due(124_999, 1_000_000, 10_000));
        assert!(snapshot_due(125_000, 1_000_000, 10_000));
    }
}
