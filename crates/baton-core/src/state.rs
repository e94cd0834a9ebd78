//! The replicated state: sessions, locks, timers, the token counter; and the one `apply`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::bugs::Bugs;
use crate::command::{Command, Entry, Event, Outcome, SessionEnd, SessionId, Token, WaitEnd};
use crate::error::{Error, Result};
use crate::hlc::Hlc;
use crate::limits::Limits;
use crate::queue::LockState;
use crate::slots::{slot_of, SlotSet};
use crate::topology::Topology;
use crate::value::Register;

/// Session ids carry their home group: its id less one in the top 16 bits, the log index of the
/// open in the rest (so a single-group cluster's ids are plain log indexes).
const SESSION_INDEX_BITS: u32 = 48;

/// How many completed requests a session remembers for idempotent retries.
pub(crate) const RECENT_PER_SESSION: usize = 16;

/// A client's session: the lease every lock it holds hangs on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The client that opened it (sessions per client are limited).
    pub client: String,
    /// Time to live after the last keepalive, in milliseconds.
    pub ttl_ms: u64,
    /// Names of the locks this session holds or waits for.
    pub owned: crate::NameSet,
    /// Requests that finished without holding the lock now, for idempotent retries.
    pub(crate) recent: VecDeque<Recent>,
    /// The highest request id pushed out of `recent`: a request at or below it that is neither
    /// held, queued nor remembered is a retry whose outcome was forgotten, and is refused
    /// (request ids grow per client, so a new request is always above it).
    pub(crate) forgotten_up_to: Option<u64>,
    /// The request id that opened the session (0: none), for idempotent opens.
    pub(crate) open_request: u64,
    /// Groups that names of this session were moved to (see [`crate::moves`]): keepalive
    /// answers tell the client, which must renew the session there too.
    pub moved_to: BTreeSet<u64>,
    /// The log index of the last entry that gave this record a full TTL after its open (an
    /// attach, a slot move's take-over): an expiry judged before it does not apply.
    pub(crate) refreshed_at: u64,
}

/// A finished acquire request remembered by its session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recent {
    pub request_id: u64,
    pub name: String,
    pub result: RecentResult,
}

/// How a remembered request finished.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecentResult {
    NotAvailable {
        holder: Option<SessionId>,
    },
    WaitEnded(WaitEnd),
    Released {
        token: Token,
    },
    /// A barrier or latch wait that passed.
    Passed {
        token: Token,
    },
}

/// A point in state machine time at which something must happen.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timer {
    pub at_ms: u64,
    pub name: String,
    pub kind: TimerKind,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TimerKind {
    /// A waiter's deadline.
    WaitDeadline { session: SessionId, request_id: u64 },
    /// The end of a lock-delay.
    DelayEnd,
}

