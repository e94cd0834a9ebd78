//! The coordination-free tier on one node: a replica of every CRDT object, updated by any
//! client on any node without waiting for any other node, and converging by gossip.
//!
//! # Design
//! [`Replica`] is sans-IO like [`crate::Node`]: the runtime hands it requests, peers' messages
//! and clock readings, takes the states it must make durable, and, once they are, the answers
//! and messages to send. The rule that makes acknowledgements honest is the Raft node's: **a
//! round's answers and messages leave only after the round's write is durable**
//! ([`Replica::take_write`], [`Replica::written`]). So an acknowledged update survives a crash
//! of the node that took it, and no dot ever leaves a node before it is on that node's disk: a
//! node that crashes and restarts never hands out one of its dots twice.
//!
//! Updates ([`CrdtRequest::Update`]) apply to the local state at once (stamped with the
//! replica's hybrid logical clock) and join the round's deltas, which go to every peer after the
//! write ([`gossip`]). A set's or MV register's delta names the entries its updates replaced but
//! not what those entries had replaced in turn (nor the earlier removes of an element inserted
//! again), so a receiver joins it only once its causal past (the sender's context before the
//! update, sent along) is here ([`Context::ready_for`]): joined earlier, it could leave a
//! replaced value next to the update that replaced it. Such a delta waits (other deltas may bring its past)
//! for at most `retry_ms`, then the replica pulls the sender's state instead (bounded by
//! [`MAX_PENDING_DELTAS`]). Counters, G-sets and LWW registers have no such past to wait for; merged states from peers are written too, at the latest
//! [`MERGE_WRITE_DELAY_MS`] later, and always before the node reports having them (to a
//! converged read's probe). Anti-entropy repairs what gossip lost.
//!
//! # Read levels
//! - [`ReadLevel::Local`]: this replica's state now. May lag behind updates acknowledged
//!   elsewhere; never waits.
//! - [`ReadLevel::Session`]: at least what the session's token (a context the client keeps from
//!   its own updates and reads) says it has seen: read-your-writes and monotonic reads for one
//!   client, whichever node it asks. A replica that lacks part of the token pulls the object
//!   from its peers and answers once it has it (or fails at the deadline).
//! - [`ReadLevel::Converged`]: answers once every live peer (heard from within `live_ms`) holds,
//!   durably, every update this replica had when the read arrived; pushes its state to those
//!   that lack some. A peer that is down or partitioned away is not waited for (nothing could
//!   converge until it is back): converged means "on every node that answers". During the
//!   first `live_ms` after a start, peers not heard from yet count as live.
//!
//! A session's updates carry its token too ([`CrdtRequest::Update`]'s `after`) and wait for it
//! as session reads do: a session's own updates keep their order whichever nodes take them.
//!
//! # Bounded counters
//! A subtraction the local rights do not cover waits (until its deadline) while the replica asks
//! its peers for rights; a peer gives what it can of what is asked from its own rights (a local
//! transfer, gossiped as any update), and the subtraction is tried again whenever the object
//! changes.
//!
//! # Placement
//! With a [`Placement`] ([`Replica::set_placement`]) an object lives on the owners of its slot
//! (the replicas of the data group serving it): other nodes refuse its requests
//! ([`CrdtFailure::NotOwned`], naming the owners), deltas, pulls, probes and rights requests go to
//! owners only, anti-entropy with a peer covers the slots both own, and objects of slots this node
//! no longer owns are handed to their owners and dropped (see `handoff.rs`). Without one, every node
//! owns everything.
//!
//! # Caveats
//! - An object, once created, is never deleted (a counter, set or register emptied still holds
//!   its context, a few numbers per replica that ever wrote).
//! - A node whose CRDT store alone was lost hands out dots its peers already hold until it
//!   merges their states (it logs a warning when it sees them): a lost store is a lost member.
//! - Digest hashes are FNV-1a, not keyed: values crafted to collide could hide a difference
//!   from anti-entropy until the object changes again.

mod antientropy;
pub mod gossip;
mod handoff;
pub mod placement;
pub mod store;
mod waits;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use baton_core::crdt::{Context, CrdtError, Key, Kind, Object, Op, Value};
use baton_core::Hlc;

pub use gossip::{Delta, Gossip};
pub use placement::Placement;
pub use store::{CrdtStore, EngineCrdtStore, MemCrdtStore, Stored};

use crate::{NodeId, RequestId};
use gossip::{bucket_of, encode_state, hash_of, Position, BUCKETS, MAX_KEYS_PER_EXCHANGE};

/// Longest a state merged from a peer waits for the disk when nothing else needs a write: a
/// round with no local update and no probe to answer writes nothing (merged states are durable
/// on the nodes that made them; a crash loses only what anti-entropy brings back).
pub const MERGE_WRITE_DELAY_MS: u64 = 10;

