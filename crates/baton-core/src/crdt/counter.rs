//! Counters: the PN-counter (and the G-counter, a PN-counter that refuses decrements) and the
//! bounded counter, whose value never goes below zero without any coordination on the way.
//!
//! A PN-counter keeps, per replica, the total that replica added and the total it took away;
//! only the replica itself changes its own pair, so the join is the pointwise maximum and the
//! value is the sum of additions less the sum of subtractions. A delta is the updating replica's
//! own pair, which carries every earlier update of that replica too (its totals include them).
//!
//! The bounded counter (an escrow, after Balegas et al., "Putting consistency back into eventual
//! consistency") adds transfers between replicas: a replica's *rights* are what it added, less
//! what it took away, plus what others transferred to it, less what it transferred away. A
//! replica subtracts or transfers only from its own rights, which it can check alone. Every
//! replica's rights are non-negative where it decided, and a state that knows a replica's
//! decision also knows every transfer that decision counted on (deltas are whole states, see
//! below), so in any state anywhere each replica's rights are non-negative and the value, their
//! sum, is at least zero. Asking a peer for rights is the only step that needs another node.
//!
//! Caveat: a bounded counter's delta is its whole state (O(replicas²) numbers). A smaller delta
//! (the replica's own totals) could reach a replica before the transfers those totals were spent
//! from, and that replica would then read a value below zero.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::context::ReplicaId;

/// Per-replica totals of additions and subtractions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Counter {
    added: BTreeMap<ReplicaId, u64>,
    taken: BTreeMap<ReplicaId, u64>,
}

fn join_max<K: Ord + Copy>(into: &mut BTreeMap<K, u64>, from: &BTreeMap<K, u64>) {
    for (&k, &v) in from {
        let e = into.entry(k).or_insert(0);
        *e = (*e).max(v);
    }
}

fn total<K>(m: &BTreeMap<K, u64>) -> i128 {
    m.values().map(|&v| v as i128).sum()
}

impl Counter {
    /// The value: every addition less every subtraction.
    pub fn value(&self) -> i128 {
        total(&self.added) - total(&self.taken)
    }

    /// Adds `n` on `replica`; returns the delta (the replica's own totals). `None` if the total
    /// would overflow a `u64`.
    pub fn add(&mut self, replica: ReplicaId, n: u64) -> Option<Counter> {
        let a = self.added.entry(replica).or_insert(0);
        *a = a.checked_add(n)?;
        Some(self.own(replica))
    }

    /// Subtracts `n` on `replica`; returns the delta. `None` on overflow.
    pub fn subtract(&mut self, replica: ReplicaId, n: u64) -> Option<Counter> {
        let t = self.taken.entry(replica).or_insert(0);
        *t = t.checked_add(n)?;
        Some(self.own(replica))
    }

    /// Joins another state (pointwise maximum).
    pub fn join(&mut self, other: &Counter) {
        join_max(&mut self.added, &other.added);
        join_max(&mut self.taken, &other.taken);
    }

    fn own(&self, replica: ReplicaId) -> Counter {
        let pick = |m: &BTreeMap<ReplicaId, u64>| m.get(&replica).map(|&v| (replica, v)).into_iter().collect();
        Counter { added: pick(&self.added), taken: pick(&self.taken) }
    }
}

/// A counter that never goes below zero: see the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Bounded {
    counts: Counter,
    /// Total rights transferred, by (from, to).
    transfers: BTreeMap<(ReplicaId, ReplicaId), u64>,
}

impl Bounded {
    /// The value (never below zero; see the module docs).
    pub fn value(&self) -> i128 {
        self.counts.value()
    }

    /// What `replica` may still subtract or transfer on its own.
    pub fn rights(&self, replica: ReplicaId) -> i128 {
        let own = self.counts.added.get(&replica).copied().unwrap_or(0) as i128
            - self.counts.taken.get(&replica).copied().unwrap_or(0) as i128;
        let mut r = own;
        for (&(from, to), &n) in &self.transfers {
            if to == replica {
                r += n as i128;
            }
            if from == replica {
                r -= n as i128;
            }
        }
        r
    }

    /// Adds `n` on `replica` (its rights grow by `n`). `None` on overflow.
    pub fn add(&mut self, replica: ReplicaId, n: u64) -> Option<()> {
        self.counts.add(replica, n).map(|_| ())
    }

    /// Subtracts `n` on `replica` if its rights allow; otherwise returns its rights.
    pub fn subtract(&mut self, replica: ReplicaId, n: u64) -> Result<(), i128> {
        let have = self.rights(replica);
        if have < n as i128 {
            return Err(have);
        }
        self.counts.subtract(replica, n).ok_or(have)?;
        Ok(())
    }

    /// Subtracts without looking at rights: only for the simulator's planted bug
    /// ([`crate::Bugs::crdt_bounded_spends_value`]); nothing else calls it.
    pub fn subtract_unchecked(&mut self, replica: ReplicaId, n: u64) {
        let _ = self.counts.subtract(replica, n);
    }

    /// Moves `n` of `from`'s rights to `to` if `from` has them; otherwise returns its rights.
    pub fn transfer(&mut self, from: ReplicaId, to: ReplicaId, n: u64) -> Result<(), i128> {
        let have = self.rights(from);
        if have < n as i128 || from == to {
            return Err(have);
        }
        let t = self.transfers.entry((from, to)).or_insert(0);
        *t = t.checked_add(n).ok_or(have)?;
        Ok(())
    }

    /// True if a transfer goes from a replica to itself (never made here: a malformed state).
    pub fn has_self_transfer(&self) -> bool {
        self.transfers.keys().any(|(from, to)| from == to)
    }

    /// Joins another state.
    pub fn join(&mut self, other: &Bounded) {
        self.counts.join(&other.counts);
        join_max(&mut self.transfers, &other.transfers);
    }
}
