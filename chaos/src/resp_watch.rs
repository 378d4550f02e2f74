//! Watchers on the RESP port: `WATCH.PREFIX k` on a node, recording every
//! change message, reconnecting and resuming through every fault.
//!
//! A watcher resumes from the last revision it saw (`WATCH.PREFIX k
//! <revision>`), dropping the replayed events of that revision it already
//! has (by key and version): a revision can hold several events, and a
//! connection cut part-way through one would otherwise lose the rest.
//! Nothing else is dropped, so disorder and duplicates reach the check. Where the node no longer holds that revision
//! (it restarted, its window moved on), the watcher starts a new segment
//! from the next change; within a segment nothing may be missing.
//!
//! What `check` fails a run for:
//! - an event out of revision order, or seen twice, within a segment;
//! - an insert or update event whose value no client wrote to that key
//!   with a write that was not refused (values are unique per write, so a
//!   phantom or misrouted event shows);
//! - an acknowledged gRPC write whose revision lies inside a segment that
//!   did not deliver it (a gap).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use testkit::resp::{RespConn, Value};
use tokio::sync::mpsc;

use crate::history::{Call, Operation, Outcome};
use crate::resp::Ports;
use crate::staleness::Ack;

/// The prefix watched: every key of the workload (`k0` ... `k7`).
const PREFIX: &str = "k";

/// One change message a watcher received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub watcher: u32,
    /// Reconnections that could not resume start a new segment.
    pub segment: u32,
    pub revision: u64,
    pub key: String,
    pub version: u64,
    pub kind: String,
    pub value: Option<String>,
}

/// What the watchers recorded.
#[derive(Clone, Debug, Default)]
pub struct Watched {
    pub events: Vec<Seen>,
    /// Reconnections that resumed where the watcher stopped.
    pub resumed: u64,
    /// Reconnections that had to start a new segment.
    pub restarted: u64,
}

