//! A simulated client process: its clock (drift, jumps, pauses), its session and keepalives, and
//! its calls with their retries.
//!
//! Every rule of the real client comes from [`baton_client::core`], the same code the async
//! client runs: the lease deadline ([`Lease`]), when to renew and when an unanswered renewal
//! gives a node up ([`Renewals`]), which node to ask ([`Route`]), what a failed attempt means
//! for each operation ([`decide`] over the [`ErrorClass`] a [`NodeError`] maps to), and request
//! ids ([`RequestIds`]). What this file adds is only the simulated I/O: messages through the
//! world, timers as wake-ups, time as the client's own clock in ms. What the client does
//! (the workload) and what it checks of each answer is in `workload.rs`.

use std::collections::{BTreeMap, VecDeque};

use baton_client::core::{
    attempt_timeout_ms, decide, next_backoff_ms, renew_pause_ms, request_id_seed, Decision, ErrorClass, Lease, Op,
    Renew, Renewals, RequestIds, Route, FIRST_BACKOFF_MS,
};
use baton_core::SessionId;
use baton_node::{Answer, NodeError, Request};
use rand_chacha::ChaCha8Rng;

use crate::check::{History, Time};
use crate::workload::{Held, Probe, Work};

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
    /// A request answered through `Requests` (keepalives are reads), with the client's
    /// operation for it: the network duplicates only what the client's own rule repeats.
    Request { creq: u64, op: Op, request: Request },
}

/// A node's answer to a client.
#[derive(Clone, Debug)]
pub enum NodeReply {
    Answer { creq: u64, result: Result<Answer, NodeError> },
}

/// What a client step wants done.
#[derive(Default)]
pub struct Effects {
    pub sends: Vec<(u64, ClientMsg)>,
    pub trace: Vec<String>,
}

/// How long one attempt may go unanswered (the async client's `attempt_timeout`, scaled to the
/// simulated TTL), and the longest attempt of a waiting acquire.
const ATTEMPT_MS: u64 = 1_000;
const MAX_ATTEMPT_MS: u64 = 30_000;

/// The client's session: its lease and renewal schedule, from the shared rules.
pub(crate) struct Session {
    pub(crate) id: SessionId,
    pub(crate) lease: Lease,
    renewals: Renewals,
    /// The renewal in flight: its creq and the node it went to.
    keepalive: Option<(u64, u64)>,
}

/// The call in flight: its request, where its attempt went, and when that is given up.
pub(crate) struct Call {
    creq: u64,
    node: u64,
    op: Op,
    pub(crate) request: Request,
    wait_ms: u64,
    /// When the attempt in flight is given up (no answer).
    timeout_local: u64,
    /// Set while pausing before the next attempt.
    resend_local: Option<u64>,
    backoff_ms: u64,
    pub(crate) work: Work,
}

/// How a call ended without an answer to use.
pub(crate) enum Failure {
    /// The server refused it (nothing changed).
    Refused(NodeError),
    /// It may or may not have applied, and must not be repeated.
    Unknown,
}

/// The class of a node's error, as the shared retry rule sees it (the async client sorts gRPC
/// statuses into the same classes: `baton_client::retry::class_of_status`).
pub(crate) fn class_of(e: &NodeError) -> ErrorClass<u64> {
    match e {
        NodeError::NotLeader { leader, .. } | NodeError::Moved { leader, .. } => {
            ErrorClass::NotLeader { leader: *leader }
        }
        NodeError::Busy(_) => ErrorClass::Busy,
        NodeError::Unavailable(_) => ErrorClass::MayHaveApplied,
        // As the server marks it (ErrorInfo OUTCOME_FORGOTTEN): the first attempt may have applied.
        NodeError::Rejected(baton_core::Error::RetryTooLate { .. }) => ErrorClass::Forgotten,
        NodeError::Rejected(_) | NodeError::NoGroup(_) => ErrorClass::Refused,
    }
}

/// One simulated client.
pub struct SimClient {
    pub id: usize,
    pub clock: Clock,
    pub alive: bool,
    pub(crate) names: usize,
    pub(crate) ttl_ms: u64,
    nodes: usize,
    pub(crate) route: Route<u64>,
    pub(crate) ids: RequestIds,
    pub(crate) session: Option<Session>,
    pub(crate) call: Option<Call>,
    /// No new work before this (local ms).
    pub(crate) idle_until: u64,
    pub(crate) held: Option<Held>,
    /// One-shot requests whose answers are only checked, by creq.
    pub(crate) probes: BTreeMap<u64, Probe>,
    /// What the workload remembers between calls.
    pub(crate) memory: crate::workload::Memory,
    /// Deliberate client bugs (broken variants).
    pub(crate) bugs: baton_core::Bugs,
    next_creq: u64,
    /// Frozen until this virtual time (a paused process handles nothing before it).
    paused_until: Time,
    /// Replies that arrived while paused, handled in order on resume.
    parked: VecDeque<NodeReply>,
    /// Forward jumps asked for and not yet taken (taken at the next step).
    pending_jump_ms: u64,
    /// The clocks before each jump, with the virtual time each stopped being used.
    old_clocks: Vec<(Time, Clock)>,
}

