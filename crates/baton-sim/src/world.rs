//! The simulated world: nodes, disks, network, clocks, the nemesis, and the event loop.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use baton_core::{Bugs, Command, Event};
use baton_node::{
    Answer, Driver, Effects, GroupId, LogStore, MemStore, Node, NodeConfig, NodeError, RaftMessage, Request, RequestId,
    Requests, Role, WriteBatch, DATA_GROUP,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::check::{History, Time, Violation};
use crate::client::{ClientMsg, Clock, NodeReply, SimClient};

const MS: Time = 1_000;

/// Which faults the nemesis may inject.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Drop messages.
    pub loss: bool,
    /// Deliver some messages twice.
    pub duplicate: bool,
    /// Occasional long delays (which also reorder).
    pub delay: bool,
    /// Network partitions: majority/minority, isolated leader, one-way, bridge.
    pub partition: bool,
    /// Node crashes (losing what was not fsynced) and restarts; client crashes.
    pub crash: bool,
    /// Node pauses (a GC-like freeze), some longer than the session TTL.
    pub pause: bool,
    /// Clocks run at different rates, and node clocks jump forward (within the configured bounds).
    pub clock: bool,
    /// Slow fsyncs.
    pub disk: bool,
}

impl Faults {
    /// Every fault.
    pub fn all() -> Faults {
        Faults {
            loss: true,
            duplicate: true,
            delay: true,
            partition: true,
            crash: true,
            pause: true,
            clock: true,
            disk: true,
        }
    }

    /// Parses `all`, `none`, or a comma-separated list of fault names.
    pub fn parse(s: &str) -> Result<Faults, String> {
        match s {
            "all" => return Ok(Faults::all()),
            "none" => return Ok(Faults::default()),
            _ => {}
        }
        let mut f = Faults::default();
        for name in s.split(',').map(str::trim) {
            match name {
                "loss" => f.loss = true,
                "duplicate" => f.duplicate = true,
                "delay" => f.delay = true,
                "partition" => f.partition = true,
                "crash" => f.crash = true,
                "pause" => f.pause = true,
                "clock" => f.clock = true,
                "disk" => f.disk = true,
                other => {
                    return Err(format!(
                        "unknown fault {other:?} (known: loss, duplicate, delay, partition, crash, pause, clock, disk, all, none)"
                    ))
                }
            }
        }
        Ok(f)
    }
}

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
}

enum Ev {
    Tick(u64, u64),
    Deliver {
        from: u64,
        to: u64,
        msg: RaftMessage,
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
}

enum Input {
    Step(RaftMessage),
    Request { client: usize, creq: u64, request: Request },
    Tick,
}

struct SimNode {
    /// The running process: the production round loop around the node (`None`: crashed).
    driver: Option<Driver>,
    store: MemStore,
    clock: Clock,
    epoch: u64,
    /// The write of the round in flight (the process is inside its fsync).
    writing: Option<WriteBatch>,
    paused: bool,
    inbox: VecDeque<Input>,
    answer_to: BTreeMap<RequestId, (usize, u64)>,
    disk_ms: (u64, u64),
}

/// What a node's rounds produced, for the world to carry out.
#[derive(Default)]
struct Dispatched {
    sends: Vec<(u64, RaftMessage)>,
    replies: Vec<(usize, NodeReply)>,
    events: Vec<(u64, u64, Event)>,
    notes: Vec<String>,
    resets: usize,
    leader: bool,
}

/// The simulator's [`Effects`]: collects the outputs (answers go to the client that asked).
struct Collected<'a> {
    answer_to: &'a mut BTreeMap<RequestId, (usize, u64)>,
    out: Dispatched,
}

impl<'a> Collected<'a> {
    fn new(answer_to: &'a mut BTreeMap<RequestId, (usize, u64)>) -> Self {
        Collected { answer_to, out: Dispatched::default() }
    }

    fn done(self) -> Dispatched {
        self.out
    }
}

