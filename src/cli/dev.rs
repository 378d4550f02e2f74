//! `inflight dev`: a local cluster in one command.
//!
//! Starts N `inflight serve` child processes (disk durability, data under
//! `--dir`, every node handing off to one shared `file:` sink in
//! `--dir/postflight` unless `--sink` says otherwise), prints their
//! endpoints, waits for a leader, optionally runs the `--demo` workload, and on Ctrl-C or
//! SIGTERM stops every node with SIGTERM (SIGKILL after a grace period).
//! Children are tied to this process with PR_SET_PDEATHSIG, so killing `dev`
//! hard does not leave orphans behind.
//!
//! `--tls` makes a CA and certificates in `--dir/certs` (as `inflight certs
//! init` does; existing ones are kept) and runs every port over TLS, with
//! client certificates required on the client and HTTP ports; it prints the
//! `INFLIGHT_CACERT`/`INFLIGHT_CERT`/`INFLIGHT_KEY` a client needs.
//!
//! `--node ID` runs just node ID of that same cluster in the foreground (the
//! process becomes the node, so its pid is the node's): for scripts that kill
//! and restart single nodes, like `benches/compare.sh`. Either way the node
//! command line comes from `serve_args::NodeArgs`.

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use clap::Args;
use tokio::process::{Child, Command};

use super::certs::{init, CertDir, InitOptions, DEFAULT_CLIENT};
use super::serve_args::{Membership, NodeArgs, TlsFlags};
use crate::client::{Client, ClientOptions, ClientTls};
use crate::handoff::SinkSpec;
use crate::raft::Durability;
use crate::wire::MemberAddr;

#[derive(Args, Debug)]
pub struct DevArgs {
    /// How many nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// Where node data and logs go.
    #[arg(long, default_value = ".inflight-dev")]
    pub dir: PathBuf,
    /// Client gRPC port of node 1; node N listens on this + N - 1.
    #[arg(long, default_value_t = 7001)]
    pub grpc_port: u16,
    /// Peer gRPC port of node 1; node N listens on this + N - 1.
    #[arg(long, default_value_t = 7101)]
    pub peer_port: u16,
    /// HTTP port of node 1; node N listens on this + N - 1.
    #[arg(long, default_value_t = 8001)]
    pub http_port: u16,
    /// Redis protocol port of node 1; node N listens on this + N - 1.
    #[arg(long, default_value_t = 6381)]
    pub resp_port: u16,
    /// Where every node hands off finished records (default: file:DIR/postflight).
    #[arg(long, value_parser = crate::handoff::SinkSpecParser)]
    pub sink: Option<SinkSpec>,
    /// Durability of every node's Raft log.
    #[arg(long, value_enum, default_value = "disk")]
    pub durability: Durability,
    /// Run a small simulated workload of calls and messages.
    #[arg(long, conflicts_with = "node")]
    pub demo: bool,
    /// Run only node ID of this cluster, in the foreground: this process
    /// becomes `inflight serve` with the arguments `dev` would give that node.
    #[arg(long, value_name = "ID")]
    pub node: Option<u16>,
    /// TLS on every port, with certificates made in DIR/certs (kept across
    /// runs); client certificates required. Prints the client flags.
    #[arg(long)]
    pub tls: bool,
}

impl DevArgs {
    fn sink(&self) -> SinkSpec {
        self.sink
            .clone()
            .unwrap_or_else(|| SinkSpec::File(self.dir.join("postflight")))
    }
}

impl DevArgs {
    fn grpc(&self, id: u16) -> String {
        format!("127.0.0.1:{}", self.grpc_port + id - 1)
    }

    fn peer(&self, id: u16) -> String {
        format!("127.0.0.1:{}", self.peer_port + id - 1)
    }

    fn certs(&self) -> CertDir {
        CertDir::new(self.dir.join("certs"))
    }

