//! Baton's gRPC API, generated from the `.proto` files in `proto/` at the repository root.
//!
//! [`v1`] is the client API (sessions, locks, status); [`peer`] is the node-to-node transport.

#![allow(missing_docs, clippy::all)]

/// The client API.
pub mod v1 {
    tonic::include_proto!("baton.v1");
}

/// Node-to-node Raft transport.
pub mod peer {
    tonic::include_proto!("baton.peer.v1");
}
