//! The background renewal of every session of one client: one `KeepAlive` stream per node.
//!
//! A session has a record in every group it uses, and each group's leader renews its own: so the
//! client keeps one stream to every node of the cluster (the nodes of the last topology), each
//! renewing all of the client's sessions, and each node answers for the groups it leads (see
//! [`crate::core::Lease::renewal`] for how an answer moves the lease). A cluster of `n` nodes
//! costs `n` small messages per renewal interval, whatever the number of sessions and groups.
//!
//! On each stream renewals go out every TTL/3 (of the shortest TTL), one at a time: each must be
//! answered within [`answer_timeout`], and opening a stream must succeed as fast, or the stream
//! is dropped and opened again after a pause. A node that leads nothing answers `NOT_LEADER`:
//! its stream pauses for a renewal interval. A stopped node costs its own stream, never a lease:
//! the other nodes' leaders renew what they lead. But the groups it led get new leaders on other
//! nodes, which must see a renewal soon after their election: so when any stream fails, every
//! stream renews every 250 ms for a TTL ([`crate::core::Renewals::hurry`]).
//!
//! This loop only *extends* leases. Losing one is decided by the lease's own timer (see
//! [`crate::lease`]), which fires on time however stuck this loop is.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use baton_proto::v1 as pb;

use crate::core::{self as rules, Renew, Renewals};
use crate::lease::SessionLease;
use crate::retry::AttemptError;
use crate::{Client, Inner};

/// How often renewals are sent for sessions of this TTL ([`rules::renew_interval_ms`]).
pub fn renew_interval(ttl: Duration) -> Duration {
    Duration::from_millis(rules::renew_interval_ms(ttl.as_millis() as u64))
}

/// How long one renewal (or opening the stream) may wait for an answer before the node is
/// given up ([`rules::answer_timeout_ms`]).
pub fn answer_timeout(ttl: Duration) -> Duration {
    Duration::from_millis(rules::answer_timeout_ms(ttl.as_millis() as u64))
}

/// Keeps one stream task per node of the cluster; ends when the client is dropped.
pub(crate) async fn keepalive_loop(weak: Weak<Inner>) {
    let mut streams: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        let Some(inner) = weak.upgrade() else {
            streams.values().for_each(|t| t.abort());
            return;
        };
        let nodes = inner.router.nodes();
        streams.retain(|addr, task| {
            let keep = nodes.contains(addr) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for addr in nodes {
            streams.entry(addr.clone()).or_insert_with(|| tokio::spawn(node_loop(weak.clone(), addr)));
        }
        drop(inner);
        // Look at the node list again now and then (it comes with each topology refresh).
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Renews at one node, stream after stream, while the client lives. Holds the client only
/// between awaits, so that dropping it ends this task.
async fn node_loop(weak: Weak<Inner>, addr: String) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if live_ids(&Client { inner: inner.clone() }).is_empty() {
            // At most a second, so that a client dropped meanwhile ends this loop soon.
            let changed = inner.sessions_changed.clone();
            drop(inner);
            let _ = tokio::time::timeout(Duration::from_secs(1), changed.notified()).await;
            continue;
        }
        drop(inner);
        let pause = keepalive_stream(&weak, &addr).await;
        tokio::time::sleep(pause).await;
    }
}

/// The client, if it still exists.
fn up(weak: &Weak<Inner>) -> Option<Client> {
    weak.upgrade().map(|inner| Client { inner })
}

/// Runs one keepalive stream to `addr` until it fails (or the client is dropped); returns how
/// long to pause before the next. The schedule — when to renew, when an unanswered renewal gives
/// the stream up — is [`Renewals`].
async fn keepalive_stream(weak: &Weak<Inner>, addr: &str) -> Duration {
    let Some(client) = up(weak) else { return Duration::ZERO };
    let Ok(mut conn) = client.inner.router.conn_to(addr) else { return Duration::from_millis(200) };
    let clock = client.inner.clock;
    let stream_failed = client.inner.stream_failed.clone();
    let mut schedule = Renewals::new(min_ttl_ms(&client), clock.now_ms());
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::KeepAliveRequest>(4);
    // The first renewal goes out with the call, so that the server has something to answer.
    if schedule.poll(clock.now_ms()) != Renew::Send
        || tx.try_send(pb::KeepAliveRequest { session_ids: live_ids(&client) }).is_err()
    {
        return Duration::ZERO;
    }
    let timeout = answer_timeout(Duration::from_millis(min_ttl_ms(&client)));
    drop(client);
    let opened = tokio::time::timeout(timeout, conn.keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)));
    let opened = opened.await;
    let Some(client) = up(weak) else { return Duration::ZERO };
    let mut responses = match opened {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(status)) => return failed(&client, addr, AttemptError::from(status)),
        Err(_) => return failed(&client, addr, AttemptError::NoAnswer(format!("no stream within {timeout:?}"))),
    };
    let mut hurried_at = client.inner.stream_failed_ms.load(Ordering::Relaxed);
    drop(client);
    loop {
        let Some(client) = up(weak) else { return Duration::ZERO };
        schedule.shorten_ttl(min_ttl_ms(&client));
        let failed_ms = client.inner.stream_failed_ms.load(Ordering::Relaxed);
        if failed_ms != hurried_at {
            hurried_at = failed_ms;
            schedule.hurry(clock.now_ms());
        }
        match schedule.poll(clock.now_ms()) {
            Renew::Send => {
                let ids = live_ids(&client);
                drop(client);
                if ids.is_empty() {
                    return Duration::ZERO;
                }
                if tx.send(pb::KeepAliveRequest { session_ids: ids }).await.is_err() {
                    return Duration::from_millis(50);
                }
            }
            Renew::GiveUp => {
                let why = format!("renewal not answered within {timeout:?}");
                return failed(&client, addr, AttemptError::NoAnswer(why));
            }
            Renew::Wait(until) => {
                drop(client);
                let message = tokio::select! {
                    _ = tokio::time::sleep_until(clock.at(until)) => None,
                    // Another stream failed: hurry (see above).
                    _ = stream_failed.notified() => None,
                    // Cancel-safe: the stream keeps its state, a message is never half read.
                    m = responses.message() => Some(m),
                };
                let Some(client) = up(weak) else { return Duration::ZERO };
                match message {
                    None => {}
                    Some(Ok(Some(r))) => {
                        if let Some(sent_ms) = schedule.answered() {
                            apply(&client, addr, &r, sent_ms);
                        }
                    }
                    Some(Ok(None)) => return Duration::from_millis(50),
                    Some(Err(status)) => return failed(&client, addr, AttemptError::from(status)),
                }
            }
        }
    }
}

