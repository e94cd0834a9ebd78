//! `forward`: calls one node forwards to another over the peer port, both ways
//! (`baton_server::forward`): a `ForwardRequest` through `forward::check` (the member check,
//! then bincode of a slot move's step, or of an etcd call by `etcd::decode_call`); a
//! `ForwardResponse` through `forward::decode` (a step's outcome); an etcd call's answer
//! through `etcd::decode_answer`.

use baton_core::{Command, Entry, Outcome};
use baton_proto::peer::{ForwardRequest, ForwardResponse};
use baton_server::etcd::{decode_answer, quota_cost, EtcdAnswer, EtcdCall, EtcdFailure};
use baton_server::forward::{self, Forwarded};
use prost::Message as _;

use super::{split, tagged};
use crate::{gen, Source, Target};

/// The target.
pub const TARGET: Target = Target {
    name: "forward",
    about: "forwarded calls and answers (prost + bincode) through forward::{check, decode}, etcd::decode_answer",
    run,
    generate,
};

/// This node and the cluster's members.
const ME: u64 = 1;
const MEMBERS: [u64; 3] = [1, 2, 3];

fn run(input: &[u8]) {
    match split(input, 3) {
        (0, bytes) => {
            let Ok(req) = ForwardRequest::decode(bytes) else { return };
            match forward::check(&req, ME, &MEMBERS) {
                Ok(Forwarded::Command(c)) => {
                    assert!(matches!(c, Command::HandOff { .. } | Command::TakeOver { .. }), "check let {c:?} through");
                }
                Ok(Forwarded::Etcd(EtcdCall::Write(c))) => {
                    let _ = quota_cost(&c);
                }
                Ok(Forwarded::Etcd(_)) | Err(_) => {}
            }
        }
        (1, bytes) => {
            if let Ok(r) = ForwardResponse::decode(bytes) {
                let _ = forward::decode(r);
            }
        }
        (_, bytes) => {
            let _ = decode_answer(bytes);
        }
    }
}

/// What applying `command` to a fresh group's state machine gives (a real outcome to encode).
fn outcome_of(src: &mut Source, command: Command) -> Result<Outcome, baton_core::Error> {
    let mut sm = super::commands::state_from(src);
    let index = sm.applied_index() + 1;
    sm.apply(index, &Entry::new(0, 0, command), &mut Vec::new())
}

/// A take-over of what a group holding a few locks hands off (bundles are only made that way).
fn take_over(src: &mut Source) -> Command {
    let mut sm = baton_core::StateMachine::new(baton_core::Limits::default());
    let mut apply = |index: u64, command: Command| sm.apply(index, &Entry::new(index, index, command), &mut Vec::new());
    let _ = apply(1, Command::OpenSession { client: "c".into(), ttl_ms: 10_000, request_id: 0 });
    for (i, name) in ["a", "b", "lock/x"].into_iter().enumerate() {
        let _ = apply(2 + i as u64, Command::Acquire(baton_core::AcquireRequest::exclusive(name, 1, i as u64, None)));
    }
    let end = src.below(u64::from(baton_core::SLOTS)) as u16;
    match apply(9, Command::HandOff { move_id: 1, start: 0, end, to: 2 }) {
        Ok(Outcome::HandedOff { bundle }) => Command::TakeOver { bundle },
        _ => Command::Tick,
    }
}

fn etcd_call(src: &mut Source) -> EtcdCall {
    match src.below(5) {
        0 | 1 => EtcdCall::Write(gen::etcd_command(src)),
        2 => EtcdCall::Range(gen::range(src)),
        3 => {
            EtcdCall::Lease { ids: (0..src.below(3)).map(|_| src.i64()).collect(), renew: src.bool(), keys: src.bool() }
        }
        _ => [EtcdCall::Leases, EtcdCall::Alarms][src.index(2)].clone(),
    }
}

fn generate(src: &mut Source) -> Vec<u8> {
    match src.below(3) {
        0 => {
            let mut req = ForwardRequest { from: 1 + src.below(3), group: src.below(3), ..Default::default() };
            if src.below(16) == 0 {
                req.group = baton_core::topology::ETCD_GROUP;
                req.etcd = gen::deep_etcd_call(src.below(100_000) as usize);
            } else if src.bool() {
                req.group = baton_core::topology::ETCD_GROUP;
                req.etcd = encode(&etcd_call(src));
            } else {
                let command = match src.below(3) {
                    0 => take_over(src),
                    _ => gen::command(src, &[1]),
                };
                req.command = encode(&command);
            }
            tagged(0, req.encode_to_vec())
        }
        1 => {
            let command = gen::command(src, &[1]);
            let outcome = outcome_of(src, command).unwrap_or(Outcome::Ticked);
            let r = ForwardResponse { outcome: encode(&outcome), not_leader: src.below(4) == 0, ..Default::default() };
            tagged(1, r.encode_to_vec())
        }
        _ => {
            let command = Command::Etcd(gen::etcd_command(src));
            let answer: Result<EtcdAnswer, EtcdFailure> = match outcome_of(&mut Source::new(&[0]), command) {
                Ok(Outcome::Etcd(o)) => Ok(EtcdAnswer::Written(o)),
                _ => Err(EtcdFailure { code: src.i64() as i32, message: src.name() }),
            };
            tagged(2, encode(&answer))
        }
    }
}

/// bincode of a value (every type here serialises).
fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    bincode::serialize(value).unwrap_or_default()
}
