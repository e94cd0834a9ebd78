//! Proposals made on another node's behalf: the steps of a slot move (see `baton_node::mover`),
//! and etcd API calls a node without the keyspace's leadership hands to its leader
//! ([`crate::etcd`]).
//!
//! The node that leads the meta group drives each move; a step whose group is led elsewhere
//! becomes a `Forward` call on the peer port of that group's leader. The receiving node proposes
//! it to the group like any request (refusing if it does not lead it) and answers with the
//! outcome; the asking node's mover gets that answer. Of Baton's commands only hand-offs and
//! take-overs are accepted: nothing else needs another node's hand, and the peer port is not a
//! second client API. A lost or failed call is simply retried by the mover after a pause. etcd
//! calls are accepted for the keyspace's group only, and its Auth service's changes for the
//! meta group ([`crate::etcd::EtcdCall`]).

use std::collections::BTreeMap;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use baton_core::{Command, Outcome};
use baton_node::{GroupId, NodeError, NodeId, Request, RequestId};
use baton_proto::peer::peer_client::PeerClient;
use baton_proto::peer::{ForwardRequest, ForwardResponse};
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::Status;

use crate::runtime::{Input, NodeHandle};

/// How long a forwarded step may take before its caller gives up (the mover retries).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// Lazily connected peer clients, one per node, for calls made on another node's behalf (slot
/// moves' steps from the node thread, etcd calls from the etcd services).
#[derive(Clone)]
pub struct PeerChannels {
    /// Peer addresses come from here (members added later included); `None`: no peers (a node
    /// answering a forwarded call never forwards it again).
    view: Option<Arc<Mutex<crate::runtime::ClusterView>>>,
    runtime: Option<tokio::runtime::Handle>,
    channels: Arc<Mutex<BTreeMap<NodeId, PeerClient<Channel>>>>,
    max_bytes: usize,
    dialer: crate::tls::PeerDialer,
}

impl PeerChannels {
    /// Channels to the peers `view` knows, carrying frames of up to `max_bytes`; must be made
    /// inside the tokio runtime.
    pub fn new(
        view: Arc<Mutex<crate::runtime::ClusterView>>,
        max_bytes: usize,
        dialer: crate::tls::PeerDialer,
    ) -> PeerChannels {
        PeerChannels {
            view: Some(view),
            runtime: Some(tokio::runtime::Handle::current()),
            channels: Arc::default(),
            max_bytes,
            dialer,
        }
    }

    /// No peers at all.
    pub fn none() -> PeerChannels {
        PeerChannels { view: None, runtime: None, channels: Arc::default(), max_bytes: 0, dialer: Default::default() }
    }

    /// The client for node `to`, if its peer address is known.
    pub fn get(&self, to: NodeId) -> Option<PeerClient<Channel>> {
        if let Some(c) = self.channels.lock().expect("channels lock").get(&to) {
            return Some(c.clone());
        }
        let addr = self.view.as_ref()?.lock().expect("view lock").peer_addrs.get(&to).cloned()?;
        let dialer = self.dialer.to(to);
        let endpoint = dialer.endpoint(&addr).ok()?.connect_timeout(Duration::from_secs(1));
        // A lazy channel still needs the runtime's reactor at hand (the node thread has none).
        let _in_runtime = self.runtime.as_ref()?.enter();
        let client = PeerClient::new(dialer.lazy(&endpoint))
            .max_decoding_message_size(self.max_bytes)
            .max_encoding_message_size(self.max_bytes);
        self.channels.lock().expect("channels lock").insert(to, client.clone());
        Some(client)
    }
}

/// The asking side, used from the node thread.
pub(crate) struct Forwarder {
    me: NodeId,
    runtime: tokio::runtime::Handle,
    channels: PeerChannels,
    /// Where answers go: back into the node thread's input channel.
    back: mpsc::Sender<Input>,
}

impl Forwarder {
    pub(crate) fn new(me: NodeId, channels: PeerChannels, back: mpsc::Sender<Input>) -> Forwarder {
        Forwarder { me, runtime: tokio::runtime::Handle::current(), channels, back }
    }

