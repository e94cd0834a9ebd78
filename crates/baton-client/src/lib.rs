//! Rust client for Baton.
//!
//! ```no_run
//! # async fn demo() -> Result<(), baton_client::Error> {
//! use std::time::Duration;
//! let client = baton_client::Client::connect(["127.0.0.1:7700"]).await?;
//! let session = client.session(Duration::from_secs(10)).await?;
//! if let Some(guard) = session.lock("orders", Some(Duration::from_secs(5))).await? {
//!     // Pass guard.token() to every storage write so a stale holder is rejected.
//!     println!("holding with fencing token {}", guard.token());
//!     guard.release().await?;
//! }
//! session.close().await?;
//! # Ok(()) }
//! ```
//!
//! # Design
//! A [`Client`] talks to whichever node leads the data group: it starts with the endpoints it
//! was given, follows the redirects servers send (a typed `ErrorInfo`, see [`retry`]), and
//! moves to the next endpoint when a node fails or does not answer (see `route.rs`). One
//! background task per client keeps every session of that client alive over one keepalive
//! stream (never one heartbeat per lock or per session; see `keepalive.rs`). Sessions, acquires,
//! releases, cancels and counter calls travel on one long-lived `Call` stream per node, many at
//! once (see `pipe.rs`): no HTTP/2 stream per call.
//!
//! # Failures
//! Every attempt has its own timeout ([`ClientOptions::attempt_timeout`]; a waiting acquire:
//! its wait plus that, up to [`ClientOptions::max_attempt`]) which fails that attempt only.
//! Then the call goes on at another node if it certainly was not applied, or if repeating it is
//! harmless (reads; acquires, releases and cancels by their request id). A write that must not
//! apply twice (counter add or CAS, register write, latch set or count-down, proclaim) whose
//! outcome is not known is not repeated: it fails with [`Error::OutcomeUnknown`].
//!
//! # Lease loss
//! The client considers a session lost once it has gone its TTL minus a drift margin (a tenth of
//! the TTL), measured from when it *sent* the last keepalive the leader acknowledged, without a
//! renewal — or at once if the leader says the session is gone. Measuring from the send time
//! means the client always gives up before the leader can expire it (given clock rates within
//! the margin). The deadline is a timer on the client's monotonic clock (see [`core::Lease`]): it
//! fires on time however stuck the renewals are.
//!
//! # One set of rules
//! The rules above — the lease deadline, the renewal schedule and its rotation off a silent
//! node, which failures are retried for which operation, request ids — live in [`core`], which
//! does no I/O and reads no clock. This client and the simulator's client (`baton-sim`) both run
//! it, so the simulator checks the rules that ship. [`LockGuard::is_lease_valid`] and
//! [`LockGuard::lease_lost`] expose this so work under the lock can stop.
//!
//! # Caveats
//! - Requests are retried for up to [`ClientOptions::request_timeout`] while no leader answers.
//! - A watch on a node that stops answering is noticed by the connection's HTTP/2 pings
//!   (about five seconds), not sooner: silence is also what a watch of a quiet name looks like.

pub mod core;
mod keepalive;
mod lease;
mod pipe;
pub mod retry;
mod route;
mod session;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::core::{decide, Decision, Lease, Op, RequestIds};
use baton_proto::v1 as pb;
use lease::{MonoClock, SessionLease};
use retry::AttemptError;
use route::Router;
use tokio::sync::Notify;
use tonic::{Code, Status};

pub use keepalive::{answer_timeout, renew_interval};
pub use session::{Leader, LockGuard, LockKind, LockOptions, Session};

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server refused the request (bad input, a limit, not the holder, ...): nothing
    /// changed. The status's message says why.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(Status),
    /// No node could be reached, or none led the group, in time: the request was not applied.
    #[error("no Baton leader reachable within {0:?} (last error: {1})")]
    Unreachable(Duration, String),
    /// The request was sent, but no answer says what became of it (the connection broke, the
    /// node stopped answering, or leadership changed with it in flight): it may or may not have
    /// taken effect. Read the state to find out.
    #[error("outcome unknown: {0} (the request may or may not have taken effect)")]
    OutcomeUnknown(String),
    /// An endpoint could not be parsed.
    #[error("bad endpoint {0:?}: {1}")]
    BadEndpoint(String, String),
    /// The session's lease is gone: its locks may already belong to someone else.
    #[error("session {0} lost its lease")]
    LeaseLost(u64),
}

