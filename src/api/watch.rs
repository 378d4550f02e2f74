//! `Watch`: streaming change events from this node's event window.
//!
//! Guarantees, per stream: events in revision order, whole revisions per
//! message, no gaps and no duplicates (the backlog is copied and the live
//! feed subscribed under one lock). After `progress_interval_ms` without
//! events the stream gets a progress message carrying the node's applied
//! revision, once every event up to it has been sent.
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
use crate::pb;
use crate::state::{Event, EventKind, Table};

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

const DEFAULT_PROGRESS: Duration = Duration::from_millis(5_000);
const MIN_PROGRESS: Duration = Duration::from_millis(100);
/// Events per message, at most (a larger revision still goes out whole).
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
    let (tx, rx) = mpsc::channel(QUEUE);
    let cancel = Arc::new(Mutex::new(None));
    let w = Watcher {
        table,
        prefix: req.prefix,
        tx,
        cancel: cancel.clone(),
        sent_through: req.from_revision.saturating_sub(1),
        progress,
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
            // begun (apply is publishing it right now): only whole revisions
            // are sent, so `sent_through` never splits one.
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

    /// Sends events (after dropping ones already sent and ones outside the
    /// prefix), whole revisions per message.
    async fn send_events(&mut self, events: Vec<Arc<Event>>) -> Sent {
        let mut batch: Vec<pb::Event> = Vec::new();
        let mut batch_rev = self.sent_through;
        for e in events {
            if e.revision <= self.sent_through {
                continue;
            }
            if e.revision != batch_rev && batch.len() >= EVENTS_PER_MESSAGE {
                let msg = pb::WatchResponse {
                    events: std::mem::take(&mut batch),
                    revision: batch_rev,
                    progress: false,
                };
                if let Sent::Done = self.send(Ok(msg)).await {
                    return Sent::Done;
                }
                // Delivered whole revisions: a cancellation from here on names the next one.
                self.sent_through = batch_rev;
            }
            batch_rev = e.revision;
            if e.key.starts_with(&self.prefix) {
                batch.push(event_to_pb(&e));
            }
        }
        if !batch.is_empty() {
            let msg = pb::WatchResponse {
                events: batch,
                revision: batch_rev,
                progress: false,
            };
            if let Sent::Done = self.send(Ok(msg)).await {
                return Sent::Done;
            }
        }
        self.sent_through = self.sent_through.max(batch_rev);
        Sent::Ok
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
