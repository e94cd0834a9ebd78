//! The CLI verbs that inspect or change a cluster's state (other than the lock family, which
//! runs a command under a lease: see `lock` in main.rs).

use super::*;

pub(crate) async fn status(eps: String, json: bool) -> ExitCode {
    let mut last_err = None;
    for ep in endpoints(&eps) {
        // This node's own view: a client of it alone (no discovery, no redirects).
        let options = baton_client::ClientOptions {
            tls: tls::client(),
            credentials: auth::credentials(),
            discover: false,
            ..Default::default()
        };
        let answer = match Client::connect_with([ep.clone()], options).await {
            Ok(c) => c.status_at(&ep).await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(s) => {
                if json {
                    out!("{}", status_json(&s));
                } else {
                    print_status(&s);
                }
                return ExitCode::SUCCESS;
            }
            // A refusal (credentials, permissions, bad TLS files): every node would say the same.
            Err(e @ (baton_client::Error::Status(_) | baton_client::Error::Tls(_))) => return client_error(e),
            Err(e) => last_err = Some(format!("{ep}: {e}")),
        }
    }
    fail(EXIT_UNAVAILABLE, format!("no node answered ({})", last_err.unwrap_or_default()))
}

fn status_json(s: &baton_proto::v1::StatusResponse) -> serde_json::Value {
    serde_json::json!({
        "node": s.node_id,
        "unclean_start": s.unclean_start,
        "torn_tail_bytes": s.torn_tail_bytes,
        "groups": s.groups.iter().map(|g| serde_json::json!({
            "id": g.id,
            "leader": if g.leader == 0 { serde_json::Value::Null } else { g.leader.into() },
            "term": g.term,
            "commit_index": g.commit_index,
            "applied_index": g.applied_index,
            "role": g.role,
            "sessions": g.sessions,
            "locks": g.locks,
            "last_token": g.last_token,
            "slots": g.slots.iter().map(|r| serde_json::json!([r.start, r.end])).collect::<Vec<_>>(),
            "replicas": g.replicas,
            "asleep": g.asleep,
        })).collect::<Vec<_>>(),
        "nodes": s.nodes.iter().map(|n| serde_json::json!({
            "id": n.id,
            "client_addr": if n.client_addr.is_empty() { serde_json::Value::Null } else { n.client_addr.clone().into() },
            "peer_addr": n.peer_addr,
        })).collect::<Vec<_>>(),
    })
}

fn print_status(s: &baton_proto::v1::StatusResponse) {
    out!("answered by node {}", s.node_id);
    if s.torn_tail_bytes > 0 {
        out!(
            "started after a crash in the middle of a write: dropped its torn, never-acknowledged last {} bytes",
            s.torn_tail_bytes
        );
    } else if s.unclean_start {
        out!("started after a crash (no write was torn)");
    }
    out!("{:<6} {:<22} {:<22}", "NODE", "CLIENT ADDR", "PEER ADDR");
    for n in &s.nodes {
        let client = if n.client_addr.is_empty() { "?" } else { &n.client_addr };
        out!("{:<6} {:<22} {:<22}", n.id, client, n.peer_addr);
    }
    out!();
    out!(
        "{:<6} {:<7} {:<6} {:<9} {:<9} {:<15} {:<9} {:<7} {:<10} {:<9} {}",
        "GROUP",
        "LEADER",
        "TERM",
        "COMMIT",
        "APPLIED",
        "ROLE",
        "SESSIONS",
        "LOCKS",
        "LAST TOKEN",
        "REPLICAS",
        "SLOTS"
    );
    for g in &s.groups {
        let leader = if g.leader == 0 { "-".to_string() } else { g.leader.to_string() };
        let replicas: Vec<String> = g.replicas.iter().map(u64::to_string).collect();
        let ranges: Vec<(u16, u16)> = g.slots.iter().map(|r| (r.start as u16, r.end as u16)).collect();
        let slots = match g.id {
            baton_core::META_GROUP => "(meta)".to_string(),
            baton_core::topology::ETCD_GROUP => "(etcd keyspace)".to_string(),
            _ => baton_core::slots::format_ranges(&ranges),
        };
        let role = if g.asleep { format!("{} asleep", g.role) } else { g.role.clone() };
        out!(
            "{:<6} {:<7} {:<6} {:<9} {:<9} {:<15} {:<9} {:<7} {:<10} {:<9} {}",
            g.id,
            leader,
            g.term,
            g.commit_index,
            g.applied_index,
            role,
            g.sessions,
            g.locks,
            g.last_token,
            replicas.join(","),
            slots
        );
    }
}

