//! The simulated nodes: each is the production round loop (`baton_node::Driver`) with its own
//! clock and in-memory disk; inputs wait while a round's write is out, as they wait in the
//! server's channel during an fsync.

use super::*;

/// The "client" that operator requests (slot moves) come from: answers are only traced.
pub(super) const ADMIN: usize = usize::MAX;

/// What travels between nodes: Raft messages of every group, and slot moves' forwarded steps
/// with their answers (the server's peer `Forward` call).
#[derive(Clone, Debug)]
pub(super) enum PeerMsg {
    Raft(GroupId, RaftMessage),
    Forward { id: RequestId, group: GroupId, command: baton_core::Command },
    Forwarded { id: RequestId, result: Result<baton_core::Outcome, NodeError> },
}

pub(super) enum Input {
    Peer(u64, PeerMsg),
    Request { client: usize, creq: u64, group: Option<GroupId>, request: Request },
    Tick,
}

pub(super) struct SimNode {
    /// The running process: the production round loop around the node (`None`: crashed).
    pub(super) driver: Option<Driver>,
    pub(super) store: MemStore,
    pub(super) clock: Clock,
    pub(super) epoch: u64,
    /// The write of the round in flight (the process is inside its fsync).
    pub(super) writing: Option<WriteBatch>,
    pub(super) paused: bool,
    pub(super) inbox: VecDeque<Input>,
    pub(super) answer_to: BTreeMap<RequestId, (usize, u64)>,
    /// Forwarded steps this node proposes for another: its request id -> (asking node, its id).
    pub(super) forwarded_for: BTreeMap<RequestId, (u64, RequestId)>,
    pub(super) disk_ms: (u64, u64),
}

/// What a node's rounds produced, for the world to carry out.
#[derive(Default)]
pub(super) struct Dispatched {
    sends: Vec<(u64, PeerMsg)>,
    replies: Vec<(usize, NodeReply)>,
    events: Vec<(GroupId, u64, u64, Event)>,
    notes: Vec<String>,
    resets: usize,
    leader: bool,
}

/// The simulator's [`Effects`]: collects the outputs (answers go to the client that asked).
pub(super) struct Collected<'a> {
    answer_to: &'a mut BTreeMap<RequestId, (usize, u64)>,
    forwarded_for: &'a mut BTreeMap<RequestId, (u64, RequestId)>,
    out: Dispatched,
}

impl<'a> Collected<'a> {
    pub(super) fn new(
        answer_to: &'a mut BTreeMap<RequestId, (usize, u64)>,
        forwarded_for: &'a mut BTreeMap<RequestId, (u64, RequestId)>,
    ) -> Self {
        Collected { answer_to, forwarded_for, out: Dispatched::default() }
    }

    pub(super) fn done(self) -> Dispatched {
        self.out
    }
}

impl Effects for Collected<'_> {
    fn send(&mut self, to: u64, group: GroupId, msg: RaftMessage) {
        self.out.sends.push((to, PeerMsg::Raft(group, msg)));
    }

    fn forward(&mut self, to: u64, id: RequestId, group: GroupId, command: baton_core::Command) {
        self.out.sends.push((to, PeerMsg::Forward { id, group, command }));
    }

    fn answer(&mut self, id: RequestId, result: Result<Answer, NodeError>) -> bool {
        if let Some((origin, origin_id)) = self.forwarded_for.remove(&id) {
            let result = result.and_then(|a| match a {
                Answer::Applied(outcome) => Ok(outcome),
                other => Err(NodeError::Unavailable(format!("unexpected answer {other:?}"))),
            });
            self.out.sends.push((origin, PeerMsg::Forwarded { id: origin_id, result }));
            return true;
        }
        let Some((client, creq)) = self.answer_to.remove(&id) else { return false };
        self.out.replies.push((client, NodeReply::Answer { creq, result }));
        true
    }

    fn event(&mut self, group: GroupId, index: u64, seq: u64, _hlc: baton_core::Hlc, event: Event) {
        self.out.events.push((group, index, seq, event));
    }

    fn reset(&mut self, _group: GroupId, _event_seq: u64) {
        self.out.resets += 1;
    }

    fn role(&mut self, _group: GroupId, role: Role, leader: Option<u64>, term: u64) {
        self.out.notes.push(format!("{role:?} in term {term}, leader {leader:?}"));
        self.out.leader |= role == Role::Leader;
    }
}

