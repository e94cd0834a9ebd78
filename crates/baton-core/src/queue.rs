//! The waiter queue and holder records shared by every lock-like primitive.
//!
//! A [`LockState`] is one named resource of one [`Kind`] — exclusive lock, read/write lock or
//! counting semaphore: who holds it (each grant with its own fencing token), who waits for it in
//! FIFO order and in which [`Mode`], and until when a lock-delay keeps it closed. The three kinds
//! differ only in [`LockState::fits`], the rule that says whether a request is compatible with the
//! current holders; queueing, handoff, timeouts, lock-delay, idempotency and fencing are one
//! mechanism ([`crate::StateMachine`] drives it and keeps sessions consistent).
//!
//! Fairness: a request is granted at once only if nobody waits; waiters are granted strictly
//! from the front of the queue for as long as the front fits. So consecutive readers are granted
//! together, a writer waits only for the readers ahead of it, and readers that arrive after a
//! waiting writer queue behind it (a writer is never starved).
//!
//! Fencing tokens come from one counter per group (see `StateMachine::issue_token`), so a token
//! is strictly greater than every token issued before it for *any* name in the group. That
//! gives "strictly increasing per name, forever" without remembering anything about a name once
//! it is free, and a shard move can keep it by raising the target group's counter above the
//! source's.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::command::{SessionId, Token};

/// Largest semaphore capacity.
pub const MAX_CAPACITY: u32 = 1_000_000;

/// What a named resource is. Fixed while the resource exists (held, awaited or delayed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// An exclusive lock.
    #[default]
    Mutex,
    /// A read/write lock: many readers or one writer.
    RwLock,
    /// A counting semaphore with this many permits.
    Semaphore { capacity: u32 },
    /// A leader election: exclusive, and the holder (the leader) publishes a value.
    Election,
    /// A barrier: arrivals wait until `parties` have arrived, then all pass together.
    Barrier { parties: u32 },
    /// A countdown latch: arrivals wait until its count reaches zero.
    Latch,
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Sole ownership (a mutex, or the write side of a read/write lock).
    Exclusive,
    /// The read side of a read/write lock.
    Shared,
    /// This many permits of a semaphore.
    Permits(u32),
}

impl Kind {
    /// Checks that `mode` makes sense for this kind.
    pub fn accepts(&self, mode: Mode) -> Result<(), String> {
        match (self, mode) {
            (Kind::Mutex | Kind::Election | Kind::Barrier { .. } | Kind::Latch, Mode::Exclusive)
            | (Kind::RwLock, Mode::Exclusive | Mode::Shared) => Ok(()),
            (Kind::Semaphore { capacity }, Mode::Permits(n)) if n >= 1 && n <= *capacity => Ok(()),
            (Kind::Semaphore { capacity }, Mode::Permits(n)) => {
                Err(format!("asked for {n} permits of a semaphore with capacity {capacity} (must be 1..={capacity})"))
            }
            (kind, mode) => Err(format!("mode {mode:?} does not apply to a {}", kind.describe())),
        }
    }

    /// A phrase for messages.
    pub fn describe(&self) -> String {
        match self {
            Kind::Mutex => "lock".into(),
            Kind::RwLock => "read/write lock".into(),
            Kind::Semaphore { capacity } => format!("semaphore with capacity {capacity}"),
            Kind::Election => "election".into(),
            Kind::Barrier { parties } => format!("barrier of {parties} parties"),
            Kind::Latch => "countdown latch".into(),
        }
    }
}

/// A holder of a resource (one grant).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The session that holds it.
    pub session: SessionId,
    /// The request that was granted.
    pub request_id: u64,
    /// The fencing token of this grant.
    pub token: Token,
    /// State machine time of the grant.
    pub granted_ms: u64,
    /// Lock-delay to apply if this holder's session expires.
    pub lock_delay_ms: u64,
    /// What was granted.
    pub mode: Mode,
    /// Elections: the leader's published value.
    pub value: Vec<u8>,
}

