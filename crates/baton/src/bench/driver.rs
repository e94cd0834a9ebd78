//! The two systems `baton bench` drives, behind one small interface: sessions (etcd: leases),
//! exclusive locks, election campaigns, counters and linearizable reads. Each workload is
//! written once against [`Driver`], so both systems run exactly the same client loop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_client::{Client, ClientOptions, LockGuard, Session};
use baton_proto::etcd::etcdserverpb::{
    compare, kv_client::KvClient, lease_client::LeaseClient, request_op, response_op, Compare, LeaseGrantRequest,
    LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use baton_proto::etcd::v3electionpb::{election_client::ElectionClient, CampaignRequest, LeaderKey, ResignRequest};
use baton_proto::etcd::v3lockpb::{lock_client::LockClient, LockRequest, UnlockRequest};
use tonic::transport::Channel;

/// Which system a run drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Baton, through `baton-client`.
    Baton,
    /// etcd v3, through its Lease, KV, Lock and Election gRPC services.
    Etcd,
}

impl Target {
    /// Parses `baton` or `etcd`.
    pub fn parse(s: &str) -> Result<Target, String> {
        match s {
            "baton" => Ok(Target::Baton),
            "etcd" => Ok(Target::Etcd),
            other => Err(format!("unknown target {other:?} (known: baton, etcd)")),
        }
    }

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Target::Baton => "baton",
            Target::Etcd => "etcd",
        }
    }
}

/// One benchmark client's connection.
#[derive(Clone)]
pub enum Driver {
    /// A Baton client (leader routing, batched keepalives).
    Baton(Client),
    /// An etcd connection to one member.
    Etcd(Box<Etcd>),
}

/// A session (Baton) or lease (etcd).
#[derive(Clone)]
pub enum Sess {
    /// A Baton session.
    Baton(Session),
    /// An etcd lease id.
    Etcd(i64),
}

/// A held lock or leadership.
pub enum Held {
    /// Baton's guard.
    Baton(LockGuard),
    /// etcd's lock key with the revision it was granted at.
    EtcdLock { key: Vec<u8>, revision: u64 },
    /// etcd's leader key.
    EtcdLeader { leader: LeaderKey, revision: u64 },
}

impl Held {
    /// A number that grows with every grant of the same name: Baton's fencing token, etcd's
    /// revision at the grant.
    pub fn token(&self) -> u64 {
        match self {
            Held::Baton(g) => g.token(),
            Held::EtcdLock { revision, .. } | Held::EtcdLeader { revision, .. } => *revision,
        }
    }
}

/// An error from either system, as text.
pub type DResult<T> = Result<T, String>;

fn text<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

impl Driver {
    /// Connects client number `index` of a run. Baton clients find the leader themselves; etcd
    /// clients are spread over the members round-robin (members forward to their leader).
    pub async fn connect(target: Target, endpoints: &[String], index: usize) -> DResult<Driver> {
        match target {
            Target::Baton => {
                let options = ClientOptions {
                    client_id: format!("bench-{}-{index}", std::process::id()),
                    tls: crate::tls::client(),
                    credentials: crate::auth::credentials(),
                    ..Default::default()
                };
                Ok(Driver::Baton(Client::connect_with(endpoints.to_vec(), options).await.map_err(text)?))
            }
            Target::Etcd => Ok(Driver::Etcd(Box::new(Etcd::connect(&endpoints[index % endpoints.len()]).await?))),
        }
    }

    /// A Baton client that sends calls to any node (the coordination-free tier) to endpoint
    /// `index mod n` first, so that `n` clients spread over `n` nodes.
    pub async fn connect_spread(endpoints: &[String], index: usize) -> DResult<Driver> {
        let mut eps = endpoints.to_vec();
        let n = eps.len();
        eps.rotate_left(index % n);
        let options = ClientOptions {
            client_id: format!("bench-{}-{index}", std::process::id()),
            tls: crate::tls::client(),
            credentials: crate::auth::credentials(),
            discover: false,
            ..Default::default()
        };
        Ok(Driver::Baton(Client::connect_with(eps, options).await.map_err(text)?))
    }