/// The whole replicated state of one group. Pure: no I/O, no clock, no randomness.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMachine {
    pub(crate) limits: Limits,
    /// The group this state machine replicates (session ids are unique across groups by it).
    pub(crate) group: u64,
    /// The slots whose names this group serves: a command on any other name is refused.
    pub(crate) slots: SlotSet,
    /// The meta group only: the cluster's layout.
    pub(crate) topology: Option<Topology>,
    /// The last hand-offs made, to answer a repeated one with the same bundle.
    pub(crate) handoffs: VecDeque<crate::moves::SlotBundle>,
    /// The topology version of the group's last membership change (for its leader: a target
    /// from an older topology is not acted on).
    pub(crate) membership_version: u64,
    /// The highest move id this group handed off, and took over: moves run one at a time in
    /// move-id order, so a repeat of an older step is a late duplicate (see [`crate::moves`]).
    pub(crate) last_handoff: u64,
    pub(crate) last_takeover: u64,
    /// The maximum leader time seen in any applied entry.
    pub(crate) now_ms: u64,
    /// The log index of the last applied entry.
    pub(crate) applied_index: u64,
    /// The last fencing token issued (tokens are group-wide, hence strictly increasing per name).
    pub(crate) last_token: Token,
    /// Boxed: a B-tree node holds eleven entries and is often half full, so a record inline
    /// would cost its size twice over (sessions are the most numerous objects of a sharded
    /// cluster: one record per group a session uses). Serialised as the records themselves.
    pub(crate) sessions: BTreeMap<SessionId, Box<Session>>,
    pub(crate) sessions_per_client: BTreeMap<String, u32>,
    /// Live sessions by the (client, request id) that opened them, for idempotent opens.
    pub(crate) opens: BTreeMap<(String, u64), SessionId>,
    pub(crate) locks: BTreeMap<String, LockState>,
    pub(crate) timers: BTreeSet<Timer>,
    pub(crate) counters: BTreeMap<String, i64>,
    pub(crate) latches: BTreeMap<String, u64>,
    pub(crate) registers: BTreeMap<String, Register>,
    /// The last register version issued (versions never repeat).
    pub(crate) last_version: u64,
    /// Sequence number of the last event emitted.
    pub(crate) event_seq: u64,
    /// Timestamp of the last event emitted.
    pub(crate) hlc: Hlc,
    /// The etcd keyspace: present in its own group only (see [`crate::etcd`]). Last, so that
    /// a snapshot written before it existed reads as one without it (see
    /// [`StateMachine::from_snapshot`]).
    pub(crate) etcd: Option<Box<crate::etcd::EtcdStore>>,
    /// The meta group only: users, roles and permissions (see [`crate::auth`]). `None` in a meta
    /// group made before they existed, until the first change.
    pub(crate) auth: Option<Box<crate::auth::AuthState>>,
    /// Deliberate bugs (simulator only; never replicated, never in a snapshot).
    #[serde(skip)]
    pub(crate) bugs: Bugs,
    /// Names held or awaited per user (the owner of a session's client id, see
    /// [`crate::command::session_owner`]) over its sessions here: derived from `sessions`, kept
    /// as they change and rebuilt after a snapshot is read, for the users' quotas.
    #[serde(skip)]
    pub(crate) names_per_user: BTreeMap<String, u64>,
}

/// The first bytes of a state machine snapshot of the current layout: a version, so that the
/// next layout change is recognised by it instead of by trying older layouts. (No older layout
/// can start with it: their first eight bytes are a small limit.)
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"BTNSM\x00\x00\x02";
/// The first layout with a magic: its users and roles had no quotas yet.
const SNAPSHOT_MAGIC_V1: [u8; 8] = *b"BTNSM\x00\x00\x01";
/// What the users and roles of a [`SNAPSHOT_MAGIC_V1`] snapshot lack at their end, as bincode
/// writes them empty: no user's own quota (a zero length) and a default quota of zeros.
const V1_AUTH_PADDING: usize = 8 + 12;

impl Default for StateMachine {
    fn default() -> Self {
        StateMachine::new(Limits::default())
    }
}

impl StateMachine {
    /// An empty state machine with the given limits: group 1, serving every slot (a
    /// single-group cluster, and the tests).
    pub fn new(limits: Limits) -> Self {
        StateMachine::for_group(limits, 1, SlotSet::all())
    }

    /// An empty state machine of data group `group` serving `slots`.
    pub fn for_group(limits: Limits, group: u64, slots: SlotSet) -> Self {
        StateMachine {
            limits,
            group,
            slots,
            topology: None,
            handoffs: VecDeque::new(),
            last_handoff: 0,
            last_takeover: 0,
            membership_version: 0,
            now_ms: 0,
            applied_index: 0,
            last_token: 0,
            sessions: BTreeMap::new(),
            sessions_per_client: BTreeMap::new(),
            opens: BTreeMap::new(),
            locks: BTreeMap::new(),
            timers: BTreeSet::new(),
            counters: BTreeMap::new(),
            latches: BTreeMap::new(),
            registers: BTreeMap::new(),
            last_version: 0,
            event_seq: 0,
            hlc: Hlc::default(),
            etcd: None,
            auth: None,
            bugs: Bugs::default(),
            names_per_user: BTreeMap::new(),
        }
    }

    /// The topology version of the group's last applied membership change.
    pub fn membership_version(&self) -> u64 {
        self.membership_version
    }

    /// A membership change made for topology `version` was applied (Raft conf changes are
    /// applied outside `apply`; the version travels in their context).
    pub fn observe_membership_version(&mut self, version: u64) {
        self.membership_version = self.membership_version.max(version);
    }

