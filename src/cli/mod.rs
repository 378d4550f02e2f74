//! The `inflight` command line: `serve` and `dev` run nodes, `certs`
//! makes their certificates; every other command is a thin call through
//! `crate::client`.

pub mod certs;
mod commands;
mod demo;
mod dev;
mod health;
pub mod serve_args;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::api::{Limits, Retention};
use crate::duties::expiry::ExpirySettings;
use crate::duties::handoff::HandoffSettings;
use crate::handoff::SinkSpec;
use crate::node::{HandoffOptions, ServeOptions};

use crate::raft::Durability;
use crate::raft::RaftSettings;
use crate::state::ExpiredMode;
use crate::state::WindowLimits;
use crate::wire::MemberAddr;

#[derive(Parser, Debug)]
#[command(
    name = "inflight",
    version,
    about = "A Raft-replicated, in-memory store for in-flight operations"
)]
pub struct Cli {
    /// Cluster endpoints (HOST:PORT, comma-separated) for client commands.
    #[arg(
        long,
        global = true,
        env = "INFLIGHT_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7001"
    )]
    pub endpoints: Vec<String>,

    /// Connect over TLS, trusting this CA certificate (PEM) for the nodes'
    /// client gRPC and HTTP ports (client commands and `health`).
    // The ids differ from the long names: `key` is also the positional
    // argument of insert, get and the other record commands.
    #[arg(
        long = "cacert",
        id = "tls_cacert",
        global = true,
        env = "INFLIGHT_CACERT"
    )]
    pub cacert: Option<PathBuf>,

    /// This client's certificate (PEM), for clusters whose nodes ask for one
    /// (`serve --trusted-ca-file`). Needs --key and --cacert.
    #[arg(
        long = "cert",
        id = "tls_cert",
        global = true,
        env = "INFLIGHT_CERT",
        requires = "tls_key"
    )]
    pub cert: Option<PathBuf>,

    /// The private key (PEM) of --cert.
    #[arg(
        long = "key",
        id = "tls_key",
        global = true,
        env = "INFLIGHT_KEY",
        requires = "tls_cert"
    )]
    pub key: Option<PathBuf>,

    /// Log format of `serve` and `dev`.
    #[arg(
        long,
        global = true,
        env = "INFLIGHT_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
// Parsed once per process; boxing the serve arguments would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run one node.
    // A flag given twice takes the last value: the settings of --config are
    // spliced in before the command line's, which must win.
    #[command(args_override_self = true)]
    Serve(ServeArgs),
    /// Run a local cluster of child processes (3 nodes by default).
    Dev(dev::DevArgs),
    /// One row per member: role, term, log and applied index.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Create a record; fails if the key exists.
    Insert {
        key: String,
        value: String,
        /// Expire the record this long after the insert (e.g. 30s, 5m).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        #[command(flatten)]
        id: RequestIdArg,
    },
    /// Replace the value of a LIVE record.
    Update {
        key: String,
        value: String,
        #[arg(long)]
        if_version: Option<u64>,
        /// Reset the deadline to this long from now.
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "clear_ttl")]
        ttl: Option<Duration>,
        /// Remove the deadline.
        #[arg(long)]
        clear_ttl: bool,
        #[command(flatten)]
        id: RequestIdArg,
    },
    /// Read one record.
    Get {
        key: String,
        #[command(flatten)]
        read: ReadArgs,
        #[arg(long)]
        json: bool,
    },
    /// List records under a prefix, in key order.
    Scan {
        prefix: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Continue after this key.
        #[arg(long, default_value = "")]
        after: String,
        #[command(flatten)]
        read: ReadArgs,
        #[arg(long)]
        json: bool,
    },
    /// Remove a LIVE record without hand-off.
    Delete {
        key: String,
        #[arg(long)]
        if_version: Option<u64>,
        #[command(flatten)]
        id: RequestIdArg,
    },
    /// Freeze a record (optionally with a final value).
    Complete {
        key: String,
        value: Option<String>,
        #[arg(long)]
        if_version: Option<u64>,
        #[command(flatten)]
        id: RequestIdArg,
    },
    /// Apply several mutations atomically, from a JSON file (or - for stdin):
    /// [{"op":"insert","key":"k","value":"v","ttl":"30s"},
    ///  {"op":"update","key":"k","value":"v2","if_version":1},
    ///  {"op":"delete","key":"x"}, {"op":"complete","key":"y","value":"done"}]
    Batch {
        file: String,
        #[command(flatten)]
        id: RequestIdArg,
        #[arg(long)]
        json: bool,
    },
    /// Stream change events under a prefix until interrupted.
    Watch {
        prefix: String,
        /// Start from this revision (events still in the node's window).
        #[arg(long, default_value_t = 0)]
        from_revision: u64,
        /// Print each event as a JSON line.
        #[arg(long)]
        json: bool,
        /// Print progress notifications too.
        #[arg(long)]
        progress: bool,
    },
    /// Cluster membership.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Leadership.
    #[command(subcommand)]
    Leader(LeaderCommand),
    /// Records the sink refused for good (dead letters).
    #[command(subcommand)]
    Handoff(HandoffCommand),
    /// Probe a node's HTTP endpoint (/readyz by default): exit 0 on HTTP 200,
    /// 1 otherwise. For health checks where there is no curl (the container
    /// image has nothing but this binary).
    Health {
        /// The node's --http address; an unspecified IP (0.0.0.0, [::])
        /// means this host, so a container's own INFLIGHT_HTTP works as is.
        #[arg(long, env = "INFLIGHT_HTTP", default_value = "127.0.0.1:8001")]
        http: String,
        /// The path to probe: /readyz (ready to serve) or /livez (running).
        #[arg(long, default_value = "/readyz")]
        path: String,
        /// Give up (and fail) after this long.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Certificates for TLS: a CA, node and client certificates.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
}

