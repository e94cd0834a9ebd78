//! Which node each request goes to, and the connections.
//!
//! The rules are [`Routes`] (shared with the simulator): a request about a name goes to the
//! leader of the group serving the name's slot, a request about a group to that group's leader,
//! anything else to the current endpoint. A failed attempt moves on to the leader a redirect
//! named, or else to the next endpoint in turn (rotation), so that a node that does not answer
//! — stopped, hung, cut off — is left behind by every caller. Each address has one lazily
//! connected channel and one `Call` stream ([`Pipe`]).
//!
//! The slot map comes from any node's `Topology` answer: fetched when the client starts, again
//! after every `Moved` redirect (at most every [`REFRESH_PAUSE`]) and every [`REFRESH_EVERY`]
//! in the background, which also keeps the list of nodes the keepalive talks to current. A
//! redirect's own hint is used at once, before the refresh lands.
//!
//! Every connection is watched by HTTP/2 pings: a node that stops answering them (a SIGSTOPped
//! process whose kernel still accepts TCP) is dropped after [`PING_INTERVAL`] +
//! [`PING_TIMEOUT`], which fails the streams on it (a waiting acquire is then retried
//! elsewhere at once instead of at its attempt's end).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use baton_proto::v1 as pb;
use baton_proto::v1::baton_client::BatonClient;
use tokio::sync::Notify;
use tonic::transport::Channel;

use crate::core::Routes;
use crate::pipe::{Conn, Pipe};
use crate::{Error, Inner, Result};

/// The least time between two slot map refreshes that redirects ask for.
pub const REFRESH_PAUSE: Duration = Duration::from_millis(200);
/// How often the slot map is refreshed in the background.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How often an open connection is probed with an HTTP/2 ping.
const PING_INTERVAL: Duration = Duration::from_secs(2);
/// How long a ping may go unanswered before the connection is dropped.
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// The token every request of this client carries (`authorization: Bearer <token>`), once it
/// has one (see [`crate::Client::connect_with`], `ClientOptions::credentials`).
#[derive(Clone, Default)]
pub(crate) struct Token(Arc<std::sync::RwLock<Option<tonic::metadata::AsciiMetadataValue>>>);

impl Token {
    /// Carry `token` from now on.
    pub(crate) fn set(&self, token: &str) -> Result<()> {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Error::Tls(format!("the server gave a token that is not ASCII: {token:?}")))?;
        *self.0.write().expect("token lock") = Some(value);
        Ok(())
    }
}

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut request: tonic::Request<()>) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = self.0.read().expect("token lock").clone() {
            request.metadata_mut().insert("authorization", token);
        }
        Ok(request)
    }
}

/// A client of one node, its requests carrying the client's token.
pub(crate) type Grpc = BatonClient<tonic::service::interceptor::InterceptedService<Channel, Token>>;

