//! Transactions: compares, then one branch of operations applied at one revision.
//!
//! A put or delete alone is a transaction of one operation. Everything that can refuse a
//! request is checked before the first change: the shape (operation count, duplicate keys) of
//! both branches, then each operation of the branch the compares chose (empty keys, leases,
//! `ignore_value` on a missing key, revisions of the ranges). Applying cannot fail after that.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::mvcc::{KeyRange, Mvcc};
use super::{
    DeleteRequest, DeleteResponse, EtcdError, PutRequest, PutResponse, RangeRequest, RangeResponse, Revision,
    MAX_TXN_OPS,
};

/// What a compare looks at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Version(i64),
    Create(Revision),
    Mod(Revision),
    Value(Vec<u8>),
    Lease(i64),
}

/// How a compare relates the key's field to the given one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    Equal,
    Greater,
    Less,
    NotEqual,
}

/// etcd's `Compare`: the field of the key (or of every key of the range) against a value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub result: CompareResult,
    pub target: CompareTarget,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

/// One operation of a transaction (etcd's `RequestOp`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Range(RangeRequest),
    Put(PutRequest),
    Delete(DeleteRequest),
    Txn(TxnRequest),
    /// An operation with no request in it: refused (etcd: "key not found"), at its place in
    /// the order of checks.
    Empty,
}

/// The answer to one operation (etcd's `ResponseOp`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResponse {
    Range(RangeResponse),
    Put(PutResponse),
    Delete(DeleteResponse),
    Txn(TxnResponse),
}

/// etcd's `TxnRequest`. Decoding refuses one nested deeper than [`MAX_TXN_DEPTH`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

/// etcd's `TxnResponse` (without the header). Decoding refuses one nested deeper than
/// [`MAX_TXN_DEPTH`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TxnResponse {
    pub succeeded: bool,
    pub responses: Vec<OpResponse>,
    /// The revision each response's header carries, as etcd reports it: the revision the
    /// transaction started from for a range or delete before its first write, the one it ends
    /// at after (and for every put), 0 for a nested transaction.
    pub revisions: Vec<Revision>,
}

/// Deepest nesting of transactions decoded (from a log entry, a snapshot, a forwarded call or
/// its answer). etcd's gRPC API cannot carry more than about 50 (prost's recursion limit is
/// 100 messages, two per level); bincode has no limit of its own, and a transaction nested
/// 100,000 deep (2 MB) overflowed the stack while decoding: an abort, found by fuzzing a
/// forwarded etcd call (`crates/baton-fuzz`).
pub const MAX_TXN_DEPTH: usize = 64;

thread_local! {
    /// Transactions being decoded on this thread, outermost first.
    static DECODING: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// One level of transaction decoding, counted while it lives.
struct Nested;

impl Nested {
    fn enter<E: serde::de::Error>() -> Result<Nested, E> {
        let depth = DECODING.with(|d| d.get()) + 1;
        if depth > MAX_TXN_DEPTH {
            return Err(E::custom(format!("transactions nested deeper than {MAX_TXN_DEPTH}")));
        }
        DECODING.with(|d| d.set(depth));
        Ok(Nested)
    }
}

impl Drop for Nested {
    fn drop(&mut self) {
        DECODING.with(|d| d.set(d.get() - 1));
    }
}

/// The derived decoding of [`TxnRequest`] and [`TxnResponse`], wrapped to count depth.
mod fields {
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(rename = "TxnRequest")]
    pub(super) struct Request {
        pub(super) compare: Vec<super::Compare>,
        pub(super) success: Vec<super::Op>,
        pub(super) failure: Vec<super::Op>,
    }

    #[derive(Deserialize)]
    #[serde(rename = "TxnResponse")]
    pub(super) struct Response {
        pub(super) succeeded: bool,
        pub(super) responses: Vec<super::OpResponse>,
        pub(super) revisions: Vec<super::Revision>,
    }
}

impl<'de> Deserialize<'de> for TxnRequest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let _level = Nested::enter()?;
        let fields::Request { compare, success, failure } = fields::Request::deserialize(d)?;
        Ok(TxnRequest { compare, success, failure })
    }
}

