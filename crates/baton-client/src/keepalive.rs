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

use crate::core::{self as rules, decide, Decision, Renew, Renewals};
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

/// Runs one keepalive stream until it fails; returns how long to pause before the next. The
/// schedule — when to renew, when an unanswered renewal gives the node up — is [`Renewals`].
async fn keepalive_stream(client: &Client) -> Duration {
    let Ok((addr, mut conn)) = client.inner.router.current() else { return Duration::from_millis(200) };
    let clock = client.inner.clock;
    let mut schedule = Renewals::new(min_ttl_ms(client), clock.now_ms());
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::KeepAliveRequest>(4);
    // The first renewal goes out with the call, so that the server has something to answer.
    if schedule.poll(clock.now_ms()) != Renew::Send
        || tx.try_send(pb::KeepAliveRequest { session_ids: live_ids(client) }).is_err()
    {
        return Duration::ZERO;
    }
    let timeout = answer_timeout(Duration::from_millis(min_ttl_ms(client)));
    let opened = tokio::time::timeout(timeout, conn.keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)));
    let mut responses = match opened.await {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(status)) => return give_up(client, &addr, AttemptError::from(status)),
        Err(_) => return give_up(client, &addr, AttemptError::NoAnswer(format!("no stream within {timeout:?}"))),
    };
    loop {
        schedule.shorten_ttl(min_ttl_ms(client));
        match schedule.poll(clock.now_ms()) {
            Renew::Send => {
                let ids = live_ids(client);
                if ids.is_empty() {
                    return Duration::ZERO;
                }
                if tx.send(pb::KeepAliveRequest { session_ids: ids }).await.is_err() {
                    return Duration::from_millis(50);
                }
            }
            Renew::GiveUp => {
                let why = format!("renewal not answered within {timeout:?}");
                return give_up(client, &addr, AttemptError::NoAnswer(why));
            }
            Renew::Wait(until) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(clock.at(until)) => {}
                    // Cancel-safe: the stream keeps its state, a message is never half read.
                    m = responses.message() => match m {
                        Ok(Some(r)) => {
                            if let Some(sent_ms) = schedule.answered() {
                                renewed(client, r, sent_ms);
                            }
                        }
                        Ok(None) => return Duration::from_millis(50),
                        Err(status) => return give_up(client, &addr, AttemptError::from(status)),
                    },
                }
            }
        }
    }
}

/// Moves the client on after a failed stream, as the shared rule says for a read; returns the
/// pause before the next stream.
fn give_up(client: &Client, addr: &str, error: AttemptError) -> Duration {
    tracing::debug!(node = addr, "keepalive stream failed: {error:?}");
    let (leader, stay) = match decide(error.class(), rules::Op::Read.repeat()) {
        Decision::Retry { leader, stay, .. } => (leader, stay),
        Decision::Refused | Decision::OutcomeUnknown => (None, false),
    };
    let redirected = !stay && client.inner.router.moved_on(addr, leader.as_deref());
    Duration::from_millis(rules::renew_pause_ms(redirected))
}

fn renewed(client: &Client, r: pb::KeepAliveResponse, sent_ms: u64) {
    let map = client.inner.sessions.lock().expect("sessions lock");
    for lease in r.leases {
        if let Some(s) = map.get(&lease.session_id) {
            if lease.alive {
                client.inner.renewals.fetch_add(1, Ordering::Relaxed);
                s.renewed(sent_ms);
            } else {
                s.mark_lost();
            }
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
