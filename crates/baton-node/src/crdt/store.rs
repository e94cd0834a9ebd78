//! Durable storage of a node's CRDT states.
//!
//! Each write is the whole state of every object a round changed (one round's many updates of
//! one object cost one record), in one batch made durable with one fsync before the round's
//! answers and messages leave. [`EngineCrdtStore`] keeps them in a raft-engine log of its own
//! (`<data>/crdt`), as key-value records of one region that the engine rewrites when it purges
//! old files; [`MemCrdtStore`] keeps them in memory for tests and the simulator.
//!
//! An object handed to its owners and dropped leaves a marker with the node's last dot of it
//! ([`Stored::Dropped`]), or nothing if the node never updated it (an empty record deletes).

use std::collections::BTreeMap;
use std::path::Path;

use baton_core::crdt::{Key, Object};
use raft_engine::{Engine, LogBatch};

use super::gossip::decode_state;
use crate::disk::{open_engine, DiskError, StoreRecovery};

/// The raft-engine region holding the states.
const REGION: u64 = 1;
/// Purge old log files after this many writes.
const PURGE_EVERY: u64 = 256;

/// Where a replica's states go.
pub trait CrdtStore {
    /// Every stored record.
    fn load(&self) -> Result<Vec<(Key, Stored)>, DiskError>;
    /// Writes records durably (fsync) before returning: encoded states, markers
    /// ([`dropped_marker`]), or nothing (deletes the key's record).
    fn write(&mut self, states: &[(Key, Vec<u8>)]) -> Result<(), DiskError>;
}

/// A stored record.
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
/// `top` (empty, a deletion, if 0).
pub fn dropped_marker(top: u64) -> Vec<u8> {
    if top == 0 {
        return Vec::new();
    }
    let mut v = DROPPED_MAGIC.to_vec();
    v.extend_from_slice(&top.to_le_bytes());
    v
}

fn key_bytes(key: &Key) -> Vec<u8> {
    bincode::serialize(key).expect("key encodes")
}

fn decode_record(k: &[u8], v: &[u8]) -> Result<(Key, Stored), DiskError> {
    let key: Key = bincode::deserialize(k).map_err(|e| DiskError::Corrupt(format!("CRDT key: {e}")))?;
    if v.len() == 16 && v.starts_with(DROPPED_MAGIC) {
        let top = u64::from_le_bytes(v[8..].try_into().expect("8 bytes"));
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
        self.engine.scan_raw_messages(REGION, None, None, false, |k, v| match decode_record(k, v) {
            Ok(rec) => {
                out.push(rec);
                true
            }
            Err(e) => {
                failed = Some(e);
                false
            }
        })?;
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
            if bytes.is_empty() {
                batch.delete(REGION, key_bytes(key));
            } else {
                batch.put(REGION, key_bytes(key), bytes.clone())?;
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
}

impl CrdtStore for MemCrdtStore {
    fn load(&self) -> Result<Vec<(Key, Stored)>, DiskError> {
        self.states.iter().map(|(k, v)| decode_record(&key_bytes(k), v)).collect()
    }

    fn write(&mut self, states: &[(Key, Vec<u8>)]) -> Result<(), DiskError> {
        for (k, v) in states {
            if v.is_empty() {
                self.states.remove(k);
            } else {
                self.states.insert(k.clone(), v.clone());
            }
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
        assert_eq!(store.load().unwrap(), vec![(key.clone(), Stored::State(obj))]);
        // A hand-off's marker, then a deletion, survive reopening too.
        let other = Key::new(Kind::OrSet, "gone").unwrap();
        {
            let mut store = store;
            store.write(&[(key.clone(), dropped_marker(9)), (other.clone(), dropped_marker(0))]).unwrap();
        }
        let store = EngineCrdtStore::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap(), vec![(key.clone(), Stored::Dropped(9))]);
        drop(store);
        let mut store = EngineCrdtStore::open(dir.path()).unwrap();
        store.write(&[(key, Vec::new())]).unwrap();
        assert_eq!(store.load().unwrap(), vec![]);
    }
}