    /// Adds one to the coordination-free PN-counter `name` on this client's node (Baton only).
    pub async fn crdt_increment(&self, tier: &baton_client::crdt::Crdt, name: &str) -> DResult<i64> {
        match self {
            Driver::Baton(_) => {
                tier.add(baton_client::crdt::CrdtKind::PnCounter, name, 1).await.map(|v| v.value).map_err(text)
            }
            Driver::Etcd(_) => Err("etcd has no coordination-free counter".into()),
        }
    }

    /// The coordination-free tier through this client (Baton only).
    pub fn crdt(&self) -> Option<baton_client::crdt::Crdt> {
        match self {
            Driver::Baton(c) => Some(c.crdt()),
            Driver::Etcd(_) => None,
        }
    }

    /// Opens a session / grants a lease with this TTL; it is kept alive in the background.
    pub async fn open(&self, ttl: Duration) -> DResult<Sess> {
        match self {
            Driver::Baton(c) => Ok(Sess::Baton(c.session(ttl).await.map_err(text)?)),
            Driver::Etcd(e) => Ok(Sess::Etcd(e.grant(ttl).await?)),
        }
    }

    /// Renews the session / lease once, now.
    pub async fn keep_alive_once(&self, sess: &Sess) -> DResult<()> {
        match (self, sess) {
            (Driver::Baton(_), Sess::Baton(s)) => match s.keep_alive_once().await.map_err(text)? {
                true => Ok(()),
                false => Err("session is gone".into()),
            },
            (Driver::Etcd(e), Sess::Etcd(id)) => e.keep_alive_once(*id).await,
            _ => Err("session of another target".into()),
        }
    }

    /// Closes the session / revokes the lease (its locks are released).
    pub async fn close(&self, sess: Sess) -> DResult<()> {
        match (self, sess) {
            (Driver::Baton(_), Sess::Baton(s)) => s.close().await.map_err(text),
            (Driver::Etcd(e), Sess::Etcd(id)) => e.revoke(id).await,
            _ => Err("session of another target".into()),
        }
    }

    /// Takes an exclusive lock: `wait` None tries once (Baton only; etcd's Lock always waits,
    /// so it gets a short deadline), Some waits up to that long. `Ok(None)`: not granted.
    pub async fn lock(&self, sess: &Sess, name: &str, wait: Option<Duration>) -> DResult<Option<Held>> {
        match (self, sess) {
            (Driver::Baton(_), Sess::Baton(s)) => Ok(s.lock(name, wait).await.map_err(text)?.map(Held::Baton)),
            (Driver::Etcd(e), Sess::Etcd(id)) => e.lock(*id, name, wait.unwrap_or(Duration::from_secs(1))).await,
            _ => Err("session of another target".into()),
        }
    }

    /// Campaigns for leadership of `name`, waiting up to `wait`.
    pub async fn campaign(&self, sess: &Sess, name: &str, wait: Duration) -> DResult<Option<Held>> {
        match (self, sess) {
            (Driver::Baton(_), Sess::Baton(s)) => {
                Ok(s.campaign(name, b"bench".to_vec(), Some(wait)).await.map_err(text)?.map(Held::Baton))
            }
            (Driver::Etcd(e), Sess::Etcd(id)) => e.campaign(*id, name, wait).await,
            _ => Err("session of another target".into()),
        }
    }

    /// Releases a lock or resigns a leadership.
    pub async fn release(&self, held: Held) -> DResult<()> {
        match (self, held) {
            (Driver::Baton(_), Held::Baton(g)) => g.release().await.map_err(text),
            (Driver::Etcd(e), Held::EtcdLock { key, .. }) => e.unlock(key).await,
            (Driver::Etcd(e), Held::EtcdLeader { leader, .. }) => e.resign(leader).await,
            _ => Err("lock of another target".into()),
        }
    }

    /// Adds one to a counter (Baton: an atomic add; etcd: a compare-and-swap transaction on the
    /// key's version, retried on conflict, since etcd has no atomic add).
    pub async fn increment(&self, name: &str) -> DResult<i64> {
        match self {
            Driver::Baton(c) => c.counter_add(name, 1).await.map_err(text),
            Driver::Etcd(e) => e.increment(name).await,
        }
    }

    /// Reads a counter linearizably (Baton: ReadIndex; etcd: a non-serializable Range).
    pub async fn read(&self, name: &str) -> DResult<i64> {
        match self {
            Driver::Baton(c) => c.counter_get(name).await.map_err(text),
            Driver::Etcd(e) => e.read(name).await.map(|(v, _)| v),
        }
    }

