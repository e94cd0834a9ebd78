//! One Raft group on this node: raft-rs, the state machine, the leader's lease table.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use baton_core::{Command, Entry, Event, SessionId, StateMachine};
use raft::eraftpb::{ConfChange, ConfChangeV2, EntryType, Message, MessageType, Snapshot};
use raft::{ProgressState, RawNode, SnapshotStatus, StateRole};
use serde::{Deserialize, Serialize};

use crate::disk::GroupWrite;
use crate::lease::LeaseTable;
use crate::node::Start;
use crate::node::{GroupStatus, NodeConfig, NodeError, Output, Query, Reply, Role};
use crate::storage::GroupStorage;
use crate::{GroupId, NodeId, RequestId};

mod inbound;
mod reads;
mod sleep;
mod snapshots;

/// Request ids with this bit set are the leader's own proposals (expiry, ticks): no reply.
const INTERNAL: RequestId = 1 << 63;
/// Most sessions expired by one command.
const EXPIRE_BATCH: usize = 1024;
/// A read not served within this long fails with `Unavailable`.
const READ_TIMEOUT_MS: u64 = 5_000;
/// A snapshot sent to a follower and not answered (installed) within this long, plus
/// `SNAPSHOT_MS_PER_MIB` for each MiB of it, is taken as lost and sent again. Generous: moving and
/// installing a large state takes seconds, and each resend queues another copy.
const SNAPSHOT_ANSWER_MS: u64 = 10_000;
/// Time allowed per MiB of a snapshot (10 MiB/s for sending, writing and installing it).
const SNAPSHOT_MS_PER_MIB: u64 = 100;
/// An internal proposal still not applied after this long may be proposed again.
const INTERNAL_RETRY_MS: u64 = 1_000;
/// A new leader waits this long before handing the leadership to its group's preferred leader,
/// and as long again between two attempts: a node that flaps does not drag leaderships along.
const PLACEMENT_PAUSE_MS: u64 = 3_000;

/// What one log entry carries: the command, and who to answer when it applies.
#[derive(Debug, Serialize, Deserialize)]
pub struct Proposal {
    /// The node that proposed it (0: the leader's own, unanswered).
    pub origin: NodeId,
    /// The origin's incarnation: request ids restart with the process, so (origin, request)
    /// alone does not say which request an entry answers (issue 9, defect 3).
    pub incarnation: u64,
    /// The origin's request id.
    pub request: RequestId,
    /// The command and the leader's clock readings.
    pub entry: Entry,
}

/// A proposal as written before entries named their user: logs of earlier versions hold these.
#[derive(Deserialize)]
struct ProposalV1 {
    origin: NodeId,
    incarnation: u64,
    request: RequestId,
    leader_time_ms: u64,
    wall_ms: u64,
    command: baton_core::Command,
}

/// A proposal as written when entries named their user but not yet its quota.
#[derive(Deserialize)]
struct ProposalV2 {
    v1: ProposalV1,
    user: Option<String>,
}

/// Reads `data` as exactly one `T` in the log's encoding (bincode's fixed-width integers, as
/// `bincode::serialize` writes): bytes left over are an error, so that an entry of a longer
/// layout never reads as a shorter one with its last fields dropped (review finding: a user
/// silently dropped would make a replica apply what the others refused).
fn exactly<'a, T: Deserialize<'a>>(data: &'a [u8]) -> bincode::Result<T> {
    use bincode::Options;
    bincode::DefaultOptions::new().with_fixint_encoding().reject_trailing_bytes().deserialize(data)
}

impl Proposal {
    /// Reads a normal log entry's data. Any bytes give a value or an error, never a panic.
    /// Entries of the earlier layouts (without the user's quota; without the user) read as
    /// proposed with no quota, or for no user; each layout must account for every byte.
    pub fn decode(data: &[u8]) -> bincode::Result<Proposal> {
        let v1 = |old: ProposalV1, user: Option<String>| {
            let entry = Entry { user, ..Entry::new(old.leader_time_ms, old.wall_ms, old.command) };
            Proposal { origin: old.origin, incarnation: old.incarnation, request: old.request, entry }
        };
        exactly(data).or_else(|err| {
            if let Ok(old) = exactly::<ProposalV2>(data) {
                return Ok(v1(old.v1, old.user));
            }
            exactly::<ProposalV1>(data).map(|old| v1(old, None)).map_err(|_| err)
        })
    }
}

