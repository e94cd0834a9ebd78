//! Watches: a bounded in-memory history of the events this node applied, per group, and live
//! fan-out.
//!
//! Events carry their group's sequence number, which is the same on every replica, so a watcher
//! that reconnects — to this node or another — resumes with `start_seq = last seen + 1` (per
//! group) and misses and repeats nothing. A node keeps [`HISTORY`] events in all, shared evenly by
//! its groups (at least [`MIN_HISTORY`] each: the history must not grow with the group count);
//! asking for older ones (or for events from before this node restarted or installed a snapshot)
//! is `OUT_OF_RANGE`: the watcher must read the current state and watch from the sequence number
//! the error names.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use baton_core::{Event, Hlc};
use tokio::sync::broadcast;

/// Events a node keeps for resuming watchers, over all its groups.
pub const HISTORY: usize = 100_000;
/// Events kept per group, however many groups share [`HISTORY`].
pub const MIN_HISTORY: usize = 10_000;

/// One applied event.
#[derive(Clone, Debug)]
pub struct Watched {
    /// The group that applied it.
    pub group: u64,
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
            Event::SessionOpened { .. }
            | Event::SessionRefreshed { .. }
            | Event::SessionEnded { .. }
            | Event::SlotsMoved { .. }
            | Event::TopologyChanged { .. } => None,
        }
    }

    /// True if a watch on `name` (or on names starting with it, with `prefix`) wants it. A slot
    /// move is for every watcher of a name whose slot moved (and for every prefix watcher): the
    /// name's events continue in the other group's sequence.
    pub fn matches(&self, name: &str, prefix: bool) -> bool {
        match (&self.event, self.name()) {
            (Event::SlotsMoved { start, end, .. }, _) => prefix || (*start..=*end).contains(&baton_core::slot_of(name)),
            (_, Some(n)) if prefix => n.starts_with(name),
            (_, Some(n)) => n == name,
            (_, None) => false,
        }
    }
}

/// The history and the live feed.
pub struct EventLog {
    ring: VecDeque<Arc<Watched>>,
    /// Most events kept (the group's share of [`HISTORY`]).
    cap: usize,
    /// The first sequence number this node can still serve.
    available_from: u64,
    /// `None` once the node stopped: live watchers see the feed close.
    tx: Option<broadcast::Sender<Arc<Watched>>>,
}

/// Every group's event log on this node.
#[derive(Default)]
pub struct EventLogs {
    logs: BTreeMap<u64, EventLog>,
    closed: bool,
}

/// Shared handle to the event logs.
pub type SharedLog = Arc<Mutex<EventLogs>>;

impl EventLogs {
    /// Logs for groups whose next events will be these: (group, next seq).
    pub fn new(groups: impl IntoIterator<Item = (u64, u64)>) -> SharedLog {
        let logs = groups.into_iter().map(|(g, next)| (g, EventLog::new(next))).collect();
        let mut logs = EventLogs { logs, closed: false };
        logs.share_history();
        Arc::new(Mutex::new(logs))
    }

    /// The log of `group` (created empty, starting at seq 1, if the node did not have it).
    pub fn group(&mut self, group: u64) -> &mut EventLog {
        if !self.logs.contains_key(&group) {
            let mut log = EventLog::new(1);
            if self.closed {
                log.close();
            }
            self.logs.insert(group, log);
            self.share_history();
        }
        self.logs.get_mut(&group).expect("inserted")
    }

    /// Gives every group its share of [`HISTORY`].
    fn share_history(&mut self) {
        let cap = (HISTORY / self.logs.len().max(1)).max(MIN_HISTORY);
        for log in self.logs.values_mut() {
            log.cap = cap;
        }
    }

    /// The groups with a log, in id order.
    pub fn groups(&self) -> Vec<u64> {
        self.logs.keys().copied().collect()
    }

    /// The node stopped: end every live watch.
    pub fn close(&mut self) {
        self.closed = true;
        for log in self.logs.values_mut() {
            log.close();
        }
    }
}

impl EventLog {
    /// An empty log whose next event will be `next_seq`.
    pub fn new(next_seq: u64) -> EventLog {
        let (tx, _) = broadcast::channel(16_384);
        EventLog { ring: VecDeque::new(), cap: HISTORY, available_from: next_seq, tx: Some(tx) }
    }

