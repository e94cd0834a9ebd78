//! Hot names: a bounded top-K of the names with the most contention in one group.
//!
//! A space-saving sketch (Metwally et al.): at most [`CAPACITY`] names are tracked; a name not
//! tracked when the sketch is full takes the place of the one with the least weight and inherits
//! that weight as its possible overcount (`error`). Any name whose true weight exceeds
//! total / [`CAPACITY`] is always in it. The weight of a name is its contention: one per waiter
//! that queued for it plus one per handoff, so uncontended names never push contended ones out.
//!
//! Operators want what is hot now, not since the node started: the sketch keeps two windows of
//! [`WINDOW_MS`] (the current one and the one before) and answers from both. Windows are timed by
//! the observing node's own monotonic clock (not the events' HLC, which another node's clock may
//! have pushed ahead), and a name's first event in a run may fall in its first millisecond.

use std::collections::HashMap;

/// Names tracked per group and window.
pub const CAPACITY: usize = 256;
/// One window of the sketch, in HLC milliseconds of the events.
pub const WINDOW_MS: u64 = 60_000;

/// What is known of one name in a window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameStats {
    /// Contention weight: waiters queued + handoffs.
    pub weight: u64,
    /// How much of `weight` may belong to names this one replaced.
    pub error: u64,
    /// Waiters that queued.
    pub waits: u64,
    /// Grants to a waiter from the queue.
    pub handoffs: u64,
    /// Sum and maximum of those waiters' waits (state-machine ms).
    pub wait_ms_total: u64,
    pub wait_ms_max: u64,
    /// Waits that ended without a grant (timed out, cancelled, session ended).
    pub gave_up: u64,
}

impl NameStats {
    fn merge(&mut self, other: &NameStats) {
        self.weight += other.weight;
        self.error += other.error;
        self.waits += other.waits;
        self.handoffs += other.handoffs;
        self.wait_ms_total += other.wait_ms_total;
        self.wait_ms_max = self.wait_ms_max.max(other.wait_ms_max);
        self.gave_up += other.gave_up;
    }
}

/// One window's sketch.
#[derive(Default)]
struct Sketch {
    names: HashMap<String, NameStats>,
}

impl Sketch {
    /// The entry of `name`, adding it (in place of the lightest entry when full) if `admit`;
    /// `None` if it is not tracked and not admitted.
    fn entry(&mut self, name: &str, admit: bool) -> Option<&mut NameStats> {
        if !self.names.contains_key(name) {
            if !admit {
                return None;
            }
            let mut fresh = NameStats::default();
            if self.names.len() >= CAPACITY {
                let lightest = self.names.iter().min_by_key(|(_, s)| s.weight).map(|(n, s)| (n.clone(), s.weight));
                if let Some((evicted, weight)) = lightest {
                    self.names.remove(&evicted);
                    fresh.weight = weight;
                    fresh.error = weight;
                }
            }
            self.names.insert(name.to_string(), fresh);
        }
        self.names.get_mut(name)
    }
}

/// The two windows of one group.
#[derive(Default)]
pub struct HotNames {
    current: Sketch,
    previous: Sketch,
    /// Start of the current window (the observer's clock, ms); `None` before the first event.
    window_start: Option<u64>,
}

impl HotNames {
    fn roll(&mut self, now_ms: u64) {
        let start = *self.window_start.get_or_insert(now_ms);
        if now_ms >= start + 2 * WINDOW_MS {
            // Nothing happened for two windows: both are stale.
            self.previous = Sketch::default();
            self.current = Sketch::default();
            self.window_start = Some(now_ms);
        } else if now_ms >= start + WINDOW_MS {
            self.previous = std::mem::take(&mut self.current);
            self.window_start = Some(start + WINDOW_MS);
        }
    }

    /// A waiter queued for `name`.
    pub fn queued(&mut self, now_ms: u64, name: &str) {
        self.roll(now_ms);
        if let Some(s) = self.current.entry(name, true) {
            s.weight += 1;
            s.waits += 1;
        }
    }

