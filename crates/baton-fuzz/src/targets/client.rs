//! `client-api`: every request of the client service (`baton.v1.Baton`), prost-decoded and
//! checked by `baton_server::service::requests`, the synchronous part of each gRPC handler;
//! what a request becomes is then applied to a state machine, as the node would once the
//! group committed it.

use baton_core::{Command, Entry, Limits, StateMachine};
use baton_proto::v1 as pb;
use baton_server::service::requests::{self, Asked};
use prost::Message;

use super::{split, tagged};
use crate::{Source, Target};

/// The target.
pub const TARGET: Target = Target {
    name: "client-api",
    about: "client service requests (prost) through service::requests, then applied to a state machine",
    run,
    generate,
};

/// Message types, in tag order.
const TYPES: u8 = 17;

fn run(input: &[u8]) {
    let (kind, bytes) = split(input, TYPES);
    let _ = check(kind, bytes);
}

/// Decodes and checks one request of type `kind`; what it asks for, if accepted.
fn check(kind: u8, bytes: &[u8]) -> Option<Asked> {
    let write = |r: Result<(Option<u64>, Command), tonic::Status>| r.ok().map(|(_, c)| Asked::Write(c));
    match kind {
        0 => open(pb::OpenSessionRequest::decode(bytes).ok()?),
        1 => attach(&pb::AttachSessionRequest::decode(bytes).ok()?),
        2 => requests::close_session(&pb::CloseSessionRequest::decode(bytes).ok()?).ok().map(|(_, c)| Asked::Write(c)),
        3 => {
            requests::keep_alive(&pb::KeepAliveRequest::decode(bytes).ok()?).ok().map(|()| Asked::Write(Command::Tick))
        }
        4 => acquire(pb::AcquireRequest::decode(bytes).ok()?),
        5 => write(requests::release(pb::ReleaseRequest::decode(bytes).ok()?)),
        6 => write(requests::cancel(pb::CancelRequest::decode(bytes).ok()?)),
        7 => write(requests::proclaim(pb::ProclaimRequest::decode(bytes).ok()?)),
        8 => write(requests::latch(pb::LatchRequest::decode(bytes).ok()?)),
        9 => requests::counter(pb::CounterRequest::decode(bytes).ok()?).ok().map(|(_, a)| a),
        10 => requests::register(pb::RegisterRequest::decode(bytes).ok()?).ok().map(|(_, a)| a),
        11 => requests::watch(&pb::WatchRequest::decode(bytes).ok()?).ok().map(|()| Asked::Write(Command::Tick)),
        12 => requests::describe(pb::DescribeRequest::decode(bytes).ok()?).ok().map(|(_, q)| Asked::Read(q)),
        13 => requests::history(&pb::HistoryRequest::decode(bytes).ok()?).ok().map(|()| Asked::Write(Command::Tick)),
        14 => requests::move_slots(&pb::MoveSlotsRequest::decode(bytes).ok()?).ok().map(Asked::Write),
        15 => requests::add_node(pb::AddNodeRequest::decode(bytes).ok()?).ok().map(Asked::Write),
        _ => call(pb::CallRequest::decode(bytes).ok()?),
    }
    .inspect(apply)
}

fn open(req: pb::OpenSessionRequest) -> Option<Asked> {
    requests::open_session(req, None, |_| baton_node::DATA_GROUP).ok().map(|(_, c)| Asked::Write(c))
}

/// An attach as authentication on makes it: for a user.
fn attach(req: &pb::AttachSessionRequest) -> Option<Asked> {
    requests::attach_session(req, Some("fuzz")).ok().map(|(_, c)| Asked::Write(c))
}

fn acquire(req: pb::AcquireRequest) -> Option<Asked> {
    requests::acquire(req).ok().map(|(_, r)| Asked::Write(Command::Acquire(r)))
}

/// One call of a `Call` stream: the same checks as its unary request.
fn call(req: pb::CallRequest) -> Option<Asked> {
    use pb::call_request::Op;
    let write = |r: Result<(Option<u64>, Command), tonic::Status>| r.ok().map(|(_, c)| Asked::Write(c));
    match req.op? {
        Op::OpenSession(r) => open(r),
        Op::CloseSession(r) => requests::close_session(&r).ok().map(|(_, c)| Asked::Write(c)),
        Op::Acquire(r) => acquire(r),
        Op::Release(r) => write(requests::release(r)),
        Op::Cancel(r) => write(requests::cancel(r)),
        Op::Counter(r) => requests::counter(r).ok().map(|(_, a)| a),
        Op::KeepAlive(r) => requests::keep_alive(&r).ok().map(|()| Asked::Write(Command::Tick)),
        Op::AttachSession(r) => attach(&r),
        // Checked as the unary call (the `crdt` target feeds it to a replica).
        Op::Crdt(r) => baton_server::service::crdt::request(r).ok().map(|_| Asked::Write(Command::Tick)),
    }
}