/// A lazily connected channel to `addr` (`host:port` or a URI), dialled by `dialer`.
pub(crate) fn channel(addr: &str, dialer: &baton_tls::Dialer, token: &Token) -> Result<Grpc> {
    let endpoint = dialer
        .endpoint(addr)
        .map_err(|e| Error::BadEndpoint(addr.to_string(), e.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(PING_INTERVAL)
        .keep_alive_timeout(PING_TIMEOUT)
        .tcp_nodelay(true);
    Ok(BatonClient::with_interceptor(dialer.lazy(&endpoint), token.clone()))
}

/// The routes (see [`Routes`]: the same rules the simulator's client follows) and the
/// connections to each node.
pub(crate) struct Router {
    state: Mutex<RouterState>,
    /// Wakes the refresh task (a redirect said the map is stale).
    stale: Arc<Notify>,
    /// Take node addresses from topologies (`ClientOptions::discover`).
    discover: bool,
    /// Plaintext or TLS.
    dialer: baton_tls::Dialer,
    /// The token requests carry.
    pub(crate) token: Token,
}

struct RouterState {
    routes: Routes<String>,
    channels: HashMap<String, Grpc>,
    /// The fast-path stream to each node (see [`crate::pipe`]).
    pipes: HashMap<String, Arc<Pipe>>,
    /// Every node's client address, from the last topology (the endpoints until then).
    nodes: Vec<String>,
}

/// What a request is about, which decides where it goes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Target<'a> {
    /// A name: the leader of the group serving its slot.
    Name(&'a str),
    /// A group: its leader.
    Group(u64),
    /// Any node (the coordination-free tier): the current endpoint.
    Any,
}

impl Router {
    /// A router over `endpoints`, starting at the first. Fails on an empty list or an address
    /// that cannot be parsed.
    pub(crate) fn new(endpoints: Vec<String>, discover: bool, dialer: baton_tls::Dialer) -> Result<Router> {
        if endpoints.is_empty() {
            return Err(Error::BadEndpoint(String::new(), "no endpoints given".into()));
        }
        let token = Token::default();
        for e in &endpoints {
            channel(e, &dialer, &token)?;
        }
        let state = RouterState {
            routes: Routes::new(endpoints.clone(), 0),
            channels: HashMap::new(),
            pipes: HashMap::new(),
            nodes: endpoints,
        };
        Ok(Router { state: Mutex::new(state), stale: Arc::new(Notify::new()), discover, dialer, token })
    }

    /// Opens new `Call` streams from now on (a stream carries the token it was opened with: after
    /// a new token, calls go to new streams; the old ones end once their calls are answered).
    pub(crate) fn reset_pipes(&self) {
        self.state.lock().expect("route lock").pipes.clear();
    }

    /// A channel to `addr` of its own, dialled as the others are.
    pub(crate) fn channel(&self, addr: &str) -> Result<Grpc> {
        channel(addr, &self.dialer, &self.token)
    }

    /// The group a target is routed to (`None`: no group in particular).
    pub(crate) fn group(&self, target: Target<'_>) -> Option<u64> {
        match target {
            Target::Name(n) => Some(self.state.lock().expect("route lock").routes.map.group_of(n)),
            Target::Group(g) => Some(g),
            Target::Any => None,
        }
    }

    /// The address for `group` and a connection to it (a new `Call` stream if the last broke).
    pub(crate) fn current(&self, group: Option<u64>) -> Result<(String, Conn)> {
        let mut state = self.state.lock().expect("route lock");
        let addr = state.routes.target(group);
        let conn = state.conn(&addr, &self.dialer, &self.token)?;
        Ok((addr, conn))
    }

    /// The address a request for `group` goes to now.
    pub(crate) fn address(&self, group: Option<u64>) -> String {
        self.state.lock().expect("route lock").routes.target(group)
    }

    /// A connection to `addr`.
    pub(crate) fn conn_to(&self, addr: &str) -> Result<Conn> {
        self.state.lock().expect("route lock").conn(addr, &self.dialer, &self.token)
    }

    /// An attempt for `group` at `failed` did not succeed: move to `leader` (from a redirect) if
    /// given, else to the next endpoint. Returns true if the client now points at a leader it
    /// was told of (worth trying at once).
    pub(crate) fn moved_on(&self, group: Option<u64>, failed: &str, leader: Option<&str>) -> bool {
        let mut state = self.state.lock().expect("route lock");
        state.routes.moved_on(group, &failed.to_string(), leader.map(str::to_string))
    }

    /// A redirect said `slot` is served by `group` as of map `version`: route it there now, and
    /// have the whole map refreshed.
    pub(crate) fn moved(&self, slot: u16, group: u64, version: u64) {
        self.state.lock().expect("route lock").routes.map.moved(slot, group, version);
        self.stale.notify_one();
    }

    /// `addr` answered as the leader of `group`.
    pub(crate) fn set_leader(&self, group: u64, addr: &str) {
        self.state.lock().expect("route lock").routes.set_leader(group, addr.to_string());
    }

    /// Every node's client address (the keepalive talks to each): the last topology's nodes,
    /// or without discovery the endpoints and the leaders redirects named.
    pub(crate) fn nodes(&self) -> Vec<String> {
        let state = self.state.lock().expect("route lock");
        let mut nodes = state.nodes.clone();
        if !self.discover {
            nodes.extend(state.routes.leaders().filter(|a| !nodes.contains(a)).cloned().collect::<Vec<_>>());
        }
        nodes
    }

    /// Takes a node's topology: the slot map (unless ours is newer), the leaders it knows, the
    /// nodes' addresses.
    pub(crate) fn apply_topology(&self, t: &pb::TopologyResponse) {
        let mut state = self.state.lock().expect("route lock");
        let groups: Vec<(u64, Vec<(u16, u16)>)> =
            t.groups.iter().map(|g| (g.id, g.slots.iter().map(|r| (r.start as u16, r.end as u16)).collect())).collect();
        state.routes.map.replace(t.version, &groups);
        if !self.discover {
            return;
        }
        let addrs: HashMap<u64, String> =
            t.nodes.iter().filter(|n| !n.client_addr.is_empty()).map(|n| (n.id, n.client_addr.clone())).collect();
        for g in &t.groups {
            if let Some(addr) = addrs.get(&g.leader) {
                state.routes.set_leader(g.id, addr.clone());
            }
        }
        let mut nodes: Vec<String> = addrs.into_values().collect();
        nodes.sort();
        if !nodes.is_empty() {
            state.routes.set_endpoints(nodes.clone());
            state.nodes = nodes;
        }
    }
}

impl RouterState {
    fn conn(&mut self, addr: &str, dialer: &baton_tls::Dialer, token: &Token) -> Result<Conn> {
        let grpc = match self.channels.get(addr) {
            Some(c) => c.clone(),
            None => {
                let c = channel(addr, dialer, token)?;
                self.channels.insert(addr.to_string(), c.clone());
                c
            }
        };
        let pipe = match self.pipes.get(addr) {
            Some(p) if p.is_open() => p.clone(),
            _ => {
                let p = Arc::new(Pipe::open(addr, grpc.clone()));
                self.pipes.insert(addr.to_string(), p.clone());
                p
            }
        };
        Ok(Conn { grpc, pipe })
    }
}

/// Keeps the client's slot map fresh: at once, after every redirect (at most every
/// [`REFRESH_PAUSE`]), and every [`REFRESH_EVERY`]. Ends when the client is dropped.
pub(crate) async fn refresh_loop(weak: Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if let Err(e) = refresh_once(&inner).await {
            tracing::debug!("slot map refresh failed: {e}");
        }
        let stale = inner.router.stale.clone();
        // Hold no reference while waiting, so that a dropped client ends this task.
        drop(inner);
        let _ = tokio::time::timeout(REFRESH_EVERY, stale.notified()).await;
        tokio::time::sleep(REFRESH_PAUSE).await;
    }
}

/// Asks one node (the current endpoint, then the others) for the topology, and routes by it.
pub(crate) async fn refresh_once(inner: &Inner) -> Result<pb::TopologyResponse> {
    let timeout = inner.options.attempt_timeout;
    let mut tried = Vec::new();
    let mut last = String::from("no node to ask");
    for _ in 0..inner.router.nodes().len().max(1) {
        let (addr, mut conn) = inner.router.current(None)?;
        if tried.contains(&addr) {
            break;
        }
        match tokio::time::timeout(timeout, conn.topology(pb::TopologyRequest {})).await {
            Ok(Ok(t)) => {
                let t = t.into_inner();
                inner.router.apply_topology(&t);
                return Ok(t);
            }
            Ok(Err(s)) => last = format!("{addr}: {}", s.message()),
            Err(_) => last = format!("{addr}: no answer within {timeout:?}"),
        }
        inner.router.moved_on(None, &addr, None);
        tried.push(addr);
    }
    Err(Error::Unreachable(timeout, last))
}
