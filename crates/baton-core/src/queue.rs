//! The waiter queue and holder record shared by every lock-like primitive.
//!
//! A [`LockState`] is one named resource: who holds it (with which fencing token), who waits
//! for it in FIFO order, and until when a lock-delay keeps it closed. It knows nothing about
//! sessions or time sources; [`crate::StateMachine`] drives it and keeps sessions consistent.
//!
//! Fencing tokens come from one counter per group (see `StateMachine::next_token`), so a token
//! is strictly greater than every token issued before it for *any* name in the group. That
//! gives "strictly increasing per name, forever" without remembering anything about a name once
//! its lock is free, and a shard move can keep it by raising the target group's counter above
//! the source's.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::command::{SessionId, Token};

/// The current holder of a lock.
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
}

/// A queued request for a lock.
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
}

/// One named lock: holder, FIFO queue and lock-delay.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockState {
    /// The holder, if any.
    pub holder: Option<Holder>,
    /// Waiters in arrival order.
    pub waiters: VecDeque<Waiter>,
    /// No grant before this state machine time (Chubby's lock-delay after an expiry).
    pub closed_until_ms: u64,
}

impl LockState {
    /// True when the lock carries no information and can be forgotten.
    pub fn is_idle(&self, now_ms: u64) -> bool {
        self.holder.is_none() && self.waiters.is_empty() && self.closed_until_ms <= now_ms
    }

    /// True when a new request could be granted at `now_ms` without queueing.
    pub fn is_grantable(&self, now_ms: u64) -> bool {
        self.holder.is_none() && self.waiters.is_empty() && self.closed_until_ms <= now_ms
    }

    /// The position in the queue of a session's request, if it waits.
    pub fn position(&self, session: SessionId, request_id: u64) -> Option<usize> {
        self.waiters.iter().position(|w| w.session == session && w.request_id == request_id)
    }

    /// The position of any waiting request of `session`.
    pub fn position_of_session(&self, session: SessionId) -> Option<usize> {
        self.waiters.iter().position(|w| w.session == session)
    }

    /// Removes and returns the waiter at `position`.
    pub fn remove_waiter(&mut self, position: usize) -> Option<Waiter> {
        self.waiters.remove(position)
    }

    /// Pops the first waiter if the lock is free and open at `now_ms`; the caller grants it.
    pub fn next_to_grant(&mut self, now_ms: u64) -> Option<Waiter> {
        if self.holder.is_some() || self.closed_until_ms > now_ms {
            return None;
        }
        self.waiters.pop_front()
    }
}
