//! A simulated client: sessions, keepalives, acquire / hold / release cycles, retries with the
//! same request id, and its own view of its lease on its own drifting clock — the same rules as
//! `baton-client`.

use std::collections::VecDeque;

use baton_core::{AcquireRequest, Command, Kind, Mode, Outcome};
use baton_node::{AcquireResult, Answer, NodeError, Query, Reply, Request};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::check::{CounterOp, History, Hold, Time, Violation};

/// A clock with its own origin and rate (drift in parts per million).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub offset_ms: u64,
    pub rate_ppm: i64,
}

impl Clock {
    /// This clock's reading, in ms, at virtual time `t` (µs).
    pub fn local_ms(&self, t: Time) -> u64 {
        let scaled = (t as i128 * (1_000_000 + self.rate_ppm as i128)) / 1_000_000;
        self.offset_ms + (scaled / 1000) as u64
    }

    /// The virtual time (µs) at which this clock reads `ms`.
    pub fn virtual_at(&self, ms: u64) -> Time {
        let local_us = (ms.saturating_sub(self.offset_ms)) as i128 * 1000;
        ((local_us * 1_000_000) / (1_000_000 + self.rate_ppm as i128)) as Time
    }
}

/// A message from a client to a node.
#[derive(Clone, Debug)]
pub enum ClientMsg {
    /// A request answered through `Requests` (keepalives are reads).
    Request { creq: u64, request: Request },
}

/// A node's answer to a client.
#[derive(Clone, Debug)]
pub enum NodeReply {
    Answer { creq: u64, result: Result<Answer, NodeError> },
}

struct Session {
    id: u64,
    ttl_ms: u64,
    valid_until_local: u64,
    keepalive: Option<(u64, u64)>,
    next_keepalive_local: u64,
}

enum Op {
    Idle {
        until_local: u64,
    },
    Opening {
        creq: u64,
        /// The open's request id: a resend carries the same one, so it returns the same session.
        request_id: u64,
        /// When the first attempt was sent: the session cannot have been opened (and its lease
        /// started) before that, so the client's lease is measured from it, not from a resend.
        first_sent_local: u64,
        sent_local: u64,
        /// An error answered the last attempt (it already chose the next target).
        answered: bool,
    },
    Acquiring {
        creq: u64,
        req: AcquireRequest,
        resend_local: u64,
        started: Time,
    },
    Holding {
        name: String,
        token: u64,
        release_local: u64,
    },
    Releasing {
        creq: u64,
        name: String,
        token: u64,
        resend_local: u64,
    },
    /// A counter add (+1) or read in flight; `op` indexes `History::counter_ops`.
    Counting {
        creq: u64,
        add: bool,
        op: usize,
        resend_local: u64,
    },
}

/// One simulated client.
pub struct SimClient {
    pub id: usize,
    pub clock: Clock,
    pub alive: bool,
    nodes: usize,
    target: u64,
    names: usize,
    ttl_ms: u64,
    session: Option<Session>,
    op: Op,
    next_creq: u64,
    next_request_id: u64,
    hold: Option<Hold>,
    /// Deliberate client bugs (broken variants).
    bugs: baton_core::Bugs,
    /// Frozen until this virtual time (a paused process handles nothing before it).
    paused_until: Time,
    /// Replies that arrived while paused, handled in order on resume.
    parked: VecDeque<NodeReply>,
    /// Forward jumps asked for and not yet taken (taken at the next step).
    pending_jump_ms: u64,
    /// The clocks before each jump, with the virtual time each stopped being used.
    old_clocks: Vec<(Time, Clock)>,
}

/// What a client step wants done.
pub struct Effects {
    pub sends: Vec<(u64, ClientMsg)>,
    pub trace: Vec<String>,
}

const RESEND_MS: u64 = 1_000;

impl SimClient {
    pub fn new(id: usize, clock: Clock, nodes: usize, names: usize, ttl_ms: u64, bugs: baton_core::Bugs) -> Self {
        SimClient {
            id,
            clock,
            alive: true,
            nodes,
            target: 1 + (id % nodes) as u64,
            names,
            ttl_ms,
            session: None,
            op: Op::Idle { until_local: 0 },
            next_creq: 1,
            next_request_id: 1,
            hold: None,
            bugs,
            paused_until: 0,
            parked: VecDeque::new(),
            pending_jump_ms: 0,
            old_clocks: Vec::new(),
        }
    }

