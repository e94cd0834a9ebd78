//! Deterministic simulation of the coordination-free tier: the production
//! [`baton_node::crdt::Replica`] on every node, driven round by round as the server's CRDT
//! thread drives it (inputs, `take_write`, a write that takes disk time, `written`, outputs),
//! under the faults of [`Faults`]: message loss, duplication and long delays (reordering),
//! partitions, crashes that lose the write in flight and restarts from the "disk"
//! ([`MemCrdtStore`]), and skewed, drifting clocks (the HLC's physical part).
//!
//! Clients update and read random objects of every kind on random nodes, keeping a session token
//! per object as the Rust client does, during a fault phase; then every fault is lifted, the
//! clients stop updating, and after a heal phase the checkers look at the history and the nodes:
//!
//! - **crdt-convergence**: every node holds equal states of every object (and equal digests);
//! - **crdt-durability**: no acknowledged update is lost (a counter is at least the sum of its
//!   acknowledged adds less every attempted subtraction and at most the converse; every
//!   acknowledged insert nobody tried to remove is in its set; no member was never inserted);
//! - **crdt-session**: a session read shows the session's own acknowledged updates and never
//!   less than the session's previous read (read-your-writes, monotonic reads); a session's
//!   LWW writes come back with ever higher stamps, and a set element whose updates (inserts,
//!   removes, inserts again, all by one client) were all acknowledged is present exactly if
//!   the last was an insert, in that session's reads and at the end (a session's updates keep
//!   their order);
//! - **crdt-converged-read**: when a converged read answers, every peer the reader had heard
//!   from so lately that it stayed live through the whole wait holds on its disk every update
//!   the reader had when the read arrived;
//! - **crdt-causal**: no node's state of an OR-set or MV register holds an entry that an
//!   acknowledged update replaced while its context has that update's dot (a delta joined
//!   before its causal past);
//! - **crdt-dots**: no two acknowledged updates got the same dot (a node never issues a dot
//!   twice, across crashes and hand-offs);
//! - **crdt-bounded**: no node's state of a bounded counter ever has a value or any node's
//!   rights below zero, and after the heal no node that does not own a counter holds rights on
//!   it (they could never be spent).
//!
//! Every checker has a planted bug it catches (`crates/baton-sim/tests/crdt.rs`).

use std::collections::{BTreeMap, BTreeSet};

