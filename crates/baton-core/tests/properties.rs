//! Property tests: random sequences of *every* command against the state machine's invariants.
//!
//! Names come from a pool of three and every command picks its kind independently of the name,
//! so that a lock, a latch, a counter and a register regularly meet on the same name (the class
//! of bug where one primitive touched another's state: issue 9, defect 1). Request ids and open
//! ids are drawn from small ranges so that retries, duplicates and cancels that overtake their
//! acquire are common.

use std::collections::{BTreeMap, BTreeSet};

use baton_core::{AcquireRequest, Command, Entry, Event, Kind, Limits, Mode, Outcome, StateMachine};
use proptest::prelude::*;

const NAMES: [&str; 3] = ["a", "b", "c"];
const PARTIES: u32 = 3;
const CAPACITY: u32 = 3;

fn kind_and_mode(kind: u32, variant: u32) -> (Kind, Mode) {
    match kind % 7 {
        0 => (Kind::Mutex, Mode::Exclusive),
        1 if variant.is_multiple_of(3) => (Kind::RwLock, Mode::Exclusive),
        1 => (Kind::RwLock, Mode::Shared),
        2 => (Kind::Semaphore { capacity: CAPACITY }, Mode::Permits(1 + variant % CAPACITY)),
        3 => (Kind::Election, Mode::Exclusive),
        4 => (Kind::Barrier { parties: PARTIES }, Mode::Exclusive),
        5 => (Kind::Latch, Mode::Exclusive),
        // Exclusive locks are the common case: weigh them twice.
        _ => (Kind::Mutex, Mode::Exclusive),
    }
}

/// A command template; session numbers pick among the sessions opened so far.
#[derive(Clone, Debug)]
enum Op {
    Open { ttl_s: u64, request_id: u64 },
    Close { pick: usize },
    Expire { pick: usize },
    Acquire { pick: usize, name: usize, request_id: u64, wait_ms: Option<u64>, delay_ms: u64, kind: u32, variant: u32 },
    Release { pick: usize, name: usize, stale: bool },
    Cancel { pick: usize, name: usize, request_id: u64 },
    Proclaim { pick: usize, name: usize, stale: bool },
    LatchSet { name: usize, count: u64 },
    LatchDown { name: usize },
    CounterAdd { name: usize, delta: i64 },
    CounterCas { name: usize, expected: i64, new: i64 },
    RegisterSet { name: usize, value: Option<u8>, expected: Option<u64> },
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (1u64..20, 0u64..3).prop_map(|(ttl_s, request_id)| Op::Open { ttl_s, request_id }),
        1 => any::<usize>().prop_map(|pick| Op::Close { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Expire { pick }),
        8 => (any::<usize>(), 0..NAMES.len(), 0u64..6, proptest::option::of(0u64..3000), prop_oneof![Just(0u64), 1u64..500], 0u32..7, 0u32..6)
            .prop_map(|(pick, name, request_id, wait_ms, delay_ms, kind, variant)| Op::Acquire { pick, name, request_id, wait_ms, delay_ms, kind, variant }),
        4 => (any::<usize>(), 0..NAMES.len(), any::<bool>()).prop_map(|(pick, name, stale)| Op::Release { pick, name, stale }),
        2 => (any::<usize>(), 0..NAMES.len(), 0u64..6).prop_map(|(pick, name, request_id)| Op::Cancel { pick, name, request_id }),
        1 => (any::<usize>(), 0..NAMES.len(), any::<bool>()).prop_map(|(pick, name, stale)| Op::Proclaim { pick, name, stale }),
        1 => (0..NAMES.len(), 0u64..4).prop_map(|(name, count)| Op::LatchSet { name, count }),
        2 => (0..NAMES.len()).prop_map(|name| Op::LatchDown { name }),
        1 => (0..NAMES.len(), -2i64..3).prop_map(|(name, delta)| Op::CounterAdd { name, delta }),
        1 => (0..NAMES.len(), -1i64..2, -1i64..2).prop_map(|(name, expected, new)| Op::CounterCas { name, expected, new }),
        1 => (0..NAMES.len(), proptest::option::of(any::<u8>()), proptest::option::of(0u64..4)).prop_map(|(name, value, expected)| Op::RegisterSet { name, value, expected }),
        2 => Just(Op::Tick),
    ]
}

