//! Assembling one Raft node, and the rules for starting a cluster.
//!
//! - A data directory belongs to one node id; `node.id` in it says which and
//!   in which durability it ran. Starting it under another id is refused.
//! - `disk`: a restart recovers the vote, the log and the last snapshot and
//!   rejoins; nothing is ever re-initialized.
//! - `memory`: a restarted node has forgotten its log and its votes, so it
//!   must never come back under its old id (it could vote twice in a term or
//!   count towards a quorum for entries it no longer has). The id marker is
//!   kept even in this mode so a second start with the same id is refused.
//! - The initial cluster is initialized by its lowest id only, and only when
//!   that node's store is pristine (never voted, no entry).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use openraft::{Config, SnapshotPolicy};

use super::log_store::LogStore;
use super::network::PeerNetwork;
use super::state_machine::StateMachineStore;
use super::{Durability, Node, NodeId, Raft};
use crate::state::Store;

/// Settings of one node's Raft instance.
#[derive(Clone, Debug)]
pub struct RaftSettings {
    pub id: NodeId,
    pub data_dir: PathBuf,
    /// The address peers and clients use to reach this node.
    pub advertise: String,
    pub durability: Durability,
    /// Build a snapshot after this many applied entries.
    pub snapshot_every: u64,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: (u64, u64),
    /// Source address for outgoing peer connections, so that firewalls (and
    /// fault injection) see peer traffic coming from this node's address.
    pub peer_source_ip: Option<std::net::IpAddr>,
}

/// A running Raft node and the handles the API needs.
#[derive(Clone)]
pub struct RaftNode {
    pub id: NodeId,
    pub advertise: String,
    pub durability: Durability,
    pub raft: Raft,
    pub store: Arc<Store>,
    pub sm: StateMachineStore,
    pub log: LogStore,
    /// Set once the state machine has applied everything the cluster had
    /// committed when this node started. Until then local (STALE) reads could
    /// show an older state than this node served before a restart.
    pub recovered: Arc<AtomicBool>,
    /// When this node last received replication traffic from a leader.
    pub leader_contact: Arc<LeaderContact>,
    /// The most recent leader changes this node saw, oldest first.
    pub leader_changes: Arc<parking_lot::Mutex<std::collections::VecDeque<LeaderChange>>>,
}

/// A leader change as one node saw it.
#[derive(Clone, Copy, Debug)]
pub struct LeaderChange {
    /// Wall clock, ms since the Unix epoch.
    pub at_ms: u64,
    pub term: u64,
    /// The new leader; `None` while there is none.
    pub leader: Option<u64>,
}

/// The last time a leader's append (or heartbeat) reached this node: how a
/// follower knows how stale its local state may be.
#[derive(Debug)]
pub struct LeaderContact {
    epoch: std::time::Instant,
    /// ms since `epoch` of the last contact + 1 (0 = never).
    last: AtomicU64,
}

impl Default for LeaderContact {
    fn default() -> Self {
        LeaderContact {
            epoch: std::time::Instant::now(),
            last: AtomicU64::new(0),
        }
    }
}

impl LeaderContact {
    pub fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64 + 1;
        self.last.fetch_max(ms, Ordering::Relaxed);
    }

    /// Milliseconds since the last contact; `None` if there was none.
    pub fn millis_since(&self) -> Option<u64> {
        match self.last.load(Ordering::Relaxed) {
            0 => None,
            t => Some((self.epoch.elapsed().as_millis() as u64 + 1).saturating_sub(t)),
        }
    }
}

const ID_FILE: &str = "node.id";

