//! The HANDED_OFF checker: every record that left memory was in its sink
//! *before* the leader proposed the `Evict` that removed it.
//!
//! Looking the record up in the sink when the event arrives would not prove
//! that order: the event is seen after the Evict was applied, and a sink write
//! that raced in between would look just as good. So both sides carry a time
//! on this machine's one clock:
//!
//! - every watch event carries `at_ms`, the leader's stamp on the command
//!   that produced it: for HANDED_OFF, when the `Evict` was proposed;
//! - the sink side says when it received each document: the file sink writes
//!   `written_at_ms` into each line just before the write, the PostgreSQL
//!   table gets a `received_at ... DEFAULT clock_timestamp()` column (see
//!   [`create_postgres_table`]), a test's webhook receiver notes the arrival.
//!
//! The check is, for every HANDED_OFF event: the sink holds the record, and
//! its first copy arrived no later than the evict's stamp (compared in whole
//! milliseconds). A worker that proposed the Evict before writing the sink
//! stamps the Evict first, and is caught once the write lands a millisecond
//! or more later.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use inflight::client::Client;
use inflight::pb;
use parking_lot::Mutex;

use crate::sink::FileSink;
use crate::wait::wait_until;

/// The PostgreSQL sink's table.
pub const TABLE: &str = "inflight_postflight";

/// One HANDED_OFF event as a watcher saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eviction {
    pub handoff_id: String,
    /// The leader's stamp on the `Evict` command (Unix ms).
    pub at_ms: u64,
    /// The watcher's own clock when the event arrived (Unix ms): where
    /// node clocks are faulted on purpose (the chaos suite), the one time
    /// that is true.
    pub seen_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Evicted, and the sink does not hold it.
    NotInSink { handoff_id: String },
    /// The sink received it only after the leader proposed its Evict.
    ReceivedAfterEvict {
        handoff_id: String,
        received_ms: u64,
        evicted_ms: u64,
    },
}

/// Checks every eviction against `received_ms` (handoff_id → when the sink
/// first held it): the record must be there, and must have arrived no later
/// than the Evict's stamp.
pub fn check_evictions(
    evictions: &[Eviction],
    received_ms: &BTreeMap<String, u64>,
) -> Vec<Violation> {
    evictions
        .iter()
        .filter_map(|e| match received_ms.get(&e.handoff_id) {
            None => Some(Violation::NotInSink {
                handoff_id: e.handoff_id.clone(),
            }),
            Some(&r) if r > e.at_ms => Some(Violation::ReceivedAfterEvict {
                handoff_id: e.handoff_id.clone(),
                received_ms: r,
                evicted_ms: e.at_ms,
            }),
            Some(_) => None,
        })
        .collect()
}

/// Where the checker learns when the sink received each record.
#[derive(Clone)]
pub enum SinkView {
    /// A PostgreSQL sink whose table was made by [`create_postgres_table`].
    Postgres(String),
    /// A test's webhook receiver: handoff_id → first arrival (Unix ms).
    Webhook(Arc<Mutex<BTreeMap<String, u64>>>),
    /// A `file:` sink directory.
    File(PathBuf),
}

impl SinkView {
    /// handoff_id → when the sink first held it, for those of `ids` it holds.
    pub async fn received_ms(&self, ids: &[String]) -> BTreeMap<String, u64> {
        let wanted: BTreeSet<&String> = ids.iter().collect();
        match self {
            SinkView::Postgres(url) => {
                let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                    .await
                    .expect("checker connects to postgres");
                tokio::spawn(conn);
                let sql = format!(
                    "SELECT handoff_id, floor(extract(epoch FROM received_at) * 1000)::int8
                     FROM {TABLE} WHERE handoff_id = ANY($1)"
                );
                let rows = client.query(&sql, &[&ids]).await.expect(
                    "checker reads received_at (was the table made by create_postgres_table?)",
                );
                rows.iter()
                    .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
                    .collect()
            }
            SinkView::Webhook(received) => received
                .lock()
                .iter()
                .filter(|(id, _)| wanted.contains(id))
                .map(|(id, t)| (id.clone(), *t))
                .collect(),
            SinkView::File(dir) => FileSink::read(dir)
                .first_written_ms()
                .into_iter()
                .filter(|(id, _)| wanted.contains(id))
                .collect(),
        }
    }
}

/// Creates the PostgreSQL sink's table before any node starts, with the
/// sink's own columns plus `received_at`: the database's clock when the row
/// was inserted (`clock_timestamp()`, not the transaction start). The sink
/// creates its table only if missing and names its columns on INSERT, so it
/// writes into this one unchanged.
pub async fn create_postgres_table(client: &tokio_postgres::Client) {
    client
        .batch_execute(&format!(
            "CREATE TABLE {TABLE} (
                handoff_id text PRIMARY KEY,
                key text NOT NULL,
                state text NOT NULL,
                completion_revision bigint NOT NULL,
                doc jsonb NOT NULL,
                handed_off_at timestamptz NOT NULL DEFAULT now(),
                received_at timestamptz NOT NULL DEFAULT clock_timestamp()
            )"
        ))
        .await
        .expect("create the sink table with received_at");
}

/// Records every HANDED_OFF event of one node's watch stream, from revision 1,
/// reconnecting (from where it left off) when the stream breaks.
pub struct EvictionWatch {
    evictions: Arc<Mutex<Vec<Eviction>>>,
    task: tokio::task::JoinHandle<()>,
}

