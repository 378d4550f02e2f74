//! Clients: each sends one operation at a time over a small key set and
//! records it (call time, return time, outcome) in the shared history. Every
//! written value is unique. Retries inside the client reuse the request id,
//! so a retried mutation is applied at most once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inflight::client::{Client, ClientOptions, ClientTls, Consistency, ReadFrom};
use inflight::pb;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::Code;

use crate::history::{Call, Operation, Outcome, ReadLevel, Refusal};
use crate::staleness::{Ack, StaleRead};
use crate::ttl;

pub const KEYS: u64 = 8;
/// Recording clients that share one client address (and one `Client`).
pub const CLIENTS_PER_HOST: usize = 3;

/// A completed record the client was told about: its hand-off id.
#[derive(Clone, Debug)]
pub struct Completion {
    pub handoff_id: String,
    pub acknowledged: bool,
}

#[derive(Default)]
pub struct Recorded {
    pub ops: Vec<Operation>,
    pub completions: Vec<Completion>,
    /// Home-node LINEARIZABLE reads that found their record, by the member
    /// that served them (`GetResponse::served_by`): followers serve these
    /// reads themselves, so more than one member shows up here.
    pub home_reads_by_member: std::collections::BTreeMap<u64, u64>,
    /// STALE gets that found their record, from the home node.
    pub stale_reads: Vec<StaleRead>,
    /// Every acknowledged write's revision and return time.
    pub acks: Vec<Ack>,
    /// The TTL records (`ttl`).
    pub ttl: Vec<ttl::Probe>,
    /// What the RESP clients did (their operations are in `ops`).
    pub resp: crate::resp::Counts,
    /// What the RESP watchers saw (`resp_watch`).
    pub watched: crate::resp_watch::Watched,
}

/// Recording clients that speak the Redis protocol (`crate::resp`).
pub const RESP_CLIENTS: u32 = 2;

/// Watchers on the RESP port (`crate::resp_watch`).
pub const RESP_WATCHERS: u32 = 2;

/// The ids of the LEASE readers (one per client address), apart from the
/// other clients'.
const LEASE_READER_IDS: u32 = 2_000;

/// How often a LEASE reader reads.
const LEASE_READ_EVERY: Duration = Duration::from_millis(10);

/// The bound of the bounded STALE reads.
pub const MAX_STALENESS_MS: u64 = 300;

