//! The recorded history of a run and the checkers over it.

use std::collections::{BTreeMap, BTreeSet};

use baton_core::{Event, Kind, Mode, SessionId};

/// Parties of the workload's barrier (`lock-4`).
pub const BARRIER_PARTIES: u32 = 3;

/// Virtual time in microseconds.
pub type Time = u64;

/// A property the run broke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which property: `agreement`, `fencing`, `mutual-exclusion`, `durability`, `liveness`.
    pub property: &'static str,
    /// What happened, for a person.
    pub detail: String,
    /// Virtual time (µs) at which it was detected.
    pub at: Time,
}

/// One client's hold of a lock, in virtual time.
#[derive(Clone, Debug)]
pub struct Hold {
    pub name: String,
    pub client: usize,
    pub session: SessionId,
    pub token: u64,
    pub kind: Kind,
    pub mode: Mode,
    pub from: Time,
    pub until: Time,
}

impl Hold {
    /// True if `self` and `other` (on the same name, different sessions) may not overlap, given
    /// the other holds `active` at the moment `self` starts (semaphores count permits).
    fn conflicts(&self, active: &[&Hold]) -> bool {
        match self.kind {
            Kind::Mutex | Kind::Election => !active.is_empty(),
            // Passing a barrier or latch holds nothing.
            Kind::Barrier { .. } | Kind::Latch => false,
            Kind::RwLock => active.iter().any(|a| a.mode == Mode::Exclusive || self.mode == Mode::Exclusive),
            Kind::Semaphore { capacity } => {
                let permits = |h: &Hold| if let Mode::Permits(n) = h.mode { n as u64 } else { 1 };
                active.iter().map(|a| permits(a)).sum::<u64>() + permits(self) > capacity as u64
            }
        }
    }
}

/// One counter operation on the shared counter `ctr` (adds are +1).
#[derive(Clone, Debug)]
pub struct CounterOp {
    /// An add (else a read).
    pub add: bool,
    pub invoked: Time,
    /// `None`: no answer (an add may or may not have applied).
    pub completed: Option<Time>,
    /// The value after the add, or the value read.
    pub value: Option<i64>,
}

/// One operation on the workload's register `reg-0`.
#[derive(Clone, Debug)]
pub struct RegisterOp {
    /// A write (set, or a compare-and-set that swapped); else a read (a get, or a
    /// compare-and-set that did not swap, which read the version it compared with).
    pub write: bool,
    /// A delete (version 0 after it).
    pub delete: bool,
    pub invoked: Time,
    /// `None`: no answer (a write may or may not have applied).
    pub completed: Option<Time>,
    /// The version written, or read (0: not written).
    pub version: Option<u64>,
}

/// One operation on the etcd keyspace.
#[derive(Clone, Debug)]
pub struct EtcdOp {
    pub key: Vec<u8>,
    /// `Some(Some(v))`: a put of `v`; `Some(None)`: a delete; `None`: a read.
    pub write: Option<Option<Vec<u8>>>,
    pub invoked: Time,
    /// `None`: no answer (a write may or may not have applied).
    pub completed: Option<Time>,
    /// The keyspace's revision in the answer's header.
    pub revision: Option<i64>,
    /// A read's answer: the key's value, `None` if absent.
    pub read: Option<Option<Vec<u8>>>,
    /// A write changed the keyspace (a delete of an absent key does not).
    pub changed: bool,
    /// The answer was a refusal: the write certainly did not apply.
    pub refused: bool,
}

/// The etcd keyspace's history over the run, recorded from the most advanced replica as it
/// went (before compactions took it away) and checked against every replica at the end: every
/// change, and the revisions the record missed (compacted before it was read; rare).
#[derive(Clone, Debug, Default)]
pub struct EtcdTruth {
    pub changes: Vec<(i64, baton_core::etcd::KeyEvent)>,
    pub gaps: Vec<(i64, i64)>,
}