impl EvictionWatch {
    pub fn start(client: Client) -> EvictionWatch {
        let evictions: Arc<Mutex<Vec<Eviction>>> = Arc::default();
        let task = {
            let evictions = evictions.clone();
            tokio::spawn(async move {
                let mut from = 1;
                loop {
                    let req = pb::WatchRequest {
                        prefix: String::new(),
                        from_revision: from,
                        progress_interval_ms: 200,
                        max_message_bytes: 0,
                    };
                    let Ok(mut stream) = client.watch(req).await else {
                        // Not a wait for a condition: a pause between reconnects.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    // The events of a revision split over several messages are
                    // kept only once it is whole: a reconnect inside it gets
                    // the revision again from its start.
                    let mut split: Vec<Eviction> = Vec::new();
                    while let Ok(Some(msg)) = stream.message().await {
                        for e in &msg.events {
                            if e.r#type != pb::EventType::HandedOff as i32 {
                                continue;
                            }
                            let Some(r) = &e.record else { continue };
                            split.push(Eviction {
                                handoff_id: format!("{}@{}", r.key, r.mod_revision),
                                at_ms: e.at_ms,
                                seen_ms: crate::now_ms(),
                            });
                        }
                        if !msg.more_in_revision {
                            evictions.lock().append(&mut split);
                        }
                        from = stream.resume_from();
                    }
                }
            })
        };
        EvictionWatch { evictions, task }
    }

    /// How many HANDED_OFF events it has seen.
    pub fn seen(&self) -> usize {
        self.evictions.lock().len()
    }

    /// Stops watching; every HANDED_OFF event seen.
    pub fn stop(self) -> Vec<Eviction> {
        self.task.abort();
        let seen = self.evictions.lock().clone();
        seen
    }

    /// Waits until `n` HANDED_OFF events were seen, stops, and asserts that
    /// each record was in `sink` before its Evict. Returns the handoff ids.
    pub async fn finish(self, n: usize, sink: &SinkView) -> Vec<String> {
        wait_until(
            Duration::from_secs(30),
            &format!("the checker to see {n} HANDED_OFF events"),
            || async { self.seen() >= n },
        )
        .await;
        let evictions = self.stop();
        let ids: Vec<String> = evictions.iter().map(|e| e.handoff_id.clone()).collect();
        let received = sink.received_ms(&ids).await;
        let v = check_evictions(&evictions, &received);
        assert!(
            v.is_empty(),
            "{} of {} evicted records were not in the sink before their Evict, e.g. {:?}",
            v.len(),
            evictions.len(),
            &v[..v.len().min(5)]
        );
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str, at_ms: u64) -> Eviction {
        Eviction {
            handoff_id: id.into(),
            at_ms,
            seen_ms: at_ms,
        }
    }

    #[test]
    fn an_eviction_stamped_before_the_sink_write_is_flagged() {
        // "a@1": written at 1000, evicted at 1002: the right order.
        // "b@2": written and evicted in the same millisecond: fine.
        // "c@3": evicted at 1000, but the sink got it at 1001: the worker
        //        proposed the Evict before writing the sink.
        // "d@4": evicted, never in the sink.
        let received = BTreeMap::from([
            ("a@1".to_string(), 1_000),
            ("b@2".to_string(), 1_005),
            ("c@3".to_string(), 1_001),
        ]);
        let v = check_evictions(
            &[
                ev("a@1", 1_002),
                ev("b@2", 1_005),
                ev("c@3", 1_000),
                ev("d@4", 2_000),
            ],
            &received,
        );
        assert_eq!(
            v,
            vec![
                Violation::ReceivedAfterEvict {
                    handoff_id: "c@3".into(),
                    received_ms: 1_001,
                    evicted_ms: 1_000,
                },
                Violation::NotInSink {
                    handoff_id: "d@4".into()
                },
            ]
        );
    }

    #[test]
    fn the_file_sinks_first_copy_counts() {
        let dir = tempfile::tempdir().unwrap();
        // A copy written before the evict and a later redundant copy from a
        // second leader: the first one proves the order. A torn last line
        // (no newline) is not counted.
        std::fs::write(
            dir.path().join("00000000000000000001-n1.ndjson"),
            "{\"handoff_id\":\"a@1\",\"written_at_ms\":900}\n\
             {\"handoff_id\":\"b@2\",\"written_at_ms\":1500}\n\
             {\"handoff_id\":\"z@9\",\"writ",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("00000000000000000001-n2.ndjson"),
            "{\"handoff_id\":\"a@1\",\"written_at_ms\":1100}\n",
        )
        .unwrap();
        let sink = FileSink::read(dir.path());
        assert!(sink.bad_lines.is_empty());
        assert_eq!(sink.counts()["a@1"], 2);
        assert_eq!(
            sink.docs["a@1"][0].doc, sink.docs["a@1"][1].doc,
            "written_at_ms is not part of the document"
        );
        let received = sink.first_written_ms();
        let v = check_evictions(&[ev("a@1", 1_000), ev("b@2", 1_000)], &received);
        assert_eq!(
            v,
            vec![Violation::ReceivedAfterEvict {
                handoff_id: "b@2".into(),
                received_ms: 1_500,
                evicted_ms: 1_000,
            }]
        );
    }
}
