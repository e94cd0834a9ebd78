//! `baton bench`: one load generator for Baton and etcd, with HDR-histogram latencies.
//!
//! Every workload is written once against [`driver::Driver`], so both systems run the same
//! client loop from the same process. Workloads (one "op" and its latency):
//! - `uncontended`: each client locks and unlocks its own name, reusing one session (op: the
//!   lock+unlock cycle).
//! - `uncontended-session`: the same with a new session (etcd: lease) per cycle.
//! - `contended`: every client waits for one name (op: a grant, latency: the wait). The tool
//!   checks mutual exclusion and token order and reports violations.
//! - `hot-set`: names drawn from a Zipf(1) distribution over 10,000 names, waiting when taken
//!   (op: the cycle; exclusion checked per name).
//! - `session-churn`: open a session, renew it once, close it.
//! - `keepalive-scale`: `--sessions` idle sessions over the clients; reports renewals/s and the
//!   servers' CPU per renewal (needs `--pids` for the CPU figure).
//! - `election`: every client campaigns for one election; the leader resigns at once (op: a
//!   change of leader, latency: from the resign to the next leader's campaign returning).
//! - `mixed`: half lock+unlock cycles, a quarter counter increments, a quarter linearizable reads.
//! - `hold`: `--sessions` sessions holding `--locks` locks; reads the servers' RSS (`--pids`)
//!   before, after opening the sessions and after taking the locks.
//! - `counter`: every client adds one to one linearizable counter (Baton: an atomic add through
//!   the group's leader; etcd: a compare-and-swap transaction, retried on conflict).
//! - `crdt-counter` (Baton only): every client adds one to one coordination-free PN-counter on
//!   its own node (clients spread over the endpoints). Meanwhile one probe a tenth of a second
//!   writes a register on one node and times how long until every other node's local read shows
//!   it: the convergence time under that load (`convergence_p50_ms`, `convergence_p99_ms`).
//!
//! The run is bounded by `--duration` (set-up excluded); every client stops by itself.

pub mod driver;
pub mod report;
pub use baton_server::sys;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use hdrhistogram::Histogram;

use driver::{Driver, Held, Sess, Target};
pub use report::BenchReport;

/// The workloads, in the order `bench/compare.sh` runs them.
pub const WORKLOADS: [&str; 11] = [
    "uncontended",
    "uncontended-session",
    "contended",
    "hot-set",
    "session-churn",
    "keepalive-scale",
    "election",
    "mixed",
    "hold",
    "counter",
    "crdt-counter",
];

/// Names in the `hot-set` workload.
const HOT_SET_NAMES: usize = 10_000;
/// Most sessions / locks one run may ask for.
const MAX_HELD: usize = 10_000_000;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchArgs {
    /// Which system.
    pub target: Target,
    /// Client addresses.
    pub endpoints: Vec<String>,
    /// Workload name (one of [`WORKLOADS`]).
    pub workload: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Measured time.
    pub duration: Duration,
    /// Sessions for `keepalive-scale` and `hold`.
    pub sessions: usize,
    /// Locks for `hold`.
    pub locks: usize,
    /// Server processes whose RSS and CPU time to read.
    pub pids: Vec<u32>,
    /// Connections the clients share (0: one per client). Each client keeps its own session;
    /// clients `i` and `i + connections` share a connection, as tasks of one process would.
    pub connections: usize,
}

