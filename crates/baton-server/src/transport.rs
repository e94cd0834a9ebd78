//! Node-to-node transport: one gRPC client stream from each node to each peer.
//!
//! The node thread hands each round's messages for a peer to that peer's outbox as one vector;
//! the sender task coalesces whatever has queued since its last send into one `RaftBatch`, so a
//! busy node sends few, large batches (all groups together) and an idle one sends at once. When a
//! peer is down, messages are dropped: Raft retransmits what matters.

use std::time::Duration;

use baton_node::{GroupId, NodeId, RaftMessage};
use baton_proto::peer::peer_client::PeerClient;
use baton_proto::peer::peer_server::Peer;
use baton_proto::peer::{GroupMessage, RaftAck, RaftBatch};
use protobuf::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::runtime::{Input, NodeHandle};

/// Largest Raft message accepted from a peer (snapshots travel as one message).
pub const MAX_PEER_MESSAGE_BYTES: usize = 1 << 30;

/// Sends everything queued for one peer, reconnecting with backoff while it is unreachable.
pub async fn run_sender(
    from: NodeId,
    from_client_addr: String,
    peer_addr: String,
    mut outbox: mpsc::UnboundedReceiver<Vec<GroupMessage>>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{peer_addr}")) {
            Ok(e) => e.connect_timeout(Duration::from_millis(500)).tcp_nodelay(true),
            Err(e) => {
                tracing::error!(%peer_addr, "bad peer address: {e}");
                return;
            }
        };
        let channel = match endpoint.connect().await {
            Ok(c) => c,
            Err(_) => {
                // Drop what queued while the peer is down, then retry.
                while outbox.try_recv().is_ok() {}
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
                if outbox.is_closed() {
                    return;
                }
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        let mut client = PeerClient::new(channel).max_encoding_message_size(MAX_PEER_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel::<RaftBatch>(16);
        let call = tokio::spawn(async move { client.raft(ReceiverStream::new(rx)).await });
        loop {
            let Some(mut messages) = outbox.recv().await else {
                call.abort();
                return;
            };
            while let Ok(more) = outbox.try_recv() {
                messages.extend(more);
            }
            let batch = RaftBatch { from, from_client_addr: from_client_addr.clone(), messages };
            if tx.send(batch).await.is_err() {
                break;
            }
        }
        tracing::debug!(%peer_addr, "peer stream closed; reconnecting");
    }
}

/// The receiving side: decodes batches and feeds them to the node thread.
pub struct PeerService {
    /// The node to feed.
    pub node: NodeHandle,
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(&self, request: Request<Streaming<RaftBatch>>) -> Result<Response<RaftAck>, Status> {
        let mut stream = request.into_inner();
        let mut learned = false;
        while let Some(batch) = stream.message().await? {
            if !learned && !batch.from_client_addr.is_empty() {
                let mut view = self.node.view.lock().expect("view lock");
                view.client_addrs.insert(batch.from, batch.from_client_addr.clone());
                learned = true;
            }
            let mut steps: Vec<(GroupId, RaftMessage)> = Vec::with_capacity(batch.messages.len());
            for m in batch.messages {
                let msg = RaftMessage::parse_from_bytes(&m.message).map_err(|e| {
                    Status::invalid_argument(format!("undecodable raft message from node {}: {e}", batch.from))
                })?;
                steps.push((m.group, msg));
            }
            if !self.node.send(Input::Steps(steps)) {
                return Err(Status::unavailable("node is shutting down"));
            }
        }
        Ok(Response::new(RaftAck {}))
    }
}
