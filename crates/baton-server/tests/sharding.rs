//! A sharded cluster: three real nodes with their names spread over several Raft groups.
//! Routing straight to each group's leader, redirects for a stale map, sessions that span groups
//! (and expire in all of them), and slot moves under load with the exclusion and fencing checks
//! running.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_client::{Client, ClientOptions};
use baton_proto::v1 as pb;

mod common;
use common::TestCluster;

/// A name (with `prefix`) that the map of `t` puts in `group`.
fn name_in(t: &pb::TopologyResponse, group: u64, prefix: &str) -> String {
    let g = t.groups.iter().find(|g| g.id == group).expect("group exists");
    // Bounded: a group without slots (the etcd keyspace's) has no name.
    (0..1_000_000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|n| {
            let s = baton_core::slot_of(n) as u32;
            g.slots.iter().any(|r| (r.start..=r.end).contains(&s))
        })
        .expect("some name hashes there")
}

/// Waits until every group has a leader and each node leads its share (the placement).
async fn settled(client: &Client, nodes: usize) -> pb::TopologyResponse {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = client.topology().await.unwrap();
        let mut leads: BTreeMap<u64, usize> = BTreeMap::new();
        for g in &t.groups {
            *leads.entry(g.leader).or_default() += 1;
        }
        let (low, high) = (t.groups.len() / nodes, t.groups.len().div_ceil(nodes));
        if !leads.contains_key(&0) && leads.len() == nodes && leads.values().all(|n| (low..=high).contains(n)) {
            return t;
        }
        assert!(Instant::now() < deadline, "leaderships never spread: {leads:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_group_is_served_by_its_leader_and_a_session_spans_groups() {
    let mut cluster = TestCluster::start_sharded(3, 20_000, false, 12).await;
    let client = cluster.client().await;
    let t = settled(&client, 3).await;
    // Twelve data groups and the etcd keyspace's group (no slots).
    assert_eq!(t.groups.len(), 13);
    let etcd = t.groups.iter().find(|g| g.id == baton_core::topology::ETCD_GROUP).expect("the etcd group");
    assert!(etcd.slots.is_empty());
    let session = client.session(Duration::from_secs(5)).await.unwrap();
    let mut guards = Vec::new();
    for g in t.groups.iter().filter(|g| !g.slots.is_empty()) {
        let name = name_in(&t, g.id, "lock");
        let guard = session.lock(&name, None).await.unwrap().expect("free lock is granted");
        // Routed to the group's leader: the address that answered for it.
        let (group, addr) = client.route_of(&name);
        assert_eq!(group, g.id);
        assert!(cluster.client_addrs.values().any(|a| *a == addr));
        let d = client.describe(&name).await.unwrap();
        assert_eq!((d.holder_session, d.token), (session.id(), guard.token()));
        let counter = name_in(&t, g.id, "counter");
        assert_eq!(client.counter_add(&counter, g.id as i64).await.unwrap(), g.id as i64);
        guards.push(guard);
    }
    // One session, renewed in all twelve groups by one stream per node.
    let renewals = client.renewals();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(client.renewals() > renewals, "no renewal");
    assert!(session.is_alive());
    // `baton status`'s groups list slots and replicas.
    let s = Client::status_of(&cluster.client_addrs[&1]).await.unwrap();
    let data: Vec<&pb::GroupStatus> =
        s.groups.iter().filter(|g| g.id != 0 && g.id != baton_core::topology::ETCD_GROUP).collect();
    assert_eq!(data.len(), 12);
    assert!(data.iter().all(|g| !g.slots.is_empty() && g.replicas == vec![1, 2, 3]));
    for g in guards {
        g.release().await.unwrap();
    }
    session.close().await.unwrap();
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
}

/// A session's expiry releases what it holds in every group, as in one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_session_releases_its_locks_in_every_group() {
    let mut cluster = TestCluster::start_sharded(3, 20_000, false, 6).await;
    let watcher = cluster.client().await;
    let t = settled(&watcher, 3).await;
    let names: Vec<String> =
        t.groups.iter().filter(|g| !g.slots.is_empty()).map(|g| name_in(&t, g.id, "held")).collect();
    let doomed =
        Client::connect_with(cluster.endpoints(), ClientOptions { client_id: "doomed".into(), ..Default::default() })
            .await
            .unwrap();
    let session = doomed.session(Duration::from_secs(2)).await.unwrap();
    let mut tokens = Vec::new();
    let mut guards = Vec::new();
    for n in &names {
        let g = session.lock(n, None).await.unwrap().expect("granted");
        tokens.push(g.token());
        guards.push(g);
    }
    let id = session.id();
    // The client dies holding them: guards dropped outside any runtime release nothing, and
    // with the last handle gone its keepalives stop. The session must end for these to be free.
    std::thread::spawn(move || drop(guards)).join().unwrap();
    drop(session);
    drop(doomed);
    let other = watcher.session(Duration::from_secs(10)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    for (n, old) in names.iter().zip(tokens) {
        let guard = loop {
            if let Some(g) = other.lock(n, None).await.unwrap() {
                break g;
            }
            assert!(Instant::now() < deadline, "{n} was never freed by the expiry of session {id}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(guard.token() > old, "{n}: token {} after {old}", guard.token());
        guard.release().await.unwrap();
    }
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
}

/// A request sent to a group that does not serve its name is refused whole with MOVED, naming
/// the group that does and its leader: the client's one retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_the_wrong_group_is_moved_with_the_owner() {
    let mut cluster = TestCluster::start_sharded(3, 20_000, false, 3).await;
    // (A node that has not caught up with the users and roles yet answers "not the leader"
    // instead of MOVED: wait for all of them.)
    cluster.ready().await;
    let client = cluster.client().await;
    let t = settled(&client, 3).await;
    let name = name_in(&t, 2, "c");
    let wrong = 3;
    let leader_of_wrong = t.groups.iter().find(|g| g.id == wrong).unwrap().leader;
    let mut raw = pb::baton_client::BatonClient::connect(format!("http://{}", cluster.client_addrs[&leader_of_wrong]))
        .await
        .unwrap();
    let add = pb::CounterRequest { name: name.clone(), op: Some(pb::counter_request::Op::Add(1)), group: wrong };
    let status = raw.counter(add).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let info = pb::ErrorInfo::of(&status).expect("typed detail");
    assert_eq!(info.reason, pb::error_info::Reason::Moved as i32);
    assert_eq!(info.group, 2);
    let owner_leader = t.groups.iter().find(|g| g.id == 2).unwrap().leader;
    assert_eq!(info.leader_addr, cluster.client_addrs[&owner_leader]);
    assert_eq!(info.topology_version, t.version);
    // Nothing was applied by the refusal.
    assert_eq!(client.counter_get(&name).await.unwrap(), 0);
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
}

/// What the workers saw: per name, the holder now and every token granted, in order.
#[derive(Default)]
struct Ledger {
    holding: BTreeSet<String>,
    tokens: BTreeMap<String, Vec<u64>>,
    violations: Vec<String>,
}

impl Ledger {
    fn granted(&mut self, name: &str, token: u64) {
        if !self.holding.insert(name.to_string()) {
            self.violations.push(format!("{name}: granted (token {token}) while held"));
        }
        let tokens = self.tokens.entry(name.to_string()).or_default();
        if tokens.last().is_some_and(|last| *last >= token) {
            self.violations.push(format!("{name}: token {token} after {:?}", tokens.last()));
        }
        tokens.push(token);
    }

    fn releasing(&mut self, name: &str) {
        self.holding.remove(name);
    }
}

/// Slots move back and forth while workers take and release locks on names in them: mutual
/// exclusion holds, tokens keep growing per name across the moves, and nobody sees an error
/// (the clients retry the redirects).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_moves_under_load_keep_exclusion_and_token_order() {
    let mut cluster = TestCluster::start_sharded(3, 20_000, false, 4).await;
    let admin = cluster.client().await;
    let t = settled(&admin, 3).await;
    let (start, end) = {
        let g1 = t.groups.iter().find(|g| g.id == 1).unwrap();
        (g1.slots[0].start as u16, g1.slots[0].end as u16)
    };
    let names: Vec<String> = (0..4).map(|i| name_in(&t, 1, &format!("moving{i}"))).collect();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Instant::now() + Duration::from_secs(12);
    let mut workers = Vec::new();
    for w in 0..6 {
        let endpoints = cluster.endpoints();
        let names = names.clone();
        let ledger = ledger.clone();
        workers.push(tokio::spawn(async move {
            let options = ClientOptions { client_id: format!("worker{w}"), ..Default::default() };
            let client = Client::connect_with(endpoints, options).await.unwrap();
            let session = client.session(Duration::from_secs(3)).await.unwrap();
            let mut cycles = 0u32;
            let mut i = w;
            while Instant::now() < stop {
                let name = &names[i % names.len()];
                i += 1;
                let Some(g) =
                    session.lock(name, Some(Duration::from_secs(5))).await.map_err(|e| format!("lock {name}: {e}"))?
                else {
                    continue;
                };
                ledger.lock().unwrap().granted(name, g.token());
                tokio::time::sleep(Duration::from_millis(5)).await;
                if !g.is_lease_valid() {
                    return Err(format!("worker {w} lost its lease"));
                }
                ledger.lock().unwrap().releasing(name);
                g.release().await.map_err(|e| format!("release {name}: {e}"))?;
                cycles += 1;
            }
            Ok::<u32, String>(cycles)
        }));
    }
    // Move group 1's first range to group 2, then to group 3, then back to group 1.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut version = t.version;
    for to in [2, 3, 1] {
        let r = admin.move_slots(start, end, to).await.unwrap();
        assert!(r.version > version);
        version = r.version;
        let now = admin.topology().await.unwrap();
        let owner = now.groups.iter().find(|g| g.slots.iter().any(|s| s.start as u16 == start)).unwrap();
        assert_eq!(owner.id, to);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap().unwrap();
    }
    {
        let ledger = ledger.lock().unwrap();
        assert!(ledger.violations.is_empty(), "{:?}", ledger.violations);
        assert!(total > 50, "only {total} cycles");
        assert!(names.iter().all(|n| ledger.tokens.get(n).is_some_and(|t| t.len() > 3)), "a name starved");
    }
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
}

/// Membership online, under load: a fourth node joins (`--join`, then `AddNode`): every group
/// gets a replica on it, and the placement gives it leaderships; then a founding node leaves
/// (`RemoveNode`): its replicas go, its leaderships move first. Workers take and release locks
/// all along with the exclusion and token checks running, and see no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_and_leave_under_load() {
    let mut cluster = TestCluster::start_sharded(3, 20_000, false, 4).await;
    let admin = cluster.client().await;
    let t = settled(&admin, 3).await;
    let names: Vec<String> =
        t.groups.iter().filter(|g| !g.slots.is_empty()).map(|g| name_in(&t, g.id, "member")).collect();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Instant::now() + Duration::from_secs(20);
    let mut workers = Vec::new();
    for w in 0..4 {
        let endpoints = cluster.endpoints();
        let (names, ledger) = (names.clone(), ledger.clone());
        workers.push(tokio::spawn(async move {
            let options = ClientOptions { client_id: format!("member-worker{w}"), ..Default::default() };
            let client = Client::connect_with(endpoints, options).await.unwrap();
            let session = client.session(Duration::from_secs(5)).await.unwrap();
            let (mut cycles, mut i) = (0u32, w);
            while Instant::now() < stop {
                let name = &names[i % names.len()];
                i += 1;
                let Some(g) =
                    session.lock(name, Some(Duration::from_secs(5))).await.map_err(|e| format!("lock {name}: {e}"))?
                else {
                    continue;
                };
                ledger.lock().unwrap().granted(name, g.token());
                tokio::time::sleep(Duration::from_millis(5)).await;
                if !g.is_lease_valid() {
                    return Err(format!("worker {w} lost its lease"));
                }
                ledger.lock().unwrap().releasing(name);
                g.release().await.map_err(|e| format!("release {name}: {e}"))?;
                cycles += 1;
            }
            Ok::<u32, String>(cycles)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (client_addr, peer_addr) = cluster.join(4).await;
    assert!(admin.add_node(4, &peer_addr, &client_addr).await.unwrap().changed);
    // Every group's voters (at the node leading it) reach the placement the meta group made.
    async fn placement_reached(cluster: &TestCluster, admin: &Client) -> bool {
        let Ok(t) = admin.topology().await else { return false };
        let mut statuses = Vec::new();
        for addr in cluster.client_addrs.values() {
            if let Ok(s) = Client::status_of(addr).await {
                statuses.push(s);
            }
        }
        t.groups.iter().all(|g| {
            statuses.iter().any(|s| {
                s.groups.iter().any(|x| {
                    let mut have = x.replicas.clone();
                    have.sort_unstable();
                    x.id == g.id && x.role == "leader" && have == g.replicas
                })
            })
        })
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    while !placement_reached(&cluster, &admin).await {
        assert!(Instant::now() < deadline, "the groups never reached the placement with node 4");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let t = admin.topology().await.unwrap();
    assert!(t.groups.iter().any(|g| g.replicas.contains(&4)), "node 4 got no replica");
    // Leader placement hands node 4 some data groups (asked of node 4 itself: the node the admin
    // client reaches may hold no replica of the groups node 4 leads).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = Client::status_of(&cluster.client_addrs[&4]).await;
        if s.is_ok_and(|s| s.groups.iter().any(|g| g.id != 0 && g.role == "leader")) {
            break;
        }
        assert!(Instant::now() < deadline, "placement gave node 4 no leadership");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Node 1 leaves.
    assert!(admin.remove_node(1).await.unwrap().changed);
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let t = admin.topology().await.unwrap();
        if t.groups.iter().all(|g| !g.replicas.contains(&1)) && placement_reached(&cluster, &admin).await {
            break;
        }
        assert!(Instant::now() < deadline, "node 1 never left");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.stop(1).await;
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap().unwrap();
    }
    {
        let ledger = ledger.lock().unwrap();
        assert!(ledger.violations.is_empty(), "{:?}", ledger.violations);
        assert!(total > 50, "only {total} cycles");
    }
    for id in [2, 3, 4] {
        cluster.stop(id).await;
    }
}

/// Hibernation over the real transport: idle groups fall asleep at every node (their leaders'
/// notices travel on the node channel of the peer streams); a lock wakes its group and is
/// granted; when a node that leads sleeping groups stops, the others elect new leaders for them
/// and serve every group again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_groups_sleep_and_a_stopped_sleeping_leader_is_replaced() {
    let mut cluster = TestCluster::start_sharded(3, 20_000, false, 6).await;
    let client = cluster.client().await;
    let t = settled(&client, 3).await;
    let all_asleep = |s: &pb::StatusResponse| s.groups.iter().all(|g| g.asleep && g.leader != 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in [1, 2, 3] {
        loop {
            let s = Client::status_of(&cluster.client_addrs[&id]).await.unwrap();
            if all_asleep(&s) {
                break;
            }
            assert!(Instant::now() < deadline, "node {id}'s groups never all slept: {:?}", s.groups);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Work wakes a group: a lock in group 1 is granted (and the group is awake at its leader
    // while the session renews there).
    let session = client.session(Duration::from_secs(5)).await.unwrap();
    let name = name_in(&t, 1, "wake");
    let guard = session.lock(&name, None).await.unwrap().expect("granted");
    guard.release().await.unwrap();
    session.close().await.unwrap();
    // Stop a node that leads some group while those groups sleep again.
    let victim = t.groups.iter().find(|g| g.id != 1).map(|g| g.leader).expect("a leader");
    let led: Vec<u64> = t.groups.iter().filter(|g| g.leader == victim).map(|g| g.id).collect();
    let survivor = [1, 2, 3].into_iter().find(|id| *id != victim).unwrap();
    loop {
        let s = Client::status_of(&cluster.client_addrs[&victim]).await.unwrap();
        if s.groups.iter().filter(|g| led.contains(&g.id)).all(|g| g.asleep) {
            break;
        }
        assert!(Instant::now() < deadline + Duration::from_secs(30), "{led:?} never slept again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.stop(victim).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = Client::status_of(&cluster.client_addrs[&survivor]).await.unwrap();
        let leaders: Vec<(u64, u64)> =
            s.groups.iter().filter(|g| led.contains(&g.id)).map(|g| (g.id, g.leader)).collect();
        if leaders.iter().all(|(_, l)| *l != 0 && *l != victim) {
            break;
        }
        assert!(Instant::now() < deadline, "no new leader for the stopped node's groups: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every group serves again (the client follows the new leaders).
    let session = client.session(Duration::from_secs(5)).await.unwrap();
    for g in t.groups.iter().filter(|g| !g.slots.is_empty()) {
        let name = name_in(&t, g.id, "after");
        let guard = session.lock(&name, None).await.unwrap().expect("granted");
        guard.release().await.unwrap();
    }
    session.close().await.unwrap();
    for id in [1, 2, 3] {
        if id != victim {
            cluster.stop(id).await;
        }
    }
}
