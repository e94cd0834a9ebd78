//! Runs a target on generated cases for a bounded time or number of cases, and replays saved
//! inputs.
//!
//! Cases run on a worker thread while the calling thread watches the clock: a case still
//! running after [`Bounds::case_time`] is a hang (the worker is left behind, stuck; the
//! caller reports and the binary exits). A case that finishes but took longer, panicked, or
//! allocated more than [`Bounds::case_bytes`] at once is a failure too. Panic messages are
//! captured by a hook instead of printed, but only for the worker's cases: panics elsewhere in
//! the process print as usual.

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, Once};
use std::time::{Duration, Instant};

use crate::mutate::{mutate, Rng};
use crate::{alloc, Source, Target};

/// Limits of one run.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Stop after this long...
    pub time: Duration,
    /// ...or after this many cases, whichever comes first.
    pub cases: u64,
    /// A case taking longer than this is a hang.
    pub case_time: Duration,
    /// A case with more bytes allocated at once than this allocates without bound.
    pub case_bytes: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            time: Duration::from_secs(10),
            cases: u64::MAX,
            case_time: Duration::from_secs(2),
            case_bytes: 256 << 20,
        }
    }
}

/// Why a case failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// It panicked, with this message and location.
    Panic(String),
    /// It ran longer than the bound (and may never have returned).
    Hang(Duration),
    /// It had this many bytes allocated at once.
    Memory(usize),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Panic(m) => write!(f, "panic: {m}"),
            Failure::Hang(d) => write!(f, "hang: a case ran for {} ms", d.as_millis()),
            Failure::Memory(b) => write!(f, "memory: a case had {} MiB allocated at once", b >> 20),
        }
    }
}

/// What a run of one target did.
#[derive(Debug)]
pub struct Report {
    /// The target's name.
    pub target: &'static str,
    /// Cases run (the failing one included).
    pub cases: u64,
    /// How long the run took.
    pub elapsed: Duration,
    /// The first failure and its input, if any (the run stops there).
    pub failure: Option<(Failure, Vec<u8>)>,
}

thread_local! {
    /// Set while the worker runs a case: its panics are captured, not printed.
    static IN_CASE: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<String> = const { RefCell::new(String::new()) };
}

fn install_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if IN_CASE.with(Cell::get) {
                let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
                let msg = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(non-string panic)".into());
                LAST_PANIC.with(|p| *p.borrow_mut() = format!("{msg}{at}"));
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `run` on `input` once, catching a panic and measuring time and allocation.
pub fn run_case(run: fn(&[u8]), input: &[u8], bounds: &Bounds) -> Result<(), Failure> {
    install_hook();
    let baseline = alloc::start_case();
    let started = Instant::now();
    IN_CASE.with(|c| c.set(true));
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| run(input)));
    IN_CASE.with(|c| c.set(false));
    let took = started.elapsed();
    if outcome.is_err() {
        return Err(Failure::Panic(LAST_PANIC.with(|p| p.borrow().clone())));
    }
    if took > bounds.case_time {
        return Err(Failure::Hang(took));
    }
    let peak = alloc::peak_since(baseline);
    if peak > bounds.case_bytes {
        return Err(Failure::Memory(peak));
    }
    Ok(())
}

/// Makes the cases of one target: random bytes, fresh valid encodings, and mutations of a
/// pool of valid encodings (refreshed as the run goes).
struct Cases {
    rng: Rng,
    generate: fn(&mut Source) -> Vec<u8>,
    pool: Vec<Vec<u8>>,
}

impl Cases {
    fn new(seed: u64, generate: fn(&mut Source) -> Vec<u8>) -> Cases {
        let mut cases = Cases { rng: Rng::new(seed), generate, pool: Vec::new() };
        for _ in 0..32 {
            let fresh = cases.fresh();
            cases.pool.push(fresh);
        }
        cases
    }

    fn fresh(&mut self) -> Vec<u8> {
        let len = 16 << self.rng.below(7);
        let choices = self.rng.bytes(len);
        (self.generate)(&mut Source::new(&choices))
    }

