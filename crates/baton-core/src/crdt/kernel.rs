//! The dot kernel: values tagged with the dot of the update that wrote them, joined against the
//! objects' causal contexts. The OR-set (add-wins) and the MV register are both kernels.
//!
//! Joining two kernels keeps an entry if both sides have it, or if one side has it and the
//! other side's context does not contain its dot (the other side has not seen it yet). An entry
//! that one side lacks although its context contains the dot was removed there, and stays
//! removed. Removing therefore needs no tombstone: the context remembers the removed dots, and
//! it stays compact as a version vector.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::context::{Context, Dot};

/// Values by the dot that wrote them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Kernel<V> {
    entries: BTreeMap<Dot, V>,
}

impl<V> Default for Kernel<V> {
    fn default() -> Self {
        Kernel { entries: BTreeMap::new() }
    }
}

impl<V: Clone + PartialEq> Kernel<V> {
    /// Every entry.
    pub fn entries(&self) -> &BTreeMap<Dot, V> {
        &self.entries
    }

    /// The dots of entries whose value `pick` accepts.
    pub fn dots_where(&self, mut pick: impl FnMut(&V) -> bool) -> Vec<Dot> {
        self.entries.iter().filter(|(_, v)| pick(v)).map(|(d, _)| *d).collect()
    }

    /// Adds an entry (its dot must be fresh).
    pub fn insert(&mut self, dot: Dot, value: V) {
        self.entries.insert(dot, value);
    }

    /// Removes the entries whose dots are in `dots`.
    pub fn remove_dots(&mut self, dots: &[Dot]) {
        for d in dots {
            self.entries.remove(d);
        }
    }

    /// Joins `other` (whose context is `theirs`) into `self` (whose context is `ours`). The
    /// caller joins the contexts afterwards.
    pub fn join(&mut self, ours: &Context, other: &Kernel<V>, theirs: &Context) {
        self.entries.retain(|d, _| other.entries.contains_key(d) || !theirs.contains(*d));
        for (d, v) in &other.entries {
            if !ours.contains(*d) && !self.entries.contains_key(d) {
                self.entries.insert(*d, v.clone());
            }
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if there is no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