#[derive(Default)]
struct Harness {
    sm: StateMachine,
    index: u64,
    now: u64,
    opened: Vec<u64>,
    /// Last token granted per name.
    last_token: BTreeMap<String, u64>,
    /// Waits that have neither been granted nor ended: (name, session, request) -> deadline.
    open_waits: BTreeMap<(String, u64, u64), u64>,
    /// Every token ever granted, to check that no two grants share one.
    tokens: BTreeSet<u64>,
    /// Every (name, session, request) ever queued and ever granted: a request is queued at most
    /// once and granted at most once, however often it is retried.
    queued_ever: BTreeSet<(String, u64, u64)>,
    granted_ever: BTreeSet<(String, u64, u64)>,
    /// Requests cancelled before they held anything: they must never queue or be granted later.
    cancelled: BTreeSet<(String, u64, u64)>,
    /// (client, open request id) -> the session it opened.
    opens: BTreeMap<u64, u64>,
    /// When each open wait queued, and when each hold (name, session, token) was granted, in
    /// state-machine time: what the events' `waited_ms` and `held_ms` must say.
    queued_at: BTreeMap<(String, u64, u64), u64>,
    granted_at: BTreeMap<(String, u64, u64), u64>,
}

impl Harness {
    fn apply(&mut self, command: Command) -> Result<Outcome, baton_core::Error> {
        self.index += 1;
        let before = self.sm.clone();
        let mut events = Vec::new();
        let entry = Entry::new(self.now, self.now, command.clone());
        let result = self.sm.apply(self.index, &entry, &mut events);
        if result.is_err() {
            // A rejected command changes nothing but time (and the timers time fires).
            let mut timer_events = Vec::new();
            let mut replay = before.clone();
            let tick = Entry::new(self.now, self.now, Command::Tick);
            replay.apply(self.index, &tick, &mut timer_events).unwrap();
            assert_eq!(replay, self.sm, "a rejected command changed the state: {command:?} -> {result:?}");
            assert_eq!(timer_events, events, "a rejected command emitted events other than its timers'");
        }
        for e in &events {
            self.check_event(e);
        }
        self.check_command(&command, &result, &before);
        self.check_structure();
        result
    }

    fn check_command(&mut self, command: &Command, result: &Result<Outcome, baton_core::Error>, before: &StateMachine) {
        match (command, result) {
            (Command::Cancel { name, session, request_id }, Ok(Outcome::Cancelled { granted: None })) => {
                self.cancelled.insert((name.clone(), *session, *request_id));
            }
            (Command::OpenSession { request_id, .. }, Ok(Outcome::SessionOpened { session, .. }))
                if *request_id != 0 =>
            {
                if let Some(first) = self.opens.get(request_id) {
                    if before.session(*first).is_some() {
                        assert_eq!(first, session, "a retried open (request {request_id}) opened a second session");
                    }
                }
                self.opens.insert(*request_id, *session);
            }
            _ => {}
        }
    }

    fn check_event(&mut self, event: &Event) {
        match event {
            Event::Granted { name, session, request_id, token, waited_ms, .. } => {
                // A grant from the queue says how long it waited; one at once says it did not.
                let now = self.sm.now_ms();
                let queued_at = self.queued_at.remove(&(name.clone(), *session, *request_id));
                assert_eq!(*waited_ms, queued_at.map(|q| now - q), "{name}: s{session}/r{request_id}'s wait");
                self.granted_at.insert((name.clone(), *session, *token), now);
                let last = self.last_token.insert(name.clone(), *token).unwrap_or(0);
                assert!(*token > last, "token {token} for {name} not above {last}");
                assert!(self.tokens.insert(*token), "token {token} granted twice");
                let key = (name.clone(), *session, *request_id);
                if let Some(deadline) = self.open_waits.remove(&key) {
                    assert!(self.now <= deadline, "{key:?} granted at {} after its deadline {deadline}", self.now);
                }
                assert!(self.granted_ever.insert(key.clone()), "{key:?} granted twice");
                assert!(!self.cancelled.contains(&key), "{key:?} granted after it was cancelled");
            }
            Event::Queued { name, session, request_id, .. } => {
                let lock = self.sm.lock(name).expect("queued lock exists");
                let w = lock.waiters.iter().find(|w| w.session == *session && w.request_id == *request_id).unwrap();
                let key = (name.clone(), *session, *request_id);
                self.open_waits.insert(key.clone(), w.deadline_ms);
                self.queued_at.insert(key.clone(), self.sm.now_ms());
                assert!(self.queued_ever.insert(key.clone()), "{key:?} queued twice");
                assert!(!self.cancelled.contains(&key), "{key:?} queued after it was cancelled");
            }
            Event::WaitEnded { name, session, request_id, .. } => {
                assert!(self.open_waits.remove(&(name.clone(), *session, *request_id)).is_some(), "wait ended twice");
                self.queued_at.remove(&(name.clone(), *session, *request_id));
            }
            Event::Released { name, session, token, held_ms, .. } => {
                let granted = self.granted_at.remove(&(name.clone(), *session, *token));
                let granted = granted.unwrap_or_else(|| panic!("{name}: s{session}/t{token} released, never granted"));
                assert_eq!(*held_ms, self.sm.now_ms() - granted, "{name}: s{session}/t{token}'s hold");
            }
            _ => {}
        }
    }

