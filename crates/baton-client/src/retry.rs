//! What a failed attempt means, and whether the request may be sent again.
//!
//! Decisions rest on facts, never on message text:
//! - whether the request left this process at all (not sent: a connection that could not be
//!   made, or a `Call` stream that broke before the request was written);
//! - whether an answer came back (no answer: the connection broke after the request was
//!   written, or the node did not answer within the attempt's time);
//! - the typed [`pb::ErrorInfo`] a server attaches to the errors a client must act on.
//!
//! From these, an [`ErrorClass`] ([`class_of_status`] for a server's answer), on which the
//! shared rule [`crate::core::decide`] decides: retry (at the leader a redirect named, if any),
//! stop with "outcome unknown" (a request that must not apply twice), or stop with the server's
//! refusal. `Client::attempts` runs the loop:
//! every attempt has its own timeout, which fails only that attempt (never the connection others
//! share), and moves the client on to another node.

use std::error::Error as _;
use std::future::Future;
use std::time::Duration;

use baton_proto::v1 as pb;
use pb::error_info::Reason;
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::core::{decide, Decision, ErrorClass, Op, Repeat};
use crate::pipe::Conn;
use crate::routing::Target;
use crate::{Client, Error, Result, Session};

/// Why one attempt failed.
#[derive(Debug)]
pub(crate) enum AttemptError {
    /// The server answered with an error status.
    Answered(Status),
    /// The request never left this process: nothing can have been applied.
    NotSent(String),
    /// The request was (or may have been) sent, and no answer came back.
    NoAnswer(String),
}

impl AttemptError {
    /// A short account of the failure, for error messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            AttemptError::Answered(s) => format!("{}: {}", s.code(), s.message()),
            AttemptError::NotSent(why) | AttemptError::NoAnswer(why) => why.clone(),
        }
    }

    /// The caller's error once no further attempt is made: the server's refusal, or an
    /// outcome that is not known.
    pub(crate) fn into_error(self) -> Error {
        match self {
            AttemptError::Answered(s) => Error::Status(s),
            other => Error::OutcomeUnknown(other.describe()),
        }
    }
}

impl From<Status> for AttemptError {
    /// Sorts a unary call's status by origin: tonic keeps the local error as the status's source
    /// when the failure happened on this side (connect, transport, HTTP/2), and a status that
    /// came from the server has none.
    fn from(status: Status) -> AttemptError {
        let Some(source) = status.source() else { return AttemptError::Answered(status) };
        if let Some(why) = baton_tls::refusal(source) {
            // The TLS handshake failed: no request reached the node.
            return AttemptError::NotSent(why);
        }
        let why = format!("{}: {}", status.code(), status.message());
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source);
        while let Some(e) = cause {
            if e.downcast_ref::<tonic::ConnectError>().is_some() {
                return AttemptError::NotSent(why);
            }
            cause = e.source();
        }
        AttemptError::NoAnswer(why)
    }
}

/// The class of a server's answer: its [`pb::ErrorInfo`] when it has one, else its code.
pub fn class_of_status(status: &Status) -> ErrorClass<String> {
    let info = pb::ErrorInfo::of(status).unwrap_or_default();
    match Reason::try_from(info.reason).unwrap_or(Reason::Unspecified) {
        Reason::NotLeader => ErrorClass::NotLeader { leader: Some(info.leader_addr).filter(|a| !a.is_empty()) },
        Reason::Moved => ErrorClass::Moved {
            group: info.group,
            version: info.topology_version,
            leader: Some(info.leader_addr).filter(|a| !a.is_empty()),
        },
        Reason::Busy => ErrorClass::Busy,
        Reason::MayHaveApplied => ErrorClass::MayHaveApplied,
        Reason::OutcomeForgotten => ErrorClass::Forgotten,
        // Not from Baton's mapping (a proxy, the HTTP/2 layer of the server): UNAVAILABLE is
        // the code gRPC reserves for "try again", without saying whether anything happened.
        Reason::Unspecified if status.code() == Code::Unavailable => ErrorClass::MayHaveApplied,
        Reason::Unspecified => ErrorClass::Refused,
    }
}

impl AttemptError {
    /// The class of this failure, for [`crate::core::decide`].
    pub(crate) fn class(&self) -> ErrorClass<String> {
        match self {
            AttemptError::Answered(s) => class_of_status(s),
            AttemptError::NotSent(_) => ErrorClass::NotSent,
            AttemptError::NoAnswer(_) => ErrorClass::NoAnswer,
        }
    }
}

/// The limits of one call's attempts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    pub(crate) repeat: Repeat,
    /// How long one attempt may take.
    pub(crate) attempt: Duration,
    /// How much longer than the client's request timeout the whole call may take (a wait).
    pub(crate) extra: Duration,
}

impl Client {
    /// A plan for a call of `op` that does not wait on the server.
    pub(crate) fn plan(&self, op: Op) -> Plan {
        Plan { repeat: op.repeat(), attempt: self.inner.options.attempt_timeout, extra: Duration::ZERO }
    }