    /// Freezes the client process until `until`: it handles nothing before then (replies wait,
    /// timers do not fire, renewals are not sent); everything queued is handled on resume. Its
    /// lease still runs out on its clock meanwhile, so a hold ends at the lease deadline.
    #[allow(dead_code)] // the nemesis's client pauses (world.rs) call it
    pub fn pause(&mut self, until: Time) {
        self.paused_until = self.paused_until.max(until);
    }

    /// The client's monotonic clock jumps `ms` forward. The jump takes effect at the client's
    /// next step (a process only sees its clock when it runs), and is remembered so that the
    /// virtual time of a lease deadline is found on the clock that was running at that moment.
    #[allow(dead_code)] // the nemesis's client clock jumps (world.rs) call it
    pub fn jump_clock(&mut self, ms: u64) {
        self.pending_jump_ms += ms;
    }

    /// Takes a pending clock jump at `now`.
    fn take_jump(&mut self, now: Time) {
        if self.pending_jump_ms > 0 {
            self.old_clocks.push((now, self.clock));
            self.clock.offset_ms += std::mem::take(&mut self.pending_jump_ms);
        }
    }

    /// The virtual time at which this client's clock first reads `ms`, across its jumps.
    fn virtual_at(&self, ms: u64) -> Time {
        let mut from = 0;
        for (until, clock) in &self.old_clocks {
            if clock.local_ms(from) >= ms {
                return from;
            }
            let t = clock.virtual_at(ms).max(from);
            if t < *until {
                return t;
            }
            from = *until;
        }
        if self.clock.local_ms(from) >= ms {
            return from;
        }
        self.clock.virtual_at(ms).max(from)
    }

    fn creq(&mut self) -> u64 {
        self.next_creq += 1;
        self.next_creq
    }

    fn next_target(&mut self) {
        self.target = 1 + (self.target % self.nodes as u64);
    }

    /// The client dies: it stops renewing and sending. Its hold lasts until its lease runs out.
    pub fn crash(&mut self, now: Time, hist: &mut History) {
        self.take_jump(now);
        self.end_hold_at_lease(now, hist);
        self.alive = false;
        self.paused_until = 0;
        self.parked.clear();
    }

    /// A new process takes the dead client's place (new session, new request ids).
    pub fn restart(&mut self, now: Time) {
        let _ = now;
        self.alive = true;
        self.session = None;
        self.op = Op::Idle { until_local: 0 };
        self.next_request_id += 1000;
        self.paused_until = 0;
        self.parked.clear();
    }

    fn lease_valid(&self, local: u64) -> bool {
        self.session.as_ref().is_some_and(|s| local < s.valid_until_local)
    }

    /// Ends the current hold when the lease runs out (or now, if it already has).
    fn end_hold_at_lease(&mut self, now: Time, hist: &mut History) {
        if let Some(mut h) = self.hold.take() {
            let lease_end = self.session.as_ref().map_or(now, |s| self.virtual_at(s.valid_until_local));
            h.until = lease_end.max(h.from);
            hist.holds.push(h);
        }
    }

    fn end_hold(&mut self, at: Time, hist: &mut History) {
        if let Some(mut h) = self.hold.take() {
            let lease_end = self.session.as_ref().map_or(at, |s| self.virtual_at(s.valid_until_local));
            h.until = at.min(lease_end).max(h.from);
            hist.holds.push(h);
        }
    }

    /// The session is gone (expired, or its lease ran out on our clock): abandon it.
    fn lose_session(&mut self, now: Time, why: &str, fx: &mut Effects, hist: &mut History) {
        if let Some(s) = &self.session {
            fx.trace.push(format!("client {} loses session {}: {why}", self.id, s.id));
        }
        self.end_hold_at_lease(now, hist);
        self.session = None;
        self.op = Op::Idle { until_local: 0 };
    }