/// Whether two records of a change agree: a change at a compaction revision (`compaction`
/// says which revisions were ones) may have lost its previous value in a history compacted
/// there (older than the compaction) while the other record was read before.
pub(crate) fn same_change(
    a: &(i64, baton_core::etcd::KeyEvent),
    b: &(i64, baton_core::etcd::KeyEvent),
    compaction: impl Fn(i64) -> bool,
) -> bool {
    a.0 == b.0
        && a.1.kv == b.1.kv
        && a.1.deleted == b.1.deleted
        && (a.1.prev == b.1.prev || (compaction(b.0) && (a.1.prev.is_none() || b.1.prev.is_none())))
}

/// A watcher of the etcd keyspace (one segment of it: told its next revision was compacted, a
/// watcher starts over in a new one): the revision it started from, how far it has read, and
/// the changes it was sent, in order.
#[derive(Clone, Debug, Default)]
pub struct EtcdWatcher {
    pub start: i64,
    pub through: i64,
    pub seen: Vec<(i64, baton_core::etcd::KeyEvent)>,
}

/// What a node is applying: (group, log index), and the (sequence number, event) pairs so far.
type Applying = ((u64, u64), Vec<(u64, Event)>);

/// Everything the checkers look at.
#[derive(Default)]
pub struct History {
    /// The (sequence number, event) pairs of each applied log entry of every group, as first
    /// applied anywhere, keyed by the order in which entries were first applied: within a group
    /// that is log order, and across groups it follows causality (a slot move's take-over is
    /// applied after its hand-off), so every name's history reads in order. Each entry keeps its
    /// group.
    log: BTreeMap<u64, (u64, Vec<(u64, Event)>)>,
    /// (group, log index) -> its key in `log`, for agreement.
    first: BTreeMap<(u64, u64), u64>,
    /// Per node: the (group, index) being applied and its events so far.
    applying: BTreeMap<u64, Applying>,
    /// Completed holds.
    pub holds: Vec<Hold>,
    /// Grants clients received: (name, session, token, time).
    pub received: Vec<(String, SessionId, u64, Time)>,
    pub violations: Vec<Violation>,
    /// Counter operations, in invocation order.
    pub counter_ops: Vec<CounterOp>,
    /// Register operations, in invocation order.
    pub register_ops: Vec<RegisterOp>,
    /// Latch waits clients were told they passed: (session, request id, time).
    pub latch_passes: Vec<(SessionId, u64, Time)>,
    /// Operations on the etcd keyspace, in invocation order.
    pub etcd_ops: Vec<EtcdOp>,
    /// Watchers of the etcd keyspace, fed from the replicas of whichever nodes were up.
    pub etcd_watchers: Vec<EtcdWatcher>,
    /// The etcd keyspace's history over the run (`None`: no node holds the keyspace).
    pub etcd_truth: Option<EtcdTruth>,
    /// Every compaction revision a client asked for.
    pub etcd_compactions_asked: std::collections::BTreeSet<i64>,
    /// Violations the clients saw in answers (a describe without the holder, a refused proclaim
    /// of a leader, ...), reported after the whole-history checkers, which are more specific.
    pub answer_violations: Vec<Violation>,
    /// Every acquire call: its session and the request ids its attempts carried (one, unless a
    /// client bug changes it).
    pub acquire_calls: Vec<(SessionId, Vec<u64>)>,
}

impl History {
    /// A node applied `event` at log `index` of `group`.
    pub fn applied(&mut self, node: u64, group: u64, index: u64, seq: u64, event: Event, now: Time) {
        let at = (group, index);
        let entry = self.applying.entry(node).or_insert((at, Vec::new()));
        if entry.0 != at {
            let (done, events) = std::mem::replace(entry, (at, Vec::new()));
            self.finish(node, done, events, now);
        }
        self.applying.get_mut(&node).expect("just inserted").1.push((seq, event));
    }

    /// A node crashed or installed a snapshot: what it was applying is complete.
    pub fn flush(&mut self, node: u64, now: Time) {
        if let Some((index, events)) = self.applying.remove(&node) {
            self.finish(node, index, events, now);
        }
    }

