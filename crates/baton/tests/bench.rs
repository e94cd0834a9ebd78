//! `baton bench` end to end: every workload against a real `baton dev` process, and (where an
//! `etcd` binary is installed, always in CI: `.ci/run` installs it) the same workloads against a
//! real single-member etcd, checking the JSON each run prints. Every process started here is
//! stopped here, by its PID.

use std::path::Path;
use std::process::{Command, Stdio};

mod common;

use common::{free_ports, start_etcd, wait_for_line, Proc, BATON};

fn start_dev(dir: &Path) -> (Proc, String) {
    let addr = format!("127.0.0.1:{}", free_ports(1)[0]);
    let mut child = Command::new(BATON)
        .args(["dev", "--data", dir.join("baton").to_str().unwrap(), "--client-addr", &addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_line(&mut child, "serving clients");
    (Proc(child), addr)
}

fn bench(target: &str, endpoint: &str, pid: u32, workload: &str, extra: &[&str]) -> serde_json::Value {
    let duration = if workload == "keepalive-scale" { "4" } else { "1" };
    let out = Command::new(BATON)
        .args(["bench", "--json", "--target", target, "--endpoints", endpoint, "--workload", workload])
        .args(["--clients", "3", "--duration", duration, "--pids", &pid.to_string()])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{target} {workload}: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    for key in ["target", "workload", "clients", "ops_per_s", "p50_ms", "p99_ms", "errors"] {
        assert!(v.get(key).is_some(), "{target} {workload}: no {key} in {v}");
    }
    assert_eq!(v["target"], target);
    assert_eq!(v["workload"], workload);
    assert_eq!(v["errors"], 0, "{v}");
    if matches!(workload, "contended" | "hot-set" | "election") {
        assert_eq!(v["violations"], 0, "{v}");
    }
    v
}

/// Runs every workload against one target and checks what each one must show.
fn every_workload(target: &str, endpoint: &str, pid: u32) -> Vec<serde_json::Value> {
    let mut lines = Vec::new();
    for workload in
        ["uncontended", "uncontended-session", "contended", "hot-set", "session-churn", "election", "mixed", "counter"]
    {
        let v = bench(target, endpoint, pid, workload, &[]);
        assert!(v["ops_per_s"].as_f64().unwrap() > 0.0, "{v}");
        lines.push(v);
    }
    let v = bench(target, endpoint, pid, "contended", &[]);
    assert!(v["handoffs_per_s"].as_f64().unwrap() > 0.0, "{v}");
    // Three clients over one shared connection, each with its own session.
    let v = bench(target, endpoint, pid, "contended", &["--connections", "1"]);
    assert_eq!(v["connections"], 1, "{v}");
    assert!(v["handoffs_per_s"].as_f64().unwrap() > 0.0, "{v}");
    // keepalive-scale waits TTL/3 before measuring; every session is renewed in the window.
    let v = bench(target, endpoint, pid, "keepalive-scale", &["--sessions", "300"]);
    assert_eq!(v["sessions"], 300);
    assert!(v["ops_per_s"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v.get("cpu_us_per_renewal").is_some(), "{v}");
    lines.push(v);
    let v = bench(target, endpoint, pid, "hold", &["--sessions", "50", "--locks", "2000"]);
    assert_eq!(v["locks"], 2000, "{v}");
    assert!(v["rss_after_mib"].as_f64().unwrap() > 1.0, "{v}");
    lines.push(v);
    lines
}

#[test]
fn every_workload_runs_against_baton_and_the_report_renders() {
    let dir = tempfile::tempdir().unwrap();
    let (dev, addr) = start_dev(dir.path());
    let lines = every_workload("baton", &addr, dev.0.id());
    // The coordination-free counter, with its convergence probe.
    let v = bench("baton", &addr, dev.0.id(), "crdt-counter", &[]);
    assert!(v["ops_per_s"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["convergence_samples"].as_u64().unwrap() > 0, "{v}");
    assert!(v.get("convergence_p99_ms").is_some(), "{v}");
    // The tool refuses what it cannot run, with the reason.
    let out = Command::new(BATON).args(["bench", "--endpoints", &addr, "--workload", "hold"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pids"));
    // bench-report reads the JSON lines back (one target only: no ratios, but every row).
    let jsonl = dir.path().join("runs.jsonl");
    let text: Vec<String> = lines.iter().map(|v| v.to_string()).collect();
    std::fs::write(&jsonl, text.join("\n")).unwrap();
    let out = Command::new(BATON).args(["bench-report", jsonl.to_str().unwrap()]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(table.contains("| hot-set | 3 |") && table.contains("| hold | 3 |"), "{table}");
}

#[test]
fn every_workload_runs_against_a_real_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let Some((etcd, addr)) = start_etcd(dir.path()) else { return };
    let out = Command::new(BATON)
        .args(["bench", "--target", "etcd", "--endpoints", &addr, "--workload", "crdt-counter"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("etcd has none"), "{}", String::from_utf8_lossy(&out.stderr));
    // Every run is checked in bench(): documented keys, no errors, and for etcd's lock and
    // election paths no exclusion violations and growing revisions.
    every_workload("etcd", &addr, etcd.0.id());
}
