//! The CLI verbs that show contention: `baton hot` and `baton history`.

use super::*;
use baton_server::obs::api::{event_json, event_line, hot_json};

pub(crate) async fn hot(eps: String, json: bool, limit: u32) -> ExitCode {
    let client = match connect(&eps).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let h = match client.hot(limit).await {
        Ok(h) => h,
        Err(e) => return client_error(e),
    };
    if json {
        out!("{}", hot_json(&h));
        return ExitCode::SUCCESS;
    }
    if h.names.is_empty() {
        out!("no contention in the last minute or two (groups {:?})", h.groups);
        return ExitCode::SUCCESS;
    }
    out!(
        "{:<32} {:>5} {:>7} {:>8} {:>9} {:>9} {:>7} {:>7}  holders",
        "NAME",
        "GROUP",
        "WAITS",
        "HANDOFFS",
        "AVG WAIT",
        "MAX WAIT",
        "GAVE UP",
        "WAITING"
    );
    for n in &h.names {
        let avg = n.wait_ms_total.checked_div(n.handoffs).unwrap_or(0);
        let holders: Vec<String> =
            n.holders.iter().map(|h| format!("s{}/t{} {}ms", h.session_id, h.token, h.held_for_ms)).collect();
        out!(
            "{:<32} {:>5} {:>7} {:>8} {:>7}ms {:>7}ms {:>7} {:>7}  {}",
            n.name,
            n.group,
            n.waits,
            n.handoffs,
            avg,
            n.wait_ms_max,
            n.gave_up,
            n.waiters,
            if holders.is_empty() { "-".to_string() } else { holders.join(", ") }
        );
    }
    ExitCode::SUCCESS
}

pub(crate) async fn history(eps: String, json: bool, limit: u32, name: String) -> ExitCode {
    let client = match connect(&eps).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let h = match client.history(&name, limit).await {
        Ok(h) => h,
        Err(e) => return client_error(e),
    };
    if json {
        let v = serde_json::json!({
            "name": name,
            "group": h.group,
            "kept_from_seq": h.kept_from_seq,
            "events": h.events.iter().map(event_json).collect::<Vec<_>>(),
        });
        out!("{v}");
        return ExitCode::SUCCESS;
    }
    if h.events.is_empty() {
        out!("{name}: nothing in group {}'s kept history (from event #{} on)", h.group, h.kept_from_seq);
    }
    for e in &h.events {
        out!("{}", event_line(e));
    }
    ExitCode::SUCCESS
}
