//! The targets, one module per input surface; [`all`] lists them.
//!
//! Where a surface's input has several message types, the input's first byte picks the type
//! and the rest is its encoding ([`split`]), so that one target covers them all and a saved
//! input says which it was.

mod client;
mod commands;
mod crdt;
mod etcd;
mod forward;
mod log;
mod peer;
mod raft_step;
mod snapshot;

use crate::Target;

/// Every target.
pub fn all() -> Vec<Target> {
    vec![
        client::TARGET,
        peer::TARGET,
        forward::TARGET,
        etcd::TARGET,
        log::TARGET,
        snapshot::TARGET,
        snapshot::FILE_TARGET,
        commands::TARGET,
        raft_step::TARGET,
        crdt::TARGET,
    ]
}

/// The message type an input is (its first byte, modulo `types`) and the rest of it.
pub fn split(input: &[u8], types: u8) -> (u8, &[u8]) {
    match input.split_first() {
        Some((first, rest)) => (first % types, rest),
        None => (0, input),
    }
}

/// An input of message type `kind`: the tag byte, then the encoding.
pub fn tagged(kind: u8, encoding: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoding.len() + 1);
    out.push(kind);
    out.extend(encoding);
    out
}
