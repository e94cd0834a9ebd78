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
//! was given and follows the `baton-leader` redirects servers attach to `UNAVAILABLE`. One
//! background task per client keeps every session of that client alive over one keepalive
//! stream (never one heartbeat per lock or per session). Sessions, acquires, releases, cancels
//! and counter calls travel on one long-lived `Call` stream per node, many at once (see
//! `pipe.rs`): no HTTP/2 stream per call.
//!
//! # Lease loss
//! The client considers a session lost once it has gone its TTL minus a drift margin (a tenth of
//! the TTL), measured from when it *sent* the last keepalive the leader acknowledged, without a
//! renewal — or at once if the leader says the session is gone. Measuring from the send time
//! means the client always gives up before the leader can expire it (given clock rates within
//! the margin). [`LockGuard::is_lease_valid`] and [`LockGuard::lease_lost`] expose this so work
//! under the lock can stop.
//!
//! # Caveats
//! - Requests are retried (with the same request id, so acquires are idempotent) for up to
//!   [`ClientOptions::request_timeout`] while no leader answers.

mod pipe;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_proto::v1 as pb;
use baton_proto::v1::baton_client::BatonClient;
use pipe::{Conn, Pipe};
use tokio::sync::{watch, Notify};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Metadata key the servers use for leader redirects.
const LEADER_METADATA: &str = "baton-leader";

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error status.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(Status),
    /// No endpoint answered in time.
    #[error("no Baton leader reachable within {0:?} (last error: {1})")]
    Unreachable(Duration, String),
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
}

impl Default for ClientOptions {
    fn default() -> Self {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        ClientOptions {
            client_id: format!("baton-client-{}-{nanos}", std::process::id()),
            request_timeout: Duration::from_secs(30),
        }
    }
}

struct Inner {
    endpoints: Vec<String>,
    options: ClientOptions,
    /// The endpoint currently believed to be the leader, and channels by address.
    route: Mutex<Route>,
    next_request: AtomicU64,
    sessions: Mutex<BTreeMap<u64, Arc<SessionShared>>>,
    sessions_changed: Notify,
    /// Session renewals the leader acknowledged (for benchmarks and metrics).
    renewals: AtomicU64,
}

struct Route {
    current: String,
    next_index: usize,
    channels: HashMap<String, BatonClient<Channel>>,
    /// The fast-path stream to each node (see [`pipe`]).
    pipes: HashMap<String, Arc<Pipe>>,
}

/// A connection to a Baton cluster. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