    /// The meta group's state machine: no slots, the cluster's layout.
    pub fn meta(limits: Limits, topology: Topology) -> Self {
        let mut sm = StateMachine::for_group(limits, crate::topology::META_GROUP, SlotSet::empty());
        sm.topology = Some(topology);
        sm
    }

    /// The group this state machine replicates.
    pub fn group(&self) -> u64 {
        self.group
    }

    /// The slots this group serves.
    pub fn slots(&self) -> &SlotSet {
        &self.slots
    }

    /// The cluster's layout (the meta group only).
    pub fn topology(&self) -> Option<&Topology> {
        self.topology.as_ref()
    }

    fn topology_mut(&mut self) -> Result<&mut Topology> {
        let group = self.group;
        self.topology
            .as_mut()
            .ok_or_else(|| Error::InvalidArgument(format!("group {group} is not the meta group: it has no slot map")))
    }

    fn begin_move(&mut self, index: u64, start: u16, end: u16, to: u64, events: &mut Vec<Event>) -> Result<Outcome> {
        let t = self.topology_mut()?;
        t.begin_move(index, start, end, to).map_err(Error::InvalidArgument)?;
        let version = t.version;
        events.push(Event::TopologyChanged { version });
        Ok(Outcome::MoveBegun { move_id: index, version })
    }

    fn change_members(
        &mut self,
        events: &mut Vec<Event>,
        change: impl FnOnce(&mut Topology) -> std::result::Result<bool, String>,
    ) -> Result<Outcome> {
        let t = self.topology_mut()?;
        let changed = change(t).map_err(Error::InvalidArgument)?;
        let version = t.version;
        if changed {
            events.push(Event::TopologyChanged { version });
        }
        Ok(Outcome::MembersChanged { changed, version })
    }

    fn finish_move(&mut self, move_id: u64, events: &mut Vec<Event>) -> Result<Outcome> {
        let t = self.topology_mut()?;
        let finished = t.finish_move(move_id);
        let version = t.version;
        if finished {
            events.push(Event::TopologyChanged { version });
        }
        Ok(Outcome::MoveFinished { finished, version })
    }

    /// Refuses a name this group does not serve.
    pub fn check_owned(&self, name: &str) -> Result<()> {
        let slot = slot_of(name);
        if self.slots.contains(slot) {
            Ok(())
        } else {
            Err(Error::NotOwned { name: name.to_string(), slot, group: self.group })
        }
    }

    /// The id of a session opened by the entry at `index` of this group.
    pub(crate) fn session_id(&self, index: u64) -> Result<SessionId> {
        if index >> SESSION_INDEX_BITS != 0 || self.group == 0 || self.group > 1 << 16 {
            return Err(Error::LimitExceeded(format!(
                "group {} cannot open sessions (log index {index}): open it in another group",
                self.group
            )));
        }
        Ok(((self.group - 1) << SESSION_INDEX_BITS) | index)
    }

    /// Turns deliberate bugs on (see [`Bugs`]); for the simulator's broken variants only.
    pub fn set_bugs(&mut self, bugs: Bugs) {
        self.bugs = bugs;
    }

    /// The `token_reset_on_restart` bug: forget the token counter.
    pub fn bug_reset_tokens(&mut self) {
        self.last_token = 0;
    }

