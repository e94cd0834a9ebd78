//! Handing objects to their owners: after a slot move or a membership change, a node can hold
//! objects in slots it no longer owns. Every anti-entropy period it sends each of them (a page
//! at a time) to every owner and probes the owners; once every owner reports holding, durably,
//! everything this node has of an object, the node drops it, keeping on its disk only its own
//! last dot of it (so that, should the slot come back, it does not issue a dot twice).

use baton_core::crdt::{Body, Context, Key, Op};

use super::gossip::{bucket_of, Gossip, MAX_KEYS_PER_EXCHANGE};
use super::store::dropped_marker;
use super::{CrdtOutput, Replica};
use crate::NodeId;

/// Hand-off probes older than this many anti-entropy periods are forgotten (their replies
/// ignored; the next period probes again).
const PROBE_MEMORY_PERIODS: u64 = 3;

impl Replica {
    /// One round of hand-off (called every anti-entropy period).
    pub(super) fn hand_off(&mut self) {
        let forget = self.now_ms.saturating_sub(PROBE_MEMORY_PERIODS * self.cfg.anti_entropy_ms);
        self.handoff_probes.retain(|_, sent| *sent >= forget);
        if self.foreign.is_empty() {
            return;
        }
        let keys: Vec<Key> = self.foreign.iter().take(MAX_KEYS_PER_EXCHANGE).cloned().collect();
        // A bounded counter's rights here could never be spent once the object is gone: give
        // them to an owner first (a transfer like any other, gossiped to the owners).
        let bounded: Vec<&Key> = keys
            .iter()
            .filter(|k| matches!(self.objects.get(*k).map(|h| &h.obj.body), Some(Body::Bounded(_))))
            .collect();
        for key in bounded {
            let rights = self.rights(key);
            let to = self.owner_peers(key).first().copied();
            if let (true, Some(to)) = (rights > 0, to) {
                if let Err(e) = self.try_update(key, Op::Transfer { to, n: rights as u64 }) {
                    tracing::warn!(?key, to, "rights of a handed-off bounded counter not transferred: {e}");
                }
            }
        }
        self.next_probe += 1;
        let probe = self.next_probe;
        self.handoff_probes.insert(probe, self.now_ms);
        let peers: Vec<NodeId> = self.peers.iter().copied().collect();
        for p in peers {
            let theirs: Vec<Key> = keys.iter().filter(|k| self.peer_owns(p, k)).cloned().collect();
            if theirs.is_empty() {
                continue;
            }
            self.send_states(p, theirs.iter());
            self.held.push(CrdtOutput::Send { to: p, msg: Gossip::Probe { id: probe, keys: theirs } });
        }
    }

    /// True if `probe` is one of the hand-off's.
    pub(super) fn is_handoff_probe(&self, probe: u64) -> bool {
        self.handoff_probes.contains_key(&probe)
    }

    /// An owner's answer to a hand-off probe: the objects it holds all of are handed to it;
    /// one handed to every owner is dropped.
    pub(super) fn on_handoff_reply(&mut self, from: NodeId, contexts: Vec<(Key, Context)>) {
        for (key, ctx) in contexts {
            if !self.foreign.contains(&key) || !self.peer_owns(from, &key) {
                continue;
            }
            let Some(held) = self.objects.get(&key) else { continue };
            if !ctx.covers(&held.obj.ctx) {
                continue;
            }
            let handed = self.handed.entry(key.clone()).or_default();
            handed.insert(from);
            let owners = self.placement.as_ref().map(|p| p.owners(&key).to_vec()).unwrap_or_default();
            if !owners.is_empty() && owners.iter().all(|o| handed.contains(o)) {
                self.drop_object(&key);
            }
        }
    }

    /// Forgets a handed-off object, keeping this node's last dot of it.
    pub(super) fn drop_object(&mut self, key: &Key) {
        let Some(held) = self.objects.remove(key) else { return };
        self.buckets[bucket_of(key)] ^= held.hash;
        self.slot_hash[baton_core::slot_of(&key.name) as usize] ^= held.hash;
        self.bucket_keys[bucket_of(key)].remove(key);
        self.foreign.remove(key);
        self.handed.remove(key);
        self.dirty.remove(key);
        let top = held.obj.ctx.top(self.cfg.id).max(self.dropped.get(key).copied().unwrap_or(0));
        if top > 0 {
            self.dropped.insert(key.clone(), top);
        }
        self.to_write.insert(key.clone(), dropped_marker(top));
        self.handed_off += 1;
        tracing::debug!(?key, "CRDT object handed to its owners and dropped here");
    }

    /// Objects held in slots this node does not own (for status pages and tests).
    pub fn foreign_len(&self) -> usize {
        self.foreign.len()
    }

    /// Objects handed off and dropped since this replica started.
    pub fn handed_off(&self) -> u64 {
        self.handed_off
    }
}
