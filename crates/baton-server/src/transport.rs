//! Node-to-node transport: one gRPC stream from each node to each peer.
//!
//! The node thread hands each round's messages for a peer to that peer's outbox as one vector;
//! the sender task coalesces whatever has queued since its last send into batches, so a busy
//! node sends few, large batches (all groups together) and an idle one sends at once. When a
//! peer is down, messages are dropped: Raft retransmits what matters.
//!
//! # Handshake
//! Each stream opens with the sender's [`Handshake`]: its node id, client address, member list
//! and the timing that must be equal on every member (tick, election timeout, lease reads: the
//! lease arithmetic of `baton_node::lease_read_ms` assumes the followers count the same
//! timeout). The receiver checks it with [`check_handshake`] and either refuses the stream with
//! `FAILED_PRECONDITION` saying what differs, or answers with its own handshake, which the sender
//! checks the same way (and that it reached the node id it meant to). Both sides log a refusal
//! as an error, and a refused stream carries nothing. After that, every batch's `from` and every
//! Raft message's `from` must be the handshake's node id, and every message's `to` ours: a
//! message that claims another sender ends the stream. With mutual TLS (`--peer-cert`), the
//! handshake's node id must be the one the sender's certificate names ([`check_identity`]), and
//! the sender dials node `n` verifying that its certificate names `node-<n>`: a node whose
//! certificate does not name its id can neither join nor send Raft messages. Without TLS the
//! handshake's node id is taken at its word.
//!
//! # Size bound
//! Appends are at most 1 MiB per message (raft `max_size_per_msg`), but raft-rs sends a snapshot
//! as one message carrying the whole state (~130 MB at 1M locks). So a stream frame may be up to
//! [`crate::ServerConfig::max_peer_message_bytes`] (default [`DEFAULT_MAX_PEER_MESSAGE_BYTES`]);
//! the receiver refuses a larger frame (the stream ends; an error is logged), and the sender
//! never sends one: batches are cut to fit, and a single message too large for the bound (a
//! snapshot of a state that outgrew it) is dropped with an error telling the operator to raise
//! the bound on every node. Until then the follower it was for cannot catch up (the leader sends
//! the snapshot again only when one has gone unanswered for 10 s and more, see baton-node's
//! `retry_lost_snapshots`); the rest of the cluster is unaffected.
//! Chunked snapshots would let the bound shrink to a few MiB (future work).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_node::{GroupId, NodeId, RaftMessage};
use baton_proto::peer::peer_client::PeerClient;
use baton_proto::peer::peer_frame::Frame;
use baton_proto::peer::peer_server::Peer;
use baton_proto::peer::{GroupMessage, Handshake, PeerFrame, PeerReply, RaftBatch};
use protobuf::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::runtime::{ClusterView, Input, NodeHandle};

/// Default bound on one frame of a peer stream (a batch, or a snapshot): 256 MiB, room for the
/// snapshot of about two million held locks.
pub const DEFAULT_MAX_PEER_MESSAGE_BYTES: usize = 256 << 20;
/// Room left in a frame for the framing around the messages (ids, tags, lengths).
const FRAME_OVERHEAD: usize = 64;
/// Per-message framing (group id, tags, lengths) counted when cutting batches.
const MESSAGE_OVERHEAD: usize = 32;
/// How long either side waits for the other's handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Wait before retrying a peer that refused our handshake (or that we refused): the
/// configuration will not change until someone restarts a node.
const REFUSED_BACKOFF: Duration = Duration::from_secs(5);

/// The handshake this node sends and answers with.
pub fn local_handshake(
    config: &crate::ServerConfig,
    client_addr: String,
    data_groups: u64,
    etcd_group: bool,
    etcd_addr: String,
) -> Handshake {
    Handshake {
        data_groups,
        etcd_group,
        node_id: config.id,
        client_addr,
        members: config.peers.iter().map(|(id, addr)| (*id, addr.clone())).collect(),
        tick_ms: config.tick.as_millis() as u64,
        election_ticks: config.election_ticks as u64,
        lease_reads: config.lease_reads,
        etcd_addr,
    }
}

