//! Chaos run of real processes: a 3-node cluster of `baton server` processes on 127.0.0.1
//! under concurrent lock load, while the test SIGKILLs and restarts nodes, freezes them with
//! SIGSTOP for longer than the session TTL, and partitions them through fault-injecting TCP
//! proxies on every peer link. The client-side history is then checked for mutual exclusion and
//! for fencing tokens that increase in grant order.
//!
//! Bounded: `BATON_CHAOS_SECS` seconds of chaos (default 20), then a heal phase; every process
//! started here is stopped here, by PID. `BATON_CHAOS_SEED` picks the fault schedule.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_client::{Client, ClientOptions};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

mod common;

use common::{free_ports, BATON};

const TTL: Duration = Duration::from_secs(2);

/// A one-way link `from -> to`: a TCP proxy that can be cut (dropping every connection).
struct Link {
    cut: watch::Sender<bool>,
}

async fn proxy(listener: TcpListener, target: String, cut: watch::Receiver<bool>) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else { return };
        if *cut.borrow() {
            continue; // dropped: the connection closes at once
        }
        let target = target.clone();
        let mut cut = cut.clone();
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(&target).await else { return };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = cut.wait_for(|c| *c) => {}
            }
        });
    }
}

struct Node {
    child: Option<Child>,
    stopped: bool,
    args: Vec<String>,
}

