//! `baton top` in a real terminal: tmux runs it against `baton dev` while one session holds a
//! name and two wait; the captured screen must show the name with its holder and waiters, and
//! `q` must end it. Without tmux the test says so and skips, unless `BATON_REQUIRE_BROWSER` is
//! set (as in CI, which installs tmux with the browser), where it fails.

use std::process::Command;
use std::time::{Duration, Instant};

use baton_client::Client;

mod common;

use common::{contend, dev_in, BATON};

/// A tmux server of our own (its own socket), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux").arg("-L").arg(&self.socket).args(args).output().unwrap()
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_the_hot_name_in_a_terminal() {
    let found = Command::new("sh").args(["-c", "command -v tmux"]).output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("BATON_REQUIRE_BROWSER").is_none(),
            "BATON_REQUIRE_BROWSER is set but tmux is missing"
        );
        eprintln!("tmux is not installed: skipping the `baton top` test (.ci/run installs it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_dev, addr) = dev_in(dir.path());
    let client = Client::connect([addr.clone()]).await.unwrap();
    let name = "inventory/sku-42";
    let contention = contend(&client, name, 2).await;
    let (sessions, held) = (&contention.sessions, &contention.held);

    let tmux = Tmux { socket: format!("baton-top-test-{}", std::process::id()) };
    // At most 600 refreshes of 200 ms: it stops by itself if `q` never arrives.
    let command = format!("{BATON} top --endpoints {addr} --interval-ms 200 --iterations 600");
    let started = tmux.run(&["new-session", "-d", "-s", "top", "-x", "160", "-y", "40", &command]);
    assert!(started.status.success(), "tmux: {}", String::from_utf8_lossy(&started.stderr));
    let holder = format!("s{}/t{}", sessions[0].id(), held.token());
    let deadline = Instant::now() + Duration::from_secs(30);
    let screen = loop {
        let screen = tmux.screen();
        let row = screen.lines().find(|l| l.contains(name));
        // The name's row: its holder, then 2 waiting.
        if row.is_some_and(|r| r.contains(&holder) && r.split(&holder).nth(1).is_some_and(|rest| rest.contains(" 2 ")))
        {
            break screen;
        }
        assert!(Instant::now() < deadline, "baton top never showed {name} held by {holder} with 2 waiting:\n{screen}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("{screen}");
    assert!(screen.contains("baton top"), "{screen}");
    assert!(screen.lines().any(|l| l.contains("node 1")), "the group's leader is shown:\n{screen}");
    // q quits: the session (whose only command was top) ends.
    tmux.run(&["send-keys", "-t", "top", "q"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tmux.run(&["has-session", "-t", "top"]).status.success() {
        assert!(Instant::now() < deadline, "q did not end baton top:\n{}", tmux.screen());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
