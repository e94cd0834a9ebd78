//! The node's event loop: one OS thread that owns the [`Node`] and the disk.
//!
//! Why a thread and not a tokio task: the loop does blocking fsyncs, and while it does, the
//! inputs that arrive queue up in the channel, so that the next round takes them all at once:
//! proposals are batched into one Raft ready and one fsync without any timer. gRPC handlers and
//! the peer transport talk to it through [`NodeHandle`] and get answers on oneshot channels.
//!
//! # Fatal errors
//! A failed disk write or a node error ends the loop: continuing could acknowledge writes that
//! are not durable or let replicas diverge. The thread does not exit the process (a test may run
//! several servers in one): it closes the event feed, drops every pending answer (callers see
//! "node is shutting down") and reports the error on the [`Outcome`] channel, which
//! [`crate::Server`] turns into stopping its gRPC servers and into [`crate::Server::stopped`].
//!
//! # Time
//! The clock is read right before each client request is handed to the node, not once per round:
//! a lease read is checked against that reading, and a round can take thousands of inputs (see
//! `baton_node::lease_read_ms` for the allowance this leaves). Ticks are kept at least one tick
//! apart, never bunched to catch up after a slow round: a follower's vote-refusal window counts
//! ticks, and the lease arithmetic assumes `n` ticks span at least `n - 1` tick intervals.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_node::{
    Answer, Driver, Effects, GroupId, GroupStatus, LogStore, Node, NodeError, NodeId, RaftMessage, Request, RequestId,
    Requests, Role, RoundError, WriteBatch,
};
use baton_proto::peer::GroupMessage;
use bytes::{BufMut, Bytes, BytesMut};
use protobuf::Message as _;
use tokio::sync::{oneshot, watch};

use crate::obs::{Metrics, Observer, TimedStore};
use crate::watch::{EventLogs, SharedLog, Watched};
use crate::ServerError;
use baton_core::topology::ETCD_GROUP;

/// Most inputs taken in one round before the node's work is flushed.
const MAX_INPUTS_PER_ROUND: usize = 8192;

/// A request to the node thread.
pub enum Input {
    /// Raft messages from a peer.
    Steps(Vec<(GroupId, RaftMessage)>),
    /// A client request for `group` (`None`: the group serving its name, by this node's map);
    /// answered on `tx`. `span`: the caller's tracing span (see [`Input::request`]).
    Request {
        group: Option<GroupId>,
        request: Request,
        /// The user it is for, with authentication on (see [`baton_node::Node::propose_for`]).
        user: Option<baton_core::command::Principal>,
        tx: oneshot::Sender<Result<Answer, NodeError>>,
        span: tracing::Span,
    },
    /// The status of every group.
    Status { tx: oneshot::Sender<Vec<GroupStatus>> },
    /// The answer to a step this node forwarded to another node (a slot move's).
    Forwarded { id: RequestId, result: Result<baton_core::Outcome, NodeError> },
    /// The etcd keyspace's changes from revision `from` on, from this node's replica (at most
    /// about `max`), for a watcher the feed's ring cannot serve.
    EtcdHistory { from: i64, max: usize, tx: oneshot::Sender<crate::etcd::feed::History> },
    /// The hottest names of every group this node holds a replica of (at most `limit` each).
    Hot { limit: usize, tx: oneshot::Sender<Vec<crate::obs::HotGroup>> },
    /// Stop the loop.
    Stop,
}

impl Input {
    /// A client request, traced as a child of the caller's current span.
    pub fn request(group: Option<GroupId>, request: Request, tx: oneshot::Sender<Result<Answer, NodeError>>) -> Input {
        Input::request_for(group, request, None, tx)
    }

    /// [`Input::request`] for `user` (authentication on).
    pub fn request_for(
        group: Option<GroupId>,
        request: Request,
        user: Option<baton_core::command::Principal>,
        tx: oneshot::Sender<Result<Answer, NodeError>>,
    ) -> Input {
        Input::Request { group, request, user, tx, span: tracing::Span::current() }
    }
}

