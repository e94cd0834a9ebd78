//! The answers behind `Hot` and `History`, shared by the gRPC service, the HTTP JSON API and the
//! dashboard: one place that computes them.

use baton_proto::v1 as pb;
use tokio::sync::oneshot;
use tonic::Status;

use crate::runtime::{Input, NodeHandle};

/// Names per group a hot answer may ask for.
pub const MAX_HOT: u32 = 256;
/// Names per group when the caller does not say.
pub const DEFAULT_HOT: u32 = 20;
/// Events a history answer may ask for.
pub const MAX_HISTORY: u32 = 10_000;
/// Events when the caller does not say.
pub const DEFAULT_HISTORY: u32 = 100;

/// The hottest names of every group this node holds a replica of.
pub async fn hot(node: &NodeHandle, limit: u32) -> Result<pb::HotResponse, Status> {
    if limit > MAX_HOT {
        return Err(Status::invalid_argument(format!("limit {limit} is above {MAX_HOT} names per group")));
    }
    let limit = if limit == 0 { DEFAULT_HOT } else { limit };
    let (tx, rx) = oneshot::channel();
    if !node.send(Input::Hot { limit: limit as usize, tx }) {
        return Err(Status::unavailable("node is shutting down"));
    }
    let groups = rx.await.map_err(|_| Status::unavailable("node is shutting down"))?;
    let mut answer = pb::HotResponse { node_id: node.id, ..Default::default() };
    for g in groups {
        answer.groups.push(g.group);
        for n in g.names {
            answer.names.push(pb::HotName {
                group: g.group,
                kind: n.kind.unwrap_or_default().to_string(),
                weight: n.stats.weight,
                weight_error: n.stats.error,
                waits: n.stats.waits,
                handoffs: n.stats.handoffs,
                wait_ms_total: n.stats.wait_ms_total,
                wait_ms_max: n.stats.wait_ms_max,
                gave_up: n.stats.gave_up,
                holders: n
                    .holders
                    .iter()
                    .map(|&(session_id, token, held_for_ms)| pb::Holder {
                        session_id,
                        token,
                        held_for_ms,
                        ..Default::default()
                    })
                    .collect(),
                waiters: n.waiters as u32,
                oldest_wait_ms: n.oldest_wait_ms,
                name: n.name,
            });
        }
    }
    Ok(answer)
}

/// The latest events about `name` this node keeps (`group` 0: the group serving it by this
/// node's map).
pub fn history(node: &NodeHandle, name: &str, group: u64, limit: u32) -> Result<pb::HistoryResponse, Status> {
    baton_core::Limits::default().check_name(name).map_err(|e| Status::invalid_argument(e.to_string()))?;
    if limit > MAX_HISTORY {
        return Err(Status::invalid_argument(format!("limit {limit} is above {MAX_HISTORY} events")));
    }
    let limit = if limit == 0 { DEFAULT_HISTORY } else { limit };
    let group = if group == 0 { node.view.lock().expect("view lock").group_of(name) } else { group };
    // The node thread takes this lock for every event it applies: find under it, convert after.
    let (events, kept_from_seq) = {
        let mut logs = node.events.lock().expect("event log");
        if !logs.groups().contains(&group) {
            return Err(Status::failed_precondition(format!(
                "node {} holds no replica of group {group}: ask a node that does",
                node.id
            )));
        }
        logs.group(group).about(name, limit as usize)
    };
    Ok(pb::HistoryResponse { group, events: events.iter().map(|w| crate::watch::to_proto(w)).collect(), kept_from_seq })
}

