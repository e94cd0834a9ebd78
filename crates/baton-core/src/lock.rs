//! Locks, read/write locks and semaphores: acquire (try or wait), release, cancel, handoff.
//!
//! Guarantees, all enforced inside one `apply` so that every replica agrees:
//! - holders are always compatible (one exclusive holder; or readers only; or at most
//!   `capacity` permits); every grant's token is greater than every token issued before;
//! - waiters are granted strictly in arrival order, in the same command that frees room for
//!   them (release, close, expiry, end of a lock-delay) — as many as fit, and no more;
//! - a retry of an acquire with the same `(session, request_id)` returns the same outcome and
//!   never queues twice;
//! - nothing is reentrant, and a read lock is never silently upgraded: a session that holds or
//!   waits for a name and asks again with a new request id gets [`Error::AlreadyOwned`].

use crate::command::{AcquireRequest, Event, Outcome, SessionEnd, SessionId, Token, WaitEnd};
use crate::error::{Error, Result};
use crate::names::Use;
use crate::queue::{Holder, Kind, LockState, Mode, Waiter};
use crate::state::{RecentResult, StateMachine, Timer, TimerKind};

impl StateMachine {
    pub(crate) fn acquire(&mut self, req: &AcquireRequest, events: &mut Vec<Event>) -> Result<Outcome> {
        self.limits.check_name(&req.name)?;
        self.limits.check_lock_delay(req.lock_delay_ms)?;
        let wait_ms = req.wait_ms.unwrap_or(0);
        self.limits.check_wait(wait_ms)?;
        if let crate::queue::Kind::Semaphore { capacity } = req.kind {
            if capacity == 0 || capacity > crate::queue::MAX_CAPACITY {
                return Err(Error::InvalidArgument(format!(
                    "semaphore capacity {capacity} is outside 1..={}",
                    crate::queue::MAX_CAPACITY
                )));
            }
        }
        req.kind.accepts(req.mode).map_err(Error::InvalidArgument)?;
        check_value(&req.value)?;
        self.check_barrier(req)?;
        let Some(session) = self.sessions.get(&req.session) else {
            return Err(Error::SessionNotFound(req.session));
        };
        // A retry gets its first attempt's outcome whatever the name has become since (a latch
        // that passed it may be a counter now): before the kind check (the review caught it).
        if let Some(outcome) = self.retried_outcome(req)? {
            return Ok(outcome);
        }
        self.check_use(&req.name, Use::Resource(req.kind))?;
        if session.owned.contains(&req.name) {
            let held = self.locks.get(&req.name).and_then(|l| l.holder(req.session)).map(|h| h.mode);
            let (state, why) = match (held, req.mode) {
                (Some(Mode::Shared), Mode::Exclusive) => {
                    ("holds a read lock on", "upgrading to a write lock is not supported: release the read lock first")
                }
                (Some(_), _) => ("holds", "locks are not reentrant"),
                (None, _) => ("waits for", "locks are not reentrant"),
            };
            return Err(Error::AlreadyOwned { name: req.name.clone(), session: req.session, state, why });
        }
        if session.owned.len() >= self.limits.max_locks_per_session {
            return Err(Error::LimitExceeded(format!(
                "session {} already holds or waits for {} locks (limit {})",
                req.session,
                session.owned.len(),
                self.limits.max_locks_per_session
            )));
        }
        let now = self.now_ms;
        // Latches and barriers pass everyone together, by their own rule.
        if self.latch_open(req) {
            return Ok(Outcome::Granted {
                token: self.pass_one(&req.name, req.kind, req.session, req.request_id, None, events),
            });
        }
        if let Some(token) = self.barrier_arrive(req, events) {
            return Ok(Outcome::Granted { token });
        }
        if self.bugs.grant_ignores_queue {
            // Deliberate bug: take the lock from its holders.
            let old: Vec<Holder> =
                self.locks.get_mut(&req.name).map(|l| std::mem::take(&mut l.holders)).unwrap_or_default();
            for h in old {
                self.disown(h.session, &req.name);
            }
        }
        let lock = self.locks.get(&req.name);
        let open = |l: &LockState| self.bugs.grant_ignores_queue || l.is_grantable(req.mode, now);
        if lock.map_or_else(|| open(&LockState::new(req.kind)), open) {
            self.locks.entry(req.name.clone()).or_insert_with(|| LockState::new(req.kind));
            let claim = Waiter {
                session: req.session,
                request_id: req.request_id,
                deadline_ms: now,
                queued_ms: now,
                lock_delay_ms: req.lock_delay_ms,
                mode: req.mode,
                value: req.value.clone(),
            };
            let token = self.grant(&req.name, claim, false, events);
            return Ok(Outcome::Granted { token });
        }
        if wait_ms == 0 {
            let holder = lock.and_then(|l| l.holders.first()).map(|h| h.session);
            self.remember(req.session, req.request_id, &req.name, RecentResult::NotAvailable { holder });
            return Ok(Outcome::NotAvailable { holder });
        }
        let waiting = lock.map_or(0, |l| l.waiters.len());
        if waiting >= self.limits.max_waiters_per_lock {
            return Err(Error::LimitExceeded(format!(
                "{:?} already has {waiting} waiters (limit {})",
                req.name, self.limits.max_waiters_per_lock
            )));
        }
        // Validation is over: from here on the command applies completely.
        let deadline_ms = now.saturating_add(wait_ms);
        let lock = self.locks.entry(req.name.clone()).or_insert_with(|| LockState::new(req.kind));
        lock.waiters.push_back(Waiter {
            session: req.session,
            request_id: req.request_id,
            deadline_ms,
            queued_ms: now,
            lock_delay_ms: req.lock_delay_ms,
            mode: req.mode,
            value: req.value.clone(),
        });
        let position = (lock.waiters.len() - 1) as u32;
        self.own(req.session, &req.name);
        self.timers.insert(Timer {
            at_ms: deadline_ms,
            name: req.name.clone(),
            kind: TimerKind::WaitDeadline { session: req.session, request_id: req.request_id },
        });
        events.push(Event::Queued {
            name: req.name.clone(),
            session: req.session,
            request_id: req.request_id,
            kind: req.kind,
        });
        Ok(Outcome::Queued { position })
    }

