//! The CRDT replica over an in-memory network: deltas, anti-entropy after lost messages, the
//! read levels, bounded counters' rights, durability across a restart, and the rule that
//! nothing leaves a node before its write is durable.

use std::collections::{BTreeMap, VecDeque};

use baton_core::crdt::{Context, Key, Kind, Op, Value};
use baton_node::crdt::Gossip;
use baton_node::crdt::{
    CrdtFailure, CrdtOutput, CrdtReply, CrdtRequest, CrdtStore, MemCrdtStore, Placement, ReadLevel, Replica,
    ReplicaConfig, Stored,
};

struct Net {
    replicas: BTreeMap<u64, Replica>,
    stores: BTreeMap<u64, MemCrdtStore>,
    wire: VecDeque<(u64, u64, Gossip)>,
    answers: BTreeMap<u64, Result<CrdtReply, CrdtFailure>>,
    now: u64,
    /// Messages to these nodes are lost.
    cut: Vec<u64>,
    next_id: u64,
}

impl Net {
    fn new(n: u64) -> Net {
        let ids: Vec<u64> = (1..=n).collect();
        let mut net = Net {
            replicas: BTreeMap::new(),
            stores: BTreeMap::new(),
            wire: VecDeque::new(),
            answers: BTreeMap::new(),
            now: 1,
            cut: vec![],
            next_id: 0,
        };
        for &id in &ids {
            net.replicas.insert(id, Replica::new(ReplicaConfig::new(id), ids.clone(), vec![]));
            net.stores.insert(id, MemCrdtStore::default());
        }
        net
    }

    fn round(&mut self, id: u64) {
        let r = self.replicas.get_mut(&id).unwrap();
        let w = r.take_write();
        self.stores.get_mut(&id).unwrap().write(&w).unwrap();
        r.written();
        let outs: Vec<CrdtOutput> = r.drain_outputs().collect();
        for o in outs {
            match o {
                CrdtOutput::Send { to, msg } => self.wire.push_back((id, to, msg)),
                CrdtOutput::Answer { id, result } => {
                    self.answers.insert(id, result);
                }
                CrdtOutput::Changed { .. } => {}
            }
        }
    }

    fn request(&mut self, node: u64, req: CrdtRequest) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let r = self.replicas.get_mut(&node).unwrap();
        r.set_time(self.now, self.now);
        r.request(id, req, self.now + 2_000);
        self.round(node);
        id
    }

    /// Delivers everything on the wire (and what that causes), ticking every 10 ms of time.
    fn settle(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            while let Some((from, to, msg)) = self.wire.pop_front() {
                if self.cut.contains(&to) || self.cut.contains(&from) {
                    continue;
                }
                let r = self.replicas.get_mut(&to).unwrap();
                r.set_time(self.now, self.now);
                r.receive(from, msg);
                self.round(to);
            }
            self.now += 10;
            let ids: Vec<u64> = self.replicas.keys().copied().collect();
            for id in ids {
                let r = self.replicas.get_mut(&id).unwrap();
                r.set_time(self.now, self.now);
                r.tick();
                self.round(id);
            }
        }
    }

    /// Takes the (first) deltas from `from` to `to` off the wire.
    fn take_deltas(&mut self, from: u64, to: u64) -> Gossip {
        let i = self
            .wire
            .iter()
            .position(|(f, t, m)| (*f, *t) == (from, to) && matches!(m, Gossip::Deltas(_)))
            .expect("deltas on the wire");
        self.wire.remove(i).unwrap().2
    }

    /// Delivers one message now.
    fn deliver(&mut self, from: u64, to: u64, msg: Gossip) {
        let r = self.replicas.get_mut(&to).unwrap();
        r.set_time(self.now, self.now);
        r.receive(from, msg);
        self.round(to);
    }

    fn value(&mut self, node: u64, key: &Key) -> Value {
        let id = self.request(node, CrdtRequest::Read { key: key.clone(), level: ReadLevel::Local });
        self.answers.remove(&id).unwrap().unwrap().value
    }
}

fn key(kind: Kind, name: &str) -> Key {
    Key::new(kind, name).unwrap()
}