/// Most peers' deltas waiting for their causal past at once; past it the replica pulls the
/// sender's state instead (at the next tick, once per object and sender).
pub const MAX_PENDING_DELTAS: usize = 1024;

/// A replica gives one asker rights on one counter at most once per this many retry periods.
const GIVE_MEMORY_RETRIES: u64 = 4;

/// How fresh a read must be (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadLevel {
    /// This replica's state.
    Local,
    /// At least the updates in this token.
    Session(Context),
    /// Every live replica has every update this one had.
    Converged,
}

/// A client's request to the tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CrdtRequest {
    /// Apply an update here, once this replica has every update of `after` (the session's
    /// token: a session's updates apply after everything it has seen, its own included).
    Update { key: Key, op: Op, after: Context },
    /// Read at a level.
    Read { key: Key, level: ReadLevel },
}

/// The answer to a request: the value read or left by the update, and the object's context
/// here (a session's token grows by it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrdtReply {
    /// The value.
    pub value: Value,
    /// The context the value reflects.
    pub token: Context,
}

/// Why a request failed. Nothing was applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CrdtFailure {
    /// The update was refused (limits, the type's rules, a bounded counter short of rights).
    #[error(transparent)]
    Refused(#[from] CrdtError),
    /// The read level or the rights were not reached before the deadline.
    #[error("{0}")]
    Timeout(String),
    /// Too many objects or waiting requests.
    #[error("{0}")]
    Busy(String),
    /// The node stopped (a failed write) with the update in its round: it may or may not be
    /// on the disk, hence may or may not count.
    #[error("{0}")]
    Unknown(String),
    /// This node holds no replica of the object: `owners` do (the live ones first).
    #[error("this node holds no replica of the {kind} {name:?}: nodes {owners:?} do")]
    NotOwned { kind: &'static str, name: String, owners: Vec<NodeId> },
}

/// Settings; the defaults suit a LAN.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// This node.
    pub id: NodeId,
    /// Start an anti-entropy exchange with every peer this often.
    pub anti_entropy_ms: u64,
    /// A peer heard from within this long is live (a converged read waits for it).
    pub live_ms: u64,
    /// Ask again (probe, pull, rights) this often while a request waits.
    pub retry_ms: u64,
    /// Most objects; an update that would create one more is refused.
    pub max_objects: usize,
    /// Most requests waiting at once.
    pub max_waits: usize,
}

impl ReplicaConfig {
    /// Defaults for node `id`.
    pub fn new(id: NodeId) -> Self {
        ReplicaConfig {
            id,
            anti_entropy_ms: 1000,
            live_ms: 3000,
            retry_ms: 50,
            max_objects: 1_000_000,
            max_waits: 10_000,
        }
    }
}

/// What the replica asks of its runtime.
#[derive(Clone, Debug, PartialEq)]
pub enum CrdtOutput {
    /// Send a message to a peer.
    Send { to: NodeId, msg: Gossip },
    /// Answer request `id`.
    Answer { id: RequestId, result: Result<CrdtReply, CrdtFailure> },
    /// An object changed (by a local update or a merge): for watchers (only while
    /// [`Replica::set_watched`] says someone watches).
    Changed { key: Key, value: Value, local: bool },
}

struct Held {
    obj: Object,
    hash: u64,
}

enum WaitFor {
    /// The local context must cover the token.
    Token(Context),
    /// The local context must cover the token; then the update applies.
    UpdateAfter(Context, Op),
    /// Every peer in the map must report a context covering the target (true: it did).
    Converged { target: Context, peers: BTreeMap<NodeId, bool>, probe: u64 },
    /// A bounded counter subtraction short of rights.
    Rights(u64),
}

struct Wait {
    id: RequestId,
    key: Key,
    what: WaitFor,
    deadline_ms: u64,
    next_try_ms: u64,
}

