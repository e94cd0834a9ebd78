//! The state machine's errors.
//!
//! Every error here is a deterministic function of the command and the state it was applied
//! to, so every replica reaches the same one: it is returned to the client and nothing was
//! changed. Anything else going wrong while applying would make replicas diverge and must
//! stop the node instead (that is the node's job, not this crate's).

use crate::command::{SessionId, Token};

/// A command that was rejected; the state is exactly as it was before the command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The command's arguments are malformed or out of range.
    #[error("{0}")]
    InvalidArgument(String),
    /// A count limit would be exceeded.
    #[error("{0}")]
    LimitExceeded(String),
    /// The session does not exist (never opened, closed, or expired).
    #[error("session {0} not found: it was closed or has expired")]
    SessionNotFound(SessionId),
    /// Release by a session or token that does not hold the lock.
    #[error("lock {name:?} is not held by session {session} with token {token}")]
    NotHolder { name: String, session: SessionId, token: Token },
    /// Nothing is reentrant: the session already holds or waits for this name.
    #[error("session {session} already {state} {name:?} ({why})")]
    AlreadyOwned { name: String, session: SessionId, state: &'static str, why: &'static str },
    /// The name is in use as another kind of primitive (a lock and a latch, say, never share
    /// a name while either exists).
    #[error("{name:?} is in use as {in_use}; it cannot be used as {asked} until it is free")]
    WrongKind { name: String, in_use: String, asked: String },
    /// A retry of a request older than the session's retry window: its outcome is no longer
    /// remembered, so it is refused rather than applied a second time.
    #[error("request {request_id} of session {session} is older than the session's retry window (its outcome is no longer remembered); it was not applied again")]
    RetryTooLate { session: SessionId, request_id: u64 },
    /// The name's slot is not served by this group (any more): the sender's slot map is
    /// stale. Nothing was done; ask the group that serves the slot now.
    #[error(
        "{name:?} (slot {slot}) is not served by group {group}: the slot map changed; ask the group that serves it now"
    )]
    NotOwned { name: String, slot: u16, group: u64 },
    /// A retried request whose grant has since been released.
    #[error("request {request_id} on lock {name:?} already completed: it was granted token {token} and released")]
    RequestCompleted { name: String, request_id: u64, token: Token },
    /// A refusal of the etcd keyspace, with etcd's own message (its clients match on it).
    #[error(transparent)]
    Etcd(#[from] crate::etcd::EtcdError),
    /// A change to the users, roles and permissions was refused (see [`crate::auth`]).
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    /// A coordination-free object's update was refused.
    #[error(transparent)]
    Crdt(#[from] crate::crdt::CrdtError),
    /// With authentication on, a command named a session that is not the caller's: another
    /// user's, or one opened while authentication was off.
    #[error("session {session} is not a session of user {user:?}: a user acts only for its own sessions (sessions opened while authentication was off belong to nobody)")]
    NotYourSession { session: SessionId, user: String },
}

/// The state machine's result type.
pub type Result<T> = std::result::Result<T, Error>;
