//! The coordination-free tier's thread: one OS thread per node owns the CRDT [`Replica`] and its
//! store, apart from the Raft node thread, so an update never waits behind a Raft round or its
//! fsync, and the two use both cores.
//!
//! The loop is the node thread's in small: take every input that queued (requests, peers'
//! gossip) with one clock reading, tick the replica when due, write what changed (one fsync for
//! the whole round), then send the round's answers and messages. Gossip rides the peer streams
//! of the Raft transport on their own channel ([`baton_node::CRDT_CHANNEL`]), so it has the
//! same handshake, identity checks (mutual TLS) and frame bound.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_node::crdt::{CrdtFailure, CrdtOutput, CrdtReply, CrdtRequest, CrdtStore, Gossip, Placement, Replica};
use baton_node::{NodeId, CRDT_CHANNEL};
use baton_proto::peer::GroupMessage;
use tokio::sync::{broadcast, oneshot};

use crate::runtime::{ClusterView, Outboxes};

/// Most inputs queued for the thread; more are refused (RESOURCE_EXHAUSTED) rather than grow
/// memory without bound.
pub const MAX_QUEUED: usize = 65_536;
/// Most inputs taken into one round.
const MAX_ROUND_INPUTS: usize = 8_192;
/// How often the replica ticks (retries of waiting reads, anti-entropy when due).
const TICK: Duration = Duration::from_millis(10);
/// How often the peer list is read from the cluster view.
const PEERS_EVERY: Duration = Duration::from_millis(500);

/// What the thread takes.
pub enum CrdtInput {
    /// A client's request, answered on `tx`; waits at most `timeout`.
    Request { req: CrdtRequest, timeout: Duration, tx: oneshot::Sender<Result<CrdtReply, CrdtFailure>> },
    /// A peer's message.
    Gossip { from: NodeId, msg: Gossip },
}

/// A change of an object on this node, for watchers.
#[derive(Clone, Debug)]
pub struct CrdtChange {
    /// The object.
    pub key: baton_core::crdt::Key,
    /// Its value now.
    pub value: baton_core::crdt::Value,
    /// Made by a client of this node (else: merged from a peer).
    pub local: bool,
}

/// How the rest of the server reaches the thread.
#[derive(Clone)]
pub struct CrdtHandle {
    tx: mpsc::SyncSender<CrdtInput>,
    view: Arc<Mutex<ClusterView>>,
    /// Every change, as it is applied.
    pub changes: broadcast::Sender<CrdtChange>,
}

impl CrdtHandle {
    /// The client address of node `node`, if known (to name an object's owners).
    pub fn addr_of(&self, node: NodeId) -> Option<String> {
        self.view.lock().expect("view lock").client_addrs.get(&node).cloned()
    }

    /// Hands an input to the thread; false if its queue is full or it stopped.
    pub fn send(&self, input: CrdtInput) -> bool {
        self.tx.try_send(input).is_ok()
    }

    /// A request, answered once its round is durable.
    pub async fn request(&self, req: CrdtRequest, timeout: Duration) -> Result<CrdtReply, CrdtFailure> {
        let update = matches!(req, CrdtRequest::Update { .. });
        let (tx, rx) = oneshot::channel();
        if !self.send(CrdtInput::Request { req, timeout, tx }) {
            return Err(CrdtFailure::Busy("the coordination-free tier's queue on this node is full or stopped".into()));
        }
        rx.await.map_err(|_| {
            // The thread stopped with the request taken: a failed write may still have reached
            // the disk, so an update may count (a read changed nothing).
            let msg = "the coordination-free tier on this node stopped (a failed write, or a shutdown)";
            if update {
                CrdtFailure::Unknown(format!("{msg}: the update may or may not have been applied"))
            } else {
                CrdtFailure::Busy(msg.into())
            }
        })?
    }
}

