//! `inflight.v1.Cluster`: node status and membership.
//!
//! Every RPC that changes the cluster, and HandoffFailed (it lists keys of
//! every prefix), is admin (`crate::auth`); Status and MemberList are open,
//! as leader discovery needs them, with the dead-letter sample (keys, sink
//! errors) left out of a non-admin's Status.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::ApiError;
use crate::auth::{Authorizer, Caller};
use crate::handoff::HandoffState;
use crate::pb;
use crate::raft;
use crate::state::{Action, Command, DeadLetter, HandoffId};
use crate::tls::ServerTls;

pub struct ClusterService {
    node: raft::Node,
    handoff: Arc<HandoffState>,
    auth: Arc<Authorizer>,
    /// This node's peer port TLS, if on: a caller it would admit may add a
    /// learner (`--join`) without being an admin.
    peer_port: Option<ServerTls>,
}

impl ClusterService {
    pub fn new(node: raft::Node, handoff: Arc<HandoffState>, auth: Arc<Authorizer>) -> Self {
        ClusterService {
            node,
            handoff,
            auth,
            peer_port: None,
        }
    }

    /// Lets a caller with a certificate `peer_port` admits add a learner.
    pub fn with_peer_port(mut self, peer_port: Option<ServerTls>) -> Self {
        self.peer_port = peer_port;
        self
    }

    /// Refuses a caller that may not use the admin RPC `rpc`.
    fn admin<T>(&self, req: &Request<T>, rpc: &str) -> Result<(), Status> {
        self.auth
            .check_admin(&Caller::of(req), rpc)
            .map_err(|d| ApiError::from(d).into())
    }

    fn members(&self) -> pb::MemberListResponse {
        let s = self.node.status();
        let within = self.node.timing().reachable_within().as_millis() as u64;
        pb::MemberListResponse {
            members: s
                .members
                .iter()
                .map(|m| pb::Member {
                    id: m.id,
                    address: m.address.clone(),
                    peer_address: m.peer_address.clone(),
                    voter: m.voter,
                    last_ack_ms: m.last_ack_ms,
                    reachable: m.last_ack_ms.is_some_and(|ms| ms <= within),
                })
                .collect(),
            leader_id: s.leader.unwrap_or(0),
        }
    }
}

/// Whether the caller presents a certificate this node's peer port would
/// admit (the peer CA, the extended key usage serverAuth, and the names of
/// `--peer-allowed-cn`: the handshake's own check). `--join` calls
/// AddLearner with the joining node's own certificate, so such a node may
/// add a learner without being named in `--admin-identities`. That grants
/// nothing the certificate does not already have: its holder can take part
/// in replication on the peer port. Without peer TLS nobody passes this way.
fn joining_node<T>(req: &Request<T>, peer_port: Option<&ServerTls>) -> bool {
    match (req.peer_certs(), peer_port) {
        (Some(chain), Some(port)) => port.admits_as_peer(&chain),
        _ => false,
    }
}

/// The hand-off pipeline as this node sees it.
pub fn handoff_status(node: &raft::Node, handoff: &HandoffState) -> pb::HandoffStatus {
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
        outbox_bytes: node.table().outbox_bytes() as u64,
        memory_budget_bytes: handoff.memory_budget_bytes,
        dead_letters: node.table().dead_letter_count() as u64,
        dead_letter_bytes: node.table().dead_letter_bytes() as u64,
        dead_letter_sample: node
            .table()
            .dead_letters(None, DEAD_LETTER_SAMPLE)
            .iter()
            .map(|d| dead_letter_pb(node.table(), d))
            .collect(),
    }
}

/// How many dead letters a status shows (the oldest).
const DEAD_LETTER_SAMPLE: usize = 5;

pub fn dead_letter_pb(table: &crate::state::Table, d: &crate::state::DeadLetter) -> pb::DeadLetter {
    pb::DeadLetter {
        handoff_id: d.id.to_string(),
        key: d.id.key.clone(),
        completion_revision: d.id.revision,
        error: d.error.clone(),
        failed_revision: d.revision,
        failed_at_ms: d.at_ms,
        bytes: table
            .get(&d.id.key)
            .map(|r| r.footprint(&d.id.key) as u64)
            .unwrap_or(0),
    }
}

