//! The HTTP endpoint (`--http-addr`): liveness, readiness, Prometheus metrics, the JSON API the
//! dashboard reads, and the dashboard itself.
//!
//! - `GET /healthz`: 200 while the process serves (the node thread runs).
//! - `GET /readyz`: 200 when every group this node is a voter of has a leader it knows and has applied
//!   what it knows committed (within [`READY_LAG`] entries), and the coordination-free tier runs;
//!   else 503 with one line per reason.
//!   For load balancers and Kubernetes readiness probes.
//! - `GET /metrics`: the OpenMetrics text format, written by the `prometheus-client` crate.
//!   Labels are bounded: a group id (at most 1,024 data groups, the meta group and the etcd
//!   keyspace's), a primitive kind, a peer, an outcome; never a name.
//! - `GET /api/overview`: this node, its view of the groups (leader, term, indexes, sessions,
//!   names, waiters), node-wide lock totals and the acquire-wait buckets (the dashboard turns
//!   their deltas into percentiles over time).
//! - `GET /api/hot?limit=N`: the hottest names of the groups this node holds (as `Hot`).
//! - `GET /api/history?name=NAME&limit=N`: what happened to a name lately (as `History`).
//! - `GET /api/events`: server-sent events, one `events` message every [`EVENT_BATCH`] with the
//!   lock, election, counter, register and session events applied here meanwhile (at most
//!   [`MAX_EVENTS_PER_BATCH`]; `skipped` counts the rest, so a busy cluster cannot flood a
//!   browser).
//! - `POST /api/login` (JSON `{"user", "password"}`), `POST /api/renew`, `POST /api/logout`:
//!   with authentication on, a token for the `/api/*` endpoints in an `HttpOnly`,
//!   `SameSite=Strict` cookie (`Secure` over TLS; never in a body): the dashboard's sign-in. At
//!   most a few sign-ins a second from one address; the cookie only is renewed, and not past
//!   12 hours after the sign-in.
//! - `GET /`: the dashboard, a page built into the binary (no external fetch).
//!
//! # Authentication
//! Health, readiness and metrics show no names and need no credentials (probes and scrapers).
//! With authentication on, every `/api/*` endpoint needs a user: a token as
//! `Authorization: Bearer <token>` or in the `baton_token` cookie (401 otherwise), and answers
//! with what that user may read (the same [`Access`] checks as the gRPC APIs): hot names and
//! events only for names it may read, a history only with read on the name (403 otherwise),
//! events without a name (sessions) only to users who may read every name. The event stream
//! ends when its credentials stop holding (an expired token, a changed user). Client
//! certificates are not read on this port: use a token.
//!
//! # Limits
//! At most [`MAX_CONNECTIONS`] connections at once (more wait in the kernel's backlog), each
//! closed after [`IDLE_TIMEOUT`] without a byte either way (the event stream sends a keepalive
//! comment every 15 s, so an open dashboard is never idle).

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use baton_core::auth::Permission;
use baton_node::{GroupStatus, Role};
use futures::StreamExt;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;

use crate::access::{Access, Caller, Need};
use crate::obs::api;
use crate::obs::GroupLabel;
use crate::runtime::{Input, NodeHandle};

/// How often the event stream sends what it gathered.
pub const EVENT_BATCH: Duration = Duration::from_millis(250);
/// Events of the past the stream starts with (the latest, over all groups).
pub const BACKLOG: usize = 50;
/// Events one batch of the stream carries at most.
pub const MAX_EVENTS_PER_BATCH: usize = 200;

/// The dashboard page.
const DASHBOARD: &str = include_str!("dashboard.html");

async fn dashboard() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], DASHBOARD).into_response()
}

/// Most connections the HTTP port serves at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// A connection with no byte either way for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// The cookie the dashboard keeps its token in.
pub const TOKEN_COOKIE: &str = "baton_token";

/// A refusal as JSON with the status code that fits it.
fn refused(s: tonic::Status) -> Response {
    let code = match s.code() {
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::FailedPrecondition => StatusCode::CONFLICT,
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut response = (code, Json(serde_json::json!({ "error": s.message() }))).into_response();
    if code == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    }
    response
}

fn access(node: &NodeHandle) -> Access {
    Access::new(node.view.clone(), node.metrics.clone())
}