    /// Handles an answer (if any), then makes progress. Returns the next virtual time to wake.
    pub fn step(
        &mut self,
        now: Time,
        reply: Option<NodeReply>,
        accept_new_work: bool,
        rng: &mut ChaCha8Rng,
        hist: &mut History,
    ) -> (Effects, Time) {
        let mut fx = Effects { sends: Vec::new(), trace: Vec::new() };
        if !self.alive {
            return (fx, Time::MAX);
        }
        if now < self.paused_until {
            self.parked.extend(reply);
            return (fx, self.paused_until);
        }
        self.take_jump(now);
        let local = self.clock.local_ms(now);
        let replies: Vec<NodeReply> = self.parked.drain(..).chain(reply).collect();
        for reply in replies {
            self.on_reply(now, local, reply, rng, &mut fx, hist);
        }
        // The lease is judged on our own clock, before anything else.
        if self.session.is_some() && !self.lease_valid(local) {
            self.lose_session(now, "no renewal within its ttl", &mut fx, hist);
        }
        self.keepalive(local, &mut fx);
        self.progress(now, local, accept_new_work, rng, &mut fx, hist);
        let next = self.next_wake(local);
        (fx, self.virtual_at(next).max(now + 1))
    }

    fn keepalive(&mut self, local: u64, fx: &mut Effects) {
        let creq = self.next_creq + 1;
        let target = self.target;
        let Some(s) = self.session.as_mut() else { return };
        let stale = s.keepalive.is_some_and(|(_, sent)| local >= sent + RESEND_MS);
        if (s.keepalive.is_none() || stale) && local >= s.next_keepalive_local {
            self.next_creq = creq;
            s.keepalive = Some((creq, local));
            s.next_keepalive_local = local + s.ttl_ms / 3;
            let request = Request::Read(Query::KeepAlive(vec![s.id]));
            fx.sends.push((target, ClientMsg::Request { creq, request }));
        }
    }

    fn next_wake(&self, local: u64) -> u64 {
        let mut next = local + 200;
        if let Some(s) = &self.session {
            next = next.min(s.next_keepalive_local.max(local + 1)).min(s.valid_until_local.max(local + 1));
        }
        let op_at = match &self.op {
            Op::Idle { until_local } => *until_local,
            Op::Opening { sent_local, .. } => sent_local + RESEND_MS,
            Op::Acquiring { resend_local, .. } => *resend_local,
            Op::Holding { release_local, .. } => *release_local,
            Op::Releasing { resend_local, .. } => *resend_local,
            Op::Counting { resend_local, .. } => *resend_local,
        };
        next.min(op_at.max(local + 1))
    }

    fn progress(
        &mut self,
        now: Time,
        local: u64,
        accept_new_work: bool,
        rng: &mut ChaCha8Rng,
        fx: &mut Effects,
        hist: &mut History,
    ) {
        match &self.op {
            Op::Idle { until_local } if local >= *until_local && accept_new_work => {
                if self.session.is_none() {
                    self.next_request_id += 1;
                    self.send_open(local, self.next_request_id, local, fx);
                    return;
                }
                if rng.gen_bool(0.2) {
                    // A counter operation: +1, or a linearizable read.
                    let add = rng.gen_bool(0.6);
                    if !add {
                        // Reads go to any node: only the leader may answer them (after a
                        // ReadIndex round); anyone else must redirect.
                        self.target = rng.gen_range(1..=self.nodes as u64);
                    }
                    let op = hist.counter_ops.len();
                    hist.counter_ops.push(CounterOp { add, invoked: now, completed: None, value: None });
                    self.send_counter(local, add, op, fx);
                    return;
                }
                let session = self.session.as_ref().map(|s| s.id).unwrap_or(0);
                let name = format!("lock-{}", rng.gen_range(0..self.names));
                let wait_ms = if rng.gen_bool(0.3) { None } else { Some(rng.gen_range(100..3_000)) };
                let lock_delay_ms = if rng.gen_bool(0.2) { rng.gen_range(1..500) } else { 0 };
                self.next_request_id += 1;
                // lock-0 is an exclusive lock, lock-1 a read/write lock, lock-2 a semaphore,
                // lock-3 an election, lock-4 a barrier (passing it holds nothing; the "release"
                // that follows is refused and ignored).
                let (kind, mode) = match name.as_str() {
                    "lock-1" if rng.gen_bool(0.6) => (Kind::RwLock, Mode::Shared),
                    "lock-1" => (Kind::RwLock, Mode::Exclusive),
                    "lock-2" => (Kind::Semaphore { capacity: 2 }, Mode::Permits(rng.gen_range(1..=2))),
                    "lock-3" => (Kind::Election, Mode::Exclusive),
                    "lock-4" => (Kind::Barrier { parties: crate::check::BARRIER_PARTIES }, Mode::Exclusive),
                    _ => (Kind::Mutex, Mode::Exclusive),
                };
                let req = AcquireRequest {
                    name,
                    session,
                    request_id: self.next_request_id,
                    wait_ms,
                    lock_delay_ms,
                    kind,
                    mode,
                    value: if kind == Kind::Election { format!("c{}", self.id).into_bytes() } else { Vec::new() },
                };
                self.send_acquire(now, local, req, fx);
            }
            Op::Opening { sent_local, request_id, first_sent_local, answered, .. }
                if local >= sent_local + RESEND_MS =>
            {
                // Try again with the same request id (opens are idempotent); unanswered, at
                // another node.
                let (request_id, first) = (*request_id, *first_sent_local);
                if !*answered {
                    self.next_target();
                }
                self.send_open(local, request_id, first, fx);
            }
            Op::Acquiring { req, resend_local, started, .. }
                if local >= *resend_local && !self.bugs.acquire_never_resent =>
            {
                let (req, started) = (req.clone(), *started);
                self.next_target();
                self.send_acquire(started, local, req, fx);
            }
            Op::Holding { name, token, release_local } if local >= *release_local => {
                let (name, token) = (name.clone(), *token);
                self.end_hold(now, hist);
                self.send_release(local, name, token, fx);
            }
            Op::Counting { add, op, resend_local, .. } if local >= *resend_local => {
                let (add, op) = (*add, *op);
                self.next_target();
                if add {
                    // Unanswered: it may or may not have applied; never sent twice.
                    self.op = Op::Idle { until_local: local };
                } else {
                    self.send_counter(local, false, op, fx);
                }
            }
            Op::Releasing { name, token, resend_local, .. } if local >= *resend_local => {
                let (name, token) = (name.clone(), *token);
                self.next_target();
                self.send_release(local, name, token, fx);
            }
            _ => {}
        }
    }

