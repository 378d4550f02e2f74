//! TLS on every port, with rustls.
//!
//! A node listens on three ports, and each is protected on its own terms:
//!
//! | port | certificate it serves | whom it lets in |
//! |---|---|---|
//! | client gRPC (`--listen`) | `--cert-file`, `--key-file` | anyone, or with `--trusted-ca-file` only holders of a certificate of that CA (EKU clientAuth) |
//! | HTTP (`--http`) | the client port's | the same as the client port |
//! | peer gRPC (`--peer-listen`) | `--peer-cert-file`, `--peer-key-file` | only nodes: a certificate of `--peer-trusted-ca-file` with EKU serverAuth, and with `--peer-allowed-cn` one of those names |
//!
//! The peer port is the one that matters most: whoever can speak Raft to a
//! node can install a snapshot that empties its table or a vote that makes
//! it forget its leader. So it asks for a certificate always, and for more
//! than a chain to the CA: a client certificate of the same CA (which lacks
//! serverAuth) is refused during the handshake, before any Raft message is
//! read (`verify`).
//!
//! The HTTP port serves the same certificate and asks the same of clients
//! as the client port: it shows the same data (`/status`, `/cluster`), and
//! one certificate set per audience is simpler to run. Health checkers and
//! scrapers then need a client certificate when `--trusted-ca-file` is set.
//!
//! Each port keeps its configuration behind a lock ([`ServerTls`]); a
//! handshake takes the one current when it starts. On SIGHUP the node reads
//! every TLS file again ([`NodeTls::reload_on_sighup`]): a port whose files
//! make a valid configuration switches to it for new connections, one whose
//! files do not keeps the old one and logs why. Connections already open
//! keep the session they negotiated.
//!
//! Outgoing connections are made with tonic's client TLS ([`ClientTls`]): to
//! peer ports with the node's peer certificate and the cluster CA; to other
//! nodes' client ports (the `/cluster` fan-out, `--join`) with the same
//! identity, trusting `--trusted-ca-file` (or the cluster CA when that is
//! not set). SIGHUP reloads those too: channels made afterwards present the
//! new certificate (the peer network builds new ones on the next call), and
//! connections already open keep the old one.
//!
//! Only the ring crypto provider is built in; every configuration names it,
//! so no process-wide default has to be installed.

mod files;
mod server;
mod verify;

use std::sync::Arc;

pub use files::{PemFile, PortFiles};
pub use server::{Port, ServerTls, TlsIncoming, TlsListener, HANDSHAKE_TIMEOUT};
pub use verify::refuse_as_peer;

use crate::shutdown::Shutdown;
use crate::wire::ReloadableClientTls;

/// The one crypto provider of every TLS configuration.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS settings of `serve`, as given: which files, not yet read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// The client and HTTP ports (`--cert-file`, `--key-file`,
    /// `--trusted-ca-file`); `None`: plaintext.
    pub client: Option<PortFiles>,
    /// The peer port (`--peer-cert-file`, `--peer-key-file`,
    /// `--peer-trusted-ca-file`, all three or none); `None`: plaintext.
    pub peer: Option<PortFiles>,
    /// `--peer-allowed-cn`: names a peer's certificate must carry (CN or DNS SAN).
    pub peer_allowed_names: Vec<String>,
}

/// The flags as `serve` parsed them.
#[derive(Clone, Debug, Default)]
pub struct TlsFlags {
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
    pub trusted_ca_file: Option<std::path::PathBuf>,
    pub peer_cert_file: Option<std::path::PathBuf>,
    pub peer_key_file: Option<std::path::PathBuf>,
    pub peer_trusted_ca_file: Option<std::path::PathBuf>,
    pub peer_allowed_cn: Vec<String>,
}

impl TlsOptions {
    /// Checks that the flags make whole configurations. Each port may use TLS
    /// or not on its own (a client port on loopback behind a proxy, peers on
    /// a private network), but never half: a certificate without its key, a
    /// trusted CA without a certificate to serve, a peer port without the
    /// cluster CA (the peer port always verifies peers), or names to allow
    /// without peer TLS to check them.
    pub fn from_flags(f: TlsFlags) -> Result<TlsOptions, String> {
        let client = match (f.cert_file, f.key_file) {
            (Some(c), Some(k)) => Some(PortFiles {
                cert: PemFile::new("--cert-file", c),
                key: PemFile::new("--key-file", k),
                trusted_ca: f
                    .trusted_ca_file
                    .map(|p| PemFile::new("--trusted-ca-file", p)),
            }),
            (None, None) if f.trusted_ca_file.is_some() => {
                return Err("--trusted-ca-file needs --cert-file and --key-file: \
                            client certificates are only asked for over TLS"
                    .into())
            }
            (None, None) => None,
            (Some(_), None) => return Err("--cert-file needs --key-file".into()),
            (None, Some(_)) => return Err("--key-file needs --cert-file".into()),
        };
        let peer = match (f.peer_cert_file, f.peer_key_file, f.peer_trusted_ca_file) {
            (Some(c), Some(k), Some(ca)) => Some(PortFiles {
                cert: PemFile::new("--peer-cert-file", c),
                key: PemFile::new("--peer-key-file", k),
                trusted_ca: Some(PemFile::new("--peer-trusted-ca-file", ca)),
            }),
            (None, None, None) => None,
            (c, k, ca) => {
                let missing: Vec<&str> = [
                    (c.is_none(), "--peer-cert-file"),
                    (k.is_none(), "--peer-key-file"),
                    (ca.is_none(), "--peer-trusted-ca-file"),
                ]
                .into_iter()
                .filter_map(|(m, n)| m.then_some(n))
                .collect();
                return Err(format!(
                    "peer TLS needs --peer-cert-file, --peer-key-file and --peer-trusted-ca-file \
                     together (a peer is always verified); missing {}",
                    missing.join(", ")
                ));
            }
        };
        let allowed: Vec<String> = f
            .peer_allowed_cn
            .into_iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        if !allowed.is_empty() && peer.is_none() {
            return Err(
                "--peer-allowed-cn needs peer TLS (--peer-cert-file, --peer-key-file, \
                        --peer-trusted-ca-file)"
                    .into(),
            );
        }
        if client.is_some() && client_side_trust(&client, &peer).is_none() {
            return Err(
                "with --cert-file, a node also calls other nodes' client ports (/cluster, \
                        --join) and must verify them: give --trusted-ca-file or \
                        --peer-trusted-ca-file"
                    .into(),
            );
        }
        Ok(TlsOptions {
            client,
            peer,
            peer_allowed_names: allowed,
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.client.is_some() || self.peer.is_some()
    }
}

/// The CA a node trusts when it calls other nodes' client ports.
fn client_side_trust<'a>(
    client: &'a Option<PortFiles>,
    peer: &'a Option<PortFiles>,
) -> Option<&'a PemFile> {
    client
        .as_ref()
        .and_then(|c| c.trusted_ca.as_ref())
        .or_else(|| peer.as_ref().and_then(|p| p.trusted_ca.as_ref()))
}

