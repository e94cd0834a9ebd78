//! etcd's Lock (v3lockpb) and Election (v3electionpb) services: etcd's server-side recipes over
//! keys, leases and revisions, kept key for key so that clients mixing them with KV see what
//! etcd shows.
//!
//! A contender of `name` owns the key `name/<lease in hex>`, attached to its lease, created in
//! one transaction that also reads who is first; the owner is the key with the smallest create
//! revision (first come, first served). A contender that is not first waits for the deletion of
//! the key created just before its own (never for the owner: no herd when it goes), and checks
//! again. While a Lock or Campaign call waits, the server keeps its lease alive, as etcd's does;
//! a caller that gives up has its key deleted. A key that disappears while waiting (its lease
//! expired or was revoked) fails the call with etcd's "session expired".

use std::pin::Pin;
use std::time::Duration;

use baton_core::etcd::{
    Compare, CompareResult, CompareTarget, DeleteRequest, EtcdCommand, EtcdOutcome, KeyValue, Op, OpResponse,
    PutRequest, RangeRequest, Revision, SortOrder, SortTarget, TxnRequest, TxnResponse,
};
use baton_proto::etcd::v3electionpb::election_server::Election;
use baton_proto::etcd::v3electionpb::{self as epb};
use baton_proto::etcd::v3lockpb::lock_server::Lock;
use baton_proto::etcd::v3lockpb::{self as lpb};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::feed::Read;
use super::{convert, written, Backend, EtcdAnswer, EtcdCall};
use crate::access::Need;
use baton_core::auth::{NameRange, Permission};

/// How long a waiter sleeps between checks when this node's feed cannot tell it of a change
/// (it holds no replica of the keyspace, or the change fell out of its ring).
const RECHECK: Duration = Duration::from_millis(200);

/// The `v3lockpb.Lock` service.
#[derive(Clone)]
pub struct LockService {
    pub(crate) backend: Backend,
}

/// The `v3electionpb.Election` service.
#[derive(Clone)]
pub struct ElectionService {
    pub(crate) backend: Backend,
}

/// The end of the range of every key starting with `prefix` (etcd's rule: the prefix with its
/// last byte below 0xff incremented and what follows dropped; `"\0"` if there is none).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let end = baton_core::auth::prefix_end(prefix);
    if end.is_empty() {
        vec![0]
    } else {
        end
    }
}

/// A contender's key under `name`.
fn contender_key(name: &[u8], lease: i64) -> Vec<u8> {
    let mut key = name.to_vec();
    key.extend_from_slice(format!("/{lease:x}").as_bytes());
    key
}

fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

impl Backend {
    async fn txn(&self, req: TxnRequest) -> Result<(Revision, TxnResponse), Status> {
        match written(self.call(EtcdCall::Write(EtcdCommand::Txn(req))).await?)? {
            EtcdOutcome::Txn { revision, response } => Ok((revision, response)),
            other => Err(Status::internal(format!("unexpected outcome of a transaction: {other:?}"))),
        }
    }

    async fn range(&self, req: RangeRequest) -> Result<(Revision, Vec<KeyValue>), Status> {
        match self.call(EtcdCall::Range(req)).await? {
            EtcdAnswer::Range { revision, response } => Ok((revision, response.kvs)),
            other => Err(Status::internal(format!("unexpected answer to a range: {other:?}"))),
        }
    }

    async fn delete(&self, key: Vec<u8>) -> Result<Revision, Status> {
        let command = EtcdCommand::Delete(DeleteRequest { key, ..Default::default() });
        match written(self.call(EtcdCall::Write(command)).await?)? {
            EtcdOutcome::Delete { revision, .. } => Ok(revision),
            other => Err(Status::internal(format!("unexpected outcome of a delete: {other:?}"))),
        }
    }

