//! Observability: what a node counts as it runs, and the hot names of its groups.
//!
//! [`Metrics`] holds the counters and histograms (the `prometheus-client` crate's atomic types,
//! shared by the node thread, the transport and the HTTP endpoint). The node thread feeds it
//! through an [`Observer`], which sees every event this node's replicas apply, every request
//! and every answer, and keeps a [`hot::HotNames`] sketch per group. The disk's writes are
//! timed by [`TimedStore`]. Labels are bounded: a group id, a primitive kind, a peer id, an
//! outcome, never a name.
//!
//! Every replica applies the same events, so the per-group event counters are the same on
//! each node that holds the group (sum them over one replica, or take `max by (group)`).

pub mod api;
pub mod hot;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use baton_core::{Event, Kind, SessionEnd, WaitEnd};
use baton_node::{DiskError, GroupId, LogStore, Recovered, RequestId, WriteBatch};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A group.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabel {
    pub group: u64,
}

/// A group and a primitive kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub group: u64,
    pub kind: &'static str,
}

/// A group, a primitive kind and how something ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndLabel {
    pub group: u64,
    pub kind: &'static str,
    pub how: &'static str,
}

/// A group and how something ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HowLabel {
    pub group: u64,
    pub how: &'static str,
}

/// A group and a request type.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    pub group: u64,
    pub op: &'static str,
}

/// Another node.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    pub peer: u64,
}

/// A permission (`read`, `lock`, `write`, `admin`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PermissionLabel {
    pub permission: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds from 1 ms to ~2 min: waits, holds, request latencies.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

/// Seconds from 20 µs to ~0.7 s: disk writes.
fn disk_seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.000_02, 2.0, 16))
}

/// Counts from 1 to 32,768.
fn sizes() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 16))
}

/// The name of a primitive kind, as a label.
pub fn kind_label(kind: Kind) -> &'static str {
    match kind {
        Kind::Mutex => "mutex",
        Kind::RwLock => "rwlock",
        Kind::Semaphore { .. } => "semaphore",
        Kind::Election => "election",
        Kind::Barrier { .. } => "barrier",
        Kind::Latch => "latch",
    }
}

/// Upper bounds (ms) of the wait buckets the dashboard reads (the last one: everything above).
pub const WAIT_BUCKETS_MS: [u64; 15] =
    [1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, u64::MAX];

/// Acquire waits over all groups and kinds in [`WAIT_BUCKETS_MS`], for the dashboard's
/// percentiles (the Prometheus histogram has no public reader).
#[derive(Default)]
pub struct WaitBuckets {
    counts: [std::sync::atomic::AtomicU64; WAIT_BUCKETS_MS.len()],
}