    /// The outcome of an earlier attempt of the same request, if there was one.
    fn retried_outcome(&self, req: &AcquireRequest) -> Result<Option<Outcome>> {
        if let Some(lock) = self.locks.get(&req.name) {
            if let Some(h) = lock.holder(req.session) {
                if h.request_id == req.request_id {
                    return Ok(Some(Outcome::Granted { token: h.token }));
                }
            }
            if let Some(position) = lock.position(req.session, req.request_id) {
                return Ok(Some(Outcome::Queued { position: position as u32 }));
            }
        }
        let session = &self.sessions[&req.session];
        let recent = session.recent.iter().rev().find(|r| r.request_id == req.request_id && r.name == req.name);
        match recent.map(|r| &r.result) {
            None if session.forgotten_up_to.is_some_and(|f| req.request_id <= f) => {
                Err(Error::RetryTooLate { session: req.session, request_id: req.request_id })
            }
            None => Ok(None),
            Some(RecentResult::NotAvailable { holder }) => Ok(Some(Outcome::NotAvailable { holder: *holder })),
            Some(RecentResult::WaitEnded(WaitEnd::Cancelled)) => Ok(Some(Outcome::Cancelled { granted: None })),
            Some(RecentResult::WaitEnded(_)) => Ok(Some(Outcome::TimedOut)),
            Some(RecentResult::Passed { token }) => Ok(Some(Outcome::Granted { token: *token })),
            Some(RecentResult::Released { token }) => {
                Err(Error::RequestCompleted { name: req.name.clone(), request_id: req.request_id, token: *token })
            }
        }
    }

    pub(crate) fn release(
        &mut self,
        name: &str,
        session: SessionId,
        token: Token,
        events: &mut Vec<Event>,
    ) -> Result<Outcome> {
        self.limits.check_name(name)?;
        let holds = self.locks.get(name).and_then(|l| l.holder(session)).is_some_and(|h| h.token == token);
        if !holds {
            if !self.sessions.contains_key(&session) {
                return Err(Error::SessionNotFound(session));
            }
            return Err(Error::NotHolder { name: name.to_string(), session, token });
        }
        self.drop_ownership(name, session, SessionEnd::Closed, events);
        Ok(Outcome::Released)
    }

