//! Users, roles and permissions through the real CLI: set up with `baton user`, `baton role`
//! and `baton auth`, then every client verb refused without credentials, a user's verbs
//! allowed on its prefix and refused elsewhere, with messages that say which permission.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{dev_in, BATON};

/// Runs `baton ARGS` (at most 30 s): (exit code, stderr).
fn baton(args: &[&str]) -> (i32, String) {
    let mut child = Command::new(BATON).args(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (status.code().unwrap_or(-1), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("baton {args:?} did not end within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_verb_needs_credentials_and_a_role_that_allows_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dev, addr) = dev_in(tmp.path());
    let eps = ["--endpoints", addr.as_str()];
    // The endpoints go before a command's `--` (after it they would be the command's).
    let run = |pre: &[&str], args: &[&str]| {
        let split = args.iter().position(|a| *a == "--").unwrap_or(args.len());
        baton(&[pre, &args[..split], &eps[..], &args[split..]].concat())
    };
    for setup in [
        &["user", "add", "root", "--new-password", "rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "jobs"],
        &["role", "grant", "jobs", "lock", "jobs/"],
        &["user", "add", "alice", "--new-password", "alicepw"],
        &["user", "grant-role", "alice", "jobs"],
        &["auth", "enable"],
    ] {
        let (code, err) = run(&[], setup);
        assert_eq!(code, 0, "baton {setup:?}: {err}");
    }

    // Without credentials: every verb that talks to the cluster is refused, saying why (64).
    let verbs: &[&[&str]] = &[
        &["lock", "jobs/a", "--", "true"],
        &["rwlock", "--read", "jobs/a", "--", "true"],
        &["sem", "--capacity", "2", "jobs/s", "--", "true"],
        &["elect", "jobs/e", "v"],
        &["barrier", "--parties", "1", "jobs/b"],
        &["latch", "jobs/l", "set", "1"],
        &["counter", "jobs/c", "get"],
        &["register", "jobs/r", "get"],
        &["watch", "jobs/w"],
        &["describe", "jobs/a"],
        &["status"],
        &["hot"],
        &["history", "jobs/a"],
        &["cluster", "slots"],
        &["cluster", "move-slots", "0", "2"],
        &["cluster", "balance"],
        &["cluster", "add-node", "--id", "9", "--peer-addr", "127.0.0.1:1", "--client-addr", "127.0.0.1:2"],
        &["cluster", "remove-node", "9"],
        &["user", "add", "mallory", "--new-password", "x"],
        &["user", "remove", "alice"],
        &["user", "passwd", "alice", "--new-password", "x"],
        &["user", "grant-role", "alice", "root"],
        &["user", "revoke-role", "alice", "jobs"],
        &["role", "add", "x"],
        &["role", "remove", "jobs"],
        &["role", "grant", "jobs", "admin", ""],
        &["role", "revoke", "jobs", "jobs/"],
        &["auth", "disable"],
        &["auth", "status"],
    ];
    for verb in verbs {
        let (code, err) = run(&[], verb);
        assert_ne!(code, 0, "baton {verb:?} without credentials succeeded");
        assert!(err.contains("authentication is on: give a token"), "baton {verb:?}: {err}");
    }
    // A wrong password: refused when connecting.
    let (code, err) = run(&["--user", "alice:wrong"], &["status"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("wrong user name or password"), "{err}");

    // alice: her prefix yes, elsewhere no, administration no.
    let alice = ["--user", "alice:alicepw"];
    assert_eq!(run(&alice, &["lock", "jobs/a", "--", "true"]).0, 0);
    assert_eq!(run(&alice, &["status"]).0, 0);
    let (code, err) = run(&alice, &["lock", "other/a", "--", "true"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("lacks the lock permission on name \"other/a\""), "{err}");
    let (code, err) = run(&alice, &["counter", "jobs/c", "add", "1"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("lacks the write permission"), "{err}");
    for admin in
        [&["auth", "status"][..], &["user", "add", "eve", "--new-password", "x"], &["cluster", "move-slots", "0", "2"]]
    {
        let (code, err) = run(&alice, admin);
        assert_ne!(code, 0, "alice ran {admin:?}");
        assert!(err.contains("lacks the admin permission"), "{admin:?}: {err}");
    }
    // root: everything; BATON_USER and BATON_PASSWORD work as the flags do.
    let (code, err) = baton(&[&["auth", "status"][..], &eps[..]].concat());
    assert_ne!(code, 0, "{err}");
    let out = Command::new(BATON)
        .args([&["auth", "status"][..], &eps[..]].concat())
        .env("BATON_USER", "root")
        .env("BATON_PASSWORD", "rootpw")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("authentication on"), "{text}");
    assert!(text.contains("role jobs") && text.contains("lock on prefix \"jobs/\""), "{text}");

    // Quotas: set by an administrator only, shown by `auth status`; within hers alice goes on
    // (what past it does: `crates/baton-server/tests/auth.rs`).
    let root = ["--user", "root:rootpw"];
    let quota = ["user", "quota", "alice", "--sessions", "1", "--names", "5", "--requests-per-second", "100"];
    let (code, err) = run(&alice, &quota);
    assert!(code != 0 && err.contains("lacks the admin permission"), "{err}");
    assert_eq!(run(&root, &quota).0, 0);
    let out = Command::new(BATON).args([&root[..], &["auth", "status"], &eps[..]].concat()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "user alice (password): roles jobs; quota: 100 requests/s per node, 1 sessions and 5 names per group"
        ),
        "{text}"
    );
    assert!(text.contains("default quota: no limit requests/s per node"), "{text}");
    let (code, err) = run(&alice, &["lock", "jobs/a", "--", "true"]);
    assert_eq!(code, 0, "{err}");
}
