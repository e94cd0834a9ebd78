//! Handing objects to their owners: after a slot move or a membership change, a node can hold
//! objects in slots it no longer owns. Every anti-entropy period it sends a page of them to
//! each owner that has not yet reported holding all of it, and probes those owners; once every
//! owner has reported (durably: probe replies leave after the owner's write) a context covering
//! the node's current one, the node drops the object, keeping on its disk only its own last dot
//! of it (so that, should the slot come back, it never issues a dot twice). A bounded counter's
//! rights here are first transferred to an owner that has answered (only their holder could
//! spend them).

use baton_core::crdt::{Body, Context, Key, Kind, Op, Value};

use super::gossip::{bucket_of, Gossip, MAX_KEYS_PER_EXCHANGE};
use super::{CrdtOutput, Replica};
use crate::NodeId;

/// Hand-off probes older than this many anti-entropy periods are forgotten (their replies
/// ignored; the next period probes again).
const PROBE_MEMORY_PERIODS: u64 = 3;

impl Replica {
    /// One round of hand-off (called every anti-entropy period): the next page of foreign
    /// objects, after the last page's, wrapping around.
    pub(super) fn hand_off(&mut self) {
        let forget = self.now_ms.saturating_sub(PROBE_MEMORY_PERIODS * self.cfg.anti_entropy_ms);
        self.handoff_probes.retain(|_, sent| *sent >= forget);
        self.return_rights();
        if self.foreign.is_empty() {
            self.handoff_cursor = None;
            return;
        }
        let after = self.handoff_cursor.take();
        let past = |k: &Key| after.as_ref().is_none_or(|a| k > a);
        let mut keys: Vec<Key> = self.foreign.iter().filter(|k| past(k)).take(MAX_KEYS_PER_EXCHANGE).cloned().collect();
        if keys.len() < MAX_KEYS_PER_EXCHANGE && after.is_some() {
            // Around again, from the first.
            let more = MAX_KEYS_PER_EXCHANGE - keys.len();
            keys.extend(self.foreign.iter().take_while(|k| !past(k)).take(more).cloned());
        }
        if keys.len() == MAX_KEYS_PER_EXCHANGE {
            self.handoff_cursor = keys.last().cloned();
        }
        for key in &keys {
            self.give_away_rights(key);
            self.unblock(key);
        }
        keys.retain(|k| self.objects.contains_key(k));
        self.next_probe += 1;
        let probe = self.next_probe;
        self.handoff_probes.insert(probe, self.now_ms);
        let peers: Vec<NodeId> = self.peers.iter().copied().collect();
        for p in peers {
            // To each owner, what it has not reported holding all of yet.
            let theirs: Vec<Key> =
                keys.iter().filter(|k| self.peer_owns(p, k) && !self.covered_by(k, p)).cloned().collect();
            if theirs.is_empty() {
                continue;
            }
            self.send_states(p, theirs.iter());
            self.held.push(CrdtOutput::Send { to: p, msg: Gossip::Probe { id: probe, keys: theirs } });
        }
    }

