//! Failover: how long writes stop when the inflight leader is killed.
//!
//! Writers insert continuously with short attempt deadlines. Each round the
//! leader is found through the cluster API, killed with SIGKILL (its pid from
//! `--pid-dir/node-<id>.pid`), and the outage is measured from the kill to the
//! first successful write that *started after* the kill (a write already in
//! flight could have been committed by the dead leader and would hide the
//! outage). The killed node is then restarted with `--restart-cmd` (`{id}`
//! replaced by its id) and the next round waits until every node answers and
//! writes flow again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use inflight::client::{Client, ClientOptions};
use serde_json::json;
use successes::Successes;

#[derive(clap::Args)]
pub struct FailoverArgs {
    /// host:port,... of the inflight nodes.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Directory holding node-<id>.pid for each node.
    #[arg(long)]
    pid_dir: std::path::PathBuf,
    /// Shell command that restarts node `{id}` in the background.
    #[arg(long)]
    restart_cmd: String,
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Concurrent writers.
    #[arg(long, default_value_t = 16)]
    clients: usize,
}

mod successes {
    use std::sync::Mutex;
    use std::time::Instant;

    /// (start, end) of successful writes, newest last.
    #[derive(Default)]
    pub struct Successes(Mutex<Vec<(Instant, Instant)>>);

    impl Successes {
        pub fn push(&self, start: Instant, end: Instant) {
            if let Ok(mut v) = self.0.lock() {
                v.push((start, end));
                if v.len() > 100_000 {
                    v.drain(..50_000);
                }
            }
        }

        /// End of the first success that started at or after `t`.
        pub fn first_started_after(&self, t: Instant) -> Option<Instant> {
            let v = self.0.lock().ok()?;
            v.iter().filter(|(s, _)| *s >= t).map(|(_, e)| *e).min()
        }
    }
}

pub async fn run(a: FailoverArgs) -> anyhow::Result<serde_json::Value> {
    let opts = ClientOptions {
        request_timeout: Duration::from_millis(500),
        retry_for: Duration::ZERO,
        ..Default::default()
    };
    let admin = Client::new(a.endpoints.clone())?;
    let successes = Arc::new(Successes::default());
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..a.clients)
        .map(|w| {
            let mut eps = a.endpoints.clone();
            eps.rotate_left(w % a.endpoints.len());
            let client = Client::with_options(eps, opts.clone());
            let (successes, stop) = (successes.clone(), stop.clone());
            tokio::spawn(async move {
                let client = client?;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = format!("failover/{w}/{n}/{}", std::process::id());
                    let t = Instant::now();
                    match client.insert(&key, b"x".to_vec()).await {
                        Ok(_) => successes.push(t, Instant::now()),
                        Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    let mut outages = Vec::new();
    for round in 1..=a.rounds {
        wait_healthy(&admin, &a.endpoints, &successes).await?;
        let leader = admin.member_list().await?.leader_id;
        if leader == 0 {
            bail!("round {round}: no leader");
        }
        let pid_file = a.pid_dir.join(format!("node-{leader}.pid"));
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .with_context(|| format!("read {}", pid_file.display()))?
            .trim()
            .parse()
            .with_context(|| format!("pid in {}", pid_file.display()))?;
        let killed_at = Instant::now();
        // SAFETY: sending a signal to a process the caller told us about.
        if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
            bail!(
                "kill -9 {pid} (node {leader}): {}",
                std::io::Error::last_os_error()
            );
        }
        let deadline = killed_at + Duration::from_secs(30);
        let resumed = loop {
            if let Some(t) = successes.first_started_after(killed_at) {
                break t;
            }
            if Instant::now() > deadline {
                bail!("round {round}: writes did not resume within 30 s of killing node {leader}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let outage = resumed.duration_since(killed_at);
        eprintln!(
            "round {round}: killed leader node {leader}; writes resumed after {} ms",
            outage.as_millis()
        );
        outages.push(outage.as_secs_f64() * 1000.0);
        let cmd = a.restart_cmd.replace("{id}", &leader.to_string());
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .status()?;
        if !status.success() {
            bail!("restart command {cmd:?} failed: {status}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await??;
    }
    let mut sorted = outages.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let median = if sorted.is_empty() {
        0.0
    } else if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
    };
    Ok(json!({
        "system": "inflight",
        "rounds": outages.len(),
        "outage_ms": outages,
        "median_ms": median,
        "max_ms": sorted.last().copied().unwrap_or(0.0),
    }))
}

/// Every node answers its status and a write succeeded in the last 200 ms.
async fn wait_healthy(
    admin: &Client,
    endpoints: &[String],
    successes: &Successes,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut up = 0;
        for ep in endpoints {
            if let Ok(s) = admin.node_status(ep, Duration::from_millis(500)).await {
                if s.recovered && s.leader_id != 0 {
                    up += 1;
                }
            }
        }
        let recent = successes
            .first_started_after(Instant::now() - Duration::from_millis(200))
            .is_some();
        if up == endpoints.len() && recent {
            // Let the restarted node catch up fully before the next kill.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the cluster did not become healthy within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
