//! A whole-cluster status report: every member asked at once, each with its
//! own timeout, so a dead or cut-off member shows as unreachable within about
//! two timeouts instead of hanging. `inflight status` prints it; the status
//! page (`/cluster`) serves it.

use std::time::Duration;

use serde_json::json;
use tonic::Status;

use super::{Client, ClientOptions};
use crate::pb;

pub struct MemberReport {
    pub id: u64,
    pub address: String,
    pub status: Result<pb::NodeStatus, Status>,
}

pub struct ClusterReport {
    pub members: Vec<MemberReport>,
}

impl ClusterReport {
    fn reachable(&self) -> impl Iterator<Item = &pb::NodeStatus> {
        self.members.iter().filter_map(|m| m.status.as_ref().ok())
    }

    pub fn leader(&self) -> Option<&pb::NodeStatus> {
        self.reachable().find(|s| s.role == "leader")
    }

    /// How far a member's applied index trails the leader's log.
    pub fn lag(&self, s: &pb::NodeStatus) -> Option<u64> {
        self.leader()
            .map(|l| l.last_log_index.saturating_sub(s.applied_index))
    }

    pub fn voters(&self) -> usize {
        self.leader()
            .or(self.reachable().next())
            .map(|s| s.voters as usize)
            .unwrap_or(0)
    }

    pub fn quorum(&self) -> usize {
        self.voters() / 2 + 1
    }

    pub fn voters_up(&self) -> usize {
        self.reachable().filter(|s| s.role != "learner").count()
    }

    /// How many more voters may fail before the cluster loses its quorum.
    pub fn failures_tolerated(&self) -> usize {
        self.voters_up().saturating_sub(self.quorum())
    }

    pub fn outbox_depth(&self) -> u64 {
        self.leader().map(|l| l.outbox_depth).unwrap_or(0)
    }

    pub fn any_reachable(&self) -> bool {
        self.reachable().next().is_some()
    }

    pub fn to_json(&self) -> serde_json::Value {
        let members: Vec<_> = self
            .members
            .iter()
            .map(|m| match &m.status {
                Ok(s) => {
                    let mut v = status_json(s);
                    v["reachable"] = json!(true);
                    v["lag"] = json!(self.lag(s));
                    v
                }
                Err(e) => json!({"id": m.id, "address": m.address, "reachable": false, "error": e.message()}),
            })
            .collect();
        let leader = self.leader();
        json!({
            "members": members,
            "leader": leader.map(|l| l.id),
            "voters": self.voters(),
            "quorum": self.quorum(),
            "failures_tolerated": leader.map(|_| self.failures_tolerated()),
            "handoff": self.handoff_summary_json(),
        })
    }

    /// The hand-off pipeline in one word: `idle`, `delivering`, `failing`, or
    /// `paused` (no leader, so no worker).
    pub fn handoff_state(&self) -> &'static str {
        let Some(l) = self.leader() else {
            return "paused";
        };
        let failing = l
            .handoff
            .as_ref()
            .and_then(|h| h.sinks.iter().find(|s| s.role == "primary"))
            .is_some_and(|s| s.failing_for_ms.is_some());
        match (failing, l.outbox_depth) {
            (true, _) => "failing",
            (false, 0) => "idle",
            (false, _) => "delivering",
        }
    }

    fn handoff_summary_json(&self) -> serde_json::Value {
        let leader = self.leader();
        let h = leader.and_then(|l| l.handoff.as_ref());
        let full = h.map(handoff_json);
        let part = |name: &str| full.as_ref().map(|f| f[name].clone());
        json!({
            "state": self.handoff_state(),
            "outbox_depth": self.outbox_depth(),
            "oldest_age_ms": leader.and_then(|l| l.outbox_oldest_age_ms),
            "outbox_bytes": h.map(|h| h.outbox_bytes),
            "memory_bytes": leader.map(|l| l.memory_bytes),
            "memory_budget_bytes": h.map(|h| h.memory_budget_bytes),
            "dead_letters": h.map(|h| h.dead_letters),
            "dead_letter_bytes": h.map(|h| h.dead_letter_bytes),
            "dead_letter_sample": part("dead_letter_sample"),
            "sinks": part("sinks"),
        })
    }

    /// The hand-off summary for people: one line for the pipeline, one per sink.
    pub fn handoff_lines(&self) -> Vec<String> {
        let Some(l) = self.leader() else {
            return vec!["hand-off: paused until a leader is elected".into()];
        };
        let oldest = l
            .outbox_oldest_age_ms
            .map(|ms| format!(", oldest waiting {:.1}s", ms as f64 / 1000.0))
            .unwrap_or_default();
        let mut lines = vec![format!(
            "hand-off: {}, {} record(s) waiting{oldest}",
            self.handoff_state(),
            l.outbox_depth
        )];
        let Some(h) = &l.handoff else {
            return lines;
        };
        lines[0].push_str(&format!(
            "; memory {} of {} budget",
            crate::wire::human_bytes(l.memory_bytes),
            crate::wire::human_bytes(h.memory_budget_bytes)
        ));
        for s in &h.sinks {
            let ago = |ms: u64| format!("{:.1}s ago", ms as f64 / 1000.0);
            let mut line = format!(
                "  {} sink {}: {} record(s) delivered in {} batch(es), {} failed batch(es)",
                s.role, s.sink, s.records_delivered, s.batches_delivered, s.batches_failed
            );
            if let Some(ms) = s.last_success_age_ms {
                line.push_str(&format!("; last success {}", ago(ms)));
            }
            match (s.failing_for_ms, s.last_error_age_ms) {
                (Some(f), _) => line.push_str(&format!(
                    "; FAILING for {:.0}s: {}",
                    f as f64 / 1000.0,
                    s.last_error
                )),
                (None, Some(ms)) => {
                    line.push_str(&format!("; last error {}: {}", ago(ms), s.last_error))
                }
                (None, None) => {}
            }
            lines.push(line);
        }
        if h.dead_letters > 0 {
            lines.push(format!(
                "  {} record(s) refused by the sink for good ({}), set aside until \
                 `inflight handoff retry` or `drop`; oldest:",
                h.dead_letters,
                crate::wire::human_bytes(h.dead_letter_bytes)
            ));
            for d in &h.dead_letter_sample {
                lines.push(format!("    {}: {}", d.handoff_id, d.error));
            }
        }
        lines
    }
}

