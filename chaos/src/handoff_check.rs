//! Hand-off checks: every HANDED_OFF event is checked against the file sink
//! the moment it is seen (a record must not leave memory before its sink
//! write), and at the end every acknowledged completion must be in the sink
//! exactly once.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use inflight::client::Client;
use inflight::pb;
use parking_lot::Mutex;

/// Every copy of every document in the sink, by handoff_id.
pub fn sink_documents(dir: &Path) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        // A line without its newline is still being written.
        for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            #[derive(serde::Deserialize)]
            struct Id {
                handoff_id: String,
            }
            let line = line.trim_end();
            if let Ok(id) = serde_json::from_str::<Id>(line) {
                out.entry(id.handoff_id).or_default().push(line.to_string());
            }
        }
    }
    out
}

/// handoff_id → how many copies the sink holds.
pub fn sink_ids(dir: &Path) -> BTreeMap<String, usize> {
    sink_documents(dir)
        .into_iter()
        .map(|(id, copies)| (id, copies.len()))
        .collect()
}

pub struct EvictionWatch {
    pub handed_off: Arc<Mutex<Vec<String>>>,
    pub early: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl EvictionWatch {
    pub fn start(client: Client, sink: PathBuf) -> EvictionWatch {
        let handed_off = Arc::new(Mutex::new(Vec::new()));
        let early = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (handed_off, early, stop) = (handed_off.clone(), early.clone(), stop.clone());
            tokio::spawn(async move {
                let mut from = 1;
                let mut known: HashSet<String> = HashSet::new();
                while !stop.load(Ordering::Relaxed) {
                    let req = pb::WatchRequest {
                        prefix: String::new(),
                        from_revision: from,
                        progress_interval_ms: 500,
                    };
                    let Ok(mut stream) = client.watch(req).await else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    };
                    while let Ok(Some(msg)) = stream.message().await {
                        for e in &msg.events {
                            from = e.revision + 1;
                            if e.r#type != pb::EventType::HandedOff as i32 {
                                continue;
                            }
                            let Some(r) = &e.record else { continue };
                            let id = format!("{}@{}", r.key, r.mod_revision);
                            if !known.contains(&id) {
                                known.extend(sink_ids(&sink).into_keys());
                            }
                            if !known.contains(&id) {
                                early.lock().push(id.clone());
                            }
                            handed_off.lock().push(id);
                        }
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                    }
                }
            })
        };
        EvictionWatch {
            handed_off,
            early,
            stop,
            task,
        }
    }

    pub fn stop(self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.abort();
        let h = self.handed_off.lock().clone();
        let e = self.early.lock().clone();
        (h, e)
    }
}
