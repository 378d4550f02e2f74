//! The `inflight serve` command line of one node, built in one place.
//!
//! Everything that starts nodes as child processes (`inflight dev`, the test
//! harness in `testkit/`, the chaos suite, `benches/compare.sh` through
//! `inflight dev --node`) describes a node with [`NodeArgs`] and turns it into
//! arguments with [`NodeArgs::to_args`], so a flag is renamed or added once.

use std::path::PathBuf;

use crate::handoff::SinkSpec;
use crate::raft::Durability;
pub use crate::tls::TlsFlags;

/// How a node finds its cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Membership {
    /// `--initial-cluster ID=CLIENT/PEER,...`: a member of the initial
    /// voters (each address as `MemberAddr` writes it).
    Initial(Vec<(u64, String)>),
    /// `--join HOST:PORT,...`: a new node joining through these members.
    Join(Vec<String>),
}

/// The arguments after `inflight serve` for one node. `None` leaves a flag
/// out, so `serve`'s own default applies.
#[derive(Clone, Debug)]
pub struct NodeArgs {
    pub id: u64,
    pub data_dir: PathBuf,
    /// Client gRPC HOST:PORT.
    pub listen: String,
    /// Peer gRPC HOST:PORT.
    pub peer_listen: String,
    /// HTTP HOST:PORT.
    pub http: Option<String>,
    /// RESP HOST:PORT.
    pub resp: Option<String>,
    pub membership: Membership,
    pub durability: Option<Durability>,
    pub snapshot_every: Option<u64>,
    /// Source address of peer connections (a node on its own loopback address).
    pub peer_source_ip: Option<String>,
    pub sink: Option<SinkSpec>,
    pub shadow_sink: Option<SinkSpec>,
    /// As `--memory-budget` takes it: `2MiB`, `512MiB`, bytes.
    pub memory_budget: Option<String>,
    pub handoff_batch: Option<usize>,
    /// TLS files (`--cert-file` ... `--peer-allowed-cn`); all `None`: plaintext.
    pub tls: TlsFlags,
    /// `--auth-file`: roles for callers with a client certificate.
    pub auth_file: Option<PathBuf>,
    /// `--admin-identities`; empty leaves the flag out.
    pub admin_identities: Vec<String>,
    pub max_connections: Option<usize>,
    /// Any other flags, appended last.
    pub extra: Vec<String>,
}

impl NodeArgs {
    /// A node with only the required settings.
    pub fn new(
        id: u64,
        data_dir: PathBuf,
        listen: String,
        peer_listen: String,
        membership: Membership,
    ) -> NodeArgs {
        NodeArgs {
            id,
            data_dir,
            listen,
            peer_listen,
            http: None,
            resp: None,
            membership,
            durability: None,
            snapshot_every: None,
            peer_source_ip: None,
            sink: None,
            shadow_sink: None,
            memory_budget: None,
            handoff_batch: None,
            tls: TlsFlags::default(),
            auth_file: None,
            admin_identities: Vec::new(),
            max_connections: None,
            extra: Vec::new(),
        }
    }

    /// The arguments after `serve`.
    pub fn to_args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--id".into(),
            self.id.to_string(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
            "--listen".into(),
            self.listen.clone(),
            "--peer-listen".into(),
            self.peer_listen.clone(),
        ];
        let mut flag = |name: &str, value: String| {
            a.push(name.into());
            a.push(value);
        };
        if let Some(http) = &self.http {
            flag("--http", http.clone());
        }
        if let Some(resp) = &self.resp {
            flag("--resp-listen", resp.clone());
        }
        match &self.membership {
            Membership::Initial(members) => flag("--initial-cluster", initial_cluster(members)),
            Membership::Join(through) => flag("--join", through.join(",")),
        }
        if let Some(d) = self.durability {
            flag("--durability", d.as_str().into());
        }
        if let Some(n) = self.snapshot_every {
            flag("--snapshot-every", n.to_string());
        }
        if let Some(ip) = &self.peer_source_ip {
            flag("--peer-source-ip", ip.clone());
        }
        if let Some(s) = &self.sink {
            flag("--sink", sink_arg(s));
        }
        if let Some(s) = &self.shadow_sink {
            flag("--shadow-sink", sink_arg(s));
        }
        if let Some(b) = &self.memory_budget {
            flag("--memory-budget", b.clone());
        }
        if let Some(n) = self.handoff_batch {
            flag("--handoff-batch", n.to_string());
        }
        let t = &self.tls;
        for (name, path) in [
            ("--cert-file", &t.cert_file),
            ("--key-file", &t.key_file),
            ("--trusted-ca-file", &t.trusted_ca_file),
            ("--peer-cert-file", &t.peer_cert_file),
            ("--peer-key-file", &t.peer_key_file),
            ("--peer-trusted-ca-file", &t.peer_trusted_ca_file),
        ] {
            if let Some(p) = path {
                flag(name, p.display().to_string());
            }
        }
        if !t.peer_allowed_cn.is_empty() {
            flag("--peer-allowed-cn", t.peer_allowed_cn.join(","));
        }
        if let Some(p) = &self.auth_file {
            flag("--auth-file", p.display().to_string());
        }
        if !self.admin_identities.is_empty() {
            flag("--admin-identities", self.admin_identities.join(","));
        }
        if let Some(n) = self.max_connections {
            flag("--max-connections", n.to_string());
        }
        a.extend(self.extra.iter().cloned());
        a
    }
}

