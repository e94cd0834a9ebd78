//! Dots and causal contexts: which updates an object's state reflects.
//!
//! Every update made on a replica gets a [`Dot`]: the replica's id and the next number in that
//! replica's sequence *for this object*. A [`Context`] is a set of dots, kept compact as a
//! version vector (every dot of replica `r` up to `vv[r]`) plus a "cloud" of dots that arrived
//! out of order (a delta lost on the way, a later one delivered). The cloud empties itself into
//! the version vector as soon as the gap is filled, which anti-entropy guarantees; it is the
//! only metadata that can grow, and it is bounded by what gossip lost since the last exchange.
//!
//! Contexts serve three ends: the observed-remove types (OR-set, MV register) decide with them
//! whether an absent entry was removed or not yet seen; a session's read-your-writes token is a
//! context (a read waits until the replica's context covers it); and a "converged" read waits
//! until every live replica's context covers the one the read started from.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A replica's id: the node id.
pub type ReplicaId = u64;

/// One update: made by `replica`, the `seq`-th of its updates to one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// The replica that made the update.
    pub replica: ReplicaId,
    /// Its number in that replica's sequence for the object (from 1).
    pub seq: u64,
}

/// A set of dots: a version vector plus the dots beyond it (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Context {
    vv: BTreeMap<ReplicaId, u64>,
    cloud: BTreeSet<Dot>,
}

impl Context {
    /// The empty context.
    pub fn new() -> Self {
        Context::default()
    }

    /// True if `dot` is in the set.
    pub fn contains(&self, dot: Dot) -> bool {
        self.vv.get(&dot.replica).is_some_and(|&n| dot.seq <= n) || self.cloud.contains(&dot)
    }

    /// The next dot of `replica`: one past every dot of its that the set has. A replica makes
    /// its own dots in order and persists each before it leaves the node, so its own dots are
    /// always contiguous here and the next one is fresh.
    pub fn next(&self, replica: ReplicaId) -> Dot {
        let top = self.cloud.range(Dot { replica, seq: 0 }..=Dot { replica, seq: u64::MAX }).next_back();
        let seq = top.map_or(0, |d| d.seq).max(self.vv.get(&replica).copied().unwrap_or(0));
        Dot { replica, seq: seq + 1 }
    }

    /// Adds one dot.
    pub fn insert(&mut self, dot: Dot) {
        if dot.seq == 0 || self.contains(dot) {
            return;
        }
        self.cloud.insert(dot);
        self.compact_replica(dot.replica);
    }

    /// Adds every dot of `replica` up to `seq`.
    pub fn insert_upto(&mut self, replica: ReplicaId, seq: u64) {
        if seq == 0 {
            return;
        }
        let top = self.vv.entry(replica).or_insert(0);
        *top = (*top).max(seq);
        self.compact_replica(replica);
    }

    /// Adds every dot of `other`.
    pub fn join(&mut self, other: &Context) {
        for (&r, &n) in other.vv.iter().filter(|(_, &n)| n > 0) {
            let top = self.vv.entry(r).or_insert(0);
            *top = (*top).max(n);
        }
        self.cloud.extend(other.cloud.iter().copied());
        let replicas: BTreeSet<ReplicaId> =
            other.vv.keys().chain(other.cloud.iter().map(|d| &d.replica)).copied().collect();
        for r in replicas {
            self.compact_replica(r);
        }
    }

    /// True if every dot of `other` is in the set.
    pub fn covers(&self, other: &Context) -> bool {
        other.vv.iter().all(|(&r, &n)| self.covers_upto(r, n)) && other.cloud.iter().all(|&d| self.contains(d))
    }

    /// True if a delta made on `sender` can be joined here without getting ahead of its causal
    /// past: the set holds every dot of `sender` up to `base` (the sender's last dot of the
    /// object before the updates the delta carries) and every dot `delta` names, except the
    /// sender's dots above `base` (the delta's own updates). A delta of a dot kernel names the
    /// entries its updates replaced; joined before them, it would leave a replaced value in
    /// place while the set already covers the update that replaced it.
    pub fn ready_for(&self, delta: &Context, sender: ReplicaId, base: u64) -> bool {
        self.covers_upto(sender, base)
            && delta.vv.iter().all(|(&r, &n)| self.covers_upto(r, if r == sender { n.min(base) } else { n }))
            && delta.cloud.iter().all(|&d| (d.replica == sender && d.seq > base) || self.contains(d))
    }

    /// The dots of `other` that the set lacks, at most `max` of them (for error messages).
    pub fn missing(&self, other: &Context, max: usize) -> Vec<Dot> {
        let mut out = Vec::new();
        for (&r, &n) in &other.vv {
            let have = self.vv.get(&r).copied().unwrap_or(0);
            for seq in have + 1..=n {
                if out.len() == max {
                    return out;
                }
                let d = Dot { replica: r, seq };
                if !self.cloud.contains(&d) {
                    out.push(d);
                }
            }
        }
        out.extend(other.cloud.iter().filter(|d| !self.contains(**d)).take(max.saturating_sub(out.len())));
        out
    }

    /// The number of dots held outside the version vector (metadata the cloud costs).
    pub fn cloud_len(&self) -> usize {
        self.cloud.len()
    }

