//! What each request needs: the table every API's check reads.
//!
//! Requests are judged by what they become, not by which RPC carried them: a client API call,
//! a call on the `Call` stream and a retried one all turn into the same node request, and
//! [`of_request`] is the one match over those. RPCs that are not node requests (watch, history,
//! hot names, status, the slot map, users and roles) name their needs where they are served,
//! with the constructors of [`Need`].

use baton_core::auth::Permission;
use baton_core::Command;
use baton_node::{Query, Request};

use super::Need;

/// What `command` needs.
pub fn of_command(command: &Command) -> Vec<Need> {
    use Permission::*;
    match command {
        Command::OpenSession { .. } | Command::AttachSession { .. } | Command::CloseSession { .. } => {
            vec![Need::somewhere(Lock)]
        }
        Command::Acquire(r) => vec![Need::name(Lock, &r.name)],
        Command::Release { name, .. }
        | Command::Cancel { name, .. }
        | Command::Proclaim { name, .. }
        | Command::LatchSet { name, .. }
        | Command::LatchCountDown { name } => vec![Need::name(Lock, name)],
        Command::CounterAdd { name, .. } | Command::CounterCas { name, .. } | Command::RegisterSet { name, .. } => {
            vec![Need::name(Write, name)]
        }
        // The cluster's own work, and what only administrators change. etcd's commands come
        // through etcd's API, which judges them by their keys (see `crate::etcd`).
        Command::ExpireSessions { .. }
        | Command::Tick
        | Command::HandOff { .. }
        | Command::TakeOver { .. }
        | Command::BeginMove { .. }
        | Command::FinishMove { .. }
        | Command::AddNode { .. }
        | Command::RemoveNode { .. }
        | Command::Etcd(_)
        | Command::Auth(_) => vec![Need::everything(Admin)],
    }
}

/// What a request of the coordination-free tier needs: reading its name, or writing it.
pub fn of_crdt(request: &baton_node::crdt::CrdtRequest) -> Vec<Need> {
    use baton_node::crdt::CrdtRequest as C;
    match request {
        C::Update { key, .. } => vec![Need::name(Permission::Write, &key.name)],
        C::Read { key, .. } => vec![Need::name(Permission::Read, &key.name)],
    }
}

/// What a node request needs.
pub fn of_request(request: &Request) -> Vec<Need> {
    use Permission::*;
    match request {
        Request::Propose(c) => of_command(c),
        Request::Acquire(r) => vec![Need::name(Lock, &r.name)],
        Request::KeepAlive(_) => vec![Need::somewhere(Lock)],
        Request::Read(q) => match q {
            Query::Lock(name) | Query::Counter(name) | Query::Register(name) => vec![Need::name(Read, name)],
            Query::Session(_) | Query::KeepAlive(_) => vec![Need::somewhere(Lock)],
            Query::EtcdRange(_) | Query::EtcdLease { .. } | Query::EtcdLeases | Query::EtcdAlarms => {
                vec![Need::everything(Admin)]
            }
        },
    }
}

/// Whether a node request renews or gives back (keepalives, releases, cancels, closes): never
/// refused for a user's request rate, so that overload sheds new work, not held sessions.
pub fn gives_back(request: &Request) -> bool {
    matches!(
        request,
        Request::KeepAlive(_)
            | Request::Read(Query::KeepAlive(_))
            | Request::Propose(Command::Release { .. } | Command::Cancel { .. } | Command::CloseSession { .. })
    )
}

/// What a node request is, for refusals and the audit log.
pub fn label(request: &Request) -> &'static str {
    match request {
        Request::Propose(c) => match c {
            Command::OpenSession { .. } => "OpenSession",
            Command::AttachSession { .. } => "AttachSession",
            Command::CloseSession { .. } => "CloseSession",
            Command::Acquire(_) => "Acquire",
            Command::Release { .. } => "Release",
            Command::Cancel { .. } => "Cancel",
            Command::Proclaim { .. } => "Proclaim",
            Command::LatchSet { .. } | Command::LatchCountDown { .. } => "Latch",
            Command::CounterAdd { .. } | Command::CounterCas { .. } => "Counter",
            Command::RegisterSet { .. } => "Register",
            Command::BeginMove { .. } => "MoveSlots",
            Command::AddNode { .. } => "AddNode",
            Command::RemoveNode { .. } => "RemoveNode",
            Command::Auth(_) => "AuthChange",
            Command::ExpireSessions { .. }
            | Command::Tick
            | Command::HandOff { .. }
            | Command::TakeOver { .. }
            | Command::FinishMove { .. }
            | Command::Etcd(_) => "internal",
        },
        Request::Acquire(_) => "Acquire",
        Request::KeepAlive(_) | Request::Read(Query::KeepAlive(_)) => "KeepAlive",
        Request::Read(Query::Lock(_)) => "Describe",
        Request::Read(Query::Counter(_)) => "Counter",
        Request::Read(Query::Register(_)) => "Register",
        Request::Read(_) => "read",
    }
}
