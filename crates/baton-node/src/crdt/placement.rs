//! Which nodes hold a replica of each coordination-free object: the replicas of the data group
//! that serves the object's slot, so that the tier follows the groups' placement, slot moves
//! and membership changes like every other name.
//!
//! During a slot move both groups' replicas own the slots moved (the old owners keep serving
//! until the move ends; the new ones fill up meanwhile). A slot no group serves (none should
//! be) is owned by every member.

use std::collections::BTreeSet;

use baton_core::crdt::Key;
use baton_core::{slot_of, Slot, Topology, SLOTS};

use crate::NodeId;

/// Owners per slot (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The topology version this was made from.
    pub version: u64,
    /// Per slot, an index into `sets`.
    of_slot: Vec<u16>,
    /// The distinct owner sets, each in id order.
    sets: Vec<Vec<NodeId>>,
}

impl Placement {
    /// The owners by `topology`.
    pub fn from_topology(topology: &Topology) -> Placement {
        let mut owners: Vec<BTreeSet<NodeId>> = vec![BTreeSet::new(); SLOTS as usize];
        for g in topology.groups.values() {
            for (start, end) in g.slots.ranges() {
                for s in start..=end {
                    owners[s as usize].extend(g.replicas.iter().copied());
                }
            }
        }
        for m in topology.moves.values() {
            let both: Vec<NodeId> = [m.from, m.to]
                .iter()
                .filter_map(|g| topology.groups.get(g))
                .flat_map(|g| g.replicas.iter().copied())
                .collect();
            for s in m.start..=m.end.min(SLOTS - 1) {
                owners[s as usize].extend(both.iter().copied());
            }
        }
        let everyone: BTreeSet<NodeId> = topology.nodes.keys().copied().collect();
        Placement::from_owners(
            owners.into_iter().map(|o| if o.is_empty() { everyone.clone() } else { o }),
            topology.version,
        )
    }

    /// From one owner set per slot (for tests and the simulator).
    pub fn from_owners(per_slot: impl IntoIterator<Item = BTreeSet<NodeId>>, version: u64) -> Placement {
        let mut sets: Vec<Vec<NodeId>> = Vec::new();
        let mut of_slot = Vec::with_capacity(SLOTS as usize);
        for owners in per_slot.into_iter().take(SLOTS as usize) {
            let owners: Vec<NodeId> = owners.into_iter().collect();
            let i = match sets.iter().position(|s| *s == owners) {
                Some(i) => i,
                None => {
                    sets.push(owners);
                    sets.len() - 1
                }
            };
            of_slot.push(i as u16);
        }
        of_slot.resize(SLOTS as usize, of_slot.last().copied().unwrap_or(0));
        if sets.is_empty() {
            sets.push(Vec::new());
        }
        Placement { version, of_slot, sets }
    }

    /// The owners of `slot`, in id order.
    pub fn owners_of_slot(&self, slot: Slot) -> &[NodeId] {
        &self.sets[self.of_slot[slot as usize % SLOTS as usize] as usize]
    }

    /// The owners of `key`, in id order.
    pub fn owners(&self, key: &Key) -> &[NodeId] {
        self.owners_of_slot(slot_of(&key.name))
    }

    /// True if `node` owns `slot`.
    pub fn owns(&self, node: NodeId, slot: Slot) -> bool {
        self.owners_of_slot(slot).contains(&node)
    }

    /// True if the two placements give every slot the same owners.
    pub fn same_owners(&self, other: &Placement) -> bool {
        (0..SLOTS).all(|s| self.owners_of_slot(s) == other.owners_of_slot(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_follow_groups_and_moves() {
        let mut t = Topology::initial_with(&[1, 2, 3, 4, 5], 5, 3, false);
        let p = Placement::from_topology(&t);
        for g in t.groups.values() {
            let (start, end) = g.slots.ranges()[0];
            assert_eq!(p.owners_of_slot(start), g.replicas.as_slice());
            assert_eq!(p.owners_of_slot(end), g.replicas.as_slice());
        }
        // A move of group 1's first slots to group 3: both groups' replicas own them meanwhile.
        let (start, _) = t.groups[&1].slots.ranges()[0];
        t.moves.insert(9, baton_core::topology::PendingMove { start, end: start + 9, from: 1, to: 3 });
        let p = Placement::from_topology(&t);
        let both: BTreeSet<NodeId> = t.groups[&1].replicas.iter().chain(&t.groups[&3].replicas).copied().collect();
        assert_eq!(p.owners_of_slot(start), both.into_iter().collect::<Vec<_>>().as_slice());
        assert_eq!(p.owners_of_slot(start + 10), t.groups[&1].replicas.as_slice());
    }
}
