//! Heartbeats on one long-lived stream per follower.
//!
//! openraft's heartbeat worker sends each heartbeat (the periodic one, and
//! the leadership probe of every ReadIndex round) as a `stream_append` call
//! of exactly one request. Sent as-is, each would open and close a gRPC
//! stream of its own: HTTP/2 headers both ways, trailers, a task spawned on
//! the follower. Under a read load that is thousands of streams a second,
//! and most of a follower's CPU (measured: about 150 µs per heartbeat, two
//! thirds of it in the kernel). Here every heartbeat to one follower rides
//! one stream opened once: one message each way.
//!
//! The heartbeat worker sends one heartbeat at a time and waits for its
//! answer, so answers come back in step with requests. A heartbeat whose
//! caller gave up before its answer arrived (openraft's timeout) leaves the
//! stream one answer behind: the next heartbeat then opens a new stream
//! rather than take that stale answer for its own.

use std::sync::Arc;

use futures::StreamExt;
use openraft::errors::RPCError;
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};
use tokio::sync::mpsc;
use tonic::Streaming;

use super::TypeConfig;
use crate::codec;
use crate::pb::{Freshness, PeerClock, RaftMessage};

/// Heartbeats waiting to go out on the stream, at most (one at a time is
/// the norm).
const QUEUE: usize = 4;

/// The heartbeat stream to one follower, shared by the clones of its
/// heartbeat client.
#[derive(Clone, Default)]
pub(super) struct HeartbeatLink {
    inner: Arc<tokio::sync::Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// The open stream: requests go into the sender, answers come out of
    /// the receiver. `None` before the first heartbeat and after a failure.
    open: Option<(mpsc::Sender<RaftMessage>, Streaming<RaftMessage>)>,
    /// A heartbeat was sent and its answer not read: the stream is out of
    /// step and must not be used again.
    awaiting: bool,
}

impl HeartbeatLink {
    /// Sends `req` (echoing `fresh_as_of`, see `contact`) on the stream
    /// (opened with `open` when there is none, or when the last one fell out
    /// of step) and returns its answer, with the follower's clock reading.
    pub(super) async fn send<F, Fut>(
        &self,
        req: &AppendEntriesRequest<TypeConfig>,
        fresh_as_of: Option<Freshness>,
        open: F,
    ) -> Result<(StreamAppendResult<TypeConfig>, Option<PeerClock>), RPCError<TypeConfig>>
    where
        F: FnOnce(mpsc::Receiver<RaftMessage>) -> Fut,
        Fut: std::future::Future<Output = Result<Streaming<RaftMessage>, RPCError<TypeConfig>>>,
    {
        let payload = codec::encode(req).map_err(|e| super::network::network(e.to_string()))?;
        let mut guard = self.inner.lock().await;
        // Disjoint borrows of the fields, through the guard once.
        let state = &mut *guard;
        if state.awaiting {
            state.open = None;
            state.awaiting = false;
        }
        let (tx, answers) = match &mut state.open {
            Some(open) => open,
            None => {
                let (tx, rx) = mpsc::channel(QUEUE);
                let answers = open(rx).await?;
                state.open.insert((tx, answers))
            }
        };
        if tx
            .send(RaftMessage {
                payload,
                fresh_as_of,
                ..Default::default()
            })
            .await
            .is_err()
        {
            state.open = None;
            return Err(super::network::unreachable(
                "the heartbeat stream closed".to_string(),
            ));
        }
        // Until the answer is read: if this future is dropped (the caller's
        // timeout), the next heartbeat knows the stream is out of step.
        state.awaiting = true;
        let answer = answers.next().await;
        state.awaiting = false;
        match answer {
            Some(Ok(msg)) => match codec::decode::<StreamAppendResult<TypeConfig>>(&msg.payload) {
                Ok(result) => {
                    // The follower ends its side of a stream after an
                    // error answer (a conflict, a higher vote): the next
                    // heartbeat needs a new one.
                    if result.is_err() {
                        state.open = None;
                    }
                    Ok((result, msg.clock))
                }
                Err(e) => {
                    state.open = None;
                    Err(super::network::network(format!(
                        "bad heartbeat reply from peer: {e}"
                    )))
                }
            },
            Some(Err(status)) => {
                state.open = None;
                Err(super::network::from_status(status))
            }
            None => {
                state.open = None;
                Err(super::network::unreachable(
                    "the peer ended the heartbeat stream".to_string(),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use openraft::testing::log_id;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::Response;

    use super::*;
    use crate::raft::test_peer::TestPeer;

    fn heartbeat(index: u64, slow: bool) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: openraft::impls::Vote::new(1, 1),
            prev_log_id: Some(log_id::<TypeConfig>(1, 1, index)),
            leader_commit: slow.then(|| log_id::<TypeConfig>(1, 1, index)),
            entries: vec![],
        }
    }

    #[tokio::test]
    async fn heartbeats_share_one_stream_and_an_abandoned_one_never_answers_the_next() {
        // A follower that answers each heartbeat with its `prev_log_id` (so
        // an answer names its request), after 300 ms when `leader_commit`
        // is set, and counts the streams opened to it.
        let streams = Arc::new(AtomicUsize::new(0));
        let opened = streams.clone();
        let client = TestPeer::stream_append(move |requests| {
            opened.fetch_add(1, Ordering::SeqCst);
            Box::pin(requests.then(|m| async move {
                let r: AppendEntriesRequest<TypeConfig> = codec::decode(&m?.payload).unwrap();
                if r.leader_commit.is_some() {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                let answer: StreamAppendResult<TypeConfig> = Ok(r.prev_log_id);
                Ok(RaftMessage {
                    payload: codec::encode(&answer).unwrap(),
                    ..Default::default()
                })
            }))
        })
        .serve()
        .await;
        let link = HeartbeatLink::default();
        let send = |req: AppendEntriesRequest<TypeConfig>| {
            let (link, mut client) = (link.clone(), client.clone());
            async move {
                link.send(&req, None, |rx| async move {
                    client
                        .stream_append(ReceiverStream::new(rx))
                        .await
                        .map(Response::into_inner)
                        .map_err(super::super::network::from_status)
                })
                .await
                .map(|(result, _clock)| result)
            }
        };
        for i in 1..=5 {
            let answer = send(heartbeat(i, false)).await.unwrap();
            assert_eq!(answer, Ok(Some(log_id::<TypeConfig>(1, 1, i))));
        }
        assert_eq!(streams.load(Ordering::SeqCst), 1, "one stream for all five");

        // The caller gives up before the slow answer arrives.
        let abandoned = tokio::time::timeout(Duration::from_millis(50), send(heartbeat(6, true)));
        assert!(abandoned.await.is_err());
        // The next heartbeat gets its own answer, on a new stream, not the
        // late answer to the abandoned one.
        let answer = send(heartbeat(7, false)).await.unwrap();
        assert_eq!(answer, Ok(Some(log_id::<TypeConfig>(1, 1, 7))));
        assert_eq!(streams.load(Ordering::SeqCst), 2);
    }
}
