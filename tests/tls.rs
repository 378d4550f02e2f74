//! TLS on every port (`inflight::tls`): who gets in, and certificates
//! replaced while a node runs.
//!
//! The first tests drive the acceptor and verifiers in-process with a raw
//! TLS client, where the handshake itself can be inspected; the cluster
//! tests run real nodes.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use inflight::tls::{PemFile, Port, PortFiles, ServerTls, TlsIncoming};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use testkit::tls::{CertFiles, Pki};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn port_files(port: Port, cert: &CertFiles, ca: Option<&Path>) -> PortFiles {
    let (c, k, a) = match port {
        Port::Peer => (
            "--peer-cert-file",
            "--peer-key-file",
            "--peer-trusted-ca-file",
        ),
        _ => ("--cert-file", "--key-file", "--trusted-ca-file"),
    };
    PortFiles {
        cert: PemFile::new(c, &cert.cert),
        key: PemFile::new(k, &cert.key),
        trusted_ca: ca.map(|p| PemFile::new(a, p)),
    }
}

/// A port that answers "ok" on every connection that completes its
/// handshake, the way tonic or axum would start talking.
async fn serve(tls: ServerTls) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = TlsIncoming::new(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        tls,
    );
    tokio::spawn(async move {
        while let Some(conn) = incoming.next().await {
            if let Ok(mut s) = conn {
                tokio::spawn(async move {
                    let _ = s.write_all(b"ok").await;
                    let _ = s.flush().await;
                    let mut buf = [0u8; 1];
                    let _ = s.read(&mut buf).await;
                });
            }
        }
    });
    addr
}

fn client_config(ca: &Path, identity: Option<&CertFiles>, alpn: &[u8]) -> rustls::ClientConfig {
    let mut cfg = testkit::tls::client_config(ca, identity);
    cfg.alpn_protocols = vec![alpn.to_vec()];
    cfg
}

/// Connects and waits for the server's "ok": the server's certificate on
/// success, the reason otherwise. (With TLS 1.3 the client finishes its
/// side of the handshake before the server has checked the client's
/// certificate; a refusal arrives as an alert on the first read.)
async fn talk(
    addr: SocketAddr,
    cfg: rustls::ClientConfig,
) -> Result<CertificateDer<'static>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let name = ServerName::try_from("localhost").unwrap();
    let mut s = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())?;
    assert_eq!(&buf, b"ok");
    let (_, session) = s.get_ref();
    Ok(session.peer_certificates().expect("server certificate")[0].clone())
}

fn serial_and_cn(der: &CertificateDer<'_>) -> (Vec<u8>, String) {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, c) = X509Certificate::from_der(der).unwrap();
    let cn = c
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or_default()
        .to_string();
    (c.raw_serial().to_vec(), cn)
}

fn failures(port: &str) -> u64 {
    let text = inflight::metrics::METRICS.render();
    let want = format!("inflight_tls_handshake_failures_total{{port=\"{port}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&want))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn the_peer_port_admits_a_node_certificate_and_refuses_a_client_certificate_of_the_same_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let node1 = pki.node(1, 1);
    let node2 = pki.node(2, 1);
    let alice = pki.client("alice");
    let other = Pki::new(&dir.path().join("other"), "ca");
    let stranger = other.node(2, 1);

    let tls = ServerTls::new(
        Port::Peer,
        port_files(Port::Peer, &node1, Some(&pki.ca())),
        vec![],
    )
    .unwrap();
    let addr = serve(tls).await;
    let before = failures("peer");

    let cert = talk(addr, client_config(&pki.ca(), Some(&node2), b"h2"))
        .await
        .expect("a node certificate of the cluster CA gets in");
    assert_eq!(serial_and_cn(&cert).1, "node-1");

    talk(addr, client_config(&pki.ca(), Some(&alice), b"h2"))
        .await
        .expect_err("a client certificate is never a peer");
    let leaf = CertificateDer::from_pem_file(&alice.cert).unwrap();
    let why = inflight::tls::refuse_as_peer(&leaf, &[]).expect("refused as a peer");
    assert!(why.contains("serverAuth") && why.contains("alice"), "{why}");
    talk(addr, client_config(&pki.ca(), None, b"h2"))
        .await
        .expect_err("no certificate");
    talk(addr, client_config(&pki.ca(), Some(&stranger), b"h2"))
        .await
        .expect_err("a node certificate of another CA");
    testkit::wait_until(
        Duration::from_secs(5),
        "each refusal counted in inflight_tls_handshake_failures_total{port=\"peer\"}",
        || async { failures("peer") >= before + 3 },
    )
    .await;
}

#[tokio::test]
async fn with_peer_allowed_cn_only_the_listed_nodes_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let node1 = pki.node(1, 1);
    let tls = ServerTls::new(
        Port::Peer,
        port_files(Port::Peer, &node1, Some(&pki.ca())),
        vec!["node-2".into()],
    )
    .unwrap();
    let addr = serve(tls).await;
    talk(addr, client_config(&pki.ca(), Some(&pki.node(2, 1)), b"h2"))
        .await
        .expect("node-2 is listed");
    talk(addr, client_config(&pki.ca(), Some(&pki.node(3, 1)), b"h2"))
        .await
        .expect_err("node-3 is not");
}

