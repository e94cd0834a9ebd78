//! The cluster's layout, as the meta group (group 0) replicates it: which data groups exist
//! (and whether the etcd keyspace's group does), which nodes hold their replicas, which slots
//! each serves.
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
//! node `k` times (the etcd keyspace's group, with its large id, takes whichever member leads
//! the fewest). A leader that is not its group's preferred one hands the leadership over once
//! the preferred node is caught up (see the node crate): after a node comes back, its
//! leaderships come back to it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::slots::{even_split, Slot, SlotSet};

/// A group's place in the cluster (a data group's, or the etcd keyspace's: no slots).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPlacement {
    /// The nodes that hold a replica (Raft voters), in id order.
    pub replicas: Vec<u64>,
    /// The slots the group serves.
    pub slots: SlotSet,
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
    /// and the replication factor they determine every group's initial state, which a node
    /// that gets a new replica starts it from (as the founders did) before the leader brings it
    /// up to date.
    pub founders: Vec<u64>,
    /// Replicas per data group (fewer while the cluster has fewer members).
    pub replication: usize,
    /// Members that were removed: an id is never added again (a node that left, or lost its
    /// data, joins under a new id; raft must not meet an old voter with an empty log).
    pub retired: std::collections::BTreeSet<u64>,
    /// Data groups by id (1, 2, ...), and the etcd keyspace's ([`ETCD_GROUP`]) if the cluster
    /// has it.
    pub groups: BTreeMap<u64, GroupPlacement>,
    /// Slot moves under way, by move id (the meta log index that started them).
    pub moves: BTreeMap<u64, PendingMove>,
}

/// Most slot moves under way at once.
pub const MAX_PENDING_MOVES: usize = 64;

/// The meta group's id.
pub const META_GROUP: u64 = 0;
/// The id of the etcd keyspace's group (see [`crate::etcd`]): placed like a data group, never
/// given slots. The highest id a group may have (session ids carry the group in 16 bits).
pub const ETCD_GROUP: u64 = 1 << 16;
/// Most data groups a cluster may have.
pub const MAX_GROUPS: u64 = 1_024;
/// Most members a cluster may have.
pub const MAX_NODES: usize = 64;
/// Replicas per data group unless said otherwise.
pub const DEFAULT_REPLICATION: usize = 3;

impl Topology {
    /// The layout a new cluster starts with: `data_groups` groups (1..=`MAX_GROUPS`), each on
    /// every node of `voters`, the slots cut into equal contiguous ranges in group order.
    pub fn initial(voters: &[u64], data_groups: u64) -> Topology {
        Topology::initial_with(voters, data_groups, DEFAULT_REPLICATION, true)
    }

    /// [`Topology::initial`] with `replication` replicas per data group: group `g`'s replicas
    /// are the `replication` members from the `(g-1) mod n`-th on, in id order around the ring.
    /// With `etcd`, the etcd keyspace's group ([`ETCD_GROUP`], no slots) is placed as the next
    /// data group would be (every new cluster has it; a cluster created before it existed
    /// does not, and nodes that join it must start without it).
    pub fn initial_with(voters: &[u64], data_groups: u64, replication: usize, etcd: bool) -> Topology {
        let mut members = voters.to_vec();
        members.sort_unstable();
        members.dedup();
        let n = members.len().max(1);
        let r = replication.clamp(1, n);
        let replicas_at = |i: usize| {
            let mut replicas: Vec<u64> = (0..r).map(|k| members[(i + k) % n]).collect();
            replicas.sort_unstable();
            replicas
        };
        let ranges = even_split(data_groups.clamp(1, MAX_GROUPS));
        let next = ranges.len();
        let mut groups: BTreeMap<u64, GroupPlacement> = ranges
            .into_iter()
            .enumerate()
            .map(|(i, (start, end))| {
                (i as u64 + 1, GroupPlacement { replicas: replicas_at(i), slots: SlotSet::range(start, end) })
            })
            .collect();
        if etcd {
            groups.insert(ETCD_GROUP, GroupPlacement { replicas: replicas_at(next), slots: SlotSet::empty() });
        }
        let nodes = members.iter().map(|id| (*id, NodeAddrs::default())).collect();
        Topology {
            version: 1,
            nodes,
            founders: members,
            replication: r.max(replication.max(1)),
            retired: Default::default(),
            groups,
            moves: BTreeMap::new(),
        }
    }

    /// The replica that should lead `group` when it is up (see [`Topology::preferred_leaders`]).
    pub fn preferred_leader(&self, group: u64) -> Option<u64> {
        self.preferred_leaders().get(&group).copied()
    }

