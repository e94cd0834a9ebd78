//! Hash slots: how names are spread over Raft groups.
//!
//! Every name hashes to one of [`SLOTS`] slots with CRC-16/XMODEM (the hash Redis Cluster uses,
//! so a user can compute a name's slot with the tools they know). If the name contains a
//! `{...}` with at least one byte between the first `{` and the next `}`, only those bytes are
//! hashed: `{order:17}:lock` and `{order:17}:seq` share a slot, hence a group, hence one Raft
//! log and one token counter.
//!
//! Slots, not names, are assigned to groups: a group's state machine holds the [`SlotSet`] it
//! serves and refuses any name outside it ([`crate::Error::NotOwned`]), so a request that
//! reaches the wrong group because the sender's map is stale is refused whole, never answered
//! wrongly.

use serde::{Deserialize, Serialize};

/// How many hash slots the namespace has.
pub const SLOTS: u16 = 16_384;

/// A hash slot, `0..SLOTS`.
pub type Slot = u16;

/// CRC-16/XMODEM (polynomial 0x1021, initial value 0, no reflection).
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// The part of `name` that is hashed: the first non-empty `{tag}`, or the whole name.
pub fn hash_tag(name: &str) -> &[u8] {
    let bytes = name.as_bytes();
    if let Some(open) = bytes.iter().position(|&b| b == b'{') {
        if let Some(len) = bytes[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &bytes[open + 1..open + 1 + len];
            }
        }
    }
    bytes
}

/// The slot of a name.
pub fn slot_of(name: &str) -> Slot {
    crc16(hash_tag(name)) % SLOTS
}

/// A set of slots, as a bitmap (2 KiB): membership is one bit test on every command.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotSet {
    words: Vec<u64>,
}

const WORDS: usize = SLOTS as usize / 64;

impl SlotSet {
    /// No slots.
    pub fn empty() -> SlotSet {
        SlotSet { words: vec![0; WORDS] }
    }

    /// Every slot.
    pub fn all() -> SlotSet {
        SlotSet { words: vec![u64::MAX; WORDS] }
    }

    /// The slots `start..=end` (empty if `start > end`; `end` is capped at the last slot).
    pub fn range(start: Slot, end: Slot) -> SlotSet {
        let mut s = SlotSet::empty();
        s.insert_range(start, end);
        s
    }

    /// True if `slot` is in the set.
    pub fn contains(&self, slot: Slot) -> bool {
        let i = slot as usize;
        i < SLOTS as usize && self.words[i / 64] & (1 << (i % 64)) != 0
    }

    /// Adds `start..=end`.
    pub fn insert_range(&mut self, start: Slot, end: Slot) {
        for s in start..=end.min(SLOTS - 1) {
            self.words[s as usize / 64] |= 1 << (s as usize % 64);
        }
    }

    /// Removes `start..=end`.
    pub fn remove_range(&mut self, start: Slot, end: Slot) {
        for s in start..=end.min(SLOTS - 1) {
            self.words[s as usize / 64] &= !(1 << (s as usize % 64));
        }
    }

    /// True if every slot of `start..=end` is in the set.
    pub fn contains_range(&self, start: Slot, end: Slot) -> bool {
        start <= end && end < SLOTS && (start..=end).all(|s| self.contains(s))
    }

    /// How many slots the set has.
    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// True if the set has no slot.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// The set as maximal inclusive ranges, in order.
    pub fn ranges(&self) -> Vec<(Slot, Slot)> {
        let mut out: Vec<(Slot, Slot)> = Vec::new();
        for s in 0..SLOTS {
            if !self.contains(s) {
                continue;
            }
            match out.last_mut() {
                Some((_, end)) if *end + 1 == s => *end = s,
                _ => out.push((s, s)),
            }
        }
        out
    }
}

impl std::fmt::Debug for SlotSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", format_ranges(&self.ranges()))
    }
}

/// `0-99,200,300-399`: ranges as people (and `baton status`) write them.
pub fn format_ranges(ranges: &[(Slot, Slot)]) -> String {
    let parts: Vec<String> =
        ranges.iter().map(|(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect();
    parts.join(",")
}

/// Parses `START-END` (or one slot) into an inclusive range, with a message saying what is wrong.
pub fn parse_range(text: &str) -> Result<(Slot, Slot), String> {
    let parse = |s: &str| -> Result<Slot, String> {
        let v: u32 = s.trim().parse().map_err(|_| format!("{s:?} is not a slot number"))?;
        if v >= SLOTS as u32 {
            return Err(format!("slot {v} is out of range (slots are 0..={})", SLOTS - 1));
        }
        Ok(v as Slot)
    };
    let (a, b) = match text.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => {
            let s = parse(text)?;
            (s, s)
        }
    };
    if a > b {
        return Err(format!("slot range {text:?} starts after it ends"));
    }
    Ok((a, b))
}

/// The slots `0..SLOTS` cut into `groups` contiguous ranges of nearly equal size; range `i`
/// (0-based) goes to data group `i + 1`.
pub fn even_split(groups: u64) -> Vec<(Slot, Slot)> {
    let n = groups.clamp(1, SLOTS as u64);
    (0..n)
        .map(|i| {
            let start = (i * SLOTS as u64 / n) as Slot;
            let end = ((i + 1) * SLOTS as u64 / n - 1) as Slot;
            (start, end)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster() {
        // The check value of CRC-16/XMODEM, and slots Redis Cluster documents.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot_of("foo"), 12182);
        assert_eq!(slot_of("{user1000}.following"), slot_of("{user1000}.followers"));
        assert_eq!(slot_of("{user1000}.following"), slot_of("user1000"));
        // An empty tag hashes the whole name; only the first `{` counts.
        assert_eq!(slot_of("foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        assert_eq!(slot_of("foo{{bar}}zap"), slot_of("{bar"));
        assert_eq!(slot_of("foo{bar}{zap}"), slot_of("bar"));
        assert_eq!(hash_tag("no-brace}"), b"no-brace}");
    }

    #[test]
    fn sets_and_ranges() {
        let mut s = SlotSet::range(10, 20);
        s.insert_range(30, 30);
        s.insert_range(21, 25);
        assert_eq!(s.ranges(), vec![(10, 25), (30, 30)]);
        assert_eq!(s.len(), 17);
        s.remove_range(12, 30);
        assert_eq!(format!("{s:?}"), "10-11");
        assert!(s.contains_range(10, 11) && !s.contains_range(10, 12));
        assert_eq!(SlotSet::all().len(), SLOTS as usize);
        assert!(SlotSet::empty().is_empty());
        assert_eq!(parse_range("5-9"), Ok((5, 9)));
        assert_eq!(parse_range("7"), Ok((7, 7)));
        assert!(parse_range("9-5").unwrap_err().contains("starts after"));
        assert!(parse_range("0-16384").unwrap_err().contains("out of range"));
        assert!(parse_range("x").is_err());
    }

    #[test]
    fn even_split_covers_every_slot_once() {
        for n in [1, 2, 3, 7, 12, 100, 16_384] {
            let parts = even_split(n);
            assert_eq!(parts.len() as u64, n);
            assert_eq!(parts[0].0, 0);
            assert_eq!(parts.last().unwrap().1, SLOTS - 1);
            for w in parts.windows(2) {
                assert_eq!(w[0].1 + 1, w[1].0);
            }
        }
    }
}
