//! The one place where errors become gRPC statuses with messages a person can act on.

use baton_node::NodeError;
use baton_proto::v1 as pb;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::runtime::NodeHandle;

/// Metadata key carrying the leader's client address on a redirect.
pub const LEADER_METADATA: &str = "baton-leader";

/// Maps a node error to a status; `NotLeader` carries the leader's address when it is known.
///
/// Every error a client must act on (a redirect, overload, an outcome that is not known) also
/// carries a typed [`pb::ErrorInfo`] (see [`pb::ErrorInfo::attach`]): clients decide on that,
/// never on the message, which is for people.
pub fn to_status(err: NodeError, node: &NodeHandle) -> Status {
    use baton_core::Error as E;
    use pb::error_info::Reason;
    match err {
        NodeError::NotLeader { group, leader: Some(leader) } => match node.client_addr(leader) {
            Some(addr) => {
                let mut status = Status::unavailable(format!(
                    "node {} is not the leader of group {group}; the leader is node {leader} at {addr}",
                    node.id
                ));
                if let Ok(v) = MetadataValue::try_from(addr.as_str()) {
                    status.metadata_mut().insert(LEADER_METADATA, v);
                }
                with_info(status, Reason::NotLeader, leader, addr)
            }
            None => {
                let status = Status::unavailable(format!("node {} is not the leader of group {group}; the leader is node {leader}, whose address is not known yet: retry", node.id));
                with_info(status, Reason::NotLeader, leader, String::new())
            }
        },
        NodeError::NotLeader { group, leader: None } => {
            let status = Status::unavailable(format!(
                "group {group} has no leader right now (election in progress or no quorum): retry shortly"
            ));
            with_info(status, Reason::NotLeader, 0, String::new())
        }
        NodeError::Moved { slot, group, leader, version } => moved(slot, group, leader, version, node),
        NodeError::Rejected(e) => {
            let code = match &e {
                // The driver turns these into `Moved`; one that got here is still a redirect.
                E::NotOwned { .. } => Code::Unavailable,
                E::InvalidArgument(_) => Code::InvalidArgument,
                E::LimitExceeded(_) => Code::ResourceExhausted,
                E::SessionNotFound(_) => Code::NotFound,
                E::NotYourSession { .. } => Code::PermissionDenied,
                E::NotHolder { .. }
                | E::AlreadyOwned { .. }
                | E::RequestCompleted { .. }
                | E::WrongKind { .. }
                | E::RetryTooLate { .. } => Code::FailedPrecondition,
                // etcd's own code for each of its refusals (its clients look at both).
                E::Etcd(e) => match e.code() {
                    baton_core::etcd::Code::InvalidArgument => Code::InvalidArgument,
                    baton_core::etcd::Code::NotFound => Code::NotFound,
                    baton_core::etcd::Code::FailedPrecondition => Code::FailedPrecondition,
                    baton_core::etcd::Code::OutOfRange => Code::OutOfRange,
                    baton_core::etcd::Code::ResourceExhausted => Code::ResourceExhausted,
                },
                E::Crdt(c) => crdt_code(c),
                E::Auth(a) => match a {
                    baton_core::auth::AuthError::UserExists(_) | baton_core::auth::AuthError::RoleExists(_) => {
                        Code::AlreadyExists
                    }
                    baton_core::auth::AuthError::NoUser(_)
                    | baton_core::auth::AuthError::NoRole(_)
                    | baton_core::auth::AuthError::NoGrant { .. }
                    | baton_core::auth::AuthError::NotGranted { .. } => Code::NotFound,
                    baton_core::auth::AuthError::Invalid(_) => Code::InvalidArgument,
                    baton_core::auth::AuthError::NoRoot | baton_core::auth::AuthError::WouldLockOut(_) => {
                        Code::FailedPrecondition
                    }
                },
            };
            let status = Status::new(code, e.to_string());
            if matches!(e, E::RetryTooLate { .. }) {
                // Not a plain refusal: the first attempt may have applied.
                return with_info(status, Reason::OutcomeForgotten, 0, String::new());
            }
            status
        }
        NodeError::Unavailable(msg) => with_info(Status::unavailable(msg), Reason::MayHaveApplied, 0, String::new()),
        NodeError::Busy(_) => with_info(Status::resource_exhausted(err.to_string()), Reason::Busy, 0, String::new()),
        NodeError::NoGroup(_) => Status::invalid_argument(err.to_string()),
    }
}

