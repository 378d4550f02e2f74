//! TLS for the sinks that cross the network: PostgreSQL and https webhooks.
//!
//! Both speak rustls with the ring provider (no OpenSSL). What a sink
//! checks of the server's certificate is one of three [`Check`]s:
//!
//! - `EncryptOnly`: any certificate is taken; the connection is encrypted
//!   but the server is not authenticated. This is what libpq's
//!   `sslmode=require` (and `prefer`) mean, and it is kept for PostgreSQL
//!   only: an https webhook always checks the chain and the host name.
//! - `Chain`: the certificate must chain to a trusted root and be within
//!   its validity period; the host name is not compared (`verify-ca`).
//! - `ChainAndName`: as `Chain`, and the certificate must name the host
//!   the sink connects to (`verify-full`, https).
//!
//! The trusted roots are a PEM file of CA certificates (the PostgreSQL
//! URL's `sslrootcert`, else `--sink-ca-file`) or, when neither is given,
//! the system's store (`rustls-native-certs`: `/etc/ssl/certs` and the
//! `SSL_CERT_FILE` / `SSL_CERT_DIR` variables). A given file replaces the
//! system's roots rather than adding to them, as libpq's `sslrootcert` and
//! curl's `--cacert` do: a private CA is then the only one trusted.
//!
//! Roots are read when the sink is opened, at startup, so that a missing or
//! unreadable CA file stops the node with an error naming the file instead
//! of failing every delivery later. Replacing the file takes a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Where a sink's trusted roots come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Roots {
    /// The operating system's store.
    System,
    /// Every certificate in this PEM file.
    File(PathBuf),
}

impl Roots {
    /// The roots named by a sink's own setting, else `--sink-ca-file`,
    /// else the system's.
    pub fn pick(own: Option<Roots>, sink_ca_file: Option<&Path>) -> Roots {
        own.or_else(|| sink_ca_file.map(|p| Roots::File(p.to_path_buf())))
            .unwrap_or(Roots::System)
    }

    pub fn load(&self) -> Result<Arc<RootCertStore>, String> {
        match self {
            Roots::File(path) => load_ca_file(path),
            Roots::System => system_roots(),
        }
        .map(Arc::new)
    }
}

impl std::fmt::Display for Roots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Roots::System => write!(f, "the system's roots"),
            Roots::File(p) => write!(f, "the CA file {}", p.display()),
        }
    }
}

/// What is checked of the server's certificate.
#[derive(Clone, Debug)]
pub enum Check {
    EncryptOnly,
    Chain(Arc<RootCertStore>),
    ChainAndName(Arc<RootCertStore>),
}

/// Every CA certificate in the PEM file at `path`; an error names the file
/// and what is wrong with it.
fn load_ca_file(path: &Path) -> Result<RootCertStore, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("CA file {}: cannot read: {e}", path.display()))?;
    let mut roots = RootCertStore::empty();
    for (i, cert) in CertificateDer::pem_slice_iter(&bytes).enumerate() {
        let cert = cert.map_err(|e| {
            format!(
                "CA file {}: certificate {} is not valid PEM: {e}",
                path.display(),
                i + 1
            )
        })?;
        roots.add(cert).map_err(|e| {
            format!(
                "CA file {}: certificate {} is not a usable CA certificate: {e}",
                path.display(),
                i + 1
            )
        })?;
    }
    if roots.is_empty() {
        return Err(format!(
            "CA file {}: holds no certificate (expected PEM blocks \
             \"-----BEGIN CERTIFICATE-----\")",
            path.display()
        ));
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    // Stores often hold a few certificates webpki cannot parse; the rest serve.
    let (_, unusable) = roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
        return Err(format!(
            "no usable certificate in the system's trust store{}{}; \
             install the ca-certificates package, or name a CA file \
             (--sink-ca-file, or sslrootcert= in a PostgreSQL URL)",
            if unusable > 0 {
                format!(" ({unusable} unusable)")
            } else {
                String::new()
            },
            if why.is_empty() {
                String::new()
            } else {
                format!(": {}", why.join("; "))
            }
        ));
    }
    if !found.errors.is_empty() {
        tracing::warn!(errors = ?found.errors, "some system root certificates could not be read");
    }
    Ok(roots)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration that checks the server as `check` says.
pub fn client_config(check: &Check) -> Result<ClientConfig, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let config = match check {
        Check::ChainAndName(roots) => builder
            .with_root_certificates(roots.clone())
            .with_no_client_auth(),
        Check::Chain(roots) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOrNothing {
                roots: Some(roots.clone()),
                provider,
            }))
            .with_no_client_auth(),
        Check::EncryptOnly => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOrNothing {
                roots: None,
                provider,
            }))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// The two checks rustls's own verifier does not offer. With `roots`
/// (`verify-ca`), the chain to a trusted root and the validity period are
/// checked, the name is not. Without (`require` / `prefer`), any
/// certificate is taken. Either way the handshake signature is checked
/// against the certificate presented, so the session key is the one of
/// whoever holds that certificate's key.
#[derive(Debug)]
struct ChainOrNothing {
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ChainOrNothing {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The rustls error somewhere in `e`'s causes. Transports wrap it in an
/// `io::Error` (hyper-rustls in two), whose `source()` skips the error it
/// wraps, so the walk steps into each `io::Error` rather than past it.
pub fn rustls_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        next = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_that_is_missing_empty_or_garbage_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = Roots::File(missing.clone()).load().unwrap_err();
        assert!(
            e.contains(&missing.display().to_string()) && e.contains("cannot read"),
            "{e}"
        );

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = Roots::File(empty.clone()).load().unwrap_err();
        assert!(
            e.contains(&empty.display().to_string()) && e.contains("no certificate"),
            "{e}"
        );

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = Roots::File(garbage.clone()).load().unwrap_err();
        assert!(
            e.contains(&garbage.display().to_string()) && e.contains("certificate 1"),
            "{e}"
        );
    }

    #[test]
    fn a_sinks_own_roots_win_over_the_flag_and_the_flag_over_the_system() {
        let flag = Path::new("/etc/flag-ca.pem");
        let own = Roots::File("/etc/own.pem".into());
        assert_eq!(Roots::pick(Some(own.clone()), Some(flag)), own);
        assert_eq!(
            Roots::pick(None, Some(flag)),
            Roots::File(flag.to_path_buf())
        );
        assert_eq!(Roots::pick(None, None), Roots::System);
    }
}
