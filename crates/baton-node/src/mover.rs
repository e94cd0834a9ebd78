//! Driving slot moves: the node that leads the meta group carries each move the meta group has
//! begun through its steps (see [`baton_core::moves`]).
//!
//! 1. `HandOff` in the source group, which answers with the bundle of the range's state;
//! 2. `TakeOver` of that bundle in the destination group;
//! 3. `FinishMove` in the meta group: the map gives the slots to the destination.
//!
//! One move at a time, in move id order, one step in flight. A step goes to the leader of its
//! group: proposed here if this node leads it, else handed to the runtime as an
//! [`Output::Forward`] for that node, whose answer comes back through [`Node::forwarded`]. A step
//! that fails or goes unanswered for [`STEP_TIMEOUT_MS`] is sent again after [`RETRY_MS`]; every
//! step is idempotent per move id, so repeating one is harmless. Nothing about the progress is
//! kept but in this node's memory: a new meta leader starts each pending move from its first
//! step again, and the source answers a repeated hand-off with the bundle it made the first time.
//!
//! # Caveats
//! - Between the hand-off and the take-over nobody serves the range: requests for it are
//!   refused with `Moved` and clients retry. The window is one round trip to the destination's
//!   leader, longer if that leader is not reachable.

use std::collections::BTreeMap;

use baton_core::moves::SlotBundle;
use baton_core::{Command, Outcome, META_GROUP};

use crate::node::{Node, NodeError, Output, Reply, Role};
use crate::{GroupId, NodeId, RequestId};

/// A step not answered within this long is sent again.
pub const STEP_TIMEOUT_MS: u64 = 5_000;
/// The pause before a failed step is sent again.
pub const RETRY_MS: u64 = 200;
/// Request ids of the mover's own proposals: a range no runtime and no group uses.
pub(crate) const MOVER: RequestId = 1 << 61;

/// Where a move is.
#[derive(Clone, Debug)]
enum Progress {
    HandOff,
    TakeOver(Box<SlotBundle>),
    Finish,
}

/// The step in flight.
#[derive(Debug)]
struct Step {
    id: RequestId,
    move_id: u64,
    group: GroupId,
    deadline_ms: u64,
}

/// The meta leader's mover state (in memory only; see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Mover {
    progress: BTreeMap<u64, Progress>,
    in_flight: Option<Step>,
    next_id: u64,
    /// No step before this time (after a failure).
    quiet_until_ms: u64,
    /// Leaders named by the refusals of earlier steps, tried before this node's own view (which
    /// may be stale, or missing: a group's replicas live on some of the members only).
    hints: BTreeMap<GroupId, NodeId>,
}

impl Mover {
    /// True if `id` is one of the mover's requests.
    pub(crate) fn owns(id: RequestId) -> bool {
        id & MOVER != 0 && id & (1 << 63) == 0 && id & (1 << 62) == 0
    }
}

impl Node {
    /// Sends the next step of the first pending move, if this node leads the meta group and no
    /// step is in flight. Called on every tick.
    pub(crate) fn drive_moves(&mut self) {
        let now = self.mono_ms;
        let leading_meta = self.groups.get(&META_GROUP).is_some_and(|g| g.role() == Role::Leader);
        let pending: Vec<(u64, GroupId, GroupId)> = match self.topology() {
            Some(t) if leading_meta => t.moves.iter().map(|(id, m)| (*id, m.from, m.to)).collect(),
            _ => Vec::new(),
        };
        if pending.is_empty() {
            self.mover = Mover::default();
            return;
        }
        self.mover.progress.retain(|id, _| pending.iter().any(|(p, _, _)| p == id));
        if let Some(step) = &self.mover.in_flight {
            if now < step.deadline_ms {
                return;
            }
            // Unanswered: whoever a hint named may be gone.
            let group = step.group;
            self.mover.hints.remove(&group);
            self.mover.in_flight = None;
        }
        if now < self.mover.quiet_until_ms {
            return;
        }
        let (move_id, from, to) = pending[0];
        let progress = self.mover.progress.entry(move_id).or_insert(Progress::HandOff).clone();
        let (group, command) = match progress {
            Progress::HandOff => {
                let t = self.topology().expect("pending moves come from the topology");
                let m = &t.moves[&move_id];
                (from, Command::HandOff { move_id, start: m.start, end: m.end, to })
            }
            Progress::TakeOver(bundle) => (to, Command::TakeOver { bundle }),
            Progress::Finish => (META_GROUP, Command::FinishMove { move_id }),
        };
        self.mover.next_id += 1;
        let id = MOVER | self.mover.next_id;
        self.mover.in_flight = Some(Step { id, move_id, group, deadline_ms: now + STEP_TIMEOUT_MS });
        let local = self.groups.get(&group).is_some_and(|g| g.role() == Role::Leader && g.is_member());
        let me = self.config.id;
        let remote = self
            .mover
            .hints
            .get(&group)
            .copied()
            .filter(|n| *n != me)
            .or_else(|| self.leader(group))
            .or_else(|| self.topology().and_then(|t| t.preferred_leader(group)).filter(|n| *n != me));
        if local {
            self.propose(group, id, command);
        } else if let Some(to) = remote {
            self.outputs.push(Output::Forward { to, id, group, command });
        } else {
            // No leader known for the group yet: try again shortly.
            self.mover.in_flight = None;
            self.mover.quiet_until_ms = now + RETRY_MS;
        }
    }

    /// The answer to a forwarded step (see [`Output::Forward`]).
    pub fn forwarded(&mut self, id: RequestId, result: Result<Outcome, NodeError>) {
        self.step_done(id, result);
    }

    /// Takes the mover's own replies out of the outputs.
    pub(crate) fn take_mover_replies(&mut self) {
        if self.mover.in_flight.is_none() {
            return;
        }
        let mine: Vec<Output> =
            self.outputs.extract_if(.., |o| matches!(o, Output::Reply { id, .. } if Mover::owns(*id))).collect();
        for o in mine {
            if let Output::Reply { id, result } = o {
                let result = result.and_then(|r| match r {
                    Reply::Applied { outcome, .. } => Ok(outcome),
                    other => Err(NodeError::Unavailable(format!("unexpected reply to a move step: {other:?}"))),
                });
                self.step_done(id, result);
            }
        }
    }

    fn step_done(&mut self, id: RequestId, result: Result<Outcome, NodeError>) {
        let Some(step) = self.mover.in_flight.take_if(|s| s.id == id) else { return };
        let next = match result {
            Ok(Outcome::HandedOff { bundle }) => Progress::TakeOver(bundle),
            Ok(Outcome::TookOver { .. }) => Progress::Finish,
            Ok(Outcome::MoveFinished { .. }) => {
                self.mover.progress.remove(&step.move_id);
                return;
            }
            Ok(other) => {
                tracing::warn!(move_id = step.move_id, "unexpected outcome of a move step: {other:?}");
                self.mover.quiet_until_ms = self.mono_ms + RETRY_MS;
                return;
            }
            Err(e) => {
                tracing::debug!(move_id = step.move_id, "move step failed, trying again: {e}");
                match e {
                    NodeError::NotLeader { group, leader: Some(l) } => self.mover.hints.insert(group, l),
                    NodeError::NotLeader { group, leader: None } => self.mover.hints.remove(&group),
                    _ => None,
                };
                self.mover.quiet_until_ms = self.mono_ms + RETRY_MS;
                return;
            }
        };
        self.mover.progress.insert(step.move_id, next);
    }
}
