//! Certificates for tests: a CA and the node and client certificates it
//! signs, written as PEM files to a directory, named as `inflight certs init`
//! names them (`ca.pem`, `node-N.pem` + `node-N-key.pem`,
//! `client-NAME.pem` + `client-NAME-key.pem`), plus the bad ones a test
//! needs: expired, from another CA.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

/// A certificate and its key on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A test CA writing into one directory.
pub struct Pki {
    dir: PathBuf,
    name: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    /// A new CA, `DIR/NAME.pem` (and its key beside it).
    pub fn new(dir: &Path, name: &str) -> Pki {
        std::fs::create_dir_all(dir).expect("certificate directory");
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        std::fs::write(dir.join(format!("{name}.pem")), issuer.pem()).expect("write CA");
        std::fs::write(
            dir.join(format!("{name}-key.pem")),
            issuer.key().serialize_pem(),
        )
        .expect("write CA key");
        Pki {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            issuer,
        }
    }

    /// The CA certificate file.
    pub fn ca(&self) -> PathBuf {
        self.dir.join(format!("{}.pem", self.name))
    }

    /// `node-N`: CN node-N, SANs localhost, node-N, 127.0.0.1, ::1, EKU
    /// serverAuth + clientAuth. `serial` tells two issues apart.
    pub fn node(&self, n: u64, serial: u64) -> CertFiles {
        self.node_at(n, serial, &[])
    }

    /// As [`Pki::node`], also naming the node's own IP addresses (a
    /// cluster whose nodes have distinct loopback addresses).
    pub fn node_at(&self, n: u64, serial: u64, ips: &[IpAddr]) -> CertFiles {
        let name = format!("node-{n}");
        self.issue(
            &name,
            &name,
            serial,
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            false,
            ips,
        )
    }

    /// `client-NAME`: CN NAME, EKU clientAuth only.
    pub fn client(&self, name: &str) -> CertFiles {
        self.issue(
            &format!("client-{name}"),
            name,
            1,
            &[ExtendedKeyUsagePurpose::ClientAuth],
            false,
            &[],
        )
    }

    /// As [`Pki::client`], valid only in 2020.
    pub fn expired_client(&self, name: &str) -> CertFiles {
        self.issue(
            &format!("client-{name}"),
            name,
            1,
            &[ExtendedKeyUsagePurpose::ClientAuth],
            true,
            &[],
        )
    }

    fn issue(
        &self,
        file: &str,
        cn: &str,
        serial: u64,
        eku: &[ExtendedKeyUsagePurpose],
        expired: bool,
        ips: &[IpAddr],
    ) -> CertFiles {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into().expect("dns name")),
            SanType::DnsName(cn.try_into().expect("dns name")),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ];
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.extended_key_usages = eku.to_vec();
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.serial_number = Some(SerialNumber::from(serial));
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 12, 31);
        }
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        let files = CertFiles {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}-key.pem")),
        };
        // Written beside and renamed, so a node reloading on SIGHUP never
        // reads half a file.
        write_atomically(&files.cert, cert.pem().as_bytes());
        write_atomically(&files.key, key.serialize_pem().as_bytes());
        files
    }
}

fn write_atomically(path: &Path, data: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).expect("write certificate");
    std::fs::rename(&tmp, path).expect("rename certificate");
}

/// A rustls client configuration trusting the CA certificates in `ca` and
/// presenting `identity`, if any (no ALPN: a caller that needs it sets
/// `alpn_protocols`).
pub fn client_config(ca: &Path, identity: Option<&CertFiles>) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(c.expect("CA certificate")).expect("add CA");
    }
    let b = rustls::ClientConfig::builder_with_provider(inflight::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    match identity {
        Some(id) => b
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(&id.cert)
                    .expect("certificate file")
                    .map(|c| c.expect("certificate"))
                    .collect(),
                PrivateKeyDer::from_pem_file(&id.key).expect("key file"),
            )
            .expect("client certificate"),
        None => b.with_no_client_auth(),
    }
}