    /// Rights that a node which does not own a bounded counter holds (given to it while it
    /// still did, by a node whose view said so, with the transfer lost on the way) could never be
    /// spent: each period an owner sends the counter's state to such a node, which takes it for
    /// its rights and hands them on to an owner (see `merge`).
    fn return_rights(&mut self) {
        if self.placement.is_none() {
            return;
        }
        // A page of counters per period, a cursor going round.
        let first = Key { kind: Kind::BoundedCounter, name: String::new() };
        let from = self.rights_cursor.take().unwrap_or(first);
        let page: Vec<&Key> = self
            .objects
            .range((std::ops::Bound::Excluded(&from), std::ops::Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.kind == Kind::BoundedCounter)
            .take(MAX_KEYS_PER_EXCHANGE)
            .collect();
        if page.len() == MAX_KEYS_PER_EXCHANGE {
            self.rights_cursor = page.last().map(|k| (*k).clone());
        }
        let live = self.live_peers();
        let mut sends: Vec<(NodeId, Key)> = Vec::new();
        for key in page {
            let held = &self.objects[key];
            if !self.owns(key) {
                continue;
            }
            for &p in live.iter().filter(|&&p| !self.peer_owns(p, key)) {
                if matches!(held.obj.value(p), Value::Bounded { rights: 1.., .. }) {
                    sends.push((p, key.clone()));
                }
            }
        }
        for (p, key) in sends {
            self.send_states(p, std::iter::once(&key));
        }
    }

    /// Gives this node's rights on a foreign bounded counter to an owner that answered a
    /// hand-off probe (alive, and an owner by its own view then).
    fn give_away_rights(&mut self, key: &Key) {
        if !matches!(self.objects.get(key).map(|h| &h.obj.body), Some(Body::Bounded(_))) {
            return;
        }
        let rights = self.rights(key);
        let to = self.handed.get(key).and_then(|m| m.keys().copied().find(|&o| self.peer_owns(o, key)));
        if let (true, Some(to)) = (rights > 0, to) {
            if let Err(e) = self.try_update(key, Op::Transfer { to, n: rights as u64 }) {
                tracing::warn!(?key, to, "rights of a handed-off bounded counter not transferred: {e}");
            }
        }
    }

    /// An object every owner holds all of: dropped if nothing stops it now; else (rights left
    /// here that it cannot give, its own earlier dots not back) its state is stale, and it takes
    /// an owner's (only then: pulling a hot object every period would keep it ahead of the
    /// owners' reports and never dropped).
    fn unblock(&mut self, key: &Key) {
        let owners = self.placement.as_ref().map(|p| p.owners(key).to_vec()).unwrap_or_default();
        if owners.is_empty() || !owners.iter().all(|&o| self.covered_by(key, o)) {
            return;
        }
        let own_top = self.objects.get(key).map_or(0, |h| h.obj.ctx.top(self.cfg.id));
        let behind = self.dropped.get(key).is_some_and(|&top| own_top < top);
        if self.rights(key) <= 0 && !behind {
            // Unblocked since the owners' last answers (which still cover it): nothing to wait for.
            self.drop_object(key);
        } else {
            let to = owners[(self.now_ms / self.cfg.anti_entropy_ms.max(1)) as usize % owners.len()];
            self.held.push(CrdtOutput::Send { to, msg: Gossip::Pull(vec![key.clone()]) });
        }
    }

    /// True if owner `owner` reported holding everything this node has of `key`.
    fn covered_by(&self, key: &Key, owner: NodeId) -> bool {
        let (Some(held), Some(ctx)) = (self.objects.get(key), self.handed.get(key).and_then(|m| m.get(&owner))) else {
            return false;
        };
        ctx.covers(&held.obj.ctx)
    }

    /// True if `probe` is one of the hand-off's.
    pub(super) fn is_handoff_probe(&self, probe: u64) -> bool {
        self.handoff_probes.contains_key(&probe)
    }

    /// An owner's answer to a hand-off probe: what it holds is remembered; an object every
    /// owner holds all of (and with no rights left here) is dropped.
    pub(super) fn on_handoff_reply(&mut self, from: NodeId, contexts: Vec<(Key, Context)>) {
        for (key, ctx) in contexts {
            if !self.foreign.contains(&key) || !self.peer_owns(from, &key) || ctx.is_empty() {
                continue;
            }
            self.handed.entry(key.clone()).or_default().insert(from, ctx);
            let owners = self.placement.as_ref().map(|p| p.owners(&key).to_vec()).unwrap_or_default();
            let all = !owners.is_empty() && owners.iter().all(|&o| self.covered_by(&key, o));
            if all && self.rights(&key) <= 0 {
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
        // The state's record goes; the marker of this node's last dot stays.
        self.to_write.insert(key.clone(), Vec::new());
        let top = held.obj.ctx.top(self.cfg.id).max(self.dropped.get(key).copied().unwrap_or(0));
        if top > 0 {
            self.dropped.insert(key.clone(), top);
            self.marks_to_write.insert(key.clone(), top);
        }
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
