//! The operator surface on real clusters: status, health endpoints,
//! membership changes and leader transfer.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inflight::cli::serve_args::Membership;
use testkit::{wait_for, wait_until, Addresses, Cluster, ClusterOptions};

const BIN: &str = env!("CARGO_BIN_EXE_inflight");

use inflight::client::Consistency;
use tonic::Code;

/// A plain HTTP/1.1 GET: (status code, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the HTTP port");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let code = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_endpoints_report_what_they_promise() {
    let c = Cluster::start(ClusterOptions::default()).await;
    c.client().insert("call/1", "x").await.unwrap();
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    for id in 1..=3 {
        let http = &c.nodes[&id].http;
        assert_eq!(http_get(http, "/livez"), (200, "ok\n".to_string()));
        let (code, body) = wait_for(Duration::from_secs(10), "node to be ready", || async {
            let r = http_get(http, "/readyz");
            (r.0 == 200).then_some(r)
        })
        .await;
        assert_eq!((code, body.as_str()), (200, "ok\n"));
        let (_, verbose) = http_get(http, "/readyz?verbose");
        let v: serde_json::Value = serde_json::from_str(&verbose).unwrap();
        let checks: Vec<&str> = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["check"].as_str().unwrap())
            .collect();
        assert_eq!(
            checks,
            ["leader", "voter", "caught_up", "recovered", "connected"]
        );
        let (code, status) = http_get(http, "/status");
        assert_eq!(code, 200);
        let s: serde_json::Value = serde_json::from_str(&status).unwrap();
        assert_eq!(s["id"], id);
        assert_eq!(s["leader_id"], leader);
        assert_eq!(s["role"], if id == leader { "leader" } else { "follower" });
        assert_eq!(s["voters"], 3);
        assert!(s["memory_bytes"].as_u64().unwrap() > 0);
        // What the budget counts, part by part, adding up to the total.
        let m = &s["memory"];
        let parts = [
            "live_records",
            "outbox",
            "request_ids",
            "watch_window",
            "raft_log",
            "snapshot",
            "reserved",
        ];
        let sum: u64 = parts
            .iter()
            .map(|p| m[format!("{p}_bytes")].as_u64().unwrap())
            .sum();
        assert_eq!(m["total_bytes"].as_u64(), Some(sum), "{m}");
        assert!(m["live_records_bytes"].as_u64().unwrap() > 0, "{m}");
        assert!(m["raft_log_bytes"].as_u64().unwrap() > 0, "{m}");
    }
    // Prometheus metrics, on the leader after the insert above.
    let (code, text) = http_get(&c.nodes[&leader].http, "/metrics");
    assert_eq!(code, 200);
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
    };
    assert_eq!(value("inflight_has_leader "), 1.0);
    assert!(value("inflight_leader_changes_seen_total ") >= 1.0);
    assert!(value("inflight_proposals_committed ") >= 2.0);
    assert!(value("inflight_proposals_applied ") >= 2.0);
    assert_eq!(value("inflight_proposals_pending "), 0.0);
    assert_eq!(value("inflight_proposals_failed_total "), 0.0);
    assert!(value("inflight_wal_fsync_duration_seconds_count ") >= 1.0);
    assert!(
        value(r#"inflight_grpc_request_duration_seconds_count{method="Insert",code="Ok"} "#) >= 1.0
    );
    assert!(value("inflight_peer_round_trip_seconds_count{peer=") >= 1.0);
    assert_eq!(value("inflight_records "), 1.0);
    assert!(value("inflight_memory_bytes ") > 0.0);
    assert!(value(r#"inflight_memory_part_bytes{part="live_records"} "#) > 0.0);
    assert!(value(r#"inflight_memory_part_bytes{part="watch_window"} "#) > 0.0);
    assert_eq!(
        value(r#"inflight_memory_part_bytes{part="reserved"} "#),
        0.0
    );
    assert_eq!(value("inflight_outbox_depth "), 0.0);
    assert_eq!(value("inflight_outbox_oldest_age_seconds "), 0.0);
    assert_eq!(value("inflight_expired_records_total "), 0.0);
    // The status page and the cluster view it polls.
    let (code, html) = http_get(&c.nodes[&leader].http, "/");
    assert_eq!(code, 200);
    assert!(
        html.contains("<title>inflight status</title>") && html.contains("fetch(\"/cluster\")")
    );
    let (code, cluster) = http_get(&c.nodes[&leader].http, "/cluster");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&cluster).unwrap();
    assert_eq!(v["members"].as_array().unwrap().len(), 3);
    assert_eq!(v["leader"], leader);
    assert_eq!(v["failures_tolerated"], 1);
    assert!(!v["leader_changes"].as_array().unwrap().is_empty());
    // A failed request is counted under its code.
    let _ = c.client().get("nope", Consistency::Linearizable).await;
    let (_, text) = http_get(&c.nodes[&leader].http, "/metrics");
    assert!(
        text.contains(
            r#"inflight_grpc_request_duration_seconds_count{method="Get",code="NotFound"} 1"#
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_turns_unready_on_a_cut_off_node_and_ready_again_after_catching_up() {
    let c = Cluster::start(ClusterOptions {
        addresses: Addresses::DistinctIps,
        ..Default::default()
    })
    .await;
    let client = c.client();
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let f = (1..=3).find(|i| *i != leader).unwrap();
    let http = c.nodes[&f].http.clone();
    wait_for(Duration::from_secs(10), "ready", || async {
        (http_get(&http, "/readyz").0 == 200).then_some(())
    })
    .await;

    let fw = c.isolate(f);
    let (_, why) = wait_for(
        Duration::from_secs(15),
        "the cut-off node to turn unready",
        || async {
            let r = http_get(&http, "/readyz?verbose");
            (r.0 == 503).then_some(r)
        },
    )
    .await;
    assert!(why.contains(r#""ok":false"#), "{why}");
    let mut last = 0;
    for i in 0..50 {
        last = client
            .insert(&format!("k/{i}"), "v")
            .await
            .unwrap()
            .revision;
    }
    fw.heal().expect("heal the cut");
    wait_for(Duration::from_secs(20), "ready again", || async {
        (http_get(&http, "/readyz").0 == 200).then_some(())
    })
    .await;
    let s = c.status(f).await.unwrap();
    assert!(
        s.applied_index + crate_ready_lag() >= last,
        "ready means caught up"
    );
}

fn crate_ready_lag() -> u64 {
    inflight::http::READY_LAG
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_shows_a_killed_node_unreachable_within_2s() {
    let mut c = Cluster::start(ClusterOptions::default()).await;
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let victim = (1..=3).find(|i| *i != leader).unwrap();
    c.kill(victim);
    let started = Instant::now();
    let out = Command::new(BIN)
        .args(["--endpoints", &c.endpoints().join(","), "status", "--json"])
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "status took {took:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    let members = v["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    let dead = members.iter().find(|m| m["id"] == victim).unwrap();
    assert_eq!(dead["reachable"], false);
    assert!(members
        .iter()
        .filter(|m| m["reachable"] == true)
        .all(|m| m["lag"].is_u64()));
    assert_eq!(v["leader"], leader);
    assert_eq!(
        (v["voters"].as_u64(), v["quorum"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(
        v["failures_tolerated"], 0,
        "two of three up: one more failure loses the quorum"
    );
    // The table says the same.
    let table = Command::new(BIN)
        .args(["--endpoints", &c.endpoints().join(","), "status"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with(&victim.to_string()) && l.contains(" no (")),
        "{text}"
    );
    assert!(text.contains("survives 0 more failure(s)"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_transfer_makes_the_chosen_voter_leader() {
    let c = Cluster::start(ClusterOptions::default()).await;
    let client = c.client();
    for target in [2u64, 3, 1] {
        let r = client.transfer_leader(target).await.expect("transfer");
        assert_eq!(r.leader_id, target);
        assert_eq!(c.wait_leader(Duration::from_secs(5)).await, target);
        client
            .insert(&format!("after-transfer-to/{target}"), "x")
            .await
            .unwrap();
    }
    let out = Command::new(BIN)
        .args([
            "--endpoints",
            &c.endpoints().join(","),
            "leader",
            "transfer",
            "2",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c.wait_leader(Duration::from_secs(5)).await, 2);
    let e = client.transfer_leader(9).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removal_that_would_lose_the_quorum_needs_force() {
    let mut c = Cluster::start(ClusterOptions::default()).await;
    let client = c.client();
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let others: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    let (dead, alive) = (others[0], others[1]);
    c.kill(dead);
    // An operator first sees the node is gone (the leader stops hearing from it).
    wait_for(
        Duration::from_secs(5),
        "the leader to see the dead node unreachable",
        || async {
            let l = client.member_list().await.ok()?;
            let m = l.members.iter().find(|m| m.id == dead)?;
            (!m.reachable).then_some(())
        },
    )
    .await;
    // Removing the live follower would leave the leader and a dead node: no quorum.
    let e = client.remove_member(alive, false).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("force") && e.message().contains("quorum"),
        "{}",
        e.message()
    );
    assert_eq!(
        client.member_list().await.unwrap().members.len(),
        3,
        "nothing changed"
    );
    // Removing the dead one is fine.
    let l = client
        .remove_member(dead, false)
        .await
        .expect("remove the dead node");
    assert_eq!(l.members.len(), 2);
    client.insert("still/writable", "yes").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removing_and_re_adding_a_node_under_load_causes_no_client_errors() {
    let mut c = Cluster::start(ClusterOptions::default()).await;
    let client = c.client();
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (client, stop, written) = (client.clone(), stop.clone(), written.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                client
                    .insert(&format!("load/{w}/{i}"), "v")
                    .await
                    .unwrap_or_else(|e| panic!("writer {w} saw an error: {e:?}"));
                written.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            i
        }));
    }
    // The membership changes while writes are under way.
    let writes_go_on = |after: u64| {
        let written = written.clone();
        move || {
            let written = written.clone();
            async move { written.load(Ordering::Relaxed) >= after + 10 }
        }
    };
    wait_until(
        Duration::from_secs(10),
        "the writers to get going",
        writes_go_on(0),
    )
    .await;
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let victim = (1..=3).find(|i| *i != leader).unwrap();
    client.remove_member(victim, false).await.expect("remove");
    c.stop(victim);
    wait_until(
        Duration::from_secs(10),
        "writes to go on without the removed node",
        writes_go_on(written.load(Ordering::Relaxed)),
    )
    .await;
    // Back as a fresh node with the same id: empty data directory, --join, promote.
    std::fs::remove_dir_all(&c.nodes[&victim].data_dir).unwrap();
    let join: Vec<String> = (1..=3)
        .filter(|i| *i != victim)
        .map(|i| c.nodes[&i].grpc.clone())
        .collect();
    c.nodes.get_mut(&victim).unwrap().membership = Membership::Join(join);
    c.restart(victim);
    // As the leader sees it: only the leader knows who acknowledges it, so
    // `reachable` also proves the answer came from the leader's membership.
    wait_for(
        Duration::from_secs(20),
        "the node to rejoin as a learner",
        || async {
            let l = client.member_list().await.ok()?;
            l.members
                .iter()
                .any(|m| m.id == victim && !m.voter && m.reachable)
                .then_some(())
        },
    )
    .await;
    client.promote(victim).await.expect("promote");
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for w in writers {
        total += w.await.expect("writer finished without an error");
    }
    assert!(total > 20, "the writers made progress ({total})");
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let applied = c.status(leader).await.unwrap().applied_index;
    c.wait_applied(victim, applied, Duration::from_secs(20))
        .await;
    let on_victim = c
        .scan_all(&c.node_client(victim), "load/", Consistency::Stale)
        .await;
    assert_eq!(
        on_victim.len() as u64,
        written.load(Ordering::Relaxed),
        "the re-added node has every write"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_gives_up_reports_what_the_nodes_said_not_a_socket_error() {
    let mut c = Cluster::start(ClusterOptions::default()).await;
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let survivor = (1..=3).find(|i| *i != leader).unwrap();
    for id in (1..=3).filter(|i| *i != survivor) {
        c.kill(id);
    }
    let client = inflight::client::Client::with_options(
        c.endpoints(),
        inflight::client::ClientOptions {
            request_timeout: Duration::from_secs(1),
            retry_for: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .unwrap();
    let e = client.insert("no/quorum", "x").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(
        e.message()
            .starts_with("gave up after 2s of retries against"),
        "{}",
        e.message()
    );
    assert!(
        !e.message().contains("tcp connect error"),
        "the surviving node's answer wins: {}",
        e.message()
    );
}

/// How many times node `http` has served `method` (any code), from its
/// client gRPC metrics; 0 before the first.
fn served(http: &str, method: &str) -> u64 {
    let (code, text) = http_get(http, "/metrics");
    assert_eq!(code, 200);
    let prefix = format!("inflight_grpc_request_duration_seconds_count{{method=\"{method}\",");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_cluster_requests_asks_each_member_at_most_once_a_second() {
    let c = Cluster::start(ClusterOptions::default()).await;
    c.wait_leader(Duration::from_secs(5)).await;
    let asked = |method: &str| -> Vec<u64> {
        (1..=3)
            .map(|id| served(&c.nodes[&id].http, method))
            .collect()
    };
    let (status_before, lists_before) = (asked("Status"), asked("MemberList"));

    let target = c.nodes[&1].http.clone();
    let started = Instant::now();
    let flood: Vec<_> = (0..60)
        .map(|_| {
            let target = target.clone();
            std::thread::spawn(move || http_get(&target, "/cluster"))
        })
        .collect();
    for r in flood {
        let (code, body) = r.join().unwrap();
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["members"].as_array().map(Vec::len), Some(3), "{v}");
        assert!(v["report_age_ms"].as_u64().unwrap() < 1_000, "{v}");
    }
    // One fan-out per second at most: as many as the seconds the flood
    // spanned, plus one; 60 without the sharing.
    let bound = started.elapsed().as_secs() + 1;
    assert!(bound < 10, "the flood took {:?}", started.elapsed());
    for (method, before) in [("Status", status_before), ("MemberList", lists_before)] {
        let after = asked(method);
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            let fan_outs = a - b;
            assert!(
                (1..=bound).contains(&fan_outs),
                "node {}: {fan_outs} {method} calls for 60 /cluster requests (bound {bound})",
                i + 1
            );
        }
    }
}