    /// Applies the entry at log `index`. On error nothing changed but the clock and the
    /// applied index; events are appended to `events` in the order they happened.
    pub fn apply(&mut self, index: u64, entry: &Entry, events: &mut Vec<Event>) -> Result<Outcome> {
        debug_assert!(index > self.applied_index, "entry {index} applied twice");
        self.applied_index = index;
        self.now_ms = self.now_ms.max(entry.leader_time_ms);
        // Timers due by now fire before the command, so that no command can, say, grant a lock
        // to a waiter whose deadline has passed but whose Tick has not been applied yet.
        self.run_timers(events);
        if let Some(name) = entry.command.name() {
            self.check_owned(name)?;
        }
        if let Some(user) = &entry.user {
            self.check_user(user, &entry.command)?;
            self.check_quota(user, &entry.quota, &entry.command)?;
        }
        match &entry.command {
            Command::OpenSession { client, ttl_ms, request_id } => {
                self.open_session(index, client, *ttl_ms, *request_id, events)
            }
            Command::AttachSession { session, client, ttl_ms } => {
                self.attach_session(index, *session, client, *ttl_ms, events)
            }
            Command::CloseSession { session } => self.close_session(*session, events),
            Command::HandOff { move_id, start, end, to } => self.hand_off(*move_id, *start, *end, *to, events),
            Command::TakeOver { bundle } => self.take_over(index, bundle, events),
            Command::BeginMove { start, end, to } => self.begin_move(index, *start, *end, *to, events),
            Command::FinishMove { move_id } => self.finish_move(*move_id, events),
            Command::AddNode { id, peer_addr, client_addr } => {
                let addrs =
                    crate::topology::NodeAddrs { peer_addr: peer_addr.clone(), client_addr: client_addr.clone() };
                self.change_members(events, |t| t.add_node(*id, addrs))
            }
            Command::RemoveNode { id } => self.change_members(events, |t| t.remove_node(*id)),
            Command::ExpireSessions { sessions, as_of } => Ok(self.expire_sessions(sessions, *as_of, events)),
            Command::Acquire(req) => self.acquire(req, events),
            Command::Release { name, session, token } => self.release(name, *session, *token, events),
            Command::Cancel { name, session, request_id } => self.cancel(name, *session, *request_id, events),
            Command::Tick => Ok(Outcome::Ticked),
            Command::Proclaim { name, session, token, value } => self.proclaim(name, *session, *token, value, events),
            Command::LatchSet { name, count } => self.latch_set(name, *count),
            Command::LatchCountDown { name } => self.latch_count_down(name, events),
            Command::CounterAdd { name, delta } => self.counter_add(name, *delta, events),
            Command::CounterCas { name, expected, new } => self.counter_cas(name, *expected, *new, events),
            Command::RegisterSet { name, value, expected_version } => {
                self.register_set(name, value.as_deref(), *expected_version, events)
            }
            Command::Etcd(command) => self.apply_etcd(index, command, events),
            Command::Auth(command) => self.apply_auth(command),
        }
    }

    /// A change to the users, roles and permissions, in the meta group.
    fn apply_auth(&mut self, command: &crate::auth::AuthCommand) -> Result<Outcome> {
        self.topology_mut()?;
        let auth = self.auth.get_or_insert_with(Box::default);
        auth.apply(command)?;
        Ok(Outcome::AuthChanged { revision: auth.revision })
    }

    /// The users, roles and permissions (the meta group only; `None`: none were ever made).
    pub fn auth(&self) -> Option<&crate::auth::AuthState> {
        self.auth.as_deref()
    }

    /// Numbers and timestamps the `count` events that applying the entry with wall clock
    /// `wall_ms` just emitted. Call it after every [`StateMachine::apply`], on every replica.
    pub fn stamp(&mut self, wall_ms: u64, count: usize) -> Vec<(u64, Hlc)> {
        (0..count)
            .map(|_| {
                self.event_seq += 1;
                self.hlc = self.hlc.next(wall_ms);
                (self.event_seq, self.hlc)
            })
            .collect()
    }

    /// The sequence number of the last event emitted in this group.
    pub fn event_seq(&self) -> u64 {
        self.event_seq
    }

    /// Advances the clock without a log entry, as applying a no-op entry would.
    pub fn observe_time(&mut self, index: u64, leader_time_ms: u64) {
        self.applied_index = self.applied_index.max(index);
        self.now_ms = self.now_ms.max(leader_time_ms);
    }

    /// The state machine's clock: the latest leader time applied.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The index of the last applied entry.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// How many things the state holds (sessions, resources, counters, registers, latches): a
    /// snapshot's cost grows with it.
    pub fn object_count(&self) -> u64 {
        (self.sessions.len() + self.locks.len() + self.counters.len() + self.registers.len() + self.latches.len())
            as u64
    }

    /// The last fencing token issued in this group.
    pub fn last_token(&self) -> Token {
        self.last_token
    }

    /// The limits this state machine enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The earliest state machine time at which a [`Command::Tick`] would change something.
    pub fn next_timer_ms(&self) -> Option<u64> {
        self.timers.first().map(|t| t.at_ms)
    }

    /// A session, if it exists.
    pub fn session(&self, id: SessionId) -> Option<&Session> {
        self.sessions.get(&id).map(|s| &**s)
    }

    /// All sessions with their TTLs, in id order.
    pub fn sessions(&self) -> impl Iterator<Item = (SessionId, &Session)> {
        self.sessions.iter().map(|(id, s)| (*id, &**s))
    }

