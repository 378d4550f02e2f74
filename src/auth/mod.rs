//! Authorization: which client may read, write and watch which keys, and who
//! may administer the cluster.
//!
//! TLS authenticates (another layer verifies the client's certificate against
//! the trusted CA); this module only decides. A call's [`Caller`] is read from
//! the leaf certificate tonic saw on the connection, and the [`Authorizer`]
//! holds the [`Policy`] built from `--auth-file` and `--admin-identities`:
//!
//! | the call carries | without `--auth-file` | with `--auth-file` |
//! | --- | --- | --- |
//! | no certificate (the port has no TLS: insecure mode) | everything, admin too | everything, admin too |
//! | a certificate | read, write, watch everything; admin only if named in `--admin-identities` | what its roles grant; admin if a role has `admin = true` or `--admin-identities` names it |
//!
//! Insecure mode stays as open as the node was before roles: a port without
//! TLS authenticates nobody, so there is nobody to refuse. Roles only mean
//! something on a port that requires client certificates.
//!
//! Where the services check (`crate::api`): each unary call before it does
//! anything else; a `Batch` op by op before proposing, refused whole if any
//! op is outside the grant (it is atomic, so partly allowed is refused); each
//! op of a session frame on its own, with `PERMISSION_DENIED` in its outcome
//! while the frame's other ops proceed; `Scan` and `Watch` on the prefix they
//! ask for, which must lie within a granted prefix ([`policy::within`]).
//! Delete and Complete are writes.
//!
//! Admin RPCs of the Cluster service: AddLearner, Promote, RemoveMember,
//! TransferLeader, HandoffRetry, HandoffDrop (they change the cluster) and
//! HandoffFailed (it lists keys of every prefix with the sink's errors).
//! Status and MemberList stay open to every caller: the client library finds
//! the leader with them and `/cluster` fans out `Status` between nodes; a
//! non-admin's `Status` leaves out the dead-letter sample, which names keys.
//!
//! Every refusal is `PERMISSION_DENIED` naming the identity, the operation
//! and the key or prefix, and is counted in
//! `inflight_permission_denied_total{operation}`. The auth file is read again
//! on SIGHUP; a file that no longer parses keeps the policy in force and the
//! log says why.

mod identity;
mod policy;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

pub use identity::{names, Caller};
pub use policy::{within, Operation, Policy, Role, Roles};

use crate::shutdown::Shutdown;

/// A refused call; the message names the identity, the operation and the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{0}")]
pub struct Denied(pub String);

/// What an operation is aimed at.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// One key (get, insert, update, delete, complete, and their batch and frame ops).
    Key(&'a str),
    /// Every key under a prefix (scan, watch).
    Prefix(&'a str),
}

/// The policy in force, swapped whole on reload.
pub struct Authorizer {
    policy: RwLock<Arc<Policy>>,
    file: Option<PathBuf>,
    admins: BTreeSet<String>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("file", &self.file)
            .field("admins", &self.admins)
            .finish_non_exhaustive()
    }
}

impl Authorizer {
    /// Reads `--auth-file` (if any); the error names the file and the line or
    /// role at fault.
    pub fn open(file: Option<&Path>, admins: &[String]) -> Result<Authorizer, String> {
        let admins: BTreeSet<String> = admins
            .iter()
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        let a = Authorizer {
            policy: RwLock::new(Arc::new(Policy::default())),
            file: file.map(Path::to_path_buf),
            admins,
        };
        *a.policy.write() = Arc::new(a.load()?);
        Ok(a)
    }

    /// No auth file, no admin identities: what a node without the flags runs.
    pub fn open_default() -> Authorizer {
        Authorizer {
            policy: RwLock::new(Arc::new(Policy::default())),
            file: None,
            admins: BTreeSet::new(),
        }
    }

