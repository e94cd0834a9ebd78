//! Anti-entropy: the digest exchange that repairs whatever gossip lost (see [`super::gossip`]
//! for the protocol), and whole states sent on request or to a peer a probe found behind.

use std::collections::BTreeMap;

use baton_core::crdt::{Context, Key};
use baton_core::slot_of;

use super::gossip::{
    bucket_of, encode_state, Gossip, Position, BUCKETS, MAX_KEYS_PER_EXCHANGE, MAX_STATE_BYTES_PER_MESSAGE,
};
use super::{CrdtOutput, Replica, WaitFor};
use crate::NodeId;

impl Replica {
    pub(super) fn on_digest(&mut self, from: NodeId, theirs: &[u64]) {
        if theirs.len() != BUCKETS {
            tracing::warn!(from, len = theirs.len(), "CRDT digest of the wrong size: ignored");
            return;
        }
        self.settle();
        let ours = self.digest_for(from);
        let buckets: Vec<u16> = (0..BUCKETS).filter(|&b| ours[b] != theirs[b]).map(|b| b as u16).collect();
        if buckets.is_empty() {
            self.ae_cursor.remove(&from);
            return;
        }
        // Page through the differing buckets: each exchange lists the keys after the last
        // one the previous exchange with this peer listed, so that a difference beyond the
        // first page is reached too.
        let after = self.ae_cursor.get(&from).cloned();
        let (hashes, to) = self.page(from, &buckets, after.as_ref());
        match &to {
            Some(last) => self.ae_cursor.insert(from, last.clone()),
            None => self.ae_cursor.remove(&from),
        };
        self.held.push(CrdtOutput::Send { to: from, msg: Gossip::Diff { buckets, hashes, after, to } });
    }

    /// The digest this node compares with `peer`: per bucket, the XOR of the hashes of the
    /// objects held in the slots both own (every bucket's whole hash without a placement).
    pub(super) fn digest_for(&mut self, peer: NodeId) -> Vec<u64> {
        self.settle();
        if self.placement.is_none() {
            return self.buckets.clone();
        }
        let per_bucket = baton_core::SLOTS as usize / BUCKETS;
        (0..BUCKETS)
            .map(|b| {
                (b * per_bucket..(b + 1) * per_bucket)
                    .filter(|&s| self.slot_hash[s] != 0 && self.shared(s as baton_core::Slot, peer))
                    .fold(0, |h, s| h ^ self.slot_hash[s])
            })
            .collect()
    }

    /// The keys (with their hashes) in `buckets` after `after` in slots this node and `peer`
    /// both own, in (bucket, key) order, up to [`MAX_KEYS_PER_EXCHANGE`]; and the last one if
    /// the page is full (`None`: to the end).
    pub(super) fn page(
        &self,
        peer: NodeId,
        buckets: &[u16],
        after: Option<&Position>,
    ) -> (Vec<(Key, u64)>, Option<Position>) {
        let mut out = Vec::new();
        for &b in buckets {
            if after.is_some_and(|(ab, _)| b < *ab) {
                continue;
            }
            for k in &self.bucket_keys[b as usize] {
                if after.is_some_and(|(ab, ak)| b == *ab && k <= ak) || !self.shared(slot_of(&k.name), peer) {
                    continue;
                }
                if out.len() == MAX_KEYS_PER_EXCHANGE {
                    let last: &Key = &out.last().map(|(k, _): &(Key, u64)| k.clone()).expect("a full page");
                    return (out, Some((bucket_of(last) as u16, last.clone())));
                }
                out.push((k.clone(), self.objects[k].hash));
            }
        }
        (out, None)
    }

    pub(super) fn on_diff(
        &mut self,
        from: NodeId,
        buckets: &[u16],
        theirs: Vec<(Key, u64)>,
        after: Option<Position>,
        to: Option<Position>,
    ) {
        self.settle();
        let theirs: BTreeMap<Key, u64> = theirs.into_iter().collect();
        // Ours in the same range of the same buckets (all of them: only what is sent is bounded).
        let in_range = |b: u16, k: &Key| {
            after.as_ref().is_none_or(|(ab, ak)| (b, k) > (*ab, ak))
                && to.as_ref().is_none_or(|(tb, tk)| (b, k) <= (*tb, tk))
        };
        let mut ours: BTreeMap<Key, u64> = BTreeMap::new();
        for &b in buckets.iter().filter(|&&b| (b as usize) < BUCKETS) {
            for k in
                self.bucket_keys[b as usize].iter().filter(|k| in_range(b, k) && self.shared(slot_of(&k.name), from))
            {
                ours.insert(k.clone(), self.objects[k].hash);
            }
        }
        // States they lack or hold differently go to them; what they hold differently or we
        // lack we pull (joining both ways makes both equal).
        let push: Vec<Key> = ours
            .iter()
            .filter(|(k, h)| theirs.get(k) != Some(h))
            .map(|(k, _)| k.clone())
            .take(MAX_KEYS_PER_EXCHANGE)
            .collect();
        let pull: Vec<Key> = theirs
            .iter()
            .filter(|(k, h)| ours.get(k) != Some(h) && self.owns(k))
            .map(|(k, _)| k.clone())
            .take(MAX_KEYS_PER_EXCHANGE)
            .collect();
        self.send_states(from, push.iter());
        if !pull.is_empty() {
            self.held.push(CrdtOutput::Send { to: from, msg: Gossip::Pull(pull) });
        }
    }

    /// Sends whole states of `keys` (those held) to `to`, cut into bounded messages.
    pub(super) fn send_states<'a>(&mut self, to: NodeId, keys: impl Iterator<Item = &'a Key>) {
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut msgs = Vec::new();
        for k in keys {
            let Some(h) = self.objects.get(k) else { continue };
            let size = encode_state(&h.obj).len() + k.name.len() + 16;
            if !batch.is_empty() && bytes + size > MAX_STATE_BYTES_PER_MESSAGE {
                msgs.push(Gossip::States(std::mem::take(&mut batch)));
                bytes = 0;
            }
            bytes += size;
            batch.push((k.clone(), h.obj.clone()));
        }
        if !batch.is_empty() {
            msgs.push(Gossip::States(batch));
        }
        for msg in msgs {
            self.held.push(CrdtOutput::Send { to, msg });
        }
    }

    pub(super) fn on_probe_reply(&mut self, from: NodeId, probe: u64, contexts: Vec<(Key, Context)>) {
        let mut behind = Vec::new();
        for w in &mut self.waits {
            if let WaitFor::Converged { target, peers, probe: p } = &mut w.what {
                if *p != probe {
                    continue;
                }
                for (k, ctx) in &contexts {
                    if *k == w.key && peers.contains_key(&from) {
                        let has = ctx.covers(target);
                        peers.insert(from, has);
                        if !has {
                            behind.push(k.clone());
                        }
                    }
                }
            }
        }
        // It lacks updates we have: push them now rather than wait for anti-entropy.
        self.send_states(from, behind.iter());
    }
}