#[derive(Subcommand, Debug)]
pub enum HandoffCommand {
    /// List records the sink refused, with its error, oldest first.
    Failed {
        /// At most this many (all when 0).
        #[arg(long, default_value_t = 0)]
        limit: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Put refused records back in the hand-off queue (after fixing the
    /// sink or its schema); a record refused again is set aside again.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["keys", "all"])))]
    Retry {
        keys: Vec<String>,
        /// Every refused record.
        #[arg(long)]
        all: bool,
    },
    /// Remove refused records from memory without hand-off. Their data is
    /// gone from the cluster; the decision is logged by the leader.
    Drop {
        #[arg(required = true)]
        keys: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// Members with their addresses and whether they vote.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Add a node as a non-voting learner, reached at CLIENT_HOST:PORT/PEER_HOST:PORT.
    AddLearner {
        id: u64,
        #[arg(value_parser = crate::wire::MemberAddr::parse)]
        address: crate::wire::MemberAddr,
    },
    /// Make a learner a voter.
    Promote { id: u64 },
    /// Remove a member. Refused if the remaining voters would lack a
    /// reachable quorum, unless --force.
    Remove {
        id: u64,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum LeaderCommand {
    /// Hand leadership to voter ID.
    Transfer { id: u64 },
}

#[derive(Args, Debug, Clone, Default)]
pub struct RequestIdArg {
    /// Name this mutation for deduplication: a retry with the same id is
    /// answered, not applied again (default: a fresh UUIDv7).
    #[arg(long)]
    pub request_id: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct ReadArgs {
    #[arg(long, value_enum, default_value = "linearizable")]
    pub consistency: ConsistencyArg,
    /// STALE reads: refuse if the serving node last heard from the leader longer ago (e.g. 500ms).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_staleness: Option<Duration>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ConsistencyArg {
    Linearizable,
    Lease,
    Stale,
}

impl From<ConsistencyArg> for crate::pb::Consistency {
    fn from(c: ConsistencyArg) -> Self {
        match c {
            ConsistencyArg::Linearizable => crate::pb::Consistency::Linearizable,
            ConsistencyArg::Lease => crate::pb::Consistency::Lease,
            ConsistencyArg::Stale => crate::pb::Consistency::Stale,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// A TOML file of serve settings, keyed by flag name (`id = 1`,
    /// `data_dir = "..."`, `initial_cluster = "1=...,2=..."`). Flags on the
    /// command line override it; it overrides INFLIGHT_* environment
    /// variables (every serve flag has one: --data-dir is INFLIGHT_DATA_DIR).
    #[arg(long, env = "INFLIGHT_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id (1 or more), unique in the cluster.
    #[arg(long, env = "INFLIGHT_ID")]
    pub id: u64,
    /// Where the Raft log, vote and snapshots live.
    #[arg(long, env = "INFLIGHT_DATA_DIR")]
    pub data_dir: PathBuf,
    /// gRPC address for clients (the InFlight and Cluster services).
    #[arg(long, env = "INFLIGHT_LISTEN", default_value = "127.0.0.1:7001")]
    pub listen: SocketAddr,
    /// gRPC address for the other members (the Raft service only).
    #[arg(long, env = "INFLIGHT_PEER_LISTEN", default_value = "127.0.0.1:7101")]
    pub peer_listen: SocketAddr,
    /// Address clients use to reach this node (default: --listen).
    #[arg(long, env = "INFLIGHT_ADVERTISE")]
    pub advertise: Option<String>,
    /// Address the other members use to reach this node (default: --peer-listen).
    #[arg(long, env = "INFLIGHT_ADVERTISE_PEER")]
    pub advertise_peer: Option<String>,
    /// HTTP address for /livez, /readyz, /status, /metrics, /cluster and the status page at /.
    #[arg(long, env = "INFLIGHT_HTTP")]
    pub http: Option<SocketAddr>,
    /// Redis protocol (RESP2/RESP3) address for clients: the same records,
    /// limits, TLS and roles as --listen (README "The Redis protocol").
    #[arg(long, env = "INFLIGHT_RESP_LISTEN")]
    pub resp_listen: Option<SocketAddr>,
    /// The initial voters: ID=CLIENT_HOST:PORT/PEER_HOST:PORT,... (the
    /// lowest id initializes the cluster once).
    #[arg(long, env = "INFLIGHT_INITIAL_CLUSTER", conflicts_with = "join")]
    pub initial_cluster: Option<String>,
    /// Join an existing cluster as a learner through these endpoints.
    #[arg(long, env = "INFLIGHT_JOIN", value_delimiter = ',')]
    pub join: Vec<String>,
    #[arg(long, env = "INFLIGHT_DURABILITY", value_enum, default_value = "disk")]
    pub durability: Durability,
    /// The fewest applied entries between two snapshots; a large table waits
    /// for max(N, records / 8) entries, so snapshot work stays proportional.
    #[arg(long, env = "INFLIGHT_SNAPSHOT_EVERY", default_value_t = 10_000)]
    pub snapshot_every: u64,
    /// Largest value accepted, in bytes.
    #[arg(long, env = "INFLIGHT_MAX_VALUE_BYTES", default_value_t = crate::api::Limits::default().max_value_bytes)]
    pub max_value_bytes: usize,
    /// Leader heartbeat interval, in milliseconds (default: a third of the
    /// election timeout's MIN).
    #[arg(long, env = "INFLIGHT_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Election timeout range MIN..MAX in milliseconds: the one setting the
    /// failover timing derives from (README, "Tuning failover"). A follower
    /// also honours the old leader's lease (MAX) before it campaigns, so
    /// writes resume about MAX + a random MIN..MAX after a leader dies.
    #[arg(long, env = "INFLIGHT_ELECTION_TIMEOUT_MS", default_value = "150..300", value_parser = parse_range)]
    pub election_timeout_ms: (u64, u64),
    /// Source address of outgoing peer connections (default: chosen by the OS).
    #[arg(long, env = "INFLIGHT_PEER_SOURCE_IP")]
    pub peer_source_ip: Option<std::net::IpAddr>,
    /// What a LIVE record becomes when its TTL passes: kept as EXPIRED for
    /// hand-off, or dropped.
    #[arg(long, env = "INFLIGHT_EXPIRED", value_enum, default_value = "handoff")]
    pub expired: ExpiredMode,
    /// At most this many records expired per second (spread over 100 ms batches).
    #[arg(long, env = "INFLIGHT_EXPIRE_RATE", default_value_t = 5_000)]
    pub expire_rate: u32,
    /// Request ids (deduplication of retries) are forgotten once this old.
    #[arg(long, env = "INFLIGHT_REQUEST_ID_WINDOW", default_value = "10m", value_parser = humantime::parse_duration)]
    pub request_id_window: std::time::Duration,
    /// Request ids are kept at least this long: past --request-id-max-bytes,
    /// new tagged writes are refused with RESOURCE_EXHAUSTED rather than an
    /// id younger than this forgotten. Must cover the clients' longest retry
    /// (the Rust client: retry_for 20 s plus one 5 s request timeout).
    #[arg(long, env = "INFLIGHT_REQUEST_ID_MIN_WINDOW", default_value = "60s", value_parser = humantime::parse_duration)]
    pub request_id_min_window: std::time::Duration,
    /// The remembered request ids hold at most this much memory (about 220
    /// bytes per single-op request with a 36-byte id).
    #[arg(long, env = "INFLIGHT_REQUEST_ID_MAX_BYTES", default_value = "256MiB", value_parser = parse_size)]
    pub request_id_max_bytes: u64,
    /// Watch: how many recent events each node keeps for resuming watches.
    #[arg(long, env = "INFLIGHT_WATCH_WINDOW_EVENTS", default_value_t = 100_000)]
    pub watch_window_events: usize,
    /// Watch: how old the oldest kept event may be.
    #[arg(long, env = "INFLIGHT_WATCH_WINDOW_AGE", default_value = "10m", value_parser = humantime::parse_duration)]
    pub watch_window_age: std::time::Duration,
    /// Where completed and expired records are handed off: file:DIR,
    /// postgres:URL, webhook:URL or noop (default: file:DATA_DIR/postflight).
    #[arg(long, env = "INFLIGHT_SINK", value_parser = crate::handoff::SinkSpecParser)]
    pub sink: Option<SinkSpec>,
    /// A second sink fed beside the primary; its failures are counted and
    /// logged but never hold back eviction.
    #[arg(long, env = "INFLIGHT_SHADOW_SINK", value_parser = crate::handoff::SinkSpecParser)]
    pub shadow_sink: Option<SinkSpec>,
    /// PEM file of the CA certificates trusted by https webhook sinks and by
    /// PostgreSQL sinks with sslmode=verify-ca/verify-full whose URL names no
    /// sslrootcert; replaces the system's roots for them.
    #[arg(long, env = "INFLIGHT_SINK_CA_FILE")]
    pub sink_ca_file: Option<PathBuf>,
    /// What the node holds may reach this much memory: records (live and
    /// waiting for hand-off), request ids, the watch window (kept to an
    /// eighth of it), the Raft log not yet purged (snapshotted and purged at
    /// an eighth of it), a snapshot being built and admitted writes. Past it
    /// inserts and updates or completes that grow a value are refused with
    /// RESOURCE_EXHAUSTED (e.g. 512MiB, 2GiB).
    #[arg(long, env = "INFLIGHT_MEMORY_BUDGET", default_value = "2GiB", value_parser = parse_size)]
    pub memory_budget: u64,
    /// At most this many records per sink write.
    #[arg(long, env = "INFLIGHT_HANDOFF_BATCH", default_value_t = 500)]
    pub handoff_batch: usize,
    /// TLS certificate (PEM, leaf first) of the client gRPC and HTTP ports;
    /// with --key-file, both ports speak TLS only. Reloaded on SIGHUP.
    #[arg(long, env = "INFLIGHT_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of --cert-file.
    #[arg(long, env = "INFLIGHT_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// CA certificates (PEM) of clients: when set, the client gRPC and HTTP
    /// ports require a client certificate signed by one of them.
    #[arg(long, env = "INFLIGHT_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// TLS certificate (PEM) of the peer port, presented to peers both ways;
    /// it must carry the extended key usages serverAuth and clientAuth.
    #[arg(long, env = "INFLIGHT_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Private key (PEM) of --peer-cert-file.
    #[arg(long, env = "INFLIGHT_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// The cluster CA (PEM): a peer must present a certificate it signed,
    /// with EKU serverAuth (so a client certificate never passes).
    #[arg(long, env = "INFLIGHT_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Names (comma-separated) of which a peer certificate's CN or a DNS SAN
    /// must be one (default: any certificate of the cluster CA with serverAuth).
    #[arg(long, env = "INFLIGHT_PEER_ALLOWED_CN", value_delimiter = ',')]
    pub peer_allowed_cn: Vec<String>,
    /// Roles: a TOML file mapping client certificate names (CN or SAN) to
    /// roles that grant read, write and watch on key prefixes, and admin.
    /// Without it every client with a certificate may read, write and watch
    /// everything. Calls without a certificate (no TLS) are never refused.
    /// Read again on SIGHUP.
    #[arg(long, env = "INFLIGHT_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,
    /// Client certificate names (CN or SAN) that may use the admin RPCs
    /// (membership, leader transfer, dead letters), besides roles with
    /// `admin = true`.
    #[arg(long, env = "INFLIGHT_ADMIN_IDENTITIES", value_delimiter = ',')]
    pub admin_identities: Vec<String>,
    /// At most this many connections open on the gRPC port; past it a new
    /// connection is closed at once (logged, and counted in
    /// inflight_connections_refused_total).
    #[arg(long, env = "INFLIGHT_MAX_CONNECTIONS", default_value_t = crate::connections::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
}

/// The largest `--max-connections`: tokio's semaphore holds at most this
/// many permits, and no process has this many file descriptors.
const MAX_MAX_CONNECTIONS: usize = 1 << 28;

/// Parses a byte size: `1048576`, `512KiB`, `64MiB`, `2GiB`, `1GB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 512MiB, 2GiB, 1048576)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, KB, MB, GB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s.split_once("..").ok_or("expected MIN..MAX")?;
    let a: u64 = a.trim().parse().map_err(|e| format!("MIN: {e}"))?;
    let b: u64 = b.trim().parse().map_err(|e| format!("MAX: {e}"))?;
    if a == 0 || b <= a {
        return Err("need 0 < MIN < MAX".into());
    }
    Ok((a, b))
}

/// Parses `1=127.0.0.1:7001/127.0.0.1:7101,2=...`.
pub fn parse_initial_cluster(s: &str) -> Result<BTreeMap<u64, MemberAddr>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part.split_once('=').ok_or_else(|| {
            format!("--initial-cluster: {part:?} is not ID=CLIENT_HOST:PORT/PEER_HOST:PORT")
        })?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("--initial-cluster: {id:?} is not a node id"))?;
        if id == 0 {
            return Err("--initial-cluster: node ids start at 1".into());
        }
        let addr =
            MemberAddr::parse(addr).map_err(|e| format!("--initial-cluster: node {id}: {e}"))?;
        if out.insert(id, addr).is_some() {
            return Err(format!("--initial-cluster: node {id} is listed twice"));
        }
    }
    if out.is_empty() {
        return Err("--initial-cluster: no members given".into());
    }
    Ok(out)
}

/// Refuses a value limit whose log entries could outgrow a peer message.
fn check_max_value_bytes(max: usize) -> Result<(), String> {
    use crate::raft::{
        APPEND_ENTRIES_MAX, ENTRY_OVERHEAD_BYTES, MAX_VALUE_BYTES_BOUND, PEER_MESSAGE_BYTES,
    };
    if max > MAX_VALUE_BYTES_BOUND {
        return Err(format!(
            "--max-value-bytes: {max} exceeds the limit of {MAX_VALUE_BYTES_BOUND} bytes: a batch may \
             carry {factor} x this in one log entry, and one AppendEntries message between nodes carries \
             up to {APPEND_ENTRIES_MAX} entries (each with up to {ENTRY_OVERHEAD_BYTES} bytes of keys \
             and framing) within the {PEER_MESSAGE_BYTES}-byte peer message limit; a larger value \
             could stop replication",
            factor = crate::api::BATCH_VALUE_FACTOR,
        ));
    }
    Ok(())
}

impl ServeArgs {
    /// The TLS flags as whole configurations (see `TlsOptions::from_flags`).
    pub fn tls_options(&self) -> Result<crate::tls::TlsOptions, String> {
        crate::tls::TlsOptions::from_flags(crate::tls::TlsFlags {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            trusted_ca_file: self.trusted_ca_file.clone(),
            peer_cert_file: self.peer_cert_file.clone(),
            peer_key_file: self.peer_key_file.clone(),
            peer_trusted_ca_file: self.peer_trusted_ca_file.clone(),
            peer_allowed_cn: self.peer_allowed_cn.clone(),
        })
    }

    pub fn into_options(self) -> Result<ServeOptions, String> {
        // Half configurations are refused here, before anything starts.
        let tls = self.tls_options()?;
        let initial_cluster = match &self.initial_cluster {
            Some(s) => parse_initial_cluster(s)?,
            None => BTreeMap::new(),
        };
        if initial_cluster.is_empty() && self.join.is_empty() {
            return Err("give --initial-cluster (a new or restarting cluster member) or --join (a new node)".into());
        }
        if !initial_cluster.is_empty() && !initial_cluster.contains_key(&self.id) {
            return Err(format!(
                "--initial-cluster does not list this node's --id {}",
                self.id
            ));
        }
        let _ = &self.config; // already spliced into the arguments by `expand_config`
        if self.expire_rate == 0 {
            return Err("--expire-rate: must be at least 1".into());
        }
        if self.request_id_max_bytes == 0 || self.request_id_window.is_zero() {
            return Err("--request-id-window and --request-id-max-bytes: must be positive".into());
        }
        if self.request_id_min_window > self.request_id_window {
            return Err(
                "--request-id-min-window: cannot be longer than --request-id-window".into(),
            );
        }
        check_max_value_bytes(self.max_value_bytes)?;
        if self.snapshot_every == 0 {
            return Err("--snapshot-every: must be at least 1".into());
        }
        if self.memory_budget == 0 {
            return Err("--memory-budget: must be positive".into());
        }
        if self.handoff_batch == 0 || self.handoff_batch > 10_000 {
            return Err("--handoff-batch: must be between 1 and 10000".into());
        }
        if self.max_connections == 0 || self.max_connections > MAX_MAX_CONNECTIONS {
            return Err(format!(
                "--max-connections: must be between 1 and {MAX_MAX_CONNECTIONS}"
            ));
        }
        let sink = self
            .sink
            .clone()
            .unwrap_or_else(|| SinkSpec::File(self.data_dir.join("postflight")));
        if self.peer_listen == self.listen {
            return Err(format!(
                "--peer-listen: {} is also --listen; the peer port must be a port of its own",
                self.listen
            ));
        }
        let advertise = MemberAddr::parse(&format!(
            "{}/{}",
            self.advertise
                .clone()
                .unwrap_or_else(|| self.listen.to_string()),
            self.advertise_peer
                .clone()
                .unwrap_or_else(|| self.peer_listen.to_string()),
        ))
        .map_err(|e| format!("--advertise, --advertise-peer: {e}"))?;
        // Roles need an identity, and a caller has one only when the client
        // port demands a certificate: without --trusted-ca-file every call
        // would be anonymous and allowed everything, the roles silently off.
        if (self.auth_file.is_some() || !self.admin_identities.is_empty())
            && self.trusted_ca_file.is_none()
        {
            return Err(
                "--auth-file and --admin-identities need --trusted-ca-file (with --cert-file and \
                 --key-file): without client certificates no caller has an identity, and every \
                 call would be allowed everything"
                    .into(),
            );
        }
        let auth =
            crate::auth::Authorizer::open(self.auth_file.as_deref(), &self.admin_identities)?;
        Ok(ServeOptions {
            raft: RaftSettings {
                id: self.id,
                data_dir: self.data_dir,
                advertise,
                durability: self.durability,
                snapshot_every: self.snapshot_every,
                timing: crate::raft::Timing::new(self.election_timeout_ms, self.heartbeat_ms)?,
                peer_source_ip: self.peer_source_ip,
                // Set by `node::serve` once the files are read.
                peer_tls: None,
            },
            listen: self.listen,
            peer_listen: self.peer_listen,
            http: self.http,
            resp_listen: self.resp_listen,
            auth: std::sync::Arc::new(auth),
            initial_cluster,
            join: self.join,
            limits: Limits {
                max_value_bytes: self.max_value_bytes,
            },
            max_connections: self.max_connections,
            handoff: HandoffOptions {
                sink,
                shadow: self.shadow_sink.clone(),
                sink_ca_file: self.sink_ca_file.clone(),
                memory_budget_bytes: self.memory_budget,

                settings: HandoffSettings {
                    batch_records: self.handoff_batch,
                    ..HandoffSettings::default()
                },
            },

            retention: Retention {
                window_ms: self.request_id_window.as_millis() as u64,
                min_window_ms: self.request_id_min_window.as_millis() as u64,
                max_bytes: self.request_id_max_bytes,
            },
            expiry: ExpirySettings {
                rate_per_sec: self.expire_rate,
                mode: self.expired,
            },
            tls,
            watch_window: WindowLimits {
                max_events: self.watch_window_events,
                max_age_ms: self.watch_window_age.as_millis() as u64,
                max_bytes: self.memory_budget / crate::memory::WATCH_WINDOW_SHARE,
            },
        })
    }
}

/// The TLS files a client command was given.
#[derive(Clone, Debug)]
pub struct ClientTlsFiles {
    pub ca: PathBuf,
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// `--cacert` turns TLS on; `--cert`/`--key` alone are a mistake, not a
/// silent plaintext connection.
fn client_tls_files(
    ca: &Option<PathBuf>,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
) -> Result<Option<ClientTlsFiles>, String> {
    let identity = match (cert, key) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        (None, None) => None,
        _ => return Err("--cert and --key go together".into()),
    };
    match ca {
        Some(ca) => Ok(Some(ClientTlsFiles {
            ca: ca.clone(),
            identity,
        })),
        None if identity.is_some() => {
            Err("--cert and --key need --cacert: the CA that signed the nodes' certificates".into())
        }
        None => Ok(None),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,openraft=warn,h2=warn,tower=warn,hyper=warn")
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Splices the settings of `serve --config FILE` into the arguments, before
/// the ones given on the command line (so those win).
fn expand_config(args: Vec<String>) -> Result<Vec<String>, String> {
    use clap::CommandFactory;
    let Some(serve) = args.iter().position(|a| a == "serve") else {
        return Ok(args);
    };
    let mut path = None;
    for (i, a) in args.iter().enumerate().skip(serve + 1) {
        if a == "--config" {
            path = Some(args.get(i + 1).ok_or("--config: needs a file")?.clone());
        } else if let Some(p) = a.strip_prefix("--config=") {
            path = Some(p.to_string());
        }
    }
    // INFLIGHT_CONFIG names the file when --config does not (clap reads
    // the same variable into `ServeArgs::config`, which is then unused).
    let path = path.or_else(|| {
        std::env::var("INFLIGHT_CONFIG")
            .ok()
            .filter(|p| !p.is_empty())
    });
    let Some(path) = path else { return Ok(args) };
    let text = std::fs::read_to_string(&path).map_err(|e| format!("--config {path}: {e}"))?;
    let table: toml::Table = text.parse().map_err(|e| format!("--config {path}: {e}"))?;
    let cmd = Cli::command();
    let serve_cmd = cmd.find_subcommand("serve").ok_or("no serve command")?;
    let known: Vec<String> = serve_cmd
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect();
    let mut extra = Vec::new();
    for (key, value) in table {
        let flag = key.replace('_', "-");
        if flag == "config" || !known.contains(&flag) {
            return Err(format!("--config {path}: unknown setting `{key}`"));
        }
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect::<Vec<_>>()
                .join(","),
            other => {
                return Err(format!(
                    "--config {path}: `{key}` = {other} is not a string, number or list"
                ))
            }
        };
        extra.push(format!("--{flag}"));
        extra.push(value);
    }
    let mut out = args[..=serve].to_vec();
    out.extend(extra);
    out.extend(args[serve + 1..].iter().cloned());
    Ok(out)
}

pub fn main() -> ExitCode {
    let args = match expand_config(std::env::args().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => {
            init_logging(cli.log_format);
            let opts = match args.into_options() {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            match crate::node::serve(opts).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Dev(args) => dev::run(args).await,
        Command::Health {
            http,
            path,
            timeout,
        } => {
            let tls = match client_tls_files(&cli.cacert, &cli.cert, &cli.key) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            health::run(&http, &path, timeout, tls.as_ref()).await
        }
        Command::Certs(c) => certs::run(c),
        other => {
            let tls = match client_tls_files(&cli.cacert, &cli.cert, &cli.key).and_then(|f| {
                f.map(|f| {
                    crate::client::ClientTls::from_files(
                        &f.ca,
                        f.identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
                    )
                })
                .transpose()
            }) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            commands::run(&cli.endpoints, tls, other).await
        }
    }
}
