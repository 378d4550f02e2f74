//! `inflight-load`: a closed-loop load generator that drives inflight, etcd
//! and Redis with the same workload, for `benches/compare.sh`.
//!
//! Closed loop: each of `--clients` workers sends one operation, waits for the
//! answer, and sends the next, for `--duration`. Workers share
//! `--connections` connections. Latency is recorded per operation (for
//! `lifecycle`, per whole lifecycle) in an HDR histogram; the result is one
//! JSON object (ops/s, p50, p99, p99.9, errors, and the CPU time this process
//! spent in the timed loop) on stdout or in `--json`.

mod failover;
mod targets;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use serde_json::json;
use targets::{Conn, ReadMode, System};

#[derive(Parser)]
#[command(
    name = "inflight-load",
    about = "Closed-loop load against inflight, etcd or Redis"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one workload against one system and report throughput and latency.
    Run(RunArgs),
    /// Insert N records as fast as possible (for memory measurements).
    Fill(FillArgs),
    /// Kill the inflight leader under write load, repeatedly; report how long
    /// writes were unavailable each time.
    Failover(failover::FailoverArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Workload {
    /// Insert new keys.
    Insert,
    /// Update existing keys (preloaded).
    Update,
    /// Read existing keys (preloaded) at `--read`.
    Get,
    /// One operation's life: insert, three updates, complete (on etcd and
    /// Redis: put, three puts, delete). Latency is per lifecycle.
    Lifecycle,
    /// 90% reads at `--read`, 10% updates, over preloaded keys.
    Mixed,
}

#[derive(clap::Args, Clone)]
struct Common {
    #[arg(long, value_enum)]
    system: System,
    /// host:port,... of the system's members.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Concurrent closed-loop workers.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Connections shared by the workers.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
    /// inflight: send LINEARIZABLE reads to any member (each connection to
    /// its own first endpoint), not only the leader.
    #[arg(long)]
    spread_reads: bool,
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, value_enum)]
    workload: Workload,
    #[arg(long, value_enum, default_value = "linearizable")]
    read: ReadMode,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Keys preloaded for update, get and mixed.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Write the JSON result here as well as to stdout.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(clap::Args)]
struct FillArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long)]
    records: usize,
}

/// Workers that preload the keys of update, get and mixed (at least).
const PRELOAD_WORKERS: usize = 64;

/// A key of 38 bytes, unique to this run (`nonce`) and `n`.
fn key(prefix: &str, nonce: u32, n: u64) -> String {
    let width = 38 - prefix.len() - 1;
    let id = ((nonce as u128) << 64) | n as u128;
    format!("{prefix}/{id:0width$x}")
}

/// A JSON value of exactly `size` bytes (or the shortest such value, if larger).
fn value(size: usize, tag: u64) -> Vec<u8> {
    let head = format!(r#"{{"n":{tag},"pad":""#);
    let pad = size.saturating_sub(head.len() + 2);
    let mut v = head.into_bytes();
    v.resize(v.len() + pad, b'x');
    v.extend_from_slice(b"\"}");
    v
}

async fn connect(c: &Common) -> anyhow::Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(c.connections);
    for i in 0..c.connections.max(1) {
        conns.push(Conn::open(c.system, &c.endpoints, i, c.spread_reads).await?);
    }
    Ok(conns)
}

