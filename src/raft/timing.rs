//! Every duration that decides how fast the cluster notices a failed leader
//! and how fast clients find the next one, derived from one setting: the
//! election timeout range MIN..MAX (`--election-timeout-ms`). Tuning is one
//! knob; README's "Tuning failover" says what each setting costs.

use std::time::Duration;

/// LEASE reads stay linearizable while any two members' monotonic clocks
/// run at rates within this factor of each other (one at half the speed of
/// another, or twice): see [`Timing::lease_read_age`]. Real clocks drift by
/// parts per million; the bound is there for a clock source that
/// misbehaves. It does not cover a monotonic clock that stops or leaps (a
/// host suspended and resumed): no rate bound does. A paused process is
/// fine (its clock runs on), and so is a restarted one: a node restarted on
/// its log sits out one lease before it joins in (`Node::start`).
pub const LEASE_CLOCK_RATE_BOUND: u64 = 2;

/// The failover timing of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// A follower campaigns after MIN..MAX (drawn at random) without hearing
    /// from a leader, counted from the end of the old leader's lease (MAX).
    pub election_ms: (u64, u64),
    /// The leader's heartbeat interval.
    pub heartbeat_ms: u64,
}

impl Timing {
    /// From `--election-timeout-ms`, and `--heartbeat-ms` if given (default:
    /// a third of MIN, so a follower misses three heartbeats before it even
    /// suspects the leader; at most just below MIN, what openraft demands).
    pub fn new(election_ms: (u64, u64), heartbeat_ms: Option<u64>) -> Result<Timing, String> {
        let (min, max) = election_ms;
        if min == 0 || max < min {
            return Err(format!(
                "--election-timeout-ms: {min}..{max} is not a range of positive milliseconds"
            ));
        }
        let heartbeat_ms = heartbeat_ms.unwrap_or((min / 3).max(1));
        if heartbeat_ms == 0 || heartbeat_ms >= min {
            return Err(format!(
                "--heartbeat-ms {heartbeat_ms}: must be below the election timeout's minimum ({min} ms), or \
                 followers start elections against a live leader"
            ));
        }
        let lease_ms = max / LEASE_CLOCK_RATE_BOUND;
        if heartbeat_ms >= lease_ms {
            return Err(format!(
                "--heartbeat-ms {heartbeat_ms}: must be below half the election timeout's maximum \
                 ({lease_ms} ms, the age of the quorum acknowledgement a LEASE read relies on), or an \
                 idle leader's lease lapses between heartbeats and every LEASE read waits for a quorum round"
            ));
        }
        Ok(Timing {
            election_ms,
            heartbeat_ms,
        })
    }

    /// How long a follower goes without hearing from the leader before it
    /// stops sending clients there (MIN): past that the leader is more
    /// likely gone than slow.
    pub fn leader_suspect_after(&self) -> Duration {
        Duration::from_millis(self.election_ms.0)
    }

    /// The longest an election normally takes once the leader went silent:
    /// the old leader's lease (MAX), the longest random timeout (MAX), and
    /// MIN for the pre-vote and vote rounds and the new leader's first
    /// commit. A follower holds a client's call this long, at most, waiting
    /// for a leader to name (`Node::leader_only`).
    pub fn election_settles_within(&self) -> Duration {
        Duration::from_millis(2 * self.election_ms.1 + self.election_ms.0)
    }

    /// The deadline of a LINEARIZABLE read that brings none of its own (a
    /// frame's op, or a unary call without `grpc-timeout`): a follower asking
    /// the leader for its read index rides out an election this long, then
    /// answers UNAVAILABLE rather than hold the caller or read unconfirmed
    /// local state.
    pub fn read_within(&self) -> Duration {
        self.election_settles_within()
    }

    /// The oldest quorum acknowledgement a LEASE read may rely on: MAX /
    /// [`LEASE_CLOCK_RATE_BOUND`].
    ///
    /// A follower that acknowledged the leader refuses to vote for anyone
    /// else for MAX after it heard from it, on its own clock; the leader
    /// serves LEASE reads for this long after it *sent* what a quorum
    /// acknowledged, on its clock. If clocks may run at rates that differ by
    /// a factor up to the bound, the leader's window, measured in real time,
    /// still ends before any voter's refusal does, so no new leader can
    /// commit a write while the old one still serves LEASE reads.
    pub fn lease_read_age(&self) -> Duration {
        Duration::from_millis(self.election_ms.1 / LEASE_CLOCK_RATE_BOUND)
    }

    /// How long a leadership hand-over (on shutdown, or `member
    /// transfer-leader`) may take: the new leader needs one round trip once
    /// it has caught up, so ten election timeouts cover a lagging follower.
    pub fn handover_within(&self) -> Duration {
        Duration::from_millis(10 * self.election_ms.1)
    }

    /// A member counts as reachable if it acknowledged the leader within
    /// this: a few heartbeats, so that a node that just died is not counted.
    pub fn reachable_within(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms * 4 + 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_defaults_to_a_third_of_the_minimum() {
        let t = Timing::new((150, 300), None).unwrap();
        assert_eq!(t.heartbeat_ms, 50);
        assert_eq!(t.election_settles_within(), Duration::from_millis(750));
        assert_eq!(t.read_within(), Duration::from_millis(750));
        assert_eq!(t.leader_suspect_after(), Duration::from_millis(150));
    }

    #[test]
    fn refuses_settings_that_would_start_elections_against_a_live_leader() {
        let e = Timing::new((150, 300), Some(150)).unwrap_err();
        assert!(e.contains("--heartbeat-ms 150"), "{e}");
        assert!(Timing::new((300, 150), None)
            .unwrap_err()
            .contains("300..150"));
        assert!(Timing::new((0, 10), None).is_err());
        // Below MIN but not below MAX / 2: LEASE reads would lapse when idle.
        let e = Timing::new((200, 300), Some(160)).unwrap_err();
        assert!(
            e.contains("below half the election timeout's maximum (150 ms"),
            "{e}"
        );
        // The default, MIN / 3, is always below MAX / 2.
        assert!(Timing::new((200, 210), None).is_ok());
        assert_eq!(
            Timing::new((150, 300), Some(100)).unwrap().heartbeat_ms,
            100
        );
    }
}
