//! Client commands: each is one call through `crate::client` and a printout.

use std::process::ExitCode;
use std::time::Duration;

use base64::Engine;
use serde_json::json;

use super::{Command, HandoffCommand, LeaderCommand, MemberCommand};
use crate::client::Client;
use crate::pb;
use crate::wire::human_bytes;

/// How long `status` waits for each member before calling it unreachable.
const STATUS_TIMEOUT: Duration = Duration::from_millis(900);

fn fail(e: tonic::Status) -> ExitCode {
    eprintln!("error: {:?}: {}", e.code(), e.message());
    ExitCode::FAILURE
}

fn record_json(r: &pb::Record) -> serde_json::Value {
    let value = match std::str::from_utf8(&r.value) {
        Ok(s) => json!({"value": s}),
        Err(_) => {
            json!({"value_base64": base64::engine::general_purpose::STANDARD.encode(&r.value)})
        }
    };
    let mut v = json!({
        "key": r.key,
        "version": r.version,
        "create_revision": r.create_revision,
        "mod_revision": r.mod_revision,
        "state": pb::RecordState::try_from(r.state).map(|s| s.as_str_name()).unwrap_or("UNKNOWN"),
        "created_at_ms": r.created_at_ms,
        "updated_at_ms": r.updated_at_ms,
        "expires_at_ms": r.expires_at_ms,
    });
    if let (Some(obj), Some(val)) = (v.as_object_mut(), value.as_object()) {
        obj.extend(val.clone());
        if r.value_omitted {
            // Left out to keep the answer within the message limit; not empty.
            obj.insert("value_omitted".into(), json!(true));
        }
    }
    v
}

fn print_record(r: &pb::Record) {
    let state = pb::RecordState::try_from(r.state)
        .map(|s| s.as_str_name())
        .unwrap_or("UNKNOWN");
    println!("{}", String::from_utf8_lossy(&r.value));
    eprintln!(
        "# key={} version={} state={} create_revision={} mod_revision={}",
        r.key, r.version, state, r.create_revision, r.mod_revision
    );
}

fn print_mutation(what: &str, m: &pb::MutationResponse) {
    match &m.record {
        Some(r) => println!(
            "{what} {} (version {}, revision {})",
            r.key, r.version, m.revision
        ),
        None => println!("{what} (revision {})", m.revision),
    }
}

fn ms(d: Option<Duration>) -> Option<u64> {
    d.map(|d| d.as_millis().max(1) as u64)
}

