//! The client's rules, without I/O: the one copy that both the async client and the simulator's
//! client run, so that what the simulator checks is what ships.
//!
//! # What is here
//! - [`Lease`]: a session's lease as the client sees it, across the groups it has records in —
//!   valid until the earliest, over those groups, of the *send time* of the last acknowledged
//!   renewal plus the TTL less a drift margin of a tenth of the TTL.
//! - [`SlotMap`] and [`Routes`]: which group serves a name, and which node to ask for a group.
//! - [`Renewals`]: when to send the next renewal (every TTL/3), and when an unanswered one is
//!   given up ([`answer_timeout_ms`]), which moves the client to another node.
//! - [`Route`]: which node the client talks to — the leader a redirect named, else the next
//!   endpoint in turn.
//! - [`ErrorClass`] → [`decide`]: what one failed attempt means for a request of a given
//!   [`Repeat`] (see [`Op::repeat`] for which operations are idempotent).
//! - [`RequestIds`]: request ids that grow for the life of the process and start above those of
//!   an earlier run of it.
//!
//! # Time
//! Every function takes time as a number of milliseconds on the caller's monotonic clock (any
//! origin): the async client counts from an `Instant` it took at start, the simulator passes
//! its virtual clock, jumps and drift included. Nothing here reads a clock or draws a random
//! number.
//!
//! # Caveats
//! - The drift margin only covers clock *rate* differences (and forward jumps of the leader's
//!   clock) smaller than TTL/10 over one TTL; a paused client notices nothing until it runs
//!   again, which is why fencing tokens exist.

use std::sync::atomic::{AtomicU64, Ordering};

mod lease;
mod routes;

pub use lease::{lease_span_ms, Lease};
pub use routes::{Routes, SlotMap};

/// How often renewals are sent for sessions of this TTL.
pub fn renew_interval_ms(ttl_ms: u64) -> u64 {
    (ttl_ms / 3).max(100)
}

/// How long one renewal may wait for an answer before the node is given up: half a renewal
/// interval, so that a stopped node is left with two thirds of the lease still to go, but never
/// less than what a loaded leader's heartbeat round needs.
pub fn answer_timeout_ms(ttl_ms: u64) -> u64 {
    (renew_interval_ms(ttl_ms) / 2).clamp(200, 2_000)
}

/// The pause before the next keepalive stream after one failed: none if moving on reached a
/// leader the client was told of, else a short one (an election in progress, every node tried).
pub fn renew_pause_ms(redirected: bool) -> u64 {
    if redirected {
        0
    } else {
        50
    }
}

/// What the renewal schedule wants now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renew {
    /// Send a renewal now (it is recorded as in flight, sent now).
    Send,
    /// The renewal in flight went unanswered too long: give the node up (move on, see
    /// [`Route::moved_on`]); the next renewal is due at once.
    GiveUp,
    /// Nothing to do before this time.
    Wait(u64),
}

/// The renewal schedule of one keepalive stream: one renewal in flight at a time, the next due
/// a renewal interval after the last was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Renewals {
    ttl_ms: u64,
    next_ms: u64,
    in_flight: Option<u64>,
    /// Renew every [`HURRY_INTERVAL_MS`] until this time (see [`Renewals::hurry`]).
    hurry_until_ms: u64,
}

/// The renewal interval while a failover may be under way (see [`Renewals::hurry`]).
pub const HURRY_INTERVAL_MS: u64 = 250;

impl Renewals {
    /// A schedule for sessions of `ttl_ms` (the shortest, if several) whose first renewal is
    /// due at `first_ms`.
    pub fn new(ttl_ms: u64, first_ms: u64) -> Renewals {
        Renewals { ttl_ms, next_ms: first_ms, in_flight: None, hurry_until_ms: 0 }
    }

    /// Another node stopped answering at `now_ms`: the groups it led get new leaders elsewhere,
    /// and each new leader must see a renewal soon after its election, before the lease's
    /// margin runs out. Until a TTL from now, renew every [`HURRY_INTERVAL_MS`] (at once, if
    /// the next renewal is later than that).
    pub fn hurry(&mut self, now_ms: u64) {
        self.hurry_until_ms = self.hurry_until_ms.max(now_ms + self.ttl_ms);
        self.next_ms = self.next_ms.min(now_ms + HURRY_INTERVAL_MS);
    }