/// Reads a membership-change log entry's data as raft-rs's `C` (`ConfChange` or
/// `ConfChangeV2`). Any bytes give a value or an error, never a panic.
pub fn decode_conf_change<C: protobuf::Message>(data: &[u8]) -> protobuf::ProtobufResult<C> {
    let mut cc = C::new();
    cc.merge_from_bytes(data)?;
    Ok(cc)
}

struct PendingRead {
    id: RequestId,
    query: Query,
    since_ms: u64,
    /// The user it is read for (authentication on): see [`crate::Node::read_for`].
    user: Option<Arc<str>>,
}

pub(crate) struct Group {
    id: GroupId,
    raw: RawNode<GroupStorage>,
    pub(crate) sm: StateMachine,
    /// Our proposals not yet applied: request -> deadline (monotonic ms).
    proposals: BTreeMap<RequestId, u64>,
    /// Reads waiting for a ReadIndex round to start.
    reads_queued: Vec<PendingRead>,
    /// Reads in a ReadIndex round: round context -> reads.
    reads_in_flight: BTreeMap<u64, Vec<PendingRead>>,
    /// Reads whose index is known, waiting for apply: (index, read).
    reads_ready: Vec<(u64, PendingRead)>,
    next_read_round: u64,
    /// Leader with lease reads on: when each ReadIndex round in flight started (monotonic ms).
    round_started_ms: BTreeMap<u64, u64>,
    /// Leader with lease reads on: reads may skip ReadIndex until this time (monotonic ms).
    lease_until_ms: u64,
    next_internal: RequestId,
    /// Leader only: session -> lease deadline on our monotonic clock.
    leases: LeaseTable,
    /// Leader only: sessions whose expiry raft-rs accepted into this leader's log. A proposal
    /// raft-rs refuses (during a leadership transfer, say) is not marked, so the next tick
    /// proposes it again.
    expiring: BTreeSet<SessionId>,
    /// Leader only: when we last proposed a Tick that has not applied yet.
    tick_proposed_ms: Option<u64>,
    /// Leader only: (state-machine time, monotonic time) at our election; see `leader_time`.
    time_base: (u64, u64),
    role: Role,
    leader: Option<NodeId>,
    /// Deterministic source of election timeouts (see `rerandomize`).
    rng: u64,
    /// (term, role) when the election timeout was last drawn.
    timeout_drawn_for: (u64, raft::StateRole),
    bugs: baton_core::Bugs,
    /// This start of the node (see `NodeConfig::incarnation`).
    incarnation: u64,
    pending_ready: Option<raft::Ready>,
    /// Our own snapshot waiting to be written with the next batch.
    snapshot_to_write: Option<Snapshot>,
    /// Leader only: by when each follower sent a snapshot should have answered (see
    /// `retry_lost_snapshots`).
    snapshots_sent: BTreeMap<NodeId, u64>,
    /// Leader only: no hand-over to the preferred leader before this time (monotonic ms).
    placement_after_ms: u64,
    /// The commit index moved without a hard state to write (raft-rs reports such moves in
    /// its light ready, e.g. every commit of a single-voter group): the next batch carries it.
    commit_unsaved: bool,
    /// Hibernation (see `sleep.rs`): this leader stopped ticking; ticks it has been idle; the
    /// last index it saw; ticks a follower still stands still on its leader's notice.
    asleep: bool,
    idle_ticks: u64,
    idle_since_index: u64,
    notice_ticks: u32,
}

fn raft_config(config: &NodeConfig, applied: u64) -> raft::Config {
    raft::Config {
        id: config.id,
        election_tick: config.election_ticks,
        heartbeat_tick: config.heartbeat_ticks,
        applied,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    }
}