fn update(key: &Key, op: Op) -> CrdtRequest {
    CrdtRequest::Update { key: key.clone(), op, after: Context::new() }
}

/// An update made after everything in `token` (as a session makes it).
fn update_after(key: &Key, op: Op, token: &Context) -> CrdtRequest {
    CrdtRequest::Update { key: key.clone(), op, after: token.clone() }
}

#[test]
fn updates_on_every_node_converge_by_deltas() {
    let mut net = Net::new(3);
    let k = key(Kind::PnCounter, "hits");
    for node in 1..=3 {
        for _ in 0..5 {
            net.request(node, update(&k, Op::Add(2)));
        }
    }
    net.request(2, update(&k, Op::Subtract(3)));
    net.settle(20);
    for node in 1..=3 {
        assert_eq!(net.value(node, &k), Value::Counter(27), "node {node}");
    }
}

#[test]
fn anti_entropy_repairs_what_gossip_lost() {
    let mut net = Net::new(3);
    let s = key(Kind::OrSet, "presence");
    net.cut = vec![3];
    net.request(1, update(&s, Op::Insert("alice".into())));
    net.request(2, update(&s, Op::Insert("bob".into())));
    net.settle(50);
    assert_eq!(net.value(3, &s), Value::Members(vec![]));
    net.cut.clear();
    // No new update: only the periodic digest exchange can bring node 3 up to date.
    net.settle(2_500);
    for node in 1..=3 {
        assert_eq!(net.value(node, &s), Value::Members(vec!["alice".into(), "bob".into()]), "node {node}");
    }
    let digests: Vec<Vec<u64>> = (1..=3).map(|n| net.replicas.get_mut(&n).unwrap().digest()).collect();
    assert!(digests.iter().all(|d| *d == digests[0]), "digests differ after convergence");
}

#[test]
fn a_session_read_waits_for_its_own_writes_and_a_converged_read_for_every_live_node() {
    let mut net = Net::new(3);
    let r = key(Kind::LwwRegister, "flag");
    net.cut = vec![2];
    let w = net.request(1, update(&r, Op::Write(Some(b"on".to_vec()))));
    let token: Context = net.answers.remove(&w).unwrap().unwrap().token;
    // Node 2 missed the delta: a session read there waits, a local read does not.
    assert_eq!(net.value(2, &r), Value::Register { value: None, stamp: None });
    let read = net.request(2, CrdtRequest::Read { key: r.clone(), level: ReadLevel::Session(token) });
    assert!(!net.answers.contains_key(&read), "the session read answered before it had the write");
    net.cut.clear();
    net.settle(100);
    let got = net.answers.remove(&read).unwrap().unwrap();
    assert!(matches!(got.value, Value::Register { value: Some(ref v), .. } if v == b"on"));

    // Converged: answered once both peers report the update.
    net.settle(1_100);
    net.cut = vec![3];
    net.request(1, update(&r, Op::Write(Some(b"off".to_vec()))));
    let conv = net.request(1, CrdtRequest::Read { key: r.clone(), level: ReadLevel::Converged });
    net.settle(200);
    assert!(!net.answers.contains_key(&conv), "converged while node 3 lacked the write");
    net.cut.clear();
    net.settle(200);
    assert!(net.answers.remove(&conv).unwrap().is_ok());
    assert!(matches!(net.value(3, &r), Value::Register { value: Some(ref v), .. } if v == b"off"));
}

#[test]
fn a_bounded_counter_borrows_rights_from_peers_and_never_goes_below_zero() {
    let mut net = Net::new(3);
    let c = key(Kind::BoundedCounter, "seats");
    net.request(1, update(&c, Op::Add(10)));
    net.settle(1_100);
    // Node 2 has no rights of its own: its subtraction waits for a transfer from node 1.
    let take = net.request(2, update(&c, Op::Subtract(4)));
    assert!(!net.answers.contains_key(&take));
    net.settle(200);
    let got = net.answers.remove(&take).unwrap().unwrap();
    assert!(matches!(got.value, Value::Bounded { value: 6, .. }), "{got:?}");
    // More than exists anywhere: refused at the deadline, nothing taken.
    let too_much = net.request(3, update(&c, Op::Subtract(7)));
    net.settle(2_100);
    let err = net.answers.remove(&too_much).unwrap().unwrap_err();
    assert!(err.to_string().contains("rights"), "{err}");
    net.settle(1_100);
    for node in 1..=3 {
        let Value::Bounded { value, .. } = net.value(node, &c) else { panic!() };
        assert_eq!(value, 6, "node {node}");
    }
}

