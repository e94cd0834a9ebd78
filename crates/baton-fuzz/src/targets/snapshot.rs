//! `snapshot`: a state machine's snapshot bytes through `StateMachine::from_snapshot` (the
//! current layout and the two older ones it falls back to); a state it accepts must encode
//! back to bytes that decode to the same state, and must apply a command.
//!
//! `snapshot-file`: a group's snapshot file (protobuf 2) through baton-node's
//! `disk::decode_snapshot_file`, then the state machine in it, as a node starting from its
//! data folder reads them.

use std::path::Path;

use baton_core::{Command, Entry, StateMachine};
use baton_node::disk::decode_snapshot_file;
use protobuf::Message as _;
use raft::eraftpb::Snapshot;

use crate::{Source, Target};

/// The state machine's snapshot.
pub const TARGET: Target = Target {
    name: "snapshot",
    about: "state machine snapshots (bincode, older layouts too) through StateMachine::from_snapshot",
    run,
    generate,
};

/// The snapshot file.
pub const FILE_TARGET: Target = Target {
    name: "snapshot-file",
    about: "snapshot files (protobuf 2) through disk::decode_snapshot_file, then the state in them",
    run: run_file,
    generate: generate_file,
};

fn run(input: &[u8]) {
    let Ok(mut sm) = StateMachine::from_snapshot(input) else { return };
    let again = StateMachine::from_snapshot(&sm.to_snapshot()).expect("a decoded state encodes back to a valid one");
    assert!(again == sm, "a decoded state changed through its own snapshot");
    // (A state at the last possible index takes no further entry: no log gets there.)
    if let Some(index) = sm.applied_index().checked_add(1) {
        let _ = sm.apply(index, &Entry::new(u64::MAX, 0, Command::Tick), &mut Vec::new());
    }
}

fn generate(src: &mut Source) -> Vec<u8> {
    let mut bytes = super::commands::state_from(src).to_snapshot();
    // The older layouts: without the keyspace's last field (alarms, 8 bytes) or the keyspace
    // itself (`None`, 1 byte).
    match src.below(6) {
        0 => bytes.truncate(bytes.len().saturating_sub(1)),
        1 => bytes.truncate(bytes.len().saturating_sub(8)),
        _ => {}
    }
    bytes
}

fn run_file(input: &[u8]) {
    if let Ok(snap) = decode_snapshot_file(Path::new("group-1.snap"), input) {
        if !snap.data.is_empty() {
            run(&snap.data);
        }
    }
}

fn generate_file(src: &mut Source) -> Vec<u8> {
    let mut snap = Snapshot::default();
    let meta = snap.mut_metadata();
    meta.index = src.u64();
    meta.term = src.u64();
    meta.mut_conf_state().voters = vec![1, 2, 3];
    snap.data = generate(src).into();
    snap.write_to_bytes().unwrap_or_default()
}