    /// With `--tls`: makes whatever certificates are missing.
    fn ensure_certs(&self) -> Result<(), String> {
        if !self.tls {
            return Ok(());
        }
        let opts = InitOptions {
            nodes: self.nodes,
            ..InitOptions::default()
        };
        init(self.certs().path(), &opts).map(|_| ()).map_err(|e| {
            format!(
                "--tls: certificates in {}: {e}",
                self.certs().path().display()
            )
        })
    }

    /// What `dev`'s own calls (and the printed client settings) present.
    fn client_options(&self) -> Result<ClientOptions, String> {
        if !self.tls {
            return Ok(ClientOptions::default());
        }
        let (ca, me) = (self.certs().ca(), self.certs().client(DEFAULT_CLIENT));
        Ok(ClientOptions {
            tls: Some(ClientTls::from_files(&ca.cert, Some((&me.cert, &me.key)))?),
            ..ClientOptions::default()
        })
    }

    /// Node `id`'s `serve` arguments.
    fn node_args(&self, id: u16) -> NodeArgs {
        let members = (1..=self.nodes)
            .map(|i| {
                let addr = MemberAddr::new(self.grpc(i), self.peer(i));
                (u64::from(i), addr.to_string())
            })
            .collect();
        let mut n = NodeArgs::new(
            id.into(),
            self.dir.join(format!("node-{id}")),
            self.grpc(id),
            self.peer(id),
            Membership::Initial(members),
        );
        n.http = Some(format!("127.0.0.1:{}", self.http_port + id - 1));
        n.resp = Some(format!("127.0.0.1:{}", self.resp_port + id - 1));
        n.durability = Some(self.durability);
        n.sink = Some(self.sink());
        if self.tls {
            let (ca, me) = (self.certs().ca().cert, self.certs().node(id));
            n.tls = TlsFlags {
                cert_file: Some(me.cert.clone()),
                key_file: Some(me.key.clone()),
                trusted_ca_file: Some(ca.clone()),
                peer_cert_file: Some(me.cert),
                peer_key_file: Some(me.key),
                peer_trusted_ca_file: Some(ca),
                peer_allowed_cn: Vec::new(),
            };
            // The client certificate `dev` prints is the operator's.
            n.admin_identities = vec![DEFAULT_CLIENT.into()];
        }
        n
    }
}

fn spawn_node(exe: &PathBuf, args: &DevArgs, id: u16) -> std::io::Result<Child> {
    let node = args.node_args(id);
    std::fs::create_dir_all(&node.data_dir)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(args.dir.join(format!("node-{id}.log")))?;
    let mut cmd = Command::new(exe);
    cmd.arg("serve")
        .args(node.to_args())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe; the closure touches no shared state.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
    }
}

/// `--node ID`: replaces this process with node `id`'s `inflight serve`,
/// output to the node's log file as `dev` would.
fn exec_node(exe: &PathBuf, args: &DevArgs, id: u16) -> ExitCode {
    use std::os::unix::process::CommandExt;
    if id == 0 || id > args.nodes {
        eprintln!("error: --node: between 1 and --nodes ({})", args.nodes);
        return ExitCode::from(2);
    }
    let node = args.node_args(id);
    let log = std::fs::create_dir_all(&node.data_dir).and_then(|_| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(args.dir.join(format!("node-{id}.log")))
    });
    let log = match log {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: node {id} in {}: {e}", args.dir.display());
            return ExitCode::FAILURE;
        }
    };
    let Ok(out) = log.try_clone() else {
        return ExitCode::FAILURE;
    };
    let e = std::process::Command::new(exe)
        .arg("serve")
        .args(node.to_args())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(log)
        .exec();
    eprintln!("error: exec inflight serve: {e}");
    ExitCode::FAILURE
}

