//! The leader's expiry duty: proposing `Expire` for records past their deadline.
//!
//! Only the leader looks at the clock; it finds due records in the TTL index
//! (O(log n), no table scan) and proposes them in batches through the log, so
//! every replica expires the same records at the same log position. Batches
//! are rate limited (`rate_per_sec`, one batch per tick, one batch in flight)
//! so that a mass expiry cannot starve client writes. A new leader simply
//! continues: the TTL index is replicated state.

use std::time::Duration;

use tokio::sync::watch;

use super::bootstrap::RaftNode;
use super::leader_clock_ms;
use crate::state::{Action, Command};

/// What happens to a LIVE record whose deadline passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExpiredMode {
    /// Keep it as EXPIRED (immutable) for hand-off to post-flight storage.
    Handoff,
    /// Remove it.
    Drop,
}

#[derive(Clone, Copy, Debug)]
pub struct ExpirySettings {
    pub rate_per_sec: u32,
    pub mode: ExpiredMode,
}

const TICK: Duration = Duration::from_millis(100);

pub async fn run(node: RaftNode, settings: ExpirySettings, mut stop: watch::Receiver<bool>) {
    let per_tick = (settings.rate_per_sec as u64 * TICK.as_millis() as u64 / 1000).max(1) as usize;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if !node.raft.is_leader() {
            continue;
        }
        let now = leader_clock_ms();
        let keys = node.store.due(now, per_tick);
        if keys.is_empty() {
            continue;
        }
        let proposed = keys.len();
        let cmd = Command {
            at_ms: now,
            request: None,
            action: Action::Expire {
                keys,
                drop: settings.mode == ExpiredMode::Drop,
            },
        };
        match node.raft.client_write(cmd).await {
            Ok(r) => {
                let expired = r.data.and_then(|o| o.ok()).map(|a| a.len()).unwrap_or(0);
                crate::metrics::METRICS.expired.inc_by(expired as u64);
                tracing::debug!(proposed, expired, "expired records");
            }
            Err(e) => tracing::debug!(error = %e, "expiry proposal failed (leadership moved?)"),
        }
    }
}
