//! Frames: the calls of many callers sharing one `Client`, coalesced into
//! multi-operation messages on one long-lived stream per node.
//!
//! Each node the client talks to gets a session: a queue and a task that owns
//! a `Session` stream to that node. The task sends one frame at a time. When
//! nothing is in flight, a call goes out at once, alone; while a frame is in
//! flight, every call that arrives waits in the queue and all of them go in
//! the next frame. No timer decides: the batch size follows the load.
//!
//! A frame's operations are independent. Each one is answered on its own,
//! with the status a unary call would have returned (leader redirect
//! included), and `Client::retrying` retries each one on its own, with its
//! own request id. When a stream breaks or a frame times out, every
//! operation in it fails with that status and is retried by its caller; the
//! next frame opens a new stream.

use std::time::Duration;

use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use super::{records, Result};
use crate::pb;
use crate::pb::op_result::Result as OpOutcome;
use crate::wire::{LEADER_ADDR_KEY, LEADER_ID_KEY};

/// Operations in one frame, at most. The answer to a frame is one message
/// too, which the node keeps within `wire::RESPONSE_BYTES` by leaving values
/// out (`value_omitted`): a get answered that way is read again alone
/// (`Client::send_get`), so fewer ops per frame means fewer second reads.
const MAX_FRAME_OPS: usize = 32;
/// Encoded bytes of the ops in one frame, at most (a single larger op still
/// goes alone): far inside the node's 16 MiB request limit.
const MAX_FRAME_BYTES: usize = 4 << 20;

struct Queued {
    op: pb::FrameOp,
    reply: oneshot::Sender<Result<OpOutcome>>,
}

/// The client's side of one node's session. Dropping it ends the task once
/// the frame in flight is answered.
pub(super) struct Session {
    queue: mpsc::UnboundedSender<Queued>,
}

impl Session {
    pub(super) fn open(channel: Channel, frame_timeout: Duration) -> Session {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(channel, rx, frame_timeout));
        Session { queue }
    }

    /// Sends `op` in the next frame and waits for its own result.
    pub(super) async fn call(&self, op: pb::FrameOp) -> Result<OpOutcome> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Queued { op, reply })
            .map_err(|_| Status::unavailable("the client's session task has stopped"))?;
        answer
            .await
            .unwrap_or_else(|_| Err(Status::unavailable("the client's session task has stopped")))
    }
}

/// The open stream to a node: where frames go, where results come from.
struct Stream {
    frames: mpsc::Sender<pb::Frame>,
    results: Streaming<pb::FrameResult>,
}

async fn run(channel: Channel, mut queue: mpsc::UnboundedReceiver<Queued>, timeout: Duration) {
    let mut stream: Option<Stream> = None;
    let mut next_id: u64 = 0;
    // An op taken from the queue that did not fit the previous frame.
    let mut carried: Option<Queued> = None;
    loop {
        let first = match carried.take() {
            Some(q) => q,
            None => match queue.recv().await {
                Some(q) => q,
                None => return,
            },
        };
        let mut bytes = first.op.encoded_len();
        let mut batch = vec![first];
        while batch.len() < MAX_FRAME_OPS {
            match queue.try_recv() {
                Ok(q) => {
                    let len = q.op.encoded_len();
                    if bytes + len > MAX_FRAME_BYTES {
                        carried = Some(q);
                        break;
                    }
                    bytes += len;
                    batch.push(q);
                }
                Err(_) => break,
            }
        }
        // A caller that gave up (its attempt timed out) needs no answer.
        batch.retain(|q| !q.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        next_id += 1;
        let (ops, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|q| (q.op, q.reply)).unzip();
        let n = ops.len();
        let frame = pb::Frame { id: next_id, ops };
        let answer =
            match tokio::time::timeout(timeout, exchange(&channel, &mut stream, frame)).await {
                Ok(Ok(r)) if r.id == next_id && r.results.len() == n => Ok(r.results),
                // The ops may or may not have been applied: UNKNOWN, which the
                // caller retries with the same request id.
                Ok(Ok(r)) => Err(Status::unknown(format!(
                    "session: frame {next_id} of {n} ops was answered as frame {} with {} results",
                    r.id,
                    r.results.len()
                ))),
                Ok(Err(status)) => Err(status),
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "session: no answer to a frame of {n} ops within {timeout:?}"
                ))),
            };
        match answer {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(outcome(result));
                }
            }
            Err(status) => {
                // The stream is in an unknown state: start a new one next time.
                stream = None;
                for reply in replies {
                    let _ = reply.send(Err(status.clone()));
                }
            }
        }
    }
}

/// Sends `frame` on the stream (opening one if needed) and reads its result.
async fn exchange(
    channel: &Channel,
    stream: &mut Option<Stream>,
    frame: pb::Frame,
) -> Result<pb::FrameResult> {
    let s = match stream {
        Some(s) => s,
        None => {
            let (frames, rx) = mpsc::channel(1);
            let results = records(channel.clone())
                .session(ReceiverStream::new(rx))
                .await?
                .into_inner();
            stream.insert(Stream { frames, results })
        }
    };
    s.frames
        .send(frame)
        .await
        .map_err(|_| Status::unavailable("session: the stream to the node is closed"))?;
    s.results
        .message()
        .await?
        .ok_or_else(|| Status::unavailable("session: the node ended the stream"))
}

/// One op's result as the unary call would have returned it.
fn outcome(r: pb::OpResult) -> Result<OpOutcome> {
    match r.result {
        Some(OpOutcome::Error(e)) => Err(status_of(e)),
        Some(ok) => Ok(ok),
        None => Err(Status::internal("session: an op result was empty")),
    }
}

fn status_of(e: pb::OpError) -> Status {
    let mut md = MetadataMap::new();
    if !e.leader_address.is_empty() {
        if let Ok(v) = MetadataValue::try_from(e.leader_address.as_str()) {
            md.insert(LEADER_ADDR_KEY, v);
        }
        if let Ok(v) = MetadataValue::try_from(e.leader_id.to_string().as_str()) {
            md.insert(LEADER_ID_KEY, v);
        }
    }
    Status::with_metadata(Code::from_i32(e.code), e.message, md)
}