    /// The first key of `prefix` by create revision (the owner), if any.
    async fn owner(&self, prefix: &[u8]) -> Result<(Revision, Option<KeyValue>), Status> {
        let req = RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            limit: 1,
            sort_order: SortOrder::Ascend,
            sort_target: SortTarget::Create,
            ..Default::default()
        };
        let (revision, mut kvs) = self.range(req).await?;
        Ok((revision, kvs.pop()))
    }

    /// Joins the queue of `name` with `lease` in one transaction: creates the contender key
    /// with `value` unless it exists, and reads whether a key older than it exists.
    async fn join(&self, name: &[u8], lease: i64, value: Vec<u8>) -> Result<Joined, Status> {
        let key = contender_key(name, lease);
        let prefix = prefix_of(name);
        let by_create = |order, limit| {
            Op::Range(RangeRequest {
                key: prefix.clone(),
                range_end: prefix_end(&prefix),
                limit,
                sort_order: order,
                sort_target: SortTarget::Create,
                keys_only: true,
                ..Default::default()
            })
        };
        let req = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal,
                target: CompareTarget::Create(0),
                key: key.clone(),
                range_end: Vec::new(),
            }],
            // A new key is the newest: the one before it (if any) is second from the end.
            success: vec![
                Op::Put(PutRequest { key: key.clone(), value, lease, ..Default::default() }),
                by_create(SortOrder::Descend, 2),
            ],
            // Joining again (the same lease): the key as it is, and who is first.
            failure: vec![
                Op::Range(RangeRequest { key: key.clone(), ..Default::default() }),
                by_create(SortOrder::Ascend, 1),
            ],
        };
        let (revision, response) = self.txn(req).await?;
        let mut ranges = response.responses.into_iter().filter_map(|r| match r {
            OpResponse::Range(r) => Some(r.kvs),
            _ => None,
        });
        let unexpected = || Status::internal("unexpected answer to a queue join");
        if response.succeeded {
            let newest = ranges.next().ok_or_else(unexpected)?;
            let before = newest.into_iter().nth(1).map(|kv| kv.key);
            return Ok(Joined { key, rev: revision, revision, existing: None, first: before.is_none(), before });
        }
        let mine = ranges.next().and_then(|kvs| kvs.into_iter().next()).ok_or_else(unexpected)?;
        let owner = ranges.next().and_then(|kvs| kvs.into_iter().next()).ok_or_else(unexpected)?;
        Ok(Joined {
            key,
            rev: mine.create_revision,
            revision,
            existing: Some(mine.value),
            first: owner.create_revision == mine.create_revision,
            before: None,
        })
    }

    /// Waits until no key of `prefix` was created before `my_rev` (each time for the one
    /// created just before it), and `my_key` still exists: the revision of the last read, or
    /// `None` if `my_key` is gone or was made again (etcd's "session expired"). One read per
    /// wake-up: the newest two keys up to `my_rev` are `my_key` and the one it waits for.
    async fn wait_turn(&self, prefix: &[u8], my_key: &[u8], my_rev: Revision) -> Result<Option<Revision>, Status> {
        loop {
            let req = RangeRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                limit: 2,
                sort_order: SortOrder::Descend,
                sort_target: SortTarget::Create,
                max_create_revision: my_rev,
                keys_only: true,
                ..Default::default()
            };
            let (revision, kvs) = self.range(req).await?;
            match kvs.as_slice() {
                [mine, rest @ ..] if mine.key == my_key && mine.create_revision == my_rev => match rest.first() {
                    None => return Ok(Some(revision)),
                    Some(before) => self.wait_deleted(&before.key, revision + 1).await,
                },
                // Its key is gone (lease expired or revoked) or was made again by someone else.
                _ => return Ok(None),
            }
        }
    }

    /// Returns once `key` may have been deleted at or after revision `from`.
    async fn wait_deleted(&self, key: &[u8], from: Revision) {
        // Never "gone": a caller that leaves drops this future (and its key goes, see `Abandon`).
        let _ = self.wait_for(from, |e| e.deleted && e.kv.key == key, std::future::pending()).await;
    }

    /// Returns once this node's replica shows a change at or after revision `from` that
    /// `matters`, or after a while if its feed cannot tell (it holds no replica of the
    /// keyspace, the change fell out of its ring, or nothing happened for [`RECHECK`] × 5): the
    /// caller then checks again. `Err` if `gone` resolves first (the caller's client left).
    async fn wait_for(
        &self,
        from: Revision,
        matters: impl Fn(&baton_core::etcd::KeyEvent) -> bool,
        gone: impl std::future::Future<Output = ()>,
    ) -> Result<(), ()> {
        let feed = self.node.etcd_feed.clone();
        let mut published = feed.subscribe();
        let mut next = from;
        tokio::pin!(gone);
        loop {
            match feed.read(next, 1_000, true) {
                Read::Changes { changes, through } if feed.present() => {
                    if changes.iter().any(|(_, e)| matters(e)) {
                        return Ok(());
                    }
                    next = through.max(next - 1) + 1;
                }
                _ => {
                    tokio::time::sleep(RECHECK).await;
                    return Ok(());
                }
            }
            tokio::select! {
                _ = published.changed() => {}
                _ = &mut gone => return Err(()),
                _ = tokio::time::sleep(RECHECK * 5) => return Ok(()),
            }
        }
    }
}

/// Deletes a contender's key if the call that created it ends before handing it over (the
/// client went away, or the wait failed), as etcd's recipe does: only the key this call
/// created (its create revision), never one made again since under the same name.
struct Abandon {
    backend: Backend,
    key: Option<(Vec<u8>, Revision)>,
}