#[tokio::test]
async fn the_client_port_asks_for_a_certificate_only_with_a_trusted_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let node1 = pki.node(1, 1);
    let alice = pki.client("alice");
    let expired = pki.expired_client("old");
    let other = Pki::new(&dir.path().join("other"), "ca");
    let mallory = other.client("mallory");

    let open = serve(
        ServerTls::new(Port::Client, port_files(Port::Client, &node1, None), vec![]).unwrap(),
    )
    .await;
    talk(open, client_config(&pki.ca(), None, b"h2"))
        .await
        .expect("no client certificate asked for");

    let strict = serve(
        ServerTls::new(
            Port::Client,
            port_files(Port::Client, &node1, Some(&pki.ca())),
            vec![],
        )
        .unwrap(),
    )
    .await;
    talk(strict, client_config(&pki.ca(), Some(&alice), b"h2"))
        .await
        .expect("a client certificate of the CA");
    for (who, id) in [
        ("none", None),
        ("expired", Some(&expired)),
        ("other CA", Some(&mallory)),
    ] {
        let e = talk(strict, client_config(&pki.ca(), id, b"h2")).await;
        assert!(e.is_err(), "{who}: refused");
    }
}

#[tokio::test]
async fn a_connection_that_never_sends_a_handshake_does_not_hold_up_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let node1 = pki.node(1, 1);
    let addr = serve(
        ServerTls::new(Port::Client, port_files(Port::Client, &node1, None), vec![]).unwrap(),
    )
    .await;
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::timeout(
        Duration::from_secs(2),
        talk(addr, client_config(&pki.ca(), None, b"h2")),
    )
    .await
    .expect("served while 20 connections sit silent")
    .expect("handshake");
    drop(silent);
}

#[tokio::test]
async fn reload_serves_a_replaced_certificate_to_new_connections_and_keeps_it_when_a_file_is_bad() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "ca");
    let node1 = pki.node(1, 1);
    let tls = ServerTls::new(Port::Client, port_files(Port::Client, &node1, None), vec![]).unwrap();
    let addr = serve(tls.clone()).await;
    let cfg = || client_config(&pki.ca(), None, b"h2");
    let first = serial_and_cn(&talk(addr, cfg()).await.unwrap());

    let again = pki.node(1, 2);
    assert_eq!(again, node1, "the same files, rewritten");
    let before_reload = serial_and_cn(&talk(addr, cfg()).await.unwrap());
    assert_eq!(before_reload, first, "nothing changes before the reload");
    tls.reload().expect("reload");
    let second = serial_and_cn(&talk(addr, cfg()).await.unwrap());
    assert_eq!(second.1, "node-1");
    assert_ne!(second.0, first.0, "the new certificate's serial");

    std::fs::write(&node1.key, "garbage").unwrap();
    let e = tls.reload().expect_err("a bad key");
    assert!(
        e.contains("--key-file") && e.contains("node-1-key.pem"),
        "{e}"
    );
    let still = serial_and_cn(&talk(addr, cfg()).await.unwrap());
    assert_eq!(still, second, "the port keeps the certificate it had");
}

// ---- Real clusters: every port over TLS (`ClusterOptions::tls`). ----

