//! A follower's contact with the leader: whether the leader is still there
//! (`millis_since`, for sending clients on), and how stale its local state
//! may be (`fresh_millis_since`, for `max_staleness_ms`).
//!
//! Hearing from the leader is not enough for the second. A follower that is
//! catching up (after a restart or a partition) accepts appends while it is
//! still thousands of entries behind; a leader cut off with a minority keeps
//! sending appends to the followers on its side while the majority elects
//! another and writes on; and an append can arrive seconds after it was
//! sent (a paused process, TCP retransmitting after a partition heals). No
//! comparison of clocks between nodes can tell those apart, so freshness
//! rests on causality instead:
//!
//! 1. every answer a follower sends to an append carries a reading of its
//!    own clock (`RaftMessage::clock`);
//! 2. the leader remembers when each reading arrived ([`Echoes`]). Once it
//!    has applied an entry of its own term, each append it sends echoes the
//!    newest reading of that follower that arrived before it sent what a
//!    quorum has since acknowledged, with its applied index at the time of
//!    sending (`RaftMessage::fresh_as_of`);
//! 3. once the follower has applied that index, it holds every write
//!    acknowledged before its own reading:
//!    - one this leader acknowledged: applied here before the answer went
//!      out, so before the reading, so at or below the index;
//!    - one an earlier leader acknowledged: committed, so in this leader's
//!      log, and applied here once an entry of this leader's term is;
//!    - one a newer leader acknowledged: impossible. A quorum acknowledged
//!      this leader's append after the reading, so each of them had not
//!      yet voted for a newer term then, and a newer leader needs one of
//!      them to commit anything.
//!
//! The freshness is measured on the follower's own clock only, so it holds
//! whatever the other clocks do, and however late a message arrives.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::NodeId;
use crate::pb::{Freshness, PeerClock};

/// Evidence of freshness remembered while it waits for its index to be
/// applied; past that, new evidence is folded into the newest.
const PENDING_CONTACTS: usize = 256;

#[derive(Debug)]
pub struct LeaderContact {
    /// This process's clock: `PeerClock::id`, and its zero.
    clock_id: u64,
    epoch: std::time::Instant,
    /// ms since `epoch` of the last contact + 1 (0 = never).
    last: AtomicU64,
    /// The reading (ms since `epoch` + 1) as of which the state is known
    /// fresh (0 = not yet), as of the last `fresh_millis_since`.
    fresh: AtomicU64,
    /// Evidence whose index was not applied yet: (index, the reading it
    /// makes the state fresh as of), at most `PENDING_CONTACTS`.
    pending: Mutex<VecDeque<(u64, u64)>>,
}

impl Default for LeaderContact {
    fn default() -> Self {
        LeaderContact {
            clock_id: rand::random(),
            epoch: std::time::Instant::now(),
            last: AtomicU64::new(0),
            fresh: AtomicU64::new(0),
            pending: Mutex::default(),
        }
    }
}

impl LeaderContact {
    /// A reading of this process's clock, for an answer to an append.
    pub fn reading(&self) -> PeerClock {
        PeerClock {
            id: self.clock_id,
            ms: self.now(),
        }
    }

    /// The leader's append was accepted.
    pub fn heard(&self) {
        self.last.fetch_max(self.now(), Ordering::Relaxed);
    }

    /// An append from a leader carried `fresh_as_of` (a reading of another
    /// process, the same node before a restart, is not evidence).
    pub fn note(&self, fresh_as_of: Option<Freshness>) {
        if let Some(Freshness {
            reading: Some(reading),
            index,
        }) = fresh_as_of
        {
            if reading.id == self.clock_id {
                self.note_at(self.now(), index, reading.ms);
            }
        }
    }

    /// Milliseconds since the last contact; `None` if there was none.
    pub fn millis_since(&self) -> Option<u64> {
        since(self.now(), self.last.load(Ordering::Relaxed))
    }

