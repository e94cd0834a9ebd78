//! etcd's v3 keyspace: keys with revisions, ranges, transactions and compaction, with etcd's
//! semantics and error messages, so that etcd's clients work against Baton unchanged.
//!
//! # Design
//! The keyspace is one [`EtcdStore`], replicated by its own Raft group (one revision counter
//! for every key, as in etcd). A write request (put, delete, transaction, compaction) is one
//! command; it is checked whole before it changes anything, so a refused request leaves no
//! trace, and a request that writes moves the revision by exactly one whatever the number of
//! keys it changes. Reads run against the same store at any revision not compacted
//! ([`mvcc`]). The request and response types mirror etcd's protobuf messages field by field,
//! without depending on them (the server translates).
//!
//! etcd's locks and elections are built by its clients (and by its Lock and Election
//! services) from keys, leases and revisions; they live here, in the etcd keyspace. Baton's
//! own locks are a different namespace: an etcd lock on "x" and `baton lock x` do not exclude
//! each other.
//!
//! # Caveats
//! - See [`mvcc`] for compaction's cost.

mod apply;
pub mod lease;
pub mod mvcc;
mod txn;

use serde::{Deserialize, Serialize};

pub use apply::LEASE_CLIENT;
pub use lease::{LeaseRecord, Leases, MAX_LEASE_TTL_S, MIN_LEASE_TTL_S};
pub use mvcc::{KeyEvent, KeyRange, Mvcc};
pub use txn::{Compare, CompareResult, CompareTarget, Op, OpResponse, TxnRequest, TxnResponse, MAX_TXN_DEPTH};

/// An etcd revision (etcd's type: a signed 64-bit integer).
pub type Revision = i64;

/// Most operations in one transaction, nested ones included (etcd's default `--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;
/// Largest request, in bytes (etcd's default `--max-request-bytes`, 1.5 MiB).
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// A key and its metadata (etcd's `mvccpb.KeyValue`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The revision of the write that created the key (since its last deletion).
    pub create_revision: Revision,
    /// The revision of the last write to the key.
    pub mod_revision: Revision,
    /// Writes since creation: 1 after the first.
    pub version: i64,
    /// The value.
    pub value: Vec<u8>,
    /// The lease the key is attached to (0: none).
    pub lease: i64,
}

/// A refusal, with etcd's message (clients match on the text) and the gRPC code etcd sends it
/// with ([`EtcdError::code`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum EtcdError {
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
}

/// gRPC status codes, as etcd uses them (the server maps these to tonic's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    InvalidArgument,
    NotFound,
    FailedPrecondition,
    OutOfRange,
    ResourceExhausted,
}

impl EtcdError {
    /// The gRPC code etcd sends this refusal with.
    pub fn code(&self) -> Code {
        match self {
            EtcdError::Compacted | EtcdError::FutureRevision | EtcdError::LeaseTtlTooLarge => Code::OutOfRange,
            EtcdError::LeaseNotFound => Code::NotFound,
            EtcdError::LeaseExists => Code::FailedPrecondition,
            EtcdError::NoSpace => Code::ResourceExhausted,
            EtcdError::DuplicateKey
            | EtcdError::KeyNotFound
            | EtcdError::TooManyOps
            | EtcdError::EmptyKey
            | EtcdError::ValueProvided
            | EtcdError::LeaseProvided
            | EtcdError::RequestTooLarge => Code::InvalidArgument,
        }
    }
}

/// Order of a range's results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortOrder {
    /// Key order (no sorting asked for).
    #[default]
    None,
    Ascend,
    Descend,
}

/// What a range's results are sorted by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

/// etcd's `RangeRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub limit: i64,
    pub revision: Revision,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    pub serializable: bool,
    pub keys_only: bool,
    pub count_only: bool,
    pub min_mod_revision: Revision,
    pub max_mod_revision: Revision,
    pub min_create_revision: Revision,
    pub max_create_revision: Revision,
}

