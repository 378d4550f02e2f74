//! The cluster under test: real `inflight serve` processes, each on its own
//! loopback address (127.X.Y.id) with its peer traffic sent from it, so that
//! nftables rules between addresses act as links between hosts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use inflight::client::{Client, ClientOptions};

pub const GRPC_PORT: u16 = 17_000;
pub const HTTP_PORT: u16 = 18_000;

pub struct Node {
    pub id: u64,
    pub ip: String,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    membership: Vec<String>,
    pub paused: bool,
}

impl Node {
    pub fn grpc(&self) -> String {
        format!("{}:{GRPC_PORT}", self.ip)
    }
}

pub struct Cluster {
    bin: PathBuf,
    pub dir: PathBuf,
    pub sink_dir: PathBuf,
    /// The first two octets after 127 of every address in this run.
    pub net: (u8, u8),
    pub nodes: BTreeMap<u64, Node>,
    /// Ids of nodes removed from the membership (their processes are gone).
    pub removed: Vec<u64>,
}

impl Cluster {
    pub fn ip(&self, host: u64) -> String {
        format!("127.{}.{}.{host}", self.net.0, self.net.1)
    }

    pub fn start(bin: PathBuf, dir: PathBuf, n: u64, net: (u8, u8)) -> anyhow::Result<Cluster> {
        let sink_dir = dir.join("postflight");
        let mut c = Cluster {
            bin,
            dir,
            sink_dir,
            net,
            nodes: BTreeMap::new(),
            removed: Vec::new(),
        };
        let initial: Vec<String> = (1..=n)
            .map(|id| format!("{id}={}:{GRPC_PORT}", c.ip(id)))
            .collect();
        for id in 1..=n {
            c.add(id, vec!["--initial-cluster".into(), initial.join(",")]);
            c.spawn(id)?;
        }
        Ok(c)
    }

    fn add(&mut self, id: u64, membership: Vec<String>) {
        let ip = self.ip(id);
        self.nodes.insert(
            id,
            Node {
                id,
                ip,
                data: self.dir.join(format!("node-{id}")),
                log: self.dir.join(format!("node-{id}.log")),
                child: None,
                membership,
                paused: false,
            },
        );
    }

    pub fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let sink = format!("file:{}", self.sink_dir.display());
        let n = self.nodes.get_mut(&id).context("unknown node")?;
        if n.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)?;
        let child = Command::new(&self.bin)
            .arg("serve")
            .args(["--id", &id.to_string()])
            .arg("--data-dir")
            .arg(&n.data)
            .args(["--listen", &format!("{}:{GRPC_PORT}", n.ip)])
            .args(["--http", &format!("{}:{HTTP_PORT}", n.ip)])
            .args(["--peer-source-ip", &n.ip])
            .args(["--sink", &sink])
            .args(&n.membership)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start node {id}"))?;
        n.child = Some(child);
        n.paused = false;
        Ok(())
    }

    fn signal(&self, id: u64, sig: i32) {
        if let Some(c) = self.nodes.get(&id).and_then(|n| n.child.as_ref()) {
            // SAFETY: signalling our own child process.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    pub fn kill(&mut self, id: u64) {
        self.signal(id, libc::SIGCONT);
        if let Some(n) = self.nodes.get_mut(&id) {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            n.paused = false;
        }
    }

    /// SIGTERM and wait (SIGKILL after 10 s).
    pub fn stop(&mut self, id: u64) {
        self.signal(id, libc::SIGCONT);
        self.signal(id, libc::SIGTERM);
        if let Some(n) = self.nodes.get_mut(&id) {
            if let Some(mut c) = n.child.take() {
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = c.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    pub fn pause(&mut self, id: u64) {
        self.signal(id, libc::SIGSTOP);
        if let Some(n) = self.nodes.get_mut(&id) {
            n.paused = true;
        }
    }

    pub fn resume(&mut self, id: u64) {
        self.signal(id, libc::SIGCONT);
        if let Some(n) = self.nodes.get_mut(&id) {
            n.paused = false;
        }
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.values().map(Node::grpc).collect()
    }

    /// A client for operators' calls, from the runner's own address (.254).
    pub fn admin(&self) -> anyhow::Result<Client> {
        Ok(Client::with_options(
            self.endpoints(),
            ClientOptions {
                request_timeout: Duration::from_secs(1),
                retry_for: Duration::from_secs(5),
                local_address: self.ip(254).parse().ok(),
                ..ClientOptions::default()
            },
        )?)
    }

    /// The leader as the running, unpaused nodes report it (agreeing).
    pub async fn leader(&self) -> Option<u64> {
        let admin = self.admin().ok()?;
        let mut seen = None;
        for n in self
            .nodes
            .values()
            .filter(|n| n.child.is_some() && !n.paused)
        {
            let s = admin
                .node_status(&n.grpc(), Duration::from_millis(500))
                .await
                .ok()?;
            if s.leader_id == 0 || seen.is_some_and(|l| l != s.leader_id) {
                return None;
            }
            seen = Some(s.leader_id);
        }
        seen
    }

    pub async fn wait_leader(&self, timeout: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader().await {
                return Ok(l);
            }
            if Instant::now() > deadline {
                bail!("no agreed leader within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts a fresh node that joins through the current members.
    pub fn join_new(&mut self, id: u64) -> anyhow::Result<()> {
        let join: Vec<String> = self
            .nodes
            .values()
            .filter(|n| !self.removed.contains(&n.id))
            .map(Node::grpc)
            .collect();
        self.add(id, vec!["--join".into(), join.join(",")]);
        self.spawn(id)
    }

    pub fn kill_all(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}
