//! Durable storage of every group's Raft log, hard state and snapshot.
//!
//! The node never touches the disk: it hands the runtime a [`WriteBatch`] covering all groups,
//! and the runtime writes it through a [`LogStore`] with one fsync and then tells the node it is
//! persisted. [`EngineStore`] is the real store: TiKV's `raft-engine`, which keeps the logs of
//! many Raft groups in one write-ahead log (keyed by group id), plus one snapshot file per group
//! written atomically (temp file, fsync, rename, fsync of the folder) before the log is cut.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState, Snapshot};
use raft_engine::{Config, Engine, LogBatch, MessageExt};

use crate::GroupId;

/// What one group needs written.
#[derive(Debug, Default)]
pub struct GroupWrite {
    /// The group.
    pub group: GroupId,
    /// A snapshot to persist; the group's log restarts after it (entries up to it are gone).
    pub snapshot: Option<Snapshot>,
    /// True if `snapshot` came from the leader: every entry we had is discarded, not just the
    /// ones it covers, because entries after it may conflict with the leader's log.
    pub replace_log: bool,
    /// Entries to append (truncating any conflicting suffix).
    pub entries: Vec<Entry>,
    /// A new hard state.
    pub hard_state: Option<HardState>,
}

/// Everything to make durable in one fsync.
#[derive(Debug, Default)]
pub struct WriteBatch {
    /// Per-group writes.
    pub groups: Vec<GroupWrite>,
}

impl WriteBatch {
    /// True if there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

/// A group's durable state, read back at start.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Hard state (term, vote, commit).
    pub hard_state: HardState,
    /// The latest snapshot, or an empty one.
    pub snapshot: Snapshot,
    /// Log entries after the snapshot.
    pub entries: Vec<Entry>,
}

/// Errors of the durable store. Any of them means the node must stop: continuing after a failed
/// write could acknowledge something that is not on disk.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The log engine failed.
    #[error("raft log engine: {0}")]
    Engine(#[from] raft_engine::Error),
    /// A snapshot file could not be written or read.
    #[error("snapshot file {path}: {source}")]
    Snapshot { path: PathBuf, source: std::io::Error },
    /// A stored record could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

/// Where the node's writes go. The simulator has its own implementation.
pub trait LogStore {
    /// Writes the batch durably (fsync) before returning.
    fn write(&mut self, batch: &WriteBatch) -> Result<(), DiskError>;
    /// Reads back one group, or `None` if the group was never written.
    fn recover(&self, group: GroupId) -> Result<Option<Recovered>, DiskError>;
}

struct EntryExt;

impl MessageExt for EntryExt {
    type Entry = Entry;
    fn index(e: &Entry) -> u64 {
        e.index
    }
}

const HARD_STATE_KEY: &[u8] = b"hs";

/// The real store: raft-engine for logs and hard states, files for snapshots.
pub struct EngineStore {
    engine: Engine,
    snap_dir: PathBuf,
    writes_since_purge: u64,
}

impl EngineStore {
    /// Opens (or creates) the store under `dir`.
    pub fn open(dir: &Path) -> Result<Self, DiskError> {
        let snap_dir = dir.join("snap");
        fs::create_dir_all(&snap_dir).map_err(|source| DiskError::Snapshot { path: snap_dir.clone(), source })?;
        let cfg = Config { dir: dir.join("log").to_string_lossy().into_owned(), ..Default::default() };
        let engine = Engine::open(cfg)?;
        Ok(EngineStore { engine, snap_dir, writes_since_purge: 0 })
    }

    fn snap_path(&self, group: GroupId) -> PathBuf {
        self.snap_dir.join(format!("group-{group}.snap"))
    }

    fn write_snapshot(&self, group: GroupId, snap: &Snapshot) -> Result<(), DiskError> {
        let path = self.snap_path(group);
        let tmp = path.with_extension("tmp");
        let io = |source| DiskError::Snapshot { path: path.clone(), source };
        let bytes = snap.write_to_bytes().map_err(|e| DiskError::Corrupt(e.to_string()))?;
        let mut f = fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, &path).map_err(io)?;
        fs::File::open(&self.snap_dir).and_then(|d| d.sync_all()).map_err(io)?;
        Ok(())
    }
}

impl LogStore for EngineStore {
    fn write(&mut self, batch: &WriteBatch) -> Result<(), DiskError> {
        let mut log = LogBatch::default();
        let mut compactions = Vec::new();
        for g in &batch.groups {
            if let Some(snap) = &g.snapshot {
                // The snapshot file must be durable before the log it replaces is cut.
                self.write_snapshot(g.group, snap)?;
                let index = snap.get_metadata().index;
                if g.replace_log {
                    log.add_command(g.group, raft_engine::Command::Clean);
                } else {
                    compactions.push((g.group, index + 1));
                }
            }
            if !g.entries.is_empty() {
                log.add_entries::<EntryExt>(g.group, &g.entries)?;
            }
            if let Some(hs) = &g.hard_state {
                log.put_message(g.group, HARD_STATE_KEY.to_vec(), hs)?;
            } else if g.replace_log {
                return Err(DiskError::Corrupt("a replaced log needs its hard state in the same batch".into()));
            }
        }
        if !log.is_empty() {
            self.engine.write(&mut log, true)?;
        }
        for (group, index) in compactions {
            self.engine.compact_to(group, index);
            self.writes_since_purge += 1;
        }
        if self.writes_since_purge >= 16 {
            self.engine.purge_expired_files()?;
            self.writes_since_purge = 0;
        }
        Ok(())
    }

    fn recover(&self, group: GroupId) -> Result<Option<Recovered>, DiskError> {
        let Some(hard_state) = self.engine.get_message::<HardState>(group, HARD_STATE_KEY)? else {
            return Ok(None);
        };
        let path = self.snap_path(group);
        let snapshot = match fs::read(&path) {
            Ok(bytes) => Snapshot::parse_from_bytes(&bytes)
                .map_err(|e| DiskError::Corrupt(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Snapshot::default(),
            Err(source) => return Err(DiskError::Snapshot { path, source }),
        };
        let mut entries = Vec::new();
        if let (Some(first), Some(last)) = (self.engine.first_index(group), self.engine.last_index(group)) {
            let first = first.max(snapshot.get_metadata().index + 1);
            if first <= last {
                self.engine.fetch_entries_to::<EntryExt>(group, first, last + 1, None, &mut entries)?;
            }
        }
        Ok(Some(Recovered { hard_state, snapshot, entries }))
    }
}
