//! The node: inputs in, outputs out, across all groups.

use std::collections::BTreeMap;

use baton_core::command::Principal;
use baton_core::{Command, Event, Holder, Kind, Limits, Outcome, SessionId, Waiter};
use raft::eraftpb::Message;

use crate::disk::{Recovered, WriteBatch};
use crate::group::Group;
use crate::{GroupId, NodeId, RequestId, NODE_CHANNEL};
use baton_core::META_GROUP;

/// Static configuration of a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's id (non-zero).
    pub id: NodeId,
    /// Every voter of the cluster, this node included.
    pub voters: Vec<NodeId>,
    /// Raft heartbeat interval, in ticks.
    pub heartbeat_ticks: usize,
    /// Raft election timeout, in ticks (randomised by raft-rs between this and twice this).
    pub election_ticks: usize,
    /// Take a snapshot and cut the log after this many applied entries, or a quarter as many as
    /// the state has objects if that is more.
    pub snapshot_entries: u64,
    /// A proposal not applied within this long fails with `Unavailable`.
    pub proposal_timeout_ms: u64,
    /// Most proposals and reads waiting at once; more are refused with `Busy`.
    pub max_pending: usize,
    /// The state machine's limits (must be equal on every node).
    pub limits: Limits,
    /// Seeds the randomised election timeouts: randomness is an input, so that the simulator
    /// can replay a run exactly. The server draws it from the OS.
    pub seed: u64,
    /// Deliberate bugs for the simulator's broken variants; all off in production.
    pub bugs: baton_core::Bugs,
    /// Lease reads (off at 0): after a ReadIndex round started at time t is confirmed by a
    /// quorum, the leader serves reads and keepalives without another round until
    /// t + lease_read_ms. Safe only while this stays below the followers' vote-refusal window
    /// with margin for clock drift and for the age of the clock reading a lease is checked
    /// against: use [`lease_read_ms`], which derives it. Off, every read costs a heartbeat round.
    pub lease_read_ms: u64,
    /// Which start of this node this is ([`crate::LogStore::next_incarnation`]): log entries
    /// carry it with their request id, so that a request id reused after a restart is never
    /// answered by an entry proposed before it.
    pub incarnation: u64,
}

/// Default Raft election timeout, in ticks.
pub const DEFAULT_ELECTION_TICKS: usize = 10;

/// Largest difference in rate between two members' monotonic clocks that a lease allows for, in
/// parts per million (5%: NTP slews by at most 0.05%; the rest is for virtual machines, and it
/// covers the simulator's ±2% per node).
pub const LEASE_DRIFT_PPM: u64 = 50_000;
/// Largest forward jump of a follower's monotonic clock that a lease allows for (the simulator
/// injects jumps up to this size).
pub const LEASE_CLOCK_JUMP_MS: u64 = 100;
/// Largest time between the runtime reading the clock ([`Node::set_time`]) and the node checking
/// a lease against that reading. The server reads the clock right before each request, so this
/// is the handling of one request plus any time the OS keeps the node thread off a core.
pub const LEASE_READING_AGE_MS: u64 = 50;

/// The lease for `NodeConfig::lease_read_ms`, or 0 if the timing leaves no safe lease.
///
/// A follower that acknowledged the leader's ReadIndex round (started at t on the leader's clock)
/// received that heartbeat after t, and refuses to vote for anyone else (raft-rs check-quorum)
/// until it has counted `election_ticks` ticks since. The first of those ticks can come right
/// after the heartbeat, and the runtime keeps ticks at least one tick apart, so the refusal lasts
/// at least `(election_ticks - 1) * tick_ms` on the follower's clock. Every new leader needs the
/// vote of one of those followers, so none exists before then. The lease subtracts from that
/// window what the clocks may get wrong and how stale the reading checked against it may be:
///
/// ```text
/// lease = (election_ticks - 1) * tick_ms          follower's refusal window, less the tick it can start late
///       - window * LEASE_DRIFT_PPM / 1e6 (rounded up)   clocks running at different rates
///       - LEASE_CLOCK_JUMP_MS                     a follower's clock jumping forward
///       - LEASE_READING_AGE_MS                    reading the clock, then checking the lease
/// ```
///
/// With the defaults (10 ticks of 100 ms): 900 - 45 - 100 - 50 = 705 ms.
pub fn lease_read_ms(election_ticks: usize, tick_ms: u64) -> u64 {
    let window = (election_ticks as u64).saturating_sub(1).saturating_mul(tick_ms);
    let drift = window.saturating_mul(LEASE_DRIFT_PPM).div_ceil(1_000_000);
    window.saturating_sub(drift + LEASE_CLOCK_JUMP_MS + LEASE_READING_AGE_MS)
}