fn channel(addr: &str) -> Result<BatonClient<Channel>> {
    let uri = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    let endpoint = tonic::transport::Endpoint::from_shared(uri)
        .map_err(|e| Error::BadEndpoint(addr.to_string(), e.to_string()))?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true);
    Ok(BatonClient::new(endpoint.connect_lazy()))
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
        let endpoints: Vec<String> = endpoints.into_iter().map(Into::into).collect();
        let first =
            endpoints.first().cloned().ok_or_else(|| Error::BadEndpoint(String::new(), "no endpoints given".into()))?;
        for e in &endpoints {
            channel(e)?;
        }
        let inner = Arc::new(Inner {
            endpoints,
            options,
            route: Mutex::new(Route { current: first, next_index: 1, channels: HashMap::new(), pipes: HashMap::new() }),
            next_request: AtomicU64::new(request_id_seed()),
            sessions: Mutex::new(BTreeMap::new()),
            sessions_changed: Notify::new(),
            renewals: AtomicU64::new(0),
        });
        tokio::spawn(keepalive_loop(Arc::downgrade(&inner)));
        Ok(Client { inner })
    }

    fn current(&self) -> Result<(String, Conn)> {
        let mut route = self.inner.route.lock().expect("route lock");
        let addr = route.current.clone();
        let grpc = match route.channels.get(&addr) {
            Some(c) => c.clone(),
            None => {
                let c = channel(&addr)?;
                route.channels.insert(addr.clone(), c.clone());
                c
            }
        };
        let pipe = match route.pipes.get(&addr) {
            Some(p) if p.is_open() => p.clone(),
            _ => {
                let p = Arc::new(Pipe::open(&addr, grpc.clone()));
                route.pipes.insert(addr.clone(), p.clone());
                p
            }
        };
        Ok((addr, Conn { grpc, pipe }))
    }

    /// Points the client at the leader named in a redirect, or at the next endpoint.
    fn reroute(&self, failed: &str, status: &Status) -> bool {
        let mut route = self.inner.route.lock().expect("route lock");
        if route.current != failed {
            return true; // someone else already moved on
        }
        if let Some(leader) = status.metadata().get(LEADER_METADATA).and_then(|v| v.to_str().ok()) {
            if leader != failed {
                route.current = leader.to_string();
                return true;
            }
        }
        let i = route.next_index % self.inner.endpoints.len();
        route.next_index = i + 1;
        route.current = self.inner.endpoints[i].clone();
        false
    }

    /// Runs `call` against the leader, following redirects and retrying while none answers.
    async fn rpc<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: FnMut(Conn) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        self.rpc_within(Duration::from_secs(5), Duration::ZERO, call).await
    }

    /// Like [`Client::rpc`] for writes that must not apply twice (counter adds, register
    /// writes): retried only on answers that prove the request was not applied (a redirect, or no
    /// leader); any ambiguous failure is returned to the caller.
    async fn rpc_once<T, F, Fut>(&self, mut call: F) -> Result<T>
    where
        F: FnMut(Conn) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.inner.options.request_timeout;
        loop {
            let (addr, client) = self.current()?;
            let status = match call(client).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) => s,
            };
            let redirect = s_is_redirect(&status);
            if !redirect || Instant::now() >= deadline {
                if status.code() == Code::Unavailable {
                    // Ambiguous for this call, but the next one should not ask the same node.
                    self.reroute(&addr, &status);
                }
                return Err(Error::Status(status));
            }
            if !self.reroute(&addr, &status) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
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
            loop {
                let Ok((addr, mut c)) = client.current() else { return };
                let req = pb::WatchRequest { name: name.clone(), prefix, start_seq: next };
                let status = match c.watch(req).await {
                    Ok(stream) => {
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
                                Ok(None) => break Status::unavailable("watch stream ended"),
                                Err(s) => break s,
                            }
                        }
                    }
                    Err(s) => s,
                };
                if !retryable(&status) && status.code() != Code::Unavailable {
                    let _ = tx.send(Err(Error::Status(status))).await;
                    return;
                }
                if tx.is_closed() {
                    return;
                }
                client.reroute(&addr, &Status::unavailable("watch reconnect"));
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
        // Idempotent: a repeated set finds the latch already set.
        self.rpc(|mut c| {
            let req = req.clone();
            async move { c.latch(req).await }
        })
        .await
        .map(|r| (r.set, r.count))
    }

    /// Counts the latch `name` down by one; returns the remaining count. Not retried after an
    /// ambiguous failure (it could count twice).
    pub async fn latch_count_down(&self, name: &str) -> Result<u64> {
        let req = pb::LatchRequest { name: name.into(), op: Some(pb::latch_request::Op::CountDown(true)) };
        self.rpc_once(|mut c| {
            let req = req.clone();
            async move { c.latch(req).await }
        })
        .await
        .map(|r| r.count)
    }

    /// Adds `delta` to the counter `name`; returns the new value. Not retried after an
    /// ambiguous failure (it could apply twice).
    pub async fn counter_add(&self, name: &str, delta: i64) -> Result<i64> {
        let req = pb::CounterRequest { name: name.into(), op: Some(pb::counter_request::Op::Add(delta)) };
        self.rpc_once(|mut c| {
            let req = req.clone();
            async move { c.counter(req).await }
        })
        .await
        .map(|r| r.value)
    }

    /// Reads the counter `name` (linearizable).
    pub async fn counter_get(&self, name: &str) -> Result<i64> {
        let req = pb::CounterRequest { name: name.into(), op: Some(pb::counter_request::Op::Get(true)) };
        self.rpc(|mut c| {
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
        self.rpc_once(|mut c| {
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
        self.rpc(|mut c| {
            let req = req.clone();
            async move { c.register(req).await }
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
        self.rpc_once(|mut c| {
            let req = req.clone();
            async move { c.register(req).await }
        })
        .await
        .map(|r| (r.swapped, r.version))
    }

    /// [`Client::rpc`] where one attempt may take up to `attempt` (a node that does not answer in
    /// time — hung, paused, cut off — is treated like one that is down), and the whole call
    /// `extra` longer than the request timeout.
    async fn rpc_within<T, F, Fut>(&self, attempt: Duration, extra: Duration, mut call: F) -> Result<T>
    where
        F: FnMut(Conn) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.inner.options.request_timeout + extra;
        let mut backoff = Duration::from_millis(20);
        loop {
            let (addr, client) = self.current()?;
            let pipe = client.pipe.clone();
            let result = tokio::time::timeout(attempt, call(client)).await.unwrap_or_else(|_| {
                // The node may be hung: the next attempt gets a fresh stream.
                pipe.close();
                Err(Status::unavailable(format!("no answer from {addr} within {attempt:?}")))
            });
            let status = match result {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if retryable(&s) => s,
                Err(s) => return Err(Error::Status(s)),
            };
            if Instant::now() >= deadline {
                return Err(Error::Unreachable(self.inner.options.request_timeout, status.message().to_string()));
            }
            if !self.reroute(&addr, &status) {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }
    }

    /// How many session renewals the leader has acknowledged to this client's keepalive stream.
    pub fn renewals(&self) -> u64 {
        self.inner.renewals.load(Ordering::Relaxed)
    }

    fn request_id(&self) -> u64 {
        self.inner.next_request.fetch_add(1, Ordering::Relaxed)
    }

    /// Opens a session with this TTL (1 s..=300 s) and keeps it alive in the background.
    pub async fn session(&self, ttl: Duration) -> Result<Session> {
        let client_id = self.inner.options.client_id.clone();
        let ttl_ms = ttl.as_millis() as u64;
        // One request id for every attempt: a retry after an ambiguous failure returns the
        // session the first attempt opened instead of leaving it orphaned. The lease is measured
        // from the first attempt's send time, before which the session cannot have opened.
        let request_id = self.request_id();
        let sent = Instant::now();
        let r = self
            .rpc(|mut c| {
                let req = pb::OpenSessionRequest { client_id: client_id.clone(), ttl_ms, request_id };
                async move { c.open_session(req).await }
            })
            .await?;
        let ttl = Duration::from_millis(r.ttl_ms);
        let (lost_tx, _) = watch::channel(false);
        let shared = Arc::new(SessionShared {
            id: r.session_id,
            ttl,
            valid_until: Mutex::new(sent + lease_span(ttl)),
            lost: lost_tx,
        });
        self.inner.sessions.lock().expect("sessions lock").insert(r.session_id, shared.clone());
        self.inner.sessions_changed.notify_one();
        Ok(Session { client: self.clone(), shared })
    }

    /// A lock's holder, token and waiters (linearizable).
    pub async fn describe(&self, name: &str) -> Result<pb::DescribeResponse> {
        let name = name.to_string();
        self.rpc(|mut c| {
            let req = pb::DescribeRequest { name: name.clone() };
            async move { c.describe(req).await }
        })
        .await
    }

    /// The status of the node that answers (any node; no redirect).
    pub async fn status(&self) -> Result<pb::StatusResponse> {
        let (_, mut c) = self.current()?;
        c.status(pb::StatusRequest {}).await.map(|r| r.into_inner()).map_err(Error::Status)
    }

    /// The status as seen by the node at `addr`.
    pub async fn status_of(addr: &str) -> Result<pb::StatusResponse> {
        let mut c = channel(addr)?;
        c.status(pb::StatusRequest {}).await.map(|r| r.into_inner()).map_err(Error::Status)
    }
}

/// Errors after which the same request may be sent again (to this or another node): every
/// request is idempotent by its request id, or harmless to repeat.
fn retryable(s: &Status) -> bool {
    match s.code() {
        Code::Unavailable => true,
        // A connection that broke mid-call (the node stopped): the request may or may not have
        // been applied; retrying with the same request id finds out.
        Code::Cancelled | Code::Unknown => {
            std::error::Error::source(s).is_some()
                || s.message().contains("transport")
                || s.message().contains("connection")
        }
        _ => false,
    }
}

/// True if the status proves the request was not applied: a follower's redirect, "no leader",
/// or no connection at all.
fn s_is_redirect(s: &Status) -> bool {
    s.code() == Code::Unavailable
        && (s.metadata().get(LEADER_METADATA).is_some()
            || s.message().contains("is not the leader")
            || s.message().contains("has no leader")
            || s.message().starts_with(NOT_CONNECTED)
            || connect_failed(s))
}

/// How a call stream that never connected reports it (see `pipe.rs`).
const NOT_CONNECTED: &str = "could not connect to";

/// True if the status is a failure to connect (nothing was sent).
fn connect_failed(s: &Status) -> bool {
    if s.code() != Code::Unavailable {
        return false;
    }
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(s);
    let mut text = s.message().to_string();
    while let Some(e) = source {
        text.push_str(&format!(": {e}"));
        source = e.source();
    }
    text.contains("tcp connect error") || text.contains("Connection refused")
}

fn request_id_seed() -> u64 {
    // Request ids only need to be unique per session; a time-based start keeps a restarted
    // process from colliding with the ids of its previous run.
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(1) << 8
}

/// How long a renewal sent at some instant keeps the lease valid on the client's side.
fn lease_span(ttl: Duration) -> Duration {
    ttl - ttl / 10
}

struct SessionShared {
    id: u64,
    ttl: Duration,
    valid_until: Mutex<Instant>,
    lost: watch::Sender<bool>,
}

impl SessionShared {
    fn renewed(&self, sent: Instant) {
        let mut v = self.valid_until.lock().expect("lease lock");
        *v = (*v).max(sent + lease_span(self.ttl));
    }

    fn is_valid(&self) -> bool {
        !*self.lost.borrow() && Instant::now() < *self.valid_until.lock().expect("lease lock")
    }

    fn check(&self) {
        if !*self.lost.borrow() && Instant::now() >= *self.valid_until.lock().expect("lease lock") {
            tracing::warn!(session = self.id, "session lease lost: no renewal within its ttl");
            self.lost.send_replace(true);
        }
    }

    fn mark_lost(&self) {
        if !self.lost.send_replace(true) {
            tracing::warn!(session = self.id, "session is gone on the server");
        }
    }
}

async fn keepalive_loop(weak: Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let client = Client { inner };
        let sessions: Vec<Arc<SessionShared>> =
            client.inner.sessions.lock().expect("sessions lock").values().cloned().collect();
        if sessions.is_empty() {
            let notified = client.inner.sessions_changed.notified();
            let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
            continue;
        }
        if let Err(pause) = keepalive_stream(&client).await {
            for s in client.inner.sessions.lock().expect("sessions lock").values() {
                s.check();
            }
            drop(client);
            tokio::time::sleep(pause).await;
        }
    }
}

/// Runs one keepalive stream until it breaks; returns how long to pause before the next.
async fn keepalive_stream(client: &Client) -> std::result::Result<(), Duration> {
    let (addr, mut c) = client.current().map_err(|_| Duration::from_millis(200))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::KeepAliveRequest>(4);
    let mut sent_at: std::collections::VecDeque<Instant> = std::collections::VecDeque::new();
    // The first request goes out with the call so that the server has something to answer.
    let first = live_ids(client);
    sent_at.push_back(Instant::now());
    tx.send(pb::KeepAliveRequest { session_ids: first }).await.map_err(|_| Duration::ZERO)?;
    let mut responses = match c.keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            let redirected = client.reroute(&addr, &status);
            return Err(if redirected { Duration::ZERO } else { Duration::from_millis(100) });
        }
    };
    loop {
        let sessions: Vec<Arc<SessionShared>> =
            client.inner.sessions.lock().expect("sessions lock").values().cloned().collect();
        let min_ttl = sessions.iter().map(|s| s.ttl).min().unwrap_or(Duration::from_secs(10));
        let interval = (min_ttl / 3).max(Duration::from_millis(100));
        match tokio::time::timeout(interval, responses.message()).await {
            Ok(Ok(Some(r))) => {
                let sent = sent_at.pop_front().unwrap_or_else(Instant::now);
                let map = client.inner.sessions.lock().expect("sessions lock");
                for lease in r.leases {
                    if let Some(s) = map.get(&lease.session_id) {
                        if lease.alive {
                            client.inner.renewals.fetch_add(1, Ordering::Relaxed);
                            s.renewed(sent);
                        } else {
                            s.mark_lost();
                        }
                    }
                }
            }
            Ok(Ok(None)) => return Err(Duration::from_millis(50)),
            Ok(Err(status)) => {
                let redirected = client.reroute(&addr, &status);
                return Err(if redirected { Duration::ZERO } else { Duration::from_millis(100) });
            }
            Err(_) => {
                // No answer within an interval: the node may be hung; try again elsewhere soon.
                if sent_at.len() > 2 {
                    let status = Status::unavailable("keepalive stream stalled");
                    client.reroute(&addr, &status);
                    return Err(Duration::from_millis(50));
                }
            }
        }
        for s in &sessions {
            s.check();
        }
        let ids = live_ids(client);
        if ids.is_empty() {
            return Ok(());
        }
        sent_at.push_back(Instant::now());
        if tx.send(pb::KeepAliveRequest { session_ids: ids }).await.is_err() {
            return Err(Duration::from_millis(50));
        }
        tokio::time::sleep(interval).await;
    }
}

fn live_ids(client: &Client) -> Vec<u64> {
    client.inner.sessions.lock().expect("sessions lock").values().filter(|s| !*s.lost.borrow()).map(|s| s.id).collect()
}

/// A session: the lease that the locks taken through it hang on.
#[derive(Clone)]
pub struct Session {
    client: Client,
    shared: Arc<SessionShared>,
}

/// What an acquire asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LockKind {
    /// An exclusive lock.
    #[default]
    Exclusive,
    /// The read side of a read/write lock (shared with other readers).
    Read,
    /// The write side of a read/write lock.
    Write,
    /// `permits` permits of a semaphore with `capacity`.
    Semaphore { permits: u32, capacity: u32 },
    /// Candidacy in a leader election; the value is published once elected.
    Election { value: Vec<u8> },
    /// An arrival at a barrier of `parties`.
    Barrier { parties: u32 },
    /// A wait on a countdown latch.
    Latch,
}

/// An election's leader as observers see it (`session` 0: no leader).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leader {
    /// The leader's session.
    pub session: u64,
    /// Its term / fencing token.
    pub token: u64,
    /// Its published value.
    pub value: Vec<u8>,
}