    /// True while renewals hurry (see [`Renewals::hurry`]).
    pub fn hurrying(&self, now_ms: u64) -> bool {
        now_ms < self.hurry_until_ms
    }

    /// What to do at `now_ms`.
    pub fn poll(&mut self, now_ms: u64) -> Renew {
        if let Some(sent) = self.in_flight {
            let give_up = sent + answer_timeout_ms(self.ttl_ms);
            if now_ms < give_up {
                return Renew::Wait(give_up);
            }
            self.in_flight = None;
            self.next_ms = now_ms;
            return Renew::GiveUp;
        }
        if now_ms < self.next_ms {
            return Renew::Wait(self.next_ms);
        }
        self.in_flight = Some(now_ms);
        let interval = renew_interval_ms(self.ttl_ms);
        self.next_ms = now_ms + if self.hurrying(now_ms) { interval.min(HURRY_INTERVAL_MS) } else { interval };
        Renew::Send
    }

    /// A session with a shorter TTL joined: renew as often as it needs from now on (the next
    /// renewal moves earlier by the difference of the intervals).
    pub fn shorten_ttl(&mut self, ttl_ms: u64) {
        if ttl_ms < self.ttl_ms {
            let earlier = renew_interval_ms(self.ttl_ms) - renew_interval_ms(ttl_ms);
            self.next_ms = self.next_ms.saturating_sub(earlier);
            self.ttl_ms = ttl_ms;
        }
    }

    /// When [`Renewals::poll`] next has something to do.
    pub fn next_ms(&self) -> u64 {
        match self.in_flight {
            Some(sent) => sent + answer_timeout_ms(self.ttl_ms),
            None => self.next_ms,
        }
    }

    /// The send time of the renewal in flight, if any.
    pub fn in_flight(&self) -> Option<u64> {
        self.in_flight
    }

    /// The renewal in flight was answered (acknowledged or not): returns its send time, the
    /// instant an acknowledgement extends the lease from.
    pub fn answered(&mut self) -> Option<u64> {
        self.in_flight.take()
    }

    /// The renewal in flight failed with an error at `now_ms`: the next is due at once (after
    /// the caller moved on as [`decide`] says).
    pub fn failed(&mut self, now_ms: u64) {
        self.in_flight = None;
        self.next_ms = now_ms;
    }
}

/// Which node the client talks to: one current address, the leader as far as it knows.
#[derive(Clone, Debug)]
pub struct Route<A> {
    endpoints: Vec<A>,
    current: A,
    /// The endpoint that rotation moves to next.
    next_index: usize,
}

impl<A: Clone + PartialEq> Route<A> {
    /// A route over `endpoints` (not empty), starting at the one at `start` (modulo their number).
    pub fn new(endpoints: Vec<A>, start: usize) -> Route<A> {
        assert!(!endpoints.is_empty(), "a route needs at least one endpoint");
        let i = start % endpoints.len();
        Route { current: endpoints[i].clone(), next_index: i + 1, endpoints }
    }

    /// The address requests go to.
    pub fn current(&self) -> &A {
        &self.current
    }

    /// The configured endpoints.
    pub fn endpoints(&self) -> &[A] {
        &self.endpoints
    }

    /// Replaces the endpoints rotation goes through (the nodes a topology lists); the current
    /// address stays.
    pub fn set_endpoints(&mut self, endpoints: Vec<A>) {
        if !endpoints.is_empty() {
            self.endpoints = endpoints;
        }
    }

    /// An attempt at `failed` did not succeed: move to `leader` (from a redirect) if given, else
    /// to the next endpoint in turn (so a node that does not answer is left behind). Nothing
    /// changes if another caller already moved on. Returns true if the client now points at a
    /// leader it was told of, or somewhere another caller chose (worth trying at once).
    pub fn moved_on(&mut self, failed: &A, leader: Option<A>) -> bool {
        if self.current != *failed {
            return true;
        }
        if let Some(leader) = leader.filter(|l| l != failed) {
            self.current = leader;
            return true;
        }
        let i = self.next_index % self.endpoints.len();
        self.next_index = i + 1;
        self.current = self.endpoints[i].clone();
        false
    }
}