    pub(crate) fn cancel(
        &mut self,
        name: &str,
        session: SessionId,
        request_id: u64,
        events: &mut Vec<Event>,
    ) -> Result<Outcome> {
        self.limits.check_name(name)?;
        if !self.sessions.contains_key(&session) {
            return Err(Error::SessionNotFound(session));
        }
        let lock = self.locks.get(name);
        if let Some(h) = lock.and_then(|l| l.holder(session)) {
            if h.request_id == request_id {
                // The grant won the race with the cancel: the caller must release it.
                return Ok(Outcome::Cancelled { granted: Some(h.token) });
            }
        }
        if lock.is_some_and(|l| l.position(session, request_id).is_some()) {
            self.end_wait(name, session, request_id, WaitEnd::Cancelled, events);
        } else if !self.sessions[&session].recent.iter().any(|r| r.request_id == request_id && r.name == name) {
            // The cancel overtook its acquire (or the acquire never arrived): remember it, so
            // that the acquire, if it comes, is answered "cancelled" instead of queueing or
            // being granted with nobody waiting for it.
            self.remember(session, request_id, name, RecentResult::WaitEnded(WaitEnd::Cancelled));
        }
        Ok(Outcome::Cancelled { granted: None })
    }

    /// Grants `name` (which exists) to a claim now (`queued`: a waiter from its queue); the
    /// caller checked that it fits.
    fn grant(&mut self, name: &str, claim: Waiter, queued: bool, events: &mut Vec<Event>) -> Token {
        let token = self.issue_token();
        let now = self.now_ms;
        let Waiter { session, request_id, lock_delay_ms, mode, value, queued_ms, .. } = claim;
        let lock = self.locks.get_mut(name).expect("granted resource exists");
        let kind = lock.kind;
        let election = lock.kind == Kind::Election;
        let published = if election { value.clone() } else { Vec::new() };
        // Most resources have one holder: without this a first push reserves room for four,
        // which was over half of the memory a held lock costs.
        if lock.holders.capacity() == 0 {
            lock.holders.reserve_exact(1);
        }
        lock.holders.push(Holder { session, request_id, token, granted_ms: now, lock_delay_ms, mode, value });
        self.own(session, name);
        let waited_ms = queued.then(|| now.saturating_sub(queued_ms));
        events.push(Event::Granted { name: name.to_string(), session, request_id, token, kind, waited_ms });
        if election {
            events.push(Event::LeaderChanged { name: name.to_string(), session, token, value: published });
        }
        token
    }

    /// The leader of an election publishes a new value.
    pub(crate) fn proclaim(
        &mut self,
        name: &str,
        session: SessionId,
        token: Token,
        value: &[u8],
        events: &mut Vec<Event>,
    ) -> Result<Outcome> {
        self.limits.check_name(name)?;
        check_value(value)?;
        self.check_use(name, Use::Resource(Kind::Election))?;
        let Some(lock) = self.locks.get_mut(name) else {
            return Err(Error::NotHolder { name: name.to_string(), session, token });
        };
        let bug = self.bugs.proclaim_ignores_token;
        let Some(h) = lock.holders.iter_mut().find(|h| bug || (h.session == session && h.token == token)) else {
            if bug {
                // Deliberate bug: a stale proclaim on a leaderless election is accepted too.
                events.push(Event::LeaderChanged { name: name.to_string(), session, token, value: value.to_vec() });
                return Ok(Outcome::Proclaimed);
            }
            return Err(Error::NotHolder { name: name.to_string(), session, token });
        };
        h.value = value.to_vec();
        events.push(Event::LeaderChanged { name: name.to_string(), session, token, value: value.to_vec() });
        Ok(Outcome::Proclaimed)
    }

    /// Grants the lock to queued waiters while it is free and open.
    pub(crate) fn grant_waiters(&mut self, name: &str, events: &mut Vec<Event>) {
        let now = self.now_ms;
        // Every waiter whose deadline has passed times out first, wherever it is in the queue,
        // even if its own timer has not fired yet: timers fire in time order, and an earlier
        // one (a writer's deadline, say) may be what frees the lock for the readers behind it.
        // Timing out only the front let those readers be granted after their deadline.
        let late: Vec<(SessionId, u64)> = self.locks.get(name).map_or_else(Vec::new, |l| {
            l.waiters.iter().filter(|w| w.deadline_ms <= now).map(|w| (w.session, w.request_id)).collect()
        });
        for (session, request_id) in late {
            self.remove_wait(name, session, request_id, WaitEnd::TimedOut, events);
        }
        while let Some(w) = self.locks.get_mut(name).and_then(|l| l.next_to_grant(now)) {
            self.forget_deadline(name, &w);
            // The waiter already owns the name; granting moves it from the queue to the holders.
            self.disown(w.session, name);
            self.grant(name, w, true, events);
        }
        self.forget_if_idle(name);
    }

