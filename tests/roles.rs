//! Roles over real TLS: a one-node cluster in this process, its InFlight and
//! Cluster services served by tonic with a required client certificate from
//! a test CA (rcgen), and real gRPC clients presenting certificates of their
//! own. The names the server reads come from the TLS handshake, as in
//! production; only the listener is tonic's own TLS rather than the node's.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use inflight::api::{ClusterService, InFlightService, Limits, Retention};
use inflight::auth::Authorizer;
use inflight::handoff::{HandoffState, SinkSpec};
use inflight::metrics::{OperationLabels, ResultLabels, METRICS};
use inflight::pb;
use inflight::pb::cluster_client::ClusterClient;
use inflight::pb::in_flight_client::InFlightClient;
use inflight::raft::{self, Durability, RaftSettings};
use inflight::shutdown::{Shutdown, Tasks};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use testkit::wait_until;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig,
};
use tonic::Code;

/// The metric is one per process and the tests of this file run side by
/// side: those that count refusals hold this.
static COUNTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const ROLES: &str = r#"
# The role of the issue's test: may write sms/ and read call/ (and watch call/).
[roles.sms-writer]
read = ["call/"]
write = ["sms/"]
watch = ["call/"]

[roles.everything]
read = [""]
write = [""]
watch = [""]

[identities]
"sms-dispatcher" = "sms-writer"
"seeder" = "everything"
"#;

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, PEM.
struct Pem {
    cert: String,
    key: String,
}

impl Ca {
    fn new() -> Ca {
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "roles test CA");
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        Ca {
            issuer: CertifiedIssuer::self_signed(p, key).expect("CA certificate"),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn issue(&self, cn: Option<&str>, sans: Vec<SanType>, server: bool) -> Pem {
        let mut p = CertificateParams::default();
        if let Some(cn) = cn {
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        p.subject_alt_names = sans;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &self.issuer).expect("certificate");
        Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn client(&self, cn: &str) -> Pem {
        self.issue(Some(cn), vec![], false)
    }
}

fn dns(s: &str) -> SanType {
    SanType::DnsName(s.try_into().expect("dns name"))
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().expect("uri"))
}

/// A one-node cluster serving InFlight and Cluster on loopback, with TLS
/// (client certificates required) or without.
struct Node {
    port: u16,
    ca: Option<String>,
    node: raft::Node,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start(auth: Authorizer, tls: Option<&Ca>) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        // A single voter never dials a peer: the peer address is only a name.
        let addr = raft::MemberAddr::new(format!("127.0.0.1:{port}"), "127.0.0.1:1");
        let node = raft::Node::start(&RaftSettings {
            id: 1,
            data_dir: dir.path().to_path_buf(),
            advertise: addr.clone(),
            durability: Durability::Memory,
            snapshot_every: 10_000,
            timing: raft::Timing::new((150, 300), None).expect("timing"),
            peer_source_ip: None,
            peer_tls: None,
        })
        .await
        .expect("node starts");
        node.initialize_if_first(&BTreeMap::from([(1, addr)]))
            .await
            .expect("initialize");
        let n = node.clone();
        wait_until(Duration::from_secs(10), "the node leads", || {
            let n = n.clone();
            async move { n.is_leader() }
        })
        .await;

        let auth = Arc::new(auth);
        let handoff = Arc::new(HandoffState::new(&SinkSpec::Noop, None, 1 << 30));
        let records = pb::in_flight_server::InFlightServer::new(InFlightService::new(
            node.clone(),
            Shutdown::never(),
            Limits::default(),
            Retention::default(),
            handoff.clone(),
            auth.clone(),
        ));
        let cluster = pb::cluster_server::ClusterServer::new(ClusterService::new(
            node.clone(),
            handoff,
            auth,
        ));
        let mut server = Server::builder();
        let ca = tls.map(|ca| {
            let cert = ca.issue(
                Some("node-1"),
                vec![dns("localhost"), SanType::IpAddress([127, 0, 0, 1].into())],
                true,
            );
            server = Server::builder()
                .tls_config(
                    ServerTlsConfig::new()
                        .identity(Identity::from_pem(&cert.cert, &cert.key))
                        .client_ca_root(Certificate::from_pem(ca.pem())),
                )
                .expect("server TLS config");
            ca.pem()
        });
        let serve = server
            .add_service(records)
            .add_service(cluster)
            .serve_with_incoming(TcpListenerStream::new(listener));
        tokio::spawn(async move {
            if let Err(e) = serve.await {
                eprintln!("test server stopped: {e}");
            }
        });
        Node {
            port,
            ca,
            node,
            _dir: dir,
        }
    }

