//! The leader's hand-off duty (the hand-off worker): outbox → sink → `Evict`.
//! See `crate::handoff` for the pipeline and its guarantees.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Duty, Pace};
use crate::handoff::{Document, HandoffState, Sink, SinkStats};
use crate::raft::{Consistency, Node};
use crate::shutdown::Shutdown;
use crate::state::{Action, Command};

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
        if node.read_barrier(Consistency::Linearizable).await.is_err() {
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
        let delivered = deliver(
            node,
            &self.settings,
            &self.state.primary,
            &mut self.primary,
            &docs,
            shutdown,
        )
        .await;
        match delivered {
            Delivery::Acknowledged => {}
            // Not evicted: whoever leads next (or this node after a restart)
            // sends the batch again.
            Delivery::Abandoned | Delivery::Stopped => return Pace::Idle,
        }
        let ids = docs.into_iter().map(|d| d.id).collect();
        let cmd = Command {
            at_ms: node.stamp(),
            request: None,
            action: Action::Evict { ids },
        };
        match node.propose(cmd).await {
            Ok(outcome) => {
                let evicted = outcome.map(|a| a.len()).unwrap_or(0);
                crate::metrics::METRICS
                    .handoff_evicted
                    .inc_by(evicted as u64);
            }
            // The records stay in the outbox; whoever leads next sends them
            // again and the sink skips the duplicates.
            Err(e) => tracing::info!(error = %e, "evict proposal failed (leadership moved?)"),
        }
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

enum Delivery {
    Acknowledged,
    /// Leadership was lost while retrying: the next leader takes over.
    Abandoned,
    /// Shutdown was requested while retrying.
    Stopped,
}

/// Writes `docs` to the primary sink until it acknowledges them, backing off
/// between attempts, for as long as this node leads.
async fn deliver(
    node: &Node,
    settings: &HandoffSettings,
    stats: &SinkStats,
    sink: &mut Sink,
    docs: &[Document],
    shutdown: &mut Shutdown,
) -> Delivery {
    let mut delay = settings.backoff_initial;
    loop {
        let started = Instant::now();
        let result = match tokio::time::timeout(settings.write_timeout, sink.write(docs)).await {
            Ok(r) => r.map_err(|e| e.0),
            Err(_) => Err(format!(
                "sink did not answer within {:?}",
                settings.write_timeout
            )),
        };
        match result {
            Ok(()) => {
                stats.succeeded(docs.len(), started.elapsed());
                return Delivery::Acknowledged;
            }
            Err(error) => {
                // Jitter over the upper half of the delay: spreads the retries
                // of several clusters sharing one sink, never retrying at once.
                let wait = rand::rng().random_range(delay / 2..=delay);
                stats.failed(docs.len(), &error, Some(wait));
                if shutdown.sleep(wait).await {
                    return Delivery::Stopped;
                }
                if !node.is_leader() {
                    return Delivery::Abandoned;
                }
                delay = (delay * 2).min(settings.backoff_max);
            }
        }
    }
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
            Ok(Err(e)) => stats.failed(docs.len(), &e.0, None),
            Err(_) => stats.failed(
                docs.len(),
                &format!("sink did not answer within {timeout:?}"),
                None,
            ),
        }
    }
}
