use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn put(s: &mut EtcdStore, k: &str, v: &str) -> PutResponse {
    s.put(&PutRequest { key: k.into(), value: v.into(), prev_kv: true, ..Default::default() }).unwrap()
}

fn get(s: &EtcdStore, req: RangeRequest) -> Result<RangeResponse, EtcdError> {
    s.range(&req)
}

fn prefix(p: &str) -> RangeRequest {
    let mut end = p.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    RangeRequest { key: p.into(), range_end: end, ..Default::default() }
}

fn keys(r: &RangeResponse) -> Vec<String> {
    r.kvs.iter().map(|kv| String::from_utf8(kv.key.clone()).unwrap()).collect()
}

#[test]
fn revisions_versions_and_history() {
    let mut s = EtcdStore::default();
    assert_eq!(s.revision(), 1, "an empty store is at revision 1");
    assert_eq!(put(&mut s, "a", "1").prev_kv, None);
    assert_eq!(s.revision(), 2);
    let prev = put(&mut s, "a", "2").prev_kv.unwrap();
    assert_eq!((prev.create_revision, prev.mod_revision, prev.version), (2, 2, 1));
    let now = &get(&s, RangeRequest { key: "a".into(), ..Default::default() }).unwrap().kvs[0];
    assert_eq!((now.create_revision, now.mod_revision, now.version, now.value.as_slice()), (2, 3, 2, &b"2"[..]));
    // The past stays readable.
    let then = get(&s, RangeRequest { key: "a".into(), revision: 2, ..Default::default() }).unwrap();
    assert_eq!(then.kvs[0].value, b"1");
    // Deleting nothing does not move the revision; deleting something does, once.
    let d = s.delete(&DeleteRequest { key: "zz".into(), ..Default::default() }).unwrap();
    assert_eq!((d.deleted, s.revision()), (0, 3));
    put(&mut s, "b", "x");
    let d = s.delete(&DeleteRequest { key: "a".into(), range_end: b"c".to_vec(), prev_kv: true }).unwrap();
    assert_eq!((d.deleted, d.prev_kvs.len(), s.revision()), (2, 2, 5));
    // Created again: a new generation, version 1.
    put(&mut s, "a", "3");
    let kv = &get(&s, RangeRequest { key: "a".into(), ..Default::default() }).unwrap().kvs[0];
    assert_eq!((kv.create_revision, kv.version), (6, 1));
    assert_eq!(
        get(&s, RangeRequest { key: "a".into(), revision: 7, ..Default::default() }),
        Err(EtcdError::FutureRevision)
    );
}

#[test]
fn ranges_limit_sort_filter_and_count() {
    let mut s = EtcdStore::default();
    for (k, v) in [("p/c", "1"), ("p/a", "3"), ("p/b", "2"), ("q", "0")] {
        put(&mut s, k, v);
    }
    put(&mut s, "p/c", "4");
    let all = get(&s, prefix("p/")).unwrap();
    assert_eq!((keys(&all), all.count, all.more), (vec!["p/a".into(), "p/b".into(), "p/c".into()], 3, false));
    let limited = get(&s, RangeRequest { limit: 2, ..prefix("p/") }).unwrap();
    assert_eq!((keys(&limited), limited.count, limited.more), (vec!["p/a".into(), "p/b".into()], 3, true));
    let exact = get(&s, RangeRequest { limit: 3, ..prefix("p/") }).unwrap();
    assert!(!exact.more);
    // A sort target without an order sorts ascending.
    let by_value = get(&s, RangeRequest { sort_target: SortTarget::Value, ..prefix("p/") }).unwrap();
    assert_eq!(keys(&by_value), ["p/b", "p/a", "p/c"]);
    let newest = get(
        &s,
        RangeRequest { sort_target: SortTarget::Mod, sort_order: SortOrder::Descend, limit: 1, ..prefix("p/") },
    )
    .unwrap();
    assert_eq!((keys(&newest), newest.more), (vec!["p/c".to_string()], true));
    let fresh = get(&s, RangeRequest { min_mod_revision: 4, ..prefix("p/") }).unwrap();
    assert_eq!((keys(&fresh), fresh.count), (vec!["p/b".into(), "p/c".into()], 3));
    let counted = get(&s, RangeRequest { count_only: true, ..prefix("p/") }).unwrap();
    assert_eq!((counted.kvs.len(), counted.count), (0, 3));
    let bare = get(&s, RangeRequest { keys_only: true, ..prefix("p/") }).unwrap();
    assert!(bare.kvs.iter().all(|kv| kv.value.is_empty() && kv.version > 0));
    // "\0" as the end: every key from the key on; as both key and end: every key.
    let from = get(&s, RangeRequest { key: "p/b".into(), range_end: vec![0], ..Default::default() }).unwrap();
    assert_eq!(keys(&from), ["p/b", "p/c", "q"]);
    let every = get(&s, RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() }).unwrap();
    assert_eq!(every.count, 4);
    let backwards = get(&s, RangeRequest { key: "q".into(), range_end: "p".into(), ..Default::default() }).unwrap();
    assert_eq!(backwards.count, 0);
}