pub(crate) async fn describe(eps: String, json: bool, name: String) -> ExitCode {
    use baton_proto::v1::ResourceKind;
    let client = match connect(&eps).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let d = match client.describe(&name).await {
        Ok(d) => d,
        Err(e) => return client_error(e),
    };
    let kind = match ResourceKind::try_from(d.kind).unwrap_or(ResourceKind::Lock) {
        ResourceKind::Lock => "lock".to_string(),
        ResourceKind::Rwlock => "rwlock".to_string(),
        ResourceKind::Semaphore => format!("semaphore(capacity {})", d.capacity),
        ResourceKind::Election => "election".to_string(),
        ResourceKind::Barrier => format!("barrier({} parties)", d.capacity),
        ResourceKind::Latch => "latch".to_string(),
    };
    let mode = |shared: bool, permits: u32| match (shared, permits) {
        (true, _) => "read".to_string(),
        (false, 0) if d.kind == ResourceKind::Rwlock as i32 => "write".to_string(),
        (false, 0) => "exclusive".to_string(),
        (false, n) => format!("{n} permits"),
    };
    if json {
        let v = serde_json::json!({
            "name": name,
            "kind": kind,
            "held": d.held,
            "holder_session": if d.held { d.holder_session.into() } else { serde_json::Value::Null },
            "token": if d.held { d.token.into() } else { serde_json::Value::Null },
            "held_for_ms": d.held_for_ms,
            "lock_delay_remaining_ms": d.lock_delay_remaining_ms,
            "holders": d.holders.iter().map(|h| serde_json::json!({
                "session": h.session_id, "token": h.token, "held_for_ms": h.held_for_ms, "mode": mode(h.shared, h.permits),
            })).collect::<Vec<_>>(),
            "waiters": d.waiters.iter().map(|w| serde_json::json!({
                "session": w.session_id, "request_id": w.request_id, "waited_ms": w.waited_ms,
                "deadline_in_ms": w.deadline_in_ms, "mode": mode(w.shared, w.permits),
            })).collect::<Vec<_>>(),
        });
        out!("{v}");
        return ExitCode::SUCCESS;
    }
    if !d.held && d.waiters.is_empty() && d.lock_delay_remaining_ms == 0 {
        out!("{name}: free");
        return ExitCode::SUCCESS;
    }
    out!("{name} ({kind}): {} holder(s), {} waiting", d.holders.len(), d.waiters.len());
    if d.lock_delay_remaining_ms > 0 {
        out!("  in lock-delay for {} ms more", d.lock_delay_remaining_ms);
    }
    for h in &d.holders {
        out!(
            "  held by session {} ({}) with token {} for {} ms",
            h.session_id,
            mode(h.shared, h.permits),
            h.token,
            h.held_for_ms
        );
    }
    for (i, w) in d.waiters.iter().enumerate() {
        let m = mode(w.shared, w.permits);
        out!("  {i}: session {} ({m}) waited {} ms, gives up in {} ms", w.session_id, w.waited_ms, w.deadline_in_ms);
    }
    ExitCode::SUCCESS
}

/// `baton counter NAME OP`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum CounterOp {
    /// Add the amount (may be negative); prints the new value.
    Add,
    /// Print the value.
    Get,
    /// Compare and swap: set the new value if the counter holds the expected one.
    Cas,
}

