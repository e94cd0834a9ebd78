//! A group's snapshots: when to take one, and sending them to lagging followers again when one
//! is lost on the way.

use super::*;

impl Group {
    /// Hands a message to the runtime, noting when a snapshot went to whom.
    pub(super) fn send(&mut self, msg: Message, now: u64, out: &mut Vec<Output>) {
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            let mib = msg.get_snapshot().get_data().len() as u64 >> 20;
            let answer_by = now + SNAPSHOT_ANSWER_MS + mib * SNAPSHOT_MS_PER_MIB;
            self.snapshots_sent.insert(msg.to, answer_by);
        }
        out.push(Output::Send { to: msg.to, group: self.id, msg });
    }

    /// A snapshot the follower has not answered in time (`SNAPSHOT_ANSWER_MS`) was lost (a connection
    /// cut mid-send, a message over the transport's bound): raft-rs sends nothing more to a
    /// follower it is sending a snapshot to until told how that went, so without this the
    /// follower stayed behind until the leadership changed. Reporting the failure makes raft-rs
    /// probe the follower again, and send a new snapshot if it still needs one.
    pub(super) fn retry_lost_snapshots(&mut self, now: u64) {
        let waiting: Vec<NodeId> =
            self.snapshots_sent.iter().filter(|(_, answer_by)| now >= **answer_by).map(|(to, _)| *to).collect();
        for to in waiting {
            self.snapshots_sent.remove(&to);
            let sending = self.raw.raft.prs().get(to).is_some_and(|p| p.state == ProgressState::Snapshot);
            if sending {
                self.raw.report_snapshot(to, SnapshotStatus::Failure);
            }
        }
    }

    /// Frees the latest snapshot's data once no follower can need it: this replica does not
    /// lead, or every follower has everything up to the snapshot (the log before it is gone,
    /// so one that has not needs the snapshot) and none is being sent one. The file stays on
    /// disk for restarts; a follower that needs a snapshot later gets a fresh one (see
    /// `GroupStorage::snapshot`).
    pub(super) fn release_snapshot_data(&mut self) {
        if self.snapshot_to_write.is_some() || !self.raw.store().has_snapshot_data() {
            return;
        }
        let raft = &self.raw.raft;
        let index = self.raw.store().snapshot_ref().get_metadata().index;
        let needed = self.role == Role::Leader
            && raft
                .prs()
                .iter()
                .any(|(id, p)| *id != raft.id && (p.state == ProgressState::Snapshot || p.matched < index));
        if !needed {
            self.raw.mut_store().drop_snapshot_data();
        }
    }

    /// Takes a snapshot of the applied state now (a new replica is about to be added).
    pub(super) fn force_snapshot(&mut self) {
        let applied = self.sm.applied_index();
        if applied == 0 || self.snapshot_to_write.is_some() {
            return;
        }
        let data = self.sm.to_snapshot();
        let snap = self.raw.mut_store().set_snapshot(data, applied);
        self.snapshot_to_write = Some(snap);
    }

    pub(super) fn maybe_snapshot(&mut self, config: &NodeConfig) {
        if self.raw.store().take_snapshot_wanted() {
            // A new member needs one that lists it, or a follower needs one whose data was
            // dropped (see `GroupStorage::snapshot`).
            self.force_snapshot();
            return;
        }
        let applied = self.sm.applied_index();
        let snap_index = self.raw.store().snapshot_ref().get_metadata().index;
        // A snapshot costs time in proportion to the state, so it waits for new entries in
        // proportion too (a quarter of the objects): the cost per entry stays bounded however
        // large the state grows. With a fixed 20,000 entries, a node holding 1M locks spent
        // most of its time serialising. The log kept in memory grows by the same quarter.
        let due = config.snapshot_entries.max(self.sm.object_count() / 4);
        if applied.saturating_sub(snap_index) < due {
            return;
        }
        let data = self.sm.to_snapshot();
        let snap = self.raw.mut_store().set_snapshot(data, applied);
        self.snapshot_to_write = Some(snap);
    }
}
