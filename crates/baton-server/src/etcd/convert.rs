//! Translation between etcd's protobuf messages and the keyspace's own types
//! ([`baton_core::etcd`]): requests in (with the checks etcd makes on their shape before
//! anything else), responses out (the caller fills the header).
//!
//! An enum value etcd does not define (a newer client's) reads as the default, as etcd 3.5
//! does for sort options; a `RequestOp` with no request in it becomes [`core::Op::Empty`],
//! which the keyspace refuses with etcd's "key not found" at its place in etcd's order of
//! checks.

use baton_core::etcd as core;
use baton_proto::etcd::etcdserverpb as pb;
use baton_proto::etcd::mvccpb;

/// etcd's `RangeRequest` as the keyspace's.
pub fn range_in(r: pb::RangeRequest) -> core::RangeRequest {
    use pb::range_request::{SortOrder as O, SortTarget as T};
    core::RangeRequest {
        sort_order: match O::try_from(r.sort_order) {
            Ok(O::Ascend) => core::SortOrder::Ascend,
            Ok(O::Descend) => core::SortOrder::Descend,
            _ => core::SortOrder::None,
        },
        sort_target: match T::try_from(r.sort_target) {
            Ok(T::Version) => core::SortTarget::Version,
            Ok(T::Create) => core::SortTarget::Create,
            Ok(T::Mod) => core::SortTarget::Mod,
            Ok(T::Value) => core::SortTarget::Value,
            _ => core::SortTarget::Key,
        },
        key: r.key,
        range_end: r.range_end,
        limit: r.limit,
        revision: r.revision,
        serializable: r.serializable,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    }
}

/// etcd's `PutRequest` as the keyspace's.
pub fn put_in(r: pb::PutRequest) -> core::PutRequest {
    core::PutRequest {
        key: r.key,
        value: r.value,
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    }
}

/// etcd's `DeleteRangeRequest` as the keyspace's.
pub fn delete_in(r: pb::DeleteRangeRequest) -> core::DeleteRequest {
    core::DeleteRequest { key: r.key, range_end: r.range_end, prev_kv: r.prev_kv }
}

/// etcd's `TxnRequest` as the keyspace's.
pub fn txn_in(r: pb::TxnRequest) -> core::TxnRequest {
    let ops = |ops: Vec<pb::RequestOp>| -> Vec<core::Op> {
        ops.into_iter()
            .map(|op| {
                use pb::request_op::Request;
                match op.request {
                    Some(Request::RequestRange(r)) => core::Op::Range(range_in(r)),
                    Some(Request::RequestPut(r)) => core::Op::Put(put_in(r)),
                    Some(Request::RequestDeleteRange(r)) => core::Op::Delete(delete_in(r)),
                    Some(Request::RequestTxn(t)) => core::Op::Txn(txn_in(t)),
                    None => core::Op::Empty,
                }
            })
            .collect()
    };
    core::TxnRequest {
        compare: r.compare.into_iter().map(compare_in).collect(),
        success: ops(r.success),
        failure: ops(r.failure),
    }
}

/// etcd reads a compare's operand from the union field that matches its target; any other
/// field (or none) is a zero operand.
fn compare_in(c: pb::Compare) -> core::Compare {
    use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let result = match R::try_from(c.result) {
        Ok(R::Greater) => core::CompareResult::Greater,
        Ok(R::Less) => core::CompareResult::Less,
        Ok(R::NotEqual) => core::CompareResult::NotEqual,
        _ => core::CompareResult::Equal,
    };
    let int = |want: fn(&U) -> Option<i64>| c.target_union.as_ref().and_then(want).unwrap_or(0);
    let target = match T::try_from(c.target) {
        Ok(T::Create) => {
            core::CompareTarget::Create(int(|u| if let U::CreateRevision(v) = u { Some(*v) } else { None }))
        }
        Ok(T::Mod) => core::CompareTarget::Mod(int(|u| if let U::ModRevision(v) = u { Some(*v) } else { None })),
        Ok(T::Lease) => core::CompareTarget::Lease(int(|u| if let U::Lease(v) = u { Some(*v) } else { None })),
        Ok(T::Value) => core::CompareTarget::Value(match &c.target_union {
            Some(U::Value(v)) => v.clone(),
            _ => Vec::new(),
        }),
        _ => core::CompareTarget::Version(int(|u| if let U::Version(v) = u { Some(*v) } else { None })),
    };
    core::Compare { result, target, key: c.key, range_end: c.range_end }
}

/// A key as etcd sends it.
pub fn kv_out(kv: core::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// A header with only the revision set (etcd's sub-responses inside a transaction; the
/// server fills the outer one).
fn revision_header(revision: i64) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader { revision, ..Default::default() })
}

/// A range's answer; `revision` goes in its header.
pub fn range_out(r: core::RangeResponse, revision: i64) -> pb::RangeResponse {
    pb::RangeResponse {
        header: revision_header(revision),
        kvs: r.kvs.into_iter().map(kv_out).collect(),
        more: r.more,
        count: r.count,
    }
}

/// A put's answer.
pub fn put_out(r: core::PutResponse, revision: i64) -> pb::PutResponse {
    pb::PutResponse { header: revision_header(revision), prev_kv: r.prev_kv.map(kv_out) }
}

/// A delete's answer.
pub fn delete_out(r: core::DeleteResponse, revision: i64) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header: revision_header(revision),
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(kv_out).collect(),
    }
}

