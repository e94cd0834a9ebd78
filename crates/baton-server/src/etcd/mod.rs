//! etcd's v3 API on its own port (`--etcd-addr`): KV, Watch, Lease, Lock, Election, Cluster and
//! Maintenance over the etcd keyspace's Raft group ([`baton_core::topology::ETCD_GROUP`]).
//!
//! # Design
//! Any node answers: like an etcd member, a node that does not lead the keyspace's group hands
//! the call to the node that does, over the peer port ([`crate::forward`]), and relays its
//! answer; the client never sees a redirect (etcd's clients do not follow one). Writes are
//! proposals, reads are linearizable (a ReadIndex round on the leader), lease keepalives renew
//! the lease's session on the leader without a log entry. Watches are served from this node's
//! own replica, as an etcd member serves them from its own store ([`watch`]).
//!
//! Every call has one shape: [`EtcdCall`] in, [`EtcdAnswer`] out, the same whether it runs
//! here or is forwarded, so forwarding cannot drift from local serving.

pub mod auth;
pub mod convert;
pub mod feed;
mod kv;
mod lease;
mod maintenance;
pub mod recipes;
mod renew;
pub mod watch;

use std::time::Duration;

use baton_core::etcd::{Alarm, EtcdCommand, EtcdError, EtcdOutcome, RangeRequest, RangeResponse};
use baton_core::topology::ETCD_GROUP;
use baton_node::{Answer, EtcdLeaseInfo, NodeError, NodeId, Query, Reply, Request};
use baton_proto::etcd::etcdserverpb as pb;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tonic::{Code, Status};

use crate::forward::PeerChannels;
use crate::runtime::{Input, NodeHandle};

pub use auth::AuthService;
pub use kv::KvService;
pub use lease::LeaseService;
pub use maintenance::{ClusterService, MaintenanceService};
pub use recipes::{ElectionService, LockService};
pub use watch::WatchService;

/// Largest request etcd accepts (its `--max-request-bytes` default): a larger one is refused
/// with "etcdserver: request is too large".
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// What gRPC itself accepts on the etcd port (etcd adds 512 KiB of overhead to the above).
pub const MAX_GRPC_MESSAGE_BYTES: usize = MAX_REQUEST_BYTES + 512 * 1024;
/// The keyspace's quota unless `--etcd-quota-bytes` says otherwise (etcd's default).
pub const DEFAULT_QUOTA_BYTES: u64 = 2 << 30;
/// The etcd API version Baton's answers follow (what `Status` reports).
pub const ETCD_API_VERSION: &str = "3.5.0";
/// Redirects a call follows at once before it pauses.
const MAX_HOPS: usize = 3;
/// How long a call waits for the keyspace's group to have a leader (etcd's request timeout).
const LEADER_WAIT: Duration = Duration::from_secs(5);
/// How long a forwarded call may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// An etcd call for the keyspace's group, as it is run here or sent to its leader.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum EtcdCall {
    /// A write: proposed, answered once applied.
    Write(EtcdCommand),
    /// A linearizable range.
    Range(RangeRequest),
    /// Leases: renewed first if `renew`, with their keys if `keys`.
    Lease { ids: Vec<i64>, renew: bool, keys: bool },
    /// Every lease's id.
    Leases,
    /// The alarms raised.
    Alarms,
    /// A change to the users and roles (etcd's Auth service), for the meta group, with proof
    /// of the user that asked for it (`None`: authentication was off where it was asked),
    /// which the node that runs a forwarded change checks again (see `serve_forwarded`).
    Auth { command: baton_core::auth::AuthCommand, proof: Option<crate::access::ForwardProof> },
}

impl EtcdCall {
    /// The group that serves it: the keyspace's, or for users and roles the meta group.
    pub fn group(&self) -> baton_node::GroupId {
        match self {
            EtcdCall::Auth { .. } => baton_core::META_GROUP,
            _ => ETCD_GROUP,
        }
    }
}

