//! The checkers of the coordination-free simulation (see the parent module's docs): each looks
//! at the nodes (their replicas, or their disks) or at what clients were told.

use std::collections::{BTreeMap, BTreeSet};

use baton_core::crdt::{Context, Key, Kind, Value};
use baton_node::crdt::CrdtStore;

use super::World;

impl World {
    /// The bounded counters' invariant on node `node`'s state, right now.
    pub(super) fn check_bounded(&mut self, node: u64) {
        let Some(r) = self.nodes[&node].replica.as_ref() else { return };
        let mut bad = Vec::new();
        for key in self.keys.iter().filter(|k| k.kind == Kind::BoundedCounter) {
            let Some(obj) = r.get(key) else { continue };
            for reader in self.nodes.keys() {
                if let Value::Bounded { value, rights } = obj.value(*reader) {
                    if value < 0 || rights < 0 {
                        bad.push(format!(
                            "{} on node {node}: value {value}, node {reader}'s rights {rights}",
                            key.name
                        ));
                    }
                }
            }
        }
        for detail in bad {
            self.violation("crdt-bounded", detail);
        }
    }

    /// Read-your-writes and monotonic reads for one client's session read.
    pub(super) fn check_session(&mut self, c: usize, key: &Key, value: &Value, node: u64) {
        let client = &self.clients[c];
        let mut problems = Vec::new();
        match (key.kind, value) {
            (Kind::GCounter, Value::Counter(v)) => {
                let own = client.own_adds.get(key).copied().unwrap_or(0);
                if *v < own {
                    problems.push(format!("{} read {v} on node {node}, below the session's own adds {own}", key.name));
                }
            }
            (Kind::GSet | Kind::OrSet, Value::Members(m)) => {
                let m: BTreeSet<&String> = m.iter().collect();
                for e in client.own_inserts.get(key).into_iter().flatten() {
                    // Elements are the inserter's own, and only it updates them.
                    if let Some(want) = self.truth.settled(key, e) {
                        if m.contains(e) != want {
                            let last = if want { "an insert" } else { "a remove" };
                            let has = if want { "lacks" } else { "holds" };
                            problems.push(format!(
                                "{} on node {node} {has} {e}, whose last update by this session was {last}",
                                key.name
                            ));
                        }
                    }
                }
            }
            (Kind::LwwRegister, Value::Register { stamp, .. }) => {
                if let Some(own) = client.last_stamp.get(key).filter(|own| stamp.is_none_or(|s| s < **own)) {
                    problems.push(format!(
                        "{} read on node {node} shows the write stamped {stamp:?}, older than the session's own {own:?}",
                        key.name
                    ));
                }
            }
            _ => {}
        }
        if let Some(prev) = client.last_session.get(key) {
            let backwards = match (prev, value) {
                (Value::Counter(a), Value::Counter(b)) if key.kind == Kind::GCounter => b < a,
                (Value::Members(a), Value::Members(b)) if key.kind == Kind::GSet => !a.iter().all(|e| b.contains(e)),
                _ => false,
            };
            if backwards {
                problems.push(format!("{} read {value:?} on node {node} after the session read {prev:?}", key.name));
            }
        }
        self.clients[c].last_session.insert(key.clone(), value.clone());
        for p in problems {
            self.violation("crdt-session", p);
        }
    }

    /// No OR-set or MV-register state on node `node` holds an entry that an acknowledged update
    /// replaced while its context has that update's dot.
    pub(super) fn check_causal(&mut self, node: u64, key: &Key) {
        use baton_core::crdt::Body;
        let Some(obj) = self.nodes[&node].replica.as_ref().and_then(|r| r.get(key)) else { return };
        let entries: Vec<(baton_core::crdt::Dot, Option<&String>)> = match &obj.body {
            Body::OrSet(k) => k.entries().iter().map(|(d, e)| (*d, Some(e))).collect(),
            Body::Mv(k) => k.entries().keys().map(|d| (*d, None)).collect(),
            _ => return,
        };
        let mut problems = Vec::new();
        for w in self.truth.kernel_writes.get(key).into_iter().flatten().filter(|w| obj.ctx.contains(w.dot)) {
            for (d, e) in &entries {
                if *d != w.dot && w.seen.contains(*d) && (e.is_none() || *e == w.elem.as_ref()) {
                    problems.push(format!(
                        "{} on node {node} holds the entry {d:?}{}, replaced by the acknowledged update {:?} its context has",
                        key.name,
                        e.map(|e| format!(" ({e})")).unwrap_or_default(),
                        w.dot
                    ));
                }
            }
        }
        for p in problems {
            self.violation("crdt-causal", p);
        }
    }

