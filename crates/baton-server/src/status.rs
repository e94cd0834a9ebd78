//! The one place where errors become gRPC statuses with messages a person can act on.

use baton_node::NodeError;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::runtime::NodeHandle;

/// Metadata key carrying the leader's client address on a redirect.
pub const LEADER_METADATA: &str = "baton-leader";

/// Maps a node error to a status; `NotLeader` carries the leader's address when it is known.
pub fn to_status(err: NodeError, node: &NodeHandle) -> Status {
    use baton_core::Error as E;
    match err {
        NodeError::NotLeader { group, leader: Some(leader) } => match node.client_addr(leader) {
            Some(addr) => {
                let mut status = Status::unavailable(format!("node {} is not the leader of group {group}; the leader is node {leader} at {addr}", node.id));
                if let Ok(v) = MetadataValue::try_from(addr.as_str()) {
                    status.metadata_mut().insert(LEADER_METADATA, v);
                }
                status
            }
            None => Status::unavailable(format!("node {} is not the leader of group {group}; the leader is node {leader}, whose address is not known yet: retry", node.id)),
        },
        NodeError::NotLeader { group, leader: None } => {
            Status::unavailable(format!("group {group} has no leader right now (election in progress or no quorum): retry shortly"))
        }
        NodeError::Rejected(e) => {
            let code = match &e {
                E::InvalidArgument(_) => Code::InvalidArgument,
                E::LimitExceeded(_) => Code::ResourceExhausted,
                E::SessionNotFound(_) => Code::NotFound,
                E::NotHolder { .. }
                | E::AlreadyOwned { .. }
                | E::RequestCompleted { .. }
                | E::WrongKind { .. }
                | E::RetryTooLate { .. } => Code::FailedPrecondition,
            };
            Status::new(code, e.to_string())
        }
        NodeError::Unavailable(msg) => Status::unavailable(msg),
        NodeError::Busy(_) => Status::resource_exhausted(err.to_string()),
        NodeError::NoGroup(_) => Status::not_found(err.to_string()),
    }
}

/// The node thread stopped (the server is shutting down).
pub fn stopped() -> Status {
    Status::unavailable(STOPPED)
}

const STOPPED: &str = "node is shutting down";

/// True for the status of [`stopped`].
pub fn is_stopped(s: &Status) -> bool {
    s.code() == tonic::Code::Unavailable && s.message() == STOPPED
}