impl World {
    pub(super) fn start_node(&mut self, id: u64) {
        let seed = self.rng.gen();
        let mut config = NodeConfig::new(id, (1..=self.cfg.nodes as u64).collect());
        config.snapshot_entries = self.snapshot_entries;
        config.seed = seed;
        config.bugs = self.cfg.bugs;
        config.lease_read_ms = self.cfg.lease_read_ms;
        let n = self.nodes.get_mut(&id).expect("node");
        config.incarnation = n.store.next_incarnation().expect("memory store writes");
        if n.store.snapshot_index(DATA_GROUP) > 0 {
            self.coverage.restarts_from_snapshot += 1;
        }
        let voters: Vec<u64> = (1..=self.cfg.nodes as u64).collect();
        let groups = baton_node::start_groups(
            &n.store,
            id,
            &voters,
            self.cfg.groups,
            self.cfg.replication,
            true,
            &config.limits,
        )
        .expect("memory store reads");
        let (mut node, boot) = Node::new(config, groups).expect("node starts");
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

    pub(super) fn crash_node(&mut self, id: u64) {
        self.hist.flush(id, self.now);
        let n = self.nodes.get_mut(&id).expect("node");
        n.driver = None;
        // A write in flight is torn: the store's contract (raft-engine checksums every batch;
        // see EngineStore's tests) is that a torn batch is found and dropped whole at the next
        // start, never applied in part. It was not acknowledged: answers wait for the fsync.
        let torn = n.writing.take().is_some();
        n.inbox.clear();
        n.answer_to.clear();
        n.forwarded_for.clear();
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

    pub(super) fn input(&mut self, id: u64, input: Input) {
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
    pub(super) fn apply(&mut self, id: u64, input: Input) {
        let n = self.nodes.get_mut(&id).expect("node");
        let local = n.clock.local_ms(self.now);
        let driver = n.driver.as_mut().expect("running");
        match input {
            Input::Peer(_, PeerMsg::Raft(group, msg)) => driver.step(group, msg),
            Input::Peer(from, PeerMsg::Forward { id, group, command }) => {
                // As the server's peer Forward call: only a move's steps.
                if matches!(command, baton_core::Command::HandOff { .. } | baton_core::Command::TakeOver { .. }) {
                    let rid = driver.submit(Some(group), Request::Propose(command), local, local);
                    n.forwarded_for.insert(rid, (from, id));
                }
            }
            Input::Peer(_, PeerMsg::Forwarded { id, result }) => driver.node_mut().forwarded(id, result),
            Input::Tick => driver.tick(local, local),
            Input::Request { client, creq, group, request } => {
                // With users, as the server stamps an authenticated request: for the client's
                // own user (see `SimClient::client_id`).
                let user = self.cfg.users.then(|| baton_core::command::Principal {
                    name: format!("u{client}").into(),
                    quota: Default::default(),
                });
                let rid = driver.submit_for(group, request, user, local, local);
                n.answer_to.insert(rid, (client, creq));
            }
        }
    }

    /// The rounds that follow a batch of inputs (the production loop of `baton_node::Driver`),
    /// until one has a write to make durable: the disk completes it later.
    pub(super) fn rounds(&mut self, id: u64) {
        let n = self.nodes.get_mut(&id).expect("node");
        let Some(driver) = n.driver.as_mut() else { return };
        if n.writing.is_some() || n.paused {
            return;
        }
        driver.start_rounds();
        self.next_round(id);
    }

    pub(super) fn next_round(&mut self, id: u64) {
        let n = self.nodes.get_mut(&id).expect("node");
        let Some(driver) = n.driver.as_mut() else { return };
        let mut fx = Collected::new(&mut n.answer_to, &mut n.forwarded_for);
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

    pub(super) fn disk_done(&mut self, id: u64, epoch: u64) {
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
        let mut fx = Collected::new(&mut n.answer_to, &mut n.forwarded_for);
        driver.written(&mut fx).expect("node round");
        let fx = fx.done();
        self.carry_out(id, fx);
        self.next_round(id);
    }

    /// Takes every queued input at once (as the real runtime drains its channel), then rounds.
    pub(super) fn drain(&mut self, id: u64) {
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
    pub(super) fn carry_out(&mut self, id: u64, fx: Dispatched) {
        for (group, index, seq, event) in fx.events {
            if let Event::SlotsMoved { from, .. } = &event {
                // Once per hand-off, not once per replica that applies it.
                if *from == group && self.handoffs_seen.insert((group, index)) {
                    self.coverage.slot_moves += 1;
                }
            }
            self.hist.applied(id, group, index, seq, event, self.now);
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
            if matches!(msg, PeerMsg::Raft(baton_node::NODE_CHANNEL, _)) {
                self.coverage.sleep_notices += 1;
            }
            self.send(id, to, msg);
        }
        for (client, reply) in fx.replies {
            if client == ADMIN {
                let NodeReply::Answer { result, .. } = &reply;
                if matches!(result, Ok(Answer::Applied(baton_core::Outcome::MembersChanged { changed: true, .. }))) {
                    self.coverage.members_changed += 1;
                }
                self.trace(format!("node {id} answers the operator: {reply:?}"));
                continue;
            }
            self.send_to_client(id, client, reply);
        }
    }
}