/// Options of an acquire.
#[derive(Clone, Debug, Default)]
pub struct LockOptions {
    /// `None`: try once. `Some(d)`: wait in the queue up to `d`.
    pub wait: Option<Duration>,
    /// Lock-delay after this holder's session expires.
    pub lock_delay: Duration,
    /// Exclusive lock (default), read or write lock, or semaphore permits.
    pub kind: LockKind,
}

impl Session {
    /// The session's id.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The session's TTL.
    pub fn ttl(&self) -> Duration {
        self.shared.ttl
    }

    /// True while the lease is known valid (see the crate docs on lease loss).
    pub fn is_alive(&self) -> bool {
        self.shared.is_valid()
    }

    /// Completes when the lease is lost.
    pub async fn lost(&self) {
        let mut rx = self.shared.lost.subscribe();
        let _ = rx.wait_for(|lost| *lost).await;
    }

    /// Takes the exclusive lock `name`: `Ok(None)` if it was not granted (try-once on a held
    /// lock, or the wait ran out).
    pub async fn lock(&self, name: &str, wait: Option<Duration>) -> Result<Option<LockGuard>> {
        self.lock_with(name, LockOptions { wait, ..Default::default() }).await
    }

    /// Takes the read side of the read/write lock `name` (shared with other readers; FIFO with
    /// writers, so a waiting writer is not starved).
    pub async fn read_lock(&self, name: &str, wait: Option<Duration>) -> Result<Option<LockGuard>> {
        self.lock_with(name, LockOptions { wait, kind: LockKind::Read, ..Default::default() }).await
    }

