//! A whole-cluster status report: every member asked at once, each with its
//! own timeout, so a dead or cut-off member shows as unreachable within about
//! two timeouts instead of hanging. `inflight status` prints it; the status
//! page (`/cluster`) serves it.

use std::time::Duration;

use serde_json::json;
use tonic::Status;

use super::{Client, ClientOptions};
use crate::api::status_json;
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

    pub fn outbox(&self) -> u64 {
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
            "handoff": {"state": "not running (hand-off is not built yet)", "waiting": self.outbox()},
        })
    }
}

impl Client {
    /// Asks every member for its status, membership taken from whichever
    /// endpoint answers first; each ask gets `timeout`.
    pub async fn cluster_report(&self, timeout: Duration) -> ClusterReport {
        let lists = self.endpoints().iter().map(|ep| async move {
            let one = Client::with_options(
                [ep.clone()],
                ClientOptions {
                    request_timeout: timeout,
                    retry_for: Duration::ZERO,
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
            .unwrap_or_else(|| self.endpoints().iter().map(|e| (0, e.clone())).collect());
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