impl WaitBuckets {
    /// Counts a wait of `ms`.
    pub fn observe(&self, ms: u64) {
        let i = WAIT_BUCKETS_MS.iter().position(|b| ms <= *b).unwrap_or(WAIT_BUCKETS_MS.len() - 1);
        self.counts[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Waits counted per bucket so far (not cumulative).
    pub fn counts(&self) -> Vec<u64> {
        self.counts.iter().map(|c| c.load(std::sync::atomic::Ordering::Relaxed)).collect()
    }
}

/// Node-wide totals of the lock events (all groups), for the dashboard's rates.
#[derive(Default)]
pub struct Totals {
    pub grants: std::sync::atomic::AtomicU64,
    pub handoffs: std::sync::atomic::AtomicU64,
    pub waits: std::sync::atomic::AtomicU64,
    pub gave_up: std::sync::atomic::AtomicU64,
    pub releases: std::sync::atomic::AtomicU64,
    pub expiries: std::sync::atomic::AtomicU64,
}

impl Totals {
    fn bump(c: &std::sync::atomic::AtomicU64) {
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The totals as JSON.
    pub fn json(&self) -> serde_json::Value {
        let g = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        serde_json::json!({
            "grants": g(&self.grants), "handoffs": g(&self.handoffs), "waits": g(&self.waits),
            "gave_up": g(&self.gave_up), "releases": g(&self.releases), "expiries": g(&self.expiries),
        })
    }
}

/// Everything a node counts. Cheap to share: every field is a handle to atomics.
pub struct Metrics {
    /// False: nothing is counted (`--no-metrics`).
    pub enabled: bool,
    pub grants: Family<KindLabel, Counter>,
    pub handoffs: Family<KindLabel, Counter>,
    pub releases: Family<EndLabel, Counter>,
    pub waits: Family<GroupLabel, Counter>,
    pub wait_ends: Family<HowLabel, Counter>,
    pub acquire_wait: Histograms<KindLabel>,
    pub hold: Histograms<KindLabel>,
    pub sessions_opened: Family<GroupLabel, Counter>,
    pub session_ends: Family<HowLabel, Counter>,
    pub election_changes: Family<GroupLabel, Counter>,
    pub counter_updates: Family<GroupLabel, Counter>,
    pub register_writes: Family<GroupLabel, Counter>,
    pub requests: Family<RequestLabel, Counter>,
    pub request_seconds: Histograms<RequestLabel>,
    pub renewals: Counter,
    pub raft_leader_changes: Family<GroupLabel, Counter>,
    pub snapshots_persisted: Family<GroupLabel, Counter>,
    pub snapshot_bytes_persisted: Family<GroupLabel, Counter>,
    pub disk_write_seconds: Histogram,
    pub disk_batch_entries: Histogram,
    pub disk_bytes: Counter,
    pub peer_sent_messages: Family<PeerLabel, Counter>,
    pub peer_sent_bytes: Family<PeerLabel, Counter>,
    pub peer_received_messages: Family<PeerLabel, Counter>,
    pub peer_received_bytes: Family<PeerLabel, Counter>,
    pub access_denied: Family<PermissionLabel, Counter>,
    /// The coordination-free tier: requests taken (by `op`: update, read), peers' messages
    /// taken, rounds written and how long each write took, objects held, objects held for slots
    /// the node no longer owns (waiting for their hand-off), objects handed off and dropped.
    pub crdt_requests: Family<OpLabel, Counter>,
    pub crdt_gossip_received: Counter,
    pub crdt_write_seconds: Histogram,
    pub crdt_objects: prometheus_client::metrics::gauge::Gauge,
    pub crdt_foreign_objects: prometheus_client::metrics::gauge::Gauge,
    pub crdt_handed_off: Counter,
    pub wait_buckets: WaitBuckets,
    pub totals: Totals,
}

/// The `op` label of the coordination-free tier's requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(true)
    }
}

impl Metrics {
    /// Metrics that count (`enabled`) or stay at zero.
    pub fn new(enabled: bool) -> Self {
        Metrics {
            enabled,
            grants: Family::default(),
            handoffs: Family::default(),
            releases: Family::default(),
            waits: Family::default(),
            wait_ends: Family::default(),
            acquire_wait: Family::new_with_constructor(seconds),
            hold: Family::new_with_constructor(seconds),
            sessions_opened: Family::default(),
            session_ends: Family::default(),
            election_changes: Family::default(),
            counter_updates: Family::default(),
            register_writes: Family::default(),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(seconds),
            renewals: Counter::default(),
            raft_leader_changes: Family::default(),
            snapshots_persisted: Family::default(),
            snapshot_bytes_persisted: Family::default(),
            disk_write_seconds: disk_seconds(),
            crdt_requests: Family::default(),
            crdt_gossip_received: Counter::default(),
            crdt_write_seconds: disk_seconds(),
            crdt_objects: Default::default(),
            crdt_foreign_objects: Default::default(),
            crdt_handed_off: Counter::default(),
            disk_batch_entries: sizes(),
            disk_bytes: Counter::default(),
            peer_sent_messages: Family::default(),
            peer_sent_bytes: Family::default(),
            peer_received_messages: Family::default(),
            peer_received_bytes: Family::default(),
            access_denied: Family::default(),
            wait_buckets: WaitBuckets::default(),
            totals: Totals::default(),
        }
    }