    /// Takes the write side of the read/write lock `name`.
    pub async fn write_lock(&self, name: &str, wait: Option<Duration>) -> Result<Option<LockGuard>> {
        self.lock_with(name, LockOptions { wait, kind: LockKind::Write, ..Default::default() }).await
    }

    /// Campaigns in the election `name`: waits (FIFO among candidates) until this session is the
    /// leader, then publishes `value`. The guard's token is the leader's term/fencing token;
    /// releasing the guard resigns (the next candidate is elected at once).
    pub async fn campaign(&self, name: &str, value: Vec<u8>, wait: Option<Duration>) -> Result<Option<LockGuard>> {
        self.lock_with(name, LockOptions { wait, kind: LockKind::Election { value }, ..Default::default() }).await
    }

    /// Arrives at the barrier `name` of `parties` and waits until all have arrived: true if the
    /// barrier was passed, false if the wait ran out (this arrival no longer counts).
    pub async fn barrier(&self, name: &str, parties: u32, wait: Option<Duration>) -> Result<bool> {
        let options = LockOptions { wait, kind: LockKind::Barrier { parties }, ..Default::default() };
        Ok(self.lock_with(name, options).await?.map(LockGuard::passed).is_some())
    }

    /// Double barrier (Curator): waits until `parties` have entered `name`.
    pub async fn double_barrier_enter(&self, name: &str, parties: u32, wait: Option<Duration>) -> Result<bool> {
        self.barrier(&format!("{name}/enter"), parties, wait).await
    }

