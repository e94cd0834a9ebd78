//! The reproductions of issue 9 run as a user would run them: the real `baton` binary, `baton
//! dev` in a temp folder on 127.0.0.1, every process stopped here by its PID.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{dev_in, free_ports, read_pid, signal, start_dev, wait_exit, wait_gone, Proc, BATON};

/// `baton dev` on a free port with its data in a new temp folder.
fn dev_in_tempdir() -> (tempfile::TempDir, String, Proc) {
    let dir = tempfile::tempdir().unwrap();
    let (dev, addr) = dev_in(dir.path());
    (dir, addr, dev)
}

fn status(addr: &str) -> serde_json::Value {
    let out = Command::new(BATON).args(["status", "--json", "--endpoints", addr]).output().unwrap();
    assert!(out.status.success(), "status: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn baton(args: &[&str]) -> std::process::Output {
    Command::new(BATON).args(args).output().unwrap()
}

/// Issue 9, reproduction 1: with A holding `x` and B queued for it, `baton latch x set 1; baton
/// latch x down` told B it held `x`, made `x` look free and let a third command take it too.
/// Now both latch commands are refused (exit 64: the name is in use as a lock), and B gets `x`
/// only when A is done.
#[test]
fn a_latch_cannot_touch_a_held_lock() {
    let (dir, addr, _dev) = dev_in_tempdir();
    let log = dir.path().join("log");
    let holder = |who: &str, secs: &str| {
        let script =
            format!("echo \"{who} start $BATON_FENCE\" >> {0}; sleep {secs}; echo \"{who} end\" >> {0}", log.display());
        Command::new(BATON).args(["lock", "--endpoints", &addr, "x", "--", "sh", "-c", &script]).spawn().unwrap()
    };
    let mut a = Proc(holder("A", "2"));
    // A holds x before B asks (its line is in the log), B queues behind it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("A start") {
        assert!(Instant::now() < deadline, "A never got the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut b = Proc(holder("B", "0"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let d = baton(&["describe", "--json", "--endpoints", &addr, "x"]);
        let v: serde_json::Value = serde_json::from_slice(&d.stdout).unwrap_or_default();
        if v["waiters"].as_array().is_some_and(|w| !w.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "B never queued: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
    for args in [&["x", "set", "1"][..], &["x", "down"][..]] {
        let out = baton(&[&["latch", "--endpoints", &addr][..], args].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?} was not refused: {stderr}");
        assert!(stderr.contains("in use as a lock"), "{args:?}: {stderr}");
    }
    // A third command cannot take x while A (then B) holds it.
    let third = baton(&["lock", "--endpoints", &addr, "--wait", "0.2", "x", "--", "true"]);
    assert_eq!(third.status.code(), Some(75), "a third holder was granted x");
    assert_eq!(wait_exit(&mut a.0, Duration::from_secs(30)), Some(0));
    assert_eq!(wait_exit(&mut b.0, Duration::from_secs(30)), Some(0));
    let lines: Vec<String> = std::fs::read_to_string(&log).unwrap().lines().map(String::from).collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines[0].starts_with("A start") && lines[1] == "A end", "{lines:?}");
    assert!(lines[2].starts_with("B start") && lines[3] == "B end", "{lines:?}");
}

/// Issue 9, reproduction 2: `baton dev` panicked at its first restart after a snapshot (the
/// stored commit index lagged behind it). Run enough lock cycles to snapshot, stop it with
/// SIGTERM, start it again (twice, the second time after kill -9): it serves, with its tokens.
#[test]
fn dev_restarts_after_its_first_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let addr = format!("127.0.0.1:{}", free_ports(1)[0]);
    let mut dev = start_dev(&data, &addr);
    // Snapshots are taken every 20,000 applied entries; each lock cycle is two.
    // The group of the name locked after the restart: its tokens must go on from its counter.
    let group_of = |s: &serde_json::Value, name: &str| -> serde_json::Value {
        let slot = baton_core::slot_of(name) as u64;
        let groups = s["groups"].as_array().unwrap();
        groups
            .iter()
            .find(|g| {
                g["slots"].as_array().unwrap().iter().any(|r| (r[0].as_u64()..=r[1].as_u64()).contains(&Some(slot)))
            })
            .unwrap()
            .clone()
    };
    let most_applied = |s: &serde_json::Value| {
        s["groups"].as_array().unwrap().iter().map(|g| g["applied_index"].as_u64().unwrap()).max().unwrap()
    };
    let mut rounds = 0;
    while most_applied(&status(&addr)) < 25_000 {
        rounds += 1;
        assert!(rounds <= 30, "the bench never reached a snapshot");
        let out =
            baton(&["bench", "--endpoints", &addr, "--workload", "uncontended", "--clients", "32", "--duration", "3"]);
        assert!(out.status.success(), "bench: {}", String::from_utf8_lossy(&out.stderr));
    }
    let snapshots = std::fs::read_dir(data.join("snap")).unwrap().count();
    assert!(snapshots > 0, "no snapshot was written");
    let before = group_of(&status(&addr), "after-restart")["last_token"].as_u64().unwrap();
    // SIGTERM: a clean stop.
    // SAFETY: kill(2) on the process this test started and has not reaped.
    unsafe { libc::kill(dev.0.id() as libc::pid_t, libc::SIGTERM) };
    wait_exit(&mut dev.0, Duration::from_secs(30));
    for crash in [false, true] {
        let mut dev = start_dev(&data, &addr);
        let out = baton(&["lock", "--endpoints", &addr, "after-restart", "--", "sh", "-c", "echo $BATON_FENCE"]);
        assert!(out.status.success(), "lock after restart: {}", String::from_utf8_lossy(&out.stderr));
        let token: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        assert!(token > before, "token {token} after the restart is not above {before}");
        let s = status(&addr);
        assert_eq!(s["unclean_start"], serde_json::json!(crash), "{s}");
        if crash {
            drop(dev);
        } else {
            dev.0.kill().unwrap();
            wait_exit(&mut dev.0, Duration::from_secs(30));
        }
    }
}

/// `baton status | head -1` panicked ("failed printing to stdout: Broken pipe") when the reader
/// went away before the output was written. It exits quietly now, as a filter does.
#[test]
fn output_to_a_closed_pipe_is_not_a_panic() {
    let (_dir, addr, _dev) = dev_in_tempdir();
    let mut child = Command::new(BATON)
        .args(["status", "--endpoints", &addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the command has written anything.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

/// Found by review: at the lease's deadline `baton lock` killed CMD but not what CMD had
/// started, which went on working after the lock had passed to someone else. CMD now runs in
/// its own process group, and the whole group is killed.
#[test]
fn the_lease_deadline_kills_what_the_command_started() {
    let (dir, addr, dev) = dev_in_tempdir();
    let pidfile = dir.path().join("grandchild.pid");
    let script = format!("sh -c 'echo $$ > {}; exec sleep 60' & wait", pidfile.display());
    let mut lock = Command::new(BATON)
        .args(["lock", "--endpoints", &addr, "--ttl", "2", "job", "--", "sh", "-c", &script])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let grandchild = read_pid(&pidfile);
    signal(dev.0.id(), libc::SIGSTOP);
    let code = wait_exit(&mut lock, Duration::from_secs(20));
    signal(dev.0.id(), libc::SIGCONT);
    assert_eq!(code, Some(76));
    assert!(wait_gone(grandchild), "a process the command started outlived the lease");
}

/// Found by review: SIGTERM killed `baton lock` and left CMD running with nobody renewing the
/// lease. The signal now goes to CMD, the lease is kept until CMD exits, then the lock is
/// released and `baton` exits with CMD's code.
#[test]
fn a_signal_to_baton_lock_goes_to_the_command() {
    let (dir, addr, _dev) = dev_in_tempdir();
    let pidfile = dir.path().join("cmd.pid");
    let script = format!("trap 'exit 3' TERM; echo $$ > {}; while true; do sleep 0.1; done", pidfile.display());
    let mut lock =
        Command::new(BATON).args(["lock", "--endpoints", &addr, "job", "--", "sh", "-c", &script]).spawn().unwrap();
    let cmd = read_pid(&pidfile);
    signal(lock.id(), libc::SIGTERM);
    assert_eq!(wait_exit(&mut lock, Duration::from_secs(20)), Some(3), "baton did not pass on CMD's code");
    assert!(wait_gone(cmd), "the command outlived baton");
    // The lock was released: another command gets it at once.
    let next = baton(&["lock", "--endpoints", &addr, "--wait", "5", "job", "--", "true"]);
    assert_eq!(next.status.code(), Some(0), "{}", String::from_utf8_lossy(&next.stderr));
}

/// Found by review: `--wait inf`, `--lock-delay nan`, `latch --wait nan` and the like panicked
/// (exit 101) when made into a `Duration`. They are refused as bad usage (exit 64), as every
/// bad argument is now (clap's own exit code was 2).
#[test]
fn bad_durations_are_refused_not_a_panic() {
    for args in [
        &["lock", "--wait", "inf", "x", "--", "true"][..],
        &["lock", "--wait", "1e300", "x", "--", "true"][..],
        &["lock", "--lock-delay", "nan", "x", "--", "true"][..],
        &["latch", "--wait", "nan", "x", "wait"][..],
        &["barrier", "--parties", "2", "--wait", "-1", "x"][..],
        &["bench", "--duration", "nan"][..],
        &["lock", "--no-such-flag"][..],
    ] {
        let out = baton(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// With CMD in its own process group, a CMD that read the terminal was stopped (SIGTTIN): on a
/// terminal where `baton lock` is in the foreground, CMD's group now takes the foreground, as a
/// shell gives it to a job. Run under `script`, which gives it a terminal.
#[test]
fn a_command_under_baton_lock_can_read_the_terminal() {
    let (_dir, addr, _dev) = dev_in_tempdir();
    let inner = format!("{BATON} lock --endpoints {addr} tty -- sh -c 'read line; echo got:$line; exit 5'");
    let mut script = Proc(
        Command::new("script")
            .args(["-qec", &inner, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("script(1) from util-linux"),
    );
    use std::io::Write as _;
    script.0.stdin.as_mut().unwrap().write_all(b"hello-tty\n").unwrap();
    let code = wait_exit(&mut script.0, Duration::from_secs(20));
    let mut out = String::new();
    std::io::Read::read_to_string(script.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(out.contains("got:hello-tty"), "{out}");
    assert_eq!(code, Some(5), "{out}");
}