/// etcd's `RangeResponse` (without the header: the caller adds the store's revision).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    pub more: bool,
    pub count: i64,
}

/// etcd's `PutRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub lease: i64,
    pub prev_kv: bool,
    pub ignore_value: bool,
    pub ignore_lease: bool,
}

/// etcd's `PutResponse` (without the header).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    pub prev_kv: Option<KeyValue>,
}

/// etcd's `DeleteRangeRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRequest {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub prev_kv: bool,
}

/// etcd's `DeleteRangeResponse` (without the header).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteResponse {
    pub deleted: i64,
    pub prev_kvs: Vec<KeyValue>,
}

/// A write to the etcd keyspace: one log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EtcdCommand {
    Put(PutRequest),
    Delete(DeleteRequest),
    Txn(TxnRequest),
    /// Forget the history before this revision.
    Compact(Revision),
    /// Create a lease (`id` 0: the state machine picks one) of `ttl_s` seconds.
    LeaseGrant {
        id: i64,
        ttl_s: i64,
    },
    /// End a lease and delete its keys.
    LeaseRevoke(i64),
    /// Raise (`activate`) or clear an alarm of `member` (clearing: `member` 0 clears it for
    /// every member). Last: variants are appended only, log entries are bincode (positional).
    Alarm {
        activate: bool,
        member: u64,
        alarm: Alarm,
    },
}

/// What an [`EtcdCommand`] did; `revision` is the keyspace's revision after it (what etcd's
/// response header carries).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EtcdOutcome {
    Put {
        revision: Revision,
        response: PutResponse,
    },
    Delete {
        revision: Revision,
        response: DeleteResponse,
    },
    Txn {
        revision: Revision,
        response: TxnResponse,
    },
    Compacted {
        revision: Revision,
    },
    LeaseGranted {
        revision: Revision,
        id: i64,
        ttl_s: i64,
    },
    LeaseRevoked {
        revision: Revision,
    },
    /// The alarms after an alarm command.
    Alarms {
        revision: Revision,
        alarms: Vec<(u64, Alarm)>,
    },
}

/// The etcd keyspace: the multi-version store, the leases that keys are attached to, and the
/// alarms raised on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdStore {
    mvcc: Mvcc,
    leases: Leases,
    /// Raised alarms: (member that raised it, alarm). The last field of the last field of a
    /// snapshot: a snapshot written before alarms existed reads as having none (see
    /// `StateMachine::from_snapshot`).
    alarms: std::collections::BTreeSet<(u64, Alarm)>,
}

impl Default for EtcdStore {
    fn default() -> Self {
        EtcdStore { mvcc: Mvcc::new(), leases: Leases::default(), alarms: Default::default() }
    }
}

/// An alarm on the keyspace (etcd's `AlarmType`, without NONE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Alarm {
    /// The keyspace outgrew a member's quota: writes that add data are refused until an
    /// operator frees space (compaction) and disarms it.
    NoSpace,
    /// A member found its data corrupt (never raised by Baton itself; accepted from clients).
    Corrupt,
}

/// What a replica's history holds from a revision on (see [`EtcdStore::changes_from`]): what a
/// watch replays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangesFrom {
    /// Every change from the revision asked for through `through` (whole revisions; possibly
    /// none, with `through` the store's revision, if nothing is newer).
    Changes { changes: Vec<(Revision, KeyEvent)>, through: Revision },
    /// The revision asked for was compacted away; the store's compaction revision.
    Compacted(Revision),
}