    fn send_open(&mut self, local: u64, request_id: u64, first_sent_local: u64, fx: &mut Effects) {
        let creq = self.creq();
        let command = Command::OpenSession { client: format!("c{}", self.id), ttl_ms: self.ttl_ms, request_id };
        fx.sends.push((self.target, ClientMsg::Request { creq, request: Request::Propose(command) }));
        self.op = Op::Opening { creq, request_id, first_sent_local, sent_local: local, answered: false };
    }

    fn send_acquire(&mut self, started: Time, local: u64, req: AcquireRequest, fx: &mut Effects) {
        let creq = self.creq();
        let resend_local = local + req.wait_ms.unwrap_or(0) + RESEND_MS;
        fx.sends.push((self.target, ClientMsg::Request { creq, request: Request::Acquire(req.clone()) }));
        self.op = Op::Acquiring { creq, req, resend_local, started };
    }

    fn send_counter(&mut self, local: u64, add: bool, op: usize, fx: &mut Effects) {
        let creq = self.creq();
        let request = if add {
            Request::Propose(Command::CounterAdd { name: "ctr".into(), delta: 1 })
        } else {
            Request::Read(Query::Counter("ctr".into()))
        };
        fx.sends.push((self.target, ClientMsg::Request { creq, request }));
        self.op = Op::Counting { creq, add, op, resend_local: local + RESEND_MS };
    }

    fn send_release(&mut self, local: u64, name: String, token: u64, fx: &mut Effects) {
        let creq = self.creq();
        let session = self.session.as_ref().map(|s| s.id).unwrap_or(0);
        let command = Command::Release { name: name.clone(), session, token };
        fx.sends.push((self.target, ClientMsg::Request { creq, request: Request::Propose(command) }));
        self.op = Op::Releasing { creq, name, token, resend_local: local + RESEND_MS };
    }

    fn follow(&mut self, err: &NodeError) -> bool {
        match err {
            NodeError::NotLeader { leader: Some(l), .. } => {
                self.target = *l;
                true
            }
            NodeError::NotLeader { leader: None, .. } | NodeError::Unavailable(_) | NodeError::Busy(_) => {
                self.next_target();
                true
            }
            _ => false,
        }
    }