#[test]
fn puts_with_ignore_flags_and_leases_are_checked_before_anything_changes() {
    let mut s = EtcdStore::default();
    let refuse = |s: &mut EtcdStore, req: PutRequest, err: EtcdError| {
        let before = s.clone();
        assert_eq!(s.put(&req), Err(err));
        assert_eq!(*s, before, "a refused put changed the store");
    };
    refuse(&mut s, PutRequest { key: vec![], ..Default::default() }, EtcdError::EmptyKey);
    refuse(&mut s, PutRequest { key: "k".into(), ignore_value: true, ..Default::default() }, EtcdError::KeyNotFound);
    refuse(&mut s, PutRequest { key: "k".into(), lease: 7, ..Default::default() }, EtcdError::LeaseNotFound);
    put(&mut s, "k", "v");
    refuse(
        &mut s,
        PutRequest { key: "k".into(), value: "w".into(), ignore_value: true, ..Default::default() },
        EtcdError::ValueProvided,
    );
    refuse(
        &mut s,
        PutRequest { key: "k".into(), lease: 7, ignore_lease: true, ..Default::default() },
        EtcdError::LeaseProvided,
    );
    // ignore_value keeps the value and writes a new version.
    s.put(&PutRequest { key: "k".into(), ignore_value: true, ..Default::default() }).unwrap();
    let kv = s.mvcc().get(b"k").unwrap();
    assert_eq!((kv.value.as_slice(), kv.version, kv.mod_revision), (&b"v"[..], 2, 3));
}

fn cmp(key: &str, result: CompareResult, target: CompareTarget) -> Compare {
    Compare { result, target, key: key.into(), range_end: vec![] }
}

fn put_op(k: &str, v: &str) -> Op {
    Op::Put(PutRequest { key: k.into(), value: v.into(), ..Default::default() })
}

