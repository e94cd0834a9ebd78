//! Requests that wait: session tokens not yet covered, converged reads probing their peers,
//! bounded-counter subtractions short of rights; their retries and deadlines, and the rights
//! this replica gives its peers.

use std::collections::{BTreeMap, BTreeSet};

use baton_core::crdt::{CrdtError, Key, Op, Value};

use super::gossip::{Gossip, MAX_KEYS_PER_EXCHANGE};
use super::{CrdtFailure, CrdtOutput, Replica, Wait, WaitFor, GIVE_MEMORY_RETRIES};
use crate::NodeId;

impl Replica {
    pub(super) fn wait(&mut self, w: Wait) {
        if self.waits.len() >= self.cfg.max_waits {
            let msg = format!(
                "{} coordination-free requests are waiting on this node, the most it allows",
                self.cfg.max_waits
            );
            self.answer(w.id, Err(CrdtFailure::Busy(msg)));
            return;
        }
        self.waits.push(w);
    }

    pub(super) fn pull(&mut self, key: &Key) {
        for p in self.live_owner_peers(key) {
            self.held.push(CrdtOutput::Send { to: p, msg: Gossip::Pull(vec![key.clone()]) });
        }
    }

    pub(super) fn ask_rights(&mut self, key: &Key, n: u64) {
        let have = match self.objects.get(key).map(|h| h.obj.value(self.cfg.id)) {
            Some(Value::Bounded { rights, .. }) => rights.max(0) as u64,
            _ => 0,
        };
        let n = n.saturating_sub(have).max(1);
        for p in self.live_owner_peers(key) {
            self.held.push(CrdtOutput::Send { to: p, msg: Gossip::WantRights { key: key.clone(), n } });
        }
    }

    pub(super) fn give_rights(&mut self, to: NodeId, key: Key, n: u64) {
        // One grant per asker and counter per few retry periods: its repeats (and duplicates)
        // would otherwise be served again before the first grant reached it.
        if !self.peer_owns(to, &key) || !self.owns(&key) {
            // Rights given to a node that does not own the counter could only be spent there,
            // and it would never see the transfer (deltas go to owners).
            return;
        }
        let recent = self.now_ms.saturating_sub(GIVE_MEMORY_RETRIES * self.cfg.retry_ms);
        if self.given.get(&(to, key.clone())).is_some_and(|&t| t >= recent) {
            return;
        }
        // This node's own subtractions waiting for rights on the counter: between two nodes
        // both short, the lower id keeps what it has and the higher gives it everything, so
        // that one of them can go on instead of both swapping rights until their deadlines.
        let waiting: u64 = self
            .waits
            .iter()
            .filter(|w| w.key == key)
            .map(|w| if let WaitFor::Rights(n) = w.what { n } else { 0 })
            .sum();
        if waiting > 0 && self.cfg.id < to {
            return;
        }
        let have = self.rights(&key).max(0) as u64;
        let give = if waiting > 0 { have } else { have.min(n) };
        if give == 0 {
            return;
        }
        self.given.insert((to, key.clone()), self.now_ms);
        if self.try_update(&key, Op::Transfer { to, n: give }).is_err() {
            tracing::debug!(?key, to, give, "rights transfer refused");
        }
    }

    /// Re-examines waiting requests: answers those whose condition holds (once per round and
    /// per tick, not per message: its cost grows with the waits).
    pub(super) fn recheck(&mut self) {
        if self.waits.is_empty() {
            return;
        }
        let live: BTreeSet<NodeId> = self.live_peers().into_iter().collect();
        let waits = std::mem::take(&mut self.waits);
        let mut keep = Vec::with_capacity(waits.len());
        for w in waits {
            let done = match &w.what {
                WaitFor::Token(token) => self.has(&w.key, token),
                WaitFor::UpdateAfter(token, op) => {
                    if self.has(&w.key, token) {
                        self.update(w.id, w.key.clone(), op.clone(), w.deadline_ms);
                        continue;
                    }
                    false
                }
                WaitFor::Converged { peers, .. } if self.bugs.crdt_converged_answers_early => {
                    peers.values().any(|h| *h)
                }
                WaitFor::Converged { peers, .. } => peers.iter().all(|(p, has)| *has || !live.contains(p)),
                WaitFor::Rights(n) => match self.try_update(&w.key, Op::Subtract(*n)) {
                    Ok(()) => true,
                    Err(CrdtFailure::Refused(CrdtError::NotEnoughRights { .. })) => false,
                    Err(e) => {
                        self.answer(w.id, Err(e));
                        continue;
                    }
                },
            };
            if done {
                let reply = self.reply(&w.key);
                self.answer(w.id, Ok(reply));
            } else {
                keep.push(w);
            }
        }
        keep.append(&mut self.waits);
        self.waits = keep;
    }

