//! Who may connect: the client verifiers of the two gRPC ports.
//!
//! The client port (and the HTTP port) checks a client certificate against
//! `--trusted-ca-file` with webpki, which also demands the extended key
//! usage `clientAuth`. The peer port does the same against the cluster CA
//! and then asks more of the leaf, because a client certificate from the
//! same CA must not pass as a node:
//!
//! - it must carry the key usage `serverAuth`: a node's certificate does (the
//!   node also serves with it), a client's does not;
//! - with `--peer-allowed-cn`, its common name or one of its DNS names must be
//!   listed.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::provider;

/// The client port's verifier: a certificate chaining to `roots` required.
pub fn client_port(roots: Arc<RootCertStore>) -> Result<Arc<dyn ClientCertVerifier>, String> {
    WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| format!("cannot verify client certificates with this CA: {e}"))
}

/// The peer port's verifier (see the module docs).
#[derive(Debug)]
pub struct PeerVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    allowed: Vec<String>,
}

impl PeerVerifier {
    pub fn new(roots: Arc<RootCertStore>, allowed: Vec<String>) -> Result<PeerVerifier, String> {
        Ok(PeerVerifier {
            chain: client_port(roots)?,
            allowed,
        })
    }
}

/// Why a leaf that chains to the cluster CA is still no peer; `None` if it is.
pub fn refuse_as_peer(leaf: &CertificateDer<'_>, allowed: &[String]) -> Option<String> {
    let cert = match X509Certificate::from_der(leaf) {
        Ok((_, c)) => c,
        Err(e) => return Some(format!("unreadable certificate: {e}")),
    };
    let server_auth = match cert.extended_key_usage() {
        Ok(Some(eku)) => eku.value.server_auth,
        Ok(None) => false,
        Err(e) => return Some(format!("unreadable extended key usage: {e}")),
    };
    let cn: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|a| a.as_str().ok().map(str::to_string))
        .collect();
    if !server_auth {
        return Some(format!(
            "certificate {cn:?} lacks the extended key usage serverAuth: a client certificate, not a node's"
        ));
    }
    if allowed.is_empty() {
        return None;
    }
    let mut names = cn.clone();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_string());
            }
        }
    }
    if names.iter().any(|n| allowed.iter().any(|a| a == n)) {
        None
    } else {
        Some(format!(
            "certificate names {names:?}: none is in --peer-allowed-cn {allowed:?}"
        ))
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)?;
        match refuse_as_peer(end_entity, &self.allowed) {
            None => Ok(ok),
            Some(why) => Err(rustls::Error::General(format!("not a peer: {why}"))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}