/// A hot answer as JSON (the HTTP API's and `baton hot --json`'s form).
pub fn hot_json(h: &pb::HotResponse) -> serde_json::Value {
    serde_json::json!({
        "node": h.node_id,
        "groups": h.groups,
        "names": h.names.iter().map(|n| serde_json::json!({
            "name": n.name,
            "group": n.group,
            "kind": if n.kind.is_empty() { serde_json::Value::Null } else { n.kind.clone().into() },
            "weight": n.weight,
            "weight_error": n.weight_error,
            "waits": n.waits,
            "handoffs": n.handoffs,
            "wait_ms_avg": n.wait_ms_total.checked_div(n.handoffs).unwrap_or(0),
            "wait_ms_max": n.wait_ms_max,
            "gave_up": n.gave_up,
            "holders": n.holders.iter().map(|h| serde_json::json!({
                "session": h.session_id, "token": h.token, "held_for_ms": h.held_for_ms,
            })).collect::<Vec<_>>(),
            "waiters": n.waiters,
            "oldest_wait_ms": n.oldest_wait_ms,
        })).collect::<Vec<_>>(),
    })
}

/// An event as JSON (history, the dashboard's live stream, `baton history --json`). Fields
/// that do not apply to its type are left out.
pub fn event_json(e: &pb::WatchEvent) -> serde_json::Value {
    let mut v = serde_json::json!({
        "group": e.group,
        "seq": e.seq,
        "hlc": format!("{}.{}", e.hlc_physical_ms, e.hlc_logical),
        "wall_ms": e.hlc_physical_ms,
        "type": e.r#type,
    });
    let o = v.as_object_mut().expect("an object");
    let mut put = |k: &str, x: serde_json::Value| {
        o.insert(k.to_string(), x);
    };
    if !e.name.is_empty() {
        put("name", e.name.clone().into());
    }
    if e.session_id != 0 {
        put("session", e.session_id.into());
    }
    if e.token != 0 {
        put("token", e.token.into());
    }
    if e.request_id != 0 {
        put("request_id", e.request_id.into());
    }
    if !e.kind.is_empty() {
        put("kind", e.kind.clone().into());
    }
    match e.r#type.as_str() {
        "granted" => {
            put("handoff", e.handoff.into());
            put("waited_ms", e.waited_ms.into());
        }
        "released" | "expired" => put("held_ms", e.held_ms.into()),
        "wait_ended" => put("reason", e.reason.clone().into()),
        "counter_changed" => put("value", e.counter_value.into()),
        "register_changed" | "topology_changed" => put("version", e.version.into()),
        "leader" => put("value", String::from_utf8_lossy(&e.value).into_owned().into()),
        _ => {}
    }
    v
}

/// One line about an event, for people (`baton history`, `baton top`).
pub fn event_line(e: &pb::WatchEvent) -> String {
    let who = if e.session_id != 0 { format!(" session {}", e.session_id) } else { String::new() };
    let token = if e.token != 0 { format!(" token {}", e.token) } else { String::new() };
    let what = match e.r#type.as_str() {
        "granted" if e.handoff => format!("granted{who}{token} after waiting {} ms", e.waited_ms),
        "granted" => format!("granted{who}{token} at once"),
        "released" => format!("released{who}{token} after {} ms", e.held_ms),
        "expired" => format!("EXPIRED{who}{token} (session lost) after {} ms", e.held_ms),
        "queued" => format!("queued{who} (request {})", e.request_id),
        "wait_ended" => format!("gave up{who}: {}", e.reason),
        "leader" if e.session_id == 0 => "no leader".to_string(),
        "leader" => format!("leader{who}{token}: {}", String::from_utf8_lossy(&e.value)),
        "counter_changed" => format!("counter = {}", e.counter_value),
        "register_changed" if e.version == 0 => "register deleted".to_string(),
        "register_changed" => format!("register version {}", e.version),
        other => format!("{other}{who}"),
    };
    format!("{} #{} {} {}", wall_time(e.hlc_physical_ms), e.seq, e.name, what)
}

/// Milliseconds since the Unix epoch as `HH:MM:SS.mmm` UTC.
pub fn wall_time(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}.{:03}", (s / 3600) % 24, (s / 60) % 60, s % 60, ms % 1000)
}