/// The token a request carries: `Authorization: Bearer`, else the dashboard's cookie.
fn token_of(headers: &HeaderMap) -> (Option<&str>, TokenFrom) {
    let bearer =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if bearer.is_some() {
        return (bearer, TokenFrom::Header);
    }
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(TOKEN_COOKIE)?.strip_prefix('='));
    match cookie {
        Some(c) => (Some(c), TokenFrom::Cookie),
        None => (None, TokenFrom::Nowhere),
    }
}

/// Who calls an `/api/*` endpoint (see the module docs), put in the request's extensions for
/// the handler; a caller without valid credentials is refused here (401).
async fn authenticate(
    State(node): State<NodeHandle>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let access = access(&node);
    let mut metadata = tonic::metadata::MetadataMap::new();
    let (token, from) = token_of(request.headers());
    let token = token.map(str::to_string);
    request.extensions_mut().insert(from);
    if let Some(token) = token {
        match format!("Bearer {token}").parse() {
            Ok(value) => {
                metadata.insert("authorization", value);
            }
            Err(_) => return refused(tonic::Status::unauthenticated("invalid token: not a Baton token")),
        }
    }
    match access.caller(&metadata, None) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(s) => refused(s),
    }
}

/// Sign-ins over HTTP checked at once on a node (their own places: they cannot use up those of
/// the gRPC APIs' `Authenticate`).
static HTTP_SIGN_INS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// How the HTTP port is served.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpOptions {
    /// Over TLS: cookies are marked `Secure`.
    pub tls: bool,
}

/// Where a request's token came from (renewals take the dashboard's cookie only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TokenFrom {
    Cookie,
    Header,
    Nowhere,
}

/// A sign-in's answer: the token set as the dashboard's cookie (`HttpOnly`: page scripts never
/// see it, and it is not in the body either).
fn with_token(token: String, options: HttpOptions) -> Response {
    let ttl = crate::access::TOKEN_TTL.as_secs();
    let secure = if options.tls { "; Secure" } else { "" };
    let cookie = format!("{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={ttl}{secure}");
    let body = Json(serde_json::json!({ "ttl_ms": ttl * 1000 }));
    ([(header::SET_COOKIE, cookie)], body).into_response()
}

#[derive(serde::Deserialize)]
struct Login {
    user: String,
    password: String,
}

async fn login(
    State(node): State<NodeHandle>,
    axum::extract::ConnectInfo(crate::bounded::PeerAddr(from)): axum::extract::ConnectInfo<crate::bounded::PeerAddr>,
    Extension(options): Extension<HttpOptions>,
    Json(l): Json<Login>,
) -> Response {
    let access = access(&node);
    if !access.ready() {
        return refused(tonic::Status::unavailable("this node has not caught up with the cluster's users and roles"));
    }
    // A few a second from one address (review finding: anyone who reaches the port could
    // guess passwords without end and keep every password check busy).
    if !access.rates().sign_in_from(from.ip()) {
        let per_s = crate::access::SIGN_INS_PER_S;
        return refused(tonic::Status::resource_exhausted(format!(
            "at most {per_s} sign-ins a second from one address: try again shortly"
        )));
    }
    match crate::service::authenticate_with(&HTTP_SIGN_INS, &access, l.user, l.password).await {
        Ok(token) => with_token(token, options),
        Err(s) => refused(s),
    }
}

async fn renew(
    State(node): State<NodeHandle>,
    Extension(caller): Extension<Caller>,
    Extension(from): Extension<TokenFrom>,
    Extension(options): Extension<HttpOptions>,
) -> Response {
    // The dashboard's cookie only: a token taken elsewhere (a header) is not kept alive here.
    if from != TokenFrom::Cookie {
        return refused(tonic::Status::failed_precondition("only the dashboard's sign-in cookie is renewed"));
    }
    match access(&node).renew(&caller) {
        Ok(token) => with_token(token, options),
        Err(s) => refused(s),
    }
}