#[test]
fn transactions_compare_then_apply_one_branch_at_one_revision() {
    let mut s = EtcdStore::default();
    // Create-if-absent, etcd's lock idiom: create revision 0 means missing.
    let create = TxnRequest {
        compare: vec![cmp("lock", CompareResult::Equal, CompareTarget::Create(0))],
        success: vec![put_op("lock", "me"), put_op("owner", "me")],
        failure: vec![Op::Range(RangeRequest { key: "lock".into(), ..Default::default() })],
    };
    let r = s.txn(&create).unwrap();
    assert!(r.succeeded);
    assert_eq!(s.revision(), 2, "two puts, one revision");
    let lock = s.mvcc().get(b"lock").unwrap();
    let owner = s.mvcc().get(b"owner").unwrap();
    assert_eq!((lock.mod_revision, owner.mod_revision), (2, 2));
    let r = s.txn(&create).unwrap();
    assert!(!r.succeeded);
    assert_eq!(s.revision(), 2, "a read-only branch does not move the revision");
    match &r.responses[0] {
        OpResponse::Range(rr) => assert_eq!(rr.kvs[0].value, b"me"),
        other => panic!("{other:?}"),
    }
    // A value compare on a missing key is false whatever the operator.
    let missing = TxnRequest {
        compare: vec![cmp("nope", CompareResult::NotEqual, CompareTarget::Value(b"x".to_vec()))],
        ..Default::default()
    };
    assert!(!s.txn(&missing).unwrap().succeeded);
    // Reads inside a transaction see its own earlier writes.
    let r = s
        .txn(&TxnRequest {
            success: vec![put_op("fresh", "1"), Op::Range(RangeRequest { key: "fresh".into(), ..Default::default() })],
            ..Default::default()
        })
        .unwrap();
    match &r.responses[1] {
        OpResponse::Range(rr) => assert_eq!(rr.kvs[0].mod_revision, 3),
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_transactions_are_refused_whole() {
    let mut s = EtcdStore::default();
    let before = s.clone();
    let dup = TxnRequest { success: vec![put_op("a", "1"), put_op("a", "2")], ..Default::default() };
    assert_eq!(s.txn(&dup), Err(EtcdError::DuplicateKey));
    let put_then_delete = TxnRequest {
        success: vec![
            put_op("a/1", "1"),
            Op::Delete(DeleteRequest { key: "a/".into(), range_end: "a0".into(), prev_kv: false }),
        ],
        ..Default::default()
    };
    assert_eq!(s.txn(&put_then_delete), Err(EtcdError::DuplicateKey));
    let too_many =
        TxnRequest { success: (0..129).map(|i| put_op(&format!("k{i}"), "v")).collect(), ..Default::default() };
    assert_eq!(s.txn(&too_many), Err(EtcdError::TooManyOps));
    // The failing operation is the last: nothing before it may stay.
    let late = TxnRequest {
        success: vec![put_op("ok", "1"), Op::Put(PutRequest { key: "x".into(), lease: 9, ..Default::default() })],
        ..Default::default()
    };
    assert_eq!(s.txn(&late), Err(EtcdError::LeaseNotFound));
    assert_eq!(s, before);
    let at_most =
        TxnRequest { success: (0..128).map(|i| put_op(&format!("k{i}"), "v")).collect(), ..Default::default() };
    s.txn(&at_most).unwrap();
    assert_eq!(s.revision(), 2);
}

#[test]
fn compaction_keeps_what_reads_at_and_after_it_need() {
    let mut s = EtcdStore::default();
    put(&mut s, "a", "1"); // 2
    put(&mut s, "a", "2"); // 3
    put(&mut s, "b", "1"); // 4
    s.delete(&DeleteRequest { key: "b".into(), ..Default::default() }).unwrap(); // 5
    put(&mut s, "a", "3"); // 6
    assert_eq!(s.compact(7), Err(EtcdError::FutureRevision));
    s.compact(5).unwrap();
    assert_eq!(s.compact(5), Err(EtcdError::Compacted));
    assert_eq!(s.compact(4), Err(EtcdError::Compacted));
    let at = |rev| s.range(&RangeRequest { key: vec![0], range_end: vec![0], revision: rev, ..Default::default() });
    assert_eq!(at(4), Err(EtcdError::Compacted));
    assert_eq!(keys(&at(5).unwrap()), ["a"]);
    assert_eq!(at(5).unwrap().kvs[0].value, b"2");
    assert_eq!(at(6).unwrap().kvs[0].value, b"3");
    // a keeps its value at 5 and what came after; b keeps only its deletion at 5 (a watch from
    // 5 replays it, as etcd's does), which the next compaction drops.
    assert_eq!(s.mvcc().keys_kept(), 2);
    let replay: Vec<(i64, bool)> = s.mvcc().changes_since(5, 10).iter().map(|(r, e)| (*r, e.deleted)).collect();
    assert_eq!(replay, vec![(5, true), (6, false)]);
    s.compact(6).unwrap();
    assert_eq!(s.mvcc().keys_kept(), 1);
    // A new store accepts Compact(0) (nothing compacted yet, as in etcd).
    assert_eq!(EtcdStore::default().compact(0), Ok(()));
}

#[test]
fn review_findings_match_etcd() {
    let mut s = EtcdStore::default();
    // A compare over a range with no key in it compares against zero (a value compare is false).
    let over_empty = |target| TxnRequest {
        compare: vec![Compare { result: CompareResult::Greater, target, key: "a".into(), range_end: "b".into() }],
        ..Default::default()
    };
    assert!(!s.txn(&over_empty(CompareTarget::Create(0))).unwrap().succeeded);
    let mut equal_zero = over_empty(CompareTarget::Version(0));
    equal_zero.compare[0].result = CompareResult::Equal;
    assert!(s.txn(&equal_zero).unwrap().succeeded);
    // Inside a transaction, ignore_value on a missing key is reported before an unknown lease;
    // a put of its own reports the lease first.
    let both = PutRequest { key: "k".into(), ignore_value: true, lease: 999, ..Default::default() };
    let txn = TxnRequest { success: vec![Op::Put(both.clone())], ..Default::default() };
    assert_eq!(s.txn(&txn), Err(EtcdError::KeyNotFound));
    assert_eq!(s.put(&both), Err(EtcdError::LeaseNotFound));
    assert_eq!(EtcdError::KeyNotFound.code(), Code::InvalidArgument);
    // A negative revision in a transaction's range is below a compaction: refused.
    put(&mut s, "a", "1");
    s.compact(2).unwrap();
    let negative = TxnRequest {
        success: vec![Op::Range(RangeRequest { key: "a".into(), revision: -1, ..Default::default() })],
        ..Default::default()
    };
    assert_eq!(s.txn(&negative), Err(EtcdError::Compacted));
    // A range of its own needs a key.
    assert_eq!(s.range(&RangeRequest::default()), Err(EtcdError::EmptyKey));
    // A negative revision filter is a filter (it keeps nothing here).
    let filtered = s.range(&RangeRequest { key: "a".into(), max_mod_revision: -1, ..Default::default() }).unwrap();
    assert_eq!((filtered.kvs.len(), filtered.count), (0, 1));
}

/// A model with the whole keyspace copied at every revision.
#[derive(Default)]
struct Model {
    at: Vec<BTreeMap<Vec<u8>, KeyValue>>,
}

impl Model {
    fn new() -> Self {
        Model { at: vec![BTreeMap::new(), BTreeMap::new()] }
    }
    fn now(&self) -> &BTreeMap<Vec<u8>, KeyValue> {
        self.at.last().unwrap()
    }
    fn put(&mut self, k: &[u8], v: &[u8]) {
        let rev = self.at.len() as i64;
        let mut next = self.now().clone();
        let (create, version) = next.get(k).map_or((rev, 1), |kv| (kv.create_revision, kv.version + 1));
        next.insert(
            k.to_vec(),
            KeyValue {
                key: k.to_vec(),
                create_revision: create,
                mod_revision: rev,
                version,
                value: v.to_vec(),
                lease: 0,
            },
        );
        self.at.push(next);
    }
    fn delete(&mut self, from: &[u8], to: &[u8]) -> i64 {
        let range = KeyRange::new(from, to);
        let mut next = self.now().clone();
        let before = next.len();
        next.retain(|k, _| !range.contains(k));
        let deleted = (before - next.len()) as i64;
        if deleted > 0 {
            self.at.push(next);
        }
        deleted
    }
}

#[derive(Clone, Debug)]
enum Step {
    Put(u8, u8),
    Delete(u8, u8),
    Read(u8, u8, u8),
    Compact(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..12, any::<u8>()).prop_map(|(k, v)| Step::Put(k, v)),
        1 => (0u8..12, 0u8..14).prop_map(|(a, b)| Step::Delete(a, b)),
        3 => (0u8..12, 0u8..14, any::<u8>()).prop_map(|(a, b, r)| Step::Read(a, b, r)),
        1 => any::<u8>().prop_map(Step::Compact),
    ]
}

fn key(k: u8) -> Vec<u8> {
    vec![b'k', b'a' + k]
}

proptest! {
    /// Every read at every revision kept matches a copy of the keyspace taken at that revision,
    /// through puts, range deletes and compactions.
    #[test]
    fn reads_at_any_revision_match_a_full_copy(steps in prop::collection::vec(step(), 1..80)) {
        let mut s = EtcdStore::default();
        let mut m = Model::new();
        for st in steps {
            match st {
                Step::Put(k, v) => {
                    put(&mut s, std::str::from_utf8(&key(k)).unwrap(), &v.to_string());
                    m.put(&key(k), v.to_string().as_bytes());
                }
                Step::Delete(a, b) => {
                    let d = s.delete(&DeleteRequest { key: key(a), range_end: key(b), prev_kv: false }).unwrap();
                    prop_assert_eq!(d.deleted, m.delete(&key(a), &key(b)));
                }
                Step::Read(a, b, r) => {
                    let rev = 1 + (r as i64) % s.revision();
                    let req = RangeRequest { key: key(a), range_end: key(b), revision: rev, ..Default::default() };
                    match s.range(&req) {
                        Ok(got) => {
                            let range = KeyRange::new(&key(a), &key(b));
                            let want: Vec<KeyValue> =
                                m.at[rev as usize].values().filter(|kv| range.contains(&kv.key)).cloned().collect();
                            prop_assert_eq!(got.count, want.len() as i64);
                            prop_assert_eq!(got.kvs, want);
                        }
                        Err(e) => {
                            prop_assert_eq!(e, EtcdError::Compacted);
                            prop_assert!(rev < s.mvcc().compacted());
                        }
                    }
                }
                Step::Compact(r) => {
                    let rev = 1 + (r as i64) % s.revision();
                    let expected = if rev <= s.mvcc().compacted() { Err(EtcdError::Compacted) } else { Ok(()) };
                    prop_assert_eq!(s.compact(rev), expected);
                }
            }
            prop_assert_eq!(s.revision() as usize, m.at.len() - 1);
        }
    }
}

#[test]
fn nested_transactions_follow_etcd_rules() {
    let mut s = EtcdStore::default();
    put(&mut s, "n", "0");
    // A nested compare sees the state before the transaction, not the outer branch's writes.
    let nested = TxnRequest {
        success: vec![
            put_op("n", "1"),
            Op::Txn(TxnRequest {
                compare: vec![cmp("n", CompareResult::Equal, CompareTarget::Value(b"0".to_vec()))],
                success: vec![put_op("saw-old", "yes")],
                failure: vec![put_op("saw-new", "yes")],
            }),
        ],
        ..Default::default()
    };
    let r = s.txn(&nested).unwrap();
    match &r.responses[1] {
        OpResponse::Txn(t) => assert!(t.succeeded),
        other => panic!("{other:?}"),
    }
    assert!(s.mvcc().get(b"saw-old").is_some() && s.mvcc().get(b"saw-new").is_none());
    assert_eq!(s.revision(), 3, "outer and nested writes share one revision");
    // Both branches of a nested transaction may put the same key (only one runs) …
    let both = TxnRequest {
        success: vec![Op::Txn(TxnRequest {
            success: vec![put_op("b", "1")],
            failure: vec![put_op("b", "2")],
            ..Default::default()
        })],
        ..Default::default()
    };
    s.txn(&both).unwrap();
    // … but not a key the outer branch puts too.
    let clash = TxnRequest {
        success: vec![put_op("c", "1"), Op::Txn(TxnRequest { success: vec![put_op("c", "2")], ..Default::default() })],
        ..Default::default()
    };
    assert_eq!(s.txn(&clash), Err(EtcdError::DuplicateKey));
    // A delete of every key from "a" on ("\0" end) does not collide with a put (etcd's rule).
    let from_key = TxnRequest {
        success: vec![
            put_op("d", "1"),
            Op::Delete(DeleteRequest { key: "a".into(), range_end: vec![0], prev_kv: false }),
        ],
        ..Default::default()
    };
    s.txn(&from_key).unwrap();
    // The operation budget shrinks with nesting: 100 outer operations leave 28 per nested list.
    let budget = |inner: usize| TxnRequest {
        success: (0..99)
            .map(|i| Op::Range(RangeRequest { key: format!("r{i}").into_bytes(), ..Default::default() }))
            .chain([Op::Txn(TxnRequest {
                success: (0..inner)
                    .map(|i| Op::Range(RangeRequest { key: format!("q{i}").into_bytes(), ..Default::default() }))
                    .collect(),
                ..Default::default()
            })])
            .collect(),
        ..Default::default()
    };
    assert!(s.txn(&budget(28)).is_ok());
    assert_eq!(s.txn(&budget(29)), Err(EtcdError::TooManyOps));
    // Every compare needs a key.
    let keyless =
        TxnRequest { compare: vec![cmp("", CompareResult::Equal, CompareTarget::Version(0))], ..Default::default() };
    assert_eq!(s.txn(&keyless), Err(EtcdError::EmptyKey));
}

#[test]
fn leases_carry_keys_and_take_them_when_revoked() {
    let mut s = EtcdStore::default();
    s.lease_grant(7, 1, 100).unwrap();
    assert_eq!(s.leases().get(7).unwrap().ttl_s, MIN_LEASE_TTL_S, "a short TTL is raised");
    assert_eq!(s.lease_grant(7, 10, 101), Err(EtcdError::LeaseExists));
    assert_eq!(s.lease_grant(8, MAX_LEASE_TTL_S + 1, 101), Err(EtcdError::LeaseTtlTooLarge));
    s.lease_grant(8, 60, 101).unwrap();
    assert_eq!(s.leases().of_session(101), Some(8));
    let with = |k: &str, lease| PutRequest { key: k.into(), value: "v".into(), lease, ..Default::default() };
    s.put(&with("a", 7)).unwrap();
    s.put(&with("b", 7)).unwrap();
    s.put(&with("c", 7)).unwrap();
    // Moved to another lease, detached by a plain put, detached by a delete.
    s.put(&with("b", 8)).unwrap();
    s.put(&with("c", 0)).unwrap();
    s.put(&with("d", 7)).unwrap();
    s.delete(&DeleteRequest { key: "d".into(), ..Default::default() }).unwrap();
    let keys_of = |s: &EtcdStore, id| s.leases().get(id).unwrap().keys.iter().cloned().collect::<Vec<_>>();
    assert_eq!(keys_of(&s, 7), vec![b"a".to_vec()]);
    assert_eq!(keys_of(&s, 8), vec![b"b".to_vec()]);
    // ignore_lease keeps the key's lease.
    s.put(&PutRequest { key: "b".into(), value: "w".into(), ignore_lease: true, ..Default::default() }).unwrap();
    assert_eq!(s.mvcc().get(b"b").unwrap().lease, 8);
    s.put(&with("e", 8)).unwrap();
    let before = s.revision();
    let gone = s.lease_revoke(8).unwrap();
    assert_eq!(gone.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(), vec![b"b".to_vec(), b"e".to_vec()]);
    assert_eq!(s.revision(), before + 1, "a revoke deletes its keys in one revision");
    assert!(s.mvcc().get(b"b").is_none() && s.mvcc().get(b"a").is_some());
    assert_eq!(s.lease_revoke(8), Err(EtcdError::LeaseNotFound));
    assert_eq!(s.leases().of_session(101), None);
    // A lease without keys goes without a revision.
    s.put(&with("a", 0)).unwrap();
    let before = s.revision();
    assert!(s.lease_revoke(7).unwrap().is_empty());
    assert_eq!(s.revision(), before);
}

#[test]
fn a_rollback_leaves_the_store_as_it_was() {
    let mut m = Mvcc::new();
    m.put(b"a", b"1".to_vec(), 0, 2, 0);
    m.commit(2);
    let before = m.clone();
    m.put(b"a", b"2".to_vec(), 0, 3, 0);
    m.put(b"b", b"1".to_vec(), 0, 3, 1);
    m.delete(b"a", 3, 2);
    m.rollback(3);
    assert_eq!(m, before);
}

#[derive(Clone, Debug)]
enum Write {
    Put { key: u8, lease: u8, ignore_value: bool },
    Delete(u8, u8),
    Txn { guard: u8, version: i64, put: u8, delete: u8 },
    Duplicate(u8),
    Grant(u8),
    Revoke(u8),
    Compact(u8),
}

fn write() -> impl Strategy<Value = Write> {
    prop_oneof![
        4 => (0u8..8, 0u8..4, any::<bool>()).prop_map(|(key, lease, ignore_value)| Write::Put { key, lease, ignore_value }),
        1 => (0u8..8, 0u8..10).prop_map(|(a, b)| Write::Delete(a, b)),
        2 => (0u8..8, 0i64..3, 0u8..8, 0u8..8).prop_map(|(guard, version, put, delete)| Write::Txn { guard, version, put, delete }),
        1 => (0u8..8).prop_map(Write::Duplicate),
        2 => (1u8..4).prop_map(Write::Grant),
        1 => (1u8..4).prop_map(Write::Revoke),
        1 => any::<u8>().prop_map(Write::Compact),
    ]
}

proptest! {
    /// Through every kind of write, refused or not: a refusal changes nothing; a write moves
    /// the revision by one exactly when it recorded a change; every lease lists exactly the
    /// live keys attached to it, and no live key names a lease that does not exist.
    #[test]
    fn writes_are_whole_and_leases_match_their_keys(writes in prop::collection::vec(write(), 1..60)) {
        let mut s = EtcdStore::default();
        let mut session = 100;
        for w in writes {
            let before = s.clone();
            let result = match w {
                Write::Put { key: k, lease, ignore_value } => s
                    .put(&PutRequest {
                        key: key(k),
                        value: if ignore_value { Vec::new() } else { vec![k] },
                        lease: lease as i64,
                        ignore_value,
                        ..Default::default()
                    })
                    .map(drop),
                Write::Delete(a, b) => s.delete(&DeleteRequest { key: key(a), range_end: key(b), prev_kv: true }).map(drop),
                Write::Txn { guard, version, put, delete } => s
                    .txn(&TxnRequest {
                        compare: vec![Compare {
                            result: CompareResult::Equal,
                            target: CompareTarget::Version(version),
                            key: key(guard),
                            range_end: vec![],
                        }],
                        success: vec![Op::Put(PutRequest { key: key(put), value: vec![put], ..Default::default() })],
                        failure: vec![Op::Delete(DeleteRequest { key: key(delete), ..Default::default() })],
                    })
                    .map(drop),
                Write::Duplicate(k) => s
                    .txn(&TxnRequest { success: vec![put_op("x", "1"), Op::Put(PutRequest { key: key(k), ..Default::default() }), put_op("x", "2")], ..Default::default() })
                    .map(drop),
                Write::Grant(id) => {
                    session += 1;
                    s.lease_grant(id as i64, 10, session)
                }
                Write::Revoke(id) => s.lease_revoke(id as i64).map(drop),
                Write::Compact(r) => s.compact((r as i64) % (s.revision() + 1)),
            };
            match result {
                Err(_) => prop_assert_eq!(&s, &before, "a refused write changed the store"),
                Ok(()) => {
                    let moved = s.revision() - before.revision();
                    prop_assert!(moved == 0 || moved == 1);
                    let changed = !s.mvcc().changes_since(before.revision() + 1, 1).is_empty();
                    prop_assert_eq!(moved == 1, changed);
                }
            }
            let all = RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() };
            let live = s.range(&all).unwrap().kvs;
            for (id, lease) in s.leases().iter() {
                let attached: Vec<Vec<u8>> = live.iter().filter(|kv| kv.lease == id).map(|kv| kv.key.clone()).collect();
                prop_assert_eq!(lease.keys.iter().cloned().collect::<Vec<_>>(), attached);
            }
            prop_assert!(live.iter().all(|kv| kv.lease == 0 || s.leases().get(kv.lease).is_some()));
            prop_assert_eq!(s.mvcc().bytes(), s.mvcc().bytes_recounted(), "the kept history's weight drifted");
        }
    }
}