#[test]
fn nothing_leaves_before_the_write_and_a_restart_keeps_every_acknowledged_update() {
    let mut r = Replica::new(ReplicaConfig::new(1), [1, 2], vec![]);
    let k = key(Kind::GSet, "seen");
    r.request(1, update(&k, Op::Insert("x".into())), 1_000);
    assert_eq!(r.drain_outputs().count(), 0, "an answer or delta left before the write");
    let w = r.take_write();
    assert_eq!(w.len(), 1);
    let mut store = MemCrdtStore::default();
    store.write(&w).unwrap();
    r.written();
    let outs: Vec<CrdtOutput> = r.drain_outputs().collect();
    assert!(outs.iter().any(|o| matches!(o, CrdtOutput::Answer { id: 1, result: Ok(_) })));
    assert!(outs.iter().any(|o| matches!(o, CrdtOutput::Send { to: 2, msg: Gossip::Deltas(_) })));
    // Restarted from its store: the update is there, and its next dot is a new one.
    let mut again = Replica::new(ReplicaConfig::new(1), [1, 2], store.load().unwrap());
    assert_eq!(again.get(&k).unwrap().value(1), Value::Members(vec!["x".into()]));
    again.request(2, update(&k, Op::Insert("y".into())), 1_000);
    let dots = again.get(&k).unwrap().ctx.dots();
    assert_eq!(dots.len(), 2, "{dots:?}");
}

#[test]
fn anti_entropy_pages_past_the_first_keys_of_a_bucket() {
    // More objects in one bucket than one exchange lists, all equal but one difference at the end.
    let mut net = Net::new(2);
    let target = key(Kind::OrSet, "zz-target");
    let bucket = baton_node::crdt::gossip::bucket_of(&target);
    let fillers: Vec<Key> = (0..)
        .map(|i| key(Kind::GCounter, &format!("f{i}")))
        .filter(|k| baton_node::crdt::gossip::bucket_of(k) == bucket)
        .take(baton_node::crdt::gossip::MAX_KEYS_PER_EXCHANGE + 50)
        .collect();
    for f in &fillers {
        net.request(1, update(f, Op::Add(1)));
    }
    net.settle(20);
    net.cut = vec![2];
    net.request(1, update(&target, Op::Insert("x".into())));
    net.settle(20);
    net.cut.clear();
    net.settle(4_000);
    assert_eq!(net.value(2, &target), Value::Members(vec!["x".into()]));
}

#[test]
fn a_sessions_update_follows_what_it_has_seen() {
    // OR-set: insert on node 1 (node 2 misses it), then the same session removes on node 2: the
    // remove waits for the insert, so the element ends removed, not resurrected.
    let mut net = Net::new(2);
    let s = key(Kind::OrSet, "tasks");
    net.cut = vec![2];
    let ins = net.request(1, update(&s, Op::Insert("e".into())));
    let token = net.answers.remove(&ins).unwrap().unwrap().token;
    net.cut.clear();
    let rm = net.request(2, update_after(&s, Op::Remove("e".into()), &token));
    assert!(!net.answers.contains_key(&rm), "the remove applied before the insert it follows");
    net.settle(1_200);
    assert!(net.answers.remove(&rm).unwrap().is_ok());
    for node in 1..=2 {
        assert_eq!(net.value(node, &s), Value::Members(vec![]), "node {node}");
    }

    // LWW: two writes of one session in the same millisecond on two nodes: the later wins.
    let r = key(Kind::LwwRegister, "mode");
    let w1 = net.request(2, update(&r, Op::Write(Some(b"first".to_vec()))));
    let token = net.answers.remove(&w1).unwrap().unwrap().token;
    net.request(1, update_after(&r, Op::Write(Some(b"second".to_vec())), &token));
    net.settle(1_200);
    for node in 1..=2 {
        assert!(
            matches!(net.value(node, &r), Value::Register { value: Some(ref v), .. } if v == b"second"),
            "node {node}"
        );
    }
}

