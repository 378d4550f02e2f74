//! TTLs under clock faults: a client inserts records with a TTL, reads them
//! back at random ages, and the check demands that each expired neither
//! early nor late in real time.
//!
//! A TTL runs on the leader's stamps (`raft::clock`), which follow the
//! leader's monotonic clock and pull toward its wall clock by at most 10%.
//! A leader whose clock runs at rate r makes the cluster's time run at r
//! while it leads, and the clock faults keep r within [`MIN_RATE`] and
//! [`MAX_RATE`]; a wall clock jumped by minutes must not move the stamps
//! by more than the slew. So, in real time:
//!
//! - **early**: a record found EXPIRED or gone before `TTL / MAX_RATE`
//!   after its insert was called is a violation (a jump that leaked into
//!   the stamps expires every TTL at once, long before that);
//! - **late**: a record still LIVE when a read begins more than
//!   `TTL / MIN_RATE + LATE_SLACK` after its insert returned is a
//!   violation (expiry stalled).
//!
//! The TTL records are kept apart from the linearizability keys: the record
//! model there has no TTL.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inflight::client::{Client, Consistency};
use inflight::pb;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// Every TTL record's TTL.
pub const TTL: Duration = Duration::from_secs(12);
/// The fastest and slowest clock rates the clock faults set.
pub const MAX_RATE: f64 = 2.0;
pub const MIN_RATE: f64 = 0.5;
/// What a late expiry may take beyond the slowest clock: the expiry duty's
/// period, a fault that leaves no leader for seconds, the client's retries.
pub const LATE_SLACK: Duration = Duration::from_secs(10);
/// Records are read back up to this age.
const READ_UNTIL: Duration = Duration::from_secs(40);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Seen {
    Live,
    /// EXPIRED, or gone from memory (expired and handed off).
    Expired,
}

/// One TTL record: when its insert was called and answered (ns since the
/// run's epoch), and every read of it that got an answer.
#[derive(Clone, Debug, Serialize)]
pub struct Probe {
    pub key: String,
    pub inserted_called: u64,
    pub inserted_returned: u64,
    pub reads: Vec<(u64, u64, Seen)>,
}

/// Inserts a TTL record and reads one back about every `pace`, until
/// `stop`; the records whose insert was acknowledged go into `out`.
pub async fn run(
    client: Client,
    seed: u64,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Vec<Probe>>>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x7171);
    let ns = || epoch.elapsed().as_nanos() as u64;
    let mut n = 0u64;
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        n += 1;
        let key = format!("ttl/{n}");
        let called = ns();
        let inserted = client
            .send_insert(pb::InsertRequest {
                key: key.clone(),
                value: b"ringing".to_vec(),
                ttl_ms: Some(TTL.as_millis() as u64),
                ..Default::default()
            })
            .await;
        if inserted.is_ok() {
            out.lock().push(Probe {
                key,
                inserted_called: called,
                inserted_returned: ns(),
                reads: Vec::new(),
            });
        }
        // Read back one record of any age up to READ_UNTIL.
        let now = ns();
        let pick = {
            let probes = out.lock();
            let young: Vec<usize> = (0..probes.len())
                .filter(|&i| now - probes[i].inserted_returned < READ_UNTIL.as_nanos() as u64)
                .collect();
            (!young.is_empty()).then(|| {
                let i = young[rng.random_range(0..young.len())];
                (i, probes[i].key.clone())
            })
        };
        let Some((i, key)) = pick else { continue };
        let called = ns();
        let seen = match client.get(&key, Consistency::Linearizable).await {
            Ok(g) => match g.record {
                Some(r) if r.state == pb::RecordState::Live as i32 => Some(Seen::Live),
                Some(_) => Some(Seen::Expired),
                None => None,
            },
            Err(e) if e.code() == tonic::Code::NotFound => Some(Seen::Expired),
            Err(_) => None,
        };
        if let Some(seen) = seen {
            out.lock()[i].reads.push((called, ns(), seen));
        }
    }
}

/// How many reads were judged, and the records that expired early or late.
pub fn check(probes: &[Probe]) -> (usize, Vec<String>) {
    let early = (TTL.as_nanos() as f64 / MAX_RATE) as u64;
    let late = (TTL.as_nanos() as f64 / MIN_RATE) as u64 + LATE_SLACK.as_nanos() as u64;
    let ms = |ns: u64| ns / 1_000_000;
    let mut checked = 0;
    let mut violations = Vec::new();
    for p in probes {
        for &(called, returned, seen) in &p.reads {
            checked += 1;
            match seen {
                Seen::Expired if returned < p.inserted_called + early => violations.push(format!(
                    "{} expired {} ms after its insert was called, before TTL / {MAX_RATE} ({} ms)",
                    p.key,
                    ms(returned - p.inserted_called),
                    ms(early)
                )),
                Seen::Live if called > p.inserted_returned + late => violations.push(format!(
                    "{} still LIVE {} ms after its insert returned (TTL {} ms)",
                    p.key,
                    ms(called - p.inserted_returned),
                    TTL.as_millis()
                )),
                _ => {}
            }
        }
    }
    (checked, violations)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn probe(reads: Vec<(u64, u64, Seen)>) -> Probe {
        Probe {
            key: "ttl/1".into(),
            inserted_called: 10 * S,
            inserted_returned: 10 * S + S / 100,
            reads,
        }
    }

    #[test]
    fn early_and_late_expiries_are_violations_and_the_rest_is_not() {
        let ttl = TTL.as_secs();
        let ok = probe(vec![
            (11 * S, 11 * S, Seen::Live),
            ((10 + ttl) * S, (10 + ttl) * S, Seen::Expired),
            ((10 + ttl + 2) * S, (10 + ttl + 2) * S, Seen::Live),
        ]);
        assert_eq!(check(&[ok]), (3, vec![]));
        let early = probe(vec![(11 * S, 12 * S, Seen::Expired)]);
        assert_eq!(check(&[early]).1.len(), 1);
        let late = probe(vec![(
            (10 + 2 * ttl + 11) * S,
            (10 + 2 * ttl + 11) * S,
            Seen::Live,
        )]);
        assert_eq!(check(&[late]).1.len(), 1);
    }
}
