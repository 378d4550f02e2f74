//! A cluster of real `inflight serve` processes on loopback.
//!
//! Each node is a child process with its own data directory and log file
//! under the cluster's directory (a temporary one unless the caller gives
//! one). Its command line comes from `inflight::cli::serve_args::NodeArgs`,
//! the builder `inflight dev` uses too. Nodes can be killed (SIGKILL),
//! stopped (SIGTERM), paused (SIGSTOP) and continued, restarted on their data,
//! and new nodes can join. On drop every node is killed; when the drop
//! happens during a panic, the tail of every node's log is printed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use inflight::cli::serve_args::TlsFlags;
use inflight::cli::serve_args::{Membership, NodeArgs};
use inflight::client::{Client, ClientOptions, Consistency};
use inflight::handoff::SinkSpec;
use inflight::pb;
use inflight::raft::Durability;
use inflight::wire::{ClientTls, MemberAddr};

use crate::net::Firewall;
use crate::tls::{CertFiles, Pki};
use crate::wait::{free_port, poll_for, wait_for};

/// The `inflight` binary: `$INFLIGHT_BIN`, else the one cargo built next to
/// the running test executable (`target/<profile>/inflight`).
pub fn default_bin() -> PathBuf {
    if let Some(b) = std::env::var_os("INFLIGHT_BIN") {
        return b.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("inflight")
}

/// The client certificate name of a TLS cluster's [`Cluster::client`] and
/// [`Cluster::admin`], named in every node's `--admin-identities`.
pub const HARNESS_CLIENT: &str = "test";

/// Kills a child process (an `inflight dev`, a CLI `watch`) when the test
/// ends, also when it fails.
pub struct Reaper(pub std::process::Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How nodes are addressed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addresses {
    /// Every node on 127.0.0.1, on free ports.
    Loopback,
    /// Node `id` on its own 127.A.B.id (a /24 no other cluster of this
    /// process uses), on free ports, with its peer traffic sent from that
    /// address, so a [`Firewall`] can cut links between nodes.
    DistinctIps,
    /// Node `id` on 127.`net.0`.`net.1`.id with fixed ports (the chaos suite).
    Subnet {
        net: (u8, u8),
        grpc_port: u16,
        peer_port: u16,
        http_port: u16,
        resp_port: u16,
    },
}

#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub bin: PathBuf,
    pub nodes: u64,
    /// Where data and logs go; `None`: a temporary directory, removed on drop.
    pub dir: Option<PathBuf>,
    pub addresses: Addresses,
    pub durability: Option<Durability>,
    pub snapshot_every: Option<u64>,
    pub sink: Option<SinkSpec>,
    pub shadow_sink: Option<SinkSpec>,
    /// `--memory-budget`, e.g. `2MiB`.
    pub memory_budget: Option<String>,
    pub handoff_batch: Option<usize>,
    /// Every port over TLS, with certificates of a test CA made in
    /// `DIR/certs` (see [`Cluster::pki`]): client certificates required on
    /// the client and HTTP ports, node certificates on the peer port. The
    /// harness's clients present `client-test`.
    pub tls: bool,
    /// Any other `serve` flags.
    pub extra_args: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            bin: default_bin(),
            nodes: 3,
            dir: None,
            addresses: Addresses::Loopback,
            durability: None,
            snapshot_every: None,
            sink: None,
            shadow_sink: None,
            memory_budget: None,
            handoff_batch: None,
            tls: false,
            extra_args: Vec::new(),
        }
    }
}

/// A sink that refuses every write (a webhook on a closed port), so COMPLETED
/// and EXPIRED records stay in memory: for tests about what happens before
/// hand-off.
pub fn refusing_sink() -> SinkSpec {
    SinkSpec::Webhook(format!("http://127.0.0.1:{}/", free_port()))
}

pub struct Node {
    pub id: u64,
    /// The node's own IP (127.0.0.1 unless the cluster has distinct IPs).
    pub ip: String,
    /// Client gRPC HOST:PORT.
    pub grpc: String,
    /// Peer gRPC HOST:PORT.
    pub peer: String,
    pub http: String,
    /// Redis protocol HOST:PORT (every harness cluster opens one).
    pub resp: Option<String>,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
    /// How it finds the cluster when it (re)starts.
    pub membership: Membership,
    pub paused: bool,
    /// Environment variables the process starts with besides the harness's
    /// own (the chaos suite's clock faults set libfaketime's here).
    pub env: Vec<(String, String)>,
}

