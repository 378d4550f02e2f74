//! `inflight certs init`: a private CA and the certificates a secure
//! cluster needs, in one directory the TLS settings point at.
//!
//! A cluster trusts exactly one CA, made here, and nothing else: there is no
//! public PKI in a Raft cluster's trust model, so a self-signed CA kept next
//! to the operator is both the simplest and the narrowest trust root.
//!
//! The file names are a convention the TLS code relies on ([`CertDir`]):
//!
//! | files | subject | EKU | SANs |
//! | --- | --- | --- | --- |
//! | `ca.pem`, `ca-key.pem` | `inflight CA`, CA, keyCertSign, 10 years | – | – |
//! | `node-N.pem`, `node-N-key.pem` | `node-N` | serverAuth + clientAuth | localhost, node-N, 127.0.0.1, ::1, every `--host` |
//! | `client-NAME.pem`, `client-NAME-key.pem` | `NAME` | clientAuth only | NAME |
//!
//! A node is a server to clients and peers and a client to its peers, so it
//! carries both purposes. A client certificate carries clientAuth alone: the
//! peer port refuses a certificate without serverAuth, which is how a client
//! certificate is told from a node's, with no list of node names to keep.
//!
//! Running `init` again is how certificates are added: an existing CA is
//! reused (after checking it is a CA, unexpired, and that the key is its
//! key), an existing pair is kept as it is, and only what is missing is
//! made. No file is ever overwritten. Every check happens before the first
//! write, and each file appears whole (written beside its name, then
//! hard-linked into place, which fails rather than replace a file), so a
//! refused or interrupted run leaves no half-made certificate behind.
//! Keys are ECDSA P-256, readable by their owner only (0600).

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
    PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};

/// The CA's common name.
pub const CA_NAME: &str = "inflight CA";
/// The client certificate made when no `--client` is given.
pub const DEFAULT_CLIENT: &str = "admin";
/// How long a new CA is valid.
pub const CA_DAYS: u32 = 3650;
/// The most node certificates one run makes: a typo such as `--nodes 300`
/// would otherwise spend minutes making keys nobody wants.
pub const MAX_NODES: u16 = 100;
/// The longest `--days`: no node or client outlives a new CA.
pub const MAX_DAYS: u32 = CA_DAYS;
/// A client name becomes a common name, whose upper bound is 64 (RFC 5280).
pub const MAX_NAME_LEN: usize = 64;
/// Certificates start this long before they are made, so a node whose clock
/// is a little behind the one that ran `init` does not refuse them.
const BACKDATE: Duration = Duration::minutes(10);

const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o700;

#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Create a CA, node certificates and client certificates in DIR, or add
    /// the missing ones with the CA already there. Never overwrites a file.
    Init(InitArgs),
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Where the certificates go (created with mode 0700 if missing).
    pub dir: PathBuf,
    /// Node certificates node-1 .. node-N.
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// A client certificate for NAME (repeatable; default: one for "admin").
    #[arg(long = "client", value_name = "NAME")]
    pub clients: Vec<String>,
    /// Another name or IP address the nodes are reached at, added to every
    /// new node certificate (repeatable).
    #[arg(long = "host", value_name = "NAME_OR_IP")]
    pub hosts: Vec<String>,
    /// Validity of new node and client certificates, in days.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
}

impl InitArgs {
    pub fn options(&self) -> InitOptions {
        InitOptions {
            nodes: self.nodes,
            clients: if self.clients.is_empty() {
                vec![DEFAULT_CLIENT.to_string()]
            } else {
                self.clients.clone()
            },
            hosts: self.hosts.clone(),
            days: self.days,
        }
    }
}

/// What `init` makes (when missing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitOptions {
    /// Node certificates 1..=nodes.
    pub nodes: u16,
    /// One client certificate per name.
    pub clients: Vec<String>,
    /// Extra DNS names or IP addresses of new node certificates.
    pub hosts: Vec<String>,
    /// Validity of new node and client certificates.
    pub days: u32,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            nodes: 3,
            clients: vec![DEFAULT_CLIENT.to_string()],
            hosts: Vec::new(),
            days: 365,
        }
    }
}

