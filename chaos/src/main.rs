//! `inflight-chaos`: one chaos run. See chaos/README.md.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use inflight::client::Consistency;
use inflight_chaos::availability;
use inflight_chaos::cluster::{self, Cluster};
use inflight_chaos::history::{Call, Operation, Outcome, ReadLevel, Refusal};
use inflight_chaos::linearizability::{check_key, Verdict};
use inflight_chaos::nemesis::{inject, schedule, FaultRecord};
use inflight_chaos::staleness::{self, ClockWindow};
use inflight_chaos::ttl;
use inflight_chaos::workload::Workload;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::json;
use testkit::cluster::LIBFAKETIME;
use testkit::handoff::{check_evictions, EvictionWatch};
use testkit::net::Firewall;
use testkit::sink::FileSink;
use testkit::wait::poll_for;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Profile {
    /// Every fault kind once plus a few more: a few minutes.
    Ci,
    /// Many more faults, held longer: a soak.
    Long,
}

#[derive(Parser)]
#[command(name = "inflight-chaos")]
struct Args {
    #[arg(long, value_enum, default_value = "ci")]
    profile: Profile,
    /// Seed of the fault schedule and the workload (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// The inflight binary to run.
    #[arg(long, default_value = "target/release/inflight")]
    bin: PathBuf,
    /// Where the run folder goes.
    #[arg(long, default_value = "chaos/runs")]
    out: PathBuf,
    /// Succeed only if a linearizability violation is found (for the planted-bug build).
    #[arg(long)]
    expect_violation: bool,
    /// Every port over TLS, client certificates required (a test CA made in
    /// the run folder): the faults then also cut TLS sessions mid-stream.
    #[arg(long)]
    tls: bool,
    /// Start no cluster: run the linearizability checks on a recorded
    /// history (a run's history.jsonl or failed-KEY.jsonl) and exit.
    #[arg(long, value_name = "FILE")]
    check_history: Option<PathBuf>,
}

/// Linearizability, key by key: a check per key, and whether any found a
/// violation (not merely ran out of time or memory). A failing key's
/// operations go to `failed-KEY.jsonl` in `dir`.
fn check_linearizability(
    ops: &[Operation],
    dir: Option<&std::path::Path>,
) -> anyhow::Result<(Vec<Check>, bool)> {
    let mut by_key: BTreeMap<&str, Vec<Operation>> = BTreeMap::new();
    for op in ops {
        by_key.entry(&op.key).or_default().push(op.clone());
    }
    let mut checks = Vec::new();
    let mut violation = false;
    for (key, ops) in by_key {
        let started = Instant::now();
        let v = check_key(&ops, Duration::from_secs(60));
        if v != Verdict::Linearizable {
            violation |= v == Verdict::Violation;
            if let Some(dir) = dir {
                let mut f = std::io::BufWriter::new(std::fs::File::create(
                    dir.join(format!("failed-{key}.jsonl")),
                )?);
                for op in &ops {
                    writeln!(f, "{}", serde_json::to_string(op)?)?;
                }
                f.flush()?;
            }
        }
        checks.push(Check {
            name: format!("linearizable: {key}"),
            passed: v == Verdict::Linearizable,
            detail: format!(
                "{} operations: {v:?} in {:.1} s",
                ops.len(),
                started.elapsed().as_secs_f64()
            ),
        });
    }
    Ok((checks, violation))
}

/// `--check-history FILE`: the linearizability checks alone, on a recorded
/// history (a run's `history.jsonl` or a `failed-KEY.jsonl`).
fn check_history(
    path: &std::path::Path,
    expect_violation: bool,
) -> anyhow::Result<std::process::ExitCode> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut ops = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        ops.push(
            serde_json::from_str::<Operation>(line)
                .with_context(|| format!("{} line {}: not an operation", path.display(), n + 1))?,
        );
    }
    let (checks, violation) = check_linearizability(&ops, None)?;
    print_checks(&checks);
    let failed = checks.iter().filter(|c| !c.passed).count();
    println!("{} passed, {failed} failed", checks.len() - failed);
    Ok(exit_code(expect_violation, violation, failed))
}