fn crdt_code(e: &baton_core::crdt::CrdtError) -> Code {
    use baton_core::crdt::CrdtError as C;
    match e {
        C::Invalid(_) | C::KindMismatch { .. } => Code::InvalidArgument,
        C::NotEnoughRights { .. } => Code::FailedPrecondition,
    }
}

/// The status for a failed request to the coordination-free tier; `addr_of` gives a node's
/// client address (a request for an object this node does not hold is redirected to an owner,
/// as a request to a follower is to its leader).
pub fn crdt_status(failure: baton_node::crdt::CrdtFailure, addr_of: impl Fn(u64) -> Option<String>) -> Status {
    use baton_node::crdt::CrdtFailure as F;
    use pb::error_info::Reason;
    match failure {
        F::NotOwned { kind, name, owners } => {
            let to = owners.iter().find_map(|&o| addr_of(o).map(|a| (o, a)));
            let (id, addr) = to.unwrap_or_default();
            let message = format!(
                "this node holds no replica of the {kind} {name:?}: nodes {owners:?} do{}",
                if addr.is_empty() { String::new() } else { format!("; ask node {id} at {addr}") }
            );
            with_info(Status::unavailable(message), Reason::NotLeader, id, addr)
        }
        F::Refused(e) => Status::new(crdt_code(&e), e.to_string()),
        F::Timeout(msg) => Status::deadline_exceeded(msg),
        F::Busy(msg) => with_info(Status::resource_exhausted(msg), Reason::Busy, 0, String::new()),
        F::Unknown(msg) => with_info(Status::unavailable(msg), Reason::MayHaveApplied, 0, String::new()),
    }
}

/// A request reached a group that does not serve the name's slot: MOVED, naming the group that
/// serves it by this node's map and that group's leader, so that the client goes straight there.
fn moved(slot: u16, group: Option<u64>, leader: Option<u64>, version: u64, node: &NodeHandle) -> Status {
    let leader = leader.unwrap_or(0);
    let leader_addr = node.client_addr(leader).unwrap_or_default();
    let message = match group {
        None => format!("slot {slot} is being moved between groups: retry shortly"),
        Some(g) => format!(
            "slot {slot} is served by group {g} (by node {}'s slot map, version {version}): ask its leader{}",
            node.id,
            if leader_addr.is_empty() { String::new() } else { format!(" at {leader_addr}") }
        ),
    };
    let mut status = Status::unavailable(message);
    let info = pb::ErrorInfo {
        reason: pb::error_info::Reason::Moved as i32,
        leader_id: leader,
        leader_addr,
        group: group.unwrap_or(0),
        topology_version: version,
    };
    info.attach(&mut status);
    status
}

/// Attaches the machine-readable [`pb::ErrorInfo`] to `status`.
pub(crate) fn with_info(
    mut status: Status,
    reason: pb::error_info::Reason,
    leader_id: u64,
    leader_addr: String,
) -> Status {
    pb::ErrorInfo { reason: reason as i32, leader_id, leader_addr, ..Default::default() }.attach(&mut status);
    status
}

/// The node thread stopped (the server is shutting down). A request handed to it may have been
/// proposed before it stopped: its outcome is not known.
pub fn stopped() -> Status {
    with_info(Status::unavailable(STOPPED), pb::error_info::Reason::MayHaveApplied, 0, String::new())
}

const STOPPED: &str = "node is shutting down";

/// True for the status of [`stopped`].
pub fn is_stopped(s: &Status) -> bool {
    s.code() == tonic::Code::Unavailable && s.message() == STOPPED
}
