//! A real cluster of `inflight serve` processes on loopback, for integration tests.
//!
//! Each node is a child process of the test with its own data directory and
//! log file under a temporary directory. Nodes can be killed (SIGKILL),
//! stopped (SIGTERM) and restarted with the same data. When a test fails, the
//! tail of every node's log is printed.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use inflight::client::{Client, ClientOptions, Consistency};
use inflight::pb;

pub const BIN: &str = env!("CARGO_BIN_EXE_inflight");

/// Finds a free loopback port outside the ephemeral range, so parallel tests
/// and outgoing connections do not collide with it.
pub fn free_port() -> u16 {
    free_port_block(1)
}

/// `n` consecutive free loopback ports; returns the first. Ports handed out
/// are never handed out again by this process, so tests running in parallel
/// threads get disjoint ports; the process id spreads test binaries apart.
pub fn free_port_block(n: u16) -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = (std::process::id() % 500) as u16 * 20;
    loop {
        let offset = NEXT.fetch_add(n, Ordering::Relaxed) % 10_000;
        let first = 20_000 + (base + offset) % 10_000;
        if first + n > 30_000 {
            continue;
        }
        if (0..n).all(|i| TcpListener::bind(("127.0.0.1", first + i)).is_ok()) {
            return first;
        }
    }
}

/// Serve arguments for a sink that refuses every write (a webhook on a closed
/// port), so COMPLETED and EXPIRED records stay in memory: for tests about
/// what happens before hand-off.
pub fn refusing_sink_args() -> Vec<String> {
    vec![
        "--sink".into(),
        format!("webhook:http://127.0.0.1:{}/", free_port()),
    ]
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct NodeProc {
    pub id: u64,
    /// The node's own IP (127.0.0.1 unless the cluster has distinct IPs).
    pub ip: String,
    pub grpc: String,
    pub http: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
    /// Arguments after `serve` besides id/dirs/addresses (cluster or join).
    pub membership_args: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub nodes: u64,
    pub snapshot_every: u64,
    pub extra_args: Vec<String>,
    /// Give every node its own loopback address (127.A.B.id) and make its peer
    /// traffic come from it, so `netfault::Firewall` can cut links between nodes.
    pub distinct_ips: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 3,
            snapshot_every: 10_000,
            extra_args: Vec::new(),
            distinct_ips: false,
        }
    }
}

/// A loopback /24 (127.A.B.0) no other cluster of this test process uses.
fn fresh_subnet() -> (u8, u8) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    (100 + (std::process::id() % 100) as u8, 1 + (n % 250) as u8)
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: BTreeMap<u64, NodeProc>,
    pub opts: ClusterOptions,
}

