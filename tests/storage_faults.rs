//! Storage faults: a damaged WAL must never make a node forget entries it
//! acknowledged, and a node whose Raft core died on a storage error must exit
//! so that a supervisor restarts it (issue 12, items 1 and 2).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inflight::client::Consistency;
use testkit::cluster::last_segment;
use testkit::{wait_for, Cluster, ClusterOptions};

const TAG_ENTRY: u8 = 1;

/// Byte offset and length of the frame holding log index `index` in a WAL
/// segment (`len u32 | crc u32 | tag | body`). openraft's first entry is the
/// initial membership at index 0 and a follower of a fresh cluster appends
/// entries in order, so the n-th entry frame holds index n; the node's own
/// error message, which names the index it found, double-checks this.
fn entry_frame(segment: &[u8], index: u64) -> (usize, usize) {
    let mut pos = 0;
    let mut n = 0;
    while pos + 9 <= segment.len() {
        let len = u32::from_le_bytes(segment[pos..pos + 4].try_into().unwrap()) as usize;
        if segment[pos + 8] == TAG_ENTRY {
            if n == index {
                return (pos, 8 + len);
            }
            n += 1;
        }
        pos += 8 + len;
    }
    panic!("no frame for entry {index} in the segment ({n} entries)");
}

async fn write_keys(c: &Cluster, prefix: &str, n: usize) {
    let client = c.client();
    for i in 0..n {
        client
            .insert(&format!("{prefix}/{i:04}"), format!("v{i}"))
            .await
            .expect("insert");
    }
}

async fn read_all(c: &Cluster, id: u64, prefix: &str) -> BTreeMap<String, String> {
    c.scan_all(&c.node_client(id), prefix, Consistency::Stale)
        .await
        .into_iter()
        .map(|r| (r.key, String::from_utf8(r.value.to_vec()).unwrap()))
        .collect()
}

