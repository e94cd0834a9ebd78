//! The server as a library and its peer port: a fatal error stops one in-process server and
//! nothing else; the peer port checks each stream's handshake (members, timing, lease reads),
//! holds every message to the sender it shook hands as, and bounds the size of a frame.

use std::collections::BTreeMap;
use std::time::Duration;

use baton_client::Client;
use baton_proto::peer::peer_client::PeerClient;
use baton_proto::peer::peer_frame::Frame;
use baton_proto::peer::{GroupMessage, Handshake, PeerFrame, PeerReply, RaftBatch};
use baton_server::{Server, ServerConfig, ServerError};
use protobuf::Message as _;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

/// A single-node server on fresh 127.0.0.1 ports with its own data folder.
async fn single(dir: &tempfile::TempDir, snapshot_entries: u64) -> Server {
    let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peers = BTreeMap::from([(1, peer.local_addr().unwrap().to_string())]);
    let mut config = ServerConfig::new(1, dir.path().to_path_buf(), peers);
    config.tick = Duration::from_millis(50);
    config.snapshot_entries = snapshot_entries;
    Server::start_with_listeners(config, client, peer).await.unwrap()
}

/// Regression: a failed disk write called `process::exit(71)` inside the library, so one
/// failing server killed every other server (and the test harness) in the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_stops_its_server_and_not_the_process() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = single(&dir_a, 5).await;
    let b = single(&dir_b, 5).await;
    let ca = Client::connect(vec![a.client_addr.to_string()]).await.unwrap();
    let cb = Client::connect(vec![b.client_addr.to_string()]).await.unwrap();
    assert_eq!(ca.counter_add("n", 1).await.unwrap(), 1);

    // A's next snapshot cannot be written: its folder is gone.
    std::fs::remove_dir_all(dir_a.path().join("snap")).unwrap();
    let stopped = a.stopped();
    tokio::pin!(stopped);
    let mut outcome = None;
    for _ in 0..100 {
        tokio::select! {
            r = &mut stopped => {
                outcome = Some(r);
                break;
            }
            _ = tokio::time::timeout(Duration::from_secs(2), ca.counter_add("n", 1)) => {}
        }
    }
    let outcome = outcome.expect("server A did not stop after 100 writes with no snapshot folder");
    match outcome {
        Err(ServerError::Disk(msg)) => assert!(msg.contains("snap"), "{msg}"),
        other => panic!("expected a disk error, got {other:?}"),
    }

    // A no longer takes calls; B, in the same process, goes on serving.
    let mut refused = false;
    for _ in 0..100 {
        if Client::status_of(&a.client_addr.to_string()).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "server A still answers after its node stopped");
    for i in 1..=20 {
        assert_eq!(cb.counter_add("n", 1).await.unwrap(), i);
    }
    assert_eq!(cb.counter_get("n").await.unwrap(), 20);
    a.shutdown().await;
    b.shutdown().await;
}

/// A two-member cluster of which only node 1 runs (100 ms ticks, no lease reads): its peer port
/// is what the tests below talk to, as a would-be node 2.
struct Lonely {
    _dir: tempfile::TempDir,
    server: Server,
    members: BTreeMap<u64, String>,
}

async fn lonely(max_peer_message_bytes: usize) -> Lonely {
    let dir = tempfile::tempdir().unwrap();
    let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpListener::bind("127.0.0.1:0").await.unwrap();
    // Node 2's address is never listened on: node 1's sender to it just keeps retrying.
    let members = BTreeMap::from([(1, peer.local_addr().unwrap().to_string()), (2, "127.0.0.1:9".to_string())]);
    let mut config = ServerConfig::new(1, dir.path().to_path_buf(), members.clone());
    config.max_peer_message_bytes = max_peer_message_bytes;
    let server = Server::start_with_listeners(config, client, peer).await.unwrap();
    Lonely { _dir: dir, server, members }
}

impl Lonely {
    /// Node 2's handshake as node 1 expects it.
    fn node2(&self) -> Handshake {
        Handshake {
            node_id: 2,
            client_addr: "127.0.0.1:7702".into(),
            members: self.members.iter().map(|(k, v)| (*k, v.clone())).collect(),
            tick_ms: 100,
            election_ticks: baton_node::DEFAULT_ELECTION_TICKS as u64,
            lease_reads: false,
            data_groups: 1,
            etcd_group: true,
            etcd_addr: String::new(),
        }
    }

    /// Opens a peer stream starting with `first`; the frames sender and the reply stream.
    async fn open(&self, first: PeerFrame) -> Result<(mpsc::Sender<PeerFrame>, Streaming<PeerReply>), Status> {
        let mut client = PeerClient::connect(format!("http://{}", self.server.peer_addr))
            .await
            .unwrap()
            .max_encoding_message_size(usize::MAX);
        let (tx, rx) = mpsc::channel(4);
        tx.send(first).await.unwrap();
        let replies = client.raft(ReceiverStream::new(rx)).await?.into_inner();
        Ok((tx, replies))
    }

