//! Baton's gRPC API, generated from the `.proto` files in `proto/` at the repository root.
//!
//! [`v1`] is the client API (sessions, locks, status); [`peer`] is the node-to-node transport;
//! [`etcd`] is the part of etcd v3's API that `baton bench --target etcd` uses.

#![allow(missing_docs, clippy::all)]

/// The client API.
pub mod v1 {
    tonic::include_proto!("baton.v1");
}

/// Node-to-node Raft transport.
pub mod peer {
    tonic::include_proto!("baton.peer.v1");
}

/// A client-side subset of etcd v3's API (`proto/etcd/`), for side-by-side benchmarks.
pub mod etcd {
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
    pub mod v3lockpb {
        tonic::include_proto!("v3lockpb");
    }
    pub mod v3electionpb {
        tonic::include_proto!("v3electionpb");
    }
}