impl SimClient {
    pub fn new(id: usize, clock: Clock, nodes: usize, names: usize, ttl_ms: u64, bugs: baton_core::Bugs) -> Self {
        SimClient {
            id,
            clock,
            alive: true,
            names,
            ttl_ms,
            nodes,
            route: Route::new((1..=nodes as u64).collect(), id),
            // The real client seeds its ids from the wall clock at start, which all clients
            // share: virtual time here (all start at 0, so their ids meet, as they may).
            ids: RequestIds::starting_at(request_id_seed(0)),
            session: None,
            call: None,
            idle_until: 0,
            held: None,
            probes: BTreeMap::new(),
            memory: Default::default(),
            bugs,
            next_creq: 1,
            paused_until: 0,
            parked: VecDeque::new(),
            pending_jump_ms: 0,
            old_clocks: Vec::new(),
        }
    }

    /// Freezes the client process until `until`: it handles nothing before then (replies wait,
    /// timers do not fire, renewals are not sent); everything queued is handled on resume. Its
    /// lease still runs out on its clock meanwhile, so a hold ends at the lease deadline.
    pub fn pause(&mut self, until: Time) {
        self.paused_until = self.paused_until.max(until);
    }

    /// The client's monotonic clock jumps `ms` forward. The jump takes effect at the client's
    /// next step (a process only sees its clock when it runs), and is remembered so that the
    /// virtual time of a lease deadline is found on the clock that was running at that moment.
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
    pub(crate) fn virtual_at(&self, ms: u64) -> Time {
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

    pub(crate) fn creq(&mut self) -> u64 {
        self.next_creq += 1;
        self.next_creq
    }

    /// A node chosen at random (reads go anywhere first, so that a stale answer shows).
    pub(crate) fn any_node(&self, rng: &mut ChaCha8Rng) -> u64 {
        use rand::Rng;
        rng.gen_range(1..=self.nodes as u64)
    }

    /// The lease is valid now (on this client's clock).
    pub(crate) fn lease_valid(&self, local: u64) -> bool {
        self.session.as_ref().is_some_and(|s| s.lease.is_valid(local))
    }

    /// The client dies: it stops renewing and sending. Its hold lasts until its lease runs out.
    pub fn crash(&mut self, now: Time, hist: &mut History) {
        self.take_jump(now);
        self.end_hold_at_lease(now, hist);
        self.alive = false;
        self.paused_until = 0;
        self.parked.clear();
    }

    /// A new process takes the dead client's place: new session, and request ids that start
    /// above the old process's (the shared seed rule, on the wall clock: virtual time).
    pub fn restart(&mut self, now: Time) {
        self.alive = true;
        self.session = None;
        self.call = None;
        self.held = None;
        self.probes.clear();
        self.memory = Default::default();
        self.idle_until = 0;
        self.ids = RequestIds::starting_at(request_id_seed(now));
        self.paused_until = 0;
        self.parked.clear();
    }

    /// Ends the current hold when the lease runs out (or now, if it already has).
    fn end_hold_at_lease(&mut self, now: Time, hist: &mut History) {
        if let Some(held) = self.held.take() {
            let mut h = held.hold;
            let lease_end = self.session.as_ref().map_or(now, |s| self.virtual_at(s.lease.deadline_ms()));
            h.until = lease_end.max(h.from);
            hist.holds.push(h);
        }
    }

    /// Ends the current hold at `at` (a release is sent), or at the lease's end if earlier.
    pub(crate) fn end_hold(&mut self, at: Time, hist: &mut History) {
        if let Some(held) = self.held.take() {
            let mut h = held.hold;
            let lease_end = self.session.as_ref().map_or(at, |s| self.virtual_at(s.lease.deadline_ms()));
            h.until = at.min(lease_end).max(h.from);
            hist.holds.push(h);
        }
    }

    /// The session is gone (expired, or its lease ran out on our clock): abandon it and every
    /// call made through it.
    pub(crate) fn lose_session(&mut self, now: Time, why: &str, fx: &mut Effects, hist: &mut History) {
        if let Some(s) = &self.session {
            fx.trace.push(format!("client {} loses session {}: {why}", self.id, s.id));
        }
        self.end_hold_at_lease(now, hist);
        self.session = None;
        self.call = None;
        self.memory = Default::default();
        self.idle_until = 0;
    }

    /// A session was opened: its lease runs from the open's first send, renewals start a
    /// renewal interval from now.
    pub(crate) fn opened(&mut self, id: SessionId, ttl_ms: u64, first_sent_local: u64, local: u64) {
        let first = local + baton_client::core::renew_interval_ms(ttl_ms);
        self.session = Some(Session {
            id,
            lease: Lease::new(ttl_ms, (id >> 48) + 1, first_sent_local, local),
            renewals: Renewals::new(ttl_ms, first),
            keepalive: None,
        });
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
        let mut fx = Effects::default();
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
            self.lose_session(now, "no renewal acknowledged within its ttl", &mut fx, hist);
        }
        self.keepalive(local, &mut fx);
        self.retry_due(now, local, rng, &mut fx, hist);
        if self.call.is_none() {
            self.next_work(now, local, accept_new_work, rng, &mut fx, hist);
        }
        let next = self.next_wake(local);
        (fx, self.virtual_at(next).max(now + 1))
    }

