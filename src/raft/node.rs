//! `raft::Node`: the one way into consensus for the rest of the server.
//!
//! Everything above this module (the API handlers, the leader's duties, the
//! HTTP port, the process wiring) sees a node through a handful of calls:
//!
//! - [`Node::propose`]: put a command through the log and get its outcome;
//! - [`Node::read_barrier`]: make the local table fit for a read at a
//!   consistency level (ReadIndex, lease, or a staleness check);
//! - [`Node::is_leader`] and [`Node::status`]: what this node is and knows;
//! - membership and leadership changes, snapshots, and shutdown.
//!
//! openraft's types and errors stay behind this wall: callers get
//! [`super::Error`] and [`Status`], which are ours. That keeps the choice of
//! Raft library a detail of this folder, and gives batching of proposals and
//! read barriers one place to live.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use openraft::async_runtime::WatchReceiver;
use openraft::{ChangeMembers, Config, LinearizerOption, ReadPolicy, ServerState, SnapshotPolicy};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::batch::{self, Proposal, Reply};
use super::bootstrap::check_identity;
use super::clock::LeaderClock;
pub use super::contact::LeaderContact;
use super::follower_read::{self, RemoteReads, Waiter};
use super::forward::{Forward, ForwardError};
use super::log_store::LogStore;
use super::network::PeerNetwork;
use super::peer_service::PeerService;
use super::state_machine::StateMachine;
use super::{Durability, Error, NodeId, Raft, RaftSettings};
use crate::memory::{MemoryUse, Reservations};
use crate::state::{Command, Outcome, Table};

/// Read consistency, as the node enforces it before a local read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// ReadIndex: the leader confirms its leadership with a quorum and the
    /// read waits until that commit point is applied.
    Linearizable,
    /// The leader's lease: no quorum round while the lease holds.
    Lease,
    /// Local state as it is; refused while the node replays its log after a
    /// restart, and, with a bound, when the node is known to lag more.
    Stale { max_staleness_ms: Option<u64> },
}

/// A node's role as operators see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Leader,
    Candidate,
    Follower,
    /// A member that replicates but does not vote.
    Learner,
    Shutdown,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Candidate => "candidate",
            Role::Follower => "follower",
            Role::Learner => "learner",
            Role::Shutdown => "shutdown",
        }
    }
}

/// One member of the cluster as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    /// Its client port.
    pub address: String,
    /// Its peer (Raft) port.
    pub peer_address: String,
    pub voter: bool,
    /// On the leader: ms since the member last acknowledged it (0 for the
    /// leader itself). Unknown elsewhere.
    pub last_ack_ms: Option<u64>,
}

/// What this node knows of itself and of the cluster, at one moment.
#[derive(Clone, Debug)]
pub struct Status {
    pub id: NodeId,
    pub role: Role,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub leader_address: Option<String>,
    pub last_log_index: u64,
    pub applied_index: u64,
    /// The cluster's commit index as this node last learned it.
    pub committed_index: u64,
    pub snapshot_index: u64,
    pub members: Vec<Member>,
    /// See [`Node::leader_contact_ms`].
    pub leader_contact_ms: Option<u64>,
    pub heartbeat_ms: u64,
}

impl Status {
    pub fn voters(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.voter)
    }
}

/// A leader change as one node saw it.
#[derive(Clone, Copy, Debug)]
pub struct LeaderChange {
    /// Wall clock, ms since the Unix epoch.
    pub at_ms: u64,
    pub term: u64,
    /// The new leader; `None` while there is none.
    pub leader: Option<NodeId>,
}

/// What a follower that has lost the leader does with a call only the
/// leader serves (see `Node::leader_only`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaderWait {
    /// Answer at once, naming the leader it last knew.
    Answer,
    /// Hold the call until it can name a leader it hears from.
    Hold,
}

/// How many leader changes a node remembers for the status page.
const LEADER_CHANGES_KEPT: usize = 20;

