//! Sharding in the state machine: names outside a group's slots are refused, sessions get
//! records in other groups, and a slot range moves between groups with everything on it.

use baton_core::moves::SlotBundle;
use baton_core::{
    slot_of, AcquireRequest, Command, Entry, Error, Event, Limits, Outcome, SlotSet, StateMachine, META_GROUP,
};

/// A group's state machine with its own log index and clock.
struct Group {
    sm: StateMachine,
    index: u64,
    now: u64,
}

impl Group {
    fn new(id: u64, slots: SlotSet, now: u64) -> Group {
        Group { sm: StateMachine::for_group(Limits::default(), id, slots), index: 0, now }
    }

    fn apply(&mut self, command: Command) -> (Result<Outcome, Error>, Vec<Event>) {
        self.index += 1;
        let mut events = Vec::new();
        let entry = Entry::new(self.now, self.now, command);
        let r = self.sm.apply(self.index, &entry, &mut events);
        (r, events)
    }

    fn ok(&mut self, command: Command) -> Outcome {
        let (r, _) = self.apply(command.clone());
        r.unwrap_or_else(|e| panic!("{command:?} failed: {e}"))
    }

    fn open(&mut self, client: &str) -> u64 {
        match self.ok(Command::OpenSession { client: client.into(), ttl_ms: 10_000, request_id: 0 }) {
            Outcome::SessionOpened { session, .. } => session,
            other => panic!("open: {other:?}"),
        }
    }

    fn acquire(&mut self, name: &str, session: u64, request_id: u64, wait_ms: Option<u64>) -> Outcome {
        self.ok(Command::Acquire(AcquireRequest::exclusive(name, session, request_id, wait_ms)))
    }
}

/// A name whose slot is in `start..=end`.
fn name_in(start: u16, end: u16, tag: &str) -> String {
    (0..).map(|i| format!("{tag}-{i}")).find(|n| (start..=end).contains(&slot_of(n))).expect("some name hashes there")
}

#[test]
fn a_group_refuses_names_it_does_not_serve_and_ids_name_their_home() {
    let mut a = Group::new(1, SlotSet::range(0, 8191), 0);
    let mut b = Group::new(2, SlotSet::range(8192, 16383), 0);
    let (ours, theirs) = (name_in(0, 8191, "a"), name_in(8192, 16383, "b"));
    let s = a.open("c1");
    assert_eq!(s, 1, "group 1's ids are plain log indexes");
    assert!(matches!(a.acquire(&ours, s, 1, None), Outcome::Granted { .. }));
    let (r, events) = a.apply(Command::CounterAdd { name: theirs.clone(), delta: 1 });
    assert!(matches!(r, Err(Error::NotOwned { group: 1, .. })), "{r:?}");
    assert!(events.is_empty());
    assert_eq!(a.sm.counter(&theirs), 0, "nothing applied");

    // Group 2's sessions carry their home in the top 16 bits; a session attaches elsewhere.
    let t = b.open("c2");
    assert_eq!(t >> 48, 1);
    assert_eq!(t & ((1 << 48) - 1), 1);
    let attach = Command::AttachSession { session: s, client: "c1".into(), ttl_ms: 10_000 };
    assert_eq!(b.ok(attach.clone()), Outcome::SessionOpened { session: s, ttl_ms: 10_000 });
    assert_eq!(b.ok(attach), Outcome::SessionOpened { session: s, ttl_ms: 10_000 }, "idempotent");
    assert!(matches!(b.acquire(&theirs, s, 2, None), Outcome::Granted { .. }));

    // A session whose home is this group does not come back once gone.
    a.ok(Command::ExpireSessions { sessions: vec![s], as_of: u64::MAX });
    let (r, _) = a.apply(Command::AttachSession { session: s, client: "c1".into(), ttl_ms: 10_000 });
    assert_eq!(r, Err(Error::SessionNotFound(s)));
    // The meta group serves no name and opens no session.
    let mut meta = Group { sm: StateMachine::meta(Limits::default(), Default::default()), index: 0, now: 0 };
    assert!(matches!(meta.apply(Command::CounterAdd { name: ours, delta: 1 }).0, Err(Error::NotOwned { .. })));
    assert!(meta.apply(Command::OpenSession { client: "x".into(), ttl_ms: 10_000, request_id: 0 }).0.is_err());
    assert_eq!(meta.sm.group(), META_GROUP);
}