    /// Sends a renewal when the shared schedule says so; gives a silent node up when it says so.
    fn keepalive(&mut self, local: u64, fx: &mut Effects) {
        for _ in 0..2 {
            let Some(s) = self.session.as_mut() else { return };
            match s.renewals.poll(local) {
                Renew::Wait(_) => return,
                Renew::Send => {
                    let (sid, node) = (s.id, *self.route.current());
                    let creq = self.creq();
                    let s = self.session.as_mut().expect("checked");
                    s.keepalive = Some((creq, node));
                    let request = Request::KeepAlive(vec![sid]);
                    fx.sends.push((node, ClientMsg::Request { creq, op: Op::Read, request }));
                    return;
                }
                Renew::GiveUp => {
                    if let Some((_, node)) = s.keepalive.take() {
                        self.renewal_failed(local, node, ErrorClass::NoAnswer);
                    }
                }
            }
        }
    }

    /// A renewal failed: move on as the shared rule says for a read, and pause as the async
    /// client pauses before its next stream.
    fn renewal_failed(&mut self, local: u64, node: u64, class: ErrorClass<u64>) {
        let (leader, stay) = match decide(class, Op::Read.repeat()) {
            Decision::Retry { leader, stay, .. } => (leader, stay),
            Decision::Refused | Decision::OutcomeUnknown => (None, false),
        };
        let redirected = !stay && self.route.moved_on(&node, leader);
        if let Some(s) = self.session.as_mut() {
            s.renewals.failed(local + renew_pause_ms(redirected));
        }
    }

    fn next_wake(&self, local: u64) -> u64 {
        let mut next = local + 200;
        if let Some(s) = &self.session {
            next = next.min(s.renewals.next_ms()).min(s.lease.deadline_ms());
        }
        match &self.call {
            Some(c) => next = next.min(c.resend_local.unwrap_or(c.timeout_local)),
            None => {
                next = next.min(self.idle_until);
                if let Some(h) = &self.held {
                    next = next.min(h.release_local);
                }
            }
        }
        next.max(local + 1)
    }