    /// Number of open sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// A lock's state, if it is held, has waiters, or is in lock-delay.
    pub fn lock(&self, name: &str) -> Option<&LockState> {
        self.locks.get(name)
    }

    /// Number of locks the state machine tracks.
    pub fn lock_count(&self) -> usize {
        self.locks.len()
    }

    /// Waiters queued on all names (one pass over the locks: for status, not for every command).
    pub fn waiter_count(&self) -> usize {
        self.locks.values().map(|l| l.waiters.len()).sum()
    }

    /// Serialises the whole state for a Raft snapshot: [`SNAPSHOT_MAGIC`] (which says the
    /// layout), then the state.
    pub fn to_snapshot(&self) -> Vec<u8> {
        let mut bytes = SNAPSHOT_MAGIC.to_vec();
        bincode::serialize_into(&mut bytes, self).expect("state machine serialises");
        bytes
    }

    /// Restores a state from [`StateMachine::to_snapshot`] bytes. Snapshots of this layout start
    /// with [`SNAPSHOT_MAGIC`] and must decode exactly; those of the first layout with a magic
    /// read as if their users and roles had no quotas. Older ones have no magic and lack one or
    /// more last fields, and are read as if they ended with those fields' empty values in
    /// bincode: a snapshot written before users and roles existed with no auth state (`None`,
    /// one zero byte); one written before the etcd keyspace existed also without a keyspace
    /// (another zero byte); one written before the keyspace had alarms with no alarm (an empty
    /// set: a zero length, eight bytes).
    pub fn from_snapshot(bytes: &[u8]) -> std::result::Result<Self, bincode::Error> {
        let mut sm: StateMachine = if let Some(current) = bytes.strip_prefix(SNAPSHOT_MAGIC.as_slice()) {
            use bincode::Options;
            // Exactly: bytes left over are not a state of this layout.
            bincode::DefaultOptions::new().with_fixint_encoding().reject_trailing_bytes().deserialize(current)?
        } else if let Some(v1) = bytes.strip_prefix(SNAPSHOT_MAGIC_V1.as_slice()) {
            // Without users and roles it reads as the current layout; with them, as if they
            // ended with no quotas (and only so: the padding must be needed).
            bincode::deserialize(v1).or_else(|e| {
                let mut padded = v1.to_vec();
                padded.resize(v1.len() + V1_AUTH_PADDING, 0);
                bincode::deserialize::<StateMachine>(&padded).ok().filter(|sm| sm.auth.is_some()).ok_or(e)
            })?
        } else {
            Self::from_older_snapshot(bytes)?
        };
        if let Some(etcd) = sm.etcd.as_deref_mut() {
            etcd.after_snapshot();
        }
        for s in sm.sessions.values() {
            if let Some(user) = crate::command::session_owner(&s.client) {
                *sm.names_per_user.entry(user.to_string()).or_insert(0) += s.owned.len() as u64;
            }
        }
        sm.names_per_user.retain(|_, n| *n > 0);
        Ok(sm)
    }

    /// A snapshot written before [`SNAPSHOT_MAGIC`] (see [`StateMachine::from_snapshot`]).
    fn from_older_snapshot(bytes: &[u8]) -> std::result::Result<Self, bincode::Error> {
        let padded = |zeros: usize| -> Option<StateMachine> {
            let mut older = Vec::with_capacity(bytes.len() + zeros);
            older.extend_from_slice(bytes);
            older.resize(bytes.len() + zeros, 0);
            bincode::deserialize(&older).ok()
        };
        // Each old layout only as what it can be (a second review: otherwise a snapshot cut
        // short by a few bytes could read as a wrong but valid state): without the keyspace, a
        // state that has none; without alarms, a keyspace that has none. None had auth state.
        let sm = padded(1)
            .or_else(|| padded(2).filter(|sm| sm.etcd.is_none()))
            .or_else(|| padded(9).filter(|sm| sm.etcd.as_ref().is_some_and(|k| k.alarms().is_empty())));
        match sm {
            Some(sm) if sm.auth.is_none() => Ok(sm),
            _ => Err(Box::new(bincode::ErrorKind::Custom("not a state machine snapshot of any known layout".into()))),
        }
    }