/// `1=CLIENT/PEER,2=CLIENT/PEER`.
pub fn initial_cluster(members: &[(u64, String)]) -> String {
    members
        .iter()
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The spec as a `--sink` argument (unlike `Display`, secrets not hidden).
pub fn sink_arg(spec: &SinkSpec) -> String {
    match spec {
        SinkSpec::File(dir) => format!("file:{}", dir.display()),
        SinkSpec::Postgres(url) => format!("postgres:{url}"),
        SinkSpec::Webhook(url) => format!("webhook:{url}"),
        SinkSpec::Noop => "noop".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn every_field_becomes_a_flag_that_serve_parses_back() {
        let mut n = NodeArgs::new(
            2,
            "/tmp/n2".into(),
            "127.0.0.1:7002".into(),
            "127.0.0.1:7102".into(),
            Membership::Initial(vec![
                (1, "127.0.0.1:7001/127.0.0.1:7101".into()),
                (2, "127.0.0.1:7002/127.0.0.1:7102".into()),
            ]),
        );
        n.http = Some("127.0.0.1:8002".into());
        n.durability = Some(Durability::Memory);
        n.snapshot_every = Some(7);
        n.peer_source_ip = Some("127.0.0.1".into());
        n.sink = Some(SinkSpec::Postgres("postgres://u:pw@127.0.0.1/db".into()));
        n.shadow_sink = Some(SinkSpec::File("/tmp/post".into()));
        n.memory_budget = Some("2MiB".into());
        n.handoff_batch = Some(20);
        n.tls = TlsFlags {
            cert_file: Some("/c/node.pem".into()),
            key_file: Some("/c/node-key.pem".into()),
            trusted_ca_file: Some("/c/ca.pem".into()),
            peer_cert_file: Some("/c/peer.pem".into()),
            peer_key_file: Some("/c/peer-key.pem".into()),
            peer_trusted_ca_file: Some("/c/peer-ca.pem".into()),
            peer_allowed_cn: vec!["node-1".into(), "node-2".into()],
        };
        let dir = tempfile::tempdir().unwrap();
        let auth = dir.path().join("auth.toml");
        std::fs::write(&auth, "[roles.r]\n").unwrap();
        n.auth_file = Some(auth.clone());
        n.admin_identities = vec!["node-1".into(), "ops".into()];
        n.max_connections = Some(3);
        n.extra = vec!["--heartbeat-ms".into(), "40".into()];
        let mut argv = vec!["inflight".to_string(), "serve".to_string()];
        argv.extend(n.to_args());
        let cli = super::super::Cli::try_parse_from(argv).expect("serve parses its own arguments");
        let super::super::Command::Serve(s) = cli.command else {
            panic!("not serve")
        };
        let tls = s.tls_options().expect("whole TLS settings");
        assert_eq!(s.id, 2);
        assert_eq!(s.data_dir, PathBuf::from("/tmp/n2"));
        assert_eq!(s.listen.to_string(), "127.0.0.1:7002");
        assert_eq!(s.peer_listen.to_string(), "127.0.0.1:7102");
        assert_eq!(s.http.unwrap().to_string(), "127.0.0.1:8002");
        assert_eq!(
            s.initial_cluster.as_deref(),
            Some("1=127.0.0.1:7001/127.0.0.1:7101,2=127.0.0.1:7002/127.0.0.1:7102")
        );
        assert_eq!(s.durability, Durability::Memory);
        assert_eq!(s.snapshot_every, 7);
        assert_eq!(s.peer_source_ip.unwrap().to_string(), "127.0.0.1");
        assert_eq!(
            s.sink.map(|s| sink_arg(&s)).as_deref(),
            Some("postgres:postgres://u:pw@127.0.0.1/db"),
            "the password is passed on, not hidden"
        );
        assert_eq!(
            s.shadow_sink.map(|s| sink_arg(&s)).as_deref(),
            Some("file:/tmp/post")
        );
        assert_eq!(s.memory_budget, 2 << 20);
        assert_eq!(s.handoff_batch, 20);
        assert_eq!(s.max_connections, 3);
        assert_eq!(s.heartbeat_ms, Some(40));
        let client = tls.client.expect("client TLS");
        assert_eq!(client.cert.path, PathBuf::from("/c/node.pem"));
        assert_eq!(client.key.path, PathBuf::from("/c/node-key.pem"));
        assert_eq!(client.trusted_ca.unwrap().path, PathBuf::from("/c/ca.pem"));
        let peer = tls.peer.expect("peer TLS");
        assert_eq!(peer.cert.path, PathBuf::from("/c/peer.pem"));
        assert_eq!(peer.key.path, PathBuf::from("/c/peer-key.pem"));
        assert_eq!(
            peer.trusted_ca.unwrap().path,
            PathBuf::from("/c/peer-ca.pem")
        );
        assert_eq!(tls.peer_allowed_names, ["node-1", "node-2"]);
        assert_eq!(s.auth_file, Some(auth));
        assert_eq!(s.admin_identities, vec!["node-1", "ops"]);
    }

    #[test]
    fn half_a_tls_configuration_is_refused_at_startup_naming_what_is_missing() {
        let refused = |extra: &[&str]| serve_options(extra).expect_err("refused");
        let e = refused(&["--cert-file", "/c.pem"]);
        assert!(e.contains("--cert-file needs --key-file"), "{e}");
        let e = refused(&["--key-file", "/k.pem"]);
        assert!(e.contains("--key-file needs --cert-file"), "{e}");
        let e = refused(&["--trusted-ca-file", "/ca.pem"]);
        assert!(e.contains("--trusted-ca-file needs --cert-file"), "{e}");
        let e = refused(&["--peer-cert-file", "/p.pem", "--peer-key-file", "/pk.pem"]);
        assert!(e.contains("missing --peer-trusted-ca-file"), "{e}");
        let e = refused(&["--peer-allowed-cn", "node-1"]);
        assert!(e.contains("--peer-allowed-cn needs peer TLS"), "{e}");
        let e = refused(&["--cert-file", "/c.pem", "--key-file", "/k.pem"]);
        assert!(
            e.contains("--trusted-ca-file or --peer-trusted-ca-file"),
            "a node must verify the other nodes' client ports it calls: {e}"
        );
        let peer_only = [
            "--peer-cert-file",
            "/p.pem",
            "--peer-key-file",
            "/pk.pem",
            "--peer-trusted-ca-file",
            "/ca.pem",
        ];
        assert!(
            serve_options(&peer_only).is_ok(),
            "peer TLS with a plaintext client port is a whole configuration"
        );
    }

    fn serve_options(extra: &[&str]) -> Result<crate::node::ServeOptions, String> {
        let mut n = NodeArgs::new(
            1,
            "/tmp/n1".into(),
            "127.0.0.1:7001".into(),
            "127.0.0.1:7101".into(),
            Membership::Initial(vec![(1, "127.0.0.1:7001/127.0.0.1:7101".into())]),
        );
        n.extra = extra.iter().map(|s| s.to_string()).collect();
        let mut argv = vec!["inflight".to_string(), "serve".to_string()];
        argv.extend(n.to_args());
        let cli = super::super::Cli::try_parse_from(argv).expect("serve parses");
        let super::super::Command::Serve(s) = cli.command else {
            panic!("not serve")
        };
        s.into_options()
    }

    #[test]
    fn max_connections_defaults_and_refuses_zero() {
        let d = serve_options(&[]).unwrap();
        assert_eq!(
            d.max_connections,
            crate::connections::DEFAULT_MAX_CONNECTIONS
        );
        let e = serve_options(&["--max-connections", "0"]).expect_err("refused");
        assert!(e.contains("--max-connections"), "{e}");
    }

    #[test]
    fn max_value_bytes_beyond_what_a_peer_message_carries_is_refused() {
        let bound = crate::raft::MAX_VALUE_BYTES_BOUND;
        assert_eq!(bound, 1_835_008, "(256 MiB / 32 - 1 MiB) / 4");
        let ok = serve_options(&["--max-value-bytes", &bound.to_string()]).unwrap();
        assert_eq!(ok.limits.max_value_bytes, bound);
        assert!(serve_options(&[]).is_ok(), "the default fits");
        let e =
            serve_options(&["--max-value-bytes", &(bound + 1).to_string()]).expect_err("refused");
        assert!(e.contains("--max-value-bytes"), "{e}");
        assert!(e.contains(&bound.to_string()), "names the bound: {e}");
        assert!(
            e.contains("AppendEntries") && e.contains("peer message"),
            "says why: {e}"
        );
    }

    #[test]
    fn a_bad_auth_file_stops_serve_at_startup_naming_the_file_and_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[roles.a]\nread = [\"x\"]\nreed = [\"y\"]\n").unwrap();
        let tls = [
            "--cert-file",
            "n.pem",
            "--key-file",
            "n-key.pem",
            "--trusted-ca-file",
            "ca.pem",
        ];
        let with_tls = |extra: &[&str]| {
            let args: Vec<&str> = tls.iter().chain(extra).copied().collect();
            serve_options(&args)
        };
        let e = with_tls(&["--auth-file", bad.to_str().unwrap()]).expect_err("refused");
        assert!(e.contains("--auth-file") && e.contains("bad.toml"), "{e}");
        assert!(e.contains("line 3") && e.contains("reed"), "{e}");
        let good = dir.path().join("good.toml");
        std::fs::write(
            &good,
            "[roles.a]\nread = [\"x/\"]\n[identities]\nbob = \"a\"\n",
        )
        .unwrap();
        let e = serve_options(&["--auth-file", good.to_str().unwrap()])
            .expect_err("roles without client certificates would be off");
        assert!(e.contains("--trusted-ca-file"), "{e}");
        let e = serve_options(&["--admin-identities", "ops"]).expect_err("no identities");
        assert!(e.contains("--trusted-ca-file"), "{e}");
        let o = with_tls(&[
            "--auth-file",
            good.to_str().unwrap(),
            "--admin-identities",
            "ops,root",
        ])
        .expect("a good file");
        let root = crate::auth::Caller::Certified(vec!["root".to_string()].into());
        let bob = crate::auth::Caller::Certified(vec!["bob".to_string()].into());
        assert!(
            o.auth.is_admin(&root),
            "--admin-identities splits on commas"
        );
        assert!(!o.auth.is_admin(&bob));
        let policy = o.auth.policy();
        assert!(policy.allows(&["bob".into()], crate::auth::Operation::Read, "x/1"));
        assert!(!policy.allows(&["bob".into()], crate::auth::Operation::Write, "x/1"));
    }

    #[test]
    fn the_peer_port_is_a_port_of_its_own_and_every_member_names_both() {
        let o = serve_options(&[]).unwrap();
        assert_eq!(
            o.raft.advertise.to_string(),
            "127.0.0.1:7001/127.0.0.1:7101"
        );
        let o = serve_options(&["--advertise", "n1:7001", "--advertise-peer", "n1:7101"]).unwrap();
        assert_eq!(o.raft.advertise.to_string(), "n1:7001/n1:7101");
        let e = serve_options(&["--peer-listen", "127.0.0.1:7001"]).expect_err("same port");
        assert!(e.contains("--peer-listen"), "{e}");
        let e = crate::cli::parse_initial_cluster("1=127.0.0.1:7001").expect_err("no peer address");
        assert!(e.contains("node 1") && e.contains("PEER_HOST:PORT"), "{e}");
    }

    #[test]
    fn every_serve_flag_has_an_inflight_environment_variable() {
        use clap::CommandFactory;
        let cli = super::super::Cli::command();
        let serve = cli.find_subcommand("serve").expect("serve");
        let mut seen = 0;
        for arg in serve.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version" | "endpoints") {
                continue;
            }
            let want = format!("INFLIGHT_{}", long.replace('-', "_").to_uppercase());
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(want.as_str()),
                "--{long}: the container image and the compose file configure nodes by environment"
            );
            seen += 1;
        }
        assert!(seen > 20, "{seen}");
    }

    #[test]
    fn flags_on_the_command_line_win_over_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("inflight.toml");
        std::fs::write(
            &cfg,
            "id = 7\ndata_dir = \"/from/file\"\ninitial_cluster = \"7=a:1/a:2,9=b:1/b:2\"\nheartbeat_ms = 60\n",
        )
        .unwrap();
        let argv: Vec<String> = ["inflight", "serve", "--config", cfg.to_str().unwrap()]
            .iter()
            .chain(&["--id", "9", "--heartbeat-ms", "70"])
            .map(|s| s.to_string())
            .collect();
        let argv = super::super::expand_config(argv).expect("config read");
        let cli = super::super::Cli::try_parse_from(argv).expect("a flag may repeat a setting");
        let super::super::Command::Serve(s) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(s.id, 9, "the command line wins");
        assert_eq!(s.heartbeat_ms, Some(70), "the command line wins");
        assert_eq!(
            s.data_dir,
            PathBuf::from("/from/file"),
            "the file fills in the rest"
        );
    }

    #[test]
    fn a_joining_node_lists_the_members_it_joins_through() {
        let n = NodeArgs::new(
            4,
            "/d".into(),
            "127.0.0.1:1".into(),
            "127.0.0.1:2".into(),
            Membership::Join(vec!["a:1".into(), "b:2".into()]),
        );
        let args = n.to_args();
        let i = args.iter().position(|a| a == "--join").unwrap();
        assert_eq!(args[i + 1], "a:1,b:2");
        assert!(!args.contains(&"--initial-cluster".to_string()));
    }
}