/// Checks the arguments before anything connects.
pub fn validate(args: &BenchArgs) -> Result<(), String> {
    if !WORKLOADS.contains(&args.workload.as_str()) {
        return Err(format!("unknown workload {:?} (known: {})", args.workload, WORKLOADS.join(", ")));
    }
    if args.clients == 0 || args.clients > 10_000 {
        return Err(format!("--clients must be 1..=10000 (got {})", args.clients));
    }
    if args.endpoints.is_empty() {
        return Err("--endpoints is empty".into());
    }
    if args.sessions == 0 || args.sessions > MAX_HELD || args.locks > MAX_HELD {
        return Err(format!("--sessions must be 1..={MAX_HELD} and --locks at most {MAX_HELD}"));
    }
    if matches!(args.workload.as_str(), "hold" | "keepalive-scale") && args.sessions < args.clients {
        return Err(format!("--sessions ({}) must be at least --clients ({})", args.sessions, args.clients));
    }
    if args.workload == "crdt-counter" && args.target != Target::Baton {
        return Err("the crdt-counter workload is Baton's coordination-free tier: etcd has none".into());
    }
    if args.workload == "hold" && args.pids.is_empty() {
        return Err("the hold workload measures server memory: give the servers' --pids".into());
    }
    for pid in &args.pids {
        sys::rss_bytes(*pid)?;
    }
    Ok(())
}

/// Counters and histograms every worker adds to.
struct Shared {
    hist: Mutex<Histogram<u64>>,
    ops: AtomicU64,
    errors: AtomicU64,
    violations: AtomicU64,
    /// Per name under test: the worker holding it (0 = none) and the last token granted.
    holders: Vec<AtomicU64>,
    last_token: Vec<AtomicU64>,
    /// `election`: when the last leader started resigning, in µs since the start (0 = none).
    resigned_at_us: AtomicU64,
    /// The first error seen, reported with the figures.
    first_error: Mutex<Option<String>>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

impl Shared {
    fn new(names: usize) -> Shared {
        Shared {
            hist: Mutex::new(histogram()),
            ops: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            violations: AtomicU64::new(0),
            holders: (0..names).map(|_| AtomicU64::new(0)).collect(),
            last_token: (0..names).map(|_| AtomicU64::new(0)).collect(),
            resigned_at_us: AtomicU64::new(0),
            first_error: Mutex::new(None),
        }
    }

    /// Records a grant of name `slot` to `worker`: a second holder or a token that does not grow
    /// is a violation.
    fn granted(&self, slot: usize, worker: u64, token: u64) {
        if self.holders[slot].swap(worker, Ordering::SeqCst) != 0 {
            self.violations.fetch_add(1, Ordering::Relaxed);
        }
        if self.last_token[slot].fetch_max(token, Ordering::SeqCst) >= token {
            self.violations.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn releasing(&self, slot: usize) {
        self.holders[slot].store(0, Ordering::SeqCst);
    }

    fn error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.first_error.lock().expect("error lock").get_or_insert(e);
    }

    /// The run's figures: what every worker added here, `ops_per_s`, and the workload's own
    /// figures (`extra`), plus the first error if there was one.
    fn report(
        &self,
        args: &BenchArgs,
        ops_per_s: f64,
        mut extra: serde_json::Map<String, serde_json::Value>,
    ) -> BenchReport {
        if let Some(e) = self.first_error.lock().expect("error lock").clone() {
            extra.insert("first_error".into(), e.into());
        }
        BenchReport {
            target: args.target,
            workload: args.workload.clone(),
            clients: args.clients,
            connections: args.connections,
            ops_per_s,
            latency_us: self.hist.lock().expect("hist lock").clone(),
            errors: self.errors.load(Ordering::Relaxed),
            violations: self.violations.load(Ordering::Relaxed),
            extra,
        }
    }
}

/// Zipf(1) over `n` names: the cumulative distribution, sampled by binary search.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for k in 1..=n {
            sum += 1.0 / k as f64;
            cdf.push(sum);
        }
        for p in &mut cdf {
            *p /= sum;
        }
        Zipf { cdf }
    }

    fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cdf.partition_point(|p| *p < u).min(self.cdf.len() - 1)
    }
}

/// xorshift64*: a small seeded generator, so each worker's choices are repeatable.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Session TTL for the looped workloads.
const TTL: Duration = Duration::from_secs(30);
/// Session TTL for churn and keepalive-scale (renewed every TTL/3 by both systems' clients).
const SHORT_TTL: Duration = Duration::from_secs(10);

