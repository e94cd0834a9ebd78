//! Linearizable counters and compare-and-set registers.
//!
//! Both live in the replicated state, so every write is a log entry and every read (through the
//! node's ReadIndex path) sees every write acknowledged before it: together they are
//! linearizable. Neither is tied to a session; a counter that returns to 0 and a register that is
//! deleted are forgotten (reading them gives 0, and version 0 with no value).

use serde::{Deserialize, Serialize};

use crate::command::{Event, Outcome};
use crate::error::{Error, Result};
use crate::names::Use;
use crate::state::StateMachine;

/// Largest register value, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// A versioned byte register.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    /// The value.
    pub value: Vec<u8>,
    /// Incremented by every write; 0 means "never written" (or deleted).
    pub version: u64,
}

impl StateMachine {
    pub(crate) fn counter_add(&mut self, name: &str, delta: i64, events: &mut Vec<Event>) -> Result<Outcome> {
        self.limits.check_name(name)?;
        self.check_value_use(name, Use::Counter)?;
        let current = self.counter(name);
        let value = current
            .checked_add(delta)
            .ok_or_else(|| Error::InvalidArgument(format!("counter {name:?} would overflow: {current} + {delta}")))?;
        self.set_counter(name, value, events)?;
        Ok(Outcome::Counter { value, swapped: true })
    }

    pub(crate) fn counter_cas(
        &mut self,
        name: &str,
        expected: i64,
        new: i64,
        events: &mut Vec<Event>,
    ) -> Result<Outcome> {
        self.limits.check_name(name)?;
        self.check_value_use(name, Use::Counter)?;
        let current = self.counter(name);
        if current != expected {
            return Ok(Outcome::Counter { value: current, swapped: false });
        }
        self.set_counter(name, new, events)?;
        Ok(Outcome::Counter { value: new, swapped: true })
    }

    fn set_counter(&mut self, name: &str, value: i64, events: &mut Vec<Event>) -> Result<()> {
        if value == 0 {
            self.counters.remove(name);
        } else {
            if !self.counters.contains_key(name) && self.counters.len() >= self.limits.max_values {
                return Err(Error::LimitExceeded(format!("the group already has {} counters", self.counters.len())));
            }
            self.counters.insert(name.to_string(), value);
        }
        events.push(Event::CounterChanged { name: name.to_string(), value });
        Ok(())
    }

    /// The kind check of counters and registers (skipped by a deliberate bug in the simulator's
    /// broken variant `values-ignore-kind`).
    fn check_value_use(&self, name: &str, asked: Use) -> Result<()> {
        if self.bugs.values_ignore_kind {
            return Ok(());
        }
        self.check_use(name, asked)
    }

    /// A counter's value (0 if never written).
    pub fn counter(&self, name: &str) -> i64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    /// A register, if written.
    pub fn register(&self, name: &str) -> Option<&Register> {
        self.registers.get(name)
    }

    /// Writes (or, with `value: None`, deletes) a register, if `expected_version` (when given)
    /// matches its current version.
    pub(crate) fn register_set(
        &mut self,
        name: &str,
        value: Option<&[u8]>,
        expected_version: Option<u64>,
        events: &mut Vec<Event>,
    ) -> Result<Outcome> {
        self.limits.check_name(name)?;
        self.check_value_use(name, Use::Register)?;
        if let Some(v) = value {
            if v.len() > MAX_VALUE_BYTES {
                return Err(Error::InvalidArgument(format!(
                    "register value of {} bytes is larger than the limit of {MAX_VALUE_BYTES} bytes",
                    v.len()
                )));
            }
        }
        let current = self.registers.get(name).map_or(0, |r| r.version);
        if expected_version.is_some_and(|e| e != current) {
            return Ok(Outcome::Register { version: current, swapped: false });
        }
        let version = match value {
            Some(v) => {
                if current == 0 && self.registers.len() >= self.limits.max_values {
                    return Err(Error::LimitExceeded(format!(
                        "the group already has {} registers",
                        self.registers.len()
                    )));
                }
                // Versions keep growing across deletes, so an old version never matches again.
                let version = self.last_version + 1;
                self.last_version = version;
                self.registers.insert(name.to_string(), Register { value: v.to_vec(), version });
                version
            }
            None => {
                self.registers.remove(name);
                0
            }
        };
        events.push(Event::RegisterChanged { name: name.to_string(), version });
        Ok(Outcome::Register { version, swapped: true })
    }
}
