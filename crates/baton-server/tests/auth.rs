//! Authentication and authorization over real sockets: every RPC of the client API refused
//! without credentials and with a role that lacks the permission, allowed with one that has it;
//! tokens that stop working when their user changes; the Rust client with credentials.

use std::time::Duration;

use baton_client::{Client, ClientOptions};
use baton_proto::v1 as pb;
use pb::auth_change_request::Change;
use pb::baton_client::BatonClient;
use tonic::transport::Channel;
use tonic::Code;

mod common;
use common::TestCluster;

/// `message` with `token` (if any) as its bearer token.
fn req<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Some(t) = token {
        r.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

fn req_as<T>(token: &str, message: T) -> tonic::Request<T> {
    req(message, Some(token))
}

fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    r.err().map_or(Code::Ok, |s| s.code())
}

fn message<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> String {
    r.expect_err("refused").message().to_string()
}

/// Every RPC of the client API, each about `name` (or its prefix), as `token` makes it: the
/// code of each answer. The streams' first answer counts.
async fn every_rpc(c: &mut BatonClient<Channel>, token: Option<&str>, name: &str) -> Vec<(&'static str, Code)> {
    use tokio_stream::StreamExt;
    let n = || name.to_string();
    let mut codes = vec![
        (
            "OpenSession",
            code(
                c.open_session(req(
                    pb::OpenSessionRequest { client_id: "t".into(), ttl_ms: 5_000, request_id: 1 },
                    token,
                ))
                .await,
            ),
        ),
        (
            "AttachSession",
            code(
                c.attach_session(req(
                    pb::AttachSessionRequest {
                        session_id: 1,
                        client_id: "t".into(),
                        ttl_ms: 5_000,
                        group: 1,
                        ..Default::default()
                    },
                    token,
                ))
                .await,
            ),
        ),
        ("CloseSession", code(c.close_session(req(pb::CloseSessionRequest { session_id: 1, group: 1 }, token)).await)),
        (
            "Acquire",
            code(
                c.acquire(req(
                    pb::AcquireRequest { name: n(), session_id: 1, request_id: 1, ..Default::default() },
                    token,
                ))
                .await,
            ),
        ),
        (
            "Release",
            code(c.release(req(pb::ReleaseRequest { name: n(), session_id: 1, token: 1, group: 0 }, token)).await),
        ),
        (
            "Cancel",
            code(c.cancel(req(pb::CancelRequest { name: n(), session_id: 1, request_id: 1, group: 0 }, token)).await),
        ),
        (
            "Proclaim",
            code(
                c.proclaim(req(
                    pb::ProclaimRequest { name: n(), session_id: 1, token: 1, value: vec![], group: 0 },
                    token,
                ))
                .await,
            ),
        ),
        (
            "Latch",
            code(
                c.latch(req(pb::LatchRequest { name: n(), op: Some(pb::latch_request::Op::Set(1)), group: 0 }, token))
                    .await,
            ),
        ),
        (
            "Counter",
            code(
                c.counter(req(
                    pb::CounterRequest { name: n(), op: Some(pb::counter_request::Op::Add(1)), group: 0 },
                    token,
                ))
                .await,
            ),
        ),
        (
            "Register",
            code(
                c.register(req(
                    pb::RegisterRequest {
                        name: n(),
                        op: Some(pb::register_request::Op::Set(vec![1])),
                        ..Default::default()
                    },
                    token,
                ))
                .await,
            ),
        ),
        ("Describe", code(c.describe(req(pb::DescribeRequest { name: n(), group: 0 }, token)).await)),
        ("History", code(c.history(req(pb::HistoryRequest { name: n(), ..Default::default() }, token)).await)),
        ("Hot", code(c.hot(req(pb::HotRequest { limit: 5 }, token)).await)),
        ("Status", code(c.status(req(pb::StatusRequest {}, token)).await)),
        ("Topology", code(c.topology(req(pb::TopologyRequest {}, token)).await)),
        ("MoveSlots", code(c.move_slots(req(pb::MoveSlotsRequest { start: 0, end: 0, to_group: 2 }, token)).await)),
        (
            "AddNode",
            code(
                c.add_node(req(
                    pb::AddNodeRequest { id: 9, peer_addr: "127.0.0.1:1".into(), client_addr: "127.0.0.1:2".into() },
                    token,
                ))
                .await,
            ),
        ),
        ("RemoveNode", code(c.remove_node(req(pb::RemoveNodeRequest { id: 9 }, token)).await)),
        (
            "AuthChange",
            code(c.auth_change(req(pb::AuthChangeRequest { change: Some(Change::RoleAdd("x".into())) }, token)).await),
        ),
        ("AuthStatus", code(c.auth_status(req(pb::AuthStatusRequest {}, token)).await)),
        (
            "Crdt",
            code(
                c.crdt(req(
                    pb::CrdtRequest {
                        kind: pb::CrdtKind::Pncounter as i32,
                        name: n(),
                        op: Some(pb::crdt_request::Op::Add(1)),
                        ..Default::default()
                    },
                    token,
                ))
                .await,
            ),
        ),
    ];
    let watch = c.watch(req(pb::WatchRequest { name: n(), prefix: true, ..Default::default() }, token)).await;
    codes.push(("Watch", code(watch)));
    // Streams: refused at their start, or at their first message.
    let keepalive = tokio_stream::iter([pb::KeepAliveRequest { session_ids: vec![1] }]);
    let k = match c.keep_alive(req(keepalive, token)).await {
        Ok(s) => s.into_inner().next().await.and_then(|r| r.err()).map_or(Code::Ok, |s| s.code()),
        Err(s) => s.code(),
    };
    codes.push(("KeepAlive", k));
    let open = pb::OpenSessionRequest { client_id: "t".into(), ttl_ms: 5_000, request_id: 2 };
    let call = pb::CallRequest { call_id: 1, op: Some(pb::call_request::Op::OpenSession(open)) };
    let k = match c.call(req(tokio_stream::iter([call]), token)).await {
        Ok(s) => match s.into_inner().next().await {
            Some(Ok(pb::CallResponse { result: Some(pb::call_response::Result::Error(e)), .. })) => Code::from(e.code),
            Some(Ok(_)) => Code::Ok,
            Some(Err(s)) => s.code(),
            None => Code::Unknown,
        },
        Err(s) => s.code(),
    };
    codes.push(("Call", k));
    codes
}

