//! One name, one kind: the rule that keeps primitives from touching each other's state.
//!
//! Locks (of every kind), latches, counters and registers live in separate maps, but they share
//! one namespace. While a name exists as one kind — a resource that is held, awaited or in
//! lock-delay, a latch with a count, a counter other than zero, a written register — every
//! command that would *change* it as another kind is refused with [`Error::WrongKind`]
//! (FAILED_PRECONDITION), naming the kind in use, and changes nothing. Once the name is free it
//! can be used as anything. Reads of another kind see that kind's empty value (a counter reads
//! 0, a register "not written").
//!
//! Without this rule a latch reaching zero let everyone waiting on its name pass — including
//! the holder and waiters of an exclusive lock of the same name, which it removed: three
//! holders at once (issue 9, defect 1).

use crate::error::{Error, Result};
use crate::queue::Kind;
use crate::state::StateMachine;

/// What a command wants to use a name as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Use {
    /// A queued resource of this kind (locks, semaphores, elections, barriers, latch waits).
    Resource(Kind),
    /// A latch's count (set, count down).
    Latch,
    /// A counter.
    Counter,
    /// A register.
    Register,
}

impl Use {
    fn describe(self) -> String {
        match self {
            Use::Resource(kind) => kind.describe(),
            Use::Latch => Kind::Latch.describe(),
            Use::Counter => "counter".into(),
            Use::Register => "register".into(),
        }
    }

    /// The description with its article, for messages ("a lock", "an election").
    fn with_article(self) -> String {
        let what = self.describe();
        let article = if what.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
        format!("{article} {what}")
    }

    /// A latch's waiters are a `Latch` resource and its count is in the latch map: one kind.
    fn same_as(self, other: Use) -> bool {
        let norm = |u: Use| if u == Use::Resource(Kind::Latch) { Use::Latch } else { u };
        norm(self) == norm(other)
    }
}

impl StateMachine {
    /// What `name` is in use as right now, if it exists as anything.
    pub(crate) fn name_use(&self, name: &str) -> Option<Use> {
        if let Some(lock) = self.locks.get(name) {
            Some(Use::Resource(lock.kind))
        } else if self.latches.contains_key(name) {
            Some(Use::Latch)
        } else if self.counters.contains_key(name) {
            Some(Use::Counter)
        } else if self.registers.contains_key(name) {
            Some(Use::Register)
        } else {
            None
        }
    }

    /// Refuses to use `name` as `asked` while it exists as another kind.
    pub(crate) fn check_use(&self, name: &str, asked: Use) -> Result<()> {
        match self.name_use(name) {
            Some(in_use) if !in_use.same_as(asked) => Err(Error::WrongKind {
                name: name.to_string(),
                in_use: in_use.with_article(),
                asked: asked.with_article(),
            }),
            _ => Ok(()),
        }
    }
}
