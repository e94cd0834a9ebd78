//! Client requests on top of a [`Node`]: which group each goes to, and which request is
//! waiting for what.
//!
//! A runtime (the server, or the simulator) gives each request an id, submits it here, and feeds
//! every [`Output`] of the node through [`Requests::handle`]; the answers come back by id. An
//! acquire that queues is answered later, by the `Granted` or `WaitEnded` event of its
//! `(group, name, session, request_id)` — on whatever node the client is connected to, leader or
//! not, because every replica applies every event. A wait whose name's slot moves to another
//! group ends with [`NodeError::Moved`]: the client asks the new group, with the same request id.
//!
//! # Routing
//! A request submitted without a group goes to the group serving its name's slot by this node's
//! map ([`Node::group_of`]; a session's open by its client id). The map may be stale: the group
//! then refuses the name and the client is told where it is served now ([`NodeError::Moved`]).
//!
//! # Keepalives
//! One [`Request::KeepAlive`] renews its sessions in every data group this node leads, each
//! after its own ReadIndex round (or lease), asked at once and answered together as one
//! [`Renewal`]: the client, which sends one to every node, learns which groups renewed what.

use std::collections::BTreeMap;

use baton_core::command::Principal;
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
    /// Renew these sessions in every data group this node leads.
    KeepAlive(Vec<SessionId>),
}

impl Request {
    /// What the request is routed by when no group is given: its name, or the client id of a
    /// session's open (its home group).
    pub fn routing_key(&self) -> Option<&str> {
        match self {
            Request::Propose(Command::OpenSession { client, .. }) => Some(client),
            Request::Propose(c) => c.name(),
            Request::Acquire(r) => Some(&r.name),
            Request::Read(Query::Lock(n) | Query::Counter(n) | Query::Register(n)) => Some(n),
            // Sent with their group always (etcd requests: the keyspace's).
            Request::Read(
                Query::Session(_)
                | Query::KeepAlive(_)
                | Query::EtcdRange(_)
                | Query::EtcdLease { .. }
                | Query::EtcdLeases
                | Query::EtcdAlarms,
            )
            | Request::KeepAlive(_) => None,
        }
    }
}

/// The answer to a [`Request::KeepAlive`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Renewal {
    /// The data groups that renewed (this node leads them, confirmed by a quorum).
    pub groups: Vec<GroupId>,
    /// Per session asked, in order: the groups of `groups` where it has a record (renewed),
    /// its TTL, and the groups its names were moved to from those.
    pub leases: Vec<SessionRenewal>,
}

/// One session's part of a [`Renewal`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionRenewal {
    /// The session.
    pub session: SessionId,
    /// Groups that renewed it.
    pub groups: Vec<GroupId>,
    /// Its TTL (0 if no group had it).
    pub ttl_ms: u64,
    /// Groups its names moved to.
    pub moved_to: Vec<GroupId>,
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
    /// Sessions were renewed.
    KeepAlive(Renewal),
}

type WaitKey = (GroupId, String, SessionId, u64);

enum Kind {
    Propose,
    Acquire(WaitKey),
    Read,
    /// One group's part of a keepalive: (the keepalive's id, the group).
    Renew(RequestId, GroupId),
}

/// A keepalive waiting for the groups it asked.
struct Join {
    waiting: usize,
    renewal: Renewal,
    first_error: Option<NodeError>,
    /// Answered with the parts that are in by then (see [`Requests::expire`]).
    deadline_ms: u64,
}

/// How long a keepalive waits for its slowest group before it is answered with the others: a
/// group whose leader is slow (just elected, say) must not hold up the renewals of every group
/// the node leads, and the client gives a renewal up after half a renewal interval (at least
/// 200 ms).
pub const KEEPALIVE_PARTS_MS: u64 = 300;

/// Ids of the per-group parts of a keepalive: above every id a runtime gives out.
const PART: RequestId = 1 << 62;

/// The requests in flight on one node.
#[derive(Default)]
pub struct Requests {
    pending: BTreeMap<RequestId, Kind>,
    waits: BTreeMap<WaitKey, Vec<RequestId>>,
    joins: BTreeMap<RequestId, Join>,
    next_part: RequestId,
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

    /// Submits a request to the node, to `group` or (`None`) to the group its routing key
    /// belongs to, for `user` (authentication on: see [`Node::propose_for`] and
    /// [`Node::read_for`]); its answer comes out of [`Requests::handle`].
    #[allow(clippy::too_many_arguments)]
    pub fn submit(
        &mut self,
        node: &mut Node,
        group: Option<GroupId>,
        id: RequestId,
        request: Request,
        user: Option<Principal>,
        now_ms: u64,
        answers: &mut Vec<(RequestId, Result<Answer, NodeError>)>,
    ) {
        let group = match (group, request.routing_key()) {
            (Some(g), _) => g,
            (None, Some(key)) => node.group_of(key),
            (None, None) => crate::DATA_GROUP,
        };
        match request {
            Request::KeepAlive(sessions) => self.renew(node, id, sessions, user, now_ms, answers),
            Request::Propose(command) => {
                self.pending.insert(id, Kind::Propose);
                node.propose_for(group, id, command, user);
            }
            Request::Acquire(req) => {
                let key = self.wait_key(group, &req.name, req.session, req.request_id);
                self.pending.insert(id, Kind::Acquire(key));
                node.propose_for(group, id, Command::Acquire(req), user);
            }
            Request::Read(query) => {
                self.pending.insert(id, Kind::Read);
                node.read_for(group, id, query, user);
            }
        }
    }