    /// Starts a call: its first attempt goes to `first` if given, else where the route points.
    /// Sends one attempt of a request outside the call in progress (a probe of the workload, a
    /// session close), to the node the route points to; the answer's creq.
    pub(crate) fn send_once(&mut self, op: Op, request: Request, fx: &mut Effects) -> u64 {
        let creq = self.creq();
        fx.sends.push((*self.route.current(), ClientMsg::Request { creq, op, request }));
        creq
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start_call(
        &mut self,
        local: u64,
        op: Op,
        request: Request,
        wait_ms: u64,
        first: Option<u64>,
        work: Work,
        fx: &mut Effects,
    ) {
        let mut call = Call {
            creq: 0,
            node: 0,
            op,
            request,
            wait_ms,
            timeout_local: 0,
            resend_local: None,
            backoff_ms: FIRST_BACKOFF_MS,
            work,
        };
        self.send_attempt(&mut call, local, first, fx);
        self.call = Some(call);
    }

    fn send_attempt(&mut self, call: &mut Call, local: u64, to: Option<u64>, fx: &mut Effects) {
        call.creq = self.creq();
        call.node = to.unwrap_or(*self.route.current());
        call.timeout_local = local + attempt_timeout_ms(call.wait_ms, ATTEMPT_MS, MAX_ATTEMPT_MS);
        call.resend_local = None;
        let msg = ClientMsg::Request { creq: call.creq, op: call.op, request: call.request.clone() };
        fx.sends.push((call.node, msg));
    }

    /// The call's pause before its next attempt is over, or its attempt went unanswered.
    fn retry_due(&mut self, now: Time, local: u64, rng: &mut ChaCha8Rng, fx: &mut Effects, hist: &mut History) {
        let Some(call) = self.call.as_mut() else { return };
        if let Some(at) = call.resend_local {
            if local >= at {
                let mut call = self.call.take().expect("checked");
                self.send_attempt(&mut call, local, None, fx);
                self.call = Some(call);
            }
            return;
        }
        if local < call.timeout_local {
            return;
        }
        if self.bugs.acquire_never_resent && matches!(call.work, Work::Acquire { .. }) {
            call.timeout_local = u64::MAX; // deliberate bug: wait for this attempt forever
            return;
        }
        self.attempt_failed(now, local, ErrorClass::NoAnswer, None, rng, fx, hist);
    }

    /// One attempt of the call failed: the shared rule decides whether (and where) it goes again.
    #[allow(clippy::too_many_arguments)]
    fn attempt_failed(
        &mut self,
        now: Time,
        local: u64,
        class: ErrorClass<u64>,
        error: Option<NodeError>,
        rng: &mut ChaCha8Rng,
        fx: &mut Effects,
        hist: &mut History,
    ) {
        let mut call = self.call.take().expect("a call in flight");
        match decide(class, call.op.repeat()) {
            Decision::Retry { leader, stay, backoff, .. } => {
                let redirected = !stay && self.route.moved_on(&call.node, leader);
                self.bug_new_request_id(&mut call, hist);
                if backoff.pause(redirected) {
                    call.creq = 0; // the abandoned attempt's answer is not waited for
                    call.resend_local = Some(local + call.backoff_ms);
                    call.backoff_ms = next_backoff_ms(call.backoff_ms);
                    self.call = Some(call);
                } else {
                    self.send_attempt(&mut call, local, None, fx);
                    self.call = Some(call);
                }
            }
            Decision::Refused => {
                let e = error.expect("only an answer refuses");
                self.finish_call(now, local, call.work, Err(Failure::Refused(e)), rng, fx, hist);
            }
            Decision::OutcomeUnknown => self.finish_call(now, local, call.work, Err(Failure::Unknown), rng, fx, hist),
        }
    }

    /// Deliberate bug `acquire-retry-new-id`: an acquire is sent again under a new request id.
    fn bug_new_request_id(&mut self, call: &mut Call, hist: &mut History) {
        if !self.bugs.acquire_retry_new_id {
            return;
        }
        if let Work::Acquire { req, call: index, .. } = &mut call.work {
            req.request_id = self.ids.next();
            hist.acquire_calls[*index].1.push(req.request_id);
            call.request = Request::Acquire(req.clone());
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
        let NodeReply::Answer { creq, result } = reply;
        let renewal = self.session.as_ref().and_then(|s| s.keepalive).filter(|(c, _)| *c == creq);
        if let Some((_, node)) = renewal {
            let s = self.session.as_mut().expect("checked");
            s.keepalive = None;
            let sent = s.renewals.answered();
            match result {
                Ok(Answer::KeepAlive(r)) => {
                    let lease = r.leases.first().cloned().unwrap_or_default();
                    // No send time: an answer to an abandoned renewal, which proves nothing.
                    let alive =
                        sent.is_none_or(|sent| s.lease.renewal(sent, &r.groups, &lease.groups, &lease.moved_to));
                    if !alive {
                        self.lose_session(now, "the leader says it is gone", fx, hist);
                    }
                }
                Ok(other) => hist.violations.push(crate::workload::unexpected(now, self.id, &other)),
                Err(e) => self.renewal_failed(local, node, class_of(&e)),
            }
            return;
        }
        if let Some(probe) = self.probes.remove(&creq) {
            self.on_probe(now, local, probe, result, fx, hist);
            return;
        }
        if self.call.as_ref().is_none_or(|c| c.creq != creq) {
            return; // an abandoned attempt, or a duplicate
        }
        match result {
            Ok(answer) => {
                let call = self.call.take().expect("checked");
                self.finish_call(now, local, call.work, Ok(answer), rng, fx, hist);
            }
            Err(e) => self.attempt_failed(now, local, class_of(&e), Some(e), rng, fx, hist),
        }
    }

    /// Ends the hold, if any, at the end of the run.
    pub fn finish(&mut self, now: Time, hist: &mut History) {
        self.take_jump(now);
        self.end_hold(now, hist);
    }
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