    /// Registers every metric (as handles: they keep counting) in `registry`, whose prefix is
    /// `baton`. The help texts are what docs/OPERATIONS.md explains.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "lock_grants",
            "Grants of locks, rwlocks, semaphores, elections, barrier and latch passes",
            self.grants.clone(),
        );
        r.register("lock_handoffs", "Grants to a waiter from the queue", self.handoffs.clone());
        r.register("lock_releases", "Holds that ended: released, or expired with the session", self.releases.clone());
        r.register("lock_waits", "Acquires that queued", self.waits.clone());
        r.register(
            "lock_wait_ends",
            "Waits that ended without the lock: timed_out, cancelled, session_ended",
            self.wait_ends.clone(),
        );
        r.register(
            "lock_acquire_wait_seconds",
            "Time a waiter spent queued before its grant (state-machine time)",
            self.acquire_wait.clone(),
        );
        r.register(
            "lock_hold_seconds",
            "Time from a grant to its release or expiry (state-machine time)",
            self.hold.clone(),
        );
        r.register("sessions_opened", "Sessions opened (or attached) in the group", self.sessions_opened.clone());
        r.register("session_ends", "Sessions that ended: closed or expired", self.session_ends.clone());
        r.register(
            "election_leader_changes",
            "Elections' leaders changed or proclaimed",
            self.election_changes.clone(),
        );
        r.register("counter_updates", "Counter changes", self.counter_updates.clone());
        r.register("register_writes", "Register writes and deletes", self.register_writes.clone());
        r.register("requests", "Requests this node took in, per group and type", self.requests.clone());
        r.register(
            "request_seconds",
            "Time from taking a request in to answering it (acquire: includes the wait)",
            self.request_seconds.clone(),
        );
        r.register(
            "session_renewals",
            "Session leases renewed through this node (keepalives and etcd lease keepalives)",
            self.renewals.clone(),
        );
        r.register(
            "raft_leader_changes",
            "Times this node saw the group's leader change",
            self.raft_leader_changes.clone(),
        );
        r.register(
            "raft_snapshots_persisted",
            "Snapshots written to this node's disk",
            self.snapshots_persisted.clone(),
        );
        r.register(
            "raft_snapshot_bytes_persisted",
            "Bytes of snapshots written to this node's disk",
            self.snapshot_bytes_persisted.clone(),
        );
        r.register(
            "disk_write_seconds",
            "One batched write of the Raft logs, with its fsync",
            self.disk_write_seconds.clone(),
        );
        r.register("disk_batch_entries", "Log entries per batched write", self.disk_batch_entries.clone());
        r.register("crdt_requests", "Coordination-free requests taken, by op", self.crdt_requests.clone());
        r.register(
            "crdt_gossip_received",
            "Coordination-free gossip messages taken from peers",
            self.crdt_gossip_received.clone(),
        );
        r.register(
            "crdt_write_seconds",
            "Coordination-free rounds' disk writes (one fsync each)",
            self.crdt_write_seconds.clone(),
        );
        r.register("crdt_objects", "Coordination-free objects held", self.crdt_objects.clone());
        r.register(
            "crdt_foreign_objects",
            "Coordination-free objects held for slots this node no longer owns, waiting for their hand-off",
            self.crdt_foreign_objects.clone(),
        );
        r.register(
            "crdt_handed_off",
            "Coordination-free objects handed to their owners and dropped here",
            self.crdt_handed_off.clone(),
        );
        r.register("disk_entry_bytes", "Bytes of log entries written", self.disk_bytes.clone());
        r.register("peer_sent_messages", "Raft messages sent to a peer", self.peer_sent_messages.clone());
        r.register("peer_sent_bytes", "Bytes of Raft messages sent to a peer", self.peer_sent_bytes.clone());
        r.register("peer_received_messages", "Raft messages received from a peer", self.peer_received_messages.clone());
        r.register(
            "peer_received_bytes",
            "Bytes of Raft messages received from a peer",
            self.peer_received_bytes.clone(),
        );
        r.register(
            "access_denied",
            "Requests refused for lack of a permission, by the permission",
            self.access_denied.clone(),
        );
    }

    /// Counts a request refused for lack of `permission` (counted even with `--no-metrics`: it
    /// is an audit figure, and rare).
    pub fn access_denied(&self, permission: &'static str) {
        self.access_denied.get_or_create(&PermissionLabel { permission }).inc();
    }

    /// Counts a batch of Raft messages sent to (`sent`) or received from a peer.
    pub fn peer_traffic(&self, peer: u64, sent: bool, messages: usize, bytes: usize) {
        if !self.enabled {
            return;
        }
        let l = PeerLabel { peer };
        let (m, b) = if sent {
            (&self.peer_sent_messages, &self.peer_sent_bytes)
        } else {
            (&self.peer_received_messages, &self.peer_received_bytes)
        };
        m.get_or_create(&l).inc_by(messages as u64);
        b.get_or_create(&l).inc_by(bytes as u64);
    }
}

