//! `log-entry`: a Raft log entry's data as baton-node reads it when the entry applies: a
//! normal entry by `Proposal::decode` (bincode), its command then applied to a state machine;
//! a membership change by `decode_conf_change` as `ConfChange` or `ConfChangeV2` (protobuf 2).
//! Entries are written by a leader; a replica reading garbage stops with an error (it cannot
//! skip an entry the others applied), which is what the target checks: an error, never a
//! panic.

use baton_core::{Entry, Limits, StateMachine};
use baton_node::{decode_conf_change, Proposal};
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfChangeV2};

use super::{split, tagged};
use crate::{gen, Source, Target};

/// The target.
pub const TARGET: Target = Target {
    name: "log-entry",
    about: "log entry data through baton_node::{Proposal::decode, decode_conf_change}, then applied",
    run,
    generate,
};

fn run(input: &[u8]) {
    match split(input, 3) {
        (0, data) => {
            if let Ok(p) = Proposal::decode(data) {
                let mut sm = StateMachine::new(Limits::default());
                let _ = sm.apply(1, &p.entry, &mut Vec::new());
            }
        }
        (1, data) => {
            let _ = decode_conf_change::<ConfChange>(data);
        }
        (_, data) => {
            let _ = decode_conf_change::<ConfChangeV2>(data);
        }
    }
}

fn generate(src: &mut Source) -> Vec<u8> {
    match src.below(4) {
        0 => {
            let mut cc = ConfChange::default();
            let types = [ConfChangeType::AddNode, ConfChangeType::RemoveNode, ConfChangeType::AddLearnerNode];
            cc.set_change_type(types[src.index(3)]);
            cc.node_id = src.u64();
            cc.context = src.u64().to_be_bytes().to_vec().into();
            tagged(1, cc.write_to_bytes().unwrap_or_default())
        }
        1 => {
            let cc = ConfChangeV2 { context: src.bytes(8).into(), ..Default::default() };
            tagged(2, cc.write_to_bytes().unwrap_or_default())
        }
        _ => {
            let time = src.u64();
            let mut entry = Entry::new(time, src.u64(), gen::command(src, &[1]));
            if src.bool() {
                entry.user = Some(src.name());
            }
            let p = Proposal { origin: src.below(4), incarnation: src.u64(), request: src.u64(), entry };
            tagged(0, bincode::serialize(&p).unwrap_or_default())
        }
    }
}
