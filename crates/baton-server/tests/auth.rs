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
                    pb::AttachSessionRequest { session_id: 1, client_id: "t".into(), ttl_ms: 5_000, group: 1 },
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
        let allowed =
            ["OpenSession", "AttachSession", "CloseSession", "Status", "Topology", "KeepAlive", "Call", "Hot"];
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

    // The etcd API: administrators only, for now (token in etcd's `token` metadata).
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
    assert_eq!(kv.range(range(None)).await.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(kv.range(range(Some(&bob))).await.unwrap_err().code(), Code::PermissionDenied);
    let root_token = token(&mut c, "root", "rootpw").await;
    kv.range(range(Some(&root_token))).await.expect("root reads the keyspace");

    // HTTP: what shows names is refused while authentication is on; health and metrics are not.
    let http = &cluster.http_addrs[&leader];
    let (status, body) = common::http_get(http, "/api/hot");
    assert_eq!(status, 403, "{body}");
    let (status, metrics) = common::http_get(http, "/metrics");
    assert_eq!(status, 200);
    // Refusals are counted.
    assert!(metrics.contains("baton_access_denied_total{permission=\"lock\"}"), "{metrics}");
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
}