#[test]
fn malformed_states_from_a_peer_are_refused() {
    let mut r = Replica::new(ReplicaConfig::new(1), [1, 2], vec![]);
    r.set_time(1, 1);
    let k = key(Kind::OrSet, "s");
    // An element whose dot its context does not hold.
    let mut other = Kind::OrSet.empty();
    other.update("s", 2, Op::Insert("x".into()), Default::default()).unwrap();
    let mut forged = other.clone();
    forged.ctx = Context::new();
    r.receive(2, Gossip::States(vec![(k.clone(), forged)]));
    assert!(r.get(&k).is_none(), "a malformed state was joined");
    r.receive(2, Gossip::States(vec![(k.clone(), other)]));
    assert_eq!(r.get(&k).unwrap().value(1), Value::Members(vec!["x".into()]));
}

#[test]
fn two_nodes_short_of_rights_do_not_swap_them_until_both_fail() {
    let mut net = Net::new(2);
    let c = key(Kind::BoundedCounter, "tickets");
    net.request(1, update(&c, Op::Add(5)));
    net.request(2, update(&c, Op::Add(5)));
    net.settle(1_100);
    // Both want 8 of the 10 at once: one gets the other's rights and succeeds.
    let a = net.request(1, update(&c, Op::Subtract(8)));
    let b = net.request(2, update(&c, Op::Subtract(8)));
    net.settle(2_500);
    let ok = [a, b].iter().filter(|id| net.answers.remove(id).unwrap().is_ok()).count();
    assert_eq!(ok, 1, "exactly one of the two subtractions fits");
    net.settle(1_100);
    for node in 1..=2 {
        let Value::Bounded { value, .. } = net.value(node, &c) else { panic!() };
        assert_eq!(value, 2, "node {node}");
    }
}

#[test]
fn a_repeated_request_for_rights_is_served_once() {
    let mut r = Replica::new(ReplicaConfig::new(1), [1, 2], vec![]);
    r.set_time(1, 1);
    let c = key(Kind::BoundedCounter, "seats");
    r.request(1, update(&c, Op::Add(30)), 1_000);
    let _ = r.take_write();
    r.written();
    for _ in 0..2 {
        r.receive(2, Gossip::WantRights { key: c.clone(), n: 10 });
    }
    let _ = r.take_write();
    r.written();
    assert_eq!(r.get(&c).unwrap().value(1), Value::Bounded { value: 30, rights: 20 });
}

/// Node 1 writes a, node 2 replaces it with b, node 1 replaces b with c; node 3 gets c's delta
/// before b's. Joined at once, c's delta (which names only b) would leave a next to c while
/// node 3's context covers c. It waits for b's instead; lost, it is replaced by a pull.
#[test]
fn a_delta_waits_for_its_causal_past() {
    let values = |v: &[&str]| Value::Values(v.iter().map(|s| s.as_bytes().to_vec()).collect());
    for b_reaches_node_3 in [true, false] {
        let mut net = Net::new(3);
        let k = key(Kind::MvRegister, "config");
        net.request(1, update(&k, Op::Write(Some(b"a".to_vec()))));
        net.settle(10);
        net.request(2, update(&k, Op::Write(Some(b"b".to_vec()))));
        let b_to_1 = net.take_deltas(2, 1);
        let b_to_3 = net.take_deltas(2, 3);
        net.deliver(2, 1, b_to_1);
        net.request(1, update(&k, Op::Write(Some(b"c".to_vec()))));
        let c_to_3 = net.take_deltas(1, 3);
        net.deliver(1, 3, c_to_3);
        assert_eq!(net.value(3, &k), values(&["a"]), "c's delta waits for b's");
        if b_reaches_node_3 {
            net.deliver(2, 3, b_to_3);
            assert_eq!(net.value(3, &k), values(&["c"]));
        } else {
            // Past the retry period node 3 pulls node 1's state (before any anti-entropy).
            net.settle(100);
            assert_eq!(net.value(3, &k), values(&["c"]));
        }
        net.settle(20);
        for node in 1..=3 {
            assert_eq!(net.value(node, &k), values(&["c"]), "node {node}");
        }
    }
}