/// What an [`EtcdCall`] returned.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum EtcdAnswer {
    Written(EtcdOutcome),
    Range {
        revision: i64,
        response: RangeResponse,
    },
    Lease {
        revision: i64,
        leases: Vec<Option<EtcdLeaseInfo>>,
    },
    Leases {
        revision: i64,
        ids: Vec<i64>,
    },
    Alarms {
        revision: i64,
        alarms: Vec<(u64, baton_core::etcd::Alarm)>,
    },
    /// The users and roles changed (to this auth revision).
    AuthChanged {
        revision: u64,
    },
}

/// What the node a call was forwarded to answered.
enum Remote {
    Answer(EtcdAnswer),
    /// It does not lead the keyspace (the leader it knows of).
    Redirect(Option<NodeId>),
    /// It refused the call (etcd's errors keep their code and message).
    Refused(Status),
}

/// A failed call as it travels back from the node that ran it: a gRPC code and message.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EtcdFailure {
    pub code: i32,
    pub message: String,
}

impl From<EtcdFailure> for Status {
    fn from(f: EtcdFailure) -> Status {
        Status::new(Code::from_i32(f.code), f.message)
    }
}

impl From<Status> for EtcdFailure {
    fn from(s: Status) -> EtcdFailure {
        EtcdFailure { code: s.code() as i32, message: s.message().to_string() }
    }
}

/// The status etcd's clients expect for a node error. etcd's own refusals keep etcd's code and
/// message; a leader that is not known yet is etcd's "no leader"; everything else says what
/// happened and may be retried.
pub fn etcd_status(err: NodeError) -> Status {
    match err {
        NodeError::Rejected(baton_core::Error::Etcd(e)) => etcd_error_status(&e),
        NodeError::Rejected(baton_core::Error::Auth(e)) => auth::auth_error_status(&e),
        NodeError::Rejected(e @ baton_core::Error::LimitExceeded(_)) => Status::resource_exhausted(e.to_string()),
        NodeError::Rejected(e) => Status::invalid_argument(e.to_string()),
        NodeError::NotLeader { leader: None, .. } => Status::unavailable("etcdserver: no leader"),
        NodeError::NotLeader { leader: Some(l), .. } => {
            Status::unavailable(format!("etcdserver: leader changed (now node {l}); retry"))
        }
        NodeError::Busy(n) => Status::resource_exhausted(format!("etcdserver: too many requests ({n} waiting)")),
        NodeError::NoGroup(g) => Status::unavailable(format!("this node holds no replica of group {g}")),
        other => Status::unavailable(other.to_string()),
    }
}

/// The status etcd sends one of its refusals with.
pub fn etcd_error_status(e: &EtcdError) -> Status {
    use baton_core::etcd::Code as C;
    let code = match e.code() {
        C::InvalidArgument => Code::InvalidArgument,
        C::NotFound => Code::NotFound,
        C::FailedPrecondition => Code::FailedPrecondition,
        C::OutOfRange => Code::OutOfRange,
        C::ResourceExhausted => Code::ResourceExhausted,
    };
    Status::new(code, e.to_string())
}

/// The etcd services' way to the keyspace's group: here if this node leads it, else through
/// its leader.
#[derive(Clone)]
pub struct Backend {
    pub(crate) node: NodeHandle,
    pub(crate) peers: PeerChannels,
    /// Lease renewals waiting to be sent together.
    renewals: std::sync::Arc<renew::Renewals>,
    /// Who may do what (the same checks as every API's).
    pub(crate) access: crate::access::Access,
}

impl Backend {
    /// A backend over `node`, forwarding through `peers`.
    pub fn new(node: NodeHandle, peers: PeerChannels) -> Backend {
        let access = crate::access::Access::new(node.view.clone(), node.metrics.clone());
        Backend { node, peers, renewals: Default::default(), access }
    }

