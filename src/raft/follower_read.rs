//! Follower reads: LINEARIZABLE reads served by any member, as etcd serves
//! them.
//!
//! A follower (or learner) cannot know by itself that its state holds every
//! write acknowledged before a read began. It asks the leader for its *read
//! index*: the leader confirms its leadership with a quorum (the same
//! batched ReadIndex round its own reads use, see `batch`) and answers its
//! commit index at that moment. Once the follower has applied that far, its
//! table holds every write the cluster acknowledged before the read arrived,
//! and the read is served locally.
//!
//! Applied entries are committed, so an index applied on the follower holds
//! the same entry as on the leader: waiting for the index alone is enough.
//!
//! Batching: one request to the leader is in flight at a time, and it serves
//! every read that was waiting when it was sent. A read that arrives while a
//! request is out waits for the next one, since the leader may have fixed the
//! index of the request in flight before that read began.
//!
//! A follower that cannot reach a leader (none known, the known one silent
//! or deposed, no quorum behind it) keeps trying until the read's deadline,
//! then answers UNAVAILABLE; it never falls back to its local state.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::batch::Reply;
use super::network::PeerNetwork;
use super::{known_leader, Error, KnownLeader, NodeId, Raft};

/// A follower's request for the leader's read index (the peer RPC's payload).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadIndexRequest {
    /// The asking member, for the leader's logs.
    pub from: NodeId,
}

/// The leader's answer: apply up to `index`, then read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadIndexResponse {
    pub leader: NodeId,
    pub term: u64,
    pub index: u64,
}

/// One read waiting for a read index from the leader.
pub(super) struct Waiter {
    /// The read's deadline; a round lasts until the latest of its waiters'.
    pub deadline: Instant,
    pub reply: Reply<u64>,
}

/// How long to wait before asking again after a failed attempt (an
/// election in progress, a leader that just lost its place): long enough
/// not to spin against a node that refuses at once.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// What a round needs: who this node is, its view of the leader, the way to
/// the leader's peer port, and its own ReadIndex queue for when it leads.
pub(super) struct RemoteReads {
    pub id: NodeId,
    pub raft: Raft,
    pub network: PeerNetwork,
    pub local: mpsc::UnboundedSender<Reply<u64>>,
}

impl RemoteReads {
    /// One round: the leader's read index, asked for until `deadline`.
    async fn round(&self, deadline: Instant) -> Result<u64, Error> {
        let mut why;
        loop {
            // Each arm returns the read index, or says why there is none yet.
            why = match known_leader(&self.raft, self.id) {
                None => "no leader is known (election in progress?)".to_string(),
                Some(KnownLeader::ThisNode) => {
                    let (reply, answer) = oneshot::channel();
                    if self.local.send(reply).is_err() {
                        return Err(Error::Stopped("the read batcher has stopped".into()));
                    }
                    match tokio::time::timeout_at(deadline, answer).await {
                        Ok(Ok(Ok(index))) => return Ok(index),
                        Ok(Ok(Err(e))) => format!("as the leader: {e}"),
                        Ok(Err(_)) => {
                            return Err(Error::Stopped("the node is shutting down".into()))
                        }
                        Err(_) => "as the leader: no quorum confirmed it in time".to_string(),
                    }
                }
                Some(KnownLeader::Peer { id, peer_address }) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let req = ReadIndexRequest { from: self.id };
                    match self.network.read_index(&peer_address, &req, left).await {
                        Ok(r) => return Ok(r.index),
                        Err(e) => format!("asking leader {id} at {peer_address}: {e}"),
                    }
                }
            };
            let pause = (Instant::now() + RETRY_PAUSE).min(deadline);
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep_until(pause).await;
        }
        Err(Error::Unavailable(format!(
            "linearizable read: this node could not get a read index from the leader within the read's \
             deadline ({why}); it does not serve unconfirmed local state. Retry, or read from another node"
        )))
    }
}

/// Answers the waiting reads with one round at a time, until every sender
/// is gone.
pub(super) async fn remote_read_loop(reads: RemoteReads, mut rx: mpsc::UnboundedReceiver<Waiter>) {
    while let Some(first) = rx.recv().await {
        let mut waiting = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiting.push(w);
        }
        // Readers whose deadline passed have stopped listening.
        waiting.retain(|w| !w.reply.is_closed());
        let Some(deadline) = waiting.iter().map(|w| w.deadline).max() else {
            continue;
        };
        crate::metrics::METRICS
            .follower_read_batch_size
            .observe(waiting.len() as f64);
        let result = reads.round(deadline).await;
        for w in waiting {
            let _ = w.reply.send(result.clone());
        }
    }
}
