//! End-to-end tests of the real `baton` binary: separate processes, real sockets on 127.0.0.1,
//! real disks in temp folders. Every process started here is stopped here, by its PID.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{dev_in, free_ports, read_pid, signal, wait_for_line, Proc, BATON};

fn status_json(endpoints: &str) -> Option<serde_json::Value> {
    let out = Command::new(BATON).args(["status", "--json", "--endpoints", endpoints]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// The log a locked command writes: "start TOKEN NANOS" and "end TOKEN NANOS" lines.
fn check_no_overlap(log: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(log).unwrap();
    let mut holding: Option<u64> = None;
    let mut tokens = Vec::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let token: u64 = parts[1].parse().unwrap();
        match parts[0] {
            "start" => {
                assert!(holding.is_none(), "two holders at once: {holding:?} and {token}\n{text}");
                holding = Some(token);
                tokens.push(token);
            }
            "end" => {
                assert_eq!(holding, Some(token), "end without start\n{text}");
                holding = None;
            }
            _ => panic!("bad line {line}"),
        }
    }
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "tokens not strictly increasing: {tokens:?}");
    tokens
}

fn locked_writer(endpoints: &str, name: &str, log: &Path, hold_s: f64, extra: &[&str]) -> Command {
    let script = format!("echo start $BATON_FENCE >> {0}; sleep {hold_s}; echo end $BATON_FENCE >> {0}", log.display());
    let mut cmd = Command::new(BATON);
    cmd.args(["lock", "--endpoints", endpoints, "--ttl", "3"]).args(extra).args([name, "--", "sh", "-c", &script]);
    cmd
}

