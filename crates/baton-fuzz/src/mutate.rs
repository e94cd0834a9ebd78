//! Case generation: a seeded generator, and mutations of valid encodings.
//!
//! Purely random bytes rarely get past a decoder's first tag, so most cases are mutations of
//! real encodings (each target's [`crate::Target::generate`] builds them): bit flips,
//! interesting bytes, truncations, extensions, splices with another encoding, duplicated or
//! removed chunks, and tweaks of length fields (bincode's 8-byte little-endian lengths,
//! protobuf's varints), which is where decoders go wrong: a huge length must be refused before
//! anything is allocated for it.

/// splitmix64: small, fast, and good enough to pick mutations; one seed replays a run.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 if `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// Values a length or count field is set to by [`mutate`].
const LENGTHS: [u64; 9] = [0, 1, 7, 0x7f, 0x80, 0xffff, 1 << 31, 1 << 40, u64::MAX];

/// Applies one to four mutations to `input`; `other` is another valid encoding to splice in.
pub fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8]) {
    for _ in 0..1 + rng.below(4) {
        mutate_once(rng, input, other);
    }
}

fn mutate_once(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8]) {
    let len = input.len();
    let at = rng.below(len.max(1));
    match rng.below(10) {
        0 if len > 0 => input[at] ^= 1 << rng.below(8),
        1 if len > 0 => input[at] = [0, 1, 0x7f, 0x80, 0xff][rng.below(5)],
        2 => input.truncate(at),
        3 => {
            let len = 1 + rng.below(16);
            let extra = rng.bytes(len);
            input.extend(extra);
        }
        4 if !other.is_empty() => {
            // Splice: our head, the other's tail.
            let from = rng.below(other.len());
            input.truncate(at);
            input.extend_from_slice(&other[from..]);
        }
        5 if len > 1 => {
            let end = (at + 1 + rng.below(32)).min(len);
            let chunk = input[at..end].to_vec();
            let to = rng.below(len);
            input.splice(to..to, chunk);
        }
        6 if len > 1 => {
            let end = (at + 1 + rng.below(16)).min(len);
            input.drain(at..end);
        }
        7 if len >= 8 => {
            // A bincode length or count: eight bytes, little-endian.
            let at = rng.below(len - 7);
            let value = LENGTHS[rng.below(LENGTHS.len())];
            input[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
        8 => {
            // A protobuf varint: replaced by a large one (or one that never ends).
            let value = LENGTHS[rng.below(LENGTHS.len())];
            let mut varint = Vec::new();
            let mut v = value;
            loop {
                let more = v >= 0x80;
                varint.push((v as u8 & 0x7f) | if more { 0x80 } else { 0 });
                v >>= 7;
                if !more {
                    break;
                }
            }
            if rng.below(4) == 0 {
                varint = vec![0xff; 11];
            }
            let end = (at + 1).min(len);
            input.splice(at..end, varint);
        }
        _ if len > 0 => input[at] = input[at].wrapping_add(1 + rng.below(4) as u8),
        _ => {
            let len = 1 + rng.below(8);
            input.extend(rng.bytes(len));
        }
    }
}
