//! etcd compatibility through the real `etcdctl` (Debian's `etcd-client`; `.ci/run` installs it
//! and the `etcd` server): the same cases, step by step, against a 3-node Baton serving etcd's
//! API on every node (etcdctl spreads its calls over the three, so calls reach followers and
//! are forwarded) and against a real single-member etcd, in the same test. Each step's exit
//! code, output and error are compared after normalising what must differ (cluster and member
//! ids, terms, lease ids, revisions taken relative to the store's first revision); every
//! difference is reported, and the test fails on any. Where Baton differs on purpose, the step
//! says so and docs/ETCD.md explains why.
//!
//! Without `etcdctl` or `etcd` installed the test says so and skips, unless
//! `BATON_REQUIRE_ETCD` is set (as in CI), where it fails.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{free_ports, installed, start_etcd, wait_for_line, Proc, BATON};

/// A 3-node Baton with etcd's API on every node; the etcd endpoints, comma-separated.
fn start_baton(dir: &Path) -> (Vec<Proc>, String) {
    let ports = free_ports(9);
    let peers: String = (0..3).map(|i| format!("{}=127.0.0.1:{}", i + 1, ports[3 + i])).collect::<Vec<_>>().join(",");
    let mut procs = Vec::new();
    for i in 0..3 {
        let mut child = Command::new(BATON)
            .args(["server", "--id", &(i + 1).to_string(), "--data", dir.join(format!("n{i}")).to_str().unwrap()])
            .args(["--client-addr", &format!("127.0.0.1:{}", ports[i])])
            .args(["--peer-addr", &format!("127.0.0.1:{}", ports[3 + i])])
            .args(["--peers", &peers, "--etcd-addr", &format!("127.0.0.1:{}", ports[6 + i])])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_line(&mut child, "serving clients");
        procs.push(Proc(child));
    }
    let endpoints = (6..9).map(|i| format!("127.0.0.1:{}", ports[i])).collect::<Vec<_>>().join(",");
    // Serving once every node answers a linearizable read (the keyspace has a leader).
    for ep in endpoints.split(',') {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = etcdctl_raw(ep, &["get", "nothing"], None);
            if out.0 == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "{ep} never served a read: {}", out.2);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    (procs, endpoints)
}

