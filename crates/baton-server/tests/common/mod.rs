//! The test harness shared by the cluster tests: real nodes in one process.
#![allow(dead_code)]

pub mod pki;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use baton_client::{Client, ClientOptions};
use baton_server::{Server, ServerConfig};
use tokio::net::TcpListener;

/// Real nodes in this process, each with its own sockets on 127.0.0.1 and data folder.
pub struct TestCluster {
    pub dirs: BTreeMap<u64, tempfile::TempDir>,
    pub peers: BTreeMap<u64, String>,
    pub client_addrs: BTreeMap<u64, String>,
    pub servers: BTreeMap<u64, Server>,
    pub snapshot_entries: u64,
    pub lease_reads: bool,
    /// Data groups of the new cluster.
    pub groups: u64,
    /// Replicas per data group of the new cluster.
    pub replication: usize,
    /// Serve etcd's API on every node (set before the nodes start: see [`TestCluster::with_etcd`]).
    pub etcd: bool,
    /// Each node's etcd API address (kept across restarts).
    pub etcd_addrs: BTreeMap<u64, String>,
    /// The etcd keyspace's quota every node enforces.
    pub etcd_quota_bytes: u64,
    /// Each running node's HTTP address (health, readiness, metrics).
    pub http_addrs: BTreeMap<u64, String>,
    /// Each node's TLS settings (none: plaintext).
    pub tls: BTreeMap<u64, baton_server::tls::TlsConfig>,
    /// How the test's clients dial (`None`: plaintext).
    pub client_tls: Option<baton_tls::ClientFiles>,
    /// The sockets of nodes not started yet (client, peer).
    listeners: Option<(BTreeMap<u64, TcpListener>, BTreeMap<u64, TcpListener>)>,
}

impl TestCluster {
    pub async fn start(n: u64, snapshot_entries: u64) -> TestCluster {
        TestCluster::start_with(n, snapshot_entries, false).await
    }

    pub async fn start_with(n: u64, snapshot_entries: u64, lease_reads: bool) -> TestCluster {
        TestCluster::start_sharded(n, snapshot_entries, lease_reads, 1).await
    }

    /// A cluster of `n` nodes whose names are sharded over `groups` data groups.
    pub async fn start_sharded(n: u64, snapshot_entries: u64, lease_reads: bool, groups: u64) -> TestCluster {
        TestCluster::start_full(n, snapshot_entries, lease_reads, groups, None).await
    }

    /// A cluster of `n` nodes, `groups` data groups of `replication` replicas each.
    pub async fn start_replicated(n: u64, groups: u64, replication: usize) -> TestCluster {
        let mut c = TestCluster::unstarted(n, 20_000, false, groups, None).await;
        c.replication = replication;
        let listeners = c.listeners.take().unwrap();
        c.start_nodes(listeners).await;
        c
    }

    /// A cluster of `n` nodes serving etcd's API too (on ports of their own).
    pub async fn with_etcd(n: u64, groups: u64) -> TestCluster {
        TestCluster::with_etcd_quota(n, groups, baton_server::etcd::DEFAULT_QUOTA_BYTES).await
    }

    /// [`TestCluster::with_etcd`] with the keyspace's quota given.
    pub async fn with_etcd_quota(n: u64, groups: u64, quota: u64) -> TestCluster {
        TestCluster::start_full(n, 20_000, false, groups, Some(quota)).await
    }

    /// A cluster of `n` nodes with etcd's API and TLS as `pki` sets it up (see [`pki::Pki`]).
    pub async fn with_tls(n: u64, groups: u64, pki: &pki::Pki) -> TestCluster {
        let mut c =
            TestCluster::unstarted(n, 20_000, false, groups, Some(baton_server::etcd::DEFAULT_QUOTA_BYTES)).await;
        c.tls = (1..=n).map(|id| (id, pki.node_config(id))).collect();
        c.client_tls = Some(pki.client_files("root"));
        let listeners = c.listeners.take().unwrap();
        c.start_nodes(listeners).await;
        c
    }

