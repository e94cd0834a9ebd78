//! Baton's server: the node runtime, the peer transport and the gRPC services of one process.
//!
//! # Design
//! [`Server::start`] opens the durable store, recovers every group, starts the node thread
//! ([`runtime`]), one sender task per peer ([`transport`]), and two gRPC servers: the client API
//! ([`service`]) and the peer API. Layers are one-way: this crate drives `baton-node`, which
//! drives `baton-core`; neither of those knows about tokio, tonic or the disk.
//!
//! A fatal error (a failed disk write, a node error) never exits the process: the node thread
//! stops, the gRPC servers stop, and [`Server::stopped`] returns the error to whoever runs the
//! server (the `baton` binary exits with code 71 on it).
//!
//! # Caveats
//! - Membership is the fixed `peers` list given at start (no reconfiguration yet).
//! - TLS is optional on every port (see [`tls`]); without it, traffic is plaintext and the peer
//!   port takes a handshake's node id at its word.

pub mod access;
pub mod bounded;
pub mod crdt;
pub mod etcd;
pub mod forward;
pub mod http;
pub mod obs;
pub mod runtime;
pub mod service;
pub mod status;
pub mod sys;
pub mod tls;
pub mod transport;
pub mod watch;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_node::{EngineStore, LogStore, Node, NodeConfig, NodeId};
use baton_proto::peer::peer_server::PeerServer;
use baton_proto::v1::baton_server::BatonServer;
use tokio::net::TcpListener;
use tokio::sync::watch as signal;

use crate::runtime::{ClusterView, Input, NodeHandle, Outboxes, Outcome};

/// Why a running server stopped on its own. Any of these means the node must not go on: it
/// could acknowledge what is not durable, or diverge from the other replicas.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    /// Writing the Raft log, hard state or a snapshot failed.
    #[error("disk write failed: {0}")]
    Disk(String),
    /// The node hit an error it cannot continue from (e.g. an undecodable entry or snapshot).
    #[error("node failed: {0}")]
    Node(String),
    /// The node thread ended without reporting why (a bug: it panicked).
    #[error("the node thread ended unexpectedly (panic)")]
    Panicked,
}

/// Results of this crate.
pub type Result<T, E = ServerError> = std::result::Result<T, E>;

/// How long the gRPC servers get to finish their calls after the node stopped on its own.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// How to run one node.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// This node's id (must be a key of `peers`).
    pub id: NodeId,
    /// Where the Raft log, hard state and snapshots live.
    pub data_dir: PathBuf,
    /// Peer addresses of every member, this node included.
    pub peers: BTreeMap<NodeId, String>,
    /// Raft tick interval.
    pub tick: Duration,
    /// Raft election timeout in ticks.
    pub election_ticks: usize,
    /// Snapshot after this many applied entries.
    pub snapshot_entries: u64,
    /// Serve reads and keepalives from a leader lease instead of a heartbeat round each, for
    /// `baton_node::lease_read_ms` of the timing (705 ms with the defaults; the arithmetic and its
    /// assumptions are there). Every member must agree (checked in the peer handshake).
    pub lease_reads: bool,
    /// Largest frame accepted from or sent to a peer; a snapshot travels in one, so this bounds
    /// the state a lagging follower can be sent (see [`transport`], "Size bound").
    pub max_peer_message_bytes: usize,
    /// Data groups of a new cluster (ignored once the data folder holds one: the layout is then
    /// the meta group's).
    pub groups: u64,
    /// Join an existing cluster through these client addresses (`baton server --join`): the
    /// members and their peer addresses come from its topology (and `peers` only needs this
    /// node's own entry); the node holds no group until the cluster adds it (`baton cluster
    /// add-node`). Empty: a member the cluster was created with.
    pub join: Vec<String>,
    /// Replicas per data group of a new cluster (`--replicas`; every node holds every group
    /// while the cluster has no more nodes than this).
    pub replication: usize,
    /// Serve etcd's v3 API on this address (`--etcd-addr`; `None`: off).
    pub etcd_addr: Option<String>,
    /// How often a quiet etcd watch that asked for them gets a progress notification (etcd's
    /// default: 10 minutes).
    pub etcd_progress_every: Duration,
    /// The etcd keyspace's quota (`--etcd-quota-bytes`, etcd's default 2 GiB; 0: none),
    /// enforced by whichever node leads the keyspace: give every node the same.
    pub etcd_quota_bytes: u64,
    /// Serve `/healthz`, `/readyz` and `/metrics` on this address (`--http-addr`; `None`: off).
    pub http_addr: Option<String>,
    /// Count metrics, hot names and request timings (`--no-metrics` turns it off, to measure
    /// what observing costs; the gauges read at a scrape and the history stay).
    pub metrics: bool,
    /// TLS on the client-facing ports, mutual TLS between nodes (all off by default).
    pub tls: tls::TlsConfig,
}

