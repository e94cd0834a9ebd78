//! The etcd keyspace's multi-version store: every key's history of changes, one revision
//! counter, reads at any revision that is not compacted.
//!
//! # Design
//! A change is stamped with a revision `(main, sub)`: `main` is the keyspace's revision after
//! the write (one per write request, a transaction included), `sub` orders the changes inside
//! one request. Each key keeps its changes in revision order; a change holds the key's value,
//! version, creation revision and lease after it, or nothing if it deleted the key (a
//! tombstone). Reading at revision R takes, for each key, its last change with `main <= R`.
//! A second index, revision → key, lists every change in revision order, which is what a
//! watch replays.
//!
//! Compacting at R forgets, per key, every change older than the one in effect at R, and that
//! one too if it is a tombstone older than R: reads at R and later are unchanged, reads before
//! R are refused, and a watch from R still sees a deletion made at R.
//!
//! # Caveats
//! - Compaction runs inside the command that asks for it, proportional to the keys changed
//!   since the previous one (etcd compacts in the background, in batches).

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::{EtcdError, KeyValue, Revision};

/// The state of a key after a change (absent: deleted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Live {
    create_revision: Revision,
    version: i64,
    value: Vec<u8>,
    lease: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Change {
    main: Revision,
    sub: i64,
    after: Option<Live>,
}

/// A key range as map bounds.
type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// Which keys a request names: one key, or the half-open range `[key, end)` (etcd's
/// conventions: an empty end names the key alone; an end of `"\0"` means every key from `key`
/// on, and with a key of `"\0"` every key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    /// First key.
    pub key: Vec<u8>,
    /// End of the range (exclusive), `None` for the key alone or `Some(empty)` for "no end".
    pub end: Option<Vec<u8>>,
}

impl KeyRange {
    /// From a request's `key` and `range_end` fields.
    pub fn new(key: &[u8], range_end: &[u8]) -> Self {
        let end = match range_end {
            [] => None,
            [0] => Some(Vec::new()),
            e => Some(e.to_vec()),
        };
        KeyRange { key: key.to_vec(), end }
    }

    /// Whether `k` is in the range.
    pub fn contains(&self, k: &[u8]) -> bool {
        match &self.end {
            None => k == self.key.as_slice(),
            Some(e) if e.is_empty() => k >= self.key.as_slice(),
            Some(e) => k >= self.key.as_slice() && k < e.as_slice(),
        }
    }

    /// The range as map bounds; `None` if it names nothing (an end at or before the key:
    /// etcd answers no keys, and a map would refuse such bounds).
    fn bounds(&self) -> Option<KeyBounds<'_>> {
        let key = self.key.as_slice();
        match &self.end {
            None => Some((Bound::Included(key), Bound::Included(key))),
            Some(e) if e.is_empty() => Some((Bound::Included(key), Bound::Unbounded)),
            Some(e) if e.as_slice() <= key => None,
            Some(e) => Some((Bound::Included(key), Bound::Excluded(e.as_slice()))),
        }
    }
}

/// A change as a watch sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEvent {
    /// The key after the change; for a deletion, the key with `mod_revision` of the deletion
    /// and everything else zero (as etcd reports it).
    pub kv: KeyValue,
    /// True for a deletion.
    pub deleted: bool,
    /// The key before the change, if it existed.
    pub prev: Option<KeyValue>,
}

/// The multi-version store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mvcc {
    keys: BTreeMap<Vec<u8>, Vec<Change>>,
    /// Every change's key, by revision.
    by_revision: BTreeMap<(Revision, i64), Vec<u8>>,
    /// The revision of the last write (1 for an empty store, as in etcd).
    revision: Revision,
    /// The revision of the last compaction (-1: none, as in etcd, so that `Compact(0)` is
    /// accepted on a new store).
    compacted: Revision,
    /// What the kept history weighs ([`change_bytes`] summed over every change): what etcd
    /// reports as its database size and what the quota bounds. Not in snapshots (whose layout
    /// predates it): counted again when one is read ([`Mvcc::recount_bytes`]).
    #[serde(skip)]
    bytes: u64,
}

/// What one kept change of `key` weighs: its key and value, and a fixed allowance for its
/// revision, version, lease and the two index entries that point at it.
fn change_bytes(key: &[u8], change: &Change) -> u64 {
    const PER_CHANGE: u64 = 64;
    PER_CHANGE + key.len() as u64 + change.after.as_ref().map_or(0, |l| l.value.len() as u64)
}