/// `inflight certs …`.
pub fn run(command: CertsCommand) -> ExitCode {
    match command {
        CertsCommand::Init(args) => match init(&args.dir, &args.options()) {
            Ok(report) => {
                print!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(if e.is_usage() { 2 } else { 1 })
            }
        },
    }
}

/// A certificate and its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The file names inside a certificate directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertDir(PathBuf);

impl CertDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CertDir(dir.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    fn pair(&self, stem: &str) -> Pair {
        Pair {
            cert: self.0.join(format!("{stem}.pem")),
            key: self.0.join(format!("{stem}-key.pem")),
        }
    }

    /// `ca.pem`, `ca-key.pem`.
    pub fn ca(&self) -> Pair {
        self.pair("ca")
    }

    /// `node-N.pem`, `node-N-key.pem`.
    pub fn node(&self, n: u16) -> Pair {
        self.pair(&format!("node-{n}"))
    }

    /// `client-NAME.pem`, `client-NAME-key.pem`.
    pub fn client(&self, name: &str) -> Pair {
        self.pair(&format!("client-{name}"))
    }
}

/// Why `init` made nothing (or, for an I/O error mid-way, made only whole
/// pairs before the failing one).
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error(
        "--client {0:?}: a client name is 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or '.', \
         starting with a letter or digit (it becomes a file name and a DNS name)"
    )]
    BadClientName(String),
    #[error(
        "--host {0:?}: neither an IP address nor a DNS name (dot-separated labels of letters, \
         digits, '-' and '_', each at most 63 characters, at most 253 in all)"
    )]
    BadHost(String),
    #[error("--nodes {0}: must be between 1 and {MAX_NODES}")]
    BadNodes(u16),
    #[error("--days {0}: must be between 1 and {MAX_DAYS}")]
    BadDays(u32),
    #[error(
        "{}: cannot use the CA: {problem}. Restore ca.pem and ca-key.pem from a backup, or move \
         the directory away and run `certs init` again (every node and client then needs the new \
         certificates)",
        path.display()
    )]
    BadCa { path: PathBuf, problem: String },
    #[error(
        "{} exists but {} does not: a pair is kept or made whole. Restore the missing file, or \
         remove {} so a new pair is made",
        present.display(), missing.display(), present.display()
    )]
    HalfPair { present: PathBuf, missing: PathBuf },
    #[error(
        "{} has no CA but holds {}, which some other CA signed: a new CA would make certificates \
         that cannot work with it. Restore ca.pem and ca-key.pem, or use an empty directory",
        dir.display(), found.display()
    )]
    OrphanCertificate { dir: PathBuf, found: PathBuf },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("making the certificate for {what}: {source}")]
    Generate { what: String, source: rcgen::Error },
}

impl CertError {
    /// Whether the command line asked for something impossible (exit 2),
    /// rather than the directory's contents or the disk failing (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            CertError::BadClientName(_)
                | CertError::BadHost(_)
                | CertError::BadNodes(_)
                | CertError::BadDays(_)
        )
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One certificate `init` made or found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// "CA", "node 2", "client admin".
    pub what: String,
    pub files: Pair,
    /// Made by this run; false when both files were there and were kept.
    pub created: bool,
}

/// What `init` did, in the order it did it; printed as one line per pair.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub entries: Vec<Entry>,
    /// Things the operator should know (a `--host` not applied to a kept
    /// certificate, a validity cut short by the CA's).
    pub notes: Vec<String>,
}

impl Report {
    pub fn created(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.created)
    }

    pub fn kept(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| !e.created)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.entries {
            writeln!(
                f,
                "{:<8}{:<16}{}, {}",
                if e.created { "created" } else { "kept" },
                e.what,
                e.files.cert.display(),
                e.files.key.display()
            )?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
    }
}

