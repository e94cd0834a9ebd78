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
//! The namespace is sharded: names hash to slots, slots belong to Raft groups, and each group
//! has its own leader. A [`Client`] keeps the cluster's slot map and sends each request about a
//! name straight to the leader of the group that serves it; it follows the redirects servers
//! send (a typed `ErrorInfo`, see [`retry`]: `NOT_LEADER`, and `MOVED` when its map is stale),
//! and moves to the next endpoint when a node fails or does not answer (see `routing.rs`).
//!
//! The modules: `routing` (the slot map, leaders, connections), `session` (sessions, and the
//! acquires made through them), `keepalive` and `lease` (renewals and the lease-lost timer),
//! `session`'s [`LockGuard`] (a held grant), `values` (counters, registers, latches), `watch`
//! (event streams, observers), `pipe` (the `Call` stream), `retry` (what a failed attempt
//! means), and [`core`] (the rules, without I/O, shared with the simulator).
//!
//! A session is opened in one group (its home) and gets a record in each other group the first
//! time it is used there (an attach; see docs/SEMANTICS.md, "Sessions across groups"). One
//! background task per client keeps every session alive with one keepalive stream per node —
//! never one heartbeat per lock, per session or per group (see `keepalive.rs`). Sessions,
//! acquires, releases, cancels and counter calls travel on one long-lived `Call` stream per
//! node, many at once (see `pipe.rs`): no HTTP/2 stream per call.
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
//! The client considers a session lost once one of its groups has gone the TTL minus a drift
//! margin (a tenth of the TTL), measured from when it *sent* the last keepalive that group's
//! leader acknowledged, without a renewal — or at once if a leader says the session is gone. Measuring from the send time
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
pub mod crdt;
mod keepalive;
mod lease;
mod pipe;
pub mod retry;
mod routing;
mod session;
mod values;
mod watch;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::core::{Lease, Op, RequestIds};
use baton_proto::v1 as pb;
use lease::{MonoClock, SessionLease};
use retry::AttemptError;
use routing::{Router, Target};
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
    /// The TLS files could not be used (unreadable, not PEM, a key that does not match).
    #[error("TLS: {0}")]
    Tls(String),
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
    /// Learn the nodes' addresses from the cluster (the addresses they were started with) and
    /// talk to them directly. Off: only the endpoints given are used (clients behind a proxy or
    /// address translation); requests still follow the leader addresses redirects name.
    pub discover: bool,
    /// Dial every node with TLS: the CA that signed the nodes' certificates and, for mutual
    /// TLS, the client's certificate and key (`None`: plaintext).
    pub tls: Option<baton_tls::ClientFiles>,
    /// Authenticate as this user with this password (docs/SECURITY.md): the client takes a
    /// token when it connects, sends it with every request and takes a new one before it
    /// expires. `None`: no token (authentication off, or a client certificate naming the user).
    pub credentials: Option<Credentials>,
}

