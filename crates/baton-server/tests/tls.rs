//! TLS on every port and mutual TLS between nodes, with three real nodes on 127.0.0.1: clients
//! without the right certificate are refused on every port, a certificate speaks for the node
//! it names only (Raft streams, forwarded calls, starting a node), and certificates rotated
//! under load lose no session.

use std::time::{Duration, Instant};

use baton_client::{Client, ClientOptions};
use baton_tls::dev::Validity;
use baton_tls::ClientFiles;

mod common;
use common::pki::Pki;
use common::TestCluster;

const TTL: Duration = Duration::from_secs(3);

/// A client dialling as `tls` says, failing fast.
async fn client_with(cluster: &TestCluster, tls: Option<ClientFiles>) -> baton_client::Result<Client> {
    let options = ClientOptions {
        request_timeout: Duration::from_secs(2),
        attempt_timeout: Duration::from_secs(1),
        tls,
        ..Default::default()
    };
    Client::connect_with(cluster.endpoints(), options).await
}

/// An HTTP/1.1 GET of `path` over TLS (`identity`: a client certificate): the whole answer.
async fn https_get(
    addr: &str,
    path: &str,
    ca: &Pki,
    identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = ClientFiles { ca: ca.ca_file(), identity }.build().unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = baton_tls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    answer
}

/// The first line of an HTTP answer.
fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_port_serves_tls_and_refuses_clients_without_the_right_certificate() {
    let pki = Pki::new();
    let mut cluster = TestCluster::with_tls(3, 2, &pki).await;
    // The nodes elect leaders and replicate over mutual TLS.
    let client = cluster.client().await;
    let session = client.session(TTL).await.unwrap();
    let guard = session.lock("job", None).await.unwrap().expect("a free lock is granted");
    assert_eq!(client.describe("job").await.unwrap().token, guard.token());

    let other = Pki::new();
    let foreign = ClientFiles { ca: pki.ca_file(), identity: Some(other.client_cert("mallory", Validity::default())) };
    let expired = Validity { from_days_ago: 30, until_days_ahead: -1 };
    let stale = ClientFiles { ca: pki.ca_file(), identity: Some(pki.client_cert("old", expired)) };
    let no_cert = ClientFiles { ca: pki.ca_file(), identity: None };
    let wrong_ca = ClientFiles { ca: other.ca_file(), identity: Some(pki.client_cert("alice", Validity::default())) };
    let cases = [("plaintext", None), ("no certificate", Some(no_cert)), ("a foreign CA's certificate", Some(foreign))];
    let cases = cases
        .into_iter()
        .chain([("an expired certificate", Some(stale)), ("a CA that did not sign the nodes", Some(wrong_ca))]);
    for (what, tls) in cases {
        let refused = match client_with(&cluster, tls).await {
            Err(e) => e,
            Ok(c) => match c.session(TTL).await {
                Ok(_) => panic!("a client with {what} opened a session"),
                Err(e) => e,
            },
        };
        // The connection fails (a plaintext call may fail mid-stream: its outcome is unknown to
        // the client, but no request got through, as the session count shows).
        assert!(
            matches!(refused, baton_client::Error::Unreachable(..) | baton_client::Error::OutcomeUnknown(..)),
            "a client with {what}: {refused} (the connection must fail, not a request)"
        );
    }
    let sessions: u64 = cluster.status(1).await.unwrap().groups.iter().map(|g| g.sessions).sum();
    assert_eq!(sessions, 1, "only the test client's session is open");

    // The etcd API: the same rules.
    let etcd = cluster.etcd_addrs[&1].clone();
    let plain = tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(&etcd)).await;
    assert!(plain.is_ok(), "the etcd port is open");
    let ok = Pki::served_leaf(&etcd, &cluster.client_tls.clone().unwrap()).await;
    assert_eq!(ok, Pki::leaf(&pki.node_files(1).0), "the etcd port serves the node's certificate");

    // HTTP: TLS, a client certificate checked when given but not required.
    let http = cluster.http_addrs[&1].clone();
    assert_eq!(status_line(&https_get(&http, "/healthz", &pki, None).await), "HTTP/1.1 200 OK");
    let bob = Some(pki.client_cert("bob", Validity::default()));
    assert_eq!(status_line(&https_get(&http, "/healthz", &pki, bob).await), "HTTP/1.1 200 OK");

    guard.release().await.unwrap();
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
}