/// What one failed attempt was, whatever the transport: the async client sorts a gRPC status
/// (its typed `ErrorInfo`, else its code) into one, the simulator a `baton_node::NodeError`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorClass<A> {
    /// The node does not lead: nothing was applied. `leader`: the one it named, if any.
    NotLeader {
        /// The leader's address, from the redirect.
        leader: Option<A>,
    },
    /// The group asked does not serve the name's slot (the client's map is stale, or the slot
    /// is being moved): nothing was applied. `group` serves it by the answering node's map of
    /// `version` (0: nobody right now); `leader` leads it, if known.
    Moved {
        /// The group serving the slot now (0: none, a move is under way).
        group: u64,
        /// The version of the map that says so.
        version: u64,
        /// That group's leader, if known.
        leader: Option<A>,
    },
    /// The leader is overloaded: nothing was applied; try it again after a pause.
    Busy,
    /// The node answered that the request may have been applied (leadership changed with it in
    /// flight, the node is stopping).
    MayHaveApplied,
    /// No answer came (timeout, broken connection): it may have been applied.
    NoAnswer,
    /// The request never left this process: nothing was applied.
    NotSent,
    /// The server refused it (bad input, a limit, not the holder, the wrong kind, ...): nothing
    /// changed, and the same request would be refused again.
    Refused,
    /// The server refused a retry older than its session's window of remembered outcomes: it
    /// was not applied again, but the first attempt may have been, and repeating it is refused
    /// the same way.
    Forgotten,
}

/// How an operation may be retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repeat {
    /// A read: repeat freely; running out of time means "unreachable".
    Read,
    /// A write that is harmless to repeat (same request id, or idempotent by nature).
    Idempotent,
    /// A write that must not apply twice: sent again only when it certainly was not applied.
    Once,
}

/// Every operation of the client, for [`Op::repeat`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Open a session (one request id for every attempt: a retry returns the same session).
    OpenSession,
    /// Close a session (closing a closed session changes nothing).
    CloseSession,
    /// Give a session a record in another group (attaching twice is attaching once).
    AttachSession,
    /// Acquire / wait (by its request id: never queues twice).
    Acquire,
    /// Release by token (a second release is refused and changes nothing).
    Release,
    /// Cancel a wait by its request id.
    Cancel,
    /// Publish an election value (the same value twice is the same state).
    Proclaim,
    /// Give a latch its count, unless it has one.
    LatchSet,
    /// Count a latch down (twice would count twice).
    LatchCountDown,
    /// Add to a counter.
    CounterAdd,
    /// Compare-and-set a counter (a repeat after success would compare against its own write).
    CounterCas,
    /// Write or delete a register (conditional or not: a repeat could apply twice).
    RegisterSet,
    /// Any read: keepalive, describe, counter or register get, status.
    Read,
    /// A coordination-free update whose repeat has no further effect (a set's insert or
    /// remove).
    CrdtSame,
    /// A coordination-free update whose repeat would count again (counters) or write later
    /// (registers).
    CrdtOnce,
    /// Begin a slot move (a repeat would be refused, or begin another).
    MoveSlots,
    /// Add or remove a member (a repeat finds it done).
    ChangeMembers,
}

impl Op {
    /// How this operation may be retried.
    pub fn repeat(self) -> Repeat {
        match self {
            Op::Read => Repeat::Read,
            Op::OpenSession
            | Op::CloseSession
            | Op::AttachSession
            | Op::Acquire
            | Op::Release
            | Op::Cancel
            | Op::ChangeMembers
            | Op::CrdtSame => Repeat::Idempotent,
            // Setting a latch is not harmless to repeat: between the two, count-downs may have
            // taken it to zero (and it is forgotten then), and the repeat would set it again. A
            // late repeat of a proclaim could publish an older value over a newer one (both
            // found by review).
            Op::Proclaim
            | Op::LatchSet
            | Op::LatchCountDown
            | Op::CounterAdd
            | Op::CounterCas
            | Op::RegisterSet
            | Op::MoveSlots
            | Op::CrdtOnce => Repeat::Once,
        }
    }
}

/// Whether to pause before the next attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backoff {
    /// Go again at once (the attempt already cost a timeout).
    No,
    /// Pause first (no leader yet, overload, a node losing leadership or unreachable).
    Yes,
    /// Pause unless moving on reached a leader the client was told of.
    UnlessRedirected,
}