#[test]
fn a_moved_range_keeps_holders_waiters_values_and_token_order() {
    // The two groups' clocks differ: the bundle's times are rebased.
    let mut a = Group::new(1, SlotSet::range(0, 8191), 50_000);
    let mut b = Group::new(2, SlotSet::range(8192, 16383), 1_000);
    let moving = name_in(0, 4095, "m");
    let counter = name_in(0, 4095, "c");
    let staying = name_in(4096, 8191, "s");
    let (h, w) = (a.open("holder"), a.open("waiter"));
    let Outcome::Granted { token: t1 } = a.acquire(&moving, h, 1, None) else { panic!() };
    assert!(matches!(a.acquire(&moving, w, 1, Some(5_000)), Outcome::Queued { .. }));
    a.acquire(&staying, h, 2, None);
    a.ok(Command::CounterAdd { name: counter.clone(), delta: 7 });
    // Tokens issued for other names raise the source's counter above t1.
    for i in 0..5 {
        let n = name_in(4096, 8191, &format!("x{i}"));
        a.acquire(&n, w, 10 + i, None);
    }
    let floor = a.sm.last_token();
    a.now += 1_000;

    let hand = Command::HandOff { move_id: 7, start: 0, end: 4095, to: 2 };
    let (r, events) = a.apply(hand.clone());
    let Ok(Outcome::HandedOff { bundle }) = r else { panic!("{r:?}") };
    assert!(events.contains(&Event::SlotsMoved { start: 0, end: 4095, from: 1, to: 2 }));
    assert!(a.sm.lock(&moving).is_none() && a.sm.counter(&counter) == 0, "the state left the source");
    assert!(a.sm.lock(&staying).is_some());
    assert!(a.sm.session(h).unwrap().moved_to.contains(&2));
    // Every later command on a moved name is refused by the source.
    let (r, _) = a.apply(Command::Release { name: moving.clone(), session: h, token: t1 });
    assert!(matches!(r, Err(Error::NotOwned { .. })));
    // A repeated hand-off answers with the same bundle, and changes nothing.
    let (again, _) = a.apply(hand);
    assert_eq!(again, Ok(Outcome::HandedOff { bundle: bundle.clone() }));

    b.now += 500;
    let take = Command::TakeOver { bundle: bundle.clone() };
    assert_eq!(b.ok(take.clone()), Outcome::TookOver { names: 1 + 1 });
    assert_eq!(b.ok(take), Outcome::TookOver { names: 2 }, "a repeated take-over is done already");
    assert!(b.sm.slots().contains_range(0, 4095));
    let lock = b.sm.lock(&moving).expect("moved");
    assert_eq!(lock.held_by(), Some((h, t1)));
    assert_eq!(lock.waiters.len(), 1);
    // The waiter's deadline (5 s after it queued, 1 s before the hand-off) is 4 s after the
    // take-over on the destination's clock.
    assert_eq!(lock.waiters[0].deadline_ms, b.now + 4_000);
    assert_eq!(b.sm.counter(&counter), 7);
    assert!(b.sm.session(h).unwrap().owned.contains(&moving));

    // The holder releases at the destination; the waiter gets a token above everything the
    // source ever issued.
    let (r, events) = b.apply(Command::Release { name: moving.clone(), session: h, token: t1 });
    r.unwrap();
    let granted = events.iter().find_map(|e| match e {
        Event::Granted { session, token, .. } if *session == w => Some(*token),
        _ => None,
    });
    assert!(granted.unwrap() > floor, "token {granted:?} not above the source's {floor}");
    // The waiter's deadline still fires (rebased), and a retry of its acquire is answered.
    assert!(matches!(b.acquire(&moving, w, 1, Some(5_000)), Outcome::Granted { .. }));
}

