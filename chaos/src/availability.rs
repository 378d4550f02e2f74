//! Availability as the clients saw it: for each fault, the longest stretch
//! without an acknowledged write that overlaps the fault's window.
//!
//! Measured from the recorded history only (no server-side view): a write
//! counts when its client got `Written` back, at its return time. The gap
//! that overlaps a fault is the one a call-routing service would have lived
//! through. The run's start and the clients' stop bound the first and last
//! gaps, so a fault after which no write ever succeeded shows as a gap
//! until the end of the run, not as no gap at all.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::history::{Operation, Outcome};
use crate::nemesis::{FaultKind, FaultRecord};

/// One fault and the longest write outage that overlapped it.
#[derive(Clone, Debug, Serialize)]
pub struct FaultOutage {
    pub kind: FaultKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_hit: Option<bool>,
    pub started_ms: u64,
    pub healed_ms: u64,
    pub longest_gap_ms: u64,
}

/// Per fault kind: how many faults, the longest outage and the median one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KindSummary {
    pub faults: usize,
    pub max_ms: u64,
    pub median_ms: u64,
}

/// Return times (ms since the run's epoch) of acknowledged writes, sorted.
pub fn acknowledged_writes(ops: &[Operation]) -> Vec<u64> {
    let mut acks: Vec<u64> = ops
        .iter()
        .filter(|o| !o.call.is_read())
        .filter(|o| matches!(o.outcome, Outcome::Written { .. }))
        .filter_map(|o| o.returned_at.map(|ns| ns / 1_000_000))
        .collect();
    acks.sort_unstable();
    acks
}

/// The longest interval between consecutive acknowledged writes (with the
/// run's start and end as the outer bounds) that overlaps `[start, end]`.
pub fn longest_gap(acks: &[u64], run_end_ms: u64, start: u64, end: u64) -> u64 {
    let points = std::iter::once(0)
        .chain(acks.iter().copied())
        .chain(std::iter::once(
            run_end_ms.max(acks.last().copied().unwrap_or(0)),
        ));
    let mut longest = 0;
    let mut prev: Option<u64> = None;
    for t in points {
        if let Some(p) = prev {
            if t >= start && p <= end {
                longest = longest.max(t - p);
            }
        }
        prev = Some(t);
    }
    longest
}

/// Every fault's outage, and the summary per kind.
pub fn measure(
    faults: &[FaultRecord],
    ops: &[Operation],
    run_end_ms: u64,
) -> (Vec<FaultOutage>, BTreeMap<String, KindSummary>) {
    let acks = acknowledged_writes(ops);
    let outages: Vec<FaultOutage> = faults
        .iter()
        .map(|f| FaultOutage {
            kind: f.kind,
            leader_hit: f.leader_hit,
            started_ms: f.started_ms,
            healed_ms: f.healed_ms,
            longest_gap_ms: longest_gap(&acks, run_end_ms, f.started_ms, f.healed_ms),
        })
        .collect();
    let mut by_kind: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for o in &outages {
        by_kind
            .entry(group_name(o.kind, o.leader_hit))
            .or_default()
            .push(o.longest_gap_ms);
    }
    let summary = by_kind
        .into_iter()
        .map(|(k, mut gaps)| {
            gaps.sort_unstable();
            let summary = KindSummary {
                faults: gaps.len(),
                max_ms: *gaps.last().unwrap_or(&0),
                median_ms: gaps[gaps.len() / 2],
            };
            (k, summary)
        })
        .collect();
    (outages, summary)
}

/// The kind, and for faults that strike at random whether they struck the
/// leader: "pause (leader)" needs an election, "pause (follower)" does not,
/// and their targets differ.
pub fn group_name(kind: FaultKind, leader_hit: Option<bool>) -> String {
    match leader_hit {
        Some(true) => format!("{} (leader)", kind_name(kind)),
        Some(false) => format!("{} (follower)", kind_name(kind)),
        None => kind_name(kind),
    }
}

/// The kind as `faults.jsonl` and `verdict.json` spell it (snake_case).
pub fn kind_name(kind: FaultKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{kind:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Call;

    fn write(returned_ms: u64) -> Operation {
        Operation {
            client: 0,
            key: "k".into(),
            call: Call::Insert { value: "v".into() },
            outcome: Outcome::Written { version: 1 },
            called_at: 0,
            returned_at: Some(returned_ms * 1_000_000),
        }
    }

    fn fault(kind: FaultKind, started_ms: u64, healed_ms: u64) -> FaultRecord {
        FaultRecord {
            kind,
            detail: String::new(),
            leader_hit: None,
            started_ms,
            healed_ms,
            clock: None,
        }
    }

    #[test]
    fn the_gap_overlapping_the_window_counts_even_if_it_starts_before() {
        let acks = [100, 200, 1_000, 1_050, 3_000];
        // A fault from 300 to 600: the outage 200 → 1,000 overlaps it.
        assert_eq!(longest_gap(&acks, 4_000, 300, 600), 800);
        // From 1,020 to 2,000: 1,050 → 3,000.
        assert_eq!(longest_gap(&acks, 4_000, 1_020, 2_000), 1_950);
        // No write after the fault: the gap runs to the end of the run.
        assert_eq!(longest_gap(&acks, 5_000, 3_500, 3_600), 2_000);
        // No write at all.
        assert_eq!(longest_gap(&[], 5_000, 10, 20), 5_000);
    }

    #[test]
    fn reads_unknown_and_refused_outcomes_are_not_acknowledged_writes() {
        let mut ops = vec![write(100), write(900)];
        ops.push(Operation {
            call: Call::GET,
            ..write(500)
        });
        ops.push(Operation {
            outcome: Outcome::Unknown,
            returned_at: None,
            ..write(600)
        });
        assert_eq!(acknowledged_writes(&ops), vec![100, 900]);
    }

    #[test]
    fn per_kind_max_and_median() {
        let ops: Vec<Operation> = [0, 100, 1_100, 1_200, 1_500, 2_000, 2_100, 5_000]
            .into_iter()
            .map(write)
            .collect();
        let faults = [
            fault(FaultKind::KillLeader, 150, 300),
            fault(FaultKind::KillLeader, 1_250, 1_300),
            fault(FaultKind::KillLeader, 2_050, 2_060),
            fault(FaultKind::Pause, 2_200, 2_300),
        ];
        let (outages, by_kind) = measure(&faults, &ops, 6_000);
        let gaps: Vec<u64> = outages.iter().map(|o| o.longest_gap_ms).collect();
        assert_eq!(gaps, [1_000, 300, 100, 2_900]);
        assert_eq!(
            by_kind["kill_leader"],
            KindSummary {
                faults: 3,
                max_ms: 1_000,
                median_ms: 300
            }
        );
        assert_eq!(by_kind["pause"].max_ms, 2_900);
    }

    #[test]
    fn faults_that_struck_the_leader_are_counted_apart() {
        let ops: Vec<Operation> = [0, 100, 900, 1_000, 1_050].into_iter().map(write).collect();
        let mut on_leader = fault(FaultKind::Pause, 150, 300);
        on_leader.leader_hit = Some(true);
        let mut on_follower = fault(FaultKind::Pause, 950, 1_000);
        on_follower.leader_hit = Some(false);
        let (_, by_kind) = measure(&[on_leader, on_follower], &ops, 1_100);
        assert_eq!(by_kind["pause (leader)"].max_ms, 800);
        assert_eq!(by_kind["pause (follower)"].max_ms, 100);
        assert!(!by_kind.contains_key("pause"));
    }
}
