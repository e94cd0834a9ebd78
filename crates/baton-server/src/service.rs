//! The client-facing gRPC service: sessions, locks, status.
//!
//! Handlers validate cheap things first (so garbage never costs a log write), then hand the
//! request to the node thread and await its answer. Every request is served by the leader of the
//! group; a follower answers `UNAVAILABLE` with the leader's address (see [`crate::status`]).

use std::pin::Pin;

use baton_core::{Command, Kind, Mode, Outcome};
use baton_node::{AcquireResult, Answer, GroupId, Query, Reply, Request as NodeRequest, Role};
use baton_proto::v1 as pb;
use baton_proto::v1::baton_server::Baton;
use futures::Stream;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status, Streaming};

use crate::access::{rules, Access, Caller, Need};
use crate::runtime::{Input, NodeHandle};
use crate::status::{stopped, to_status};
use baton_core::auth::Permission;

pub mod auth;
pub mod crdt;
pub mod requests;

use requests::Asked;
pub use requests::{home_group, MAX_KEEPALIVE_SESSIONS};
/// Most password checks running at once on a node (`Authenticate`).
pub const MAX_AUTHENTICATIONS: usize = 4;
static AUTHENTICATIONS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_AUTHENTICATIONS);

/// Most calls in flight on one `Call` stream; more are answered RESOURCE_EXHAUSTED.
pub const MAX_CALLS_IN_FLIGHT: usize = 10_000;

/// The `baton.v1.Baton` service.
#[derive(Clone)]
pub struct BatonService {
    /// The node thread.
    pub node: NodeHandle,
    /// Who may do what (every node request is checked in `BatonService::request`).
    pub access: Access,
    /// The coordination-free tier's thread.
    pub crdt: crate::crdt::CrdtHandle,
}

impl BatonService {
    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Input) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        if !self.node.send(make(tx)) {
            return Err(stopped());
        }
        rx.await.map_err(|_| stopped())
    }

    /// Hands a request from `caller` to the node: for `group`, or (`None`) for the group
    /// serving its name. The one door to the node: what the request needs is checked here.
    async fn request(&self, caller: &Caller, group: Option<GroupId>, request: NodeRequest) -> Result<Answer, Status> {
        self.access.check(caller, rules::label(&request), &rules::of_request(&request))?;
        if !rules::gives_back(&request) {
            self.access.charge(caller)?;
        }
        let user = self.access.principal(caller);
        self.call(|tx| Input::request_for(group, request, user, tx)).await?.map_err(|e| to_status(e, &self.node))
    }

    /// Proposes a command about a name to `group` (`None`: the group that serves it by this
    /// node's map).
    async fn propose_on(&self, caller: &Caller, group: Option<GroupId>, command: Command) -> Result<Outcome, Status> {
        self.propose(caller, group, command).await
    }

    async fn propose(&self, caller: &Caller, group: Option<GroupId>, command: Command) -> Result<Outcome, Status> {
        match self.request(caller, group, NodeRequest::Propose(command)).await? {
            Answer::Applied(outcome) => Ok(outcome),
            other => Err(Status::internal(format!("unexpected answer {other:?}"))),
        }
    }

    async fn read(&self, caller: &Caller, group: Option<GroupId>, query: Query) -> Result<Reply, Status> {
        match self.request(caller, group, NodeRequest::Read(query)).await? {
            Answer::Read(reply) => Ok(reply),
            other => Err(Status::internal(format!("unexpected answer {other:?}"))),
        }
    }

    /// The data group that serves `name`, by this node's slot map.
    fn group_of(&self, name: &str) -> GroupId {
        self.node.view.lock().expect("view lock").group_of(name)
    }
}