/// `baton register NAME OP`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum RegisterOp {
    /// Print the version and value.
    Get,
    /// Write VALUE (with --if-version: only over that version).
    Set,
    /// Delete (with --if-version: only that version).
    Delete,
}

/// `baton latch NAME OP`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum LatchOp {
    /// Set the count (once; a second set reports the current count).
    Set,
    /// Count down by one.
    Down,
    /// Wait until the count reaches zero.
    Wait,
}

pub(crate) async fn counter(eps: String, name: String, op: CounterOp, args: Vec<i64>) -> ExitCode {
    let wanted = match op {
        CounterOp::Get => 0,
        CounterOp::Add => 1,
        CounterOp::Cas => 2,
    };
    if args.len() != wanted {
        let usage = ["get takes no argument", "add takes the amount", "cas takes the expected and the new value"];
        return fail(EXIT_USAGE, format!("counter: {} (got {} arguments)", usage[wanted], args.len()));
    }
    let client = match connect(&eps).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result = match op {
        CounterOp::Get => client.counter_get(&name).await.map(|v| v.to_string()),
        CounterOp::Add => client.counter_add(&name, args[0]).await.map(|v| v.to_string()),
        CounterOp::Cas => {
            client.counter_cas(&name, args[0], args[1]).await.map(|(ok, v)| format!("swapped={ok} value={v}"))
        }
    };
    match result {
        Ok(line) => {
            out!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => client_error(e),
    }
}

pub(crate) async fn register(
    eps: String,
    name: String,
    op: RegisterOp,
    value: Option<String>,
    if_version: Option<u64>,
) -> ExitCode {
    let client = match connect(&eps).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result = match (op, value) {
        (RegisterOp::Get, _) => client
            .register_get(&name)
            .await
            .map(|(v, version)| format!("version={version} value={}", String::from_utf8_lossy(&v))),
        (RegisterOp::Set, Some(v)) => client
            .register_set(&name, Some(v.into_bytes()), if_version)
            .await
            .map(|(ok, version)| format!("swapped={ok} version={version}")),
        (RegisterOp::Set, None) => return fail(EXIT_USAGE, "register set: missing VALUE".into()),
        (RegisterOp::Delete, _) => client
            .register_set(&name, None, if_version)
            .await
            .map(|(ok, version)| format!("swapped={ok} version={version}")),
    };
    match result {
        Ok(line) => {
            out!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => client_error(e),
    }
}

pub(crate) async fn watch(eps: String, name: String, prefix: bool, from: u64, json: bool) -> ExitCode {
    let client = match connect(&eps).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut events = client.watch(&name, prefix, from);
    loop {
        let e = tokio::select! {
            e = events.recv() => e,
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        };
        match e {
            Some(Ok(e)) if json => out!(
                "{}",
                serde_json::json!({
                    "seq": e.seq, "hlc": format!("{}.{}", e.hlc_physical_ms, e.hlc_logical), "type": e.r#type,
                    "name": e.name, "session": e.session_id, "token": e.token, "request_id": e.request_id,
                    "counter_value": e.counter_value, "version": e.version, "reason": e.reason,
                })
            ),
            Some(Ok(e)) => {
                let detail = match e.r#type.as_str() {
                    "counter_changed" => format!("value={}", e.counter_value),
                    "register_changed" => format!("version={}", e.version),
                    "wait_ended" => format!("session={} request={} reason={}", e.session_id, e.request_id, e.reason),
                    "queued" => format!("session={} request={}", e.session_id, e.request_id),
                    _ => format!("session={} token={}", e.session_id, e.token),
                };
                out!("{:>8} {}.{:03} {:<16} {} {detail}", e.seq, e.hlc_physical_ms, e.hlc_logical, e.r#type, e.name);
            }
            Some(Err(e)) => return client_error(e),
            None => return ExitCode::SUCCESS,
        }
    }
}

pub(crate) async fn elect(eps: String, ttl: u64, observe: bool, name: String, value: Option<String>) -> ExitCode {
    let client = match connect(&eps).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    if observe {
        let mut leaders = match client.observe(&name).await {
            Ok(rx) => rx,
            Err(e) => return client_error(e),
        };
        loop {
            let l = tokio::select! {
                l = leaders.recv() => l,
                _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
            };
            match l {
                Some(Ok(l)) if l.session == 0 => out!("{name}: no leader"),
                Some(Ok(l)) => out!(
                    "{name}: leader session={} token={} value={}",
                    l.session,
                    l.token,
                    String::from_utf8_lossy(&l.value)
                ),
                Some(Err(e)) => return client_error(e),
                None => return ExitCode::SUCCESS,
            }
        }
    }
    let session = match client.session(Duration::from_secs(ttl)).await {
        Ok(s) => s,
        Err(e) => return client_error(e),
    };
    let value = value.unwrap_or_default().into_bytes();
    let guard = loop {
        let campaign = session.campaign(&name, value.clone(), Some(Duration::from_secs(3600)));
        tokio::select! {
            r = campaign => match r {
                Ok(Some(g)) => break g,
                Ok(None) => continue,
                Err(e) => return client_error(e),
            },
            _ = tokio::signal::ctrl_c() => {
                let _ = session.close().await;
                return ExitCode::SUCCESS;
            }
        }
    };
    out!("{name}: elected with token {} (value {})", guard.token(), String::from_utf8_lossy(&value));
    let code = tokio::select! {
        _ = tokio::signal::ctrl_c() => ExitCode::SUCCESS,
        _ = guard.lease_lost() => {
            // As in `lock`: no resign or close on a cluster that stopped answering.
            eprintln!("baton: lease lost: no longer the leader of {name:?}");
            return ExitCode::from(EXIT_LEASE_LOST);
        }
    };
    let _ = guard.release().await;
    let _ = session.close().await;
    code
}

/// Opens a short-lived session for a one-off wait (barrier, latch).
async fn with_session(eps: &str) -> Result<(Client, baton_client::Session), ExitCode> {
    let client = connect(eps).await?;
    let session = client.session(Duration::from_secs(10)).await.map_err(client_error)?;
    Ok((client, session))
}

pub(crate) async fn barrier(eps: String, name: String, parties: u32, wait: f64) -> ExitCode {
    let (_client, session) = match with_session(&eps).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let wait = Duration::from_secs_f64(wait.clamp(0.0, 3600.0));
    let r = session.barrier(&name, parties, Some(wait)).await;
    let _ = session.close().await;
    match r {
        Ok(true) => {
            out!("{name}: all {parties} parties arrived");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            fail(EXIT_NOT_ACQUIRED, format!("barrier {name:?}: not all {parties} parties arrived within the wait"))
        }
        Err(e) => client_error(e),
    }
}

pub(crate) async fn latch(eps: String, name: String, op: LatchOp, count: Option<u64>, wait: f64) -> ExitCode {
    let (client, session) = match with_session(&eps).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let r = match (op, count) {
        (LatchOp::Set, Some(n)) => client.latch_set(&name, n).await.map(|(set, c)| {
            out!("{}", if set { format!("count={c}") } else { format!("already set: count={c}") });
            true
        }),
        (LatchOp::Set, None) => return fail(EXIT_USAGE, "latch set: missing COUNT".into()),
        (LatchOp::Down, _) => client.latch_count_down(&name).await.map(|c| {
            out!("count={c}");
            true
        }),
        (LatchOp::Wait, _) => session.latch_wait(&name, Some(Duration::from_secs_f64(wait.clamp(0.0, 3600.0)))).await,
    };
    let _ = session.close().await;
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => fail(EXIT_NOT_ACQUIRED, format!("latch {name:?} did not reach zero within the wait")),
        Err(e) => client_error(e),
    }
}