impl Abandon {
    fn keep(mut self) {
        self.key = None;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some((key, rev)) = self.key.take() {
            let backend = self.backend.clone();
            let leader = epb::LeaderKey { key: key.clone(), rev, ..Default::default() };
            let delete = if_leading(&leader, Op::Delete(DeleteRequest { key, ..Default::default() }));
            tokio::spawn(async move {
                let _ = backend.txn(delete).await;
            });
        }
    }
}

/// A contender that joined a queue.
struct Joined {
    key: Vec<u8>,
    /// Its key's create revision.
    rev: Revision,
    /// The revision the join read at.
    revision: Revision,
    /// The key's value if it existed already.
    existing: Option<Vec<u8>>,
    /// No key is older than it: it owns the lock (leads) now.
    first: bool,
    /// The key created just before it, if the join saw it.
    before: Option<Vec<u8>>,
}

/// Joins `name`'s queue with `lease` and waits for its turn; the key, its create revision,
/// the revision of the last read and the key's earlier value if it existed. The uncontended
/// case is one transaction.
async fn acquire(
    backend: &Backend,
    name: &[u8],
    lease: i64,
    value: Vec<u8>,
) -> Result<(Vec<u8>, Revision, Revision, Option<Vec<u8>>), Status> {
    let joined = backend.join(name, lease, value).await?;
    if joined.first {
        return Ok((joined.key, joined.rev, joined.revision, joined.existing));
    }
    // (etcd's server does not keep the caller's lease alive while it waits: the caller does.)
    let guard = Abandon { backend: backend.clone(), key: Some((joined.key.clone(), joined.rev)) };
    if let Some(before) = &joined.before {
        backend.wait_deleted(before, joined.revision + 1).await;
    }
    let turn = backend.wait_turn(&prefix_of(name), &joined.key, joined.rev).await?;
    guard.keep();
    match turn {
        Some(revision) => Ok((joined.key, joined.rev, revision, joined.existing)),
        // The key is gone or is someone else's now: nothing of this call's to delete.
        None => Err(Status::unknown("session expired")),
    }
}

/// `permission` on the keys a lock or election `name` keeps its contenders under.
fn on_contenders(permission: Permission, name: &[u8]) -> Need {
    let prefix = prefix_of(name);
    let end = baton_core::auth::prefix_end(&prefix);
    Need::range(permission, NameRange { start: prefix, end })
}

/// `permission` on the one key `key`.
fn on_key(permission: Permission, key: &[u8]) -> Need {
    Need::range(permission, super::auth::key_range(key, &[]))
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<lpb::LockRequest>) -> Result<Response<lpb::LockResponse>, Status> {
        self.backend.admit(&request, "Lock", &[on_contenders(Permission::Write, &request.get_ref().name)])?;
        let req = request.into_inner();
        let (key, _, revision, _) = acquire(&self.backend, &req.name, req.lease, Vec::new()).await?;
        Ok(Response::new(lpb::LockResponse { header: self.backend.header(revision), key }))
    }

    async fn unlock(&self, request: Request<lpb::UnlockRequest>) -> Result<Response<lpb::UnlockResponse>, Status> {
        self.backend.admit(&request, "Unlock", &[on_key(Permission::Write, &request.get_ref().key)])?;
        let req = request.into_inner();
        let revision = self.backend.delete(req.key).await?;
        Ok(Response::new(lpb::UnlockResponse { header: self.backend.header(revision) }))
    }
}

/// The leader key as the caller gave it, or etcd's refusal.
fn leader_key(leader: Option<epb::LeaderKey>) -> Result<epb::LeaderKey, Status> {
    leader.ok_or_else(|| Status::invalid_argument("\"leader\" field must be provided"))
}

/// A transaction that runs `then` if `leader` still leads (its key has its create revision).
fn if_leading(leader: &epb::LeaderKey, then: Op) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal,
            target: CompareTarget::Create(leader.rev),
            key: leader.key.clone(),
            range_end: Vec::new(),
        }],
        success: vec![then],
        failure: Vec::new(),
    }
}