impl NodeConfig {
    /// Defaults for a node with the given id and voters.
    pub fn new(id: NodeId, voters: Vec<NodeId>) -> Self {
        NodeConfig {
            id,
            voters,
            heartbeat_ticks: 2,
            election_ticks: DEFAULT_ELECTION_TICKS,
            snapshot_entries: 20_000,
            proposal_timeout_ms: 10_000,
            max_pending: 200_000,
            limits: Limits::default(),
            seed: id,
            bugs: baton_core::Bugs::default(),
            lease_read_ms: 0,
            incarnation: 0,
        }
    }
}

/// How a group starts on this node.
#[derive(Debug)]
pub enum Start {
    /// From what the store recovered.
    Recovered(Recovered),
    /// A new group: its voters and the state its state machine starts with (equal on every
    /// member).
    New { voters: Vec<NodeId>, state: Box<baton_core::StateMachine> },
}

/// The groups a new cluster starts with that `node` holds a replica of: the meta group (on every
/// voter) with the initial [`baton_core::Topology`] (`data_groups` groups of `replication`
/// replicas), and the data groups it places on `node`.
pub fn initial_groups(
    node: NodeId,
    voters: &[NodeId],
    data_groups: u64,
    replication: usize,
    limits: &Limits,
) -> Vec<(GroupId, Start)> {
    // A new cluster has the etcd keyspace's group.
    let topology = baton_core::Topology::initial_with(voters, data_groups, replication, true);
    let mut meta_voters = voters.to_vec();
    meta_voters.sort_unstable();
    let mut out = Vec::new();
    for (&id, g) in &topology.groups {
        if g.replicas.contains(&node) {
            let state = baton_core::StateMachine::initial_of(limits.clone(), id, g);
            out.push((id, Start::New { voters: g.replicas.clone(), state: Box::new(state) }));
        }
    }
    let meta = baton_core::StateMachine::meta(limits.clone(), topology);
    out.insert(0, (META_GROUP, Start::New { voters: meta_voters, state: Box::new(meta) }));
    out
}

/// The meta group of a cluster founded by `founders` as they started it (with the etcd
/// keyspace's group if `etcd`: the cluster's topology says): a joining node starts from it, and
/// creates each data group's replica when that group's leader first contacts it (see
/// [`Node::step`]).
pub fn joining_groups(
    founders: &[NodeId],
    data_groups: u64,
    replication: usize,
    etcd: bool,
    limits: &Limits,
) -> Vec<(GroupId, Start)> {
    let topology = baton_core::Topology::initial_with(founders, data_groups, replication, etcd);
    let voters = topology.founders.clone();
    let meta = baton_core::StateMachine::meta(limits.clone(), topology);
    vec![(META_GROUP, Start::New { voters, state: Box::new(meta) })]
}

/// The groups to start `node` with: every group `store` holds, or, for a store that holds none
/// (a new node of a new cluster), [`initial_groups`] with `data_groups` data groups, or (a node
/// joining a cluster: not among `voters`) [`joining_groups`], with the etcd keyspace's group if
/// `etcd` (the cluster's topology says).
pub fn start_groups<S: crate::LogStore>(
    store: &S,
    node: NodeId,
    voters: &[NodeId],
    data_groups: u64,
    replication: usize,
    etcd: bool,
    limits: &Limits,
) -> Result<Vec<(GroupId, Start)>, String> {
    let ids = store.groups().map_err(|e| e.to_string())?;
    if ids.is_empty() && !voters.contains(&node) {
        // Joining a cluster whose founders are `voters`: every group starts as it did on them,
        // with them as its voters; the leaders bring each up to date once the meta group adds
        // this node (from the log, which replays the membership changes, or from a snapshot).
        return Ok(joining_groups(voters, data_groups, replication, etcd, limits));
    }
    if ids.is_empty() {
        return Ok(initial_groups(node, voters, data_groups, replication, limits));
    }
    if !ids.contains(&META_GROUP) {
        return Err("the data folder has no meta group: it was written by a Baton before sharding, whose \
                    format this version cannot read; start from an empty folder"
            .into());
    }
    let mut out = Vec::new();
    for id in ids {
        let recovered = store.recover(id).map_err(|e| e.to_string())?;
        out.push((id, Start::Recovered(recovered.ok_or_else(|| format!("group {id} vanished from the store"))?)));
    }
    Ok(out)
}

