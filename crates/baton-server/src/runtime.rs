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

use baton_node::{
    Answer, GroupId, GroupStatus, LogStore, Node, NodeError, NodeId, Output, RaftMessage, Request, RequestId, Requests,
    WriteBatch,
};
use baton_proto::peer::GroupMessage;
use bytes::{BufMut, Bytes, BytesMut};
use protobuf::Message as _;
use tokio::sync::oneshot;

use crate::watch::{EventLog, SharedLog, Watched};

/// Most inputs taken in one round before the node's work is flushed.
const MAX_INPUTS_PER_ROUND: usize = 8192;

/// A request to the node thread.
pub enum Input {
    /// Raft messages from a peer.
    Steps(Vec<(GroupId, RaftMessage)>),
    /// A client request; answered on `tx`.
    Request { group: GroupId, request: Request, tx: oneshot::Sender<Result<Answer, NodeError>> },
    /// The status of every group.
    Status { tx: oneshot::Sender<Vec<GroupStatus>> },
    /// Stop the loop.
    Stop,
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

/// Per-peer outboxes of the transport.
pub type Outboxes = BTreeMap<NodeId, tokio::sync::mpsc::UnboundedSender<Vec<GroupMessage>>>;

struct Runtime<S: LogStore> {
    node: Node,
    store: S,
    rx: mpsc::Receiver<Input>,
    outboxes: Outboxes,
    events: SharedLog,
    requests: Requests,
    answer_to: HashMap<RequestId, oneshot::Sender<Result<Answer, NodeError>>>,
    answers: Vec<(RequestId, Result<Answer, NodeError>)>,
    next_request: RequestId,
    started: Instant,
    tick: Duration,
    outputs: Vec<Output>,
    per_peer: BTreeMap<NodeId, Vec<GroupMessage>>,
    /// Outgoing Raft messages are encoded into slices of this buffer: one allocation per
    /// ~64 KiB of messages (reclaimed once the transport has sent them), not one per message.
    encode_buf: BytesMut,
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
    let next_seq = node.state_machine(baton_node::DATA_GROUP).map_or(0, |sm| sm.event_seq()) + 1;
    let events = EventLog::new(next_seq);
    let mut rt = Runtime {
        events: events.clone(),
        node,
        store,
        rx,
        outboxes,
        requests: Requests::default(),
        answer_to: HashMap::new(),
        answers: Vec::new(),
        next_request: 1,
        started: Instant::now(),
        tick,
        outputs: Vec::new(),
        per_peer: BTreeMap::new(),
        encode_buf: BytesMut::new(),
    };
    let join = std::thread::Builder::new().name(format!("baton-node-{id}")).spawn(move || rt.run())?;
    Ok((NodeHandle { tx, id, view, events }, join))
}

impl<S: LogStore> Runtime<S> {
    fn set_time(&mut self) {
        let wall =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.node.set_time(self.started.elapsed().as_millis() as u64, wall);
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
            // Finishing a round can leave more work (a snapshot to write, a read round to
            // start): do it now rather than at the next input or tick.
            for _ in 0..4 {
                if !self.node.has_ready() {
                    break;
                }
                self.flush();
            }
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
            Input::Request { group, request, tx } => {
                let id = self.next_id();
                self.answer_to.insert(id, tx);
                self.requests.submit(&mut self.node, group, id, request);
            }
            Input::Status { tx } => {
                let _ = tx.send(self.node.status());
            }
            Input::Stop => {
                self.events.lock().expect("event log").close();
                return false;
            }
        }
        true
    }

    fn dispatch(&mut self) {
        self.node.drain_outputs_into(&mut self.outputs);
        let mut outputs = std::mem::take(&mut self.outputs);
        for out in outputs.drain(..) {
            self.requests.handle(&out, &mut self.answers);
            match out {
                Output::Send { to, group, msg } => {
                    let message = encode(&mut self.encode_buf, &msg);
                    self.per_peer.entry(to).or_default().push(GroupMessage { group, message });
                }
                Output::RoleChanged { group, role, leader, term } => {
                    tracing::info!(group, ?role, ?leader, term, "role changed");
                }
                Output::Event { seq, hlc, event, .. } => {
                    self.events.lock().expect("event log").push(Watched { seq, hlc, event });
                }
                Output::Reset { event_seq, .. } => self.events.lock().expect("event log").reset(event_seq),
                Output::Reply { .. } => {}
            }
        }
        self.outputs = outputs;
        for (id, answer) in self.answers.drain(..) {
            match self.answer_to.remove(&id) {
                Some(tx) => {
                    if tx.send(answer).is_err() {
                        // The caller went away (it may retry with the same request id).
                        self.requests.forget(id);
                    }
                }
                None => self.requests.forget(id),
            }
        }
        for (to, msgs) in std::mem::take(&mut self.per_peer) {
            if let Some(outbox) = self.outboxes.get(&to) {
                // A closed outbox means the transport is shutting down; Raft tolerates the loss.
                let _ = outbox.send(msgs);
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