impl Effects for Collected<'_> {
    fn send(&mut self, to: u64, _group: GroupId, msg: RaftMessage) {
        self.out.sends.push((to, msg));
    }

    fn answer(&mut self, id: RequestId, result: Result<Answer, NodeError>) -> bool {
        let Some((client, creq)) = self.answer_to.remove(&id) else { return false };
        self.out.replies.push((client, NodeReply::Answer { creq, result }));
        true
    }

    fn event(&mut self, _group: GroupId, index: u64, seq: u64, _hlc: baton_core::Hlc, event: Event) {
        self.out.events.push((index, seq, event));
    }

    fn reset(&mut self, _group: GroupId, _event_seq: u64) {
        self.out.resets += 1;
    }

    fn role(&mut self, _group: GroupId, role: Role, leader: Option<u64>, term: u64) {
        self.out.notes.push(format!("{role:?} in term {term}, leader {leader:?}"));
        self.out.leader |= role == Role::Leader;
    }
}

struct World {
    cfg: SimConfig,
    rng: ChaCha8Rng,
    now: Time,
    seq: u64,
    queue: BinaryHeap<Reverse<(Time, u64, usize)>>,
    events: BTreeMap<usize, Ev>,
    next_event: usize,
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
    loss: f64,
    duplicate: f64,
    spike: f64,
    healed: bool,
    leader: Option<u64>,
    trace_hash: u64,
    trace: VecDeque<String>,
    steps: u64,
}