    /// A channel presenting `cert` (a TLS node needs one: it requires client
    /// certificates).
    async fn channel(&self, cert: Option<&Pem>) -> Channel {
        let ep = match &self.ca {
            None => Endpoint::from_shared(format!("http://127.0.0.1:{}", self.port)).expect("uri"),
            Some(ca) => {
                let mut tls = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(ca))
                    .domain_name("localhost");
                if let Some(c) = cert {
                    tls = tls.identity(Identity::from_pem(&c.cert, &c.key));
                }
                Endpoint::from_shared(format!("https://127.0.0.1:{}", self.port))
                    .expect("uri")
                    .tls_config(tls)
                    .expect("client TLS config")
            }
        };
        ep.connect().await.expect("connect")
    }

    async fn records(&self, cert: Option<&Pem>) -> InFlightClient<Channel> {
        InFlightClient::new(self.channel(cert).await)
    }

    async fn cluster(&self, cert: Option<&Pem>) -> ClusterClient<Channel> {
        ClusterClient::new(self.channel(cert).await)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let n = self.node.clone();
        tokio::spawn(async move { n.shutdown().await });
    }
}

fn auth_file(dir: &Path, text: &str) -> std::path::PathBuf {
    let p = dir.join("auth.toml");
    std::fs::write(&p, text).expect("write auth file");
    p
}

fn denied_count(op: &str) -> u64 {
    METRICS
        .permission_denied
        .get_or_create(&OperationLabels {
            operation: op.into(),
        })
        .get()
}

fn insert(key: &str) -> pb::InsertRequest {
    pb::InsertRequest {
        key: key.into(),
        value: b"v".to_vec(),
        ..Default::default()
    }
}

fn update(key: &str) -> pb::UpdateRequest {
    pb::UpdateRequest {
        key: key.into(),
        value: b"v2".to_vec(),
        ..Default::default()
    }
}

fn delete(key: &str) -> pb::DeleteRequest {
    pb::DeleteRequest {
        key: key.into(),
        ..Default::default()
    }
}

fn complete(key: &str) -> pb::CompleteRequest {
    pb::CompleteRequest {
        key: key.into(),
        ..Default::default()
    }
}

fn get(key: &str) -> pb::GetRequest {
    pb::GetRequest {
        key: key.into(),
        ..Default::default()
    }
}

fn scan(prefix: &str) -> pb::ScanRequest {
    pb::ScanRequest {
        prefix: prefix.into(),
        ..Default::default()
    }
}

fn watch(prefix: &str) -> pb::WatchRequest {
    pb::WatchRequest {
        prefix: prefix.into(),
        ..Default::default()
    }
}

#[track_caller]
fn refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, message: &str) {
    let s = r.expect_err("refused");
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert_eq!(s.message(), message);
}