    fn next(&mut self) -> Vec<u8> {
        match self.rng.below(10) {
            0 => {
                let len = self.rng.below(256);
                self.rng.bytes(len)
            }
            1 | 2 => {
                let fresh = self.fresh();
                let slot = self.rng.below(self.pool.len());
                self.pool[slot] = fresh.clone();
                fresh
            }
            _ => {
                let mut input = self.pool[self.rng.below(self.pool.len())].clone();
                let other = &self.pool[self.rng.below(self.pool.len())];
                mutate(&mut self.rng, &mut input, other);
                input
            }
        }
    }
}

/// Runs `target` on generated cases from `seed` within `bounds`; stops at the first failure.
pub fn run(target: &Target, seed: u64, bounds: Bounds) -> Report {
    let name = target.name;
    let (run, generate) = (target.run, target.generate);
    // The case in progress, for the watchdog: its start (ns after `origin`, 0 when idle) and
    // its input.
    let origin = Instant::now();
    let started = Arc::new(AtomicU64::new(0));
    let current = Arc::new(Mutex::new(Vec::new()));
    let (done_tx, done_rx) = mpsc::channel();
    let (worker_started, worker_current) = (started.clone(), current.clone());
    std::thread::Builder::new()
        .name(format!("fuzz-{name}"))
        // tokio's worker threads, where the decoders run in production, have 2 MiB.
        .stack_size(2 << 20)
        .spawn(move || {
            let mut cases = Cases::new(seed, generate);
            let mut count = 0;
            let mut failure = None;
            while count < bounds.cases && origin.elapsed() < bounds.time {
                let input = cases.next();
                worker_current.lock().expect("case lock").clone_from(&input);
                worker_started.store(origin.elapsed().as_nanos() as u64 + 1, Ordering::SeqCst);
                let result = run_case(run, &input, &bounds);
                worker_started.store(0, Ordering::SeqCst);
                count += 1;
                if let Err(f) = result {
                    failure = Some((f, input));
                    break;
                }
            }
            let _ = done_tx.send((count, failure));
        })
        .expect("spawn the fuzz worker");
    loop {
        match done_rx.recv_timeout(Duration::from_millis(100)) {
            Ok((cases, failure)) => return Report { target: name, cases, elapsed: origin.elapsed(), failure },
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let since = started.load(Ordering::SeqCst);
                let running = origin.elapsed().saturating_sub(Duration::from_nanos(since));
                if since != 0 && running > bounds.case_time {
                    let input = current.lock().map(|c| c.clone()).unwrap_or_default();
                    let failure = Some((Failure::Hang(running), input));
                    return Report { target: name, cases: 0, elapsed: origin.elapsed(), failure };
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let failure = Some((Failure::Panic("the worker thread died".into()), Vec::new()));
                return Report { target: name, cases: 0, elapsed: origin.elapsed(), failure };
            }
        }
    }
}

/// Hex of `bytes`, lowercase, no separators.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of a hex string (whitespace ignored).
pub fn from_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return Err("an odd number of hex digits".into());
    }
    let digit = |d: u8| (d as char).to_digit(16).ok_or_else(|| format!("{:?} is not a hex digit", d as char));
    digits.chunks(2).map(|p| Ok((digit(p[0])? * 16 + digit(p[1])?) as u8)).collect()
}

/// A saved input: the line `target NAME`, then the input in hex.
pub fn save(path: &Path, target: &str, input: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, format!("target {target}\n{}\n", to_hex(input)))
}

/// Reads a file written by [`save`]: the target's name and the input.
pub fn load(path: &Path) -> Result<(String, Vec<u8>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (first, rest) = text.split_once('\n').unwrap_or((&text, ""));
    let name = first.strip_prefix("target ").ok_or_else(|| format!("{}: no `target NAME` line", path.display()))?;
    Ok((name.trim().to_string(), from_hex(rest).map_err(|e| format!("{}: {e}", path.display()))?))
}