mod cluster {
    use std::time::Duration;

    use inflight::client::{Client, ClientOptions};
    use inflight::pb;
    use inflight::wire::ClientTls;
    use testkit::tls::{CertFiles, Pki};
    use testkit::{Cluster, ClusterOptions};

    use super::serial_and_cn;

    /// `--join` calls AddLearner with the joining node's own certificate:
    /// a node certificate may add a learner without being an admin, a
    /// client certificate that is not an admin may not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_node_joins_with_its_own_certificate_and_a_client_that_is_no_admin_cannot_add_one() {
        let mut c = tls_cluster().await;
        let pki = c.pki.as_ref().unwrap();
        let alice = pki.client("alice");
        let leader = c.wait_leader(Duration::from_secs(10)).await;
        let as_alice = client(&c.nodes[&leader].grpc, tls(&pki.ca(), Some(&alice)));
        let e = as_alice
            .add_learner(
                9,
                &inflight::wire::MemberAddr::new("127.0.0.1:1", "127.0.0.1:2"),
            )
            .await
            .expect_err("alice is no admin");
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("AddLearner"), "{e:?}");

        c.join_new(4).expect("start node 4");
        let admin = c.admin();
        testkit::wait_for(
            Duration::from_secs(30),
            "node 4 joined as a learner",
            || async {
                let l = admin.member_list().await.ok()?;
                l.members.iter().any(|m| m.id == 4).then_some(())
            },
        )
        .await;
        admin
            .promote(4)
            .await
            .expect("the harness's admin certificate promotes");
    }

    async fn tls_cluster() -> Cluster {
        Cluster::start(ClusterOptions {
            tls: true,
            ..ClusterOptions::default()
        })
        .await
    }

    fn tls(ca: &std::path::Path, id: Option<&CertFiles>) -> ClientTls {
        ClientTls::from_files(ca, id.map(|f| (f.cert.as_path(), f.key.as_path()))).unwrap()
    }

    /// A client of one node that tries once.
    fn client(addr: &str, tls: ClientTls) -> Client {
        Client::with_options(
            [addr.to_string()],
            ClientOptions {
                request_timeout: Duration::from_secs(2),
                retry_for: Duration::ZERO,
                tls: Some(tls),
                ..ClientOptions::default()
            },
        )
        .unwrap()
    }

    fn raft_client(
        addr: &str,
        tls: &ClientTls,
    ) -> pb::raft_client::RaftClient<tonic::transport::Channel> {
        pb::raft_client::RaftClient::new(
            inflight::wire::secure_endpoint(addr, Some(tls.config()))
                .unwrap()
                .connect_lazy(),
        )
    }

    fn https(ca: &std::path::Path, id: Option<&CertFiles>) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .no_proxy()
            .timeout(Duration::from_secs(3))
            .add_root_certificate(
                reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap(),
            );
        if let Some(f) = id {
            let mut pem = std::fs::read(&f.cert).unwrap();
            pem.extend(std::fs::read(&f.key).unwrap());
            b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
        }
        b.build().unwrap()
    }

    fn failures(metrics: &str, port: &str) -> u64 {
        let want = format!("inflight_tls_handshake_failures_total{{port=\"{port}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&want))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn no_certificate_another_cas_and_an_expired_one_are_refused_on_the_client_peer_and_http_ports(
    ) {
        let c = tls_cluster().await;
        let pki = c.pki.as_ref().unwrap();
        let ca = pki.ca();
        let n = &c.nodes[&1];
        let other = Pki::new(&c.dir.join("other-ca"), "ca");
        let mallory = other.client("mallory");
        let mallory_node = other.node(2, 1);
        let expired = pki.expired_client("old");

        // A valid client certificate works on the client and HTTP ports.
        let alice = pki.client("alice");
        let ok = client(&n.grpc, tls(&ca, Some(&alice)));
        ok.insert("tls/k", "v")
            .await
            .expect("a client certificate of the CA");
        let st = ok
            .node_status(&n.grpc, Duration::from_secs(2))
            .await
            .expect("status");
        assert_eq!(st.id, 1);
        let good_http = https(&ca, Some(&alice));
        let livez = good_http
            .get(format!("https://{}/livez", n.http))
            .send()
            .await
            .expect("https with a client certificate");
        assert_eq!(livez.status().as_u16(), 200);
        // /cluster: node 1 reaches every member's client port over TLS with
        // its own certificate.
        let cluster: serde_json::Value = good_http
            .get(format!("https://{}/cluster", n.http))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .map(|t| serde_json::from_str(&t).expect("JSON"))
            .unwrap();
        let members = cluster["members"].as_array().expect("members");
        assert_eq!(members.len(), 3, "{cluster}");
        assert!(
            members.iter().all(|m| m["reachable"] == true),
            "every member answers node 1 over TLS: {cluster}"
        );

        let bad: [(&str, Option<&CertFiles>, Option<&CertFiles>); 3] = [
            ("no certificate", None, None),
            ("another CA", Some(&mallory), Some(&mallory_node)),
            ("expired", Some(&expired), Some(&expired)),
        ];
        for (what, id, peer_id) in bad {
            let e = client(&n.grpc, tls(&ca, id))
                .node_status(&n.grpc, Duration::from_secs(2))
                .await
                .expect_err(what);
            assert_ne!(e.code(), tonic::Code::Ok, "client port, {what}");
            let e = raft_client(&n.peer, &tls(&ca, peer_id))
                .vote(pb::RaftMessage {
                    payload: vec![1, 2, 3],
                    ..Default::default()
                })
                .await
                .expect_err(what);
            assert_ne!(
                e.code(),
                tonic::Code::InvalidArgument,
                "peer port, {what}: refused before the Raft service read the message: {e:?}"
            );
            let e = https(&ca, id)
                .get(format!("https://{}/livez", n.http))
                .send()
                .await;
            assert!(e.is_err(), "http port, {what}: {e:?}");
        }
        // Plain HTTP on the HTTPS port is refused too.
        assert!(reqwest::Client::new()
            .get(format!("http://{}/livez", n.http))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false)
            .eq(&false));

        let metrics = good_http
            .get(format!("https://{}/metrics", n.http))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for port in ["client", "peer", "http"] {
            assert!(
                failures(&metrics, port) >= 3,
                "{port}: three refusals counted\n{metrics}"
            );
        }
    }

    /// Everything a forged peer could do with a client certificate of the
    /// cluster CA: a snapshot that would empty the table, an AppendEntries
    /// evicting a record, a vote far in the future. None reaches Raft.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_client_certificate_on_the_peer_port_cannot_install_a_snapshot_append_an_evict_or_vote(
    ) {
        use inflight::raft::TypeConfig;
        type Vote = openraft::alias::VoteOf<TypeConfig>;
        use openraft::entry::RaftEntry;
        use openraft::raft::{AppendEntriesRequest, VoteRequest};
        use openraft::testing::log_id;

        let c = tls_cluster().await;
        let leader = c.wait_leader(Duration::from_secs(10)).await;
        let admin = c.admin();
        admin.insert("victim", "v").await.expect("insert");
        admin.insert("live", "v").await.expect("insert");
        let target = if leader == 1 { 2 } else { 1 };
        c.wait_applied(
            target,
            c.status(leader).await.unwrap().applied_index,
            Duration::from_secs(10),
        )
        .await;
        let before = c.status(target).await.expect("status");
        let members_before = admin.member_list().await.expect("members");

        let pki = c.pki.as_ref().unwrap();
        let alice = pki.client("alice");
        let id = tls(&pki.ca(), Some(&alice));
        let peer = &c.nodes[&target].peer;
        let term = before.term;
        let last = before.last_log_index;

        let meta = inflight::codec::encode(&(
            Vote::new_committed(term + 100, 9),
            openraft::alias::SnapshotMetaOf::<TypeConfig> {
                last_log_id: Some(log_id::<TypeConfig>(term + 100, 9, last + 100)),
                last_membership: Default::default(),
            },
        ))
        .unwrap();
        let snapshot = raft_client(peer, &id)
            .install_snapshot(futures::stream::iter(vec![pb::SnapshotChunk {
                meta,
                data: Vec::new(),
            }]))
            .await
            .expect_err("InstallSnapshot refused");

        let evict = openraft::alias::EntryOf::<TypeConfig>::new_normal(
            log_id::<TypeConfig>(term, leader, last + 1),
            inflight::state::Command {
                at_ms: testkit::now_ms(),
                request: None,
                action: inflight::state::Action::Evict {
                    ids: vec![inflight::state::HandoffId {
                        key: "victim".into(),
                        revision: 1,
                    }],
                },
            },
        );
        let append = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(term, leader),
            prev_log_id: Some(log_id::<TypeConfig>(term, leader, last)),
            entries: vec![evict],
            leader_commit: Some(log_id::<TypeConfig>(term, leader, last + 1)),
        };
        let append = raft_client(peer, &id)
            .append_entries(pb::RaftMessage {
                payload: inflight::codec::encode(&append).unwrap(),
                ..Default::default()
            })
            .await
            .expect_err("AppendEntries refused");

        let vote = VoteRequest::<TypeConfig>::new(
            Vote::new(term + 1000, 9),
            Some(log_id::<TypeConfig>(term + 1000, 9, last + 1000)),
        );
        let vote = raft_client(peer, &id)
            .vote(pb::RaftMessage {
                payload: inflight::codec::encode(&vote).unwrap(),
                ..Default::default()
            })
            .await
            .expect_err("Vote refused");
        for (what, e) in [
            ("InstallSnapshot", snapshot),
            ("AppendEntries", append),
            ("Vote", vote),
        ] {
            // A transport failure made on this side (the connection was
            // closed at the handshake), not a status the Raft service sent.
            let transport = std::error::Error::source(&e)
                .is_some_and(|s| s.downcast_ref::<tonic::transport::Error>().is_some());
            assert!(
                transport,
                "{what}: refused at the handshake, before the Raft service: {e:?}"
            );
        }

        let after = c.status(target).await.expect("the node is still up");
        assert_eq!(after.term, term, "the term is unchanged");
        assert_eq!(
            after.records, before.records,
            "the record count is unchanged"
        );
        assert_eq!(after.leader_id, before.leader_id, "the same leader");
        let membership = |l: &pb::MemberListResponse| {
            l.members
                .iter()
                .map(|m| (m.id, m.address.clone(), m.peer_address.clone(), m.voter))
                .collect::<Vec<_>>()
        };
        let members_after = admin.member_list().await.expect("members");
        assert_eq!(membership(&members_after), membership(&members_before));
        let got = admin
            .get("victim", inflight::client::Consistency::Linearizable)
            .await
            .expect("get");
        assert!(
            got.record.is_some(),
            "the record AppendEntries tried to evict is still there"
        );
    }

    /// `systemctl reload` sends SIGHUP to every node, TLS or not; its
    /// default action would end the process.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sighup_does_not_stop_a_node_without_tls() {
        let c = Cluster::start(ClusterOptions {
            nodes: 1,
            ..ClusterOptions::default()
        })
        .await;
        let pid = c.pid(1).expect("node 1 runs");
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(pid as i32, libc::SIGHUP);
        }
        let log = c.nodes[&1].log.clone();
        testkit::wait_until(
            Duration::from_secs(10),
            "the node to log the SIGHUP",
            || {
                let log = log.clone();
                async move {
                    std::fs::read_to_string(&log)
                        .unwrap_or_default()
                        .contains("SIGHUP: no TLS files to reload")
                }
            },
        )
        .await;
        assert!(c.status(1).await.is_some(), "node 1 still answers");
        c.client()
            .insert("after-hup", "v")
            .await
            .expect("and writes");
    }

    /// The roles read the caller's name from the handshake of the node's own
    /// TLS acceptor (`Request::peer_certs`), on every node of the cluster.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn roles_see_the_client_certificate_the_tls_acceptor_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let auth = dir.path().join("auth.toml");
        std::fs::write(
            &auth,
            "[roles.all]\nread = [\"\"]\nwrite = [\"\"]\nwatch = [\"\"]\n\
             [roles.reader]\nread = [\"a/\"]\n\
             [identities]\n\"test\" = \"all\"\n\"alice\" = \"reader\"\n",
        )
        .unwrap();
        let c = Cluster::start(ClusterOptions {
            tls: true,
            extra_args: vec![
                "--auth-file".into(),
                auth.display().to_string(),
                "--admin-identities".into(),
                "test,node-1,node-2,node-3".into(),
            ],
            ..ClusterOptions::default()
        })
        .await;
        c.client()
            .insert("a/1", "v")
            .await
            .expect("the harness's role");
        let pki = c.pki.as_ref().unwrap();
        let alice = pki.client("alice");
        for n in c.nodes.values() {
            let as_alice = client(&n.grpc, tls(&pki.ca(), Some(&alice)));
            let e = as_alice
                .insert("a/2", "v")
                .await
                .expect_err("alice may only read");
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
            assert!(e.message().contains("alice"), "{e:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sighup_after_replacing_a_nodes_certificate_new_connections_see_it_and_no_request_fails(
    ) {
        let c = tls_cluster().await;
        let pki = c.pki.as_ref().unwrap();
        let ca = pki.ca();
        let alice = pki.client("alice");
        let n1 = (
            c.nodes[&1].grpc.clone(),
            c.nodes[&1].peer.clone(),
            c.nodes[&1].http.clone(),
        );
        let served = |addr: String| {
            let ca = ca.clone();
            let alice = alice.clone();
            async move { super::server_certificate(&addr, &ca, &alice, b"h2").await }
        };
        let (serial_before, cn) = serial_and_cn(&served(n1.0.clone()).await);
        assert_eq!(cn, "node-1");

        // Clients running through the swap: one on long-lived connections,
        // one making a new connection for every request.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let steady = c.client();
        let endpoints = c.endpoints();
        let id = tls(&ca, Some(&alice));
        let loop_task = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, Vec::new());
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || i < 20 {
                    i += 1;
                    let fresh = Client::with_options(
                        endpoints.clone(),
                        ClientOptions {
                            tls: Some(id.clone()),
                            ..ClientOptions::default()
                        },
                    )
                    .unwrap();
                    for (who, cl) in [("steady", &steady), ("fresh", &fresh)] {
                        match cl.insert(&format!("swap/{who}/{i}"), "v").await {
                            Ok(_) => ok += 1,
                            Err(e) => failed.push(format!("{who} {i}: {e:?}")),
                        }
                    }
                }
                (ok, failed)
            })
        };

        let ips: Vec<std::net::IpAddr> = vec![c.nodes[&1].ip.parse().unwrap()];
        pki.node_at(1, 7, &ips);
        let pid = c.pid(1).expect("node 1 runs");
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(pid as i32, libc::SIGHUP);
        }
        testkit::wait_until(
            Duration::from_secs(10),
            "node 1's client port to serve the new certificate",
            || {
                let served = served(n1.0.clone());
                let before = serial_before.clone();
                async move { serial_and_cn(&served.await).0 != before }
            },
        )
        .await;
        let (serial_after, cn) = serial_and_cn(&served(n1.0.clone()).await);
        assert_eq!(serial_after, vec![7], "the reissued certificate's serial");
        assert_eq!(cn, "node-1");
        let (peer_serial, _) =
            serial_and_cn(&super::server_certificate(&n1.1, &ca, &pki.node(9, 1), b"h2").await);
        assert_eq!(peer_serial, vec![7], "the peer port reloaded too");
        let (http_serial, _) =
            serial_and_cn(&super::server_certificate(&n1.2, &ca, &alice, b"http/1.1").await);
        assert_eq!(http_serial, vec![7], "and the HTTP port");

        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (ok, failed) = loop_task.await.unwrap();
        assert!(
            failed.is_empty(),
            "failed requests during the swap: {failed:?}"
        );
        assert!(ok >= 40, "{ok} requests");
        assert!(c.status(1).await.is_some(), "node 1 still up");
    }
}