    /// Milliseconds since the time as of which this node's state, having
    /// applied `applied`, holds every write the cluster acknowledged; `None`
    /// if there is no such time yet.
    pub fn fresh_millis_since(&self, applied: u64) -> Option<u64> {
        self.fresh_at(self.now(), applied)
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn note_at(&self, now: u64, index: u64, fresh: u64) {
        // A reading from the future is not one of ours.
        if !(1..=now).contains(&fresh) {
            return;
        }
        let mut pending = self.pending.lock();
        let full = pending.len() >= PENDING_CONTACTS;
        match pending.back_mut() {
            // Once `commit` is applied, this evidence holds too.
            Some((commit, at)) if *commit >= index => *at = (*at).max(fresh),
            // Full: fold into the newest, which then needs the higher index
            // (the older evidence stays, to be reached first).
            Some((commit, at)) if full => {
                *commit = index;
                *at = (*at).max(fresh);
            }
            _ => pending.push_back((index, fresh)),
        }
    }

    fn fresh_at(&self, now: u64, applied: u64) -> Option<u64> {
        let mut pending = self.pending.lock();
        while let Some(&(commit, at)) = pending.front() {
            if commit > applied {
                break;
            }
            self.fresh.fetch_max(at, Ordering::Relaxed);
            pending.pop_front();
        }
        since(now, self.fresh.load(Ordering::Relaxed))
    }
}

/// Readings kept per follower, newest last, at least `READING_SPACING`
/// apart: 64 of them cover at least 320 ms, more than a quorum round takes,
/// however many appends a burst answers.
const READINGS_KEPT: usize = 64;
const READING_SPACING: std::time::Duration = std::time::Duration::from_millis(5);

/// The leader's side: the followers' clock readings and when each arrived.
#[derive(Default)]
pub struct Echoes {
    readings: Mutex<HashMap<NodeId, VecDeque<(PeerClock, tokio::time::Instant)>>>,
}

impl Echoes {
    /// `target` answered with `reading`, which arrived just now.
    pub fn arrived(&self, target: NodeId, reading: Option<PeerClock>) {
        if let Some(reading) = reading {
            self.arrived_at(target, reading, tokio::time::Instant::now());
        }
    }

    fn arrived_at(&self, target: NodeId, reading: PeerClock, at: tokio::time::Instant) {
        let mut all = self.readings.lock();
        let kept = all.entry(target).or_default();
        // Keeping the older of two close readings only loses a few ms.
        if kept
            .back()
            .is_some_and(|(_, last)| at < *last + READING_SPACING)
        {
            return;
        }
        kept.push_back((reading, at));
        if kept.len() > READINGS_KEPT {
            kept.pop_front();
        }
    }