    /// Who sent `request` and whether it may do `needs` ([`crate::access::Access::admit`]),
    /// refused in etcd's words ([`auth::etcd_refusal`]).
    pub fn admit<T>(
        &self,
        request: &tonic::Request<T>,
        rpc: &str,
        needs: &[crate::access::Need],
    ) -> Result<crate::access::Caller, Status> {
        let caller = self.access.admit(request, rpc, needs).map_err(auth::etcd_refusal)?;
        // Keepalives are not counted against the user's request rate (see `Access::charge`).
        if rpc != "LeaseKeepAlive" {
            self.access.charge(&caller)?;
        }
        Ok(caller)
    }

    /// Whether `caller` may still do `needs` (a stream's later requests), in etcd's words.
    pub fn check(
        &self,
        caller: &crate::access::Caller,
        rpc: &str,
        needs: &[crate::access::Need],
    ) -> Result<(), Status> {
        self.access.check(caller, rpc, needs).map_err(auth::etcd_refusal)
    }

    /// Runs `call` on the keyspace group's leader and returns its answer. While the group has
    /// no leader (an election or a leadership transfer), the call waits for one, up to
    /// 5 s, as etcd's members hold requests until a leader is known: only calls
    /// that were certainly not applied are tried again.
    pub async fn call(&self, call: EtcdCall) -> Result<EtcdAnswer, Status> {
        let group = call.group();
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        let mut target = self.leader_hint(group);
        let mut pause = Duration::from_millis(5);
        // Redirects followed without a pause (views of who leads can disagree for a moment).
        let mut hops = 0;
        loop {
            let result = match target {
                Some(to) if to != self.node.id => match self.forward(to, &call).await {
                    Ok(Remote::Answer(a)) => Ok(a),
                    Ok(Remote::Redirect(leader)) => Err(NodeError::NotLeader { group, leader }),
                    // The leader's refusal (etcd's errors): final, as if it were served here.
                    Ok(Remote::Refused(status)) => return Err(status),
                    // The node it went to did not answer (down, or gone): a read or a renewal
                    // is tried again once a leader is known; a write may have been applied
                    // there, so its caller is told it is unknown.
                    Err(_) if !matches!(call, EtcdCall::Write(_) | EtcdCall::Auth { .. }) => {
                        Err(NodeError::NotLeader { group, leader: None })
                    }
                    Err(s) => return Err(s),
                },
                _ => self.local(call.clone()).await,
            };
            let retry_at = match result {
                Ok(answer) => return Ok(answer),
                // Another node leads: go there at once (a new hint), else after a pause.
                Err(NodeError::NotLeader { leader: Some(l), .. }) if Some(l) != target && hops < MAX_HOPS => {
                    hops += 1;
                    target = Some(l);
                    continue;
                }
                Err(NodeError::NotLeader { leader, .. }) => {
                    // A hint that just failed is not taken again at once.
                    target =
                        leader.or_else(|| self.leader_hint(group)).filter(|l| Some(*l) != target || leader.is_some());
                    tokio::time::Instant::now() + pause
                }
                Err(NodeError::NoGroup(_)) => {
                    return Err(Status::unavailable(
                        "this cluster has no etcd keyspace: it was created by a Baton without one",
                    ))
                }
                Err(e) => return Err(etcd_status(e)),
            };
            if retry_at >= deadline {
                return Err(etcd_status(NodeError::NotLeader { group, leader: None }));
            }
            tokio::time::sleep_until(retry_at).await;
            pause = (pause * 2).min(Duration::from_millis(100));
            hops = 0;
        }
    }

    /// `group`'s leader as this node knows it.
    fn leader_hint(&self, group: baton_node::GroupId) -> Option<NodeId> {
        self.node.view.lock().expect("view lock").leaders.get(&group).copied().flatten()
    }