/// Sets up users and roles (authentication still off), then turns it on:
/// root (root), alice (lock on `jobs/`), bob (read on everything), carol (write on `cnt/`).
async fn secure(c: &mut BatonClient<Channel>) {
    let change = |change| pb::AuthChangeRequest { change: Some(change) };
    let user = |user: &str, password: &str| pb::UserPassword { user: user.into(), password: password.into() };
    let role = |user: &str, role: &str| pb::UserRole { user: user.into(), role: role.into() };
    let grant = |role: &str, permission: &str, prefix: &str| {
        let range = baton_core::auth::NameRange::prefix(prefix);
        pb::RoleGrant {
            role: role.into(),
            permission: permission.into(),
            names: Some(pb::NameRange { start: range.start, end: range.end }),
        }
    };
    let enable_too_early = c.auth_change(change(Change::Enable(true))).await;
    assert_eq!(code(enable_too_early), Code::FailedPrecondition, "no root yet");
    for ch in [
        Change::UserAdd(user("root", "rootpw")),
        Change::UserGrantRole(role("root", "root")),
        Change::RoleAdd("jobs".into()),
        Change::RoleGrant(grant("jobs", "lock", "jobs/")),
        Change::UserAdd(user("alice", "alicepw")),
        Change::UserGrantRole(role("alice", "jobs")),
        Change::RoleAdd("reader".into()),
        Change::RoleGrant(grant("reader", "read", "")),
        Change::UserAdd(user("bob", "bobpw")),
        Change::UserGrantRole(role("bob", "reader")),
        Change::RoleAdd("counters".into()),
        Change::RoleGrant(grant("counters", "write", "cnt/")),
        Change::UserAdd(user("carol", "carolpw")),
        Change::UserGrantRole(role("carol", "counters")),
        Change::Enable(true),
    ] {
        c.auth_change(change(ch.clone())).await.unwrap_or_else(|e| panic!("{ch:?}: {e}"));
    }
}

async fn token(c: &mut BatonClient<Channel>, user: &str, password: &str) -> String {
    let r = c.authenticate(pb::AuthenticateRequest { user: user.into(), password: password.into() }).await;
    r.unwrap_or_else(|e| panic!("authenticate {user}: {e}")).into_inner().token
}