    /// The preferred leader of every data group: in group order, each group's replica that
    /// leads the fewest groups so far (ties: the member at the `(g-1) mod n`-th place, then the
    /// lowest id). Spreads leaderships evenly over the members, whatever the replica sets.
    pub fn preferred_leaders(&self) -> BTreeMap<u64, u64> {
        let members: Vec<u64> = self.nodes.keys().copied().collect();
        let mut count: BTreeMap<u64, usize> = BTreeMap::new();
        let mut out = BTreeMap::new();
        for (id, g) in &self.groups {
            let i = id.saturating_sub(1) as usize;
            let ring = (!members.is_empty()).then(|| members[i % members.len()]);
            let pick =
                g.replicas.iter().copied().min_by_key(|r| (count.get(r).copied().unwrap_or(0), Some(*r) != ring, *r));
            if let Some(p) = pick {
                *count.entry(p).or_insert(0) += 1;
                out.insert(*id, p);
            }
        }
        // Then even it out: a group moves from a member leading the most to one of its replicas
        // leading the fewest, while that narrows the gap.
        for _ in 0..self.groups.len() * members.len().max(1) {
            let load = |m: u64| count.get(&m).copied().unwrap_or(0);
            let best = out
                .iter()
                .filter_map(|(g, leader)| {
                    let to = self.groups[g].replicas.iter().copied().min_by_key(|r| (load(*r), *r))?;
                    (load(*leader) > load(to) + 1).then_some((load(*leader) - load(to), *g, *leader, to))
                })
                .max_by_key(|(gap, g, _, _)| (*gap, std::cmp::Reverse(*g)));
            let Some((_, g, from, to)) = best else { break };
            *count.get_mut(&from).expect("leads") -= 1;
            *count.entry(to).or_insert(0) += 1;
            out.insert(g, to);
        }
        out
    }

    /// The initial state of a data group as the founders created it (see `founders`).
    pub fn initial_placement(&self, group: u64) -> Option<GroupPlacement> {
        let first = Topology::initial_with(
            &self.founders,
            self.data_groups().count() as u64,
            self.replication,
            self.has_etcd(),
        );
        first.groups.get(&group).cloned()
    }

    /// The data groups (the ones that serve slots), by id.
    pub fn data_groups(&self) -> impl Iterator<Item = (u64, &GroupPlacement)> {
        self.groups.iter().filter(|(id, _)| **id != ETCD_GROUP).map(|(id, g)| (*id, g))
    }

    /// Whether the cluster has the etcd keyspace's group.
    pub fn has_etcd(&self) -> bool {
        self.groups.contains_key(&ETCD_GROUP)
    }

    /// Places the replicas after a membership change: departed members leave every group,
    /// groups short of `replication` replicas (or of every member, in a smaller cluster) get
    /// the members holding the fewest, and replicas move from the fullest members to the
    /// emptiest until they differ by at most one. Deterministic (every replica of the meta
    /// group computes the same).
    fn rebalance(&mut self) {
        let members: Vec<u64> = self.nodes.keys().copied().collect();
        if members.is_empty() {
            return;
        }
        let r = self.replication.clamp(1, members.len());
        let load = |groups: &BTreeMap<u64, GroupPlacement>, m: u64| {
            groups.values().filter(|g| g.replicas.contains(&m)).count()
        };
        for g in self.groups.values_mut() {
            g.replicas.retain(|m| members.contains(m));
        }
        let ids: Vec<u64> = self.groups.keys().copied().collect();
        for id in &ids {
            while self.groups[id].replicas.len() < r {
                let add = members
                    .iter()
                    .copied()
                    .filter(|m| !self.groups[id].replicas.contains(m))
                    .min_by_key(|m| (load(&self.groups, *m), *m))
                    .expect("fewer replicas than members");
                let g = self.groups.get_mut(id).expect("listed");
                g.replicas.push(add);
                g.replicas.sort_unstable();
            }
        }
        for _ in 0..ids.len() * members.len() {
            let (full, empty) = {
                let by_load: Vec<(usize, u64)> = members.iter().map(|m| (load(&self.groups, *m), *m)).collect();
                let max = *by_load.iter().max().expect("members");
                let min = *by_load.iter().min().expect("members");
                (max, min)
            };
            if full.0 <= empty.0 + 1 {
                break;
            }
            let Some(id) = ids.iter().copied().find(|id| {
                let reps = &self.groups[id].replicas;
                reps.contains(&full.1) && !reps.contains(&empty.1)
            }) else {
                break;
            };
            let g = self.groups.get_mut(&id).expect("listed");
            g.replicas.retain(|m| *m != full.1);
            g.replicas.push(empty.1);
            g.replicas.sort_unstable();
        }
    }

