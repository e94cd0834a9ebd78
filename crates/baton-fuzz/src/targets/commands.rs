//! `commands`: the state machine's command stream. The input drives a sequence of up to 64
//! commands of every kind (on names that collide, sessions that exist or not, with the
//! leader's clock jumping or not) applied to a data group's, the etcd keyspace's or the meta
//! group's state machine; a hand-off's bundle is taken over by a second group.
//!
//! Checked after every command, with what `baton_core::StateMachine` exposes: the applied
//! index is the entry's, the clock and the last token never go back; at the end, the state
//! survives its snapshot unchanged (what a restarted or caught-up replica gets). The property
//! tests in baton-core check the semantic invariants; this target looks for panics and
//! arithmetic overflows on values they never draw (`u64::MAX` TTLs, counts, deltas).

use baton_core::topology::ETCD_GROUP;
use baton_core::{Command, Entry, Limits, Outcome, SlotSet, StateMachine, Topology};

use crate::{gen, Source, Target};

/// The target.
pub const TARGET: Target = Target {
    name: "commands",
    about: "sequences of every Command applied to a state machine (data, etcd and meta groups)",
    run,
    generate,
};

/// Most commands in one case.
const MAX_COMMANDS: usize = 64;

fn run(input: &[u8]) {
    let sm = state_from(&mut Source::new(input));
    let restored = StateMachine::from_snapshot(&sm.to_snapshot()).expect("a state machine's own snapshot decodes");
    assert!(restored == sm, "a state machine changed through its own snapshot");
}

/// A state machine of the kind the source picks, after the commands it drives.
/// The state machine's count of each user's names is what its sessions hold or await.
fn names_counted_right(sm: &StateMachine) {
    for user in ["a", "b"] {
        let owned: u64 = sm
            .sessions()
            .filter(|(_, s)| baton_core::command::session_owner(&s.client) == Some(user))
            .map(|(_, s)| s.owned.len() as u64)
            .sum();
        assert_eq!(sm.names_of(user), owned, "user {user}'s names counted wrong");
    }
}

pub fn state_from(src: &mut Source) -> StateMachine {
    let limits = Limits::default();
    let mut sm = match src.below(4) {
        0 => StateMachine::for_etcd(limits, ETCD_GROUP),
        1 => StateMachine::meta(limits, Topology::initial_with(&[1, 2, 3], 2, 3, true)),
        _ => StateMachine::new(limits),
    };
    let mut destination = StateMachine::for_group(Limits::default(), 2, SlotSet::empty());
    let (mut sessions, mut time) = (Vec::new(), 0u64);
    for index in 1..=MAX_COMMANDS as u64 {
        if src.is_empty() {
            break;
        }
        time = match src.below(8) {
            0 => src.u64(),
            1 => time,
            _ => time.saturating_add(src.below(5_000)),
        };
        let command = gen::command(src, &sessions);
        // Proposed for a user (authentication on) now and then: sessions are then theirs only.
        let named = baton_core::command::session_of(&command);
        // Mostly the named session's own user (so that quotas and counts get exercised), else
        // anyone.
        let owner = named
            .and_then(|id| sm.session(id))
            .and_then(|s| baton_core::command::session_owner(&s.client))
            .and_then(|o| ["a", "b"].into_iter().find(|u| *u == o));
        let user = match src.below(6) {
            0..=2 => owner.or(Some("a")),
            3 => Some("b"),
            _ => None,
        };
        let (before_now, before_token) = (sm.now_ms(), sm.last_token());
        let mut events = Vec::new();
        let quota =
            baton_core::auth::Quota { requests_per_s: 0, sessions: src.below(4) as u32, names: src.below(4) as u32 };
        let entry = Entry { user: user.map(String::from), quota, ..Entry::new(time, time, command) };
        let before = user.map(|u| (sm.sessions_of(u), sm.names_of(u)));
        let outcome = sm.apply(index, &entry, &mut events);
        // What the entry's user gained, it had room for under the entry's quota.
        if let (Some(user), Some((sessions, names))) = (user, before) {
            if sm.sessions_of(user) > sessions && quota.sessions > 0 {
                assert!(sessions < u64::from(quota.sessions), "{user} opened a session past its quota");
            }
            if sm.names_of(user) > names && quota.names > 0 {
                assert!(names < u64::from(quota.names), "{user} took a name past its quota");
            }
        }
        if let (Ok(_), Some(user), Some(session)) = (&outcome, user, named) {
            if let Some(s) = sm.session(session) {
                let owner = baton_core::command::session_owner(&s.client);
                assert_eq!(owner, Some(user), "a command for {user:?} acted for session {session} of {owner:?}");
            }
        }
        assert_eq!(sm.applied_index(), index, "the applied index is the entry's");
        assert!(sm.now_ms() >= before_now, "the state machine's clock went back");
        assert!(sm.last_token() >= before_token, "the last fencing token went back");
        match outcome {
            Ok(Outcome::SessionOpened { session, .. }) => sessions.push(session),
            Ok(Outcome::HandedOff { bundle }) => {
                let take_over = Entry::new(time, time, Command::TakeOver { bundle });
                let _ = destination.apply(index, &take_over, &mut events);
            }
            _ => {}
        }
        names_counted_right(&sm);
        names_counted_right(&destination);
    }
    sm
}

fn generate(src: &mut Source) -> Vec<u8> {
    // The input is the choices themselves.
    src.rest()
}