impl Mvcc {
    /// Every key of `range` that has a history, with it, in key order.
    fn histories<'a>(&'a self, range: &'a KeyRange) -> impl Iterator<Item = (&'a Vec<u8>, &'a Vec<Change>)> + 'a {
        range.bounds().into_iter().flat_map(|b| self.keys.range::<[u8], _>(b))
    }

    /// An empty store at revision 1.
    pub fn new() -> Self {
        Mvcc { revision: 1, compacted: -1, ..Default::default() }
    }

    /// The revision of the last write.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// What the kept history weighs, in bytes: every kept change's key and value plus 64 bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// [`Mvcc::bytes`] counted again from scratch (tests compare the two).
    pub(crate) fn bytes_recounted(&self) -> u64 {
        self.keys.iter().flat_map(|(k, changes)| changes.iter().map(move |c| change_bytes(k, c))).sum()
    }

    /// Counts [`Mvcc::bytes`] again (after reading a snapshot, which does not carry it).
    pub(crate) fn recount_bytes(&mut self) {
        self.bytes = self.bytes_recounted();
    }

    /// The revision of the last compaction (-1: none).
    pub fn compacted(&self) -> Revision {
        self.compacted
    }

    /// Keys with a history (live or not yet compacted away).
    pub fn keys_kept(&self) -> usize {
        self.keys.len()
    }

    /// Checks that a read at `rev` (0: the current revision) is possible; returns the revision.
    pub fn check_read(&self, rev: Revision) -> Result<Revision, EtcdError> {
        if rev <= 0 {
            return Ok(self.revision);
        }
        if rev > self.revision {
            return Err(EtcdError::FutureRevision);
        }
        if rev < self.compacted {
            return Err(EtcdError::Compacted);
        }
        Ok(rev)
    }

    /// The live keys of `range` at revision `rev` (checked by [`Mvcc::check_read`]), in key
    /// order, at most `limit` of them if `limit > 0`.
    pub fn range(&self, range: &KeyRange, rev: Revision, limit: usize) -> Vec<KeyValue> {
        let mut out = Vec::new();
        for (key, changes) in self.histories(range) {
            if let Some(kv) = at(key, changes, rev) {
                out.push(kv);
                if limit > 0 && out.len() == limit {
                    break;
                }
            }
        }
        out
    }

    /// How many keys of `range` live at revision `rev`.
    pub fn count(&self, range: &KeyRange, rev: Revision) -> usize {
        self.histories(range).filter(|(k, c)| at(k, c, rev).is_some()).count()
    }

    /// The key now, if it lives.
    pub fn get(&self, key: &[u8]) -> Option<KeyValue> {
        self.keys.get(key).and_then(|c| at(key, c, self.revision))
    }

