//! Property tests: random command sequences against the state machine's invariants.

use std::collections::{BTreeMap, BTreeSet};

use baton_core::{AcquireRequest, Command, Entry, Event, Kind, Limits, Mode, Outcome, StateMachine};
use proptest::prelude::*;

/// "a" is an exclusive lock, "b" a read/write lock, "c" a semaphore with capacity 3, "d" an
/// election, "e" a barrier of 3 parties.
const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];
const PARTIES: u32 = 3;
const CAPACITY: u32 = 3;

fn kind_and_mode(name: usize, variant: u32) -> (Kind, Mode) {
    match name {
        0 => (Kind::Mutex, Mode::Exclusive),
        1 if variant.is_multiple_of(3) => (Kind::RwLock, Mode::Exclusive),
        1 => (Kind::RwLock, Mode::Shared),
        2 => (Kind::Semaphore { capacity: CAPACITY }, Mode::Permits(1 + variant % CAPACITY)),
        3 => (Kind::Election, Mode::Exclusive),
        _ => (Kind::Barrier { parties: PARTIES }, Mode::Exclusive),
    }
}

/// A command template; session numbers pick among the sessions opened so far.
#[derive(Clone, Debug)]
enum Op {
    Open { ttl_s: u64 },
    Close { pick: usize },
    Expire { pick: usize },
    Acquire { pick: usize, name: usize, request_id: u64, wait_ms: Option<u64>, delay_ms: u64, variant: u32 },
    Release { pick: usize, name: usize, stale: bool },
    Cancel { pick: usize, name: usize, request_id: u64 },
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (1u64..20).prop_map(|ttl_s| Op::Open { ttl_s }),
        1 => any::<usize>().prop_map(|pick| Op::Close { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Expire { pick }),
        5 => (any::<usize>(), 0..NAMES.len(), 0u64..4, proptest::option::of(0u64..3000), prop_oneof![Just(0u64), 1u64..500])
            .prop_flat_map(|(pick, name, request_id, wait_ms, delay_ms)| (0u32..6).prop_map(move |variant| Op::Acquire { pick, name, request_id, wait_ms, delay_ms, variant })),
        4 => (any::<usize>(), 0..NAMES.len(), any::<bool>()).prop_map(|(pick, name, stale)| Op::Release { pick, name, stale }),
        1 => (any::<usize>(), 0..NAMES.len(), 0u64..4).prop_map(|(pick, name, request_id)| Op::Cancel { pick, name, request_id }),
        2 => Just(Op::Tick),
    ]
}

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
}

impl Harness {
    fn apply(&mut self, command: Command) -> Result<Outcome, baton_core::Error> {
        self.index += 1;
        let before = self.sm.clone();
        let mut events = Vec::new();
        let result =
            self.sm.apply(self.index, &Entry { leader_time_ms: self.now, wall_ms: self.now, command }, &mut events);
        if result.is_err() {
            // A rejected command changes nothing but time (and the timers time fires).
            let mut expected = before.clone();
            expected.observe_time(self.index, self.now);
            let mut timer_events = Vec::new();
            let mut replay = before;
            replay
                .apply(
                    self.index,
                    &Entry { leader_time_ms: self.now, wall_ms: self.now, command: Command::Tick },
                    &mut timer_events,
                )
                .unwrap();
            assert_eq!(replay, self.sm, "a rejected command changed the state");
            assert_eq!(timer_events, events, "a rejected command emitted events other than its timers'");
        }
        for e in &events {
            self.check_event(e);
        }
        self.check_structure();
        result
    }

    fn check_event(&mut self, event: &Event) {
        match event {
            Event::Granted { name, session, request_id, token } => {
                let last = self.last_token.insert(name.clone(), *token).unwrap_or(0);
                assert!(*token > last, "token {token} for {name} not above {last}");
                assert!(self.tokens.insert(*token), "token {token} granted twice");
                if let Some(deadline) = self.open_waits.remove(&(name.clone(), *session, *request_id)) {
                    assert!(self.now <= deadline, "granted at {} after deadline {deadline}", self.now);
                }
            }
            Event::Queued { name, session, request_id } => {
                let lock = self.sm.lock(name).expect("queued lock exists");
                let w = lock.waiters.iter().find(|w| w.session == *session && w.request_id == *request_id).unwrap();
                self.open_waits.insert((name.clone(), *session, *request_id), w.deadline_ms);
            }
            Event::WaitEnded { name, session, request_id, .. } => {
                assert!(self.open_waits.remove(&(name.clone(), *session, *request_id)).is_some(), "wait ended twice");
            }
            _ => {}
        }
    }

