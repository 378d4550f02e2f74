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
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
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
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(inflight::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match identity {
        Some(id) => b
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(&id.cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(&id.key).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
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
