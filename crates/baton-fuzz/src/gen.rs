//! Builders of structured values from a [`Source`]: every variant of Baton's commands, etcd
//! requests and Raft messages, with field values biased toward the edges.
//!
//! Builders take what makes a value *meaningful* as arguments (the sessions opened so far) so
//! that sequences of commands reach deep states instead of being refused at once.

use baton_core::etcd::{
    Alarm, Compare, CompareResult, CompareTarget, DeleteRequest, EtcdCommand, Op, PutRequest, RangeRequest, SortOrder,
    SortTarget, TxnRequest,
};
use baton_core::{AcquireRequest, Command, Kind, Mode};
use protobuf::ProtobufEnum as _;
use raft::eraftpb::{Entry, EntryType, Message, MessageType, Snapshot};

use crate::Source;

/// Deepest transaction nesting built (what etcd's gRPC decoding allows is about 50).
const TXN_DEPTH: usize = 3;

/// A session id: one of `sessions` (most often), or any number.
pub fn session(src: &mut Source, sessions: &[u64]) -> u64 {
    if !sessions.is_empty() && src.below(4) != 0 {
        sessions[src.index(sessions.len())]
    } else {
        src.u64()
    }
}

/// A resource kind with a mode that may or may not suit it.
pub fn kind_and_mode(src: &mut Source) -> (Kind, Mode) {
    let kind = match src.below(6) {
        0 => Kind::Mutex,
        1 => Kind::RwLock,
        2 => Kind::Semaphore { capacity: src.u32() },
        3 => Kind::Election,
        4 => Kind::Barrier { parties: src.u32() },
        _ => Kind::Latch,
    };
    let mode = match src.below(3) {
        0 => Mode::Exclusive,
        1 => Mode::Shared,
        _ => Mode::Permits(src.u32()),
    };
    (kind, mode)
}

/// A client id: any, or one of users "a" and "b" (as the server makes them with
/// authentication on).
fn client(src: &mut Source) -> String {
    match src.below(4) {
        0 | 1 => "a\u{1f}c".to_string(),
        2 => "b\u{1f}c".to_string(),
        _ => src.name(),
    }
}

/// A fencing token: mostly a small one (tokens count from 1 per name), else anything.
fn token(src: &mut Source) -> u64 {
    if src.below(4) == 0 {
        src.u64()
    } else {
        src.below(8)
    }
}

/// A session TTL: mostly a valid one (so that sessions open), else anything.
fn ttl(src: &mut Source) -> u64 {
    if src.below(4) == 0 {
        src.u64()
    } else {
        10_000
    }
}

/// Any [`Command`] but a take-over (whose bundle only a hand-off makes).
pub fn command(src: &mut Source, sessions: &[u64]) -> Command {
    let name = src.name();
    match src.below(24) {
        0 | 1 => Command::OpenSession { client: client(src), ttl_ms: ttl(src), request_id: src.below(4) },
        2 => Command::AttachSession { session: session(src, sessions), client: client(src), ttl_ms: ttl(src) },
        3 => Command::HandOff { move_id: src.u64(), start: src.u64() as u16, end: src.u64() as u16, to: src.u64() },
        4 => Command::BeginMove { start: src.u64() as u16, end: src.u64() as u16, to: src.u64() },
        5 => Command::FinishMove { move_id: src.u64() },
        6 => Command::AddNode { id: src.u64(), peer_addr: src.name(), client_addr: src.name() },
        7 => Command::RemoveNode { id: src.u64() },
        8 => Command::CloseSession { session: session(src, sessions) },
        9 => {
            let expired = (0..src.below(4)).map(|_| session(src, sessions)).collect();
            Command::ExpireSessions { sessions: expired, as_of: src.u64() }
        }
        10..=13 => {
            // Half plain mutexes with sane times (so that grants, waits and releases happen),
            // half anything.
            let plain = src.bool();
            let (kind, mode) = if plain { (Kind::Mutex, Mode::Exclusive) } else { kind_and_mode(src) };
            let wait_ms = match src.below(3) {
                0 => None,
                1 if plain => Some(src.below(60_000)),
                _ => Some(src.u64()),
            };
            Command::Acquire(AcquireRequest {
                name,
                session: session(src, sessions),
                request_id: src.below(6),
                wait_ms,
                lock_delay_ms: if plain { src.below(2) * 1_000 } else { src.u64() },
                kind,
                mode,
                value: src.bytes(8),
            })
        }
        // Tokens count from 1 per name: small ones meet real holders.
        14 => Command::Release { name, session: session(src, sessions), token: token(src) },
        15 => Command::Cancel { name, session: session(src, sessions), request_id: src.below(6) },
        16 => Command::Tick,
        17 => Command::Proclaim { name, session: session(src, sessions), token: token(src), value: src.bytes(8) },
        18 => Command::LatchSet { name, count: src.u64() },
        19 => Command::LatchCountDown { name },
        20 => Command::CounterAdd { name, delta: src.i64() },
        21 => Command::CounterCas { name, expected: src.i64(), new: src.i64() },
        22 => Command::RegisterSet {
            name,
            value: if src.bool() { Some(src.bytes(8)) } else { None },
            expected_version: if src.bool() { Some(src.u64()) } else { None },
        },
        _ => Command::Etcd(etcd_command(src)),
    }
}

