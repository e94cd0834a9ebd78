//! The coordination-free tier: counters, sets and registers that any replica updates on its own
//! and that converge by merging (conflict-free replicated data types, delta-state flavour).
//!
//! # Design
//! An [`Object`] is a state with a join (a merge that is commutative, associative and
//! idempotent), so replicas that have seen the same updates, in any order and any number of
//! times, hold the same state. [`Object::update`] applies one [`Op`] on one replica and returns
//! the *delta*: the smallest state whose join into any replica has the update's effect. Deltas
//! are what gossip carries; a lost delta is repaired by anti-entropy, which joins whole states
//! (the join makes either way give the same result: the property tests check it).
//!
//! Every update gets a [`Dot`] and every object a [`Context`] of the dots it reflects. The
//! context makes removal without tombstones possible (OR-set, MV register), and it is what the
//! read levels wait on: a session's token is a context; a converged read waits until every live
//! replica's context covers its own.
//!
//! Types ([`Kind`]): the G-counter and PN-counter ([`counter`]), the bounded counter (an escrow
//! whose value never goes below zero, [`counter::Bounded`]), the G-set and OR-set (add-wins),
//! and the LWW register (ordered by hybrid logical clock, then replica id) and MV register
//! (keeps every concurrently written value). A name is a separate object per kind: `counter x`
//! and `set x` never meet, so two replicas can never create one name as two types.
//!
//! Nothing here reads a clock: the LWW register's timestamp comes in with the update.
//!
//! # Caveats
//! - LWW ordering trusts the replicas' clocks within the skew the HLC allows: a replica whose
//!   wall clock runs ahead wins concurrent writes until the others' clocks catch up (see
//!   docs/PRIMITIVES.md). The HLC never lets a replica's write lose to one it had already seen.
//! - Counters hold values in `u64` totals per replica; an update that would overflow one is
//!   refused.
//! - A replica refuses an insert that would take a set past [`MAX_SET_MEMBERS`], but adds made
//!   concurrently on several replicas can take the joined set past it (by at most one limit's
//!   worth per replica): a join is never refused, or replicas would not converge.

pub mod context;
pub mod counter;
pub mod kernel;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

pub use context::{Context, Dot, ReplicaId};
pub use counter::{Bounded, Counter};
pub use kernel::Kernel;

use crate::hlc::Hlc;
use crate::limits::MAX_NAME_BYTES;

/// Longest set element.
pub const MAX_ELEMENT_BYTES: usize = 1024;
/// Longest register value.
pub const MAX_REGISTER_BYTES: usize = 64 * 1024;
/// Most members of one set.
pub const MAX_SET_MEMBERS: usize = 10_000;

/// The type of a coordination-free object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// Grow-only counter.
    GCounter,
    /// Counter with increments and decrements.
    PnCounter,
    /// Counter that never goes below zero (escrow of rights per replica).
    BoundedCounter,
    /// Grow-only set.
    GSet,
    /// Observed-remove set, adds win over concurrent removes.
    OrSet,
    /// Last-writer-wins register.
    LwwRegister,
    /// Multi-value register.
    MvRegister,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 7] = [
        Kind::GCounter,
        Kind::PnCounter,
        Kind::BoundedCounter,
        Kind::GSet,
        Kind::OrSet,
        Kind::LwwRegister,
        Kind::MvRegister,
    ];

    /// The name users see (`gcounter`, `pncounter`, ...).
    pub fn label(self) -> &'static str {
        match self {
            Kind::GCounter => "gcounter",
            Kind::PnCounter => "pncounter",
            Kind::BoundedCounter => "bcounter",
            Kind::GSet => "gset",
            Kind::OrSet => "orset",
            Kind::LwwRegister => "lww",
            Kind::MvRegister => "mvregister",
        }
    }

    /// The kind named `label` (see [`Kind::label`]).
    pub fn from_label(label: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.label() == label)
    }

    /// A new object of this kind.
    pub fn empty(self) -> Object {
        let body = match self {
            Kind::GCounter => Body::GCounter(Counter::default()),
            Kind::PnCounter => Body::PnCounter(Counter::default()),
            Kind::BoundedCounter => Body::Bounded(Bounded::default()),
            Kind::GSet => Body::GSet(BTreeSet::new()),
            Kind::OrSet => Body::OrSet(Kernel::default()),
            Kind::LwwRegister => Body::Lww(Lww::default()),
            Kind::MvRegister => Body::Mv(Kernel::default()),
        };
        Object { ctx: Context::new(), body }
    }
}

