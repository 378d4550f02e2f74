//! `Watch`: streaming change events from this node's event window.
//!
//! Guarantees, per stream: events in revision order, no gaps and no
//! duplicates (the backlog is copied and the live feed subscribed under one
//! lock). After `progress_interval_ms` without events the stream gets a
//! progress message carrying the node's applied revision, once every event
//! up to it has been sent.
//!
//! Messages stay within the watcher's `max_message_bytes` (by default
//! [`RESPONSE_BYTES`], what a default 4 MiB client accepts). They hold whole
//! revisions, except a revision too large for one message (a batch of
//! completes of large records, an `Evict` of many): it is split over several
//! messages, each but the last flagged `more_in_revision` and carrying, as
//! its `revision`, the one before the revision being split. So `revision` +
//! 1 is always where to resume: a watcher cut off inside a split revision
//! gets it again from its first event. An event that does not fit a message
//! alone goes without its value (`value_omitted`) rather than never.
//!
//! A watcher can neither stall apply nor grow memory without bound: the live
//! feed is a bounded broadcast that apply never waits on, and each stream has
//! a bounded outgoing queue. A watcher that falls `LIVE_BUFFER` events behind,
//! or does not read for `STUCK_AFTER`, is cancelled with `RESOURCE_EXHAUSTED`
//! and a message saying from which revision to resume.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::record_to_pb;
use super::response::{field_len, omit_value, ANSWER_FIELDS_BYTES};
use crate::pb;
use crate::state::{Event, EventKind, Table};
use crate::wire::{MAX_WATCH_MESSAGE_BYTES, MIN_WATCH_MESSAGE_BYTES, RESPONSE_BYTES};

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

const DEFAULT_PROGRESS: Duration = Duration::from_millis(5_000);
const MIN_PROGRESS: Duration = Duration::from_millis(100);
/// A message is closed at the first revision end past this many events (a
/// larger revision is split by bytes only).
const EVENTS_PER_MESSAGE: usize = 256;
/// Messages queued for one stream before the watcher counts as slow.
const QUEUE: usize = 8;
/// A watcher that accepts nothing for this long is cancelled.
const STUCK_AFTER: Duration = Duration::from_secs(30);

fn event_to_pb(e: &Event) -> pb::Event {
    let kind = match e.kind {
        EventKind::Inserted => pb::EventType::Inserted,
        EventKind::Updated => pb::EventType::Updated,
        EventKind::Deleted => pb::EventType::Deleted,
        EventKind::Completed => pb::EventType::Completed,
        EventKind::Expired => pb::EventType::Expired,
        EventKind::HandedOff => pb::EventType::HandedOff,
        EventKind::Discarded => pb::EventType::Discarded,
    };
    pb::Event {
        r#type: kind as i32,
        revision: e.revision,
        record: Some(record_to_pb(e.key.clone(), e.record.clone())),
        at_ms: e.at_ms,
    }
}

pub fn watch_stream(table: Arc<Table>, req: pb::WatchRequest) -> Result<WatchStream, Status> {
    let (backlog, live) = table
        .events()
        .subscribe(req.from_revision)
        .map_err(|c| Status::out_of_range(c.to_string()))?;
    let progress = match req.progress_interval_ms {
        0 => DEFAULT_PROGRESS,
        ms if u64::from(ms) < MIN_PROGRESS.as_millis() as u64 => {
            return Err(Status::invalid_argument(format!(
                "progress_interval_ms: {ms} is below the minimum of {} ms",
                MIN_PROGRESS.as_millis()
            )))
        }
        ms => Duration::from_millis(ms.into()),
    };
    let max_bytes = match req.max_message_bytes as usize {
        0 => RESPONSE_BYTES,
        b if !(MIN_WATCH_MESSAGE_BYTES..=MAX_WATCH_MESSAGE_BYTES).contains(&b) => {
            return Err(Status::invalid_argument(format!(
                "max_message_bytes: {b} is outside {MIN_WATCH_MESSAGE_BYTES}..={MAX_WATCH_MESSAGE_BYTES} \
                 (0 = the default, {RESPONSE_BYTES})"
            )))
        }
        b => b,
    };
    let (tx, rx) = mpsc::channel(QUEUE);
    let cancel = Arc::new(Mutex::new(None));
    let w = Watcher {
        table,
        prefix: req.prefix,
        tx,
        cancel: cancel.clone(),
        sent_through: req.from_revision.saturating_sub(1),
        progress,
        max_bytes,
    };
    tokio::spawn(w.run(backlog, live));
    Ok(Box::pin(WatchOutput {
        queue: ReceiverStream::new(rx),
        cancel,
    }))
}

