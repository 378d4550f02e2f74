//! `inflight.v1.Cluster`: node status and membership.

use std::collections::BTreeSet;

use openraft::async_runtime::WatchReceiver;
use openraft::{ChangeMembers, ServerState};
use tonic::{Request, Response, Status};

use super::ApiError;
use crate::pb;
use crate::raft::bootstrap::RaftNode;
use crate::raft::Node;

pub struct ClusterService {
    node: RaftNode,
}

impl ClusterService {
    pub fn new(node: RaftNode) -> Self {
        ClusterService { node }
    }

    fn members(&self) -> pb::MemberListResponse {
        let m = self.node.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        pb::MemberListResponse {
            members: membership
                .nodes()
                .map(|(id, n)| pb::Member {
                    id: *id,
                    address: n.addr.clone(),
                    voter: voters.contains(id),
                })
                .collect(),
            leader_id: m.current_leader.unwrap_or(0),
        }
    }
}

/// This node's view of itself and of the cluster.
pub fn node_status(node: &RaftNode) -> pb::NodeStatus {
    let m = node.raft.metrics().borrow_watched().clone();
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
    }
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
        Ok(Response::new(node_status(&self.node)))
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
}
