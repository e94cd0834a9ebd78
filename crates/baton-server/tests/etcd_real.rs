//! The same cases through the `etcd-client` crate against a 3-node Baton (in this process) and
//! against a real etcd (a process, when the `etcd` binary is installed; `.ci/run` installs it and
//! sets `BATON_REQUIRE_ETCD=1` so that it cannot be skipped there), answers compared field by
//! field after normalising what must differ: revisions relative to each store's first one,
//! lease ids by order of grant, cluster and member ids and terms left out.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TestCluster;
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, EventType, GetOptions, KeyValue, LeaseTimeToLiveOptions, LockOptions,
    PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, WatchOptions,
};

/// A real single-member etcd on free ports, killed when dropped.
struct RealEtcd {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Drop for RealEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn real_etcd() -> Option<RealEtcd> {
    let found = Command::new("sh").args(["-c", "command -v etcd"]).output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(std::env::var_os("BATON_REQUIRE_ETCD").is_none(), "BATON_REQUIRE_ETCD is set but etcd is missing");
        eprintln!("etcd is not installed: skipping the comparison with a real etcd (.ci/run installs it)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (format!("http://127.0.0.1:{}", free_port()), format!("http://127.0.0.1:{}", free_port()));
    let child = Command::new("etcd")
        .args(["--name", "cmp", "--data-dir", dir.path().join("etcd").to_str().unwrap()])
        .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("cmp={peer}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let etcd = RealEtcd { child, endpoint: client.trim_start_matches("http://").to_string(), _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = Client::connect([etcd.endpoint.clone()], None).await {
            if c.get("ready?", None).await.is_ok() {
                return Some(etcd);
            }
        }
        assert!(Instant::now() < deadline, "etcd did not start serving");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a run saw, normalised.
struct Seen {
    base: i64,
    leases: Vec<i64>,
    lines: Vec<String>,
}

impl Seen {
    fn rev(&self, r: i64) -> String {
        if r == 0 {
            "0".into()
        } else {
            format!("R{:+}", r - self.base)
        }
    }

    fn lease(&self, id: i64) -> String {
        match (id, self.leases.iter().position(|l| *l == id)) {
            (0, _) => "-".into(),
            (_, Some(i)) => format!("L{i}"),
            (_, None) => format!("unknown lease {id}"),
        }
    }

    /// A key, with the lease id that ends lock and election keys (`name/<lease in hex>`) named.
    fn key(&self, k: &[u8]) -> String {
        let s = String::from_utf8_lossy(k).into_owned();
        if let Some((name, last)) = s.rsplit_once('/') {
            if let Some(i) = self.leases.iter().position(|id| format!("{id:x}") == last) {
                return format!("{name}/L{i}");
            }
        }
        s
    }

    fn kv(&self, kv: &KeyValue) -> String {
        format!(
            "{}={} c{} m{} v{} {}",
            self.key(kv.key()),
            String::from_utf8_lossy(kv.value()),
            self.rev(kv.create_revision()),
            self.rev(kv.mod_revision()),
            kv.version(),
            self.lease(kv.lease())
        )
    }

    fn kvs(&self, kvs: &[KeyValue]) -> String {
        kvs.iter().map(|kv| self.kv(kv)).collect::<Vec<_>>().join(", ")
    }

    fn note(&mut self, what: &str, line: String) {
        self.lines.push(format!("{what}: {line}"));
    }

    fn err(&mut self, what: &str, e: etcd_client::Error) {
        // The status message is compared, not the crate's wrapping of it.
        let text = match &e {
            etcd_client::Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
            other => other.to_string(),
        };
        self.note(what, format!("error {text}"));
    }
}

/// Runs every case on `client`; the normalised answers.
async fn cases(client: &mut Client) -> Vec<String> {
    let base = client.get("nothing", None).await.unwrap().header().unwrap().revision();
    let mut s = Seen { base, leases: Vec::new(), lines: Vec::new() };
    macro_rules! run {
        ($what:expr, $call:expr, |$r:ident| $show:expr) => {
            match $call.await {
                Ok($r) => {
                    let line = $show;
                    s.note($what, line)
                }
                Err(e) => s.err($what, e),
            }
        };
    }
    // put and get with their options
    run!("put", client.put("k/1", "a", None), |r| s.rev(r.header().unwrap().revision()));
    run!("put", client.put("k/2", "b", None), |r| s.rev(r.header().unwrap().revision()));
    run!("put prev", client.put("k/1", "aa", Some(PutOptions::new().with_prev_key())), |r| format!(
        "{} prev {}",
        s.rev(r.header().unwrap().revision()),
        r.prev_key().map_or("none".into(), |kv| s.kv(kv))
    ));
    run!("put k/3", client.put("k/3", "c", None), |r| s.rev(r.header().unwrap().revision()));
    run!("get", client.get("k/1", None), |r| format!("{} count {}", s.kvs(r.kvs()), r.count()));
    run!("get prefix", client.get("k/", Some(GetOptions::new().with_prefix())), |r| format!(
        "{} count {} more {}",
        s.kvs(r.kvs()),
        r.count(),
        r.more()
    ));
    run!("get limit", client.get("k/", Some(GetOptions::new().with_prefix().with_limit(2))), |r| format!(
        "{} count {} more {}",
        s.kvs(r.kvs()),
        r.count(),
        r.more()
    ));
    let sorted = GetOptions::new().with_prefix().with_sort(SortTarget::Mod, SortOrder::Descend);
    run!("get sorted", client.get("k/", Some(sorted)), |r| s.kvs(r.kvs()));
    let by_value = GetOptions::new().with_prefix().with_sort(SortTarget::Value, SortOrder::None).with_limit(1);
    run!("get sort target only", client.get("k/", Some(by_value)), |r| format!("{} more {}", s.kvs(r.kvs()), r.more()));
    run!("get count only", client.get("k/", Some(GetOptions::new().with_prefix().with_count_only())), |r| format!(
        "[{}] count {}",
        s.kvs(r.kvs()),
        r.count()
    ));
    run!("get keys only", client.get("k/", Some(GetOptions::new().with_prefix().with_keys_only())), |r| s.kvs(r.kvs()));
    run!("get at revision", client.get("k/1", Some(GetOptions::new().with_revision(base + 1))), |r| s.kvs(r.kvs()));
    let filtered = GetOptions::new().with_prefix().with_min_mod_revision(base + 2).with_max_create_revision(base + 2);
    run!("get filtered", client.get("k/", Some(filtered)), |r| format!("{} count {}", s.kvs(r.kvs()), r.count()));
    run!("get range", client.get("k/1", Some(GetOptions::new().with_range("k/3"))), |r| s.kvs(r.kvs()));
    run!("get from key", client.get("k/2", Some(GetOptions::new().with_from_key())), |r| s.kvs(r.kvs()));
    run!("get future", client.get("k/1", Some(GetOptions::new().with_revision(base + 1000))), |r| s.kvs(r.kvs()));
    // delete
    run!("delete prev", client.delete("k/2", Some(DeleteOptions::new().with_prev_key())), |r| format!(
        "{} deleted {} prev {}",
        s.rev(r.header().unwrap().revision()),
        r.deleted(),
        s.kvs(r.prev_kvs())
    ));
    run!("delete nothing", client.delete("nope", None), |r| format!(
        "{} deleted {}",
        s.rev(r.header().unwrap().revision()),
        r.deleted()
    ));
    // transactions
    let txn = Txn::new()
        .when([Compare::value("k/1", CompareOp::Equal, "aa"), Compare::version("k/3", CompareOp::Greater, 0)])
        .and_then([TxnOp::put("k/4", "d", None), TxnOp::get("k/", Some(GetOptions::new().with_prefix()))])
        .or_else([TxnOp::delete("k/1", None)]);
    run!("txn", client.txn(txn), |r| {
        let parts: Vec<String> = r
            .op_responses()
            .iter()
            .map(|op| match op {
                TxnOpResponse::Put(p) => format!("put {}", s.rev(p.header().unwrap().revision())),
                TxnOpResponse::Get(g) => format!("get {} at {}", s.kvs(g.kvs()), s.rev(g.header().unwrap().revision())),
                TxnOpResponse::Delete(d) => format!("delete {}", d.deleted()),
                TxnOpResponse::Txn(t) => format!("txn {}", t.succeeded()),
            })
            .collect();
        format!("{} succeeded {} [{}]", s.rev(r.header().unwrap().revision()), r.succeeded(), parts.join("; "))
    });
    let failing = Txn::new()
        .when([Compare::mod_revision("k/1", CompareOp::Less, base + 2)])
        .and_then([TxnOp::put("k/5", "x", None)])
        .or_else([TxnOp::get("k/4", None), TxnOp::txn(Txn::new().and_then([TxnOp::put("k/6", "f", None)]))]);
    run!("txn failure branch", client.txn(failing), |r| format!(
        "{} succeeded {}",
        s.rev(r.header().unwrap().revision()),
        r.succeeded()
    ));
    let dup = Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]);
    run!("txn duplicate", client.txn(dup), |r| r.succeeded().to_string());
    let many: Vec<TxnOp> = (0..129).map(|i| TxnOp::put(format!("m/{i}"), "v", None)).collect();
    run!("txn too many", client.txn(Txn::new().and_then(many)), |r| r.succeeded().to_string());
    // leases
    match client.lease_grant(60, None).await {
        Ok(r) => {
            s.leases.push(r.id());
            let line = format!("{} ttl {}", s.lease(r.id()), r.ttl());
            s.note("lease grant", line);
        }
        Err(e) => s.err("lease grant", e),
    }
    let lease = s.leases.first().copied().unwrap_or(0);
    run!("put with lease", client.put("l/1", "x", Some(PutOptions::new().with_lease(lease))), |r| s
        .rev(r.header().unwrap().revision()));
    run!("put with lease", client.put("l/2", "y", Some(PutOptions::new().with_lease(lease))), |r| s
        .rev(r.header().unwrap().revision()));
    run!("ttl keys", client.lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys())), |r| {
        // In no particular order in etcd (a Go map's): compared sorted.
        let mut keys: Vec<String> = r.keys().iter().map(|k| s.key(k)).collect();
        keys.sort();
        format!("{} granted {} keys {keys:?} remaining>=58 {}", s.lease(r.id()), r.granted_ttl(), r.ttl() >= 58)
    });
    run!("put ignore lease", client.put("l/1", "z", Some(PutOptions::new().with_ignore_lease())), |r| s
        .rev(r.header().unwrap().revision()));
    run!("get lease keys", client.get("l/", Some(GetOptions::new().with_prefix())), |r| s.kvs(r.kvs()));
    run!("put unknown lease", client.put("l/3", "x", Some(PutOptions::new().with_lease(0x123abc))), |r| s
        .rev(r.header().unwrap().revision()));
    run!("revoke", client.lease_revoke(lease), |r| s.rev(r.header().unwrap().revision()));
    run!("get after revoke", client.get("l/", Some(GetOptions::new().with_prefix())), |r| format!(
        "[{}]",
        s.kvs(r.kvs())
    ));
    run!("ttl revoked", client.lease_time_to_live(lease, None), |r| format!(
        "ttl {} granted {}",
        r.ttl(),
        r.granted_ttl()
    ));
    run!("revoke again", client.lease_revoke(lease), |r| s.rev(r.header().unwrap().revision()));
    // watch: a replay from a revision, with previous values, flattened (how a replay is cut
    // into responses is not compared)
    let now = client.get("nothing", None).await.unwrap().header().unwrap().revision();
    match client
        .watch("k/", Some(WatchOptions::new().with_prefix().with_start_revision(base + 1).with_prev_key()))
        .await
    {
        Ok(mut stream) => {
            let mut events = Vec::new();
            let mut last = 0;
            while last < now {
                let Ok(Ok(Some(resp))) = tokio::time::timeout(Duration::from_secs(5), stream.message()).await else {
                    break;
                };
                for e in resp.events() {
                    let kv = e.kv().unwrap();
                    last = kv.mod_revision();
                    let kind = if e.event_type() == EventType::Delete { "delete" } else { "put" };
                    events.push(format!("{kind} {} prev {}", s.kv(kv), e.prev_kv().map_or("none".into(), |p| s.kv(p))));
                }
            }
            s.note("watch replay", events.join("; "));
        }
        Err(e) => s.err("watch", e),
    }
    // compaction
    run!("compact", client.compact(base + 3, None), |r| s.rev(r.header().unwrap().revision()));
    run!("get compacted", client.get("k/1", Some(GetOptions::new().with_revision(base + 2))), |r| s.kvs(r.kvs()));
    run!("compact again", client.compact(base + 2, None), |r| s.rev(r.header().unwrap().revision()));
    // lock and election keys
    match client.lease_grant(30, None).await {
        Ok(r) => s.leases.push(r.id()),
        Err(e) => s.err("lease grant", e),
    }
    let l2 = s.leases.last().copied().unwrap_or(0);
    run!("lock", client.lock("job", Some(LockOptions::new().with_lease(l2))), |r| format!(
        "{} key {}",
        s.rev(r.header().unwrap().revision()),
        s.key(r.key())
    ));
    run!("lock keys", client.get("job/", Some(GetOptions::new().with_prefix())), |r| s.kvs(r.kvs()));
    run!("unlock", client.unlock(format!("job/{l2:x}")), |r| s.rev(r.header().unwrap().revision()));
    run!("campaign", client.campaign("office", "alice", l2), |r| {
        let l = r.leader().unwrap();
        format!(
            "{} key {} rev {} lease {}",
            s.rev(r.header().unwrap().revision()),
            s.key(l.key()),
            s.rev(l.rev()),
            s.lease(l.lease())
        )
    });
    run!("leader", client.leader("office"), |r| s.kv(r.kv().unwrap()));
    run!("no leader", client.leader("nobody"), |r| format!("{:?}", r.kv().map(|kv| s.kv(kv))));
    s.lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_etcd_client_crate_sees_baton_as_it_sees_etcd() {
    let Some(etcd) = real_etcd().await else { return };
    let c = TestCluster::with_etcd(3, 1).await;
    let mut baton = Client::connect(c.etcd_endpoints(), None).await.unwrap();
    // Ready once a read goes through.
    let deadline = Instant::now() + Duration::from_secs(20);
    while baton.get("ready?", None).await.is_err() {
        assert!(Instant::now() < deadline, "Baton's etcd API never served a read");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut real = Client::connect([etcd.endpoint.clone()], None).await.unwrap();
    let want = cases(&mut real).await;
    let got = cases(&mut baton).await;
    let differences: Vec<String> =
        want.iter().zip(&got).filter(|(a, b)| a != b).map(|(a, b)| format!("  etcd:  {a}\n  baton: {b}")).collect();
    assert_eq!(want.len(), got.len());
    assert!(differences.is_empty(), "{} differences:\n{}", differences.len(), differences.join("\n"));
}