/// A linearizable read of the state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    /// A lock's holder and queue.
    Lock(String),
    /// A session's TTL and the names it holds or waits for.
    Session(SessionId),
    /// Renew these sessions' leases. Served like a read, after a ReadIndex round: a leader
    /// acknowledges a keepalive only once a majority has confirmed it still leads, so a deposed
    /// leader that has not noticed yet cannot extend a lease its successor does not know about.
    KeepAlive(std::sync::Arc<[SessionId]>),
    /// A counter's value.
    Counter(String),
    /// A register's value and version.
    Register(String),
    /// A range of the etcd keyspace (its group only), after a ReadIndex round: linearizable.
    EtcdRange(Box<baton_core::etcd::RangeRequest>),
    /// etcd leases (its group only): `renew` them first (keepalives: each one's session lease
    /// runs a full TTL from now), and list their `keys`. Many renewals share one read round.
    EtcdLease { ids: Vec<i64>, renew: bool, keys: bool },
    /// The ids of every etcd lease.
    EtcdLeases,
    /// The alarms raised on the etcd keyspace.
    EtcdAlarms,
}

/// A successful reply to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The proposal was applied at `index` with this outcome.
    Applied { index: u64, outcome: Outcome },
    /// A lock's state (no holders and no waiters if nobody holds or awaits it).
    Lock { kind: Kind, holders: Vec<Holder>, waiters: Vec<Waiter>, closed_until_ms: u64, now_ms: u64 },
    /// A session: `None` if it does not exist.
    Session(Option<(u64, Vec<String>)>),
    /// Per session asked: its TTL and the groups its names were moved to if renewed, `None`
    /// if it has no record in the group.
    KeepAlive(Vec<(SessionId, Option<Renewed>)>),
    /// A counter's value (0 if never written).
    Counter(i64),
    /// A register's value and version (`None`: not written).
    Register(Option<(Vec<u8>, u64)>),
    /// An etcd range and the keyspace's revision when it was read (what etcd's header says).
    EtcdRange { revision: i64, response: baton_core::etcd::RangeResponse },
    /// The etcd leases asked for, in order (`None`: it does not exist, or its expiry is under
    /// way), and the keyspace's revision.
    EtcdLease { revision: i64, leases: Vec<Option<EtcdLeaseInfo>> },
    /// Every etcd lease's id and the keyspace's revision.
    EtcdLeases { revision: i64, ids: Vec<i64> },
    /// The alarms raised on the etcd keyspace, by member, and its revision.
    EtcdAlarms { revision: i64, alarms: Vec<(u64, baton_core::etcd::Alarm)> },
}

/// What etcd's lease calls show of a lease.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EtcdLeaseInfo {
    /// The TTL granted, in seconds.
    pub granted_s: i64,
    /// Whole seconds left before the leader expires it.
    pub remaining_s: i64,
    /// Its keys, if asked for.
    pub keys: Vec<Vec<u8>>,
}

/// A session renewed by one group: its TTL, and the groups its names were moved to from it.
pub type Renewed = (u64, Vec<GroupId>);

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// This node is not the group's leader; `leader` is the one it knows of.
    #[error("node is not the leader of group {group} (leader: {leader:?})")]
    NotLeader { group: GroupId, leader: Option<NodeId> },
    /// The state machine rejected the command (nothing changed).
    #[error(transparent)]
    Rejected(#[from] baton_core::Error),
    /// The request could not complete; it may or may not have taken effect. Retry with the
    /// same request id.
    #[error("{0}")]
    Unavailable(String),
    /// Too many requests are waiting; retry later.
    #[error("node is overloaded: {0} requests waiting")]
    Busy(usize),
    /// The cluster has no such group.
    #[error("group {0} does not exist in this cluster")]
    NoGroup(GroupId),
    /// The request's name is in `slot`, which the group it reached does not serve (the map it
    /// was routed by is stale, or the slot is being moved). Nothing was done. `group` serves it
    /// by this node's map, version `version` (`None`: nobody right now, a move is under way),
    /// and `leader` leads that group as far as this node knows.
    #[error("slot {slot} is served by {} (slot map version {version}): retry there", match group { Some(g) => format!("group {g}"), None => "no group right now (it is being moved)".to_string() })]
    Moved { slot: u16, group: Option<GroupId>, leader: Option<NodeId>, version: u64 },
}