    /// Runs `call` on this node's replica (refused with NotLeader unless it leads).
    pub async fn local(&self, call: EtcdCall) -> Result<EtcdAnswer, NodeError> {
        if let EtcdCall::Write(c) = &call {
            self.check_quota(c).await?;
        }
        let group = call.group();
        let request = match call {
            EtcdCall::Write(c) => Request::Propose(baton_core::Command::Etcd(c)),
            EtcdCall::Auth { command, .. } => Request::Propose(baton_core::Command::Auth(command)),
            EtcdCall::Range(r) => Request::Read(Query::EtcdRange(Box::new(r))),
            EtcdCall::Lease { ids, renew, keys } => Request::Read(Query::EtcdLease { ids, renew, keys }),
            EtcdCall::Leases => Request::Read(Query::EtcdLeases),
            EtcdCall::Alarms => Request::Read(Query::EtcdAlarms),
        };
        match self.request(group, request).await? {
            Answer::Applied(baton_core::Outcome::Etcd(o)) => Ok(EtcdAnswer::Written(o)),
            Answer::Applied(baton_core::Outcome::AuthChanged { revision }) => Ok(EtcdAnswer::AuthChanged { revision }),
            Answer::Read(Reply::EtcdRange { revision, response }) => Ok(EtcdAnswer::Range { revision, response }),
            Answer::Read(Reply::EtcdLease { revision, leases }) => Ok(EtcdAnswer::Lease { revision, leases }),
            Answer::Read(Reply::EtcdLeases { revision, ids }) => Ok(EtcdAnswer::Leases { revision, ids }),
            Answer::Read(Reply::EtcdAlarms { revision, alarms }) => Ok(EtcdAnswer::Alarms { revision, alarms }),
            other => Err(NodeError::Unavailable(format!("unexpected answer to an etcd call: {other:?}"))),
        }
    }

    async fn request(&self, group: baton_node::GroupId, request: Request) -> Result<Answer, NodeError> {
        let (tx, rx) = oneshot::channel();
        if !self.node.send(Input::request(Some(group), request, tx)) {
            return Err(NodeError::Unavailable("node is shutting down".into()));
        }
        rx.await.map_err(|_| NodeError::Unavailable("node is shutting down".into()))?
    }

    /// The quota, checked by the keyspace's leader before it proposes a write that adds data
    /// (etcd checks it on the member that takes the request, before proposing too): if the
    /// kept history plus the write would outgrow `--etcd-quota-bytes`, the NOSPACE alarm is
    /// raised (through the log: every replica then refuses such writes until an operator
    /// disarms it) and the write refused.
    async fn check_quota(&self, command: &EtcdCommand) -> Result<(), NodeError> {
        let cost = quota_cost(command);
        let (quota, leading) = {
            let view = self.node.view.lock().expect("view lock");
            (view.etcd_quota_bytes, view.leaders.get(&ETCD_GROUP).copied().flatten() == Some(self.node.id))
        };
        if cost == 0 || quota == 0 || !leading || self.node.etcd_feed.store_bytes() + cost <= quota {
            return Ok(());
        }
        let raise = EtcdCommand::Alarm { activate: true, member: self.node.id, alarm: Alarm::NoSpace };
        if let Err(e) = self.request(ETCD_GROUP, Request::Propose(baton_core::Command::Etcd(raise))).await {
            tracing::warn!(
                "the etcd keyspace is over its quota ({quota} bytes) but the NOSPACE alarm was not raised: {e}"
            );
        }
        Err(NodeError::Rejected(baton_core::Error::Etcd(EtcdError::NoSpace)))
    }

