//! A byte stream read as structured choices: the `arbitrary` idea, written small.
//!
//! Generators build values from a [`Source`] instead of from a random generator, so a value is
//! a function of its bytes: a structured case can be saved as bytes, mutated as bytes and
//! replayed from bytes. An exhausted source reads as zeros, so every byte string builds
//! *something* (short inputs build small, mostly-default values), and generation never fails.

/// Reads choices from a byte slice, front to back.
pub struct Source<'a> {
    bytes: &'a [u8],
}

impl<'a> Source<'a> {
    /// A source over `bytes`.
    pub fn new(bytes: &'a [u8]) -> Source<'a> {
        Source { bytes }
    }

    /// True once every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The next byte (0 once exhausted).
    pub fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.bytes.split_first() else { return 0 };
        self.bytes = rest;
        b
    }

    /// A boolean (one byte's low bit).
    pub fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// An integer below `n` (0 if `n` is 0): small ranges read one byte, larger ones more.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let raw = if n <= 256 { u64::from(self.byte()) } else { self.raw_u64() };
        raw % n
    }

    /// An index into a list of `len` items.
    pub fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// Eight bytes, little-endian.
    fn raw_u64(&mut self) -> u64 {
        let mut v = [0u8; 8];
        for b in &mut v {
            *b = self.byte();
        }
        u64::from_le_bytes(v)
    }

    /// A `u64` biased toward the values decoders trip on: 0, 1, small numbers, boundaries.
    pub fn u64(&mut self) -> u64 {
        match self.byte() % 8 {
            0 => 0,
            1 => 1,
            2 => u64::MAX - self.below(2),
            3 => u64::from(u32::MAX) + self.below(3) - 1,
            4 => 1 << self.below(64),
            5 | 6 => self.below(16),
            _ => self.raw_u64(),
        }
    }

    /// An `i64` with the same bias (and negatives).
    pub fn i64(&mut self) -> i64 {
        match self.byte() % 4 {
            0 => i64::MIN + self.below(2) as i64,
            1 => -(self.below(16) as i64),
            _ => self.u64() as i64,
        }
    }

    /// A `u32` (the low half of [`Source::u64`]).
    pub fn u32(&mut self) -> u32 {
        self.u64() as u32
    }

    /// Up to `max` bytes.
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.index(max + 1);
        (0..len).map(|_| self.byte()).collect()
    }

    /// Every byte not read yet.
    pub fn rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.bytes).to_vec()
    }

    /// A name-like string from a small alphabet (so that names collide), sometimes long or
    /// empty, sometimes with multi-byte characters.
    pub fn name(&mut self) -> String {
        const SHORT: [&str; 6] = ["a", "b", "c", "lock/x", "é", "\u{0}"];
        match self.byte() % 16 {
            0 => String::new(),
            1 => "n".repeat(1 + self.index(1100)),
            2 => String::from_utf8_lossy(&self.bytes(12)).into_owned(),
            _ => SHORT[self.index(SHORT.len())].to_string(),
        }
    }
}