/// The label of a request type.
pub fn request_label(request: &baton_node::Request) -> &'static str {
    use baton_node::{Query, Request};
    match request {
        Request::Propose(_) => "propose",
        Request::Acquire(_) => "acquire",
        Request::KeepAlive(_) | Request::Read(Query::KeepAlive(_)) => "keepalive",
        Request::Read(Query::EtcdRange(_)) => "etcd_range",
        Request::Read(Query::EtcdLease { renew: true, .. }) => "etcd_keepalive",
        Request::Read(_) => "read",
    }
}

/// Requests in flight that are timed at most.
const MAX_PENDING: usize = 1_000_000;

/// The node thread's side: turns events, requests and answers into metrics, and keeps the hot
/// names of every group.
pub struct Observer {
    node: u64,
    metrics: Arc<Metrics>,
    hot: BTreeMap<GroupId, hot::HotNames>,
    /// Requests taken in and not answered yet: when, and their labels.
    pending: HashMap<RequestId, (Instant, RequestLabel)>,
    /// Groups that applied events since [`Observer::after_round`] last ran.
    dirty: Vec<GroupId>,
    /// The clock of the hot-name windows.
    started: Instant,
    /// Per group: its state machine's time after its last round with events, and the wall time
    /// then. A holder's time is state-machine time, which stands still while the group is idle;
    /// this says how much wall time has passed since.
    clocks: BTreeMap<GroupId, (u64, u64)>,
}

impl Observer {
    /// An observer of node `node` counting into `metrics`.
    pub fn new(node: u64, metrics: Arc<Metrics>) -> Observer {
        Observer {
            node,
            metrics,
            hot: BTreeMap::new(),
            pending: HashMap::new(),
            dirty: Vec::new(),
            started: Instant::now(),
            clocks: BTreeMap::new(),
        }
    }

    /// The node observed.
    pub fn node_id(&self) -> u64 {
        self.node
    }

    /// A request is taken in for `group`: counted now, timed once [`Observer::track`] knows
    /// its id.
    pub fn take_in(&mut self, group: GroupId, request: &baton_node::Request) -> (Instant, RequestLabel) {
        use baton_node::{Query, Request};
        let label = RequestLabel { group, op: request_label(request) };
        if !self.metrics.enabled {
            return (Instant::now(), label);
        }
        let renewed = match request {
            Request::KeepAlive(ids) => ids.len(),
            Request::Read(Query::KeepAlive(ids)) => ids.len(),
            Request::Read(Query::EtcdLease { ids, renew: true, .. }) => ids.len(),
            _ => 0,
        };
        self.metrics.renewals.inc_by(renewed as u64);
        self.metrics.requests.get_or_create(&label).inc();
        (Instant::now(), label)
    }

    /// The request taken in as `taken` has id `id`.
    pub fn track(&mut self, id: RequestId, taken: (Instant, RequestLabel)) {
        // Every request is answered (or its caller's channel found closed), so this stays
        // as large as the requests in flight; the bound is a guard, not a policy.
        if self.metrics.enabled && self.pending.len() < MAX_PENDING {
            self.pending.insert(id, taken);
        }
    }