    /// Every peer the read had to wait for (`must`) holds, on its disk, the updates `reader`
    /// had when the read arrived (`target`): up or crashed since.
    /// A peer whose placement changed during the wait is not judged: it may have stopped owning
    /// the object, handed it to its other owners and dropped it, and own it again (the read's
    /// owners are the reader's at its start; docs/PRIMITIVES.md says so).
    pub(super) fn check_converged(&mut self, key: &Key, target: &Context, reader: u64, must: &[(u64, usize)]) {
        let lacking: Vec<u64> = must
            .iter()
            .filter(|(p, placed)| self.nodes[p].placed == *placed)
            .map(|(p, _)| *p)
            .filter(|p| {
                let stored = self.nodes[p].store.load().expect("memory store");
                // A node that dropped the object handed it off first: it no longer owns it,
                // and every owner held, durably, all it had.
                let handed = |p: u64| {
                    let placed = self.nodes[&p].placed;
                    placed > 0 && !self.placements[placed - 1].owners(key).contains(&p)
                };
                let has = stored.iter().find(|(k, _)| k == key).map(|(_, o)| match o {
                    baton_node::crdt::Stored::State(o) => o.ctx.covers(target),
                    baton_node::crdt::Stored::Dropped(_) => target.is_empty() || handed(*p),
                });
                // (Nothing at all: never held, or dropped without having made a dot of it.)
                !has.unwrap_or_else(|| target.is_empty() || handed(*p))
            })
            .collect();
        if !lacking.is_empty() {
            let detail = format!(
                "a converged read of {} on node {reader} answered while nodes {lacking:?} lacked its updates",
                key.name
            );
            self.violation("crdt-converged-read", detail);
        }
    }

    /// After the heal phase: convergence, and no acknowledged update lost.
    pub(super) fn check_end(&mut self) {
        let down: Vec<u64> = self.nodes.iter().filter(|(_, n)| n.replica.is_none()).map(|(id, _)| *id).collect();
        if !down.is_empty() {
            self.violation("crdt-convergence", format!("nodes {down:?} were still down at the end"));
            return;
        }
        let keys = self.keys.clone();
        for key in &keys {
            // Its owners hold equal states; every other node has handed it off and dropped it.
            let owners = self.owners(key);
            for (id, n) in &self.nodes {
                if !owners.contains(id) && n.replica.as_ref().is_some_and(|r| r.get(key).is_some()) {
                    let detail = format!("{} is still held by node {id}, which does not own it", key.name);
                    self.report.violations.push(crate::check::Violation {
                        property: "crdt-convergence",
                        detail,
                        at: self.now,
                    });
                }
            }
            let states: Vec<(u64, Option<baton_core::crdt::Object>)> = self
                .nodes
                .iter()
                .filter(|(id, _)| owners.contains(id))
                .map(|(id, n)| (*id, n.replica.as_ref().and_then(|r| r.get(key)).cloned()))
                .collect();
            let first = &states[0].1;
            for (id, s) in &states[1..] {
                if s != first {
                    let detail =
                        format!("{} differs between node {} and node {id} after the heal phase", key.name, states[0].0);
                    self.violation("crdt-convergence", detail);
                }
            }
            let Some(obj) = first else { continue };
            self.check_durable(key, &obj.value(1));
            // Rights only an owner can spend: none left with a node that does not own it.
            if key.kind == Kind::BoundedCounter {
                for id in self.nodes.keys().copied().filter(|id| !owners.contains(id)).collect::<Vec<_>>() {
                    if let Value::Bounded { rights: r @ 1.., .. } = obj.value(id) {
                        let detail = format!("{}: node {id}, which does not own it, holds {r} rights", key.name);
                        self.violation("crdt-bounded", detail);
                    }
                }
            }
        }
    }

    pub(super) fn check_durable(&mut self, key: &Key, value: &Value) {
        let t = &self.truth;
        let get = |m: &BTreeMap<Key, i128>| m.get(key).copied().unwrap_or(0);
        let mut problems = Vec::new();
        match value {
            Value::Counter(v) | Value::Bounded { value: v, .. } => {
                let low = get(&t.acked_add) - get(&t.tried_sub);
                let high = get(&t.tried_add) - get(&t.acked_sub);
                if *v < low || *v > high {
                    problems.push(format!(
                        "{} ends at {v}, outside [{low}, {high}] (acknowledged adds less every subtraction tried, and the converse)",
                        key.name
                    ));
                }
            }
            Value::Members(m) => {
                let m: BTreeSet<&String> = m.iter().collect();
                let removed = t.tried_remove.get(key).cloned().unwrap_or_default();
                for e in t.acked_insert.get(key).into_iter().flatten() {
                    if !m.contains(e) && !removed.contains(e) {
                        problems.push(format!("{} lost the acknowledged insert {e}", key.name));
                    }
                }
                // Its only client's updates, all acknowledged, are ordered (a session's are).
                for e in t.elem_ops.get(key).into_iter().flat_map(|m| m.keys()) {
                    if let Some(want) = t.settled(key, e) {
                        if m.contains(e) != want {
                            let last = if want { "an acknowledged insert" } else { "an acknowledged remove" };
                            problems.push(format!(
                                "{} ends {} {e}, whose last update (by its only client) was {last}",
                                key.name,
                                if want { "without" } else { "with" }
                            ));
                        }
                    }
                }
                let tried = t.tried_insert.get(key).cloned().unwrap_or_default();
                for e in m {
                    if !tried.contains(e) {
                        problems.push(format!("{} holds {e}, never inserted", key.name));
                    }
                }
            }
            _ => {}
        }
        for p in problems {
            self.violation("crdt-durability", p);
        }
    }
}

impl super::Truth {
    /// Whether set element `e` must be present: `Some(last update was an insert)` when every
    /// update of it was acknowledged (they are one session's, so ordered), `None` when one was
    /// not (it may have applied, concurrently with later ones, or not at all).
    pub(super) fn settled(&self, key: &Key, e: &str) -> Option<bool> {
        let ops = self.elem_ops.get(key)?.get(e)?;
        if ops.is_empty() || !ops.iter().all(|(_, acked)| *acked) {
            return None;
        }
        ops.last().map(|(insert, _)| *insert)
    }
}
