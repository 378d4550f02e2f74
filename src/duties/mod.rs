//! The node's duties: work a node does on its own, beside serving clients.
//!
//! - `expiry` (leader only): proposes `Expire` for LIVE records past their
//!   deadline, at a bounded rate.
//! - `handoff` (leader only): writes the outbox's oldest records to the sink
//!   and, once the sink acknowledged them, proposes `Evict`.
//! - `compaction` (every node): asks for a snapshot when the log since the
//!   last one has grown in proportion to the table.
//!
//! The leader's duties are the other proposers beside the API: they go
//! through the same `raft::Node::propose`, and a new leader resumes them from
//! replicated state alone (the TTL index, the outbox). All of them share one
//! loop, [`run`]: wait until the duty applies (for a leader-only duty, until
//! this node leads), run one round, pace, and stop at a round's end when
//! shutdown is requested, so the hand-off worker never leaves a batch
//! half-done on the way out.

pub mod compaction;
pub mod expiry;
pub mod handoff;

use std::future::Future;
use std::time::Duration;

use crate::raft::Node;
use crate::shutdown::Shutdown;

/// What a round says about the next one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// More work may be waiting: run the next round at once.
    Busy,
    /// Nothing to do for now: wait one period.
    Idle,
}

/// One duty of a node.
pub trait Duty: Send + 'static {
    /// For log lines.
    const NAME: &'static str;
    /// Whether only the leader runs it.
    const LEADER_ONLY: bool;

    /// How long an idle duty waits before it looks again (and how often a
    /// leader-only duty checks whether this node leads).
    fn period(&self) -> Duration;

    /// Called when this node starts (`true`) or stops (`false`) leading;
    /// only for leader-only duties.
    fn leadership(&mut self, _leading: bool, _node: &Node) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// One round of work. Waits inside it (retries, backoff) must end early
    /// when `shutdown` is requested.
    fn round(&mut self, node: &Node, shutdown: &mut Shutdown) -> impl Future<Output = Pace> + Send;

    /// Called once after the last round, before the task ends.
    fn stopped(self) -> impl Future<Output = ()> + Send
    where
        Self: Sized,
    {
        async {}
    }
}

/// Runs `duty` on `node` until `shutdown` is requested.
pub async fn run<D: Duty>(node: Node, mut duty: D, mut shutdown: Shutdown) {
    let mut leading = false;
    while !shutdown.is_requested() {
        if D::LEADER_ONLY {
            let now = node.is_leader();
            if now != leading {
                leading = now;
                duty.leadership(now, &node).await;
            }
            if !leading {
                shutdown.sleep(duty.period()).await;
                continue;
            }
        }
        match duty.round(&node, &mut shutdown).await {
            Pace::Busy => tokio::task::yield_now().await,
            Pace::Idle => {
                shutdown.sleep(duty.period()).await;
            }
        }
    }
    if leading {
        duty.leadership(false, &node).await;
    }
    tracing::debug!(duty = D::NAME, "stopped");
    duty.stopped().await;
}
