//! With authentication on, every command is proposed for a user, and a session is its user's
//! alone: the state machine refuses a command that acts for another user's session (or one
//! opened with authentication off), and one that opens a session under another user's name.

use baton_core::auth::Quota;
use baton_core::{AcquireRequest, Command, Entry, Error, Limits, Outcome, StateMachine};

struct Log {
    sm: StateMachine,
    index: u64,
}

impl Log {
    fn apply(&mut self, user: Option<&str>, command: Command) -> Result<Outcome, Error> {
        self.index += 1;
        let entry = Entry { user: user.map(String::from), ..Entry::new(self.index, self.index, command) };
        self.sm.apply(self.index, &entry, &mut Vec::new())
    }

    fn open(&mut self, user: Option<&str>, client: &str) -> u64 {
        match self.apply(user, Command::OpenSession { client: client.into(), ttl_ms: 10_000, request_id: 0 }) {
            Ok(Outcome::SessionOpened { session, .. }) => session,
            other => panic!("open {client:?}: {other:?}"),
        }
    }
}

fn not_yours(r: Result<Outcome, Error>, session: u64, user: &str) {
    assert_eq!(r, Err(Error::NotYourSession { session, user: user.into() }));
}

#[test]
fn a_user_acts_for_its_own_sessions_only() {
    let mut log = Log { sm: StateMachine::new(Limits::default()), index: 0 };
    let alice = log.open(Some("alice"), "alice\u{1f}c1");
    let before_auth = log.open(None, "c2");
    let token = match log.apply(Some("alice"), Command::Acquire(AcquireRequest::exclusive("x", alice, 1, None))) {
        Ok(Outcome::Granted { token }) => token,
        other => panic!("{other:?}"),
    };

    // bob names alice's session in every command that names one: refused, nothing changes.
    let commands = [
        Command::Acquire(AcquireRequest::exclusive("y", alice, 2, None)),
        Command::Release { name: "x".into(), session: alice, token },
        Command::Cancel { name: "x".into(), session: alice, request_id: 1 },
        Command::Proclaim { name: "x".into(), session: alice, token, value: b"v".to_vec() },
        Command::AttachSession { session: alice, client: "bob\u{1f}c".into(), ttl_ms: 10_000 },
        Command::CloseSession { session: alice },
    ];
    for command in &commands {
        not_yours(log.apply(Some("bob"), command.clone()), alice, "bob");
        // A session opened with authentication off belongs to nobody once it is on.
        let mut theirs = command.clone();
        match &mut theirs {
            Command::Acquire(r) => r.session = before_auth,
            Command::AttachSession { session, client, .. } => {
                *session = before_auth;
                *client = "alice\u{1f}c".into();
            }
            Command::Release { session, .. }
            | Command::Cancel { session, .. }
            | Command::Proclaim { session, .. }
            | Command::CloseSession { session } => *session = before_auth,
            _ => unreachable!(),
        }
        not_yours(log.apply(Some("alice"), theirs), before_auth, "alice");
    }
    assert_eq!(log.sm.lock("x").unwrap().holders[0].session, alice);
    assert!(log.sm.session(alice).is_some());

    // A session is opened (or attached) for a user only under that user's name.
    for client in ["bob\u{1f}c", "c", "alice"] {
        let r = log.apply(Some("alice"), Command::OpenSession { client: client.into(), ttl_ms: 10_000, request_id: 0 });
        assert!(matches!(r, Err(Error::InvalidArgument(_))), "{client:?}: {r:?}");
    }

    // alice herself, and the cluster's own work (no user), may.
    assert_eq!(
        log.apply(Some("alice"), Command::Release { name: "x".into(), session: alice, token }).map(|_| ()),
        Ok(())
    );
    assert!(matches!(
        log.apply(None, Command::CloseSession { session: before_auth }),
        Ok(Outcome::SessionClosed { .. })
    ));
    assert!(matches!(
        log.apply(Some("alice"), Command::CloseSession { session: alice }),
        Ok(Outcome::SessionClosed { .. })
    ));
}

fn for_user(user: &str, quota: Quota, command: Command) -> Entry {
    Entry { user: Some(user.into()), quota, ..Entry::new(0, 0, command) }
}