/// A queued request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiter {
    /// The waiting session.
    pub session: SessionId,
    /// The request that queued.
    pub request_id: u64,
    /// State machine time after which the wait times out.
    pub deadline_ms: u64,
    /// State machine time the waiter queued at.
    pub queued_ms: u64,
    /// Lock-delay to apply if this waiter, once granted, loses its session.
    pub lock_delay_ms: u64,
    /// What it asks for.
    pub mode: Mode,
    /// Elections: the value the candidate will publish when elected.
    pub value: Vec<u8>,
}

/// One named resource: kind, holders, FIFO queue and lock-delay.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockState {
    /// What the resource is.
    pub kind: Kind,
    /// Current grants, in grant order.
    pub holders: Vec<Holder>,
    /// Waiters in arrival order.
    pub waiters: VecDeque<Waiter>,
    /// No grant before this state machine time (Chubby's lock-delay after an expiry).
    pub closed_until_ms: u64,
}

impl LockState {
    /// A new, free resource of this kind.
    pub fn new(kind: Kind) -> Self {
        LockState { kind, ..Default::default() }
    }

    /// True when the resource carries no information and can be forgotten.
    pub fn is_idle(&self, now_ms: u64) -> bool {
        self.holders.is_empty() && self.waiters.is_empty() && self.closed_until_ms <= now_ms
    }

    /// True if a request in `mode` is compatible with the current holders.
    pub fn fits(&self, mode: Mode) -> bool {
        match (self.kind, mode) {
            // Barriers and latches are passed all at once by their own rule, never one by one.
            (Kind::Barrier { .. } | Kind::Latch, _) => false,
            (Kind::Semaphore { capacity }, Mode::Permits(n)) => self.permits_held() + n as u64 <= capacity as u64,
            (_, Mode::Shared) => self.holders.iter().all(|h| h.mode == Mode::Shared),
            _ => self.holders.is_empty(),
        }
    }

    /// Permits held (semaphores).
    pub fn permits_held(&self) -> u64 {
        self.holders.iter().map(|h| if let Mode::Permits(n) = h.mode { n as u64 } else { 1 }).sum()
    }

    /// True when a new request in `mode` could be granted at `now_ms` without queueing.
    pub fn is_grantable(&self, mode: Mode, now_ms: u64) -> bool {
        self.waiters.is_empty() && self.closed_until_ms <= now_ms && self.fits(mode)
    }

    /// The position in the queue of a session's request, if it waits.
    pub fn position(&self, session: SessionId, request_id: u64) -> Option<usize> {
        self.waiters.iter().position(|w| w.session == session && w.request_id == request_id)
    }

    /// The position of any waiting request of `session`.
    pub fn position_of_session(&self, session: SessionId) -> Option<usize> {
        self.waiters.iter().position(|w| w.session == session)
    }

    /// The grant held by `session`, if any.
    pub fn holder(&self, session: SessionId) -> Option<&Holder> {
        self.holders.iter().find(|h| h.session == session)
    }

    /// Removes and returns the waiter at `position`.
    pub fn remove_waiter(&mut self, position: usize) -> Option<Waiter> {
        self.waiters.remove(position)
    }

    /// Pops the first waiter if it fits and the resource is open at `now_ms`; the caller grants
    /// it (and calls again: several readers or permit requests may fit).
    pub fn next_to_grant(&mut self, now_ms: u64) -> Option<Waiter> {
        if self.closed_until_ms > now_ms || !self.waiters.front().is_some_and(|w| self.fits(w.mode)) {
            return None;
        }
        self.waiters.pop_front()
    }

    /// The first holder's session and token (the holder, for an exclusive lock).
    pub fn held_by(&self) -> Option<(SessionId, Token)> {
        self.holders.first().map(|h| (h.session, h.token))
    }
}