/// What every part of the server may read about the cluster without asking the node thread.
#[derive(Default, Debug)]
pub struct ClusterView {
    /// Client addresses of the nodes (ours, and what peers told us).
    pub client_addrs: BTreeMap<NodeId, String>,
    /// Peer addresses of the members.
    pub peer_addrs: BTreeMap<NodeId, String>,
    /// Bytes of a torn last write dropped from the end of the log at start (0: none).
    pub torn_tail_bytes: u64,
    /// The previous run ended without closing the log (a crash).
    pub unclean_start: bool,
    /// The slot map as this node's replica of the meta group has it (refreshed after every
    /// round that changed it).
    pub topology: Arc<baton_core::Topology>,
    /// The leader of each group this node holds, as it knows it.
    pub leaders: BTreeMap<GroupId, Option<NodeId>>,
    /// This node's term in each group it holds.
    pub terms: BTreeMap<GroupId, u64>,
    /// etcd API addresses of the nodes that serve one (ours, and what peers told us).
    pub etcd_addrs: BTreeMap<NodeId, String>,
    /// The etcd keyspace's quota this node enforces while it leads the keyspace (0: none).
    pub etcd_quota_bytes: u64,
    /// Whether this node's client-facing ports and its peer port run TLS.
    pub tls: (bool, bool),
    /// The users, roles and permissions as this node's replica of the meta group has them
    /// (refreshed after every round that changed them; see [`crate::access`]).
    pub auth: Arc<baton_core::auth::AuthState>,
    /// Whether this node's replica of the meta group has caught up with a leader since the
    /// node started: until then `auth` may be behind (a restart, a join) and requests are not
    /// served (see [`crate::access`]).
    pub auth_ready: bool,
    /// Each user's requests this node took lately (their `requests_per_s` quota).
    pub rates: Arc<crate::access::Rates>,
    /// Why the coordination-free tier stopped on this node (a failed write), if it did.
    pub crdt_failed: Option<String>,
}

impl ClusterView {
    /// Records what a peer's handshake says about it (its client and etcd addresses).
    pub fn learn(&mut self, node: NodeId, h: &baton_proto::peer::Handshake) {
        if !h.client_addr.is_empty() {
            self.client_addrs.insert(node, h.client_addr.clone());
        }
        if h.etcd_addr.is_empty() {
            self.etcd_addrs.remove(&node);
        } else {
            self.etcd_addrs.insert(node, h.etcd_addr.clone());
        }
    }

    /// The data group serving `name` by this node's map (group 1 if the map has no owner for its
    /// slot: the group then refuses it as not served, which the client takes as a redirect).
    pub fn group_of(&self, name: &str) -> GroupId {
        self.topology.group_of(baton_core::slot_of(name)).unwrap_or(baton_node::DATA_GROUP)
    }
}

/// A cloneable handle to the node thread.
#[derive(Clone)]
pub struct NodeHandle {
    tx: mpsc::Sender<Input>,
    /// This node's id.
    pub id: NodeId,
    /// Shared view of the cluster.
    pub view: Arc<Mutex<ClusterView>>,
    /// Applied events, for watchers.
    pub events: SharedLog,
    /// The etcd keyspace's changes as this node's replica applied them, for etcd watchers.
    pub etcd_feed: Arc<crate::etcd::feed::EtcdFeed>,
    /// What this node counts.
    pub metrics: Arc<Metrics>,
}

impl NodeHandle {
    /// Sends an input; false if the node thread has stopped.
    pub fn send(&self, input: Input) -> bool {
        self.tx.send(input).is_ok()
    }

    /// The client address of a node, if known.
    pub fn client_addr(&self, node: NodeId) -> Option<String> {
        self.view.lock().expect("view lock").client_addrs.get(&node).cloned()
    }
}

/// How the node thread ended: `None` while it runs, `Some(Ok(()))` after [`Input::Stop`],
/// `Some(Err(_))` after a fatal error.
pub type Outcome = Option<Result<(), ServerError>>;

/// Per-peer outboxes of the transport (shared: a peer added to the cluster gets one later).
pub type Outboxes = Arc<Mutex<BTreeMap<NodeId, tokio::sync::mpsc::UnboundedSender<Vec<GroupMessage>>>>>;

struct Runtime<S: LogStore> {
    /// The node and its requests, driven by the round loop shared with the simulator.
    driver: Driver,
    store: TimedStore<S>,
    rx: mpsc::Receiver<Input>,
    clock: Clock,
    tick: Duration,
    fx: ServerEffects,
}

