//! The coordination-free tier across real nodes over 127.0.0.1: updates on every node converge,
//! session reads follow the client to another node, converged reads, bounded counters borrowing
//! rights, and updates surviving restarts.

mod common;

use std::time::{Duration, Instant};

use baton_client::crdt::{Crdt, CrdtKind, ReadLevel};
use baton_client::{Client, ClientOptions};
use common::TestCluster;

/// A client that talks to the given nodes only, in order.
async fn client_at(c: &TestCluster, nodes: &[u64]) -> Client {
    let eps: Vec<String> = nodes.iter().map(|n| c.client_addrs[n].clone()).collect();
    let options = ClientOptions { discover: false, request_timeout: Duration::from_secs(10), ..Default::default() };
    Client::connect_with(eps, options).await.unwrap()
}

/// Waits until a local read on node `n` satisfies `ok`.
async fn until_local(
    c: &TestCluster,
    n: u64,
    kind: CrdtKind,
    name: &str,
    ok: impl Fn(&baton_client::crdt::CrdtValue) -> bool,
) {
    let tier = client_at(c, &[n]).await.crdt();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = tier.read(kind, name, ReadLevel::Local).await.unwrap();
        if ok(&v) {
            return;
        }
        assert!(Instant::now() < deadline, "node {n} never reached the expected state of {name}: {v:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_on_every_node_converge_and_read_levels_hold() {
    let c = TestCluster::start(3, 1000).await;
    c.ready().await;
    let mut tiers: Vec<Crdt> = Vec::new();
    for n in 1..=3 {
        tiers.push(client_at(&c, &[n]).await.crdt());
    }
    for (i, tier) in tiers.iter().enumerate() {
        for _ in 0..10 {
            let v = tier.add(CrdtKind::PnCounter, "hits", 1).await.unwrap();
            assert_eq!(v.node, i as u64 + 1, "answered by another node than asked");
        }
    }
    tiers[1].subtract(CrdtKind::PnCounter, "hits", 4).await.unwrap();
    // A converged read answers once every live node has every update the asked node had.
    let v = tiers[1].read(CrdtKind::PnCounter, "hits", ReadLevel::Converged).await.unwrap();
    assert!(v.value <= 26 && v.value >= 14, "{v:?}");
    for n in 1..=3 {
        until_local(&c, n, CrdtKind::PnCounter, "hits", |v| v.value == 26).await;
    }

    // Sets: an add on one node, a remove on another that saw it, an add on a third.
    tiers[0].insert(CrdtKind::OrSet, "online", "alice").await.unwrap();
    tiers[0].insert(CrdtKind::OrSet, "online", "bob").await.unwrap();
    until_local(&c, 2, CrdtKind::OrSet, "online", |v| v.members.len() == 2).await;
    tiers[1].remove("online", "alice").await.unwrap();
    tiers[2].insert(CrdtKind::OrSet, "online", "carol").await.unwrap();
    for n in 1..=3 {
        until_local(&c, n, CrdtKind::OrSet, "online", |v| v.members == ["bob", "carol"]).await;
    }

    // Read-your-writes across nodes: one session writes on node 1, then at once reads on
    // node 2, which answers only once it has the write (pulling it from node 1 if gossip has
    // not brought it yet).
    for i in 0..20 {
        let value = format!("v{i}");
        tiers[0].write(CrdtKind::LwwRegister, "flag", value.as_bytes()).await.unwrap();
        let v = tiers[0]
            .through(&client_at(&c, &[2]).await)
            .read(CrdtKind::LwwRegister, "flag", ReadLevel::Session)
            .await
            .unwrap();
        assert_eq!((v.node, v.values), (2, vec![value.into_bytes()]));
    }

    // Registers: MV keeps concurrent writes.
    tiers[0].write(CrdtKind::MvRegister, "cfg", b"a").await.unwrap();
    until_local(&c, 3, CrdtKind::MvRegister, "cfg", |v| v.values == [b"a".to_vec()]).await;
    tiers[2].write(CrdtKind::MvRegister, "cfg", b"b").await.unwrap();
    until_local(&c, 1, CrdtKind::MvRegister, "cfg", |v| v.values == [b"b".to_vec()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_counter_borrows_rights_and_refuses_to_go_below_zero() {
    let c = TestCluster::start(3, 1000).await;
    c.ready().await;
    let one = client_at(&c, &[1]).await.crdt();
    let two = client_at(&c, &[2]).await.crdt().with_timeout(Duration::from_secs(3));
    one.add(CrdtKind::BoundedCounter, "seats", 10).await.unwrap();
    until_local(&c, 2, CrdtKind::BoundedCounter, "seats", |v| v.value == 10).await;
    // Node 2 has no rights: it asks node 1 for some, then subtracts.
    let v = two.subtract(CrdtKind::BoundedCounter, "seats", 4).await.unwrap();
    assert_eq!(v.value, 6);
    let err = two.subtract(CrdtKind::BoundedCounter, "seats", 7).await.unwrap_err();
    assert!(err.to_string().contains("rights"), "{err}");
    for n in 1..=3 {
        until_local(&c, n, CrdtKind::BoundedCounter, "seats", |v| v.value == 6).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_updates_survive_restarts_and_reach_a_node_that_was_down() {
    let mut c = TestCluster::start(3, 1000).await;
    c.ready().await;
    c.stop(3).await;
    let one = client_at(&c, &[1]).await.crdt();
    for _ in 0..5 {
        one.add(CrdtKind::GCounter, "visits", 2).await.unwrap();
    }
    one.insert(CrdtKind::GSet, "seen", "x").await.unwrap();
    // Node 1 restarts: what it acknowledged is on its disk.
    c.stop(1).await;
    c.restart(1).await;
    c.restart(3).await;
    // Node 3 was down for all of it: anti-entropy brings it up to date.
    for n in 1..=3 {
        until_local(&c, n, CrdtKind::GCounter, "visits", |v| v.value == 10).await;
        until_local(&c, n, CrdtKind::GSet, "seen", |v| v.members == ["x"]).await;
    }
    let err = client_at(&c, &[2]).await.crdt().subtract(CrdtKind::GCounter, "visits", 1).await.unwrap_err();
    assert!(err.to_string().contains("subtraction"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_adds_of_one_client_are_combined_and_each_counted_once() {
    let c = TestCluster::start(3, 1000).await;
    c.ready().await;
    let client = client_at(&c, &[1]).await;
    let tasks: Vec<_> = (0..200u64)
        .map(|i| {
            let tier = client.crdt();
            tokio::spawn(async move {
                if i % 4 == 3 {
                    tier.subtract(CrdtKind::PnCounter, "combined", 1).await.map(|_| ())
                } else {
                    tier.add(CrdtKind::PnCounter, "combined", 2).await.map(|_| ())
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    // 150 adds of 2 and 50 subtractions of 1, on every node.
    for n in 1..=3 {
        until_local(&c, n, CrdtKind::PnCounter, "combined", |v| v.value == 250).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sees_the_current_value_then_changes_made_anywhere() {
    let c = TestCluster::start(3, 1000).await;
    c.ready().await;
    let one = client_at(&c, &[1]).await.crdt();
    one.add(CrdtKind::GCounter, "views", 5).await.unwrap();
    until_local(&c, 2, CrdtKind::GCounter, "views", |v| v.value == 5).await;
    let mut events = client_at(&c, &[2]).await.crdt().watch("views", false);
    let first = tokio::time::timeout(Duration::from_secs(10), events.recv()).await.unwrap().unwrap().unwrap();
    assert_eq!((first.r#type.as_str(), first.crdt_kind.as_str(), first.counter_value), ("crdt_value", "gcounter", 5));
    let sync = tokio::time::timeout(Duration::from_secs(10), events.recv()).await.unwrap().unwrap().unwrap();
    assert_eq!(sync.r#type, "crdt_sync", "live changes start after the values");
    one.add(CrdtKind::GCounter, "views", 2).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), events.recv()).await.unwrap().unwrap().unwrap();
    assert_eq!((next.r#type.as_str(), next.counter_value, next.local), ("crdt_changed", 7, false));
    // Counted in the node's metrics.
    let (status, body) = common::http_get(&c.http_addrs[&1], "/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("baton_crdt_requests_total{op=\"update\"} 2"), "{body}");
    assert!(body.contains("baton_crdt_objects 1"), "{body}");
}

/// The value of metric `name` (no labels) on node `n`, if it has one.
fn metric(c: &TestCluster, n: u64, name: &str) -> Option<f64> {
    let (_, body) = common::http_get(&c.http_addrs[&n], "/metrics");
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Placement over real nodes: 3 nodes, 3 groups of 2 replicas. An object lives on its group's
/// replicas: the third node refuses it, naming them, and the client goes there; a slot move
/// hands it to the new group's replicas, and the old replica that is not one of them drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_live_on_their_groups_replicas_and_move_with_their_slots() {
    use baton_proto::v1 as pb;
    let c = TestCluster::start_replicated(3, 3, 2).await;
    c.ready().await;
    let admin = c.client().await;
    let t = admin.topology().await.unwrap();
    let g = t.groups.iter().find(|g| !g.slots.is_empty() && g.replicas.len() == 2).expect("a data group").clone();
    let (start, end) = (g.slots[0].start, g.slots[0].end);
    let name = (0..1_000_000)
        .map(|i| format!("visits-{i}"))
        .find(|n| (start..=end).contains(&(baton_core::slot_of(n) as u32)))
        .expect("some name hashes there");
    let outsider = (1..=3).find(|n| !g.replicas.contains(n)).unwrap();

    // Asked of the outsider only, the client is sent to an owner.
    let tier = client_at(&c, &[outsider]).await.crdt();
    for _ in 0..5 {
        let v = tier.add(CrdtKind::GCounter, &name, 2).await.unwrap();
        assert!(g.replicas.contains(&v.node), "answered by node {}, not an owner {:?}", v.node, g.replicas);
    }
    for &o in &g.replicas {
        until_local(&c, o, CrdtKind::GCounter, &name, |v| v.value == 10).await;
    }
    let mut raw = raw_at(&c, outsider).await;
    let read = pb::CrdtRequest {
        kind: pb::CrdtKind::Gcounter as i32,
        name: name.clone(),
        op: Some(pb::crdt_request::Op::Read(pb::CrdtReadLevel::Local as i32)),
        ..Default::default()
    };
    let err = raw.crdt(read.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("holds no replica") && err.message().contains("ask node"), "{}", err.message());

    // The range moves to a group that the outsider holds a replica of.
    let to = t.groups.iter().find(|h| h.id != g.id && !h.slots.is_empty() && h.replicas.contains(&outsider)).unwrap();
    admin.move_slots(start as u16, end as u16, to.id).await.unwrap();
    until_local(&c, outsider, CrdtKind::GCounter, &name, |v| v.value == 10).await;
    let leaver = *g.replicas.iter().find(|n| !to.replicas.contains(n)).expect("an owner that leaves");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let refused = raw_at(&c, leaver).await.crdt(read.clone()).await.is_err();
        let (objects, handed) =
            (metric(&c, leaver, "baton_crdt_objects"), metric(&c, leaver, "baton_crdt_handed_off_total"));
        if refused && objects == Some(0.0) && handed == Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {leaver} kept the object: refused {refused}, objects {objects:?}, handed off {handed:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The new owners take updates.
    let v = client_at(&c, &[outsider]).await.crdt().add(CrdtKind::GCounter, &name, 1).await.unwrap();
    assert_eq!((v.node, v.value), (outsider, 11));
}

async fn raw_at(c: &TestCluster, n: u64) -> baton_proto::v1::baton_client::BatonClient<tonic::transport::Channel> {
    baton_proto::v1::baton_client::BatonClient::connect(format!("http://{}", c.client_addrs[&n])).await.unwrap()
}