    /// Shakes hands as node 2; returns the open stream after checking node 1's answer.
    async fn shake(&self) -> (mpsc::Sender<PeerFrame>, Streaming<PeerReply>) {
        let (tx, mut replies) = self.open(hello(self.node2())).await.unwrap();
        let theirs = replies.message().await.unwrap().unwrap().handshake.unwrap();
        assert_eq!(theirs.node_id, 1);
        assert_eq!(theirs.client_addr, self.server.client_addr.to_string());
        (tx, replies)
    }
}

fn hello(h: Handshake) -> PeerFrame {
    PeerFrame { frame: Some(Frame::Handshake(h)) }
}

fn batch(from: u64, messages: Vec<GroupMessage>) -> PeerFrame {
    PeerFrame { frame: Some(Frame::Batch(RaftBatch { from, messages })) }
}

/// A heartbeat of group 1 from `from` to node 1, encoded as the transport carries it.
fn heartbeat(from: u64) -> GroupMessage {
    let mut msg = baton_node::RaftMessage::default();
    msg.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
    msg.from = from;
    msg.to = 1;
    GroupMessage { group: baton_node::DATA_GROUP, message: msg.write_to_bytes().unwrap().into() }
}

/// The error that ends the reply stream (bounded: the server answers or closes).
async fn stream_error(replies: &mut Streaming<PeerReply>) -> Status {
    let next = tokio::time::timeout(Duration::from_secs(10), replies.message()).await;
    match next.expect("the peer stream was neither refused nor closed") {
        Err(status) => status,
        Ok(r) => panic!("expected the stream to end with an error, got {r:?}"),
    }
}

/// Regression (issue 9, defect 6): members with different ticks, election timeouts or
/// lease-read settings joined one cluster unnoticed, though the lease arithmetic assumes they
/// count the same timeout. Each mismatch is refused, saying what differs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_other_timing_or_members_is_refused() {
    let node1 = lonely(1 << 20).await;
    let refused = |h: Handshake| {
        let node1 = &node1;
        async move {
            let status = node1.open(hello(h)).await.expect_err("handshake accepted");
            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
            status.message().to_string()
        }
    };
    let mut h = node1.node2();
    h.tick_ms = 50;
    let msg = refused(h).await;
    assert!(msg.contains("--tick-ms 50, node 1 with --tick-ms 100"), "{msg}");
    let mut h = node1.node2();
    h.election_ticks = 20;
    assert!(refused(h).await.contains("election timeout of 20 ticks"));
    let mut h = node1.node2();
    h.lease_reads = true;
    assert!(refused(h).await.contains("--lease-reads on, node 1 with --lease-reads off"));
    let mut h = node1.node2();
    h.node_id = 3;
    assert!(refused(h).await.contains("not a member"));
    // A node that does not know node 1 as a member (another cluster).
    let mut h = node1.node2();
    h.members.remove(&1);
    assert!(refused(h).await.contains("does not list node 1"));

    // A stream must open with a handshake.
    let status = node1.open(batch(2, vec![heartbeat(2)])).await.expect_err("stream without handshake accepted");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // The matching handshake is accepted, and messages from node 2 are taken.
    let (tx, mut replies) = node1.shake().await;
    tx.send(batch(2, vec![heartbeat(2)])).await.unwrap();
    drop(tx);
    let end = tokio::time::timeout(Duration::from_secs(10), replies.message()).await.unwrap();
    assert!(matches!(end, Ok(None)), "{end:?}");
    node1.server.shutdown().await;
}

/// Regression (issue 9, defect 10): the peer port trusted the `from` written in each message.
/// After the handshake, a batch or a Raft message claiming another sender ends the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_from_another_sender_than_the_handshakes_is_refused() {
    let node1 = lonely(1 << 20).await;
    let (tx, mut replies) = node1.shake().await;
    tx.send(batch(3, vec![heartbeat(3)])).await.unwrap();
    let status = stream_error(&mut replies).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("claims to come from node 3 on the stream of node 2"), "{status:?}");

    let (tx, mut replies) = node1.shake().await;
    tx.send(batch(2, vec![heartbeat(2), heartbeat(3)])).await.unwrap();
    let status = stream_error(&mut replies).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("from node 3 to node 1 on the stream from node 2"), "{status:?}");
    node1.server.shutdown().await;
}

/// Regression (issue 9, defect 10): the peer port accepted frames of up to 1 GiB from anyone.
/// A frame over the configured bound ends the stream with OUT_OF_RANGE before it is decoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_size_bound_is_refused() {
    let node1 = lonely(1 << 20).await;
    let (tx, mut replies) = node1.shake().await;
    let big = GroupMessage { group: baton_node::DATA_GROUP, message: vec![0; 2 << 20].into() };
    tx.send(batch(2, vec![big])).await.unwrap();
    let status = stream_error(&mut replies).await;
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    node1.server.shutdown().await;
}