pub async fn run(
    endpoints: &[String],
    tls: Option<crate::client::ClientTls>,
    cmd: Command,
) -> ExitCode {
    let opts = crate::client::ClientOptions {
        tls,
        ..Default::default()
    };
    let client = match Client::with_options(endpoints.to_vec(), opts) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let result = match cmd {
        Command::Insert {
            key,
            value,
            ttl,
            id,
        } => client
            .send_insert(pb::InsertRequest {
                key,
                value: value.into_bytes(),
                ttl_ms: ms(ttl),
                request_id: id.request_id.unwrap_or_default(),
            })
            .await
            .map(|m| print_mutation("inserted", &m)),
        Command::Update {
            key,
            value,
            if_version,
            ttl,
            clear_ttl,
            id,
        } => client
            .send_update(pb::UpdateRequest {
                key,
                value: value.into_bytes(),
                if_version,
                ttl_ms: ms(ttl),
                clear_ttl,
                request_id: id.request_id.unwrap_or_default(),
            })
            .await
            .map(|m| print_mutation("updated", &m)),
        Command::Delete {
            key,
            if_version,
            id,
        } => client
            .send_delete(pb::DeleteRequest {
                key,
                if_version,
                request_id: id.request_id.unwrap_or_default(),
            })
            .await
            .map(|m| print_mutation("deleted", &m)),
        Command::Complete {
            key,
            value,
            if_version,
            id,
        } => client
            .send_complete(pb::CompleteRequest {
                key,
                value: value.map(String::into_bytes),
                if_version,
                request_id: id.request_id.unwrap_or_default(),
            })
            .await
            .map(|m| print_mutation("completed", &m)),
        Command::Get { key, read, json } => client
            .send_get(pb::GetRequest {
                key,
                consistency: crate::pb::Consistency::from(read.consistency) as i32,
                max_staleness_ms: ms(read.max_staleness),
            })
            .await
            .map(|g| {
                if let Some(r) = &g.record {
                    if json {
                        let mut v = record_json(r);
                        v["revision"] = json!(g.revision);
                        v["served_by"] = json!(g.served_by);
                        println!("{v}");
                    } else {
                        print_record(r);
                    }
                }
            }),
        Command::Scan {
            prefix,
            limit,
            after,
            read,
            json,
        } => client
            .send_scan(pb::ScanRequest {
                prefix,
                limit,
                after_key: after,
                consistency: crate::pb::Consistency::from(read.consistency) as i32,
                max_staleness_ms: ms(read.max_staleness),
            })
            .await
            .map(|page| {
                if json {
                    let records: Vec<_> = page.records.iter().map(record_json).collect();
                    println!(
                        "{}",
                        json!({"records": records, "more": page.more, "revision": page.revision, "served_by": page.served_by})
                    );
                } else {
                    for r in &page.records {
                        println!("{}\t{}", r.key, String::from_utf8_lossy(&r.value));
                    }
                    if page.more {
                        if let Some(last) = page.records.last() {
                            eprintln!("# more records: continue with --after {}", last.key);
                        }
                    }
                }
            }),
        Command::Batch { file, id, json } => batch(&client, &file, id.request_id, json).await,
        Command::Watch {
            prefix,
            from_revision,
            json,
            progress,
        } => watch(&client, prefix, from_revision, json, progress).await,
        Command::Status { json } => return status(&client, json).await,
        Command::Member(m) => member(&client, m).await,
        Command::Handoff(h) => handoff(&client, h).await,
        Command::Leader(LeaderCommand::Transfer { id }) => client
            .transfer_leader(id)
            .await
            .map(|r| println!("node {} is the leader", r.leader_id)),
        Command::Serve(_) | Command::Dev(_) | Command::Health { .. } | Command::Certs(_) => {
            unreachable!("handled by cli::run")
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// Parses the batch file format (see `inflight batch --help`).
pub fn parse_batch(text: &str) -> Result<Vec<pb::BatchOp>, String> {
    use pb::batch_op::Op;
    let items: Vec<serde_json::Value> =
        serde_json::from_str(text).map_err(|e| format!("batch: not a JSON array: {e}"))?;
    let mut ops = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let field = |name: &str| item.get(name);
        let text_of = |name: &str| -> Result<Option<String>, String> {
            match field(name) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                // A JSON value given as such is stored as its JSON text.
                Some(other) => Ok(Some(other.to_string())),
            }
        };
        let key = match field("key").and_then(|v| v.as_str()) {
            Some(k) => k.to_string(),
            None => return Err(format!("batch[{i}]: missing \"key\"")),
        };
        let if_version = match field("if_version") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .ok_or(format!("batch[{i}].if_version: not a number"))?,
            ),
        };
        let ttl_ms = match text_of("ttl")? {
            None => None,
            Some(t) => Some(
                humantime::parse_duration(&t)
                    .map_err(|e| format!("batch[{i}].ttl: {e}"))?
                    .as_millis()
                    .max(1) as u64,
            ),
        };
        let value = text_of("value")?;
        let op = match field("op").and_then(|v| v.as_str()) {
            Some("insert") => Op::Insert(pb::InsertRequest {
                key,
                value: value
                    .ok_or(format!("batch[{i}]: insert needs \"value\""))?
                    .into_bytes(),
                ttl_ms,
                request_id: String::new(),
            }),
            Some("update") => Op::Update(pb::UpdateRequest {
                key,
                value: value
                    .ok_or(format!("batch[{i}]: update needs \"value\""))?
                    .into_bytes(),
                if_version,
                ttl_ms,
                clear_ttl: field("clear_ttl")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false),
                request_id: String::new(),
            }),
            Some("delete") => Op::Delete(pb::DeleteRequest {
                key,
                if_version,
                request_id: String::new(),
            }),
            Some("complete") => Op::Complete(pb::CompleteRequest {
                key,
                value: value.map(String::into_bytes),
                if_version,
                request_id: String::new(),
            }),
            other => {
                return Err(format!(
                    "batch[{i}].op: {other:?} is not one of insert, update, delete, complete"
                ))
            }
        };
        ops.push(pb::BatchOp { op: Some(op) });
    }
    Ok(ops)
}