/// The pause after a failed stream: a renewal interval if the node leads nothing (it answered
/// NOT_LEADER: the other nodes' streams renew), a short one otherwise.
fn failed(client: &Client, addr: &str, error: AttemptError) -> Duration {
    tracing::debug!(node = addr, "keepalive stream failed: {error:?}");
    let now = client.inner.clock.now_ms();
    let ttl = min_ttl_ms(client);
    match error.class() {
        rules::ErrorClass::NotLeader { .. } => {
            // Leading nothing: check back soon while a failover may be under way (this node may
            // be about to lead), else after a renewal interval.
            let recent = now.saturating_sub(client.inner.stream_failed_ms.load(Ordering::Relaxed)) < ttl;
            if recent {
                Duration::from_millis(rules::HURRY_INTERVAL_MS)
            } else {
                renew_interval(Duration::from_millis(ttl))
            }
        }
        _ => {
            client.inner.stream_failed_ms.store(now.max(1), Ordering::Relaxed);
            client.inner.stream_failed.notify_waiters();
            Duration::from_millis(rules::renew_pause_ms(false))
        }
    }
}

/// Applies the answer from `addr` to a renewal sent at `sent_ms`: every session's lease moves
/// as [`crate::core::Lease::renewal`] says, and `addr` is the leader of the groups it renewed.
pub(crate) fn apply(client: &Client, addr: &str, r: &pb::KeepAliveResponse, sent_ms: u64) {
    for g in &r.groups {
        client.inner.router.set_leader(*g, addr);
    }
    let map = client.inner.sessions.lock().expect("sessions lock");
    for lease in &r.leases {
        if let Some(s) = map.get(&lease.session_id) {
            if !lease.groups.is_empty() {
                client.inner.renewals.fetch_add(1, Ordering::Relaxed);
            }
            s.renewal(sent_ms, &r.groups, &lease.groups, &lease.moved_to);
        }
    }
}

fn min_ttl_ms(client: &Client) -> u64 {
    let map = client.inner.sessions.lock().expect("sessions lock");
    map.values().map(|s| s.ttl().as_millis() as u64).min().unwrap_or(10_000)
}

/// The sessions still worth renewing: a lease the client has given up on stays given up (its
/// holders were told to stop; renewing it would keep its locks from everyone else).
fn live_ids(client: &Client) -> Vec<u64> {
    let map = client.inner.sessions.lock().expect("sessions lock");
    map.values().filter(|s| s.is_valid()).map(|s: &Arc<SessionLease>| s.id).collect()
}
