//! Recording clients that speak the Redis protocol (the RESP port), beside
//! the gRPC ones and on the same keys, so that their operations are checked
//! for linearizability in the same per-key histories.
//!
//! Each reads with `RECORD` (LINEARIZABLE, the connection's default) from
//! its home node, which a follower serves through the leader's read index,
//! and writes there too: `SET NX` (insert), `MULTI` + `IF.SET` + `EXEC` (a
//! conditional update through the atomic batch, whose error names why it
//! was refused) and `COMPLETE`. A follower forwards them to the leader
//! (`api::forward`), so a fault that cuts the follower from the leader, or
//! kills the leader, strikes between the two. A write answered `READONLY`
//! (no leader to forward to) names the leader if one is known; the client
//! sends it there, which is safe because `READONLY` means nothing was
//! proposed.
//! Every reply the model cannot tell apart from "may have applied" (a
//! timeout, a broken connection, `TRYAGAIN`, `UNKNOWN`) is recorded as
//! unknown, as the gRPC clients record theirs.
//!
//! Completes through RESP are not in the hand-off completeness check: the
//! hand-off id names the revision, which `COMPLETE` does not return.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::SeedableRng;
use testkit::resp::{RespConn, Value};

use crate::history::{Call, Operation, Outcome, Refusal};
use crate::workload::{next_op, Recorded, KEYS};

/// How long one operation may take, attempts on another node included.
const DEADLINE: Duration = Duration::from_millis(1_000);

/// Where the RESP ports are, and how to reach them.
#[derive(Clone)]
pub struct Ports {
    /// Node id → RESP HOST:PORT.
    pub addrs: BTreeMap<u64, String>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// What the RESP clients did, for the run's report.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    pub written: u64,
    pub reads_found: u64,
    pub refused: u64,
    pub unknown: u64,
    /// Writes that followed a `READONLY` to the leader it named.
    pub redirected: u64,
}

struct Client {
    ports: Ports,
    home: u64,
    leader: u64,
    conns: BTreeMap<u64, RespConn>,
}

enum Reply {
    Value(Value),
    /// No connection: nothing was sent, so nothing can have applied.
    NotSent,
    /// No answer, or the connection broke after sending: the outcome is
    /// unknown.
    Lost,
}