impl<'de> Deserialize<'de> for TxnResponse {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let _level = Nested::enter()?;
        let fields::Response { succeeded, responses, revisions } = fields::Response::deserialize(d)?;
        Ok(TxnResponse { succeeded, responses, revisions })
    }
}

/// The request's shape, as etcd's gRPC layer checks it: operation counts, keys given,
/// duplicate keys, in both branches and nested transactions.
pub(super) fn check(req: &TxnRequest) -> Result<(), EtcdError> {
    check_shape(req, MAX_TXN_OPS)?;
    for branch in [&req.success, &req.failure] {
        intervals(branch)?;
    }
    Ok(())
}

/// No list of a transaction longer than `budget`; a nested transaction's budget is what its
/// parent's longest list leaves.
fn check_shape(req: &TxnRequest, budget: usize) -> Result<(), EtcdError> {
    let longest = req.compare.len().max(req.success.len()).max(req.failure.len());
    if longest > budget {
        return Err(EtcdError::TooManyOps);
    }
    if req.compare.iter().any(|c| c.key.is_empty()) {
        return Err(EtcdError::EmptyKey);
    }
    for op in req.success.iter().chain(&req.failure) {
        match op {
            Op::Range(r) if r.key.is_empty() => return Err(EtcdError::EmptyKey),
            Op::Range(_) => {}
            Op::Put(p) => check_put_shape(p)?,
            Op::Delete(d) if d.key.is_empty() => return Err(EtcdError::EmptyKey),
            Op::Delete(_) => {}
            Op::Txn(t) => check_shape(t, budget - longest)?,
            Op::Empty => return Err(EtcdError::KeyNotFound),
        }
    }
    Ok(())
}