/// An object's identity: its kind and its name (a name is one object per kind).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key {
    /// The type.
    pub kind: Kind,
    /// The name (slot and permissions go by it, as for every other name).
    pub name: String,
}

impl Key {
    /// The key of `name` as a `kind`, checked against the name limits.
    pub fn new(kind: Kind, name: impl Into<String>) -> Result<Key, CrdtError> {
        let name = name.into();
        if name.is_empty() {
            return Err(CrdtError::Invalid("name is empty".into()));
        }
        if name.len() > MAX_NAME_BYTES {
            return Err(CrdtError::Invalid(format!("name longer than {MAX_NAME_BYTES} bytes")));
        }
        Ok(Key { kind, name })
    }
}

/// The state of an LWW register: the value of the write with the highest stamp.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Lww {
    /// The winning write's (timestamp, replica), `None` before any write.
    pub stamp: Option<(Hlc, ReplicaId)>,
    /// Its value (`None`: the write cleared the register).
    pub value: Option<Vec<u8>>,
}

/// The type-specific part of an object's state.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Body {
    /// See [`Kind::GCounter`].
    GCounter(Counter),
    /// See [`Kind::PnCounter`].
    PnCounter(Counter),
    /// See [`Kind::BoundedCounter`].
    Bounded(Bounded),
    /// See [`Kind::GSet`].
    GSet(BTreeSet<String>),
    /// See [`Kind::OrSet`]: elements by the dot of the add that put them there.
    OrSet(Kernel<String>),
    /// See [`Kind::LwwRegister`].
    Lww(Lww),
    /// See [`Kind::MvRegister`]: values by the dot of the write.
    Mv(Kernel<Vec<u8>>),
}

/// A state: the type's part and the context of every update it reflects.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Object {
    /// The dots of the updates this state reflects.
    pub ctx: Context,
    /// The type's state.
    pub body: Body,
}

/// An update.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Counters: add `n`.
    Add(u64),
    /// PN and bounded counters: subtract `n`.
    Subtract(u64),
    /// Bounded counter: give `n` of this replica's rights to replica `to`.
    Transfer { to: ReplicaId, n: u64 },
    /// Sets: add an element.
    Insert(String),
    /// OR-set: remove an element (the adds this replica has seen).
    Remove(String),
    /// Registers: write a value (`None` clears an LWW register).
    Write(Option<Vec<u8>>),
}

/// What a read returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Value {
    /// A counter's value.
    Counter(i128),
    /// A bounded counter's value and what this replica may still subtract.
    Bounded { value: i128, rights: i128 },
    /// A set's members, in order.
    Members(Vec<String>),
    /// An LWW register's value and the stamp of the write that set it.
    Register { value: Option<Vec<u8>>, stamp: Option<(Hlc, ReplicaId)> },
    /// A MV register's values, one per concurrent write, ordered by dot.
    Values(Vec<Vec<u8>>),
}

/// Why an update or a merge was refused. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum CrdtError {
    /// The update makes no sense for the type, or breaks a limit.
    #[error("{0}")]
    Invalid(String),
    /// The bounded counter's rights on this replica do not cover the subtraction.
    #[error("bounded counter {name:?}: this node holds rights to subtract {have}, not {wanted}")]
    NotEnoughRights { name: String, have: i128, wanted: u64 },
    /// A merge of states of two different kinds (a corrupt or hostile message).
    #[error("cannot merge a {theirs} state into a {ours}")]
    KindMismatch { ours: &'static str, theirs: &'static str },
}

impl Body {
    /// The kind of this state.
    pub fn kind(&self) -> Kind {
        match self {
            Body::GCounter(_) => Kind::GCounter,
            Body::PnCounter(_) => Kind::PnCounter,
            Body::Bounded(_) => Kind::BoundedCounter,
            Body::GSet(_) => Kind::GSet,
            Body::OrSet(_) => Kind::OrSet,
            Body::Lww(_) => Kind::LwwRegister,
            Body::Mv(_) => Kind::MvRegister,
        }
    }
}

impl Object {
    /// The kind of this object.
    pub fn kind(&self) -> Kind {
        self.body.kind()
    }

    /// The value as `replica` reads it.
    pub fn value(&self, replica: ReplicaId) -> Value {
        match &self.body {
            Body::GCounter(c) | Body::PnCounter(c) => Value::Counter(c.value()),
            Body::Bounded(b) => Value::Bounded { value: b.value(), rights: b.rights(replica) },
            Body::GSet(s) => Value::Members(s.iter().cloned().collect()),
            Body::OrSet(k) => {
                let members: BTreeSet<&String> = k.entries().values().collect();
                Value::Members(members.into_iter().cloned().collect())
            }
            Body::Lww(l) => Value::Register { value: l.value.clone(), stamp: l.stamp },
            Body::Mv(k) => Value::Values(k.entries().values().cloned().collect()),
        }
    }

