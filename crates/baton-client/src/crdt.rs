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
//!
//! **Combining**: adds (and subtractions) to one G- or PN-counter that a client's tasks make
//! while one is in flight are summed into the next request, and each is answered when that
//! request is (with the same value, and the same error if it fails). Increments commute, so
//! this changes no outcome, and a hot counter costs the client and the node one request per
//! round trip instead of one per add. The linearizable counter cannot do this: every add there
//! is its own log entry with its own resulting value.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

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

/// Adds waiting to be combined, per (kind, name, subtract), shared by a client's sessions.
#[derive(Default)]
pub(crate) struct Combiner {
    batches: Mutex<HashMap<(Kind, String, bool), Batch>>,
}

type Answered = std::result::Result<(CrdtValue, Context), crate::Error>;

#[derive(Default)]
struct Batch {
    /// The sum of the adds waiting.
    n: u64,
    /// Every waiting session's token (the combined update follows all of them).
    after: Context,
    waiters: Vec<oneshot::Sender<Answered>>,
    /// The longest wait any of them allows (a batch waits for all their tokens).
    timeout: Duration,
    /// A task is sending this counter's batches.
    running: bool,
}

/// Removes a counter's batch if its task ends without emptying it (a panic): the waiters'
/// channels close and they fail as outcome unknown, rather than wait for a task that is gone.
struct BatchTask<'a> {
    combiner: &'a Combiner,
    key: (Kind, String, bool),
    /// Ended normally (the batch was removed under the lock, and a new one may exist since).
    done: bool,
}

impl Drop for BatchTask<'_> {
    fn drop(&mut self) {
        if !self.done {
            if let Ok(mut batches) = self.combiner.batches.lock() {
                batches.remove(&self.key);
            }
        }
    }
}

