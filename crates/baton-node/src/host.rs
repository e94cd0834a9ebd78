//! Client requests on top of a [`Node`]: which request is waiting for what.
//!
//! A runtime (the server, or the simulator) gives each request an id, submits it here, and feeds
//! every [`Output`] of the node through [`Requests::handle`]; the answers come back by id. An
//! acquire that queues is answered later, by the `Granted` or `WaitEnded` event of its
//! `(group, name, session, request_id)` — on whatever node the client is connected to, leader or
//! not, because every replica applies every event.

use std::collections::BTreeMap;

use baton_core::{AcquireRequest, Command, Event, Outcome, SessionId};

use crate::node::{Node, NodeError, Output, Query, Reply};
use crate::{GroupId, RequestId};

/// A client request.
#[derive(Clone, Debug)]
pub enum Request {
    /// Any command; answered once applied.
    Propose(Command),
    /// Take a lock; answered once granted, refused or timed out.
    Acquire(AcquireRequest),
    /// A linearizable read.
    Read(Query),
}

/// How an acquire finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AcquireResult {
    /// Held with this token.
    Granted(u64),
    /// Try-once on a held lock (held by this session, if any).
    NotAvailable(Option<SessionId>),
    /// The wait ended without the lock.
    TimedOut,
}

/// The answer to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A proposed command was applied with this outcome.
    Applied(Outcome),
    /// An acquire finished.
    Acquire(AcquireResult),
    /// A read was served.
    Read(Reply),
}

type WaitKey = (GroupId, String, SessionId, u64);

enum Kind {
    Propose,
    Acquire(WaitKey),
    Read,
}

/// The requests in flight on one node.
#[derive(Default)]
pub struct Requests {
    pending: BTreeMap<RequestId, Kind>,
    waits: BTreeMap<WaitKey, Vec<RequestId>>,
    bugs: baton_core::Bugs,
}

impl Requests {
    /// Requests with deliberate bugs on (the simulator's broken variants).
    pub fn with_bugs(bugs: baton_core::Bugs) -> Self {
        Requests { bugs, ..Requests::default() }
    }

    /// The key a wait is filed under.
    fn wait_key(&self, group: GroupId, name: &str, session: SessionId, request_id: u64) -> WaitKey {
        // Deliberate bug: request ids are per client, so without the session two clients'
        // waits collide.
        let session = if self.bugs.wakeup_ignores_session { 0 } else { session };
        (group, name.to_string(), session, request_id)
    }

    /// Submits a request to the node; its answer comes out of [`Requests::handle`].
    pub fn submit(&mut self, node: &mut Node, group: GroupId, id: RequestId, request: Request) {
        match request {
            Request::Propose(command) => {
                self.pending.insert(id, Kind::Propose);
                node.propose(group, id, command);
            }
            Request::Acquire(req) => {
                let key = self.wait_key(group, &req.name, req.session, req.request_id);
                self.pending.insert(id, Kind::Acquire(key));
                node.propose(group, id, Command::Acquire(req));
            }
            Request::Read(query) => {
                self.pending.insert(id, Kind::Read);
                node.read(group, id, query);
            }
        }
    }

    /// Looks at one output of the node and appends the answers it completes.
    pub fn handle(&mut self, out: &Output, answers: &mut Vec<(RequestId, Result<Answer, NodeError>)>) {
        match out {
            Output::Reply { id, result } => self.on_reply(*id, result, answers),
            Output::Event { group, event, .. } => {
                let (key, result) = match event {
                    Event::Granted { name, session, request_id, token } => {
                        (self.wait_key(*group, name, *session, *request_id), AcquireResult::Granted(*token))
                    }
                    Event::WaitEnded { name, session, request_id, .. } => {
                        (self.wait_key(*group, name, *session, *request_id), AcquireResult::TimedOut)
                    }
                    _ => return,
                };
                for id in self.waits.remove(&key).unwrap_or_default() {
                    answers.push((id, Ok(Answer::Acquire(result.clone()))));
                }
            }
            Output::Reset { group, .. } => {
                let keys: Vec<WaitKey> = self.waits.keys().filter(|k| k.0 == *group).cloned().collect();
                for key in keys {
                    for id in self.waits.remove(&key).unwrap_or_default() {
                        let msg =
                            "this node installed a snapshot while the request waited; retry with the same request id";
                        answers.push((id, Err(NodeError::Unavailable(msg.into()))));
                    }
                }
            }
            Output::Send { .. } | Output::RoleChanged { .. } => {}
        }
    }

    /// Forgets a request whose caller went away (its answer, if any, is dropped).
    pub fn forget(&mut self, id: RequestId) {
        if let Some(Kind::Acquire(key)) = self.pending.remove(&id) {
            self.remove_wait(&key, id);
        }
        let keys: Vec<WaitKey> =
            self.waits.iter().filter(|(_, ids)| ids.contains(&id)).map(|(k, _)| k.clone()).collect();
        for key in keys {
            self.remove_wait(&key, id);
        }
    }

    fn remove_wait(&mut self, key: &WaitKey, id: RequestId) {
        if let Some(ids) = self.waits.get_mut(key) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.waits.remove(key);
            }
        }
    }

    fn on_reply(
        &mut self,
        id: RequestId,
        result: &Result<Reply, NodeError>,
        answers: &mut Vec<(RequestId, Result<Answer, NodeError>)>,
    ) {
        let Some(kind) = self.pending.remove(&id) else { return };
        let answer = match (kind, result) {
            (_, Err(e)) => Err(e.clone()),
            (Kind::Read, Ok(reply)) => Ok(Answer::Read(reply.clone())),
            (Kind::Propose, Ok(Reply::Applied { outcome, .. })) => Ok(Answer::Applied(outcome.clone())),
            (Kind::Acquire(key), Ok(Reply::Applied { outcome, .. })) => match outcome {
                Outcome::Granted { token } | Outcome::Cancelled { granted: Some(token) } => {
                    Ok(Answer::Acquire(AcquireResult::Granted(*token)))
                }
                Outcome::NotAvailable { holder } => Ok(Answer::Acquire(AcquireResult::NotAvailable(*holder))),
                Outcome::Queued { .. } => {
                    // Answered later by the grant or the end of the wait, in apply order.
                    self.waits.entry(key).or_default().push(id);
                    return;
                }
                _ => Ok(Answer::Acquire(AcquireResult::TimedOut)),
            },
            (_, Ok(other)) => Err(NodeError::Unavailable(format!("unexpected reply {other:?}"))),
        };
        answers.push((id, answer));
    }
}
