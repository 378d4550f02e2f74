//! `inflight.v1.Cluster`: node status and membership.

use std::collections::BTreeSet;
use std::sync::Arc;

use openraft::{ChangeMembers, ServerState};
use tonic::{Request, Response, Status};

use super::ApiError;
use crate::handoff::HandoffState;
use crate::pb;
use crate::raft::bootstrap::RaftNode;
use crate::raft::Node;

pub struct ClusterService {
    node: RaftNode,
    handoff: Arc<HandoffState>,
}

impl ClusterService {
    pub fn new(node: RaftNode, handoff: Arc<HandoffState>) -> Self {
        ClusterService { node, handoff }
    }

    fn members(&self) -> pb::MemberListResponse {
        let m = self.node.raft_metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let within = self.reachable_within();
        pb::MemberListResponse {
            members: membership
                .nodes()
                .map(|(id, n)| {
                    let last_ack_ms = if *id == self.node.id && m.state == ServerState::Leader {
                        Some(0)
                    } else {
                        m.heartbeat.as_ref().and_then(|h| {
                            h.get(id)
                                .and_then(|t| t.as_ref())
                                .map(|t| openraft::Instant::elapsed(&**t).as_millis() as u64)
                        })
                    };
                    pb::Member {
                        id: *id,
                        address: n.addr.clone(),
                        voter: voters.contains(id),
                        last_ack_ms,
                        reachable: last_ack_ms.is_some_and(|ms| ms <= within.as_millis() as u64),
                    }
                })
                .collect(),
            leader_id: m.current_leader.unwrap_or(0),
        }
    }
}

/// The hand-off pipeline as this node sees it.
pub fn handoff_status(node: &RaftNode, handoff: &HandoffState) -> pb::HandoffStatus {
    let ms = |d: std::time::Duration| d.as_millis() as u64;
    pb::HandoffStatus {
        active: handoff.is_active(),
        sinks: handoff
            .sinks()
            .into_iter()
            .map(|s| pb::SinkStatus {
                role: s.role.as_str().into(),
                sink: s.spec,
                records_delivered: s.records_delivered,
                batches_delivered: s.batches_delivered,
                batches_failed: s.batches_failed,
                last_success_age_ms: s.last_success_age.map(ms),
                last_error: s.last_error.unwrap_or_default(),
                last_error_age_ms: s.last_error_age.map(ms),
                failing_for_ms: s.failing_for.map(ms),
            })
            .collect(),
        outbox_bytes: node.store.outbox_bytes() as u64,
        memory_budget_bytes: handoff.memory_budget_bytes,
    }
}