    /// Adds a member: replicas are placed again (see `rebalance`: the new member takes its share;
    /// each group's leader adds it, first as a learner, then removes the replica it replaces).
    /// Adding a member again with the same addresses changes nothing.
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
        if self.retired.contains(&id) {
            return Err(format!("node {id} was removed from this cluster: a node joins again under a new id"));
        }
        if self.nodes.len() >= MAX_NODES {
            return Err(format!("the cluster has {MAX_NODES} members already"));
        }
        self.nodes.insert(id, addrs);
        self.rebalance();
        self.version += 1;
        Ok(true)
    }

    /// Removes a member: its replicas are placed on other members (each group's leader adds the
    /// new replica, then removes it, handing its leadership on first if it leads).
    pub(crate) fn remove_node(&mut self, id: u64) -> Result<bool, String> {
        if !self.nodes.contains_key(&id) {
            return Ok(false);
        }
        if self.nodes.len() <= 1 {
            return Err(format!("node {id} is the last member: a cluster cannot remove its last node"));
        }
        self.nodes.remove(&id);
        self.retired.insert(id);
        self.rebalance();
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
        if to == ETCD_GROUP || !self.groups.contains_key(&to) {
            return Err(format!(
                "group {to} is not a data group (data groups: {:?})",
                self.data_groups().map(|(id, _)| id).collect::<Vec<_>>()
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
        let t = Topology::initial_with(&[3, 1, 2], 12, DEFAULT_REPLICATION, false);
        assert_eq!(t.groups.len(), 12);
        let total: usize = t.groups.values().map(|g| g.slots.len()).sum();
        assert_eq!(total, SLOTS as usize);
        for s in [0, 1, 5000, SLOTS - 1, slot_of("foo")] {
            assert!(t.group_of(s).is_some());
        }
        let mut leads = BTreeMap::new();
        for (id, g) in &t.groups {
            assert_eq!(g.replicas, vec![1, 2, 3]);
            *leads.entry(t.preferred_leader(*id).unwrap()).or_insert(0) += 1;
        }
        assert_eq!(leads, BTreeMap::from([(1, 4), (2, 4), (3, 4)]));
        assert_eq!(t.groups_of(2).len(), 12);
        assert_eq!(Topology::initial(&[1], 0).data_groups().count(), 1, "at least one group");
    }

    #[test]
    fn new_clusters_have_the_etcd_group_without_slots_and_it_takes_no_moves() {
        let mut t = Topology::initial(&[1, 2, 3, 4], 3);
        assert!(t.has_etcd());
        assert_eq!(t.data_groups().count(), 3);
        let etcd = &t.groups[&ETCD_GROUP];
        assert!(etcd.slots.is_empty());
        assert_eq!(etcd.replicas, vec![1, 2, 4], "placed where a fourth data group would be");
        assert!(t.preferred_leader(ETCD_GROUP).is_some());
        assert_eq!(t.initial_placement(ETCD_GROUP).as_ref(), Some(etcd));
        let refused = t.begin_move(100, 0, 10, ETCD_GROUP).unwrap_err();
        assert!(refused.contains("not a data group"), "{refused}");
        assert!(!Topology::initial_with(&[1, 2, 3], 3, 3, false).has_etcd());
    }

    fn loads(t: &Topology) -> BTreeMap<u64, usize> {
        let mut l = BTreeMap::new();
        for g in t.groups.values() {
            for r in &g.replicas {
                *l.entry(*r).or_insert(0) += 1;
            }
        }
        l
    }

    #[test]
    fn three_replicas_per_group_spread_and_move_with_the_members() {
        let mut t = Topology::initial_with(&[1, 2, 3, 4, 5], 10, 3, false);
        assert!(t.groups.values().all(|g| g.replicas.len() == 3));
        assert!(loads(&t).values().all(|l| *l == 6), "{:?}", loads(&t));
        let mut leads = BTreeMap::new();
        for id in t.groups.keys() {
            let p = t.preferred_leader(*id).unwrap();
            assert!(t.groups[id].replicas.contains(&p));
            *leads.entry(p).or_insert(0) += 1;
        }
        assert!(leads.values().all(|l| *l == 2), "{leads:?}");
        // A sixth member takes its share; a removed one's replicas go elsewhere.
        t.add_node(6, NodeAddrs { peer_addr: "p".into(), client_addr: "c".into() }).unwrap();
        let mut leads: BTreeMap<u64, usize> = BTreeMap::new();
        for p in t.preferred_leaders().values() {
            *leads.entry(*p).or_insert(0) += 1;
        }
        let (most, fewest) = (leads.values().max().unwrap(), leads.values().min().unwrap());
        assert!(leads.len() == 6 && most - fewest <= 1, "leaderships over 6 members: {leads:?}");
        let l = loads(&t);
        assert!(l.values().max().unwrap() - l.values().min().unwrap() <= 1, "{l:?}");
        assert!(t.groups.values().all(|g| g.replicas.len() == 3));
        t.remove_node(1).unwrap();
        assert!(t.groups.values().all(|g| g.replicas.len() == 3 && !g.replicas.contains(&1)));
        let l = loads(&t);
        assert!(l.values().max().unwrap() - l.values().min().unwrap() <= 1, "{l:?}");
        // The founders' layout is kept for new replicas' initial state.
        assert_eq!(
            t.initial_placement(3),
            Topology::initial_with(&[1, 2, 3, 4, 5], 10, 3, false).groups.get(&3).cloned()
        );
        // Fewer members than the factor: every member holds every group.
        let small = Topology::initial_with(&[1, 2], 4, 3, true);
        assert!(small.groups.values().all(|g| g.replicas == vec![1, 2]));
    }
}
