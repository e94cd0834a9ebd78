//! The simulated world: nodes, disks, network, clocks, the nemesis, and the event loop.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use baton_core::topology::ETCD_GROUP;
use baton_core::{Bugs, Event};
use baton_node::{
    Answer, Driver, Effects, GroupId, LogStore, MemStore, Node, NodeConfig, NodeError, RaftMessage, Request, RequestId,
    Requests, Role, WriteBatch, DATA_GROUP,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::check::{History, Time, Violation};
use crate::client::{ClientMsg, Clock, NodeReply, SimClient};

mod nemesis;
mod nodes;

pub use nemesis::Faults;
use nodes::{Input, SimNode, ADMIN};

const MS: Time = 1_000;

/// The shape of one simulated run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Nodes in the cluster (3, 5 or 7).
    pub nodes: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Distinct lock names the clients use.
    pub names: usize,
    /// Length of the fault phase (ms of virtual time).
    pub fault_ms: u64,
    /// Length of the heal phase that follows (ms).
    pub heal_ms: u64,
    /// Enabled faults.
    pub faults: Faults,
    /// Deliberate bugs (broken variants).
    pub bugs: Bugs,
    /// Session TTL used by clients (ms).
    pub ttl_ms: u64,
    /// Raft tick (ms).
    pub tick_ms: u64,
    /// Largest clock-rate difference from true time, in ppm (drift bound).
    pub max_drift_ppm: i64,
    /// Largest forward jump of a node's clock, in ms (jump bound). Together with the drift bound
    /// it must stay within the client's lease margin (TTL/10), or mutual exclusion can break.
    pub max_jump_ms: u64,
    /// Snapshot after this many applied entries; 0: drawn per run from 10..=100, so that every
    /// run snapshots, restarts from snapshots and sends them to lagging followers.
    pub snapshot_entries: u64,
    /// Keep the whole trace (otherwise only its hash and the last lines).
    pub keep_trace: bool,
    /// Leader-lease reads (`NodeConfig::lease_read_ms`; 0 = every read takes a ReadIndex round).
    pub lease_read_ms: u64,
    /// Data groups the cluster starts with.
    pub groups: u64,
    /// Nodes beyond the founders, started as joiners (`baton server --join`): the nemesis adds
    /// them to the cluster and removes members, under every fault.
    pub spares: usize,
    /// Replicas per data group (with more nodes than this, each group lives on a subset).
    pub replication: usize,
    /// Each client a user of its own (authentication on): its requests carry its user, its
    /// sessions are its user's, and now and then it tries to close another client's session,
    /// which must be refused (the `ownership` checker).
    pub users: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 3,
            clients: 5,
            names: 5,
            fault_ms: 20_000,
            heal_ms: 15_000,
            faults: Faults::all(),
            bugs: Bugs::default(),
            ttl_ms: 2_000,
            tick_ms: 100,
            max_drift_ppm: 20_000,
            max_jump_ms: 100,
            snapshot_entries: 0,
            keep_trace: false,
            lease_read_ms: 0,
            groups: 1,
            spares: 0,
            replication: baton_core::topology::DEFAULT_REPLICATION,
            users: false,
        }
    }
}

/// The result of one run.
#[derive(Debug)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// What broke (empty: nothing).
    pub violations: Vec<Violation>,
    /// Hash of the whole trace (equal for equal runs).
    pub trace_hash: u64,
    /// The trace: complete with `keep_trace`, else its last lines.
    pub trace: Vec<String>,
    /// Grants clients received.
    pub grants: usize,
    /// Simulated events processed.
    pub steps: u64,
    /// What the run went through, to show that the faults and paths were exercised.
    pub coverage: Coverage,
}

/// Counts of the paths one run exercised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Snapshots a node took of its own state.
    pub snapshots_taken: u64,
    /// Snapshots a node installed from its leader (it had fallen behind the leader's log).
    pub snapshots_installed: u64,
    /// Node starts from a stored snapshot (a restart after at least one snapshot).
    pub restarts_from_snapshot: u64,
    /// Node crashes.
    pub crashes: u64,
    /// Writes torn by a crash in the middle of them (found and dropped at the restart).
    pub torn_writes: u64,
    /// Slot ranges handed off by a group (a move's first step applied).
    pub slot_moves: u64,
    /// Members added or removed (the meta group applied the change).
    pub members_changed: u64,
    /// Notices that a leader's groups sleep (hibernation), sent from node to node.
    pub sleep_notices: u64,
    /// Writes to the etcd keyspace that changed it and were acknowledged.
    pub etcd_writes: u64,
    /// Changes of the etcd keyspace the watchers were sent.
    pub etcd_watched: u64,
    /// Runs whose keyspace was compacted (1 or 0), and watchers told to start over by one.
    pub etcd_compacted: u64,
    pub etcd_watch_restarts: u64,
    /// Revision ranges the run's record of the keyspace missed (compacted first; not checked).
    pub etcd_record_gaps: u64,
}

