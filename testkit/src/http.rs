//! Small HTTP pieces the tests share: a receiver serving on a free loopback
//! port (plain or https), and reading one sample from a node's `/metrics`.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::ca::ServerCert;

/// Serves `app` on a free loopback port for the rest of the test; returns
/// `http://127.0.0.1:PORT`.
pub async fn serve(app: axum::Router) -> String {
    let port = crate::free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind a loopback port for the test's HTTP server");
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://127.0.0.1:{port}")
}

/// Serves `app` over https with `cert` on a free loopback port for the rest
/// of the test; returns `https://127.0.0.1:PORT`. A client that refuses the
/// certificate fails its handshake and never reaches `app`.
pub async fn serve_https(app: axum::Router, cert: &ServerCert) -> String {
    let port = crate::free_port();
    let tcp = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind a loopback port for the test's https server");
    let listener = TlsListener {
        tcp,
        acceptor: TlsAcceptor::from(cert.server_config()),
    };
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("https://127.0.0.1:{port}")
}

struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            // One at a time: the tests' clients are few and their
            // handshakes quick, refused ones included.
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// The value of the sample `name` (with its labels, if any, as written,
/// e.g. `inflight_handoff_batches_total{role="primary",result="ok"}`) on the
/// node whose HTTP address is `http`; panics if it is not there.
pub async fn metric(http: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{http}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("read /metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}