/// Where the node's outputs go in the server: peers' outboxes, callers' answer channels, the
/// event log of watchers.
struct ServerEffects {
    outboxes: Outboxes,
    events: SharedLog,
    view: Arc<Mutex<ClusterView>>,
    /// The slot map may have changed in this round (an event of the meta group, or a move).
    topology_changed: bool,
    /// The revision of the users and roles last published in the view.
    auth_revision: Option<u64>,
    /// Whether the view says the users and roles are caught up (see [`ClusterView::auth_ready`]).
    auth_ready: bool,
    answer_to: HashMap<RequestId, (oneshot::Sender<Result<Answer, NodeError>>, tracing::Span)>,
    per_peer: BTreeMap<NodeId, Vec<GroupMessage>>,
    /// Outgoing Raft messages are encoded into slices of this buffer: one allocation per
    /// ~64 KiB of messages (reclaimed once the transport has sent them), not one per message.
    encode_buf: BytesMut,
    /// Slot moves' steps for other nodes.
    forwarder: Option<crate::forward::Forwarder>,
    etcd_feed: Arc<crate::etcd::feed::EtcdFeed>,
    observer: Observer,
}

impl Effects for ServerEffects {
    fn send(&mut self, to: NodeId, group: GroupId, msg: RaftMessage) {
        let message = encode(&mut self.encode_buf, &msg);
        self.per_peer.entry(to).or_default().push(GroupMessage { group, message });
    }

    fn answer(&mut self, id: RequestId, answer: Result<Answer, NodeError>) -> bool {
        self.observer.answered(id);
        // No sender, or a closed one: the caller went away (it may retry with the same id).
        self.answer_to.remove(&id).is_some_and(|(tx, span)| {
            if !span.is_disabled() {
                span.in_scope(|| match &answer {
                    Ok(Answer::Applied(outcome)) => tracing::debug!(?outcome, "applied, answered"),
                    Ok(Answer::Acquire(result)) => tracing::debug!(?result, "acquire answered"),
                    Ok(Answer::Read(_) | Answer::KeepAlive(_)) => tracing::debug!("read answered"),
                    Err(e) => tracing::debug!(error = %e, "refused"),
                });
            }
            tx.send(answer).is_ok()
        })
    }

    fn event(&mut self, group: GroupId, _index: u64, seq: u64, hlc: baton_core::Hlc, event: baton_core::Event) {
        if group == baton_node::META_GROUP || matches!(event, baton_core::Event::SlotsMoved { .. }) {
            self.topology_changed = true;
        }
        self.observer.event(group, &event);
        self.events.lock().expect("event log").group(group).push(Watched { group, seq, hlc, event });
    }

    fn reset(&mut self, group: GroupId, event_seq: u64) {
        self.topology_changed = true;
        self.events.lock().expect("event log").group(group).reset(event_seq);
    }

    fn role(&mut self, group: GroupId, role: Role, leader: Option<NodeId>, term: u64) {
        tracing::info!(group, ?role, ?leader, term, "role changed");
        let mut view = self.view.lock().expect("view lock");
        // A new leader known (the first one of a run too), not the loss of one.
        if leader.is_some() && view.leaders.get(&group).copied().flatten() != leader {
            self.observer.leader_changed(group);
        }
        view.leaders.insert(group, leader);
        view.terms.insert(group, term);
    }

    fn forward(&mut self, to: NodeId, id: RequestId, group: GroupId, command: baton_core::Command) {
        if let Some(f) = &mut self.forwarder {
            f.forward(to, id, group, command);
        }
    }

    fn flush(&mut self) {
        if self.per_peer.is_empty() {
            return;
        }
        let outboxes = self.outboxes.lock().expect("outboxes lock");
        for (to, msgs) in std::mem::take(&mut self.per_peer) {
            if let Some(outbox) = outboxes.get(&to) {
                // A closed outbox means the transport is shutting down; Raft tolerates the loss.
                let _ = outbox.send(msgs);
            }
        }
    }
}

/// Reads (monotonic ms, wall ms since the Unix epoch); replaceable in tests.
pub(crate) type Clock = Box<dyn FnMut() -> (u64, u64) + Send>;