impl ServerConfig {
    /// Defaults: 100 ms ticks, 1 s election timeout (randomised up to 2 s).
    pub fn new(id: NodeId, data_dir: PathBuf, peers: BTreeMap<NodeId, String>) -> Self {
        ServerConfig {
            id,
            data_dir,
            peers,
            tick: Duration::from_millis(100),
            election_ticks: baton_node::DEFAULT_ELECTION_TICKS,
            snapshot_entries: 20_000,
            lease_reads: false,
            max_peer_message_bytes: transport::DEFAULT_MAX_PEER_MESSAGE_BYTES,
            groups: 1,
            join: Vec::new(),
            replication: baton_core::topology::DEFAULT_REPLICATION,
            etcd_addr: None,
            etcd_progress_every: etcd::watch::DEFAULT_PROGRESS_EVERY,
            etcd_quota_bytes: etcd::DEFAULT_QUOTA_BYTES,
            http_addr: None,
            metrics: true,
            tls: tls::TlsConfig::default(),
        }
    }
}

/// The sockets a server serves on: the client and peer ones, and the optional etcd API and HTTP
/// ones (`None`: bound from the config's address, if it has one).
pub struct Listeners {
    pub client: TcpListener,
    pub peer: TcpListener,
    pub etcd: Option<TcpListener>,
    pub http: Option<TcpListener>,
}

/// A running server.
pub struct Server {
    /// The bound client API address.
    pub client_addr: SocketAddr,
    /// The bound peer API address.
    pub peer_addr: SocketAddr,
    /// The bound etcd API address, if it serves one.
    pub etcd_addr: Option<SocketAddr>,
    /// The bound HTTP address (health, readiness, metrics), if it serves one.
    pub http_addr: Option<SocketAddr>,
    node: NodeHandle,
    /// How the node thread ended (`None` while it runs).
    outcome: signal::Receiver<Outcome>,
    /// The gRPC servers' and senders' tasks, to abort on shutdown.
    tasks: Vec<tokio::task::AbortHandle>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The coordination-free tier's thread.
    crdt: Option<crdt::CrdtThread>,
}

/// The connections accepted on `listener`, with TCP_NODELAY set. An incoming stream of our own
/// does not get the server builder's setting, and without it small answers wait for Nagle's
/// algorithm and the peer's delayed ACK (~40 ms).
fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Most connections a gRPC port (client, etcd, peer) serves at once; more wait in the backlog.
pub const MAX_CONNECTIONS: usize = 10_000;
/// Most streams (calls in progress) on one gRPC connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1_024;
/// How often a gRPC server pings a connection that says nothing, and how long it waits for the
/// answer before closing it (dead peers do not keep their places).
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
pub const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// A gRPC server with the bounds every port has.
fn grpc_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
}

/// Serves `router` on `listener` (with TLS if `tls` is given) until the node thread has stopped,
/// at most [`MAX_CONNECTIONS`] connections at once.
fn serve(
    router: tonic::transport::server::Router,
    listener: TcpListener,
    tls: Option<Arc<baton_tls::ServerTls>>,
    what: &'static str,
    outcome: &signal::Receiver<Outcome>,
) -> tokio::task::JoinHandle<()> {
    let max = MAX_CONNECTIONS;
    let mut outcome = outcome.clone();
    tokio::spawn(async move {
        let stop = async move {
            let _ = outcome.wait_for(Option::is_some).await;
        };
        let served = match tls {
            None => router.serve_with_incoming_shutdown(bounded::incoming(incoming(listener), max), stop).await,
            Some(tls) => {
                let accepted = baton_tls::accept::incoming(baton_tls::accept(listener, tls, what));
                router.serve_with_incoming_shutdown(bounded::incoming(Box::pin(accepted), max), stop).await
            }
        };
        if let Err(e) = served {
            tracing::error!("{what} server failed: {e}");
        }
    })
}