/// The stream a client reads: the queued messages, then (once the watcher
/// has stopped) the reason it was cancelled, if any. Queued messages are not
/// dropped, so the revision named in the reason is exactly where to resume.
struct WatchOutput {
    queue: ReceiverStream<Result<pb::WatchResponse, Status>>,
    cancel: Arc<Mutex<Option<Status>>>,
}

impl Stream for WatchOutput {
    type Item = Result<pb::WatchResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.queue).poll_next(cx) {
            Poll::Ready(None) => Poll::Ready(self.cancel.lock().take().map(Err)),
            other => other,
        }
    }
}

struct Watcher {
    table: Arc<Table>,
    prefix: String,
    tx: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    /// Why the watcher gave up; delivered after the queued messages.
    cancel: Arc<Mutex<Option<Status>>>,
    /// Every event up to this revision has been sent (or filtered out).
    sent_through: u64,
    progress: Duration,
    /// The largest encoded message this watcher accepts.
    max_bytes: usize,
}

/// A message being filled.
struct Message {
    events: Vec<pb::Event>,
    /// Its encoded size so far, its own fields included.
    bytes: usize,
}

impl Default for Message {
    fn default() -> Self {
        Message {
            events: Vec::new(),
            bytes: ANSWER_FIELDS_BYTES,
        }
    }
}

enum Sent {
    Ok,
    /// The client went away or is stuck; the stream is over.
    Done,
}

impl Watcher {
    async fn run(mut self, backlog: Vec<Arc<Event>>, mut live: broadcast::Receiver<Arc<Event>>) {
        let mut pending: Vec<Arc<Event>> = backlog;
        loop {
            if !pending.is_empty() {
                if let Sent::Done = self.send_events(std::mem::take(&mut pending)).await {
                    return;
                }
            }
            let first = tokio::select! {
                r = live.recv() => r,
                _ = tokio::time::sleep(self.progress) => {
                    if let Sent::Done = self.send_progress(&live).await {
                        return;
                    }
                    continue;
                }
                _ = self.tx.closed() => return,
            };
            match first {
                Ok(e) => pending.push(e),
                Err(broadcast::error::RecvError::Lagged(n)) => return self.lagged(n),
                Err(broadcast::error::RecvError::Closed) => return self.replaced(),
            }
            // Take what else is queued, and always the rest of a revision
            // begun (apply is publishing it right now): `send_events` is
            // given whole revisions, so it knows where each one ends.
            loop {
                let mid_revision = pending.last().is_some_and(|e| !e.ends_revision);
                if !mid_revision && pending.len() >= EVENTS_PER_MESSAGE {
                    break;
                }
                let next = if mid_revision {
                    match live.recv().await {
                        Ok(e) => e,
                        Err(broadcast::error::RecvError::Lagged(n)) => return self.lagged(n),
                        Err(broadcast::error::RecvError::Closed) => return self.replaced(),
                    }
                } else {
                    match live.try_recv() {
                        Ok(e) => e,
                        Err(broadcast::error::TryRecvError::Lagged(n)) => return self.lagged(n),
                        Err(_) => break,
                    }
                };
                pending.push(next);
            }
        }
    }

    async fn send(&self, msg: Result<pb::WatchResponse, Status>) -> Sent {
        match tokio::time::timeout(STUCK_AFTER, self.tx.send(msg)).await {
            Ok(Ok(())) => Sent::Ok,
            Ok(Err(_)) => Sent::Done,
            Err(_) => {
                self.cancel(format!("the watcher read nothing for {STUCK_AFTER:?}"));
                Sent::Done
            }
        }
    }