    /// Double barrier (Curator): waits until all `parties` have left `name`.
    pub async fn double_barrier_leave(&self, name: &str, parties: u32, wait: Option<Duration>) -> Result<bool> {
        self.barrier(&format!("{name}/leave"), parties, wait).await
    }

    /// Waits until the countdown latch `name` reaches zero: true if it did, false if the wait
    /// ran out. A latch that was never set (or already reached zero) is open.
    pub async fn latch_wait(&self, name: &str, wait: Option<Duration>) -> Result<bool> {
        let options = LockOptions { wait, kind: LockKind::Latch, ..Default::default() };
        Ok(self.lock_with(name, options).await?.map(LockGuard::passed).is_some())
    }

    /// Takes `permits` permits of the semaphore `name` with `capacity` permits in all.
    pub async fn semaphore(
        &self,
        name: &str,
        permits: u32,
        capacity: u32,
        wait: Option<Duration>,
    ) -> Result<Option<LockGuard>> {
        let kind = LockKind::Semaphore { permits, capacity };
        self.lock_with(name, LockOptions { wait, kind, ..Default::default() }).await
    }

    /// [`Session::lock`] with all options.
    pub async fn lock_with(&self, name: &str, options: LockOptions) -> Result<Option<LockGuard>> {
        if !self.is_alive() {
            return Err(Error::LeaseLost(self.id()));
        }
        let req = pb::AcquireRequest {
            name: name.to_string(),
            session_id: self.id(),
            request_id: self.client.request_id(),
            wait_ms: options.wait.map_or(0, |d| d.as_millis() as u64),
            lock_delay_ms: options.lock_delay.as_millis() as u64,
            ..Default::default()
        };
        let req = match options.kind {
            LockKind::Exclusive => req,
            LockKind::Read => pb::AcquireRequest { kind: pb::ResourceKind::Rwlock as i32, shared: true, ..req },
            LockKind::Write => pb::AcquireRequest { kind: pb::ResourceKind::Rwlock as i32, ..req },
            LockKind::Semaphore { permits, capacity } => {
                pb::AcquireRequest { kind: pb::ResourceKind::Semaphore as i32, permits, capacity, ..req }
            }
            LockKind::Election { value } => {
                pb::AcquireRequest { kind: pb::ResourceKind::Election as i32, value, ..req }
            }
            LockKind::Barrier { parties } => {
                pb::AcquireRequest { kind: pb::ResourceKind::Barrier as i32, parties, ..req }
            }
            LockKind::Latch => pb::AcquireRequest { kind: pb::ResourceKind::Latch as i32, ..req },
        };
        // If the caller stops waiting (drops this future), withdraw the request on the server so
        // that it is not granted to nobody.
        let mut withdraw =
            WithdrawOnDrop { session: Some(self.clone()), name: req.name.clone(), request_id: req.request_id };
        // The server answers a wait when it ends. One attempt waits at most 30 s; then the same
        // request (same id: it does not queue twice) is sent again, to another node if need be,
        // so that a hung node cannot hold the caller forever.
        let wait = Duration::from_millis(req.wait_ms);
        let attempt = (wait + Duration::from_secs(5)).min(Duration::from_secs(30));
        let r = self.client.rpc_within(attempt, wait, |mut c| {
            let req = req.clone();
            async move { c.acquire(req).await }
        });
        let r = r.await;
        withdraw.session = None;
        let r = r?;
        if r.result == pb::acquire_response::Result::Granted as i32 {
            Ok(Some(LockGuard { session: self.clone(), name: name.to_string(), token: r.token, released: false }))
        } else {
            Ok(None)
        }
    }

