//! `crdt`: what reaches the coordination-free tier from outside: a peer's gossip (bincode,
//! [`Gossip::decode`]) handed to a replica as the transport would, a client's `CrdtRequest`
//! (prost, through `service::crdt::request`) handed to the same replica, and the bytes of a
//! session token or a stored state. The replica runs whole rounds (write, release, outputs), and
//! its digest must stay the XOR of its objects' hashes whatever it was fed.

use baton_core::crdt::{Context, Key, Kind, Op};
use baton_core::Hlc;
use baton_node::crdt::{gossip::decode_state, Delta, Gossip, Replica, ReplicaConfig};
use baton_proto::v1 as pb;
use prost::Message as _;

use super::{split, tagged};
use crate::{Source, Target};

/// The target.
pub const TARGET: Target = Target {
    name: "crdt",
    about: "CRDT gossip (bincode) and Crdt requests (prost) fed to a replica; tokens and stored states decoded",
    run,
    generate,
};

const TYPES: u8 = 3;

fn run(input: &[u8]) {
    let (kind, bytes) = split(input, TYPES);
    let mut replica = Replica::new(ReplicaConfig::new(1), [1, 2, 3], vec![]);
    replica.set_time(1, 1);
    match kind {
        0 => {
            let Ok(msg) = Gossip::decode(bytes) else { return };
            replica.receive(2, msg);
        }
        1 => {
            let Ok(req) = pb::CrdtRequest::decode(bytes) else { return };
            let Ok((req, timeout)) = baton_server::service::crdt::request(req) else { return };
            replica.request(1, req, timeout.as_millis() as u64);
        }
        _ => {
            let _ = Context::from_bytes(bytes);
            let _ = decode_state(bytes);
            return;
        }
    }
    replica.tick();
    let _ = replica.take_write();
    replica.written();
    let _ = replica.drain_outputs().count();
}

fn generate(src: &mut Source) -> Vec<u8> {
    let kind = src.below(u64::from(TYPES)) as u8;
    let kinds = Kind::ALL;
    let k = kinds[src.index(kinds.len())];
    let name = src.name();
    let op = match src.below(6) {
        0 => Op::Add(src.below(100)),
        1 => Op::Subtract(src.below(100)),
        2 => Op::Insert(src.name()),
        3 => Op::Remove(src.name()),
        4 => Op::Transfer { to: src.below(4), n: src.below(10) },
        _ => Op::Write(if src.bool() { Some(src.bytes(16)) } else { None }),
    };
    let encoding = match kind {
        0 => {
            // Mostly well-formed states made by real updates, so that merges are reached.
            let mut obj = k.empty();
            let delta = obj.update(&name, 2, op, Hlc { physical_ms: src.below(1000), logical: 0 }).unwrap_or(obj);
            let key = Key { kind: if src.below(8) == 0 { kinds[src.index(kinds.len())] } else { k }, name };
            let msg = match src.below(5) {
                0 => Gossip::Deltas(vec![Delta { key, base: src.below(3), deps: Context::new(), state: delta }]),
                1 => Gossip::States(vec![(key, delta)]),
                2 => Gossip::Digest((0..256).map(|_| src.below(3)).collect()),
                3 => Gossip::Probe { id: src.u64(), keys: vec![key] },
                _ => Gossip::WantRights { key, n: src.below(10) },
            };
            msg.encode()
        }
        1 => {
            use pb::crdt_request::Op as P;
            let op = match src.below(7) {
                0 => P::Add(src.below(10)),
                1 => P::Subtract(src.below(10)),
                2 => P::Insert(src.name()),
                3 => P::Remove(src.name()),
                4 => P::Write(src.bytes(16)),
                5 => P::Clear(true),
                _ => P::Read(src.below(4) as i32),
            };
            pb::CrdtRequest {
                kind: src.below(9) as i32,
                name,
                op: Some(op),
                token: if src.bool() { Vec::new() } else { src.bytes(24) },
                timeout_ms: src.below(100),
            }
            .encode_to_vec()
        }
        _ => {
            let mut ctx = Context::new();
            ctx.insert_upto(src.below(4), src.below(9));
            ctx.to_bytes()
        }
    };
    tagged(kind, encoding)
}
