//! Durable storage of a node's CRDT states.
//!
//! Each write is the whole state of every object a round changed (one round's many updates of
//! one object cost one record), in one batch made durable with one fsync before the round's
//! answers and messages leave. [`EngineCrdtStore`] keeps them in a raft-engine log of its own
//! (`<data>/crdt`), as key-value records of one region that the engine rewrites when it purges
//! old files; [`MemCrdtStore`] keeps them in memory for tests and the simulator.
//!
//! An object handed to its owners and dropped leaves a marker with the node's last dot of it
//! ([`Stored::Dropped`], in a region of its own) if the node ever updated it.

use std::collections::BTreeMap;
use std::path::Path;

use baton_core::crdt::{Key, Object};
use raft_engine::{Engine, LogBatch};

use super::gossip::decode_state;
use crate::disk::{open_engine, DiskError, StoreRecovery};

/// The raft-engine region holding the states.
const REGION: u64 = 1;
/// The region holding the markers of dropped objects (apart: an object held again keeps its
/// marker until it has every dot the marker names).
const MARKS: u64 = 2;
/// Purge old log files after this many writes.
const PURGE_EVERY: u64 = 256;

/// Where a replica's states go.
pub trait CrdtStore {
    /// Every stored record.
    fn load(&self) -> Result<Vec<(Key, Stored)>, DiskError>;
    /// Writes records durably (fsync) before returning: encoded states, or nothing (deletes the
    /// key's state), or markers ([`dropped_marker`]; of 0: deletes the key's marker).
    fn write(&mut self, states: &[(Key, Vec<u8>)]) -> Result<(), DiskError>;
}

/// A stored record (a key can have both: a marker, and a state that does not yet have every
/// dot the marker names).
#[derive(Clone, Debug, PartialEq)]
pub enum Stored {
    /// An object's state.
    State(Object),
    /// The object was handed off and dropped; this node's last dot of it.
    Dropped(u64),
}

/// The bytes a marker starts with (no encoded state can: a state starts with its context's
/// length, and these bytes read as a length far beyond the record).
const DROPPED_MAGIC: &[u8; 8] = b"\xffDROPPED";

/// The record of an object dropped here after its hand-off, this node's last dot of it being
/// `top` (0: the marker's deletion).
pub fn dropped_marker(top: u64) -> Vec<u8> {
    let mut v = DROPPED_MAGIC.to_vec();
    v.extend_from_slice(&top.to_le_bytes());
    v
}

fn key_bytes(key: &Key) -> Vec<u8> {
    bincode::serialize(key).expect("key encodes")
}

/// The marker's `top` if `bytes` is one.
fn marker_of(bytes: &[u8]) -> Option<u64> {
    (bytes.len() == 16 && bytes.starts_with(DROPPED_MAGIC))
        .then(|| u64::from_le_bytes(bytes[8..].try_into().expect("8")))
}

fn decode_record(k: &[u8], v: &[u8]) -> Result<(Key, Stored), DiskError> {
    let key: Key = bincode::deserialize(k).map_err(|e| DiskError::Corrupt(format!("CRDT key: {e}")))?;
    if let Some(top) = marker_of(v) {
        return Ok((key, Stored::Dropped(top)));
    }
    let obj = decode_state(v).map_err(DiskError::Corrupt)?;
    if obj.kind() != key.kind {
        return Err(DiskError::Corrupt(format!("CRDT state of {:?} has the kind {}", key, obj.kind().label())));
    }
    Ok((key, Stored::State(obj)))
}

/// The real store (see the module docs).
pub struct EngineCrdtStore {
    engine: Engine,
    writes: u64,
    recovery: StoreRecovery,
}

impl EngineCrdtStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, DiskError> {
        let (engine, recovery) = open_engine(dir)?;
        Ok(EngineCrdtStore { engine, writes: 0, recovery })
    }

    /// What opening found at the end of the log (a torn tail dropped, or nothing).
    pub fn recovery(&self) -> &StoreRecovery {
        &self.recovery
    }
}

