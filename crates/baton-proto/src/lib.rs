//! Baton's gRPC API, generated from the `.proto` files in `proto/` at the repository root.
//!
//! [`v1`] is the client API (sessions, locks, status); [`peer`] is the node-to-node transport;
//! [`etcd`] is the part of etcd v3's API that Baton serves and `baton bench --target etcd` uses.

#![allow(missing_docs, clippy::all)]

/// The client API.
pub mod v1 {
    tonic::include_proto!("baton.v1");
}

/// Node-to-node Raft transport.
pub mod peer {
    tonic::include_proto!("baton.peer.v1");
}

/// The part of etcd v3's API that Baton serves (`proto/etcd/`), client and server sides.
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

/// The binary metadata key that carries a unary call's [`v1::ErrorInfo`].
pub const ERROR_INFO_METADATA: &str = "baton-error-bin";

impl v1::ErrorInfo {
    /// Attaches this detail to `status` (as `baton-error-bin` metadata), for the client to act on.
    pub fn attach(&self, status: &mut tonic::Status) {
        use prost::Message;
        let value = tonic::metadata::MetadataValue::from_bytes(&self.encode_to_vec());
        status.metadata_mut().insert_bin(ERROR_INFO_METADATA, value);
    }

    /// The detail a server attached to `status`, if any (and if it decodes).
    pub fn of(status: &tonic::Status) -> Option<v1::ErrorInfo> {
        use prost::Message;
        let bytes = status.metadata().get_bin(ERROR_INFO_METADATA)?.to_bytes().ok()?;
        v1::ErrorInfo::decode(bytes).ok()
    }
}