/// A running Raft node. Cheap to clone; every clone is the same node.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    advertise: super::MemberAddr,
    durability: Durability,
    raft: Raft,
    table: Arc<Table>,
    sm: StateMachine,
    log: LogStore,
    /// Set once the state machine has applied everything the cluster had
    /// committed when this node started. Until then local (STALE) reads could
    /// show an older state than this node served before a restart.
    recovered: AtomicBool,
    contact: Arc<LeaderContact>,
    timing: super::Timing,
    /// What this node stamps into commands while it leads.
    clock: Arc<LeaderClock>,
    leader_changes: Mutex<VecDeque<LeaderChange>>,
    /// The batchers' queues (see `batch`), and their tasks, joined on shutdown.
    proposals: mpsc::UnboundedSender<Proposal>,
    read_index: mpsc::UnboundedSender<Reply<u64>>,
    lease: mpsc::UnboundedSender<Reply<u64>>,
    /// LINEARIZABLE reads on a follower or learner, waiting for a read
    /// index from the leader (`follower_read`).
    remote_reads: mpsc::UnboundedSender<Waiter>,
    /// Writes waiting to be forwarded to the leader (`forward`).
    forwards: mpsc::Sender<Forward>,
    batchers: Mutex<Vec<JoinHandle<()>>>,
    /// Bytes of writes admitted under the memory budget and not yet
    /// answered (see `api::budget`).
    reservations: Reservations,
}

/// ReadIndex rounds tried before LINEARIZABLE reads are refused (`batch::read_loop`).
const READ_INDEX_ROUNDS: u32 = 3;

impl Node {
    /// Opens storage (recovering it in `disk` mode) and starts the Raft node.
    pub async fn start(s: &RaftSettings) -> anyhow::Result<Node> {
        if s.id == 0 {
            bail!("--id: node ids start at 1");
        }
        std::fs::create_dir_all(&s.data_dir)
            .with_context(|| format!("creating data directory {}", s.data_dir.display()))?;
        check_identity(&s.data_dir, s.id, s.durability)?;

        let table = Arc::new(Table::new());
        let (log, sm) = match s.durability {
            Durability::Disk => {
                let raft_dir = s.data_dir.join("raft");
                let log = LogStore::open(&raft_dir)
                    .with_context(|| format!("opening the Raft log in {}", raft_dir.display()))?;
                let snap_dir = s.data_dir.join("snapshots");
                let sm = StateMachine::open(table.clone(), &snap_dir)
                    .with_context(|| format!("opening snapshots in {}", snap_dir.display()))?;
                (log, sm)
            }
            Durability::Memory => (
                LogStore::in_memory(),
                StateMachine::in_memory(table.clone()),
            ),
        };

        let config = Config {
            cluster_name: "inflight".into(),
            heartbeat_interval: s.timing.heartbeat_ms,
            election_timeout_min: s.timing.election_ms.0,
            election_timeout_max: s.timing.election_ms.1,
            // `duties::compaction` decides when to snapshot, in proportion to the table.
            snapshot_policy: SnapshotPolicy::Never,
            // A follower that was away (restarted, cut off) for less than
            // this many entries catches up from the log, in a few round
            // trips; past it, it needs a whole snapshot, which with the
            // remembered request ids takes seconds, and a quorum that
            // includes it cannot commit meanwhile. The log's bytes stay
            // bounded by the compaction duty whatever this count says.
            max_in_snapshot_log_to_keep: s.snapshot_every.saturating_mul(3),
            install_snapshot_timeout: super::snapshot_stream::CHUNK_TIMEOUT.as_millis() as u64,
            enable_pre_vote: Some(true),
            // Bounds one AppendEntries message: with `--max-value-bytes` at
            // most `MAX_VALUE_BYTES_BOUND` (checked at start), this many
            // entries stay under the peer message limit.
            max_payload_entries: super::APPEND_ENTRIES_MAX as u64,
            ..Default::default()
        }
        .validate()
        .context("invalid Raft settings")?;

        if !log.is_pristine() {
            // openraft reloads a restarted voter's vote without the lease it
            // was honouring, so it would vote for a new leader at once, while
            // the leader it acknowledged just before it stopped may still
            // serve LEASE reads. Sitting out one lease (MAX) first keeps
            // LEASE reads linearizable across restarts.
            let lease = Duration::from_millis(s.timing.election_ms.1);
            tracing::info!(
                ?lease,
                "restarted on an existing log: waiting out a leader's lease before joining in"
            );
            tokio::time::sleep(lease).await;
        }
        let clock = Arc::new(LeaderClock::new(super::wall_clock_us));
        clock.live_after(log.last_index());
        sm.feed_clock(clock.clone());
        let network = PeerNetwork::new(s.peer_source_ip, s.peer_tls.clone());
        let raft = Raft::new(
            s.id,
            Arc::new(config),
            network.clone(),
            log.clone(),
            sm.clone(),
        )
        .await
        .context("starting the Raft node")?;
        network.attach(raft.clone(), table.clone());
        let (proposals, proposals_rx) = mpsc::unbounded_channel();
        let (read_index, read_index_rx) = mpsc::unbounded_channel();
        let (lease, lease_rx) = mpsc::unbounded_channel();
        let (remote_reads, remote_reads_rx) = mpsc::unbounded_channel();
        let (forwards, forwards_rx) = mpsc::channel(super::forward::QUEUE);
        let forwarder = super::forward::forward_loop(
            s.id,
            raft.clone(),
            network.clone(),
            crate::raft::FORWARD_TIMEOUT,
            forwards_rx,
        );
        let remote = RemoteReads {
            id: s.id,
            raft: raft.clone(),
            network,
            local: read_index.clone(),
        };
        let batchers = vec![
            tokio::spawn(forwarder),
            tokio::spawn(follower_read::remote_read_loop(remote, remote_reads_rx)),
            tokio::spawn(batch::propose_loop(raft.clone(), proposals_rx)),
            tokio::spawn(batch::read_loop(
                raft.clone(),
                ReadPolicy::ReadIndex.into(),
                READ_INDEX_ROUNDS,
                read_index_rx,
            )),
            tokio::spawn(batch::read_loop(
                raft.clone(),
                // A lease younger than `lease_read_age` (not openraft's
                // default, MAX): the margin for clocks that drift. Past it,
                // the read asks for a heartbeat round and waits for it, at
                // most MIN: a leader cut off from its quorum answers soon.
                LinearizerOption::new(Some(s.timing.lease_read_age()), true)
                    .with_wait_timeout(s.timing.leader_suspect_after()),
                1,
                lease_rx,
            )),
        ];
        Ok(Node {
            inner: Arc::new(Inner {
                id: s.id,
                advertise: s.advertise.clone(),
                durability: s.durability,
                raft,
                table,
                sm,
                log,
                recovered: AtomicBool::new(false),
                contact: Arc::new(LeaderContact::default()),
                timing: s.timing,
                clock,
                leader_changes: Mutex::default(),
                proposals,
                read_index,
                lease,
                remote_reads,
                forwards,
                batchers: Mutex::new(batchers),
                reservations: Reservations::default(),
            }),
        })
    }

