//! Hybrid logical clocks and event sequence numbers.
//!
//! Every event the state machine emits gets a sequence number (per group, gap-free, identical on
//! every replica, part of every snapshot) so that a watcher can resume after a reconnect — on any
//! node — without missing or duplicating events; and a hybrid logical clock timestamp: the
//! proposing leader's wall clock when it is ahead, otherwise the previous timestamp with its
//! logical counter incremented. Both are computed in `apply` from the log alone, so they are
//! deterministic; the wall clock enters only as data in the entry.

use serde::{Deserialize, Serialize};

/// A hybrid logical clock timestamp: ordered by physical time, then by the logical counter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hlc {
    /// Milliseconds since the Unix epoch, as the proposing leader's wall clock read them (never
    /// decreasing).
    pub physical_ms: u64,
    /// Orders timestamps with the same physical part.
    pub logical: u32,
}

impl Hlc {
    /// The next timestamp after `self`, given a wall-clock reading.
    pub fn next(self, wall_ms: u64) -> Hlc {
        if wall_ms > self.physical_ms {
            Hlc { physical_ms: wall_ms, logical: 0 }
        } else if self.logical == u32::MAX {
            // The logical part is spent: carry into the physical part, so the next timestamp
            // is still strictly greater (never equal: equal stamps would order nothing).
            Hlc { physical_ms: self.physical_ms.saturating_add(1), logical: 0 }
        } else {
            Hlc { physical_ms: self.physical_ms, logical: self.logical + 1 }
        }
    }
}