async fn logout() -> Response {
    let cookie = format!("{TOKEN_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], StatusCode::NO_CONTENT).into_response()
}

async fn overview(State(node): State<NodeHandle>) -> Response {
    let Some(groups) = statuses(&node).await else {
        return refused(tonic::Status::unavailable("the node has stopped"));
    };
    let nodes = node.view.lock().expect("view lock").client_addrs.clone();
    let m = &node.metrics;
    let v = serde_json::json!({
        "node": node.id,
        "nodes": nodes.iter().map(|(id, addr)| serde_json::json!({ "id": id, "client_addr": addr })).collect::<Vec<_>>(),
        "groups": groups.iter().map(|g| serde_json::json!({
            "id": g.id,
            "leader": g.leader,
            "term": g.term,
            "role": format!("{:?}", g.role),
            "commit": g.commit,
            "applied": g.applied,
            "sessions": g.sessions,
            "locks": g.locks,
            "waiters": g.waiters,
            "last_token": g.last_token,
            "replicas": g.replicas,
            "asleep": g.asleep,
        })).collect::<Vec<_>>(),
        "totals": m.totals.json(),
        "wait_bucket_ms": crate::obs::WAIT_BUCKETS_MS.iter().map(|b| if *b == u64::MAX { None } else { Some(*b) }).collect::<Vec<_>>(),
        "wait_buckets": m.wait_buckets.counts(),
    });
    Json(v).into_response()
}

#[derive(serde::Deserialize)]
struct HotParams {
    limit: Option<u32>,
}

async fn hot(
    State(node): State<NodeHandle>,
    Extension(caller): Extension<Caller>,
    Query(p): Query<HotParams>,
) -> Response {
    let access = access(&node);
    if let Err(s) = access.check(&caller, "hot", &[Need::somewhere(Permission::Read)]) {
        return refused(s);
    }
    match api::hot(&node, p.limit.unwrap_or(0)).await {
        Ok(mut h) => {
            h.names.retain(|n| access.may_read(&caller, &n.name));
            Json(api::hot_json(&h)).into_response()
        }
        Err(s) => refused(s),
    }
}

#[derive(serde::Deserialize)]
struct HistoryParams {
    name: String,
    limit: Option<u32>,
}

async fn history(
    State(node): State<NodeHandle>,
    Extension(caller): Extension<Caller>,
    Query(p): Query<HistoryParams>,
) -> Response {
    if let Err(s) = access(&node).check(&caller, "history", &[Need::name(Permission::Read, &p.name)]) {
        return refused(s);
    }
    match api::history(&node, &p.name, 0, p.limit.unwrap_or(0)) {
        Ok(h) => Json(serde_json::json!({
            "name": p.name,
            "group": h.group,
            "kept_from_seq": h.kept_from_seq,
            "events": h.events.iter().map(api::event_json).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(s) => refused(s),
    }
}

/// The live event stream: every group this node holds, batched, with what the caller may read
/// (see the module docs).
async fn events(State(node): State<NodeHandle>, Extension(caller): Extension<Caller>) -> Response {
    let access = access(&node);
    // Events without a name (sessions) only to those who may read every name.
    let shown = {
        let (access, caller) = (access.clone(), caller.clone());
        move |w: &crate::watch::Watched| match w.name() {
            Some(name) => access.may_read(&caller, name),
            None => access.allows(&caller, &Need::everything(Permission::Read)),
        }
    };
    // The latest kept events of every group first (so that the page opens on what just
    // happened), then the live ones: each group's backlog and feed come from one subscription,
    // with nothing lost or repeated between them.
    let mut backlog = Vec::new();
    let feeds: Vec<_> = {
        let mut logs = node.events.lock().expect("event log");
        let groups = logs.groups();
        let mut feeds = Vec::new();
        for g in groups {
            let log = logs.group(g);
            let from = log.last_seq().saturating_sub(BACKLOG as u64 - 1).max(1);
            // Err: the kept history starts later (a snapshot was installed): from there.
            let Ok((kept, rx)) = log.subscribe(from).or_else(|available| log.subscribe(available)) else {
                continue;
            };
            backlog.extend(kept);
            feeds.push(rx);
        }
        feeds
    };
    backlog.retain(|w| !matches!(w.event, baton_core::Event::SessionRefreshed { .. }) && shown(w));
    backlog.sort_by_key(|w| w.hlc);
    let first: Vec<serde_json::Value> =
        backlog.iter().rev().take(BACKLOG).rev().map(|w| api::event_json(&crate::watch::to_proto(w))).collect();
    let mut merged = futures::stream::select_all(feeds.into_iter().map(tokio_stream::wrappers::BroadcastStream::new));
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<SseEvent, std::convert::Infallible>>(4);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVENT_BATCH);
        let (mut batch, mut skipped) = (first, 0u64);
        loop {
            tokio::select! {
                // (A node with no group yet has no feed: the stream just stays open.)
                item = merged.next(), if !merged.is_empty() => match item {
                    None => return, // the node stopped
                    Some(Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n))) => skipped += n,
                    Some(Ok(w)) => {
                        if matches!(w.event, baton_core::Event::SessionRefreshed { .. }) || !shown(&w) {
                            continue;
                        }
                        if batch.len() < MAX_EVENTS_PER_BATCH {
                            batch.push(api::event_json(&crate::watch::to_proto(&w)));
                        } else {
                            skipped += 1;
                        }
                    }
                },
                _ = tx.closed() => return, // the browser went away
                _ = tick.tick() => {
                    // Credentials that stopped holding (an expired token, a changed user) end
                    // the stream; the browser signs in again.
                    if access.check(&caller, "events", &[]).is_err() {
                        return;
                    }
                    if batch.is_empty() && skipped == 0 {
                        continue;
                    }
                    let data = serde_json::json!({ "events": std::mem::take(&mut batch), "skipped": skipped });
                    skipped = 0;
                    if tx.send(Ok(SseEvent::default().event("events").data(data.to_string()))).await.is_err() {
                        return; // the browser went away
                    }
                }
            }
        }
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx)).keep_alive(KeepAlive::default()).into_response()
}