    /// The initial state of group `group` placed as `placement` says: the etcd keyspace's
    /// group ([`crate::topology::ETCD_GROUP`]) or a data group serving the placement's slots.
    pub fn initial_of(limits: Limits, group: u64, placement: &crate::GroupPlacement) -> Self {
        if group == crate::topology::ETCD_GROUP {
            StateMachine::for_etcd(limits, group)
        } else {
            StateMachine::for_group(limits, group, placement.slots.clone())
        }
    }

    /// An empty state machine of the etcd keyspace's group (it serves no slot).
    pub fn for_etcd(limits: Limits, group: u64) -> Self {
        let mut sm = StateMachine::for_group(limits, group, SlotSet::empty());
        sm.etcd = Some(Box::default());
        sm
    }

    /// The etcd keyspace, in its group.
    pub fn etcd(&self) -> Option<&crate::etcd::EtcdStore> {
        self.etcd.as_deref()
    }

    /// What a watch of the etcd keyspace replays from revision `from` (see
    /// [`crate::etcd::EtcdStore::changes_from`]); `None` if this group does not hold it. The
    /// server's watches and the simulator's watchers read through here.
    pub fn etcd_changes_from(&self, from: i64, max: usize) -> Option<crate::etcd::ChangesFrom> {
        let mut changes = self.etcd.as_deref()?.changes_from(from, max);
        if self.bugs.etcd_watch_skips_deletes {
            // Deliberate bug: deletions are left out of what a watch replays.
            if let crate::etcd::ChangesFrom::Changes { changes, .. } = &mut changes {
                changes.retain(|(_, e)| !e.deleted);
            }
        }
        Some(changes)
    }

    fn open_session(
        &mut self,
        index: u64,
        client: &str,
        ttl_ms: u64,
        request_id: u64,
        events: &mut Vec<Event>,
    ) -> Result<Outcome> {
        self.limits.check_client(client)?;
        self.limits.check_ttl(ttl_ms)?;
        if request_id != 0 {
            if let Some(&session) = self.opens.get(&(client.to_string(), request_id)) {
                // A retry of an open that applied: the same session, not a second one.
                let ttl_ms = self.sessions[&session].ttl_ms;
                return Ok(Outcome::SessionOpened { session, ttl_ms });
            }
        }
        let id = self.session_id(index)?;
        self.check_session_room(client)?;
        self.insert_session(id, client, ttl_ms, request_id, events);
        Ok(Outcome::SessionOpened { session: id, ttl_ms })
    }

    /// Gives a session opened in another group (its home) a record here, so that it can hold
    /// names of this group. Attaching a session that is here already answers as opening it.
    fn attach_session(
        &mut self,
        index: u64,
        session: SessionId,
        client: &str,
        ttl_ms: u64,
        events: &mut Vec<Event>,
    ) -> Result<Outcome> {
        self.limits.check_client(client)?;
        self.limits.check_ttl(ttl_ms)?;
        if let Some(s) = self.sessions.get_mut(&session) {
            // The client counts this record's lease from this attach: the leader must too.
            s.refreshed_at = index;
            let ttl_ms = s.ttl_ms;
            events.push(Event::SessionRefreshed { session, ttl_ms });
            return Ok(Outcome::SessionOpened { session, ttl_ms });
        }
        if self.is_home_of(session) {
            // Its home is this group and it is gone: it expired or was closed, and must not
            // come back to life under the same id.
            return Err(Error::SessionNotFound(session));
        }
        self.check_session_room(client)?;
        self.insert_session(session, client, ttl_ms, 0, events);
        if let Some(s) = self.sessions.get_mut(&session) {
            s.refreshed_at = index;
        }
        Ok(Outcome::SessionOpened { session, ttl_ms })
    }

    /// Refuses a command proposed for `user` that opens a session for someone else or acts
    /// for a session that is not `user`'s. A session with no record here is left to the
    /// command (it is refused as not found, or attached: the server checked, before proposing
    /// an attach, that the session's home gave it to this user).
    fn check_user(&self, user: &str, command: &Command) -> Result<()> {
        let not_theirs = |session| Error::NotYourSession { session, user: user.to_string() };
        if let Command::OpenSession { client, .. } | Command::AttachSession { client, .. } = command {
            if crate::command::session_owner(client) != Some(user) {
                return Err(Error::InvalidArgument(format!(
                    "a session opened for user {user:?} must have a client id that starts with its name"
                )));
            }
        }
        let Some(session) = crate::command::session_of(command) else { return Ok(()) };
        if self.bugs.session_owner_ignored {
            return Ok(()); // deliberate bug
        }
        match self.sessions.get(&session) {
            Some(s) if crate::command::session_owner(&s.client) != Some(user) => Err(not_theirs(session)),
            _ => Ok(()),
        }
    }