    /// Request `id` was answered (or its caller went away).
    pub fn answered(&mut self, id: RequestId) {
        if let Some((since, label)) = self.pending.remove(&id) {
            self.metrics.request_seconds.get_or_create(&label).observe(since.elapsed().as_secs_f64());
        }
    }

    /// The group's leader changed as this node sees it.
    pub fn leader_changed(&mut self, group: GroupId) {
        if !self.metrics.enabled {
            return;
        }
        self.metrics.raft_leader_changes.get_or_create(&GroupLabel { group }).inc();
    }

    /// An event this node's replica of `group` applied.
    pub fn event(&mut self, group: GroupId, event: &Event) {
        let m = &self.metrics;
        if !m.enabled {
            return;
        }
        let g = GroupLabel { group };
        // The hot-name windows' clock, read only for the events that feed them.
        let started = self.started;
        let now = || started.elapsed().as_millis() as u64;
        if self.dirty.last() != Some(&group) {
            self.dirty.push(group);
        }
        match event {
            Event::Granted { name, kind, waited_ms, .. } => {
                let l = KindLabel { group, kind: kind_label(*kind) };
                m.grants.get_or_create(&l).inc();
                Totals::bump(&m.totals.grants);
                if let Some(waited) = *waited_ms {
                    m.handoffs.get_or_create(&l).inc();
                    m.acquire_wait.get_or_create(&l).observe(waited as f64 / 1000.0);
                    // Barriers and latches wait for others by design: not contention.
                    if !matches!(kind, Kind::Barrier { .. } | Kind::Latch) {
                        Totals::bump(&m.totals.handoffs);
                        m.wait_buckets.observe(waited);
                        self.hot.entry(group).or_default().handed_off(now(), name, waited);
                    }
                }
            }
            Event::Queued { name, kind, .. } => {
                m.waits.get_or_create(&g).inc();
                if !matches!(kind, Kind::Barrier { .. } | Kind::Latch) {
                    Totals::bump(&m.totals.waits);
                    self.hot.entry(group).or_default().queued(now(), name);
                }
            }
            Event::WaitEnded { name, how, .. } => {
                let how = match how {
                    WaitEnd::TimedOut => "timed_out",
                    WaitEnd::SessionEnded => "session_ended",
                    WaitEnd::Cancelled => "cancelled",
                };
                m.wait_ends.get_or_create(&HowLabel { group, how }).inc();
                Totals::bump(&m.totals.gave_up);
                self.hot.entry(group).or_default().gave_up(now(), name);
            }
            Event::Released { kind, expired, held_ms, .. } => {
                let kind = kind_label(*kind);
                let how = if *expired { "expired" } else { "released" };
                m.releases.get_or_create(&EndLabel { group, kind, how }).inc();
                Totals::bump(if *expired { &m.totals.expiries } else { &m.totals.releases });
                m.hold.get_or_create(&KindLabel { group, kind }).observe(*held_ms as f64 / 1000.0);
            }
            Event::SessionOpened { .. } => {
                m.sessions_opened.get_or_create(&g).inc();
            }
            Event::SessionEnded { how, .. } => {
                let how = match how {
                    SessionEnd::Closed => "closed",
                    SessionEnd::Expired => "expired",
                };
                m.session_ends.get_or_create(&HowLabel { group, how }).inc();
            }
            Event::LeaderChanged { .. } => {
                m.election_changes.get_or_create(&g).inc();
            }
            Event::CounterChanged { .. } => {
                m.counter_updates.get_or_create(&g).inc();
            }
            Event::RegisterChanged { .. } => {
                m.register_writes.get_or_create(&g).inc();
            }
            Event::SessionRefreshed { .. } | Event::SlotsMoved { .. } | Event::TopologyChanged { .. } => {}
        }
    }