/// A key from a small set (so that writes meet), or any bytes.
pub fn key(src: &mut Source) -> Vec<u8> {
    match src.below(8) {
        0 => Vec::new(),
        1 => vec![0],
        2 => src.bytes(6),
        k => vec![b'k', b'0' + k as u8],
    }
}

/// A range request of any shape.
pub fn range(src: &mut Source) -> RangeRequest {
    let sort_order = [SortOrder::None, SortOrder::Ascend, SortOrder::Descend][src.index(3)];
    let targets = [SortTarget::Key, SortTarget::Version, SortTarget::Create, SortTarget::Mod, SortTarget::Value];
    RangeRequest {
        key: key(src),
        range_end: key(src),
        limit: src.i64(),
        revision: src.i64(),
        sort_order,
        sort_target: targets[src.index(targets.len())],
        serializable: src.bool(),
        keys_only: src.bool(),
        count_only: src.bool(),
        min_mod_revision: src.i64(),
        max_mod_revision: src.i64(),
        min_create_revision: src.i64(),
        max_create_revision: src.i64(),
    }
}

/// A put of any shape.
pub fn put(src: &mut Source) -> PutRequest {
    PutRequest {
        key: key(src),
        value: src.bytes(8),
        lease: if src.bool() { 0 } else { src.i64() },
        prev_kv: src.bool(),
        ignore_value: src.below(4) == 0,
        ignore_lease: src.below(4) == 0,
    }
}

/// A range delete of any shape.
pub fn delete(src: &mut Source) -> DeleteRequest {
    DeleteRequest { key: key(src), range_end: key(src), prev_kv: src.bool() }
}

/// A transaction, nested at most `depth` more levels.
pub fn txn(src: &mut Source, depth: usize) -> TxnRequest {
    let compare = (0..src.below(3))
        .map(|_| {
            let results = [CompareResult::Equal, CompareResult::Greater, CompareResult::Less, CompareResult::NotEqual];
            let target = match src.below(5) {
                0 => CompareTarget::Version(src.i64()),
                1 => CompareTarget::Create(src.i64()),
                2 => CompareTarget::Mod(src.i64()),
                3 => CompareTarget::Value(src.bytes(4)),
                _ => CompareTarget::Lease(src.i64()),
            };
            Compare { result: results[src.index(4)], target, key: key(src), range_end: key(src) }
        })
        .collect();
    let ops = |src: &mut Source| -> Vec<Op> {
        (0..src.below(4))
            .map(|_| match src.below(if depth == 0 { 4 } else { 5 }) {
                0 => Op::Range(range(src)),
                1 => Op::Put(put(src)),
                2 => Op::Delete(delete(src)),
                3 => Op::Empty,
                _ => Op::Txn(txn(src, depth - 1)),
            })
            .collect()
    };
    let success = ops(src);
    let failure = ops(src);
    TxnRequest { compare, success, failure }
}

