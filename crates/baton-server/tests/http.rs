//! The HTTP endpoint of a 3-node cluster in this process: liveness, readiness, and metrics read
//! with a real Prometheus text parser (`prometheus-parse`), checked against the cluster's state.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{http_get as get, TestCluster};

/// The metrics of `addr` with no label but `group`: (name, group label) -> value.
fn scrape(addr: &str) -> BTreeMap<(String, Option<u64>), f64> {
    samples(addr)
        .into_iter()
        .filter(|s| s.labels.keys().all(|k| k == "group"))
        .map(|s| ((s.metric, s.labels.get("group").map(|g| g.parse().unwrap())), s.value))
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

/// Checks that the Grafana dashboard and the alert rules in deploy/ only name metrics that the
/// exposition `text` has (a family with no sample yet has no TYPE line: the caller makes them
/// all move first).
fn check_deploy_names(text: &str) {
    let exported: std::collections::BTreeSet<&str> =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split_whitespace().next()).collect();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy");
    for file in ["grafana/baton.json", "prometheus/alerts.yml"] {
        let body = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let mut named = 0;
        for (i, _) in body.match_indices("baton_") {
            let token: String =
                body[i..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit()).collect();
            let base = ["_bucket", "_sum", "_count", "_total"]
                .iter()
                .fold(token.as_str(), |t, s| t.strip_suffix(s).unwrap_or(t));
            if base == "baton_" || token.starts_with("baton_overview") {
                continue; // the dashboard's uid
            }
            assert!(exported.contains(base), "{file} names {token}, which no node exports");
            named += 1;
        }
        assert!(named >= 10, "{file} names {named} metrics");
    }
}

/// One sample of a scrape: metric, labels, value (a histogram's: its count).
struct Sample {
    metric: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn samples(addr: &str) -> Vec<Sample> {
    let (code, body) = get(addr, "/metrics");
    assert_eq!(code, 200, "{body}");
    let parsed = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
    parsed
        .samples
        .into_iter()
        .map(|s| {
            let value = match s.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
                other => panic!("unexpected sample {other:?}"),
            };
            let labels = s.labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            Sample { metric: s.metric, labels, value }
        })
        .collect()
}

