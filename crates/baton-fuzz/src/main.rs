//! `baton-fuzz`: runs the fuzz targets for a bounded time, or replays a saved input.
//!
//! ```sh
//! cargo run --release -p baton-fuzz -- --seconds 600            # every target, 600 s in all
//! cargo run --release -p baton-fuzz -- --target peer-frame --seconds 60 --seed 7
//! cargo run --release -p baton-fuzz -- --replay fuzz-failure-peer-frame.hex
//! ```
//!
//! `--seconds` is the total for the run, shared equally by the targets run. Exits 1 if any
//! target failed (each failure's input is written to `fuzz-failure-TARGET.hex` in the
//! current folder, with the command that replays it), 2 on a usage error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use baton_fuzz::runner::{self, Bounds};
use clap::Parser;

#[global_allocator]
static ALLOC: baton_fuzz::alloc::Counting = baton_fuzz::alloc::Counting;

/// Fuzz Baton's decoders and input surfaces on stable Rust.
#[derive(Parser)]
struct Args {
    /// A target's name, or `all`.
    #[arg(long, default_value = "all")]
    target: String,
    /// Total time for the run, shared equally by the targets.
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// Seed of the case generator (one seed replays a run).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Milliseconds after which a case counts as a hang.
    #[arg(long, default_value_t = 2000)]
    case_ms: u64,
    /// Replay the input saved in this file instead of fuzzing.
    #[arg(long)]
    replay: Option<PathBuf>,
    /// List the targets and exit.
    #[arg(long)]
    list: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let bounds = Bounds { case_time: Duration::from_millis(args.case_ms), ..Bounds::default() };
    if args.list {
        for t in baton_fuzz::all_targets() {
            println!("{:<16} {}", t.name, t.about);
        }
        return ExitCode::SUCCESS;
    }
    if let Some(path) = args.replay {
        return replay(&path, &bounds);
    }
    let targets = if args.target == "all" {
        baton_fuzz::all_targets()
    } else if let Some(t) = baton_fuzz::target(&args.target) {
        vec![t]
    } else {
        let names: Vec<_> = baton_fuzz::all_targets().iter().map(|t| t.name).collect();
        eprintln!("no target {:?}; targets: {}", args.target, names.join(", "));
        return ExitCode::from(2);
    };
    if !(args.seconds.is_finite() && args.seconds > 0.0) {
        eprintln!("--seconds must be a positive number");
        return ExitCode::from(2);
    }
    let each = Duration::from_secs_f64(args.seconds / targets.len() as f64);
    let mut failed = 0;
    for t in &targets {
        // Printed first: a stack overflow aborts the process, and this says where.
        print!("{:<16} ", t.name);
        let _ = std::io::Write::flush(&mut std::io::stdout());
        let report = runner::run(t, args.seed, Bounds { time: each, ..bounds });
        let secs = report.elapsed.as_secs_f64();
        let rate = report.cases as f64 / secs.max(1e-9);
        print!("cases={} seconds={secs:.1} cases_per_s={rate:.0}", report.cases);
        match report.failure {
            None => println!(" ok"),
            Some((failure, input)) => {
                failed += 1;
                let path = PathBuf::from(format!("fuzz-failure-{}.hex", t.name));
                println!(" FAILED\n  {failure}");
                match runner::save(&path, t.name, &input) {
                    Ok(()) => println!(
                        "  input ({} bytes) saved; replay: cargo run --release -p baton-fuzz -- --replay {}",
                        input.len(),
                        path.display()
                    ),
                    Err(e) => println!("  input {} (could not save {}: {e})", runner::to_hex(&input), path.display()),
                }
            }
        }
    }
    println!("targets={} failed={failed} seed={}", targets.len(), args.seed);
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs one saved input through its target.
fn replay(path: &std::path::Path, bounds: &Bounds) -> ExitCode {
    let (name, input) = match runner::load(path) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let Some(target) = baton_fuzz::target(&name) else {
        eprintln!("{}: no target {name:?}", path.display());
        return ExitCode::from(2);
    };
    match runner::run_case(target.run, &input, bounds) {
        Ok(()) => {
            println!("{name}: {} bytes: ok", input.len());
            ExitCode::SUCCESS
        }
        Err(f) => {
            println!("{name}: {} bytes: {f}", input.len());
            ExitCode::FAILURE
        }
    }
}
