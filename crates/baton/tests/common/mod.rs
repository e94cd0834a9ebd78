//! Helpers shared by the tests that run the real `baton` binary.
#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BATON: &str = env!("CARGO_BIN_EXE_baton");

/// A child process killed when dropped, so that a failing test leaves nothing running.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `n` distinct free ports: all bound at once, so that no two calls can return the same port.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// Reads the child's stdout until a line contains `needle` (30 s at most), then keeps draining
/// it in the background so the child never blocks on a full pipe.
pub fn wait_for_line(child: &mut Child, needle: &str) {
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        match lines.next() {
            Some(Ok(line)) if line.contains(needle) => {
                std::thread::spawn(move || for _ in lines {});
                return;
            }
            Some(_) => continue,
            None => break,
        }
    }
    panic!("process never printed {needle:?}");
}

/// Whether `tool` (etcd, etcdctl) is installed; if not, the test is skipped unless
/// `BATON_REQUIRE_ETCD` is set (as in CI), where that fails.
pub fn installed(tool: &str) -> bool {
    let found =
        Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(std::env::var_os("BATON_REQUIRE_ETCD").is_none(), "BATON_REQUIRE_ETCD is set but {tool} is missing");
        eprintln!("{tool} is not installed: skipping (.ci/run installs it)");
    }
    found
}

/// Starts `baton dev` with its data in `data`, serving clients on `addr`; returns once it serves.
pub fn start_dev(data: &Path, addr: &str) -> Proc {
    let mut dev = Proc(
        Command::new(BATON)
            .args(["dev", "--data", data.to_str().unwrap(), "--client-addr", addr])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_line(&mut dev.0, "serving clients");
    dev
}

/// `baton dev` on a free port with its data under `dir`: the process and its client address.
pub fn dev_in(dir: &Path) -> (Proc, String) {
    let addr = format!("127.0.0.1:{}", free_ports(1)[0]);
    (start_dev(&dir.join("data"), &addr), addr)
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a process the test started.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// Waits for `child` to exit (at most `limit`, else the test fails); its exit code.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("process {} did not exit within {limit:?}", child.id());
}

/// Waits (at most 10 s) for `path` to hold a pid, written by a command the test started.
pub fn read_pid(path: &Path) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pid) = std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok()) {
            return pid;
        }
        assert!(Instant::now() < deadline, "{} never written", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True once `pid` is gone (or a zombie: killed, not yet reaped).
pub fn is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) == Some("Z"),
    }
}

/// Waits (at most 10 s) for `pid` to be gone; false if it still runs then.
pub fn wait_gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !is_gone(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// A single-member etcd on free ports, data in `dir`.
pub fn start_etcd(dir: &Path) -> Option<(Proc, String)> {
    let which = Command::new("sh").args(["-c", "command -v etcd"]).output().ok()?;
    if !which.status.success() {
        assert!(std::env::var_os("BATON_REQUIRE_ETCD").is_none(), "BATON_REQUIRE_ETCD is set but etcd is missing");
        eprintln!("etcd is not installed: skipping the etcd side (bench/compare.sh and .ci/run install it)");
        return None;
    }
    // Another test's process may take a port between `free_ports` and etcd's bind (etcd then
    // exits at once): start again on new ports, a few times.
    for _ in 0..3 {
        let ports = free_ports(2);
        let (client, peer) = (format!("http://127.0.0.1:{}", ports[0]), format!("http://127.0.0.1:{}", ports[1]));
        let _ = std::fs::remove_dir_all(dir.join("etcd"));
        let child = Command::new("etcd")
            .args(["--name", "bench", "--data-dir", dir.join("etcd").to_str().unwrap()])
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("bench={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut proc = Proc(child);
        let addr = format!("127.0.0.1:{}", ports[0]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline && proc.0.try_wait().unwrap().is_none() {
            let out = Command::new(BATON)
                .args(["bench", "--target", "etcd", "--endpoints", &addr, "--clients", "1", "--duration", "0.2"])
                .output()
                .unwrap();
            if out.status.success() {
                return Some((proc, addr));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    panic!("etcd did not start serving");
}

/// One session holding a name and others queued behind it; the queued acquires are aborted
/// when this is dropped.
pub struct Contention {
    /// The holder's session first, then the waiters'.
    pub sessions: Vec<baton_client::Session>,
    /// The holder's guard.
    pub held: baton_client::LockGuard,
    waiting: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Contention {
    fn drop(&mut self) {
        for w in &self.waiting {
            w.abort();
        }
    }
}

/// Makes `name` contended through `client`: one session holds it and `waiters` more queue
/// behind it (up to a minute each); returns once `describe` shows them all queued (waited for,
/// not slept for).
pub async fn contend(client: &baton_client::Client, name: &'static str, waiters: usize) -> Contention {
    let opened = futures::future::join_all((0..=waiters).map(|_| client.session(Duration::from_secs(10)))).await;
    let sessions: Vec<_> = opened.into_iter().map(|s| s.unwrap()).collect();
    let held = sessions[0].lock(name, None).await.unwrap().unwrap();
    let waiting = sessions[1..]
        .iter()
        .map(|s| {
            let s = s.clone();
            tokio::spawn(async move {
                let _ = s.lock(name, Some(Duration::from_secs(60))).await;
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.describe(name).await.unwrap().waiters.len() < waiters {
        assert!(Instant::now() < deadline, "the waiters of {name} never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Contention { sessions, held, waiting }
}