    fn finish(&mut self, node: u64, (group, index): (u64, u64), events: Vec<(u64, Event)>, now: Time) {
        match self.first.get(&(group, index)).and_then(|k| self.log.get(k)) {
            Some((_, first)) if *first != events => self.violations.push(Violation {
                property: "agreement",
                detail: format!(
                    "node {node} applied index {index} of group {group} as {events:?}, but it was first applied as {first:?}"
                ),
                at: now,
            }),
            Some(_) => {}
            None => {
                let key = self.log.len() as u64 + 1;
                self.first.insert((group, index), key);
                self.log.insert(key, (group, events));
            }
        }
    }

    /// Runs the checkers that need the whole history.
    pub fn check_end(&mut self, now: Time) {
        let nodes: Vec<u64> = self.applying.keys().copied().collect();
        for n in nodes {
            self.flush(n, now);
        }
        self.check_fencing(now);
        self.check_received();
        self.check_exclusion();
        self.check_counter();
        self.check_barrier();
        self.check_register();
        self.check_latch();
        self.check_once();
        self.check_one_kind();
        self.check_etcd(now);
        let seen = std::mem::take(&mut self.answer_violations);
        self.violations.extend(seen);
    }

    /// The etcd keyspace, against the history every replica agrees on (the most advanced
    /// replica's, checked by the world to extend every other's):
    /// - every acknowledged put is in it, at the revision its answer gave, with its value; every
    ///   acknowledged delete that deleted is a deletion there, one that did not finds the key
    ///   absent at its revision;
    /// - every read returns the key as the history has it at the read's revision;
    /// - real time: an operation invoked after another completed answers at a revision no
    ///   older (newer, if it changed the keyspace);
    /// - watchers: each saw exactly the history's changes from its start through where it
    ///   read, once each, in revision order.
    fn check_etcd(&mut self, at: Time) {
        use std::collections::BTreeMap;
        let Some(EtcdTruth { changes: truth, gaps }) = self.etcd_truth.clone() else { return };
        // Per key: (revision, value after it; `None`: deleted).
        type KeyHistory = Vec<(i64, Option<Vec<u8>>)>;
        let mut per_key: BTreeMap<Vec<u8>, KeyHistory> = BTreeMap::new();
        for (rev, e) in &truth {
            per_key.entry(e.kv.key.clone()).or_default().push((*rev, (!e.deleted).then(|| e.kv.value.clone())));
        }
        let value_at = |key: &[u8], rev: i64| -> Option<Vec<u8>> {
            per_key.get(key).and_then(|h| h.iter().take_while(|(r, _)| *r <= rev).last()).and_then(|(_, v)| v.clone())
        };
        // A revision the record missed is not checked; nor is a read after one (the keys'
        // state there is not known). The record starts at the empty keyspace, so there is
        // no compaction boundary to trust.
        let checkable = |rev: i64| !gaps.iter().any(|(a, b)| (*a..=*b).contains(&rev));
        let state_known = |rev: i64| gaps.first().is_none_or(|(a, _)| rev < *a);
        let mut found = Vec::new();
        // Each put's value is unique: in the history it appears once, only if put, and never
        // if its put was refused.
        let mut put_values: BTreeMap<&[u8], usize> = BTreeMap::new();
        for (rev, e) in &truth {
            if e.deleted {
                continue;
            }
            *put_values.entry(e.kv.value.as_slice()).or_default() += 1;
            let origin =
                self.etcd_ops.iter().find(|o| o.write.as_ref().and_then(|w| w.as_deref()) == Some(&e.kv.value));
            match origin {
                None => found.push(format!("revision {rev} put a value no client wrote: {:?}", e.kv.value)),
                Some(o) if o.refused => found.push(format!(
                    "revision {rev} holds the value of a put the client was told was refused: {:?}",
                    String::from_utf8_lossy(&e.kv.value)
                )),
                Some(_) => {}
            }
        }
        for (value, n) in put_values {
            if n > 1 {
                found.push(format!("the put of {:?} was applied {n} times", String::from_utf8_lossy(value)));
            }
        }
        for o in &self.etcd_ops {
            let (Some(done), Some(rev)) = (o.completed, o.revision) else { continue };
            if !checkable(rev) {
                continue;
            }
            let key = String::from_utf8_lossy(&o.key);
            match &o.write {
                Some(written) if o.changed => {
                    let there = truth.iter().any(|(r, e)| {
                        *r == rev && e.kv.key == o.key && (!e.deleted).then(|| e.kv.value.clone()) == *written
                    });
                    if !there {
                        found.push(format!(
                            "an acknowledged {} of {key:?} at revision {rev} (completed at {done} µs) is not in the history",
                            if written.is_some() { "put" } else { "delete" }
                        ));
                    }
                }
                Some(_) if !state_known(rev) => {}
                Some(_) => {
                    if value_at(&o.key, rev).is_some() {
                        found.push(format!(
                            "a delete of {key:?} at revision {rev} found nothing, yet the key lives there"
                        ));
                    }
                }
                None if !state_known(rev) => {}
                None => {
                    let want = value_at(&o.key, rev);
                    if o.read.as_ref() != Some(&want) {
                        found.push(format!(
                            "a read of {key:?} at revision {rev} (completed at {done} µs) gave {:?}; the history has {:?}",
                            o.read.as_ref().map(|v| v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned())),
                            want.map(|b| String::from_utf8_lossy(&b).into_owned())
                        ));
                    }
                }
            }
        }
        // Real time: the newest revision of anything completed before each invocation.
        let mut done: Vec<(Time, i64)> =
            self.etcd_ops.iter().filter_map(|o| Some((o.completed?, o.revision?))).collect();
        done.sort();
        let mut newest = Vec::with_capacity(done.len());
        let mut max = i64::MIN;
        for (_, r) in &done {
            max = max.max(*r);
            newest.push(max);
        }
        for o in &self.etcd_ops {
            let Some(rev) = o.revision else { continue };
            let before = done.partition_point(|(t, _)| *t < o.invoked);
            if before == 0 {
                continue;
            }
            let floor = newest[before - 1];
            let changed = o.write.is_some() && o.changed;
            if rev < floor || (changed && rev == floor) {
                found.push(format!(
                    "an operation on {:?} invoked at {} µs answered at revision {rev}, but revision {floor} was \
                     answered before it began",
                    String::from_utf8_lossy(&o.key),
                    o.invoked
                ));
            }
        }
        for (i, w) in self.etcd_watchers.iter().enumerate() {
            let want: Vec<&(i64, baton_core::etcd::KeyEvent)> =
                truth.iter().filter(|(r, _)| *r >= w.start && *r <= w.through && checkable(*r)).collect();
            let seen: Vec<&(i64, baton_core::etcd::KeyEvent)> = w.seen.iter().filter(|(r, _)| checkable(*r)).collect();
            let same = |a: &&(i64, baton_core::etcd::KeyEvent), b: &&(i64, baton_core::etcd::KeyEvent)| {
                same_change(a, b, |r| self.etcd_compactions_asked.contains(&r))
            };
            if seen.len() != want.len() || !seen.iter().zip(&want).all(|(a, b)| same(a, b)) {
                let first = seen.iter().zip(&want).position(|(a, b)| !same(a, b)).unwrap_or(seen.len().min(want.len()));
                found.push(format!(
                    "watcher {i} (from revision {}, through {}) saw {} changes, the history has {}; first difference at \
                     position {first}: saw {:?}, history {:?}",
                    w.start,
                    w.through,
                    seen.len(),
                    want.len(),
                    seen.get(first).map(|(r, e)| (r, &e.kv.key, e.deleted)),
                    want.get(first).map(|(r, e)| (r, &e.kv.key, e.deleted))
                ));
            }
        }
        for detail in found {
            self.violations.push(Violation { property: "etcd", detail, at });
        }
    }

    /// The register `reg-0`, against real time: acknowledged writes get strictly increasing
    /// versions in real-time order (a write that completed before another was invoked has the
    /// lower version), and a read never sees a version older than a write or a read that
    /// completed before it was invoked — unless it reads "not written" and a delete may have
    /// come in between.
    fn check_register(&mut self) {
        let done: Vec<&RegisterOp> = self.register_ops.iter().filter(|o| o.completed.is_some()).collect();
        let deleted_between = |a: &RegisterOp, b: &RegisterOp| {
            // A delete that may have applied after `a` and before `b`'s answer.
            self.register_ops.iter().any(|d| {
                d.delete && d.invoked < b.completed.unwrap_or(Time::MAX) && d.completed.is_none_or(|c| c > a.invoked)
            })
        };
        let mut found = Vec::new();
        for a in done.iter().filter(|o| !o.delete) {
            for b in done.iter().filter(|o| !o.delete) {
                let (Some(ac), Some(av), Some(bv)) = (a.completed, a.version, b.version) else { continue };
                if ac >= b.invoked {
                    continue;
                }
                let broken = if b.write { bv <= av } else { bv < av && !(bv == 0 && deleted_between(a, b)) };
                if broken {
                    found.push((
                        format!(
                            "register {} of version {av} completed at {ac} µs, before {} invoked at {} µs gave version {bv}",
                            if a.write { "write" } else { "read" },
                            if b.write { "a write" } else { "a read" },
                            b.invoked
                        ),
                        b.invoked,
                    ));
                }
            }
        }
        for (detail, at) in found.into_iter().take(10) {
            self.violations.push(Violation { property: "register", detail, at });
        }
    }

    /// A latch wait passes only through the log: the client was told it passed only if an entry
    /// granted its request, and a waiter that queued passes only in the entry that counted the
    /// latch down to zero.
    fn check_latch(&mut self) {
        let mut queued = BTreeSet::new();
        let mut passed = BTreeMap::new();
        for (index, (_, events)) in &self.log {
            let opened = events
                .iter()
                .any(|(_, e)| matches!(e, Event::CounterChanged { name, value: 0 } if name.starts_with("latch")));
            for (_, e) in events {
                match e {
                    Event::Queued { name, session, request_id, .. } if name.starts_with("latch") => {
                        queued.insert((*session, *request_id));
                    }
                    Event::Granted { name, session, request_id, .. } if name.starts_with("latch") => {
                        let key = (*session, *request_id);
                        passed.insert(key, (*index, queued.contains(&key) && !opened));
                    }
                    _ => {}
                }
            }
        }
        let mut found = Vec::new();
        for ((session, request_id), (index, early)) in &passed {
            if *early {
                found.push((format!("latch waiter (session {session}, request {request_id}) passed at index {index} without the count reaching zero"), 0));
            }
        }
        for (session, request_id, at) in &self.latch_passes {
            if !passed.contains_key(&(*session, *request_id)) {
                found.push((
                    format!("session {session} was told its latch wait {request_id} passed, but no entry let it pass"),
                    *at,
                ));
            }
        }
        for (detail, at) in found.into_iter().take(10) {
            self.violations.push(Violation { property: "latch", detail, at });
        }
    }

    /// A request is granted at most once: no (session, request id) has two grants in the log,
    /// and no acquire call (whatever ids its attempts carried) was granted twice.
    fn check_once(&mut self) {
        let mut grants: BTreeMap<(SessionId, u64), Vec<u64>> = BTreeMap::new();
        for (index, (_, events)) in &self.log {
            for (_, e) in events {
                if let Event::Granted { session, request_id, .. } = e {
                    grants.entry((*session, *request_id)).or_default().push(*index);
                }
            }
        }
        let mut found = Vec::new();
        for ((session, request_id), at) in &grants {
            if at.len() > 1 {
                found.push(format!("request {request_id} of session {session} was granted at indexes {at:?}"));
            }
        }
        for (session, ids) in &self.acquire_calls {
            let granted: Vec<u64> = ids.iter().copied().filter(|id| grants.contains_key(&(*session, *id))).collect();
            if granted.len() > 1 {
                found.push(format!("one acquire call of session {session} was granted as requests {granted:?}"));
            }
        }
        for detail in found.into_iter().take(10) {
            self.violations.push(Violation { property: "once", detail, at: 0 });
        }
    }

    /// One name, one kind: no counter or register write applies to a name that is held or
    /// awaited as a lock at that point of the log. (The workload writes a lock's name while it
    /// believes it holds it; by the time the write applies, the hold may have ended — its
    /// session expired — and then the write is allowed: so the log, not the client, decides.)
    fn check_one_kind(&mut self) {
        let mut found = Vec::new();
        // Per name: sessions holding it and (session, request) waiting for it, in log order.
        let mut holders: BTreeMap<&str, BTreeSet<SessionId>> = BTreeMap::new();
        let mut waiters: BTreeMap<&str, BTreeSet<(SessionId, u64)>> = BTreeMap::new();
        for (index, (_, events)) in &self.log {
            for (_, e) in events {
                match e {
                    Event::Queued { name, session, request_id, .. } => {
                        waiters.entry(name).or_default().insert((*session, *request_id));
                    }
                    Event::WaitEnded { name, session, request_id, .. } => {
                        waiters.entry(name).or_default().remove(&(*session, *request_id));
                    }
                    Event::Granted { name, session, request_id, .. } => {
                        waiters.entry(name).or_default().remove(&(*session, *request_id));
                        // Passing a barrier or a latch holds nothing.
                        if name != "lock-4" && !name.starts_with("latch") {
                            holders.entry(name).or_default().insert(*session);
                        }
                    }
                    Event::Released { name, session, .. } => {
                        holders.entry(name).or_default().remove(session);
                    }
                    // (A latch's count-down reports its count as a counter change: only the
                    // workload's lock names are checked.)
                    Event::CounterChanged { name, .. } | Event::RegisterChanged { name, .. }
                        if name.starts_with("lock-") =>
                    {
                        let held = holders.get(name.as_str()).is_some_and(|h| !h.is_empty());
                        let awaited = waiters.get(name.as_str()).is_some_and(|w| !w.is_empty());
                        if held || awaited {
                            found.push(format!(
                                "index {index} changed {name:?}, {} as a lock, as another kind: {e:?}",
                                if held { "held" } else { "awaited" }
                            ));
                        }
                    }
                    _ => {}
                }
            }
        }
        for detail in found.into_iter().take(10) {
            self.violations.push(Violation { property: "one-kind", detail, at: 0 });
        }
    }

    /// A barrier lets its parties pass all together: every log entry that grants the workload's
    /// barrier grants exactly `BARRIER_PARTIES` distinct sessions.
    fn check_barrier(&mut self) {
        let mut found = Vec::new();
        for (index, (_, events)) in &self.log {
            let passed: BTreeSet<SessionId> = events
                .iter()
                .filter_map(|(_, e)| match e {
                    Event::Granted { name, session, .. } if name == "lock-4" => Some(*session),
                    _ => None,
                })
                .collect();
            if !passed.is_empty() && passed.len() != BARRIER_PARTIES as usize {
                found.push(format!(
                    "index {index} let {} sessions pass the barrier of {BARRIER_PARTIES}: {passed:?}",
                    passed.len()
                ));
            }
        }
        for detail in found {
            self.violations.push(Violation { property: "barrier", detail, at: 0 });
        }
    }

    /// Linearizability of the increment-only counter, checked against real time: an operation
    /// that completed before another was invoked must be ordered before it. With +1 adds that
    /// means: acknowledged adds return distinct values; a later add returns more than an earlier
    /// one; a read sees at least every add completed before it and at most every add invoked
    /// before it completed; reads never go backwards.
    fn check_counter(&mut self) {
        let done: Vec<&CounterOp> = self.counter_ops.iter().filter(|o| o.completed.is_some()).collect();
        let mut found = Vec::new();
        let mut seen = BTreeSet::new();
        for a in done.iter().filter(|o| o.add) {
            if !seen.insert(a.value) {
                found.push((format!("two acknowledged adds both returned {:?}", a.value), a.completed.unwrap_or(0)));
            }
        }
        for a in &done {
            for b in &done {
                let (Some(ac), Some(av), Some(bv)) = (a.completed, a.value, b.value) else { continue };
                if ac >= b.invoked {
                    continue;
                }
                // a happened before b.
                let broken = match (a.add, b.add) {
                    (_, true) => bv <= av,
                    (_, false) => bv < av,
                };
                if broken {
                    found.push((
                        format!(
                            "{} returning {av} completed at {ac} µs, before {} invoked at {} µs returned {bv}",
                            if a.add { "add" } else { "read" },
                            if b.add { "an add" } else { "a read" },
                            b.invoked
                        ),
                        b.invoked,
                    ));
                }
            }
        }
        for r in done.iter().filter(|o| !o.add) {
            let (Some(rc), Some(rv)) = (r.completed, r.value) else { continue };
            let possible = self.counter_ops.iter().filter(|o| o.add && o.invoked < rc).count() as i64;
            if rv > possible {
                found.push((format!("a read returned {rv}, but only {possible} adds had been invoked"), rc));
            }
        }
        for (detail, at) in found.into_iter().take(10) {
            self.violations.push(Violation { property: "linearizability", detail, at });
        }
    }

    fn check_fencing(&mut self, now: Time) {
        let mut last: BTreeMap<&str, u64> = BTreeMap::new();
        let mut issued = BTreeSet::new();
        let mut found = Vec::new();
        for (index, (group, events)) in &self.log {
            for (_, e) in events {
                if let Event::Granted { name, token, .. } = e {
                    // Tokens come from one counter per group.
                    if !issued.insert((*group, *token)) {
                        found.push(format!(
                            "token {token} issued twice by group {group} (again at entry {index} for {name:?})"
                        ));
                    }
                    let prev = last.insert(name, *token).unwrap_or(0);
                    if *token <= prev {
                        found.push(format!("{name:?} granted token {token} at index {index} after token {prev}"));
                    }
                }
            }
        }
        for detail in found {
            self.violations.push(Violation { property: "fencing", detail, at: now });
        }
    }

    fn check_received(&mut self) {
        let granted: BTreeSet<(&str, SessionId, u64)> = self
            .log
            .values()
            .flat_map(|(_, events)| events)
            .filter_map(|(_, e)| match e {
                Event::Granted { name, session, token, .. } => Some((name.as_str(), *session, *token)),
                _ => None,
            })
            .collect();
        let mut found = Vec::new();
        for (name, session, token, at) in &self.received {
            if !granted.contains(&(name.as_str(), *session, *token)) {
                found.push((format!("session {session} was told it holds {name:?} with token {token}, which no applied entry granted"), *at));
            }
        }
        for (detail, at) in found {
            self.violations.push(Violation { property: "durability", detail, at });
        }
    }

    /// Mutual exclusion, generalised: at no instant are incompatible holds of one name held by
    /// different sessions (one exclusive holder; readers only with readers; permits within
    /// the semaphore's capacity).
    fn check_exclusion(&mut self) {
        let mut by_name: BTreeMap<&str, Vec<&Hold>> = BTreeMap::new();
        for h in &self.holds {
            if h.until > h.from {
                by_name.entry(&h.name).or_default().push(h);
            }
        }
        let mut found = Vec::new();
        for (name, mut holds) in by_name {
            holds.sort_by_key(|h| (h.from, h.until));
            for (i, b) in holds.iter().enumerate() {
                let active: Vec<&Hold> =
                    holds[..i].iter().copied().filter(|a| a.until > b.from && a.session != b.session).collect();
                if b.conflicts(&active) {
                    let others: Vec<String> = active
                        .iter()
                        .map(|a| {
                            format!(
                                "session {} (client {}, token {}, {:?}) during [{}, {}) µs",
                                a.session, a.client, a.token, a.mode, a.from, a.until
                            )
                        })
                        .collect();
                    found.push((
                        format!(
                            "{name:?} ({:?}) granted to session {} (client {}, token {}, {:?}) at {} µs while held by {}",
                            b.kind,
                            b.session,
                            b.client,
                            b.token,
                            b.mode,
                            b.from,
                            others.join(", ")
                        ),
                        b.from,
                    ));
                }
            }
        }
        for (detail, at) in found {
            self.violations.push(Violation { property: "mutual-exclusion", detail, at });
        }
    }
}