/// A user's quota holds in each group, exactly: sessions and names beyond it are refused with
/// a message naming the limit; what was refused changed nothing; releases make room; retries
/// and attaches of sessions that exist are never refused; the counts survive a snapshot.
#[test]
fn a_users_quota_holds_sessions_and_names() {
    let quota = Quota { requests_per_s: 0, sessions: 2, names: 3 };
    let mut sm = StateMachine::new(Limits::default());
    let mut index = 0;
    let mut apply = |sm: &mut StateMachine, user: &str, command: Command| {
        index += 1;
        sm.apply(index, &for_user(user, quota, command), &mut Vec::new())
    };
    let open = |client: &str, request_id| Command::OpenSession { client: client.into(), ttl_ms: 10_000, request_id };
    let session = |r: Result<Outcome, Error>| match r {
        Ok(Outcome::SessionOpened { session, .. }) => session,
        other => panic!("{other:?}"),
    };
    let s1 = session(apply(&mut sm, "alice", open("alice\u{1f}a", 1)));
    let _s2 = session(apply(&mut sm, "alice", open("alice\u{1f}b", 0)));
    let third = apply(&mut sm, "alice", open("alice\u{1f}c", 0)).unwrap_err();
    assert_eq!(
        third.to_string(),
        "quota: user \"alice\" has 2 sessions in group 1 and its quota is 2 (baton user quota)"
    );
    assert_eq!(session(apply(&mut sm, "alice", open("alice\u{1f}a", 1))), s1, "a retried open is not a new session");
    session(apply(&mut sm, "bob", open("bob\u{1f}a", 0)));
    assert_eq!(sm.sessions_of("alice"), 2);

    let lock = |name: &str, request_id| Command::Acquire(AcquireRequest::exclusive(name, s1, request_id, Some(0)));
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        apply(&mut sm, "alice", lock(name, i as u64 + 1)).unwrap();
    }
    assert_eq!(sm.names_of("alice"), 3);
    let fourth = apply(&mut sm, "alice", lock("d", 4)).unwrap_err();
    assert!(matches!(&fourth, Error::LimitExceeded(m) if m.contains("3 names held or awaited")), "{fourth}");
    assert!(sm.lock("d").is_none(), "a refused acquire left nothing behind");
    // Another user's session waits for one of hers: its own count, not hers.
    let bob = sm.sessions().find(|(_, s)| s.client == "bob\u{1f}a").map(|(id, _)| id).unwrap();
    let wait = Command::Acquire(AcquireRequest::exclusive("a", bob, 1, Some(60_000)));
    assert!(matches!(apply(&mut sm, "bob", wait), Ok(Outcome::Queued { .. })));
    assert_eq!((sm.names_of("alice"), sm.names_of("bob")), (3, 1));

    // The counts are rebuilt exactly from a snapshot.
    let copy = StateMachine::from_snapshot(&sm.to_snapshot()).unwrap();
    assert_eq!((copy.names_of("alice"), copy.names_of("bob"), copy.sessions_of("alice")), (3, 1, 2));

    // Releasing one makes room for another; closing the session gives back the rest (and bob's
    // wait turns into a hold, counted as his).
    let token = sm.lock("b").unwrap().holders[0].token;
    apply(&mut sm, "alice", Command::Release { name: "b".into(), session: s1, token }).unwrap();
    apply(&mut sm, "alice", lock("d", 5)).unwrap();
    apply(&mut sm, "alice", Command::CloseSession { session: s1 }).unwrap();
    assert_eq!((sm.names_of("alice"), sm.names_of("bob"), sm.sessions_of("alice")), (0, 1, 1));
}

/// One step of two users' work on one group, for the property below.
#[derive(Clone, Debug)]
enum Step {
    Open { user: usize },
    Acquire { user: usize, session: usize, name: usize, wait: bool },
    Release { user: usize, session: usize, name: usize },
    Cancel { user: usize, session: usize, name: usize },
    Close { user: usize, session: usize },
    Expire { session: usize },
    Tick,
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        1 => (0..2usize).prop_map(|user| Step::Open { user }),
        4 => (0..2usize, 0..8usize, 0..5usize, any::<bool>())
            .prop_map(|(user, session, name, wait)| Step::Acquire { user, session, name, wait }),
        2 => (0..2usize, 0..8usize, 0..5usize).prop_map(|(user, session, name)| Step::Release { user, session, name }),
        1 => (0..2usize, 0..8usize, 0..5usize).prop_map(|(user, session, name)| Step::Cancel { user, session, name }),
        1 => (0..2usize, 0..8usize).prop_map(|(user, session)| Step::Close { user, session }),
        1 => (0..8usize).prop_map(|session| Step::Expire { session }),
        1 => Just(Step::Tick),
    ]
}