fn owned_by(nodes: &[u64], version: u64) -> Option<std::sync::Arc<Placement>> {
    let set: std::collections::BTreeSet<u64> = nodes.iter().copied().collect();
    let per_slot = std::iter::repeat_n(set, baton_core::SLOTS as usize);
    Some(std::sync::Arc::new(Placement::from_owners(per_slot, version)))
}

/// Objects live on their slot's owners: others refuse (naming them); a move hands the object
/// to the new owners and the old one drops it; when it owns the slot again, its first update
/// waits for its own earlier updates to come back (its dots are not issued twice).
#[test]
fn objects_follow_their_owners_and_come_back_whole() {
    let mut net = Net::new(3);
    let k = key(Kind::GCounter, "hits");
    place_all(&mut net, &[1, 2], 1);
    net.request(1, update(&k, Op::Add(5)));
    net.settle(20);
    assert_eq!(net.value(2, &k), Value::Counter(5));
    let refused = net.request(3, update(&k, Op::Add(1)));
    match net.answers.remove(&refused).unwrap() {
        Err(CrdtFailure::NotOwned { owners, .. }) => assert_eq!(owners.len(), 2, "{owners:?}"),
        other => panic!("node 3 took an object it does not own: {other:?}"),
    }
    assert!(net.replicas[&3].get(&k).is_none());

    // The slot moves to nodes 2 and 3: node 1 hands the counter over and drops it.
    place_all(&mut net, &[2, 3], 2);
    net.settle(2_500);
    assert_eq!(net.value(3, &k), Value::Counter(5));
    assert!(net.replicas[&1].get(&k).is_none(), "node 1 still holds what it no longer owns");
    assert_eq!(net.replicas[&1].handed_off(), 1);
    let stored = net.stores[&1].load().unwrap();
    assert_eq!(stored, vec![(k.clone(), Stored::Dropped(1))]);

    // Back to nodes 1 and 2: node 1's next add waits for its own first one to come back.
    place_all(&mut net, &[1, 2], 3);
    let id = net.request(1, update(&k, Op::Add(1)));
    assert!(!net.answers.contains_key(&id), "answered before node 1 had its own earlier add back");
    net.settle(100);
    assert_eq!(net.answers.remove(&id).unwrap().unwrap().value, Value::Counter(6));
    net.settle(2_500);
    for node in [1, 2] {
        assert_eq!(net.value(node, &k), Value::Counter(6), "node {node}");
    }
    assert!(net.replicas[&3].get(&k).is_none(), "node 3 still holds what it no longer owns");
}

fn place_all(net: &mut Net, nodes: &[u64], v: u64) {
    for r in net.replicas.values_mut() {
        r.set_placement(owned_by(nodes, v));
    }
}

/// A node that dropped a counter, owning it again, takes a peer's delta first (so it holds the
/// object, without its own earlier dots) and a state while it owned nothing: its next update
/// still waits for its own earlier dots, and no acknowledged add is lost (a reviewer's case:
/// dot 1:1 issued twice lost the first add).
#[test]
fn a_node_owning_a_dropped_object_again_never_reissues_a_dot() {
    let mut net = Net::new(3);
    let k = key(Kind::PnCounter, "hits");
    place_all(&mut net, &[1, 2], 1);
    net.request(1, update(&k, Op::Add(5)));
    net.settle(20);
    place_all(&mut net, &[2, 3], 2);
    net.settle(2_500);
    assert!(net.replicas[&1].get(&k).is_none(), "not dropped");
    // A state reaching node 1 while it owns nothing is ignored, and keeps the marker.
    let state = net.replicas[&3].get(&k).unwrap().clone();
    net.deliver(3, 1, Gossip::States(vec![(k.clone(), state)]));
    place_all(&mut net, &[1, 2], 3);
    net.request(2, update(&k, Op::Add(1)));
    let delta = net.take_deltas(2, 1);
    net.deliver(2, 1, delta);
    assert!(net.replicas[&1].get(&k).is_some(), "node 1 holds the object again, without its own add");
    let id = net.request(1, update(&k, Op::Add(3)));
    assert!(!net.answers.contains_key(&id), "node 1 updated before its own earlier add was back");
    net.settle(2_500);
    assert_eq!(net.answers.remove(&id).unwrap().unwrap().value, Value::Counter(9));
    for node in [1, 2] {
        assert_eq!(net.value(node, &k), Value::Counter(9), "node {node}");
    }
    // Back with its dots: the marker is gone from node 1's disk too.
    let stored = net.stores[&1].load().unwrap();
    assert!(stored.iter().all(|(_, s)| matches!(s, Stored::State(_))), "{stored:?}");
}