#[test]
fn dev_serialises_two_lock_commands() {
    let dir = tempfile::tempdir().unwrap();
    let (_dev, addr) = dev_in(dir.path());
    let log = dir.path().join("log");
    let mut a = locked_writer(&addr, "job", &log, 0.5, &[]).spawn().unwrap();
    let mut b = locked_writer(&addr, "job", &log, 0.5, &[]).spawn().unwrap();
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
    let tokens = check_no_overlap(&log);
    assert_eq!(tokens.len(), 2);

    // The command's exit code is passed through.
    let code =
        Command::new(BATON).args(["lock", "--endpoints", &addr, "job", "--", "sh", "-c", "exit 7"]).status().unwrap();
    assert_eq!(code.code(), Some(7));

    // Not acquired within --wait: exit 75, and the command never ran.
    let mut holder = locked_writer(&addr, "job", &log, 3.0, &[]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let marker = dir.path().join("ran");
    let code = Command::new(BATON)
        .args(["lock", "--endpoints", &addr, "--wait", "0.5", "job", "--", "touch", marker.to_str().unwrap()])
        .status()
        .unwrap();
    assert_eq!(code.code(), Some(75));
    assert!(!marker.exists());
    assert!(holder.wait().unwrap().success());

    // The status JSON has the documented shape.
    let st = status_json(&addr).unwrap();
    assert_eq!(st["groups"][0]["leader"], 1);
    assert_eq!(st["nodes"][0]["client_addr"], addr.as_str());
    assert!(st["groups"][0]["asleep"].is_boolean(), "{st}");

    // Counter and register from the CLI.
    let run = |args: &[&str]| {
        let out = Command::new(BATON).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(run(&["counter", "--endpoints", &addr, "c", "add", "5"]), "5");
    assert_eq!(run(&["counter", "--endpoints", &addr, "c", "add", "-2"]), "3");
    assert_eq!(run(&["counter", "--endpoints", &addr, "c", "cas", "3", "7"]), "swapped=true value=7");
    assert_eq!(run(&["counter", "--endpoints", &addr, "c", "get"]), "7");
    // Operations and their arguments are checked before anything is sent.
    for (args, says) in [
        (&["counter", "c", "mul", "2"][..], "invalid value 'mul'"),
        (&["counter", "c", "add"][..], "add takes the amount"),
        (&["counter", "c", "add", "x"][..], "invalid value 'x'"),
        (&["latch", "l", "up"][..], "invalid value 'up'"),
    ] {
        let out = Command::new(BATON).args(args).args(["--endpoints", &addr]).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(run(&["counter", "--endpoints", &addr, "c", "get"]), "7");
    assert!(
        run(&["register", "--endpoints", &addr, "--if-version", "0", "r", "set", "hello"]).starts_with("swapped=true")
    );
    assert!(run(&["register", "--endpoints", &addr, "r", "get"]).ends_with("value=hello"));
    // The coordination-free tier from the CLI.
    let crdt = |args: &[&str]| run(&[&["crdt"], args, &["--endpoints", &addr]].concat());
    assert_eq!(crdt(&["counter", "hits", "add", "5"]), "5");
    assert_eq!(crdt(&["counter", "hits", "sub", "2"]), "3");
    assert_eq!(crdt(&["counter", "hits", "get", "--level", "converged"]), "3");
    assert_eq!(crdt(&["set", "online", "add", "alice"]), "");
    assert_eq!(crdt(&["set", "online", "add", "bob"]), "");
    assert_eq!(crdt(&["set", "online", "remove", "alice"]), "");
    assert_eq!(crdt(&["set", "online", "members"]), "bob");
    assert_eq!(crdt(&["register", "flag", "set", "on"]), "");
    assert_eq!(crdt(&["register", "flag", "get", "--level", "session"]), "on");
    assert_eq!(crdt(&["counter", "--kind", "bounded", "seats", "add", "2"]), "2 (this node's rights: 2)");
    for (args, code, says) in [
        (&["crdt", "counter", "--kind", "bounded", "seats", "sub", "3", "--timeout-ms", "200"][..], 64, "rights"),
        (&["crdt", "counter", "--kind", "g", "visits", "sub", "1"][..], 64, "subtraction"),
        (&["crdt", "set", "online", "remove"][..], 64, "take the element"),
        (&["crdt", "set", "--kind", "g", "tags", "remove", "x"][..], 64, "no remove"),
    ] {
        let out = Command::new(BATON).args(args).args(["--endpoints", &addr]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert_eq!(crdt(&["counter", "--kind", "bounded", "seats", "get"]), "2 (this node's rights: 2)");
    // Semaphore and read/write lock verbs run their commands.
    assert_eq!(
        run(&["sem", "--endpoints", &addr, "--capacity", "2", "pool", "--", "sh", "-c", "echo $BATON_LOCK"]),
        "pool"
    );
    assert_eq!(run(&["rwlock", "--endpoints", &addr, "--read", "doc", "--", "echo", "read"]), "read");

    // A clear error for a bad name, and nothing runs.
    let long = "n".repeat(2000);
    let out = Command::new(BATON).args(["lock", "--endpoints", &addr, &long, "--", "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("longer than 1024 bytes"));
}

struct ProcCluster {
    procs: BTreeMap<u64, Proc>,
    client_addrs: BTreeMap<u64, String>,
    peers: String,
    peer_addrs: BTreeMap<u64, String>,
    data: BTreeMap<u64, PathBuf>,
}

impl ProcCluster {
    fn start(dir: &Path) -> ProcCluster {
        let ids = [1u64, 2, 3];
        let ports = free_ports(6);
        let client_addrs: BTreeMap<u64, String> =
            ids.iter().map(|&i| (i, format!("127.0.0.1:{}", ports[i as usize - 1]))).collect();
        let peer_addrs: BTreeMap<u64, String> =
            ids.iter().map(|&i| (i, format!("127.0.0.1:{}", ports[i as usize + 2]))).collect();
        let peers = peer_addrs.iter().map(|(i, a)| format!("{i}={a}")).collect::<Vec<_>>().join(",");
        let data = ids.iter().map(|&i| (i, dir.join(format!("n{i}")))).collect();
        let mut c = ProcCluster { procs: BTreeMap::new(), client_addrs, peers, peer_addrs, data };
        for id in ids {
            c.launch(id);
        }
        c
    }

    fn launch(&mut self, id: u64) {
        let mut child = Command::new(BATON)
            .args(["server", "--id", &id.to_string(), "--data", self.data[&id].to_str().unwrap()])
            .args([
                "--client-addr",
                &self.client_addrs[&id],
                "--peer-addr",
                &self.peer_addrs[&id],
                "--peers",
                &self.peers,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_line(&mut child, "serving clients");
        self.procs.insert(id, Proc(child));
    }

    fn endpoints(&self) -> String {
        self.client_addrs.values().cloned().collect::<Vec<_>>().join(",")
    }

    fn leader(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            for (id, addr) in &self.client_addrs {
                if !self.procs.contains_key(id) {
                    continue;
                }
                if let Some(st) = status_json(addr) {
                    if let Some(l) = st["groups"][0]["leader"].as_u64() {
                        if self.procs.contains_key(&l) {
                            return l;
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no leader");
    }

    fn kill9(&mut self, id: u64) {
        let mut p = self.procs.remove(&id).unwrap();
        // SIGKILL: no shutdown path runs.
        p.0.kill().unwrap();
        p.0.wait().unwrap();
    }
}

#[test]
fn three_node_cluster_survives_sigkill_of_its_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = ProcCluster::start(dir.path());
    let eps = cluster.endpoints();
    let log = dir.path().join("log");
    let leader = cluster.leader();

    // One holder holds for 4 s; three more queue behind it.
    let mut clients = vec![locked_writer(&eps, "shared", &log, 4.0, &[]).spawn().unwrap()];
    std::thread::sleep(Duration::from_millis(800));
    for _ in 0..3 {
        clients.push(locked_writer(&eps, "shared", &log, 0.3, &[]).spawn().unwrap());
    }
    std::thread::sleep(Duration::from_millis(500));
    let killed_at = Instant::now();
    cluster.kill9(leader);

    // A fresh client measures how long until a lock can be granted again.
    let mut ok = false;
    while killed_at.elapsed() < Duration::from_secs(30) {
        let out = Command::new(BATON)
            .args(["lock", "--endpoints", &eps, "--wait", "0", "probe", "--", "true"])
            .output()
            .unwrap();
        if out.status.success() {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ok, "no grant after the leader was killed");
    println!("failover: kill -9 of the leader -> next grant in {:?}", killed_at.elapsed());

    for mut c in clients {
        assert!(c.wait().unwrap().success(), "every locked command ran and exited 0");
    }
    let tokens = check_no_overlap(&log);
    assert_eq!(tokens.len(), 4);

    // The killed node restarts from its disk and the cluster keeps granting.
    cluster.launch(leader);
    let out = Command::new(BATON)
        .args(["lock", "--endpoints", &eps, "shared", "--", "sh", "-c", "echo $BATON_FENCE"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let last: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(last > *tokens.last().unwrap());
}

/// Runs `cmd` to its end, which must come within `limit` (else it is killed and the test
/// fails): the exit code and stderr.
fn run_within(cmd: &mut Command, limit: Duration) -> (Option<i32>, String) {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => {
            let out = out.unwrap();
            (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
        }
        Err(_) => {
            signal(pid, libc::SIGKILL);
            panic!("{cmd:?} did not finish within {limit:?}");
        }
    }
}

/// Bytes received and not yet read on an established IPv4 connection whose local port is
/// `port` (from /proc/net/tcp): what a stopped server has been sent.
fn unread_bytes(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            let established = *f.get(3)? == "01";
            let rx = u64::from_str_radix(f.get(4)?.split(':').nth(1)?, 16).ok()?;
            (local_port == port && established).then_some(rx)
        })
        .max()
        .unwrap_or(0)
}

/// Regression (defects 11, 12): a counter add to a stopped (SIGSTOP) server waited until it
/// resumed, and one whose connection was cut mid-request exited 64 (the usage error) with
/// "Unknown: transport error". Both now end with exit 74, "outcome unknown": the add was sent
/// and may or may not have been applied.
#[test]
fn an_unanswered_or_cut_request_exits_74_outcome_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let (mut dev, addr) = dev_in(dir.path());
    let add = || {
        let mut cmd = Command::new(BATON);
        cmd.args(["counter", "--endpoints", &addr, "c", "add", "1"]);
        cmd
    };
    assert_eq!(run_within(&mut add(), Duration::from_secs(20)).0, Some(0));

    // Stopped: the request is sent and never answered.
    signal(dev.0.id(), libc::SIGSTOP);
    let (code, stderr) = run_within(&mut add(), Duration::from_secs(20));
    assert_eq!(code, Some(74), "{stderr}");
    assert!(stderr.contains("outcome unknown"), "{stderr}");

    // Cut: the request sits unread at the stopped server when the server dies.
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let mut cut = add();
    let cut = std::thread::spawn(move || run_within(&mut cut, Duration::from_secs(40)));
    // The HTTP/2 preface, settings, headers and the call's message: well over 100 bytes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while unread_bytes(port) < 100 {
        assert!(Instant::now() < deadline, "the request never reached the server's socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    dev.0.kill().unwrap();
    dev.0.wait().unwrap();
    let (code, stderr) = cut.join().unwrap();
    assert_eq!(code, Some(74), "{stderr}");
    assert!(stderr.contains("outcome unknown"), "{stderr}");
}

/// Defect 4: `baton lock` kills its command at the lease's deadline, measured on its own clock,
/// while every renewal goes unanswered (the server is stopped), and exits 76.
#[test]
fn baton_lock_kills_its_command_at_the_lease_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (dev, addr) = dev_in(dir.path());
    let pidfile = dir.path().join("cmd.pid");
    let script = format!("echo $$ > {}; exec sleep 60", pidfile.display());
    let ttl = Duration::from_secs(2);
    let mut lock = Command::new(BATON);
    lock.args(["lock", "--endpoints", &addr, "--ttl", "2", "job", "--", "sh", "-c", &script]);
    let runner = std::thread::spawn(move || run_within(&mut lock, Duration::from_secs(30)));
    let cmd_pid = read_pid(&pidfile);
    signal(dev.0.id(), libc::SIGSTOP);
    let stopped_at = Instant::now();
    let (code, stderr) = runner.join().unwrap();
    let after = stopped_at.elapsed();
    signal(dev.0.id(), libc::SIGCONT);
    assert_eq!(code, Some(76), "{stderr}");
    assert!(stderr.contains("lease on lock \"job\" lost"), "{stderr}");
    // The last acknowledged renewal was sent before the stop: the deadline is < 0.9 TTL away.
    assert!(after < ttl + Duration::from_secs(1), "killed {after:?} after the stop");
    // SAFETY: signal 0 only checks that the process exists.
    let alive = unsafe { libc::kill(cmd_pid as libc::pid_t, 0) } == 0;
    assert!(!alive, "the command still runs");
}

/// Regression (defect 11): with the leader stopped (SIGSTOP), client calls waited on it until it
/// resumed. Now every attempt times out and moves on: a read and a waiting acquire complete at
/// the new leader, a counter add completes or is reported as of unknown outcome, and the
/// sessions stay alive (the keepalive moved on too).
#[test]
fn a_stopped_leader_does_not_stall_clients() {
    use baton_client::{Client, Error};
    let dir = tempfile::tempdir().unwrap();
    let cluster = ProcCluster::start(dir.path());
    let leader = cluster.leader();
    let leader_pid = cluster.procs[&leader].0.id();
    // The stopped leader first, so that every client starts there.
    let mut endpoints = vec![cluster.client_addrs[&leader].clone()];
    endpoints.extend(cluster.client_addrs.iter().filter(|(id, _)| **id != leader).map(|(_, a)| a.clone()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let bound = Duration::from_secs(25);
        let client = Client::connect(endpoints).await.unwrap();
        let session = client.session(Duration::from_secs(10)).await.unwrap();
        let held = session.lock("held", None).await.unwrap().expect("free lock is granted");
        assert_eq!(client.counter_add("c", 1).await.unwrap(), 1);
        signal(leader_pid, libc::SIGSTOP);
        let (get, add, lock) = tokio::join!(
            tokio::time::timeout(bound, client.counter_get("c")),
            tokio::time::timeout(bound, client.counter_add("c", 1)),
            tokio::time::timeout(bound, session.lock("other", Some(Duration::from_secs(5)))),
        );
        let get = get.expect("a read stalled on the stopped leader").unwrap();
        assert!(get == 1 || get == 2, "{get}");
        match add.expect("a write stalled on the stopped leader") {
            Ok(v) => assert_eq!(v, 2),
            Err(Error::OutcomeUnknown(_)) => {}
            Err(e) => panic!("an add to a stopped leader: {e}"),
        }
        let other = lock.expect("an acquire stalled on the stopped leader").unwrap().expect("granted");
        let after = tokio::time::timeout(bound, client.counter_add("c", 1)).await.expect("stalled").unwrap();
        assert!(after == 2 || after == 3, "{after}");
        assert!(held.is_lease_valid());
        let d = client.describe("held").await.unwrap();
        assert_eq!((d.holder_session, d.token), (session.id(), held.token()));
        drop(other);
    });
    signal(leader_pid, libc::SIGCONT);
}