async fn batch(
    client: &Client,
    file: &str,
    request_id: Option<String>,
    json_out: bool,
) -> Result<(), tonic::Status> {
    let text = if file == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| tonic::Status::invalid_argument(format!("stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(file)
            .map_err(|e| tonic::Status::invalid_argument(format!("{file}: {e}")))?
    };
    let ops = parse_batch(&text).map_err(tonic::Status::invalid_argument)?;
    let resp = client
        .batch(pb::BatchRequest {
            ops,
            request_id: request_id.unwrap_or_default(),
        })
        .await?;
    if json_out {
        let results: Vec<_> = resp
            .results
            .iter()
            .filter_map(|m| m.record.as_ref().map(record_json))
            .collect();
        println!("{}", json!({"revision": resp.revision, "results": results}));
    } else {
        println!(
            "applied {} ops at revision {}",
            resp.results.len(),
            resp.revision
        );
    }
    Ok(())
}

async fn watch(
    client: &Client,
    prefix: String,
    from: u64,
    json_out: bool,
    progress: bool,
) -> Result<(), tonic::Status> {
    let mut stream = client
        .watch(pb::WatchRequest {
            prefix,
            from_revision: from,
            progress_interval_ms: 0,
            max_message_bytes: 0,
        })
        .await?;
    loop {
        let msg = tokio::select! {
            m = stream.message() => m?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(msg) = msg else { return Ok(()) };
        if msg.progress {
            if progress {
                if json_out {
                    println!("{}", json!({"progress": true, "revision": msg.revision}));
                } else {
                    println!("# progress: revision {}", msg.revision);
                }
            }
            continue;
        }
        for e in &msg.events {
            let kind = pb::EventType::try_from(e.r#type)
                .map(|t| t.as_str_name().trim_start_matches("EVENT_TYPE_"))
                .unwrap_or("UNKNOWN");
            let Some(r) = &e.record else { continue };
            if json_out {
                let mut v = record_json(r);
                v["event"] = json!(kind);
                v["revision"] = json!(e.revision);
                println!("{v}");
            } else {
                let value = if r.value_omitted {
                    "(value omitted: too large for one message; get the key)".into()
                } else {
                    String::from_utf8_lossy(&r.value)
                };
                println!("{}\t{}\t{}\t{}", e.revision, kind, r.key, value);
            }
        }
    }
}

async fn handoff(client: &Client, cmd: HandoffCommand) -> Result<(), tonic::Status> {
    let changed = |what: &str, r: pb::HandoffChangeResponse| {
        println!(
            "{what} {} record(s) (revision {}){}",
            r.changed,
            r.revision,
            if r.handoff_ids.is_empty() {
                String::new()
            } else {
                format!(": {}", r.handoff_ids.join(", "))
            }
        )
    };
    match cmd {
        HandoffCommand::Failed { limit, json } => {
            let mut after = String::new();
            let mut shown = 0;
            loop {
                let page_limit = match limit {
                    0 => 1_000,
                    n => (n - shown).min(1_000),
                };
                let page = client.handoff_failed(page_limit as u32, &after).await?;
                if shown == 0 && !json {
                    println!(
                        "{} record(s) refused by the sink ({})",
                        page.total,
                        human_bytes(page.total_bytes)
                    );
                }
                for d in &page.records {
                    if json {
                        println!("{}", crate::client::dead_letter_json(d));
                    } else {
                        println!("{}\t{}", d.handoff_id, d.error);
                    }
                }
                shown += page.records.len();
                match page.records.last() {
                    Some(last) if page.more && (limit == 0 || shown < limit) => {
                        after = last.handoff_id.clone()
                    }
                    _ => break,
                }
            }
        }
        HandoffCommand::Retry { keys, all } => {
            changed("queued again", client.handoff_retry(keys, all).await?)
        }
        HandoffCommand::Drop { keys } => changed("dropped", client.handoff_drop(keys).await?),
    }
    Ok(())
}

async fn member(client: &Client, cmd: MemberCommand) -> Result<(), tonic::Status> {
    let list = match cmd {
        MemberCommand::List { json } => {
            let l = client.member_list().await?;
            if json {
                let members: Vec<_> = l
                    .members
                    .iter()
                    .map(|m| {
                        json!({"id": m.id, "address": m.address, "peer_address": m.peer_address, "voter": m.voter,
                               "reachable": m.reachable, "last_ack_ms": m.last_ack_ms})
                    })
                    .collect();
                println!("{}", json!({"members": members, "leader_id": l.leader_id}));
                return Ok(());
            }
            l
        }
        MemberCommand::AddLearner { id, address } => client.add_learner(id, &address).await?,
        MemberCommand::Promote { id } => client.promote(id).await?,
        MemberCommand::Remove { id, force } => client.remove_member(id, force).await?,
    };
    println!(
        "{:<4} {:<22} {:<22} {:<8} {:<10} {:>8} LEADER",
        "ID", "ADDRESS", "PEER_ADDRESS", "VOTER", "REACHABLE", "LAST_ACK"
    );
    for m in &list.members {
        println!(
            "{:<4} {:<22} {:<22} {:<8} {:<10} {:>8} {}",
            m.id,
            m.address,
            m.peer_address,
            m.voter,
            if m.reachable { "yes" } else { "no" },
            m.last_ack_ms
                .map_or("-".to_string(), |ms| format!("{ms}ms")),
            if m.id == list.leader_id { "*" } else { "" }
        );
    }
    Ok(())
}

/// The leader's memory by part, as the budget counts it.
fn memory_line(m: &pb::MemoryUse) -> String {
    let parts = [
        ("live records", m.live_records),
        ("outbox", m.outbox),
        ("dead letters", m.dead_letters),
        ("request ids", m.request_ids),
        ("watch window", m.watch_window),
        ("raft log", m.raft_log),
        ("snapshot", m.snapshot),
        ("reserved", m.reserved),
    ];
    let named: Vec<String> = parts
        .iter()
        .map(|(name, b)| format!("{name} {}", human_bytes(*b)))
        .collect();
    format!("memory (leader): {}", named.join(", "))
}

/// The whole cluster at a glance: see `crate::client::report`.
async fn status(client: &Client, json_out: bool) -> ExitCode {
    let report = client.cluster_report(STATUS_TIMEOUT).await;
    if json_out {
        println!("{}", report.to_json());
    } else {
        println!(
            "{:<4} {:<22} {:<10} {:<9} {:>5} {:>9} {:>9} {:>6} {:>9} {:>10} {:>7}",
            "ID",
            "ADDRESS",
            "ROLE",
            "REACHABLE",
            "TERM",
            "LAST_LOG",
            "APPLIED",
            "LAG",
            "RECORDS",
            "MEMORY",
            "OUTBOX"
        );
        for m in &report.members {
            match &m.status {
                Ok(s) => println!(
                    "{:<4} {:<22} {:<10} {:<9} {:>5} {:>9} {:>9} {:>6} {:>9} {:>10} {:>7}",
                    s.id,
                    s.address,
                    s.role,
                    "yes",
                    s.term,
                    s.last_log_index,
                    s.applied_index,
                    report.lag(s).map_or("-".to_string(), |l| l.to_string()),
                    s.records,
                    human_bytes(s.memory_bytes),
                    s.outbox_depth
                ),
                Err(e) => println!(
                    "{:<4} {:<22} {:<10} no ({})",
                    m.id,
                    m.address,
                    "?",
                    e.message()
                ),
            }
        }
        match report.leader() {
            Some(l) => println!(
                "leader: node {}; quorum {} of {} voters; {} voter(s) up, so the cluster survives {} more \
                 failure(s)",
                l.id,
                report.quorum(),
                report.voters(),
                report.voters_up(),
                report.failures_tolerated(),
            ),
            None => println!(
                "leader: none reachable; {} voter(s) answered, quorum is {}",
                report.voters_up(),
                report.quorum()
            ),
        }
        for line in report.handoff_lines() {
            println!("{line}");
        }
        if let Some(m) = report.leader().and_then(|l| l.memory.as_ref()) {
            println!("{}", memory_line(m));
        }
    }
    if !report.any_reachable() {
        eprintln!("error: no member answered");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
