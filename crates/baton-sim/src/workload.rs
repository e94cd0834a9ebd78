//! What a simulated client does, and what it checks of each answer.
//!
//! Every command of the state machine is in the mix, on names shared across kinds:
//! - locks of every kind on `lock-0`..`lock-4` (exclusive, read/write, semaphore of 2, election,
//!   barrier of 3), with try-once and waiting acquires, some cancelled as they are sent (the
//!   cancel may overtake its acquire), held for a while and released;
//! - under a hold: a describe (`Query::Lock`) that must list the holder, a proclaim by the
//!   elected leader that must be accepted, and a latch, counter or register command on the held
//!   name that must be refused with `WrongKind` (one name, one kind);
//! - after an election is released: a proclaim with the old token, which must be refused;
//! - the latch `latch-0`: set (2), count down, and waits;
//! - the register `reg-0`: get, set, compare-and-set on the version last seen, delete;
//! - the counter `ctr`: +1 adds and reads;
//! - retries out of the blue: an acquire re-sent after more than the session's retry window of
//!   newer requests finished (refused `RetryTooLate`, or the same outcome: never a second grant),
//!   and a session open re-sent with its request id (the same session).
//!
//! Answers that break a rule are violations at once; the rest is recorded in the [`History`]
//! for the checkers that need the whole run.

use std::collections::VecDeque;

use baton_client::core::Op;
use baton_core::{AcquireRequest, Command, Error, Kind, Mode, Outcome, SessionId, Token};
use baton_node::{AcquireResult, Answer, NodeError, Query, Reply, Request};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::check::{CounterOp, EtcdOp, History, Hold, RegisterOp, Time, Violation, BARRIER_PARTIES};
use crate::client::{Effects, Failure, SimClient};

/// The session's retry window (`baton_core`'s `RECENT_PER_SESSION`): an acquire is re-sent
/// once more than this many newer ones finished.
const RETRY_WINDOW: usize = 16;

/// The latch, register and counter names of the workload.
const LATCH: &str = "latch-0";
const REGISTER: &str = "reg-0";
const COUNTER: &str = "ctr";

/// What the call in flight is for.
pub(crate) enum Work {
    Open {
        request_id: u64,
        first_sent_local: u64,
    },
    /// `call` indexes `History::acquire_calls`.
    Acquire {
        req: AcquireRequest,
        started: Time,
        call: usize,
    },
    Release {
        req: AcquireRequest,
        token: Token,
    },
    /// `op` indexes `History::counter_ops`.
    Counter {
        op: usize,
    },
    /// `op` indexes `History::register_ops`.
    Register {
        op: usize,
    },
    Latch,
    /// A describe of a name this client holds with `token`.
    Describe {
        name: String,
        token: Token,
    },
    Proclaim {
        name: String,
        token: Token,
    },
    /// A command of another kind on a held name.
    CrossKind {
        name: String,
    },
    /// `op` indexes `History::etcd_ops`.
    Etcd {
        op: usize,
    },
    /// A compaction of the etcd keyspace.
    EtcdCompact,
}

/// A request sent once, whose answer is only checked.
pub(crate) enum Probe {
    Reopen {
        session: SessionId,
    },
    Cancel,
    OldRetry {
        req: AcquireRequest,
        original: AcquireResult,
    },
    StaleProclaim {
        name: String,
        token: Token,
    },
    /// A close of another client's (another user's) session: it must be refused.
    Impostor {
        session: SessionId,
    },
}

/// A hold, and what is left to do under it.
pub(crate) struct Held {
    pub(crate) hold: Hold,
    pub(crate) req: AcquireRequest,
    pub(crate) release_local: u64,
    extra_done: bool,
}

/// What the workload remembers between calls of one session.
#[derive(Default)]
pub(crate) struct Memory {
    /// Acquires of this session that finished, oldest first, with how.
    finished: VecDeque<(AcquireRequest, AcquireResult)>,
    /// The register version last seen.
    register_seen: Option<u64>,
    /// An election this session held and released (name, token).
    resigned: Option<(String, Token)>,
    /// The newest etcd keyspace revision this client was answered with.
    etcd_seen: i64,
}