use baton_core::crdt::{Context, Key, Kind, Op, Value};
use baton_core::Bugs;
use baton_node::crdt::{
    CrdtFailure, CrdtOutput, CrdtReply, CrdtRequest, CrdtStore, Gossip, MemCrdtStore, Placement, ReadLevel, Replica,
    ReplicaConfig,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

use crate::check::Violation;

mod check;
use crate::Faults;

/// Virtual time in µs.
type Time = u64;
const MS: Time = 1_000;

/// The shape of one run.
#[derive(Clone, Debug)]
pub struct CrdtSimConfig {
    /// Nodes.
    pub nodes: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Fault phase (ms of virtual time): clients update and read, the nemesis strikes.
    pub fault_ms: u64,
    /// Heal phase (ms): no faults, no new updates; then the nodes must have converged.
    pub heal_ms: u64,
    /// Enabled faults.
    pub faults: Faults,
    /// Deliberate bugs.
    pub bugs: Bugs,
    /// Largest skew of a node's wall clock (ms), with clock faults on.
    pub max_skew_ms: u64,
    /// Throughput mode: every round costs its node this much processor time (µs) plus
    /// `per_input_us` per input it took (the node does nothing else meanwhile); clients update
    /// counters only, each on its own node (client `i` on node `i mod nodes`), with no think
    /// time. `None`: rounds are free, clients pick nodes and operations at random.
    pub cost: Option<Cost>,
    /// Placement: with more than one group, the slots are cut into `groups` ranges, each owned
    /// by 3 nodes (a ring, as the topology places groups), and the nemesis also moves ranges to
    /// other nodes (both sets own a range while it moves; each node learns of a change after
    /// its own delay). 0 or 1: every node owns every object.
    pub groups: usize,
}

/// The processor cost model of [`CrdtSimConfig::cost`].
#[derive(Clone, Copy, Debug)]
pub struct Cost {
    /// Per round (µs).
    pub round_us: u64,
    /// Per input of the round: a request, a peer's message (µs).
    pub per_input_us: u64,
}

impl Default for CrdtSimConfig {
    fn default() -> Self {
        CrdtSimConfig {
            nodes: 3,
            clients: 6,
            fault_ms: 10_000,
            heal_ms: 6_000,
            faults: Faults::all(),
            bugs: Bugs::default(),
            max_skew_ms: 500,
            cost: None,
            groups: 0,
        }
    }
}

/// The result of one run.
#[derive(Debug, Default)]
pub struct CrdtSimReport {
    /// The seed.
    pub seed: u64,
    /// What broke.
    pub violations: Vec<Violation>,
    /// Updates acknowledged to clients.
    pub acked_updates: u64,
    /// Reads answered, by level (local, session, converged).
    pub reads: [u64; 3],
    /// Node crashes, writes lost in flight by them.
    pub crashes: u64,
    /// Messages dropped (loss, partitions, crashed receivers) and delivered twice.
    pub dropped: u64,
    pub duplicated: u64,
    /// Events processed.
    pub steps: u64,
    /// With placement: moves started, requests refused by a node that does not own the
    /// object, objects handed off and dropped.
    pub moves: u64,
    pub not_owned: u64,
    pub handed_off: u64,
}

enum Ev {
    /// A peer message arrives.
    Deliver {
        from: u64,
        to: u64,
        msg: Gossip,
    },
    /// A client's request reaches a node.
    Request {
        node: u64,
        client: usize,
        call: u64,
        req: CrdtRequest,
    },
    /// A node's answer reaches a client.
    Reply {
        client: usize,
        call: u64,
        node: u64,
        result: Result<CrdtReply, CrdtFailure>,
    },
    /// A node's write is durable (unless it crashed since: `epoch` tells).
    WriteDone {
        node: u64,
        epoch: u64,
    },
    Tick {
        node: u64,
    },
    ClientStep {
        client: usize,
    },
    /// A client gives up waiting for `call`.
    ClientTimeout {
        client: usize,
        call: u64,
    },
    Nemesis,
    Restart {
        node: u64,
    },
    HealPartition,
    /// Node `node` learns placement number `version` (an index into the world's placements).
    Place {
        node: u64,
        version: usize,
    },
    /// A move of group `group` started at placement `version` ends: its new owners alone.
    EndMove {
        group: usize,
        owners: Vec<u64>,
    },
}

struct SimNode {
    replica: Option<Replica>,
    store: MemCrdtStore,
    /// A write in flight (durable at its WriteDone); inputs wait meanwhile, as in the server.
    writing: Option<Vec<(Key, Vec<u8>)>>,
    inbox: Vec<Ev>,
    /// Bumped by every crash: a WriteDone of an older epoch is void.
    epoch: u64,
    /// Inputs taken since the last round (for the cost model).
    inputs: u64,
    skew_ms: i64,
    drift_ppm: i64,
    /// Requests taken: replica request id -> (client, call, and for a converged read the
    /// object's context here when it arrived and the peers it must wait for).
    calls: BTreeMap<u64, Taken>,
    /// When this node's replica last took a message from each peer (since its last start).
    heard: BTreeMap<u64, Time>,
    /// The placement this node was given last (an index into the world's placements).
    placed: usize,
    next_id: u64,
}

/// A request a node took: the client and its call, and for a converged read the object's
/// context on the node when it arrived and the peers it must wait for.
type Taken = (usize, u64, Option<(Context, Vec<(u64, usize)>)>);

/// What a client asked and must check when the answer comes.
struct Call {
    key: Key,
    op: Option<Op>,
    level: Option<ReadLevel>,
}

#[derive(Default)]
struct Client {
    tokens: BTreeMap<Key, Context>,
    waiting: Option<(u64, Call)>,
    next_call: u64,
    /// Last session read per key: value as seen.
    last_session: BTreeMap<Key, Value>,
    /// Own acknowledged adds per key (G-counter), inserts per key (sets).
    own_adds: BTreeMap<Key, i128>,
    own_inserts: BTreeMap<Key, BTreeSet<String>>,
    /// The next step reads this key on this node, converged (a write, then a "barrier").
    follow: Option<(Key, u64)>,
    /// The highest LWW stamp an acknowledged write of this session came back with, per key.
    last_stamp: BTreeMap<Key, (baton_core::Hlc, u64)>,
}

#[derive(Default)]
struct Truth {
    acked_add: BTreeMap<Key, i128>,
    tried_add: BTreeMap<Key, i128>,
    acked_sub: BTreeMap<Key, i128>,
    tried_sub: BTreeMap<Key, i128>,
    acked_insert: BTreeMap<Key, BTreeSet<String>>,
    tried_insert: BTreeMap<Key, BTreeSet<String>>,
    tried_remove: BTreeMap<Key, BTreeSet<String>>,
    /// Every insert and remove of each set element, in order (only the client that first
    /// inserted an element updates it, one update at a time): (insert?, acknowledged?).
    elem_ops: BTreeMap<Key, BTreeMap<String, Vec<(bool, bool)>>>,
    /// Acknowledged updates of dot-kernel objects (OR-sets, MV registers), per key.
    kernel_writes: BTreeMap<Key, Vec<KernelWrite>>,
    /// The dot of every acknowledged update (each must be unique).
    acked_dots: BTreeSet<(Key, baton_core::crdt::Dot)>,
}

/// An acknowledged OR-set or MV-register update: its dot, the context it was made in (the
/// answer's token), and for a set the element. Every entry it replaced (a MV register's
/// entries in that context; a set's entries of the element) must be gone from any state whose
/// context has the update's dot.
struct KernelWrite {
    dot: baton_core::crdt::Dot,
    seen: Context,
    elem: Option<String>,
}

struct World {
    cfg: CrdtSimConfig,
    rng: ChaCha8Rng,
    now: Time,
    timeline: crate::timeline::Timeline<Ev>,
    nodes: BTreeMap<u64, SimNode>,
    clients: Vec<Client>,
    truth: Truth,
    /// Pairs that cannot talk (both directions).
    cut: BTreeSet<(u64, u64)>,
    /// Nodes to crash as soon as their next write is in flight (it is lost).
    crash_in_write: BTreeSet<u64>,
    loss: f64,
    report: CrdtSimReport,
    keys: Vec<Key>,
    seed: u64,
    /// Every placement handed out, in order (empty: none, every node owns everything); the
    /// last is the current one.
    placements: Vec<Arc<Placement>>,
    /// Per group, its owners now (with placement).
    group_owners: Vec<Vec<u64>>,
    /// Per group, a move under way: its new owners.
    moving: BTreeMap<usize, Vec<u64>>,
}

/// Acknowledged updates per virtual second of `nodes` nodes with `clients_per_node` clients
/// each, under the cost model `cost` and no fault, over `secs` seconds (one seed).
pub fn crdt_throughput(nodes: usize, clients_per_node: usize, cost: Cost, secs: u64, seed: u64) -> f64 {
    let cfg = CrdtSimConfig {
        nodes,
        clients: nodes * clients_per_node,
        fault_ms: secs * 1000,
        heal_ms: 0,
        faults: Faults::parse("none").expect("no faults"),
        cost: Some(cost),
        ..CrdtSimConfig::default()
    };
    let r = run_crdt(&cfg, seed);
    r.acked_updates as f64 / secs as f64
}

/// Runs one seeded simulation of the tier.
pub fn run_crdt(cfg: &CrdtSimConfig, seed: u64) -> CrdtSimReport {
    let mut w = World::new(cfg.clone(), seed);
    w.run();
    w.report.seed = seed;
    w.report
}

impl World {
    fn new(cfg: CrdtSimConfig, seed: u64) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let ids: Vec<u64> = (1..=cfg.nodes as u64).collect();
        let mut nodes = BTreeMap::new();
        for &id in &ids {
            let skew =
                if cfg.faults.clock { rng.gen_range(-(cfg.max_skew_ms as i64)..=cfg.max_skew_ms as i64) } else { 0 };
            let drift = if cfg.faults.clock { rng.gen_range(-20_000..=20_000) } else { 0 };
            let mut replica = Replica::new(ReplicaConfig::new(id), ids.clone(), vec![]);
            replica.set_bugs(cfg.bugs);
            // Half the runs as if someone watched (the replica then reports every change).
            replica.set_watched(seed % 2 == 1);
            nodes.insert(
                id,
                SimNode {
                    replica: Some(replica),
                    store: MemCrdtStore::default(),
                    writing: None,
                    inbox: Vec::new(),
                    epoch: 0,
                    inputs: 0,
                    skew_ms: skew,
                    drift_ppm: drift,
                    calls: BTreeMap::new(),
                    heard: BTreeMap::new(),
                    next_id: 0,
                    placed: 0,
                },
            );
        }
        let mut keys = Vec::new();
        for kind in Kind::ALL {
            for i in 0..2 {
                keys.push(Key::new(kind, format!("{}-{i}", kind.label())).expect("valid name"));
            }
        }
        let clients = (0..cfg.clients).map(|_| Client::default()).collect();
        World {
            cfg,
            rng,
            now: 0,
            timeline: crate::timeline::Timeline::new(),
            nodes,
            clients,
            truth: Truth::default(),
            cut: BTreeSet::new(),
            crash_in_write: BTreeSet::new(),
            loss: 0.0,
            report: CrdtSimReport::default(),
            keys,
            seed,
            placements: Vec::new(),
            group_owners: Vec::new(),
            moving: BTreeMap::new(),
        }
    }

    /// The placement of `group_owners` (ranges as `even_split` cuts them).
    fn placement_now(&self) -> Placement {
        let ranges = baton_core::slots::even_split(self.group_owners.len() as u64);
        let mut per_slot = vec![BTreeSet::new(); baton_core::SLOTS as usize];
        for (g, (start, end)) in ranges.into_iter().enumerate() {
            for s in start..=end {
                per_slot[s as usize] = self.group_owners[g].iter().copied().collect();
            }
        }
        Placement::from_owners(per_slot, self.placements.len() as u64 + 1)
    }

    /// Hands the current `group_owners` to every node, each after its own delay.
    fn publish(&mut self, delay_to: u64) {
        let p = Arc::new(self.placement_now());
        self.placements.push(p);
        let version = self.placements.len();
        for node in 1..=self.cfg.nodes as u64 {
            let delay = if delay_to == 0 { 0 } else { self.rng.gen_range(0..delay_to) * MS };
            self.at(self.now + delay, Ev::Place { node, version });
        }
    }

    /// The owners of `key` by the current placement (every node without one).
    fn owners(&self, key: &Key) -> Vec<u64> {
        match self.placements.last() {
            Some(p) => p.owners(key).to_vec(),
            None => (1..=self.cfg.nodes as u64).collect(),
        }
    }

    fn at(&mut self, t: Time, ev: Ev) {
        self.timeline.at(t, ev);
    }

    fn run(&mut self) {
        if self.cfg.groups > 1 {
            let n = self.cfg.nodes as u64;
            let r = 3.min(n);
            self.group_owners = (0..self.cfg.groups as u64).map(|g| ring(g, r, n)).collect();
            self.publish(0);
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            for id in ids {
                self.place(id, 1);
            }
        }
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            let t = self.rng.gen_range(0..10 * MS);
            self.at(t, Ev::Tick { node: id });
        }
        for c in 0..self.clients.len() {
            let t = self.rng.gen_range(0..50 * MS);
            self.at(t, Ev::ClientStep { client: c });
        }
        self.at(500 * MS, Ev::Nemesis);
        let end = (self.cfg.fault_ms + self.cfg.heal_ms) * MS;
        while let Some((t, ev)) = self.timeline.pop() {
            if t > end {
                break;
            }
            self.now = t;
            self.report.steps += 1;
            self.handle(ev);
        }
        self.report.handed_off +=
            self.nodes.values().filter_map(|n| n.replica.as_ref()).map(|r| r.handed_off()).sum::<u64>();
        self.check_end();
    }

    fn healing(&self) -> bool {
        self.now >= self.cfg.fault_ms * MS
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver { to, .. } | Ev::Request { node: to, .. } if self.nodes[&to].replica.is_none() => {
                self.report.dropped += 1;
            }
            Ev::Deliver { to, .. } | Ev::Request { node: to, .. } | Ev::Tick { node: to }
                if self.nodes[&to].writing.is_some() =>
            {
                self.nodes.get_mut(&to).expect("node").inbox.push(ev);
            }
            Ev::Deliver { from, to, msg } => {
                self.receive(to, from, msg);
                self.round(to);
            }
            Ev::Request { node, client, call, req } => {
                self.take_request(node, client, call, req);
                self.round(node);
            }
            Ev::Tick { node } => {
                // A crashed node's ticks end here; its restart starts them again.
                if self.nodes[&node].replica.is_some() {
                    self.with_replica(node, |r| r.tick());
                    self.round(node);
                    self.at(self.now + 10 * MS, Ev::Tick { node });
                }
            }
            Ev::WriteDone { node, epoch } => self.write_done(node, epoch),
            Ev::Reply { client, call, node, result } => self.on_reply(client, call, node, result),
            Ev::ClientStep { client } => self.client_step(client),
            Ev::ClientTimeout { client, call } => {
                if self.clients[client].waiting.as_ref().is_some_and(|(c, _)| *c == call) {
                    self.clients[client].waiting = None;
                    let delay = self.rng.gen_range(1..20) * MS;
                    self.at(self.now + delay, Ev::ClientStep { client });
                }
            }
            Ev::Nemesis => self.nemesis(),
            Ev::Place { node, version } => self.place(node, version),
            Ev::EndMove { group, owners } => {
                // (Ended already if the heal phase began first.)
                if self.moving.remove(&group).is_some() {
                    self.group_owners[group] = owners;
                    self.publish(300);
                }
            }
            Ev::Restart { node } => self.restart(node),
            Ev::HealPartition => self.heal_partition(),
        }
    }

    fn receive(&mut self, node: u64, from: u64, msg: Gossip) {
        let n = self.nodes.get_mut(&node).expect("node");
        n.heard.insert(from, self.now);
        n.inputs += 1;
        let keys: Vec<Key> = match &msg {
            Gossip::Deltas(d) => d.iter().map(|d| d.key.clone()).collect(),
            Gossip::States(s) => s.iter().map(|(k, _)| k.clone()).collect(),
            _ => Vec::new(),
        };
        self.with_replica(node, |r| r.receive(from, msg));
        for key in keys.iter().filter(|k| matches!(k.kind, Kind::OrSet | Kind::MvRegister)) {
            self.check_causal(node, key);
        }
    }

    /// Hands a client's request to node `node`'s replica.
    fn take_request(&mut self, node: u64, client: usize, call: u64, req: CrdtRequest) {
        let placed_now: BTreeMap<u64, usize> = self.nodes.iter().map(|(id, n)| (*id, n.placed)).collect();
        let n = self.nodes.get_mut(&node).expect("node");
        n.next_id += 1;
        n.inputs += 1;
        let id = n.next_id;
        let target = match &req {
            CrdtRequest::Read { key, level: ReadLevel::Converged } => {
                let ctx = n.replica.as_ref().and_then(|r| r.get(key)).map(|o| o.ctx.clone()).unwrap_or_default();
                // Peers heard from so lately that they stay live (heard within `live_ms`, on a
                // clock that drifts at most 2%) for the whole wait (2 s at most): the read must
                // wait for each of them.
                let recent = self.now.saturating_sub(700 * MS);
                let placed = (n.placed > 0).then(|| self.placements[n.placed - 1].clone());
                let owns = |p: u64| placed.as_ref().is_none_or(|pl| pl.owners(key).contains(&p));
                let must: Vec<u64> =
                    n.heard.iter().filter(|(p, &t)| t >= recent && owns(**p)).map(|(p, _)| *p).collect();
                // With the placement each of them had then (see `check_converged`).
                let must = must.into_iter().map(|p| (p, placed_now[&p])).collect();
                Some((ctx, must))
            }
            _ => None,
        };
        n.calls.insert(id, (client, call, target));
        let deadline = self.node_mono(node) + 2_000;
        self.with_replica(node, |r| r.request(id, req, deadline));
    }

    fn node_mono(&self, node: u64) -> u64 {
        let n = &self.nodes[&node];
        let ms = self.now / MS;
        (ms as i64 + ms as i64 * n.drift_ppm / 1_000_000).max(0) as u64
    }

    fn with_replica(&mut self, node: u64, f: impl FnOnce(&mut Replica)) {
        let mono = self.node_mono(node);
        let n = self.nodes.get_mut(&node).expect("node");
        let wall = (self.now / MS) as i64 + 1_700_000_000_000 + n.skew_ms;
        if let Some(r) = n.replica.as_mut() {
            r.set_time(mono, wall.max(0) as u64);
            f(r);
        }
    }

    /// Ends a round: the write goes to the disk (taking disk time), or the outputs go at once.
    fn round(&mut self, node: u64) {
        let n = self.nodes.get_mut(&node).expect("node");
        let Some(r) = n.replica.as_mut() else { return };
        let write = r.take_write();
        // Anything released already (nothing, unless a planted bug released it early).
        let early: Vec<CrdtOutput> = r.drain_outputs().collect();
        self.emit(node, early);
        self.check_bounded(node);
        let inputs = std::mem::take(&mut self.nodes.get_mut(&node).expect("node").inputs);
        let cpu = self.cfg.cost.map_or(0, |c| c.round_us + c.per_input_us * inputs);
        if write.is_empty() && cpu == 0 {
            let n = self.nodes.get_mut(&node).expect("node");
            let r = n.replica.as_mut().expect("up");
            r.written();
            let outs: Vec<CrdtOutput> = r.drain_outputs().collect();
            self.emit(node, outs);
            return;
        }
        let slow = self.cfg.faults.disk && self.rng.gen_bool(0.05);
        let disk = if write.is_empty() {
            0
        } else if slow {
            self.rng.gen_range(5..50) * MS
        } else {
            self.rng.gen_range(100..800)
        };
        // The round's processing, then its write: the node takes no input meanwhile.
        let lat = (cpu + disk).max(1);
        let n = self.nodes.get_mut(&node).expect("node");
        n.writing = Some(write);
        let epoch = n.epoch;
        self.at(self.now + lat, Ev::WriteDone { node, epoch });
        if self.crash_in_write.remove(&node) {
            self.crash(node);
            let back = self.rng.gen_range(300..3_000) * MS;
            self.at(self.now + back, Ev::Restart { node });
        }
    }

    fn write_done(&mut self, node: u64, epoch: u64) {
        let n = self.nodes.get_mut(&node).expect("node");
        if n.epoch != epoch || n.replica.is_none() {
            return;
        }
        let write = n.writing.take().expect("a write in flight");
        n.store.write(&write).expect("memory store");
        let r = n.replica.as_mut().expect("up");
        r.written();
        let outs: Vec<CrdtOutput> = r.drain_outputs().collect();
        self.emit(node, outs);
        // What queued during the write.
        let inbox = std::mem::take(&mut self.nodes.get_mut(&node).expect("node").inbox);
        let mut ticked = false;
        for ev in inbox {
            match ev {
                Ev::Tick { .. } if ticked => continue,
                Ev::Tick { .. } => {
                    ticked = true;
                    self.with_replica(node, |r| r.tick());
                }
                Ev::Deliver { from, msg, .. } => self.receive(node, from, msg),
                Ev::Request { client, call, req, .. } => self.take_request(node, client, call, req),
                _ => unreachable!("only deliveries, requests and ticks wait"),
            }
        }
        // Ticks reschedule themselves only when handled: keep the node ticking.
        if ticked {
            self.at(self.now + 10 * MS, Ev::Tick { node });
        }
        self.round(node);
    }

    fn emit(&mut self, node: u64, outs: Vec<CrdtOutput>) {
        for out in outs {
            match out {
                CrdtOutput::Send { to, msg } => self.send(node, to, msg),
                CrdtOutput::Answer { id, result } => {
                    let Some((client, call, target)) = self.nodes.get_mut(&node).expect("node").calls.remove(&id)
                    else {
                        continue;
                    };
                    // A converged read is judged at the instant it is answered.
                    if let (Some((t, must)), Ok(_)) = (&target, &result) {
                        let key = match &self.clients[client].waiting {
                            Some((c, asked)) if *c == call => Some(asked.key.clone()),
                            _ => None,
                        };
                        if let Some(key) = key {
                            self.check_converged(&key, t, node, must);
                        }
                    }
                    let lat = self.rng.gen_range(100..2_000);
                    self.at(self.now + lat, Ev::Reply { client, call, node, result });
                }
                CrdtOutput::Changed { .. } => {}
            }
        }
    }

    fn send(&mut self, from: u64, to: u64, msg: Gossip) {
        if self.cut.contains(&(from.min(to), from.max(to))) || (self.loss > 0.0 && self.rng.gen_bool(self.loss)) {
            self.report.dropped += 1;
            return;
        }
        let long = self.cfg.faults.delay && !self.healing() && self.rng.gen_bool(0.02);
        let lat = if long { self.rng.gen_range(50..1_500) * MS } else { self.rng.gen_range(200..3_000) };
        if self.cfg.faults.duplicate && !self.healing() && self.rng.gen_bool(0.02) {
            self.report.duplicated += 1;
            let again = self.rng.gen_range(200..200_000);
            self.at(self.now + again, Ev::Deliver { from, to, msg: msg.clone() });
        }
        self.at(self.now + lat, Ev::Deliver { from, to, msg });
    }

    fn violation(&mut self, property: &'static str, detail: String) {
        if self.report.violations.len() < 20 {
            self.report.violations.push(Violation { property, detail, at: self.now });
        }
    }

    fn client_step(&mut self, c: usize) {
        if self.healing() || self.clients[c].waiting.is_some() {
            return;
        }
        let (key, node, barrier) = match self.clients[c].follow.take() {
            Some((key, node)) => (key, node, true),
            None if self.cfg.cost.is_some() => {
                // Throughput mode: counters only, each client on its own node.
                let counters = [Kind::GCounter, Kind::PnCounter];
                let kind = counters[self.rng.gen_range(0..2)];
                let key = Key::new(kind, format!("{}-{}", kind.label(), self.rng.gen_range(0..2))).expect("valid");
                (key, (c % self.cfg.nodes) as u64 + 1, false)
            }
            None => {
                let key = self.keys[self.rng.gen_range(0..self.keys.len())].clone();
                // As the client follows redirects: mostly an owner, sometimes any node.
                let owners = self.owners(&key);
                let node = if self.rng.gen_bool(0.8) && !owners.is_empty() {
                    owners[self.rng.gen_range(0..owners.len())]
                } else {
                    self.rng.gen_range(1..=self.cfg.nodes as u64)
                };
                (key, node, false)
            }
        };
        let client = &mut self.clients[c];
        client.next_call += 1;
        let call = client.next_call;
        let read = barrier || (self.cfg.cost.is_none() && self.rng.gen_bool(0.35));
        let (req, op, level) = if read {
            let level = match if barrier { 2 } else { self.rng.gen_range(0..3) } {
                0 => ReadLevel::Local,
                1 => ReadLevel::Session(self.clients[c].tokens.get(&key).cloned().unwrap_or_default()),
                _ => ReadLevel::Converged,
            };
            (CrdtRequest::Read { key: key.clone(), level: level.clone() }, None, Some(level))
        } else {
            let op = self.draw_op(c, &key, call);
            // Updates carry the session's token, as the client sends it; a counter's add
            // sometimes none, as a new session's first one would.
            let fresh = matches!(key.kind, Kind::GCounter | Kind::PnCounter) && self.rng.gen_bool(0.3);
            let after =
                if fresh { Context::new() } else { self.clients[c].tokens.get(&key).cloned().unwrap_or_default() };
            (CrdtRequest::Update { key: key.clone(), op: op.clone(), after }, Some(op), None)
        };
        if let Some(op) = &op {
            self.record_try(&key, op);
        }
        self.clients[c].waiting = Some((call, Call { key, op, level }));
        let lat = self.rng.gen_range(100..2_000);
        self.at(self.now + lat, Ev::Request { node, client: c, call, req });
        self.at(self.now + 3_000 * MS, Ev::ClientTimeout { client: c, call });
    }

    fn draw_op(&mut self, c: usize, key: &Key, call: u64) -> Op {
        let n = self.rng.gen_range(1..5);
        match key.kind {
            Kind::GCounter => Op::Add(n),
            Kind::PnCounter | Kind::BoundedCounter if self.rng.gen_bool(0.5) => Op::Add(n),
            Kind::PnCounter | Kind::BoundedCounter => Op::Subtract(n),
            Kind::GSet => Op::Insert(format!("c{c}-{call}")),
            Kind::OrSet => {
                let seen: Vec<String> = self.clients[c].own_inserts.get(key).into_iter().flatten().cloned().collect();
                if !seen.is_empty() && self.rng.gen_bool(0.3) {
                    // Its own element: removed, or inserted again (a new dot replacing the old).
                    let e = seen[self.rng.gen_range(0..seen.len())].clone();
                    if self.rng.gen_bool(0.6) {
                        Op::Remove(e)
                    } else {
                        Op::Insert(e)
                    }
                } else {
                    Op::Insert(format!("c{c}-{call}"))
                }
            }
            Kind::LwwRegister | Kind::MvRegister => Op::Write(Some(format!("c{c}-{call}").into_bytes())),
        }
    }

    fn record_try(&mut self, key: &Key, op: &Op) {
        let t = &mut self.truth;
        match op {
            Op::Add(n) => *t.tried_add.entry(key.clone()).or_default() += *n as i128,
            Op::Subtract(n) => *t.tried_sub.entry(key.clone()).or_default() += *n as i128,
            Op::Insert(e) => {
                t.tried_insert.entry(key.clone()).or_default().insert(e.clone());
                t.elem_ops.entry(key.clone()).or_default().entry(e.clone()).or_default().push((true, false));
            }
            Op::Remove(e) => {
                t.tried_remove.entry(key.clone()).or_default().insert(e.clone());
                t.elem_ops.entry(key.clone()).or_default().entry(e.clone()).or_default().push((false, false));
            }
            _ => {}
        }
    }

    fn on_reply(&mut self, c: usize, call: u64, node: u64, result: Result<CrdtReply, CrdtFailure>) {
        let Some((waiting, _)) = &self.clients[c].waiting else { return };
        if *waiting != call {
            return;
        }
        let (_, asked) = self.clients[c].waiting.take().expect("waiting");
        if let Err(CrdtFailure::NotOwned { .. }) = &result {
            self.report.not_owned += 1;
        }
        if let (Err(CrdtFailure::NotOwned { .. }), Some(Op::Insert(el) | Op::Remove(el))) = (&result, &asked.op) {
            // Refused before anything applied: not an update of the element at all.
            if let Some(ops) = self.truth.elem_ops.get_mut(&asked.key).and_then(|m| m.get_mut(el)) {
                ops.pop();
            }
        }
        let Ok(reply) = result else {
            let next = self.rng.gen_range(1..30) * MS;
            self.at(self.now + next, Ev::ClientStep { client: c });
            return;
        };
        // A barrier read follows its write at once; other steps after a pause (none when
        // measuring throughput).
        let next = if self.cfg.cost.is_some() {
            1
        } else if reply.token.is_empty() {
            self.rng.gen_range(1..30) * MS
        } else {
            self.rng.gen_range(0..3) * MS
        };
        self.at(self.now + next.max(1), Ev::ClientStep { client: c });
        let key = asked.key.clone();
        self.clients[c].tokens.entry(key.clone()).or_default().join(&reply.token);
        if let Some(op) = &asked.op {
            self.report.acked_updates += 1;
            let dot = baton_core::crdt::Dot { replica: node, seq: reply.token.top(node) };
            if !self.truth.acked_dots.insert((key.clone(), dot)) {
                let detail = format!("{}: two acknowledged updates got the dot {dot:?}", key.name);
                self.violation("crdt-dots", detail);
            }
            if self.cfg.cost.is_none() && self.rng.gen_bool(0.2) {
                self.clients[c].follow = Some((key.clone(), node));
            }
            let t = &mut self.truth;
            let cl = &mut self.clients[c];
            match op {
                Op::Add(n) => {
                    *t.acked_add.entry(key.clone()).or_default() += *n as i128;
                    *cl.own_adds.entry(key.clone()).or_default() += *n as i128;
                }
                Op::Subtract(n) => *t.acked_sub.entry(key.clone()).or_default() += *n as i128,
                Op::Insert(e) => {
                    t.acked_insert.entry(key.clone()).or_default().insert(e.clone());
                    cl.own_inserts.entry(key.clone()).or_default().insert(e.clone());
                }
                _ => {}
            }
            if let Op::Insert(e) | Op::Remove(e) = op {
                if let Some(last) = t.elem_ops.get_mut(&key).and_then(|m| m.get_mut(e)).and_then(|v| v.last_mut()) {
                    last.1 = true;
                }
            }
            if matches!(key.kind, Kind::OrSet | Kind::MvRegister) {
                let elem = match op {
                    Op::Insert(e) | Op::Remove(e) => Some(e.clone()),
                    _ => None,
                };
                t.kernel_writes.entry(key.clone()).or_default().push(KernelWrite {
                    dot,
                    seen: reply.token.clone(),
                    elem,
                });
            }
            // A session's writes are ordered: each one's stamp is above any its session saw.
            if let (Kind::LwwRegister, Value::Register { stamp: Some(st), .. }) = (key.kind, &reply.value) {
                let prev = cl.last_stamp.insert(key.clone(), *st);
                if prev.is_some_and(|p| *st <= p) {
                    let detail =
                        format!("{}: a write came back stamped {st:?}, not above the session's {prev:?}", key.name);
                    self.violation("crdt-session", detail);
                }
            }
            return;
        }
        match asked.level {
            Some(ReadLevel::Local) => self.report.reads[0] += 1,
            Some(ReadLevel::Session(_)) => {
                self.report.reads[1] += 1;
                self.check_session(c, &key, &reply.value, node);
            }
            Some(ReadLevel::Converged) => self.report.reads[2] += 1,
            None => {}
        }
    }

    fn nemesis(&mut self) {
        if self.healing() {
            // Lift everything: restart crashed nodes, heal partitions, stop losing messages.
            self.set_loss(0.0);
            self.crash_in_write.clear();
            // Moves under way end now: the heal phase starts from the placement it ends with.
            let moving = std::mem::take(&mut self.moving);
            for (g, owners) in &moving {
                self.group_owners[*g] = owners.clone();
            }
            if !moving.is_empty() {
                self.publish(300);
            }
            self.heal_partition();
            let down: Vec<u64> = self.nodes.iter().filter(|(_, n)| n.replica.is_none()).map(|(id, _)| *id).collect();
            for id in down {
                self.restart(id);
            }
            return;
        }
        let f = self.cfg.faults;
        let mut choices = Vec::new();
        if f.crash {
            choices.push(0);
        }
        if f.partition {
            choices.push(1);
        }
        if f.loss {
            choices.push(2);
        }
        if self.cfg.groups > 1 {
            // Moves are frequent: a range goes away from a node and comes back within a run.
            self.start_move();
        }
        if !choices.is_empty() {
            match choices[self.rng.gen_range(0..choices.len())] {
                0 => {
                    let id = self.rng.gen_range(1..=self.cfg.nodes as u64);
                    if self.rng.gen_bool(0.5) {
                        // With its next write in flight (which is then lost).
                        self.crash_in_write.insert(id);
                    } else {
                        self.crash(id);
                        let back = self.rng.gen_range(300..3_000) * MS;
                        self.at(self.now + back, Ev::Restart { node: id });
                    }
                }
                1 => {
                    let id = self.rng.gen_range(1..=self.cfg.nodes as u64);
                    for other in 1..=self.cfg.nodes as u64 {
                        if other != id {
                            self.cut.insert((id.min(other), id.max(other)));
                        }
                    }
                    let heal = self.rng.gen_range(500..4_000) * MS;
                    self.at(self.now + heal, Ev::HealPartition);
                }
                _ => {
                    let p = if self.loss > 0.0 { 0.0 } else { self.rng.gen_range(0.05..0.5) };
                    self.set_loss(p);
                }
            }
        }
        let next = self.rng.gen_range(300..1_500) * MS;
        let when = (self.now + next).min(self.cfg.fault_ms * MS);
        self.at(when.max(self.now + 1), Ev::Nemesis);
    }

    /// Moves one group's range to 3 other nodes (of a ring): both sets own it until the move
    /// ends (after 1 to 3 s), then the new set alone.
    fn start_move(&mut self) {
        let g = self.rng.gen_range(0..self.group_owners.len());
        if self.moving.contains_key(&g) {
            return;
        }
        let n = self.cfg.nodes as u64;
        let new = ring(self.rng.gen_range(0..n), 3.min(n), n);
        if new == self.group_owners[g] {
            return;
        }
        self.moving.insert(g, new.clone());
        self.report.moves += 1;
        let both: BTreeSet<u64> = self.group_owners[g].iter().chain(&new).copied().collect();
        self.group_owners[g] = both.into_iter().collect();
        self.publish(300);
        let end = self.rng.gen_range(1_000..3_000) * MS;
        self.at(self.now + end, Ev::EndMove { group: g, owners: new });
    }

    /// Node `node` learns placement `version` (unless it knows a later one).
    fn place(&mut self, node: u64, version: usize) {
        let n = self.nodes.get_mut(&node).expect("node");
        if version <= n.placed {
            return;
        }
        n.placed = version;
        let p = self.placements[version - 1].clone();
        if let Some(r) = n.replica.as_mut() {
            r.set_placement(Some(p));
        }
    }

    fn set_loss(&mut self, p: f64) {
        self.loss = p;
    }

    fn heal_partition(&mut self) {
        self.cut.clear();
    }

    fn crash(&mut self, id: u64) {
        let n = self.nodes.get_mut(&id).expect("node");
        if n.replica.is_none() {
            return;
        }
        if let Some(r) = n.replica.take() {
            self.report.handed_off += r.handed_off();
        }
        n.writing = None;
        n.inbox.clear();
        n.calls.clear();
        n.epoch += 1;
        self.report.crashes += 1;
    }

    fn restart(&mut self, id: u64) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        let n = self.nodes.get_mut(&id).expect("node");
        if n.replica.is_some() {
            return;
        }
        let states = n.store.load().expect("memory store");
        let mut r = Replica::new(ReplicaConfig::new(id), ids, states);
        r.set_bugs(self.cfg.bugs);
        // The topology is on the disk of a restarted node (its meta group's log).
        let placed = n.placed;
        r.set_placement((placed > 0).then(|| self.placements[placed - 1].clone()));
        r.set_watched(self.seed % 2 == 1);
        n.replica = Some(r);
        n.heard.clear();
        self.at(self.now + MS, Ev::Tick { node: id });
    }
}

/// `r` of `n` nodes (ids 1..=n) from the `start`-th on, around the ring, in id order.
fn ring(start: u64, r: u64, n: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..r).map(|k| (start + k) % n + 1).collect();
    v.sort_unstable();
    v
}