/// Makes whatever of the CA, `opts.nodes` node pairs and the client pairs is
/// missing from `dir`, reusing the CA found there.
pub fn init(dir: &Path, opts: &InitOptions) -> Result<Report, CertError> {
    let survey = survey(dir, opts)?;

    make_dir(dir)?;
    let now = OffsetDateTime::now_utc();
    let mut report = Report::default();
    let ca_files = CertDir::new(dir).ca();
    let (issuer, ca_until) = match survey.ca {
        Some(ca) => {
            report.entries.push(Entry {
                what: "CA".into(),
                files: ca_files,
                created: false,
            });
            ca
        }
        None => {
            let until = now + Duration::days(CA_DAYS.into());
            let ca = new_ca(now, until)?;
            write_pair(&ca_files, &ca.pem(), &ca.key().serialize_pem())?;
            report.entries.push(Entry {
                what: "CA".into(),
                files: ca_files,
                created: true,
            });
            (ca_issuer(ca)?, until)
        }
    };

    let wanted_until = now + Duration::days(opts.days.into());
    let until = wanted_until.min(ca_until);
    let mut kept_nodes = Vec::new();
    let mut created_any = false;
    for Planned {
        what,
        files,
        leaf,
        present,
    } in survey.leaves
    {
        if !present {
            let (cert, key) =
                issue(&issuer, &leaf, &survey.hosts, now, until).map_err(|source| {
                    CertError::Generate {
                        what: what.clone(),
                        source,
                    }
                })?;
            write_pair(&files, &cert, &key)?;
            created_any = true;
        } else if let Leaf::Node(n) = leaf {
            kept_nodes.push(format!("node-{n}"));
        }
        report.entries.push(Entry {
            what,
            files,
            created: !present,
        });
    }
    sync_dir(dir)?;

    if !survey.hosts.is_empty() && !kept_nodes.is_empty() {
        report.notes.push(format!(
            "--host is not added to kept certificates ({}); remove a node's two files and \
             run again to reissue it with the new names",
            kept_nodes.join(", ")
        ));
    }
    if created_any && until < wanted_until {
        report.notes.push(format!(
            "new certificates are valid until {}, when the CA expires, not for {} days",
            until.date(),
            opts.days
        ));
    }
    Ok(report)
}

/// What `init` found and will do, decided before anything is written.
struct Survey<'a> {
    hosts: Vec<SanType>,
    leaves: Vec<Planned<'a>>,
    /// The CA already in the directory, with its expiry; none to make one.
    ca: Option<(Issuer<'static, KeyPair>, OffsetDateTime)>,
}

/// A node or client pair `init` was asked for.
struct Planned<'a> {
    what: String,
    files: Pair,
    leaf: Leaf<'a>,
    /// Both files are there already, so it is kept.
    present: bool,
}

/// A certificate below the CA.
enum Leaf<'a> {
    Node(u16),
    Client(&'a str),
}

/// Checks the flags and the directory: everything that can refuse a run.
fn survey<'a>(dir: &Path, opts: &'a InitOptions) -> Result<Survey<'a>, CertError> {
    if opts.nodes == 0 || opts.nodes > MAX_NODES {
        return Err(CertError::BadNodes(opts.nodes));
    }
    if opts.days == 0 || opts.days > MAX_DAYS {
        return Err(CertError::BadDays(opts.days));
    }
    let mut clients: Vec<&str> = Vec::new();
    for name in &opts.clients {
        check_client_name(name)?;
        if !clients.contains(&name.as_str()) {
            clients.push(name);
        }
    }
    let hosts = opts
        .hosts
        .iter()
        .map(|h| parse_host(h))
        .collect::<Result<Vec<_>, _>>()?;

    let layout = CertDir::new(dir);
    let ca_files = layout.ca();
    let ca_present = present(&ca_files)?;
    let wanted = (1..=opts.nodes)
        .map(|n| (format!("node {n}"), layout.node(n), Leaf::Node(n)))
        .chain(
            clients
                .into_iter()
                .map(|c| (format!("client {c}"), layout.client(c), Leaf::Client(c))),
        );
    let mut leaves = Vec::new();
    for (what, files, leaf) in wanted {
        let here = present(&files)?;
        if here && !ca_present {
            return Err(CertError::OrphanCertificate {
                dir: dir.to_path_buf(),
                found: files.cert,
            });
        }
        leaves.push(Planned {
            what,
            files,
            leaf,
            present: here,
        });
    }
    if !ca_present {
        // Also a pair this run was not asked about (a node-7 from an
        // earlier `--nodes 7`) would be an orphan of a new CA.
        if let Some(found) = any_leaf_file(dir)? {
            return Err(CertError::OrphanCertificate {
                dir: dir.to_path_buf(),
                found,
            });
        }
    }
    let ca = if ca_present {
        Some(load_ca(&ca_files)?)
    } else {
        None
    };
    Ok(Survey { hosts, leaves, ca })
}

