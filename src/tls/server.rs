//! The server side: a TLS configuration per port that can be replaced while
//! the node runs, and the acceptor that turns accepted TCP connections into
//! TLS streams for tonic and axum.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use parking_lot::RwLock;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::files::PortFiles;
use super::{provider, verify};
use crate::metrics::{PortLabels, METRICS};

/// A handshake not finished by then is dropped: a client that connects and
/// says nothing must not hold a slot for long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// At most this many handshakes run at once per port; past it the port stops
/// accepting until one finishes (the kernel's backlog holds the rest).
const MAX_HANDSHAKES: usize = 1024;

/// Which port a configuration serves: what it asks of clients, the ALPN
/// protocol it speaks, the `port` label of its metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// gRPC for clients: a client certificate when a trusted CA is set.
    Client,
    /// gRPC between nodes: a node certificate of the cluster CA, always.
    Peer,
    /// The HTTP port: as the client port, but HTTP/1.1.
    Http,
}

impl Port {
    pub fn label(self) -> &'static str {
        match self {
            Port::Client => "client",
            Port::Peer => "peer",
            Port::Http => "http",
        }
    }
}

/// One port's TLS configuration, shared by its acceptor and the reloader.
/// Cloning shares it: a reload is seen by every clone.
#[derive(Clone)]
pub struct ServerTls {
    inner: Arc<Shared>,
}

struct Shared {
    port: Port,
    files: PortFiles,
    allowed_names: Vec<String>,
    config: RwLock<Arc<ServerConfig>>,
    /// The peer port's verifier, swapped with `config` on reload, so that a
    /// certificate can be asked the handshake's question outside one.
    peer_verifier: RwLock<Option<Arc<verify::PeerVerifier>>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("port", &self.inner.port)
            .field("files", &self.inner.files)
            .finish()
    }
}

impl ServerTls {
    /// Reads the files and builds the port's configuration. `allowed_names`
    /// (`--peer-allowed-cn`) only applies to the peer port.
    pub fn new(port: Port, files: PortFiles, allowed_names: Vec<String>) -> Result<Self, String> {
        let (config, peer_verifier) = build(port, &files, &allowed_names)?;
        Ok(ServerTls {
            inner: Arc::new(Shared {
                port,
                files,
                allowed_names,
                config: RwLock::new(config),
                peer_verifier: RwLock::new(peer_verifier),
            }),
        })
    }

    pub fn port(&self) -> Port {
        self.inner.port
    }

    /// Reads the files again and, if they make a valid configuration, uses it
    /// for the connections accepted from now on. On error the configuration
    /// in use stays, and the error says which file is wrong.
    pub fn reload(&self) -> Result<(), String> {
        let (config, peer_verifier) = build(
            self.inner.port,
            &self.inner.files,
            &self.inner.allowed_names,
        )?;
        *self.inner.config.write() = config;
        *self.inner.peer_verifier.write() = peer_verifier;
        Ok(())
    }

    /// Whether this peer port would admit `chain` (leaf first) now: the same
    /// check as its handshake (the peer CA, serverAuth, `--peer-allowed-cn`).
    /// False on the other ports.
    pub fn admits_as_peer(&self, chain: &[rustls::pki_types::CertificateDer<'static>]) -> bool {
        use rustls::server::danger::ClientCertVerifier;
        let Some(verifier) = self.inner.peer_verifier.read().clone() else {
            return false;
        };
        let Some((leaf, intermediates)) = chain.split_first() else {
            return false;
        };
        verifier
            .verify_client_cert(leaf, intermediates, rustls::pki_types::UnixTime::now())
            .is_ok()
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.inner.config.read().clone()
    }
}

type Built = (Arc<ServerConfig>, Option<Arc<verify::PeerVerifier>>);

fn build(port: Port, files: &PortFiles, allowed: &[String]) -> Result<Built, String> {
    let certs = files.cert.certificates()?;
    let key = files.key.private_key()?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let mut peer_verifier = None;
    let builder = match (port, &files.trusted_ca) {
        (Port::Peer, Some(ca)) => {
            let v = Arc::new(
                verify::PeerVerifier::new(ca.roots()?, allowed.to_vec())
                    .map_err(|e| format!("{} {}: {e}", ca.flag, ca.path.display()))?,
            );
            peer_verifier = Some(v.clone());
            builder.with_client_cert_verifier(v)
        }
        (Port::Peer, None) => return Err("the peer port needs --peer-trusted-ca-file".into()),
        (_, Some(ca)) => builder.with_client_cert_verifier(
            verify::client_port(ca.roots()?)
                .map_err(|e| format!("{} {}: {e}", ca.flag, ca.path.display()))?,
        ),
        (_, None) => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "{} {} and {} {}: {e}",
            files.cert.flag,
            files.cert.path.display(),
            files.key.flag,
            files.key.path.display()
        )
    })?;
    config.alpn_protocols = match port {
        Port::Client | Port::Peer => vec![b"h2".to_vec()],
        Port::Http => vec![b"http/1.1".to_vec()],
    };
    Ok((Arc::new(config), peer_verifier))
}