/// The certificate a server presents, from a handshake as `identity`.
async fn server_certificate(
    addr: &str,
    ca: &Path,
    identity: &CertFiles,
    alpn: &[u8],
) -> CertificateDer<'static> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let cfg = client_config(ca, Some(identity), alpn);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let host = addr.rsplit_once(':').unwrap().0;
    let name = ServerName::try_from(host.to_string()).unwrap();
    let s = connector.connect(name, tcp).await.expect("handshake");
    s.get_ref().1.peer_certificates().expect("certificate")[0].clone()
}

/// `inflight dev --tls` as the README shows it: the printed exports are
/// all a client needs, for gRPC and for `health` over https.
#[test]
fn dev_tls_prints_the_client_settings_that_reach_every_port() {
    use std::process::{Command, Stdio};
    const BIN: &str = env!("CARGO_BIN_EXE_inflight");
    use testkit::Reaper;
    let dir = tempfile::tempdir().unwrap();
    let base = testkit::free_port_block(9);
    let out_path = dir.path().join("dev.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let _dev = Reaper(
        Command::new(BIN)
            .args(["dev", "--tls", "--dir"])
            .arg(dir.path().join("cluster"))
            .args(["--grpc-port", &base.to_string()])
            .args(["--peer-port", &(base + 3).to_string()])
            .args(["--http-port", &(base + 6).to_string()])
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let output = || std::fs::read_to_string(&out_path).unwrap_or_default();
    testkit::wait_until_blocking(Duration::from_secs(30), "dev to report a leader", || {
        output().contains("leader: node")
    });
    let env: Vec<(String, String)> = output()
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "INFLIGHT_ENDPOINTS",
            "INFLIGHT_CACERT",
            "INFLIGHT_CERT",
            "INFLIGHT_KEY"
        ],
        "{}",
        output()
    );
    let run = |args: &[&str], without: &[&str]| {
        let mut c = Command::new(BIN);
        c.args(args).envs(env.iter().cloned());
        for v in without {
            c.env_remove(v);
        }
        c.output().unwrap()
    };
    let ins = run(&["insert", "tls/1", "v"], &[]);
    assert!(
        ins.status.success(),
        "{}",
        String::from_utf8_lossy(&ins.stderr)
    );
    let get = run(&["get", "tls/1"], &[]);
    assert_eq!(
        String::from_utf8_lossy(&get.stdout).lines().last(),
        Some("v")
    );
    // The printed certificate is the dev cluster's admin: operator commands work.
    let failed = run(&["handoff", "failed"], &[]);
    assert!(
        failed.status.success(),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );
    let http = format!("127.0.0.1:{}", base + 6);
    let health = run(&["health", "--http", &http], &[]);
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );
    assert!(String::from_utf8_lossy(&health.stdout).starts_with("https://"));
    let anonymous = run(
        &["health", "--http", &http],
        &["INFLIGHT_CERT", "INFLIGHT_KEY"],
    );
    assert!(
        !anonymous.status.success(),
        "the HTTP port asks for a client certificate"
    );
    // A refused handshake is not retried for 20 s like a node that is down:
    // the client gives up at once and says why.
    let started = std::time::Instant::now();
    let refused = run(&["get", "tls/1"], &["INFLIGHT_CERT", "INFLIGHT_KEY"]);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains("TLS refused") && why.contains("Certificate"),
        "{why}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// A TLS file that does not load stops `serve` before it listens, naming
