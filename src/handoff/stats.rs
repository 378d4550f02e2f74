//! What the hand-off pipeline reports: per sink, what it delivered and how
//! it last failed. Read by `status`, `/metrics` and the Insert refusal message.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::SinkSpec;
use crate::metrics::{HandoffLabels, METRICS};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkRole {
    Primary,
    Shadow,
}

impl SinkRole {
    pub fn as_str(&self) -> &'static str {
        match self {
            SinkRole::Primary => "primary",
            SinkRole::Shadow => "shadow",
        }
    }
}

/// One sink's counters, as this node's worker saw them.
pub struct SinkStats {
    pub role: SinkRole,
    /// The spec with secrets hidden.
    pub spec: String,
    inner: Mutex<Counters>,
}

#[derive(Default)]
struct Counters {
    records: u64,
    batches_ok: u64,
    batches_failed: u64,
    last_success: Option<Instant>,
    last_error: Option<(Instant, String)>,
    failing_since: Option<Instant>,
    last_logged: Option<Instant>,
    unlogged_failures: u64,
}

/// A copy of one sink's counters, with times as ages.
#[derive(Clone, Debug)]
pub struct SinkSnapshot {
    pub role: SinkRole,
    pub spec: String,
    pub records_delivered: u64,
    pub batches_delivered: u64,
    pub batches_failed: u64,
    pub last_success_age: Option<Duration>,
    pub last_error: Option<String>,
    pub last_error_age: Option<Duration>,
    /// Failing since this long (no success since the first failure).
    pub failing_for: Option<Duration>,
}

/// Failures are logged at most this often per sink (each with a count of
/// those not logged), so a dead shadow sink does not flood the log.
const LOG_EVERY: Duration = Duration::from_secs(10);

impl SinkStats {
    fn new(role: SinkRole, spec: &SinkSpec) -> SinkStats {
        SinkStats {
            role,
            spec: spec.to_string(),
            inner: Mutex::new(Counters::default()),
        }
    }

    fn labels(&self, result: &str) -> HandoffLabels {
        HandoffLabels {
            role: self.role.as_str().to_string(),
            result: result.to_string(),
        }
    }

    pub fn succeeded(&self, records: usize, took: Duration) {
        let mut c = self.inner.lock();
        c.records += records as u64;
        c.batches_ok += 1;
        c.last_success = Some(Instant::now());
        if let Some(since) = c.failing_since.take() {
            tracing::info!(
                sink = %self.spec,
                role = self.role.as_str(),
                failed_for_ms = since.elapsed().as_millis() as u64,
                "hand-off sink recovered"
            );
        }
        c.last_logged = None;
        c.unlogged_failures = 0;
        drop(c);
        METRICS
            .handoff_batches
            .get_or_create(&self.labels("ok"))
            .inc();
        METRICS
            .handoff_records
            .get_or_create(&self.labels("ok"))
            .inc_by(records as u64);
        METRICS
            .handoff_write_seconds
            .get_or_create(&self.labels("ok"))
            .observe(took.as_secs_f64());
    }

    /// Counts a failed batch and logs it (rate limited).
    pub fn failed(&self, records: usize, error: &str, retry_in: Option<Duration>) {
        let now = Instant::now();
        let mut c = self.inner.lock();
        c.batches_failed += 1;
        c.last_error = Some((now, error.to_string()));
        c.failing_since.get_or_insert(now);
        let log = c
            .last_logged
            .is_none_or(|t| now.duration_since(t) >= LOG_EVERY);
        if log {
            let not_logged = c.unlogged_failures;
            c.last_logged = Some(now);
            c.unlogged_failures = 0;
            drop(c);
            tracing::warn!(
                sink = %self.spec,
                role = self.role.as_str(),
                records,
                error,
                retry_in_ms = retry_in.map(|d| d.as_millis() as u64),
                failures_not_logged = not_logged,
                "hand-off error"
            );
        } else {
            c.unlogged_failures += 1;
        }
        METRICS
            .handoff_batches
            .get_or_create(&self.labels("error"))
            .inc();
        METRICS
            .handoff_records
            .get_or_create(&self.labels("error"))
            .inc_by(records as u64);
    }

    /// Counts a batch whose content the sink refused for good (it will be
    /// split, or set aside if it is one record). The sink itself answers, so
    /// this does not make it "failing".
    pub fn refused(&self, records: usize, error: &str) {
        let mut c = self.inner.lock();
        c.batches_failed += 1;
        c.last_error = Some((Instant::now(), error.to_string()));
        drop(c);
        tracing::debug!(sink = %self.spec, records, error, "hand-off batch refused by the sink");
        METRICS
            .handoff_batches
            .get_or_create(&self.labels("refused"))
            .inc();
        METRICS
            .handoff_records
            .get_or_create(&self.labels("refused"))
            .inc_by(records as u64);
    }

    pub fn snapshot(&self) -> SinkSnapshot {
        let c = self.inner.lock();
        SinkSnapshot {
            role: self.role,
            spec: self.spec.clone(),
            records_delivered: c.records,
            batches_delivered: c.batches_ok,
            batches_failed: c.batches_failed,
            last_success_age: c.last_success.map(|t| t.elapsed()),
            last_error: c.last_error.as_ref().map(|(_, e)| e.clone()),
            last_error_age: c.last_error.as_ref().map(|(t, _)| t.elapsed()),
            failing_for: c.failing_since.map(|t| t.elapsed()),
        }
    }
}

/// The hand-off pipeline of one node.
pub struct HandoffState {
    pub primary: SinkStats,
    pub shadow: Option<SinkStats>,
    /// True while this node's worker delivers (it leads).
    active: AtomicBool,
    /// Writes that grow memory are refused once the node holds this many bytes (see `crate::memory`).
    pub memory_budget_bytes: u64,
}

impl HandoffState {
    pub fn new(
        primary: &SinkSpec,
        shadow: Option<&SinkSpec>,
        memory_budget_bytes: u64,
    ) -> HandoffState {
        HandoffState {
            primary: SinkStats::new(SinkRole::Primary, primary),
            shadow: shadow.map(|s| SinkStats::new(SinkRole::Shadow, s)),
            active: AtomicBool::new(false),
            memory_budget_bytes,
        }
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    pub fn set_active(&self, active: bool) {
        self.active.store(active, Ordering::Relaxed);
    }

    pub fn sinks(&self) -> Vec<SinkSnapshot> {
        std::iter::once(&self.primary)
            .chain(self.shadow.as_ref())
            .map(SinkStats::snapshot)
            .collect()
    }
}
