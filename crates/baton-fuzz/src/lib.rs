//! Fuzz targets for every decoder and input surface of Baton, and a runner that needs only
//! stable Rust (cargo-fuzz and libFuzzer need nightly).
//!
//! # Design
//! A [`Target`] is a production input surface wrapped as `fn(&[u8])`: the bytes are what a
//! client, a peer or a disk could hand Baton (a protobuf request, a peer frame, a log entry, a
//! snapshot file...), and the target pushes them through the *production* decode and
//! validation path, the same functions the server and the node call, never a copy. A target
//! must not panic, hang or allocate without bound on any input; a target may also assert an
//! invariant of what it decoded (a decoded snapshot encodes back to the same state), and a
//! failed assertion is a finding like any panic.
//!
//! Each target also has a generator, [`Target::generate`], that builds *valid* encodings
//! from a byte [`Source`] (the `arbitrary` idea: a structured value is a function of bytes).
//! The [`runner`] mixes three kinds of cases: random bytes, fresh valid encodings, and
//! mutations of valid encodings ([`mutate`]), because random bytes rarely get past a
//! decoder's first tag. It catches panics (`catch_unwind`), times every case on a watchdog,
//! measures each case's allocations ([`alloc`]), and saves a failing input as a hex file that
//! `--replay` runs again.
//!
//! # Caveats
//! - No coverage feedback: mutations are blind (libFuzzer would steer toward new branches).
//!   The generators make up for part of it by building every variant of every message.
//! - A stack overflow aborts the process: `catch_unwind` cannot catch it. Decoders of
//!   recursive types must bound their depth (the etcd transaction decoder does); the runner
//!   prints each target's name before running it, so an abort still says where.
//! - Allocation is measured, not capped: a case that allocates more than the bound is
//!   reported after it returns; one that exhausts the machine's memory still kills the run.

pub mod alloc;
pub mod gen;
pub mod mutate;
pub mod runner;
pub mod source;
pub mod targets;

pub use source::Source;

/// One fuzz target: a production input surface.
pub struct Target {
    /// The name given to `--target` and used for its corpus folder.
    pub name: &'static str,
    /// What the target feeds and to which production functions.
    pub about: &'static str,
    /// Runs one input; must return normally whatever the input.
    pub run: fn(&[u8]),
    /// Builds a valid input from a byte source (the seeds that mutations start from).
    pub generate: fn(&mut Source) -> Vec<u8>,
}

/// Every target, in the order the runner runs them.
pub fn all_targets() -> Vec<Target> {
    targets::all()
}

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    all_targets().into_iter().find(|t| t.name == name)
}