    /// After a round: notes the state-machine time of the groups that applied events, against
    /// the wall clock (`wall_ms`).
    pub fn after_round(&mut self, node: &baton_node::Node, wall_ms: impl FnOnce() -> u64) {
        if self.dirty.is_empty() {
            return;
        }
        let wall = wall_ms();
        for group in self.dirty.drain(..) {
            if let Some(sm) = node.replica(group) {
                self.clocks.insert(group, (sm.now_ms(), wall));
            }
        }
    }

    /// The hottest names (at most `limit` per group) of every group `node` holds a replica of,
    /// as of `wall_ms`, with each name's holders and waiters now as the replica has them.
    pub fn hot_groups(&self, node: &baton_node::Node, wall_ms: u64, limit: usize) -> Vec<HotGroup> {
        let mut out = Vec::new();
        for group in node.groups() {
            let Some(sm) = node.replica(group) else { continue };
            let top =
                self.hot.get(&group).map_or_else(Vec::new, |h| h.top(self.started.elapsed().as_millis() as u64, limit));
            let names = top
                .into_iter()
                .map(|(name, stats)| {
                    let lock = sm.lock(&name);
                    // State-machine time now: its last reading plus the wall time since.
                    let idle = match self.clocks.get(&group) {
                        Some((t, w)) if *t == sm.now_ms() => wall_ms.saturating_sub(*w),
                        _ => 0,
                    };
                    let now = sm.now_ms() + idle;
                    HotName {
                        kind: lock.map(|l| kind_label(l.kind)),
                        holders: lock.map_or_else(Vec::new, |l| {
                            l.holders.iter().map(|h| (h.session, h.token, now.saturating_sub(h.granted_ms))).collect()
                        }),
                        waiters: lock.map_or(0, |l| l.waiters.len()),
                        oldest_wait_ms: lock
                            .and_then(|l| l.waiters.iter().map(|w| now.saturating_sub(w.queued_ms)).max())
                            .unwrap_or(0),
                        name,
                        stats,
                    }
                })
                .collect();
            out.push(HotGroup { group, names });
        }
        out
    }
}

/// One group's hottest names.
#[derive(Clone, Debug)]
pub struct HotGroup {
    pub group: GroupId,
    pub names: Vec<HotName>,
}

/// A hot name: its contention over the last one or two windows, and its state now.
#[derive(Clone, Debug)]
pub struct HotName {
    pub name: String,
    pub stats: hot::NameStats,
    /// Its kind (`None`: nobody holds or awaits it now).
    pub kind: Option<&'static str>,
    /// Holders now: session, fencing token, held for (ms).
    pub holders: Vec<(u64, u64, u64)>,
    /// Waiters now, and how long the first of them has waited (ms).
    pub waiters: usize,
    pub oldest_wait_ms: u64,
}

/// A [`LogStore`] whose writes are timed and counted.
pub struct TimedStore<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> TimedStore<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, metrics: Arc<Metrics>) -> Self {
        TimedStore { inner, metrics }
    }
}

impl<S: LogStore> LogStore for TimedStore<S> {
    fn write(&mut self, batch: &WriteBatch) -> Result<(), DiskError> {
        let entries: usize = batch.groups.iter().map(|g| g.entries.len()).sum();
        let _span =
            trace::child(|| tracing::debug_span!("raft.persist", groups = batch.groups.len(), entries)).entered();
        if !self.metrics.enabled {
            return self.inner.write(batch);
        }
        let started = Instant::now();
        self.inner.write(batch)?;
        let m = &self.metrics;
        m.disk_write_seconds.observe(started.elapsed().as_secs_f64());
        m.disk_batch_entries.observe(entries as f64);
        m.disk_bytes.inc_by(batch.groups.iter().flat_map(|g| &g.entries).map(|e| e.data.len() as u64).sum());
        for g in &batch.groups {
            if let Some(s) = &g.snapshot {
                let l = GroupLabel { group: g.group };
                m.snapshots_persisted.get_or_create(&l).inc();
                m.snapshot_bytes_persisted.get_or_create(&l).inc_by(s.data.len() as u64);
            }
        }
        Ok(())
    }

    fn recover(&self, group: GroupId) -> Result<Option<Recovered>, DiskError> {
        self.inner.recover(group)
    }

