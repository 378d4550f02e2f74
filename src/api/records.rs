//! `inflight.v1.InFlight`: the record API.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use openraft::ReadPolicy;
use tonic::{Request, Response, Status};

use super::{record_to_pb, ApiError, Limits};
use crate::pb;
use crate::raft::bootstrap::RaftNode;
use crate::raft::Raft;
use crate::state::{Command, Op, Store};

/// A scan page stops once its values reach this many bytes (it always holds
/// at least one record), so pages of large values stay a sane message size.
pub const SCAN_PAGE_BYTES: usize = 4 << 20;

pub struct RecordService {
    raft: Raft,
    store: Arc<Store>,
    node: RaftNode,
    limits: Limits,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl RecordService {
    pub fn new(node: RaftNode, limits: Limits) -> Self {
        RecordService {
            raft: node.raft.clone(),
            store: node.store.clone(),
            node,
            limits,
        }
    }

    /// Proposes `op` through Raft and turns the applied outcome into a response.
    async fn propose(&self, op: Op) -> Result<Response<pb::MutationResponse>, Status> {
        let cmd = Command {
            at_ms: now_ms(),
            op,
        };
        let resp = self.raft.client_write(cmd).await.map_err(ApiError::from)?;
        let applied = resp
            .data
            .ok_or_else(|| ApiError::Internal("a client command produced no outcome".into()))?
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::MutationResponse {
            revision: applied.revision,
            record: Some(record_to_pb(applied.key, applied.record)),
        }))
    }

    /// Makes the local state fit for a read at the requested consistency.
    async fn read_barrier(&self, consistency: i32) -> Result<(), ApiError> {
        let c = pb::Consistency::try_from(consistency)
            .map_err(|_| ApiError::invalid(format!("consistency: unknown value {consistency}")))?;
        match c {
            pb::Consistency::Linearizable => {
                self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await?;
            }
            pb::Consistency::Lease => {
                self.raft.ensure_linearizable(ReadPolicy::LeaseRead).await?;
            }
            pb::Consistency::Stale => {
                if !self.node.is_recovered() {
                    return Err(ApiError::Unavailable(
                        "node is still replaying its log after a restart; a local read could be older than one \
                         it served before. Retry, or read from another node"
                            .into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl pb::in_flight_server::InFlight for RecordService {
    async fn insert(
        &self,
        req: Request<pb::InsertRequest>,
    ) -> Result<Response<pb::MutationResponse>, Status> {
        let r = req.into_inner();
        self.limits.key(&r.key)?;
        self.limits.value("value", &r.value)?;
        self.propose(Op::Insert {
            key: r.key,
            value: Bytes::from(r.value),
        })
        .await
    }

    async fn update(
        &self,
        req: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::MutationResponse>, Status> {
        let r = req.into_inner();
        self.limits.key(&r.key)?;
        self.limits.value("value", &r.value)?;
        self.limits.if_version(r.if_version)?;
        self.propose(Op::Update {
            key: r.key,
            value: Bytes::from(r.value),
            if_version: r.if_version,
        })
        .await
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let r = req.into_inner();
        self.limits.key(&r.key)?;
        self.read_barrier(r.consistency).await?;
        let revision = self.store.revision();
        match self.store.get(&r.key) {
            Some(rec) => Ok(Response::new(pb::GetResponse {
                record: Some(record_to_pb(r.key, rec)),
                revision,
            })),
            None => {
                Err(ApiError::Rejected(crate::state::Rejection::NotFound { key: r.key }).into())
            }
        }
    }

    async fn scan(
        &self,
        req: Request<pb::ScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        let r = req.into_inner();
        self.limits.prefix("prefix", &r.prefix)?;
        self.limits.prefix("after_key", &r.after_key)?;
        let limit = self.limits.scan_limit(r.limit)?;
        self.read_barrier(r.consistency).await?;
        let revision = self.store.revision();
        let after = (!r.after_key.is_empty()).then_some(r.after_key.as_str());
        let page = self.store.scan(&r.prefix, after, limit, SCAN_PAGE_BYTES);
        Ok(Response::new(pb::ScanResponse {
            records: page
                .records
                .into_iter()
                .map(|(k, v)| record_to_pb(k, v))
                .collect(),
            more: page.more,
            revision,
        }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::MutationResponse>, Status> {
        let r = req.into_inner();
        self.limits.key(&r.key)?;
        self.limits.if_version(r.if_version)?;
        self.propose(Op::Delete {
            key: r.key,
            if_version: r.if_version,
        })
        .await
    }

    async fn complete(
        &self,
        req: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::MutationResponse>, Status> {
        let r = req.into_inner();
        self.limits.key(&r.key)?;
        if let Some(v) = &r.value {
            self.limits.value("value", v)?;
        }
        self.limits.if_version(r.if_version)?;
        self.propose(Op::Complete {
            key: r.key,
            value: r.value.map(Bytes::from),
            if_version: r.if_version,
        })
        .await
    }
}
