//! The auth file and the decision it drives: may these names do this to that key?
//!
//! ```toml
//! [roles.sms-writer]
//! read = ["call/"]
//! write = ["sms/"]
//! watch = ["sms/"]
//!
//! [roles.operator]
//! read = [""]          # the empty prefix is every key
//! admin = true
//!
//! [identities]
//! "sms-dispatcher" = "sms-writer"          # a certificate's CN or a SAN
//! "spiffe://example.org/ops" = "operator"
//! ```
//!
//! A grant is a plain string prefix: `"sms/"` covers `sms/1` but not `sms`
//! or `smsx`; `"sms"` covers all three. A scan or a watch names a prefix of
//! its own, and is allowed when that prefix lies within a granted one (starts
//! with it), so that every key it could ever return is covered: a grant of
//! `"call/"` allows watching `"call/eu/"` but not `"call"` or `""`.
//!
//! A certificate carries several names (CN, SANs); each that the file lists
//! brings its role, and the caller holds the union of those roles' grants.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

/// What a call does, as grants and the refusal metric name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Get, Scan, and the gets of a frame.
    Read,
    /// Insert, Update, Delete, Complete, Batch, and their frame ops.
    Write,
    /// Watch.
    Watch,
    /// The Cluster service's changes: membership, leader transfer, dead letters.
    Admin,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::Watch => "watch",
            Operation::Admin => "admin",
        }
    }
}

/// The auth file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    #[serde(default)]
    roles: BTreeMap<String, Role>,
    #[serde(default)]
    identities: BTreeMap<String, String>,
}

/// What one role may do: prefix lists per operation, and admin.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Role {
    #[serde(default)]
    pub read: Vec<String>,
    #[serde(default)]
    pub write: Vec<String>,
    #[serde(default)]
    pub watch: Vec<String>,
    #[serde(default)]
    pub admin: bool,
}

impl Role {
    fn prefixes(&self, op: Operation) -> &[String] {
        match op {
            Operation::Read => &self.read,
            Operation::Write => &self.write,
            Operation::Watch => &self.watch,
            Operation::Admin => &[],
        }
    }
}

/// The roles of an auth file, by identity name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roles {
    by_identity: BTreeMap<String, (String, Role)>,
}

impl Roles {
    /// Parses an auth file. The error names the line (TOML syntax, an
    /// unknown key) or the identity and role (a role that is not defined).
    pub fn parse(text: &str) -> Result<Roles, String> {
        let file: FileToml = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut by_identity = BTreeMap::new();
        for (identity, role_name) in file.identities {
            if identity.is_empty() {
                return Err("[identities]: an identity name is empty".into());
            }
            let role = file.roles.get(&role_name).ok_or_else(|| {
                let known: Vec<&str> = file.roles.keys().map(String::as_str).collect();
                format!(
                    "[identities] {identity:?} = {role_name:?}: no role {role_name:?} is defined \
                     (roles: {known:?})"
                )
            })?;
            by_identity.insert(identity, (role_name, role.clone()));
        }
        Ok(Roles { by_identity })
    }

    fn matching<'a>(&'a self, names: &'a [String]) -> impl Iterator<Item = &'a Role> + 'a {
        names
            .iter()
            .filter_map(|n| self.by_identity.get(n).map(|(_, r)| r))
    }

    /// The first of `names` the file lists.
    fn listed<'a>(&self, names: &'a [String]) -> Option<&'a str> {
        names
            .iter()
            .find(|n| self.by_identity.contains_key(n.as_str()))
            .map(String::as_str)
    }

    /// How many identities the file maps to roles.
    pub fn identities(&self) -> usize {
        self.by_identity.len()
    }
}

/// Who may do what, for callers that present a certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// `None`: no auth file, every identity may read, write and watch everything.
    pub roles: Option<Roles>,
    /// `--admin-identities`: these names may also use the admin RPCs.
    pub admins: BTreeSet<String>,
}

