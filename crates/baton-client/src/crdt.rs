//! The coordination-free tier (docs/PRIMITIVES.md, "Linearizable or coordination-free?"):
//! counters, sets and registers that any node updates without a consensus round.
//!
//! A [`Crdt`] is one client session of the tier: it keeps, per object, a token of every update
//! it made or read, and sends it with [`ReadLevel::Session`] reads, so that whichever node it
//! asks (after a failover, say) it reads its own writes and never reads backwards. Requests go
//! to the client's current node; a node that does not answer is left for the next one.
//!
//! Retries: a set's insert or remove is repeated after an ambiguous failure (a repeat has no
//! further effect); a counter's add or a register's write is not (it would count twice, or
//! write later over a newer value): that is [`crate::Error::OutcomeUnknown`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_core::crdt::{Context, Kind};
use baton_proto::v1 as pb;

use crate::core::Op;
use crate::routing::Target;
use crate::{Client, Result};

pub use baton_core::crdt::Kind as CrdtKind;

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadLevel {
    /// The answering node's state (may miss updates made elsewhere).
    Local,
    /// At least every update this [`Crdt`] made or read on the object.
    Session,
    /// Every live node holds every update the answering node had.
    Converged,
}

/// What a request returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CrdtValue {
    /// Counters: the value.
    pub value: i64,
    /// Bounded counters: what the answering node may still subtract on its own.
    pub rights: i64,
    /// Sets: the members.
    pub members: Vec<String>,
    /// Registers: the value (LWW) or the concurrent values (MV).
    pub values: Vec<Vec<u8>>,
    /// The node that answered.
    pub node: u64,
}

/// A session of the coordination-free tier (see the module docs). Cheap to clone; clones share
/// the tokens.
#[derive(Clone)]
pub struct Crdt {
    client: Client,
    tokens: Arc<Mutex<HashMap<(Kind, String), Context>>>,
    timeout: Duration,
}

fn pb_kind(kind: Kind) -> pb::CrdtKind {
    match kind {
        Kind::GCounter => pb::CrdtKind::Gcounter,
        Kind::PnCounter => pb::CrdtKind::Pncounter,
        Kind::BoundedCounter => pb::CrdtKind::Bcounter,
        Kind::GSet => pb::CrdtKind::Gset,
        Kind::OrSet => pb::CrdtKind::Orset,
        Kind::LwwRegister => pb::CrdtKind::LwwRegister,
        Kind::MvRegister => pb::CrdtKind::MvRegister,
    }
}

impl Client {
    /// A session of the coordination-free tier.
    pub fn crdt(&self) -> Crdt {
        Crdt { client: self.clone(), tokens: Arc::default(), timeout: Duration::from_secs(5) }
    }
}

impl Crdt {
    /// The longest a session or converged read, or a bounded subtraction waiting for rights,
    /// may wait on the server (default 5 s, at most 60 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Crdt {
        self.timeout = timeout;
        self
    }

    /// The same session (its tokens shared) through another client: another set of nodes, say.
    pub fn through(&self, client: &Client) -> Crdt {
        Crdt { client: client.clone(), tokens: self.tokens.clone(), timeout: self.timeout }
    }

    async fn call(&self, kind: Kind, name: &str, op: pb::crdt_request::Op, plan: Op) -> Result<CrdtValue> {
        let key = (kind, name.to_string());
        // Session reads wait for the token; updates apply after it (a session's updates follow
        // everything it has seen, its own earlier updates included). Local and converged reads
        // do not need it.
        let token = match op {
            pb::crdt_request::Op::Read(l) if l != pb::CrdtReadLevel::Session as i32 => Vec::new(),
            _ => self.tokens.lock().expect("tokens lock").get(&key).map(Context::to_bytes).unwrap_or_default(),
        };
        let req = pb::CrdtRequest {
            kind: pb_kind(kind) as i32,
            name: name.into(),
            op: Some(op),
            token,
            timeout_ms: self.timeout.as_millis() as u64,
        };
        let mut plan = self.client.plan(plan);
        plan.extra = self.timeout;
        plan.attempt += self.timeout;
        let r = self
            .client
            .attempts(plan, Target::Any, |mut c, _| {
                let req = req.clone();
                async move { c.crdt(req).await }
            })
            .await?;
        if let Some(ctx) = Context::from_bytes(&r.token) {
            self.tokens.lock().expect("tokens lock").entry(key).or_default().join(&ctx);
        }
        Ok(CrdtValue { value: r.value, rights: r.rights, members: r.members, values: r.values, node: r.node })
    }

    /// Adds `n` to a counter (G, PN or bounded); returns the value on the answering node.
    pub async fn add(&self, kind: Kind, name: &str, n: u64) -> Result<CrdtValue> {
        self.call(kind, name, pb::crdt_request::Op::Add(n), Op::CrdtOnce).await
    }

    /// Subtracts `n` from a PN or bounded counter (bounded: from the answering node's rights,
    /// waiting for rights from other nodes if it has too few).
    pub async fn subtract(&self, kind: Kind, name: &str, n: u64) -> Result<CrdtValue> {
        self.call(kind, name, pb::crdt_request::Op::Subtract(n), Op::CrdtOnce).await
    }

    /// Inserts an element into a G-set or OR-set.
    pub async fn insert(&self, kind: Kind, name: &str, element: &str) -> Result<CrdtValue> {
        self.call(kind, name, pb::crdt_request::Op::Insert(element.into()), Op::CrdtSame).await
    }

    /// Removes an element from an OR-set (the adds the answering node has seen).
    pub async fn remove(&self, name: &str, element: &str) -> Result<CrdtValue> {
        self.call(Kind::OrSet, name, pb::crdt_request::Op::Remove(element.into()), Op::CrdtSame).await
    }

    /// Writes a register (LWW or MV).
    pub async fn write(&self, kind: Kind, name: &str, value: &[u8]) -> Result<CrdtValue> {
        self.call(kind, name, pb::crdt_request::Op::Write(value.to_vec()), Op::CrdtOnce).await
    }

    /// Clears an LWW register.
    pub async fn clear(&self, name: &str) -> Result<CrdtValue> {
        self.call(Kind::LwwRegister, name, pb::crdt_request::Op::Clear(true), Op::CrdtOnce).await
    }

    /// Reads an object at `level`.
    pub async fn read(&self, kind: Kind, name: &str, level: ReadLevel) -> Result<CrdtValue> {
        let level = match level {
            ReadLevel::Local => pb::CrdtReadLevel::Local,
            ReadLevel::Session => pb::CrdtReadLevel::Session,
            ReadLevel::Converged => pb::CrdtReadLevel::Converged,
        };
        self.call(kind, name, pb::crdt_request::Op::Read(level as i32), Op::Read).await
    }
}