/// Runs etcdctl (v3 API, bounded by `timeout`): exit code, stdout, stderr.
fn etcdctl_raw(endpoints: &str, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new("timeout")
        .args(["10", "etcdctl", "--endpoints", endpoints, "--command-timeout", "5s"])
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One system under test and what the steps learnt about it.
struct Target {
    name: &'static str,
    endpoints: String,
    /// The store's revision before the first write.
    base: i64,
    /// Lease ids granted so far, in order (`{L0}`, `{L1}`, ... in steps).
    leases: Vec<i64>,
}

/// What a step printed, normalised.
#[derive(Debug, PartialEq)]
struct Seen {
    code: i32,
    out: String,
    err: String,
}

impl Target {
    /// `arg` with `{R+n}` (the base revision plus n) and `{Ln}` (lease n, in hex) filled in.
    fn fill(&self, arg: &str) -> String {
        let mut s = arg.to_string();
        while let Some(start) = s.find("{R+") {
            let end = start + s[start..].find('}').unwrap();
            let n: i64 = s[start + 3..end].parse().unwrap();
            s.replace_range(start..=end, &(self.base + n).to_string());
        }
        for (i, id) in self.leases.iter().enumerate() {
            s = s.replace(&format!("{{L{i}}}"), &format!("{id:x}"));
        }
        s
    }

    fn run(&mut self, step: &Step) -> Seen {
        let args: Vec<String> = step.args.iter().map(|a| self.fill(a)).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = etcdctl_raw(&self.endpoints, &args, step.stdin.as_deref());
        if step.args[0] == "lease" && step.args[1] == "grant" && code == 0 {
            let v: serde_json::Value = serde_json::from_str(out.trim()).expect("lease grant -w json");
            self.leases.push(v["ID"].as_i64().unwrap());
        }
        Seen { code, out: self.normalise(&out), err: error_line(&err) }
    }

    /// Output with what must differ made comparable: JSON (one document per line, as etcdctl
    /// prints watch responses) without cluster/member ids and terms, revisions relative to the
    /// base, lease ids as `L<n>`; text with lease ids as `L<n>`.
    fn normalise(&self, out: &str) -> String {
        out.lines()
            .map(|line| match serde_json::from_str::<serde_json::Value>(line) {
                Ok(mut v) if v.is_object() => {
                    self.normalise_json(&mut v, "");
                    v.to_string()
                }
                _ => {
                    let words: Vec<&str> = line.split(' ').collect();
                    let mut out = Vec::with_capacity(words.len());
                    for (i, w) in words.iter().enumerate() {
                        let after_revision = i > 0 && words[i - 1] == "revision";
                        match w.parse::<i64>() {
                            Ok(n) if after_revision => out.push(format!("R+{}", n - self.base)),
                            _ => out.push(self.normalise_word(w)),
                        }
                    }
                    out.join(" ")
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A word of text output: a lease id (etcdctl prints them in hex, padded or not) becomes
    /// `L<n>`, a number after "revision" becomes relative to the base.
    fn normalise_word(&self, word: &str) -> String {
        for (i, id) in self.leases.iter().enumerate() {
            if word == format!("{id:016x}") || word == format!("{id:x}") {
                return format!("L{i}");
            }
        }
        word.to_string()
    }

    fn normalise_json(&self, v: &mut serde_json::Value, key: &str) {
        use serde_json::Value;
        match v {
            Value::Object(map) => {
                for k in ["cluster_id", "member_id", "raft_term"] {
                    map.remove(k);
                }
                for (k, child) in map.iter_mut() {
                    self.normalise_json(child, k);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|c| self.normalise_json(c, key)),
            Value::Number(n) => {
                let Some(x) = n.as_i64() else { return };
                let relative = ["revision", "create_revision", "mod_revision", "CompactRevision", "compact_revision"];
                if relative.contains(&key) && x > 0 {
                    *v = Value::from(format!("R+{}", x - self.base));
                } else if ["ID", "lease"].contains(&key) && x != 0 {
                    let name = match self.leases.iter().position(|l| *l == x) {
                        Some(i) => format!("L{i}"),
                        None => format!("unknown lease {x}"),
                    };
                    *v = Value::from(name);
                }
            }
            _ => {}
        }
    }
}

/// The error etcdctl reports, without its retry warnings (which name random client ids).
fn error_line(err: &str) -> String {
    err.lines().filter(|l| !l.contains("\"level\":\"warn\"")).collect::<Vec<_>>().join("\n")
}

struct Step {
    args: Vec<String>,
    stdin: Option<String>,
    /// Compare the exit code only: the output differs on purpose (docs/ETCD.md says why).
    code_only: bool,
}

fn step(args: &str) -> Step {
    Step { args: args.split_whitespace().map(String::from).collect(), stdin: None, code_only: false }
}

fn with_stdin(args: &str, stdin: &str) -> Step {
    Step { stdin: Some(stdin.to_string()), ..step(args) }
}

fn code_only(args: &str) -> Step {
    Step { code_only: true, ..step(args) }
}

/// The cases, in order (later steps depend on earlier ones). A watch runs for two seconds and is
/// stopped by `timeout` (exit 124 on both sides), so it shows what it replays.
fn steps() -> Vec<Step> {
    let big = "v".repeat(1_600_000);
    vec![
        // put / get with every flag
        step("put k1 v1 -w json"),
        step("put k2 v2 -w json"),
        step("put k3 v3"),
        step("put k1 v11 --prev-kv -w json"),
        step("get k1 -w json"),
        step("get k --prefix -w json"),
        step("get k1 --rev={R+1} -w json"),
        step("get k1 --from-key --keys-only"),
        step("get k --prefix --limit=1 -w json"),
        step("get k --prefix --sort-by=MODIFY --order=DESCEND -w json"),
        step("get k --prefix --sort-by=VALUE --order=ASCEND --limit=2 -w json"),
        step("get k --prefix --count-only -w json"),
        step("get k1 --print-value-only"),
        step("get k --prefix --keys-only"),
        step("get k --prefix --min-mod-revision={R+2} -w json"),
        step("get k --prefix --max-create-revision={R+1} -w json"),
        step("get k1 --consistency=s -w json"),
        step("get k1 k3 -w json"),
        step("put k1 --ignore-value -w json"),
        step("put nokey --ignore-value"),
        step("put k1 v12 --ignore-lease -w json"),
        with_stdin("put big", &big),
        step("get k1 --rev=1000"),
        // delete
        step("del k2 --prev-kv -w json"),
        step("del nothing -w json"),
        // transactions from standard input (etcdctl's interactive format)
        with_stdin(
            "txn -w json",
            "value(\"k1\") = \"v12\"\nversion(\"k3\") > \"0\"\n\nput k4 v4\nget k1\n\nput k5 v5\n\n",
        ),
        with_stdin("txn", "mod(\"k1\") < \"2\"\n\nput k4 x\n\ndel k3 --prev-kv\nget k --prefix\n\n"),
        with_stdin("txn", "\nput dup a\nput dup b\n\n\n"),
        with_stdin("txn -w json", "create(\"k4\") = \"0\"\n\n\nget k4\n\n"),
        // watch: replay from a revision, prefix, prev_kv, a single key
        step("watch --prefix k --rev={R+1} -w json"),
        step("watch k1 --rev={R+2} --prev-kv"),
        step("watch --prefix k --rev={R+1000}"),
        // leases
        step("lease grant 60 -w json"),
        step("put lk1 a --lease={L0}"),
        step("put lk2 b --lease={L0} -w json"),
        code_only("lease timetolive {L0} --keys"),
        step("lease keep-alive --once {L0}"),
        step("lease list"),
        step("lease grant 3 -w json"),
        step("put lk3 c --lease={L1}"),
        step("lease revoke {L0}"),
        step("get lk --prefix -w json"),
        step("lease timetolive {L0}"),
        step("lease revoke {L0}"),
        step("put x y --lease=123abc"),
        // compaction
        step("compaction {R+3}"),
        step("get k1 --rev={R+2}"),
        step("get k1 --rev={R+3} -w json"),
        step("watch k1 --rev={R+1}"),
        step("compaction {R+2}"),
        step("del k --prefix -w json"),
        step("get --from-key \"\" --keys-only"),
    ]
}

/// etcd's Auth service through etcdctl: users, roles, per-key permissions and what each user
/// may then do, the refusals word for word (etcd's clients match on them), and turning it off.
fn auth_steps() -> Vec<Step> {
    let root = "--user=root:rootpw";
    let alice = "--user=alice:alicepw";
    let bob = "--user=bob:bobpw";
    vec![
        step("user add root --new-user-password=rootpw"),
        step("role add reader"),
        step("role grant-permission reader read app/ --prefix"),
        step("role add writer"),
        step("role grant-permission writer readwrite app/ --prefix"),
        step("role grant-permission writer read conf/x"),
        step("role add writer"),
        step("user add alice --new-user-password=alicepw"),
        step("user grant-role alice reader"),
        step("user add bob --new-user-password=bobpw"),
        step("user grant-role bob writer"),
        step("user grant-role bob nosuchrole"),
        step("user add alice --new-user-password=again"),
        // etcdctl makes the root role and gives it to root first (Baton's always exists).
        step("auth enable"),
        step("get app/x"),
        step(&format!("put app/x 1 {bob}")),
        step(&format!("get app/x {alice}")),
        step(&format!("get app --prefix {alice}")),
        step(&format!("get app/ --prefix {alice}")),
        step(&format!("put app/x 2 {alice}")),
        step(&format!("get conf/x {bob}")),
        step(&format!("put conf/x 1 {bob}")),
        step(&format!("del app/x {alice}")),
        step(&format!("get other {alice}")),
        step(&format!("watch other {alice}")),
        with_stdin(&format!("txn {bob}"), "value(\"app/x\") = \"1\"\n\nput app/y 2\n\nput other 3\n\n"),
        with_stdin(&format!("txn {bob}"), "value(\"app/x\") = \"1\"\n\nput app/y 2\n\n\n"),
        step("get app/x --user=alice:wrong"),
        step("get app/x --user=nobody:pw"),
        step(&format!("user list {root}")),
        step(&format!("role list {root}")),
        step(&format!("user get alice {root}")),
        step(&format!("user get nobody {root}")),
        step(&format!("role get writer {root}")),
        step(&format!("role get nosuchrole {root}")),
        step(&format!("role list {bob}")),
        step(&format!("user add carol --new-user-password=x {bob}")),
        step(&format!("role revoke-permission writer app/ --prefix {root}")),
        step(&format!("role revoke-permission writer app/ --prefix {root}")),
        step(&format!("put app/y 1 {bob}")),
        step(&format!("user revoke-role alice reader {root}")),
        step(&format!("get app/x {alice}")),
        step(&format!("user delete bob {root}")),
        step(&format!("get app/x {bob}")),
        step(&format!("role delete reader {root}")),
        step(&format!("user delete root {root}")),
        step(&format!("auth disable {root}")),
        step("get app/x"),
        step("user list"),
    ]
}

/// Runs `steps` on a fresh etcd and a fresh 3-node Baton (each under `dir`) and fails on any
/// difference in what etcdctl printed.
fn compare_with_etcd(dir: &Path, steps: &[Step]) {
    let Some((_etcd, etcd_ep)) = start_etcd(dir) else { return };
    let (_baton, baton_eps) = start_baton(dir);
    let mut targets: Vec<Target> = [("etcd", etcd_ep), ("baton", baton_eps)]
        .into_iter()
        .map(|(name, endpoints)| {
            let (code, out, err) = etcdctl_raw(&endpoints, &["get", "nothing", "-w", "json"], None);
            assert_eq!(code, 0, "{name}: {err}");
            let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
            Target { name, endpoints, base: v["header"]["revision"].as_i64().unwrap(), leases: Vec::new() }
        })
        .collect();
    let mut differences = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let seen: BTreeMap<&str, Seen> = targets.iter_mut().map(|t| (t.name, t.run(s))).collect();
        let (etcd, baton) = (&seen["etcd"], &seen["baton"]);
        let same = if s.code_only { etcd.code == baton.code } else { etcd == baton };
        if !same {
            differences.push(format!(
                "step {i}: etcdctl {}\n  etcd:  {etcd:?}\n  baton: {baton:?}",
                s.args.join(" ").chars().take(120).collect::<String>()
            ));
        }
    }
    assert!(differences.is_empty(), "{} differences:\n{}", differences.len(), differences.join("\n"));
}

#[test]
fn etcdctl_auth_works_on_baton_as_on_etcd() {
    if !installed("etcdctl") || !installed("etcd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    compare_with_etcd(dir.path(), &auth_steps());
}

#[test]
fn etcdctl_sees_baton_as_it_sees_etcd() {
    if !installed("etcdctl") || !installed("etcd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    compare_with_etcd(dir.path(), &steps());
}

#[test]
fn baton_answers_etcd_status_and_member_list_for_its_three_nodes() {
    if !installed("etcdctl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_baton, eps) = start_baton(dir.path());
    let (code, out, err) = etcdctl_raw(&eps, &["member", "list", "-w", "json"], None);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let members = v["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{out}");
    let mut client_urls: Vec<String> = members
        .iter()
        .map(|m| m["clientURLs"][0].as_str().unwrap().trim_start_matches("http://").to_string())
        .collect();
    client_urls.sort();
    let mut expected: Vec<String> = eps.split(',').map(String::from).collect();
    expected.sort();
    assert_eq!(client_urls, expected, "MemberList names every node's etcd address");

    let (code, out, err) = etcdctl_raw(&eps, &["endpoint", "status", "-w", "json"], None);
    assert_eq!(code, 0, "{err}");
    let statuses: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let statuses = statuses.as_array().unwrap();
    assert_eq!(statuses.len(), 3);
    let leaders: Vec<u64> = statuses.iter().map(|s| s["Status"]["leader"].as_u64().unwrap()).collect();
    assert!(leaders.iter().all(|l| *l == leaders[0] && *l != 0), "one leader, known to all: {leaders:?}");
    for s in statuses {
        assert_eq!(s["Status"]["version"], "3.5.0");
        assert!(s["Status"]["raftIndex"].as_u64().unwrap() > 0);
    }
    // Membership changes go through `baton cluster`: refused with a message that says so.
    let (code, _, err) = etcdctl_raw(&eps, &["member", "add", "x", "--peer-urls=http://127.0.0.1:1"], None);
    assert_ne!(code, 0);
    assert!(err.contains("baton cluster"), "{err}");
}

/// Runs `etcdctl lock` three times at once on `endpoints`, each holding the lock while a shell
/// appends "start"/"end" to `log`; returns the log's lines.
fn three_lockers(endpoints: &str, log: &Path) -> Vec<String> {
    let script = format!("echo start >> {0}; sleep 0.3; echo end >> {0}", log.display());
    let lockers: Vec<Proc> = (0..3)
        .map(|_| {
            Proc(
                Command::new("timeout")
                    .args(["30", "etcdctl", "--endpoints", endpoints, "lock", "job", "--", "sh", "-c", &script])
                    .env("ETCDCTL_API", "3")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    for mut l in lockers {
        let status = l.0.wait().unwrap();
        assert!(status.success(), "etcdctl lock failed on {endpoints}: {status}");
    }
    std::fs::read_to_string(log).unwrap().lines().map(String::from).collect()
}

/// The current leader's value of election `name` (the oldest candidate key, which is what
/// `etcdctl elect -l` observes), polled until it is `want`.
fn wait_leader(endpoints: &str, name: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let prefix = format!("{name}/");
    loop {
        let args =
            ["get", &prefix, "--prefix", "--sort-by=CREATE", "--order=ASCEND", "--limit=1", "--print-value-only"];
        let (code, out, _) = etcdctl_raw(endpoints, &args, None);
        let value = out.lines().next().unwrap_or("").to_string();
        if code == 0 && value == want {
            return;
        }
        assert!(Instant::now() < deadline, "{endpoints}: leader of {name} is {value:?}, never {want:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn etcdctl_lock_and_elect_behave_on_baton_as_on_etcd() {
    if !installed("etcdctl") || !installed("etcd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some((_etcd, etcd_ep)) = start_etcd(dir.path()) else { return };
    let (_baton, baton_eps) = start_baton(dir.path());
    for (name, eps) in [("etcd", &etcd_ep), ("baton", &baton_eps)] {
        // Mutual exclusion: each holder's start is followed by its own end.
        let log = dir.path().join(format!("{name}-lock.log"));
        let lines = three_lockers(eps, &log);
        assert_eq!(lines.len(), 6, "{name}: {lines:?}");
        for pair in lines.chunks(2) {
            assert_eq!(pair, ["start", "end"], "{name}: two holders at once: {lines:?}");
        }
        // An election: the first candidate leads; the second takes over when the first stops.
        let candidate = |value: &str| {
            Proc(
                Command::new("etcdctl")
                    .args(["--endpoints", eps, "elect", "office", value])
                    .env("ETCDCTL_API", "3")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            )
        };
        let first = candidate("alice");
        wait_leader(eps, "office", "alice");
        let _second = candidate("bob");
        // Once bob's key is queued behind alice's, she still leads.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, out, _) = etcdctl_raw(eps, &["get", "office/", "--prefix", "--keys-only", "-w", "json"], None);
            let count = serde_json::from_str::<serde_json::Value>(out.trim()).ok().and_then(|v| v["count"].as_i64());
            if count == Some(2) {
                break;
            }
            assert!(Instant::now() < deadline, "{eps}: bob never queued ({count:?} candidates)");
            std::thread::sleep(Duration::from_millis(100));
        }
        wait_leader(eps, "office", "alice");
        // Stopped: etcdctl resigns on SIGTERM (killed, her 60 s lease would have to expire).
        let mut first = first;
        common::signal(first.0.id(), libc::SIGTERM);
        common::wait_exit(&mut first.0, Duration::from_secs(10));
        wait_leader(eps, "office", "bob");
    }
}