fn check_client_name(name: &str) -> Result<(), CertError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(CertError::BadClientName(name.to_string()))
    }
}

/// An extra subject alternative name of the nodes: an IP address if it
/// parses as one, otherwise a DNS name.
fn parse_host(host: &str) -> Result<SanType, CertError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let bad = || CertError::BadHost(host.to_string());
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(bad());
    }
    Ok(SanType::DnsName(host.try_into().map_err(|_| bad())?))
}

/// Whether both files of a pair exist; one without the other is refused.
fn present(pair: &Pair) -> Result<bool, CertError> {
    let cert = exists(&pair.cert)?;
    let key = exists(&pair.key)?;
    match (cert, key) {
        (true, true) => Ok(true),
        (false, false) => Ok(false),
        (true, false) => Err(CertError::HalfPair {
            present: pair.cert.clone(),
            missing: pair.key.clone(),
        }),
        (false, true) => Err(CertError::HalfPair {
            present: pair.key.clone(),
            missing: pair.cert.clone(),
        }),
    }
}

fn exists(path: &Path) -> Result<bool, CertError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// The first `node-*.pem` or `client-*.pem` in `dir`, if any.
fn any_leaf_file(dir: &Path) -> Result<Option<PathBuf>, CertError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if (name.starts_with("node-") || name.starts_with("client-")) && name.ends_with(".pem") {
            return Ok(Some(entry.path()));
        }
    }
    Ok(None)
}

/// Reads and checks an existing CA: a PEM certificate that is a CA and
/// still valid, and a private key that is that certificate's key. Anything
/// else would sign certificates that no node accepts.
fn load_ca(files: &Pair) -> Result<(Issuer<'static, KeyPair>, OffsetDateTime), CertError> {
    let bad = |path: &Path, problem: String| CertError::BadCa {
        path: path.to_path_buf(),
        problem,
    };
    let cert_bytes = fs::read(&files.cert).map_err(io_err(&files.cert))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&cert_bytes)
        .map_err(|e| bad(&files.cert, format!("not a PEM certificate ({e})")))?;
    if pem.label != "CERTIFICATE" {
        return Err(bad(
            &files.cert,
            format!("holds a PEM \"{}\", not a \"CERTIFICATE\"", pem.label),
        ));
    }
    let cert = pem
        .parse_x509()
        .map_err(|e| bad(&files.cert, format!("not an X.509 certificate ({e})")))?;
    let is_ca = cert
        .basic_constraints()
        .map_err(|e| bad(&files.cert, format!("unreadable basicConstraints ({e})")))?
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        return Err(bad(
            &files.cert,
            "not a CA certificate (no basicConstraints CA:TRUE)".into(),
        ));
    }
    let until = cert.validity().not_after.to_datetime();
    if !cert.validity().is_valid() {
        return Err(bad(
            &files.cert,
            format!(
                "valid only from {} to {}, not now",
                cert.validity().not_before.to_datetime().date(),
                until.date()
            ),
        ));
    }

    let key_bytes = fs::read(&files.key).map_err(io_err(&files.key))?;
    let key_text = std::str::from_utf8(&key_bytes)
        .map_err(|_| bad(&files.key, "not a PEM private key (not text)".into()))?;
    let key = KeyPair::from_pem(key_text)
        .map_err(|e| bad(&files.key, format!("not a PKCS#8 PEM private key ({e})")))?;
    if key.der_bytes() != cert.public_key().subject_public_key.data.as_ref() {
        return Err(bad(
            &files.key,
            format!("not the private key of {}", files.cert.display()),
        ));
    }
    let pem_text = std::str::from_utf8(&cert_bytes)
        .map_err(|_| bad(&files.cert, "not a PEM certificate (not text)".into()))?;
    let issuer = Issuer::from_ca_cert_pem(pem_text, key)
        .map_err(|e| bad(&files.cert, format!("cannot sign with it ({e})")))?;
    Ok((issuer, until))
}