/// Any write to the etcd keyspace.
pub fn etcd_command(src: &mut Source) -> EtcdCommand {
    match src.below(8) {
        0 | 1 => EtcdCommand::Put(put(src)),
        2 => EtcdCommand::Delete(delete(src)),
        3 => EtcdCommand::Txn(txn(src, TXN_DEPTH)),
        4 => EtcdCommand::Compact(src.i64()),
        5 => EtcdCommand::LeaseGrant { id: src.i64(), ttl_s: src.i64() },
        6 => EtcdCommand::LeaseRevoke(src.i64()),
        _ => EtcdCommand::Alarm {
            activate: src.bool(),
            member: src.u64(),
            alarm: if src.bool() { Alarm::NoSpace } else { Alarm::Corrupt },
        },
    }
}

/// A Raft log entry of any type, index and term (its data valid or not).
pub fn raft_entry(src: &mut Source, index: u64, term: u64) -> Entry {
    let types = [EntryType::EntryNormal, EntryType::EntryConfChange, EntryType::EntryConfChangeV2];
    let mut e = Entry::default();
    let kinds = if src.below(8) == 0 { 3 } else { 1 };
    e.set_entry_type(types[src.index(kinds)]);
    e.index = index;
    e.term = term;
    e.data = src.bytes(16).into();
    e
}

/// A Raft message from node `from` to node `to` of any type, with fields near `last` (the
/// receiver's last log index) and `term` (its term), so that many are plausible and some are
/// just out of line: commits beyond the log, entries out of order, snapshots behind the log.
pub fn raft_message(src: &mut Source, from: u64, to: u64, last: u64, term: u64) -> Message {
    let near = |src: &mut Source, x: u64| match src.below(6) {
        0 => src.u64(),
        1 => x.saturating_sub(src.below(3)),
        _ => x.saturating_add(src.below(3)),
    };
    let mut m = Message::default();
    m.set_msg_type(MessageType::from_i32(src.below(20) as i32).unwrap_or(MessageType::MsgAppend));
    m.from = from;
    m.to = to;
    m.term = near(src, term);
    m.log_term = near(src, term);
    m.index = near(src, last);
    m.commit = near(src, last);
    m.commit_term = near(src, term);
    m.reject = src.below(4) == 0;
    m.reject_hint = near(src, last);
    // Rarely set: a correct Baton node never sets either.
    m.request_snapshot = if src.below(8) == 0 { near(src, last) } else { 0 };
    m.priority = if src.below(8) == 0 { src.i64() } else { 0 };
    let mut index = m.index;
    for _ in 0..src.below(4) {
        index = if src.below(4) == 0 { near(src, index) } else { index.saturating_add(1) };
        let entry_term = near(src, term);
        m.entries.push(raft_entry(src, index, entry_term));
    }
    if m.get_msg_type() == MessageType::MsgSnapshot || src.below(8) == 0 {
        let mut snap = Snapshot { data: src.bytes(32).into(), ..Default::default() };
        let meta = snap.mut_metadata();
        meta.index = near(src, last);
        meta.term = near(src, term);
        let voters = (0..src.below(4)).map(|_| 1 + src.below(4)).collect();
        meta.mut_conf_state().voters = voters;
        m.set_snapshot(snap);
    }
    if src.below(8) == 0 {
        m.context = src.bytes(32).into();
    }
    m
}

/// The bincode of an etcd call (`baton_server::etcd::EtcdCall`), a write that nests `depth` transactions, each the one operation of its
/// parent's success branch, written as bytes: building the value would recurse as deep.
pub fn deep_etcd_call(depth: usize) -> Vec<u8> {
    let u32_le = |v: u32| v.to_le_bytes();
    let len = |v: u64| v.to_le_bytes();
    // EtcdCall::Write, EtcdCommand::Txn.
    let mut out: Vec<u8> = [u32_le(0), u32_le(2)].concat();
    for _ in 0..depth {
        // compare: [], success: [Op::Txn(...)]
        out.extend(len(0));
        out.extend(len(1));
        out.extend(u32_le(3));
    }
    // The innermost: no compare, success or failure; then every level's empty failure.
    out.extend([len(0), len(0), len(0)].concat());
    for _ in 0..depth {
        out.extend(len(0));
    }
    out
}