    /// Sends `command` for `group` to node `to`; its answer comes back as [`Input::Forwarded`].
    pub(crate) fn forward(&mut self, to: NodeId, id: RequestId, group: GroupId, command: Command) {
        let back = self.back.clone();
        let Some(client) = self.channels.get(to) else {
            let err = NodeError::Unavailable(format!("node {to} has no known peer address"));
            let _ = back.send(Input::Forwarded { id, result: Err(err) });
            return;
        };
        let request = ForwardRequest {
            from: self.me,
            group,
            command: bincode::serialize(&command).expect("commands serialise"),
            ..Default::default()
        };
        self.runtime.spawn(async move {
            let mut client = client;
            let result = match tokio::time::timeout(FORWARD_TIMEOUT, client.forward(request)).await {
                Ok(Ok(r)) => decode(r.into_inner()),
                Ok(Err(s)) => Err(NodeError::Unavailable(format!("forward to node {to}: {}", s.message()))),
                Err(_) => Err(NodeError::Unavailable(format!("node {to} did not answer a forwarded step"))),
            };
            let _ = back.send(Input::Forwarded { id, result });
        });
    }
}

/// The asking side's reading of a forwarded step's answer (it comes from a peer: any bytes
/// give an error, never a panic).
pub fn decode(r: ForwardResponse) -> Result<Outcome, NodeError> {
    if r.not_leader {
        return Err(NodeError::NotLeader { group: 0, leader: (r.leader != 0).then_some(r.leader) });
    }
    if !r.error.is_empty() {
        return Err(NodeError::Unavailable(r.error));
    }
    bincode::deserialize(&r.outcome).map_err(|e| NodeError::Unavailable(format!("undecodable forwarded outcome: {e}")))
}

/// What a peer's forwarded call asks for, once [`check`] accepted it.
#[derive(Debug)]
pub enum Forwarded {
    /// A slot move's step for the request's group.
    Command(Command),
    /// An etcd call for the keyspace's group.
    Etcd(crate::etcd::EtcdCall),
}

/// Checks and decodes a forwarded call from a peer, before anything reaches the node: it must
/// come from another member (`me` is this node), etcd calls only for the keyspace's group, and
/// of Baton's commands only hand-offs and take-overs.
pub fn check(req: &ForwardRequest, me: NodeId, members: &[NodeId]) -> Result<Forwarded, Status> {
    if !members.contains(&req.from) || req.from == me {
        return Err(Status::permission_denied(format!("node {} is not another member of this cluster", req.from)));
    }
    if !req.etcd.is_empty() {
        let call = crate::etcd::decode_call(&req.etcd)?;
        if req.group != call.group() {
            return Err(Status::invalid_argument(
                "etcd calls are for the etcd keyspace's group only (changes to users and roles: the meta group's)",
            ));
        }
        return Ok(Forwarded::Etcd(call));
    }
    let command: Command = bincode::deserialize(&req.command)
        .map_err(|e| Status::invalid_argument(format!("undecodable forwarded command: {e}")))?;
    if !matches!(command, Command::HandOff { .. } | Command::TakeOver { .. }) {
        return Err(Status::invalid_argument("only slot hand-offs and take-overs are forwarded"));
    }
    Ok(Forwarded::Command(command))
}

/// The answering side: proposes a forwarded step here.
pub(crate) async fn serve(
    node: &NodeHandle,
    members: &[NodeId],
    req: ForwardRequest,
) -> Result<ForwardResponse, Status> {
    let command = match check(&req, node.id, members)? {
        Forwarded::Etcd(call) => return crate::etcd::serve_forwarded(node, call).await,
        Forwarded::Command(command) => command,
    };
    let (tx, rx) = oneshot::channel();
    if !node.send(Input::request(Some(req.group), Request::Propose(command), tx)) {
        return Err(crate::status::stopped());
    }
    let answer = rx.await.map_err(|_| crate::status::stopped())?;
    Ok(match answer {
        Ok(baton_node::Answer::Applied(outcome)) => {
            ForwardResponse { outcome: bincode::serialize(&outcome).expect("outcomes serialise"), ..Default::default() }
        }
        Ok(other) => ForwardResponse { error: format!("unexpected answer {other:?}"), ..Default::default() },
        Err(NodeError::NotLeader { leader, .. }) => {
            ForwardResponse { not_leader: true, leader: leader.unwrap_or(0), ..Default::default() }
        }
        Err(e) => ForwardResponse { error: e.to_string(), ..Default::default() },
    })
}