    fn load(&self) -> Result<Policy, String> {
        let roles = match &self.file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("--auth-file {}: {e}", path.display()))?;
                Some(
                    Roles::parse(&text)
                        .map_err(|e| format!("--auth-file {}: {e}", path.display()))?,
                )
            }
        };
        Ok(Policy {
            roles,
            admins: self.admins.clone(),
        })
    }

    /// Reads the auth file again. On error the policy in force stays.
    /// Counted in `inflight_auth_reloads_total{result}`.
    pub fn reload(&self) -> Result<(), String> {
        let loaded = self.load();
        crate::metrics::METRICS.auth_reload(loaded.is_ok());
        *self.policy.write() = Arc::new(loaded?);
        Ok(())
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().clone()
    }

    /// May `caller` do `op` on `target`? A refusal is counted.
    pub fn check(&self, caller: &Caller, op: Operation, target: Target<'_>) -> Result<(), Denied> {
        let Caller::Certified(names) = caller else {
            return Ok(());
        };
        let policy = self.policy();
        let (what, quoted) = match target {
            Target::Key(k) => ("", k),
            Target::Prefix(p) => ("prefix ", p),
        };
        if policy.allows(names, op, quoted) {
            return Ok(());
        }
        Err(refuse(
            &policy,
            names,
            op,
            format!("{} {what}{quoted:?}", op.as_str()),
        ))
    }

    /// May `caller` use the admin RPC `rpc` (e.g. `Cluster.AddLearner`)?
    pub fn check_admin(&self, caller: &Caller, rpc: &str) -> Result<(), Denied> {
        if self.is_admin(caller) {
            return Ok(());
        }
        let Caller::Certified(names) = caller else {
            return Ok(());
        };
        let policy = self.policy();
        Err(refuse(
            &policy,
            names,
            Operation::Admin,
            format!(
                "call {rpc} (admin: name it in --admin-identities or give its role admin = true)"
            ),
        ))
    }

    /// Whether `caller` may use the admin RPCs (no refusal is counted).
    pub fn is_admin(&self, caller: &Caller) -> bool {
        match caller {
            Caller::Anonymous => true,
            Caller::Certified(names) => self.policy().allows(names, Operation::Admin, ""),
        }
    }

    /// Reads the auth file again on every SIGHUP, until `stop`. The handler
    /// is installed when this is called, not when the future first runs, so
    /// a SIGHUP sent right after cannot fall back to the default action
    /// (ending the process). Without an auth file there is nothing to reload
    /// and the future ends at once.
    pub fn reload_on_sighup(
        self: Arc<Self>,
        mut stop: Shutdown,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        use tokio::signal::unix::{signal, SignalKind};
        let hup = match &self.file {
            None => None,
            Some(_) => match signal(SignalKind::hangup()) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP; --auth-file is not reloaded");
                    None
                }
            },
        };
        let path = self
            .file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        async move {
            let Some(mut hup) = hup else { return };
            loop {
                tokio::select! {
                    got = hup.recv() => if got.is_none() { return },
                    _ = stop.requested() => return,
                }
                match self.reload() {
                    Ok(()) => tracing::info!(file = %path, "auth file reloaded"),
                    Err(e) => tracing::error!(
                        error = %e,
                        "auth file NOT reloaded; the roles read before stay in force"
                    ),
                }
            }
        }
    }
}

