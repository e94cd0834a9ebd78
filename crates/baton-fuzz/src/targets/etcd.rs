//! `etcd-request`: etcd's KV requests (prost) through what the KV service does before
//! proposing: the size check (`etcd::check_size`), the conversion (`etcd::convert`), the quota
//! cost (`etcd::quota_cost`); then applied to the keyspace's state machine as the write
//! (`Command::Etcd`), or served as a range, as the node would. The other etcd services
//! (lease, lock, election, watch, maintenance) take plain integers and byte strings that they
//! copy into a command or a read without a conversion of their own.

use baton_core::etcd::{EtcdCommand, TxnRequest};
use baton_core::topology::ETCD_GROUP;
use baton_core::{Command, Entry, Limits, StateMachine};
use baton_proto::etcd::etcdserverpb as pb;
use baton_server::etcd::{check_size, convert, quota_cost};
use prost::Message as _;

use super::{split, tagged};
use crate::{gen, Source, Target};

/// The target.
pub const TARGET: Target = Target {
    name: "etcd-request",
    about: "etcd KV requests (prost) through etcd::{check_size, convert, quota_cost}, then applied",
    run,
    generate,
};

fn run(input: &[u8]) {
    let (kind, bytes) = split(input, 5);
    let command = match kind {
        // A range is served as a transaction of one range (what the keyspace reads with).
        0 => decode(bytes, |r: pb::RangeRequest| {
            let range = baton_core::etcd::Op::Range(convert::range_in(r));
            EtcdCommand::Txn(TxnRequest { compare: Vec::new(), success: vec![range], failure: Vec::new() })
        }),
        1 => decode(bytes, |r: pb::PutRequest| EtcdCommand::Put(convert::put_in(r))),
        2 => decode(bytes, |r: pb::DeleteRangeRequest| EtcdCommand::Delete(convert::delete_in(r))),
        3 => decode(bytes, |r: pb::TxnRequest| EtcdCommand::Txn(convert::txn_in(r))),
        _ => decode(bytes, |r: pb::CompactionRequest| EtcdCommand::Compact(r.revision)),
    };
    let Some(command) = command else { return };
    let _ = quota_cost(&command);
    let mut sm = StateMachine::for_etcd(Limits::default(), ETCD_GROUP);
    let mut events = Vec::new();
    let seed = EtcdCommand::Put(baton_core::etcd::PutRequest { key: b"k1".to_vec(), ..Default::default() });
    for (index, command) in [seed, command].into_iter().enumerate() {
        let entry = Entry::new(1, 1, Command::Etcd(command));
        let _ = sm.apply(index as u64 + 1, &entry, &mut events);
    }
}

/// Decodes an etcd request and checks its size, as the KV service does.
fn decode<M: prost::Message + Default>(bytes: &[u8], convert: impl FnOnce(M) -> EtcdCommand) -> Option<EtcdCommand> {
    let r = M::decode(bytes).ok()?;
    check_size(r.encoded_len()).ok()?;
    Some(convert(r))
}

fn generate(src: &mut Source) -> Vec<u8> {
    use pb::request_op::Request;
    // Built directly in etcd's types (not converted from the keyspace's), fields at the edges.
    let put = |src: &mut Source| pb::PutRequest {
        key: gen::key(src),
        value: src.bytes(8),
        lease: src.i64(),
        prev_kv: src.bool(),
        ignore_value: src.below(4) == 0,
        ignore_lease: src.below(4) == 0,
    };
    let range = |src: &mut Source| pb::RangeRequest {
        key: gen::key(src),
        range_end: gen::key(src),
        limit: src.i64(),
        revision: src.i64(),
        sort_order: src.below(4) as i32,
        sort_target: src.below(6) as i32,
        count_only: src.below(4) == 0,
        min_mod_revision: src.i64(),
        max_create_revision: src.i64(),
        ..Default::default()
    };
    let delete =
        |src: &mut Source| pb::DeleteRangeRequest { key: gen::key(src), range_end: gen::key(src), prev_kv: true };
    match src.below(5) {
        0 => tagged(0, range(src).encode_to_vec()),
        1 => tagged(1, put(src).encode_to_vec()),
        2 => tagged(2, delete(src).encode_to_vec()),
        3 => {
            // Nested as deep as the source says (prost refuses past its recursion limit).
            let mut txn = pb::TxnRequest::default();
            for _ in 0..1 + src.below(4) {
                let op = |src: &mut Source| pb::RequestOp {
                    request: match src.below(4) {
                        0 => Some(Request::RequestRange(range(src))),
                        1 => Some(Request::RequestPut(put(src))),
                        2 => Some(Request::RequestDeleteRange(delete(src))),
                        _ => None,
                    },
                };
                txn.success.push(op(src));
                txn.failure.push(op(src));
                let compare = pb::Compare {
                    result: src.below(5) as i32,
                    target: src.below(6) as i32,
                    key: b"k1".to_vec(),
                    range_end: Vec::new(),
                    target_union: Some(pb::compare::TargetUnion::Version(src.i64())),
                };
                txn.compare.push(compare);
                if src.below(3) == 0 {
                    txn = pb::TxnRequest {
                        success: vec![pb::RequestOp { request: Some(Request::RequestTxn(txn)) }],
                        ..Default::default()
                    };
                }
            }
            tagged(3, txn.encode_to_vec())
        }
        _ => tagged(4, pb::CompactionRequest { revision: src.i64(), physical: src.bool() }.encode_to_vec()),
    }
}
