//! The simulator in `cargo test`: a fixed set of seeds with every fault on must find nothing,
//! a seed must replay bit for bit, and every deliberately broken variant must be caught.

use baton_sim::{run, Bugs, Faults, SimConfig};

fn assert_clean(cfg: &SimConfig, seeds: std::ops::Range<u64>) {
    for seed in seeds {
        let r = run(cfg, seed);
        assert!(r.grants > 0, "seed {seed}: the workload made no progress");
        if let Some(v) = r.violations.first() {
            let tail = r.trace.iter().rev().take(40).rev().cloned().collect::<Vec<_>>().join("\n");
            panic!("seed {seed} ({} nodes): {} violated: {}\n{tail}", cfg.nodes, v.property, v.detail);
        }
    }
}

#[test]
fn three_nodes_all_faults() {
    assert_clean(&SimConfig::default(), 0..12);
}

#[test]
fn five_nodes_all_faults() {
    assert_clean(&SimConfig { nodes: 5, clients: 7, ..SimConfig::default() }, 100..106);
}

/// Sharded: four data groups, sessions spanning them, and slot moves between them under every
/// fault (the nemesis asks the meta leader to move random slot ranges).
#[test]
fn four_groups_with_slot_moves_all_faults() {
    let cfg = SimConfig { groups: 4, ..SimConfig::default() };
    let mut moved = 0;
    for seed in 0..8 {
        assert_clean(&cfg, seed..seed + 1);
        moved += run(&cfg, seed).coverage.slot_moves;
    }
    assert!(moved > 0, "no slot moved in eight runs");
}

/// The checkers catch the slot-move mistakes: a destination that does not raise its token
/// counter to the source's (fencing), and a source that goes on serving what it handed off
/// (two groups grant the same name: caught as two holders, or as a counter that two groups
/// both answer); and followers that never wake from a sleeping leader's notice (hibernation),
/// which never elect a new leader (liveness).
#[test]
fn slot_move_bugs_are_caught() {
    // The first of 40 seeds whose first violation is one of `properties` (which checker fires
    // first in a seed shifts with every change to the histories: see above).
    let caught_first_by = |bug: &str, properties: &[&str]| {
        let cfg = SimConfig { groups: 4, bugs: Bugs::parse(bug).unwrap(), ..SimConfig::default() };
        (0..40).find(|seed| run(&cfg, *seed).violations.first().is_some_and(|v| properties.contains(&v.property)))
    };
    assert!(caught_first_by("takeover-ignores-token-floor", &["fencing"]).is_some());
    assert!(caught_first_by("handoff-keeps-serving", &["mutual-exclusion", "linearizability"]).is_some());
    // Hibernation: followers that never wake from a sleeping leader's notice never elect.
    assert!(caught_first_by("sleeper-never-wakes", &["liveness"]).is_some());
}

/// Membership changes: a spare node joins (as `--join`), members are added and removed, under
/// every fault and with slot moves; and a joiner that starts from the wrong state is caught by
/// the agreement checker.
#[test]
fn membership_changes_all_faults() {
    let cfg = SimConfig { groups: 4, spares: 1, ..SimConfig::default() };
    // Eight seeds at least, and on until one has changed the membership (about a third of runs
    // do: the nemesis asks a node at random, which is not always the meta leader).
    let mut changed = 0;
    for seed in 0..24 {
        assert_clean(&cfg, seed..seed + 1);
        changed += run(&cfg, seed).coverage.members_changed;
        if seed >= 7 && changed > 0 {
            break;
        }
    }
    assert!(changed > 0, "no membership change in 24 runs");
    let broken = SimConfig { bugs: Bugs::parse("joiner-starts-empty").unwrap(), ..cfg };
    let found = (0..40).find_map(|seed| run(&broken, seed).violations.first().map(|v| (seed, v.property)));
    assert_eq!(found.map(|(_, p)| p), Some("agreement"), "{found:?}");
}

