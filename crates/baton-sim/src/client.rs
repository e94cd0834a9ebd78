//! A simulated client process: its clock (drift, jumps, pauses), its session and keepalives, and
//! its calls with their retries.
//!
//! Every rule of the real client comes from [`baton_client::core`], the same code the async
//! client runs: the lease deadline across groups ([`Lease`]), when to renew and when an
//! unanswered renewal gives a stream up ([`Renewals`], one schedule per node as the real client
//! keeps one stream per node), which group serves a name and which node leads it ([`Routes`]),
//! what a failed attempt means for each operation ([`decide`] over the [`ErrorClass`] a
//! [`NodeError`] maps to, redirects recorded in the slot map), attaching a session to a group
//! before its first request there, and request ids ([`RequestIds`]). What this file adds is
//! only the simulated I/O: messages through the world, timers as wake-ups, time as the
//! client's own clock in ms. What the client does (the workload) and what it checks of each
//! answer is in `workload.rs`.

use std::collections::{BTreeMap, VecDeque};

use baton_client::core::{
    attempt_timeout_ms, decide, next_backoff_ms, renew_interval_ms, renew_pause_ms, request_id_seed, Decision,
    ErrorClass, Lease, Op, Renew, Renewals, RequestIds, Routes, FIRST_BACKOFF_MS, HURRY_INTERVAL_MS,
};
use baton_core::{Command, Outcome, SessionId};
use baton_node::{Answer, NodeError, Query, Request};
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
    /// A request answered through `Requests`, for `group` (`None`: the node routes it), with
    /// the client's operation for it: the network duplicates only what the client's own rule
    /// repeats.
    Request { creq: u64, op: Op, group: Option<u64>, request: Request },
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

/// The client's session: its lease and one renewal schedule per node, from the shared rules.
pub(crate) struct Session {
    pub(crate) id: SessionId,
    pub(crate) lease: Lease,
    /// Per node: its renewal schedule and the creq of the renewal in flight there.
    streams: BTreeMap<u64, (Renewals, Option<u64>)>,
}