/// The value of `key` as the all-powerful seeder reads it, or None.
async fn stored(seeder: &mut InFlightClient<Channel>, key: &str) -> Option<Vec<u8>> {
    match seeder.get(get(key)).await {
        Ok(r) => r.into_inner().record.map(|r| r.value.to_vec()),
        Err(s) if s.code() == Code::NotFound => None,
        Err(s) => panic!("get {key}: {s:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_may_write_sms_and_read_call_gets_exactly_that_on_every_kind_of_call() {
    let _serial = COUNTING.lock().await;
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let auth = Authorizer::open(Some(&auth_file(dir.path(), ROLES)), &[]).unwrap();
    let node = Node::start(auth, Some(&ca)).await;
    let seeder_cert = ca.client("seeder");
    let mut seeder = node.records(Some(&seeder_cert)).await;
    for k in ["call/1", "sms/1", "sms/2", "sms/3"] {
        seeder.insert(insert(k)).await.expect("seed");
    }
    let me = ca.client("sms-dispatcher");
    let mut c = node.records(Some(&me)).await;
    let (w0, r0, watch0) = (
        denied_count("write"),
        denied_count("read"),
        denied_count("watch"),
    );

    // Unary writes: allowed under sms/, refused elsewhere, and nothing applied.
    c.insert(insert("sms/a")).await.expect("insert sms/a");
    c.update(update("sms/1")).await.expect("update sms/1");
    c.complete(complete("sms/2")).await.expect("complete sms/2");
    c.delete(delete("sms/3")).await.expect("delete sms/3");
    let who = "identity \"sms-dispatcher\"";
    refused(
        c.insert(insert("call/a")).await,
        &format!("{who} may not write \"call/a\""),
    );
    refused(
        c.insert(insert("sms")).await,
        &format!("{who} may not write \"sms\""),
    );
    refused(
        c.insert(insert("smsx/1")).await,
        &format!("{who} may not write \"smsx/1\""),
    );
    refused(
        c.update(update("call/1")).await,
        &format!("{who} may not write \"call/1\""),
    );
    refused(
        c.complete(complete("call/1")).await,
        &format!("{who} may not write \"call/1\""),
    );
    refused(
        c.delete(delete("call/1")).await,
        &format!("{who} may not write \"call/1\""),
    );
    assert_eq!(stored(&mut seeder, "call/a").await, None);
    assert_eq!(stored(&mut seeder, "smsx/1").await, None);
    let call1 = seeder.get(get("call/1")).await.unwrap().into_inner();
    let call1 = call1.record.unwrap();
    assert_eq!(
        (call1.version, call1.state),
        (1, pb::RecordState::Live as i32),
        "call/1 untouched"
    );

    // Unary reads: get and scan under call/ only; a scan must ask for a
    // prefix within the grant.
    let got = c.get(get("call/1")).await.expect("get call/1").into_inner();
    assert_eq!(got.record.unwrap().key, "call/1");
    refused(
        c.get(get("sms/1")).await,
        &format!("{who} may not read \"sms/1\""),
    );
    let page = c
        .scan(scan("call/"))
        .await
        .expect("scan call/")
        .into_inner();
    assert_eq!(
        page.records
            .iter()
            .map(|r| r.key.as_str())
            .collect::<Vec<_>>(),
        vec!["call/1"]
    );
    c.scan(scan("call/1")).await.expect("scan within the grant");
    refused(
        c.scan(scan("call")).await,
        &format!("{who} may not read prefix \"call\""),
    );
    refused(
        c.scan(scan("")).await,
        &format!("{who} may not read prefix \"\""),
    );
    refused(
        c.scan(scan("sms/")).await,
        &format!("{who} may not read prefix \"sms/\""),
    );

    // Batch: all or nothing.
    let op = |o: pb::batch_op::Op| pb::BatchOp { op: Some(o) };
    let ok = c
        .batch(pb::BatchRequest {
            ops: vec![
                op(pb::batch_op::Op::Insert(insert("sms/b"))),
                op(pb::batch_op::Op::Update(update("sms/a"))),
            ],
            request_id: String::new(),
        })
        .await
        .expect("batch within sms/");
    assert_eq!(ok.into_inner().results.len(), 2);
    let s = c
        .batch(pb::BatchRequest {
            ops: vec![
                op(pb::batch_op::Op::Insert(insert("sms/c"))),
                op(pb::batch_op::Op::Complete(complete("sms/b"))),
                op(pb::batch_op::Op::Delete(delete("call/1"))),
            ],
            request_id: String::new(),
        })
        .await
        .expect_err("one op outside the grant");
    assert_eq!(s.code(), Code::PermissionDenied);
    assert_eq!(
        s.message(),
        format!("ops[2]: {who} may not write \"call/1\"")
    );
    assert_eq!(
        s.metadata()
            .get(inflight::wire::FAILED_OP_KEY)
            .and_then(|v| v.to_str().ok()),
        Some("2")
    );
    assert_eq!(stored(&mut seeder, "sms/c").await, None, "nothing applied");
    let b = seeder.get(get("sms/b")).await.unwrap().into_inner();
    assert_eq!(b.record.unwrap().state, pb::RecordState::Live as i32);

    // Frames: each op on its own; the refused ones fail alone.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut results = c
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("session opens")
        .into_inner();
    use pb::frame_op::Op as F;
    let fop = |o: F| pb::FrameOp { op: Some(o) };
    tx.send(pb::Frame {
        id: 7,
        ops: vec![
            fop(F::Insert(insert("sms/f"))),
            fop(F::Insert(insert("call/f"))),
            fop(F::Get(get("call/1"))),
            fop(F::Get(get("sms/1"))),
            fop(F::Delete(delete("call/1"))),
            fop(F::Update(update("sms/f"))),
            fop(F::Complete(complete("call/1"))),
        ],
    })
    .await
    .unwrap();
    let answer = results
        .next()
        .await
        .expect("an answer")
        .expect("frame answered");
    assert_eq!(answer.id, 7);
    let outcome: Vec<Result<(), (i32, String)>> = answer
        .results
        .into_iter()
        .map(|r| match r.result {
            Some(pb::op_result::Result::Error(e)) => Err((e.code, e.message)),
            Some(_) => Ok(()),
            None => panic!("empty result"),
        })
        .collect();
    let pd = Code::PermissionDenied as i32;
    assert_eq!(
        outcome,
        vec![
            Ok(()),
            Err((pd, format!("{who} may not write \"call/f\""))),
            Ok(()),
            Err((pd, format!("{who} may not read \"sms/1\""))),
            Err((pd, format!("{who} may not write \"call/1\""))),
            Ok(()),
            Err((pd, format!("{who} may not write \"call/1\""))),
        ]
    );
    drop(tx);
    assert_eq!(stored(&mut seeder, "call/f").await, None);
    assert_eq!(stored(&mut seeder, "sms/f").await, Some(b"v2".to_vec()));
    assert!(stored(&mut seeder, "call/1").await.is_some());

    // Watch: only within the watch grant (call/); read alone does not allow it.
    let mut events = c
        .watch(watch("call/"))
        .await
        .expect("watch call/")
        .into_inner();
    seeder.insert(insert("call/w")).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("an event within 10 s")
        .expect("stream open")
        .expect("event");
    assert_eq!(first.events[0].record.as_ref().unwrap().key, "call/w");
    for (prefix, shown) in [("sms/", "sms/"), ("", ""), ("call", "call")] {
        // A refused watch fails at once or as the stream's first item,
        // depending on when tonic delivers the status: accept either.
        let s = match c.watch(watch(prefix)).await {
            Err(s) => s,
            Ok(r) => r
                .into_inner()
                .next()
                .await
                .expect("a status")
                .expect_err("refused"),
        };
        assert_eq!(s.code(), Code::PermissionDenied, "{prefix:?}: {s:?}");
        assert_eq!(
            s.message(),
            format!("{who} may not watch prefix \"{shown}\"")
        );
    }

    // Every refusal above was counted once, under its operation.
    assert_eq!(
        denied_count("write") - w0,
        6 + 1 + 3,
        "unary, batch, frame writes"
    );
    assert_eq!(
        denied_count("read") - r0,
        1 + 3 + 1,
        "get, scans, frame get"
    );
    assert_eq!(denied_count("watch") - watch0, 3);
    let text = METRICS.render();
    assert!(
        text.contains("inflight_permission_denied_total{operation=\"write\"}"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_the_auth_file_does_not_list_may_do_nothing() {
    let _serial = COUNTING.lock().await;
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let auth = Authorizer::open(Some(&auth_file(dir.path(), ROLES)), &[]).unwrap();
    let node = Node::start(auth, Some(&ca)).await;
    let stranger = ca.client("stranger");
    let mut c = node.records(Some(&stranger)).await;
    let hint = " (no name of its certificate is in the auth file)";
    refused(
        c.insert(insert("sms/1")).await,
        &format!("identity \"stranger\" may not write \"sms/1\"{hint}"),
    );
    refused(
        c.get(get("call/1")).await,
        &format!("identity \"stranger\" may not read \"call/1\"{hint}"),
    );
    // A name in a SAN counts like the CN.
    let by_san = ca.issue(Some("unlisted-cn"), vec![dns("sms-dispatcher")], false);
    let mut c = node.records(Some(&by_san)).await;
    c.insert(insert("sms/san")).await.expect("the SAN's role");
    refused(
        c.insert(insert("call/san")).await,
        "identity \"sms-dispatcher\" may not write \"call/san\"",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_needs_admin_identities_and_everything_else_is_open_without_an_auth_file() {
    let _serial = COUNTING.lock().await;
    let ca = Ca::new();
    let auth = Authorizer::open(None, &["ops".into(), "spiffe://test/ops".into()]).unwrap();
    let node = Node::start(auth, Some(&ca)).await;
    let dev = ca.client("sms-dispatcher");
    let a0 = denied_count("admin");

    // Without an auth file a certificate may read, write and watch anything ...
    let mut c = node.records(Some(&dev)).await;
    c.insert(insert("call/1")).await.expect("insert anywhere");
    c.scan(scan("")).await.expect("scan everything");
    c.watch(watch("")).await.expect("watch everything");
    // ... and see the cluster, but not change it.
    let mut cl = node.cluster(Some(&dev)).await;
    cl.status(pb::StatusRequest {})
        .await
        .expect("status is open");
    cl.member_list(pb::MemberListRequest {})
        .await
        .expect("member list is open");
    let who = "identity \"sms-dispatcher\" may not call";
    let why = "(admin: name it in --admin-identities or give its role admin = true)";
    refused(
        cl.add_learner(pb::AddLearnerRequest {
            id: 9,
            address: "127.0.0.1:1".into(),
            peer_address: "127.0.0.1:2".into(),
        })
        .await,
        &format!("{who} Cluster.AddLearner {why}"),
    );
    refused(
        cl.promote(pb::PromoteRequest { id: 9 }).await,
        &format!("{who} Cluster.Promote {why}"),
    );
    refused(
        cl.remove_member(pb::RemoveMemberRequest {
            id: 9,
            force: false,
        })
        .await,
        &format!("{who} Cluster.RemoveMember {why}"),
    );
    refused(
        cl.transfer_leader(pb::TransferLeaderRequest { to: 9 })
            .await,
        &format!("{who} Cluster.TransferLeader {why}"),
    );
    refused(
        cl.handoff_failed(pb::HandoffFailedRequest::default()).await,
        &format!("{who} Cluster.HandoffFailed {why}"),
    );
    refused(
        cl.handoff_retry(pb::HandoffRetryRequest {
            all: true,
            ..Default::default()
        })
        .await,
        &format!("{who} Cluster.HandoffRetry {why}"),
    );
    refused(
        cl.handoff_drop(pb::HandoffDropRequest {
            keys: vec!["call/1".into()],
            ..Default::default()
        })
        .await,
        &format!("{who} Cluster.HandoffDrop {why}"),
    );
    assert_eq!(denied_count("admin") - a0, 7);
    assert_eq!(node.node.status().members.len(), 1, "membership unchanged");

    // Named in --admin-identities, by CN or by a URI SAN: the admin RPCs run
    // (and answer for themselves: node 9 is no member).
    for cert in [
        ca.client("ops"),
        ca.issue(Some("someone"), vec![uri("spiffe://test/ops")], false),
    ] {
        let mut ops = node.cluster(Some(&cert)).await;
        ops.handoff_failed(pb::HandoffFailedRequest::default())
            .await
            .expect("admin may list dead letters");
        let s = ops
            .promote(pb::PromoteRequest { id: 9 })
            .await
            .expect_err("no node 9");
        assert_eq!(s.code(), Code::NotFound, "past the roles: {s:?}");
    }
    assert_eq!(denied_count("admin") - a0, 7, "no refusal for admins");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tls_there_is_no_identity_and_everything_is_allowed() {
    let _serial = COUNTING.lock().await;
    let dir = tempfile::tempdir().unwrap();
    // Even with roles that would refuse every certificate: a call without
    // one is insecure mode.
    let auth = Authorizer::open(Some(&auth_file(dir.path(), ROLES)), &[]).unwrap();
    let node = Node::start(auth, None).await;
    let before: u64 = ["read", "write", "watch", "admin"]
        .iter()
        .map(|o| denied_count(o))
        .sum();
    let mut c = node.records(None).await;
    c.insert(insert("call/1")).await.expect("insert");
    c.get(get("call/1")).await.expect("get");
    c.scan(scan("")).await.expect("scan");
    c.watch(watch("")).await.expect("watch");
    let mut cl = node.cluster(None).await;
    cl.handoff_failed(pb::HandoffFailedRequest::default())
        .await
        .expect("admin");
    let s = cl
        .promote(pb::PromoteRequest { id: 9 })
        .await
        .expect_err("no node 9");
    assert_eq!(s.code(), Code::NotFound);
    let after: u64 = ["read", "write", "watch", "admin"]
        .iter()
        .map(|o| denied_count(o))
        .sum();
    assert_eq!(after, before, "nothing refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reads_the_auth_file_again_and_a_bad_one_keeps_the_roles_in_force() {
    let _serial = COUNTING.lock().await;
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let path = auth_file(dir.path(), ROLES);
    let auth = Arc::new(Authorizer::open(Some(&path), &[]).unwrap());
    let mut tasks = Tasks::new("reload");
    tasks.spawn("auth-reload", auth.clone().reload_on_sighup(tasks.signal()));
    let me = inflight::auth::Caller::from_leaf(&rustls_pem(&ca.client("sms-dispatcher").cert));
    let may_write = |a: &Authorizer, key: &str| {
        a.check(
            &me,
            inflight::auth::Operation::Write,
            inflight::auth::Target::Key(key),
        )
        .is_ok()
    };
    let may_write_call = |a: &Authorizer| may_write(a, "call/1");
    assert!(!may_write_call(&auth));
    let hup = || {
        // SAFETY: sending a signal to this process; the handler is installed.
        let r = unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
        assert_eq!(r, 0, "kill");
    };

    let reloads = |result: &str| {
        METRICS
            .auth_reloads
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .get()
    };

    // A broken file: the reload fails and the roles in force stay.
    let failed = reloads("error");
    std::fs::write(&path, "[roles.sms-writer]\nwrite = [\"call/\"\nbroken").unwrap();
    hup();
    wait_until(Duration::from_secs(10), "the failed reload", || {
        let n = reloads("error");
        async move { n > failed }
    })
    .await;
    assert!(!may_write_call(&auth), "the broken file changed nothing");
    assert!(may_write(&auth, "sms/1"), "the old roles still apply");

    // A good one: it takes effect.
    std::fs::write(
        &path,
        ROLES.replace("write = [\"sms/\"]", "write = [\"sms/\", \"call/\"]"),
    )
    .unwrap();
    hup();
    let a = auth.clone();
    wait_until(Duration::from_secs(10), "the new roles apply", || {
        let ok = may_write_call(&a);
        async move { ok }
    })
    .await;
    tasks.stop(Duration::from_secs(5)).await;
}

/// The DER of a PEM certificate.
fn rustls_pem(pem: &str) -> tonic::transport::CertificateDer<'static> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64")
        .into()
}
