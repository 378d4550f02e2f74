//! Reading PEM files: a certificate chain, its private key, a set of trusted
//! CA certificates. Every error names the file and the flag it came from, so
//! an operator knows which of the seven TLS settings to fix.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

/// A PEM file and the flag that named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PemFile {
    pub flag: &'static str,
    pub path: PathBuf,
}

impl PemFile {
    pub fn new(flag: &'static str, path: impl Into<PathBuf>) -> PemFile {
        PemFile {
            flag,
            path: path.into(),
        }
    }

    fn error(&self, why: impl std::fmt::Display) -> String {
        format!("{} {}: {why}", self.flag, self.path.display())
    }

    fn read(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.path).map_err(|e| self.error(e))
    }

    /// Every certificate in the file, leaf first; at least one.
    pub fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, String> {
        certificates_in(&self.read()?).map_err(|e| self.error(e))
    }

    /// The one private key in the file (PKCS#8, PKCS#1 or SEC1).
    pub fn private_key(&self) -> Result<PrivateKeyDer<'static>, String> {
        PrivateKeyDer::from_pem_slice(&self.read()?).map_err(|e| {
            self.error(match e {
                rustls::pki_types::pem::Error::NoItemsFound => {
                    "no PEM private key in the file".to_string()
                }
                e => format!("not a PEM private key: {e}"),
            })
        })
    }

    /// The certificates of the file as trust anchors.
    pub fn roots(&self) -> Result<Arc<RootCertStore>, String> {
        let mut roots = RootCertStore::empty();
        for cert in self.certificates()? {
            roots
                .add(cert)
                .map_err(|e| self.error(format!("not a usable CA certificate: {e}")))?;
        }
        Ok(Arc::new(roots))
    }

    /// The file's whole text, for APIs that parse PEM themselves (tonic's
    /// client TLS settings), after checking that it holds a certificate.
    pub fn pem_certificates(&self) -> Result<Vec<u8>, String> {
        let pem = self.read()?;
        certificates_in(&pem).map_err(|e| self.error(e))?;
        Ok(pem)
    }

    /// As [`PemFile::pem_certificates`], for a private key.
    pub fn pem_private_key(&self) -> Result<Vec<u8>, String> {
        self.private_key()?;
        self.read()
    }
}

fn certificates_in(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate in the file".into());
    }
    Ok(certs)
}

/// A certificate, its key, and whom to trust: the files of one port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortFiles {
    pub cert: PemFile,
    pub key: PemFile,
    /// For the client port: the CA of client certificates (none: no client
    /// certificates asked for). For the peer port: the cluster CA (required).
    pub trusted_ca: Option<PemFile>,
}

impl PortFiles {
    /// The paths, for logging.
    pub fn paths(&self) -> Vec<&Path> {
        let mut p = vec![self.cert.path.as_path(), self.key.path.as_path()];
        if let Some(ca) = &self.trusted_ca {
            p.push(ca.path.as_path());
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_flag_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = PemFile::new("--cert-file", dir.path().join("nope.pem"));
        let e = missing.certificates().unwrap_err();
        assert!(
            e.starts_with("--cert-file ") && e.contains("nope.pem"),
            "{e}"
        );

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, b"\x00\xffnot pem at all").unwrap();
        let e = PemFile::new("--trusted-ca-file", &garbage)
            .roots()
            .unwrap_err();
        assert!(
            e.contains("--trusted-ca-file") && e.contains("garbage.pem"),
            "{e}"
        );
        assert!(e.contains("no PEM certificate"), "{e}");

        let e = PemFile::new("--key-file", &garbage)
            .private_key()
            .unwrap_err();
        assert!(
            e.contains("--key-file") && e.contains("no PEM private key"),
            "{e}"
        );
    }

    #[test]
    fn a_truncated_certificate_is_refused_not_half_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("cut.pem");
        std::fs::write(&f, "-----BEGIN CERTIFICATE-----\nMIIB\n").unwrap();
        let e = PemFile::new("--peer-cert-file", &f)
            .certificates()
            .unwrap_err();
        assert!(
            e.contains("--peer-cert-file") && e.contains("cut.pem"),
            "{e}"
        );
    }
}
