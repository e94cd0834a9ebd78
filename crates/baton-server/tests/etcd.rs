//! etcd's API on a 3-node cluster in this process, through the `etcd-client` crate (a client
//! Rust users of etcd already have): KV, leases, watches across a leader failure, Lock and
//! Election with their failure cases.

mod common;

use std::time::{Duration, Instant};

use baton_core::topology::ETCD_GROUP;
use common::TestCluster;
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, LockOptions, ProclaimOptions, PutOptions, ResignOptions, Txn,
    TxnOp, WatchOptions,
};

async fn connect(endpoints: &[String]) -> Client {
    Client::connect(endpoints, None).await.unwrap()
}

/// Waits until a linearizable read succeeds through every node (the keyspace group has a leader
/// every node knows).
async fn ready(c: &TestCluster) {
    for ep in c.etcd_endpoints() {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut client = connect(std::slice::from_ref(&ep)).await;
        while client.get("ready?", None).await.is_err() {
            assert!(Instant::now() < deadline, "{ep} never served a read");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Waits (at most 10 s) until `prefix` holds exactly `n` keys: contenders have queued.
async fn wait_keys(client: &mut Client, prefix: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let count = client.get(prefix, Some(GetOptions::new().with_prefix().with_count_only())).await.unwrap().count();
        if count == n {
            return;
        }
        assert!(Instant::now() < deadline, "{prefix} holds {count} keys, never {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The node that leads the etcd keyspace's group, as every running node agrees.
async fn keyspace_leader(c: &TestCluster) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut seen = Vec::new();
        for id in c.servers.keys() {
            if let Ok(s) = baton_client::Client::status_of(&c.client_addrs[id]).await {
                seen.extend(s.groups.iter().filter(|g| g.id == ETCD_GROUP).map(|g| g.leader));
            }
        }
        if seen.len() == c.servers.len() && seen[0] != 0 && seen.iter().all(|l| *l == seen[0]) {
            return seen[0];
        }
        assert!(Instant::now() < deadline, "no agreed keyspace leader: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kv_txn_and_leases_through_the_etcd_client_crate() {
    let c = TestCluster::with_etcd(3, 2).await;
    ready(&c).await;
    let mut client = connect(&c.etcd_endpoints()).await;
    let first = client.put("a/1", "one", None).await.unwrap().header().unwrap().revision();
    client.put("a/2", "two", None).await.unwrap();
    let r = client.put("a/1", "uno", Some(PutOptions::new().with_prev_key())).await.unwrap();
    assert_eq!(r.prev_key().unwrap().value(), b"one");
    let got = client.get("a/", Some(GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(got.count(), 2);
    assert_eq!(got.kvs()[0].value(), b"uno");
    assert_eq!(got.kvs()[0].create_revision(), first);
    assert_eq!(got.kvs()[0].version(), 2);
    let old = client.get("a/1", Some(GetOptions::new().with_revision(first))).await.unwrap();
    assert_eq!(old.kvs()[0].value(), b"one");

    // A transaction: compare, then branch.
    let txn = Txn::new()
        .when([Compare::value("a/1", CompareOp::Equal, "uno")])
        .and_then([TxnOp::put("a/3", "three", None), TxnOp::get("a/", Some(GetOptions::new().with_prefix()))])
        .or_else([TxnOp::delete("a/1", None)]);
    let t = client.txn(txn).await.unwrap();
    assert!(t.succeeded());
    assert_eq!(client.get("a/", Some(GetOptions::new().with_prefix().with_count_only())).await.unwrap().count(), 3);

    // A lease keeps its keys while renewed and takes them when it is revoked.
    let lease = client.lease_grant(5, None).await.unwrap().id();
    client.put("l/1", "x", Some(PutOptions::new().with_lease(lease))).await.unwrap();
    let (mut keeper, mut renewals) = client.lease_keep_alive(lease).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let renewed = renewals.message().await.unwrap().unwrap();
    assert_eq!((renewed.id(), renewed.ttl()), (lease, 5));
    let ttl =
        client.lease_time_to_live(lease, Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys())).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 5);
    assert!(ttl.ttl() >= 3 && ttl.ttl() <= 5, "remaining {}", ttl.ttl());
    assert_eq!(ttl.keys(), [b"l/1".to_vec()]);
    assert!(client.leases().await.unwrap().leases().iter().any(|l| l.id() == lease));
    client.lease_revoke(lease).await.unwrap();
    assert_eq!(client.get("l/1", None).await.unwrap().count(), 0);
    assert_eq!(client.lease_time_to_live(lease, None).await.unwrap().ttl(), -1);
    let err = client.put("l/2", "x", Some(PutOptions::new().with_lease(lease))).await.unwrap_err();
    assert!(err.to_string().contains("requested lease not found"), "{err}");

    // An unrenewed lease expires on its own, and its keys go with it.
    let short = client.lease_grant(2, None).await.unwrap().id();
    client.put("l/3", "x", Some(PutOptions::new().with_lease(short))).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get("l/3", None).await.unwrap().count() == 1 {
        assert!(Instant::now() < deadline, "an unrenewed 2 s lease never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Compaction: older revisions are refused with etcd's error.
    client.compact(first + 1, None).await.unwrap();
    let err = client.get("a/1", Some(GetOptions::new().with_revision(first))).await.unwrap_err();
    assert!(err.to_string().contains("required revision has been compacted"), "{err}");
}

/// Every acknowledged write reaches a watcher exactly once and in revision order while the
/// keyspace's leader is stopped and another takes over; a watcher that reconnects to another
/// node from the revision after its last event misses and repeats nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watches_see_each_write_once_in_order_across_a_leader_failure() {
    let mut c = TestCluster::with_etcd(3, 1).await;
    ready(&c).await;
    let leader = keyspace_leader(&c).await;
    let others: Vec<u64> = c.servers.keys().copied().filter(|id| *id != leader).collect();
    let (watch_node, other_node) = (others[0], others[1]);
    let mut watcher = connect(&[c.etcd_addrs[&watch_node].clone()]).await;
    let start = watcher.get("w/", None).await.unwrap().header().unwrap().revision() + 1;
    let mut stream =
        watcher.watch("w/", Some(WatchOptions::new().with_prefix().with_start_revision(start))).await.unwrap();

    // Writes through the node that is neither the leader nor the watcher's, before and after
    // the leader stops; only acknowledged ones are expected.
    let mut writer = connect(&[c.etcd_addrs[&other_node].clone()]).await;
    let mut acked = Vec::new();
    for i in 0..20 {
        let r = writer.put(format!("w/{i}"), i.to_string(), None).await.unwrap();
        acked.push(r.header().unwrap().revision());
    }
    c.stop(leader).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 20;
    while acked.len() < 40 {
        assert!(Instant::now() < deadline, "writes did not resume after the leader stopped");
        if let Ok(r) = writer.put(format!("w/{i}"), i.to_string(), None).await {
            acked.push(r.header().unwrap().revision());
            i += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let mut seen: Vec<i64> = Vec::new();
    while seen.len() < 30 {
        let resp = tokio::time::timeout(Duration::from_secs(20), stream.message()).await.unwrap().unwrap().unwrap();
        assert!(!resp.canceled(), "watch cancelled: {}", resp.cancel_reason());
        seen.extend(resp.events().iter().map(|e| e.kv().unwrap().mod_revision()));
    }
    drop(stream);
    // The watcher moves to the other node and resumes after its last event.
    let mut again = connect(&[c.etcd_addrs[&other_node].clone()]).await;
    let resume = *seen.last().unwrap() + 1;
    let mut stream =
        again.watch("w/", Some(WatchOptions::new().with_prefix().with_start_revision(resume))).await.unwrap();
    while seen.len() < acked.len() {
        let resp = tokio::time::timeout(Duration::from_secs(20), stream.message()).await.unwrap().unwrap().unwrap();
        assert!(resp.events().iter().all(|e| e.event_type() == EventType::Put));
        seen.extend(resp.events().iter().map(|e| e.kv().unwrap().mod_revision()));
    }
    assert_eq!(seen, acked, "the watcher saw every acknowledged write once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_and_election_follow_etcds_recipes() {
    let c = TestCluster::with_etcd(3, 1).await;
    ready(&c).await;
    let eps = c.etcd_endpoints();
    let mut a = connect(&eps).await;
    let mut b = connect(&eps).await;
    let la = a.lease_grant(30, None).await.unwrap().id();
    let lb = b.lease_grant(30, None).await.unwrap().id();

    // The lock's key is name/<lease hex>; a second contender waits until the first unlocks.
    let held = a.lock("job", Some(LockOptions::new().with_lease(la))).await.unwrap();
    assert_eq!(held.key(), format!("job/{la:x}").as_bytes());
    let waiting = tokio::spawn(async move {
        let r = b.lock("job", Some(LockOptions::new().with_lease(lb))).await;
        (b, r)
    });
    // Once its key is queued behind the holder's, it must still be waiting.
    wait_keys(&mut a, "job/", 2).await;
    assert!(!waiting.is_finished(), "the second contender got a held lock");
    a.unlock(held.key()).await.unwrap();
    let (mut b, second) = tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap();
    let second = second.unwrap();
    assert_eq!(second.key(), format!("job/{lb:x}").as_bytes());

    // A waiter whose lease is revoked while it waits fails with etcd's "session expired".
    let lc = a.lease_grant(30, None).await.unwrap().id();
    let mut c2 = connect(&eps).await;
    let waiting = tokio::spawn(async move { c2.lock("job", Some(LockOptions::new().with_lease(lc))).await });
    wait_keys(&mut a, "job/", 2).await;
    a.lease_revoke(lc).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap().unwrap_err();
    assert!(err.to_string().contains("session expired"), "{err}");
    b.unlock(second.key()).await.unwrap();
    assert_eq!(a.get("job/", Some(GetOptions::new().with_prefix())).await.unwrap().count(), 0);

    // A caller that gives up while waiting leaves no key behind.
    let held = a.lock("job", Some(LockOptions::new().with_lease(la))).await.unwrap();
    let mut quitter = connect(&eps).await;
    let gave_up = tokio::spawn(async move { quitter.lock("job", Some(LockOptions::new().with_lease(lb))).await });
    wait_keys(&mut a, "job/", 2).await;
    assert!(!gave_up.is_finished(), "the lock is held: the second caller must still wait");
    gave_up.abort(); // the client goes away: its call is cancelled
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.get("job/", Some(GetOptions::new().with_prefix())).await.unwrap().count() != 1 {
        assert!(Instant::now() < deadline, "an abandoned waiter's key stayed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.unlock(held.key()).await.unwrap();

    // Election: campaign, leader, proclaim, observe, resign.
    let won = a.campaign("office", "alice", la).await.unwrap();
    let alice = won.leader().unwrap().clone();
    assert_eq!(alice.key(), format!("office/{la:x}").as_bytes());
    assert_eq!(a.leader("office").await.unwrap().kv().unwrap().value(), b"alice");
    let mut observer = b.observe("office").await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), observer.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.kv().unwrap().value(), b"alice");
    a.proclaim("alice-2", Some(ProclaimOptions::new().with_leader(alice.clone()))).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), observer.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(next.kv().unwrap().value(), b"alice-2");
    let mut bob = connect(&eps).await;
    let campaign = tokio::spawn(async move { bob.campaign("office", "bob", lb).await });
    wait_keys(&mut a, "office/", 2).await;
    assert!(!campaign.is_finished(), "bob led while alice did");
    a.resign(Some(ResignOptions::new().with_leader(alice.clone()))).await.unwrap();
    let bob_won = tokio::time::timeout(Duration::from_secs(10), campaign).await.unwrap().unwrap().unwrap();
    assert_eq!(bob_won.leader().unwrap().key(), format!("office/{lb:x}").as_bytes());
    let next = tokio::time::timeout(Duration::from_secs(10), observer.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(next.kv().unwrap().value(), b"bob");
    // alice no longer leads: proclaiming is refused with etcd's message.
    let err = a.proclaim("again", Some(ProclaimOptions::new().with_leader(alice))).await.unwrap_err();
    assert!(err.to_string().contains("election: not leader"), "{err}");
    let err = a.leader("nobody").await.unwrap_err();
    assert!(err.to_string().contains("election: no leader"), "{err}");
}

/// The quota: once the kept history would outgrow it, NOSPACE is raised and writes that add
/// data are refused with etcd's error everywhere, while reads, deletes and compaction go on;
/// after a compaction frees space and the alarm is disarmed, writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_quota_raises_nospace_until_space_is_freed_and_the_alarm_disarmed() {
    use etcd_client::{AlarmAction, AlarmOptions, AlarmType};
    let c = TestCluster::with_etcd_quota(3, 1, 16 * 1024).await;
    ready(&c).await;
    let mut client = connect(&c.etcd_endpoints()).await;
    let value = "v".repeat(1000);
    let mut refused = None;
    for i in 0..100 {
        match client.put(format!("q/{}", i % 4), value.clone(), None).await {
            Ok(_) => continue,
            Err(e) => {
                refused = Some((i, e.to_string()));
                break;
            }
        }
    }
    let (n, err) = refused.expect("100 KB of writes never hit a 16 KiB quota");
    assert!(n >= 10, "refused after only {n} writes");
    assert!(err.contains("etcdserver: mvcc: database space exceeded"), "{err}");
    let alarms = client.alarm(AlarmAction::Get, AlarmType::None, None).await.unwrap();
    assert_eq!(alarms.alarms().len(), 1);
    assert_eq!(alarms.alarms()[0].alarm(), AlarmType::Nospace);
    let status = client.status().await.unwrap();
    assert!(status.errors().iter().any(|e| e.contains("NOSPACE")), "{:?}", status.errors());
    // Everything that adds data is refused on every node; reads and deletes are not.
    for ep in c.etcd_endpoints() {
        let mut one = connect(&[ep]).await;
        let e = one.put("q/x", "tiny", None).await.unwrap_err();
        assert!(e.to_string().contains("database space exceeded"), "{e}");
    }
    let txn = Txn::new().and_then([TxnOp::put("q/y", "tiny", None)]);
    assert!(client.txn(txn).await.unwrap_err().to_string().contains("database space exceeded"));
    assert!(client.lease_grant(10, None).await.unwrap_err().to_string().contains("database space exceeded"));
    assert_eq!(client.get("q/", Some(GetOptions::new().with_prefix())).await.unwrap().count(), 4);
    let deleted = client.delete("q/3", None).await.unwrap();
    // Compacting the history frees space; disarming lets writes in again.
    client.compact(deleted.header().unwrap().revision(), None).await.unwrap();
    let mut disarm = AlarmOptions::new();
    disarm.with_member(alarms.alarms()[0].member_id());
    client.alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(disarm)).await.unwrap();
    assert!(client.alarm(AlarmAction::Get, AlarmType::None, None).await.unwrap().alarms().is_empty());
    client.put("q/after", "ok", None).await.unwrap();
}

/// Review finding: a progress answer named the store's revision while events at or below it
/// were still unsent. Every progress answer must come after every event up to its revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_progress_answer_never_runs_ahead_of_the_events_sent() {
    let c = TestCluster::with_etcd(3, 1).await;
    ready(&c).await;
    let eps = c.etcd_endpoints();
    let mut watcher = connect(&eps[..1]).await;
    let start = watcher.get("p/", None).await.unwrap().header().unwrap().revision() + 1;
    let (mut requests, mut responses) =
        watcher.watch("p/", Some(WatchOptions::new().with_prefix().with_start_revision(start))).await.unwrap().split();
    let writer = {
        let mut w = connect(&eps[1..]).await;
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..200 {
                acked.push(
                    w.put(format!("p/{}", i % 7), i.to_string(), None).await.unwrap().header().unwrap().revision(),
                );
            }
            acked
        })
    };
    let mut seen: Vec<i64> = Vec::new();
    // Each progress answer's revision, and how many events had arrived before it.
    let mut promises: Vec<(i64, usize)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 200 {
        assert!(Instant::now() < deadline, "saw {} of 200 events", seen.len());
        requests.request_progress().await.unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), responses.message()).await.unwrap().unwrap().unwrap();
        if resp.events().is_empty() && resp.watch_id() == -1 {
            promises.push((resp.header().unwrap().revision(), seen.len()));
        }
        seen.extend(resp.events().iter().map(|e| e.kv().unwrap().mod_revision()));
    }
    let acked = writer.await.unwrap();
    assert_eq!(seen, acked);
    assert!(promises.len() > 10, "only {} progress answers", promises.len());
    for (promised, arrived) in promises {
        let due = acked.iter().filter(|r| **r <= promised).count();
        assert!(
            due <= arrived,
            "a progress answer promised revision {promised} when only {arrived} of the {due} events up to it had arrived"
        );
    }
}

/// Review finding: a waiter whose key was deleted and made again by another call with the same
/// lease woke up, failed with "session expired" as it should, and then deleted the key, which
/// was the other call's by then: a third contender could have been granted next to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiter_whose_key_was_made_again_fails_without_deleting_it() {
    let c = TestCluster::with_etcd(3, 1).await;
    ready(&c).await;
    let eps = c.etcd_endpoints();
    let mut holder = connect(&eps).await;
    let lh = holder.lease_grant(30, None).await.unwrap().id();
    let shared = holder.lease_grant(30, None).await.unwrap().id();
    let held = holder.lock("job", Some(LockOptions::new().with_lease(lh))).await.unwrap();
    let key = format!("job/{shared:x}");
    let mut a = connect(&eps).await;
    let first = tokio::spawn(async move { a.lock("job", Some(LockOptions::new().with_lease(shared))).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while holder.get(key.as_str(), None).await.unwrap().count() == 0 {
        assert!(Instant::now() < deadline, "the first waiter's key never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The key goes and a second call with the same lease makes it again.
    holder.delete(key.as_str(), None).await.unwrap();
    let mut b = connect(&eps).await;
    let second = tokio::spawn(async move { b.lock("job", Some(LockOptions::new().with_lease(shared))).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while holder.get(key.as_str(), None).await.unwrap().count() == 0 {
        assert!(Instant::now() < deadline, "the second waiter's key never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    holder.unlock(held.key()).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), first).await.unwrap().unwrap().unwrap_err();
    assert!(err.to_string().contains("session expired"), "{err}");
    let granted = tokio::time::timeout(Duration::from_secs(10), second).await.unwrap().unwrap().unwrap();
    assert_eq!(granted.key(), key.as_bytes());
    // The key is still there, the second call's. (An absence: the old code's delete was sent as
    // the first call failed, so it is watched for a while, not waited for.)
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        assert_eq!(holder.get(key.as_str(), None).await.unwrap().count(), 1, "the second call's key was deleted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