type Handshake<IO> = Pin<Box<dyn Future<Output = Option<TlsStream<IO>>> + Send>>;

/// What the acceptor takes in: accepted TCP connections, bare or wrapped
/// (`crate::connections::Counted`), that tonic can read the peer's address
/// from (and, once wrapped in TLS, the client certificate:
/// `Request::peer_certs`).
pub trait Accepted:
    AsyncRead + AsyncWrite + Connected<ConnectInfo = TcpConnectInfo> + Unpin + Send + 'static
{
}

impl<T> Accepted for T where
    T: AsyncRead + AsyncWrite + Connected<ConnectInfo = TcpConnectInfo> + Unpin + Send + 'static
{
}

/// Accepted TCP connections in, finished TLS handshakes out, for
/// `serve_with_incoming`. Handshakes run concurrently inside the stream
/// (no task per connection: dropping the stream on shutdown drops them),
/// each bounded by [`HANDSHAKE_TIMEOUT`]. A failed one is logged at debug,
/// counted in `inflight_tls_handshake_failures_total{port}`, and skipped.
pub struct TlsIncoming<IO> {
    tcp: Pin<Box<dyn Stream<Item = io::Result<IO>> + Send>>,
    tcp_done: bool,
    handshakes: FuturesUnordered<Handshake<IO>>,
    tls: ServerTls,
}

impl<IO: Accepted> TlsIncoming<IO> {
    pub fn new(tcp: impl Stream<Item = io::Result<IO>> + Send + 'static, tls: ServerTls) -> Self {
        TlsIncoming {
            tcp: Box::pin(tcp),
            tcp_done: false,
            handshakes: FuturesUnordered::new(),
            tls,
        }
    }
}

fn handshake<IO: Accepted>(tls: &ServerTls, tcp: IO) -> Handshake<IO> {
    let acceptor = TlsAcceptor::from(tls.current());
    let port = tls.port().label();
    Box::pin(async move {
        let from = tcp.connect_info().remote_addr();
        let why = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => return Some(stream),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no handshake within {HANDSHAKE_TIMEOUT:?}"),
        };
        tracing::debug!(port, from = ?from, error = %why, "TLS handshake failed");
        METRICS
            .tls_handshake_failures
            .get_or_create(&PortLabels { port: port.into() })
            .inc();
        None
    })
}

impl<IO: Accepted> Stream for TlsIncoming<IO> {
    type Item = io::Result<TlsStream<IO>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            while !this.tcp_done && this.handshakes.len() < MAX_HANDSHAKES {
                match this.tcp.poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok(tcp))) => this.handshakes.push(handshake(&this.tls, tcp)),
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                    Poll::Ready(None) => this.tcp_done = true,
                    Poll::Pending => break,
                }
            }
            match this.handshakes.poll_next_unpin(cx) {
                Poll::Ready(Some(Some(stream))) => return Poll::Ready(Some(Ok(stream))),
                // A failed handshake frees a slot: accept again.
                Poll::Ready(Some(None)) => continue,
                // No handshake running: the TCP side registered the waker,
                // unless it has ended.
                Poll::Ready(None) if this.tcp_done => return Poll::Ready(None),
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The HTTP port's listener for axum: TLS streams from a TCP listener.
pub struct TlsListener {
    incoming: TlsIncoming<TcpStream>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(listener: TcpListener, tls: ServerTls) -> io::Result<TlsListener> {
        let local = listener.local_addr()?;
        Ok(TlsListener {
            incoming: TlsIncoming::new(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                tls,
            ),
            local,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.incoming.next().await {
                Some(Ok(stream)) => {
                    let from = stream
                        .get_ref()
                        .0
                        .peer_addr()
                        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
                    return (stream, from);
                }
                // Out of file descriptors and the like: wait, as axum's own
                // TCP listener does, rather than spin.
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "http: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                // A TCP listener stream never ends.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}
