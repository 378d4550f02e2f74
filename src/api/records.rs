//! `inflight.v1.InFlight`: the record API.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use tonic::{Request, Response, Status};

use super::response::{self, RESPONSE_BYTES};
use super::session::{session_stream, SessionStream};
use super::watch::{watch_stream, WatchStream};
use super::{record_to_pb, ApiError, Limits};
use crate::auth::{Authorizer, Caller, Operation, Target};
use crate::codec;
use crate::handoff::HandoffState;
use crate::pb;
use crate::raft::{self, LeaderWait};
use crate::shutdown::Shutdown;
use crate::state::{Action, Applied, Command, Op, RequestTag, Table, TtlChange};

/// How the cluster keeps request ids. Set by the leader's flags and carried
/// in every tagged command, so all replicas forget, and refuse, at the same
/// point of the log.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    /// Ids are forgotten once this old.
    pub window_ms: u64,
    /// Ids are never forgotten younger than this; past `max_bytes` new tagged
    /// writes are refused instead. Must cover the client library's longest
    /// retry (`ClientOptions::retry_for` plus one `request_timeout`).
    pub min_window_ms: u64,
    /// The id table's bound in bytes.
    pub max_bytes: u64,
}

/// The default guaranteed window: the client library's default retry span
/// (20 s) plus its last attempt's timeout (5 s), with room for clock skew
/// between successive leaders.
pub const DEFAULT_MIN_WINDOW_MS: u64 = 60_000;

impl Default for Retention {
    fn default() -> Self {
        Retention {
            window_ms: 10 * 60 * 1000,
            min_window_ms: DEFAULT_MIN_WINDOW_MS,
            max_bytes: 256 << 20,
        }
    }
}

/// The proto's `InFlight` service: validates each request, turns it into a
/// command or a read, and goes through [`raft::Node`]. Cheap to clone: a
/// session stream's task holds its own copy.
#[derive(Clone)]
pub struct InFlightService {
    node: raft::Node,
    /// The listeners' stop signal: long-lived streams (sessions, watches)
    /// end on it, so that the server's graceful stop can finish.
    stop: Shutdown,
    limits: Limits,
    retention: Retention,
    handoff: Arc<HandoffState>,
    auth: Arc<Authorizer>,
    /// Writes that reach a follower go to the leader (`forward`).
    forward_writes: bool,
}

impl InFlightService {
    pub fn new(
        node: raft::Node,
        stop: Shutdown,
        limits: Limits,
        retention: Retention,
        handoff: Arc<HandoffState>,
        auth: Arc<Authorizer>,
    ) -> Self {
        InFlightService {
            node,
            stop,
            limits,
            retention,
            handoff,
            auth,
            forward_writes: false,
        }
    }

    /// This service with writes that reach a follower forwarded to the
    /// leader (`forward`), for the RESP port, whose clients do not follow
    /// redirects.
    pub fn forwarding_writes(mut self) -> Self {
        self.forward_writes = true;
        self
    }

    /// Proposes `ops` (authorized for `caller`) as one log entry and returns
    /// one `Applied` per op. On a follower: the leader's name, or with
    /// `forward_writes` the leader's answer.
    async fn propose(
        &self,
        caller: &Caller,
        ops: Vec<Op>,
        request_id: String,
        batch: bool,
        wait: LeaderWait,
    ) -> Result<Vec<Applied>, ApiError> {
        if self.forward_writes {
            if let Err(raft::Error::NotLeader { .. }) = self.node.leader_only(wait).await {
                if !request_id.is_empty() {
                    self.limits.request_id(&request_id)?;
                }
                return self.forward(caller, ops, request_id, batch).await;
            }
        }
        self.propose_on_leader(ops, request_id, batch, wait).await
    }

