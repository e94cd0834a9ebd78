//! The raft-engine store writes what it is given and reads back exactly that after reopening.

use baton_node::{EngineStore, GroupWrite, LogStore, WriteBatch};
use raft::eraftpb::{Entry, HardState, Snapshot};

fn entry(index: u64, term: u64) -> Entry {
    Entry { index, term, data: vec![index as u8; 8].into(), ..Default::default() }
}

fn snapshot(index: u64, term: u64) -> Snapshot {
    let mut s = Snapshot::default();
    s.mut_metadata().index = index;
    s.mut_metadata().term = term;
    s.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
    s.data = b"state".to_vec().into();
    s
}

#[test]
fn writes_survive_reopen_per_group() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = EngineStore::open(dir.path()).unwrap();
        let hs = HardState { term: 2, vote: 1, commit: 3, ..Default::default() };
        let batch = WriteBatch {
            groups: vec![
                GroupWrite {
                    group: 1,
                    entries: (1..=5).map(|i| entry(i, 1)).collect(),
                    hard_state: Some(hs.clone()),
                    ..Default::default()
                },
                GroupWrite {
                    group: 7,
                    entries: vec![entry(1, 1)],
                    hard_state: Some(HardState::default()),
                    ..Default::default()
                },
            ],
        };
        store.write(&batch).unwrap();
        // A conflicting suffix from a new leader replaces entries 4 and 5.
        let batch =
            WriteBatch { groups: vec![GroupWrite { group: 1, entries: vec![entry(4, 2)], ..Default::default() }] };
        store.write(&batch).unwrap();
    }
    let store = EngineStore::open(dir.path()).unwrap();
    let g1 = store.recover(1).unwrap().unwrap();
    assert_eq!(g1.hard_state.term, 2);
    assert_eq!(g1.entries.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(), vec![(1, 1), (2, 1), (3, 1), (4, 2)]);
    assert_eq!(store.recover(7).unwrap().unwrap().entries.len(), 1);
    assert!(store.recover(9).unwrap().is_none());
}

#[test]
fn snapshots_cut_or_replace_the_log() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = EngineStore::open(dir.path()).unwrap();
        let entries = (1..=10).map(|i| entry(i, 1)).collect();
        store
            .write(&WriteBatch {
                groups: vec![GroupWrite {
                    group: 1,
                    entries,
                    hard_state: Some(HardState::default()),
                    ..Default::default()
                }],
            })
            .unwrap();
        // Our own snapshot at 6: entries after it stay.
        store
            .write(&WriteBatch {
                groups: vec![GroupWrite { group: 1, snapshot: Some(snapshot(6, 1)), ..Default::default() }],
            })
            .unwrap();
    }
    {
        let mut store = EngineStore::open(dir.path()).unwrap();
        let g = store.recover(1).unwrap().unwrap();
        assert_eq!(g.snapshot.get_metadata().index, 6);
        assert_eq!(&g.snapshot.data[..], b"state");
        assert_eq!(g.entries.iter().map(|e| e.index).collect::<Vec<_>>(), vec![7, 8, 9, 10]);
        // A leader's snapshot at 20 replaces the whole log.
        let hs = HardState { term: 3, vote: 0, commit: 20, ..Default::default() };
        let write = GroupWrite {
            group: 1,
            snapshot: Some(snapshot(20, 3)),
            replace_log: true,
            hard_state: Some(hs),
            ..Default::default()
        };
        store.write(&WriteBatch { groups: vec![write] }).unwrap();
    }
    let store = EngineStore::open(dir.path()).unwrap();
    let g = store.recover(1).unwrap().unwrap();
    assert_eq!(g.snapshot.get_metadata().index, 20);
    assert_eq!(g.hard_state.commit, 20);
    assert!(g.entries.is_empty());
}

/// The newest file of the log engine's write-ahead log.
fn last_log_file(dir: &std::path::Path) -> std::path::PathBuf {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "raftlog"))
        .collect();
    files.sort();
    files.pop().expect("a log file")
}

fn write_entries(store: &mut EngineStore, from: u64, to: u64) {
    let hs = HardState { term: 1, commit: to, ..Default::default() };
    let entries = (from..=to).map(|i| entry(i, 1)).collect();
    let write = GroupWrite { group: 1, entries, hard_state: Some(hs), ..Default::default() };
    store.write(&WriteBatch { groups: vec![write] }).unwrap();
}

/// Issue 9, defect 13: a crash in the middle of a write leaves a torn batch at the end of the
/// log. Recovery drops it, says so in operator terms, and counts it, so that a real corruption
/// (which refuses to start) stands out; a clean restart reports nothing.
#[test]
fn a_torn_tail_is_dropped_counted_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = EngineStore::open(dir.path()).unwrap();
        write_entries(&mut store, 1, 5);
    }
    let store = EngineStore::open(dir.path()).unwrap();
    assert_eq!(store.recovery(), &Default::default(), "a clean restart found a torn tail");
    drop(store);
    // Half a batch: a header that promises more than follows, as a kill -9 mid-write leaves.
    let file = last_log_file(dir.path());
    let good = std::fs::metadata(&file).unwrap().len();
    {
        let mut store = EngineStore::open(dir.path()).unwrap();
        write_entries(&mut store, 6, 8);
    }
    let full = std::fs::metadata(&file).unwrap().len();
    assert!(full > good);
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(full - 10).unwrap();
    drop(f);
    let store = EngineStore::open(dir.path()).unwrap();
    let r = store.recovery();
    assert!(r.unclean_end && r.torn_tail_bytes == full - 10 - good, "the torn batch was not reported: {r:?}");
    let g1 = store.recover(1).unwrap().unwrap();
    assert_eq!(g1.entries.last().map(|e| e.index), Some(5), "entries of the torn batch were applied");
}

/// After a crash between two writes the log file ends in preallocated zeros, not in a torn
/// write: an unclean end, with nothing dropped.
#[test]
fn a_crash_between_writes_drops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = EngineStore::open(dir.path()).unwrap();
        write_entries(&mut store, 1, 5);
    }
    let file = last_log_file(dir.path());
    let len = std::fs::metadata(&file).unwrap().len();
    // What a crash leaves: the file still carries its preallocated (zero) space.
    std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(len + 64 * 1024).unwrap();
    let store = EngineStore::open(dir.path()).unwrap();
    let r = store.recovery().clone();
    assert!(r.unclean_end, "{r:?}");
    assert_eq!(r.torn_tail_bytes, 0, "zeros were counted as a torn write");
    assert_eq!(store.recover(1).unwrap().unwrap().entries.len(), 5);
}