/// An accepted write applied to a group's state machine that has one session open, as the
/// node applies a committed entry (a refusal is an answer, not a failure).
fn apply(asked: &Asked) {
    let Asked::Write(command) = asked else { return };
    let mut sm = StateMachine::new(Limits::default());
    let mut events = Vec::new();
    let open = Command::OpenSession { client: "c".into(), ttl_ms: 10_000, request_id: 0 };
    let _ = sm.apply(1, &Entry::new(1, 1, open), &mut events);
    let _ = sm.apply(2, &Entry::new(2, 2, command.clone()), &mut events);
}

fn generate(src: &mut Source) -> Vec<u8> {
    let kind = src.below(u64::from(TYPES)) as u8;
    let group = if src.bool() { 0 } else { src.u64() };
    let encoding = match kind {
        0 => pb::OpenSessionRequest { client_id: src.name(), ttl_ms: src.u64(), request_id: src.u64() }.encode_to_vec(),
        1 => pb::AttachSessionRequest {
            session_id: 1,
            client_id: src.name(),
            ttl_ms: src.u64(),
            group,
            session_proof: src.bytes(32),
        }
        .encode_to_vec(),
        2 => pb::CloseSessionRequest { session_id: src.u64(), group }.encode_to_vec(),
        3 => pb::KeepAliveRequest { session_ids: (0..src.below(8)).map(|_| src.u64()).collect() }.encode_to_vec(),
        4 => acquire_request(src, group).encode_to_vec(),
        5 => pb::ReleaseRequest { name: src.name(), session_id: 1, token: src.u64(), group }.encode_to_vec(),
        6 => pb::CancelRequest { name: src.name(), session_id: 1, request_id: src.u64(), group }.encode_to_vec(),
        7 => pb::ProclaimRequest { name: src.name(), session_id: 1, token: src.u64(), value: src.bytes(8), group }
            .encode_to_vec(),
        8 => {
            use pb::latch_request::Op;
            let op = [Some(Op::Set(src.u64())), Some(Op::CountDown(true)), None][src.index(3)];
            pb::LatchRequest { name: src.name(), op, group }.encode_to_vec()
        }
        9 => counter_request(src, group).encode_to_vec(),
        10 => {
            use pb::register_request::Op;
            let op = match src.below(4) {
                0 => Some(Op::Get(true)),
                1 => Some(Op::Set(src.bytes(8))),
                2 => Some(Op::Delete(true)),
                _ => None,
            };
            let if_version = if src.bool() { Some(src.u64()) } else { None };
            pb::RegisterRequest { name: src.name(), op, if_version, group }.encode_to_vec()
        }
        11 => pb::WatchRequest { name: src.name(), prefix: src.bool(), start_seq: src.u64(), ..Default::default() }
            .encode_to_vec(),
        12 => pb::DescribeRequest { name: src.name(), group }.encode_to_vec(),
        13 => pb::HistoryRequest { name: src.name(), limit: src.u32(), group }.encode_to_vec(),
        14 => pb::MoveSlotsRequest { start: src.u32(), end: src.u32(), to_group: group }.encode_to_vec(),
        15 => pb::AddNodeRequest { id: src.u64(), peer_addr: addr(src), client_addr: addr(src) }.encode_to_vec(),
        _ => {
            use pb::call_request::Op;
            let op = match src.below(3) {
                0 => Op::Acquire(acquire_request(src, group)),
                1 => Op::Counter(counter_request(src, group)),
                _ => Op::KeepAlive(pb::KeepAliveRequest { session_ids: vec![src.u64()] }),
            };
            pb::CallRequest { call_id: src.u64(), op: Some(op) }.encode_to_vec()
        }
    };
    tagged(kind, encoding)
}

fn acquire_request(src: &mut Source, group: u64) -> pb::AcquireRequest {
    pb::AcquireRequest {
        name: src.name(),
        session_id: 1,
        request_id: src.u64(),
        wait_ms: src.u64(),
        lock_delay_ms: src.u64(),
        kind: src.below(8) as i32,
        shared: src.bool(),
        permits: src.u32(),
        capacity: src.u32(),
        value: src.bytes(8),
        parties: src.u32(),
        group,
    }
}

fn counter_request(src: &mut Source, group: u64) -> pb::CounterRequest {
    use pb::counter_request::Op;
    let cas = pb::CounterCas { expected: src.i64(), new: src.i64() };
    let op = match src.below(4) {
        0 => Some(Op::Add(src.i64())),
        1 => Some(Op::Get(true)),
        2 => Some(Op::Cas(cas)),
        _ => None,
    };
    pb::CounterRequest { name: src.name(), op, group }
}

fn addr(src: &mut Source) -> String {
    ["127.0.0.1:7000", "[::1]:1", "host:1", ""][src.index(4)].to_string()
}