/// libfaketime, from Debian's `faketime` package: preloaded into a node, it
/// moves every clock the process reads (wall and monotonic) and scales its
/// sleeps, so the whole process lives at the faked time and rate.
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

pub struct Cluster {
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub nodes: BTreeMap<u64, Node>,
    pub opts: ClusterOptions,
    /// Ids of nodes removed from the membership (their processes are gone).
    pub removed: Vec<u64>,
    /// 127.A.B.* of distinct-IP clusters.
    net: Option<(u8, u8)>,
    /// The test CA of a TLS cluster (`ClusterOptions::tls`).
    pub pki: Option<Pki>,
    /// Every process start: which node, and when.
    pub starts: Vec<(u64, Instant)>,
    /// What the harness's clients present to a TLS cluster.
    client_tls: Option<ClientTls>,
    /// The harness's certificate files on a TLS cluster.
    harness_cert: Option<CertFiles>,
}

/// A loopback /24 (127.A.B.0) no other cluster of this process uses.
fn fresh_subnet() -> (u8, u8) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    (100 + (std::process::id() % 100) as u8, 1 + (n % 250) as u8)
}

impl Cluster {
    /// Starts `opts.nodes` nodes as one initial cluster and waits (20 s) for
    /// a leader; panics if that fails.
    pub async fn start(opts: ClusterOptions) -> Cluster {
        let c = Cluster::launch(opts).expect("start the cluster's nodes");
        c.wait_leader(Duration::from_secs(20)).await;
        c
    }

