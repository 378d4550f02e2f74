//! Batching at the Raft boundary: many proposals per trip to the Raft core,
//! one quorum round for many linearizable reads.
//!
//! Both batchers are natural, with no timers: when nothing is in flight a
//! request goes at once; while something is in flight, every request that
//! arrives waits, and all of them go together the moment a slot frees. Under
//! light load nothing waits; under heavy load the batches grow to match it.
//!
//! - Proposals: up to `MAX_PROPOSALS_IN_FLIGHT` batches are in flight; each is
//!   handed to openraft with `client_write_many`, one log entry per command,
//!   so every command keeps its own revision, request id and outcome. The
//!   core appends the batch in one go, the WAL fsyncs it once and replication
//!   carries it in as few messages as the payload limit allows.
//! - Reads: one ReadIndex round at a time serves every read that was waiting
//!   when it started (as etcd's read loop does). A read that arrives during a
//!   round waits for the next one: the round in flight may have fixed its read
//!   index before that read began, and serving the read from it could miss a
//!   write acknowledged just before. LEASE reads share one lease check per
//!   batch the same way.

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use openraft::LinearizerOption;
use tokio::sync::{mpsc, oneshot};

use super::{Error, Raft};
use crate::state::{Command, Outcome};

/// Batches of proposals handed to openraft and not yet applied, at most.
/// More would only shrink the batches: the WAL and replication already
/// overlap the next batch with the current one.
const MAX_PROPOSALS_IN_FLIGHT: usize = 2;
/// Commands in one batch, at most.
const MAX_BATCH_COMMANDS: usize = 1024;

pub(super) type Reply<T> = oneshot::Sender<Result<T, Error>>;

pub(super) struct Proposal {
    pub cmd: Command,
    pub reply: Reply<Outcome>,
}

/// Takes proposals from `rx` and proposes them in batches until every sender
/// is gone.
pub(super) async fn propose_loop(raft: Raft, mut rx: mpsc::UnboundedReceiver<Proposal>) {
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            first = rx.recv(), if in_flight.len() < MAX_PROPOSALS_IN_FLIGHT => {
                let Some(first) = first else { break };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH_COMMANDS {
                    match rx.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                crate::metrics::METRICS.proposal_batch_size.observe(batch.len() as f64);
                in_flight.push(propose_batch(raft.clone(), batch));
            }
            else => break,
        }
    }
    while in_flight.next().await.is_some() {}
}

/// Proposes `batch` and answers each proposal with its own outcome.
async fn propose_batch(raft: Raft, batch: Vec<Proposal>) {
    let (cmds, replies): (Vec<Command>, Vec<Reply<Outcome>>) =
        batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
    // Fused: once the core ends the stream (a fatal error), the remaining
    // replies see `None`, never a poll of a finished stream.
    let mut results = match raft.client_write_many(cmds).await {
        Ok(stream) => stream.fuse(),
        Err(fatal) => {
            let e = Error::Stopped(fatal.to_string());
            for r in replies {
                let _ = r.send(Err(e.clone()));
            }
            return;
        }
    };
    for reply in replies {
        let result = match results.next().await {
            Some(Ok(Ok(resp))) => resp
                .response
                .ok_or_else(|| Error::Internal("a proposed command produced no outcome".into())),
            Some(Ok(Err(e))) => Err(Error::from(openraft::errors::RaftError::APIError(e))),
            Some(Err(fatal)) => Err(Error::Stopped(fatal.to_string())),
            None => Err(Error::Stopped(
                "the Raft core ended the batch before answering every command".into(),
            )),
        };
        let _ = reply.send(result);
    }
}

/// Answers every waiting read with the result of one `option` round, one
/// round at a time, until every sender is gone: the read index (the log
/// index a reader must have applied before it reads), or why there is none.
/// Local readers then wait for their own state machine; followers' requests
/// (`follower_read`) join the same rounds.
///
/// A round that no quorum confirmed in time is tried again, up to `rounds`
/// in all, before the reads are refused: on a loaded node one heartbeat
/// answered late is not a lost leadership, and a healthy cluster should not
/// answer TRYAGAIN for it (etcd also retries its read index until the
/// request's timeout). A leader that was deposed answers "not the leader"
/// at once, and one cut off from its quorum is refused after `rounds`
/// rounds.
pub(super) async fn read_loop(
    raft: Raft,
    option: LinearizerOption,
    rounds: u32,
    mut rx: mpsc::UnboundedReceiver<Reply<u64>>,
) {
    while let Some(first) = rx.recv().await {
        let mut waiting = vec![first];
        while let Ok(r) = rx.try_recv() {
            waiting.push(r);
        }
        crate::metrics::METRICS
            .read_batch_size
            .observe(waiting.len() as f64);
        let round = || async {
            raft.get_read_linearizer(option.clone())
                .await
                .map(|l| l.read_log_id().index())
                .map_err(Error::from)
        };
        let mut result = round().await;
        for _ in 1..rounds {
            if !matches!(result, Err(Error::Unavailable(_))) {
                break;
            }
            result = round().await;
        }
        for w in waiting {
            let _ = w.send(result.clone());
        }
    }
}
