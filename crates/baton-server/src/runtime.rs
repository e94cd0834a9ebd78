//! The node's event loop: one OS thread that owns the [`Node`] and the disk.
//!
//! Why a thread and not a tokio task: the loop does blocking fsyncs, and while it does, the
//! inputs that arrive queue up in the channel, so that the next round takes them all at once:
//! proposals are batched into one Raft ready and one fsync without any timer. gRPC handlers and
//! the peer transport talk to it through [`NodeHandle`] and get answers on oneshot channels.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_core::{AcquireRequest, Command, Event, Outcome, SessionId};
use baton_node::{
    GroupId, GroupStatus, LogStore, Node, NodeError, NodeId, Output, Query, RaftMessage, Reply, RequestId, Role,
    WriteBatch,
};
use baton_proto::peer::GroupMessage;
use protobuf::Message as _;
use tokio::sync::oneshot;

/// Most inputs taken in one round before the node's work is flushed.
const MAX_INPUTS_PER_ROUND: usize = 8192;

/// How an acquire finished, as the service reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireResult {
    /// Held with this token.
    Granted(u64),
    /// Try-once on a held lock.
    NotAvailable(Option<SessionId>),
    /// The wait ended without the lock.
    TimedOut,
}

/// A request to the node thread.
pub enum Input {
    /// Raft messages from a peer.
    Steps(Vec<(GroupId, RaftMessage)>),
    /// Propose a command and answer once it applies.
    Propose { group: GroupId, command: Command, tx: oneshot::Sender<Result<Reply, NodeError>> },
    /// Acquire a lock and answer once it is granted, refused or timed out.
    Acquire { group: GroupId, request: AcquireRequest, tx: oneshot::Sender<Result<AcquireResult, NodeError>> },
    /// A linearizable read.
    Read { group: GroupId, query: Query, tx: oneshot::Sender<Result<Reply, NodeError>> },
    /// Renew sessions' leases.
    KeepAlive { group: GroupId, sessions: Vec<SessionId>, tx: oneshot::Sender<Vec<Result<u64, NodeError>>> },
    /// The status of every group.
    Status { tx: oneshot::Sender<Vec<GroupStatus>> },
    /// Stop the loop.
    Stop,
}

/// What every part of the server may read about the cluster without asking the node thread.
#[derive(Default, Debug)]
pub struct ClusterView {
    /// The leader of each group, as this node knows it.
    pub leaders: BTreeMap<GroupId, Option<NodeId>>,
    /// Client addresses of the nodes (ours, and what peers told us).
    pub client_addrs: BTreeMap<NodeId, String>,
    /// Peer addresses of the members.
    pub peer_addrs: BTreeMap<NodeId, String>,
}

/// A cloneable handle to the node thread.
#[derive(Clone)]
pub struct NodeHandle {
    tx: mpsc::Sender<Input>,
    /// This node's id.
    pub id: NodeId,
    /// Shared view of the cluster.
    pub view: Arc<Mutex<ClusterView>>,
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

enum Pending {
    Propose(oneshot::Sender<Result<Reply, NodeError>>),
    Acquire { key: WaitKey, tx: oneshot::Sender<Result<AcquireResult, NodeError>> },
}

type WaitKey = (GroupId, String, SessionId, u64);

/// Per-peer outboxes of the transport.
pub type Outboxes = BTreeMap<NodeId, tokio::sync::mpsc::UnboundedSender<Vec<GroupMessage>>>;

struct Runtime<S: LogStore> {
    node: Node,
    store: S,
    rx: mpsc::Receiver<Input>,
    outboxes: Outboxes,
    view: Arc<Mutex<ClusterView>>,
    pending: HashMap<RequestId, Pending>,
    waits: HashMap<WaitKey, Vec<oneshot::Sender<Result<AcquireResult, NodeError>>>>,
    next_request: RequestId,
    started: Instant,
    tick: Duration,
    outputs: Vec<Output>,
    per_peer: BTreeMap<NodeId, Vec<GroupMessage>>,
}

/// Starts the node thread. `boot` is the write returned by [`Node::new`], persisted first.
pub fn spawn<S: LogStore + Send + 'static>(
    node: Node,
    mut store: S,
    boot: WriteBatch,
    outboxes: Outboxes,
    view: Arc<Mutex<ClusterView>>,
    tick: Duration,
) -> std::io::Result<(NodeHandle, std::thread::JoinHandle<()>)> {
    if !boot.is_empty() {
        store.write(&boot).map_err(std::io::Error::other)?;
    }
    let (tx, rx) = mpsc::channel();
    let id = node.id();
    let mut rt = Runtime {
        node,
        store,
        rx,
        outboxes,
        view: view.clone(),
        pending: HashMap::new(),
        waits: HashMap::new(),
        next_request: 1,
        started: Instant::now(),
        tick,
        outputs: Vec::new(),
        per_peer: BTreeMap::new(),
    };
    let join = std::thread::Builder::new().name(format!("baton-node-{id}")).spawn(move || rt.run())?;
    Ok((NodeHandle { tx, id, view }, join))
}

impl<S: LogStore> Runtime<S> {
    fn set_time(&mut self) {
        self.node.set_time(self.started.elapsed().as_millis() as u64);
    }

