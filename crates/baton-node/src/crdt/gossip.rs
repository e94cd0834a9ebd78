//! What replicas of the coordination-free tier say to each other, and the digest anti-entropy
//! compares.
//!
//! # Protocol
//! - **Deltas** go to every peer after the round that made them is durable: the fast path, one
//!   message per peer per round, every update of the round joined per object. Nothing is
//!   acknowledged or resent: a lost delta is anti-entropy's job. A set's or MV register's delta
//!   whose causal past has not arrived yet waits at the receiver (up to `retry_ms`, while other
//!   messages may bring that past); then the receiver pulls the sender's whole state instead.
//! - **Anti-entropy** runs every `anti_entropy_ms` with every peer: `Digest` (one hash per
//!   bucket of 256; a bucket is a range of slots, and its hash is the XOR of its objects' hashes,
//!   so it is kept up to date per change) → `Diff` (the responder's key hashes in the buckets
//!   that differ, one page of them) → `States` with what the responder lacks and `Pull` of what
//!   the initiator lacks → `States`. Each step is bounded ([`MAX_KEYS_PER_EXCHANGE`],
//!   [`MAX_STATE_BYTES_PER_MESSAGE`]); the next exchange with the same peer takes the next page.
//! - **Probe** / **ProbeReply**: a converged read asks each live peer for its context of the
//!   object.
//! - **WantRights**: a replica short of a bounded counter's rights asks peers to transfer some.
//!
//! Every message also says the sender is alive: a converged read waits for the peers heard
//! from within `live_ms`.

use serde::{Deserialize, Serialize};

use baton_core::crdt::{Context, Key, Object};

/// Number of digest buckets.
pub const BUCKETS: usize = 256;
/// Most keys one anti-entropy exchange compares or sends.
pub const MAX_KEYS_PER_EXCHANGE: usize = 4096;
/// Most bytes of states in one message (more go in later messages or exchanges).
pub const MAX_STATE_BYTES_PER_MESSAGE: usize = 4 << 20;

/// A place in the (bucket, key) order anti-entropy pages through.
pub type Position = (u16, Key);

/// The updates one round of the sender made to one object, joined.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// The object.
    pub key: Key,
    /// The sender's last dot of the object before the round.
    pub base: u64,
    /// For a set or MV register (empty for the other kinds): the sender's context of the object
    /// before the round's last update, its causal past. A receiver joins the delta only once it
    /// holds all of it but the sender's dots above `base` (the round's own updates, which the
    /// delta brings): see [`Context::ready_for`].
    pub deps: Context,
    /// The joined delta.
    pub state: Object,
}

/// A message between replicas (bincode on the peer stream's CRDT channel).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Gossip {
    /// Updates made on the sender, joined per object.
    Deltas(Vec<Delta>),
    /// The sender's hash of each bucket ([`BUCKETS`] of them).
    Digest(Vec<u64>),
    /// The answer to a digest: the buckets that differ, and the responder's hash of every key
    /// it holds in them after `after` up to `to` (inclusive; `None`: from the start, to the
    /// end), in (bucket, key) order: one page of at most [`MAX_KEYS_PER_EXCHANGE`].
    Diff { buckets: Vec<u16>, hashes: Vec<(Key, u64)>, after: Option<Position>, to: Option<Position> },
    /// Whole states to join.
    States(Vec<(Key, Object)>),
    /// Please send these whole states.
    Pull(Vec<Key>),
    /// What is your context of these objects? (a converged read, by id)
    Probe { id: u64, keys: Vec<Key> },
    /// The answer to a probe (an object the sender does not hold has the empty context).
    ProbeReply { id: u64, contexts: Vec<(Key, Context)> },
    /// The sender needs `n` more of a bounded counter's rights.
    WantRights { key: Key, n: u64 },
}

impl Gossip {
    /// Encodes for the wire.
    pub fn encode(&self) -> Vec<u8> {
        bincode::serialize(self).expect("gossip encodes")
    }

    /// Decodes from the wire, refusing trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Gossip, String> {
        baton_core::crdt::decode_exact(bytes).map_err(|e| format!("undecodable CRDT gossip: {e}"))
    }
}

/// The digest bucket of a key: a range of 64 slots, so that a bucket is one slot range.
pub fn bucket_of(key: &Key) -> usize {
    baton_core::slot_of(&key.name) as usize * BUCKETS / baton_core::SLOTS as usize
}

/// A 64-bit FNV-1a hash of a key and its encoded state: equal states hash equal on every
/// replica (the encoding is canonical: ordered maps, no hashing order).
pub fn hash_of(key: &Key, state: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let key_bytes = bincode::serialize(key).expect("key encodes");
    for b in key_bytes.iter().chain(state) {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Encodes a state for the disk and for hashing.
pub fn encode_state(obj: &Object) -> Vec<u8> {
    bincode::serialize(obj).expect("state encodes")
}

/// Decodes a stored state.
pub fn decode_state(bytes: &[u8]) -> Result<Object, String> {
    baton_core::crdt::decode_exact(bytes).map_err(|e| format!("undecodable CRDT state: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::crdt::Kind;

    #[test]
    fn gossip_round_trips_and_refuses_trailing_bytes() {
        let key = Key::new(Kind::OrSet, "presence").unwrap();
        let msg =
            Gossip::Deltas(vec![Delta { key: key.clone(), base: 3, deps: Context::new(), state: Kind::OrSet.empty() }]);
        let mut bytes = msg.encode();
        assert_eq!(Gossip::decode(&bytes).unwrap(), msg);
        bytes.push(0);
        assert!(Gossip::decode(&bytes).is_err());
        assert!(Gossip::decode(&[0xff; 3]).is_err());
        assert!(bucket_of(&key) < BUCKETS);
    }
}
