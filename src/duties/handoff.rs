//! The leader's hand-off duty (the hand-off worker): outbox → sink → `Evict`.
//! See `crate::handoff` for the pipeline and its guarantees.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Duty, Pace};
use crate::handoff::{Document, HandoffState, Sink, SinkError, SinkStats};
use crate::raft::Node;
use crate::shutdown::Shutdown;
use crate::state::{Action, Command, HandoffId};

#[derive(Clone, Debug)]
pub struct HandoffSettings {
    /// Records per sink write, at most.
    pub batch_records: usize,
    /// Bytes of records per sink write, at most (at least one record).
    pub batch_bytes: usize,
    /// A sink write that takes longer fails (and is retried).
    pub write_timeout: Duration,
    /// Retry backoff: the first delay, doubled per failure up to the max.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for HandoffSettings {
    fn default() -> Self {
        HandoffSettings {
            batch_records: 500,
            batch_bytes: 4 << 20,
            write_timeout: Duration::from_secs(15),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// How often an idle leader looks at the outbox, and a follower at its role.
const PERIOD: Duration = Duration::from_millis(20);
/// Batches queued for the shadow sink before new ones are skipped for it.
const SHADOW_QUEUE: usize = 64;

/// The shadow sink's task and the queue that feeds it.
struct Shadow {
    queue: mpsc::Sender<Arc<Vec<Document>>>,
    task: JoinHandle<()>,
}

pub struct Handoff {
    settings: HandoffSettings,
    state: Arc<HandoffState>,
    primary: Sink,
    /// The shadow sink's queue and its task, owned here and joined on stop.
    shadow: Option<Shadow>,
}

impl Handoff {
    /// `primary` and `shadow` are opened by the caller, so that a bad sink
    /// spec fails at startup, not later.
    pub fn new(
        settings: HandoffSettings,
        state: Arc<HandoffState>,
        primary: Sink,
        shadow: Option<Sink>,
    ) -> Handoff {
        let shadow = shadow.map(|sink| {
            let (tx, rx) = mpsc::channel(SHADOW_QUEUE);
            let task = tokio::spawn(run_shadow(sink, rx, state.clone(), settings.write_timeout));
            Shadow { queue: tx, task }
        });
        Handoff {
            settings,
            state,
            primary,
            shadow,
        }
    }
}

impl Duty for Handoff {
    const NAME: &'static str = "hand-off";
    const LEADER_ONLY: bool = true;

    fn period(&self) -> Duration {
        PERIOD
    }

    async fn leadership(&mut self, leading: bool, node: &Node) {
        self.state.set_active(leading);
        if leading {
            self.primary.on_leadership().await;
            tracing::info!(
                outbox_depth = node.table().outbox_depth(),
                "hand-off worker started: this node leads"
            );
        } else {
            tracing::info!("hand-off worker paused: this node no longer leads");
        }
    }

    async fn round(&mut self, node: &Node, shutdown: &mut Shutdown) -> Pace {
        if node.table().outbox_depth() == 0 {
            return Pace::Idle;
        }
        // Fence: confirm leadership with a quorum before touching the sink. A
        // deposed leader that has not noticed yet (cut off by a partition)
        // would otherwise keep writing batches the new leader also writes.
        if node.confirm_leadership().await.is_err() {
            return Pace::Idle;
        }
        let batch = node
            .table()
            .outbox_front(self.settings.batch_records, self.settings.batch_bytes);
        if batch.is_empty() {
            return Pace::Idle;
        }
        let docs: Vec<Document> = batch
            .iter()
            .map(|(id, rec)| Document::new(id.clone(), rec))
            .collect();
        if let (Some(shadow), Some(stats)) = (&self.shadow, &self.state.shadow) {
            if shadow.queue.try_send(Arc::new(docs.clone())).is_err() {
                stats.failed(
                    docs.len(),
                    "shadow sink is too far behind; this batch was skipped for it",
                    None,
                );
            }
        }
        let mut writer = Writer {
            node,
            settings: &self.settings,
            stats: &self.state.primary,
            sink: &mut self.primary,
            shutdown,
        };
        let (delivered, refused) = match writer.deliver(docs).await {
            Delivery::Done { delivered, refused } => (delivered, refused),
            // Nothing is evicted: whoever leads next (or this node after a
            // restart) sends the batch again, and the sink skips what it holds.
            Delivery::Abandoned | Delivery::Stopped => return Pace::Idle,
        };
        if !refused.is_empty() {
            for (id, error) in &refused {
                tracing::warn!(handoff_id = %id, %error,
                    "the sink refused this record for good; it is set aside as a dead letter \
                     (see `inflight handoff failed`)");
            }
            let counter = &crate::metrics::METRICS.handoff_dead_lettered;
            propose_counted(node, Action::DeadLetter { refused }, counter, "dead-letter").await;
        }
        if delivered.is_empty() {
            return Pace::Busy;
        }
        // If it fails, the records stay in the outbox; whoever leads next
        // sends them again and the sink skips the duplicates.
        let counter = &crate::metrics::METRICS.handoff_evicted;
        propose_counted(node, Action::Evict { ids: delivered }, counter, "evict").await;
        Pace::Busy
    }

    /// Closes the shadow sink's queue and waits for what it holds, at most
    /// one write timeout.
    async fn stopped(self) {
        if let Some(Shadow { queue, task }) = self.shadow {
            drop(queue);
            let timeout = self.settings.write_timeout;
            if tokio::time::timeout(timeout, task).await.is_err() {
                tracing::warn!("shadow sink did not finish its queue within {timeout:?}");
            }
        }
    }
}

/// Proposes one of the worker's commands and counts the records it changed.
async fn propose_counted(
    node: &Node,
    action: Action,
    counter: &prometheus_client::metrics::counter::Counter,
    what: &str,
) {
    let cmd = Command {
        at_ms: node.stamp(),
        request: None,
        action,
    };
    match node.propose(cmd).await {
        Ok(outcome) => {
            counter.inc_by(outcome.map(|a| a.len()).unwrap_or(0) as u64);
        }
        Err(e) => tracing::info!(error = %e, "{what} proposal failed (leadership moved?)"),
    }
}

enum Delivery {
    /// Every record was either acknowledged by the sink or refused by it for
    /// good, alone, with the sink's error.
    Done {
        delivered: Vec<HandoffId>,
        refused: Vec<(HandoffId, String)>,
    },
    /// Leadership was lost while retrying: the next leader takes over.
    Abandoned,
    /// Shutdown was requested while retrying.
    Stopped,
}

/// How much of a sink's error a dead letter keeps: enough to name the
/// problem, never a whole echoed document in replicated state (bytes).
const MAX_ERROR_BYTES: usize = 1_000;

/// Records refused alone, with none of their batch acknowledged, after which
/// the refusal is taken to be about the sink, not about the records.
const SINK_WIDE_AFTER: usize = 8;

/// A record refused alone in a batch of its own is set aside only if the
/// sink acknowledged a write this recently.
const RECENT_SUCCESS: Duration = Duration::from_secs(60);

/// What delivering a batch to the primary sink works with.
struct Writer<'a> {
    node: &'a Node,
    settings: &'a HandoffSettings,
    stats: &'a SinkStats,
    sink: &'a mut Sink,
    shutdown: &'a mut Shutdown,
}

enum Split {
    Done {
        delivered: Vec<HandoffId>,
        refused: Vec<(HandoffId, String)>,
    },
    /// Every record tried alone was refused and none acknowledged.
    SinkWide(String),
    Abandoned,
    Stopped,
}

enum Attempt {
    Acknowledged,
    /// The sink refused these records' content: the same write would fail again.
    Refused(String),
    Abandoned,
    Stopped,
}

impl Writer<'_> {
    /// Writes `docs` to the primary sink until each record is acknowledged or
    /// refused for good, for as long as this node leads.
    ///
    /// A transient failure (no connection, a timeout, a 5xx) retries the same
    /// records with backoff, as long as it takes. A permanent refusal of
    /// several records splits them in halves, each delivered on its own, until
    /// the records the sink refuses stand alone: one bad record among 500
    /// costs about 2·log2(500) ≈ 18 writes, and every other record is
    /// delivered.
    ///
    /// A record is set aside only with evidence that the refusal is about the
    /// record: the sink took others of its batch, or (a record alone in its
    /// batch, e.g. a retried poison record) it took other writes within
    /// `RECENT_SUCCESS`. A sink that refuses everything (a schema change every
    /// row fails, a receiver answering 400 to any request) refuses the records
    /// alone too, with none acknowledged: after `SINK_WIDE_AFTER` such
    /// refusals, or a whole batch of two or more, the batch is retried with
    /// backoff like any failing sink, and nothing is set aside.
    async fn deliver(&mut self, docs: Vec<Document>) -> Delivery {
        let mut delay = self.settings.backoff_initial;
        loop {
            let error = match self.split_and_deliver(&docs).await {
                Split::Done { delivered, refused } => return Delivery::Done { delivered, refused },
                Split::Abandoned => return Delivery::Abandoned,
                Split::Stopped => return Delivery::Stopped,
                Split::SinkWide(error) => format!(
                    "the sink refuses every record alone, so the refusal is taken to be about \
                     the sink, not the records (nothing set aside): {error}"
                ),
            };
            if let Some(stop) = self.back_off(&mut delay, docs.len(), &error).await {
                return match stop {
                    Attempt::Stopped => Delivery::Stopped,
                    _ => Delivery::Abandoned,
                };
            }
        }
    }

    /// One pass of `deliver`: the batch, then its halves while refused.
    async fn split_and_deliver(&mut self, docs: &[Document]) -> Split {
        let mut delivered = Vec::with_capacity(docs.len());
        let mut refused: Vec<(HandoffId, String)> = Vec::new();
        // Slices still to deliver, as (start, end) of `docs`; the front is on top.
        let mut pending = vec![(0, docs.len())];
        while let Some((start, end)) = pending.pop() {
            // The quorum fence was checked before the batch; a split batch
            // takes many writes, so leadership and shutdown are checked
            // before each.
            if self.shutdown.is_requested() {
                return Split::Stopped;
            }
            if !self.node.is_leader() {
                return Split::Abandoned;
            }
            let part = &docs[start..end];
            match self.deliver_one(part).await {
                Attempt::Acknowledged => delivered.extend(part.iter().map(|d| d.id.clone())),
                Attempt::Refused(error) if part.len() == 1 => {
                    refused.push((part[0].id.clone(), truncate(error, MAX_ERROR_BYTES)));
                    if delivered.is_empty() && refused.len() >= SINK_WIDE_AFTER {
                        return Split::SinkWide(refused.swap_remove(0).1);
                    }
                }
                Attempt::Refused(_) => {
                    let mid = start + part.len() / 2;
                    pending.push((mid, end));
                    pending.push((start, mid));
                }
                Attempt::Abandoned => return Split::Abandoned,
                Attempt::Stopped => return Split::Stopped,
            }
        }
        // None of the batch taken: several records refused alone is the sink
        // refusing everything; one record alone is that record, if the sink
        // took other writes lately (a retried poison record comes back alone).
        let sink_took_lately = self
            .stats
            .snapshot()
            .last_success_age
            .is_some_and(|age| age <= RECENT_SUCCESS);
        let lone = refused.len() == 1 && !sink_took_lately;
        if delivered.is_empty() && (refused.len() > 1 || lone) {
            return Split::SinkWide(refused.swap_remove(0).1);
        }
        Split::Done { delivered, refused }
    }

    /// Writes `docs` until the sink acknowledges or refuses them for good,
    /// backing off between transient failures, for as long as this node leads.
    async fn deliver_one(&mut self, docs: &[Document]) -> Attempt {
        let mut delay = self.settings.backoff_initial;
        let timeout = self.settings.write_timeout;
        loop {
            let started = Instant::now();
            let result = match tokio::time::timeout(timeout, self.sink.write(docs)).await {
                Ok(r) => r,
                Err(_) => Err(SinkError::transient(format!(
                    "sink did not answer within {timeout:?}"
                ))),
            };
            match result {
                Ok(()) => {
                    self.stats.succeeded(docs.len(), started.elapsed());
                    return Attempt::Acknowledged;
                }
                Err(e) if e.permanent => {
                    self.stats.refused(docs.len(), &e.message);
                    return Attempt::Refused(e.message);
                }
                Err(e) => {
                    if let Some(stop) = self.back_off(&mut delay, docs.len(), &e.message).await {
                        return stop;
                    }
                }
            }
        }
    }

    /// Counts a failure and waits before the next attempt: a random time in
    /// the upper half of `delay` (spreading the retries of several clusters
    /// sharing one sink), which then doubles up to the maximum. `Some` when
    /// the worker must stop instead: shutdown, or this node no longer leads.
    async fn back_off(
        &mut self,
        delay: &mut Duration,
        records: usize,
        error: &str,
    ) -> Option<Attempt> {
        let wait = rand::rng().random_range(*delay / 2..=*delay);
        self.stats.failed(records, error, Some(wait));
        if self.shutdown.sleep(wait).await {
            return Some(Attempt::Stopped);
        }
        if !self.node.is_leader() {
            return Some(Attempt::Abandoned);
        }
        *delay = (*delay * 2).min(self.settings.backoff_max);
        None
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// The shadow sink's task: one attempt per batch; failures are only counted.
async fn run_shadow(
    mut sink: Sink,
    mut rx: mpsc::Receiver<Arc<Vec<Document>>>,
    state: Arc<HandoffState>,
    timeout: Duration,
) {
    let Some(stats) = state.shadow.as_ref() else {
        return;
    };
    while let Some(docs) = rx.recv().await {
        let started = Instant::now();
        match tokio::time::timeout(timeout, sink.write(&docs)).await {
            Ok(Ok(())) => stats.succeeded(docs.len(), started.elapsed()),
            Ok(Err(e)) => stats.failed(docs.len(), &e.message, None),
            Err(_) => stats.failed(
                docs.len(),
                &format!("sink did not answer within {timeout:?}"),
                None,
            ),
        }
    }
}