    /// `propose` on this node: the leader's own proposal, or, elsewhere,
    /// the error that names the leader.
    pub(super) async fn propose_on_leader(
        &self,
        ops: Vec<Op>,
        request_id: String,
        batch: bool,
        wait: LeaderWait,
    ) -> Result<Vec<Applied>, ApiError> {
        if !request_id.is_empty() {
            self.limits.request_id(&request_id)?;
        }
        // Only the leader's proposals commit, so only its account admits: a
        // follower names the leader instead of judging by its own memory.
        self.node.leader_only(wait).await?;
        // Held until the proposal is answered or fails: the growth counts
        // against the budget until the applied records hold it.
        let _reserved = super::budget::admit(
            self.node.table(),
            self.node.memory_use(),
            self.node.reservations(),
            &self.handoff,
            &ops,
            &request_id,
        )?;
        let request = if request_id.is_empty() {
            None
        } else {
            Some(RequestTag {
                legacy_max_ids: None,
                id: request_id,
                fingerprint: codec::fingerprint(&ops)
                    .map_err(|e| ApiError::Internal(e.to_string()))?,
                window_ms: self.retention.window_ms,
                min_window_ms: self.retention.min_window_ms,
                max_bytes: self.retention.max_bytes,
            })
        };
        let cmd = Command {
            at_ms: self.node.stamp(),
            request,
            action: Action::Ops(ops),
        };
        let outcome = self.node.propose(cmd).await?;
        outcome.map_err(|f| ApiError::from_failure(f, batch))
    }

