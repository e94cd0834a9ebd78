//! The in-memory view of one group's Raft log that raft-rs reads from.
//!
//! raft-rs asks its [`raft::Storage`] for entries, terms and snapshots synchronously. This type
//! answers from memory: the unapplied tail plus a bounded applied tail of the log, the hard
//! state, and the latest snapshot — with its data while a follower may need it (raft-rs's own
//! `MemStorage` keeps none, so it cannot send a real snapshot to a lagging follower). Once no
//! follower needs it the group drops the data ([`GroupStorage::drop_snapshot_data`]): asked for
//! it later, the storage answers "temporarily unavailable" and the group takes a fresh snapshot
//! at its next round, as for a new member. (Twelve groups' snapshots of a 1M-lock state were
//! 180 MiB of a node's memory for nothing.) Durability is not its job: every change
//! made here is also part of the [`crate::WriteBatch`] the runtime fsyncs before the node is told
//! it is persisted.

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

/// One group's log, hard state and latest snapshot, in memory.
#[derive(Default)]
pub struct GroupStorage {
    hard_state: HardState,
    conf_state: ConfState,
    /// Entries after the snapshot, contiguous.
    entries: Vec<Entry>,
    /// The latest snapshot (metadata says which index it covers).
    snapshot: Snapshot,
    /// The snapshot's data was dropped (see the module docs).
    data_dropped: bool,
    /// raft-rs asked for a snapshot that the latest one cannot serve: one for a new member that
    /// it does not list, or one whose data was dropped.
    snapshot_wanted: std::cell::Cell<bool>,
}

impl GroupStorage {
    /// A fresh group whose initial voters are `voters` and whose state machine starts as
    /// `state` (a serialised state machine, kept as the initial snapshot's data so that a restart
    /// before the first real snapshot starts from it too). Every member must start the same way.
    pub fn bootstrap(voters: &[u64], state: Vec<u8>) -> Self {
        let conf_state = ConfState { voters: voters.to_vec(), ..Default::default() };
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().set_conf_state(conf_state.clone());
        snapshot.data = state.into();
        GroupStorage { conf_state, snapshot, ..Default::default() }
    }

    /// A group recovered from disk.
    ///
    /// The stored commit index may lag behind the snapshot: a crash can fall between writing a
    /// snapshot file and the log batch that records the commit. A snapshot holds only applied,
    /// hence committed, entries, so the commit index starts at least at the snapshot's (raft-rs
    /// refuses to start with a commit below its first index).
    pub fn recover(mut hard_state: HardState, snapshot: Snapshot, entries: Vec<Entry>) -> Self {
        let meta = snapshot.get_metadata();
        hard_state.commit = hard_state.commit.max(meta.index);
        hard_state.term = hard_state.term.max(meta.term);
        let conf_state = snapshot.get_metadata().get_conf_state().clone();
        let first = snapshot.get_metadata().index + 1;
        let entries: Vec<Entry> = entries.into_iter().filter(|e| e.index >= first).collect();
        debug_assert!(entries.windows(2).all(|w| w[1].index == w[0].index + 1));
        GroupStorage { hard_state, conf_state, entries, snapshot, ..Default::default() }
    }

    /// The current hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// Replaces the hard state.
    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    /// Moves the commit index forward.
    pub fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = commit;
    }

    /// The latest snapshot.
    pub fn snapshot_ref(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The voters of the group.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// A membership change applied: later snapshots carry it.
    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }

    /// True (once) if a newer snapshot was asked for (see `snapshot`).
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.replace(false)
    }

    fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    fn first(&self) -> u64 {
        self.snapshot_index() + 1
    }

    fn last(&self) -> u64 {
        self.entries.last().map_or(self.snapshot_index(), |e| e.index)
    }

    /// Appends entries, truncating any conflicting suffix first.
    pub fn append(&mut self, ents: &[Entry]) {
        let Some(first_new) = ents.first() else { return };
        assert!(first_new.index >= self.first(), "append of compacted index {}", first_new.index);
        assert!(first_new.index <= self.last() + 1, "gap in log: last {} then {}", self.last(), first_new.index);
        let keep = (first_new.index - self.first()) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(ents);
    }

    /// Installs a snapshot received from the leader: the log restarts after it.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) {
        let meta: &SnapshotMetadata = snapshot.get_metadata();
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.conf_state = meta.get_conf_state().clone();
        self.entries.clear();
        self.snapshot = snapshot;
        self.data_dropped = false;
    }

    /// True while the latest snapshot's data is in memory.
    pub fn has_snapshot_data(&self) -> bool {
        !self.data_dropped
    }

    /// Frees the latest snapshot's data (no follower needs it; it is on disk for restarts).
    pub fn drop_snapshot_data(&mut self) {
        self.snapshot.data = Default::default();
        self.data_dropped = true;
    }

    /// Records a snapshot of our own state at `index` (an applied index) and drops the log up
    /// to it. A follower that is further behind than the snapshot is sent the snapshot.
    pub fn set_snapshot(&mut self, data: Vec<u8>, index: u64) -> Snapshot {
        let term = raft::Storage::term(self, index).expect("snapshot index is in the log");
        let mut snapshot = Snapshot { data: data.into(), ..Default::default() };
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.conf_state.clone());
        let drop = (index + 1).saturating_sub(self.first()) as usize;
        self.entries.drain(..drop.min(self.entries.len()));
        self.snapshot = snapshot.clone();
        self.data_dropped = false;
        snapshot
    }

    /// Number of entries held in memory.
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }
}

impl raft::Storage for GroupStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState { hard_state: self.hard_state.clone(), conf_state: self.conf_state.clone() })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _ctx: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let offset = self.first();
        let slice = &self.entries[(low - offset) as usize..(high - offset) as usize];
        let max = max_size.into().unwrap_or(u64::MAX);
        let mut size = 0u64;
        let mut out = Vec::with_capacity(slice.len());
        for e in slice {
            size += protobuf::Message::compute_size(e) as u64;
            // Always return at least one entry, as raft-rs expects.
            if !out.is_empty() && size > max {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snapshot_index() {
            return Ok(self.snapshot.get_metadata().term);
        }
        if idx < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.entries[(idx - self.first()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, _request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // A snapshot taken before `to` joined does not list it, and raft-rs on `to` refuses a
        // snapshot that does not: ask for a newer one (the group takes it at its next round)
        // and let raft-rs try again.
        // Likewise if its data was dropped.
        let cs = self.snapshot.get_metadata().get_conf_state();
        if self.data_dropped || (!cs.voters.contains(&to) && !cs.learners.contains(&to)) {
            self.snapshot_wanted.set(true);
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        Ok(self.snapshot.clone())
    }
}