impl EtcdStore {
    /// The changes from revision `from` on, at most about `max` of them but whole revisions (a
    /// single revision with more changes comes whole), or `Compacted` if `from` is before the
    /// last compaction. A watch is served by this, from its node's own replica, in the server
    /// and in the simulator alike.
    pub fn changes_from(&self, from: Revision, max: usize) -> ChangesFrom {
        let compacted = self.mvcc.compacted();
        if from < compacted {
            return ChangesFrom::Compacted(compacted);
        }
        let mut changes = self.mvcc.changes_since(from, max.saturating_add(1));
        if changes.len() <= max {
            return ChangesFrom::Changes { changes, through: self.revision() };
        }
        let cut = changes[max].0;
        changes.retain(|(r, _)| *r < cut);
        if changes.is_empty() {
            // One revision (a large delete) with more than `max` changes: it comes whole (and
            // only it is read: the review found the whole later history cloned here).
            let only = self.mvcc.changes_since(from, 1).first().map_or(from, |(r, _)| *r);
            return ChangesFrom::Changes { changes: self.mvcc.changes_at(only), through: only };
        }
        ChangesFrom::Changes { changes, through: cut - 1 }
    }

    /// Restores what a snapshot does not carry (the kept history's weight).
    pub(crate) fn after_snapshot(&mut self) {
        self.mvcc.recount_bytes();
    }

    /// The raised alarms, by member.
    pub fn alarms(&self) -> Vec<(u64, Alarm)> {
        self.alarms.iter().copied().collect()
    }

    /// Raises or clears an alarm (clearing with `member` 0 clears it for every member).
    pub fn set_alarm(&mut self, activate: bool, member: u64, alarm: Alarm) {
        if activate {
            self.alarms.insert((member, alarm));
        } else {
            self.alarms.retain(|(m, a)| *a != alarm || (member != 0 && *m != member));
        }
    }

    /// With NOSPACE raised, a write that could add data is refused, as etcd's capped applier
    /// does: a put, a transaction with a put in either branch (nested ones included), a lease
    /// grant. Deletes, compaction and revocations free space and go on.
    pub fn check_space(&self, command: &EtcdCommand) -> Result<(), EtcdError> {
        if !self.alarms.iter().any(|(_, a)| *a == Alarm::NoSpace) {
            return Ok(());
        }
        fn puts(ops: &[Op]) -> bool {
            ops.iter().any(|op| match op {
                Op::Put(_) => true,
                Op::Txn(t) => puts(&t.success) || puts(&t.failure),
                _ => false,
            })
        }
        match command {
            EtcdCommand::Put(_) | EtcdCommand::LeaseGrant { .. } => Err(EtcdError::NoSpace),
            EtcdCommand::Txn(t) if puts(&t.success) || puts(&t.failure) => Err(EtcdError::NoSpace),
            _ => Ok(()),
        }
    }

    /// The current revision.
    pub fn revision(&self) -> Revision {
        self.mvcc.revision()
    }

    /// The multi-version store, for reads.
    pub fn mvcc(&self) -> &Mvcc {
        &self.mvcc
    }

