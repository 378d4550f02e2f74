//! Who is calling: the names on the client's certificate.
//!
//! The TLS layer has already verified the chain against the trusted CA; here
//! we only read names from the leaf. A certificate names its holder in its
//! subject's CN and in its subject alternative names; operators write
//! whichever they issue into the auth file, so every DNS, URI and email SAN
//! counts as a name, after the CN. IP-address SANs do not: an address names
//! a machine, not a client.

use std::sync::Arc;

use tonic::transport::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The caller of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No certificate: the port has no TLS (insecure mode). Allowed
    /// everything, as before roles existed.
    Anonymous,
    /// A verified client certificate; its names, CN first, then the SANs in
    /// the certificate's order. Empty when it carries none (or cannot be
    /// read), which no auth file entry matches.
    Certified(Arc<[String]>),
}

impl Caller {
    /// The caller of a gRPC request, from the certificate chain tonic saw on
    /// the connection (the leaf comes first).
    pub fn of<T>(req: &tonic::Request<T>) -> Caller {
        match req.peer_certs() {
            Some(chain) => match chain.first() {
                Some(leaf) => Caller::from_leaf(leaf),
                None => Caller::Anonymous,
            },
            None => Caller::Anonymous,
        }
    }

    /// The names of a DER-encoded leaf certificate.
    pub fn from_leaf(leaf: &CertificateDer<'_>) -> Caller {
        match names(leaf.as_ref()) {
            Ok(n) => Caller::Certified(n.into()),
            Err(e) => {
                // The handshake accepted it, so this is a certificate our
                // parser disagrees with: it gets no name, hence no role.
                tracing::warn!(error = %e, "cannot read the names of a client certificate");
                Caller::Certified(Arc::from(Vec::new()))
            }
        }
    }
}

/// CN(s), then DNS, URI and email SANs, without duplicates.
pub fn names(der: &[u8]) -> Result<Vec<String>, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let mut out: Vec<String> = Vec::new();
    let mut add = |s: &str| {
        if !s.is_empty() && !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    };
    for cn in cert.subject().iter_common_name() {
        if let Ok(s) = cn.as_str() {
            add(s);
        }
    }
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("subjectAltName: {e}"))?;
    if let Some(san) = san {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(s) | GeneralName::URI(s) | GeneralName::RFC822Name(s) => {
                    add(s)
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn cert(cn: Option<&str>, sans: Vec<SanType>) -> Vec<u8> {
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        p.subject_alt_names = sans;
        let key = KeyPair::generate().expect("key");
        p.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn the_cn_comes_first_then_dns_uri_and_email_sans() {
        let der = cert(
            Some("sms-dispatcher"),
            vec![
                SanType::DnsName("sms.example.org".try_into().unwrap()),
                SanType::URI("spiffe://example.org/sms".try_into().unwrap()),
                SanType::Rfc822Name("sms@example.org".try_into().unwrap()),
                SanType::IpAddress("10.0.0.1".parse().unwrap()),
                SanType::DnsName("sms-dispatcher".try_into().unwrap()),
            ],
        );
        assert_eq!(
            names(&der).unwrap(),
            vec![
                "sms-dispatcher",
                "sms.example.org",
                "spiffe://example.org/sms",
                "sms@example.org"
            ],
            "IP SANs are not names; a SAN equal to the CN is listed once"
        );
    }

    #[test]
    fn a_certificate_without_cn_is_named_by_its_sans() {
        let der = cert(
            None,
            vec![SanType::URI("spiffe://example.org/ops".try_into().unwrap())],
        );
        assert_eq!(names(&der).unwrap(), vec!["spiffe://example.org/ops"]);
        assert_eq!(names(&cert(None, vec![])).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(names(b"not a certificate").is_err());
        assert!(names(&[]).is_err());
        let c = Caller::from_leaf(&CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01]));
        assert_eq!(c, Caller::Certified(Arc::from(Vec::new())));
    }
}
