//! With authentication on, every command is proposed for a user, and a session is its user's
//! alone: the state machine refuses a command that acts for another user's session (or one
//! opened with authentication off), and one that opens a session under another user's name.

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