enum Ev {
    Tick(u64, u64),
    Deliver {
        from: u64,
        to: u64,
        msg: nodes::PeerMsg,
    },
    ToNode {
        node: u64,
        client: usize,
        msg: ClientMsg,
    },
    ToClient {
        client: usize,
        reply: NodeReply,
    },
    DiskDone(u64, u64),
    Wake(usize, u64),
    Resume(u64, u64),
    Restart(u64),
    /// Crash this node again if it is up (a crash loop), then restart it soon.
    Recrash(u64),
    RestartClient(usize),
    Nemesis,
    /// Crash a follower for long enough that it needs a snapshot to catch up.
    LagFollower,
    /// Restart the lagging follower once the leader's snapshot is past its log (or at the
    /// last try).
    RestartLagging {
        id: u64,
        tries: u32,
    },
    Heal,
    /// Watcher `w` of the etcd keyspace reads what is new on some node's replica.
    EtcdWatch(usize),
}

/// Watchers of the etcd keyspace per run.
const ETCD_WATCHERS: usize = 2;

struct World {
    cfg: SimConfig,
    rng: ChaCha8Rng,
    now: Time,
    timeline: crate::timeline::Timeline<Ev>,
    nodes: BTreeMap<u64, SimNode>,
    clients: Vec<SimClient>,
    wake_gen: Vec<u64>,
    hist: History,
    /// Directed links that drop everything.
    blocked: BTreeSet<(u64, u64)>,
    /// Client-node pairs that cannot reach each other (both ways).
    cut_clients: BTreeSet<(usize, u64)>,
    /// Nodes to crash in the middle of their next write.
    crash_mid_write: BTreeSet<u64>,
    /// This run's snapshot interval.
    snapshot_entries: u64,
    coverage: Coverage,
    /// Hand-offs applied somewhere: (group, log index).
    handoffs_seen: BTreeSet<(u64, u64)>,
    loss: f64,
    duplicate: f64,
    spike: f64,
    healed: bool,
    leader: Option<u64>,
    trace_hash: u64,
    trace: VecDeque<String>,
    steps: u64,
    /// Each etcd watcher's current segment in `hist.etcd_watchers` (a watcher told its next
    /// revision was compacted starts a new one).
    etcd_segments: Vec<usize>,
    /// The keyspace's history as recorded during the run from the most advanced replica up
    /// (before compactions take it away), the revision it reaches, and the revisions it
    /// missed (compacted before it was recorded).
    etcd_record: Vec<(i64, baton_core::etcd::KeyEvent)>,
    etcd_recorded_through: i64,
    etcd_record_gaps: Vec<(i64, i64)>,
}

/// True for the requests a client may send twice (it resends them after a timeout, and the two
/// can race), by the client's own rule (`baton_client::core::Op::repeat`): a write that must not
/// apply twice is never resent (its outcome is reported as unknown instead), so the network
/// does not duplicate it either: TCP does not.
fn repeatable(msg: &ClientMsg) -> bool {
    let ClientMsg::Request { op, .. } = msg;
    op.repeat() != baton_client::core::Repeat::Once
}

/// Runs one seed.
pub fn run(cfg: &SimConfig, seed: u64) -> SimReport {
    let mut w = World::new(cfg.clone(), seed);
    w.run();
    w.report(seed)
}

