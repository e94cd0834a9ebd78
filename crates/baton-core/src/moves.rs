//! Moving a slot range from one data group to another, as two replicated steps.
//!
//! 1. [`crate::Command::HandOff`] in the source group: from the entry on, the source no longer
//!    serves the range (every later command on those names is refused with
//!    [`crate::Error::NotOwned`]), and everything it knew about them leaves its state in one
//!    [`SlotBundle`]: locks with their holders, queues and lock-delays, wait deadlines, counters,
//!    latches, registers, the records of the sessions that hold or wait for them (with the
//!    outcomes those sessions remember for retries), and the source's token and version counters.
//! 2. [`crate::Command::TakeOver`] in the destination group, carrying the bundle: the destination
//!    serves the range from that entry on, with that state. Its token counter is raised to at
//!    least the source's, so every token issued for a moved name after the move is above every
//!    token issued before it: fencing tokens stay strictly increasing per name across the move.
//!
//! Between the two steps nobody serves the range: requests are refused (not lost) and clients
//! retry after the map changes. Both steps are idempotent per `move_id`, so whoever drives the
//! move (see the meta group) can repeat a step whose outcome it did not see: the source answers
//! a repeated hand-off with the bundle it made the first time (it keeps the last few), the
//! destination answers a repeated take-over as done.
//!
//! # Time
//! Each group's state-machine clock is its own (leader times rebased at each election), so
//! times in the bundle are kept relative to the source's clock at the hand-off and rebased onto
//! the destination's at the take-over. A wait deadline or lock-delay therefore stretches by the
//! time between the two steps, never shrinks. Sessions get a record in the destination if they
//! had none, and the destination's leader gives each a full TTL from the take-over, as after a
//! failover; the source's record of each such session notes the destination (`moved_to`), so
//! that the client, which renews at every node, learns where its names went.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::command::{Event, Outcome, SessionId, Token};
use crate::error::{Error, Result};
use crate::queue::LockState;
use crate::slots::{slot_of, Slot};
use crate::state::{Recent, Session, StateMachine, Timer};
use crate::value::Register;

/// How many hand-offs a group keeps the bundle of, to answer a repeated one as the first. Moves
/// run one at a time in move-id order, so only the latest can still be pending; older repeats
/// are told apart by the highest move id handed off (or taken over) so far.
const MOVES_KEPT: usize = 2;

/// A session's part of a moved range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedSession {
    /// The client that owns the session.
    pub client: String,
    /// Its TTL.
    pub ttl_ms: u64,
    /// The moved names it holds or waits for.
    pub owned: Vec<String>,
    /// The outcomes it remembers for requests on moved names.
    pub(crate) recent: Vec<Recent>,
    /// Its retry window's lower edge (see `Session::forgotten_up_to`).
    pub(crate) forgotten_up_to: Option<u64>,
}

/// Everything a source group knew about a slot range, handed to the destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotBundle {
    /// Identifies the move (chosen by whoever drives it; unique per cluster).
    pub move_id: u64,
    /// First slot of the range.
    pub start: Slot,
    /// Last slot of the range.
    pub end: Slot,
    /// The source group.
    pub from: u64,
    /// The destination group.
    pub to: u64,
    /// The source's last fencing token.
    pub token_floor: Token,
    /// The source's last register version.
    pub version_floor: u64,
    /// The source's state-machine clock at the hand-off: the bundle's times are on it.
    pub source_now_ms: u64,
    pub(crate) locks: Vec<(String, LockState)>,
    /// Timers of moved names.
    pub(crate) timers: Vec<Timer>,
    pub(crate) counters: Vec<(String, i64)>,
    pub(crate) latches: Vec<(String, u64)>,
    pub(crate) registers: Vec<(String, Register)>,
    pub(crate) sessions: Vec<(SessionId, MovedSession)>,
}

impl SlotBundle {
    /// How many names the bundle carries.
    pub fn names(&self) -> usize {
        self.locks.len() + self.counters.len() + self.latches.len() + self.registers.len()
    }
}

/// A time on the clock that reads `from` now, moved onto the clock that reads `to` now.
fn rebase_time(t: u64, from: u64, to: u64) -> u64 {
    if t >= from {
        to.saturating_add(t - from)
    } else {
        to.saturating_sub(from - t)
    }
}