    /// Applies `op` made on `replica` at HLC `now` (which must be above every stamp the replica
    /// has issued or seen: see [`crate::Hlc`]); returns the delta to gossip. `name` is for
    /// error messages. On an error nothing changed.
    pub fn update(&mut self, name: &str, replica: ReplicaId, op: Op, now: Hlc) -> Result<Object, CrdtError> {
        let dot = self.ctx.next(replica);
        let label = self.kind().label();
        let invalid = |what: &str| Err(CrdtError::Invalid(format!("{what} on the {label} {name:?}")));
        let overflow = || CrdtError::Invalid(format!("counter {name:?} would overflow"));
        let mut ctx = Context::new();
        let body = match (&mut self.body, op) {
            (Body::GCounter(c), Op::Add(n)) => Body::GCounter(c.clone().add(replica, n).ok_or_else(overflow)?),
            (Body::PnCounter(c), Op::Add(n)) => Body::PnCounter(c.clone().add(replica, n).ok_or_else(overflow)?),
            (Body::PnCounter(c), Op::Subtract(n)) => {
                Body::PnCounter(c.clone().subtract(replica, n).ok_or_else(overflow)?)
            }
            (Body::Bounded(b), op @ (Op::Add(_) | Op::Subtract(_) | Op::Transfer { .. })) => {
                let mut next = b.clone();
                let done = match op {
                    Op::Add(n) => next.add(replica, n).ok_or_else(overflow),
                    Op::Subtract(n) => next.subtract(replica, n).map_err(|have| CrdtError::NotEnoughRights {
                        name: name.into(),
                        have,
                        wanted: n,
                    }),
                    Op::Transfer { to, .. } if to == replica => return invalid("a transfer to itself"),
                    Op::Transfer { to, n } => next
                        .transfer(replica, to, n)
                        .map_err(|have| CrdtError::NotEnoughRights { name: name.into(), have, wanted: n }),
                    _ => unreachable!("matched above"),
                };
                done?;
                // The whole state (see counter.rs): its context is the object's, plus the dot.
                ctx = self.ctx.clone();
                Body::Bounded(next)
            }
            (Body::GSet(s), Op::Insert(e)) => {
                check_element(&e)?;
                if !s.contains(&e) && s.len() >= MAX_SET_MEMBERS {
                    return Err(too_many(name));
                }
                ctx.insert(dot);
                Body::GSet(BTreeSet::from([e]))
            }
            (Body::OrSet(k), Op::Insert(e)) => {
                check_element(&e)?;
                let old = k.dots_where(|v| *v == e);
                // Entries are at least the distinct members: count those only near the limit.
                if old.is_empty() && k.len() >= MAX_SET_MEMBERS && distinct(k) >= MAX_SET_MEMBERS {
                    return Err(too_many(name));
                }
                old.into_iter().for_each(|d| ctx.insert(d));
                ctx.insert(dot);
                let mut delta = Kernel::default();
                delta.insert(dot, e);
                Body::OrSet(delta)
            }
            (Body::OrSet(k), Op::Remove(e)) => {
                check_element(&e)?;
                // The remove gets a dot too, so that a session's token covers it.
                k.dots_where(|v| *v == e).into_iter().for_each(|d| ctx.insert(d));
                ctx.insert(dot);
                Body::OrSet(Kernel::default())
            }
            (Body::Lww(_), Op::Write(v)) => {
                check_register(&v)?;
                ctx.insert_upto(replica, dot.seq);
                Body::Lww(Lww { stamp: Some((now, replica)), value: v })
            }
            (Body::Mv(k), Op::Write(Some(v))) => {
                check_register(&Some(v.clone()))?;
                k.entries().keys().for_each(|d| ctx.insert(*d));
                ctx.insert(dot);
                let mut delta = Kernel::default();
                delta.insert(dot, v);
                Body::Mv(delta)
            }
            (Body::Mv(_), Op::Write(None)) => return invalid("clearing"),
            (Body::GCounter(_), Op::Subtract(_)) => return invalid("a subtraction"),
            (_, Op::Add(_) | Op::Subtract(_)) => return invalid("a counter update"),
            (_, Op::Transfer { .. }) => return invalid("a transfer of rights"),
            (_, Op::Insert(_)) => return invalid("an insert"),
            (_, Op::Remove(_)) => return invalid("a remove"),
            (_, Op::Write(_)) => return invalid("a write"),
        };
        // Counters' totals carry every earlier update of the replica: the delta covers them all.
        if matches!(body, Body::GCounter(_) | Body::PnCounter(_)) {
            ctx.insert_upto(replica, dot.seq);
        }
        ctx.insert(dot);
        let delta = Object { ctx, body };
        self.join(&delta)?;
        Ok(delta)
    }

