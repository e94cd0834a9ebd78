//! The etcd keyspace's changes as this node's replica applied them, for watchers.
//!
//! After every round the node thread publishes what its replica of the keyspace's group applied
//! since the last round ([`EtcdFeed::publish`]): whole revisions, in revision order, into a
//! bounded ring, and wakes the watchers. A watcher reads the ring from the revision it needs
//! next; one that needs a revision the ring no longer holds (it fell behind, or it asked for an
//! old start revision) reads it from the replica's own history through the node thread
//! ([`Input::EtcdHistory`](crate::runtime::Input)), which answers "compacted" if it is gone.
//! Either way a watcher sees each revision's changes once, in order, with no gap: revisions are
//! the replica's log order, the same on every replica, so a watcher that reconnects to another
//! node resumes where it stopped.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use baton_core::etcd::{ChangesFrom, EtcdStore, KeyEvent, Revision};
use tokio::sync::watch;

/// Most changes the ring keeps.
pub const RING_EVENTS: usize = 100_000;
/// Most bytes of keys and values the ring keeps.
pub const RING_BYTES: usize = 64 << 20;
/// Most changes published in one round (the rest follow in the next rounds): a snapshot that
/// brings a replica far forward must not stall the node thread.
const PUBLISH_PER_ROUND: usize = 10_000;

/// One change of the keyspace at its revision.
pub type Change = (Revision, Arc<KeyEvent>);

/// What a watcher reads from the feed.
pub enum Read {
    /// Every change from the revision asked for up to `through` (whole revisions; possibly none).
    Changes { changes: Vec<Change>, through: Revision },
    /// The ring no longer holds (or never held) that revision: read it from the replica.
    Behind,
}

#[derive(Default)]
struct Ring {
    /// This node holds a replica of the keyspace's group and has published it.
    present: bool,
    /// Changes of revisions `first..=published`, in revision order.
    changes: VecDeque<Change>,
    bytes: usize,
    /// The oldest revision whose changes are all in the ring.
    first: Revision,
    /// The replica's revision as last published.
    published: Revision,
    /// The replica's compaction revision as last published: a watcher that needs an older
    /// revision is told it was compacted, even while the ring still holds it.
    compacted: Revision,
    /// What the replica's kept history weighs, as last published (the quota compares it).
    store_bytes: u64,
}

/// The feed: a ring of recent changes and a signal carrying the last published revision.
pub struct EtcdFeed {
    ring: Mutex<Ring>,
    revision: watch::Sender<Revision>,
}

impl Default for EtcdFeed {
    fn default() -> Self {
        EtcdFeed { ring: Mutex::default(), revision: watch::Sender::new(0) }
    }
}

fn weight(e: &KeyEvent) -> usize {
    e.kv.key.len() + e.kv.value.len() + e.prev.as_ref().map_or(0, |p| p.value.len()) + 64
}

impl EtcdFeed {
    /// Publishes what `store` (this node's replica) applied since the last call.
    pub fn publish(&self, store: &EtcdStore) {
        let rev = store.revision();
        let mut ring = self.ring.lock().expect("feed lock");
        ring.compacted = store.mvcc().compacted();
        ring.store_bytes = store.mvcc().bytes();
        if ring.present && rev == ring.published {
            return;
        }
        let from = ring.published + 1;
        let next = (ring.present && rev > ring.published).then(|| store.changes_from(from, PUBLISH_PER_ROUND));
        let Some(ChangesFrom::Changes { changes, through }) = next else {
            // First publication (history before it is read from the replica), or the replica
            // was replaced by a snapshot whose history does not reach back to what was
            // published: start over from here.
            let (compacted, store_bytes) = (store.mvcc().compacted(), store.mvcc().bytes());
            *ring = Ring { present: true, first: rev + 1, published: rev, compacted, store_bytes, ..Ring::default() };
            drop(ring);
            self.revision.send_replace(rev);
            return;
        };
        for (r, e) in changes {
            ring.bytes += weight(&e);
            ring.changes.push_back((r, Arc::new(e)));
        }
        ring.published = through;
        // Trim whole revisions from the front to the bounds.
        while ring.changes.len() > RING_EVENTS || ring.bytes > RING_BYTES {
            let Some(oldest) = ring.changes.front().map(|(r, _)| *r) else { break };
            while ring.changes.front().is_some_and(|(r, _)| *r == oldest) {
                let (_, e) = ring.changes.pop_front().expect("front exists");
                ring.bytes -= weight(&e);
            }
            ring.first = oldest + 1;
        }
        drop(ring);
        self.revision.send_replace(through);
    }

    /// This node no longer holds a replica of the keyspace's group (placement moved it away):
    /// watchers are woken to end their watches.
    pub fn withdraw(&self) {
        let mut ring = self.ring.lock().expect("feed lock");
        if !ring.present {
            return;
        }
        *ring = Ring::default();
        drop(ring);
        self.revision.send_modify(|_| {});
    }

    /// The changes from revision `from` on that the ring holds, at most about `max` (whole
    /// revisions). A reader that was `synced` (it had caught up: the changes were published
    /// for it before any compaction of them) reads them from the ring even if a compaction
    /// has since removed them from the history, as etcd still sends a synced watcher what it
    /// notified it of; one that was not is sent to the history, and to a compaction error,
    /// below the last compaction.
    pub fn read(&self, from: Revision, max: usize, synced: bool) -> Read {
        let ring = self.ring.lock().expect("feed lock");
        if !ring.present || from < ring.first || (!synced && from < ring.compacted) {
            return Read::Behind;
        }
        let start = ring.changes.partition_point(|(r, _)| *r < from);
        let mut out: Vec<Change> = Vec::new();
        let mut through = ring.published;
        for (r, e) in ring.changes.range(start..) {
            if out.len() >= max && out.last().is_some_and(|(last, _)| last != r) {
                through = out.last().map_or(through, |(last, _)| *last);
                break;
            }
            out.push((*r, e.clone()));
        }
        Read::Changes { changes: out, through: through.max(from - 1) }
    }

