//! The event window: recent changes, for `Watch`.
//!
//! Every applied change becomes an `Event` carrying its revision. The window
//! keeps the most recent ones (bounded by count and by age, measured with
//! entry timestamps) so a watcher can resume from a revision it already saw;
//! older revisions are "compacted" and a watch from them is refused.
//!
//! The window is also bounded in bytes (`max_bytes`): an event holds its
//! record, value included, so a window of large updates would otherwise keep
//! every superseded value alive. What it holds is counted (`bytes`) for the
//! memory budget.
//!
//! The window is local to each node (not replicated, not in snapshots): a node
//! serves watches from what it applied itself. After a snapshot is installed
//! the window starts empty at the snapshot's revision.
//!
//! Live delivery is a bounded broadcast: the apply path never waits for a
//! watcher. A watcher that falls more than `LIVE_BUFFER` events behind loses
//! its place and must resume from its last revision.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::broadcast;

use super::record::Record;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Inserted,
    Updated,
    Deleted,
    Completed,
    Expired,
    /// A sink acknowledged the record and a committed `Evict` removed it.
    HandedOff,
    /// An operator dropped a record the sink had refused (`handoff drop`):
    /// removed without hand-off.
    Discarded,
}

#[derive(Clone, Debug)]
pub struct Event {
    pub kind: EventKind,
    pub revision: u64,
    pub key: String,
    /// The record after the change; for DELETED (and a dropped expiry), as it was removed.
    pub record: Record,
    /// Entry timestamp, for age-based trimming.
    pub at_ms: u64,
    /// True on the last event of its revision (set by `EventLog::push`), so a
    /// reader of the live feed knows when it holds a whole revision.
    pub ends_revision: bool,
}

/// How many live events a watcher may fall behind before it is cancelled.
pub const LIVE_BUFFER: usize = 8_192;

#[derive(Clone, Copy, Debug)]
pub struct WindowLimits {
    pub max_events: usize,
    pub max_age_ms: u64,
    /// Bytes the retained events (with their records) may hold.
    pub max_bytes: u64,
}

impl Default for WindowLimits {
    fn default() -> Self {
        WindowLimits {
            max_events: 100_000,
            max_age_ms: 10 * 60 * 1000,
            max_bytes: u64::MAX,
        }
    }
}

/// A watch's starting point: the retained events it must replay, and the live feed.
pub type Subscription = (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>);

pub struct EventLog {
    window: Mutex<Window>,
}

struct Window {
    /// The live feed. Replaced on `reset`, which ends every subscription:
    /// their watchers cannot continue across a snapshot install.
    live: broadcast::Sender<Arc<Event>>,
    events: VecDeque<Arc<Event>>,
    /// Sum of `Event::footprint` over `events`.
    bytes: u64,
    /// Every event with a revision at or below this is gone from the window.
    compacted: u64,
    limits: WindowLimits,
}

/// A watch could not start: its revision is older than the window.
#[derive(Debug, thiserror::Error)]
#[error("from_revision {requested} is compacted: the oldest revision still retained on this node is {oldest}")]
pub struct Compacted {
    pub requested: u64,
    pub oldest: u64,
}

impl Default for EventLog {
    fn default() -> Self {
        Self::new(WindowLimits::default())
    }
}

impl EventLog {
    pub fn new(limits: WindowLimits) -> Self {
        EventLog {
            window: Mutex::new(Window {
                live: broadcast::channel(LIVE_BUFFER).0,
                events: VecDeque::new(),
                bytes: 0,
                compacted: 0,
                limits,
            }),
        }
    }

    pub fn set_limits(&self, limits: WindowLimits) {
        self.window.lock().limits = limits;
    }

    /// Records the events of one applied entry (all share its revision).
    pub fn push(&self, mut events: Vec<Event>) {
        let Some(last) = events.last_mut() else {
            return;
        };
        last.ends_revision = true;
        let newest_ms = last.at_ms;
        let mut w = self.window.lock();
        for e in events {
            let e = Arc::new(e);
            w.bytes += e.footprint();
            w.events.push_back(e.clone());
            // Sent under the window lock: a subscriber either sees an event in
            // the backlog it copies or receives it live, never both or neither.
            let _ = w.live.send(e);
        }
        w.trim(newest_ms);
    }

    /// Starts a watch at `from_revision` (0 = only future events): the retained
    /// events at or after it, and a receiver for everything applied later.
    pub fn subscribe(&self, from_revision: u64) -> Result<Subscription, Compacted> {
        let w = self.window.lock();
        let rx = w.live.subscribe();
        if from_revision == 0 {
            return Ok((Vec::new(), rx));
        }
        if from_revision <= w.compacted {
            return Err(Compacted {
                requested: from_revision,
                oldest: w.compacted + 1,
            });
        }
        let backlog = w
            .events
            .iter()
            .filter(|e| e.revision >= from_revision)
            .cloned()
            .collect();
        Ok((backlog, rx))
    }

    /// Forgets every event: the state was replaced wholesale (snapshot) at `revision`.
    pub fn reset(&self, revision: u64) {
        let mut w = self.window.lock();
        w.events.clear();
        w.bytes = 0;
        w.compacted = revision;
        w.live = broadcast::channel(LIVE_BUFFER).0;
    }

    /// Approximate bytes the retained events hold, records included.
    pub fn bytes(&self) -> u64 {
        self.window.lock().bytes
    }

    /// The oldest revision a watch may start from.
    pub fn oldest_revision(&self) -> u64 {
        self.window.lock().compacted + 1
    }
}

impl Event {
    /// Approximate heap bytes one retained event holds: its key, its
    /// record's value and the event itself.
    pub fn footprint(&self) -> u64 {
        (self.key.len() + self.record.value.len() + std::mem::size_of::<Event>()) as u64
    }
}

impl Window {
    /// Drops whole revisions from the front until both bounds hold.
    fn trim(&mut self, newest_ms: u64) {
        let cutoff_ms = newest_ms.saturating_sub(self.limits.max_age_ms);
        while let Some(front) = self.events.front() {
            let too_many = self.events.len() > self.limits.max_events;
            let too_old = front.at_ms < cutoff_ms;
            let too_big = self.bytes > self.limits.max_bytes;
            if !too_many && !too_old && !too_big {
                break;
            }
            let rev = front.revision;
            while self.events.front().is_some_and(|e| e.revision == rev) {
                if let Some(e) = self.events.pop_front() {
                    self.bytes -= e.footprint();
                }
            }
            self.compacted = rev;
        }
    }
}