/// Moves every time in a resource from one clock to another.
fn rebase(lock: &mut LockState, from: u64, to: u64) {
    let shift = |t: &mut u64| *t = rebase_time(*t, from, to);
    for h in &mut lock.holders {
        shift(&mut h.granted_ms);
    }
    for w in &mut lock.waiters {
        shift(&mut w.deadline_ms);
        shift(&mut w.queued_ms);
    }
    shift(&mut lock.closed_until_ms);
}

impl StateMachine {
    /// The source's step: stop serving `start..=end` and take its state out.
    pub(crate) fn hand_off(
        &mut self,
        move_id: u64,
        start: Slot,
        end: Slot,
        to: u64,
        events: &mut Vec<Event>,
    ) -> Result<Outcome> {
        if let Some(b) = self.handoffs.iter().find(|b| b.move_id == move_id) {
            return Ok(Outcome::HandedOff { bundle: Box::new(b.clone()) });
        }
        if move_id <= self.last_handoff {
            // A late repeat from a deposed driver, of a move that finished long ago: applying
            // it would hand the range off again with nobody to take it over.
            return Err(Error::InvalidArgument(format!(
                "move {move_id} is older than group {}'s last hand-off (move {}): it finished already",
                self.group, self.last_handoff
            )));
        }
        if to == self.group || to == crate::topology::META_GROUP {
            return Err(Error::InvalidArgument(format!("group {} cannot hand slots to group {to}", self.group)));
        }
        if !self.slots.contains_range(start, end) {
            return Err(Error::InvalidArgument(format!(
                "group {} does not serve every slot of {start}-{end} (it serves {:?})",
                self.group, self.slots
            )));
        }
        let moving = |name: &str| (start..=end).contains(&slot_of(name));
        let now = self.now_ms;
        let mut bundle = SlotBundle {
            move_id,
            start,
            end,
            from: self.group,
            to,
            token_floor: self.last_token,
            version_floor: self.last_version,
            source_now_ms: now,
            locks: Vec::new(),
            timers: Vec::new(),
            counters: Vec::new(),
            latches: Vec::new(),
            registers: Vec::new(),
            sessions: Vec::new(),
        };
        let names: Vec<String> = self.locks.keys().filter(|n| moving(n)).cloned().collect();
        for name in names {
            let lock = self.locks.remove(&name).expect("listed");
            bundle.locks.push((name, lock));
        }
        let timers: Vec<Timer> = self.timers.iter().filter(|t| moving(&t.name)).cloned().collect();
        for t in timers {
            self.timers.remove(&t);
            bundle.timers.push(t);
        }
        bundle.counters = take_matching(&mut self.counters, moving);
        bundle.latches = take_matching(&mut self.latches, moving);
        bundle.registers = take_matching(&mut self.registers, moving);
        let mut gone: Vec<(String, u64)> = Vec::new();
        for (id, s) in self.sessions.iter_mut() {
            let owned: Vec<String> = s.owned.iter().filter(|n| moving(n)).map(String::from).collect();
            let recent: Vec<Recent> = s.recent.iter().filter(|r| moving(&r.name)).cloned().collect();
            if owned.is_empty() && recent.is_empty() {
                continue;
            }
            for n in &owned {
                s.owned.remove(n);
            }
            gone.push((s.client.clone(), owned.len() as u64));
            // The destination gets a record: the client must learn of it (and renew it there).
            s.moved_to.insert(to);
            let moved = MovedSession {
                client: s.client.clone(),
                ttl_ms: s.ttl_ms,
                owned,
                recent,
                forgotten_up_to: s.forgotten_up_to,
            };
            bundle.sessions.push((*id, moved));
        }
        for (client, count) in gone {
            self.count_names(&client, count, false);
        }
        if !self.bugs.handoff_keeps_serving {
            self.slots.remove_range(start, end);
        }
        self.last_handoff = move_id;
        self.handoffs.push_back(bundle.clone());
        if self.handoffs.len() > MOVES_KEPT {
            self.handoffs.pop_front();
        }
        events.push(Event::SlotsMoved { start, end, from: self.group, to });
        Ok(Outcome::HandedOff { bundle: Box::new(bundle) })
    }

