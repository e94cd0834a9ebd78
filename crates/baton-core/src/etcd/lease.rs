//! etcd leases: a TTL that keys can be attached to; when the lease ends, its keys go.
//!
//! A lease is carried by a Baton session of the same TTL in the etcd keyspace's group: the
//! session machinery renews it (a lease keepalive is a session keepalive, served by the leader
//! without a log entry) and ends it (the leader proposes the expiry of a session nobody
//! renewed). This module keeps what etcd's API shows: each lease's granted TTL, its session and
//! its keys. Revoking a lease, by request or because its session ended, deletes its keys in one
//! revision, in key order.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{EtcdError, EtcdStore, KeyValue};

/// Shortest lease, in seconds: a shorter TTL is raised to it (etcd: 1.5 election timeouts,
/// rounded up, 2 s with the default timing).
pub const MIN_LEASE_TTL_S: i64 = 2;
/// Longest lease, in seconds (etcd's limit).
pub const MAX_LEASE_TTL_S: i64 = 9_000_000_000;

/// One lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The TTL granted (after raising it to the minimum), in seconds.
    pub ttl_s: i64,
    /// The session that carries it.
    pub session: u64,
    /// The keys attached to it.
    pub keys: BTreeSet<Vec<u8>>,
}

/// The leases of the keyspace, by id, and which lease each session carries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leases {
    by_id: BTreeMap<i64, LeaseRecord>,
    by_session: BTreeMap<u64, i64>,
}

impl Leases {
    /// The lease `id`, if it exists.
    pub fn get(&self, id: i64) -> Option<&LeaseRecord> {
        self.by_id.get(&id)
    }

    /// Every lease, by id.
    pub fn iter(&self) -> impl Iterator<Item = (i64, &LeaseRecord)> {
        self.by_id.iter().map(|(id, l)| (*id, l))
    }

    /// The lease carried by `session`.
    pub fn of_session(&self, session: u64) -> Option<i64> {
        self.by_session.get(&session).copied()
    }

    /// How many leases exist.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Moves `key` from lease `from` to lease `to` (0: none).
    pub(super) fn reattach(&mut self, key: &[u8], from: i64, to: i64) {
        if from == to {
            return;
        }
        if let Some(l) = self.by_id.get_mut(&from) {
            l.keys.remove(key);
        }
        if let Some(l) = self.by_id.get_mut(&to) {
            l.keys.insert(key.to_vec());
        }
    }
}

/// A grant's TTL: raised to the minimum, refused above the maximum.
pub fn granted_ttl(ttl_s: i64) -> Result<i64, EtcdError> {
    if ttl_s > MAX_LEASE_TTL_S {
        return Err(EtcdError::LeaseTtlTooLarge);
    }
    Ok(ttl_s.max(MIN_LEASE_TTL_S))
}

impl EtcdStore {
    /// The leases.
    pub fn leases(&self) -> &Leases {
        &self.leases
    }

    /// Creates lease `id` (non-zero; the caller picks one for a grant without an id) with a TTL
    /// from [`granted_ttl`], carried by `session`.
    pub fn lease_grant(&mut self, id: i64, ttl_s: i64, session: u64) -> Result<(), EtcdError> {
        let ttl_s = granted_ttl(ttl_s)?;
        if id == 0 || self.leases.by_id.contains_key(&id) {
            return Err(EtcdError::LeaseExists);
        }
        self.leases.by_id.insert(id, LeaseRecord { ttl_s, session, keys: BTreeSet::new() });
        self.leases.by_session.insert(session, id);
        Ok(())
    }

    /// Ends lease `id` and deletes its keys, in one revision if it has any; returns them as
    /// they were.
    pub fn lease_revoke(&mut self, id: i64) -> Result<Vec<KeyValue>, EtcdError> {
        let lease = self.leases.by_id.remove(&id).ok_or(EtcdError::LeaseNotFound)?;
        self.leases.by_session.remove(&lease.session);
        let main = self.mvcc.revision() + 1;
        let mut deleted = Vec::new();
        for key in &lease.keys {
            if let Some(kv) = self.mvcc.delete(key, main, deleted.len() as i64) {
                deleted.push(kv);
            }
        }
        if !deleted.is_empty() {
            self.mvcc.commit(main);
        }
        Ok(deleted)
    }
}
