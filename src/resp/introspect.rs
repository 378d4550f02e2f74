//! `COMMAND` and `INFO`: what redis-cli and client libraries ask a server
//! about itself.

use std::collections::HashSet;

use bytes::Bytes;

use super::reply::Reply;
use crate::api::InFlightService;

/// `COMMAND`, `COMMAND COUNT`, `COMMAND DOCS`, `COMMAND INFO name...`:
/// enough for redis-cli's hints and clients that look commands up.
pub(super) fn command_info(a: &[Bytes]) -> Reply {
    // name, arity (negative: at least), flags, first key, last key, step.
    const TABLE: &[(&str, i64, &str, i64, i64)] = &[
        ("get", 2, "readonly", 1, 1),
        ("mget", -2, "readonly", 1, -1),
        ("exists", -2, "readonly", 1, -1),
        ("set", -3, "write", 1, 1),
        ("del", -2, "write", 1, -1),
        ("expire", 3, "write", 1, 1),
        ("pexpire", 3, "write", 1, 1),
        ("persist", 2, "write", 1, 1),
        ("ttl", 2, "readonly", 1, 1),
        ("pttl", 2, "readonly", 1, 1),
        ("scan", -2, "readonly", 0, 0),
        ("if.set", 4, "write", 1, 1),
        ("if.del", 3, "write", 1, 1),
        ("complete", -2, "write", 1, 1),
        ("record", 2, "readonly", 1, 1),
        ("consistency", -2, "fast", 0, 0),
        ("reqid", 2, "fast", 0, 0),
        ("multi", 1, "fast", 0, 0),
        ("exec", 1, "write", 0, 0),
        ("discard", 1, "fast", 0, 0),
        ("ping", -1, "fast", 0, 0),
        ("echo", 2, "fast", 0, 0),
        ("hello", -1, "fast", 0, 0),
        ("client", -2, "fast", 0, 0),
        ("select", 2, "fast", 0, 0),
        ("command", -1, "loading", 0, 0),
        ("info", -1, "loading", 0, 0),
        ("dbsize", 1, "readonly", 0, 0),
        ("quit", 1, "fast", 0, 0),
        ("subscribe", -2, "pubsub", 0, 0),
        ("unsubscribe", -1, "pubsub", 0, 0),
        ("watch.prefix", -2, "pubsub", 0, 0),
    ];
    let entry = |&(name, arity, flag, first, last): &(&str, i64, &'static str, i64, i64)| {
        Reply::Array(vec![
            Reply::text(name),
            Reply::Int(arity),
            Reply::Array(vec![Reply::Simple(flag)]),
            Reply::Int(first),
            Reply::Int(last),
            Reply::Int(if first == 0 { 0 } else { 1 }),
        ])
    };
    match a.first().map(|s| s.to_ascii_uppercase()) {
        None => Reply::Array(TABLE.iter().map(entry).collect()),
        Some(s) if s == b"COUNT" => Reply::Int(TABLE.len() as i64),
        Some(s) if s == b"DOCS" => Reply::Array(Vec::new()),
        Some(s) if s == b"INFO" => Reply::Array(
            a[1..]
                .iter()
                .map(|n| {
                    let n = String::from_utf8_lossy(n).to_ascii_lowercase();
                    TABLE
                        .iter()
                        .find(|e| e.0 == n)
                        .map(entry)
                        .unwrap_or(Reply::Null)
                })
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