/// The running thread, to stop it (its store must be closed before a restart opens it again).
pub struct CrdtThread {
    stop: Arc<AtomicBool>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl CrdtThread {
    /// Stops the thread (within one tick) and waits for it: requests still waiting fail.
    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(join) = self.join.take() {
            let _ = tokio::task::spawn_blocking(move || join.join()).await;
        }
    }
}

/// Starts the thread with `replica` recovered from `store`.
pub fn spawn<S: CrdtStore + Send + 'static>(
    replica: Replica,
    store: S,
    outboxes: Outboxes,
    view: Arc<Mutex<ClusterView>>,
    metrics: Arc<crate::obs::Metrics>,
) -> std::io::Result<(CrdtHandle, CrdtThread)> {
    let (tx, rx) = mpsc::sync_channel(MAX_QUEUED);
    let (changes, _) = broadcast::channel(4096);
    let handle = CrdtHandle { tx, view: view.clone(), changes: changes.clone() };
    let id = replica.id();
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let join = std::thread::Builder::new().name(format!("baton-crdt-{id}")).spawn(move || {
        let view_after = view.clone();
        let mut t = Thread { replica, store, outboxes, view, changes, metrics, waiting: BTreeMap::new(), next_id: 0 };
        if let Err(e) = t.run(rx, &stopping) {
            // A failed write must not be acknowledged: the tier stops on this node (requests
            // fail), the Raft node goes on; readiness says so.
            tracing::error!("the coordination-free tier stopped: {e}");
            view_after.lock().expect("view lock").crdt_failed = Some(e.to_string());
        }
    })?;
    Ok((handle, CrdtThread { stop, join: Some(join) }))
}

struct Thread<S> {
    replica: Replica,
    store: S,
    outboxes: Outboxes,
    view: Arc<Mutex<ClusterView>>,
    changes: broadcast::Sender<CrdtChange>,
    metrics: Arc<crate::obs::Metrics>,
    waiting: BTreeMap<u64, oneshot::Sender<Result<CrdtReply, CrdtFailure>>>,
    next_id: u64,
}

