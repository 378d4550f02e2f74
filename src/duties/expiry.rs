//! The leader's expiry duty: proposing `Expire` for records past their deadline.
//!
//! Only the leader looks at the clock; it finds due records in the TTL index
//! (O(log n), no table scan) and proposes them in batches through the log, so
//! every replica expires the same records at the same log position. Batches
//! are rate limited (`rate_per_sec`, one batch per period, one batch in
//! flight) so that a mass expiry cannot starve client writes. A new leader
//! simply continues: the TTL index is replicated state.

use std::time::Duration;

use super::{Duty, Pace};
use crate::raft::Node;
use crate::shutdown::Shutdown;
use crate::state::{Action, Command, ExpiredMode};

#[derive(Clone, Copy, Debug)]
pub struct ExpirySettings {
    pub rate_per_sec: u32,
    pub mode: ExpiredMode,
}

/// One batch of due records per period.
const PERIOD: Duration = Duration::from_millis(100);

pub struct Expiry {
    settings: ExpirySettings,
    per_round: usize,
}

impl Expiry {
    pub fn new(settings: ExpirySettings) -> Expiry {
        let per_round =
            (settings.rate_per_sec as u64 * PERIOD.as_millis() as u64 / 1000).max(1) as usize;
        Expiry {
            settings,
            per_round,
        }
    }
}

impl Duty for Expiry {
    const NAME: &'static str = "expiry";
    const LEADER_ONLY: bool = true;

    fn period(&self) -> Duration {
        PERIOD
    }

    async fn round(&mut self, node: &Node, _shutdown: &mut Shutdown) -> Pace {
        let now = node.stamp();
        let keys = node.table().due(now, self.per_round);
        if keys.is_empty() {
            return Pace::Idle;
        }
        let proposed = keys.len();
        let cmd = Command {
            at_ms: now,
            request: None,
            action: Action::Expire {
                keys,
                mode: self.settings.mode,
            },
        };
        match node.propose(cmd).await {
            Ok(outcome) => {
                let expired = outcome.map(|a| a.len()).unwrap_or(0);
                crate::metrics::METRICS.expired.inc_by(expired as u64);
                tracing::debug!(proposed, expired, "expired records");
            }
            Err(e) => tracing::debug!(error = %e, "expiry proposal failed (leadership moved?)"),
        }
        // The rate limit: one batch per period, even with more due.
        Pace::Idle
    }
}
