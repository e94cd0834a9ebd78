//! The cluster's layout, as the meta group (group 0) replicates it: which data groups exist,
//! which nodes hold their replicas, which slots each serves.
//!
//! The meta group is a Raft group like the others, running the same state machine type with
//! no slots of its own; its state holds a [`Topology`] and only topology changes write to it.
//! Each data group's own state machine holds the slots it serves, and that copy is the one that
//! decides: the meta group's map is what nodes and clients route by, and a stale route is
//! refused by the group it reached ([`crate::Error::NotOwned`]).
//!
//! # Placement
//! Replicas and leaderships are spread evenly: group `g`'s preferred leader is the
//! `(g - 1) mod n`-th of its replicas in id order, so `n` nodes with `k * n` groups prefer each
//! node `k` times. A leader that is not its group's preferred one hands the leadership over once
//! the preferred node is caught up (see the node crate): after a node comes back, its
//! leaderships come back to it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::slots::{even_split, Slot, SlotSet};

/// A data group's place in the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPlacement {
    /// The nodes that hold a replica (Raft voters), in id order.
    pub replicas: Vec<u64>,
    /// The slots the group serves.
    pub slots: SlotSet,
}

impl GroupPlacement {
    /// The replica that should lead the group when it is up: spreads leaderships evenly.
    pub fn preferred_leader(&self, group: u64) -> Option<u64> {
        if self.replicas.is_empty() {
            return None;
        }
        Some(self.replicas[(group.saturating_sub(1) % self.replicas.len() as u64) as usize])
    }
}

/// A slot move the meta group has started and not finished (see [`crate::moves`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingMove {
    /// First slot.
    pub start: Slot,
    /// Last slot.
    pub end: Slot,
    /// The group serving them until the move finishes.
    pub from: u64,
    /// The group serving them after.
    pub to: u64,
}

/// A member's addresses (empty for the members a cluster was created with: their addresses are
/// in every node's configuration).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddrs {
    /// Address for other nodes.
    pub peer_addr: String,
    /// Address for clients.
    pub client_addr: String,
}

/// The layout of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// Incremented by every change; clients compare it with the one they route by.
    pub version: u64,
    /// The members: every one holds a replica of the meta group (and, today, of every data
    /// group: the replication factor is the cluster's size).
    pub nodes: BTreeMap<u64, NodeAddrs>,
    /// The members the cluster was created with, in id order: with the number of data groups
    /// they determine every group's initial state, which a joining node starts its replicas
    /// from (as the founders did) before the leaders bring them up to date.
    pub founders: Vec<u64>,
    /// Data groups by id (1, 2, ...).
    pub groups: BTreeMap<u64, GroupPlacement>,
    /// Slot moves under way, by move id (the meta log index that started them).
    pub moves: BTreeMap<u64, PendingMove>,
}

/// Most slot moves under way at once.
pub const MAX_PENDING_MOVES: usize = 64;

/// The meta group's id.
pub const META_GROUP: u64 = 0;
/// Most data groups a cluster may have.
pub const MAX_GROUPS: u64 = 1_024;
/// Most members a cluster may have.
pub const MAX_NODES: usize = 64;

impl Topology {
    /// The layout a new cluster starts with: `data_groups` groups (1..=`MAX_GROUPS`), each on
    /// every node of `voters`, the slots cut into equal contiguous ranges in group order.
    pub fn initial(voters: &[u64], data_groups: u64) -> Topology {
        let mut replicas = voters.to_vec();
        replicas.sort_unstable();
        replicas.dedup();
        let groups = even_split(data_groups.clamp(1, MAX_GROUPS))
            .into_iter()
            .enumerate()
            .map(|(i, (start, end))| {
                (i as u64 + 1, GroupPlacement { replicas: replicas.clone(), slots: SlotSet::range(start, end) })
            })
            .collect();
        let nodes = replicas.iter().map(|id| (*id, NodeAddrs::default())).collect();
        Topology { version: 1, nodes, founders: replicas, groups, moves: BTreeMap::new() }
    }

    /// Adds a member: it gets a replica of every group (each group's leader adds it, first as a
    /// learner). Adding a member again with the same addresses changes nothing.
    pub(crate) fn add_node(&mut self, id: u64, addrs: NodeAddrs) -> Result<bool, String> {
        if id == 0 {
            return Err("node id 0 is not a valid id".into());
        }
        if let Some(known) = self.nodes.get(&id) {
            if *known == addrs || known.peer_addr.is_empty() {
                return Ok(false);
            }
            return Err(format!("node {id} is a member already, at {}", known.peer_addr));
        }
        if self.nodes.len() >= MAX_NODES {
            return Err(format!("the cluster has {MAX_NODES} members already"));
        }
        self.nodes.insert(id, addrs);
        for g in self.groups.values_mut() {
            if !g.replicas.contains(&id) {
                g.replicas.push(id);
                g.replicas.sort_unstable();
            }
        }
        self.version += 1;
        Ok(true)
    }