/// Seeds that found real bugs, kept as regressions: 841 and 868 (a node answered its own
/// request with the outcome of another node's entry carrying the same request id), 1199 and
/// 1509 (a deposed leader that had not noticed acknowledged keepalives).
#[test]
fn regression_seeds() {
    for seed in [841, 868, 1199, 1509] {
        assert_clean(&SimConfig::default(), seed..seed + 1);
    }
}

#[test]
fn no_faults_is_clean_and_busy() {
    let cfg = SimConfig { faults: Faults::default(), ..SimConfig::default() };
    let r = run(&cfg, 7);
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert!(r.grants > 100, "only {} grants in a fault-free run", r.grants);
}

#[test]
fn a_seed_replays_bit_for_bit() {
    let cfg = SimConfig { keep_trace: true, ..SimConfig::default() };
    let a = run(&cfg, 42);
    let b = run(&cfg, 42);
    assert_eq!(a.trace, b.trace);
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.steps, b.steps);
    let c = run(&cfg, 43);
    assert_ne!(a.trace_hash, c.trace_hash, "different seeds gave the same history");
}

/// Runs a broken variant over seeds until one is caught (at most 100; most bugs are caught by
/// the first few) and returns that seed with the properties it violated (in the order found).
fn caught(bug: &str, snapshot_entries: u64) -> Option<(u64, Vec<&'static str>)> {
    let cfg = SimConfig { bugs: Bugs::parse(bug).unwrap(), snapshot_entries, ..SimConfig::default() };
    (0..100).find_map(|seed| {
        let r = run(&cfg, seed);
        (!r.violations.is_empty()).then(|| (seed, r.violations.iter().map(|v| v.property).collect()))
    })
}

/// Runs a broken variant over seeds (at most 100) until one whose first violation is
/// `property`'s, and returns that seed.
fn first_caught_by(bug: &str, property: &str, snapshot_entries: u64) -> Option<u64> {
    let cfg = SimConfig { bugs: Bugs::parse(bug).unwrap(), snapshot_entries, ..SimConfig::default() };
    (0..100).find(|seed| run(&cfg, *seed).violations.first().is_some_and(|v| v.property == property))
}

/// Every checker is proven by a planted bug that it catches before any other checker does, in
/// one of the first 100 seeds. (Which checker fires first in a given seed shifts whenever the
/// histories change — a new message, a new fault — so the test looks for a seed rather than
/// pinning one. The restarted-token bug is caught by agreement and fencing alike, so it proves
/// neither alone: `token-reuse-on-handoff` proves fencing.)
#[test]
fn every_checker_catches_its_planted_bug() {
    for (bug, property) in [
        ("follower-drops-events", "agreement"),
        ("token-reuse-on-handoff", "fencing"),
        ("wakeup-ignores-session", "durability"),
        ("grant-ignores-queue", "mutual-exclusion"),
        ("follower-expiry", "mutual-exclusion"),
        ("acquire-never-resent", "liveness"),
        ("stale-reads", "linearizability"),
        ("barrier-trips-early", "barrier"),
        ("register-read-cache", "register"),
        ("latch-timeout-passes", "latch"),
        ("acquire-retry-new-id", "once"),
        ("values-ignore-kind", "one-kind"),
        ("proclaim-ignores-token", "election"),
        ("latch-opens-early", "latch"),
        ("etcd-watch-skips-deletes", "etcd"),
        ("etcd-put-twice", "etcd"),
    ] {
        let seed = first_caught_by(bug, property, 300);
        assert!(seed.is_some(), "--bug {bug}: {property} never caught it first in 100 seeds");
    }
    // Fencing checks what the log granted, not what agreement checks: with the one bug that
    // breaks tokens without breaking replicas, it is the only checker that fires.
    let (_, found) = caught("token-reuse-on-handoff", 300).unwrap();
    assert!(found.iter().all(|p| *p == "fencing"), "{found:?}");
}

