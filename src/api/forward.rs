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
//! and the caller's certificate names. Writes wait in one queue per node
//! and go out together, one request at a time, in the order they were
//! queued (`raft::forward`); the leader proposes them in that order, so a
//! pipeline's writes apply in the order sent on a follower too. The leader
//! authorizes each again against its own policy (an auth file may be
//! reloaded on one node before another), refuses an anonymous one if its
//! own client port requires certificates, admits it under its own memory
//! budget, and proposes it the way it proposes its own clients' writes. Its
//! answer is what it would have answered its own client (`ApiError`
//! included), so that the RESP port's replies do not depend on where the
//! client connected; only the records' values are left out. Peers are
//! trusted with callers' identities as they are with log entries: with peer
//! TLS only a member's certificate opens the peer port.
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
//! same request id (`REQID`) is safe. A request that never reached the
//! leader (no connection could be made) is `Unavailable`: nothing was
//! proposed.

use std::sync::Arc;

use futures::FutureExt;
use serde::{Deserialize, Serialize};
use tonic::{Code, Status};

use super::records::InFlightService;
use super::ApiError;
use crate::auth::Caller;
use crate::codec;
use crate::raft::{ForwardError, ForwardHandler, LeaderWait, UnaryError};
use crate::state::{Applied, Op};

pub use crate::raft::FORWARD_TIMEOUT;

/// A forwarded write (one payload of `Raft.Forward`).
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

/// The leader's answer: what its own client would have got, but without
/// the records' values (the RESP port's write replies use versions only,
/// and a batch of completes of large records must not make an answer of
/// any size).
type ForwardedAnswer = Result<Vec<Applied>, ApiError>;

impl InFlightService {
    /// On a follower: sends validated, authorized `ops` to the leader and
    /// returns its answer. The write is queued for the leader when this is
    /// first polled, so the writes of a pipeline, polled in order, reach
    /// the leader in order (`raft::forward`).
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
        match self.node().forward_to_leader(payload).await {
            Ok((leader, reply)) => codec::decode::<ForwardedAnswer>(&reply).map_err(|e| {
                unknown(leader, format!("its answer does not decode ({e})"))
            })?,
            Err(ForwardError::NoLeader) => Err(ApiError::NotLeader { leader: None }),
            Err(ForwardError::Busy) => Err(ApiError::Unavailable(format!(
                "{} writes are waiting to be forwarded to the leader already; retry, or write to the \
                 leader",
                crate::raft::FORWARD_QUEUE
            ))),
            Err(ForwardError::Stopped) => {
                Err(ApiError::Unavailable("this node is stopping".into()))
            }
            Err(ForwardError::Failed { leader, error }) => Err(match error {
                UnaryError::NotSent(e) => ApiError::Unavailable(format!(
                    "cannot forward the write to the leader, node {leader}: {e}"
                )),
                // A leader without forwarding (an older version, during an
                // upgrade): the client goes there itself.
                UnaryError::Status(s) if s.code() == Code::Unimplemented => ApiError::NotLeader {
                    leader: self.node().leader(),
                },
                // The leader could not read the request: nothing was proposed.
                UnaryError::Status(s) if s.code() == Code::InvalidArgument => ApiError::Internal(
                    format!("the leader, node {leader}, refused a forwarded write: {}", s.message()),
                ),
                UnaryError::Status(s) if never_arrived(&s) => ApiError::Unavailable(format!(
                    "cannot reach the leader, node {leader}, to forward the write: {}",
                    s.message()
                )),
                e @ (UnaryError::Status(_) | UnaryError::Timeout(_)) => {
                    unknown(leader, format!("no answer came back ({e})"))
                }
            }),
        }
    }

    /// What serves the writes followers forward to this node: give it to
    /// the peer port (`raft::Node::peer_service`). `client_certs`: this
    /// node's client port requires client certificates, so an anonymous
    /// forwarded write (from a node without them) is refused.
    pub fn forward_handler(&self, client_certs: bool) -> ForwardHandler {
        let svc = self.clone();
        Arc::new(move |writes| {
            let svc = svc.clone();
            async move { Ok(svc.serve_forwarded(writes, client_certs).await) }.boxed()
        })
    }

    /// On the leader: authorizes and proposes forwarded writes, in their
    /// order; one encoded answer each, whether it succeeded or not.
    async fn serve_forwarded(&self, writes: Vec<Vec<u8>>, client_certs: bool) -> Vec<Vec<u8>> {
        // Each write is polled for the first time in order, and a write
        // reaches the proposer on its first poll: so they are proposed in
        // the order the follower queued them.
        let answers = futures::future::join_all(
            writes
                .into_iter()
                .map(|payload| self.serve_one(payload, client_certs)),
        )
        .await;
        answers
            .into_iter()
            .map(|a| {
                codec::encode(&a).unwrap_or_else(|e| {
                    let refused: ForwardedAnswer = Err(ApiError::Internal(e.to_string()));
                    codec::encode(&refused).unwrap_or_default()
                })
            })
            .collect()
    }

    async fn serve_one(&self, payload: Vec<u8>, client_certs: bool) -> ForwardedAnswer {
        let w: ForwardedWrite = codec::decode(&payload)
            .map_err(|e| ApiError::Internal(format!("a forwarded write does not decode: {e}")))?;
        let caller =
            match w.caller {
                Some(names) => Caller::Certified(names.into()),
                None if client_certs => return Err(ApiError::PermissionDenied {
                    op: None,
                    denied: crate::auth::Denied(
                        "a write forwarded without a client certificate, but the leader's client \
                         port requires one: give every node the same TLS flags"
                            .into(),
                    ),
                }),
                None => Caller::Anonymous,
            };
        self.authorize_ops(&caller, &w.ops, w.batch)?;
        let mut applied = self
            .propose_on_leader(w.ops, w.request_id, w.batch, LeaderWait::Answer)
            .await?;
        for a in &mut applied {
            a.record.value = Default::default();
        }
        Ok(applied)
    }
}

/// An error from the transport that says the request never reached the
/// leader: the connection could not be made, or the leader refused the
/// stream before reading it. tonic reports both as `UNAVAILABLE` with the
/// cause in the text only.
fn never_arrived(s: &Status) -> bool {
    s.code() == Code::Unavailable
        && [
            "tcp connect error",
            "error trying to connect",
            "refused stream",
            "REFUSED_STREAM",
        ]
        .iter()
        .any(|m| s.message().contains(m))
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