/// Entries a group may have committed but not applied yet and still count as caught up.
pub const READY_LAG: u64 = 1_000;

/// The routes, over the node thread's handle.
pub fn router(node: NodeHandle, options: HttpOptions) -> Router {
    // Health and metrics carry no name and stay open; the API needs a user while
    // authentication is on (see the module docs).
    let api = Router::new()
        .route("/api/overview", get(overview))
        .route("/api/hot", get(hot))
        .route("/api/history", get(history))
        .route("/api/events", get(events))
        .route("/api/renew", post(renew))
        .route_layer(axum::middleware::from_fn_with_state(node.clone(), authenticate));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(dashboard))
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .merge(api)
        .layer(Extension(options))
        .with_state(node)
}

/// The status of every group this node is a voter of, from the node thread (`None`: it has
/// stopped). A replica placement moved away stays on the node, frozen: it is left out.
async fn statuses(node: &NodeHandle) -> Option<Vec<GroupStatus>> {
    let (tx, rx) = oneshot::channel();
    if !node.send(Input::Status { tx }) {
        return None;
    }
    let groups = rx.await.ok()?;
    Some(groups.into_iter().filter(|g| g.replicas.contains(&node.id)).collect())
}

async fn healthz(State(node): State<NodeHandle>) -> Response {
    match statuses(&node).await {
        Some(_) => (StatusCode::OK, "ok\n").into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "the node has stopped\n").into_response(),
    }
}

/// Why this node is not ready to serve, one line per reason (none: ready).
pub fn not_ready(groups: &[GroupStatus]) -> Vec<String> {
    let mut reasons = Vec::new();
    if groups.is_empty() {
        reasons.push("this node holds no group yet (a joiner the cluster has not added)".to_string());
    }
    for g in groups {
        if g.leader.is_none() {
            reasons.push(format!("group {} has no leader known here", g.id));
        }
        if g.commit > g.applied + READY_LAG {
            reasons.push(format!("group {} has applied {} of {} committed entries", g.id, g.applied, g.commit));
        }
    }
    reasons
}

async fn readyz(State(node): State<NodeHandle>) -> Response {
    let Some(groups) = statuses(&node).await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "the node has stopped\n").into_response();
    };
    let mut reasons = not_ready(&groups);
    if let Some(e) = node.view.lock().expect("view lock").crdt_failed.clone() {
        reasons.push(format!("the coordination-free tier stopped on this node: {e}"));
    }
    if reasons.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, reasons.join("\n") + "\n").into_response()
    }
}