    fn on_reply(
        &mut self,
        now: Time,
        local: u64,
        reply: NodeReply,
        rng: &mut ChaCha8Rng,
        fx: &mut Effects,
        hist: &mut History,
    ) {
        match reply {
            NodeReply::Answer { creq, result }
                if self.session.as_ref().and_then(|s| s.keepalive).is_some_and(|(pending, _)| pending == creq) =>
            {
                let s = self.session.as_mut().expect("checked");
                let (_, sent) = s.keepalive.take().expect("checked");
                match result {
                    Ok(Answer::Read(Reply::KeepAlive(leases))) => match leases.first() {
                        Some((_, Some(ttl))) => s.valid_until_local = s.valid_until_local.max(sent + ttl - ttl / 10),
                        _ => self.lose_session(now, "the leader says it is gone", fx, hist),
                    },
                    Ok(other) => hist.violations.push(unexpected(now, self.id, &other)),
                    Err(e) => {
                        self.follow(&e);
                        if let Some(s) = self.session.as_mut() {
                            s.next_keepalive_local = local;
                        }
                    }
                }
            }
            NodeReply::Answer { creq, result } => self.on_answer(now, local, creq, result, rng, fx, hist),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_answer(
        &mut self,
        now: Time,
        local: u64,
        creq: u64,
        result: Result<Answer, NodeError>,
        rng: &mut ChaCha8Rng,
        fx: &mut Effects,
        hist: &mut History,
    ) {
        match &self.op {
            Op::Opening { creq: c, first_sent_local, .. } if *c == creq => {
                let sent_local = *first_sent_local;
                match result {
                    Ok(Answer::Applied(Outcome::SessionOpened { session, ttl_ms })) => {
                        fx.trace.push(format!("client {} opened session {session}", self.id));
                        self.session = Some(Session {
                            id: session,
                            ttl_ms,
                            valid_until_local: sent_local + ttl_ms - ttl_ms / 10,
                            keepalive: None,
                            next_keepalive_local: local + ttl_ms / 3,
                        });
                        self.op = Op::Idle { until_local: local + rng.gen_range(0..100) };
                    }
                    Err(e) => {
                        // It may have applied: resend the same request id in 50 ms (to the
                        // leader, if the error named one), so that no second session is opened.
                        self.follow(&e);
                        if let Op::Opening { sent_local, answered, .. } = &mut self.op {
                            *sent_local = (local + 50).saturating_sub(RESEND_MS);
                            *answered = true;
                        }
                    }
                    Ok(other) => hist.violations.push(unexpected(now, self.id, &other)),
                }
            }
            Op::Acquiring { creq: c, req, started, .. } if *c == creq => {
                let (req, started) = (req.clone(), *started);
                match result {
                    Ok(Answer::Acquire(AcquireResult::Granted(token))) => {
                        hist.received.push((req.name.clone(), req.session, token, now));
                        if !self.lease_valid(local) {
                            // Granted to a session we already consider lost: never use it.
                            self.lose_session(now, "grant arrived after the lease ran out", fx, hist);
                            return;
                        }
                        fx.trace.push(format!("client {} holds {} with token {token}", self.id, req.name));
                        self.hold = Some(Hold {
                            kind: req.kind,
                            mode: req.mode,
                            name: req.name.clone(),
                            client: self.id,
                            session: req.session,
                            token,
                            from: now,
                            until: now,
                        });
                        let release_local = local + rng.gen_range(10..400);
                        self.op = Op::Holding { name: req.name, token, release_local };
                    }
                    Ok(Answer::Acquire(_)) => self.op = Op::Idle { until_local: local + rng.gen_range(0..200) },
                    Err(NodeError::Rejected(baton_core::Error::SessionNotFound(_))) => {
                        self.lose_session(now, "acquire says it is gone", fx, hist)
                    }
                    Err(NodeError::Rejected(e)) => {
                        fx.trace.push(format!("client {} acquire rejected: {e}", self.id));
                        self.op = Op::Idle { until_local: local + 100 };
                    }
                    Err(e) => {
                        // Retry the same request (same id: it cannot queue twice).
                        self.follow(&e);
                        self.send_acquire(started, local, req, fx);
                    }
                    Ok(other) => hist.violations.push(unexpected(now, self.id, &other)),
                }
            }
            Op::Counting { creq: c, add, op, .. } if *c == creq => {
                let (add, op) = (*add, *op);
                let value = match result {
                    Ok(Answer::Applied(Outcome::Counter { value, .. })) | Ok(Answer::Read(Reply::Counter(value))) => {
                        value
                    }
                    // Never proposed: safe to send again (to the leader).
                    Err(e @ NodeError::NotLeader { .. }) => {
                        self.follow(&e);
                        self.send_counter(local, add, op, fx);
                        return;
                    }
                    Err(e) if !add => {
                        self.follow(&e);
                        self.send_counter(local, add, op, fx);
                        return;
                    }
                    // An add whose fate is unknown: leave it open in the history.
                    Err(_) => {
                        self.op = Op::Idle { until_local: local };
                        return;
                    }
                    Ok(other) => {
                        hist.violations.push(unexpected(now, self.id, &other));
                        return;
                    }
                };
                hist.counter_ops[op].completed = Some(now);
                hist.counter_ops[op].value = Some(value);
                self.op = Op::Idle { until_local: local + rng.gen_range(0..100) };
            }
            Op::Releasing { creq: c, name, token, .. } if *c == creq => {
                let (name, token) = (name.clone(), *token);
                match result {
                    Ok(_) | Err(NodeError::Rejected(_)) => {
                        fx.trace.push(format!("client {} released {name} (token {token})", self.id));
                        if rng.gen_bool(0.1) {
                            // Sometimes close the session and start a new one.
                            let creq = self.creq();
                            if let Some(s) = self.session.take() {
                                let command = Command::CloseSession { session: s.id };
                                fx.sends.push((
                                    self.target,
                                    ClientMsg::Request { creq, request: Request::Propose(command) },
                                ));
                            }
                        }
                        self.op = Op::Idle { until_local: local + rng.gen_range(0..200) };
                    }
                    Err(e) => {
                        self.follow(&e);
                        self.send_release(local, name, token, fx);
                    }
                }
            }
            _ => {}
        }
    }

    /// Liveness: a wait still open long after it should have ended.
    pub fn check_liveness(&self, now: Time, hist: &mut History) {
        if let (true, Op::Acquiring { req, started, .. }) = (self.alive, &self.op) {
            let bound = (req.wait_ms.unwrap_or(0) + 10_000) * 1000;
            if now.saturating_sub(*started) > bound {
                hist.violations.push(Violation {
                    property: "liveness",
                    detail: format!(
                        "client {} has waited {} ms for {:?} (request {}, wait {:?} ms) after faults healed",
                        self.id,
                        (now - started) / 1000,
                        req.name,
                        req.request_id,
                        req.wait_ms
                    ),
                    at: now,
                });
            }
        }
    }

    /// Ends the hold, if any, at the end of the run.
    pub fn finish(&mut self, now: Time, hist: &mut History) {
        self.take_jump(now);
        self.end_hold(now, hist);
    }
}

fn unexpected(now: Time, client: usize, answer: &Answer) -> Violation {
    Violation { property: "protocol", detail: format!("client {client} got an unexpected answer {answer:?}"), at: now }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deadline is placed on the clock that was running when it was reached: before a jump
    /// on the old clock, across a jump at the jump, after it on the new clock.
    #[test]
    fn deadlines_are_found_across_clock_jumps() {
        let clock = Clock { offset_ms: 1_000, rate_ppm: 0 };
        let mut c = SimClient::new(0, clock, 3, 5, 2_000, baton_core::Bugs::default());
        assert_eq!(c.virtual_at(1_500), 500_000);
        c.jump_clock(300);
        c.take_jump(600_000); // local 1_600 becomes 1_900
        assert_eq!(c.virtual_at(1_500), 500_000, "reached before the jump");
        assert_eq!(c.virtual_at(1_800), 600_000, "jumped over");
        assert_eq!(c.virtual_at(2_000), 700_000, "after the jump, on the new clock");
    }

    /// A paused client parks what arrives and wakes only when the pause ends.
    #[test]
    fn a_paused_client_handles_nothing_until_it_resumes() {
        use rand::SeedableRng;
        let clock = Clock { offset_ms: 0, rate_ppm: 0 };
        let mut c = SimClient::new(0, clock, 3, 5, 2_000, baton_core::Bugs::default());
        let (mut rng, mut hist) = (ChaCha8Rng::seed_from_u64(1), History::default());
        c.pause(5_000_000);
        let reply = NodeReply::Answer { creq: 99, result: Err(NodeError::Busy(1)) };
        let (fx, wake) = c.step(1_000, Some(reply), true, &mut rng, &mut hist);
        assert!(fx.sends.is_empty());
        assert_eq!(wake, 5_000_000);
        assert_eq!(c.parked.len(), 1);
        let (fx, _) = c.step(5_000_000, None, true, &mut rng, &mut hist);
        assert!(c.parked.is_empty());
        assert_eq!(fx.sends.len(), 1, "it opens its session on resume");
    }
}