/// Every TLS configuration of a node, read from its files.
#[derive(Clone, Debug, Default)]
pub struct NodeTls {
    pub client_port: Option<ServerTls>,
    pub http_port: Option<ServerTls>,
    pub peer_port: Option<ServerTls>,
    /// How this node connects to other nodes' peer ports.
    pub to_peers: Option<ReloadableClientTls>,
    /// How this node connects to other nodes' client ports.
    pub to_clients: Option<ReloadableClientTls>,
}

impl NodeTls {
    /// Reads every file; the first one that is wrong is the error.
    pub fn load(o: &TlsOptions) -> Result<NodeTls, String> {
        let mut t = NodeTls::default();
        if let Some(files) = &o.client {
            t.client_port = Some(ServerTls::new(Port::Client, files.clone(), Vec::new())?);
            t.http_port = Some(ServerTls::new(Port::Http, files.clone(), Vec::new())?);
        }
        if let Some(files) = &o.peer {
            t.peer_port = Some(ServerTls::new(
                Port::Peer,
                files.clone(),
                o.peer_allowed_names.clone(),
            )?);
            let ca = files.trusted_ca.as_ref().map(|f| f.path.as_path());
            let ca = ca.ok_or("the peer port needs --peer-trusted-ca-file")?;
            t.to_peers = Some(ReloadableClientTls::load(
                ca,
                Some((&files.cert.path, &files.key.path)),
            )?);
        }
        if let (Some(client), Some(ca)) = (&o.client, client_side_trust(&o.client, &o.peer)) {
            // The node's own identity on other nodes' client ports: its peer
            // certificate, a node's (or, without peer TLS, its client-port one).
            let who = o.peer.as_ref().unwrap_or(client);
            t.to_clients = Some(ReloadableClientTls::load(
                &ca.path,
                Some((&who.cert.path, &who.key.path)),
            )?);
        }
        Ok(t)
    }

    /// Whether any port speaks TLS.
    pub fn is_enabled(&self) -> bool {
        self.ports().next().is_some()
    }

    fn ports(&self) -> impl Iterator<Item = &ServerTls> {
        [&self.client_port, &self.http_port, &self.peer_port]
            .into_iter()
            .flatten()
    }

    /// Reads every port's files again; a port whose files are wrong keeps
    /// its configuration. Returns the errors, one per such port.
    ///
    /// What the node presents when it dials is read again only when the port
    /// serving the same files reloaded: that reload has checked that the
    /// certificate and key belong together, which the outgoing settings
    /// cannot check until they connect.
    pub fn reload(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let mut reloaded = |port: &Option<ServerTls>| -> bool {
            let Some(port) = port else { return false };
            match port.reload() {
                Ok(()) => {
                    tracing::info!(port = port.port().label(), "TLS certificates reloaded");
                    true
                }
                Err(e) => {
                    tracing::error!(
                        port = port.port().label(),
                        error = %e,
                        "TLS reload failed; the port keeps its previous certificates"
                    );
                    errors.push(format!("{} port: {e}", port.port().label()));
                    false
                }
            }
        };
        let client_ok = reloaded(&self.client_port);
        reloaded(&self.http_port);
        let peer_ok = reloaded(&self.peer_port);
        // Outgoing identities: the peer files (or, without peer TLS, the
        // client-port files, see `load`).
        let identity_ok = if self.peer_port.is_some() {
            peer_ok
        } else {
            client_ok
        };
        for (what, out) in [
            ("peers", &self.to_peers),
            ("client ports", &self.to_clients),
        ] {
            if let (Some(out), true) = (out, identity_ok) {
                if let Err(e) = out.reload() {
                    tracing::error!(error = %e, "TLS reload of what this node presents to {what} failed; it keeps the previous");
                    errors.push(format!("dialing {what}: {e}"));
                }
            }
        }
        errors
    }

    /// Reloads on every SIGHUP until `stop`. Runs on every node, TLS or not:
    /// while it listens, SIGHUP no longer ends the process.
    pub async fn reload_on_sighup(self, mut stop: Shutdown) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; TLS files will not be reloaded");
                return;
            }
        };
        loop {
            tokio::select! {
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    if self.is_enabled() {
                        tracing::info!("SIGHUP: reloading TLS certificates");
                        self.reload();
                    } else {
                        tracing::info!("SIGHUP: no TLS files to reload");
                    }
                }
                _ = stop.requested() => return,
            }
        }
    }
}