/// The call in flight: its request, where its attempt went, and when that is given up.
pub(crate) struct Call {
    creq: u64,
    node: u64,
    op: Op,
    pub(crate) request: Request,
    /// The attempt in flight attaches the session to this group first (its first request there).
    attaching: Option<(u64, u64)>,
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
        NodeError::NotLeader { leader, .. } => ErrorClass::NotLeader { leader: *leader },
        NodeError::Moved { group, leader, version, .. } => {
            ErrorClass::Moved { group: group.unwrap_or(0), version: *version, leader: *leader }
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
    pub(crate) routes: Routes<u64>,
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
    /// A user of its own (see `SimConfig::users`).
    pub users: bool,
    /// Every session this client opened (its user's).
    pub(crate) own_sessions: std::collections::BTreeSet<SessionId>,
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
    /// A client of a cluster of `nodes`, starting with the map of `topology` (as the real
    /// client's first refresh gives it).
    pub fn new(
        id: usize,
        clock: Clock,
        nodes: usize,
        names: usize,
        ttl_ms: u64,
        bugs: baton_core::Bugs,
        topology: &baton_core::Topology,
    ) -> Self {
        let mut routes = Routes::new((1..=nodes as u64).collect(), id);
        let groups: Vec<(u64, Vec<(u16, u16)>)> = topology.groups.iter().map(|(g, p)| (*g, p.slots.ranges())).collect();
        routes.map.replace(topology.version, &groups);
        SimClient {
            id,
            clock,
            alive: true,
            names,
            ttl_ms,
            nodes,
            routes,
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
            users: false,
            own_sessions: Default::default(),
            next_creq: 1,
            paused_until: 0,
            parked: VecDeque::new(),
            pending_jump_ms: 0,
            old_clocks: Vec::new(),
        }
    }

    /// The client id its sessions open under: with users, as the server records it for the
    /// client's user `u<id>`.
    pub(crate) fn client_id(&self) -> String {
        if self.users {
            format!("u{0}{1}c{0}", self.id, baton_core::command::OWNER_SEPARATOR)
        } else {
            format!("c{}", self.id)
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
    /// What the client is doing, for a failed run's trace.
    pub(crate) fn describe(&self) -> String {
        let call = match &self.call {
            Some(c) => format!(
                "call {} to node {} ({:?}, resend at {:?}, backoff {} ms, attaching {:?})",
                c.creq, c.node, c.request, c.resend_local, c.backoff_ms, c.attaching
            ),
            None => "no call".to_string(),
        };
        let group = self.call.as_ref().and_then(|c| self.target(&c.request).1);
        format!(
            "client {}: alive {}, map version {}, group {:?} routed to node {}, session {:?}: {call}",
            self.id,
            self.alive,
            self.routes.map.version(),
            group,
            self.routes.target(group),
            self.session.as_ref().map(|s| s.id),
        )
    }

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
        let first = local + renew_interval_ms(ttl_ms);
        let streams = (1..=self.nodes as u64).map(|n| (n, (Renewals::new(ttl_ms, first), None))).collect();
        self.own_sessions.insert(id);
        self.session =
            Some(Session { id, lease: Lease::new(ttl_ms, (id >> 48) + 1, first_sent_local, local), streams });
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

    /// Sends a renewal on each node's schedule when it says so; gives a silent node up when it
    /// says so (and hurries the other streams, as the real client does).
    fn keepalive(&mut self, local: u64, fx: &mut Effects) {
        let nodes: Vec<u64> = (1..=self.nodes as u64).collect();
        for node in nodes {
            for _ in 0..2 {
                let Some(s) = self.session.as_mut() else { return };
                let (renewals, in_flight) = s.streams.get_mut(&node).expect("a stream per node");
                match renewals.poll(local) {
                    Renew::Wait(_) => break,
                    Renew::Send => {
                        let sid = s.id;
                        let creq = self.creq();
                        let s = self.session.as_mut().expect("checked");
                        s.streams.get_mut(&node).expect("present").1 = Some(creq);
                        let request = Request::KeepAlive(vec![sid]);
                        fx.sends.push((node, ClientMsg::Request { creq, op: Op::Read, group: None, request }));
                        break;
                    }
                    Renew::GiveUp => {
                        *in_flight = None;
                        self.renewal_failed(local, node, ErrorClass::NoAnswer);
                    }
                }
            }
        }
    }

    /// A renewal at `node` failed: a node that leads nothing is asked again after a renewal
    /// interval (a hurry's, during a failover); any other failure pauses that stream briefly
    /// and hurries the others (the groups the node led get new leaders elsewhere).
    fn renewal_failed(&mut self, local: u64, node: u64, class: ErrorClass<u64>) {
        let Some(s) = self.session.as_mut() else { return };
        let ttl = s.lease.ttl_ms();
        if let ErrorClass::NotLeader { .. } = class {
            let hurrying = s.streams.values().any(|(r, _)| r.hurrying(local));
            let pause = if hurrying { HURRY_INTERVAL_MS } else { renew_interval_ms(ttl) };
            s.streams.get_mut(&node).expect("present").0.failed(local + pause);
            return;
        }
        for (n, (r, _)) in s.streams.iter_mut() {
            if *n == node {
                r.failed(local + renew_pause_ms(false));
            } else {
                r.hurry(local);
            }
        }
    }

    fn next_wake(&self, local: u64) -> u64 {
        let mut next = local + 200;
        if let Some(s) = &self.session {
            next = next.min(s.lease.deadline_ms());
            for (r, _) in s.streams.values() {
                next = next.min(r.next_ms());
            }
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
        let (node, group) = self.target(&request);
        fx.sends.push((node, ClientMsg::Request { creq, op, group, request }));
        creq
    }

    /// Sends one attempt of `request` to `group`'s leader (a session's close in one group).
    pub(crate) fn send_to_group(&mut self, op: Op, group: u64, request: Request, fx: &mut Effects) -> u64 {
        let creq = self.creq();
        let node = self.routes.target(Some(group));
        fx.sends.push((node, ClientMsg::Request { creq, op, group: Some(group), request }));
        creq
    }

    /// Where a request goes, as the real client routes it: a named request to the leader of the
    /// group serving the name (and it says which group), an open to the leader of the client
    /// id's group (the server routes it), anything else to the current endpoint.
    fn target(&self, request: &Request) -> (u64, Option<u64>) {
        use baton_core::topology::ETCD_GROUP;
        match request {
            // The etcd keyspace's requests go to its group's leader.
            Request::Propose(Command::Etcd(_)) | Request::Read(Query::EtcdRange(_)) => {
                (self.routes.target(Some(ETCD_GROUP)), Some(ETCD_GROUP))
            }
            Request::Propose(Command::OpenSession { client, .. }) => {
                (self.routes.target(Some(self.routes.map.group_of(client))), None)
            }
            r => match r.routing_key() {
                Some(name) => {
                    let g = self.routes.map.group_of(name);
                    (self.routes.target(Some(g)), Some(g))
                }
                None => (self.routes.target(None), None),
            },
        }
    }

    /// The group a call about our session must be attached to first, if any.
    fn needs_attach(&self, request: &Request) -> Option<u64> {
        let s = self.session.as_ref()?;
        let session = match request {
            Request::Acquire(r) => r.session,
            Request::Propose(
                Command::Release { session, .. } | Command::Cancel { session, .. } | Command::Proclaim { session, .. },
            ) => *session,
            _ => return None,
        };
        let group = self.target(request).1?;
        (session == s.id && !s.lease.attached_in(group)).then_some(group)
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
            attaching: None,
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
        call.resend_local = None;
        if let Some(group) = self.needs_attach(&call.request) {
            // The session's first request in this group: attach it there first (the real
            // client's `attempts_as`), then the call's own attempt.
            let s = self.session.as_ref().expect("needs a session");
            let request = Request::Propose(Command::AttachSession {
                session: s.id,
                client: self.client_id(),
                ttl_ms: s.lease.ttl_ms(),
            });
            call.attaching = Some((group, local));
            call.node = self.routes.target(Some(group));
            call.timeout_local = local + ATTEMPT_MS;
            let msg = ClientMsg::Request { creq: call.creq, op: Op::AttachSession, group: Some(group), request };
            fx.sends.push((call.node, msg));
            return;
        }
        call.attaching = None;
        let (node, group) = self.target(&call.request);
        call.node = to.unwrap_or(node);
        call.timeout_local = local + attempt_timeout_ms(call.wait_ms, ATTEMPT_MS, MAX_ATTEMPT_MS);
        let msg = ClientMsg::Request { creq: call.creq, op: call.op, group, request: call.request.clone() };
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
        let (_, group) = self.target(&call.request);
        let group = call.attaching.map(|(g, _)| g).or(group);
        if let ErrorClass::Moved { group: to, version, .. } = &class {
            if let Some(name) = call.request.routing_key() {
                self.routes.map.moved(baton_core::slot_of(name), *to, *version);
            }
        }
        // An attach is harmless to repeat, whatever the call it prepares.
        let op = if call.attaching.is_some() { Op::AttachSession } else { call.op };
        match decide(class, op.repeat()) {
            Decision::Retry { leader, stay, backoff, .. } => {
                let redirected = !stay && self.routes.moved_on(group, &call.node, leader);
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
        let renewal = self
            .session
            .as_ref()
            .and_then(|s| s.streams.iter().find(|(_, (_, in_flight))| *in_flight == Some(creq)).map(|(n, _)| *n));
        if let Some(node) = renewal {
            let s = self.session.as_mut().expect("checked");
            let (renewals, in_flight) = s.streams.get_mut(&node).expect("present");
            *in_flight = None;
            let sent = renewals.answered();
            match result {
                Ok(Answer::KeepAlive(r)) => {
                    for g in &r.groups {
                        self.routes.set_leader(*g, node);
                    }
                    let s = self.session.as_mut().expect("checked");
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
        if let Some((group, sent)) = self.call.as_ref().and_then(|c| c.attaching) {
            match result {
                Ok(Answer::Applied(Outcome::SessionOpened { .. })) => {
                    if let Some(s) = self.session.as_mut() {
                        s.lease.attached(group, sent, local);
                    }
                    // Attached: now the call's own attempt.
                    let mut call = self.call.take().expect("checked");
                    self.send_attempt(&mut call, local, None, fx);
                    self.call = Some(call);
                }
                Ok(other) => hist.violations.push(crate::workload::unexpected(now, self.id, &other)),
                // Its home says it is gone: the whole session is.
                Err(NodeError::Rejected(baton_core::Error::SessionNotFound(_))) => {
                    self.lose_session(now, "its home group says it is gone", fx, hist);
                }
                Err(e) => self.attempt_failed(now, local, class_of(&e), Some(e), rng, fx, hist),
            }
            return;
        }
        if result.is_ok() {
            if let (_, Some(g)) = self.target(&self.call.as_ref().expect("checked").request) {
                // Only a group's leader answers for it.
                let node = self.call.as_ref().expect("checked").node;
                self.routes.set_leader(g, node);
            }
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
        let mut c = SimClient::new(
            0,
            clock,
            3,
            5,
            2_000,
            baton_core::Bugs::default(),
            &baton_core::Topology::initial(&[1, 2, 3], 1),
        );
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
        let mut c = SimClient::new(
            0,
            clock,
            3,
            5,
            2_000,
            baton_core::Bugs::default(),
            &baton_core::Topology::initial(&[1, 2, 3], 1),
        );
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