    /// Sends `call` to node `to` over the peer port: what that node answered, or (the error)
    /// that the call did not come back from it.
    async fn forward(&self, to: NodeId, call: &EtcdCall) -> Result<Remote, Status> {
        let Some(mut client) = self.peers.get(to) else {
            return Err(Status::unavailable(format!(
                "node {to} leads the etcd keyspace; its peer address is not known"
            )));
        };
        let request = baton_proto::peer::ForwardRequest {
            from: self.node.id,
            group: call.group(),
            etcd: bincode::serialize(call).expect("etcd calls serialise"),
            ..Default::default()
        };
        let response = match tokio::time::timeout(FORWARD_TIMEOUT, client.forward(request)).await {
            Ok(Ok(r)) => r.into_inner(),
            // Whether a write that timed out or failed in flight was applied is not known.
            Ok(Err(s)) => {
                return Err(Status::unavailable(format!("node {to} (the keyspace's leader): {}", s.message())))
            }
            Err(_) => {
                return Err(Status::unavailable(format!("node {to} (the keyspace's leader) did not answer in time")))
            }
        };
        if response.not_leader {
            return Ok(Remote::Redirect((response.leader != 0).then_some(response.leader)));
        }
        if !response.error.is_empty() {
            return Ok(Remote::Refused(Status::unavailable(response.error)));
        }
        Ok(match decode_answer(&response.etcd) {
            Ok(Ok(answer)) => Remote::Answer(answer),
            Ok(Err(failure)) => Remote::Refused(failure.into()),
            Err(e) => Remote::Refused(Status::internal(format!("undecodable answer from node {to}: {e}"))),
        })
    }

    /// The header of an answer about the keyspace at `revision`.
    pub fn header(&self, revision: i64) -> Option<pb::ResponseHeader> {
        let view = self.node.view.lock().expect("view lock");
        Some(pb::ResponseHeader {
            cluster_id: cluster_id(&view.topology.founders),
            member_id: self.node.id,
            revision,
            raft_term: view.terms.get(&ETCD_GROUP).copied().unwrap_or(0),
        })
    }
}

