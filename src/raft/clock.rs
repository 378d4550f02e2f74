//! The leader's clock: the time a leader stamps into commands (`at_ms`).
//!
//! Every TTL, request-id window and hand-off age is measured against these
//! stamps, so they must not leap. Reading the wall clock directly made a
//! forward jump of the leader's clock (an NTP step, an operator's `date`)
//! expire every TTL it covered in one round.
//!
//! The stamp instead advances with the monotonic clock (`Instant`) since the
//! previous stamp, and the wall clock only pulls it gradually: by at most
//! [`SLEW_MS_PER_SEC`] ms per second of monotonic time, ahead or back. A
//! wall clock at most [`SNAP_AHEAD_MS`] ahead is taken at once. So a
//! wall clock that jumps an hour ahead is caught up over ten hours, during
//! which time runs 10% fast; one that jumps back makes time run 10% slow
//! until the wall clock catches up, never backwards. Small drift is
//! followed the same way.
//!
//! A stamp is also never below the last stamp this node applied (the
//! previous leader's, replicated): time does not go backwards across a
//! leader change.
//!
//! Every node also follows the leaders' time while it does not lead: each
//! stamp it applies live (from an entry past those its log held when it
//! started, so not while it replays its own log after a restart) is taken as
//! the time then, if it is ahead of where its own clock would be.
//! A node that becomes leader therefore carries on from its predecessor's
//! time, advanced by its own monotonic clock, and slews from there toward
//! its wall clock. Without that, a node restarted with its wall clock
//! minutes ahead and then elected would start stamping at its wall clock
//! and expire every TTL in those minutes at once. A node that never saw a
//! stamp live (a whole cluster restarting) starts from its wall clock or
//! the last stamp it applied, whichever is later.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

/// How fast the stamp may move toward the wall clock beyond monotonic
/// progress: ms per second (10%).
pub const SLEW_MS_PER_SEC: u64 = 100;

/// A wall clock at most this far ahead of the stamp is taken at once:
/// ordinary drift, and the few ms by which a new leader's continuation of
/// its predecessor's time trails the real time (a stamp is applied some
/// time after it was taken). Further ahead is a jump, absorbed by the slew.
pub const SNAP_AHEAD_MS: u64 = 1_000;

/// One node's leader clock. Only a leader stamps; a follower's clock is
/// idle and picks up (monotonic progress, slew, the replicated floor) when
/// the node next leads.
pub struct LeaderClock {
    /// The wall clock, µs since the Unix epoch.
    wall_us: fn() -> u64,
    /// The last stamp (µs, so that frequent small steps still slew) and when
    /// it was taken, or the last stamp seen applied live if that was ahead.
    last: Mutex<Option<(u64, Instant)>>,
    /// Entries up to this index were in the log when the node started: their
    /// stamps are history, not the time now (see `live_after`).
    live_after: AtomicU64,
}

impl LeaderClock {
    /// A clock that reads `wall_us` (µs since the Unix epoch) as its wall clock.
    pub fn new(wall_us: fn() -> u64) -> LeaderClock {
        LeaderClock {
            wall_us,
            last: Mutex::new(None),
            live_after: AtomicU64::new(u64::MAX),
        }
    }

    /// Entries past `index` reach this node as leaders make them: `index`
    /// is the last one its log held when it started (0 for an empty log).
    pub fn live_after(&self, index: u64) {
        self.live_after.store(index, Ordering::Release);
    }

    /// A stamp this node just applied, with its entry's index: the leaders'
    /// time now, to carry on from should this node lead. Ignored for entries
    /// its log held when it started (their stamps are history), and when
    /// this clock is already ahead.
    pub fn observe(&self, index: u64, stamp_ms: u64) {
        if index > self.live_after.load(Ordering::Acquire) {
            self.observe_at(Instant::now(), stamp_ms);
        }
    }

