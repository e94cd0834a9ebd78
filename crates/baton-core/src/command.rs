//! Every input of the replicated state machine, its results and the events it emits.
//!
//! A [`Command`] is what goes into the Raft log: one variant per replicated write, applied in
//! one `match` ([`crate::StateMachine::apply`]). The leader's clock reading travels inside the
//! log entry (see [`Entry`]), never read by the state machine itself, so every replica computes
//! the same outcome from the same log.

use serde::{Deserialize, Serialize};

use crate::queue::{Kind, Mode};

/// A session's identifier, unique in the cluster: the log index of the command that opened it,
/// with its home group (less one) in the top 16 bits.
pub type SessionId = u64;

/// A fencing token. Strictly increasing per lock name, forever.
pub type Token = u64;

/// One replicated write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Open a session owned by `client` that lives `ttl_ms` after its last keepalive. A retry
    /// with the same non-zero `request_id` while that session lives returns it again, instead
    /// of opening a second one that nobody would keep alive.
    OpenSession { client: String, ttl_ms: u64, request_id: u64 },
    /// Give session `session`, opened in another group, a record in this one (a client's first
    /// request in a group does this). A session that has a record here already is answered as
    /// opened; a session whose home is this group and that is gone is not brought back.
    AttachSession { session: SessionId, client: String, ttl_ms: u64 },
    /// Source group of a slot move: stop serving `start..=end` and hand its state to group `to`
    /// (see [`crate::moves`]).
    HandOff { move_id: u64, start: crate::slots::Slot, end: crate::slots::Slot, to: u64 },
    /// Destination group of a slot move: serve the bundle's slots with its state.
    TakeOver { bundle: Box<crate::moves::SlotBundle> },
    /// Meta group: start moving slots `start..=end` to data group `to` (the move's id is this
    /// entry's log index). Whoever leads the meta group then drives the move's steps.
    BeginMove { start: crate::slots::Slot, end: crate::slots::Slot, to: u64 },
    /// Meta group: the move's destination serves its slots; the map says so from now on.
    FinishMove { move_id: u64 },
    /// Meta group: a new member, with its addresses; every group gets a replica on it.
    AddNode { id: u64, peer_addr: String, client_addr: String },
    /// Meta group: a member leaves; every group's replica on it is removed.
    RemoveNode { id: u64 },
    /// Close a session on its owner's request: its locks are released, its waits end.
    CloseSession { session: SessionId },
    /// The leader saw these sessions go a full TTL without a keepalive, judging by the state
    /// as of log index `as_of`: a session given a record or refreshed here by a later entry (a
    /// slot move's take-over, an attach) is not expired by this command.
    ExpireSessions { sessions: Vec<SessionId>, as_of: u64 },
    /// Take an exclusive lock, or queue for it.
    Acquire(AcquireRequest),
    /// Give a held lock back; the next live waiter is granted in the same command.
    Release { name: String, session: SessionId, token: Token },
    /// Stop waiting for a lock (the client gave up before its deadline).
    Cancel { name: String, session: SessionId, request_id: u64 },
    /// Let time pass: waiters past their deadline time out, lock-delays end.
    Tick,
    /// The leader of an election publishes a new value.
    Proclaim { name: String, session: SessionId, token: Token, value: Vec<u8> },
    /// Give a countdown latch its count, if it has none.
    LatchSet { name: String, count: u64 },
    /// Count a latch down by one; at zero everyone waiting on it passes.
    LatchCountDown { name: String },
    /// Add `delta` to a counter.
    CounterAdd { name: String, delta: i64 },
    /// Set a counter to `new` if it is `expected`.
    CounterCas { name: String, expected: i64, new: i64 },
    /// Write (`Some`) or delete (`None`) a register, if its version is `expected_version` (when
    /// given; 0 means "not written").
    RegisterSet { name: String, value: Option<Vec<u8>>, expected_version: Option<u64> },
    /// A write to the etcd keyspace (its group only: see [`crate::etcd`]). New variants go
    /// last: logs and snapshots encode a variant by its position.
    Etcd(crate::etcd::EtcdCommand),
    /// Meta group: a change to the users, roles and permissions (see [`crate::auth`]).
    Auth(crate::auth::AuthCommand),
}

