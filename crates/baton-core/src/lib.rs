//! Baton's replicated state machine: sessions, fenced exclusive locks and FIFO wait queues.
//!
//! # Design
//! The state machine is a pure, synchronous value. Its only input is a log of [`Entry`]s, each a
//! [`Command`] plus the proposing leader's clock reading; [`StateMachine::apply`] turns one entry
//! into an [`Outcome`] (or an [`Error`]) and a list of [`Event`]s. It reads no clock, draws no
//! random number and does no I/O, so replicas applying the same log are identical, and the
//! simulator can replay a history bit for bit. Maps are `BTreeMap`s so that iteration order,
//! and with it the order of events, never depends on hashing.
//!
//! Time is the maximum leader time applied so far, so it never runs backwards when leadership
//! moves to a node whose clock is behind. Session expiry is *not* decided here: the leader
//! tracks keepalives in memory and proposes [`Command::ExpireSessions`]. Wait deadlines and
//! lock-delays are timers in state-machine time; the leader proposes [`Command::Tick`] when
//! [`StateMachine::next_timer_ms`] has passed on its clock.
//!
//! # Fencing
//! Every grant takes the next value of one counter per group, so tokens are strictly increasing
//! per name across releases, expiries and leader changes, and the counter is part of every
//! snapshot. See [`queue`] for why this also survives forgetting idle locks.
//!
//! # Caveats
//! - Locks are not reentrant (documented choice): a second acquire by the holder is an error.
//! - A session remembers the outcomes of its last 16 finished requests for idempotent retries;
//!   a retry of an older one is refused ([`Error::RetryTooLate`]), never applied twice. Request
//!   ids must therefore grow within a session (the client's do).
//! - One name, one kind: see [`names`] for the rule between primitives.

pub mod auth;
pub mod barrier;
pub mod bugs;
pub mod command;
pub mod crdt;
pub mod error;
pub mod etcd;
pub mod hlc;
pub mod limits;
mod lock;
pub mod moves;
pub mod names;
pub mod nameset;
pub mod queue;
pub mod slots;
mod state;
pub mod topology;
pub mod value;

pub use bugs::Bugs;
pub use command::{AcquireRequest, Command, Entry, Event, Outcome, SessionEnd, SessionId, Token, WaitEnd};
pub use error::{Error, Result};
pub use hlc::Hlc;
pub use limits::Limits;
pub use nameset::NameSet;
pub use queue::{Holder, Kind, LockState, Mode, Waiter};
pub use slots::{slot_of, Slot, SlotSet, SLOTS};
pub use state::{Session, StateMachine, SNAPSHOT_MAGIC};
pub use topology::{GroupPlacement, Topology, META_GROUP};
pub use value::Register;