/// A transaction's answer, `revision` in its header. Each operation's header carries the
/// revision the keyspace reported for it (etcd's rule: see [`core::TxnResponse::revisions`]);
/// a nested transaction's is zero, as etcd leaves it.
pub fn txn_out(r: core::TxnResponse, revision: i64) -> pb::TxnResponse {
    use pb::response_op::Response;
    let responses = r
        .responses
        .into_iter()
        .zip(r.revisions)
        .map(|(op, rev)| pb::ResponseOp {
            response: Some(match op {
                core::OpResponse::Range(r) => Response::ResponseRange(range_out(r, rev)),
                core::OpResponse::Put(r) => Response::ResponsePut(put_out(r, rev)),
                core::OpResponse::Delete(r) => Response::ResponseDeleteRange(delete_out(r, rev)),
                core::OpResponse::Txn(t) => Response::ResponseTxn(txn_out(t, rev)),
            }),
        })
        .collect();
    pb::TxnResponse { header: revision_header(revision), succeeded: r.succeeded, responses }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_round_trips_with_etcd_operand_rules() {
        use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
        let req = pb::TxnRequest {
            compare: vec![
                pb::Compare {
                    result: R::Less as i32,
                    target: T::Mod as i32,
                    key: b"k".to_vec(),
                    target_union: Some(U::ModRevision(7)),
                    ..Default::default()
                },
                // A union field that does not match the target is a zero operand.
                pb::Compare {
                    result: R::Equal as i32,
                    target: T::Create as i32,
                    key: b"k".to_vec(),
                    target_union: Some(U::Version(3)),
                    ..Default::default()
                },
            ],
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    prev_kv: true,
                    ..Default::default()
                })),
            }],
            failure: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                    key: b"k".to_vec(),
                    sort_order: 2,
                    sort_target: 99,
                    ..Default::default()
                })),
            }],
        };
        let t = txn_in(req);
        assert_eq!(t.compare[0].target, core::CompareTarget::Mod(7));
        assert_eq!(t.compare[0].result, core::CompareResult::Less);
        assert_eq!(t.compare[1].target, core::CompareTarget::Create(0));
        match &t.failure[0] {
            core::Op::Range(r) => {
                assert_eq!((r.sort_order, r.sort_target), (core::SortOrder::Descend, core::SortTarget::Key))
            }
            other => panic!("{other:?}"),
        }
        // Applied, and back out: sub-responses carry the revision, a nested header stays zero.
        let mut store = core::EtcdStore::default();
        let response = store.txn(&t).unwrap();
        let out = txn_out(response, store.revision());
        assert!(out.succeeded);
        match &out.responses[0].response {
            Some(pb::response_op::Response::ResponsePut(p)) => {
                assert_eq!(p.header.as_ref().unwrap().revision, 2);
                assert!(p.prev_kv.is_none());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_operation_without_a_request_is_refused_in_etcds_order() {
        let mut store = core::EtcdStore::default();
        let empty = || pb::RequestOp { request: None };
        let req = pb::TxnRequest { success: vec![empty()], ..Default::default() };
        assert_eq!(store.txn(&txn_in(req)).unwrap_err().to_string(), "etcdserver: key not found");
        // Too many operations is reported first, as etcd checks the count before the operations.
        let put = || pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: b"k".to_vec(),
                ..Default::default()
            })),
        };
        let req =
            pb::TxnRequest { success: (0..129).map(|_| put()).collect(), failure: vec![empty()], ..Default::default() };
        assert_eq!(store.txn(&txn_in(req)), Err(core::EtcdError::TooManyOps));
        assert_eq!(store.revision(), 1, "nothing applied");
    }

    #[test]
    fn sub_responses_carry_etcds_revisions() {
        // put a (2), then [range a, delete zz (nothing), put b]: range and delete report the
        // start revision 2, the put 3.
        let mut store = core::EtcdStore::default();
        store.put(&core::PutRequest { key: b"a".to_vec(), ..Default::default() }).unwrap();
        use pb::request_op::Request;
        let op = |r| pb::RequestOp { request: Some(r) };
        let req = pb::TxnRequest {
            success: vec![
                op(Request::RequestRange(pb::RangeRequest { key: b"a".to_vec(), ..Default::default() })),
                op(Request::RequestDeleteRange(pb::DeleteRangeRequest { key: b"zz".to_vec(), ..Default::default() })),
                op(Request::RequestPut(pb::PutRequest { key: b"b".to_vec(), ..Default::default() })),
                op(Request::RequestTxn(pb::TxnRequest::default())),
            ],
            ..Default::default()
        };
        let r = store.txn(&txn_in(req)).unwrap();
        let out = txn_out(r, store.revision());
        let revisions: Vec<i64> = out
            .responses
            .iter()
            .map(|op| match op.response.as_ref().unwrap() {
                pb::response_op::Response::ResponseRange(r) => r.header.as_ref().unwrap().revision,
                pb::response_op::Response::ResponseDeleteRange(r) => r.header.as_ref().unwrap().revision,
                pb::response_op::Response::ResponsePut(r) => r.header.as_ref().unwrap().revision,
                pb::response_op::Response::ResponseTxn(r) => r.header.as_ref().unwrap().revision,
            })
            .collect();
        assert_eq!(revisions, vec![2, 2, 3, 0]);
        assert_eq!(out.header.unwrap().revision, 3);
    }
}