impl Group {
    pub(crate) fn open(config: &NodeConfig, id: GroupId, start: Start) -> Result<(Group, Option<GroupWrite>), String> {
        let (storage, mut sm, write) = match start {
            Start::Recovered(r) => {
                let mut sm = if r.snapshot.data.is_empty() {
                    StateMachine::new(config.limits.clone())
                } else {
                    StateMachine::from_snapshot(&r.snapshot.data)
                        .map_err(|e| format!("group {id}: corrupt snapshot: {e}"))?
                };
                if config.bugs.token_reset_on_restart {
                    sm.bug_reset_tokens();
                }
                (GroupStorage::recover(r.hard_state, r.snapshot, r.entries), sm, None)
            }
            Start::New { voters, state } => {
                let storage = GroupStorage::bootstrap(&voters, state.to_snapshot());
                let write = GroupWrite {
                    group: id,
                    snapshot: Some(storage.snapshot_ref().clone()),
                    replace_log: true,
                    entries: Vec::new(),
                    hard_state: Some(storage.hard_state().clone()),
                };
                (storage, *state, Some(write))
            }
        };
        sm.set_bugs(config.bugs);
        let applied = storage.snapshot_ref().get_metadata().index;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw = RawNode::new(&raft_config(config, applied), storage, &logger)
            .map_err(|e| format!("group {id}: raft: {e}"))?;
        let group = Group {
            id,
            raw,
            sm,
            proposals: BTreeMap::new(),
            reads_queued: Vec::new(),
            reads_in_flight: BTreeMap::new(),
            round_started_ms: BTreeMap::new(),
            lease_until_ms: 0,
            reads_ready: Vec::new(),
            next_read_round: 1,
            next_internal: INTERNAL,
            leases: LeaseTable::default(),
            expiring: BTreeSet::new(),
            tick_proposed_ms: None,
            time_base: (0, 0),
            role: Role::Follower,
            leader: None,
            rng: config.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            timeout_drawn_for: (u64::MAX, StateRole::Follower),
            bugs: config.bugs,
            incarnation: config.incarnation,
            pending_ready: None,
            snapshot_to_write: None,
            commit_unsaved: false,
            placement_after_ms: 0,
            snapshots_sent: BTreeMap::new(),
            asleep: false,
            idle_ticks: 0,
            idle_since_index: 0,
            notice_ticks: 0,
        };
        let mut group = group;
        group.rerandomize();
        Ok((group, write))
    }

    /// raft-rs draws a new randomised election timeout from the thread's RNG whenever it
    /// changes term or role. We replace it with one from our seeded generator, so that a run is
    /// a function of its inputs (the simulator replays seeds bit for bit).
    fn rerandomize(&mut self) {
        let key = (self.raw.raft.term, self.raw.raft.state);
        if key == self.timeout_drawn_for {
            return;
        }
        self.timeout_drawn_for = key;
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let base = self.raw.raft.election_timeout();
        self.raw.raft.set_randomized_election_timeout(base + (z % base as u64) as usize);
    }

    /// The leader this replica knows of; none if it is not a member (its knowledge is stale).
    pub(crate) fn leader(&self) -> Option<NodeId> {
        self.leader.filter(|_| self.is_member())
    }

    /// This replica is in its group's configuration, as a voter or a learner, or leads it. One
    /// the group removed (a placement change), or created for a placement that changed before
    /// the leader added it, hears no more from the group: what it knows of leaders and terms is
    /// stale, and the node answers for the group as one that does not hold it. A leader that
    /// applied its own removal (raft-rs keeps it leading) still serves until it hands the
    /// leadership on: refusing would turn keepalives away while it goes on expiring sessions
    /// (the review found it).
    pub(crate) fn is_member(&self) -> bool {
        if self.role == Role::Leader {
            return true;
        }
        let raft = &self.raw.raft;
        let conf = raft.prs().conf();
        conf.voters().contains(raft.id) || conf.learners().contains(&raft.id)
    }

    pub(crate) fn role(&self) -> Role {
        self.role
    }

    fn not_leader(&self) -> NodeError {
        NodeError::NotLeader { group: self.id, leader: self.leader() }
    }

    pub(crate) fn transfer_leader(&mut self, to: NodeId) {
        // A transfer's election is exempt from the followers' vote-refusal window (raft-rs:
        // a forced campaign), so the read lease's argument no longer holds: drop it.
        self.lease_until_ms = 0;
        self.raw.transfer_leader(to);
    }

    /// Leader placement: hands the leadership to `preferred` once it has every entry and
    /// replicates normally (see [`crate::Node`]'s `place_leaders`).
    pub(crate) fn hand_to_preferred(&mut self, preferred: NodeId, now: u64) {
        let raft = &self.raw.raft;
        if self.role != Role::Leader || preferred == raft.id || raft.lead_transferee.is_some() {
            return;
        }
        if now < self.placement_after_ms {
            return;
        }
        let last = raft.raft_log.last_index();
        let ready = raft
            .prs()
            .get(preferred)
            .is_some_and(|p| p.matched == last && p.state == ProgressState::Replicate && p.recent_active);
        if ready {
            self.placement_after_ms = now + PLACEMENT_PAUSE_MS;
            self.transfer_leader(preferred);
        }
    }