impl Node {
    fn start(&mut self) {
        let child = Command::new(BATON).args(&self.args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        self.child = Some(child);
        self.stopped = false;
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").args([sig, &c.id().to_string()]).status();
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.stopped {
            self.signal("-CONT");
        }
        self.kill9();
    }
}

#[derive(Clone, Debug)]
struct Hold {
    name: String,
    session: u64,
    token: u64,
    from: Instant,
    until: Instant,
}

/// A tiny deterministic generator for the fault schedule.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_run_keeps_mutual_exclusion_and_fencing() {
    let chaos_secs: u64 = std::env::var("BATON_CHAOS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let seed: u64 = std::env::var("BATON_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let dir = tempfile::tempdir().unwrap();
    let ids = [1u64, 2, 3];
    let ports = free_ports(6);
    let peer_ports: BTreeMap<u64, u16> = ids.iter().map(|&i| (i, ports[i as usize - 1])).collect();
    let client_addrs: BTreeMap<u64, String> =
        ids.iter().map(|&i| (i, format!("127.0.0.1:{}", ports[i as usize + 2]))).collect();

    // Node i reaches node j through its own proxy, so every directed link can be cut.
    let mut links: BTreeMap<(u64, u64), Link> = BTreeMap::new();
    let mut peer_lists: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for &i in &ids {
        for &j in &ids {
            let addr = if i == j {
                format!("127.0.0.1:{}", peer_ports[&j])
            } else {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let port = listener.local_addr().unwrap().port();
                let (tx, rx) = watch::channel(false);
                tokio::spawn(proxy(listener, format!("127.0.0.1:{}", peer_ports[&j]), rx));
                links.insert((i, j), Link { cut: tx });
                format!("127.0.0.1:{port}")
            };
            peer_lists.entry(i).or_default().push(format!("{j}={addr}"));
        }
    }
    let mut nodes: BTreeMap<u64, Node> = BTreeMap::new();
    for &i in &ids {
        let args = vec![
            "server".into(),
            "--id".into(),
            i.to_string(),
            "--data".into(),
            dir.path().join(format!("n{i}")).to_string_lossy().into_owned(),
            "--client-addr".into(),
            client_addrs[&i].clone(),
            "--peer-addr".into(),
            format!("127.0.0.1:{}", peer_ports[&i]),
            "--peers".into(),
            peer_lists[&i].join(","),
        ];
        let mut n = Node { child: None, stopped: false, args };
        n.start();
        nodes.insert(i, n);
    }

    // Load: clients lock, hold briefly while their lease is valid, release.
    let holds = Arc::new(Mutex::new(Vec::<Hold>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let endpoints: Vec<String> = client_addrs.values().cloned().collect();
    let mut workers = Vec::new();
    for w in 0..4 {
        let (holds, stop, endpoints) = (holds.clone(), stop.clone(), endpoints.clone());
        workers.push(tokio::spawn(async move {
            let options = ClientOptions {
                client_id: format!("chaos-{w}"),
                request_timeout: Duration::from_secs(10),
                ..Default::default()
            };
            let client = Client::connect_with(endpoints, options).await.unwrap();
            let mut session = None;
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                if session.as_ref().is_none_or(|s: &baton_client::Session| !s.is_alive()) {
                    session = client.session(TTL).await.ok();
                    if session.is_none() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
                let s = session.clone().unwrap();
                let name = format!("res-{}", (i + w) % 2);
                let Ok(Some(guard)) = s.lock(&name, Some(Duration::from_secs(2))).await else { continue };
                let from = Instant::now();
                if !guard.is_lease_valid() {
                    continue;
                }
                let hold_for = Duration::from_millis(10 + (i * 37 + w * 11) % 90);
                let mut until = from;
                while until.duration_since(from) < hold_for && guard.is_lease_valid() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    until = Instant::now();
                }
                let h = Hold { name, session: s.id(), token: guard.token(), from, until: until.min(Instant::now()) };
                holds.lock().unwrap().push(h);
                let _ = guard.release().await;
            }
        }));
    }

    // Chaos.
    let mut rng = Lcg(seed);
    let started = Instant::now();
    let mut log = Vec::new();
    tokio::time::sleep(Duration::from_secs(2)).await;
    while started.elapsed() < Duration::from_secs(chaos_secs) {
        let target = ids[rng.next(3) as usize];
        match rng.next(3) {
            0 => {
                log.push(format!("{:?} kill -9 node {target}", started.elapsed()));
                nodes.get_mut(&target).unwrap().kill9();
                tokio::time::sleep(Duration::from_millis(500 + rng.next(1500))).await;
                nodes.get_mut(&target).unwrap().start();
            }
            1 => {
                log.push(format!("{:?} SIGSTOP node {target} for longer than the ttl", started.elapsed()));
                let n = nodes.get_mut(&target).unwrap();
                n.signal("-STOP");
                n.stopped = true;
                tokio::time::sleep(TTL + Duration::from_millis(500 + rng.next(1000))).await;
                n.signal("-CONT");
                n.stopped = false;
            }
            _ => {
                log.push(format!("{:?} partition node {target} from the others", started.elapsed()));
                for ((i, j), link) in &links {
                    if *i == target || *j == target {
                        link.cut.send_replace(true);
                    }
                }
                tokio::time::sleep(Duration::from_millis(1500 + rng.next(2000))).await;
                for link in links.values() {
                    link.cut.send_replace(false);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500 + rng.next(1500))).await;
    }
    // Heal and keep going for a while: the cluster must serve again.
    let healed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(30), w).await;
    }
    drop(nodes);

    let holds = holds.lock().unwrap().clone();
    let after_heal = holds.iter().filter(|h| h.from > healed_at).count();
    println!("chaos seed {seed}: {} holds ({} after heal); faults: {log:#?}", holds.len(), after_heal);
    assert!(after_heal > 0, "no lock was granted after the faults healed");
    let mut by_name: BTreeMap<&str, Vec<&Hold>> = BTreeMap::new();
    for h in &holds {
        by_name.entry(&h.name).or_default().push(h);
    }
    for (name, mut hs) in by_name {
        hs.sort_by_key(|h| h.from);
        for pair in hs.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert!(b.token > a.token, "{name}: token {} granted after token {} (seed {seed})", b.token, a.token);
            assert!(
                a.session == b.session || b.from >= a.until,
                "{name}: session {} (token {}) and session {} (token {}) held it at once (seed {seed})",
                a.session,
                a.token,
                b.session,
                b.token
            );
        }
    }
}