    /// Starts `opts.nodes` nodes as one initial cluster, without waiting.
    pub fn launch(opts: ClusterOptions) -> std::io::Result<Cluster> {
        let (dir, tmp) = match &opts.dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                (d.clone(), None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("inflight-test-")
                    .tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let net = match &opts.addresses {
            Addresses::Loopback => None,
            Addresses::DistinctIps => Some(fresh_subnet()),
            Addresses::Subnet { net, .. } => Some(*net),
        };
        let mut c = Cluster {
            dir,
            _tmp: tmp,
            nodes: BTreeMap::new(),
            opts,
            removed: Vec::new(),
            net,
            pki: None,
            starts: Vec::new(),
            client_tls: None,
            harness_cert: None,
        };
        if c.opts.tls {
            let pki = Pki::new(&c.dir.join("certs"), "ca");
            let me = pki.client(HARNESS_CLIENT);
            c.harness_cert = Some(me.clone());
            c.client_tls = Some(
                ClientTls::from_files(&pki.ca(), Some((&me.cert, &me.key)))
                    .map_err(std::io::Error::other)?,
            );
            c.pki = Some(pki);
        }
        let members: Vec<(u64, String)> = (1..=c.opts.nodes)
            .map(|id| {
                c.add(id, Membership::Initial(Vec::new()));
                let n = &c.nodes[&id];
                (id, MemberAddr::new(&n.grpc, &n.peer).to_string())
            })
            .collect();
        for n in c.nodes.values_mut() {
            n.membership = Membership::Initial(members.clone());
        }
        for id in 1..=c.opts.nodes {
            c.spawn(id)?;
        }
        Ok(c)
    }

    /// 127.A.B.`host` of a distinct-IP cluster (hosts beyond the nodes' ids
    /// are free for clients); 127.0.0.1 otherwise.
    pub fn ip(&self, host: u64) -> String {
        match self.net {
            Some((a, b)) => format!("127.{a}.{b}.{host}"),
            None => "127.0.0.1".into(),
        }
    }

    /// The address operators' calls come from: 127.A.B.254 on a distinct-IP
    /// cluster, which no fault cuts.
    pub fn admin_ip(&self) -> Option<std::net::IpAddr> {
        self.net.and_then(|_| self.ip(254).parse().ok())
    }

    fn add(&mut self, id: u64, membership: Membership) {
        let ip = self.ip(id);
        let (grpc, peer, http, resp) = match self.opts.addresses {
            Addresses::Subnet {
                grpc_port,
                peer_port,
                http_port,
                resp_port,
                ..
            } => (
                format!("{ip}:{grpc_port}"),
                format!("{ip}:{peer_port}"),
                format!("{ip}:{http_port}"),
                Some(format!("{ip}:{resp_port}")),
            ),
            _ => (
                format!("{ip}:{}", free_port()),
                format!("{ip}:{}", free_port()),
                format!("{ip}:{}", free_port()),
                Some(format!("{ip}:{}", free_port())),
            ),
        };
        self.nodes.insert(
            id,
            Node {
                id,
                ip,
                grpc,
                peer,
                http,
                resp,
                data_dir: self.dir.join(format!("node-{id}")),
                log: self.dir.join(format!("node-{id}.log")),
                child: None,
                membership,
                paused: false,
                env: Vec::new(),
            },
        );
    }

    /// Node `id`'s `serve` arguments.
    pub fn node_args(&self, id: u64) -> NodeArgs {
        let n = &self.nodes[&id];
        let o = &self.opts;
        let mut a = NodeArgs::new(
            id,
            n.data_dir.clone(),
            n.grpc.clone(),
            n.peer.clone(),
            n.membership.clone(),
        );
        a.http = Some(n.http.clone());
        a.resp = n.resp.clone();
        a.peer_source_ip = (n.ip != "127.0.0.1").then(|| n.ip.clone());
        a.durability = o.durability;
        a.snapshot_every = o.snapshot_every;
        a.sink = o.sink.clone();
        a.shadow_sink = o.shadow_sink.clone();
        a.memory_budget = o.memory_budget.clone();
        a.handoff_batch = o.handoff_batch;
        if let Some(pki) = &self.pki {
            let ips: Vec<std::net::IpAddr> = n.ip.parse().into_iter().collect();
            // Issued once; a test may replace the files (and SIGHUP the node).
            let files = self.node_cert(id);
            if !files.cert.exists() {
                pki.node_at(id, 1, &ips);
            }
            a.tls = TlsFlags {
                cert_file: Some(files.cert.clone()),
                key_file: Some(files.key.clone()),
                trusted_ca_file: Some(pki.ca()),
                peer_cert_file: Some(files.cert),
                peer_key_file: Some(files.key),
                peer_trusted_ca_file: Some(pki.ca()),
                peer_allowed_cn: Vec::new(),
            };
            // The harness's own certificate ("test") runs the operators'
            // calls (membership changes, leader transfer), as an operator's
            // would.
            a.admin_identities = vec![HARNESS_CLIENT.into()];
        }
        a.extra = o.extra_args.clone();
        a
    }

    /// Where node `id`'s certificate and key are (a TLS cluster).
    pub fn node_cert(&self, id: u64) -> CertFiles {
        let dir = self.dir.join("certs");
        CertFiles {
            cert: dir.join(format!("node-{id}.pem")),
            key: dir.join(format!("node-{id}-key.pem")),
        }
    }

    /// What the harness's clients present to a TLS cluster (`None`: plaintext).
    pub fn client_tls(&self) -> Option<ClientTls> {
        self.client_tls.clone()
    }

    /// What a RESP client presents to a TLS cluster (the harness's
    /// certificate), for [`crate::resp::RespConn::connect`]; `None`: plaintext.
    pub fn resp_tls(&self) -> Option<std::sync::Arc<rustls::ClientConfig>> {
        let (pki, me) = (self.pki.as_ref()?, self.harness_cert.as_ref()?);
        Some(std::sync::Arc::new(crate::tls::client_config(
            &pki.ca(),
            Some(me),
        )))
    }

    /// Starts node `id` on its data directory; does nothing if it runs.
    pub fn spawn(&mut self, id: u64) -> std::io::Result<()> {
        let args = self.node_args(id).to_args();
        let bin = self.opts.bin.clone();
        let n = self.nodes.get_mut(&id).expect("known node");
        if n.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)?;
        let child = Command::new(&bin)
            .arg("serve")
            .args(args)
            .env("RUST_LOG", "info,openraft=warn")
            .envs(n.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("start {}: {e}", bin.display())))?;
        n.child = Some(child);
        n.paused = false;
        self.starts.push((id, Instant::now()));
        Ok(())
    }

    /// From its next start, node `id` runs under libfaketime with
    /// `FAKETIME=spec` ("+600": its clocks 600 s ahead; "+0 x2": running
    /// twice as fast); `None`: on the real clock again.
    pub fn set_fake_clock(&mut self, id: u64, spec: Option<&str>) {
        let n = self.nodes.get_mut(&id).expect("known node");
        n.env = match spec {
            Some(spec) => vec![
                ("LD_PRELOAD".into(), LIBFAKETIME.into()),
                ("FAKETIME".into(), spec.into()),
            ],
            None => Vec::new(),
        };
    }

    /// Starts a stopped or killed node again on its data; panics if it runs.
    pub fn restart(&mut self, id: u64) {
        assert!(
            self.nodes[&id].child.is_none(),
            "node {id} is already running"
        );
        self.spawn(id)
            .unwrap_or_else(|e| panic!("restart node {id}: {e}"));
    }

    /// Starts a fresh node `id` that joins through the current members.
    pub fn join_new(&mut self, id: u64) -> std::io::Result<()> {
        let through: Vec<String> = self
            .members()
            .iter()
            .map(|id| self.nodes[id].grpc.clone())
            .collect();
        self.add(id, Membership::Join(through));
        self.spawn(id)
    }

    fn signal(&self, id: u64, sig: i32) {
        if let Some(c) = self.nodes.get(&id).and_then(|n| n.child.as_ref()) {
            // SAFETY: signalling our own child process.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// The process id of node `id`, while it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.nodes.get(&id)?.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no chance to flush or say goodbye.
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

    pub fn kill_all(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
    }

    /// SIGTERM (after SIGCONT, should it be paused), and waits up to `grace`
    /// for the exit; then SIGKILL. The exit status if it exited by itself.
    pub fn terminate(&mut self, id: u64, grace: Duration) -> Option<ExitStatus> {
        self.signal(id, libc::SIGCONT);
        self.signal(id, libc::SIGTERM);
        let n = self.nodes.get_mut(&id)?;
        n.paused = false;
        let mut c = n.child.take()?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// SIGTERM and a clean exit within 15 s, or a panic.
    pub fn stop(&mut self, id: u64) {
        if self.nodes[&id].child.is_none() {
            return;
        }
        match self.terminate(id, Duration::from_secs(15)) {
            Some(status) => assert!(
                status.success(),
                "node {id} exited with {status} on SIGTERM"
            ),
            None => panic!("node {id} did not stop within 15s of SIGTERM"),
        }
    }

    /// SIGSTOP: the process stays, frozen.
    pub fn pause(&mut self, id: u64) {
        self.signal(id, libc::SIGSTOP);
        if let Some(n) = self.nodes.get_mut(&id) {
            n.paused = true;
        }
    }

    /// SIGCONT.
    pub fn resume(&mut self, id: u64) {
        self.signal(id, libc::SIGCONT);
        if let Some(n) = self.nodes.get_mut(&id) {
            n.paused = false;
        }
    }

    /// Ids of the nodes not removed from the membership.
    pub fn members(&self) -> Vec<u64> {
        self.nodes
            .keys()
            .copied()
            .filter(|id| !self.removed.contains(id))
            .collect()
    }

    /// Ids of nodes with a process (paused or not).
    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect()
    }

    /// Whether node `id`'s process is alive (it may have exited by itself).
    pub fn is_running(&mut self, id: u64) -> bool {
        let n = self.nodes.get_mut(&id).expect("known node");
        match &mut n.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.grpc.clone()).collect()
    }

    /// A client that knows every node and follows the leader.
    pub fn client(&self) -> Client {
        Client::with_options(
            self.endpoints(),
            ClientOptions {
                tls: self.client_tls(),
                ..ClientOptions::default()
            },
        )
        .expect("client")
    }

    /// A client for operators' calls: every node, short attempts, from
    /// [`Cluster::admin_ip`].
    pub fn admin(&self) -> Client {
        Client::with_options(
            self.endpoints(),
            ClientOptions {
                request_timeout: Duration::from_secs(1),
                retry_for: Duration::from_secs(5),
                local_address: self.admin_ip(),
                tls: self.client_tls(),
                ..ClientOptions::default()
            },
        )
        .expect("admin client")
    }

    /// A client bound to one node: no other endpoint to fail over to.
    pub fn node_client(&self, id: u64) -> Client {
        Client::with_options(
            [self.nodes[&id].grpc.clone()],
            ClientOptions {
                request_timeout: Duration::from_secs(2),
                retry_for: Duration::ZERO,
                local_address: self.admin_ip(),
                tls: self.client_tls(),
                ..Default::default()
            },
        )
        .expect("client")
    }

    /// Node `id`'s own view of itself, if it answers within a second.
    pub async fn status(&self, id: u64) -> Option<pb::NodeStatus> {
        self.node_client(id)
            .node_status(&self.nodes.get(&id)?.grpc, Duration::from_secs(1))
            .await
            .ok()
    }

    /// The leader, if every running, unpaused node names the same one and it
    /// is among them and says it leads.
    pub async fn leader(&self) -> Option<u64> {
        let mut leader = None;
        for n in self.nodes.values() {
            if n.child.is_none() || n.paused {
                continue;
            }
            let s = self.status(n.id).await?;
            if s.leader_id == 0 || leader.is_some_and(|l| l != s.leader_id) {
                return None;
            }
            leader = Some(s.leader_id);
        }
        let l = leader?;
        let n = self.nodes.get(&l)?;
        (n.child.is_some() && !n.paused && self.status(l).await?.role == "leader").then_some(l)
    }

    /// [`Cluster::leader`] within `timeout`, or `None`.
    pub async fn try_wait_leader(&self, timeout: Duration) -> Option<u64> {
        poll_for(timeout, || self.leader()).await
    }

    /// [`Cluster::leader`] within `timeout`, or a panic.
    pub async fn wait_leader(&self, timeout: Duration) -> u64 {
        wait_for(timeout, "a leader agreed on by every running node", || {
            self.leader()
        })
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

    /// Whether no running node holds a record waiting for hand-off (and,
    /// with `records_too`, no record at all).
    pub async fn drained(&self, records_too: bool) -> bool {
        for id in self.running() {
            let Some(s) = self.status(id).await else {
                return false;
            };
            if s.outbox_depth != 0 || (records_too && s.records != 0) {
                return false;
            }
        }
        true
    }

    /// Waits until no running node holds a record or an outbox entry.
    pub async fn wait_all_evicted(&self, timeout: Duration) {
        crate::wait::wait_until(timeout, "every node to evict every record", || {
            self.drained(true)
        })
        .await
    }

    /// Cuts node `id` off from every other node (needs distinct IPs); the
    /// cut lasts until the returned firewall is healed or dropped.
    pub fn isolate(&self, id: u64) -> Firewall {
        self.partition(&[id])
    }

    /// Cuts the nodes in `side` off from every other node, both ways (needs
    /// distinct IPs); the cut lasts until the returned firewall is healed or
    /// dropped.
    pub fn partition(&self, side: &[u64]) -> Firewall {
        assert!(
            self.net.is_some(),
            "cutting links needs Addresses::DistinctIps"
        );
        static N: AtomicU16 = AtomicU16::new(0);
        let fw = Firewall::new(&format!(
            "test_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ))
        .expect("nftables");
        let (a, b): (Vec<&Node>, Vec<&Node>) =
            self.nodes.values().partition(|n| side.contains(&n.id));
        let ips =
            |nodes: Vec<&Node>| -> Vec<String> { nodes.iter().map(|n| n.ip.clone()).collect() };
        fw.cut(&ips(a), &ips(b)).expect("cut the links");
        fw
    }

    pub fn log_text(&self, id: u64) -> String {
        std::fs::read_to_string(&self.nodes[&id].log).unwrap_or_default()
    }

    pub fn wal_dir(&self, id: u64) -> PathBuf {
        self.nodes[&id].data_dir.join("raft").join("wal")
    }

    /// Reads every record under `prefix` through `client` at `consistency`, all pages.
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
        self.kill_all();
        if std::thread::panicking() {
            for id in self.nodes.keys() {
                let text = self.log_text(*id);
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
/// The resident memory of process `pid` in bytes (`VmRSS` in
/// `/proc/PID/status`), or `None` once it is gone.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

pub fn last_segment(dir: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("wal dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segs.sort();
    segs.pop().expect("at least one segment")
}
