//! Size and count limits, checked before a command changes anything.
//!
//! The limits are part of the replicated configuration: every replica must enforce the same
//! ones, or one replica could reject what another applied.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest lock name, in bytes.
pub const MAX_NAME_BYTES: usize = 1024;
/// Longest client identifier, in bytes.
pub const MAX_CLIENT_BYTES: usize = 256;
/// Shortest session TTL.
pub const MIN_TTL_MS: u64 = 1_000;
/// Longest session TTL.
pub const MAX_TTL_MS: u64 = 300_000;
/// Default session TTL.
pub const DEFAULT_TTL_MS: u64 = 10_000;
/// Longest wait for a lock.
pub const MAX_WAIT_MS: u64 = 3_600_000;
/// Longest lock-delay.
pub const MAX_LOCK_DELAY_MS: u64 = 60_000;

/// The count limits of one group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Sessions open at once in the group.
    pub max_sessions: usize,
    /// Sessions open at once per client identifier.
    pub max_sessions_per_client: u32,
    /// Locks one session holds or waits for at once.
    pub max_locks_per_session: usize,
    /// Waiters queued on one lock.
    pub max_waiters_per_lock: usize,
    /// Counters, and registers, in the group (each).
    pub max_values: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions: 1_000_000,
            max_sessions_per_client: 100_000,
            max_locks_per_session: 100_000,
            max_waiters_per_lock: 10_000,
            max_values: 1_000_000,
        }
    }
}

impl Limits {
    /// A lock name must be 1..=1024 bytes.
    pub fn check_name(&self, name: &str) -> Result<()> {
        if name.is_empty() {
            return Err(Error::InvalidArgument("lock name is empty".into()));
        }
        if name.len() > MAX_NAME_BYTES {
            return Err(Error::InvalidArgument(format!(
                "lock name longer than {MAX_NAME_BYTES} bytes ({} bytes)",
                name.len()
            )));
        }
        Ok(())
    }

    /// A client identifier must be 1..=256 bytes.
    pub fn check_client(&self, client: &str) -> Result<()> {
        if client.is_empty() || client.len() > MAX_CLIENT_BYTES {
            return Err(Error::InvalidArgument(format!(
                "client id must be 1..={MAX_CLIENT_BYTES} bytes ({} bytes)",
                client.len()
            )));
        }
        Ok(())
    }

    /// A TTL must be within `MIN_TTL_MS..=MAX_TTL_MS`.
    pub fn check_ttl(&self, ttl_ms: u64) -> Result<()> {
        if !(MIN_TTL_MS..=MAX_TTL_MS).contains(&ttl_ms) {
            return Err(Error::InvalidArgument(format!(
                "session ttl {ttl_ms} ms is outside {MIN_TTL_MS}..={MAX_TTL_MS} ms"
            )));
        }
        Ok(())
    }

    /// A wait must be at most `MAX_WAIT_MS`.
    pub fn check_wait(&self, wait_ms: u64) -> Result<()> {
        if wait_ms > MAX_WAIT_MS {
            return Err(Error::InvalidArgument(format!(
                "wait {wait_ms} ms is longer than the limit of {MAX_WAIT_MS} ms"
            )));
        }
        Ok(())
    }

    /// A lock-delay must be at most `MAX_LOCK_DELAY_MS`.
    pub fn check_lock_delay(&self, delay_ms: u64) -> Result<()> {
        if delay_ms > MAX_LOCK_DELAY_MS {
            return Err(Error::InvalidArgument(format!(
                "lock-delay {delay_ms} ms is longer than the limit of {MAX_LOCK_DELAY_MS} ms"
            )));
        }
        Ok(())
    }
}
