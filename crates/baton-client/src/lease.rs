//! The client's view of a session's lease, as a timer on the client's own monotonic clock.
//!
//! The rule — valid until the earliest, over the groups the session has records in, of the send
//! time of the last acknowledged renewal there plus the TTL less a tenth of it — is
//! [`crate::core::Lease`], shared with the simulator. Here it runs on a
//! [`MonoClock`] (milliseconds since the client started), and `SessionLease` is the real
//! client's timer around it: the lease-lost signal fires when the deadline passes, whether or
//! not any keepalive is running. Only the send time of an acknowledged renewal moves the
//! deadline: nothing else (no I/O, no stuck keepalive loop) can delay it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::core::Lease;

/// The client's monotonic clock as the shared rules read it: whole milliseconds since `origin`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MonoClock {
    origin: Instant,
}

impl MonoClock {
    /// A clock that reads 0 now.
    pub(crate) fn start() -> MonoClock {
        MonoClock { origin: Instant::now() }
    }

    /// The reading at `t` (rounded down: a send time read early only makes a deadline earlier).
    pub(crate) fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.origin).as_millis() as u64
    }

    /// The reading now.
    pub(crate) fn now_ms(&self) -> u64 {
        self.ms(Instant::now())
    }

    /// The instant at which the clock reads `ms`.
    pub(crate) fn at(&self, ms: u64) -> Instant {
        self.origin + Duration::from_millis(ms)
    }
}

/// One session's lease in the real client: the deadline, and a signal that is set once it
/// passed (by a timer, see [`SessionLease::lost`]) or once the leader says the session is gone.
pub(crate) struct SessionLease {
    pub(crate) id: u64,
    /// What the session's home gave to prove it is this client's user's (authentication on;
    /// empty otherwise): shown to attach the session in another group.
    pub(crate) proof: Vec<u8>,
    clock: MonoClock,
    lease: Mutex<Lease>,
    lost: watch::Sender<bool>,
}

impl SessionLease {
    pub(crate) fn new(id: u64, proof: Vec<u8>, clock: MonoClock, lease: Lease) -> SessionLease {
        SessionLease { id, proof, clock, lease: Mutex::new(lease), lost: watch::channel(false).0 }
    }

    pub(crate) fn ttl(&self) -> Duration {
        Duration::from_millis(self.lease.lock().expect("lease lock").ttl_ms())
    }

    /// Applies a renewal answer to a renewal sent at `sent_ms` (see [`Lease::renewal`]); marks
    /// the lease lost if the answer shows the session is gone.
    pub(crate) fn renewal(&self, sent_ms: u64, led: &[u64], present: &[u64], moved_to: &[u64]) {
        if !self.lease.lock().expect("lease lock").renewal(sent_ms, led, present, moved_to) {
            self.mark_lost();
        }
    }

    /// The session got a record in `group` (an attach first sent at `sent_ms`, answered at
    /// `acked_ms`).
    pub(crate) fn attached(&self, group: u64, sent_ms: u64, acked_ms: u64) {
        self.lease.lock().expect("lease lock").attached(group, sent_ms, acked_ms);
    }

    /// True if the session's record in `group` is proven (see [`Lease::attached_in`]).
    pub(crate) fn attached_in(&self, group: u64) -> bool {
        self.lease.lock().expect("lease lock").attached_in(group)
    }

    /// The groups the session has records in.
    pub(crate) fn groups(&self) -> Vec<u64> {
        self.lease.lock().expect("lease lock").groups()
    }

    fn deadline(&self) -> Instant {
        self.clock.at(self.lease.lock().expect("lease lock").deadline_ms())
    }

    /// True while the lease is valid: not declared lost, and its deadline not passed.
    pub(crate) fn is_valid(&self) -> bool {
        if *self.lost.borrow() {
            return false;
        }
        if Instant::now() >= self.deadline() {
            // Latched: a renewal answered later must not make it valid again.
            self.mark_lost();
            return false;
        }
        true
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

    /// The timer fires at the deadline with no keepalive running at all, and not before.
    #[tokio::test(start_paused = true)]
    async fn lost_fires_at_the_deadline_without_any_io() {
        let clock = MonoClock::start();
        let start = Instant::now();
        let now = clock.now_ms();
        let lease = SessionLease::new(1, Vec::new(), clock, Lease::new(10_000, 1, now, now));
        lease.renewal(clock.ms(start + Duration::from_secs(2)), &[1], &[1], &[]);
        lease.lost().await;
        assert_eq!(Instant::now() - start, Duration::from_secs(11));
        assert!(!lease.is_valid());
    }
}