impl Server {
    /// Binds both addresses and starts serving.
    pub async fn start(config: ServerConfig, client_addr: &str, peer_addr: &str) -> std::io::Result<Server> {
        let client = TcpListener::bind(client_addr).await?;
        let peer = TcpListener::bind(peer_addr).await?;
        Self::start_with_listeners(config, client, peer).await
    }

    /// Starts serving on already bound listeners (tests bind port 0 first to learn the ports).
    pub async fn start_with_listeners(
        config: ServerConfig,
        client: TcpListener,
        peer: TcpListener,
    ) -> std::io::Result<Server> {
        Self::start_with(config, Listeners { client, peer, etcd: None, http: None }).await
    }

    /// Starts serving on already bound listeners; an optional one not given is bound from its
    /// address in `config` (`baton dev` binds its default etcd and HTTP ports itself: a port
    /// taken between a check and a bind must not stop it).
    pub async fn start_with(config: ServerConfig, listeners: Listeners) -> std::io::Result<Server> {
        let Listeners { client, peer, etcd, http } = listeners;
        // Every certificate is read and checked before anything starts.
        let tls = tls::Tls::build(&config.tls, config.id)?;
        if tls.client.is_some() && !tls.peers_mtls() {
            tracing::warn!(
                "the client ports run TLS but the peer port does not: anyone who reaches it can claim to be a node \
                 (give --peer-cert, --peer-key and --peer-ca)"
            );
        }
        let client_addr = client.local_addr()?;
        let peer_addr = peer.local_addr()?;
        let bind = |addr: Option<String>, what: &'static str| async move {
            match addr {
                None => Ok(None),
                Some(a) => TcpListener::bind(&a)
                    .await
                    .map(Some)
                    .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen for {what} on {a}: {e}"))),
            }
        };
        let etcd_listener = match etcd {
            Some(l) => Some(l),
            None => bind(config.etcd_addr.clone(), "the etcd API").await?,
        };
        let etcd_addr = etcd_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let http_listener = match http {
            Some(l) => Some(l),
            None => bind(config.http_addr.clone(), "HTTP").await?,
        };
        let http_addr = http_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let mut config = config;
        let mut voters: Vec<NodeId> = config.peers.keys().copied().collect();
        let mut listed = false;
        // A new cluster has the etcd keyspace's group; a joiner's has it if its topology does.
        let mut etcd = true;
        if !config.join.is_empty() {
            let me = config.peers.get(&config.id).cloned().unwrap_or_else(|| peer_addr.to_string());
            let learned = learn_members(&config.join, &tls.join).await?;
            listed = learned.members.contains_key(&config.id) || learned.founders.contains(&config.id);
            config.groups = learned.data_groups;
            config.replication = learned.replication;
            etcd = learned.etcd;
            // Its replicas start as the founders' did (see `baton_node::joining_groups`).
            voters = learned.founders;
            config.peers = learned.members;
            config.peers.insert(config.id, me);
        }
        if !config.peers.contains_key(&config.id) {
            return Err(std::io::Error::other(format!("node id {} is not in the peer list", config.id)));
        }
        std::fs::create_dir_all(&config.data_dir)?;
        let mut store = EngineStore::open(&config.data_dir).map_err(std::io::Error::other)?;
        let recovery = store.recovery().clone();
        let torn_tail_bytes = recovery.torn_tail_bytes;
        if torn_tail_bytes > 0 {
            tracing::warn!(
                torn_tail_bytes,
                "recovered from a crash in the middle of a write: its last {torn_tail_bytes} bytes were dropped \
                 from the end of the log. They were never acknowledged (answers wait for the fsync of the whole \
                 write), so nothing acknowledged was lost. Shown in `baton status`; damage anywhere else in the \
                 log stops the node from starting"
            );
        } else if recovery.unclean_end {
            tracing::info!("the previous run stopped without closing the log (a crash or kill -9); no write was torn");
        }
        if listed && store.groups().map_err(std::io::Error::other)?.is_empty() {
            // A member with an empty store: its log is gone, and a voter with an empty log could
            // help elect a leader that lacks committed entries (the review found it).
            return Err(std::io::Error::other(format!(
                "node {} is a member of this cluster already but its data folder is empty: a member whose data \
                 is lost must be removed (baton cluster remove-node {}) and join again under a new id",
                config.id, config.id
            )));
        }
        let groups = baton_node::start_groups(
            &store,
            config.id,
            &voters,
            config.groups,
            config.replication,
            etcd,
            &Default::default(),
        )
        .map_err(std::io::Error::other)?;
        let mut node_config = NodeConfig::new(config.id, config.peers.keys().copied().collect());
        node_config.election_ticks = config.election_ticks;
        node_config.snapshot_entries = config.snapshot_entries;
        if config.lease_reads {
            let tick_ms = config.tick.as_millis() as u64;
            node_config.lease_read_ms = baton_node::lease_read_ms(config.election_ticks, tick_ms);
            if node_config.lease_read_ms == 0 {
                return Err(std::io::Error::other(format!(
                    "--lease-reads needs a longer election timeout than {} ticks of {tick_ms} ms: the clock \
                     allowances leave no safe lease (see docs/SEMANTICS.md, \"Reads\"); raise --tick-ms",
                    config.election_ticks
                )));
            }
        }
        // The node takes its randomness as an input; here it comes from the OS.
        // Request ids restart with the process; the incarnation keeps them apart across starts.
        node_config.incarnation = store.next_incarnation().map_err(std::io::Error::other)?;
        node_config.seed = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(config.id);
            h.finish()
        };
        // (A single node campaigns at once: Node::new does that for a lone voter.)
        let (node, boot) = Node::new(node_config, groups).map_err(std::io::Error::other)?;

        let view = Arc::new(Mutex::new(ClusterView::default()));
        {
            let mut v = view.lock().expect("view lock");
            v.peer_addrs = config.peers.clone();
            v.client_addrs.insert(config.id, client_addr.to_string());
            v.torn_tail_bytes = torn_tail_bytes;
            v.etcd_quota_bytes = config.etcd_quota_bytes;
            v.unclean_start = recovery.unclean_end;
            v.tls = (tls.client.is_some(), tls.peers_mtls());
        }
        let (data_groups, etcd_group) = match node.topology() {
            Some(t) => (t.data_groups().count() as u64, t.has_etcd()),
            // Joining: the cluster's layout, as its topology told (checked by every peer).
            None => (config.groups, etcd),
        };
        if config.groups != data_groups && node.groups().len() > 1 {
            tracing::info!(
                data_groups,
                "the data folder's layout decides the data groups; --groups applies to new clusters only"
            );
        }
        let etcd_addr_text = etcd_addr.map(|a| a.to_string()).unwrap_or_default();
        let local =
            transport::local_handshake(&config, client_addr.to_string(), data_groups, etcd_group, etcd_addr_text);
        let max_bytes = config.max_peer_message_bytes;
        let outboxes = Outboxes::default();
        let metrics = Arc::new(obs::Metrics::new(config.metrics));
        let mut tasks = Vec::new();
        // One sender per peer: the configured ones now, those the meta group adds later.
        let dialer = tls.peer_dialer();
        let peering = manage_peers(
            local.clone(),
            config.id,
            max_bytes,
            dialer.clone(),
            view.clone(),
            outboxes.clone(),
            metrics.clone(),
        );
        tasks.push(tokio::spawn(peering).abort_handle());
        if let Some(a) = etcd_addr {
            view.lock().expect("view lock").etcd_addrs.insert(config.id, a.to_string());
        }
        let channels = forward::PeerChannels::new(view.clone(), max_bytes, dialer);
        let net = runtime::Net { outboxes, peers: Some(runtime::Peers { channels: channels.clone() }), metrics };
        let access = access::Access::new(view.clone(), net.metrics.clone());
        let crdt_outboxes = net.outboxes.clone();
        let crdt_view = view.clone();
        let crdt_metrics = net.metrics.clone();
        let (handle, thread, outcome) = runtime::spawn(node, store, boot, net, view, config.tick)?;
        let (crdt, crdt_thread) = {
            use baton_node::crdt::CrdtStore as _;
            let store = baton_node::crdt::EngineCrdtStore::open(&config.data_dir.join("crdt"))
                .map_err(std::io::Error::other)?;
            let states = store.load().map_err(std::io::Error::other)?;
            let peers: Vec<NodeId> = config.peers.keys().copied().collect();
            let replica =
                baton_node::crdt::Replica::new(baton_node::crdt::ReplicaConfig::new(config.id), peers, states);
            crdt::spawn(replica, store, crdt_outboxes, crdt_view, crdt_metrics)?
        };

        let client_api = grpc_server()
            .trace_fn(|req| obs::trace::root(|| tracing::debug_span!("grpc", method = %req.uri().path())))
            .add_service(BatonServer::new(service::BatonService {
                node: handle.clone(),
                access: access.clone(),
                crdt: crdt.clone(),
            }));
        let mut serving = vec![serve(client_api, client, tls.client.clone(), "client API", &outcome)];
        let peer_svc = PeerServer::new(transport::PeerService {
            node: handle.clone(),
            local,
            mtls: tls.peers_mtls(),
            crdt: crdt.clone(),
        })
        .max_decoding_message_size(max_bytes)
        .max_encoding_message_size(max_bytes);
        let peer_api = grpc_server().add_service(peer_svc);
        serving.push(serve(peer_api, peer, tls.peer_server.clone(), "peer API", &outcome));
        if let Some(listener) = etcd_listener {
            let backend = etcd::Backend::new(handle.clone(), channels);
            let router = etcd::router(backend, config.etcd_progress_every);
            serving.push(serve(router, listener, tls.client.clone(), "etcd API", &outcome));
        }
        if let Some(listener) = http_listener {
            let router = http::router(handle.clone(), http::HttpOptions { tls: tls.http.is_some() });
            let mut stop = outcome.clone();
            let http_tls = tls.http.clone();
            serving.push(tokio::spawn(async move {
                let stopped = async move {
                    let _ = stop.wait_for(Option::is_some).await;
                };
                // Handlers may ask for the caller's address (sign-ins are limited per address).
                let app = router.into_make_service_with_connect_info::<bounded::PeerAddr>();
                let served = match http_tls {
                    None => {
                        let l = bounded::Bounded::new(listener, http::MAX_CONNECTIONS, http::IDLE_TIMEOUT);
                        axum::serve(l, app).with_graceful_shutdown(stopped).await
                    }
                    Some(tls) => match baton_tls::TlsListener::new(listener, tls, "HTTP") {
                        Ok(l) => {
                            let l = bounded::Bounded::new(l, http::MAX_CONNECTIONS, http::IDLE_TIMEOUT);
                            axum::serve(l, app).with_graceful_shutdown(stopped).await
                        }
                        Err(e) => Err(e),
                    },
                };
                if let Err(e) = served {
                    tracing::error!("HTTP server failed: {e}");
                }
            }));
        }
        tasks.extend(serving.iter().map(|t| t.abort_handle()));
        tasks.extend(tls.watch().map(|t| t.abort_handle()));
        // If the node stops on its own, the servers stop taking calls at once (see `serve`);
        // calls still open get a grace period to fail cleanly, then they are cut.
        let mut stopped = outcome.clone();
        tokio::spawn(async move {
            let _ = stopped.wait_for(Option::is_some).await;
            let all = futures::future::join_all(serving.iter_mut());
            if tokio::time::timeout(STOP_GRACE, all).await.is_err() {
                serving.iter().for_each(|t| t.abort());
            }
        });
        tracing::info!(id = config.id, %client_addr, %peer_addr, "baton node started");
        Ok(Server {
            client_addr,
            peer_addr,
            etcd_addr,
            http_addr,
            node: handle,
            outcome,
            tasks,
            thread: Some(thread),
            crdt: Some(crdt_thread),
        })
    }

    /// The node thread's handle.
    pub fn node(&self) -> &NodeHandle {
        &self.node
    }

    /// Resolves once the server has stopped: `Ok(())` after [`Server::shutdown`], the error if
    /// the node stopped on its own (then the gRPC servers stop too; the process goes on).
    pub fn stopped(&self) -> impl Future<Output = Result<()>> + Send + 'static {
        let mut outcome = self.outcome.clone();
        async move {
            match outcome.wait_for(Option::is_some).await {
                Ok(o) => o.clone().unwrap_or(Ok(())),
                Err(_) => Err(ServerError::Panicked),
            }
        }
    }

    /// Stops serving and waits for the node thread to finish its current round. What was
    /// acknowledged is on disk; a restart from the same folder continues from there.
    pub async fn shutdown(mut self) {
        self.node.send(Input::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        if let Some(crdt) = self.crdt.take() {
            crdt.stop().await;
        }
        // Long-lived streams (peers, watchers) would hold a graceful shutdown open: cut them.
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

/// Keeps one sender task per peer: the configured members, and every member the meta group
/// adds (with its addresses) as soon as this node's map has it. Aborting this task ends them.
async fn manage_peers(
    local: baton_proto::peer::Handshake,
    me: NodeId,
    max_bytes: usize,
    dialer: tls::PeerDialer,
    view: Arc<Mutex<ClusterView>>,
    outboxes: Outboxes,
    metrics: Arc<obs::Metrics>,
) {
    // The members as configured (their addresses are not in the topology).
    let configured: BTreeMap<NodeId, String> = view.lock().expect("view lock").peer_addrs.clone();
    let mut senders: BTreeMap<NodeId, (String, tokio::task::AbortHandle)> = BTreeMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let peers: BTreeMap<NodeId, String> = {
            let mut v = view.lock().expect("view lock");
            let topology = v.topology.clone();
            if !topology.nodes.is_empty() {
                // Members now: the topology's (with the addresses it has, else the configured
                // ones). A member that left is no peer any more: no sender, no handshake.
                let mut peers = BTreeMap::new();
                for (id, a) in &topology.nodes {
                    let addr =
                        if a.peer_addr.is_empty() { configured.get(id).cloned() } else { Some(a.peer_addr.clone()) };
                    if let Some(addr) = addr {
                        peers.insert(*id, addr);
                    }
                    if !a.client_addr.is_empty() {
                        v.client_addrs.insert(*id, a.client_addr.clone());
                    }
                }
                peers.entry(me).or_insert_with(|| configured.get(&me).cloned().unwrap_or_default());
                v.peer_addrs = peers;
            }
            v.peer_addrs.clone()
        };
        senders.retain(|id, (addr, task)| {
            let keep = peers.get(id) == Some(addr);
            if !keep {
                task.abort();
                outboxes.lock().expect("outboxes lock").remove(id);
            }
            keep
        });
        for (id, addr) in peers {
            if id == me || senders.contains_key(&id) {
                continue;
            }
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            outboxes.lock().expect("outboxes lock").insert(id, tx);
            let task = tasks.spawn(transport::run_sender(
                local.clone(),
                id,
                addr.clone(),
                dialer.to(id),
                max_bytes,
                view.clone(),
                metrics.clone(),
                rx,
            ));
            senders.insert(id, (addr, task));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The members of the cluster reachable at `endpoints` and their peer addresses, from the
/// first node that answers its topology.
#[allow(clippy::type_complexity)]
/// What a joining node learns from the cluster: its members' peer addresses, its layout (data
/// groups, founders, replication) and whether it has the etcd keyspace's group.
struct Learned {
    members: BTreeMap<NodeId, String>,
    data_groups: u64,
    founders: Vec<NodeId>,
    replication: usize,
    etcd: bool,
}

async fn learn_members(endpoints: &[String], dialer: &baton_tls::Dialer) -> std::io::Result<Learned> {
    let mut last = String::from("no endpoint given");
    for ep in endpoints {
        let attempt = async {
            let endpoint = dialer.endpoint(ep).map_err(|e| e.to_string())?;
            let channel = dialer.connect(&endpoint).await.map_err(|e| format!("{e:?}"))?;
            let mut c = baton_proto::v1::baton_client::BatonClient::new(channel);
            c.topology(baton_proto::v1::TopologyRequest {}).await.map_err(|e| e.message().to_string())
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(t)) => {
                let t = t.into_inner();
                let etcd = t.groups.iter().any(|g| g.id == baton_core::topology::ETCD_GROUP);
                let data_groups = t.groups.len() as u64 - u64::from(etcd);
                let founders = t.founders.clone();
                let replication = t.replication as usize;
                let members: BTreeMap<NodeId, String> =
                    t.nodes.into_iter().filter(|n| !n.peer_addr.is_empty()).map(|n| (n.id, n.peer_addr)).collect();
                if !members.is_empty() && !founders.is_empty() {
                    return Ok(Learned { members, data_groups, founders, replication, etcd });
                }
                last = format!("{ep}: no members in its topology");
            }
            Ok(Err(e)) => last = format!("{ep}: {e}"),
            Err(_) => last = format!("{ep}: no answer within 5 s"),
        }
    }
    Err(std::io::Error::other(format!("cannot join: no node of the cluster answered ({last})")))
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    /// Regression: servers were started on our own listener, so the builder's `tcp_nodelay`
    /// never applied and session churn took ~45 ms per keepalive round trip.
    #[tokio::test]
    async fn accepted_connections_have_nodelay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = super::incoming(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
