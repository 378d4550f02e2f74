//! The nemesis: faults drawn from a seed, applied for a while, then healed.
//! Every fault is logged with its start and end time.

use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::cluster::Cluster;
use testkit::net::Firewall;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// kill -9 one random node, restart it when the fault ends.
    KillOne,
    /// kill -9 the leader.
    KillLeader,
    /// kill -9 two nodes (a minority of five).
    KillMinority,
    /// SIGSTOP one node, SIGCONT when the fault ends.
    Pause,
    /// Cut the leader (and the clients on its side) off from everyone else.
    IsolateLeader,
    /// Two nodes on one side, three on the other.
    MajorityMinority,
    /// Two sides that cannot talk, and one node that sees both.
    Bridge,
    /// The leader's outgoing packets to the others are dropped; it still hears them.
    OneWay,
    /// Remove a follower from the membership, then add a fresh node with a new id.
    Membership,
    /// Restart every node in turn (SIGTERM), waiting for a leader in between.
    RollingRestart,
    /// Restart one node (the leader, made leader again, or a follower) with
    /// its clock running fast (1.25× to 2×); restart it normally at the end.
    ClockFast,
    /// The same with the clock running slow (0.5× to 0.8×).
    ClockSlow,
    /// The same with the wall clock jumped 2 to 10 minutes ahead.
    ClockJump,
}

pub const ALL: [FaultKind; 13] = [
    FaultKind::KillOne,
    FaultKind::KillLeader,
    FaultKind::KillMinority,
    FaultKind::Pause,
    FaultKind::IsolateLeader,
    FaultKind::MajorityMinority,
    FaultKind::Bridge,
    FaultKind::OneWay,
    FaultKind::Membership,
    FaultKind::RollingRestart,
    FaultKind::ClockFast,
    FaultKind::ClockSlow,
    FaultKind::ClockJump,
];

/// A node that ran with a faked clock, and when (ms since the run's epoch:
/// from its start under the fake clock to its restart with the real one).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ClockFault {
    pub node: u64,
    /// Clock seconds per real second.
    pub rate: f64,
    /// How far its wall clock was ahead, seconds.
    pub ahead_s: u64,
    /// Whether it led during the fault (made leader by a transfer).
    pub led: bool,
    pub from_ms: u64,
    pub to_ms: u64,
}

/// The faults of a run: every kind once, in an order drawn from the seed,
/// then `extra` more drawn at random.
pub fn schedule(seed: u64, extra: usize) -> Vec<FaultKind> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut s = ALL.to_vec();
    s.shuffle(&mut rng);
    for _ in 0..extra {
        s.push(ALL[rng.random_range(0..ALL.len())]);
    }
    s
}

#[derive(Clone, Debug, Serialize)]
pub struct FaultRecord {
    pub kind: FaultKind,
    pub detail: String,
    /// For the kinds that strike a random node or split at random: whether
    /// the leader was struck (killed, paused, or on the minority side), so
    /// that availability is reported apart for faults that need an
    /// election and faults that do not. `None` for the kinds that always
    /// (or never) strike the leader.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_hit: Option<bool>,
    pub started_ms: u64,
    pub healed_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock: Option<ClockFault>,
}

