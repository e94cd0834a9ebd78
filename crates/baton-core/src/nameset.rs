//! [`NameSet`]: the names a session holds or waits for, kept small for the common case.
//!
//! In a sharded cluster a session has a record in every group it uses, and most records own one
//! or two names: a `BTreeSet<String>` spends a 280-byte tree node on each such record (issue 10
//! measured 1.3 GiB for 1M locks over 100k sessions in 12 groups). A few names are kept in a
//! sorted boxed slice sized exactly; past `FEW` (eight) they move to a tree, so a session holding
//! thousands of names keeps logarithmic inserts. Both forms iterate in name order, compare by
//! content and serialise as the same sequence of strings (snapshots are unchanged).

use std::collections::BTreeSet;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Most names kept in the flat form.
const FEW: usize = 8;

/// A set of names in name order.
#[derive(Clone)]
pub enum NameSet {
    /// Sorted, no duplicates, capacity equal to length.
    Few(Box<[Box<str>]>),
    /// More than `FEW` (eight) names.
    Many(BTreeSet<Box<str>>),
}

impl Default for NameSet {
    fn default() -> Self {
        NameSet::Few(Box::new([]))
    }
}

impl NameSet {
    /// An empty set.
    pub fn new() -> NameSet {
        NameSet::default()
    }

    /// True if `name` is in the set.
    pub fn contains(&self, name: &str) -> bool {
        match self {
            NameSet::Few(v) => v.binary_search_by(|n| (**n).cmp(name)).is_ok(),
            NameSet::Many(s) => s.contains(name),
        }
    }

    /// Adds `name`; false if it was there already.
    pub fn insert(&mut self, name: &str) -> bool {
        match self {
            NameSet::Few(v) => {
                let Err(at) = v.binary_search_by(|n| (**n).cmp(name)) else { return false };
                if v.len() < FEW {
                    let mut grown = Vec::with_capacity(v.len() + 1);
                    grown.extend(v[..at].iter().cloned());
                    grown.push(name.into());
                    grown.extend(v[at..].iter().cloned());
                    *v = grown.into_boxed_slice();
                } else {
                    let mut s: BTreeSet<Box<str>> = std::mem::take(v).into_vec().into_iter().collect();
                    s.insert(name.into());
                    *self = NameSet::Many(s);
                }
                true
            }
            NameSet::Many(s) => s.insert(name.into()),
        }
    }

    /// Removes `name`; false if it was not there.
    pub fn remove(&mut self, name: &str) -> bool {
        match self {
            NameSet::Few(v) => {
                let Ok(at) = v.binary_search_by(|n| (**n).cmp(name)) else { return false };
                let mut shrunk = std::mem::take(v).into_vec();
                shrunk.remove(at);
                *v = shrunk.into_boxed_slice();
                true
            }
            NameSet::Many(s) => {
                let removed = s.remove(name);
                if s.len() <= FEW / 2 {
                    let flat: Vec<Box<str>> = std::mem::take(s).into_iter().collect();
                    *self = NameSet::Few(flat.into_boxed_slice());
                }
                removed
            }
        }
    }

    /// How many names.
    pub fn len(&self) -> usize {
        match self {
            NameSet::Few(v) => v.len(),
            NameSet::Many(s) => s.len(),
        }
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The names, in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        let (few, many) = match self {
            NameSet::Few(v) => (Some(v.iter()), None),
            NameSet::Many(s) => (None, Some(s.iter())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten()).map(|n| &**n)
    }
}

impl<'a> Extend<&'a str> for NameSet {
    fn extend<I: IntoIterator<Item = &'a str>>(&mut self, names: I) {
        for n in names {
            self.insert(n);
        }
    }
}

impl<'a> FromIterator<&'a str> for NameSet {
    fn from_iter<I: IntoIterator<Item = &'a str>>(names: I) -> Self {
        let mut set = NameSet::new();
        set.extend(names);
        set
    }
}

impl PartialEq for NameSet {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for NameSet {}

impl std::fmt::Debug for NameSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl Serialize for NameSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        for name in self.iter() {
            seq.serialize_element(name)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for NameSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let names: Vec<String> = Vec::deserialize(deserializer)?;
        Ok(names.iter().map(String::as_str).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the inserts and removals, the set behaves as a `BTreeSet<String>` does, in
        /// both forms and across the change between them, and serialises as one.
        #[test]
        fn behaves_as_a_btreeset(ops in proptest::collection::vec((any::<bool>(), 0u8..24), 0..200)) {
            let (mut set, mut model) = (NameSet::new(), BTreeSet::<String>::new());
            for (add, n) in ops {
                let name = format!("name-{n}");
                if add {
                    prop_assert_eq!(set.insert(&name), model.insert(name.clone()));
                } else {
                    prop_assert_eq!(set.remove(&name), model.remove(&name));
                }
                prop_assert_eq!(set.len(), model.len());
                prop_assert!(set.iter().eq(model.iter().map(String::as_str)));
                prop_assert!(model.iter().all(|m| set.contains(m)));
                if let NameSet::Few(v) = &set {
                    prop_assert!(v.len() <= FEW);
                }
            }
            let bytes = bincode::serialize(&set).unwrap();
            prop_assert_eq!(&bytes, &bincode::serialize(&model).unwrap());
            let back: NameSet = bincode::deserialize(&bytes).unwrap();
            prop_assert_eq!(back, set);
        }
    }
}