fn check_identity(dir: &Path, id: NodeId, durability: Durability) -> anyhow::Result<()> {
    let path = dir.join(ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mut fields = BTreeMap::new();
            for line in text.lines() {
                if let Some((k, v)) = line.split_once('=') {
                    fields.insert(k.trim().to_string(), v.trim().to_string());
                }
            }
            let old_id = fields.get("id").and_then(|v| v.parse::<u64>().ok());
            let old_dur = fields.get("durability").cloned().unwrap_or_default();
            match old_id {
                None => bail!("{} is unreadable; it should hold `id=N`", path.display()),
                Some(old) if old != id => bail!(
                    "data directory {} belongs to node {old}, not node {id}; use --id {old} or another directory",
                    dir.display()
                ),
                _ => {}
            }
            if old_dur != durability.as_str() {
                bail!(
                    "data directory {} was used with --durability {old_dur}; it cannot be reused with {}",
                    dir.display(),
                    durability.as_str()
                );
            }
            if durability == Durability::Memory {
                bail!(
                    "node {id} already ran with --durability memory from {}; its log and votes are gone, so it \
                     must not come back under the same id. Start it with a new --id and --join the cluster \
                     (then remove node {id} from the membership)",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let body = format!("id={id}\ndurability={}\n", durability.as_str());
            std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))?;
            super::wal::sync_dir(dir).with_context(|| format!("syncing {}", dir.display()))?;
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

impl RaftNode {
    /// Opens storage (recovering it in `disk` mode) and starts the Raft node.
    pub async fn start(s: &RaftSettings) -> anyhow::Result<RaftNode> {
        if s.id == 0 {
            bail!("--id: node ids start at 1");
        }
        std::fs::create_dir_all(&s.data_dir)
            .with_context(|| format!("creating data directory {}", s.data_dir.display()))?;
        check_identity(&s.data_dir, s.id, s.durability)?;

        let store = Arc::new(Store::new());
        let (log, sm) = match s.durability {
            Durability::Disk => {
                let raft_dir = s.data_dir.join("raft");
                let log = LogStore::open(&raft_dir)
                    .with_context(|| format!("opening the Raft log in {}", raft_dir.display()))?;
                let snap_dir = s.data_dir.join("snapshots");
                let sm = StateMachineStore::open(store.clone(), &snap_dir)
                    .with_context(|| format!("opening snapshots in {}", snap_dir.display()))?;
                (log, sm)
            }
            Durability::Memory => (
                LogStore::in_memory(),
                StateMachineStore::in_memory(store.clone()),
            ),
        };

        let config = Config {
            cluster_name: "inflight".into(),
            heartbeat_interval: s.heartbeat_ms,
            election_timeout_min: s.election_timeout_ms.0,
            election_timeout_max: s.election_timeout_ms.1,
            // `compaction` decides when to snapshot, in proportion to the table.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: s.snapshot_every.min(1_000),
            install_snapshot_timeout: 30_000,
            enable_pre_vote: Some(true),
            // Bounds one AppendEntries message: 32 entries of at most a
            // 4 MiB batch each stay under the 256 MiB peer message limit.
            max_payload_entries: 32,
            ..Default::default()
        }
        .validate()
        .context("invalid Raft settings")?;

        let raft = Raft::new(
            s.id,
            Arc::new(config),
            PeerNetwork::new(s.peer_source_ip),
            log.clone(),
            sm.clone(),
        )
        .await
        .context("starting the Raft node")?;
        Ok(RaftNode {
            id: s.id,
            advertise: s.advertise.clone(),
            durability: s.durability,
            raft,
            store,
            sm,
            log,
            recovered: Arc::new(AtomicBool::new(false)),
            leader_contact: Arc::new(LeaderContact::default()),
            leader_changes: Arc::default(),
        })
    }

    /// A copy of openraft's current metrics for this node (state, term,
    /// indexes, membership, heartbeats).
    pub fn raft_metrics(&self) -> openraft::RaftMetrics<super::TypeConfig> {
        use openraft::async_runtime::WatchReceiver;
        self.raft.metrics().borrow_watched().clone()
    }

    /// Milliseconds since this node last heard from the leader; on the leader,
    /// since a quorum last acknowledged it. `None` if never.
    pub fn leader_contact_ms(&self) -> Option<u64> {
        let m = self.raft_metrics();
        match m.state {
            openraft::ServerState::Leader => m
                .last_quorum_acked
                .as_ref()
                .map(|t| openraft::Instant::elapsed(&**t).as_millis() as u64),
            _ => self.leader_contact.millis_since(),
        }
    }

    pub fn is_recovered(&self) -> bool {
        self.recovered.load(Ordering::Acquire)
    }

    /// Waits (as long as it takes) for the state machine to catch up with the
    /// cluster's commit point, then marks the node recovered.
    pub async fn await_recovery(&self) {
        match self.raft.wait_for_recovery(None).await {
            Ok(m) => {
                self.recovered.store(true, Ordering::Release);
                tracing::info!(applied = ?m.last_applied.map(|l| l.index), "state machine caught up with the cluster");
            }
            Err(e) => tracing::warn!(error = %e, "waiting for recovery stopped"),
        }
    }

    /// Initializes a new cluster with `members` if this node is the one that
    /// should (the lowest id) and its store is pristine. Returns whether it did.
    pub async fn initialize_if_first(
        &self,
        members: &BTreeMap<NodeId, String>,
    ) -> anyhow::Result<bool> {
        let Some((&lowest, _)) = members.first_key_value() else {
            return Ok(false);
        };
        if !members.contains_key(&self.id) {
            bail!("--initial-cluster does not list this node's id {}", self.id);
        }
        if lowest != self.id || !self.log.is_pristine() {
            return Ok(false);
        }
        let nodes: BTreeMap<NodeId, Node> = members
            .iter()
            .map(|(id, a)| (*id, Node { addr: a.clone() }))
            .collect();
        self.raft
            .initialize(nodes)
            .await
            .context("initializing the cluster")?;
        tracing::info!(members = ?members, "initialized a new cluster");
        Ok(true)
    }
}