    fn run(&mut self) {
        let mut next_tick = Instant::now() + self.tick;
        loop {
            let timeout = next_tick.saturating_duration_since(Instant::now());
            let first = match self.rx.recv_timeout(timeout) {
                Ok(input) => Some(input),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            self.set_time();
            if let Some(input) = first {
                if !self.handle(input) {
                    return;
                }
                for _ in 0..MAX_INPUTS_PER_ROUND {
                    match self.rx.try_recv() {
                        Ok(input) => {
                            if !self.handle(input) {
                                return;
                            }
                        }
                        Err(_) => break,
                    }
                }
            }
            if Instant::now() >= next_tick {
                self.node.tick();
                next_tick += self.tick;
                if next_tick < Instant::now() {
                    next_tick = Instant::now() + self.tick;
                }
            }
            self.flush();
        }
    }

    /// One Raft round: send what can go before the fsync, fsync, finish the round.
    fn flush(&mut self) {
        let batch = match self.node.ready() {
            Ok(b) => b,
            Err(e) => fatal(&format!("node failed: {e}")),
        };
        self.dispatch();
        if !batch.is_empty() {
            if let Err(e) = self.store.write(&batch) {
                fatal(&format!("disk write failed: {e}"));
            }
        }
        if let Err(e) = self.node.persisted() {
            fatal(&format!("node failed: {e}"));
        }
        self.dispatch();
    }

    fn next_id(&mut self) -> RequestId {
        self.next_request += 1;
        self.next_request
    }

    fn handle(&mut self, input: Input) -> bool {
        match input {
            Input::Steps(msgs) => {
                for (group, msg) in msgs {
                    self.node.step(group, msg);
                }
            }
            Input::Propose { group, command, tx } => {
                let id = self.next_id();
                self.pending.insert(id, Pending::Propose(tx));
                self.node.propose(group, id, command);
            }
            Input::Acquire { group, request, tx } => {
                let id = self.next_id();
                let key = (group, request.name.clone(), request.session, request.request_id);
                self.pending.insert(id, Pending::Acquire { key, tx });
                self.node.propose(group, id, Command::Acquire(request));
            }
            Input::Read { group, query, tx } => {
                let id = self.next_id();
                self.pending.insert(id, Pending::Propose(tx));
                self.node.read(group, id, query);
            }
            Input::KeepAlive { group, sessions, tx } => {
                let _ = tx.send(self.node.keepalive(group, &sessions));
            }
            Input::Status { tx } => {
                let _ = tx.send(self.node.status());
            }
            Input::Stop => return false,
        }
        true
    }

    fn dispatch(&mut self) {
        self.node.drain_outputs_into(&mut self.outputs);
        let mut outputs = std::mem::take(&mut self.outputs);
        for out in outputs.drain(..) {
            match out {
                Output::Send { to, group, msg } => {
                    let bytes = msg.write_to_bytes().expect("raft message encodes");
                    self.per_peer.entry(to).or_default().push(GroupMessage { group, message: bytes });
                }
                Output::Reply { id, result } => self.reply(id, result),
                Output::Event { group, event, .. } => self.on_event(group, event),
                Output::Reset { group } => {
                    let keys: Vec<WaitKey> = self.waits.keys().filter(|k| k.0 == group).cloned().collect();
                    for key in keys {
                        for tx in self.waits.remove(&key).unwrap_or_default() {
                            let msg = "this node installed a snapshot while the request waited; retry with the same request id";
                            let _ = tx.send(Err(NodeError::Unavailable(msg.into())));
                        }
                    }
                }
                Output::RoleChanged { group, role, leader, term } => {
                    tracing::info!(group, ?role, ?leader, term, "role changed");
                    let mut view = self.view.lock().expect("view lock");
                    view.leaders.insert(group, if role == Role::Leader { Some(self.node.id()) } else { leader });
                }
            }
        }
        self.outputs = outputs;
        for (to, msgs) in std::mem::take(&mut self.per_peer) {
            if let Some(outbox) = self.outboxes.get(&to) {
                // A closed outbox means the transport is shutting down; Raft tolerates the loss.
                let _ = outbox.send(msgs);
            }
        }
    }

    fn reply(&mut self, id: RequestId, result: Result<Reply, NodeError>) {
        match self.pending.remove(&id) {
            Some(Pending::Propose(tx)) => {
                let _ = tx.send(result);
            }
            Some(Pending::Acquire { key, tx }) => {
                let outcome = match result {
                    Ok(Reply::Applied { outcome, .. }) => outcome,
                    Ok(other) => unreachable!("acquire answered with {other:?}"),
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let result = match outcome {
                    Outcome::Granted { token } => AcquireResult::Granted(token),
                    Outcome::NotAvailable { holder } => AcquireResult::NotAvailable(holder),
                    Outcome::TimedOut | Outcome::Cancelled { granted: None } => AcquireResult::TimedOut,
                    Outcome::Cancelled { granted: Some(token) } => AcquireResult::Granted(token),
                    Outcome::Queued { .. } => {
                        // Answered later by the grant or the end of the wait, in apply order.
                        let waiters = self.waits.entry(key).or_default();
                        waiters.retain(|w| !w.is_closed());
                        waiters.push(tx);
                        return;
                    }
                    other => unreachable!("acquire outcome {other:?}"),
                };
                let _ = tx.send(Ok(result));
            }
            None => {}
        }
    }

    fn on_event(&mut self, group: GroupId, event: Event) {
        let (key, result) = match event {
            Event::Granted { name, session, request_id, token } => {
                ((group, name, session, request_id), AcquireResult::Granted(token))
            }
            Event::WaitEnded { name, session, request_id, .. } => {
                ((group, name, session, request_id), AcquireResult::TimedOut)
            }
            _ => return,
        };
        if let Some(waiters) = self.waits.remove(&key) {
            for tx in waiters {
                let _ = tx.send(Ok(result.clone()));
            }
        }
    }
}

fn fatal(msg: &str) -> ! {
    // Continuing could acknowledge writes that are not durable or let replicas diverge.
    tracing::error!("{msg}; stopping the node");
    eprintln!("baton: fatal: {msg}; stopping the node");
    std::process::exit(71);
}
