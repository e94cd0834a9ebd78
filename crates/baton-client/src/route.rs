//! Which node the client talks to, and its connections.
//!
//! The client keeps one current address: the leader as far as it knows. A failed attempt moves
//! it to the leader a redirect named, or else to the next configured endpoint in turn
//! (rotation), so that a node that does not answer — stopped, hung, cut off — is left behind
//! by every caller, the keepalive included. Each address has one lazily connected channel and
//! one `Call` stream ([`Pipe`]).
//!
//! Every connection is watched by HTTP/2 pings: a node that stops answering them (a SIGSTOPped
//! process whose kernel still accepts TCP) is dropped after [`PING_INTERVAL`] +
//! [`PING_TIMEOUT`], which fails the streams on it (a waiting acquire is then retried
//! elsewhere at once instead of at its attempt's end).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_proto::v1::baton_client::BatonClient;
use tonic::transport::Channel;

use crate::core::Route;
use crate::pipe::{Conn, Pipe};
use crate::{Error, Result};

/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How often an open connection is probed with an HTTP/2 ping.
const PING_INTERVAL: Duration = Duration::from_secs(2);
/// How long a ping may go unanswered before the connection is dropped.
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// A lazily connected channel to `addr` (`host:port` or a URI).
pub(crate) fn channel(addr: &str) -> Result<BatonClient<Channel>> {
    let uri = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    let endpoint = tonic::transport::Endpoint::from_shared(uri)
        .map_err(|e| Error::BadEndpoint(addr.to_string(), e.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(PING_INTERVAL)
        .keep_alive_timeout(PING_TIMEOUT)
        .tcp_nodelay(true);
    Ok(BatonClient::new(endpoint.connect_lazy()))
}

/// The route (see [`Route`]: the same rule the simulator's client follows) and the connections
/// to each node.
pub(crate) struct Router {
    state: Mutex<Routes>,
}

struct Routes {
    route: Route<String>,
    channels: HashMap<String, BatonClient<Channel>>,
    /// The fast-path stream to each node (see [`crate::pipe`]).
    pipes: HashMap<String, Arc<Pipe>>,
}

impl Router {
    /// A router over `endpoints`, starting at the first. Fails on an empty list or an address
    /// that cannot be parsed.
    pub(crate) fn new(endpoints: Vec<String>) -> Result<Router> {
        if endpoints.is_empty() {
            return Err(Error::BadEndpoint(String::new(), "no endpoints given".into()));
        }
        for e in &endpoints {
            channel(e)?;
        }
        let state = Routes { route: Route::new(endpoints, 0), channels: HashMap::new(), pipes: HashMap::new() };
        Ok(Router { state: Mutex::new(state) })
    }

    /// The current address and a connection to it (a new `Call` stream if the last one broke).
    pub(crate) fn current(&self) -> Result<(String, Conn)> {
        let mut route = self.state.lock().expect("route lock");
        let addr = route.route.current().clone();
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

    /// An attempt at `failed` did not succeed: move to `leader` (from a redirect) if given, else
    /// to the next endpoint. Nothing changes if another caller already moved on. Returns true if
    /// the client now points at a leader it was told of (worth trying at once).
    pub(crate) fn moved_on(&self, failed: &str, leader: Option<&str>) -> bool {
        let mut state = self.state.lock().expect("route lock");
        state.route.moved_on(&failed.to_string(), leader.map(str::to_string))
    }
}