/// The process's clocks: monotonic from `started`, wall from the Unix epoch.
pub(crate) fn system_clock() -> Clock {
    let started = Instant::now();
    Box::new(move || {
        let wall =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        (started.elapsed().as_millis() as u64, wall)
    })
}

/// Encodes `msg` into the shared buffer and splits it off as its own cheap handle.
fn encode(buf: &mut BytesMut, msg: &raft::eraftpb::Message) -> Bytes {
    let size = msg.compute_size() as usize;
    if buf.capacity() < size {
        buf.reserve(size.max(64 * 1024));
    }
    let mut w = (&mut *buf).writer();
    msg.write_to_writer(&mut w).expect("raft message encodes into memory");
    buf.split().freeze()
}

/// How forwarded steps are sent (to the peer addresses in the view): the bound on a message.
pub struct Peers {
    /// Clients of the peers' ports, for steps forwarded to them.
    pub channels: crate::forward::PeerChannels,
}

/// How the node thread reaches the other nodes: the transport's outboxes for Raft messages, and
/// (in a server) the peers for forwarded steps.
pub struct Net {
    /// Per-peer outboxes of the transport.
    pub outboxes: Outboxes,
    /// The peers (`None`: forwarded steps are dropped, and the mover retries them).
    pub peers: Option<Peers>,
    /// What the node counts (the transport counts into it too).
    pub metrics: Arc<Metrics>,
}

/// Starts the node thread. `boot` is the write returned by [`Node::new`], persisted first. The
/// returned receiver tells how the thread ended (see [`Outcome`]). Called within a tokio
/// runtime (forwarded steps run on it).
pub fn spawn<S: LogStore + Send + 'static>(
    node: Node,
    store: S,
    boot: WriteBatch,
    net: Net,
    view: Arc<Mutex<ClusterView>>,
    tick: Duration,
) -> std::io::Result<(NodeHandle, std::thread::JoinHandle<()>, watch::Receiver<Outcome>)> {
    spawn_with_clock(node, store, boot, net, view, tick, system_clock())
}

/// [`spawn`] with the clock given.
fn spawn_with_clock<S: LogStore + Send + 'static>(
    node: Node,
    store: S,
    boot: WriteBatch,
    net: Net,
    view: Arc<Mutex<ClusterView>>,
    tick: Duration,
    clock: Clock,
) -> std::io::Result<(NodeHandle, std::thread::JoinHandle<()>, watch::Receiver<Outcome>)> {
    let mut store = TimedStore::new(store, net.metrics.clone());
    if !boot.is_empty() {
        store.write(&boot).map_err(std::io::Error::other)?;
    }
    let (tx, rx) = mpsc::channel();
    let id = node.id();
    let Net { outboxes, peers, metrics } = net;
    let forwarder = peers.map(|p| crate::forward::Forwarder::new(id, p.channels, tx.clone()));
    let events = EventLogs::new(
        node.groups().into_iter().map(|g| (g, node.state_machine(g).map_or(0, |sm| sm.event_seq()) + 1)),
    );
    {
        let mut v = view.lock().expect("view lock");
        if let Some(t) = node.topology() {
            v.topology = Arc::new(t.clone());
        }
        // What the data folder knows of the users and roles, from the start.
        if let Some(auth) = node.replica(baton_node::META_GROUP).and_then(|sm| sm.auth()) {
            v.auth = Arc::new(auth.clone());
        }
        v.leaders = node.groups().into_iter().map(|g| (g, None)).collect();
    }
    let auth_revision = node.replica(baton_node::META_GROUP).and_then(|sm| sm.auth()).map(|a| a.revision);
    let etcd_feed = Arc::new(crate::etcd::feed::EtcdFeed::default());
    let mut rt = Runtime {
        driver: Driver::new(node, Requests::default()),
        store,
        rx,
        clock,
        tick,
        fx: ServerEffects {
            outboxes,
            events: events.clone(),
            view: view.clone(),
            topology_changed: false,
            auth_revision,
            auth_ready: false,
            answer_to: HashMap::new(),
            per_peer: BTreeMap::new(),
            encode_buf: BytesMut::new(),
            forwarder,
            etcd_feed: etcd_feed.clone(),
            observer: Observer::new(id, metrics.clone()),
        },
    };
    let (done_tx, done_rx) = watch::channel(None);
    let join = std::thread::Builder::new().name(format!("baton-node-{id}")).spawn(move || {
        let result = rt.run();
        if let Err(e) = &result {
            tracing::error!("{e}; stopping the node");
        }
        rt.fx.events.lock().expect("event log").close();
        // Pending callers learn that the node stopped as their answer channels close.
        rt.fx.answer_to.clear();
        let _ = done_tx.send(Some(result));
    })?;
    Ok((NodeHandle { tx, id, view, events, etcd_feed, metrics }, join, done_rx))
}