    /// Joins another state of the same object (a delta or a whole state).
    pub fn join(&mut self, other: &Object) -> Result<(), CrdtError> {
        match (&mut self.body, &other.body) {
            (Body::GCounter(a), Body::GCounter(b)) | (Body::PnCounter(a), Body::PnCounter(b)) => a.join(b),
            (Body::Bounded(a), Body::Bounded(b)) => a.join(b),
            (Body::GSet(a), Body::GSet(b)) => a.extend(b.iter().cloned()),
            (Body::OrSet(a), Body::OrSet(b)) => a.join(&self.ctx, b, &other.ctx),
            (Body::Mv(a), Body::Mv(b)) => a.join(&self.ctx, b, &other.ctx),
            (Body::Lww(a), Body::Lww(b)) => {
                if b.stamp > a.stamp {
                    *a = b.clone();
                }
            }
            (a, b) => {
                return Err(CrdtError::KindMismatch { ours: a.kind().label(), theirs: b.kind().label() });
            }
        }
        self.ctx.join(&other.ctx);
        Ok(())
    }

    /// Checks a state that came from outside (a peer) before it is joined: its context is
    /// canonical, every entry of a dot kernel has its dot in the context, and no bounded-counter
    /// transfer goes from a replica to itself.
    pub fn check_foreign(&self) -> Result<(), CrdtError> {
        let bad = |what: &str| Err(CrdtError::Invalid(format!("malformed CRDT state: {what}")));
        if !self.ctx.is_canonical() {
            return bad("its context is not in canonical form");
        }
        let in_ctx = |dots: Vec<Dot>| dots.iter().all(|d| self.ctx.contains(*d));
        match &self.body {
            Body::OrSet(k) if !in_ctx(k.dots_where(|_| true)) => bad("an element's dot is not in its context"),
            Body::Mv(k) if !in_ctx(k.dots_where(|_| true)) => bad("a value's dot is not in its context"),
            Body::Bounded(b) if b.has_self_transfer() => bad("a transfer of rights to the giver itself"),
            _ => Ok(()),
        }
    }

    /// The latest LWW stamp in the state, if any (a replica's HLC must stay above every stamp it
    /// has seen).
    pub fn max_stamp(&self) -> Option<Hlc> {
        match &self.body {
            Body::Lww(l) => l.stamp.map(|(h, _)| h),
            _ => None,
        }
    }

    /// How many members, values or entries the state holds (for limits and metrics).
    pub fn size(&self) -> usize {
        match &self.body {
            Body::GCounter(_) | Body::PnCounter(_) | Body::Bounded(_) | Body::Lww(_) => 1,
            Body::GSet(s) => s.len(),
            Body::OrSet(k) => k.len(),
            Body::Mv(k) => k.len(),
        }
    }
}

/// Decodes bincode (fixed-width integers, as `bincode::serialize` writes) refusing trailing
/// bytes and any length prefix longer than the input: what every CRDT decoder of outside bytes
/// (gossip, stored states, session tokens) uses.
pub fn decode_exact<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .reject_trailing_bytes()
        .with_limit(bytes.len() as u64)
        .deserialize(bytes)
        .map_err(|e| e.to_string())
}

fn distinct(k: &Kernel<String>) -> usize {
    k.entries().values().collect::<BTreeSet<_>>().len()
}

fn too_many(name: &str) -> CrdtError {
    CrdtError::Invalid(format!("set {name:?} has {MAX_SET_MEMBERS} members, the most a set may have"))
}

fn check_element(e: &str) -> Result<(), CrdtError> {
    if e.is_empty() {
        return Err(CrdtError::Invalid("set element is empty".into()));
    }
    if e.len() > MAX_ELEMENT_BYTES {
        return Err(CrdtError::Invalid(format!("set element longer than {MAX_ELEMENT_BYTES} bytes")));
    }
    Ok(())
}

fn check_register(v: &Option<Vec<u8>>) -> Result<(), CrdtError> {
    match v {
        Some(v) if v.len() > MAX_REGISTER_BYTES => {
            Err(CrdtError::Invalid(format!("register value longer than {MAX_REGISTER_BYTES} bytes")))
        }
        _ => Ok(()),
    }
}
