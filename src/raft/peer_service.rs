//! Incoming peer RPCs: the `inflight.v1.Raft` gRPC service.
//!
//! Each call decodes an openraft message, hands it to the local Raft node and
//! encodes the answer. A payload that does not decode is refused with
//! `INVALID_ARGUMENT` (and ends a stream); it never reaches openraft. A
//! received snapshot is held to the bounds of `snapshot_stream` (size, idle
//! time, rate) and checked (magic, checksum, format) before openraft is asked
//! to install it.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, StreamAppendResult, TransferLeaderRequest,
    VoteRequest,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status, Streaming};

use std::sync::Arc;

use super::batch::Reply;
use super::follower_read::{ReadIndexRequest, ReadIndexResponse};
use super::forward::ForwardBatch;
use super::node::LeaderContact;
use super::snapshot_stream;
use super::state_machine::decode_snapshot;
use super::{Raft, Snapshot, TypeConfig};
use crate::codec;
use crate::memory::Reservations;
use crate::pb::{RaftMessage, SnapshotChunk};
use crate::shutdown::Shutdown;

pub struct PeerService {
    raft: Raft,
    contact: Arc<LeaderContact>,
    /// A snapshot being received counts here (the memory budget's
    /// `snapshot` part) until it is installed or refused.
    snapshots: Reservations,
    /// The listeners' stop signal: replication streams end on it, so that
    /// the server's graceful stop can finish.
    stop: Shutdown,
    /// This node's batched ReadIndex queue, which followers' read-index
    /// requests join (`follower_read`).
    reads: tokio::sync::mpsc::UnboundedSender<Reply<u64>>,
    /// Serves the writes followers forward (`Raft.Forward`).
    forward: ForwardHandler,
}

/// What serves forwarded writes: given their payloads in the order the
/// follower queued them, it proposes them in that order and answers one
/// payload per write. Payloads and answers are the API layer's
/// (`api::forward`); this layer only carries them.
pub type ForwardHandler = Arc<
    dyn Fn(Vec<Vec<u8>>) -> futures::future::BoxFuture<'static, Result<Vec<Vec<u8>>, Status>>
        + Send
        + Sync,
>;

impl PeerService {
    pub fn new(
        raft: Raft,
        contact: Arc<LeaderContact>,
        snapshots: Reservations,
        stop: Shutdown,
        reads: tokio::sync::mpsc::UnboundedSender<Reply<u64>>,
        forward: ForwardHandler,
    ) -> Self {
        PeerService {
            raft,
            contact,
            snapshots,
            stop,
            reads,
            forward,
        }
    }
}

pub(super) fn decode<T: DeserializeOwned>(req: Request<RaftMessage>) -> Result<T, Status> {
    codec::decode(&req.into_inner().payload)
        .map_err(|e| Status::invalid_argument(format!("payload: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Response<RaftMessage>, Status> {
    let payload = codec::encode(v).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftMessage {
        payload,
        ..Default::default()
    }))
}

fn stopped(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft node stopped: {e}"))
}

/// Whether an AppendEntries answer counts as contact with the leader (a
/// follower that heard from it lately sends clients there): only one this
/// node accepted. A `Conflict` or a `HigherVote` (the sender is not our
/// leader: a deposed leader still sending) does not. How fresh the state
/// is, for `max_staleness_ms`, is another matter: `contact`.
pub(super) fn counts_as_contact(resp: &AppendEntriesResponse<TypeConfig>) -> bool {
    match resp {
        AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_) => true,
        AppendEntriesResponse::Conflict | AppendEntriesResponse::HigherVote(_) => false,
    }
}

/// [`counts_as_contact`] for one answer on a replication stream: `Ok` is an
/// accepted append; `Err` is a conflict or a higher vote.
pub(super) fn stream_counts_as_contact(result: &StreamAppendResult<TypeConfig>) -> bool {
    result.is_ok()
}

