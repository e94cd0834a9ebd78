//! The one round loop of a node's runtime, shared by the server, the simulator and the tests.
//!
//! A runtime owns the clock, the disk and the network; a [`Driver`] owns the [`Node`] and the
//! [`Requests`] on it, and decides everything else: how requests are numbered, which clock
//! reading a request or a tick is handled with, what a round is and how many follow a batch of
//! inputs, and in which order the node's outputs reach the runtime. The server and the
//! simulator both drive their nodes only through it, so the simulator runs the production
//! round, not a copy of it (issue 9: the copies had drifted apart).
//!
//! # The loop
//! 1. Feed a batch of inputs: [`Driver::step`] for peers' messages, [`Driver::submit`] for
//!    client requests, [`Driver::tick`] when a tick is due. Requests and ticks take a fresh
//!    clock reading each: a lease read is checked against the reading its request came with.
//! 2. [`Driver::start_rounds`], then [`Driver::next_round`] until it returns `None`. Each round
//!    that returns a [`WriteBatch`] must have it made durable (one fsync) before
//!    [`Driver::written`] is called; the round's messages that may go before the write have
//!    been handed to the [`Effects`] already, the rest follow `written`. A batch of inputs is
//!    followed by at most [`ROUNDS_PER_BATCH`] rounds (finishing one can leave more work: a
//!    snapshot to write, a read round to start); inputs that arrive meanwhile wait for the
//!    next batch, as they wait in the server's channel during an fsync.
//!
//! The server runs the loop synchronously ([`Driver::run_rounds`]); the simulator completes
//! each write after a simulated disk latency, with the same calls in the same order.

use raft::eraftpb::Message;

use crate::disk::{DiskError, LogStore, WriteBatch};
use crate::host::{Answer, Request, Requests};
use crate::node::{Node, NodeError, Output, Role};
use crate::{GroupId, NodeId, RequestId};

/// Most rounds that follow one batch of inputs.
pub const ROUNDS_PER_BATCH: usize = 5;

/// What a runtime does with a node's outputs.
pub trait Effects {
    /// Send a Raft message of `group` to node `to`.
    fn send(&mut self, to: NodeId, group: GroupId, msg: Message);
    /// Deliver the answer to request `id`; false if its caller is gone (the request is then
    /// forgotten: a caller that went away may retry with the same request id).
    fn answer(&mut self, id: RequestId, answer: Result<Answer, NodeError>) -> bool;
    /// The state machine of `group` emitted `event` while applying log `index`.
    fn event(&mut self, group: GroupId, index: u64, seq: u64, hlc: baton_core::Hlc, event: baton_core::Event);
    /// The state machine of `group` was replaced by a snapshot from the leader.
    fn reset(&mut self, group: GroupId, event_seq: u64);
    /// This node's role or known leader in `group` changed.
    fn role(&mut self, group: GroupId, role: Role, leader: Option<NodeId>, term: u64);
    /// Propose `command` to `group` at node `to` on this node's behalf and hand the outcome to
    /// [`Node::forwarded`] under `id` (a slot move's step). A runtime that drops it delays the
    /// move: the step is sent again after a timeout.
    fn forward(&mut self, to: NodeId, id: RequestId, group: GroupId, command: baton_core::Command) {
        let _ = (to, id, group, command);
    }
    /// The outputs handed over since the last call are complete (a runtime that batches
    /// messages per peer sends them now).
    fn flush(&mut self) {}
}

/// Why a round failed. Either is fatal: nothing of the round may be acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum RoundError {
    /// The node failed (an undecodable entry, a corrupt snapshot from the leader...).
    #[error("node failed: {0}")]
    Node(String),
    /// The disk write failed.
    #[error("disk write failed: {0}")]
    Disk(#[from] DiskError),
}

/// A node with the requests on it, driven round by round. See the module docs.
pub struct Driver {
    node: Node,
    requests: Requests,
    outputs: Vec<Output>,
    answers: Vec<(RequestId, Result<Answer, NodeError>)>,
    /// Request ids restart with the process: the node's incarnation tells runs apart.
    next_request: RequestId,
    /// Rounds left after the current batch of inputs.
    rounds_left: usize,
    /// A round's write is out: no new round until it is durable.
    writing: bool,
}

impl Driver {
    /// Drives `node`, whose requests are kept by `requests` (usually `Requests::default()`).
    pub fn new(node: Node, requests: Requests) -> Self {
        Driver {
            node,
            requests,
            outputs: Vec::new(),
            answers: Vec::new(),
            next_request: 0,
            rounds_left: 0,
            writing: false,
        }
    }

    /// The node (status, state machine inspection).
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The node, for inputs the driver has no method for (campaign, leadership transfer).
    pub fn node_mut(&mut self) -> &mut Node {
        &mut self.node
    }

