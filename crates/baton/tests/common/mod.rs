//! Helpers shared by the tests that run the real `baton` binary.
#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader};
use std::process::Child;

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
