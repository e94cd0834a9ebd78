//! Barriers and countdown latches, on the same queue as the locks.
//!
//! An arrival at a barrier, or a wait on a latch, is a queued request like a lock waiter: bound to
//! its session (it leaves the queue if the session ends) and to its deadline (it times out), and
//! idempotent by request id. What differs is how waiters pass: never one by one, but all together
//! — when the `parties`-th party arrives at a barrier, or when a latch's count reaches zero. Each
//! passing waiter gets a `Granted` event with a fresh token (so the same machinery answers its
//! call), and holds nothing afterwards. A barrier that trips is forgotten, so the next round
//! starts empty (a cyclic barrier). A double barrier (Curator's enter/leave) is two barriers,
//! `NAME/enter` and `NAME/leave`, of the same parties.

use crate::command::{AcquireRequest, Event, Outcome, SessionId};
use crate::error::{Error, Result};
use crate::names::Use;
use crate::queue::Kind;
use crate::state::{RecentResult, StateMachine};

/// Largest number of parties of a barrier.
pub const MAX_PARTIES: u32 = 10_000;

impl StateMachine {
    /// An arrival that completes its barrier (the caller checked everything else): every waiter
    /// and the arrival itself pass. Returns the arrival's token.
    pub(crate) fn barrier_arrive(&mut self, req: &AcquireRequest, events: &mut Vec<Event>) -> Option<u64> {
        let Kind::Barrier { parties } = req.kind else { return None };
        let waiting = self.locks.get(&req.name).map_or(0, |l| l.waiters.len());
        let needed = if self.bugs.barrier_trips_early { parties.saturating_sub(1) } else { parties };
        if waiting as u64 + 1 < needed as u64 {
            return None;
        }
        self.pass_all(&req.name, events);
        Some(self.pass_one(&req.name, req.kind, req.session, req.request_id, None, events))
    }

    /// Validates barrier/latch specifics of an acquire.
    pub(crate) fn check_barrier(&self, req: &AcquireRequest) -> Result<()> {
        if let Kind::Barrier { parties } = req.kind {
            if parties == 0 || parties > MAX_PARTIES {
                return Err(Error::InvalidArgument(format!(
                    "a barrier needs 1..={MAX_PARTIES} parties, not {parties}"
                )));
            }
        }
        Ok(())
    }

    /// A latch wait on a latch at zero (or never set) passes at once.
    pub(crate) fn latch_open(&self, req: &AcquireRequest) -> bool {
        req.kind == Kind::Latch && self.latches.get(&req.name).copied().unwrap_or(0) == 0
    }

    /// Lets one request pass (`waited_ms`: how long it was queued, `None` if it was not).
    pub(crate) fn pass_one(
        &mut self,
        name: &str,
        kind: Kind,
        session: SessionId,
        request_id: u64,
        waited_ms: Option<u64>,
        events: &mut Vec<Event>,
    ) -> u64 {
        let token = self.issue_token();
        self.remember(session, request_id, name, RecentResult::Passed { token });
        events.push(Event::Granted { name: name.to_string(), session, request_id, token, kind, waited_ms });
        token
    }

    /// Lets every waiter of `name` pass, in arrival order, and forgets the resource.
    pub(crate) fn pass_all(&mut self, name: &str, events: &mut Vec<Event>) {
        let Some(lock) = self.locks.remove(name) else { return };
        let now = self.now_ms;
        for w in lock.waiters {
            self.forget_deadline(name, &w);
            self.disown(w.session, name);
            self.pass_one(name, lock.kind, w.session, w.request_id, Some(now.saturating_sub(w.queued_ms)), events);
        }
    }

    /// A latch's count (`None`: not set, or it reached zero).
    pub fn latch(&self, name: &str) -> Option<u64> {
        self.latches.get(name).copied()
    }

    /// Sets a latch's count if it has none (it counts down from there).
    pub(crate) fn latch_set(&mut self, name: &str, count: u64) -> Result<Outcome> {
        self.limits.check_name(name)?;
        if count == 0 {
            return Err(Error::InvalidArgument("a latch's count must be at least 1".into()));
        }
        self.check_use(name, Use::Latch)?;
        let current = self.latches.get(name).copied().unwrap_or(0);
        if current == 0 {
            if self.latches.len() >= self.limits.max_values {
                return Err(Error::LimitExceeded(format!("the group already has {} latches", self.latches.len())));
            }
            self.latches.insert(name.to_string(), count);
            return Ok(Outcome::Latch { count, set: true });
        }
        Ok(Outcome::Latch { count: current, set: false })
    }

    /// Counts a latch down by one; at zero its waiters pass and it is forgotten.
    pub(crate) fn latch_count_down(&mut self, name: &str, events: &mut Vec<Event>) -> Result<Outcome> {
        self.limits.check_name(name)?;
        self.check_use(name, Use::Latch)?;
        let Some(count) = self.latches.get_mut(name) else {
            return Err(Error::InvalidArgument(format!("latch {name:?} is not set (or already reached zero)")));
        };
        *count -= 1;
        let count = *count;
        if count == 0 || (count == 1 && self.bugs.latch_opens_early) {
            self.latches.remove(name);
            self.pass_all(name, events);
        }
        events.push(Event::CounterChanged { name: name.to_string(), value: count as i64 });
        Ok(Outcome::Latch { count, set: true })
    }
}
