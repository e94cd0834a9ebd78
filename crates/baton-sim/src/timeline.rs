//! The simulators' event queue: events in virtual-time order, events at the same instant in the
//! order they were scheduled (so a seed replays the same history).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use crate::check::Time;

/// Scheduled events of type `E`.
pub(crate) struct Timeline<E> {
    queue: BinaryHeap<Reverse<(Time, u64)>>,
    events: BTreeMap<u64, E>,
    next: u64,
}

impl<E> Timeline<E> {
    pub(crate) fn new() -> Self {
        Timeline { queue: BinaryHeap::new(), events: BTreeMap::new(), next: 0 }
    }

    /// Schedules `ev` at virtual time `t`.
    pub(crate) fn at(&mut self, t: Time, ev: E) {
        let id = self.next;
        self.next += 1;
        self.events.insert(id, ev);
        self.queue.push(Reverse((t, id)));
    }

    /// The next event and its time.
    pub(crate) fn pop(&mut self) -> Option<(Time, E)> {
        let Reverse((t, id)) = self.queue.pop()?;
        Some((t, self.events.remove(&id).expect("a scheduled event")))
    }
}
