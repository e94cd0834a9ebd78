//! Watches: a bounded in-memory history of the events this node applied, and live fan-out.
//!
//! Events carry the group's sequence number, which is the same on every replica, so a watcher
//! that reconnects — to this node or another — resumes with `start_seq = last seen + 1` and
//! misses and repeats nothing. A node keeps the last [`HISTORY`] events; asking for older ones
//! (or for events from before this node restarted or installed a snapshot) is `OUT_OF_RANGE`:
//! the watcher must read the current state and watch from the sequence number the error names.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use baton_core::{Event, Hlc};
use tokio::sync::broadcast;

/// Events kept for resuming watchers.
pub const HISTORY: usize = 100_000;

/// One applied event.
#[derive(Clone, Debug)]
pub struct Watched {
    /// Group-wide, gap-free sequence number.
    pub seq: u64,
    /// Hybrid logical clock timestamp.
    pub hlc: Hlc,
    /// The event.
    pub event: Event,
}

impl Watched {
    /// The name the event is about (session events have none).
    pub fn name(&self) -> Option<&str> {
        match &self.event {
            Event::Granted { name, .. }
            | Event::Queued { name, .. }
            | Event::WaitEnded { name, .. }
            | Event::Released { name, .. }
            | Event::CounterChanged { name, .. }
            | Event::RegisterChanged { name, .. }
            | Event::LeaderChanged { name, .. } => Some(name),
            Event::SessionOpened { .. } | Event::SessionEnded { .. } => None,
        }
    }

    /// True if a watch on `name` (or on names starting with it, with `prefix`) wants it.
    pub fn matches(&self, name: &str, prefix: bool) -> bool {
        match self.name() {
            Some(n) if prefix => n.starts_with(name),
            Some(n) => n == name,
            None => false,
        }
    }
}

/// The history and the live feed.
pub struct EventLog {
    ring: VecDeque<Arc<Watched>>,
    /// The first sequence number this node can still serve.
    available_from: u64,
    /// `None` once the node stopped: live watchers see the feed close.
    tx: Option<broadcast::Sender<Arc<Watched>>>,
}

/// Shared handle to the event log.
pub type SharedLog = Arc<Mutex<EventLog>>;

impl EventLog {
    /// An empty log whose next event will be `next_seq`.
    pub fn new(next_seq: u64) -> SharedLog {
        let (tx, _) = broadcast::channel(16_384);
        Arc::new(Mutex::new(EventLog { ring: VecDeque::new(), available_from: next_seq, tx: Some(tx) }))
    }

    /// Records an applied event and hands it to live watchers.
    pub fn push(&mut self, w: Watched) {
        if let Some(last) = self.ring.back() {
            if w.seq <= last.seq {
                return; // re-applied after a restart: already recorded
            }
        }
        let w = Arc::new(w);
        if self.ring.len() == HISTORY {
            self.ring.pop_front();
            self.available_from = self.ring.front().map_or(w.seq, |f| f.seq);
        }
        if self.ring.is_empty() && w.seq > self.available_from {
            self.available_from = w.seq;
        }
        self.ring.push_back(w.clone());
        if let Some(tx) = &self.tx {
            let _ = tx.send(w);
        }
    }

    /// The node stopped: end every live watch (its clients resume elsewhere).
    pub fn close(&mut self) {
        self.tx = None;
    }

    /// The state machine was replaced by a snapshot: events up to `event_seq` will never be seen.
    pub fn reset(&mut self, event_seq: u64) {
        self.ring.clear();
        self.available_from = event_seq + 1;
    }

    /// The sequence number of the last event recorded (or before the first available).
    pub fn last_seq(&self) -> u64 {
        self.ring.back().map_or(self.available_from.saturating_sub(1), |w| w.seq)
    }

    /// Subscribes from `start_seq` (0: only new events). Returns the kept events from there on and
    /// the live feed, or the first sequence number still available.
    #[allow(clippy::type_complexity)]
    pub fn subscribe(&self, start_seq: u64) -> Result<(Vec<Arc<Watched>>, broadcast::Receiver<Arc<Watched>>), u64> {
        let rx = match &self.tx {
            Some(tx) => tx.subscribe(),
            // Stopped: a receiver whose sender is gone reports Closed at once.
            None => broadcast::channel(1).1,
        };
        if start_seq == 0 {
            return Ok((Vec::new(), rx));
        }
        if start_seq < self.available_from {
            return Err(self.available_from);
        }
        let kept = self.ring.iter().filter(|w| w.seq >= start_seq).cloned().collect();
        Ok((kept, rx))
    }
}

/// The wire form of an event.
pub fn to_proto(w: &Watched) -> baton_proto::v1::WatchEvent {
    use baton_core::WaitEnd;
    let mut e = baton_proto::v1::WatchEvent {
        seq: w.seq,
        hlc_physical_ms: w.hlc.physical_ms,
        hlc_logical: w.hlc.logical,
        name: w.name().unwrap_or_default().to_string(),
        ..Default::default()
    };
    match &w.event {
        Event::Granted { session, request_id, token, .. } => {
            (e.r#type, e.session_id, e.request_id, e.token) = ("granted".into(), *session, *request_id, *token)
        }
        Event::Queued { session, request_id, .. } => {
            (e.r#type, e.session_id, e.request_id) = ("queued".into(), *session, *request_id)
        }
        Event::WaitEnded { session, request_id, how, .. } => {
            let reason = match how {
                WaitEnd::TimedOut => "timed_out",
                WaitEnd::SessionEnded => "session_ended",
                WaitEnd::Cancelled => "cancelled",
            };
            (e.r#type, e.session_id, e.request_id, e.reason) =
                ("wait_ended".into(), *session, *request_id, reason.into())
        }
        Event::Released { session, token, expired, .. } => {
            let kind = if *expired { "expired" } else { "released" };
            (e.r#type, e.session_id, e.token) = (kind.into(), *session, *token)
        }
        Event::CounterChanged { value, .. } => (e.r#type, e.counter_value) = ("counter_changed".into(), *value),
        Event::LeaderChanged { session, token, value, .. } => {
            (e.r#type, e.session_id, e.token, e.value) = ("leader".into(), *session, *token, value.clone())
        }
        Event::RegisterChanged { version, .. } => (e.r#type, e.version) = ("register_changed".into(), *version),
        Event::SessionOpened { session, .. } => (e.r#type, e.session_id) = ("session_opened".into(), *session),
        Event::SessionEnded { session, .. } => (e.r#type, e.session_id) = ("session_ended".into(), *session),
    }
    e
}