/// One node's replica of the tier. See the module docs.
pub struct Replica {
    cfg: ReplicaConfig,
    peers: BTreeSet<NodeId>,
    now_ms: u64,
    wall_ms: u64,
    hlc: Hlc,
    objects: BTreeMap<Key, Held>,
    buckets: Vec<u64>,
    /// Changed since they were last hashed and written.
    dirty: BTreeSet<Key>,
    /// Encoded states to write (hashed already).
    to_write: BTreeMap<Key, Vec<u8>>,
    /// This round's local updates, joined per object, to gossip once durable (see [`Delta`]).
    deltas: BTreeMap<Key, Delta>,
    /// Peers' deltas waiting for their causal past (see the module docs), per key: sender,
    /// delta, since when.
    pending: BTreeMap<Key, Vec<(NodeId, Delta, u64)>>,
    pending_count: usize,
    /// Outputs held until the round's write is durable.
    held: Vec<CrdtOutput>,
    /// A local update since the last write: the next round must write (answers and deltas
    /// wait for it).
    local_changes: bool,
    /// Someone watches: emit [`CrdtOutput::Changed`].
    watched: bool,
    /// Since when merged states have waited for the disk (see [`MERGE_WRITE_DELAY_MS`]).
    dirty_since: Option<u64>,
    out: Vec<CrdtOutput>,
    waits: Vec<Wait>,
    heard: BTreeMap<NodeId, u64>,
    /// Every key, per digest bucket (anti-entropy pages through them).
    bucket_keys: Vec<BTreeSet<Key>>,
    /// The XOR of the hashes of the objects held, per slot: a digest for one peer covers the
    /// slots both own.
    slot_hash: Vec<u64>,
    /// Who owns which slot (`None`: every node owns every slot).
    placement: Option<Arc<Placement>>,
    /// Objects held here in slots this node does not own: handed to their owners, then dropped.
    foreign: BTreeSet<Key>,
    /// Per foreign object, the context each owner reported holding durably (the object is
    /// dropped once every owner's covers this node's, as it is then).
    handed: BTreeMap<Key, BTreeMap<NodeId, Context>>,
    /// Where the next hand-off page starts (after this key).
    handoff_cursor: Option<Key>,
    /// Where the next scan for rights held by non-owners starts (after this key).
    rights_cursor: Option<Key>,
    /// Markers to write (or, with 0, to delete): see `dropped`.
    marks_to_write: BTreeMap<Key, u64>,
    /// Objects to pull from a peer at the next tick (deltas that found the pending queue full).
    pull_soon: BTreeSet<(NodeId, Key)>,
    /// Probes of the hand-off, by id: when sent.
    handoff_probes: BTreeMap<u64, u64>,
    /// Objects this node dropped after handing them off, with its last dot of each: an update
    /// there waits until the object is back with every one of those dots (else a dot would be
    /// issued twice). Kept on the disk as markers ([`Stored::Dropped`]).
    dropped: BTreeMap<Key, u64>,
    /// Objects handed off and dropped since the start.
    handed_off: u64,
    /// Where the next anti-entropy page for each peer starts.
    ae_cursor: BTreeMap<NodeId, Position>,
    /// Rights given lately, by (asker, counter): when.
    given: BTreeMap<(NodeId, Key), u64>,
    /// The first clock reading: until `live_ms` after it, a peer not heard from yet counts as
    /// live (a node that just started has heard from nobody; its converged reads must wait).
    started_ms: Option<u64>,
    next_anti_entropy_ms: u64,
    next_probe: u64,
    bugs: baton_core::Bugs,
}

impl Replica {
    /// A replica with the states `recovered` from its store, gossiping with `peers`.
    pub fn new(cfg: ReplicaConfig, peers: impl IntoIterator<Item = NodeId>, recovered: Vec<(Key, Stored)>) -> Self {
        let mut r = Replica {
            peers: BTreeSet::new(),
            now_ms: 0,
            wall_ms: 0,
            hlc: Hlc::default(),
            objects: BTreeMap::new(),
            buckets: vec![0; BUCKETS],
            dirty: BTreeSet::new(),
            to_write: BTreeMap::new(),
            deltas: BTreeMap::new(),
            pending: BTreeMap::new(),
            pending_count: 0,
            held: Vec::new(),
            local_changes: false,
            watched: false,
            dirty_since: None,
            out: Vec::new(),
            waits: Vec::new(),
            heard: BTreeMap::new(),
            given: BTreeMap::new(),
            bucket_keys: vec![BTreeSet::new(); BUCKETS],
            slot_hash: vec![0; baton_core::SLOTS as usize],
            placement: None,
            foreign: BTreeSet::new(),
            handed: BTreeMap::new(),
            handoff_probes: BTreeMap::new(),
            handoff_cursor: None,
            rights_cursor: None,
            marks_to_write: BTreeMap::new(),
            pull_soon: BTreeSet::new(),
            dropped: BTreeMap::new(),
            handed_off: 0,
            ae_cursor: BTreeMap::new(),
            started_ms: None,
            next_anti_entropy_ms: 0,
            next_probe: 0,
            bugs: baton_core::Bugs::default(),
            cfg,
        };
        r.set_peers(peers);
        for (key, stored) in recovered {
            let obj = match stored {
                Stored::State(obj) => obj,
                Stored::Dropped(top) => {
                    r.dropped.insert(key, top);
                    continue;
                }
            };
            if let Some(h) = obj.max_stamp() {
                r.hlc = r.hlc.max(h);
            }
            let hash = hash_of(&key, &encode_state(&obj));
            r.buckets[bucket_of(&key)] ^= hash;
            r.slot_hash[baton_core::slot_of(&key.name) as usize] ^= hash;
            r.bucket_keys[bucket_of(&key)].insert(key.clone());
            r.objects.insert(key, Held { obj, hash });
        }
        r
    }