/// The role of this node in a group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// Leader of the group.
    Leader,
    /// Follower (or candidate) in the group.
    #[default]
    Follower,
}

/// Something the runtime must do.
#[derive(Debug)]
pub enum Output {
    /// Send a Raft message of `group` to node `to`.
    Send { to: NodeId, group: GroupId, msg: Message },
    /// Answer request `id`.
    Reply { id: RequestId, result: Result<Reply, NodeError> },
    /// The state machine of `group` emitted `event` while applying log `index`, as the group's
    /// event number `seq` (gap-free, equal on every replica) at hybrid logical time `hlc`.
    Event { group: GroupId, index: u64, seq: u64, hlc: baton_core::Hlc, event: Event },
    /// The state machine of `group` was replaced by a snapshot from the leader: the events of
    /// the entries it covers were never emitted here, so anyone waiting for one must ask again.
    Reset { group: GroupId, event_seq: u64 },
    /// This node's role or known leader in `group` changed.
    RoleChanged { group: GroupId, role: Role, leader: Option<NodeId>, term: u64 },
    /// Propose `command` to `group` at node `to` (its leader) on this node's behalf, and hand
    /// the outcome back with [`Node::forwarded`] under `id` (a slot move's step; see
    /// [`crate::mover`]). Lost or unanswered, the step is sent again later.
    Forward { to: NodeId, id: RequestId, group: GroupId, command: Command },
}

/// A group's status as this node sees it (not linearizable; the default: a group known by id
/// only, with no leader and nothing applied).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupStatus {
    /// The group.
    pub id: GroupId,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// This node's current term.
    pub term: u64,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// This node's role.
    pub role: Role,
    /// Sessions and locks in the state machine.
    pub sessions: usize,
    /// Locks held, awaited or in lock-delay.
    pub locks: usize,
    /// Waiters queued on all names.
    pub waiters: usize,
    /// Entries in the Raft log (not yet compacted into a snapshot).
    pub log_entries: u64,
    /// Last fencing token issued.
    pub last_token: u64,
    /// The slots the group serves, as this node's replica has it.
    pub slots: Vec<(u16, u16)>,
    /// The group's voters.
    pub replicas: Vec<NodeId>,
    /// Bytes of snapshot data held in memory for followers (0 once none needs it).
    pub snapshot_bytes_in_memory: usize,
    /// The group sleeps here: an idle leader that stopped ticking, or a follower standing
    /// still on its leader's notice (see [`crate::NODE_CHANNEL`]).
    pub asleep: bool,
    /// What the etcd keyspace's kept history weighs, in bytes (0 for a group without it).
    pub etcd_bytes: u64,
    /// The etcd keyspace's revision (0 for a group without it).
    pub etcd_revision: i64,
}

/// All the groups of one process, driven by explicit inputs. See the crate docs.
pub struct Node {
    pub(crate) config: NodeConfig,
    pub(crate) groups: BTreeMap<GroupId, Group>,
    pub(crate) outputs: Vec<Output>,
    /// Monotonic clock, ms: leases, and the leader time stamped into entries.
    pub(crate) mono_ms: u64,
    /// Wall clock, ms since the Unix epoch: only for event timestamps (HLC).
    pub(crate) wall_ms: u64,
    /// The meta leader's slot moves in progress.
    pub(crate) mover: crate::mover::Mover,
    /// Replicas created since the last round: their initial state, written with the next batch.
    boot_writes: Vec<crate::disk::GroupWrite>,
}

