//! Writes forwarded from a follower to the leader.
//!
//! A Redis client does not follow redirects: most are pointed at one
//! address, often a load balancer in front of every node. So a write that
//! reaches a follower's RESP port is passed on to the leader over the peer
//! port (`Raft.Forward`) and the client gets the leader's answer, as if it
//! had asked the leader itself. The gRPC port keeps answering a follower's
//! write with the leader's address: its client library follows it, and one
//! hop is cheaper than two.
//!
//! What the leader receives is the write after this node has validated and
//! authorized it: the ops, the request id, whether they are an atomic batch,
//! and the caller's certificate names. The leader authorizes the ops again
//! against its own policy (an auth file may be reloaded on one node before
//! another), admits them under its own memory budget, and proposes them the
//! way it proposes its own clients' writes: one batch with them. Its answer
//! is what it would have answered its own client (`ApiError` included), so
//! that the RESP port's replies do not depend on where the client
//! connected. Peers are trusted with callers' identities as they are with
//! log entries: with peer TLS only a member's certificate opens the peer
//! port.
//!
//! One hop at most: a leader that has lost its place answers "not the
//! leader" (naming the one it knows) instead of forwarding again, and the
//! client sees `READONLY` with that leader, as it did before forwarding. So
//! does a client whose write reached a follower that knows no leader, or
//! whose leader runs a version without `Raft.Forward` (`UNIMPLEMENTED`),
//! which is what a rolling upgrade meets.
//!
//! An answer that does not come back (the leader dies, the link is cut, no
//! answer within `FORWARD_TIMEOUT`) leaves the write's outcome unknown,
//! exactly as a lost answer from the leader itself would; a retry with the
//! same request id (`REQID`) is safe.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use serde::{Deserialize, Serialize};
use tonic::{Code, Status};

use super::records::InFlightService;
use super::ApiError;
use crate::auth::Caller;
use crate::codec;
use crate::raft::{ForwardHandler, LeaderWait, UnaryError};
use crate::state::{Applied, Op};

/// How long a follower waits for the leader's answer to a forwarded write.
/// A proposal normally commits within milliseconds; past this the leader
/// is cut off or overloaded and the client is better told so.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// A forwarded write (`Raft.Forward`'s payload).
#[derive(Debug, Serialize, Deserialize)]
struct ForwardedWrite {
    /// The caller's certificate names, CN first; `None`: no client TLS on
    /// the follower's port (anonymous).
    caller: Option<Vec<String>>,
    ops: Vec<Op>,
    request_id: String,
    /// An atomic batch (`MULTI`/`EXEC`): errors name the failing op.
    batch: bool,
}

/// The leader's answer: what its own client would have got.
type ForwardedAnswer = Result<Vec<Applied>, ApiError>;

impl InFlightService {
    /// On a follower: sends validated, authorized `ops` to the leader and
    /// returns its answer.
    pub(super) async fn forward(
        &self,
        caller: &Caller,
        ops: Vec<Op>,
        request_id: String,
        batch: bool,
    ) -> Result<Vec<Applied>, ApiError> {
        let write = ForwardedWrite {
            caller: match caller {
                Caller::Anonymous => None,
                Caller::Certified(names) => Some(names.to_vec()),
            },
            ops,
            request_id,
            batch,
        };
        let payload = codec::encode(&write).map_err(|e| ApiError::Internal(e.to_string()))?;
        crate::metrics::METRICS.writes_forwarded.inc();
        let unknown = |leader: u64, why: String| {
            ApiError::OutcomeUnknown(format!(
                "outcome unknown: the write was forwarded to the leader, node {leader}, and {why}; it may \
                 or may not have been applied"
            ))
        };
        match self
            .node()
            .forward_to_leader(payload, FORWARD_TIMEOUT)
            .await
        {
            Ok((leader, reply)) => codec::decode::<ForwardedAnswer>(&reply)
                .map_err(|e| unknown(leader, format!("its answer does not decode ({e})")))?,
            Err(None) => Err(ApiError::NotLeader { leader: None }),
            Err(Some((leader, e))) => Err(match e {
                UnaryError::Address(e) => ApiError::Unavailable(format!(
                    "cannot forward the write to the leader, node {leader}: {e}"
                )),
                // A leader without forwarding (an older version, during an
                // upgrade): the client goes there itself.
                UnaryError::Status(s) if s.code() == Code::Unimplemented => ApiError::NotLeader {
                    leader: self.node().leader(),
                },
                // The leader could not read it: nothing was proposed.
                UnaryError::Status(s) if s.code() == Code::InvalidArgument => {
                    ApiError::Internal(format!(
                        "the leader, node {leader}, refused a forwarded write: {}",
                        s.message()
                    ))
                }
                e @ (UnaryError::Status(_) | UnaryError::Timeout(_)) => {
                    unknown(leader, format!("no answer came back ({e})"))
                }
            }),
        }
    }

    /// What serves the writes followers forward to this node: give it to
    /// the peer port (`raft::Node::peer_service`).
    pub fn forward_handler(&self) -> ForwardHandler {
        let svc = self.clone();
        Arc::new(move |payload| {
            let svc = svc.clone();
            async move { svc.serve_forwarded(payload).await }.boxed()
        })
    }

    /// On the leader: authorizes and proposes a forwarded write; the answer
    /// is encoded whether it succeeded or not.
    async fn serve_forwarded(&self, payload: Vec<u8>) -> Result<Vec<u8>, Status> {
        let w: ForwardedWrite = codec::decode(&payload)
            .map_err(|e| Status::invalid_argument(format!("forwarded write: {e}")))?;
        let caller = match w.caller {
            None => Caller::Anonymous,
            Some(names) => Caller::Certified(names.into()),
        };
        let answer: ForwardedAnswer = async {
            self.authorize_ops(&caller, &w.ops, w.batch)?;
            self.propose_on_leader(w.ops, w.request_id, w.batch, LeaderWait::Answer)
                .await
        }
        .await;
        codec::encode(&answer).map_err(|e| Status::internal(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Rejection;

    /// The answers a follower passes on keep their kind, so that the RESP
    /// port maps them as it maps the leader's own.
    #[test]
    fn answers_cross_the_peer_port_intact() {
        let answers: Vec<ForwardedAnswer> = vec![
            Err(ApiError::Rejected(Rejection::NotFound { key: "k".into() })),
            Err(ApiError::NotLeader {
                leader: Some((2, "127.0.0.1:7002".into())),
            }),
            Err(ApiError::ResourceExhausted("memory budget".into())),
            Err(ApiError::PermissionDenied {
                op: Some(1),
                denied: crate::auth::Denied("no".into()),
            }),
        ];
        for a in answers {
            let back: ForwardedAnswer = codec::decode(&codec::encode(&a).unwrap()).unwrap();
            assert_eq!(format!("{back:?}"), format!("{a:?}"));
        }
    }
}