impl BatonService {
    async fn members(&self, caller: &Caller, command: Command) -> Result<Response<pb::MembersResponse>, Status> {
        match self.propose(caller, Some(baton_node::META_GROUP), command).await? {
            Outcome::MembersChanged { changed, version } => Ok(Response::new(pb::MembersResponse { changed, version })),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }
}

fn permits_of(mode: Mode) -> u32 {
    if let Mode::Permits(n) = mode {
        n
    } else {
        0
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<pb::KeepAliveResponse, Status>> + Send>>;
type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;
type CallStream = Pin<Box<dyn Stream<Item = Result<pb::CallResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Baton for BatonService {
    async fn hot(&self, request: Request<pb::HotRequest>) -> Result<Response<pb::HotResponse>, Status> {
        let caller = self.access.admit(&request, "Hot", &[Need::somewhere(Permission::Read)])?;
        self.access.charge(&caller)?;
        let mut hot = crate::obs::api::hot(&self.node, request.into_inner().limit).await?;
        // Only the names the caller may read.
        hot.names.retain(|n| self.access.may_read(&caller, &n.name));
        Ok(Response::new(hot))
    }

    async fn history(&self, request: Request<pb::HistoryRequest>) -> Result<Response<pb::HistoryResponse>, Status> {
        let name = &request.get_ref().name;
        let caller = self.access.admit(&request, "History", &[Need::name(Permission::Read, name)])?;
        self.access.charge(&caller)?;
        let req = request.into_inner();
        requests::history(&req)?;
        crate::obs::api::history(&self.node, &req.name, req.group, req.limit).map(Response::new)
    }

    async fn open_session(
        &self,
        request: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionResponse>, Status> {
        let caller = self.access.caller_of(&request)?;
        // The home group is the one serving the client id's slot: a retry of the same open
        // reaches the same group (while the map is unchanged), which makes it idempotent.
        let (group, command) =
            requests::open_session(request.into_inner(), caller.user(), |client| self.group_of(client))?;
        match self.propose(&caller, Some(group), command).await? {
            Outcome::SessionOpened { session, ttl_ms } => {
                let session_proof = self.access.session_proof(&caller, session);
                Ok(Response::new(pb::OpenSessionResponse { session_id: session, ttl_ms, group, session_proof }))
            }
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn attach_session(
        &self,
        request: Request<pb::AttachSessionRequest>,
    ) -> Result<Response<pb::OpenSessionResponse>, Status> {
        let caller = self.access.caller_of(&request)?;
        let req = request.into_inner();
        let (group, command) = requests::attach_session(&req, caller.user())?;
        // The records of other groups do not know who the session belongs to: its home does,
        // and gave the proof to that user only.
        self.access.check_session_proof(&caller, req.session_id, &req.session_proof)?;
        match self.propose(&caller, Some(group), command).await? {
            Outcome::SessionOpened { session, ttl_ms } => {
                let session_proof = req.session_proof;
                Ok(Response::new(pb::OpenSessionResponse { session_id: session, ttl_ms, group, session_proof }))
            }
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn close_session(
        &self,
        request: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::CloseSessionResponse>, Status> {
        let caller = self.access.caller_of(&request)?;
        let (group, command) = requests::close_session(&request.into_inner())?;
        match self.propose(&caller, Some(group), command).await? {
            Outcome::SessionClosed { released } => Ok(Response::new(pb::CloseSessionResponse { released })),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    type KeepAliveStream = KeepAliveStream;

    async fn keep_alive(
        &self,
        request: Request<Streaming<pb::KeepAliveRequest>>,
    ) -> Result<Response<Self::KeepAliveStream>, Status> {
        let caller = self.access.caller_of(&request)?;
        let mut incoming = request.into_inner();
        let svc = self.clone();
        let stream = async_stream(move |tx| async move {
            while let Some(req) = incoming.message().await? {
                // Not the leader (any more): the error ends the stream and the client must
                // reconnect to the leader.
                let answer = renew(&svc, &caller, req).await?;
                if tx.send(Ok(answer)).await.is_err() {
                    break;
                }
            }
            Ok(())
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn acquire(&self, request: Request<pb::AcquireRequest>) -> Result<Response<pb::AcquireResponse>, Status> {
        // A caller that goes away is not taken as a cancel: it may be retrying elsewhere with the
        // same request id. Callers withdraw explicitly with Cancel; dead ones with their session.
        let caller = self.access.caller_of(&request)?;
        let (group, request) = requests::acquire(request.into_inner())?;
        let session = request.session;
        let Answer::Acquire(result) = self.request(&caller, group, NodeRequest::Acquire(request)).await? else {
            return Err(Status::internal("unexpected answer to an acquire"));
        };
        use pb::acquire_response::Result as R;
        let response = match result {
            AcquireResult::Granted(token) => {
                pb::AcquireResponse { result: R::Granted as i32, token, holder_session: session }
            }
            AcquireResult::NotAvailable(holder) => {
                pb::AcquireResponse { result: R::NotAvailable as i32, token: 0, holder_session: holder.unwrap_or(0) }
            }
            AcquireResult::TimedOut => pb::AcquireResponse { result: R::TimedOut as i32, token: 0, holder_session: 0 },
        };
        Ok(Response::new(response))
    }

    async fn release(&self, request: Request<pb::ReleaseRequest>) -> Result<Response<pb::ReleaseResponse>, Status> {
        let caller = self.access.caller_of(&request)?;
        let (group, command) = requests::release(request.into_inner())?;
        self.propose_on(&caller, group, command).await?;
        Ok(Response::new(pb::ReleaseResponse {}))
    }

    async fn cancel(&self, request: Request<pb::CancelRequest>) -> Result<Response<pb::CancelResponse>, Status> {
        let caller = self.access.caller_of(&request)?;
        let (group, command) = requests::cancel(request.into_inner())?;
        match self.propose_on(&caller, group, command).await? {
            Outcome::Cancelled { granted } => {
                Ok(Response::new(pb::CancelResponse { granted_token: granted.unwrap_or(0) }))
            }
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn proclaim(&self, request: Request<pb::ProclaimRequest>) -> Result<Response<pb::ProclaimResponse>, Status> {
        let caller = self.access.caller_of(&request)?;
        let (group, command) = requests::proclaim(request.into_inner())?;
        self.propose_on(&caller, group, command).await?;
        Ok(Response::new(pb::ProclaimResponse {}))
    }

    async fn latch(&self, request: Request<pb::LatchRequest>) -> Result<Response<pb::LatchResponse>, Status> {
        let caller = self.access.caller_of(&request)?;
        let (group, command) = requests::latch(request.into_inner())?;
        match self.propose_on(&caller, group, command).await? {
            Outcome::Latch { count, set } => Ok(Response::new(pb::LatchResponse { count, set })),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn counter(&self, request: Request<pb::CounterRequest>) -> Result<Response<pb::CounterResponse>, Status> {
        let caller = self.access.caller_of(&request)?;
        let (group, command) = match requests::counter(request.into_inner())? {
            (group, Asked::Write(command)) => (group, command),
            (group, Asked::Read(query)) => {
                let Reply::Counter(value) = self.read(&caller, group, query).await? else {
                    return Err(Status::internal("unexpected reply to a counter read"));
                };
                return Ok(Response::new(pb::CounterResponse { value, swapped: false }));
            }
        };
        match self.propose_on(&caller, group, command).await? {
            Outcome::Counter { value, swapped } => Ok(Response::new(pb::CounterResponse { value, swapped })),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let caller = self.access.caller_of(&request)?;
        let (group, command) = match requests::register(request.into_inner())? {
            (group, Asked::Write(command)) => (group, command),
            (group, Asked::Read(query)) => {
                let Reply::Register(r) = self.read(&caller, group, query).await? else {
                    return Err(Status::internal("unexpected reply to a register read"));
                };
                let (value, version) = r.unwrap_or_default();
                return Ok(Response::new(pb::RegisterResponse { version, swapped: false, value }));
            }
        };
        match self.propose_on(&caller, group, command).await? {
            Outcome::Register { version, swapped } => {
                Ok(Response::new(pb::RegisterResponse { version, swapped, value: Vec::new() }))
            }
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn crdt(&self, request: Request<pb::CrdtRequest>) -> Result<Response<pb::CrdtResponse>, Status> {
        let caller = self.access.caller_of(&request)?;
        let (req, timeout) = crdt::request(request.into_inner())?;
        self.access.check(&caller, "Crdt", &rules::of_crdt(&req))?;
        self.access.charge(&caller)?;
        let reply = self
            .crdt
            .request(req, timeout)
            .await
            .map_err(|e| crate::status::crdt_status(e, |n| self.crdt.addr_of(n)))?;
        Ok(Response::new(crdt::response(reply, self.node.id)))
    }

    type WatchStream = WatchStream;
    type CallStream = CallStream;

    async fn call(&self, request: Request<Streaming<pb::CallRequest>>) -> Result<Response<Self::CallStream>, Status> {
        let caller = self.access.caller_of(&request)?;
        let incoming = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        // Outside the stream's span: a client keeps its stream for its whole life, and each call
        // on it is sampled (and traced) on its own.
        tokio::spawn(serve_calls(self.clone(), caller, incoming, tx));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let need = if request.get_ref().prefix {
            Need::prefix(Permission::Read, &request.get_ref().name)
        } else {
            Need::name(Permission::Read, &request.get_ref().name)
        };
        let caller = self.access.admit(&request, "Watch", std::slice::from_ref(&need))?;
        let req = request.into_inner();
        requests::watch(&req)?;
        if req.crdt {
            let (tx, rx) = tokio::sync::mpsc::channel(256);
            let (tier, access) = (self.crdt.clone(), self.access.clone());
            tokio::spawn(crdt::watch(tier, access, caller, need, req.name, req.prefix, tx));
            return Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))));
        }
        // A name's events are its group's; a prefix covers every group this node holds.
        let groups: Vec<(GroupId, u64)> = if req.prefix {
            let logs = self.node.events.lock().expect("event log").groups();
            logs.into_iter()
                // Baton's names live in the data groups (the etcd keyspace's sessions do not).
                .filter(|g| *g != baton_node::META_GROUP && *g != baton_core::topology::ETCD_GROUP)
                .map(|g| (g, req.start_seqs.get(&g).copied().unwrap_or(0)))
                .collect()
        } else {
            vec![(self.group_of(&req.name), req.start_seq)]
        };
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        for (group, start_seq) in groups {
            let (subscribed, last) = {
                let mut logs = self.node.events.lock().expect("event log");
                let log = logs.group(group);
                (log.subscribe(start_seq), log.last_seq())
            };
            let (kept, live) = subscribed.map_err(|first| {
                Status::out_of_range(format!(
                    "events of group {group} before seq {first} are no longer kept on node {} (history trimmed, or the node restarted): read the current state, then watch from seq {first}",
                    self.node.id
                ))
            })?;
            let feed = GroupFeed {
                group,
                name: req.name.clone(),
                prefix: req.prefix,
                start_seq,
                last,
                kept,
                live,
                access: self.access.clone(),
                caller: caller.clone(),
                need: need.clone(),
            };
            tokio::spawn(feed.run(tx.clone()));
        }
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn describe(&self, request: Request<pb::DescribeRequest>) -> Result<Response<pb::DescribeResponse>, Status> {
        let caller = self.access.caller_of(&request)?;
        let (group, query) = requests::describe(request.into_inner())?;
        let Reply::Lock { kind, holders, waiters, closed_until_ms, now_ms } = self.read(&caller, group, query).await?
        else {
            return Err(Status::internal("unexpected reply to a lock read"));
        };
        let holder = holders.first().cloned();
        let (pb_kind, capacity) = match kind {
            Kind::Mutex => (pb::ResourceKind::Lock, 0),
            Kind::RwLock => (pb::ResourceKind::Rwlock, 0),
            Kind::Semaphore { capacity } => (pb::ResourceKind::Semaphore, capacity),
            Kind::Election => (pb::ResourceKind::Election, 0),
            Kind::Barrier { parties } => (pb::ResourceKind::Barrier, parties),
            Kind::Latch => (pb::ResourceKind::Latch, 0),
        };
        let holders = holders
            .iter()
            .map(|h| pb::Holder {
                session_id: h.session,
                token: h.token,
                held_for_ms: now_ms.saturating_sub(h.granted_ms),
                shared: h.mode == Mode::Shared,
                permits: permits_of(h.mode),
                value: h.value.clone(),
            })
            .collect();
        let waiters = waiters
            .into_iter()
            .map(|w| pb::Waiter {
                session_id: w.session,
                request_id: w.request_id,
                waited_ms: now_ms.saturating_sub(w.queued_ms),
                deadline_in_ms: w.deadline_ms.saturating_sub(now_ms),
                shared: w.mode == Mode::Shared,
                permits: permits_of(w.mode),
            })
            .collect();
        Ok(Response::new(pb::DescribeResponse {
            held: holder.is_some(),
            holder_session: holder.as_ref().map_or(0, |h| h.session),
            token: holder.as_ref().map_or(0, |h| h.token),
            held_for_ms: holder.as_ref().map_or(0, |h| now_ms.saturating_sub(h.granted_ms)),
            waiters,
            lock_delay_remaining_ms: closed_until_ms.saturating_sub(now_ms),
            kind: pb_kind as i32,
            capacity,
            holders,
        }))
    }

    async fn status(&self, request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        // Names nothing: any user may see it (once authenticated, when that is on).
        self.access.admit_nameless(&request, "Status")?;
        let mut groups = self.call(|tx| Input::Status { tx }).await?;
        // Data groups first, in id order, then the meta group: `groups[0]` of a one-group
        // cluster is its data group, as before sharding.
        groups.sort_by_key(|g| (g.id == baton_node::META_GROUP, g.id));
        let groups = groups
            .into_iter()
            .map(|g| pb::GroupStatus {
                id: g.id,
                leader: g.leader.unwrap_or(0),
                term: g.term,
                commit_index: g.commit,
                applied_index: g.applied,
                role: if g.role == Role::Leader { "leader" } else { "follower" }.to_string(),
                sessions: g.sessions as u64,
                locks: g.locks as u64,
                waiters: g.waiters as u64,
                last_token: g.last_token,
                slots: to_ranges(&g.slots),
                replicas: g.replicas,
                asleep: g.asleep,
            })
            .collect();
        let view = self.node.view.lock().expect("view lock");
        let nodes = node_list(&view);
        let (torn_tail_bytes, unclean_start) = (view.torn_tail_bytes, view.unclean_start);
        Ok(Response::new(pb::StatusResponse { node_id: self.node.id, groups, nodes, torn_tail_bytes, unclean_start }))
    }

    async fn move_slots(
        &self,
        request: Request<pb::MoveSlotsRequest>,
    ) -> Result<Response<pb::MoveSlotsResponse>, Status> {
        let caller = self.access.caller_of(&request)?;
        let command = requests::move_slots(&request.into_inner())?;
        let (move_id, begun_at) = match self.propose(&caller, Some(baton_node::META_GROUP), command).await? {
            Outcome::MoveBegun { move_id, version } => (move_id, version),
            other => return Err(Status::internal(format!("unexpected outcome {other:?}"))),
        };
        // This node leads the meta group, so its map learns of the finish first: the version
        // past the one the move began at, without the move.
        let deadline = tokio::time::Instant::now() + MOVE_WAIT;
        loop {
            let version = {
                let view = self.node.view.lock().expect("view lock");
                let t = &view.topology;
                (t.version > begun_at && !t.moves.contains_key(&move_id)).then_some(t.version)
            };
            if let Some(version) = version {
                return Ok(Response::new(pb::MoveSlotsResponse { move_id, version }));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Status::deadline_exceeded(format!(
                    "move {move_id} is still under way after {MOVE_WAIT:?} (a group without a leader?); it goes on by \
                     itself: see `baton status`"
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    async fn add_node(&self, request: Request<pb::AddNodeRequest>) -> Result<Response<pb::MembersResponse>, Status> {
        let caller = self.access.caller_of(&request)?;
        self.members(&caller, requests::add_node(request.into_inner())?).await
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::MembersResponse>, Status> {
        let caller = self.access.caller_of(&request)?;
        self.members(&caller, Command::RemoveNode { id: request.into_inner().id }).await
    }

    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let req = request.into_inner();
        let token = authenticate(&self.access, req.user, req.password).await?;
        let ttl_ms = crate::access::TOKEN_TTL.as_millis() as u64;
        Ok(Response::new(pb::AuthenticateResponse { token, ttl_ms }))
    }

    async fn auth_change(
        &self,
        request: Request<pb::AuthChangeRequest>,
    ) -> Result<Response<pb::AuthChangeResponse>, Status> {
        let caller = self.access.admit(&request, "AuthChange", &[Need::everything(Permission::Admin)])?;
        let req = request.into_inner();
        let command = tokio::task::spawn_blocking(move || auth::change_command(req))
            .await
            .map_err(|e| Status::internal(format!("the change failed to run: {e}")))??;
        match self.propose(&caller, Some(baton_node::META_GROUP), Command::Auth(command)).await? {
            Outcome::AuthChanged { revision } => Ok(Response::new(pb::AuthChangeResponse { revision })),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn auth_status(
        &self,
        request: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        self.access.admit(&request, "AuthStatus", &[Need::everything(Permission::Admin)])?;
        Ok(Response::new(auth::status(&self.access.state())))
    }

    async fn topology(&self, request: Request<pb::TopologyRequest>) -> Result<Response<pb::TopologyResponse>, Status> {
        // Clients route by it: any user may see it (once authenticated, when that is on).
        self.access.admit_nameless(&request, "Topology")?;
        let view = self.node.view.lock().expect("view lock");
        let groups = view
            .topology
            .groups
            .iter()
            .map(|(id, g)| pb::TopologyGroup {
                id: *id,
                slots: to_ranges(&g.slots.ranges()),
                replicas: g.replicas.clone(),
                leader: view.leaders.get(id).copied().flatten().unwrap_or(0),
            })
            .collect();
        Ok(Response::new(pb::TopologyResponse {
            version: view.topology.version,
            groups,
            nodes: node_list(&view),
            node_id: self.node.id,
            founders: view.topology.founders.clone(),
            replication: view.topology.replication as u64,
        }))
    }
}

/// A token for `user` if `password` is its password (see [`Access::authenticate`]), for every
/// API's authentication RPC. Checking a password takes tens of milliseconds of CPU and 19 MiB,
/// by design: a few at a time, off the async threads; more are refused at once (the review
/// found that unbounded checks let anyone exhaust the node's memory).
pub(crate) async fn authenticate(access: &Access, user: String, password: String) -> Result<String, Status> {
    authenticate_with(&AUTHENTICATIONS, access, user, password).await
}

/// [`authenticate`] taking one of `places` (the HTTP port has its own: sign-ins there cannot
/// use up the gRPC APIs').
pub(crate) async fn authenticate_with(
    places: &'static tokio::sync::Semaphore,
    access: &Access,
    user: String,
    password: String,
) -> Result<String, Status> {
    let Ok(permit) = places.try_acquire() else {
        return Err(Status::resource_exhausted(
            "as many authentications as this node checks at once are in progress: try again shortly",
        ));
    };
    let access = access.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        access.authenticate(&user, &password)
    })
    .await
    .map_err(|e| Status::internal(format!("authentication failed to run: {e}")))?
}

/// How long MoveSlots waits for its move to finish before answering that it is still under way.
const MOVE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

fn to_ranges(ranges: &[(u16, u16)]) -> Vec<pb::SlotRange> {
    ranges.iter().map(|(a, b)| pb::SlotRange { start: *a as u32, end: *b as u32 }).collect()
}

/// Every member with its addresses, as this node knows them.
fn node_list(view: &crate::runtime::ClusterView) -> Vec<pb::NodeStatus> {
    view.peer_addrs
        .iter()
        .map(|(id, peer)| pb::NodeStatus {
            id: *id,
            client_addr: view.client_addrs.get(id).cloned().unwrap_or_default(),
            peer_addr: peer.clone(),
        })
        .collect()
}

/// One group's part of a watch: its kept history from the start asked, then its live events.
struct GroupFeed {
    group: GroupId,
    name: String,
    prefix: bool,
    start_seq: u64,
    last: u64,
    kept: Vec<std::sync::Arc<crate::watch::Watched>>,
    live: tokio::sync::broadcast::Receiver<std::sync::Arc<crate::watch::Watched>>,
    /// Who watches, what it needs, and the checker: asked again before every event, so that a
    /// watch ends when its caller's rights do (the review found a watch opened before
    /// authentication was turned on kept showing every name).
    access: Access,
    caller: Caller,
    need: Need,
}

impl GroupFeed {
    /// Sends `event` if the watcher may still see it; false when the watch is over.
    async fn send(
        &self,
        tx: &tokio::sync::mpsc::Sender<Result<pb::WatchEvent, Status>>,
        event: pb::WatchEvent,
    ) -> bool {
        if let Err(refused) = self.access.check(&self.caller, "Watch", std::slice::from_ref(&self.need)) {
            let _ = tx.send(Err(refused)).await;
            return false;
        }
        tx.send(Ok(event)).await.is_ok()
    }

    async fn run(mut self, tx: tokio::sync::mpsc::Sender<Result<pb::WatchEvent, Status>>) {
        let mut next = self.start_seq;
        if next == 0 {
            // Tell the watcher where "now" is, so that it can resume from there exactly.
            next = self.last + 1;
            let sync =
                pb::WatchEvent { group: self.group, seq: self.last, r#type: "sync".into(), ..Default::default() };
            if !self.send(&tx, sync).await {
                return;
            }
        }
        for w in std::mem::take(&mut self.kept) {
            if w.seq >= next && w.matches(&self.name, self.prefix) && !self.send(&tx, crate::watch::to_proto(&w)).await
            {
                return;
            }
            next = next.max(w.seq + 1);
        }
        loop {
            match self.live.recv().await {
                Ok(w) => {
                    if w.seq < next {
                        continue; // already sent from the kept history
                    }
                    next = w.seq + 1;
                    if w.matches(&self.name, self.prefix) && !self.send(&tx, crate::watch::to_proto(&w)).await {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    let msg = format!("the watcher fell behind; resume group {} from seq {next}", self.group);
                    let _ = tx.send(Err(Status::out_of_range(msg))).await;
                    return;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    let _ = tx.send(Err(stopped())).await;
                    return;
                }
            }
        }
    }
}

/// Serves one `Call` stream: every call runs concurrently in this one task (no task per call),
/// and each answer is sent the moment it is ready, in completion order. A client that ends
/// its side gets the answers still in flight; one that breaks the stream gets nothing more
/// (as with a unary call whose caller went away, nothing is cancelled by that).
async fn serve_calls(
    svc: BatonService,
    caller: Caller,
    mut incoming: Streaming<pb::CallRequest>,
    tx: tokio::sync::mpsc::Sender<Result<pb::CallResponse, Status>>,
) {
    use futures::stream::{FuturesUnordered, StreamExt};
    let mut running = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            msg = incoming.message(), if open => match msg {
                Ok(Some(req)) if running.len() >= MAX_CALLS_IN_FLIGHT => {
                    // Nothing was done: BUSY, so that the client retries later rather than
                    // taking it as a refusal.
                    let s = crate::status::with_info(
                        Status::resource_exhausted(format!(
                            "more than {MAX_CALLS_IN_FLIGHT} calls in flight on one stream; wait for answers"
                        )),
                        pb::error_info::Reason::Busy,
                        0,
                        String::new(),
                    );
                    if tx.send(Ok(call_failed(req.call_id, &s))).await.is_err() {
                        return;
                    }
                }
                Ok(Some(req)) if svc.access.check(&caller, "Call", &[]).is_err() => {
                    // The stream's credentials no longer hold (authentication came on since it
                    // opened, or its token expired): end it, so that the client opens a new one
                    // with what it has now. This call was not processed.
                    let refused = svc.access.check(&caller, "Call", &[]).unwrap_err();
                    let _ = tx.send(Ok(call_failed(req.call_id, &refused))).await;
                    let _ = tx.send(Err(refused)).await;
                    return;
                }
                Ok(Some(req)) => {
                    use tracing::Instrument as _;
                    // Each call is a trace of its own (the stream lives as long as the client).
                    let span = crate::obs::trace::root(|| tracing::debug_span!(parent: None, "call", call_id = req.call_id, op = call_op(&req)));
                    running.push(dispatch_call(&svc, &caller, req).instrument(span))
                }
                Ok(None) => open = false,
                Err(_) => return,
            },
            Some((answer, stopped)) = running.next(), if !running.is_empty() => {
                if stopped {
                    // The node is gone: end the stream so that the client reconnects (to this
                    // address's next incarnation, or elsewhere) instead of asking a dead node.
                    let _ = tx.send(Err(crate::status::stopped())).await;
                    return;
                }
                if tx.send(Ok(answer)).await.is_err() {
                    return;
                }
            }
            else => return,
        }
    }
}

/// One keepalive message: renews the sessions it lists, answered after a ReadIndex round
/// confirms this node still leads (see Query::KeepAlive).
async fn renew(
    svc: &BatonService,
    caller: &Caller,
    req: pb::KeepAliveRequest,
) -> Result<pb::KeepAliveResponse, Status> {
    requests::keep_alive(&req)?;
    let answer = svc.request(caller, None, NodeRequest::KeepAlive(req.session_ids)).await?;
    let Answer::KeepAlive(renewal) = answer else {
        return Err(Status::internal("unexpected answer to a keepalive"));
    };
    let leases = renewal
        .leases
        .into_iter()
        .map(|l| pb::SessionLease {
            session_id: l.session,
            alive: !l.groups.is_empty(),
            ttl_ms: l.ttl_ms,
            groups: l.groups,
            moved_to: l.moved_to,
        })
        .collect();
    Ok(pb::KeepAliveResponse { leases, groups: renewal.groups })
}

/// Runs one call of a `Call` stream through the unary handler of the same name; true with the
/// answer if the node has stopped.
/// The name of a `Call`'s operation, for its span.
fn call_op(req: &pb::CallRequest) -> &'static str {
    use pb::call_request::Op;
    match req.op {
        Some(Op::OpenSession(_)) => "open_session",
        Some(Op::CloseSession(_)) => "close_session",
        Some(Op::Acquire(_)) => "acquire",
        Some(Op::Release(_)) => "release",
        Some(Op::Cancel(_)) => "cancel",
        Some(Op::Counter(_)) => "counter",
        Some(Op::KeepAlive(_)) => "keepalive",
        Some(Op::AttachSession(_)) => "attach_session",
        Some(Op::Crdt(_)) => "crdt",
        None => "none",
    }
}

async fn dispatch_call(svc: &BatonService, caller: &Caller, req: pb::CallRequest) -> (pb::CallResponse, bool) {
    use pb::call_request::Op;
    use pb::call_response::Result as R;
    let result = match req.op {
        Some(Op::OpenSession(r)) => {
            svc.open_session(as_caller(caller, r)).await.map(|r| R::OpenSession(r.into_inner()))
        }
        Some(Op::CloseSession(r)) => {
            svc.close_session(as_caller(caller, r)).await.map(|r| R::CloseSession(r.into_inner()))
        }
        Some(Op::Acquire(r)) => svc.acquire(as_caller(caller, r)).await.map(|r| R::Acquire(r.into_inner())),
        Some(Op::Release(r)) => svc.release(as_caller(caller, r)).await.map(|r| R::Release(r.into_inner())),
        Some(Op::Cancel(r)) => svc.cancel(as_caller(caller, r)).await.map(|r| R::Cancel(r.into_inner())),
        Some(Op::Counter(r)) => svc.counter(as_caller(caller, r)).await.map(|r| R::Counter(r.into_inner())),
        Some(Op::KeepAlive(r)) => renew(svc, caller, r).await.map(R::KeepAlive),
        Some(Op::AttachSession(r)) => {
            svc.attach_session(as_caller(caller, r)).await.map(|r| R::AttachSession(r.into_inner()))
        }
        Some(Op::Crdt(r)) => svc.crdt(as_caller(caller, r)).await.map(|r| R::Crdt(r.into_inner())),
        None => Err(Status::invalid_argument("call without an operation")),
    };
    match result {
        Ok(result) => (pb::CallResponse { call_id: req.call_id, result: Some(result) }, false),
        Err(s) => (call_failed(req.call_id, &s), crate::status::is_stopped(&s)),
    }
}

/// A call of a `Call` stream as the unary request of the same name, made by the stream's
/// caller (see [`Access::caller_of`]).
fn as_caller<T>(caller: &Caller, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.extensions_mut().insert(caller.clone());
    request
}

/// A unary call's error status as a `Call` stream answer (the leader redirect and the typed
/// [`pb::ErrorInfo`] included).
fn call_failed(call_id: u64, s: &Status) -> pb::CallResponse {
    let leader = s.metadata().get(crate::status::LEADER_METADATA).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let error = pb::CallError {
        code: s.code() as i32,
        message: s.message().to_string(),
        leader: leader.to_string(),
        info: pb::ErrorInfo::of(s),
    };
    pb::CallResponse { call_id, result: Some(pb::call_response::Result::Error(error)) }
}

/// A response stream fed by a task: `body` gets the sending half and runs until it returns.
fn async_stream<F, Fut>(body: F) -> impl Stream<Item = Result<pb::KeepAliveResponse, Status>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::KeepAliveResponse, Status>>) -> Fut,
    Fut: std::future::Future<Output = Result<(), Status>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let fut = body(tx.clone());
    tokio::spawn(async move {
        if let Err(status) = fut.await {
            let _ = tx.send(Err(status)).await;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