pub(crate) fn unexpected(now: Time, client: usize, answer: &Answer) -> Violation {
    Violation { property: "protocol", detail: format!("client {client} got an unexpected answer {answer:?}"), at: now }
}

fn violation(hist: &mut History, property: &'static str, at: Time, detail: String) {
    hist.answer_violations.push(Violation { property, detail, at });
}

impl SimClient {
    /// Chooses and starts the next call (none may be in flight).
    pub(crate) fn next_work(
        &mut self,
        now: Time,
        local: u64,
        accept: bool,
        rng: &mut ChaCha8Rng,
        fx: &mut Effects,
        hist: &mut History,
    ) {
        if let Some(h) = &self.held {
            if local >= h.release_local {
                let (req, token) = (h.req.clone(), h.hold.token);
                self.end_hold(now, hist);
                let command = Command::Release { name: req.name.clone(), session: req.session, token };
                self.propose(local, Op::Release, command, Work::Release { req, token }, fx);
            } else if !h.extra_done && self.lease_valid(local) && rng.gen_bool(0.5) {
                self.under_hold(local, rng, fx);
            }
            return;
        }
        if local < self.idle_until || !accept {
            return;
        }
        let Some(session) = self.session.as_ref().map(|s| s.id) else {
            let request_id = self.ids.next();
            let command = Command::OpenSession { client: self.client_id(), ttl_ms: self.ttl_ms, request_id };
            let work = Work::Open { request_id, first_sent_local: local };
            self.propose(local, Op::OpenSession, command, work, fx);
            return;
        };
        match rng.gen_range(0..100) {
            0..15 => self.counter(now, local, rng, fx, hist),
            15..30 => self.register(now, local, rng, fx, hist),
            30..40 => self.latch(now, local, session, rng, fx, hist),
            50..60 => self.etcd(now, local, rng, fx, hist),
            40..45 if self.memory.finished.len() > RETRY_WINDOW + 1 => self.old_retry(fx),
            45..50 if self.memory.resigned.is_some() => self.stale_proclaim(session, fx),
            60..63 if self.users => self.impostor(session, rng, fx, hist),
            _ => self.acquire(now, local, session, rng, fx, hist),
        }
    }

    /// Starts a call of a command, at the node the route points to.
    fn propose(&mut self, local: u64, op: Op, command: Command, work: Work, fx: &mut Effects) {
        self.start_call(local, op, Request::Propose(command), 0, None, work, fx);
    }

    fn acquire(
        &mut self,
        now: Time,
        local: u64,
        session: SessionId,
        rng: &mut ChaCha8Rng,
        fx: &mut Effects,
        hist: &mut History,
    ) {
        let name = format!("lock-{}", rng.gen_range(0..self.names));
        let wait_ms = if rng.gen_bool(0.3) { None } else { Some(rng.gen_range(100..3_000)) };
        let lock_delay_ms = if rng.gen_bool(0.2) { rng.gen_range(1..500) } else { 0 };
        // lock-0 is an exclusive lock, lock-1 a read/write lock, lock-2 a semaphore, lock-3 an
        // election, lock-4 a barrier (passing it holds nothing).
        let (kind, mode) = match name.as_str() {
            "lock-1" if rng.gen_bool(0.6) => (Kind::RwLock, Mode::Shared),
            "lock-1" => (Kind::RwLock, Mode::Exclusive),
            "lock-2" => (Kind::Semaphore { capacity: 2 }, Mode::Permits(rng.gen_range(1..=2))),
            "lock-3" => (Kind::Election, Mode::Exclusive),
            "lock-4" => (Kind::Barrier { parties: BARRIER_PARTIES }, Mode::Exclusive),
            _ => (Kind::Mutex, Mode::Exclusive),
        };
        let value = if kind == Kind::Election { format!("c{}", self.id).into_bytes() } else { Vec::new() };
        let req =
            AcquireRequest { name, session, request_id: self.ids.next(), wait_ms, lock_delay_ms, kind, mode, value };
        if wait_ms.is_some() && rng.gen_bool(0.08) {
            // A cancel sent with its acquire: on the wire either may arrive first.
            let command = Command::Cancel { name: req.name.clone(), session, request_id: req.request_id };
            let creq = self.send_once(Op::Cancel, Request::Propose(command), fx);
            self.probes.insert(creq, Probe::Cancel);
        }
        self.send_acquire(now, local, req, fx, hist);
    }

