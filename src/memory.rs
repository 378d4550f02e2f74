//! What a node holds in memory, part by part, as the memory budget counts it.
//!
//! [`MemoryUse`] is the one account: the admission check (`api::budget`),
//! `/metrics` (`inflight_memory_bytes{part=...}`) and the status output all
//! read it from [`crate::raft::Node::memory_use`]. Each part is kept in step
//! by the code that owns the memory (the table, the event window, the log
//! store, the snapshot builder), so reading the account is a few atomic loads
//! and short lock holds, never a scan.
//!
//! The parts are estimates of heap bytes, not allocator measurements. A value
//! buffer shared by a log entry, the record and a watch event is counted in
//! each part that holds it, so the total is an upper bound of what the parts
//! hold.
//!
//! [`Reservations`] holds the bytes of requests admitted but not yet applied:
//! admission adds a request's growth here before proposing it and a
//! [`Reservation`] guard gives it back when dropped, whatever path the
//! request takes, so concurrent admissions cannot overshoot the budget
//! together and a failed one cannot leak.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The watch window keeps at most this share of the budget (1/8): past it the
/// oldest revisions are dropped from the window, as past its count or age.
pub const WATCH_WINDOW_SHARE: u64 = 8;

/// Once the Raft log held in memory passes this share of the budget (1/8), a
/// snapshot is built and the log purged up to it (`duties::compaction`), so
/// that the log is bounded in bytes, not only in entries.
pub const RAFT_LOG_SHARE: u64 = 8;

/// One node's memory, by part (bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryUse {
    /// Keys, values and metadata of every record, live or waiting for hand-off.
    pub records: u64,
    /// The part of `records` that waits for hand-off (COMPLETED, EXPIRED).
    /// Not added again to the total.
    pub outbox: u64,
    /// The part of `records` the sink refused for good (dead letters),
    /// waiting for an operator. Not added again to the total.
    pub dead_letters: u64,
    /// The remembered request ids (`--request-id-max-bytes` bounds them).
    pub request_ids: u64,
    /// The events kept for `Watch` resumption (and the records they carry).
    pub watch_window: u64,
    /// Raft log entries held in memory since the last purge.
    pub raft_log: u64,
    /// A snapshot being built or installed: its expected size, while it is.
    pub snapshot: u64,
    /// Admitted requests not yet applied (or failed).
    pub reserved: u64,
}

impl MemoryUse {
    /// What the budget compares: every part, the outbox once (inside records).
    pub fn total(&self) -> u64 {
        self.records
            .saturating_add(self.request_ids)
            .saturating_add(self.watch_window)
            .saturating_add(self.raft_log)
            .saturating_add(self.snapshot)
            .saturating_add(self.reserved)
    }

    /// The parts that add up to [`MemoryUse::total`], with the names metrics
    /// and messages use. Records waiting for hand-off are split out of
    /// `records` as `outbox`, so that no byte is named twice.
    pub fn parts(&self) -> [(&'static str, u64); 8] {
        [
            (
                "live_records",
                self.records
                    .saturating_sub(self.outbox)
                    .saturating_sub(self.dead_letters),
            ),
            ("outbox", self.outbox),
            ("dead_letters", self.dead_letters),
            ("request_ids", self.request_ids),
            ("watch_window", self.watch_window),
            ("raft_log", self.raft_log),
            ("snapshot", self.snapshot),
            ("reserved", self.reserved),
        ]
    }

    /// The parts, largest first (ties in the order of [`MemoryUse::parts`]).
    pub fn largest(&self) -> Vec<(&'static str, u64)> {
        let mut parts = self.parts().to_vec();
        parts.sort_by_key(|p| std::cmp::Reverse(p.1));
        parts
    }
}

/// Bytes set aside for work under way. Cheap to clone; clones share the count.
#[derive(Clone, Debug, Default)]
pub struct Reservations {
    bytes: Arc<AtomicU64>,
}

impl Reservations {
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    /// Reserves `need` bytes if `used`, what is already reserved and `need`
    /// fit in `budget`; `None` (and nothing reserved) if not. The check and
    /// the reservation are one atomic step, so two requests can never both
    /// take the last room.
    pub fn try_reserve(&self, used: u64, need: u64, budget: u64) -> Option<Reservation> {
        let mut held = self.bytes.load(Ordering::Acquire);
        loop {
            if used.saturating_add(held).saturating_add(need) > budget {
                return None;
            }
            match self.bytes.compare_exchange_weak(
                held,
                held + need,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(self.guard(need)),
                Err(now) => held = now,
            }
        }
    }

    /// Reserves `bytes` unconditionally (work that must go on, such as a
    /// snapshot, is counted, not refused).
    pub fn reserve(&self, bytes: u64) -> Reservation {
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
        self.guard(bytes)
    }

    fn guard(&self, bytes: u64) -> Reservation {
        Reservation {
            bytes,
            pool: self.bytes.clone(),
        }
    }
}

/// Bytes held in a [`Reservations`] count until this is dropped.
#[derive(Debug)]
#[must_use = "the reservation ends when this is dropped"]
pub struct Reservation {
    bytes: u64,
    pool: Arc<AtomicU64>,
}

impl Reservation {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Holds `more` bytes besides (something received piece by piece).
    pub fn grow(&mut self, more: u64) {
        self.pool.fetch_add(more, Ordering::AcqRel);
        self.bytes += more;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.pool.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reservation_counts_until_dropped_and_the_last_room_goes_once() {
        let r = Reservations::default();
        let a = r.try_reserve(50, 30, 100).expect("fits");
        assert_eq!(r.bytes(), 30);
        assert!(r.try_reserve(50, 21, 100).is_none(), "50 + 30 + 21 > 100");
        let b = r.try_reserve(50, 20, 100).expect("exactly fits");
        assert_eq!(r.bytes(), 50);
        drop(a);
        assert_eq!(r.bytes(), 20);
        drop(b);
        assert_eq!(r.bytes(), 0);
        let mut s = r.reserve(1_000);
        assert_eq!((r.bytes(), s.bytes()), (1_000, 1_000));
        s.grow(500);
        assert_eq!((r.bytes(), s.bytes()), (1_500, 1_500));
        drop(s);
        assert_eq!(r.bytes(), 0);
    }

    #[test]
    fn total_counts_the_outbox_once_and_largest_names_the_biggest_part() {
        let m = MemoryUse {
            records: 100,
            outbox: 50,
            dead_letters: 10,
            request_ids: 5,
            watch_window: 70,
            raft_log: 10,
            snapshot: 0,
            reserved: 1,
        };
        assert_eq!(m.total(), 186);
        assert_eq!(m.parts().iter().map(|p| p.1).sum::<u64>(), m.total());
        assert_eq!(m.largest()[0], ("watch_window", 70));
        assert_eq!(m.largest()[1], ("outbox", 50));
        assert_eq!(m.largest()[2], ("live_records", 40));
    }
}