/// A put's own fields (etcd checks these before anything else about it).
pub(super) fn check_put_shape(p: &PutRequest) -> Result<(), EtcdError> {
    if p.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

/// A delete's interval for the duplicate check. etcd treats an end of `"\0"` (every key from
/// `key` on) as an empty interval here, so such a delete never collides with a put; Baton does
/// the same, so that a transaction etcd accepts is accepted.
fn delete_interval(d: &DeleteRequest) -> Option<KeyRange> {
    (d.range_end.as_slice() != [0]).then(|| KeyRange::new(&d.key, &d.range_end))
}

/// etcd's duplicate-key rule for one list of operations; returns the keys it puts and the
/// ranges it deletes (nested transactions included). A key put twice, or put and deleted, is a
/// duplicate, with etcd's exceptions: overlapping deletes are fine, a nested transaction's two
/// branches may put the same key (only one runs), and a put in one nested transaction followed
/// by a delete in a later sibling is not caught (etcd adds a sibling's deletes only after
/// checking its puts).
fn intervals(ops: &[Op]) -> Result<(BTreeSet<Vec<u8>>, Vec<KeyRange>), EtcdError> {
    let mut deletes: Vec<KeyRange> =
        ops.iter().filter_map(|op| if let Op::Delete(d) = op { delete_interval(d) } else { None }).collect();
    let mut puts = BTreeSet::new();
    let covered = |deletes: &[KeyRange], k: &[u8]| deletes.iter().any(|d| d.contains(k));
    for op in ops {
        if let Op::Txn(t) = op {
            let (success_puts, success_deletes) = intervals(&t.success)?;
            let (failure_puts, failure_deletes) = intervals(&t.failure)?;
            for k in success_puts.iter().chain(&failure_puts) {
                if puts.contains(k) || covered(&deletes, k) {
                    return Err(EtcdError::DuplicateKey);
                }
            }
            puts.extend(success_puts);
            puts.extend(failure_puts);
            deletes.extend(success_deletes);
            deletes.extend(failure_deletes);
        }
    }
    for op in ops {
        if let Op::Put(p) = op {
            if covered(&deletes, &p.key) || !puts.insert(p.key.clone()) {
                return Err(EtcdError::DuplicateKey);
            }
        }
    }
    Ok((puts, deletes))
}

/// Whether a compare holds at `rev` (etcd: every key of the range must satisfy it; with no
/// key in it — one missing key, or an empty range — it compares as zero version, revisions
/// and lease, and never satisfies a value compare).
pub(super) fn compare(mvcc: &Mvcc, c: &Compare, rev: Revision) -> bool {
    let range = KeyRange::new(&c.key, &c.range_end);
    let kvs = mvcc.range(&range, rev, 0);
    if kvs.is_empty() {
        if matches!(c.target, CompareTarget::Value(_)) {
            return false;
        }
        return holds(c, &super::KeyValue::default());
    }
    kvs.iter().all(|kv| holds(c, kv))
}

fn holds(c: &Compare, kv: &super::KeyValue) -> bool {
    use std::cmp::Ordering;
    let ord: Ordering = match &c.target {
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::Create(r) => kv.create_revision.cmp(r),
        CompareTarget::Mod(r) => kv.mod_revision.cmp(r),
        CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
        CompareTarget::Lease(l) => kv.lease.cmp(l),
    };
    match c.result {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
        CompareResult::NotEqual => ord != Ordering::Equal,
    }
}

/// Checks each operation of the branch that will run against the state before the
/// transaction (nested transactions: the branch their compares choose, also evaluated before
/// the transaction). Puts first, then ranges, as etcd 3.5 does: it decides which error is
/// reported when there are both; within a put, `ignore_*` on a missing key before an unknown
/// lease (a put of its own checks the lease first: [`super::EtcdStore::put`]). A range's
/// revision below the last compaction is refused even when negative (etcd's check here).
pub(super) fn check_ops(mvcc: &Mvcc, lease_exists: &impl Fn(i64) -> bool, ops: &[Op]) -> Result<(), EtcdError> {
    let mut path = Vec::new();
    chosen_path(mvcc, ops, &mut path);
    for op in &path {
        if let Op::Put(p) = op {
            if (p.ignore_value || p.ignore_lease) && mvcc.get(&p.key).is_none() {
                return Err(EtcdError::KeyNotFound);
            }
            if p.lease != 0 && !lease_exists(p.lease) {
                return Err(EtcdError::LeaseNotFound);
            }
        }
    }
    for op in &path {
        if let Op::Range(r) = op {
            // Revision 0 is "now": never compacted (the etcd-client comparison found every
            // transaction with a range refused after any compaction).
            if r.revision != 0 && r.revision < mvcc.compacted() {
                return Err(EtcdError::Compacted);
            }
            mvcc.check_read(r.revision)?;
        }
    }
    Ok(())
}

/// The operations that will run, nested ones flattened in order.
fn chosen_path<'a>(mvcc: &Mvcc, ops: &'a [Op], out: &mut Vec<&'a Op>) {
    for op in ops {
        match op {
            Op::Txn(t) => {
                let branch = if compares_hold(mvcc, t) { &t.success } else { &t.failure };
                chosen_path(mvcc, branch, out);
            }
            _ => out.push(op),
        }
    }
}

/// Whether every compare of `t` holds before the transaction (etcd evaluates the compares of
/// nested transactions, too, on the state before any operation ran).
pub(super) fn compares_hold(mvcc: &Mvcc, t: &TxnRequest) -> bool {
    t.compare.iter().all(|c| compare(mvcc, c, mvcc.revision()))
}

/// What [`apply`] returns: each operation's response and its header's revision.
pub(super) type Applied = (Vec<OpResponse>, Vec<Revision>);