impl Command {
    /// The name the command is about, if it is about one (its slot decides the group).
    pub fn name(&self) -> Option<&str> {
        match self {
            Command::Acquire(r) => Some(&r.name),
            Command::Release { name, .. }
            | Command::Cancel { name, .. }
            | Command::Proclaim { name, .. }
            | Command::LatchSet { name, .. }
            | Command::LatchCountDown { name }
            | Command::CounterAdd { name, .. }
            | Command::CounterCas { name, .. }
            | Command::RegisterSet { name, .. } => Some(name),
            Command::OpenSession { .. }
            | Command::AttachSession { .. }
            | Command::CloseSession { .. }
            | Command::ExpireSessions { .. }
            | Command::HandOff { .. }
            | Command::TakeOver { .. }
            | Command::BeginMove { .. }
            | Command::FinishMove { .. }
            | Command::AddNode { .. }
            | Command::RemoveNode { .. }
            | Command::Etcd(_)
            | Command::Auth(_)
            | Command::Tick => None,
        }
    }
}

/// The arguments of [`Command::Acquire`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquireRequest {
    /// The lock's name (1..=1024 bytes).
    pub name: String,
    /// The session that will hold the lock.
    pub session: SessionId,
    /// Chosen by the client; a retry with the same id gets the same outcome.
    pub request_id: u64,
    /// `None` or `Some(0)`: try once. `Some(ms)`: wait in the FIFO queue up to `ms`.
    pub wait_ms: Option<u64>,
    /// Chubby's lock-delay: if this holder's session expires (not on a clean release), the
    /// lock is not granted again until this much time has passed.
    pub lock_delay_ms: u64,
    /// What kind of resource the caller expects `name` to be (it must match while the resource
    /// exists).
    pub kind: Kind,
    /// What the caller asks for: exclusive, shared (read), or a number of permits.
    pub mode: Mode,
    /// Elections: the value to publish once elected (at most 64 KiB); empty otherwise.
    pub value: Vec<u8>,
}

impl AcquireRequest {
    /// An exclusive-lock request (the common case).
    pub fn exclusive(name: impl Into<String>, session: SessionId, request_id: u64, wait_ms: Option<u64>) -> Self {
        AcquireRequest {
            name: name.into(),
            session,
            request_id,
            wait_ms,
            lock_delay_ms: 0,
            kind: Kind::Mutex,
            mode: Mode::Exclusive,
            value: Vec::new(),
        }
    }
}

/// What goes into one Raft log entry: a command and the leader's clock when it proposed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The proposing leader's clock, in milliseconds. The state machine's clock is the maximum
    /// of all such readings, so it never runs backwards across leader changes.
    pub leader_time_ms: u64,
    /// The proposing leader's wall clock (ms since the Unix epoch), used only for the hybrid
    /// logical clock timestamps of events, never for deadlines.
    pub wall_ms: u64,
    /// The write itself.
    pub command: Command,
    /// The user it was proposed for, with authentication on (`None`: off, or the cluster's
    /// own work). A command naming a session is refused unless that session is this user's
    /// (see [`session_owner`]).
    pub user: Option<String>,
    /// That user's quota as the proposing node knew it (ignored without a user): the state
    /// machine refuses a session or a name beyond it (see [`crate::auth::Quota`]).
    pub quota: crate::auth::Quota,
}

impl Entry {
    /// `command` at the leader's clock readings, proposed for no user in particular.
    pub fn new(leader_time_ms: u64, wall_ms: u64, command: Command) -> Entry {
        Entry { leader_time_ms, wall_ms, command, user: None, quota: crate::auth::Quota::default() }
    }
}

/// Who a client request is for, with authentication on: the user, and its quota as the node
/// that takes the request knows it (stamped into the request's log entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub name: std::sync::Arc<str>,
    pub quota: crate::auth::Quota,
}

/// What separates the user from the client's own id in a session's client id: with
/// authentication on, the server opens sessions for client `c` of user `u` as `u` + this + `c`.
pub const OWNER_SEPARATOR: char = '\x1f';

/// The user a session belongs to, by its client id (`None`: opened with authentication off).
pub fn session_owner(client: &str) -> Option<&str> {
    client.split_once(OWNER_SEPARATOR).map(|(user, _)| user)
}

/// The session a command acts for, if it names one.
pub fn session_of(command: &Command) -> Option<SessionId> {
    match command {
        Command::AttachSession { session, .. }
        | Command::CloseSession { session }
        | Command::Release { session, .. }
        | Command::Cancel { session, .. }
        | Command::Proclaim { session, .. } => Some(*session),
        Command::Acquire(r) => Some(r.session),
        _ => None,
    }
}