/// Runs one watcher on node `home` until `stop`.
pub async fn run(
    watcher: u32,
    ports: Ports,
    home: u64,
    out: Arc<Mutex<Watched>>,
    stop: Arc<AtomicBool>,
) {
    let Some(addr) = ports.addrs.get(&home).cloned() else {
        return;
    };
    let mut segment = 0u32;
    // The last revision this segment saw, and the (key, version) of its
    // events at that revision.
    let mut last: Option<(u64, HashSet<(String, u64)>)> = None;
    while !stop.load(Ordering::Relaxed) {
        let conn = tokio::time::timeout(
            Duration::from_secs(1),
            RespConn::connect(&addr, ports.tls.clone()),
        )
        .await;
        let Ok(Ok(mut conn)) = conn else {
            // Down, or cut off: try again shortly.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let from = last.as_ref().map_or(0, |(r, _)| *r).to_string();
        let confirmed = async {
            conn.send(&[&[b"WATCH.PREFIX", PREFIX.as_bytes(), from.as_bytes()]])
                .await?;
            conn.read().await
        };
        match tokio::time::timeout(Duration::from_secs(1), confirmed).await {
            Ok(Ok(Value::Array(Some(v)))) if v.first() == Some(&bulk("subscribe")) => {
                if last.is_some() {
                    out.lock().resumed += 1;
                }
            }
            Ok(Ok(Value::Error(_))) if last.is_some() => {
                // The node no longer holds that revision: a new segment.
                segment += 1;
                last = None;
                out.lock().restarted += 1;
                continue;
            }
            _ => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        // Reads in a task of their own, so that none is cut off part-way
        // (a cancelled read would leave the connection mid-reply).
        let (tx, mut rx) = mpsc::channel(1_024);
        let reader = tokio::spawn(async move {
            while let Ok(v) = conn.read().await {
                if tx.send(v).await.is_err() {
                    break;
                }
            }
        });
        // After a resume, the replay of the revision resumed from: the
        // events of it this segment has are dropped, until a later one.
        let mut replaying = last.is_some();
        loop {
            let m = tokio::select! {
                m = rx.recv() => m,
                _ = stopped(&stop) => break,
            };
            // The watch ended (an error), or the connection broke.
            let Some(Value::Array(Some(m))) = m else {
                break;
            };
            let Some(e) = parse(&m) else { break };
            if replaying {
                match &last {
                    Some((r, seen))
                        if e.revision == *r && seen.contains(&(e.key.clone(), e.version)) =>
                    {
                        continue
                    }
                    Some((r, _)) if e.revision > *r => replaying = false,
                    _ => {}
                }
            }
            match &mut last {
                Some((r, seen)) if *r == e.revision => {
                    seen.insert((e.key.clone(), e.version));
                }
                _ => last = Some((e.revision, HashSet::from([(e.key.clone(), e.version)]))),
            }
            out.lock().events.push(Seen {
                watcher,
                segment,
                ..e
            });
        }
        reader.abort();
    }
}

/// Returns once `stop` is set.
async fn stopped(stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn bulk(s: &str) -> Value {
    Value::Bulk(Some(s.as_bytes().to_vec()))
}

/// A `[message, prefix, payload]` push as an event (watcher and segment
/// left for the caller).
fn parse(m: &[Value]) -> Option<Seen> {
    let [kind, _, Value::Bulk(Some(payload))] = m else {
        return None;
    };
    if *kind != bulk("message") {
        return None;
    }
    let j: serde_json::Value = serde_json::from_slice(payload).ok()?;
    Some(Seen {
        watcher: 0,
        segment: 0,
        revision: j["revision"].as_u64()?,
        key: j["key"].as_str()?.to_string(),
        version: j["version"].as_u64()?,
        kind: j["type"].as_str()?.to_string(),
        value: j["value"].as_str().map(str::to_string),
    })
}

/// The violations in what the watchers saw, given the history and the
/// acknowledged gRPC writes (empty: none).
pub fn check(w: &Watched, ops: &[Operation], acks: &[Ack]) -> Vec<String> {
    let mut bad = Vec::new();
    // Values written to each key by a write that was not refused.
    let mut written: HashMap<&str, HashSet<&str>> = HashMap::new();
    for op in ops {
        let value = match &op.call {
            Call::Insert { value } | Call::Update { value, .. } => value.as_str(),
            Call::Complete { value: Some(v) } => v.as_str(),
            _ => continue,
        };
        if !matches!(op.outcome, Outcome::Refused { .. }) {
            written.entry(&op.key).or_default().insert(value);
        }
    }
    let mut segments: BTreeMap<(u32, u32), Vec<&Seen>> = BTreeMap::new();
    for e in &w.events {
        segments.entry((e.watcher, e.segment)).or_default().push(e);
        if matches!(e.kind.as_str(), "inserted" | "updated") {
            let known = e
                .value
                .as_deref()
                .is_some_and(|v| written.get(e.key.as_str()).is_some_and(|s| s.contains(v)));
            if !known {
                bad.push(format!(
                    "watcher {} saw {} of {} at revision {} with value {:?}, which no write sent",
                    e.watcher, e.kind, e.key, e.revision, e.value
                ));
            }
        }
    }
    let ack_revisions: BTreeSet<u64> = acks.iter().map(|a| a.revision).collect();
    for ((watcher, segment), events) in &segments {
        let mut seen = HashSet::new();
        for pair in events.windows(2) {
            if pair[1].revision < pair[0].revision {
                bad.push(format!(
                    "watcher {watcher} segment {segment}: revision {} after {}",
                    pair[1].revision, pair[0].revision
                ));
            }
        }
        for e in events {
            if !seen.insert((e.revision, e.key.as_str(), e.version)) {
                bad.push(format!(
                    "watcher {watcher} segment {segment}: {} at revision {} twice",
                    e.key, e.revision
                ));
            }
        }
        let revisions: HashSet<u64> = events.iter().map(|e| e.revision).collect();
        let (lo, hi) = (events[0].revision, events[events.len() - 1].revision);
        let missing: Vec<u64> = ack_revisions
            .range(lo..=hi)
            .filter(|r| !revisions.contains(r))
            .copied()
            .collect();
        if !missing.is_empty() {
            bad.push(format!(
                "watcher {watcher} segment {segment} ({lo}..={hi}) missed {} acknowledged writes, \
                 e.g. revisions {:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            ));
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Refusal;

    fn seen(segment: u32, revision: u64, value: &str) -> Seen {
        Seen {
            watcher: 1,
            segment,
            revision,
            key: "k1".into(),
            version: revision,
            kind: "updated".into(),
            value: Some(value.into()),
        }
    }

    fn write(value: &str, outcome: Outcome) -> Operation {
        Operation {
            client: 0,
            key: "k1".into(),
            call: Call::Update {
                value: value.into(),
                if_version: None,
            },
            outcome,
            called_at: 0,
            returned_at: None,
        }
    }

    fn ack(revision: u64) -> Ack {
        Ack {
            returned_at: 0,
            revision,
        }
    }

    #[test]
    fn a_complete_watch_passes() {
        let w = Watched {
            events: vec![seen(0, 5, "a"), seen(0, 7, "b"), seen(1, 20, "c")],
            ..Default::default()
        };
        let ops = [
            write("a", Outcome::Written { version: 2 }),
            write("b", Outcome::Unknown),
            write("c", Outcome::Written { version: 4 }),
        ];
        // 12 fell between segments: not required.
        assert!(check(&w, &ops, &[ack(5), ack(12), ack(20)]).is_empty());
    }

    #[test]
    fn gaps_phantoms_disorder_and_duplicates_fail() {
        let ops = [
            write("a", Outcome::Written { version: 2 }),
            write(
                "x",
                Outcome::Refused {
                    refusal: Refusal::VersionMismatch,
                },
            ),
        ];
        let gap = Watched {
            events: vec![seen(0, 5, "a"), seen(0, 9, "a")],
            ..Default::default()
        };
        assert_eq!(check(&gap, &ops, &[ack(5), ack(7), ack(9)]).len(), 1);
        let phantom = Watched {
            events: vec![seen(0, 5, "x")],
            ..Default::default()
        };
        assert_eq!(check(&phantom, &ops, &[]).len(), 1);
        let disorder = Watched {
            events: vec![seen(0, 9, "a"), seen(0, 5, "a")],
            ..Default::default()
        };
        assert_eq!(check(&disorder, &ops, &[]).len(), 1);
        let twice = Watched {
            events: vec![seen(0, 5, "a"), seen(0, 5, "a")],
            ..Default::default()
        };
        assert_eq!(check(&twice, &ops, &[]).len(), 1);
    }
}
