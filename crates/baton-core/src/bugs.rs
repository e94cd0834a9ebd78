//! Deliberate bugs, for proving that the simulator's checkers catch real mistakes.
//!
//! Every flag is off by default and nothing in the server or CLI turns one on; only the
//! simulator's "broken variant" runs do (`baton sim --bug ...`). Each flag reproduces a classic
//! lock-service mistake in the smallest possible change, and each checker of the simulator has
//! at least one flag that it, in particular, catches (see `crates/baton-sim/tests/seeds.rs`).

use serde::{Deserialize, Serialize};

/// Which deliberate bugs are on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bugs {
    /// Acquire grants a held lock anyway, without consulting holder or queue (mutual exclusion).
    pub grant_ignores_queue: bool,
    /// A restarted node forgets the token counter (tokens are reused after a restart).
    pub token_reset_on_restart: bool,
    /// Followers expire sessions on their own clock, without seeing keepalives.
    pub follower_expiry: bool,
    /// Any node answers reads from its own state at once, without ReadIndex (stale reads).
    pub stale_reads: bool,
    /// A grant from the queue reuses the token of the holder it replaces, on every replica
    /// alike (fencing, and nothing else).
    pub token_reuse_on_handoff: bool,
    /// Followers drop the last event of every entry they apply: replicas disagree on what an
    /// index did, though clients (answered by leaders) see nothing wrong (agreement).
    pub follower_drops_events: bool,
    /// A queued acquire is answered by the grant of any session's request with the same name
    /// and request id (request ids are per client, not global): a client is told it holds what
    /// another session was granted (durability).
    pub wakeup_ignores_session: bool,
    /// The client never sends an unanswered acquire again: one lost message (or a node that
    /// crashed with it) leaves it waiting forever (liveness).
    pub acquire_never_resent: bool,
    /// A barrier trips when one party fewer than asked has arrived (barrier).
    pub barrier_trips_early: bool,
    /// The client answers half its register reads from the version it saw last, without asking
    /// (register).
    pub register_read_cache: bool,
    /// The client takes a latch wait that timed out as passed (latch).
    pub latch_timeout_passes: bool,
    /// The client sends an unanswered acquire again under a new request id, so one call can be
    /// granted twice (once).
    pub acquire_retry_new_id: bool,
    /// Counters and registers do not check what else their name is in use as (one-kind).
    pub values_ignore_kind: bool,
    /// A proclaim is accepted from any session that holds nothing, with any token (election).
    pub proclaim_ignores_token: bool,
    /// A latch lets its waiters pass when its count reaches one, not zero (latch).
    pub latch_opens_early: bool,
    /// A slot move's destination keeps its own token counter instead of raising it to the
    /// source's: a moved name can be granted a token below one it had (fencing; needs groups).
    pub takeover_ignores_token_floor: bool,
    /// A slot move's source hands the range's state over but goes on serving its slots: a moved
    /// name is free again at the source while the destination has its holder (mutual
    /// exclusion; needs groups).
    pub handoff_keeps_serving: bool,
    /// A node given a new replica starts it from an empty state instead of the group's initial
    /// one, and replays the log on top: the replica disagrees with the others (agreement; needs
    /// membership changes).
    pub joiner_starts_empty: bool,
    /// A follower that got one notice that its leader's group sleeps stops ticking that group
    /// for good: when the leader's node fails, nobody campaigns (liveness; needs idle groups).
    pub sleeper_never_wakes: bool,
    /// A watch replaying the etcd keyspace's history skips deletions (watch exactly-once).
    pub etcd_watch_skips_deletes: bool,
    /// An etcd put is applied twice (two revisions): what a retried write that was in fact
    /// applied looks like (etcd checker: each value once).
    pub etcd_put_twice: bool,
    /// A command for a user acting for another user's session is applied (authentication on:
    /// ownership).
    pub session_owner_ignored: bool,
    /// A CRDT replica adds a peer's counter state to its own instead of joining it: every
    /// repeated delivery counts again (CRDT convergence).
    pub crdt_merge_not_idempotent: bool,
    /// A CRDT replica answers and gossips an update before its write is durable: a crash can
    /// lose an acknowledged update and hand its dot out again (CRDT durability).
    pub crdt_answer_before_write: bool,
    /// A CRDT replica takes a peer's state as proof that it has seen every dot up to the
    /// highest one the state names, gaps included: an add it never received counts as removed
    /// (the analogue of collecting a tombstone too early; CRDT durability and convergence).
    pub crdt_context_claims_unseen: bool,
    /// A converged read answers once any one peer reports the updates, not every live one
    /// (CRDT converged read).
    pub crdt_converged_answers_early: bool,
    /// A session read is answered from the local state without waiting for the session's
    /// token (CRDT session).
    pub crdt_session_ignores_token: bool,
    /// A bounded counter's subtraction is allowed whenever the value covers it, spending other
    /// nodes' rights (CRDT bounded).
    pub crdt_bounded_spends_value: bool,
    /// A CRDT replica answers a converged read's probe without writing what it merged first
    /// (CRDT converged read: what it reports may be lost by a crash).
    pub crdt_probe_reply_before_write: bool,
    /// A CRDT replica applies a session's update without waiting for the session's token
    /// (CRDT session: an insert then a remove on two nodes resurrects; LWW writes reorder).
    pub crdt_update_ignores_token: bool,
    /// A CRDT replica joins peers' set and MV-register deltas as they arrive, not once their
    /// causal past is here (CRDT causal: a replaced value stays visible next to the update
    /// that replaced it).
    pub crdt_deltas_out_of_order: bool,
    /// A CRDT replica drops the objects of slots it no longer owns at once, without handing
    /// them to their owners (CRDT durability: updates only it had are lost).
    pub crdt_drop_before_handoff: bool,
    /// A CRDT replica that dropped a handed-off object and owns it again makes updates to it
    /// without waiting for its own earlier dots to come back (a dot issued twice).
    pub crdt_dropped_forgets_dots: bool,
}

