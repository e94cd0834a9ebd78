//! Memory of the replicated state itself, apart from the server around it: applies S session
//! opens and K lock grants (K/S locks per session, names like the bench's `hold` workload) to
//! a bare state machine under a counting allocator, and prints the live heap per session and
//! per lock, and the snapshot size. `cargo run --release -p baton-core --example footprint
//! [SESSIONS] [LOCKS] [attached]` (defaults: 100000 1000000). With `attached`, the sessions are
//! records of sessions homed in other groups (`AttachSession`), as a sharded cluster's groups
//! hold them: `1000000 1000000 attached` is the records of 100,000 sessions holding ten locks
//! each over about ten groups, all groups' state together.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use baton_core::{AcquireRequest, Command, Entry, Limits, Outcome, StateMachine};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().expect("a number"));
    let sessions = args.next().unwrap_or(100_000).max(1);
    let locks = args.next().unwrap_or(1_000_000);
    let attached = std::env::args().nth(3).is_some_and(|a| a == "attached");
    let mut sm = StateMachine::new(Limits::default());
    let mut events = Vec::new();
    let mut index = 0;
    let mut apply = |sm: &mut StateMachine, command: Command| {
        index += 1;
        events.clear();
        sm.apply(index, &Entry::new(index, index, command), &mut events).expect("applies")
    };
    let base = LIVE.load(Ordering::Relaxed);
    let mut ids = Vec::with_capacity(sessions);
    for i in 0..sessions {
        let client = format!("bench-{}-{}", 4242, i % 64);
        // Homed in groups 2..=13, numbered as their homes number them.
        let session = ((i as u64 % 12 + 1) << 48) | (i as u64 / 12 + 1);
        let command = if attached {
            Command::AttachSession { session, client, ttl_ms: 30_000 }
        } else {
            Command::OpenSession { client, ttl_ms: 30_000, request_id: 0 }
        };
        match apply(&mut sm, command) {
            Outcome::SessionOpened { session, .. } => ids.push(session),
            other => panic!("unexpected {other:?}"),
        }
    }
    let after_sessions = LIVE.load(Ordering::Relaxed);
    for k in 0..locks {
        let req = AcquireRequest::exclusive(format!("bench-hold-{k}"), ids[k % sessions], k as u64 + 1, None);
        apply(&mut sm, Command::Acquire(req));
    }
    let after_locks = LIVE.load(Ordering::Relaxed);
    let ids_bytes = ids.capacity() * std::mem::size_of::<u64>();
    let per_session = (after_sessions - base).saturating_sub(ids_bytes) / sessions;
    let per_lock = (after_locks - after_sessions) / locks.max(1);
    let snapshot = sm.to_snapshot().len();
    println!(
        "sessions={sessions} locks={locks} heap_mib={:.1} bytes_per_session={per_session} bytes_per_lock={per_lock} snapshot_mib={:.1}",
        (after_locks - base) as f64 / 1048576.0,
        snapshot as f64 / 1048576.0
    );
}