#[test]
fn nospace_refuses_what_adds_data_and_clearing_for_member_zero_clears_every_member() {
    let mut s = EtcdStore::default();
    s.put(&PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() }).unwrap();
    s.set_alarm(true, 2, Alarm::NoSpace);
    s.set_alarm(true, 3, Alarm::NoSpace);
    let put = EtcdCommand::Put(PutRequest { key: b"k".to_vec(), ..Default::default() });
    assert_eq!(s.check_space(&put), Err(EtcdError::NoSpace));
    assert_eq!(s.check_space(&EtcdCommand::LeaseGrant { id: 0, ttl_s: 10 }), Err(EtcdError::NoSpace));
    let nested = TxnRequest {
        failure: vec![Op::Txn(TxnRequest { success: vec![put_op("a", "b")], ..Default::default() })],
        ..Default::default()
    };
    assert_eq!(s.check_space(&EtcdCommand::Txn(nested)), Err(EtcdError::NoSpace));
    let reads_and_deletes = TxnRequest {
        success: vec![Op::Delete(DeleteRequest { key: b"k".to_vec(), ..Default::default() })],
        failure: vec![Op::Range(RangeRequest { key: b"k".to_vec(), ..Default::default() })],
        ..Default::default()
    };
    assert_eq!(s.check_space(&EtcdCommand::Txn(reads_and_deletes)), Ok(()));
    assert_eq!(s.check_space(&EtcdCommand::Delete(DeleteRequest { key: b"k".to_vec(), ..Default::default() })), Ok(()));
    assert_eq!(s.check_space(&EtcdCommand::Compact(1)), Ok(()));
    assert_eq!(s.check_space(&EtcdCommand::LeaseRevoke(5)), Ok(()));
    s.set_alarm(false, 2, Alarm::NoSpace);
    assert_eq!(s.alarms(), vec![(3, Alarm::NoSpace)]);
    s.set_alarm(true, 3, Alarm::Corrupt);
    s.set_alarm(false, 0, Alarm::NoSpace);
    assert_eq!(s.alarms(), vec![(3, Alarm::Corrupt)]);
    assert_eq!(s.check_space(&put), Ok(()));
}