/// Runs one workload and returns its figures.
pub async fn run(args: BenchArgs) -> Result<BenchReport, String> {
    validate(&args)?;
    let mut drivers: Vec<Driver> = Vec::with_capacity(args.clients);
    let connections = if args.connections == 0 { args.clients } else { args.connections.min(args.clients) };
    for i in 0..args.clients {
        let driver = match i.checked_sub(connections) {
            Some(_) => drivers[i % connections].clone(),
            None if args.workload == "crdt-counter" => Driver::connect_spread(&args.endpoints, i).await?,
            None => Driver::connect(args.target, &args.endpoints, i).await?,
        };
        drivers.push(driver);
    }
    match args.workload.as_str() {
        "keepalive-scale" => keepalive_scale(&args, drivers).await,
        "hold" => hold(&args, drivers).await,
        _ => looped(&args, drivers).await,
    }
}

/// One worker of a looped workload.
struct Worker {
    id: u64,
    driver: Driver,
    session: Option<Sess>,
    rng: Rng,
    /// The coordination-free tier through `driver` (Baton).
    tier: Option<baton_client::crdt::Crdt>,
}

/// The workloads where each client repeats one op until the deadline.
async fn looped(args: &BenchArgs, drivers: Vec<Driver>) -> Result<BenchReport, String> {
    let workload = args.workload.clone();
    let names = match workload.as_str() {
        "hot-set" => HOT_SET_NAMES,
        _ => 1,
    };
    let shared = Arc::new(Shared::new(names));
    let zipf = Arc::new(Zipf::new(HOT_SET_NAMES));
    // Set-up (connections, sessions) happens before the clock starts.
    let reuse = !matches!(workload.as_str(), "uncontended-session" | "session-churn" | "counter" | "crdt-counter");
    let mut workers = Vec::new();
    for (i, driver) in drivers.into_iter().enumerate() {
        let session = if reuse { Some(driver.open(TTL).await?) } else { None };
        let tier = driver.crdt();
        workers.push(Worker { id: i as u64 + 1, driver, session, rng: Rng::new(i as u64 + 1), tier });
    }
    let start = Instant::now();
    let deadline = start + args.duration;
    let probe = if workload == "crdt-counter" {
        Some(tokio::spawn(convergence_probe(args.endpoints.clone(), deadline)))
    } else {
        None
    };
    let mut tasks = Vec::new();
    for mut w in workers {
        let shared = shared.clone();
        let zipf = zipf.clone();
        let workload = workload.clone();
        tasks.push(tokio::spawn(async move {
            let mut local = histogram();
            while Instant::now() < deadline {
                let latency = match workload.as_str() {
                    "uncontended" => cycle(&w, &format!("bench-{}-{}", std::process::id(), w.id)).await,
                    "uncontended-session" => fresh_session_cycle(&w).await,
                    "contended" => handoff(&w, &shared, deadline).await,
                    "hot-set" => {
                        let slot = zipf.sample(&mut w.rng);
                        hot_cycle(&w, &shared, slot, deadline).await
                    }
                    "session-churn" => churn(&w).await,
                    "election" => leadership_change(&w, &shared, start, deadline).await,
                    "counter" => timed(w.driver.increment("bench-counter")).await,
                    "crdt-counter" => match &w.tier {
                        Some(tier) => timed(w.driver.crdt_increment(tier, "bench-crdt-counter")).await,
                        None => Err("no coordination-free tier on this target".into()),
                    },
                    _ => mixed(&mut w).await,
                };
                match latency {
                    Ok(Some(latency)) => {
                        if Instant::now() <= deadline {
                            let _ = local.record(latency.as_micros().max(1) as u64);
                            shared.ops.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::debug!(worker = w.id, error = %e, "bench op failed");
                        shared.error(e);
                        // Do not spin on a broken connection.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            let _ = shared.hist.lock().expect("hist lock").add(&local);
            w
        }));
    }
    let mut finished = Vec::new();
    for t in tasks {
        if let Ok(w) = t.await {
            finished.push(w);
        }
    }
    let elapsed = args.duration.as_secs_f64();
    for w in finished {
        if let Some(s) = w.session {
            let _ = w.driver.close(s).await;
        }
    }
    let ops_per_s = shared.ops.load(Ordering::Relaxed) as f64 / elapsed;
    let mut extra = serde_json::Map::new();
    if let Some(probe) = probe {
        let samples = probe.await.map_err(|e| format!("convergence probe: {e}"))??;
        let q = |p: f64| samples.value_at_quantile(p) as f64 / 1000.0;
        extra.insert("convergence_samples".into(), samples.len().into());
        extra.insert("convergence_p50_ms".into(), q(0.5).into());
        extra.insert("convergence_p99_ms".into(), q(0.99).into());
    }
    Ok(shared.report(args, ops_per_s, extra))
}

/// Times one op.
async fn timed<T>(op: impl std::future::Future<Output = Result<T, String>>) -> Result<Option<Duration>, String> {
    let t0 = Instant::now();
    op.await?;
    Ok(Some(t0.elapsed()))
}

/// Until `deadline`, ten times a second: writes a new value to a register on one node (in
/// turn) and polls every other node's local read until it shows it. Returns how long each
/// value took to reach every node (µs), counted from the write's acknowledgement.
async fn convergence_probe(endpoints: Vec<String>, deadline: Instant) -> Result<Histogram<u64>, String> {
    use baton_client::crdt::{CrdtKind, ReadLevel};
    let mut tiers = Vec::new();
    for i in 0..endpoints.len() {
        let Driver::Baton(c) = Driver::connect_spread(&endpoints[i..=i], i).await? else { unreachable!("Baton") };
        tiers.push(c.crdt());
    }
    let mut hist = histogram();
    let name = format!("bench-convergence-{}", std::process::id());
    let mut seq = 0u64;
    while Instant::now() + Duration::from_millis(200) < deadline {
        seq += 1;
        let from = seq as usize % tiers.len();
        let value = seq.to_be_bytes();
        tiers[from].write(CrdtKind::LwwRegister, &name, &value).await.map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        for (i, tier) in tiers.iter().enumerate() {
            if i == from {
                continue;
            }
            loop {
                let v = tier.read(CrdtKind::LwwRegister, &name, ReadLevel::Local).await.map_err(|e| e.to_string())?;
                if v.values.first().is_some_and(|b| b.as_slice() >= value.as_slice()) {
                    break;
                }
                if t0.elapsed() > Duration::from_secs(10) {
                    return Err(format!("value {seq} did not reach node {} within 10 s", i + 1));
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
        let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(hist)
}

fn session(w: &Worker) -> Result<&Sess, String> {
    w.session.as_ref().ok_or_else(|| "worker without a session".to_string())
}

/// Lock and unlock `name` (no wait: nobody else uses it).
async fn cycle(w: &Worker, name: &str) -> Result<Option<Duration>, String> {
    let t0 = Instant::now();
    let held = w.driver.lock(session(w)?, name, None).await?.ok_or(format!("uncontended lock {name} not granted"))?;
    w.driver.release(held).await?;
    Ok(Some(t0.elapsed()))
}

async fn fresh_session_cycle(w: &Worker) -> Result<Option<Duration>, String> {
    let t0 = Instant::now();
    let name = format!("bench-{}-{}", std::process::id(), w.id);
    let sess = w.driver.open(TTL).await?;
    let held = w.driver.lock(&sess, &name, None).await?.ok_or(format!("uncontended lock {name} not granted"))?;
    w.driver.release(held).await?;
    w.driver.close(sess).await?;
    Ok(Some(t0.elapsed()))
}

async fn churn(w: &Worker) -> Result<Option<Duration>, String> {
    let t0 = Instant::now();
    let sess = w.driver.open(SHORT_TTL).await?;
    w.driver.keep_alive_once(&sess).await?;
    w.driver.close(sess).await?;
    Ok(Some(t0.elapsed()))
}

/// Waits for `name` until the deadline; a wait that ends with the run is not an error.
async fn wait_for(w: &Worker, name: &str, deadline: Instant) -> Result<Option<Held>, String> {
    let wait = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    match w.driver.lock(session(w)?, name, Some(wait)).await {
        Ok(Some(h)) => Ok(Some(h)),
        // The wait was cut by the end of the run (etcd may report that as a timeout error).
        Ok(None) | Err(_) if ending(deadline) => Ok(None),
        Ok(None) => Err(format!("wait for {name} ended before the deadline without a grant")),
        Err(e) => Err(e),
    }
}

/// True when a wait bounded by the run's deadline has reached it.
fn ending(deadline: Instant) -> bool {
    Instant::now() + Duration::from_millis(100) >= deadline
}

/// One grant of the contended name; the latency is the wait.
async fn handoff(w: &Worker, shared: &Shared, deadline: Instant) -> Result<Option<Duration>, String> {
    let t0 = Instant::now();
    let Some(held) = wait_for(w, "bench-contended", deadline).await? else { return Ok(None) };
    let waited = t0.elapsed();
    shared.granted(0, w.id, held.token());
    shared.releasing(0);
    w.driver.release(held).await?;
    Ok(Some(waited))
}

async fn hot_cycle(w: &Worker, shared: &Shared, slot: usize, deadline: Instant) -> Result<Option<Duration>, String> {
    let t0 = Instant::now();
    let Some(held) = wait_for(w, &format!("bench-hot-{slot}"), deadline).await? else { return Ok(None) };
    shared.granted(slot, w.id, held.token());
    shared.releasing(slot);
    w.driver.release(held).await?;
    Ok(Some(t0.elapsed()))
}

/// Campaigns; once elected, resigns at once. Counts a change of leader with its latency from
/// the previous leader's resign.
async fn leadership_change(
    w: &Worker,
    shared: &Shared,
    start: Instant,
    deadline: Instant,
) -> Result<Option<Duration>, String> {
    let wait = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let held = match w.driver.campaign(session(w)?, "bench-election", wait).await {
        Ok(Some(held)) => held,
        Ok(None) | Err(_) if ending(deadline) => return Ok(None),
        Ok(None) => return Err("campaign ended before the deadline without leadership".into()),
        Err(e) => return Err(e),
    };
    let now_us = start.elapsed().as_micros() as u64;
    let resigned = shared.resigned_at_us.load(Ordering::SeqCst);
    shared.granted(0, w.id, held.token());
    shared.releasing(0);
    shared.resigned_at_us.store(start.elapsed().as_micros().max(1) as u64, Ordering::SeqCst);
    w.driver.release(held).await?;
    // The first leader of the run follows no resign.
    Ok((resigned != 0).then(|| Duration::from_micros(now_us.saturating_sub(resigned))))
}

async fn mixed(w: &mut Worker) -> Result<Option<Duration>, String> {
    let t0 = Instant::now();
    let counter = format!("bench-ctr-{}-{}", std::process::id(), w.id);
    match w.rng.next() % 4 {
        0 | 1 => return cycle(w, &format!("bench-{}-{}", std::process::id(), w.id)).await,
        2 => {
            w.driver.increment(&counter).await?;
        }
        _ => {
            w.driver.read(&counter).await?;
        }
    }
    Ok(Some(t0.elapsed()))
}

/// Client `i`'s part of `total` things spread evenly over `n` clients.
fn share(total: usize, n: usize, i: usize) -> usize {
    total / n + usize::from(i < total % n)
}

/// Opens `total` sessions spread over the drivers (32 opens in flight per driver).
async fn open_many(drivers: &[Driver], total: usize, ttl: Duration) -> Result<Vec<Vec<Sess>>, String> {
    let mut tasks = Vec::new();
    for (i, d) in drivers.iter().enumerate() {
        let n = share(total, drivers.len(), i);
        let d = d.clone();
        tasks.push(tokio::spawn(async move {
            let opened: Vec<Result<Sess, String>> =
                stream::iter(0..n).map(|_| d.open(ttl)).buffer_unordered(32).collect().await;
            opened.into_iter().collect::<Result<Vec<_>, _>>()
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.push(t.await.map_err(|e| e.to_string())??);
    }
    Ok(all)
}

async fn close_many(drivers: &[Driver], sessions: Vec<Vec<Sess>>) {
    let mut tasks = Vec::new();
    for (d, list) in drivers.iter().cloned().zip(sessions) {
        tasks.push(tokio::spawn(async move {
            stream::iter(list)
                .for_each_concurrent(32, |s| {
                    let d = d.clone();
                    async move {
                        let _ = d.close(s).await;
                    }
                })
                .await
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

fn cpu_total(pids: &[u32]) -> Result<f64, String> {
    pids.iter().map(|p| sys::cpu_seconds(*p)).sum()
}

/// Holds idle sessions and measures what keeping them alive costs.
async fn keepalive_scale(args: &BenchArgs, drivers: Vec<Driver>) -> Result<BenchReport, String> {
    let sessions = open_many(&drivers, args.sessions, SHORT_TTL).await?;
    // Let the first renewals of the freshly opened sessions settle before measuring.
    tokio::time::sleep(SHORT_TTL / 3).await;
    let renewals = |ds: &[Driver]| ds.iter().map(|d| d.renewals()).sum::<u64>();
    let (r0, cpu0, t0) = (renewals(&drivers), cpu_total(&args.pids)?, Instant::now());
    tokio::time::sleep(args.duration).await;
    let (r1, cpu1, elapsed) = (renewals(&drivers), cpu_total(&args.pids)?, t0.elapsed().as_secs_f64());
    close_many(&drivers, sessions).await;
    let renewed = (r1 - r0) as f64;
    let mut extra = serde_json::Map::new();
    extra.insert("sessions".into(), args.sessions.into());
    if !args.pids.is_empty() {
        let cpu = cpu1 - cpu0;
        extra.insert("server_cpu_pct".into(), round1(100.0 * cpu / elapsed).into());
        extra.insert("cpu_us_per_renewal".into(), round1(1e6 * cpu / renewed.max(1.0)).into());
    }
    // Each session should be renewed about every TTL/3: fewer renewals mean lost sessions.
    let expected_per_s = args.sessions as f64 / (SHORT_TTL.as_secs_f64() / 3.0);
    extra.insert("renewals_expected_per_s".into(), round1(expected_per_s).into());
    Ok(Shared::new(0).report(args, renewed / elapsed, extra))
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn max_rss(pids: &[u32]) -> Result<u64, String> {
    pids.iter().map(|p| sys::rss_bytes(*p)).try_fold(0, |m, r| r.map(|r| m.max(r)))
}

/// Opens `--sessions` sessions, takes `--locks` locks spread over them, and reports the
/// servers' resident memory per session and per lock (the largest node's growth).
async fn hold(args: &BenchArgs, drivers: Vec<Driver>) -> Result<BenchReport, String> {
    let rss0 = max_rss(&args.pids)?;
    let sessions = open_many(&drivers, args.sessions, TTL).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss1 = max_rss(&args.pids)?;
    let shared = Arc::new(Shared::new(1));
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut held_all = Vec::new();
    let mut first = 0;
    for (i, (d, list)) in drivers.iter().cloned().zip(sessions.iter().cloned()).enumerate() {
        let shared = shared.clone();
        let n = share(args.locks, drivers.len(), i);
        first += n;
        let first = first - n;
        tasks.push(tokio::spawn(async move {
            let mut local = histogram();
            let mut held = Vec::with_capacity(n);
            let results: Vec<(Result<Option<Held>, String>, Duration)> = stream::iter(first..first + n)
                .map(|k| {
                    let d = d.clone();
                    let s = list[k % list.len()].clone();
                    async move {
                        let t0 = Instant::now();
                        (d.lock(&s, &format!("bench-hold-{k}"), None).await, t0.elapsed())
                    }
                })
                .buffer_unordered(16)
                .collect()
                .await;
            for (r, latency) in results {
                match r {
                    Ok(Some(h)) => {
                        let _ = local.record(latency.as_micros().max(1) as u64);
                        held.push(h);
                    }
                    Ok(None) => shared.error("a lock nobody else holds was not granted".into()),
                    Err(e) => shared.error(e),
                }
            }
            let _ = shared.hist.lock().expect("hist lock").add(&local);
            held
        }));
    }
    for t in tasks {
        held_all.push(t.await.map_err(|e| e.to_string())?);
    }
    let taking = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss2 = max_rss(&args.pids)?;
    let held: usize = held_all.iter().map(Vec::len).sum();
    // The locks go with their sessions; dropping the guards would release each one by one.
    for list in held_all {
        std::mem::forget(list);
    }
    close_many(&drivers, sessions).await;
    let mut extra = serde_json::Map::new();
    extra.insert("sessions".into(), args.sessions.into());
    extra.insert("locks".into(), held.into());
    extra.insert("rss_before_mib".into(), round1(rss0 as f64 / 1048576.0).into());
    extra.insert("rss_after_mib".into(), round1(rss2 as f64 / 1048576.0).into());
    extra.insert("bytes_per_session".into(), (rss1.saturating_sub(rss0) / args.sessions as u64).into());
    extra.insert("bytes_per_lock".into(), (rss2.saturating_sub(rss1) / held.max(1) as u64).into());
    Ok(shared.report(args, held as f64 / taking, extra))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_and_differ_by_at_most_one() {
        for (total, n) in [(2000, 64), (10, 3), (5, 5), (7, 10), (1_000_000, 64)] {
            let parts: Vec<usize> = (0..n).map(|i| share(total, n, i)).collect();
            assert_eq!(parts.iter().sum::<usize>(), total);
            assert!(parts.iter().max().unwrap() - parts.iter().min().unwrap() <= 1, "{parts:?}");
        }
    }

    #[test]
    fn zipf_prefers_low_ranks_and_stays_in_range() {
        let z = Zipf::new(HOT_SET_NAMES);
        let mut rng = Rng::new(7);
        let mut counts = vec![0u32; HOT_SET_NAMES];
        for _ in 0..100_000 {
            counts[z.sample(&mut rng)] += 1;
        }
        // Zipf(1) over 10k names: rank 1 gets ~10% of draws, rank 2 half of that.
        assert!((8_000..12_000).contains(&counts[0]), "{}", counts[0]);
        assert!((counts[1] as f64 / counts[0] as f64 - 0.5).abs() < 0.1);
        assert!(counts[HOT_SET_NAMES / 2..].iter().sum::<u32>() > 0);
    }

    fn args(workload: &str) -> BenchArgs {
        BenchArgs {
            target: Target::Baton,
            endpoints: vec!["127.0.0.1:1".into()],
            workload: workload.into(),
            clients: 4,
            duration: Duration::from_secs(1),
            sessions: 10,
            locks: 10,
            pids: vec![],
            connections: 0,
        }
    }

    #[test]
    fn bad_arguments_are_refused_with_the_reason() {
        assert!(validate(&args("uncontended")).is_ok());
        assert!(validate(&args("nope")).unwrap_err().contains("unknown workload"));
        assert!(validate(&args("hold")).unwrap_err().contains("--pids"));
        let mut a = args("keepalive-scale");
        a.sessions = 2;
        assert!(validate(&a).unwrap_err().contains("at least --clients"));
        a.clients = 0;
        assert!(validate(&a).unwrap_err().contains("--clients"));
    }
}