/// Picks one flag out of a [`Bugs`].
type Flag = fn(&mut Bugs) -> &mut bool;

/// The command-line names of the bugs, with the flag each sets.
const TABLE: [(&str, Flag); 33] = [
    ("grant-ignores-queue", |b| &mut b.grant_ignores_queue),
    ("token-reset-on-restart", |b| &mut b.token_reset_on_restart),
    ("follower-expiry", |b| &mut b.follower_expiry),
    ("stale-reads", |b| &mut b.stale_reads),
    ("token-reuse-on-handoff", |b| &mut b.token_reuse_on_handoff),
    ("follower-drops-events", |b| &mut b.follower_drops_events),
    ("wakeup-ignores-session", |b| &mut b.wakeup_ignores_session),
    ("acquire-never-resent", |b| &mut b.acquire_never_resent),
    ("barrier-trips-early", |b| &mut b.barrier_trips_early),
    ("register-read-cache", |b| &mut b.register_read_cache),
    ("latch-timeout-passes", |b| &mut b.latch_timeout_passes),
    ("acquire-retry-new-id", |b| &mut b.acquire_retry_new_id),
    ("values-ignore-kind", |b| &mut b.values_ignore_kind),
    ("proclaim-ignores-token", |b| &mut b.proclaim_ignores_token),
    ("latch-opens-early", |b| &mut b.latch_opens_early),
    ("takeover-ignores-token-floor", |b| &mut b.takeover_ignores_token_floor),
    ("handoff-keeps-serving", |b| &mut b.handoff_keeps_serving),
    ("joiner-starts-empty", |b| &mut b.joiner_starts_empty),
    ("sleeper-never-wakes", |b| &mut b.sleeper_never_wakes),
    ("etcd-watch-skips-deletes", |b| &mut b.etcd_watch_skips_deletes),
    ("etcd-put-twice", |b| &mut b.etcd_put_twice),
    ("session-owner-ignored", |b| &mut b.session_owner_ignored),
    ("crdt-merge-not-idempotent", |b| &mut b.crdt_merge_not_idempotent),
    ("crdt-answer-before-write", |b| &mut b.crdt_answer_before_write),
    ("crdt-context-claims-unseen", |b| &mut b.crdt_context_claims_unseen),
    ("crdt-converged-answers-early", |b| &mut b.crdt_converged_answers_early),
    ("crdt-session-ignores-token", |b| &mut b.crdt_session_ignores_token),
    ("crdt-bounded-spends-value", |b| &mut b.crdt_bounded_spends_value),
    ("crdt-probe-reply-before-write", |b| &mut b.crdt_probe_reply_before_write),
    ("crdt-update-ignores-token", |b| &mut b.crdt_update_ignores_token),
    ("crdt-deltas-out-of-order", |b| &mut b.crdt_deltas_out_of_order),
    ("crdt-drop-before-handoff", |b| &mut b.crdt_drop_before_handoff),
    ("crdt-dropped-forgets-dots", |b| &mut b.crdt_dropped_forgets_dots),
];

impl Bugs {
    /// The bug called `name` on the command line (one of [`Bugs::names_known`]).
    pub fn parse(name: &str) -> Result<Bugs, String> {
        let mut bugs = Bugs::default();
        let (_, flag) = TABLE.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            format!("unknown bug {name:?} (known: {})", Bugs::names_known().collect::<Vec<_>>().join(", "))
        })?;
        *flag(&mut bugs) = true;
        Ok(bugs)
    }

    /// Every bug's command-line name.
    pub fn names_known() -> impl Iterator<Item = &'static str> {
        TABLE.iter().map(|(n, _)| *n)
    }

    /// The command-line names of the bugs that are on.
    pub fn names(&self) -> Vec<&'static str> {
        let mut copy = *self;
        TABLE.iter().filter(|(_, flag)| *flag(&mut copy)).map(|(n, _)| *n).collect()
    }
}