impl Cluster {
    /// Starts `opts.nodes` nodes as one initial cluster and waits for a leader.
    pub async fn start(opts: ClusterOptions) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("inflight-test-")
            .tempdir()
            .expect("tempdir");
        let mut nodes = BTreeMap::new();
        let subnet = fresh_subnet();
        for id in 1..=opts.nodes {
            let ip = if opts.distinct_ips {
                format!("127.{}.{}.{id}", subnet.0, subnet.1)
            } else {
                "127.0.0.1".to_string()
            };
            let grpc = format!("{ip}:{}", free_port());
            let http = format!("{ip}:{}", free_port());
            nodes.insert(
                id,
                NodeProc {
                    id,
                    ip,
                    grpc,
                    http,
                    data_dir: dir.path().join(format!("node-{id}")),
                    log: dir.path().join(format!("node-{id}.log")),
                    child: None,
                    membership_args: Vec::new(),
                },
            );
        }
        let initial = nodes
            .values()
            .map(|n| format!("{}={}", n.id, n.grpc))
            .collect::<Vec<_>>()
            .join(",");
        for n in nodes.values_mut() {
            n.membership_args = vec!["--initial-cluster".into(), initial.clone()];
        }
        let mut c = Cluster { dir, nodes, opts };
        let ids: Vec<u64> = c.nodes.keys().copied().collect();
        for id in ids {
            c.spawn(id);
        }
        c.wait_leader(Duration::from_secs(20)).await;
        c
    }

    fn spawn(&mut self, id: u64) {
        let snapshot_every = self.opts.snapshot_every.to_string();
        let extra = self.opts.extra_args.clone();
        let n = self.nodes.get_mut(&id).expect("known node");
        assert!(n.child.is_none(), "node {id} is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .expect("open node log");
        let child = Command::new(BIN)
            .arg("serve")
            .args(["--id", &id.to_string()])
            .arg("--data-dir")
            .arg(&n.data_dir)
            .args(["--listen", &n.grpc, "--http", &n.http])
            .args(&n.membership_args)
            .args(["--snapshot-every", &snapshot_every])
            .args(if n.ip != "127.0.0.1" {
                vec!["--peer-source-ip".to_string(), n.ip.clone()]
            } else {
                vec![]
            })
            .args(&extra)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn inflight serve");
        n.child = Some(child);
    }

    /// Adds a node that joins through the current members (not started yet in the membership).
    pub fn add_joiner(&mut self, id: u64) {
        let join: Vec<String> = self.nodes.values().map(|n| n.grpc.clone()).collect();
        let grpc = format!("127.0.0.1:{}", free_port());
        let http = format!("127.0.0.1:{}", free_port());
        self.nodes.insert(
            id,
            NodeProc {
                id,
                ip: "127.0.0.1".into(),
                grpc,
                http,
                data_dir: self.dir.path().join(format!("node-{id}")),
                log: self.dir.path().join(format!("node-{id}.log")),
                child: None,
                membership_args: vec!["--join".into(), join.join(",")],
            },
        );
        self.spawn(id);
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.grpc.clone()).collect()
    }

    /// A client that knows every node and follows the leader.
    pub fn client(&self) -> Client {
        Client::new(self.endpoints()).expect("client")
    }

    /// A client bound to one node: no other endpoint to fail over to.
    pub fn node_client(&self, id: u64) -> Client {
        Client::with_options(
            [self.nodes[&id].grpc.clone()],
            ClientOptions {
                request_timeout: Duration::from_secs(2),
                retry_for: Duration::ZERO,
                ..Default::default()
            },
        )
        .expect("client")
    }

    pub async fn status(&self, id: u64) -> Option<pb::NodeStatus> {
        self.node_client(id)
            .node_status(&self.nodes[&id].grpc, Duration::from_secs(1))
            .await
            .ok()
    }

    /// Waits until a running node reports a leader that every running node agrees on.
    pub async fn wait_leader(&self, timeout: Duration) -> u64 {
        wait_for(
            timeout,
            "a leader agreed on by every running node",
            || async {
                let mut leader = None;
                for (id, n) in &self.nodes {
                    if n.child.is_none() {
                        continue;
                    }
                    let s = self.status(*id).await?;
                    if s.leader_id == 0 || leader.is_some_and(|l| l != s.leader_id) {
                        return None;
                    }
                    leader = Some(s.leader_id);
                }
                let l = leader?;
                // The leader itself must be running and say so.
                (self.nodes.get(&l)?.child.is_some() && self.status(l).await?.role == "leader")
                    .then_some(l)
            },
        )
        .await
    }

    /// Waits until node `id` has applied at least `index` and, after a
    /// restart, has recovered (so it serves STALE reads).
    pub async fn wait_applied(&self, id: u64, index: u64, timeout: Duration) {
        wait_for(
            timeout,
            &format!("node {id} to apply index {index}"),
            || async {
                let s = self.status(id).await?;
                (s.applied_index >= index && s.recovered).then_some(())
            },
        )
        .await
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill(&mut self, id: u64) {
        let n = self.nodes.get_mut(&id).expect("known node");
        if let Some(mut c) = n.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; panics if the node does not stop in 15 s.
    pub fn stop(&mut self, id: u64) {
        let n = self.nodes.get_mut(&id).expect("known node");
        if let Some(mut c) = n.child.take() {
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                match c.try_wait() {
                    Ok(Some(status)) => {
                        assert!(
                            status.success(),
                            "node {id} exited with {status} on SIGTERM"
                        );
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        let _ = c.kill();
                        panic!("node {id} did not stop within 15s of SIGTERM");
                    }
                }
            }
        }
    }

    pub fn restart(&mut self, id: u64) {
        self.spawn(id);
    }

    pub fn is_running(&mut self, id: u64) -> bool {
        let n = self.nodes.get_mut(&id).expect("known node");
        match &mut n.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Cuts node `id` off from every other node (needs `distinct_ips`); the
    /// cut lasts until the returned firewall is healed or dropped.
    pub fn isolate(&self, id: u64) -> netfault::Firewall {
        assert!(
            self.opts.distinct_ips,
            "isolating a node needs ClusterOptions::distinct_ips"
        );
        let fw = netfault::Firewall::new();
        let others: Vec<&str> = self
            .nodes
            .values()
            .filter(|n| n.id != id)
            .map(|n| n.ip.as_str())
            .collect();
        fw.isolate(&self.nodes[&id].ip, &others);
        fw
    }

    pub fn log_text(&self, id: u64) -> String {
        std::fs::read_to_string(&self.nodes[&id].log).unwrap_or_default()
    }

    pub fn wal_dir(&self, id: u64) -> PathBuf {
        self.nodes[&id].data_dir.join("raft").join("wal")
    }

    /// Reads every record under `prefix` from node `id` at `consistency`, all pages.
    pub async fn scan_all(
        &self,
        client: &Client,
        prefix: &str,
        consistency: Consistency,
    ) -> Vec<pb::Record> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let page = match client.scan(prefix, 10_000, &after, consistency).await {
                Ok(p) => p,
                Err(e) => panic!("scan of {prefix:?} via {:?}: {e}", client.endpoints()),
            };
            let more = page.more;
            if let Some(last) = page.records.last() {
                after = last.key.clone();
            }
            out.extend(page.records);
            if !more {
                return out;
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in &ids {
            self.kill(*id);
        }
        if std::thread::panicking() {
            for id in ids {
                let text = self.log_text(id);
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("----- node {id} log (last {} lines) -----", tail.len());
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// The last WAL segment of a node's log directory.
pub fn last_segment(dir: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("wal dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segs.sort();
    segs.pop().expect("at least one segment")
}
pub mod netfault;
pub mod postgres;