/// Our handshake as of now: its members are every node we know of (the configured ones, and
/// those the meta group added since).
pub fn handshake_now(local: &Handshake, view: &Mutex<ClusterView>) -> Handshake {
    let mut h = local.clone();
    let v = view.lock().expect("view lock");
    h.members = v.peer_addrs.iter().map(|(id, a)| (*id, a.clone())).collect();
    h
}

/// Whether `remote` may talk to `local`: a member other than us, that knows us as a member,
/// with the same timing and layout. The error says what differs, for the logs of both sides.
pub fn check_handshake(local: &Handshake, remote: &Handshake) -> Result<(), String> {
    let who = format!("node {}", remote.node_id);
    if remote.node_id == local.node_id {
        return Err(format!("{who} has our own id {}: two nodes share an id", local.node_id));
    }
    if !local.members.contains_key(&remote.node_id) {
        let ours: BTreeSet<_> = local.members.keys().collect();
        return Err(format!("{who} is not a member of this cluster (members: {ours:?})"));
    }
    if !remote.members.contains_key(&local.node_id) {
        let theirs: BTreeSet<_> = remote.members.keys().collect();
        return Err(format!(
            "{who} does not list node {} among its members ({theirs:?}): a different cluster?",
            local.node_id
        ));
    }
    let differ = |theirs: String, ours: String| {
        format!("{who} runs with {theirs}, node {} with {ours}: every member needs the same", local.node_id)
    };
    if remote.tick_ms != local.tick_ms {
        return Err(differ(format!("--tick-ms {}", remote.tick_ms), format!("--tick-ms {}", local.tick_ms)));
    }
    if remote.election_ticks != local.election_ticks {
        let ticks = |n: u64| format!("an election timeout of {n} ticks");
        return Err(differ(ticks(remote.election_ticks), ticks(local.election_ticks)));
    }
    if remote.lease_reads != local.lease_reads {
        let flag = |on: bool| format!("--lease-reads {}", if on { "on" } else { "off" });
        return Err(differ(flag(remote.lease_reads), flag(local.lease_reads)));
    }
    if remote.data_groups != local.data_groups {
        let groups = |n: u64| format!("a layout of {n} data groups (--groups when its data folder was created)");
        return Err(differ(groups(remote.data_groups), groups(local.data_groups)));
    }
    if remote.etcd_group != local.etcd_group {
        // A founder started for the first time after an upgrade would bootstrap a meta group
        // with the keyspace's group while the others have none: refused, not diverged.
        let layout = |on: bool| format!("a layout {} the etcd keyspace's group", if on { "with" } else { "without" });
        return Err(differ(layout(remote.etcd_group), layout(local.etcd_group)));
    }
    Ok(())
}

/// What the transport proves about the other end of a peer stream, taken from the request
/// before its stream is read. Plaintext proves nothing but the address; mutual TLS adds the
/// certificate chain the handshake verified against the peer CA.
pub struct PeerProof {
    /// The TCP peer address, for the logs.
    pub remote_addr: Option<std::net::SocketAddr>,
    /// Whether the peer port runs mutual TLS (then `certs` must name the sender).
    pub mtls: bool,
    /// The sender's certificate chain (leaf first), if TLS gave one.
    pub certs: Option<Arc<Vec<baton_tls::pki_types::CertificateDer<'static>>>>,
}

/// Checks the transport's proof of who is on the other end against the handshake's node id.
/// Plaintext connections prove nothing, so this accepts; with mutual TLS the certificate must
/// name `node-<claimed>`.
pub fn check_identity(proof: &PeerProof, claimed: NodeId) -> Result<(), String> {
    if !proof.mtls {
        return Ok(());
    }
    let leaf = proof.certs.as_ref().and_then(|c| c.first()).ok_or("no client certificate on the peer port")?;
    baton_tls::check_node_certificate(leaf, claimed).map_err(|e| format!("node {claimed}: {e}"))
}

/// What the sender's outbox holds between rounds.
type Outbox = mpsc::UnboundedReceiver<Vec<GroupMessage>>;

