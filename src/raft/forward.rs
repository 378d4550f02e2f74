//! Writes forwarded from this follower to the leader (`Raft.Forward`),
//! carried as opaque payloads (their meaning is `api::forward`'s).
//!
//! One request to the leader is in flight at a time, and it carries every
//! write queued while the previous one was out, in the order they were
//! queued; the leader proposes them in that order. So a client's writes
//! reach the leader's proposer in the order it sent them, whichever node it
//! sent them to (separate RPCs would race: the leader runs each incoming
//! stream as a task of its own), and a burst of writes costs one round
//! trip. The queue is bounded: past `QUEUE` waiting writes a write is
//! refused at once rather than held.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::network::{PeerNetwork, UnaryError};
use super::{known_leader, KnownLeader, NodeId, Raft};

/// Writes waiting to be forwarded, at most.
pub const QUEUE: usize = 4_096;
/// Writes in one request, at most.
const PER_REQUEST: usize = 1_000;
/// Payload bytes in one request, at most (one write may be larger; it
/// then goes alone).
const REQUEST_BYTES: usize = 16 << 20;

/// `Raft.Forward`'s request and answer: one payload per write, in order.
#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardBatch(pub Vec<Vec<u8>>);

/// Why a forwarded write got no answer from the leader.
#[derive(Clone, Debug)]
pub enum ForwardError {
    /// No leader is known (or this node leads): nothing was sent.
    NoLeader,
    /// `QUEUE` writes are waiting already: nothing was sent.
    Busy,
    /// The node is stopping.
    Stopped,
    /// The request to the leader failed.
    Failed { leader: NodeId, error: UnaryError },
}

pub(super) struct Forward {
    pub payload: Vec<u8>,
    pub reply: oneshot::Sender<Result<(NodeId, Vec<u8>), ForwardError>>,
}

/// Forwards queued writes until the node stops: one request at a time,
/// each with every write that is waiting, answered within `timeout`.
pub(super) async fn forward_loop(
    me: NodeId,
    raft: Raft,
    network: PeerNetwork,
    timeout: Duration,
    mut queue: mpsc::Receiver<Forward>,
) {
    while let Some(first) = queue.recv().await {
        let mut bytes = first.payload.len();
        let mut batch = vec![first];
        while batch.len() < PER_REQUEST && bytes < REQUEST_BYTES {
            match queue.try_recv() {
                Ok(f) => {
                    bytes += f.payload.len();
                    batch.push(f);
                }
                Err(_) => break,
            }
        }
        let (payloads, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|f| (f.payload, f.reply)).unzip();
        let Some(KnownLeader::Peer {
            id,
            peer_address: addr,
        }) = known_leader(&raft, me)
        else {
            for r in replies {
                let _ = r.send(Err(ForwardError::NoLeader));
            }
            continue;
        };
        let n = payloads.len();
        crate::metrics::METRICS.forward_batch_size.observe(n as f64);
        let answer = match crate::codec::encode(&ForwardBatch(payloads)) {
            Ok(request) => network.forward(&addr, request, timeout).await,
            Err(e) => Err(UnaryError::NotSent(format!("encoding the request: {e}"))),
        };
        let answers = answer.and_then(|reply| match crate::codec::decode::<ForwardBatch>(&reply) {
            Ok(ForwardBatch(a)) if a.len() == n => Ok(a),
            Ok(ForwardBatch(a)) => Err(UnaryError::Status(tonic::Status::internal(format!(
                "the leader answered {} of {n} forwarded writes",
                a.len()
            )))),
            Err(e) => Err(UnaryError::Status(tonic::Status::internal(format!(
                "the leader's answer does not decode: {e}"
            )))),
        });
        match answers {
            Ok(a) => {
                for (r, a) in replies.into_iter().zip(a) {
                    let _ = r.send(Ok((id, a)));
                }
            }
            Err(error) => {
                for r in replies {
                    let _ = r.send(Err(ForwardError::Failed {
                        leader: id,
                        error: error.clone(),
                    }));
                }
            }
        }
    }
}