proptest::proptest! {
    /// Whatever two users do, each one's counts are what its sessions hold (the state
    /// machine's own index against a count from scratch, also after a snapshot), and nothing
    /// it gained took it past its quota.
    #[test]
    fn users_never_pass_their_quota_and_are_counted_exactly(
        steps in proptest::collection::vec(step(), 1..80),
        sessions in 1u32..4,
        names in 1u32..4,
    ) {
        const USERS: [&str; 2] = ["alice", "bob"];
        let quota = Quota { requests_per_s: 0, sessions, names };
        let mut sm = StateMachine::new(Limits::default());
        let mut opened: Vec<u64> = Vec::new();
        let (mut index, mut now) = (0u64, 0u64);
        for step in steps {
            index += 1;
            now += 100;
            let pick = |i: usize| opened.get(i % opened.len().max(1)).copied().unwrap_or(1);
            let name = |n: usize| format!("n{n}");
            let (user, command) = match step {
                Step::Open { user } => {
                    (Some(user), Command::OpenSession { client: format!("{}\u{1f}c", USERS[user]), ttl_ms: 10_000, request_id: 0 })
                }
                Step::Acquire { user, session, name: n, wait } => {
                    let wait = if wait { Some(5_000) } else { Some(0) };
                    (Some(user), Command::Acquire(AcquireRequest::exclusive(name(n), pick(session), index, wait)))
                }
                Step::Release { user, session, name: n } => {
                    let token = sm.lock(&name(n)).and_then(|l| l.holders.first().map(|h| h.token)).unwrap_or(0);
                    (Some(user), Command::Release { name: name(n), session: pick(session), token })
                }
                Step::Cancel { user, session, name: n } => {
                    let request_id = sm.lock(&name(n)).and_then(|l| l.waiters.front().map(|w| w.request_id)).unwrap_or(0);
                    (Some(user), Command::Cancel { name: name(n), session: pick(session), request_id })
                }
                Step::Close { user, session } => (Some(user), Command::CloseSession { session: pick(session) }),
                Step::Expire { session } => (None, Command::ExpireSessions { sessions: vec![pick(session)], as_of: index }),
                Step::Tick => (None, Command::Tick),
            };
            let before: Vec<(u64, u64)> = USERS.iter().map(|u| (sm.sessions_of(u), sm.names_of(u))).collect();
            let entry = Entry {
                user: user.map(|u| USERS[u].to_string()),
                quota,
                ..Entry::new(now, now, command)
            };
            if let Ok(Outcome::SessionOpened { session, .. }) = sm.apply(index, &entry, &mut Vec::new()) {
                opened.push(session);
            }
            for (i, u) in USERS.iter().enumerate() {
                let held: u64 = sm
                    .sessions()
                    .filter(|(_, s)| baton_core::command::session_owner(&s.client) == Some(*u))
                    .map(|(_, s)| s.owned.len() as u64)
                    .sum();
                proptest::prop_assert_eq!(sm.names_of(u), held, "{}'s names counted wrong", u);
                if user == Some(i) {
                    let (s0, n0) = before[i];
                    proptest::prop_assert!(sm.sessions_of(u) <= s0.max(u64::from(sessions)), "{} past its sessions", u);
                    proptest::prop_assert!(sm.names_of(u) <= n0.max(u64::from(names)), "{} past its names", u);
                }
            }
        }
        let copy = StateMachine::from_snapshot(&sm.to_snapshot()).unwrap();
        for u in USERS {
            proptest::prop_assert_eq!((copy.names_of(u), copy.sessions_of(u)), (sm.names_of(u), sm.sessions_of(u)));
        }
    }
}

/// A snapshot of the first layout with a magic (users and roles without quotas) still reads,
/// as users and roles with no quotas; a group without users and roles reads as it was.
#[test]
fn snapshots_from_before_quotas_still_read() {
    use baton_core::auth::AuthCommand;
    let topology = baton_core::Topology::initial_with(&[1, 2, 3], 2, 3, true);
    let mut meta = StateMachine::meta(Limits::default(), topology);
    let changes = [
        AuthCommand::UserAdd { name: "root".into(), password_hash: None },
        AuthCommand::UserGrant { user: "root".into(), role: "root".into() },
        AuthCommand::RoleAdd { name: "jobs".into() },
    ];
    for (i, change) in changes.into_iter().enumerate() {
        let index = i as u64 + 1;
        meta.apply(index, &Entry::new(index, index, Command::Auth(change)), &mut Vec::new()).unwrap();
    }
    let data = StateMachine::new(Limits::default());
    for (sm, cut) in [(&meta, 20), (&data, 0)] {
        let now = sm.to_snapshot();
        // The first layout: another magic, and (with users and roles) without the quotas.
        let mut v1 = b"BTNSM\x00\x00\x01".to_vec();
        v1.extend_from_slice(&now[8..now.len() - cut]);
        let read = StateMachine::from_snapshot(&v1).expect("a snapshot of the first magic layout reads");
        assert!(read == *sm, "it reads as it was");
        // Cut one byte short, it does not read as anything.
        assert!(StateMachine::from_snapshot(&v1[..v1.len() - 1]).is_err());
    }
}
