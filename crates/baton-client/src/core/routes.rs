//! Which group serves a name, and which node to ask for a group.
//!
//! The client keeps a [`SlotMap`] (slot -> group, with the version of the meta group's map it
//! came from) and, per group, the leader it last heard of. A request about a name goes to the
//! leader of the group serving the name's slot; a request about a group (a session's attach or
//! close) to that group's leader; anything else to the current endpoint. A stale map costs one
//! redirect: the group that no longer serves the slot answers `Moved` with the group that does
//! and its leader, which the client records ([`SlotMap::moved`]) before asking again. The whole
//! map is refreshed from any node's `Topology` whenever that happens (by the async client).

use std::collections::BTreeMap;

use baton_core::slots::{slot_of, Slot, SLOTS};

use super::Route;

/// Slot -> group, as of a version of the meta group's map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotMap {
    version: u64,
    owner: Vec<u64>,
}

impl Default for SlotMap {
    fn default() -> Self {
        SlotMap::new()
    }
}

impl SlotMap {
    /// Before any map is known: every slot to group 1 (right for a one-group cluster, and a
    /// redirect away from right for any other).
    pub fn new() -> SlotMap {
        SlotMap { version: 0, owner: vec![1; SLOTS as usize] }
    }

    /// The version of the map this one came from (0: none yet).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The group serving `name`'s slot.
    pub fn group_of(&self, name: &str) -> u64 {
        self.owner[slot_of(name) as usize]
    }

    /// Takes a whole map of `version` (each group with its inclusive slot ranges), unless the
    /// one held is newer. Returns true if taken.
    pub fn replace(&mut self, version: u64, groups: &[(u64, Vec<(Slot, Slot)>)]) -> bool {
        // Only a newer map: one of the same version may predate a redirect recorded since (a
        // move's hand-off changes where a slot is served before the map's next version).
        if version <= self.version && self.version != 0 {
            return false;
        }
        let mut owner = vec![0; SLOTS as usize];
        for (group, ranges) in groups {
            for &(a, b) in ranges {
                for s in a..=b.min(SLOTS - 1) {
                    owner[s as usize] = *group;
                }
            }
        }
        // A slot nobody serves in that map (a move under way) keeps the group it had.
        for (new, old) in owner.iter_mut().zip(&self.owner) {
            if *new == 0 {
                *new = *old;
            }
        }
        self.owner = owner;
        self.version = version;
        true
    }

    /// A redirect said `slot` is served by `group` (0: by nobody right now) in a map of
    /// `version`: route it there until a whole map says otherwise.
    pub fn moved(&mut self, slot: Slot, group: u64, version: u64) {
        if group != 0 && version >= self.version {
            self.owner[slot as usize] = group;
        }
    }
}

/// Where each request goes: the slot map, the leader of each group, and the endpoints to fall
/// back on (see [`Route`]) when a group's leader is not known.
#[derive(Clone, Debug)]
pub struct Routes<A> {
    fallback: Route<A>,
    leaders: BTreeMap<u64, A>,
    /// The slot map requests are routed by.
    pub map: SlotMap,
}

impl<A: Clone + PartialEq> Routes<A> {
    /// Routes over `endpoints` (not empty), starting at the one at `start`, with no map yet.
    pub fn new(endpoints: Vec<A>, start: usize) -> Routes<A> {
        Routes { fallback: Route::new(endpoints, start), leaders: BTreeMap::new(), map: SlotMap::new() }
    }

    /// The address for a request to `group` (`None`: to no group in particular).
    pub fn target(&self, group: Option<u64>) -> A {
        group.and_then(|g| self.leaders.get(&g)).unwrap_or_else(|| self.fallback.current()).clone()
    }

    /// The endpoints rotation goes through.
    pub fn endpoints(&self) -> &[A] {
        self.fallback.endpoints()
    }

    /// Replaces the endpoints (with the nodes a topology lists).
    pub fn set_endpoints(&mut self, endpoints: Vec<A>) {
        self.fallback.set_endpoints(endpoints);
    }

    /// `leader` leads `group` (from a topology, or a node that answered for it).
    pub fn set_leader(&mut self, group: u64, leader: A) {
        self.leaders.insert(group, leader);
    }

    /// Every leader address known (each once).
    pub fn leaders(&self) -> impl Iterator<Item = &A> {
        let mut seen: Vec<&A> = Vec::new();
        self.leaders.values().filter(move |a| {
            let new = !seen.contains(a);
            if new {
                seen.push(a);
            }
            new
        })
    }

    /// The leader known for `group`.
    pub fn leader(&self, group: u64) -> Option<&A> {
        self.leaders.get(&group)
    }

    /// An attempt for `group` at `failed` did not succeed: go to `leader` (a redirect's) if
    /// given, else forget `failed` as the group's leader and rotate the fallback. Returns true if
    /// the next attempt goes to a leader the client was told of (worth trying at once).
    pub fn moved_on(&mut self, group: Option<u64>, failed: &A, leader: Option<A>) -> bool {
        if let Some(g) = group {
            match leader.filter(|l| l != failed) {
                Some(l) => {
                    self.leaders.insert(g, l);
                    return true;
                }
                None => {
                    if self.leaders.get(&g) == Some(failed) {
                        self.leaders.remove(&g);
                    }
                }
            }
            return self.fallback.moved_on(failed, None);
        }
        self.fallback.moved_on(failed, leader)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_route_by_slot_and_redirects_are_recorded() {
        let mut map = SlotMap::new();
        assert_eq!(map.group_of("anything"), 1);
        let foo = slot_of("foo");
        assert!(map.replace(3, &[(1, vec![(0, 8191)]), (2, vec![(8192, 16383)])]));
        assert_eq!(map.group_of("foo"), 2, "slot {foo}");
        assert!(!map.replace(2, &[(1, vec![(0, 16383)])]), "an older map is ignored");
        assert!(!map.replace(3, &[(1, vec![(0, 16383)])]), "as is one of the same version");
        map.moved(foo, 5, 3);
        assert_eq!(map.group_of("foo"), 5);
        map.moved(foo, 6, 2);
        assert_eq!(map.group_of("foo"), 5, "an older redirect is ignored");
        map.moved(foo, 0, 9);
        assert_eq!(map.group_of("foo"), 5, "no owner right now: keep asking the last one");
        // A map with a hole (a move under way) keeps the old owner for it.
        assert!(map.replace(4, &[(1, vec![(0, 8191)])]));
        assert_eq!(map.group_of("foo"), 5);
        assert_eq!(map.version(), 4);
    }

    #[test]
    fn each_group_goes_to_its_leader_and_falls_back_to_rotation() {
        let mut r = Routes::new(vec![1u64, 2, 3], 0);
        assert_eq!(r.target(Some(7)), 1);
        r.set_leader(7, 3);
        assert_eq!(r.target(Some(7)), 3);
        assert_eq!(r.target(None), 1);
        assert!(r.moved_on(Some(7), &3, Some(2)));
        assert_eq!(r.target(Some(7)), 2);
        assert!(r.moved_on(Some(7), &2, None), "the fallback is elsewhere already");
        assert_eq!(r.target(Some(7)), 1, "no leader known: the fallback");
        assert_eq!(r.leader(7), None);
        assert!(!r.moved_on(None, &1, None));
        assert_eq!(r.target(Some(7)), 2, "rotation");
    }
}