/// The same error again, for each add of a combined request.
fn again(e: &crate::Error) -> crate::Error {
    use crate::Error as E;
    match e {
        E::Status(s) => E::Status(s.clone()),
        E::Unreachable(d, m) => E::Unreachable(*d, m.clone()),
        E::OutcomeUnknown(m) => E::OutcomeUnknown(m.clone()),
        E::BadEndpoint(a, m) => E::BadEndpoint(a.clone(), m.clone()),
        E::Tls(m) => E::Tls(m.clone()),
        E::LeaseLost(id) => E::LeaseLost(*id),
    }
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
            pb::crdt_request::Op::Read(l) if l != pb::CrdtReadLevel::Session as i32 => Context::new(),
            _ => self.tokens.lock().expect("tokens lock").get(&key).cloned().unwrap_or_default(),
        };
        let (value, ctx) = self.send(kind, name, op, plan, &token).await?;
        self.tokens.lock().expect("tokens lock").entry(key).or_default().join(&ctx);
        Ok(value)
    }

    /// One request, with `token`; the value and the token of the answer.
    async fn send(
        &self,
        kind: Kind,
        name: &str,
        op: pb::crdt_request::Op,
        plan: Op,
        token: &Context,
    ) -> Result<(CrdtValue, Context)> {
        let token = if token.is_empty() { Vec::new() } else { token.to_bytes() };
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
        let ctx = Context::from_bytes(&r.token).unwrap_or_default();
        Ok((CrdtValue { value: r.value, rights: r.rights, members: r.members, values: r.values, node: r.node }, ctx))
    }

    /// An add or subtraction of `n` on a G- or PN-counter, combined with this client's others
    /// on the same counter (see the module docs).
    async fn combined(&self, kind: Kind, name: &str, n: u64, subtract: bool) -> Result<CrdtValue> {
        let key = (kind, name.to_string(), subtract);
        let token =
            self.tokens.lock().expect("tokens lock").get(&(kind, name.to_string())).cloned().unwrap_or_default();
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut batches = self.client.inner.combiner.batches.lock().expect("combiner lock");
            let b = batches.entry(key.clone()).or_default();
            match b.n.checked_add(n) {
                // Too much to sum: sent alone.
                None => None,
                Some(sum) => {
                    b.n = sum;
                    b.after.join(&token);
                    b.timeout = b.timeout.max(self.timeout);
                    b.waiters.push(tx);
                    Some(!std::mem::replace(&mut b.running, true))
                }
            }
        };
        let op = |n| if subtract { pb::crdt_request::Op::Subtract(n) } else { pb::crdt_request::Op::Add(n) };
        match start {
            None => return self.call(kind, name, op(n), Op::CrdtOnce).await,
            Some(true) => {
                let tier = self.clone();
                tokio::spawn(async move { tier.send_batches(key).await });
            }
            Some(false) => {}
        }
        let (value, ctx) = rx.await.map_err(|_| crate::Error::OutcomeUnknown("the client stopped".into()))??;
        self.tokens.lock().expect("tokens lock").entry((kind, name.to_string())).or_default().join(&ctx);
        Ok(value)
    }

    /// Sends the batches of one counter until none is waiting.
    async fn send_batches(&self, key: (Kind, String, bool)) {
        let (kind, name, subtract) = key.clone();
        let mut task = BatchTask { combiner: &self.client.inner.combiner, key: key.clone(), done: false };
        loop {
            let batch = {
                let mut batches = self.client.inner.combiner.batches.lock().expect("combiner lock");
                let Some(b) = batches.get_mut(&key) else {
                    task.done = true;
                    return;
                };
                if b.waiters.is_empty() {
                    batches.remove(&key);
                    task.done = true;
                    return;
                }
                // `running` stays set: adds from now on wait for the next batch.
                let timeout = std::mem::take(&mut b.timeout);
                (std::mem::take(&mut b.n), std::mem::take(&mut b.after), std::mem::take(&mut b.waiters), timeout)
            };
            let (n, after, waiters, timeout) = batch;
            let op = if subtract { pb::crdt_request::Op::Subtract(n) } else { pb::crdt_request::Op::Add(n) };
            let tier = Crdt { timeout, ..self.clone() };
            let result = tier.send(kind, &name, op, Op::CrdtOnce, &after).await;
            for w in waiters {
                let _ = w.send(match &result {
                    Ok(v) => Ok(v.clone()),
                    Err(e) => Err(again(e)),
                });
            }
        }
    }

    /// Adds `n` to a counter (G, PN or bounded); returns the value on the answering node
    /// (G and PN: combined with this client's concurrent adds, see the module docs).
    pub async fn add(&self, kind: Kind, name: &str, n: u64) -> Result<CrdtValue> {
        match kind {
            Kind::GCounter | Kind::PnCounter if n > 0 => self.combined(kind, name, n, false).await,
            _ => self.call(kind, name, pb::crdt_request::Op::Add(n), Op::CrdtOnce).await,
        }
    }

    /// Subtracts `n` from a PN or bounded counter (bounded: from the answering node's rights,
    /// waiting for rights from other nodes if it has too few; PN: combined as adds are).
    pub async fn subtract(&self, kind: Kind, name: &str, n: u64) -> Result<CrdtValue> {
        match kind {
            Kind::PnCounter if n > 0 => self.combined(kind, name, n, true).await,
            _ => self.call(kind, name, pb::crdt_request::Op::Subtract(n), Op::CrdtOnce).await,
        }
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

impl Crdt {
    /// Watches the objects named `name` (every kind), or every object whose name starts with it
    /// (`prefix`), on the client's current node: for a name, each existing object's value first
    /// (`type` `crdt_value`), then every change there (`crdt_changed`, made on that node or merged
    /// from another), each with the whole value (`crdt_kind`, `counter_value`, `members`,
    /// `values`). After a break the watch opens again on the next node (a name watch gets the
    /// values again); it ends with an error only if refused (permissions) or if it fell behind
    /// (`OUT_OF_RANGE`: read the values, watch again).
    pub fn watch(&self, name: &str, prefix: bool) -> tokio::sync::mpsc::Receiver<Result<pb::WatchEvent>> {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let client = self.client.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(20);
            let attempt = client.inner.options.attempt_timeout;
            loop {
                let Ok((addr, mut c)) = client.inner.router.current(None) else { return };
                let req = pb::WatchRequest { name: name.clone(), prefix, crdt: true, ..Default::default() };
                let error = match tokio::time::timeout(attempt, c.watch(req)).await {
                    Err(_) => {
                        crate::retry::AttemptError::NoAnswer(format!("no watch stream from {addr} within {attempt:?}"))
                    }
                    Ok(Err(s)) => crate::retry::AttemptError::from(s),
                    Ok(Ok(stream)) => {
                        let mut stream = stream.into_inner();
                        loop {
                            match stream.message().await {
                                Ok(Some(e)) => {
                                    backoff = Duration::from_millis(20);
                                    if tx.send(Ok(e)).await.is_err() {
                                        return;
                                    }
                                }
                                Ok(None) => {
                                    break crate::retry::AttemptError::NoAnswer("the watch stream ended".into())
                                }
                                Err(s) => break crate::retry::AttemptError::from(s),
                            }
                        }
                    }
                };
                let leader = match crate::core::decide(error.class(), Op::Read.repeat()) {
                    crate::core::Decision::Refused | crate::core::Decision::OutcomeUnknown => {
                        let _ = tx.send(Err(error.into_error())).await;
                        return;
                    }
                    crate::core::Decision::Retry { leader, .. } => leader,
                };
                if tx.is_closed() {
                    return;
                }
                client.inner.router.moved_on(None, &addr, leader.as_deref());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        });
        rx
    }
}