/// Sends everything queued for peer `to`, reconnecting with backoff while it is unreachable or
/// refuses us. Returns when the outbox closes (the node stopped).
#[allow(clippy::too_many_arguments)]
pub async fn run_sender(
    local: Handshake,
    to: NodeId,
    peer_addr: String,
    dialer: baton_tls::Dialer,
    max_message_bytes: usize,
    view: Arc<Mutex<ClusterView>>,
    metrics: Arc<crate::obs::Metrics>,
    mut outbox: Outbox,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let endpoint = match dialer.endpoint(&peer_addr) {
            Ok(e) => e.connect_timeout(Duration::from_millis(500)).tcp_nodelay(true),
            Err(e) => {
                tracing::error!(%peer_addr, "bad peer address: {e}");
                return;
            }
        };
        let channel = match dialer.connect(&endpoint).await {
            Ok(c) => c,
            Err(e) => {
                if dialer.is_tls() {
                    // A refused certificate looks like an unreachable peer: say which it is.
                    tracing::debug!(peer = to, %peer_addr, "cannot connect: {e:?}");
                }
                // Drop what queued while the peer is down, then retry.
                if !drain_for(&mut outbox, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_millis(500));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        let client = PeerClient::new(channel)
            .max_encoding_message_size(max_message_bytes)
            .max_decoding_message_size(max_message_bytes);
        match send_stream(client, &local, to, &peer_addr, max_message_bytes, &view, &metrics, &mut outbox).await {
            Ended::OutboxClosed => return,
            Ended::Broken => tracing::debug!(%peer_addr, "peer stream closed; reconnecting"),
            Ended::Refused => {
                if !drain_for(&mut outbox, REFUSED_BACKOFF).await {
                    return;
                }
            }
        }
    }
}

/// Why a stream to a peer ended.
enum Ended {
    /// The node stopped.
    OutboxClosed,
    /// The connection broke or the peer went away: reconnect.
    Broken,
    /// One side refused the other's handshake (logged): retry later.
    Refused,
}

/// Drops everything queued for `wait`; false if the outbox closed meanwhile.
async fn drain_for(outbox: &mut Outbox, wait: Duration) -> bool {
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return true,
            m = outbox.recv() => if m.is_none() { return false },
        }
    }
}

/// One stream: handshake, then batches until something breaks.
#[allow(clippy::too_many_arguments)]
async fn send_stream(
    mut client: PeerClient<tonic::transport::Channel>,
    local: &Handshake,
    to: NodeId,
    peer_addr: &str,
    max_message_bytes: usize,
    view: &Mutex<ClusterView>,
    metrics: &crate::obs::Metrics,
    outbox: &mut Outbox,
) -> Ended {
    let (tx, rx) = mpsc::channel::<PeerFrame>(16);
    // The handshake is queued first, so the receiver can answer before the call returns.
    let local = &handshake_now(local, view);
    let _ = tx.try_send(PeerFrame { frame: Some(Frame::Handshake(local.clone())) });
    let opened = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let mut replies = client.raft(ReceiverStream::new(rx)).await?.into_inner();
        let first = replies.message().await?;
        Ok::<_, Status>((replies, first))
    })
    .await;
    let (mut replies, first) = match opened {
        Err(_) => return Ended::Broken,
        Ok(Err(status)) if status.code() == tonic::Code::FailedPrecondition => {
            tracing::error!(peer = to, %peer_addr, "peer refused our handshake: {}", status.message());
            return Ended::Refused;
        }
        Ok(Err(_)) => return Ended::Broken,
        Ok(Ok(x)) => x,
    };
    let Some(theirs) = first.and_then(|r| r.handshake) else {
        return Ended::Broken;
    };
    let checked = if theirs.node_id != to {
        Err(format!("the peer at {peer_addr} is node {}, but it is configured as node {to}", theirs.node_id))
    } else {
        check_handshake(local, &theirs)
    };
    if let Err(e) = checked {
        tracing::error!(peer = to, %peer_addr, "refusing peer: {e}");
        return Ended::Refused;
    }
    view.lock().expect("view lock").learn(to, &theirs);
    let budget = max_message_bytes.saturating_sub(FRAME_OVERHEAD);
    loop {
        let messages = tokio::select! {
            m = outbox.recv() => match m {
                Some(m) => m,
                None => return Ended::OutboxClosed,
            },
            // The receiver only ever ends the reply stream, with or without an error.
            r = replies.message() => {
                if let Err(status) = r {
                    tracing::warn!(peer = to, %peer_addr, "peer ended the stream: {}", status.message());
                }
                return Ended::Broken;
            }
        };
        let more = std::iter::from_fn(|| outbox.try_recv().ok()).flatten();
        let (batches, dropped) = cut_batches(messages.into_iter().chain(more), budget);
        for m in &dropped {
            oversized(to, m, max_message_bytes);
        }
        for messages in batches {
            let bytes = messages.iter().map(|m| m.message.len()).sum();
            metrics.peer_traffic(to, true, messages.len(), bytes);
            let frame = PeerFrame { frame: Some(Frame::Batch(RaftBatch { from: local.node_id, messages })) };
            if tx.send(frame).await.is_err() {
                return Ended::Broken;
            }
        }
    }
}

