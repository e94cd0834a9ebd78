//! The HTTP endpoint of a 3-node cluster in this process: liveness, readiness, and metrics read
//! with a real Prometheus text parser (`prometheus-parse`), checked against the cluster's state.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::TestCluster;

/// GET `path` from `addr`: (status code, body).
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

/// The metrics of `addr`, parsed: (name, group label) -> value.
fn scrape(addr: &str) -> BTreeMap<(String, Option<u64>), f64> {
    let (code, body) = get(addr, "/metrics");
    assert_eq!(code, 200, "{body}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let parsed = prometheus_parse::Scrape::parse(lines).unwrap();
    parsed
        .samples
        .into_iter()
        .map(|s| {
            let value = match s.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => v,
                other => panic!("unexpected sample {other:?}"),
            };
            let group = s.labels.get("group").map(|g| g.parse().unwrap());
            ((s.metric, group), value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_readiness_and_metrics_of_a_three_node_cluster() {
    let c = TestCluster::start_sharded(3, 20_000, false, 2).await;
    c.leader().await;
    let addrs: Vec<String> = c.http_addrs.values().cloned().collect();
    for a in &addrs {
        assert_eq!(get(a, "/healthz"), (200, "ok\n".to_string()));
    }
    // Ready once every group has a leader every node knows.
    let deadline = Instant::now() + Duration::from_secs(20);
    for a in &addrs {
        loop {
            let (code, body) = get(a, "/readyz");
            if code == 200 {
                break;
            }
            assert_eq!(code, 503);
            assert!(Instant::now() < deadline, "{a} never ready: {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Some traffic, so that the state-machine gauges move.
    let client = c.client().await;
    let session = client.session(Duration::from_secs(10)).await.unwrap();
    let _held = session.lock("metrics-lock", None).await.unwrap();
    let scrapes: Vec<BTreeMap<(String, Option<u64>), f64>> = addrs.iter().map(|a| scrape(a)).collect();
    let groups: Vec<u64> = scrapes[0].keys().filter(|(m, _)| m == "baton_raft_term").filter_map(|(_, g)| *g).collect();
    assert!(groups.len() >= 4, "meta, 2 data groups and the etcd keyspace's: {groups:?}");
    for g in &groups {
        let leaders: f64 = scrapes.iter().map(|s| s[&("baton_raft_is_leader".to_string(), Some(*g))]).sum();
        assert_eq!(leaders, 1.0, "group {g} has one leader among the nodes");
        let named: Vec<f64> = scrapes.iter().map(|s| s[&("baton_raft_leader".to_string(), Some(*g))]).collect();
        assert!(named.iter().all(|l| *l == named[0] && *l > 0.0), "group {g}: {named:?}");
        for s in &scrapes {
            assert!(s[&("baton_raft_term".to_string(), Some(*g))] >= 1.0);
            assert!(
                s[&("baton_raft_applied_index".to_string(), Some(*g))]
                    <= s[&("baton_raft_commit_index".to_string(), Some(*g))]
            );
        }
    }
    let locks: f64 = groups
        .iter()
        .map(|g| {
            let leader = scrapes.iter().find(|s| s[&("baton_raft_is_leader".to_string(), Some(*g))] == 1.0).unwrap();
            leader[&("baton_locks".to_string(), Some(*g))]
        })
        .sum();
    assert_eq!(locks, 1.0, "the one held lock is counted once, by its group's leader");
    for (id, s) in c.http_addrs.keys().zip(&scrapes) {
        assert_eq!(s[&("baton_node_id".to_string(), None)], *id as f64);
        assert!(s[&("baton_process_resident_memory_bytes".to_string(), None)] > 1e6);
    }
}

#[test]
fn not_ready_says_why() {
    use baton_node::{GroupStatus, Role};
    let group = |id, leader, commit, applied| GroupStatus {
        id,
        leader,
        term: 1,
        commit,
        applied,
        role: Role::Follower,
        sessions: 0,
        locks: 0,
        last_token: 0,
        slots: Vec::new(),
        replicas: vec![1, 2, 3],
        snapshot_bytes_in_memory: 0,
        asleep: false,
        etcd_bytes: 0,
        etcd_revision: 0,
    };
    assert!(baton_server::http::not_ready(&[group(1, Some(2), 10, 10)]).is_empty());
    let reasons = baton_server::http::not_ready(&[group(1, None, 10, 10), group(2, Some(1), 5_000, 10)]);
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].contains("group 1 has no leader"));
    assert!(reasons[1].contains("group 2 has applied 10 of 5000"));
    assert_eq!(baton_server::http::not_ready(&[]).len(), 1);
}