impl Backoff {
    /// True to pause, given whether [`Route::moved_on`] reached a named leader.
    pub fn pause(self, redirected: bool) -> bool {
        match self {
            Backoff::No => false,
            Backoff::Yes => true,
            Backoff::UnlessRedirected => !redirected,
        }
    }
}

/// The first pause of a call's retries.
pub const FIRST_BACKOFF_MS: u64 = 20;

/// The pause after one of `ms`: doubling, up to half a second.
pub fn next_backoff_ms(ms: u64) -> u64 {
    (ms * 2).min(500)
}

/// How long one attempt of a call may go unanswered: `attempt_ms`, plus the wait of a waiting
/// acquire (the server answers a wait when it ends), but no more than `max_attempt_ms` (a longer
/// wait is sent again, with the same request id, so that a hung node cannot hold it forever).
pub fn attempt_timeout_ms(wait_ms: u64, attempt_ms: u64, max_attempt_ms: u64) -> u64 {
    (wait_ms + attempt_ms).min(max_attempt_ms.max(attempt_ms))
}

/// What to do after a failed attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision<A> {
    /// Send it again: move on first ([`Route::moved_on`] with `leader`) unless `stay`.
    Retry {
        /// The leader a redirect named.
        leader: Option<A>,
        /// Stay on this node (it leads, and is only overloaded).
        stay: bool,
        /// Whether to pause before the next attempt.
        backoff: Backoff,
        /// This attempt may have been applied (an idempotent repeat follows): running out of
        /// time is then "outcome unknown", not "unreachable".
        maybe_applied: bool,
    },
    /// Stop: the server refused it; report the refusal.
    Refused,
    /// Stop: it may or may not have applied, and it must not be repeated.
    OutcomeUnknown,
}

/// The decision on a failed attempt of an operation that repeats as `repeat`.
pub fn decide<A>(class: ErrorClass<A>, repeat: Repeat) -> Decision<A> {
    let retry = |leader, stay, backoff, maybe_applied| Decision::Retry { leader, stay, backoff, maybe_applied };
    match class {
        ErrorClass::Refused => Decision::Refused,
        ErrorClass::Forgotten => Decision::OutcomeUnknown,
        ErrorClass::NotLeader { leader: None } => retry(None, false, Backoff::Yes, false),
        ErrorClass::NotLeader { leader } => retry(leader, false, Backoff::UnlessRedirected, false),
        // The caller records where the slot went (SlotMap::moved) before asking again.
        ErrorClass::Moved { group: 0, .. } | ErrorClass::Moved { leader: None, .. } => {
            retry(None, true, Backoff::Yes, false)
        }
        ErrorClass::Moved { leader, .. } => retry(leader, false, Backoff::UnlessRedirected, false),
        ErrorClass::Busy => retry(None, true, Backoff::Yes, false),
        ErrorClass::NotSent => retry(None, false, Backoff::Yes, false),
        ErrorClass::MayHaveApplied | ErrorClass::NoAnswer if repeat == Repeat::Once => Decision::OutcomeUnknown,
        // A node that said so is losing leadership or stopping: give the cluster a moment. One
        // that did not answer has cost enough time already.
        ErrorClass::MayHaveApplied => retry(None, false, Backoff::Yes, repeat == Repeat::Idempotent),
        ErrorClass::NoAnswer => retry(None, false, Backoff::No, repeat == Repeat::Idempotent),
    }
}

/// The request ids of one client process: unique and growing for its whole life, starting
/// above the ids of an earlier run (see [`request_id_seed`]).
#[derive(Debug)]
pub struct RequestIds(AtomicU64);

impl RequestIds {
    /// Ids starting at `first`.
    pub fn starting_at(first: u64) -> RequestIds {
        RequestIds(AtomicU64::new(first.max(1)))
    }

