//! The HTTP endpoint (`--http-addr`): liveness, readiness and Prometheus metrics (issue 12, first
//! step: the Raft and state-machine gauges of every group and the process's own figures; the
//! per-primitive histograms, hot names, history and the dashboard come next).
//!
//! - `GET /healthz`: 200 while the process serves (the node thread runs).
//! - `GET /readyz`: 200 when every group this node is a voter of has a leader it knows and has applied
//!   what it knows committed (within [`READY_LAG`] entries); else 503 with one line per reason.
//!   For load balancers and Kubernetes readiness probes.
//! - `GET /metrics`: the OpenMetrics text format, written by the `prometheus-client` crate.
//!   Labels are bounded: a group id (at most 1,024 data groups, the meta group and the etcd
//!   keyspace's), never a name.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use baton_node::{GroupStatus, Role};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;

use crate::runtime::{Input, NodeHandle};

/// Entries a group may have committed but not applied yet and still count as caught up.
pub const READY_LAG: u64 = 1_000;

/// The routes, over the node thread's handle.
pub fn router(node: NodeHandle) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
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
    let reasons = not_ready(&groups);
    if reasons.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, reasons.join("\n") + "\n").into_response()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabel {
    group: u64,
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

/// The metrics text of this node now.
pub fn render(node_id: u64, groups: &[GroupStatus]) -> String {
    let mut registry = Registry::with_prefix("baton");
    let term = per_group(&mut registry, "raft_term", "This node's Raft term in the group");
    let commit = per_group(&mut registry, "raft_commit_index", "Highest log index known committed");
    let applied = per_group(&mut registry, "raft_applied_index", "Highest log index applied to the state machine");
    let leader = per_group(&mut registry, "raft_leader", "The group's leader as this node knows it (0: none)");
    let leading = per_group(&mut registry, "raft_is_leader", "1 if this node leads the group");
    let asleep = per_group(&mut registry, "group_asleep", "1 if the group hibernates here (idle)");
    let sessions = per_group(&mut registry, "sessions", "Session records in the group's state machine");
    let locks = per_group(&mut registry, "locks", "Names held, awaited or in lock-delay in the group");
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
    let body = render(node.id, &groups);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}