/// Success when every check passed, or, with `--expect-violation` (a
/// planted-bug build), when the linearizability check found a violation.
fn exit_code(expect_violation: bool, violation: bool, failed: usize) -> std::process::ExitCode {
    let ok = if expect_violation {
        violation
    } else {
        failed == 0
    };
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

fn print_checks(checks: &[Check]) {
    for c in checks {
        println!(
            "chaos: {} {}: {}",
            if c.passed { "PASS" } else { "FAIL" },
            c.name,
            c.detail
        );
    }
}

struct Check {
    name: String,
    passed: bool,
    detail: String,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chaos: error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    if let Some(path) = &args.check_history {
        return check_history(path, args.expect_violation);
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let (extra, hold, gap) = match args.profile {
        Profile::Ci => (4, Duration::from_secs(6), Duration::from_secs(3)),
        Profile::Long => (60, Duration::from_secs(10), Duration::from_secs(5)),
    };
    let dir = args.out.join(format!(
        "{}-seed{seed}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let bin = args
        .bin
        .canonicalize()
        .with_context(|| format!("{} (build it: cargo build --release)", args.bin.display()))?;
    println!(
        "chaos: profile {:?}, seed {seed}, run folder {}",
        args.profile,
        dir.display()
    );

    anyhow::ensure!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: the clock faults need Debian's faketime package (apt-get install faketime)"
    );
    let net = (77, (seed % 200) as u8 + 20);
    let fw = Firewall::new(&format!("chaos_{seed}"))?;
    let mut cluster = cluster::start(bin, dir.clone(), 5, net, args.tls)?;
    let sink_dir = cluster::sink_dir(&dir);
    cluster
        .try_wait_leader(Duration::from_secs(30))
        .await
        .context("no agreed leader within 30 s of the start")?;
    let epoch = Instant::now();
    // The epoch on the wall clock, so that the times in the history and the
    // fault log can be lined up with the nodes' logs (e.g. "leader changed").
    let epoch_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let client_ips: Vec<String> = (0..5).map(|c| cluster.ip(100 + c)).collect();
    let client_home: Vec<(String, u64)> = client_ips
        .iter()
        .enumerate()
        .map(|(c, ip)| (ip.clone(), c as u64 + 1))
        .collect();
    let watch = EvictionWatch::start(cluster.admin());
    let workload = Workload::start(
        cluster.endpoints(),
        client_ips,
        seed,
        epoch,
        cluster.client_tls(),
        inflight_chaos::resp::Ports {
            addrs: cluster
                .nodes
                .iter()
                .filter_map(|(id, n)| Some((*id, n.resp.clone()?)))
                .collect(),
            tls: cluster.resp_tls(),
        },
    );

    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(1));
    let mut faults_log = std::fs::File::create(dir.join("faults.jsonl"))?;
    let mut faults = Vec::new();
    for kind in schedule(seed, extra) {
        tokio::time::sleep(gap).await;
        let r = inject(kind, &mut cluster, &fw, &mut rng, hold, &client_home, epoch).await;
        match r {
            Ok(f) => {
                println!("chaos: {:>7} ms  {:?}: {}", f.started_ms, f.kind, f.detail);
                writeln!(faults_log, "{}", serde_json::to_string(&f)?)?;
                faults.push(f);
            }
            Err(e) => {
                println!("chaos: {kind:?} could not be applied: {e:#}");
                writeln!(
                    faults_log,
                    "{}",
                    json!({"kind": kind, "error": format!("{e:#}")})
                )?;
            }
        }
    }
    // Heal everything, let the clients run on a healthy cluster, then stop them.
    fw.heal()?;
    let members = cluster.members();
    for id in &members {
        cluster.resume(*id);
        cluster.spawn(*id)?;
    }
    let healed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut recorded = workload.stop().await;
    let run_end_ms = epoch.elapsed().as_millis() as u64;
    // Availability is measured on the clients' history alone, before the
    // final reads below are added to it.
    let (outages, outage_by_kind) = availability::measure(&faults, &recorded.ops, run_end_ms);

    let mut checks = Vec::new();
    // Liveness: a leader, every member caught up and serving reads.
    let live = liveness(&cluster, &members).await;
    checks.push(Check {
        name: "liveness".into(),
        passed: live.is_ok(),
        detail: match &live {
            Ok(t) => format!("converged {t:?} after healing"),
            Err(e) => format!("{e:#}"),
        },
    });
    let _ = healed_at;
    // A final read of every key, recorded like any other operation.
    let admin = cluster.admin();
    for k in 0..inflight_chaos::workload::KEYS {
        let key = format!("k{k}");
        let called_at = epoch.elapsed().as_nanos() as u64;
        let outcome = match admin.get(&key, Consistency::Linearizable).await {
            Ok(g) => g.record.map(|r| Outcome::Read {
                value: String::from_utf8_lossy(&r.value).into_owned(),
                version: r.version,
                completed: r.state != inflight::pb::RecordState::Live as i32,
            }),
            Err(e) if e.code() == tonic::Code::NotFound => Some(Outcome::Refused {
                refusal: Refusal::NotFound,
            }),
            Err(_) => None,
        };
        if let Some(outcome) = outcome {
            recorded.ops.push(Operation {
                client: 999,
                key,
                call: Call::GET,
                outcome,
                called_at,
                returned_at: Some(epoch.elapsed().as_nanos() as u64),
            });
        }
    }

    // Hand-off: the backlog drains, then every acknowledged completion is in
    // the sink exactly once, and nothing left memory before its sink write.
    let drained = wait_drained(&cluster).await;
    let handed_off = watch.stop();
    let sink = FileSink::read(&sink_dir);
    // Every HANDED_OFF event's Evict was stamped no earlier than the sink
    // line's write (testkit::handoff).
    let early = check_evictions(&handed_off, &sink.first_written_ms());
    // Under a clock fault, a leader's sink times (its wall clock) and its
    // stamps disagree by design, until its successor's stamps have slewed
    // back: the order of those is not judged.
    let tainted = clock_tainted_unix_ms(&faults, epoch_unix_ms);
    let seen_ms: BTreeMap<&str, u64> = handed_off
        .iter()
        .map(|e| (e.handoff_id.as_str(), e.seen_ms))
        .collect();
    let (excused, early): (Vec<_>, Vec<_>) = early.into_iter().partition(|v| match v {
        testkit::handoff::Violation::ReceivedAfterEvict { handoff_id, .. } => seen_ms
            .get(handoff_id.as_str())
            .is_some_and(|t| tainted.iter().any(|(a, b)| a <= t && t <= b)),
        testkit::handoff::Violation::NotInSink { .. } => false,
    });
    let in_sink = sink.docs;
    let missing: Vec<&String> = recorded
        .completions
        .iter()
        .filter(|c| c.acknowledged)
        .map(|c| &c.handoff_id)
        .filter(|id| !in_sink.contains_key(*id))
        .collect();
    // Delivery is at-least-once (DESIGN.md): a batch written by a leader that
    // lost its leadership before its Evict committed is written again by the
    // next one. Exactly once *by handoff_id* means a reader that keeps one
    // document per id sees every record once: so copies must be identical.
    let conflicting: Vec<&String> = in_sink
        .iter()
        .filter(|(_, copies)| copies.iter().any(|c| c.doc != copies[0].doc))
        .map(|(id, _)| id)
        .collect();
    let redundant: usize = in_sink.values().map(|c| c.len() - 1).sum();
    checks.push(Check {
        name: "handoff: every acknowledged completion in the sink, once by handoff_id".into(),
        passed: drained.is_ok() && missing.is_empty() && conflicting.is_empty(),
        detail: format!(
            "{} completions acknowledged, {} ids in the sink, {redundant} redundant identical copies; \
             missing {:?}; ids with differing copies {:?}; drained: {:?}",
            recorded.completions.len(),
            in_sink.len(),
            &missing[..missing.len().min(5)],
            &conflicting[..conflicting.len().min(5)],
            drained.as_ref().map_err(|e| format!("{e:#}"))
        ),
    });
    checks.push(Check {
        name: "handoff: no record evicted before its sink write".into(),
        passed: early.is_empty(),
        detail: format!(
            "{} HANDED_OFF events checked, {} of them written by a faked clock and not ordered; \
             not in the sink before their Evict: {:?}",
            handed_off.len(),
            excused.len(),
            &early[..early.len().min(5)]
        ),
    });

    // Follower reads: the home-node reads went to every member, so unless
    // followers serve LINEARIZABLE reads only the leader shows up here.
    checks.push(Check {
        name: "follower reads: home-node linearizable reads served by followers too".into(),
        passed: recorded.home_reads_by_member.len() >= 2,
        detail: format!(
            "home-node reads that found their record, by serving member: {:?}",
            recorded.home_reads_by_member
        ),
    });

    // STALE reads keep their own promises.
    let clocks: Vec<ClockWindow> = faults
        .iter()
        .filter_map(|f| f.clock)
        .map(|c| ClockWindow {
            node: c.node,
            rate: c.rate,
            from: c.from_ms * 1_000_000,
            to: c.to_ms * 1_000_000,
        })
        .collect();
    let bounded = staleness::check_bounded(&recorded.stale_reads, &recorded.acks, &clocks);
    checks.push(Check {
        name: format!(
            "stale reads: max_staleness_ms {} holds",
            inflight_chaos::workload::MAX_STALENESS_MS
        ),
        passed: bounded.checked > 0 && bounded.violations.is_empty(),
        detail: format!(
            "{} bounded STALE reads checked against {} acknowledged writes; violations: {:?}",
            bounded.checked,
            recorded.acks.len(),
            &bounded.violations[..bounded.violations.len().min(5)]
        ),
    });
    let starts: Vec<(u64, u64)> = cluster
        .starts
        .iter()
        .map(|(id, at)| (*id, at.saturating_duration_since(epoch).as_nanos() as u64))
        .collect();
    let monotonic = staleness::check_monotonic(&recorded.stale_reads, &starts);
    checks.push(Check {
        name: "stale reads: never go back on one node between restarts".into(),
        passed: monotonic.checked > 0 && monotonic.violations.is_empty(),
        detail: format!(
            "{} unbounded STALE reads checked; violations: {:?}",
            monotonic.checked,
            &monotonic.violations[..monotonic.violations.len().min(5)]
        ),
    });
    let (ttl_checked, ttl_violations) = ttl::check(&recorded.ttl);
    checks.push(Check {
        name: "ttl: no record expired early or late".into(),
        passed: ttl_checked > 0 && ttl_violations.is_empty(),
        detail: format!(
            "{} TTL records, {ttl_checked} reads of them checked (TTL {} s: not gone before {} s, \
             not LIVE after {} s); violations: {:?}",
            recorded.ttl.len(),
            ttl::TTL.as_secs(),
            ttl::TTL.as_secs_f64() / ttl::MAX_RATE,
            ttl::TTL.as_secs_f64() / ttl::MIN_RATE + ttl::LATE_SLACK.as_secs_f64(),
            &ttl_violations[..ttl_violations.len().min(5)]
        ),
    });
    // LEASE reads are judged with the rest, below; this makes sure there were some.
    let lease_reads = recorded
        .ops
        .iter()
        .filter(|o| {
            o.call
                == Call::Get {
                    level: ReadLevel::Lease,
                }
                && matches!(o.outcome, Outcome::Read { .. })
        })
        .count();
    checks.push(Check {
        name: "lease reads: answered, and checked for linearizability with the rest".into(),
        passed: lease_reads > 0,
        detail: format!("{lease_reads} LEASE reads found their record"),
    });

    // RESP clients' operations are judged with the rest, below; this makes
    // sure they got through.
    let r = &recorded.resp;
    checks.push(Check {
        name: "resp clients: answered, and checked for linearizability with the rest".into(),
        passed: r.written > 0 && r.reads_found > 0,
        detail: format!(
            "{} writes acknowledged, {} RECORD reads found their record, {} refused, {} unknown, \
             {} writes followed READONLY to the leader",
            r.written, r.reads_found, r.refused, r.unknown, r.redirected
        ),
    });

    // The RESP watchers: every change in order, none made up, none missed.
    let w = &recorded.watched;
    let watch_violations = inflight_chaos::resp_watch::check(w, &recorded.ops, &recorded.acks);
    checks.push(Check {
        name: "resp watches: in order, no gaps, no change that was not written".into(),
        passed: !w.events.is_empty() && watch_violations.is_empty(),
        detail: format!(
            "{} change messages checked against {} acknowledged writes; {} resumed and {} \
             restarted subscriptions; violations: {:?}",
            w.events.len(),
            recorded.acks.len(),
            w.resumed,
            w.restarted,
            &watch_violations[..watch_violations.len().min(5)]
        ),
    });

    // The history goes to disk before the search, so that a search that
    // fails or is killed leaves it to check again (`--check-history`).
    let mut hist = std::io::BufWriter::new(std::fs::File::create(dir.join("history.jsonl"))?);
    for op in &recorded.ops {
        writeln!(hist, "{}", serde_json::to_string(op)?)?;
    }
    hist.flush()?;
    drop(hist);
    let (key_checks, violation) = check_linearizability(&recorded.ops, Some(&dir))?;
    checks.extend(key_checks);
    let passed = checks.iter().filter(|c| c.passed).count();
    let failed = checks.len() - passed;
    let verdict = json!({
        "seed": seed,
        "profile": format!("{:?}", args.profile),
        "epoch_unix_ms": epoch_unix_ms,
        "operations": recorded.ops.len(),
        "unknown_outcomes": recorded.ops.iter().filter(|o| o.outcome == Outcome::Unknown).count(),
        "checks": checks.iter().map(|c| json!({"check": c.name, "passed": c.passed, "detail": c.detail})).collect::<Vec<_>>(),
        "passed": passed,
        "failed": failed,
        "availability": {
            "measure": "per fault, the longest stretch without an acknowledged write that overlaps its window (ms)",
            "by_kind": outage_by_kind,
            "faults": outages,
        },
    });
    std::fs::write(
        dir.join("verdict.json"),
        serde_json::to_string_pretty(&verdict)?,
    )?;
    print_checks(&checks);
    println!(
        "chaos: {} operations ({} unknown); run folder {}",
        recorded.ops.len(),
        recorded
            .ops
            .iter()
            .filter(|o| o.outcome == Outcome::Unknown)
            .count(),
        dir.display()
    );
    for (kind, s) in &outage_by_kind {
        println!(
            "chaos: availability {kind}: longest write outage {} ms, median {} ms, over {} fault(s)",
            s.max_ms, s.median_ms, s.faults
        );
    }
    println!("{passed} passed, {failed} failed");
    cluster.kill_all();
    Ok(exit_code(args.expect_violation, violation, failed))
}

/// Every member answers, agrees on the leader, has applied the same index,
/// and serves a linearizable read: within 60 s of healing.
async fn liveness(c: &Cluster, members: &[u64]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let admin = c.admin();
    loop {
        let mut applied = Vec::new();
        let mut ok = c.leader().await.is_some();
        for id in members {
            match admin
                .node_status(&c.nodes[id].grpc, Duration::from_millis(500))
                .await
            {
                Ok(s) => applied.push(s.applied_index),
                Err(_) => ok = false,
            }
        }
        if ok
            && applied.windows(2).all(|w| w[0] == w[1])
            && admin
                .get("k0", Consistency::Linearizable)
                .await
                .map(|_| ())
                .or_else(|e| {
                    if e.code() == tonic::Code::NotFound {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .is_ok()
        {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(60) {
            anyhow::bail!("not converged 60 s after healing: applied indexes {applied:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Unix-ms windows in which sink times (a leader's wall clock) and Evict
/// stamps may disagree because of a clock fault: from the fault's start
/// until the stamps have slewed back after it. While a node with a faked
/// clock leads for T, the stamps drift from the real time by up to T × |rate
/// − 1| (at least the 10% slew toward a jumped wall clock); its successor
/// pulls them back at 10%, so within ten times that.
fn clock_tainted_unix_ms(faults: &[FaultRecord], epoch_unix_ms: u64) -> Vec<(u64, u64)> {
    faults
        .iter()
        .filter_map(|f| f.clock)
        .map(|c| {
            let held = c.to_ms - c.from_ms;
            let drift = (held as f64 * (c.rate - 1.0).abs().max(0.1)) as u64;
            (
                epoch_unix_ms + c.from_ms,
                epoch_unix_ms + c.to_ms + 10 * drift + 2_000,
            )
        })
        .collect()
}

/// Waits until no member has records waiting for hand-off.
async fn wait_drained(c: &Cluster) -> anyhow::Result<()> {
    poll_for(Duration::from_secs(60), || async {
        c.drained(false).await.then_some(())
    })
    .await
    .context("the outbox did not drain within 60 s")
}