impl Node {
    /// Builds the node from its groups (recovered from disk, or new: see [`initial_groups`]).
    /// Returns the node and the write that makes new groups durable; the runtime must persist
    /// it before serving.
    pub fn new(config: NodeConfig, groups: Vec<(GroupId, Start)>) -> Result<(Node, WriteBatch), String> {
        let mut batch = WriteBatch::default();
        let mut map = BTreeMap::new();
        for (id, start) in groups {
            let (group, write) = Group::open(&config, id, start)?;
            if let Some(w) = write {
                batch.groups.push(w);
            }
            map.insert(id, group);
        }
        if config.voters == [config.id] {
            // A single voter is its own majority: no reason to wait out an election timeout.
            for g in map.values_mut() {
                g.campaign();
            }
        }
        let node = Node {
            config,
            groups: map,
            outputs: Vec::new(),
            mono_ms: 0,
            wall_ms: 0,
            mover: Default::default(),
            boot_writes: Vec::new(),
        };
        Ok((node, batch))
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// Sets the clocks for the inputs that follow: the monotonic clock (milliseconds from any
    /// fixed origin; leases and deadlines) and the wall clock (milliseconds since the Unix epoch;
    /// only for the hybrid-logical-clock timestamps of events). Neither goes backwards: an
    /// earlier reading is ignored.
    pub fn set_time(&mut self, mono_ms: u64, wall_ms: u64) {
        self.mono_ms = self.mono_ms.max(mono_ms);
        self.wall_ms = self.wall_ms.max(wall_ms);
    }

    /// One Raft tick of every group, plus the leader's duties: expire sessions whose deadline
    /// passed, propose a `Tick` when a state machine timer is due, time out stale requests.
    pub fn tick(&mut self) {
        for group in self.groups.values_mut() {
            group.tick(self.mono_ms, self.wall_ms, &self.config, &mut self.outputs);
        }
        self.send_sleep_notices();
        self.place_leaders();
        self.drive_replicas();
        self.drive_moves();
        self.take_mover_replies();
    }

    /// Hands the leadership of each group this node leads to the group's preferred leader (see
    /// [`baton_core::topology`], "Placement") once that node is caught up. Only with more than
    /// one data group: with one, moving the leadership would buy nothing and cost a pause.
    fn place_leaders(&mut self) {
        let Some(topology) = self.groups.get(&META_GROUP).and_then(|g| g.sm.topology()) else { return };
        if topology.data_groups().count() < 2 {
            return;
        }
        let preferred: Vec<(GroupId, NodeId)> = topology.preferred_leaders().into_iter().collect();
        for (id, to) in preferred {
            if let Some(g) = self.groups.get_mut(&id) {
                g.hand_to_preferred(to, self.mono_ms);
            }
        }
    }

    /// The group a request for `key` (a name, or a client id for a session's home) goes to by
    /// this node's map: the data group serving its slot (group 1 without a map).
    pub fn group_of(&self, key: &str) -> GroupId {
        self.topology().and_then(|t| t.group_of(baton_core::slot_of(key))).unwrap_or(crate::DATA_GROUP)
    }

    /// A refusal for a name outside the group's slots, with where the name is served instead.
    pub fn moved(&self, slot: u16, refused_by: GroupId) -> NodeError {
        // A slot being moved is the destination's once the source refuses it (the destination
        // may not serve it yet either; the client then asks again after a pause), and still the
        // source's for anyone else.
        let group = self.topology().and_then(|t| match t.moving(slot) {
            Some((_, m)) if m.from == refused_by => Some(m.to),
            Some((_, m)) => Some(m.from),
            None => t.group_of(slot),
        });
        let version = self.topology().map_or(0, |t| t.version);
        NodeError::Moved { slot, group, leader: group.and_then(|g| self.leader(g)), version }
    }

    /// A request for a group this node holds no replica of (or a stale one, see
    /// [`Group::is_member`](crate::group::Group)). Replicas live on some of the members only,
    /// and a joiner has no topology yet: unless the topology says there is no such group, it is
    /// a redirect (to the group's preferred leader as a hint), never an answer a client could
    /// take for a refusal by the group (a release answered "not found" here was taken for done,
    /// and the lock stayed held: `sharding::nodes_join_and_leave_under_load` caught it).
    fn not_here(&self, group: GroupId) -> NodeError {
        match self.topology() {
            Some(t) if group != META_GROUP && !t.groups.contains_key(&group) => NodeError::NoGroup(group),
            t => NodeError::NotLeader {
                group,
                leader: t.and_then(|t| t.preferred_leader(group)).filter(|l| *l != self.config.id),
            },
        }
    }

    /// The data groups this node leads (not the meta group, nor the etcd keyspace's: Baton's
    /// sessions and names live in data groups only).
    pub fn leading(&self) -> Vec<GroupId> {
        self.groups
            .iter()
            .filter(|(id, g)| {
                **id != META_GROUP && **id != baton_core::topology::ETCD_GROUP && g.role() == Role::Leader
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Each group this node leads moves its membership one step toward the topology's: the
    /// meta group's voters are the members, a data group's its replicas (see
    /// `Group::drive_replicas`).
    fn drive_replicas(&mut self) {
        let Some(topology) = self.topology() else { return };
        if topology.nodes.is_empty() {
            return;
        }
        let version = topology.version;
        let mut targets: Vec<(GroupId, Vec<NodeId>)> =
            topology.groups.iter().map(|(id, g)| (*id, g.replicas.clone())).collect();
        targets.push((META_GROUP, topology.nodes.keys().copied().collect()));
        for (id, target) in targets {
            if let Some(g) = self.groups.get_mut(&id) {
                g.drive_replicas(&target, version);
            }
        }
    }

    /// The ids of the groups this node holds a replica of.
    pub fn groups(&self) -> Vec<GroupId> {
        self.groups.keys().copied().collect()
    }

    /// The cluster's layout as this node's replica of the meta group has it (not linearizable).
    pub fn topology(&self) -> Option<&baton_core::Topology> {
        self.groups.get(&META_GROUP).and_then(|g| g.sm.topology())
    }

    /// Whether a peer's message for `group` may be stepped into raft-rs; [`Node::step`] drops
    /// (and logs) one that may not. raft-rs trusts its peers: it panics on a message that
    /// contradicts its log, and installs whatever a snapshot carries. The transport has checked
    /// that the message came over an accepted member's stream with the right `from` and `to`;
    /// this refuses, without ever panicking, a group this node does not hold and every message
    /// a correct member never sends that raft-rs would panic on or that would stop this node
    /// (the classes are listed in `group/inbound.rs`): local message types, terms and indexes
    /// near `u64::MAX`, terms of 0 or on forwarded requests, appends and heartbeats that
    /// contradict the log, snapshot requests, read-index and proposal messages without their
    /// entries or whose proposals do not decode, snapshots that are inconsistent or whose state
    /// does not decode (a decode of every snapshot received: the one check that costs).
    ///
    /// What is not refused: anything consistent. Raft is not Byzantine-tolerant and neither is
    /// this check: a member that is authenticated but malicious (or corrupt) can still claim a
    /// higher term and depose the leader, vote as it likes, or, as a leader, replicate entries
    /// whose data does not decode (replicas stop at them: an entry cannot be skipped) or a
    /// well-formed but false snapshot. Keeping such a member out is the transport's (mTLS) and
    /// the operator's job; tolerating it is out of scope.
    pub fn check_step(&self, group: GroupId, msg: &Message) -> Result<(), String> {
        let Some(g) = self.groups.get(&group) else {
            return Err(format!("group {group} is not held here"));
        };
        g.check_message(msg)
    }

    /// A message from a peer. A leader's message for a data group this node holds no replica of
    /// yet creates one, from the group's initial state as the founders created it (the node
    /// was just given a replica: the leader brings it up to date, from the log or a snapshot).
    /// A message [`Node::check_step`] refuses is dropped and logged.
    pub fn step(&mut self, group: GroupId, msg: Message) {
        use raft::eraftpb::MessageType as M;
        if group == NODE_CHANNEL {
            return self.sleep_notice(msg);
        }
        if !self.groups.contains_key(&group)
            && matches!(msg.get_msg_type(), M::MsgAppend | M::MsgHeartbeat | M::MsgSnapshot)
        {
            self.create_replica(group);
        }
        if let Err(e) = self.check_step(group, &msg) {
            // Never sent by a correct member: worth an operator's attention, and rare.
            if self.groups.contains_key(&group) {
                tracing::warn!(group, from = msg.from, "refused a raft message: {e}");
            }
            return;
        }
        if let Some(g) = self.groups.get_mut(&group) {
            g.step(msg);
        }
    }

    /// Once per tick: tells each peer, in one message, which of the groups this node leads
    /// sleep (see [`NODE_CHANNEL`]).
    fn send_sleep_notices(&mut self) {
        let mut per_peer: BTreeMap<NodeId, Vec<u8>> = BTreeMap::new();
        for (id, g) in &self.groups {
            let Some(term) = g.sleeping_term() else { continue };
            for peer in g.peers() {
                let notice = per_peer.entry(peer).or_default();
                notice.extend_from_slice(&id.to_be_bytes());
                notice.extend_from_slice(&term.to_be_bytes());
            }
        }
        for (to, context) in per_peer {
            let msg = Message {
                msg_type: raft::eraftpb::MessageType::MsgHeartbeat,
                from: self.config.id,
                to,
                context: context.into(),
                ..Default::default()
            };
            self.outputs.push(Output::Send { to, group: NODE_CHANNEL, msg });
        }
    }

    /// A peer's message on the node channel: a notice of the groups it leads that sleep
    /// (`MsgHeartbeat`), answered at once with the (group, term) pairs this node accepted
    /// (`MsgHeartbeatResponse`), which tell the sleeping leader that its followers still hear
    /// it. Both carry (group, term) pairs, 16 bytes each. A malformed message is ignored (it
    /// can only come from a member, over an authenticated peer stream, and ignoring it only
    /// keeps followers ticking or wakes a leader).
    fn sleep_notice(&mut self, msg: Message) {
        use raft::eraftpb::MessageType as M;
        let context = msg.get_context();
        if !context.len().is_multiple_of(16) || context.len() / 16 > self.groups.len() {
            return;
        }
        let notice = msg.get_msg_type() == M::MsgHeartbeat;
        let mut accepted = Vec::new();
        for pair in context.chunks_exact(16) {
            let group = u64::from_be_bytes(pair[..8].try_into().expect("8 bytes"));
            let term = u64::from_be_bytes(pair[8..].try_into().expect("8 bytes"));
            let Some(g) = self.groups.get_mut(&group) else { continue };
            if !notice {
                g.follower_hears(msg.from, term);
            } else if g.leader_sleeps(msg.from, term) {
                accepted.extend_from_slice(pair);
            }
        }
        if notice && !accepted.is_empty() {
            let to = msg.from;
            let msg = Message {
                msg_type: M::MsgHeartbeatResponse,
                from: self.config.id,
                to,
                context: accepted.into(),
                ..Default::default()
            };
            self.outputs.push(Output::Send { to, group: NODE_CHANNEL, msg });
        }
    }

    fn create_replica(&mut self, group: GroupId) {
        let Some(topology) = self.topology() else { return };
        let Some(placement) = topology.initial_placement(group) else { return };
        let state = if self.config.bugs.joiner_starts_empty {
            // Deliberate bug: the new replica starts empty (group 1, every slot).
            baton_core::StateMachine::new(self.config.limits.clone())
        } else {
            baton_core::StateMachine::initial_of(self.config.limits.clone(), group, &placement)
        };
        let start = Start::New { voters: placement.replicas.clone(), state: Box::new(state) };
        match Group::open(&self.config, group, start) {
            Ok((g, write)) => {
                self.groups.insert(group, g);
                self.boot_writes.extend(write);
            }
            Err(e) => tracing::warn!(group, "cannot create a replica: {e}"),
        }
    }

    /// Proposes a command; the reply comes as an [`Output::Reply`] once it is applied.
    pub fn propose(&mut self, group: GroupId, id: RequestId, command: Command) {
        self.propose_for(group, id, command, None)
    }

    /// Proposes a command for `user` (authentication on): applied only if every session it
    /// names is that user's (see [`baton_core::command::session_owner`]).
    pub fn propose_for(&mut self, group: GroupId, id: RequestId, command: Command, user: Option<Principal>) {
        let Some(g) = self.groups.get_mut(&group).filter(|g| g.is_member()) else {
            let err = self.not_here(group);
            return self.outputs.push(Output::Reply { id, result: Err(err) });
        };
        if let Err(e) = g.propose(self.config.id, id, command, user, self.mono_ms, self.wall_ms, &self.config) {
            self.outputs.push(Output::Reply { id, result: Err(e) });
        }
    }

    /// Queues a linearizable read; the reply comes as an [`Output::Reply`].
    pub fn read(&mut self, group: GroupId, id: RequestId, query: Query) {
        self.read_for(group, id, query, None)
    }

    /// Queues a linearizable read for `user` (authentication on): sessions that are not that
    /// user's are answered as if they did not exist, and are not renewed.
    pub fn read_for(&mut self, group: GroupId, id: RequestId, query: Query, user: Option<Principal>) {
        let Some(g) = self.groups.get_mut(&group).filter(|g| g.is_member()) else {
            let err = self.not_here(group);
            return self.outputs.push(Output::Reply { id, result: Err(err) });
        };
        if let Err(e) = g.read(id, query, user.map(|p| p.name), self.mono_ms, &self.config) {
            self.outputs.push(Output::Reply { id, result: Err(e) });
        }
    }

    /// Collects every group's pending Raft work: queues messages, replies and events, applies
    /// committed entries, and returns what must be made durable before [`Node::persisted`].
    pub fn ready(&mut self) -> Result<WriteBatch, String> {
        // New replicas' initial state goes first, before anything their groups write.
        let mut batch = WriteBatch { groups: std::mem::take(&mut self.boot_writes) };
        for group in self.groups.values_mut() {
            if let Some(w) = group.ready(self.mono_ms, &self.config, &mut self.outputs)? {
                batch.groups.push(w);
            }
        }
        self.take_mover_replies();
        Ok(batch)
    }

    /// The last batch from [`Node::ready`] is durable: finish those Raft rounds.
    pub fn persisted(&mut self) -> Result<(), String> {
        for group in self.groups.values_mut() {
            group.persisted(self.mono_ms, &self.config, &mut self.outputs)?;
        }
        self.take_mover_replies();
        Ok(())
    }

    /// True if [`Node::ready`] has work to do.
    pub fn has_ready(&self) -> bool {
        !self.boot_writes.is_empty() || self.groups.values().any(|g| g.has_ready())
    }

    /// Hands over the outputs queued so far.
    pub fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    /// Moves the queued outputs into `out` (keeps `out`'s allocation).
    pub fn drain_outputs_into(&mut self, out: &mut Vec<Output>) {
        out.append(&mut self.outputs);
    }

    /// The status of every group on this node.
    pub fn status(&self) -> Vec<GroupStatus> {
        self.groups.values().map(|g| g.status()).collect()
    }

    /// The status of one group this node holds.
    pub fn group_status(&self, group: GroupId) -> Option<GroupStatus> {
        self.groups.get(&group).map(|g| g.status())
    }

    /// The leader of `group` as this node knows it.
    pub fn leader(&self, group: GroupId) -> Option<NodeId> {
        self.groups.get(&group).and_then(|g| g.leader())
    }

    /// The state machine of a group, for tests and local (non-linearizable) inspection. (A
    /// replica this node was removed from stays here, frozen: see [`Node::replica`].)
    pub fn state_machine(&self, group: GroupId) -> Option<&baton_core::StateMachine> {
        self.groups.get(&group).map(|g| &g.sm)
    }

    /// The state machine of a group this node holds a live replica of: `None` for a group it
    /// never held or was removed from (placement moved the replica away; the stale copy stops
    /// at the removal).
    pub fn replica(&self, group: GroupId) -> Option<&baton_core::StateMachine> {
        self.groups.get(&group).filter(|g| g.is_member()).map(|g| &g.sm)
    }

    /// Asks this node, if it leads `group`, to hand the leadership to `to` (placement, and
    /// tests). Proposals are refused while the transfer is under way (at most an election
    /// timeout).
    pub fn transfer_leader(&mut self, group: GroupId, to: NodeId) {
        if let Some(g) = self.groups.get_mut(&group) {
            g.transfer_leader(to);
        }
    }

    /// Asks `group` to campaign now (tests and leadership transfer).
    pub fn campaign(&mut self, group: GroupId) {
        if let Some(g) = self.groups.get_mut(&group) {
            g.campaign();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: the lease was 80% of the election timeout (800 ms of 1 s), more than the
    /// 900 ms a follower is sure to refuse votes for, before any allowance for clocks.
    #[test]
    fn the_lease_fits_in_the_followers_refusal_window_with_every_allowance() {
        assert_eq!(lease_read_ms(DEFAULT_ELECTION_TICKS, 100), 705);
        for election_ticks in 1..=30 {
            for tick_ms in [1, 10, 20, 50, 100, 250, 1_000] {
                let lease = lease_read_ms(election_ticks, tick_ms);
                let window = (election_ticks as u64).saturating_sub(1) * tick_ms;
                if lease == 0 {
                    continue;
                }
                // Measured on the leader's clock, the window can look this much shorter.
                let drifted = window - window * LEASE_DRIFT_PPM / 1_000_000;
                assert!(
                    lease + LEASE_CLOCK_JUMP_MS + LEASE_READING_AGE_MS <= drifted,
                    "{election_ticks} ticks of {tick_ms} ms: lease {lease} ms"
                );
            }
        }
        // Too short a timeout leaves no room for the allowances: no lease at all.
        assert_eq!(lease_read_ms(10, 10), 0);
        assert_eq!(lease_read_ms(1, 1_000), 0);
    }
}