#[test]
fn moves_are_refused_when_they_do_not_fit() {
    let mut a = Group::new(1, SlotSet::range(0, 8191), 0);
    let mut b = Group::new(2, SlotSet::range(8192, 16383), 0);
    let (r, _) = a.apply(Command::HandOff { move_id: 1, start: 8000, end: 9000, to: 2 });
    assert!(matches!(r, Err(Error::InvalidArgument(m)) if m.contains("does not serve")));
    let (r, _) = a.apply(Command::HandOff { move_id: 1, start: 0, end: 10, to: 1 });
    assert!(r.is_err(), "not to itself");
    let Outcome::HandedOff { bundle } = a.ok(Command::HandOff { move_id: 2, start: 0, end: 10, to: 2 }) else {
        panic!()
    };
    // Taken over by the wrong group, or over slots the group has: refused, nothing changed.
    let mut c = Group::new(3, SlotSet::empty(), 0);
    assert!(c.apply(Command::TakeOver { bundle: bundle.clone() }).0.is_err());
    let mut overlapping: SlotBundle = (*bundle).clone();
    (overlapping.start, overlapping.end) = (8192, 8200);
    assert!(b.apply(Command::TakeOver { bundle: Box::new(overlapping) }).0.is_err());
    assert!(!b.sm.slots().contains(0));
}

fn bundle_of(o: Outcome) -> Box<SlotBundle> {
    match o {
        Outcome::HandedOff { bundle } => bundle,
        o => panic!("{o:?}"),
    }
}

/// Review finding: a take-over into a session's existing record (and an attach to one) gave the
/// destination's leader no new lease for it, while the client counts the moved names' lease from
/// the move; and a session that moved only remembered outcomes was not told of the destination.
#[test]
fn a_take_over_into_an_existing_record_refreshes_it() {
    let mut a = Group::new(1, SlotSet::range(0, 8191), 0);
    let mut b = Group::new(2, SlotSet::range(8192, 16383), 0);
    let s = a.open("c1");
    let (x, y) = (name_in(0, 100, "x"), name_in(200, 300, "y"));
    let o = a.open("c2");
    a.acquire(&x, o, 1, None);
    assert!(matches!(a.acquire(&x, s, 5, None), Outcome::NotAvailable { .. }), "s only remembers an outcome");
    let b1 = bundle_of(a.ok(Command::HandOff { move_id: 1, start: 0, end: 100, to: 2 }));
    assert!(a.sm.session(s).unwrap().moved_to.contains(&2), "the client must learn of the record at 2");
    let (_, events) = b.apply(Command::TakeOver { bundle: b1 });
    assert!(events.iter().any(|e| matches!(e, Event::SessionOpened { session, .. } if *session == s)));
    a.acquire(&y, s, 6, None);
    let b2 = bundle_of(a.ok(Command::HandOff { move_id: 2, start: 200, end: 300, to: 2 }));
    let (_, events) = b.apply(Command::TakeOver { bundle: b2 });
    assert!(events.iter().any(|e| matches!(e, Event::SessionRefreshed { session, .. } if *session == s)));
    // An expiry the leader judged before the take-over does not apply after it.
    let before = b.index - 1;
    let (r, _) = b.apply(Command::ExpireSessions { sessions: vec![s], as_of: before });
    assert_eq!(r, Ok(Outcome::SessionsExpired { expired: vec![] }));
    assert!(b.sm.session(s).unwrap().owned.contains(&y));
    let (_, events) = b.apply(Command::AttachSession { session: s, client: "c1".into(), ttl_ms: 10_000 });
    assert!(events.iter().any(|e| matches!(e, Event::SessionRefreshed { .. })), "an attach refreshes too");
}