    /// Ends a waiter's wait without a grant, then grants whoever fits now: a read/write lock or
    /// semaphore may admit the waiters behind a writer or a large permit request that left.
    /// (The property test found the missing grant here.)
    pub(crate) fn end_wait(
        &mut self,
        name: &str,
        session: SessionId,
        request_id: u64,
        how: WaitEnd,
        events: &mut Vec<Event>,
    ) {
        if self.remove_wait(name, session, request_id, how, events) {
            self.grant_waiters(name, events);
        }
    }

    /// Removes a waiter and records how its wait ended; true if it was queued.
    fn remove_wait(
        &mut self,
        name: &str,
        session: SessionId,
        request_id: u64,
        how: WaitEnd,
        events: &mut Vec<Event>,
    ) -> bool {
        let Some(lock) = self.locks.get_mut(name) else { return false };
        let Some(position) = lock.position(session, request_id) else { return false };
        let w = lock.remove_waiter(position).expect("position is valid");
        self.forget_deadline(name, &w);
        self.disown(session, name);
        self.remember(session, request_id, name, RecentResult::WaitEnded(how));
        events.push(Event::WaitEnded { name: name.to_string(), session, request_id, how });
        true
    }

    /// Removes a session's hold on or wait for `name` (release, close or expiry) and hands the
    /// lock on. Returns true if the session held it.
    pub(crate) fn drop_ownership(
        &mut self,
        name: &str,
        session: SessionId,
        how: SessionEnd,
        events: &mut Vec<Event>,
    ) -> bool {
        let now = self.now_ms;
        let Some(lock) = self.locks.get_mut(name) else { return false };
        let kind = lock.kind;
        let holder = lock.holders.iter().position(|h| h.session == session).map(|i| lock.holders.remove(i));
        let Some(holder) = holder else {
            let request_id = lock.position_of_session(session).map(|p| lock.waiters[p].request_id);
            if let Some(request_id) = request_id {
                let end = if self.sessions.contains_key(&session) { WaitEnd::Cancelled } else { WaitEnd::SessionEnded };
                self.end_wait(name, session, request_id, end, events);
            }
            return false;
        };
        let expired = how == SessionEnd::Expired;
        if expired && holder.lock_delay_ms > 0 {
            let until = now.saturating_add(holder.lock_delay_ms);
            lock.closed_until_ms = lock.closed_until_ms.max(until);
            self.timers.insert(Timer { at_ms: until, name: name.to_string(), kind: TimerKind::DelayEnd });
        }
        self.disown(session, name);
        if self.bugs.token_reuse_on_handoff && holder.token == self.last_token {
            // Deliberate bug: the next grant gets the released holder's token again.
            self.last_token -= 1;
        }
        self.remember(session, holder.request_id, name, RecentResult::Released { token: holder.token });
        let held_ms = now.saturating_sub(holder.granted_ms);
        events.push(Event::Released { name: name.to_string(), session, token: holder.token, expired, kind, held_ms });
        self.grant_waiters(name, events);
        let leaderless = self.locks.get(name).is_none_or(|l| l.holders.is_empty());
        if kind == Kind::Election && leaderless {
            events.push(Event::LeaderChanged { name: name.to_string(), session: 0, token: 0, value: Vec::new() });
        }
        true
    }

    /// Removes the deadline timer of a waiter that leaves the queue.
    pub(crate) fn forget_deadline(&mut self, name: &str, w: &Waiter) {
        self.timers.remove(&Timer {
            at_ms: w.deadline_ms,
            name: name.to_string(),
            kind: TimerKind::WaitDeadline { session: w.session, request_id: w.request_id },
        });
    }

    fn own(&mut self, session: SessionId, name: &str) {
        let Some(s) = self.sessions.get_mut(&session) else { return };
        if s.owned.insert(name) {
            let client = s.client.clone();
            self.count_names(&client, 1, true);
        }
    }

    pub(crate) fn disown(&mut self, session: SessionId, name: &str) {
        let Some(s) = self.sessions.get_mut(&session) else { return };
        if s.owned.remove(name) {
            let client = s.client.clone();
            self.count_names(&client, 1, false);
        }
    }

    fn forget_if_idle(&mut self, name: &str) {
        let now = self.now_ms;
        if self.locks.get(name).is_some_and(|l| l.is_idle(now)) {
            self.locks.remove(name);
        }
    }
}

/// An election value must be at most [`crate::value::MAX_VALUE_BYTES`].
pub(crate) fn check_value(value: &[u8]) -> Result<()> {
    if value.len() > crate::value::MAX_VALUE_BYTES {
        return Err(Error::InvalidArgument(format!(
            "value of {} bytes is larger than the limit of {} bytes",
            value.len(),
            crate::value::MAX_VALUE_BYTES
        )));
    }
    Ok(())
}