    /// Runs `call` against the node `target` routes to until it succeeds, the server refuses,
    /// or `plan` says to stop. Every attempt has its own timeout; a failed attempt moves the
    /// client on (to the leader a redirect named, or the next endpoint).
    pub(crate) async fn attempts<T, F, Fut>(&self, plan: Plan, target: Target<'_>, call: F) -> Result<T>
    where
        F: FnMut(Conn, u64) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, AttemptError>>,
    {
        self.attempts_as(plan, target, None, call).await
    }

    /// `call` gets the connection and the group the request is for (it goes in the request, so
    /// that the group that receives it is the one the client routed it to: a session attached
    /// there, say; a group that does not serve the name answers MOVED).
    ///
    /// [`Client::attempts`] for a request made through `session`: before each attempt, the
    /// session gets a record in the group the request goes to if it has none there yet (see
    /// docs/SEMANTICS.md, "Sessions across groups").
    pub(crate) async fn attempts_as<T, F, Fut>(
        &self,
        plan: Plan,
        target: Target<'_>,
        session: Option<&Session>,
        mut call: F,
    ) -> Result<T>
    where
        F: FnMut(Conn, u64) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, AttemptError>>,
    {
        let deadline = Instant::now() + self.inner.options.request_timeout + plan.extra;
        let mut backoff = crate::core::FIRST_BACKOFF_MS;
        let mut maybe_applied = false;
        loop {
            let group = self.inner.router.group(target);
            if let (Some(s), Some(g)) = (session, group) {
                s.attach(g).await?;
            }
            let (addr, conn) = self.inner.router.current(group)?;
            let error = match tokio::time::timeout(plan.attempt, call(conn, group.unwrap_or(0))).await {
                Ok(Ok(r)) => {
                    if let Some(g) = group {
                        // Only a group's leader answers for it.
                        self.inner.router.set_leader(g, &addr);
                    }
                    return Ok(r.into_inner());
                }
                Ok(Err(e)) => e,
                // Only this attempt is abandoned: calls of others on the same stream go on.
                Err(_) => AttemptError::NoAnswer(format!("no answer from {addr} within {:?}", plan.attempt)),
            };
            let class = error.class();
            if let (ErrorClass::Moved { group: to, version, .. }, Target::Name(name)) = (&class, target) {
                self.inner.router.moved(baton_core::slot_of(name), *to, *version);
            }
            let moved = matches!(class, ErrorClass::Moved { .. });
            let pause = match decide(class, plan.repeat) {
                Decision::Refused => return Err(error.into_error()),
                Decision::OutcomeUnknown => {
                    // The next attempt (of any call) should not ask the same node.
                    self.inner.router.moved_on(group, &addr, None);
                    return Err(Error::OutcomeUnknown(format!("{addr}: {}", error.describe())));
                }
                // The name lives in another group now: the next attempt is routed there.
                Decision::Retry { leader, backoff: rule, .. } if moved => {
                    let to = self.inner.router.group(target);
                    let redirected = match (to, leader) {
                        (Some(g), Some(l)) => {
                            self.inner.router.set_leader(g, &l);
                            true
                        }
                        _ => false,
                    };
                    rule.pause(redirected)
                }
                Decision::Retry { leader, stay, backoff: rule, maybe_applied: maybe } => {
                    maybe_applied |= maybe;
                    let redirected = !stay && self.inner.router.moved_on(group, &addr, leader.as_deref());
                    rule.pause(redirected)
                }
            };
            if Instant::now() >= deadline {
                let last = format!("{addr}: {}", error.describe());
                return Err(if maybe_applied {
                    Error::OutcomeUnknown(last)
                } else {
                    Error::Unreachable(self.inner.options.request_timeout, last)
                });
            }
            if pause {
                tokio::time::sleep(Duration::from_millis(backoff)).await;
                backoff = crate::core::next_backoff_ms(backoff);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(reason: Reason, leader_addr: &str) -> Status {
        let mut s = Status::unavailable("whatever the text says");
        pb::ErrorInfo { reason: reason as i32, leader_id: 2, leader_addr: leader_addr.into(), ..Default::default() }
            .attach(&mut s);
        s
    }

    #[test]
    fn classes_follow_the_typed_detail_not_the_text() {
        assert_eq!(
            class_of_status(&with(Reason::NotLeader, "10.0.0.2:7700")),
            ErrorClass::NotLeader { leader: Some("10.0.0.2:7700".into()) }
        );
        assert_eq!(class_of_status(&with(Reason::NotLeader, "")), ErrorClass::NotLeader { leader: None });
        assert_eq!(class_of_status(&with(Reason::MayHaveApplied, "")), ErrorClass::MayHaveApplied);
        assert_eq!(class_of_status(&with(Reason::Busy, "")), ErrorClass::Busy);
        // A message that reads like a redirect is not one.
        assert_eq!(class_of_status(&Status::failed_precondition("node 1 is not the leader")), ErrorClass::Refused);
        assert_eq!(class_of_status(&Status::unavailable("is not the leader")), ErrorClass::MayHaveApplied);
    }

    /// A connection that cannot be made is "not sent" (safe to send elsewhere), told apart from
    /// a broken one by the error's type.
    #[tokio::test]
    async fn a_refused_connection_means_not_sent() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut c =
            crate::routing::channel(&format!("127.0.0.1:{port}"), &baton_tls::Dialer::plain(), &Default::default())
                .unwrap();
        let status = c.status(pb::StatusRequest {}).await.unwrap_err();
        let e = AttemptError::from(status);
        assert!(matches!(e, AttemptError::NotSent(_)), "{e:?}");
    }
}