/// the flag and the file.
#[test]
fn serve_refuses_to_start_with_a_certificate_file_that_does_not_load() {
    const BIN: &str = env!("CARGO_BIN_EXE_inflight");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("certs"), "ca");
    let node = pki.node(1, 1);
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let (grpc, peer) = (testkit::free_port(), testkit::free_port());
    let run = |cert: &Path, key: &Path| {
        std::process::Command::new(BIN)
            .args(["serve", "--id", "1", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen", &format!("127.0.0.1:{grpc}")])
            .args(["--peer-listen", &format!("127.0.0.1:{peer}")])
            .args([
                "--initial-cluster",
                &format!("1=127.0.0.1:{grpc}/127.0.0.1:{peer}"),
            ])
            .arg("--cert-file")
            .arg(cert)
            .arg("--key-file")
            .arg(key)
            .arg("--trusted-ca-file")
            .arg(pki.ca())
            .env("INFLIGHT_LOG_FORMAT", "text")
            .output()
            .unwrap()
    };
    let out = run(&garbage, &node.key);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--cert-file") && err.contains("garbage.pem"),
        "{err}"
    );
    // A certificate with another certificate's key.
    let other = pki.node(2, 1);
    let out = run(&node.cert, &other.key);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--key-file") && err.contains("node-2-key.pem"),
        "{err}"
    );
}
