//! The rules for starting a node: which data directory it may use, and
//! when a cluster is initialized. `Node::start` applies them.
//!
//! - A data directory belongs to one node id; `node.id` in it says which and
//!   in which durability it ran. Starting it under another id is refused.
//! - `disk`: a restart recovers the vote, the log and the last snapshot and
//!   rejoins; nothing is ever re-initialized.
//! - `memory`: a restarted node has forgotten its log and its votes, so it
//!   must never come back under its old id (it could vote twice in a term or
//!   count towards a quorum for entries it no longer has). The id marker is
//!   kept even in this mode so a second start with the same id is refused.
//! - The initial cluster is initialized by its lowest id only, and only when
//!   that node's log is pristine (never voted, no entry).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::{Durability, NodeId};

/// Settings of one node's Raft instance.
#[derive(Clone, Debug)]
pub struct RaftSettings {
    pub id: NodeId,
    pub data_dir: PathBuf,
    /// The addresses clients and peers use to reach this node.
    pub advertise: super::MemberAddr,
    pub durability: Durability,
    /// The fewest applied entries between two snapshots; a large table waits
    /// longer (see `crate::duties::compaction`).
    pub snapshot_every: u64,
    /// Election timeout and heartbeat, and what is derived from them.
    pub timing: super::Timing,
    /// Source address for outgoing peer connections, so that firewalls (and
    /// fault injection) see peer traffic coming from this node's address.
    pub peer_source_ip: Option<std::net::IpAddr>,
    /// TLS to the peer ports: the cluster CA and this node's peer
    /// certificate (`--peer-*`); `None`: plaintext.
    pub peer_tls: Option<crate::wire::ReloadableClientTls>,
}

const ID_FILE: &str = "node.id";

pub(super) fn check_identity(dir: &Path, id: NodeId, durability: Durability) -> anyhow::Result<()> {
    let path = dir.join(ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mut fields = BTreeMap::new();
            for line in text.lines() {
                if let Some((k, v)) = line.split_once('=') {
                    fields.insert(k.trim().to_string(), v.trim().to_string());
                }
            }
            let old_id = fields.get("id").and_then(|v| v.parse::<u64>().ok());
            let old_dur = fields.get("durability").cloned().unwrap_or_default();
            match old_id {
                None => bail!("{} is unreadable; it should hold `id=N`", path.display()),
                Some(old) if old != id => bail!(
                    "data directory {} belongs to node {old}, not node {id}; use --id {old} or another directory",
                    dir.display()
                ),
                _ => {}
            }
            if old_dur != durability.as_str() {
                bail!(
                    "data directory {} was used with --durability {old_dur}; it cannot be reused with {}",
                    dir.display(),
                    durability.as_str()
                );
            }
            if durability == Durability::Memory {
                bail!(
                    "node {id} already ran with --durability memory from {}; its log and votes are gone, so it \
                     must not come back under the same id. Start it with a new --id and --join the cluster \
                     (then remove node {id} from the membership)",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let body = format!("id={id}\ndurability={}\n", durability.as_str());
            super::durable_file::replace(&path, &[body.as_bytes()])
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_is_written_durably_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        // A temporary file left by a write cut short must not get in the way.
        std::fs::write(
            super::super::durable_file::tmp_path(&dir.path().join(ID_FILE)),
            b"id=9",
        )
        .unwrap();
        check_identity(dir.path(), 3, Durability::Disk).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(ID_FILE)).unwrap(),
            "id=3\ndurability=disk\n"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![ID_FILE.to_string()], "no .tmp left behind");
        // Read back: the same id starts, another is refused.
        check_identity(dir.path(), 3, Durability::Disk).unwrap();
        let e = check_identity(dir.path(), 4, Durability::Disk).unwrap_err();
        assert!(e.to_string().contains("belongs to node 3"), "{e}");
    }
}