impl Error {
    /// The gRPC code, if the server answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

/// The client's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// Tunables of a client.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Identifies this client to the servers (sessions per client are limited).
    pub client_id: String,
    /// How long one request keeps retrying while no leader answers.
    pub request_timeout: Duration,
    /// How long one attempt of a call may go unanswered before the node is treated as gone
    /// (stopped, hung, cut off) and the call moves on.
    pub attempt_timeout: Duration,
    /// The longest one attempt of a waiting acquire may take (its wait plus
    /// `attempt_timeout`, up to this); a longer wait is sent again, with the same request id.
    pub max_attempt: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        ClientOptions {
            client_id: format!("baton-client-{}-{nanos}", std::process::id()),
            request_timeout: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(3),
            max_attempt: Duration::from_secs(30),
        }
    }
}

pub(crate) struct Inner {
    options: ClientOptions,
    /// Where requests go, and the connections.
    router: Router,
    /// The clock the shared rules (leases, renewals) read.
    clock: MonoClock,
    next_request: RequestIds,
    sessions: Mutex<BTreeMap<u64, Arc<SessionLease>>>,
    sessions_changed: Notify,
    /// Session renewals the leader acknowledged (for benchmarks and metrics).
    renewals: AtomicU64,
}

/// A connection to a Baton cluster. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// A client for the cluster reachable at any of `endpoints` (`host:port`).
    pub async fn connect<I, S>(endpoints: I) -> Result<Client>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::connect_with(endpoints, ClientOptions::default()).await
    }

    /// Like [`Client::connect`], with options.
    pub async fn connect_with<I, S>(endpoints: I, options: ClientOptions) -> Result<Client>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let router = Router::new(endpoints.into_iter().map(Into::into).collect())?;
        let inner = Arc::new(Inner {
            options,
            router,
            clock: MonoClock::start(),
            next_request: RequestIds::starting_at(request_id_seed()),
            sessions: Mutex::new(BTreeMap::new()),
            sessions_changed: Notify::new(),
            renewals: AtomicU64::new(0),
        });
        tokio::spawn(keepalive::keepalive_loop(Arc::downgrade(&inner)));
        Ok(Client { inner })
    }

    /// Watches `name` (or every name starting with it, with `prefix`) from sequence number
    /// `start_seq` (0: from now). The stream resumes by itself, on any node, after a broken
    /// connection, without missing or repeating events; it ends with an error if the history it
    /// needs is gone (`OUT_OF_RANGE`: read the state and watch again from the seq named).
    pub fn watch(
        &self,
        name: &str,
        prefix: bool,
        start_seq: u64,
    ) -> tokio::sync::mpsc::Receiver<Result<pb::WatchEvent>> {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let client = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            let mut next = start_seq;
            let mut backoff = Duration::from_millis(20);
            let attempt = client.inner.options.attempt_timeout;
            loop {
                let Ok((addr, mut c)) = client.inner.router.current() else { return };
                let req = pb::WatchRequest { name: name.clone(), prefix, start_seq: next };
                let error = match tokio::time::timeout(attempt, c.watch(req)).await {
                    Err(_) => AttemptError::NoAnswer(format!("no watch stream from {addr} within {attempt:?}")),
                    Ok(Err(s)) => AttemptError::from(s),
                    Ok(Ok(stream)) => {
                        let mut stream = stream.into_inner();
                        loop {
                            match stream.message().await {
                                Ok(Some(e)) => {
                                    next = e.seq + 1;
                                    backoff = Duration::from_millis(20);
                                    if e.r#type == "sync" {
                                        continue; // only tells where the watch starts
                                    }
                                    if tx.send(Ok(e)).await.is_err() {
                                        return;
                                    }
                                }
                                Ok(None) => break AttemptError::NoAnswer("the watch stream ended".into()),
                                Err(s) => break AttemptError::from(s),
                            }
                        }
                    }
                };
                // Resuming from `next` is harmless anywhere: only a refusal (the history is
                // gone, a bad name) ends the watch.
                let leader = match decide(error.class(), Op::Read.repeat()) {
                    Decision::Refused | Decision::OutcomeUnknown => {
                        let _ = tx.send(Err(error.into_error())).await;
                        return;
                    }
                    Decision::Retry { leader, .. } => leader,
                };
                if tx.is_closed() {
                    return;
                }
                client.inner.router.moved_on(&addr, leader.as_deref());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        });
        rx
    }

    /// Observes the election `name`: first its current leader, then every change (a new leader,
    /// a proclaimed value, or no leader: session 0), in order.
    pub async fn observe(&self, name: &str) -> Result<tokio::sync::mpsc::Receiver<Result<Leader>>> {
        // Subscribe first, then read the current leader, so no change can fall in between; a
        // change already reflected in the read shows up again and is skipped by its token.
        let mut events = self.watch(name, false, 0);
        let d = self.describe(name).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let current = d.holders.first().map_or(Leader::default(), |h| Leader {
            session: h.session_id,
            token: h.token,
            value: h.value.clone(),
        });
        tokio::spawn(async move {
            let mut last = current.clone();
            if tx.send(Ok(current)).await.is_err() {
                return;
            }
            while let Some(e) = events.recv().await {
                let e = match e {
                    Ok(e) if e.r#type == "leader" => e,
                    Ok(_) => continue,
                    Err(err) => {
                        let _ = tx.send(Err(err)).await;
                        return;
                    }
                };
                let leader = Leader { session: e.session_id, token: e.token, value: e.value };
                if leader == last || (leader.token != 0 && leader.token < last.token) {
                    continue;
                }
                last = leader.clone();
                if tx.send(Ok(leader)).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }

    /// Gives the countdown latch `name` its count, unless it has one; returns (set, count).
    pub async fn latch_set(&self, name: &str, count: u64) -> Result<(bool, u64)> {
        let req = pb::LatchRequest { name: name.into(), op: Some(pb::latch_request::Op::Set(count)) };
        // Not repeated when its outcome is unknown: count-downs may have taken the latch to
        // zero in between, and a repeat would set it again.
        self.attempts(self.plan(Op::LatchSet), |mut c| {
            let req = req.clone();
            async move { c.latch(req).await.map_err(AttemptError::from) }
        })
        .await
        .map(|r| (r.set, r.count))
    }

    /// Counts the latch `name` down by one; returns the remaining count. Not retried after an
    /// ambiguous failure (it could count twice).
    pub async fn latch_count_down(&self, name: &str) -> Result<u64> {
        let req = pb::LatchRequest { name: name.into(), op: Some(pb::latch_request::Op::CountDown(true)) };
        self.attempts(self.plan(Op::LatchCountDown), |mut c| {
            let req = req.clone();
            async move { c.latch(req).await.map_err(AttemptError::from) }
        })
        .await
        .map(|r| r.count)
    }

    /// Adds `delta` to the counter `name`; returns the new value. Not retried after an
    /// ambiguous failure (it could apply twice): that is [`Error::OutcomeUnknown`].
    pub async fn counter_add(&self, name: &str, delta: i64) -> Result<i64> {
        let req = pb::CounterRequest { name: name.into(), op: Some(pb::counter_request::Op::Add(delta)) };
        self.attempts(self.plan(Op::CounterAdd), |mut c| {
            let req = req.clone();
            async move { c.counter(req).await }
        })
        .await
        .map(|r| r.value)
    }

    /// Reads the counter `name` (linearizable).
    pub async fn counter_get(&self, name: &str) -> Result<i64> {
        let req = pb::CounterRequest { name: name.into(), op: Some(pb::counter_request::Op::Get(true)) };
        self.attempts(self.plan(Op::Read), |mut c| {
            let req = req.clone();
            async move { c.counter(req).await }
        })
        .await
        .map(|r| r.value)
    }

    /// Sets the counter `name` to `new` if it is `expected`; returns (swapped, value now).
    pub async fn counter_cas(&self, name: &str, expected: i64, new: i64) -> Result<(bool, i64)> {
        let op = pb::counter_request::Op::Cas(pb::CounterCas { expected, new });
        let req = pb::CounterRequest { name: name.into(), op: Some(op) };
        self.attempts(self.plan(Op::CounterCas), |mut c| {
            let req = req.clone();
            async move { c.counter(req).await }
        })
        .await
        .map(|r| (r.swapped, r.value))
    }

    /// Reads the register `name`: (value, version); version 0 means never written.
    pub async fn register_get(&self, name: &str) -> Result<(Vec<u8>, u64)> {
        let req =
            pb::RegisterRequest { name: name.into(), op: Some(pb::register_request::Op::Get(true)), if_version: None };
        self.attempts(self.plan(Op::Read), |mut c| {
            let req = req.clone();
            async move { c.register(req).await.map_err(AttemptError::from) }
        })
        .await
        .map(|r| (r.value, r.version))
    }

    /// Writes (`Some`) or deletes (`None`) the register `name`, only if its version is
    /// `if_version` (when given); returns (swapped, version now).
    pub async fn register_set(
        &self,
        name: &str,
        value: Option<Vec<u8>>,
        if_version: Option<u64>,
    ) -> Result<(bool, u64)> {
        let op = match value {
            Some(v) => pb::register_request::Op::Set(v),
            None => pb::register_request::Op::Delete(true),
        };
        let req = pb::RegisterRequest { name: name.into(), op: Some(op), if_version };
        self.attempts(self.plan(Op::RegisterSet), |mut c| {
            let req = req.clone();
            async move { c.register(req).await.map_err(AttemptError::from) }
        })
        .await
        .map(|r| (r.swapped, r.version))
    }

    /// How many session renewals the leader has acknowledged to this client's keepalive stream.
    pub fn renewals(&self) -> u64 {
        self.inner.renewals.load(Ordering::Relaxed)
    }

    fn request_id(&self) -> u64 {
        self.inner.next_request.next()
    }

    /// Opens a session with this TTL (1 s..=300 s) and keeps it alive in the background.
    pub async fn session(&self, ttl: Duration) -> Result<Session> {
        let client_id = self.inner.options.client_id.clone();
        let ttl_ms = ttl.as_millis() as u64;
        // One request id for every attempt: a retry after an ambiguous failure returns the
        // session the first attempt opened instead of leaving it orphaned. The lease is measured
        // from the first attempt's send time, before which the session cannot have opened.
        let request_id = self.request_id();
        let sent_ms = self.inner.clock.now_ms();
        let r = self
            .attempts(self.plan(Op::OpenSession), |mut c| {
                let req = pb::OpenSessionRequest { client_id: client_id.clone(), ttl_ms, request_id };
                async move { c.open_session(req).await }
            })
            .await?;
        let lease = Lease::new(r.ttl_ms, sent_ms);
        let shared = Arc::new(SessionLease::new(r.session_id, self.inner.clock, lease));
        self.inner.sessions.lock().expect("sessions lock").insert(r.session_id, shared.clone());
        self.inner.sessions_changed.notify_one();
        Ok(Session { client: self.clone(), shared })
    }

    /// A lock's holder, token and waiters (linearizable).
    pub async fn describe(&self, name: &str) -> Result<pb::DescribeResponse> {
        let name = name.to_string();
        self.attempts(self.plan(Op::Read), |mut c| {
            let req = pb::DescribeRequest { name: name.clone() };
            async move { c.describe(req).await.map_err(AttemptError::from) }
        })
        .await
    }

    /// The status of the node that answers (any node; no redirect).
    pub async fn status(&self) -> Result<pb::StatusResponse> {
        let (addr, c) = self.inner.router.current()?;
        status_at(&addr, c.grpc.clone(), self.inner.options.attempt_timeout).await
    }

    /// The status as seen by the node at `addr` (which must answer within 3 s).
    pub async fn status_of(addr: &str) -> Result<pb::StatusResponse> {
        status_at(addr, route::channel(addr)?, Duration::from_secs(3)).await
    }
}

/// One status call, bounded by `timeout`: a node that is down or does not answer is
/// [`Error::Unreachable`].
async fn status_at(
    addr: &str,
    mut c: pb::baton_client::BatonClient<tonic::transport::Channel>,
    timeout: Duration,
) -> Result<pb::StatusResponse> {
    let error = match tokio::time::timeout(timeout, c.status(pb::StatusRequest {})).await {
        Ok(Ok(r)) => return Ok(r.into_inner()),
        Ok(Err(s)) => AttemptError::from(s),
        Err(_) => AttemptError::NoAnswer(format!("no answer within {timeout:?}")),
    };
    Err(match error {
        AttemptError::Answered(s) => Error::Status(s),
        other => Error::Unreachable(timeout, format!("{addr}: {}", other.describe())),
    })
}

fn request_id_seed() -> u64 {
    // Request ids only need to be unique per session; a time-based start keeps a restarted
    // process from colliding with the ids of its previous run.
    crate::core::request_id_seed(
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(1),
    )
}