#[test]
fn a_replay_comes_in_whole_revisions_and_a_large_one_whole_and_alone() {
    let mut s = EtcdStore::default();
    for k in ["a", "b", "c"] {
        s.put(&PutRequest { key: k.into(), value: b"v".to_vec(), ..Default::default() }).unwrap();
        // 2, 3, 4
    }
    s.delete(&DeleteRequest { key: b"a".to_vec(), range_end: b"z".to_vec(), prev_kv: false }).unwrap(); // 5: three deletions
    s.put(&PutRequest { key: b"d".into(), value: b"v".to_vec(), ..Default::default() }).unwrap(); // 6
    let revs = |c: ChangesFrom| match c {
        ChangesFrom::Changes { changes, through } => (changes.iter().map(|(r, _)| *r).collect::<Vec<_>>(), through),
        other => panic!("{other:?}"),
    };
    assert_eq!(revs(s.changes_from(2, 10)), (vec![2, 3, 4, 5, 5, 5, 6], 6));
    assert_eq!(revs(s.changes_from(2, 4)), (vec![2, 3, 4], 4), "revision 5 does not fit whole: cut before it");
    assert_eq!(revs(s.changes_from(5, 1)), (vec![5, 5, 5], 5), "a revision larger than max comes whole, alone");
    assert_eq!(revs(s.changes_from(7, 10)), (vec![], 6));
    s.compact(4).unwrap();
    assert_eq!(s.changes_from(3, 10), ChangesFrom::Compacted(4));
    assert_eq!(revs(s.changes_from(4, 10)).0.first(), Some(&4));
}