/// Applies a checked branch: writes at `(main, sub..)`, reads see earlier writes.
pub(super) fn apply(mvcc: &mut Mvcc, ops: &[Op], main: Revision, sub: &mut i64) -> Result<Applied, EtcdError> {
    let mut out = Vec::with_capacity(ops.len());
    let mut revisions = Vec::with_capacity(ops.len());
    for op in ops {
        let reading_at = if *sub > 0 { Some(main) } else { None };
        out.push(match op {
            // Refused by `check` before anything was applied.
            Op::Empty => return Err(EtcdError::KeyNotFound),
            Op::Range(r) => OpResponse::Range(super::range(mvcc, r, reading_at)?),
            Op::Put(p) => {
                let prev = mvcc.get_at(&p.key, main);
                let value = if p.ignore_value {
                    prev.as_ref().map(|kv| kv.value.clone()).unwrap_or_default()
                } else {
                    p.value.clone()
                };
                let lease = if p.ignore_lease { prev.as_ref().map_or(0, |kv| kv.lease) } else { p.lease };
                let prev = mvcc.put(&p.key, value, lease, main, *sub);
                *sub += 1;
                OpResponse::Put(PutResponse { prev_kv: if p.prev_kv { prev } else { None } })
            }
            Op::Delete(d) => {
                let range = KeyRange::new(&d.key, &d.range_end);
                let mut prev_kvs = Vec::new();
                let mut deleted = 0;
                for key in mvcc.live_keys(&range, main) {
                    if let Some(prev) = mvcc.delete(&key, main, *sub) {
                        *sub += 1;
                        deleted += 1;
                        if d.prev_kv {
                            prev_kvs.push(prev);
                        }
                    }
                }
                OpResponse::Delete(DeleteResponse { deleted, prev_kvs })
            }
            Op::Txn(t) => {
                // Evaluated on the state before the transaction, as in the checks: the store's
                // revision does not move until the whole transaction is applied.
                let succeeded = compares_hold(mvcc, t);
                let branch = if succeeded { &t.success } else { &t.failure };
                let (responses, inner) = apply(mvcc, branch, main, sub)?;
                OpResponse::Txn(TxnResponse { succeeded, responses, revisions: inner })
            }
        });
        // etcd's header revision for the operation: the end revision once anything was
        // written (a put always writes), the start revision before; a nested transaction's
        // header is left at zero.
        revisions.push(match op {
            Op::Txn(_) => 0,
            _ if *sub > 0 => main,
            _ => main - 1,
        });
    }
    Ok((out, revisions))
}

#[cfg(test)]
mod depth_tests {
    use super::*;

    /// bincode of a transaction nesting `depth` more, each the one success operation of its
    /// parent, written as bytes (a value that deep would overflow the stack being built too).
    fn nested(depth: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..depth {
            out.extend([0u64.to_le_bytes(), 1u64.to_le_bytes()].concat());
            out.extend(3u32.to_le_bytes());
        }
        out.extend([0u8; 24]);
        out.extend(std::iter::repeat_n(0u8, 8 * depth));
        out
    }

    #[test]
    fn transactions_decode_up_to_the_depth_bound_and_no_deeper() {
        let ok: TxnRequest = bincode::deserialize(&nested(MAX_TXN_DEPTH - 1)).expect("at the bound");
        let mut levels = 1;
        let mut t = &ok;
        while let Some(Op::Txn(inner)) = t.success.first() {
            levels += 1;
            t = inner;
        }
        assert_eq!(levels, MAX_TXN_DEPTH);
        let err = bincode::deserialize::<TxnRequest>(&nested(MAX_TXN_DEPTH)).unwrap_err();
        assert!(err.to_string().contains("nested deeper than 64"), "{err}");
        // What used to overflow the stack (found by fuzzing a forwarded etcd call); and the
        // count is back to zero after a refusal.
        assert!(bincode::deserialize::<TxnRequest>(&nested(100_000)).is_err());
        assert!(bincode::deserialize::<TxnRequest>(&nested(MAX_TXN_DEPTH - 1)).is_ok());
    }

    #[test]
    fn nested_responses_are_bounded_too() {
        let mut r = TxnResponse::default();
        for _ in 0..MAX_TXN_DEPTH {
            r = TxnResponse { succeeded: true, responses: vec![OpResponse::Txn(r)], revisions: vec![1] };
        }
        let bytes = bincode::serialize(&r).unwrap();
        assert!(bincode::deserialize::<TxnResponse>(&bytes).is_err());
        let inner = match r.responses.pop() {
            Some(OpResponse::Txn(inner)) => inner,
            _ => unreachable!(),
        };
        assert_eq!(bincode::deserialize::<TxnResponse>(&bincode::serialize(&inner).unwrap()).unwrap(), inner);
    }
}