    fn check_structure(&self) {
        for name in NAMES {
            // One name, one kind.
            let uses = [
                self.sm.lock(name).is_some_and(|l| l.kind != Kind::Latch),
                self.sm.lock(name).is_some_and(|l| l.kind == Kind::Latch) || self.sm.latch(name).is_some(),
                self.sm.counter(name) != 0,
                self.sm.register(name).is_some(),
            ];
            assert!(uses.iter().filter(|u| **u).count() <= 1, "{name} is in use as several kinds: {uses:?}");
            if let Some(lock) = self.sm.lock(name) {
                self.check_lock(name, lock);
            }
        }
        // Every name a session owns is held or awaited by it, and nothing else.
        for (id, s) in self.sm.sessions() {
            for name in s.owned.iter() {
                let lock = self.sm.lock(name);
                let holds = lock.is_some_and(|l| l.holder(id).is_some());
                let waits = lock.is_some_and(|l| l.position_of_session(id).is_some());
                assert!(holds || waits, "session {id} owns {name} but neither holds nor waits for it: {lock:?}");
            }
        }
    }

    fn check_lock(&self, name: &str, lock: &baton_core::LockState) {
        for h in &lock.holders {
            let session = self.sm.session(h.session).expect("holder's session is live");
            assert!(session.owned.contains(name));
            assert!(lock.waiters.iter().all(|w| w.session != h.session), "holder also waits");
        }
        // Holders are compatible.
        match lock.kind {
            Kind::Mutex | Kind::Election => assert!(lock.holders.len() <= 1, "{name}: {} holders", lock.holders.len()),
            Kind::RwLock => assert!(
                lock.holders.iter().all(|h| h.mode == Mode::Shared) || lock.holders.len() == 1,
                "{name}: a writer shares the lock: {:?}",
                lock.holders
            ),
            Kind::Semaphore { capacity } => assert!(lock.permits_held() <= capacity as u64, "{name}: over capacity"),
            Kind::Barrier { .. } | Kind::Latch => assert!(lock.holders.is_empty(), "{name}: barriers have no holders"),
        }
        // Nobody waits who could be granted (FIFO: only the front matters).
        if lock.closed_until_ms <= self.sm.now_ms() {
            if let Some(front) = lock.waiters.front() {
                assert!(
                    !lock.fits(front.mode),
                    "{name}: the front waiter fits but waits: {front:?} holders {:?}",
                    lock.holders
                );
            }
        }
        let mut seen = BTreeSet::new();
        for w in &lock.waiters {
            let session = self.sm.session(w.session).expect("waiter of a dead session");
            assert!(session.owned.contains(name));
            assert!(seen.insert(w.session), "session queued twice on {name}");
            assert!(w.deadline_ms >= self.sm.now_ms(), "waiter past its deadline still queued");
        }
    }