    /// The newest reading of `target` that arrived before `quorum_acked`
    /// (the send time of what a quorum last acknowledged): what an append
    /// to `target` may echo as `fresh_as_of`.
    pub fn echo(&self, target: NodeId, quorum_acked: tokio::time::Instant) -> Option<PeerClock> {
        let mut all = self.readings.lock();
        let kept = all.get_mut(&target)?;
        let i = kept.iter().rposition(|(_, at)| *at <= quorum_acked)?;
        // Older readings will never be the newest again.
        kept.drain(..i);
        kept.front().map(|(r, _)| *r)
    }
}

/// How long ago this node last confirmed its leadership with a quorum, as
/// the leader's own evidence of freshness: `None` when it does not lead;
/// `Some(None)` while it leads without that evidence yet. It counts only
/// once an entry of its own term is applied: before that, its state may
/// lack writes that an earlier leader acknowledged.
pub fn leader_confirmed_ago(
    m: &openraft::RaftMetrics<super::TypeConfig>,
) -> Option<Option<std::time::Duration>> {
    if m.state != openraft::ServerState::Leader {
        return None;
    }
    let own_term_applied = m
        .last_applied
        .is_some_and(|l| l.leader_id.term == m.current_term);
    Some(
        m.last_quorum_acked
            .as_ref()
            .filter(|_| own_term_applied)
            .map(|t| openraft::Instant::elapsed(&**t)),
    )
}

fn since(now: u64, t: u64) -> Option<u64> {
    match t {
        0 => None,
        t => Some(now.saturating_sub(t)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_is_fresh_only_once_it_has_applied_the_echoed_index() {
        let c = LeaderContact::default();
        // At 1,000 ms an append echoes our reading of 980 with index 50.
        c.note_at(1_000, 50, 980);
        // Applied only up to 40: no evidence of freshness yet.
        assert_eq!(c.fresh_at(1_100, 40), None);
        // Applied 50: fresh as of 980.
        assert_eq!(c.fresh_at(1_100, 50), Some(120));
    }

    #[test]
    fn late_appends_and_strangers_readings_make_no_follower_fresher() {
        let c = LeaderContact::default();
        c.note_at(1_000, 50, 990);
        assert_eq!(c.fresh_at(1_000, 50), Some(10));
        // An append that arrives at 6,000 but echoes a reading of 1,000 (it
        // was sent then, or its leader lost its quorum since): fresh as of
        // 1,000 only.
        c.note_at(6_000, 55, 1_000);
        assert_eq!(c.fresh_at(6_000, 55), Some(5_000));
        // Hearing from the leader is contact, not freshness.
        c.heard();
        assert_eq!(c.fresh_at(6_000, 55), Some(5_000));
        // Readings of another process (before a restart) do not count, nor
        // do readings from the future.
        let stranger = PeerClock {
            id: c.clock_id.wrapping_add(1),
            ms: 1,
        };
        c.note(Some(Freshness {
            reading: Some(stranger),
            index: 0,
        }));
        c.note_at(6_000, 0, 7_000);
        assert_eq!(c.fresh_at(6_000, 60), Some(5_000));
    }

    #[test]
    fn a_lagging_follower_catches_up_evidence_by_evidence() {
        let c = LeaderContact::default();
        for (t, index) in [(100, 10), (200, 20), (300, 30)] {
            c.note_at(t, index, t);
        }
        assert_eq!(c.fresh_at(400, 25), Some(200), "the evidence with 20");
        assert_eq!(c.fresh_at(400, 30), Some(100));
    }

    #[test]
    fn pending_evidence_is_bounded_and_the_oldest_stays_reachable() {
        let c = LeaderContact::default();
        let n = PENDING_CONTACTS as u64 * 2;
        for i in 1..=n {
            c.note_at(i, i, i);
        }
        assert_eq!(c.pending.lock().len(), PENDING_CONTACTS);
        // An apply that lags far behind still reaches the oldest evidence ...
        assert_eq!(c.fresh_at(n, 10), Some(n - 10));
        // ... and the newest, folded together, once it has applied them all.
        assert_eq!(c.fresh_at(n, n), Some(0));
    }
}

#[cfg(test)]
mod echo_tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_leader_echoes_the_newest_reading_that_arrived_before_its_quorum_round() {
        let e = Echoes::default();
        let reading = |ms| PeerClock { id: 7, ms };
        let t0 = tokio::time::Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(e.echo(2, at(0)), None, "no readings yet");
        e.arrived_at(2, reading(100), at(10));
        // Too close to the one before: not kept.
        e.arrived_at(2, reading(102), at(12));
        e.arrived_at(2, reading(120), at(30));
        // A quorum round sent at 20, between the two: only the first counts.
        assert_eq!(e.echo(2, at(20)), Some(reading(100)));
        assert_eq!(e.echo(2, at(30)), Some(reading(120)));
        assert_eq!(e.echo(3, at(30)), None, "another follower");
        assert_eq!(e.echo(2, at(5)), None, "a round before any reading");
    }
}
