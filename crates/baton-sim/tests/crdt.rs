//! The coordination-free tier's simulation: clean runs under every fault have no violation, and
//! every checker catches the planted bug meant for it.

use baton_sim::{run_crdt, Bugs, CrdtSimConfig};

fn seeds(cfg: &CrdtSimConfig, n: u64) -> Vec<baton_sim::CrdtSimReport> {
    (1..=n).map(|seed| run_crdt(cfg, seed)).collect()
}

#[test]
fn clean_runs_under_every_fault_converge_and_lose_nothing() {
    let cfg = CrdtSimConfig::default();
    for r in seeds(&cfg, 12) {
        assert!(r.violations.is_empty(), "seed {}: {:?}", r.seed, r.violations);
        assert!(r.acked_updates > 50, "seed {}: only {} updates acknowledged", r.seed, r.acked_updates);
        assert!(r.reads.iter().all(|&n| n > 5), "seed {}: reads {:?}", r.seed, r.reads);
        assert!(r.crashes > 0 && r.dropped > 0 && r.duplicated > 0, "seed {}: faults not exercised: {r:?}", r.seed);
    }
}

#[test]
fn a_seed_replays_exactly() {
    let cfg = CrdtSimConfig::default();
    let (a, b) = (run_crdt(&cfg, 7), run_crdt(&cfg, 7));
    assert_eq!((a.steps, a.acked_updates, a.dropped, a.reads), (b.steps, b.acked_updates, b.dropped, b.reads));
}

/// Five nodes, five groups of three, ranges moving all the time.
fn placed() -> CrdtSimConfig {
    CrdtSimConfig { nodes: 5, groups: 5, clients: 8, ..CrdtSimConfig::default() }
}

#[test]
fn objects_follow_their_slots_owners_through_moves() {
    let cfg = placed();
    for r in seeds(&cfg, 6) {
        assert!(r.violations.is_empty(), "seed {}: {:?}", r.seed, r.violations);
        assert!(r.moves > 0 && r.not_owned > 0 && r.handed_off > 0, "seed {}: placement not exercised: {r:?}", r.seed);
    }
}

#[test]
fn dropping_before_the_hand_off_is_caught() {
    caught_with(placed(), "crdt-drop-before-handoff", "crdt-durability", 10);
}

#[test]
fn a_node_that_forgets_its_dropped_dots_is_caught() {
    caught_with(placed(), "crdt-dropped-forgets-dots", "crdt-dots", 60);
}

/// The checker `property` catches `bug` within `n` seeds.
fn caught(bug: &str, property: &str, n: u64) {
    caught_with(CrdtSimConfig::default(), bug, property, n);
}

fn caught_with(cfg: CrdtSimConfig, bug: &str, property: &str, n: u64) {
    let cfg = CrdtSimConfig { bugs: Bugs::parse(bug).unwrap(), ..cfg };
    let hit = (1..=n).map(|seed| run_crdt(&cfg, seed)).find(|r| r.violations.iter().any(|v| v.property == property));
    assert!(hit.is_some(), "{property} never caught {bug} in {n} seeds");
}

#[test]
fn a_merge_that_is_not_idempotent_is_caught() {
    caught("crdt-merge-not-idempotent", "crdt-convergence", 5);
    caught("crdt-merge-not-idempotent", "crdt-durability", 5);
}

#[test]
fn answering_before_the_write_is_caught() {
    caught("crdt-answer-before-write", "crdt-durability", 60);
}

#[test]
fn a_context_that_claims_unseen_dots_is_caught() {
    caught("crdt-context-claims-unseen", "crdt-durability", 20);
}

#[test]
fn a_converged_read_that_answers_early_is_caught() {
    caught("crdt-converged-answers-early", "crdt-converged-read", 30);
}

#[test]
fn a_session_read_that_ignores_its_token_is_caught() {
    caught("crdt-session-ignores-token", "crdt-session", 30);
}

#[test]
fn a_bounded_counter_that_spends_others_rights_is_caught() {
    caught("crdt-bounded-spends-value", "crdt-bounded", 10);
}

#[test]
fn a_probe_answered_before_its_write_is_caught() {
    caught("crdt-probe-reply-before-write", "crdt-converged-read", 30);
}

#[test]
fn an_update_that_ignores_its_sessions_token_is_caught() {
    let cfg = CrdtSimConfig { bugs: Bugs::parse("crdt-update-ignores-token").unwrap(), ..CrdtSimConfig::default() };
    let hit = (1..=60)
        .map(|seed| run_crdt(&cfg, seed))
        .find(|r| r.violations.iter().any(|v| v.property == "crdt-session" || v.detail.contains("whose last update")));
    assert!(hit.is_some(), "session order never checked");
}

#[test]
fn deltas_joined_before_their_causal_past_are_caught() {
    caught("crdt-deltas-out-of-order", "crdt-causal", 10);
}

#[test]
#[ignore]
fn print_stats() {
    for r in seeds(&CrdtSimConfig::default(), 12) {
        println!(
            "seed {} acked {} reads {:?} crashes {} dropped {} dup {} steps {} violations {:?}",
            r.seed,
            r.acked_updates,
            r.reads,
            r.crashes,
            r.dropped,
            r.duplicated,
            r.steps,
            r.violations.iter().map(|v| v.property).collect::<Vec<_>>()
        );
    }
}

#[test]
fn throughput_grows_with_the_nodes() {
    // The same clients per node, a processor cost per round and per input: every node takes
    // its own clients' updates, so throughput grows nearly linearly (gossip adds a few inputs
    // per round and peer).
    let cost = baton_sim::Cost { round_us: 40, per_input_us: 20 };
    let one = baton_sim::crdt_throughput(1, 8, cost, 2, 1);
    let five = baton_sim::crdt_throughput(5, 8, cost, 2, 1);
    assert!(one > 1_000.0, "{one}");
    assert!(five > 4.0 * one, "5 nodes: {five} updates/s, 1 node: {one}");
}