    /// Who owns which slot (the runtime calls this when the topology changes; `None`: every
    /// node owns every slot). Objects held in slots this node no longer owns are handed to
    /// their owners and dropped once each owner holds them.
    pub fn set_placement(&mut self, placement: Option<Arc<Placement>>) {
        let same = match (self.placement.as_deref(), placement.as_deref()) {
            (None, None) => true,
            (Some(a), Some(b)) => a.same_owners(b),
            _ => false,
        };
        if same {
            // A new topology version with the same owners: hand-offs under way go on.
            return;
        }
        self.placement = placement;
        let foreign: BTreeSet<Key> = self.objects.keys().filter(|k| !self.owns(k)).cloned().collect();
        self.handed.clear();
        self.foreign = foreign;
        // Requests waiting on objects this node no longer owns fail (nothing was applied): the
        // client asks an owner. A subtraction waiting for rights here would otherwise be given
        // rights that only this node could spend, after it handed the object off.
        let waits = std::mem::take(&mut self.waits);
        for w in waits {
            if self.owns(&w.key) {
                self.waits.push(w);
            } else {
                let failure = self.not_owned(&w.key);
                self.answer(w.id, Err(failure));
            }
        }
        // Digests change with the owners: start every peer's paging again.
        self.ae_cursor.clear();
        if self.bugs.crdt_drop_before_handoff {
            // Planted bug: what this node no longer owns goes at once.
            for key in self.foreign.clone() {
                self.drop_object(&key);
            }
        }
    }

    /// True if this node owns `key`.
    pub fn owns(&self, key: &Key) -> bool {
        self.placement.as_ref().is_none_or(|p| p.owners(key).contains(&self.cfg.id))
    }

    /// True if peer `peer` owns `key`.
    fn peer_owns(&self, peer: NodeId, key: &Key) -> bool {
        self.placement.as_ref().is_none_or(|p| p.owners(key).contains(&peer))
    }

    /// True if this node and `peer` both own `slot`.
    fn shared(&self, slot: baton_core::Slot, peer: NodeId) -> bool {
        self.placement.as_ref().is_none_or(|p| p.owns(self.cfg.id, slot) && p.owns(peer, slot))
    }

    /// The live peers that own `key`.
    fn live_owner_peers(&self, key: &Key) -> Vec<NodeId> {
        self.live_peers().into_iter().filter(|&p| self.peer_owns(p, key)).collect()
    }

    /// Deliberate bugs for the simulator's planted-bug checks (all off in production).
    pub fn set_bugs(&mut self, bugs: baton_core::Bugs) {
        self.bugs = bugs;
    }

    /// The other nodes of the cluster (the runtime calls this when membership changes).
    pub fn set_peers(&mut self, peers: impl IntoIterator<Item = NodeId>) {
        self.peers = peers.into_iter().filter(|&p| p != self.cfg.id).collect();
    }

    /// The clock: monotonic (deadlines, liveness) and wall (the HLC's physical part).
    pub fn set_time(&mut self, mono_ms: u64, wall_ms: u64) {
        self.now_ms = self.now_ms.max(mono_ms);
        self.wall_ms = wall_ms;
        self.started_ms.get_or_insert(mono_ms);
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    /// The object's state here, if any.
    pub fn get(&self, key: &Key) -> Option<&Object> {
        self.objects.get(key).map(|h| &h.obj)
    }

    /// Number of objects held.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// True if no object is held.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Every key held, in order.
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.objects.keys()
    }

    /// The peers heard from within `live_ms` (and, during the first `live_ms` after the start,
    /// those not heard from yet).
    pub fn live_peers(&self) -> Vec<NodeId> {
        let since = self.now_ms.saturating_sub(self.cfg.live_ms);
        let young = self.started_ms.is_none_or(|s| self.now_ms < s + self.cfg.live_ms);
        self.peers
            .iter()
            .copied()
            .filter(|p| match self.heard.get(p) {
                Some(&t) => t >= since,
                None => young,
            })
            .collect()
    }

    /// A client request, due by `deadline_ms` on the monotonic clock.
    pub fn request(&mut self, id: RequestId, req: CrdtRequest, deadline_ms: u64) {
        let key = match &req {
            CrdtRequest::Update { key, .. } | CrdtRequest::Read { key, .. } => key,
        };
        if !self.owns(key) {
            let failure = self.not_owned(key);
            self.answer(id, Err(failure));
            return;
        }
        match req {
            CrdtRequest::Update { key, op, mut after } => {
                if let (Some(&top), false) = (self.dropped.get(&key), self.bugs.crdt_dropped_forgets_dots) {
                    // Handed off and dropped earlier: this node's own dots of it must come back
                    // before it makes another.
                    after.insert_upto(self.cfg.id, top);
                }
                if self.has(&key, &after) || self.bugs.crdt_update_ignores_token {
                    self.update(id, key, op, deadline_ms);
                } else {
                    self.pull(&key);
                    let next_try_ms = self.now_ms + self.cfg.retry_ms;
                    self.wait(Wait { id, key, what: WaitFor::UpdateAfter(after, op), deadline_ms, next_try_ms });
                }
            }
            CrdtRequest::Read { key, level } => self.read(id, key, level, deadline_ms),
        }
    }