    fn observe_at(&self, now: Instant, stamp_ms: u64) {
        // 0: nothing stamped yet (only blank and membership entries applied).
        if stamp_ms == 0 {
            return;
        }
        let stamp = stamp_ms.saturating_mul(1000);
        let mut last = self.last.lock();
        let ahead = match *last {
            None => true,
            Some((prev, at)) => {
                stamp > prev.saturating_add(now.saturating_duration_since(at).as_micros() as u64)
            }
        };
        if ahead {
            *last = Some((stamp, now));
        }
    }

    /// The next stamp, ms since the Unix epoch; `floor_ms` is the last stamp
    /// this node applied. Never below an earlier stamp or the floor.
    pub fn stamp(&self, floor_ms: u64) -> u64 {
        self.stamp_at_us(Instant::now(), (self.wall_us)(), floor_ms)
    }

    #[cfg(test)]
    fn stamp_at(&self, now: Instant, wall_ms: u64, floor_ms: u64) -> u64 {
        self.stamp_at_us(now, wall_ms.saturating_mul(1000), floor_ms)
    }

    fn stamp_at_us(&self, now: Instant, wall: u64, floor_ms: u64) -> u64 {
        let floor = floor_ms.saturating_mul(1000);
        let mut last = self.last.lock();
        let next = match *last {
            None => wall.max(floor),
            Some((prev, at)) => {
                let elapsed = now.saturating_duration_since(at).as_micros() as u64;
                step(prev, elapsed, wall).max(floor)
            }
        };
        // `now` may be older than `at` when two callers race: keep the later.
        let at = last.map_or(now, |(_, at)| at.max(now));
        *last = Some((next, at));
        next / 1000
    }
}