/// A user name and password ([`ClientOptions::credentials`]); `Debug` does not show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl Credentials {
    /// `user` with `password`.
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials { user: user.into(), password: password.into() }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("user", &self.user).field("password", &"<hidden>").finish()
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        ClientOptions {
            client_id: format!("baton-client-{}-{nanos}", std::process::id()),
            request_timeout: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(3),
            max_attempt: Duration::from_secs(30),
            discover: true,
            tls: None,
            credentials: None,
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
    sessions_changed: Arc<Notify>,
    /// Session renewals the leader acknowledged (for benchmarks and metrics).
    renewals: AtomicU64,
    /// When a keepalive stream last failed (client clock, ms; 0: never), and its signal: the
    /// other streams hurry their renewals then (see `keepalive.rs`).
    stream_failed_ms: AtomicU64,
    stream_failed: Arc<Notify>,
    /// Coordination-free counter adds waiting to be combined.
    combiner: crdt::Combiner,
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
        let endpoints: Vec<String> = endpoints.into_iter().map(Into::into).collect();
        let dialer = dialer(&options)?;
        let router = Router::new(endpoints, options.discover, dialer)?;
        let inner = Arc::new(Inner {
            options,
            router,
            clock: MonoClock::start(),
            next_request: RequestIds::starting_at(request_id_seed()),
            sessions: Mutex::new(BTreeMap::new()),
            sessions_changed: Arc::new(Notify::new()),
            renewals: AtomicU64::new(0),
            stream_failed_ms: AtomicU64::new(0),
            stream_failed: Arc::new(Notify::new()),
            combiner: crdt::Combiner::default(),
        });
        if inner.options.credentials.is_some() {
            // The first token before anything else: every request needs it.
            let ttl = authenticate(&inner).await?;
            tokio::spawn(reauthenticate_loop(Arc::downgrade(&inner), ttl));
        }
        // The slot map comes in the background: until it does, every name goes to group 1, and
        // a redirect corrects that (connecting never waits on a node).
        tokio::spawn(routing::refresh_loop(Arc::downgrade(&inner)));
        tokio::spawn(keepalive::keepalive_loop(Arc::downgrade(&inner)));
        Ok(Client { inner })
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
        // Its home is the group serving the client id's slot (the server routes it the same way).
        let r = self
            .attempts(self.plan(Op::OpenSession), Target::Name(&client_id), |mut c, _| {
                let req = pb::OpenSessionRequest { client_id: client_id.clone(), ttl_ms, request_id };
                async move { c.open_session(req).await }
            })
            .await?;
        let home = if r.group == 0 { 1 } else { r.group };
        let lease = Lease::new(r.ttl_ms, home, sent_ms, self.inner.clock.now_ms());
        let shared = Arc::new(SessionLease::new(r.session_id, r.session_proof, self.inner.clock, lease));
        self.inner.sessions.lock().expect("sessions lock").insert(r.session_id, shared.clone());
        self.inner.sessions_changed.notify_one();
        Ok(Session { client: self.clone(), shared })
    }

    /// A lock's holder, token and waiters (linearizable).
    pub async fn describe(&self, name: &str) -> Result<pb::DescribeResponse> {
        let name = name.to_string();
        self.attempts(self.plan(Op::Read), Target::Name(&name), |mut c, group| {
            let req = pb::DescribeRequest { name: name.clone(), group };
            async move { c.describe(req).await.map_err(AttemptError::from) }
        })
        .await
    }

    /// The hottest names of every data group (at most `limit` per group, 0: 20): each node
    /// answers for the groups it holds a replica of, so nodes are asked in turn until every
    /// group of the map is covered (a node that does not answer within 3 s is skipped).
    pub async fn hot(&self, limit: u32) -> Result<pb::HotResponse> {
        let topology = self.topology().await?;
        let wanted: std::collections::BTreeSet<u64> = topology.groups.iter().map(|g| g.id).collect();
        let mut merged = pb::HotResponse { node_id: topology.node_id, ..Default::default() };
        let mut last_error = None;
        for node in &topology.nodes {
            if wanted.iter().all(|g| merged.groups.contains(g)) {
                break;
            }
            let mut c = match self.inner.router.channel(&node.client_addr) {
                Ok(c) => c,
                Err(e) => {
                    last_error = Some(e);
                    continue;
                }
            };
            let answer = match tokio::time::timeout(Duration::from_secs(3), c.hot(pb::HotRequest { limit })).await {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(s)) if s.code() == Code::InvalidArgument => return Err(Error::Status(s)),
                Ok(Err(s)) => {
                    last_error = Some(Error::Status(s));
                    continue;
                }
                Err(_) => {
                    last_error = Some(Error::Unreachable(Duration::from_secs(3), node.client_addr.clone()));
                    continue;
                }
            };
            let fresh: Vec<u64> = answer.groups.iter().copied().filter(|g| !merged.groups.contains(g)).collect();
            merged.names.extend(answer.names.into_iter().filter(|n| fresh.contains(&n.group)));
            merged.groups.extend(fresh);
        }
        if merged.groups.is_empty() {
            if let Some(e) = last_error {
                return Err(e);
            }
        }
        merged.groups.sort_unstable();
        merged.names.sort_by(|a, b| a.group.cmp(&b.group).then(b.weight.cmp(&a.weight)).then(a.name.cmp(&b.name)));
        Ok(merged)
    }

    /// What happened to `name` lately (at most `limit` events, 0: 100), from the kept event
    /// history of a node serving its group, oldest first.
    pub async fn history(&self, name: &str, limit: u32) -> Result<pb::HistoryResponse> {
        let name = name.to_string();
        self.attempts(self.plan(Op::Read), Target::Name(&name), |mut c, group| {
            let req = pb::HistoryRequest { name: name.clone(), limit, group };
            async move { c.history(req).await.map_err(AttemptError::from) }
        })
        .await
    }

    /// The cluster's layout as a node has it: every data group's slots, replicas and leader,
    /// and the nodes' addresses.
    pub async fn topology(&self) -> Result<pb::TopologyResponse> {
        routing::refresh_once(&self.inner).await
    }

    /// Moves slots `start..=end` (all served by one group) to data group `to`, online, and
    /// waits until the move has finished (at most a minute): see `MoveSlots` in the API.
    pub async fn move_slots(&self, start: u16, end: u16, to: u64) -> Result<pb::MoveSlotsResponse> {
        let plan = retry::Plan {
            repeat: Op::MoveSlots.repeat(),
            attempt: Duration::from_secs(70),
            extra: Duration::from_secs(70),
        };
        self.attempts(plan, Target::Group(0), |mut c, _| async move {
            let req = pb::MoveSlotsRequest { start: start as u32, end: end as u32, to_group: to };
            c.move_slots(req).await.map_err(AttemptError::from)
        })
        .await
    }

    /// Adds a member to the cluster (see `AddNode` in the API); answers once the meta group has
    /// it. The new node's replicas follow (`status` shows them).
    pub async fn add_node(&self, id: u64, peer_addr: &str, client_addr: &str) -> Result<pb::MembersResponse> {
        let req = pb::AddNodeRequest { id, peer_addr: peer_addr.into(), client_addr: client_addr.into() };
        self.attempts(self.plan(Op::ChangeMembers), Target::Group(0), |mut c, _| {
            let req = req.clone();
            async move { c.add_node(req).await.map_err(AttemptError::from) }
        })
        .await
    }

    /// Removes a member from the cluster (see `RemoveNode` in the API).
    pub async fn remove_node(&self, id: u64) -> Result<pb::MembersResponse> {
        self.attempts(self.plan(Op::ChangeMembers), Target::Group(0), |mut c, _| async move {
            c.remove_node(pb::RemoveNodeRequest { id }).await.map_err(AttemptError::from)
        })
        .await
    }

    /// Changes users or roles, or turns authentication on or off (see `AuthChange` in the API;
    /// docs/SECURITY.md). Not idempotent: a retry after an unknown outcome may be refused as
    /// already done (a user that exists, say).
    pub async fn auth_change(&self, change: pb::auth_change_request::Change) -> Result<pb::AuthChangeResponse> {
        let req = pb::AuthChangeRequest { change: Some(change) };
        self.attempts(self.plan(Op::ChangeMembers), Target::Group(0), |mut c, _| {
            let req = req.clone();
            async move { c.auth_change(req).await.map_err(AttemptError::from) }
        })
        .await
    }

    /// The users, roles and permissions, and whether authentication is on.
    pub async fn auth_status(&self) -> Result<pb::AuthStatusResponse> {
        self.attempts(self.plan(Op::ChangeMembers), Target::Group(0), |mut c, _| async move {
            c.auth_status(pb::AuthStatusRequest {}).await.map_err(AttemptError::from)
        })
        .await
    }

    /// Where this client sends requests about `name` now: the group serving it by the client's
    /// slot map, and that group's leader as far as the client knows (diagnostics).
    pub fn route_of(&self, name: &str) -> (u64, String) {
        let group = self.inner.router.group(Target::Name(name)).unwrap_or(1);
        (group, self.inner.router.address(Some(group)))
    }

    /// The status of the node that answers (any node; no redirect).
    pub async fn status(&self) -> Result<pb::StatusResponse> {
        let (addr, c) = self.inner.router.current(None)?;
        status_at(&addr, c.grpc.clone(), self.inner.options.attempt_timeout).await
    }

    /// The status as seen by the node at `addr` (which must answer within 3 s), over plaintext.
    pub async fn status_of(addr: &str) -> Result<pb::StatusResponse> {
        let c = routing::channel(addr, &baton_tls::Dialer::plain(), &Default::default())?;
        status_at(addr, c, Duration::from_secs(3)).await
    }

    /// The status as seen by the node at `addr` (which must answer within 3 s), dialled as this
    /// client dials (with its TLS, if any).
    pub async fn status_at(&self, addr: &str) -> Result<pb::StatusResponse> {
        status_at(addr, self.inner.router.channel(addr)?, Duration::from_secs(3)).await
    }
}

