//! Three real nodes in one process, each with its own sockets on 127.0.0.1 and its own data
//! folder, driven through the Rust client: handoff, leader failover with waiters, whole-cluster
//! restart, snapshot catch-up, and clear errors for bad input.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use baton_client::{Client, ClientOptions, Error};
use tokio::net::TcpListener;

mod common;
use common::TestCluster;

const TTL: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_between_clients_is_fifo_and_fenced() {
    let mut cluster = TestCluster::start(3, 20_000).await;
    let client = cluster.client().await;
    let a = client.session(TTL).await.unwrap();
    let b = client.session(TTL).await.unwrap();
    let c = client.session(TTL).await.unwrap();
    let ga = a.lock("job", None).await.unwrap().expect("free lock is granted");
    assert!(b.lock("job", None).await.unwrap().is_none(), "try-once on a held lock fails");
    let (b2, c2) = (b.clone(), c.clone());
    let wb = tokio::spawn(async move { b2.lock("job", Some(Duration::from_secs(20))).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let wc = tokio::spawn(async move { c2.lock("job", Some(Duration::from_secs(20))).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let d = client.describe("job").await.unwrap();
    assert_eq!((d.holder_session, d.token), (a.id(), ga.token()));
    assert_eq!(d.waiters.iter().map(|w| w.session_id).collect::<Vec<_>>(), vec![b.id(), c.id()]);
    let first = ga.token();
    ga.release().await.unwrap();
    let gb = wb.await.unwrap().unwrap().expect("b is next");
    assert!(gb.token() > first);
    assert!(!wc.is_finished(), "c still waits");
    gb.release().await.unwrap();
    let gc = wc.await.unwrap().unwrap().expect("c is last");
    assert!(gc.token() > first + 1);
    gc.release().await.unwrap();
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_keeps_the_holder_and_serves_waiters() {
    let mut cluster = TestCluster::start(3, 20_000).await;
    let client = cluster.client().await;
    let holder = client.session(TTL).await.unwrap();
    let waiter = client.session(TTL).await.unwrap();
    let g = holder.lock("res", None).await.unwrap().unwrap();
    let w = waiter.clone();
    let wait = tokio::spawn(async move { w.lock("res", Some(Duration::from_secs(30))).await });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let old = cluster.leader().await;
    cluster.stop(old).await;
    // Longer than the TTL: only the new leader's grace and the keepalives that reach it keep
    // the holder's session alive.
    tokio::time::sleep(TTL + Duration::from_secs(1)).await;
    let new = cluster.leader().await;
    assert_ne!(new, old);
    assert!(g.is_lease_valid(), "holder's lease survived the failover");
    let d = client.describe("res").await.unwrap();
    assert_eq!((d.holder_session, d.token), (holder.id(), g.token()), "holder kept the lock");
    assert!(!wait.is_finished(), "waiter still waits");

    let first = g.token();
    g.release().await.unwrap();
    let gw = wait.await.unwrap().unwrap().expect("waiter granted after release");
    assert!(gw.token() > first, "tokens increase across the failover");
    gw.release().await.unwrap();

    // The old leader rejoins and catches up.
    cluster.restart(old).await;
    let leader = cluster.leader().await;
    assert!(cluster.servers.contains_key(&leader));
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_restart_keeps_locks_and_tokens() {
    let mut cluster = TestCluster::start(3, 20_000).await;
    let client = cluster.client().await;
    let s = client.session(Duration::from_secs(30)).await.unwrap();
    let g = s.lock("kept", None).await.unwrap().unwrap();
    let token = g.token();
    std::mem::forget(g); // keep holding across the restart
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
    for id in [1, 2, 3] {
        cluster.restart(id).await;
    }
    cluster.leader().await;
    let d = client.describe("kept").await.unwrap();
    assert_eq!((d.held, d.holder_session, d.token), (true, s.id(), token), "the held lock survived the restart");
    let other = client.session(TTL).await.unwrap();
    s.close().await.unwrap();
    let g2 = other.lock("kept", None).await.unwrap().expect("free after the holder closed");
    assert!(g2.token() > token, "tokens keep increasing after a restart");
    g2.release().await.unwrap();
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_follower_catches_up_from_a_snapshot() {
    let mut cluster = TestCluster::start(3, 30).await;
    let leader = cluster.leader().await;
    let follower = *cluster.servers.keys().find(|&&id| id != leader).unwrap();
    cluster.stop(follower).await;
    let client = cluster.client().await;
    let s = client.session(TTL).await.unwrap();
    let mut last = 0;
    for i in 0..60 {
        let g = s.lock(&format!("k{}", i % 5), None).await.unwrap().unwrap();
        last = g.token();
        g.release().await.unwrap();
    }
    cluster.restart(follower).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = Client::status_of(&cluster.client_addrs[&follower]).await;
        if let Ok(st) = st {
            if st.groups[0].last_token == last {
                break;
            }
        }
        assert!(Instant::now() < deadline, "follower did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cluster.dirs[&follower].path().join("snap/group-1.snap").exists());
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error() {
    let mut cluster = TestCluster::start(1, 20_000).await;
    let client = cluster.client().await;
    let s = client.session(TTL).await.unwrap();
    let long = "x".repeat(1025);
    match s.lock(&long, None).await {
        Err(Error::Status(st)) => {
            assert_eq!(st.code(), tonic::Code::InvalidArgument);
            assert!(st.message().contains("longer than 1024 bytes"), "{}", st.message());
        }
        other => panic!("expected InvalidArgument, got {:?}", other.map(|g| g.map(|g| g.token()))),
    }
    match client.session(Duration::from_millis(10)).await {
        Err(Error::Status(st)) => assert_eq!(st.code(), tonic::Code::InvalidArgument, "{}", st.message()),
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("a 10 ms ttl was accepted"),
    }
    // A release by a non-holder is refused and the holder keeps the lock.
    let g = s.lock("mine", None).await.unwrap().unwrap();
    let other = client.session(TTL).await.unwrap();
    let mut raw = baton_proto::v1::baton_client::BatonClient::connect(format!("http://{}", cluster.endpoints()[0]))
        .await
        .unwrap();
    let err = raw
        .release(baton_proto::v1::ReleaseRequest {
            name: "mine".into(),
            session_id: other.id(),
            token: g.token(),
            group: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(client.describe("mine").await.unwrap().held);
    cluster.stop(1).await;
}

/// A storage system that uses fencing tokens: it remembers the highest token it has seen per
/// resource and rejects writes carrying a lower one.
#[derive(Default)]
struct FencedStore {
    highest: BTreeMap<String, u64>,
    data: BTreeMap<String, String>,
}

impl FencedStore {
    fn write(&mut self, resource: &str, token: u64, value: &str) -> Result<(), String> {
        let highest = self.highest.entry(resource.to_string()).or_insert(0);
        if token < *highest {
            return Err(format!("stale fencing token {token} < {highest} for {resource}"));
        }
        *highest = token;
        self.data.insert(resource.to_string(), value.to_string());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_is_fenced_off_by_its_token() {
    let mut cluster = TestCluster::start(3, 20_000).await;
    let mut store = FencedStore::default();
    cluster.leader().await;
    // The "paused" holder uses the raw API and never sends a keepalive (a long GC pause).
    let mut raw = None;
    for addr in cluster.endpoints() {
        let mut c = baton_proto::v1::baton_client::BatonClient::connect(format!("http://{addr}")).await.unwrap();
        if let Ok(r) = c
            .open_session(baton_proto::v1::OpenSessionRequest {
                client_id: "paused".into(),
                ttl_ms: 1000,
                request_id: 0,
            })
            .await
        {
            raw = Some((c, r.into_inner().session_id));
            break;
        }
    }
    let (mut paused, session) = raw.expect("some node is the leader");
    let req = baton_proto::v1::AcquireRequest {
        name: "ledger".into(),
        session_id: session,
        request_id: 1,
        ..Default::default()
    };
    let stale = paused.acquire(req).await.unwrap().into_inner().token;
    store.write("ledger", stale, "from the paused holder").unwrap();

    // Its session expires on the leader; a healthy client gets the lock with a larger token.
    let client = cluster.client().await;
    let healthy = client.session(TTL).await.unwrap();
    let g = healthy.lock("ledger", Some(Duration::from_secs(10))).await.unwrap().expect("granted after the expiry");
    assert!(g.token() > stale);
    store.write("ledger", g.token(), "from the new holder").unwrap();

    // The paused holder wakes up, still believing it holds the lock: its write is rejected.
    let err = store.write("ledger", stale, "late write").unwrap_err();
    assert!(err.contains("stale fencing token"), "{err}");
    assert_eq!(store.data["ledger"], "from the new holder");
    g.release().await.unwrap();
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rwlock_and_semaphore_survive_a_failover_mid_wait() {
    let mut cluster = TestCluster::start(3, 20_000).await;
    let client = cluster.client().await;
    let s: Vec<_> = open_sessions(&client, 5).await;
    // Two readers together; a writer queues; a reader after the writer queues behind it.
    let r1 = s[0].read_lock("doc", None).await.unwrap().expect("first reader");
    let r2 = s[1].read_lock("doc", None).await.unwrap().expect("readers share");
    let (w, r3) = (s[2].clone(), s[3].clone());
    let writer = tokio::spawn(async move { w.write_lock("doc", Some(Duration::from_secs(30))).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let late_reader = tokio::spawn(async move { r3.read_lock("doc", Some(Duration::from_secs(30))).await });
    // Semaphore of 2: two single permits, a third waits.
    let p1 = s[0].semaphore("pool", 1, 2, None).await.unwrap().expect("permit 1");
    let _p2 = s[1].semaphore("pool", 1, 2, None).await.unwrap().expect("permit 2");
    let p = s[4].clone();
    let permit_wait = tokio::spawn(async move { p.semaphore("pool", 1, 2, Some(Duration::from_secs(30))).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d = client.describe("doc").await.unwrap();
    assert_eq!(d.holders.len(), 2);
    assert_eq!(
        d.waiters.iter().map(|w| (w.session_id, w.shared)).collect::<Vec<_>>(),
        vec![(s[2].id(), false), (s[3].id(), true)]
    );

    let old = cluster.leader().await;
    cluster.stop(old).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!writer.is_finished() && !late_reader.is_finished() && !permit_wait.is_finished());

    let top = r2.token().max(r1.token());
    r1.release().await.unwrap();
    assert!(!writer.is_finished(), "the writer waits for every reader");
    r2.release().await.unwrap();
    let wg = writer.await.unwrap().unwrap().expect("writer granted after the readers");
    assert!(wg.token() > top);
    assert!(!late_reader.is_finished(), "the late reader queued behind the writer");
    wg.release().await.unwrap();
    let rg = late_reader.await.unwrap().unwrap().expect("late reader granted after the writer");
    rg.release().await.unwrap();
    p1.release().await.unwrap();
    let pg = permit_wait.await.unwrap().unwrap().expect("a permit came back");
    pg.release().await.unwrap();
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
}

async fn open_sessions(client: &Client, n: usize) -> Vec<baton_client::Session> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(client.session(TTL).await.unwrap());
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_registers_are_linearizable_across_a_failover() {
    let mut cluster = TestCluster::start(3, 20_000).await;
    let client = cluster.client().await;
    // Concurrent adds from several tasks: every add's result is distinct and the sum is exact.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..10 {
                seen.push(c.counter_add("hits", 1).await.unwrap());
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    assert_eq!(all, (1..=40).collect::<Vec<i64>>(), "each add saw a distinct value");
    assert_eq!(client.counter_get("hits").await.unwrap(), 40);
    assert_eq!(client.counter_cas("hits", 39, 0).await.unwrap(), (false, 40));
    assert_eq!(client.counter_cas("hits", 40, 100).await.unwrap(), (true, 100));

    let (ok, v1) = client.register_set("cfg", Some(b"one".to_vec()), Some(0)).await.unwrap();
    assert!(ok && v1 > 0);
    assert_eq!(client.register_set("cfg", Some(b"lost".to_vec()), Some(0)).await.unwrap(), (false, v1));

    let old = cluster.leader().await;
    cluster.stop(old).await;
    // After the failover every read sees every acknowledged write.
    assert_eq!(client.counter_get("hits").await.unwrap(), 100);
    assert_eq!(client.register_get("cfg").await.unwrap(), (b"one".to_vec(), v1));
    let (ok, v2) = client.register_set("cfg", Some(b"two".to_vec()), Some(v1)).await.unwrap();
    assert!(ok && v2 > v1);
    assert_eq!(client.register_set("cfg", None, Some(v2)).await.unwrap(), (true, 0));
    assert_eq!(client.register_get("cfg").await.unwrap(), (Vec::new(), 0));
    let too_big = vec![0u8; 64 * 1024 + 1];
    match client.register_set("cfg", Some(too_big), None).await {
        Err(baton_client::Error::Status(s)) => assert_eq!(s.code(), tonic::Code::InvalidArgument, "{}", s.message()),
        other => panic!("an oversized value was accepted: {other:?}"),
    }
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_on_another_node_without_gaps_or_repeats() {
    let mut cluster = TestCluster::start(3, 20_000).await;
    let client = cluster.client().await;
    let s = client.session(TTL).await.unwrap();
    let mut events = client.watch("w/", true, 0);
    let mut tokens = Vec::new();
    for i in 0..10 {
        if i == 5 {
            // The watcher is connected to the leader (the client's current node): stop it.
            let old = cluster.leader().await;
            cluster.stop(old).await;
        }
        let g = s.lock("w/a", Some(Duration::from_secs(10))).await.unwrap().unwrap();
        tokens.push(g.token());
        g.release().await.unwrap();
        client.counter_add("w/n", 1).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut seqs = Vec::new();
    while seen.len() < 30 {
        let e = tokio::time::timeout(Duration::from_secs(15), events.recv())
            .await
            .unwrap_or_else(|_| panic!("stuck after {seen:?} {seqs:?}"))
            .unwrap()
            .unwrap();
        seqs.push(e.seq);
        assert!(e.hlc_physical_ms > 0);
        seen.push((e.r#type.clone(), e.token, e.counter_value));
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "sequence numbers strictly increase: {seqs:?}");
    let expected: Vec<(String, u64, i64)> = tokens
        .iter()
        .enumerate()
        .flat_map(|(i, t)| {
            [
                ("granted".to_string(), *t, 0),
                ("released".to_string(), *t, 0),
                ("counter_changed".to_string(), 0, i as i64 + 1),
            ]
        })
        .collect();
    assert_eq!(seen, expected, "every event exactly once, in order");
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_hands_over_in_fifo_order_and_observers_see_every_change() {
    let mut cluster = TestCluster::start(3, 20_000).await;
    let client = cluster.client().await;
    let s = open_sessions(&client, 3).await;
    let mut observed = client.observe("svc").await.unwrap();
    assert_eq!(observed.recv().await.unwrap().unwrap().session, 0, "nobody leads at first");
    let a = s[0].campaign("svc", b"a".to_vec(), None).await.unwrap().expect("first candidate wins");
    let (b, c) = (s[1].clone(), s[2].clone());
    let cb = tokio::spawn(async move { b.campaign("svc", b"b".to_vec(), Some(Duration::from_secs(30))).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cc = tokio::spawn(async move { c.campaign("svc", b"c".to_vec(), Some(Duration::from_secs(30))).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.proclaim(b"a2".to_vec()).await.unwrap();
    // The leader of the cluster fails while candidates wait.
    let old = cluster.leader().await;
    cluster.stop(old).await;
    a.release().await.unwrap(); // resign: b is next
    let gb = cb.await.unwrap().unwrap().expect("b elected");
    assert!(!cc.is_finished(), "c waits behind b");
    gb.release().await.unwrap();
    let gc = cc.await.unwrap().unwrap().expect("c elected");
    gc.release().await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let l = tokio::time::timeout(Duration::from_secs(15), observed.recv())
            .await
            .expect("changes keep coming")
            .unwrap()
            .unwrap();
        seen.push((l.session, String::from_utf8_lossy(&l.value).into_owned()));
    }
    let expected = vec![
        (s[0].id(), "a".to_string()),
        (s[0].id(), "a2".to_string()),
        (s[1].id(), "b".to_string()),
        (s[2].id(), "c".to_string()),
        (0, String::new()),
    ];
    assert_eq!(seen, expected);
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barriers_and_latches_release_everyone_together_across_a_failover() {
    let mut cluster = TestCluster::start(3, 20_000).await;
    let client = cluster.client().await;
    let s = open_sessions(&client, 3).await;
    let wait = Some(Duration::from_secs(30));
    let (a, b) = (s[0].clone(), s[1].clone());
    let ta = tokio::spawn(async move { a.barrier("gate", 3, wait).await });
    let tb = tokio::spawn(async move { b.barrier("gate", 3, wait).await });
    client.latch_set("boot", 2).await.unwrap();
    let c = s[2].clone();
    let tl = tokio::spawn(async move { c.latch_wait("boot", wait).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let old = cluster.leader().await;
    cluster.stop(old).await;
    assert!(!ta.is_finished() && !tb.is_finished(), "two of three parties wait");
    assert!(s[2].barrier("gate", 3, wait).await.unwrap(), "the third arrival passes");
    assert!(ta.await.unwrap().unwrap() && tb.await.unwrap().unwrap(), "and so do the others");
    assert_eq!(client.latch_count_down("boot").await.unwrap(), 1);
    assert!(!tl.is_finished());
    assert_eq!(client.latch_count_down("boot").await.unwrap(), 0);
    assert!(tl.await.unwrap().unwrap(), "the latch opened");
    // A barrier arrival that times out no longer counts.
    assert!(!s[0].barrier("gate2", 2, Some(Duration::from_millis(300))).await.unwrap());
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
}

/// The `Call` stream: many calls in flight on one stream, answered in completion order (a
/// queued acquire is answered by the grant the release causes, on the same stream), errors as
/// `CallError` with the stream still usable, and a follower's redirect naming the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_stream_multiplexes_and_redirects() {
    use baton_proto::v1 as pb;
    use pb::call_request::Op;
    use pb::call_response::Result as R;
    let mut cluster = TestCluster::start(3, 20_000).await;
    let leader = cluster.leader().await;
    let open = |addr: String| async move {
        let mut raw = pb::baton_client::BatonClient::connect(format!("http://{addr}")).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<pb::CallRequest>();
        let answers = raw.call(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)).await.unwrap().into_inner();
        (tx, answers)
    };
    let (tx, mut answers) = open(cluster.client_addrs[&leader].clone()).await;
    let send = |call_id, op| tx.send(pb::CallRequest { call_id, op: Some(op) }).unwrap();
    let open_req =
        || Op::OpenSession(pb::OpenSessionRequest { client_id: "pipe".into(), ttl_ms: 5_000, request_id: 0 });
    send(1, open_req());
    send(2, open_req());
    let mut sessions = Vec::new();
    for _ in 0..2 {
        match answers.message().await.unwrap().unwrap().result {
            Some(R::OpenSession(r)) => sessions.push(r.session_id),
            other => panic!("expected a session, got {other:?}"),
        }
    }
    let acquire = |session_id, request_id, wait_ms| {
        Op::Acquire(pb::AcquireRequest { name: "piped".into(), session_id, request_id, wait_ms, ..Default::default() })
    };
    send(10, acquire(sessions[0], 1, 0));
    let first = answers.message().await.unwrap().unwrap();
    let Some(R::Acquire(granted)) = first.result else { panic!("{first:?}") };
    assert_eq!((first.call_id, granted.result), (10, pb::acquire_response::Result::Granted as i32));
    // A waiter and then the holder's release, on the same stream: the release and the grant it
    // causes both come back, each with its own call id.
    send(11, acquire(sessions[1], 2, 10_000));
    send(
        12,
        Op::Release(pb::ReleaseRequest {
            name: "piped".into(),
            session_id: sessions[0],
            token: granted.token,
            group: 0,
        }),
    );
    let mut seen = BTreeMap::new();
    for _ in 0..2 {
        let a = answers.message().await.unwrap().unwrap();
        seen.insert(a.call_id, a.result);
    }
    assert!(matches!(seen.get(&12), Some(Some(R::Release(_)))), "{seen:?}");
    match seen.get(&11) {
        Some(Some(R::Acquire(r))) => {
            assert_eq!(r.result, pb::acquire_response::Result::Granted as i32);
            assert!(r.token > granted.token);
        }
        other => panic!("expected the waiter's grant, got {other:?}"),
    }
    // Bad input: an error answer for that call only; the stream goes on.
    send(13, acquire(sessions[1], 3, 0));
    send(
        14,
        Op::Acquire(pb::AcquireRequest {
            name: "x".repeat(1025),
            session_id: sessions[1],
            request_id: 4,
            ..Default::default()
        }),
    );
    tx.send(pb::CallRequest { call_id: 15, op: None }).unwrap();
    let mut errors = BTreeMap::new();
    for _ in 0..3 {
        let a = answers.message().await.unwrap().unwrap();
        if let Some(R::Error(e)) = a.result {
            errors.insert(a.call_id, e);
        }
    }
    assert_eq!(errors[&14].code, tonic::Code::InvalidArgument as i32);
    assert!(errors[&14].message.contains("longer than 1024 bytes"), "{:?}", errors[&14]);
    assert_eq!(errors[&15].code, tonic::Code::InvalidArgument as i32);
    assert!(errors[&13].message.contains("not reentrant"), "{:?}", errors[&13]);
    // A one-off renewal: a live session and one that never existed.
    send(16, Op::KeepAlive(pb::KeepAliveRequest { session_ids: vec![sessions[0], 999_999] }));
    match answers.message().await.unwrap().unwrap().result {
        Some(R::KeepAlive(r)) => {
            let alive: Vec<(u64, bool)> = r.leases.iter().map(|l| (l.session_id, l.alive)).collect();
            assert_eq!(alive, vec![(sessions[0], true), (999_999, false)]);
        }
        other => panic!("expected a renewal, got {other:?}"),
    }
    // A follower answers with the leader's address.
    let follower = *cluster.client_addrs.keys().find(|id| **id != leader).unwrap();
    let (ftx, mut fanswers) = open(cluster.client_addrs[&follower].clone()).await;
    ftx.send(pb::CallRequest { call_id: 1, op: Some(acquire(sessions[1], 5, 0)) }).unwrap();
    match fanswers.message().await.unwrap().unwrap().result {
        Some(R::Error(e)) => {
            assert_eq!(e.code, tonic::Code::Unavailable as i32);
            assert_eq!(e.leader, cluster.client_addrs[&leader]);
        }
        other => panic!("expected a redirect, got {other:?}"),
    }
    // Ending our side still delivers what is in flight, then the stream ends.
    send(20, Op::Counter(pb::CounterRequest { name: "c".into(), op: Some(pb::counter_request::Op::Add(5)), group: 0 }));
    drop(tx);
    let last = answers.message().await.unwrap().unwrap();
    assert!(matches!(last.result, Some(R::Counter(pb::CounterResponse { value: 5, .. }))), "{last:?}");
    assert!(answers.message().await.unwrap().is_none());
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
}

/// With lease reads on, reads skip the heartbeat round but stay linearizable, across a leader
/// failover too: a read that starts after an add was acknowledged sees it, and reads never go
/// backwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_reads_stay_linearizable_across_a_failover() {
    let mut cluster = TestCluster::start_with(3, 20_000, true).await;
    let client = cluster.client().await;
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let writer = {
        let (c, acked) = (client.clone(), acked.clone());
        tokio::spawn(async move {
            for _ in 0..60 {
                // An add cut by the failover is ambiguous (it may have applied): not counted as
                // acknowledged, and not retried (adds are not idempotent).
                if let Ok(v) = c.counter_add("leased", 1).await {
                    acked.fetch_max(v, std::sync::atomic::Ordering::SeqCst);
                }
            }
        })
    };
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (c, acked, done) = (client.clone(), acked.clone(), done.clone());
        tokio::spawn(async move {
            let mut last = 0;
            let mut reads = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let floor = acked.load(std::sync::atomic::Ordering::SeqCst);
                let v = c.counter_get("leased").await.unwrap();
                assert!(v >= floor, "stale read: {v} after {floor} was acknowledged");
                assert!(v >= last, "reads went backwards: {v} after {last}");
                last = v;
                reads += 1;
            }
            reads
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let old = cluster.leader().await;
    cluster.stop(old).await;
    writer.await.unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(reader.await.unwrap() > 0);
    let last = client.counter_get("leased").await.unwrap();
    let acked = acked.load(std::sync::atomic::Ordering::SeqCst);
    assert!(last >= acked && last <= 60 && acked > 0, "final {last}, acknowledged up to {acked}");
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
}

/// Regression: counter adds (never retried when the outcome is ambiguous) kept asking a dead
/// leader: nothing rerouted the client, so every later add failed too. Now an add that could
/// not even connect is retried elsewhere, and an ambiguous failure still moves the client on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_idempotent_writes_move_to_the_new_leader() {
    let mut cluster = TestCluster::start(3, 20_000).await;
    let client = cluster.client().await;
    assert_eq!(client.counter_add("moves", 1).await.unwrap(), 1);
    let old = cluster.leader().await;
    cluster.stop(old).await;
    let mut results = Vec::new();
    for _ in 0..3 {
        let r = client.counter_add("moves", 1).await;
        let ok = r.is_ok();
        results.push(r.map_err(|e| e.to_string()));
        if ok {
            break;
        }
    }
    assert!(results.last().is_some_and(|r| r.is_ok()), "adds never reached the new leader: {results:?}");
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
}

/// A TCP proxy in front of one node's client port that can be frozen: from then on it forwards
/// nothing, on the connections it has and on new ones (accepted, then left silent), as a
/// SIGSTOPped node's kernel would; `cut` also drops the connections it has.
struct FreezingProxy {
    addr: String,
    frozen: tokio::sync::watch::Sender<u8>,
}

/// States of a [`FreezingProxy`].
const FLOWING: u8 = 0;
const FROZEN: u8 = 1;
const CUT_AND_FROZEN: u8 = 2;

impl FreezingProxy {
    async fn start(target: String) -> FreezingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (frozen, rx) = tokio::sync::watch::channel(FLOWING);
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { return };
                if *rx.borrow() != FLOWING {
                    held.push(inbound); // open, and silent
                    continue;
                }
                let target = target.clone();
                let mut state = rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
                        _ = state.wait_for(|s| *s != FLOWING) => {}
                    }
                    if *state.borrow() == FROZEN {
                        // Keep both ends open, forwarding nothing.
                        let _ = state.wait_for(|s| *s == FLOWING).await;
                    }
                });
            }
        });
        FreezingProxy { addr, frozen }
    }

    fn set(&self, state: u8) {
        self.frozen.send_replace(state);
    }
}

/// Regression (defect 4): the lease-lost signal came from the keepalive loop, which hung for
/// good opening a stream to a node that accepts connections but never answers; the signal never
/// fired. Now it is a timer: it fires at the lease's deadline with every renewal stuck, and
/// before the leader expires the session (the client always gives up first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_lost_on_time_while_renewals_hang() {
    let mut cluster = TestCluster::start(3, 20_000).await;
    let leader = cluster.leader().await;
    let proxy = FreezingProxy::start(cluster.client_addrs[&leader].clone()).await;
    // Only through the proxy: the client must not find the node's own address.
    let options = ClientOptions { discover: false, ..Default::default() };
    let client = Client::connect_with([proxy.addr.clone()], options).await.unwrap();
    let ttl = Duration::from_secs(3);
    let session = client.session(ttl).await.unwrap();
    let guard = session.lock("stuck", None).await.unwrap().expect("free lock is granted");
    // Wait for a renewal, so that the keepalive stream is open when the connections are cut.
    let renewals = client.renewals();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.renewals() == renewals {
        assert!(Instant::now() < deadline, "no renewal acknowledged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.set(CUT_AND_FROZEN);
    let frozen_at = Instant::now();
    tokio::time::timeout(ttl * 2, guard.lease_lost()).await.expect("the lease-lost signal never fired");
    let lost_after = frozen_at.elapsed();
    assert!(!guard.is_lease_valid() && !session.is_alive());
    // No acknowledged renewal was sent after the freeze: the deadline is at most 0.9 TTL away.
    assert!(lost_after <= ttl - ttl / 10 + Duration::from_millis(300), "lost {lost_after:?} after the freeze");
    // The leader has not expired the session yet: the client gave up first.
    let direct = cluster.client().await;
    let d = direct.describe("stuck").await.unwrap();
    assert_eq!((d.holder_session, d.token), (session.id(), guard.token()), "expired before the client gave up");
    drop(guard);
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
}

/// Regression (defect 4): renewals stayed on a node that did not answer until the lease was
/// gone. Now the client renews at every node it knows (the cluster's nodes, learned from any
/// endpoint), each on its own stream: the session lives on while its first endpoint is silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_move_on_from_a_node_that_does_not_answer() {
    let mut cluster = TestCluster::start(3, 20_000).await;
    let leader = cluster.leader().await;
    let proxy = FreezingProxy::start(cluster.client_addrs[&leader].clone()).await;
    let others = cluster.client_addrs.iter().filter(|(id, _)| **id != leader).map(|(_, a)| a.clone());
    let endpoints: Vec<String> = std::iter::once(proxy.addr.clone()).chain(others).collect();
    let client = Client::connect_with(endpoints, ClientOptions::default()).await.unwrap();
    let ttl = Duration::from_secs(3);
    let session = client.session(ttl).await.unwrap();
    let guard = session.lock("kept", None).await.unwrap().expect("free lock is granted");
    proxy.set(FROZEN);
    let renewals = client.renewals();
    // Three TTLs: long enough for the lease to be lost three times over without a renewal.
    let until = Instant::now() + ttl * 3;
    while Instant::now() < until {
        assert!(guard.is_lease_valid(), "lease lost although two nodes answer");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(client.renewals() >= renewals + 3, "renewals stopped: {} -> {}", renewals, client.renewals());
    let d = cluster.client().await.describe("kept").await.unwrap();
    assert_eq!((d.holder_session, d.token), (session.id(), guard.token()));
    drop(guard);
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
}

/// Regression (defect 9): an attempt that timed out closed the client's shared `Call` stream,
/// failing every call in flight on it (a counter add caught so was reported ambiguous, and the
/// client moved off a healthy leader). Now a timed-out attempt ends alone. Here every attempt
/// of a 4 s lock wait is cut at 1 s (as a wait longer than `max_attempt` is), while adds run
/// on the same client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_attempt_fails_only_itself() {
    let mut cluster = TestCluster::start(3, 20_000).await;
    let leader = cluster.leader().await;
    let options = ClientOptions {
        client_id: "short-attempts".into(),
        attempt_timeout: Duration::from_secs(1),
        max_attempt: Duration::from_secs(1),
        ..Default::default()
    };
    let client = Client::connect_with([cluster.client_addrs[&leader].clone()], options).await.unwrap();
    let holder = client.session(TTL).await.unwrap();
    let waiter = client.session(TTL).await.unwrap();
    let held = holder.lock("long", None).await.unwrap().expect("free lock is granted");
    let wait = tokio::spawn({
        let waiter = waiter.clone();
        async move { waiter.lock("long", Some(Duration::from_secs(4))).await }
    });
    let adders: Vec<_> = (0..4)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move {
                let mut ok = 0u32;
                let until = Instant::now() + Duration::from_millis(3500);
                while Instant::now() < until {
                    c.counter_add("beside", 1).await.map_err(|e| format!("add failed: {e}"))?;
                    ok += 1;
                }
                Ok::<u32, String>(ok)
            })
        })
        .collect();
    let mut total = 0;
    for a in adders {
        total += a.await.unwrap().unwrap();
    }
    held.release().await.unwrap();
    let granted = wait.await.unwrap().unwrap().expect("the waiter is granted once the holder releases");
    assert!(granted.token() > 0);
    assert_eq!(client.counter_get("beside").await.unwrap(), i64::from(total));
    // Still talking to the leader: nothing moved the client off it.
    assert_eq!(client.route_of("long").1, cluster.client_addrs[&leader]);
    drop(granted);
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
}

/// Defect 9: redirects are typed. A follower's error carries an `ErrorInfo` naming the leader,
/// on a unary call (binary metadata) and on the `Call` stream (`CallError.info`); the client
/// decides on it, never on the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_typed_details() {
    use baton_proto::v1 as pb;
    let mut cluster = TestCluster::start(3, 20_000).await;
    let leader = cluster.leader().await;
    let follower = *cluster.client_addrs.keys().find(|id| **id != leader).unwrap();
    let mut raw =
        pb::baton_client::BatonClient::connect(format!("http://{}", cluster.client_addrs[&follower])).await.unwrap();
    let status = raw.describe(pb::DescribeRequest { name: "x".into(), group: 0 }).await.unwrap_err();
    let info = pb::ErrorInfo::of(&status).expect("a redirect carries an ErrorInfo");
    assert_eq!(info.reason, pb::error_info::Reason::NotLeader as i32);
    assert_eq!((info.leader_id, info.leader_addr.as_str()), (leader, cluster.client_addrs[&leader].as_str()));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut answers = raw.call(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)).await.unwrap().into_inner();
    let add = pb::CounterRequest { name: "c".into(), op: Some(pb::counter_request::Op::Add(1)), group: 0 };
    tx.send(pb::CallRequest { call_id: 7, op: Some(pb::call_request::Op::Counter(add)) }).unwrap();
    match answers.message().await.unwrap().unwrap().result {
        Some(pb::call_response::Result::Error(e)) => {
            let info = e.info.expect("CallError.info is set");
            assert_eq!(info.reason, pb::error_info::Reason::NotLeader as i32);
            assert_eq!(info.leader_addr, cluster.client_addrs[&leader]);
        }
        other => panic!("expected a redirect, got {other:?}"),
    }
    // A refusal carries none: it is final.
    let bad = raw.describe(pb::DescribeRequest { name: String::new(), group: 0 }).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(pb::ErrorInfo::of(&bad).is_none());
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
}

/// Found by review: an acquire whose outcome became unknown (queued, then the cluster lost its
/// quorum for longer than the client's request timeout) no longer withdrew itself, so the grant
/// came later to a live session that nobody used for it and held the lock until that session
/// ended. The client now sends the cancel whenever the outcome is unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_of_unknown_outcome_is_withdrawn() {
    let mut cluster = TestCluster::start(3, 20_000).await;
    let client = cluster.client().await;
    let holder = client.session(Duration::from_secs(60)).await.unwrap();
    let held = holder.lock("x", None).await.unwrap().expect("free lock is granted");
    let options = ClientOptions {
        client_id: "waiter".into(),
        request_timeout: Duration::from_secs(2),
        attempt_timeout: Duration::from_secs(1),
        max_attempt: Duration::from_secs(2),
        ..Default::default()
    };
    let waiter_client = Client::connect_with(cluster.endpoints(), options).await.unwrap();
    // Sessions that outlive the outage: the waiter must leave the queue by its withdrawal, not
    // with its session.
    let waiter = waiter_client.session(Duration::from_secs(60)).await.unwrap();
    let w = waiter.clone();
    // Its wait (10 s of the state machine's time, which stands still without a leader) outlasts
    // the outage and the checks below: only a withdrawal can empty the queue in time.
    let pending = tokio::spawn(async move { w.lock("x", Some(Duration::from_secs(10))).await });
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.describe("x").await.unwrap().waiters.is_empty() {
        assert!(Instant::now() < deadline, "the acquire never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // No quorum: the queued acquire's fate cannot be learned within the request timeout.
    let leader = cluster.leader().await;
    let follower = *cluster.client_addrs.keys().find(|&&id| id != leader).unwrap();
    cluster.stop(leader).await;
    cluster.stop(follower).await;
    match pending.await.unwrap() {
        Err(Error::OutcomeUnknown(_)) => {}
        other => panic!("expected an unknown outcome, got {:?}", other.map(|g| g.map(|g| g.token()))),
    }
    cluster.restart(leader).await;
    cluster.restart(follower).await;
    // The withdrawal (sent in the background) removes the waiter once there is a leader again,
    // well before the wait would time out.
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        match client.describe("x").await {
            Ok(d) if d.waiters.is_empty() => break,
            _ => {}
        }
        assert!(Instant::now() < deadline, "the waiter of unknown outcome stayed queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    held.release().await.unwrap();
    let d = client.describe("x").await.unwrap();
    assert_ne!(d.holder_session, waiter.id(), "the lock went to a session nobody used for it");
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
}
