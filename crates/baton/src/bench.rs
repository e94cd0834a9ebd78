//! `baton bench`: load generator with HDR-histogram latencies.
//!
//! Workloads (target `baton`):
//! - `uncontended`: each client locks and unlocks its own name, reusing one session; one op is
//!   one lock+unlock cycle, its latency the whole cycle.
//! - `contended`: every client waits for the same name; one op is one grant (a handoff), its
//!   latency the wait from request to grant. The tool checks mutual exclusion and token order
//!   on the client side and reports violations.
//!
//! The run is bounded by `--duration`; every client stops by itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_client::{Client, ClientOptions};
use hdrhistogram::Histogram;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchArgs {
    /// Client addresses.
    pub endpoints: Vec<String>,
    /// Workload name.
    pub workload: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Measured time.
    pub duration: Duration,
}

/// The figures of one run.
#[derive(Debug)]
pub struct BenchReport {
    /// Workload name.
    pub workload: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Completed operations per second.
    pub ops_per_s: f64,
    /// Latency histogram in microseconds.
    pub latency_us: Histogram<u64>,
    /// Failed operations.
    pub errors: u64,
    /// Mutual-exclusion or token-order violations seen (contended only).
    pub violations: u64,
}

impl BenchReport {
    fn ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }

    /// One JSON object with the documented keys.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "target": "baton",
            "workload": self.workload,
            "clients": self.clients,
            "ops_per_s": (self.ops_per_s * 10.0).round() / 10.0,
            "p50_ms": self.ms(0.5),
            "p90_ms": self.ms(0.9),
            "p99_ms": self.ms(0.99),
            "p999_ms": self.ms(0.999),
            "max_ms": self.latency_us.max() as f64 / 1000.0,
            "errors": self.errors,
        });
        if self.workload == "contended" {
            v["handoffs_per_s"] = v["ops_per_s"].clone();
            v["violations"] = self.violations.into();
        }
        v
    }

    /// A line for people.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "baton {} clients={} ops/s={:.0} p50={:.2}ms p90={:.2}ms p99={:.2}ms p99.9={:.2}ms max={:.2}ms errors={}",
            self.workload,
            self.clients,
            self.ops_per_s,
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.99),
            self.ms(0.999),
            self.latency_us.max() as f64 / 1000.0,
            self.errors
        );
        if self.workload == "contended" {
            s.push_str(&format!(" handoffs/s={:.0} violations={}", self.ops_per_s, self.violations));
        }
        s
    }
}

struct Shared {
    hist: Mutex<Histogram<u64>>,
    ops: AtomicU64,
    errors: AtomicU64,
    violations: AtomicU64,
    /// Contended: the worker holding the lock (0 = none) and the last token granted.
    holder: AtomicU64,
    last_token: AtomicU64,
}

/// Runs one workload and returns its figures.
pub async fn run(args: BenchArgs) -> Result<BenchReport, String> {
    if !matches!(args.workload.as_str(), "uncontended" | "contended") {
        return Err(format!("unknown workload {:?} (known: uncontended, contended)", args.workload));
    }
    if args.clients == 0 || args.clients > 10_000 {
        return Err("--clients must be 1..=10000".into());
    }
    let shared = Arc::new(Shared {
        hist: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")),
        ops: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        violations: AtomicU64::new(0),
        holder: AtomicU64::new(0),
        last_token: AtomicU64::new(0),
    });
    // Set-up (connections, sessions) happens before the clock starts.
    let mut sessions = Vec::new();
    for i in 0..args.clients {
        let options = ClientOptions { client_id: format!("bench-{}-{i}", std::process::id()), ..Default::default() };
        let client = Client::connect_with(args.endpoints.clone(), options).await.map_err(|e| e.to_string())?;
        let session = client.session(Duration::from_secs(30)).await.map_err(|e| e.to_string())?;
        sessions.push(session);
    }
    let start = Instant::now();
    let deadline = start + args.duration;
    let mut tasks = Vec::new();
    for (i, session) in sessions.iter().cloned().enumerate() {
        let shared = shared.clone();
        let workload = args.workload.clone();
        let worker = i as u64 + 1;
        tasks.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds");
            let name = if workload == "contended" {
                "bench-contended".to_string()
            } else {
                format!("bench-{}-{worker}", std::process::id())
            };
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let wait = if workload == "contended" {
                    Some(deadline.saturating_duration_since(t0).max(Duration::from_millis(1)))
                } else {
                    None
                };
                let guard = match session.lock(&name, wait).await {
                    Ok(Some(g)) => g,
                    Ok(None) => {
                        // A wait that ends with the run is not an error.
                        if Instant::now() + Duration::from_millis(100) < deadline {
                            shared.errors.fetch_add(1, Ordering::Relaxed);
                        }
                        continue;
                    }
                    Err(_) => {
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                if workload == "contended" {
                    let waited = t0.elapsed();
                    if shared.holder.swap(worker, Ordering::SeqCst) != 0 {
                        shared.violations.fetch_add(1, Ordering::Relaxed);
                    }
                    if shared.last_token.fetch_max(guard.token(), Ordering::SeqCst) >= guard.token() {
                        shared.violations.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = local.record(waited.as_micros().max(1) as u64);
                    shared.holder.store(0, Ordering::SeqCst);
                }
                match guard.release().await {
                    Ok(()) => {
                        if workload == "uncontended" {
                            let _ = local.record(t0.elapsed().as_micros().max(1) as u64);
                        }
                        if Instant::now() <= deadline {
                            shared.ops.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let _ = shared.hist.lock().expect("hist lock").add(&local);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = args.duration.as_secs_f64();
    for s in sessions {
        let _ = s.close().await;
    }
    let latency_us = shared.hist.lock().expect("hist lock").clone();
    Ok(BenchReport {
        workload: args.workload,
        clients: args.clients,
        ops_per_s: shared.ops.load(Ordering::Relaxed) as f64 / elapsed,
        latency_us,
        errors: shared.errors.load(Ordering::Relaxed),
        violations: shared.violations.load(Ordering::Relaxed),
    })
}