/// This node's view of itself and of the cluster.
pub fn node_status(node: &RaftNode, handoff: &HandoffState) -> pb::NodeStatus {
    let m = node.raft_metrics();
    let membership = m.membership_config.membership();
    let is_voter = membership.voter_ids().any(|v| v == node.id);
    let leader_address = m
        .current_leader
        .and_then(|l| membership.get_node(&l).map(|n| n.addr.clone()))
        .unwrap_or_default();
    pb::NodeStatus {
        id: node.id,
        address: node.advertise.clone(),
        role: role_name(m.state, is_voter).into(),
        term: m.current_term,
        last_log_index: m.last_log_index.unwrap_or(0),
        applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
        leader_id: m.current_leader.unwrap_or(0),
        leader_address,
        records: node.store.len() as u64,
        snapshot_index: node.sm.snapshot_index().unwrap_or(0),
        durability: node.durability.as_str().into(),
        recovered: node.is_recovered(),
        memory_bytes: node.store.memory_bytes() as u64,
        outbox_depth: node.store.waiting_for_handoff() as u64,
        leader_contact_ms: node.leader_contact_ms(),
        voters: membership.voter_ids().count() as u32,
        outbox_oldest_age_ms: node
            .store
            .oldest_waiting_since_ms()
            .map(|t| crate::raft::leader_clock_ms().saturating_sub(t)),
        handoff: Some(handoff_status(node, handoff)),
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

/// The role name shown to operators for a Raft server state.
pub fn role_name(state: ServerState, is_voter: bool) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Candidate => "candidate",
        ServerState::Shutdown => "shutdown",
        ServerState::Learner => "learner",
        ServerState::Follower if is_voter => "follower",
        ServerState::Follower => "learner",
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        Ok(Response::new(node_status(&self.node, &self.handoff)))
    }

    async fn member_list(
        &self,
        _req: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        Ok(Response::new(self.members()))
    }

    async fn add_learner(
        &self,
        req: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let r = req.into_inner();
        if r.id == 0 {
            return Err(ApiError::invalid("id: node ids start at 1").into());
        }
        let host_port = r.address.rsplit_once(':');
        if !host_port.is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) {
            return Err(
                ApiError::invalid(format!("address: {:?} is not HOST:PORT", r.address)).into(),
            );
        }
        let existing = self.members();
        if let Some(m) = existing.members.iter().find(|m| m.id == r.id) {
            if m.address == r.address {
                // Joining twice (a retried join) is not an error.
                return Ok(Response::new(existing));
            }
            return Err(ApiError::FailedPrecondition(format!(
                "id: node {} is already a member at {}; remove it first or pick another id",
                r.id, m.address
            ))
            .into());
        }
        self.node
            .raft
            .add_learner(
                r.id,
                Node {
                    addr: r.address.clone(),
                },
                false,
            )
            .await
            .map_err(ApiError::from)?;
        tracing::info!(id = r.id, address = %r.address, "membership: added learner");
        Ok(Response::new(self.members()))
    }

    async fn promote(
        &self,
        req: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let id = req.into_inner().id;
        let existing = self.members();
        match existing.members.iter().find(|m| m.id == id) {
            None => {
                return Err(ApiError::NotFound(format!(
                    "id: node {id} is not a member; add it as a learner first"
                ))
                .into())
            }
            Some(m) if m.voter => return Ok(Response::new(existing)),
            Some(_) => {}
        }
        self.node
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(id, "membership: promoted learner to voter");
        Ok(Response::new(self.members()))
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let r = req.into_inner();
        self.require_leader()?;
        let existing = self.members();
        let Some(member) = existing.members.iter().find(|m| m.id == r.id) else {
            return Err(ApiError::NotFound(format!("id: node {} is not a member", r.id)).into());
        };
        let change = if member.voter {
            let remaining: Vec<u64> = existing
                .members
                .iter()
                .filter(|m| m.voter && m.id != r.id)
                .map(|m| m.id)
                .collect();
            if remaining.is_empty() {
                return Err(ApiError::FailedPrecondition(format!(
                    "id: node {} is the last voter; a cluster cannot remove its last voter",
                    r.id
                ))
                .into());
            }
            let reachable = self.reachable_voters(&remaining);
            let quorum = remaining.len() / 2 + 1;
            if reachable < quorum && !r.force {
                return Err(ApiError::FailedPrecondition(format!(
                    "removing node {} would leave {reachable} reachable voter(s) of {}, below the quorum of \
                     {quorum}: the cluster could not commit anything. Pass force to remove it anyway",
                    r.id,
                    remaining.len()
                ))
                .into());
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([r.id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([r.id]))
        };
        self.node
            .raft
            .change_membership(change, false)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(id = r.id, force = r.force, "membership: removed node");
        Ok(Response::new(self.members()))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        let to = req.into_inner().to;
        self.require_leader()?;
        let members = self.members();
        if !members.members.iter().any(|m| m.id == to && m.voter) {
            return Err(
                ApiError::FailedPrecondition(format!("to: node {to} is not a voter")).into(),
            );
        }
        if to != self.node.id {
            self.node
                .raft
                .trigger()
                .transfer_leader(to)
                .await
                .map_err(|e| ApiError::Unavailable(format!("raft node stopped: {e}")))?;
            let waited = self
                .node
                .raft
                .wait(Some(TRANSFER_WAIT))
                .metrics(|m| m.current_leader == Some(to), "leader transfer")
                .await;
            if waited.is_err() {
                let now = self.node.raft_metrics().current_leader;
                return Err(ApiError::Unavailable(format!(
                    "node {to} did not take over within {TRANSFER_WAIT:?} (leader now: {now:?}); it may be \
                     lagging or unreachable"
                ))
                .into());
            }
            tracing::info!(from = self.node.id, to, "leadership transferred");
        }
        Ok(Response::new(pb::TransferLeaderResponse { leader_id: to }))
    }
}

/// How long a leader transfer may take before the caller hears it failed.
const TRANSFER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl ClusterService {
    fn require_leader(&self) -> Result<(), ApiError> {
        if self.node.raft.is_leader() {
            return Ok(());
        }
        let m = self.node.raft_metrics();
        let leader = m.current_leader.and_then(|l| {
            m.membership_config
                .membership()
                .get_node(&l)
                .map(|n| (l, n.addr.clone()))
        });
        Err(ApiError::NotLeader { leader })
    }

    /// A member counts as reachable if it acknowledged the leader within a
    /// few heartbeats: tight, so a node that just died is not counted on.
    fn reachable_within(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.node.raft.config().heartbeat_interval * 4 + 100)
    }

    /// How many of `voters` are reachable from the leader (this node).
    fn reachable_voters(&self, voters: &[u64]) -> usize {
        let members = self.members();
        voters
            .iter()
            .filter(|id| members.members.iter().any(|m| m.id == **id && m.reachable))
            .count()
    }
}
