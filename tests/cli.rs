//! The README's quick start, run as a newcomer would: `inflight dev` in one
//! process, `inflight insert` / `get` / `status` from another.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{
    free_port_block, wait_until_blocking as wait_until, Cluster, ClusterOptions, Reaper,
};

const BIN: &str = env!("CARGO_BIN_EXE_inflight");

/// Every line of every NDJSON segment in a file sink's directory.
fn postflight_lines(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|f| {
            std::fs::read_to_string(f.path())
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Starts `inflight dev` with its output in `out`, on ports from `grpc`
/// (3 ports) and `grpc + 3` (3 HTTP ports).
fn start_dev(dir: &std::path::Path, grpc: u16, extra: &[&str], out: &std::path::Path) -> Reaper {
    let out = std::fs::File::create(out).unwrap();
    Reaper(
        Command::new(BIN)
            .args(["dev", "--dir"])
            .arg(dir)
            .args([
                "--grpc-port",
                &grpc.to_string(),
                "--http-port",
                &(grpc + 3).to_string(),
            ])
            .args(extra)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn cli(endpoints: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["--endpoints", endpoints])
        .args(args)
        .output()
        .expect("run inflight")
}

#[test]
fn dev_cluster_serves_cli_insert_get_status_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let grpc = free_port_block(6);
    let out_path = dir.path().join("dev.out");
    let mut dev = start_dev(&dir.path().join("cluster"), grpc, &[], &out_path);
    let output = || std::fs::read_to_string(&out_path).unwrap_or_default();
    wait_until(Duration::from_secs(30), "dev to report a leader", || {
        output().contains("leader: node")
    });
    let endpoints = (0..3)
        .map(|i| format!("127.0.0.1:{}", grpc + i))
        .collect::<Vec<_>>()
        .join(",");
    assert!(
        output().contains(&format!("export INFLIGHT_ENDPOINTS={endpoints}")),
        "{}",
        output()
    );

    let ins = cli(&endpoints, &["insert", "call/1", r#"{"status":"ringing"}"#]);
    assert!(
        ins.status.success(),
        "insert: {}",
        String::from_utf8_lossy(&ins.stderr)
    );
    assert!(String::from_utf8_lossy(&ins.stdout).contains("inserted call/1 (version 1"));

    let get = cli(&endpoints, &["get", "call/1"]);
    assert!(
        get.status.success(),
        "get: {}",
        String::from_utf8_lossy(&get.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&get.stdout).trim(),
        r#"{"status":"ringing"}"#
    );

    let json = cli(&endpoints, &["get", "call/1", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("--json prints JSON");
    assert_eq!(v["version"], 1);
    assert_eq!(v["state"], "LIVE");

    let missing = cli(&endpoints, &["get", "call/2"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NotFound"));

    let status = cli(&endpoints, &["status", "--json"]);
    assert!(status.status.success());
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status --json");
    let members = v["members"].as_array().expect("members");
    assert_eq!(members.len(), 3);
    assert_eq!(members.iter().filter(|m| m["role"] == "leader").count(), 1);
    assert!(members.iter().all(|m| m["reachable"] == true), "{v}");
    let leader = members.iter().find(|m| m["role"] == "leader").unwrap();
    assert!(
        leader["applied_index"].as_u64() >= Some(2),
        "the insert is applied on the leader: {v}"
    );
    let table = cli(&endpoints, &["status"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("ID"), "{text}");
    assert_eq!(
        text.lines().count(),
        8,
        "header, one row per node, the summary, hand-off, its sink and memory: {text}"
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[4].starts_with("leader: node "), "{text}");
    assert!(
        lines[5].starts_with("hand-off: idle, 0 record(s) waiting"),
        "{text}"
    );
    assert!(lines[6].contains("primary sink file:"), "{text}");
    assert!(
        lines[7].starts_with("memory (leader): live records ")
            && lines[7].contains("dead letters 0B"),
        "{text}"
    );

    // Completing the record hands it off to the shared post-flight directory.
    let done = cli(
        &endpoints,
        &["complete", "call/1", r#"{"status":"completed"}"#],
    );
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let postflight = dir.path().join("cluster").join("postflight");
    wait_until(
        Duration::from_secs(10),
        "call/1 in the post-flight files",
        || {
            postflight_lines(&postflight).iter().any(|l| {
                l.contains(r#""key":"call/1""#) && l.contains(r#""value":{"status":"completed"}"#)
            })
        },
    );
    wait_until(Duration::from_secs(10), "call/1 to leave memory", || {
        !cli(&endpoints, &["get", "call/1"]).status.success()
    });

    // SIGTERM stops every node and dev itself.
    unsafe {
        libc::kill(dev.0.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = dev.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "dev did not stop: {}", output());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "dev exit status {status}: {}", output());
    assert!(output().contains("stopped."));
    for i in 0..3 {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", grpc + i)).is_ok(),
            "node {} released its port",
            i + 1
        );
        let log = std::fs::read_to_string(
            dir.path()
                .join("cluster")
                .join(format!("node-{}.log", i + 1)),
        )
        .unwrap();
        assert!(
            log.contains("stopped"),
            "node {} shut down cleanly: {log}",
            i + 1
        );
    }
}

#[test]
fn dev_demo_moves_simulated_calls_and_messages_into_postflight_files() {
    let dir = tempfile::tempdir().unwrap();
    let grpc = free_port_block(6);
    let out_path = dir.path().join("dev.out");
    let _dev = start_dev(&dir.path().join("cluster"), grpc, &["--demo"], &out_path);
    let postflight = dir.path().join("cluster").join("postflight");
    let done = |prefix: &str, value: &str| {
        postflight_lines(&postflight).iter().any(|l| {
            l.contains(&format!(r#""key":"{prefix}"#))
                && l.contains(r#""state":"COMPLETED""#)
                && l.contains(value)
        })
    };
    wait_until(
        Duration::from_secs(60),
        "a completed call and message handed off",
        || done("call/", r#""status":"completed""#) && done("msg/", r#""status":"delivered""#),
    );
    wait_until(
        Duration::from_secs(20),
        "the demo to report progress",
        || {
            std::fs::read_to_string(&out_path)
                .unwrap_or_default()
                .lines()
                .any(|l| {
                    l.starts_with("demo: ")
                        && l.contains("completed")
                        && l.contains("post-flight records")
                })
        },
    );
}

fn certs(args: &[&str]) -> std::process::Output {
    certs_with_umask("022", args)
}

/// `inflight certs init ARGS` under a umask, through `sh`, which sets it.
fn certs_with_umask(umask: &str, args: &[&str]) -> std::process::Output {
    Command::new("sh")
        .args([
            "-c",
            &format!("umask {umask} && exec \"$0\" certs init \"$@\""),
        ])
        .arg(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run inflight certs init")
}

/// The PEM file's one certificate, as DER.
fn cert_der(path: &std::path::Path) -> rustls_pki_types::CertificateDer<'static> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_file(path).unwrap()
}

#[test]
fn certs_init_makes_a_verifiable_set_then_adds_a_client_and_refuses_a_garbage_ca() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    let d = dir.to_str().unwrap();
    let mode = |name: &str| {
        std::fs::metadata(dir.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };

    // A umask that would hide the certificates does not.
    let out = certs_with_umask("077", &[d, "--nodes", "2", "--host", "10.9.8.7"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for what in ["CA", "node 1", "node 2", "client admin"] {
        assert!(
            stdout.contains(&format!("created {what}")),
            "{what}: {stdout}"
        );
    }
    assert_eq!(mode(""), 0o700);
    for stem in ["ca", "node-1", "node-2", "client-admin"] {
        assert_eq!(mode(&format!("{stem}.pem")), 0o644, "{stem}");
        assert_eq!(mode(&format!("{stem}-key.pem")), 0o600, "{stem}");
    }
    // The node certificate serves 10.9.8.7 and the client one only as a client.
    let ca = cert_der(&dir.join("ca.pem"));
    let anchors = [webpki::anchor_from_trusted_cert(&ca).unwrap()];
    let verify = |leaf: &str, usage| {
        let der = cert_der(&dir.join(leaf));
        let ee = webpki::EndEntityCert::try_from(&der).unwrap();
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &[],
            rustls_pki_types::UnixTime::now(),
            usage,
            None,
            None,
        )
        .is_ok()
            && ee
                .verify_is_valid_for_subject_name(
                    &rustls_pki_types::ServerName::try_from("10.9.8.7").unwrap(),
                )
                .is_ok()
    };
    assert!(verify("node-2.pem", webpki::KeyUsage::server_auth()));
    let client = cert_der(&dir.join("client-admin.pem"));
    let client = webpki::EndEntityCert::try_from(&client).unwrap();
    let as_client = |usage| {
        client
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                &[],
                rustls_pki_types::UnixTime::now(),
                usage,
                None,
                None,
            )
            .is_ok()
    };
    assert!(as_client(webpki::KeyUsage::client_auth()));
    assert!(!as_client(webpki::KeyUsage::server_auth()));

    // Again with a new client: everything else kept byte for byte.
    let node1 = std::fs::read(dir.join("node-1-key.pem")).unwrap();
    let out = certs(&[d, "--nodes", "2", "--client", "billing"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("created client billing"), "{stdout}");
    assert!(stdout.contains("kept    CA"), "{stdout}");
    assert!(stdout.contains("kept    node 1"), "{stdout}");
    assert!(!stdout.contains("client admin"), "{stdout}");
    assert_eq!(std::fs::read(dir.join("node-1-key.pem")).unwrap(), node1);
    assert_eq!(mode("client-billing-key.pem"), 0o600);

    // A bad name is a usage error (exit 2) that writes nothing.
    let out = certs(&[d, "--client", "../escape"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--client \"../escape\""));
    assert!(!tmp.path().join("escape.pem").exists());

    // A garbage CA is named in a one-line error, not a panic.
    std::fs::write(dir.join("ca.pem"), "garbage\n").unwrap();
    let out = certs(&[d, "--client", "ops"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("ca.pem"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!dir.join("client-ops.pem").exists());
}

fn serve(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("serve")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run inflight serve")
}

#[test]
fn serve_refuses_a_reused_memory_id_a_foreign_data_dir_and_unknown_config_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("n1");
    let port = free_port_block(2);
    let addr = format!("127.0.0.1:{port}");
    let peer = format!("127.0.0.1:{}", port + 1);
    let cluster = format!("1={addr}/{peer}");
    // A memory-mode node, configured from a file, runs and is stopped.
    let cfg = dir.path().join("inflight.toml");
    std::fs::write(
        &cfg,
        format!(
            "id = 1\ndata_dir = {:?}\nlisten = {addr:?}\npeer_listen = {peer:?}\ninitial_cluster = {cluster:?}\ndurability = \"memory\"\nsink = \"noop\"\n",
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    let mut first = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client_ok = || {
        Command::new(BIN)
            .args(["--endpoints", &addr, "insert", "k", "v"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    wait_until(
        Duration::from_secs(20),
        "the config-file node to take a write",
        client_ok,
    );
    let _ = first.kill();
    let _ = first.wait();
    let files: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        files,
        vec!["node.id".to_string()],
        "memory durability writes only the id marker (and `sink = \"noop\"` from the config \
         file replaced the default file sink under the data directory)"
    );

    // The same id in memory mode must not come back: its votes are gone.
    let again = serve(&["--config", cfg.to_str().unwrap()]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("already ran with --durability memory") && err.contains("new --id"),
        "{err}"
    );

    // Another id on this data directory is refused, naming the owner.
    let other = serve(&[
        "--id",
        "2",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        &addr,
        "--peer-listen",
        &peer,
        "--initial-cluster",
        &format!("2={addr}/{peer}"),
    ]);
    assert!(!other.status.success());
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(err.contains("belongs to node 1, not node 2"), "{err}");

    // Unknown settings in the config file are named.
    std::fs::write(&cfg, "id = 3\nelection_timeout = \"1s\"\n").unwrap();
    let bad = serve(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown setting `election_timeout`"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_ttl_request_ids_batch_from_stdin_and_watch() {
    let c = Cluster::start(ClusterOptions::default()).await;
    let endpoints = c.endpoints().join(",");
    let run = |args: &[&str]| cli(&endpoints, args);

    // A watch in the background, from the first revision.
    let watch_out = c.dir.join("watch.out");
    let _watch = Reaper(
        Command::new(BIN)
            .args([
                "--endpoints",
                &endpoints,
                "watch",
                "call/",
                "--from-revision",
                "1",
                "--json",
            ])
            .stdout(std::fs::File::create(&watch_out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let insert_with_id = [
        "insert",
        "call/9",
        "ringing",
        "--ttl",
        "1s",
        "--request-id",
        "req-1",
    ];
    let first = run(&insert_with_id);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    // The same request again is answered with the same result, not applied twice.
    let again = run(&insert_with_id);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(first.stdout, again.stdout);
    let other = run(&["insert", "call/10", "x", "--request-id", "req-1"]);
    assert!(!other.status.success());
    assert!(String::from_utf8_lossy(&other.stderr).contains("InvalidArgument"));

    let mut batch = Command::new(BIN)
        .args(["--endpoints", &endpoints, "batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        batch.stdin.as_mut().unwrap(),
        br#"[{"op":"insert","key":"call/11","value":{"status":"ringing"}},
            {"op":"insert","key":"call/12","value":"x","ttl":"1h"},
            {"op":"update","key":"call/11","value":"answered","if_version":1}]"#,
    )
    .unwrap();
    let out = batch.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("applied 3 ops at revision"));

    // The TTL runs out: the record turns EXPIRED, is handed off to the
    // (default, file) sink and leaves memory. The watch sees the whole story.
    wait_until(
        Duration::from_secs(5),
        "the watch to print the hand-off",
        || {
            std::fs::read_to_string(&watch_out)
                .unwrap_or_default()
                .contains(r#""event":"HANDED_OFF""#)
        },
    );
    let g = run(&["get", "call/9", "--json"]);
    assert!(!g.status.success(), "call/9 left memory after hand-off");
    assert!(String::from_utf8_lossy(&g.stderr).contains("not found"));
    // It is in the leader's post-flight files (the default sink), as EXPIRED.
    let handed_off = c.nodes.values().any(|n| {
        std::fs::read_dir(n.data_dir.join("postflight"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|f| {
                std::fs::read_to_string(f.path())
                    .unwrap_or_default()
                    .lines()
                    .any(|l| l.contains(r#""key":"call/9""#) && l.contains(r#""state":"EXPIRED""#))
            })
    });
    assert!(handed_off, "call/9 is in no node's postflight directory");

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&watch_out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let story: Vec<(String, String)> = lines
        .iter()
        .map(|v| {
            (
                v["event"].as_str().unwrap().to_string(),
                v["key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expect = [
        ("INSERTED", "call/9"),
        ("INSERTED", "call/11"),
        ("INSERTED", "call/12"),
        ("UPDATED", "call/11"),
        ("EXPIRED", "call/9"),
        ("HANDED_OFF", "call/9"),
    ];

    assert_eq!(
        story,
        expect
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    );
    let revisions: Vec<u64> = lines
        .iter()
        .map(|v| v["revision"].as_u64().unwrap())
        .collect();
    assert!(revisions.windows(2).all(|w| w[0] <= w[1]), "{revisions:?}");
    assert_eq!(
        lines[1]["value"], r#"{"status":"ringing"}"#,
        "JSON values are sent as their JSON text"
    );
}