    fn send_acquire(&mut self, now: Time, local: u64, req: AcquireRequest, fx: &mut Effects, hist: &mut History) {
        let call = hist.acquire_calls.len();
        hist.acquire_calls.push((req.session, vec![req.request_id]));
        let wait = req.wait_ms.unwrap_or(0);
        let work = Work::Acquire { req: req.clone(), started: now, call };
        self.start_call(local, Op::Acquire, Request::Acquire(req), wait, None, work, fx);
    }

    fn counter(&mut self, now: Time, local: u64, rng: &mut ChaCha8Rng, fx: &mut Effects, hist: &mut History) {
        let add = rng.gen_bool(0.6);
        let op = hist.counter_ops.len();
        hist.counter_ops.push(CounterOp { add, invoked: now, completed: None, value: None });
        let work = Work::Counter { op };
        if add {
            let command = Command::CounterAdd { name: COUNTER.into(), delta: 1 };
            self.propose(local, Op::CounterAdd, command, work, fx);
        } else {
            // Reads go to any node first: only the leader may answer them (after a ReadIndex
            // round); anyone else must redirect, so a stale answer shows.
            let first = self.any_node(rng);
            self.start_call(local, Op::Read, Request::Read(Query::Counter(COUNTER.into())), 0, Some(first), work, fx);
        }
    }

    fn register(&mut self, now: Time, local: u64, rng: &mut ChaCha8Rng, fx: &mut Effects, hist: &mut History) {
        let op = hist.register_ops.len();
        let roll = rng.gen_range(0..100);
        let (write, delete) = ((40..90).contains(&roll), roll >= 90);
        hist.register_ops.push(RegisterOp { write, delete, invoked: now, completed: None, version: None });
        if roll < 40 {
            if self.bugs.register_read_cache && rng.gen_bool(0.5) {
                if let Some(version) = self.memory.register_seen {
                    // Deliberate bug: a read answered from what this client saw last.
                    hist.register_ops[op].completed = Some(now);
                    hist.register_ops[op].version = Some(version);
                    self.idle_until = local + rng.gen_range(0..100);
                    return;
                }
            }
            let first = self.any_node(rng);
            let request = Request::Read(Query::Register(REGISTER.into()));
            self.start_call(local, Op::Read, request, 0, Some(first), Work::Register { op }, fx);
            return;
        }
        let (value, expected_version) = match roll {
            40..65 => (Some(format!("c{}", self.id).into_bytes()), None),
            65..90 => (Some(format!("c{}-cas", self.id).into_bytes()), Some(self.memory.register_seen.unwrap_or(0))),
            _ => (None, None),
        };
        let command = Command::RegisterSet { name: REGISTER.into(), value, expected_version };
        self.propose(local, Op::RegisterSet, command, Work::Register { op }, fx);
    }

    /// A read, put or delete of one of a few keys of the etcd keyspace (its own group).
    fn etcd(&mut self, now: Time, local: u64, rng: &mut ChaCha8Rng, fx: &mut Effects, hist: &mut History) {
        use baton_core::etcd::{DeleteRequest, EtcdCommand, PutRequest, RangeRequest};
        if rng.gen_bool(0.05) && self.memory.etcd_seen > 4 {
            // Forget all but the last few revisions (watchers behind are told, and start over).
            let at = self.memory.etcd_seen - 3;
            hist.etcd_compactions_asked.insert(at);
            let command = Command::Etcd(baton_core::etcd::EtcdCommand::Compact(at));
            self.start_call(local, Op::RegisterSet, Request::Propose(command), 0, None, Work::EtcdCompact, fx);
            return;
        }
        let key = format!("e/{}", rng.gen_range(0..3)).into_bytes();
        let op = hist.etcd_ops.len();
        let roll = rng.gen_range(0..10);
        let (kind, request, write) = match roll {
            0..4 => {
                let range = RangeRequest { key: key.clone(), ..Default::default() };
                (Op::Read, Request::Read(Query::EtcdRange(Box::new(range))), None)
            }
            4..9 => {
                // Every value is unique: the checker finds each acknowledged put by it.
                let value = format!("c{}-{op}", self.id).into_bytes();
                let put = PutRequest { key: key.clone(), value: value.clone(), ..Default::default() };
                (Op::RegisterSet, Request::Propose(Command::Etcd(EtcdCommand::Put(put))), Some(Some(value)))
            }
            _ => {
                let delete = DeleteRequest { key: key.clone(), ..Default::default() };
                (Op::RegisterSet, Request::Propose(Command::Etcd(EtcdCommand::Delete(delete))), Some(None))
            }
        };
        hist.etcd_ops.push(EtcdOp {
            key,
            write,
            invoked: now,
            completed: None,
            revision: None,
            read: None,
            changed: false,
            refused: false,
        });
        self.start_call(local, kind, request, 0, None, Work::Etcd { op }, fx);
    }

