//! TLS for outgoing gRPC connections, the client library's and a node's to
//! its peers: the CA that signed the nodes' certificates, and optionally the
//! caller's own certificate and key, for ports that ask for one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// What a client trusts and who it is. Read from files once; cheap to clone.
#[derive(Clone, Debug)]
pub struct ClientTls {
    config: ClientTlsConfig,
}

impl ClientTls {
    /// `ca`: PEM CA certificates to trust; `identity`: PEM certificate and
    /// key files to present. An error names the file and what is wrong.
    pub fn from_files(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientTls, String> {
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read_pem(ca, "CERTIFICATE")?));
        if let Some((cert, key)) = identity {
            config = config.identity(Identity::from_pem(
                read_pem(cert, "CERTIFICATE")?,
                read_pem(key, "PRIVATE KEY")?,
            ));
        }
        Ok(ClientTls { config })
    }

    /// The settings for tonic's channel.
    pub fn config(&self) -> &ClientTlsConfig {
        &self.config
    }
}

/// Outgoing TLS settings read from files that may be read again: a node's,
/// on SIGHUP. Each reload bumps a generation, so whoever caches channels
/// built with the old settings knows to build new ones. Cloning shares it.
#[derive(Clone, Debug)]
pub struct ReloadableClientTls {
    ca: PathBuf,
    identity: Option<(PathBuf, PathBuf)>,
    current: Arc<RwLock<(u64, ClientTls)>>,
}

impl ReloadableClientTls {
    pub fn load(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Self, String> {
        Ok(ReloadableClientTls {
            ca: ca.to_path_buf(),
            identity: identity.map(|(c, k)| (c.to_path_buf(), k.to_path_buf())),
            current: Arc::new(RwLock::new((0, ClientTls::from_files(ca, identity)?))),
        })
    }

    /// Reads the files again; on error the settings in use stay.
    pub fn reload(&self) -> Result<(), String> {
        let identity = self
            .identity
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()));
        let fresh = ClientTls::from_files(&self.ca, identity)?;
        let mut current = self.current.write();
        *current = (current.0 + 1, fresh);
        Ok(())
    }

    /// The settings in use, and their generation.
    pub fn current(&self) -> (u64, ClientTls) {
        self.current.read().clone()
    }

    /// The generation alone: whether a cached channel is still current,
    /// without copying the certificates.
    pub fn generation(&self) -> u64 {
        self.current.read().0
    }
}

/// The file's bytes, if it holds a PEM block of this kind: tonic parses the
/// PEM only when it connects, and its error there would not name the file.
fn read_pem(path: &Path, kind: &str) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&pem);
    let begins = text
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&format!("{kind}-----")));
    if !begins {
        return Err(format!("{}: no PEM {kind} in the file", path.display()));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_the_expected_pem_block_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ca.pem");
        std::fs::write(&f, "hello").unwrap();
        let e = ClientTls::from_files(&f, None).unwrap_err();
        assert!(
            e.contains("ca.pem") && e.contains("no PEM CERTIFICATE"),
            "{e}"
        );
        let e = ClientTls::from_files(&dir.path().join("absent.pem"), None).unwrap_err();
        assert!(e.contains("absent.pem"), "{e}");
    }
}
