//! The `Crdt` call: checks and converts a request of the coordination-free tier, and its
//! answer. Cheap checks first (kind, name, sizes, token), so a bad request costs nothing.

use std::time::Duration;

use baton_core::crdt::{Context, Key, Kind, Op, Value};
use baton_node::crdt::{CrdtReply, CrdtRequest, ReadLevel};
use baton_proto::v1 as pb;
use tonic::Status;

/// Longest wait a request may ask for.
pub const MAX_TIMEOUT_MS: u64 = 60_000;
/// Wait when the request names none.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// Largest session token accepted (a context: a few numbers per node, and the dots that
/// arrived out of order).
pub const MAX_TOKEN_BYTES: usize = 4 * 1024;

/// The kind a request names.
pub fn kind_of(kind: i32) -> Result<Kind, Status> {
    use pb::CrdtKind as K;
    Ok(match K::try_from(kind) {
        Ok(K::Gcounter) => Kind::GCounter,
        Ok(K::Pncounter) => Kind::PnCounter,
        Ok(K::Bcounter) => Kind::BoundedCounter,
        Ok(K::Gset) => Kind::GSet,
        Ok(K::Orset) => Kind::OrSet,
        Ok(K::LwwRegister) => Kind::LwwRegister,
        Ok(K::MvRegister) => Kind::MvRegister,
        Ok(K::Unspecified) | Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown CRDT kind {kind}: give one of gcounter .. mv_register"
            )))
        }
    })
}

/// Decodes a session token (empty: the empty context).
pub fn decode_token(bytes: &[u8]) -> Result<Context, Status> {
    if bytes.is_empty() {
        return Ok(Context::new());
    }
    if bytes.len() > MAX_TOKEN_BYTES {
        return Err(Status::invalid_argument(format!("session token longer than {MAX_TOKEN_BYTES} bytes")));
    }
    Context::from_bytes(bytes)
        .filter(Context::is_canonical)
        .ok_or_else(|| Status::invalid_argument("undecodable session token: pass back the token of an earlier answer"))
}

/// Encodes a session token.
pub fn encode_token(ctx: &Context) -> Vec<u8> {
    ctx.to_bytes()
}

/// The replica's request for a wire request, and how long it may wait.
pub fn request(req: pb::CrdtRequest) -> Result<(CrdtRequest, Duration), Status> {
    use pb::crdt_request::Op as P;
    let kind = kind_of(req.kind)?;
    let key = Key::new(kind, req.name).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let timeout_ms = match req.timeout_ms {
        0 => DEFAULT_TIMEOUT_MS,
        t if t > MAX_TIMEOUT_MS => {
            return Err(Status::invalid_argument(format!("timeout_ms above {MAX_TIMEOUT_MS}")));
        }
        t => t,
    };
    let op = match req.op {
        None => return Err(Status::invalid_argument("CRDT request without an operation")),
        Some(P::Read(level)) => {
            let level = match pb::CrdtReadLevel::try_from(level) {
                Ok(pb::CrdtReadLevel::Local) => ReadLevel::Local,
                Ok(pb::CrdtReadLevel::Session) => ReadLevel::Session(decode_token(&req.token)?),
                Ok(pb::CrdtReadLevel::Converged) => ReadLevel::Converged,
                Err(_) => return Err(Status::invalid_argument(format!("unknown read level {level}"))),
            };
            return Ok((CrdtRequest::Read { key, level }, Duration::from_millis(timeout_ms)));
        }
        Some(P::Add(0)) | Some(P::Subtract(0)) => return Err(Status::invalid_argument("an amount of 0")),
        Some(P::Add(n)) => Op::Add(n),
        Some(P::Subtract(n)) => Op::Subtract(n),
        Some(P::Insert(e)) => Op::Insert(e),
        Some(P::Remove(e)) => Op::Remove(e),
        Some(P::Write(v)) => Op::Write(Some(v)),
        Some(P::Clear(_)) => Op::Write(None),
    };
    let after = decode_token(&req.token)?;
    Ok((CrdtRequest::Update { key, op, after }, Duration::from_millis(timeout_ms)))
}

/// A watch event for an object's value (`kind`: `crdt_value` or `crdt_changed`).
pub fn watch_event(key: &Key, value: Value, kind: &str, local: bool) -> pb::WatchEvent {
    let clamp = |v: i128| v.clamp(i64::MIN as i128, i64::MAX as i128) as i64;
    let mut e = pb::WatchEvent {
        r#type: kind.into(),
        name: key.name.clone(),
        crdt_kind: key.kind.label().into(),
        local,
        ..Default::default()
    };
    match value {
        Value::Counter(v) | Value::Bounded { value: v, .. } => e.counter_value = clamp(v),
        Value::Members(m) => e.members = m,
        Value::Register { value, .. } => e.values = value.into_iter().collect(),
        Value::Values(v) => e.values = v,
    }
    e
}