    /// The destination's step: serve the bundle's range with its state.
    pub(crate) fn take_over(&mut self, index: u64, bundle: &SlotBundle, events: &mut Vec<Event>) -> Result<Outcome> {
        if bundle.move_id <= self.last_takeover {
            // A repeated take-over (its driver did not see the first answer), or a late repeat
            // of an older move (moves run in move-id order): done already.
            return Ok(Outcome::TookOver { names: bundle.names() as u64 });
        }
        if bundle.to != self.group {
            return Err(Error::InvalidArgument(format!(
                "slots {}-{} were handed to group {}, not to group {}",
                bundle.start, bundle.end, bundle.to, self.group
            )));
        }
        if (bundle.start..=bundle.end).any(|s| self.slots.contains(s)) {
            return Err(Error::InvalidArgument(format!(
                "group {} already serves some of slots {}-{}",
                self.group, bundle.start, bundle.end
            )));
        }
        let now = self.now_ms;
        if !self.bugs.takeover_ignores_token_floor {
            self.last_token = self.last_token.max(bundle.token_floor);
        }
        self.last_version = self.last_version.max(bundle.version_floor);
        // Sessions whose home is this group and that are gone here: expired or closed. They
        // must not come back with the moved names; what they held is released below.
        let mut gone = Vec::new();
        for (id, moved) in &bundle.sessions {
            if let Some(s) = self.sessions.get_mut(id) {
                // The leader gives the record a full TTL from here, as the client counts it.
                s.refreshed_at = index;
                events.push(Event::SessionRefreshed { session: *id, ttl_ms: s.ttl_ms });
            } else if self.is_home_of(*id) {
                gone.push(*id);
                continue;
            } else {
                // A record like an attach's: the client renews it at every node it talks to.
                self.sessions.insert(
                    *id,
                    Box::new(Session {
                        client: moved.client.clone(),
                        ttl_ms: moved.ttl_ms,
                        owned: crate::NameSet::new(),
                        recent: VecDeque::new(),
                        forgotten_up_to: None,
                        open_request: 0,
                        moved_to: BTreeSet::new(),
                        refreshed_at: index,
                    }),
                );
                *self.sessions_per_client.entry(moved.client.clone()).or_insert(0) += 1;
                events.push(Event::SessionOpened { session: *id, ttl_ms: moved.ttl_ms });
            }
            let s = self.sessions.get_mut(id).expect("present");
            let before = s.owned.len();
            s.owned.extend(moved.owned.iter().map(String::as_str));
            let (client, added) = (s.client.clone(), (s.owned.len() - before) as u64);
            self.count_names(&client, added, true);
            let s = self.sessions.get_mut(id).expect("present");
            s.recent.extend(moved.recent.iter().cloned());
            s.forgotten_up_to = s.forgotten_up_to.max(moved.forgotten_up_to);
            crate::state::trim_recent(s);
        }
        for (name, lock) in &bundle.locks {
            let mut lock = lock.clone();
            rebase(&mut lock, bundle.source_now_ms, now);
            self.locks.insert(name.clone(), lock);
        }
        for t in &bundle.timers {
            let mut t = t.clone();
            t.at_ms = rebase_time(t.at_ms, bundle.source_now_ms, now);
            self.timers.insert(t);
        }
        self.counters.extend(bundle.counters.iter().cloned());
        self.latches.extend(bundle.latches.iter().cloned());
        self.registers.extend(bundle.registers.iter().cloned());
        self.slots.insert_range(bundle.start, bundle.end);
        for id in gone {
            let moved = &bundle.sessions.iter().find(|(s, _)| *s == id).expect("listed").1;
            for name in &moved.owned {
                self.drop_ownership(name, id, crate::command::SessionEnd::Expired, events);
            }
        }
        self.last_takeover = bundle.move_id;
        events.push(Event::SlotsMoved { start: bundle.start, end: bundle.end, from: bundle.from, to: bundle.to });
        Ok(Outcome::TookOver { names: bundle.names() as u64 })
    }
}

fn take_matching<V>(map: &mut BTreeMap<String, V>, moving: impl Fn(&str) -> bool) -> Vec<(String, V)> {
    let names: Vec<String> = map.keys().filter(|n| moving(n)).cloned().collect();
    names.into_iter().map(|n| map.remove_entry(&n).expect("listed")).collect()
}