/// How a client with `options` dials: TLS if it has TLS files (an `https://` endpoint without
/// them is refused by the dialer: there is no CA to check the node's certificate against).
fn dialer(options: &ClientOptions) -> Result<baton_tls::Dialer> {
    match &options.tls {
        Some(files) => {
            let tls = baton_tls::ClientTls::client("client", files.clone()).map_err(|e| Error::Tls(e.to_string()))?;
            Ok(baton_tls::Dialer::new(Some(Arc::new(tls))))
        }
        None => Ok(baton_tls::Dialer::plain()),
    }
}

/// Takes a token for the client's credentials from the first node that answers, and makes every
/// request carry it; returns how long it lasts.
async fn authenticate(inner: &Inner) -> Result<Duration> {
    let Some(Credentials { user, password }) = inner.options.credentials.clone() else { return Ok(Duration::MAX) };
    let mut last = Error::Unreachable(inner.options.attempt_timeout, "no node to ask".into());
    for addr in inner.router.nodes() {
        let mut c = inner.router.channel(&addr)?;
        let req = pb::AuthenticateRequest { user: user.clone(), password: password.clone() };
        match tokio::time::timeout(inner.options.attempt_timeout, c.authenticate(req)).await {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                inner.router.token.set(&r.token)?;
                inner.router.reset_pipes();
                return Ok(Duration::from_millis(r.ttl_ms));
            }
            // Authentication is off: go on without a token, and ask again later (it may be
            // turned on; credentials can be given before it is).
            Ok(Err(s)) if s.code() == tonic::Code::FailedPrecondition => return Ok(AUTH_OFF_RETRY * 2),
            // The node judged the credentials: another node would judge them the same.
            Ok(Err(s)) if std::error::Error::source(&s).is_none() => return Err(Error::Status(s)),
            Ok(Err(s)) => last = AttemptError::from(s).into_error(),
            Err(_) => last = Error::Unreachable(inner.options.attempt_timeout, format!("{addr}: no answer")),
        }
    }
    Err(last)
}

/// How often a client with credentials asks again while authentication is off.
const AUTH_OFF_RETRY: Duration = Duration::from_secs(15);

/// Takes a new token halfway through each one's life; while that fails, again after a pause
/// that doubles up to a minute (until the old token expires, requests still carry it).
async fn reauthenticate_loop(weak: std::sync::Weak<Inner>, ttl: Duration) {
    let mut wait = ttl / 2;
    let mut backoff = Duration::from_secs(3);
    loop {
        tokio::time::sleep(wait.max(Duration::from_secs(1))).await;
        let Some(inner) = weak.upgrade() else { return };
        match authenticate(&inner).await {
            Ok(next) => {
                wait = next / 2;
                backoff = Duration::from_secs(3);
            }
            Err(e) => {
                tracing::warn!("cannot renew the authentication token: {e}");
                wait = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
}

/// One status call, bounded by `timeout`: a node that is down or does not answer is
/// [`Error::Unreachable`].
async fn status_at(addr: &str, mut c: routing::Grpc, timeout: Duration) -> Result<pb::StatusResponse> {
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