/// One gauge per group, registered under `name`.
fn per_group(registry: &mut Registry, name: &str, help: &str) -> Family<GroupLabel, Gauge> {
    let family = Family::<GroupLabel, Gauge>::default();
    registry.register(name, help, family.clone());
    family
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64>::default();
    g.set(value);
    registry.register(name, help, g);
}

/// The metrics text of this node now: the gauges read from `groups` and the process, and what
/// `counted` has counted.
pub fn render(node_id: u64, groups: &[GroupStatus], counted: &crate::obs::Metrics) -> String {
    let mut registry = Registry::with_prefix("baton");
    counted.register(&mut registry);
    let term = per_group(&mut registry, "raft_term", "This node's Raft term in the group");
    let commit = per_group(&mut registry, "raft_commit_index", "Highest log index known committed");
    let applied = per_group(&mut registry, "raft_applied_index", "Highest log index applied to the state machine");
    let leader = per_group(&mut registry, "raft_leader", "The group's leader as this node knows it (0: none)");
    let leading = per_group(&mut registry, "raft_is_leader", "1 if this node leads the group");
    let asleep = per_group(&mut registry, "group_asleep", "1 if the group hibernates here (idle)");
    let sessions = per_group(&mut registry, "sessions", "Session records in the group's state machine");
    let locks = per_group(&mut registry, "locks", "Names held, awaited or in lock-delay in the group");
    let waiters = per_group(&mut registry, "lock_waiters", "Waiters queued on the group's names now");
    let lag = per_group(&mut registry, "raft_apply_lag", "Entries committed and not applied yet here");
    let log = per_group(&mut registry, "raft_log_entries", "Entries in this node's Raft log (not yet in a snapshot)");
    let token = per_group(&mut registry, "last_fencing_token", "Last fencing token the group issued");
    let replicas = per_group(&mut registry, "group_replicas", "Voters of the group");
    let snapshot = per_group(&mut registry, "snapshot_bytes_in_memory", "Snapshot data held in memory for followers");
    let etcd_bytes = per_group(&mut registry, "etcd_keyspace_bytes", "What the etcd keyspace's kept history weighs");
    let etcd_rev = per_group(&mut registry, "etcd_revision", "The etcd keyspace's revision");
    for g in groups {
        let l = GroupLabel { group: g.id };
        term.get_or_create(&l).set(g.term as i64);
        commit.get_or_create(&l).set(g.commit as i64);
        applied.get_or_create(&l).set(g.applied as i64);
        leader.get_or_create(&l).set(g.leader.unwrap_or(0) as i64);
        leading.get_or_create(&l).set(i64::from(g.role == Role::Leader));
        asleep.get_or_create(&l).set(i64::from(g.asleep));
        sessions.get_or_create(&l).set(g.sessions as i64);
        locks.get_or_create(&l).set(g.locks as i64);
        waiters.get_or_create(&l).set(g.waiters as i64);
        lag.get_or_create(&l).set(g.commit.saturating_sub(g.applied) as i64);
        log.get_or_create(&l).set(g.log_entries as i64);
        token.get_or_create(&l).set(g.last_token as i64);
        replicas.get_or_create(&l).set(g.replicas.len() as i64);
        snapshot.get_or_create(&l).set(g.snapshot_bytes_in_memory as i64);
        if g.id == baton_core::topology::ETCD_GROUP {
            etcd_bytes.get_or_create(&l).set(g.etcd_bytes as i64);
            etcd_rev.get_or_create(&l).set(g.etcd_revision);
        }
    }
    gauge(&mut registry, "node_id", "This node's id", node_id as i64);
    gauge(&mut registry, "groups", "Groups this node holds a replica of", groups.len() as i64);
    let me = std::process::id();
    if let Ok(rss) = crate::sys::rss_bytes(me) {
        gauge(&mut registry, "process_resident_memory_bytes", "Resident memory of this process", rss as i64);
    }
    if let Ok(cpu) = crate::sys::cpu_seconds(me) {
        gauge(&mut registry, "process_cpu_milliseconds", "CPU time this process has used", (cpu * 1000.0) as i64);
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("writing to a String does not fail");
    text
}

async fn metrics(State(node): State<NodeHandle>) -> Response {
    let Some(groups) = statuses(&node).await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "the node has stopped\n").into_response();
    };
    let body = render(node.id, &groups, &node.metrics);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}