    fn groups(&self) -> Result<Vec<GroupId>, DiskError> {
        self.inner.groups()
    }

    fn next_incarnation(&mut self) -> Result<u64, DiskError> {
        self.inner.next_incarnation()
    }
}

/// Which requests and rounds get tracing spans: one in every `1 / ratio`, decided before any span
/// is made, so that the others cost one atomic increment (building and dropping spans that are
/// never exported cost a fifth of the throughput: docs/BENCHMARKS.md). Off (no spans) until
/// [`trace::set_ratio`] is called, as `--otlp-endpoint` does.
pub mod trace {
    use std::sync::atomic::{AtomicU64, Ordering};

    static EVERY: AtomicU64 = AtomicU64::new(0);
    static COUNT: AtomicU64 = AtomicU64::new(0);

    /// Traces a `ratio` share (0..=1) of what [`sample`] is asked about.
    pub fn set_ratio(ratio: f64) {
        let every = if ratio <= 0.0 { 0 } else { (1.0 / ratio.min(1.0)).round().max(1.0) as u64 };
        EVERY.store(every, Ordering::Relaxed);
    }

    /// True if the next request or round is to be traced.
    pub fn sample() -> bool {
        let every = EVERY.load(Ordering::Relaxed);
        every != 0 && COUNT.fetch_add(1, Ordering::Relaxed).is_multiple_of(every)
    }

    /// A span made by `make` if [`sample`] says so, else a disabled one.
    pub fn root(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
        if sample() {
            make()
        } else {
            tracing::Span::none()
        }
    }

    /// A span made by `make` if the current span is traced (a step within a sampled trace).
    pub fn child(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
        if tracing::Span::current().is_disabled() {
            tracing::Span::none()
        } else {
            make()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(name: &str, kind: Kind) -> Event {
        Event::Queued { name: name.into(), session: 1, request_id: 1, kind }
    }

    fn granted(name: &str, kind: Kind, waited_ms: Option<u64>) -> Event {
        Event::Granted { name: name.into(), session: 1, request_id: 1, token: 1, kind, waited_ms }
    }

    /// Review finding: barrier and latch arrivals wait for each other by design; counted as
    /// contention they made barriers "hot" and filled the dashboard's wait percentiles.
    #[test]
    fn barriers_and_latches_are_not_contention() {
        let metrics = Arc::new(Metrics::default());
        let mut o = Observer::new(1, metrics.clone());
        for kind in [Kind::Barrier { parties: 2 }, Kind::Latch] {
            o.event(1, &queued("gate", kind));
            o.event(1, &granted("gate", kind, Some(500)));
        }
        assert!(o.hot.get(&1).is_none_or(|h| h.top(0, 10).is_empty()));
        assert_eq!(metrics.wait_buckets.counts().iter().sum::<u64>(), 0);
        let barrier = KindLabel { group: 1, kind: "barrier" };
        assert_eq!(metrics.handoffs.get_or_create(&barrier).get(), 1, "still counted per kind");
        o.event(1, &queued("db", Kind::Mutex));
        o.event(1, &granted("db", Kind::Mutex, Some(7)));
        let top = o.hot[&1].top(o.started.elapsed().as_millis() as u64, 10);
        assert_eq!(top.len(), 1);
        assert_eq!((top[0].0.as_str(), top[0].1.waits, top[0].1.handoffs, top[0].1.wait_ms_max), ("db", 1, 1, 7));
        assert_eq!(metrics.wait_buckets.counts().iter().sum::<u64>(), 1);
    }

    #[test]
    fn nothing_is_counted_with_metrics_off() {
        let metrics = Arc::new(Metrics::new(false));
        let mut o = Observer::new(1, metrics.clone());
        o.event(1, &queued("db", Kind::Mutex));
        o.event(1, &granted("db", Kind::Mutex, Some(7)));
        assert!(o.hot.is_empty());
        assert_eq!(metrics.grants.get_or_create(&KindLabel { group: 1, kind: "mutex" }).get(), 0);
    }
}