    /// Writes `value` (with `lease`, 0 for none) under `key` at revision `(main, sub)`; returns
    /// the key before. `main` is the revision the current request will end at
    /// (`revision() + 1`); the caller moves the store there with [`Mvcc::commit`].
    pub fn put(&mut self, key: &[u8], value: Vec<u8>, lease: i64, main: Revision, sub: i64) -> Option<KeyValue> {
        let prev = self.get_at(key, main);
        let (create_revision, version) = match &prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => (main, 1),
        };
        let change = Change { main, sub, after: Some(Live { create_revision, version, value, lease }) };
        self.bytes += change_bytes(key, &change);
        self.keys.entry(key.to_vec()).or_default().push(change);
        self.by_revision.insert((main, sub), key.to_vec());
        prev
    }

    /// Deletes `key` at `(main, sub)` if it lives; returns it as it was.
    pub fn delete(&mut self, key: &[u8], main: Revision, sub: i64) -> Option<KeyValue> {
        let prev = self.get_at(key, main)?;
        let change = Change { main, sub, after: None };
        self.bytes += change_bytes(key, &change);
        self.keys.entry(key.to_vec()).or_default().push(change);
        self.by_revision.insert((main, sub), key.to_vec());
        Some(prev)
    }

    /// The live keys of `range` as the request writing at `main` sees them (its own earlier
    /// changes included).
    pub fn live_keys(&self, range: &KeyRange, main: Revision) -> Vec<Vec<u8>> {
        self.histories(range).filter(|(k, c)| at(k, c, main).is_some()).map(|(k, _)| k.clone()).collect()
    }

    /// The request that wrote at `main` is complete: the store is at `main` now.
    pub fn commit(&mut self, main: Revision) {
        debug_assert_eq!(main, self.revision + 1);
        self.revision = main;
    }

    /// The key as the request writing at `main` sees it.
    pub(crate) fn get_at(&self, key: &[u8], main: Revision) -> Option<KeyValue> {
        self.keys.get(key).and_then(|c| at(key, c, main))
    }

    /// Undoes every change stamped `main` (a request that could not complete: nothing of it
    /// may stay).
    pub fn rollback(&mut self, main: Revision) {
        let stamped: Vec<((Revision, i64), Vec<u8>)> =
            self.by_revision.range((main, i64::MIN)..=(main, i64::MAX)).map(|(r, k)| (*r, k.clone())).collect();
        for (rev, key) in stamped.into_iter().rev() {
            self.by_revision.remove(&rev);
            if let Some(changes) = self.keys.get_mut(&key) {
                if let Some(c) = changes.pop_if(|c| (c.main, c.sub) == rev) {
                    self.bytes -= change_bytes(&key, &c);
                }
                if changes.is_empty() {
                    self.keys.remove(&key);
                }
            }
        }
    }

    /// Forgets what no read at `rev` or later needs. Checked: `rev` must be after the last
    /// compaction and not after the current revision.
    pub fn compact(&mut self, rev: Revision) -> Result<(), EtcdError> {
        if rev <= self.compacted {
            return Err(EtcdError::Compacted);
        }
        if rev > self.revision {
            return Err(EtcdError::FutureRevision);
        }
        // Only keys changed at or before `rev` since the last compaction can lose anything.
        let touched: Vec<Vec<u8>> =
            self.by_revision.range((self.compacted, i64::MIN)..=(rev, i64::MAX)).map(|(_, k)| k.clone()).collect();
        let mut done = std::collections::BTreeSet::new();
        for key in touched {
            if !done.insert(key.clone()) {
                continue;
            }
            let Some(changes) = self.keys.get_mut(&key) else { continue };
            // The change in effect at `rev` is kept if it is a value, or a tombstone made at
            // `rev` itself (a watch from `rev` replays that deletion, as etcd's does); an older
            // tombstone goes with everything before it.
            let in_effect = changes.partition_point(|c| c.main <= rev);
            let mut drop = in_effect.saturating_sub(1);
            if in_effect > 0 && changes[in_effect - 1].after.is_none() && changes[in_effect - 1].main < rev {
                drop = in_effect;
            }
            for c in changes.drain(..drop) {
                self.by_revision.remove(&(c.main, c.sub));
                self.bytes -= change_bytes(&key, &c);
            }
            if changes.is_empty() {
                self.keys.remove(&key);
            }
        }
        self.compacted = rev;
        Ok(())
    }

    /// Every change from revision `from` on (not compacted: the caller checks), in revision
    /// order, at most `max` of them, with the key before each change.
    pub fn changes_since(&self, from: Revision, max: usize) -> Vec<(Revision, KeyEvent)> {
        self.changes_between(from, Revision::MAX, max)
    }

    /// Every change of revision `main` (not compacted: the caller checks).
    pub fn changes_at(&self, main: Revision) -> Vec<(Revision, KeyEvent)> {
        self.changes_between(main, main, usize::MAX)
    }

    fn changes_between(&self, from: Revision, to: Revision, max: usize) -> Vec<(Revision, KeyEvent)> {
        let mut out = Vec::new();
        for (&(main, sub), key) in self.by_revision.range((from, i64::MIN)..=(to, i64::MAX)) {
            if out.len() == max {
                break;
            }
            let changes = &self.keys[key];
            let i = changes.partition_point(|c| (c.main, c.sub) < (main, sub));
            let prev = changes[..i].last().and_then(|c| c.after.as_ref().map(|l| to_kv(key, c.main, l)));
            let c = &changes[i];
            let change = match &c.after {
                Some(l) => KeyEvent { kv: to_kv(key, main, l), deleted: false, prev },
                None => KeyEvent {
                    kv: KeyValue { key: key.clone(), mod_revision: main, ..Default::default() },
                    deleted: true,
                    prev,
                },
            };
            out.push((main, change));
        }
        out
    }
}

/// The key's value at `rev` from its changes.
fn at(key: &[u8], changes: &[Change], rev: Revision) -> Option<KeyValue> {
    let i = changes.partition_point(|c| c.main <= rev);
    let c = changes[..i].last()?;
    c.after.as_ref().map(|l| to_kv(key, c.main, l))
}

fn to_kv(key: &[u8], mod_revision: Revision, l: &Live) -> KeyValue {
    KeyValue {
        key: key.to_vec(),
        create_revision: l.create_revision,
        mod_revision,
        version: l.version,
        value: l.value.clone(),
        lease: l.lease,
    }
}