/// The etcd keyspace's checker sees reads served from a stale replica (the read path's planted
/// bug breaks the keyspace's reads as it does Baton's own).
#[test]
fn stale_etcd_reads_are_caught_by_the_etcd_checker() {
    let cfg = SimConfig { bugs: Bugs::parse("stale-reads").unwrap(), ..SimConfig::default() };
    let seed = (0..100).find(|seed| run(&cfg, *seed).violations.iter().any(|v| v.property == "etcd"));
    assert!(seed.is_some(), "stale etcd reads went unseen in 100 seeds");
}

#[test]
fn reusing_tokens_after_a_restart_is_caught() {
    let found = caught("token-reset-on-restart", 50);
    assert!(matches!(found.as_ref().map(|(_, p)| p[0]), Some("agreement" | "fencing")), "{found:?}");
}

/// The leases' safety rests on a clock bound: a leader whose clock jumps forward by more than
/// the client's margin (TTL/10) expires sessions early. The checker must see that.
#[test]
fn clock_jumps_beyond_the_lease_margin_are_caught() {
    let faults = Faults { clock: true, ..Faults::default() };
    let within = SimConfig { faults, ..SimConfig::default() };
    assert_clean(&within, 0..5);
    let cfg = SimConfig { faults, max_jump_ms: 1_500, ..SimConfig::default() };
    // An early expiry shows as two holders at once; some seeds show it first as a read that
    // missed a write (the linearizability checker), which is the same fault seen elsewhere.
    // (The search stops at the first seed that shows it: seed 41 since the etcd workload joined
    // the mix and changed every history.)
    let found = (0..100).find(|seed| run(&cfg, *seed).violations.iter().any(|v| v.property == "mutual-exclusion"));
    assert!(found.is_some(), "no seed in 0..100 caught clock jumps beyond the margin as two holders");
}

/// Lease reads (`baton_node::lease_read_ms`: the followers' vote-refusal window less the clock
/// and reading-age allowances, 705 ms with the defaults) stay linearizable and keep leases
/// exclusive under every fault, clock drift and jumps included; a lease longer than the
/// election timeout lets a deposed leader answer stale reads, and the checker must see that.
#[test]
fn lease_reads_are_safe_within_the_timeout_and_caught_beyond_it() {
    let lease = baton_node::lease_read_ms(baton_node::DEFAULT_ELECTION_TICKS, SimConfig::default().tick_ms);
    assert_eq!(lease, 705);
    let cfg = SimConfig { lease_read_ms: lease, ..SimConfig::default() };
    assert_clean(&cfg, 0..8);
    let faults = Faults { partition: true, ..Faults::default() };
    let too_long = SimConfig { lease_read_ms: 6_000, faults, ..SimConfig::default() };
    // Seed 205 is the first to catch it (a partition leaves the old leader serving lease reads
    // while the new one accepts writes); the range starts near it to keep debug runs short.
    let found = (200..300).find_map(|seed| run(&too_long, seed).violations.first().map(|v| (seed, v.property)));
    assert!(found.is_some(), "no seed caught a lease longer than the election timeout");
}

/// Every client a user of its own (authentication on), under every fault and with four groups:
/// nothing else changes, and a client's tries to close another user's session are all refused;
/// a state machine that lets them through is caught by the `ownership` checker.
#[test]
fn users_never_act_for_each_other() {
    let cfg = SimConfig { users: true, groups: 4, ..SimConfig::default() };
    assert_clean(&cfg, 0..8);
    let broken = SimConfig { bugs: Bugs::parse("session-owner-ignored").unwrap(), ..cfg };
    let found = (0..40).find_map(|seed| run(&broken, seed).violations.first().map(|v| (seed, v.property)));
    assert_eq!(found.map(|(_, p)| p), Some("ownership"), "{found:?}");
}