/// The cluster's id as etcd shows it: a hash of the founding members, the same on every node.
pub fn cluster_id(founders: &[NodeId]) -> u64 {
    // FNV-1a: stable across builds and platforms (std's hasher is not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for f in founders {
        for b in f.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// A forwarded etcd call as the serving side reads it from a peer.
pub fn decode_call(bytes: &[u8]) -> Result<EtcdCall, Status> {
    bincode::deserialize(bytes).map_err(|e| Status::invalid_argument(format!("undecodable etcd call: {e}")))
}

/// A forwarded etcd call's answer as the asking side reads it from a peer.
pub fn decode_answer(bytes: &[u8]) -> bincode::Result<Result<EtcdAnswer, EtcdFailure>> {
    bincode::deserialize(bytes)
}

/// The serving side of a forwarded etcd call (decoded by [`decode_call`]): runs it on this
/// node's replica.
pub(crate) async fn serve_forwarded(
    node: &NodeHandle,
    call: EtcdCall,
) -> Result<baton_proto::peer::ForwardResponse, Status> {
    let backend = Backend::new(node.clone(), PeerChannels::none());
    let mut response = baton_proto::peer::ForwardResponse::default();
    // A change to users and roles is checked again here, by its user's token: the peer port
    // takes calls from nodes, not users, and a node without mutual TLS on it could be anyone
    // (review finding). A token key never comes from the wire: this node makes it.
    // A change whose proof checked out uses it up only once this node took it as the leader
    // (review finding: a proof spent by a node that then answered "not the leader" made the
    // asking node's retry fail).
    let mut spent = None;
    let call = match call {
        EtcdCall::Auth { command, proof } => {
            backend.access.check_forwarded_admin(proof.as_ref(), &command)?;
            spent = proof.clone();
            let command = match command {
                baton_core::auth::AuthCommand::Enable { .. } => {
                    baton_core::auth::AuthCommand::Enable { token_key: crate::access::secrets::token_key() }
                }
                other => other,
            };
            EtcdCall::Auth { command, proof }
        }
        other => other,
    };
    let result: Result<EtcdAnswer, EtcdFailure> = match backend.local(call).await {
        Err(NodeError::NotLeader { leader, .. }) => {
            response.not_leader = true;
            response.leader = leader.unwrap_or(0);
            return Ok(response);
        }
        _ if spent.as_ref().is_some_and(|p| !backend.access.spend_forward_proof(p)) => {
            // Another call with the same proof got here first (both ran: changes to users and
            // roles applied twice leave the same state, or are refused the second time).
            Err(crate::access::forward_proof_reused().into())
        }
        Ok(a) => Ok(a),
        Err(e) => Err(etcd_status(e).into()),
    };
    response.etcd = bincode::serialize(&result).expect("etcd answers serialise");
    Ok(response)
}

/// The etcd API's gRPC services over `backend`, ready to serve. With authentication on, each
/// call states what it needs of the caller's grants on the keys it touches and is checked by the
/// same [`crate::access::Access`] as Baton's own API (see [`auth`]).
pub fn router(backend: Backend, progress_every: Duration) -> tonic::transport::server::Router {
    use baton_proto::etcd::etcdserverpb::{
        auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
        maintenance_server::MaintenanceServer, watch_server::WatchServer,
    };
    use baton_proto::etcd::v3electionpb::election_server::ElectionServer;
    use baton_proto::etcd::v3lockpb::lock_server::LockServer;
    let limit = MAX_GRPC_MESSAGE_BYTES;
    crate::grpc_server()
        .trace_fn(|req| crate::obs::trace::root(|| tracing::debug_span!("etcd.grpc", method = %req.uri().path())))
        .add_service(KvServer::new(KvService { backend: backend.clone() }).max_decoding_message_size(limit))
        .add_service(
            WatchServer::new(WatchService { backend: backend.clone(), progress_every })
                .max_decoding_message_size(limit),
        )
        .add_service(LeaseServer::new(LeaseService { backend: backend.clone() }).max_decoding_message_size(limit))
        .add_service(ClusterServer::new(ClusterService { backend: backend.clone() }))
        .add_service(LockServer::new(LockService { backend: backend.clone() }))
        .add_service(ElectionServer::new(ElectionService { backend: backend.clone() }).max_decoding_message_size(limit))
        .add_service(AuthServer::new(AuthService { backend: backend.clone() }))
        .add_service(MaintenanceServer::new(MaintenanceService { backend }))
}

/// What a write adds to the keyspace as the quota counts it (etcd's rule: a put its key and
/// value and some overhead, a transaction its larger branch, a lease grant a fixed overhead;
/// anything else frees space or adds none).
pub fn quota_cost(command: &EtcdCommand) -> u64 {
    use baton_core::etcd::Op;
    const OVERHEAD: u64 = 64;
    fn ops(list: &[Op]) -> u64 {
        list.iter()
            .map(|op| match op {
                Op::Put(p) => OVERHEAD + p.key.len() as u64 + p.value.len() as u64,
                Op::Txn(t) => ops(&t.success).max(ops(&t.failure)),
                _ => 0,
            })
            .sum()
    }
    match command {
        EtcdCommand::Put(p) => OVERHEAD + p.key.len() as u64 + p.value.len() as u64,
        EtcdCommand::Txn(t) => ops(&t.success).max(ops(&t.failure)),
        EtcdCommand::LeaseGrant { .. } => OVERHEAD,
        _ => 0,
    }
}

/// Refuses a request larger than etcd accepts.
pub fn check_size(len: usize) -> Result<(), Status> {
    if len > MAX_REQUEST_BYTES {
        return Err(etcd_error_status(&EtcdError::RequestTooLarge));
    }
    Ok(())
}

/// The answer of a write, or an internal error if the keyspace answered something else.
fn written(answer: EtcdAnswer) -> Result<EtcdOutcome, Status> {
    match answer {
        EtcdAnswer::Written(o) => Ok(o),
        other => Err(Status::internal(format!("unexpected answer to an etcd write: {other:?}"))),
    }
}