/// A peer client of node `to`'s peer port, presenting `identity` (certificate and key).
async fn peer_client(
    cluster: &TestCluster,
    pki: &Pki,
    to: u64,
    identity: (std::path::PathBuf, std::path::PathBuf),
) -> baton_proto::peer::peer_client::PeerClient<tonic::transport::Channel> {
    let files = ClientFiles { ca: pki.ca_file(), identity: Some(identity) };
    let tls = std::sync::Arc::new(baton_tls::ClientTls::client("test", files).unwrap());
    let dialer = baton_tls::Dialer::new(Some(tls)).server_name(baton_tls::node_name(to));
    let endpoint = dialer.endpoint(&cluster.peers[&to]).unwrap();
    baton_proto::peer::peer_client::PeerClient::new(dialer.connect(&endpoint).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_speaks_for_the_node_it_names_only() {
    let pki = Pki::new();
    let mut cluster = TestCluster::with_tls(3, 1, &pki).await;
    cluster.leader().await;
    // Node 2's certificate, claiming to be node 3 in a Raft stream's handshake that is
    // otherwise right: refused before any message is read.
    let mut as_two = peer_client(&cluster, &pki, 1, pki.node_files(2)).await;
    let handshake = baton_proto::peer::Handshake {
        node_id: 3,
        client_addr: cluster.client_addrs[&3].clone(),
        members: cluster.peers.clone().into_iter().collect(),
        tick_ms: 50,
        election_ticks: baton_node::DEFAULT_ELECTION_TICKS as u64,
        lease_reads: false,
        data_groups: 1,
        etcd_group: true,
        etcd_addr: String::new(),
    };
    let frame =
        baton_proto::peer::PeerFrame { frame: Some(baton_proto::peer::peer_frame::Frame::Handshake(handshake)) };
    let refused = as_two.raft(tokio_stream::iter([frame])).await.expect_err("a stream claiming node 3 was opened");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("does not name node-3"), "{}", refused.message());
    // Forwarded calls: the same rule (the review found any certificate of the peer CA was
    // enough), for a node's certificate claiming another node and for a client's.
    let forward = |from| baton_proto::peer::ForwardRequest { from, group: 1, ..Default::default() };
    let refused = as_two.forward(forward(3)).await.expect_err("node 2 spoke for node 3");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let mut as_client = peer_client(&cluster, &pki, 1, pki.client_cert("alice", Validity::default())).await;
    let refused = as_client.forward(forward(2)).await.expect_err("a client certificate spoke for node 2");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    // Node 2 speaking for itself passes the identity check (and is judged on its content).
    let answered = as_two.forward(forward(2)).await.expect_err("an empty command");
    assert_eq!(answered.code(), tonic::Code::InvalidArgument, "{answered:?}");

    // A node given a certificate that names another node does not start.
    cluster.stop(3).await;
    pki.issue_node("node3", 2);
    let client = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = baton_server::ServerConfig::new(3, cluster.dirs[&3].path().to_path_buf(), cluster.peers.clone());
    config.tls = pki.node_config(3);
    let err = baton_server::Server::start_with_listeners(config, client, peer).await.err().expect("it started");
    assert!(err.to_string().contains("not node 3's certificate"), "{err}");
    for id in [1, 2] {
        cluster.stop(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotated_under_load_lose_no_session() {
    let pki = Pki::new();
    let mut cluster = TestCluster::with_tls(3, 2, &pki).await;
    let client = cluster.client().await;
    let holder = client.session(TTL).await.unwrap();
    let guard = holder.lock("held", None).await.unwrap().expect("granted");
    // Load: lock cycles on their own session while the certificates change.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let s = client.session(TTL).await.unwrap();
            let mut cycles = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let g = s.lock("busy", Some(Duration::from_secs(5))).await.unwrap().expect("granted");
                g.release().await.unwrap();
                cycles += 1;
            }
            (cycles, s.is_alive())
        })
    };
    // Every node gets a new certificate (same CA), and the test client a new one too.
    let before: Vec<Vec<u8>> = (1..=3).map(|id| Pki::leaf(&pki.node_files(id).0)).collect();
    for id in 1..=3 {
        pki.issue_node(&format!("node{id}"), id);
    }
    let new_client = pki.client_files("root");
    // Wait until every port serves its new certificate (reloaded without a restart).
    for id in 1..=3u64 {
        let want = Pki::leaf(&pki.node_files(id).0);
        assert_ne!(want, before[id as usize - 1]);
        let ports = [cluster.client_addrs[&id].clone(), cluster.etcd_addrs[&id].clone(), cluster.peers[&id].clone()];
        for addr in ports {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Pki::served_leaf(&addr, &new_client).await != want {
                assert!(Instant::now() < deadline, "node {id} still serves its old certificate on {addr}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // New peer connections are made with the new certificates: restart node 3 (its streams to
    // and from the others are new) and wait until it has caught up with every group.
    cluster.stop(3).await;
    cluster.restart(3).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (one, three) = (cluster.status(1).await, cluster.status(3).await);
        if let (Ok(one), Ok(three)) = (one, three) {
            let caught_up = one.groups.iter().all(|g| {
                three.groups.iter().any(|t| t.id == g.id && t.leader != 0 && t.applied_index >= g.commit_index)
            });
            if caught_up {
                break;
            }
        }
        assert!(Instant::now() < deadline, "node 3 did not catch up over the new certificates");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (cycles, alive) = load.await.unwrap();
    assert!(cycles > 0 && alive, "the load's session ran {cycles} cycles, alive: {alive}");
    // The holder's session and lock survived it all.
    assert!(holder.is_alive());
    let d = client.describe("held").await.unwrap();
    assert_eq!((d.holder_session, d.token), (holder.id(), guard.token()));
    // A client with the new certificate is served.
    let fresh = client_with(&cluster, Some(new_client)).await.unwrap();
    fresh.session(TTL).await.unwrap();
    guard.release().await.unwrap();
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
}
