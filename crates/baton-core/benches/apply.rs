//! `cargo bench -p baton-core`: what the replicated state machine costs per operation, apart
//! from Raft, disks and networks. Prints ns per lock+unlock cycle (uncontended and handed over
//! to a waiter), and the time and size of a snapshot of 100,000 held locks. Figures only; no
//! assertions on speed (docs/BENCHMARKS.md).

use std::time::Instant;

use baton_core::{AcquireRequest, Command, Entry, Limits, Outcome, StateMachine};

struct Log {
    sm: StateMachine,
    index: u64,
    events: Vec<baton_core::Event>,
}

impl Log {
    fn new() -> Log {
        Log { sm: StateMachine::new(Limits::default()), index: 0, events: Vec::new() }
    }

    fn apply(&mut self, command: Command) -> Outcome {
        self.index += 1;
        self.events.clear();
        let entry = Entry::new(self.index / 1000, self.index, command);
        self.sm.apply(self.index, &entry, &mut self.events).expect("applies")
    }

    fn session(&mut self) -> u64 {
        match self.apply(Command::OpenSession { client: "bench".into(), ttl_ms: 60_000, request_id: 0 }) {
            Outcome::SessionOpened { session, .. } => session,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn token(outcome: &Outcome) -> u64 {
    match outcome {
        Outcome::Granted { token } => *token,
        other => panic!("expected a grant, got {other:?}"),
    }
}

fn report(what: &str, n: u64, started: Instant) {
    let ns = started.elapsed().as_nanos() as f64 / n as f64;
    println!("{what}: {ns:.0} ns per op ({:.0} ops/s on one core)", 1e9 / ns);
}

fn main() {
    let cycles = 200_000u64;
    // Uncontended: 64 sessions, each locking and unlocking its own name.
    let mut log = Log::new();
    let sessions: Vec<u64> = (0..64).map(|_| log.session()).collect();
    let names: Vec<String> = (0..64).map(|i| format!("bench-{i}")).collect();
    let started = Instant::now();
    for i in 0..cycles {
        let k = (i % 64) as usize;
        let granted = log.apply(Command::Acquire(AcquireRequest::exclusive(&names[k], sessions[k], i + 1, None)));
        let token = token(&granted);
        log.apply(Command::Release { name: names[k].clone(), session: sessions[k], token });
    }
    report("uncontended lock+unlock cycle (2 commands)", cycles, started);

    // Contended: 16 sessions queued on one name; every release hands over to the next waiter.
    let mut log = Log::new();
    let sessions: Vec<u64> = (0..16).map(|_| log.session()).collect();
    let mut holder = token(&log.apply(Command::Acquire(AcquireRequest::exclusive("hot", sessions[0], 1, None))));
    for (i, s) in sessions.iter().enumerate().skip(1) {
        log.apply(Command::Acquire(AcquireRequest::exclusive("hot", *s, i as u64 + 1, Some(60_000))));
    }
    let mut current = 0usize;
    let started = Instant::now();
    for i in 0..cycles {
        // The holder releases (the next waiter is granted in the same command) and queues again.
        log.apply(Command::Release { name: "hot".into(), session: sessions[current], token: holder });
        log.apply(Command::Acquire(AcquireRequest::exclusive("hot", sessions[current], 1_000 + i, Some(60_000))));
        current = (current + 1) % sessions.len();
        holder = log.sm.lock("hot").and_then(|l| l.holders.first()).map(|h| h.token).expect("a holder");
    }
    report("contended handoff (release + re-queue, 2 commands)", cycles, started);

    // Snapshot of 100,000 held locks over 10,000 sessions.
    let mut log = Log::new();
    let sessions: Vec<u64> = (0..10_000).map(|_| log.session()).collect();
    for k in 0..100_000u64 {
        let s = sessions[(k % 10_000) as usize];
        log.apply(Command::Acquire(AcquireRequest::exclusive(format!("held-{k}"), s, k + 1, None)));
    }
    let started = Instant::now();
    let bytes = log.sm.to_snapshot();
    let took = started.elapsed();
    let started = Instant::now();
    let restored = StateMachine::from_snapshot(&bytes).expect("restores");
    let restore = started.elapsed();
    assert_eq!(restored.applied_index(), log.sm.applied_index());
    println!(
        "snapshot of 100,000 locks / 10,000 sessions: {:.1} MiB, written in {:.1} ms, restored in {:.1} ms",
        bytes.len() as f64 / 1048576.0,
        took.as_secs_f64() * 1e3,
        restore.as_secs_f64() * 1e3
    );
}
