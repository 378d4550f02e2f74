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
//! clock comparison between nodes can tell those apart, so freshness rests
//! on causality instead:
//!
//! 1. every answer a follower sends to an append carries a reading of its
//!    own clock (`RaftMessage::clock`);
//! 2. the leader remembers when each reading arrived ([`Echoes`]), and on
//!    its next appends to that follower echoes the newest reading that
//!    arrived before it sent what a quorum has since acknowledged
//!    (`RaftMessage::fresh_as_of`);
//! 3. the follower, once it has applied the commit index of that append,
//!    holds every write acknowledged before its own reading: such a write
//!    was committed before the leader sent that append (it was committed
//!    before the reading, which came before the leader's quorum round), and
//!    no newer leader can have acknowledged one, since the voters that
//!    acknowledged this leader after the reading refuse any other candidate
//!    for a lease after that.
//!
//! The freshness is measured on the follower's own clock only, so it holds
//! whatever the other clocks do, and however late a message arrives.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::NodeId;
use crate::pb::PeerClock;

/// Contacts remembered while they wait for their commit index to be
/// applied. Dropping the oldest only makes the state look older than it is.
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
    /// Contacts whose commit index was not applied yet: (commit index, the
    /// reading it makes the state fresh as of), at most `PENDING_CONTACTS`.
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

    /// The leader's append was accepted; it carried `leader_commit`, and
    /// `fresh_as_of`, one of this node's readings the leader echoed (none,
    /// or another process's: no evidence of freshness).
    pub fn touch(&self, leader_commit: u64, fresh_as_of: Option<PeerClock>) {
        let fresh = fresh_as_of.filter(|c| c.id == self.clock_id).map(|c| c.ms);
        self.touch_at(self.now(), leader_commit, fresh);
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

    fn touch_at(&self, now: u64, leader_commit: u64, fresh: Option<u64>) {
        self.last.fetch_max(now, Ordering::Relaxed);
        // A reading from the future is not one of ours.
        let Some(fresh) = fresh.filter(|f| (1..=now).contains(f)) else {
            return;
        };
        let mut pending = self.pending.lock();
        match pending.back_mut() {
            // Once `commit` is applied, this contact shows that state too.
            Some((commit, at)) if *commit >= leader_commit => *at = (*at).max(fresh),
            _ => pending.push_back((leader_commit, fresh)),
        }
        if pending.len() > PENDING_CONTACTS {
            pending.pop_front();
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

/// Readings: how many are kept per follower, newest last.
const READINGS_KEPT: usize = 32;

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
    fn a_follower_is_fresh_only_once_it_has_applied_what_the_contact_carried() {
        let c = LeaderContact::default();
        // At 1,000 ms an append echoes our reading of 980 and says: committed 50.
        c.touch_at(1_000, 50, Some(980));
        assert_eq!(since(1_100, c.last.load(Ordering::Relaxed)), Some(100));
        // Applied only up to 40: no evidence of freshness yet.
        assert_eq!(c.fresh_at(1_100, 40), None);
        // Applied 50: fresh as of 980.
        assert_eq!(c.fresh_at(1_100, 50), Some(120));
    }

    #[test]
    fn late_or_unconfirmed_appends_make_no_follower_fresh() {
        let c = LeaderContact::default();
        c.touch_at(1_000, 50, Some(990));
        assert_eq!(c.fresh_at(1_000, 50), Some(10));
        // An append that arrives at 6,000 but echoes a reading of 1,000 (it
        // was sent then, or its leader lost its quorum since): contact, and
        // fresh as of 1,000 only.
        c.touch_at(6_000, 55, Some(1_000));
        assert_eq!(c.fresh_at(6_000, 55), Some(5_000));
        // One that echoes nothing counts as contact only.
        c.touch_at(7_000, 60, None);
        assert_eq!(c.fresh_at(7_000, 60), Some(6_000));
        assert_eq!(since(7_000, c.last.load(Ordering::Relaxed)), Some(0));
        // Readings of another process (before a restart) do not count.
        let stranger = PeerClock {
            id: c.clock_id.wrapping_add(1),
            ms: 7_000,
        };
        c.touch(60, Some(stranger));
        assert!(c.fresh_at(7_000, 60) >= Some(6_000));
    }

    #[test]
    fn a_lagging_follower_catches_up_contact_by_contact() {
        let c = LeaderContact::default();
        for (t, commit) in [(100, 10), (200, 20), (300, 30)] {
            c.touch_at(t, commit, Some(t));
        }
        assert_eq!(
            c.fresh_at(400, 25),
            Some(200),
            "fresh as of the contact with 20"
        );
        assert_eq!(c.fresh_at(400, 30), Some(100));
    }

    #[test]
    fn pending_contacts_are_bounded() {
        let c = LeaderContact::default();
        for i in 1..=(PENDING_CONTACTS as u64 * 2) {
            c.touch_at(i, i, Some(i));
        }
        assert_eq!(c.pending.lock().len(), PENDING_CONTACTS);
        // The oldest were dropped: applied up to them proves nothing.
        assert_eq!(c.fresh_at(1_000, 10), None);
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
        e.arrived_at(2, reading(120), at(30));
        // A quorum round sent at 20, between the two: only the first counts.
        assert_eq!(e.echo(2, at(20)), Some(reading(100)));
        assert_eq!(e.echo(2, at(30)), Some(reading(120)));
        assert_eq!(e.echo(3, at(30)), None, "another follower");
        assert_eq!(e.echo(2, at(5)), None, "a round before any reading");
    }
}