    /// The leader moves the group's membership one step toward `target` (one change in flight
    /// at a time): a missing node is added as a learner, a learner that has caught up is made a
    /// voter, a voter not in `target` is removed — and if that is this leader, it first hands
    /// the leadership to a caught-up voter of `target`. (A new replica starts from the group's
    /// initial state, as the founders did: see `joining_groups`.)
    ///
    /// `version` is the topology version the target comes from: a leader whose replica of the
    /// meta group is behind the version of the group's last membership change does nothing (it
    /// would undo newer changes; the review found it).
    pub(crate) fn drive_replicas(&mut self, target: &[NodeId], version: u64) {
        use raft::eraftpb::ConfChangeType as T;
        let raft = &self.raw.raft;
        if self.role != Role::Leader || raft.lead_transferee.is_some() || target.is_empty() {
            return;
        }
        if raft.pending_conf_index > raft.raft_log.applied || version < self.sm.membership_version() {
            return;
        }
        let conf = raft.prs().conf();
        let voters: Vec<NodeId> = conf.voters().ids().iter().collect();
        let learners: Vec<NodeId> = conf.learners().iter().copied().collect();
        let committed = raft.raft_log.committed;
        // Caught up: it answered, replicates normally, and has every committed entry (a new
        // learner's progress starts "active" with nothing matched: the review found learners
        // promoted before they had received anything).
        let caught_up = |id: NodeId| {
            raft.prs()
                .get(id)
                .is_some_and(|p| p.state == ProgressState::Replicate && p.matched >= committed && p.recent_active)
        };
        let pending_learner = learners.iter().any(|n| target.contains(n));
        let me = raft.id;
        let change = if let Some(&n) = target.iter().find(|n| !voters.contains(n) && !learners.contains(n)) {
            Some((T::AddLearnerNode, n))
        } else if let Some(&n) = learners.iter().find(|n| target.contains(n) && caught_up(**n)) {
            Some((T::AddNode, n))
        } else if !voters.contains(&me) {
            // Leading a group it was removed from: hand it to a voter that is caught up.
            if let Some(&to) = voters.iter().find(|v| target.contains(v) && caught_up(**v)) {
                self.transfer_leader(to);
            }
            None
        } else if pending_learner && voters.len() <= target.len() {
            // Never fewer voters than the target while a replacement is still a learner.
            None
        } else if let Some(&n) = voters.iter().find(|n| !target.contains(n)) {
            if n == me {
                if let Some(&to) = voters.iter().find(|v| **v != n && target.contains(v) && caught_up(**v)) {
                    self.transfer_leader(to);
                }
                None
            } else {
                Some((T::RemoveNode, n))
            }
        } else {
            learners.iter().find(|n| !target.contains(n)).map(|n| (T::RemoveNode, *n))
        };
        if let Some((change_type, node_id)) = change {
            let cc = raft::eraftpb::ConfChange {
                change_type,
                node_id,
                context: version.to_be_bytes().to_vec().into(),
                ..Default::default()
            };
            let _ = self.raw.propose_conf_change(Vec::new(), cc);
        }
    }

    pub(crate) fn campaign(&mut self) {
        let _ = self.raw.campaign();
        self.rerandomize();
    }

    pub(crate) fn step(&mut self, msg: Message) {
        self.wake_for(&msg);
        // Errors here are messages from stale terms or unknown peers: dropping them is correct.
        let _ = self.raw.step(msg);
        self.rerandomize();
    }

    pub(crate) fn has_ready(&self) -> bool {
        self.raw.has_ready()
            || self.snapshot_to_write.is_some()
            || !self.reads_queued.is_empty()
            || self.reads_ready.iter().any(|(index, _)| *index <= self.sm.applied_index())
    }

    pub(crate) fn tick(&mut self, now: u64, wall: u64, config: &NodeConfig, out: &mut Vec<Output>) {
        if self.raft_ticks(config) {
            self.raw.tick();
        }
        self.rerandomize();
        self.time_out_requests(now, out);
        self.release_snapshot_data();
        if self.role != Role::Leader && self.bugs.follower_expiry {
            // Deliberate bug: a follower that never sees keepalives expires sessions itself.
            for (id, s) in self.sm.sessions() {
                self.leases.set_if_absent(id, now + s.ttl_ms);
            }
        } else if self.role != Role::Leader {
            self.snapshots_sent.clear();
            return;
        }
        self.retry_lost_snapshots(now);
        // A session is marked expiring only once raft-rs accepted the proposal; a refused one is
        // proposed again at the next tick. An accepted one stays in this leader's log until it
        // commits or the leader steps down (which clears the marks), so it is never proposed
        // twice — and no keepalive is acknowledged for the session meanwhile. (Forgetting the mark
        // after a while, as a first version did, let a renewal be confirmed with the old expiry
        // still in the log: the review caught it.)
        let due = self.leases.due(now, EXPIRE_BATCH, &self.expiring);
        let as_of = self.sm.applied_index();
        if !due.is_empty() && self.propose_internal(Command::ExpireSessions { sessions: due.clone(), as_of }, now, wall)
        {
            self.expiring.extend(due.iter().copied());
        }
        let timer_due = self.sm.next_timer_ms().is_some_and(|at| at <= self.leader_time(now));
        let tick_stale = self.tick_proposed_ms.is_none_or(|at| now.saturating_sub(at) >= INTERNAL_RETRY_MS);
        if timer_due && tick_stale && self.propose_internal(Command::Tick, now, wall) {
            self.tick_proposed_ms = Some(now);
        }
    }