    /// Asks every data group this node leads to renew `sessions` ([`Node::leading`]: not the
    /// etcd keyspace's group, where Baton's clients have no sessions and a renewal would only
    /// wake it from hibernation).
    fn renew(
        &mut self,
        node: &mut Node,
        id: RequestId,
        sessions: Vec<SessionId>,
        user: Option<Principal>,
        now_ms: u64,
        answers: &mut Vec<(RequestId, Result<Answer, NodeError>)>,
    ) {
        let leading = node.leading();
        if leading.is_empty() {
            // Leading nothing: the client's other streams renew the sessions. Name the leader
            // of the first group, for a client that talks to one node at a time.
            let err = NodeError::NotLeader { group: crate::DATA_GROUP, leader: node.leader(crate::DATA_GROUP) };
            answers.push((id, Err(err)));
            return;
        }
        let leases = sessions.iter().map(|&session| SessionRenewal { session, ..Default::default() }).collect();
        let renewal = Renewal { groups: Vec::new(), leases };
        let deadline_ms = now_ms + KEEPALIVE_PARTS_MS;
        self.joins.insert(id, Join { waiting: leading.len(), renewal, first_error: None, deadline_ms });
        // One list, shared by every group's part (a message may list 100,000 sessions).
        let sessions: std::sync::Arc<[SessionId]> = sessions.into();
        for group in leading {
            self.next_part += 1;
            let part = PART | self.next_part;
            self.pending.insert(part, Kind::Renew(id, group));
            node.read_for(group, part, Query::KeepAlive(sessions.clone()), user.clone());
        }
    }

    /// One group's part of a keepalive is in; answers the keepalive once every part is.
    fn renewed(
        &mut self,
        id: RequestId,
        group: GroupId,
        result: &Result<Reply, NodeError>,
        answers: &mut Vec<(RequestId, Result<Answer, NodeError>)>,
    ) {
        let Some(join) = self.joins.get_mut(&id) else { return };
        join.waiting -= 1;
        match result {
            Ok(Reply::KeepAlive(results)) => {
                join.renewal.groups.push(group);
                for (lease, (_, renewed)) in join.renewal.leases.iter_mut().zip(results) {
                    if let Some((ttl, moved_to)) = renewed {
                        lease.groups.push(group);
                        lease.ttl_ms = *ttl;
                        for g in moved_to {
                            if !lease.moved_to.contains(g) {
                                lease.moved_to.push(*g);
                            }
                        }
                    }
                }
            }
            // Lost the leadership meanwhile (or no quorum): this group renewed nothing here.
            Err(e) => {
                join.first_error.get_or_insert_with(|| e.clone());
            }
            Ok(other) => {
                join.first_error.get_or_insert_with(|| NodeError::Unavailable(format!("unexpected reply {other:?}")));
            }
        }
        if join.waiting > 0 {
            return;
        }
        self.answer_join(id, answers);
    }

    /// Answers the keepalives whose slowest parts are late with the parts that are in (the
    /// late parts' answers are dropped when they come).
    pub fn expire(&mut self, now_ms: u64, answers: &mut Vec<(RequestId, Result<Answer, NodeError>)>) {
        // Only with at least one part in: with none, the node is not serving any (no quorum,
        // say), and the client's own timeout decides.
        let late: Vec<RequestId> = self
            .joins
            .iter()
            .filter(|(_, j)| j.deadline_ms <= now_ms && !j.renewal.groups.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            self.answer_join(id, answers);
        }
    }

    fn answer_join(&mut self, id: RequestId, answers: &mut Vec<(RequestId, Result<Answer, NodeError>)>) {
        let Some(join) = self.joins.remove(&id) else { return };
        let answer = if join.renewal.groups.is_empty() {
            Err(join.first_error.unwrap_or(NodeError::NotLeader { group: crate::DATA_GROUP, leader: None }))
        } else {
            let mut renewal = join.renewal;
            renewal.groups.sort_unstable();
            Ok(Answer::KeepAlive(renewal))
        };
        answers.push((id, answer));
    }

    /// Looks at one output of the node and appends the answers it completes.
    pub fn handle(&mut self, out: &Output, answers: &mut Vec<(RequestId, Result<Answer, NodeError>)>) {
        match out {
            Output::Reply { id, result } => self.on_reply(*id, result, answers),
            Output::Event { group, event: Event::SlotsMoved { start, end, from, to }, .. } if group == from => {
                // The source stopped serving these names: their waits go on in the new group.
                let range = *start..=*end;
                let keys: Vec<WaitKey> = self
                    .waits
                    .keys()
                    .filter(|k| k.0 == *group && range.contains(&baton_core::slot_of(&k.1)))
                    .cloned()
                    .collect();
                for key in keys {
                    for id in self.waits.remove(&key).unwrap_or_default() {
                        // The acquire was applied (it waits in the queue, which moved with the
                        // slot): not a plain redirect. Asking again with the same request id
                        // finds it at the destination.
                        let msg = format!(
                            "{:?} moved to group {} while the request waited in its queue; ask again with the same request id",
                            key.1, to
                        );
                        answers.push((id, Err(NodeError::Unavailable(msg))));
                    }
                }
            }
            Output::Event { group, event, .. } => {
                let (key, result) = match event {
                    Event::Granted { name, session, request_id, token, .. } => {
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
            Output::Send { .. } | Output::RoleChanged { .. } | Output::Forward { .. } => {}
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
        if let Kind::Renew(keepalive, group) = kind {
            return self.renewed(keepalive, group, result, answers);
        }
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
            (Kind::Renew(..), _) => unreachable!("handled above"),
            (_, Ok(other)) => Err(NodeError::Unavailable(format!("unexpected reply {other:?}"))),
        };
        answers.push((id, answer));
    }
}