    /// A message from a peer.
    pub fn step(&mut self, group: GroupId, msg: Message) {
        self.node.step(group, msg);
    }

    /// A tick of every group, handled with the clock reading `(mono_ms, wall_ms)`.
    pub fn tick(&mut self, mono_ms: u64, wall_ms: u64) {
        self.node.set_time(mono_ms, wall_ms);
        self.node.tick();
        self.requests.expire(mono_ms, &mut self.answers);
    }

    /// A client request for `group` (`None`: the group serving its name, by this node's map),
    /// handled with the clock reading `(mono_ms, wall_ms)` taken for it; returns the id its
    /// answer will carry.
    pub fn submit(&mut self, group: Option<GroupId>, request: Request, mono_ms: u64, wall_ms: u64) -> RequestId {
        self.submit_for(group, request, None, mono_ms, wall_ms)
    }

    /// [`Driver::submit`] for `user` (authentication on): a request naming a session that is
    /// not that user's is refused (see [`Node::propose_for`], [`Node::read_for`]).
    pub fn submit_for(
        &mut self,
        group: Option<GroupId>,
        request: Request,
        user: Option<baton_core::command::Principal>,
        mono_ms: u64,
        wall_ms: u64,
    ) -> RequestId {
        self.node.set_time(mono_ms, wall_ms);
        self.next_request += 1;
        let id = self.next_request;
        self.requests.submit(&mut self.node, group, id, request, user, mono_ms, &mut self.answers);
        id
    }

    /// Forgets a request whose caller went away.
    pub fn forget(&mut self, id: RequestId) {
        self.requests.forget(id);
    }

    /// A batch of inputs is in: the rounds that follow it may start.
    pub fn start_rounds(&mut self) {
        self.rounds_left = ROUNDS_PER_BATCH;
    }

    /// Runs rounds until one has a write to make durable (returned) or the rounds after this
    /// batch of inputs are done (`None`: take the next batch of inputs).
    pub fn next_round(&mut self, fx: &mut impl Effects) -> Result<Option<WriteBatch>, RoundError> {
        assert!(!self.writing, "a round started while the previous write was out");
        while self.rounds_left > 0 {
            self.rounds_left -= 1;
            let batch = self.node.ready().map_err(RoundError::Node)?;
            self.dispatch(fx);
            if !batch.is_empty() {
                self.writing = true;
                return Ok(Some(batch));
            }
            self.finish_round(fx)?;
        }
        Ok(None)
    }

    /// The write returned by [`Driver::next_round`] is durable: finish that round.
    pub fn written(&mut self, fx: &mut impl Effects) -> Result<(), RoundError> {
        assert!(self.writing, "written() without a write out");
        self.writing = false;
        self.finish_round(fx)
    }

    /// Runs the rounds of one batch of inputs with a synchronous store (the server's loop).
    pub fn run_rounds<S: LogStore>(&mut self, store: &mut S, fx: &mut impl Effects) -> Result<(), RoundError> {
        self.start_rounds();
        while let Some(batch) = self.next_round(fx)? {
            store.write(&batch)?;
            self.written(fx)?;
        }
        Ok(())
    }

    fn finish_round(&mut self, fx: &mut impl Effects) -> Result<(), RoundError> {
        self.node.persisted().map_err(RoundError::Node)?;
        self.dispatch(fx);
        if !self.node.has_ready() {
            self.rounds_left = 0;
        }
        Ok(())
    }

    /// Hands the node's outputs to the runtime, answers included, in the order they came.
    fn dispatch(&mut self, fx: &mut impl Effects) {
        self.node.drain_outputs_into(&mut self.outputs);
        let mut outputs = std::mem::take(&mut self.outputs);
        for out in outputs.drain(..) {
            self.requests.handle(&out, &mut self.answers);
            match out {
                Output::Send { to, group, msg } => fx.send(to, group, msg),
                Output::Event { group, index, seq, hlc, event } => fx.event(group, index, seq, hlc, event),
                Output::Reset { group, event_seq } => fx.reset(group, event_seq),
                Output::RoleChanged { group, role, leader, term } => fx.role(group, role, leader, term),
                Output::Forward { to, id, group, command } => fx.forward(to, id, group, command),
                Output::Reply { .. } => {}
            }
        }
        self.outputs = outputs;
        // Drained, not taken: the buffer's allocation is kept for the next round.
        let mut answers = std::mem::take(&mut self.answers);
        for (id, mut answer) in answers.drain(..) {
            if let Err(NodeError::Rejected(baton_core::Error::NotOwned { slot, group, .. })) = &answer {
                // Say where the name is served now, so that the client goes straight there.
                answer = Err(self.node.moved(*slot, *group));
            }
            if !fx.answer(id, answer) {
                self.requests.forget(id);
            }
        }
        self.answers = answers;
        fx.flush();
    }
}
