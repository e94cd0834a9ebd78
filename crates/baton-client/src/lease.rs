//! The client's view of a session's lease: a deadline on the client's own monotonic clock.
//!
//! A renewal the leader acknowledged keeps the lease valid until *the time it was sent* plus
//! the TTL minus a drift margin (a tenth of the TTL). The leader's deadline runs from when it
//! *received* the renewal, so the client always gives up first, as long as the two clocks'
//! rates differ by less than the margin over one TTL. Only the send time of an acknowledged
//! renewal moves the deadline: nothing else (no I/O, no stuck keepalive loop) can delay it.
//!
//! [`Lease`] is pure and generic over the instant type, so that the simulator runs this exact
//! rule on its virtual clock; `SessionLease` is the real client's timer around it: the
//! lease-lost signal fires when the deadline passes, whether or not any keepalive is running.
//!
//! # Caveats
//! - The margin only covers clock *rate* differences (and forward jumps of the leader's
//!   clock) smaller than TTL/10; a paused client process notices nothing until it runs again,
//!   which is why fencing tokens exist.

use std::ops::Add;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// How long a renewal sent at some instant keeps the lease valid on the client's side: the TTL
/// minus a drift margin of a tenth of it.
pub fn lease_span(ttl: Duration) -> Duration {
    ttl - ttl / 10
}

/// A session's lease as the client sees it, on any monotonic clock `I`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease<I> {
    ttl: Duration,
    valid_until: I,
}

impl<I: Copy + Ord + Add<Duration, Output = I>> Lease<I> {
    /// The lease of a session whose open request was sent at `sent` and granted `ttl`.
    pub fn new(ttl: Duration, sent: I) -> Lease<I> {
        Lease { ttl, valid_until: sent + lease_span(ttl) }
    }

    /// The leader acknowledged a renewal sent at `sent` (late answers never shorten the lease).
    pub fn renewed(&mut self, sent: I) {
        self.valid_until = self.valid_until.max(sent + lease_span(self.ttl));
    }

    /// The instant the lease is lost unless a renewal is acknowledged before.
    pub fn deadline(&self) -> I {
        self.valid_until
    }

    /// True while `now` is before the deadline.
    pub fn is_valid(&self, now: I) -> bool {
        now < self.valid_until
    }

    /// The session's TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// One session's lease in the real client: the deadline, and a signal that is set once it
/// passed (by a timer, see [`SessionLease::lost`]) or once the leader says the session is gone.
pub(crate) struct SessionLease {
    pub(crate) id: u64,
    lease: Mutex<Lease<Instant>>,
    lost: watch::Sender<bool>,
}

impl SessionLease {
    pub(crate) fn new(id: u64, lease: Lease<Instant>) -> SessionLease {
        SessionLease { id, lease: Mutex::new(lease), lost: watch::channel(false).0 }
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.lease.lock().expect("lease lock").ttl()
    }

    pub(crate) fn renewed(&self, sent: Instant) {
        self.lease.lock().expect("lease lock").renewed(sent);
    }

    fn deadline(&self) -> Instant {
        self.lease.lock().expect("lease lock").deadline()
    }

    /// True while the lease is valid: not declared lost, and its deadline not passed.
    pub(crate) fn is_valid(&self) -> bool {
        !*self.lost.borrow() && Instant::now() < self.deadline()
    }

    /// The leader says the session is gone.
    pub(crate) fn mark_lost(&self) {
        if !self.lost.send_replace(true) {
            tracing::warn!(session = self.id, "session is gone on the server");
        }
    }

    /// Completes once the lease is lost: at its deadline (a timer on the monotonic clock, so
    /// it fires on time even while every renewal is stuck), or when the leader says so.
    pub(crate) async fn lost(&self) {
        let mut rx = self.lost.subscribe();
        loop {
            if *rx.borrow_and_update() {
                return;
            }
            let deadline = self.deadline();
            tokio::select! {
                _ = rx.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    // A renewal may have moved the deadline while we slept: look again.
                    if Instant::now() >= self.deadline() && !self.lost.send_replace(true) {
                        tracing::warn!(session = self.id, "session lease lost: no renewal acknowledged within its ttl");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_runs_from_the_send_time_of_the_last_acknowledged_renewal() {
        let t0 = std::time::Instant::now();
        let ttl = Duration::from_secs(10);
        let mut lease = Lease::new(ttl, t0);
        assert_eq!(lease.deadline(), t0 + Duration::from_secs(9));
        lease.renewed(t0 + Duration::from_secs(3));
        assert_eq!(lease.deadline(), t0 + Duration::from_secs(12));
        // A late answer to an older renewal does not shorten it.
        lease.renewed(t0 + Duration::from_secs(1));
        assert_eq!(lease.deadline(), t0 + Duration::from_secs(12));
        assert!(lease.is_valid(t0 + Duration::from_millis(11_999)));
        assert!(!lease.is_valid(t0 + Duration::from_secs(12)));
    }

    /// The timer fires at the deadline with no keepalive running at all, and not before.
    #[tokio::test(start_paused = true)]
    async fn lost_fires_at_the_deadline_without_any_io() {
        let start = Instant::now();
        let lease = SessionLease::new(1, Lease::new(Duration::from_secs(10), start));
        lease.renewed(start + Duration::from_secs(2));
        lease.lost().await;
        assert_eq!(Instant::now() - start, Duration::from_secs(11));
        assert!(!lease.is_valid());
    }
}