fn refuse(policy: &Policy, names: &[String], op: Operation, what: String) -> Denied {
    crate::metrics::METRICS.permission_denied(op.as_str());
    let who = match policy.display_name(names) {
        Some(n) => format!("identity {n:?}"),
        None => "a client certificate without a CN or a DNS, URI or email SAN".to_string(),
    };
    let hint = if policy.roles.is_some() && !policy.lists(names) && op != Operation::Admin {
        " (no name of its certificate is in the auth file)"
    } else {
        ""
    };
    Denied(format!("{who} may not {what}{hint}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(n: &[&str]) -> Caller {
        Caller::Certified(n.iter().map(|s| s.to_string()).collect::<Vec<_>>().into())
    }

    fn authorizer(file: &str, admins: &[&str]) -> (Authorizer, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.toml");
        std::fs::write(&path, file).unwrap();
        let admins: Vec<String> = admins.iter().map(|s| s.to_string()).collect();
        (Authorizer::open(Some(&path), &admins).unwrap(), dir)
    }

    const FILE: &str =
        "[roles.r]\nread = [\"call/\"]\nwrite = [\"sms/\"]\n[identities]\nsms-dispatcher = \"r\"\n";

    #[test]
    fn a_refusal_names_the_identity_the_operation_and_the_key() {
        let (a, _d) = authorizer(FILE, &[]);
        let me = caller(&["sms-dispatcher"]);
        assert_eq!(
            a.check(&me, Operation::Write, Target::Key("call/42")),
            Err(Denied(
                "identity \"sms-dispatcher\" may not write \"call/42\"".into()
            ))
        );
        assert_eq!(
            a.check(&me, Operation::Watch, Target::Prefix("call/")),
            Err(Denied(
                "identity \"sms-dispatcher\" may not watch prefix \"call/\"".into()
            ))
        );
        let e = a.check_admin(&me, "Cluster.Promote").unwrap_err().0;
        assert!(
            e.starts_with("identity \"sms-dispatcher\" may not call Cluster.Promote"),
            "{e}"
        );
        let e = a
            .check(&caller(&["nobody"]), Operation::Read, Target::Key("call/1"))
            .unwrap_err()
            .0;
        assert!(
            e.contains("\"nobody\"") && e.contains("is in the auth file)"),
            "{e}"
        );
        let e = a
            .check(&caller(&[]), Operation::Read, Target::Key("k"))
            .unwrap_err()
            .0;
        assert!(e.contains("without a CN"), "{e}");
    }

    #[test]
    fn no_certificate_is_allowed_everything() {
        let (a, _d) = authorizer(FILE, &[]);
        for op in [Operation::Read, Operation::Write, Operation::Watch] {
            assert!(a.check(&Caller::Anonymous, op, Target::Prefix("")).is_ok());
        }
        assert!(a
            .check_admin(&Caller::Anonymous, "Cluster.AddLearner")
            .is_ok());
    }

    #[test]
    fn refusals_are_counted_by_operation() {
        let (a, _d) = authorizer(FILE, &[]);
        let count = |op: &str| {
            crate::metrics::METRICS
                .permission_denied
                .get_or_create(&crate::metrics::OperationLabels {
                    operation: op.into(),
                })
                .get()
        };
        let (w, ad) = (count("write"), count("admin"));
        let me = caller(&["sms-dispatcher"]);
        let _ = a.check(&me, Operation::Write, Target::Key("call/1"));
        let _ = a.check(&me, Operation::Write, Target::Key("sms/1"));
        let _ = a.check_admin(&me, "Cluster.RemoveMember");
        let _ = a.is_admin(&me);
        // Other tests run alongside and count too: at least, never fewer.
        assert!(count("write") > w);
        assert!(count("admin") > ad);
    }

    #[test]
    fn a_bad_new_file_keeps_the_roles_in_force() {
        let (a, dir) = authorizer(FILE, &[]);
        let me = caller(&["sms-dispatcher"]);
        let path = dir.path().join("auth.toml");
        std::fs::write(&path, "[roles.r]\nwrite = [\"call/\"]\nbogus = 1\n").unwrap();
        let e = a.reload().unwrap_err();
        assert!(e.contains("auth.toml") && e.contains("bogus"), "{e}");
        assert!(a.check(&me, Operation::Write, Target::Key("sms/1")).is_ok());
        assert!(a
            .check(&me, Operation::Write, Target::Key("call/1"))
            .is_err());
        std::fs::write(
            &path,
            "[roles.r]\nwrite = [\"call/\"]\n[identities]\nsms-dispatcher = \"r\"\n",
        )
        .unwrap();
        a.reload().unwrap();
        assert!(a
            .check(&me, Operation::Write, Target::Key("call/1"))
            .is_ok());
        assert!(a
            .check(&me, Operation::Write, Target::Key("sms/1"))
            .is_err());
    }

    #[test]
    fn a_missing_or_bad_file_at_startup_names_the_file() {
        let e = Authorizer::open(Some(Path::new("/nonexistent/auth.toml")), &[])
            .err()
            .unwrap();
        assert!(e.contains("--auth-file /nonexistent/auth.toml"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        std::fs::write(&path, "[roles.x]\nwatch = [1]\n").unwrap();
        let e = Authorizer::open(Some(&path), &[]).err().unwrap();
        assert!(e.contains("a.toml") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn admin_identities_grant_admin_without_an_auth_file() {
        let a = Authorizer::open(None, &["ops".into(), " ".into()]).unwrap();
        assert!(a.check_admin(&caller(&["ops"]), "Cluster.Promote").is_ok());
        assert!(a.check_admin(&caller(&["dev"]), "Cluster.Promote").is_err());
        assert!(a
            .check(&caller(&["dev"]), Operation::Write, Target::Key("x"))
            .is_ok());
    }
}
