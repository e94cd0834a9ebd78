//! A session's lease as the client sees it, across the groups it has records in.
//!
//! A session is opened in one group (its home) and gets a record in every other group it uses
//! (an attach), and in the group its names are moved to. Each group's leader expires its record
//! on its own, a TTL after the last renewal it confirmed, so the session is only as alive as its
//! least recently renewed record: the lease is valid until the earliest, over its groups, of the
//! send time of the last acknowledged renewal in that group plus the TTL less a drift margin
//! (a tenth of the TTL). Measuring from the send time keeps the client's deadline before every
//! leader's, whichever node answered.
//!
//! A renewal answer comes from one node and covers the groups it leads ([`Lease::renewal`]):
//! - a group that has the session is renewed from the renewal's send time;
//! - a group that the client attached to *before* sending the renewal but that no longer has
//!   the session means the session is gone there (expired or closed): the lease is lost;
//! - a group the session's names were moved to (`moved_to`) is added with the lease's deadline
//!   as it stood before this answer: the destination gave the record a full TTL when it took
//!   the names over, which was after every earlier answer from the source, so that deadline is
//!   safe; from then on it must be renewed there. Absence from such a group proves nothing (the
//!   take-over may not have applied yet), so it only runs out.

use std::collections::BTreeMap;

/// How long a renewal sent at some instant keeps the lease valid on the client's side: the TTL
/// minus a drift margin of a tenth of it.
pub fn lease_span_ms(ttl_ms: u64) -> u64 {
    ttl_ms - ttl_ms / 10
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct GroupLease {
    valid_until_ms: u64,
    /// When an answer proving the record exists arrived (`None`: learned from a move).
    known_since_ms: Option<u64>,
}

/// A session's lease as the client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    ttl_ms: u64,
    groups: BTreeMap<u64, GroupLease>,
}

impl Lease {
    /// The lease of a session granted `ttl_ms` by its home group `home`, whose open request was
    /// *first* sent at `sent_ms` (the session cannot have opened before, whichever attempt
    /// opened it) and answered at `acked_ms`.
    pub fn new(ttl_ms: u64, home: u64, sent_ms: u64, acked_ms: u64) -> Lease {
        let mut lease = Lease { ttl_ms, groups: BTreeMap::new() };
        lease.attached(home, sent_ms, acked_ms);
        lease
    }

    /// The session got a record in `group` by a request first sent at `sent_ms` and answered
    /// at `acked_ms`.
    pub fn attached(&mut self, group: u64, sent_ms: u64, acked_ms: u64) {
        let span = lease_span_ms(self.ttl_ms);
        let g = self.groups.entry(group).or_insert(GroupLease { valid_until_ms: sent_ms + span, known_since_ms: None });
        g.known_since_ms = Some(g.known_since_ms.map_or(acked_ms, |k| k.min(acked_ms)));
    }

    /// True if the session has (or is known to get) a record in `group`.
    pub fn has(&self, group: u64) -> bool {
        self.groups.contains_key(&group)
    }

    /// True if an answer proved the session's record in `group` (an open or attach; a group
    /// learned from a move is not, until attached: its take-over may not have applied yet).
    pub fn attached_in(&self, group: u64) -> bool {
        self.groups.get(&group).is_some_and(|g| g.known_since_ms.is_some())
    }

    /// The groups the session has records in.
    pub fn groups(&self) -> Vec<u64> {
        self.groups.keys().copied().collect()
    }

    /// Applies one renewal answer to a renewal sent at `sent_ms`, from a node that leads `led`:
    /// `present` are the groups of `led` that have the session (renewed), `moved_to` the groups
    /// its names were moved to. Returns false if the answer shows the session is gone.
    pub fn renewal(&mut self, sent_ms: u64, led: &[u64], present: &[u64], moved_to: &[u64]) -> bool {
        let before = self.deadline_ms();
        if sent_ms >= before {
            // Sent after the lease ran out: the session may have expired since in some group (and
            // come back to life in another); a lost lease stays lost.
            return false;
        }
        for g in moved_to {
            self.groups.entry(*g).or_insert(GroupLease { valid_until_ms: before, known_since_ms: None });
        }
        let span = lease_span_ms(self.ttl_ms);
        for g in present {
            if let Some(l) = self.groups.get_mut(g) {
                // Late answers never shorten it.
                l.valid_until_ms = l.valid_until_ms.max(sent_ms + span);
            }
        }
        let gone = led
            .iter()
            .filter(|g| !present.contains(g))
            .any(|g| self.groups.get(g).and_then(|l| l.known_since_ms).is_some_and(|known| known < sent_ms));
        !gone
    }