fn new_ca(
    now: OffsetDateTime,
    until: OffsetDateTime,
) -> Result<CertifiedIssuer<'static, KeyPair>, CertError> {
    let generate = |source| CertError::Generate {
        what: "the CA".into(),
        source,
    };
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(CA_NAME);
    // The CA signs node and client certificates directly, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - BACKDATE;
    params.not_after = until;
    CertifiedIssuer::self_signed(params, key).map_err(generate)
}

/// The issuer of a CA made in this run, as `load_ca` would read it back,
/// so a first run and a later one sign alike.
fn ca_issuer(ca: CertifiedIssuer<'static, KeyPair>) -> Result<Issuer<'static, KeyPair>, CertError> {
    let generate = |source| CertError::Generate {
        what: "the CA".into(),
        source,
    };
    let pem = ca.pem();
    let key = KeyPair::from_pem(&ca.key().serialize_pem()).map_err(generate)?;
    Issuer::from_ca_cert_pem(&pem, key).map_err(generate)
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

/// A node or client certificate and its key, as PEM text.
fn issue(
    issuer: &Issuer<'_, KeyPair>,
    leaf: &Leaf<'_>,
    hosts: &[SanType],
    now: OffsetDateTime,
    until: OffsetDateTime,
) -> Result<(String, String), rcgen::Error> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    match leaf {
        Leaf::Node(n) => {
            let name = format!("node-{n}");
            params.distinguished_name = common_name(&name);
            let mut sans = vec![
                SanType::DnsName("localhost".try_into()?),
                SanType::DnsName(name.try_into()?),
                SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            ];
            for h in hosts {
                if !sans.contains(h) {
                    sans.push(h.clone());
                }
            }
            params.subject_alt_names = sans;
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
        }
        Leaf::Client(name) => {
            params.distinguished_name = common_name(name);
            params.subject_alt_names = vec![SanType::DnsName((*name).try_into()?)];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - BACKDATE;
    params.not_after = until;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn make_dir(dir: &Path) -> Result<(), CertError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io_err(dir))
}

/// Writes the key, then the certificate, each whole and each only if absent.
fn write_pair(pair: &Pair, cert: &str, key: &str) -> Result<(), CertError> {
    write_new(&pair.key, key.as_bytes(), KEY_MODE)?;
    write_new(&pair.cert, cert.as_bytes(), CERT_MODE)
}

/// Creates `path` with `contents` and `mode`, or fails if it exists. The
/// bytes go to a temporary file first and are linked into place once
/// synced, so `path` never holds part of them; a hard link, unlike a
/// rename, refuses to replace a file that appeared in the meantime.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        name.unwrap_or_default(),
        std::process::id()
    ));
    // A file of this name is left from a crashed run whose pid was ours.
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed `mode`; certificates must stay readable.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::hard_link(&tmp, path)
    })();
    let _ = fs::remove_file(&tmp);
    result.map_err(io_err(path))
}

