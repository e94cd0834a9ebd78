//! An in-memory [`LogStore`] for tests and the simulator: what it holds is what a real disk
//! would hold after the last fsync, so dropping a node and recovering from its `MemStore`
//! is a crash that loses nothing acknowledged.

use std::collections::BTreeMap;

use raft::eraftpb::{Entry, HardState, Snapshot};

use crate::disk::{DiskError, LogStore, Recovered, WriteBatch};
use crate::GroupId;

#[derive(Clone, Debug, Default)]
struct GroupData {
    hard_state: HardState,
    snapshot: Snapshot,
    entries: BTreeMap<u64, Entry>,
}

/// Durable state kept in memory.
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    groups: BTreeMap<GroupId, GroupData>,
    /// Number of `write` calls (each stands for one fsync).
    pub syncs: u64,
    /// Starts counted by [`LogStore::next_incarnation`] (durable like everything here).
    incarnation: u64,
}

impl MemStore {
    /// The index of the group's stored snapshot (0: none).
    pub fn snapshot_index(&self, group: GroupId) -> u64 {
        self.groups.get(&group).map_or(0, |d| d.snapshot.get_metadata().index)
    }

    /// The index of the group's last stored entry (or of its snapshot, if the log is empty).
    pub fn last_index(&self, group: GroupId) -> u64 {
        let d = self.groups.get(&group);
        d.and_then(|d| d.entries.keys().next_back().copied()).unwrap_or_else(|| self.snapshot_index(group))
    }
}

impl LogStore for MemStore {
    fn write(&mut self, batch: &WriteBatch) -> Result<(), DiskError> {
        for g in &batch.groups {
            let data = self.groups.entry(g.group).or_default();
            if let Some(snap) = &g.snapshot {
                let index = snap.get_metadata().index;
                if g.replace_log {
                    data.entries.clear();
                } else {
                    data.entries = data.entries.split_off(&(index + 1));
                }
                data.snapshot = snap.clone();
            }
            if let Some(first) = g.entries.first() {
                data.entries.split_off(&first.index);
                data.entries.extend(g.entries.iter().map(|e| (e.index, e.clone())));
            }
            if let Some(hs) = &g.hard_state {
                data.hard_state = hs.clone();
            }
        }
        self.syncs += 1;
        Ok(())
    }

    fn next_incarnation(&mut self) -> Result<u64, DiskError> {
        self.incarnation += 1;
        self.syncs += 1;
        Ok(self.incarnation)
    }

    fn groups(&self) -> Result<Vec<GroupId>, DiskError> {
        Ok(self.groups.keys().copied().collect())
    }

    fn recover(&self, group: GroupId) -> Result<Option<Recovered>, DiskError> {
        Ok(self.groups.get(&group).map(|d| Recovered {
            hard_state: d.hard_state.clone(),
            snapshot: d.snapshot.clone(),
            entries: d.entries.values().cloned().collect(),
        }))
    }
}