    /// Refuses a command for `user` that would take it past its quota here: a new session
    /// (open, or an attach that makes a record) beyond `quota.sessions`, a new name held or
    /// awaited beyond `quota.names`. Everything else, and what gives back, is never refused.
    fn check_quota(&self, user: &str, quota: &crate::auth::Quota, command: &Command) -> Result<()> {
        let over = |what: &str, count: u64, limit: u32| {
            Error::LimitExceeded(format!(
                "quota: user {user:?} has {count} {what} in group {} and its quota is {limit} (baton user quota)",
                self.group
            ))
        };
        match command {
            Command::OpenSession { .. } | Command::AttachSession { .. } if quota.sessions > 0 => {
                if let Command::AttachSession { session, .. } = command {
                    if self.sessions.contains_key(session) {
                        return Ok(());
                    }
                }
                if let Command::OpenSession { client, request_id, .. } = command {
                    if *request_id != 0 && self.opens.contains_key(&(client.clone(), *request_id)) {
                        return Ok(()); // a retry: answered with the session it opened
                    }
                }
                let count = self.sessions_of(user);
                if count >= u64::from(quota.sessions) {
                    return Err(over("sessions", count, quota.sessions));
                }
            }
            Command::Acquire(r) if quota.names > 0 => {
                let new = self.sessions.get(&r.session).is_some_and(|s| !s.owned.contains(&r.name));
                let count = self.names_per_user.get(user).copied().unwrap_or(0);
                if new && count >= u64::from(quota.names) {
                    return Err(over("names held or awaited", count, quota.names));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// How many names `user`'s sessions here hold or wait for (what its quota counts).
    pub fn names_of(&self, user: &str) -> u64 {
        self.names_per_user.get(user).copied().unwrap_or(0)
    }

    /// How many sessions `user` has here (over all its client ids).
    pub fn sessions_of(&self, user: &str) -> u64 {
        let start = format!("{user}{}", crate::command::OWNER_SEPARATOR);
        let end = String::from_utf8(crate::auth::prefix_end(start.as_bytes())).expect("the separator is ASCII");
        self.sessions_per_client.range(start..end).map(|(_, n)| u64::from(*n)).sum()
    }

    /// Keeps [`StateMachine::names_per_user`] as the session of `client` gained (`added`) or
    /// gave up `count` names.
    pub(crate) fn count_names(&mut self, client: &str, count: u64, added: bool) {
        let Some(user) = crate::command::session_owner(client) else { return };
        if added {
            *self.names_per_user.entry(user.to_string()).or_insert(0) += count;
        } else if let Some(n) = self.names_per_user.get_mut(user) {
            *n = n.saturating_sub(count);
            if *n == 0 {
                self.names_per_user.remove(user);
            }
        }
    }

    /// Whether `user` may act for `session` here: its record is this user's, or there is none.
    pub fn session_is_theirs(&self, session: SessionId, user: &str) -> bool {
        self.sessions.get(&session).is_none_or(|s| crate::command::session_owner(&s.client) == Some(user))
    }

    /// True if `session`'s home is this group.
    pub(crate) fn is_home_of(&self, session: SessionId) -> bool {
        session >> SESSION_INDEX_BITS == self.group.wrapping_sub(1)
    }

    pub(crate) fn check_session_room(&self, client: &str) -> Result<()> {
        let count = self.sessions_per_client.get(client).copied().unwrap_or(0);
        if count >= self.limits.max_sessions_per_client {
            return Err(Error::LimitExceeded(format!(
                "client {client:?} already has {count} sessions (limit {})",
                self.limits.max_sessions_per_client
            )));
        }
        if self.sessions.len() >= self.limits.max_sessions {
            return Err(Error::LimitExceeded(format!(
                "the group already has {} sessions (limit {})",
                self.sessions.len(),
                self.limits.max_sessions
            )));
        }
        Ok(())
    }

    pub(crate) fn insert_session(
        &mut self,
        id: SessionId,
        client: &str,
        ttl_ms: u64,
        request_id: u64,
        events: &mut Vec<Event>,
    ) {
        let session = Session {
            client: client.to_string(),
            ttl_ms,
            owned: crate::NameSet::new(),
            recent: VecDeque::new(),
            forgotten_up_to: None,
            open_request: request_id,
            moved_to: BTreeSet::new(),
            refreshed_at: 0,
        };
        self.sessions.insert(id, Box::new(session));
        if request_id != 0 {
            self.opens.insert((client.to_string(), request_id), id);
        }
        *self.sessions_per_client.entry(client.to_string()).or_insert(0) += 1;
        events.push(Event::SessionOpened { session: id, ttl_ms });
    }

    fn close_session(&mut self, session: SessionId, events: &mut Vec<Event>) -> Result<Outcome> {
        if !self.sessions.contains_key(&session) {
            return Err(Error::SessionNotFound(session));
        }
        let released = self.end_session(session, SessionEnd::Closed, events);
        Ok(Outcome::SessionClosed { released })
    }

    fn expire_sessions(&mut self, sessions: &[SessionId], as_of: u64, events: &mut Vec<Event>) -> Outcome {
        let mut expired = Vec::new();
        for &session in sessions {
            if self.sessions.get(&session).is_some_and(|s| s.refreshed_at <= as_of) {
                self.end_session(session, SessionEnd::Expired, events);
                expired.push(session);
            }
        }
        Outcome::SessionsExpired { expired }
    }

    /// Removes a session: its waits end, its locks are released (with lock-delay if it
    /// expired) and handed to the next waiters. Returns how many locks it held.
    pub(crate) fn end_session(&mut self, session: SessionId, how: SessionEnd, events: &mut Vec<Event>) -> u32 {
        let Some(state) = self.sessions.remove(&session) else { return 0 };
        if state.open_request != 0 {
            self.opens.remove(&(state.client.clone(), state.open_request));
        }
        if let Some(count) = self.sessions_per_client.get_mut(&state.client) {
            *count -= 1;
            if *count == 0 {
                self.sessions_per_client.remove(&state.client);
            }
        }
        self.count_names(&state.client, state.owned.len() as u64, false);
        let mut released = 0;
        for name in state.owned.iter() {
            if self.drop_ownership(name, session, how, events) {
                released += 1;
            }
        }
        // An etcd lease ends with the session that carries it, and takes its keys.
        if let Some(etcd) = self.etcd.as_deref_mut() {
            if let Some(lease) = etcd.leases().of_session(session) {
                let _ = etcd.lease_revoke(lease);
            }
        }
        events.push(Event::SessionEnded { session, how });
        released
    }

    /// Issues the next fencing token.
    pub(crate) fn issue_token(&mut self) -> Token {
        self.last_token += 1;
        self.last_token
    }

    /// Fires every timer due at the current time.
    pub(crate) fn run_timers(&mut self, events: &mut Vec<Event>) {
        while let Some(timer) = self.timers.first() {
            if timer.at_ms > self.now_ms {
                break;
            }
            let timer = self.timers.pop_first().expect("timer exists");
            match timer.kind {
                TimerKind::WaitDeadline { session, request_id } => {
                    self.end_wait(&timer.name, session, request_id, WaitEnd::TimedOut, events);
                }
                TimerKind::DelayEnd => self.grant_waiters(&timer.name, events),
            }
        }
    }

    /// Remembers how a request finished, for idempotent retries.
    pub(crate) fn remember(&mut self, session: SessionId, request_id: u64, name: &str, result: RecentResult) {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.recent.push_back(Recent { request_id, name: name.to_string(), result });
            trim_recent(s);
        }
    }
}

/// Keeps a session's remembered outcomes to the window: the oldest beyond it are forgotten, and
/// the highest forgotten id is kept so that their retries are refused.
pub(crate) fn trim_recent(s: &mut Session) {
    while s.recent.len() > RECENT_PER_SESSION {
        if let Some(old) = s.recent.pop_front() {
            s.forgotten_up_to = s.forgotten_up_to.max(Some(old.request_id));
        }
    }
}