    fn latch(
        &mut self,
        now: Time,
        local: u64,
        session: SessionId,
        rng: &mut ChaCha8Rng,
        fx: &mut Effects,
        hist: &mut History,
    ) {
        let name = LATCH.to_string();
        match rng.gen_range(0..10) {
            0..3 => {
                let command = Command::LatchSet { name, count: 2 };
                self.propose(local, Op::LatchSet, command, Work::Latch, fx);
            }
            3..6 => {
                let command = Command::LatchCountDown { name };
                self.propose(local, Op::LatchCountDown, command, Work::Latch, fx);
            }
            _ => {
                let req = AcquireRequest {
                    kind: Kind::Latch,
                    ..AcquireRequest::exclusive(name, session, self.ids.next(), Some(rng.gen_range(100..2_000)))
                };
                self.send_acquire(now, local, req, fx, hist);
            }
        }
    }

    /// Re-sends the oldest finished acquire of the session, after more than the retry window of
    /// newer ones finished.
    fn old_retry(&mut self, fx: &mut Effects) {
        let Some((req, original)) = self.memory.finished.pop_front() else { return };
        let creq = self.send_once(Op::Acquire, Request::Acquire(req.clone()), fx);
        self.probes.insert(creq, Probe::OldRetry { req, original });
    }

    fn stale_proclaim(&mut self, session: SessionId, fx: &mut Effects) {
        let Some((name, token)) = self.memory.resigned.take() else { return };
        let command = Command::Proclaim { name: name.clone(), session, token, value: b"stale".to_vec() };
        let creq = self.send_once(Op::Proclaim, Request::Propose(command), fx);
        self.probes.insert(creq, Probe::StaleProclaim { name, token });
    }

    /// Tries to close a session of another client (another user): some session an acquire
    /// named, of anyone but this client.
    fn impostor(&mut self, own: SessionId, rng: &mut ChaCha8Rng, fx: &mut Effects, hist: &mut History) {
        let others: Vec<SessionId> = hist
            .acquire_calls
            .iter()
            .map(|(s, _)| *s)
            .filter(|s| *s != own && !self.own_sessions.contains(s))
            .collect();
        let Some(&session) = others.get(rng.gen_range(0..others.len().max(1))) else { return };
        let creq = self.send_once(Op::CloseSession, Request::Propose(Command::CloseSession { session }), fx);
        self.probes.insert(creq, Probe::Impostor { session });
    }

    /// One more call while holding: describe it, proclaim (an election), or use its name as
    /// another kind.
    fn under_hold(&mut self, local: u64, rng: &mut ChaCha8Rng, fx: &mut Effects) {
        let held = self.held.as_mut().expect("holding");
        held.extra_done = true;
        let (name, token, kind, session) = (held.req.name.clone(), held.hold.token, held.req.kind, held.req.session);
        let roll = rng.gen_range(0..10);
        if kind == Kind::Election && roll < 3 {
            let value = format!("c{}-proclaimed", self.id).into_bytes();
            let command = Command::Proclaim { name: name.clone(), session, token, value };
            self.propose(local, Op::Proclaim, command, Work::Proclaim { name, token }, fx);
        } else if roll < 6 {
            let first = self.any_node(rng);
            let request = Request::Read(Query::Lock(name.clone()));
            self.start_call(local, Op::Read, request, 0, Some(first), Work::Describe { name, token }, fx);
        } else {
            let (op, command) = match rng.gen_range(0..4) {
                0 => (Op::LatchCountDown, Command::LatchCountDown { name: name.clone() }),
                1 => (Op::LatchSet, Command::LatchSet { name: name.clone(), count: 1 }),
                2 => (Op::CounterAdd, Command::CounterAdd { name: name.clone(), delta: 1 }),
                _ => (
                    Op::RegisterSet,
                    Command::RegisterSet { name: name.clone(), value: Some(b"x".to_vec()), expected_version: None },
                ),
            };
            self.propose(local, op, command, Work::CrossKind { name }, fx);
        }
    }