    /// Records an applied event and hands it to live watchers.
    pub fn push(&mut self, w: Watched) {
        if let Some(last) = self.ring.back() {
            if w.seq <= last.seq {
                return; // re-applied after a restart: already recorded
            }
        }
        let w = Arc::new(w);
        while self.ring.len() >= self.cap {
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

    /// The latest `limit` kept events about `name` (oldest first), and the oldest sequence
    /// number kept.
    pub fn about(&self, name: &str, limit: usize) -> (Vec<Arc<Watched>>, u64) {
        let mut found: Vec<Arc<Watched>> =
            self.ring.iter().rev().filter(|w| w.name() == Some(name)).take(limit).cloned().collect();
        found.reverse();
        (found, self.available_from)
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
        group: w.group,
        seq: w.seq,
        hlc_physical_ms: w.hlc.physical_ms,
        hlc_logical: w.hlc.logical,
        name: w.name().unwrap_or_default().to_string(),
        ..Default::default()
    };
    match &w.event {
        Event::Granted { session, request_id, token, kind, waited_ms, .. } => {
            (e.r#type, e.session_id, e.request_id, e.token) = ("granted".into(), *session, *request_id, *token);
            (e.kind, e.waited_ms, e.handoff) =
                (crate::obs::kind_label(*kind).into(), waited_ms.unwrap_or(0), waited_ms.is_some());
        }
        Event::Queued { session, request_id, kind, .. } => {
            (e.r#type, e.session_id, e.request_id) = ("queued".into(), *session, *request_id);
            e.kind = crate::obs::kind_label(*kind).into();
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
        Event::Released { session, token, expired, kind, held_ms, .. } => {
            let how = if *expired { "expired" } else { "released" };
            (e.r#type, e.session_id, e.token) = (how.into(), *session, *token);
            (e.kind, e.held_ms) = (crate::obs::kind_label(*kind).into(), *held_ms);
        }
        Event::CounterChanged { value, .. } => (e.r#type, e.counter_value) = ("counter_changed".into(), *value),
        Event::LeaderChanged { session, token, value, .. } => {
            (e.r#type, e.session_id, e.token, e.value) = ("leader".into(), *session, *token, value.clone())
        }
        Event::RegisterChanged { version, .. } => (e.r#type, e.version) = ("register_changed".into(), *version),
        Event::SessionOpened { session, .. } => (e.r#type, e.session_id) = ("session_opened".into(), *session),
        Event::SessionEnded { session, .. } => (e.r#type, e.session_id) = ("session_ended".into(), *session),
        Event::SessionRefreshed { session, .. } => (e.r#type, e.session_id) = ("session_refreshed".into(), *session),
        Event::TopologyChanged { version } => (e.r#type, e.version) = ("topology_changed".into(), *version),
        Event::SlotsMoved { start, end, from, to } => {
            (e.r#type, e.slot_start, e.slot_end, e.from_group, e.to_group) =
                ("slots_moved".into(), *start as u32, *end as u32, *from, *to)
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(group: u64, seq: u64) -> Watched {
        Watched {
            group,
            seq,
            hlc: Hlc::default(),
            event: Event::CounterChanged { name: "c".into(), value: seq as i64 },
        }
    }

    /// Regression (issue 10's memory run): every group kept `HISTORY` events, so twelve groups
    /// kept twelve times the history. The groups share it now, down to `MIN_HISTORY` each.
    #[test]
    fn the_groups_share_the_history() {
        let logs = EventLogs::new((1..=12).map(|g| (g, 1)));
        let mut logs = logs.lock().unwrap();
        for g in 1..=12 {
            for seq in 1..=(MIN_HISTORY as u64 + 500) {
                logs.group(g).push(event(g, seq));
            }
        }
        for g in 1..=12 {
            let log = logs.group(g);
            assert_eq!(log.ring.len(), MIN_HISTORY);
            assert_eq!(log.subscribe(1).err(), Some(501), "the oldest kept is named");
            assert_eq!(log.subscribe(501).map(|(kept, _)| kept.len()).ok(), Some(MIN_HISTORY));
        }
        // One group alone keeps all of it; a group added later shrinks the others' share.
        let logs = EventLogs::new([(1, 1)]);
        let mut logs = logs.lock().unwrap();
        for seq in 1..=(HISTORY as u64) {
            logs.group(1).push(event(1, seq));
        }
        assert_eq!(logs.group(1).ring.len(), HISTORY);
        logs.group(2).push(event(2, 1));
        logs.group(1).push(event(1, HISTORY as u64 + 1));
        assert_eq!(logs.group(1).ring.len(), HISTORY / 2);
    }
}