    /// The version vector part: every dot of replica `r` up to `vv[r]`.
    pub fn version_vector(&self) -> &BTreeMap<ReplicaId, u64> {
        &self.vv
    }

    /// Every dot in the set, in order (for tests: contexts are usually far too large to list).
    pub fn dots(&self) -> Vec<Dot> {
        let mut all: BTreeSet<Dot> = self.cloud.clone();
        for (&r, &n) in &self.vv {
            all.extend((1..=n).map(|seq| Dot { replica: r, seq }));
        }
        all.into_iter().collect()
    }

    /// True if the set is empty.
    pub fn is_empty(&self) -> bool {
        self.vv.values().all(|&n| n == 0) && self.cloud.is_empty()
    }

    /// True if the set is in the compact form every context made here has: no empty version
    /// vector entry, no cloud dot that the version vector holds or that continues it, every
    /// sequence number below 2^62. Two canonical contexts are equal exactly when their dots
    /// are; a context from outside (a peer, a token) is checked with this first.
    pub fn is_canonical(&self) -> bool {
        const MAX_SEQ: u64 = 1 << 62;
        self.vv.values().all(|&n| n > 0 && n < MAX_SEQ)
            && self.cloud.iter().all(|d| d.seq < MAX_SEQ && d.seq > self.vv.get(&d.replica).copied().unwrap_or(0) + 1)
    }

    /// The highest dot of `replica` in the set (0: none).
    pub fn top(&self, replica: ReplicaId) -> u64 {
        self.next(replica).seq - 1
    }

    /// The context as bytes (a session token on the wire).
    pub fn to_bytes(&self) -> Vec<u8> {
        bincode::serialize(self).expect("context encodes")
    }

    /// A context from [`Context::to_bytes`]; `None` if the bytes are not one (trailing bytes
    /// included).
    pub fn from_bytes(bytes: &[u8]) -> Option<Context> {
        super::decode_exact(bytes).ok()
    }

    fn covers_upto(&self, replica: ReplicaId, seq: u64) -> bool {
        let have = self.vv.get(&replica).copied().unwrap_or(0);
        have >= seq || (have + 1..=seq).all(|s| self.cloud.contains(&Dot { replica, seq: s }))
    }

    /// Moves the cloud's dots of `replica` that continue its version vector into it.
    fn compact_replica(&mut self, replica: ReplicaId) {
        let mut top = self.vv.get(&replica).copied().unwrap_or(0);
        let held: Vec<Dot> =
            self.cloud.range(Dot { replica, seq: 0 }..=Dot { replica, seq: u64::MAX }).copied().collect();
        for d in held {
            if d.seq <= top {
                self.cloud.remove(&d);
            } else if d.seq == top + 1 {
                top += 1;
                self.cloud.remove(&d);
            } else {
                break;
            }
        }
        if top > 0 {
            self.vv.insert(replica, top);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dot(replica: u64, seq: u64) -> Dot {
        Dot { replica, seq }
    }

    #[test]
    fn out_of_order_dots_wait_in_the_cloud_until_the_gap_fills() {
        let mut c = Context::new();
        c.insert(dot(1, 1));
        c.insert(dot(1, 3));
        assert_eq!(c.cloud_len(), 1);
        assert!(c.contains(dot(1, 3)) && !c.contains(dot(1, 2)));
        assert_eq!(c.next(1), dot(1, 4));
        c.insert(dot(1, 2));
        assert_eq!(c.cloud_len(), 0);
        assert_eq!(c.version_vector().get(&1), Some(&3));
        assert_eq!(c.missing(&Context::new(), 5), vec![]);
    }

    #[test]
    fn a_delta_is_ready_once_its_named_dots_and_the_senders_earlier_ones_are_here() {
        let mut here = Context::new();
        here.insert_upto(1, 2);
        // Node 2's delta: its dots 3 and 4 (base 2), replacing node 1's dot 2.
        let mut delta = Context::new();
        delta.insert(dot(1, 2));
        delta.insert(dot(2, 3));
        delta.insert(dot(2, 4));
        assert!(!here.ready_for(&delta, 2, 2), "node 2's dots 1 and 2 are missing");
        here.insert_upto(2, 2);
        assert!(here.ready_for(&delta, 2, 2));
        // Naming node 3's dot it lacks: not ready; a base past what is here: not ready.
        delta.insert(dot(3, 1));
        assert!(!here.ready_for(&delta, 2, 2));
        here.insert(dot(3, 1));
        assert!(here.ready_for(&delta, 2, 2));
        assert!(!here.ready_for(&delta, 2, 3));
        // A delta whose dots are all here already is ready whatever its base.
        here.join(&delta);
        assert!(here.ready_for(&delta, 2, 2));
    }

    #[test]
    fn covers_and_missing_agree() {
        let mut a = Context::new();
        a.insert_upto(1, 5);
        a.insert(dot(2, 2));
        let mut b = Context::new();
        b.insert_upto(1, 3);
        assert!(a.covers(&b));
        assert!(!b.covers(&a));
        assert_eq!(b.missing(&a, 10), vec![dot(1, 4), dot(1, 5), dot(2, 2)]);
        b.join(&a);
        assert!(b.covers(&a) && a.covers(&b));
        assert_eq!(a.dots(), b.dots());
    }
}