    /// Session / lease renewals acknowledged so far by the servers to this client.
    pub fn renewals(&self) -> u64 {
        match self {
            Driver::Baton(c) => c.renewals(),
            Driver::Etcd(e) => e.shared.renewals.load(Ordering::Relaxed),
        }
    }
}

/// A connection to one etcd member, with a background task that keeps its leases alive over
/// one multiplexed LeaseKeepAlive stream (every TTL/3, like etcd's own Go client).
#[derive(Clone)]
pub struct Etcd {
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
    lock: LockClient<Channel>,
    election: ElectionClient<Channel>,
    shared: Arc<EtcdShared>,
}

struct EtcdShared {
    /// Live leases and their TTLs.
    leases: Mutex<HashMap<i64, Duration>>,
    renewals: AtomicU64,
    /// This client's view of its counters: value and the key's version.
    counters: Mutex<HashMap<String, (i64, i64)>>,
}

impl Etcd {
    async fn connect(addr: &str) -> DResult<Etcd> {
        let uri = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
        let channel = tonic::transport::Endpoint::from_shared(uri)
            .map_err(text)?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| format!("cannot connect to etcd at {addr}: {e}"))?;
        let shared = Arc::new(EtcdShared {
            leases: Mutex::new(HashMap::new()),
            renewals: AtomicU64::new(0),
            counters: Mutex::new(HashMap::new()),
        });
        let e = Etcd {
            kv: KvClient::new(channel.clone()),
            lease: LeaseClient::new(channel.clone()),
            lock: LockClient::new(channel.clone()),
            election: ElectionClient::new(channel),
            shared,
        };
        tokio::spawn(keepalive_loop(e.lease.clone(), Arc::downgrade(&e.shared)));
        Ok(e)
    }

    async fn grant(&self, ttl: Duration) -> DResult<i64> {
        let ttl_s = ttl.as_secs().max(1) as i64;
        let r = self.lease.clone().lease_grant(LeaseGrantRequest { ttl: ttl_s, id: 0 }).await.map_err(text)?;
        let r = r.into_inner();
        if !r.error.is_empty() {
            return Err(r.error);
        }
        self.shared.leases.lock().expect("leases lock").insert(r.id, Duration::from_secs(ttl_s as u64));
        Ok(r.id)
    }

    async fn keep_alive_once(&self, id: i64) -> DResult<()> {
        let mut stream = self
            .lease
            .clone()
            .lease_keep_alive(tokio_stream::once(LeaseKeepAliveRequest { id }))
            .await
            .map_err(text)?
            .into_inner();
        match stream.message().await.map_err(text)? {
            Some(r) if r.ttl > 0 => Ok(()),
            Some(_) => Err(format!("lease {id:x} is gone")),
            None => Err("keepalive stream ended without an answer".into()),
        }
    }

    async fn revoke(&self, id: i64) -> DResult<()> {
        self.shared.leases.lock().expect("leases lock").remove(&id);
        self.lease.clone().lease_revoke(LeaseRevokeRequest { id }).await.map_err(text)?;
        Ok(())
    }

    async fn lock(&self, lease: i64, name: &str, wait: Duration) -> DResult<Option<Held>> {
        let mut req = tonic::Request::new(LockRequest { name: name.as_bytes().to_vec(), lease });
        req.set_timeout(wait);
        match self.lock.clone().lock(req).await {
            Ok(r) => {
                let r = r.into_inner();
                let revision = r.header.map(|h| h.revision as u64).unwrap_or(0);
                Ok(Some(Held::EtcdLock { key: r.key, revision }))
            }
            Err(s) if deadline_passed(&s) => Ok(None),
            Err(s) => Err(s.to_string()),
        }
    }

    async fn unlock(&self, key: Vec<u8>) -> DResult<()> {
        self.lock.clone().unlock(UnlockRequest { key }).await.map_err(text)?;
        Ok(())
    }

    async fn campaign(&self, lease: i64, name: &str, wait: Duration) -> DResult<Option<Held>> {
        let mut req =
            tonic::Request::new(CampaignRequest { name: name.as_bytes().to_vec(), lease, value: b"bench".to_vec() });
        req.set_timeout(wait);
        match self.election.clone().campaign(req).await {
            Ok(r) => {
                let r = r.into_inner();
                let revision = r.header.map(|h| h.revision as u64).unwrap_or(0);
                let leader = r.leader.ok_or("campaign answered without a leader key")?;
                Ok(Some(Held::EtcdLeader { leader, revision }))
            }
            Err(s) if deadline_passed(&s) => Ok(None),
            Err(s) => Err(s.to_string()),
        }
    }

    async fn resign(&self, leader: LeaderKey) -> DResult<()> {
        self.election.clone().resign(ResignRequest { leader: Some(leader) }).await.map_err(text)?;
        Ok(())
    }

    async fn read(&self, name: &str) -> DResult<(i64, i64)> {
        let req = RangeRequest { key: name.as_bytes().to_vec(), ..Default::default() };
        let r = self.kv.clone().range(req).await.map_err(text)?.into_inner();
        Ok(r.kvs.first().map(|kv| (parse_count(&kv.value), kv.version)).unwrap_or((0, 0)))
    }

    async fn increment(&self, name: &str) -> DResult<i64> {
        let cached = self.shared.counters.lock().expect("counters lock").get(name).copied();
        let (mut value, mut version) = match cached {
            Some(c) => c,
            None => self.read(name).await?,
        };
        for _ in 0..100 {
            let key = name.as_bytes().to_vec();
            let next = value + 1;
            let txn = TxnRequest {
                compare: vec![Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Version as i32,
                    key: key.clone(),
                    target_union: Some(compare::TargetUnion::Version(version)),
                    ..Default::default()
                }],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: key.clone(),
                        value: next.to_string().into_bytes(),
                        ..Default::default()
                    })),
                }],
                failure: vec![RequestOp {
                    request: Some(request_op::Request::RequestRange(RangeRequest { key, ..Default::default() })),
                }],
            };
            let r = self.kv.clone().txn(txn).await.map_err(text)?.into_inner();
            if r.succeeded {
                self.shared.counters.lock().expect("counters lock").insert(name.to_string(), (next, version + 1));
                return Ok(next);
            }
            // Lost the race: the failure branch read the current value and version.
            let current = r.responses.into_iter().find_map(|op| match op.response {
                Some(response_op::Response::ResponseRange(range)) => Some(range),
                _ => None,
            });
            (value, version) = current
                .and_then(|range| range.kvs.first().map(|kv| (parse_count(&kv.value), kv.version)))
                .unwrap_or((0, 0));
        }
        Err(format!("counter {name}: 100 conflicting transactions in a row"))
    }
}

