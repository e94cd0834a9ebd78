//! `peer-frame`: a frame of a peer stream, prost-decoded as `PeerFrame` and taken through what
//! the transport's receiver does with it (`baton_server::transport`): a handshake is checked
//! against ours (`check_handshake`), a batch by `batch_of` and `steps_of`, which decode each
//! Raft message (protobuf 2) and check its sender and receiver.
//!
//! What a decoded message then does to a node is the `raft-step` target's concern.

use baton_proto::peer::peer_frame::Frame;
use baton_proto::peer::{GroupMessage, Handshake, PeerFrame, RaftBatch};
use baton_server::transport::{batch_of, check_handshake, steps_of};
use prost::Message as _;
use protobuf::Message as _;

use crate::{gen, Source, Target};

/// The target.
pub const TARGET: Target = Target {
    name: "peer-frame",
    about: "peer stream frames (prost) through transport::{check_handshake, batch_of, steps_of} (protobuf 2)",
    run,
    generate,
};

/// This node, and the peer whose stream the frame is on.
const ME: u64 = 1;
const PEER: u64 = 2;

/// A member's handshake (the fields `check_handshake` compares, the rest empty).
fn handshake(id: u64) -> Handshake {
    let members = (1..=3).map(|i| (i, String::new())).collect();
    Handshake { node_id: id, members, tick_ms: 100, election_ticks: 10, data_groups: 1, ..Default::default() }
}

fn run(input: &[u8]) {
    let Ok(frame) = PeerFrame::decode(input) else { return };
    if let Some(Frame::Handshake(theirs)) = &frame.frame {
        let _ = check_handshake(&handshake(ME), theirs);
    }
    let Ok(batch) = batch_of(frame, PEER) else { return };
    if let Ok(steps) = steps_of(batch, PEER, ME) {
        for (_, msg) in &steps {
            assert!(msg.from == PEER && msg.to == ME, "steps_of let a message of another sender or receiver through");
        }
    }
}

fn generate(src: &mut Source) -> Vec<u8> {
    let frame = if src.below(8) == 0 {
        let mut h = handshake(src.below(4));
        h.tick_ms = if src.bool() { 100 } else { src.u64() };
        Frame::Handshake(h)
    } else {
        let from = if src.below(8) == 0 { src.below(4) } else { PEER };
        let messages = (0..1 + src.below(4))
            .map(|_| {
                let (f, t) = if src.below(8) == 0 { (src.below(4), src.below(4)) } else { (PEER, ME) };
                let (last, term) = (src.below(20), src.below(5));
                let msg = gen::raft_message(src, f, t, last, term);
                GroupMessage { group: src.below(3), message: msg.write_to_bytes().unwrap_or_default().into() }
            })
            .collect();
        Frame::Batch(RaftBatch { from, messages })
    };
    PeerFrame { frame: Some(frame) }.encode_to_vec()
}