    /// The refusal of a request for an object this node does not own: its owners, the live
    /// ones first, starting from one picked by the name (so that clients spread over them).
    fn not_owned(&self, key: &Key) -> CrdtFailure {
        let mut owners: Vec<NodeId> = self.placement.as_ref().map(|p| p.owners(key).to_vec()).unwrap_or_default();
        if !owners.is_empty() {
            let at = baton_core::slot_of(&key.name) as usize % owners.len();
            owners.rotate_left(at);
        }
        let live = self.live_peers();
        owners.sort_by_key(|o| !live.contains(o));
        CrdtFailure::NotOwned { kind: key.kind.label(), name: key.name.clone(), owners }
    }

    fn answer(&mut self, id: RequestId, result: Result<CrdtReply, CrdtFailure>) {
        self.held.push(CrdtOutput::Answer { id, result });
    }

    fn reply(&self, key: &Key) -> CrdtReply {
        match self.objects.get(key) {
            Some(h) => CrdtReply { value: h.obj.value(self.cfg.id), token: h.obj.ctx.clone() },
            None => CrdtReply { value: key.kind.empty().value(self.cfg.id), token: Context::new() },
        }
    }

    fn update(&mut self, id: RequestId, key: Key, op: Op, deadline_ms: u64) {
        match self.try_update(&key, op.clone()) {
            Ok(()) => {
                let reply = self.reply(&key);
                self.answer(id, Ok(reply));
            }
            Err(CrdtFailure::Refused(CrdtError::NotEnoughRights { .. })) if deadline_ms > self.now_ms => {
                let Op::Subtract(n) = op else { unreachable!("only subtractions wait for rights") };
                self.ask_rights(&key, n);
                let next_try_ms = self.now_ms + self.cfg.retry_ms;
                self.wait(Wait { id, key, what: WaitFor::Rights(n), deadline_ms, next_try_ms });
            }
            Err(e) => self.answer(id, Err(e)),
        }
    }

    /// Applies a local update; on success the delta joins the round's.
    fn try_update(&mut self, key: &Key, op: Op) -> Result<(), CrdtFailure> {
        let own_top = self.objects.get(key).map_or(0, |h| h.obj.ctx.top(self.cfg.id));
        if let (Some(&top), false) = (self.dropped.get(key), self.bugs.crdt_dropped_forgets_dots) {
            if own_top < top {
                // Never issue a dot this node may have issued before it dropped the object.
                return Err(CrdtFailure::Busy(format!(
                    "this node's earlier updates of the {} {:?} have not come back to it yet: retry",
                    key.kind.label(),
                    key.name
                )));
            }
        }
        if !self.objects.contains_key(key) && self.objects.len() >= self.cfg.max_objects {
            return Err(CrdtFailure::Busy(format!(
                "this node holds {} coordination-free objects, the most it may",
                self.cfg.max_objects
            )));
        }
        if key.kind == Kind::LwwRegister {
            self.hlc = self.hlc.next(self.wall_ms);
        }
        let held = self.objects.entry(key.clone()).or_insert_with(|| Held { obj: key.kind.empty(), hash: 0 });
        if let (true, Op::Subtract(n), baton_core::crdt::Body::Bounded(b)) =
            (self.bugs.crdt_bounded_spends_value, &op, &mut held.obj.body)
        {
            // Planted bug: spend whatever the value covers, others' rights included.
            if b.value() >= *n as i128 && b.rights(self.cfg.id) < *n as i128 {
                b.subtract_unchecked(self.cfg.id, *n);
            }
        }
        let before = held.obj.ctx.clone();
        let base = before.top(self.cfg.id);
        let result = held.obj.update(&key.name, self.cfg.id, op, self.hlc);
        let delta = match result {
            Ok(d) => d,
            Err(e) => {
                if held.obj.ctx.is_empty() && held.hash == 0 {
                    self.objects.remove(key);
                }
                return Err(e.into());
            }
        };
        let deps = if matches!(key.kind, Kind::OrSet | Kind::MvRegister) { before } else { Context::new() };
        match self.deltas.get_mut(key) {
            Some(d) => {
                d.state.join(&delta).expect("deltas of one key share its kind");
                d.deps = deps;
            }
            None => {
                self.deltas.insert(key.clone(), Delta { key: key.clone(), base, deps, state: delta });
            }
        }
        self.local_changes = true;
        self.changed(key, true);
        Ok(())
    }

    fn changed(&mut self, key: &Key, local: bool) {
        self.dirty.insert(key.clone());
        if self.watched {
            let value = self.objects[key].obj.value(self.cfg.id);
            self.held.push(CrdtOutput::Changed { key: key.clone(), value, local });
        }
    }

