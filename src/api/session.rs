//! The batching session: frames of independent operations on one stream.
//!
//! A unary call pays for its own HTTP/2 request, its own flush and, on the
//! node, its own wake-ups. A frame carries many operations in one message:
//! the node runs them all at once, so that its writes meet in one proposal
//! batch and its linearizable reads in one ReadIndex round (`raft::batch`),
//! and answers with one message. Each operation keeps the semantics of its
//! unary call: its own validation, request id, outcome and error, reported
//! as an `OpError` with the status code and leader hint the unary call would
//! have carried.
//!
//! A frame's answer is one message too, bounded like a batch's: once the
//! next record's value would take it past `RESPONSE_BYTES`, the values of
//! that result and every later one are left out (`value_omitted`), gets
//! included; the client library reads those gets again, alone.
//!
//! Each op is authorized on its own (`crate::auth`): one outside the
//! caller's grant fails with `PERMISSION_DENIED` in its own outcome, and the
//! frame's other ops proceed, as their unary calls would.
//!
//! Frames of one stream are answered in order, one at a time: the client
//! sends the next frame when the previous one is answered (that is what makes
//! the batching natural), so there is nothing to gain from overlapping them.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::records::InFlightService;
use super::response::{self, RESPONSE_BYTES};
use super::ApiError;
use crate::auth::Caller;
use crate::pb;
use crate::raft::LeaderWait;
use crate::shutdown::Shutdown;
use crate::wire::{LEADER_ADDR_KEY, LEADER_ID_KEY};

/// Operations in one frame, at most: a frame is one message, and its
/// results must fit one message too (4,096 value-less results of 512-byte
/// keys take about 2.5 MiB).
pub const MAX_FRAME_OPS: usize = 4096;

pub type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::FrameResult, Status>> + Send>>;

/// Serves one session: reads frames until the client closes its side, or,
/// between two frames, until the node stops (the client then retries the
/// ops of its next frame on another node).
pub fn session_stream(
    svc: InFlightService,
    caller: Caller,
    mut frames: Streaming<pb::Frame>,
    mut stop: Shutdown,
) -> SessionStream {
    // One result queued while the next frame runs; more would only buffer
    // for a client that has stopped reading.
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                next = frames.message() => next,
                _ = stop.requested() => return,
            };
            let frame = match next {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "session stream ended");
                    return;
                }
            };
            if frame.ops.len() > MAX_FRAME_OPS {
                let _ = tx
                    .send(Err(Status::invalid_argument(format!(
                        "frame {}: {} ops, more than the limit of {MAX_FRAME_OPS}",
                        frame.id,
                        frame.ops.len()
                    ))))
                    .await;
                return;
            }
            crate::metrics::METRICS
                .frame_ops
                .observe(frame.ops.len() as f64);
            let mut results = futures::future::join_all(
                frame.ops.into_iter().map(|op| run_op(&svc, &caller, op)),
            )
            .await;
            // The answer is one message: values past the bound are left out.
            response::bound_values(&mut results, RESPONSE_BYTES, response::op_record);
            let answer = pb::FrameResult {
                id: frame.id,
                results,
            };
            if tx.send(Ok(answer)).await.is_err() {
                return; // the client went away
            }
        }
    });
    Box::pin(ReceiverStream::new(rx).fuse())
}

/// Runs one op of a frame. It is timed and counted under the same method
/// name and status code as the unary call it stands for, so the request
/// metrics mean the same whichever way a client sends.
async fn run_op(svc: &InFlightService, caller: &Caller, op: pb::FrameOp) -> pb::OpResult {
    use pb::frame_op::Op;
    use pb::op_result::Result as R;
    let started = std::time::Instant::now();
    let method = match &op.op {
        Some(Op::Insert(_)) => "Insert",
        Some(Op::Update(_)) => "Update",
        Some(Op::Delete(_)) => "Delete",
        Some(Op::Complete(_)) => "Complete",
        Some(Op::Get(_)) => "Get",
        None => "unknown",
    };
    let result = match op.op {
        Some(Op::Insert(r)) => svc
            .insert(caller, LeaderWait::Answer, r)
            .await
            .map(R::Mutation),
        Some(Op::Update(r)) => svc
            .update(caller, LeaderWait::Answer, r)
            .await
            .map(R::Mutation),
        Some(Op::Delete(r)) => svc
            .delete(caller, LeaderWait::Answer, r)
            .await
            .map(R::Mutation),
        Some(Op::Complete(r)) => svc
            .complete(caller, LeaderWait::Answer, r)
            .await
            .map(R::Mutation),
        Some(Op::Get(r)) => svc
            .get(caller, LeaderWait::Answer, None, r)
            .await
            .map(R::Get),
        None => Err(ApiError::invalid(
            "op: empty frame op (set insert, update, delete, complete or get)",
        )),
    };
    let result = result.unwrap_or_else(|e| R::Error(op_error(e)));
    let code = match &result {
        R::Error(e) => tonic::Code::from_i32(e.code),
        _ => tonic::Code::Ok,
    };
    crate::metrics::METRICS.observe_grpc(method, started, code);
    pb::OpResult {
        result: Some(result),
    }
}

/// The status a unary call would have answered, as an `OpError`.
fn op_error(e: ApiError) -> pb::OpError {
    let status = Status::from(e);
    let meta = |key: &str| {
        status
            .metadata()
            .get(key)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    pb::OpError {
        code: status.code() as i32,
        message: status.message().to_string(),
        leader_address: meta(LEADER_ADDR_KEY).unwrap_or_default(),
        leader_id: meta(LEADER_ID_KEY)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    }
}
