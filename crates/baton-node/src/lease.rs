//! The leader's lease table: each session's deadline on the leader's monotonic clock, indexed by
//! deadline so that finding the expired ones costs O(expired), not O(sessions), per tick.

use std::collections::{BTreeMap, BTreeSet};

use baton_core::SessionId;

/// Session deadlines, by session and by deadline.
#[derive(Default)]
pub(crate) struct LeaseTable {
    by_session: BTreeMap<SessionId, u64>,
    by_deadline: BTreeSet<(u64, SessionId)>,
}

impl LeaseTable {
    /// Sets a session's deadline.
    pub fn set(&mut self, session: SessionId, deadline: u64) {
        if let Some(old) = self.by_session.insert(session, deadline) {
            self.by_deadline.remove(&(old, session));
        }
        self.by_deadline.insert((deadline, session));
    }

    /// Moves a session's deadline to `deadline` if that is later (or sets it).
    pub fn extend(&mut self, session: SessionId, deadline: u64) {
        if self.by_session.get(&session).is_none_or(|d| *d < deadline) {
            self.set(session, deadline);
        }
    }

    /// Sets a deadline only for a session that has none.
    pub fn set_if_absent(&mut self, session: SessionId, deadline: u64) {
        if !self.by_session.contains_key(&session) {
            self.set(session, deadline);
        }
    }

    /// A session's deadline, if it has one.
    pub fn deadline(&self, session: SessionId) -> Option<u64> {
        self.by_session.get(&session).copied()
    }

    /// Forgets a session.
    pub fn remove(&mut self, session: SessionId) {
        if let Some(old) = self.by_session.remove(&session) {
            self.by_deadline.remove(&(old, session));
        }
    }

    /// Forgets every session.
    pub fn clear(&mut self) {
        self.by_session.clear();
        self.by_deadline.clear();
    }

    /// Up to `limit` sessions whose deadline is at or before `now`, skipping those in `skip`.
    pub fn due(&self, now: u64, limit: usize, skip: &BTreeSet<SessionId>) -> Vec<SessionId> {
        self.by_deadline
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .map(|(_, s)| *s)
            .filter(|s| !skip.contains(s))
            .take(limit)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewals_move_deadlines_and_due_is_in_deadline_order() {
        let mut t = LeaseTable::default();
        t.set(1, 100);
        t.set(2, 50);
        t.set(3, 300);
        t.set(2, 200); // renewed
        assert_eq!(t.due(150, 10, &BTreeSet::new()), vec![1]);
        assert_eq!(t.due(250, 10, &BTreeSet::new()), vec![1, 2]);
        assert_eq!(t.due(250, 10, &BTreeSet::from([1])), vec![2]);
        assert_eq!(t.due(1_000, 2, &BTreeSet::new()), vec![1, 2]);
        t.remove(1);
        t.set_if_absent(3, 10);
        assert_eq!(t.due(1_000, 10, &BTreeSet::new()), vec![2, 3]);
        t.clear();
        assert!(t.due(u64::MAX, 10, &BTreeSet::new()).is_empty());
    }
}