    /// Whether anyone watches changes: [`CrdtOutput::Changed`] is made only then (a value can
    /// be a whole set).
    pub fn set_watched(&mut self, watched: bool) {
        self.watched = watched;
    }

    fn read(&mut self, id: RequestId, key: Key, level: ReadLevel, deadline_ms: u64) {
        let next_try_ms = self.now_ms + self.cfg.retry_ms;
        match level {
            ReadLevel::Local => {
                let reply = self.reply(&key);
                self.answer(id, Ok(reply));
            }
            ReadLevel::Session(token) => {
                if self.has(&key, &token) || self.bugs.crdt_session_ignores_token {
                    let reply = self.reply(&key);
                    self.answer(id, Ok(reply));
                } else {
                    self.pull(&key);
                    self.wait(Wait { id, key, what: WaitFor::Token(token), deadline_ms, next_try_ms });
                }
            }
            ReadLevel::Converged => {
                let target = self.reply(&key).token;
                let peers: BTreeMap<NodeId, bool> =
                    self.live_owner_peers(&key).into_iter().map(|p| (p, false)).collect();
                if peers.is_empty() {
                    let reply = self.reply(&key);
                    self.answer(id, Ok(reply));
                    return;
                }
                self.next_probe += 1;
                let probe = self.next_probe;
                for &p in peers.keys() {
                    self.held
                        .push(CrdtOutput::Send { to: p, msg: Gossip::Probe { id: probe, keys: vec![key.clone()] } });
                }
                self.wait(Wait {
                    id,
                    key,
                    what: WaitFor::Converged { target, peers, probe },
                    deadline_ms,
                    next_try_ms,
                });
            }
        }
    }

    fn has(&self, key: &Key, token: &Context) -> bool {
        match self.objects.get(key) {
            Some(h) => h.obj.ctx.covers(token),
            None => token.is_empty(),
        }
    }

    /// A message from peer `from`.
    pub fn receive(&mut self, from: NodeId, msg: Gossip) {
        if from == self.cfg.id || !self.peers.contains(&from) {
            return;
        }
        self.heard.insert(from, self.now_ms);
        match msg {
            Gossip::Deltas(deltas) => {
                for delta in deltas {
                    self.merge_delta(from, delta);
                }
            }
            Gossip::States(states) => {
                for (key, state) in states {
                    self.merge(key.clone(), &state);
                    self.join_pending(&key);
                }
            }
            Gossip::Digest(theirs) => self.on_digest(from, &theirs),
            Gossip::Diff { buckets, hashes, after, to } => self.on_diff(from, &buckets, hashes, after, to),
            Gossip::Pull(keys) => {
                let keys: Vec<Key> = keys.into_iter().take(MAX_KEYS_PER_EXCHANGE).collect();
                self.send_states(from, keys.iter());
            }
            Gossip::Probe { id, keys } => {
                let contexts = keys
                    .into_iter()
                    .take(MAX_KEYS_PER_EXCHANGE)
                    .map(|k| {
                        // A node reports only what it owns: one that holds an object it no longer
                        // owns (handing it off) must not count as one of its holders.
                        let owned = self.objects.get(&k).filter(|_| self.owns(&k));
                        let ctx = owned.map(|h| h.obj.ctx.clone()).unwrap_or_default();
                        (k, ctx)
                    })
                    .collect();
                // Held like every output: what it reports must be durable first.
                self.held.push(CrdtOutput::Send { to: from, msg: Gossip::ProbeReply { id, contexts } });
            }
            Gossip::ProbeReply { id, contexts } if self.is_handoff_probe(id) => self.on_handoff_reply(from, contexts),
            Gossip::ProbeReply { id, contexts } => self.on_probe_reply(from, id, contexts),
            Gossip::WantRights { key, n } => self.give_rights(from, key, n),
        }
    }

    /// Joins a peer's delta now if its causal past is here, else keeps it waiting.
    fn merge_delta(&mut self, from: NodeId, delta: Delta) {
        if self.ready(from, &delta) {
            self.merge(delta.key.clone(), &delta.state);
            self.join_pending(&delta.key);
        } else if self.pending_count >= MAX_PENDING_DELTAS {
            self.pull_soon.insert((from, delta.key));
        } else {
            self.pending_count += 1;
            self.pending.entry(delta.key.clone()).or_default().push((from, delta, self.now_ms));
        }
    }

    /// True if `delta` from `from` may be joined now (only dot kernels wait: see the module
    /// docs).
    fn ready(&self, from: NodeId, delta: &Delta) -> bool {
        if !matches!(delta.key.kind, Kind::OrSet | Kind::MvRegister) || self.bugs.crdt_deltas_out_of_order {
            return true;
        }
        let ready = |ctx: &Context| {
            ctx.ready_for(&delta.deps, from, delta.base) && ctx.ready_for(&delta.state.ctx, from, delta.base)
        };
        match self.objects.get(&delta.key) {
            Some(h) => ready(&h.obj.ctx),
            None => ready(&Context::new()),
        }
    }