    fn check_structure(&self) {
        for (name, lock) in (0..NAMES.len()).filter_map(|i| self.sm.lock(NAMES[i]).map(|l| (NAMES[i], l))) {
            for h in &lock.holders {
                let session = self.sm.session(h.session).expect("holder's session is live");
                assert!(session.owned.contains(name));
                assert!(lock.waiters.iter().all(|w| w.session != h.session), "holder also waits");
            }
            // Holders are compatible.
            match lock.kind {
                Kind::Mutex | Kind::Election => {
                    assert!(lock.holders.len() <= 1, "{name}: {} holders", lock.holders.len())
                }
                Kind::RwLock => assert!(
                    lock.holders.iter().all(|h| h.mode == Mode::Shared) || lock.holders.len() == 1,
                    "{name}: a writer shares the lock: {:?}",
                    lock.holders
                ),
                Kind::Semaphore { capacity } => {
                    assert!(lock.permits_held() <= capacity as u64, "{name}: over capacity")
                }
                Kind::Barrier { .. } | Kind::Latch => {
                    assert!(lock.holders.is_empty(), "{name}: barriers have no holders")
                }
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
                assert!(self.sm.session(w.session).is_some(), "waiter of a dead session");
                assert!(seen.insert(w.session), "session queued twice on {name}");
                assert!(w.deadline_ms >= self.sm.now_ms(), "waiter past its deadline still queued");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn invariants_hold(ops in proptest::collection::vec((op(), 0u64..400), 1..120)) {
        let mut h = Harness {
            sm: StateMachine::new(Limits::default()),
            index: 0, now: 0, opened: Vec::new(),
            last_token: BTreeMap::new(), open_waits: BTreeMap::new(), tokens: BTreeSet::new(),
        };
        for (op, dt) in ops {
            h.now += dt;
            let session = |h: &Harness, pick: usize| if h.opened.is_empty() { 999 } else { h.opened[pick % h.opened.len()] };
            let command = match op {
                Op::Open { ttl_s } => Command::OpenSession { client: "p".into(), ttl_ms: ttl_s * 1000 },
                Op::Close { pick } => Command::CloseSession { session: session(&h, pick) },
                Op::Expire { pick } => Command::ExpireSessions { sessions: vec![session(&h, pick)] },
                Op::Acquire { pick, name, request_id, wait_ms, delay_ms, variant } => {
                    let (kind, mode) = kind_and_mode(name, variant);
                    Command::Acquire(AcquireRequest {
                        name: NAMES[name].into(), session: session(&h, pick), request_id, wait_ms, lock_delay_ms: delay_ms, kind, mode, value: Vec::new(),
                    })
                }
                Op::Release { pick, name, stale } => {
                    let s = session(&h, pick);
                    let token = h.sm.lock(NAMES[name]).and_then(|l| l.held_by()).map(|(_, t)| t).unwrap_or(1);
                    Command::Release { name: NAMES[name].into(), session: s, token: if stale { token.saturating_sub(1) } else { token } }
                }
                Op::Cancel { pick, name, request_id } => Command::Cancel { name: NAMES[name].into(), session: session(&h, pick), request_id },
                Op::Tick => Command::Tick,
            };
            if let Ok(Outcome::SessionOpened { session, .. }) = h.apply(command) {
                h.opened.push(session);
            }
        }
        // Liveness: once every session ends and time passes, no wait is left open.
        let all: Vec<u64> = h.opened.clone();
        h.apply(Command::ExpireSessions { sessions: all }).unwrap();
        h.now += 10_000_000;
        h.apply(Command::Tick).unwrap();
        prop_assert!(h.open_waits.is_empty(), "waits never resolved: {:?}", h.open_waits);
        prop_assert_eq!(h.sm.lock_count(), 0);
        prop_assert_eq!(h.sm.session_count(), 0);
    }
}