    fn command(&self, op: Op) -> Command {
        let session = |pick: usize| if self.opened.is_empty() { 999 } else { self.opened[pick % self.opened.len()] };
        let held = |name: usize| self.sm.lock(NAMES[name]).and_then(|l| l.held_by()).map(|(_, t)| t).unwrap_or(1);
        let name_of = |name: usize| NAMES[name].to_string();
        match op {
            Op::Open { ttl_s, request_id } => {
                Command::OpenSession { client: "p".into(), ttl_ms: ttl_s * 1000, request_id }
            }
            Op::Close { pick } => Command::CloseSession { session: session(pick) },
            Op::Expire { pick } => Command::ExpireSessions { sessions: vec![session(pick)], as_of: u64::MAX },
            Op::Acquire { pick, name, request_id, wait_ms, delay_ms, kind, variant } => {
                let (kind, mode) = kind_and_mode(kind, variant);
                let value = if kind == Kind::Election { vec![1] } else { Vec::new() };
                Command::Acquire(AcquireRequest {
                    name: name_of(name),
                    session: session(pick),
                    request_id,
                    wait_ms,
                    lock_delay_ms: delay_ms,
                    kind,
                    mode,
                    value,
                })
            }
            Op::Release { pick, name, stale } => {
                let token = held(name);
                let token = if stale { token.saturating_sub(1) } else { token };
                Command::Release { name: name_of(name), session: session(pick), token }
            }
            Op::Cancel { pick, name, request_id } => {
                Command::Cancel { name: name_of(name), session: session(pick), request_id }
            }
            Op::Proclaim { pick, name, stale } => {
                let token = held(name);
                let token = if stale { token.saturating_sub(1) } else { token };
                Command::Proclaim { name: name_of(name), session: session(pick), token, value: vec![2] }
            }
            Op::LatchSet { name, count } => Command::LatchSet { name: name_of(name), count },
            Op::LatchDown { name } => Command::LatchCountDown { name: name_of(name) },
            Op::CounterAdd { name, delta } => Command::CounterAdd { name: name_of(name), delta },
            Op::CounterCas { name, expected, new } => Command::CounterCas { name: name_of(name), expected, new },
            Op::RegisterSet { name, value, expected } => {
                Command::RegisterSet { name: name_of(name), value: value.map(|v| vec![v]), expected_version: expected }
            }
            Op::Tick => Command::Tick,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn invariants_hold(ops in proptest::collection::vec((op(), 0u64..400), 1..150)) {
        let mut h = Harness { sm: StateMachine::new(Limits::default()), ..Harness::default() };
        for (op, dt) in ops {
            h.now += dt;
            let command = h.command(op);
            if let Ok(Outcome::SessionOpened { session, .. }) = h.apply(command) {
                if !h.opened.contains(&session) {
                    h.opened.push(session);
                }
            }
        }
        // Liveness: once every session ends and time passes, no wait is left open.
        let all: Vec<u64> = h.opened.clone();
        h.apply(Command::ExpireSessions { sessions: all, as_of: u64::MAX }).unwrap();
        h.now += 10_000_000;
        h.apply(Command::Tick).unwrap();
        prop_assert!(h.open_waits.is_empty(), "waits never resolved: {:?}", h.open_waits);
        prop_assert_eq!(h.sm.lock_count(), 0);
        prop_assert_eq!(h.sm.session_count(), 0);
    }
}

/// A queue-heavy mix on one read/write lock and one semaphore: many waiters with short, varied
/// deadlines and time moving in large steps, so that several deadlines pass at once and a
/// writer (or a large permit request) at the front times out with compatible waiters behind it.
fn queue_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::Open { ttl_s: 60, request_id: 0 }),
        6 => (any::<usize>(), 0usize..2, 0u64..1000, 1u64..1500, 0u32..6).prop_map(|(pick, name, request_id, wait, variant)| {
            // Name 0 ("a") is the read/write lock, name 1 ("b") the semaphore.
            Op::Acquire { pick, name, request_id, wait_ms: Some(wait), delay_ms: 0, kind: 1 + name as u32, variant }
        }),
        2 => (any::<usize>(), 0usize..2).prop_map(|(pick, name)| Op::Release { pick, name, stale: false }),
        1 => Just(Op::Tick),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn queues_never_grant_late(ops in proptest::collection::vec((queue_op(), 0u64..700), 1..80)) {
        let mut h = Harness { sm: StateMachine::new(Limits::default()), ..Harness::default() };
        for (op, dt) in ops {
            h.now += dt;
            let command = h.command(op);
            if let Ok(Outcome::SessionOpened { session, .. }) = h.apply(command) {
                h.opened.push(session);
            }
        }
    }
}