impl CrdtStore for EngineCrdtStore {
    fn load(&self) -> Result<Vec<(Key, Stored)>, DiskError> {
        let mut out = Vec::new();
        let mut failed = None;
        for region in [REGION, MARKS] {
            self.engine.scan_raw_messages(region, None, None, false, |k, v| match decode_record(k, v) {
                Ok(rec) => {
                    out.push(rec);
                    true
                }
                Err(e) => {
                    failed = Some(e);
                    false
                }
            })?;
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    fn write(&mut self, states: &[(Key, Vec<u8>)]) -> Result<(), DiskError> {
        if states.is_empty() {
            return Ok(());
        }
        let mut batch = LogBatch::default();
        for (key, bytes) in states {
            match (marker_of(bytes), bytes.is_empty()) {
                (Some(0), _) => batch.delete(MARKS, key_bytes(key)),
                (Some(_), _) => batch.put(MARKS, key_bytes(key), bytes.clone())?,
                (None, true) => batch.delete(REGION, key_bytes(key)),
                (None, false) => batch.put(REGION, key_bytes(key), bytes.clone())?,
            }
        }
        self.engine.write(&mut batch, true)?;
        self.writes += 1;
        if self.writes.is_multiple_of(PURGE_EVERY) {
            self.engine.purge_expired_files()?;
        }
        Ok(())
    }
}

/// An in-memory store: what was written survives a simulated crash of the replica (it is the
/// "disk"), nothing else.
#[derive(Clone, Debug, Default)]
pub struct MemCrdtStore {
    states: BTreeMap<Key, Vec<u8>>,
    marks: BTreeMap<Key, Vec<u8>>,
}

impl CrdtStore for MemCrdtStore {
    fn load(&self) -> Result<Vec<(Key, Stored)>, DiskError> {
        self.states.iter().chain(&self.marks).map(|(k, v)| decode_record(&key_bytes(k), v)).collect()
    }

    fn write(&mut self, states: &[(Key, Vec<u8>)]) -> Result<(), DiskError> {
        for (k, v) in states {
            match (marker_of(v), v.is_empty()) {
                (Some(0), _) => self.marks.remove(k),
                (Some(_), _) => self.marks.insert(k.clone(), v.clone()),
                (None, true) => self.states.remove(k),
                (None, false) => self.states.insert(k.clone(), v.clone()),
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::crdt::{Kind, Op};
    use baton_core::Hlc;

    #[test]
    fn states_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::new(Kind::PnCounter, "hits").unwrap();
        let mut obj = Kind::PnCounter.empty();
        obj.update("hits", 1, Op::Add(7), Hlc::default()).unwrap();
        {
            let mut store = EngineCrdtStore::open(dir.path()).unwrap();
            store.write(&[(key.clone(), super::super::gossip::encode_state(&obj))]).unwrap();
            obj.update("hits", 1, Op::Add(1), Hlc::default()).unwrap();
            store.write(&[(key.clone(), super::super::gossip::encode_state(&obj))]).unwrap();
        }
        let store = EngineCrdtStore::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap(), vec![(key.clone(), Stored::State(obj.clone()))]);
        // A hand-off: the state deleted, a marker kept, both across reopening; a marker and a
        // state of one key live side by side; a marker of 0 deletes the marker.
        {
            let mut store = store;
            store.write(&[(key.clone(), Vec::new()), (key.clone(), dropped_marker(9))]).unwrap();
        }
        let store = EngineCrdtStore::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap(), vec![(key.clone(), Stored::Dropped(9))]);
        drop(store);
        let mut store = EngineCrdtStore::open(dir.path()).unwrap();
        store.write(&[(key.clone(), super::super::gossip::encode_state(&obj))]).unwrap();
        assert_eq!(
            store.load().unwrap(),
            vec![(key.clone(), Stored::State(obj.clone())), (key.clone(), Stored::Dropped(9))]
        );
        store.write(&[(key.clone(), dropped_marker(0))]).unwrap();
        assert_eq!(store.load().unwrap(), vec![(key, Stored::State(obj))]);
    }
}