    /// Removes a member from every group (each group's leader removes it, handing its
    /// leadership on first if it leads) and from the membership.
    pub(crate) fn remove_node(&mut self, id: u64) -> Result<bool, String> {
        if !self.nodes.contains_key(&id) {
            return Ok(false);
        }
        if self.nodes.len() <= 1 {
            return Err(format!("node {id} is the last member: a cluster cannot remove its last node"));
        }
        self.nodes.remove(&id);
        for g in self.groups.values_mut() {
            g.replicas.retain(|r| *r != id);
        }
        self.version += 1;
        Ok(true)
    }

    /// The move under way that covers `slot`, if any.
    pub fn moving(&self, slot: Slot) -> Option<(u64, &PendingMove)> {
        self.moves.iter().find(|(_, m)| (m.start..=m.end).contains(&slot)).map(|(id, m)| (*id, m))
    }

    /// Starts moving `start..=end` to group `to` (the meta group's step; see [`crate::moves`]).
    pub(crate) fn begin_move(&mut self, move_id: u64, start: Slot, end: Slot, to: u64) -> Result<(), String> {
        if start > end || end >= crate::slots::SLOTS {
            return Err(format!("slot range {start}-{end} is not a range of slots 0..={}", crate::slots::SLOTS - 1));
        }
        if !self.groups.contains_key(&to) {
            return Err(format!(
                "group {to} does not exist (data groups: {:?})",
                self.groups.keys().collect::<Vec<_>>()
            ));
        }
        let from = self.group_of(start).ok_or_else(|| format!("slot {start} is being moved already"))?;
        if from == to {
            return Err(format!("slots {start}-{end} are served by group {to} already"));
        }
        if !self.groups[&from].slots.contains_range(start, end) {
            return Err(format!(
                "slots {start}-{end} are not all served by group {from}: move one group's slots at a time (group {from} serves {:?})",
                self.groups[&from].slots
            ));
        }
        if let Some((id, m)) = self.moves.iter().find(|(_, m)| m.start <= end && start <= m.end) {
            return Err(format!("slots {}-{} are being moved already (move {id})", m.start, m.end));
        }
        if self.moves.len() >= MAX_PENDING_MOVES {
            return Err(format!("{MAX_PENDING_MOVES} moves are under way already; wait for some to finish"));
        }
        self.moves.insert(move_id, PendingMove { start, end, from, to });
        Ok(())
    }

    /// Finishes a move: its slots belong to its destination in the map from now on. False if no
    /// such move is under way (finished already).
    pub(crate) fn finish_move(&mut self, move_id: u64) -> bool {
        let Some(m) = self.moves.remove(&move_id) else { return false };
        if let Some(g) = self.groups.get_mut(&m.from) {
            g.slots.remove_range(m.start, m.end);
        }
        if let Some(g) = self.groups.get_mut(&m.to) {
            g.slots.insert_range(m.start, m.end);
        }
        self.version += 1;
        true
    }

    /// The group serving `slot` by the map, if any (during a move, the source: it serves the
    /// slot until its hand-off).
    pub fn group_of(&self, slot: Slot) -> Option<u64> {
        self.groups.iter().find(|(_, g)| g.slots.contains(slot)).map(|(id, _)| *id)
    }

    /// The groups `node` holds a replica of, the meta group included when it is a voter of it.
    pub fn groups_of(&self, node: u64) -> Vec<u64> {
        self.groups.iter().filter(|(_, g)| g.replicas.contains(&node)).map(|(id, _)| *id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::{slot_of, SLOTS};

    #[test]
    fn initial_layout_spreads_slots_and_leaders() {
        let t = Topology::initial(&[3, 1, 2], 12);
        assert_eq!(t.groups.len(), 12);
        let total: usize = t.groups.values().map(|g| g.slots.len()).sum();
        assert_eq!(total, SLOTS as usize);
        for s in [0, 1, 5000, SLOTS - 1, slot_of("foo")] {
            assert!(t.group_of(s).is_some());
        }
        let mut leads = BTreeMap::new();
        for (id, g) in &t.groups {
            assert_eq!(g.replicas, vec![1, 2, 3]);
            *leads.entry(g.preferred_leader(*id).unwrap()).or_insert(0) += 1;
        }
        assert_eq!(leads, BTreeMap::from([(1, 4), (2, 4), (3, 4)]));
        assert_eq!(t.groups_of(2).len(), 12);
        assert_eq!(Topology::initial(&[1], 0).groups.len(), 1, "at least one group");
    }
}