/// Waits until node `id`'s replica has authentication on (the change is applied everywhere
/// soon after its commit).
async fn wait_enabled(cluster: &TestCluster) {
    for id in cluster.servers.keys() {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !cluster.servers[id].node().view.lock().unwrap().auth.enabled {
            assert!(std::time::Instant::now() < deadline, "node {id} never applied auth enable");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The node leading the meta group (where users and roles change), as node 1 knows it.
async fn meta_leader(cluster: &TestCluster) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = cluster.status(1).await {
            if let Some(g) = s.groups.iter().find(|g| g.id == baton_node::META_GROUP && g.leader != 0) {
                return g.leader;
            }
        }
        assert!(std::time::Instant::now() < deadline, "the meta group has no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_needs_a_user_with_the_permission() {
    let mut cluster = TestCluster::with_etcd(3, 2).await;
    cluster.leader().await;
    let leader = meta_leader(&cluster).await;
    let mut c = BatonClient::connect(format!("http://{}", cluster.client_addrs[&leader])).await.unwrap();
    // A watch on every name, opened while authentication is off: it must end once it is on.
    let mut early = c
        .watch(pb::WatchRequest { name: String::new(), prefix: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    secure(&mut c).await;
    wait_enabled(&cluster).await;

    // Without credentials: every RPC refused as unauthenticated.
    for (rpc, code) in every_rpc(&mut c, None, "jobs/a").await {
        assert_eq!(code, Code::Unauthenticated, "{rpc} without credentials");
    }
    let wrong = c.authenticate(pb::AuthenticateRequest { user: "alice".into(), password: "nope".into() }).await;
    assert_eq!(message(wrong), "authentication failed: wrong user name or password");
    for (rpc, code) in every_rpc(&mut c, Some("b1.00.0.0.00"), "jobs/a").await {
        assert_eq!(code, Code::Unauthenticated, "{rpc} with a forged token");
    }

    // alice may lock under jobs/ only: everything about another name, every write and every
    // administration refused; what needs no name (status, the slot map, sessions) allowed.
    let alice = token(&mut c, "alice", "alicepw").await;
    let denied_elsewhere = every_rpc(&mut c, Some(&alice), "other/a").await;
    for (rpc, code) in &denied_elsewhere {
        // (AttachSession is refused too: not for want of a permission, but of the session's
        // proof, which alice was never given for session 1.)
        let allowed = ["OpenSession", "CloseSession", "Status", "Topology", "KeepAlive", "Call", "Hot"];
        if allowed.contains(rpc) {
            assert!(
                !matches!(code, Code::PermissionDenied | Code::Unauthenticated),
                "{rpc} (no name) refused to alice"
            );
        } else {
            assert_eq!(*code, Code::PermissionDenied, "{rpc} on other/a allowed to alice");
        }
    }
    let r = c
        .acquire(req(pb::AcquireRequest { name: "other/a".into(), session_id: 1, ..Default::default() }, Some(&alice)))
        .await;
    assert_eq!(message(r), "user \"alice\" lacks the lock permission on name \"other/a\" (Acquire)");
    let r = c
        .counter(req(
            pb::CounterRequest { name: "jobs/n".into(), op: Some(pb::counter_request::Op::Add(1)), group: 0 },
            Some(&alice),
        ))
        .await;
    assert_eq!(message(r), "user \"alice\" lacks the write permission on name \"jobs/n\" (Counter)");
    let r = c.auth_status(req(pb::AuthStatusRequest {}, Some(&alice))).await;
    assert_eq!(message(r), "user \"alice\" lacks the admin permission on every name (AuthStatus)");

    // bob reads everything and changes nothing.
    // (Allowed: past the check, though this node may not lead the name's group and redirect.)
    let allowed = |code: Code| !matches!(code, Code::PermissionDenied | Code::Unauthenticated);
    let bob = token(&mut c, "bob", "bobpw").await;
    assert!(allowed(code(c.describe(req(pb::DescribeRequest { name: "jobs/a".into(), group: 0 }, Some(&bob))).await)));
    let get = pb::CounterRequest { name: "cnt/x".into(), op: Some(pb::counter_request::Op::Get(true)), group: 0 };
    assert!(allowed(code(c.counter(req(get, Some(&bob))).await)));
    let open = pb::OpenSessionRequest { client_id: "bob".into(), ttl_ms: 5_000, request_id: 1 };
    assert_eq!(code(c.open_session(req(open, Some(&bob))).await), Code::PermissionDenied, "sessions need lock");
    // The coordination-free tier by the same rules: bob reads, only a writer updates.
    let crdt = |op| pb::CrdtRequest {
        kind: pb::CrdtKind::Orset as i32,
        name: "cnt/online".into(),
        op: Some(op),
        ..Default::default()
    };
    let read = crdt(pb::crdt_request::Op::Read(pb::CrdtReadLevel::Local as i32));
    assert_eq!(code(c.crdt(req(read, Some(&bob))).await), Code::Ok);
    let add = || crdt(pb::crdt_request::Op::Insert("bob".into()));
    assert_eq!(
        message(c.crdt(req(add(), Some(&bob))).await),
        "user \"bob\" lacks the write permission on name \"cnt/online\" (Crdt)"
    );
    let carol = token(&mut c, "carol", "carolpw").await;
    assert_eq!(code(c.crdt(req(add(), Some(&carol))).await), Code::Ok);

    // The Rust client with credentials: alice holds jobs/a, carol counts under cnt/, each is
    // refused elsewhere; root does everything.
    let as_user = |user: &str, password: &str| ClientOptions {
        credentials: Some(baton_client::Credentials::new(user, password)),
        request_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let alice_client = Client::connect_with(cluster.endpoints(), as_user("alice", "alicepw")).await.unwrap();
    let s = alice_client.session(Duration::from_secs(5)).await.unwrap();
    let g = s.lock("jobs/a", None).await.unwrap().expect("granted");
    // That grant was an event: the early watch is refused instead of showing it.
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), early.message()).await.expect("the early watch went on") {
            Ok(Some(e)) if e.r#type == "sync" => continue,
            Ok(Some(e)) => panic!("the early watch showed {e:?} after authentication came on"),
            Ok(None) => panic!("the early watch ended without saying why"),
            Err(s) => break s,
        }
    };
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    let refused = s.lock("other/a", None).await.err().expect("refused");
    assert_eq!(refused.code(), Some(Code::PermissionDenied), "{refused}");
    let carol = Client::connect_with(cluster.endpoints(), as_user("carol", "carolpw")).await.unwrap();
    assert_eq!(carol.counter_add("cnt/x", 5).await.unwrap(), 5);
    assert_eq!(carol.counter_add("jobs/x", 5).await.unwrap_err().code(), Some(Code::PermissionDenied));
    let bad = Client::connect_with(cluster.endpoints(), as_user("alice", "wrong")).await;
    assert_eq!(bad.err().and_then(|e| e.code()), Some(Code::Unauthenticated));
    let root = Client::connect_with(cluster.endpoints(), as_user("root", "rootpw")).await.unwrap();
    assert!(root.auth_status().await.unwrap().enabled);

    // A new password ends alice's old token, on every node; her client's session lives on
    // (its keepalives carry the old token: refused, the lease runs down) -- so renew first.
    let change = Change::UserPasswd(pb::UserPassword { user: "alice".into(), password: "new".into() });
    root.auth_change(change).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = c.describe(req(pb::DescribeRequest { name: "jobs/a".into(), group: 0 }, Some(&alice))).await;
        if code(r) == Code::Unauthenticated {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "alice's old token still works");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(g);

    // The etcd API checks the same grants on its keys (token in etcd's `token` metadata, its
    // refusals in etcd's words); more in `etcd_calls_need_the_permission_on_their_keys`.
    let etcd = format!("http://{}", cluster.etcd_addrs[&leader]);
    let mut kv = baton_proto::etcd::etcdserverpb::kv_client::KvClient::connect(etcd).await.unwrap();
    let range = |token: Option<&str>| {
        let mut r = tonic::Request::new(baton_proto::etcd::etcdserverpb::RangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        });
        if let Some(t) = token {
            r.metadata_mut().insert("token", t.parse().unwrap());
        }
        r
    };
    let none = kv.range(range(None)).await.unwrap_err();
    assert_eq!((none.code(), none.message()), (Code::InvalidArgument, "etcdserver: user name is empty"));
    let forged = kv.range(range(Some("b1.00.0.0.00"))).await.unwrap_err();
    assert_eq!((forged.code(), forged.message()), (Code::Unauthenticated, "etcdserver: invalid auth token"));
    let carol_token = token(&mut c, "carol", "carolpw").await;
    let denied = kv.range(range(Some(&carol_token))).await.unwrap_err();
    assert_eq!((denied.code(), denied.message()), (Code::PermissionDenied, "etcdserver: permission denied"));
    kv.range(range(Some(&bob))).await.expect("bob reads every key");

    // HTTP: the API needs a user (see `the_http_api_needs_a_user_and_shows_what_it_may_read`);
    // health and metrics do not.
    let http = &cluster.http_addrs[&leader];
    let (status, body) = common::http_get(http, "/api/hot");
    assert_eq!(status, 401, "{body}");
    let (status, metrics) = common::http_get(http, "/metrics");
    assert_eq!(status, 200);
    // Refusals are counted.
    assert!(metrics.contains("baton_access_denied_total{permission=\"lock\"}"), "{metrics}");
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
}

/// A 3-node cluster with etcd's API and `groups` data groups, [`secure`]d and with
/// authentication on everywhere: the cluster, the meta group's leader and a client of it.
async fn secured(groups: u64) -> (TestCluster, u64, BatonClient<Channel>) {
    let cluster = TestCluster::with_etcd(3, groups).await;
    cluster.leader().await;
    let leader = meta_leader(&cluster).await;
    let mut c = BatonClient::connect(format!("http://{}", cluster.client_addrs[&leader])).await.unwrap();
    secure(&mut c).await;
    wait_enabled(&cluster).await;
    (cluster, leader, c)
}

/// Sends `call` to each node in turn until one answers other than "not the leader here" (the
/// state machine's refusals come from the group's leader), for at most 20 s.
async fn at_leader<T, F, Fut>(cluster: &TestCluster, mut call: F) -> Result<tonic::Response<T>, tonic::Status>
where
    F: FnMut(BatonClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        for addr in cluster.client_addrs.values() {
            let c = BatonClient::connect(format!("http://{addr}")).await.unwrap();
            let r = call(c).await;
            if code_of(&r) != Code::Unavailable {
                return r;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no node answered as the leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn code_of<T>(r: &Result<tonic::Response<T>, tonic::Status>) -> Code {
    r.as_ref().err().map_or(Code::Ok, |s| s.code())
}

/// With authentication on, a session is its user's alone: another user with the same
/// permissions cannot renew, close, release, cancel, proclaim, attach or reopen it (review
/// finding: before, any user with the lock permission could close anyone's session by its id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_belong_to_their_user() {
    let (cluster, _, mut c) = secured(2).await;
    // dave has alice's role: the permission is the same, the sessions are not.
    let root = token(&mut c, "root", "rootpw").await;
    let change = |change| req(pb::AuthChangeRequest { change: Some(change) }, Some(&root));
    let dave = pb::UserPassword { user: "dave".into(), password: "davepw".into() };
    c.auth_change(change(Change::UserAdd(dave))).await.unwrap();
    let role = pb::UserRole { user: "dave".into(), role: "jobs".into() };
    c.auth_change(change(Change::UserGrantRole(role))).await.unwrap();

    // alice holds names in both data groups with the Rust client (which attaches her session
    // to the second group with its proof).
    let options = ClientOptions {
        credentials: Some(baton_client::Credentials::new("alice", "alicepw")),
        request_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let alice = Client::connect_with(cluster.endpoints(), options).await.unwrap();
    let s = alice.session(Duration::from_secs(10)).await.unwrap();
    let names: Vec<String> = (0..8).map(|i| format!("jobs/{i}")).collect();
    let mut guards = Vec::new();
    for name in &names {
        guards.push(s.lock(name, None).await.unwrap().expect("granted"));
    }
    let groups: std::collections::BTreeSet<u64> = {
        let view = cluster.servers[&1].node().view.lock().unwrap();
        names.iter().map(|n| view.group_of(n)).collect()
    };
    assert!(groups.len() > 1, "the names should span both data groups: {groups:?}");
    let session = s.id();
    let (name, held) = (names[0].clone(), guards[0].token());

    let dave = token(&mut c, "dave", "davepw").await;
    let denied = |what: &str, r: Code| assert_eq!(r, Code::PermissionDenied, "dave's {what} of alice's session");
    let r = at_leader(&cluster, |mut c| {
        let m = req_as(&dave, pb::CloseSessionRequest { session_id: session, group: 0 });
        async move { c.close_session(m).await }
    })
    .await;
    assert!(message(r).contains(&format!("session {session} is not a session of user \"dave\"")));
    let r = at_leader(&cluster, |mut c| {
        let m = req_as(&dave, pb::ReleaseRequest { name: name.clone(), session_id: session, token: held, group: 0 });
        async move { c.release(m).await }
    })
    .await;
    denied("release", code_of(&r));
    let r = at_leader(&cluster, |mut c| {
        let m = req_as(&dave, pb::CancelRequest { name: name.clone(), session_id: session, request_id: 1, group: 0 });
        async move { c.cancel(m).await }
    })
    .await;
    denied("cancel", code_of(&r));
    let r = at_leader(&cluster, |mut c| {
        let m = req_as(
            &dave,
            pb::AcquireRequest { name: "jobs/z".into(), session_id: session, request_id: 99, ..Default::default() },
        );
        async move { c.acquire(m).await }
    })
    .await;
    denied("acquire", code_of(&r));
    // A keepalive for her session renews nothing and reports it absent.
    let r = at_leader(&cluster, |mut c| {
        let m = req_as(&dave, tokio_stream::iter(vec![pb::KeepAliveRequest { session_ids: vec![session] }]));
        async move {
            let mut answers = c.keep_alive(m).await?.into_inner();
            let first = answers.message().await?.expect("an answer");
            Ok(tonic::Response::new(first))
        }
    })
    .await
    .unwrap()
    .into_inner();
    assert!(r.leases.iter().all(|l| !l.alive && l.groups.is_empty()), "dave renewed alice's session: {r:?}");

    // Attaching her session elsewhere needs her proof, which dave does not have: not with
    // none, not with the one his own session came with.
    for group in [1, 2] {
        let m = pb::AttachSessionRequest {
            session_id: session,
            client_id: "x".into(),
            ttl_ms: 10_000,
            group,
            session_proof: Vec::new(),
        };
        denied("attach without proof", code(c.attach_session(req_as(&dave, m)).await));
    }
    let mine = at_leader(&cluster, |mut c| {
        let m = req_as(&dave, pb::OpenSessionRequest { client_id: "d".into(), ttl_ms: 10_000, request_id: 1 });
        async move { c.open_session(m).await }
    })
    .await
    .unwrap()
    .into_inner();
    assert!(!mine.session_proof.is_empty(), "with authentication on a session comes with its proof");
    assert_ne!(mine.session_id, session);
    let m = pb::AttachSessionRequest {
        session_id: session,
        client_id: "x".into(),
        ttl_ms: 10_000,
        group: 2,
        session_proof: mine.session_proof.clone(),
    };
    denied("attach with his own proof", code(c.attach_session(req_as(&dave, m)).await));
    // An open that repeats another user's client id and request id opens a session of its own.
    let alice_token = token(&mut c, "alice", "alicepw").await;
    let mut opened = Vec::new();
    for token in [&alice_token, &dave] {
        let r = at_leader(&cluster, |mut c| {
            let m = req_as(token, pb::OpenSessionRequest { client_id: "same".into(), ttl_ms: 10_000, request_id: 5 });
            async move { c.open_session(m).await }
        })
        .await;
        opened.push(r.unwrap().into_inner().session_id);
    }
    assert_ne!(opened[0], opened[1], "one user's open returned another's session");
    // That session of alice's has a record in its home only: nothing but the proof stops dave
    // from attaching it to the other group (and using it there).
    let home = at_leader(&cluster, |mut c| {
        let m =
            req_as(&alice_token, pb::OpenSessionRequest { client_id: "same".into(), ttl_ms: 10_000, request_id: 5 });
        async move { c.open_session(m).await }
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(home.session_id, opened[0], "a retried open is the same session");
    let elsewhere = *groups.iter().find(|&&g| g != home.group).expect("another data group");
    let attach = |token: String, proof: Vec<u8>| {
        let m = pb::AttachSessionRequest {
            session_id: home.session_id,
            client_id: "c".into(),
            ttl_ms: 10_000,
            group: elsewhere,
            session_proof: proof,
        };
        let cluster = &cluster;
        async move {
            at_leader(cluster, |mut c| {
                let m = req_as(&token, m.clone());
                async move { c.attach_session(m).await }
            })
            .await
        }
    };
    let r = attach(dave.clone(), mine.session_proof.clone()).await;
    denied("attach to a group where it has no record", code_of(&r));
    let r = attach(alice_token.clone(), home.session_proof.clone()).await;
    assert_eq!(code_of(&r), Code::Ok, "alice attaches her own session with its proof: {r:?}");

    // alice's session and every lock of hers are untouched.
    for (name, guard) in names.iter().zip(&guards) {
        let d = alice.describe(name).await.unwrap();
        assert_eq!(d.holder_session, session, "{name}");
        assert_eq!(d.token, guard.token(), "{name}");
    }
    assert!(s.keep_alive_once().await.unwrap(), "alice's session lives on");
    for g in guards {
        g.release().await.unwrap();
    }
}

/// `message` with `token` as etcd's `token` metadata.
fn etcd_req<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert("token", token.parse().unwrap());
    r
}

/// The etcd API judges each call by the keys it touches, with the same grants as the client
/// API: puts, transactions (every compare and every branch), lease revokes (every attached key),
/// locks and elections (their contenders' keys), watches (at creation and before every event:
/// taking the grant away ends the watch); and its Auth service changes the same users, through
/// any node (those that do not lead the meta group forward the change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_calls_need_the_permission_on_their_keys() {
    use baton_proto::etcd::etcdserverpb::{self as epb, auth_client::AuthClient, kv_client::KvClient};
    use baton_proto::etcd::etcdserverpb::{lease_client::LeaseClient, watch_client::WatchClient};
    use baton_proto::etcd::v3electionpb::{self as elpb, election_client::ElectionClient};
    use baton_proto::etcd::v3lockpb::{self as lpb, lock_client::LockClient};

    let (cluster, leader, mut c) = secured(2).await;
    let etcd = format!("http://{}", cluster.etcd_addrs[&leader]);
    let (root, bob, carol) = (
        token(&mut c, "root", "rootpw").await,
        token(&mut c, "bob", "bobpw").await,
        token(&mut c, "carol", "carolpw").await,
    );
    let mut kv = KvClient::connect(etcd.clone()).await.unwrap();
    let put =
        |key: &str, lease: i64| epb::PutRequest { key: key.into(), value: b"v".to_vec(), lease, ..Default::default() };
    let denied = |r: Result<_, tonic::Status>, what: &str| {
        let e = r.err().unwrap_or_else(|| panic!("{what}: allowed"));
        assert_eq!((e.code(), e.message()), (Code::PermissionDenied, "etcdserver: permission denied"), "{what}");
    };

    // carol writes under cnt/ only.
    kv.put(etcd_req(&carol, put("cnt/a", 0))).await.expect("carol puts cnt/a");
    denied(kv.put(etcd_req(&carol, put("jobs/a", 0))).await.map(|_| ()), "carol puts jobs/a");
    let cmp = |key: &str| epb::Compare { key: key.into(), target: 0, result: 0, ..Default::default() };
    let op_put = |key: &str| epb::RequestOp { request: Some(epb::request_op::Request::RequestPut(put(key, 0))) };
    let txn = |compare: &str, success: &str, failure: &str| epb::TxnRequest {
        compare: vec![cmp(compare)],
        success: vec![op_put(success)],
        failure: vec![op_put(failure)],
    };
    kv.txn(etcd_req(&carol, txn("cnt/a", "cnt/b", "cnt/c"))).await.expect("a transaction within cnt/");
    denied(kv.txn(etcd_req(&carol, txn("jobs/a", "cnt/b", "cnt/c"))).await.map(|_| ()), "a compare outside");
    denied(kv.txn(etcd_req(&carol, txn("cnt/a", "cnt/b", "jobs/c"))).await.map(|_| ()), "a branch not taken, outside");
    denied(
        kv.compact(etcd_req(&carol, epb::CompactionRequest { revision: 1, physical: false })).await.map(|_| ()),
        "compact",
    );

    // A lease whose keys carol may not all write: she may not revoke it; root may.
    let mut leases = LeaseClient::connect(etcd.clone()).await.unwrap();
    let lease =
        leases.lease_grant(etcd_req(&carol, epb::LeaseGrantRequest { ttl: 60, id: 0 })).await.unwrap().into_inner().id;
    kv.put(etcd_req(&carol, put("cnt/l", lease))).await.unwrap();
    kv.put(etcd_req(&root, put("jobs/l", lease))).await.unwrap();
    let revoke = |t: &str| etcd_req(t, epb::LeaseRevokeRequest { id: lease });
    denied(leases.lease_revoke(revoke(&carol)).await.map(|_| ()), "carol revokes a lease holding jobs/l");
    let ttl = |t: &str| etcd_req(t, epb::LeaseTimeToLiveRequest { id: lease, keys: true });
    denied(leases.lease_time_to_live(ttl(&carol)).await.map(|_| ()), "carol lists a lease's keys");
    leases.lease_revoke(revoke(&root)).await.expect("root revokes it");

    // Locks and elections: on their contenders' keys.
    let mut locks = LockClient::connect(etcd.clone()).await.unwrap();
    let lease =
        leases.lease_grant(etcd_req(&carol, epb::LeaseGrantRequest { ttl: 60, id: 0 })).await.unwrap().into_inner().id;
    let lock = |name: &str| etcd_req(&carol, lpb::LockRequest { name: name.into(), lease });
    let held = locks.lock(lock("cnt/lk")).await.expect("carol locks cnt/lk").into_inner();
    denied(locks.lock(lock("jobs/lk")).await.map(|_| ()), "carol locks jobs/lk");
    let unlock = |t: &str| etcd_req(t, lpb::UnlockRequest { key: held.key.clone() });
    denied(locks.unlock(unlock(&bob)).await.map(|_| ()), "bob (read only) unlocks carol's lock");
    locks.unlock(unlock(&carol)).await.expect("carol unlocks");
    let mut elections = ElectionClient::connect(etcd.clone()).await.unwrap();
    let campaign =
        |t: &str| etcd_req(t, elpb::CampaignRequest { name: b"cnt/e".to_vec(), lease, value: b"me".to_vec() });
    denied(elections.campaign(campaign(&bob)).await.map(|_| ()), "bob campaigns");
    elections.campaign(campaign(&carol)).await.expect("carol campaigns");
    let leader_of = |t: &str, name: &str| etcd_req(t, elpb::LeaderRequest { name: name.into() });
    elections.leader(leader_of(&bob, "cnt/e")).await.expect("bob reads the leader");
    denied(elections.leader(leader_of(&carol, "jobs/e")).await.map(|_| ()), "carol reads a leader outside cnt/");

    // bob watches cnt/: taking his read grant away ends the watch at its next event.
    let mut watch = WatchClient::connect(etcd.clone()).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let create = epb::WatchCreateRequest { key: b"cnt/".to_vec(), range_end: b"cnt0".to_vec(), ..Default::default() };
    tx.send(epb::WatchRequest { request_union: Some(epb::watch_request::RequestUnion::CreateRequest(create)) })
        .await
        .unwrap();
    let mut answers =
        watch.watch(etcd_req(&bob, tokio_stream::wrappers::ReceiverStream::new(rx))).await.unwrap().into_inner();
    let created = answers.message().await.unwrap().expect("an answer");
    assert!(created.created && !created.canceled, "{created:?}");
    kv.put(etcd_req(&carol, put("cnt/w", 0))).await.unwrap();
    let seen = answers.message().await.unwrap().expect("the event");
    assert_eq!(seen.events.len(), 1, "{seen:?}");
    let revoke_role = Change::UserRevokeRole(pb::UserRole { user: "bob".into(), role: "reader".into() });
    c.auth_change(req(pb::AuthChangeRequest { change: Some(revoke_role) }, Some(&root))).await.unwrap();
    // (Every node applies the change soon after its commit: bob's next events may still show
    // until this node has; then the watch ends.)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let ended = loop {
        kv.put(etcd_req(&carol, put("cnt/w", 0))).await.unwrap();
        let a = tokio::time::timeout(Duration::from_secs(10), answers.message()).await.expect("an answer").unwrap();
        let a = a.expect("the stream goes on until the cancel");
        if a.canceled {
            break a;
        }
        assert!(std::time::Instant::now() < deadline, "bob's watch outlived his grant");
    };
    assert_eq!(ended.cancel_reason, "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token");

    // The Auth service changes the same users through every node (a node that does not lead
    // the meta group forwards the change), and they authenticate on the client API as well.
    for (i, addr) in cluster.etcd_addrs.values().enumerate() {
        let mut auth = AuthClient::connect(format!("http://{addr}")).await.unwrap();
        let name = format!("erin{i}");
        let add = epb::AuthUserAddRequest { name: name.clone(), password: "pw".into(), ..Default::default() };
        auth.user_add(etcd_req(&root, add)).await.unwrap_or_else(|e| panic!("user add through {addr}: {e}"));
        let again = epb::AuthUserAddRequest { name: name.clone(), password: "pw".into(), ..Default::default() };
        let e = auth.user_add(etcd_req(&root, again)).await.unwrap_err();
        assert_eq!(e.message(), "etcdserver: user name already exists");
        let denied_add = epb::AuthUserAddRequest { name: "x".into(), password: "pw".into(), ..Default::default() };
        denied(auth.user_add(etcd_req(&carol, denied_add)).await.map(|_| ()), "carol adds a user");
        token(&mut c, &name, "pw").await;
    }
}

/// The HTTP port with authentication on: the API needs a token (bearer or the dashboard's
/// cookie, from `/api/login`) and shows only what its user may read; health and metrics stay
/// open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_needs_a_user_and_shows_what_it_may_read() {
    let (cluster, _, mut c) = secured(1).await;
    // alice holds jobs/a and a second session of hers waits for it: a hot name.
    let options = ClientOptions {
        credentials: Some(baton_client::Credentials::new("alice", "alicepw")),
        request_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let alice = Client::connect_with(cluster.endpoints(), options).await.unwrap();
    let (s1, s2) =
        (alice.session(Duration::from_secs(10)).await.unwrap(), alice.session(Duration::from_secs(10)).await.unwrap());
    let held = s1.lock("jobs/a", None).await.unwrap().expect("granted");
    let waiter =
        tokio::spawn(async move { s2.lock("jobs/a", Some(Duration::from_secs(20))).await.map(|g| g.is_some()) });
    // The node that leads the name's group sees the name as hot (status needs a user now: the
    // leader as node 1 knows it).
    let data_leader = {
        let view = cluster.servers[&1].node().view.lock().unwrap();
        view.leaders.get(&view.group_of("jobs/a")).copied().flatten().expect("the group has a leader")
    };
    let http = cluster.http_addrs[&data_leader].clone();
    let bob = token(&mut c, "bob", "bobpw").await;
    let bearer = format!("Authorization: Bearer {bob}");

    let (code, head, _) = common::http_call(&http, "GET", "/api/overview", &[], "");
    assert_eq!(code, 401, "no token");
    assert!(head.to_ascii_lowercase().contains("www-authenticate: bearer"), "{head}");
    let (code, _, _) = common::http_call(&http, "GET", "/api/overview", &["Authorization: Bearer b1.00.0.0.00"], "");
    assert_eq!(code, 401, "a forged token");
    for path in ["/healthz", "/metrics"] {
        assert_eq!(common::http_get(&http, path).0, 200, "{path} needs no user");
    }

    // carol signs in as the dashboard does and keeps her token in the cookie.
    let (code, _, body) = common::http_call(&http, "POST", "/api/login", &[], r#"{"user":"carol","password":"no"}"#);
    assert_eq!(code, 401, "{body}");
    let (code, head, body) =
        common::http_call(&http, "POST", "/api/login", &[], r#"{"user":"carol","password":"carolpw"}"#);
    assert_eq!(code, 200, "{body}");
    let set_cookie = head.lines().find(|l| l.to_ascii_lowercase().starts_with("set-cookie:")).expect("a cookie");
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    let cookie = format!("Cookie: {}", set_cookie.split_once(':').unwrap().1.trim().split(';').next().unwrap());
    assert_eq!(common::http_call(&http, "GET", "/api/overview", &[&cookie], "").0, 200);

    // Hot names: bob (read on everything) sees jobs/a, carol (write on cnt/ only) does not.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (code, _, body) = common::http_call(&http, "GET", "/api/hot", &[&bearer], "");
        assert_eq!(code, 200, "{body}");
        if body.contains("jobs/a") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "jobs/a never showed as hot to bob: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, _, body) = common::http_call(&http, "GET", "/api/hot", &[&cookie], "");
    assert_eq!(code, 200, "{body}");
    assert!(!body.contains("jobs/a"), "carol sees a name she may not read: {body}");
    let (code, _, body) = common::http_call(&http, "GET", "/api/history?name=jobs/a", &[&cookie], "");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("lacks the read permission"), "{body}");
    let (code, _, body) = common::http_call(&http, "GET", "/api/history?name=jobs/a", &[&bearer], "");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("granted"), "{body}");

    // The event stream: bob's shows jobs/a's grant, carol's neither it nor sessions.
    // (Its first batch carries the latest events kept; carol counts under cnt/ first, so that
    // hers has something she may see.)
    let carol_options = ClientOptions {
        credentials: Some(baton_client::Credentials::new("carol", "carolpw")),
        request_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let carol = Client::connect_with(cluster.endpoints(), carol_options).await.unwrap();
    carol.counter_add("cnt/x", 1).await.unwrap();
    let wait = Duration::from_secs(10);
    let bobs = common::http_first_events(&http, &[&bearer], wait).expect("bob's stream").expect("a batch");
    assert!(bobs.contains("jobs/a") && bobs.contains("cnt/x"), "{bobs}");
    let carols = common::http_first_events(&http, &[&cookie], wait).expect("carol's stream").expect("a batch");
    assert!(carols.contains("cnt/x"), "{carols}");
    assert!(!carols.contains("jobs/a") && !carols.contains("session"), "carol sees {carols}");
    assert_eq!(common::http_first_events(&http, &[], wait).unwrap_err().0, 401);

    // Only the cookie is renewed (a token taken from a header is not kept alive), and the
    // token is never in an answer's body.
    let (code, _, body) = common::http_call(&http, "POST", "/api/renew", &[&bearer], "");
    assert_eq!(code, 409, "{body}");
    assert!(!body.contains("b2."), "{body}");
    // Sign-ins from one address: a few a second, then refused at once (no password checked).
    // Six at once, so that the checks' own time cannot refill the address's allowance.
    let tries: Vec<u16> = std::thread::scope(|scope| {
        let login = || common::http_call(&http, "POST", "/api/login", &[], r#"{"user":"carol","password":"no"}"#).0;
        let all: Vec<_> = (0..6).map(|_| scope.spawn(login)).collect();
        all.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert!(tries.contains(&429), "six sign-ins at once from one address all went through: {tries:?}");
    // The dashboard renews its token; a changed password ends both.
    let (code, head, body) = common::http_call(&http, "POST", "/api/renew", &[&cookie], "");
    assert_eq!(code, 200, "{body}");
    assert!(head.to_ascii_lowercase().contains("set-cookie: baton_token="), "{head}");
    // A sign-in more than RENEW_LIMIT old is not renewed, its token still good or not.
    let (key, generation) = {
        let view = cluster.servers[&data_leader].node().view.lock().unwrap();
        (view.auth.token_key.clone(), view.auth.users["carol"].generation)
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let long_ago = now - baton_server::access::RENEW_LIMIT.as_millis() as u64 - 1_000;
    let old = baton_server::access::secrets::sign_token(&key, "carol", generation, now + 60_000, long_ago);
    let old_cookie = format!("Cookie: baton_token={old}");
    assert_eq!(common::http_call(&http, "GET", "/api/overview", &[&old_cookie], "").0, 200, "still good");
    let (code, _, body) = common::http_call(&http, "POST", "/api/renew", &[&old_cookie], "");
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("signed in too long ago"), "{body}");
    let root = token(&mut c, "root", "rootpw").await;
    let change = Change::UserPasswd(pb::UserPassword { user: "carol".into(), password: "new".into() });
    c.auth_change(req(pb::AuthChangeRequest { change: Some(change) }, Some(&root))).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while common::http_call(&http, "GET", "/api/overview", &[&cookie], "").0 != 401 {
        assert!(std::time::Instant::now() < deadline, "carol's old token still works over HTTP");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    held.release().await.unwrap();
    assert!(waiter.await.unwrap().unwrap(), "the waiter got jobs/a");
}

/// Quotas: a user's sessions and names past its quota are refused with RESOURCE_EXHAUSTED
/// naming the limit, others go on being served, what it gives back makes room again; past its
/// request rate its requests are refused on that node while its renewals still go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_refuse_cleanly_and_the_node_serves_others() {
    let (cluster, _, mut c) = secured(1).await;
    let root = token(&mut c, "root", "rootpw").await;
    let quota = pb::Quota { requests_per_second: 20, sessions: 2, names: 2 };
    let set = Change::SetQuota(pb::UserQuota { user: "alice".into(), quota: Some(quota) });
    c.auth_change(req(pb::AuthChangeRequest { change: Some(set) }, Some(&root))).await.unwrap();
    let want = baton_core::auth::Quota { requests_per_s: 20, sessions: 2, names: 2 };
    for id in cluster.servers.keys() {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while cluster.servers[id].node().view.lock().unwrap().auth.quota_of("alice") != want {
            assert!(std::time::Instant::now() < deadline, "node {id} never applied the quota");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let status = c.auth_status(req(pb::AuthStatusRequest {}, Some(&root))).await.unwrap().into_inner();
    let shown = status.users.iter().find(|u| u.name == "alice").and_then(|u| u.quota);
    assert_eq!(shown, Some(quota));

    let connect = |user: &str, password: &str| {
        let options = ClientOptions {
            credentials: Some(baton_client::Credentials::new(user, password)),
            request_timeout: Duration::from_secs(5),
            ..Default::default()
        };
        Client::connect_with(cluster.endpoints(), options)
    };
    let alice = connect("alice", "alicepw").await.unwrap();
    let s1 = alice.session(Duration::from_secs(10)).await.unwrap();
    let _s2 = alice.session(Duration::from_secs(10)).await.unwrap();
    let third = alice.session(Duration::from_secs(10)).await.err().expect("a third session refused");
    assert_eq!(third.code(), Some(Code::ResourceExhausted), "{third}");
    assert!(third.to_string().contains("user \"alice\" has 2 sessions in group 1 and its quota is 2"), "{third}");
    let a = s1.lock("jobs/a", None).await.unwrap().expect("granted");
    let _b = s1.lock("jobs/b", None).await.unwrap().expect("granted");
    let over = s1.lock("jobs/c", None).await.err().expect("a third name refused");
    assert_eq!(over.code(), Some(Code::ResourceExhausted), "{over}");
    assert!(over.to_string().contains("2 names held or awaited"), "{over}");
    // root, without a quota, is served meanwhile.
    let root_client = connect("root", "rootpw").await.unwrap();
    let rs = root_client.session(Duration::from_secs(10)).await.unwrap();
    for i in 0..5 {
        rs.lock(&format!("jobs/r{i}"), None).await.unwrap().expect("root takes what it wants");
    }
    // Giving one back makes room.
    a.release().await.unwrap();
    s1.lock("jobs/c", None).await.unwrap().expect("granted once jobs/a was released");

    // 20 requests a second on each node: a burst of 100 reads at one node is partly refused,
    // saying so; alice's renewals are not.
    let alice_token = token(&mut c, "alice", "alicepw").await;
    let data_leader = {
        let view = cluster.servers[&1].node().view.lock().unwrap();
        view.leaders.get(&view.group_of("jobs/a")).copied().flatten().expect("a leader")
    };
    let mut raw = BatonClient::connect(format!("http://{}", cluster.client_addrs[&data_leader])).await.unwrap();
    let mut refused = Vec::new();
    for _ in 0..100 {
        let r = raw.describe(req(pb::DescribeRequest { name: "jobs/a".into(), group: 0 }, Some(&alice_token))).await;
        if let Err(s) = r {
            refused.push(s);
        }
    }
    assert!(!refused.is_empty(), "100 requests at once passed a quota of 20 a second");
    assert!(refused.len() < 100, "the quota refused everything");
    for s in &refused {
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert!(s.message().contains("over its 20 requests per second on this node"), "{s:?}");
    }
    assert!(s1.keep_alive_once().await.unwrap(), "a renewal is never refused for the rate");
}

/// A change to users and roles forwarded over the peer port runs only with proof that an
/// administrator asked for exactly it, lately, once: a peer port without mutual TLS takes calls
/// from anyone claiming to be a member, and what travels there is good for nothing else (review
/// findings); a token key never comes from the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_auth_change_needs_an_administrators_proof() {
    use baton_core::auth::AuthCommand;
    use baton_server::access::{Access, Caller};
    use baton_server::etcd::EtcdCall;
    let (cluster, leader, mut c) = secured(1).await;
    let other = *cluster.servers.keys().find(|id| **id != leader).unwrap();
    let mut peer = baton_proto::peer::peer_client::PeerClient::connect(format!("http://{}", cluster.peers[&leader]))
        .await
        .unwrap();
    let node = cluster.servers[&other].node();
    let access = Access::new(node.view.clone(), node.metrics.clone());
    let add = |name: &str| AuthCommand::UserAdd { name: name.into(), password_hash: None };
    let as_user = |name: &str| Caller::User { name: name.into(), token: None };
    let forward = |command: AuthCommand, proof| baton_proto::peer::ForwardRequest {
        from: other,
        group: baton_core::META_GROUP,
        etcd: bincode::serialize(&EtcdCall::Auth { command, proof }).unwrap(),
        ..Default::default()
    };
    let refusals = [
        (None, "no proof"),
        (access.forward_proof(&as_user("bob"), &add("mallory")), "a reader's proof"),
        (access.forward_proof(&as_user("root"), &add("trent")), "root's proof of another change"),
    ];
    for (proof, what) in refusals {
        let e = peer.forward(forward(add("mallory"), proof)).await.expect_err(what);
        assert!(matches!(e.code(), Code::Unauthenticated | Code::PermissionDenied), "{what}: {e:?}");
    }
    let proof = access.forward_proof(&as_user("root"), &add("trent"));
    let r = peer.forward(forward(add("trent"), proof.clone())).await.unwrap().into_inner();
    assert!(r.error.is_empty() && !r.not_leader, "{r:?}");
    let again = peer.forward(forward(add("trent"), proof)).await.expect_err("a proof used twice");
    assert!(again.message().contains("used already"), "{again:?}");
    let root = token(&mut c, "root", "rootpw").await;
    let status = c.auth_status(req(pb::AuthStatusRequest {}, Some(&root))).await.unwrap().into_inner();
    let names: Vec<&str> = status.users.iter().map(|u| u.name.as_str()).collect();
    assert!(names.contains(&"trent") && !names.contains(&"mallory"), "{names:?}");
}