/// Inserts keys `prefix/nonce/0..n` with every connection busy.
async fn preload(
    conns: &[Conn],
    clients: usize,
    prefix: &'static str,
    nonce: u32,
    n: usize,
    value_size: usize,
    quiet: bool,
) -> anyhow::Result<Duration> {
    let next = Arc::new(AtomicU64::new(0));
    let bar = progress(quiet, n as u64, "load");
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients.max(1))
        .map(|w| {
            let mut conn = conns[w % conns.len()].clone();
            let (next, bar) = (next.clone(), bar.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n as u64 {
                        return Ok::<_, anyhow::Error>(());
                    }
                    conn.insert(&key(prefix, nonce, i), &value(value_size, i))
                        .await
                        .with_context(|| format!("preloading key {i}"))?;
                    bar.inc(1);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    bar.finish_and_clear();
    Ok(started.elapsed())
}

fn progress(quiet: bool, len: u64, what: &str) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix:>8} [{bar:40}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

struct WorkerResult {
    hist: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

async fn run(a: RunArgs) -> anyhow::Result<serde_json::Value> {
    let c = &a.common;
    let conns = connect(c).await?;
    let nonce: u32 = rand::rng().random();
    if matches!(
        a.workload,
        Workload::Update | Workload::Get | Workload::Mixed
    ) {
        // Preloading is not measured: at least PRELOAD_WORKERS in flight, so
        // that a one-client run does not insert its keys one at a time.
        preload(
            &conns,
            c.clients.max(PRELOAD_WORKERS),
            "bench",
            nonce,
            a.keys,
            c.value_size,
            c.quiet,
        )
        .await?;
    }
    let ops = Arc::new(AtomicU64::new(0));
    let next_key = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_time()?;
    let started = Instant::now();
    let deadline = started + a.duration;
    let bar = progress(c.quiet, a.duration.as_secs().max(1), "run");
    let ticker = {
        let (ops, bar) = (ops.clone(), bar.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let secs = started.elapsed().as_secs_f64();
                bar.set_position(secs as u64);
                bar.set_message(format!(
                    "{:.0} ops/s",
                    ops.load(Ordering::Relaxed) as f64 / secs.max(0.001)
                ));
            }
        })
    };
    let workers: Vec<_> = (0..c.clients)
        .map(|w| {
            let mut conn = conns[w % conns.len()].clone();
            let (ops, next_key) = (ops.clone(), next_key.clone());
            let (workload, read, keys, size) = (a.workload, a.read, a.keys as u64, c.value_size);
            tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
                let (mut errors, mut first_error) = (0u64, None);
                let mut rng = rand::rngs::StdRng::from_os_rng();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let r = match workload {
                        Workload::Insert => {
                            let n = next_key.fetch_add(1, Ordering::Relaxed);
                            conn.insert(&key("call", nonce, n), &value(size, n)).await
                        }
                        Workload::Update => {
                            let n = rng.random_range(0..keys);
                            conn.update(&key("bench", nonce, n), &value(size, n)).await
                        }
                        Workload::Get => {
                            let n = rng.random_range(0..keys);
                            conn.get(&key("bench", nonce, n), read).await
                        }
                        Workload::Mixed => {
                            let n = rng.random_range(0..keys);
                            if rng.random_bool(0.1) {
                                conn.update(&key("bench", nonce, n), &value(size, n)).await
                            } else {
                                conn.get(&key("bench", nonce, n), read).await
                            }
                        }
                        Workload::Lifecycle => {
                            let n = next_key.fetch_add(1, Ordering::Relaxed);
                            lifecycle(&mut conn, &key("life", nonce, n), size, n).await
                        }
                    };
                    match r {
                        Ok(()) => {
                            let us = t.elapsed().as_micros().max(1) as u64;
                            let _ = hist.record(us.min(60_000_000));
                            ops.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                }
                WorkerResult {
                    hist,
                    errors,
                    first_error,
                }
            })
        })
        .collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut errors, mut first_error) = (0, None);
    for w in workers {
        let r = w.await?;
        hist.add(&r.hist)?;
        errors += r.errors;
        if first_error.is_none() {
            first_error = r.first_error;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = cpu_time()?;
    ticker.abort();
    bar.finish_and_clear();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(json!({
        "system": c.system,
        "workload": a.workload,
        "read": a.read,
        "clients": c.clients,
        "connections": c.connections,
        "value_size": c.value_size,
        "duration_s": elapsed,
        "ops": hist.len(),
        "errors": errors,
        "first_error": first_error,
        "ops_per_sec": hist.len() as f64 / elapsed,
        // CPU this process spent in the timed loop (all threads), seconds.
        "cpu_s": {
            "user": cpu_after.user - cpu_before.user,
            "system": cpu_after.system - cpu_before.system,
            "total": cpu_after.total() - cpu_before.total(),
        },
        "latency_ms": {
            "p50": ms(0.50),
            "p99": ms(0.99),
            "p999": ms(0.999),
            "max": hist.max() as f64 / 1000.0,
            "mean": hist.mean() / 1000.0,
        },
    }))
}

/// CPU time used so far by this process (every thread), in seconds.
#[derive(Clone, Copy)]
struct CpuTime {
    user: f64,
    system: f64,
}

impl CpuTime {
    fn total(&self) -> f64 {
        self.user + self.system
    }
}

fn cpu_time() -> anyhow::Result<CpuTime> {
    // SAFETY: rusage is plain data (all zeros is a valid value) and
    // getrusage only writes into the struct we hand it.
    let (rc, ru) = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        (libc::getrusage(libc::RUSAGE_SELF, &mut ru), ru)
    };
    if rc != 0 {
        anyhow::bail!("getrusage: {}", std::io::Error::last_os_error());
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(CpuTime {
        user: secs(ru.ru_utime),
        system: secs(ru.ru_stime),
    })
}

async fn lifecycle(conn: &mut Conn, key: &str, size: usize, n: u64) -> anyhow::Result<()> {
    conn.insert(key, &value(size, n)).await?;
    for step in 1..=3 {
        conn.update(key, &value(size, n + step)).await?;
    }
    conn.complete(key, &value(size, n + 4)).await
}

async fn fill(a: FillArgs) -> anyhow::Result<serde_json::Value> {
    let c = &a.common;
    let conns = connect(c).await?;
    let nonce: u32 = rand::rng().random();
    let took = preload(
        &conns,
        c.clients,
        "call",
        nonce,
        a.records,
        c.value_size,
        c.quiet,
    )
    .await?;
    Ok(json!({
        "system": c.system,
        "records": a.records,
        "key_bytes": 38,
        "value_size": c.value_size,
        "seconds": took.as_secs_f64(),
    }))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run(a) => {
            let out = a.json.clone();
            run(a).await.and_then(|v| {
                if let Some(path) = out {
                    std::fs::write(&path, format!("{v}\n"))
                        .with_context(|| format!("write {}", path.display()))?;
                }
                Ok(v)
            })
        }
        Cmd::Fill(a) => fill(a).await,
        Cmd::Failover(a) => failover::run(a).await,
    };
    match result {
        Ok(v) => {
            println!("{v}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
