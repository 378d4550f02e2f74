//! The promises of STALE reads, which linearizability does not cover:
//!
//! - **Bounded** (`max_staleness_ms` M): a node serves the read only if it
//!   heard from the leader (the leader: from a quorum) within M, so its state
//!   holds every write acknowledged more than M before the read. A read is a
//!   violation if a write acknowledged before `called_at − M − E` has a
//!   revision above the read's applied revision (`GetResponse::revision`):
//!   the node had not applied it. `called_at` is the earliest the node can
//!   have served the read, so the test never blames a slow answer. E, the
//!   allowed clock error, is [`SLACK_MS`] for scheduling, plus `M × (1/r −
//!   1)` while the serving node's clock runs at rate r < 1 (a clock fault):
//!   such a node measures M too short in real time.
//! - **Unbounded, from one home node**: versions never go backwards on one
//!   node between restarts. Reads are grouped by serving node and
//!   incarnation (the process starts the harness made); within a group, a
//!   read that began after another returned must report an applied revision
//!   at least as high.
//!
//! Revisions are Raft log indexes, shared by all keys, so both checks compare
//! a read against writes to every key, which is stricter than per key.

use serde::Serialize;

/// Scheduling slack of the bounded check, ms: the time between a node's
/// staleness check and its read, and between a write's apply and its
/// acknowledgement reaching the client.
pub const SLACK_MS: u64 = 25;

/// One STALE get that found its answer.
#[derive(Clone, Debug, Serialize)]
pub struct StaleRead {
    pub client: u32,
    pub key: String,
    pub served_by: u64,
    pub max_staleness_ms: Option<u64>,
    /// ns since the run's epoch.
    pub called_at: u64,
    pub returned_at: u64,
    /// The serving node's applied revision.
    pub revision: u64,
}

/// An acknowledged write: its revision, and when the client had the answer
/// (ns since the run's epoch).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Ack {
    pub returned_at: u64,
    pub revision: u64,
}

/// A stretch of time during which one node's clock ran at `rate` (ns since
/// the run's epoch).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ClockWindow {
    pub node: u64,
    pub rate: f64,
    pub from: u64,
    pub to: u64,
}

/// What a check found: how many reads it judged, and the violations.
#[derive(Debug, Default)]
pub struct Findings {
    pub checked: usize,
    pub violations: Vec<String>,
}

const MS: u64 = 1_000_000;

/// The bounded check over every read with a `max_staleness_ms`.
pub fn check_bounded(reads: &[StaleRead], acks: &[Ack], clocks: &[ClockWindow]) -> Findings {
    let mut acks = acks.to_vec();
    acks.sort_by_key(|a| a.returned_at);
    // The highest revision acknowledged by each ack's return, in that order.
    let mut highest = Vec::with_capacity(acks.len());
    let mut max = 0;
    for a in &acks {
        max = max.max(a.revision);
        highest.push(max);
    }
    let mut f = Findings::default();
    for r in reads {
        let Some(m) = r.max_staleness_ms else {
            continue;
        };
        f.checked += 1;
        let error = SLACK_MS + clock_error_ms(r, m, clocks);
        let Some(cutoff) = r.called_at.checked_sub((m + error) * MS) else {
            continue;
        };
        // Acks that returned strictly before the cutoff.
        let n = acks.partition_point(|a| a.returned_at < cutoff);
        if n > 0 && highest[n - 1] > r.revision {
            f.violations.push(format!(
                "client {} read {} from node {} at {} ms with max_staleness {m} ms: applied revision {}, \
                 but revision {} was acknowledged before {} ms (allowed clock error {error} ms)",
                r.client,
                r.key,
                r.served_by,
                r.called_at / MS,
                r.revision,
                highest[n - 1],
                cutoff / MS,
            ));
        }
    }
    f
}

/// How much longer than `m` the serving node's clock may have let its
/// state age: `m × (1/r − 1)` for the slowest rate r < 1 it ran at during
/// the read.
fn clock_error_ms(r: &StaleRead, m: u64, clocks: &[ClockWindow]) -> u64 {
    clocks
        .iter()
        .filter(|w| w.node == r.served_by && w.rate < 1.0)
        .filter(|w| w.from <= r.returned_at && r.called_at <= w.to)
        .map(|w| (m as f64 * (1.0 / w.rate - 1.0)).ceil() as u64)
        .max()
        .unwrap_or(0)
}