#[tonic::async_trait]
impl crate::pb::raft_server::Raft for PeerService {
    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest<TypeConfig> = decode(req)?;
        encode(&self.raft.vote(rpc).await.map_err(stopped)?)
    }

    async fn pre_vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest<TypeConfig> = decode(req)?;
        encode(&self.raft.pre_vote(rpc).await.map_err(stopped)?)
    }

    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.contact.note(req.get_ref().fresh_as_of);
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req)?;
        let resp = self.raft.append_entries(rpc).await.map_err(stopped)?;
        if counts_as_contact(&resp) {
            self.contact.heard();
        }
        let mut answer = encode(&resp)?;
        answer.get_mut().clock = Some(self.contact.reading());
        Ok(answer)
    }

    type StreamAppendStream = Pin<Box<dyn Stream<Item = Result<RaftMessage, Status>> + Send>>;

    async fn stream_append(
        &self,
        req: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        let noted = self.contact.clone();
        // The input ends at the first message that fails to arrive or decode
        // (the appends after it would leave a gap); openraft then sees the
        // stream close and the leader reconnects.
        let input = req
            .into_inner()
            .map(move |m| {
                let m = m.map_err(drop)?;
                noted.note(m.fresh_as_of);
                codec::decode::<AppendEntriesRequest<TypeConfig>>(&m.payload).map_err(|e| {
                    tracing::warn!(error = %e, "stream-append: undecodable request; closing stream");
                })
            })
            .take_while(|r| futures::future::ready(r.is_ok()))
            .filter_map(|r| futures::future::ready(r.ok()));
        let contact = self.contact.clone();
        let output = self
            .raft
            .stream_append(Box::pin(input))
            .map(move |r| match r {
                Ok(result) => {
                    if stream_counts_as_contact(&result) {
                        contact.heard();
                    }
                    codec::encode(&result)
                        .map(|payload| RaftMessage {
                            payload,
                            clock: Some(contact.reading()),
                            ..Default::default()
                        })
                        .map_err(|e| Status::internal(e.to_string()))
                }
                Err(fatal) => Err(stopped(fatal)),
            })
            .take_until(self.stop.clone().into_requested());
        Ok(Response::new(Box::pin(output)))
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftMessage>, Status> {
        // `_held` counts the blob until the install is done: it is received
        // here, and the state machine reserves the body it decodes on top.
        let snapshot_stream::Received {
            vote,
            meta,
            data,
            held: _held,
        } = snapshot_stream::receive(req.into_inner(), &self.snapshots, Default::default()).await?;
        let (body_meta, _) = decode_snapshot(&data)
            .map_err(|e| Status::invalid_argument(format!("snapshot: {e}")))?;
        if body_meta.last_log_id != meta.last_log_id {
            return Err(Status::invalid_argument(
                "snapshot: meta does not match the snapshot content",
            ));
        }
        let resp = self
            .raft
            .install_full_snapshot(
                vote,
                Snapshot {
                    meta,
                    snapshot: data,
                },
            )
            .await
            .map_err(stopped)?;
        encode(&resp)
    }

    async fn transfer_leader(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc: TransferLeaderRequest<TypeConfig> = decode(req)?;
        encode(
            &self
                .raft
                .handle_transfer_leader(rpc)
                .await
                .map_err(stopped)?,
        )
    }

    /// A follower asks for the read index: answered after this node's next
    /// ReadIndex round (shared with its own reads) confirms that it leads.
    /// Elsewhere: FAILED_PRECONDITION naming the leader it knows.
    async fn read_index(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: ReadIndexRequest = decode(req)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.reads
            .send(reply)
            .map_err(|_| stopped("the read batcher has stopped"))?;
        let index = match answer.await {
            Err(_) => return Err(stopped("the node is shutting down")),
            Ok(Err(e @ super::Error::NotLeader { .. })) => {
                return Err(Status::failed_precondition(e.to_string()))
            }
            Ok(Err(e)) => {
                tracing::debug!(from = rpc.from, error = %e, "read index refused");
                return Err(Status::unavailable(e.to_string()));
            }
            Ok(Ok(index)) => index,
        };
        let (leader, term) = {
            let rx = self.raft.metrics();
            let m = openraft::async_runtime::WatchReceiver::borrow_watched(&rx);
            (m.id, m.current_term)
        };
        encode(&ReadIndexResponse {
            leader,
            term,
            index,
        })
    }

    /// Writes a follower's clients sent (`forward`): served by the API
    /// layer, which answers each with its own encoding (a refusal
    /// included, so that the follower tells its client what this node
    /// would have told it).
    async fn forward(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let ForwardBatch(writes) = decode(req)?;
        let n = writes.len();
        let answers = (self.forward)(writes).await?;
        if answers.len() != n {
            return Err(Status::internal(format!(
                "{} answers to {n} forwarded writes",
                answers.len()
            )));
        }
        encode(&ForwardBatch(answers))
    }
}

#[cfg(test)]
mod tests {
    use openraft::raft::StreamAppendError;
    use openraft::testing::log_id as log_id_of;

    use super::*;
    use crate::raft::LogId;

    fn log_id(term: u64, index: u64) -> LogId {
        log_id_of::<TypeConfig>(term, 1, index)
    }

    #[test]
    fn only_accepted_appends_count_as_leader_contact() {
        let higher = openraft::impls::Vote::new(9, 2);
        assert!(counts_as_contact(&AppendEntriesResponse::Success));
        assert!(counts_as_contact(&AppendEntriesResponse::PartialSuccess(
            Some(log_id(1, 3))
        )));
        assert!(!counts_as_contact(&AppendEntriesResponse::Conflict));
        assert!(!counts_as_contact(&AppendEntriesResponse::HigherVote(
            higher
        )));

        assert!(stream_counts_as_contact(&Ok(Some(log_id(1, 3)))));
        assert!(stream_counts_as_contact(&Ok(None)));
        assert!(!stream_counts_as_contact(&Err(
            StreamAppendError::Conflict(log_id(1, 3))
        )));
        assert!(!stream_counts_as_contact(&Err(
            StreamAppendError::HigherVote(higher)
        )));
    }
}