pub struct Workload {
    pub recorded: Arc<Mutex<Recorded>>,
    ttl: Arc<Mutex<Vec<ttl::Probe>>>,
    resp: Arc<Mutex<crate::resp::Counts>>,
    watched: Arc<Mutex<crate::resp_watch::Watched>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Workload {
    /// Starts `CLIENTS_PER_HOST` recording clients per address in `ips`. The
    /// clients of one address share one `Client` (and one home-node
    /// `Client`), as the callers of one service would: their calls meet in
    /// frames, so the frames that faults cut carry many operations. `tls`:
    /// what the clients present to a TLS cluster.
    pub fn start(
        endpoints: Vec<String>,
        ips: Vec<String>,
        seed: u64,
        epoch: Instant,
        tls: Option<ClientTls>,
        resp: crate::resp::Ports,
    ) -> Workload {
        let recorded = Arc::new(Mutex::new(Recorded::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        let probes = Arc::new(Mutex::new(Vec::new()));
        let resp_counts = Arc::new(Mutex::new(crate::resp::Counts::default()));
        let homes: Vec<u64> = resp.addrs.keys().copied().collect();
        for i in 0..RESP_CLIENTS {
            tasks.push(tokio::spawn(crate::resp::run(
                // Ids apart from the gRPC clients' (0, 1, 2, ...).
                1_000 + i,
                resp.clone(),
                homes[i as usize % homes.len()],
                seed,
                epoch,
                recorded.clone(),
                resp_counts.clone(),
                stop.clone(),
            )));
        }
        let watched = Arc::new(Mutex::new(crate::resp_watch::Watched::default()));
        for i in 0..RESP_WATCHERS {
            tasks.push(tokio::spawn(crate::resp_watch::run(
                i,
                resp.clone(),
                // Other nodes than the RESP clients'.
                homes[(RESP_CLIENTS + i) as usize % homes.len()],
                watched.clone(),
                stop.clone(),
            )));
        }
        for (c, ip) in ips.into_iter().enumerate() {
            // The library's defaults for hedging and endpoint sync (what a
            // service gets without tuning), a shorter per-attempt deadline
            // and retry budget, so that a stuck call is recorded as unknown
            // and the client moves on.
            let opts = ClientOptions {
                request_timeout: Duration::from_millis(1_000),
                retry_for: Duration::from_millis(2_500),
                local_address: ip.parse().ok(),
                follow_leader: true,
                frames: true,
                tls: tls.clone(),
                ..ClientOptions::default()
            };
            let client = Client::with_options(endpoints.clone(), opts.clone()).expect("client");
            if c == 0 {
                tasks.push(tokio::spawn(ttl::run(
                    client.clone(),
                    seed,
                    epoch,
                    stop.clone(),
                    probes.clone(),
                )));
            }
            // Half of the reads go to the client's home node only, as a
            // client reading from its nearest node would: a follower serves
            // a linearizable read after the leader's read index is applied
            // there, and refuses it when it cannot get one; it never answers
            // from unconfirmed local state.
            let home = Client::with_options(
                [endpoints[c % endpoints.len()].clone()],
                ClientOptions {
                    follow_leader: false,
                    linearizable_reads: ReadFrom::Home,
                    retry_for: Duration::ZERO,
                    hedge_after: None,
                    sync_endpoints: None,
                    ..opts
                },
            )
            .expect("client");
            tasks.push(tokio::spawn(lease_reader(
                LEASE_READER_IDS + c as u32,
                client.clone(),
                seed,
                epoch,
                recorded.clone(),
                stop.clone(),
            )));
            for j in 0..CLIENTS_PER_HOST {
                let (recorded, stop) = (recorded.clone(), stop.clone());
                tasks.push(tokio::spawn(run_client(
                    (c * CLIENTS_PER_HOST + j) as u32,
                    client.clone(),
                    home.clone(),
                    seed,
                    epoch,
                    recorded,
                    stop,
                )));
            }
        }
        Workload {
            recorded,
            ttl: probes,
            resp: resp_counts,
            watched,
            stop,
            tasks,
        }
    }

    pub async fn stop(self) -> Recorded {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let mut r = std::mem::take(&mut *self.recorded.lock());
        r.ttl = std::mem::take(&mut *self.ttl.lock());
        r.resp = self.resp.lock().clone();
        r.watched = std::mem::take(&mut *self.watched.lock());
        r
    }
}

fn ns(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

async fn run_client(
    client_id: u32,
    client: Client,
    home: Client,
    seed: u64,
    epoch: Instant,
    recorded: Arc<Mutex<Recorded>>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ (u64::from(client_id) << 32));
    let mut seq = 0u64;
    // The version this client last saw per key, for conditional updates.
    let mut seen = [None::<u64>; KEYS as usize];
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let (k, key, value, roll) = next_op(&mut rng, "c", client_id, seq);
        // Reads: 40% (LINEARIZABLE through the leader or from the home node,
        // LEASE, STALE with and without a bound); writes: 60%.
        let call = match roll {
            0..=19 => Call::GET,
            20..=29 => Call::Get {
                level: ReadLevel::Lease,
            },
            30..=39 => {
                let bound = (roll < 35).then_some(MAX_STALENESS_MS);
                let called_at = ns(epoch);
                if let Some((served_by, revision)) = stale_get(&home, &key, bound).await {
                    recorded.lock().stale_reads.push(StaleRead {
                        client: client_id,
                        key,
                        served_by,
                        max_staleness_ms: bound,
                        called_at,
                        returned_at: ns(epoch),
                        revision,
                    });
                }
                continue;
            }
            40..=51 => Call::Update {
                value: value.clone(),
                if_version: None,
            },
            52..=63 => Call::Update {
                value: value.clone(),
                if_version: seen[k as usize].or(Some(1)),
            },
            64..=77 => Call::Insert {
                value: value.clone(),
            },
            78..=89 => Call::Complete {
                value: Some(value.clone()),
            },
            _ => Call::Delete {
                if_version: if rng.random_bool(0.5) {
                    seen[k as usize]
                } else {
                    None
                },
            },
        };
        let called_at = ns(epoch);
        // Half of the LINEARIZABLE reads go to the home node only.
        let via = if (10..=19).contains(&roll) {
            &home
        } else {
            &client
        };
        let answer = execute(via, &key, &call).await;
        let outcome = answer.outcome;
        let returned_at = (outcome != Outcome::Unknown).then(|| ns(epoch));
        match &outcome {
            Outcome::Read { version, .. } | Outcome::Written { version } => {
                seen[k as usize] = Some(*version)
            }
            _ => {}
        }
        let mut r = recorded.lock();
        if let (Some(id), true) = (answer.served_by, std::ptr::eq(via, &home)) {
            *r.home_reads_by_member.entry(id).or_default() += 1;
        }
        if let Some(c) = answer.completion {
            r.completions.push(c);
        }
        if let (Some(revision), Some(returned_at)) = (answer.revision, returned_at) {
            r.acks.push(Ack {
                returned_at,
                revision,
            });
        }
        r.ops.push(Operation {
            client: client_id,
            key,
            call,
            outcome,
            called_at,
            returned_at,
        });
    }
}

/// A client that only reads, with LEASE, through the address's `Client`
/// (the leader, as far as that client can see), one read every
/// `LEASE_READ_EVERY`. The mixed clients beside it spend a cut-off side's
/// time waiting on writes that cannot commit, so they issue few reads
/// there; this one keeps asking. When a partition cuts the leader off with
/// this address on its side, it is the deposed leader that answers, and
/// every answer must come from a lease still held: one served from old
/// state while the majority writes on is a linearizability violation (the
/// `lease-reads` planted bug).
async fn lease_reader(
    client_id: u32,
    client: Client,
    seed: u64,
    epoch: Instant,
    recorded: Arc<Mutex<Recorded>>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ (u64::from(client_id) << 32));
    let mut pace = tokio::time::interval(LEASE_READ_EVERY);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let call = Call::Get {
        level: ReadLevel::Lease,
    };
    while !stop.load(Ordering::Relaxed) {
        pace.tick().await;
        let key = format!("k{}", rng.random_range(0..KEYS));
        let called_at = ns(epoch);
        let outcome = execute(&client, &key, &call).await.outcome;
        // A read that failed did nothing; the checker drops it anyway.
        if outcome == Outcome::Unknown {
            continue;
        }
        recorded.lock().ops.push(Operation {
            client: client_id,
            key,
            call: call.clone(),
            outcome,
            called_at,
            returned_at: Some(ns(epoch)),
        });
    }
}

/// The next operation's key index, key, unique value (`PREFIX<client>-<seq>`)
/// and roll of the dice (0..100), for every recording client.
pub fn next_op(
    rng: &mut StdRng,
    prefix: &str,
    client_id: u32,
    seq: u64,
) -> (u64, String, String, u32) {
    let k = rng.random_range(0..KEYS);
    let value = format!("{prefix}{client_id}-{seq}");
    (k, format!("k{k}"), value, rng.random_range(0..100))
}

/// A STALE get from the home node, with or without a bound: the serving
/// member and its applied revision, if it found the record.
async fn stale_get(home: &Client, key: &str, bound: Option<u64>) -> Option<(u64, u64)> {
    let g = home
        .send_get(pb::GetRequest {
            key: key.into(),
            consistency: pb::Consistency::Stale as i32,
            max_staleness_ms: bound,
        })
        .await
        .ok()?;
    g.record.is_some().then_some((g.served_by, g.revision))
}

/// What one call came back with.
struct Answer {
    outcome: Outcome,
    /// For a Complete, the record's hand-off id (known only when acknowledged).
    completion: Option<Completion>,
    /// For a read that found its record, the member that served it.
    served_by: Option<u64>,
    /// For an acknowledged write, its revision.
    revision: Option<u64>,
}

/// Sends one call and maps the answer.
async fn execute(client: &Client, key: &str, call: &Call) -> Answer {
    let answer = |outcome| Answer {
        outcome,
        completion: None,
        served_by: None,
        revision: None,
    };
    let written = |r: Result<pb::MutationResponse, tonic::Status>| match r {
        Ok(m) => Answer {
            outcome: Outcome::Written {
                version: m.record.map(|r| r.version).unwrap_or(0),
            },
            revision: Some(m.revision),
            ..answer(Outcome::Unknown)
        },
        Err(e) => answer(refusal(&e)),
    };
    match call {
        Call::Insert { value } => written(client.insert(key, value.clone()).await),
        Call::Update { value, if_version } => {
            written(client.update(key, value.clone(), *if_version).await)
        }
        Call::Delete { if_version } => written(client.delete(key, *if_version).await),
        Call::Complete { value } => {
            let r = client
                .complete(key, value.clone().map(String::into_bytes), None)
                .await;
            let completion = r.as_ref().ok().map(|m| Completion {
                handoff_id: format!("{key}@{}", m.revision),
                acknowledged: true,
            });
            Answer {
                completion,
                ..written(r)
            }
        }
        Call::Get { level } => {
            let consistency = match level {
                ReadLevel::Linearizable => Consistency::Linearizable,
                ReadLevel::Lease => Consistency::Lease,
            };
            match client.get(key, consistency).await {
                Ok(g) => match g.record {
                    Some(r) => Answer {
                        served_by: Some(g.served_by),
                        ..answer(Outcome::Read {
                            value: String::from_utf8_lossy(&r.value).into_owned(),
                            version: r.version,
                            completed: r.state != pb::RecordState::Live as i32,
                        })
                    },
                    None => answer(Outcome::Unknown),
                },
                Err(e) => answer(refusal(&e)),
            }
        }
    }
}

/// A definite refusal, or `Unknown` when the call may have landed.
fn refusal(e: &tonic::Status) -> Outcome {
    let refusal = match e.code() {
        Code::NotFound => Refusal::NotFound,
        Code::AlreadyExists => Refusal::AlreadyExists,
        Code::FailedPrecondition if e.message().contains("expected version") => {
            Refusal::VersionMismatch
        }
        Code::FailedPrecondition if e.message().contains("immutable") => Refusal::NotLive,
        _ => return Outcome::Unknown,
    };
    Outcome::Refused { refusal }
}