    /// Joins the waiting deltas of `key` that have become ready, until none has.
    fn join_pending(&mut self, key: &Key) {
        while let Some(list) = self.pending.get(key) {
            let Some(i) = list.iter().position(|(from, d, _)| self.ready(*from, d)) else { break };
            let list = self.pending.get_mut(key).expect("present");
            let (_, delta, _) = list.remove(i);
            if list.is_empty() {
                self.pending.remove(key);
            }
            self.pending_count -= 1;
            self.merge(delta.key, &delta.state);
        }
    }

    /// Gives up on deltas that waited `retry_ms` for their past: pulls their objects from their
    /// senders (a whole state carries its past).
    fn expire_pending(&mut self) {
        let since = self.now_ms.saturating_sub(self.cfg.retry_ms);
        let mut pulls: BTreeMap<NodeId, BTreeSet<Key>> = BTreeMap::new();
        for (from, key) in std::mem::take(&mut self.pull_soon) {
            pulls.entry(from).or_default().insert(key);
        }
        for (key, list) in self.pending.iter_mut() {
            list.retain(|(from, _, at)| {
                let keep = *at > since;
                if !keep {
                    pulls.entry(*from).or_default().insert(key.clone());
                }
                keep
            });
        }
        self.pending.retain(|_, list| !list.is_empty());
        self.pending_count = self.pending.values().map(Vec::len).sum();
        for (to, keys) in pulls {
            for chunk in keys.into_iter().collect::<Vec<_>>().chunks(MAX_KEYS_PER_EXCHANGE) {
                self.held.push(CrdtOutput::Send { to, msg: Gossip::Pull(chunk.to_vec()) });
            }
        }
    }

    /// Joins a peer's state of `key`.
    fn merge(&mut self, key: Key, state: &Object) {
        if key.kind != state.kind() {
            tracing::warn!(key = ?key, kind = state.kind().label(), "CRDT state of the wrong kind from a peer: ignored");
            return;
        }
        if let Err(e) = state.check_foreign() {
            tracing::warn!(key = ?key, "CRDT state from a peer refused: {e}");
            return;
        }
        let own_top = self.objects.get(&key).map_or(0, |h| h.obj.ctx.top(self.cfg.id));
        let marker = self.dropped.get(&key).copied().unwrap_or(0);
        if state.ctx.top(self.cfg.id) > own_top.max(marker) {
            // Only this node makes its dots, and none leaves it before it is durable: a peer
            // holding more of them than this node has (or had, before it handed the object off)
            // means this node's CRDT data was lost (joined now, so that its next dots come after
            // them).
            tracing::warn!(key = ?key, "a peer holds updates this node made that its own store lacks: was the CRDT data folder lost?");
        }
        if let Some(h) = state.max_stamp() {
            // The HLC's receive rule: later local writes order after what this node has seen.
            self.hlc = self.hlc.max(h);
        }
        let owned = self.owns(&key);
        // Rights on a bounded counter given to this node can be spent only here: such a state is
        // taken even if this node does not own the counter (it hands the rights on to an owner).
        // (Not from a state older than this node's own last dot: its rights there are stale.)
        let rights_here = matches!(state.value(self.cfg.id), Value::Bounded { rights: 1.., .. })
            && state.ctx.top(self.cfg.id) >= marker;
        let held = match self.objects.get_mut(&key) {
            Some(h) => h,
            None if !owned && !rights_here => {
                // Not ours (a peer routes by an older topology): its owners get it from it.
                return;
            }
            None => {
                if self.objects.len() >= self.cfg.max_objects {
                    tracing::warn!(
                        max = self.cfg.max_objects,
                        "CRDT object limit reached: a peer's new object is not taken"
                    );
                    return;
                }
                if !owned {
                    self.foreign.insert(key.clone());
                }
                self.objects.entry(key.clone()).or_insert(Held { obj: key.kind.empty(), hash: 0 })
            }
        };
        // Compared with a copy, not judged by contexts: a delta delivered late can still remove
        // entries although this context already names its dot (a later delta of the same
        // replica named it as superseded); the simulator caught a shortcut that assumed not.
        let before = held.obj.clone();
        if self.bugs.crdt_merge_not_idempotent && matches!(state.body, baton_core::crdt::Body::PnCounter(_)) {
            // Planted bug: the peer's count is added as a local update, once per delivery.
            if let Value::Counter(v @ 1..) = state.value(self.cfg.id) {
                let _ = held.obj.update(&key.name, self.cfg.id, Op::Add(v as u64), self.hlc);
            }
        }
        if self.bugs.crdt_context_claims_unseen {
            // Planted bug: every dot below the state's highest, per replica, counts as seen.
            for d in state.ctx.dots() {
                held.obj.ctx.insert_upto(d.replica, d.seq);
            }
        }
        if held.obj.join(state).is_err() {
            return;
        }
        let own_top = held.obj.ctx.top(self.cfg.id);
        if self.dropped.get(&key).is_some_and(|&top| own_top >= top) {
            // Back with every dot this node made before it dropped the object.
            self.dropped.remove(&key);
            self.marks_to_write.insert(key.clone(), 0);
        }
        let held = self.objects.get_mut(&key).expect("held");
        if held.obj != before {
            self.changed(&key, false);
        }
    }