    /// The time to stamp into a command this node proposes (ms since the
    /// Unix epoch): the leader's clock, which follows the wall clock only
    /// gradually and never goes back (see `clock`).
    pub fn stamp(&self) -> u64 {
        self.inner.clock.stamp(self.inner.table.last_stamp_ms())
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The address peers and clients use to reach this node.
    pub fn advertise(&self) -> &super::MemberAddr {
        &self.inner.advertise
    }

    pub fn durability(&self) -> Durability {
        self.inner.durability
    }

    /// The replicated table this node applies committed commands to. Read
    /// it directly only after [`Node::read_barrier`].
    pub fn table(&self) -> &Arc<Table> {
        &self.inner.table
    }

    /// Where admitted writes reserve their bytes until they are answered.
    pub fn reservations(&self) -> &Reservations {
        &self.inner.reservations
    }

    /// What this node holds in memory, part by part: the account the memory
    /// budget, `/metrics` and the status read.
    pub fn memory_use(&self) -> MemoryUse {
        let t = &self.inner.table;
        MemoryUse {
            records: t.memory_bytes() as u64,
            outbox: t.outbox_bytes() as u64,
            dead_letters: t.dead_letter_bytes() as u64,
            request_ids: t.request_id_bytes(),
            watch_window: t.events().bytes(),
            raft_log: self.inner.log.bytes(),
            snapshot: self.inner.sm.snapshot_bytes(),
            reserved: self.inner.reservations.bytes(),
        }
    }

    /// The peer RPC service that feeds incoming Raft messages to this node;
    /// its replication streams end on `stop`.
    /// `forward` serves the writes followers forward to it while it leads.
    pub fn peer_service(
        &self,
        stop: crate::shutdown::Shutdown,
        forward: super::ForwardHandler,
    ) -> PeerService {
        PeerService::new(
            self.inner.raft.clone(),
            self.inner.contact.clone(),
            self.inner.sm.snapshot_reservations(),
            stop,
            self.inner.read_index.clone(),
            forward,
        )
    }

    /// Queues a write that a client gave this follower (opaque here, see
    /// `api::forward`) for the leader this node knows (`forward`): queued
    /// when called, in the order of the calls, and answered with the
    /// leader's answer.
    pub fn forward_to_leader(
        &self,
        payload: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<(NodeId, Vec<u8>), ForwardError>> + Send + 'static
    {
        let (reply, answer) = oneshot::channel();
        let queued = self.inner.forwards.try_send(Forward { payload, reply });
        async move {
            match queued {
                Ok(()) => answer.await.unwrap_or(Err(ForwardError::Stopped)),
                Err(mpsc::error::TrySendError::Full(_)) => Err(ForwardError::Busy),
                Err(mpsc::error::TrySendError::Closed(_)) => Err(ForwardError::Stopped),
            }
        }
    }

    /// Proposes `cmd` through the log and returns what applying it produced.
    /// Only the leader accepts proposals; elsewhere the error names it.
    /// Concurrent proposals are batched (see `batch`); each still gets its
    /// own log entry, revision and outcome.
    pub async fn propose(&self, cmd: Command) -> Result<Outcome, Error> {
        self.await_quorum_lease().await;
        let metrics = &crate::metrics::METRICS;
        metrics.proposals_pending.inc();
        let (reply, answer) = oneshot::channel();
        let written = match self.inner.proposals.send(Proposal { cmd, reply }) {
            Ok(()) => Self::answer(answer).await,
            Err(_) => Err(Error::Stopped("the proposal batcher has stopped".into())),
        };
        metrics.proposals_pending.dec();
        if written.is_err() {
            metrics.proposals_failed.inc();
        }
        written
    }

    /// On a leader whose quorum lease is not valid, waits (at most
    /// `Timing::leader_suspect_after`) until a quorum acknowledges it.
    /// openraft refuses proposals without a valid lease, as a "no leader"
    /// redirect; a leader just elected has none until its first round trip,
    /// so without this wait the first writes after every election would
    /// bounce back to their clients, to be retried after a backoff. A leader
    /// cut off from the quorum still refuses after the wait.
    async fn await_quorum_lease(&self) {
        let lease = Duration::from_millis(self.inner.timing.election_ms.1);
        // A lone voter is its own quorum: openraft lets it write without
        // acknowledgements, and reports none.
        let valid = |m: &openraft::RaftMetrics<super::TypeConfig>| {
            m.state != ServerState::Leader
                || m.membership_config.membership().voter_ids().count() == 1
                || m.last_quorum_acked
                    .as_ref()
                    .is_some_and(|t| openraft::Instant::elapsed(&**t) < lease)
        };
        let mut rx = self.inner.raft.metrics();
        if valid(&rx.borrow_watched()) {
            return;
        }
        let give_up = tokio::time::Instant::now() + self.inner.timing.leader_suspect_after();
        loop {
            let next = (tokio::time::Instant::now() + Duration::from_millis(5)).min(give_up);
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep_until(next) => {}
            }
            if valid(&rx.borrow_watched()) || tokio::time::Instant::now() >= give_up {
                return;
            }
        }
    }

    async fn answer<T>(rx: oneshot::Receiver<Result<T, Error>>) -> Result<T, Error> {
        rx.await
            .unwrap_or_else(|_| Err(Error::Stopped("the node is shutting down".into())))
    }

    /// The read index of the next batched round of `queue` (ReadIndex or
    /// lease), on the leader.
    async fn batched_read(&self, queue: &mpsc::UnboundedSender<Reply<u64>>) -> Result<u64, Error> {
        let (reply, answer) = oneshot::channel();
        match queue.send(reply) {
            Ok(()) => Self::answer(answer).await,
            Err(_) => Err(Error::Stopped("the read batcher has stopped".into())),
        }
    }

    /// The leader's read index, asked for by this follower or learner in
    /// the next batched round (`follower_read`), by `deadline`.
    async fn remote_read_index(&self, deadline: tokio::time::Instant) -> Result<u64, Error> {
        let (reply, answer) = oneshot::channel();
        if self
            .inner
            .remote_reads
            .send(Waiter { deadline, reply })
            .is_err()
        {
            return Err(Error::Stopped(
                "the follower read batcher has stopped".into(),
            ));
        }
        match tokio::time::timeout_at(deadline, Self::answer(answer)).await {
            Ok(answer) => answer,
            Err(_) => Err(Error::Unavailable(
                "linearizable read: no read index from the leader within the read's deadline; this node \
                 does not serve unconfirmed local state. Retry, or read from another node"
                    .into(),
            )),
        }
    }

    /// Waits, until `deadline`, for the state machine to apply `index`.
    async fn await_applied(&self, index: u64, deadline: tokio::time::Instant) -> Result<(), Error> {
        let applied = || {
            let rx = self.inner.raft.metrics();
            let m = rx.borrow_watched();
            m.last_applied.as_ref().map_or(0, |l| l.index)
        };
        if applied() >= index {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match self
            .inner
            .raft
            .wait(Some(left))
            .applied_index_at_least(Some(index), "read index applied")
            .await
        {
            Ok(_) => Ok(()),
            Err(openraft::metrics::WaitError::ShuttingDown) => {
                Err(Error::Stopped("the Raft core has stopped".into()))
            }
            Err(openraft::metrics::WaitError::Timeout(..)) => Err(Error::Unavailable(format!(
                "linearizable read: this node has applied the log up to index {}, short of the read index \
                 {index}, within the read's deadline (it is catching up); read from another node",
                applied()
            ))),
        }
    }

    /// `Ok` once a quorum has confirmed, after this call began, that this
    /// node leads (one ReadIndex round), and this node has applied what was
    /// committed then: the fence of the leader's duties that act outside the
    /// log (the hand-off). Elsewhere, `NotLeader`. Unlike a LINEARIZABLE read
    /// barrier, never satisfied on a follower.
    pub async fn confirm_leadership(&self) -> Result<(), Error> {
        if !self.is_leader() {
            let (leader, address) = self.known_leader();
            return Err(Error::NotLeader {
                leader: leader.zip(address),
            });
        }
        let deadline = tokio::time::Instant::now() + self.inner.timing.read_within();
        let index = self.batched_read(&self.inner.read_index).await?;
        self.await_applied(index, deadline).await
    }

    /// Returns once the local table may be read at `consistency`, or why not.
    /// `wait`: as for `leader_only`, for the reads only the leader serves
    /// (LEASE). `timeout`: the read's own deadline, if it has one (a unary
    /// call's `grpc-timeout`); else `Timing::read_within`.
    ///
    /// LINEARIZABLE reads are served by every member: the leader after its
    /// ReadIndex round, a follower or learner after the leader's
    /// (`follower_read`); both once the read index is applied locally.
    pub async fn read_barrier(
        &self,
        consistency: Consistency,
        wait: LeaderWait,
        timeout: Option<Duration>,
    ) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now()
            + match timeout {
                // Leave a tenth for the answer to travel back in time.
                Some(t) => t.saturating_sub(t / 10),
                None => self.inner.timing.read_within(),
            };
        match consistency {
            // The chaos suite's planted bug: a "linearizable" read that is not.
            #[cfg(feature = "planted-bug-stale-reads")]
            Consistency::Linearizable => Ok(()),
            #[cfg(not(feature = "planted-bug-stale-reads"))]
            Consistency::Linearizable => {
                let on_leader = if self.is_leader() {
                    match self.batched_read(&self.inner.read_index).await {
                        Err(Error::NotLeader { .. }) => None,
                        other => Some(other?),
                    }
                } else {
                    None
                };
                let index = match on_leader {
                    Some(index) => index,
                    None => {
                        let index = self.remote_read_index(deadline).await?;
                        // The chaos suite's second planted bug: a follower
                        // that reads before it has applied the read index.
                        if cfg!(feature = "planted-bug-follower-reads") {
                            return Ok(());
                        }
                        index
                    }
                };
                self.await_applied(index, deadline).await
            }
            Consistency::Lease => {
                self.leader_only(wait).await?;
                // The chaos suite's third planted bug: a leader that reads
                // without checking its lease.
                if cfg!(feature = "planted-bug-lease-reads") {
                    return Ok(());
                }
                let index = self.batched_read(&self.inner.lease).await?;
                self.await_applied(index, deadline).await
            }
            Consistency::Stale { max_staleness_ms } => {
                if !self.is_recovered() {
                    return Err(Error::Unavailable(
                        "node is still replaying its log after a restart; a local read could be older than one \
                         it served before. Retry, or read from another node"
                            .into(),
                    ));
                }
                match max_staleness_ms {
                    Some(max) => self.check_staleness(max),
                    None => Ok(()),
                }
            }
        }
    }

    /// A leader is as fresh as what its quorum last acknowledged, once it has
    /// applied an entry of its own term (before that it may lack writes its
    /// predecessor acknowledged); a follower as the leader's latest echo of
    /// its clock whose index it has applied (`contact`).
    fn check_staleness(&self, max: u64) -> Result<(), Error> {
        let leader_age = {
            let rx = self.inner.raft.metrics();
            let m = rx.borrow_watched();
            super::contact::leader_confirmed_ago(&m).map(|ago| ago.map(|d| d.as_millis() as u64))
        };
        let (age, source) = match leader_age {
            Some(age) => (age, "confirmed its leadership with a quorum"),
            None => (
                self.inner
                    .contact
                    .fresh_millis_since(self.inner.table.revision()),
                "had the leader confirm its state",
            ),
        };
        match age {
            Some(s) if s <= max => Ok(()),
            Some(s) => Err(Error::Unavailable(format!(
                "max_staleness_ms: this node last {source} {s} ms ago, more than {max} ms; read from another node"
            ))),
            None => Err(Error::Unavailable(format!(
                "max_staleness_ms: this node has not {source} yet; read from another node"
            ))),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.inner.raft.is_leader()
    }

    /// The failover timing this node runs with.
    pub fn timing(&self) -> super::Timing {
        self.inner.timing
    }

    /// `Ok` on the leader; elsewhere the error that names the leader.
    ///
    /// With `LeaderWait::Hold`, only once this node's view of the leader is
    /// fresh: while it knows no leader, or has not heard from the one it
    /// knows for `Timing::leader_suspect_after`, it waits (at most
    /// `Timing::election_settles_within`) until it hears from a leader again
    /// or becomes one. A client that came here because the leader stopped
    /// answering then learns the next leader the moment there is one,
    /// instead of being sent back to the silent one or told to retry later.
    /// Past the wait it answers with what it knows.
    pub async fn leader_only(&self, wait: LeaderWait) -> Result<(), Error> {
        let suspect_after = self.inner.timing.leader_suspect_after().as_millis() as u64;
        let give_up = tokio::time::Instant::now() + self.inner.timing.election_settles_within();
        let mut changes = self.inner.raft.metrics();
        // A leader's heartbeats arrive every `heartbeat_ms`: look again at
        // least that often, since hearing from one is not a metrics change.
        let tick = Duration::from_millis(self.inner.timing.heartbeat_ms.max(5));
        loop {
            if self.is_leader() {
                return Ok(());
            }
            let (leader, address) = self.known_leader();
            let fresh = self
                .inner
                .contact
                .millis_since()
                .is_some_and(|ms| ms <= suspect_after);
            if wait == LeaderWait::Answer
                || (leader.is_some() && fresh)
                || tokio::time::Instant::now() >= give_up
            {
                return Err(Error::NotLeader {
                    leader: leader.zip(address),
                });
            }
            let next = (tokio::time::Instant::now() + tick).min(give_up);
            tokio::select! {
                changed = changes.changed() => if changed.is_err() {
                    return Err(Error::Stopped("the Raft core has stopped".into()));
                },
                _ = tokio::time::sleep_until(next) => {}
            }
        }
    }

    /// The leader this node believes in and its client address, if known.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let (id, address) = self.known_leader();
        id.zip(address)
    }

    /// The leader this node believes in, and its client address.
    fn known_leader(&self) -> (Option<NodeId>, Option<String>) {
        let rx = self.inner.raft.metrics();
        let m = rx.borrow_watched();
        let address = m.current_leader.and_then(|l| {
            m.membership_config
                .membership()
                .get_node(&l)
                .map(|n| super::MemberAddr::stored(&n.addr).client)
        });
        (m.current_leader, address)
    }

    pub fn status(&self) -> Status {
        let m = self.inner.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let is_leader = m.state == ServerState::Leader;
        let members = membership
            .nodes()
            .map(|(id, n)| Member {
                id: *id,
                address: super::MemberAddr::stored(&n.addr).client,
                peer_address: super::MemberAddr::stored(&n.addr).peer,
                voter: voters.contains(id),
                last_ack_ms: if *id == self.inner.id && is_leader {
                    Some(0)
                } else {
                    m.heartbeat.as_ref().and_then(|h| {
                        h.get(id)
                            .and_then(|t| t.as_ref())
                            .map(|t| openraft::Instant::elapsed(&**t).as_millis() as u64)
                    })
                },
            })
            .collect::<Vec<_>>();
        let role = match m.state {
            ServerState::Leader => Role::Leader,
            ServerState::Candidate => Role::Candidate,
            ServerState::Shutdown => Role::Shutdown,
            ServerState::Learner => Role::Learner,
            ServerState::Follower if voters.contains(&self.inner.id) => Role::Follower,
            ServerState::Follower => Role::Learner,
        };
        let leader_contact_ms = if is_leader {
            m.last_quorum_acked
                .as_ref()
                .map(|t| openraft::Instant::elapsed(&**t).as_millis() as u64)
        } else {
            self.inner.contact.millis_since()
        };
        Status {
            id: self.inner.id,
            role,
            term: m.current_term,
            leader: m.current_leader,
            leader_address: m.current_leader.and_then(|l| {
                membership
                    .get_node(&l)
                    .map(|n| super::MemberAddr::stored(&n.addr).client)
            }),
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            committed_index: m.cluster_committed.map(|c| c.index).unwrap_or(0),
            snapshot_index: self.inner.sm.snapshot_index().unwrap_or(0),
            members,
            leader_contact_ms,
            heartbeat_ms: self.inner.raft.config().heartbeat_interval,
        }
    }

    /// Milliseconds since this node last heard from the leader; on the leader,
    /// since a quorum last acknowledged it. `None` if never.
    pub fn leader_contact_ms(&self) -> Option<u64> {
        self.status().leader_contact_ms
    }

    /// The log index of the last snapshot this node holds (0 if none).
    pub fn snapshot_index(&self) -> u64 {
        self.inner.sm.snapshot_index().unwrap_or(0)
    }

    pub fn is_recovered(&self) -> bool {
        self.inner.recovered.load(Ordering::Acquire)
    }

    /// Whether this node has never voted nor held a log entry.
    pub fn is_pristine(&self) -> bool {
        self.inner.log.is_pristine()
    }

    /// The most recent leader changes this node saw, oldest first.
    pub fn leader_changes(&self) -> Vec<LeaderChange> {
        self.inner.leader_changes.lock().iter().copied().collect()
    }

    /// Waits (as long as it takes) for the state machine to catch up with the
    /// cluster's commit point, then marks the node recovered.
    pub async fn await_recovery(&self) {
        match self.inner.raft.wait_for_recovery(None).await {
            Ok(m) => {
                self.inner.recovered.store(true, Ordering::Release);
                tracing::info!(applied = ?m.last_applied.map(|l| l.index), "state machine caught up with the cluster");
            }
            Err(e) => tracing::warn!(error = %e, "waiting for recovery stopped"),
        }
    }

    /// Records and logs every leader change this node sees, until the Raft
    /// core stops.
    pub async fn track_leader_changes(&self) {
        let mut rx = self.inner.raft.metrics();
        let mut last: Option<NodeId> = None;
        loop {
            let (leader, term) = {
                let m = rx.borrow_and_update();
                (m.current_leader, m.current_term)
            };
            if leader != last {
                if leader.is_some() {
                    crate::metrics::METRICS.leader_changes.inc();
                }
                {
                    let mut seen = self.inner.leader_changes.lock();
                    seen.push_back(LeaderChange {
                        at_ms: super::wall_clock_ms(),
                        term,
                        leader,
                    });
                    while seen.len() > LEADER_CHANGES_KEPT {
                        seen.pop_front();
                    }
                }
                match leader {
                    Some(l) => tracing::info!(leader = l, term, "leader changed"),
                    None => tracing::info!(term, "no leader"),
                }
                last = leader;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Initializes a new cluster with `members` if this node is the one that
    /// should (the lowest id) and its store is pristine. Returns whether it did.
    pub async fn initialize_if_first(
        &self,
        members: &BTreeMap<NodeId, super::MemberAddr>,
    ) -> anyhow::Result<bool> {
        let Some((&lowest, _)) = members.first_key_value() else {
            return Ok(false);
        };
        if !members.contains_key(&self.inner.id) {
            bail!(
                "--initial-cluster does not list this node's id {}",
                self.inner.id
            );
        }
        if lowest != self.inner.id || !self.is_pristine() {
            return Ok(false);
        }
        let nodes: BTreeMap<NodeId, super::PeerNode> = members
            .iter()
            .map(|(id, a)| {
                (
                    *id,
                    super::PeerNode {
                        addr: a.to_string(),
                    },
                )
            })
            .collect();
        self.inner
            .raft
            .initialize(nodes)
            .await
            .context("initializing the cluster")?;
        tracing::info!(members = ?members, "initialized a new cluster");
        Ok(true)
    }

    /// Adds a non-voting member (leader only); returns once it is committed.
    pub async fn add_learner(&self, id: NodeId, address: &super::MemberAddr) -> Result<(), Error> {
        self.inner
            .raft
            .add_learner(
                id,
                super::PeerNode {
                    addr: address.to_string(),
                },
                false,
            )
            .await?;
        Ok(())
    }

    /// Turns a learner into a voter (leader only).
    pub async fn promote(&self, id: NodeId) -> Result<(), Error> {
        self.inner
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await?;
        Ok(())
    }

    /// Removes a member, voter or learner (leader only).
    pub async fn remove(&self, id: NodeId, voter: bool) -> Result<(), Error> {
        let change = if voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.inner.raft.change_membership(change, false).await?;
        Ok(())
    }

    /// Hands leadership to voter `to` and waits up to `wait` for it to lead.
    pub async fn transfer_leader(&self, to: NodeId, wait: Duration) -> Result<(), Error> {
        self.inner
            .raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| Error::Stopped(e.to_string()))?;
        let waited = self
            .inner
            .raft
            .wait(Some(wait))
            .metrics(|m| m.current_leader == Some(to), "leader transfer")
            .await;
        if waited.is_err() {
            let now = self.status().leader;
            return Err(Error::Unavailable(format!(
                "node {to} did not take over within {wait:?} (leader now: {now:?}); it may be lagging or \
                 unreachable"
            )));
        }
        Ok(())
    }

    /// If this node leads, hands leadership to the voter that has acknowledged
    /// it most recently and waits up to `wait`. Used on shutdown so that
    /// clients see a new leader at once instead of after an election timeout.
    pub async fn hand_over_leadership(&self, wait: Duration) {
        if !self.is_leader() {
            return;
        }
        let s = self.status();
        let to = s
            .voters()
            .filter(|m| m.id != s.id)
            .filter_map(|m| m.last_ack_ms.map(|ack| (ack, m.id)))
            .min()
            .map(|(_, id)| id);
        let Some(to) = to else {
            tracing::info!("shutdown: no other voter to hand leadership to");
            return;
        };
        match self.transfer_leader(to, wait).await {
            Ok(()) => tracing::info!(to, "shutdown: handed leadership over"),
            Err(e) => tracing::warn!(to, error = %e, "shutdown: leadership hand-over failed"),
        }
    }

    /// Asks for a snapshot to be built now (it is built in the background).
    pub async fn trigger_snapshot(&self) -> Result<(), Error> {
        self.inner
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| Error::Stopped(e.to_string()))
    }

    /// Asks for the log to be purged up to `index` (at most the snapshot's
    /// index), whatever `max_in_snapshot_log_to_keep` says: the compaction
    /// duty uses it once the log's bytes pass their share of the budget.
    /// The leader purges only what no replication still reads.
    pub async fn purge_log(&self, index: u64) -> Result<(), Error> {
        self.inner
            .raft
            .trigger()
            .purge_log(index)
            .await
            .map_err(|e| Error::Stopped(e.to_string()))
    }

    /// Why the Raft core is dead, or `None` while it runs. A dead core
    /// (a fatal storage error, a panic, or a shutdown) never comes back: the
    /// process must exit so that its supervisor restarts it.
    pub fn dead_reason(&self) -> Option<String> {
        let rx = self.inner.raft.metrics();
        let m = rx.borrow_watched();
        dead_reason_of(&m.running_state, m.state)
    }

    /// Resolves, with the cause, once the Raft core has died; never while it
    /// runs. The process wiring selects on it beside the stop signal.
    pub async fn fatal(&self) -> String {
        let mut rx = self.inner.raft.metrics();
        loop {
            if let Some(why) = {
                let m = rx.borrow_and_update();
                dead_reason_of(&m.running_state, m.state)
            } {
                return why;
            }
            // The sender goes away only when the core task has ended.
            if rx.changed().await.is_err() {
                return self
                    .dead_reason()
                    .unwrap_or_else(|| "the Raft core task ended".into());
            }
        }
    }

    /// Stops the Raft core, then the batchers. Proposals and reads fail from
    /// then on.
    pub async fn shutdown(&self) {
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        let batchers = std::mem::take(&mut *self.inner.batchers.lock());
        for task in batchers {
            task.abort();
            let _ = task.await;
        }
    }
}

fn dead_reason_of(
    running: &Result<(), openraft::errors::Fatal<super::TypeConfig>>,
    state: ServerState,
) -> Option<String> {
    match (running, state) {
        (Err(openraft::errors::Fatal::Stopped), _) => Some("the Raft core was shut down".into()),
        (Err(e), _) => Some(format!("the Raft core stopped on a fatal error: {e}")),
        (Ok(()), ServerState::Shutdown) => Some("the Raft core is shut down".into()),
        (Ok(()), _) => None,
    }
}
