//! The leader's hand-off worker: outbox → sink → `Evict`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{mpsc, watch};

use super::document::Document;
use super::sink::Sink;
use super::stats::{HandoffState, SinkStats};
use crate::raft::bootstrap::RaftNode;
use crate::raft::leader_clock_ms;
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
const IDLE_POLL: Duration = Duration::from_millis(20);
const FOLLOWER_POLL: Duration = Duration::from_millis(100);
/// Batches queued for the shadow sink before new ones are skipped for it.
const SHADOW_QUEUE: usize = 64;

/// Runs the worker until `stop`. `primary` and `shadow` are opened by the caller
/// (so a bad sink spec fails at startup, not later).
pub async fn run(
    node: RaftNode,
    settings: HandoffSettings,
    state: Arc<HandoffState>,
    mut primary: Sink,
    shadow: Option<Sink>,
    mut stop: watch::Receiver<bool>,
) {
    let shadow_tx = shadow.map(|sink| {
        let (tx, rx) = mpsc::channel(SHADOW_QUEUE);
        tokio::spawn(run_shadow(sink, rx, state.clone(), settings.write_timeout));
        tx
    });
    let mut leading = false;
    loop {
        if *stop.borrow() {
            return;
        }
        if !node.raft.is_leader() {
            if leading {
                tracing::info!("hand-off worker paused: this node no longer leads");
            }
            leading = false;
            state.set_active(false);
            if pause(&mut stop, FOLLOWER_POLL).await {
                return;
            }
            continue;
        }
        if !leading {
            primary.on_leadership().await;
            leading = true;
            state.set_active(true);
            tracing::info!(
                outbox = node.store.waiting_for_handoff(),
                "hand-off worker started: this node leads"
            );
        }
        if node.store.waiting_for_handoff() == 0 {
            if pause(&mut stop, IDLE_POLL).await {
                return;
            }
            continue;
        }
        // Fence: confirm leadership with a quorum before touching the sink. A
        // deposed leader that has not noticed yet (cut off by a partition)
        // would otherwise keep writing batches the new leader also writes.
        if node
            .raft
            .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
            .await
            .is_err()
        {
            if pause(&mut stop, IDLE_POLL).await {
                return;
            }
            continue;
        }
        let batch = node
            .store
            .outbox_front(settings.batch_records, settings.batch_bytes);
        if batch.is_empty() {
            if pause(&mut stop, IDLE_POLL).await {
                return;
            }
            continue;
        }
        let docs: Vec<Document> = batch
            .iter()
            .map(|(id, rec)| Document::new(id.clone(), rec))
            .collect();
        if let (Some(tx), Some(stats)) = (&shadow_tx, &state.shadow) {
            if tx.try_send(Arc::new(docs.clone())).is_err() {
                stats.failed(
                    docs.len(),
                    "shadow sink is too far behind; this batch was skipped for it",
                    None,
                );
            }
        }
        match deliver(
            &node,
            &settings,
            &state.primary,
            &mut primary,
            &docs,
            &mut stop,
        )
        .await
        {
            Delivery::Acknowledged => {}
            Delivery::Abandoned => continue,
            Delivery::Stopped => return,
        }
        let ids = docs.into_iter().map(|d| d.id).collect();
        let cmd = Command {
            at_ms: leader_clock_ms(),
            request: None,
            action: Action::Evict { ids },
        };
        match node.raft.client_write(cmd).await {
            Ok(r) => {
                let evicted = r.data.and_then(|o| o.ok()).map(|a| a.len()).unwrap_or(0);
                crate::metrics::METRICS
                    .handoff_evicted
                    .inc_by(evicted as u64);
            }
            // The records stay in the outbox; whoever leads next sends them
            // again and the sink skips the duplicates.
            Err(e) => tracing::info!(error = %e, "evict proposal failed (leadership moved?)"),
        }
    }
}

enum Delivery {
    Acknowledged,
    /// Leadership was lost while retrying: the next leader takes over.
    Abandoned,
    Stopped,
}

/// Writes `docs` to the primary sink until it acknowledges them, backing off
/// between attempts, for as long as this node leads.
async fn deliver(
    node: &RaftNode,
    settings: &HandoffSettings,
    stats: &SinkStats,
    sink: &mut Sink,
    docs: &[Document],
    stop: &mut watch::Receiver<bool>,
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
                // Full jitter over the upper half: spreads retries of several
                // clusters sharing one sink without ever retrying at once.
                let wait = rand::rng().random_range(delay / 2..=delay);
                stats.failed(docs.len(), &error, Some(wait));
                if pause(stop, wait).await {
                    return Delivery::Stopped;
                }
                if !node.raft.is_leader() {
                    return Delivery::Abandoned;
                }
                delay = (delay * 2).min(settings.backoff_max);
            }
        }
    }
}

/// Sleeps for `d`; true if asked to stop meanwhile.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.wait_for(|s| *s) => true,
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