fn no_leader() -> Status {
    Status::unknown("election: no leader")
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<epb::LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<epb::CampaignRequest>,
    ) -> Result<Response<epb::CampaignResponse>, Status> {
        self.backend.admit(&request, "Campaign", &[on_contenders(Permission::Write, &request.get_ref().name)])?;
        let req = request.into_inner();
        let (key, rev, mut revision, existing) =
            acquire(&self.backend, &req.name, req.lease, req.value.clone()).await?;
        if existing.is_some_and(|v| v != req.value) {
            // Campaigning again with another value proclaims it (etcd's recipe does the same).
            let leader = epb::LeaderKey { name: req.name.clone(), key: key.clone(), rev, lease: req.lease };
            let put =
                Op::Put(PutRequest { key: key.clone(), value: req.value, lease: req.lease, ..Default::default() });
            let (r, response) = self.backend.txn(if_leading(&leader, put)).await?;
            if !response.succeeded {
                return Err(Status::unknown("session expired"));
            }
            revision = r;
        }
        Ok(Response::new(epb::CampaignResponse {
            header: self.backend.header(revision),
            leader: Some(epb::LeaderKey { name: req.name, key, rev, lease: req.lease }),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<epb::ProclaimRequest>,
    ) -> Result<Response<epb::ProclaimResponse>, Status> {
        let caller = self.backend.admit(&request, "Proclaim", &[])?;
        let req = request.into_inner();
        let leader = leader_key(req.leader)?;
        self.backend.check(&caller, "Proclaim", &[on_key(Permission::Write, &leader.key)])?;
        let put = Op::Put(PutRequest {
            key: leader.key.clone(),
            value: req.value,
            lease: leader.lease,
            ..Default::default()
        });
        let (revision, response) = self.backend.txn(if_leading(&leader, put)).await?;
        if !response.succeeded {
            return Err(Status::unknown("election: not leader"));
        }
        Ok(Response::new(epb::ProclaimResponse { header: self.backend.header(revision) }))
    }

    async fn leader(&self, request: Request<epb::LeaderRequest>) -> Result<Response<epb::LeaderResponse>, Status> {
        self.backend.admit(&request, "Leader", &[on_contenders(Permission::Read, &request.get_ref().name)])?;
        let req = request.into_inner();
        let (revision, owner) = self.backend.owner(&prefix_of(&req.name)).await?;
        let kv = owner.ok_or_else(no_leader)?;
        Ok(Response::new(epb::LeaderResponse { header: self.backend.header(revision), kv: Some(convert::kv_out(kv)) }))
    }

    type ObserveStream = ObserveStream;

    /// Sends the leader now (once there is one), then every change of leader or of its value.
    async fn observe(&self, request: Request<epb::LeaderRequest>) -> Result<Response<ObserveStream>, Status> {
        let need = on_contenders(Permission::Read, &request.get_ref().name);
        let caller = self.backend.admit(&request, "Observe", std::slice::from_ref(&need))?;
        let req = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let backend = self.backend.clone();
        tokio::spawn(async move {
            let prefix = prefix_of(&req.name);
            let mut last: Option<(Vec<u8>, Revision)> = None;
            let mut from = 0;
            loop {
                // Checked again before each answer: a revoked grant or a lapsed token ends it.
                if let Err(s) = backend.check(&caller, "Observe", std::slice::from_ref(&need)) {
                    let _ = tx.send(Err(s)).await;
                    return;
                }
                let (revision, owner) = match backend.owner(&prefix).await {
                    Ok(o) => o,
                    Err(s) => {
                        let _ = tx.send(Err(s)).await;
                        return;
                    }
                };
                if let Some(kv) = owner {
                    let seen = (kv.key.clone(), kv.mod_revision);
                    if last.as_ref() != Some(&seen) {
                        last = Some(seen);
                        let response =
                            epb::LeaderResponse { header: backend.header(revision), kv: Some(convert::kv_out(kv)) };
                        if tx.send(Ok(response)).await.is_err() {
                            return;
                        }
                    }
                }
                from = from.max(revision + 1);
                let end = prefix_end(&prefix);
                let in_prefix = |e: &baton_core::etcd::KeyEvent| e.kv.key >= prefix && e.kv.key < end;
                if backend.wait_for(from, in_prefix, tx.closed()).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(&self, request: Request<epb::ResignRequest>) -> Result<Response<epb::ResignResponse>, Status> {
        let caller = self.backend.admit(&request, "Resign", &[])?;
        let req = request.into_inner();
        let leader = leader_key(req.leader)?;
        self.backend.check(&caller, "Resign", &[on_key(Permission::Write, &leader.key)])?;
        let delete = Op::Delete(DeleteRequest { key: leader.key.clone(), ..Default::default() });
        // Resigning when no longer leading changes nothing and is not an error (etcd's).
        let (revision, _) = self.backend.txn(if_leading(&leader, delete)).await?;
        Ok(Response::new(epb::ResignResponse { header: self.backend.header(revision) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_follow_etcd() {
        assert_eq!(prefix_end(b"abc"), b"abd".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(contender_key(b"job", 0x1a2b), b"job/1a2b".to_vec());
    }
}