    /// A call ended: with an answer, a refusal, or an outcome that is not known.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn finish_call(
        &mut self,
        now: Time,
        local: u64,
        work: Work,
        result: Result<Answer, Failure>,
        rng: &mut ChaCha8Rng,
        fx: &mut Effects,
        hist: &mut History,
    ) {
        let rest = local + rng.gen_range(0..100);
        if let Err(Failure::Refused(NodeError::Rejected(Error::SessionNotFound(_)))) = &result {
            if !matches!(work, Work::Open { .. } | Work::Counter { .. } | Work::Register { .. } | Work::Latch) {
                self.lose_session(now, "the server says it is gone", fx, hist);
                return;
            }
        }
        match (work, result) {
            (
                Work::Open { request_id, first_sent_local },
                Ok(Answer::Applied(Outcome::SessionOpened { session, ttl_ms })),
            ) => {
                fx.trace.push(format!("client {} opened session {session}", self.id));
                self.opened(session, ttl_ms, first_sent_local, local);
                if rng.gen_bool(0.3) {
                    // The same open again: it must return the same session.
                    let command = Command::OpenSession { client: self.client_id(), ttl_ms: self.ttl_ms, request_id };
                    let creq = self.send_once(Op::OpenSession, Request::Propose(command), fx);
                    self.probes.insert(creq, Probe::Reopen { session });
                }
                self.idle_until = rest;
            }
            (Work::Acquire { req, .. }, Ok(Answer::Acquire(r))) => self.acquired(now, local, req, r, rng, fx, hist),
            (Work::Release { req, token }, result) => {
                if matches!(result, Ok(Answer::Applied(Outcome::Released))) {
                    self.finished(req.clone(), AcquireResult::Granted(token));
                    if req.kind == Kind::Election {
                        self.memory.resigned = Some((req.name.clone(), token));
                    }
                }
                fx.trace.push(format!("client {} released {} (token {token})", self.id, req.name));
                if rng.gen_bool(0.1) {
                    // Sometimes close the session and start a new one.
                    if let Some(s) = self.session.take() {
                        // In every group it has a record in, as the real client closes it.
                        for group in s.lease.groups() {
                            let request = Request::Propose(Command::CloseSession { session: s.id });
                            self.send_to_group(Op::CloseSession, group, request, fx);
                        }
                        self.memory = Default::default();
                    }
                }
                self.idle_until = local + rng.gen_range(0..200);
            }
            (
                Work::Counter { op },
                Ok(Answer::Applied(Outcome::Counter { value, .. })) | Ok(Answer::Read(Reply::Counter(value))),
            ) => {
                hist.counter_ops[op].completed = Some(now);
                hist.counter_ops[op].value = Some(value);
                self.idle_until = rest;
            }
            (Work::Etcd { op }, result) => {
                use baton_core::etcd::EtcdOutcome;
                let o = &mut hist.etcd_ops[op];
                let revision = match result {
                    Ok(Answer::Read(Reply::EtcdRange { revision, response })) => {
                        o.read = Some(response.kvs.into_iter().next().map(|kv| kv.value));
                        Some(revision)
                    }
                    Ok(Answer::Applied(Outcome::Etcd(EtcdOutcome::Put { revision, .. }))) => {
                        o.changed = true;
                        Some(revision)
                    }
                    Ok(Answer::Applied(Outcome::Etcd(EtcdOutcome::Delete { revision, response }))) => {
                        o.changed = response.deleted > 0;
                        Some(revision)
                    }
                    Ok(other) => {
                        hist.violations.push(unexpected(now, self.id, &other));
                        None
                    }
                    Err(Failure::Refused(_)) => {
                        o.refused = true;
                        None
                    }
                    Err(Failure::Unknown) => None,
                };
                if let Some(r) = revision {
                    let o = &mut hist.etcd_ops[op];
                    o.completed = Some(now);
                    o.revision = revision;
                    self.memory.etcd_seen = self.memory.etcd_seen.max(r);
                }
                self.idle_until = rest;
            }
            (Work::EtcdCompact, result) => {
                let how = match result {
                    Ok(a) => format!("{a:?}"),
                    Err(Failure::Refused(e)) => format!("refused: {e}"),
                    Err(Failure::Unknown) => "outcome unknown".into(),
                };
                fx.trace.push(format!("client {} compaction: {how}", self.id));
                self.idle_until = rest;
            }
            (Work::Register { op }, result) => {
                let version = match result {
                    Ok(Answer::Read(Reply::Register(v))) => Some(v.map_or(0, |(_, version)| version)),
                    Ok(Answer::Applied(Outcome::Register { version, swapped })) => {
                        let o = &mut hist.register_ops[op];
                        if !swapped {
                            // A failed compare-and-set read the version it compared with.
                            o.write = false;
                            o.delete = false;
                        }
                        Some(version)
                    }
                    _ => None,
                };
                if let Some(version) = version {
                    hist.register_ops[op].completed = Some(now);
                    hist.register_ops[op].version = Some(version);
                    self.memory.register_seen = Some(version);
                }
                self.idle_until = rest;
            }
            (Work::Latch, _) => self.idle_until = rest,
            (Work::Describe { name, token }, Ok(Answer::Read(Reply::Lock { holders, .. }))) => {
                let mine = self.held.as_ref().is_some_and(|h| h.hold.token == token);
                let session = self.session.as_ref().map_or(0, |s| s.id);
                if mine && self.lease_valid(local) && !holders.iter().any(|h| h.session == session && h.token == token)
                {
                    let detail = format!(
                        "client {} holds {name:?} with token {token} (session {session}, lease valid), but describe says {holders:?}",
                        self.id
                    );
                    violation(hist, "linearizability", now, detail);
                }
            }
            (Work::Proclaim { name, token }, result) => {
                let still = self.held.as_ref().is_some_and(|h| h.hold.token == token) && self.lease_valid(local);
                if let (Err(Failure::Refused(e)), true) = (&result, still) {
                    let detail = format!(
                        "client {} leads {name:?} with token {token}, but its proclaim was refused: {e}",
                        self.id
                    );
                    violation(hist, "election", now, detail);
                }
            }
            (Work::CrossKind { name }, result) => {
                let held = self.held.as_ref().map(|h| h.req.kind);
                match result {
                    Err(Failure::Refused(NodeError::Rejected(Error::WrongKind { .. }))) | Err(Failure::Unknown) => {}
                    Err(Failure::Refused(e)) if !self.lease_valid(local) => {
                        fx.trace.push(format!("client {} cross-kind refused after its lease: {e}", self.id));
                    }
                    other => {
                        let what = match other {
                            Ok(a) => format!("{a:?}"),
                            Err(Failure::Refused(e)) => e.to_string(),
                            Err(Failure::Unknown) => unreachable!(),
                        };
                        let detail = format!(
                            "client {} holds {name:?} as {held:?}, yet a command of another kind on it was not refused as the wrong kind: {what}",
                            self.id
                        );
                        violation(hist, "one-kind", now, detail);
                    }
                }
            }
            (Work::Acquire { req, .. }, Err(Failure::Refused(e))) => {
                fx.trace.push(format!("client {} acquire of {} refused: {e}", self.id, req.name));
                self.idle_until = local + 100;
            }
            (Work::Open { .. }, Err(_)) => self.idle_until = local + 100,
            (_, Err(_)) => self.idle_until = rest,
            (_, Ok(other)) => hist.violations.push(unexpected(now, self.id, &other)),
        }
    }

    fn finished(&mut self, req: AcquireRequest, result: AcquireResult) {
        self.memory.finished.push_back((req, result));
        if self.memory.finished.len() > 4 * RETRY_WINDOW {
            self.memory.finished.pop_front();
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn acquired(
        &mut self,
        now: Time,
        local: u64,
        req: AcquireRequest,
        result: AcquireResult,
        rng: &mut ChaCha8Rng,
        fx: &mut Effects,
        hist: &mut History,
    ) {
        let passing = matches!(req.kind, Kind::Latch | Kind::Barrier { .. });
        match result {
            AcquireResult::Granted(token) => {
                hist.received.push((req.name.clone(), req.session, token, now));
                if !self.lease_valid(local) {
                    // Granted to a session we already consider lost: never use it.
                    self.lose_session(now, "grant arrived after the lease ran out", fx, hist);
                    return;
                }
                if passing {
                    if req.kind == Kind::Latch {
                        hist.latch_passes.push((req.session, req.request_id, now));
                    }
                    self.finished(req, AcquireResult::Granted(token));
                    self.idle_until = local + rng.gen_range(0..200);
                    return;
                }
                fx.trace.push(format!("client {} holds {} with token {token}", self.id, req.name));
                let hold = Hold {
                    kind: req.kind,
                    mode: req.mode,
                    name: req.name.clone(),
                    client: self.id,
                    session: req.session,
                    token,
                    from: now,
                    until: now,
                };
                let release_local = local + rng.gen_range(10..400);
                self.held = Some(Held { hold, req, release_local, extra_done: false });
            }
            other => {
                if req.kind == Kind::Latch && other == AcquireResult::TimedOut && self.bugs.latch_timeout_passes {
                    // Deliberate bug: a latch wait that timed out is taken as passed.
                    hist.latch_passes.push((req.session, req.request_id, now));
                }
                self.finished(req, other);
                self.idle_until = local + rng.gen_range(0..200);
            }
        }
    }

    /// Checks the answer to a one-shot request.
    pub(crate) fn on_probe(
        &mut self,
        now: Time,
        local: u64,
        probe: Probe,
        result: Result<Answer, NodeError>,
        fx: &mut Effects,
        hist: &mut History,
    ) {
        match (probe, result) {
            (Probe::Reopen { session }, Ok(Answer::Applied(Outcome::SessionOpened { session: again, .. }))) => {
                let ours = self.session.as_ref().is_some_and(|s| s.id == session) && self.lease_valid(local);
                if again != session && ours {
                    let detail = format!(
                        "client {} opened session {session} and, with the same request id, session {again}",
                        self.id
                    );
                    violation(hist, "once", now, detail);
                }
            }
            (Probe::OldRetry { req, original }, Ok(Answer::Acquire(r))) => {
                if r != original {
                    let detail = format!(
                        "client {} re-sent request {} of session {} ({:?}) after its retry window: first {original:?}, now {r:?}",
                        self.id, req.request_id, req.session, req.name
                    );
                    violation(hist, "once", now, detail);
                }
            }
            (Probe::StaleProclaim { name, token }, Ok(Answer::Applied(Outcome::Proclaimed))) => {
                let detail =
                    format!("client {} proclaimed on {name:?} with token {token} after resigning: accepted", self.id);
                violation(hist, "election", now, detail);
            }
            (Probe::Impostor { session }, Ok(Answer::Applied(Outcome::SessionClosed { released }))) => {
                let detail = format!(
                    "client {} (user u{}) closed session {session} of another user ({released} names released)",
                    self.id, self.id
                );
                violation(hist, "ownership", now, detail);
            }
            (_, Ok(Answer::Applied(_) | Answer::Acquire(_))) | (_, Err(_)) => {}
            (_, Ok(other)) => {
                fx.trace.push(format!("client {} probe answered {other:?}", self.id));
            }
        }
    }

    /// Liveness: a wait still open long after it should have ended.
    pub fn check_liveness(&self, now: Time, hist: &mut History) {
        let Some(call) = self.call.as_ref().filter(|_| self.alive) else { return };
        if let Work::Acquire { req, started, .. } = &call.work {
            let bound = (req.wait_ms.unwrap_or(0) + 10_000) * 1000;
            if now.saturating_sub(*started) > bound {
                let detail = format!(
                    "client {} has waited {} ms for {:?} (request {}, wait {:?} ms) after faults healed",
                    self.id,
                    (now - started) / 1000,
                    req.name,
                    req.request_id,
                    req.wait_ms
                );
                hist.violations.push(Violation { property: "liveness", detail, at: now });
            }
        }
    }
}