/// Does `grant` cover `target` (a key, or the prefix a scan or watch asks for)?
pub fn within(grant: &str, target: &str) -> bool {
    target.starts_with(grant)
}

impl Policy {
    /// May a caller with these certificate names do `op` on `target` (a key
    /// or a requested prefix; ignored for admin)?
    pub fn allows(&self, names: &[String], op: Operation, target: &str) -> bool {
        if op == Operation::Admin {
            return names.iter().any(|n| self.admins.contains(n))
                || self
                    .roles
                    .as_ref()
                    .is_some_and(|r| r.matching(names).any(|role| role.admin));
        }
        match &self.roles {
            None => true,
            Some(roles) => roles
                .matching(names)
                .any(|role| role.prefixes(op).iter().any(|g| within(g, target))),
        }
    }

    /// The name a refusal calls the caller by: the first name the auth file
    /// or `--admin-identities` lists, else the first name (the CN, when the
    /// certificate has one).
    pub fn display_name<'a>(&self, names: &'a [String]) -> Option<&'a str> {
        self.roles
            .as_ref()
            .and_then(|r| r.listed(names))
            .or_else(|| {
                names
                    .iter()
                    .find(|n| self.admins.contains(n.as_str()))
                    .map(String::as_str)
            })
            .or(names.first().map(String::as_str))
    }

    /// Whether any of `names` is known to the policy at all (for the hint in
    /// a refusal: an unlisted certificate gets nothing from an auth file).
    pub fn lists(&self, names: &[String]) -> bool {
        self.roles
            .as_ref()
            .is_some_and(|r| r.listed(names).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    const FILE: &str = r#"
[roles.sms-writer]
read = ["call/"]
write = ["sms/"]
watch = ["sms/"]

[roles.everything]
read = [""]
write = [""]
watch = [""]

[roles.ops]
admin = true

[roles.sms-bare]
write = ["sms"]

[identities]
"sms-dispatcher" = "sms-writer"
"spiffe://example.org/all" = "everything"
"ops@example.org" = "ops"
"bare" = "sms-bare"
"#;

    fn policy() -> Policy {
        Policy {
            roles: Some(Roles::parse(FILE).expect("parses")),
            admins: BTreeSet::new(),
        }
    }

    #[test]
    fn a_grant_with_a_slash_covers_only_keys_below_it() {
        let p = policy();
        let me = names(&["sms-dispatcher"]);
        assert!(p.allows(&me, Operation::Write, "sms/1"));
        assert!(p.allows(&me, Operation::Write, "sms/"));
        assert!(!p.allows(&me, Operation::Write, "sms"), "the bare word");
        assert!(
            !p.allows(&me, Operation::Write, "smsx/1"),
            "a sibling prefix"
        );
        assert!(
            !p.allows(&me, Operation::Write, "call/1"),
            "read only there"
        );
        assert!(p.allows(&me, Operation::Read, "call/1"));
        assert!(
            !p.allows(&me, Operation::Read, "sms/1"),
            "write does not imply read"
        );
    }

    #[test]
    fn a_grant_without_a_slash_covers_every_key_that_starts_with_it() {
        let p = policy();
        let me = names(&["bare"]);
        for key in ["sms", "sms/1", "smsx", "smsx/2"] {
            assert!(p.allows(&me, Operation::Write, key), "{key}");
        }
        assert!(!p.allows(&me, Operation::Write, "sm"));
        assert!(!p.allows(&me, Operation::Write, "xsms"));
    }

    #[test]
    fn a_requested_prefix_must_lie_within_a_granted_one() {
        let p = policy();
        let me = names(&["sms-dispatcher"]);
        assert!(p.allows(&me, Operation::Watch, "sms/"));
        assert!(p.allows(&me, Operation::Watch, "sms/eu/"));
        assert!(
            !p.allows(&me, Operation::Watch, "sms"),
            "would include smsx"
        );
        assert!(
            !p.allows(&me, Operation::Watch, ""),
            "would include everything"
        );
        assert!(p.allows(&me, Operation::Read, "call/"));
        assert!(!p.allows(&me, Operation::Read, "cal"));
    }

    #[test]
    fn the_empty_prefix_grants_everything_including_the_empty_scan() {
        let p = policy();
        let me = names(&["spiffe://example.org/all"]);
        for op in [Operation::Read, Operation::Write, Operation::Watch] {
            assert!(p.allows(&me, op, ""), "{op:?}");
            assert!(p.allows(&me, op, "anything/at/all"), "{op:?}");
        }
        assert!(!p.allows(&me, Operation::Admin, ""), "admin is separate");
    }

    #[test]
    fn any_name_of_the_certificate_can_bring_a_role() {
        let p = policy();
        // The CN is unknown, a URI SAN is listed.
        let by_san = names(&["some-cn", "spiffe://example.org/all"]);
        assert!(p.allows(&by_san, Operation::Write, "x"));
        assert_eq!(p.display_name(&by_san), Some("spiffe://example.org/all"));
        // Two listed names: the union of both roles.
        let both = names(&["sms-dispatcher", "ops@example.org"]);
        assert!(p.allows(&both, Operation::Write, "sms/1"));
        assert!(p.allows(&both, Operation::Admin, ""));
        assert!(!p.allows(&both, Operation::Write, "call/1"));
    }

    #[test]
    fn an_unlisted_certificate_may_do_nothing_under_an_auth_file() {
        let p = policy();
        let stranger = names(&["stranger", "stranger.example.org"]);
        for op in [
            Operation::Read,
            Operation::Write,
            Operation::Watch,
            Operation::Admin,
        ] {
            assert!(!p.allows(&stranger, op, "sms/1"), "{op:?}");
        }
        assert!(!p.lists(&stranger));
        assert_eq!(p.display_name(&stranger), Some("stranger"), "the CN");
        assert!(!p.allows(&[], Operation::Read, "sms/1"), "no names at all");
    }

    #[test]
    fn without_an_auth_file_everything_but_admin_is_allowed() {
        let mut p = Policy::default();
        let me = names(&["anyone"]);
        for op in [Operation::Read, Operation::Write, Operation::Watch] {
            assert!(p.allows(&me, op, ""), "{op:?}");
        }
        assert!(!p.allows(&me, Operation::Admin, ""));
        p.admins.insert("anyone".into());
        assert!(p.allows(&me, Operation::Admin, ""));
        // --admin-identities adds to an auth file's roles too.
        let mut with_file = policy();
        with_file.admins.insert("sms-dispatcher".into());
        assert!(with_file.allows(&names(&["sms-dispatcher"]), Operation::Admin, ""));
    }

    #[test]
    fn a_bad_file_is_refused_with_the_line_or_the_role_named() {
        let e = Roles::parse("[roles.a]\nread = [\"x\"]\nreed = [\"y\"]\n").unwrap_err();
        assert!(e.contains("line 3") && e.contains("reed"), "{e}");
        let e = Roles::parse("[roles.a]\nadmin = \"yes\"\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        let e = Roles::parse("[groups]\n").unwrap_err();
        assert!(e.contains("groups"), "{e}");
        let e = Roles::parse("[roles.a]\n[identities]\nbob = \"b\"\n").unwrap_err();
        assert!(e.contains("\"bob\"") && e.contains("no role \"b\""), "{e}");
        let e = Roles::parse("[roles.a]\n[identities]\n\"\" = \"a\"\n").unwrap_err();
        assert!(e.contains("empty"), "{e}");
        let e = Roles::parse("[roles.a]\nread = \"call/\"\n").unwrap_err();
        assert!(e.contains("line 2"), "a prefix list, not a string: {e}");
    }
}