/// Waits for a node's process to end on its own; returns its exit status.
async fn wait_exit(c: &mut Cluster, id: u64, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        let child = c.nodes.get_mut(&id).unwrap().child.as_mut().unwrap();
        if let Some(status) = child.try_wait().unwrap() {
            c.nodes.get_mut(&id).unwrap().child = None;
            return status;
        }
        if Instant::now() > deadline {
            panic!("node {id} still runs after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flipped_byte_inside_entry_100_of_1000_refuses_to_start_naming_file_offset_and_index() {
    let mut c = Cluster::start(ClusterOptions::default()).await;
    write_keys(&c, "k", 1_000).await;
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let victim = (1..=3).find(|i| *i != leader).unwrap();
    let applied = c.status(leader).await.unwrap().applied_index;
    assert!(applied >= 1_000, "at least 1,000 entries: {applied}");
    c.wait_applied(victim, applied, Duration::from_secs(20))
        .await;
    c.kill(victim);

    // One flipped byte inside entry 100 of the active (last) segment.
    let seg = last_segment(&c.wal_dir(victim));
    let mut bytes = std::fs::read(&seg).unwrap();
    let (at, len) = entry_frame(&bytes, 100);
    bytes[at + len / 2] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();

    c.restart(victim);
    let status = wait_exit(&mut c, victim, Duration::from_secs(20)).await;
    assert!(!status.success(), "node {victim} exited with {status}");
    let log = c.log_text(victim);
    for part in [
        "refusing to start".to_string(),
        seg.display().to_string(),
        format!("byte offset {at}"),
        "log index 100".to_string(),
        "re-sync this node from the others".to_string(),
        "post-flight sink".to_string(),
    ] {
        assert!(log.contains(&part), "the error names {part:?}:\n{log}");
    }
    assert!(!log.contains("panicked"), "no panic:\n{log}");
    if let Some(line) = log.lines().find(|l| l.contains("refusing to start")) {
        eprintln!("node {victim} refused to start: {line}");
    }
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        bytes,
        "the damaged segment was left as it was: nothing cut"
    );

    // The recovery the message gives works: delete only the Raft log and
    // the snapshots, keep the vote; the node catches up from the others.
    let data = c.nodes[&victim].data_dir.clone();
    std::fs::remove_dir_all(data.join("raft").join("wal")).unwrap();
    std::fs::remove_dir_all(data.join("snapshots")).unwrap();
    write_keys(&c, "after", 10).await;
    c.restart(victim);
    let applied = c.status(leader).await.unwrap().applied_index;
    c.wait_applied(victim, applied, Duration::from_secs(30))
        .await;
    assert_eq!(read_all(&c, victim, "k/").await.len(), 1_000);
    assert_eq!(read_all(&c, victim, "after/").await.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn last_frame_cut_short_by_a_few_bytes_is_cut_and_the_node_catches_up() {
    let mut c = Cluster::start(ClusterOptions::default()).await;
    write_keys(&c, "k", 200).await;
    let leader = c.wait_leader(Duration::from_secs(5)).await;
    let victim = (1..=3).find(|i| *i != leader).unwrap();
    let applied = c.status(leader).await.unwrap().applied_index;
    c.wait_applied(victim, applied, Duration::from_secs(20))
        .await;
    c.kill(victim);
    let seg = last_segment(&c.wal_dir(victim));
    let len = std::fs::metadata(&seg).unwrap().len();
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len - 4).unwrap();
    f.sync_all().unwrap();
    drop(f);

    write_keys(&c, "more", 50).await;
    c.restart(victim);
    let line = wait_for(Duration::from_secs(10), "the WAL recovery line", || async {
        c.log_text(victim)
            .lines()
            .find(|l| l.contains("wal recovery"))
            .map(str::to_string)
    })
    .await;
    assert!(line.contains("torn write"), "{line}");
    let applied = c.status(leader).await.unwrap().applied_index;
    c.wait_applied(victim, applied, Duration::from_secs(20))
        .await;
    assert!(c.is_running(victim));
    assert_eq!(read_all(&c, victim, "k/").await.len(), 200);
    assert_eq!(read_all(&c, victim, "more/").await.len(), 50);
}

/// A size-limited tmpfs mounted by the test; unmounted when dropped, also
/// when the test fails.
struct SmallFs {
    path: PathBuf,
}

impl SmallFs {
    fn mount(path: &Path, size: &str) -> SmallFs {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount(8)");
        assert!(
            out.status.success(),
            "this test needs to mount a size-limited tmpfs (run it as root, or with CAP_SYS_ADMIN): \
             mount -t tmpfs -o size={size} tmpfs {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        SmallFs {
            path: path.to_path_buf(),
        }
    }

    fn available(&self) -> u64 {
        let c = std::ffi::CString::new(self.path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: statvfs fills the struct we pass; the path is NUL-terminated.
        unsafe {
            let mut s: libc::statvfs = std::mem::zeroed();
            assert_eq!(libc::statvfs(c.as_ptr(), &mut s), 0, "statvfs");
            s.f_bavail as u64 * s.f_frsize as u64
        }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        // Lazy: a node that is still running (a failed test) must not keep it mounted.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .expect("run cp");
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

fn tmp_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for ent in std::fs::read_dir(dir).unwrap() {
        let path = ent.unwrap().path();
        if path.is_dir() {
            out.extend(tmp_files(&path));
        } else if path.extension().is_some_and(|x| x == "tmp") {
            out.push(path);
        }
    }
    out
}

fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let code = raw.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, raw.split_once("\r\n\r\n")?.1.to_string()))
}

/// Which write meets the full disk first.
#[derive(Clone, Copy, PartialEq)]
enum Filler {
    /// No snapshot during the load: a WAL append fails.
    Wal,
    /// Frequent snapshots: a snapshot file (or the WAL) fails.
    WalOrSnapshot,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_whose_wal_fills_the_disk_exits_nonzero_within_5s_loses_no_acknowledged_write_and_rejoins(
) {
    leader_on_a_full_disk(Filler::Wal).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_snapshotting_onto_a_full_disk_exits_nonzero_within_5s_loses_no_acknowledged_write_and_rejoins(
) {
    leader_on_a_full_disk(Filler::WalOrSnapshot).await;
}

/// The leader's data directory on an 8 MiB tmpfs that the write load fills:
/// within 5 s the node exits non-zero; no acknowledged write is lost; once
/// space is freed it restarts, rejoins and leaves no `.tmp` file.
async fn leader_on_a_full_disk(filler_kind: Filler) {
    let mut c = Cluster::start(ClusterOptions {
        snapshot_every: Some(match filler_kind {
            Filler::Wal => 1_000_000,
            Filler::WalOrSnapshot => 300,
        }),
        ..Default::default()
    })
    .await;
    write_keys(&c, "before", 50).await;
    let target = c.wait_leader(Duration::from_secs(5)).await;

    // Move the leader's data directory onto a small filesystem.
    c.stop(target);
    let data = c.nodes[&target].data_dir.clone();
    let moved = data.with_extension("orig");
    std::fs::rename(&data, &moved).unwrap();
    std::fs::create_dir(&data).unwrap();
    let fs = SmallFs::mount(&data, "8m");
    copy_dir(&moved, &data);
    c.restart(target);
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let applied = c.status(leader).await.unwrap().applied_index;
    c.wait_applied(target, applied, Duration::from_secs(20))
        .await;
    if leader != target {
        c.client()
            .transfer_leader(target)
            .await
            .expect("hand leadership to the node on the small filesystem");
    }
    assert_eq!(c.wait_leader(Duration::from_secs(10)).await, target);

    // Leave 512 KiB free: the write load fills it within seconds.
    let filler = data.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0xa5u8; 64 << 10];
        while fs.available() > (512 << 10) + chunk.len() as u64 {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
    }

    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..6 {
        let client = c.client();
        let acked = acked.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("load/{w}/{i:06}");
                let value = format!("{w}-{i}-{}", "x".repeat(2_000));
                if client.insert(&key, value.clone()).await.is_ok() {
                    acked.lock().unwrap().push((key, value));
                }
                i += 1;
            }
        }));
    }

    // From the moment the filesystem is full (or the node is gone, if a
    // write failed first), the node has 5 s to exit.
    let started = Instant::now();
    let http = c.nodes[&target].http.clone();
    let mut full_at = None;
    let mut livez_seen = Vec::new();
    let exited = loop {
        let child = c.nodes.get_mut(&target).unwrap().child.as_mut().unwrap();
        if let Some(status) = child.try_wait().unwrap() {
            c.nodes.get_mut(&target).unwrap().child = None;
            break status;
        }
        if full_at.is_none() && fs.available() < (64 << 10) {
            full_at = Some(Instant::now());
        }
        if let Some(t) = full_at {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "node {target} still runs 5 s after its filesystem filled up"
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "node {target} still runs 30 s into the write load ({} bytes free)",
            fs.available()
        );
        if let Some((code, body)) = http_get(&http, "/livez") {
            if livez_seen.last().map(|(c, _)| *c) != Some(code) {
                livez_seen.push((code, body));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let full_for = full_at.map(|t| t.elapsed());
    assert!(
        !exited.success(),
        "node {target} exited with {exited} on a full disk"
    );
    let log = c.log_text(target);
    assert!(
        log.contains("the Raft core is dead"),
        "the node logs why it exits:\n{log}"
    );
    assert!(!log.contains("panicked"), "no panic:\n{log}");
    assert!(
        log.contains("No space left on device"),
        "the cause is logged:\n{log}"
    );
    if filler_kind == Filler::Wal {
        assert!(
            log.contains("wal: write failed"),
            "the WAL met the full disk:\n{log}"
        );
    }
    // /livez must never have said "ok" after saying it is dead.
    if let Some(dead) = livez_seen.iter().position(|(c, _)| *c == 503) {
        assert!(
            livez_seen[dead..].iter().all(|(c, _)| *c == 503),
            "/livez: {livez_seen:?}"
        );
        assert!(livez_seen[dead].1.contains("dead"), "{livez_seen:?}");
    }
    for line in log.lines().filter(|l| l.contains("ERROR")).take(6) {
        eprintln!("node {target}: {line}");
    }
    eprintln!("node {target} exited {exited} ({full_for:?} after the disk filled); /livez: {livez_seen:?}");

    // The other two go on; let the writers see the new leader, then stop them.
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "the load acknowledged {} writes",
        acked.len()
    );

    // Every acknowledged write is there, read linearizably.
    let got: BTreeMap<String, String> = c
        .scan_all(&c.client(), "load/", Consistency::Linearizable)
        .await
        .into_iter()
        .map(|r| (r.key, String::from_utf8(r.value.to_vec()).unwrap()))
        .collect();
    for (key, value) in &acked {
        assert_eq!(
            got.get(key),
            Some(value),
            "acknowledged write {key} lost or changed"
        );
    }

    // Space freed, the node restarts, rejoins, and leaves no temporary file.
    std::fs::remove_file(&filler).unwrap();
    let stale = data
        .join("snapshots")
        .join(format!("snap-{:020}.tmp", 999_999));
    std::fs::write(&stale, b"a snapshot cut short").unwrap();
    c.restart(target);
    let applied = c.status(leader).await.unwrap().applied_index;
    c.wait_applied(target, applied, Duration::from_secs(30))
        .await;
    assert!(c.is_running(target));
    let on_target = read_all(&c, target, "load/").await;
    for (key, value) in &acked {
        assert_eq!(
            on_target.get(key),
            Some(value),
            "node {target} after rejoining: {key}"
        );
    }
    assert_eq!(tmp_files(&data), Vec::<PathBuf>::new(), "no .tmp file left");
    c.kill(target);
    drop(fs);
}
