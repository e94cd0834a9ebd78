//! Deliberate bugs, for proving that the simulator's checkers catch real mistakes.
//!
//! Every flag is off by default and nothing in the server or CLI turns one on; only the
//! simulator's "broken variant" runs do (`baton sim --bug ...`). Each flag reproduces a classic
//! lock-service mistake in the smallest possible change.

use serde::{Deserialize, Serialize};

/// Which deliberate bugs are on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bugs {
    /// Acquire grants a held lock anyway, without consulting holder or queue.
    pub grant_ignores_queue: bool,
    /// A restarted node forgets the token counter (tokens are reused after a restart).
    pub token_reset_on_restart: bool,
    /// Followers expire sessions on their own clock, without seeing keepalives.
    pub follower_expiry: bool,
    /// Any node answers reads from its own state at once, without ReadIndex (stale reads).
    pub stale_reads: bool,
}