/// Regression (found by comparing the etcd-client crate's answers with a real etcd): after any
/// compaction, a transaction with a range at revision 0 ("now") was refused as compacted, which
/// broke every lock and campaign (their join is such a transaction).
#[test]
fn a_transaction_reading_now_is_not_refused_after_a_compaction() {
    let mut s = EtcdStore::default();
    for v in ["1", "2", "3"] {
        s.put(&PutRequest { key: b"k".to_vec(), value: v.into(), ..Default::default() }).unwrap();
    }
    s.compact(3).unwrap();
    let now = TxnRequest {
        success: vec![Op::Range(RangeRequest { key: b"k".to_vec(), ..Default::default() }), put_op("j", "x")],
        ..Default::default()
    };
    assert!(s.txn(&now).unwrap().succeeded);
    let old = TxnRequest {
        success: vec![Op::Range(RangeRequest { key: b"k".to_vec(), revision: 2, ..Default::default() })],
        ..Default::default()
    };
    assert_eq!(s.txn(&old), Err(EtcdError::Compacted));
    let negative = TxnRequest {
        success: vec![Op::Range(RangeRequest { key: b"k".to_vec(), revision: -1, ..Default::default() })],
        ..Default::default()
    };
    assert_eq!(s.txn(&negative), Err(EtcdError::Compacted));
}