    /// Hashes the states changed since the last call and queues them for the disk.
    fn settle(&mut self) {
        for key in std::mem::take(&mut self.dirty) {
            let Some(held) = self.objects.get_mut(&key) else { continue };
            let bytes = encode_state(&held.obj);
            let hash = hash_of(&key, &bytes);
            self.buckets[bucket_of(&key)] ^= held.hash ^ hash;
            self.slot_hash[baton_core::slot_of(&key.name) as usize] ^= held.hash ^ hash;
            held.hash = hash;
            self.bucket_keys[bucket_of(&key)].insert(key.clone());
            self.to_write.insert(key, bytes);
        }
    }

    /// The states to make durable before [`Replica::written`] (empty: nothing to write; call
    /// `written` anyway). A round with a local update, or a probe to answer (which reports what
    /// is durable here), writes everything changed; a round of merges only writes once they
    /// have waited [`MERGE_WRITE_DELAY_MS`], so that gossip does not cost every node an fsync
    /// per round of every other.
    pub fn take_write(&mut self) -> Vec<(Key, Vec<u8>)> {
        // Waits whose condition the round's inputs met are answered in this round.
        self.recheck();
        self.settle();
        if self.bugs.crdt_answer_before_write {
            // Planted bug: the round's answers and deltas leave before its write.
            self.release();
        }
        if self.to_write.is_empty() && self.marks_to_write.is_empty() {
            return Vec::new();
        }
        // A probe's reply says what is on this node's disk: it waits for the write.
        let probe = !self.bugs.crdt_probe_reply_before_write
            && self.held.iter().any(|o| matches!(o, CrdtOutput::Send { msg: Gossip::ProbeReply { .. }, .. }));
        let since = *self.dirty_since.get_or_insert(self.now_ms);
        if !(self.local_changes || probe || self.now_ms >= since + MERGE_WRITE_DELAY_MS) {
            return Vec::new();
        }
        self.local_changes = false;
        self.dirty_since = None;
        let mut out: Vec<(Key, Vec<u8>)> = std::mem::take(&mut self.to_write).into_iter().collect();
        let marks = std::mem::take(&mut self.marks_to_write);
        out.extend(marks.into_iter().map(|(k, top)| (k, store::dropped_marker(top))));
        out
    }

    /// The last [`Replica::take_write`] is durable: the round's answers and messages may go.
    pub fn written(&mut self) {
        self.release();
    }

    fn release(&mut self) {
        let deltas = std::mem::take(&mut self.deltas);
        if !deltas.is_empty() {
            let deltas: Vec<Delta> = deltas.into_values().collect();
            for &p in &self.peers {
                let theirs: Vec<Delta> = match &self.placement {
                    None => deltas.clone(),
                    Some(_) => deltas.iter().filter(|d| self.peer_owns(p, &d.key)).cloned().collect(),
                };
                if !theirs.is_empty() {
                    self.out.push(CrdtOutput::Send { to: p, msg: Gossip::Deltas(theirs) });
                }
            }
        }
        self.out.append(&mut self.held);
    }

    /// Takes the outputs released by [`Replica::written`].
    pub fn drain_outputs(&mut self) -> std::vec::Drain<'_, CrdtOutput> {
        self.out.drain(..)
    }

    /// The earliest monotonic time at which [`Replica::tick`] has work.
    pub fn next_tick_ms(&self) -> u64 {
        let waits = self.waits.iter().map(|w| w.next_try_ms.min(w.deadline_ms)).min().unwrap_or(u64::MAX);
        let merged = self.dirty_since.map_or(u64::MAX, |t| t + MERGE_WRITE_DELAY_MS);
        let pending =
            self.pending.values().flatten().map(|(_, _, at)| at + self.cfg.retry_ms).min().unwrap_or(u64::MAX);
        let soon = if self.pull_soon.is_empty() { u64::MAX } else { self.now_ms };
        waits.min(self.next_anti_entropy_ms).min(merged).min(pending).min(soon)
    }

    /// The digest (for tests and status): one hash per bucket.
    pub fn digest(&mut self) -> Vec<u64> {
        self.settle();
        self.buckets.clone()
    }

    /// Every kind's object names here (for status pages), counted per kind.
    pub fn counts(&self) -> BTreeMap<Kind, usize> {
        let mut m = BTreeMap::new();
        for k in self.objects.keys() {
            *m.entry(k.kind).or_insert(0) += 1;
        }
        m
    }
}
