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