    /// Renews the lease now instead of waiting for the background keepalive (e.g. before a long critical section). Returns false if the session
    /// is gone on the server.
    pub async fn keep_alive_once(&self) -> Result<bool> {
        let id = self.id();
        let sent = Instant::now();
        let r = self
            .client
            .rpc(|mut c| async move { c.renew(pb::KeepAliveRequest { session_ids: vec![id] }).await })
            .await?;
        let alive = r.leases.iter().any(|l| l.session_id == id && l.alive);
        if alive {
            self.shared.renewed(sent);
        } else {
            self.shared.mark_lost();
        }
        Ok(alive)
    }

    /// Closes the session: its locks are released at once.
    pub async fn close(self) -> Result<()> {
        self.client.inner.sessions.lock().expect("sessions lock").remove(&self.id());
        let id = self.id();
        let r = self
            .client
            .rpc(|mut c| async move { c.close_session(pb::CloseSessionRequest { session_id: id }).await })
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(Code::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

struct WithdrawOnDrop {
    session: Option<Session>,
    name: String,
    request_id: u64,
}

impl Drop for WithdrawOnDrop {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let name = std::mem::take(&mut self.name);
        let request_id = self.request_id;
        rt.spawn(async move {
            let session_id = session.id();
            let r = session
                .client
                .rpc(|mut c| {
                    let req = pb::CancelRequest { name: name.clone(), session_id, request_id };
                    async move { c.cancel(req).await }
                })
                .await;
            if let Ok(pb::CancelResponse { granted_token }) = r {
                if granted_token != 0 {
                    let _ = release(&session, &name, granted_token).await;
                }
            }
        });
    }
}

/// A held lock. Released by [`LockGuard::release`], or in the background when dropped.
pub struct LockGuard {
    session: Session,
    name: String,
    token: u64,
    released: bool,
}

impl LockGuard {
    /// The fencing token: pass it to every write made under this lock.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The session holding the lock.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// False once the session's lease is lost: the lock may belong to someone else now.
    pub fn is_lease_valid(&self) -> bool {
        self.session.is_alive()
    }

    /// Completes when the lease is lost.
    pub async fn lease_lost(&self) {
        self.session.lost().await
    }

    /// Barriers and latches: nothing is held after passing; drop the guard without a release.
    fn passed(mut self) -> u64 {
        self.released = true;
        self.token
    }

    /// Elections: publishes a new value as the leader.
    pub async fn proclaim(&self, value: Vec<u8>) -> Result<()> {
        let req =
            pb::ProclaimRequest { name: self.name.clone(), session_id: self.session.id(), token: self.token, value };
        self.session
            .client
            .rpc(|mut c| {
                let req = req.clone();
                async move { c.proclaim(req).await }
            })
            .await
            .map(|_| ())
    }

    /// Releases the lock (for an election: resigns).
    pub async fn release(mut self) -> Result<()> {
        self.released = true;
        release(&self.session, &self.name, self.token).await
    }
}

async fn release(session: &Session, name: &str, token: u64) -> Result<()> {
    let name = name.to_string();
    let session_id = session.id();
    let r = session
        .client
        .rpc(|mut c| {
            let req = pb::ReleaseRequest { name: name.clone(), session_id, token };
            async move { c.release(req).await }
        })
        .await;
    match r {
        Ok(_) => Ok(()),
        // Released by an earlier attempt of this call whose answer was lost, or the session is
        // gone: either way we do not hold it.
        Err(e) if matches!(e.code(), Some(Code::FailedPrecondition) | Some(Code::NotFound)) => Ok(()),
        Err(e) => Err(e),
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let session = self.session.clone();
            let name = std::mem::take(&mut self.name);
            let token = self.token;
            rt.spawn(async move {
                if let Err(e) = release(&session, &name, token).await {
                    tracing::warn!(lock = %name, "release on drop failed: {e}");
                }
            });
        }
    }
}