/// The successful result of a command, returned to the client that proposed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A session was opened.
    SessionOpened { session: SessionId, ttl_ms: u64 },
    /// The session is closed; `released` locks were released with it.
    SessionClosed { released: u32 },
    /// These sessions (of the ones asked) existed and have expired.
    SessionsExpired { expired: Vec<SessionId> },
    /// The lock is held by the caller with this token.
    Granted { token: Token },
    /// The caller waits in the queue at this position (0 = next).
    Queued { position: u32 },
    /// Try-once acquire of a lock that is held (or in its lock-delay).
    NotAvailable { holder: Option<SessionId> },
    /// A retried wait that had already timed out (or lost its session).
    TimedOut,
    /// The lock was released.
    Released,
    /// The leader's new value is published.
    Proclaimed,
    /// A wait was cancelled, or the lock was granted before the cancel arrived.
    Cancelled { granted: Option<Token> },
    /// Time passed.
    Ticked,
    /// The source of a slot move stopped serving the range; this is what it handed over.
    HandedOff { bundle: Box<crate::moves::SlotBundle> },
    /// The destination of a slot move serves the range now, with this many names.
    TookOver { names: u64 },
    /// The meta group started a slot move with this id; the map is at `version` until it
    /// finishes.
    MoveBegun { move_id: u64, version: u64 },
    /// The meta group's map moved with a finished move (false: it had finished already), now at
    /// this version.
    MoveFinished { finished: bool, version: u64 },
    /// The membership changed (false: it was so already); the layout is at this version.
    MembersChanged { changed: bool, version: u64 },
    /// A latch's count after the command; `set` is false if `LatchSet` found it already set.
    Latch { count: u64, set: bool },
    /// A counter's value after the command; `swapped` is false if a compare-and-set failed.
    Counter { value: i64, swapped: bool },
    /// A register's version after the command; `swapped` is false if the version did not match.
    Register { version: u64, swapped: bool },
    /// A write to the etcd keyspace was applied (new variants go last, as in [`Command`]).
    Etcd(crate::etcd::EtcdOutcome),
    /// The users, roles and permissions changed; they are at this revision now.
    AuthChanged { revision: u64 },
}

/// Why a wait ended without a grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WaitEnd {
    /// The waiter's deadline passed.
    TimedOut,
    /// The waiter's session was closed or expired.
    SessionEnded,
    /// The waiter cancelled.
    Cancelled,
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionEnd {
    /// Its owner closed it.
    Closed,
    /// The leader saw it go a TTL without keepalive.
    Expired,
}

/// A change that watchers and waiting callers are told about, emitted in apply order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A session was opened.
    SessionOpened { session: SessionId, ttl_ms: u64 },
    /// A session ended.
    SessionEnded { session: SessionId, how: SessionEnd },
    /// A session that had a record here got it again (an attach, or names moved in with a
    /// slot move): its lease runs a full TTL from now, as at an open.
    SessionRefreshed { session: SessionId, ttl_ms: u64 },
    /// A lock was granted (at once or from the queue). `waited_ms`: `None` if granted at once,
    /// else the state-machine time from queueing to the grant (a handoff; barriers and latches
    /// let their queued arrivals pass the same way).
    Granted { name: String, session: SessionId, request_id: u64, token: Token, kind: Kind, waited_ms: Option<u64> },
    /// A waiter joined a lock's queue.
    Queued { name: String, session: SessionId, request_id: u64, kind: Kind },
    /// A waiter left the queue without the lock.
    WaitEnded { name: String, session: SessionId, request_id: u64, how: WaitEnd },
    /// A holder gave up the lock (cleanly, or with its session).
    /// `held_ms`: state-machine time from the grant to the release.
    Released { name: String, session: SessionId, token: Token, expired: bool, kind: Kind, held_ms: u64 },
    /// An election's leader changed, or the leader proclaimed a new value. `session` 0: no leader.
    LeaderChanged { name: String, session: SessionId, token: Token, value: Vec<u8> },
    /// A counter changed.
    CounterChanged { name: String, value: i64 },
    /// A register was written (version > 0) or deleted (version 0).
    RegisterChanged { name: String, version: u64 },
    /// Slots `start..=end` moved from group `from` to group `to` (emitted by both: by the
    /// source when it stops serving them, by the destination when it starts).
    SlotsMoved { start: u16, end: u16, from: u64, to: u64 },
    /// The meta group's map changed (a move started or finished): now at `version`.
    TopologyChanged { version: u64 },
}