/// Packs messages, in order, into batches of at most `budget` bytes each (framing counted), and
/// sets apart those that do not fit in any.
fn cut_batches(
    messages: impl Iterator<Item = GroupMessage>,
    budget: usize,
) -> (Vec<Vec<GroupMessage>>, Vec<GroupMessage>) {
    let (mut batches, mut dropped) = (Vec::new(), Vec::new());
    let (mut batch, mut size) = (Vec::new(), 0);
    for m in messages {
        let len = m.message.len() + MESSAGE_OVERHEAD;
        if len > budget {
            dropped.push(m);
            continue;
        }
        if size + len > budget {
            batches.push(std::mem::take(&mut batch));
            size = 0;
        }
        size += len;
        batch.push(m);
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    (batches, dropped)
}

/// Logs a message that cannot be sent within the bound; it is dropped.
fn oversized(to: NodeId, m: &GroupMessage, max_message_bytes: usize) {
    let (kind, snapshot_index) = match RaftMessage::parse_from_bytes(&m.message) {
        Ok(msg) => (format!("{:?}", msg.get_msg_type()), msg.get_snapshot().get_metadata().index),
        Err(_) => ("message".to_string(), 0),
    };
    tracing::error!(
        peer = to,
        group = m.group,
        "cannot send a {kind} of {} bytes (snapshot index {snapshot_index}): peer messages are bounded to {} bytes \
         (--max-peer-message-mib); node {to} cannot catch up until the bound is raised on every node",
        m.message.len(),
        max_message_bytes
    );
}

/// The receiving side: checks the handshake, then decodes batches and feeds them to the node.
pub struct PeerService {
    /// The node to feed.
    pub node: NodeHandle,
    /// What we answer a handshake with, and check it against.
    pub local: Handshake,
    /// Whether the peer port runs mutual TLS (a sender's certificate must name its node id).
    pub mtls: bool,
    /// The coordination-free tier, which takes the messages of its channel.
    pub crdt: crate::crdt::CrdtHandle,
}

#[tonic::async_trait]
impl Peer for PeerService {
    type RaftStream = ReceiverStream<Result<PeerReply, Status>>;

    async fn forward(
        &self,
        request: Request<baton_proto::peer::ForwardRequest>,
    ) -> Result<Response<baton_proto::peer::ForwardResponse>, Status> {
        // The sender's certificate must name the node the call claims to come from, as on a
        // Raft stream (the review found any certificate of the peer CA was enough here).
        let proof = PeerProof { remote_addr: request.remote_addr(), mtls: self.mtls, certs: request.peer_certs() };
        let from = request.get_ref().from;
        check_identity(&proof, from).map_err(|e| {
            tracing::error!(remote = ?proof.remote_addr, "refusing a forwarded call: {e}");
            Status::permission_denied(format!("node {} refuses a forwarded call: {e}", self.local.node_id))
        })?;
        let members: Vec<NodeId> = self.node.view.lock().expect("view lock").peer_addrs.keys().copied().collect();
        crate::forward::serve(&self.node, &members, request.into_inner()).await.map(Response::new)
    }

    async fn raft(&self, request: Request<Streaming<PeerFrame>>) -> Result<Response<Self::RaftStream>, Status> {
        let proof = PeerProof { remote_addr: request.remote_addr(), mtls: self.mtls, certs: request.peer_certs() };
        let remote = proof.remote_addr.map_or_else(|| "unknown address".to_string(), |a| a.to_string());
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no handshake within 5 s of opening a peer stream"))?;
        let theirs = match first {
            Ok(Some(PeerFrame { frame: Some(Frame::Handshake(h)) })) => h,
            Ok(_) => {
                tracing::warn!(%remote, "peer stream without a handshake refused");
                return Err(Status::invalid_argument("a peer stream must start with a handshake"));
            }
            Err(status) => return Err(status),
        };
        let local = handshake_now(&self.local, &self.node.view);
        if let Err(e) = check_handshake(&local, &theirs).and_then(|()| check_identity(&proof, theirs.node_id)) {
            tracing::error!(%remote, "refusing peer: {e}");
            return Err(Status::failed_precondition(format!("node {} refuses: {e}", self.local.node_id)));
        }
        let from = theirs.node_id;
        self.node.view.lock().expect("view lock").learn(from, &theirs);
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.try_send(Ok(PeerReply { handshake: Some(local) }));
        let node = self.node.clone();
        let crdt = self.crdt.clone();
        tokio::spawn(async move {
            // The reply stream stays open (tx held) until the inbound stream ends, so that an
            // error can still reach the sender.
            if let Err(status) = receive(&node, &crdt, from, &mut inbound).await {
                tracing::error!(peer = from, %remote, "peer stream ended: {}", status.message());
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Feeds the batches of an accepted stream from node `from` to the node thread, and the CRDT
/// channel's messages to the coordination-free tier.
async fn receive(
    node: &NodeHandle,
    crdt: &crate::crdt::CrdtHandle,
    from: NodeId,
    inbound: &mut Streaming<PeerFrame>,
) -> Result<(), Status> {
    while let Some(frame) = inbound.message().await? {
        let mut batch = batch_of(frame, from)?;
        let bytes = batch.messages.iter().map(|m| m.message.len()).sum();
        node.metrics.peer_traffic(from, false, batch.messages.len(), bytes);
        for msg in gossip_of(&mut batch, from)? {
            // A full queue drops the message: anti-entropy repairs what gossip loses.
            crdt.send(crate::crdt::CrdtInput::Gossip { from, msg });
        }
        if batch.messages.is_empty() {
            continue;
        }
        let steps = steps_of(batch, from, node.id)?;
        if !node.send(Input::Steps(steps)) {
            return Err(Status::unavailable("node is shutting down"));
        }
    }
    Ok(())
}

/// The batch in a frame of the stream from node `from`: a second handshake, an empty frame or
/// a batch claiming another sender ends the stream.
pub fn batch_of(frame: PeerFrame, from: NodeId) -> Result<RaftBatch, Status> {
    let batch = match frame.frame {
        Some(Frame::Batch(b)) => b,
        Some(Frame::Handshake(_)) | None => {
            return Err(Status::invalid_argument(format!("node {from} sent a second handshake or an empty frame")));
        }
    };
    if batch.from != from {
        return Err(Status::permission_denied(format!(
            "a batch claims to come from node {} on the stream of node {from}",
            batch.from
        )));
    }
    Ok(batch)
}

/// Takes the coordination-free tier's messages out of a batch from node `from` and decodes
/// them: an undecodable one ends the stream, as an undecodable Raft message does.
pub fn gossip_of(batch: &mut RaftBatch, from: NodeId) -> Result<Vec<baton_node::crdt::Gossip>, Status> {
    if !batch.messages.iter().any(|m| m.group == baton_node::CRDT_CHANNEL) {
        return Ok(Vec::new());
    }
    let (gossip, raft): (Vec<GroupMessage>, Vec<GroupMessage>) =
        std::mem::take(&mut batch.messages).into_iter().partition(|m| m.group == baton_node::CRDT_CHANNEL);
    batch.messages = raft;
    gossip
        .iter()
        .map(|m| {
            baton_node::crdt::Gossip::decode(&m.message)
                .map_err(|e| Status::invalid_argument(format!("from node {from}: {e}")))
        })
        .collect()
}

/// Decodes a batch's Raft messages for node `to`: an undecodable message, or one from another
/// node than `from` or for another than `to`, ends the stream. What a message says is checked
/// by the node before raft-rs sees it (`baton_node::Node::check_step`).
pub fn steps_of(batch: RaftBatch, from: NodeId, to: NodeId) -> Result<Vec<(GroupId, RaftMessage)>, Status> {
    let mut steps: Vec<(GroupId, RaftMessage)> = Vec::with_capacity(batch.messages.len());
    for m in batch.messages {
        let msg = RaftMessage::parse_from_bytes(&m.message)
            .map_err(|e| Status::invalid_argument(format!("undecodable raft message from node {from}: {e}")))?;
        if msg.from != from || msg.to != to {
            return Err(Status::permission_denied(format!(
                "a raft message from node {} to node {} on the stream from node {from} to node {to}",
                msg.from, msg.to
            )));
        }
        steps.push((m.group, msg));
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(group: u64, len: usize) -> GroupMessage {
        GroupMessage { group, message: vec![0; len].into() }
    }

    /// A sender never builds a frame its peer would refuse: batches are cut to the bound, in
    /// order, and a message larger than the bound on its own is set apart (and logged).
    #[test]
    fn batches_are_cut_to_the_bound_and_oversized_messages_set_apart() {
        let budget = 1_000;
        let input = vec![msg(1, 400), msg(2, 400), msg(3, 5_000), msg(4, 200), msg(5, 900), msg(6, 10)];
        let (batches, dropped) = cut_batches(input.into_iter(), budget);
        let groups: Vec<Vec<u64>> = batches.iter().map(|b| b.iter().map(|m| m.group).collect()).collect();
        assert_eq!(groups, vec![vec![1, 2], vec![4], vec![5, 6]]);
        assert_eq!(dropped.iter().map(|m| m.group).collect::<Vec<_>>(), vec![3]);
        for b in &batches {
            assert!(b.iter().map(|m| m.message.len() + MESSAGE_OVERHEAD).sum::<usize>() <= budget);
        }
    }

    fn handshake(id: NodeId) -> Handshake {
        Handshake {
            node_id: id,
            client_addr: format!("127.0.0.1:770{id}"),
            members: (1..=3).map(|i| (i, format!("127.0.0.1:780{i}"))).collect(),
            tick_ms: 100,
            election_ticks: 10,
            lease_reads: true,
            data_groups: 4,
            etcd_group: true,
            etcd_addr: String::new(),
        }
    }

    #[test]
    fn a_handshake_must_come_from_another_member_with_the_same_timing() {
        let local = handshake(1);
        assert_eq!(check_handshake(&local, &handshake(2)), Ok(()));
        let refused = |h: Handshake| check_handshake(&local, &h).unwrap_err();
        assert!(refused(handshake(1)).contains("two nodes share an id"));
        assert!(refused(handshake(9)).contains("not a member"));
        let mut other = handshake(2);
        other.members.remove(&1);
        assert!(refused(other).contains("does not list node 1"));
        // A node added since (more members on one side) is fine.
        let mut other = handshake(2);
        other.members.insert(4, "127.0.0.1:7804".into());
        assert_eq!(check_handshake(&local, &other), Ok(()));
        let mut other = handshake(2);
        other.tick_ms = 50;
        assert!(refused(other).contains("--tick-ms 50, node 1 with --tick-ms 100"));
        let mut other = handshake(2);
        other.election_ticks = 20;
        assert!(refused(other).contains("election timeout of 20 ticks"));
        let mut other = handshake(2);
        other.lease_reads = false;
        assert!(refused(other).contains("--lease-reads off, node 1 with --lease-reads on"));
        let mut other = handshake(2);
        other.data_groups = 12;
        assert!(refused(other).contains("a layout of 12 data groups"));
        // A founder that bootstrapped with the etcd keyspace's group among nodes without it.
        let mut other = handshake(2);
        other.etcd_group = false;
        assert!(refused(other).contains("a layout without the etcd keyspace's group"));
    }
}