    /// Answers a range at the store's current state (a range request of its own: its key must
    /// be given).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, EtcdError> {
        if req.key.is_empty() {
            return Err(EtcdError::EmptyKey);
        }
        range(&self.mvcc, req, None)
    }

    /// A put, alone: one revision. (Its checks run in etcd's order for a put of its own: an
    /// unknown lease is reported before `ignore_*` on a missing key, the other way round in a
    /// transaction.)
    pub fn put(&mut self, req: &PutRequest) -> Result<PutResponse, EtcdError> {
        txn::check_put_shape(req)?;
        if req.lease != 0 && self.leases.get(req.lease).is_none() {
            return Err(EtcdError::LeaseNotFound);
        }
        self.txn(&TxnRequest { compare: Vec::new(), success: vec![Op::Put(req.clone())], failure: Vec::new() }).map(
            |r| match r.responses.into_iter().next() {
                Some(OpResponse::Put(p)) => p,
                other => unreachable!("a put's transaction answers a put: {other:?}"),
            },
        )
    }

    /// A delete, alone: one revision if it deletes anything.
    pub fn delete(&mut self, req: &DeleteRequest) -> Result<DeleteResponse, EtcdError> {
        self.txn(&TxnRequest { compare: Vec::new(), success: vec![Op::Delete(req.clone())], failure: Vec::new() }).map(
            |r| match r.responses.into_iter().next() {
                Some(OpResponse::Delete(d)) => d,
                other => unreachable!("a delete's transaction answers a delete: {other:?}"),
            },
        )
    }

    /// A transaction: checked whole, then applied at one revision if it writes.
    pub fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, EtcdError> {
        txn::check(req)?;
        let succeeded = txn::compares_hold(&self.mvcc, req);
        let ops = if succeeded { &req.success } else { &req.failure };
        let leases = &self.leases;
        txn::check_ops(&self.mvcc, &|id| leases.get(id).is_some(), ops)?;
        let main = self.mvcc.revision() + 1;
        let mut sub = 0;
        let (responses, revisions) = match txn::apply(&mut self.mvcc, ops, main, &mut sub) {
            Ok(r) => r,
            Err(e) => {
                // Unreachable after the checks above; if it ever happens, nothing stays.
                self.mvcc.rollback(main);
                return Err(e);
            }
        };
        if sub > 0 {
            // Keys follow their leases: each change moves its key from the lease it had to the
            // one it has (none for a deletion), in the order the changes were made.
            for (_, change) in self.mvcc.changes_since(main, usize::MAX) {
                let from = change.prev.as_ref().map_or(0, |kv| kv.lease);
                let to = if change.deleted { 0 } else { change.kv.lease };
                self.leases.reattach(&change.kv.key, from, to);
            }
            self.mvcc.commit(main);
        }
        Ok(TxnResponse { succeeded, responses, revisions })
    }

    /// Compacts the history up to `rev` (etcd's `Compact`).
    pub fn compact(&mut self, rev: Revision) -> Result<(), EtcdError> {
        self.mvcc.compact(rev)
    }
}

/// A range at the request's revision, as the request writing at `pending` (if any) sees it.
pub(crate) fn range(mvcc: &Mvcc, req: &RangeRequest, pending: Option<Revision>) -> Result<RangeResponse, EtcdError> {
    let rev = match pending {
        // Inside a transaction, a range reads the transaction's own writes (its revision is
        // the one the transaction started from; etcd refuses other revisions the same way).
        Some(main) if req.revision <= 0 => main,
        _ => mvcc.check_read(req.revision)?,
    };
    let range = KeyRange::new(&req.key, &req.range_end);
    // Any value but 0 sets a filter, negative ones included (as in etcd).
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    let mut order = req.sort_order;
    if order == SortOrder::None && req.sort_target != SortTarget::Key {
        order = SortOrder::Ascend;
    }
    let sorted = !(order == SortOrder::None || (order == SortOrder::Ascend && req.sort_target == SortTarget::Key));
    // etcd fetches everything only for an explicit order or a filter: a target without an
    // order sorts just the first `limit + 1` keys (its behaviour, kept for compatibility).
    let fetch_all = req.sort_order != SortOrder::None || filtered;
    let count = mvcc.count(&range, rev) as i64;
    if req.count_only {
        return Ok(RangeResponse { kvs: Vec::new(), more: false, count });
    }
    // One more than the limit tells whether there is more; sorting and filtering need all.
    let fetch = if req.limit > 0 && !fetch_all { req.limit as usize + 1 } else { 0 };
    let mut kvs = mvcc.range(&range, rev, fetch);
    if filtered {
        kvs.retain(|kv| {
            (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
        });
    }
    if sorted {
        // Stable, with the comparison reversed for a descending order: keys that tie stay in
        // ascending key order either way (what etcd does for up to 12 results; beyond, its
        // order of ties is undefined).
        let by = |a: &KeyValue, b: &KeyValue| match req.sort_target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        };
        if order == SortOrder::Descend {
            kvs.sort_by(|a, b| by(b, a));
        } else {
            kvs.sort_by(by);
        }
    }
    let mut more = false;
    if req.limit > 0 && kvs.len() > req.limit as usize {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok(RangeResponse { kvs, more, count })
}

#[cfg(test)]
mod tests;
