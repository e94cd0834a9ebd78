//! The background renewal of every session of one client, over one `KeepAlive` stream.
//!
//! Renewals go out every TTL/3 (of the shortest TTL), one at a time: each must be answered
//! within [`answer_timeout`], and opening a stream must succeed as fast, or the node is treated
//! as gone and the client moves on to the next endpoint (or to the leader a redirect names).
//! A stopped node therefore costs one timeout, not a lease.
//!
//! This loop only *extends* leases. Losing one is decided by the lease's own timer (see
//! [`crate::lease`]), which fires on time however stuck this loop is.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use baton_proto::v1 as pb;
use tokio::time::Instant;

use crate::lease::SessionLease;
use crate::retry::{verdict, AttemptError, Verdict};
use crate::{Client, Inner};

/// How often renewals are sent for sessions of this TTL.
pub fn renew_interval(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(100))
}

/// How long one renewal (or opening the stream) may wait for an answer before the node is
/// given up: half a renewal interval, so that a stopped node is left with two thirds of the
/// lease still to go, but never less than what a loaded leader's heartbeat round needs.
pub fn answer_timeout(ttl: Duration) -> Duration {
    (renew_interval(ttl) / 2).clamp(Duration::from_millis(200), Duration::from_secs(2))
}

pub(crate) async fn keepalive_loop(weak: Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let client = Client { inner };
        if live_ids(&client).is_empty() {
            // At most a second, so that a client dropped meanwhile ends this loop soon.
            let notified = client.inner.sessions_changed.notified();
            let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
            continue;
        }
        let pause = keepalive_stream(&client).await;
        drop(client);
        tokio::time::sleep(pause).await;
    }
}

/// Runs one keepalive stream until it fails; returns how long to pause before the next.
async fn keepalive_stream(client: &Client) -> Duration {
    let Ok((addr, mut conn)) = client.inner.router.current() else { return Duration::from_millis(200) };
    let ttl = min_ttl(client);
    let timeout = answer_timeout(ttl);
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::KeepAliveRequest>(4);
    // The first renewal goes out with the call, so that the server has something to answer.
    let mut sent = Instant::now();
    if tx.try_send(pb::KeepAliveRequest { session_ids: live_ids(client) }).is_err() {
        return Duration::ZERO;
    }
    let opened = tokio::time::timeout(timeout, conn.keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)));
    let mut responses = match opened.await {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(status)) => return give_up(client, &addr, AttemptError::from(status)),
        Err(_) => return give_up(client, &addr, AttemptError::NoAnswer(format!("no stream within {timeout:?}"))),
    };
    loop {
        match tokio::time::timeout(timeout, responses.message()).await {
            Ok(Ok(Some(r))) => renewed(client, r, sent),
            Ok(Ok(None)) => return Duration::from_millis(50),
            Ok(Err(status)) => return give_up(client, &addr, AttemptError::from(status)),
            Err(_) => {
                let why = format!("renewal not answered within {timeout:?}");
                return give_up(client, &addr, AttemptError::NoAnswer(why));
            }
        }
        tokio::time::sleep_until(sent + renew_interval(min_ttl(client))).await;
        let ids = live_ids(client);
        if ids.is_empty() {
            return Duration::ZERO;
        }
        sent = Instant::now();
        if tx.send(pb::KeepAliveRequest { session_ids: ids }).await.is_err() {
            return Duration::from_millis(50);
        }
    }
}

/// Moves the client on after a failed stream; returns the pause before the next one.
fn give_up(client: &Client, addr: &str, error: AttemptError) -> Duration {
    tracing::debug!(node = addr, "keepalive stream failed: {error:?}");
    let leader = match verdict(&error) {
        Verdict::NotApplied { leader, .. } => leader,
        Verdict::Unknown | Verdict::Refused => None,
    };
    if client.inner.router.moved_on(addr, leader.as_deref()) {
        Duration::ZERO
    } else {
        Duration::from_millis(50)
    }
}

fn renewed(client: &Client, r: pb::KeepAliveResponse, sent: Instant) {
    let map = client.inner.sessions.lock().expect("sessions lock");
    for lease in r.leases {
        if let Some(s) = map.get(&lease.session_id) {
            if lease.alive {
                client.inner.renewals.fetch_add(1, Ordering::Relaxed);
                s.renewed(sent);
            } else {
                s.mark_lost();
            }
        }
    }
}

fn min_ttl(client: &Client) -> Duration {
    let map = client.inner.sessions.lock().expect("sessions lock");
    map.values().map(|s| s.ttl()).min().unwrap_or(Duration::from_secs(10))
}

/// The sessions still worth renewing: a lease the client has given up on stays given up (its
/// holders were told to stop; renewing it would keep its locks from everyone else).
fn live_ids(client: &Client) -> Vec<u64> {
    let map = client.inner.sessions.lock().expect("sessions lock");
    map.values().filter(|s| s.is_valid()).map(|s: &Arc<SessionLease>| s.id).collect()
}