/// Review finding: a take-over re-created a session gone from its home group (it expired there),
/// with the moved names' holds: the session came back to life.
#[test]
fn a_take_over_does_not_revive_a_session_gone_from_its_home() {
    let mut a = Group::new(1, SlotSet::range(0, 8191), 0);
    let mut b = Group::new(2, SlotSet::range(8192, 16383), 0);
    let s = b.open("c1"); // home: group 2
    a.ok(Command::AttachSession { session: s, client: "c1".into(), ttl_ms: 10_000 });
    let x = name_in(0, 100, "x");
    let Outcome::Granted { token } = a.acquire(&x, s, 1, None) else { panic!() };
    b.ok(Command::ExpireSessions { sessions: vec![s], as_of: u64::MAX });
    let moved = bundle_of(a.ok(Command::HandOff { move_id: 1, start: 0, end: 100, to: 2 }));
    let (_, events) = b.apply(Command::TakeOver { bundle: moved });
    assert!(b.sm.session(s).is_none(), "revived");
    assert!(events.iter().any(|e| matches!(e,
        Event::Released { name, session, token: t, expired: true, .. } if *name == x && *session == s && *t == token)));
    assert!(b.sm.lock(&x).is_none_or(|l| l.holders.is_empty()), "its hold went with it");
}

/// Review finding: only the last 16 moves were remembered, so a late repeat of an older step (a
/// deposed meta leader's) could make two groups serve a slot, or hand a slot off to nobody.
#[test]
fn late_repeats_of_old_move_steps_change_nothing() {
    let mut a = Group::new(1, SlotSet::range(0, 8191), 0);
    let mut b = Group::new(2, SlotSet::range(8192, 16383), 0);
    let mut c = Group::new(3, SlotSet::empty(), 0);
    let m1 = bundle_of(a.ok(Command::HandOff { move_id: 1, start: 0, end: 0, to: 2 }));
    b.ok(Command::TakeOver { bundle: m1.clone() });
    for i in 1..=20u16 {
        let m = bundle_of(a.ok(Command::HandOff { move_id: 1 + i as u64, start: i, end: i, to: 2 }));
        b.ok(Command::TakeOver { bundle: m });
    }
    let m100 = bundle_of(b.ok(Command::HandOff { move_id: 100, start: 0, end: 0, to: 3 }));
    c.ok(Command::TakeOver { bundle: m100 });
    assert_eq!(b.ok(Command::TakeOver { bundle: m1 }), Outcome::TookOver { names: 0 });
    assert!(!b.sm.slots().contains(0) && c.sm.slots().contains(0), "one group serves slot 0");
    // Back to group 1 (move 101), then a late repeat of move 1's hand-off there.
    let back = bundle_of(c.ok(Command::HandOff { move_id: 101, start: 0, end: 0, to: 1 }));
    a.ok(Command::TakeOver { bundle: back });
    let (r, _) = a.apply(Command::HandOff { move_id: 1, start: 0, end: 0, to: 2 });
    assert!(matches!(&r, Err(Error::InvalidArgument(m)) if m.contains("finished already")), "{r:?}");
    assert!(a.sm.slots().contains(0), "slot 0 handed off to nobody");
}

/// Review finding: merging a moved session's remembered outcomes took its window past 16 and it
/// was never trimmed again: the memory grew, and old retries were answered instead of refused.
#[test]
fn remembered_outcomes_stay_within_the_window_after_a_merge() {
    let mut a = Group::new(1, SlotSet::range(0, 8191), 0);
    let mut b = Group::new(2, SlotSet::range(8192, 16383), 0);
    let s = a.open("c1");
    b.ok(Command::AttachSession { session: s, client: "c1".into(), ttl_ms: 10_000 });
    let (held_a, held_b) = (name_in(0, 100, "ha"), name_in(8192, 16383, "hb"));
    let (other_a, other_b) = (a.open("c3"), b.open("c2"));
    a.acquire(&held_a, other_a, 1, None);
    b.acquire(&held_b, other_b, 1, None);
    let mut rid = 100;
    for _ in 0..16 {
        rid += 1;
        b.acquire(&held_b, s, rid, None);
    }
    for _ in 0..16 {
        rid += 1;
        a.acquire(&held_a, s, rid, None);
    }
    let moved = bundle_of(a.ok(Command::HandOff { move_id: 1, start: 0, end: 100, to: 2 }));
    b.ok(Command::TakeOver { bundle: moved });
    let first = rid + 1;
    for _ in 0..40 {
        rid += 1;
        b.acquire(&held_b, s, rid, None);
    }
    let (r, _) = b.apply(Command::Acquire(AcquireRequest::exclusive(&held_b, s, first, None)));
    assert!(matches!(r, Err(Error::RetryTooLate { .. })), "{r:?}");
}