/// The monotonic check over every read without a bound. `starts`: every
/// process start, (node, ns since the epoch).
pub fn check_monotonic(reads: &[StaleRead], starts: &[(u64, u64)]) -> Findings {
    let incarnation = |node: u64, t: u64| {
        starts
            .iter()
            .filter(|(n, at)| *n == node && *at <= t)
            .count()
    };
    let mut groups: std::collections::BTreeMap<(u64, usize), Vec<&StaleRead>> = Default::default();
    for r in reads.iter().filter(|r| r.max_staleness_ms.is_none()) {
        let (a, b) = (
            incarnation(r.served_by, r.called_at),
            incarnation(r.served_by, r.returned_at),
        );
        // A restart during the read: which process answered is unknown.
        if a == b {
            groups.entry((r.served_by, a)).or_default().push(r);
        }
    }
    let mut f = Findings::default();
    for ((node, inc), group) in groups {
        f.checked += group.len();
        let mut by_return = group.clone();
        by_return.sort_by_key(|r| r.returned_at);
        let mut by_call = group;
        by_call.sort_by_key(|r| r.called_at);
        // Walk the reads by call time, keeping the highest revision among
        // the reads that returned before the current one was called.
        let mut i = 0;
        let mut seen: Option<&StaleRead> = None;
        for r in by_call {
            while i < by_return.len() && by_return[i].returned_at < r.called_at {
                if seen.is_none_or(|s| by_return[i].revision > s.revision) {
                    seen = Some(by_return[i]);
                }
                i += 1;
            }
            if let Some(s) = seen.filter(|s| s.revision > r.revision) {
                f.violations.push(format!(
                    "node {node} (start {inc}) went back: client {} read revision {} at {} ms, after \
                     client {} read revision {} there at {} ms",
                    r.client,
                    r.revision,
                    r.called_at / MS,
                    s.client,
                    s.revision,
                    s.returned_at / MS,
                ));
            }
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(
        node: u64,
        max: Option<u64>,
        called_ms: u64,
        returned_ms: u64,
        revision: u64,
    ) -> StaleRead {
        StaleRead {
            client: 1,
            key: "k0".into(),
            served_by: node,
            max_staleness_ms: max,
            called_at: called_ms * MS,
            returned_at: returned_ms * MS,
            revision,
        }
    }

    fn ack(ms: u64, revision: u64) -> Ack {
        Ack {
            returned_at: ms * MS,
            revision,
        }
    }

    #[test]
    fn a_bounded_read_missing_a_write_older_than_its_bound_is_a_violation() {
        let acks = [ack(1_000, 10), ack(1_400, 11)];
        // At 1,600 ms with 500 ms: the cutoff is 1,075 ms; revision 10 must be in.
        let stale = read(2, Some(500), 1_600, 1_610, 9);
        let fresh_enough = read(2, Some(500), 1_600, 1_610, 10);
        let f = check_bounded(&[stale, fresh_enough], &acks, &[]);
        assert_eq!(f.checked, 2);
        assert_eq!(f.violations.len(), 1, "{:?}", f.violations);
        assert!(f.violations[0].contains("applied revision 9"));
    }

    #[test]
    fn a_slow_clock_on_the_serving_node_widens_the_bound() {
        let acks = [ack(1_000, 10)];
        // 1,600 ms with 500 ms misses revision 10 (cutoff 1,075 ms) ...
        let r = read(2, Some(500), 1_600, 1_610, 9);
        assert_eq!(
            check_bounded(std::slice::from_ref(&r), &acks, &[])
                .violations
                .len(),
            1
        );
        // ... unless node 2's clock ran at half speed: E = 25 + 500 ms.
        let half = ClockWindow {
            node: 2,
            rate: 0.5,
            from: 0,
            to: 2_000 * MS,
        };
        assert!(check_bounded(std::slice::from_ref(&r), &acks, &[half])
            .violations
            .is_empty());
        // Another node's slow clock changes nothing.
        let other = ClockWindow { node: 3, ..half };
        assert_eq!(check_bounded(&[r], &acks, &[other]).violations.len(), 1);
    }

    #[test]
    fn unbounded_reads_must_not_go_back_on_one_node_between_restarts() {
        let starts = [(1, 0), (1, 5_000 * MS), (2, 0)];
        let reads = [
            read(1, None, 100, 110, 50),
            // Called after the first returned, lower: a violation.
            read(1, None, 200, 210, 49),
            // Overlapping the first: either order is possible.
            read(1, None, 105, 120, 48),
            // Another node may be behind.
            read(2, None, 300, 310, 10),
            // After node 1 restarted: a new incarnation, compared afresh.
            read(1, None, 6_000, 6_010, 40),
            // Spanning the restart: not judged.
            read(1, None, 4_990, 5_010, 1),
        ];
        let f = check_monotonic(&reads, &starts);
        assert_eq!(f.checked, 5);
        assert_eq!(f.violations.len(), 1, "{:?}", f.violations);
        assert!(f.violations[0].contains("read revision 49"));
    }
}