impl<S: LogStore> Runtime<S> {
    /// Runs rounds until [`Input::Stop`] (or every handle is gone), or until a fatal error.
    fn run(&mut self) -> Result<(), ServerError> {
        let mut next_tick = Instant::now() + self.tick;
        loop {
            let timeout = next_tick.saturating_duration_since(Instant::now());
            let first = match self.rx.recv_timeout(timeout) {
                Ok(input) => Some(input),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            if let Some(input) = first {
                if !self.handle(input) {
                    return Ok(());
                }
                for _ in 0..MAX_INPUTS_PER_ROUND {
                    match self.rx.try_recv() {
                        Ok(input) => {
                            if !self.handle(input) {
                                return Ok(());
                            }
                        }
                        Err(_) => break,
                    }
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                let (mono, wall) = (self.clock)();
                self.driver.tick(mono, wall);
                // From this tick, not from the one that was due: see the module docs, "Time".
                next_tick = now + self.tick;
            }
            // An error here is fatal: nothing of the round may be acknowledged.
            let rounds = crate::obs::trace::root(|| tracing::debug_span!("raft.rounds"));
            rounds.in_scope(|| self.driver.run_rounds(&mut self.store, &mut self.fx)).map_err(|e| match e {
                RoundError::Node(e) => ServerError::Node(e),
                RoundError::Disk(e) => ServerError::Disk(e.to_string()),
            })?;
            let clock = &mut self.clock;
            self.fx.observer.after_round(self.driver.node(), || clock().1);
            // Only a live replica feeds watchers: one placement removed this node from stops, and
            // its watchers must move to a node that has one.
            match self.driver.node().replica(ETCD_GROUP).and_then(|sm| sm.etcd()) {
                Some(etcd) => self.fx.etcd_feed.publish(etcd),
                None => self.fx.etcd_feed.withdraw(),
            }
            if std::mem::take(&mut self.fx.topology_changed) {
                if let Some(t) = self.driver.node().topology() {
                    self.fx.view.lock().expect("view lock").topology = Arc::new(t.clone());
                }
            }
            // Auth changes emit no events: their revision says when to publish them again.
            let auth = self.driver.node().replica(baton_node::META_GROUP).and_then(|sm| sm.auth());
            let revision = auth.map(|a| a.revision);
            if revision != self.fx.auth_revision {
                self.fx.auth_revision = revision;
                self.fx.view.lock().expect("view lock").auth = Arc::new(auth.cloned().unwrap_or_default());
            }
            // Caught up once: a leader known and everything it committed applied here. Not
            // undone by a later election (that would stop all traffic during one); a node that
            // falls behind later decides by slightly older rules, like any follower.
            if !self.fx.auth_ready {
                let meta = self.driver.node().group_status(baton_node::META_GROUP);
                if meta.is_some_and(|m| m.leader.is_some() && m.applied >= m.commit) {
                    self.fx.auth_ready = true;
                    self.fx.view.lock().expect("view lock").auth_ready = true;
                }
            }
        }
    }

    fn handle(&mut self, input: Input) -> bool {
        match input {
            Input::Steps(msgs) => {
                for (group, msg) in msgs {
                    self.driver.step(group, msg);
                }
            }
            Input::Request { group, request, user, tx, span } => {
                // A fresh reading for every request: a lease read is checked against it.
                let (mono, wall) = (self.clock)();
                let routed = group.unwrap_or_else(|| {
                    request.routing_key().map_or(baton_node::DATA_GROUP, |k| self.driver.node().group_of(k))
                });
                let taken = self.fx.observer.take_in(routed, &request);
                let client_request = match &request {
                    Request::Acquire(r) => r.request_id,
                    _ => 0,
                };
                // Traced only within a sampled trace (see obs::trace).
                let span = if span.is_disabled() {
                    tracing::Span::none()
                } else {
                    tracing::debug_span!(parent: &span, "node.request", node = self.fx.observer.node_id(), group = routed, op = taken.1.op, client_request)
                };
                // Proposing happens within submit: its "proposed" event (index, term) lands in the span.
                let id = span.in_scope(|| self.driver.submit_for(group, request, user, mono, wall));
                self.fx.observer.track(id, taken);
                self.fx.answer_to.insert(id, (tx, span));
            }
            Input::Status { tx } => {
                let _ = tx.send(self.driver.node().status());
            }
            Input::Forwarded { id, result } => self.driver.node_mut().forwarded(id, result),
            Input::EtcdHistory { from, max, tx } => {
                let sm = self.driver.node().replica(ETCD_GROUP);
                let _ = tx.send(crate::etcd::feed::History::of(sm.and_then(|sm| sm.etcd_changes_from(from, max))));
            }
            Input::Hot { limit, tx } => {
                let (_, wall) = (self.clock)();
                let _ = tx.send(self.fx.observer.hot_groups(self.driver.node(), wall, limit));
            }
            Input::Stop => return false,
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use baton_core::Command;
    use baton_node::{MemStore, NodeConfig, Role, DATA_GROUP};

    use super::*;

    /// Regression (issue 9, defect 6): the clock was read once per round, and a round takes up
    /// to 8,192 inputs, so a lease was checked against a reading taken before all of them. Each
    /// request must be handled with its own reading: here the clock advances a millisecond
    /// per reading, and requests queued while the node thread waits are handled in one round; their
    /// entries must carry different times.
    #[test]
    fn every_request_is_handled_with_its_own_clock_reading() {
        let groups = baton_node::initial_groups(1, &[1], 1, 3, &Default::default());
        let (mut node, boot) = Node::new(NodeConfig::new(1, vec![1]), groups).unwrap();
        node.campaign(DATA_GROUP);
        let readings = Arc::new(AtomicU64::new(0));
        // While the test holds `gate`, the node thread waits at its next clock reading.
        let gate = Arc::new(Mutex::new(()));
        let clock: Clock = {
            let (readings, gate) = (readings.clone(), gate.clone());
            Box::new(move || {
                drop(gate.lock().unwrap());
                let k = readings.fetch_add(1, Ordering::SeqCst) + 1;
                (k, 1_700_000_000_000 + k)
            })
        };
        let view = Arc::new(Mutex::new(ClusterView::default()));
        let tick = Duration::from_millis(5);
        let net = Net { outboxes: Outboxes::default(), peers: None, metrics: Arc::default() };
        let (handle, thread, _) = spawn_with_clock(node, MemStore::default(), boot, net, view, tick, clock).unwrap();
        let status = |h: &NodeHandle| {
            let (tx, rx) = oneshot::channel();
            assert!(h.send(Input::Status { tx }));
            rx.blocking_recv().unwrap()
        };
        let mut leading = false;
        for _ in 0..1_000 {
            if status(&handle).iter().all(|g| g.role == Role::Leader) {
                leading = true;
                break;
            }
            std::thread::sleep(tick);
        }
        assert!(leading, "a single node did not elect itself");
        let before = handle.events.lock().unwrap().group(DATA_GROUP).last_seq();

        let held = gate.lock().unwrap();
        let mut answers = Vec::new();
        for i in 0..20 {
            let (tx, rx) = oneshot::channel();
            let request = Request::Propose(Command::CounterAdd { name: format!("c{i}"), delta: 1 });
            assert!(handle.send(Input::request(Some(DATA_GROUP), request, tx)));
            answers.push(rx);
        }
        drop(held);
        for rx in answers {
            rx.blocking_recv().unwrap().unwrap();
        }
        let (events, _) = handle.events.lock().unwrap().group(DATA_GROUP).subscribe(before + 1).unwrap();
        let mut times: Vec<u64> = events.iter().map(|w| w.hlc.physical_ms).collect();
        assert_eq!(times.len(), 20);
        times.dedup();
        assert_eq!(times.len(), 20, "requests of one round shared a clock reading: {times:?}");
        handle.send(Input::Stop);
        thread.join().unwrap();
    }
}