/// A subtraction waiting for rights on a node that stops owning the counter fails (nothing
/// applied), and no owner gives rights to a node that does not own the counter: every right
/// stays where it can be spent (a reviewer's case: rights given to the leaving node were
/// stranded there after it dropped the object).
#[test]
fn rights_never_go_to_a_node_that_no_longer_owns_the_counter() {
    let mut net = Net::new(3);
    let k = key(Kind::BoundedCounter, "seats");
    place_all(&mut net, &[1, 2], 1);
    net.request(2, update(&k, Op::Add(10)));
    net.settle(20);
    let id = net.request(1, update(&k, Op::Subtract(3)));
    assert!(!net.answers.contains_key(&id), "the subtraction waits for rights");
    place_all(&mut net, &[2, 3], 2);
    net.round(1);
    match net.answers.remove(&id) {
        Some(Err(CrdtFailure::NotOwned { .. })) => {}
        other => panic!("the waiting subtraction should fail as not owned: {other:?}"),
    }
    net.settle(3_000);
    let rights = |net: &mut Net, n: u64| match net.value(n, &k) {
        Value::Bounded { value, rights } => (value, rights),
        v => panic!("{v:?}"),
    };
    let (v2, r2) = rights(&mut net, 2);
    let (v3, r3) = rights(&mut net, 3);
    assert_eq!((v2, v3, r2 + r3), (10, 10, 10), "rights stranded outside the owners");
    assert!(net.replicas[&1].get(&k).is_none());
}

/// A node restarted with a stale copy of a counter it no longer owns (rights it had already
/// given away, its own last dot beyond the copy): every owner holds all the copy has, yet the
/// node can neither drop it (rights left) nor give the rights (its dots are not back). It pulls
/// an owner's state, sees the rights gone, and drops it (a reviewer's case: it stayed stuck).
#[test]
fn a_stale_foreign_copy_is_refreshed_and_dropped() {
    use baton_core::Hlc;
    let mut net = Net::new(3);
    let k = key(Kind::BoundedCounter, "seats");
    let mut stale = Kind::BoundedCounter.empty();
    stale.update(&k.name, 1, Op::Add(5), Hlc::default()).unwrap();
    let mut current = stale.clone();
    current.update(&k.name, 1, Op::Transfer { to: 2, n: 5 }, Hlc::default()).unwrap();
    let ids = [1, 2, 3];
    for id in [2, 3] {
        net.replicas
            .insert(id, Replica::new(ReplicaConfig::new(id), ids, vec![(k.clone(), Stored::State(current.clone()))]));
    }
    let recovered = vec![(k.clone(), Stored::State(stale)), (k.clone(), Stored::Dropped(2))];
    net.replicas.insert(1, Replica::new(ReplicaConfig::new(1), ids, recovered));
    place_all(&mut net, &[2, 3], 1);
    assert_eq!(net.replicas[&1].foreign_len(), 1);
    net.settle(5_000);
    assert!(net.replicas[&1].get(&k).is_none(), "the stale copy is still held");
    assert_eq!(net.replicas[&1].handed_off(), 1);
    assert_eq!(net.value(2, &k), Value::Bounded { value: 5, rights: 5 });
}