    /// The replica's revision as last published (0 before the first publication).
    pub fn revision(&self) -> Revision {
        *self.revision.borrow()
    }

    /// What the replica's kept history weighs, in bytes, as last published.
    pub fn store_bytes(&self) -> u64 {
        self.ring.lock().expect("feed lock").store_bytes
    }

    /// Whether this node holds a replica of the keyspace's group (known after the first round).
    pub fn present(&self) -> bool {
        self.ring.lock().expect("feed lock").present
    }

    /// A receiver woken at every publication.
    pub fn subscribe(&self) -> watch::Receiver<Revision> {
        self.revision.subscribe()
    }
}

/// The replica's history from a revision (see [`Input::EtcdHistory`](crate::runtime::Input)).
#[derive(Debug)]
pub enum History {
    /// Changes from the revision asked for through `through` (whole revisions).
    Changes { changes: Vec<(Revision, KeyEvent)>, through: Revision },
    /// The revision asked for was compacted away; the replica's compaction revision.
    Compacted(Revision),
    /// This node holds no replica of the keyspace's group.
    NoReplica,
}

impl History {
    /// What this node's replica (if it holds one) answered for a replay
    /// ([`baton_core::StateMachine::etcd_changes_from`]).
    pub fn of(changes: Option<ChangesFrom>) -> History {
        match changes {
            None => History::NoReplica,
            Some(ChangesFrom::Compacted(rev)) => History::Compacted(rev),
            Some(ChangesFrom::Changes { changes, through }) => History::Changes { changes, through },
        }
    }
}

#[cfg(test)]
mod tests {
    use baton_core::etcd::{PutRequest, Revision};

    use super::*;

    fn put(s: &mut EtcdStore, key: &str) {
        s.put(&PutRequest { key: key.into(), value: b"v".to_vec(), ..Default::default() }).unwrap();
    }

    fn revisions(read: Read) -> Option<(Vec<Revision>, Revision)> {
        match read {
            Read::Changes { changes, through } => Some((changes.iter().map(|(r, _)| *r).collect(), through)),
            Read::Behind => None,
        }
    }

    #[test]
    fn the_ring_serves_what_was_published_after_it_started_and_sends_older_reads_to_history() {
        let mut store = EtcdStore::default();
        put(&mut store, "before"); // revision 2, applied before the feed first published
        let feed = EtcdFeed::default();
        assert!(!feed.present());
        feed.publish(&store);
        assert!(feed.present());
        assert_eq!(feed.revision(), 2);
        for k in ["a", "b", "c"] {
            put(&mut store, k); // revisions 3, 4, 5
        }
        feed.publish(&store);
        assert_eq!(feed.revision(), 5);
        assert!(revisions(feed.read(2, 10, false)).is_none(), "revision 2 was never in the ring");
        assert_eq!(revisions(feed.read(3, 10, false)), Some((vec![3, 4, 5], 5)));
        assert_eq!(revisions(feed.read(4, 1, false)), Some((vec![4], 4)), "whole revisions, about `max` changes");
        assert_eq!(revisions(feed.read(6, 10, false)), Some((vec![], 5)), "nothing newer yet");
    }

    /// Regression (found by the etcdctl comparison): the ring still held revisions that a
    /// compaction had removed, so a watch from before the compaction replayed them instead of
    /// being cancelled with the compaction revision, as etcd does.
    #[test]
    fn a_read_below_the_compaction_goes_to_history_even_while_the_ring_holds_it() {
        let mut store = EtcdStore::default();
        let feed = EtcdFeed::default();
        feed.publish(&store);
        for k in ["a", "b", "c"] {
            put(&mut store, k); // revisions 2, 3, 4
        }
        feed.publish(&store);
        assert!(revisions(feed.read(2, 10, false)).is_some());
        store.compact(3).unwrap();
        feed.publish(&store);
        assert!(revisions(feed.read(2, 10, false)).is_none());
        assert_eq!(revisions(feed.read(3, 10, false)), Some((vec![3, 4], 4)));
        // A reader that had caught up before the compaction still gets what was published for
        // it (review finding: a synced watch was cancelled by a compaction at its revision).
        assert_eq!(revisions(feed.read(2, 10, true)), Some((vec![2, 3, 4], 4)));
        assert!(matches!(History::of(Some(store.changes_from(2, 10))), History::Compacted(3)));
    }

    #[test]
    fn a_replica_replaced_by_a_later_snapshot_starts_the_ring_over_and_a_lost_replica_withdraws() {
        let mut store = EtcdStore::default();
        let feed = EtcdFeed::default();
        feed.publish(&store);
        let mut later = store.clone();
        for k in ["a", "b", "c", "d"] {
            put(&mut later, k);
        }
        later.compact(4).unwrap();
        // The replica jumps from revision 1 to 5 with history only from 4: no gap may be served.
        store = later;
        feed.publish(&store);
        assert_eq!(feed.revision(), 5);
        assert!(revisions(feed.read(2, 10, false)).is_none());
        assert!(matches!(History::of(Some(store.changes_from(2, 10))), History::Compacted(4)));
        feed.withdraw();
        assert!(!feed.present());
        assert!(matches!(History::of(None), History::NoReplica));
    }
}