impl<S: CrdtStore> Thread<S> {
    fn run(&mut self, rx: mpsc::Receiver<CrdtInput>, stop: &AtomicBool) -> Result<(), baton_node::DiskError> {
        let mut clock = crate::runtime::system_clock();
        let mut next_tick = 0;
        let mut next_peers = 0;
        let mut placed = None;
        let mut inputs = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let (mono, _) = clock();
            let wait =
                self.replica.next_tick_ms().min(next_tick).saturating_sub(mono).clamp(1, TICK.as_millis() as u64);
            match rx.recv_timeout(Duration::from_millis(wait)) {
                Ok(i) => inputs.push(i),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            }
            while inputs.len() < MAX_ROUND_INPUTS {
                match rx.try_recv() {
                    Ok(i) => inputs.push(i),
                    Err(_) => break,
                }
            }
            let (mono, wall) = clock();
            self.replica.set_time(mono, wall);
            self.replica.set_watched(self.changes.receiver_count() > 0);
            if mono >= next_peers {
                next_peers = mono + PEERS_EVERY.as_millis() as u64;
                let (peers, topology) = {
                    let view = self.view.lock().expect("view lock");
                    (view.peer_addrs.keys().copied().collect::<Vec<NodeId>>(), view.topology.clone())
                };
                self.replica.set_peers(peers);
                // Objects live on the replicas of the group serving their slot (none until the
                // meta group's map is here: then every node takes every object).
                if placed != Some(topology.version) && !topology.groups.is_empty() {
                    placed = Some(topology.version);
                    self.replica.set_placement(Some(Arc::new(Placement::from_topology(&topology))));
                }
            }
            for input in inputs.drain(..) {
                match input {
                    CrdtInput::Request { req, timeout, tx } => {
                        if self.metrics.enabled {
                            let op = if matches!(req, CrdtRequest::Update { .. }) { "update" } else { "read" };
                            self.metrics.crdt_requests.get_or_create(&crate::obs::OpLabel { op }).inc();
                        }
                        self.next_id += 1;
                        self.waiting.insert(self.next_id, tx);
                        self.replica.request(self.next_id, req, mono + timeout.as_millis() as u64);
                    }
                    CrdtInput::Gossip { from, msg } => {
                        self.metrics.crdt_gossip_received.inc();
                        self.replica.receive(from, msg);
                    }
                }
            }
            if mono >= next_tick {
                next_tick = mono + TICK.as_millis() as u64;
                self.replica.tick();
            }
            let write = self.replica.take_write();
            if !write.is_empty() {
                let t0 = std::time::Instant::now();
                self.store.write(&write)?;
                if self.metrics.enabled {
                    self.metrics.crdt_write_seconds.observe(t0.elapsed().as_secs_f64());
                    self.metrics.crdt_objects.set(self.replica.len() as i64);
                    self.metrics.crdt_foreign_objects.set(self.replica.foreign_len() as i64);
                    let handed = self.replica.handed_off();
                    self.metrics.crdt_handed_off.inc_by(handed.saturating_sub(self.metrics.crdt_handed_off.get()));
                }
            }
            self.replica.written();
            self.dispatch();
        }
        Ok(())
    }

    fn dispatch(&mut self) {
        let mut to_peers: BTreeMap<NodeId, Vec<GroupMessage>> = BTreeMap::new();
        for out in self.replica.drain_outputs() {
            match out {
                CrdtOutput::Send { to, msg } => {
                    to_peers
                        .entry(to)
                        .or_default()
                        .push(GroupMessage { group: CRDT_CHANNEL, message: msg.encode().into() });
                }
                CrdtOutput::Answer { id, result } => {
                    if let Some(tx) = self.waiting.remove(&id) {
                        let _ = tx.send(result);
                    }
                }
                CrdtOutput::Changed { key, value, local } => {
                    // No receiver is fine: nobody watches.
                    let _ = self.changes.send(CrdtChange { key, value, local });
                }
            }
        }
        if to_peers.is_empty() {
            return;
        }
        let outboxes = self.outboxes.lock().expect("outboxes lock");
        for (to, msgs) in to_peers {
            if let Some(outbox) = outboxes.get(&to) {
                // A closed outbox: the transport is stopping; anti-entropy repairs any loss.
                let _ = outbox.send(msgs);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::crdt::{Context, Key, Kind, Op};
    use baton_node::crdt::{ReplicaConfig, Stored};
    use baton_node::DiskError;

    /// A disk whose writes fail.
    struct Broken;

    impl CrdtStore for Broken {
        fn load(&self) -> Result<Vec<(Key, Stored)>, DiskError> {
            Ok(vec![])
        }
        fn write(&mut self, _: &[(Key, Vec<u8>)]) -> Result<(), DiskError> {
            Err(DiskError::Corrupt("the disk is gone".into()))
        }
    }

    #[tokio::test]
    async fn a_failed_write_answers_may_have_applied_and_the_node_says_it_is_not_ready() {
        let view = Arc::new(Mutex::new(ClusterView::default()));
        let replica = Replica::new(ReplicaConfig::new(1), [1], vec![]);
        let metrics = Arc::new(crate::obs::Metrics::default());
        let (handle, thread) = spawn(replica, Broken, Outboxes::default(), view.clone(), metrics).unwrap();
        let key = Key::new(Kind::PnCounter, "hits").unwrap();
        let update = CrdtRequest::Update { key, op: Op::Add(1), after: Context::new() };
        let err = handle.request(update, Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(err, CrdtFailure::Unknown(ref m) if m.contains("may or may not")), "{err:?}");
        thread.stop().await;
        let failed = view.lock().unwrap().crdt_failed.clone();
        assert!(failed.is_some_and(|e| e.contains("the disk is gone")));
    }
}
