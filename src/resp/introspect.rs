//! `COMMAND` and `INFO`: what redis-cli and client libraries ask a server
//! about itself.

use std::collections::HashSet;

use bytes::Bytes;

use super::commands::{find, Spec, COMMANDS};
use super::reply::Reply;
use crate::api::InFlightService;

/// `COMMAND`, `COMMAND COUNT`, `COMMAND DOCS`, `COMMAND INFO name...`:
/// enough for redis-cli's hints and clients that look commands up.
pub(super) fn command_info(a: &[Bytes]) -> Reply {
    let entry = |c: &Spec| {
        Reply::Array(vec![
            Reply::text(c.name.to_ascii_lowercase()),
            Reply::Int(c.arity),
            Reply::Array(vec![Reply::Simple(c.flag)]),
            Reply::Int(c.first_key),
            Reply::Int(c.last_key),
            Reply::Int(if c.first_key == 0 { 0 } else { 1 }),
        ])
    };
    match a.first().map(|s| s.to_ascii_uppercase()) {
        None => Reply::Array(COMMANDS.iter().map(entry).collect()),
        Some(s) if s == b"COUNT" => Reply::Int(COMMANDS.len() as i64),
        Some(s) if s == b"DOCS" => Reply::Array(Vec::new()),
        Some(s) if s == b"INFO" => Reply::Array(
            a[1..]
                .iter()
                .map(|n| find(n).map(entry).unwrap_or(Reply::Null))
                .collect(),
        ),
        Some(_) => {
            Reply::err("ERR COMMAND: only COMMAND, COMMAND COUNT, COMMAND DOCS and COMMAND INFO")
        }
    }
}

/// `INFO [section]`: server, replication (role and leader), keyspace, memory.
pub(super) fn info(svc: &InFlightService, a: &[Bytes]) -> Reply {
    let node = svc.node();
    let want: HashSet<String> = a
        .iter()
        .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())
        .collect();
    let all = want.is_empty()
        || want.contains("all")
        || want.contains("default")
        || want.contains("everything");
    let s = node.status();
    let mut out = String::new();
    if all || want.contains("server") {
        out += &format!(
            "# Server\r\nredis_version:7.0.0\r\ninflight_version:{}\r\nredis_mode:standalone\r\nprocess_id:{}\r\nrun_id:{:040}\r\ninflight_node_id:{}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            s.id,
            s.id,
        );
    }
    if all || want.contains("replication") {
        let role = if s.role == crate::raft::Role::Leader {
            "master"
        } else {
            "slave"
        };
        out += &format!(
            "# Replication\r\nrole:{role}\r\ninflight_role:{}\r\n",
            s.role.as_str()
        );
        out += &format!(
            "inflight_leader_id:{}\r\ninflight_leader_address:{}\r\n",
            s.leader.unwrap_or(0),
            s.leader_address.as_deref().unwrap_or("")
        );
        out += &format!(
            "inflight_term:{}\r\ninflight_applied_index:{}\r\ninflight_commit_index:{}\r\nconnected_slaves:{}\r\n\r\n",
            s.term,
            s.applied_index,
            s.committed_index,
            s.members.iter().filter(|m| m.id != s.id).count()
        );
    }
    if all || want.contains("memory") {
        let m = node.memory_use();
        out += &format!("# Memory\r\nused_memory:{}\r\n\r\n", m.total());
    }
    if all || want.contains("keyspace") {
        let n = node.table().len();
        out += "# Keyspace\r\n";
        if n > 0 {
            out += &format!("db0:keys={n}\r\n");
        }
        out += "\r\n";
    }
    Reply::text(out)
}