pub async fn run(args: DevArgs) -> ExitCode {
    if args.nodes == 0 || args.nodes > 9 {
        eprintln!("error: --nodes: between 1 and 9");
        return ExitCode::from(2);
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot find the inflight binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = args.ensure_certs() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let client_options = match args.client_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(id) = args.node {
        return exec_node(&exe, &args, id);
    }
    let ids: Vec<u16> = (1..=args.nodes).collect();
    let endpoints: Vec<String> = ids.iter().map(|id| args.grpc(*id)).collect();
    let mut children = Vec::new();
    for id in &ids {
        match spawn_node(&exe, &args, *id) {
            Ok(c) => children.push((*id, c)),
            Err(e) => {
                eprintln!("error: starting node {id}: {e}");
                for (_, c) in &children {
                    terminate(c);
                }
                return ExitCode::FAILURE;
            }
        }
    }
    println!(
        "inflight dev: {}-node cluster, {} durability, data in {}",
        args.nodes,
        args.durability.as_str(),
        args.dir.display()
    );
    let scheme = if args.tls { "https" } else { "http" };
    for (id, ep) in ids.iter().zip(&endpoints) {
        println!(
            "  node {id}: grpc {ep}  peer {}  http {scheme}://127.0.0.1:{}  resp 127.0.0.1:{}  log {}",
            args.peer(*id),
            args.http_port + id - 1,
            args.resp_port + id - 1,
            args.dir.join(format!("node-{id}.log")).display()
        );
    }
    println!("hand-off sink: {}", args.sink());
    println!("export INFLIGHT_ENDPOINTS={}", endpoints.join(","));
    if args.tls {
        let (ca, me) = (args.certs().ca(), args.certs().client(DEFAULT_CLIENT));
        println!("TLS on every port; clients present {}:", me.cert.display());
        println!("export INFLIGHT_CACERT={}", ca.cert.display());
        println!("export INFLIGHT_CERT={}", me.cert.display());
        println!("export INFLIGHT_KEY={}", me.key.display());
    }

    let watcher = async {
        let Ok(client) = Client::with_options(endpoints.clone(), client_options.clone()) else {
            return;
        };
        for _ in 0..100 {
            if let Ok(l) = client.member_list().await {
                if l.leader_id != 0 {
                    println!("leader: node {}. Ctrl-C stops every node.", l.leader_id);
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!("no leader yet; see the node logs. Ctrl-C stops every node.");
    };

    let stop = crate::node::stop_signal();
    tokio::pin!(stop);
    let mut announced = false;
    let watcher = watcher;
    tokio::pin!(watcher);
    let demo = async {
        if !args.demo {
            return std::future::pending().await;
        }
        let Ok(client) = Client::with_options(endpoints.clone(), client_options.clone()) else {
            return;
        };
        while client.member_list().await.map(|l| l.leader_id).unwrap_or(0) == 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!("demo: simulated calls and messages are running; try `inflight watch call/`");
        let dir = match args.sink() {
            SinkSpec::File(d) => Some(d),
            _ => None,
        };
        super::demo::run(client, dir).await
    };
    tokio::pin!(demo);
    let mut demo_done = false;
    let mut failed = false;

    loop {
        let mut exits = Vec::new();
        for (id, c) in children.iter_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                exits.push((*id, status));
            }
        }
        for (id, status) in exits {
            eprintln!(
                "node {id} exited ({status}); see {}",
                args.dir.join(format!("node-{id}.log")).display()
            );
            children.retain(|(i, _)| *i != id);
            failed = true;
        }
        if children.is_empty() {
            break;
        }
        tokio::select! {
            _ = &mut stop => break,
            _ = &mut watcher, if !announced => announced = true,
            _ = &mut demo, if !demo_done => demo_done = true,

            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
    println!("stopping {} node(s)...", children.len());
    for (_, c) in &children {
        terminate(c);
    }
    for (id, c) in children.iter_mut() {
        match tokio::time::timeout(Duration::from_secs(10), c.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("node {id} did not stop within 10s; killing it");
                let _ = c.kill().await;
            }
        }
    }
    println!("stopped.");
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