    /// The time this leader stamps into entries: its monotonic clock, rebased at its election
    /// onto the latest state-machine time, and never behind the state machine. Wall-clock jumps
    /// therefore cannot move deadlines, and time never runs backwards across leaders. (The time
    /// between the last entry of the old leader and this election is not counted: deadlines
    /// stretch by at most one failover, never shrink.)
    fn leader_time(&self, now: u64) -> u64 {
        let (base_sm, base_mono) = self.time_base;
        self.sm.now_ms().max(base_sm + now.saturating_sub(base_mono))
    }

    /// Proposes one of the leader's own commands; false if raft-rs refused it (it is proposed
    /// again on a later tick).
    fn propose_internal(&mut self, command: Command, now: u64, wall: u64) -> bool {
        self.next_internal += 1;
        let entry = Entry::new(self.leader_time(now), wall, command);
        let p = Proposal { origin: 0, incarnation: self.incarnation, request: self.next_internal, entry };
        let data = bincode::serialize(&p).expect("proposal serialises");
        self.raw.propose(Vec::new(), data).is_ok()
    }

    fn time_out_requests(&mut self, now: u64, out: &mut Vec<Output>) {
        let expired: Vec<RequestId> = self.proposals.iter().filter(|(_, d)| **d <= now).map(|(id, _)| *id).collect();
        for id in expired {
            self.proposals.remove(&id);
            let msg = format!(
                "group {}: proposal not applied in time (it may still apply); retry with the same request id",
                self.id
            );
            out.push(Output::Reply { id, result: Err(NodeError::Unavailable(msg)) });
        }
        let stale = |r: &PendingRead| now.saturating_sub(r.since_ms) >= READ_TIMEOUT_MS;
        let mut failed = Vec::new();
        for reads in self.reads_in_flight.values_mut() {
            failed.extend(reads.extract_if(.., |r| stale(r)));
        }
        self.reads_in_flight.retain(|_, reads| !reads.is_empty());
        failed.extend(self.reads_queued.extract_if(.., |r| stale(r)));
        for r in failed {
            let msg = format!("group {}: read not served in time; retry", self.id);
            out.push(Output::Reply { id: r.id, result: Err(NodeError::Unavailable(msg)) });
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn propose(
        &mut self,
        origin: NodeId,
        id: RequestId,
        command: Command,
        user: Option<baton_core::command::Principal>,
        now: u64,
        wall: u64,
        config: &NodeConfig,
    ) -> Result<(), NodeError> {
        if self.role != Role::Leader {
            return Err(self.not_leader());
        }
        let waiting = self.proposals.len() + self.reads_queued.len();
        // Commands that only give things back (release, cancel, close) get twice the room:
        // refusing them under overload would keep the load in place.
        let frees = matches!(command, Command::Release { .. } | Command::Cancel { .. } | Command::CloseSession { .. });
        let room = if frees { config.max_pending.saturating_mul(2) } else { config.max_pending };
        if waiting >= room {
            return Err(NodeError::Busy(waiting));
        }
        let (user, quota) = user.map_or((None, Default::default()), |p| (Some(p.name.to_string()), p.quota));
        let entry = Entry { user, quota, ..Entry::new(self.leader_time(now), wall, command) };
        let p = Proposal { origin, incarnation: self.incarnation, request: id, entry };
        let data = bincode::serialize(&p).expect("proposal serialises");
        // raft-rs drops a proposal while leadership is being transferred: it was not appended,
        // so the caller may retry it anywhere; the group has no leader to name until the
        // transfer ends.
        self.raw.propose(Vec::new(), data).map_err(|_| NodeError::NotLeader { group: self.id, leader: None })?;
        tracing::debug!(
            group = self.id,
            index = self.raw.raft.raft_log.last_index(),
            term = self.raw.raft.term,
            "proposed"
        );
        self.proposals.insert(id, now + config.proposal_timeout_ms);
        Ok(())
    }

    pub(crate) fn ready(
        &mut self,
        now: u64,
        config: &NodeConfig,
        out: &mut Vec<Output>,
    ) -> Result<Option<GroupWrite>, String> {
        self.start_read_round(now, config);
        let mut write = GroupWrite { group: self.id, ..Default::default() };
        if let Some(snap) = self.snapshot_to_write.take() {
            write.snapshot = Some(snap);
        }
        if std::mem::take(&mut self.commit_unsaved) {
            // Without this a single-voter group never stored its commit index, and after its
            // first snapshot the stored commit lagged behind it: the node could not restart.
            write.hard_state = Some(self.raw.store().hard_state().clone());
        }
        if !self.raw.has_ready() {
            let empty = write.snapshot.is_none() && write.hard_state.is_none();
            return Ok((!empty).then_some(write));
        }
        let mut rd = self.raw.ready();
        if let Some(ss) = rd.ss() {
            self.on_role(ss.raft_state, ss.leader_id, now, out);
        }
        for msg in rd.take_messages() {
            self.send(msg, now, out);
        }
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            let bugs = self.bugs;
            self.sm = StateMachine::from_snapshot(&snap.data)
                .map_err(|e| format!("group {}: corrupt snapshot from leader: {e}", self.id))?;
            self.sm.set_bugs(bugs);
            self.raw.mut_store().apply_snapshot(snap.clone());
            write.snapshot = Some(snap);
            write.replace_log = true;
            out.push(Output::Reset { group: self.id, event_seq: self.sm.event_seq() });
            write.hard_state = Some(self.raw.store().hard_state().clone());
        }
        self.apply(rd.take_committed_entries(), now, out)?;
        if !rd.entries().is_empty() {
            self.raw.mut_store().append(rd.entries());
            write.entries = rd.take_entries();
        }
        if let Some(hs) = rd.hs() {
            self.raw.mut_store().set_hard_state(hs.clone());
            write.hard_state = Some(hs.clone());
        }
        for rs in rd.take_read_states() {
            let round = u64::from_be_bytes(rs.request_ctx.as_slice().try_into().unwrap_or_default());
            // A quorum confirmed our leadership as of the round's start: followers that
            // answered will not vote for anyone else for an election timeout after that.
            if let Some(started) = self.round_started_ms.remove(&round) {
                self.lease_until_ms = self.lease_until_ms.max(started + config.lease_read_ms);
            }
            self.round_started_ms.retain(|r, _| *r > round);
            if let Some(reads) = self.reads_in_flight.remove(&round) {
                self.reads_ready.extend(reads.into_iter().map(|r| (rs.index, r)));
            }
        }
        self.pending_ready = Some(rd);
        let empty = write.snapshot.is_none() && write.entries.is_empty() && write.hard_state.is_none();
        Ok((!empty).then_some(write))
    }

    pub(crate) fn persisted(&mut self, now: u64, config: &NodeConfig, out: &mut Vec<Output>) -> Result<(), String> {
        let Some(mut rd) = self.pending_ready.take() else {
            // Lease reads wait for nothing but apply.
            self.serve_reads(now, out);
            return Ok(());
        };
        for msg in rd.take_persisted_messages() {
            self.send(msg, now, out);
        }
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit);
            self.commit_unsaved = true;
        }
        for msg in light.take_messages() {
            self.send(msg, now, out);
        }
        self.apply(light.take_committed_entries(), now, out)?;
        self.raw.advance_apply();
        self.serve_reads(now, out);
        self.maybe_snapshot(config);
        Ok(())
    }

    fn on_role(&mut self, state: StateRole, leader: u64, now: u64, out: &mut Vec<Output>) {
        let role = if state == StateRole::Leader { Role::Leader } else { Role::Follower };
        let leader = (leader != raft::INVALID_ID).then_some(leader);
        let was_leader = self.role == Role::Leader;
        self.role = role;
        // A notice from the previous leader must not keep this replica still under the next.
        self.notice_ticks = 0;
        self.lease_until_ms = 0;
        self.round_started_ms.clear();
        self.leader = leader;
        if role == Role::Leader && !was_leader {
            // Grace: every session gets a full TTL from now before this leader may expire it.
            self.leases.clear();
            for (id, s) in self.sm.sessions() {
                self.leases.set(id, now + s.ttl_ms);
            }
            self.expiring.clear();
            self.tick_proposed_ms = None;
            self.time_base = (self.sm.now_ms(), now);
            self.placement_after_ms = now + PLACEMENT_PAUSE_MS;
        } else if role != Role::Leader && was_leader {
            self.leases.clear();
            self.expiring.clear();
            let err = self.not_leader();
            // Proposals already in the log may still commit under the new leader: that is not a
            // plain "not the leader" (which means "never proposed"), callers must know.
            let msg = format!(
                "group {}: leadership changed before the request was applied; it may still apply (retry with the same request id where the operation has one)",
                self.id
            );
            for id in std::mem::take(&mut self.proposals).into_keys() {
                out.push(Output::Reply { id, result: Err(NodeError::Unavailable(msg.clone())) });
            }
            let reads = std::mem::take(&mut self.reads_queued)
                .into_iter()
                .chain(std::mem::take(&mut self.reads_in_flight).into_values().flatten())
                .chain(std::mem::take(&mut self.reads_ready).into_iter().map(|(_, r)| r));
            for r in reads {
                out.push(Output::Reply { id: r.id, result: Err(err.clone()) });
            }
        }
        out.push(Output::RoleChanged { group: self.id, role, leader, term: self.raw.raft.term });
    }

    fn apply(&mut self, entries: Vec<raft::eraftpb::Entry>, now: u64, out: &mut Vec<Output>) -> Result<(), String> {
        if !entries.is_empty() && !tracing::Span::current().is_disabled() {
            // Within a traced round only (the runtime samples them): a line, not a span per group.
            let (first, last) = (entries[0].index, entries[entries.len() - 1].index);
            tracing::debug!(group = self.id, first, last, commit = self.raw.raft.raft_log.committed, "applying");
        }
        let mut events = Vec::new();
        for e in entries {
            if e.index <= self.sm.applied_index() {
                continue;
            }
            match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => self.sm.observe_time(e.index, 0),
                EntryType::EntryNormal => {
                    let p = Proposal::decode(&e.data)
                        .map_err(|err| format!("group {}: undecodable entry {}: {err}", self.id, e.index))?;
                    let result = self.sm.apply(e.index, &p.entry, &mut events);
                    self.after_apply(&p, &events, now);
                    // Only our own proposals are answered here: request ids are per node, so another node's
                    // entry can carry the id of one of ours (a bug the simulator found, seed 841), and per
                    // incarnation, so an entry of ours from before a restart can too.
                    let ours = p.origin == self.raw.raft.id && p.incarnation == self.incarnation;
                    if ours && self.proposals.remove(&p.request).is_some() {
                        let reply = result
                            .map(|outcome| Reply::Applied { index: e.index, outcome })
                            .map_err(NodeError::Rejected);
                        out.push(Output::Reply { id: p.request, result: reply });
                    }
                    if self.bugs.follower_drops_events && self.role != Role::Leader {
                        // Deliberate bug: this replica's account of the entry differs.
                        events.pop();
                    }
                    let stamps = self.sm.stamp(p.entry.wall_ms, events.len());
                    for (event, (seq, hlc)) in events.drain(..).zip(stamps) {
                        out.push(Output::Event { group: self.id, index: e.index, seq, hlc, event });
                    }
                }
                EntryType::EntryConfChange => self.apply_conf_change::<ConfChange>(&e)?,
                EntryType::EntryConfChangeV2 => self.apply_conf_change::<ConfChangeV2>(&e)?,
            }
            let conf_change = matches!(e.get_entry_type(), EntryType::EntryConfChange | EntryType::EntryConfChangeV2);
            if conf_change && !self.is_member() && self.leader.is_some() {
                // Removed from the group: what it knows of the leader is stale from now on.
                // The runtime's view (the Topology RPC's leaders) must not go on naming it (the
                // review found it).
                let term = self.raw.raft.term;
                out.push(Output::RoleChanged { group: self.id, role: self.role, leader: None, term });
            }
        }
        Ok(())
    }

    /// Applies a membership change (proposed by `drive_replicas`) to raft-rs and the storage.
    fn apply_conf_change<C: protobuf::Message + raft_proto::ConfChangeI>(
        &mut self,
        e: &raft::eraftpb::Entry,
    ) -> Result<(), String> {
        let cc: C = decode_conf_change(&e.data).map_err(|err| format!("conf change at {}: {err}", e.index))?;
        let cs = self.raw.apply_conf_change(&cc).map_err(|err| format!("conf change at {}: {err}", e.index))?;
        // Later snapshots carry the new membership (a replica started from one must know it).
        self.raw.mut_store().set_conf_state(cs);
        if let Some(v) = cc.as_v1().and_then(|c| <[u8; 8]>::try_from(c.get_context()).ok()) {
            self.sm.observe_membership_version(u64::from_be_bytes(v));
        }
        self.sm.observe_time(e.index, 0);
        Ok(())
    }

    /// Keeps the leader's lease table in step with the applied state.
    fn after_apply(&mut self, p: &Proposal, events: &[Event], now: u64) {
        if matches!(p.entry.command, Command::Tick) && p.origin == 0 {
            self.tick_proposed_ms = None;
        }
        if self.role != Role::Leader {
            return;
        }
        if let Command::ExpireSessions { sessions, .. } = &p.entry.command {
            // Applied: the ones it expired end below; the ones it spared (refreshed since it was
            // proposed) are no longer being expired.
            for s in sessions {
                self.expiring.remove(s);
            }
        }
        for e in events {
            match e {
                Event::SessionOpened { session, ttl_ms } => {
                    self.leases.set(*session, now + ttl_ms);
                }
                Event::SessionRefreshed { session, ttl_ms } => {
                    self.leases.extend(*session, now + ttl_ms);
                }
                Event::SessionEnded { session, .. } => {
                    self.leases.remove(*session);
                    self.expiring.remove(session);
                }
                _ => {}
            }
        }
    }

    pub(crate) fn status(&self) -> GroupStatus {
        GroupStatus {
            id: self.id,
            leader: self.leader(),
            term: self.raw.raft.term,
            commit: self.raw.raft.raft_log.committed,
            applied: self.sm.applied_index(),
            role: self.role,
            sessions: self.sm.session_count(),
            locks: self.sm.lock_count(),
            waiters: self.sm.waiter_count(),
            log_entries: {
                let log = &self.raw.raft.raft_log;
                (log.last_index() + 1).saturating_sub(log.first_index())
            },
            last_token: self.sm.last_token(),
            slots: self.sm.slots().ranges(),
            replicas: {
                let mut v: Vec<NodeId> = self.raw.raft.prs().conf().voters().ids().iter().collect();
                v.sort_unstable();
                v
            },
            snapshot_bytes_in_memory: self.raw.store().snapshot_ref().data.len(),
            asleep: self.asleep(),
            etcd_bytes: self.sm.etcd().map_or(0, |e| e.mvcc().bytes()),
            etcd_revision: self.sm.etcd().map_or(0, |e| e.revision()),
        }
    }
}