/// The sum of `metric` over the samples whose labels include all of `with`.
fn sum(samples: &[Sample], metric: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.metric == metric && with.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

/// Contention on one name moves the per-primitive counters and histograms on every replica of
/// its group, the hot-name sketch puts it first with its holder and waiters, and its history
/// tells the story in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contention_shows_in_metrics_hot_names_and_history() {
    let c = TestCluster::start_sharded(3, 20_000, false, 2).await;
    c.leader().await;
    let client = c.client().await;
    let name = "contended-orders";
    let sessions: Vec<_> = futures::future::join_all((0..4).map(|_| client.session(Duration::from_secs(10)))).await;
    let sessions: Vec<_> = sessions.into_iter().map(|s| s.unwrap()).collect();
    let first = sessions[0].lock(name, None).await.unwrap().unwrap();
    // Two waiters queue behind it; wait for the queue, not for time. Each gives the lock back as
    // soon as it has it: which of the two queued first is not known (releasing them in spawn
    // order deadlocked whenever the second one queued first, until the first one's wait ran out).
    let waiters: Vec<_> = sessions[1..3]
        .iter()
        .map(|s| {
            let s = s.clone();
            tokio::spawn(async move {
                let granted = s.lock(name, Some(Duration::from_secs(30))).await.unwrap().expect("granted");
                granted.release().await.unwrap();
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.describe(name).await.unwrap().waiters.len() < 2 {
        assert!(Instant::now() < deadline, "the waiters never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // While two wait and one holds: the sketch names the holder and the queue.
    let hot = client.hot(10).await.unwrap();
    let top = hot.names.iter().find(|n| n.name == name).expect("the contended name is hot");
    assert_eq!((top.kind.as_str(), top.waiters, top.waits), ("mutex", 2, 2), "{top:?}");
    assert_eq!(top.holders.iter().map(|h| h.token).collect::<Vec<_>>(), vec![first.token()]);
    // A third try gives up after 50 ms: a timed-out wait.
    assert!(sessions[3].lock(name, Some(Duration::from_millis(50))).await.unwrap().is_none());
    first.release().await.unwrap();
    for w in waiters {
        w.await.unwrap();
    }
    let history = client.history(name, 0).await.unwrap();
    let group = history.group;
    let story: Vec<(&str, bool)> = history.events.iter().map(|e| (e.r#type.as_str(), e.handoff)).collect();
    assert_eq!(
        story,
        [
            ("granted", false),
            ("queued", false),
            ("queued", false),
            ("queued", false),
            ("wait_ended", false),
            ("released", false),
            ("granted", true),
            ("released", false),
            ("granted", true),
            ("released", false),
        ],
        "{:?}",
        history.events
    );
    let tokens: Vec<u64> = history.events.iter().filter(|e| e.r#type == "granted").map(|e| e.token).collect();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "tokens grow: {tokens:?}");
    assert!(history.events.iter().filter(|e| e.r#type == "granted" && e.handoff).all(|e| e.kind == "mutex"));
    // Every replica applies the same events: each one's counters say the same, once caught up.
    let g = group.to_string();
    let mutex = [("group", g.as_str()), ("kind", "mutex")];
    for addr in c.http_addrs.values() {
        let deadline = Instant::now() + Duration::from_secs(20);
        let s = loop {
            let s = samples(addr);
            if sum(&s, "baton_lock_releases_total", &mutex) >= 3.0 {
                break s;
            }
            assert!(Instant::now() < deadline, "{addr} never applied the releases");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(sum(&s, "baton_lock_grants_total", &mutex), 3.0, "{addr}");
        assert_eq!(sum(&s, "baton_lock_handoffs_total", &mutex), 2.0, "{addr}");
        assert_eq!(sum(&s, "baton_lock_waits_total", &[("group", &g)]), 3.0, "{addr}");
        assert_eq!(sum(&s, "baton_lock_wait_ends_total", &[("group", &g), ("how", "timed_out")]), 1.0, "{addr}");
        assert_eq!(sum(&s, "baton_lock_acquire_wait_seconds", &mutex), 2.0, "{addr}: two waits ended in a grant");
        assert_eq!(sum(&s, "baton_lock_hold_seconds", &mutex), 3.0, "{addr}");
        assert_eq!(sum(&s, "baton_lock_releases_total", &[("group", &g), ("how", "released")]), 3.0, "{addr}");
        assert!(sum(&s, "baton_sessions_opened_total", &[]) >= 4.0, "{addr}");
        assert!(sum(&s, "baton_disk_write_seconds", &[]) > 0.0, "{addr}: writes are timed");
        assert!(sum(&s, "baton_peer_sent_bytes_total", &[]) > 0.0, "{addr}");
        assert!(sum(&s, "baton_peer_received_messages_total", &[]) > 0.0, "{addr}");
        assert!(sum(&s, "baton_raft_leader_changes_total", &[("group", &g)]) >= 1.0, "{addr}: the first leader counts");
    }
    // A session closed: every family has moved, and the deploy/ files name only what exists.
    sessions[3].clone().close().await.unwrap();
    let addr = c.http_addrs.values().next().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while sum(&samples(addr), "baton_session_ends_total", &[("how", "closed")]) < 1.0 {
        assert!(Instant::now() < deadline, "{addr} never counted the close");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check_deploy_names(&get(addr, "/metrics").1);
    // The requests went in through some node: counted and timed there.
    let all: Vec<Vec<Sample>> = c.http_addrs.values().map(|a| samples(a)).collect();
    let acquires: f64 = all.iter().map(|s| sum(s, "baton_requests_total", &[("op", "acquire")])).sum();
    let timed: f64 = all.iter().map(|s| sum(s, "baton_request_seconds", &[("op", "acquire")])).sum();
    assert!(acquires >= 4.0 && timed >= 4.0, "{acquires} acquires, {timed} timed");
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
        replicas: vec![1, 2, 3],
        ..GroupStatus::default()
    };
    assert!(baton_server::http::not_ready(&[group(1, Some(2), 10, 10)]).is_empty());
    let reasons = baton_server::http::not_ready(&[group(1, None, 10, 10), group(2, Some(1), 5_000, 10)]);
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].contains("group 1 has no leader"));
    assert!(reasons[1].contains("group 2 has applied 10 of 5000"));
    assert_eq!(baton_server::http::not_ready(&[]).len(), 1);
}