/// True for the requests a client may send twice (it resends them after a timeout, and the two
/// can race): reads, and writes that carry their own identity or change nothing when repeated.
/// A counter add or a register write is never resent by a client (its outcome is reported as
/// unknown instead), so the network does not duplicate it either: TCP does not.
fn repeatable(msg: &ClientMsg) -> bool {
    let ClientMsg::Request { request, .. } = msg;
    match request {
        Request::Read(_) | Request::Acquire(_) => true,
        Request::Propose(command) => !matches!(
            command,
            Command::CounterAdd { .. }
                | Command::CounterCas { .. }
                | Command::RegisterSet { .. }
                | Command::LatchSet { .. }
                | Command::LatchCountDown { .. }
        ),
    }
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
        for id in 1..=cfg.nodes as u64 {
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
                    disk_ms: (0, 1),
                },
            );
        }
        let mut clients = Vec::new();
        for i in 0..cfg.clients {
            let clock = Clock { offset_ms: rng.gen_range(0..10_000_000), rate_ppm: drift(&mut rng) };
            clients.push(SimClient::new(i, clock, cfg.nodes, cfg.names, cfg.ttl_ms, cfg.bugs));
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
            seq: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_event: 0,
            nodes,
            clients,
            wake_gen: vec![0; n],
            hist: History::default(),
            blocked: BTreeSet::new(),
            cut_clients: BTreeSet::new(),
            crash_mid_write: BTreeSet::new(),
            snapshot_entries,
            coverage: Coverage::default(),
            loss,
            duplicate,
            spike,
            healed: false,
            leader: None,
            trace_hash: 0xcbf2_9ce4_8422_2325,
            trace: VecDeque::new(),
            steps: 0,
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
        self.seq += 1;
        let id = self.next_event;
        self.next_event += 1;
        self.events.insert(id, ev);
        self.queue.push(Reverse((t, self.seq, id)));
    }

    fn run(&mut self) {
        for id in 1..=self.cfg.nodes as u64 {
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
        let end_faults = self.cfg.fault_ms * MS;
        let end = end_faults + self.cfg.heal_ms * MS;
        self.at(end_faults, Ev::Heal);
        while let Some(Reverse((t, _, id))) = self.queue.pop() {
            if t > end {
                break;
            }
            self.now = t;
            self.steps += 1;
            let ev = self.events.remove(&id).expect("event exists");
            self.handle(ev);
        }
        self.now = end;
        let mut clients = std::mem::take(&mut self.clients);
        for c in &mut clients {
            c.check_liveness(end, &mut self.hist);
            c.finish(end, &mut self.hist);
        }
        self.clients = clients;
        self.hist.check_end(end);
    }

    fn report(mut self, seed: u64) -> SimReport {
        let violations = std::mem::take(&mut self.hist.violations);
        for v in &violations {
            self.trace(format!("VIOLATION {}: {}", v.property, v.detail));
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
                    self.input(to, Input::Step(msg));
                }
            }
            Ev::ToNode { node, client, msg } => {
                let ClientMsg::Request { creq, request } = msg;
                let input = Input::Request { client, creq, request };
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

    /// Virtual time for `ms` of node-local time.
    fn node_interval(&self, id: u64, ms: u64) -> Time {
        let rate = self.nodes[&id].clock.rate_ppm;
        ((ms * MS) as i128 * 1_000_000 / (1_000_000 + rate as i128)) as Time
    }

    fn start_node(&mut self, id: u64) {
        let seed = self.rng.gen();
        let mut config = NodeConfig::new(id, (1..=self.cfg.nodes as u64).collect());
        config.snapshot_entries = self.snapshot_entries;
        config.seed = seed;
        config.bugs = self.cfg.bugs;
        config.lease_read_ms = self.cfg.lease_read_ms;
        let n = self.nodes.get_mut(&id).expect("node");
        config.incarnation = n.store.next_incarnation().expect("memory store writes");
        let recovered = n.store.recover(DATA_GROUP).expect("memory store reads");
        if recovered.as_ref().is_some_and(|r| r.snapshot.get_metadata().index > 0) {
            self.coverage.restarts_from_snapshot += 1;
        }
        let (mut node, boot) = Node::new(config, vec![(DATA_GROUP, recovered)]).expect("node starts");
        n.store.write(&boot).expect("memory store writes");
        node.set_time(n.clock.local_ms(self.now), n.clock.local_ms(self.now));
        n.driver = Some(Driver::new(node, Requests::with_bugs(self.cfg.bugs)));
        n.epoch += 1;
        n.paused = false;
        let epoch = n.epoch;
        self.trace(format!("node {id} starts"));
        let first = self.node_interval(id, self.cfg.tick_ms);
        self.at(self.now + first, Ev::Tick(id, epoch));
    }

    fn crash_node(&mut self, id: u64) {
        self.hist.flush(id, self.now);
        let n = self.nodes.get_mut(&id).expect("node");
        n.driver = None;
        // A write in flight is torn: the store's contract (raft-engine checksums every batch;
        // see EngineStore's tests) is that a torn batch is found and dropped whole at the next
        // start, never applied in part. It was not acknowledged: answers wait for the fsync.
        let torn = n.writing.take().is_some();
        n.inbox.clear();
        n.answer_to.clear();
        n.epoch += 1;
        n.paused = false;
        self.coverage.crashes += 1;
        if torn {
            self.coverage.torn_writes += 1;
            self.trace(format!("node {id} crashes in the middle of a write (dropped at restart)"));
        } else {
            self.trace(format!("node {id} crashes"));
        }
    }

    fn input(&mut self, id: u64, input: Input) {
        let n = self.nodes.get_mut(&id).expect("node");
        if n.driver.is_none() {
            return;
        }
        if n.paused || n.writing.is_some() {
            if matches!(input, Input::Tick) && n.inbox.iter().any(|i| matches!(i, Input::Tick)) {
                return; // a busy runtime runs one late tick, not all the missed ones
            }
            n.inbox.push_back(input);
            return;
        }
        self.apply(id, input);
        self.rounds(id);
    }

    /// Hands one input to the node's driver, with the node's clock reading now.
    fn apply(&mut self, id: u64, input: Input) {
        let n = self.nodes.get_mut(&id).expect("node");
        let local = n.clock.local_ms(self.now);
        let driver = n.driver.as_mut().expect("running");
        match input {
            Input::Step(msg) => driver.step(DATA_GROUP, msg),
            Input::Tick => driver.tick(local, local),
            Input::Request { client, creq, request } => {
                let rid = driver.submit(DATA_GROUP, request, local, local);
                n.answer_to.insert(rid, (client, creq));
            }
        }
    }

    /// The rounds that follow a batch of inputs (the production loop of `baton_node::Driver`),
    /// until one has a write to make durable: the disk completes it later.
    fn rounds(&mut self, id: u64) {
        let n = self.nodes.get_mut(&id).expect("node");
        let Some(driver) = n.driver.as_mut() else { return };
        if n.writing.is_some() || n.paused {
            return;
        }
        driver.start_rounds();
        self.next_round(id);
    }

    fn next_round(&mut self, id: u64) {
        let n = self.nodes.get_mut(&id).expect("node");
        let Some(driver) = n.driver.as_mut() else { return };
        let mut fx = Collected::new(&mut n.answer_to);
        let batch = driver.next_round(&mut fx).expect("node round");
        let fx = fx.done();
        self.carry_out(id, fx);
        let Some(batch) = batch else {
            // The rounds of this batch are done: inputs that came meanwhile are the next batch.
            return self.drain(id);
        };
        let n = self.nodes.get_mut(&id).expect("node");
        let (lo, hi) = n.disk_ms;
        n.writing = Some(batch);
        let epoch = n.epoch;
        let lat = self.rng.gen_range(lo * MS + 50..=hi * MS + 200);
        self.at(self.now + lat, Ev::DiskDone(id, epoch));
        if self.crash_mid_write.remove(&id) {
            self.at(self.now + lat / 2, Ev::Recrash(id));
        }
    }

    fn disk_done(&mut self, id: u64, epoch: u64) {
        let n = self.nodes.get_mut(&id).expect("node");
        if n.epoch != epoch {
            return;
        }
        if n.paused {
            // The fsync finishes while the process is frozen; it resumes afterwards.
            let t = self.now + MS;
            self.at(t, Ev::DiskDone(id, epoch));
            return;
        }
        let batch = n.writing.take().expect("a write in flight");
        n.store.write(&batch).expect("memory store writes");
        for g in batch.groups.iter().filter(|g| g.snapshot.is_some()) {
            if g.replace_log {
                self.coverage.snapshots_installed += 1;
            } else {
                self.coverage.snapshots_taken += 1;
            }
        }
        let n = self.nodes.get_mut(&id).expect("node");
        let driver = n.driver.as_mut().expect("running");
        let mut fx = Collected::new(&mut n.answer_to);
        driver.written(&mut fx).expect("node round");
        let fx = fx.done();
        self.carry_out(id, fx);
        self.next_round(id);
    }

    /// Takes every queued input at once (as the real runtime drains its channel), then rounds.
    fn drain(&mut self, id: u64) {
        let n = self.nodes.get_mut(&id).expect("node");
        if n.writing.is_some() || n.paused || n.driver.is_none() || n.inbox.is_empty() {
            // A round is in flight (the node is inside its fsync): inputs wait for it, as they
            // wait in the real runtime's channel.
            return;
        }
        let inputs: Vec<Input> = n.inbox.drain(..).collect();
        for input in inputs {
            self.apply(id, input);
        }
        self.rounds(id);
    }

    /// Carries out what a node's round produced: history, trace, messages, replies.
    fn carry_out(&mut self, id: u64, fx: Dispatched) {
        for (index, seq, event) in fx.events {
            self.hist.applied(id, index, seq, event, self.now);
        }
        for _ in 0..fx.resets {
            self.hist.flush(id, self.now);
            self.trace(format!("node {id} installs a snapshot"));
        }
        if fx.leader {
            self.leader = Some(id);
        }
        for note in fx.notes {
            self.trace(format!("node {id}: {note}"));
        }
        for (to, msg) in fx.sends {
            self.send(id, to, msg);
        }
        for (client, reply) in fx.replies {
            self.send_to_client(id, client, reply);
        }
    }

    fn latency(&mut self) -> Time {
        let mut t = self.rng.gen_range(100..1_000);
        if self.spike > 0.0 && self.rng.gen_bool(self.spike) {
            t += self.rng.gen_range(50..500) * MS;
        }
        t
    }

    fn send(&mut self, from: u64, to: u64, msg: RaftMessage) {
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

    fn up_nodes(&self) -> Vec<u64> {
        self.nodes.iter().filter(|(_, n)| n.driver.is_some()).map(|(id, _)| *id).collect()
    }

    fn nemesis(&mut self) {
        let f = self.cfg.faults;
        let mut choices = Vec::new();
        if f.partition {
            if self.cfg.nodes >= 3 {
                choices.extend(["split", "isolate-leader", "one-way", "bridge"]);
            }
            choices.extend(["cut-client", "heal-network"]);
        }
        if f.crash {
            choices.extend(["crash", "crash-leader", "crash-loop-leader", "crash-mid-write", "crash-client"]);
        }
        if f.pause {
            choices.extend(["pause", "pause-client"]);
        }
        if f.disk {
            choices.push("slow-disk");
        }
        if f.clock && self.cfg.max_jump_ms > 0 {
            choices.extend(["clock-jump", "client-clock-jump"]);
        }
        if choices.is_empty() {
            return;
        }
        let choice = choices[self.rng.gen_range(0..choices.len())];
        let ids: Vec<u64> = (1..=self.cfg.nodes as u64).collect();
        match choice {
            "split" => {
                self.blocked.clear();
                let minority = self.rng.gen_range(1..=(ids.len() - 1) / 2);
                let mut shuffled = ids.clone();
                for i in (1..shuffled.len()).rev() {
                    let j = self.rng.gen_range(0..=i);
                    shuffled.swap(i, j);
                }
                let (small, big) = shuffled.split_at(minority);
                self.cut(small, big, true);
                self.trace(format!("nemesis: partition {small:?} | {big:?}"));
            }
            "isolate-leader" => {
                if let Some(l) = self.leader {
                    self.blocked.clear();
                    let others: Vec<u64> = ids.iter().copied().filter(|&i| i != l).collect();
                    self.cut(&[l], &others, true);
                    self.trace(format!("nemesis: isolate leader {l}"));
                }
            }
            "one-way" => {
                let a = ids[self.rng.gen_range(0..ids.len())];
                let others: Vec<u64> = ids.iter().copied().filter(|&i| i != a).collect();
                self.cut(&[a], &others, false);
                self.trace(format!("nemesis: node {a} cannot send to anyone"));
            }
            "bridge" => {
                // Two halves that only one node (the bridge) can talk to.
                self.blocked.clear();
                let bridge = ids[self.rng.gen_range(0..ids.len())];
                let rest: Vec<u64> = ids.iter().copied().filter(|&i| i != bridge).collect();
                let (a, b) = rest.split_at(rest.len() / 2);
                self.cut(a, b, true);
                self.trace(format!("nemesis: bridge {bridge} between {a:?} and {b:?}"));
            }
            "cut-client" => {
                // A client that cannot reach some nodes (the leader, often): it must move on.
                let c = self.rng.gen_range(0..self.clients.len());
                let mut cut = Vec::new();
                for &id in &ids {
                    if Some(id) == self.leader || self.rng.gen_bool(0.3) {
                        self.cut_clients.insert((c, id));
                        cut.push(id);
                    }
                }
                self.trace(format!("nemesis: client {c} cannot reach nodes {cut:?}"));
            }
            "crash-mid-write" => {
                let up = self.up_nodes();
                let target = self.leader.filter(|l| up.contains(l)).or_else(|| up.first().copied());
                if let Some(id) = target {
                    self.crash_mid_write.insert(id);
                    self.trace(format!("nemesis: node {id} will crash in the middle of its next write"));
                }
            }
            "heal-network" => {
                self.blocked.clear();
                self.cut_clients.clear();
                self.trace("nemesis: network healed".into());
            }
            "crash" | "crash-leader" => {
                let up = self.up_nodes();
                let target = if choice == "crash-leader" { self.leader.filter(|l| up.contains(l)) } else { None }
                    .or_else(|| (!up.is_empty()).then(|| up[self.rng.gen_range(0..up.len())]));
                if let Some(id) = target {
                    self.crash_node(id);
                    let back = self.rng.gen_range(200..4_000) * MS;
                    self.at(self.now + back, Ev::Restart(id));
                }
            }
            "crash-loop-leader" => {
                // A leader that crashes, comes back at once (often with entries nobody else has,
                // so it may win again), and crashes again soon: few requests between its
                // starts, so request ids of one run meet those of the next.
                if let Some(id) = self.leader.filter(|l| self.nodes[l].driver.is_some()) {
                    self.crash_node(id);
                    let back = self.rng.gen_range(50..500) * MS;
                    self.at(self.now + back, Ev::Restart(id));
                    for _ in 0..self.rng.gen_range(1..4) {
                        let again = self.rng.gen_range(500..3_000) * MS;
                        self.at(self.now + again, Ev::Recrash(id));
                    }
                }
            }
            "crash-client" => {
                let c = self.rng.gen_range(0..self.clients.len());
                if self.clients[c].alive {
                    self.clients[c].crash(self.now, &mut self.hist);
                    self.trace(format!("nemesis: client {c} crashes"));
                    let back = self.rng.gen_range(500..5_000) * MS;
                    self.at(self.now + back, Ev::RestartClient(c));
                }
            }
            "pause" => {
                let up = self.up_nodes();
                if !up.is_empty() {
                    let id = up[self.rng.gen_range(0..up.len())];
                    let ms = self.rng.gen_range(100..self.cfg.ttl_ms * 2);
                    let n = self.nodes.get_mut(&id).expect("node");
                    n.paused = true;
                    let epoch = n.epoch;
                    self.trace(format!("nemesis: pause node {id} for {ms} ms"));
                    self.at(self.now + ms * MS, Ev::Resume(id, epoch));
                }
            }
            "pause-client" => {
                // A client process frozen (GC, SIGSTOP), sometimes past its session's TTL: its
                // lease must run out on its own clock, and what it held be handed on.
                let c = self.rng.gen_range(0..self.clients.len());
                let ms = self.rng.gen_range(100..self.cfg.ttl_ms * 2);
                self.clients[c].pause(self.now + ms * MS);
                self.trace(format!("nemesis: client {c} pauses for {ms} ms"));
                self.client_step(c, None);
            }
            "client-clock-jump" => {
                let c = self.rng.gen_range(0..self.clients.len());
                let ms = self.rng.gen_range(1..=self.cfg.max_jump_ms);
                self.clients[c].jump_clock(ms);
                self.trace(format!("nemesis: client {c}'s clock jumps {ms} ms forward"));
            }
            "slow-disk" => {
                let id = ids[self.rng.gen_range(0..ids.len())];
                let slow = (self.rng.gen_range(5..50), self.rng.gen_range(50..200));
                self.nodes.get_mut(&id).expect("node").disk_ms = slow;
                self.trace(format!("nemesis: slow disk on node {id}: {slow:?} ms"));
            }
            "clock-jump" => {
                let id = ids[self.rng.gen_range(0..ids.len())];
                let ms = self.rng.gen_range(1..=self.cfg.max_jump_ms);
                self.nodes.get_mut(&id).expect("node").clock.offset_ms += ms;
                self.trace(format!("nemesis: node {id}'s clock jumps {ms} ms forward"));
            }
            _ => unreachable!("unknown nemesis choice"),
        }
    }

    fn cut(&mut self, a: &[u64], b: &[u64], both_ways: bool) {
        for &x in a {
            for &y in b {
                self.blocked.insert((x, y));
                if both_ways {
                    self.blocked.insert((y, x));
                }
            }
        }
    }

    fn heal(&mut self) {
        self.healed = true;
        self.blocked.clear();
        self.cut_clients.clear();
        self.crash_mid_write.clear();
        self.loss = 0.0;
        self.duplicate = 0.0;
        self.spike = 0.0;
        self.trace("heal: all faults lifted".into());
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            let n = self.nodes.get_mut(&id).expect("node");
            n.disk_ms = (0, 1);
            if n.driver.is_none() {
                self.start_node(id);
            } else if n.paused {
                n.paused = false;
                self.drain(id);
            }
        }
        for c in 0..self.clients.len() {
            if !self.clients[c].alive {
                self.clients[c].restart(self.now);
                self.client_step(c, None);
            }
        }
    }
}