    /// Sends `events`, whole revisions, after dropping ones already sent and
    /// ones outside the prefix. A message closes at a revision end once it
    /// holds `EVENTS_PER_MESSAGE` events, or wherever the next event would
    /// take it past `max_bytes`: inside a revision, that makes a fragment.
    async fn send_events(&mut self, events: Vec<Arc<Event>>) -> Sent {
        let mut msg = Message::default();
        // The revision whose events are being taken; all before it are whole.
        let mut current = self.sent_through;
        for e in events {
            if e.revision <= self.sent_through {
                continue;
            }
            if e.revision != current {
                // `current` is complete (in `msg` or sent).
                if msg.events.len() >= EVENTS_PER_MESSAGE {
                    if let Sent::Done = self.flush(&mut msg, current, false).await {
                        return Sent::Done;
                    }
                }
                current = e.revision;
            }
            if !e.key.starts_with(&self.prefix) {
                continue;
            }
            let mut event = event_to_pb(&e);
            let mut len = field_len(prost::Message::encoded_len(&event));
            if msg.bytes + len > self.max_bytes && !msg.events.is_empty() {
                // Everything before `current` is whole; `current` continues
                // in the next message if `msg` already holds some of it.
                let split = msg.events.last().is_some_and(|l| l.revision == current);
                if let Sent::Done = self.flush(&mut msg, current - 1, split).await {
                    return Sent::Done;
                }
            }
            if msg.bytes + len > self.max_bytes {
                // Too large even alone: deliver it without its value.
                if let Some(r) = event.record.as_mut() {
                    omit_value(r);
                }
                len = field_len(prost::Message::encoded_len(&event));
            }
            msg.bytes += len;
            msg.events.push(event);
        }
        // `events` ends at a revision end: `current` is whole.
        if !msg.events.is_empty() {
            if let Sent::Done = self.flush(&mut msg, current, false).await {
                return Sent::Done;
            }
        }
        self.sent_through = self.sent_through.max(current);
        Sent::Ok
    }

    /// Sends the events gathered in `msg`: every event up to `whole` has
    /// been delivered once it is sent, and `split` says the revision after
    /// `whole` continues in the next message.
    async fn flush(&mut self, msg: &mut Message, whole: u64, split: bool) -> Sent {
        let events = std::mem::take(msg).events;
        let sent = self
            .send(Ok(pb::WatchResponse {
                events,
                revision: whole,
                progress: false,
                more_in_revision: split,
            }))
            .await;
        if let Sent::Ok = sent {
            // A cancellation from here on names the revision after `whole`.
            self.sent_through = self.sent_through.max(whole);
        }
        sent
    }

    /// A progress message, but only if nothing is waiting in the feed: the
    /// revision it reports must not run ahead of the events delivered.
    async fn send_progress(&mut self, live: &broadcast::Receiver<Arc<Event>>) -> Sent {
        // Applied revision first, then the feed: events are published before
        // the revision advances, so an empty feed means all of them are here.
        // A non-empty one is left for the main loop, which takes whole revisions.
        let revision = self.table.revision();
        if !live.is_empty() {
            return Sent::Ok;
        }
        let revision = revision.max(self.sent_through);
        self.sent_through = revision;
        self.send(Ok(pb::WatchResponse {
            events: Vec::new(),
            revision,
            progress: true,
            more_in_revision: false,
        }))
        .await
    }

    /// The node replaced its state with a snapshot: the events between what
    /// this watcher saw and the snapshot are not available here.
    fn replaced(&self) {
        *self.cancel.lock() = Some(Status::out_of_range(format!(
            "watch cancelled: this node replaced its state with a snapshot, so the events after revision {} \
             are not all available here; re-read the state, then watch from revision {}",
            self.sent_through,
            self.table.events().oldest_revision()
        )));
    }

    fn lagged(&self, missed: u64) {
        self.cancel(format!(
            "the watcher fell {missed} events behind the live feed (buffer {})",
            crate::state::LIVE_BUFFER
        ));
    }