impl Client {
    /// Asks every member for its status, membership taken from whichever
    /// endpoint answers first; each ask gets `timeout`.
    pub async fn cluster_report(&self, timeout: Duration) -> ClusterReport {
        let endpoints = self.endpoints();
        let lists = endpoints.iter().map(|ep| async move {
            let one = Client::with_options(
                [ep.clone()],
                ClientOptions {
                    request_timeout: timeout,
                    retry_for: Duration::ZERO,
                    sync_endpoints: None,
                    tls: self.options().tls.clone(),
                    ..Default::default()
                },
            )
            .ok()?;
            let l = one.member_list().await.ok()?;
            Some(
                l.members
                    .into_iter()
                    .map(|m| (m.id, m.address))
                    .collect::<Vec<_>>(),
            )
        });
        let mut addrs: Vec<(u64, String)> = futures::future::join_all(lists)
            .await
            .into_iter()
            .flatten()
            .find(|l| !l.is_empty())
            .unwrap_or_else(|| endpoints.iter().map(|e| (0, e.clone())).collect());
        addrs.sort();
        let asks = addrs.into_iter().map(|(id, address)| async move {
            let status = self.node_status(&address, timeout).await;
            MemberReport {
                id,
                address,
                status,
            }
        });
        ClusterReport {
            members: futures::future::join_all(asks).await,
        }
    }
}

/// The hand-off part of a node status as JSON.
pub fn handoff_json(h: &pb::HandoffStatus) -> serde_json::Value {
    let sinks: Vec<_> = h
        .sinks
        .iter()
        .map(|s| {
            serde_json::json!({
                "role": s.role,
                "sink": s.sink,
                "records_delivered": s.records_delivered,
                "batches_delivered": s.batches_delivered,
                "batches_failed": s.batches_failed,
                "last_success_age_ms": s.last_success_age_ms,
                "last_error": if s.last_error.is_empty() { None } else { Some(&s.last_error) },
                "last_error_age_ms": s.last_error_age_ms,
                "failing_for_ms": s.failing_for_ms,
            })
        })
        .collect();
    serde_json::json!({
        "active": h.active,
        "sinks": sinks,
        "outbox_bytes": h.outbox_bytes,
        "memory_budget_bytes": h.memory_budget_bytes,
        "dead_letters": h.dead_letters,
        "dead_letter_bytes": h.dead_letter_bytes,
        "dead_letter_sample": h.dead_letter_sample.iter().map(dead_letter_json).collect::<Vec<_>>(),
    })
}

/// One dead letter as JSON: `inflight handoff failed --json` and the status.
pub fn dead_letter_json(d: &pb::DeadLetter) -> serde_json::Value {
    serde_json::json!({
        "handoff_id": d.handoff_id,
        "key": d.key,
        "completion_revision": d.completion_revision,
        "error": d.error,
        "failed_revision": d.failed_revision,
        "failed_at_ms": d.failed_at_ms,
        "bytes": d.bytes,
    })
}

/// A node status as JSON: `/status` and `inflight status --json` print this.
pub fn status_json(s: &pb::NodeStatus) -> serde_json::Value {
    serde_json::json!({
        "id": s.id,
        "address": s.address,
        "role": s.role,
        "term": s.term,
        "last_log_index": s.last_log_index,
        "applied_index": s.applied_index,
        "leader_id": if s.leader_id == 0 { None } else { Some(s.leader_id) },
        "leader_address": s.leader_address,
        "records": s.records,
        "snapshot_index": s.snapshot_index,
        "durability": s.durability,
        "recovered": s.recovered,
        "memory_bytes": s.memory_bytes,
        "outbox_depth": s.outbox_depth,
        "outbox_oldest_age_ms": s.outbox_oldest_age_ms,
        "leader_contact_ms": s.leader_contact_ms,
        "voters": s.voters,
        "handoff": s.handoff.as_ref().map(handoff_json),
    })
}