impl World {
    fn new(cfg: SimConfig, seed: u64) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let snapshot_entries = if cfg.snapshot_entries == 0 { rng.gen_range(10..=100) } else { cfg.snapshot_entries };
        let mut nodes = BTreeMap::new();
        let drift = |rng: &mut ChaCha8Rng| {
            if cfg.faults.clock {
                rng.gen_range(-cfg.max_drift_ppm..=cfg.max_drift_ppm)
            } else {
                0
            }
        };
        for id in 1..=(cfg.nodes + cfg.spares) as u64 {
            let clock = Clock { offset_ms: rng.gen_range(0..10_000_000), rate_ppm: drift(&mut rng) };
            nodes.insert(
                id,
                SimNode {
                    driver: None,
                    store: MemStore::default(),
                    clock,
                    epoch: 0,
                    writing: None,
                    paused: false,
                    inbox: VecDeque::new(),
                    answer_to: BTreeMap::new(),
                    forwarded_for: BTreeMap::new(),
                    disk_ms: (0, 1),
                },
            );
        }
        let mut clients = Vec::new();
        for i in 0..cfg.clients {
            let clock = Clock { offset_ms: rng.gen_range(0..10_000_000), rate_ppm: drift(&mut rng) };
            let voters: Vec<u64> = (1..=cfg.nodes as u64).collect();
            let topology = baton_core::Topology::initial_with(&voters, cfg.groups, cfg.replication, true);
            // The client knows every node (as the real one learns them from the topology).
            let all = cfg.nodes + cfg.spares;
            let mut client = SimClient::new(i, clock, all, cfg.names, cfg.ttl_ms, cfg.bugs, &topology);
            client.users = cfg.users;
            clients.push(client);
        }
        let (loss, duplicate, spike) = (
            if cfg.faults.loss { 0.02 } else { 0.0 },
            if cfg.faults.duplicate { 0.01 } else { 0.0 },
            if cfg.faults.delay { 0.01 } else { 0.0 },
        );
        let n = clients.len();
        World {
            cfg,
            rng,
            now: 0,
            timeline: crate::timeline::Timeline::new(),
            nodes,
            clients,
            wake_gen: vec![0; n],
            hist: History::default(),
            blocked: BTreeSet::new(),
            cut_clients: BTreeSet::new(),
            crash_mid_write: BTreeSet::new(),
            snapshot_entries,
            coverage: Coverage::default(),
            handoffs_seen: BTreeSet::new(),
            loss,
            duplicate,
            spike,
            healed: false,
            leader: None,
            trace_hash: 0xcbf2_9ce4_8422_2325,
            trace: VecDeque::new(),
            steps: 0,
            etcd_segments: Vec::new(),
            etcd_record: Vec::new(),
            etcd_recorded_through: 1,
            etcd_record_gaps: Vec::new(),
        }
    }

    fn trace(&mut self, line: String) {
        let line = format!("{:>9.3}s {line}", self.now as f64 / 1e6);
        for b in line.bytes().chain(std::iter::once(b'\n')) {
            self.trace_hash = (self.trace_hash ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        self.trace.push_back(line);
        if !self.cfg.keep_trace && self.trace.len() > 300 {
            self.trace.pop_front();
        }
    }

    fn at(&mut self, t: Time, ev: Ev) {
        self.timeline.at(t, ev);
    }

    fn run(&mut self) {
        for id in 1..=(self.cfg.nodes + self.cfg.spares) as u64 {
            self.start_node(id);
        }
        for c in 0..self.clients.len() {
            let t = self.rng.gen_range(0..500) * MS;
            self.at(t, Ev::Wake(c, 0));
        }
        if self.cfg.faults != Faults::default() {
            self.at(1_000 * MS, Ev::Nemesis);
        }
        if self.cfg.faults.crash && self.cfg.nodes >= 3 {
            // Every run has a follower that falls behind by more than a snapshot: early in the
            // heal phase (when the others surely make progress) it is down for 2-4 s, and must
            // catch up from a snapshot its leader sends. A minority down does not stop
            // progress, and the run goes on fault-free for 9 s after it returns.
            let at = self.cfg.fault_ms * MS + self.rng.gen_range(500..1_500) * MS;
            self.at(at, Ev::LagFollower);
        }
        for w in 0..ETCD_WATCHERS {
            // Each starts from the keyspace's first revision (1: nothing before it).
            self.etcd_segments.push(self.hist.etcd_watchers.len());
            self.hist.etcd_watchers.push(crate::check::EtcdWatcher { start: 1, through: 0, seen: Vec::new() });
            let t = self.rng.gen_range(0..500) * MS;
            self.at(t, Ev::EtcdWatch(w));
        }
        let end_faults = self.cfg.fault_ms * MS;
        let end = end_faults + self.cfg.heal_ms * MS;
        self.at(end_faults, Ev::Heal);
        while let Some((t, ev)) = self.timeline.pop() {
            if t > end {
                break;
            }
            self.now = t;
            self.steps += 1;
            self.handle(ev);
        }
        self.now = end;
        let mut clients = std::mem::take(&mut self.clients);
        for c in &mut clients {
            c.check_liveness(end, &mut self.hist);
            c.finish(end, &mut self.hist);
        }
        self.clients = clients;
        self.etcd_truth(end);
        self.hist.check_end(end);
    }

    fn report(mut self, seed: u64) -> SimReport {
        self.coverage.etcd_writes =
            self.hist.etcd_ops.iter().filter(|o| o.write.is_some() && o.changed && o.completed.is_some()).count()
                as u64;
        self.coverage.etcd_watched = self.hist.etcd_watchers.iter().map(|w| w.seen.len() as u64).sum();
        self.coverage.etcd_compacted = u64::from(!self.hist.etcd_compactions_asked.is_empty());
        self.coverage.etcd_record_gaps = self.hist.etcd_truth.as_ref().map_or(0, |t| t.gaps.len() as u64);
        self.coverage.etcd_watch_restarts = (self.hist.etcd_watchers.len() - self.etcd_segments.len()) as u64;
        let violations = std::mem::take(&mut self.hist.violations);
        for v in &violations {
            self.trace(format!("VIOLATION {}: {}", v.property, v.detail));
        }
        if !violations.is_empty() && self.cfg.keep_trace {
            self.dump_state();
        }
        SimReport {
            seed,
            violations,
            trace_hash: self.trace_hash,
            trace: self.trace.into_iter().collect(),
            grants: self.hist.received.len(),
            steps: self.steps,
            coverage: self.coverage,
        }
    }

    /// Every node's groups and every client's call at the end of a failed run, for its trace.
    fn dump_state(&mut self) {
        let mut lines = Vec::new();
        for (id, n) in &self.nodes {
            let Some(d) = n.driver.as_ref() else {
                lines.push(format!("state: node {id} is down"));
                continue;
            };
            let node = d.node();
            if let Some(t) = node.topology() {
                lines.push(format!(
                    "state: node {id}: topology v{}, members {:?}, moves {:?}",
                    t.version,
                    t.nodes.keys().collect::<Vec<_>>(),
                    t.moves
                ));
                for (g, p) in &t.groups {
                    lines.push(format!("state: node {id}:   placement of group {g}: replicas {:?}", p.replicas));
                }
            }
            for s in node.status() {
                lines.push(format!(
                    "state: node {id}: group {} {:?} term {} leader {:?} commit {} applied {} slots {:?}",
                    s.id, s.role, s.term, s.leader, s.commit, s.applied, s.slots
                ));
            }
        }
        for c in &self.clients {
            lines.push(format!("state: {}", c.describe()));
        }
        for l in lines {
            self.trace(l);
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Tick(id, epoch) => {
                let n = &self.nodes[&id];
                if n.epoch != epoch || n.driver.is_none() {
                    return;
                }
                self.input(id, Input::Tick);
                let next = self.node_interval(id, self.cfg.tick_ms);
                self.at(self.now + next, Ev::Tick(id, epoch));
            }
            Ev::Deliver { from, to, msg } => {
                if !self.blocked.contains(&(from, to)) {
                    self.input(to, Input::Peer(from, msg));
                }
            }
            Ev::ToNode { node, client, msg } => {
                let ClientMsg::Request { creq, group, request, .. } = msg;
                let input = Input::Request { client, creq, group, request };
                self.input(node, input);
            }
            Ev::ToClient { client, reply } => self.client_step(client, Some(reply)),
            Ev::Wake(client, gen) => {
                if self.wake_gen[client] == gen {
                    self.client_step(client, None);
                }
            }
            Ev::DiskDone(id, epoch) => self.disk_done(id, epoch),
            Ev::Resume(id, epoch) => {
                let n = self.nodes.get_mut(&id).expect("node");
                if n.epoch == epoch && n.paused {
                    n.paused = false;
                    self.trace(format!("node {id} resumes"));
                    self.drain(id);
                }
            }
            Ev::Restart(id) => {
                if self.nodes[&id].driver.is_none() {
                    self.start_node(id);
                }
            }
            Ev::Recrash(id) => {
                if !self.healed && self.nodes[&id].driver.is_some() {
                    self.trace(format!("nemesis: node {id} crashes again (crash loop)"));
                    self.crash_node(id);
                    let back = self.rng.gen_range(50..500) * MS;
                    self.at(self.now + back, Ev::Restart(id));
                }
            }
            Ev::RestartClient(c) => {
                if !self.clients[c].alive {
                    self.clients[c].restart(self.now);
                    self.trace(format!("client {c} restarts"));
                    self.client_step(c, None);
                }
            }
            Ev::Nemesis => {
                if !self.healed {
                    self.nemesis();
                    let next = self.rng.gen_range(500..3_000) * MS;
                    self.at(self.now + next, Ev::Nemesis);
                }
            }
            Ev::Heal => self.heal(),
            Ev::EtcdWatch(w) => {
                self.etcd_record();
                self.etcd_watch(w);
                // Now and then a watcher is slow for seconds, long enough for a compaction to
                // pass it.
                let next =
                    if self.rng.gen_bool(0.1) { self.rng.gen_range(2_000..5_000) } else { self.rng.gen_range(50..300) };
                let next = next * MS;
                self.at(self.now + next, Ev::EtcdWatch(w));
            }
            Ev::RestartLagging { id, tries } => {
                let behind = self.nodes[&id].store.last_index(DATA_GROUP);
                let compacted = self.nodes.values().map(|n| n.store.snapshot_index(DATA_GROUP)).max().unwrap_or(0);
                if compacted > behind || tries == 0 {
                    if self.nodes[&id].driver.is_none() {
                        self.start_node(id);
                    }
                } else {
                    self.at(self.now + 500 * MS, Ev::RestartLagging { id, tries: tries - 1 });
                }
            }
            Ev::LagFollower => {
                let followers: Vec<u64> = self
                    .nodes
                    .iter()
                    .filter(|(_, n)| n.driver.as_ref().is_some_and(|d| d.node().status()[0].role == Role::Follower))
                    .map(|(id, _)| *id)
                    .collect();
                if !followers.is_empty() {
                    let id = followers[self.rng.gen_range(0..followers.len())];
                    self.trace(format!("nemesis: follower {id} goes down long enough to need a snapshot"));
                    self.crash_node(id);
                    self.at(self.now + 1_000 * MS, Ev::RestartLagging { id, tries: 8 });
                }
            }
        }
    }

    /// The state machine of the etcd keyspace's group on node `id`, if it is up and holds one.
    fn etcd_replica(&self, id: u64) -> Option<&baton_core::StateMachine> {
        let sm = self.nodes[&id].driver.as_ref()?.node().replica(ETCD_GROUP)?;
        sm.etcd().map(|_| sm)
    }

    /// Watcher `w` reads what is new from the replica of a node that is up, as the server's
    /// watch serves a watcher from its own node's replica (`StateMachine::etcd_changes_from`);
    /// from one read to the next it may be another node (a client reconnecting elsewhere from
    /// the revision after its last event). Told its next revision was compacted, it starts
    /// over from that replica's current revision (a client re-reading the keys and watching
    /// on), in a new segment.
    fn etcd_watch(&mut self, w: usize) {
        use baton_core::etcd::ChangesFrom;
        let up: Vec<u64> = self.nodes.keys().copied().filter(|id| self.etcd_replica(*id).is_some()).collect();
        if up.is_empty() {
            return;
        }
        let id = up[self.rng.gen_range(0..up.len())];
        let segment = self.etcd_segments[w];
        let from = self.hist.etcd_watchers[segment].through + 1;
        let sm = self.etcd_replica(id).expect("chosen among those up");
        let read = sm.etcd_changes_from(from, 50).expect("holds the keyspace");
        match read {
            ChangesFrom::Changes { changes, through } => {
                let watcher = &mut self.hist.etcd_watchers[segment];
                watcher.seen.extend(changes);
                watcher.through = watcher.through.max(through);
            }
            ChangesFrom::Compacted(rev) => {
                let current = sm.etcd().map_or(rev, |e| e.revision());
                self.check_compaction_asked(rev, id);
                self.trace(format!(
                    "etcd watcher {w}: revision {from} compacted (at {rev}) on node {id}; from {}",
                    current + 1
                ));
                self.etcd_segments[w] = self.hist.etcd_watchers.len();
                self.hist.etcd_watchers.push(crate::check::EtcdWatcher {
                    start: current + 1,
                    through: current,
                    seen: Vec::new(),
                });
            }
        }
    }

    /// A replica may only be compacted as far as some client asked.
    fn check_compaction_asked(&mut self, compacted: i64, id: u64) {
        if compacted > 1 && !self.hist.etcd_compactions_asked.contains(&compacted) {
            self.hist.violations.push(crate::check::Violation {
                property: "etcd",
                detail: format!("node {id}'s keyspace is compacted at {compacted}, which no client asked for"),
                at: self.now,
            });
        }
    }

    /// Records what the most advanced live replica of the keyspace has beyond what is recorded
    /// (its raw history, not the watch path under test), before a compaction can take it.
    fn etcd_record(&mut self) {
        use baton_core::etcd::ChangesFrom;
        let most = self
            .nodes
            .keys()
            .copied()
            .filter_map(|id| Some((self.etcd_replica(id)?.etcd()?.revision(), id)))
            .max_by_key(|(rev, id)| (*rev, std::cmp::Reverse(*id)));
        let Some((_, id)) = most else { return };
        let store = self.etcd_replica(id).and_then(|sm| sm.etcd()).expect("chosen above");
        let from = self.etcd_recorded_through + 1;
        let (changes, through, gap) = match store.changes_from(from, usize::MAX) {
            ChangesFrom::Changes { changes, through } => (changes, through, None),
            ChangesFrom::Compacted(c) => match store.changes_from(c, usize::MAX) {
                ChangesFrom::Changes { changes, through } => (changes, through, Some((from, c - 1, c))),
                ChangesFrom::Compacted(_) => return,
            },
        };
        if let Some((start, end, c)) = gap {
            self.check_compaction_asked(c, id);
            self.etcd_record_gaps.push((start, end));
            // The changes at `c` itself may be recorded already (if `c` was reached before).
        }
        let recorded = self.etcd_recorded_through;
        self.etcd_record.extend(changes.into_iter().filter(|(r, _)| *r > recorded));
        self.etcd_recorded_through = recorded.max(through);
    }

    /// The etcd keyspace as the most advanced replica has it; every other replica's history
    /// must agree with it where both still have it (agreement of the keyspace's histories).
    fn etcd_truth(&mut self, now: Time) {
        use baton_core::etcd::{ChangesFrom, RangeRequest};
        // Per node: its id, its replica's revision, compaction and history since it.
        type Replica = (u64, i64, i64, Vec<(i64, baton_core::etcd::KeyEvent)>);
        let mut histories: Vec<Replica> = Vec::new();
        let mut base = Vec::new();
        let mut most_rev = i64::MIN;
        for id in self.nodes.keys().copied().collect::<Vec<_>>() {
            // The history itself (not through the watch path, which a planted bug may break).
            if let Some(store) = self.etcd_replica(id).and_then(|sm| sm.etcd()) {
                let compacted = store.mvcc().compacted().max(1);
                if let ChangesFrom::Changes { changes, .. } = store.changes_from(compacted, usize::MAX) {
                    if store.revision() > most_rev {
                        most_rev = store.revision();
                        // The keys as they were at the compaction: what the kept history starts from.
                        let all = RangeRequest {
                            key: vec![0],
                            range_end: vec![0],
                            revision: compacted,
                            ..Default::default()
                        };
                        base = store.range(&all).map(|r| r.kvs).unwrap_or_default();
                    }
                    histories.push((id, store.revision(), compacted, changes));
                }
            }
        }
        let Some((most, _, compacted, truth)) =
            histories.iter().max_by_key(|(id, rev, _, _)| (*rev, std::cmp::Reverse(*id))).cloned()
        else {
            return;
        };
        for (id, rev, their_compacted, h) in &histories {
            let from = compacted.max(*their_compacted);
            let window = |v: &Vec<(i64, baton_core::etcd::KeyEvent)>| -> Vec<(i64, baton_core::etcd::KeyEvent)> {
                v.iter().filter(|(r, _)| *r >= from && *r <= *rev).cloned().collect()
            };
            let (theirs, ours) = (window(h), window(&truth));
            let same = |a: &(i64, baton_core::etcd::KeyEvent), b: &(i64, baton_core::etcd::KeyEvent)| {
                crate::check::same_change(a, b, |r| r == from)
            };
            if theirs.len() != ours.len() || !theirs.iter().zip(&ours).all(|(a, b)| same(a, b)) {
                let at =
                    theirs.iter().zip(&ours).position(|(a, b)| !same(a, b)).unwrap_or(theirs.len().min(ours.len()));
                self.hist.violations.push(crate::check::Violation {
                    property: "agreement",
                    detail: format!(
                        "node {id}'s etcd keyspace history (revisions {from}..={rev}, compacted at {their_compacted}) \
                         differs from node {most}'s (compacted at {compacted}) at change {at}: {:?} vs {:?}",
                        theirs.get(at),
                        ours.get(at)
                    ),
                    at: now,
                });
            }
        }
        self.check_compaction_asked(compacted, most);
        // The record must agree with the final history where both have it, and what the record
        // lacks at the end comes from the final history.
        self.etcd_record();
        let record = std::mem::take(&mut self.etcd_record);
        let recorded_window: Vec<&(i64, baton_core::etcd::KeyEvent)> =
            record.iter().filter(|(r, _)| *r >= compacted).collect();
        let final_window: Vec<&(i64, baton_core::etcd::KeyEvent)> =
            truth.iter().filter(|(r, _)| *r <= self.etcd_recorded_through).collect();
        let agree = recorded_window.len() == final_window.len()
            && recorded_window
                .iter()
                .zip(&final_window)
                .all(|(a, b)| crate::check::same_change(a, b, |r| r == compacted));
        if !agree {
            self.hist.violations.push(crate::check::Violation {
                property: "agreement",
                detail: format!(
                    "the keyspace history recorded during the run differs from node {most}'s at the end (revisions {compacted}..)"
                ),
                at: now,
            });
        }
        let _ = base;
        self.hist.etcd_truth =
            Some(crate::check::EtcdTruth { gaps: std::mem::take(&mut self.etcd_record_gaps), changes: record });
    }

    /// Virtual time for `ms` of node-local time.
    fn node_interval(&self, id: u64, ms: u64) -> Time {
        let rate = self.nodes[&id].clock.rate_ppm;
        ((ms * MS) as i128 * 1_000_000 / (1_000_000 + rate as i128)) as Time
    }

    fn latency(&mut self) -> Time {
        let mut t = self.rng.gen_range(100..1_000);
        if self.spike > 0.0 && self.rng.gen_bool(self.spike) {
            t += self.rng.gen_range(50..500) * MS;
        }
        t
    }

    fn send(&mut self, from: u64, to: u64, msg: nodes::PeerMsg) {
        if self.blocked.contains(&(from, to)) || (self.loss > 0.0 && self.rng.gen_bool(self.loss)) {
            return;
        }
        if self.duplicate > 0.0 && self.rng.gen_bool(self.duplicate) {
            let t = self.now + self.latency();
            self.at(t, Ev::Deliver { from, to, msg: msg.clone() });
        }
        let t = self.now + self.latency();
        self.at(t, Ev::Deliver { from, to, msg });
    }

    fn send_to_client(&mut self, from: u64, client: usize, reply: NodeReply) {
        if self.cut_clients.contains(&(client, from)) || (self.loss > 0.0 && self.rng.gen_bool(self.loss)) {
            return;
        }
        let t = self.now + self.latency();
        self.at(t, Ev::ToClient { client, reply });
    }

    fn client_step(&mut self, c: usize, reply: Option<NodeReply>) {
        let end = (self.cfg.fault_ms + self.cfg.heal_ms) * MS;
        let accept = self.now + 5_000 * MS < end;
        let (fx, wake) = self.clients[c].step(self.now, reply, accept, &mut self.rng, &mut self.hist);
        for line in fx.trace {
            self.trace(line);
        }
        for (node, msg) in fx.sends {
            if self.cut_clients.contains(&(c, node)) || (self.loss > 0.0 && self.rng.gen_bool(self.loss)) {
                continue;
            }
            if self.duplicate > 0.0 && repeatable(&msg) && self.rng.gen_bool(self.duplicate) {
                // The same request twice (a resend racing the original), each with its own delay.
                let t = self.now + self.latency();
                self.at(t, Ev::ToNode { node, client: c, msg: msg.clone() });
            }
            let t = self.now + self.latency();
            self.at(t, Ev::ToNode { node, client: c, msg });
        }
        if wake != Time::MAX {
            self.wake_gen[c] += 1;
            let gen = self.wake_gen[c];
            self.at(wake, Ev::Wake(c, gen));
        }
    }
}
