//! The memory budget: back-pressure when records pile up.
//!
//! Records live in memory until they are handed off, so a sink that stops
//! acknowledging makes memory grow with every Complete. Past the budget
//! (`--memory-budget`) new work is refused: Insert gets `RESOURCE_EXHAUSTED`
//! with a message that says what holds the memory and, when it is the
//! outbox, which sink is behind and why. Update, Complete and
//! Delete are still accepted, so operations already running can finish and
//! the outbox can drain once the sink is back. Nothing is dropped.
//!
//! The check runs before proposing, on the node that receives the request;
//! memory accounting is replicated state, so every node gives the same answer
//! for the same applied log.

use super::ApiError;
use crate::handoff::HandoffState;
use crate::state::{Op, Table};
use crate::wire::human_bytes;

/// Refuses `ops` if they insert and records already hold the budget or the
/// inserts would take them past it. A retry of a request that was applied
/// (a remembered `request_id`) is let through: it gets its original answer.
pub fn admit(
    table: &Table,
    handoff: &HandoffState,
    ops: &[Op],
    request_id: &str,
) -> Result<(), ApiError> {
    let adding: usize = ops
        .iter()
        .map(|op| match op {
            Op::Insert { key, value, .. } => key.len() + value.len(),
            _ => 0,
        })
        .sum();
    let inserts = ops.iter().any(|op| matches!(op, Op::Insert { .. }));
    let used = table.memory_bytes() as u64;
    let budget = handoff.memory_budget_bytes;
    if !inserts || used + adding as u64 <= budget {
        return Ok(());
    }
    if !request_id.is_empty() && table.remembers_request(request_id) {
        return Ok(());
    }
    crate::metrics::METRICS.inserts_refused_budget.inc();
    Err(ApiError::ResourceExhausted(refusal(
        table, handoff, used, budget,
    )))
}

fn refusal(table: &Table, handoff: &HandoffState, used: u64, budget: u64) -> String {
    let outbox_bytes = table.outbox_bytes() as u64;
    let depth = table.outbox_depth();
    let mut msg = format!(
        "memory budget exhausted: records hold {} of the {} budget (--memory-budget); ",
        human_bytes(used),
        human_bytes(budget)
    );
    if outbox_bytes * 2 >= used {
        msg.push_str(&format!(
            "{} of it is the outbox: {depth} completed or expired records waiting for hand-off to sink {}",
            human_bytes(outbox_bytes),
            handoff.primary.spec
        ));
        let s = handoff.primary.snapshot();
        match (s.failing_for, s.last_error) {
            (Some(d), Some(e)) => msg.push_str(&format!(
                ", which has been failing for {}s: {e}",
                d.as_secs()
            )),
            _ => msg.push_str(", which is behind"),
        }
        msg.push_str(
            ". Inserts resume as the outbox drains; updates, completes and deletes still work",
        );
    } else {
        msg.push_str(&format!(
            "{} live records and {depth} waiting for hand-off. Complete or delete records, \
             or raise --memory-budget; updates, completes and deletes still work",
            table.len().saturating_sub(depth)
        ));
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handoff::SinkSpec;
    use crate::state::Command;

    fn insert(key: &str, n: usize) -> Op {
        Op::Insert {
            key: key.into(),
            value: vec![b'x'; n].into(),
            ttl_ms: None,
        }
    }

    #[test]
    fn inserts_past_the_budget_are_refused_naming_the_outbox_other_ops_pass() {
        let table = Table::new();
        let handoff = HandoffState::new(&SinkSpec::Noop, None, 4_000);
        for (i, k) in ["a", "b", "c"].iter().enumerate() {
            table
                .apply(2 * i as u64 + 1, &Command::op(1, insert(k, 1000)))
                .unwrap();
            let done = Op::Complete {
                key: k.to_string(),
                value: None,
                if_version: None,
            };
            table
                .apply(2 * i as u64 + 2, &Command::op(2, done))
                .unwrap();
        }
        admit(&table, &handoff, &[insert("d", 10)], "").unwrap();
        let e = admit(&table, &handoff, &[insert("d", 1000)], "").unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ApiError::ResourceExhausted(_)));
        assert!(msg.contains("the outbox: 3 completed"), "{msg}");
        assert!(msg.contains("sink noop"), "{msg}");
        let update = Op::Delete {
            key: "a".into(),
            if_version: None,
        };
        admit(&table, &handoff, &[update], "").unwrap();
    }

    #[test]
    fn live_records_over_the_budget_say_so() {
        let table = Table::new();
        let handoff = HandoffState::new(&SinkSpec::Noop, None, 1_000);
        table.apply(1, &Command::op(1, insert("a", 2000))).unwrap();
        let msg = admit(&table, &handoff, &[insert("b", 1)], "")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("1 live records and 0 waiting"), "{msg}");
        assert_eq!(human_bytes(1536), "1.5KiB");
        assert_eq!(human_bytes(12), "12B");
    }
}