    /// This replica's rights on a bounded counter (0 if it has none, or it is no such counter).
    pub(super) fn rights(&self, key: &Key) -> i128 {
        match self.objects.get(key).map(|h| h.obj.value(self.cfg.id)) {
            Some(Value::Bounded { rights, .. }) => rights,
            _ => 0,
        }
    }

    /// Time passed: anti-entropy when due, retries and deadlines of waiting requests.
    pub fn tick(&mut self) {
        if self.now_ms >= self.next_anti_entropy_ms {
            self.next_anti_entropy_ms = self.now_ms + self.cfg.anti_entropy_ms;
            self.settle();
            let peers: Vec<NodeId> = self.peers.iter().copied().collect();
            for p in peers {
                let digest = self.digest_for(p);
                self.held.push(CrdtOutput::Send { to: p, msg: Gossip::Digest(digest) });
            }
            self.hand_off();
            let forget = self.now_ms.saturating_sub(GIVE_MEMORY_RETRIES * self.cfg.retry_ms);
            self.given.retain(|_, t| *t >= forget);
        }
        self.expire_pending();
        self.recheck();
        let now = self.now_ms;
        let mut waits = std::mem::take(&mut self.waits);
        waits.retain(|w| {
            if now < w.deadline_ms {
                return true;
            }
            let failure = match &w.what {
                WaitFor::Token(t) | WaitFor::UpdateAfter(t, _) => {
                    let have = self.objects.get(&w.key).map(|h| h.obj.ctx.clone()).unwrap_or_default();
                    let missing = have.missing(t, 3);
                    CrdtFailure::Timeout(format!(
                        "this node has not received every update the session has seen yet (missing {missing:?}); \
                         nothing was applied"
                    ))
                }
                WaitFor::Converged { peers, .. } => {
                    let lacking: Vec<_> = peers.iter().filter(|(_, h)| !**h).map(|(p, _)| *p).collect();
                    CrdtFailure::Timeout(format!(
                        "not converged before the deadline: nodes {lacking:?} have not reported every update"
                    ))
                }
                WaitFor::Rights(n) => {
                    let have = self.rights(&w.key);
                    CrdtError::NotEnoughRights { name: w.key.name.clone(), have, wanted: *n }.into()
                }
            };
            self.held.push(CrdtOutput::Answer { id: w.id, result: Err(failure) });
            false
        });
        // Retries, one message per peer and kind: pulls of every key some wait lacks, probes
        // per converged read, and per bounded counter the largest remaining need.
        let live = self.live_peers();
        let mut pulls: BTreeSet<Key> = BTreeSet::new();
        let mut wants: BTreeMap<Key, u64> = BTreeMap::new();
        let mut probes = Vec::new();
        for w in &mut waits {
            if now < w.next_try_ms {
                continue;
            }
            w.next_try_ms = now + self.cfg.retry_ms;
            match &w.what {
                WaitFor::Token(_) | WaitFor::UpdateAfter(..) => {
                    pulls.insert(w.key.clone());
                }
                WaitFor::Converged { peers, probe, .. } => {
                    for (p, _) in peers.iter().filter(|(_, h)| !**h) {
                        probes.push((*p, Gossip::Probe { id: *probe, keys: vec![w.key.clone()] }));
                    }
                }
                WaitFor::Rights(n) => {
                    let need = n.saturating_sub(self.rights(&w.key).max(0) as u64).max(1);
                    let e = wants.entry(w.key.clone()).or_insert(0);
                    *e = (*e).max(need);
                }
            }
        }
        if !pulls.is_empty() {
            let keys: Vec<Key> = pulls.into_iter().take(MAX_KEYS_PER_EXCHANGE).collect();
            for &p in &live {
                let theirs: Vec<Key> = keys.iter().filter(|k| self.peer_owns(p, k)).cloned().collect();
                if !theirs.is_empty() {
                    self.held.push(CrdtOutput::Send { to: p, msg: Gossip::Pull(theirs) });
                }
            }
        }
        for (key, n) in wants {
            for p in self.live_owner_peers(&key) {
                self.held.push(CrdtOutput::Send { to: p, msg: Gossip::WantRights { key: key.clone(), n } });
            }
        }
        self.held.extend(probes.into_iter().map(|(to, msg)| CrdtOutput::Send { to, msg }));
        waits.append(&mut self.waits);
        self.waits = waits;
    }
}
