//! Baton's node: every Raft group of one process, driven as a sans-IO state machine.
//!
//! # Design
//! A [`Node`] owns one raft-rs `RawNode` and one [`baton_core::StateMachine`] per group. It never
//! reads a clock, sleeps, touches the network or the disk. The runtime (the server crate, or the
//! simulator) feeds it inputs and carries out its outputs:
//!
//! - inputs: [`Node::set_time`] with the monotonic clock, [`Node::tick`], [`Node::step`] with a peer's message,
//!   [`Node::propose`] and [`Node::read`] (reads include keepalives) with client requests, and
//!   [`Node::persisted`] when the last [`WriteBatch`] is on disk;
//! - outputs: [`Node::ready`] returns the [`WriteBatch`] to make durable (all groups, one fsync)
//!   and queues [`Output`]s — messages for peers, replies to requests, and the state machine's
//!   events — which [`Node::take_outputs`] hands over.
//!
//! The runtime's loop is: feed inputs; `let batch = node.ready()`; send the queued messages (a
//! leader's appends go out in parallel with its own fsync, as the Raft thesis allows); write
//! the batch with one fsync; `node.persisted()`; send the queued messages and replies. That loop
//! is written once, in [`Driver`]: the server, the simulator and the node tests all drive their
//! nodes through it, so the simulator runs the production round.
//!
//! Every message, proposal and storage key carries a [`GroupId`]. There is one data group today;
//! sharding adds groups without changing this interface.
//!
//! # Leases and expiry
//! Keepalives never touch the log. The leader keeps each session's deadline in memory on its
//! monotonic clock and proposes [`baton_core::Command::ExpireSessions`] once a deadline passes.
//! Followers never expire anything. A newly elected leader starts every session's deadline at a
//! full TTL from its election (the grace period), so a failover never expires a healthy client.
//!
//! # Reads
//! Reads are linearizable without a log write: they wait for a ReadIndex round (batched: all
//! reads queued since the last round share one) and for the state machine to apply that index.
//!
//! # Caveats
//! - Membership is fixed at bootstrap (every member starts with the same voter list).
//! - A node that loses leadership fails its pending proposals with `NotLeader`; they may still
//!   commit under the new leader, which is why clients retry with the same request id.

pub mod crdt;
pub mod disk;
pub mod driver;
mod group;
pub mod host;
mod lease;
pub mod mem;
pub mod mover;
mod node;
pub mod storage;

pub use disk::{DiskError, EngineStore, GroupWrite, LogStore, Recovered, StoreRecovery, WriteBatch};
pub use driver::{Driver, Effects, RoundError, ROUNDS_PER_BATCH};
pub use group::{decode_conf_change, Proposal};
pub use host::{AcquireResult, Answer, Request, Requests};
pub use mem::MemStore;
pub use node::{
    initial_groups, joining_groups, lease_read_ms, start_groups, EtcdLeaseInfo, GroupStatus, Node, NodeConfig,
    NodeError, Output, Query, Reply, Role, Start, DEFAULT_ELECTION_TICKS,
};

/// Identifies a Raft group (a shard of the namespace).
pub type GroupId = u64;
/// Identifies a node (a process) in the cluster.
pub type NodeId = u64;
/// Identifies a client request inside one node; chosen by the runtime.
pub type RequestId = u64;

/// The first data group (the only one of a cluster started with one group).
pub const DATA_GROUP: GroupId = 1;
/// The group id of messages between nodes rather than groups: once per tick, a node tells each
/// peer which of the groups it leads sleep (hibernation: see `group/sleep.rs`), one message for
/// all of them. Its raft `Message` is a carrier only (type `MsgHeartbeat`, from, to, and
/// (group, term) pairs in `context`); it never reaches raft-rs.
pub const NODE_CHANNEL: GroupId = u64::MAX;
/// The "group" of peer messages that carry the coordination-free tier's gossip
/// ([`crdt::Gossip`], bincode): the transport hands them to the CRDT replica, never to Raft.
pub const CRDT_CHANNEL: GroupId = u64::MAX - 1;
pub use baton_core::META_GROUP;

/// The raft-rs message type, re-exported for the transport.
pub use raft::eraftpb::Message as RaftMessage;