/// The stamp (µs) `elapsed_us` of monotonic time after `prev_us`, with the
/// wall clock reading `wall_us`: monotonic progress, moved toward the wall
/// clock by at most the slew. Never below `prev_us`.
fn step(prev_us: u64, elapsed_us: u64, wall_us: u64) -> u64 {
    let mono = prev_us.saturating_add(elapsed_us);
    if wall_us >= mono && wall_us - mono <= SNAP_AHEAD_MS * 1_000 {
        return wall_us;
    }
    let slew = elapsed_us.saturating_mul(SLEW_MS_PER_SEC) / 1000;
    if wall_us >= mono {
        mono + (wall_us - mono).min(slew)
    } else {
        // slew <= elapsed, so this stays >= prev_us.
        mono - (mono - wall_us).min(slew)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const T0: u64 = 1_800_000_000_000;

    fn clock() -> (LeaderClock, Instant) {
        (
            LeaderClock::new(super::super::wall_clock_us),
            Instant::now(),
        )
    }

    #[test]
    fn starts_from_the_wall_clock_or_the_last_applied_stamp() {
        let (c, t) = clock();
        assert_eq!(c.stamp_at(t, T0, 5), T0);
        let (c, t) = clock();
        assert_eq!(c.stamp_at(t, T0, T0 + 7_000), T0 + 7_000);
    }

    #[test]
    fn a_new_leader_carries_on_from_the_stamps_it_applied_not_its_jumped_wall_clock() {
        let (c, t) = clock();
        // Applied live: the previous leader's time was T0 at t.
        c.observe_at(t, T0);
        // Two seconds later this node leads; its wall clock is 5 minutes ahead.
        let s = c.stamp_at(t + Duration::from_secs(2), T0 + 2_000 + 300_000, 0);
        assert_eq!(
            s,
            T0 + 2_000 + 2 * SLEW_MS_PER_SEC,
            "two seconds plus their slew"
        );
    }

    #[test]
    fn stamps_applied_before_going_live_or_behind_the_clock_are_ignored() {
        let (c, t) = clock();
        // Replayed from the log after a restart: not the time now.
        c.live_after(10);
        c.observe(10, T0 - 3_600_000);
        assert_eq!(c.stamp_at(t, T0, 0), T0, "no live stamp: the wall clock");
        let (c, t) = clock();
        c.observe_at(t, T0);
        // An older stamp applied late does not pull the clock back.
        c.observe_at(t + Duration::from_secs(1), T0 - 500);
        let s = c.stamp_at(t + Duration::from_secs(1), T0 + 1_000, 0);
        assert_eq!(s, T0 + 1_000);
    }

    #[test]
    fn follows_the_monotonic_clock_while_the_wall_clock_agrees() {
        let (c, t) = clock();
        c.stamp_at(t, T0, 0);
        let s = c.stamp_at(t + Duration::from_millis(1_500), T0 + 1_500, 0);
        assert_eq!(s, T0 + 1_500);
    }

    #[test]
    fn a_wall_clock_jump_forward_is_absorbed_gradually() {
        let (c, t) = clock();
        c.stamp_at(t, T0, 0);
        let hour = 3_600_000;
        // One second later the wall clock reads an hour and a second later.
        let s = c.stamp_at(t + Duration::from_secs(1), T0 + hour + 1_000, 0);
        assert_eq!(
            s,
            T0 + 1_000 + SLEW_MS_PER_SEC,
            "one second plus one second's slew"
        );
        // Many small steps slew as much as one big one (µs resolution).
        let mut s = s;
        for i in 2..=1_001u64 {
            s = c.stamp_at(
                t + Duration::from_millis(i * 1_000),
                T0 + hour + i * 1_000,
                0,
            );
        }
        let expected = T0 + 1_001_000 + 1_001 * SLEW_MS_PER_SEC;
        assert!(s.abs_diff(expected) <= 2, "{s} vs {expected}");
        // After ten hours (fast by 10%) the stamp has caught up and stays with the wall clock.
        let end = t + Duration::from_secs(11 * 3_600);
        let s = c.stamp_at(end, T0 + hour + 11 * hour, 0);
        assert_eq!(s, T0 + hour + 11 * hour);
    }

    #[test]
    fn a_wall_clock_a_little_ahead_is_taken_at_once() {
        let (c, t) = clock();
        // Carrying on from a predecessor's stamp applied 20 ms after it was taken.
        c.observe_at(t, T0 - 20);
        assert_eq!(c.stamp_at(t, T0, 0), T0);
        // Ordinary drift ahead, within the snap.
        let s = c.stamp_at(t + Duration::from_secs(1), T0 + 1_000 + SNAP_AHEAD_MS, 0);
        assert_eq!(s, T0 + 1_000 + SNAP_AHEAD_MS);
    }

    #[test]
    fn a_wall_clock_jump_back_never_moves_stamps_back() {
        let (c, t) = clock();
        c.stamp_at(t, T0, 0);
        let s1 = c.stamp_at(t + Duration::from_secs(1), T0 - 3_600_000, 0);
        assert_eq!(s1, T0 + 1_000 - SLEW_MS_PER_SEC, "runs slow, not backwards");
        let s2 = c.stamp_at(t + Duration::from_secs(2), T0 - 3_600_000, 0);
        assert!(s2 > s1);
        // No monotonic time passed: the same stamp, whatever the wall says.
        assert_eq!(c.stamp_at(t + Duration::from_secs(2), 0, 0), s2);
    }

    #[test]
    fn never_below_the_last_applied_stamp() {
        let (c, t) = clock();
        c.stamp_at(t, T0, 0);
        // Another leader stamped ahead of this node's clock meanwhile.
        let s = c.stamp_at(t + Duration::from_secs(1), T0 + 1_000, T0 + 9_000);
        assert_eq!(s, T0 + 9_000);
        let s = c.stamp_at(t + Duration::from_secs(2), T0 + 2_000, T0 + 9_000);
        assert_eq!(s, T0 + 10_000 - SLEW_MS_PER_SEC, "then on from there");
    }

    #[test]
    fn the_real_clock_is_monotonic() {
        let c = LeaderClock::new(super::super::wall_clock_us);
        let mut last = 0;
        for _ in 0..1_000 {
            let s = c.stamp(0);
            assert!(s >= last);
            last = s;
        }
        assert!(last.abs_diff(super::super::wall_clock_ms()) < 1_000);
    }
}
