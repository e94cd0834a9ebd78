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
use raft_engine::{Config, Engine, LogBatch, MessageExt, RecoveryMode};

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
    /// The groups this store holds (every group ever written, in id order). Empty: a new node.
    fn groups(&self) -> Result<Vec<GroupId>, DiskError>;
    /// Counts a start of the node on this store: returns a number that no earlier call on this
    /// store returned, made durable before it returns. It becomes [`crate::NodeConfig`]'s
    /// `incarnation`, which keeps the request ids of one run from answering for another's.
    fn next_incarnation(&mut self) -> Result<u64, DiskError>;
}

/// Where node-wide records live in the log engine: a region id no group will have.
const NODE_REGION: u64 = u64::MAX;
const INCARNATION_KEY: &[u8] = b"incarnation";

struct EntryExt;

impl MessageExt for EntryExt {
    type Entry = Entry;
    fn index(e: &Entry) -> u64 {
        e.index
    }
}

const HARD_STATE_KEY: &[u8] = b"hs";

/// What opening an [`EngineStore`] found at the end of its log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreRecovery {
    /// The log did not end where its last write ended: the process stopped without closing it
    /// (kill -9, power loss), leaving the log file's preallocated space, and perhaps a torn
    /// write, after the last complete write. Expected after a crash.
    pub unclean_end: bool,
    /// Bytes of a torn last write dropped from the end of the log (0: no write was torn). A
    /// crash in the middle of a write leaves one; it was never acknowledged (answers wait for
    /// the fsync of the whole batch), so dropping it loses nothing anyone was told of.
    pub torn_tail_bytes: u64,
}

/// The real store: raft-engine for logs and hard states, files for snapshots.
pub struct EngineStore {
    engine: Engine,
    snap_dir: PathBuf,
    writes_since_purge: u64,
    recovery: StoreRecovery,
}

/// The newest file of the log engine (the only one a tolerant recovery may cut).
fn newest_log_file(dir: &Path) -> Option<PathBuf> {
    let files = fs::read_dir(dir).ok()?;
    files.filter_map(|f| Some(f.ok()?.path())).filter(|p| p.extension().is_some_and(|e| e == "raftlog")).max()
}

/// How many bytes of `before` past `cut` were written (not zero): the torn part of a write.
/// The rest of a log file past its last write is preallocated space, all zeros.
fn torn_bytes(before: &[u8], cut: u64) -> u64 {
    let tail = before.get(cut as usize..).unwrap_or_default();
    tail.iter().rposition(|b| *b != 0).map_or(0, |last| last as u64 + 1)
}

/// Opens (or creates) a raft-engine log under `log_dir`: strictly first, so that a damaged log
/// is noticed rather than silently repaired; if that fails, the only damage tolerated is at the
/// very end of the newest file, where a crash in the middle of a write leaves it. Anything else
/// still refuses to start.
pub(crate) fn open_engine(log_dir: &Path) -> Result<(Engine, StoreRecovery), DiskError> {
    let strict = Config {
        dir: log_dir.to_string_lossy().into_owned(),
        recovery_mode: RecoveryMode::AbsoluteConsistency,
        ..Default::default()
    };
    let (engine, recovery) = match Engine::open(strict.clone()) {
        Ok(engine) => (engine, StoreRecovery::default()),
        Err(raft_engine::Error::Io(e)) => return Err(raft_engine::Error::Io(e).into()),
        Err(_) => {
            // Keep the newest file's bytes: after the recovery has cut it at its last
            // complete write, they tell a torn write (data) from preallocated space (zeros).
            let newest = newest_log_file(log_dir);
            let before = newest.as_ref().and_then(|p| fs::read(p).ok()).unwrap_or_default();
            let tolerant = Config { recovery_mode: RecoveryMode::TolerateTailCorruption, ..strict };
            let engine = Engine::open(tolerant)?;
            let cut = newest.and_then(|p| fs::metadata(p).ok()).map_or(before.len() as u64, |m| m.len());
            (engine, StoreRecovery { unclean_end: true, torn_tail_bytes: torn_bytes(&before, cut) })
        }
    };
    Ok((engine, recovery))
}

impl EngineStore {
    /// Opens (or creates) the store under `dir`.
    pub fn open(dir: &Path) -> Result<Self, DiskError> {
        let snap_dir = dir.join("snap");
        fs::create_dir_all(&snap_dir).map_err(|source| DiskError::Snapshot { path: snap_dir.clone(), source })?;
        let (engine, recovery) = open_engine(&dir.join("log"))?;
        Ok(EngineStore { engine, snap_dir, writes_since_purge: 0, recovery })
    }

    /// What opening the store found (a torn tail dropped, or nothing).
    pub fn recovery(&self) -> &StoreRecovery {
        &self.recovery
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

/// Reads a snapshot file's bytes (written by [`EngineStore`]) found at `path`. Any bytes give a
/// snapshot or an error, never a panic; the state machine in it is decoded when its group
/// starts.
pub fn decode_snapshot_file(path: &Path, bytes: &[u8]) -> Result<Snapshot, DiskError> {
    Snapshot::parse_from_bytes(bytes).map_err(|e| DiskError::Corrupt(format!("{}: {e}", path.display())))
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

    fn next_incarnation(&mut self) -> Result<u64, DiskError> {
        let last = match self.engine.get(NODE_REGION, INCARNATION_KEY) {
            None => 0,
            Some(bytes) => u64::from_be_bytes(
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| DiskError::Corrupt("incarnation record is not 8 bytes".into()))?,
            ),
        };
        let next = last + 1;
        let mut log = LogBatch::default();
        log.put(NODE_REGION, INCARNATION_KEY.to_vec(), next.to_be_bytes().to_vec())?;
        self.engine.write(&mut log, true)?;
        Ok(next)
    }

    fn groups(&self) -> Result<Vec<GroupId>, DiskError> {
        let mut out = Vec::new();
        for g in self.engine.raft_groups() {
            if g != NODE_REGION && self.engine.get_message::<HardState>(g, HARD_STATE_KEY)?.is_some() {
                out.push(g);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    fn recover(&self, group: GroupId) -> Result<Option<Recovered>, DiskError> {
        let Some(hard_state) = self.engine.get_message::<HardState>(group, HARD_STATE_KEY)? else {
            return Ok(None);
        };
        let path = self.snap_path(group);
        let snapshot = match fs::read(&path) {
            Ok(bytes) => decode_snapshot_file(&path, &bytes)?,
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
