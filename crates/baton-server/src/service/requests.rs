//! The client API's requests checked and turned into what the node is asked, without the node.
//!
//! Each function is the synchronous part of one handler of [`super::BatonService`]: the cheap
//! checks (names, limits, groups, kinds) in the handler's order, so that a request with two
//! faults is refused for the same one, and the command, acquire or read it becomes. They are
//! pure functions of the decoded request so that the fuzz targets (`crates/baton-fuzz`) run
//! exactly what the service runs before anything reaches the node.

use baton_core::limits::DEFAULT_TTL_MS;
use baton_core::{AcquireRequest, Command, Kind, Limits, Mode};
use baton_node::{GroupId, Query};
use baton_proto::v1 as pb;
use tonic::Status;

/// Most sessions renewed by one keepalive message.
pub const MAX_KEEPALIVE_SESSIONS: usize = 100_000;

/// What a request that reads or writes a value asks of its group.
#[derive(Debug)]
pub enum Asked {
    /// A write, proposed to the log.
    Write(Command),
    /// A linearizable read.
    Read(Query),
}

/// A request's group: `None` for the group serving its name by this node's map.
pub type Routed = Option<GroupId>;

/// A session's home group: the top 16 bits of its id, plus one.
pub fn home_group(session: u64) -> GroupId {
    (session >> 48) + 1
}

/// The group a request names (`None` for 0: route by this node's map).
pub fn routed(group: GroupId) -> Result<Routed, Status> {
    if group == 0 {
        return Ok(None);
    }
    check_group(group)?;
    Ok(Some(group))
}

/// Refuses a group that is not a data group.
pub fn check_group(group: GroupId) -> Result<(), Status> {
    if group == baton_node::META_GROUP || group > baton_core::topology::MAX_GROUPS {
        return Err(Status::invalid_argument(format!(
            "group {group} is not a data group (data groups are 1..={})",
            baton_core::topology::MAX_GROUPS
        )));
    }
    Ok(())
}