    /// The time the lease is lost unless renewals are acknowledged before.
    pub fn deadline_ms(&self) -> u64 {
        self.groups.values().map(|g| g.valid_until_ms).min().unwrap_or(0)
    }

    /// True while `now_ms` is before the deadline.
    pub fn is_valid(&self, now_ms: u64) -> bool {
        now_ms < self.deadline_ms()
    }

    /// The session's TTL.
    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_runs_from_the_send_time_of_the_last_acknowledged_renewal() {
        let mut lease = Lease::new(10_000, 1, 1_000, 1_010);
        assert_eq!(lease.deadline_ms(), 10_000);
        assert!(lease.renewal(4_000, &[1], &[1], &[]));
        assert_eq!(lease.deadline_ms(), 13_000);
        assert!(lease.renewal(2_000, &[1], &[1], &[])); // a late answer does not shorten it
        assert_eq!(lease.deadline_ms(), 13_000);
        assert!(lease.is_valid(12_999));
        assert!(!lease.is_valid(13_000));
        // A node leading other groups only says nothing about this session.
        assert!(lease.renewal(5_000, &[2, 3], &[], &[]));
        assert_eq!(lease.deadline_ms(), 13_000);
        // The home group's leader no longer has it: gone.
        assert!(!lease.renewal(5_000, &[1], &[], &[]));
    }

    #[test]
    fn the_session_lives_as_long_as_its_least_renewed_group() {
        let mut lease = Lease::new(10_000, 1, 0, 10);
        lease.attached(2, 1_000, 1_020);
        assert!(lease.has(2) && !lease.has(3));
        assert!(lease.renewal(3_000, &[1], &[1], &[]));
        assert_eq!(lease.deadline_ms(), 10_000, "group 2 was last renewed by its attach");
        assert!(lease.renewal(4_000, &[2], &[2], &[]));
        assert_eq!(lease.deadline_ms(), 12_000);
        assert!(lease.attached_in(2));
        // An attach answered after the renewal was sent: its absence there proves nothing.
        lease.attached(3, 4_500, 5_500);
        assert!(lease.renewal(5_000, &[3], &[], &[]));
        assert!(!lease.renewal(6_000, &[3], &[], &[]), "attached before the renewal left, gone now");
    }

    /// Review finding: a renewal answered after the lease ran out revived it (the session could
    /// have expired in one group meanwhile, and come back in another with a slot move).
    #[test]
    fn a_lost_lease_stays_lost() {
        let mut lease = Lease::new(10_000, 1, 0, 10);
        assert_eq!(lease.deadline_ms(), 9_000);
        assert!(!lease.renewal(9_000, &[1], &[1], &[]), "sent at the deadline");
        assert_eq!(lease.deadline_ms(), 9_000);
        assert!(lease.renewal(8_999, &[1], &[1], &[]), "sent before it");
    }

    #[test]
    fn a_group_learned_from_a_move_starts_at_the_deadline_before_the_answer() {
        let mut lease = Lease::new(10_000, 1, 0, 10);
        assert!(lease.renewal(2_000, &[1], &[1], &[]));
        assert_eq!(lease.deadline_ms(), 11_000);
        // The answer to a renewal sent at 5 s says the names moved to group 4.
        assert!(lease.renewal(5_000, &[1], &[1], &[4]));
        assert!(lease.has(4) && !lease.attached_in(4), "known, but not proven: attach before use");
        assert_eq!(lease.deadline_ms(), 11_000, "group 4 counts from before this answer");
        // Group 4's leader has not applied the take-over yet: not a loss.
        assert!(lease.renewal(6_000, &[4], &[], &[]));
        assert!(lease.renewal(7_000, &[4], &[4], &[]));
        assert_eq!(lease.deadline_ms(), 14_000);
    }
}
