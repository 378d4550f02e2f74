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

use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::bootstrap::RaftNode;

/// Entries since the last snapshot, per record in the table, before the next one.
const ENTRIES_PER_RECORD: u64 = 8;
const CHECK_EVERY: Duration = Duration::from_millis(200);
/// A triggered snapshot that has not shown up by then is triggered again.
const RETRIGGER_AFTER: Duration = Duration::from_secs(30);

/// Whether a snapshot is due: `since` entries applied after the last one.
pub fn snapshot_due(since: u64, records: u64, every: u64) -> bool {
    since >= every.max(records / ENTRIES_PER_RECORD)
}

pub async fn run(node: RaftNode, every: u64, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending: Option<(u64, Instant)> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let m = node.raft_metrics();
        let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
        let snapshot = m.snapshot.map(|l| l.index).unwrap_or(0);
        if let Some((at, when)) = pending {
            if snapshot < at && when.elapsed() < RETRIGGER_AFTER {
                continue; // the one asked for is still being built
            }
            pending = None;
        }
        let since = applied.saturating_sub(snapshot);
        if snapshot_due(since, node.store.len() as u64, every) {
            if let Err(e) = node.raft.trigger().snapshot().await {
                tracing::debug!(error = %e, "snapshot trigger failed (shutting down?)");
                return;
            }
            pending = Some((applied, Instant::now()));
        }
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