    /// Ends the stream with RESOURCE_EXHAUSTED once the queued messages are read.
    fn cancel(&self, why: String) {
        *self.cancel.lock() = Some(Status::resource_exhausted(format!(
            "watch cancelled: {why}; resume with from_revision {}",
            self.sent_through + 1
        )));
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use prost::Message as _;

    use super::*;
    use crate::state::{Record, RecordState};

    fn event(revision: u64, key: &str, value_len: usize) -> Event {
        Event {
            kind: EventKind::Completed,
            revision,
            key: key.into(),
            record: Record {
                value: vec![b'v'; value_len].into(),
                version: 2,
                create_revision: 1,
                mod_revision: revision,
                created_at_ms: 1,
                updated_at_ms: 2,
                expires_at_ms: None,
                state: RecordState::Completed,
            },
            at_ms: 2,
            ends_revision: false,
        }
    }

    /// Revision 1: three small events; 2: ten of 30,000 bytes (two fit a
    /// 64 KiB message); 3: one of 100,000 bytes (too large alone); 4: outside
    /// the prefix; 5: one small.
    fn table() -> Arc<Table> {
        let t = Arc::new(Table::new());
        let log = t.events();
        log.push((1..=3).map(|i| event(1, &format!("a/{i}"), 10)).collect());
        log.push(
            (0..10)
                .map(|i| event(2, &format!("a/big/{i}"), 30_000))
                .collect(),
        );
        log.push(vec![event(3, "a/huge", 100_000)]);
        log.push(vec![event(4, "b/other", 10)]);
        log.push(vec![event(5, "a/last", 10)]);
        t
    }

    async fn messages(table: Arc<Table>, from: u64, n: usize) -> Vec<pb::WatchResponse> {
        let req = pb::WatchRequest {
            prefix: "a/".into(),
            from_revision: from,
            progress_interval_ms: 0,
            max_message_bytes: MIN_WATCH_MESSAGE_BYTES as u32,
        };
        let mut s = watch_stream(table, req).unwrap();
        let mut out = Vec::new();
        while out.len() < n {
            let m = tokio::time::timeout(Duration::from_secs(10), s.next())
                .await
                .expect("watch stalled")
                .expect("stream ended")
                .expect("stream error");
            out.push(m);
        }
        out
    }

    #[tokio::test]
    async fn a_revision_larger_than_the_limit_is_split_and_an_event_too_large_alone_loses_its_value(
    ) {
        let got = messages(table(), 1, 6).await;
        let shape: Vec<(Vec<u64>, u64, bool)> = got
            .iter()
            .map(|m| {
                (
                    m.events.iter().map(|e| e.revision).collect(),
                    m.revision,
                    m.more_in_revision,
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                // Revision 1 whole, then the start of revision 2: a fragment
                // whose `revision` says only revision 1 is complete.
                (vec![1, 1, 1, 2, 2], 1, true),
                (vec![2, 2], 1, true),
                (vec![2, 2], 1, true),
                (vec![2, 2], 1, true),
                // The rest of revision 2 ends a message before revision 3,
                // which does not fit with it.
                (vec![2, 2], 2, false),
                // Revision 3 alone, without its value; revision 4 is
                // filtered out; 5 follows.
                (vec![3, 5], 5, false),
            ]
        );
        for m in &got {
            assert!(
                m.encoded_len() <= MIN_WATCH_MESSAGE_BYTES,
                "{}",
                m.encoded_len()
            );
        }
        let records: Vec<&pb::Record> = got
            .iter()
            .flat_map(|m| &m.events)
            .map(|e| e.record.as_ref().unwrap())
            .collect();
        let keys: Vec<&str> = records.iter().map(|r| r.key.as_str()).collect();
        let mut want = vec!["a/1", "a/2", "a/3"];
        let big: Vec<String> = (0..10).map(|i| format!("a/big/{i}")).collect();
        want.extend(big.iter().map(String::as_str));
        want.extend(["a/huge", "a/last"]);
        assert_eq!(keys, want, "every event once, in order");
        for r in &records {
            if r.key == "a/huge" {
                assert!(r.value_omitted && r.value.is_empty());
                assert_eq!((r.version, r.mod_revision), (2, 3));
            } else {
                assert!(!r.value_omitted && !r.value.is_empty(), "{}", r.key);
            }
        }
    }

    #[tokio::test]
    async fn resuming_after_the_last_whole_revision_gets_a_split_revision_from_its_start() {
        let t = table();
        let first = messages(t.clone(), 1, 2).await;
        assert_eq!(first[1].events.len(), 2, "two of revision 2's ten events");
        assert!(first[1].more_in_revision);
        let resume = first[1].revision + 1;
        assert_eq!(resume, 2);
        let again = messages(t, resume, 6).await;
        assert!(again[..4]
            .iter()
            .all(|m| m.more_in_revision && m.revision == 1));
        let revs: Vec<u64> = again
            .iter()
            .flat_map(|m| m.events.iter().map(|e| e.revision))
            .collect();
        assert_eq!(revs, [vec![2; 10], vec![3, 5]].concat());
        assert_eq!(again[0].events[0].record.as_ref().unwrap().key, "a/big/0");
        assert_eq!(again.last().unwrap().revision, 5);
    }

    #[tokio::test]
    async fn a_message_limit_outside_the_range_is_refused() {
        for bad in [1_000, MAX_WATCH_MESSAGE_BYTES as u32 + 1] {
            let req = pb::WatchRequest {
                max_message_bytes: bad,
                ..Default::default()
            };
            let e = watch_stream(Arc::new(Table::new()), req)
                .err()
                .expect("refused");
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains("max_message_bytes"), "{}", e.message());
        }
    }
}