    /// `etcd`: serve etcd's API with this quota.
    async fn start_full(
        n: u64,
        snapshot_entries: u64,
        lease_reads: bool,
        groups: u64,
        etcd: Option<u64>,
    ) -> TestCluster {
        let mut c = TestCluster::unstarted(n, snapshot_entries, lease_reads, groups, etcd).await;
        let listeners = c.listeners.take().unwrap();
        c.start_nodes(listeners).await;
        c
    }

    /// The cluster with its sockets bound, its nodes not started yet.
    async fn unstarted(
        n: u64,
        snapshot_entries: u64,
        lease_reads: bool,
        groups: u64,
        etcd: Option<u64>,
    ) -> TestCluster {
        let mut peer_listeners = BTreeMap::new();
        let mut client_listeners = BTreeMap::new();
        for id in 1..=n {
            peer_listeners.insert(id, TcpListener::bind("127.0.0.1:0").await.unwrap());
            client_listeners.insert(id, TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let peers = peer_listeners.iter().map(|(id, l)| (*id, l.local_addr().unwrap().to_string())).collect();
        let client_addrs = client_listeners.iter().map(|(id, l)| (*id, l.local_addr().unwrap().to_string())).collect();
        TestCluster {
            dirs: BTreeMap::new(),
            peers,
            client_addrs,
            servers: BTreeMap::new(),
            snapshot_entries,
            lease_reads,
            groups,
            replication: baton_core::topology::DEFAULT_REPLICATION,
            etcd: etcd.is_some(),
            etcd_addrs: BTreeMap::new(),
            etcd_quota_bytes: etcd.unwrap_or(0),
            http_addrs: BTreeMap::new(),
            tls: BTreeMap::new(),
            client_tls: None,
            listeners: Some((client_listeners, peer_listeners)),
        }
    }

    async fn start_nodes(&mut self, listeners: (BTreeMap<u64, TcpListener>, BTreeMap<u64, TcpListener>)) {
        let (mut client_listeners, mut peer_listeners) = listeners;
        let c = self;
        let ids: Vec<u64> = client_listeners.keys().copied().collect();
        for id in ids {
            c.dirs.insert(id, tempfile::tempdir().unwrap());
            let (cl, pl) = (client_listeners.remove(&id).unwrap(), peer_listeners.remove(&id).unwrap());
            c.launch(id, cl, pl).await;
        }
    }

    pub async fn launch(&mut self, id: u64, client: TcpListener, peer: TcpListener) {
        let mut config = ServerConfig::new(id, self.dirs[&id].path().to_path_buf(), self.peers.clone());
        config.tick = Duration::from_millis(50);
        config.snapshot_entries = self.snapshot_entries;
        config.lease_reads = self.lease_reads;
        config.groups = self.groups;
        config.replication = self.replication;
        if self.etcd {
            config.etcd_quota_bytes = self.etcd_quota_bytes;
            config.etcd_addr = Some(self.etcd_addrs.get(&id).cloned().unwrap_or_else(|| "127.0.0.1:0".into()));
        }
        config.http_addr = Some("127.0.0.1:0".into());
        config.tls = self.tls.get(&id).cloned().unwrap_or_default();
        let server = Server::start_with_listeners(config, client, peer).await.unwrap();
        if let Some(a) = server.http_addr {
            self.http_addrs.insert(id, a.to_string());
        }
        if let Some(a) = server.etcd_addr {
            self.etcd_addrs.insert(id, a.to_string());
        }
        self.servers.insert(id, server);
    }

    /// The etcd API addresses of the running nodes.
    pub fn etcd_endpoints(&self) -> Vec<String> {
        self.etcd_addrs.iter().filter(|(id, _)| self.servers.contains_key(id)).map(|(_, a)| a.clone()).collect()
    }

    /// Starts node `id` that joins the running cluster (`baton server --join`): it holds
    /// nothing until the cluster adds it. Returns its (client, peer) addresses.
    pub async fn join(&mut self, id: u64) -> (String, String) {
        let client = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (client_addr, peer_addr) =
            (client.local_addr().unwrap().to_string(), peer.local_addr().unwrap().to_string());
        self.dirs.insert(id, tempfile::tempdir().unwrap());
        let peers = BTreeMap::from([(id, peer_addr.clone())]);
        let mut config = ServerConfig::new(id, self.dirs[&id].path().to_path_buf(), peers);
        config.tick = Duration::from_millis(50);
        config.snapshot_entries = self.snapshot_entries;
        config.lease_reads = self.lease_reads;
        config.join = self.endpoints();
        let server = Server::start_with_listeners(config, client, peer).await.unwrap();
        self.servers.insert(id, server);
        self.client_addrs.insert(id, client_addr.clone());
        self.peers.insert(id, peer_addr.clone());
        (client_addr, peer_addr)
    }

    pub async fn stop(&mut self, id: u64) {
        if let Some(s) = self.servers.remove(&id) {
            s.shutdown().await;
        }
    }

    pub async fn restart(&mut self, id: u64) {
        let client = bind_again(&self.client_addrs[&id]).await;
        let peer = bind_again(&self.peers[&id]).await;
        self.launch(id, client, peer).await;
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.client_addrs.values().cloned().collect()
    }

    pub async fn client(&self) -> Client {
        let options = ClientOptions {
            client_id: "test".into(),
            request_timeout: Duration::from_secs(20),
            tls: self.client_tls.clone(),
            ..Default::default()
        };
        Client::connect_with(self.endpoints(), options).await.unwrap()
    }

    /// Node `id`'s own status, dialled as the test's clients dial.
    pub async fn status(&self, id: u64) -> baton_client::Result<baton_proto::v1::StatusResponse> {
        let addr = self.client_addrs[&id].clone();
        let options = ClientOptions { discover: false, tls: self.client_tls.clone(), ..Default::default() };
        Client::connect_with([addr.clone()], options).await?.status_at(&addr).await
    }

    /// Waits until every running node serves requests (it has caught up with the users and
    /// roles since it started: until then it answers "not the leader yet" to all but status).
    pub async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.servers.values().all(|s| s.node().view.lock().unwrap().auth_ready) {
            assert!(Instant::now() < deadline, "a node never caught up with the users and roles");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The leader that every running node agrees on.
    pub async fn leader(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut seen = Vec::new();
            for id in self.servers.keys() {
                if let Ok(s) = self.status(*id).await {
                    seen.push(s.groups[0].leader);
                }
            }
            // Every running node serves (it has caught up with the users and roles: until then
            // it answers "not yet" to every request but status).
            let ready = self.servers.values().all(|s| s.node().view.lock().unwrap().auth_ready);
            if ready
                && !seen.is_empty()
                && seen[0] != 0
                && seen.iter().all(|l| *l == seen[0])
                && self.servers.contains_key(&seen[0])
            {
                return seen[0];
            }
            assert!(Instant::now() < deadline, "no agreed leader: {seen:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// GET `path` from `addr`: (status code, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let (code, _, body) = http_call(addr, "GET", path, &[], "");
    (code, body)
}

/// One HTTP/1.1 request (`headers` as `Name: value` lines, `body` sent as JSON if not empty):
/// the status code, the head and the body.
pub fn http_call(addr: &str, method: &str, path: &str, headers: &[&str], body: &str) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        request.push_str(&format!("{h}\r\n"));
    }
    if !body.is_empty() {
        request.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, head.to_string(), body.to_string())
}

/// The first batch of the HTTP event stream (`GET /api/events`) with `headers`: its data line,
/// `None` if none came within `wait` (the status code and body if the stream is refused).
pub fn http_first_events(addr: &str, headers: &[&str], wait: Duration) -> Result<Option<String>, (u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let mut request = format!("GET /api/events HTTP/1.1\r\nHost: {addr}\r\n");
    for h in headers {
        request.push_str(&format!("{h}\r\n"));
    }
    request.push_str("\r\n");
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match s.read(&mut buf) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Ok(None)
            }
            Err(e) => panic!("reading the event stream: {e}"),
        };
        assert!(n > 0, "the stream ended: {}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).into_owned();
        let code: u16 = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        if code != 0 && code != 200 {
            return Err((code, text));
        }
        if let Some(line) = text.lines().find(|l| l.starts_with("data: ")) {
            if text.contains(&format!("{line}\n")) {
                return Ok(Some(line.trim_start_matches("data: ").to_string()));
            }
        }
    }
}

pub async fn bind_again(addr: &str) -> TcpListener {
    for _ in 0..100 {
        if let Ok(l) = TcpListener::bind(addr).await {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot bind {addr} again");
}
