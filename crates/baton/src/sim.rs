//! `baton sim`: simulation campaigns and single-seed replays.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use baton_sim::{
    crdt_throughput, run, run_crdt, Bugs, Cost, Coverage, CrdtSimConfig, CrdtSimReport, Faults, SimConfig, SimReport,
};

/// Arguments of `baton sim`.
pub struct SimArgs {
    pub seeds: u64,
    pub start_seed: u64,
    pub seed: Option<u64>,
    pub nodes: usize,
    pub clients: usize,
    pub faults: String,
    pub bug: Option<String>,
    pub trace: bool,
    pub fault_ms: u64,
    pub heal_ms: u64,
    pub lease_reads: bool,
    pub groups: u64,
    pub membership: bool,
    pub users: bool,
    pub crdt: bool,
    pub throughput: bool,
}

fn config(args: &SimArgs) -> Result<SimConfig, String> {
    if ![1, 3, 5, 7].contains(&args.nodes) {
        return Err("--nodes must be 1, 3, 5 or 7".into());
    }
    if args.clients == 0 || args.clients > 100 {
        return Err("--clients must be 1..=100".into());
    }
    if args.groups == 0 || args.groups > 64 {
        return Err("--groups must be 1..=64".into());
    }
    let bugs = args.bug.as_deref().map(Bugs::parse).transpose()?.unwrap_or_default();
    Ok(SimConfig {
        nodes: args.nodes,
        clients: args.clients,
        faults: Faults::parse(&args.faults)?,
        bugs,
        // Small snapshots make restarts go through snapshot recovery often (0: drawn per run).
        snapshot_entries: if bugs.token_reset_on_restart { 50 } else { SimConfig::default().snapshot_entries },
        fault_ms: args.fault_ms,
        heal_ms: args.heal_ms,
        keep_trace: args.trace,
        // As the server sets it.
        lease_read_ms: if args.lease_reads {
            baton_node::lease_read_ms(baton_node::DEFAULT_ELECTION_TICKS, SimConfig::default().tick_ms)
        } else {
            0
        },
        groups: args.groups,
        spares: usize::from(args.membership),
        users: args.users,
        ..SimConfig::default()
    })
}

/// Prints the first violation of a failed run and the trace leading up to it (replaying the
/// seed with the whole trace kept, which is cheap and exact).
fn print_failure(cfg: &SimConfig, r: &SimReport, lines: usize) {
    let v = &r.violations[0];
    println!("seed {}: {} violated at {:.3}s: {}", r.seed, v.property, v.at as f64 / 1e6, v.detail);
    if r.violations.len() > 1 {
        println!("  (+{} more violations in this run)", r.violations.len() - 1);
    }
    if lines > 0 {
        let full = run(&SimConfig { keep_trace: true, ..cfg.clone() }, r.seed);
        let before: Vec<&String> = full
            .trace
            .iter()
            .filter(|l| {
                l.split_whitespace()
                    .next()
                    .and_then(|t| t.trim_end_matches('s').parse::<f64>().ok())
                    .is_some_and(|t| t * 1e6 <= v.at as f64)
            })
            .collect();
        for line in before.iter().rev().take(lines).rev() {
            println!("  | {line}");
        }
    }
    println!("  replay: baton sim --seed {} --trace{}", r.seed, replay_flags(cfg));
}

fn replay_flags(cfg: &SimConfig) -> String {
    let mut f = String::new();
    if cfg.nodes != 3 {
        f.push_str(&format!(" --nodes {}", cfg.nodes));
    }
    if cfg.clients != SimConfig::default().clients {
        f.push_str(&format!(" --clients {}", cfg.clients));
    }
    if cfg.faults != Faults::all() {
        let x = cfg.faults;
        let names: Vec<&str> = [
            (x.loss, "loss"),
            (x.duplicate, "duplicate"),
            (x.delay, "delay"),
            (x.partition, "partition"),
            (x.crash, "crash"),
            (x.pause, "pause"),
            (x.clock, "clock"),
            (x.disk, "disk"),
        ]
        .into_iter()
        .filter_map(|(on, n)| on.then_some(n))
        .collect();
        f.push_str(&format!(" --faults {}", if names.is_empty() { "none".to_string() } else { names.join(",") }));
    }
    for name in cfg.bugs.names() {
        f.push_str(&format!(" --bug {name}"));
    }
    if cfg.lease_read_ms > 0 {
        f.push_str(" --lease-reads");
    }
    f
}

/// How many runs of a campaign went through each path, and how often.
#[derive(Default)]
struct CoverageTally {
    /// (runs in which it happened, times in all) per path, in `Coverage` field order.
    paths: [(u64, u64); 13],
}

impl CoverageTally {
    fn add(&mut self, c: &Coverage) {
        let counts = [
            c.snapshots_taken,
            c.restarts_from_snapshot,
            c.snapshots_installed,
            c.crashes,
            c.torn_writes,
            c.slot_moves,
            c.members_changed,
            c.sleep_notices,
            c.etcd_writes,
            c.etcd_watched,
            c.etcd_compacted,
            c.etcd_watch_restarts,
            c.etcd_record_gaps,
        ];
        for (tally, n) in self.paths.iter_mut().zip(counts) {
            tally.0 += u64::from(n > 0);
            tally.1 += n;
        }
    }

    fn summary(&self, runs: u64) -> String {
        let names = [
            "snapshot taken",
            "restart from a snapshot",
            "snapshot sent to a follower",
            "crash",
            "torn write",
            "slot move",
            "membership change",
            "sleep notice",
            "etcd write acknowledged",
            "etcd change watched",
            "etcd compaction",
            "etcd watch restarted by a compaction",
            "etcd history gap (unchecked)",
        ];
        let parts: Vec<String> = names
            .iter()
            .zip(self.paths)
            .map(|(name, (runs_with, total))| format!("{name}: {runs_with}/{runs} runs ({total} in all)"))
            .collect();
        format!("coverage: {}", parts.join("; "))
    }
}