impl Client {
    async fn call(&mut self, node: u64, commands: &[&[&[u8]]], deadline: Instant) -> Reply {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(addr) = self.ports.addrs.get(&node).cloned() else {
            return Reply::NotSent;
        };
        let tls = self.ports.tls.clone();
        let mut conn = match self.conns.remove(&node) {
            Some(c) => c,
            None => match tokio::time::timeout(left, RespConn::connect(&addr, tls)).await {
                Ok(Ok(c)) => c,
                _ => return Reply::NotSent,
            },
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let exchange = async {
            conn.send(commands).await?;
            let mut last = None;
            for _ in commands {
                last = Some(conn.read().await?);
            }
            Ok::<_, std::io::Error>(last)
        };
        match tokio::time::timeout(left, exchange).await {
            // Only the connections that answered in full are kept: one cut
            // mid-reply would answer the next command with this one's rest.
            Ok(Ok(Some(v))) => {
                self.conns.insert(node, conn);
                Reply::Value(v)
            }
            _ => Reply::Lost,
        }
    }

    /// The next node to try as leader, after `node`.
    fn next_node(&self, node: u64) -> u64 {
        let ids: Vec<u64> = self.ports.addrs.keys().copied().collect();
        let i = ids.iter().position(|&id| id == node).unwrap_or(0);
        ids[(i + 1) % ids.len()]
    }

    /// A write on the home node, following `READONLY` to the leader it
    /// names, and past a node it cannot connect to, until the deadline.
    /// `None`: nothing was proposed (no leader to send it to), so there is
    /// nothing to record.
    async fn write(&mut self, commands: &[&[&[u8]]], counts: &mut Counts) -> Option<Reply> {
        let deadline = Instant::now() + DEADLINE;
        self.leader = self.home;
        loop {
            let node = self.leader;
            let reply = self.call(node, commands, deadline).await;
            let e = match &reply {
                Reply::NotSent => {
                    // Down, or cut off from us: try the next node.
                    self.leader = self.next_node(node);
                    if Instant::now() >= deadline {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Reply::Lost => {
                    // It may have applied; the next write starts elsewhere.
                    self.leader = self.next_node(node);
                    return Some(reply);
                }
                Reply::Value(Value::Error(e)) => e,
                Reply::Value(_) => return Some(reply),
            };
            if !e.starts_with("READONLY") {
                return Some(reply);
            }
            // "... the leader is node N at ADDR ..."
            let named = e
                .split("the leader is node ")
                .nth(1)
                .and_then(|t| t.split(' ').next())
                .and_then(|n| n.parse::<u64>().ok());
            match named {
                Some(n) if n != node => {
                    self.leader = n;
                    counts.redirected += 1;
                }
                // No leader known yet: try the next node after a pause.
                _ => {
                    self.leader = self.next_node(node);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
        }
    }
}

/// Runs one RESP recording client until `stop`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client_id: u32,
    ports: Ports,
    home: u64,
    seed: u64,
    epoch: Instant,
    recorded: Arc<Mutex<Recorded>>,
    counts: Arc<Mutex<Counts>>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ (u64::from(client_id) << 32) ^ 0x5245_5350);
    let mut c = Client {
        ports,
        home,
        leader: home,
        conns: BTreeMap::new(),
    };
    let mut seen = [None::<u64>; KEYS as usize];
    let mut seq = 0u64;
    let ns = |epoch: Instant| epoch.elapsed().as_nanos() as u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let (k, key, value, roll) = next_op(&mut rng, "r", client_id, seq);
        let called_at = ns(epoch);
        let mut n = Counts::default();
        let (call, outcome) = match roll {
            0..=39 => {
                let deadline = Instant::now() + DEADLINE;
                let reply = c
                    .call(c.home, &[&[b"RECORD", key.as_bytes()]], deadline)
                    .await;
                match read_outcome(reply) {
                    Some(o) => (Call::GET, o),
                    // A read that failed changed nothing: not recorded. A
                    // pause, so that a home node that is down is not
                    // hammered with connection attempts.
                    None => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
            }
            40..=59 => {
                let cmd: &[&[u8]] = &[b"SET", key.as_bytes(), value.as_bytes(), b"NX"];
                let Some(reply) = c.write(&[cmd], &mut n).await else {
                    continue; // not sent: `write` paused already
                };
                let outcome = match reply {
                    Reply::Value(Value::Simple(s)) if s == "OK" => Outcome::Written { version: 1 },
                    Reply::Value(Value::Bulk(None)) => refused(Refusal::AlreadyExists),
                    _ => Outcome::Unknown,
                };
                (
                    Call::Insert {
                        value: value.clone(),
                    },
                    outcome,
                )
            }
            60..=84 => {
                let at = seen[k as usize].unwrap_or(1);
                let at_s = at.to_string();
                let update: &[&[u8]] =
                    &[b"IF.SET", key.as_bytes(), at_s.as_bytes(), value.as_bytes()];
                let Some(reply) = c.write(&[&[b"MULTI"], update, &[b"EXEC"]], &mut n).await else {
                    continue; // not sent: `write` paused already
                };
                let outcome = match reply {
                    Reply::Value(Value::Array(Some(v))) => match v.as_slice() {
                        [Value::Int(version)] => Outcome::Written {
                            version: *version as u64,
                        },
                        _ => Outcome::Unknown,
                    },
                    Reply::Value(Value::Error(e)) if e.starts_with("EXECFAILED") => {
                        batch_refusal(&e)
                    }
                    _ => Outcome::Unknown,
                };
                (
                    Call::Update {
                        value: value.clone(),
                        if_version: Some(at),
                    },
                    outcome,
                )
            }
            _ => {
                let cmd: &[&[u8]] = &[b"COMPLETE", key.as_bytes(), value.as_bytes()];
                let Some(reply) = c.write(&[cmd], &mut n).await else {
                    continue; // not sent: `write` paused already
                };
                let outcome = match reply {
                    Reply::Value(Value::Int(version)) => Outcome::Written {
                        version: version as u64,
                    },
                    Reply::Value(Value::Bulk(None)) => refused(Refusal::NotFound),
                    Reply::Value(Value::Error(e)) if e.starts_with("IMMUTABLE") => {
                        refused(Refusal::NotLive)
                    }
                    _ => Outcome::Unknown,
                };
                (
                    Call::Complete {
                        value: Some(value.clone()),
                    },
                    outcome,
                )
            }
        };
        match &outcome {
            Outcome::Read { version, .. } | Outcome::Written { version } => {
                seen[k as usize] = Some(*version);
                if matches!(outcome, Outcome::Read { .. }) {
                    n.reads_found += 1;
                } else {
                    n.written += 1;
                }
            }
            Outcome::Refused { .. } => n.refused += 1,
            Outcome::Unknown => n.unknown += 1,
        }
        let returned_at = (outcome != Outcome::Unknown).then(|| ns(epoch));
        {
            let mut t = counts.lock();
            t.written += n.written;
            t.reads_found += n.reads_found;
            t.refused += n.refused;
            t.unknown += n.unknown;
            t.redirected += n.redirected;
        }
        recorded.lock().ops.push(Operation {
            client: client_id,
            key,
            call,
            outcome,
            called_at,
            returned_at,
        });
    }
}

fn refused(refusal: Refusal) -> Outcome {
    Outcome::Refused { refusal }
}

/// A `RECORD` reply: the record, or NotFound; `None` for a read that failed
/// or was not sent.
fn read_outcome(reply: Reply) -> Option<Outcome> {
    let Reply::Value(v) = reply else {
        return None;
    };
    match v {
        Value::Bulk(None) => Some(refused(Refusal::NotFound)),
        Value::Array(Some(fields)) => {
            let mut map = BTreeMap::new();
            for pair in fields.chunks(2) {
                if let [Value::Bulk(Some(k)), v] = pair {
                    map.insert(String::from_utf8_lossy(k).into_owned(), v.clone());
                }
            }
            let text = |name: &str| match map.get(name) {
                Some(Value::Bulk(Some(b))) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            };
            let version = match map.get("version") {
                Some(Value::Int(v)) => *v as u64,
                _ => return None,
            };
            let state = text("state")?;
            // As the gRPC clients read it: anything but LIVE is immutable.
            Some(Outcome::Read {
                value: text("value")?,
                version,
                completed: state != "live",
            })
        }
        _ => None,
    }
}

/// Why an `EXEC` of one `IF.SET` was refused, from its error text.
fn batch_refusal(e: &str) -> Outcome {
    if e.contains("expected version") {
        refused(Refusal::VersionMismatch)
    } else if e.contains("not found") {
        refused(Refusal::NotFound)
    } else if e.contains("immutable") {
        refused(Refusal::NotLive)
    } else {
        Outcome::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::Bulk(Some(s.as_bytes().to_vec()))
    }

    #[test]
    fn record_replies_become_reads() {
        let r = Value::Array(Some(vec![
            bulk("value"),
            bulk("c1-5"),
            bulk("version"),
            Value::Int(3),
            bulk("state"),
            bulk("completed"),
        ]));
        assert_eq!(
            read_outcome(Reply::Value(r)),
            Some(Outcome::Read {
                value: "c1-5".into(),
                version: 3,
                completed: true
            })
        );
        assert_eq!(
            read_outcome(Reply::Value(Value::Bulk(None))),
            Some(refused(Refusal::NotFound))
        );
        assert_eq!(read_outcome(Reply::Lost), None);
        assert_eq!(
            read_outcome(Reply::Value(Value::Error("TRYAGAIN".into()))),
            None
        );
    }

    #[test]
    fn batch_errors_name_the_refusal() {
        assert_eq!(
            batch_refusal("EXECFAILED ops[0]: if_version: expected version 2 but record \"k1\" is at version 3; nothing of the MULTI block was applied"),
            refused(Refusal::VersionMismatch)
        );
        assert_eq!(
            batch_refusal(
                "EXECFAILED ops[0]: key \"k1\" not found; nothing of the MULTI block was applied"
            ),
            refused(Refusal::NotFound)
        );
        assert_eq!(
            batch_refusal("EXECFAILED ops[0]: record \"k1\" is completed and immutable; it leaves memory once handed off"),
            refused(Refusal::NotLive)
        );
        assert_eq!(batch_refusal("EXECFAILED something else"), Outcome::Unknown);
    }
}
