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
        let user = [None, None, Some("a"), Some("b")][src.index(4)];
        let named = baton_core::command::session_of(&command);
        let (before_now, before_token) = (sm.now_ms(), sm.last_token());
        let mut events = Vec::new();
        let entry = Entry { user: user.map(String::from), ..Entry::new(time, time, command) };
        let outcome = sm.apply(index, &entry, &mut events);
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
    }
    sm
}

fn generate(src: &mut Source) -> Vec<u8> {
    // The input is the choices themselves.
    src.rest()
}