    async fn propose_one(
        &self,
        caller: &Caller,
        op: Op,
        request_id: String,
        wait: LeaderWait,
    ) -> Result<pb::MutationResponse, ApiError> {
        let applied = self
            .propose(caller, vec![op], request_id, false, wait)
            .await?;
        let a = applied
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::Internal("an op produced no result".into()))?;
        Ok(mutation_response(a))
    }

    // One handler per operation, shared by the unary calls and the frames of
    // the batching session (`session.rs`).

    pub(crate) async fn insert(
        &self,
        caller: &Caller,
        wait: LeaderWait,
        r: pb::InsertRequest,
    ) -> Result<pb::MutationResponse, ApiError> {
        self.auth
            .check(caller, Operation::Write, Target::Key(&r.key))?;
        let id = r.request_id.clone();
        let op = insert_op(&self.limits, r, "")?;
        self.propose_one(caller, op, id, wait).await
    }

    pub(crate) async fn update(
        &self,
        caller: &Caller,
        wait: LeaderWait,
        r: pb::UpdateRequest,
    ) -> Result<pb::MutationResponse, ApiError> {
        self.auth
            .check(caller, Operation::Write, Target::Key(&r.key))?;
        let id = r.request_id.clone();
        let op = update_op(&self.limits, r, "")?;
        self.propose_one(caller, op, id, wait).await
    }

    pub(crate) async fn delete(
        &self,
        caller: &Caller,
        wait: LeaderWait,
        r: pb::DeleteRequest,
    ) -> Result<pb::MutationResponse, ApiError> {
        self.auth
            .check(caller, Operation::Write, Target::Key(&r.key))?;
        let id = r.request_id.clone();
        let op = delete_op(&self.limits, r, "")?;
        self.propose_one(caller, op, id, wait).await
    }

    pub(crate) async fn complete(
        &self,
        caller: &Caller,
        wait: LeaderWait,
        r: pb::CompleteRequest,
    ) -> Result<pb::MutationResponse, ApiError> {
        self.auth
            .check(caller, Operation::Write, Target::Key(&r.key))?;
        let id = r.request_id.clone();
        let op = complete_op(&self.limits, r, "")?;
        self.propose_one(caller, op, id, wait).await
    }

    /// `timeout`: the caller's deadline, if it sent one (`grpc-timeout`).
    pub(crate) async fn get(
        &self,
        caller: &Caller,
        wait: LeaderWait,
        timeout: Option<std::time::Duration>,
        r: pb::GetRequest,
    ) -> Result<pb::GetResponse, ApiError> {
        self.get_as(caller, Operation::Read, wait, timeout, r).await
    }

    /// A get authorized as `op`: `Operation::Write` for the read a write
    /// makes on its own behalf (the RESP port's upsert reads the version it
    /// then updates at), which needs no grant to read.
    pub(crate) async fn get_as(
        &self,
        caller: &Caller,
        op: Operation,
        wait: LeaderWait,
        timeout: Option<std::time::Duration>,
        r: pb::GetRequest,
    ) -> Result<pb::GetResponse, ApiError> {
        self.auth.check(caller, op, Target::Key(&r.key))?;
        self.limits.key("key", &r.key)?;
        self.read_barrier(r.consistency, r.max_staleness_ms, wait, timeout)
            .await?;
        let (found, revision) = self.read(|s| s.get(&r.key))?;
        match found {
            Some(rec) => Ok(pb::GetResponse {
                record: Some(record_to_pb(r.key, rec)),
                revision,
                served_by: self.node.id(),
            }),
            None => Err(ApiError::Rejected(crate::state::Rejection::NotFound {
                key: r.key,
            })),
        }
    }

    /// Every op's write, before anything is proposed: one op outside the
    /// grant refuses them all (in a `batch`, naming that op).
    pub(super) fn authorize_ops(
        &self,
        caller: &Caller,
        ops: &[Op],
        batch: bool,
    ) -> Result<(), ApiError> {
        for (i, op) in ops.iter().enumerate() {
            self.auth
                .check(caller, Operation::Write, Target::Key(op.key()))
                .map_err(|denied| ApiError::PermissionDenied {
                    op: batch.then_some(i),
                    denied,
                })?;
        }
        Ok(())
    }

    /// A watch of the records under a prefix for `caller` (the gRPC
    /// `Watch`, and the RESP port's `SUBSCRIBE`); it ends when the node
    /// stops.
    pub(crate) fn watch_as(
        &self,
        caller: &Caller,
        r: pb::WatchRequest,
    ) -> Result<WatchStream, Status> {
        self.auth
            .check(caller, Operation::Watch, Target::Prefix(&r.prefix))
            .map_err(ApiError::from)?;
        self.limits.prefix("prefix", &r.prefix)?;
        let events = watch_stream(self.node.table().clone(), r)?;
        Ok(Box::pin(
            events.take_until(self.stop.clone().into_requested()),
        ))
    }

    /// An atomic batch: every op is authorized before anything is proposed.
    pub(crate) async fn batch(
        &self,
        caller: &Caller,
        r: pb::BatchRequest,
    ) -> Result<pb::BatchResponse, ApiError> {
        let ops = batch_ops(&self.limits, r.ops)?;
        self.authorize_ops(caller, &ops, true)?;
        let applied = self
            .propose(caller, ops, r.request_id, true, LeaderWait::Answer)
            .await?;
        let revision = applied.first().map(|a| a.revision).unwrap_or(0);
        let mut results: Vec<_> = applied.into_iter().map(mutation_response).collect();
        // 1,000 completes of large records must not answer with all their values.
        response::bound_values(&mut results, RESPONSE_BYTES, response::mutation_record);
        Ok(pb::BatchResponse { results, revision })
    }

    /// One page of the records under a prefix.
    pub(crate) async fn scan(
        &self,
        caller: &Caller,
        timeout: Option<std::time::Duration>,
        r: pb::ScanRequest,
    ) -> Result<pb::ScanResponse, ApiError> {
        self.auth
            .check(caller, Operation::Read, Target::Prefix(&r.prefix))?;
        self.limits.prefix("prefix", &r.prefix)?;
        self.limits.prefix("after_key", &r.after_key)?;
        let limit = self.limits.scan_limit(r.limit)?;
        self.read_barrier(
            r.consistency,
            r.max_staleness_ms,
            LeaderWait::Answer,
            timeout,
        )
        .await?;
        let after = (!r.after_key.is_empty()).then_some(r.after_key.as_str());
        // The table stops a page once its values reach the bound, which the
        // last record's value (and 10,000 keys of 512 bytes) can pass: the
        // page is cut to what fits in the encoded answer.
        let (page, revision) = self.read(|s| s.scan(&r.prefix, after, limit, RESPONSE_BYTES))?;
        let mut records: Vec<pb::Record> = page
            .records
            .into_iter()
            .map(|(k, v)| record_to_pb(k, v))
            .collect();
        let fits = response::scan_page_len(&records, RESPONSE_BYTES);
        let more = page.more || fits < records.len();
        records.truncate(fits);
        Ok(pb::ScanResponse {
            records,
            more,
            revision,
            served_by: self.node.id(),
        })
    }

    /// Whether `caller` may do `op` on `target`: for a command that checks
    /// all its keys before it does anything (the RESP port's multi-key DEL).
    pub(crate) fn authorize(
        &self,
        caller: &Caller,
        op: Operation,
        target: Target<'_>,
    ) -> Result<(), ApiError> {
        Ok(self.auth.check(caller, op, target)?)
    }

    /// The node behind the service (status, clock, table size).
    pub(crate) fn node(&self) -> &raft::Node {
        &self.node
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Reads the local table, and the revision it is at (read after the data,
    /// so it is never older than what is returned). A read that overlapped a
    /// snapshot install could mix two states, so it is refused.
    fn read<T>(&self, f: impl FnOnce(&Table) -> T) -> Result<(T, u64), ApiError> {
        let table = self.node.table();
        let before = table.restore_generation();
        let value = f(table);
        let revision = table.revision();
        if before % 2 == 1 || table.restore_generation() != before {
            return Err(ApiError::Unavailable(
                "node is installing a snapshot from the leader; retry, or read from another node"
                    .into(),
            ));
        }
        Ok((value, revision))
    }

    /// Makes the local state fit for a read at the requested consistency.
    async fn read_barrier(
        &self,
        consistency: i32,
        max_staleness_ms: Option<u64>,
        wait: LeaderWait,
        timeout: Option<std::time::Duration>,
    ) -> Result<(), ApiError> {
        let c = pb::Consistency::try_from(consistency)
            .map_err(|_| ApiError::invalid(format!("consistency: unknown value {consistency}")))?;
        if max_staleness_ms.is_some() && c != pb::Consistency::Stale {
            return Err(ApiError::invalid(
                "max_staleness_ms: only applies to STALE reads",
            ));
        }
        let level = match c {
            pb::Consistency::Linearizable => raft::Consistency::Linearizable,
            pb::Consistency::Lease => raft::Consistency::Lease,
            pb::Consistency::Stale => raft::Consistency::Stale { max_staleness_ms },
        };
        Ok(self.node.read_barrier(level, wait, timeout).await?)
    }
}

// What a request asks for, as validated ops: shared by the unary calls,
// the frames of the batching session and the decoder property tests.

pub(super) fn insert_op(limits: &Limits, r: pb::InsertRequest, at: &str) -> Result<Op, ApiError> {
    limits.key(&format!("{at}key"), &r.key)?;
    limits.value(&format!("{at}value"), &r.value)?;
    limits.ttl(&format!("{at}ttl_ms"), r.ttl_ms)?;
    Ok(Op::Insert {
        key: r.key,
        value: Bytes::from(r.value),
        ttl_ms: r.ttl_ms,
    })
}

pub(super) fn update_op(limits: &Limits, r: pb::UpdateRequest, at: &str) -> Result<Op, ApiError> {
    limits.key(&format!("{at}key"), &r.key)?;
    limits.value(&format!("{at}value"), &r.value)?;
    limits.if_version(&format!("{at}if_version"), r.if_version)?;
    limits.ttl(&format!("{at}ttl_ms"), r.ttl_ms)?;
    let ttl = match (r.ttl_ms, r.clear_ttl) {
        (Some(_), true) => {
            return Err(ApiError::invalid(format!(
                "{at}clear_ttl: cannot be combined with {at}ttl_ms"
            )))
        }
        (Some(t), false) => TtlChange::Set(t),
        (None, true) => TtlChange::Clear,
        (None, false) => TtlChange::Keep,
    };
    Ok(Op::Update {
        key: r.key,
        value: Bytes::from(r.value),
        if_version: r.if_version,
        ttl,
    })
}

pub(super) fn delete_op(limits: &Limits, r: pb::DeleteRequest, at: &str) -> Result<Op, ApiError> {
    limits.key(&format!("{at}key"), &r.key)?;
    limits.if_version(&format!("{at}if_version"), r.if_version)?;
    Ok(Op::Delete {
        key: r.key,
        if_version: r.if_version,
    })
}

pub(super) fn complete_op(
    limits: &Limits,
    r: pb::CompleteRequest,
    at: &str,
) -> Result<Op, ApiError> {
    limits.key(&format!("{at}key"), &r.key)?;
    if let Some(v) = &r.value {
        limits.value(&format!("{at}value"), v)?;
    }
    limits.if_version(&format!("{at}if_version"), r.if_version)?;
    Ok(Op::Complete {
        key: r.key,
        value: r.value.map(Bytes::from),
        if_version: r.if_version,
    })
}

fn batch_op(limits: &Limits, op: pb::BatchOp, i: usize) -> Result<Op, ApiError> {
    let at = format!("ops[{i}].");
    let (own_id, op) = match op.op {
        None => {
            return Err(ApiError::invalid(format!(
                "ops[{i}]: empty op (set insert, update, delete or complete)"
            )))
        }
        Some(pb::batch_op::Op::Insert(r)) => (r.request_id.clone(), insert_op(limits, r, &at)?),
        Some(pb::batch_op::Op::Update(r)) => (r.request_id.clone(), update_op(limits, r, &at)?),
        Some(pb::batch_op::Op::Delete(r)) => (r.request_id.clone(), delete_op(limits, r, &at)?),
        Some(pb::batch_op::Op::Complete(r)) => (r.request_id.clone(), complete_op(limits, r, &at)?),
    };
    if !own_id.is_empty() {
        return Err(ApiError::invalid(format!(
            "{at}request_id: set request_id on the batch, not on its ops"
        )));
    }
    Ok(op)
}

/// A batch's ops, each validated, within the batch's count and size limits.
pub(super) fn batch_ops(limits: &Limits, ops: Vec<pb::BatchOp>) -> Result<Vec<Op>, ApiError> {
    limits.batch_len(ops.len())?;
    let ops = ops
        .into_iter()
        .enumerate()
        .map(|(i, op)| batch_op(limits, op, i))
        .collect::<Result<Vec<_>, _>>()?;
    limits.batch_bytes(&ops)?;
    Ok(ops)
}

fn mutation_response(a: Applied) -> pb::MutationResponse {
    pb::MutationResponse {
        revision: a.revision,
        record: Some(record_to_pb(a.key, a.record)),
    }
}

/// What the caller asked a follower that has lost the leader to do
/// (`wire::WAIT_LEADER_KEY`).
fn leader_wait<T>(req: &Request<T>) -> LeaderWait {
    if req.metadata().contains_key(crate::wire::WAIT_LEADER_KEY) {
        LeaderWait::Hold
    } else {
        LeaderWait::Answer
    }
}

#[tonic::async_trait]
impl pb::in_flight_server::InFlight for InFlightService {
    async fn insert(
        &self,
        req: Request<pb::InsertRequest>,
    ) -> Result<Response<pb::MutationResponse>, Status> {
        Ok(Response::new(
            InFlightService::insert(self, &Caller::of(&req), leader_wait(&req), req.into_inner())
                .await?,
        ))
    }

    async fn update(
        &self,
        req: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::MutationResponse>, Status> {
        Ok(Response::new(
            InFlightService::update(self, &Caller::of(&req), leader_wait(&req), req.into_inner())
                .await?,
        ))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::MutationResponse>, Status> {
        Ok(Response::new(
            InFlightService::delete(self, &Caller::of(&req), leader_wait(&req), req.into_inner())
                .await?,
        ))
    }

    async fn complete(
        &self,
        req: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::MutationResponse>, Status> {
        Ok(Response::new(
            InFlightService::complete(self, &Caller::of(&req), leader_wait(&req), req.into_inner())
                .await?,
        ))
    }

    async fn batch(
        &self,
        req: Request<pb::BatchRequest>,
    ) -> Result<Response<pb::BatchResponse>, Status> {
        let caller = Caller::of(&req);
        Ok(Response::new(
            InFlightService::batch(self, &caller, req.into_inner()).await?,
        ))
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        Ok(Response::new(
            InFlightService::get(
                self,
                &Caller::of(&req),
                leader_wait(&req),
                crate::wire::grpc_timeout(req.metadata()),
                req.into_inner(),
            )
            .await?,
        ))
    }

    async fn scan(
        &self,
        req: Request<pb::ScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        let caller = Caller::of(&req);
        let timeout = crate::wire::grpc_timeout(req.metadata());
        Ok(Response::new(
            InFlightService::scan(self, &caller, timeout, req.into_inner()).await?,
        ))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = Caller::of(&req);
        Ok(Response::new(self.watch_as(&caller, req.into_inner())?))
    }

    type SessionStream = SessionStream;

    async fn session(
        &self,
        req: Request<tonic::Streaming<pb::Frame>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        // One stream, one connection, one certificate: read its names once.
        let caller = Caller::of(&req);
        Ok(Response::new(session_stream(
            self.clone(),
            caller,
            req.into_inner(),
            self.stop.clone(),
        )))
    }
}