    /// A waiter of `name` was granted after `waited_ms`.
    pub fn handed_off(&mut self, now_ms: u64, name: &str, waited_ms: u64) {
        self.roll(now_ms);
        if let Some(s) = self.current.entry(name, true) {
            s.weight += 1;
            s.handoffs += 1;
            s.wait_ms_total += waited_ms;
            s.wait_ms_max = s.wait_ms_max.max(waited_ms);
        }
    }

    /// A waiter of `name` left without the lock (counted only for names already tracked: giving
    /// up adds no contention of its own).
    pub fn gave_up(&mut self, now_ms: u64, name: &str) {
        self.roll(now_ms);
        if let Some(s) = self.current.entry(name, false) {
            s.gave_up += 1;
        }
    }

    /// The tracked names with both windows' figures, heaviest first (at most `limit`), as of
    /// `now_ms` (windows older than two windows are dropped).
    pub fn top(&self, now_ms: u64, limit: usize) -> Vec<(String, NameStats)> {
        let Some(start) = self.window_start else { return Vec::new() };
        let age = now_ms.saturating_sub(start);
        let mut all: HashMap<&str, NameStats> = HashMap::new();
        let windows: &[&Sketch] = if age >= 2 * WINDOW_MS {
            &[]
        } else if age >= WINDOW_MS {
            &[&self.current]
        } else {
            &[&self.current, &self.previous]
        };
        for w in windows {
            for (name, s) in &w.names {
                all.entry(name).or_default().merge(s);
            }
        }
        let mut top: Vec<(String, NameStats)> = all.into_iter().map(|(n, s)| (n.to_string(), s)).collect();
        top.sort_by(|a, b| b.1.weight.cmp(&a.1.weight).then_with(|| a.0.cmp(&b.0)));
        top.truncate(limit);
        top
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heavy_name_survives_a_flood_of_light_ones() {
        let mut h = HotNames::default();
        for i in 0..50 {
            h.queued(1_000, "hot");
            h.handed_off(1_000, "hot", i);
        }
        for i in 0..10 * CAPACITY {
            h.queued(1_000, &format!("cold-{i}"));
        }
        let top = h.top(1_000, 3);
        assert_eq!(top[0].0, "hot");
        assert_eq!((top[0].1.waits, top[0].1.handoffs, top[0].1.wait_ms_max, top[0].1.error), (50, 50, 49, 0));
        assert_eq!(top[0].1.wait_ms_total, (0..50).sum::<u64>());
        assert!(h.current.names.len() <= CAPACITY);
    }

    #[test]
    fn windows_age_out() {
        let mut h = HotNames::default();
        h.queued(1_000, "a");
        h.queued(1_000 + WINDOW_MS, "b");
        let names: Vec<String> = h.top(1_000 + WINDOW_MS, 10).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["a", "b"]);
        // One window later "a" is gone; two windows after the last event, everything is.
        let names: Vec<String> = h.top(1_000 + 2 * WINDOW_MS, 10).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["b"]);
        assert!(h.top(1_000 + 3 * WINDOW_MS, 10).is_empty());
        h.queued(1_000 + 5 * WINDOW_MS, "c");
        let names: Vec<String> = h.top(1_000 + 5 * WINDOW_MS, 10).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["c"]);
    }

    #[test]
    fn an_event_at_time_zero_counts() {
        let mut h = HotNames::default();
        h.queued(0, "early");
        assert_eq!(h.top(0, 10)[0].0, "early");
        assert_eq!(h.top(WINDOW_MS - 1, 10)[0].1.waits, 1);
    }

    #[test]
    fn giving_up_does_not_admit_a_name() {
        let mut h = HotNames::default();
        h.gave_up(5, "x");
        assert!(h.top(5, 10).is_empty());
        h.queued(5, "x");
        h.gave_up(5, "x");
        assert_eq!(h.top(5, 10)[0].1.gave_up, 1);
    }
}