/// Serves a watch of coordination-free objects (see `WatchRequest.crdt`): the current values of
/// a named object's kinds, then every change on this node, each checked against the caller's
/// permissions before it is sent.
pub async fn watch(
    tier: crate::crdt::CrdtHandle,
    access: crate::access::Access,
    caller: crate::access::Caller,
    need: crate::access::Need,
    name: String,
    prefix: bool,
    tx: tokio::sync::mpsc::Sender<Result<pb::WatchEvent, Status>>,
) {
    // Subscribed before the current values are read: nothing falls between.
    let mut changes = tier.changes.subscribe();
    if !prefix {
        for kind in Kind::ALL {
            let Ok(key) = Key::new(kind, name.clone()) else { return };
            let read = CrdtRequest::Read { key: key.clone(), level: ReadLevel::Local };
            match tier.request(read, Duration::from_secs(1)).await {
                Ok(reply) if !reply.token.is_empty() => {
                    if tx.send(Ok(watch_event(&key, reply.value, "crdt_value", false))).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(crate::status::crdt_status(e, |n| tier.addr_of(n)))).await;
                    return;
                }
            }
        }
    }
    // Marks where the live changes start (after a name's values): a client that reopens a
    // watch sees a second one and knows that changes in between were not shown.
    let sync = pb::WatchEvent { r#type: "crdt_sync".into(), name: name.clone(), ..Default::default() };
    if tx.send(Ok(sync)).await.is_err() {
        return;
    }
    loop {
        // Ends as soon as the caller goes, not at the next matching change (which may never
        // come, and keeps every change's value being made while anyone watches).
        let received = tokio::select! {
            r = changes.recv() => r,
            _ = tx.closed() => return,
        };
        let change = match received {
            Ok(c) => c,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                let msg = format!("the watch fell {n} changes behind this node's: read the values and watch again");
                let _ = tx.send(Err(Status::out_of_range(msg))).await;
                return;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let hit = if prefix { change.key.name.starts_with(&name) } else { change.key.name == name };
        if !hit {
            continue;
        }
        // Permissions may change while the watch runs.
        if let Err(s) = access.check(&caller, "Watch", std::slice::from_ref(&need)) {
            let _ = tx.send(Err(s)).await;
            return;
        }
        if tx.send(Ok(watch_event(&change.key, change.value, "crdt_changed", change.local))).await.is_err() {
            return;
        }
    }
}

/// The wire answer.
pub fn response(reply: CrdtReply, node: u64) -> pb::CrdtResponse {
    let clamp = |v: i128| v.clamp(i64::MIN as i128, i64::MAX as i128) as i64;
    let mut out = pb::CrdtResponse { token: encode_token(&reply.token), node, ..Default::default() };
    match reply.value {
        Value::Counter(v) => out.value = clamp(v),
        Value::Bounded { value, rights } => {
            out.value = clamp(value);
            out.rights = clamp(rights);
        }
        Value::Members(m) => out.members = m,
        Value::Register { value, stamp } => {
            out.values = value.into_iter().collect();
            if let Some((hlc, node)) = stamp {
                out.stamp_ms = hlc.physical_ms;
                out.stamp_logical = hlc.logical;
                out.stamp_node = node;
            }
        }
        Value::Values(v) => out.values = v,
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_requests_are_refused_with_what_was_wrong() {
        let ok = pb::CrdtRequest {
            kind: pb::CrdtKind::Pncounter as i32,
            name: "hits".into(),
            op: Some(pb::crdt_request::Op::Add(1)),
            ..Default::default()
        };
        assert!(request(ok.clone()).is_ok());
        let cases = [
            (pb::CrdtRequest { kind: 0, ..ok.clone() }, "unknown CRDT kind"),
            (pb::CrdtRequest { name: String::new(), ..ok.clone() }, "name is empty"),
            (pb::CrdtRequest { name: "x".repeat(1025), ..ok.clone() }, "longer than 1024"),
            (pb::CrdtRequest { op: None, ..ok.clone() }, "without an operation"),
            (pb::CrdtRequest { op: Some(pb::crdt_request::Op::Add(0)), ..ok.clone() }, "amount of 0"),
            (pb::CrdtRequest { timeout_ms: 60_001, ..ok.clone() }, "timeout_ms"),
            (
                pb::CrdtRequest {
                    op: Some(pb::crdt_request::Op::Read(pb::CrdtReadLevel::Session as i32)),
                    token: vec![1, 2, 3],
                    ..ok.clone()
                },
                "undecodable session token",
            ),
        ];
        for (req, want) in cases {
            let err = request(req).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.message().contains(want), "{} lacks {want:?}", err.message());
        }
    }

    #[test]
    fn tokens_round_trip() {
        let mut ctx = Context::new();
        ctx.insert_upto(3, 7);
        assert_eq!(decode_token(&encode_token(&ctx)).unwrap(), ctx);
    }
}