/// The processor cost the throughput model charges: per round, and per input of a round.
/// Of the order this machine measures for a node (docs/BENCHMARKS.md); only the shape of the
/// curve matters, not the figures.
const COST: Cost = Cost { round_us: 40, per_input_us: 20 };

/// `baton sim --crdt --throughput`: acknowledged updates per virtual second against node count,
/// with the same clients per node and a processor cost per round and per input.
fn crdt_throughput_table(args: &SimArgs) -> ExitCode {
    let per_node = args.clients.max(1);
    let secs = (args.fault_ms / 1000).max(1);
    println!("nodes clients updates_per_s per_node scaling_vs_1_node");
    let mut base = None;
    for nodes in [1, 3, 5, 7] {
        let rate = crdt_throughput(nodes, per_node, COST, secs, args.seed.unwrap_or(1));
        let one = *base.get_or_insert(rate);
        println!("{nodes} {} {rate:.0} {:.0} {:.2}", nodes * per_node, rate / nodes as f64, rate / one);
    }
    ExitCode::SUCCESS
}

/// `baton sim --crdt`: a campaign (or one seed) of the coordination-free tier's simulation.
fn crdt_main(args: &SimArgs) -> ExitCode {
    if args.throughput {
        return crdt_throughput_table(args);
    }
    let cfg = match (Faults::parse(&args.faults), args.bug.as_deref().map(Bugs::parse).transpose()) {
        (Ok(faults), Ok(bugs)) => CrdtSimConfig {
            nodes: args.nodes,
            clients: args.clients,
            fault_ms: args.fault_ms,
            heal_ms: args.heal_ms,
            faults,
            bugs: bugs.unwrap_or_default(),
            groups: args.groups as usize,
            ..CrdtSimConfig::default()
        },
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("baton: {e}");
            return ExitCode::from(64);
        }
    };
    let started = Instant::now();
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.start_seed..args.start_seed + args.seeds).collect(),
    };
    let next = AtomicU64::new(0);
    let done = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(&seed) = seeds.get(i) else { return };
                let r = run_crdt(&cfg, seed);
                done.lock().expect("results").push(r);
            });
        }
    });
    let mut done = done.into_inner().expect("results");
    done.sort_by_key(|r| r.seed);
    let failed: Vec<&CrdtSimReport> = done.iter().filter(|r| !r.violations.is_empty()).collect();
    for r in failed.iter().take(5) {
        for v in r.violations.iter().take(3) {
            println!("seed {}: {} violated at {:.3}s: {}", r.seed, v.property, v.at as f64 / 1e6, v.detail);
        }
        println!("  replay: baton sim --crdt --seed {}", r.seed);
    }
    let sum = |f: fn(&CrdtSimReport) -> u64| done.iter().map(f).sum::<u64>();
    println!(
        "coverage: updates acknowledged {}; reads local {} session {} converged {}; crashes {}; messages dropped {}, duplicated {}",
        sum(|r| r.acked_updates),
        sum(|r| r.reads[0]),
        sum(|r| r.reads[1]),
        sum(|r| r.reads[2]),
        sum(|r| r.crashes),
        sum(|r| r.dropped),
        sum(|r| r.duplicated)
    );
    if cfg.groups > 1 {
        println!(
            "placement: {} groups; moves {}; requests refused (not an owner) {}; objects handed off and dropped {}",
            cfg.groups,
            sum(|r| r.moves),
            sum(|r| r.not_owned),
            sum(|r| r.handed_off)
        );
    }
    let rate = done.len() as f64 / started.elapsed().as_secs_f64();
    println!("runs={} violations={} seeds_per_s={rate:.1}", done.len(), failed.len());
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Runs the command.
pub fn main(args: SimArgs) -> ExitCode {
    if args.crdt {
        return crdt_main(&args);
    }
    let cfg = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("baton: {e}");
            return ExitCode::from(64);
        }
    };
    let started = Instant::now();
    if let Some(seed) = args.seed {
        let r = run(&cfg, seed);
        if args.trace {
            for line in &r.trace {
                println!("{line}");
            }
        }
        if !r.violations.is_empty() {
            print_failure(&cfg, &r, if args.trace { 0 } else { 30 });
        }
        let bad = u64::from(!r.violations.is_empty());
        println!("runs=1 violations={bad} seeds_per_s={:.1}", 1.0 / started.elapsed().as_secs_f64());
        return if bad == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) };
    }
    let next = AtomicU64::new(args.start_seed);
    let end = args.start_seed + args.seeds;
    let failed = Mutex::new(Vec::new());
    let covered = Mutex::new(CoverageTally::default());
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    return;
                }
                let r = run(&cfg, seed);
                covered.lock().expect("coverage").add(&r.coverage);
                if !r.violations.is_empty() {
                    failed.lock().expect("failed list").push(r);
                }
            });
        }
    });
    let mut failed = failed.into_inner().expect("failed list");
    failed.sort_by_key(|r| r.seed);
    for r in failed.iter().take(5) {
        print_failure(&cfg, r, 30);
    }
    if failed.len() > 5 {
        let rest: Vec<String> = failed[5..].iter().map(|r| r.seed.to_string()).collect();
        println!("also failed: seeds {}", rest.join(", "));
    }
    println!("{}", covered.into_inner().expect("coverage").summary(args.seeds));
    let rate = args.seeds as f64 / started.elapsed().as_secs_f64();
    println!("runs={} violations={} seeds_per_s={rate:.1}", args.seeds, failed.len());
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