/// Applies one fault for `hold`, then heals it. Returns what was done.
pub async fn inject(
    kind: FaultKind,
    c: &mut Cluster,
    fw: &Firewall,
    rng: &mut StdRng,
    hold: Duration,
    client_home: &[(String, u64)],
    epoch: Instant,
) -> anyhow::Result<FaultRecord> {
    let started_ms = epoch.elapsed().as_millis() as u64;
    let members = c.members();
    let leader = c.try_wait_leader(Duration::from_secs(20)).await;
    let pick = |rng: &mut StdRng, from: &[u64]| from[rng.random_range(0..from.len())];
    // Addresses on one side of a partition: its nodes and the clients homed on them.
    let side = |ids: &[u64]| -> Vec<String> {
        let mut v: Vec<String> = ids.iter().map(|id| c.ip(*id)).collect();
        v.extend(
            client_home
                .iter()
                .filter(|(_, home)| ids.contains(home))
                .map(|(ip, _)| ip.clone()),
        );
        v
    };
    let detail;
    let mut leader_hit = None;
    let mut clock = None;
    match kind {
        FaultKind::KillOne | FaultKind::KillLeader | FaultKind::KillMinority => {
            let mut victims = match kind {
                FaultKind::KillOne => vec![pick(rng, &members)],
                FaultKind::KillLeader => vec![leader.unwrap_or_else(|| pick(rng, &members))],
                _ => {
                    let mut m = members.clone();
                    m.shuffle(rng);
                    m.truncate(2);
                    m
                }
            };
            victims.sort();
            if kind != FaultKind::KillLeader {
                leader_hit = leader.map(|l| victims.contains(&l));
            }
            detail = format!("killed {victims:?}");
            for v in &victims {
                c.kill(*v);
            }
            tokio::time::sleep(hold).await;
            for v in &victims {
                c.spawn(*v)?;
            }
        }
        FaultKind::Pause => {
            let v = pick(rng, &members);
            leader_hit = leader.map(|l| l == v);
            detail = format!("paused {v}");
            c.pause(v);
            tokio::time::sleep(hold).await;
            c.resume(v);
        }
        FaultKind::IsolateLeader | FaultKind::MajorityMinority | FaultKind::Bridge => {
            let mut m = members.clone();
            m.shuffle(rng);
            let (a, b, bridge): (Vec<u64>, Vec<u64>, Option<u64>) = match kind {
                FaultKind::IsolateLeader => {
                    let l = leader.unwrap_or(m[0]);
                    (
                        vec![l],
                        m.iter().copied().filter(|x| *x != l).collect(),
                        None,
                    )
                }
                FaultKind::MajorityMinority => (m[..2].to_vec(), m[2..].to_vec(), None),
                _ => {
                    let half = (m.len() - 1) / 2;
                    (
                        m[..half].to_vec(),
                        m[half..m.len() - 1].to_vec(),
                        m.last().copied(),
                    )
                }
            };
            if kind == FaultKind::MajorityMinority {
                leader_hit = leader.map(|l| a.contains(&l));
            }
            detail = format!("sides {a:?} | {b:?}, bridge {bridge:?}");
            fw.cut(&side(&a), &side(&b))?;
            tokio::time::sleep(hold).await;
            fw.heal()?;
        }
        FaultKind::OneWay => {
            let l = leader.unwrap_or_else(|| pick(rng, &members));
            let others: Vec<u64> = members.iter().copied().filter(|x| *x != l).collect();
            detail = format!("drop {l} -> {others:?}");
            fw.cut_one_way(&[c.ip(l)], &side(&others))?;
            tokio::time::sleep(hold).await;
            fw.heal()?;
        }
        FaultKind::Membership => {
            let followers: Vec<u64> = members
                .iter()
                .copied()
                .filter(|x| Some(*x) != leader)
                .collect();
            let gone = pick(rng, &followers);
            let fresh = c.nodes.keys().max().copied().unwrap_or(0) + 1;
            let admin = c.admin();
            admin
                .remove_member(gone, false)
                .await
                .map_err(|e| anyhow::anyhow!("remove node {gone}: {}", e.message()))?;
            c.terminate(gone, Duration::from_secs(10));
            c.removed.push(gone);
            c.join_new(fresh)?;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let learner = admin
                    .member_list()
                    .await
                    .ok()
                    .is_some_and(|l| l.members.iter().any(|m| m.id == fresh));
                if learner && admin.promote(fresh).await.is_ok() {
                    break;
                }
                if Instant::now() > deadline {
                    anyhow::bail!("node {fresh} did not join and get promoted within 30 s");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            detail = format!("removed {gone}, added and promoted {fresh}");
            tokio::time::sleep(hold).await;
        }
        FaultKind::ClockFast | FaultKind::ClockSlow | FaultKind::ClockJump => {
            let (rate, ahead_s) = match kind {
                FaultKind::ClockFast => (rng.random_range(125..=200u32) as f64 / 100.0, 0),
                FaultKind::ClockSlow => (rng.random_range(50..=80u32) as f64 / 100.0, 0),
                _ => (1.0, rng.random_range(120..=600u64)),
            };
            let on_leader = rng.random_bool(0.5);
            let followers: Vec<u64> = members
                .iter()
                .copied()
                .filter(|x| Some(*x) != leader)
                .collect();
            let v = match leader {
                Some(l) if on_leader => l,
                _ => pick(rng, &followers),
            };
            let spec = if ahead_s > 0 {
                format!("+{ahead_s}")
            } else {
                format!("+0 x{rate}")
            };
            c.terminate(v, Duration::from_secs(10));
            c.set_fake_clock(v, Some(&spec));
            c.spawn(v)?;
            let from_ms = epoch.elapsed().as_millis() as u64;
            // The leader is struck by making the faked node lead.
            let led = on_leader && make_leader(c, v).await;
            leader_hit = Some(led);
            detail = format!(
                "node {v} restarted with FAKETIME=\"{spec}\"{}",
                if led { ", made leader" } else { "" }
            );
            tokio::time::sleep(hold).await;
            c.terminate(v, Duration::from_secs(10));
            c.set_fake_clock(v, None);
            c.spawn(v)?;
            clock = Some(ClockFault {
                node: v,
                rate,
                ahead_s,
                led,
                from_ms,
                to_ms: epoch.elapsed().as_millis() as u64,
            });
        }
        FaultKind::RollingRestart => {
            detail = format!("restarted {members:?} one by one");
            for id in &members {
                c.terminate(*id, Duration::from_secs(10));
                c.spawn(*id)?;
                c.try_wait_leader(Duration::from_secs(20))
                    .await
                    .context("no agreed leader within 20 s of a restart")?;
            }
        }
    }
    Ok(FaultRecord {
        kind,
        detail,
        leader_hit,
        started_ms,
        healed_ms: epoch.elapsed().as_millis() as u64,
        clock,
    })
}

/// Transfers the leadership to `id` (once it has caught up) and waits until
/// the cluster agrees on it: within 15 s, or false.
async fn make_leader(c: &Cluster, id: u64) -> bool {
    let admin = c.admin();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if c.leader().await == Some(id) {
            return true;
        }
        // Refused while it catches up (or while no leader is known): ask again.
        let _ = admin.transfer_leader(id).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}