fn sync_dir(dir: &Path) -> Result<(), CertError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
    use webpki::{anchor_from_trusted_cert, EndEntityCert, KeyUsage};

    fn der(path: &Path) -> CertificateDer<'static> {
        let bytes = fs::read(path).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&bytes).unwrap();
        CertificateDer::from(pem.contents)
    }

    /// Verifies `leaf` up to the CA in `dir` for `usage`, as rustls would.
    fn verify(dir: &CertDir, leaf: &Pair, usage: KeyUsage) -> Result<(), webpki::Error> {
        verify_with(&dir.ca().cert, &leaf.cert, usage)
    }

    fn verify_with(ca: &Path, leaf: &Path, usage: KeyUsage) -> Result<(), webpki::Error> {
        let ca = der(ca);
        let anchors = [anchor_from_trusted_cert(&ca).unwrap()];
        let leaf = der(leaf);
        let ee = EndEntityCert::try_from(&leaf).unwrap();
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &[],
            UnixTime::now(),
            usage,
            None,
            None,
        )
        .map(|_| ())
    }

    fn valid_for(leaf: &Pair, name: &str) -> bool {
        let leaf = der(&leaf.cert);
        let ee = EndEntityCert::try_from(&leaf).unwrap();
        ee.verify_is_valid_for_subject_name(&ServerName::try_from(name).unwrap())
            .is_ok()
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// Every file in `dir` with its bytes.
    fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    }

    fn fresh(opts: &InitOptions) -> (tempfile::TempDir, CertDir, Report) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CertDir::new(tmp.path().join("certs"));
        let report = init(dir.path(), opts).unwrap();
        (tmp, dir, report)
    }

    #[test]
    fn node_certificate_is_valid_as_server_for_loopback_names_and_as_client() {
        let (_tmp, dir, report) = fresh(&InitOptions::default());
        assert_eq!(report.created().count(), 1 + 3 + 1);
        for n in 1..=3 {
            let node = dir.node(n);
            verify(&dir, &node, KeyUsage::server_auth()).unwrap();
            verify(&dir, &node, KeyUsage::client_auth()).unwrap();
            for name in ["127.0.0.1", "::1", "localhost", &format!("node-{n}")] {
                assert!(valid_for(&node, name), "node-{n} not valid for {name}");
            }
            assert!(!valid_for(&node, "example.com"));
            assert!(!valid_for(&node, "10.0.0.1"));
        }
    }

    #[test]
    fn client_certificate_is_valid_as_client_but_never_as_server() {
        let (_tmp, dir, _) = fresh(&InitOptions::default());
        let admin = dir.client(DEFAULT_CLIENT);
        verify(&dir, &admin, KeyUsage::client_auth()).unwrap();
        let as_server = verify(&dir, &admin, KeyUsage::server_auth());
        assert!(
            matches!(as_server, Err(webpki::Error::RequiredEkuNotFoundContext(_))),
            "{as_server:?}"
        );
    }

    #[test]
    fn certificates_of_another_ca_do_not_verify() {
        let (_tmp, a, _) = fresh(&InitOptions::default());
        let (_tmp2, b, _) = fresh(&InitOptions::default());
        let r = verify_with(&a.ca().cert, &b.node(1).cert, KeyUsage::server_auth());
        assert!(r.is_err(), "{r:?}");
        verify_with(&b.ca().cert, &b.node(1).cert, KeyUsage::server_auth()).unwrap();
    }

    #[test]
    fn ca_is_a_ten_year_ca_named_inflight_ca_and_leaves_last_the_asked_days() {
        let opts = InitOptions {
            days: 30,
            ..InitOptions::default()
        };
        let (_tmp, dir, _) = fresh(&opts);
        let ca = der(&dir.ca().cert);
        let (_, ca) = x509_parser::parse_x509_certificate(&ca).unwrap();
        assert!(ca.is_ca());
        assert_eq!(
            ca.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            CA_NAME
        );
        assert!(ca.key_usage().unwrap().unwrap().value.key_cert_sign());
        let years = ca.validity().time_to_expiration().unwrap().whole_days();
        assert!((3649..=3650).contains(&years), "{years}");

        let node = der(&dir.node(1).cert);
        let (_, node) = x509_parser::parse_x509_certificate(&node).unwrap();
        assert!(!node.is_ca());
        let days = node.validity().time_to_expiration().unwrap().whole_days();
        assert!((29..=30).contains(&days), "{days}");
        let cn = node.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), "node-1");
    }

    #[test]
    fn rerun_keeps_every_existing_file_byte_identical_and_adds_only_the_new_client() {
        let (_tmp, dir, _) = fresh(&InitOptions::default());
        let before = snapshot(dir.path());

        let again = InitOptions {
            clients: vec!["billing".into()],
            ..InitOptions::default()
        };
        let report = init(dir.path(), &again).unwrap();
        let created: Vec<_> = report.created().map(|e| e.what.as_str()).collect();
        assert_eq!(created, ["client billing"]);
        let kept: Vec<_> = report.kept().map(|e| e.what.as_str()).collect();
        assert_eq!(kept, ["CA", "node 1", "node 2", "node 3"]);

        let after = snapshot(dir.path());
        for (name, bytes) in &before {
            let now = after.iter().find(|(n, _)| n == name).unwrap();
            assert_eq!(&now.1, bytes, "{name} changed");
        }
        let added: Vec<_> = after
            .iter()
            .filter(|(n, _)| !before.iter().any(|(b, _)| b == n))
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(added, ["client-billing-key.pem", "client-billing.pem"]);

        // Signed by the reused CA.
        let billing = dir.client("billing");
        verify(&dir, &billing, KeyUsage::client_auth()).unwrap();
        assert!(verify(&dir, &billing, KeyUsage::server_auth()).is_err());
        assert!(report.to_string().contains("created client billing"));
        assert!(report.to_string().contains("kept    CA"));
    }

    #[test]
    fn more_nodes_later_are_signed_by_the_same_ca_with_the_extra_hosts() {
        let (_tmp, dir, _) = fresh(&InitOptions {
            nodes: 1,
            ..InitOptions::default()
        });
        let report = init(
            dir.path(),
            &InitOptions {
                nodes: 2,
                hosts: vec!["10.1.2.3".into(), "db.internal".into(), "fd00::7".into()],
                ..InitOptions::default()
            },
        )
        .unwrap();
        let created: Vec<_> = report.created().map(|e| e.what.as_str()).collect();
        assert_eq!(created, ["node 2"]);
        let node2 = dir.node(2);
        verify(&dir, &node2, KeyUsage::server_auth()).unwrap();
        for name in ["10.1.2.3", "db.internal", "fd00::7", "localhost"] {
            assert!(valid_for(&node2, name), "{name}");
        }
        // node-1 was kept, without the new names, and the report says so.
        assert!(!valid_for(&dir.node(1), "db.internal"));
        assert!(report.notes.iter().any(|n| n.contains("node-1")));
    }

    #[test]
    fn files_are_0600_keys_0644_certificates_in_a_0700_directory() {
        let (_tmp, dir, report) = fresh(&InitOptions::default());
        assert_eq!(mode(dir.path()), 0o700);
        for e in &report.entries {
            assert_eq!(mode(&e.files.key), 0o600, "{}", e.files.key.display());
            assert_eq!(mode(&e.files.cert), 0o644, "{}", e.files.cert.display());
        }
        // No temporary file is left behind.
        assert!(snapshot(dir.path())
            .iter()
            .all(|(n, _)| !n.starts_with('.')));
    }

    #[test]
    fn garbage_ca_pem_is_a_clear_error_and_nothing_is_written() {
        let (_tmp, dir, _) = fresh(&InitOptions::default());
        fs::write(dir.ca().cert, b"\x00\xffnot a certificate at all").unwrap();
        let before = snapshot(dir.path());
        let err = init(
            dir.path(),
            &InitOptions {
                clients: vec!["late".into()],
                ..InitOptions::default()
            },
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, CertError::BadCa { .. }), "{msg}");
        assert!(
            msg.contains("ca.pem") && msg.contains("not a PEM certificate"),
            "{msg}"
        );
        assert_eq!(snapshot(dir.path()), before);
    }

    #[test]
    fn truncated_ca_key_and_a_key_of_another_ca_are_refused() {
        let (_tmp, dir, _) = fresh(&InitOptions::default());
        let (_tmp2, other, _) = fresh(&InitOptions::default());
        let key = fs::read_to_string(dir.ca().key).unwrap();

        fs::write(dir.ca().key, &key[..key.len() / 2]).unwrap();
        let msg = init(dir.path(), &InitOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("ca-key.pem") && msg.contains("private key"),
            "{msg}"
        );

        fs::copy(other.ca().key, dir.ca().key).unwrap();
        let msg = init(dir.path(), &InitOptions::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("not the private key of"), "{msg}");
    }

    #[test]
    fn a_node_certificate_in_place_of_the_ca_is_refused() {
        let (_tmp, dir, _) = fresh(&InitOptions::default());
        fs::copy(dir.node(1).cert, dir.ca().cert).unwrap();
        fs::copy(dir.node(1).key, dir.ca().key).unwrap();
        let msg = init(dir.path(), &InitOptions::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("not a CA certificate"), "{msg}");
    }

    #[test]
    fn half_pairs_and_certificates_without_their_ca_are_refused_before_any_write() {
        let (_tmp, dir, _) = fresh(&InitOptions::default());
        fs::remove_file(dir.node(2).key).unwrap();
        let before = snapshot(dir.path());
        let err = init(
            dir.path(),
            &InitOptions {
                clients: vec!["new".into()],
                ..InitOptions::default()
            },
        )
        .unwrap_err();
        assert!(matches!(err, CertError::HalfPair { .. }), "{err}");
        assert!(err.to_string().contains("node-2-key.pem"), "{err}");
        assert_eq!(snapshot(dir.path()), before);

        // The CA is gone but its certificates are not: a new CA would not
        // match them, so nothing is made.
        fs::remove_file(dir.ca().cert).unwrap();
        fs::remove_file(dir.ca().key).unwrap();
        fs::remove_file(dir.node(2).cert).unwrap();
        let before = snapshot(dir.path());
        let err = init(dir.path(), &InitOptions::default()).unwrap_err();
        assert!(matches!(err, CertError::OrphanCertificate { .. }), "{err}");
        assert_eq!(snapshot(dir.path()), before);
    }

    #[test]
    fn bad_names_hosts_and_counts_are_refused_before_anything_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        for name in [
            "",
            "../evil",
            "a/b",
            ".hidden",
            "-x",
            "sp ace",
            "ünï",
            &"n".repeat(65),
        ] {
            let opts = InitOptions {
                clients: vec![name.to_string()],
                ..InitOptions::default()
            };
            let err = init(&dir, &opts).unwrap_err();
            assert!(matches!(err, CertError::BadClientName(_)), "{name}: {err}");
            assert!(err.is_usage());
        }
        for host in [
            "",
            "a..b",
            "-a.com",
            "[::1]",
            "host:7001",
            "a/b",
            &"l".repeat(64),
        ] {
            let opts = InitOptions {
                hosts: vec![host.to_string()],
                ..InitOptions::default()
            };
            let err = init(&dir, &opts).unwrap_err();
            assert!(matches!(err, CertError::BadHost(_)), "{host}: {err}");
        }
        for nodes in [0, MAX_NODES + 1] {
            let opts = InitOptions {
                nodes,
                ..InitOptions::default()
            };
            assert!(matches!(init(&dir, &opts), Err(CertError::BadNodes(_))));
        }
        for days in [0, MAX_DAYS + 1] {
            let opts = InitOptions {
                days,
                ..InitOptions::default()
            };
            assert!(matches!(init(&dir, &opts), Err(CertError::BadDays(_))));
        }
        assert!(!dir.exists());
        // Accepted: letters, digits, '-', '_', '.'.
        check_client_name("billing-v2_eu.west").unwrap();
    }
}