/// The wait ran out: etcd answers DeadlineExceeded, or Unknown "context deadline exceeded"
/// from its lock and election services, or tonic cancels the call first.
fn deadline_passed(s: &tonic::Status) -> bool {
    matches!(s.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled)
        || (s.code() == tonic::Code::Unknown && s.message().contains("deadline exceeded"))
}

fn parse_count(bytes: &[u8]) -> i64 {
    std::str::from_utf8(bytes).ok().and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Sends every live lease of one connection every TTL/3 on one stream, counting the renewals
/// etcd acknowledges; reopens the stream when it breaks; ends with the connection.
async fn keepalive_loop(lease: LeaseClient<Channel>, weak: std::sync::Weak<EtcdShared>) {
    loop {
        let (tx, rx) = tokio::sync::mpsc::channel::<LeaseKeepAliveRequest>(1024);
        // etcd answers the call's headers only with its first response, so the requests must
        // flow before the call returns: a task of their own sends them.
        let sender = tokio::spawn(send_keepalives(tx, weak.clone()));
        let stream = lease.clone().lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
        if let Ok(r) = stream {
            let mut responses = r.into_inner();
            while let Ok(Some(r)) = responses.message().await {
                let Some(shared) = weak.upgrade() else { break };
                if r.ttl > 0 {
                    shared.renewals.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        sender.abort();
        if weak.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn send_keepalives(tx: tokio::sync::mpsc::Sender<LeaseKeepAliveRequest>, weak: std::sync::Weak<EtcdShared>) {
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let leases: Vec<(i64, Duration)> =
            shared.leases.lock().expect("leases lock").iter().map(|(id, ttl)| (*id, *ttl)).collect();
        drop(shared);
        let interval = leases.iter().map(|(_, ttl)| *ttl / 3).min().unwrap_or(Duration::from_secs(1));
        for (id, _) in leases {
            if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(interval.max(Duration::from_millis(100))).await;
    }
}