/// This node's view of itself and of the cluster.
pub fn node_status(node: &raft::Node, handoff: &HandoffState) -> pb::NodeStatus {
    let s = node.status();
    let table = node.table();
    let memory = node.memory_use();
    pb::NodeStatus {
        id: s.id,
        address: node.advertise().client.clone(),
        role: s.role.as_str().into(),
        term: s.term,
        last_log_index: s.last_log_index,
        applied_index: s.applied_index,
        leader_id: s.leader.unwrap_or(0),
        leader_address: s.leader_address.clone().unwrap_or_default(),
        records: table.len() as u64,
        snapshot_index: s.snapshot_index,
        durability: node.durability().as_str().into(),
        recovered: node.is_recovered(),
        memory_bytes: memory.total(),
        outbox_depth: table.outbox_depth() as u64,
        leader_contact_ms: s.leader_contact_ms,
        voters: s.voters().count() as u32,
        outbox_oldest_age_ms: table
            .outbox_oldest_since_ms()
            .map(|t| crate::raft::wall_clock_ms().saturating_sub(t)),
        handoff: Some(handoff_status(node, handoff)),
        memory: Some(memory_pb(&memory)),
    }
}

fn memory_pb(m: &crate::memory::MemoryUse) -> pb::MemoryUse {
    pb::MemoryUse {
        live_records: m
            .records
            .saturating_sub(m.outbox)
            .saturating_sub(m.dead_letters),
        outbox: m.outbox,
        dead_letters: m.dead_letters,
        request_ids: m.request_ids,
        watch_window: m.watch_window,
        raft_log: m.raft_log,
        snapshot: m.snapshot,
        reserved: m.reserved,
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        let mut status = node_status(&self.node, &self.handoff);
        if !self.auth.is_admin(&Caller::of(&req)) {
            if let Some(h) = status.handoff.as_mut() {
                h.dead_letter_sample.clear();
            }
        }
        Ok(Response::new(status))
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
        if !joining_node(&req, self.peer_port.as_ref()) {
            self.admin(&req, "Cluster.AddLearner")?;
        }
        let r = req.into_inner();
        if r.id == 0 {
            return Err(ApiError::invalid("id: node ids start at 1").into());
        }
        let addr = raft::MemberAddr::parse(&format!("{}/{}", r.address, r.peer_address))
            .map_err(|e| ApiError::invalid(format!("address, peer_address: {e}")))?;
        let existing = self.members();
        if let Some(m) = existing.members.iter().find(|m| m.id == r.id) {
            if m.address == addr.client && m.peer_address == addr.peer {
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
            .add_learner(r.id, &addr)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(id = r.id, address = %addr, "membership: added learner");
        Ok(Response::new(self.members()))
    }

    async fn promote(
        &self,
        req: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        self.admin(&req, "Cluster.Promote")?;
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
        self.node.promote(id).await.map_err(ApiError::from)?;
        tracing::info!(id, "membership: promoted learner to voter");
        Ok(Response::new(self.members()))
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        self.admin(&req, "Cluster.RemoveMember")?;
        let r = req.into_inner();
        self.node
            .leader_only(raft::LeaderWait::Answer)
            .await
            .map_err(ApiError::from)?;
        let existing = self.members();
        let Some(member) = existing.members.iter().find(|m| m.id == r.id) else {
            return Err(ApiError::NotFound(format!("id: node {} is not a member", r.id)).into());
        };
        if member.voter {
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
        }
        self.node
            .remove(r.id, member.voter)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(id = r.id, force = r.force, "membership: removed node");
        Ok(Response::new(self.members()))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        self.admin(&req, "Cluster.TransferLeader")?;
        let to = req.into_inner().to;
        self.node
            .leader_only(raft::LeaderWait::Answer)
            .await
            .map_err(ApiError::from)?;
        let members = self.members();
        if !members.members.iter().any(|m| m.id == to && m.voter) {
            return Err(
                ApiError::FailedPrecondition(format!("to: node {to} is not a voter")).into(),
            );
        }
        if to != self.node.id() {
            self.node
                .transfer_leader(to, self.node.timing().handover_within())
                .await
                .map_err(ApiError::from)?;
            tracing::info!(from = self.node.id(), to, "leadership transferred");
        }
        Ok(Response::new(pb::TransferLeaderResponse { leader_id: to }))
    }

    async fn handoff_failed(
        &self,
        req: Request<pb::HandoffFailedRequest>,
    ) -> Result<Response<pb::HandoffFailedResponse>, Status> {
        self.admin(&req, "Cluster.HandoffFailed")?;
        let r = req.into_inner();
        let table = self.node.table();
        let (page, more) = if r.keys.is_empty() {
            let limit = match r.limit as usize {
                0 => FAILED_PAGE,
                n => n.min(FAILED_PAGE_MAX),
            };
            let after = match r.after.as_str() {
                "" => None,
                s => Some(parse_handoff_id(s, "after")?),
            };
            let mut page = table.dead_letters(after.as_ref(), limit + 1);
            let more = page.len() > limit;
            page.truncate(limit);
            (page, more)
        } else {
            check_count(r.keys.len(), "keys")?;
            (self.dead_letters_under(&r.keys)?, false)
        };
        // Within what a default client accepts, however long keys and errors are.
        let mut records = Vec::with_capacity(page.len());
        let mut bytes = crate::api::response::ANSWER_FIELDS_BYTES + 32;
        let mut cut = false;
        for d in &page {
            let d = dead_letter_pb(table, d);
            bytes += crate::api::response::field_len(prost::Message::encoded_len(&d));
            if bytes > crate::wire::RESPONSE_BYTES && !records.is_empty() {
                cut = true;
                break;
            }
            records.push(d);
        }
        Ok(Response::new(pb::HandoffFailedResponse {
            records,
            more: more || cut,
            total: table.dead_letter_count() as u64,
            total_bytes: table.dead_letter_bytes() as u64,
        }))
    }

    async fn handoff_retry(
        &self,
        req: Request<pb::HandoffRetryRequest>,
    ) -> Result<Response<pb::HandoffChangeResponse>, Status> {
        self.admin(&req, "Cluster.HandoffRetry")?;
        let r = req.into_inner();
        let given = !r.keys.is_empty() as u8 + !r.handoff_ids.is_empty() as u8 + r.all as u8;
        if given != 1 {
            return Err(ApiError::invalid(
                "give exactly one of keys, handoff_ids or all (see `inflight handoff failed`)",
            )
            .into());
        }
        let exact = parse_handoff_ids(&r.handoff_ids)?;
        check_count(r.keys.len(), "keys")?;
        self.node
            .leader_only(raft::LeaderWait::Answer)
            .await
            .map_err(ApiError::from)?;
        let ids = if r.all {
            None
        } else if r.keys.is_empty() {
            Some(exact)
        } else {
            Some(self.dead_letter_ids(&r.keys)?)
        };
        let done = self.propose_handoff(Action::Requeue { ids }).await?;
        tracing::info!(changed = done.changed, first = ?first_ids(&done), revision = done.revision,
            "operator: dead letters put back in the hand-off queue");
        Ok(Response::new(done))
    }

    async fn handoff_drop(
        &self,
        req: Request<pb::HandoffDropRequest>,
    ) -> Result<Response<pb::HandoffChangeResponse>, Status> {
        self.admin(&req, "Cluster.HandoffDrop")?;
        let r = req.into_inner();
        if r.keys.is_empty() == r.handoff_ids.is_empty() {
            return Err(ApiError::invalid(
                "give exactly one of keys or handoff_ids (see `inflight handoff failed`)",
            )
            .into());
        }
        let exact = parse_handoff_ids(&r.handoff_ids)?;
        check_count(r.keys.len(), "keys")?;
        self.node
            .leader_only(raft::LeaderWait::Answer)
            .await
            .map_err(ApiError::from)?;
        let ids = if r.keys.is_empty() {
            exact
        } else {
            self.dead_letter_ids(&r.keys)?
        };
        let done = self.propose_handoff(Action::Discard { ids }).await?;
        tracing::warn!(changed = done.changed, first = ?first_ids(&done), revision = done.revision,
            "operator: dead letters dropped from memory without hand-off");
        Ok(Response::new(done))
    }
}

/// The first few ids a change names, for its log line.
fn first_ids(done: &pb::HandoffChangeResponse) -> &[String] {
    &done.handoff_ids[..done.handoff_ids.len().min(10)]
}

fn not_dead(key: &str) -> ApiError {
    ApiError::NotFound(format!(
        "key {key:?} is not a record the sink refused (see `inflight handoff failed`)"
    ))
}

pub(super) fn check_count(n: usize, what: &str) -> Result<(), ApiError> {
    if n > MAX_HANDOFF_KEYS {
        return Err(ApiError::invalid(format!(
            "{what}: at most {MAX_HANDOFF_KEYS} per request, got {n}"
        )));
    }
    Ok(())
}

pub(super) fn parse_handoff_ids(ids: &[String]) -> Result<Vec<HandoffId>, ApiError> {
    check_count(ids.len(), "handoff_ids")?;
    ids.iter()
        .map(|s| parse_handoff_id(s, "handoff_ids"))
        .collect()
}

impl ClusterService {
    /// The dead letters under `keys`, or NOT_FOUND for the first key that
    /// holds none.
    fn dead_letters_under(&self, keys: &[String]) -> Result<Vec<DeadLetter>, ApiError> {
        let table = self.node.table();
        keys.iter()
            .map(|key| table.dead_letter(key).ok_or_else(|| not_dead(key)))
            .collect()
    }

    /// The handoff ids of the dead letters under `keys` (see `dead_letters_under`).
    fn dead_letter_ids(&self, keys: &[String]) -> Result<Vec<HandoffId>, ApiError> {
        Ok(self
            .dead_letters_under(keys)?
            .into_iter()
            .map(|d| d.id)
            .collect())
    }

    /// Proposes an operator's hand-off command; the handoff ids it changed.
    async fn propose_handoff(&self, action: Action) -> Result<pb::HandoffChangeResponse, ApiError> {
        let cmd = Command {
            at_ms: self.node.stamp(),
            request: None,
            action,
        };
        let applied = self
            .node
            .propose(cmd)
            .await
            .map_err(ApiError::from)?
            .map_err(|f| ApiError::from_failure(f, false))?;
        let revision = applied
            .first()
            .map(|a| a.revision)
            .unwrap_or_else(|| self.node.table().revision());
        Ok(pb::HandoffChangeResponse {
            changed: applied.len() as u64,
            handoff_ids: applied
                .iter()
                .take(CHANGE_IDS_SHOWN)
                .map(|a| {
                    HandoffId {
                        key: a.key.clone(),
                        revision: a.record.mod_revision,
                    }
                    .to_string()
                })
                .collect(),
            revision,
        })
    }
}

/// Keys or handoff ids per `handoff retry` or `drop` request, at most
/// (with 512-byte keys, well inside a request's 4 MiB).
const MAX_HANDOFF_KEYS: usize = 1_000;
/// Dead letters per `handoff failed` page: the default and the most.
const FAILED_PAGE: usize = 100;
const FAILED_PAGE_MAX: usize = 1_000;
/// Handoff ids a change answer names (it counts them all).
const CHANGE_IDS_SHOWN: usize = 100;

/// Reads `key@revision` (the key may itself hold `@`; the revision is digits).
pub(super) fn parse_handoff_id(s: &str, field: &str) -> Result<HandoffId, ApiError> {
    let bad = || ApiError::invalid(format!("{field}: {s:?} is not a handoff id (KEY@REVISION)"));
    let (key, rev) = s.rsplit_once('@').ok_or_else(bad)?;
    if key.is_empty() || rev.is_empty() || !rev.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    Ok(HandoffId {
        key: key.to_string(),
        revision: rev.parse().map_err(|_| bad())?,
    })
}

impl ClusterService {
    /// How many of `voters` are reachable from the leader (this node).
    fn reachable_voters(&self, voters: &[u64]) -> usize {
        let members = self.members();
        voters
            .iter()
            .filter(|id| members.members.iter().any(|m| m.id == **id && m.reachable))
            .count()
    }
}
