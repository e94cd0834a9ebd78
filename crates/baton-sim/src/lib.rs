//! Deterministic simulation of whole Baton clusters.
//!
//! # Design
//! One thread, virtual time, one seed. The simulator drives the *production* node code
//! ([`baton_node::Node`] with [`baton_node::Requests`]) through its injected inputs: each node
//! gets its own monotonic clock (offset and drift), its own "disk" ([`baton_node::MemStore`],
//! which keeps exactly what was fsynced), and a network the simulator owns. Everything random —
//! message delays, loss, faults, the client workload, raft-rs's election timeouts (through
//! [`baton_node::NodeConfig::seed`]) — is drawn from one ChaCha generator seeded with the run's
//! `u64` seed, so a seed replays the same history bit for bit.
//!
//! A run has a fault phase, during which a nemesis injects the enabled [`Faults`], and a heal
//! phase: every fault is lifted and clients keep working, so that liveness can be checked.
//!
//! # Checkers (over the recorded history)
//! - **agreement**: every application of a log index, on any node, before or after restarts,
//!   emits the same events (catches divergence and lost acknowledged writes);
//! - **fencing**: per name, tokens of grants strictly increase in log order; no token is issued
//!   twice; every grant a client received is in the log;
//! - **mutual exclusion**: no two sessions hold one name at the same virtual instant, where a
//!   client holds from receiving a grant until it sends the release or its lease runs out on its
//!   own (drifting) clock;
//! - **liveness after heal**: once faults stop, every wait ends (granted or timed out) in time;
//! - **linearizability** of the counter (and of describes: a holder is listed), **register**
//!   (versions and reads in real-time order), **latch** (a waiter passes only through the log,
//!   and a queued one only when the count reaches zero), **barrier**, **once** (no request, and
//!   no acquire call, is granted twice; re-sent old requests and opens get the same outcome),
//!   **one-kind** (a command of another kind never applies to a held name), **election** (the
//!   leader's proclaim is accepted, a stale token's refused).
//!
//! # Clients
//! The simulated client runs the real client's rules — [`baton_client::core`]: lease deadline,
//! renewal schedule and rotation, retry decisions per operation, request ids — and only supplies
//! the I/O (`client.rs`); its workload covers every command (`workload.rs`).
//!
//! # Caveats
//! - A call is retried until it ends: the real client's overall request timeout is not
//!   modelled (the liveness checker bounds waits instead).
//! - Clients talk to nodes through the same [`baton_node::Requests`] layer as the gRPC server,
//!   not through gRPC itself; the gRPC layer is covered by the process-level tests.

mod check;
mod client;
pub mod crdt;
mod timeline;
mod workload;
mod world;

pub use baton_core::Bugs;
pub use check::Violation;
pub use crdt::{crdt_throughput, run_crdt, Cost, CrdtSimConfig, CrdtSimReport};
pub use world::{run, Coverage, Faults, SimConfig, SimReport};