/// Refuses a name the state machine would refuse.
pub fn check_name(name: &str) -> Result<(), Status> {
    Limits::default().check_name(name).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// The resource kind and mode an acquire asks for.
fn kind_and_mode(req: &pb::AcquireRequest) -> Result<(Kind, Mode), Status> {
    let kind = pb::ResourceKind::try_from(req.kind)
        .map_err(|_| Status::invalid_argument(format!("unknown resource kind {}", req.kind)))?;
    Ok(match kind {
        pb::ResourceKind::Lock => (Kind::Mutex, Mode::Exclusive),
        pb::ResourceKind::Rwlock => (Kind::RwLock, if req.shared { Mode::Shared } else { Mode::Exclusive }),
        pb::ResourceKind::Semaphore => {
            if req.capacity == 0 {
                return Err(Status::invalid_argument("a semaphore needs a capacity of at least 1"));
            }
            (Kind::Semaphore { capacity: req.capacity }, Mode::Permits(req.permits.max(1)))
        }
        pb::ResourceKind::Election => (Kind::Election, Mode::Exclusive),
        pb::ResourceKind::Barrier => (Kind::Barrier { parties: req.parties }, Mode::Exclusive),
        pb::ResourceKind::Latch => (Kind::Latch, Mode::Exclusive),
    })
}

/// `OpenSession`: the command and its group (the one serving the client id's slot, by
/// `group_of`: a retry of the same open reaches the same group, which makes it idempotent).
pub fn open_session(
    req: pb::OpenSessionRequest,
    user: Option<&str>,
    group_of: impl FnOnce(&str) -> GroupId,
) -> Result<(GroupId, Command), Status> {
    let ttl_ms = if req.ttl_ms == 0 { DEFAULT_TTL_MS } else { req.ttl_ms };
    Limits::default().check_ttl(ttl_ms).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let client = owned_client(&req.client_id, user)?;
    let group = group_of(&client);
    Ok((group, Command::OpenSession { client, ttl_ms, request_id: req.request_id }))
}

/// `AttachSession` (its proof is the caller's to check).
pub fn attach_session(req: &pb::AttachSessionRequest, user: Option<&str>) -> Result<(GroupId, Command), Status> {
    check_group(req.group)?;
    Limits::default().check_ttl(req.ttl_ms).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let client = owned_client(&req.client_id, user)?;
    Ok((req.group, Command::AttachSession { session: req.session_id, client, ttl_ms: req.ttl_ms }))
}

/// The client id a session of `client_id` is recorded under: prefixed with its user's name
/// when authentication is on (see [`baton_core::command::session_owner`]).
fn owned_client(client_id: &str, user: Option<&str>) -> Result<String, Status> {
    if client_id.contains(baton_core::command::OWNER_SEPARATOR) {
        return Err(Status::invalid_argument("client id cannot hold the character U+001F"));
    }
    let client = match user {
        Some(user) => format!("{user}{}{client_id}", baton_core::command::OWNER_SEPARATOR),
        None => client_id.to_string(),
    };
    let limits = Limits::default();
    limits.check_client(client_id).map_err(|e| Status::invalid_argument(e.to_string()))?;
    limits.check_client(&client).map_err(|_| {
        Status::invalid_argument(format!(
            "client id with the user's name before it must be 1..={} bytes ({} + 1 + {} bytes)",
            baton_core::limits::MAX_CLIENT_BYTES,
            user.map_or(0, str::len),
            client_id.len()
        ))
    })?;
    Ok(client)
}

/// `CloseSession` (group 0: the session's home group).
pub fn close_session(req: &pb::CloseSessionRequest) -> Result<(GroupId, Command), Status> {
    let group = if req.group == 0 { home_group(req.session_id) } else { req.group };
    check_group(group)?;
    Ok((group, Command::CloseSession { session: req.session_id }))
}

/// `KeepAlive`: one message's size.
pub fn keep_alive(req: &pb::KeepAliveRequest) -> Result<(), Status> {
    if req.session_ids.len() > MAX_KEEPALIVE_SESSIONS {
        return Err(Status::invalid_argument(format!(
            "keepalive lists {} sessions; at most {MAX_KEEPALIVE_SESSIONS} per message",
            req.session_ids.len()
        )));
    }
    Ok(())
}

/// `Acquire`.
pub fn acquire(req: pb::AcquireRequest) -> Result<(Routed, AcquireRequest), Status> {
    check_name(&req.name)?;
    let limits = Limits::default();
    limits
        .check_wait(req.wait_ms)
        .and_then(|_| limits.check_lock_delay(req.lock_delay_ms))
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let (kind, mode) = kind_and_mode(&req)?;
    let group = routed(req.group)?;
    let request = AcquireRequest {
        name: req.name,
        session: req.session_id,
        request_id: req.request_id,
        wait_ms: Some(req.wait_ms),
        lock_delay_ms: req.lock_delay_ms,
        kind,
        mode,
        value: req.value,
    };
    Ok((group, request))
}

/// `Release`.
pub fn release(req: pb::ReleaseRequest) -> Result<(Routed, Command), Status> {
    check_name(&req.name)?;
    let group = routed(req.group)?;
    Ok((group, Command::Release { name: req.name, session: req.session_id, token: req.token }))
}

/// `Cancel`.
pub fn cancel(req: pb::CancelRequest) -> Result<(Routed, Command), Status> {
    check_name(&req.name)?;
    let group = routed(req.group)?;
    Ok((group, Command::Cancel { name: req.name, session: req.session_id, request_id: req.request_id }))
}

/// `Proclaim`.
pub fn proclaim(req: pb::ProclaimRequest) -> Result<(Routed, Command), Status> {
    check_name(&req.name)?;
    let group = routed(req.group)?;
    Ok((group, Command::Proclaim { name: req.name, session: req.session_id, token: req.token, value: req.value }))
}

/// `Latch`.
pub fn latch(req: pb::LatchRequest) -> Result<(Routed, Command), Status> {
    use pb::latch_request::Op;
    check_name(&req.name)?;
    let command = match req.op {
        Some(Op::Set(count)) => Command::LatchSet { name: req.name, count },
        Some(Op::CountDown(_)) => Command::LatchCountDown { name: req.name },
        None => return Err(Status::invalid_argument("latch request without an operation (set or count_down)")),
    };
    Ok((routed(req.group)?, command))
}

/// `Counter`: an add or a compare-and-set, or a read.
pub fn counter(req: pb::CounterRequest) -> Result<(Routed, Asked), Status> {
    use pb::counter_request::Op;
    check_name(&req.name)?;
    let asked = match req.op {
        Some(Op::Add(delta)) => Asked::Write(Command::CounterAdd { name: req.name, delta }),
        Some(Op::Cas(c)) => Asked::Write(Command::CounterCas { name: req.name, expected: c.expected, new: c.new }),
        Some(Op::Get(_)) => Asked::Read(Query::Counter(req.name)),
        None => return Err(Status::invalid_argument("counter request without an operation (add, get or cas)")),
    };
    Ok((routed(req.group)?, asked))
}

/// `Register`: a write or delete (compared with a version if asked), or a read.
pub fn register(req: pb::RegisterRequest) -> Result<(Routed, Asked), Status> {
    use pb::register_request::Op;
    check_name(&req.name)?;
    let value = match req.op {
        Some(Op::Get(_)) => return Ok((routed(req.group)?, Asked::Read(Query::Register(req.name)))),
        Some(Op::Set(v)) => {
            if v.len() > baton_core::value::MAX_VALUE_BYTES {
                return Err(Status::invalid_argument(format!(
                    "register value of {} bytes is larger than the limit of {} bytes",
                    v.len(),
                    baton_core::value::MAX_VALUE_BYTES
                )));
            }
            Some(v)
        }
        Some(Op::Delete(_)) => None,
        None => return Err(Status::invalid_argument("register request without an operation (get, set or delete)")),
    };
    let command = Command::RegisterSet { name: req.name, value, expected_version: req.if_version };
    Ok((routed(req.group)?, Asked::Write(command)))
}

/// `Watch`: a name, or every name (a prefix watch of the empty name).
pub fn watch(req: &pb::WatchRequest) -> Result<(), Status> {
    if !(req.prefix && req.name.is_empty()) {
        check_name(&req.name)?;
    }
    Ok(())
}

/// `Describe`.
pub fn describe(req: pb::DescribeRequest) -> Result<(Routed, Query), Status> {
    check_name(&req.name)?;
    Ok((routed(req.group)?, Query::Lock(req.name)))
}

/// `History`: a group of 0 is every group.
pub fn history(req: &pb::HistoryRequest) -> Result<(), Status> {
    if req.group != 0 {
        check_group(req.group)?;
    }
    Ok(())
}

/// `MoveSlots`: the meta group's command that begins the move.
pub fn move_slots(req: &pb::MoveSlotsRequest) -> Result<Command, Status> {
    let last = baton_core::SLOTS as u32 - 1;
    if req.start > req.end || req.end > last {
        return Err(Status::invalid_argument(format!(
            "slot range {}-{} is not a range of slots 0..={last}",
            req.start, req.end
        )));
    }
    check_group(req.to_group)?;
    Ok(Command::BeginMove { start: req.start as u16, end: req.end as u16, to: req.to_group })
}

/// `AddNode`: both addresses must be HOST:PORT.
pub fn add_node(req: pb::AddNodeRequest) -> Result<Command, Status> {
    for (what, addr) in [("peer", &req.peer_addr), ("client", &req.client_addr)] {
        if addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(Status::invalid_argument(format!("{what} address {addr:?} is not HOST:PORT")));
        }
    }
    Ok(Command::AddNode { id: req.id, peer_addr: req.peer_addr, client_addr: req.client_addr })
}