    /// The next id.
    pub fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

/// The first request id of a process started at `micros` (a clock that a restart does not set
/// back): 256 ids per microsecond of the previous run's life before they could meet.
pub fn request_id_seed(micros: u64) -> u64 {
    micros << 8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewals_go_every_third_of_the_ttl_and_an_unanswered_one_is_given_up() {
        let mut r = Renewals::new(3_000, 1_000);
        assert_eq!(r.poll(0), Renew::Wait(1_000));
        assert_eq!(r.poll(1_000), Renew::Send);
        assert_eq!(r.poll(1_100), Renew::Wait(1_500), "one in flight: wait for its answer");
        assert_eq!(r.answered(), Some(1_000));
        assert_eq!(r.poll(1_200), Renew::Wait(2_000));
        assert_eq!(r.poll(2_000), Renew::Send);
        assert_eq!(r.poll(2_500), Renew::GiveUp);
        assert_eq!(r.poll(2_500), Renew::Send, "the next goes at once, to the next node");
        r.failed(2_600);
        assert_eq!(r.poll(2_600), Renew::Send);
        assert_eq!(r.answered(), Some(2_600));
        // A failover elsewhere: every 250 ms for a TTL, then back to every TTL/3.
        r.hurry(2_700);
        assert_eq!(r.poll(2_700), Renew::Wait(2_950));
        assert_eq!(r.poll(2_950), Renew::Send);
        r.answered();
        assert_eq!(r.poll(3_000), Renew::Wait(3_200));
        assert!(r.hurrying(5_699) && !r.hurrying(5_700));
        r.poll(5_800);
        r.answered();
        assert_eq!(r.poll(5_800), Renew::Wait(6_800));
    }

    #[test]
    fn the_route_follows_redirects_and_rotates_past_silent_nodes() {
        let mut route = Route::new(vec![1u64, 2, 3], 1);
        assert_eq!(*route.current(), 2);
        assert!(route.moved_on(&2, Some(1)));
        assert_eq!(*route.current(), 1);
        assert!(route.moved_on(&3, None), "someone else moved on already");
        assert!(!route.moved_on(&1, Some(1)), "a redirect to the failed node is no redirect");
        assert_eq!(*route.current(), 3);
        assert!(!route.moved_on(&3, None));
        assert_eq!(*route.current(), 1);
    }

    #[test]
    fn only_what_is_harmless_to_repeat_is_repeated_after_an_ambiguous_failure() {
        let retry = |leader, stay, backoff, maybe_applied| Decision::Retry { leader, stay, backoff, maybe_applied };
        assert_eq!(decide::<u64>(ErrorClass::NoAnswer, Op::CounterAdd.repeat()), Decision::OutcomeUnknown);
        assert_eq!(decide::<u64>(ErrorClass::MayHaveApplied, Op::LatchCountDown.repeat()), Decision::OutcomeUnknown);
        // Found by review: a repeated latch set after count-downs took it to zero sets it again.
        assert_eq!(decide::<u64>(ErrorClass::MayHaveApplied, Op::LatchSet.repeat()), Decision::OutcomeUnknown);
        // A retry older than the session's window: maybe applied once, refused ever after.
        assert_eq!(decide::<u64>(ErrorClass::Forgotten, Op::Acquire.repeat()), Decision::OutcomeUnknown);
        assert_eq!(decide::<u64>(ErrorClass::NoAnswer, Op::Acquire.repeat()), retry(None, false, Backoff::No, true));
        assert_eq!(
            decide::<u64>(ErrorClass::MayHaveApplied, Op::Read.repeat()),
            retry(None, false, Backoff::Yes, false)
        );
        assert_eq!(
            decide::<u64>(ErrorClass::NotSent, Op::RegisterSet.repeat()),
            retry(None, false, Backoff::Yes, false)
        );
        assert_eq!(
            decide(ErrorClass::NotLeader { leader: Some(2u64) }, Op::CounterCas.repeat()),
            retry(Some(2), false, Backoff::UnlessRedirected, false)
        );
        assert_eq!(decide::<u64>(ErrorClass::Busy, Op::CounterAdd.repeat()), retry(None, true, Backoff::Yes, false));
        assert_eq!(decide::<u64>(ErrorClass::Refused, Op::Acquire.repeat()), Decision::Refused);
    }

    #[test]
    fn request_ids_grow_and_a_later_run_starts_above() {
        let ids = RequestIds::starting_at(request_id_seed(5));
        let (a, b) = (ids.next(), ids.next());
        assert!(b > a);
        assert!(request_id_seed(6) > a + 200);
    }
}