#[cfg(test)]
mod proposal_tests {
    use super::*;

    /// Log entries of every layout read as written: the user and its quota, the user alone
    /// (as proposed with no quota), neither (for no user); one with bytes left over does not
    /// read as a shorter layout (review finding: the user would be dropped).
    #[test]
    fn proposals_of_every_layout_decode_and_only_as_themselves() {
        #[derive(Serialize)]
        struct V1Entry {
            leader_time_ms: u64,
            wall_ms: u64,
            command: Command,
        }
        #[derive(Serialize)]
        struct V2Entry {
            v1: V1Entry,
            user: Option<String>,
        }
        #[derive(Serialize)]
        struct Old<E> {
            origin: NodeId,
            incarnation: u64,
            request: RequestId,
            entry: E,
        }
        let command = Command::CloseSession { session: 9 };
        let v1 = V1Entry { leader_time_ms: 5, wall_ms: 6, command: command.clone() };
        let old = Old { origin: 2, incarnation: 3, request: 4, entry: v1 };
        let p = Proposal::decode(&bincode::serialize(&old).unwrap()).unwrap();
        assert_eq!((p.origin, p.incarnation, p.request), (2, 3, 4));
        assert_eq!(p.entry, Entry::new(5, 6, command.clone()));

        let v1 = V1Entry { leader_time_ms: 5, wall_ms: 6, command: command.clone() };
        let v2 = Old { origin: 2, incarnation: 3, request: 4, entry: V2Entry { v1, user: Some("bob".into()) } };
        let p = Proposal::decode(&bincode::serialize(&v2).unwrap()).unwrap();
        assert_eq!(p.entry, Entry { user: Some("bob".into()), ..Entry::new(5, 6, command.clone()) });

        let quota = baton_core::auth::Quota { requests_per_s: 1, sessions: 2, names: 3 };
        let entry = Entry { user: Some("alice".into()), quota, ..Entry::new(5, 6, command) };
        let new = Proposal { origin: 2, incarnation: 3, request: 4, entry: entry.clone() };
        let mut bytes = bincode::serialize(&new).unwrap();
        assert_eq!(Proposal::decode(&bytes).unwrap().entry, entry);
        bytes.push(0);
        assert!(Proposal::decode(&bytes).is_err(), "a byte left over is not an older layout");
        assert!(Proposal::decode(&[1, 2, 3]).is_err());
    }
}
